'use strict';
// CertificateService.CreateCertificateRequest against a real tlsplane-server
// and a real outside CA (`openssl ca`): the server makes the key and a CSR
// for it (subject, names and signature checked with `openssl req`), keeps
// the key to itself, refuses a TlsContext that names a certificate with no
// chain yet and a chain made for another key, attaches the signed chain,
// and a real agent serves it; a re-key of a serving certificate keeps the
// old serial served until the new chain arrives.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { spawnSync } = require('node:child_process');
const { Server } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { exchange } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { freePorts, agentBinary } = require('./lib/agent');
const { tool } = require('./lib/tools');
const { status, expectGrpcError, expectRefused, makeCsr, uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');

let srv;
let conn;
let p;
let up;
let tmp;
const api = () => conn.api;
const certs = () => api().CertificateService;

function openssl(args, input) {
  const r = spawnSync(tool('openssl'), args, { cwd: tmp, encoding: 'utf8', input });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

// An outside CA: `openssl ca` with its own index and serial, copying the
// request's subjectAltName into the certificate.
function outsideCa() {
  fs.mkdirSync(path.join(tmp, 'newcerts'));
  fs.writeFileSync(path.join(tmp, 'index.txt'), '');
  fs.writeFileSync(path.join(tmp, 'serial'), '1000\n');
  fs.writeFileSync(path.join(tmp, 'ca.cnf'), [
    '[ ca ]', 'default_ca = outside', '',
    '[ outside ]',
    `dir = ${tmp}`,
    'database = $dir/index.txt', 'serial = $dir/serial', 'new_certs_dir = $dir/newcerts',
    'certificate = $dir/ca.pem', 'private_key = $dir/ca.key',
    'default_md = sha256', 'default_days = 30', 'policy = any', 'copy_extensions = copy',
    'unique_subject = no', '',
    '[ any ]', 'commonName = supplied', 'organizationName = optional', 'organizationalUnitName = optional', '',
    '[ server ]', 'basicConstraints = critical,CA:FALSE', 'keyUsage = critical,digitalSignature,keyEncipherment',
    'extendedKeyUsage = serverAuth', '',
  ].join('\n'));
  const r = openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', 'ca.key', '-out', 'ca.pem', '-subj', '/O=Outside/CN=Outside CA', '-days', '30']);
  assert.equal(r.code, 0, r.out);
}

// The outside CA signs csrPem: the certificate, PEM.
function sign(csrPem) {
  const id = uid('csr');
  fs.writeFileSync(path.join(tmp, `${id}.csr`), csrPem);
  const r = openssl(['ca', '-batch', '-config', 'ca.cnf', '-in', `${id}.csr`, '-out', `${id}.pem`, '-extensions', 'server', '-notext']);
  assert.equal(r.code, 0, r.out);
  return fs.readFileSync(path.join(tmp, `${id}.pem`), 'utf8');
}

function csrText(csrPem) {
  const f = path.join(tmp, `${uid('req')}.csr`);
  fs.writeFileSync(f, csrPem);
  const text = openssl(['req', '-noout', '-text', '-in', f]);
  const verify = openssl(['req', '-noout', '-verify', '-in', f]);
  return { text: text.out, verified: verify.code === 0 && /verify OK/.test(verify.out), verifyOut: verify.out };
}

function assertNoKey(x, what) {
  assert.equal(x.privateKeyPem || '', '', `${what}: private_key_pem returned`);
  assert.ok(!/PRIVATE KEY/.test(JSON.stringify(x)), `${what}: a private key appears in the response`);
}

// UpdateCertificate with the chain (and the other fields of extra; etag
// is no mask path).
const attach = (name, chain, extra = {}) => certs().UpdateCertificate({
  certificate: { name, certificateChainPem: chain, ...extra },
  updateMask: {
    paths: ['certificate_chain_pem', ...Object.keys(extra).filter((k) => k !== 'etag').map((k) => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`))],
  },
});

const fingerprint = (pem) => new crypto.X509Certificate(pem).fingerprint256;

before(async () => {
  agentBinary();
  p = pki();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-csr-'));
  outsideCa();
  up = await Upstream.start({ mode: 'echo' });
  srv = await Server.start({ tls: true });
  conn = await connect(srv.address, srv.connectOptions());
});

after(async () => {
  if (conn) conn.close();
  if (srv && srv.running) {
    assert.ok(!/PRIVATE KEY/.test(srv.log()), 'a private key in the server log');
    await srv.stopClean();
  }
  if (up) await up.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('a request for a new certificate: a CSR for the subject and names, signed by a key that stays in the server', async () => {
  const c = await certs().CreateCertificateRequest({
    certificateId: 'outside', commonName: 'www.example.com', organization: 'Example', organizationalUnit: 'Web',
    dnsNames: ['www.example.com', 'api.example.com'], ipAddresses: ['127.0.0.1'], keyAlgorithm: 'ECDSA_P384', labels: { team: 'web' },
  });
  assertNoKey(c, 'CreateCertificateRequest');
  assert.equal(c.name, 'certificates/outside');
  assert.equal(c.certificateChainPem, '', 'no chain yet');
  assert.equal(c.hasPrivateKey, true);
  assert.deepEqual(c.labels, { team: 'web' });
  const pr = c.pendingRequest;
  assert.ok(pr, 'pending_request');
  assert.equal(pr.commonName, 'www.example.com');
  assert.equal(pr.subject, 'CN=www.example.com,OU=Web,O=Example');
  assert.deepEqual(pr.dnsNames, ['www.example.com', 'api.example.com']);
  assert.deepEqual(pr.ipAddresses, ['127.0.0.1']);
  assert.equal(pr.keyAlgorithm, 'ECDSA_P384');
  assert.ok(Math.abs(Number(pr.requestTime.seconds) - Date.now() / 1000) < 60, 'request_time is now');
  const { text, verified, verifyOut } = csrText(pr.csrPem);
  assert.ok(verified, `openssl req -verify: ${verifyOut}`);
  assert.match(text, /Subject: O\s*=\s*Example, OU\s*=\s*Web, CN\s*=\s*www\.example\.com/);
  assert.match(text, /DNS:www\.example\.com, DNS:api\.example\.com, IP Address:127\.0\.0\.1/);
  assert.match(text, /NIST CURVE: P-384|secp384r1/);

  const g = await certs().GetCertificate({ name: c.name });
  assertNoKey(g, 'GetCertificate');
  assert.equal(g.pendingRequest.csrPem, pr.csrPem);
  const l = await certs().ListCertificates({});
  assertNoKey(l, 'ListCertificates');
  // No leaf, no expiry: /metrics does not show one of 0.
  const m = spawnSync('curl', ['-sS', '--cacert', path.join(srv.dataDir, 'ca.pem'), '-H', `authorization: Bearer ${srv.adminToken}`, `${srv.httpBase}/metrics`], { encoding: 'utf8' });
  assert.equal(m.status, 0, m.stderr);
  assert.match(m.stdout, /^# TYPE tlsplane_certificate_not_after_seconds gauge$/m);
  assert.doesNotMatch(m.stdout, /^tlsplane_certificate_not_after_seconds\{certificate="certificates\/outside"/m);
  // Sealed at rest: no key in the clear in the database files.
  for (const f of ['tlsplane.db', 'tlsplane.db-wal']) {
    const file = path.join(srv.dataDir, f);
    if (fs.existsSync(file)) assert.equal(fs.readFileSync(file).indexOf('PRIVATE KEY'), -1, `${f} holds a key in the clear`);
  }
});

test('every key algorithm makes a request that verifies; the default is ECDSA P-256', async () => {
  const want = {
    KEY_ALGORITHM_UNSPECIFIED: [/id-ecPublicKey/, /P-256|prime256v1/, 'ECDSA_P256'],
    RSA_2048: [/rsaEncryption/, /2048 bit/, 'RSA_2048'],
    RSA_3072: [/rsaEncryption/, /3072 bit/, 'RSA_3072'],
    ECDSA_P256: [/id-ecPublicKey/, /P-256|prime256v1/, 'ECDSA_P256'],
    ED25519: [/ED25519/, /ED25519/, 'ED25519'],
  };
  for (const [alg, [algRe, sizeRe, stored]] of Object.entries(want)) {
    const id = uid('alg');
    const c = await certs().CreateCertificateRequest({ certificateId: id, dnsNames: [`${id}.example.com`], keyAlgorithm: alg });
    assert.equal(c.pendingRequest.keyAlgorithm, stored, alg);
    assert.equal(c.pendingRequest.commonName, `${id}.example.com`, `${alg}: the first name by default`);
    const { text, verified, verifyOut } = csrText(c.pendingRequest.csrPem);
    assert.ok(verified, `${alg}: ${verifyOut}`);
    assert.match(text, algRe, alg);
    assert.match(text, sizeRe, alg);
    assert.match(text, new RegExp(`Subject: CN\\s*=\\s*${id}\\.example\\.com`), alg);
    await certs().DeleteCertificate({ name: c.name });
  }
});

test('bad requests are refused naming the field, and nothing changes', async () => {
  const base = { dnsNames: ['a.example.com'] };
  const cases = [
    [{ ...base }, status.INVALID_ARGUMENT, 'certificate_id: give either'],
    [{ ...base, certificateId: 'x1', certificate: 'certificates/outside' }, status.INVALID_ARGUMENT, 'certificate_id: give either'],
    [{ ...base, certificateId: 'Bad_Id' }, status.INVALID_ARGUMENT, 'certificate_id'],
    [{ certificateId: uid('n') }, status.INVALID_ARGUMENT, 'dns_names: at least one name'],
    [{ certificateId: uid('n'), dnsNames: ['bad name'] }, status.INVALID_ARGUMENT, 'dns_names[0]'],
    [{ certificateId: uid('n'), ipAddresses: ['300.1.1.1'] }, status.INVALID_ARGUMENT, 'ip_addresses[0]'],
    [{ ...base, certificateId: uid('n'), commonName: 'x'.repeat(65) }, status.INVALID_ARGUMENT, 'common_name: at most 64'],
    [{ ...base, certificateId: uid('n'), organization: 'x'.repeat(65) }, status.INVALID_ARGUMENT, 'organization: at most 64'],
    [{ ...base, certificateId: uid('n'), keyAlgorithm: 42 }, status.INVALID_ARGUMENT, 'key_algorithm'],
    [{ ...base, certificateId: uid('n'), etag: 'abc' }, status.INVALID_ARGUMENT, 'etag'],
    [{ ...base, certificate: 'certificates/outside', labels: { a: 'b' } }, status.INVALID_ARGUMENT, 'labels'],
    [{ ...base, certificate: 'certificates/nope' }, status.NOT_FOUND, undefined],
    [{ ...base, certificateId: 'outside' }, status.ALREADY_EXISTS, undefined],
  ];
  for (const [req, code, field] of cases)
    await expectRefused(api(), () => certs().CreateCertificateRequest(req), code, { field, what: JSON.stringify(req).slice(0, 80) });
});

test('a TlsContext naming a certificate with no chain yet is refused', async () => {
  await expectRefused(api(), () => api().TlsContextService.CreateTlsContext({ tlsContextId: uid('pend'), tlsContext: { certificates: ['certificates/outside'] } }),
    status.INVALID_ARGUMENT, { field: /certificates\[0\]: certificates\/outside has no certificate chain yet/ });
  // Nor can it drop its request (it would be left with nothing).
  await expectRefused(api(), () => certs().UpdateCertificate({ certificate: { name: 'certificates/outside' }, updateMask: { paths: ['pending_request'] } }),
    status.INVALID_ARGUMENT, { field: 'certificate.pending_request: certificates/outside has no chain yet' });
});

test('a chain for another key is refused naming certificate_chain_pem; the signed chain is attached and served by an agent', async (t) => {
  const before = await certs().GetCertificate({ name: 'certificates/outside' });
  const other = sign(makeCsr('www.example.com').csr);
  await expectRefused(api(), () => attach('certificates/outside', other), status.INVALID_ARGUMENT,
    { field: "certificate.certificate_chain_pem: does not match the pending request's key" });

  const chain = sign(before.pendingRequest.csrPem);
  // The etag rules, as for every update.
  await expectRefused(api(), () => attach('certificates/outside', chain, { etag: '"stale"' }), status.FAILED_PRECONDITION, {});
  const c = await attach('certificates/outside', chain, { etag: before.etag });
  assertNoKey(c, 'UpdateCertificate');
  assert.equal(c.pendingRequest, null, 'the request ends');
  assert.equal(c.hasPrivateKey, true);
  assert.equal(c.keyAlgorithm, 'EC');
  assert.equal(c.keyCurve, 'secp384r1');
  // The outside CA orders the names as its policy says.
  assert.deepEqual(c.subject.split(',').sort(), ['CN=www.example.com', 'O=Example', 'OU=Web']);
  assert.deepEqual(c.dnsNames, ['www.example.com', 'api.example.com']);
  assert.deepEqual(c.ipAddresses, ['127.0.0.1']);
  assert.equal(c.serialNumber, new crypto.X509Certificate(chain).serialNumber);
  assert.deepEqual(c.labels, { team: 'web' });
  const ev = (await api().AuditService.ListAuditEvents({ resource: 'certificates/outside' })).auditEvents;
  assert.deepEqual(ev.map((e) => e.action).sort(), ['request', 'update'], 'audited: the request, then the attach');
  assert.equal(ev.filter((e) => Number(e.revision) > Number(before.revision)).length, 1, 'one revision');

  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'outside', tlsContext: { certificates: ['certificates/outside'] } });
  const [port] = await freePorts(1);
  await api().ListenerService.CreateListener({ listenerId: 'outside', listener: { address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/outside', upstream: up.address } });
  const tok = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'csr-a' } });
  const agent = await CpAgent.start(srv, { name: 'csr-a', joinToken: tok.secret, wait: 'connected' });
  t.after(() => agent.stopClean());
  const served = () => exchange(port, { servername: 'www.example.com' }, { send: 'x\n' });
  await waitFor('the agent serves the attached chain', async () => (await served()).info?.fingerprint === fingerprint(chain));

  // Re-key: a new pending key and CSR beside the serving ones.
  const rekey = await certs().CreateCertificateRequest({ certificate: 'certificates/outside', etag: c.etag, commonName: 'www.example.com', dnsNames: ['www.example.com', 'new.example.com'], keyAlgorithm: 'ED25519' });
  assertNoKey(rekey, 're-key');
  assert.equal(rekey.serialNumber, c.serialNumber, 'the certificate keeps its chain');
  assert.equal(rekey.certificateChainPem, c.certificateChainPem);
  assert.equal(rekey.pendingRequest.keyAlgorithm, 'ED25519');
  assert.deepEqual(rekey.pendingRequest.dnsNames, ['www.example.com', 'new.example.com']);
  assert.ok(csrText(rekey.pendingRequest.csrPem).verified);
  assert.notEqual(rekey.pendingRequest.csrPem, before.pendingRequest.csrPem);
  // Serving goes on with the old key and chain; a label write keeps the request.
  for (let i = 0; i < 3; i++) {
    const r = await served();
    assert.ok(r.ok, `${r.phase}: ${r.error}`);
    assert.equal(r.info.fingerprint, fingerprint(chain), 'the old serial is served while the request is pending');
  }
  const labelled = await certs().UpdateCertificate({ certificate: { name: c.name, labels: { team: 'web', rekey: 'yes' } }, updateMask: { paths: ['labels'] } });
  assert.equal(labelled.pendingRequest.csrPem, rekey.pendingRequest.csrPem, 'a label write keeps the request');
  // A chain for the old key's CSR is neither key's new chain: the first
  // chain again (for the serving key) is accepted and keeps the request.
  const same = await attach(c.name, chain);
  assert.equal(same.pendingRequest.csrPem, rekey.pendingRequest.csrPem, 'a chain for the serving key keeps the request');
  await expectRefused(api(), () => attach(c.name, other), status.INVALID_ARGUMENT,
    { field: "certificate.certificate_chain_pem: does not match the pending request's key nor the current key" });

  const newChain = sign(rekey.pendingRequest.csrPem);
  const renewed = await attach(c.name, newChain);
  assert.equal(renewed.pendingRequest, null);
  assert.equal(renewed.keyAlgorithm, 'ED25519');
  assert.notEqual(renewed.serialNumber, c.serialNumber);
  assert.deepEqual(renewed.dnsNames, ['www.example.com', 'new.example.com']);
  await waitFor('the agent serves the new serial', async () => (await served()).info?.fingerprint === fingerprint(newChain));
});

test('a pending request is dropped with update_mask "pending_request", or ended by an operator\'s own key and chain', async () => {
  const id = uid('drop');
  const leaf = p.leaf(id, { cn: `${id}.example.com`, sans: [`DNS:${id}.example.com`] });
  const c = await certs().CreateCertificate({ certificateId: id, certificate: { certificateChainPem: leaf.cert, privateKeyPem: leaf.key } });
  const r1 = await certs().CreateCertificateRequest({ certificate: c.name, dnsNames: [`${id}.example.com`] });
  assert.ok(r1.pendingRequest);
  const dropped = await certs().UpdateCertificate({ certificate: { name: c.name }, updateMask: { paths: ['pending_request'] } });
  assert.equal(dropped.pendingRequest, null, 'dropped');
  assert.equal(dropped.serialNumber, c.serialNumber, 'the chain stays');
  // Its chain no longer attaches.
  await expectRefused(api(), () => attach(c.name, sign(r1.pendingRequest.csrPem)), status.INVALID_ARGUMENT, { field: 'certificate.certificate_chain_pem' });

  const r2 = await certs().CreateCertificateRequest({ certificate: c.name, dnsNames: [`${id}.example.com`] });
  assert.ok(r2.pendingRequest);
  const leaf2 = p.leaf(`${id}-2`, { cn: `${id}.example.com`, sans: [`DNS:${id}.example.com`] });
  const own = await attach(c.name, leaf2.cert, { privateKeyPem: leaf2.key });
  assert.equal(own.pendingRequest, null, 'an operator\'s key and chain end the request');
  assert.equal(own.sha256Fingerprint, fingerprint(leaf2.cert));
  // A never-issued certificate is deleted.
  const pend = await certs().CreateCertificateRequest({ certificateId: uid('gone'), dnsNames: ['gone.example.com'] });
  await certs().DeleteCertificate({ name: pend.name });
  await expectGrpcError(certs().GetCertificate({ name: pend.name }), status.NOT_FOUND);
});
