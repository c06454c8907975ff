'use strict';
// Assertions and helpers shared by the integration tests.

const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const { status } = grpc;
const { tool } = require('./tools');

const STATUS_NAMES = Object.fromEntries(Object.entries(status).map(([k, v]) => [v, k]));

function statusName(code) {
  return STATUS_NAMES[code] || String(code);
}

// google.protobuf.Timestamp <-> Date.
function ts(date) {
  const ms = date instanceof Date ? date.getTime() : Number(date);
  const seconds = Math.floor(ms / 1000);
  return { seconds: String(seconds), nanos: (ms - seconds * 1000) * 1e6 };
}

function toDate(t) {
  assert.ok(t, 'expected a Timestamp, got null');
  return new Date(Number(t.seconds) * 1000 + Math.floor((t.nanos || 0) / 1e6));
}

function seconds(t) {
  return t ? Number(t.seconds) : null;
}

// Awaits a call that must fail with `code`. `field`: the field the message
// must start with (docs/api.md: "a message that starts with the field"); a
// string, a RegExp, or an array of alternatives (where the contract leaves
// which field open, e.g. passphrase vs private_key_pem). `includes`:
// substrings (case-insensitive) the message must contain. Resolves with the
// error.
async function expectGrpcError(promise, code, { field, includes = [], what = '' } = {}) {
  let res;
  try {
    res = await promise;
  } catch (err) {
    if (typeof err.code !== 'number') throw err;
    const details = err.details || '';
    assert.equal(
      statusName(err.code),
      statusName(code),
      `${what ? what + ': ' : ''}expected ${statusName(code)}, got ${statusName(err.code)}: ${details}`,
    );
    if (field !== undefined) {
      const alts = Array.isArray(field) ? field : [field];
      const ok = alts.some((f) => (f instanceof RegExp ? f.test(details) : details.startsWith(f)));
      assert.ok(ok, `${what ? what + ': ' : ''}error message should start with ${alts.map(String).join(' or ')}; got: ${details}`);
    }
    for (const inc of [].concat(includes)) {
      const ok = inc instanceof RegExp ? inc.test(details) : details.toLowerCase().includes(inc.toLowerCase());
      assert.ok(ok, `${what ? what + ': ' : ''}error message should mention ${inc}; got: ${details}`);
    }
    return err;
  }
  assert.fail(`${what ? what + ': ' : ''}expected ${statusName(code)}, but the call succeeded: ${JSON.stringify(res).slice(0, 500)}`);
}

// Every item of a List method, following next_page_token.
async function listAll(svc, method, itemsKey, req = {}, { pageSize = 1000 } = {}) {
  const out = [];
  let pageToken = '';
  for (let i = 0; i < 10000; i++) {
    const res = await svc[method]({ ...req, pageSize, pageToken });
    out.push(...(res[itemsKey] || []));
    if (!res.nextPageToken) return out;
    pageToken = res.nextPageToken;
  }
  throw new Error(`${method}: pagination does not end`);
}

const COLLECTIONS = [
  ['CertificateService', 'ListCertificates', 'certificates'],
  ['TrustBundleService', 'ListTrustBundles', 'trustBundles'],
  ['RevocationListService', 'ListRevocationLists', 'revocationLists'],
  ['CipherPolicyService', 'ListCipherPolicies', 'cipherPolicies'],
  ['TlsContextService', 'ListTlsContexts', 'tlsContexts'],
  ['ListenerService', 'ListListeners', 'listeners'],
  ['TicketKeyService', 'ListTicketKeyRings', 'ticketKeyRings'],
];

// Everything a client can read: every resource of every kind, and the audit
// trail. A list that fails is recorded as its status, so that one missing
// method does not hide whether the others changed.
async function captureWorld(api) {
  const world = {};
  for (const [svc, method, key] of [...COLLECTIONS, ['AuditService', 'ListAuditEvents', 'auditEvents']]) {
    try {
      world[key] = await listAll(api[svc], method, key);
    } catch (err) {
      if (typeof err.code !== 'number') throw err;
      world[key] = `error ${statusName(err.code)}`;
    }
  }
  return world;
}

// The highest revision the audit trail shows (0 when empty).
function lastRevision(world) {
  if (!Array.isArray(world.auditEvents)) return null;
  return world.auditEvents.reduce((m, e) => Math.max(m, Number(e.revision)), 0);
}

// Asserts that nothing a client can read changed since `before`.
async function assertUnchanged(api, before, what = 'a refused call') {
  const after = await captureWorld(api);
  for (const key of Object.keys(before)) {
    assert.deepEqual(after[key], before[key], `${what} changed ${key}`);
  }
}

// Runs a call that must be refused and asserts that it changed nothing.
async function expectRefused(api, promiseFn, code, opts = {}) {
  const before = await captureWorld(api);
  const err = await expectGrpcError(promiseFn(), code, opts);
  await assertUnchanged(api, before, opts.what || 'a refused call');
  return err;
}

let idCounter = 0;
// A valid, unique resource id ("t-<prefix>-<n>").
function uid(prefix = 'r') {
  idCounter += 1;
  return `${prefix}-${process.pid.toString(36)}-${idCounter}`;
}

// A fresh EC P-256 key and a certificate signing request for it (PEM), as
// an agent makes them before it enrolls. The subject is the requester's
// wish only: the control plane sets its own.
function makeCsr(cn = 'ignored-by-the-server') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-csr-'));
  try {
    execFileSync(tool('openssl'), [
      'req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', 'key.pem', '-out', 'csr.pem', '-subj', `/CN=${cn}`,
    ], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    return { key: fs.readFileSync(path.join(dir, 'key.pem'), 'utf8'), csr: fs.readFileSync(path.join(dir, 'csr.pem'), 'utf8') };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// One unary call on a fresh client with raw bytes (an empty message by
// default): resolves with { code, details } (code 0 on success). For calls
// whose credentials are the point: channel credentials and metadata given
// as they are, nothing added.
function rawUnary(address, credentials, method, { metadata = new grpc.Metadata(), body = Buffer.alloc(0), deadlineMs = 10000 } = {}) {
  const client = new grpc.Client(address, credentials);
  return new Promise((resolve) => {
    client.makeUnaryRequest(method, (x) => x, (x) => x, body, metadata, { deadline: Date.now() + deadlineMs }, (err) => {
      client.close();
      resolve(err ? { code: err.code, details: err.details } : { code: status.OK, details: '' });
    });
  });
}

// The random part of a token "tlsp_<id>_<43 characters>". The id has no
// "_" but the random part is base64url and may: split('_').pop() would
// often keep only a few characters of it (which then turn up anywhere).
function tokenSecretPart(token) {
  const m = /^tlsp_[a-z0-9-]+_([A-Za-z0-9_-]{43})$/.exec(token);
  assert.ok(m, `not a tlsplane token: ${String(token).length} characters`);
  return m[1];
}

// Metadata carrying "authorization: Bearer <token>".
function bearer(token) {
  const md = new grpc.Metadata();
  if (token) md.set('authorization', `Bearer ${token}`);
  return md;
}

module.exports = {
  tokenSecretPart,
  makeCsr,
  rawUnary,
  bearer,
  status,
  statusName,
  ts,
  toDate,
  seconds,
  expectGrpcError,
  expectRefused,
  listAll,
  captureWorld,
  assertUnchanged,
  lastRevision,
  uid,
  COLLECTIONS,
};
