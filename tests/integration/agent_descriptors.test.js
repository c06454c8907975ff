'use strict';
// The agent under descriptor exhaustion: started with `prlimit
// --nofile=1024:1024` (so the soft limit cannot be raised) and flooded
// with 3,000 idle TCP connections, it keeps a budget of client
// connections below the limit, refuses the excess at once and counts it,
// serves a new client as soon as there is room, answers /metrics, does
// not spin, logs a bounded number of lines and stops on SIGTERM. The
// metrics endpoint holds at most 16 connections and closes those that do
// not send a whole request within 5 s.

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const { execFileSync } = require('node:child_process');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { exchange, rawConnect, delay, HOST } = require('./lib/tlsclient');

const L = { listener: 'listeners/web' };
const FLOOD = 3000;

// Opens n TCP connections that send nothing; resolves once each is
// connected (or already closed by the agent).
async function openIdle(port, n) {
  const socks = [];
  await Promise.all(Array.from({ length: n }, () => new Promise((resolve) => {
    const s = net.connect({ host: HOST, port });
    s.on('error', () => {});
    s.once('connect', resolve);
    s.once('close', resolve);
    socks.push(s);
  })));
  return socks;
}

// The share of one core the process used over ms (user + system time of
// every thread, from /proc/PID/stat): a bound on a busy loop, not a speed.
async function cpuShare(pid, ms) {
  const ticks = () => {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14 and 15)
  };
  const hz = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());
  const t0 = Date.now();
  const c0 = ticks();
  await delay(ms); // the measurement window itself
  const c1 = ticks();
  return (c1 - c0) / hz / ((Date.now() - t0) / 1000);
}

describe('descriptor exhaustion: a budget below RLIMIT_NOFILE, refusals counted, nothing wedges', () => {
  let up;
  let agent;

  before(async () => {
    const p = pki();
    up = await Upstream.start({ mode: 'echo' });
    agent = await Agent.start(snapshot(1, [
      listener('web', { upstream: up.address, defaultContext: tlsContext('web', { certs: [p.rsa] }), handshakeTimeout: '600s' }),
    ]), { nofile: 1024 });
  });

  after(async () => {
    if (agent) await agent.stop();
    if (up) await up.close();
  });
  failOnCrash({ afterEach }, () => [agent]);

  test('the metrics endpoint: at most 16 connections (more are refused and counted), and a silent or half-sent request is closed after 5 s', async () => {
    const [host, port] = [agent.metricsAddress.replace(/:\d+$/, ''), Number(/:(\d+)$/.exec(agent.metricsAddress)[1])];
    assert.equal(host, '127.0.0.1');
    const silent = [];
    for (let i = 0; i < 15; i++) silent.push(await rawConnect(port));
    const half = await rawConnect(port);
    half.sock.write('GET /metr');
    // The 17th is closed at once.
    const over = await rawConnect(port);
    const r = await Promise.race([over.closed, delay(3000).then(() => null)]);
    assert.ok(r, 'a 17th metrics connection was held open');
    assert.equal(r.bytes, 0);
    // The 16 held ones are closed by the read timeout, not before ~5 s.
    const t0 = Date.now();
    const closed = await Promise.race([
      Promise.all([...silent, half].map((c) => c.closed)),
      delay(20000).then(() => null),
    ]);
    assert.ok(closed, 'connections that sent no whole request were still open 20 s later');
    assert.ok(Date.now() - t0 >= 3000, `closed after ${Date.now() - t0} ms: before the 5 s read timeout`);
    const m = await agent.metrics();
    assert.ok(m.get('tlsplane_agent_connections_refused_total', { cause: 'metrics_connections' }) >= 1,
      m.text.split('\n').filter((l) => l.includes('refused')).join('\n'));
  });

  test(`${FLOOD} idle connections: the excess is refused and counted, /metrics answers, no spin, bounded log, a new client is served once there is room`, async () => {
    const port = agent.port('web');
    const logFrom = agent.log().length;
    const t0 = Date.now();
    const idle = await openIdle(port, FLOOD);
    try {
      // Every connection was taken off the kernel's queue: held (in its
      // handshake) or refused at once.
      const m = await agent.waitForMetrics((mm) => mm.get('tlsplane_connections_total', L) >= FLOOD,
        { timeoutMs: 60000, what: `${FLOOD} connections accepted` });
      assert.equal(m.get('tlsplane_agent_descriptors_limit'), 1024);
      const budget = m.get('tlsplane_agent_connection_budget');
      assert.ok(budget >= 256 && budget < 512, `budget ${budget}: two descriptors each below 1024, with a reserve`);
      assert.equal(m.get('tlsplane_connections', L), budget, 'connections held');
      assert.equal(m.get('tlsplane_agent_connections_refused_total', { cause: 'descriptors' }), FLOOD - budget, 'refusals counted');
      assert.equal(m.get('tlsplane_agent_accept_errors_total'), 0, 'accept(2) itself never failed');

      // Not spinning: far below a core while the connections are held.
      const cpu = await cpuShare(agent.proc.pid, 2000);
      assert.ok(cpu < 0.5, `the agent used ${(cpu * 100).toFixed(0)}% of a core while idle`);

      // Full: a new client is refused at once, not left hanging.
      const refused = await exchange(port, {}, { timeoutMs: 10000 });
      assert.equal(refused.ok, false, 'a client was served over the budget');
      // Room: ten idle clients leave, the next client is served.
      idle.slice(0, 10).forEach((s) => s.destroy());
      await agent.waitForMetrics((mm) => mm.get('tlsplane_connections', L) <= budget - 10, { what: 'ten connections gone' });
      const served = await exchange(port, {});
      assert.equal(served.ok, true, served.error);

      // The log: a few lines a second for the refusals, each saying how
      // many it stands for; nowhere near one per refusal.
      const text = agent.log().slice(logFrom);
      const lines = text.split('\n').filter((l) => / refused cause=descriptors /.test(l));
      const seconds = Math.ceil((Date.now() - t0) / 1000) + 1;
      assert.ok(lines.length >= 1, 'no refusal logged');
      assert.ok(lines.length <= 5 * seconds, `${lines.length} refusal lines in ${seconds} s`);
      assert.ok(text.length < 64 * 1024, `${text.length} bytes of log during the flood`);
      assert.ok(lines.some((l) => /suppressed=\d+/.test(l)), `no line says how many were left out:\n${lines.join('\n')}`);
    } finally {
      // SIGTERM with the connections still held: the agent stops within its drain deadline.
      const r = await agent.stopClean();
      assert.equal(r.code, 0);
      idle.forEach((s) => s.destroy());
    }
  });
});
