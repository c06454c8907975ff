'use strict';
// Secrets at rest: what someone holding only the SQLite file (or the
// server's log) learns of the private keys, ticket keys and tokens uploaded
// — nothing — while agents still receive them; and the master key that
// seals them: kept outside the database, checked at start, rotated by a
// command (crash-safe: an interrupted rotation is finished by the next
// start), after which the old key opens nothing.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { useServer, Server, serverBinary, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { FakeAgent } = require('./lib/fakeagent');
const { pki } = require('./lib/pki');
const { uid, tokenSecretPart } = require('./lib/util');

let p;
const uploaded = { needles: [] }; // { what, bytes } that must never be at rest or in a log
const ctx = useServer({ before, after, beforeEach, afterEach }, {
  start: { tls: true }, // agents stream with their client certificates
  setup: async () => {
    p = pki();
  },
});
const api = () => ctx.api;
const dataDir = () => ctx.server.dataDir;

// Distinctive pieces of a secret as they could sit in a file: raw bytes,
// and their hex and base64 forms.
function needle(what, bytes) {
  uploaded.needles.push({ what, bytes: Buffer.from(bytes) });
  uploaded.needles.push({ what: `${what} (hex)`, bytes: Buffer.from(Buffer.from(bytes).toString('hex')) });
  uploaded.needles.push({ what: `${what} (base64)`, bytes: Buffer.from(Buffer.from(bytes).toString('base64').slice(0, 40)) });
  noteSecret(Buffer.from(bytes).toString('hex'));
  noteSecret(Buffer.from(bytes).toString('base64').slice(0, 40));
}

// Every line of a PEM body (base64, as uploaded) is a needle of its own.
function pemNeedles(what, pem) {
  const lines = pem.split('\n').filter((l) => /^[A-Za-z0-9+/=]{40,}$/.test(l));
  assert.ok(lines.length > 0, `${what}: no base64 lines`);
  for (const l of lines) {
    uploaded.needles.push({ what: `${what} PEM line`, bytes: Buffer.from(l) });
    noteSecret(l);
  }
}

// The database files as they are on disk right now.
function dbFiles() {
  return ['tlsplane.db', 'tlsplane.db-wal', 'tlsplane.db-shm']
    .map((f) => path.join(dataDir(), f))
    .filter((f) => fs.existsSync(f))
    .map((f) => ({ file: path.basename(f), bytes: fs.readFileSync(f) }));
}

function assertNoSecretAtRest(when) {
  const files = dbFiles();
  assert.ok(files.length > 0);
  for (const { file, bytes } of files) {
    for (const n of uploaded.needles) {
      assert.equal(bytes.indexOf(n.bytes), -1, `${when}: ${file} contains ${n.what}`);
    }
  }
}

let cert;
let ring;
let ticketKeys;
let tokenSecret;

test('uploaded private keys, ticket keys and tokens are nowhere in the SQLite file', async () => {
  // A private key (SEC1 as uploaded; the server keeps PKCS#8): every form
  // of it is a needle, the raw private scalar too.
  const keyObj = crypto.createPrivateKey(p.ecdsa.key);
  pemNeedles('uploaded key', p.ecdsa.key);
  pemNeedles('PKCS#8 key', keyObj.export({ type: 'pkcs8', format: 'pem' }));
  needle('private scalar', Buffer.from(keyObj.export({ format: 'jwk' }).d, 'base64url'));
  // An RSA key too.
  const rsaObj = crypto.createPrivateKey(p.rsa.key);
  pemNeedles('RSA PKCS#8 key', rsaObj.export({ type: 'pkcs8', format: 'pem' }));
  needle('RSA prime p', Buffer.from(rsaObj.export({ format: 'jwk' }).p, 'base64url'));

  cert = await api().CertificateService.CreateCertificate({
    certificateId: uid('web'), certificate: { certificateChainPem: p.ecdsa.chain || p.ecdsa.cert, privateKeyPem: p.ecdsa.key },
  });
  // Uploaded encrypted, with its passphrase: neither is kept.
  needle('passphrase', Buffer.from(p.passphrase));
  await api().CertificateService.CreateCertificate({
    certificateId: uid('rsa'),
    certificate: { certificateChainPem: p.rsa.chain || p.rsa.cert, privateKeyPem: p.rsa.encryptedPkcs8Key, passphrase: p.passphrase },
  });
  // setTicketKeys: the HMAC and AES halves are secret (the 16-byte name
  // travels in clear in every ticket and is shown by reads).
  ticketKeys = [crypto.randomBytes(48), crypto.randomBytes(48)];
  for (const k of ticketKeys) needle('ticket key HMAC+AES', k.subarray(16));
  ring = await api().TicketKeyService.CreateTicketKeyRing({ ticketKeyRingId: uid('ring'), ticketKeyRing: {} });
  ring = await api().TicketKeyService.SetTicketKeys({ name: ring.name, keys: ticketKeys });
  // A token: the secret part.
  const t = await api().TokenService.CreateToken({ tokenId: uid('ci'), token: { role: 'OPERATOR' } });
  tokenSecret = t.secret;
  noteSecret(t.secret);
  needle('token secret', Buffer.from(tokenSecretPart(t.secret)));
  needle('admin token secret', Buffer.from(tokenSecretPart(ctx.server.adminToken)));

  // What is public is stored in clear: the scan would find a secret.
  const dbText = Buffer.concat(dbFiles().map((f) => f.bytes));
  const certLine = (p.ecdsa.cert.split('\n').filter((l) => l.length === 64))[1];
  assert.notEqual(dbText.indexOf(certLine), -1, 'the scan sees the (public) certificate');
  assertNoSecretAtRest('while running');
});

