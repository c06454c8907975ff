'use strict';
// Nothing acknowledged is ever lost: the server is killed with SIGKILL (no
// chance to flush or close anything) while writes are in flight, and every
// write that was answered OK before the kill is there after a restart, with
// the revision counting exactly the acknowledged writes; no half write.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { Server } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { waitFor } = require('./lib/wait');

let server;
let conn;
after(async () => {
  if (conn) conn.close();
  if (server && server.running) await server.stopClean();
});

async function listAllPolicies(api) {
  const out = [];
  let pageToken = '';
  do {
    const r = await api.CipherPolicyService.ListCipherPolicies({ pageSize: 1000, pageToken });
    out.push(...r.cipherPolicies);
    pageToken = r.nextPageToken;
  } while (pageToken);
  return out;
}

test('SIGKILL during a stream of writes loses no acknowledged write', async () => {
  server = await Server.start();
  conn = await connect(server.address, server.connectOptions());
  const api = conn.api;
  const before = await listAllPolicies(api);
  // The last committed revision (the first start also wrote the admin's
  // credentials after the built-in policies).
  const trail = await api.AuditService.ListAuditEvents({ pageSize: 1000 });
  const revBefore = Math.max(...trail.auditEvents.map((e) => Number(e.revision)));

  // Eight writers create policies as fast as they can; the kill lands in the
  // middle of the stream.
  const acked = [];
  let stop = false;
  const writer = async (w) => {
    for (let i = 0; !stop; i++) {
      try {
        const r = await api.CipherPolicyService.CreateCipherPolicy({
          cipherPolicyId: `w${w}-${i}`,
          cipherPolicy: { ciphersuites: 'TLS_AES_128_GCM_SHA256', minVersion: 'TLS_1_3' },
        });
        acked.push(r);
      } catch {
        return; // the server is gone (writers beyond those it runs at once wait their turn)
      }
    }
  };
  const writers = Array.from({ length: 8 }, (_, w) => writer(w));
  try {
    await waitFor('40 acknowledged writes', () => acked.length >= 40, { timeoutMs: 60000, intervalMs: 5 });
  } catch (e) {
    stop = true;
    await Promise.all(writers);
    throw e;
  }
  server.stopRequested = true;
  server.proc.kill('SIGKILL');
  stop = true;
  await Promise.all(writers);
  await server.exited;
  conn.close();
  assert.ok(acked.length >= 40, `only ${acked.length} writes were acknowledged`);

  await server._spawn(); // same data directory
  conn = await connect(server.address, server.connectOptions());
  const afterKill = await listAllPolicies(conn.api);
  const names = new Set(afterKill.map((p) => p.name));
  for (const r of acked) assert.ok(names.has(r.name), `${r.name} was acknowledged but is gone`);
  // No half write: every policy that exists is whole and has its revision;
  // revisions are consecutive, one per committed create.
  const created = afterKill.filter((p) => !before.some((b) => b.name === p.name));
  const revisions = created.map((p) => Number(p.revision)).sort((a, b) => a - b);
  revisions.forEach((rev, i) => assert.equal(rev, revBefore + 1 + i, 'revisions are not consecutive'));
  for (const p of created) assert.equal(p.ciphersuites, 'TLS_AES_128_GCM_SHA256');
  // At most the writes in flight at the kill committed without their answer.
  assert.ok(created.length - acked.length <= 8, `${created.length} created, ${acked.length} acked`);
  const events = await conn.api.AuditService.ListAuditEvents({ pageSize: 1000, sinceRevision: String(revBefore) });
  assert.equal(events.auditEvents.length, created.length, 'one audit event per committed write');
});
