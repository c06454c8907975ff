'use strict';
// ACME Renewal Information (RFC 9773) against pebble with real validation,
// through an HTTPS front (lib/acmefront.js): Debian's pebble has no
// renewalInfo, so the front forwards every request to pebble unchanged
// (pebble builds every URL on the front's host), adds renewalInfo to the
// directory and answers renewalInfo/<certID> with the window the test
// chooses, recording what it was asked. The certID the server asks for is
// compared with one computed here from the issued certificate (openssl
// x509 for the authority key identifier, Node's X509Certificate for the
// serial). A failing renewalInfo is visible on the certificate and is no
// renewal failure (the policy's time stands); a window inside the
// certificate's life sets renewal_time inside it; a window moved into the
// past renews at once, newOrder naming the certificate it replaces, and
// the agent serves the new chain. The same front rate-limits newOrder
// (429 rateLimited, Retry-After 30): the failure is on the certificate,
// the next attempt 30 s later rather than the shorter back-off, and the
// order completes once newOrder goes through.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const tls = require('node:tls');
const { execFileSync } = require('node:child_process');
const { Server } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { Pebble } = require('./lib/pebble');
const { AcmeFront } = require('./lib/acmefront');
const { pki } = require('./lib/pki');
const { tool } = require('./lib/tools');
const { Upstream } = require('./lib/upstream');
const { exchange } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { freePorts, agentBinary } = require('./lib/agent');
const { toDate, uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');

const RETRY_MS = 1000; // TLSPLANE_RENEW_RETRY_MS and TLSPLANE_ACME_RETRY_MS
const ARI_MIN_MS = 500; // TLSPLANE_ACME_ARI_MIN_MS: the shortest wait between two checks
const NAME = 'ari.tlsplane.test';
const HOUR = 3600 * 1000;

let srv;
let conn;
let pebble;
let front;
let p;
let up;
let agent;
let port; // the agent listener's, pebble's tlsPort
const api = () => conn.api;
const certs = () => api().CertificateService;

// The certID of RFC 9773 4.1, from OpenSSL's and Node's view of the leaf.
function certId(pem) {
  const leaf = pem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/)[0];
  const aki = execFileSync(tool('openssl'), ['x509', '-noout', '-ext', 'authorityKeyIdentifier'], { input: leaf }).toString();
  const keyid = aki.match(/([0-9A-F]{2}(?::[0-9A-F]{2})+)/)[1].replace(/:/g, '');
  let serial = new crypto.X509Certificate(leaf).serialNumber;
  if (serial.length % 2) serial = `0${serial}`;
  let bytes = Buffer.from(serial, 'hex');
  while (bytes.length > 1 && bytes[0] === 0 && bytes[1] < 0x80) bytes = bytes.subarray(1);
  if (bytes[0] >= 0x80) bytes = Buffer.concat([Buffer.from([0]), bytes]);
  return `${Buffer.from(keyid, 'hex').toString('base64url')}.${bytes.toString('base64url')}`;
}

const ms = (t) => toDate(t).getTime();

before(async () => {
  agentBinary();
  p = pki();
  p.leaf('front', { cn: '127.0.0.1', sans: ['IP:127.0.0.1'] });
  [port] = await freePorts(1);
  pebble = await Pebble.start({ tlsPort: port });
  front = await AcmeFront.start({ upstream: pebble.directory, upstreamCa: fs.readFileSync(pebble.trustFile), cert: p.read('front.crt'), key: p.read('front.key') });
  up = await Upstream.start({ mode: 'echo' });
  srv = await Server.start({
    tls: true,
    env: { TLSPLANE_RENEW_RETRY_MS: String(RETRY_MS), TLSPLANE_ACME_RETRY_MS: String(RETRY_MS), TLSPLANE_ACME_ARI_MIN_MS: String(ARI_MIN_MS) },
  });
  conn = await connect(srv.address, srv.connectOptions());
  await api().IssuerService.CreateIssuer({
    issuerId: 'front',
    issuer: { type: 'ACME', acmeDirectoryUrl: front.directory, acmeCaPem: p.read('ca.crt'), acmeContact: ['mailto:admin@tlsplane.test'], acmeTermsAgreed: true },
  });
  await waitFor('the account is valid', async () => (await api().IssuerService.GetIssuer({ name: 'issuers/front' })).acmeAccountStatus === 'valid', { timeoutMs: 30000 });
  await certs().CreateCertificate({ certificateId: 'web', certificate: { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key } });
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'web', tlsContext: { certificates: ['certificates/web'] } });
  await api().ListenerService.CreateListener({
    listenerId: 'edge',
    listener: { address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/web', upstream: up.address, sniRoutes: [{ hostname: NAME, tlsContext: 'tlsContexts/web' }] },
  });
  const tok = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'edge-1' } });
  agent = await CpAgent.start(srv, { name: 'edge-1', joinToken: tok.secret, wait: 'connected' });
  await waitFor('the agent serves the listener', async () => (await exchange(port, {}, { send: 'x\n' })).ok);
});

