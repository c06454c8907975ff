'use strict';
// ACME orders on threads of their own: four orders hung on a directory
// that accepts connections and never answers (pebble behind
// lib/tcpproxy.js, blackholed once the issuer's account is registered:
// each order's first request waits out its 30 s timeout, then the order
// fails and is retried) never hold up the fetch threads. An OCSP staple
// (`openssl ocsp`, responses valid one minute, refreshed after 30 s)
// falling due meanwhile is fetched and served by the agent within a few
// seconds of its refresh time, and the server stops promptly with the
// orders still hung.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Server } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { Pebble } = require('./lib/pebble');
const { TcpProxy } = require('./lib/tcpproxy');
const { OcspResponder } = require('./lib/ocspresponder');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { sclient } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { freePorts, agentBinary } = require('./lib/agent');
const { uid, seconds } = require('./lib/util');
const { waitFor } = require('./lib/wait');

const HUNG = ['h1.tlsplane.test', 'h2.tlsplane.test', 'h3.tlsplane.test', 'h4.tlsplane.test'];
const FETCH_LATE_MAX_S = 3; // the job tick is one second
const STAPLE_LATE_MAX_S = 5; // and the push to the agent a fraction of one
const STOP_MAX_MS = 5000;

let srv;
let conn;
let p;
let up;
let agent;
let pebble;
let proxy;
let responder;
let port; // the stapling listener's
const api = () => conn.api;

before(async () => {
  agentBinary();
  p = pki();
  let rPort;
  [rPort, port] = await freePorts(2);
  // In the index before the responder reads it.
  const leaf = p.ocspLeaf(uid('jobs-ocsp'), `http://127.0.0.1:${rPort}`);
  responder = await OcspResponder.start(p, rPort);
  pebble = await Pebble.start();
  proxy = await TcpProxy.start(new URL(pebble.directory).host);
  up = await Upstream.start({ mode: 'echo' });
  srv = await Server.start({ tls: true, env: { TLSPLANE_OCSP_RETRY_BASE_SECONDS: '1', TLSPLANE_RENEW_RETRY_MS: '1000', TLSPLANE_ACME_RETRY_MS: '1000' } });
  conn = await connect(srv.address, srv.connectOptions());
  await api().IssuerService.CreateIssuer({
    issuerId: 'silent',
    issuer: pebble.issuer({ acmeDirectoryUrl: `https://${proxy.address}/dir` }),
  });
  await waitFor('issuers/silent: account valid', async () => (await api().IssuerService.GetIssuer({ name: 'issuers/silent' })).acmeAccountStatus === 'valid', { timeoutMs: 30000 });
  await api().CertificateService.CreateCertificate({
    certificateId: 'stapled',
    certificate: { certificateChainPem: leaf.cert, privateKeyPem: leaf.key, issuerCertificatePem: p.ca.cert },
  });
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'stapled', tlsContext: { certificates: ['certificates/stapled'], ocspStapling: true } });
  await api().ListenerService.CreateListener({
    listenerId: 'stapled', listener: { address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/stapled', upstream: up.address },
  });
  const tok = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'jobs-1' } });
  agent = await CpAgent.start(srv, { name: 'jobs-1', joinToken: tok.secret, wait: 'connected' });
});

after(async () => {
  if (agent && agent.running) await agent.stopClean();
  if (conn) conn.close();
  if (srv && srv.running) await srv.stopClean();
  if (up) await up.close();
  if (proxy) await proxy.close();
  if (pebble) pebble.stop();
  if (responder) await responder.stop();
});

// What the agent staples: { stapled, nextUpdate (ms) }.
async function staple() {
  const r = await sclient(port, ['-status']);
  assert.equal(r.handshake, true, r.out);
  return { stapled: r.ocspStapled, nextUpdate: r.ocspNextUpdate ? r.ocspNextUpdate.getTime() : 0 };
}

test('four orders hung on a silent directory: the OCSP staple is still fetched and served within seconds of its refresh time', async (t) => {
  const first = await waitFor('the first response fetched and stapled', async () => {
    const c = await api().CertificateService.GetCertificate({ name: 'certificates/stapled' });
    if (c.ocspCertStatus !== 'good' || !c.ocspRefreshTime) return null;
    const s = await staple();
    return s.stapled && s.nextUpdate === seconds(c.ocspNextUpdate) * 1000 ? { c, s } : null;
  }, { timeoutMs: 20000 });
  const due = seconds(first.c.ocspRefreshTime);
  proxy.blackhole();
  for (const [i, name] of HUNG.entries()) {
    await api().CertificateService.IssueCertificate({ certificateId: `hung-${i + 1}`, issuer: 'issuers/silent', dnsNames: [name] });
  }
  // Two orders run (the order threads, or on the old single pool both
  // fetch threads), the others wait; each holds its connection until its
  // 30 s timeout.
  await waitFor('two orders hung on the directory', () => proxy.held >= 2, { timeoutMs: 10000 });
  assert.ok(Date.now() / 1000 < due - 5, `the orders hang before the refresh is due (${due - Date.now() / 1000} s ahead)`);
  const refreshed = await waitFor('the refreshed response stapled', async () => {
    const s = await staple();
    return s.stapled && s.nextUpdate > first.s.nextUpdate ? { s, at: Date.now() / 1000 } : null;
  }, { timeoutMs: (due - Date.now() / 1000 + 90) * 1000, intervalMs: 250 });
  const c = await api().CertificateService.GetCertificate({ name: 'certificates/stapled' });
  const fetchLate = seconds(c.ocspFetchTime) - due;
  const stapleLate = refreshed.at - due;
  t.diagnostic(`refresh due at ${new Date(due * 1000).toISOString()}: fetched ${fetchLate.toFixed(1)} s late, stapled ${stapleLate.toFixed(1)} s late; ${proxy.held} connections held by hung orders`);
  assert.ok(fetchLate <= FETCH_LATE_MAX_S, `the OCSP refresh ran ${fetchLate.toFixed(1)} s after it was due`);
  assert.ok(stapleLate <= STAPLE_LATE_MAX_S, `the refreshed staple was served ${stapleLate.toFixed(1)} s after it was due`);
  assert.equal(c.ocspFetchFailures, 0);
  // The orders are still hung: none has a chain, and the directory holds
  // connections.
  for (const i of HUNG.keys()) {
    const h = await api().CertificateService.GetCertificate({ name: `certificates/hung-${i + 1}` });
    assert.equal(h.certificateChainPem, '', `certificates/hung-${i + 1} has no chain`);
  }
});

test('the server stops promptly while orders hang', async (t) => {
  await waitFor('two orders hung on the directory', () => proxy.held >= 2, { timeoutMs: 40000 });
  const t0 = Date.now();
  await srv.stopClean();
  const ms = Date.now() - t0;
  t.diagnostic(`stopped in ${ms} ms with ${proxy.held} connections held`);
  assert.ok(ms < STOP_MAX_MS, `stopping took ${ms} ms`);
});
