'use strict';
// Ticket-key rings rotate on their own schedule (rotation_period): the
// server's job puts a fresh active key in front, keeps the previous one for
// decryption, retires keys beyond retained_keys, and records who did it.
// OCSP fetches that hang (a responder that accepts and never answers) do
// not delay it, and do not hold up the server's shutdown.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { Server, useServer } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const { uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');

const ctx = useServer({ before, after, beforeEach, afterEach });

const seconds = (ts) => Number(ts.seconds) + ts.nanos / 1e9;

test('a ring with rotation_period rotates by itself, and only when due', async () => {
  const svc = ctx.api.TicketKeyService;
  const ring = await svc.CreateTicketKeyRing({
    ticketKeyRingId: 'scheduled',
    ticketKeyRing: { rotationPeriod: { seconds: '10', nanos: 0 }, retainedKeys: 2 },
  });
  const manual = await svc.CreateTicketKeyRing({ ticketKeyRingId: 'manual', ticketKeyRing: { rotationPeriod: { seconds: '0', nanos: 0 } } });
  assert.equal(ring.keys.length, 1);
  assert.equal(ring.keys[0].state, 'ACTIVE');
  assert.equal(
    seconds(ring.nextRotationTime) - seconds(ring.lastRotationTime), 10,
    'next rotation is one period after the last');
  assert.equal(manual.nextRotationTime, null, 'no schedule with a period of 0');

  // Not before it is due: the job (it looks every second) rotates the
  // ring once its next_rotation_time has passed, and the times the ring
  // records for the rotation say it was not earlier.
  let now = await svc.GetTicketKeyRing({ name: ring.name });
  assert.equal(now.keys[0].keyName, ring.keys[0].keyName, 'rotated before the period passed');
  now = await waitFor('the scheduled rotation', async () => {
    const r = await svc.GetTicketKeyRing({ name: ring.name });
    return r.keys[0].keyName !== ring.keys[0].keyName ? r : null;
  }, { timeoutMs: 30000, intervalMs: 500 });
  assert.ok(seconds(now.lastRotationTime) >= seconds(ring.nextRotationTime),
    `rotated at ${seconds(now.lastRotationTime)}, before the period passed (due ${seconds(ring.nextRotationTime)})`);
  assert.ok(seconds(now.keys[0].createTime) >= seconds(ring.nextRotationTime), 'the new key was made before the rotation was due');
  assert.notEqual(now.keys[0].keyName, ring.keys[0].keyName, 'the ring did not rotate on schedule');
  assert.deepEqual(now.keys.map((k) => k.state), ['ACTIVE', 'DECRYPT_ONLY']);
  assert.equal(now.keys[1].keyName, ring.keys[0].keyName, 'the previous key still decrypts');
  assert.ok(seconds(now.nextRotationTime) > Date.now() / 1000, 'the next rotation is in the future');

  const unchanged = await svc.GetTicketKeyRing({ name: manual.name });
  assert.equal(unchanged.etag, manual.etag, 'a ring without a period never rotates by itself');

  const events = await ctx.api.AuditService.ListAuditEvents({ resource: ring.name });
  const rotations = events.auditEvents.filter((e) => e.action === 'rotate');
  assert.ok(rotations.length >= 1);
  assert.equal(rotations[0].actor, 'system');
});

test('OCSP responders that never answer delay neither the rotation nor the shutdown', async () => {
  // Accepts every connection and holds it, answering nothing: each fetch
  // waits out its 10 s timeout.
  const held = new Set();
  let accepted = 0;
  const dead = net.createServer((sock) => {
    accepted += 1;
    held.add(sock);
    sock.on('error', () => {});
    sock.on('close', () => held.delete(sock));
  });
  await new Promise((resolve) => dead.listen(0, '127.0.0.1', resolve));
  const srv = await Server.start({});
  let conn;
  try {
    conn = await connect(srv.address, srv.connectOptions());
    const api = conn.api;
    const p = pki();
    // More hanging fetches than the server runs at once.
    const ids = ['dead-1', 'dead-2', 'dead-3', 'dead-4'];
    for (const id of ids) {
      const leaf = p.ocspLeaf(uid(id), `http://127.0.0.1:${dead.address().port}/ocsp`);
      await api.CertificateService.CreateCertificate({
        certificateId: id,
        certificate: { certificateChainPem: leaf.cert, privateKeyPem: leaf.key, issuerCertificatePem: p.ca.cert },
      });
    }
    for (const id of ids) {
      await api.TlsContextService.CreateTlsContext({
        tlsContextId: id, tlsContext: { certificates: [`certificates/${id}`], ocspStapling: true },
      });
    }
    await waitFor('the fetches hanging on the silent responder', () => held.size >= 1, { timeoutMs: 10000 });

    const svc = api.TicketKeyService;
    const ring = await svc.CreateTicketKeyRing({
      ticketKeyRingId: 'beside-dead-ocsp',
      ticketKeyRing: { rotationPeriod: { seconds: '10', nanos: 0 }, retainedKeys: 2 },
    });
    const rotated = await waitFor('the scheduled rotation', async () => {
      const r = await svc.GetTicketKeyRing({ name: ring.name });
      return r.keys[0].keyName !== ring.keys[0].keyName ? r : null;
    }, { timeoutMs: 30000, intervalMs: 200 });
    const late = seconds(rotated.lastRotationTime) - seconds(ring.nextRotationTime);
    assert.ok(late >= 0 && late < 3, `rotated ${late} s after it was due, beside fetches that hang`);
    assert.ok(held.size >= 1, 'no fetch was hanging when the ring rotated');

    // A fetch that timed out is recorded as a failure, by the fetch itself.
    const failed = await waitFor('a timed-out fetch recorded', async () => {
      for (const id of ids) {
        const c = await api.CertificateService.GetCertificate({ name: `certificates/${id}` });
        if (c.ocspFetchFailures > 0) return c;
      }
      return null;
    }, { timeoutMs: 30000, intervalMs: 250 });
    assert.match(failed.ocspLastError, /timed out/i);
    assert.equal(failed.ocspResponse.length, 0);

    // Stopping while fetches hang: they are aborted, not waited out.
    await waitFor('a fetch hanging again', () => held.size >= 1, { timeoutMs: 15000 });
    conn.close();
    conn = null;
    const t0 = Date.now();
    await srv.stopClean();
    assert.ok(Date.now() - t0 < 5000, `the server took ${Date.now() - t0} ms to stop with fetches hanging`);
    assert.ok(accepted >= 2, `${accepted} fetches reached the responder`);
  } finally {
    if (conn) conn.close();
    if (srv.running) await srv.stopClean();
    for (const s of held) s.destroy();
    await new Promise((resolve) => dead.close(resolve));
  }
});
