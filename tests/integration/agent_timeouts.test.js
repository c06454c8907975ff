'use strict';
// Listener.idle_timeout and Listener.write_timeout (no Node option): an
// established connection through which nothing moves is closed with a
// close_notify after idle_timeout; one with bytes waiting for a side
// that takes none is closed after write_timeout, counted by which side
// stalled; an active connection is never closed. And bytes_out counts
// what the client's socket took, not what was queued for it.

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const tls = require('node:tls');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { openTls, echoOn, closedWithin, delay, HOST } = require('./lib/tlsclient');

const errors = (m, name, cause) => m.get('tlsplane_client_errors_total', { listener: `listeners/${name}`, cause });

// A relay from a client to the agent, with TCP backpressure both ways (a
// client that stops reading stalls the agent's socket), that counts the
// bytes the agent sends. drain(): from then on what the agent sends is
// read and counted without being passed on; resolves with the total once
// the agent's side has closed.
async function meter(port) {
  const m = { fromAgent: 0 };
  const server = net.createServer((client) => {
    const agentSide = net.connect({ host: HOST, port });
    m.agentSide = agentSide;
    m.agentClosed = new Promise((r) => agentSide.once('close', r));
    agentSide.on('data', (d) => {
      m.fromAgent += d.length;
    });
    agentSide.pipe(client);
    client.pipe(agentSide);
    client.on('error', () => agentSide.destroy());
    agentSide.on('error', () => client.destroy());
  });
  await new Promise((r) => server.listen(0, HOST, r));
  m.port = server.address().port;
  m.drain = async () => {
    m.agentSide.unpipe();
    m.agentSide.resume();
    await m.agentClosed;
    return m.fromAgent;
  };
  m.close = () => new Promise((r) => server.close(() => r()));
  return m;
}

// A TLS client that asks the HTTP upstream for 50 MB through port, reads
// the first bytes of the answer and then never reads again.
async function stalledDownload(port) {
  const sock = tls.connect({ host: HOST, port, rejectUnauthorized: false });
  sock.on('error', () => {});
  await new Promise((resolve, reject) => {
    sock.once('secureConnect', resolve);
    sock.once('error', reject);
  });
  sock.write('GET /bytes/50000000 HTTP/1.1\r\nHost: x\r\n\r\n');
  await new Promise((r) => sock.once('data', r));
  sock.pause();
  return sock;
}

