'use strict';
// Certificates ordered from an ACME issuer against pebble (Let's Encrypt's
// test CA, Debian's package) on loopback with real validation: pebble
// resolves the name through pebble-challtestsrv to 127.0.0.1 and connects
// to a real tlsplane-agent's listener (pebble's tlsPort), which answers
// tls-alpn-01 with the challenge certificate the server pushed to it. The
// order completes, the agent serves the issued chain (verified against
// pebble's root), and ordinary clients connecting to that listener while
// the challenge is out are served as before (a handshake loop counts no
// failure); pebble rejecting a fifth of the nonces (badNonce retried once
// per request; an attempt that meets two in a row fails visibly and is
// retried). The
// failure side: a name no listener serves, and a directory
// gone unreachable, each visible on the certificate with its next attempt
// and retried with back-off; bad input refused naming the field. Renewal:
// pebble issues for 90 s, and the renewal job orders again when a third
// of that is left, the old chain serving until the new one is written
// (no failed handshake), RENEWED on WatchEvents.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const tls = require('node:tls');
const { AcmeEnv } = require('./lib/acmeenv');
const { exchange } = require('./lib/tlsclient');
const { freePorts } = require('./lib/agent');
const { status, seconds, expectRefused } = require('./lib/util');
const { waitFor } = require('./lib/wait');

const RETRY_MS = 1000; // TLSPLANE_RENEW_RETRY_MS and TLSPLANE_ACME_RETRY_MS
const NAME = 'a.tlsplane.test';
const VALIDITY_S = 90; // pebble's certificates' lifetime

let env;
let srv;
let conn;
let pebble;
let spare; // a second pebble, stopped once its account is registered
let picky; // a third, rejecting a fifth of the nonces
let agent;
let port; // the agent listener's, pebble's tlsPort
const api = () => conn.api;
const issuers = () => api().IssuerService;
const certs = () => api().CertificateService;
const acme = (pb) => pb.issuer();

before(async () => {
  env = await AcmeEnv.start({
    pebbles: { pebble: { validitySeconds: VALIDITY_S }, spare: { ownPorts: true }, picky: { nonceReject: 20 } },
    hostnames: [NAME],
    env: { TLSPLANE_RENEW_RETRY_MS: String(RETRY_MS), TLSPLANE_ACME_RETRY_MS: String(RETRY_MS) },
  });
  ({ srv, conn, agent, port } = env);
  ({ pebble, spare, picky } = env.pebbles);
});

after(async () => {
  if (env) await env.close();
});

async function certificate(name) {
  return certs().GetCertificate({ name });
}

test('bad input: IP addresses, and wildcards without a DNS hook, refused naming the field; an account not valid refused naming issuer', async () => {
  await expectRefused(api(), () => certs().IssueCertificate({ certificateId: 'ip', issuer: 'issuers/pebble', ipAddresses: ['127.0.0.1'] }), status.INVALID_ARGUMENT, { field: 'ip_addresses[0]' });
  await expectRefused(api(), () => certs().IssueCertificate({ certificateId: 'wild', issuer: 'issuers/pebble', dnsNames: ['*.tlsplane.test'] }), status.INVALID_ARGUMENT, { field: 'dns_names[0]' });
  // This server has no DNS hook (--acme-dns-hook): a wildcard needs dns-01.
  const wild = await expectRefused(api(), () => certs().IssueCertificate({ certificateId: 'wild', issuer: 'issuers/pebble', dnsNames: [NAME, '*.tlsplane.test'] }), status.INVALID_ARGUMENT, { field: 'dns_names[1]' });
  assert.match(wild.details, /^dns_names\[1\]: "\*\.tlsplane\.test": a wildcard is validated by dns-01 only, which needs a DNS hook, and this server has none \(tlsplane-server --acme-dns-hook\)$/);
  const [dead] = await freePorts(1);
  await issuers().CreateIssuer({ issuerId: 'never', issuer: { ...acme(pebble), acmeDirectoryUrl: `https://127.0.0.1:${dead}/dir` } });
  await expectRefused(api(), () => certs().IssueCertificate({ certificateId: 'never', issuer: 'issuers/never', dnsNames: [NAME] }), status.FAILED_PRECONDITION, { field: 'issuer: issuers/never' });
  await issuers().DeleteIssuer({ name: 'issuers/never' });
});