after(async () => {
  if (agent) await agent.stopClean();
  if (conn) conn.close();
  if (srv && srv.running) await srv.stopClean();
  if (up) await up.close();
  if (front) await front.close();
  if (pebble) pebble.stop();
});

const get = () => certs().GetCertificate({ name: 'certificates/ari' });
const asked = (id) => front.requests.filter((r) => r.method === 'GET' && r.path === `/renewal-info/${id}`);

let first; // the certificate as first issued, its window set

test('the front: pebble builds its URLs on the front, which adds renewalInfo', async () => {
  const dir = await new Promise((resolve, reject) => {
    require('node:https').get(front.directory, { ca: p.read('ca.crt') }, (res) => {
      let b = '';
      res.on('data', (c) => { b += c; });
      res.on('end', () => resolve(JSON.parse(b)));
    }).on('error', reject);
  });
  assert.equal(dir.renewalInfo, `${front.origin}/renewal-info/`);
  assert.ok(dir.newOrder.startsWith(`${front.origin}/`), `pebble's newOrder on the front: ${dir.newOrder}`);
});

test('renewalInfo failing, then answering: the failure visible and no renewal failure, then renewal_time inside the window', async () => {
  front.renewalInfo = () => ({ status: 500, detail: 'not now', retryAfter: 1 });
  await certs().IssueCertificate({ certificateId: 'ari', issuer: 'issuers/front', dnsNames: [NAME] });
  const failed = await waitFor('the failed check recorded', async () => {
    const c = await get();
    if (c.acmeOrder?.lastError) throw new Error(`the order failed: ${c.acmeOrder.lastError}`);
    return c.acmeOrder?.renewalInfo?.lastError ? c : null;
  }, { timeoutMs: 120000 });
  const id = certId(failed.certificateChainPem);
  assert.ok(asked(id).length >= 1, `renewalInfo asked for ${id}: ${JSON.stringify(front.requests.filter((r) => r.path.startsWith('/renewal-info/')).map((r) => r.path))}`);
  const ri = failed.acmeOrder.renewalInfo;
  assert.equal(ri.certId, id);
  assert.match(ri.lastError, /renewalInfo: HTTP 500: urn:ietf:params:acme:error:serverInternal: not now/);
  assert.ok(!ri.windowStart && !ri.renewalTime, 'no window yet');
  assert.ok(ms(ri.nextCheckTime) > Date.now() - 2000 && ms(ri.nextCheckTime) < Date.now() + 10000, `asked again soon (Retry-After 1 s): ${ri.nextCheckTime}`);
  // No renewal failure: the policy's time (a third of the lifetime left) stands.
  assert.equal(failed.renewalFailures ?? 0, 0);
  assert.equal(failed.lastRenewalError, '');
  assert.equal(failed.acmeOrder.failures ?? 0, 0);
  const life = ms(failed.notAfter) - ms(failed.notBefore);
  assert.ok(Math.abs(ms(failed.renewalTime) - (ms(failed.notAfter) - life / 3)) <= 1000, `renewal_time on the policy: ${JSON.stringify([failed.notBefore, failed.notAfter, failed.renewalTime])}`);

  // A window a day ahead, well before the policy's time (pebble issues for years).
  const start = Date.now() + 24 * HOUR;
  const end = start + 2 * HOUR;
  front.renewalInfo = () => ({ start, end, explanationURL: 'https://ca.tlsplane.test/why', retryAfter: 1 });
  first = await waitFor('the window recorded', async () => {
    const c = await get();
    return c.acmeOrder?.renewalInfo?.renewalTime && !c.acmeOrder.renewalInfo.lastError ? c : null;
  }, { timeoutMs: 30000 });
  const w = first.acmeOrder.renewalInfo;
  assert.equal(ms(w.windowStart), start);
  assert.equal(ms(w.windowEnd), end);
  assert.equal(w.explanationUrl, 'https://ca.tlsplane.test/why');
  assert.ok(ms(w.renewalTime) >= start && ms(w.renewalTime) < end, `renewal_time inside the window: ${w.renewalTime}`);
  assert.equal(ms(first.renewalTime), ms(w.renewalTime), 'the certificate renews at the window\'s time, the sooner');
  assert.equal(first.renewalFailures ?? 0, 0);
  // Asked again (Retry-After 1 s): the same window keeps its moment.
  const n = asked(id).length;
  await waitFor('asked twice more', () => asked(id).length >= n + 2, { timeoutMs: 20000 });
  const again = await get();
  assert.equal(again.acmeOrder.renewalInfo.renewalTime.seconds, w.renewalTime.seconds);
  assert.equal(ms(again.renewalTime), ms(w.renewalTime));
  // The audit says who wrote it.
  const ev = (await api().AuditService.ListAuditEvents({ resource: 'certificates/ari' })).auditEvents;
  assert.ok(ev.some((e) => e.action === 'acme_renewal_info' && e.actor === 'system'), `audit: ${JSON.stringify(ev.map((e) => `${e.actor}:${e.action}`))}`);
});

