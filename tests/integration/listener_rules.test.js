'use strict';
// Listener rules in one place: the API checks a listener with the code the
// agent runs on it (common/listener_rules.c), so a listener the agent would
// refuse is refused by the API with the agent's own words, and one the API
// accepts is served. And the API refuses a second listener on an address
// that can land on the same agent (same address and port, or every address
// on that port, with agent selectors that one agent's labels can both
// satisfy), instead of accepting it and leaving the agent to nack it:
// FAILED_PRECONDITION naming the listener that holds the address, nothing
// written.

const { test, describe, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { useServer } = require('./lib/server');
const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, freePort } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { exchange } = require('./lib/tlsclient');
const {
  status, seconds, expectGrpcError, expectRefused, uid, captureWorld, lastRevision,
} = require('./lib/util');

const R = {};
let p;
const ctx = useServer({ before, after, beforeEach, afterEach }, { setup: makeSharedResources });
const api = () => ctx.api;

async function makeSharedResources() {
  p = pki();
  const cert = await api().CertificateService.CreateCertificate({
    certificateId: uid('cert'), certificate: { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key },
  });
  R.ctx = await api().TlsContextService.CreateTlsContext({
    tlsContextId: uid('ctx'), tlsContext: { certificates: [cert.name] },
  });
}

// Ports of their own for each test, so that tests never collide with each
// other's listeners (the server binds nothing: any number will do).
let nextPort = 21000;
const port = () => nextPort++;

function createListener(fields, id = uid('lis')) {
  return api().ListenerService.CreateListener({
    listenerId: id,
    listener: { defaultTlsContext: R.ctx.name, upstream: '127.0.0.1:9080', ...fields },
  });
}

