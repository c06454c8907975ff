'use strict';
// The agent's observability for load balancers and dashboards, against
// the real tlsplane-server: /metrics names every certificate each
// listener serves (default and SNI contexts) with its notAfter, serial
// and fingerprint as `openssl x509` reads them from the certificate
// served, and the next_update of its stapled OCSP response; /healthz is
// 503 "no configuration" before any, 200 "ok" once every listener is
// applied, 503 naming a listener the agent cannot apply, and 200 again
// once it is fixed.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const http = require('node:http');
const net = require('node:net');
const tls = require('node:tls');
const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { CpAgent } = require('./lib/cpagent');
const { freePort, freePorts, agentBinary } = require('./lib/agent');
const { uid, makeCsr } = require('./lib/util');
const { tool } = require('./lib/tools');
const { waitFor } = require('./lib/wait');

let srv;
let conn;
let p;
let up;
let agent;
const ports = {};
let webRevision; // the revision that created listeners/m-web

const api = () => conn.api;

// One request to the agent's metrics address: { status, headers, body }.
function request(address, method, path) {
  const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, method, path, timeout: 5000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer within 5000 ms`)));
    req.on('error', reject);
    req.end();
  });
}

const healthz = (a, method = 'GET') => request(a.metricsAddress, method, '/healthz');

// The leaf the agent serves on port (with SNI servername), as
// `openssl x509 -enddate -serial -fingerprint -sha256` reads it.
async function served(port, servername) {
  const der = await new Promise((resolve, reject) => {
    const sock = tls.connect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false }, () => {
      const raw = sock.getPeerCertificate().raw;
      sock.end();
      resolve(raw);
    });
    sock.on('error', reject);
  });
  const out = execFileSync(tool('openssl'), ['x509', '-inform', 'DER', '-noout', '-enddate', '-serial', '-fingerprint', '-sha256'], { input: der }).toString();
  const field = (re) => {
    const m = re.exec(out);
    assert.ok(m, `openssl x509 printed no ${re}: ${out}`);
    return m[1].trim();
  };
  return {
    notAfter: Date.parse(field(/^notAfter=(.*)$/m)) / 1000,
    serial: field(/^serial=(.*)$/m),
    sha256: field(/^sha256 Fingerprint=(.*)$/im),
  };
}

// The not_after samples of listener, by certificate name.
async function certGauges(a, listener) {
  const m = await a.metrics();
  const out = {};
  for (const s of m.find('tlsplane_agent_certificate_not_after_seconds', { listener })) {
    assert.ok(!(s.labels.certificate in out), `${s.labels.certificate} twice for ${listener}`);
    out[s.labels.certificate] = { notAfter: s.value, serial: s.labels.serial, sha256: s.labels.sha256 };
  }
  return out;
}

before(async () => {
  agentBinary();
  p = pki();
  up = await Upstream.start({ mode: 'echo' });
  srv = await Server.start({ tls: true });
  conn = await connect(srv.address, srv.connectOptions());
  await api().CertificateService.CreateCertificate({
    certificateId: 'm-web', certificate: { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key },
  });
  await api().CertificateService.CreateCertificate({
    certificateId: 'm-api',
    certificate: { certificateChainPem: p.rsa.cert + p.ca.cert, privateKeyPem: p.rsa.key, ocspResponse: p.rsa.ocspResponse },
  });
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'm-web', tlsContext: { certificates: ['certificates/m-web'] } });
  await api().TlsContextService.CreateTlsContext({
    tlsContextId: 'm-api', tlsContext: { certificates: ['certificates/m-api'], ocspStapling: true },
  });
  [ports.web] = await freePorts(1);
  const created = await api().ListenerService.CreateListener({
    listenerId: 'm-web',
    listener: {
      address: `127.0.0.1:${ports.web}`, defaultTlsContext: 'tlsContexts/m-web', upstream: up.address, agentSelector: { site: 'm' },
      sniRoutes: [{ hostname: 'api.example.com', tlsContext: 'tlsContexts/m-api' }],
    },
  });
  webRevision = Number(created.revision);
});

after(async () => {
  if (agent && agent.running) await agent.stopClean();
  if (conn) conn.close();
  if (srv && srv.running) await srv.stopClean();
  if (up) await up.close();
});

afterEach((t) => {
  if (agent) agent.assertAlive(`during "${t.name}"`);
});

async function enrolled(agentId) {
  const { key, csr } = makeCsr();
  noteSecret(key.split('\n')[1]);
  const res = await api().AgentService.EnrollAgent({ agentId, csrPem: csr });
  return { cert: res.certificatePem, key };
}

test('/healthz before any configuration: 503 "no configuration" (the control plane unreachable, no cache)', async () => {
  const creds = await enrolled('metrics-none');
  const nowhere = { address: `127.0.0.1:${await freePort()}`, ca: srv.ca };
  const a = await CpAgent.start(nowhere, { name: 'metrics-none', ...creds });
  try {
    const r = await healthz(a);
    assert.equal(r.status, 503);
    assert.equal(r.body, 'no configuration\n');
    assert.match(r.headers['content-type'], /^text\/plain/);
    const h = await healthz(a, 'HEAD');
    assert.equal(h.status, 503);
    assert.equal(h.body, '');
    assert.equal(Number(h.headers['content-length']), r.body.length);
  } finally {
    await a.stopClean();
  }
});

test('every served certificate: notAfter, serial and fingerprint as openssl reads the served one; OCSP next_update', async () => {
  const token = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'metrics-a', agentLabels: { site: 'm' } } });
  noteSecret(token.secret);
  agent = await CpAgent.start(srv, { name: 'metrics-a', labels: { site: 'm' }, joinToken: token.secret, wait: 'connected' });
  await agent.waitApplied(webRevision);
  const g = await certGauges(agent, 'listeners/m-web');
  assert.deepEqual(Object.keys(g).sort(), ['certificates/m-api', 'certificates/m-web']);
  assert.deepEqual(g['certificates/m-web'], await served(ports.web));
  assert.deepEqual(g['certificates/m-api'], await served(ports.web, 'api.example.com'));
  assert.equal(g['certificates/m-web'].notAfter, p.ecdsa.notAfter.getTime() / 1000);

  const m = await agent.metrics();
  assert.equal(m.types.tlsplane_agent_certificate_not_after_seconds, 'gauge');
  assert.equal(m.types.tlsplane_agent_ocsp_next_update_seconds, 'gauge');
  const ocsp = m.find('tlsplane_agent_ocsp_next_update_seconds', { listener: 'listeners/m-web' });
  assert.deepEqual(ocsp.map((s) => s.labels), [{ listener: 'listeners/m-web', certificate: 'certificates/m-api' }]);
  assert.ok(p.rsa.ocspNextUpdate, 'the OCSP fixture has a next update');
  assert.equal(ocsp[0].value, p.rsa.ocspNextUpdate.getTime() / 1000);

  const h = await healthz(agent);
  assert.equal(h.status, 200);
  assert.equal(h.body, 'ok\n');
  const head = await healthz(agent, 'HEAD');
  assert.equal(head.status, 200);
  assert.equal(head.body, '');
  assert.equal((await request(agent.metricsAddress, 'POST', '/healthz')).status, 405);
});

test('a certificate update: the gauges follow the certificate served', async () => {
  const before = await certGauges(agent, 'listeners/m-web');
  const next = p.leaf('m-web-2', { cn: 'www.example.com', sans: ['DNS:www.example.com'], end: new Date(Date.now() + 90 * 86400000) });
  const from = agent.logText.length;
  const r = await api().CertificateService.UpdateCertificate({
    certificate: { name: 'certificates/m-web', certificateChainPem: next.cert, privateKeyPem: next.key },
    updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
  });
  await agent.waitApplied(Number(r.revision), { from });
  const g = await certGauges(agent, 'listeners/m-web');
  const now = await served(ports.web);
  assert.equal(now.sha256, next.fingerprint);
  assert.deepEqual(g['certificates/m-web'], now);
  assert.notDeepEqual(g['certificates/m-web'], before['certificates/m-web']);
  assert.equal(g['certificates/m-web'].serial, next.serial);
  assert.deepEqual(g['certificates/m-api'], before['certificates/m-api'], 'the SNI certificate did not change');
  assert.equal((await healthz(agent)).status, 200);
});

test('a listener the agent cannot apply: /healthz 503 naming it and why; 200 again once fixed', async () => {
  const blocker = net.createServer();
  await new Promise((r) => blocker.listen(0, '127.0.0.1', r));
  const taken = blocker.address().port;
  try {
    const from = agent.logText.length;
    const created = await api().ListenerService.CreateListener({
      listenerId: 'm-taken',
      listener: { address: `127.0.0.1:${taken}`, defaultTlsContext: 'tlsContexts/m-web', upstream: up.address, agentSelector: { site: 'm' } },
    });
    await agent.waitApplied(Number(created.revision), { from });
    const h = await waitFor('/healthz 503', async () => {
      const x = await healthz(agent);
      return x.status === 503 ? x : null;
    });
    assert.match(h.body, new RegExp(`^listeners/m-taken: not applied: address: .*127\\.0\\.0\\.1:${taken}.* \\(not served\\)$`, 'm'));
    assert.doesNotMatch(h.body, /m-web/, 'only the listener not applied is named');
    const head = await healthz(agent, 'HEAD');
    assert.equal(head.status, 503);
    assert.equal(head.body, '');
    const m = await agent.metrics();
    assert.equal(m.find('tlsplane_agent_certificate_not_after_seconds', { listener: 'listeners/m-taken' }).length, 0, 'nothing served, no certificate');

    const [port] = await freePorts(1);
    const from2 = agent.logText.length;
    const fixed = await api().ListenerService.UpdateListener({
      listener: { name: 'listeners/m-taken', address: `127.0.0.1:${port}` },
      updateMask: { paths: ['address'] },
    });
    await agent.waitApplied(Number(fixed.revision), { from: from2 });
    const ok = await waitFor('/healthz 200', async () => {
      const x = await healthz(agent);
      return x.status === 200 ? x : null;
    });
    assert.equal(ok.body, 'ok\n');
    const g = await certGauges(agent, 'listeners/m-taken');
    assert.deepEqual(g['certificates/m-web'], await served(port));
  } finally {
    await new Promise((r) => blocker.close(r));
  }
});

test('a configuration loaded from the cache, the control plane unreachable: /healthz 200, the gauges as before', async () => {
  const before = await certGauges(agent, 'listeners/m-web');
  await agent.stopClean();
  agent.srv = { address: `127.0.0.1:${await freePort()}`, ca: srv.ca }; // nobody there
  const from = agent.logText.length;
  await agent.restart();
  assert.match(agent.logText.slice(from), /cache \S+: revision \d+ applied/);
  const h = await waitFor('/healthz 200', async () => {
    const x = await healthz(agent);
    return x.status === 200 ? x : null;
  });
  assert.equal(h.body, 'ok\n');
  assert.deepEqual(await certGauges(agent, 'listeners/m-web'), before);
  assert.equal((await agent.metrics()).get('tlsplane_control_plane_connected'), 0);
});
