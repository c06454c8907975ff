'use strict';
// Ticket keys: the defaults (a new key every 12 h, four kept) and
// RetireTicketKey, which takes one key out of the ring at once (a
// compromised key): a ticket issued under it no longer resumes on a real
// agent, tickets under the other keys still do, and the audit names the
// retired key. Retiring the active key puts a fresh one in its place.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { exchange } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { freePort, agentBinary } = require('./lib/agent');
const { expectRefused } = require('./lib/util');
const { status } = require('@grpc/grpc-js');

let srv;
let conn;
let up;
let agent;
let port;
const api = () => conn.api;
const seconds = (ts) => Number(ts.seconds) + ts.nanos / 1e9;
const VERSIONS = [['TLS 1.3', { minVersion: 'TLSv1.3' }], ['TLS 1.2', { maxVersion: 'TLSv1.2' }]];

async function ticket(opts) {
  const r = await exchange(port, opts);
  assert.equal(r.ok, true, r.error);
  assert.ok(r.session, 'no ticket');
  return r.session;
}

async function resumes(session, opts) {
  const r = await exchange(port, { ...opts, session });
  assert.equal(r.ok, true, r.error);
  return r.info.reused;
}

before(async () => {
  agentBinary();
  const p = pki();
  up = await Upstream.start({ mode: 'echo' });
  srv = await Server.start({ tls: true });
  conn = await connect(srv.address, srv.connectOptions());
  port = await freePort();
  await api().CertificateService.CreateCertificate({ certificateId: 'web', certificate: { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key } });
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'web', tlsContext: { certificates: ['certificates/web'] } });
  await api().TicketKeyService.CreateTicketKeyRing({ ticketKeyRingId: 'fleet', ticketKeyRing: {} });
  await api().ListenerService.CreateListener({
    listenerId: 'web',
    listener: { address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/web', upstream: up.address, ticketKeyRing: 'ticketKeyRings/fleet' },
  });
  const tok = await api().TokenService.CreateToken({ tokenId: 'join', token: { role: 'JOIN', agentId: 'edge-1' } });
  noteSecret(tok.secret);
  agent = await CpAgent.start(srv, { name: 'edge-1', joinToken: tok.secret, wait: 'connected' });
  await agent.waitForLog(/listener=listeners\/web new: serving on/);
});

after(async () => {
  if (agent && agent.running) await agent.stopClean();
  if (conn) conn.close();
  if (srv && srv.running) await srv.stopClean();
  if (up) await up.close();
});

afterEach((t) => {
  if (agent) agent.assertAlive(`during "${t.name}"`);
});

test('a new ring rotates every 12 h and keeps 4 keys; next_rotation_time shows when', async () => {
  const r = await api().TicketKeyService.GetTicketKeyRing({ name: 'ticketKeyRings/fleet' });
  assert.equal(r.retainedKeys, 4);
  assert.equal(seconds(r.rotationPeriod), 12 * 3600);
  assert.equal(seconds(r.nextRotationTime) - seconds(r.lastRotationTime), 12 * 3600);
  const manual = await api().TicketKeyService.CreateTicketKeyRing({
    ticketKeyRingId: 'manual', ticketKeyRing: { rotationPeriod: { seconds: '0', nanos: 0 } },
  });
  assert.equal(seconds(manual.rotationPeriod), 0);
  assert.equal(manual.nextRotationTime, null, 'an explicit 0 rotates only on request');
});

