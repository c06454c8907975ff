'use strict';
// tlsplane-agent in control-plane mode against the real tlsplane-server
// over TLS: agents enrolled with one-time join tokens, snapshots pushed
// live, a certificate rotated under continuous handshakes, ack / nack per
// listener, the server killed and restarted, an agent started while the
// server is down, a listener removed with a connection open, an agent
// deleted or its certificate revoked, a used join token, renewal.
//
// Two agents run on one host, so each gets its own listener (a listener's
// address is fixed; agent selectors site=a / site=b), both on one TLS
// context whose certificate is rotated.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { exchange, openTls, echoOn, fingerprint } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { freePort, freePorts, agentBinary } = require('./lib/agent');
const { status, expectGrpcError, uid, makeCsr } = require('./lib/util');
const { waitFor } = require('./lib/wait');

let srv;
let conn;
let p;
let up;
const agents = {}; // name -> CpAgent
const ports = {}; // listener id -> port
let webCert; // the pki leaf certificates/web serves now

const api = () => conn.api;

async function serverStart() {
  srv = await Server.start({ tls: true, extraArgs: ['--listen', `127.0.0.1:${srv ? srv.port : await freePort()}`] });
  conn = await connect(srv.address, srv.connectOptions());
}

// Same data dir, same port.
async function serverRestart() {
  if (conn) conn.close();
  conn = null;
  await srv._spawn();
  conn = await connect(srv.address, srv.connectOptions());
}

async function serverKill() {
  if (conn) conn.close();
  conn = null;
  srv.stopRequested = true;
  srv.proc.kill('SIGKILL');
  await srv.exited;
}

// A join token for agentId; its record's labels (what it receives) are
// agentLabels. The agents' --label flags claim the same.
async function joinToken(agentId, agentLabels = {}) {
  const r = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId, agentLabels } });
  noteSecret(r.secret);
  return r.secret;
}

async function rotateWeb(name, leaf) {
  webCert = leaf || p.leaf(name, { cn: 'www.example.com', sans: ['DNS:www.example.com'] });
  const r = await api().CertificateService.UpdateCertificate({
    certificate: { name: 'certificates/web', certificateChainPem: webCert.cert, privateKeyPem: webCert.key },
    updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
  });
  return Number(r.revision);
}

async function servedFingerprint(port) {
  const r = await exchange(port, {}, { send: 'fp\n' });
  assert.ok(r.ok, `handshake with 127.0.0.1:${port}: ${r.error}`);
  return r.info.fingerprint;
}

async function listenerFor(id, site, port, extra = {}) {
  return api().ListenerService.CreateListener({
    listenerId: id,
    listener: { address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/web', upstream: up.address, agentSelector: { site }, ...extra },
  });
}

before(async () => {
  agentBinary(); // fails the file at once, naming what is missing
  p = pki();
  up = await Upstream.start({ mode: 'echo' });
  await serverStart();
  webCert = p.ecdsa;
  await api().CertificateService.CreateCertificate({
    certificateId: 'web', certificate: { certificateChainPem: webCert.cert, privateKeyPem: webCert.key },
  });
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'web', tlsContext: { certificates: ['certificates/web'] } });
  [ports['web-a'], ports['web-b']] = await freePorts(2);
  await listenerFor('web-a', 'a', ports['web-a']);
  await listenerFor('web-b', 'b', ports['web-b']);
});

after(async () => {
  for (const a of Object.values(agents)) if (a.running) await a.stopClean();
  if (conn) conn.close();
  if (srv && srv.running) await srv.stopClean();
  if (up) await up.close();
});

afterEach((t) => {
  for (const a of Object.values(agents)) a.assertAlive(`during "${t.name}"`);
});