describe('idle_timeout and write_timeout', () => {
  let p;
  let echo;
  let http;
  let stall;
  let agent;

  before(async () => {
    p = pki();
    echo = await Upstream.start({ mode: 'echo' });
    http = await Upstream.start({ mode: 'http' });
    stall = await Upstream.start({ mode: 'stall' });
    const l = (name, upstream, opts) => listener(name, {
      upstream: upstream.address,
      defaultContext: tlsContext(name, { certs: [p.rsa] }),
      ...opts,
    });
    agent = await Agent.start(snapshot(1, [
      l('idle', echo, { idleTimeout: '1s' }),
      l('stall-client', http, { writeTimeout: '1s' }),
      l('stall-upstream', stall, { writeTimeout: '1s' }),
    ]));
  });

  after(async () => {
    if (agent) await agent.stopClean();
    for (const u of [echo, http, stall]) if (u) await u.close();
  });
  failOnCrash({ afterEach }, () => [agent]);

  test('idle_timeout: a connection where neither side sends is closed with close_notify after the timeout, and counted', async () => {
    const m0 = await agent.metrics();
    const { sock } = await openTls(agent.port('idle'));
    await echoOn(sock, 'hello\n');
    let ended = false;
    sock.on('end', () => {
      ended = true; // the TLS layer saw close_notify: a clean end
    });
    const r = await closedWithin(sock, 10000);
    assert.ok(r.ms >= 800, `closed after ${r.ms} ms of silence, before the 1 s idle timeout`);
    assert.equal(ended, true, 'closed without close_notify');
    await agent.waitForMetrics((m) => errors(m, 'idle', 'idle_timeout') === errors(m0, 'idle', 'idle_timeout') + 1,
      { what: 'idle_timeout counted' });
    await agent.waitForLog(/listener=listeners\/idle client=\S+ cause=idle_timeout reason="no data either way for 1000 ms"/);
  });

  test('idle_timeout: a connection with data moving is not closed, however long it lasts', async () => {
    const m0 = await agent.metrics();
    const { sock } = await openTls(agent.port('idle'));
    for (let i = 0; i < 12; i++) {
      await echoOn(sock, `still here ${i}\n`);
      await delay(300); // the client's own pace, each gap well under the timeout
    }
    assert.equal(sock.destroyed, false);
    sock.end();
    const m = await agent.metrics();
    assert.equal(errors(m, 'idle', 'idle_timeout'), errors(m0, 'idle', 'idle_timeout'));
  });

  test('write_timeout: a client that stops reading a large download is closed and counted (client_write_timeout); bytes_out is what its socket took', async () => {
    const m0 = await agent.metrics();
    const relay = await meter(agent.port('stall-client'));
    try {
      const sock = await stalledDownload(relay.port);
      await agent.waitForMetrics((m) => errors(m, 'stall-client', 'client_write_timeout') === errors(m0, 'stall-client', 'client_write_timeout') + 1,
        { timeoutMs: 30000, what: 'client_write_timeout counted' });
      const m1 = await agent.metrics();
      assert.equal(errors(m1, 'stall-client', 'upstream_write_timeout'), errors(m0, 'stall-client', 'upstream_write_timeout'));
      assert.equal(errors(m1, 'stall-client', 'idle_timeout'), errors(m0, 'stall-client', 'idle_timeout'));
      // What the agent's socket took reaches the relay once it reads again.
      const delivered = await relay.drain();
      sock.destroy();
      const L = { listener: 'listeners/stall-client' };
      const counted = m1.get('tlsplane_bytes_out_total', L) - m0.get('tlsplane_bytes_out_total', L);
      assert.ok(delivered < 50000000, `${delivered} bytes delivered: the download did not stall`);
      assert.equal(counted, delivered, `bytes_out counted ${counted} bytes, the client's side received ${delivered}`);
      await agent.waitForLog(/listener=listeners\/stall-client client=\S+ cause=client_write_timeout reason="the client took none of \d+ bytes for 1000 ms"/);
    } finally {
      await relay.close();
    }
  });

  test('write_timeout: an upstream that stops reading what the client sends ends the connection, counted (upstream_write_timeout)', async () => {
    const m0 = await agent.metrics();
    const { sock } = await openTls(agent.port('stall-upstream'));
    sock.write(Buffer.alloc(32 * 1024 * 1024, 'u'));
    await closedWithin(sock, 30000);
    await agent.waitForMetrics((m) => errors(m, 'stall-upstream', 'upstream_write_timeout') === errors(m0, 'stall-upstream', 'upstream_write_timeout') + 1,
      { what: 'upstream_write_timeout counted' });
    await agent.waitForLog(/listener=listeners\/stall-upstream client=\S+ cause=upstream_write_timeout reason="the upstream took none of \d+ bytes for 1000 ms"/);
  });
});

describe('bytes_out counts what was delivered', () => {
  let p;
  let http;

  before(async () => {
    p = pki();
    http = await Upstream.start({ mode: 'http' });
  });

  after(async () => {
    if (http) await http.close();
  });

  test('bytes_out: a client that stops reading is counted for what its socket took, not for what waits for it', async () => {
    // Default timeouts: nothing closes the stalled connection but the
    // SIGTERM drain's deadline, which takes 10 s.
    const own = await Agent.start(snapshot(1, [
      listener('count', { upstream: http.address, defaultContext: tlsContext('count', { certs: [p.rsa] }) }),
    ]), { workers: 1 });
    const relay = await meter(own.port('count'));
    try {
      const sock = await stalledDownload(relay.port);
      // Once every buffer on the way is full, nothing moves any more.
      const L = { listener: 'listeners/count' };
      let last = -1;
      let counted;
      await own.waitForMetrics((m) => {
        counted = m.get('tlsplane_bytes_out_total', L);
        const still = counted === last;
        last = counted;
        return still;
      }, { timeoutMs: 30000, what: 'bytes_out stops moving' });
      // The drain deadline closes the connection; what the agent's socket
      // took then reaches the relay.
      await own.stopClean();
      const delivered = await relay.drain();
      sock.destroy();
      assert.ok(delivered < 50000000, `${delivered} bytes delivered: the download did not stall`);
      assert.equal(counted, delivered, `bytes_out counted ${counted} bytes, the client's side received ${delivered}`);
    } finally {
      await own.stop();
      await relay.close();
    }
  });
});
