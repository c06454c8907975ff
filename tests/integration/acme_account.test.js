'use strict';
// The ACME issuer kind's account against pebble (Let's Encrypt's test CA,
// Debian's package) on loopback: the server makes the account key and a
// background job registers the account (newAccount) — valid, its URL under
// pebble's; bad input refused naming the field; an unreachable directory
// failing visibly with back-off, then the issuer pointed at pebble
// succeeding; pebble rejecting half of the nonces (badNonce retried) and
// requiring an External Account Binding; the account key and the EAB key
// never returned, never logged, sealed at rest; IssueCertificate from an
// ACME issuer refusing names tls-alpn-01 cannot validate. A scripted ACME server
// checks what pebble cannot make happen on demand: the ES256 JWS verified
// with Node's crypto, the nonce a badNonce answer brought used for the one
// retry, and a rateLimited answer's Retry-After taken as the back-off.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const https = require('node:https');
const path = require('node:path');
const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { Pebble } = require('./lib/pebble');
const { pki } = require('./lib/pki');
const { freePorts } = require('./lib/agent');
const { status, seconds, expectRefused } = require('./lib/util');
const { waitFor } = require('./lib/wait');

const RETRY_MS = 1000; // TLSPLANE_ACME_RETRY_MS: the first retry after a failed registration
const EAB_KID = 'kid-tlsplane';
const EAB_KEY = crypto.randomBytes(32).toString('base64url');

let srv;
let conn;
let pebble; // plain
let strict; // rejects half of the nonces, requires an EAB
const api = () => conn.api;
const issuers = () => api().IssuerService;

before(async () => {
  [pebble, strict] = await Promise.all([
    Pebble.start(),
    Pebble.start({ nonceReject: 50, eabKeys: { [EAB_KID]: EAB_KEY } }),
  ]);
  noteSecret(EAB_KEY);
  srv = await Server.start({ tls: true, env: { TLSPLANE_ACME_RETRY_MS: String(RETRY_MS) } });
  conn = await connect(srv.address, srv.connectOptions());
});

after(async () => {
  if (conn) conn.close();
  if (srv && srv.running) await srv.stopClean();
  if (pebble) pebble.stop();
  if (strict) strict.stop();
});

const acme = (pb, extra = {}) => pb.issuer(extra);

// An HTTPS server on loopback speaking just enough ACME: the directory,
// newNonce, and newAccount answered by answer(n, res, base) for the n-th
// request, after checking its JWS (signature, url, nonce issued by us).
async function scriptedAcme(answer) {
  const p = pki();
  p.leaf('acme', { cn: '127.0.0.1', sans: ['IP:127.0.0.1'] });
  const fake = { posts: [], issued: new Set(), bad: [] };
  let n = 0;
  fake.server = https.createServer({ key: p.read('acme.key'), cert: p.read('acme.crt') }, (req, res) => {
    let body = '';
    req.on('data', (b) => { body += b; });
    req.on('end', () => {
      const base = `https://127.0.0.1:${fake.server.address().port}`;
      const nonce = `nonce-${(n += 1)}`;
      fake.issued.add(nonce);
      fake.lastNonce = nonce;
      res.setHeader('Replay-Nonce', nonce);
      if (req.method === 'GET' && req.url === '/dir') {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ newNonce: `${base}/nonce`, newAccount: `${base}/acct`, newOrder: `${base}/order`, meta: { termsOfService: `${base}/tos` } }));
      } else if (req.url === '/nonce') {
        res.writeHead(200);
        res.end();
      } else if (req.method === 'POST' && req.url === '/acct') {
        const jws = JSON.parse(body);
        const ph = JSON.parse(Buffer.from(jws.protected, 'base64url'));
        const key = crypto.createPublicKey({ key: ph.jwk, format: 'jwk' });
        const ok = crypto.verify('sha256', Buffer.from(`${jws.protected}.${jws.payload}`), { key, dsaEncoding: 'ieee-p1363' }, Buffer.from(jws.signature, 'base64url'));
        if (!ok || ph.alg !== 'ES256' || ph.url !== `${base}/acct` || req.headers['content-type'] !== 'application/jose+json') fake.bad.push(ph);
        fake.posts.push({ t: Date.now(), ph, payload: JSON.parse(Buffer.from(jws.payload, 'base64url')), sentBefore: fake.previousNonce });
        fake.previousNonce = nonce;
        answer(fake.posts.length, res, base);
      } else {
        res.writeHead(404);
        res.end();
      }
    });
  });
  await new Promise((resolve) => fake.server.listen(0, '127.0.0.1', resolve));
  fake.directory = `https://127.0.0.1:${fake.server.address().port}/dir`;
  fake.ca = p.read('ca.crt');
  return fake;
}

