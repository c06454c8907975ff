'use strict';
// Session resumption: the session-ID cache, session tickets,
// sessionTimeout, sessionIdContext, and ticketKeys shared by a fleet (a
// ring: one active key, older keys still decrypting until retired), with
// the 'newSession' / 'resumeSession' events counted.

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { exchange, sclient, SClient, delay } = require('./lib/tlsclient');
const { tool } = require('./lib/tools');

// A full handshake, then its session offered again; resolves
// { first, again } (exchange() results).
async function newSession(port, opts = {}) {
  const first = await exchange(port, opts);
  assert.equal(first.ok, true, first.error);
  assert.ok(first.session, 'the server gave the client no session to resume');
  return first;
}

async function resumes(port, session, opts = {}) {
  const r = await exchange(port, { ...opts, session });
  assert.equal(r.ok, true, r.error);
  return r.info.reused;
}

const VERSIONS = [['TLS 1.3', { minVersion: 'TLSv1.3' }], ['TLS 1.2', { maxVersion: 'TLSv1.2' }]];

describe('session resumption: IDs, tickets, timeout, id context, ticket-key rings', () => {
  let p;
  let up;
  let agent; // A
  let agentB; // a second process sharing the ring
  let tmp;
  const K1 = { key: crypto.randomBytes(48) };
  const K2 = { key: crypto.randomBytes(48) };
  const K3 = { key: crypto.randomBytes(48) };
  const K4 = { key: crypto.randomBytes(48) }; // another fleet's ring
  const K9 = { key: crypto.randomBytes(48) };
  const ring = (...keys) => keys.map((k, i) => ({ key: k.key, active: i === 0 }));
  let ringCtx;

  before(async () => {
    p = pki();
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-sess-'));
    up = await Upstream.start({ mode: 'echo' });
    const l = (name, ctxOpts, listenerOpts = {}) => listener(name, {
      upstream: up.address,
      defaultContext: tlsContext(name, { certs: [p.rsa], ...ctxOpts }),
      ...listenerOpts,
    });
    const shared = ring(K9); // the id-context listeners share one ring
    ringCtx = tlsContext('ring-ctx', { certs: [p.rsa] });
    agent = await Agent.start(snapshot(1, [
      l('ids', { sessionTickets: false }),
      l('no-cache', { sessionTickets: false, sessionCacheSize: -1 }),
      l('tickets', {}),
      l('one-ticket', { tls13Tickets: 1 }),
      l('no-tls13-tickets', { tls13Tickets: 0 }),
      l('short-tickets', { sessionTimeout: '2s' }),
      l('short-ids', { sessionTimeout: '2s', sessionTickets: false }),
      l('sid-a', { sessionIdContext: 'shared-ctx' }, { ticketKeys: shared }),
      l('sid-b', { sessionIdContext: 'shared-ctx' }, { ticketKeys: shared }),
      l('sid-c', { sessionIdContext: 'other-ctx' }, { ticketKeys: shared }),
      l('sid-none', {}, { ticketKeys: shared }),
      listener('ring', { upstream: up.address, defaultContext: ringCtx, ticketKeys: ring(K1) }),
      // The same context under another ring: only the keys differ.
      listener('other-ring', { upstream: up.address, defaultContext: ringCtx, ticketKeys: ring(K4) }),
    ]));
  });

  after(async () => {
    if (agentB) await agentB.stopClean();
    if (agent) await agent.stopClean();
    if (up) await up.close();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });
  failOnCrash({ afterEach }, () => [agent, agentB]);

  test('session IDs with tickets off: the server\'s cache resumes sessions (s_client -reconnect shows Reused)', async () => {
    const c = SClient.start(agent.port('ids'), ['-tls1_2', '-no_ticket', '-reconnect']);
    // s_client reconnects five times with the first session.
    await c.waitFor(/(^Reused, [\s\S]*){5}/m, { timeoutMs: 10000 }).catch(() => {});
    c.end();
    const r = await c.done();
    assert.equal((r.out.match(/^Reused, TLSv1\.2/gm) || []).length, 5, r.out.slice(-1500));
    for (const [v, opts] of VERSIONS) {
      const first = await newSession(agent.port('ids'), opts);
      assert.equal(await resumes(agent.port('ids'), first.session, opts), true, `${v}: not resumed from the cache`);
    }
  });

  test('session cache off (sessionCacheSize -1) and tickets off: nothing resumes', async () => {
    const c = SClient.start(agent.port('no-cache'), ['-tls1_2', '-no_ticket', '-reconnect']);
    await c.waitFor(/(^(New|Reused), [\s\S]*){6}/m, { timeoutMs: 10000 }).catch(() => {});
    c.end();
    const r = await c.done();
    assert.equal((r.out.match(/^Reused, /gm) || []).length, 0, 'a session resumed without a cache or tickets');
    assert.ok((r.out.match(/^New, /gm) || []).length >= 2, r.out.slice(-1500));
    for (const [v, opts] of VERSIONS) {
      const first = await exchange(agent.port('no-cache'), opts);
      assert.equal(first.ok, true, first.error);
      if (first.session) assert.equal(await resumes(agent.port('no-cache'), first.session, opts), false, `${v}: resumed`);
    }
  });

  test('tickets: a ticket resumes the session (s_client -sess_out / -sess_in), and newSession / resumeSession are counted', async () => {
    const port = agent.port('tickets');
    const m0 = await agent.metrics();
    const L = { listener: 'listeners/tickets' };
    for (const v of ['-tls1_3', '-tls1_2']) {
      const sess = path.join(tmp, `tickets${v}.pem`);
      const first = await sclient(port, [v, '-sess_out', sess]);
      assert.equal(first.reused, false, first.out);
      assert.ok(fs.existsSync(sess), 's_client wrote no session');
      const again = await sclient(port, [v, '-sess_in', sess]);
      assert.equal(again.reused, true, `${v}: the ticket did not resume: ${again.out.slice(-800)}`);
    }
    const m = await agent.waitForMetrics((mm) => mm.get('tlsplane_handshakes_total', L) >= m0.get('tlsplane_handshakes_total', L) + 4);
    assert.equal(m.get('tlsplane_new_sessions_total', L) - m0.get('tlsplane_new_sessions_total', L), 2, 'newSession: one per full handshake');
    assert.equal(m.get('tlsplane_resumptions_total', L) - m0.get('tlsplane_resumptions_total', L), 2, 'resumeSession: one per resumed handshake');
  });

  test('tickets, TLS 1.3: every resumed connection gets a fresh ticket, so a client that uses each ticket once keeps resuming', async () => {
    const port = agent.port('tickets');
    const opts = { minVersion: 'TLSv1.3' };
    let { session } = await newSession(port, opts);
    for (let i = 0; i < 4; i++) {
      const r = await exchange(port, { ...opts, session });
      assert.equal(r.info.reused, true, `resumption ${i + 1} did not resume`);
      assert.ok(r.session && !r.session.equals(session), `resumption ${i + 1} got no new ticket`);
      session = r.session;
    }
  });

  test('tls13Tickets: a full TLS 1.3 handshake sends that many tickets (unset: 2); a resumption sends one; 0 leaves TLS 1.2 tickets alone', async () => {
    const opts = { minVersion: 'TLSv1.3' };
    for (const [name, want] of [['tickets', 2], ['one-ticket', 1], ['no-tls13-tickets', 0]]) {
      const r = await exchange(agent.port(name), opts);
      assert.equal(r.ok, true, r.error);
      assert.equal(r.sessions.length, want, `${name}: tickets after a full handshake`);
      if (want === 0) continue;
      let { session } = r;
      for (let i = 0; i < 2; i++) {
        const again = await exchange(agent.port(name), { ...opts, session });
        assert.equal(again.ok, true, again.error);
        assert.equal(again.info.reused, true, `${name}: resumption ${i + 1} did not resume`);
        assert.equal(again.sessions.length, 1, `${name}: tickets after resumption ${i + 1}`);
        session = again.session;
      }
    }
    // No TLS 1.3 ticket means no TLS 1.3 resumption; TLS 1.2 tickets are not counted by it.
    const v12 = { maxVersion: 'TLSv1.2' };
    const first = await newSession(agent.port('no-tls13-tickets'), v12);
    assert.equal(await resumes(agent.port('no-tls13-tickets'), first.session, v12), true, 'TLS 1.2: not resumed');
  });

  test('sessionTimeout: the ticket lifetime hint is the timeout, and a session older than it is not resumed', async () => {
    // TLS 1.3: the NewSessionTicket says 2 s.
    const sess = path.join(tmp, 'short13.pem');
    await sclient(agent.port('short-tickets'), ['-tls1_3', '-sess_out', sess]);
    const text = execFileSync(tool('openssl'), ['sess_id', '-in', sess, '-noout', '-text']).toString();
    assert.match(text, /TLS session ticket lifetime hint: 2 \(seconds\)/, text);
    // TLS 1.2 (a TLS 1.3 client drops an expired ticket itself, so only
    // TLS 1.2 shows the server refusing one): a ticket and a session ID,
    // each resumed at once and again after the timeout.
    const opts = { maxVersion: 'TLSv1.2' };
    const ticket = await newSession(agent.port('short-tickets'), opts);
    const id = await newSession(agent.port('short-ids'), opts);
    assert.equal(await resumes(agent.port('short-tickets'), ticket.session, opts), true, 'a fresh ticket did not resume');
    assert.equal(await resumes(agent.port('short-ids'), id.session, opts), true, 'a fresh session ID did not resume');
    // A fixed wait, and it is the behaviour: the sessions growing older
    // than the 2 s sessionTimeout (OpenSSL counts whole seconds: 3.5 s is
    // older for sure; a loaded machine only makes them older).
    await delay(3500);
    assert.equal(await resumes(agent.port('short-tickets'), ticket.session, opts), false, 'a ticket older than sessionTimeout resumed');
    assert.equal(await resumes(agent.port('short-ids'), id.session, opts), false, 'a session ID older than sessionTimeout resumed');
    // The default (300 s) keeps a session of the same age.
    const long = await newSession(agent.port('tickets'), opts);
    assert.equal(await resumes(agent.port('tickets'), long.session, opts), true);
  });

  test('sessionIdContext: a session resumes only in a context with the same id (ticket keys shared by all four)', async () => {
    for (const [v, opts] of VERSIONS) {
      const a = await newSession(agent.port('sid-a'), opts);
      assert.equal(await resumes(agent.port('sid-a'), a.session, opts), true, `${v}: sid-a itself`);
      assert.equal(await resumes(agent.port('sid-b'), a.session, opts), true, `${v}: same sessionIdContext, another context: must resume`);
      assert.equal(await resumes(agent.port('sid-c'), a.session, opts), false, `${v}: another sessionIdContext resumed`);
      assert.equal(await resumes(agent.port('sid-none'), a.session, opts), false, `${v}: the default id (the context's name) resumed a sid-a session`);
      const none = await newSession(agent.port('sid-none'), opts);
      assert.equal(await resumes(agent.port('sid-none'), none.session, opts), true, `${v}: the default id resumes in its own context`);
    }
  });

  // The ring tests share state: sessions made under each key.
  const T = {};

  test('ticketKeys: a ticket issued by one agent resumes on a second agent process with the same ring, not with another ring', async () => {
    agentB = await Agent.start(snapshot(1, [
      listener('ring', { upstream: up.address, defaultContext: ringCtx, ticketKeys: ring(K1) }),
    ]));
    for (const [v, opts] of VERSIONS) {
      T[v] = { k1: (await newSession(agent.port('ring'), opts)).session };
      assert.equal(await resumes(agentB.port('ring'), T[v].k1, opts), true, `${v}: agent B did not resume agent A's ticket`);
      assert.equal(await resumes(agent.port('other-ring'), T[v].k1, opts), false, `${v}: a listener with another ring resumed it`);
    }
    const mB = await agentB.metrics();
    assert.equal(mB.get('tlsplane_resumptions_total', { listener: 'listeners/ring' }), 2);
    assert.equal(mB.get('tlsplane_new_sessions_total', { listener: 'listeners/ring' }), 0);
  });

  test('ticketKeys rotated (new active key, the old one kept): old tickets still resume; new tickets use the new key', async () => {
    assert.ok(agentB, 'needs the previous test\'s second agent');
    const r = await agentB.reload(snapshot(2, [
      listener('ring', { upstream: up.address, defaultContext: ringCtx, ticketKeys: ring(K2, K1) }),
    ]));
    assert.equal(r.applied, true, r.text);
    assert.deepEqual(r.failed, []);
    for (const [v, opts] of VERSIONS) {
      const old = await exchange(agentB.port('ring'), { ...opts, session: T[v].k1 });
      assert.equal(old.info.reused, true, `${v}: a ticket under the decrypt-only key did not resume`);
      if (v === 'TLS 1.3') T[v].renewed = old.session; // re-issued under the active key
      T[v].k2 = (await newSession(agentB.port('ring'), opts)).session;
      // Agent A knows only K1: B's new tickets are not under K1.
      assert.equal(await resumes(agent.port('ring'), T[v].k2, opts), false, `${v}: B still issues tickets under K1`);
      assert.equal(await resumes(agentB.port('ring'), T[v].k2, opts), true, `${v}: B's own new ticket`);
    }
    assert.ok(T['TLS 1.3'].renewed, 'no ticket issued on resumption');
  });

  test('ticketKeys: a ticket made under a key since retired (removed from the ring) is not resumed', async () => {
    assert.ok(agentB, 'needs the previous tests\' second agent');
    const r = await agentB.reload(snapshot(3, [
      listener('ring', { upstream: up.address, defaultContext: ringCtx, ticketKeys: ring(K3, K2) }),
    ]));
    assert.equal(r.applied, true, r.text);
    for (const [v, opts] of VERSIONS) {
      assert.equal(await resumes(agentB.port('ring'), T[v].k1, opts), false, `${v}: a ticket under the retired K1 resumed`);
      assert.equal(await resumes(agentB.port('ring'), T[v].k2, opts), true, `${v}: a ticket under K2 (still in the ring) did not resume`);
    }
    assert.equal(await resumes(agentB.port('ring'), T['TLS 1.3'].renewed, VERSIONS[0][1]), true,
      'the ticket re-issued when a K1 ticket resumed is under K2, and still resumes');
    await agentB.stopClean();
    agentB = null;
  });
});
