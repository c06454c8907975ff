'use strict';
// OCSP stapling (the 'OCSPRequest' event): a client sending status_request
// gets the stored OCSP response of the certificate actually served (RSA
// and ECDSA side by side each get their own), never one whose nextUpdate
// has passed, and nothing when stapling is off; the issuer that checks a
// response may be given apart from the chain, which is then served as is.
// A response saying "revoked" is stapled only where the context sets
// ocsp_staple_revoked.

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const tls = require('node:tls');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { sclient, HOST } = require('./lib/tlsclient');

const RSA = ['-sigalgs', 'rsa_pss_rsae_sha256:rsa_pkcs1_sha256'];
const ECDSA = ['-sigalgs', 'ecdsa_secp256r1_sha256'];

// The OCSP response a Node client receives (requestOCSP), or null.
function stapleOf(port, opts) {
  return new Promise((resolve, reject) => {
    let staple = null;
    const sock = tls.connect({ host: HOST, port, rejectUnauthorized: false, requestOCSP: true, ...opts });
    sock.on('OCSPResponse', (resp) => {
      staple = resp;
    });
    sock.on('secureConnect', () => {
      sock.end();
      resolve(staple);
    });
    sock.on('error', reject);
  });
}

describe('OCSP stapling', () => {
  let p;
  let x;
  let up;
  let agent;

  let revoked;

  before(async () => {
    p = pki();
    x = p.agentExtras();
    revoked = p.leaf('ocsp-revoked', { type: 'rsa', cn: 'revoked.example.com' });
    p.revoke('ocsp-revoked');
    revoked.ocspResponse = p.ocspResponseFor('ocsp-revoked');
    up = await Upstream.start({ mode: 'echo' });
    const l = (name, ctxOpts) => listener(name, {
      upstream: up.address,
      defaultContext: tlsContext(name, { issuer: p.ca.cert, ...ctxOpts }),
    });
    agent = await Agent.start(snapshot(1, [
      // p.rsa and p.ecdsa carry their own "good" responses (7 days).
      l('staple', { certs: [p.rsa, p.ecdsa], ocspStapling: true }),
      l('expired', { certs: [{ leaf: p.rsa, ocsp: x.rsaOcspExpired }, p.ecdsa], ocspStapling: true }),
      l('off', { certs: [p.rsa, p.ecdsa], ocspStapling: false }),
      l('revoked', { certs: [revoked], ocspStapling: true }),
      l('revoked-stapled', { certs: [revoked], ocspStapling: true, ocspStapleRevoked: true }),
      // The leaf alone as the chain, its issuer given apart.
      listener('issuer-apart', {
        upstream: up.address,
        defaultContext: tlsContext('issuer-apart', {
          certs: [{ leaf: p.rsa, chain: p.rsa.cert, issuerCertificate: p.ca.cert }], ocspStapling: true,
        }),
      }),
    ]));
  });

  after(async () => {
    if (agent) await agent.stopClean();
    if (up) await up.close();
  });
  failOnCrash({ afterEach }, () => [agent]);

  test('a client asking for status (-status) gets the stored response of the certificate it is served: RSA and ECDSA each their own', async () => {
    const port = agent.port('staple');
    for (const v of ['-tls1_3', '-tls1_2']) {
      const rsa = await sclient(port, [v, '-status', ...RSA]);
      assert.equal(rsa.fingerprint, p.rsa.fingerprint, rsa.out);
      assert.equal(rsa.ocspStapled, true, `${v}: no staple for the RSA certificate`);
      assert.equal(rsa.ocspSerial, p.rsa.serial, `${v}: the RSA certificate got another certificate's response`);
      const ec = await sclient(port, [v, '-status', ...ECDSA]);
      assert.equal(ec.fingerprint, p.ecdsa.fingerprint, ec.out);
      assert.equal(ec.ocspStapled, true, `${v}: no staple for the ECDSA certificate`);
      assert.equal(ec.ocspSerial, p.ecdsa.serial, `${v}: the ECDSA certificate got another certificate's response`);
    }
    // Byte for byte the stored DER.
    const rsaStaple = await stapleOf(port, { sigalgs: 'rsa_pss_rsae_sha256' });
    assert.ok(rsaStaple && rsaStaple.equals(p.rsa.ocspResponse), 'the RSA staple is not the stored response');
    const ecStaple = await stapleOf(port, { sigalgs: 'ecdsa_secp256r1_sha256' });
    assert.ok(ecStaple && ecStaple.equals(p.ecdsa.ocspResponse), 'the ECDSA staple is not the stored response');
  });

  test('a client not asking gets no staple, and OCSPRequest counts only those that ask', async () => {
    const port = agent.port('staple');
    const L = { listener: 'listeners/staple' };
    const m0 = await agent.metrics();
    const quiet = await sclient(port, []);
    assert.equal(quiet.handshake, true);
    assert.equal(quiet.ocspStapled, false, 'stapled without status_request');
    assert.doesNotMatch(quiet.out, /OCSP response/);
    const asked = await sclient(port, ['-status']);
    assert.equal(asked.ocspStapled, true);
    const m = await agent.waitForMetrics((mm) => mm.get('tlsplane_handshakes_total', L) >= m0.get('tlsplane_handshakes_total', L) + 2);
    assert.equal(m.get('tlsplane_ocsp_requests_total', L) - m0.get('tlsplane_ocsp_requests_total', L), 1);
    assert.equal(m.get('tlsplane_ocsp_staples_total', L) - m0.get('tlsplane_ocsp_staples_total', L), 1);
  });

  test('a response whose nextUpdate has passed is never stapled (the other certificate\'s valid one still is)', async () => {
    const port = agent.port('expired');
    const L = { listener: 'listeners/expired' };
    const m0 = await agent.metrics();
    for (const v of ['-tls1_3', '-tls1_2']) {
      const rsa = await sclient(port, [v, '-status', ...RSA]);
      assert.equal(rsa.handshake, true, rsa.out);
      assert.equal(rsa.fingerprint, p.rsa.fingerprint);
      assert.equal(rsa.ocspStapled, false, `${v}: an expired OCSP response was stapled`);
      assert.equal(rsa.ocspNone, true, rsa.out);
      const ec = await sclient(port, [v, '-status', ...ECDSA]);
      assert.equal(ec.ocspStapled, true, `${v}: the ECDSA certificate's valid response is not stapled`);
      assert.equal(ec.ocspSerial, p.ecdsa.serial);
    }
    assert.equal(await stapleOf(port, { sigalgs: 'rsa_pss_rsae_sha256' }), null);
    const m = await agent.waitForMetrics((mm) => mm.get('tlsplane_handshakes_total', L) >= m0.get('tlsplane_handshakes_total', L) + 5);
    assert.equal(m.get('tlsplane_ocsp_requests_total', L) - m0.get('tlsplane_ocsp_requests_total', L), 5);
    assert.equal(m.get('tlsplane_ocsp_staples_total', L) - m0.get('tlsplane_ocsp_staples_total', L), 2);
  });

  test('the issuer given apart (issuer_certificate_pem), the chain just the leaf: the response is stapled and exactly the leaf is served', async () => {
    const port = agent.port('issuer-apart');
    for (const v of ['-tls1_3', '-tls1_2']) {
      const r = await sclient(port, [v, '-status', '-showcerts']);
      assert.equal(r.handshake, true, r.out);
      assert.equal(r.ocspStapled, true, `${v}: no staple: ${r.out.slice(0, 1500)}`);
      assert.equal(r.ocspSerial, p.rsa.serial);
      const chain = /^Certificate chain\n([\s\S]*?)^---$/m.exec(r.out);
      assert.ok(chain, r.out);
      const served = chain[1].match(/-----BEGIN CERTIFICATE-----/g) || [];
      assert.equal(served.length, 1, `${v}: the chain served is not the leaf alone:\n${chain[1]}`);
      assert.equal(r.fingerprint, p.rsa.fingerprint);
    }
    const staple = await stapleOf(port, {});
    assert.ok(staple && staple.equals(p.rsa.ocspResponse), 'the staple is not the stored response');
  });

  test('stapling off: nothing is stapled even though responses are stored', async () => {
    const port = agent.port('off');
    for (const sig of [RSA, ECDSA]) {
      const r = await sclient(port, ['-status', ...sig]);
      assert.equal(r.handshake, true, r.out);
      assert.equal(r.ocspStapled, false, 'stapled with ocsp_stapling false');
    }
  });

  test('a response saying revoked is not stapled by default; ocsp_staple_revoked staples it', async () => {
    for (const v of ['-tls1_3', '-tls1_2']) {
      const quiet = await sclient(agent.port('revoked'), [v, '-status']);
      assert.equal(quiet.handshake, true, quiet.out);
      assert.equal(quiet.fingerprint, revoked.fingerprint);
      assert.equal(quiet.ocspStapled, false, `${v}: a revoked response was stapled by default`);
      assert.equal(quiet.ocspNone, true, quiet.out);
      const told = await sclient(agent.port('revoked-stapled'), [v, '-status']);
      assert.equal(told.ocspStapled, true, `${v}: not stapled with ocsp_staple_revoked`);
      assert.equal(told.ocspSerial, revoked.serial);
      assert.match(told.out, /Cert Status: revoked/);
    }
  });
});
