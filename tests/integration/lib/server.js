'use strict';
// Starts and stops real tlsplane-server processes for the integration tests.
//
//   const srv = await Server.start();   // fresh temp data dir, ephemeral port
//   srv.address                         // "127.0.0.1:PORT" (parsed from stderr)
//   srv.adminToken                      // DIR/admin.token, made on the first start
//   srv.connectOptions()                // { token } (plaintext) or { token, tls } for connect()
//   await srv.restart();                // SIGTERM (exit 0 asserted), same data dir
//   const { code, signal } = await srv.stop();
//
// Servers run with --plaintext (loopback) unless started with { tls: true };
// either way every call needs a credential, and connectOptions() carries the
// admin token (and, with TLS, the CA that verifies the server). With
// { tls: true }, srv.ca / srv.adminCert / srv.adminKey are DIR's ca.pem,
// admin.pem and admin-key.pem.
//
// Secrets never reach the log: noteSecret(s) registers a string (a token, a
// chunk of a key) that no server's log may contain; stopClean() checks every
// registered secret against the whole log of the server, and the admin token
// of each server is registered by itself.
//
// A server never outlives its test process: useServer() stops it in after(),
// every live server is SIGKILLed on the process's 'exit' (and on SIGINT /
// SIGTERM of the test process), and the server is started with a
// parent-death signal (util-linux's setpriv), so even a SIGKILLed test
// process takes its servers with it.

const { spawn, spawnSync } = require('node:child_process');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const procs = require('./procs');
const { built } = require('./tools');
const { deadline } = require('./wait');

