'use strict';
// Real TLS clients for the agent tests: Node's tls.connect, `openssl
// s_client`, curl, plain TCP, and a tap that sees the TLS records a server
// sends. Everything on 127.0.0.1, every wait bounded.

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const net = require('node:net');
const tls = require('node:tls');
const { tool } = require('./tools');
const { deadline } = require('./wait');

const HOST = '127.0.0.1';

function delay(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// "AB:CD:..." SHA-256 fingerprint of a PEM or DER certificate, the form
// pki.describe() and Node's getPeerCertificate().fingerprint256 use.
function fingerprint(cert) {
  return new crypto.X509Certificate(cert).fingerprint256;
}

// ---------------------------------------------------------------------------
// Node's tls.connect

// What a connected client can see of its connection (Node's names).
function describe(sock) {
  const cert = sock.getPeerCertificate(true);
  const cipher = sock.getCipher();
  return {
    authorized: sock.authorized,
    authorizationError: sock.authorizationError || null,
    fingerprint: cert && cert.fingerprint256 ? cert.fingerprint256 : null,
    subjectCN: cert && cert.subject ? cert.subject.CN : null,
    chainLength: (() => {
      let n = 0;
      const seen = new Set();
      for (let c = cert; c && c.fingerprint256 && !seen.has(c.fingerprint256); c = c.issuerCertificate) {
        seen.add(c.fingerprint256);
        n++;
      }
      return n;
    })(),
    protocol: sock.getProtocol(), // "TLSv1.3"
    cipher: cipher ? cipher.name : null, // OpenSSL name
    alpn: sock.alpnProtocol || null,
    reused: sock.isSessionReused(),
    ephemeral: sock.getEphemeralKeyInfo(), // {type:'ECDH', name:'X25519'} / {type:'DH', size:2048}
  };
}

// Connects, completes the handshake, sends `send` and waits for the same
// bytes back through the agent and its echo upstream, then ends with
// close_notify. Never throws for a TLS failure: resolves with
//   { ok, phase, error, code, info, session, sessions, echoed }
// phase: 'handshake' (no secureConnect), 'data' (handshake done, but the
// echo did not come back: TLS 1.3 client-certificate refusals arrive
// here), or 'done'. session: the last session the server gave (a ticket
// or an ID), for opts.session of a later call. With send '' nothing is
// sent and the exchange is done once the server's first session arrives
// (timed out when it gives none).
//
// opts: tls.connect options; by default the server certificate is not
// verified (rejectUnauthorized false unless opts.ca is given, no hostname
// check) and no SNI is sent unless opts.servername.
function exchange(port, opts = {}, { send = 'ping\n', timeoutMs = 10000, keepOpen = false } = {}) {
  return new Promise((resolve) => {
    const sessions = [];
    let info = null;
    let settled = false;
    let received = Buffer.alloc(0);
    const want = Buffer.from(send);
    const connectOpts = {
      host: HOST,
      port,
      rejectUnauthorized: !!opts.ca,
      checkServerIdentity: () => undefined,
      ...opts,
    };
    const sock = tls.connect(connectOpts);
    const finish = (result) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      result.sessions = sessions;
      result.session = sessions.length ? sessions[sessions.length - 1] : null;
      result.info = info;
      result.echoed = received.toString();
      result.socket = sock;
      if (!keepOpen || !result.ok) {
        if (result.ok) sock.end();
        else sock.destroy();
      }
      resolve(result);
    };
    const timer = setTimeout(() => {
      finish({ ok: false, phase: info ? 'data' : 'handshake', error: `timed out after ${timeoutMs} ms`, code: 'TIMEOUT' });
    }, timeoutMs);
    sock.on('session', (s) => {
      sessions.push(s);
      // Nothing to send: done once the server's session (a TLS 1.3
      // ticket arrives after the handshake) is here.
      if (!want.length && info) finish({ ok: true, phase: 'done' });
    });
    sock.on('secureConnect', () => {
      info = describe(sock);
      if (!want.length) {
        if (sessions.length) finish({ ok: true, phase: 'done' });
        return;
      }
      sock.write(want);
    });
    sock.on('data', (d) => {
      received = Buffer.concat([received, d]);
      if (received.length >= want.length) {
        if (received.subarray(0, want.length).equals(want)) finish({ ok: true, phase: 'done' });
        else finish({ ok: false, phase: 'data', error: `echo mismatch: ${received.toString().slice(0, 80)}`, code: 'MISMATCH' });
      }
    });
    sock.on('error', (err) => {
      finish({ ok: false, phase: info ? 'data' : 'handshake', error: err.message, code: err.code || null, library: err.library, reason: err.reason });
    });
    sock.on('close', () => {
      finish({ ok: false, phase: info ? 'data' : 'handshake', error: 'closed by the server', code: 'CLOSED' });
    });
  });
}

