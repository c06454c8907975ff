'use strict';
// Reads never queue behind writes. Another process (the sqlite3 shell)
// holds the database's write lock, so every write that reaches the store
// waits; while it is held:
//   * an authenticated read answers (authentication writes nothing on the
//     call path: a credential's last use is noted in memory);
//   * a write is validated before it waits: bad input and a change that
//     would break a TLS context that uses it are refused at once;
//   * writers cannot take every RPC thread: half of them run writes, the
//     writes beyond wait their turn without a thread, and health and reads
//     keep answering; a waiting write whose client gave up is never run.
// Then the lock is released and every waiting write commits, in turn.
//
// Each call made while the lock is held has a 5 s deadline: below the
// store's 10 s wait for another process's lock, so a call that waits for
// the lock fails here instead of answering once the wait runs out. The
// figures under load are bench/write_contention.js's, not this file's.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');
const { useServer } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const { status, statusName, expectGrpcError, uid } = require('./lib/util');

const THREADS = 4; // --threads: writes_max is half of them
const LOCKED_DEADLINE_MS = 5000;

const ctx = useServer({ before, after, beforeEach, afterEach }, { start: { extraArgs: ['--threads', String(THREADS)] } });

// Holds SQLite's write lock on the server's database from a sqlite3 shell
// (BEGIN IMMEDIATE) until release().
async function holdWriteLock(dataDir) {
  const proc = spawn('sqlite3', [path.join(dataDir, 'tlsplane.db')], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let errText = '';
  const exited = new Promise((resolve) => proc.on('exit', (code) => resolve(code)));
  proc.on('error', (e) => {
    errText += `cannot run sqlite3: ${e.message}`;
  });
  proc.stderr.on('data', (d) => {
    errText += d;
  });
  const locked = new Promise((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      out += d;
      if (out.includes('locked')) resolve();
    });
    exited.then((code) => reject(new Error(`sqlite3 exited (${code}) before taking the lock: ${errText}`)));
  });
  proc.stdin.write(".timeout 10000\nBEGIN IMMEDIATE;\nSELECT 'locked';\n");
  await locked;
  return {
    async release() {
      proc.stdin.end('ROLLBACK;\n.quit\n');
      const code = await exited;
      assert.equal(code, 0, `sqlite3: ${errText}`);
    },
  };
}

// Runs fn while the lock is held, then releases it whatever fn did.
async function whileLocked(fn) {
  const lock = await holdWriteLock(ctx.server.dataDir);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

const locked = { deadlineMs: LOCKED_DEADLINE_MS };

test('an authenticated read answers while another process holds the write lock', async () => {
  // A credential that was never used: its first use is the one noted.
  const t = await ctx.api.TokenService.CreateToken({ tokenId: uid('viewer'), token: { role: 'VIEWER' } });
  const viewer = await connect(ctx.server.address, { token: t.secret });
  try {
    await whileLocked(async () => {
      const r = await viewer.api.CipherPolicyService.GetCipherPolicy({ name: 'cipherPolicies/default' }, locked);
      assert.equal(r.name, 'cipherPolicies/default');
      // The use shows at once, before it is written to the store.
      const got = await ctx.api.TokenService.GetToken({ name: t.token.name }, locked);
      assert.ok(got.lastUsedTime, 'the token shows its last use');
    });
  } finally {
    viewer.close();
  }
});

test('a write is validated before it waits for the write lock', async () => {
  const p = pki();
  const certs = ctx.api.CertificateService;
  const rsa = await certs.CreateCertificate({ certificateId: uid('rsa'), certificate: { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key } });
  const ec = await certs.CreateCertificate({ certificateId: uid('ec'), certificate: { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key } });
  const tc = await ctx.api.TlsContextService.CreateTlsContext({ tlsContextId: uid('both'), tlsContext: { certificates: [rsa.name, ec.name] } });
  await whileLocked(async () => {
    await expectGrpcError(certs.CreateCertificate({
      certificateId: uid('mismatch'), certificate: { certificateChainPem: p.rsa.cert, privateKeyPem: p.ecdsa.key },
    }, locked), status.INVALID_ARGUMENT, { field: 'certificate.private_key_pem' });
    // An ECDSA certificate in place of the RSA one: the context would hold
    // two ECDSA certificates and no longer load.
    await expectGrpcError(certs.UpdateCertificate({
      certificate: { name: rsa.name, certificateChainPem: p.ecdsa2.cert, privateKeyPem: p.ecdsa2.key },
      updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
    }, locked), status.FAILED_PRECONDITION, { field: 'certificate', includes: [tc.name, 'would no longer load'] });
  });
  assert.deepEqual(await certs.GetCertificate({ name: rsa.name }), rsa);
});

test('writes waiting for the store leave threads for health and reads', async () => {
  const policies = ctx.api.CipherPolicyService;
  const health = ctx.api['grpc.health.v1.Health'];
  const create = (id, deadlineMs) => policies.CreateCipherPolicy({
    cipherPolicyId: id, cipherPolicy: { ciphersuites: 'TLS_AES_128_GCM_SHA256', minVersion: 'TLS_1_3' },
  }, { deadlineMs });
  const n = 3 * THREADS;
  const ids = Array.from({ length: n }, () => uid('busy'));
  const answers = new Array(n).fill(null);
  const gaveUp = uid('gave-up');
  let writes;
  await whileLocked(async () => {
    writes = ids.map((id, i) => create(id, 30000).then(
      (r) => {
        answers[i] = { ok: r };
      },
      (e) => {
        answers[i] = { code: e.code, details: e.details };
      },
    ));
    // Half the threads take writes, which wait for the lock; the writes
    // beyond them wait without a thread: health and reads answer.
    for (let i = 0; i < 5; i++) {
      const h = await health.Check({ service: '' }, locked);
      assert.equal(h.status, 'SERVING');
      const r = await policies.GetCipherPolicy({ name: 'cipherPolicies/default' }, locked);
      assert.equal(r.name, 'cipherPolicies/default');
    }
    // A write behind all of them whose client gives up after 1 s.
    await expectGrpcError(create(gaveUp, 1000), status.DEADLINE_EXCEEDED);
    assert.deepEqual(answers.filter(Boolean), [], 'a write was answered while the lock was held');
  });
  // Released: every waiting write commits; the one whose client gave up
  // was never run.
  await Promise.all(writes);
  for (let i = 0; i < n; i++) {
    const name = `cipherPolicies/${ids[i]}`;
    assert.ok(answers[i].ok, `${name}: ${statusName(answers[i].code)} ${answers[i].details}`);
    assert.equal(answers[i].ok.name, name);
    assert.equal((await policies.GetCipherPolicy({ name })).name, name);
  }
  await expectGrpcError(policies.GetCipherPolicy({ name: `cipherPolicies/${gaveUp}` }), status.NOT_FOUND);
});
