'use strict';
// Runs real tlsplane-agent processes in standalone mode for the
// integration tests, from snapshots written as plain JS objects.
//
//   const web = tlsContext('web', { certs: [p.rsa, p.ecdsa], alpnProtocols: ['h2'] });
//   const snap = snapshot(1, [listener('web', { upstream: up.address, defaultContext: web })]);
//   const agent = await Agent.start(snap);      // waits for "revision 1 applied"
//   agent.port('web')                           // the port it serves on (a free one the harness chose)
//   const r = await agent.reload(snapshot(2, [...]));  // SIGHUP, waits for the outcome
//   r.failed                                     // [{listener, reason}] not applied
//   const m = await agent.metrics();            // GET /metrics, parsed
//   m.get('tlsplane_handshakes_total', { listener: 'listeners/web' })
//   await agent.stopClean();                    // SIGTERM, exit 0 asserted
//
// The snapshot file is a tlsplane.v1.Snapshot in protobuf's JSON mapping
// (lowerCamelCase, Duration "2s", bytes base64, wrappers bare). Listener
// addresses left out are filled in by the harness with a free 127.0.0.1
// port, kept across reloads; the port each listener is served on is read
// back from the agent's log ("listener=listeners/web new: serving on
// 127.0.0.1:PORT ...").
//
// An agent never outlives its test process: every live agent is SIGKILLed
// on the process's 'exit' (and SIGINT/SIGTERM), and it is started with a
// parent-death signal (util-linux's setpriv, see procs.js).

const { spawn, spawnSync } = require('node:child_process');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const procs = require('./procs');
const { built } = require('./tools');
const { deadline } = require('./wait');

const START_TIMEOUT_MS = 30000; // ASan builds start slowly
const RELOAD_TIMEOUT_MS = 20000;
const STOP_TIMEOUT_MS = 20000; // the agent drains for up to 10 s (WORKER_GRACE_MS)

// Log lines the harness reads: agent/source_file.c (applied), apply.c
// (serving on, not applied, nothing changed), main.c (ready).
const LOG = {
  applied: (rev) => new RegExp(`config .*: revision ${rev} applied(?: in part)?`),
  notApplied: /config not applied, nothing changed: (.*)$/m,
  serving: /listener=(\S+) (?:new|changed): serving on (\S+) /g,
  listenerFailed: /listener=(\S+) not applied: (.*)$/gm,
  metrics: /ready: revision -?\d+, \d+ workers, metrics (127\.0\.0\.1|\[::1\]|localhost):(\d+)/,
};




// The agent binary: $TLSPLANE_AGENT, else build/agent/tlsplane-agent.
// Throws (failing the test) when it is missing.
function agentBinary() {
  return built('TLSPLANE_AGENT', 'agent/tlsplane-agent', 'tlsplane-agent');
}

// ---------------------------------------------------------------------------
// Snapshots

// A listener address the harness fills in before the agent sees the file:
// a free 127.0.0.1 port, the same one for the listener's whole life in
// one Agent (so a reload does not move it).
const AUTO_ADDRESS = 'auto';

// n distinct free TCP ports on 127.0.0.1: all bound at once (so none is
// handed out twice), then released for the agent to bind. They are drawn
// below the kernel's ephemeral range (net.ipv4.ip_local_port_range,
// 32768-60999 by default): a port picked there can be taken by any
// outgoing connection of a parallel test before the agent binds it.
const PICK_LOW = 20000;
const PICK_HIGH = 32000;

async function freePorts(n) {
  const servers = [];
  try {
    for (let tries = 0; servers.length < n; tries++) {
      if (tries > 1000) throw new Error(`no ${n} free ports in ${PICK_LOW}-${PICK_HIGH}`);
      const port = PICK_LOW + Math.floor(Math.random() * (PICK_HIGH - PICK_LOW));
      const srv = net.createServer();
      const ok = await new Promise((resolve) => {
        srv.once('error', () => resolve(false));
        srv.listen(port, '127.0.0.1', () => resolve(true));
      });
      if (ok) servers.push(srv);
    }
    return servers.map((srv) => srv.address().port);
  } finally {
    await Promise.all(servers.map((srv) => new Promise((r) => srv.close(() => r()))));
  }
}