test('two agents enroll with join tokens, and serve what the server pushes', async () => {
  agents.a = await CpAgent.start(srv, { name: 'live-a', labels: { site: 'a' }, joinToken: await joinToken('live-a', { site: 'a' }), wait: 'connected' });
  agents.b = await CpAgent.start(srv, { name: 'live-b', labels: { site: 'b' }, joinToken: await joinToken('live-b', { site: 'b' }), wait: 'connected' });
  for (const [site, a] of [['a', agents.a], ['b', agents.b]]) {
    await a.waitForLog(new RegExp(`listener=listeners/web-${site} new: serving on 127\\.0\\.0\\.1:${ports[`web-${site}`]} `));
    assert.match(a.logText, /control plane: enrolled as agents\/live-/);
    // The cache dir: the key private, the served state (it holds keys) too.
    // It is written right after the ack.
    await waitFor('state.pb written', () => fs.existsSync(a.file('state.pb')));
    const mode = (f) => fs.statSync(a.file(f)).mode & 0o777;
    assert.equal(mode('agent-key.pem'), 0o600);
    assert.equal(mode('state.pb'), 0o600);
    assert.equal(mode('.'), 0o700);
    assert.equal(fs.readFileSync(a.file('ca.pem'), 'utf8'), srv.ca.toString());
    assert.match(new (require('node:crypto').X509Certificate)(fs.readFileSync(a.file('agent.pem'))).subject, new RegExp(`CN=agent:live-${site}`));
    assert.equal(await servedFingerprint(ports[`web-${site}`]), webCert.fingerprint);
    // The agent serves only its own listener (selector site=...).
    assert.deepEqual(Object.keys(a.ports), [`listeners/web-${site}`]);
  }
  // Every connected agent serves the current revision's configuration...
  const cur = Number((await api().AgentService.GetRollout({})).revision);
  await waitFor('GetRollout: both applied', async () => (await api().AgentService.GetRollout({ revision: String(cur) })).agentsApplied === 2);
  // ...and GetAgent shows the revision each one acked last.
  for (const [name, a] of [['live-a', agents.a], ['live-b', agents.b]]) {
    const acked = a.appliedRevisions().pop();
    const g = await waitFor(`GetAgent ${name} current`, async () => {
      const x = await api().AgentService.GetAgent({ name: `agents/${name}` });
      return x.connected && Number(x.appliedRevision) === acked && x.listeners.length === 1 ? x : null;
    });
    assert.match(g.version, /^tlsplane-agent\/\d+\.\d+\.\d+$/);
    assert.equal(g.lastNack, '');
    assert.deepEqual(g.labels, { site: name.slice(-1) }, 'from its join token');
    assert.deepEqual(g.claimedLabels, { site: name.slice(-1) }, 'its --label flags');
    assert.equal(g.labelsMismatch, false);
    assert.equal(g.listeners[0].listener, `listeners/web-${name.slice(-1)}`);
    assert.equal(Number(g.listeners[0].appliedRevision), acked);
  }
  const m = await agents.a.metrics();
  assert.equal(m.get('tlsplane_control_plane_connected'), 1);
  assert.ok(m.get('tlsplane_agent_certificate_expiry_seconds') > Date.now() / 1000 + 29 * 86400);
});

test('an agent claiming labels it was not given (--label site=a) serves nothing of site=a; UpdateAgent gives it labels, live', async () => {
  const [port] = await freePorts(1);
  await listenerFor('web-p', 'p', port);
  // Enrolled with no labels; its --label claims site=a (listeners/web-a).
  const pa = await CpAgent.start(srv, { name: 'live-p', labels: { site: 'a' }, joinToken: await joinToken('live-p'), wait: 'connected' });
  try {
    assert.match(pa.logText, /control plane: revision \d+ applied: 0 new/);
    assert.deepEqual(Object.keys(pa.ports), [], 'it serves nothing of site=a');
    const g = await api().AgentService.GetAgent({ name: 'agents/live-p' });
    assert.deepEqual([g.labels, g.claimedLabels, g.labelsMismatch], [{}, { site: 'a' }, true]);
    const from = pa.logText.length;
    const u = await api().AgentService.UpdateAgent({
      agent: { name: g.name, etag: g.etag, labels: { site: 'p' } }, updateMask: { paths: ['labels'] },
    });
    await pa.waitApplied(Number(u.revision), { from });
    await pa.waitForLog(/listener=listeners\/web-p new: serving on/, { from });
    assert.deepEqual(Object.keys(pa.ports), ['listeners/web-p']);
    assert.equal(await servedFingerprint(port), webCert.fingerprint);
  } finally {
    await pa.stopClean();
  }
  await api().ListenerService.DeleteListener({ name: 'listeners/web-p' });
});

