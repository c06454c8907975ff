'use strict';
// New DH parameters through the API: CipherPolicyService.GenerateDhParameters
// answers at once (dh_generation RUNNING), a thread of the server makes a
// safe prime, writes it into the policy as one revision (actor "system")
// and marks the generation DONE; the parameters are real (openssl checks
// them) and the policy serves DHE with them. Refusals: bad bits, built-in
// policies, a second generation while one runs, a stale etag, a viewer.
// The server stopped mid-way: the next start marks the generation FAILED.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const { useServer, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { status, expectGrpcError, uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');

const ctx = useServer({ before, after }, { start: { tls: true } });
const api = () => ctx.api;
const DHE = 'DHE-RSA-AES128-GCM-SHA256';

async function policy(extra = {}) {
  const id = uid('dh');
  return api().CipherPolicyService.CreateCipherPolicy({
    cipherPolicyId: id, cipherPolicy: { ciphers: `${DHE}:ECDHE-RSA-AES128-GCM-SHA256`, minVersion: 'TLS_1_2', maxVersion: 'TLS_1_2', ...extra },
  });
}

test('dhparam_group: RFC 7919 parameters at once', async () => {
  const p = await policy({ dhparamGroup: 'ffdhe4096' });
  assert.equal(p.dhparamGroup, 'ffdhe4096');
  assert.equal(p.dhparamBits, 4096);
  await expectGrpcError(policy({ dhparamGroup: 'ffdhe1536' }), status.INVALID_ARGUMENT, { field: 'cipher_policy.dhparam_group' });
  const got = await api().CipherPolicyService.GetCipherPolicy({ name: p.name });
  await expectGrpcError(policy({ dhparamGroup: 'ffdhe2048', dhparamPem: '-----BEGIN DH PARAMETERS-----\n' }), status.INVALID_ARGUMENT, { field: 'cipher_policy.dhparam_group' });
  assert.equal(got.dhparamBits, 4096);
});

test('GenerateDhParameters: answers at once, then the policy gets new 2048-bit parameters as one revision', async () => {
  const p = await policy();
  const started = Date.now();
  const r = await api().CipherPolicyService.GenerateDhParameters({ name: p.name, bits: 2048, etag: p.etag });
  assert.equal(r.dhGeneration.state, 'RUNNING');
  assert.equal(r.dhGeneration.bits, 2048);
  assert.equal(r.dhGeneration.actor, 'token:admin');
  assert.equal(r.dhparamPem, '', 'nothing yet');
  // A second one while it runs is refused, and so is a stale etag.
  await expectGrpcError(api().CipherPolicyService.GenerateDhParameters({ name: p.name }), status.FAILED_PRECONDITION, { message: /being generated already/ });
  await expectGrpcError(api().CipherPolicyService.GenerateDhParameters({ name: p.name, etag: p.etag }), status.FAILED_PRECONDITION, { message: /etag mismatch/ });
  // Other writes to the policy go on meanwhile, and keep the record.
  const relabelled = await api().CipherPolicyService.UpdateCipherPolicy({ cipherPolicy: { name: p.name, labels: { team: 'edge' } }, updateMask: { paths: ['labels'] } });
  assert.equal(relabelled.dhGeneration.state, 'RUNNING');

  const done = await waitFor('the generation done', async () => {
    const g = await api().CipherPolicyService.GetCipherPolicy({ name: p.name });
    if (g.dhGeneration.state === 'FAILED') throw new Error(`failed: ${g.dhGeneration.error}`);
    return g.dhGeneration.state === 'DONE' && g;
  }, { timeoutMs: 240000, intervalMs: 200 });
  assert.equal(done.dhparamBits, 2048);
  assert.match(done.dhparamPem, /^-----BEGIN DH PARAMETERS-----\n/);
  assert.ok(Number(done.dhGeneration.endTime.seconds) >= Number(done.dhGeneration.startTime.seconds), JSON.stringify(done.dhGeneration));
  assert.deepEqual(done.labels, { team: 'edge' });
  assert.ok(Date.now() - started < 240000);
  // Real parameters: OpenSSL's own check passes.
  const check = spawnSync('openssl', ['dhparam', '-check', '-noout'], { input: done.dhparamPem, encoding: 'utf8' });
  assert.equal(check.status, 0, check.stderr);
  assert.match(check.stdout + check.stderr, /DH parameters appear to be ok/);
  // The result was written by the server itself, after the request.
  const ev = (await api().AuditService.ListAuditEvents({ pageSize: 5 })).auditEvents.find((e) => e.resource === p.name && e.actor === 'system');
  assert.ok(ev, 'an audit event by system for the policy');
});

test('GenerateDhParameters refuses what it cannot do, and a viewer', async () => {
  const p = await policy();
  for (const bits of [1024, 1536, 8192, -1]) {
    await expectGrpcError(api().CipherPolicyService.GenerateDhParameters({ name: p.name, bits }), status.INVALID_ARGUMENT, { field: 'bits' });
  }
  await expectGrpcError(api().CipherPolicyService.GenerateDhParameters({ name: 'cipherPolicies/default' }), status.FAILED_PRECONDITION, { message: /built in/ });
  await expectGrpcError(api().CipherPolicyService.GenerateDhParameters({ name: 'cipherPolicies/none' }), status.NOT_FOUND);
  await expectGrpcError(api().CipherPolicyService.GenerateDhParameters({ name: 'bad name' }), status.INVALID_ARGUMENT, { field: 'name' });
  const v = await api().TokenService.CreateToken({ tokenId: uid('v'), token: { role: 'VIEWER' } });
  noteSecret(v.secret);
  const viewer = await connect(ctx.server.address, { tls: { ca: ctx.server.ca }, token: v.secret });
  try {
    await expectGrpcError(viewer.api.CipherPolicyService.GenerateDhParameters({ name: p.name }), status.PERMISSION_DENIED);
  } finally {
    viewer.close();
  }
  const after = await api().CipherPolicyService.GetCipherPolicy({ name: p.name });
  assert.equal(after.etag, p.etag, 'nothing was written');
});

test('a server stopped mid-generation marks it FAILED on its next start', async () => {
  const p = await policy();
  await api().CipherPolicyService.GenerateDhParameters({ name: p.name, bits: 4096 });
  await ctx.restart();
  const g = await api().CipherPolicyService.GetCipherPolicy({ name: p.name });
  // A 4096-bit prime takes longer than the restart, almost always; if it
  // was done first, it is DONE.
  assert.ok(['FAILED', 'DONE'].includes(g.dhGeneration.state), JSON.stringify(g.dhGeneration));
  if (g.dhGeneration.state === 'FAILED') assert.match(g.dhGeneration.error, /stopped before the generation finished/);
});
