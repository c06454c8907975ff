'use strict';
// AuditService.WatchEvents: a stream of events from a revision on. A
// watcher sees every change (kind, name, revision, action, actor), only
// the kinds and labels it asks for; one cut mid-way and resumed from the
// last event it received gets every event exactly once while writes go
// on; a real agent's rollout shows as "applied by all" for the revision,
// and a listener it cannot apply (its port taken) as a nack naming the
// listener and why. Bad requests name their field; grpcurl streams it.
// After a restart (nothing in memory) a watch replays from the audit log.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { CpAgent } = require('./lib/cpagent');
const { agentBinary } = require('./lib/agent');
const { status, uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');

const GRPCURL_JS = path.join(__dirname, 'lib/grpcurl.js');

let srv;
let conn;
let p;
let up;
let agent;
const watches = [];
const busy = { start: null, writes: [] }; // the resume test's writes, replayed after a restart

const api = () => conn.api;

// Opens a watch: { events (as they came), error (the status that ended
// it, if any), cancel() }.
function watch(req) {
  const call = conn.clients['tlsplane.v1.AuditService'].WatchEvents(req);
  const w = { call, events: [], error: null, ended: false };
  call.on('data', (e) => w.events.push(e));
  call.on('error', (e) => { w.error = e; });
  call.on('end', () => { w.ended = true; });
  call.on('status', () => { w.ended = true; });
  w.cancel = () => call.cancel();
  watches.push(w);
  return w;
}

const changes = (w, kind) => w.events.filter((e) => e.type === 'RESOURCE_CHANGED' && (!kind || e.kind === kind));

async function refused(req, code, field) {
  const w = watch(req);
  await waitFor(`WatchEvents(${JSON.stringify(req)}) refused`, () => w.error);
  assert.equal(w.error.code, code, w.error.details);
  assert.ok(w.error.details.startsWith(`${field}:`), `"${w.error.details}" names ${field}`);
  assert.equal(w.events.length, 0);
}

async function makeCert(id, labels) {
  return api().CertificateService.CreateCertificate({ certificateId: id, certificate: { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key, labels } });
}

before(async () => {
  agentBinary();
  p = pki();
  up = await Upstream.start({ mode: 'echo' });
  srv = await Server.start({ tls: true });
  conn = await connect(srv.address, srv.connectOptions());
});

after(async () => {
  for (const w of watches) if (!w.ended) w.cancel();
  if (agent && agent.running) await agent.stopClean();
  if (conn) conn.close();
  if (srv && srv.running) await srv.stopClean();
  if (up) await up.close();
});

test('a watcher gets every change: kind, name, revision, action and actor', async () => {
  const w = watch({});
  await waitFor('the watch is open', async () => {
    // A write made after the watch was read: wait until one shows.
    const c = await makeCert(uid('probe'));
    return changes(w).some((e) => e.resource === c.name);
  });
  const from = w.events.length;
  const made = await makeCert('one', { team: 'a' });
  const updated = await api().CertificateService.UpdateCertificate({ certificate: { name: 'certificates/one', labels: { team: 'b' } }, updateMask: { paths: ['labels'] } });
  await api().CertificateService.DeleteCertificate({ name: 'certificates/one' });
  const got = await waitFor('create, update and delete', () => {
    const es = w.events.slice(from).filter((e) => e.resource === 'certificates/one');
    return es.length >= 3 && es;
  });
  assert.deepEqual(got.map((e) => e.action), ['create', 'update', 'delete']);
  assert.equal(got[0].revision, made.revision);
  assert.equal(got[1].revision, updated.revision);
  assert.ok(Number(got[2].revision) > Number(updated.revision));
  const audit = await api().AuditService.ListAuditEvents({ resource: 'certificates/one', orderBy: 'time asc' });
  assert.deepEqual(got.map((e) => e.revision), audit.auditEvents.map((a) => a.revision));
  for (const [i, e] of got.entries()) {
    assert.equal(e.kind, 'certificates');
    assert.equal(e.actor, audit.auditEvents[i].actor);
    assert.match(e.actor, /^token:/);
    assert.equal(e.sequence, 1);
    assert.ok(e.time && Number(e.time.seconds) > 0);
  }
});

test('filters: only the kinds and labels asked for', async () => {
  const since = (await api().CertificateService.GetCertificate({ name: (await makeCert(uid('mark'))).name })).revision;
  const w = watch({ sinceRevision: since, kinds: ['certificates'], labelSelector: { team: 'red' } });
  const all = watch({ sinceRevision: since, include: ['RESOURCE_CHANGED'] });
  await makeCert('red', { team: 'red', tier: 'x' });
  await makeCert('blue', { team: 'blue' });
  await api().TrustBundleService.CreateTrustBundle({ trustBundleId: 'red', trustBundle: { caPem: p.ca.cert, labels: { team: 'red' } } });
  const last = await makeCert('red2', { team: 'red' });
  await waitFor('both watches see the last write', () =>
    changes(all).some((e) => e.resource === last.name) && changes(w).some((e) => e.resource === last.name));
  assert.deepEqual(changes(w).map((e) => e.resource), ['certificates/red', 'certificates/red2']);
  assert.deepEqual(changes(all).map((e) => e.resource),
    ['certificates/red', 'certificates/blue', 'trustBundles/red', 'certificates/red2']);
  assert.ok(all.events.every((e) => e.type === 'RESOURCE_CHANGED'));
});

test('a watcher cut mid-way and resumed from its last event gets every event exactly once', async () => {
  await makeCert('busy');
  const start = (await api().CertificateService.GetCertificate({ name: 'certificates/busy' })).revision;
  const req = { kinds: ['certificates'] };
  const first = watch({ ...req, sinceRevision: start });
  const writes = busy.writes;
  busy.start = start;
  const writer = (async () => {
    for (let i = 0; i < 50; i++) {
      const r = await api().CertificateService.UpdateCertificate({ certificate: { name: 'certificates/busy', labels: { n: String(i) } }, updateMask: { paths: ['labels'] } });
      writes.push(r.revision);
    }
  })();
  await waitFor('the first watch got 20 events', () => first.events.length >= 20);
  first.cancel();
  await waitFor('the first watch ended', () => first.ended || first.error);
  const seen = first.events.slice();
  const lastSeen = seen[seen.length - 1];
  const second = watch({ ...req, sinceRevision: lastSeen.revision, sinceSequence: lastSeen.sequence });
  await writer;
  const lastWrite = writes[writes.length - 1];
  await waitFor('the resumed watch reaches the last write', () => second.events.some((e) => e.revision === lastWrite));
  const all = seen.concat(second.events).filter((e) => e.resource === 'certificates/busy');
  const revs = all.map((e) => e.revision);
  assert.deepEqual(revs, writes, 'every write once, in order');
  const places = seen.concat(second.events).map((e) => `${e.revision}.${e.sequence}`);
  assert.equal(new Set(places).size, places.length, 'no event twice');
});

test('renew soon: a certificate with less than a third of its lifetime left, once per revision', async () => {
  const DAY = 24 * 3600 * 1000;
  const now = Date.now();
  const soon = p.leaf('soon', { cn: 'soon.example.com', start: new Date(now - 2 * DAY), end: new Date(now + DAY / 2) });
  const w = watch({ include: ['RENEW_SOON'], kinds: ['certificates'] });
  const probe = watch({ kinds: ['certificates'] });
  // The watch is open once a change shows on its twin.
  await waitFor('the watches are open', async () => {
    const c = await makeCert(uid('probe'));
    return changes(probe).some((e) => e.resource === c.name);
  });
  const made = await api().CertificateService.CreateCertificate({ certificateId: 'soon', certificate: { certificateChainPem: soon.cert, privateKeyPem: soon.key } });
  await makeCert('later'); // a year left: no event
  const first = await waitFor('RENEW_SOON for certificates/soon', () => w.events.find((e) => e.resource === 'certificates/soon'));
  assert.equal(first.type, 'RENEW_SOON');
  assert.equal(first.kind, 'certificates');
  assert.match(first.reason, /third of its lifetime/);
  assert.ok(Number(first.revision) >= Number(made.revision));
  // A new revision of it: told again; meanwhile never twice.
  const upd = await api().CertificateService.UpdateCertificate({ certificate: { name: 'certificates/soon', labels: { x: 'y' } }, updateMask: { paths: ['labels'] } });
  await waitFor('RENEW_SOON again after the update', () => w.events.filter((e) => e.resource === 'certificates/soon').length >= 2);
  await waitFor('probe sees the update', () => changes(probe).some((e) => e.revision === upd.revision));
  assert.equal(w.events.filter((e) => e.resource === 'certificates/soon').length, 2);
  assert.ok(!w.events.some((e) => e.resource === 'certificates/later'));
});

test('bad requests name their field and change nothing', async () => {
  const latest = Number((await makeCert(uid('latest'))).revision);
  await refused({ sinceRevision: latest + 1000 }, status.OUT_OF_RANGE, 'since_revision');
  await refused({ sinceRevision: -1 }, status.INVALID_ARGUMENT, 'since_revision');
  await refused({ sinceSequence: 2 }, status.INVALID_ARGUMENT, 'since_sequence');
  await refused({ kinds: ['certificates', 'bogus'] }, status.INVALID_ARGUMENT, 'kinds[1]');
  await refused({ labelSelector: { 'Bad Key!': 'x' } }, status.INVALID_ARGUMENT, 'label_selector');
});

test('rollout: a revision applied by the agent, and a nack naming the listener and why', async () => {
  const r = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'edge-w', agentLabels: { tier: 'edge' } } });
  noteSecret(r.secret);
  agent = await CpAgent.start(srv, { name: 'edge-w', labels: { tier: 'edge' }, joinToken: r.secret, wait: 'connected' });
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'w', tlsContext: { certificates: ['certificates/red'] } });
  const w = watch({ include: ['ROLLOUT_APPLIED', 'ROLLOUT_NACK'] });
  const made = await api().ListenerService.CreateListener({
    listenerId: 'moving', listener: { address: '127.0.0.1:0', upstream: up.address, defaultTlsContext: 'tlsContexts/w', agentSelector: { tier: 'edge' } },
  });
  await agent.waitApplied(Number(made.revision));
  const applied = await waitFor('applied by all', () => w.events.find((e) => e.type === 'ROLLOUT_APPLIED' && Number(e.targetRevision) >= Number(made.revision)));
  assert.equal(applied.targetRevision, made.revision);
  assert.ok(Number(applied.revision) >= Number(made.revision));

  const squatter = net.createServer(() => {});
  await new Promise((resolve) => squatter.listen(0, '127.0.0.1', resolve));
  try {
    const moved = await api().ListenerService.UpdateListener({ listener: { name: 'listeners/moving', address: `127.0.0.1:${squatter.address().port}` }, updateMask: { paths: ['address'] } });
    const nack = await waitFor('the nack', () => w.events.find((e) => e.type === 'ROLLOUT_NACK'));
    assert.equal(nack.listener, 'listeners/moving');
    assert.equal(nack.resource, 'listeners/moving');
    assert.equal(nack.kind, 'listeners');
    assert.equal(nack.agent, 'agents/edge-w');
    assert.equal(nack.targetRevision, moved.revision);
    assert.match(nack.reason, /in use|bind|address/i);
    assert.ok(!w.events.some((e) => e.type === 'ROLLOUT_APPLIED' && e.targetRevision === moved.revision), 'not applied by all');
  } finally {
    await new Promise((resolve) => squatter.close(resolve));
  }
});