test('a certificate rotated through the API: both agents serve it at once, and no handshake fails', async () => {
  const old = webCert.fingerprint;
  let running = true;
  // Per agent: every handshake with the certificate it got, when it
  // started and when it completed.
  const results = { a: { ok: 0, failed: [], done: [] }, b: { ok: 0, failed: [], done: [] } };
  // Two client loops per agent, each doing full handshakes back to back.
  const loop = async (site) => {
    const res = results[site];
    while (running) {
      const start = Date.now();
      const r = await exchange(ports[`web-${site}`], {}, { send: 'x\n' });
      if (r.ok) {
        res.ok++;
        res.done.push({ fp: r.info.fingerprint, start, end: Date.now() });
      } else {
        res.failed.push(`${r.phase}: ${r.error}`);
      }
    }
  };
  const firstNew = (res) => res.done.filter((x) => x.fp === webCert.fingerprint).reduce((m, x) => Math.min(m, x.end), Infinity);
  const loops = [loop('a'), loop('a'), loop('b'), loop('b')];
  const leaf = p.leaf('rotated-1', { cn: 'www.example.com', sans: ['DNS:www.example.com'] });
  // Handshakes with the old certificate first, on both agents.
  await waitFor('handshakes with the old certificate on both agents', () =>
    ['a', 'b'].every((s) => results[s].ok >= 10 || results[s].failed.length));
  const committed = Date.now();
  const rev = await rotateWeb('rotated-1', leaf);
  await Promise.all([agents.a.waitApplied(rev), agents.b.waitApplied(rev)]);
  const applied = Date.now();
  await waitFor('the new certificate served by both', () =>
    ['a', 'b'].every((s) => firstNew(results[s]) < Infinity), { timeoutMs: 5000 });
  // And more handshakes after it, so that a flip back would be seen.
  const okAtNew = { a: results.a.ok, b: results.b.ok };
  await waitFor('handshakes with the new certificate on both agents', () =>
    ['a', 'b'].every((s) => results[s].ok >= okAtNew[s] + 10 || results[s].failed.length));
  running = false;
  await Promise.all(loops);
  for (const site of ['a', 'b']) {
    const res = results[site];
    assert.deepEqual(res.failed, [], `agent ${site}: failed handshakes`);
    assert.ok(res.ok > 20, `agent ${site}: only ${res.ok} handshakes`);
    // The old certificate, then the new one, never back: a connection
    // accepted before the swap keeps the old one (invariant 3) and may
    // finish after one that got the new, but no handshake that began
    // once the new certificate had been served gets the old one.
    const switched = firstNew(res);
    assert.deepEqual([...new Set(res.done.map((x) => x.fp))], [old, webCert.fingerprint], `agent ${site}: the old certificate, then the new one`);
    assert.ok(res.done.some((x) => x.fp === old && x.end < switched), `agent ${site}: the old certificate was not served before the new one`);
    const back = res.done.filter((x) => x.start > switched && x.fp !== webCert.fingerprint);
    assert.deepEqual(back, [], `agent ${site}: the old certificate again after the new one was served`);
    const servedAfter = switched - committed;
    assert.ok(servedAfter < 5000, `agent ${site}: new certificate served ${servedAfter} ms after the commit`);
    console.log(`agent ${site}: ${res.ok} handshakes, new certificate seen ${servedAfter} ms after the commit`);
  }
  console.log(`rotation: both agents acked ${applied - committed} ms after the commit; handshakes a=${results.a.ok} b=${results.b.ok}, 0 failed`);
  const rollout = await api().AgentService.GetRollout({ revision: String(rev) });
  assert.equal(rollout.agentsApplied, 2);
});

