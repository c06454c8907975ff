'use strict';
// Runs real tlsplane-agent processes in control-plane mode: connected to a
// real tlsplane-server (TLS), enrolled with a join token (or given a
// certificate), serving what the server pushes.
//
//   const a = await CpAgent.start(srv, { name: 'edge-1', joinToken, labels: { zone: 'a' } });
//   await a.waitApplied(rev)              // "control plane: revision >= rev applied"
//   a.port('web')                         // the port listeners/web is served on (from the log)
//   await a.metrics()                     // GET /metrics, parsed (lib/agent.js Metrics)
//   a.kill()                              // SIGKILL; await a.exited
//   await a.restart()                     // same name and cache dir, no join token
//   await a.stopClean()                   // SIGTERM, exit 0 and no sanitizer report asserted
//
// The agent's cache dir is a fresh temp dir unless given; it outlives the
// process (a restart reuses it) and is removed when the test process
// exits. The agent finds the server at srv.address, so a test that
// restarts the server starts it on a fixed port (--listen). Agents never
// outlive the test process (SIGKILL on exit; a parent-death signal through
// util-linux's setpriv).

const { spawn, spawnSync } = require('node:child_process');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const procs = require('./procs');
const { Metrics, httpGet, agentBinary } = require('./agent');
const { waitFor, deadline } = require('./wait');

const START_TIMEOUT_MS = 30000; // ASan builds start slowly
const STOP_TIMEOUT_MS = 20000;

// Log lines (agent/source_stream.c, apply.c, main.c).
const LOG = {
  ready: /ready: revision -?\d+, \d+ workers, metrics (127\.0\.0\.1|\[::1\]|localhost):(\d+)/,
  applied: /control plane: revision (\d+) applied(?: in part)?/g,
  cacheApplied: /cache \S+: revision (\d+) applied/,
  serving: /listener=(\S+) (?:new|changed): serving on (\S+) /g,
  connected: /control plane \S+: connected as agents\/(\S+) \(certificate serial ([0-9A-F]+)\)/g,
};




const tempDir = procs.tempDir;

class CpAgent {
  constructor(opts) {
    Object.assign(this, opts);
    this.proc = null;
    this.logText = '';
    this.exit = null;
    this.stopRequested = false;
    this.ports = {};
    this.metricsAddress = null;
    this.waiters = [];
    this.starts = 0;
  }

  // Starts an agent for server `srv` (a lib/server.js Server, or
  // { address, caFile }). opts: name (required), joinToken, cert + key
  // (PEM text), labels, cacheDir, workers (1), env, extraArgs,
  // wait: 'ready' (default: the "ready" line) or 'connected' (the first
  // snapshot applied).
  static async start(srv, opts = {}) {
    const binary = agentBinary();
    assert.ok(opts.name, 'CpAgent.start: name is required');
    const cacheDir = opts.cacheDir || path.join(tempDir('tlsplane-cpagent-'), 'cache');
    const a = new CpAgent({
      binary,
      srv,
      name: opts.name,
      labels: opts.labels || {},
      cacheDir,
      workers: opts.workers || 1,
      // Tests wait 2 s at most between connection attempts (30 s by default).
      env: { TLSPLANE_RETRY_MAX_MS: '2000', ...(opts.env || {}) },
      extraArgs: opts.extraArgs || [],
    });
    const filesDir = tempDir('tlsplane-cpagent-files-');
    a.caFile = path.join(filesDir, 'ca.pem');
    fs.writeFileSync(a.caFile, srv.ca);
    if (opts.cert) {
      a.certFile = path.join(filesDir, 'agent.pem');
      a.keyFile = path.join(filesDir, 'agent-key.pem');
      fs.writeFileSync(a.certFile, opts.cert);
      fs.writeFileSync(a.keyFile, opts.key, { mode: 0o600 });
    }
    await a._spawn({ joinToken: opts.joinToken, wait: opts.wait || 'ready' });
    return a;
  }

  args({ joinToken } = {}) {
    const args = [
      '--server', this.srv.address, '--ca', this.caFile, '--name', this.name,
      '--cache-dir', this.cacheDir, '--metrics-listen', '127.0.0.1:0', '--workers', String(this.workers),
    ];
    for (const [k, v] of Object.entries(this.labels)) args.push('--label', `${k}=${v}`);
    if (this.certFile) args.push('--cert', this.certFile, '--key', this.keyFile);
    return [...args, ...this.extraArgs];
  }