describe('two listeners on one address that can land on one agent', () => {
  test('same address, overlapping selectors: FAILED_PRECONDITION naming the listener that has it, nothing written', async () => {
    const P = port();
    const web = await createListener({ address: `127.0.0.1:${P}`, agentSelector: { site: 'par' } });
    const rev = lastRevision(await captureWorld(api()));
    // The same selector, a wider one (every agent), and a compatible one
    // (site=par, tier=edge: an agent labelled so gets both).
    for (const [agentSelector, agents] of [
      [{ site: 'par' }, '{site=par}'],
      [{}, '{site=par}'],
      [{ tier: 'edge' }, '{tier=edge, site=par}'],
    ]) {
      await expectRefused(api(), () => createListener({ address: `127.0.0.1:${P}`, agentSelector }),
        status.FAILED_PRECONDITION, {
          field: `listener.address: 127.0.0.1:${P} is already used by ${web.name} for agents matching ${agents}`,
          what: `selector ${JSON.stringify(agentSelector)}`,
        });
    }
    assert.equal(lastRevision(await captureWorld(api())), rev, 'a refused create made a revision');
  });

  test('every address on the port overlaps any host on it, either way round; another port does not', async () => {
    const P = port();
    const any = await createListener({ address: `0.0.0.0:${P}` });
    await expectRefused(api(), () => createListener({ address: `127.0.0.1:${P}` }), status.FAILED_PRECONDITION, {
      field: `listener.address: 127.0.0.1:${P} is already used by ${any.name} (as 0.0.0.0:${P}) for every agent`,
    });
    await expectRefused(api(), () => createListener({ address: `[::]:${P}` }), status.FAILED_PRECONDITION, {
      field: `listener.address: [::]:${P} is already used by ${any.name}`,
    });
    await expectRefused(api(), () => createListener({ address: `*:${P}` }), status.FAILED_PRECONDITION, {
      field: `listener.address: *:${P} is already used by ${any.name}`,
    });
    const Q = port();
    const one = await createListener({ address: `127.0.0.1:${Q}` });
    await expectRefused(api(), () => createListener({ address: `:${Q}` }), status.FAILED_PRECONDITION, {
      field: `listener.address: :${Q} is already used by ${one.name} (as 127.0.0.1:${Q}) for every agent`,
    });
    // localhost is 127.0.0.1 (and ::1) to an agent.
    await expectRefused(api(), () => createListener({ address: `localhost:${Q}` }), status.FAILED_PRECONDITION, {
      field: `listener.address: localhost:${Q} is already used by ${one.name}`,
    });
    // Another host or another port on the same agents: accepted.
    const other = await createListener({ address: `127.0.0.2:${Q}` });
    assert.equal(other.address, `127.0.0.2:${Q}`);
    const next = await createListener({ address: `0.0.0.0:${port()}` });
    assert.ok(next.name);
  });

  test('same address, disjoint selectors (no agent gets both): accepted', async () => {
    const P = port();
    const a = await createListener({ address: `127.0.0.1:${P}`, agentSelector: { site: 'a' } });
    const b = await createListener({ address: `127.0.0.1:${P}`, agentSelector: { site: 'b' } });
    const c = await createListener({ address: `0.0.0.0:${P}`, agentSelector: { site: 'c', tier: 'edge' } });
    assert.deepEqual([a.address, b.address, c.address], [`127.0.0.1:${P}`, `127.0.0.1:${P}`, `0.0.0.0:${P}`]);
    // But one that an agent of site b can get beside b: refused, naming b.
    await expectRefused(api(), () => createListener({ address: `127.0.0.1:${P}`, agentSelector: { tier: 'edge', site: 'b' } }),
      status.FAILED_PRECONDITION, { field: `listener.address: 127.0.0.1:${P} is already used by ${b.name} for agents matching {tier=edge, site=b}` });
  });

  test('port 0 (any free port) never collides', async () => {
    const a = await createListener({ address: '127.0.0.1:0' });
    const b = await createListener({ address: '127.0.0.1:0' });
    const c = await createListener({ address: '0.0.0.0:0' });
    assert.deepEqual([a.address, b.address, c.address], ['127.0.0.1:0', '127.0.0.1:0', '0.0.0.0:0']);
  });

  test('an update moving a listener onto a used address: refused, the listener unchanged; an update keeping its own address: accepted', async () => {
    const P = port();
    const Q = port();
    const web = await createListener({ address: `127.0.0.1:${P}` });
    const api2 = await createListener({ address: `127.0.0.1:${Q}`, agentSelector: { site: 'par' } });
    await expectRefused(api(), () => api().ListenerService.UpdateListener({
      listener: { name: api2.name, etag: api2.etag, address: `127.0.0.1:${P}` }, updateMask: { paths: ['address'] },
    }), status.FAILED_PRECONDITION, { field: `listener.address: 127.0.0.1:${P} is already used by ${web.name} for agents matching {site=par}` });
    // Widening the selector of a listener that shares an address with a
    // disjoint one is a move onto a used address too.
    const R1 = port();
    const a = await createListener({ address: `127.0.0.1:${R1}`, agentSelector: { site: 'a' } });
    const b = await createListener({ address: `127.0.0.1:${R1}`, agentSelector: { site: 'b' } });
    await expectRefused(api(), () => api().ListenerService.UpdateListener({
      listener: { name: b.name, agentSelector: {} }, updateMask: { paths: ['agent_selector'] },
    }), status.FAILED_PRECONDITION, { field: `listener.address: 127.0.0.1:${R1} is already used by ${a.name} for agents matching {site=a}` });
    assert.deepEqual(await api().ListenerService.GetListener({ name: api2.name }), api2);
    // Changing anything else of a listener on its own address is no collision.
    const u = await api().ListenerService.UpdateListener({
      listener: { name: web.name, etag: web.etag, maxConnections: 10 }, updateMask: { paths: ['max_connections'] },
    });
    assert.equal(u.maxConnections, 10);
    assert.equal(u.address, `127.0.0.1:${P}`);
  });

  test('concurrent creates on one address: exactly one is accepted', async () => {
    const P = port();
    const ids = Array.from({ length: 6 }, () => uid('race'));
    const results = await Promise.allSettled(ids.map((id) => createListener({ address: `127.0.0.1:${P}` }, id)));
    const ok = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r) => r.status === 'rejected');
    assert.equal(ok.length, 1, `accepted: ${ok.map((r) => r.value.name).join(', ')}`);
    for (const r of refused) {
      assert.equal(r.reason.code, status.FAILED_PRECONDITION, r.reason.details);
      assert.ok(r.reason.details.startsWith(`listener.address: 127.0.0.1:${P} is already used by ${ok[0].value.name}`), r.reason.details);
    }
    const all = await api().ListenerService.ListListeners({ pageSize: 1000 });
    assert.deepEqual(all.listeners.filter((l) => l.address === `127.0.0.1:${P}`).map((l) => l.name), [ok[0].value.name]);
  });
});

