'use strict';
// CipherPolicyService: the built-in policies, policies validated by OpenSSL
// itself (cipher lists, TLS 1.3 suites, groups, DH parameters, protocol
// methods and versions), and ListCiphers (tls.getCiphers()).

const { test, describe, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { useServer } = require('./lib/server');
const { pki } = require('./lib/pki');
const { status, expectGrpcError, expectRefused, listAll, uid } = require('./lib/util');

const ctx = useServer({ before, after, beforeEach, afterEach });
let p;
before(() => {
  p = pki();
});
const policies = () => ctx.api.CipherPolicyService;

const BUILT_INS = ['default', 'node-2015-default', 'mozilla-modern', 'mozilla-intermediate', 'mozilla-old'];

async function create(id, cipherPolicy) {
  return policies().CreateCipherPolicy({ cipherPolicyId: id, cipherPolicy });
}

describe('built-in policies', () => {
  for (const id of BUILT_INS) {
    test(`cipherPolicies/${id} exists from the first start, built_in, read-only`, async () => {
      const name = `cipherPolicies/${id}`;
      const cp = await policies().GetCipherPolicy({ name });
      assert.equal(cp.name, name);
      assert.equal(cp.builtIn, true, 'built_in');
      assert.ok(cp.etag, 'etag');
      await expectRefused(ctx.api, () => policies().UpdateCipherPolicy({
        cipherPolicy: { name, labels: { mine: 'now' } }, updateMask: { paths: ['labels'] },
      }), status.FAILED_PRECONDITION, { what: `update ${name}` });
      await expectRefused(ctx.api, () => policies().UpdateCipherPolicy({
        cipherPolicy: { name, ciphers: 'ECDHE-RSA-AES128-GCM-SHA256' }, updateMask: { paths: ['ciphers'] },
      }), status.FAILED_PRECONDITION, { what: `update ${name} ciphers` });
      await expectRefused(ctx.api, () => policies().DeleteCipherPolicy({ name }), status.FAILED_PRECONDITION, { what: `delete ${name}` });
      assert.deepEqual(await policies().GetCipherPolicy({ name }), cp);
    });
  }

  test('List shows the built-ins, and only they are built_in', async () => {
    const all = await listAll(policies(), 'ListCipherPolicies', 'cipherPolicies');
    for (const id of BUILT_INS) assert.ok(all.some((c) => c.name === `cipherPolicies/${id}` && c.builtIn), `${id} not listed`);
    for (const c of all) assert.equal(c.builtIn, BUILT_INS.includes(c.name.split('/')[1]), `${c.name} built_in`);
  });

  test('the default policy is Mozilla intermediate in the server\'s order: forward secret AEAD suites only', async () => {
    const cp = await policies().GetCipherPolicy({ name: 'cipherPolicies/default' });
    assert.equal(cp.ciphers, 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:'
      + 'ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305');
    assert.equal(cp.ciphersuites, 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256');
    assert.equal(cp.ecdhCurve, 'X25519:prime256v1:secp384r1');
    assert.equal(cp.minVersion, 'TLS_1_2');
    assert.deepEqual(cp.honorCipherOrder, { value: true }, 'honorCipherOrder\'s default');
    const res = await policies().ListCiphers({ cipherPolicy: 'cipherPolicies/default' });
    const tls12 = res.ciphers.filter((c) => c.version === 'TLSv1.2');
    assert.equal(tls12.length, 6, tls12.map((c) => c.name).join(' '));
    for (const c of tls12) {
      assert.equal(c.keyExchange, 'ECDH', `${c.name}: not forward secret`);
      assert.match(c.name, /-(GCM-SHA256|GCM-SHA384|CHACHA20-POLY1305)$/, `${c.name}: not AEAD`);
    }
    assert.ok(!res.ciphers.some((c) => /CBC|-SHA$|CCM|ARIA|CAMELLIA/.test(c.name)), res.ciphers.map((c) => c.name).join(' '));
  });

  test('node-2015-default keeps the seed\'s list (what "default" held before)', async () => {
    const cp = await policies().GetCipherPolicy({ name: 'cipherPolicies/node-2015-default' });
    // tls-options.md: "ECDHE-RSA-AES128-GCM-SHA256: ... HIGH: !aNULL: ... !CAMELLIA".
    assert.equal(cp.ciphers, 'ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:'
      + 'ECDHE-ECDSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-SHA256:DHE-RSA-AES128-SHA256:'
      + 'ECDHE-RSA-AES256-SHA384:DHE-RSA-AES256-SHA384:ECDHE-RSA-AES256-SHA256:DHE-RSA-AES256-SHA256:HIGH:'
      + '!aNULL:!eNULL:!EXPORT:!DES:!RC4:!MD5:!PSK:!SRP:!CAMELLIA');
    assert.deepEqual(cp.honorCipherOrder, { value: true });
    const names = (await policies().ListCiphers({ cipherPolicy: cp.name })).ciphers.map((c) => c.name);
    assert.equal(names.filter((n) => n.startsWith('ECDHE-') || n.startsWith('DHE-') || n.startsWith('TLS_')).length < names.length, true,
      'the seed\'s HIGH brings RSA key exchange');
    assert.ok(!names.some((n) => /CAMELLIA|RC4|MD5|NULL|EXP/.test(n)), `excluded ciphers enabled: ${names}`);
  });

  test('mozilla-modern enables only TLS 1.3 suites', async () => {
    const res = await policies().ListCiphers({ cipherPolicy: 'cipherPolicies/mozilla-modern' });
    assert.ok(res.ciphers.length > 0, 'no ciphers');
    for (const c of res.ciphers) {
      assert.equal(c.version, 'TLSv1.3', `${c.name} is ${c.version}`);
      assert.match(c.name, /^TLS_/);
    }
  });

  test('mozilla-intermediate offers TLS 1.2 ECDHE-GCM suites; mozilla-old still has a CBC suite', async () => {
    const inter = (await policies().ListCiphers({ cipherPolicy: 'cipherPolicies/mozilla-intermediate' })).ciphers.map((c) => c.name);
    assert.ok(inter.includes('ECDHE-ECDSA-AES128-GCM-SHA256'), `${inter}`);
    assert.ok(inter.includes('TLS_AES_128_GCM_SHA256'), `${inter}`);
    assert.ok(!inter.some((n) => /-SHA$/.test(n)), `intermediate enables SHA-1 CBC suites: ${inter}`);
    const old = (await policies().ListCiphers({ cipherPolicy: 'cipherPolicies/mozilla-old' })).ciphers.map((c) => c.name);
    assert.ok(old.length > inter.length, 'mozilla-old is not wider than intermediate');
  });
});

describe('create, update, delete', () => {
  test('a valid policy is stored as given, not built-in, without warnings', async () => {
    const id = uid('pol');
    const cp = await create(id, {
      ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256',
      ciphersuites: 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256',
      ecdhCurve: 'X25519:prime256v1',
      minVersion: 'TLS_1_2',
      maxVersion: 'TLS_1_3',
      honorCipherOrder: { value: false },
      labels: { team: 'edge' },
    });
    assert.equal(cp.name, `cipherPolicies/${id}`);
    assert.equal(cp.builtIn, false);
    assert.equal(cp.ciphers, 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256');
    assert.equal(cp.ciphersuites, 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256');
    assert.equal(cp.ecdhCurve, 'X25519:prime256v1');
    assert.equal(cp.minVersion, 'TLS_1_2');
    assert.equal(cp.maxVersion, 'TLS_1_3');
    assert.deepEqual(cp.honorCipherOrder, { value: false });
    assert.deepEqual(cp.warnings, []);
    assert.deepEqual(cp.labels, { team: 'edge' });
    assert.deepEqual(await policies().GetCipherPolicy({ name: cp.name }), cp);

    const listed = await policies().ListCiphers({ cipherPolicy: cp.name });
    assert.deepEqual(
      listed.ciphers.map((c) => c.name).sort(),
      ['ECDHE-ECDSA-AES128-GCM-SHA256', 'ECDHE-RSA-AES128-GCM-SHA256', 'TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256'].sort(),
    );
  });

  test('honor_cipher_order defaults to true', async () => {
    const cp = await create(uid('honor'), { ciphers: 'HIGH:!aNULL' });
    assert.ok(cp.honorCipherOrder === null || cp.honorCipherOrder.value === true, JSON.stringify(cp.honorCipherOrder));
  });

  test('secure_protocol TLSv1_2_method is accepted', async () => {
    const cp = await create(uid('sp'), { secureProtocol: 'TLSv1_2_method' });
    assert.equal(cp.secureProtocol, 'TLSv1_2_method');
    for (const c of (await policies().ListCiphers({ cipherPolicy: cp.name })).ciphers) {
      assert.notEqual(c.version, 'TLSv1.3', `TLSv1_2_method enables ${c.name}`);
    }
  });

  test('dhparam 2048: accepted, dhparam_bits 2048, no warning', async () => {
    const cp = await create(uid('dh2048'), { dhparamPem: p.dh2048, ciphers: 'DHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256' });
    assert.equal(cp.dhparamBits, 2048);
    assert.deepEqual(cp.warnings, []);
  });

  test('dhparam 1024: refused (2048 to 8192 bits)', async () => {
    await expectGrpcError(create(uid('dh1024'), { dhparamPem: p.dh1024 }), status.INVALID_ARGUMENT, {
      field: 'cipher_policy.dhparam_pem: ', includes: '2048 to 8192 bits',
    });
  });

  test('update with update_mask (ciphers) and a stale etag', async () => {
    const cp = await create(uid('upd'), { ciphers: 'ECDHE-RSA-AES128-GCM-SHA256', labels: { a: '1' } });
    const u = await policies().UpdateCipherPolicy({
      cipherPolicy: { name: cp.name, etag: cp.etag, ciphers: 'ECDHE-RSA-AES256-GCM-SHA384' },
      updateMask: { paths: ['ciphers'] },
    });
    assert.equal(u.ciphers, 'ECDHE-RSA-AES256-GCM-SHA384');
    assert.deepEqual(u.labels, { a: '1' });
    assert.ok(Number(u.revision) > Number(cp.revision));
    assert.notEqual(u.etag, cp.etag);
    await expectRefused(ctx.api, () => policies().UpdateCipherPolicy({
      cipherPolicy: { name: cp.name, etag: cp.etag, ciphers: 'ECDHE-RSA-AES128-GCM-SHA256' },
      updateMask: { paths: ['ciphers'] },
    }), status.FAILED_PRECONDITION);
    await expectRefused(ctx.api, () => policies().UpdateCipherPolicy({
      cipherPolicy: { name: cp.name, ciphers: 'NOT-A-CIPHER' }, updateMask: { paths: ['ciphers'] },
    }), status.INVALID_ARGUMENT, { field: 'cipher_policy.ciphers' });
    assert.deepEqual(await policies().GetCipherPolicy({ name: cp.name }), u);
    await expectRefused(ctx.api, () => policies().UpdateCipherPolicy({
      cipherPolicy: { name: cp.name, builtIn: true }, updateMask: { paths: ['built_in'] },
    }), status.INVALID_ARGUMENT, { field: 'update_mask' });
  });

  test('delete: stale etag refused, then deleted', async () => {
    const cp = await create(uid('del'), { ciphers: 'HIGH' });
    const u = await policies().UpdateCipherPolicy({ cipherPolicy: { name: cp.name, labels: { x: 'y' } }, updateMask: { paths: ['labels'] } });
    await expectRefused(ctx.api, () => policies().DeleteCipherPolicy({ name: cp.name, etag: cp.etag }), status.FAILED_PRECONDITION);
    await policies().DeleteCipherPolicy({ name: cp.name, etag: u.etag });
    await expectGrpcError(policies().GetCipherPolicy({ name: cp.name }), status.NOT_FOUND);
  });
});

describe('invalid policies: INVALID_ARGUMENT naming the field, nothing written', () => {
  const CASES = [
    ['an unknown cipher list', () => ({ ciphers: 'NOT-A-CIPHER:ALSO-NOT' }), 'cipher_policy.ciphers'],
    ['invalid TLS 1.3 suites', () => ({ ciphersuites: 'TLS_FAKE_SUITE_SHA999' }), 'cipher_policy.ciphersuites'],
    ['a TLS 1.2 cipher given as a TLS 1.3 suite', () => ({ ciphersuites: 'ECDHE-RSA-AES128-GCM-SHA256' }), 'cipher_policy.ciphersuites'],
    ['an unknown group', () => ({ ecdhCurve: 'X25519:no-such-curve' }), 'cipher_policy.ecdh_curve'],
    ['dhparam of 512 bits', (k) => ({ dhparamPem: k.dh512 }), 'cipher_policy.dhparam_pem'],
    ['dhparam that is not PEM DH parameters', (k) => ({ dhparamPem: k.rsa.cert }), 'cipher_policy.dhparam_pem'],
    ['garbage dhparam', () => ({ dhparamPem: '-----BEGIN DH PARAMETERS-----\nAAAA\n-----END DH PARAMETERS-----\n' }), 'cipher_policy.dhparam_pem'],
    ['secure_protocol SSLv3_method', () => ({ secureProtocol: 'SSLv3_method' }), 'cipher_policy.secure_protocol'],
    ['secure_protocol SSLv2_method', () => ({ secureProtocol: 'SSLv2_method' }), 'cipher_policy.secure_protocol'],
    ['an unknown secure_protocol', () => ({ secureProtocol: 'TLSv9_method' }), 'cipher_policy.secure_protocol'],
    ['min_version SSL_3_0', () => ({ minVersion: 'SSL_3_0' }), 'cipher_policy.min_version'],
    ['min_version above max_version', () => ({ minVersion: 'TLS_1_3', maxVersion: 'TLS_1_2' }), ['cipher_policy.min_version', 'cipher_policy.max_version']],
    ['secure_protocol contradicting min_version', () => ({ secureProtocol: 'TLSv1_2_method', minVersion: 'TLS_1_3' }), ['cipher_policy.secure_protocol', 'cipher_policy.min_version']],
    ['a cipher list that leaves no cipher at all', () => ({ ciphers: '!ALL', maxVersion: 'TLS_1_2' }), 'cipher_policy.ciphers'],
  ];
  for (const [label, make, field] of CASES) {
    test(label, async () => {
      await expectRefused(ctx.api, () => create(uid('bad'), make(p)), status.INVALID_ARGUMENT, { field, what: label });
    });
  }

  test('SSLv3_method is refused as "not supported"', async () => {
    const err = await expectGrpcError(create(uid('sslv3'), { secureProtocol: 'SSLv3_method' }), status.INVALID_ARGUMENT, {
      field: 'cipher_policy.secure_protocol',
    });
    assert.match(err.details, /not supported/i);
  });

  test('a bad cipher_policy_id', async () => {
    await expectRefused(ctx.api, () => create('Bad_Id', { ciphers: 'HIGH' }), status.INVALID_ARGUMENT, { field: 'cipher_policy_id' });
  });

  test('a built-in name cannot be created again', async () => {
    await expectRefused(ctx.api, () => create('default', { ciphers: 'HIGH' }), status.ALREADY_EXISTS);
  });
});

describe('ListCiphers (tls.getCiphers)', () => {
  test('all supported ciphers, with IANA names, versions and strength', async () => {
    const res = await policies().ListCiphers({});
    const byName = new Map(res.ciphers.map((c) => [c.name, c]));
    assert.ok(res.ciphers.length >= 20, `only ${res.ciphers.length} ciphers`);
    assert.equal(byName.size, res.ciphers.length, 'duplicate cipher names');
    const gcm = byName.get('ECDHE-RSA-AES128-GCM-SHA256');
    assert.ok(gcm, 'ECDHE-RSA-AES128-GCM-SHA256 missing');
    assert.equal(gcm.standardName, 'TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256');
    assert.equal(gcm.version, 'TLSv1.2');
    assert.equal(gcm.keyExchange, 'ECDH');
    assert.equal(gcm.authentication, 'RSA');
    assert.equal(gcm.bits, 128);
    const t13 = byName.get('TLS_AES_256_GCM_SHA384');
    assert.ok(t13, 'TLS_AES_256_GCM_SHA384 missing');
    assert.equal(t13.version, 'TLSv1.3');
    assert.equal(t13.bits, 256);
    for (const c of res.ciphers) {
      assert.ok(c.name && c.standardName && c.version, `incomplete cipher ${JSON.stringify(c)}`);
    }
  });

  test('for an unknown policy: NOT_FOUND', async () => {
    await expectGrpcError(policies().ListCiphers({ cipherPolicy: 'cipherPolicies/no-such-policy' }), status.NOT_FOUND);
  });

  test('ecdh_disabled removes the ECDHE suites', async () => {
    const cp = await create(uid('noecdh'), {
      ciphers: 'ECDHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES128-GCM-SHA256', dhparamPem: p.dh2048, ecdhDisabled: true, maxVersion: 'TLS_1_2',
    });
    const names = (await policies().ListCiphers({ cipherPolicy: cp.name })).ciphers.map((c) => c.name);
    assert.ok(names.includes('DHE-RSA-AES128-GCM-SHA256'), `${names}`);
    assert.ok(!names.some((n) => n.startsWith('ECDHE')), `${names}`);
  });
});