// One free TCP port on 127.0.0.1 (bound, then released).
async function freePort() {
  return (await freePorts(1))[0];
}

const b64 = (buf) => Buffer.from(buf).toString('base64');

// "listeners/web" from "web" (names are given either way).
function full(collection, name) {
  return name.includes('/') ? name : `${collection}/${name}`;
}

// A CertificateMaterial from a pki leaf ({name, cert, key, chain?,
// ocspResponse?}) or { leaf, ocsp, chain, issuerCertificate, name } to
// override. The chain served is leaf.chain when it has one, else the leaf
// and issuerPem (tlsContext's `issuer`). issuerCertificate: the leaf's
// issuer given apart (issuer_certificate_pem: checks the OCSP response,
// never served).
function certMaterial(spec, issuerPem) {
  const leaf = spec.leaf || spec;
  const ocsp = 'ocsp' in spec ? spec.ocsp : leaf.ocspResponse;
  const chain = spec.chain || leaf.chain || leaf.cert + (issuerPem || '');
  const certificate = {
    name: full('certificates', spec.name || leaf.name),
    certificateChainPem: chain,
  };
  if (ocsp) certificate.ocspResponse = b64(ocsp);
  if (spec.issuerCertificate) certificate.issuerCertificatePem = spec.issuerCertificate;
  return { certificate, privateKeyPem: spec.key || leaf.key };
}

// A ResolvedTlsContext. opts:
//   certs: [leaf | {leaf, ocsp, chain, issuerCertificate, name}]  key + cert, one per key type
//   issuer: PEM appended to each leaf without a chain (default: none)
//   policy: CipherPolicy fields ({ciphers, ciphersuites, ecdhCurve,
//           ecdhDisabled, dhparamPem, secureProtocol, minVersion,
//           maxVersion, honorCipherOrder}); omitted: the seed's defaults
//   ca: trust bundle PEM; crls: [PEM]
//   and TlsContext fields as they are: requestCert, rejectUnauthorized,
//   alpnProtocols, npnProtocols, sessionTimeout ("2s"), sessionIdContext,
//   sessionTickets (bool), sessionCacheSize, ocspStapling, maxSendFragment.
function tlsContext(name, opts = {}) {
  const { certs = [], issuer, policy, ca, crls, ...fields } = opts;
  const ctxName = full('tlsContexts', name);
  const certificates = certs.map((c) => certMaterial(c, issuer));
  const rc = {
    tlsContext: { name: ctxName, certificates: certificates.map((m) => m.certificate.name), ...fields },
    certificates,
  };
  if (policy) {
    const cpName = full('cipherPolicies', policy.name || `${name}-policy`);
    rc.cipherPolicy = { ...policy, name: cpName };
    rc.tlsContext.cipherPolicy = cpName;
  }
  if (ca) {
    const tbName = full('trustBundles', `${name}-ca`);
    rc.trustBundle = { name: tbName, caPem: ca };
    rc.tlsContext.trustBundle = tbName;
  }
  if (crls && crls.length) {
    rc.revocationLists = crls.map((pem, i) => ({ name: full('revocationLists', `${name}-crl-${i}`), crlPem: pem }));
    rc.tlsContext.revocationLists = rc.revocationLists.map((r) => r.name);
  }
  return rc;
}

