'use strict';
// The audit log as a dashboard reads it: newest first by default or oldest
// first on request, a half-open time range, paging in either order with
// tokens bound to the order and filters that made them, what each write
// changed (a certificate's serial, fingerprint and expiry, a ring's key
// ids, a context's references; never a secret), and an identical
// re-upload that changes nothing at all.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { useServer } = require('./lib/server');
const { pki } = require('./lib/pki');
const { status, expectGrpcError, listAll, uid } = require('./lib/util');

const ctx = useServer({ before, after, beforeEach, afterEach });
let p;
before(() => {
  p = pki();
});
const api = () => ctx.api;
const audit = () => api().AuditService;
const certs = () => api().CertificateService;

const timeUs = (t) => BigInt(t.seconds) * 1000000n + BigInt(Math.floor(t.nanos / 1000));
const names = (events) => events.map((e) => e.name);
const rfc3339 = (d) => d.toISOString().replace(/\.\d{3}Z$/, 'Z');

async function all(req = {}, pageSize = 1000) {
  return listAll(audit(), 'ListAuditEvents', 'auditEvents', req, { pageSize });
}

async function createCert(leaf = p.rsa) {
  return certs().CreateCertificate({
    certificateId: uid('cert'), certificate: { certificateChainPem: leaf.cert, privateKeyPem: leaf.key },
  });
}

// A handful of writes so that every list below has pages to walk.
async function someWrites(n = 5) {
  const made = [];
  for (let i = 0; i < n; i++) made.push(await createCert());
  return made;
}

test('newest first by default, oldest first with order_by "time asc"', async () => {
  await someWrites();
  const desc = await all();
  const asc = await all({ orderBy: 'time asc' });
  assert.ok(asc.length >= 5);
  assert.deepEqual(names(await all({ orderBy: 'time desc' })), names(desc), '"time desc" is the default');
  assert.deepEqual(names(desc), names(asc).reverse(), 'desc is asc reversed');
  for (let i = 1; i < asc.length; i++) {
    assert.ok(Number(asc[i].revision) >= Number(asc[i - 1].revision), `revision order at ${i}`);
    assert.ok(timeUs(asc[i].time) >= timeUs(asc[i - 1].time), `time order at ${i}`);
  }
  const first = await audit().ListAuditEvents({ pageSize: 1 });
  assert.equal(first.auditEvents[0].name, desc[0].name, 'the first page starts with the newest event');
});

test('paging walks the whole trail in both orders, without duplicates', async () => {
  await someWrites();
  for (const orderBy of ['time desc', 'time asc']) {
    const full = await all({ orderBy });
    const paged = await all({ orderBy }, 2);
    assert.deepEqual(names(paged), names(full), `${orderBy}: pages of 2`);
    assert.equal(new Set(names(paged)).size, paged.length, `${orderBy}: duplicates`);
  }
  // With a filter too: one certificate's create and update, page by page.
  const c = await createCert();
  await certs().UpdateCertificate({
    certificate: { name: c.name, labels: { v: '2' } }, updateMask: { paths: ['labels'] },
  });
  const desc = await all({ resource: c.name }, 1);
  assert.deepEqual(desc.map((e) => e.action), ['update', 'create']);
  const asc = await all({ resource: c.name, orderBy: 'time asc' }, 1);
  assert.deepEqual(asc.map((e) => e.action), ['create', 'update']);
});

test('a page token is refused with another order or other filters', async () => {
  await someWrites(3);
  const page = await audit().ListAuditEvents({ pageSize: 1 });
  assert.ok(page.nextPageToken, 'a next page');
  assert.doesNotMatch(page.nextPageToken, /^\d+$/, 'the token is opaque');
  const again = await audit().ListAuditEvents({ pageSize: 1, pageToken: page.nextPageToken });
  assert.equal(again.auditEvents.length, 1);
  const cases = [
    { orderBy: 'time asc' },
    { actor: 'token:admin' },
    { sinceRevision: '1' },
    { startTime: { seconds: '1', nanos: 0 } },
    { endTime: { seconds: '4000000000', nanos: 0 } },
  ];
  for (const other of cases) {
    await expectGrpcError(audit().ListAuditEvents({ pageSize: 1, pageToken: page.nextPageToken, ...other }),
      status.INVALID_ARGUMENT, { field: 'page_token', what: JSON.stringify(other) });
  }
  const asc = await audit().ListAuditEvents({ pageSize: 1, orderBy: 'time asc' });
  await expectGrpcError(audit().ListAuditEvents({ pageSize: 1, pageToken: asc.nextPageToken }),
    status.INVALID_ARGUMENT, { field: 'page_token', what: 'an asc token in desc order' });
  for (const bad of ['bm9wZQ==', '12', 'not base64!']) {
    await expectGrpcError(audit().ListAuditEvents({ pageToken: bad }), status.INVALID_ARGUMENT,
      { field: 'page_token', what: bad });
  }
});

