'use strict';
// The audit trail (one event per mutation, at the revision it committed),
// and durability: a restart on the same data directory brings back every
// resource, the same revision and the same audit trail; SIGTERM exits 0.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { useServer, Server } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const {
  status, expectGrpcError, expectRefused, listAll, captureWorld, lastRevision, uid,
} = require('./lib/util');

const ctx = useServer({ before, after, beforeEach, afterEach });
let p;
before(() => {
  p = pki();
});
const api = () => ctx.api;

// Every mutation made by the tests below, with the revision its response
// carried (or, for deletes, null: Empty carries none).
const mutations = [];

function record(method, resource, action, response) {
  mutations.push({ method: `/tlsplane.v1.${method}`, resource, action, revision: response && response.revision ? Number(response.revision) : null });
  return response;
}

async function allEvents(req = {}) {
  return listAll(api().AuditService, 'ListAuditEvents', 'auditEvents', req);
}

test('every kind of mutation leaves one audit event', async () => {
  // Whatever the server recorded before (e.g. seeding the built-ins) is not ours.
  const baseline = new Set((await allEvents()).map((e) => e.name));
  const certId = uid('cert');
  const cert = record('CertificateService/CreateCertificate', `certificates/${certId}`, 'create',
    await api().CertificateService.CreateCertificate({
      certificateId: certId, certificate: { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key, labels: { a: '1' } },
    }));
  const cert2 = record('CertificateService/UpdateCertificate', cert.name, 'update',
    await api().CertificateService.UpdateCertificate({
      certificate: { name: cert.name, etag: cert.etag, labels: { a: '2' } }, updateMask: { paths: ['labels'] },
    }));
  assert.ok(cert2.revision > 0);

  const ecId = uid('cert');
  const ec = record('CertificateService/CreateCertificate', `certificates/${ecId}`, 'create',
    await api().CertificateService.CreateCertificate({
      certificateId: ecId, certificate: { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key },
    }));

  const tbId = uid('tb');
  const tb = record('TrustBundleService/CreateTrustBundle', `trustBundles/${tbId}`, 'create',
    await api().TrustBundleService.CreateTrustBundle({ trustBundleId: tbId, trustBundle: { caPem: p.ca.cert } }));
  const rlId = uid('crl');
  const rl = record('RevocationListService/CreateRevocationList', `revocationLists/${rlId}`, 'create',
    await api().RevocationListService.CreateRevocationList({ revocationListId: rlId, revocationList: { crlDer: p.crlDer } }));
  const cpId = uid('cp');
  const cp = record('CipherPolicyService/CreateCipherPolicy', `cipherPolicies/${cpId}`, 'create',
    await api().CipherPolicyService.CreateCipherPolicy({
      cipherPolicyId: cpId, cipherPolicy: { ciphers: 'ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256', dhparamPem: p.dh2048 },
    }));
  const ctxId = uid('ctx');
  const tc = record('TlsContextService/CreateTlsContext', `tlsContexts/${ctxId}`, 'create',
    await api().TlsContextService.CreateTlsContext({
      tlsContextId: ctxId,
      tlsContext: {
        certificates: [cert.name, ec.name], cipherPolicy: cp.name, trustBundle: tb.name, revocationLists: [rl.name],
        requestCert: true, alpnProtocols: ['h2', 'http/1.1'],
      },
    }));
  const ringId = uid('ring');
  const ring = record('TicketKeyService/CreateTicketKeyRing', `ticketKeyRings/${ringId}`, 'create',
    await api().TicketKeyService.CreateTicketKeyRing({ ticketKeyRingId: ringId, ticketKeyRing: { retainedKeys: 2 } }));
  const ring2 = record('TicketKeyService/RotateTicketKeys', ring.name, 'rotate',
    await api().TicketKeyService.RotateTicketKeys({ name: ring.name, etag: ring.etag }));
  record('TicketKeyService/SetTicketKeys', ring.name, null,
    await api().TicketKeyService.SetTicketKeys({ name: ring.name, etag: ring2.etag, keys: [crypto.randomBytes(48)] }));
  const lisId = uid('lis');
  record('ListenerService/CreateListener', `listeners/${lisId}`, 'create',
    await api().ListenerService.CreateListener({
      listenerId: lisId,
      listener: {
        address: '127.0.0.1:19443', defaultTlsContext: tc.name, upstream: '127.0.0.1:19080', ticketKeyRing: ring.name,
        sniRoutes: [{ hostname: '*.example.com', tlsContext: tc.name }],
      },
    }));

  // A delete, of something nothing references.
  const tmpId = uid('tmp');
  const tmp = record('TrustBundleService/CreateTrustBundle', `trustBundles/${tmpId}`, 'create',
    await api().TrustBundleService.CreateTrustBundle({ trustBundleId: tmpId, trustBundle: { caPem: p.ca2.cert } }));
  record('TrustBundleService/DeleteTrustBundle', tmp.name, 'delete',
    await api().TrustBundleService.DeleteTrustBundle({ name: tmp.name, etag: tmp.etag }));

  // Refused calls leave no event.
  await expectRefused(api(), () => api().CertificateService.CreateCertificate({
    certificateId: uid('bad'), certificate: { certificateChainPem: p.rsa.cert, privateKeyPem: p.otherRsaKey },
  }), status.INVALID_ARGUMENT);
  await expectRefused(api(), () => api().CertificateService.DeleteCertificate({ name: cert.name }), status.FAILED_PRECONDITION);

  const events = (await allEvents()).filter((e) => !baseline.has(e.name));
  assert.equal(events.length, mutations.length, `expected ${mutations.length} events, got ${events.length}:\n${events.map((e) => `${e.revision} ${e.method} ${e.resource}`).join('\n')}`);

  // One event per revision; revisions strictly increase in mutation order.
  const byRevision = [...events].sort((a, b) => Number(a.revision) - Number(b.revision));
  const revisions = byRevision.map((e) => Number(e.revision));
  assert.equal(new Set(revisions).size, revisions.length, 'two events at one revision');
  for (let i = 0; i < mutations.length; i++) {
    const m = mutations[i];
    const e = byRevision[i];
    const where = `mutation ${i} (${m.method} ${m.resource})`;
    assert.equal(e.method, m.method, `${where}: method`);
    assert.equal(e.resource, m.resource, `${where}: resource`);
    assert.equal(e.actor, 'token:admin', `${where}: actor (the admin token the harness sends)`);
    if (m.action) assert.equal(e.action, m.action, `${where}: action`);
    else assert.ok(e.action, `${where}: action empty`);
    if (m.revision !== null) assert.equal(Number(e.revision), m.revision, `${where}: the event's revision is not the one the response carried`);
    assert.match(e.name, /^auditEvents\/\d+$/, `${where}: name`);
    assert.ok(e.time && Math.abs(Number(e.time.seconds) - Date.now() / 1000) < 600, `${where}: time ${JSON.stringify(e.time)}`);
  }
  // The global revision: one per committed mutation.
  assert.equal(revisions[revisions.length - 1] - revisions[0], revisions.length - 1, `revisions are not consecutive: ${revisions}`);
});