// A connection kept open after its handshake (for counting, limits,
// connections that must survive a reload). Resolves { sock, info } or
// rejects with the TLS error.
function openTls(port, opts = {}, { timeoutMs = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({
      host: HOST,
      port,
      rejectUnauthorized: !!opts.ca,
      checkServerIdentity: () => undefined,
      ...opts,
    });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`TLS handshake with 127.0.0.1:${port} not done within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.once('secureConnect', () => {
      clearTimeout(timer);
      sock.removeListener('error', onError);
      sock.on('error', () => {});
      resolve({ sock, info: describe(sock) });
    });
    const onError = (err) => {
      clearTimeout(timer);
      reject(err);
    };
    sock.once('error', onError);
  });
}

// Writes `text` on an open TLS socket and waits for it to come back.
function echoOn(sock, text, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const want = Buffer.from(text);
    let got = Buffer.alloc(0);
    const onData = (d) => {
      got = Buffer.concat([got, d]);
      if (got.length >= want.length) {
        cleanup();
        if (got.subarray(0, want.length).equals(want)) resolve(got.toString());
        else reject(new Error(`echo mismatch: got ${JSON.stringify(got.toString().slice(0, 80))}`));
      }
    };
    const onEnd = () => {
      cleanup();
      reject(new Error(`connection ended before the echo of ${JSON.stringify(text)} (got ${got.length} bytes)`));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no echo of ${JSON.stringify(text)} within ${timeoutMs} ms`));
    }, timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('close', onEnd);
    };
    sock.on('data', onData);
    sock.on('end', onEnd);
    sock.on('close', onEnd);
    sock.write(want);
  });
}

// Resolves when sock closes, with how long that took; rejects after
// timeoutMs (the socket is then destroyed).
function closedWithin(sock, timeoutMs) {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    if (sock.destroyed) {
      resolve({ ms: 0 });
      return;
    }
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`the connection was still open after ${timeoutMs} ms`));
    }, timeoutMs);
    sock.once('close', (hadError) => {
      clearTimeout(timer);
      resolve({ ms: Date.now() - t0, hadError });
    });
  });
}

// ---------------------------------------------------------------------------
// Plain TCP

// A TCP connection that sends nothing unless told. Resolves once connected
// with { sock, closed } where closed resolves { ms, bytes } when the peer
// closes (ms from the connect); localPort is the client's port (the
// agent's log names the client by it).
function rawConnect(port) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: HOST, port });
    let bytes = 0;
    let t0;
    sock.on('data', (d) => {
      bytes += d.length;
    });
    sock.on('error', () => {});
    const closed = new Promise((r) => {
      sock.on('close', () => r({ ms: Date.now() - t0, bytes }));
    });
    sock.once('connect', () => {
      t0 = Date.now();
      resolve({ sock, closed, localPort: sock.localPort });
    });
    sock.once('error', reject);
  });
}

// ---------------------------------------------------------------------------
// openssl s_client

