'use strict';
// The listener's limits and the 'clientError' causes they produce:
// handshakeTimeout, maxConnections, server.connections, the client
// renegotiation limit (tls.CLIENT_RENEG_LIMIT / CLIENT_RENEG_WINDOW), and
// setMaxSendFragment. Where Node only emits an event, the agent closes the
// connection and counts it (DESIGN.md).

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const tls = require('node:tls');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { exchange, openTls, echoOn, rawConnect, SClient, recordTap, delay, HOST } = require('./lib/tlsclient');

const errors = (m, name, cause) => m.get('tlsplane_client_errors_total', { listener: `listeners/${name}`, cause });

// Resolves with a socket's close, or rejects after ms.
function within(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    }),
  ]);
}

// A plain HTTP request to a TLS port: the handshake fails at once.
async function failedHandshake(port) {
  const c = await rawConnect(port);
  c.sock.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await c.closed;
  return c.localPort;
}

// Drives `openssl s_client -tls1_2` through client-initiated
// renegotiations ("R" on stdin, as the seed says). Each step sends "R",
// then a line, and waits for the echo: the line comes back only once the
// renegotiation handshake has completed. Resolves with the number of
// renegotiations that completed before the connection ended, or `steps`.
async function renegotiate(port, steps, { pauseMs = 0, pauseBefore = -1 } = {}) {
  const c = SClient.start(port, ['-tls1_2'], { timeoutMs: 30000 });
  await c.waitFor(/^New, [\s\S]*^---$/m);
  let done = 0;
  for (let i = 0; i < steps; i++) {
    // A fixed wait, and it is the behaviour: the renegotiation window
    // passing (a loaded machine only makes the pause longer).
    if (i === pauseBefore) await delay(pauseMs);
    // One line per read: s_client drops whatever follows "R\n" in the
    // same read. The server's certificate is verified again once the new
    // handshake is under way; the line is written after that.
    const from = c.out.length;
    c.write('R\n');
    try {
      await c.waitFor(/^RENEGOTIATING$[\s\S]*^depth=0 /m, { from, timeoutMs: 5000 });
      c.write(`after-reneg-${i}\n`);
      await c.waitFor(new RegExp(`^after-reneg-${i}$`, 'm'), { from, timeoutMs: 5000 });
      done++;
    } catch (_) {
      break;
    }
  }
  const open = !c.exit;
  c.end();
  const r = await c.done();
  return { done, open, out: r.out };
}

