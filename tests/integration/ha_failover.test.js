'use strict';
// Agents fail over between servers (docs/ha.md): two tlsplane-server
// processes A and B on one PostgreSQL database (lib/ha.js; B on a copy
// of A's data directory: the same CA and master key), a real agent
// started with `--server A --server B`.
//
// * A --server list with an empty address, as a flag or in
//   TLSPLANE_SERVER, is a usage error naming it.
// * Enrollment fails over too: an agent whose first server is
//   unreachable enrolls with its join token on the second.
// * The agent serves a listener; a handshake loop runs against it without
//   a pause; the server the agent is connected to (its log says which) is
//   killed with SIGKILL: the agent connects to the other within seconds,
//   serves a certificate uploaded there, counts the failover in /metrics,
//   and the loop saw no failed handshake.
// * Both servers down: the agent keeps serving and alternates between
//   them, waiting after each round of failures (no spinning).

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const { noteSecret } = require('./lib/server');
const { HaServers, serveWeb, uploadWeb, HandshakeLoop } = require('./lib/ha');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { exchange } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { freePort, agentBinary } = require('./lib/agent');
const { uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');
const { teardown } = require('./lib/procs');

const PASSWORD = 'pg-failover-password';
noteSecret(PASSWORD);

let ha;
let up;
let agent;
let webPort; // listeners/web on the agent
let servers = [];
let conns = [];

// "control plane HOST:PORT: connected as agents/NAME": the server of each
// connection, in order.
function connectedTo(a) {
  return [...a.logText.matchAll(/control plane (\S+): connected as agents\/ha-f /g)].map((m) => m[1]);
}

before(async () => {
  ha = await HaServers.start({ password: PASSWORD, tag: 'hafo', servers: [{}, {}] });
  ({ servers, conns } = ha);
});

after(() => teardown(
  async () => agent && agent.running && agent.stopClean(),
  async () => up && up.close(),
  async () => ha && ha.stop(),
));

test('a --server list with an empty address is refused, naming the flag or the variable', () => {
  const common = ['--ca', '/nonexistent', '--name', 'ha-f', '--cache-dir', '/nonexistent'];
  const env = { ...process.env };
  delete env.TLSPLANE_SERVER;
  const flag = spawnSync(agentBinary(), ['--server', servers[0].address, '--server', '', ...common], { encoding: 'utf8', env });
  assert.equal(flag.status, 2, flag.stderr);
  assert.match(flag.stderr, /--server: ".*" has an empty address/);
  const variable = spawnSync(agentBinary(), common, { encoding: 'utf8', env: { ...env, TLSPLANE_SERVER: `${servers[0].address},,${servers[1].address}` } });
  assert.equal(variable.status, 2, variable.stderr);
  assert.match(variable.stderr, /TLSPLANE_SERVER: ".*" has an empty address/);
});

test('enrollment fails over: the first server unreachable, the agent enrolls on the second and connects there', async () => {
  const dead = `127.0.0.1:${await freePort()}`;
  const t = await conns[0].api.TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'ha-e' } });
  noteSecret(t.secret);
  const e = await CpAgent.start({ address: dead, ca: servers[0].ca }, {
    name: 'ha-e', joinToken: t.secret, wait: 'connected', extraArgs: ['--server', servers[1].address],
  });
  try {
    assert.match(e.logText, new RegExp(`control plane ${dead}: UNAVAILABLE: enrollment: .*failing over to ${servers[1].address} in`));
    assert.match(e.logText, /control plane: enrolled as agents\/ha-e/);
    assert.match(e.logText, new RegExp(`control plane ${servers[1].address}: connected as agents/ha-e `));
    assert.ok((await e.metrics()).get('tlsplane_control_plane_failovers_total') >= 1);
  } finally {
    await e.stopClean();
  }
});

