'use strict';
// ACME tls-alpn-01 (RFC 8737) answered by the agent: a listener holding a
// challenge for a name answers a ClientHello whose SNI is that name and
// whose ALPN list is exactly "acme-tls/1" with the challenge certificate,
// selects "acme-tls/1" and closes the connection after the handshake (the
// upstream never sees it); "acme-tls/1" alone for a name with no challenge
// is refused; every other ClientHello is served exactly as before.
// Challenges come and go as ordinary listener changes (no rebind, no
// failed handshake), and a challenge that cannot be built keeps its
// listener on the previous version, naming the challenge.

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const tls = require('node:tls');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { HOST, exchange, fingerprint, SClient } = require('./lib/tlsclient');
const { waitFor } = require('./lib/wait');

const ACME_OID = '1.3.6.1.5.5.7.1.31';

describe('ACME tls-alpn-01 challenges', () => {
  let p;
  let up;
  let agent;
  const ch = {}; // name -> {serverName, certificatePem, privateKeyPem, fingerprint}

  // A challenge certificate as RFC 8737 section 3 has it: self-signed, the
  // name as its only subjectAltName, the critical acmeIdentifier extension
  // holding a SHA-256 (of a made-up key authorization here).
  function challenge(serverName, { critical = true } = {}) {
    const base = `acme-${serverName.replace(/[^a-z0-9]/g, '_')}-${crypto.randomBytes(4).toString('hex')}`;
    p.run(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', `${base}.key`]);
    const digest = crypto.createHash('sha256').update(`token.${serverName}`).digest('hex');
    p.run([
      'req', '-new', '-x509', '-key', `${base}.key`, '-out', `${base}.crt`, '-days', '7',
      '-subj', `/CN=${serverName}`,
      '-addext', `subjectAltName=DNS:${serverName}`,
      '-addext', `${ACME_OID}=${critical ? 'critical,' : ''}DER:0420${digest}`,
    ]);
    const certificatePem = p.read(`${base}.crt`);
    return { serverName, certificatePem, privateKeyPem: p.read(`${base}.key`), fingerprint: fingerprint(certificatePem) };
  }

  const material = (c) => ({ serverName: c.serverName, certificatePem: c.certificatePem, privateKeyPem: c.privateKeyPem });

  // Listener "acme" (a web context, the challenges given) and listener
  // "other" (its own certificate), both to the echo upstream.
  function snap(rev, { challenges = [], otherCert } = {}) {
    const acme = listener('acme', { upstream: up.address, defaultContext: tlsContext('web', { certs: [p.rsa] }) });
    if (challenges.length) acme.acmeChallenges = challenges.map(material);
    const other = listener('other', { upstream: up.address, defaultContext: tlsContext('other', { certs: [otherCert || p.ecdsa] }) });
    return snapshot(rev, [acme, other]);
  }

  // A tls.connect that sends nothing: resolves once the socket closes with
  // what the handshake gave and how the connection ended.
  function validate(port, { servername, ALPNProtocols = ['acme-tls/1'], ...opts }, timeoutMs = 10000) {
    return new Promise((resolve) => {
      const r = { secure: false, ended: false, error: null };
      const sock = tls.connect({ host: HOST, port, servername, ALPNProtocols, rejectUnauthorized: false, ...opts });
      const timer = setTimeout(() => {
        r.error = `still open after ${timeoutMs} ms`;
        sock.destroy();
      }, timeoutMs);
      sock.on('secureConnect', () => {
        r.secure = true;
        r.alpn = sock.alpnProtocol;
        r.version = sock.getProtocol();
        const peer = sock.getPeerCertificate(true);
        r.fingerprint = peer && peer.raw ? fingerprint(`-----BEGIN CERTIFICATE-----\n${peer.raw.toString('base64')}\n-----END CERTIFICATE-----\n`) : null;
        r.sessionReused = sock.isSessionReused();
      });
      sock.on('end', () => {
        r.ended = true; // close_notify (or FIN) from the agent
      });
      sock.on('error', (e) => {
        r.error = r.error || e.code || e.message;
      });
      sock.on('close', () => {
        clearTimeout(timer);
        resolve(r);
      });
    });
  }

  async function metric(name, labels) {
    return (await agent.metrics()).get(name, labels) || 0;
  }

  before(async () => {
    p = pki();
    up = await Upstream.start({ mode: 'echo' });
    ch.a = challenge('a.test');
    ch.b = challenge('b.test');
    ch.a2 = challenge('a.test');
    agent = await Agent.start(snap(1, { challenges: [ch.a] }));
  });

  after(async () => {
    if (agent) await agent.stopClean();
    if (up) await up.close();
  });
  failOnCrash({ afterEach }, () => [agent]);

  test('openssl s_client -alpn acme-tls/1: the challenge certificate, acme-tls/1 selected, closed by the agent after the handshake; the upstream sees no connection', async () => {
    const answered0 = await metric('tlsplane_acme_challenges_answered_total', { listener: 'listeners/acme' });
    const ups0 = up.connections.length;
    // stdin stays open: s_client exits only because the agent closed.
    const c = SClient.start(agent.port('acme'), ['-alpn', 'acme-tls/1', '-servername', 'a.test'], { timeoutMs: 10000 });
    const r = await c.done();
    assert.notEqual(r.exit && r.exit.signal, 'SIGKILL', `s_client was still connected after 10 s:\n${r.out}`);
    assert.equal(r.handshake, true, r.out);
    assert.equal(r.alpn, 'acme-tls/1', r.out);
    assert.equal(r.fingerprint, ch.a.fingerprint, 'not the challenge certificate');
    assert.match(r.out, /^closed$|close notify/m, `no close_notify seen:\n${r.out}`);

    // An ordinary client after it: exactly one new upstream connection, its own.
    const normal = await exchange(agent.port('acme'), { servername: 'a.test' });
    assert.equal(normal.ok, true, normal.error);
    assert.equal(normal.info.fingerprint, p.rsa.fingerprint);
    assert.equal(up.connections.length, ups0 + 1, 'the challenge connection reached the upstream');
    assert.equal(await metric('tlsplane_acme_challenges_answered_total', { listener: 'listeners/acme' }), answered0 + 1);
    await agent.waitForLog((t) => /listener=listeners\/acme client=\S+ acme_challenge=a\.test answered/.test(t), { what: 'the challenge log line' });
    const keyBody = ch.a.privateKeyPem.split('\n')[1];
    assert.ok(!agent.logText.includes(keyBody), 'the challenge key was logged');
  });

  test('Node tls.connect with ALPNProtocols [acme-tls/1], TLS 1.2 and TLS 1.3: the challenge, no resumption, closed right after the handshake', async () => {
    const ups0 = up.connections.length;
    for (const version of ['TLSv1.2', 'TLSv1.3']) {
      const r = await validate(agent.port('acme'), { servername: 'A.Test', minVersion: version, maxVersion: version });
      assert.equal(r.secure, true, `${version}: ${r.error}`);
      assert.equal(r.version, version);
      assert.equal(r.alpn, 'acme-tls/1', version);
      assert.equal(r.fingerprint, ch.a.fingerprint, `${version}: not the challenge certificate`);
      assert.equal(r.ended, true, `${version}: the agent did not end the connection (${r.error})`);
      assert.equal(r.sessionReused, false);
    }
    // A session of the web context does not resume as a challenge.
    const web = await exchange(agent.port('acme'), { servername: 'a.test', maxVersion: 'TLSv1.2' });
    assert.equal(web.ok, true, web.error);
    assert.ok(web.session, 'the web context gave no session');
    const resumed = await exchange(agent.port('acme'), { servername: 'a.test', maxVersion: 'TLSv1.2', session: web.session });
    assert.equal(resumed.info.reused, true, 'the web session does not resume at all');
    const again = await validate(agent.port('acme'), { servername: 'a.test', maxVersion: 'TLSv1.2', session: web.session });
    assert.equal(again.secure, true, again.error);
    assert.equal(again.sessionReused, false, 'a web session resumed in the challenge context');
    assert.equal(again.fingerprint, ch.a.fingerprint);
    const normal = await exchange(agent.port('acme'), {});
    assert.equal(normal.ok, true, normal.error);
    assert.equal(up.connections.length, ups0 + 3, 'a challenge connection reached the upstream'); // web, resumed, normal
  });

  test('ALPN [h2, acme-tls/1] and no ALPN: the normal certificate, proxied to the upstream', async () => {
    const ups0 = up.connections.length;
    for (const opts of [{ ALPNProtocols: ['h2', 'acme-tls/1'] }, {}, { ALPNProtocols: ['acme-tls/1', 'http/1.1'] }]) {
      const r = await exchange(agent.port('acme'), { servername: 'a.test', ...opts });
      assert.equal(r.ok, true, `${JSON.stringify(opts)}: ${r.error}`);
      assert.equal(r.info.fingerprint, p.rsa.fingerprint, JSON.stringify(opts));
      assert.equal(r.echoed, 'ping\n');
    }
    const s = await SClient.start(agent.port('acme'), ['-alpn', 'h2,acme-tls/1', '-servername', 'a.test'], { timeoutMs: 10000 });
    await s.waitFor(/^---$/m).catch(() => {});
    s.end();
    const sr = await s.done();
    assert.equal(sr.fingerprint, p.rsa.fingerprint, sr.out);
    assert.equal(sr.alpn, null, 'the web context has no ALPN list: nothing is selected');
    assert.equal(up.connections.length, ups0 + 4);
  });

  test('acme-tls/1 for a name with no challenge (or no SNI): the handshake is refused with no_application_protocol and counted', async () => {
    const cause = { listener: 'listeners/acme', cause: 'acme_no_challenge' };
    const before0 = await metric('tlsplane_client_errors_total', cause);
    const ups0 = up.connections.length;
    const r = await validate(agent.port('acme'), { servername: 'c.test' });
    assert.equal(r.secure, false);
    assert.match(String(r.error), /NO_APPLICATION_PROTOCOL/i);
    const none = await validate(agent.port('acme'), { servername: undefined });
    assert.equal(none.secure, false);
    assert.match(String(none.error), /NO_APPLICATION_PROTOCOL/i);
    const s = await SClient.start(agent.port('other'), ['-alpn', 'acme-tls/1', '-servername', 'a.test'], { timeoutMs: 10000 }).done();
    assert.equal(s.handshake, false, s.out);
    assert.match(s.out, /no application protocol/i);
    await agent.waitForMetrics((m) => (m.get('tlsplane_client_errors_total', cause) || 0) === before0 + 2, { what: 'two acme_no_challenge errors on listeners/acme' });
    await agent.waitForMetrics((m) => (m.get('tlsplane_client_errors_total', { listener: 'listeners/other', cause: 'acme_no_challenge' }) || 0) >= 1, { what: 'one on listeners/other' });
    assert.equal(await metric('tlsplane_client_errors_total', { listener: 'listeners/acme', cause: 'handshake_failed' }), 0);
    assert.equal(up.connections.length, ups0);
  });

  test('challenges added, replaced and removed by reloads: no rebind, ordinary clients meanwhile see no failure', async () => {
    const port = agent.port('acme');
    let stop = false;
    let ok = 0;
    const failures = [];
    const loop = (async () => {
      while (!stop) {
        const r = await exchange(port, { servername: 'a.test', ALPNProtocols: ['h2', 'http/1.1'] });
        if (r.ok && r.info.fingerprint === p.rsa.fingerprint) ok++;
        else failures.push(r.error || `certificate ${r.info && r.info.fingerprint}`);
      }
    })();
    try {
      const steps = [
        [ch.a, ch.b],
        [ch.a2, ch.b],
        [ch.b],
        [],
        [ch.a],
      ];
      let rev = 10;
      for (const challenges of steps) {
        rev++;
        const r = await agent.reload(snap(rev, { challenges }));
        assert.equal(r.applied, true, r.text);
        assert.deepEqual(r.failed, [], r.text);
        assert.equal(agent.port('acme'), port, 'the listener was bound again');
        const seen = ok + failures.length;
        await waitFor(`three ordinary handshakes at revision ${rev}`, () => ok + failures.length >= seen + 3,
          { timeoutMs: 10000 });
        for (const name of ['a.test', 'b.test']) {
          const want = challenges.find((c) => c.serverName === name);
          const v = await validate(port, { servername: name });
          if (want) {
            assert.equal(v.fingerprint, want.fingerprint, `revision ${rev}: ${name}`);
            assert.equal(v.ended, true);
          } else {
            assert.equal(v.secure, false, `revision ${rev}: ${name} answered without a challenge`);
          }
        }
      }
    } finally {
      stop = true;
      await loop;
    }
    assert.deepEqual(failures, [], `${failures.length} ordinary handshakes failed`);
    assert.ok(ok > 0);
  });

  test('a challenge that cannot be built: its listener keeps its previous version and is named, the other listener moves on', async () => {
    const bad = [
      [{ ...material(ch.b), privateKeyPem: ch.a.privateKeyPem }, /acme_challenges\[b\.test\]: private_key_pem: does not match the certificate/],
      [{ ...material(ch.b), certificatePem: 'not a PEM' }, /acme_challenges\[b\.test\]: certificate_pem: /],
      [{ ...material(ch.b), serverName: 'not a name!' }, /acme_challenges\[0\]: server_name: /],
      [{ ...material(ch.b), serverName: '*.b.test' }, /acme_challenges\[0\]: server_name: .*wildcard/],
      [{ ...material(ch.b), serverName: 'c.test' }, /acme_challenges\[c\.test\]: certificate_pem: "c\.test" is not a DNS name of its subjectAltName/],
      [material(challenge('d.test', { critical: false })), /acme_challenges\[d\.test\]: certificate_pem: the acmeIdentifier extension must be critical/],
    ];
    let rev = 20;
    let other = p.ecdsa;
    for (const [m, reason] of bad) {
      rev++;
      other = other === p.ecdsa ? p.ecdsa2 : p.ecdsa;
      const s = snap(rev, { otherCert: other });
      s.listeners[0].acmeChallenges = [m];
      const r = await agent.reload(s);
      assert.equal(r.applied, true, r.text);
      assert.deepEqual(r.failed.map((f) => f.listener), ['listeners/acme'], r.text);
      assert.match(r.failed[0].reason, reason);
      const o = await exchange(agent.port('other'), {});
      assert.equal(o.info.fingerprint, other.fingerprint, 'listener other did not move on');
      // The previous version of acme still answers a.test.
      const v = await validate(agent.port('acme'), { servername: 'a.test' });
      assert.equal(v.fingerprint, ch.a.fingerprint, 'listener acme lost its previous version');
    }
    // Two challenges for one name.
    rev++;
    const s = snap(rev, { challenges: [ch.a, ch.a2] });
    const r = await agent.reload(s);
    assert.deepEqual(r.failed.map((f) => f.listener), ['listeners/acme'], r.text);
    assert.match(r.failed[0].reason, /acme_challenges\[a\.test\]: server_name: "a\.test" has two challenges/);
    assert.ok(!agent.logText.includes(ch.a.privateKeyPem.split('\n')[1]), 'a challenge key was logged');
  });
});
