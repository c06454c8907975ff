'use strict';
// systemd's readiness protocol (sd_notify(3)), as a Type=notify unit sees
// it: READY=1 once the server's API listens and once the agent serves its
// first configuration, STOPPING=1 when a stop signal begins the drain.
// tests/tools/notify_listen plays the service manager's socket (Node has
// no unix datagram sockets).

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const { Server } = require('./lib/server');
const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { waitFor } = require('./lib/wait');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-notify-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function notifyListenBinary() {
  const candidates = [process.env.TLSPLANE_NOTIFY_LISTEN, path.resolve(__dirname, '../../build/tests/notify_listen')];
  const found = candidates.find((c) => c && fs.existsSync(c));
  assert.ok(found, `notify_listen not found (set TLSPLANE_NOTIFY_LISTEN; looked at ${candidates.filter(Boolean).join(', ')})`);
  return found;
}

// The socket, and what arrived on it: each message with what onMessage
// found when it arrived.
async function notifySocket(name, onMessage) {
  const sock = path.join(tmp, `${name}.sock`);
  const proc = spawn(notifyListenBinary(), [sock], { stdio: ['ignore', 'pipe', 'inherit'] });
  const got = [];
  let listening = false;
  readline.createInterface({ input: proc.stdout }).on('line', (line) => {
    if (line === 'listening') { listening = true; return; }
    const entry = { msg: line, seen: null };
    got.push(entry);
    Promise.resolve(onMessage(line)).then((seen) => { entry.seen = seen; }, (e) => { entry.seen = `error: ${e.message}`; });
  });
  after(() => proc.kill('SIGTERM'));
  await waitFor(`notify_listen on ${sock}`, () => listening);
  return { sock, got };
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

// Whether something accepts TCP connections on port right now.
function accepts(port) {
  return new Promise((resolve) => {
    const c = net.connect({ host: '127.0.0.1', port });
    c.on('connect', () => { c.destroy(); resolve('accepts'); });
    c.on('error', (e) => resolve(`refused: ${e.code}`));
  });
}

test('tlsplane-server: READY=1 once its API listens, STOPPING=1 on SIGTERM', async () => {
  const port = await freePort();
  const n = await notifySocket('server', () => accepts(port));
  const srv = await Server.start({ env: { NOTIFY_SOCKET: n.sock }, extraArgs: ['--listen', `127.0.0.1:${port}`] });
  assert.equal(srv.port, port);
  await waitFor('READY=1 from the server', () => n.got.some((e) => e.msg === 'READY=1' && e.seen));
  assert.deepEqual(n.got.map((e) => [e.msg, e.seen]), [['READY=1', 'accepts']], 'the API accepted connections when READY=1 came');
  await srv.stopClean();
  await waitFor('STOPPING=1 from the server', () => n.got.some((e) => e.msg === 'STOPPING=1'));
  assert.deepEqual(n.got.map((e) => e.msg), ['READY=1', 'STOPPING=1']);
});

test('tlsplane-agent: READY=1 once its listeners serve, STOPPING=1 on SIGTERM; nothing without NOTIFY_SOCKET', async () => {
  const p = pki();
  const up = await Upstream.start();
  after(() => up.close());
  const port = await freePort();
  const n = await notifySocket('agent', () => accepts(port));
  const web = tlsContext('web', { certs: [p.ecdsa] });
  const snap = snapshot(1, [listener('web', { upstream: up.address, defaultContext: web, address: `127.0.0.1:${port}` })]);
  const a = await Agent.start(snap, { env: { NOTIFY_SOCKET: n.sock } });
  assert.equal(a.port('web'), port);
  await waitFor('READY=1 from the agent', () => n.got.some((e) => e.msg === 'READY=1' && e.seen));
  assert.deepEqual(n.got.map((e) => [e.msg, e.seen]), [['READY=1', 'accepts']], 'the listener accepted connections when READY=1 came');
  await a.stopClean();
  await waitFor('STOPPING=1 from the agent', () => n.got.some((e) => e.msg === 'STOPPING=1'));
  assert.deepEqual(n.got.map((e) => e.msg), ['READY=1', 'STOPPING=1']);

  // Without NOTIFY_SOCKET (outside a Type=notify unit) nothing is sent and
  // nothing is logged about it.
  const b = await Agent.start(snap, { env: { NOTIFY_SOCKET: '' } });
  await b.stopClean();
  assert.equal(n.got.length, 2);
  assert.doesNotMatch(b.logText, /sd_notify/);
});