test('the server the agent is connected to is killed: it connects to the other, keeps serving (no failed handshake) and gets what is uploaded there', async () => {
  const [A, B] = servers;
  const p = pki();
  up = await Upstream.start({ mode: 'echo' });
  const t = await conns[0].api.TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'ha-f', agentLabels: { site: 'fo' } } });
  noteSecret(t.secret);
  agent = await CpAgent.start(A, {
    name: 'ha-f', labels: { site: 'fo' }, joinToken: t.secret, wait: 'connected', extraArgs: ['--server', B.address],
  });
  assert.match(agent.logText, new RegExp(`control plane ${A.address},${B.address} as agents/ha-f`));
  assert.deepEqual(connectedTo(agent), [A.address], 'connected to the first of the list');

  const port = await freePort();
  webPort = port;
  await serveWeb(conns[0], p, { site: 'fo', port, upstream: up.address });
  const loop = HandshakeLoop.start(port);

  try {
    const before = (await agent.metrics()).get('tlsplane_control_plane_failovers_total');
    const current = connectedTo(agent).at(-1);
    const victim = current === A.address ? A : B;
    const other = victim === A ? B : A;
    const otherConn = conns[servers.indexOf(other)];
    const okBefore = loop.ok;
    const killedAt = Date.now();
    await victim.kill();
    await waitFor(`the agent connected to the other server ${other.address}`, () => connectedTo(agent).at(-1) === other.address, { timeoutMs: 15000, intervalMs: 50 });
    const ms = Date.now() - killedAt;
    console.log(`# the agent was connected to ${other.address} ${ms} ms after ${victim.address} was killed`);
    assert.ok(ms < 10000, `within seconds (took ${ms} ms)`);
    assert.match(agent.logText, new RegExp(`control plane ${victim.address}: UNAVAILABLE: .*failing over to ${other.address} in \\d+\\.\\d s`));

    const next = await uploadWeb(otherConn, p, 'fo');
    await waitFor('the certificate uploaded to the other server served', () => loop.last === next.fingerprint, { intervalMs: 20 });
    const after = (await agent.metrics()).get('tlsplane_control_plane_failovers_total');
    assert.ok(after >= before + 1, `failovers counted (${before} -> ${after})`);
    assert.ok(loop.ok > okBefore, 'handshakes went on during the failover');
  } finally {
    await loop.stop();
  }
  assert.equal(loop.failed, 0, `${loop.failed} failed handshakes of ${loop.ok + loop.failed}`);
  assert.ok(agent.running, 'the agent kept running');
});

test('both servers down: the agent alternates between them, waits after each round, and keeps serving', async () => {
  const [A, B] = servers;
  const survivor = A.running ? A : B;
  const from = agent.logText.length;
  await survivor.kill();
  const attempts = () => [...agent.logText.slice(from).matchAll(/control plane (\S+): UNAVAILABLE: .*failing over to (\S+) in (\d+\.\d) s/g)];
  await waitFor('four failed attempts, alternating', () => attempts().length >= 4, { timeoutMs: 20000 });
  const start = Date.now();
  const seen = attempts().length;
  let checks = 0;
  // Serving goes on; over 3 s the attempts stay few (each round of two
  // waits at least 0.1 s, up to TLSPLANE_RETRY_MAX_MS, 2 s here).
  await waitFor('3 s of serving without the control plane', async () => {
    const r = await exchange(webPort, {}, { send: 'fp\n' });
    assert.ok(r.ok, 'served');
    checks++;
    return Date.now() - start >= 3000;
  }, { timeoutMs: 10000 });
  const all = attempts();
  assert.ok(all.length - seen <= 40, `${all.length - seen} attempts in 3 s: no spinning`);
  for (const [, server, next] of all) {
    assert.ok([A.address, B.address].includes(server));
    assert.notEqual(server, next, 'each attempt moves to the other server');
  }
  // A round is two attempts: of any two in a row one ended a round and
  // waited at least 0.1 s.
  for (let i = 1; i < all.length; i++)
    assert.ok(Math.max(Number(all[i - 1][3]), Number(all[i][3])) >= 0.1, `attempts ${i - 1} and ${i}: a round waited`);
  assert.ok(checks > 0);
  assert.equal((await agent.metrics()).get('tlsplane_control_plane_connected'), 0);
});