test('audit filters: resource, since_revision, actor', async () => {
  const events = await allEvents();
  const cert = mutations.find((m) => m.resource.startsWith('certificates/'));
  const forCert = await allEvents({ resource: cert.resource });
  assert.equal(forCert.length, 2, `create + update of ${cert.resource}: ${JSON.stringify(forCert)}`);
  for (const e of forCert) assert.equal(e.resource, cert.resource);

  const revs = events.map((e) => Number(e.revision)).sort((a, b) => a - b);
  const mid = revs[Math.floor(revs.length / 2)];
  const since = await allEvents({ sinceRevision: String(mid) });
  assert.deepEqual(since.map((e) => Number(e.revision)).sort((a, b) => a - b), revs.filter((r) => r > mid));
  assert.equal((await allEvents({ sinceRevision: String(revs[revs.length - 1]) })).length, 0);

  // Seeding the built-ins and the first start's credentials are recorded
  // under other actors ("system", "tlsplane-server").
  const admin = await allEvents({ actor: 'token:admin' });
  assert.deepEqual(admin.map((e) => e.name), events.filter((e) => e.actor === 'token:admin').map((e) => e.name));
  assert.ok(admin.length >= mutations.length);
  assert.equal((await allEvents({ actor: 'somebody-else' })).length, 0);
  assert.equal((await allEvents({ actor: 'anonymous' })).length, 0, 'no anonymous change');
});

test('audit pagination: page_size 2 walks the whole trail without duplicates', async () => {
  const full = await allEvents();
  const paged = await listAll(api().AuditService, 'ListAuditEvents', 'auditEvents', {}, { pageSize: 2 });
  assert.deepEqual(paged.map((e) => e.name), full.map((e) => e.name));
  await expectGrpcError(api().AuditService.ListAuditEvents({ pageSize: -5 }), status.INVALID_ARGUMENT);
});

