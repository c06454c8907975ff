'use strict';
// The agent stream (AgentService/Connect) seen from an agent: a hello, then
// the agent's snapshot at once and again whenever a committed revision
// changes it, acks and nacks reflected in the API (GetAgent, GetRollout),
// label selectors, a reconnect replacing an older stream, and a deleted
// agent cut off. The client here is a real gRPC stream client built from
// the schema the server serves through reflection.
//
// The streams authenticate as the admin (the harness sends the admin token),
// who may speak for any agent id; an agent's own credential (the client
// certificate enrollment gives it, good for its own id only) is tested in
// auth.test.js.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const grpc = require('@grpc/grpc-js');
const { useServer } = require('./lib/server');
const { pki } = require('./lib/pki');
const { uid } = require('./lib/util');

let p;
const ctx = useServer({ before, after, beforeEach, afterEach }, {
  setup: async () => {
    p = pki();
  },
});
const api = () => ctx.api;

// One agent's stream: collects the snapshots it receives.
class FakeAgent {
  constructor(name, labels = {}) {
    this.name = name;
    this.snapshots = [];
    this.waiters = [];
    this.ended = null;
    const client = ctx.conn.clients['tlsplane.v1.AgentService'];
    this.call = client.Connect();
    this.call.on('data', (m) => {
      assert.equal(m.message, 'snapshot');
      this.snapshots.push(m.snapshot);
      this._wake();
    });
    this.call.on('error', (e) => {
      this.ended = e;
      this._wake();
    });
    this.call.on('end', () => {
      this.ended = this.ended || new Error('ended');
      this._wake();
    });
    this.call.write({ hello: { name, labels, version: 'test-1.0', appliedRevision: '0' } });
  }

  _wake() {
    for (const w of this.waiters.splice(0)) w();
  }

  // Resolves with the next snapshot (count > n), or rejects after ms.
  async next(n, ms = 5000) {
    const deadline = Date.now() + ms;
    while (this.snapshots.length <= n) {
      if (this.ended) throw this.ended;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name}: no snapshot #${n + 1} within ${ms} ms`);
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.snapshots[n];
  }

