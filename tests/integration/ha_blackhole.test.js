'use strict';
// A server that vanishes without a reset (a network partition, its host
// gone) is left within the keepalive bound (docs/ha.md): two
// tlsplane-server processes A and B on one PostgreSQL database
// (lib/ha.js; B on a copy of A's data directory), and a real agent
// given `--server PROXY --server B --keepalive 6`, where PROXY is a TCP
// proxy in front of A (lib/tcpproxy.js).
//
// * --keepalive and TLSPLANE_KEEPALIVE out of range are usage errors
//   naming the flag or the variable, on the agent and on the server.
// * The agent serves a listener; a handshake loop runs against it without
//   a pause; the proxy turns into a blackhole (nothing forwarded either
//   way, nothing closed): the agent's keepalive notices within its bound
//   (6 s: a ping after 4 s, 2 s to answer), it connects to B, serves a
//   certificate uploaded there, and the loop saw no failed handshake.
// * Server A (--keepalive 6) frees the stream of the agent it can no
//   longer hear within its own bound, also after the stream was idle
//   (nothing sent by A) for three of its ping intervals: its GetRollout
//   stops counting the agent connected.
// * The shortest agent --keepalive (3 s) is accepted by a server: its
//   stream stays up (no GOAWAY too_many_pings).

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const { serverBinary, noteSecret } = require('./lib/server');
const { HaServers, serveWeb, uploadWeb, HandshakeLoop } = require('./lib/ha');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { CpAgent } = require('./lib/cpagent');
const { TcpProxy } = require('./lib/tcpproxy');
const { freePort, agentBinary } = require('./lib/agent');
const { uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');
const { teardown } = require('./lib/procs');

const PASSWORD = 'pg-blackhole-password';
noteSecret(PASSWORD);
const AGENT_BOUND_S = 6;
const SERVER_BOUND_S = 6;
// What a bound may be exceeded by on a busy 2-core host: the failover's
// random wait (at most 0.5 s), a new connection and its TLS handshake.
const SLACK_MS = 4000;

let ha;
let up;
let agent;
let proxy;
let servers = [];
let conns = [];

function connectedTo(a) {
  return [...a.logText.matchAll(/control plane (\S+): connected as agents\/ha-k /g)].map((m) => m[1]);
}

before(async () => {
  ha = await HaServers.start({ password: PASSWORD, tag: 'habh', servers: [{ extraArgs: ['--keepalive', String(SERVER_BOUND_S)] }, {}] });
  ({ servers, conns } = ha);
});

after(() => teardown(
  async () => agent && agent.running && agent.stopClean(),
  async () => proxy && proxy.close(),
  async () => up && up.close(),
  async () => ha && ha.stop(),
));

test('--keepalive out of range is refused, naming the flag or the variable', () => {
  const env = { ...process.env };
  for (const k of ['TLSPLANE_SERVER', 'TLSPLANE_KEEPALIVE', 'TLSPLANE_CONFIG']) delete env[k];
  const common = ['--server', servers[0].address, '--ca', '/nonexistent', '--name', 'ha-k', '--cache-dir', '/nonexistent'];
  const flag = spawnSync(agentBinary(), [...common, '--keepalive', '2'], { encoding: 'utf8', env });
  assert.equal(flag.status, 2, flag.stderr);
  assert.match(flag.stderr, /--keepalive: "2" is not a number of seconds from 3 to 3600/);
  const variable = spawnSync(agentBinary(), common, { encoding: 'utf8', env: { ...env, TLSPLANE_KEEPALIVE: '30s' } });
  assert.equal(variable.status, 2, variable.stderr);
  assert.match(variable.stderr, /TLSPLANE_KEEPALIVE: "30s" is not a number of seconds from 3 to 3600/);
  const help = spawnSync(agentBinary(), ['--help'], { encoding: 'utf8' });
  assert.match(help.stdout, /--keepalive SECONDS .*\n(.*\n)*.*\[TLSPLANE_KEEPALIVE, 30\]/);

  const srv = spawnSync(serverBinary(), ['--keepalive', '4000'], { encoding: 'utf8', env });
  assert.equal(srv.status, 2, srv.stderr);
  assert.match(srv.stderr, /--keepalive: "4000" is not a number of seconds from 3 to 3600/);
  const srvEnv = spawnSync(serverBinary(), [], { encoding: 'utf8', env: { ...env, TLSPLANE_KEEPALIVE: 'x' } });
  assert.equal(srvEnv.status, 2, srvEnv.stderr);
  assert.match(srvEnv.stderr, /TLSPLANE_KEEPALIVE: "x" is not a positive whole number/);
  assert.match(spawnSync(serverBinary(), ['--help'], { encoding: 'utf8' }).stdout, /\[TLSPLANE_KEEPALIVE, 60\]/);
});

test('the server vanishes without a reset: the agent leaves it within its keepalive bound, serves what is uploaded to the other, no failed handshake; the server frees the stream', async () => {
  const [A, B] = servers;
  const p = pki();
  proxy = await TcpProxy.start(A.address);
  up = await Upstream.start({ mode: 'echo' });
  const t = await conns[0].api.TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'ha-k', agentLabels: { site: 'bh' } } });
  noteSecret(t.secret);
  agent = await CpAgent.start({ address: proxy.address, ca: A.ca }, {
    name: 'ha-k', labels: { site: 'bh' }, joinToken: t.secret, wait: 'connected',
    extraArgs: ['--server', B.address, '--keepalive', String(AGENT_BOUND_S)],
  });
  assert.deepEqual(connectedTo(agent), [proxy.address], 'connected to A through the proxy');
  const rolloutA = async () => (await conns[0].api.AgentService.GetRollout({ revision: 0 })).agentsConnected;
  await waitFor('A counts the agent connected', async () => (await rolloutA()) === 1);

  const port = await freePort();
  await serveWeb(conns[0], p, { site: 'bh', port, upstream: up.address });
  const loop = HandshakeLoop.start(port);

  try {
    // The stream idle first (no push) for three of A's ping intervals:
    // A must go on pinging a connection it sends nothing else on.
    const idleFrom = Date.now();
    const pingMs = SERVER_BOUND_S * 1000 - (SERVER_BOUND_S * 1000) / 3;
    await waitFor('the stream idle for three ping intervals', () => Date.now() - idleFrom >= 3 * pingMs, { timeoutMs: 3 * pingMs + 5000, intervalMs: 200 });
    const okBefore = loop.ok;
    const from = agent.logText.length;
    const holedAt = Date.now();
    proxy.blackhole();
    const agentBound = AGENT_BOUND_S * 1000 + SLACK_MS;
    await waitFor(`the agent connected to B ${B.address}`, () => connectedTo(agent).at(-1) === B.address, { timeoutMs: agentBound + 10000, intervalMs: 50 });
    const ms = Date.now() - holedAt;
    console.log(`# the agent was connected to B ${ms} ms after A was blackholed (--keepalive ${AGENT_BOUND_S})`);
    assert.ok(ms < agentBound, `within the keepalive bound (took ${ms} ms, bound ${AGENT_BOUND_S} s)`);
    assert.match(agent.logText.slice(from), new RegExp(`control plane ${proxy.address}: UNAVAILABLE: .*failing over to ${B.address} in \\d+\\.\\d s`));

    const next = await uploadWeb(conns[1], p, 'bh');
    await waitFor('the certificate uploaded to B served', () => loop.last === next.fingerprint, { intervalMs: 20 });
    assert.ok(loop.ok > okBefore, 'handshakes went on during the failover');

    // A hears nothing from the agent (nor a close): its keepalive frees
    // the stream.
    await waitFor('A no longer counts the agent connected', async () => (await rolloutA()) === 0, { timeoutMs: SERVER_BOUND_S * 1000 + SLACK_MS + 10000, intervalMs: 100 });
    const freed = Date.now() - holedAt;
    console.log(`# server A freed the stream of the vanished agent ${freed} ms after the blackhole (--keepalive ${SERVER_BOUND_S})`);
    assert.ok(freed < SERVER_BOUND_S * 1000 + SLACK_MS, `within the server's keepalive bound (took ${freed} ms)`);
  } finally {
    await loop.stop();
  }
  assert.equal(loop.failed, 0, `${loop.failed} failed handshakes of ${loop.ok + loop.failed}`);
  assert.ok(agent.running, 'the agent kept running');
});

test('the shortest --keepalive (3 s: a ping every 2 s) is accepted by a server: the stream stays up', async () => {
  const B = servers[1];
  const t = await conns[1].api.TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'ha-p' } });
  noteSecret(t.secret);
  const a = await CpAgent.start(B, { name: 'ha-p', joinToken: t.secret, wait: 'connected', extraArgs: ['--keepalive', '3'] });
  try {
    // Five pings' time: a server that found them too many would have sent
    // GOAWAY (too_many_pings) after two, and the agent would reconnect.
    const from = Date.now();
    await waitFor('10 s of the stream', () => Date.now() - from >= 10000, { timeoutMs: 15000, intervalMs: 250 });
    assert.equal([...a.logText.matchAll(/connected as agents\/ha-p /g)].length, 1, a.logText);
    assert.doesNotMatch(a.logText, /UNAVAILABLE|too_many_pings|retrying/);
    assert.equal((await a.metrics()).get('tlsplane_control_plane_connected'), 1);
  } finally {
    await a.stopClean();
  }
});
