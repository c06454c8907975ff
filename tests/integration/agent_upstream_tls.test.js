'use strict';
// upstream_tls (tls.connect): the agent re-encrypts to its upstreams.
// Real upstreams on loopback: Node's tls.createServer (which records the
// SNI, ALPN, client certificate and session reuse it saw) and `openssl
// s_server`: `-Verify 1` (a required client certificate) and
// `-nextprotoneg` (NPN, which Node's servers no longer speak). An upstream that
// does not verify, or refuses the agent, closes the client's connection
// with nothing of the client's data sent on, counted by cause.

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const tls = require('node:tls');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash, freePort } = require('./lib/agent');
const { HOST } = require('./lib/tlsclient');
const { waitFor } = require('./lib/wait');

// A TLS echo upstream that records every connection: servername, ALPN,
// client certificate CN, session reuse and the bytes it received.
async function nodeUpstream({ cert, key, ca, requestCert = false, alpn, path: sockPath, raw = false, ...more } = {}) {
  const seen = [];
  const failures = [];
  const server = tls.createServer({
    cert, key, ca, requestCert, rejectUnauthorized: requestCert, ALPNProtocols: alpn, ...more,
  }, (sock) => {
    const peer = sock.getPeerCertificate();
    const rec = {
      servername: sock.servername || null,
      alpn: sock.alpnProtocol || null,
      clientCn: peer && peer.subject ? peer.subject.CN : null,
      reused: sock.isSessionReused(),
      protocol: sock.getProtocol(),
      cipher: sock.getCipher().name,
      bytes: 0,
    };
    seen.push(rec);
    sock.on('data', (d) => {
      rec.bytes += d.length;
      sock.write(raw ? d : Buffer.concat([Buffer.from('echo:'), d]));
    });
    sock.on('error', () => {});
  });
  // TLS 1.3 resumption needs tickets, which Node sends by default.
  server.on('tlsClientError', (err) => failures.push(err.code || err.message));
  await new Promise((resolve) => (sockPath ? server.listen(sockPath, resolve) : server.listen(0, HOST, resolve)));
  return {
    address: sockPath ? `unix:${sockPath}` : `${HOST}:${server.address().port}`,
    seen,
    failures,
    bytesIn: () => seen.reduce((a, r) => a + r.bytes, 0),
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

// openssl s_server -rev (each line comes back reversed) with `args`, by
// default -Verify 1: a required client certificate. Its output tells who
// connected (unbuffered, stdbuf -o0: -trace lines arrive as written).
async function opensslUpstream(p, args = ['-CAfile', p.ca.certFile, '-Verify', '1']) {
  const port = await freePort();
  const proc = spawn('stdbuf', [
    '-o0', 'openssl', 's_server', '-accept', `${HOST}:${port}`, '-cert', p.rsa.certFile, '-key', p.rsa.keyFile,
    '-rev', ...args,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (d) => { out += d; });
  proc.stderr.on('data', (d) => { out += d; });
  await waitFor('openssl s_server ACCEPT', () => out.includes('ACCEPT'), { timeoutMs: 10000 });
  return {
    address: `${HOST}:${port}`,
    output: () => out,
    close: () => new Promise((resolve) => {
      proc.on('exit', resolve);
      proc.kill('SIGTERM');
    }),
  };
}

// The bytes of a hex dump in `openssl s_server -trace` output: lines of
// "0000 - 08 68 74 ...-...   .ht..." (the ASCII column after three spaces).
function traceBytes(dump) {
  const bytes = [];
  for (const line of dump.trim().split('\n')) {
    const hex = line.trim().split(/ {3}/)[0].replace(/^[0-9a-f]{4} - /, '');
    for (const h of hex.split(/[ -]/)) if (/^[0-9a-f]{2}$/.test(h)) bytes.push(parseInt(h, 16));
  }
  return Buffer.from(bytes);
}

// The protocol of every NPN NextProtocol message in `openssl s_server
// -trace` output, in order: "NextProto, Length=N", a line, then a hex dump
// whose first byte is the length of the protocol chosen.
function npnChosen(out) {
  const chosen = [];
  for (const m of out.matchAll(/NextProto, Length=\d+\n.*\n((?:[ \t]+[0-9a-f]{4} - .*\n)+)/g)) {
    const bytes = traceBytes(m[1]);
    chosen.push(bytes.subarray(1, 1 + bytes[0]).toString());
  }
  return chosen;
}

// The pre_shared_key extensions (RFC 8446, 4.2.11) in `openssl s_server
// -trace` output: `offered`, the first PSK identity (a ticket) of each
// ClientHello that offered one, in hex; `accepted`, how many ServerHellos
// selected one (their extension is the 2-byte selected_identity).
function pskSeen(out) {
  const offered = [];
  let accepted = 0;
  for (const m of out.matchAll(/extension_type=psk\(41\), length=(\d+)\n((?:[ \t]+[0-9a-f]{4} - .*\n)+)/g)) {
    const b = traceBytes(m[2]);
    if (Number(m[1]) === 2) accepted++;
    else offered.push(b.subarray(4, 4 + b.readUInt16BE(2)).toString('hex'));
  }
  return { offered, accepted };
}

// A TCP relay to `target` that, once armed with hold(n), keeps each new
// connection waiting until n have arrived and then lets them all through:
// n upstream connections of the agent all start before any of them has a
// handshake with the upstream, so none can get a ticket another brought.
async function gatedRelay(target) {
  const i = target.lastIndexOf(':');
  let want = 0;
  let held = [];
  const pass = (client) => {
    const up = net.connect(Number(target.slice(i + 1)), target.slice(0, i));
    for (const [a, b] of [[client, up], [up, client]]) {
      a.pipe(b);
      a.on('error', () => b.destroy());
      a.on('close', () => b.destroy());
    }
  };
  const server = net.createServer((client) => {
    held.push(client);
    if (held.length >= want) {
      const go = held;
      held = [];
      go.forEach(pass);
    }
  });
  await new Promise((resolve) => server.listen(0, HOST, resolve));
  return {
    address: `${HOST}:${server.address().port}`,
    hold: (n) => { want = n; },
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

// Connects to the agent, sends data, and reads until the connection ends
// or `want` bytes came back.
function talk(port, data, want, opts = {}) {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host: HOST, port, rejectUnauthorized: false, ...opts });
    const chunks = [];
    let error = null;
    sock.on('secureConnect', () => sock.write(data));
    sock.on('data', (d) => {
      chunks.push(d);
      if (want && Buffer.concat(chunks).length >= want) sock.end();
    });
    sock.on('error', (err) => { error = err.code || err.message; });
    sock.on('close', () => resolve({ data: Buffer.concat(chunks).toString(), error }));
    setTimeout(() => reject(new Error(`the agent neither answered nor closed within 10 s (${JSON.stringify(opts)}: ${Buffer.concat(chunks)})`)), 10000).unref();
  });
}

describe('upstream_tls: TLS from the agent to its upstreams', () => {
  let p;
  let x;
  let agent;
  let good;
  let mtls;
  let resume;
  let resume13;
  let ossl;
  let npnUp;
  let dhe;
  let osslDhe2048;
  let osslDhe1024;
  let bulk;
  let unixTls;
  let unixClear;
  let tmp;
  let all;
  let trustCa2Context;

  before(async () => {
    p = pki();
    x = p.agentExtras();
    good = await nodeUpstream({ cert: p.rsa.cert, key: p.rsa.key, alpn: ['h2', 'x-up'] });
    mtls = await nodeUpstream({ cert: p.rsa.cert, key: p.rsa.key, ca: p.ca.cert, requestCert: true });
    resume = await nodeUpstream({ cert: p.rsa.cert, key: p.rsa.key });
    resume13 = await nodeUpstream({ cert: p.rsa.cert, key: p.rsa.key });
    bulk = await nodeUpstream({ cert: p.rsa.cert, key: p.rsa.key, raw: true });
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-up-'));
    unixTls = await nodeUpstream({ cert: p.rsa.cert, key: p.rsa.key, path: path.join(tmp, 'tls.sock') });
    unixClear = net.createServer((sock) => {
      sock.on('data', (d) => sock.write(Buffer.concat([Buffer.from('plain:'), d])));
      sock.on('error', () => {});
    });
    await new Promise((resolve) => unixClear.listen(path.join(tmp, 'clear.sock'), resolve));
    // DHE only, a 2048-bit group (Node's 'auto' for a 2048-bit RSA key).
    dhe = await nodeUpstream({
      cert: p.rsa.cert, key: p.rsa.key, dhparam: 'auto', ciphers: 'DHE-RSA-AES128-GCM-SHA256', maxVersion: 'TLSv1.2',
    });
    ossl = await opensslUpstream(p);
    npnUp = await opensslUpstream(p, ['-tls1_2', '-nextprotoneg', 'spdy/3,http/1.1', '-trace']);
    // DHE only, TLS 1.2, with pki's groups: RFC 7919 ffdhe2048 and a
    // 1024-bit one, which s_server takes only below security level 2. (No
    // OpenSSL 3 server takes a 512-bit group, at any level.)
    const dheArgs = (f, level = '') => ['-tls1_2', '-cipher', `DHE-RSA-AES128-GCM-SHA256${level}`, '-dhparam', p.file(f)];
    osslDhe2048 = await opensslUpstream(p, dheArgs('dh2048.pem'));
    osslDhe1024 = await opensslUpstream(p, dheArgs('dh1024.pem', ':@SECLEVEL=1'));
    const web = tlsContext('web', { certs: [p.rsa] });
    const trustCa = tlsContext('up-ca', { client: true, ca: p.ca.cert, alpnProtocols: ['x-up'] });
    const trustCa2 = tlsContext('up-ca2', { client: true, ca: p.ca2.cert });
    const withCert = tlsContext('up-alice', { client: true, ca: p.ca.cert, certs: [x.alice] });
    const tls12 = tlsContext('up-tls12', {
      client: true, ca: p.ca.cert,
      policy: { minVersion: 'TLS_1_2', maxVersion: 'TLS_1_2', ciphers: 'ECDHE-RSA-CHACHA20-POLY1305' },
    });
    const dheOnly = tlsContext('up-dhe', {
      client: true, ca: p.ca.cert,
      policy: { minVersion: 'TLS_1_2', maxVersion: 'TLS_1_2', ciphers: 'DHE-RSA-AES128-GCM-SHA256' },
    });
    // The same at security level 1, which lets OpenSSL take a 1024-bit
    // group: then min_dh_size is what refuses it.
    const dheOnlyLevel1 = tlsContext('up-dhe-l1', {
      client: true, ca: p.ca.cert,
      policy: { minVersion: 'TLS_1_2', maxVersion: 'TLS_1_2', ciphers: 'DHE-RSA-AES128-GCM-SHA256:@SECLEVEL=1' },
    });
    const tls13 = tlsContext('up-tls13', {
      client: true, ca: p.ca.cert,
      policy: { minVersion: 'TLS_1_3', maxVersion: 'TLS_1_3', ciphersuites: 'TLS_AES_256_GCM_SHA384' },
    });
    const webAlpn = tlsContext('web-alpn', { certs: [p.rsa], alpnProtocols: ['h2', 'http/1.1'] });
    const npn = tlsContext('up-npn', { client: true, ca: p.ca.cert, npnProtocols: ['h2', 'http/1.1'] });
    const npnOther = tlsContext('up-npn-other', { client: true, ca: p.ca.cert, npnProtocols: ['x-other', 'h2'] });
    const L = (name, upstream, upstreamTls, defaultContext = web) => listener(name, { upstream, defaultContext, upstreamTls });
    all = (sniContext) => [
      L('sni', good.address, { context: sniContext, servername: 'www.example.com' }),
      L('by-ip', good.address, { context: trustCa }),
      L('untrusted', good.address, { context: trustCa2, servername: 'www.example.com' }),
      L('wrong-name', good.address, { context: trustCa, checkServerIdentity: 'other.example.com' }),
      L('mtls', mtls.address, { context: withCert }),
      L('mtls-nocert', mtls.address, { context: trustCa }),
      L('ossl', ossl.address, { context: withCert }),
      L('ossl-nocert', ossl.address, { context: trustCa }),
      L('resume', resume.address, { context: tls12 }),
      L('resume13', resume13.address, { context: tls13 }),
      L('dhe', dhe.address, { context: dheOnly }),
      L('bulk', bulk.address, { context: trustCa }),
      L('noverify', good.address, { context: tlsContext('up-none', { client: true }), rejectUnauthorized: false }),
      L('unix-tls', unixTls.address, { context: trustCa, servername: 'www.example.com' }),
      listener('unix-clear', { upstream: `unix:${path.join(tmp, 'clear.sock')}`, defaultContext: web }),
      L('dhe-3072', dhe.address, { context: dheOnly, minDhSize: 3072 }),
      L('dhe-ossl', osslDhe2048.address, { context: dheOnly }),
      L('dhe-ossl-1024', osslDhe1024.address, { context: dheOnly }),
      L('dhe-ossl-1024-l1', osslDhe1024.address, { context: dheOnlyLevel1 }),
      L('dhe-ossl-1024-min', osslDhe1024.address, { context: dheOnlyLevel1, minDhSize: 2048 }),
      L('npn', npnUp.address, { context: npn }),
      L('npn-other', npnUp.address, { context: npnOther }),
      L('pass', good.address, {
        context: trustCa, servername: 'example.com', servernameFromClient: true, alpnFromClient: true,
      }, webAlpn),
    ];
    trustCa2Context = trustCa2;
    agent = await Agent.start(snapshot(1, all(trustCa)));
  });

  after(async () => {
    if (agent) await agent.stopClean();
    for (const u of [good, mtls, resume, resume13, dhe, bulk, unixTls, ossl, npnUp, osslDhe2048, osslDhe1024]) if (u) await u.close();
    if (unixClear) await new Promise((resolve) => unixClear.close(resolve));
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });
  failOnCrash({ afterEach }, () => [agent]);

  const errors = (m, listenerName, cause) =>
    m.get('tlsplane_client_errors_total', { listener: `listeners/${listenerName}`, cause });

  test('data both ways through TLS; the upstream sees the configured SNI and the ALPN list', async () => {
    const r = await talk(agent.port('sni'), 'ping', 'echo:ping'.length);
    assert.equal(r.data, 'echo:ping');
    const rec = good.seen.at(-1);
    assert.equal(rec.servername, 'www.example.com');
    assert.equal(rec.alpn, 'x-up', 'the context\'s alpn_protocols are offered to the upstream');
    assert.equal(rec.clientCn, null, 'no client certificate configured, none sent');
  });

  test('8 MB each way through both TLS legs: the echo comes back intact', async () => {
    const payload = crypto.randomBytes(8 * 1024 * 1024);
    const back = await new Promise((resolve, reject) => {
      const sock = tls.connect({ host: HOST, port: agent.port('bulk'), rejectUnauthorized: false });
      const chunks = [];
      let n = 0;
      sock.on('secureConnect', () => sock.write(payload));
      sock.on('data', (d) => {
        chunks.push(d);
        n += d.length;
        if (n >= payload.length) sock.end();
      });
      sock.on('error', reject);
      sock.on('close', () => resolve(Buffer.concat(chunks)));
      setTimeout(() => reject(new Error(`only ${n} bytes back within 30 s`)), 30000).unref();
    });
    assert.equal(back.length, payload.length);
    assert.ok(back.equals(payload), 'the echo changed on its way');
    assert.equal(bulk.bytesIn(), payload.length);
  });

  test('half-close: the client\'s close_notify goes upstream as close_notify + FIN; the echo after it and the end come back', async () => {
    const result = await new Promise((resolve, reject) => {
      const sock = tls.connect({ host: HOST, port: agent.port('bulk'), rejectUnauthorized: false, allowHalfOpen: true });
      const chunks = [];
      sock.on('secureConnect', () => {
        sock.write('last words');
        sock.end();
      });
      sock.on('data', (d) => chunks.push(d));
      sock.on('end', () => resolve(Buffer.concat(chunks).toString()));
      sock.on('error', reject);
      setTimeout(() => reject(new Error('no end within 10 s')), 10000).unref();
    });
    assert.equal(result, 'last words');
  });

  test('servername_from_client / alpn_from_client: the client\'s SNI and ALPN protocol go upstream (verified against that name); without them, the configured ones', async () => {
    const r = await talk(agent.port('pass'), 'a', 'echo:a'.length, { servername: 'www.example.com', ALPNProtocols: ['h2'] });
    assert.equal(r.data, 'echo:a');
    assert.deepEqual([good.seen.at(-1).servername, good.seen.at(-1).alpn], ['www.example.com', 'h2']);
    const r2 = await talk(agent.port('pass'), 'b', 'echo:b'.length);
    assert.equal(r2.data, 'echo:b');
    assert.deepEqual([good.seen.at(-1).servername, good.seen.at(-1).alpn], ['example.com', 'x-up']);
    // A client SNI the upstream's certificate does not carry: refused,
    // although this worker holds sessions of the upstream (verified for
    // other names: a session resumes only for the SNI it was made with).
    const m0 = await agent.metrics();
    const r3 = await talk(agent.port('pass'), 'c', 'echo:c'.length, { servername: 'nope.example.org' });
    assert.equal(r3.data, '');
    await agent.waitForMetrics((m) => errors(m, 'pass', 'upstream_verify') === errors(m0, 'pass', 'upstream_verify') + 1,
      { what: 'a client SNI the upstream does not carry refused' });
  });

  test('minDHSize: a 2048-bit DHE group passes the default (1024), not min_dh_size 3072; nothing reaches that upstream', async () => {
    const r = await talk(agent.port('dhe'), 'd', 'echo:d'.length);
    assert.equal(r.data, 'echo:d');
    assert.equal(dhe.seen.at(-1).cipher, 'DHE-RSA-AES128-GCM-SHA256');
    const m0 = await agent.metrics();
    const bytes0 = dhe.bytesIn();
    const r2 = await talk(agent.port('dhe-3072'), 'e');
    assert.equal(r2.data, '');
    await agent.waitForMetrics((m) => errors(m, 'dhe-3072', 'upstream_tls_handshake') ===
      errors(m0, 'dhe-3072', 'upstream_tls_handshake') + 1, { what: 'min_dh_size refusal counted' });
    assert.equal(dhe.bytesIn(), bytes0);
    await agent.waitForLog(/listener=listeners\/dhe-3072 client=\S+ cause=upstream_tls_handshake reason="[^"]*DH parameter size 2048 is less than min_dh_size 3072"/);
  });

  test('a DHE-only client policy (no DH parameters of its own) against openssl s_server -dhparam: a 2048-bit group is served; a 1024-bit one is refused by the security level, or at level 1 by min_dh_size 2048, counted', async () => {
    const r = await talk(agent.port('dhe-ossl'), 'dhe\n', 'ehd\n'.length);
    assert.equal(r.data, 'ehd\n');
    assert.match(osslDhe2048.output(), /Ciphersuite: DHE-RSA-AES128-GCM-SHA256/);
    // Level 1 and the default min_dh_size (1024, as Node's): taken.
    const r1 = await talk(agent.port('dhe-ossl-1024-l1'), 'l1\n', '1l\n'.length);
    assert.equal(r1.data, '1l\n');
    for (const [name, reason] of [
      ['dhe-ossl-1024', /reason="[^"]*dh key too small/],
      ['dhe-ossl-1024-min', /reason="[^"]*DH parameter size 1024 is less than min_dh_size 2048"/],
    ]) {
      const m0 = await agent.metrics();
      const r2 = await talk(agent.port(name), 'x\n');
      assert.equal(r2.data, '', `${name}: the client got data`);
      await agent.waitForMetrics((m) => errors(m, name, 'upstream_tls_handshake') ===
        errors(m0, name, 'upstream_tls_handshake') + 1, { what: `${name}: refusal counted` });
      await agent.waitForLog(new RegExp(`listener=listeners/${name} client=\\S+ cause=upstream_tls_handshake ${reason.source}`));
    }
  });

  test('Unix-socket upstreams (unix:/path): TLS with the name checked against servername, and cleartext', async () => {
    const r = await talk(agent.port('unix-tls'), 'u', 'echo:u'.length);
    assert.equal(r.data, 'echo:u');
    assert.equal(unixTls.seen.at(-1).servername, 'www.example.com');
    const r2 = await talk(agent.port('unix-clear'), 'v', 'plain:v'.length);
    assert.equal(r2.data, 'plain:v');
  });

  test('no servername: no SNI, and the certificate is checked against the upstream\'s IP address', async () => {
    const before = good.seen.length;
    const r = await talk(agent.port('by-ip'), 'hi', 'echo:hi'.length);
    assert.equal(r.data, 'echo:hi');
    assert.equal(good.seen.length, before + 1);
    assert.equal(good.seen.at(-1).servername, null);
  });

  test('reject_unauthorized false: no trust bundle, an upstream whose certificate would not verify is used (Node\'s rejectUnauthorized: false)', async () => {
    const r = await talk(agent.port('noverify'), 'nv', 'echo:nv'.length);
    assert.equal(r.data, 'echo:nv');
  });

  for (const [name, why] of [['untrusted', 'does not chain to the trust bundle'], ['wrong-name', 'does not carry check_server_identity']]) {
    test(`an upstream certificate that ${why}: the client is closed, nothing reaches the upstream, upstream_verify counted`, async () => {
      const m0 = await agent.metrics();
      const bytes0 = good.bytesIn();
      const seen0 = good.seen.length;
      const r = await talk(agent.port(name), 'secret data');
      assert.equal(r.data, '', 'nothing came back');
      await agent.waitForMetrics((m) => errors(m, name, 'upstream_verify') === errors(m0, name, 'upstream_verify') + 1,
        { what: `${name}: upstream_verify counted` });
      assert.equal(good.bytesIn(), bytes0, 'the client\'s data reached an unverified upstream');
      assert.equal(good.seen.length, seen0, 'the upstream completed a handshake');
      // the log line may follow the counter by a moment
      const line = new RegExp(`listener=listeners/${name} client=\\S+ cause=upstream_verify`);
      await waitFor(`${name}: the upstream_verify log line`, () => line.test(agent.log()), { timeoutMs: 5000 });
    });
  }

  test('a client certificate: presented to and accepted by the upstream (Node, requestCert)', async () => {
    const r = await talk(agent.port('mtls'), 'abc', 'echo:abc'.length);
    assert.equal(r.data, 'echo:abc');
    assert.equal(mtls.seen.at(-1).clientCn, 'alice');
  });

  test('no client certificate where the upstream requires one: refused, the client closed, counted', async () => {
    const m0 = await agent.metrics();
    const bytes0 = mtls.bytesIn();
    const r = await talk(agent.port('mtls-nocert'), 'abc');
    assert.equal(r.data, '');
    await agent.waitForMetrics((m) => errors(m, 'mtls-nocert', 'upstream_tls_handshake') ===
      errors(m0, 'mtls-nocert', 'upstream_tls_handshake') + 1, { what: 'upstream_tls_handshake counted' });
    assert.equal(mtls.bytesIn(), bytes0, 'data reached the application of an upstream that refused us');
  });

  test('openssl s_server -Verify 1: the client certificate is verified, data both ways; without one it is refused', async () => {
    const r = await talk(agent.port('ossl'), 'hello\n', 'olleh\n'.length);
    assert.equal(r.data, 'olleh\n');
    assert.match(ossl.output(), /Peer certificate: .*CN ?= ?alice/);
    const m0 = await agent.metrics();
    const r2 = await talk(agent.port('ossl-nocert'), 'hello\n');
    assert.equal(r2.data, '');
    await agent.waitForMetrics((m) => errors(m, 'ossl-nocert', 'upstream_tls_handshake') ===
      errors(m0, 'ossl-nocert', 'upstream_tls_handshake') + 1, { what: 'upstream_tls_handshake counted' });
    await waitFor('s_server refusing the agent without a certificate',
      () => /peer did not return a certificate/.test(ossl.output()), { timeoutMs: 5000 });
  });

  test('NPNProtocols (a client context\'s npn_protocols): a TLS 1.2 upstream (openssl s_server -nextprotoneg) gets the first protocol it advertises that the agent wants; none in common: the agent\'s first', async () => {
    for (const [name, want] of [['npn', 'http/1.1'], ['npn-other', 'x-other']]) {
      const n0 = npnChosen(npnUp.output()).length;
      const r = await talk(agent.port(name), 'hello\n', 'olleh\n'.length);
      assert.equal(r.data, 'olleh\n', `${name}: data both ways`);
      await waitFor(`${name}: the upstream's NextProtocol message`,
        () => npnChosen(npnUp.output()).length === n0 + 1, { timeoutMs: 5000 });
      assert.equal(npnChosen(npnUp.output()).at(-1), want, name);
    }
  });

  for (const [name, protocol, cipher, up] of [
    ['resume', 'TLSv1.2', 'ECDHE-RSA-CHACHA20-POLY1305', () => resume],
    ['resume13', 'TLSv1.3', 'TLS_AES_256_GCM_SHA384', () => resume13],
  ]) {
    test(`${protocol} (the context's min/max version and cipher): the next upstream connection of a worker resumes, by the upstream's own count and the agent's`, async () => {
      const m0 = await agent.metrics();
      const L = { listener: `listeners/${name}` };
      for (let i = 0; i < 4; i++) {
        const r = await talk(agent.port(name), `n${i}`, `echo:n${i}`.length);
        assert.equal(r.data, `echo:n${i}`);
      }
      const seen = up().seen;
      assert.deepEqual([...new Set(seen.map((s) => `${s.protocol} ${s.cipher}`))], [`${protocol} ${cipher}`]);
      const reused = seen.filter((s) => s.reused).length;
      // Two workers, four connections: at least one worker connects twice
      // and offers the session its first connection kept.
      assert.ok(reused >= 2, `the upstream saw too few resumed sessions: ${JSON.stringify(seen)}`);
      const m = await agent.waitForMetrics((mm) => mm.get('tlsplane_upstream_handshakes_total', L) -
        m0.get('tlsplane_upstream_handshakes_total', L) === 4, { what: 'four upstream handshakes' });
      assert.equal(m.get('tlsplane_upstream_resumptions_total', L) - m0.get('tlsplane_upstream_resumptions_total', L), reused);
    });
  }

  test('a new trust bundle applies to new upstream connections; an open one keeps the context it started with', async () => {
    const sock = tls.connect({ host: HOST, port: agent.port('sni'), rejectUnauthorized: false });
    const got = [];
    sock.on('data', (d) => got.push(d.toString()));
    await new Promise((resolve, reject) => { sock.once('secureConnect', resolve); sock.once('error', reject); });
    sock.write('one');
    await waitFor('the first echo', () => got.join('') === 'echo:one');
    // The listener now trusts only ca2: the upstream's certificate no
    // longer verifies, for new connections.
    const r = await agent.reload(snapshot(2, all(trustCa2Context)));
    assert.equal(r.applied, true, r.error || JSON.stringify(r.failed));
    const m0 = await agent.metrics();
    const fresh = await talk(agent.port('sni'), 'two');
    assert.equal(fresh.data, '', 'a new connection was proxied to an upstream the new trust bundle does not verify');
    await agent.waitForMetrics((m) => errors(m, 'sni', 'upstream_verify') === errors(m0, 'sni', 'upstream_verify') + 1,
      { what: 'the new connection refused (upstream_verify)' });
    sock.write('three');
    await waitFor('the open connection still echoing', () => got.join('') === 'echo:oneecho:three');
    sock.end();
  });

  test('a listener whose upstream_tls the agent cannot load is nacked by name; the others go on', async () => {
    const bad = listener('bad', {
      upstream: good.address, defaultContext: tlsContext('web', { certs: [p.rsa] }),
      upstreamTls: { context: tlsContext('web2', { certs: [p.rsa] }) },
    });
    const r = await agent.reload(snapshot(3, [...all(trustCa2Context), bad]));
    assert.deepEqual(r.failed.map((f) => f.listener), ['listeners/bad']);
    assert.match(r.failed[0].reason, /upstream_tls\.tls_context: tlsContexts\/web2 is not a client context/);
    const ok = await talk(agent.port('by-ip'), 'still', 'echo:still'.length);
    assert.equal(ok.data, 'echo:still');
  });
});