test('the window moved into the past: renewed at once, newOrder replaces the old certID, the new chain served', async () => {
  assert.ok(first, 'the certificate of the test before');
  const oldId = certId(first.certificateChainPem);
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'ari', tlsContext: { certificates: ['certificates/ari'] } });
  await api().ListenerService.UpdateListener({ listener: { name: 'listeners/edge', sniRoutes: [{ hostname: NAME, tlsContext: 'tlsContexts/ari' }] }, updateMask: { paths: ['sni_routes'] } });
  const serve = (fp) => waitFor('the agent serves the chain', async () => {
    const r = await exchange(port, { servername: NAME, ca: pebble.root, checkServerIdentity: tls.checkServerIdentity }, { send: 'x\n' });
    return r.ok && r.info.fingerprint === fp ? r : null;
  }, { timeoutMs: 20000 });
  await serve(new crypto.X509Certificate(first.certificateChainPem).fingerprint256);

  const future = { start: Date.now() + 24 * HOUR, end: Date.now() + 26 * HOUR, retryAfter: 1 };
  const orders = front.requestsTo('newOrder').length;
  front.renewalInfo = (id) => (id === oldId ? { start: Date.now() - 2 * HOUR, end: Date.now() - HOUR, retryAfter: 1 } : future);
  const renewed = await waitFor('renewed', async () => {
    const c = await get();
    return c.serialNumber !== first.serialNumber && c.certificateChainPem ? c : null;
  }, { timeoutMs: 120000 });
  const newOrders = front.requestsTo('newOrder').slice(orders);
  assert.ok(newOrders.length >= 1, 'a new order');
  assert.ok(newOrders.every((r) => r.payload?.replaces === oldId), `newOrder replaces ${oldId}: ${JSON.stringify(newOrders.map((r) => r.payload))}`);
  assert.deepEqual(newOrders[0].payload.identifiers, [{ type: 'dns', value: NAME }]);
  assert.equal(renewed.acmeOrder.status, 'valid');
  assert.equal(renewed.renewalFailures ?? 0, 0);
  await serve(new crypto.X509Certificate(renewed.certificateChainPem).fingerprint256);
  // The new chain's renewal information: its own certID, the future window.
  const newId = certId(renewed.certificateChainPem);
  assert.notEqual(newId, oldId);
  const after = await waitFor('the new chain\'s window', async () => {
    const c = await get();
    const ri = c.acmeOrder?.renewalInfo;
    return ri?.certId === newId && ri.renewalTime ? c : null;
  }, { timeoutMs: 20000 });
  const ri = after.acmeOrder.renewalInfo;
  assert.ok(ms(ri.renewalTime) >= future.start && ms(ri.renewalTime) < future.end, `renewal_time in the new window: ${ri.renewalTime}`);
  assert.ok(ms(after.renewalTime) > Date.now(), 'not renewed again');
  const ev = (await api().AuditService.ListAuditEvents({ resource: 'certificates/ari' })).auditEvents;
  assert.ok(ev.some((e) => e.action === 'renew' && e.actor === 'system'), `audit: ${JSON.stringify(ev.map((e) => e.action))}`);
});

