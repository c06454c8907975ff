'use strict';
// CertificateService: real RSA, ECDSA and Ed25519 certificates made with
// openssl; every key encoding the API takes; derived fields compared with
// what `openssl x509` says; secrets never read back; pagination, filters,
// optimistic concurrency, update masks; and every invalid input refused with
// INVALID_ARGUMENT naming the field, with nothing changed.

const { test, describe, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { useServer } = require('./lib/server');
const { pki, PASSPHRASE, DAY } = require('./lib/pki');
const {
  status, statusName, ts, seconds, expectGrpcError, expectRefused, listAll, uid, captureWorld, assertUnchanged,
} = require('./lib/util');

const ctx = useServer({ before, after, beforeEach, afterEach });
let p;
before(() => {
  p = pki();
});
const certs = () => ctx.api.CertificateService;

function pemBlocks(text, label = 'CERTIFICATE') {
  const re = new RegExp(`-----BEGIN ${label}-----([\\s\\S]*?)-----END ${label}-----`, 'g');
  return [...text.matchAll(re)].map((m) => m[1].replace(/\s+/g, ''));
}

// Input-only fields are empty and no key material appears anywhere.
function assertNoSecrets(c, what) {
  assert.equal(c.privateKeyPem, '', `${what}: private_key_pem returned`);
  assert.equal(c.passphrase, '', `${what}: passphrase returned`);
  assert.equal(c.pfx.length, 0, `${what}: pfx returned`);
  assert.equal(c.allowInvalidTime, false, `${what}: allow_invalid_time is input only`);
  const json = JSON.stringify(c);
  assert.ok(!/PRIVATE KEY/.test(json), `${what}: a private key appears in the response`);
  assert.ok(!json.includes(PASSPHRASE), `${what}: the passphrase appears in the response`);
}

// The derived fields equal what openssl says about the leaf.
function assertDerived(c, leaf, what) {
  assert.equal(c.subject, leaf.subject, `${what}: subject`);
  assert.equal(c.issuer, leaf.issuer, `${what}: issuer`);
  assert.equal(c.serialNumber, leaf.serial, `${what}: serial_number`);
  assert.equal(c.sha256Fingerprint, leaf.fingerprint, `${what}: sha256_fingerprint`);
  assert.equal(seconds(c.notBefore), leaf.notBefore.getTime() / 1000, `${what}: not_before`);
  assert.equal(seconds(c.notAfter), leaf.notAfter.getTime() / 1000, `${what}: not_after`);
  assert.deepEqual([...c.dnsNames].sort(), [...leaf.dnsNames].sort(), `${what}: dns_names`);
  assert.deepEqual([...c.ipAddresses].sort(), [...leaf.ipAddresses].sort(), `${what}: ip_addresses`);
  assert.equal(pemBlocks(c.certificateChainPem)[0], pemBlocks(leaf.cert)[0], `${what}: the chain does not start with the leaf`);
  assert.equal(c.chainLength, pemBlocks(c.certificateChainPem).length, `${what}: chain_length vs the chain returned`);
  assert.equal(c.hasPrivateKey, true, `${what}: has_private_key`);
}

function assertResourceMeta(c, id) {
  assert.equal(c.name, `certificates/${id}`);
  assert.ok(c.etag, 'etag is empty');
  assert.ok(Number(c.revision) > 0, `revision ${c.revision}`);
  assert.ok(c.createTime && Number(c.createTime.seconds) > 0, 'create_time missing');
  assert.ok(c.updateTime && Number(c.updateTime.seconds) > 0, 'update_time missing');
  const now = Date.now() / 1000;
  assert.ok(Math.abs(Number(c.createTime.seconds) - now) < 300, `create_time ${c.createTime.seconds} is not now`);
}

async function create(id, certificate) {
  return certs().CreateCertificate({ certificateId: id, certificate });
}

describe('create and read back', () => {
  test('RSA 2048 with SANs: derived fields match openssl, key never returned', async () => {
    const id = uid('rsa');
    const c = await create(id, { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key, labels: { env: 'test' } });
    assertResourceMeta(c, id);
    assert.equal(c.keyAlgorithm, 'RSA');
    assert.equal(c.keyBits, 2048);
    assert.equal(c.keyCurve, '');
    assertDerived(c, p.rsa, 'create');
    assert.equal(c.chainLength, 1);
    assert.deepEqual(c.labels, { env: 'test' });
    assertNoSecrets(c, 'CreateCertificate');

    const g = await certs().GetCertificate({ name: c.name });
    assert.deepEqual(g, c, 'Get differs from what Create returned');
    assertNoSecrets(g, 'GetCertificate');

    const all = await listAll(certs(), 'ListCertificates', 'certificates');
    const l = all.find((x) => x.name === c.name);
    assert.ok(l, 'not listed');
    assert.deepEqual(l, c, 'List differs from what Create returned');
    for (const x of all) assertNoSecrets(x, 'ListCertificates');
  });

  test('ECDSA P-256', async () => {
    const id = uid('ec');
    const c = await create(id, { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key });
    assertResourceMeta(c, id);
    assert.equal(c.keyAlgorithm, 'EC');
    assert.equal(c.keyBits, 256);
    assert.equal(c.keyCurve, 'prime256v1');
    assertDerived(c, p.ecdsa, 'ecdsa');
    assertNoSecrets(c, 'ecdsa');
  });

  test('Ed25519', async () => {
    const c = await create(uid('ed'), { certificateChainPem: p.ed25519.cert, privateKeyPem: p.ed25519.key });
    assert.equal(c.keyAlgorithm, 'ED25519');
    assert.equal(c.keyCurve === '' || c.keyCurve.toLowerCase() === 'ed25519', true, `key_curve ${c.keyCurve}`);
    assertDerived(c, p.ed25519, 'ed25519');
    assertNoSecrets(c, 'ed25519');
  });

  test('PKCS#1 RSA key and SEC1 EC key are accepted', async () => {
    const r = await create(uid('pkcs1'), { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.pkcs1Key });
    assert.equal(r.keyAlgorithm, 'RSA');
    assert.equal(r.hasPrivateKey, true);
    const e = await create(uid('sec1'), { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.sec1Key });
    assert.equal(e.keyAlgorithm, 'EC');
    assertNoSecrets(r, 'pkcs1');
    assertNoSecrets(e, 'sec1');
  });

  test('encrypted PKCS#8 key with passphrase (RSA and ECDSA)', async () => {
    const r = await create(uid('encp8'), {
      certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.encryptedPkcs8Key, passphrase: PASSPHRASE,
    });
    assertDerived(r, p.rsa, 'encrypted pkcs8');
    assertNoSecrets(r, 'encrypted pkcs8');
    const e = await create(uid('encp8ec'), {
      certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.encryptedPkcs8Key, passphrase: PASSPHRASE,
    });
    assertDerived(e, p.ecdsa, 'encrypted pkcs8 ec');
  });

  test('legacy encrypted PEM key (Proc-Type: 4,ENCRYPTED) with passphrase', async () => {
    const r = await create(uid('enclegacy'), {
      certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.encryptedLegacyKey, passphrase: PASSPHRASE,
    });
    assertDerived(r, p.rsa, 'legacy encrypted');
    assertNoSecrets(r, 'legacy encrypted');
  });

  for (const [label, key] of [['modern (AES-256, PBKDF2)', 'pfx'], ['legacy (-legacy: RC2-40 + 3DES)', 'pfxLegacy'], ['3DES', 'pfx3des']]) {
    test(`PFX ${label} with passphrase: chain stored as PEM, leaf first`, async () => {
      const c = await create(uid('pfx'), { pfx: p.rsa[key], passphrase: PASSPHRASE });
      assert.equal(c.keyAlgorithm, 'RSA');
      assertDerived(c, p.rsa, `pfx ${label}`);
      // The PFX holds the leaf and the CA certificate.
      const blocks = pemBlocks(c.certificateChainPem);
      assert.ok(blocks.length >= 1 && blocks.length <= 2, `chain of ${blocks.length}`);
      if (blocks.length === 2) assert.equal(blocks[1], pemBlocks(p.ca.cert)[0]);
      assertNoSecrets(c, `pfx ${label}`);
      const g = await certs().GetCertificate({ name: c.name });
      assertNoSecrets(g, `pfx ${label} Get`);
    });
  }

  test('PFX with an intermediate: chain of 2 in issuing order', async () => {
    const c = await create(uid('pfxchain'), { pfx: p.chained.pfx, passphrase: PASSPHRASE });
    assertDerived(c, p.chained, 'pfx chain');
    assert.equal(c.chainLength, 2);
    assert.deepEqual(pemBlocks(c.certificateChainPem), [...pemBlocks(p.chained.cert), ...pemBlocks(p.inter.cert)]);
  });

  test('a chain leaf + intermediate in PEM', async () => {
    const c = await create(uid('chain'), { certificateChainPem: p.chained.chain, privateKeyPem: p.chained.key });
    assert.equal(c.chainLength, 2);
    assert.equal(c.issuer, p.inter.subject);
    assertDerived(c, p.chained, 'pem chain');
  });

  test('an OCSP response for the leaf is stored with its status and next update', async () => {
    // The chain carries the issuing CA after the leaf: the server needs the
    // issuer's key to check that the response names this leaf (CertID).
    const c = await create(uid('ocsp'), {
      certificateChainPem: p.rsa.cert + p.ca.cert, privateKeyPem: p.rsa.key, ocspResponse: p.rsa.ocspResponse,
    });
    assert.equal(c.ocspCertStatus, 'good');
    assert.ok(c.ocspNextUpdate, 'ocsp_next_update missing');
    if (p.rsa.ocspNextUpdate) assert.equal(seconds(c.ocspNextUpdate), p.rsa.ocspNextUpdate.getTime() / 1000);
  });

  test('an OCSP response checked with the issuer given apart (issuer_certificate_pem): the chain stays the leaf alone', async () => {
    const c = await create(uid('ocsp-apart'), {
      certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key, ocspResponse: p.rsa.ocspResponse,
      issuerCertificatePem: `\n${p.ca.cert}\n`,
    });
    assert.equal(c.ocspCertStatus, 'good');
    assert.equal(c.chainLength, 1);
    assert.deepEqual(pemBlocks(c.certificateChainPem), pemBlocks(p.rsa.cert));
    assert.equal(c.issuerCertificatePem, p.ca.cert, 'stored and returned as clean PEM');
    assert.deepEqual(await certs().GetCertificate({ name: c.name }), c);
    // A context stapling it builds (the server builds it as agents do).
    const tc = await ctx.api.TlsContextService.CreateTlsContext({
      tlsContextId: uid('ocsp-apart-ctx'), tlsContext: { certificates: [c.name], ocspStapling: true },
    });
    assert.equal(tc.ocspStapling, true);
  });

  test('expired and not-yet-valid certificates are accepted with allow_invalid_time', async () => {
    const e = await create(uid('expired-ok'), {
      certificateChainPem: p.expired.cert, privateKeyPem: p.expired.key, allowInvalidTime: true,
    });
    assertDerived(e, p.expired, 'expired');
    assert.equal(e.allowInvalidTime, false, 'allow_invalid_time is input only');
    const f = await create(uid('future-ok'), {
      certificateChainPem: p.notYetValid.cert, privateKeyPem: p.notYetValid.key, allowInvalidTime: true,
    });
    assertDerived(f, p.notYetValid, 'not yet valid');
  });

  test('Get of an unknown name: NOT_FOUND', async () => {
    await expectGrpcError(certs().GetCertificate({ name: 'certificates/does-not-exist' }), status.NOT_FOUND);
  });

  test('an existing name: ALREADY_EXISTS, the stored one unchanged', async () => {
    const id = uid('dup');
    const c = await create(id, { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key });
    await expectRefused(ctx.api, () => create(id, { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key }), status.ALREADY_EXISTS);
    assert.deepEqual(await certs().GetCertificate({ name: c.name }), c);
  });
});

describe('invalid input: INVALID_ARGUMENT naming the field, nothing written', () => {
  const CHAIN = 'certificate.certificate_chain_pem';
  const KEY = 'certificate.private_key_pem';
  const PASS = 'certificate.passphrase';
  const PFX = 'certificate.pfx';
  // [label, (pki) => certificate, field(s) the message must start with]
  const CASES = [
    ['unparsable certificate PEM', (k) => ({ certificateChainPem: '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n', privateKeyPem: k.rsa.key }), CHAIN],
    ['text that is no PEM at all', (k) => ({ certificateChainPem: 'hello', privateKeyPem: k.rsa.key }), CHAIN],
    ['no certificate and no pfx', (k) => ({ privateKeyPem: k.rsa.key }), [CHAIN, PFX]],
    ['unparsable key PEM', (k) => ({ certificateChainPem: k.rsa.cert, privateKeyPem: '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n' }), KEY],
    ['key not matching the certificate', (k) => ({ certificateChainPem: k.rsa.cert, privateKeyPem: k.otherRsaKey }), KEY],
    ['ECDSA key for the RSA certificate', (k) => ({ certificateChainPem: k.rsa.cert, privateKeyPem: k.ecdsa.key }), KEY],
    ['encrypted PKCS#8 key without passphrase', (k) => ({ certificateChainPem: k.rsa.cert, privateKeyPem: k.rsa.encryptedPkcs8Key }), [PASS, KEY]],
    ['encrypted PKCS#8 key, wrong passphrase', (k) => ({ certificateChainPem: k.rsa.cert, privateKeyPem: k.rsa.encryptedPkcs8Key, passphrase: 'wrong' }), [PASS, KEY]],
    ['legacy encrypted key, wrong passphrase', (k) => ({ certificateChainPem: k.rsa.cert, privateKeyPem: k.rsa.encryptedLegacyKey, passphrase: 'wrong' }), [PASS, KEY]],
    ['PFX, wrong passphrase', (k) => ({ pfx: k.rsa.pfx, passphrase: 'wrong' }), [PASS, PFX]],
    ['legacy PFX, wrong passphrase', (k) => ({ pfx: k.rsa.pfxLegacy, passphrase: 'wrong' }), [PASS, PFX]],
    ['PFX, no passphrase', (k) => ({ pfx: k.rsa.pfx }), [PASS, PFX]],
    ['garbage PFX', () => ({ pfx: Buffer.from('this is not PKCS#12'), passphrase: PASSPHRASE }), PFX],
    ['pfx together with certificate_chain_pem', (k) => ({ pfx: k.rsa.pfx, passphrase: PASSPHRASE, certificateChainPem: k.rsa.cert }), [PFX, CHAIN]],
    ['pfx together with private_key_pem', (k) => ({ pfx: k.rsa.pfx, passphrase: PASSPHRASE, privateKeyPem: k.rsa.key }), [PFX, KEY]],
    ['expired certificate', (k) => ({ certificateChainPem: k.expired.cert, privateKeyPem: k.expired.key }), CHAIN],
    ['not yet valid certificate', (k) => ({ certificateChainPem: k.notYetValid.cert, privateKeyPem: k.notYetValid.key }), CHAIN],
    ['chain out of issuing order (intermediate first)', (k) => ({ certificateChainPem: k.inter.cert + k.chained.cert, privateKeyPem: k.chained.key }), [CHAIN, KEY]],
    ['chain with an unrelated second certificate', (k) => ({ certificateChainPem: k.chained.cert + k.ecdsa2.cert, privateKeyPem: k.chained.key }), CHAIN],
    ['OCSP response for another certificate', (k) => ({ certificateChainPem: k.rsa.cert + k.ca.cert, privateKeyPem: k.rsa.key, ocspResponse: k.ecdsa.ocspResponse }), 'certificate.ocsp_response'],
    ['OCSP response with the leaf alone and no issuer', (k) => ({ certificateChainPem: k.rsa.cert, privateKeyPem: k.rsa.key, ocspResponse: k.rsa.ocspResponse }), 'certificate.ocsp_response'],
    ['issuer_certificate_pem that did not issue the leaf', (k) => ({ certificateChainPem: k.rsa.cert, privateKeyPem: k.rsa.key, ocspResponse: k.rsa.ocspResponse, issuerCertificatePem: k.ca2.cert }), 'certificate.issuer_certificate_pem'],
    ['issuer_certificate_pem with two certificates', (k) => ({ certificateChainPem: k.rsa.cert, privateKeyPem: k.rsa.key, issuerCertificatePem: k.ca.cert + k.inter.cert }), 'certificate.issuer_certificate_pem'],
    ['OCSP response that is not DER', (k) => ({ certificateChainPem: k.rsa.cert + k.ca.cert, privateKeyPem: k.rsa.key, ocspResponse: Buffer.from('garbage') }), 'certificate.ocsp_response'],
  ];
  for (const [label, make, field] of CASES) {
    test(label, async () => {
      await expectRefused(ctx.api, () => create(uid('bad'), make(p)), status.INVALID_ARGUMENT, { field, what: label });
    });
  }

  test('a certificate without a private key: refused naming private_key_pem, or stored with has_private_key false and unusable in a context', async () => {
    // The contract leaves open whether a key-less certificate may be stored
    // (has_private_key exists, and the internal CA attaches signed
    // certificates later); either way nothing crashes, and a TLS context
    // cannot serve a certificate without its key.
    const before = await captureWorld(ctx.api);
    let c;
    try {
      c = await create(uid('nokey'), { certificateChainPem: p.rsa.cert });
    } catch (err) {
      assert.equal(statusName(err.code), 'INVALID_ARGUMENT', `${statusName(err.code)}: ${err.details}`);
      assert.ok(err.details.startsWith(KEY), `message should start with ${KEY}: ${err.details}`);
      await assertUnchanged(ctx.api, before);
      return;
    }
    assert.equal(c.hasPrivateKey, false);
    await expectRefused(ctx.api, () => ctx.api.TlsContextService.CreateTlsContext({
      tlsContextId: uid('nokeyctx'), tlsContext: { certificates: [c.name] },
    }), status.INVALID_ARGUMENT, { field: 'tls_context.certificates' });
  });

  test('the message for a key mismatch says so', async () => {
    const err = await expectGrpcError(
      create(uid('mismatch'), { certificateChainPem: p.rsa.cert, privateKeyPem: p.otherRsaKey }),
      status.INVALID_ARGUMENT, { field: KEY },
    );
    assert.match(err.details, /match/i);
  });

  test('the message for an expired certificate says so', async () => {
    const err = await expectGrpcError(
      create(uid('exp'), { certificateChainPem: p.expired.cert, privateKeyPem: p.expired.key }),
      status.INVALID_ARGUMENT, { field: CHAIN },
    );
    assert.match(err.details, /expire|valid/i);
  });

  for (const badId of ['', 'Upper', '1starts-with-digit', 'under_score', 'a/b', 'dot.ted', '-dash', 'x'.repeat(64), 'trailing space ']) {
    test(`bad certificate_id ${JSON.stringify(badId.length > 20 ? badId.slice(0, 10) + '…(' + badId.length + ')' : badId)}`, async () => {
      await expectRefused(
        ctx.api,
        () => create(badId, { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key }),
        status.INVALID_ARGUMENT,
        { field: 'certificate_id', what: `certificate_id ${badId}` },
      );
    });
  }

  test('the longest valid id (63 characters) is accepted', async () => {
    const id = `a${'b'.repeat(61)}9`;
    assert.equal(id.length, 63);
    const c = await create(id, { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key });
    assert.equal(c.name, `certificates/${id}`);
  });
});

describe('list', () => {
  test('pagination: 7 certificates, page_size 3 -> 3 pages, in name order, no duplicates, no gaps', async () => {
    const batch = uid('batch');
    const ids = [];
    for (let i = 0; i < 7; i++) {
      const id = `${batch}-${String.fromCharCode(103 - i)}`; // created out of name order
      ids.push(id);
      await create(id, { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key, labels: { batch } });
    }
    const pages = [];
    let pageToken = '';
    do {
      const res = await certs().ListCertificates({ pageSize: 3, pageToken, labelSelector: `batch=${batch}` });
      pages.push(res.certificates.map((c) => c.name));
      pageToken = res.nextPageToken;
      assert.ok(pages.length <= 4, 'pagination does not end');
    } while (pageToken);
    assert.deepEqual(pages.map((x) => x.length), [3, 3, 1]);
    const names = pages.flat();
    const expected = ids.map((id) => `certificates/${id}`).sort();
    assert.deepEqual(names, expected, 'pages are not the 7 certificates in name order');
  });

  test('pagination over everything: the union of pages is the full list', async () => {
    const full = await listAll(certs(), 'ListCertificates', 'certificates', {}, { pageSize: 1000 });
    const paged = await listAll(certs(), 'ListCertificates', 'certificates', {}, { pageSize: 2 });
    assert.deepEqual(paged.map((c) => c.name), full.map((c) => c.name));
    const sorted = [...full.map((c) => c.name)].sort();
    assert.deepEqual(full.map((c) => c.name), sorted, 'list is not in name order');
  });

  test('page_size 0 means the default (50)', async () => {
    const all = await listAll(certs(), 'ListCertificates', 'certificates');
    const res = await certs().ListCertificates({ pageSize: 0 });
    assert.equal(res.certificates.length, Math.min(50, all.length));
    assert.equal(res.nextPageToken === '', all.length <= 50);
  });

  test('negative page_size: INVALID_ARGUMENT', async () => {
    await expectGrpcError(certs().ListCertificates({ pageSize: -1 }), status.INVALID_ARGUMENT, { field: 'page_size' });
  });

  test('a foreign page_token: INVALID_ARGUMENT', async () => {
    await expectGrpcError(certs().ListCertificates({ pageSize: 1, pageToken: 'not-a-token-we-issued' }), status.INVALID_ARGUMENT, { field: 'page_token' });
  });

  test('expiring_before now+30d lists the 10-day certificate, not the 90-day one', async () => {
    const soon = await create(uid('soon'), { certificateChainPem: p.expiring10d.cert, privateKeyPem: p.expiring10d.key });
    const later = await create(uid('later'), { certificateChainPem: p.expiring90d.cert, privateKeyPem: p.expiring90d.key });
    const bound = new Date(Date.now() + 30 * DAY);
    const listed = await listAll(certs(), 'ListCertificates', 'certificates', { expiringBefore: ts(bound) });
    const names = listed.map((c) => c.name);
    assert.ok(names.includes(soon.name), 'the 10-day certificate is not listed');
    assert.ok(!names.includes(later.name), 'the 90-day certificate is listed');
    for (const c of listed) assert.ok(seconds(c.notAfter) < bound.getTime() / 1000, `${c.name} expires after the bound`);
    // With now+120d both are.
    const wide = await listAll(certs(), 'ListCertificates', 'certificates', { expiringBefore: ts(new Date(Date.now() + 120 * DAY)) });
    assert.ok(wide.some((c) => c.name === later.name) && wide.some((c) => c.name === soon.name));
  });

  test('label_selector: k=v, k!=v, k, !k, and conjunctions', async () => {
    const suite = uid('sel');
    const mk = async (tag, labels) => (await create(`${suite}-${tag}`, {
      certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key, labels: { suite, ...labels },
    })).name;
    const prodWeb = await mk('a', { env: 'prod', tier: 'web' });
    const prodDb = await mk('b', { env: 'prod', tier: 'db' });
    const staging = await mk('c', { env: 'staging' });
    const none = await mk('d', {});
    const sel = async (s) => (await listAll(certs(), 'ListCertificates', 'certificates', { labelSelector: `suite=${suite},${s}` }))
      .map((c) => c.name).sort();
    assert.deepEqual(await sel('env=prod'), [prodWeb, prodDb].sort());
    const notProd = await sel('env!=prod');
    assert.ok(notProd.includes(staging) && !notProd.includes(prodWeb) && !notProd.includes(prodDb), `env!=prod gave ${notProd}`);
    assert.deepEqual(await sel('env'), [prodWeb, prodDb, staging].sort());
    assert.deepEqual(await sel('!env'), [none]);
    assert.deepEqual(await sel('env=prod,tier=web'), [prodWeb]);
    assert.deepEqual(await sel('env=prod,tier=cache'), []);
    const notWeb = await sel('tier!=web,env');
    assert.ok(notWeb.includes(prodDb) && !notWeb.includes(prodWeb) && !notWeb.includes(none), `tier!=web,env gave ${notWeb}`);
  });
});

describe('update and delete', () => {
  test('labels only, with update_mask and etag: certificate untouched, new etag and revision', async () => {
    const c = await create(uid('upd'), { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key, labels: { a: '1' } });
    const u = await certs().UpdateCertificate({
      certificate: { name: c.name, etag: c.etag, labels: { a: '2', b: 'x' } },
      updateMask: { paths: ['labels'] },
    });
    assert.deepEqual(u.labels, { a: '2', b: 'x' });
    assert.notEqual(u.etag, c.etag, 'etag did not change');
    assert.ok(Number(u.revision) > Number(c.revision), 'revision did not increase');
    assert.deepEqual(u.createTime, c.createTime, 'create_time changed');
    assert.equal(u.sha256Fingerprint, c.sha256Fingerprint);
    assert.equal(u.certificateChainPem, c.certificateChainPem);
    assert.equal(u.hasPrivateKey, true);
    assertNoSecrets(u, 'UpdateCertificate');
    assert.deepEqual(await certs().GetCertificate({ name: c.name }), u);
  });

  test('update_mask in JSON form (camelCase) works too', async () => {
    const c = await create(uid('updjson'), { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key });
    const u = await certs().UpdateCertificate({
      certificate: { name: c.name, certificateChainPem: p.rsaRenewed.cert },
      updateMask: { paths: ['certificateChainPem'] },
    });
    assert.equal(u.sha256Fingerprint, p.rsaRenewed.fingerprint);
  });

  test('chain renewal keeping the stored key', async () => {
    const c = await create(uid('renew'), { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key, labels: { keep: 'me' } });
    const u = await certs().UpdateCertificate({
      certificate: { name: c.name, etag: c.etag, certificateChainPem: p.rsaRenewed.cert },
      updateMask: { paths: ['certificate_chain_pem'] },
    });
    assertDerived(u, p.rsaRenewed, 'renewed');
    assert.ok(u.dnsNames.includes('renewed.example.com'));
    assert.equal(u.hasPrivateKey, true, 'the stored key was lost');
    assert.deepEqual(u.labels, { keep: 'me' }, 'labels changed though not in the mask');
    assertNoSecrets(u, 'renewal');
  });

  test('renewal with a chain for another key and no key: refused, nothing changed', async () => {
    const c = await create(uid('renewbad'), { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key });
    await expectRefused(ctx.api, () => certs().UpdateCertificate({
      certificate: { name: c.name, certificateChainPem: p.ecdsa.cert },
      updateMask: { paths: ['certificate_chain_pem'] },
    }), status.INVALID_ARGUMENT, { field: ['certificate.private_key_pem', 'certificate.certificate_chain_pem'] });
    assert.deepEqual(await certs().GetCertificate({ name: c.name }), c);
  });

  test('new chain and new key together (a re-key)', async () => {
    const c = await create(uid('rekey'), { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key });
    const u = await certs().UpdateCertificate({
      certificate: { name: c.name, certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key },
      updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
    });
    assert.equal(u.keyAlgorithm, 'EC');
    assertDerived(u, p.ecdsa, 're-key');
    assertNoSecrets(u, 're-key');
  });

  test('an empty update_mask replaces every mutable field', async () => {
    const c = await create(uid('fullupd'), { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key, labels: { a: '1' } });
    const u = await certs().UpdateCertificate({
      certificate: { name: c.name, certificateChainPem: p.rsaRenewed.cert, labels: { b: '2' } },
    });
    assert.deepEqual(u.labels, { b: '2' });
    assert.equal(u.sha256Fingerprint, p.rsaRenewed.fingerprint);
    assert.equal(u.hasPrivateKey, true);
  });

  test('stale etag on update: FAILED_PRECONDITION, nothing changed', async () => {
    const c = await create(uid('etag'), { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key, labels: { v: '1' } });
    const u = await certs().UpdateCertificate({
      certificate: { name: c.name, etag: c.etag, labels: { v: '2' } }, updateMask: { paths: ['labels'] },
    });
    await expectRefused(ctx.api, () => certs().UpdateCertificate({
      certificate: { name: c.name, etag: c.etag, labels: { v: '3' } }, updateMask: { paths: ['labels'] },
    }), status.FAILED_PRECONDITION);
    assert.deepEqual(await certs().GetCertificate({ name: c.name }), u);
  });

  test('a lost race: two updates with the same etag, exactly one wins', async () => {
    const c = await create(uid('race'), { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key });
    const results = await Promise.allSettled(['x', 'y'].map((v) => certs().UpdateCertificate({
      certificate: { name: c.name, etag: c.etag, labels: { winner: v } }, updateMask: { paths: ['labels'] },
    })));
    const ok = results.filter((r) => r.status === 'fulfilled');
    const failed = results.filter((r) => r.status === 'rejected');
    assert.equal(ok.length, 1, `expected one winner: ${results.map((r) => r.status + ' ' + (r.reason ? r.reason.details : '')).join('; ')}`);
    assert.equal(failed[0].reason.code, status.FAILED_PRECONDITION, failed[0].reason.details);
    assert.deepEqual(await certs().GetCertificate({ name: c.name }), ok[0].value);
  });

  test('output-only or unknown fields in update_mask: INVALID_ARGUMENT, nothing changed', async () => {
    const c = await create(uid('mask'), { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key });
    for (const path of ['sha256_fingerprint', 'name', 'create_time', 'no_such_field']) {
      await expectRefused(ctx.api, () => certs().UpdateCertificate({
        certificate: { name: c.name, labels: { x: 'y' }, sha256Fingerprint: 'AA' },
        updateMask: { paths: [path] },
      }), status.INVALID_ARGUMENT, { field: 'update_mask', what: `mask ${path}` });
    }
    assert.deepEqual(await certs().GetCertificate({ name: c.name }), c);
  });

  test('update of an unknown certificate: NOT_FOUND', async () => {
    await expectGrpcError(certs().UpdateCertificate({
      certificate: { name: 'certificates/nope-nope', labels: { a: 'b' } }, updateMask: { paths: ['labels'] },
    }), status.NOT_FOUND);
  });

  test('invalid new chain on update (expired): INVALID_ARGUMENT, nothing changed', async () => {
    const c = await create(uid('updexp'), { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key });
    await expectRefused(ctx.api, () => certs().UpdateCertificate({
      certificate: { name: c.name, certificateChainPem: p.expired.cert, privateKeyPem: p.expired.key },
      updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
    }), status.INVALID_ARGUMENT, { field: 'certificate.certificate_chain_pem' });
  });

  test('delete: stale etag refused, then deleted with the current etag, then NOT_FOUND', async () => {
    const c = await create(uid('del'), { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key });
    const u = await certs().UpdateCertificate({
      certificate: { name: c.name, labels: { touched: 'yes' } }, updateMask: { paths: ['labels'] },
    });
    await expectRefused(ctx.api, () => certs().DeleteCertificate({ name: c.name, etag: c.etag }), status.FAILED_PRECONDITION);
    assert.deepEqual(await certs().GetCertificate({ name: c.name }), u);
    const before = await captureWorld(ctx.api);
    await certs().DeleteCertificate({ name: c.name, etag: u.etag });
    await expectGrpcError(certs().GetCertificate({ name: c.name }), status.NOT_FOUND);
    const after = await captureWorld(ctx.api);
    assert.equal(after.certificates.length, before.certificates.length - 1);
    assert.ok(!after.certificates.some((x) => x.name === c.name));
    await expectGrpcError(certs().DeleteCertificate({ name: c.name }), status.NOT_FOUND);
  });

  test('delete with an empty etag skips the check', async () => {
    const c = await create(uid('delnoetag'), { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key });
    await certs().UpdateCertificate({ certificate: { name: c.name, labels: { x: '1' } }, updateMask: { paths: ['labels'] } });
    await certs().DeleteCertificate({ name: c.name, etag: '' });
    await expectGrpcError(certs().GetCertificate({ name: c.name }), status.NOT_FOUND);
  });

  test('a failed call leaves the revision where it was', async () => {
    const before = await captureWorld(ctx.api);
    await expectGrpcError(create(uid('x'), { certificateChainPem: 'junk', privateKeyPem: 'junk' }), status.INVALID_ARGUMENT);
    await assertUnchanged(ctx.api, before);
    const c = await create(uid('next'), { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key });
    const maxBefore = Math.max(0, ...Object.values(before).filter(Array.isArray).flat().map((r) => Number(r.revision) || 0));
    assert.equal(Number(c.revision), maxBefore + 1, 'the revision after a refused call is not the next one');
  });
});