// A ResolvedListener. opts:
//   address (default: a free port, see AUTO_ADDRESS), upstream, proxyProtocol,
//   handshakeTimeout ("2s"), maxConnections, renegotiationLimit,
//   renegotiationWindow ("600s"): Listener fields as they are;
//   defaultContext: a tlsContext(); sni: [[pattern, tlsContext()], ...];
//   ticketKeys: [{key: Buffer(48), active: bool}] (sets ticketKeyRing);
//   upstreamTls: {context: tlsContext({client: true, ...}), servername,
//   checkServerIdentity, rejectUnauthorized} (sets upstreamTls).
function listener(name, opts = {}) {
  const {
    defaultContext, sni = [], ticketKeys, ticketKeyRing, upstreamTls, address = AUTO_ADDRESS, ...fields
  } = opts;
  assert.ok(defaultContext, 'listener(): defaultContext is required');
  const contexts = {};
  const add = (rc) => {
    const n = rc.tlsContext.name;
    if (contexts[n] && JSON.stringify(contexts[n]) !== JSON.stringify(rc)) {
      throw new Error(`listener(): two different contexts named ${n}`);
    }
    contexts[n] = rc;
  };
  add(defaultContext);
  for (const [, rc] of sni) add(rc);
  if (upstreamTls) {
    const { context, ...upFields } = upstreamTls;
    add(context);
    fields.upstreamTls = { tlsContext: context.tlsContext.name, ...upFields };
  }
  const rl = {
    listener: {
      name: full('listeners', name),
      address,
      defaultTlsContext: defaultContext.tlsContext.name,
      sniRoutes: sni.map(([hostname, rc]) => ({ hostname, tlsContext: rc.tlsContext.name })),
      ...fields,
    },
    tlsContexts: contexts,
  };
  if (ticketKeys) {
    rl.listener.ticketKeyRing = ticketKeyRing || 'ticketKeyRings/shared';
    rl.ticketKeys = ticketKeys.map((k) => ({ key: b64(k.key), active: !!k.active }));
  }
  return rl;
}

function snapshot(revision, listeners) {
  return { revision: String(revision), listeners };
}

// ---------------------------------------------------------------------------
// Prometheus text format

function parseLabels(text) {
  const labels = {};
  const re = /\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?/gy;
  let m;
  while ((m = re.exec(text)) !== null) {
    labels[m[1]] = m[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    if (re.lastIndex >= text.length) break;
  }
  return labels;
}

class Metrics {
  constructor(text) {
    this.text = text;
    this.samples = [];
    this.types = {};
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      if (line.startsWith('#')) {
        const t = /^# TYPE (\S+) (\S+)/.exec(line);
        if (t) this.types[t[1]] = t[2];
        continue;
      }
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/.exec(line);
      if (!m) throw new Error(`not a Prometheus sample line: ${line}`);
      const value = m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]);
      this.samples.push({ name: m[1], labels: m[2] ? parseLabels(m[2]) : {}, value });
    }
  }

  // The samples of `name` whose labels include every one of `labels`.
  find(name, labels = {}) {
    return this.samples.filter(
      (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
    );
  }

  // Their sum; 0 when none (a counter never incremented may be absent).
  get(name, labels = {}) {
    return this.find(name, labels).reduce((a, s) => a + s.value, 0);
  }

  has(name) {
    return this.samples.some((s) => s.name === name);
  }
}

function httpGet(url, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: timeoutMs }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

// ---------------------------------------------------------------------------
// The process

let seq = 0;

class Agent {
  constructor({ binary, dir, workers, extraArgs, env, nofile }) {
    this.binary = binary;
    this.nofile = nofile;
    this.dir = dir;
    this.configPath = path.join(dir, 'snapshot.json');
    this.workers = workers;
    this.extraArgs = extraArgs;
    this.env = env;
    this.proc = null;
    this.logText = '';
    this.exit = null;
    this.stopRequested = false;
    this.ports = {}; // listener name -> bound port, from the log
    this.metricsAddress = null;
    this.snapshot = null;
    this.lineWaiters = [];
  }