test('RetireTicketKey: a ticket under the retired key no longer resumes; one under a kept key does', async () => {
  const svc = api().TicketKeyService;
  let ring = await svc.GetTicketKeyRing({ name: 'ticketKeyRings/fleet' });
  const k1 = ring.keys[0].keyName;
  const T = {};
  for (const [v, opts] of VERSIONS) T[v] = { k1: await ticket(opts) };
  ring = await svc.RotateTicketKeys({ name: ring.name, etag: ring.etag });
  await agent.waitApplied(Number(ring.revision));
  const k2 = ring.keys[0].keyName;
  for (const [v, opts] of VERSIONS) {
    T[v].k2 = await ticket(opts);
    assert.equal(await resumes(T[v].k1, opts), true, `${v}: a ticket under the decrypt-only key did not resume before its retirement`);
  }

  // Bad requests change nothing.
  await expectRefused(conn.api, () => svc.RetireTicketKey({ name: ring.name, keyName: 'ab'.repeat(16), etag: ring.etag }),
    status.NOT_FOUND, { field: 'key_name' });
  await expectRefused(conn.api, () => svc.RetireTicketKey({ name: ring.name, keyName: '', etag: ring.etag }),
    status.INVALID_ARGUMENT, { field: 'key_name' });
  await expectRefused(conn.api, () => svc.RetireTicketKey({ name: ring.name, keyName: k1, etag: 'stale' }),
    status.FAILED_PRECONDITION);
  assert.deepEqual(await svc.GetTicketKeyRing({ name: ring.name }), ring);

  const retired = await svc.RetireTicketKey({ name: ring.name, keyName: k1.toUpperCase(), etag: ring.etag });
  assert.equal(Number(retired.revision), Number(ring.revision) + 1, 'one revision');
  assert.deepEqual(retired.keys.map((k) => [k.keyName, k.state]), [[k2, 'ACTIVE']]);
  assert.deepEqual(retired.lastRotationTime, ring.lastRotationTime, 'retiring a decrypt-only key is no rotation');
  await agent.waitApplied(Number(retired.revision));
  for (const [v, opts] of VERSIONS) {
    assert.equal(await resumes(T[v].k1, opts), false, `${v}: a ticket under the retired key resumed`);
    assert.equal(await resumes(T[v].k2, opts), true, `${v}: a ticket under the active key did not resume`);
  }

  const events = await api().AuditService.ListAuditEvents({ resource: ring.name });
  const e = events.auditEvents.find((x) => x.action === 'retire_key');
  assert.ok(e, 'no retire_key audit event');
  assert.equal(e.method, '/tlsplane.v1.TicketKeyService/RetireTicketKey');
  const change = (f) => e.changes.find((c) => c.field === f);
  assert.deepEqual({ ...change('retired_keys') }, { field: 'retired_keys', before: '', after: k1 });
  assert.equal(change('keys').before, `${k2},${k1}`);
  assert.equal(change('keys').after, k2);
  ring = retired;
});

test('retiring the active key: a fresh active key replaces it in the same write; its tickets stop resuming', async () => {
  const svc = api().TicketKeyService;
  let ring = await svc.GetTicketKeyRing({ name: 'ticketKeyRings/fleet' });
  ring = await svc.RotateTicketKeys({ name: ring.name, etag: ring.etag });
  await agent.waitApplied(Number(ring.revision));
  const [active, older] = ring.keys.map((k) => k.keyName);
  const T = {};
  for (const [v, opts] of VERSIONS) T[v] = await ticket(opts);
  const r = await svc.RetireTicketKey({ name: ring.name, keyName: active, etag: ring.etag });
  assert.equal(Number(r.revision), Number(ring.revision) + 1, 'one revision');
  assert.equal(r.keys.length, 2);
  assert.equal(r.keys[0].state, 'ACTIVE');
  assert.ok(![active, older].includes(r.keys[0].keyName), 'no fresh active key');
  assert.deepEqual(r.keys.slice(1).map((k) => [k.keyName, k.state]), [[older, 'DECRYPT_ONLY']]);
  assert.ok(seconds(r.lastRotationTime) >= seconds(ring.lastRotationTime));
  assert.equal(seconds(r.nextRotationTime) - seconds(r.lastRotationTime), 12 * 3600, 'the schedule restarts from the replacement');
  await agent.waitApplied(Number(r.revision));
  for (const [v, opts] of VERSIONS) {
    assert.equal(await resumes(T[v], opts), false, `${v}: a ticket under the retired active key resumed`);
    const fresh = await ticket(opts);
    assert.equal(await resumes(fresh, opts), true, `${v}: a ticket under the replacement did not resume`);
  }

  // The only key can go too: it is replaced the same way.
  const solo = await svc.CreateTicketKeyRing({ ticketKeyRingId: 'solo', ticketKeyRing: { retainedKeys: 1 } });
  const s2 = await svc.RetireTicketKey({ name: solo.name, keyName: solo.keys[0].keyName });
  assert.equal(s2.keys.length, 1);
  assert.notEqual(s2.keys[0].keyName, solo.keys[0].keyName);
});