  async ended_(ms = 5000) {
    const deadline = Date.now() + ms;
    while (!this.ended && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.ended;
  }

  ack(snapshot, failed = {}) {
    this.call.write({
      ack: {
        revision: snapshot.revision,
        listeners: snapshot.listeners.map((l) => ({
          listener: l.listener.name,
          applied: !(l.listener.name in failed),
          error: failed[l.listener.name] || '',
        })),
      },
    });
  }

  close() {
    this.call.end();
    this.call.cancel();
  }
}

async function makeListener(id, selector = {}) {
  const certId = uid('cert');
  await api().CertificateService.CreateCertificate({
    certificateId: certId, certificate: { certificateChainPem: p.ecdsa.chain || p.ecdsa.cert, privateKeyPem: p.ecdsa.key },
  });
  const ctxId = uid('ctx');
  await api().TlsContextService.CreateTlsContext({
    tlsContextId: ctxId, tlsContext: { certificates: [`certificates/${certId}`] },
  });
  return api().ListenerService.CreateListener({
    listenerId: id,
    listener: {
      address: '127.0.0.1:18443', defaultTlsContext: `tlsContexts/${ctxId}`, upstream: '127.0.0.1:18080',
      agentSelector: selector,
    },
  });
}

async function waitFor(fn, ms = 5000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('an agent gets its snapshot at once, and each change that concerns it', async () => {
  const a = new FakeAgent('edge-1', { env: 'prod' });
  const first = await a.next(0);
  assert.equal(first.listeners.length, 0);
  assert.ok(Number(first.revision) > 0);
  a.ack(first);

  const l = await makeListener('public', { env: 'prod' });
  // The certificate and context commits change nothing this agent serves;
  // the listener does.
  const snap = await a.next(1);
  assert.equal(snap.listeners.length, 1);
  const rl = snap.listeners[0];
  assert.equal(rl.listener.name, 'listeners/public');
  assert.equal(Number(snap.revision), Number(l.revision));
  const ctxName = rl.listener.defaultTlsContext;
  const resolved = rl.tlsContexts[ctxName];
  assert.ok(resolved, 'the default context is resolved into the snapshot');
  assert.match(resolved.certificates[0].privateKeyPem, /BEGIN PRIVATE KEY/, 'agents receive the key');
  assert.equal(resolved.cipherPolicy.name, 'cipherPolicies/default');
  a.ack(snap);

  const agent = await waitFor(async () => {
    const g = await api().AgentService.GetAgent({ name: 'agents/edge-1' });
    return g.connected && Number(g.appliedRevision) === Number(snap.revision) ? g : null;
  });
  assert.ok(agent, 'GetAgent shows the agent connected at the revision it acked');
  assert.equal(agent.version, 'test-1.0');
  assert.deepEqual(agent.labels, { env: 'prod' });
  const rollout = await api().AgentService.GetRollout({ revision: '0' });
  assert.equal(rollout.agentsConnected, 1);
  assert.equal(rollout.agentsApplied, 1);

  // A revision that changes nothing this agent serves sends nothing.
  await api().CipherPolicyService.CreateCipherPolicy({ cipherPolicyId: uid('pol'), cipherPolicy: {} });
  await assert.rejects(a.next(2, 1500), /no snapshot #3/);
  const later = await waitFor(async () => {
    const r = await api().AgentService.GetRollout({ revision: '0' });
    return r.agentsApplied === 1 ? r : null;
  });
  assert.ok(later, 'an agent whose snapshot a revision does not change has applied it');

  await api().ListenerService.DeleteListener({ name: l.name });
  const gone = await a.next(2);
  assert.equal(gone.listeners.length, 0);
  a.close();
  const off = await waitFor(async () => {
    const g = await api().AgentService.GetAgent({ name: 'agents/edge-1' });
    return g.connected ? null : g;
  });
  assert.ok(off, 'a closed stream shows the agent disconnected');
});

test('label selectors pick the agents; a nack shows in the API and the rollout', async () => {
  const prod = new FakeAgent('sel-prod', { env: 'prod', zone: 'a' });
  const dev = new FakeAgent('sel-dev', { env: 'dev' });
  prod.ack(await prod.next(0));
  dev.ack(await dev.next(0));
  await makeListener('prod-only', { env: 'prod' });
  const snap = await prod.next(1);
  assert.ok(snap.listeners.some((x) => x.listener.name === 'listeners/prod-only'));
  await assert.rejects(dev.next(1, 1500), /no snapshot/, 'the dev agent gets nothing for a prod listener');

  prod.ack(snap, { 'listeners/prod-only': 'bind 127.0.0.1:18443: address in use' });
  const g = await waitFor(async () => {
    const r = await api().AgentService.GetAgent({ name: 'agents/sel-prod' });
    return r.lastNack ? r : null;
  });
  assert.ok(g, 'the nack reaches the API');
  assert.match(g.lastNack, /listeners\/prod-only: bind 127\.0\.0\.1:18443: address in use/);
  const r = await api().AgentService.GetRollout({ revision: snap.revision });
  assert.ok(r.agentsFailed.includes('agents/sel-prod'));
  assert.ok(!r.agentsPending.includes('agents/sel-dev'));
  prod.close();
  dev.close();
});

test('a reconnect replaces the older stream; a deleted agent is cut off', async () => {
  const one = new FakeAgent('twice');
  await one.next(0);
  const two = new FakeAgent('twice');
  await two.next(0);
  const err = await one.ended_();
  assert.ok(err, 'the older stream ended');
  assert.equal(err.code, grpc.status.ABORTED);

  await api().AgentService.DeleteAgent({ name: 'agents/twice' });
  const cut = await two.ended_();
  assert.ok(cut, 'the deleted agent\'s stream ended');
  assert.equal(cut.code, grpc.status.PERMISSION_DENIED);
});

test('the first message must be a hello', async () => {
  const client = ctx.conn.clients['tlsplane.v1.AgentService'];
  const call = client.Connect();
  const err = await new Promise((resolve) => {
    call.on('error', resolve);
    call.on('data', () => {});
    call.write({ stats: { listeners: [] } });
  });
  assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  assert.match(err.details, /hello/);
  await assert.rejects(api().AgentService.GetRollout({ revision: '999999' }), (e) => e.code === grpc.status.INVALID_ARGUMENT);
});