test('a listener that cannot be bound: a nack naming it, the agent keeps the rest moving', async () => {
  const blocker = net.createServer();
  await new Promise((r) => blocker.listen(0, '127.0.0.1', r));
  const taken = blocker.address().port;
  try {
    const from = agents.a.logText.length;
    const created = await listenerFor('taken', 'a', taken);
    const rev1 = Number(created.revision);
    await agents.a.waitApplied(rev1, { from });
    // The nack comes with the ack, the per-listener status with the stats
    // sent right after it.
    const g = await waitFor('GetAgent live-a lastNack', async () => {
      const x = await api().AgentService.GetAgent({ name: 'agents/live-a' });
      return x.lastNack && x.listeners.some((l) => l.listener === 'listeners/taken') ? x : null;
    });
    assert.match(g.lastNack, new RegExp(`^listeners/taken: .*127\\.0\\.0\\.1:${taken}.*`));
    assert.doesNotMatch(g.lastNack, /web-a/);
    const st = Object.fromEntries(g.listeners.map((l) => [l.listener, l]));
    assert.match(st['listeners/taken'].lastNack, /address/);
    assert.equal(Number(st['listeners/web-a'].appliedRevision), rev1);
    const rollout = await api().AgentService.GetRollout({ revision: String(rev1) });
    assert.deepEqual(rollout.agentsFailed, ['agents/live-a']);
    // Another change in the same snapshot as the failing listener: applied.
    const from2 = agents.a.logText.length;
    const upd = await api().ListenerService.UpdateListener({
      listener: { name: 'listeners/web-a', handshakeTimeout: { seconds: '30', nanos: 0 } },
      updateMask: { paths: ['handshake_timeout'] },
    });
    const text = await agents.a.waitApplied(Number(upd.revision), { from: from2 });
    assert.match(text, /listener=listeners\/web-a changed: serving on/);
    assert.match(text, /listener=listeners\/taken not applied: /);
    assert.match(text, /revision \d+ applied in part: 0 new, 1 changed, 0 kept, 0 dropped, 1 not applied \(\d+\.\d ms\); nack sent/);
    assert.equal(await servedFingerprint(ports['web-a']), webCert.fingerprint);
  } finally {
    await new Promise((r) => blocker.close(r));
  }
  const del = await api().ListenerService.DeleteListener({ name: 'listeners/taken' });
  void del;
  await waitFor('the nack cleared', async () => (await api().AgentService.GetAgent({ name: 'agents/live-a' })).lastNack === '');
});

test('a listener removed with a long-lived connection open: it finishes, new ones are refused', async () => {
  const [port] = await freePorts(1);
  const from = agents.a.logText.length;
  const l = await listenerFor('drain', 'a', port);
  await agents.a.waitApplied(Number(l.revision), { from });
  const { sock } = await openTls(port);
  assert.equal(await echoOn(sock, 'before\n'), 'before\n');
  const from2 = agents.a.logText.length;
  const gone = await api().ListenerService.GetListener({ name: 'listeners/drain' });
  await api().ListenerService.DeleteListener({ name: 'listeners/drain', etag: gone.etag });
  const text = await agents.a.waitForLog(/listener=listeners\/drain dropped: no longer accepting; 1 connections drain/, { from: from2 });
  assert.match(text, /dropped/);
  // The worker closes its listening socket on its own loop, just after
  // the log line: until then a connection may still be accepted.
  const connectOnce = () => new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1');
    c.on('connect', () => {
      c.destroy();
      resolve('connected');
    });
    c.on('error', (e) => resolve(e.code));
  });
  // One that reached the kernel's backlog as the socket closed is reset,
  // not refused: that, too, is the close still under way.
  const refused = await waitFor('new connections refused', async () => {
    const r = await connectOnce();
    return r === 'connected' || r === 'ECONNRESET' ? null : r;
  }, { timeoutMs: 10000 });
  assert.equal(refused, 'ECONNREFUSED', 'new connections are refused');
  assert.equal(await echoOn(sock, 'after\n'), 'after\n', 'the open connection still works');
  sock.end();
});

