'use strict';
// CRL freshness: a RevocationList with a distribution_point is fetched by
// the server (a tiny HTTP server on loopback plays the CA's endpoint) at
// creation and on schedule (before the CRL's next update); a newer CRL is
// stored as one write by "system" and reaches a real agent, which then
// refuses the newly revoked client with no API call. With the endpoint
// down the error shows and the retries back off; a CRL past its next
// update is flagged (API and metrics) and the agent keeps enforcing it.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { exchange } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { freePort, agentBinary } = require('./lib/agent');
const { expectRefused } = require('./lib/util');
const { waitFor } = require('./lib/wait');
const { status } = require('@grpc/grpc-js');

const RETRY_BASE_MS = 500;
const seconds = (ts) => Number(ts.seconds) + ts.nanos / 1e9;

let p;
let srv;
let conn;
let up;
let agent;
let port;
let alice;
let bob;
let crl0;
let created;
// The CA's endpoint: serves `endpoint.body` (DER), or 503 while down.
const endpoint = { body: null, down: false, hits: 0, server: null, url: null };
const api = () => conn.api;
const RL = 'revocationLists/ca';

// A CRL of the root CA (every revocation so far) due in `sec` seconds, DER.
let crlSeq = 0;
function crl(sec, { config = 'ca.cnf', exts = [] } = {}) {
  crlSeq += 1;
  const out = `refresh-${crlSeq}.crl`;
  p.run(['ca', '-batch', '-config', config, '-gencrl', '-crlsec', String(sec), ...exts, '-out', out]);
  p.run(['crl', '-in', out, '-outform', 'DER', '-out', `${out}.der`]);
  return { pem: p.read(out), der: p.readBuf(`${out}.der`) };
}

async function client(who, version) {
  const opts = version === '1.3' ? { minVersion: 'TLSv1.3' } : { maxVersion: 'TLSv1.2' };
  return exchange(port, { ...opts, cert: who.cert, key: fs.readFileSync(p.file(`${who.name}.key`)) });
}

async function assertServed(who, why) {
  for (const v of ['1.2', '1.3']) {
    const r = await client(who, v);
    assert.equal(r.ok, true, `${who.name}, TLS ${v}: ${why}: ${r.error}`);
  }
}

async function assertRevoked(who, why) {
  for (const v of ['1.2', '1.3']) {
    const r = await client(who, v);
    assert.equal(r.ok, false, `${who.name}, TLS ${v}: served (${why})`);
    assert.match(r.error, /certificate revoked/, `${who.name}, TLS ${v}: ${why}`);
  }
}

function metricsText() {
  return new Promise((resolve, reject) => {
    // One request per connection (agent: false), as a scraper's curl: no
    // idle keep-alive connection is left open across the restarts.
    const req = https.get(`${srv.httpBase}/metrics`, { agent: false, ca: srv.ca, headers: { authorization: `Bearer ${srv.adminToken}` } }, (res) => {
      let text = '';
      res.on('data', (d) => { text += d; });
      res.on('end', () => (res.statusCode === 200 ? resolve(text) : reject(new Error(`/metrics: ${res.statusCode}`))));
    });
    req.on('error', reject);
  });
}

