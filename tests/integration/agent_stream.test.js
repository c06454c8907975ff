'use strict';
// The agent stream (AgentService/Connect) seen from an agent: a hello, then
// the agent's snapshot at once and again whenever a committed revision
// changes it, acks and nacks reflected in the API (GetAgent, GetRollout),
// label selectors matched against the labels of the agent's record (never
// those its hello claims), UpdateAgent changing them live, a reconnect
// replacing an older stream, and a deleted agent cut off.
//
// The agents are fake (lib/fakeagent.js): real stream clients built from
// the schema the server serves through reflection, each enrolled with its
// own join token and connected with its own client certificate, as only
// agents may stream snapshots. Their hellos claim what each test says.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const grpc = require('@grpc/grpc-js');
const { useServer, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { FakeAgent } = require('./lib/fakeagent');
const { pki } = require('./lib/pki');
const { uid, status, expectGrpcError } = require('./lib/util');

let p;
// The request timeout, which is also how long an agent has for its hello.
const REQUEST_TIMEOUT_MS = 4000;
const ctx = useServer({ before, after, beforeEach, afterEach }, {
  start: { tls: true, extraArgs: ['--request-timeout', String(REQUEST_TIMEOUT_MS)] },
  setup: async () => {
    p = pki();
  },
});
const api = () => ctx.api;
const enroll = (name, opts) => FakeAgent.enroll(ctx, name, opts);

// Each listener on a port of its own: the API refuses two listeners on one
// address that can land on the same agent.
let nextPort = 18443;

async function makeListener(id, selector = {}, extra = {}) {
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
      address: `127.0.0.1:${nextPort++}`, defaultTlsContext: `tlsContexts/${ctxId}`, upstream: '127.0.0.1:18080',
      agentSelector: selector, ...extra,
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
  const a = await enroll('edge-1', { agentLabels: { env: 'prod' }, claim: { env: 'prod' } });
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
  assert.deepEqual(agent.claimedLabels, { env: 'prod' });
  assert.equal(agent.labelsMismatch, false);
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
  const prod = await enroll('sel-prod', { agentLabels: { env: 'prod', zone: 'a' } });
  const dev = await enroll('sel-dev', { agentLabels: { env: 'dev' } });
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

test('an agent chooses nothing by its hello: claiming site=par gets it nothing of site=par until an operator gives it that label', async () => {
  // What site=par agents receive: a listener, its certificate's private
  // key and a ticket-key ring.
  const ring = await api().TicketKeyService.CreateTicketKeyRing({ ticketKeyRingId: uid('par-ring'), ticketKeyRing: {} });
  const l = await makeListener(uid('par'), { site: 'par' }, { ticketKeyRing: ring.name });
  const id = uid('claimer');
  // Enrolled with no labels; its hello claims site=par.
  const a = await enroll(id, { claim: { site: 'par' } });
  const first = await a.next(0);
  a.ack(first);
  assert.deepEqual(first.listeners, [], 'no listener of site=par');
  const text = JSON.stringify(first);
  assert.doesNotMatch(text, /PRIVATE KEY/, 'no private key');
  assert.doesNotMatch(text, /ticketKeys":\[\{/, 'no ticket key');
  let g = await api().AgentService.GetAgent({ name: `agents/${id}` });
  assert.deepEqual(g.labels, {});
  assert.deepEqual(g.claimedLabels, { site: 'par' });
  assert.equal(g.labelsMismatch, true);
  assert.match(ctx.server.log(), new RegExp(`agent=agents/${id} claims the labels \\{"site"="par"\\}, its record has \\{\\}: the claim is ignored`));
  // A revision committed meanwhile gives it nothing either.
  await api().ListenerService.UpdateListener({ listener: { name: l.name, labels: { touched: 'yes' } }, updateMask: { paths: ['labels'] } });
  await assert.rejects(a.next(1, 1500), /no snapshot #2/);

  // An operator sets the labels (etag guarded): the agent receives the
  // listener at once, key and ring included.
  const t = await api().TokenService.CreateToken({ tokenId: uid('op'), token: { role: 'OPERATOR' } });
  noteSecret(t.secret);
  const op = await connect(ctx.server.address, { tls: { ca: ctx.server.ca }, token: t.secret });
  try {
    const u = await op.api.AgentService.UpdateAgent({
      agent: { name: g.name, etag: g.etag, labels: { site: 'par' } }, updateMask: { paths: ['labels'] },
    });
    assert.deepEqual(u.labels, { site: 'par' });
    assert.deepEqual(u.claimedLabels, { site: 'par' }, 'what the agent claimed stays');
    assert.equal(u.version, 'test-1.0', 'what the agent reported stays');
    assert.equal(u.labelsMismatch, false);
    const snap = await a.next(1);
    assert.deepEqual(snap.listeners.map((x) => x.listener.name), [l.name]);
    const rl = snap.listeners[0];
    assert.match(rl.tlsContexts[rl.listener.defaultTlsContext].certificates[0].privateKeyPem, /BEGIN PRIVATE KEY/);
    assert.equal(rl.ticketKeys.length, 1);
    a.ack(snap);
    const ev = (await api().AuditService.ListAuditEvents({ resource: g.name })).auditEvents[0]; // newest first
    assert.equal(ev.actor, `token:${t.token.name.split('/')[1]}`);
    assert.equal(ev.action, 'update');
    assert.equal(ev.revision, u.revision, 'one revision');

    // A stale etag changes nothing; only labels can be set.
    await expectGrpcError(op.api.AgentService.UpdateAgent({
      agent: { name: g.name, etag: g.etag, labels: {} }, updateMask: { paths: ['labels'] },
    }), status.FAILED_PRECONDITION);
    await expectGrpcError(op.api.AgentService.UpdateAgent({
      agent: { name: g.name, version: 'forged' }, updateMask: { paths: ['version'] },
    }), status.INVALID_ARGUMENT, { field: 'update_mask' });
    await expectGrpcError(op.api.AgentService.UpdateAgent({
      agent: { name: g.name, labels: { 'bad key': 'x' } }, updateMask: { paths: ['labels'] },
    }), status.INVALID_ARGUMENT, { field: 'agent.labels' });
    g = await api().AgentService.GetAgent({ name: g.name });
    assert.equal(g.etag, u.etag);

    // Taken away: the listener goes at once.
    await op.api.AgentService.UpdateAgent({ agent: { name: g.name, labels: {} }, updateMask: { paths: ['labels'] } });
    const gone = await a.next(2);
    assert.deepEqual(gone.listeners, []);
  } finally {
    op.close();
    a.close();
  }
  await api().ListenerService.DeleteListener({ name: l.name });
});

test('a reconnect replaces the older stream; a deleted agent is cut off', async () => {
  const creds = await FakeAgent.credentials(ctx, 'twice');
  const one = FakeAgent.connect(ctx, 'twice', creds);
  await one.next(0);
  const two = FakeAgent.connect(ctx, 'twice', creds);
  await two.next(0);
  const err = await one.ended_();
  assert.ok(err, 'the older stream ended');
  assert.equal(err.code, grpc.status.ABORTED);

  await api().AgentService.DeleteAgent({ name: 'agents/twice' });
  const cut = await two.ended_();
  assert.ok(cut, 'the deleted agent\'s stream ended');
  assert.equal(cut.code, grpc.status.PERMISSION_DENIED);
});

test('an agent stream that sends no hello ends after the request timeout; the agent then streams as before', async () => {
  const name = uid('silent');
  const creds = await FakeAgent.credentials(ctx, name);
  const client = FakeAgent._client(ctx, { ca: ctx.server.ca, cert: creds.cert, key: creds.key });
  const started = Date.now();
  const call = client.Connect();
  const err = await new Promise((resolve) => {
    // A deadline, not a wait: the stream must have ended long before it.
    const timer = setTimeout(() => resolve({ details: 'the stream was still open 10 s after the request timeout' }), REQUEST_TIMEOUT_MS + 10000);
    call.on('error', (e) => {
      clearTimeout(timer);
      resolve(e);
    });
    call.on('data', () => {});
  });
  call.cancel();
  const took = Date.now() - started;
  assert.equal(err.code, grpc.status.DEADLINE_EXCEEDED, err.details);
  assert.equal(err.details, `no message within ${REQUEST_TIMEOUT_MS} ms`);
  assert.ok(took >= REQUEST_TIMEOUT_MS - 100, `ended after ${took} ms`);
  client.close();
  // Then it says hello and receives its snapshot.
  const agent = FakeAgent.connect(ctx, name, creds);
  assert.ok(await agent.next(0));
  agent.close();
});

test('the first message must be a hello', async () => {
  const creds = await FakeAgent.credentials(ctx, uid('nohello'));
  const client = FakeAgent._client(ctx, { ca: ctx.server.ca, cert: creds.cert, key: creds.key });
  const call = client.Connect();
  const err = await new Promise((resolve) => {
    call.on('error', resolve);
    call.on('data', () => {});
    call.write({ stats: { listeners: [] } });
  });
  assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  assert.match(err.details, /hello/);
  client.close();
  await assert.rejects(api().AgentService.GetRollout({ revision: '999999' }), (e) => e.code === grpc.status.INVALID_ARGUMENT);
});
