'use strict';
// What the server pushes, as a fleet sees it: a real tlsplane-server (TLS)
// and a real tlsplane-agent in control-plane mode.
//
// * A certificate whose sealed key is damaged in the database (the
//   server stopped, the row edited with the sqlite3 CLI, the server
//   started again) cannot be built: the agent keeps serving the listener
//   it had, the unrelated listener beside it moves on, GetRollout names the
//   agent, the listener and the reason, and the hub logs it once per
//   revision, not once per attempt. Uploading a new key repairs it.
// * An agent restarted from its cache reports what it holds and is sent
//   nothing it has (Agent.pushed counts what its stream carried); one
//   that was away while five revisions committed is sent only what
//   changed for it.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
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
const ports = {};
const certs = {}; // certificate id -> the pki leaf it serves now

const api = () => conn.api;

// The server killed, then started again on its data dir and port.
async function serverKill() {
  conn.close();
  conn = null;
  await srv.kill();
}

async function serverStart() {
  await srv._spawn();
  conn = await connect(srv.address, srv.connectOptions());
}

// The sqlite3 CLI on the server's database (the server stopped). A
// missing sqlite3 fails the test.
function sqlite(sql) {
  const r = spawnSync('sqlite3', [path.join(srv.dataDir, 'tlsplane.db'), sql], { encoding: 'utf8' });
  assert.ifError(r.error);
  assert.equal(r.status, 0, `sqlite3: ${r.stderr}`);
  return r.stdout.trim();
}

async function fingerprintOn(port) {
  const r = await exchange(port, {}, { send: 'fp\n' });
  assert.ok(r.ok, `handshake with 127.0.0.1:${port}: ${r.error}`);
  return r.info.fingerprint;
}

async function site(id, port) {
  const leaf = p.leaf(id, { cn: `${id}.example.com`, sans: [`DNS:${id}.example.com`] });
  certs[id] = leaf;
  await api().CertificateService.CreateCertificate({ certificateId: id, certificate: { certificateChainPem: leaf.cert, privateKeyPem: leaf.key } });
  await api().TlsContextService.CreateTlsContext({ tlsContextId: id, tlsContext: { certificates: [`certificates/${id}`] } });
  await api().ListenerService.CreateListener({
    listenerId: id,
    listener: { address: `127.0.0.1:${port}`, defaultTlsContext: `tlsContexts/${id}`, upstream: up.address, agentSelector: { site: 'f' } },
  });
}

async function rotate(id) {
  const leaf = p.leaf(`${id}-${uid('r')}`, { cn: `${id}.example.com`, sans: [`DNS:${id}.example.com`] });
  const r = await api().CertificateService.UpdateCertificate({
    certificate: { name: `certificates/${id}`, certificateChainPem: leaf.cert, privateKeyPem: leaf.key },
    updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
  });
  certs[id] = leaf;
  return Number(r.revision);
}

const getAgent = () => api().AgentService.GetAgent({ name: 'agents/fleet-a' });

before(async () => {
  agentBinary();
  p = pki();
  up = await Upstream.start({ mode: 'echo' });
  srv = await Server.start({ tls: true, extraArgs: ['--listen', `127.0.0.1:${await freePort()}`] });
  conn = await connect(srv.address, srv.connectOptions());
  [ports.web, ports.api] = await freePorts(2);
  await site('web', ports.web);
  await site('api', ports.api);
  const t = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'fleet-a', agentLabels: { site: 'f' } } });
  noteSecret(t.secret);
  agent = await CpAgent.start(srv, { name: 'fleet-a', labels: { site: 'f' }, joinToken: t.secret, wait: 'connected' });
  for (const id of ['web', 'api'])
    await waitFor(`listeners/${id} served`, async () => (await fingerprintOn(ports[id]).catch(() => null)) === certs[id].fingerprint);
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