test('AgentService: no agent on a fresh server; an unknown agent is NOT_FOUND', async () => {
  const res = await api().AgentService.ListAgents({});
  assert.deepEqual(res.agents, []);
  assert.equal(res.nextPageToken, '');
  await expectGrpcError(api().AgentService.GetAgent({ name: 'agents/nobody' }), status.NOT_FOUND);
  await expectRefused(api(), () => api().AgentService.DeleteAgent({ name: 'agents/nobody' }), status.NOT_FOUND);
});

test('label selectors work on every list, not only certificates', async () => {
  const all = await api().ListenerService.ListListeners({ labelSelector: '' });
  assert.ok(all.listeners.length >= 1);
  const tag = uid('lbl');
  const l = all.listeners[0];
  await api().ListenerService.UpdateListener({ listener: { name: l.name, labels: { tag } }, updateMask: { paths: ['labels'] } });
  const sel = await api().ListenerService.ListListeners({ labelSelector: `tag=${tag}` });
  assert.deepEqual(sel.listeners.map((x) => x.name), [l.name]);
  const pol = await api().CipherPolicyService.ListCipherPolicies({ labelSelector: `tag=${tag}` });
  assert.deepEqual(pol.cipherPolicies, []);
  const tcs = await api().TlsContextService.ListTlsContexts({ labelSelector: '!tag' });
  assert.ok(tcs.tlsContexts.length >= 1);
});

test('restart on the same data dir: every resource, the same revision, the same audit trail', async () => {
  const before = await captureWorld(api());
  const revBefore = lastRevision(before);
  assert.ok(revBefore > 0, 'no revision before the restart');
  const dataDir = ctx.server.dataDir;
  assert.ok(fs.existsSync(path.join(dataDir, 'tlsplane.db')), 'no tlsplane.db in the data dir');

  await ctx.restart(); // SIGTERM -> exit 0 asserted -> start again on dataDir

  const health = await api()['grpc.health.v1.Health'].Check({ service: '' });
  assert.equal(health.status, 'SERVING');
  const afterRestart = await captureWorld(api());
  for (const key of Object.keys(before)) {
    assert.deepEqual(afterRestart[key], before[key], `${key} differs after the restart`);
  }
  // Built-ins are not seeded twice.
  const builtIns = afterRestart.cipherPolicies.filter((c) => c.builtIn).map((c) => c.name);
  assert.equal(new Set(builtIns).size, builtIns.length);

  // The revision goes on from where it was.
  const id = uid('after');
  const c = await api().CertificateService.CreateCertificate({
    certificateId: id, certificate: { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key },
  });
  assert.equal(Number(c.revision), revBefore + 1, 'the revision did not continue after the restart');
  // The key survived the restart: a context can still be built with the
  // certificates created before it.
  const certName = before.certificates[0].name;
  const tc = await api().TlsContextService.CreateTlsContext({
    tlsContextId: uid('ctxafter'), tlsContext: { certificates: [certName] },
  });
  assert.deepEqual(tc.certificates, [certName]);
  const got = await api().CertificateService.GetCertificate({ name: certName });
  assert.equal(got.hasPrivateKey, true);
  assert.equal(got.privateKeyPem, '');
});

test('a second server on the same data dir after a clean stop sees the same world', async () => {
  const before = await captureWorld(api());
  const dataDir = ctx.server.dataDir;
  ctx.conn.close();
  ctx.conn = null;
  const r = await ctx.server.stopClean();
  assert.deepEqual({ code: r.code, signal: r.signal }, { code: 0, signal: null });
  const s2 = await Server.start({ dataDir });
  let conn;
  try {
    conn = await connect(s2.address, s2.connectOptions());
    const afterRestart = await captureWorld(conn.api);
    assert.deepEqual(afterRestart, before);
  } finally {
    if (conn) conn.close();
    // Hand it back to the file's after() hook, which stops it cleanly.
    ctx.server = s2;
    ctx.conn = await connect(s2.address, s2.connectOptions());
  }
});

test('after restarts no certificate returns key material', async () => {
  const certs = await listAll(api().CertificateService, 'ListCertificates', 'certificates');
  for (const c of certs) {
    assert.equal(c.privateKeyPem, '');
    assert.equal(c.pfx.length, 0);
    assert.ok(!JSON.stringify(c).includes('PRIVATE KEY'));
  }
});

test('SIGTERM stops the server with exit code 0', async () => {
  ctx.conn.close();
  ctx.conn = null;
  const r = await ctx.server.stopClean();
  assert.equal(r.code, 0);
  assert.equal(r.signal, null);
});