test('through grpcurl: streamed events, one JSON object after another', async () => {
  const since = Number((await makeCert(uid('curl'))).revision);
  await makeCert('curl-a');
  await makeCert('curl-b');
  const args = [GRPCURL_JS, '-cacert', path.join(srv.dataDir, 'ca.pem'), '-H', `authorization: Bearer ${srv.adminToken}`,
    '-max-time', '3', '-d', JSON.stringify({ sinceRevision: String(since), kinds: ['certificates'] }), srv.address, 'tlsplane.v1.AuditService/WatchEvents'];
  const out = await new Promise((resolve) => {
    const c = spawn(process.execPath, args);
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => { stdout += d; });
    c.stderr.on('data', (d) => { stderr += d; });
    c.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  // The stream never ends by itself: -max-time ends it.
  assert.match(out.stderr, /DeadlineExceeded/);
  const objs = out.stdout.split(/\n(?=\{)/).map((s) => JSON.parse(s));
  assert.deepEqual(objs.map((o) => o.resource), ['certificates/curl-a', 'certificates/curl-b']);
  assert.equal(objs[0].type, 'RESOURCE_CHANGED');
  assert.equal(objs[0].action, 'create');
  assert.equal(objs[0].kind, 'certificates');
});

test('after a restart, a watch resumes from the audit log, page by page, then live', async () => {
  if (agent && agent.running) await agent.stopClean();
  const update = async (i) => (await api().CertificateService.UpdateCertificate({ certificate: { name: 'certificates/busy', labels: { m: String(i) } }, updateMask: { paths: ['labels'] } })).revision;
  for (let i = 0; i < 600; i++) busy.writes.push(await update(i)); // more than one page of the log
  conn.close();
  await srv.restart();
  conn = await connect(srv.address, srv.connectOptions());
  const w = watch({ sinceRevision: busy.start, kinds: ['certificates'] });
  // Writes go on while it replays.
  for (let i = 0; i < 30; i++) busy.writes.push(await update(1000 + i));
  const lastWrite = busy.writes[busy.writes.length - 1];
  await waitFor('the watch reaches the last write', () => w.events.some((e) => e.revision === lastWrite));
  assert.deepEqual(w.events.filter((e) => e.resource === 'certificates/busy').map((e) => e.revision), busy.writes);
  const places = w.events.map((e) => `${e.revision}.${e.sequence}`);
  assert.equal(new Set(places).size, places.length, 'no event twice');
});
