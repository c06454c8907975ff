'use strict';
// OCSP fetched by the server, never stale: for a certificate whose AIA names
// an OCSP responder (`openssl ocsp -port` on loopback, responses valid one
// minute) and that a stapling context uses, the server fetches the
// response at upload, checks and stores it (actor "system") and the agent
// staples it; a revocation in the responder's index shows at the refresh
// (half the validity) as ocsp_cert_status "revoked" and in the metrics,
// and is not stapled unless the context says ocsp_staple_revoked; with the
// responder down the old response is stapled until its nextUpdate, then
// none, while the server retries with a back-off. The fetcher is bounded:
// an HTTP error, an answer over 64 KiB and bytes that are no OCSP response
// are failed fetches, and only http:// responders are asked.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const http = require('node:http');
const path = require('node:path');
const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { sclient } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { freePorts, agentBinary, Metrics } = require('./lib/agent');
const { uid, seconds } = require('./lib/util');
const { waitFor } = require('./lib/wait');
const { OcspResponder } = require('./lib/ocspresponder');

// One minute of validity (-nmin 1): refreshed after 30 s.
const VALIDITY_S = 60;

let srv;
let conn;
let p;
let up;
let agent;
const responders = {}; // leaf name -> OcspResponder
const leaves = {};
const ports = {};
const api = () => conn.api;

async function getCert(id) {
  return api().CertificateService.GetCertificate({ name: `certificates/${id}` });
}

function serverMetrics() {
  const res = spawnSync('curl', ['-sS', '--cacert', path.join(srv.dataDir, 'ca.pem'), '-H', `authorization: Bearer ${srv.adminToken}`, `${srv.httpBase}/metrics`], { encoding: 'utf8' });
  assert.equal(res.status, 0, res.stderr);
  return new Metrics(res.stdout);
}

before(async () => {
  agentBinary();
  p = pki();
  up = await Upstream.start({ mode: 'echo' });
  const [rGood, rDown, lGood, lRevoked, lOptIn, lDown] = await freePorts(6);
  Object.assign(ports, { good: lGood, revoked: lRevoked, optin: lOptIn, down: lDown });
  // "good" is revoked later; "down" loses its responder. The leaves are
  // in the index before the responders read it.
  leaves.good = p.ocspLeaf(uid('ocsp-good'), `http://127.0.0.1:${rGood}`);
  leaves.down = p.ocspLeaf(uid('ocsp-down'), `http://127.0.0.1:${rDown}`);
  responders.good = await OcspResponder.start(p, rGood);
  responders.down = await OcspResponder.start(p, rDown);
  srv = await Server.start({ tls: true, env: { TLSPLANE_OCSP_RETRY_BASE_SECONDS: '1' } });
  conn = await connect(srv.address, srv.connectOptions());
  for (const id of ['good', 'down']) {
    await api().CertificateService.CreateCertificate({
      certificateId: id,
      certificate: { certificateChainPem: leaves[id].cert, privateKeyPem: leaves[id].key, issuerCertificatePem: p.ca.cert },
    });
  }
  const contexts = [
    ['good', 'good', {}], ['revoked', 'good', {}], ['optin', 'good', { ocspStapleRevoked: true }], ['down', 'down', {}],
  ];
  for (const [id, cert, extra] of contexts) {
    await api().TlsContextService.CreateTlsContext({
      tlsContextId: id, tlsContext: { certificates: [`certificates/${cert}`], ocspStapling: true, ...extra },
    });
    await api().ListenerService.CreateListener({
      listenerId: id,
      listener: { address: `127.0.0.1:${ports[id]}`, defaultTlsContext: `tlsContexts/${id}`, upstream: up.address, agentSelector: { site: 'ocsp' } },
    });
  }
  const tok = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'ocsp-1', agentLabels: { site: 'ocsp' } } });
  noteSecret(tok.secret);
  agent = await CpAgent.start(srv, { name: 'ocsp-1', labels: { site: 'ocsp' }, joinToken: tok.secret, wait: 'connected' });
});

after(async () => {
  if (agent && agent.running) await agent.stopClean();
  if (conn) conn.close();
  if (srv && srv.running) await srv.stopClean();
  if (up) await up.close();
  for (const r of Object.values(responders)) await r.stop();
});

afterEach((t) => {
  if (agent) agent.assertAlive(`during "${t.name}"`);
});

// What the agent staples on listener id: { stapled, status, nextUpdate }.
async function stapleOn(id) {
  const r = await sclient(ports[id], ['-status']);
  assert.equal(r.handshake, true, r.out);
  const st = /Cert Status: (\w+)/.exec(r.out);
  return { stapled: r.ocspStapled, none: r.ocspNone, status: st ? st[1] : null, nextUpdate: r.ocspNextUpdate, out: r.out };
}