function problem(res, code, type, detail, headers = {}) {
  res.writeHead(code, { 'Content-Type': 'application/problem+json', ...headers });
  res.end(JSON.stringify({ type: `urn:ietf:params:acme:error:${type}`, detail, status: code }));
}

function origin(url) {
  return new URL(url).origin;
}

// Neither the account key nor the EAB key in a response.
function assertNoSecret(is, what) {
  assert.equal(is.privateKeyPem, '', `${what}: private_key_pem`);
  assert.equal(is.acmeEabHmacKey, '', `${what}: acme_eab_hmac_key`);
  assert.doesNotMatch(JSON.stringify(is), /PRIVATE KEY|EAB HMAC/, `${what}: a key`);
  assert.ok(!JSON.stringify(is).includes(EAB_KEY), `${what}: the EAB key`);
}

async function waitStatus(name, want, what, timeoutMs = 20000) {
  return waitFor(what, async () => {
    const g = await issuers().GetIssuer({ name });
    return g.acmeAccountStatus === want ? g : null;
  }, { timeoutMs });
}

test('the account is registered by the job: valid, its URL under pebble\'s directory', async () => {
  const made = await issuers().CreateIssuer({ issuerId: 'acme-ok', issuer: acme(pebble) });
  // The request does not wait on the network: the job registers it.
  assert.ok(['pending', 'valid'].includes(made.acmeAccountStatus), made.acmeAccountStatus);
  assertNoSecret(made, 'create');
  const g = await waitStatus('issuers/acme-ok', 'valid', 'the account registered');
  assert.equal(origin(g.acmeAccountUrl), origin(pebble.directory));
  assert.match(g.acmeAccountUrl, /^https:\/\/127\.0\.0\.1:\d+\/.+/);
  assert.equal(g.acmeLastError, '');
  assert.equal(g.acmeRegistrationFailures, 0);
  assert.equal(g.acmeTermsAgreed, true);
  assert.deepEqual(g.acmeContact, ['mailto:admin@tlsplane.test']);
  assertNoSecret(g, 'get');
  const list = await issuers().ListIssuers({});
  for (const x of list.issuers) assertNoSecret(x, `list ${x.name}`);
  // A RESOURCE_CHANGED by the job in the audit (what WatchEvents streams).
  const audit = await api().AuditService.ListAuditEvents({ resource: 'issuers/acme-ok' });
  const mine = audit.auditEvents.find((e) => e.action === 'acme_account_registered');
  assert.ok(mine, JSON.stringify(audit.auditEvents.map((e) => e.action)));
  assert.equal(mine.actor, 'system');
});