test('kill -9 of the server: agents keep serving; restarted, they reconnect and catch up', async () => {
  const froms = { a: agents.a.logText.length, b: agents.b.logText.length };
  await serverKill();
  for (const a of [agents.a, agents.b]) await a.waitForLog(/control plane \S+: UNAVAILABLE: .*retrying in/, { from: froms[a.name.slice(-1)] });
  // Serving goes on without the control plane, across the agents' next
  // attempts to reach it.
  const retries = (a) => (a.logText.slice(froms[a.name.slice(-1)]).match(/control plane \S+: UNAVAILABLE: .*retrying in/g) || []).length;
  let checks = 0;
  await waitFor('two failed reconnection attempts by each agent, serving all along', async () => {
    assert.equal(await servedFingerprint(ports['web-a']), webCert.fingerprint);
    assert.equal(await servedFingerprint(ports['web-b']), webCert.fingerprint);
    checks++;
    return checks >= 5 && retries(agents.a) >= 2 && retries(agents.b) >= 2;
  }, { timeoutMs: 30000 });
  assert.equal((await agents.a.metrics()).get('tlsplane_control_plane_connected'), 0);
  await serverRestart();
  // A change right away: the agents catch up whether they reconnect before
  // or after it.
  const rev = await rotateWeb('rotated-2');
  await Promise.all([agents.a.waitApplied(rev, { from: froms.a, timeoutMs: 40000 }), agents.b.waitApplied(rev, { from: froms.b, timeoutMs: 40000 })]);
  for (const name of ['live-a', 'live-b']) {
    await waitFor(`GetAgent ${name}: connected, applied revision ${rev}`, async () => {
      const g = await api().AgentService.GetAgent({ name: `agents/${name}` });
      return g.connected && Number(g.appliedRevision) === rev;
    });
  }
  assert.equal(await servedFingerprint(ports['web-a']), webCert.fingerprint);
  assert.equal(await servedFingerprint(ports['web-b']), webCert.fingerprint);
  assert.equal((await agents.a.metrics()).get('tlsplane_control_plane_connected'), 1);
});

test('an agent started while the server is down serves its cached snapshot, then catches up', async () => {
  await agents.b.stopClean();
  await serverKill();
  const served = webCert.fingerprint;
  await agents.b.restart(); // no join token: the certificate in its cache dir
  const text = agents.b.logText.slice(agents.b.logStart);
  assert.match(text, /cache \S+: revision \d+ applied: 1 new/);
  assert.equal(agents.b.port('web-b'), ports['web-b']);
  assert.equal(await servedFingerprint(ports['web-b']), served);
  await agents.b.waitForLog(/control plane \S+: UNAVAILABLE/, { from: agents.b.logStart });
  const from = agents.b.logText.length;
  await serverRestart();
  await agents.b.waitForLog(/control plane \S+: connected as agents\/live-b/, { from, timeoutMs: 40000 });
  const cur = Number((await api().AgentService.GetRollout({})).revision);
  await waitFor('GetAgent live-b current', async () => {
    const g = await api().AgentService.GetAgent({ name: 'agents/live-b' });
    return g.connected && Number(g.appliedRevision) === cur;
  });
  // Nothing changed for it: the snapshot from the server kept everything.
  assert.match(agents.b.logText.slice(from), /control plane: revision \d+ applied: 0 new, 0 changed, 1 kept/);
});

