'use strict';
// The cleartext side: data both ways through to the upstream (curl, a
// 20 MB body each way), half-close, an upstream that is down, and the
// PROXY protocol v2 header with its TLS TLVs as the upstream parses it,
// also to Unix-socket upstreams, cleartext and TLS.

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const tls = require('node:tls');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash, freePort } = require('./lib/agent');
const { Upstream, PP2, patternBytes } = require('./lib/upstream');
const { exchange, openTls, curl, HOST } = require('./lib/tlsclient');

const MB20 = 20 * 1024 * 1024;
const sha256 = (buf) => crypto.createHash('sha256').update(buf).digest('hex');

describe('proxying to the upstream, and PROXY protocol v2', () => {
  let p;
  let x;
  let http;
  let echo;
  let httpPP;
  let echoPP;
  let unixPP;
  let unixTlsPP;
  let agent;
  let tmp;

  before(async () => {
    p = pki();
    x = p.agentExtras();
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-proxy-'));
    http = await Upstream.start({ mode: 'http' });
    echo = await Upstream.start({ mode: 'echo' });
    httpPP = await Upstream.start({ mode: 'http', proxy: true });
    echoPP = await Upstream.start({ mode: 'echo', proxy: true });
    unixPP = await Upstream.start({ mode: 'echo', proxy: true, path: path.join(tmp, 'pp.sock') });
    unixTlsPP = await Upstream.start({
      mode: 'echo', proxy: true, path: path.join(tmp, 'pp-tls.sock'), tls: { cert: p.rsa.cert, key: p.rsa.key },
    });
    const nobody = await freePort(); // bound and released: nothing listens there
    const web = tlsContext('web', { certs: [p.rsa, p.ecdsa], alpnProtocols: ['http/1.1'] });
    const mtls = tlsContext('mtls', {
      certs: [p.rsa], ca: p.ca.cert, requestCert: true, alpnProtocols: ['h2', 'http/1.1'],
    });
    agent = await Agent.start(snapshot(1, [
      listener('http', { upstream: http.address, defaultContext: web }),
      listener('echo', { upstream: echo.address, defaultContext: web }),
      listener('down', { upstream: `127.0.0.1:${nobody}`, defaultContext: web }),
      listener('pp-http', { upstream: httpPP.address, proxyProtocol: true, defaultContext: web }),
      listener('pp', { upstream: echoPP.address, proxyProtocol: true, defaultContext: mtls }),
      listener('pp-unix', { upstream: unixPP.address, proxyProtocol: true, defaultContext: web }),
      listener('pp-unix-tls', {
        upstream: unixTlsPP.address,
        proxyProtocol: true,
        defaultContext: web,
        upstreamTls: { context: tlsContext('up-ca', { client: true, ca: p.ca.cert }), servername: 'www.example.com' },
      }),
    ]));
  });

  after(async () => {
    if (agent) await agent.stopClean();
    for (const u of [http, echo, httpPP, echoPP, unixPP, unixTlsPP]) if (u) await u.close();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });
  failOnCrash({ afterEach }, () => [agent]);

  test('curl: an HTTPS request reaches the HTTP upstream and its answer comes back', async () => {
    const r = await curl(agent.port('http'), '/hello');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.status, 200);
    assert.equal(r.body, 'hello\n');
    const missing = await curl(agent.port('http'), '/nothing-here');
    assert.equal(missing.status, 404, 'the upstream\'s own status passes through');
  });

  test('20 MB each way: a GET body and a POST body cross the agent intact', async () => {
    const down = path.join(tmp, 'down.bin');
    const get = await curl(agent.port('http'), `/bytes/${MB20}`, { args: ['-o', down] });
    assert.equal(get.code, 0, get.stderr);
    assert.equal(get.status, 200);
    assert.equal(get.size, MB20);
    assert.equal(sha256(fs.readFileSync(down)), sha256(patternBytes(MB20)), 'the 20 MB body changed on its way');

    const upFile = path.join(tmp, 'up.bin');
    const body = crypto.randomBytes(MB20);
    fs.writeFileSync(upFile, body);
    const post = await curl(agent.port('http'), '/sha256', {
      args: ['--data-binary', `@${upFile}`, '-H', 'Content-Type: application/octet-stream', '-H', 'Expect:'],
    });
    assert.equal(post.code, 0, post.stderr);
    assert.equal(post.status, 200);
    assert.equal(post.body.trim(), `${sha256(body)} ${MB20}`, 'the upstream did not receive the 20 MB body intact');
  });

  test('half-close: the client\'s close_notify reaches the upstream as a FIN, and the upstream\'s remaining data and end come back', async () => {
    const payload = crypto.randomBytes(256 * 1024);
    echo.skipSeen();
    const result = await new Promise((resolve, reject) => {
      const sock = tls.connect({ host: HOST, port: agent.port('echo'), rejectUnauthorized: false, allowHalfOpen: true });
      const chunks = [];
      sock.on('secureConnect', () => {
        sock.write(payload);
        sock.end(); // close_notify + FIN, reading on
      });
      sock.on('data', (d) => chunks.push(d));
      sock.on('end', () => resolve({ data: Buffer.concat(chunks), ended: true }));
      sock.on('error', reject);
      setTimeout(() => reject(new Error(`no end within 10 s (${Buffer.concat(chunks).length} bytes back)`)), 10000).unref();
    });
    assert.equal(result.data.length, payload.length, 'the echo after the half-close was cut');
    assert.ok(result.data.equals(payload));
    const conn = await echo.nextConnection();
    await conn.closedPromise;
    assert.equal(conn.halfClosed, true, 'the upstream never saw the FIN');
    assert.equal(conn.bytesIn, payload.length);
  });

  test('upstream down: the client is closed cleanly (close_notify) and the failure is counted', async () => {
    const m0 = await agent.metrics();
    const L = { listener: 'listeners/down', cause: 'upstream_connect' };
    const { sock } = await openTls(agent.port('down'));
    const how = await new Promise((resolve) => {
      let ended = false;
      let error = null;
      sock.on('end', () => {
        ended = true;
      });
      sock.on('error', (err) => {
        error = err.code || err.message;
      });
      sock.on('close', () => resolve({ ended, error }));
      sock.resume();
    });
    assert.deepEqual(how, { ended: true, error: null }, 'expected an orderly end of the TLS stream, not a reset');
    await agent.waitForMetrics((m) => m.get('tlsplane_client_errors_total', L) === m0.get('tlsplane_client_errors_total', L) + 1,
      { what: 'clientError upstream_connect' });
    await agent.waitForLog(/listener=listeners\/down client=\S+ cause=upstream_connect/);
  });

  test('PROXY v2: addresses, SNI, ALPN, version, cipher, client CN and verify reach the upstream (TLS 1.3)', async () => {
    echoPP.skipSeen();
    const r = await exchange(agent.port('pp'), {
      servername: 'www.example.com', ALPNProtocols: ['http/1.1'], cert: x.alice.cert, key: x.alice.key,
    }, { keepOpen: true });
    assert.equal(r.ok, true, r.error);
    const localPort = r.socket.localPort;
    r.socket.end();
    const h = (await echoPP.nextConnection()).proxy;
    assert.equal(h.command, 'PROXY');
    assert.equal(h.family, 'TCP4');
    assert.deepEqual(h.src, { address: '127.0.0.1', port: localPort }, 'the client\'s address');
    assert.deepEqual(h.dst, { address: '127.0.0.1', port: agent.port('pp') }, 'the address the client connected to');
    assert.equal(h.authority, 'www.example.com');
    assert.equal(h.alpn, 'http/1.1');
    assert.equal(h.ssl.version, 'TLSv1.3');
    assert.equal(h.ssl.cipher, r.info.cipher);
    assert.equal(h.ssl.cn, 'alice');
    assert.equal(h.ssl.verify, 0);
    assert.equal(h.ssl.client, PP2.CLIENT_SSL | PP2.CLIENT_CERT_CONN | PP2.CLIENT_CERT_SESS);
    // TLVs in HAProxy's order: ALPN, AUTHORITY, SSL (VERSION, CN, CIPHER).
    assert.deepEqual(h.tlvs.map((t) => t.type), [PP2.TYPE_ALPN, PP2.TYPE_AUTHORITY, PP2.TYPE_SSL]);
    assert.deepEqual(h.ssl.subTlvs.map((t) => t.type), [PP2.SUBTYPE_SSL_VERSION, PP2.SUBTYPE_SSL_CN, PP2.SUBTYPE_SSL_CIPHER]);
  });

  test('PROXY v2 over TLS 1.2, and for a resumed session: the certificate is the session\'s, not this connection\'s', async () => {
    echoPP.skipSeen();
    const opts = { maxVersion: 'TLSv1.2', cert: x.alice.cert, key: x.alice.key, servername: 'pp.example.com' };
    const full = await exchange(agent.port('pp'), opts);
    assert.equal(full.ok, true, full.error);
    const h1 = (await echoPP.nextConnection()).proxy;
    assert.equal(h1.ssl.version, 'TLSv1.2');
    assert.equal(h1.ssl.cipher, full.info.cipher);
    assert.match(h1.ssl.cipher, /^ECDHE-RSA-/, 'OpenSSL\'s cipher name');
    assert.equal(h1.authority, 'pp.example.com');
    assert.equal(h1.alpn, undefined, 'no ALPN TLV when none was negotiated');
    const resumed = await exchange(agent.port('pp'), { ...opts, session: full.session });
    assert.equal(resumed.info.reused, true, 'not resumed');
    const h2 = (await echoPP.nextConnection()).proxy;
    assert.equal(h2.ssl.client, PP2.CLIENT_SSL | PP2.CLIENT_CERT_SESS, 'resumed: certificate in the session, none on this connection');
    assert.equal(h2.ssl.cn, 'alice');
    assert.equal(h2.ssl.verify, 0);
  });

  // A listener takes TCP connections only, so the header to a Unix-socket
  // upstream carries the client's TCP addresses (HAProxy's send-proxy-v2
  // to a unix@ server does the same); PROXY v2's AF_UNIX family (0x31)
  // would describe a client that itself came over a Unix socket.
  for (const [name, what] of [['pp-unix', 'cleartext'], ['pp-unix-tls', 'TLS, the header sent before the upstream handshake']]) {
    test(`PROXY v2 to a Unix-socket upstream (${what}): the client's TCP addresses and the TLVs, then the data both ways`, async () => {
      const up = name === 'pp-unix' ? unixPP : unixTlsPP;
      up.skipSeen();
      const r = await exchange(agent.port(name), { servername: 'www.example.com', ALPNProtocols: ['http/1.1'] }, { send: 'over a unix socket\n', keepOpen: true });
      assert.equal(r.ok, true, r.error);
      assert.equal(r.echoed, 'over a unix socket\n');
      const localPort = r.socket.localPort;
      r.socket.end();
      const conn = await up.nextConnection();
      assert.equal(conn.proxyError, null);
      assert.equal(conn.proxy.command, 'PROXY');
      assert.equal(conn.proxy.family, 'TCP4');
      assert.deepEqual(conn.proxy.src, { address: '127.0.0.1', port: localPort }, 'the client\'s address');
      assert.deepEqual(conn.proxy.dst, { address: '127.0.0.1', port: agent.port(name) }, 'the address the client connected to');
      assert.equal(conn.proxy.authority, 'www.example.com');
      assert.equal(conn.proxy.alpn, 'http/1.1');
      assert.equal(conn.proxy.ssl.version, r.info.protocol);
      if (name === 'pp-unix-tls') {
        assert.equal(conn.tls.servername, 'www.example.com', 'the upstream handshake came after the header, with the configured SNI');
      } else {
        assert.equal(conn.tls, undefined, 'cleartext after the header');
      }
    });
  }

  test('PROXY v2 in front of HTTP: curl\'s request is served after the header', async () => {
    httpPP.skipSeen();
    const r = await curl(agent.port('pp-http'), '/hello', { name: 'api.example.com' });
    assert.equal(r.status, 200, r.stderr);
    assert.equal(r.body, 'hello\n');
    const conn = await httpPP.nextConnection();
    assert.equal(conn.proxyError, null);
    assert.equal(conn.proxy.authority, 'api.example.com');
    assert.equal(conn.proxy.alpn, 'http/1.1', 'curl negotiated http/1.1 by ALPN');
    assert.deepEqual(conn.requests, ['GET /hello']);
    // Without PROXY v2, the upstream sees no header: the first bytes are HTTP.
    http.skipSeen();
    await curl(agent.port('http'), '/hello');
    const plain = await http.nextConnection();
    assert.equal(plain.proxy, null);
    assert.deepEqual(plain.requests, ['GET /hello']);
  });
});