test('agents still receive the keys, decrypted', async () => {
  const ctxName = uid('ctx');
  await api().TlsContextService.CreateTlsContext({ tlsContextId: ctxName, tlsContext: { certificates: [cert.name] } });
  await api().ListenerService.CreateListener({
    listenerId: uid('l'),
    listener: { address: '127.0.0.1:18443', defaultTlsContext: `tlsContexts/${ctxName}`, upstream: '127.0.0.1:18080', ticketKeyRing: ring.name },
  });
  const agent = await FakeAgent.enroll(ctx, uid('a'));
  const snap = await agent.next(0);
  agent.close();
  const rl = snap.listeners[0];
  const key = rl.tlsContexts[`tlsContexts/${ctxName}`].certificates[0].privateKeyPem;
  assert.equal(
    crypto.createPrivateKey(key).export({ format: 'jwk' }).d,
    crypto.createPrivateKey(p.ecdsa.key).export({ format: 'jwk' }).d,
  );
  assert.deepEqual(rl.ticketKeys.map((k) => k.key.toString('hex')), ticketKeys.map((k) => k.toString('hex')));
});

function runTool(args, env = {}) {
  return spawnSync(serverBinary(), args, { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 30000 });
}

function masterKey() {
  return fs.readFileSync(path.join(dataDir(), 'master.key'), 'utf8').trim();
}

test('after a clean stop the file still holds no secret; the log never held one', async () => {
  ctx.conn.close();
  ctx.conn = null;
  await ctx.server.stopClean(); // also checks the log for every registered secret
  assertNoSecretAtRest('after stop');
  for (const n of uploaded.needles) {
    assert.equal(ctx.server.log().indexOf(n.bytes.toString()), -1, `the log contains ${n.what}`);
  }
});

test('rotate-master-key re-seals everything; the old key opens nothing', async () => {
  const oldKey = masterKey();
  // Refused while the server runs: the data directory is locked.
  await ctx.server._spawn();
  let r = runTool(['rotate-master-key', '--data-dir', dataDir()]);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /in use/);
  await ctx.server.stopClean();

  r = runTool(['rotate-master-key', '--data-dir', dataDir()]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /master key rotated: \d+ secrets re-sealed under key [0-9a-f]{16}/);
  assert.ok(!r.stdout.includes(masterKey()) && !r.stderr.includes(masterKey()), 'the key is not printed');
  const newKey = masterKey();
  assert.notEqual(newKey, oldKey);
  assert.equal(fs.existsSync(path.join(dataDir(), 'master.key.new')), false);
  assert.equal(fs.statSync(path.join(dataDir(), 'master.key')).mode & 0o777, 0o600);
  assertNoSecretAtRest('after rotation');

  // The old key opens nothing: a server given it refuses to start.
  r = runTool(['--data-dir', dataDir(), '--listen', '127.0.0.1:0', '--plaintext'], { TLSPLANE_MASTER_KEY: oldKey });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /sealed with master key [0-9a-f]{16}, not with the key given/);

  // The new one opens everything.
  await ctx.revive();
  const got = await api().CertificateService.GetCertificate({ name: cert.name });
  assert.equal(got.name, cert.name);
  const trail = (await api().AuditService.ListAuditEvents({ resource: 'masterKey' })).auditEvents;
  assert.equal(trail.length, 1);
  assert.equal(trail[0].action, 'rotate_master_key');
  const c = await connect(ctx.server.address, ctx.server.connectOptions({ token: tokenSecret }));
  await c.api.CipherPolicyService.ListCipherPolicies({}); // the token hash unseals
  c.close();
});