test('enrollment: a used join token is refused; the agent runs and says a new one is needed', async () => {
  const token = await joinToken('live-c', { site: 'c' });
  const { csr } = makeCsr();
  // Someone else uses it first.
  const other = await connect(srv.address, { tls: { ca: srv.ca }, token });
  await other.api.AgentService.EnrollAgent({ agentId: 'live-c', csrPem: csr });
  other.close();
  agents.c = await CpAgent.start(srv, { name: 'live-c', labels: { site: 'c' }, joinToken: token });
  await agents.c.waitForLog(/enrollment refused \(UNAUTHENTICATED\): .*a new join token is needed/);
  assert.ok(!fs.existsSync(agents.c.file('agent.pem')), 'no certificate stored');
  assert.ok(!fs.existsSync(agents.c.file('agent-key.pem')));
  assert.ok(agents.c.running);
  await agents.c.stopClean();
  delete agents.c;
  // Without a join token and without an enrolled certificate it cannot start.
  const err = await CpAgent.start(srv, { name: 'live-d' }).then(() => null, (e) => e);
  assert.match(String(err && err.message), /exited \(code 1/);
  assert.match(String(err && err.message), /holds no agent certificate: enroll with --join-token/);
});

test('renewal: a new key and certificate, stored atomically, and the agent reconnects with them', async () => {
  agents.r = await CpAgent.start(srv, {
    name: 'live-r', labels: { site: 'r' }, joinToken: await joinToken('live-r', { site: 'r' }), env: { TLSPLANE_RENEW_NOW: '1' },
  });
  // The renewal date (made "now") cuts the stream, the renewal follows.
  await agents.r.waitForLog(/control plane: the agent certificate is due for renewal: reconnecting with a new one/);
  await agents.r.waitForLog(/control plane: certificate renewed as agents\/live-r/);
  await waitFor('two connections', () => agents.r.connectedSerials().length >= 2);
  const [first, second] = agents.r.connectedSerials();
  assert.notEqual(first, second, 'reconnected with the new certificate');
  const x = new (require('node:crypto').X509Certificate)(fs.readFileSync(agents.r.file('agent.pem')));
  assert.equal(x.serialNumber.replace(/^0+/, ''), second.replace(/^0+/, ''));
  assert.equal(fs.statSync(agents.r.file('agent-key.pem')).mode & 0o777, 0o600);
  const key = require('node:crypto').createPrivateKey(fs.readFileSync(agents.r.file('agent-key.pem')));
  assert.ok(x.checkPrivateKey(key), 'the key on disk matches the certificate on disk');
  assert.ok(!fs.existsSync(agents.r.file('agent.pem.new')) && !fs.existsSync(agents.r.file('agent-key.pem.new')));
  const certs = (await api().ClientCertificateService.ListClientCertificates({ labelSelector: 'agent=live-r' })).clientCertificates;
  assert.equal(certs.length, 2, 'enrolled, then renewed');
  assert.ok(certs.every((c) => !c.revoked), 'the old certificate stays valid until it expires');
  // A restart uses the renewed certificate.
  await agents.r.restart({ wait: 'connected' });
  const serials = agents.r.connectedSerials();
  assert.equal(serials[serials.length - 1], second);
  await agents.r.stopClean();
  delete agents.r;
});

test('an agent certificate given as files (--cert/--key)', async () => {
  const { key, csr } = makeCsr();
  noteSecret(key.split('\n')[1]);
  const res = await api().AgentService.EnrollAgent({ agentId: 'live-f', csrPem: csr });
  const a = await CpAgent.start(srv, { name: 'live-f', labels: { site: 'f' }, cert: res.certificatePem, key, wait: 'connected' });
  assert.ok(!fs.existsSync(a.file('agent.pem')), 'given files are not copied');
  const g = await api().AgentService.GetAgent({ name: 'agents/live-f' });
  assert.ok(g.connected);
  // Enrolled by the admin without labels: its --label is a claim, shown
  // and reported, not followed.
  assert.deepEqual(g.labels, {});
  assert.deepEqual(g.claimedLabels, { site: 'f' });
  assert.equal(g.labelsMismatch, true);
  await a.stopClean();
  // A certificate for another agent id: the server refuses the stream.
  const b = await CpAgent.start(srv, { name: 'live-g', cert: res.certificatePem, key });
  await b.waitForLog(/PERMISSION_DENIED: hello\.name: "live-g" is not this agent/);
  await b.stopClean();
});

test('an agent certificate given as files is renewed like an enrolled one: the new pair in the cache dir, the files left as they are', async () => {
  const { key, csr } = makeCsr();
  noteSecret(key.split('\n')[1]);
  const res = await api().AgentService.EnrollAgent({ agentId: 'live-fr', csrPem: csr });
  const a = await CpAgent.start(srv, { name: 'live-fr', cert: res.certificatePem, key, env: { TLSPLANE_RENEW_NOW: '1' } });
  agents.fr = a;
  await a.waitForLog(/control plane: the agent certificate is due for renewal: reconnecting with a new one/);
  await a.waitForLog(/control plane: certificate renewed as agents\/live-fr/);
  await waitFor('two connections', () => a.connectedSerials().length >= 2);
  const [first, second] = a.connectedSerials();
  const given = new (require('node:crypto').X509Certificate)(res.certificatePem);
  assert.equal(first.replace(/^0+/, ''), given.serialNumber.replace(/^0+/, ''), 'first connected with the given files');
  assert.notEqual(first, second, 'reconnected with the renewed certificate');
  assert.equal(fs.readFileSync(a.certFile, 'utf8'), res.certificatePem, '--cert is not written');
  assert.equal(fs.readFileSync(a.keyFile, 'utf8'), key, '--key is not written');
  const renewed = new (require('node:crypto').X509Certificate)(fs.readFileSync(a.file('agent.pem')));
  assert.equal(renewed.serialNumber.replace(/^0+/, ''), second.replace(/^0+/, ''));
  assert.ok(renewed.checkPrivateKey(require('node:crypto').createPrivateKey(fs.readFileSync(a.file('agent-key.pem')))));
  assert.equal(fs.statSync(a.file('agent-key.pem')).mode & 0o777, 0o600);
  const certs = (await api().ClientCertificateService.ListClientCertificates({ labelSelector: 'agent=live-fr' })).clientCertificates;
  assert.equal(certs.length, 2, 'enrolled by the admin, then renewed by the agent');
  // A restart with the same --cert/--key uses the newer, renewed pair.
  a.env.TLSPLANE_RENEW_NOW = '0';
  await a.restart({ wait: 'connected' });
  const serials = a.connectedSerials();
  assert.equal(serials[serials.length - 1], second);
  await a.stopClean();
  delete agents.fr;
});

test('a control plane set up again: the certificate of the old CA is not used, the agent enrolls anew', async () => {
  const x = await CpAgent.start(srv, { name: 'live-x', labels: { site: 'x' }, joinToken: await joinToken('live-x', { site: 'x' }), wait: 'connected' });
  await x.stopClean();
  // A new server: a new data dir, a new CA.
  const other = await Server.start({ tls: true });
  try {
    const oc = await connect(other.address, other.connectOptions());
    const t = await oc.api.TokenService.CreateToken({ tokenId: 'join-x2', token: { role: 'JOIN', agentId: 'live-x', agentLabels: { site: 'x' } } });
    noteSecret(t.secret);
    const again = await CpAgent.start(other, { name: 'live-x', labels: { site: 'x' }, cacheDir: x.cacheDir, joinToken: t.secret, wait: 'connected' });
    assert.match(again.logText, /the certificate was not issued by the CA of --ca .*: not used/);
    assert.match(again.logText, /control plane: enrolled as agents\/live-x/);
    assert.ok((await oc.api.AgentService.GetAgent({ name: 'agents/live-x' })).connected);
    await again.stopClean();
    oc.close();
  } finally {
    await other.stopClean();
  }
});

test('deleting an agent cuts its stream; it gets no more snapshots but keeps serving', async () => {
  const from = agents.b.logText.length;
  await api().AgentService.DeleteAgent({ name: 'agents/live-b' });
  await agents.b.waitForLog(/PERMISSION_DENIED: the agent was deleted/, { from });
  await agents.b.waitForLog(/UNAUTHENTICATED: .*revoked.*a new join token is needed/, { from, timeoutMs: 40000 });
  const servedBefore = webCert.fingerprint;
  const fromA = agents.a.logText.length;
  const fromB = agents.b.logText.length;
  const rev = await rotateWeb('rotated-3');
  await agents.a.waitApplied(rev, { from: fromA });
  assert.equal(await servedFingerprint(ports['web-a']), webCert.fingerprint);
  // live-b asks the control plane again after the change, and is refused.
  await agents.b.waitForLog(/UNAUTHENTICATED: .*revoked.*a new join token is needed/, { from: fromB, timeoutMs: 40000 });
  assert.deepEqual(agents.b.appliedRevisions(from).filter((r) => r >= rev), [], 'live-b got no snapshot after its deletion');
  assert.equal(await servedFingerprint(ports['web-b']), servedBefore, 'live-b still serves what it had');
  await expectGrpcError(api().AgentService.GetAgent({ name: 'agents/live-b' }), status.NOT_FOUND);
});

test('revoking an agent certificate cuts the stream at once', async () => {
  const from = agents.a.logText.length;
  const certs = (await api().ClientCertificateService.ListClientCertificates({ labelSelector: 'agent=live-a' })).clientCertificates;
  assert.equal(certs.length, 1);
  await api().ClientCertificateService.RevokeClientCertificate({ name: certs[0].name, etag: certs[0].etag });
  await agents.a.waitForLog(/control plane \S+: PERMISSION_DENIED: /, { from });
  await agents.a.waitForLog(/UNAUTHENTICATED: client certificate: .* is revoked/, { from, timeoutMs: 40000 });
  assert.equal(await servedFingerprint(ports['web-a']), webCert.fingerprint, 'still serving');
});

test('usage: the control-plane flags and their variables', async () => {
  const { spawnSync } = require('node:child_process');
  const bin = require('./lib/agent').agentBinary();
  const run = (args, env = {}) => {
    const e = { ...process.env, ...env };
    delete e.TLSPLANE_SERVER;
    return spawnSync(bin, args, { env: { ...e, ...env }, encoding: 'utf8' });
  };
  const help = run(['--help']);
  assert.equal(help.status, 0);
  for (const v of ['TLSPLANE_SERVER', 'TLSPLANE_CA', 'TLSPLANE_JOIN_TOKEN', 'TLSPLANE_CERT', 'TLSPLANE_KEY', 'TLSPLANE_NAME', 'TLSPLANE_LABELS', 'TLSPLANE_CACHE_DIR']) {
    assert.ok(help.stdout.includes(v), `--help names ${v}`);
  }
  const base = ['--server', '127.0.0.1:1', '--ca', '/nonexistent', '--cache-dir', '/tmp/x'];
  assert.match(run(base).stderr, /--name \(or TLSPLANE_NAME\) is required/);
  assert.equal(run(base).status, 2);
  assert.match(run([...base, '--name', 'Bad_Name']).stderr, /not an agent id/);
  assert.match(run([...base, '--name', 'x', '--cert', 'c']).stderr, /--cert and --key go together/);
  assert.match(run([...base, '--name', 'x', '--label', 'novalue']).stderr, /not KEY=VALUE/);
  assert.match(run(['--config', 'x.json', '--server', 'h:1']).stderr, /exclude each other/);
  assert.match(run([], { TLSPLANE_SERVER: '127.0.0.1:1', TLSPLANE_NAME: 'x', TLSPLANE_CACHE_DIR: '/tmp/x' }).stderr, /--ca \(or TLSPLANE_CA\)/);
  const noCa = run([...base, '--name', 'x', '--join-token', 't']);
  assert.equal(noCa.status, 1);
  assert.match(noCa.stderr, /--ca: .*nonexistent/);
});