test('at upload the server fetches each response itself, checks and stores it (actor "system"); the agent staples it', async () => {
  for (const id of ['good', 'down']) {
    const c = await waitFor(`certificates/${id} fetched`, async () => {
      const c = await getCert(id);
      if (c.ocspCertStatus !== 'good') throw new Error(`status "${c.ocspCertStatus}", last error "${c.ocspLastError}", ${c.ocspFetchFailures} failures`);
      return c;
    }, { timeoutMs: 20000 });
    assert.equal(c.ocspResponderUrl, `http://127.0.0.1:${responders[id].port}`);
    assert.ok(c.ocspResponse.length > 0, 'no response stored');
    assert.ok(c.ocspFetchTime && c.ocspNextUpdate && c.ocspRefreshTime && c.ocspNextAttemptTime, JSON.stringify(c));
    assert.equal(c.ocspLastError, '');
    assert.equal(c.ocspFetchFailures, 0);
    // Refreshed when half of the validity has passed.
    const thisUpdate = seconds(c.ocspNextUpdate) - VALIDITY_S;
    assert.ok(Math.abs(seconds(c.ocspRefreshTime) - (thisUpdate + VALIDITY_S / 2)) <= 1,
      `refresh ${seconds(c.ocspRefreshTime)}, next update ${seconds(c.ocspNextUpdate)}`);
    assert.equal(seconds(c.ocspNextAttemptTime), seconds(c.ocspRefreshTime));
  }
  const audit = await api().AuditService.ListAuditEvents({ resource: 'certificates/good' });
  const events = audit.auditEvents || [];
  assert.ok(events.some((e) => e.actor === 'system'), `no write by "system": ${JSON.stringify(events)}`);
  for (const id of ['good', 'revoked', 'optin', 'down']) {
    await agent.waitForLog(new RegExp(`listener=listeners/${id} new: serving on`));
    const s = await waitFor(`listeners/${id} staples a good response`, async () => {
      const s = await stapleOn(id);
      return s.stapled && s.status === 'good' && s;
    }, { timeoutMs: 20000 });
    assert.ok(s.nextUpdate > new Date(), s.out);
  }
  const m = serverMetrics();
  assert.equal(m.get('tlsplane_certificate_ocsp_status', { certificate: 'certificates/good', status: 'good' }), 1);
  assert.equal(m.get('tlsplane_certificate_ocsp_fetch_failures', { certificate: 'certificates/down' }), 0);
});

test('revoked in the responder\'s index: after the refresh the certificate shows revoked (and the metric), the staple stops; a context with ocsp_staple_revoked staples it', async () => {
  // A job waiting on WatchEvents hears of it too.
  const events = [];
  const call = conn.clients['tlsplane.v1.AuditService'].WatchEvents({ include: ['OCSP_CHANGED'] });
  call.on('data', (e) => events.push(e));
  call.on('error', () => {});
  p.revoke(leaves.good.name);
  const c = await waitFor('certificates/good revoked', async () => {
    const c = await getCert('good');
    return c.ocspCertStatus === 'revoked' && c;
  }, { timeoutMs: (VALIDITY_S + 15) * 1000, intervalMs: 500 });
  const ev = await waitFor('an OCSP_CHANGED event for certificates/good', () =>
    events.find((e) => e.resource === 'certificates/good' && /good -> revoked/.test(e.reason)));
  assert.equal(ev.type, 'OCSP_CHANGED');
  call.cancel();
  assert.ok(c.ocspResponse.length > 0, 'the revoked response is stored');
  const m = serverMetrics();
  assert.equal(m.get('tlsplane_certificate_ocsp_status', { certificate: 'certificates/good', status: 'revoked' }), 1);
  assert.equal(m.find('tlsplane_certificate_ocsp_status', { certificate: 'certificates/good', status: 'good' }).length, 0);
  for (const id of ['good', 'revoked']) {
    await waitFor(`listeners/${id} stops stapling`, async () => {
      const s = await stapleOn(id);
      return !s.stapled && s.none;
    }, { timeoutMs: 20000 });
  }
  const s = await waitFor('listeners/optin staples the revoked response', async () => {
    const s = await stapleOn('optin');
    return s.stapled && s.status === 'revoked' && s;
  }, { timeoutMs: 20000 });
  assert.ok(s.stapled);
});

