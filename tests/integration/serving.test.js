'use strict';
// AgentService.GetServing, "who serves what": for a certificate, a TLS
// context or a listener, every listener that uses it (a certificate
// through its context, a context as the default or an SNI route) and
// every agent each listener selects, with the revision it applied for
// that listener and whether that version is current.
//
// Two real agents serve the same listeners (port 0: a free port on each);
// one is stopped, the certificate is updated: the running one is current
// at the new revision, the stopped one neither connected nor current.
// A listener moved to a taken address shows the nack and the kept version.
// Viewers may read it; an agent's certificate and a join token may not.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const net = require('node:net');
const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { exchange } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { agentBinary } = require('./lib/agent');
const { status, expectGrpcError, uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');

let srv;
let conn;
let p;
let up;
const agents = {}; // name -> CpAgent
const conns = [];

const api = () => conn.api;
const serving = (resource, c = conn) => c.api.AgentService.GetServing({ resource });

async function connectAs(extra) {
  const c = await connect(srv.address, srv.connectOptions(extra));
  conns.push(c);
  return c;
}

async function joinToken(agentId, agentLabels) {
  const r = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId, agentLabels } });
  noteSecret(r.secret);
  return r.secret;
}

// The entry of listener `name`, its agents by name.
function entry(s, name) {
  const l = (s.listeners || []).find((x) => x.listener === name);
  assert.ok(l, `${name} in ${JSON.stringify(s)}`);
  return Object.fromEntries((l.agents || []).map((a) => [a.agent, a]));
}

before(async () => {
  agentBinary(); // fails the file at once, naming what is missing
  p = pki();
  up = await Upstream.start({ mode: 'echo' });
  srv = await Server.start({ tls: true });
  conn = await connect(srv.address, srv.connectOptions());
  for (const [id, leaf] of [['web', p.ecdsa], ['api', p.ecdsa2]]) {
    await api().CertificateService.CreateCertificate({ certificateId: id, certificate: { certificateChainPem: leaf.cert, privateKeyPem: leaf.key } });
    await api().TlsContextService.CreateTlsContext({ tlsContextId: id, tlsContext: { certificates: [`certificates/${id}`] } });
  }
  const listener = (extra) => ({ address: '127.0.0.1:0', upstream: up.address, agentSelector: { tier: 'edge' }, ...extra });
  // web: certificates/web as its default; sni: through an SNI route;
  // other: not at all; elsewhere: web's context, but for no agent here.
  await api().ListenerService.CreateListener({ listenerId: 'web', listener: listener({ defaultTlsContext: 'tlsContexts/web' }) });
  await api().ListenerService.CreateListener({
    listenerId: 'sni',
    listener: listener({ defaultTlsContext: 'tlsContexts/api', sniRoutes: [{ hostname: 'www.example.com', tlsContext: 'tlsContexts/web' }] }),
  });
  await api().ListenerService.CreateListener({ listenerId: 'other', listener: listener({ defaultTlsContext: 'tlsContexts/api' }) });
  await api().ListenerService.CreateListener({
    listenerId: 'elsewhere', listener: listener({ defaultTlsContext: 'tlsContexts/web', agentSelector: { tier: 'core' } }),
  });
  for (const name of ['serve-a', 'serve-b']) {
    agents[name] = await CpAgent.start(srv, { name, labels: { tier: 'edge' }, joinToken: await joinToken(name, { tier: 'edge' }), wait: 'connected' });
  }
});

after(async () => {
  for (const a of Object.values(agents)) if (a.running) await a.stopClean();
  for (const c of conns) c.close();
  if (conn) conn.close();
  if (srv && srv.running) await srv.stopClean();
  if (up) await up.close();
});

afterEach((t) => {
  for (const a of Object.values(agents)) if (a.running) a.assertAlive(`during "${t.name}"`);
});