test('bad input is refused naming the field, and nothing changes', async () => {
  const bad = [
    [{ acmeTermsAgreed: false }, 'issuer.acme_terms_agreed'],
    [{ acmeDirectoryUrl: '' }, 'issuer.acme_directory_url'],
    [{ acmeDirectoryUrl: pebble.directory.replace('https:', 'http:') }, 'issuer.acme_directory_url'],
    [{ acmeDirectoryUrl: 'not a url' }, 'issuer.acme_directory_url'],
    [{ acmeContact: ['admin@tlsplane.test'] }, 'issuer.acme_contact[0]'],
    [{ acmeContact: ['mailto:a@b.test', 'mailto:x@y.test,z@w.test'] }, 'issuer.acme_contact[1]'],
    [{ acmeCaPem: 'not a PEM' }, 'issuer.acme_ca_pem'],
    [{ acmeEabHmacKey: EAB_KEY }, 'issuer.acme_eab_kid'],
    [{ acmeEabKid: EAB_KID }, 'issuer.acme_eab_hmac_key'],
    [{ acmeEabKid: EAB_KID, acmeEabHmacKey: 'not+base64url/' }, 'issuer.acme_eab_hmac_key'],
  ];
  for (const [extra, field] of bad)
    await expectRefused(api(), () => issuers().CreateIssuer({ issuerId: 'acme-bad', issuer: acme(pebble, extra) }), status.INVALID_ARGUMENT, { field, what: JSON.stringify(extra) });
  await expectRefused(api(), () => issuers().CreateIssuer({ issuerId: 'acme-bad', issuer: { type: 'SELF_SIGNED', acmeDirectoryUrl: pebble.directory } }), status.INVALID_ARGUMENT, { field: 'issuer.acme_directory_url: only for ACME' });
  // Output fields are not input.
  await expectRefused(api(), () => issuers().UpdateIssuer({ issuer: { name: 'issuers/acme-ok', acmeAccountStatus: 'valid' }, updateMask: { paths: ['acme_account_status'] } }), status.INVALID_ARGUMENT, { field: 'update_mask', includes: ['acme_account_status'] });
});

test('IssueCertificate from an ACME issuer: names tls-alpn-01 cannot validate refused naming the field (orders: acme_order.test.js)', async () => {
  await waitStatus('issuers/acme-ok', 'valid', 'the account registered');
  await expectRefused(api(), () => api().CertificateService.IssueCertificate({ certificateId: 'from-acme', issuer: 'issuers/acme-ok', ipAddresses: ['127.0.0.1'] }), status.INVALID_ARGUMENT, { field: 'ip_addresses[0]' });
  await expectRefused(api(), () => api().CertificateService.IssueCertificate({ certificateId: 'from-acme', issuer: 'issuers/acme-ok', dnsNames: ['*.tlsplane.test'] }), status.INVALID_ARGUMENT, { field: 'dns_names[0]' });
});

test('an unreachable directory: the error visible, retried with back-off, then pointed at pebble', async () => {
  const [port] = await freePorts(1); // nothing listens there
  const dead = `https://127.0.0.1:${port}/dir`;
  await issuers().CreateIssuer({ issuerId: 'acme-dead', issuer: acme(pebble, { acmeDirectoryUrl: dead }) });
  const first = await waitFor('the first failure recorded', async () => {
    const g = await issuers().GetIssuer({ name: 'issuers/acme-dead' });
    return g.acmeRegistrationFailures >= 1 ? g : null;
  }, { timeoutMs: 20000 });
  assert.equal(first.acmeAccountStatus, 'failed');
  assert.equal(first.acmeAccountUrl, '');
  assert.ok(first.acmeLastError.includes(`127.0.0.1:${port}`), first.acmeLastError);
  assert.match(first.acmeLastError, /connect|refused/i);
  const firstAt = seconds(first.acmeNextAttemptTime);
  assert.ok(firstAt > Date.now() / 1000 - 5, 'the next attempt is scheduled');
  const third = await waitFor('more failures, later and later', async () => {
    const g = await issuers().GetIssuer({ name: 'issuers/acme-dead' });
    return g.acmeRegistrationFailures >= 3 ? g : null;
  }, { timeoutMs: 30000 });
  assert.ok(seconds(third.acmeNextAttemptTime) > firstAt, 'the next attempt moves on');
  // Back-off: the third wait (4 s) is longer than the first (1 s).
  const gap = seconds(third.acmeNextAttemptTime) - seconds(third.updateTime);
  assert.ok(gap >= 3 * RETRY_MS / 1000, `back-off doubles: ${gap} s after the third failure`);
  assert.equal(third.acmeAccountStatus, 'failed');

  const u = await issuers().UpdateIssuer({ issuer: { name: 'issuers/acme-dead', acmeDirectoryUrl: pebble.directory }, updateMask: { paths: ['acme_directory_url'] } });
  assert.equal(u.acmeAccountStatus, 'pending');
  assert.equal(u.acmeLastError, '');
  assert.equal(u.acmeRegistrationFailures, 0);
  const g = await waitStatus('issuers/acme-dead', 'valid', 'registered once pointed at pebble');
  assert.equal(origin(g.acmeAccountUrl), origin(pebble.directory));
});