  // Starts an agent on `snap`; resolves once the log says the snapshot's
  // revision was applied and names the metrics address ("ready: ...").
  // expectAllApplied (default): fail unless every listener was applied.
  //
  // A free port is free when the harness looks, not necessarily when the
  // agent binds it a moment later: another process of the machine (other
  // test files run side by side) may take it in between. A start whose
  // only failures are such binds of ports the harness chose is made again
  // on new ones, a few times.
  //
  // nofile: run it with RLIMIT_NOFILE soft = hard = nofile (util-linux
  // prlimit, which must be on PATH).
  static async start(snap, { workers = 2, extraArgs = [], env = {}, expectAllApplied = true, nofile } = {}) {
    const binary = agentBinary();
    for (let attempt = 1; ; attempt++) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-agent-'));
      procs.trackDir(dir);
      const a = new Agent({ binary, dir, workers, extraArgs, env, nofile });
      await a._writeSnapshot(snap);
      try {
        await a._spawn();
        if (expectAllApplied) a._assertAllApplied(a.logText, snap);
        return a;
      } catch (err) {
        // Nobody will stop an agent that was never handed back.
        if (a.proc && !a.exit) {
          a.proc.kill('SIGKILL');
          await a.exited;
        }
        if (attempt >= 3 || !a._lostAutoPortRace()) throw err;
      }
    }
  }

  // Whether every listener that failed to start failed binding a port the
  // harness chose (AUTO_ADDRESS) because someone else had taken it.
  _lostAutoPortRace() {
    const failed = [...this.logText.matchAll(LOG.listenerFailed)];
    const auto = new Set(Object.values(this.autoPorts || {}).map((p) => `127.0.0.1:${p}`));
    return failed.length > 0 && failed.every((m) => {
      const bind = /address: (\S+): bind: Address already in use/.exec(m[2]);
      return bind && auto.has(bind[1]);
    });
  }

  // Fills in AUTO_ADDRESS listener addresses (see above).
  async _resolveAddresses(snap) {
    if (typeof snap === 'string') return snap;
    this.autoPorts = this.autoPorts || {};
    const out = JSON.parse(JSON.stringify(snap));
    const auto = (out.listeners || []).filter((rl) => rl.listener && rl.listener.address === AUTO_ADDRESS);
    const fresh = auto.filter((rl) => !this.autoPorts[rl.listener.name]);
    const ports = await freePorts(fresh.length);
    fresh.forEach((rl, i) => {
      this.autoPorts[rl.listener.name] = ports[i];
    });
    for (const rl of auto) rl.listener.address = `127.0.0.1:${this.autoPorts[rl.listener.name]}`;
    return out;
  }

  async _writeSnapshot(snapIn) {
    const snap = await this._resolveAddresses(snapIn);
    this.snapshot = snap;
    const tmp = `${this.configPath}.${++seq}.tmp`;
    fs.writeFileSync(tmp, typeof snap === 'string' ? snap : JSON.stringify(snap, null, 1), { mode: 0o600 });
    fs.renameSync(tmp, this.configPath); // atomic: the agent never reads half a file
  }

  _onLog(text) {
    this.logText += text;
    if (this.logText.length > 8 * 1024 * 1024) this.logText = this.logText.slice(-4 * 1024 * 1024);
    for (const m of text.matchAll(LOG.serving)) {
      const port = Number(/:(\d+)$/.exec(m[2])[1]);
      this.ports[m[1]] = port;
    }
    const mm = LOG.metrics.exec(text);
    if (mm && !this.metricsAddress) this.metricsAddress = `${mm[1]}:${mm[2]}`;
    if (process.env.TLSPLANE_TEST_VERBOSE) process.stderr.write(text.replace(/^/gm, '[agent] '));
    for (const w of [...this.lineWaiters]) w.check();
  }

  _spawn() {
    const args = ['--config', this.configPath, '--metrics-listen', '127.0.0.1:0', '--workers', String(this.workers), ...this.extraArgs];
    // prlimit execs the agent: the process keeps its pid (for /proc).
    const [cmd, argv] = this.nofile
      ? procs.command('prlimit', [`--nofile=${this.nofile}:${this.nofile}`, '--', this.binary, ...args])
      : procs.command(this.binary, args);
    this.exit = null;
    this.stopRequested = false;
    const proc = spawn(cmd, argv, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ASAN_OPTIONS: 'detect_leaks=1', ...process.env, ...this.env },
    });
    this.proc = proc;
    procs.track(this);
    this.exited = new Promise((resolve) => {
      proc.on('exit', (code, signal) => {
        procs.untrack(this);
        this.exit = { code, signal };
        for (const w of [...this.lineWaiters]) w.check();
        resolve(this.exit);
      });
    });
    proc.stdout.on('data', (c) => this._onLog(c.toString()));
    proc.stderr.on('data', (c) => this._onLog(c.toString()));
    proc.on('error', (err) => {
      this.spawnError = err;
    });
    const rev = this.snapshot.revision;
    return this.waitForLog((t) => LOG.applied(rev).test(t) && this.metricsAddress, {
      timeoutMs: START_TIMEOUT_MS,
      what: `"revision ${rev} applied" and the metrics address`,
    });
  }

  // Resolves once pred(log text since `from`) is truthy; rejects when the
  // agent exits first or after timeoutMs.
  waitForLog(pred, { from = 0, timeoutMs = 10000, what = 'a log line' } = {}) {
    if (typeof pred !== 'function') {
      const re = pred;
      pred = (t) => re.test(t);
    }
    return new Promise((resolve, reject) => {
      const w = {
        check: () => {
          const text = this.logText.slice(from);
          if (pred(text)) {
            done();
            resolve(text);
          } else if (this.exit) {
            done();
            reject(new Error(`tlsplane-agent exited (code ${this.exit.code}, signal ${this.exit.signal}) before ${what}; log:\n${this.tail(60)}`));
          }
        },
      };
      const cancel = deadline(timeoutMs, () => {
        done();
        reject(new Error(`tlsplane-agent: no ${what} within ${timeoutMs} ms; log:\n${this.tail(60)}`));
      });
      const done = () => {
        cancel();
        this.lineWaiters = this.lineWaiters.filter((x) => x !== w);
      };
      this.lineWaiters.push(w);
      w.check();
    });
  }

  // Every listener of snap was applied (no "not applied" line in text).
  _assertAllApplied(text, snap) {
    const failed = [...text.matchAll(LOG.listenerFailed)].map((m) => `${m[1]}: ${m[2]}`);
    assert.deepEqual(failed, [], `listeners not applied by tlsplane-agent`);
    for (const rl of snap.listeners) {
      assert.ok(this.ports[rl.listener.name], `no "serving on" line for ${rl.listener.name}; log:\n${this.tail(30)}`);
    }
  }

  // The port listener `name` ("web" or "listeners/web") is bound to.
  port(name) {
    const p = this.ports[full('listeners', name)];
    if (!p) throw new Error(`tlsplane-agent serves no listener ${name} (known: ${Object.keys(this.ports).join(', ')})`);
    return p;
  }

  // Writes snap (an object, or raw text) to the config file, sends SIGHUP
  // and waits for the outcome. Resolves with
  //   { applied: bool, text, failed: [{listener, reason}], error }
  // applied: the log says the revision was applied (wholly or in part);
  // error: "config not applied, nothing changed: ..." (the file itself
  // was refused). Listeners that changed address update port().
  async reload(snap, { timeoutMs = RELOAD_TIMEOUT_MS } = {}) {
    const from = this.logText.length;
    await this._writeSnapshot(snap);
    this.proc.kill('SIGHUP');
    const rev = typeof snap === 'string' ? null : snap.revision;
    const text = await this.waitForLog(
      (t) => (rev !== null && LOG.applied(rev).test(t)) || LOG.notApplied.test(t),
      { from, timeoutMs, what: rev !== null ? `"revision ${rev} applied" after SIGHUP` : 'the outcome of SIGHUP' },
    );
    const failed = [...text.matchAll(LOG.listenerFailed)].map((m) => ({ listener: m[1], reason: m[2] }));
    const err = LOG.notApplied.exec(text);
    const applied = rev !== null && LOG.applied(rev).test(text);
    // Workers swap on their own loops right after the main thread posts
    // the change: the caller connects once every one has.
    if (applied) await this.waitForWorkers(rev);
    return { applied, text, failed, error: err ? err[1] : null };
  }

  async metrics() {
    assert.ok(this.metricsAddress, 'tlsplane-agent printed no metrics address');
    const res = await httpGet(`http://${this.metricsAddress}/metrics`);
    assert.equal(res.status, 200, `GET /metrics answered ${res.status}: ${res.body.slice(0, 200)}`);
    return new Metrics(res.body);
  }

  // Polls /metrics until pred(metrics) holds; resolves with those metrics.
  async waitForMetrics(pred, { timeoutMs = 10000, what = 'a metrics condition' } = {}) {
    const deadline = Date.now() + timeoutMs;
    let m;
    for (;;) {
      m = await this.metrics();
      if (pred(m)) return m;
      if (Date.now() > deadline) {
        throw new Error(`tlsplane-agent: ${what} not met within ${timeoutMs} ms; /metrics:\n${m.text}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  // Resolves once every worker has put revision `rev` in place
  // (tlsplane_worker_config_revision), so that a connection made now gets it.
  async waitForWorkers(rev, { timeoutMs = RELOAD_TIMEOUT_MS } = {}) {
    return this.waitForMetrics((m) => {
      const w = m.find('tlsplane_worker_config_revision');
      return w.length === this.workers && w.every((s) => s.value >= Number(rev));
    }, { timeoutMs, what: `every worker at revision ${rev}` });
  }

  get running() {
    return this.proc !== null && this.exit === null;
  }

  get crashed() {
    return this.exit !== null && !this.stopRequested;
  }

  // Throws (with the log's end) when the agent exited without being asked.
  assertAlive(when = '') {
    if (this.crashed) {
      throw new Error(`tlsplane-agent died ${when} (exit code ${this.exit.code}, signal ${this.exit.signal}); log tail:\n${this.tail(40)}`);
    }
  }

  async stop() {
    if (!this.proc || this.exit) return this.exit;
    return procs.terminate(this, STOP_TIMEOUT_MS);
  }

  // SIGTERM and a clean exit: code 0, no signal (under ASan, also no leak
  // and no error report: either makes the exit code non-zero).
  async stopClean() {
    const wasCrashed = this.crashed;
    const r = await this.stop();
    assert.ok(!wasCrashed, `tlsplane-agent had died before SIGTERM (code ${r.code}, signal ${r.signal}); log:\n${this.tail(60)}`);
    assert.ok(!r.timedOut, `tlsplane-agent did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM; log:\n${this.tail(40)}`);
    assert.deepEqual(
      { code: r.code, signal: r.signal },
      { code: 0, signal: null },
      `tlsplane-agent did not exit cleanly on SIGTERM; log:\n${this.tail(80)}`,
    );
    assert.doesNotMatch(this.logText, /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:/, 'sanitizer report in the agent log');
    return r;
  }

  log() {
    return this.logText;
  }

  tail(lines = 40) {
    return this.logText.split('\n').slice(-lines).join('\n');
  }
}

// For a test file running agents: after each test, fail it when one of
// agents() died during it. agents: a function returning the live ones.
function failOnCrash({ afterEach }, agents) {
  afterEach((t) => {
    for (const a of agents()) if (a) a.assertAlive(`during "${t.name}"`);
  });
}

module.exports = {
  Agent,
  Metrics,
  agentBinary,
  tlsContext,
  listener,
  snapshot,
  certMaterial,
  freePort,
  freePorts,
  AUTO_ADDRESS,
  httpGet,
  failOnCrash,
  LOG,
};
