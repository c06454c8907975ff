'use strict';
// ca, requestCert, rejectUnauthorized and crl: which client certificates
// the agent asks for, verifies, refuses, or lets through marked
// unauthorized (Node's socket.authorized / authorizationError, which the
// upstream reads from the PROXY v2 header's PP2_TYPE_SSL <verify> field).

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash } = require('./lib/agent');
const { Upstream, PP2 } = require('./lib/upstream');
const { exchange, sclient } = require('./lib/tlsclient');

// X509_V_* codes (openssl/x509_vfy.h) as the <verify> field carries them.
const X509_V_OK = 0;
// A lone leaf whose issuer is not in the store (Node: UNABLE_TO_VERIFY_LEAF_SIGNATURE).
const X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21;
const X509_V_ERR_CERT_REVOKED = 23;
// No client certificate: <verify> is non-zero (agent/README.md: 1), never
// read as authenticated (HAProxy sends 0 there).
const VERIFY_NO_CERTIFICATE = 1;

describe('ca + requestCert + rejectUnauthorized + crl: client certificates', () => {
  let p;
  let x;
  let up;
  let agent;

  // One TLS exchange through listener `name`, returning the client's view
  // and the PROXY v2 header the upstream received (null when the
  // connection never reached the upstream).
  async function through(name, opts) {
    up.skipSeen();
    const r = await exchange(agent.port(name), opts);
    let proxy = null;
    if (r.ok) proxy = (await up.nextConnection({ timeoutMs: 5000 })).proxy;
    return { ...r, proxy };
  }
  const alice = () => ({ cert: x.alice.cert, key: x.alice.key });
  const mallory = () => ({ cert: x.mallory.cert, key: x.mallory.key });
  const revoked = () => ({ cert: p.revoked.cert, key: p.revoked.key });

  before(async () => {
    p = pki();
    x = p.agentExtras();
    up = await Upstream.start({ mode: 'echo', proxy: true });
    const l = (name, ctxOpts) => listener(name, {
      upstream: up.address,
      proxyProtocol: true,
      defaultContext: tlsContext(name, { certs: [p.rsa], ...ctxOpts }),
    });
    agent = await Agent.start(snapshot(1, [
      l('reject', { ca: p.ca.cert, requestCert: true, rejectUnauthorized: true }),
      l('request', { ca: p.ca.cert, requestCert: true, rejectUnauthorized: false }),
      l('crl-reject', { ca: p.ca.cert, crls: [p.crlPem], requestCert: true, rejectUnauthorized: true }),
      l('crl-request', { ca: p.ca.cert, crls: [p.crlPem], requestCert: true }),
      l('no-request', { ca: p.ca.cert }),
    ]));
  });

  after(async () => {
    if (agent) await agent.stopClean();
    if (up) await up.close();
  });
  failOnCrash({ afterEach }, () => [agent]);

  test('requestCert + rejectUnauthorized: a certificate issued by a CA of the trust bundle is accepted', async () => {
    for (const maxVersion of ['TLSv1.3', 'TLSv1.2']) {
      const r = await through('reject', { ...alice(), maxVersion });
      assert.equal(r.ok, true, `${maxVersion}: ${r.error}`);
      assert.equal(r.proxy.ssl.verify, X509_V_OK);
      assert.equal(r.proxy.ssl.cn, 'alice');
      assert.equal(r.proxy.ssl.client, PP2.CLIENT_SSL | PP2.CLIENT_CERT_CONN | PP2.CLIENT_CERT_SESS);
    }
    // The CertificateRequest names the trust bundle's CA (the `ca` option).
    const s = await sclient(agent.port('reject'), ['-cert', x.alice.certFile, '-key', x.alice.keyFile]);
    assert.equal(s.handshake, true, s.out);
    assert.match(s.out, /Acceptable client certificate CA names\n[^\n]*CN = Tlsplane Test Root CA/);
  });

  test('requestCert + rejectUnauthorized: a client without a certificate is refused and never reaches the upstream', async () => {
    const m0 = await agent.metrics();
    for (const maxVersion of ['TLSv1.3', 'TLSv1.2']) {
      const r = await through('reject', { maxVersion });
      assert.equal(r.ok, false, `${maxVersion}: a client without a certificate was let through`);
      assert.match(r.code || '', maxVersion === 'TLSv1.3' ? /CERTIFICATE_REQUIRED/ : /HANDSHAKE_FAILURE/, r.error);
    }
    const m = await agent.waitForMetrics(
      (mm) => mm.get('tlsplane_client_errors_total', { listener: 'listeners/reject', cause: 'handshake_failed' }) >=
        m0.get('tlsplane_client_errors_total', { listener: 'listeners/reject', cause: 'handshake_failed' }) + 2,
      { what: 'two handshake_failed client errors' },
    );
    assert.equal(
      m.get('tlsplane_handshakes_total', { listener: 'listeners/reject' }),
      m0.get('tlsplane_handshakes_total', { listener: 'listeners/reject' }),
      'a refused client counted as a completed handshake',
    );
  });

  test('requestCert + rejectUnauthorized: a certificate from a CA outside the trust bundle is refused (unknown_ca)', async () => {
    for (const maxVersion of ['TLSv1.3', 'TLSv1.2']) {
      const r = await through('reject', { ...mallory(), maxVersion });
      assert.equal(r.ok, false, `${maxVersion}: mallory (issued by another CA) was let through`);
      assert.match(r.code || '', /UNKNOWN_CA/, r.error);
    }
  });

  test('requestCert without rejectUnauthorized: every client proceeds, and the upstream learns who was authorized', async () => {
    const good = await through('request', alice());
    assert.equal(good.ok, true, good.error);
    assert.equal(good.proxy.ssl.verify, X509_V_OK, 'authorized: a trusted certificate verifies');
    assert.equal(good.proxy.ssl.cn, 'alice');

    const untrusted = await through('request', mallory());
    assert.equal(untrusted.ok, true, `the connection must proceed: ${untrusted.error}`);
    assert.equal(untrusted.proxy.ssl.verify, X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE, 'authorizationError: UNABLE_TO_VERIFY_LEAF_SIGNATURE');
    assert.equal(untrusted.proxy.ssl.cn, 'mallory');
    assert.ok(untrusted.proxy.ssl.client & PP2.CLIENT_CERT_CONN, 'the client sent a certificate on this connection');

    const none = await through('request', {});
    assert.equal(none.ok, true, none.error);
    assert.equal(none.proxy.ssl.verify, VERIFY_NO_CERTIFICATE, 'no certificate is not authorized');
    assert.equal(none.proxy.ssl.cn, undefined);
    assert.equal(none.proxy.ssl.client, PP2.CLIENT_SSL, 'no certificate flags without a certificate');
  });

  test('crl + rejectUnauthorized: a revoked client certificate is refused, an unrevoked one accepted', async () => {
    for (const maxVersion of ['TLSv1.3', 'TLSv1.2']) {
      const r = await through('crl-reject', { ...revoked(), maxVersion });
      assert.equal(r.ok, false, `${maxVersion}: a revoked certificate was let through`);
      assert.match(r.code || '', /CERTIFICATE_REVOKED/, r.error);
      const ok = await through('crl-reject', { ...alice(), maxVersion });
      assert.equal(ok.ok, true, `${maxVersion}: alice (not revoked): ${ok.error}`);
      assert.equal(ok.proxy.ssl.verify, X509_V_OK);
    }
    // The same certificate is accepted where no CRL is configured.
    const noCrl = await through('reject', revoked());
    assert.equal(noCrl.ok, true, `without crl the certificate verifies: ${noCrl.error}`);
  });

  test('crl without rejectUnauthorized: the revoked certificate proceeds marked CERT_REVOKED', async () => {
    const r = await through('crl-request', revoked());
    assert.equal(r.ok, true, r.error);
    assert.equal(r.proxy.ssl.verify, X509_V_ERR_CERT_REVOKED);
    assert.equal(r.proxy.ssl.cn, 'revoked-client');
  });

  test('without requestCert no certificate is asked for, even with a trust bundle', async () => {
    const s = await sclient(agent.port('no-request'), ['-cert', x.alice.certFile, '-key', x.alice.keyFile]);
    assert.equal(s.handshake, true, s.out);
    assert.match(s.out, /No client certificate CA names sent/);
    const r = await through('no-request', alice());
    assert.equal(r.ok, true, r.error);
    assert.equal(r.proxy.ssl.client, PP2.CLIENT_SSL, 'no client certificate on the connection');
    assert.equal(r.proxy.ssl.verify, VERIFY_NO_CERTIFICATE);
    assert.equal(r.proxy.ssl.cn, undefined);
  });
});