test('start_time and end_time select a half-open range [start, end)', async () => {
  await someWrites(6);
  const asc = await all({ orderBy: 'time asc' });
  const start = asc[asc.length - 5].time;
  const end = asc[asc.length - 2].time;
  const inRange = (e) => timeUs(e.time) >= timeUs(start) && timeUs(e.time) < timeUs(end);
  const expected = asc.filter(inRange);
  assert.ok(expected.length >= 2, 'the range holds events');
  assert.ok(names(expected).includes(asc[asc.length - 5].name), 'start is included');
  assert.ok(!names(expected).includes(asc[asc.length - 2].name), 'end is excluded');

  assert.deepEqual(names(await all({ orderBy: 'time asc', startTime: start, endTime: end })), names(expected));
  assert.deepEqual(names(await all({ startTime: start, endTime: end }, 1)), names(expected).reverse(), 'desc, pages of 1');
  assert.deepEqual(names(await all({ orderBy: 'time asc', startTime: start })), names(asc.filter((e) => timeUs(e.time) >= timeUs(start))));
  assert.deepEqual(names(await all({ orderBy: 'time asc', endTime: end })), names(asc.filter((e) => timeUs(e.time) < timeUs(end))));
  assert.equal((await all({ startTime: start, endTime: start })).length, 0, 'an empty range');
});

test('bad order_by and a range that ends before it starts are INVALID_ARGUMENT', async () => {
  for (const orderBy of ['time', 'name desc', 'TIME DESC', 'time  asc', 'time desc, seq']) {
    await expectGrpcError(audit().ListAuditEvents({ orderBy }), status.INVALID_ARGUMENT,
      { field: 'order_by', what: orderBy });
  }
  await expectGrpcError(audit().ListAuditEvents({
    startTime: { seconds: '2000000000', nanos: 0 }, endTime: { seconds: '1999999999', nanos: 999999999 },
  }), status.INVALID_ARGUMENT, { field: 'end_time' });
  await expectGrpcError(audit().ListAuditEvents({ startTime: { seconds: '300000000000', nanos: 0 } }),
    status.INVALID_ARGUMENT, { field: 'start_time' });
  await expectGrpcError(audit().ListAuditEvents({ endTime: { seconds: '1', nanos: -1 } }),
    status.INVALID_ARGUMENT, { field: 'end_time' });
});

test('a certificate update records its serial, fingerprint and not_after before and after', async () => {
  const c = await createCert(p.rsa);
  const [created] = (await audit().ListAuditEvents({ resource: c.name })).auditEvents;
  const change = (e, field) => e.changes.find((x) => x.field === field);
  assert.deepEqual(change(created, 'serial_number'), { field: 'serial_number', before: '', after: p.rsa.serial });

  const u = await certs().UpdateCertificate({
    certificate: { name: c.name, etag: c.etag, certificateChainPem: p.rsaRenewed.cert },
    updateMask: { paths: ['certificate_chain_pem'] },
  });
  assert.notEqual(u.etag, c.etag);
  const [updated] = (await audit().ListAuditEvents({ resource: c.name })).auditEvents;
  assert.equal(updated.action, 'update');
  assert.equal(Number(updated.revision), Number(u.revision));
  assert.deepEqual(change(updated, 'serial_number'), { field: 'serial_number', before: p.rsa.serial, after: p.rsaRenewed.serial });
  assert.deepEqual(change(updated, 'sha256_fingerprint'),
    { field: 'sha256_fingerprint', before: p.rsa.fingerprint, after: p.rsaRenewed.fingerprint });
  const notAfter = change(updated, 'not_after');
  assert.equal(notAfter.before, rfc3339(p.rsa.notAfter));
  assert.equal(notAfter.after, rfc3339(p.rsaRenewed.notAfter));

  // A labels-only update changes none of them, and no change carries a key.
  await certs().UpdateCertificate({ certificate: { name: c.name, labels: { a: 'b' } }, updateMask: { paths: ['labels'] } });
  const [labelled] = (await audit().ListAuditEvents({ resource: c.name })).auditEvents;
  assert.deepEqual(labelled.changes, []);
  const text = JSON.stringify(await all());
  assert.doesNotMatch(text, /PRIVATE KEY/);
  assert.ok(!text.includes(p.rsa.key.split('\n')[1]), 'key material in the audit trail');
});

