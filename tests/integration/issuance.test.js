'use strict';
// IssuerService and CertificateService.IssueCertificate against a real
// tlsplane-server: issuers of every kind (the control plane's CA, internal
// roots and intermediates, an imported CA, self-signed), no CA key ever read
// back, bad input refused naming the field; certificates issued for every
// key algorithm whose chains `openssl verify` accepts; a short-lived
// certificate renewed by the server while a real agent serves it under a
// loop of handshakes; a renewal the issuer cannot make, failing visibly and
// retried with back-off.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { spawnSync } = require('node:child_process');
const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { exchange } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { freePorts, agentBinary } = require('./lib/agent');
const { status, seconds, expectGrpcError, expectRefused, uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');

const RETRY_MS = 1500; // TLSPLANE_RENEW_RETRY_MS: the first retry after a failed renewal

let srv;
let conn;
let p;
let up;
let tmp;
const api = () => conn.api;
const issuers = () => api().IssuerService;
const certs = () => api().CertificateService;

before(async () => {
  agentBinary();
  p = pki();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-issuance-'));
  up = await Upstream.start({ mode: 'echo' });
  srv = await Server.start({ tls: true, env: { TLSPLANE_RENEW_RETRY_MS: String(RETRY_MS) } });
  conn = await connect(srv.address, srv.connectOptions());
});

after(async () => {
  if (conn) conn.close();
  if (srv && srv.running) await srv.stopClean();
  if (up) await up.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

function write(name, text) {
  const f = path.join(tmp, name);
  fs.writeFileSync(f, text);
  return f;
}

// `openssl verify -CAfile <issuer's certificates> -untrusted <chain>` on the
// leaf: what a client holding the issuer's root would say.
function verify(caPem, chainPem) {
  const ca = write(`${uid('ca')}.pem`, caPem);
  const chain = write(`${uid('chain')}.pem`, chainPem);
  const leaf = write(`${uid('leaf')}.pem`, new crypto.X509Certificate(chainPem).toString());
  const r = spawnSync('openssl', ['verify', '-purpose', 'sslserver', '-CAfile', ca, '-untrusted', chain, leaf], { encoding: 'utf8' });
  return `${r.stdout}${r.stderr}`.trim();
}

// A WatchEvents stream of the renewal events: { events, cancel() }.
function watchRenewals() {
  const call = conn.clients['tlsplane.v1.AuditService'].WatchEvents({ kinds: ['certificates'], include: ['RENEWED', 'RENEWAL_FAILED'] });
  const w = { events: [], cancel: () => call.cancel() };
  call.on('data', (e) => w.events.push(e));
  call.on('error', () => {});
  return w;
}

function assertNoKey(x, what) {
  assert.equal(x.privateKeyPem || '', '', `${what}: private_key_pem returned`);
  assert.ok(!/PRIVATE KEY/.test(JSON.stringify(x)), `${what}: a private key appears in the response`);
}

async function metrics() {
  const r = spawnSync('curl', ['-sS', '--cacert', path.join(srv.dataDir, 'ca.pem'), '-H', `authorization: Bearer ${srv.adminToken}`, `${srv.httpBase}/metrics`], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

function metric(text, family, certificate) {
  const m = new RegExp(`^${family}\\{certificate="${certificate}"\\} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : null;
}

test('issuers of every kind are created and read back, never with a key', async () => {
  const cp = await issuers().CreateIssuer({ issuerId: 'cp', issuer: { type: 'CONTROL_PLANE_CA' } });
  assert.equal(cp.name, 'issuers/cp');
  assert.equal(cp.certificatePem.trim(), srv.ca.toString().trim(), 'the control plane CA certificate');
  assert.equal(cp.keyAlgorithm, 'ECDSA_P256', 'the default for issued keys');

  const root = await issuers().CreateIssuer({
    issuerId: 'root', issuer: { type: 'INTERNAL_CA', commonName: 'Test Root', caKeyAlgorithm: 'RSA_3072', keyAlgorithm: 'RSA_2048' },
  });
  assert.match(root.subject, /CN=Test Root/);
  assert.equal(root.caKeyType, 'RSA');
  assert.equal(root.caKeyAlgorithm, 'RSA_3072');
  const rootX = new crypto.X509Certificate(root.certificatePem);
  assert.ok(rootX.ca, 'a CA certificate');
  assert.equal(rootX.issuer, rootX.subject, 'self-signed');
  assert.ok(seconds(root.notAfter) > Date.now() / 1000 + 9 * 365 * 86400, 'ten years by default');

  const inter = await issuers().CreateIssuer({ issuerId: 'inter', issuer: { type: 'INTERNAL_CA', parent: 'issuers/root', caKeyAlgorithm: 'ED25519' } });
  const interX = new crypto.X509Certificate(inter.certificatePem);
  assert.ok(interX.checkIssued(rootX), 'the intermediate is signed by its parent');
  assert.equal(inter.caKeyType, 'ED25519');
  assert.match(verify(root.certificatePem, inter.certificatePem), /: OK$/);
  // certificate_pem holds the intermediate and then its root.
  assert.equal((inter.certificatePem.match(/BEGIN CERTIFICATE/g) || []).length, 2);

  const imported = await issuers().CreateIssuer({ issuerId: 'imported', issuer: { type: 'IMPORTED_CA', certificatePem: p.read('ca.crt'), privateKeyPem: p.read('ca.key') } });
  assert.equal(imported.sha256Fingerprint, new crypto.X509Certificate(p.read('ca.crt')).fingerprint256);

  // The CA key is sealed at rest: neither the PEM given nor its PKCS#8 form is in the database files.
  const keyPems = [p.read('ca.key'), crypto.createPrivateKey(p.read('ca.key')).export({ type: 'pkcs8', format: 'pem' })];
  const lines = keyPems.flatMap((k) => k.split('\n').filter((l) => /^[A-Za-z0-9+/=]{40,}$/.test(l)));
  assert.ok(lines.length > 4);
  for (const l of lines) noteSecret(l); // and never in the server's log
  for (const f of ['tlsplane.db', 'tlsplane.db-wal'].map((x) => path.join(srv.dataDir, x)).filter((x) => fs.existsSync(x))) {
    const bytes = fs.readFileSync(f);
    for (const l of lines) assert.equal(bytes.indexOf(l), -1, `${path.basename(f)} holds the CA key`);
  }

  const self = await issuers().CreateIssuer({ issuerId: 'self', issuer: { type: 'SELF_SIGNED', keyAlgorithm: 'ED25519' } });
  assert.equal(self.certificatePem, '');

  for (const x of [cp, root, inter, imported, self]) {
    assertNoKey(x, `create ${x.name}`);
    const g = await issuers().GetIssuer({ name: x.name });
    assertNoKey(g, `get ${x.name}`);
    assert.equal(g.etag, x.etag);
  }
  const list = (await issuers().ListIssuers({})).issuers;
  assert.deepEqual(list.map((x) => x.name).sort(), ['issuers/cp', 'issuers/imported', 'issuers/inter', 'issuers/root', 'issuers/self']);
  for (const x of list) assertNoKey(x, `list ${x.name}`);

  // Labels and the default key algorithm change; the CA does not.
  const u = await issuers().UpdateIssuer({ issuer: { name: 'issuers/root', labels: { team: 'a' }, keyAlgorithm: 'ECDSA_P384' }, updateMask: { paths: ['labels', 'key_algorithm'] } });
  assert.equal(u.keyAlgorithm, 'ECDSA_P384');
  assert.equal(u.sha256Fingerprint, root.sha256Fingerprint);
  assert.deepEqual(u.labels, { team: 'a' });
});

test('bad issuer input is refused naming the field, and nothing changes', async () => {
  const bad = [
    [{ }, status.INVALID_ARGUMENT, 'issuer.type: required'],
    [{ type: 'IMPORTED_CA', certificatePem: p.read('ca.crt'), privateKeyPem: p.ecdsa.key }, status.INVALID_ARGUMENT, 'issuer.private_key_pem: not the key'],
    [{ type: 'IMPORTED_CA', certificatePem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key }, status.INVALID_ARGUMENT, 'issuer.certificate_pem: not a CA'],
    [{ type: 'IMPORTED_CA', certificatePem: p.read('ca.crt') }, status.INVALID_ARGUMENT, 'issuer.private_key_pem: required'],
    [{ type: 'IMPORTED_CA', certificatePem: 'junk', privateKeyPem: p.read('ca.key') }, status.INVALID_ARGUMENT, 'issuer.certificate_pem'],
    [{ type: 'INTERNAL_CA', parent: 'issuers/nope' }, status.INVALID_ARGUMENT, 'issuer.parent: issuers/nope not found'],
    [{ type: 'INTERNAL_CA', parent: 'issuers/self' }, status.INVALID_ARGUMENT, 'issuer.parent: issuers/self is not a CA'],
    [{ type: 'INTERNAL_CA', parent: 'bundles/x' }, status.INVALID_ARGUMENT, 'issuer.parent'],
    [{ type: 'INTERNAL_CA', caLifetime: { seconds: 10 } }, status.INVALID_ARGUMENT, 'issuer.ca_lifetime'],
    [{ type: 'INTERNAL_CA', caKeyAlgorithm: 99 }, status.INVALID_ARGUMENT, 'issuer.ca_key_algorithm'],
    [{ type: 'SELF_SIGNED', privateKeyPem: p.read('ca.key') }, status.INVALID_ARGUMENT, 'issuer.private_key_pem: only for IMPORTED_CA'],
    [{ type: 'CONTROL_PLANE_CA', parent: 'issuers/root' }, status.INVALID_ARGUMENT, 'issuer.parent: only for INTERNAL_CA'],
  ];
  for (const [issuer, code, field] of bad) {
    await expectRefused(api(), () => issuers().CreateIssuer({ issuerId: uid('bad'), issuer }), code, { field, what: JSON.stringify(issuer).slice(0, 80) });
  }
  await expectRefused(api(), () => issuers().CreateIssuer({ issuerId: 'Bad_Id', issuer: { type: 'SELF_SIGNED' } }), status.INVALID_ARGUMENT, { field: 'issuer_id' });
  await expectRefused(api(), () => issuers().UpdateIssuer({ issuer: { name: 'issuers/root', type: 'SELF_SIGNED' }, updateMask: { paths: ['type'] } }), status.INVALID_ARGUMENT, { field: 'issuer.type: cannot change' });
  await expectRefused(api(), () => issuers().UpdateIssuer({ issuer: { name: 'issuers/root', certificatePem: p.read('ca.crt') }, updateMask: { paths: ['certificate_pem'] } }), status.INVALID_ARGUMENT, { field: 'issuer.certificate_pem' });
  // A parent in use cannot go.
  await expectRefused(api(), () => issuers().DeleteIssuer({ name: 'issuers/root' }), status.FAILED_PRECONDITION, { includes: 'issuers/inter' });
  // An imported issuer's key can be replaced only by its certificate's key.
  await expectRefused(api(), () => issuers().UpdateIssuer({ issuer: { name: 'issuers/imported', privateKeyPem: p.ecdsa.key }, updateMask: { paths: ['private_key_pem'] } }), status.INVALID_ARGUMENT, { field: 'issuer.private_key_pem: not the key' });
});

test('IssueCertificate: every key algorithm from every issuer; the chain verifies and the names match', async () => {
  const issuerPem = {};
  for (const x of (await issuers().ListIssuers({})).issuers) issuerPem[x.name] = x.certificatePem;
  const algs = ['RSA_2048', 'RSA_3072', 'RSA_4096', 'ECDSA_P256', 'ECDSA_P384', 'ED25519'];
  const expectKey = { RSA_2048: ['RSA', 2048], RSA_3072: ['RSA', 3072], RSA_4096: ['RSA', 4096], ECDSA_P256: ['EC', 256], ECDSA_P384: ['EC', 384], ED25519: ['ED25519', 256] };
  const cases = [
    ...algs.map((a) => ['issuers/inter', a]),
    ['issuers/root', ''], // the issuer's default: ECDSA_P384 since the update
    ['issuers/cp', 'ECDSA_P256'],
    ['issuers/imported', 'RSA_2048'],
    ['issuers/self', ''], // ED25519
  ];
  for (const [issuer, alg] of cases) {
    const id = uid('iss');
    const c = await certs().IssueCertificate({
      certificateId: id, issuer, dnsNames: ['www.example.com', 'api.example.com'], ipAddresses: ['127.0.0.1'],
      lifetime: { seconds: 3600 }, keyAlgorithm: alg || undefined, labels: { issued: 'yes' },
    });
    const what = `${issuer} ${alg || 'default'}`;
    assertNoKey(c, what);
    assert.equal(c.name, `certificates/${id}`);
    assert.equal(c.hasPrivateKey, true);
    assert.deepEqual(c.labels, { issued: 'yes' });
    assert.deepEqual([...c.dnsNames].sort(), ['api.example.com', 'www.example.com'], `${what}: dns_names`);
    assert.deepEqual(c.ipAddresses, ['127.0.0.1'], `${what}: ip_addresses`);
    assert.equal(c.subject, 'CN=www.example.com', `${what}: subject`);
    const resolved = alg || (issuer === 'issuers/root' ? 'ECDSA_P384' : 'ED25519');
    assert.deepEqual([c.keyAlgorithm, c.keyBits], expectKey[resolved], `${what}: key`);
    assert.equal(c.issuance.issuer, issuer);
    assert.equal(c.issuance.keyAlgorithm, resolved);
    assert.equal(Number(c.issuance.lifetime.seconds), 3600);
    // not_after is an hour away; renewal_time a third of the lifetime before it.
    assert.ok(Math.abs(seconds(c.notAfter) - (Date.now() / 1000 + 3600)) < 30, `${what}: not_after`);
    assert.equal(seconds(c.renewalTime), seconds(c.notAfter) - 1200, `${what}: renewal_time`);
    const ca = issuer === 'issuers/self' ? c.certificateChainPem : issuerPem[issuer];
    assert.match(verify(ca, c.certificateChainPem), /: OK$/, `${what}: openssl verify`);
    // The chain: the leaf, then the intermediate for issuers/inter only.
    assert.equal((c.certificateChainPem.match(/BEGIN CERTIFICATE/g) || []).length, issuer === 'issuers/inter' ? 2 : 1, `${what}: chain length`);
    const g = await certs().GetCertificate({ name: c.name });
    assertNoKey(g, `get ${what}`);
    assert.equal(g.serialNumber, c.serialNumber);
  }
  // Renewal policies: a duration, a fraction.
  const d = await certs().IssueCertificate({ certificateId: uid('pol'), issuer: 'issuers/cp', dnsNames: ['a.example.com'], lifetime: { seconds: 3600 }, renewal: { renewBefore: { seconds: 600 } } });
  assert.equal(seconds(d.renewalTime), seconds(d.notAfter) - 600);
  const f = await certs().IssueCertificate({ certificateId: uid('pol'), issuer: 'issuers/cp', dnsNames: ['a.example.com'], lifetime: { seconds: 3600 }, renewal: { renewBeforeFraction: 0.5 } });
  assert.equal(seconds(f.renewalTime), seconds(f.notAfter) - 1800);
  // The issuer is referenced: it cannot be deleted while a certificate names it.
  await expectRefused(api(), () => issuers().DeleteIssuer({ name: 'issuers/cp' }), status.FAILED_PRECONDITION, { includes: 'certificates/' });
  // Updating the certificate (labels) keeps its issuance.
  const u = await certs().UpdateCertificate({ certificate: { name: d.name, labels: { x: 'y' } }, updateMask: { paths: ['labels'] } });
  assert.equal(u.issuance.issuer, 'issuers/cp');
  assert.equal(seconds(u.renewalTime), seconds(d.renewalTime));
});

test('bad IssueCertificate input is refused naming the field, and nothing changes', async () => {
  const base = { certificateId: uid('bad'), issuer: 'issuers/cp', dnsNames: ['ok.example.com'] };
  const bad = [
    [{ certificateId: '' }, status.INVALID_ARGUMENT, 'certificate_id'],
    [{ certificateId: 'Bad_Id' }, status.INVALID_ARGUMENT, 'certificate_id'],
    [{ issuer: '' }, status.INVALID_ARGUMENT, 'issuer: required'],
    [{ issuer: 'issuers/nope' }, status.INVALID_ARGUMENT, 'issuer: issuers/nope not found'],
    [{ dnsNames: [] }, status.INVALID_ARGUMENT, 'dns_names: at least one'],
    [{ dnsNames: ['bad name'] }, status.INVALID_ARGUMENT, 'dns_names[0]'],
    [{ ipAddresses: ['300.1.1.1'] }, status.INVALID_ARGUMENT, 'ip_addresses[0]'],
    [{ lifetime: { seconds: 5 } }, status.INVALID_ARGUMENT, 'lifetime'],
    [{ lifetime: { seconds: 3600 }, renewal: { renewBefore: { seconds: 3600 } } }, status.INVALID_ARGUMENT, 'renewal.renew_before'],
    [{ renewal: { renewBeforeFraction: 1.5 } }, status.INVALID_ARGUMENT, 'renewal.renew_before_fraction'],
    [{ keyAlgorithm: 42 }, status.INVALID_ARGUMENT, 'key_algorithm'],
    [{ labels: { 'Bad Key': 'x' } }, status.INVALID_ARGUMENT, 'labels'],
  ];
  for (const [over, code, field] of bad) {
    await expectRefused(api(), () => certs().IssueCertificate({ ...base, ...over }), code, { field, what: JSON.stringify(over) });
  }
  // An existing id.
  const c = await certs().IssueCertificate({ ...base, certificateId: uid('dup') });
  await expectGrpcError(certs().IssueCertificate({ ...base, certificateId: c.name.split('/')[1] }), status.ALREADY_EXISTS);
  // A lifetime beyond what the issuer's CA has left.
  const short = await issuers().CreateIssuer({ issuerId: uid('short'), issuer: { type: 'INTERNAL_CA', caLifetime: { seconds: 120 } } });
  await expectRefused(api(), () => certs().IssueCertificate({ ...base, issuer: short.name, lifetime: { seconds: 3600 } }), status.FAILED_PRECONDITION, { field: `issuer: ${short.name} cannot issue` });
  await issuers().DeleteIssuer({ name: short.name });
});

test('a certificate with a 60 s lifetime is renewed by the server and served by an agent with no failed handshake', async () => {
  const issued = await certs().IssueCertificate({
    certificateId: 'live', issuer: 'issuers/inter', dnsNames: ['www.example.com'], lifetime: { seconds: 60 }, renewal: { renewBefore: { seconds: 40 } },
  });
  assert.ok(seconds(issued.renewalTime) <= Date.now() / 1000 + 21, 'renews 20 s after issue');
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'live', tlsContext: { certificates: ['certificates/live'] } });
  const [port] = await freePorts(1);
  await api().ListenerService.CreateListener({ listenerId: 'live', listener: { address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/live', upstream: up.address } });
  const tok = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'issued-a' } });
  const agent = await CpAgent.start(srv, { name: 'issued-a', joinToken: tok.secret, wait: 'connected' });
  const watch = watchRenewals();
  const oldFp = new crypto.X509Certificate(issued.certificateChainPem).fingerprint256;
  let running = true;
  const res = { ok: 0, failed: [], fps: new Set() };
  const loop = async () => {
    while (running) {
      const r = await exchange(port, {}, { send: 'x\n' });
      if (r.ok) {
        res.ok++;
        res.fps.add(r.info.fingerprint);
      } else {
        res.failed.push(`${r.phase}: ${r.error}`);
      }
    }
  };
  try {
    await waitFor('the agent serves the issued certificate', async () => (await exchange(port, {}, { send: 'x\n' })).info?.fingerprint === oldFp);
    const loops = [loop(), loop()];
    const renewed = await waitFor('the server renews it', async () => {
      const c = await certs().GetCertificate({ name: 'certificates/live' });
      return c.serialNumber !== issued.serialNumber ? c : null;
    }, { timeoutMs: 45000 });
    const newFp = new crypto.X509Certificate(renewed.certificateChainPem).fingerprint256;
    await waitFor('the agent serves the renewed certificate', () => res.fps.has(newFp), { timeoutMs: 15000 });
    running = false;
    await Promise.all(loops);
    assert.deepEqual(res.failed, [], 'no handshake failed');
    assert.ok(res.ok > 10, `only ${res.ok} handshakes`);
    assert.ok(renewed.lastRenewalTime, 'last_renewal_time');
    assert.equal(renewed.lastRenewalError, '');
    assert.equal(renewed.renewalFailures, 0);
    assert.equal(renewed.issuance.issuer, 'issuers/inter');
    assert.deepEqual(renewed.dnsNames, ['www.example.com']);
    assert.ok(seconds(renewed.notAfter) > seconds(issued.notAfter), 'a later not_after');
    assert.ok(seconds(renewed.renewalTime) > seconds(issued.renewalTime), 'the next renewal moves on');
    assert.match(verify((await issuers().GetIssuer({ name: 'issuers/inter' })).certificatePem, renewed.certificateChainPem), /: OK$/);
    // One revision, by the system, audited.
    const ev = (await api().AuditService.ListAuditEvents({ resource: 'certificates/live' })).auditEvents;
    const renewal = ev.find((e) => e.action === 'renew');
    assert.ok(renewal, `audit: ${JSON.stringify(ev.map((e) => e.action))}`);
    assert.equal(renewal.actor, 'system');
    assert.equal(Number(renewal.revision) <= Number(renewed.revision), true);
    // Watches hear of it.
    await waitFor('WatchEvents: RENEWED', () => watch.events.some((e) => e.type === 'RENEWED' && e.resource === 'certificates/live'));
  } finally {
    watch.cancel();
    running = false;
    await agent.stopClean();
    await api().ListenerService.DeleteListener({ name: 'listeners/live' });
    await api().TlsContextService.DeleteTlsContext({ name: 'tlsContexts/live' });
    await certs().DeleteCertificate({ name: 'certificates/live' });
  }
});

test('a renewal the issuer cannot make fails visibly (error, next attempt, metric), is retried with back-off, and succeeds once the issuer is fixed', async () => {
  // An imported intermediate CA valid for 70 s more: a 60 s certificate fits
  // now, but not at renewal time (15 s on).
  const short = p.leaf('short-ca', { cn: 'Short CA', ext: 'inter_ext', end: new Date(Date.now() + 70 * 1000) });
  const ca = await issuers().CreateIssuer({
    issuerId: 'dying', issuer: { type: 'IMPORTED_CA', certificatePem: short.cert + p.read('ca.crt'), privateKeyPem: short.key },
  });
  assert.equal((ca.certificatePem.match(/BEGIN CERTIFICATE/g) || []).length, 2);
  const watch = watchRenewals();
  const c = await certs().IssueCertificate({ certificateId: 'doomed', issuer: ca.name, dnsNames: ['doomed.example.com'], lifetime: { seconds: 60 }, renewal: { renewBefore: { seconds: 45 } } });
  assert.match(verify(p.read('ca.crt'), c.certificateChainPem), /: OK$/, 'leaf + the imported intermediate verify against the root');
  const failed = await waitFor('the renewal fails', async () => {
    const g = await certs().GetCertificate({ name: c.name });
    return g.renewalFailures >= 1 ? g : null;
  }, { timeoutMs: 30000 });
  assert.equal(failed.serialNumber, c.serialNumber, 'the certificate stays as it was');
  assert.match(failed.lastRenewalError, /issuer: issuers\/dying cannot issue a certificate for 60 s: its CA certificate expires at/);
  assert.ok(seconds(failed.nextAttemptTime) > Date.now() / 1000 - 1, 'next_attempt_time is ahead');
  assert.ok(!failed.lastRenewalTime, 'never renewed');
  const m = await metrics();
  assert.ok(metric(m, 'tlsplane_certificate_renewal_failures', 'certificates/doomed') >= 1, 'tlsplane_certificate_renewal_failures');
  assert.equal(metric(m, 'tlsplane_certificate_renewal_time_seconds', 'certificates/doomed'), seconds(failed.renewalTime));
  // Retried with back-off: RETRY_MS, then twice that.
  const again = await waitFor('a retry', async () => {
    const g = await certs().GetCertificate({ name: c.name });
    return g.renewalFailures >= 2 ? g : null;
  }, { timeoutMs: 15000 });
  const gap = seconds(again.nextAttemptTime) - seconds(failed.nextAttemptTime);
  assert.ok(gap >= (2 * RETRY_MS) / 1000 - 1, `back-off doubles: ${gap} s between next attempts`);
  const ev = (await api().AuditService.ListAuditEvents({ resource: c.name })).auditEvents;
  assert.ok(ev.some((e) => e.action === 'renew_failed' && e.actor === 'system'), 'the failed attempts are audited');
  const heard = watch.events.filter((e) => e.resource === c.name && e.type === 'RENEWAL_FAILED');
  assert.ok(heard.length >= 2, `WatchEvents: ${heard.length} RENEWAL_FAILED`);
  assert.equal(heard[0].reason, failed.lastRenewalError);
  // The CA's certificate renewed (same key, a year): the next attempt succeeds.
  const long = p.leaf('long-ca', { cn: 'Short CA', ext: 'inter_ext', key: 'short-ca' });
  await issuers().UpdateIssuer({ issuer: { name: ca.name, certificatePem: long.cert + p.read('ca.crt') }, updateMask: { paths: ['certificate_pem'] } });
  const renewed = await waitFor('the renewal succeeds', async () => {
    const g = await certs().GetCertificate({ name: c.name });
    return g.serialNumber !== c.serialNumber ? g : null;
  }, { timeoutMs: 30000 });
  assert.equal(renewed.renewalFailures, 0);
  assert.equal(renewed.lastRenewalError, '');
  assert.ok(!renewed.nextAttemptTime, 'no attempt pending');
  assert.ok(renewed.lastRenewalTime);
  assert.match(verify(p.read('ca.crt'), renewed.certificateChainPem), /: OK$/);
  assert.equal(metric(await metrics(), 'tlsplane_certificate_renewal_failures', 'certificates/doomed'), 0);
  await waitFor('WatchEvents: RENEWED', () => watch.events.some((e) => e.type === 'RENEWED' && e.resource === c.name));
  watch.cancel();
  await certs().DeleteCertificate({ name: c.name });
  await issuers().DeleteIssuer({ name: ca.name });
});