test('an order validated by the agent over tls-alpn-01: the chain issued and served, no ordinary handshake failed', async () => {
  let running = true;
  const res = { ok: 0, failed: [] };
  const loop = async () => {
    while (running) {
      const r = await exchange(port, { servername: NAME }, { send: 'x\n' });
      if (r.ok) res.ok++;
      else res.failed.push(`${r.phase}: ${r.error}`);
    }
  };
  const loops = [loop(), loop()];
  let done;
  try {
    const made = await certs().IssueCertificate({ certificateId: 'acme-a', issuer: 'issuers/pebble', dnsNames: [NAME] });
    assert.equal(made.certificateChainPem, '', 'no chain until the order completes');
    assert.ok(made.pendingRequest, 'its request is pending');
    assert.equal(made.privateKeyPem, '', 'no key returned');
    done = await waitFor('the order completes', async () => {
      const c = await certificate('certificates/acme-a');
      if (c.acmeOrder?.lastError) throw new Error(`the order failed: ${c.acmeOrder.lastError}`);
      return c.certificateChainPem ? c : null;
    }, { timeoutMs: 120000 });
  } finally {
    running = false;
    await Promise.all(loops);
  }
  assert.deepEqual(res.failed, [], 'no ordinary handshake failed during the challenge');
  assert.ok(res.ok > 5, `only ${res.ok} handshakes`);
  assert.equal(done.acmeOrder.status, 'valid');
  assert.match(done.acmeOrder.orderUrl, /^https:\/\/127\.0\.0\.1:/);
  assert.deepEqual(done.acmeOrder.authorizations.map((a) => [a.identifier, a.status]), [[NAME, 'valid']]);
  assert.equal(done.acmeOrder.lastError, '');
  assert.equal(done.acmeOrder.failures ?? 0, 0);
  assert.ok(done.acmeOrder.completeTime, 'complete_time');
  assert.ok(!done.pendingRequest, 'the request ended');
  assert.deepEqual(done.dnsNames, [NAME]);
  assert.ok(done.renewalTime, 'renews on its policy');
  // The challenge key left the server only to the agent: in no read and
  // no log line.
  assert.doesNotMatch(JSON.stringify(await certs().ListCertificates({})), /PRIVATE KEY/);
  assert.doesNotMatch(srv.log(), /PRIVATE KEY/);
  // The agent answered it (pebble's validation connection).
  const m = await agent.metrics();
  assert.ok(m.get('tlsplane_acme_challenges_answered_total') >= 1, 'the agent answered the challenge');
  // Serve it: the agent hands the issued chain out, and it verifies
  // against pebble's root.
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'acme-a', tlsContext: { certificates: ['certificates/acme-a'] } });
  const l = await api().ListenerService.GetListener({ name: 'listeners/edge' });
  await api().ListenerService.UpdateListener({ listener: { name: l.name, sniRoutes: [{ hostname: NAME, tlsContext: 'tlsContexts/acme-a' }] }, updateMask: { paths: ['sni_routes'] } });
  const fp = new crypto.X509Certificate(done.certificateChainPem).fingerprint256;
  const served = await waitFor('the agent serves the issued chain', async () => {
    const r = await exchange(port, { servername: NAME, ca: pebble.root, checkServerIdentity: tls.checkServerIdentity }, { send: 'x\n' });
    return r.ok && r.info.fingerprint === fp ? r : null;
  }, { timeoutMs: 20000 });
  assert.equal(served.socket.authorized === undefined || served.ok, true);
  const issuer = (await issuers().GetIssuer({ name: 'issuers/pebble' }));
  assert.equal(issuer.acmeAccountStatus, 'valid');
  // Audited by the system.
  const ev = (await api().AuditService.ListAuditEvents({ resource: 'certificates/acme-a' })).auditEvents;
  assert.ok(ev.some((e) => e.action === 'issue' && e.actor === 'system'), `audit: ${JSON.stringify(ev.map((e) => `${e.actor}:${e.action}`))}`);
});

test('pebble rejecting a fifth of the nonces: badNonce retried, a failed attempt visible and retried, the order completes', async () => {
  await certs().IssueCertificate({ certificateId: 'picky', issuer: 'issuers/picky', dnsNames: [NAME] });
  const errors = new Set();
  const done = await waitFor('the order completes', async () => {
    const c = await certificate('certificates/picky');
    if (c.acmeOrder?.lastError) errors.add(c.acmeOrder.lastError);
    return c.certificateChainPem ? c : null;
  }, { timeoutMs: 120000 });
  for (const e of errors) assert.match(e, /badNonce/, e);
  assert.equal(done.acmeOrder.status, 'valid');
  assert.equal(done.acmeOrder.lastError, '');
  assert.match(done.acmeOrder.orderUrl, new RegExp(`^${new URL(picky.directory).origin}/`));
  await certs().DeleteCertificate({ name: 'certificates/picky' });
});

