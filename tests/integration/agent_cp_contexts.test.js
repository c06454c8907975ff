'use strict';
// tlsplane-agent against the real server: one SSL_CTX per distinct context
// for the whole agent (tlsplane_ssl_ctxs, tlsplane_ssl_ctx_builds_total),
// a certificate change rebuilding only the contexts that use it, and the
// cache file keeping what is served: a listener whose new version was
// nacked is served from its previous version after a restart with the
// server down, and the server's version is refused again once it is back.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { exchange } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { freePort, freePorts, agentBinary } = require('./lib/agent');
const { uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');

let srv;
let conn;
let p;
let up;
let agent;
const ports = {}; // listener id -> port
const api = () => conn.api;

async function serverStart(port) {
  srv = await Server.start({ tls: true, extraArgs: ['--listen', `127.0.0.1:${port}`] });
  conn = await connect(srv.address, srv.connectOptions());
}

async function fingerprintOf(port) {
  const r = await exchange(port, {}, { send: 'fp\n' });
  assert.ok(r.ok, `handshake with 127.0.0.1:${port}: ${r.error}`);
  return r.info.fingerprint;
}

async function ctxMetrics() {
  const m = await agent.metrics();
  return { builds: m.get('tlsplane_ssl_ctx_builds_total'), live: m.get('tlsplane_ssl_ctxs') };
}

before(async () => {
  agentBinary();
  p = pki();
  up = await Upstream.start({ mode: 'echo' });
  await serverStart(await freePort());
  for (const [id, leaf] of [['shared', p.rsa], ['other', p.ecdsa]]) {
    await api().CertificateService.CreateCertificate({
      certificateId: id, certificate: { certificateChainPem: leaf.cert, privateKeyPem: leaf.key },
    });
    await api().TlsContextService.CreateTlsContext({ tlsContextId: id, tlsContext: { certificates: [`certificates/${id}`] } });
  }
  [ports.x, ports.y, ports.z] = await freePorts(3);
  for (const [id, ctx] of [['x', 'shared'], ['y', 'shared'], ['z', 'other']]) {
    await api().ListenerService.CreateListener({
      listenerId: id,
      listener: { address: `127.0.0.1:${ports[id]}`, defaultTlsContext: `tlsContexts/${ctx}`, upstream: up.address, agentSelector: { site: 'ctx' } },
    });
  }
  const tok = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'ctx-1', agentLabels: { site: 'ctx' } } });
  noteSecret(tok.secret);
  agent = await CpAgent.start(srv, { name: 'ctx-1', labels: { site: 'ctx' }, joinToken: tok.secret, wait: 'connected' });
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

test('two listeners on one context and one on another: 2 SSL_CTXs built, each served', async () => {
  for (const id of ['x', 'y', 'z']) await agent.waitForLog(new RegExp(`listener=listeners/${id} new: serving on`));
  assert.deepEqual(await ctxMetrics(), { builds: 2, live: 2 });
  assert.equal(await fingerprintOf(ports.x), p.rsa.fingerprint);
  assert.equal(await fingerprintOf(ports.y), p.rsa.fingerprint);
  assert.equal(await fingerprintOf(ports.z), p.ecdsa.fingerprint);
});

test('a certificate change rebuilds only the context that uses it: +1 build, not +2; the old SSL_CTX is freed', async () => {
  const before = await ctxMetrics();
  const from = agent.logText.length;
  const r = await api().CertificateService.UpdateCertificate({
    certificate: { name: 'certificates/shared', certificateChainPem: p.rsaRenewed.cert, privateKeyPem: p.rsaRenewed.key },
    updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
  });
  const text = await agent.waitApplied(Number(r.revision), { from });
  assert.match(text, /applied: 0 new, 2 changed, 1 kept/);
  await agent.waitForWorkers(Number(r.revision));
  const m = await waitFor('the old shared SSL_CTX freed', async () => {
    const c = await ctxMetrics();
    return c.live === 2 ? c : null;
  });
  assert.equal(m.builds, before.builds + 1, 'the context the change does not touch was rebuilt');
  assert.equal(await fingerprintOf(ports.x), p.rsaRenewed.fingerprint);
  assert.equal(await fingerprintOf(ports.y), p.rsaRenewed.fingerprint);
  assert.equal(await fingerprintOf(ports.z), p.ecdsa.fingerprint);
});

test('a nacked listener keeps its version in the cache file: served after a restart with the server down, refused again once it is back', async () => {
  // y moves to a port someone else holds: nack, y keeps its old address.
  const blocker = net.createServer();
  const [taken] = await freePorts(1);
  await new Promise((r) => blocker.listen(taken, '127.0.0.1', r));
  try {
    const from = agent.logText.length;
    const cur = await api().ListenerService.GetListener({ name: 'listeners/y' });
    const u = await api().ListenerService.UpdateListener({
      listener: { name: 'listeners/y', etag: cur.etag, address: `127.0.0.1:${taken}` },
      updateMask: { paths: ['address'] },
    });
    const text = await agent.waitApplied(Number(u.revision), { from });
    assert.match(text, new RegExp(`listener=listeners/y not applied: address: 127\\.0\\.0\\.1:${taken}: bind`));
    assert.equal(await fingerprintOf(ports.y), p.rsaRenewed.fingerprint, 'y lost its previous version');
    await waitFor('state.pb written after the nack', () => {
      const f = agent.file('state.pb');
      return fs.existsSync(f) && fs.statSync(f).mtimeMs >= Date.now() - 60000;
    });

    // The server goes away; the agent restarts from its cache.
    conn.close();
    conn = null;
    srv.stopRequested = true;
    srv.proc.kill('SIGKILL');
    await srv.exited;
    await agent.stopClean();
    await agent.restart();
    const boot = agent.logText.slice(agent.logStart);
    assert.match(boot, /cache \S+: revision \d+ applied: 3 new, 0 changed, 0 kept, 0 dropped, 0 not applied/);
    assert.equal(agent.port('y'), ports.y, 'the cache gave y its desired version, not the one it served');
    assert.equal(await fingerprintOf(ports.y), p.rsaRenewed.fingerprint);
    assert.deepEqual(await ctxMetrics(), { builds: 2, live: 2 }, 'one SSL_CTX per context from the cache too');

    // The server is back: y's new version is sent and refused again.
    const from2 = agent.logText.length;
    await srv._spawn(); // same data dir, same port
    conn = await connect(srv.address, srv.connectOptions());
    const again = await agent.waitForLog(/control plane: revision \d+ applied in part: .*; nack sent/, { from: from2, timeoutMs: 40000 });
    assert.match(again, new RegExp(`listener=listeners/y not applied: address: 127\\.0\\.0\\.1:${taken}: bind`));
    assert.equal(await fingerprintOf(ports.y), p.rsaRenewed.fingerprint);
  } finally {
    await new Promise((r) => blocker.close(r));
  }
});