const START_TIMEOUT_MS = 20000;
const STOP_TIMEOUT_MS = 15000;
const LISTEN_RE = /listening on (127\.0\.0\.1|\[::1\]|localhost|[0-9.]+):(\d+)/;
// Printed just before LISTEN_RE's line: the HTTP gateway's port.
const HTTP_RE = /HTTP gateway on \S+ \(port (\d+),/;

// A server started by hand (node --test, not ctest) takes a free gateway
// port too, unless the caller chose one.
if (!process.env.TLSPLANE_HTTP_LISTEN) process.env.TLSPLANE_HTTP_LISTEN = '127.0.0.1:0';

const secrets = new Set();

// Registers a string that must never appear in a server's log.
function noteSecret(s) {
  if (s && String(s).length >= 8) secrets.add(String(s));
}

// The registered secrets that `text` contains (each shown by its length only).
function secretsIn(text) {
  return [...secrets].filter((s) => text.includes(s));
}



// The server binary: $TLSPLANE_SERVER, else build/server/tlsplane-server.
// Throws (failing the test) when it is missing.
function serverBinary() {
  return built('TLSPLANE_SERVER', 'server/tlsplane-server', 'tlsplane-server');
}

class Server {
  constructor({ dataDir, binary, extraArgs, env, tls, listen }) {
    this.dataDir = dataDir;
    this.listen = listen;
    this.binary = binary;
    this.extraArgs = extraArgs;
    this.env = env;
    this.tls = !!tls;
    this.adminToken = null;
    this.leaks = 0; // secrets found in log text already dropped
    this.proc = null;
    this.port = null;
    this.address = null;
    this.logText = '';
    this.exit = null; // {code, signal} once exited
    this.starts = 0;
    this.stopRequested = false; // set by stop(): an exit then is no crash
  }

  // A server on a fresh temporary data dir (or `dataDir`).
  // listen: the --listen address (127.0.0.1:0 unless given; [::1]:PORT
  // gives an address of [::1]:PORT).
  static async start({ dataDir, extraArgs = [], env = {}, tls = false, listen = '127.0.0.1:0' } = {}) {
    if (!dataDir) {
      dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-it-'));
      procs.trackDir(dataDir);
    }
    const s = new Server({ dataDir, binary: serverBinary(), extraArgs, env, tls, listen });
    await s._spawn();
    return s;
  }

  // A file of the data directory (Buffer).
  file(name) {
    return fs.readFileSync(path.join(this.dataDir, name));
  }

  get ca() {
    return this.file('ca.pem');
  }

  get adminCert() {
    return this.file('admin.pem');
  }

  get adminKey() {
    return this.file('admin-key.pem');
  }

  // What lib/reflect.js connect() needs to call as the admin: the token,
  // and the CA when the server speaks TLS. extra: more options (a tls
  // client certificate, another token).
  connectOptions(extra = {}) {
    const base = { token: this.adminToken };
    if (this.tls) base.tls = { ca: this.ca };
    return { ...base, ...extra };
  }

  // Reads DIR/admin.token, written on the first start before "listening".
  _readCredentials() {
    this.adminToken = this.file('admin.token').toString().trim();
    noteSecret(this.adminToken);
  }

  _spawn() {
    const args = ['--data-dir', this.dataDir, '--listen', this.listen, ...(this.tls ? [] : ['--plaintext']), ...this.extraArgs];
    const [cmd, argv] = procs.command(this.binary, args);
    this.starts += 1;
    this.exit = null;
    this.stopRequested = false;
    this.port = null;
    this.address = null;
    this.httpPort = null;
    this.httpBase = null;
    const proc = spawn(cmd, argv, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...this.env },
    });
    this.proc = proc;
    procs.track(this);
    this.exited = new Promise((resolve) => {
      proc.on('exit', (code, signal) => {
        procs.untrack(this);
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
    const verbose = !!process.env.TLSPLANE_TEST_VERBOSE;
    const onOut = (prefix) => (chunk) => {
      const text = chunk.toString();
      this.logText += text;
      if (this.logText.length > 4 * 1024 * 1024) {
        // What is dropped is checked for secrets first.
        this.leaks += secretsIn(this.logText).length;
        this.logText = this.logText.slice(-2 * 1024 * 1024);
      }
      if (verbose) process.stderr.write(text.replace(/^/gm, `[server${prefix}] `));
    };
    proc.stdout.on('data', onOut(':out'));
    proc.stderr.on('data', onOut(''));

    return new Promise((resolve, reject) => {
      let stderrBuf = '';
      const cancel = deadline(START_TIMEOUT_MS, () => {
        cleanup();
        proc.kill('SIGKILL');
        reject(new Error(`tlsplane-server did not print "listening on" within ${START_TIMEOUT_MS} ms; output:\n${this.logText}`));
      });
      const onData = (chunk) => {
        stderrBuf += chunk.toString();
        const m = LISTEN_RE.exec(stderrBuf);
        if (m) {
          cleanup();
          this.port = Number(m[2]);
          this.address = `${m[1] === '[::1]' ? '[::1]' : '127.0.0.1'}:${this.port}`;
          const h = HTTP_RE.exec(stderrBuf);
          this.httpPort = h ? Number(h[1]) : null;
          this.httpBase = h ? `${this.tls ? 'https' : 'http'}://127.0.0.1:${this.httpPort}` : null;
          try {
            this._readCredentials();
          } catch (e) {
            reject(new Error(`tlsplane-server listens but its credentials are not readable: ${e.message}`));
            return;
          }
          resolve(this);
        }
      };
      const onExit = (code, signal) => {
        cleanup();
        reject(new Error(`tlsplane-server exited before listening (code ${code}, signal ${signal}); output:\n${this.logText}`));
      };
      const onError = (err) => {
        cleanup();
        reject(new Error(`cannot start ${this.binary}: ${err.message}`));
      };
      const cleanup = () => {
        cancel();
        proc.stderr.off('data', onData);
        proc.off('exit', onExit);
        proc.off('error', onError);
      };
      proc.stderr.on('data', onData);
      proc.on('exit', onExit);
      proc.on('error', onError);
    });
  }

  get running() {
    return this.proc !== null && this.exit === null;
  }

  // Exited without being asked to (a crash, an abort, an early exit).
  get crashed() {
    return this.exit !== null && !this.stopRequested;
  }

  // SIGTERM, then wait for the exit; SIGKILL after STOP_TIMEOUT_MS. Resolves
  // with {code, signal}.
  async stop() {
    if (!this.proc) return this.exit;
    if (this.exit) return this.exit;
    return procs.terminate(this, STOP_TIMEOUT_MS);
  }

  // Stops with SIGTERM and asserts a clean exit (code 0, no signal), and a
  // log free of every registered secret.
  async stopClean() {
    const r = await this.stop();
    assert.ok(!r.timedOut, `tlsplane-server did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM`);
    assert.deepEqual(
      { code: r.code, signal: r.signal },
      { code: 0, signal: null },
      `tlsplane-server did not exit cleanly on SIGTERM; output:\n${this.tail()}`,
    );
    this.assertLogClean();
    return r;
  }

  // The log holds none of the registered secrets (tokens, key material).
  assertLogClean() {
    const found = secretsIn(this.logText);
    assert.equal(this.leaks, 0, `the server's log contained ${this.leaks} secret(s)`);
    assert.equal(found.length, 0, `the server's log contains ${found.length} secret(s) (lengths ${found.map((s) => s.length)})`);
  }

  // SIGKILL, as a crash would end it; the data dir stays for _spawn().
  async kill() {
    this.stopRequested = true;
    this.proc.kill('SIGKILL');
    await this.exited;
  }

  // Stops cleanly and starts again on the same data dir (a new port).
  async restart() {
    await this.stopClean();
    await this._spawn();
    return this;
  }

  log() {
    return this.logText;
  }

  tail(lines = 40) {
    return this.logText.split('\n').slice(-lines).join('\n');
  }
}

// Registers hooks that run one server (and one reflection client) for the
// whole test file. Returns a context whose .server, .conn and .api are set
// once before() ran; ctx.restart() restarts on the same data dir and
// reconnects.
//
// Node 20 starts a file's top-level before() hooks without awaiting the
// previous one, so work that needs the server goes into `setup(ctx)`, run
// in the same hook once the server is up.
//
// A server that dies during a test (a crash) fails that test with the
// signal and the end of the server's log; it is then started again on the
// same data dir so that one crash does not fail every later test of the
// file, and after() fails the file listing every crash.
function useServer({ before, after, beforeEach, afterEach }, { connectOptions, setup, start = {} } = {}) {
  const { connect } = require('./reflect');
  const crashes = [];
  const ctx = {
    server: null,
    conn: null,
    crashes,
    get api() {
      if (!this.conn) throw new Error('no connection to tlsplane-server (it did not start, or has stopped)');
      return this.conn.api;
    },
    async restart() {
      if (this.conn) this.conn.close();
      this.conn = null;
      await this.server.restart();
      this.conn = await connect(this.server.address, this.server.connectOptions(connectOptions));
      return this;
    },
    // Starts the server again after a crash, same data dir.
    async revive() {
      if (this.conn) this.conn.close();
      this.conn = null;
      await this.server._spawn();
      this.conn = await connect(this.server.address, this.server.connectOptions(connectOptions));
    },
  };
  const noteCrash = (when) => {
    const s = ctx.server;
    const text = `tlsplane-server died ${when} (exit code ${s.exit.code}, signal ${s.exit.signal}); log tail:\n${s.tail(20)}`;
    crashes.push(text);
    return text;
  };
  before(async () => {
    ctx.server = await Server.start(start);
    ctx.conn = await connect(ctx.server.address, ctx.server.connectOptions(connectOptions));
    if (setup) await setup(ctx);
  });
  if (beforeEach) {
    beforeEach(async () => {
      if (ctx.server && ctx.server.crashed) {
        noteCrash('before this test (noticed late)');
        await ctx.revive();
      }
    });
  }
  if (afterEach) {
    afterEach(async (t) => {
      if (!ctx.server || ctx.server.stopRequested) return;
      if (ctx.server.running && ctx.conn) {
        // A crash shows as a dropped connection before the exit is reaped:
        // one health check tells a live server from a dying one.
        const health = ctx.conn.api['grpc.health.v1.Health'];
        let alive = true;
        try {
          await health.Check({ service: '' }, { deadlineMs: 3000 });
        } catch (_) {
          alive = false;
        }
        if (!alive) {
          let timer;
          await Promise.race([
            ctx.server.exited,
            new Promise((resolve) => {
              timer = setTimeout(resolve, 3000);
            }),
          ]);
          clearTimeout(timer);
          if (ctx.server.running) throw new Error(`tlsplane-server stopped answering health checks during "${t.name}"`);
        }
      }
      if (!ctx.server.crashed) return;
      const text = noteCrash(`during "${t.name}"`);
      await ctx.revive();
      throw new Error(`${text}\n(restarted on the same data dir for the tests after this one)`);
    });
  }
  after(async () => {
    if (ctx.conn) ctx.conn.close();
    if (ctx.server && ctx.server.crashed) noteCrash('at the end of the file');
    if (ctx.server && ctx.server.running) {
      // A server that does not exit cleanly on SIGTERM is a bug wherever it
      // shows: this fails the file's run.
      await ctx.server.stopClean();
    }
    assert.equal(crashes.length, 0, `tlsplane-server crashed ${crashes.length} time(s) in this file:\n${crashes.join('\n---\n')}`);
  });
  return ctx;
}

module.exports = { Server, useServer, serverBinary, noteSecret, secretsIn };