  _spawn({ joinToken, wait = 'ready' } = {}) {
    const args = this.args();
    const [cmd, argv] = procs.command(this.binary, args);
    this.exit = null;
    this.stopRequested = false;
    this.metricsAddress = null;
    this.starts += 1;
    this.logStart = this.logText.length;
    // The tests' own TLSPLANE_SERVER (the server binary) must not reach it.
    const env = { ASAN_OPTIONS: 'detect_leaks=1', ...process.env, ...this.env };
    for (const k of ['TLSPLANE_SERVER', 'TLSPLANE_CONFIG', 'TLSPLANE_JOIN_TOKEN']) delete env[k];
    if (joinToken) env.TLSPLANE_JOIN_TOKEN = joinToken;
    Object.assign(env, this.env);
    const proc = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env });
    this.proc = proc;
    procs.track(this);
    this.exited = new Promise((resolve) => {
      proc.on('exit', (code, signal) => {
        procs.untrack(this);
        this.exit = { code, signal };
        this._wake();
        resolve(this.exit);
      });
    });
    proc.stdout.on('data', (c) => this._onLog(c.toString()));
    proc.stderr.on('data', (c) => this._onLog(c.toString()));
    const from = this.logStart;
    if (wait === 'connected') {
      return this.waitForLog((t) => /control plane: revision \d+ applied/.test(t), { from, timeoutMs: START_TIMEOUT_MS, what: 'the first snapshot applied' });
    }
    return this.waitForLog((t) => LOG.ready.test(t), { from, timeoutMs: START_TIMEOUT_MS, what: 'the "ready" line' });
  }

  _onLog(text) {
    this.logText += text;
    for (const m of text.matchAll(LOG.serving)) this.ports[m[1]] = Number(/:(\d+)$/.exec(m[2])[1]);
    const r = LOG.ready.exec(text);
    if (r) this.metricsAddress = `${r[1]}:${r[2]}`;
    if (process.env.TLSPLANE_TEST_VERBOSE) process.stderr.write(text.replace(/^/gm, `[${this.name}] `));
    this._wake();
  }

  _wake() {
    for (const w of [...this.waiters]) w();
  }

  // Resolves with the log text since `from` once pred(text) holds; rejects
  // when the agent exits first or after timeoutMs.
  waitForLog(pred, { from = 0, timeoutMs = 15000, what = 'a log line' } = {}) {
    if (typeof pred !== 'function') {
      const re = pred;
      pred = (t) => re.test(t);
    }
    return new Promise((resolve, reject) => {
      let cancel = () => {};
      const check = () => {
        const text = this.logText.slice(from);
        if (pred(text)) {
          done();
          resolve(text);
        } else if (this.exit) {
          done();
          reject(new Error(`${this.name} exited (code ${this.exit.code}, signal ${this.exit.signal}) before ${what}; log:\n${this.tail(60)}`));
        }
      };
      const done = () => {
        cancel();
        this.waiters = this.waiters.filter((w) => w !== check);
      };
      cancel = deadline(timeoutMs, () => {
        done();
        reject(new Error(`${this.name}: no ${what} within ${timeoutMs} ms; log:\n${this.tail(60)}`));
      });
      this.waiters.push(check);
      check();
    });
  }

  // Revisions the log says were applied from the control plane (since from).
  appliedRevisions(from = 0) {
    return [...this.logText.slice(from).matchAll(LOG.applied)].map((m) => Number(m[1]));
  }

  // Waits until a snapshot of revision >= rev was applied (since from)
  // and every worker has put it in place (a connection made then gets
  // it). Resolves with the log text since from.
  async waitApplied(rev, { from = 0, timeoutMs = 15000 } = {}) {
    const text = await this.waitForLog((t) => [...t.matchAll(LOG.applied)].some((m) => Number(m[1]) >= Number(rev)), {
      from, timeoutMs, what: `"control plane: revision >= ${rev} applied"`,
    });
    await this.waitForWorkers(rev, { timeoutMs });
    return text;
  }

  // Resolves once every worker reports revision >= rev
  // (tlsplane_worker_config_revision).
  async waitForWorkers(rev, { timeoutMs = 15000 } = {}) {
    if (!this.metricsAddress) await this.waitForLog(LOG.ready, { from: this.logStart, timeoutMs, what: 'the "ready" line' });
    return waitFor(`${this.name}: every worker at revision >= ${rev}`, async () => {
      const w = (await this.metrics()).find('tlsplane_worker_config_revision');
      return w.length === this.workers && w.every((x) => x.value >= Number(rev));
    }, { timeoutMs });
  }

  // Serials of the certificates it connected with, in order.
  connectedSerials() {
    return [...this.logText.matchAll(LOG.connected)].map((m) => m[2]);
  }

  port(name) {
    const full = name.includes('/') ? name : `listeners/${name}`;
    const p = this.ports[full];
    if (!p) throw new Error(`${this.name} serves no listener ${full} (known: ${Object.keys(this.ports).join(', ')})`);
    return p;
  }

  file(name) {
    return path.join(this.cacheDir, name);
  }

  async metrics() {
    assert.ok(this.metricsAddress, `${this.name} printed no metrics address`);
    const res = await httpGet(`http://${this.metricsAddress}/metrics`);
    assert.equal(res.status, 200);
    return new Metrics(res.body);
  }

  kill() {
    if (this.proc && !this.exit) {
      this.stopRequested = true;
      this.proc.kill('SIGKILL');
    }
    return this.exited;
  }

  // Starts again on the same cache dir (and name, labels, credentials
  // files); joinToken only when given.
  async restart({ joinToken, wait = 'ready' } = {}) {
    if (this.proc && !this.exit) await this.stopClean();
    this.ports = {};
    await this._spawn({ joinToken, wait });
    return this;
  }

  get running() {
    return this.proc !== null && this.exit === null;
  }

  get crashed() {
    return this.exit !== null && !this.stopRequested;
  }

  assertAlive(when = '') {
    if (this.crashed) {
      throw new Error(`${this.name} died ${when} (exit code ${this.exit.code}, signal ${this.exit.signal}); log tail:\n${this.tail(40)}`);
    }
  }

  async stop() {
    if (!this.proc || this.exit) return this.exit;
    return procs.terminate(this, STOP_TIMEOUT_MS);
  }

  async stopClean() {
    const wasCrashed = this.crashed;
    const r = await this.stop();
    assert.ok(!wasCrashed, `${this.name} had died before SIGTERM (code ${r.code}, signal ${r.signal}); log:\n${this.tail(60)}`);
    assert.ok(!r.timedOut, `${this.name} did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM; log:\n${this.tail(40)}`);
    assert.deepEqual({ code: r.code, signal: r.signal }, { code: 0, signal: null }, `${this.name} did not exit cleanly; log:\n${this.tail(80)}`);
    assert.doesNotMatch(this.logText, /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:/, 'sanitizer report in the agent log');
    return r;
  }

  tail(lines = 40) {
    return this.logText.split('\n').slice(-lines).join('\n');
  }
}

module.exports = { CpAgent, LOG };