test('a certificate: the listeners that use it, directly or through an SNI context, and the agents that serve them', async () => {
  const cert = await api().CertificateService.GetCertificate({ name: 'certificates/web' });
  const s = await waitFor('both agents current on both listeners', async () => {
    const r = await serving('certificates/web');
    const ok = ['listeners/web', 'listeners/sni'].every((l) => {
      const as = entry(r, l);
      return ['agents/serve-a', 'agents/serve-b'].every((a) => as[a] && as[a].connected && as[a].current);
    });
    return ok && r;
  });
  assert.equal(s.resource, 'certificates/web');
  assert.equal(s.revision, cert.revision);
  // In name order; "other" does not use it; "elsewhere" does, for no agent.
  assert.deepEqual(s.listeners.map((l) => l.listener), ['listeners/elsewhere', 'listeners/sni', 'listeners/web']);
  assert.deepEqual(s.listeners[0].agents || [], []);
  for (const l of s.listeners.slice(1)) {
    assert.deepEqual(l.agents.map((a) => a.agent), ['agents/serve-a', 'agents/serve-b']);
    for (const a of l.agents) {
      assert.ok(Number(a.appliedRevision) >= Number(cert.revision), `${a.agent} on ${l.listener}: ${a.appliedRevision}`);
      assert.equal(a.lastNack, '');
    }
  }
  // A context: the listeners naming it; a listener: itself.
  const ctx = await serving('tlsContexts/api');
  assert.deepEqual(ctx.listeners.map((l) => l.listener), ['listeners/other', 'listeners/sni']);
  const one = await serving('listeners/other');
  assert.deepEqual(one.listeners.map((l) => l.listener), ['listeners/other']);
  assert.deepEqual(Object.keys(entry(one, 'listeners/other')), ['agents/serve-a', 'agents/serve-b']);

  // The server's /metrics says the same, one series per listener and agent.
  const res = spawnSync('curl', ['-sS', '--cacert', path.join(srv.dataDir, 'ca.pem'), '-H', `authorization: Bearer ${srv.adminToken}`, `${srv.httpBase}/metrics`], { encoding: 'utf8' });
  assert.equal(res.status, 0, res.stderr);
  const served = res.stdout.split('\n').filter((l) => l.startsWith('tlsplane_certificate_served{certificate="certificates/web"')).sort();
  // Both agents acked what they were pushed: the push latency counts them.
  const pushes = Number(/^tlsplane_push_latency_seconds_count (\d+)$/m.exec(res.stdout)[1]);
  assert.ok(pushes >= 2, `push latency measured for both agents: ${pushes}`);
  assert.match(res.stdout, /^tlsplane_agents_connected 2$/m);
  assert.deepEqual(served, ['sni', 'web'].flatMap((l) => ['a', 'b'].map((a) => `tlsplane_certificate_served{certificate="certificates/web",listener="listeners/${l}",agent="agents/serve-${a}"} 1`)));
});

test('one agent stopped, the certificate updated: the running one is current at the new revision, the stopped one is not', async () => {
  await agents['serve-b'].stopClean();
  await waitFor('serve-b shown disconnected', async () => !entry(await serving('certificates/web'), 'listeners/web')['agents/serve-b'].connected);

  const leaf = p.leaf('web-next', { cn: 'www.example.com', sans: ['DNS:www.example.com'] });
  const updated = await api().CertificateService.UpdateCertificate({
    certificate: { name: 'certificates/web', certificateChainPem: leaf.cert, privateKeyPem: leaf.key },
    updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
  });
  const rev = Number(updated.revision);
  await agents['serve-a'].waitApplied(rev);
  const r = await waitFor('serve-a current at the new revision', async () => {
    const x = await serving('certificates/web');
    return ['listeners/web', 'listeners/sni'].every((l) => entry(x, l)['agents/serve-a'].current) && x;
  });
  assert.equal(Number(r.revision), rev);
  for (const l of ['listeners/web', 'listeners/sni']) {
    const as = entry(r, l);
    assert.equal(as['agents/serve-a'].connected, true);
    assert.ok(Number(as['agents/serve-a'].appliedRevision) >= rev, `serve-a on ${l}: ${as['agents/serve-a'].appliedRevision} < ${rev}`);
    assert.equal(as['agents/serve-b'].connected, false);
    assert.equal(as['agents/serve-b'].current, false);
    assert.ok(Number(as['agents/serve-b'].appliedRevision) > 0, 'serve-b still shows what it applied last');
    assert.ok(Number(as['agents/serve-b'].appliedRevision) < rev);
  }
  // What the running agent serves is indeed the new certificate.
  const hs = await exchange(agents['serve-a'].port('web'), { servername: 'www.example.com' }, { send: 'x\n' });
  assert.ok(hs.ok, hs.error);
  assert.equal(hs.info.fingerprint, leaf.fingerprint);
  // The context the certificate is in did not change: its own revision is
  // older, and both states are measured against it.
  const ctx = await serving('tlsContexts/web');
  assert.ok(Number(ctx.revision) < rev);
  assert.equal(entry(ctx, 'listeners/web')['agents/serve-a'].current, true);
});