test('a context records the references it changed; a ring its key ids, never key bytes', async () => {
  const a = await createCert(p.rsa);
  const b = await createCert(p.ecdsa);
  const tc = await api().TlsContextService.CreateTlsContext({ tlsContextId: uid('ctx'), tlsContext: { certificates: [a.name] } });
  await api().TlsContextService.UpdateTlsContext({
    tlsContext: { name: tc.name, certificates: [b.name] }, updateMask: { paths: ['certificates'] },
  });
  const [ev] = (await audit().ListAuditEvents({ resource: tc.name })).auditEvents;
  assert.deepEqual(ev.changes, [{ field: 'certificates[0]', before: a.name, after: b.name }]);

  const tc2 = await api().TlsContextService.CreateTlsContext({ tlsContextId: uid('ctx'), tlsContext: { certificates: [a.name] } });
  const l = await api().ListenerService.CreateListener({
    listenerId: uid('lis'), listener: { address: '127.0.0.1:18443', defaultTlsContext: tc.name, upstream: '127.0.0.1:18080' },
  });
  const [made] = (await audit().ListAuditEvents({ resource: l.name })).auditEvents;
  assert.deepEqual(made.changes, [{ field: 'default_tls_context', before: '', after: tc.name }]);
  await api().ListenerService.UpdateListener({
    listener: { name: l.name, defaultTlsContext: tc2.name, sniRoutes: [{ hostname: 'api.example.com', tlsContext: tc.name }] },
    updateMask: { paths: ['default_tls_context', 'sni_routes'] },
  });
  const [moved] = (await audit().ListAuditEvents({ resource: l.name })).auditEvents;
  assert.deepEqual(moved.changes, [
    { field: 'default_tls_context', before: tc.name, after: tc2.name },
    { field: 'sni_routes[0].tls_context', before: '', after: tc.name },
  ]);

  const ring = await api().TicketKeyService.CreateTicketKeyRing({ ticketKeyRingId: uid('ring'), ticketKeyRing: {} });
  const rotated = await api().TicketKeyService.RotateTicketKeys({ name: ring.name });
  const [rot] = (await audit().ListAuditEvents({ resource: ring.name })).auditEvents;
  assert.equal(rot.action, 'rotate');
  const keys = rot.changes.find((x) => x.field === 'keys');
  assert.equal(keys.before, ring.keys.map((k) => k.keyName).join(','));
  assert.equal(keys.after, rotated.keys.map((k) => k.keyName).join(','));
  for (const id of keys.after.split(',')) assert.match(id, /^[0-9a-f]{32}$/, 'a key id, not key material');
});

test('an identical re-upload commits nothing: same etag and revision, no audit row', async () => {
  const c = await createCert(p.rsa);
  const trail = await all({ resource: c.name });
  const before = await all();
  const again = await certs().UpdateCertificate({
    certificate: { name: c.name, etag: c.etag, certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key },
  });
  assert.equal(again.etag, c.etag, 'etag');
  assert.equal(again.revision, c.revision, 'revision');
  assert.deepEqual(again.updateTime, c.updateTime, 'update_time');
  assert.deepEqual(await certs().GetCertificate({ name: c.name }), again);
  assert.deepEqual(names(await all({ resource: c.name })), names(trail), 'no audit row for the certificate');
  assert.deepEqual(names(await all()), names(before), 'no audit row at all');

  // The same chain with another key is not the same certificate (refused:
  // it does not match), and a stale etag is still refused.
  await expectGrpcError(certs().UpdateCertificate({
    certificate: { name: c.name, certificateChainPem: p.rsa.cert, privateKeyPem: p.otherRsaKey },
  }), status.INVALID_ARGUMENT);
  const moved = await certs().UpdateCertificate({ certificate: { name: c.name, labels: { x: 'y' } }, updateMask: { paths: ['labels'] } });
  await expectGrpcError(certs().UpdateCertificate({
    certificate: { name: c.name, etag: c.etag, certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key },
  }), status.FAILED_PRECONDITION);

  // Once more with the current etag: nothing again.
  const same = await certs().UpdateCertificate({
    certificate: { name: c.name, etag: moved.etag, labels: { x: 'y' } }, updateMask: { paths: ['labels'] },
  });
  assert.equal(same.etag, moved.etag);
  assert.equal(same.revision, moved.revision);
});
