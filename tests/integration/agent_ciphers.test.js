'use strict';
// The cipher policy as the agent enforces it: ciphers (and the default
// policy, Mozilla intermediate), TLS 1.3 suites, honorCipherOrder, ecdhCurve (and
// ecdhCurve: false), dhparam, secureProtocol and min/max version. Every
// test shows the option working and a client outside it failing.

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { exchange, sclient } = require('./lib/tlsclient');

const AES128 = 'ECDHE-RSA-AES128-GCM-SHA256';
const AES256 = 'ECDHE-RSA-AES256-GCM-SHA384';
const DHE = 'DHE-RSA-AES128-GCM-SHA256';

describe('cipher policies: ciphers, suites, order, curves, dhparam, versions', () => {
  let p;
  let up;
  let agent;

  before(async () => {
    p = pki();
    up = await Upstream.start({ mode: 'echo' });
    const l = (name, policy) => listener(name, {
      upstream: up.address,
      defaultContext: tlsContext(name, { certs: [p.rsa], policy }),
    });
    agent = await Agent.start(snapshot(1, [
      l('defaults', undefined), // no cipher_policy: the default policy
      l('aes256-only', { ciphers: AES256 }),
      l('chacha-only', { ciphersuites: 'TLS_CHACHA20_POLY1305_SHA256' }),
      l('tls13-in-ciphers', { ciphers: `TLS_AES_256_GCM_SHA384:${AES128}` }),
      l('tls13-only-ciphers', { ciphers: 'TLS_CHACHA20_POLY1305_SHA256' }),
      l('honor-on', { ciphers: `${AES128}:${AES256}`, ciphersuites: 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384', honorCipherOrder: true }),
      l('honor-off', { ciphers: `${AES128}:${AES256}`, ciphersuites: 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384', honorCipherOrder: false }),
      l('p256', { ecdhCurve: 'prime256v1' }),
      l('no-ecdh', { ecdhDisabled: true }),
      l('dhe', { ciphers: `${DHE}:${AES128}`, dhparamPem: p.dh2048 }),
      l('dhe-without-dhparam', { ciphers: `${DHE}:${AES128}` }),
      l('dhe-group', { ciphers: `${DHE}:${AES128}`, dhparamGroup: 'ffdhe3072' }),
      l('tls12-method', { secureProtocol: 'TLSv1_2_method' }),
      l('tls13-min', { minVersion: 'TLS_1_3' }),
      l('tls12-max', { minVersion: 'TLS_1_2', maxVersion: 'TLS_1_2' }),
      l('tls-method', { secureProtocol: 'TLS_method' }),
    ]));
  });

  after(async () => {
    if (agent) await agent.stopClean();
    if (up) await up.close();
  });
  failOnCrash({ afterEach }, () => [agent]);

  test('ciphers: a TLS 1.2 client offering only ciphers outside the list fails; one offering a listed cipher gets it', async () => {
    const port = agent.port('aes256-only');
    const out = await sclient(port, ['-tls1_2', '-cipher', AES128]);
    assert.equal(out.handshake, false, `${AES128} is not in the policy, yet: ${out.cipher}`);
    assert.match(out.out, /handshake failure|no shared cipher/);
    const ok = await sclient(port, ['-tls1_2', '-cipher', `${AES128}:${AES256}`]);
    assert.equal(ok.handshake, true, ok.out);
    assert.equal(ok.cipher, AES256);
  });

  test('ciphers default (no policy): Mozilla intermediate in the server\'s order; RSA key exchange, CBC, CCM8 and ARIA are refused', async () => {
    const port = agent.port('defaults');
    const first = await sclient(port, ['-tls1_2', '-cipher', `AES256-SHA:${AES256}:${AES128}`]);
    assert.equal(first.handshake, true, first.out);
    assert.equal(first.cipher, AES128, 'Mozilla\'s first RSA cipher wins (honorCipherOrder defaults to true)');
    // Each of these was negotiated by the seed's 2015 list (its HIGH).
    for (const c of ['AES128-GCM-SHA256', 'AES256-SHA', 'ECDHE-RSA-AES128-SHA', 'ECDHE-RSA-AES256-SHA384', 'AES128-CCM8',
      'ECDHE-ARIA128-GCM-SHA256', 'CAMELLIA128-SHA256']) {
      const r = await sclient(port, ['-tls1_2', '-cipher', `${c}@SECLEVEL=0`]);
      assert.equal(r.handshake, false, `${c} negotiated by default`);
    }
    const chacha = await sclient(port, ['-tls1_2', '-cipher', 'ECDHE-RSA-CHACHA20-POLY1305']);
    assert.equal(chacha.cipher, 'ECDHE-RSA-CHACHA20-POLY1305', chacha.out.slice(-500));
    // TLS 1.3: Mozilla's suites, AES-128-GCM first, the server's choice.
    const t13 = await sclient(port, ['-tls1_3', '-ciphersuites', 'TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256']);
    assert.equal(t13.cipher, 'TLS_AES_128_GCM_SHA256', t13.out.slice(-500));
  });

  test('TLS 1.3 suites: a client offering only suites outside the policy fails; a listed suite is negotiated', async () => {
    const port = agent.port('chacha-only');
    const no = await sclient(port, ['-tls1_3', '-ciphersuites', 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384']);
    assert.equal(no.handshake, false, `an unlisted suite was negotiated: ${no.cipher}`);
    const yes = await sclient(port, ['-tls1_3', '-ciphersuites', 'TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256']);
    assert.equal(yes.handshake, true, yes.out);
    assert.equal(yes.cipher, 'TLS_CHACHA20_POLY1305_SHA256');
  });

  test('ciphers naming TLS 1.3 suites (as Node takes them): the suite goes to TLS 1.3, the rest to TLS 1.2', async () => {
    const port = agent.port('tls13-in-ciphers');
    const yes = await sclient(port, ['-tls1_3', '-ciphersuites', 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384']);
    assert.equal(yes.handshake, true, yes.out);
    assert.equal(yes.cipher, 'TLS_AES_256_GCM_SHA384');
    const no = await sclient(port, ['-tls1_3', '-ciphersuites', 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256']);
    assert.equal(no.handshake, false, `a suite outside ciphers was negotiated: ${no.cipher}`);
    const tls12 = await sclient(port, ['-tls1_2', '-cipher', `${AES256}:${AES128}`]);
    assert.equal(tls12.handshake, true, tls12.out);
    assert.equal(tls12.cipher, AES128);
    // Only TLS 1.3 names: that suite in TLS 1.3, and nothing left for TLS 1.2.
    const only = agent.port('tls13-only-ciphers');
    const chacha = await sclient(only, ['-tls1_3', '-ciphersuites', 'TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256']);
    assert.equal(chacha.handshake, true, chacha.out);
    assert.equal(chacha.cipher, 'TLS_CHACHA20_POLY1305_SHA256');
    const none12 = await sclient(only, ['-tls1_2']);
    assert.equal(none12.handshake, false, `TLS 1.2 with only TLS 1.3 suites listed: ${none12.cipher}`);
  });

  test('honorCipherOrder: the server\'s order wins when on, the client\'s when off (TLS 1.2 and TLS 1.3)', async () => {
    // The policy lists AES128 first; the client lists AES256 first.
    const on = await sclient(agent.port('honor-on'), ['-tls1_2', '-cipher', `${AES256}:${AES128}`]);
    assert.equal(on.cipher, AES128, `honorCipherOrder on: ${on.out.slice(-500)}`);
    const off = await sclient(agent.port('honor-off'), ['-tls1_2', '-cipher', `${AES256}:${AES128}`]);
    assert.equal(off.cipher, AES256, `honorCipherOrder off: ${off.out.slice(-500)}`);
    const on13 = await sclient(agent.port('honor-on'), ['-tls1_3', '-ciphersuites', 'TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256']);
    assert.equal(on13.cipher, 'TLS_AES_128_GCM_SHA256');
    const off13 = await sclient(agent.port('honor-off'), ['-tls1_3', '-ciphersuites', 'TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256']);
    assert.equal(off13.cipher, 'TLS_AES_256_GCM_SHA384');
  });

  test('ecdhCurve: the listed curve is used; a client with only an unlisted group fails', async () => {
    const port = agent.port('p256');
    for (const maxVersion of ['TLSv1.3', 'TLSv1.2']) {
      const ok = await exchange(port, { maxVersion, ecdhCurve: 'X25519:prime256v1' });
      assert.equal(ok.ok, true, `${maxVersion}: ${ok.error}`);
      assert.deepEqual(ok.info.ephemeral, { type: 'ECDH', name: 'prime256v1', size: 256 }, `${maxVersion}`);
      // TLS 1.2 ECDHE ciphers only, so that no non-ECDHE fallback exists.
      const no = await exchange(port, { maxVersion, ecdhCurve: 'X25519', ciphers: AES128 });
      assert.equal(no.ok, false, `${maxVersion}: X25519 alone negotiated ${JSON.stringify(no.info && no.info.ephemeral)}`);
    }
    // The default (no policy): Mozilla's groups X25519, P-256, P-384; X448
    // and P-521 (in OpenSSL's own list) are not offered.
    const auto = await exchange(agent.port('defaults'), { ecdhCurve: 'X25519' });
    assert.equal(auto.ok, true, auto.error);
    assert.equal(auto.info.ephemeral.name, 'X25519');
    const p384 = await exchange(agent.port('defaults'), { ecdhCurve: 'secp384r1' });
    assert.equal(p384.ok, true, p384.error);
    for (const g of ['X448', 'secp521r1']) {
      const no = await exchange(agent.port('defaults'), { ecdhCurve: g });
      assert.equal(no.ok, false, `${g} negotiated by default`);
    }
  });

  test('ecdhCurve false (ecdhDisabled): no ECDHE in TLS 1.2 or TLS 1.3', async () => {
    const port = agent.port('no-ecdh');
    const only = await sclient(port, ['-tls1_2', '-cipher', `${AES128}:ECDHE-RSA-AES256-SHA384`]);
    assert.equal(only.handshake, false, `an ECDHE cipher was negotiated: ${only.cipher}`);
    const any12 = await exchange(port, { maxVersion: 'TLSv1.2' });
    assert.equal(any12.ok, true, any12.error);
    assert.doesNotMatch(any12.info.cipher, /ECDHE/);
    assert.notEqual((any12.info.ephemeral || {}).type, 'ECDH');
    // TLS 1.3: finite-field groups only.
    const any13 = await exchange(port, { maxVersion: 'TLSv1.3', minVersion: 'TLSv1.3' });
    assert.equal(any13.ok, true, any13.error);
    assert.equal(any13.info.ephemeral.type, 'DH', JSON.stringify(any13.info.ephemeral));
    const ecOnly13 = await exchange(port, { minVersion: 'TLSv1.3', ecdhCurve: 'X25519:prime256v1' });
    assert.equal(ecOnly13.ok, false, 'a TLS 1.3 client with only elliptic-curve groups completed a handshake');
  });

  test('dhparam: a DHE-only client is served with dhparam (2048-bit DH) and refused without it', async () => {
    const ok = await exchange(agent.port('dhe'), { maxVersion: 'TLSv1.2', ciphers: DHE });
    assert.equal(ok.ok, true, ok.error);
    assert.equal(ok.info.cipher, DHE);
    assert.deepEqual(ok.info.ephemeral, { type: 'DH', size: 2048 });
    const no = await exchange(agent.port('dhe-without-dhparam'), { maxVersion: 'TLSv1.2', ciphers: DHE });
    assert.equal(no.ok, false, `DHE without dhparam: ${no.info && no.info.cipher}`);
    // The listener's ECDHE cipher still works without dhparam.
    const ecdhe = await exchange(agent.port('dhe-without-dhparam'), { maxVersion: 'TLSv1.2' });
    assert.equal(ecdhe.ok, true, ecdhe.error);
    assert.equal(ecdhe.info.cipher, AES128);
  });

  test('dhparam_group: an RFC 7919 group serves DHE at once, with its size', async () => {
    const ok = await exchange(agent.port('dhe-group'), { maxVersion: 'TLSv1.2', ciphers: DHE });
    assert.equal(ok.ok, true, ok.error);
    assert.equal(ok.info.cipher, DHE);
    assert.deepEqual(ok.info.ephemeral, { type: 'DH', size: 3072 });
  });

  test('secureProtocol TLSv1_2_method: TLS 1.2 only (a -tls1_3 client is refused)', async () => {
    const port = agent.port('tls12-method');
    const v13 = await sclient(port, ['-tls1_3']);
    assert.equal(v13.handshake, false, `TLS 1.3 negotiated on a TLSv1_2_method policy: ${v13.protocol}`);
    assert.match(v13.out, /protocol version/);
    const v12 = await sclient(port, ['-tls1_2']);
    assert.equal(v12.protocol, 'TLSv1.2', v12.out);
  });

  test('min_version TLS_1_3: a -tls1_2 client is refused; max_version TLS_1_2: a -tls1_3 client is refused', async () => {
    const min13 = agent.port('tls13-min');
    assert.equal((await sclient(min13, ['-tls1_2'])).handshake, false, 'TLS 1.2 below min_version');
    assert.equal((await sclient(min13, ['-tls1_3'])).protocol, 'TLSv1.3');
    const max12 = agent.port('tls12-max');
    assert.equal((await sclient(max12, ['-tls1_3'])).handshake, false, 'TLS 1.3 above max_version');
    assert.equal((await sclient(max12, ['-tls1_2'])).protocol, 'TLSv1.2');
    // A client offering both gets the highest allowed.
    assert.equal((await exchange(max12, {})).info.protocol, 'TLSv1.2');
    assert.equal((await exchange(min13, {})).info.protocol, 'TLSv1.3');
  });

  test('versions by default are TLS 1.2 to 1.3 (TLS 1.1 refused); secureProtocol TLS_method admits TLS 1.1', async () => {
    const args = ['-tls1_1', '-cipher', 'DEFAULT@SECLEVEL=0'];
    const refused = await sclient(agent.port('defaults'), args);
    assert.equal(refused.handshake, false, `TLS 1.1 accepted by default: ${refused.protocol}`);
    const accepted = await sclient(agent.port('tls-method'), args);
    assert.equal(accepted.protocol, 'TLSv1.1', `the client can do TLS 1.1 where allowed: ${accepted.out.slice(-600)}`);
    assert.equal((await sclient(agent.port('defaults'), ['-tls1_3'])).protocol, 'TLSv1.3');
    assert.equal((await sclient(agent.port('defaults'), ['-tls1_2'])).protocol, 'TLSv1.2');
  });
});
