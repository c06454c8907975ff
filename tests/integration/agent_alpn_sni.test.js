'use strict';
// NPNProtocols and their successor ALPN, and SNI (server.addContext /
// SNICallback): exact names, one-label wildcards, the default context,
// and SNI contexts whose key type or options differ from the default's.

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { exchange, sclient } = require('./lib/tlsclient');

const RSA_SIGALGS = 'rsa_pss_rsae_sha256:rsa_pkcs1_sha256';
const ECDSA_SIGALGS = 'ecdsa_secp256r1_sha256';

describe('NPN, ALPN and SNI', () => {
  let p;
  let x;
  let up;
  let agent;

  async function proxyHeaderOf(name, opts) {
    up.skipSeen();
    const r = await exchange(agent.port(name), opts);
    assert.equal(r.ok, true, r.error);
    return { r, proxy: (await up.nextConnection({ timeoutMs: 5000 })).proxy };
  }

  before(async () => {
    p = pki();
    x = p.agentExtras();
    up = await Upstream.start({ mode: 'echo', proxy: true });
    const l = (name, opts) => listener(name, { upstream: up.address, proxyProtocol: true, ...opts });
    const fallback = tlsContext('fallback', { certs: [p.rsa] });
    const exact = tlsContext('exact', { certs: [p.ecdsa] });
    const wild = tlsContext('wild', { certs: [x.wildcard] });
    const ecdsaDefault = tlsContext('ecdsa-default', { certs: [p.ecdsa] });
    const rsaSni = tlsContext('rsa-sni', { certs: [x.rsaApi] });
    const ecdsaSni = tlsContext('ecdsa-sni', { certs: [p.ecdsa2] });
    // An SNI context that differs from the default in what SSL_set_SSL_CTX
    // does not carry over by itself: client certificates, ALPN, ciphers.
    const strict = tlsContext('strict', {
      certs: [p.ecdsa2],
      ca: p.ca.cert,
      requestCert: true,
      rejectUnauthorized: true,
      alpnProtocols: ['strict-proto'],
      policy: { ciphers: 'ECDHE-ECDSA-AES256-GCM-SHA384', ciphersuites: 'TLS_AES_256_GCM_SHA384' },
    });
    const lax = tlsContext('lax', { certs: [p.ecdsa], alpnProtocols: ['h2', 'http/1.1'] });
    const modern = tlsContext('modern', { certs: [p.ecdsa], policy: { minVersion: 'TLS_1_3' } });
    agent = await Agent.start(snapshot(1, [
      l('alpn', { defaultContext: tlsContext('alpn', { certs: [p.rsa], alpnProtocols: ['h2', 'http/1.1'] }) }),
      l('npn', { defaultContext: tlsContext('npn', { certs: [p.rsa], npnProtocols: ['spdy/3', 'http/1.1'] }) }),
      l('sni', {
        defaultContext: fallback,
        sni: [['www.example.com', exact], ['*.example.com', wild]],
      }),
      // nodejs/node#54235: the SNI context's key type differs from the default's.
      l('ecdsa-then-rsa', { defaultContext: ecdsaDefault, sni: [['rsa.example.com', rsaSni]] }),
      l('rsa-then-ecdsa', { defaultContext: fallback, sni: [['api.example.com', ecdsaSni]] }),
      l('sni-options', { defaultContext: lax, sni: [['secure.example.com', strict], ['modern.example.com', modern]] }),
    ]));
  });

  after(async () => {
    if (agent) await agent.stopClean();
    if (up) await up.close();
  });
  failOnCrash({ afterEach }, () => [agent]);

  test('ALPN: the first of the server\'s protocols the client offers is selected (server preference)', async () => {
    const port = agent.port('alpn');
    const both = await exchange(port, { ALPNProtocols: ['http/1.1', 'h2'] });
    assert.equal(both.ok, true, both.error);
    assert.equal(both.info.alpn, 'h2');
    const one = await exchange(port, { ALPNProtocols: ['spdy/1', 'http/1.1'] });
    assert.equal(one.info.alpn, 'http/1.1');
    const s = await sclient(port, ['-alpn', 'http/1.1,h2']);
    assert.equal(s.alpn, 'h2', s.out);
    // The upstream hears it in PP2_TYPE_ALPN.
    const { proxy } = await proxyHeaderOf('alpn', { ALPNProtocols: ['http/1.1'] });
    assert.equal(proxy.alpn, 'http/1.1');
  });

  test('ALPN: no overlap ends the handshake with a no_application_protocol alert; a client without ALPN gets none', async () => {
    const port = agent.port('alpn');
    const m0 = await agent.metrics();
    const no = await exchange(port, { ALPNProtocols: ['spdy/1'] });
    assert.equal(no.ok, false, `no overlap, yet negotiated ${no.info && no.info.alpn}`);
    assert.equal(no.code, 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL', no.error);
    const s = await sclient(port, ['-alpn', 'foo,bar']);
    assert.equal(s.handshake, false);
    assert.equal(s.alert, 'no application protocol', s.out);
    await agent.waitForMetrics(
      (m) => m.get('tlsplane_client_errors_total', { listener: 'listeners/alpn', cause: 'handshake_failed' }) >=
        m0.get('tlsplane_client_errors_total', { listener: 'listeners/alpn', cause: 'handshake_failed' }) + 2,
      { what: 'clientError handshake_failed counted twice' },
    );
    const none = await proxyHeaderOf('alpn', {});
    assert.equal(none.r.info.alpn, null);
    assert.equal(none.proxy.alpn, undefined, 'no PP2_TYPE_ALPN without a protocol');
  });

  test('NPN: the server advertises its protocols (TLS 1.2) and the client\'s choice reaches the upstream', async () => {
    const port = agent.port('npn');
    const s = await sclient(port, ['-tls1_2', '-nextprotoneg', 'http/1.1,spdy/3']);
    assert.equal(s.handshake, true, s.out);
    // OPENSSL_NPN_NEGOTIATED (1): spdy/3, the server's first that the client supports.
    assert.deepEqual(s.npn, { status: 1, protocol: 'spdy/3' });
    const none = await sclient(port, ['-tls1_2', '-nextprotoneg', 'foo']);
    assert.deepEqual(none.npn, { status: 2, protocol: 'foo' }, 'OPENSSL_NPN_NO_OVERLAP: the client falls back to its own');
    // A listener without NPN advertises nothing.
    const off = await sclient(agent.port('alpn'), ['-tls1_2', '-nextprotoneg', 'http/1.1']);
    assert.equal(off.handshake, true);
    assert.equal(off.npn, null, 'NPN advertised by a context without npn_protocols');
    // The upstream is told the NPN protocol in PP2_TYPE_ALPN.
    up.skipSeen();
    const viaUpstream = await sclient(port, ['-tls1_2', '-nextprotoneg', 'http/1.1']);
    assert.deepEqual(viaUpstream.npn, { status: 1, protocol: 'http/1.1' });
    const conn = await up.nextConnection({ timeoutMs: 5000 });
    assert.equal(conn.proxy.alpn, 'http/1.1');
  });

  test('SNI: an exact name selects its context and wins over a matching wildcard', async () => {
    const r = await exchange(agent.port('sni'), { servername: 'www.example.com' });
    assert.equal(r.ok, true, r.error);
    assert.equal(r.info.fingerprint, p.ecdsa.fingerprint);
    const { proxy } = await proxyHeaderOf('sni', { servername: 'www.example.com' });
    assert.equal(proxy.authority, 'www.example.com', 'PP2_TYPE_AUTHORITY carries the SNI');
  });

  test('SNI: *.example.com matches a.example.com (one label) but not a.b.example.com nor example.com', async () => {
    const port = agent.port('sni');
    for (const name of ['a.example.com', 'api.example.com', 'x-1.example.com']) {
      const r = await exchange(port, { servername: name });
      assert.equal(r.ok, true, `${name}: ${r.error}`);
      assert.equal(r.info.fingerprint, x.wildcard.fingerprint, `${name} should match *.example.com`);
    }
    for (const name of ['a.b.example.com', 'example.com', 'a.example.org', 'aexample.com']) {
      const r = await exchange(port, { servername: name });
      assert.equal(r.ok, true, `${name}: ${r.error}`);
      assert.equal(r.info.fingerprint, p.rsa.fingerprint, `${name} must fall back to the default context`);
    }
  });

  test('SNI: a client sending no server name gets the default context', async () => {
    const r = await exchange(agent.port('sni'), {});
    assert.equal(r.ok, true, r.error);
    assert.equal(r.info.fingerprint, p.rsa.fingerprint);
    const s = await sclient(agent.port('sni'), ['-noservername']);
    assert.equal(s.fingerprint, p.rsa.fingerprint);
    const { proxy } = await proxyHeaderOf('sni', {});
    assert.equal(proxy.authority, undefined, 'no PP2_TYPE_AUTHORITY without SNI');
  });

  test('SNI with a different key type (nodejs/node#54235): an RSA SNI context behind an ECDSA default serves its RSA certificate', async () => {
    const port = agent.port('ecdsa-then-rsa');
    for (const maxVersion of ['TLSv1.3', 'TLSv1.2']) {
      // A client that can verify only RSA signatures: it must get the SNI
      // context's RSA certificate, not fail on the default's ECDSA one.
      const rsaOnly = await exchange(port, { servername: 'rsa.example.com', sigalgs: RSA_SIGALGS, maxVersion });
      assert.equal(rsaOnly.ok, true, `${maxVersion}: ${rsaOnly.error}`);
      assert.equal(rsaOnly.info.fingerprint, x.rsaApi.fingerprint);
      // A client that can do both still gets the SNI context's certificate.
      const both = await exchange(port, { servername: 'rsa.example.com', maxVersion });
      assert.equal(both.info.fingerprint, x.rsaApi.fingerprint, `${maxVersion}: the default's ECDSA certificate was served for rsa.example.com`);
      // Negative: without the SNI name the same RSA-only client has no certificate to get.
      const dflt = await exchange(port, { sigalgs: RSA_SIGALGS, maxVersion });
      assert.equal(dflt.ok, false, `${maxVersion}: the ECDSA default context served an RSA-only client`);
    }
    const s = await sclient(port, ['-tls1_2', '-servername', 'rsa.example.com', '-cipher', 'ECDHE-RSA-AES128-GCM-SHA256']);
    assert.equal(s.handshake, true, s.out);
    assert.equal(s.fingerprint, x.rsaApi.fingerprint);
  });

  test('SNI with a different key type, the other way: an ECDSA SNI context behind an RSA default serves its ECDSA certificate', async () => {
    const port = agent.port('rsa-then-ecdsa');
    for (const maxVersion of ['TLSv1.3', 'TLSv1.2']) {
      const ec = await exchange(port, { servername: 'api.example.com', sigalgs: ECDSA_SIGALGS, maxVersion });
      assert.equal(ec.ok, true, `${maxVersion}: ${ec.error}`);
      assert.equal(ec.info.fingerprint, p.ecdsa2.fingerprint);
      const dflt = await exchange(port, { sigalgs: ECDSA_SIGALGS, maxVersion });
      assert.equal(dflt.ok, false, `${maxVersion}: the RSA default context served an ECDSA-only client`);
    }
  });

  test('SNI: the selected context\'s own options apply (client certificates, ALPN, ciphers), not the default\'s', async () => {
    const port = agent.port('sni-options');
    const auth = { cert: x.alice.cert, key: x.alice.key };
    // The default context asks for no certificate and speaks h2.
    const plain = await exchange(port, { ALPNProtocols: ['h2'] });
    assert.equal(plain.ok, true, plain.error);
    assert.equal(plain.info.alpn, 'h2');
    // secure.example.com requires a trusted client certificate...
    const noCert = await exchange(port, { servername: 'secure.example.com' });
    assert.equal(noCert.ok, false, 'the SNI context\'s rejectUnauthorized was not applied');
    const withCert = await exchange(port, { servername: 'secure.example.com', ...auth, ALPNProtocols: ['strict-proto'] });
    assert.equal(withCert.ok, true, withCert.error);
    assert.equal(withCert.info.fingerprint, p.ecdsa2.fingerprint);
    // ...offers only its own ALPN protocol...
    assert.equal(withCert.info.alpn, 'strict-proto');
    const h2 = await exchange(port, { servername: 'secure.example.com', ...auth, ALPNProtocols: ['h2'] });
    assert.equal(h2.ok, false, `the default context's ALPN list was used for secure.example.com: ${h2.info && h2.info.alpn}`);
    // ...and its own ciphers and suites.
    assert.equal(withCert.info.cipher, 'TLS_AES_256_GCM_SHA384');
    const aes128 = await exchange(port, { servername: 'secure.example.com', ...auth, maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' });
    assert.equal(aes128.ok, false, `the default context's ciphers were used for secure.example.com: ${aes128.info && aes128.info.cipher}`);
    const aes256 = await exchange(port, { servername: 'secure.example.com', ...auth, maxVersion: 'TLSv1.2' });
    assert.equal(aes256.ok, true, aes256.error);
    assert.equal(aes256.info.cipher, 'ECDHE-ECDSA-AES256-GCM-SHA384');
  });

  test('SNI: the selected context\'s protocol versions apply (the context is chosen before the version is)', async () => {
    const port = agent.port('sni-options');
    const old = await exchange(port, { servername: 'modern.example.com', maxVersion: 'TLSv1.2' });
    assert.equal(old.ok, false, `TLS 1.2 negotiated for a TLS 1.3-only SNI context: ${old.info && old.info.protocol}`);
    const v13 = await exchange(port, { servername: 'modern.example.com' });
    assert.equal(v13.info.protocol, 'TLSv1.3');
    const dflt = await exchange(port, { maxVersion: 'TLSv1.2' });
    assert.equal(dflt.ok, true, `the default context allows TLS 1.2: ${dflt.error}`);
  });
});
