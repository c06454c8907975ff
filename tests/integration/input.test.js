'use strict';
// Bad input gets a precise error and changes nothing: integer times out of
// range (each of them once overflowed a signed 64-bit computation), strings
// that are not UTF-8 (requests and the agent stream), duplicate update-mask
// paths, a filter time before 1970, sizes past the documented bounds,
// composite or oversized DH parameters, and a --plaintext host that only
// looks like loopback. Rows stored before these checks still read back
// through the JSON mapping. Ticket-key names are plain lower-case hex.

const { test, describe, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync, execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const { useServer, serverBinary, Server } = require('./lib/server');
const { pki } = require('./lib/pki');
const { rewriteRow } = require('./lib/rowmac');
const { FakeAgent } = require('./lib/fakeagent');
const {
  status, expectGrpcError, expectRefused, uid, rawUnary, bearer, makeCsr, captureWorld, lastRevision,
} = require('./lib/util');

let p;
const R = {};
const ctx = useServer({ before, after, beforeEach, afterEach }, {
  start: { tls: true },
  setup: async (c) => {
    p = pki();
    R.cert = await c.api.CertificateService.CreateCertificate({
      certificateId: uid('cert'), certificate: { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key },
    });
    R.ctx = await c.api.TlsContextService.CreateTlsContext({
      tlsContextId: uid('ctx'), tlsContext: { certificates: [R.cert.name] },
    });
    R.ring = await c.api.TicketKeyService.CreateTicketKeyRing({ ticketKeyRingId: uid('ring'), ticketKeyRing: {} });
  },
});
const api = () => ctx.api;

const MAX = '9223372036854775807';
const MIN = '-9223372036854775808';
const NEAR_MIN = '-9223372036854775807';

function listenerOf(extra = {}) {
  return { address: '127.0.0.1:9443', upstream: '127.0.0.1:9080', defaultTlsContext: R.ctx.name, ...extra };
}

// The server is alive and its revision did not move: a Check answers and
// the audit trail ends where it ended before.
async function assertAliveAndUnchanged(revBefore) {
  const h = await api()['grpc.health.v1.Health'].Check({ service: '' });
  assert.equal(h.status, 'SERVING');
  assert.equal(lastRevision(await captureWorld(api())), revBefore);
}

// `tlsplane-server call`: the JSON mapping, as grpcurl and scripts see it.
function call(method, json) {
  const srv = ctx.server;
  const r = spawnSync(serverBinary(), ['call', '--server', srv.address, '--data-dir', srv.dataDir, method, json], {
    encoding: 'utf8',
  });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

// A request encoded with the served schema (proto field names), with every
// "@@" replaced by bytes that are not UTF-8 (the same length, so the
// encoding stays valid protobuf): what a client that does not check sends.
function encodeWithBadUtf8(typeName, obj, bad = Buffer.from([0xc0, 0x80])) {
  const type = ctx.conn.root.lookupType(typeName);
  const buf = Buffer.from(type.encode(type.fromObject(obj)).finish());
  let at = buf.indexOf('@@');
  assert.ok(at >= 0, 'no @@ marker in the encoded request');
  while (at >= 0) {
    bad.copy(buf, at);
    at = buf.indexOf('@@', at + 2);
  }
  return buf;
}

function rawCall(method, body) {
  return rawUnary(ctx.server.address, grpc.credentials.createSsl(Buffer.from(ctx.server.ca)), method, {
    metadata: bearer(ctx.server.adminToken), body,
  });
}

describe('item 10: Timestamps and Durations out of range', () => {
  // Every value here overflowed a signed 64-bit multiplication or addition
  // on the way to microseconds or milliseconds (UBSan aborted; the release
  // build wrapped and, for some, stored the wrapped value).
  const cases = [
    ['ListCertificates expiring_before +2^63-1 s', 'expiring_before',
      () => api().CertificateService.ListCertificates({ expiringBefore: { seconds: MAX, nanos: 0 } })],
    ['ListCertificates expiring_before -2^63 s', 'expiring_before',
      () => api().CertificateService.ListCertificates({ expiringBefore: { seconds: MIN, nanos: 0 } })],
    ['CreateTicketKeyRing rotation_period +2^63-1 s', 'ticket_key_ring.rotation_period',
      () => api().TicketKeyService.CreateTicketKeyRing({ ticketKeyRingId: uid('ring'), ticketKeyRing: { rotationPeriod: { seconds: MAX } } })],
    ['UpdateTicketKeyRing rotation_period -2^63+1 s', 'ticket_key_ring.rotation_period',
      () => api().TicketKeyService.UpdateTicketKeyRing({ ticketKeyRing: { name: R.ring.name, rotationPeriod: { seconds: NEAR_MIN } }, updateMask: { paths: ['rotation_period'] } })],
    ['CreateListener handshake_timeout -2^63+1 s', 'listener.handshake_timeout',
      () => api().ListenerService.CreateListener({ listenerId: uid('lis'), listener: listenerOf({ handshakeTimeout: { seconds: NEAR_MIN } }) })],
    ['CreateListener handshake_timeout +2^63-1 s', 'listener.handshake_timeout',
      () => api().ListenerService.CreateListener({ listenerId: uid('lis'), listener: listenerOf({ handshakeTimeout: { seconds: MAX } }) })],
    ['CreateListener renegotiation_window +2^63-1 s', 'listener.renegotiation_window',
      () => api().ListenerService.CreateListener({ listenerId: uid('lis'), listener: listenerOf({ renegotiationWindow: { seconds: MAX } }) })],
    ['CreateListener renegotiation_window -2^63+1 s', 'listener.renegotiation_window',
      () => api().ListenerService.CreateListener({ listenerId: uid('lis'), listener: listenerOf({ renegotiationWindow: { seconds: NEAR_MIN } }) })],
    ['CreateToken ttl +2^63-1 s', 'ttl',
      () => api().TokenService.CreateToken({ tokenId: uid('tok'), token: { role: 'VIEWER' }, ttl: { seconds: MAX } })],
    ['CreateToken ttl -2^63+1 s', 'ttl',
      () => api().TokenService.CreateToken({ tokenId: uid('tok'), token: { role: 'VIEWER' }, ttl: { seconds: NEAR_MIN } })],
    ['CreateToken expire_time +2^63-1 s', 'token.expire_time',
      () => api().TokenService.CreateToken({ tokenId: uid('tok'), token: { role: 'VIEWER', expireTime: { seconds: MAX } } })],
    ['IssueClientCertificate validity +2^63-1 s', 'validity',
      () => api().ClientCertificateService.IssueClientCertificate({ csrPem: makeCsr().csr, role: 'VIEWER', principal: 'ci', validity: { seconds: MAX } })],
  ];
  for (const [what, field, fn] of cases) {
    test(`${what}: INVALID_ARGUMENT naming ${field}, nothing written, the server alive`, async () => {
      const rev = lastRevision(await captureWorld(api()));
      await expectRefused(api(), fn, status.INVALID_ARGUMENT, { field: `${field}: seconds `, includes: 'is outside', what });
      await assertAliveAndUnchanged(rev);
    });
  }

  test('within protobuf\'s range but outside the field\'s own: refused with the field\'s bounds', async () => {
    await expectRefused(api(), () => api().ListenerService.CreateListener({
      listenerId: uid('lis'), listener: listenerOf({ handshakeTimeout: { seconds: '315576000000' } }),
    }), status.INVALID_ARGUMENT, { field: 'listener.handshake_timeout: ', includes: 'at most 3600s' });
    await expectRefused(api(), () => api().TokenService.CreateToken({
      tokenId: uid('tok'), token: { role: 'VIEWER' }, ttl: { seconds: String(11 * 366 * 86400) },
    }), status.INVALID_ARGUMENT, { field: 'ttl: ', includes: 'ten years' });
    await expectRefused(api(), () => api().TokenService.CreateToken({
      tokenId: uid('tok'), token: { role: 'VIEWER', expireTime: { seconds: '253402300799' } },
    }), status.INVALID_ARGUMENT, { field: 'token.expire_time: ', includes: 'ten years' });
    await expectRefused(api(), () => api().TicketKeyService.CreateTicketKeyRing({
      ticketKeyRingId: uid('ring'), ticketKeyRing: { rotationPeriod: { seconds: String(400 * 86400) } },
    }), status.INVALID_ARGUMENT, { field: 'ticket_key_ring.rotation_period: ', includes: '366 days' });
    // Nanos must agree with the seconds' sign.
    await expectRefused(api(), () => api().ListenerService.CreateListener({
      listenerId: uid('lis'), listener: listenerOf({ handshakeTimeout: { seconds: '5', nanos: -1 } }),
    }), status.INVALID_ARGUMENT, { field: 'listener.handshake_timeout: ', includes: 'opposite signs' });
  });
});

describe('item 11: strings that are not UTF-8, duplicate mask paths, a filter before 1970', () => {
  const method = '/tlsplane.v1.CipherPolicyService/CreateCipherPolicy';
  const cases = [
    ['a label value', { labels: [{ key: 'env', value: 'pr@@d' }] }, 'cipher_policy.labels["env"]: '],
    ['a label key', { labels: [{ key: 'e@@nv', value: 'prod' }] }, 'cipher_policy.labels: '],
    ['the cipher list', { ciphers: 'ECDHE-RSA-AES128-GCM-SHA256:@@' }, 'cipher_policy.ciphers: '],
  ];
  for (const [what, policy, field] of cases) {
    test(`${what} that is not UTF-8: INVALID_ARGUMENT naming it, nothing stored, List still readable as JSON`, async () => {
      const before = await captureWorld(api());
      const body = encodeWithBadUtf8('tlsplane.v1.CreateCipherPolicyRequest', { cipher_policy_id: uid('cp'), cipher_policy: policy });
      const r = await rawCall(method, body);
      assert.equal(r.code, status.INVALID_ARGUMENT, r.details);
      assert.ok(r.details.startsWith(field), r.details);
      assert.match(r.details, /not valid UTF-8/);
      assert.deepEqual(await captureWorld(api()), before);
      const list = call('CipherPolicyService/ListCipherPolicies', '{}');
      assert.equal(list.status, 0, list.err);
    });
  }

  test('an id that is not UTF-8: refused as such', async () => {
    const body = encodeWithBadUtf8('tlsplane.v1.CreateCipherPolicyRequest', { cipher_policy_id: 'cp-@@', cipher_policy: {} }, Buffer.from([0xed, 0xa0]));
    const r = await rawCall(method, body);
    assert.equal(r.code, status.INVALID_ARGUMENT);
    assert.match(r.details, /^cipher_policy_id: not valid UTF-8/);
  });

  // A raw AgentService/Connect stream as agent `name`, enrolled with a
  // join token (only agents stream snapshots): its messages are encoded
  // here, bytes included.
  async function rawStream(name) {
    const { cert, key } = await FakeAgent.credentials(ctx, name);
    const tls = grpc.credentials.createSsl(Buffer.from(ctx.server.ca), Buffer.from(key), Buffer.from(cert));
    const client = new grpc.Client(ctx.server.address, tls);
    const call = client.makeBidiStreamRequest('/tlsplane.v1.AgentService/Connect', (b) => b, (b) => b, new grpc.Metadata());
    const got = { messages: 0, error: null, ended: false };
    const done = new Promise((resolve) => {
      call.on('data', () => { got.messages += 1; });
      call.on('error', (e) => { got.error = e; resolve(); });
      call.on('end', () => { got.ended = true; resolve(); });
    });
    // Resolves once the stream ended; fails the test after a deadline.
    const ended = async (what) => {
      await waitFor(() => got.error || got.ended, what);
      await done;
    };
    return { call, got, ended, close: () => { call.cancel(); client.close(); } };
  }

  async function waitFor(cond, what, ms = 10000) {
    const deadline = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  test('an agent hello that is not UTF-8: the stream ends with INVALID_ARGUMENT naming the field; the record keeps nothing of it', async () => {
    const name = uid('edge');
    const s = await rawStream(name);
    s.call.write(encodeWithBadUtf8('tlsplane.v1.AgentMessage', { hello: { name, version: '1.0-@@' } }));
    try {
      await s.ended('the stream to end after a bad hello');
    } finally {
      s.close();
    }
    assert.ok(s.got.error, 'the stream ended without an error');
    assert.equal(s.got.error.code, status.INVALID_ARGUMENT, s.got.error.details);
    assert.match(s.got.error.details, /^hello\.version: not valid UTF-8/);
    const rec = await api().AgentService.GetAgent({ name: `agents/${name}` });
    assert.doesNotMatch(rec.version || '', /^1\.0-/, 'the bad hello reached the record');
  });

  test('a nack reason that is not UTF-8: the stream ends with INVALID_ARGUMENT naming it; the agent stays readable as JSON', async () => {
    const name = uid('edge');
    const s = await rawStream(name);
    s.call.write(encodeWithBadUtf8('tlsplane.v1.AgentMessage', { hello: { name, version: '1.0@@' } }, Buffer.from('-a')));
    try {
      await waitFor(() => s.got.messages > 0 || s.got.error, 'the first snapshot');
    } catch (e) {
      s.close();
      throw e;
    }
    assert.equal(s.got.error, null);
    s.call.write(encodeWithBadUtf8('tlsplane.v1.AgentMessage', {
      ack: { revision: '1', listeners: [{ listener: 'listeners/x', applied: false, error: 'bind: @@' }] },
    }));
    try {
      await s.ended('the stream to end after a bad nack');
    } finally {
      s.close();
    }
    assert.ok(s.got.error, 'the stream ended without an error');
    assert.equal(s.got.error.code, status.INVALID_ARGUMENT, s.got.error.details);
    assert.match(s.got.error.details, /^ack\.listeners\[0\]\.error: not valid UTF-8/);
    const list = call('AgentService/ListAgents', '{}');
    assert.equal(list.status, 0, list.err);
    assert.ok(JSON.parse(list.out).agents.some((a) => a.name === `agents/${name}`));
  });

  test('a field named twice in update_mask: INVALID_ARGUMENT naming update_mask, no revision written', async () => {
    const cp = await api().CipherPolicyService.CreateCipherPolicy({ cipherPolicyId: uid('cp'), cipherPolicy: { ciphers: 'ECDHE-RSA-AES128-GCM-SHA256' } });
    for (const paths of [['ciphers', 'ciphers'], ['ecdh_curve', 'ecdhCurve']]) {
      await expectRefused(api(), () => api().CipherPolicyService.UpdateCipherPolicy({
        cipherPolicy: { name: cp.name, ciphers: 'ECDHE-RSA-AES256-GCM-SHA384', ecdhCurve: 'prime256v1' }, updateMask: { paths },
      }), status.INVALID_ARGUMENT, { field: 'update_mask: ', includes: 'a second time' });
    }
  });

  test('expiring_before before 1970 is a filter like any other: nothing expires then', async () => {
    const all = await api().CertificateService.ListCertificates({});
    assert.ok(all.certificates.length >= 1);
    const old = await api().CertificateService.ListCertificates({ expiringBefore: { seconds: String(-365 * 86400), nanos: 0 } });
    assert.deepEqual(old.certificates, []);
    const epoch = await api().CertificateService.ListCertificates({ expiringBefore: { seconds: '0', nanos: 0 } });
    assert.deepEqual(epoch.certificates, []);
    const later = await api().CertificateService.ListCertificates({ expiringBefore: { seconds: '253402300799', nanos: 0 } });
    assert.ok(later.certificates.some((c) => c.name === R.cert.name));
  });

  test('a row stored before these checks (a wrapped duration, a label that is not UTF-8) reads back through JSON', async () => {
    const l = await api().ListenerService.CreateListener({ listenerId: uid('lis'), listener: listenerOf({ labels: { env: 'prod' } }) });
    // Rewrite its stored message as an older server could have stored it.
    const db = `${ctx.server.dataDir}/tlsplane.db`;
    const sql = (q) => execFileSync('sqlite3', ['-cmd', '.timeout 5000', db, q], { encoding: 'utf8' }).trim();
    const type = ctx.conn.root.lookupType('tlsplane.v1.Listener');
    const stored = type.toObject(type.decode(Buffer.from(sql(`SELECT hex(data) FROM resources WHERE name = '${l.name}'`), 'hex')), { longs: String });
    stored.handshake_timeout = { seconds: NEAR_MIN, nanos: 0 };
    stored.labels = type.fields.labels.map ? { env: 'pr@@d' } : [{ key: 'env', value: 'pr@@d' }];
    // Stored by a server that holds the master key: the row's MAC matches.
    rewriteRow(ctx.server.dataDir, 'Listener', l.name, encodeWithBadUtf8('tlsplane.v1.Listener', stored, Buffer.from([0xff, 0xfe])));

    const get = call('ListenerService/GetListener', JSON.stringify({ name: l.name }));
    assert.equal(get.status, 0, get.err);
    const got = JSON.parse(get.out);
    assert.equal(got.handshakeTimeout, '-315576000000s', 'the stored duration reads back clamped');
    assert.equal(got.labels.env, 'pr\ufffd\ufffdd', 'bytes that are not UTF-8 read back as U+FFFD');
    const list = call('ListenerService/ListListeners', '{}');
    assert.equal(list.status, 0, list.err);
    assert.ok(JSON.parse(list.out).listeners.some((x) => x.name === l.name));
    await api().ListenerService.DeleteListener({ name: l.name });
  });
});

describe('item 12: bounds', () => {
  test('a chain of 5,000 certificates, a trust bundle past 1,000 certificates, a CRL past 8 MiB: refused, naming the field and the bound', async () => {
    await expectRefused(api(), () => api().CertificateService.CreateCertificate({
      certificateId: uid('cert'), certificate: { certificateChainPem: p.rsa.cert + p.ca.cert.repeat(4999), privateKeyPem: p.rsa.key },
    }), status.INVALID_ARGUMENT, { field: 'certificate.certificate_chain_pem: ', includes: 'at most 65536' });
    await expectRefused(api(), () => api().CertificateService.CreateCertificate({
      certificateId: uid('cert'), certificate: { certificateChainPem: p.chained.cert + p.inter.cert.repeat(10), privateKeyPem: p.chained.key },
    }), status.INVALID_ARGUMENT, { field: 'certificate.certificate_chain_pem: ', includes: '11 certificates, at most 10' });
    await expectRefused(api(), () => api().TrustBundleService.CreateTrustBundle({
      trustBundleId: uid('tb'), trustBundle: { caPem: p.ca.cert.repeat(1001) },
    }), status.INVALID_ARGUMENT, { field: 'trust_bundle.ca_pem: ', includes: '1001 certificates, at most 1000' });
    await expectRefused(api(), () => api().RevocationListService.CreateRevocationList({
      revocationListId: uid('crl'), revocationList: { crlPem: p.crlPem + ' '.repeat(8 * 1024 * 1024) },
    }), status.INVALID_ARGUMENT, { field: 'revocation_list.crl_pem: ', includes: 'at most 8388608' });
    // A bundle of a few hundred CAs is fine.
    const tb = await api().TrustBundleService.CreateTrustBundle({ trustBundleId: uid('tb'), trustBundle: { caPem: p.ca.cert.repeat(300) } });
    assert.equal(tb.certificates.length, 300);
    await api().TrustBundleService.DeleteTrustBundle({ name: tb.name });
  });

  test('a 1 MB cipher string and other long free-form strings: refused at once, naming the field', async () => {
    const long = 'ECDHE-RSA-AES128-GCM-SHA256:'.repeat(40000);
    await expectRefused(api(), () => api().CipherPolicyService.CreateCipherPolicy({
      cipherPolicyId: uid('cp'), cipherPolicy: { ciphers: long },
    }), status.INVALID_ARGUMENT, { field: 'cipher_policy.ciphers: ', includes: 'at most 2048' });
    for (const [field, policy] of [['ciphersuites', { ciphersuites: 'TLS_AES_128_GCM_SHA256:'.repeat(200) }], ['ecdh_curve', { ecdhCurve: 'X25519:'.repeat(400) }]]) {
      await expectRefused(api(), () => api().CipherPolicyService.CreateCipherPolicy({ cipherPolicyId: uid('cp'), cipherPolicy: policy }),
        status.INVALID_ARGUMENT, { field: `cipher_policy.${field}: `, includes: 'at most 2048' });
    }
    await expectRefused(api(), () => api().TlsContextService.CreateTlsContext({
      tlsContextId: uid('ctx'), tlsContext: { certificates: [R.cert.name], alpnProtocols: ['h2', 'x'.repeat(3000)] },
    }), status.INVALID_ARGUMENT, { field: 'tls_context.alpn_protocols[1]: ', includes: 'at most 2048' });
    await expectRefused(api(), () => api().TokenService.CreateToken({
      tokenId: uid('tok'), token: { role: 'VIEWER', description: 'd'.repeat(5000) },
    }), status.INVALID_ARGUMENT, { field: 'token.description: ', includes: 'at most 2048' });
  });

  // DH parameters written as DER by the openssl CLI from a given prime.
  function dhPem(pHex) {
    const dir = require('node:fs').mkdtempSync(require('node:path').join(require('node:os').tmpdir(), 'tlsplane-dh-'));
    const fs = require('node:fs');
    try {
      fs.writeFileSync(`${dir}/dh.cnf`, `asn1=SEQUENCE:dh\n[dh]\np=INTEGER:0x${pHex}\ng=INTEGER:2\n`);
      execFileSync('openssl', ['asn1parse', '-genconf', `${dir}/dh.cnf`, '-noout', '-out', `${dir}/dh.der`]);
      execFileSync('openssl', ['dhparam', '-inform', 'DER', '-in', `${dir}/dh.der`, '-out', `${dir}/dh.pem`], { stdio: 'pipe' });
      return fs.readFileSync(`${dir}/dh.pem`, 'utf8');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }

  test('DH parameters: a composite 2048-bit modulus and a 10,000-bit one are refused; ffdhe2048 is accepted', async () => {
    const parsed = execFileSync('openssl', ['asn1parse'], { input: p.dh2048, encoding: 'utf8' });
    const primeHex = parsed.split('\n')[1].split(':').pop().trim();
    assert.equal(primeHex.length, 512);
    // One bit of the prime flipped: odd, 2048 bits, not prime.
    const composite = primeHex.slice(0, 200) + (parseInt(primeHex[200], 16) ^ 4).toString(16) + primeHex.slice(201);
    await expectRefused(api(), () => api().CipherPolicyService.CreateCipherPolicy({
      cipherPolicyId: uid('cp'), cipherPolicy: { dhparamPem: dhPem(composite) },
    }), status.INVALID_ARGUMENT, { field: 'cipher_policy.dhparam_pem: ', includes: 'safe prime' });
    await expectRefused(api(), () => api().CipherPolicyService.CreateCipherPolicy({
      cipherPolicyId: uid('cp'), cipherPolicy: { dhparamPem: dhPem(`C${'F'.repeat(2499)}`) },
    }), status.INVALID_ARGUMENT, { field: 'cipher_policy.dhparam_pem: ', includes: '10000-bit DH parameters; 2048 to 8192 bits' });
    await expectRefused(api(), () => api().CipherPolicyService.CreateCipherPolicy({
      cipherPolicyId: uid('cp'), cipherPolicy: { dhparamPem: p.dh1024 },
    }), status.INVALID_ARGUMENT, { field: 'cipher_policy.dhparam_pem: ', includes: '1024-bit DH parameters; 2048 to 8192 bits' });
    const ok = await api().CipherPolicyService.CreateCipherPolicy({ cipherPolicyId: uid('cp'), cipherPolicy: { dhparamPem: p.dh2048 } });
    assert.equal(ok.dhparamBits, 2048);
    assert.deepEqual(ok.warnings, []);
  });

  test('--plaintext on a host that only looks like loopback (127.evil.example) or on every address: refused at start', () => {
    for (const [host, why] of [['127.evil.example', /127\.evil\.example (does not resolve|resolves to .* not a loopback address)/], ['', /every address/]]) {
      const dir = require('node:fs').mkdtempSync(require('node:path').join(require('node:os').tmpdir(), 'tlsplane-plain-'));
      try {
        const r = spawnSync(serverBinary(), ['--data-dir', dir, '--listen', `${host}:0`, '--plaintext'], { encoding: 'utf8', timeout: 30000 });
        assert.notEqual(r.status, 0, `started on ${host}:0 in plaintext: ${r.stderr}`);
        assert.match(r.stderr, /--plaintext serves on loopback only/);
        assert.match(r.stderr, why);
      } finally {
        require('node:fs').rmSync(dir, { recursive: true, force: true });
      }
    }
  });
});

describe('item 19: TLS 1.3 suite names in ciphers', () => {
  test('a mixed list is accepted without a warning; a clash with ciphersuites names both fields', async () => {
    const mixed = await api().CipherPolicyService.CreateCipherPolicy({
      cipherPolicyId: uid('cp'), cipherPolicy: { ciphers: 'TLS_AES_256_GCM_SHA384:ECDHE-RSA-AES128-GCM-SHA256' },
    });
    assert.deepEqual(mixed.warnings, []);
    const listed = await api().CipherPolicyService.ListCiphers({ cipherPolicy: mixed.name });
    const names = listed.ciphers.map((c) => c.name);
    assert.deepEqual(names, ['TLS_AES_256_GCM_SHA384', 'ECDHE-RSA-AES128-GCM-SHA256']);
    const only13 = await api().CipherPolicyService.CreateCipherPolicy({
      cipherPolicyId: uid('cp'), cipherPolicy: { ciphers: 'TLS_AES_256_GCM_SHA384' },
    });
    assert.deepEqual(only13.warnings, ['ciphers: names only TLS 1.3 suites; TLS 1.2 and below are off']);
    await expectRefused(api(), () => api().CipherPolicyService.CreateCipherPolicy({
      cipherPolicyId: uid('cp'), cipherPolicy: { ciphers: 'TLS_AES_256_GCM_SHA384:ECDHE-RSA-AES128-GCM-SHA256', ciphersuites: 'TLS_AES_128_GCM_SHA256' },
    }), status.INVALID_ARGUMENT, { field: 'cipher_policy.ciphers: ', includes: 'ciphersuites' });
  });
});

describe('item 21: TicketKey.key_name', () => {
  test('plain lower-case hex: what setTicketKeys users paste', async () => {
    assert.match(R.ring.keys[0].keyName, /^[0-9a-f]{32}$/);
    const key = crypto.randomBytes(48);
    const set = await api().TicketKeyService.SetTicketKeys({ name: R.ring.name, keys: [key] });
    assert.equal(set.keys[0].keyName, key.subarray(0, 16).toString('hex'));
    const rotated = await api().TicketKeyService.RotateTicketKeys({ name: R.ring.name });
    assert.match(rotated.keys[0].keyName, /^[0-9a-f]{32}$/);
    assert.equal(rotated.keys[1].keyName, key.subarray(0, 16).toString('hex'));
    const got = await api().TicketKeyService.GetTicketKeyRing({ name: R.ring.name });
    assert.deepEqual(got.keys.map((k) => k.keyName), rotated.keys.map((k) => k.keyName));
  });
});