test('viewers may read it; an agent certificate and a join token may not', async () => {
  const viewer = await api().TokenService.CreateToken({ tokenId: uid('viewer'), token: { role: 'VIEWER' } });
  noteSecret(viewer.secret);
  const v = await connectAs({ token: viewer.secret });
  const s = await serving('listeners/web', v);
  assert.deepEqual(s.listeners.map((l) => l.listener), ['listeners/web']);

  const a = agents['serve-a'];
  const asAgent = await connectAs({
    token: undefined,
    tls: { ca: srv.ca, cert: fs.readFileSync(a.file('agent.pem')), key: fs.readFileSync(a.file('agent-key.pem')) },
  });
  await expectGrpcError(serving('listeners/web', asAgent), status.PERMISSION_DENIED);
  const join = await connectAs({ token: await joinToken(uid('j'), {}) });
  await expectGrpcError(serving('listeners/web', join), status.PERMISSION_DENIED);
});

test('unknown and malformed names', async () => {
  await expectGrpcError(serving('certificates/nope'), status.NOT_FOUND, { field: 'resource', includes: ['certificates/nope'] });
  await expectGrpcError(serving('tlsContexts/nope'), status.NOT_FOUND, { field: 'resource', includes: ['tlsContexts/nope'] });
  await expectGrpcError(serving('listeners/nope'), status.NOT_FOUND, { field: 'resource', includes: ['listeners/nope'] });
  for (const bad of ['', 'certificates/', 'certificates/Bad_Id', 'agents/serve-a', 'web', 'listeners/web/x']) {
    await expectGrpcError(serving(bad), status.INVALID_ARGUMENT, { field: 'resource', what: JSON.stringify(bad) });
  }
});

test('a listener an agent cannot apply: its last nack, and the version it keeps is not current', async () => {
  const a = agents['serve-a'];
  const made = await api().ListenerService.CreateListener({
    listenerId: 'moving', listener: { address: '127.0.0.1:0', upstream: up.address, defaultTlsContext: 'tlsContexts/web', agentSelector: { tier: 'edge' } },
  });
  await a.waitApplied(Number(made.revision));
  const squatter = net.createServer(() => {});
  await new Promise((resolve) => squatter.listen(0, '127.0.0.1', resolve));
  try {
    const taken = `127.0.0.1:${squatter.address().port}`;
    const moved = await api().ListenerService.UpdateListener({ listener: { name: 'listeners/moving', address: taken }, updateMask: { paths: ['address'] } });
    const s = await waitFor('serve-a nacks listeners/moving', async () => {
      const x = await serving('listeners/moving');
      return entry(x, 'listeners/moving')['agents/serve-a'].lastNack && x;
    });
    assert.equal(Number(s.revision), Number(moved.revision));
    const got = entry(s, 'listeners/moving');
    assert.match(got['agents/serve-a'].lastNack, /in use|bind|address/i);
    assert.equal(got['agents/serve-a'].connected, true);
    assert.equal(got['agents/serve-a'].current, false);
    const kept = Number(got['agents/serve-a'].appliedRevision);
    assert.ok(kept >= Number(made.revision) && kept < Number(moved.revision), `it keeps the version of revision ${kept}`);
    // The stopped agent, selected too, never served it.
    assert.deepEqual(got['agents/serve-b'], { agent: 'agents/serve-b', connected: false, appliedRevision: '0', current: false, lastNack: '' });
  } finally {
    await new Promise((resolve) => squatter.close(resolve));
  }
});
