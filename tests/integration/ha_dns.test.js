'use strict';
// An agent given one DNS name with several addresses fails over between
// them (docs/ha.md, "Agents"): two tlsplane-server processes on one
// PostgreSQL database (lib/ha.js), A on 127.0.0.1:P and B on [::1]:P (the
// same port), and a real agent started with `--server localhost:P`. The
// agent's resolver (grpc's, c-ares) gives "localhost" both loopback
// addresses; each server's certificate names localhost, 127.0.0.1 and ::1.
//
// * The agent connects to one of them (the servers' GetRollout says
//   which: the one counting it connected).
// * The agent serves a listener; a handshake loop runs against it without
//   a pause; the server the agent is connected to is killed with SIGKILL:
//   the agent connects to the other address of the name within seconds,
//   serves a certificate uploaded there, and the loop saw no failed
//   handshake.
//
// A machine without ::1 on its loopback fails the test, saying so.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { noteSecret } = require('./lib/server');
const { HaServers, serveWeb, uploadWeb, HandshakeLoop } = require('./lib/ha');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { CpAgent } = require('./lib/cpagent');
const { freePort } = require('./lib/agent');
const { uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');
const { teardown } = require('./lib/procs');

const PASSWORD = 'pg-dns-password';
noteSecret(PASSWORD);

let ha;
let up;
let agent;

// Whether a socket can listen on ::1 (the loopback has it).
function ipv6Loopback() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', (e) => resolve(e.message));
    s.listen(0, '::1', () => s.close(() => resolve(null)));
  });
}

before(async () => {
  const missing = await ipv6Loopback();
  assert.equal(missing, null, `this test needs ::1 on the loopback interface (a server listens on [::1]:PORT): ${missing}`);
  ha = await HaServers.start({
    password: PASSWORD, tag: 'hadns',
    servers: [{}, { listen: ([A]) => `[::1]:${A.port}` }],
  });
});

after(() => teardown(
  async () => agent && agent.running && agent.stopClean(),
  async () => up && up.close(),
  async () => ha && ha.stop(),
));

test('--server NAME:PORT, the name with two addresses: the server the agent is on is killed, it connects to the other address, keeps serving (no failed handshake) and gets what is uploaded there', async () => {
  const [A, B] = ha.servers;
  assert.equal(A.address, `127.0.0.1:${A.port}`);
  assert.equal(B.address, `[::1]:${A.port}`);
  const name = `localhost:${A.port}`;
  const p = pki();
  up = await Upstream.start({ mode: 'echo' });
  const t = await ha.conns[0].api.TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'ha-d', agentLabels: { site: 'dns' } } });
  noteSecret(t.secret);
  agent = await CpAgent.start({ address: name, ca: A.ca }, { name: 'ha-d', labels: { site: 'dns' }, joinToken: t.secret, wait: 'connected' });
  assert.match(agent.logText, new RegExp(`control plane ${name}: connected as agents/ha-d `));

  // Which server counts the agent connected: exactly one.
  const counts = async () =>
    Promise.all(ha.conns.map(async (c, i) => (ha.servers[i].running ? (await c.api.AgentService.GetRollout({ revision: 0 })).agentsConnected : 0)));
  await waitFor('one server counts the agent connected', async () => (await counts()).reduce((a, b) => a + b, 0) === 1);
  const on = (await counts()).indexOf(1);
  const victim = ha.servers[on];
  const other = ha.servers[1 - on];
  const otherConn = ha.conns[1 - on];
  console.log(`# localhost:${A.port}: the agent connected to ${victim.address} first`);

  const port = await freePort();
  await serveWeb(ha.conns[on], p, { site: 'dns', port, upstream: up.address });
  const loop = HandshakeLoop.start(port);
  try {
    const okBefore = loop.ok;
    const from = agent.logText.length;
    const killedAt = Date.now();
    await victim.kill();
    try {
      await waitFor(`${other.address} counts the agent connected`, async () => (await otherConn.api.AgentService.GetRollout({ revision: 0 })).agentsConnected === 1, {
        timeoutMs: 15000, intervalMs: 50,
      });
    } catch (e) {
      // The agent retried the name: say what its resolver gave it.
      throw new Error(`${e.message}: did the agent's resolver give "localhost" both 127.0.0.1 and ::1? Its log since the kill:\n${agent.logText.slice(from)}`);
    }
    const ms = Date.now() - killedAt;
    console.log(`# the agent was connected to ${other.address} ${ms} ms after ${victim.address} was killed`);
    assert.ok(ms < 10000, `within seconds (took ${ms} ms)`);
    assert.match(agent.logText.slice(from), new RegExp(`control plane ${name}: UNAVAILABLE: .*retrying in \\d+\\.\\d s`));
    // The server counts the stream before the agent logs it: wait for the line.
    const connected = new RegExp(`control plane ${name}: connected as agents/ha-d `);
    await waitFor('the agent logs its new connection', () => connected.test(agent.logText.slice(from)), { timeoutMs: 5000 })
      .catch(() => assert.match(agent.logText.slice(from), connected));

    const next = await uploadWeb(otherConn, p, 'dns');
    await waitFor('the certificate uploaded to the other server served', () => loop.last === next.fingerprint, { intervalMs: 20 });
    assert.ok(loop.ok > okBefore, 'handshakes went on during the failover');
  } finally {
    await loop.stop();
  }
  assert.equal(loop.failed, 0, `${loop.failed} failed handshakes of ${loop.ok + loop.failed}`);
  assert.ok(agent.running, 'the agent kept running');
});