test('pebble rejecting half of the nonces and requiring an EAB: registered', async () => {
  // Without the binding: refused by the server, visibly.
  await issuers().CreateIssuer({ issuerId: 'acme-noeab', issuer: acme(strict) });
  const noeab = await waitStatus('issuers/acme-noeab', 'failed', 'the missing EAB reported');
  assert.match(noeab.acmeLastError, /External Account Binding/);

  // With it, several accounts: each gets through badNonce (retried once,
  // then the back-off's next attempt when both nonces were rejected).
  const ids = Array.from({ length: 10 }, (_, i) => `acme-eab-${i + 1}`);
  for (const id of ids) {
    const made = await issuers().CreateIssuer({ issuerId: id, issuer: acme(strict, { acmeEabKid: EAB_KID, acmeEabHmacKey: EAB_KEY }) });
    assertNoSecret(made, `create ${id}`);
    assert.equal(made.acmeEabKid, EAB_KID);
  }
  for (const id of ids) {
    const g = await waitStatus(`issuers/${id}`, 'valid', `${id} registered`, 60000);
    assert.equal(origin(g.acmeAccountUrl), origin(strict.directory));
    assertNoSecret(g, `get ${id}`);
  }
  // Each issuer's own account key: as many accounts.
  const urls = new Set();
  for (const id of ids) urls.add((await issuers().GetIssuer({ name: `issuers/${id}` })).acmeAccountUrl);
  assert.equal(urls.size, ids.length);

  // A new EAB key (the same one, given again) is sealed with the same
  // account key: registered again, the same account.
  const before = await issuers().GetIssuer({ name: 'issuers/acme-eab-1' });
  const u = await issuers().UpdateIssuer({ issuer: { name: before.name, acmeEabKid: EAB_KID, acmeEabHmacKey: EAB_KEY }, updateMask: { paths: ['acme_eab_kid', 'acme_eab_hmac_key'] } });
  assert.equal(u.acmeAccountStatus, 'pending');
  assertNoSecret(u, 'update');
  const again = await waitStatus(before.name, 'valid', 'registered again', 60000);
  assert.equal(again.acmeAccountUrl, before.acmeAccountUrl, 'the same account key');
  // badNonce answered and retried: more newAccount requests than
  // accounts (each one's chance of none rejected is 1/2, of ten 1/1024).
  const posts = strict.daemons[1].log.split('\n').filter((l) => /POST \/sign-me-up/.test(l)).length;
  assert.ok(posts > ids.length, `${posts} newAccount requests for ${ids.length} accounts`);
});

test('the account keys and the EAB key are sealed at rest', async () => {
  const files = ['tlsplane.db', 'tlsplane.db-wal'].map((x) => path.join(srv.dataDir, x)).filter((x) => fs.existsSync(x));
  assert.ok(files.length > 0);
  const eabBytes = Buffer.from(EAB_KEY, 'base64url');
  const needles = [EAB_KEY, eabBytes.toString('base64'), eabBytes.toString('hex'), 'BEGIN PRIVATE KEY', 'ACME EAB HMAC KEY'];
  for (const f of files) {
    const bytes = fs.readFileSync(f);
    for (const n of needles) assert.equal(bytes.indexOf(n), -1, `${path.basename(f)} holds ${n.slice(0, 20)}`);
    assert.equal(bytes.indexOf(eabBytes), -1, `${path.basename(f)} holds the raw EAB key`);
  }
});