// An `openssl s_client` process, driven line by line.
//   const c = SClient.start(port, ['-tls1_2', '-servername', 'x']);
//   await c.waitFor(/Verify return code/);     // stdout + stderr so far
//   c.write('R\n'); c.end();
//   const r = await c.done();                   // { code, out } once exited
// By default the output is parsed by parseSClient() at done().
class SClient {
  static start(port, args = [], { timeoutMs = 15000 } = {}) {
    const c = new SClient();
    c.out = '';
    c.waiters = [];
    c.proc = spawn(tool('openssl'), ['s_client', '-connect', `${HOST}:${port}`, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    const onData = (d) => {
      c.out += d.toString();
      for (const w of [...c.waiters]) w();
    };
    c.proc.stdout.on('data', onData);
    c.proc.stderr.on('data', onData);
    c.proc.stdin.on('error', () => {});
    c.exited = new Promise((resolve) => {
      c.proc.on('exit', (code, signal) => {
        c.exit = { code, signal };
        for (const w of [...c.waiters]) w();
        resolve(c.exit);
      });
    });
    c.killTimer = setTimeout(() => c.proc.kill('SIGKILL'), timeoutMs);
    return c;
  }

  write(text) {
    this.proc.stdin.write(text);
  }

  end() {
    this.proc.stdin.end();
  }

  // Resolves with the output once it matches re (searching from `from`);
  // rejects if s_client exits first or after timeoutMs.
  waitFor(re, { from = 0, timeoutMs = 10000 } = {}) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const text = this.out.slice(from);
        if (re.test(text)) {
          done();
          resolve(this.out);
        } else if (this.exit) {
          done();
          reject(new Error(`s_client exited (${this.exit.code}) before ${re}; output:\n${this.out.slice(-3000)}`));
        }
      };
      const cancel = deadline(timeoutMs, () => {
        done();
        reject(new Error(`s_client: no ${re} within ${timeoutMs} ms; output:\n${this.out.slice(-3000)}`));
      });
      const done = () => {
        cancel();
        this.waiters = this.waiters.filter((w) => w !== check);
      };
      this.waiters.push(check);
      check();
    });
  }

  async done() {
    await this.exited;
    clearTimeout(this.killTimer);
    return { ...this.exit, out: this.out, ...parseSClient(this.out) };
  }

  kill() {
    this.proc.kill('SIGKILL');
  }
}

// One s_client run: connects, optionally sends `input` (default: a line
// that the echo upstream returns, waited for so that TLS 1.3 tickets are
// read), closes stdin, and resolves with the parsed output.
async function sclient(port, args = [], { input = 'hello-s_client\n', expectEcho = true, timeoutMs = 15000 } = {}) {
  const c = SClient.start(port, args, { timeoutMs });
  try {
    await c.waitFor(/^(New|Reused), [\s\S]*^---$/m, { timeoutMs });
    if (input) {
      const from = c.out.length;
      c.write(input);
      // s_client does not print what it sends: the line seen is the echo.
      if (expectEcho) await c.waitFor(new RegExp(escapeRe(input.trim())), { from, timeoutMs: 5000 }).catch(() => {});
    }
  } catch (_) {
    // the handshake failed: the output says why
  }
  c.end();
  return c.done();
}

function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