describe('the API refuses what an agent refuses, in the agent\'s words', () => {
  let up;
  before(async () => { up = await Upstream.start({ mode: 'echo' }); });
  after(async () => { if (up) await up.close(); });

  test('an upstream without a host: the API\'s message is the agent\'s nack reason, with the request field in front', async () => {
    const refused = await expectRefused(api(), () => createListener({ address: `127.0.0.1:${port()}`, upstream: ':8080' }),
      status.INVALID_ARGUMENT, { field: 'listener.upstream: ":8080" needs a host' });
    const agent = await Agent.start(snapshot(1, [
      listener('good', { upstream: up.address, defaultContext: tlsContext('good', { certs: [p.rsa] }) }),
      listener('bad', { upstream: ':8080', defaultContext: tlsContext('bad', { certs: [p.rsa] }) }),
    ]), { expectAllApplied: false });
    try {
      const m = /listener=listeners\/bad not applied: (.*)$/m.exec(agent.log());
      assert.ok(m, `no "not applied" line for listeners/bad:\n${agent.tail()}`);
      assert.ok(m[1].startsWith('upstream: ":8080" needs a host'), m[1]);
      assert.equal(refused.details, `listener.${m[1].replace(/ \(keeps serving.*\)$/, '')}`);
      const r = await exchange(agent.port('good'), {});
      assert.equal(r.ok, true, r.error);
    } finally {
      await agent.stopClean();
    }
  });

  test('a bind host "*" (every address): accepted by the API, and served by an agent', async () => {
    const P = await freePort();
    const l = await createListener({ address: `*:${P}` });
    assert.equal(l.address, `*:${P}`);
    const agent = await Agent.start(snapshot(1, [
      listener('star', { address: `*:${P}`, upstream: up.address, defaultContext: tlsContext('star', { certs: [p.rsa] }) }),
    ]));
    try {
      const r = await exchange(P, {});
      assert.equal(r.ok, true, r.error);
    } finally {
      await agent.stopClean();
    }
    await api().ListenerService.DeleteListener({ name: l.name });
  });

  test('a bind host that is a name other than localhost: refused by both', async () => {
    await expectRefused(api(), () => createListener({ address: `www.example.com:${port()}` }), status.INVALID_ARGUMENT, {
      field: 'listener.address: bind host "www.example.com" must be an IP address, "localhost", "*" or empty (every address)',
    });
    const agent = await Agent.start(snapshot(1, [
      listener('good', { upstream: up.address, defaultContext: tlsContext('good', { certs: [p.rsa] }) }),
      listener('named', { address: 'www.example.com:443', upstream: up.address, defaultContext: tlsContext('named', { certs: [p.rsa] }) }),
    ]), { expectAllApplied: false });
    try {
      assert.match(agent.log(), /listener=listeners\/named not applied: address: bind host "www\.example\.com" must be an IP address/);
    } finally {
      await agent.stopClean();
    }
  });

  test('defaults read back as the agent applies them: 120 s handshake, 3 renegotiations per 600 s, 600 s idle, 60 s write', async () => {
    const l = await createListener({ address: `127.0.0.1:${port()}` });
    assert.equal(seconds(l.handshakeTimeout), 120);
    assert.deepEqual(l.renegotiationLimit, { value: 3 });
    assert.equal(seconds(l.renegotiationWindow), 600);
    assert.equal(seconds(l.idleTimeout), 600);
    assert.equal(seconds(l.writeTimeout), 60);
    await expectGrpcError(createListener({ address: `127.0.0.1:${port()}`, handshakeTimeout: { seconds: '0', nanos: 0 } }),
      status.INVALID_ARGUMENT, { field: 'listener.handshake_timeout: must be more than 0 and at most 3600s' });
  });
});