const metric = (text, name) => {
  const m = new RegExp(`^${name}\\{revocation_list="${RL}"\\} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : null;
};

before(async () => {
  agentBinary();
  p = pki();
  alice = p.leaf('crl-alice', { type: 'ec', cn: 'crl-alice' });
  bob = p.leaf('crl-bob', { type: 'ec', cn: 'crl-bob' });
  crl0 = crl(15);
  endpoint.body = crl0.der;
  endpoint.server = http.createServer((req, res) => {
    endpoint.hits += 1;
    if (endpoint.down) {
      res.writeHead(503);
      res.end('down');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/pkix-crl' });
    res.end(endpoint.body);
  });
  await new Promise((r) => endpoint.server.listen(0, '127.0.0.1', r));
  endpoint.url = `http://127.0.0.1:${endpoint.server.address().port}/ca.crl`;

  up = await Upstream.start({ mode: 'echo' });
  srv = await Server.start({ tls: true, env: { TLSPLANE_CRL_RETRY_BASE_MS: String(RETRY_BASE_MS) } });
  conn = await connect(srv.address, srv.connectOptions());
  port = await freePort();
  await api().CertificateService.CreateCertificate({ certificateId: 'web', certificate: { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key } });
  await api().TrustBundleService.CreateTrustBundle({ trustBundleId: 'ca', trustBundle: { caPem: p.ca.cert } });
  created = await api().RevocationListService.CreateRevocationList({
    revocationListId: 'ca', revocationList: { crlPem: crl0.pem, distributionPoint: endpoint.url },
  });
  await api().TlsContextService.CreateTlsContext({
    tlsContextId: 'web',
    tlsContext: { certificates: ['certificates/web'], trustBundle: 'trustBundles/ca', revocationLists: [RL], requestCert: true, rejectUnauthorized: true },
  });
  await api().ListenerService.CreateListener({
    listenerId: 'web', listener: { address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/web', upstream: up.address },
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
  if (endpoint.server) endpoint.server.close();
});

afterEach((t) => {
  if (agent) agent.assertAlive(`during "${t.name}"`);
});

test('created with a distribution_point: fetched at once, the same CRL makes no revision; next fetch before next_update', async () => {
  assert.equal(created.distributionPoint, endpoint.url);
  assert.equal(seconds(created.refreshInterval), 3600, 'default refresh_interval 1 h');
  assert.equal(created.stale, false);
  const rl = await waitFor('the fetch at creation', async () => {
    const r = await api().RevocationListService.GetRevocationList({ name: RL });
    return r.lastFetchTime ? r : null;
  }, { timeoutMs: 10000, intervalMs: 200 });
  assert.ok(endpoint.hits >= 1, 'the endpoint was not asked');
  assert.equal(rl.lastFetchError, '');
  assert.equal(rl.fetchFailures, 0);
  assert.equal(rl.revision, created.revision, 'the same CRL was written again');
  assert.equal(rl.etag, created.etag);
  assert.equal(seconds(rl.nextFetchTime), seconds(rl.nextUpdate), 'next fetch at next_update (sooner than 1 h)');
  await assertServed(alice, 'not revoked');
  await assertServed(bob, 'not revoked yet');
});

test('bad freshness settings are refused, naming the field, and change nothing', async () => {
  const svc = api().RevocationListService;
  await expectRefused(conn.api, () => svc.CreateRevocationList({ revocationListId: 'ftp', revocationList: { crlPem: crl0.pem, distributionPoint: 'ftp://127.0.0.1/ca.crl' } }),
    status.INVALID_ARGUMENT, { field: 'revocation_list.distribution_point' });
  await expectRefused(conn.api, () => svc.CreateRevocationList({ revocationListId: 'nourl', revocationList: { crlPem: crl0.pem, distributionPoint: 'not a url' } }),
    status.INVALID_ARGUMENT, { field: 'revocation_list.distribution_point' });
  await expectRefused(conn.api, () => svc.UpdateRevocationList({ revocationList: { name: RL, refreshInterval: { seconds: '30', nanos: 0 } }, updateMask: { paths: ['refresh_interval'] } }),
    status.INVALID_ARGUMENT, { field: 'revocation_list.refresh_interval' });
});

test('a CRL with an issuing distribution point: distribution_point defaults to its URL', async () => {
  const conf = `${fs.readFileSync(p.file('ca.cnf'), 'utf8')}\n[ crl_idp ]\nissuingDistributionPoint = @idp\n[ idp ]\nfullname = URI:http://127.0.0.1:9/idp.crl\n`;
  fs.writeFileSync(p.file('ca-idp.cnf'), conf);
  const withIdp = crl(3600, { config: 'ca-idp.cnf', exts: ['-crlexts', 'crl_idp'] });
  const r = await api().RevocationListService.CreateRevocationList({ revocationListId: 'idp', revocationList: { crlPem: withIdp.pem } });
  assert.equal(r.distributionPoint, 'http://127.0.0.1:9/idp.crl');
  const plain = await api().RevocationListService.CreateRevocationList({ revocationListId: 'plain', revocationList: { crlPem: crl(3600).pem } });
  assert.equal(plain.distributionPoint, '');
  assert.equal(plain.nextFetchTime, null, 'no distribution point: never fetched');
  // Nothing listens on port 9: the fetch fails and says why.
  const failed = await waitFor('the failed fetch of the idp list', async () => {
    const x = await api().RevocationListService.GetRevocationList({ name: r.name });
    return x.lastFetchError ? x : null;
  }, { timeoutMs: 10000, intervalMs: 200 });
  assert.match(failed.lastFetchError, /GET http:\/\/127\.0\.0\.1:9\/idp\.crl/);
  await api().RevocationListService.DeleteRevocationList({ name: r.name });
  await api().RevocationListService.DeleteRevocationList({ name: plain.name });
});

test('on schedule: a newer CRL at the endpoint is stored by "system" and the agent refuses the newly revoked client', async () => {
  const before = await api().RevocationListService.GetRevocationList({ name: RL });
  p.run(['ca', '-batch', '-config', 'ca.cnf', '-revoke', 'crl-bob.crt', '-crl_reason', 'keyCompromise']);
  // Valid a few seconds past the fetch, due at the held CRL's next update.
  const crl1 = crl(Math.ceil(seconds(before.nextUpdate) - Date.now() / 1000) + 6);
  endpoint.body = crl1.der;
  const rl = await waitFor('the scheduled fetch of the new CRL', async () => {
    const r = await api().RevocationListService.GetRevocationList({ name: RL });
    return r.revision !== before.revision ? r : null;
  }, { timeoutMs: 30000, intervalMs: 250 });
  assert.equal(rl.crlPem, crl1.pem);
  assert.equal(rl.revokedCount, before.revokedCount + 1);
  assert.equal(rl.lastFetchError, '');
  assert.equal(seconds(rl.nextFetchTime), seconds(rl.nextUpdate));
  const events = await api().AuditService.ListAuditEvents({ resource: RL, sinceRevision: before.revision });
  assert.equal(events.auditEvents.length, 1, `one write: ${JSON.stringify(events.auditEvents)}`);
  const e = events.auditEvents[0];
  assert.equal(e.revision, rl.revision);
  assert.equal(e.actor, 'system');
  assert.equal(e.action, 'refresh');
  await agent.waitApplied(Number(rl.revision));
  await assertRevoked(bob, 'revoked by the fetched CRL');
  await assertServed(alice, 'not revoked');
});

test('endpoint down: the error shows, retries back off, the CRL goes stale (API, metrics) and the agent still enforces it', async () => {
  const events = [];
  const call = conn.clients['tlsplane.v1.AuditService'].WatchEvents({ include: ['CRL_STALE'] });
  call.on('data', (e) => events.push(e));
  call.on('error', () => {});
  endpoint.down = true;
  const held = await api().RevocationListService.GetRevocationList({ name: RL });
  // Past next_update the fetches fail: 0.5 s, 1 s, 2 s, ... apart.
  const rl = await waitFor('three failed fetches', async () => {
    const r = await api().RevocationListService.GetRevocationList({ name: RL });
    return r.fetchFailures >= 3 ? r : null;
  }, { timeoutMs: 30000, intervalMs: 200 });
  assert.match(rl.lastFetchError, /503/);
  assert.equal(rl.revision, held.revision, 'a failed fetch writes nothing');
  assert.equal(rl.crlPem, held.crlPem);
  const wait = seconds(rl.nextFetchTime) - seconds(rl.lastFetchTime);
  const want = (RETRY_BASE_MS / 1000) * 2 ** (rl.fetchFailures - 1);
  assert.ok(Math.abs(wait - want) < 0.01, `back-off after ${rl.fetchFailures} failures: ${wait} s, want ${want} s`);
  assert.equal(rl.stale, true, 'past next_update and not stale');
  assert.ok(seconds(rl.nextUpdate) < Date.now() / 1000);
  // A job on WatchEvents hears that the list went stale.
  const ev = await waitFor('a CRL_STALE event', () => events.find((e) => e.resource === RL));
  assert.match(ev.reason, /past its nextUpdate; refresh failed: .*503/);
  call.cancel();

  const text = await metricsText();
  assert.equal(metric(text, 'tlsplane_revocation_list_stale'), 1, text);
  assert.equal(metric(text, 'tlsplane_revocation_list_next_update_seconds'), Number(rl.nextUpdate.seconds));

  // The agent keeps the last CRL: bob stays refused, alice is served.
  await assertRevoked(bob, 'revoked by a CRL past its next update');
  await assertServed(alice, 'not revoked, CRL past its next update');

  // Back up with a fresh CRL: stored, no longer stale.
  const crl2 = crl(3600);
  endpoint.body = crl2.der;
  endpoint.down = false;
  const fresh = await waitFor('the fresh CRL', async () => {
    const r = await api().RevocationListService.GetRevocationList({ name: RL });
    return r.revision !== held.revision ? r : null;
  }, { timeoutMs: 30000, intervalMs: 250 });
  assert.equal(fresh.stale, false);
  assert.equal(fresh.lastFetchError, '');
  assert.equal(fresh.fetchFailures, 0);
  assert.equal(metric(await metricsText(), 'tlsplane_revocation_list_stale'), 0);
  await agent.waitApplied(Number(fresh.revision));
  await assertRevoked(bob, 'still revoked in the fresh CRL');
});

test('a fetched CRL of another issuer, or older than the one held (a replay), is refused and the held one kept', async () => {
  const svc = api().RevocationListService;
  crlSeq += 1;
  const other = `refresh-${crlSeq}.crl`;
  p.run(['ca', '-batch', '-config', 'ca.cnf', '-gencrl', '-crlsec', '3600', '-cert', 'ca2.crt', '-keyfile', 'ca2.key', '-out', other]);
  p.run(['crl', '-in', other, '-outform', 'DER', '-out', `${other}.der`]);
  for (const [body, why] of [[p.readBuf(`${other}.der`), /is issued by .*, not by /], [crl0.der, /older than the one held/]]) {
    endpoint.body = body;
    // Any write makes the list due at once.
    const cur = await svc.GetRevocationList({ name: RL });
    const u = await svc.UpdateRevocationList({ revocationList: { name: RL, labels: { try: String(crlSeq) } }, updateMask: { paths: ['labels'] } });
    crlSeq += 1;
    assert.equal(seconds(u.nextFetchTime) <= Date.now() / 1000 + 1, true, 'an update is fetched at once');
    const r = await waitFor(`the refused fetch (${why})`, async () => {
      const x = await svc.GetRevocationList({ name: RL });
      return x.lastFetchError ? x : null;
    }, { timeoutMs: 10000, intervalMs: 200 });
    assert.match(r.lastFetchError, why);
    assert.equal(r.revision, u.revision, 'the refused CRL was stored');
    assert.equal(r.crlPem, cur.crlPem);
  }
  await assertRevoked(bob, 'the held CRL still applies');
});

test('after a restart a list whose fetch is due is fetched at once (what fetches found is not stored)', async () => {
  await agent.stopClean();
  agent = null;
  const before = await api().RevocationListService.GetRevocationList({ name: RL });
  assert.ok(seconds(before.nextFetchTime) > 0);
  const newer = crl(3600);
  endpoint.body = newer.der;
  const hits = endpoint.hits;
  await srv.restart();
  conn.close();
  conn = await connect(srv.address, srv.connectOptions());
  const rl = await waitFor('the fetch after the restart', async () => {
    const r = await api().RevocationListService.GetRevocationList({ name: RL });
    return r.revision !== before.revision ? r : null;
  }, { timeoutMs: 15000, intervalMs: 250 });
  assert.ok(endpoint.hits > hits);
  assert.equal(rl.crlPem, newer.pem);
  assert.equal(rl.lastFetchError, '');
  assert.equal(rl.fetchFailures, 0);
});