// What s_client printed, as facts.
function parseSClient(out) {
  const r = {};
  const m1 = /^(New|Reused), (TLSv[\d.]+|SSLv3), Cipher is (\S+)/m.exec(out);
  r.handshake = !!m1;
  r.reused = m1 ? m1[1] === 'Reused' : false;
  // "New, TLSv1.0, Cipher is X" names the cipher's version; the protocol
  // negotiated is in the SSL-Session block.
  const proto = /^\s*Protocol\s*: (\S+)$/m.exec(out);
  r.protocol = m1 ? (proto ? proto[1] : m1[2]) : null;
  r.cipher = m1 ? m1[3] : null;
  if (r.cipher === '(NONE)') r.handshake = false;
  const alpn = /^ALPN protocol: (.+)$/m.exec(out);
  r.alpn = alpn ? alpn[1].trim() : null;
  const npn = /^Next protocol: \((\d)\) (.*)$/m.exec(out);
  r.npn = npn ? { status: Number(npn[1]), protocol: npn[2].trim() } : null;
  r.noNpn = /^No NPN negotiated$/m.test(out);
  r.ocspStapled = /OCSP Response Status: successful/.test(out);
  r.ocspNone = /OCSP response: no response sent/.test(out);
  const ocspSerial = /OCSP Response Data:[\s\S]*?Serial Number: ([0-9A-Fa-f]+)/.exec(out);
  r.ocspSerial = ocspSerial ? ocspSerial[1].toUpperCase() : null;
  const ns = /OCSP Response Data:[\s\S]*?Next Update: (.+)/.exec(out);
  r.ocspNextUpdate = ns ? new Date(ns[1].trim()) : null;
  // The server's leaf: after "Server certificate" (or first in the
  // "Certificate chain" of -showcerts), not the OCSP responder's
  // certificate that -status prints earlier.
  const PEM = '(-----BEGIN CERTIFICATE-----[\\s\\S]+?-----END CERTIFICATE-----)';
  const pem = new RegExp(`^Server certificate\\n${PEM}`, 'm').exec(out) || new RegExp(`^Certificate chain\\n[\\s\\S]*?${PEM}`, 'm').exec(out);
  r.certPem = pem ? pem[1] : null;
  r.fingerprint = pem ? fingerprint(pem[1]) : null;
  const tk = /^Server Temp Key: (.+)$/m.exec(out);
  r.tempKey = tk ? tk[1].trim() : null;
  const alert = /alert ([a-z ]+?)(?::|\n|$)/m.exec(out);
  r.alert = alert ? alert[1].trim() : null;
  r.renegotiations = (out.match(/^RENEGOTIATING/gm) || []).length;
  return r;
}

// ---------------------------------------------------------------------------
// TLS records a server sends

// A TCP relay in front of `port` that parses the TLS record headers of the
// server-to-client stream. Connect a client to tap.port; tap.records lists
// {type, length} of every record the server sent (type 23: application
// data; in TLS 1.3 everything after the ServerHello is type 23).
async function recordTap(port) {
  const records = [];
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: HOST, port });
    sockets.add(client);
    sockets.add(upstream);
    let pending = Buffer.alloc(0);
    upstream.on('data', (d) => {
      pending = Buffer.concat([pending, d]);
      while (pending.length >= 5) {
        const len = pending.readUInt16BE(3);
        if (pending.length < 5 + len) break;
        records.push({ type: pending[0], length: len });
        pending = pending.subarray(5 + len);
      }
      client.write(d);
    });
    client.on('data', (d) => upstream.write(d));
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => sockets.delete(client));
    upstream.on('close', () => sockets.delete(upstream));
  });
  await new Promise((r) => server.listen(0, HOST, r));
  return {
    port: server.address().port,
    records,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

// ---------------------------------------------------------------------------
// curl

// curl against https://NAME:PORT/PATH resolved to 127.0.0.1. Resolves
// { code, status, size, stdout, stderr }. args: extra curl arguments.
function curl(port, urlPath, { name = 'www.example.com', args = [], timeoutMs = 60000 } = {}) {
  const bin = tool('curl');
  return new Promise((resolve) => {
    const proc = spawn(bin, [
      '-sS', '--insecure', '--max-time', String(Math.ceil(timeoutMs / 1000)),
      '--resolve', `${name}:${port}:${HOST}`,
      '-w', '\n%{http_code} %{size_download} %{size_upload}',
      ...args,
      `https://${name}:${port}${urlPath}`,
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out = [];
    let err = '';
    proc.stdout.on('data', (d) => out.push(d));
    proc.stderr.on('data', (d) => {
      err += d.toString();
    });
    proc.on('exit', (code) => {
      const stdout = Buffer.concat(out).toString();
      const last = stdout.slice(stdout.lastIndexOf('\n') + 1).split(' ');
      resolve({
        code,
        status: Number(last[0]),
        size: Number(last[1]),
        uploaded: Number(last[2]),
        body: stdout.slice(0, stdout.lastIndexOf('\n')),
        stderr: err,
      });
    });
  });
}

module.exports = {
  HOST,
  delay,
  fingerprint,
  describe,
  exchange,
  openTls,
  echoOn,
  closedWithin,
  rawConnect,
  SClient,
  sclient,
  parseSClient,
  recordTap,
  curl,
};
