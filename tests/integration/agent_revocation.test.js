'use strict';
// Revocation that resumption cannot dodge: a client certificate revoked
// by a CRL update (a real CRL from `openssl ca -gencrl`) is refused on a
// full handshake, and a session the client saved before the update
// (`openssl s_client -sess_out` / `-sess_in`) does not resume either, in
// TLS 1.2 and 1.3, on a listener with a ticket-key ring (tickets survive
// the listener's rebuild) and on one with tickets off (session IDs, TLS 1.3
// stateful tickets: the server's cache). Another client's saved ticket
// still resumes.

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { SClient } = require('./lib/tlsclient');
const procs = require('./lib/procs');

const LINE = 'hello-revocation';

// One s_client connection as `who` ({certFile, keyFile}), offering the
// session in sessIn and saving the server's in sessOut. Resolves with
// { reused, handshake, echoed, alert, out }: echoed is the line sent coming
// back through the agent, alert the TLS alert s_client reports.
async function connectAs(port, who, { version, sessIn, sessOut, extra = [] }) {
  const args = [version, '-cert', who.certFile, '-key', who.keyFile, ...extra];
  if (sessIn) args.push('-sess_in', sessIn);
  if (sessOut) args.push('-sess_out', sessOut);
  const c = SClient.start(port, args);
  try {
    await c.waitFor(/^(New|Reused), [\s\S]*^---$/m, { timeoutMs: 15000 });
    const from = c.out.length;
    c.write(`${LINE}\n`);
    // The echo, or (TLS 1.3: the server verifies after the client is done)
    // the alert that refuses the certificate.
    await c.waitFor(new RegExp(`${LINE}|alert`), { from, timeoutMs: 10000 });
  } catch (_) {
    // refused during the handshake: the output says how
  }
  c.end();
  const r = await c.done();
  const hello = r.out.indexOf('---\n');
  return { ...r, echoed: r.out.indexOf(LINE, hello) >= 0 };
}

describe('a CRL update: the revoked client is refused, full handshake and resumption alike', () => {
  let p;
  let up;
  let agent;
  let dir;
  let alice;
  let bob;
  const ring = [{ key: crypto.randomBytes(48), active: true }];
  const listeners = (crl) => {
    const ctx = (name, opts) => tlsContext(name, {
      certs: [p.rsa], ca: p.ca.cert, crls: [crl], requestCert: true, rejectUnauthorized: true, ...opts,
    });
    return [
      listener('tickets', { upstream: up.address, ticketKeys: ring, defaultContext: ctx('tickets', {}) }),
      listener('ids', { upstream: up.address, ticketKeys: ring, defaultContext: ctx('ids', { sessionTickets: false }) }),
    ];
  };
  // [listener, s_client version flag, extra flags]
  const VARIANTS = [
    ['tickets', '-tls1_3', []],
    ['tickets', '-tls1_2', []],
    ['ids', '-tls1_2', ['-no_ticket']],
    ['ids', '-tls1_3', []],
  ];
  const sess = (who, l, v) => path.join(dir, `${who}-${l}${v}.pem`);

  before(async () => {
    p = pki();
    dir = procs.tempDir('tlsplane-revocation-');
    alice = p.agentExtras().alice;
    bob = p.leaf('bob', { type: 'ec', cn: 'bob' }); // not in p.crlPem
    up = await Upstream.start({ mode: 'echo' });
    agent = await Agent.start(snapshot(1, listeners(p.crlPem)));
  });

  after(async () => {
    if (agent) await agent.stopClean();
    if (up) await up.close();
  });
  failOnCrash({ afterEach }, () => [agent]);

  test('before the update both clients are served and their saved sessions resume', async () => {
    for (const [l, v, extra] of VARIANTS) {
      for (const [name, who] of [['alice', alice], ['bob', bob]]) {
        const first = await connectAs(agent.port(l), who, { version: v, sessOut: sess(name, l, v), extra });
        assert.equal(first.echoed, true, `${name} ${l} ${v}: not served: ${first.out.slice(-800)}`);
        assert.equal(first.reused, false);
      }
      const again = await connectAs(agent.port(l), bob, { version: v, sessIn: sess('bob', l, v), extra });
      assert.equal(again.reused, true, `${l} ${v}: bob's session did not resume before the update: ${again.out.slice(-800)}`);
      assert.equal(again.echoed, true);
    }
  });

  test('after the CRL revokes bob: his full handshake and his saved sessions are refused; alice\'s ticket still resumes', async () => {
    const crl = p.revokeAndCrl('bob');
    assert.match(p.run(['crl', '-noout', '-text'], Buffer.from(crl)).toString(), new RegExp(`Serial Number: ${bob.serial}`));
    const r = await agent.reload(snapshot(2, listeners(crl)));
    assert.equal(r.applied, true, r.text);
    assert.deepEqual(r.failed, []);

    for (const [l, v, extra] of VARIANTS) {
      const where = `${l} ${v}`;
      const full = await connectAs(agent.port(l), bob, { version: v, extra });
      assert.equal(full.echoed, false, `${where}: bob's full handshake was served`);
      assert.equal(full.alert, 'certificate revoked', `${where}: ${full.out.slice(-800)}`);

      const resumed = await connectAs(agent.port(l), bob, { version: v, sessIn: sess('bob', l, v), extra });
      assert.equal(resumed.reused, false, `${where}: bob's session made before the update resumed`);
      assert.equal(resumed.echoed, false, `${where}: bob was served on his saved session`);
      assert.equal(resumed.alert, 'certificate revoked', `${where}: ${resumed.out.slice(-800)}`);

      const ok = await connectAs(agent.port(l), alice, { version: v, sessIn: sess('alice', l, v), extra });
      assert.equal(ok.echoed, true, `${where}: alice refused: ${ok.out.slice(-800)}`);
      // A ticket outlives the listener's rebuild and resumes; the server's
      // session cache is the listener version's own and starts empty.
      assert.equal(ok.reused, l === 'tickets', `${where}: alice's session ${ok.reused ? 'resumed' : 'did not resume'}`);
    }
  });
});
