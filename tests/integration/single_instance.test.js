'use strict';
// One process per data directory: a second tlsplane-server on a data
// directory in use is refused at once with a message naming it (exit 1),
// and so is a second `make run` (scripts/demo run) while the first runs:
// it stops before it starts anything, so that the first one's ports, its
// processes and its logs (appended to, never truncated) are left alone.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const { Server, serverBinary } = require('./lib/server');
const { agentBinary, freePorts } = require('./lib/agent');
const { connect } = require('./lib/reflect');
const { waitFor } = require('./lib/wait');
const procs = require('./lib/procs');

const REPO = path.resolve(__dirname, '../..');
const DEMO = path.join(REPO, 'scripts/demo');

const servers = [];
const demos = [];
after(async () => {
  for (const d of demos) await d.stop();
  for (const s of servers) if (s.running) await s.stopClean();
});

async function healthy(srv) {
  const conn = await connect(srv.address, srv.connectOptions());
  try {
    const r = await conn.api['grpc.health.v1.Health'].Check({ service: '' });
    return r.status === 'SERVING';
  } finally {
    conn.close();
  }
}

test('a second tlsplane-server on the same data directory is refused at once, the first one untouched', async () => {
  const first = await Server.start();
  servers.push(first);
  const started = Date.now();
  const second = spawnSync(serverBinary(), ['--data-dir', first.dataDir, '--listen', '127.0.0.1:0', '--plaintext'], {
    encoding: 'utf8',
    timeout: 15000,
  });
  assert.equal(second.error, undefined, String(second.error));
  assert.equal(second.status, 1, second.stderr);
  assert.match(second.stderr, new RegExp(`error server: data directory ${first.dataDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is in use by another tlsplane-server`));
  assert.doesNotMatch(second.stderr, /listening on/);
  assert.ok(Date.now() - started < 10000, 'refused at once, not after a wait');
  // So are the commands that write it; backup only reads, beside it.
  for (const args of [['init'], ['rotate-master-key']]) {
    const r = spawnSync(serverBinary(), [...args, '--data-dir', first.dataDir], { encoding: 'utf8', timeout: 15000 });
    assert.equal(r.status, 1, `${args[0]}: ${r.stderr}`);
    assert.match(r.stderr, /is in use by another tlsplane-server/, args[0]);
  }
  assert.equal(await healthy(first), true);
  await first.stopClean();
});

// scripts/demo run with everything of its own: a data directory, ports.
class Demo {
  constructor(env) {
    this.env = env;
    this.out = '';
    this.exit = null;
  }

  static async start(dataDir) {
    const [listen, demoListen, upstream, metrics] = (await freePorts(4)).map((p) => `127.0.0.1:${p}`);
    const build = path.dirname(path.dirname(serverBinary()));
    assert.equal(path.join(build, 'agent/tlsplane-agent'), path.resolve(agentBinary()), 'the demo runs the agent of the server\'s build tree');
    const d = new Demo({
      ...process.env,
      BUILD: build,
      DATA_DIR: dataDir,
      LISTEN: listen,
      DEMO_LISTEN: demoListen,
      UPSTREAM: upstream,
      AGENT_METRICS: metrics,
    });
    const [cmd, argv] = procs.command(DEMO, ['run']);
    d.proc = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: d.env, cwd: REPO });
    d.exited = new Promise((resolve) => d.proc.on('exit', (code, signal) => resolve((d.exit = { code, signal }))));
    d.proc.stdout.on('data', (c) => (d.out += c));
    d.proc.stderr.on('data', (c) => (d.out += c));
    demos.push(d);
    await waitFor('the demo running', () => {
      if (d.exit) throw new Error(`scripts/demo run exited (${JSON.stringify(d.exit)}):\n${d.out}`);
      return d.out.includes('tlsplane is running');
    }, { timeoutMs: 120000, intervalMs: 200 });
    return d;
  }

  // Another `scripts/demo run` with the same settings, to its end.
  again() {
    return spawnSync(DEMO, ['run'], { encoding: 'utf8', env: this.env, cwd: REPO, timeout: 60000 });
  }

  call(...args) {
    return spawnSync(serverBinary(), ['call', '--server', this.env.LISTEN, '--data-dir', this.env.DATA_DIR, ...args], { encoding: 'utf8', timeout: 15000 });
  }

  async stop() {
    if (this.exit) return this.exit;
    this.proc.kill('SIGTERM');
    return this.exited;
  }
}

test('a second `make run` is refused at once while the first runs, and leaves it whole', async () => {
  const dataDir = procs.tempDir('tlsplane-demo-');
  const first = await Demo.start(dataDir);
  const logs = path.join(dataDir, 'logs');
  const agentLog = fs.readFileSync(path.join(logs, 'agent.log'), 'utf8');
  assert.match(agentLog, /listener=listeners\/demo .*serving on/);

  const started = Date.now();
  const second = first.again();
  assert.equal(second.error, undefined, String(second.error));
  assert.equal(second.status, 1, second.stdout + second.stderr);
  assert.match(second.stderr, new RegExp(`demo: a demo is already running on ${dataDir}`));
  assert.ok(Date.now() - started < 10000, `refused at once (${Date.now() - started} ms)`);
  // Nothing of the first was touched: its log is whole, its upstream and
  // server still there, nothing else started.
  assert.ok(fs.readFileSync(path.join(logs, 'agent.log'), 'utf8').startsWith(agentLog), 'agent.log kept');
  assert.doesNotMatch(fs.readFileSync(path.join(logs, 'upstream.log'), 'utf8'), /EADDRINUSE/);
  assert.doesNotMatch(fs.readFileSync(path.join(logs, 'server.log'), 'utf8'), /is in use by another tlsplane-server/);
  assert.equal(first.call('--quiet', 'grpc.health.v1.Health/Check').status, 0);
  assert.equal(first.exit, null, 'the first demo runs on');

  // Stopped (Ctrl-C, or SIGTERM): a clean exit; the next run appends to
  // the logs instead of truncating them.
  assert.deepEqual(await first.stop(), { code: 0, signal: null }, first.out);
  const before = fs.readFileSync(path.join(logs, 'agent.log'), 'utf8');
  const next = await Demo.start(dataDir);
  await waitFor('the new agent serving', () => {
    const now = fs.readFileSync(path.join(logs, 'agent.log'), 'utf8');
    return now.startsWith(before) && /listener=listeners\/demo .*serving on/.test(now.slice(before.length));
  });
  assert.deepEqual(await next.stop(), { code: 0, signal: null }, next.out);
});

test('`make run` on a data directory a tlsplane-server holds is refused before it starts anything', async () => {
  const srv = await Server.start();
  servers.push(srv);
  const [listen, demoListen, upstream, metrics] = (await freePorts(4)).map((p) => `127.0.0.1:${p}`);
  const r = spawnSync(DEMO, ['run'], {
    encoding: 'utf8',
    cwd: REPO,
    timeout: 60000,
    env: {
      ...process.env,
      BUILD: path.dirname(path.dirname(serverBinary())),
      DATA_DIR: srv.dataDir,
      LISTEN: listen,
      DEMO_LISTEN: demoListen,
      UPSTREAM: upstream,
      AGENT_METRICS: metrics,
    },
  });
  assert.equal(r.status, 1, r.stdout + r.stderr);
  assert.match(r.stderr, new RegExp(`demo: ${srv.dataDir} is in use by a tlsplane-server`));
  assert.ok(!fs.existsSync(path.join(srv.dataDir, 'logs', 'server.log')), 'no server started');
  assert.equal(await healthy(srv), true);
  await srv.stopClean();
});