describe('upstream_tls: TLS 1.3 sessions to the upstream under concurrency', () => {
  let p;
  let agent;
  let ossl;
  let relay;

  before(async () => {
    p = pki();
    // Two tickets after each full handshake, one after each resumption
    // (OpenSSL's defaults), stateless: s_server would accept a ticket
    // twice, so only the agent keeps each to one use.
    ossl = await opensslUpstream(p, ['-tls1_3', '-trace']);
    relay = await gatedRelay(ossl.address);
    // The same at security level 1, which lets OpenSSL take a 1024-bit
    // group: then min_dh_size is what refuses it.
    const dheOnlyLevel1 = tlsContext('up-dhe-l1', {
      client: true, ca: p.ca.cert,
      policy: { minVersion: 'TLS_1_2', maxVersion: 'TLS_1_2', ciphers: 'DHE-RSA-AES128-GCM-SHA256:@SECLEVEL=1' },
    });
    const tls13 = tlsContext('up-tls13', { client: true, ca: p.ca.cert, policy: { minVersion: 'TLS_1_3' } });
    // One worker: every session kept is there for every next connection.
    agent = await Agent.start(snapshot(1, [listener('many', {
      upstream: relay.address, defaultContext: tlsContext('web', { certs: [p.rsa] }), upstreamTls: { context: tls13 },
    })]), { workers: 1 });
  });

  after(async () => {
    if (agent) await agent.stopClean();
    if (relay) await relay.close();
    if (ossl) await ossl.close();
  });
  failOnCrash({ afterEach }, () => [agent]);

  test('12 connections at once, then 24 at once: each of the 24 resumes (the upstream\'s count and the agent\'s), and no ticket is offered twice', async () => {
    const L = { listener: 'listeners/many' };
    const batch = async (tag, n) => {
      relay.hold(n);
      const lines = Array.from({ length: n }, (_, i) => `${tag}${i}`);
      const rs = await Promise.all(lines.map((l) => talk(agent.port('many'), `${l}\n`, l.length + 1)));
      rs.forEach((r, i) => assert.equal(r.data, `${[...lines[i]].reverse().join('')}\n`, `${lines[i]}: data both ways`));
    };
    await batch('a', 12);
    let seen = pskSeen(ossl.output());
    assert.deepEqual([seen.offered.length, seen.accepted], [0, 0], 'the first connections had no session to offer');
    // Their 24 tickets (two each) were kept; the next 24 connections,
    // started together, each take one.
    await batch('b', 24);
    // s_server's -trace reaches us through a pipe, after the data.
    const traced = (n) => waitFor(`s_server's trace of ${n} ClientHellos with a PSK and ${n} resumptions`, () => {
      const s = pskSeen(ossl.output());
      return s.offered.length >= n && s.accepted >= n ? s : null;
    }, { timeoutMs: 5000 }).catch(() => pskSeen(ossl.output()));
    seen = await traced(24);
    assert.equal(seen.offered.length, 24, 'each of the 24 offered a ticket');
    assert.equal(seen.accepted, 24, 'the upstream resumed each of them');
    assert.equal(new Set(seen.offered).size, 24, 'a ticket was offered twice');
    const m = await agent.waitForMetrics((mm) => mm.get('tlsplane_upstream_handshakes_total', L) === 36,
      { what: '36 upstream handshakes' });
    assert.equal(m.get('tlsplane_upstream_resumptions_total', L), 24);
    // And the tickets of those resumptions (one each) are new ones.
    await batch('c', 24);
    seen = await traced(48);
    assert.deepEqual([seen.offered.length, seen.accepted, new Set(seen.offered).size], [48, 48, 48]);
  });
});
