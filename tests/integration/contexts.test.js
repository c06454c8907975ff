'use strict';
// Trust bundles, revocation lists, TLS contexts referencing them, listeners
// with SNI routes, and ticket-key rings: references checked both ways
// (a missing one refused on write, a used one refused on delete), defaults
// filled, and ticket-key bytes never read back.

const { test, describe, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { useServer } = require('./lib/server');
const { pki } = require('./lib/pki');
const {
  status, seconds, expectGrpcError, expectRefused, uid, captureWorld, assertUnchanged, statusName,
} = require('./lib/util');

// Resources shared by the tests of this file, made once the server is up.
const R = {};
let p;
const ctx = useServer({ before, after, beforeEach, afterEach }, { setup: makeSharedResources });
const api = () => ctx.api;

function pemBlocks(text, label) {
  const re = new RegExp(`-----BEGIN ${label}-----([\\s\\S]*?)-----END ${label}-----`, 'g');
  return [...text.matchAll(re)].map((m) => m[1].replace(/\s+/g, ''));
}

async function createCert(leaf, labels = {}) {
  const id = uid('cert');
  return api().CertificateService.CreateCertificate({
    certificateId: id, certificate: { certificateChainPem: leaf.chain || leaf.cert, privateKeyPem: leaf.key, labels },
  });
}

async function createContext(tlsContext, id = uid('ctx')) {
  return api().TlsContextService.CreateTlsContext({ tlsContextId: id, tlsContext });
}

async function createListener(listener, id = uid('lis')) {
  return api().ListenerService.CreateListener({ listenerId: id, listener });
}

async function makeSharedResources() {
  p = pki();
  R.rsa = await createCert(p.rsa);
  R.ecdsa = await createCert(p.ecdsa);
  R.ecdsa2 = await createCert(p.ecdsa2);
  R.tb = await api().TrustBundleService.CreateTrustBundle({
    trustBundleId: uid('tb'), trustBundle: { caPem: p.ca.cert },
  });
  R.crl = await api().RevocationListService.CreateRevocationList({
    revocationListId: uid('crl'), revocationList: { crlPem: p.crlPem },
  });
  R.ctx = await createContext({ certificates: [R.rsa.name, R.ecdsa.name] });
}

describe('trust bundles', () => {
  test('two CA certificates: one derived entry each, matching openssl', async () => {
    const tb = await api().TrustBundleService.CreateTrustBundle({
      trustBundleId: uid('tb'), trustBundle: { caPem: p.ca.cert + p.ca2.cert, labels: { use: 'mtls' } },
    });
    assert.match(tb.name, /^trustBundles\//);
    assert.equal(tb.certificates.length, 2);
    const [a, b] = tb.certificates;
    assert.equal(a.subject, p.ca.subject);
    assert.equal(a.sha256Fingerprint, p.ca.fingerprint);
    assert.equal(a.isCa, true);
    assert.equal(seconds(a.notAfter), p.ca.notAfter.getTime() / 1000);
    assert.equal(b.subject, p.ca2.subject);
    assert.equal(b.sha256Fingerprint, p.ca2.fingerprint);
    assert.equal(tb.allowInvalidTime, false);
    assert.deepEqual(pemBlocks(tb.caPem, 'CERTIFICATE'), [...pemBlocks(p.ca.cert, 'CERTIFICATE'), ...pemBlocks(p.ca2.cert, 'CERTIFICATE')]);
    assert.deepEqual(await api().TrustBundleService.GetTrustBundle({ name: tb.name }), tb);
  });

  test('garbage ca_pem: INVALID_ARGUMENT naming trust_bundle.ca_pem, nothing written', async () => {
    await expectRefused(ctx.api, () => api().TrustBundleService.CreateTrustBundle({
      trustBundleId: uid('tb'), trustBundle: { caPem: 'not a certificate' },
    }), status.INVALID_ARGUMENT, { field: 'trust_bundle.ca_pem' });
    await expectRefused(ctx.api, () => api().TrustBundleService.CreateTrustBundle({
      trustBundleId: uid('tb'), trustBundle: { caPem: '' },
    }), status.INVALID_ARGUMENT, { field: 'trust_bundle.ca_pem' });
  });

  test('update ca_pem with update_mask and etag', async () => {
    const tb = await api().TrustBundleService.CreateTrustBundle({ trustBundleId: uid('tb'), trustBundle: { caPem: p.ca.cert } });
    const u = await api().TrustBundleService.UpdateTrustBundle({
      trustBundle: { name: tb.name, etag: tb.etag, caPem: p.ca2.cert }, updateMask: { paths: ['ca_pem'] },
    });
    assert.equal(u.certificates.length, 1);
    assert.equal(u.certificates[0].subject, p.ca2.subject);
    await expectRefused(ctx.api, () => api().TrustBundleService.UpdateTrustBundle({
      trustBundle: { name: tb.name, etag: tb.etag, caPem: p.ca.cert }, updateMask: { paths: ['ca_pem'] },
    }), status.FAILED_PRECONDITION);
  });
});

describe('revocation lists', () => {
  test('PEM: issuer, this/next update, revoked count and CRL number derived', async () => {
    const rl = R.crl;
    assert.match(rl.name, /^revocationLists\//);
    assert.equal(rl.issuer, p.crl.issuer);
    assert.equal(seconds(rl.thisUpdate), p.crl.lastUpdate.getTime() / 1000);
    assert.equal(seconds(rl.nextUpdate), p.crl.nextUpdate.getTime() / 1000);
    assert.equal(rl.revokedCount, 1);
    // openssl prints "0x01"; the API gives hex: compare the numbers.
    assert.ok(rl.crlNumber, 'crl_number empty');
    assert.equal(BigInt(`0x${rl.crlNumber.replace(/^0x/i, '').replace(/:/g, '')}`), BigInt(p.crl.crlNumber));
    assert.deepEqual(pemBlocks(rl.crlPem, 'X509 CRL'), pemBlocks(p.crlPem, 'X509 CRL'));
    assert.equal(rl.crlDer.length, 0, 'crl_der is input only');
  });

  test('DER input: stored and returned as the same CRL in PEM', async () => {
    const rl = await api().RevocationListService.CreateRevocationList({
      revocationListId: uid('crlder'), revocationList: { crlDer: p.crlDer },
    });
    assert.deepEqual(pemBlocks(rl.crlPem, 'X509 CRL'), pemBlocks(p.crlPem, 'X509 CRL'));
    assert.equal(rl.crlDer.length, 0, 'crl_der is input only');
    assert.equal(rl.revokedCount, 1);
    assert.equal(rl.issuer, p.crl.issuer);
  });

  test('garbage CRL (PEM and DER), or both given: INVALID_ARGUMENT, nothing written', async () => {
    await expectRefused(ctx.api, () => api().RevocationListService.CreateRevocationList({
      revocationListId: uid('crl'), revocationList: { crlPem: '-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n' },
    }), status.INVALID_ARGUMENT, { field: 'revocation_list.crl_pem' });
    await expectRefused(ctx.api, () => api().RevocationListService.CreateRevocationList({
      revocationListId: uid('crl'), revocationList: { crlDer: Buffer.from('not DER') },
    }), status.INVALID_ARGUMENT, { field: 'revocation_list.crl_der' });
    await expectRefused(ctx.api, () => api().RevocationListService.CreateRevocationList({
      revocationListId: uid('crl'), revocationList: { crlPem: p.crlPem, crlDer: p.crlDer },
    }), status.INVALID_ARGUMENT, { field: ['revocation_list.crl_pem', 'revocation_list.crl_der'] });
    await expectRefused(ctx.api, () => api().RevocationListService.CreateRevocationList({
      revocationListId: uid('crl'), revocationList: { crlPem: p.rsa.cert },
    }), status.INVALID_ARGUMENT, { field: 'revocation_list.crl_pem' });
  });
});

describe('TLS contexts', () => {
  test('RSA and ECDSA certificates side by side, with trust bundle, CRL and client-auth options', async () => {
    const tc = await createContext({
      certificates: [R.rsa.name, R.ecdsa.name],
      cipherPolicy: 'cipherPolicies/mozilla-intermediate',
      trustBundle: R.tb.name,
      revocationLists: [R.crl.name],
      requestCert: true,
      rejectUnauthorized: true,
      alpnProtocols: ['h2', 'http/1.1'],
      npnProtocols: ['http/1.1'],
      sessionTimeout: { seconds: '600', nanos: 0 },
      sessionIdContext: 'tlsplane-test',
      sessionTickets: { value: false },
      tls13Tickets: { value: 1 },
      ocspStapling: true,
      maxSendFragment: 4096,
      labels: { app: 'web' },
    });
    assert.match(tc.name, /^tlsContexts\//);
    assert.deepEqual(tc.certificates, [R.rsa.name, R.ecdsa.name]);
    assert.equal(tc.cipherPolicy, 'cipherPolicies/mozilla-intermediate');
    assert.equal(tc.trustBundle, R.tb.name);
    assert.deepEqual(tc.revocationLists, [R.crl.name]);
    assert.equal(tc.requestCert, true);
    assert.equal(tc.rejectUnauthorized, true);
    assert.deepEqual(tc.alpnProtocols, ['h2', 'http/1.1']);
    assert.deepEqual(tc.npnProtocols, ['http/1.1']);
    assert.equal(seconds(tc.sessionTimeout), 600);
    assert.equal(tc.sessionIdContext, 'tlsplane-test');
    assert.deepEqual(tc.sessionTickets, { value: false });
    assert.deepEqual(tc.tls13Tickets, { value: 1 });
    assert.equal(tc.ocspStapling, true);
    assert.equal(tc.maxSendFragment, 4096);
    assert.deepEqual(await api().TlsContextService.GetTlsContext({ name: tc.name }), tc);
  });

  test('an Ed25519 certificate beside RSA and ECDSA', async () => {
    const ed = await createCert(p.ed25519);
    const tc = await createContext({ certificates: [R.rsa.name, R.ecdsa.name, ed.name] });
    assert.equal(tc.certificates.length, 3);
  });

  const BAD_TIMEOUTS = [
    ['idleTimeout', 'idle_timeout', { seconds: '0', nanos: 0 }, '0 s'],
    ['idleTimeout', 'idle_timeout', { seconds: '-1', nanos: 0 }, 'negative'],
    ['idleTimeout', 'idle_timeout', { seconds: '86401', nanos: 0 }, 'over a day'],
    ['writeTimeout', 'write_timeout', { seconds: '0', nanos: 0 }, '0 s'],
    ['writeTimeout', 'write_timeout', { seconds: '3601', nanos: 0 }, 'over an hour'],
  ];
  for (const [json, field, value, label] of BAD_TIMEOUTS) {
    test(`refused: ${field} ${label} (INVALID_ARGUMENT naming listener.${field})`, async () => {
      await expectRefused(ctx.api, () => createListener({
        address: '127.0.0.1:18449', defaultTlsContext: R.ctx.name, upstream: '127.0.0.1:18086', [json]: value,
      }), status.INVALID_ARGUMENT, { field: `listener.${field}: must be more than 0 and at most`, what: `${field} ${label}` });
    });
  }

  const REFUSED = [
    ['two ECDSA certificates', () => ({ certificates: [R.ecdsa.name, R.ecdsa2.name] }), 'tls_context.certificates', null],
    ['no certificate', () => ({ certificates: [] }), 'tls_context.certificates', null],
    ['a missing certificate', () => ({ certificates: [R.rsa.name, 'certificates/does-not-exist'] }), 'tls_context.certificates', 'certificates/does-not-exist'],
    ['a trust bundle named as a certificate', () => ({ certificates: [R.tb.name] }), 'tls_context.certificates', null],
    ['a missing cipher policy', () => ({ certificates: [R.rsa.name], cipherPolicy: 'cipherPolicies/nope' }), 'tls_context.cipher_policy', 'cipherPolicies/nope'],
    ['a missing trust bundle', () => ({ certificates: [R.rsa.name], trustBundle: 'trustBundles/nope', requestCert: true }), 'tls_context.trust_bundle', 'trustBundles/nope'],
    ['a missing revocation list', () => ({ certificates: [R.rsa.name], trustBundle: R.tb.name, revocationLists: ['revocationLists/nope'] }), 'tls_context.revocation_lists', 'revocationLists/nope'],
    ['session_id_context over 32 bytes', () => ({ certificates: [R.rsa.name], sessionIdContext: 'x'.repeat(33) }), 'tls_context.session_id_context', null],
    ['tls13_tickets above 10', () => ({ certificates: [R.rsa.name], tls13Tickets: { value: 11 } }), 'tls_context.tls13_tickets: must be 0 to 10', null],
    ['tls13_tickets negative', () => ({ certificates: [R.rsa.name], tls13Tickets: { value: -1 } }), 'tls_context.tls13_tickets: must be 0 to 10', null],
    ['max_send_fragment below 512', () => ({ certificates: [R.rsa.name], maxSendFragment: 100 }), 'tls_context.max_send_fragment', null],
    ['max_send_fragment above 16384', () => ({ certificates: [R.rsa.name], maxSendFragment: 16385 }), 'tls_context.max_send_fragment', null],
  ];
  for (const [label, make, field, mention] of REFUSED) {
    test(`refused: ${label} (INVALID_ARGUMENT naming ${field})`, async () => {
      await expectRefused(ctx.api, () => createContext(make()), status.INVALID_ARGUMENT, {
        field, includes: mention ? [mention] : [], what: label,
      });
    });
  }

  test('update tls13_tickets with update_mask; 11 refused, nothing changed', async () => {
    const tc = await createContext({ certificates: [R.rsa.name] });
    const u = await api().TlsContextService.UpdateTlsContext({
      tlsContext: { name: tc.name, etag: tc.etag, tls13Tickets: { value: 1 } },
      updateMask: { paths: ['tls13_tickets'] },
    });
    assert.deepEqual(u.tls13Tickets, { value: 1 });
    await expectRefused(ctx.api, () => api().TlsContextService.UpdateTlsContext({
      tlsContext: { name: tc.name, tls13Tickets: { value: 11 } }, updateMask: { paths: ['tls13_tickets'] },
    }), status.INVALID_ARGUMENT, { field: 'tls_context.tls13_tickets: must be 0 to 10' });
    assert.deepEqual(await api().TlsContextService.GetTlsContext({ name: tc.name }), u);
  });

  test('update certificates with update_mask; a missing one refused, nothing changed', async () => {
    const tc = await createContext({ certificates: [R.rsa.name] });
    const u = await api().TlsContextService.UpdateTlsContext({
      tlsContext: { name: tc.name, etag: tc.etag, certificates: [R.rsa.name, R.ecdsa.name] },
      updateMask: { paths: ['certificates'] },
    });
    assert.deepEqual(u.certificates, [R.rsa.name, R.ecdsa.name]);
    await expectRefused(ctx.api, () => api().TlsContextService.UpdateTlsContext({
      tlsContext: { name: tc.name, certificates: ['certificates/gone'] }, updateMask: { paths: ['certificates'] },
    }), status.INVALID_ARGUMENT, { field: 'tls_context.certificates' });
    await expectRefused(ctx.api, () => api().TlsContextService.UpdateTlsContext({
      tlsContext: { name: tc.name, etag: tc.etag, alpnProtocols: ['h2'] }, updateMask: { paths: ['alpn_protocols'] },
    }), status.FAILED_PRECONDITION);
    assert.deepEqual(await api().TlsContextService.GetTlsContext({ name: tc.name }), u);
  });
});

describe('references: a used resource cannot be deleted', () => {
  // Each deletion must fail with FAILED_PRECONDITION naming the referrer.
  test('a certificate used by a context', async () => {
    const cert = await createCert(p.ecdsa2);
    const tc = await createContext({ certificates: [cert.name] });
    const err = await expectRefused(ctx.api, () => api().CertificateService.DeleteCertificate({ name: cert.name }), status.FAILED_PRECONDITION, {
      includes: [tc.name],
    });
    assert.ok(err);
    // Once the context is gone the certificate can go.
    await api().TlsContextService.DeleteTlsContext({ name: tc.name });
    await api().CertificateService.DeleteCertificate({ name: cert.name });
  });

  test('a trust bundle, a revocation list and a cipher policy used by a context', async () => {
    const tb = await api().TrustBundleService.CreateTrustBundle({ trustBundleId: uid('tb'), trustBundle: { caPem: p.ca.cert } });
    const rl = await api().RevocationListService.CreateRevocationList({ revocationListId: uid('crl'), revocationList: { crlPem: p.crlPem } });
    const cp = await api().CipherPolicyService.CreateCipherPolicy({ cipherPolicyId: uid('cp'), cipherPolicy: { ciphers: 'HIGH:!aNULL' } });
    const tc = await createContext({
      certificates: [R.rsa.name], trustBundle: tb.name, revocationLists: [rl.name], cipherPolicy: cp.name, requestCert: true,
    });
    await expectRefused(ctx.api, () => api().TrustBundleService.DeleteTrustBundle({ name: tb.name }), status.FAILED_PRECONDITION, { includes: [tc.name] });
    await expectRefused(ctx.api, () => api().RevocationListService.DeleteRevocationList({ name: rl.name }), status.FAILED_PRECONDITION, { includes: [tc.name] });
    await expectRefused(ctx.api, () => api().CipherPolicyService.DeleteCipherPolicy({ name: cp.name }), status.FAILED_PRECONDITION, { includes: [tc.name] });
  });

  test('a context used by a listener (default and SNI route)', async () => {
    const tcDefault = await createContext({ certificates: [R.rsa.name] });
    const tcSni = await createContext({ certificates: [R.ecdsa.name] });
    const l = await createListener({
      address: '127.0.0.1:18443', defaultTlsContext: tcDefault.name, upstream: '127.0.0.1:18080',
      sniRoutes: [{ hostname: 'api.example.com', tlsContext: tcSni.name }],
    });
    await expectRefused(ctx.api, () => api().TlsContextService.DeleteTlsContext({ name: tcDefault.name }), status.FAILED_PRECONDITION, { includes: [l.name] });
    await expectRefused(ctx.api, () => api().TlsContextService.DeleteTlsContext({ name: tcSni.name }), status.FAILED_PRECONDITION, { includes: [l.name] });
    await api().ListenerService.DeleteListener({ name: l.name, etag: l.etag });
    await api().TlsContextService.DeleteTlsContext({ name: tcSni.name });
  });

  test('a certificate change that would break a context using it is refused', async () => {
    // ctx holds RSA + ECDSA; turning its RSA certificate into a second ECDSA
    // one would leave two certificates of one key algorithm.
    const rsa = await createCert(p.rsa);
    const tc = await createContext({ certificates: [rsa.name, R.ecdsa.name] });
    const before = await captureWorld(ctx.api);
    let err;
    try {
      await api().CertificateService.UpdateCertificate({
        certificate: { name: rsa.name, certificateChainPem: p.ecdsa2.cert, privateKeyPem: p.ecdsa2.key },
        updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
      });
    } catch (e) {
      err = e;
    }
    assert.ok(err, 'the update that breaks the context was accepted');
    assert.ok([status.INVALID_ARGUMENT, status.FAILED_PRECONDITION].includes(err.code), `${statusName(err.code)}: ${err.details}`);
    assert.ok(err.details.includes(tc.name), `the message does not name ${tc.name}: ${err.details}`);
    await assertUnchanged(ctx.api, before);
  });
});

describe('listeners', () => {
  test('exact and wildcard SNI routes accepted; defaults filled', async () => {
    const l = await createListener({
      address: '127.0.0.1:18444',
      defaultTlsContext: R.ctx.name,
      upstream: '127.0.0.1:18081',
      sniRoutes: [
        { hostname: 'www.example.com', tlsContext: R.ctx.name },
        { hostname: '*.example.com', tlsContext: R.ctx.name },
      ],
      agentSelector: { region: 'eu' },
      labels: { tier: 'edge' },
    });
    assert.match(l.name, /^listeners\//);
    assert.equal(l.address, '127.0.0.1:18444');
    assert.equal(l.defaultTlsContext, R.ctx.name);
    assert.deepEqual(l.sniRoutes, [
      { hostname: 'www.example.com', tlsContext: R.ctx.name },
      { hostname: '*.example.com', tlsContext: R.ctx.name },
    ]);
    assert.equal(l.upstream, '127.0.0.1:18081');
    assert.deepEqual(l.agentSelector, { region: 'eu' });
    // Defaults (api.md / listener.proto): handshake 120 s, 3 renegotiations per 600 s.
    assert.equal(seconds(l.handshakeTimeout), 120, `handshake_timeout ${JSON.stringify(l.handshakeTimeout)}`);
    assert.deepEqual(l.renegotiationLimit, { value: 3 });
    assert.equal(seconds(l.renegotiationWindow), 600, `renegotiation_window ${JSON.stringify(l.renegotiationWindow)}`);
    // idle 600 s and write stall 60 s (listener.proto).
    assert.equal(seconds(l.idleTimeout), 600, `idle_timeout ${JSON.stringify(l.idleTimeout)}`);
    assert.equal(seconds(l.writeTimeout), 60, `write_timeout ${JSON.stringify(l.writeTimeout)}`);
    assert.equal(l.maxConnections, 0);
    assert.deepEqual(await api().ListenerService.GetListener({ name: l.name }), l);
  });

  test('explicit values are kept, renegotiation_limit 0 included', async () => {
    const l = await createListener({
      address: '127.0.0.1:18445', defaultTlsContext: R.ctx.name, upstream: '127.0.0.1:18082',
      handshakeTimeout: { seconds: '10', nanos: 0 }, renegotiationLimit: { value: 0 },
      renegotiationWindow: { seconds: '60', nanos: 0 }, maxConnections: 1000, proxyProtocol: true,
      idleTimeout: { seconds: '30', nanos: 0 }, writeTimeout: { seconds: '5', nanos: 0 },
    });
    assert.equal(seconds(l.idleTimeout), 30);
    assert.equal(seconds(l.writeTimeout), 5);
    assert.equal(seconds(l.handshakeTimeout), 10);
    assert.deepEqual(l.renegotiationLimit, { value: 0 });
    assert.equal(seconds(l.renegotiationWindow), 60);
    assert.equal(l.maxConnections, 1000);
    assert.equal(l.proxyProtocol, true);
  });

  for (const bad of ['foo.*.com', '*', 'a..b', '*.*.example.com', 'www.exa mple.com', '']) {
    test(`SNI hostname ${JSON.stringify(bad)} refused, naming the route`, async () => {
      await expectRefused(ctx.api, () => createListener({
        address: '127.0.0.1:18446', defaultTlsContext: R.ctx.name, upstream: '127.0.0.1:18083',
        sniRoutes: [
          { hostname: 'ok.example.com', tlsContext: R.ctx.name },
          { hostname: bad, tlsContext: R.ctx.name },
        ],
      }), status.INVALID_ARGUMENT, { field: /^listener\.sni_routes(\[1\])?/, what: `hostname ${bad}` });
    });
  }

  const REFUSED = [
    ['a missing default context', () => ({ defaultTlsContext: 'tlsContexts/nope' }), 'listener.default_tls_context', 'tlsContexts/nope'],
    ['a certificate named as the default context', () => ({ defaultTlsContext: R.rsa.name }), 'listener.default_tls_context', null],
    ['a missing SNI route context', () => ({ sniRoutes: [{ hostname: 'x.example.com', tlsContext: 'tlsContexts/nope' }] }), 'listener.sni_routes', 'tlsContexts/nope'],
    ['a missing ticket key ring', () => ({ ticketKeyRing: 'ticketKeyRings/nope' }), 'listener.ticket_key_ring', 'ticketKeyRings/nope'],
  ];
  for (const [label, make, field, mention] of REFUSED) {
    test(`refused: ${label}`, async () => {
      await expectRefused(ctx.api, () => createListener({
        address: '127.0.0.1:18447', defaultTlsContext: R.ctx.name, upstream: '127.0.0.1:18084', ...make(),
      }), status.INVALID_ARGUMENT, { field, includes: mention ? [mention] : [], what: label });
    });
  }

  test('update SNI routes with update_mask; stale etag refused', async () => {
    const l = await createListener({ address: '127.0.0.1:18448', defaultTlsContext: R.ctx.name, upstream: '127.0.0.1:18085' });
    const u = await api().ListenerService.UpdateListener({
      listener: { name: l.name, etag: l.etag, sniRoutes: [{ hostname: '*.example.org', tlsContext: R.ctx.name }] },
      updateMask: { paths: ['sni_routes'] },
    });
    assert.deepEqual(u.sniRoutes, [{ hostname: '*.example.org', tlsContext: R.ctx.name }]);
    assert.equal(u.address, l.address);
    assert.equal(seconds(u.handshakeTimeout), 120);
    await expectRefused(ctx.api, () => api().ListenerService.UpdateListener({
      listener: { name: l.name, etag: l.etag, sniRoutes: [] }, updateMask: { paths: ['sni_routes'] },
    }), status.FAILED_PRECONDITION);
    await expectRefused(ctx.api, () => api().ListenerService.UpdateListener({
      listener: { name: l.name, sniRoutes: [{ hostname: 'foo.*.com', tlsContext: R.ctx.name }] }, updateMask: { paths: ['sni_routes'] },
    }), status.INVALID_ARGUMENT, { field: /^listener\.sni_routes/ });
    assert.deepEqual(await api().ListenerService.GetListener({ name: l.name }), u);
  });
});

describe('ticket key rings', () => {
  // "hex": plain (32 digits) or colon-separated like sha256_fingerprint.
  const HEX32 = /^(?:[0-9a-fA-F]{32}|(?:[0-9a-fA-F]{2}:){15}[0-9a-fA-F]{2})$/;
  const keyNameHex = (name) => name.replace(/:/g, '').toLowerCase();

  // No key bytes anywhere in a response: no bytes field, and none of the
  // given secrets in any encoding.
  function assertNoKeyBytes(obj, secrets = []) {
    const walk = (v, path) => {
      if (Buffer.isBuffer(v)) assert.equal(v.length, 0, `bytes at ${path}`);
      else if (Array.isArray(v)) v.forEach((x, i) => walk(x, `${path}[${i}]`));
      else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) walk(x, `${path}.${k}`);
    };
    walk(obj, 'ring');
    const json = JSON.stringify(obj).toLowerCase();
    for (const s of secrets) {
      for (const enc of [s.toString('hex'), s.toString('base64')]) {
        assert.ok(!json.includes(enc.toLowerCase()), 'secret key bytes in a response');
      }
    }
  }

  async function createRing(ring = {}) {
    return api().TicketKeyService.CreateTicketKeyRing({ ticketKeyRingId: uid('ring'), ticketKeyRing: ring });
  }

  test('create: one ACTIVE key, default retained_keys 4 and rotation every 12 h, no key bytes', async () => {
    const r = await createRing({});
    assert.match(r.name, /^ticketKeyRings\//);
    assert.equal(r.retainedKeys, 4);
    assert.equal(seconds(r.rotationPeriod), 12 * 3600);
    assert.equal(r.keys.length, 1);
    assert.equal(r.keys[0].state, 'ACTIVE');
    assert.match(r.keys[0].keyName, HEX32);
    assert.ok(r.keys[0].createTime, 'key create_time');
    assertNoKeyBytes(r);
    assert.deepEqual(await api().TicketKeyService.GetTicketKeyRing({ name: r.name }), r);
  });

  test('rotate: new ACTIVE key in front, previous DECRYPT_ONLY, retained_keys enforced', async () => {
    let r = await createRing({ retainedKeys: 3 });
    const first = r.keys[0].keyName;
    const r2 = await api().TicketKeyService.RotateTicketKeys({ name: r.name, etag: r.etag });
    assert.equal(r2.keys.length, 2);
    assert.equal(r2.keys[0].state, 'ACTIVE');
    assert.equal(r2.keys[1].state, 'DECRYPT_ONLY');
    assert.equal(r2.keys[1].keyName, first);
    assert.notEqual(r2.keys[0].keyName, first);
    assert.ok(Number(r2.revision) > Number(r.revision));
    assert.ok(r2.lastRotationTime, 'last_rotation_time');
    // A rotation with the etag from before the last one lost the race.
    await expectRefused(ctx.api, () => api().TicketKeyService.RotateTicketKeys({ name: r.name, etag: r.etag }), status.FAILED_PRECONDITION);
    r = r2;
    const seen = [r.keys[1].keyName, r.keys[0].keyName];
    for (let i = 0; i < 3; i++) {
      r = await api().TicketKeyService.RotateTicketKeys({ name: r.name, etag: r.etag });
      seen.push(r.keys[0].keyName);
      assert.ok(r.keys.length <= 3, `ring holds ${r.keys.length} keys, retained_keys 3`);
    }
    assert.equal(r.keys.length, 3);
    assert.deepEqual(r.keys.map((k) => k.keyName), seen.slice(-3).reverse(), 'not newest first');
    assert.deepEqual(r.keys.map((k) => k.state), ['ACTIVE', 'DECRYPT_ONLY', 'DECRYPT_ONLY']);
    assertNoKeyBytes(r);
  });

  test('SetTicketKeys with 48-byte keys: names are their first 16 bytes, first ACTIVE', async () => {
    const r = await createRing({ retainedKeys: 4 });
    const keys = [crypto.randomBytes(48), crypto.randomBytes(48)];
    const s = await api().TicketKeyService.SetTicketKeys({ name: r.name, etag: r.etag, keys });
    assert.equal(s.keys.length, 2);
    for (const k of s.keys) assert.match(k.keyName, HEX32);
    assert.equal(keyNameHex(s.keys[0].keyName), keys[0].subarray(0, 16).toString('hex'));
    assert.equal(keyNameHex(s.keys[1].keyName), keys[1].subarray(0, 16).toString('hex'));
    assert.deepEqual(s.keys.map((k) => k.state), ['ACTIVE', 'DECRYPT_ONLY']);
    assertNoKeyBytes(s, keys.map((k) => k.subarray(16)));
    const g = await api().TicketKeyService.GetTicketKeyRing({ name: r.name });
    assertNoKeyBytes(g, keys.map((k) => k.subarray(16)));
    assert.deepEqual(g, s);
  });

  test('SetTicketKeys with a 47-byte key: INVALID_ARGUMENT naming keys[1], ring unchanged', async () => {
    const r = await createRing({});
    await expectRefused(ctx.api, () => api().TicketKeyService.SetTicketKeys({
      name: r.name, keys: [crypto.randomBytes(48), crypto.randomBytes(47)],
    }), status.INVALID_ARGUMENT, { field: /^keys\[1\]/ });
    await expectRefused(ctx.api, () => api().TicketKeyService.SetTicketKeys({
      name: r.name, keys: [crypto.randomBytes(49)],
    }), status.INVALID_ARGUMENT, { field: /^keys\[0\]/ });
    await expectRefused(ctx.api, () => api().TicketKeyService.SetTicketKeys({
      name: r.name, etag: 'stale-etag', keys: [crypto.randomBytes(48)],
    }), status.FAILED_PRECONDITION);
    assert.deepEqual(await api().TicketKeyService.GetTicketKeyRing({ name: r.name }), r);
  });

  test('invalid rings: rotation_period under 60 s, retained_keys outside 1..16', async () => {
    await expectRefused(ctx.api, () => createRing({ rotationPeriod: { seconds: '5', nanos: 0 } }), status.INVALID_ARGUMENT, { field: 'ticket_key_ring.rotation_period' });
    await expectRefused(ctx.api, () => createRing({ retainedKeys: 17 }), status.INVALID_ARGUMENT, { field: 'ticket_key_ring.retained_keys' });
    await expectRefused(ctx.api, () => createRing({ retainedKeys: -1 }), status.INVALID_ARGUMENT, { field: 'ticket_key_ring.retained_keys' });
  });

  test('a scheduled ring shows its next rotation time', async () => {
    const r = await createRing({ rotationPeriod: { seconds: '3600', nanos: 0 } });
    assert.equal(seconds(r.rotationPeriod), 3600);
    assert.ok(r.nextRotationTime, 'next_rotation_time');
    const delta = seconds(r.nextRotationTime) - Date.now() / 1000;
    assert.ok(delta > 3000 && delta <= 3700, `next rotation in ${delta} s`);
  });

  test('a ring used by a listener cannot be deleted', async () => {
    const r = await createRing({});
    const l = await createListener({
      address: '127.0.0.1:18449', defaultTlsContext: R.ctx.name, upstream: '127.0.0.1:18086', ticketKeyRing: r.name,
    });
    assert.equal(l.ticketKeyRing, r.name);
    await expectRefused(ctx.api, () => api().TicketKeyService.DeleteTicketKeyRing({ name: r.name }), status.FAILED_PRECONDITION, { includes: [l.name] });
    await api().ListenerService.DeleteListener({ name: l.name });
    await api().TicketKeyService.DeleteTicketKeyRing({ name: r.name });
    await expectGrpcError(api().TicketKeyService.GetTicketKeyRing({ name: r.name }), status.NOT_FOUND);
  });

  test('List never returns key bytes either', async () => {
    const res = await api().TicketKeyService.ListTicketKeyRings({ pageSize: 1000 });
    assert.ok(res.ticketKeyRings.length >= 1);
    assertNoKeyBytes(res);
  });
});