describe('listener limits: handshakeTimeout, maxConnections, connections, renegotiation, maxSendFragment', () => {
  let p;
  let up;
  let agent;

  before(async () => {
    p = pki();
    up = await Upstream.start({ mode: 'echo' });
    const l = (name, opts = {}, ctxOpts = {}) => listener(name, {
      upstream: up.address,
      defaultContext: tlsContext(name, { certs: [p.rsa], ...ctxOpts }),
      ...opts,
    });
    agent = await Agent.start(snapshot(1, [
      l('hs-timeout', { handshakeTimeout: '1s' }),
      l('maxconn', { maxConnections: 3 }),
      l('gauge'),
      l('reneg2', { renegotiationLimit: 2, renegotiationWindow: '600s' }),
      l('reneg0', { renegotiationLimit: 0 }),
      l('reneg-default'),
      l('reneg-window', { renegotiationLimit: 1, renegotiationWindow: '2s' }),
      l('frag512', {}, { maxSendFragment: 512 }),
      l('frag-default'),
      l('errors'),
      l('flood'),
    ]));
  });

  after(async () => {
    if (agent) await agent.stopClean();
    if (up) await up.close();
  });
  failOnCrash({ afterEach }, () => [agent]);

  test('handshakeTimeout: a client that connects and sends nothing is dropped after the timeout and counted', async () => {
    const port = agent.port('hs-timeout');
    const m0 = await agent.metrics();
    const silent = await rawConnect(port);
    // One that starts a handshake (a record header and a few bytes of a
    // ClientHello) and stalls is dropped too.
    const stalled = await rawConnect(port);
    stalled.sock.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]));
    const [a, b] = await Promise.all([
      within(silent.closed, 6000, 'the silent client was not dropped'),
      within(stalled.closed, 6000, 'the stalled client was not dropped'),
    ]);
    for (const [what, r] of [['silent', a], ['stalled', b]]) {
      assert.ok(r.ms >= 800, `${what} client dropped after ${r.ms} ms, before the 1 s timeout`);
      assert.ok(r.ms <= 4000, `${what} client dropped only after ${r.ms} ms`);
      assert.equal(r.bytes, 0, `${what}: the agent sent ${r.bytes} bytes`);
    }
    const m = await agent.waitForMetrics((mm) => errors(mm, 'hs-timeout', 'handshake_timeout') >= errors(m0, 'hs-timeout', 'handshake_timeout') + 2,
      { what: 'clientError handshake_timeout counted twice' });
    assert.equal(errors(m, 'hs-timeout', 'handshake_aborted'), errors(m0, 'hs-timeout', 'handshake_aborted'), 'counted as aborted too');
    await agent.waitForLog(new RegExp(`listener=listeners/hs-timeout client=127\\.0\\.0\\.1:${silent.localPort} cause=handshake_timeout`));
  });

  test('handshakeTimeout: a client whose handshake completed is not dropped however long it idles', async () => {
    const { sock } = await openTls(agent.port('hs-timeout'));
    await echoOn(sock, 'before\n');
    // A fixed wait, and it is the behaviour: idle for longer than the 1 s
    // handshakeTimeout (a loaded machine only makes it longer).
    await delay(2500);
    await echoOn(sock, 'after 2.5 s idle\n');
    sock.end();
  });

  test('maxConnections: N connections are served, the N+1th is closed at once and counted; a slot freed is reused', async () => {
    const port = agent.port('maxconn');
    const m0 = await agent.metrics();
    const open = [];
    for (let i = 0; i < 3; i++) {
      const c = await openTls(port);
      await echoOn(c.sock, `conn ${i}\n`);
      open.push(c.sock);
    }
    const over = await rawConnect(port);
    const r = await within(over.closed, 3000, 'the connection over max_connections was not closed');
    assert.ok(r.ms < 1000, `closed after ${r.ms} ms: not at once`);
    assert.equal(r.bytes, 0);
    const tlsOver = await exchange(port, {});
    assert.equal(tlsOver.ok, false, 'a 4th TLS client was served');
    await agent.waitForMetrics((m) => errors(m, 'maxconn', 'max_connections') >= errors(m0, 'maxconn', 'max_connections') + 2,
      { what: 'clientError max_connections counted twice' });
    // The three still work.
    for (let i = 0; i < 3; i++) await echoOn(open[i], `still ${i}\n`);
    // One leaves: the next client gets its slot.
    open.shift().end();
    await agent.waitForMetrics((m) => m.get('tlsplane_connections', { listener: 'listeners/maxconn' }) === 2,
      { what: 'the gauge back to 2' });
    const again = await exchange(port, {});
    assert.equal(again.ok, true, again.error);
    for (const s of open) s.end();
  });

  test('server.connections: the live gauge follows connections opening and closing', async () => {
    const port = agent.port('gauge');
    const L = { listener: 'listeners/gauge' };
    const m0 = await agent.metrics();
    assert.equal(m0.get('tlsplane_connections', L), 0);
    const socks = [];
    for (let i = 0; i < 5; i++) socks.push((await openTls(port)).sock);
    await agent.waitForMetrics((m) => m.get('tlsplane_connections', L) === 5, { what: 'tlsplane_connections 5' });
    // A plain TCP connection in its handshake counts as well.
    const raw = await rawConnect(port);
    await agent.waitForMetrics((m) => m.get('tlsplane_connections', L) === 6, { what: 'tlsplane_connections 6' });
    raw.sock.destroy();
    socks.splice(0, 2).forEach((s) => s.end());
    await agent.waitForMetrics((m) => m.get('tlsplane_connections', L) === 3, { what: 'tlsplane_connections 3' });
    socks.forEach((s) => s.destroy());
    const m = await agent.waitForMetrics((mm) => mm.get('tlsplane_connections', L) === 0, { what: 'tlsplane_connections 0' });
    assert.equal(m.get('tlsplane_connections_total', L) - m0.get('tlsplane_connections_total', L), 6);
  });

  test('renegotiation limit 2: two client renegotiations pass, the third closes the connection and is counted', async () => {
    const m0 = await agent.metrics();
    const r = await renegotiate(agent.port('reneg2'), 3);
    assert.equal(r.done, 2, `renegotiations completed: ${r.done}\n${r.out.slice(-1500)}`);
    assert.equal(r.open, false, 'the connection is still open after the third renegotiation');
    await agent.waitForMetrics((m) => errors(m, 'reneg2', 'renegotiation_limit') === errors(m0, 'reneg2', 'renegotiation_limit') + 1,
      { what: 'clientError renegotiation_limit counted' });
    await agent.waitForLog(/listener=listeners\/reneg2 client=\S+ cause=renegotiation_limit/);
  });

  test('renegotiation limit 0: the first renegotiation ends the connection', async () => {
    const r = await renegotiate(agent.port('reneg0'), 1);
    assert.equal(r.done, 0, `a renegotiation completed with limit 0\n${r.out.slice(-1500)}`);
    assert.equal(r.open, false, 'the connection is still open');
  });

  test('renegotiation limit by default: 3 per window pass, the 4th closes', async () => {
    const r = await renegotiate(agent.port('reneg-default'), 4);
    assert.equal(r.done, 3, `renegotiations completed: ${r.done}\n${r.out.slice(-1500)}`);
    assert.equal(r.open, false);
  });

  test('renegotiation window: the count starts again once the window has passed', async () => {
    // Limit 1 per 2 s: one, a pause longer than the window, one more, then
    // a third at once (two in one window) is refused.
    const r = await renegotiate(agent.port('reneg-window'), 3, { pauseBefore: 1, pauseMs: 2300 });
    assert.equal(r.done, 2, `renegotiations completed: ${r.done}\n${r.out.slice(-1500)}`);
    assert.equal(r.open, false);
  });

  test('maxSendFragment 512: data still flows intact, in TLS records of at most 512 bytes of plaintext', async () => {
    const payload = Buffer.alloc(64 * 1024, 'x');
    for (const maxVersion of ['TLSv1.3', 'TLSv1.2']) {
      const sizes = {};
      for (const name of ['frag512', 'frag-default']) {
        const tap = await recordTap(agent.port(name));
        const { sock } = await openTls(tap.port, { maxVersion });
        const got = await new Promise((resolve, reject) => {
          let n = 0;
          const chunks = [];
          sock.on('data', (d) => {
            chunks.push(d);
            n += d.length;
            if (n >= payload.length) resolve(Buffer.concat(chunks));
          });
          sock.on('error', reject);
          sock.write(payload);
        });
        assert.ok(got.equals(payload), `${name}: the echo differs`);
        sock.end();
        await tap.close();
        // Application data records (TLS 1.3 hides handshake records as
        // type 23 too; those come before the data and are counted alike).
        sizes[name] = tap.records.filter((r) => r.type === 23).map((r) => r.length);
      }
      // A record carries its plaintext plus at most 256 bytes of AEAD
      // overhead (RFC 8446, 5.2); with AES-GCM it is 17 (TLS 1.3) or 24.
      const max512 = Math.max(...sizes.frag512);
      assert.ok(max512 <= 512 + 256, `${maxVersion}: a record of ${max512} bytes with maxSendFragment 512`);
      assert.ok(sizes.frag512.length >= 128, `${maxVersion}: 64 KiB in only ${sizes.frag512.length} records`);
      const maxDefault = Math.max(...sizes['frag-default']);
      assert.ok(maxDefault > 4096, `${maxVersion}: the default context sent no record over 4 KiB (largest ${maxDefault}): the tap sees nothing`);
    }
  });

  test('clientError causes: handshake_aborted (client gone mid-handshake), handshake_failed (no shared cipher, plain HTTP), tls_error (garbage after the handshake)', async () => {
    const port = agent.port('errors');
    const m0 = await agent.metrics();
    // Gone mid-handshake.
    const aborted = await rawConnect(port);
    aborted.sock.end(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x40, 0x01]));
    await within(aborted.closed, 5000, 'the aborted connection was not closed');
    // A handshake that fails (no common cipher).
    const failed = await exchange(port, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' });
    assert.equal(failed.ok, false);
    // Plain HTTP to the TLS port.
    const http = await rawConnect(port);
    http.sock.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await within(http.closed, 5000, 'a plain HTTP client was not closed');
    // After the handshake, bytes that are not a valid record.
    const raw = net.connect({ host: HOST, port });
    const sock = tls.connect({ socket: raw, rejectUnauthorized: false });
    await new Promise((resolve, reject) => {
      sock.once('secureConnect', resolve);
      sock.once('error', reject);
    });
    sock.on('error', () => {});
    await echoOn(sock, 'fine so far\n');
    raw.write(Buffer.concat([Buffer.from([0x17, 0x03, 0x03, 0x00, 0x20]), Buffer.alloc(32, 0xab)]));
    await within(new Promise((r) => raw.once('close', r)), 5000, 'the connection survived a forged record');
    const m = await agent.waitForMetrics(
      (mm) => errors(mm, 'errors', 'tls_error') >= errors(m0, 'errors', 'tls_error') + 1 &&
        errors(mm, 'errors', 'handshake_aborted') >= errors(m0, 'errors', 'handshake_aborted') + 1 &&
        errors(mm, 'errors', 'handshake_failed') >= errors(m0, 'errors', 'handshake_failed') + 2,
      { what: 'tls_error, handshake_aborted and handshake_failed counted' },
    );
    const counted = Object.fromEntries(['handshake_aborted', 'handshake_failed', 'tls_error']
      .map((cause) => [cause, errors(m, 'errors', cause) - errors(m0, 'errors', cause)]));
    assert.deepEqual(counted, { handshake_aborted: 1, handshake_failed: 2, tls_error: 1 });
  });

  test('clientError log lines are limited per listener and cause: a flood of failed handshakes makes a few lines a second, each saying how many it stands for', async () => {
    const port = agent.port('flood');
    const from = agent.log().length;
    const t0 = Date.now();
    const N = 300;
    await Promise.all(Array.from({ length: N }, () => failedHandshake(port)));
    await agent.waitForMetrics((m) => errors(m, 'flood', 'handshake_failed') === N, { what: `${N} handshake failures counted` });
    const floodLines = () => agent.log().slice(from).split('\n')
      .filter((l) => l.includes('listener=listeners/flood ') && l.includes(' cause=handshake_failed '));
    // One more at a time until one is logged (a new window): its line
    // reports what was left out since the previous one.
    let extra = 0;
    let last = null;
    for (let attempt = 0; attempt < 40 && !last; attempt++) {
      const localPort = await failedHandshake(port);
      extra++;
      await agent.waitForMetrics((m) => errors(m, 'flood', 'handshake_failed') === N + extra, { what: 'the extra failure counted' });
      const re = new RegExp(`client=127\\.0\\.0\\.1:${localPort} `);
      const deadline = Date.now() + 500;
      while (!last && Date.now() < deadline) {
        last = floodLines().find((l) => re.test(l)) || null;
        if (!last) await delay(20);
      }
    }
    assert.ok(last, 'no failure was logged after the flood');
    const lines = floodLines();
    const seconds = Math.ceil((Date.now() - t0) / 1000) + 1;
    assert.ok(lines.length <= 5 * seconds, `${lines.length} lines for ${N + extra} failures in ${seconds} s`);
    assert.match(last, /suppressed=\d+$/, 'the line after the flood does not say how many were left out');
    const suppressed = lines.reduce((n, l) => n + Number((/suppressed=(\d+)$/.exec(l) || [0, 0])[1]), 0);
    assert.equal(lines.length + suppressed, N + extra, 'lines written + lines said to be left out = failures');
  });
});