test('newOrder rate-limited (429 rateLimited, Retry-After 30): visible, retried after 30 s and not the shorter back-off, then completed', async () => {
  const RETRY_AFTER_S = 30;
  let limited = true;
  const answered = [];
  front.intercept = (req) => {
    if (!limited || req.path !== front.paths.newOrder) return null;
    answered.push(Date.now());
    return {
      status: 429,
      headers: { 'content-type': 'application/problem+json', 'retry-after': String(RETRY_AFTER_S) },
      body: JSON.stringify({ type: 'urn:ietf:params:acme:error:rateLimited', detail: 'too many new orders recently', status: 429 }),
    };
  };
  try {
    await certs().IssueCertificate({ certificateId: 'limited', issuer: 'issuers/front', dnsNames: [NAME] });
    const failed = await waitFor('the rate limit recorded', async () => {
      const c = await certs().GetCertificate({ name: 'certificates/limited' });
      return c.acmeOrder?.failures >= 1 ? c : null;
    }, { timeoutMs: 30000 });
    assert.equal(failed.acmeOrder.lastError, `ACME ${front.origin}${front.paths.newOrder}: HTTP 429: urn:ietf:params:acme:error:rateLimited: too many new orders recently (retry after ${RETRY_AFTER_S} s)`);
    assert.equal(failed.lastRenewalError, failed.acmeOrder.lastError);
    assert.equal(answered.length, 1);
    const next = ms(failed.acmeOrder.nextAttemptTime);
    assert.ok(Math.abs(next - (answered[0] + RETRY_AFTER_S * 1000)) < 3000, `next attempt ${RETRY_AFTER_S} s after the answer, not ${RETRY_MS} ms: ${failed.acmeOrder.nextAttemptTime} vs ${new Date(answered[0]).toISOString()}`);
    assert.equal(ms(failed.nextAttemptTime), next);
    assert.equal(failed.certificateChainPem, '');
    // Let it through: the retry comes once the 30 s are over, and completes.
    limited = false;
    const t0 = Date.now();
    const done = await waitFor('the order completes', async () => {
      const c = await certs().GetCertificate({ name: 'certificates/limited' });
      return c.certificateChainPem ? c : null;
    }, { timeoutMs: (RETRY_AFTER_S + 60) * 1000 });
    const orders = front.requestsTo('newOrder').filter((r) => r.at > answered[0]);
    assert.ok(orders.length >= 1 && orders[0].at >= next - 1000, `no newOrder before the Retry-After: ${JSON.stringify(orders.map((r) => new Date(r.at).toISOString()))}`);
    assert.ok(Date.now() - t0 < (RETRY_AFTER_S + 60) * 1000);
    assert.equal(done.acmeOrder.status, 'valid');
    assert.equal(done.acmeOrder.lastError, '');
    assert.equal(done.acmeOrder.failures ?? 0, 0);
    assert.ok(!done.nextAttemptTime, 'no attempt pending');
  } finally {
    front.intercept = () => null;
  }
  await certs().DeleteCertificate({ name: 'certificates/limited' });
});