test('a name no listener serves: the error and the next attempt on the certificate, retried with back-off', async () => {
  await certs().IssueCertificate({ certificateId: 'nobody', issuer: 'issuers/pebble', dnsNames: ['nobody.tlsplane.test'] });
  const failed = await waitFor('the failure recorded', async () => {
    const c = await certificate('certificates/nobody');
    return c.acmeOrder?.failures >= 2 ? c : null;
  }, { timeoutMs: 30000 });
  assert.match(failed.acmeOrder.lastError, /no listener serves nobody\.tlsplane\.test/);
  assert.ok(failed.acmeOrder.nextAttemptTime, 'next_attempt_time');
  assert.ok(seconds(failed.acmeOrder.nextAttemptTime) > Date.now() / 1000 - 1, 'a next attempt ahead');
  assert.equal(failed.lastRenewalError, failed.acmeOrder.lastError);
  assert.equal(failed.certificateChainPem, '');
  await certs().DeleteCertificate({ name: 'certificates/nobody' });
});

test('an unreachable directory: the transport error visible, the back-off doubling', async () => {
  spare.stop();
  spare = null;
  await certs().IssueCertificate({ certificateId: 'spare', issuer: 'issuers/spare', dnsNames: [NAME] });
  const seen = [];
  await waitFor('three failures recorded', async () => {
    const c = await certificate('certificates/spare');
    const o = c.acmeOrder;
    if (o?.failures && !seen.some((s) => s.failures === o.failures)) seen.push({ failures: o.failures, at: Date.now(), next: seconds(o.nextAttemptTime), err: o.lastError });
    return o?.failures >= 3 ? c : null;
  }, { timeoutMs: 30000 });
  for (const s of seen) assert.match(s.err, /ACME|refused|connect/i, s.err);
  const last = seen[seen.length - 1];
  // The third wait is about four times the base.
  assert.ok(last.next - last.at / 1000 > (RETRY_MS / 1000) * 2.5, `back-off ${JSON.stringify(seen)}`);
  await certs().DeleteCertificate({ name: 'certificates/spare' });
});

test('renewal at a third of the lifetime left: a new order, the old chain serving until the new one is written, no failed handshake', async () => {
  const call = conn.clients['tlsplane.v1.AuditService'].WatchEvents({ kinds: ['certificates'], include: ['RENEWED', 'RENEWAL_FAILED'] });
  const events = [];
  call.on('data', (e) => events.push(e));
  call.on('error', () => {});
  const before = await certificate('certificates/acme-a');
  const lifetime = seconds(before.notAfter) - seconds(before.notBefore);
  assert.ok(Math.abs(seconds(before.renewalTime) - (seconds(before.notAfter) - lifetime / 3)) <= 1, `renewal_time at a third of the lifetime left: ${JSON.stringify([before.notBefore, before.notAfter, before.renewalTime])}`);
  const oldFp = new crypto.X509Certificate(before.certificateChainPem).fingerprint256;
  let running = true;
  const res = { ok: 0, failed: [], fps: new Set() };
  const loop = async () => {
    while (running) {
      const r = await exchange(port, { servername: NAME, ca: pebble.root, checkServerIdentity: tls.checkServerIdentity, rejectUnauthorized: false }, { send: 'x\n' });
      if (r.ok) {
        res.ok++;
        res.fps.add(r.info.fingerprint);
      } else res.failed.push(`${r.phase}: ${r.error}`);
    }
  };
  const loops = [loop(), loop()];
  let renewed;
  try {
    renewed = await waitFor('the server renews it', async () => {
      const c = await certificate('certificates/acme-a');
      return c.serialNumber !== before.serialNumber && c.certificateChainPem ? c : null;
    }, { timeoutMs: (VALIDITY_S + 30) * 1000 });
    const newFp = new crypto.X509Certificate(renewed.certificateChainPem).fingerprint256;
    await waitFor('the agent serves the renewed chain', () => res.fps.has(newFp), { timeoutMs: 20000 });
  } finally {
    running = false;
    await Promise.all(loops);
    call.cancel();
  }
  assert.deepEqual(res.failed, [], 'no handshake failed');
  assert.ok(res.fps.has(oldFp), 'the old chain served meanwhile');
  assert.equal(renewed.acmeOrder.status, 'valid');
  assert.equal(renewed.acmeOrder.lastError, '');
  assert.ok(renewed.lastRenewalTime, 'last_renewal_time');
  assert.ok(!renewed.pendingRequest, 'the renewal request ended');
  assert.notEqual(renewed.acmeOrder.orderUrl, before.acmeOrder.orderUrl, 'a new order');
  await waitFor('WatchEvents: RENEWED', () => events.some((e) => e.type === 'RENEWED' && e.resource === 'certificates/acme-a'));
  const ev = (await api().AuditService.ListAuditEvents({ resource: 'certificates/acme-a' })).auditEvents;
  assert.ok(ev.some((e) => e.action === 'renew' && e.actor === 'system'), `audit: ${JSON.stringify(ev.map((e) => e.action))}`);
});
