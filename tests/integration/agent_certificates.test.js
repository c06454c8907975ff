'use strict';
// key, cert, pfx + passphrase, and several keys side by side: the agent
// serves exactly the certificate (and chain) of each key type, chosen per
// client by the signature algorithms it offers.

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { exchange, sclient } = require('./lib/tlsclient');

// TLS 1.3 signature algorithm names (the client's signature_algorithms).
const SIG = {
  rsa: 'rsa_pss_rsae_sha256:rsa_pkcs1_sha256',
  ecdsa: 'ecdsa_secp256r1_sha256',
  ed25519: 'ed25519',
};

describe('key, cert and pfx: the certificate the agent serves', () => {
  let p;
  let x;
  let up;
  let agent;

  before(async () => {
    p = pki();
    x = p.agentExtras();
    up = await Upstream.start({ mode: 'echo' });
    const ctx = (name, certs) => tlsContext(name, { certs });
    const fromPfx = { leaf: { name: 'from-pfx', cert: x.fromPfx.cert, key: x.fromPfx.key }, chain: x.fromPfx.chain };
    const pfxNoChain = { leaf: { name: 'from-pfx-leaf-only', cert: x.fromPfx.cert, key: x.fromPfx.key }, chain: x.fromPfx.cert };
    const l = (name, certs) => listener(name, { upstream: up.address, defaultContext: ctx(name, certs) });
    agent = await Agent.start(snapshot(1, [
      l('rsa', [p.rsa]),
      l('ecdsa', [p.ecdsa]),
      l('ed25519', [p.ed25519]),
      l('pfx', [fromPfx]),
      l('pfx-leaf-only', [pfxNoChain]),
      l('rsa-ecdsa', [p.rsa, p.ecdsa]),
      l('rsa-ecdsa-ed25519', [p.rsa, p.ecdsa, p.ed25519]),
    ]));
  });

  after(async () => {
    if (agent) await agent.stopClean();
    if (up) await up.close();
  });
  failOnCrash({ afterEach }, () => [agent]);

  for (const [kind, leafName] of [['RSA', 'rsa'], ['ECDSA', 'ecdsa'], ['Ed25519', 'ed25519']]) {
    test(`key + cert (PEM, ${kind}): the certificate is served and its key signs the handshake`, async () => {
      const leaf = p[leafName];
      const port = agent.port(leafName);
      // A client trusting the root CA verifies it: the key matches.
      const ok = await exchange(port, { ca: [p.ca.cert] });
      assert.equal(ok.ok, true, `handshake failed: ${ok.error}`);
      assert.equal(ok.info.fingerprint, leaf.fingerprint);
      assert.equal(ok.info.authorized, true, `not authorized: ${ok.info.authorizationError}`);
      assert.equal(ok.echoed, 'ping\n');
      // Also over TLS 1.2.
      const ok12 = await exchange(port, { ca: [p.ca.cert], maxVersion: 'TLSv1.2' });
      assert.equal(ok12.ok, true, `TLS 1.2 handshake failed: ${ok12.error}`);
      assert.equal(ok12.info.fingerprint, leaf.fingerprint);
      // The negative side: a client that accepts no signature this key can
      // make gets no certificate at all (there is no other).
      const others = Object.entries(SIG).filter(([k]) => k !== leafName).map(([, v]) => v).join(':');
      const refused = await exchange(port, { sigalgs: others });
      assert.equal(refused.ok, false, `a client offering only ${others} completed a handshake with the ${kind} certificate`);
      assert.equal(refused.phase, 'handshake');
    });
  }

  test('pfx + passphrase: the PFX\'s key and CA chain are served (a client trusting only the root verifies through the intermediate)', async () => {
    // The server decrypts the PFX with the passphrase and stores the chain
    // and an unencrypted PKCS#8 key; a snapshot carries that.
    const ok = await exchange(agent.port('pfx'), { ca: [p.ca.cert], servername: 'chain.example.com' });
    assert.equal(ok.ok, true, ok.error);
    assert.equal(ok.info.fingerprint, p.chained.fingerprint);
    assert.equal(ok.info.authorized, true, `not authorized: ${ok.info.authorizationError}`);
    const s = await sclient(agent.port('pfx'), ['-showcerts', '-servername', 'chain.example.com']);
    assert.equal(s.handshake, true);
    assert.equal((s.out.match(/-----BEGIN CERTIFICATE-----/g) || []).length, 2, 'leaf + intermediate expected in the Certificate message');
    // Negative: the same leaf without its intermediate does not verify with
    // the root alone; the chain served is exactly the one stored.
    const bare = await exchange(agent.port('pfx-leaf-only'), { ca: [p.ca.cert] });
    assert.equal(bare.ok, false, 'a leaf without its intermediate verified against the root alone');
    assert.match(bare.code || '', /UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT/);
  });

  test('several key types side by side: TLS 1.3 clients get the RSA or the ECDSA certificate by their signature algorithms', async () => {
    const port = agent.port('rsa-ecdsa');
    const rsa = await sclient(port, ['-tls1_3', '-sigalgs', SIG.rsa]);
    assert.equal(rsa.handshake, true, rsa.out);
    assert.equal(rsa.fingerprint, p.rsa.fingerprint, 'an RSA-only client must get the RSA certificate');
    const ec = await sclient(port, ['-tls1_3', '-sigalgs', SIG.ecdsa]);
    assert.equal(ec.handshake, true, ec.out);
    assert.equal(ec.fingerprint, p.ecdsa.fingerprint, 'an ECDSA-only client must get the ECDSA certificate');
    // Neither: no handshake.
    const ed = await sclient(port, ['-tls1_3', '-sigalgs', SIG.ed25519]);
    assert.equal(ed.handshake, false, 'an Ed25519-only client completed a handshake without an Ed25519 certificate');
  });

  test('several key types side by side: TLS 1.2 clients get the certificate their cipher authenticates with (aRSA / aECDSA)', async () => {
    const port = agent.port('rsa-ecdsa');
    const rsa = await sclient(port, ['-tls1_2', '-cipher', 'ECDHE-RSA-AES128-GCM-SHA256']);
    assert.equal(rsa.handshake, true, rsa.out);
    assert.equal(rsa.cipher, 'ECDHE-RSA-AES128-GCM-SHA256');
    assert.equal(rsa.fingerprint, p.rsa.fingerprint);
    const ec = await sclient(port, ['-tls1_2', '-cipher', 'ECDHE-ECDSA-AES128-GCM-SHA256']);
    assert.equal(ec.handshake, true, ec.out);
    assert.equal(ec.cipher, 'ECDHE-ECDSA-AES128-GCM-SHA256');
    assert.equal(ec.fingerprint, p.ecdsa.fingerprint);
    // The RSA-only listener has no certificate for an aECDSA cipher.
    const none = await sclient(agent.port('rsa'), ['-tls1_2', '-cipher', 'ECDHE-ECDSA-AES128-GCM-SHA256']);
    assert.equal(none.handshake, false, 'an aECDSA-only client completed a handshake with an RSA-only context');
  });

  test('three key types side by side: RSA, ECDSA and Ed25519 each reach the client that asks for it', async () => {
    const port = agent.port('rsa-ecdsa-ed25519');
    for (const [k, leaf] of [['rsa', p.rsa], ['ecdsa', p.ecdsa], ['ed25519', p.ed25519]]) {
      const r = await exchange(port, { sigalgs: SIG[k] });
      assert.equal(r.ok, true, `${k}: ${r.error}`);
      assert.equal(r.info.fingerprint, leaf.fingerprint, `a client offering only ${SIG[k]} got another certificate`);
    }
    // A client offering everything gets one of them and completes.
    const any = await exchange(port, {});
    assert.equal(any.ok, true, any.error);
    assert.ok([p.rsa, p.ecdsa, p.ed25519].some((l) => l.fingerprint === any.info.fingerprint));
  });

  test('secureConnection: every completed handshake is counted per listener', async () => {
    const before = await agent.metrics();
    const h0 = before.get('tlsplane_handshakes_total', { listener: 'listeners/ecdsa' });
    const c0 = before.get('tlsplane_connections_total', { listener: 'listeners/ecdsa' });
    const other0 = before.get('tlsplane_handshakes_total', { listener: 'listeners/rsa' });
    for (let i = 0; i < 3; i++) assert.equal((await exchange(agent.port('ecdsa'))).ok, true);
    // A failed handshake is a connection, not a handshake.
    assert.equal((await exchange(agent.port('ecdsa'), { sigalgs: SIG.rsa })).ok, false);
    const m = await agent.waitForMetrics(
      (mm) => mm.get('tlsplane_connections_total', { listener: 'listeners/ecdsa' }) >= c0 + 4,
      { what: '4 more connections on listeners/ecdsa' },
    );
    assert.equal(m.get('tlsplane_handshakes_total', { listener: 'listeners/ecdsa' }) - h0, 3);
    assert.equal(m.get('tlsplane_handshakes_total', { listener: 'listeners/rsa' }), other0, 'another listener\'s counter moved');
  });
});
