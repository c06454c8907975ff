'use strict';
// Ticket-key rings rotate on their own schedule (rotation_period): the
// server's job puts a fresh active key in front, keeps the previous one for
// decryption, retires keys beyond retained_keys, and records who did it.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { useServer } = require('./lib/server');
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