test('scripted: the JWS verifies, and badNonce is retried once with the nonce it brought', async () => {
  const fake = await scriptedAcme((n, res, base) => {
    if (n === 1) return problem(res, 400, 'badNonce', 'JWS has an invalid anti-replay nonce');
    res.writeHead(201, { 'Content-Type': 'application/json', Location: `${base}/acct/7` });
    res.end(JSON.stringify({ status: 'valid' }));
  });
  try {
    await issuers().CreateIssuer({ issuerId: 'acme-scripted', issuer: { ...acme(pebble), acmeDirectoryUrl: fake.directory, acmeCaPem: fake.ca } });
    const g = await waitStatus('issuers/acme-scripted', 'valid', 'registered after one badNonce');
    assert.equal(g.acmeAccountUrl, `${new URL(fake.directory).origin}/acct/7`);
    assert.equal(fake.posts.length, 2, 'one retry');
    assert.deepEqual(fake.bad, [], 'every JWS verifies');
    // The retry used the nonce of the badNonce answer; no nonce twice.
    assert.equal(fake.posts[1].ph.nonce, fake.posts[1].sentBefore);
    assert.notEqual(fake.posts[0].ph.nonce, fake.posts[1].ph.nonce);
    for (const { ph } of fake.posts) assert.ok(fake.issued.has(ph.nonce), ph.nonce);
    const { payload } = fake.posts[1];
    assert.equal(payload.termsOfServiceAgreed, true);
    assert.deepEqual(payload.contact, ['mailto:admin@tlsplane.test']);
    assert.equal(fake.posts[1].ph.kid, undefined, 'newAccount carries the jwk, not a kid');
    assert.equal(fake.posts[1].ph.jwk.crv, 'P-256');
    assert.equal(fake.posts[1].ph.jwk.d, undefined, 'the public key only');
  } finally {
    fake.server.close();
  }
});

test('scripted: badNonce twice fails the attempt; rateLimited backs off for Retry-After', async () => {
  // Two badNonce answers (the first attempt), then rate limits.
  const fake = await scriptedAcme((n, res) => {
    if (n <= 2) return problem(res, 400, 'badNonce', 'no');
    return problem(res, 429, 'rateLimited', 'too many new accounts', { 'Retry-After': '30' });
  });
  try {
    await issuers().CreateIssuer({ issuerId: 'acme-limited', issuer: { ...acme(pebble), acmeDirectoryUrl: fake.directory, acmeCaPem: fake.ca } });
    const limited = await waitFor('the rate limit recorded', async () => {
      const g = await issuers().GetIssuer({ name: 'issuers/acme-limited' });
      return /rateLimited/.test(g.acmeLastError) ? g : null;
    }, { timeoutMs: 20000 });
    assert.equal(limited.acmeAccountStatus, 'failed');
    assert.equal(limited.acmeRegistrationFailures, 2, 'the badNonce attempt, then the rate-limited one');
    // The first attempt stopped after one retry: the third request came
    // with the next attempt, after the back-off.
    assert.equal(fake.posts.length, 3);
    assert.ok(fake.posts[2].t - fake.posts[1].t >= RETRY_MS - 100, `${fake.posts[2].t - fake.posts[1].t} ms between the attempts`);
    assert.match(limited.acmeLastError, /HTTP 429: urn:ietf:params:acme:error:rateLimited: too many new accounts \(retry after 30 s\)/);
    const wait = seconds(limited.acmeNextAttemptTime) - seconds(limited.updateTime);
    assert.ok(wait >= 29 && wait <= 31, `the next attempt ${wait} s later: Retry-After, not the 2 s back-off`);
    // A failed attempt is audited (and so on WatchEvents).
    const audit = await api().AuditService.ListAuditEvents({ resource: 'issuers/acme-limited' });
    assert.ok(audit.auditEvents.some((e) => e.action === 'acme_account_failed'));
  } finally {
    fake.server.close();
  }
});