test('an agent restarted from its cache is sent none of what it holds; one away for five revisions gets only what changed', async () => {
  const applied = Number((await waitFor('GetAgent: applied', async () => {
    const a = await getAgent();
    return a.connected && Number(a.appliedRevision) > 0 ? a : null;
  })).appliedRevision);
  assert.equal((await getAgent()).protocol, 4, 'the agent speaks protocol 4');

  // Restarted with nothing changed: one message, no resource, no listener.
  const from = agent.logText.length;
  agent.kill();
  await agent.exited;
  await agent.restart();
  await agent.waitForLog(/control plane \S+: connected as agents\/fleet-a/, { from, what: 'reconnected' });
  const back = await waitFor('GetAgent: reconnected and acked', async () => {
    const a = await getAgent();
    return a.connected && a.pushed && Number(a.pushed.messages) >= 1 && Number(a.appliedRevision) >= applied ? a : null;
  });
  assert.equal(Number(back.pushed.messages), 1);
  assert.equal(Number(back.pushed.resources), 0, 'it holds every resource already');
  assert.equal(Number(back.pushed.listeners), 0);

  // Away for five revisions, one of which rotates listeners/web's
  // certificate: it is sent that certificate and its context, and the one
  // listener that uses them.
  agent.kill();
  await agent.exited;
  let last = await rotate('web');
  for (let i = 0; i < 4; i++) {
    const r = await api().TrustBundleService.CreateTrustBundle({ trustBundleId: uid('tb'), trustBundle: { caPem: p.ca.cert } });
    last = Number(r.revision);
  }
  const from2 = agent.logText.length;
  await agent.restart();
  await agent.waitForLog(/control plane \S+: connected as agents\/fleet-a/, { from: from2, what: 'reconnected' });
  const caught = await waitFor('GetAgent: caught up', async () => {
    const a = await getAgent();
    return a.connected && Number(a.appliedRevision) >= last ? a : null;
  });
  assert.equal(Number(caught.pushed.resources), 2, 'the new certificate and its context');
  assert.equal(Number(caught.pushed.listeners), 1, 'listeners/web only');
  assert.equal(Number(caught.pushed.removedResources), 2, 'the old certificate and context');
  assert.equal(await fingerprintOn(ports.web), certs.web.fingerprint);
  assert.equal(await fingerprintOn(ports.api), certs.api.fingerprint);
});

test('a damaged secret: the agent keeps serving, the rollout names the failure, the log says it once per revision; a new key repairs it', async () => {
  const servedWeb = await fingerprintOn(ports.web);
  await serverKill();
  // The server down, its file edited: the last byte of the sealed key of
  // certificates/web (its authentication tag) changes, so it no longer
  // unseals.
  const where = "kind = 'Certificate' AND name = 'certificates/web'";
  const before = sqlite(`SELECT hex(secret) FROM resources WHERE ${where}`);
  assert.match(before, /^([0-9A-F]{2})+$/, 'certificates/web has a sealed key');
  const last = (parseInt(before.slice(-2), 16) ^ 0x01).toString(16).padStart(2, '0').toUpperCase();
  const after = before.slice(0, -2) + last;
  sqlite(`UPDATE resources SET secret = X'${after}' WHERE ${where}`);
  assert.equal(sqlite(`SELECT hex(secret) FROM resources WHERE ${where}`), after);
  const from = agent.logText.length;
  await serverStart();
  const logFrom = srv.logText.length;
  await agent.waitForLog(/control plane \S+: connected as agents\/fleet-a/, { from, timeoutMs: 60000, what: 'reconnected' });

  const rev = Number((await api().AgentService.GetRollout({})).revision);
  const rollout = await waitFor('GetRollout: the agent failed, server side', async () => {
    const r = await api().AgentService.GetRollout({ revision: String(rev) });
    return r.agentsFailed.includes('agents/fleet-a') ? r : null;
  });
  const f = rollout.failures.find((x) => x.agent === 'agents/fleet-a' && x.listener === 'listeners/web');
  assert.ok(f, `failures: ${JSON.stringify(rollout.failures)}`);
  assert.equal(f.serverSide, true);
  assert.match(f.reason, /tlsContexts\/web/);
  assert.ok(!rollout.failures.some((x) => x.listener === 'listeners/api'), 'the unrelated listener builds');
  // The agent serves what it served.
  assert.equal(await fingerprintOn(ports.web), servedWeb);
  assert.equal(await fingerprintOn(ports.api), certs.api.fingerprint);

  // An unrelated change moves listeners/api on, and listeners/web stays.
  const moved = await rotate('api');
  await waitFor('listeners/api rotated', async () => (await fingerprintOn(ports.api)) === certs.api.fingerprint);
  await waitFor('GetRollout at the new revision: failed again', async () => {
    const r = await api().AgentService.GetRollout({ revision: String(moved) });
    return r.agentsFailed.includes('agents/fleet-a') ? r : null;
  });
  assert.equal(await fingerprintOn(ports.web), servedWeb);
  // One line per revision (and cause): two revisions, two lines, however
  // many times the build was retried meanwhile.
  const lines = srv.logText.slice(logFrom).split('\n').filter((l) => /listeners\/web cannot be built/.test(l));
  assert.ok(lines.length >= 1 && lines.length <= 2, `log lines:\n${lines.join('\n')}`);

  // A new key repairs it: served, and the rollout is clean.
  const fixed = await rotate('web');
  await waitFor('listeners/web serves the new certificate', async () => (await fingerprintOn(ports.web)) === certs.web.fingerprint);
  const clean = await waitFor('GetRollout: applied', async () => {
    const r = await api().AgentService.GetRollout({ revision: String(fixed) });
    return r.agentsApplied === 1 ? r : null;
  });
  assert.deepEqual(clean.failures, []);
});