test('responder down: the old response is stapled until its nextUpdate, then none; the server retries with a back-off and says why', async () => {
  const r = responders.down;
  await r.stop();
  const stored = await getCert('down');
  const nextUpdate = seconds(stored.ocspNextUpdate) * 1000;
  // Failures recorded, each retry later than the one before (1 s doubling).
  const failed = await waitFor('a failed fetch of certificates/down', async () => {
    const c = await getCert('down');
    return c.ocspFetchFailures >= 2 && c;
  }, { timeoutMs: (VALIDITY_S + 15) * 1000, intervalMs: 250 });
  assert.match(failed.ocspLastError, /responder|connect|Connection refused/i);
  const m = serverMetrics();
  assert.ok(m.get('tlsplane_certificate_ocsp_fetch_failures', { certificate: 'certificates/down' }) >= 2);
  if (Date.now() < nextUpdate - 2000) {
    const s = await stapleOn('down');
    assert.equal(s.stapled, true, 'the old response is not stapled before its nextUpdate');
    assert.equal(s.status, 'good');
    assert.equal(s.nextUpdate.getTime(), nextUpdate);
  }
  const later = await waitFor('a later failure', async () => {
    const c = await getCert('down');
    return c.ocspFetchFailures > failed.ocspFetchFailures && c;
  }, { timeoutMs: 20000, intervalMs: 250 });
  const gap = (c) => seconds(c.ocspNextAttemptTime) - seconds(c.updateTime);
  assert.ok(gap(later) >= 2 * gap(failed) - 1, `back-off: ${gap(failed)} s then ${gap(later)} s`);
  // Past nextUpdate: nothing stapled, and the stale response is dropped.
  await waitFor('no staple after nextUpdate', async () => {
    if (Date.now() < nextUpdate) return false;
    const s = await stapleOn('down');
    return !s.stapled && s.none;
  }, { timeoutMs: nextUpdate - Date.now() + 20000, intervalMs: 500 });
  const dropped = await waitFor('the stale response dropped', async () => {
    const c = await getCert('down');
    return c.ocspResponse.length === 0 && c;
  }, { timeoutMs: 40000, intervalMs: 500 });
  assert.equal(dropped.ocspCertStatus, '');
  assert.ok(dropped.ocspFetchFailures > later.ocspFetchFailures);
});

test('bounded: an HTTP error, an answer over 64 KiB and bytes that are no OCSP response are failed fetches that say why; an https:// responder is not asked', async () => {
  let mode = '500';
  const seen = [];
  const hs = http.createServer((req, res) => {
    let len = 0;
    req.on('data', (d) => { len += d.length; });
    req.on('end', () => {
      seen.push({ method: req.method, type: req.headers['content-type'], len });
      if (mode === '500') {
        res.writeHead(500);
        res.end('no');
      } else if (mode === 'big') {
        res.writeHead(200, { 'content-type': 'application/ocsp-response' });
        res.end(Buffer.alloc(70 * 1024, 0x30));
      } else {
        res.writeHead(200, { 'content-type': 'application/ocsp-response' });
        res.end('not an OCSP response');
      }
    });
  });
  await new Promise((resolve) => hs.listen(0, '127.0.0.1', resolve));
  try {
    const leaf = p.ocspLeaf(uid('ocsp-bounds'), `http://127.0.0.1:${hs.address().port}/ocsp`);
    await api().CertificateService.CreateCertificate({
      certificateId: 'bounds',
      certificate: { certificateChainPem: leaf.cert, privateKeyPem: leaf.key, issuerCertificatePem: p.ca.cert },
    });
    await api().TlsContextService.CreateTlsContext({
      tlsContextId: 'bounds', tlsContext: { certificates: ['certificates/bounds'], ocspStapling: true },
    });
    const failure = async (re) => waitFor(`a failed fetch: ${re}`, async () => {
      const c = await getCert('bounds');
      if (!re.test(c.ocspLastError)) throw new Error(`last error "${c.ocspLastError}"`);
      return c;
    }, { timeoutMs: 20000, intervalMs: 100 });
    const c500 = await failure(/the responder answered HTTP 500/);
    assert.deepEqual(seen[0].method, 'POST');
    assert.equal(seen[0].type, 'application/ocsp-request');
    assert.ok(seen[0].len > 0, 'an empty request');
    mode = 'big';
    await failure(/longer than 65536 bytes/);
    mode = 'garbage';
    const garbage = await failure(/not a DER OCSPResponse/);
    assert.ok(garbage.ocspFetchFailures > c500.ocspFetchFailures);
    assert.equal(garbage.ocspResponse.length, 0);
    assert.equal(garbage.ocspCertStatus, '');

    const tls = p.ocspLeaf(uid('ocsp-https'), 'https://127.0.0.1:9/ocsp');
    const c = await api().CertificateService.CreateCertificate({
      certificateId: 'https-responder',
      certificate: { certificateChainPem: tls.cert, privateKeyPem: tls.key, issuerCertificatePem: p.ca.cert },
    });
    assert.equal(c.ocspResponderUrl, '');
    assert.equal(c.ocspNextAttemptTime, null);
  } finally {
    await new Promise((resolve) => hs.close(resolve));
  }
});