test('an interrupted rotation is finished by the next start', async () => {
  const before = masterKey();
  ctx.conn.close();
  ctx.conn = null;
  await ctx.server.stopClean();
  // As if rotate-master-key had written master.key.new and then died.
  const next = crypto.randomBytes(32).toString('base64');
  fs.writeFileSync(path.join(dataDir(), 'master.key.new'), `${next}\n`, { mode: 0o600 });
  await ctx.revive();
  assert.match(ctx.server.log(), /finishing an interrupted master-key rotation/);
  assert.equal(masterKey(), next);
  assert.notEqual(masterKey(), before);
  assert.equal(fs.existsSync(path.join(dataDir(), 'master.key.new')), false);
  const got = await api().CertificateService.GetCertificate({ name: cert.name });
  assert.equal(got.name, cert.name);
});

test('the master key file must be private, and must be the right key', async () => {
  ctx.conn.close();
  ctx.conn = null;
  await ctx.server.stopClean();
  const file = path.join(dataDir(), 'master.key');
  fs.chmodSync(file, 0o644);
  let r = runTool(['--data-dir', dataDir(), '--listen', '127.0.0.1:0', '--plaintext']);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /master\.key: mode 644; .*readable by its owner only/);
  fs.chmodSync(file, 0o600);
  // Without master.key the server would make a new key, which does not
  // open this database: refused, and nothing written.
  const saved = fs.readFileSync(file);
  fs.unlinkSync(file);
  r = runTool(['--data-dir', dataDir(), '--listen', '127.0.0.1:0', '--plaintext']);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /master\.key is missing/);
  assert.equal(fs.existsSync(file), false);
  fs.writeFileSync(file, saved, { mode: 0o600 });
  await ctx.revive();
});

test('the master key may come from TLSPLANE_MASTER_KEY instead of a file', async () => {
  const key = crypto.randomBytes(32).toString('base64');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-env-key-'));
  try {
    const s = await Server.start({ dataDir: dir, env: { TLSPLANE_MASTER_KEY: key } });
    const c = await connect(s.address, s.connectOptions());
    await c.api.CertificateService.CreateCertificate({
      certificateId: 'k', certificate: { certificateChainPem: p.ecdsa.chain || p.ecdsa.cert, privateKeyPem: p.ecdsa.key },
    });
    c.close();
    await s.stopClean();
    assert.equal(fs.existsSync(path.join(dir, 'master.key')), false, 'no master.key when the key comes from the environment');
    // Rotation with the key outside: the new one comes from the environment too.
    const next = crypto.randomBytes(32).toString('base64');
    let r = runTool(['rotate-master-key', '--data-dir', dir], { TLSPLANE_MASTER_KEY: key });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /TLSPLANE_NEW_MASTER_KEY/);
    r = runTool(['rotate-master-key', '--data-dir', dir], { TLSPLANE_MASTER_KEY: key, TLSPLANE_NEW_MASTER_KEY: next });
    assert.equal(r.status, 0, r.stderr);
    r = runTool(['--data-dir', dir, '--listen', '127.0.0.1:0', '--plaintext'], { TLSPLANE_MASTER_KEY: key });
    assert.notEqual(r.status, 0, 'the old key no longer opens the store');
    const s2 = await Server.start({ dataDir: dir, env: { TLSPLANE_MASTER_KEY: next } });
    const c2 = await connect(s2.address, s2.connectOptions());
    const got = await c2.api.CertificateService.GetCertificate({ name: 'certificates/k' });
    assert.equal(got.name, 'certificates/k');
    c2.close();
    await s2.stopClean();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
