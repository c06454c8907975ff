'use strict';
// The data directory as an operator (or a broken disk) leaves it:
//   * initialised (ca.pem is there) with its database truncated, deleted
//     or replaced by an empty one: the server refuses to start, says so
//     and how to recover, and creates nothing;
//   * `tlsplane-server init --force`: a new store, the CA and the master
//     key kept, new admin credentials that work (the old ones do not);
//   * `tlsplane-server backup DEST` while the server runs and writes go
//     on; the directory wiped; restored from the backup and the master key
//     kept apart: the resources, their keys and the admin token work;
//   * modes: a 0777 directory and a 0666 database, WAL and SHM are
//     narrowed to 0700 / 0600 at start, and the log says so; a secret in
//     the clear readable by others (admin.token) is refused.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync, spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { Server, serverBinary, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const procs = require('./lib/procs');
const { status, expectGrpcError, uid } = require('./lib/util');

const live = [];
after(async () => {
  for (const { conn, srv } of live) {
    if (conn) conn.close();
    if (srv.running) await srv.stopClean();
  }
});

// A server on a fresh data dir with one certificate (and its key) in it.
async function started(dataDir) {
  const srv = await Server.start(dataDir ? { dataDir } : {});
  const conn = await connect(srv.address, srv.connectOptions());
  const entry = { srv, conn };
  live.push(entry);
  return entry;
}

async function stop(entry) {
  entry.conn.close();
  entry.conn = null;
  await entry.srv.stopClean();
}

// Runs tlsplane-server with args to its end (not a server that serves).
function tool(args, env = {}) {
  const r = spawnSync(serverBinary(), args, { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 60000 });
  if (r.error) throw r.error;
  return r;
}

// A server start that must be refused: exit status 1, and its output.
function refusedStart(dataDir) {
  const r = tool(['--data-dir', dataDir, '--listen', '127.0.0.1:0', '--plaintext']);
  assert.equal(r.status, 1, `the server started (or died otherwise): ${r.stdout}${r.stderr}`);
  return r.stderr;
}

const file = (dir, name) => path.join(dir, name);
const mode = (p) => fs.statSync(p).mode & 0o777;

function assertLostStore(text, dir, what) {
  assert.match(text, new RegExp(`data directory ${dir} was initialised \\(ca\\.pem is there\\) but its database tlsplane\\.db ${what}`));
  assert.match(text, /Restore tlsplane\.db from a backup/);
  assert.match(text, new RegExp(`tlsplane-server init --force --data-dir ${dir}`));
}

test('a truncated, deleted or empty database under an initialised data directory: refused, nothing created', async () => {
  const e = await started();
  const dir = e.srv.dataDir;
  await e.conn.api.CertificateService.CreateCertificate({ certificateId: 'web', certificate: { certificateChainPem: pki().rsa.cert, privateKeyPem: pki().rsa.key } });
  await stop(e);
  const files = () => fs.readdirSync(dir).sort();

  fs.truncateSync(file(dir, 'tlsplane.db'), 0);
  const before = files();
  assertLostStore(refusedStart(dir), dir, 'is empty \\(0 bytes\\)');
  assert.deepEqual(files(), before, 'the refused start created or removed files');
  assert.equal(fs.statSync(file(dir, 'tlsplane.db')).size, 0);

  fs.unlinkSync(file(dir, 'tlsplane.db'));
  assertLostStore(refusedStart(dir), dir, 'is missing');
  assert.equal(fs.existsSync(file(dir, 'tlsplane.db')), false, 'the refused start made a database');

  // An empty SQLite database (no table, no commit).
  let r = spawnSync('sqlite3', [file(dir, 'tlsplane.db'), 'PRAGMA user_version = 1;'], { encoding: 'utf8' });
  assert.equal(r.status, 0, `sqlite3: ${r.error || r.stderr}`);
  assertLostStore(refusedStart(dir), dir, 'holds no data \\(revision 0\\)');

  // A SQLite file that is not the store: tables, no schema history. Refused
  // as foreign, neither adopted nor migrated (no table added to it).
  fs.unlinkSync(file(dir, 'tlsplane.db'));
  r = spawnSync('sqlite3', [file(dir, 'tlsplane.db'), 'CREATE TABLE other (x); INSERT INTO other VALUES (1);'], { encoding: 'utf8' });
  assert.equal(r.status, 0, `sqlite3: ${r.error || r.stderr}`);
  const text = refusedStart(dir);
  assert.match(text, new RegExp(`data directory ${dir}: tlsplane\\.db is refused, not adopted: .*holds 1 tables, indexes, views or triggers but no schema history: not a tlsplane database`));
  assert.match(text, /Restore tlsplane\.db from a backup/);
  assert.match(text, new RegExp(`tlsplane-server init --force --data-dir ${dir}`));
  r = spawnSync('sqlite3', [file(dir, 'tlsplane.db'), "SELECT group_concat(name) FROM sqlite_schema"], { encoding: 'utf8' });
  assert.equal(r.stdout.trim(), 'other', 'the refused start added to the foreign file');
});

test('a database older than the schema this directory has run is refused at start (and by rotate-master-key); a current one starts', async () => {
  const e = await started();
  const dir = e.srv.dataDir;
  await e.conn.api.CertificateService.CreateCertificate({ certificateId: 'web', certificate: { certificateChainPem: pki().rsa.cert, privateKeyPem: pki().rsa.key } });
  await stop(e);
  // The floor, outside the database: the schema version the start ran.
  const floorFile = file(dir, 'schema-version');
  assert.equal(mode(floorFile), 0o600);
  const latest = Number(fs.readFileSync(floorFile, 'utf8').trim());
  assert.ok(latest >= 4, `schema-version: ${latest}`);
  const current = fs.readFileSync(file(dir, 'tlsplane.db'));

  // An older copy put in its place: schema version 3, rows without MACs,
  // so that a migration would authenticate whatever it found.
  const sql = 'DROP TABLE macs; DELETE FROM schema_migrations WHERE version >= 4; ' +
    "UPDATE resources SET data = data WHERE kind = 'Certificate';";
  const r = spawnSync('sqlite3', [file(dir, 'tlsplane.db'), sql], { encoding: 'utf8' });
  assert.equal(r.status, 0, `sqlite3: ${r.error || r.stderr}`);
  const older = fs.readFileSync(file(dir, 'tlsplane.db'));
  const text = refusedStart(dir);
  assert.match(text, new RegExp(`data directory ${dir}: tlsplane\\.db is refused: .*database schema version 3 is older than ${latest}`));
  assert.match(text, new RegExp(`expected schema version ${latest} or later \\(schema-version`));
  assert.match(text, /Restore tlsplane\.db from a backup \(tlsplane-server backup; docs\/operations\.md\) taken by this version of tlsplane-server/);
  assert.match(text, new RegExp(`tlsplane-server init --force --data-dir ${dir}`));
  assert.deepEqual(fs.readFileSync(file(dir, 'tlsplane.db')), older, 'the refused start migrated the older copy');
  assert.equal(fs.readFileSync(floorFile, 'utf8'), `${latest}\n`);

  const rot = tool(['rotate-master-key', '--data-dir', dir]);
  assert.equal(rot.status, 1, rot.stdout);
  assert.match(rot.stderr, /database schema version 3 is older than/);

  // The current database back: it starts, and its certificate is there.
  fs.writeFileSync(file(dir, 'tlsplane.db'), current);
  const e2 = await started(dir);
  await e2.conn.api.CertificateService.GetCertificate({ name: 'certificates/web' });
  await stop(e2);
});

test('init --force: a new store, the CA and master key kept, new admin credentials that work', async () => {
  const e = await started();
  const dir = e.srv.dataDir;
  const cert = await e.conn.api.CertificateService.CreateCertificate({ certificateId: 'web', certificate: { certificateChainPem: pki().rsa.cert, privateKeyPem: pki().rsa.key } });
  const oldToken = e.srv.adminToken;
  await stop(e);
  const kept = Object.fromEntries(['ca.pem', 'ca-key.pem', 'master.key'].map((f) => [f, fs.readFileSync(file(dir, f))]));

  let r = tool(['init', '--data-dir', dir]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /is initialised already; init --force discards its store/);

  r = tool(['init', '--force', '--data-dir', dir]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /re-initialised .* with a new, empty store/);
  const moved = /moved to (\S+) \(every resource, token, client certificate record and the audit trail/.exec(r.stdout);
  assert.ok(moved, r.stdout);
  assert.ok(fs.existsSync(moved[1]), `${moved[1]} is not there`);
  assert.match(r.stdout, /kept: the CA \(ca\.pem, ca-key\.pem\), the master key/);
  assert.match(r.stdout, /made: new admin credentials/);
  assert.match(r.stdout, /agents must enroll again/);
  for (const [f, bytes] of Object.entries(kept)) assert.deepEqual(fs.readFileSync(file(dir, f)), bytes, `${f} changed`);
  assert.equal(mode(file(dir, 'tlsplane.db')), 0o600);
  assert.equal(mode(file(dir, 'admin.token')), 0o600);

  const e2 = await started(dir);
  assert.notEqual(e2.srv.adminToken, oldToken);
  await expectGrpcError(e2.conn.api.CertificateService.GetCertificate({ name: cert.name }), status.NOT_FOUND);
  const policy = await e2.conn.api.CipherPolicyService.GetCipherPolicy({ name: 'cipherPolicies/default' });
  assert.equal(policy.builtIn, true);
  const old = await connect(e2.srv.address, { token: oldToken });
  try {
    await expectGrpcError(old.api.CipherPolicyService.ListCipherPolicies({}), status.UNAUTHENTICATED);
  } finally {
    old.close();
  }
  await stop(e2);
});

test('backup while the server writes, wipe, restore with the master key kept apart', async () => {
  const p = pki();
  const e = await started();
  const dir = e.srv.dataDir;
  const api = e.conn.api;
  const cert = await api.CertificateService.CreateCertificate({ certificateId: 'web', certificate: { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key } });
  const token = await api.TokenService.CreateToken({ tokenId: 'ci', token: { role: 'OPERATOR' } });
  noteSecret(token.secret);
  const keyBody = p.rsa.key.split('\n')[5]; // a line of the key's base64

  // Writes go on during the backup.
  let writing = true;
  const acked = [];
  const writer = (async () => {
    for (let i = 0; writing; i++) {
      const r = await api.CipherPolicyService.CreateCipherPolicy({ cipherPolicyId: `during-${i}`, cipherPolicy: { ciphersuites: 'TLS_AES_128_GCM_SHA256', minVersion: 'TLS_1_3' } });
      acked.push(r);
    }
  })();
  while (acked.length < 3) await new Promise((r) => setTimeout(r, 5));
  const backup = path.join(procs.tempDir('tlsplane-backup-'), 'b');
  const r = await new Promise((resolve) => {
    const child = spawn(serverBinary(), ['backup', '--data-dir', dir, backup], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let errText = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { errText += d; });
    child.on('exit', (code) => resolve({ status: code, stdout: out, stderr: errText }));
  });
  writing = false;
  await writer;
  assert.equal(r.status, 0, r.stderr);
  const m = /backup of .* at revision (\d+) written to/.exec(r.stdout);
  assert.ok(m, r.stdout);
  const revision = Number(m[1]);
  const manifest = JSON.parse(fs.readFileSync(file(backup, 'backup.json'), 'utf8'));
  assert.equal(manifest.revision, revision);
  assert.equal(manifest.master_key_ids.length, 1);
  assert.match(r.stdout, new RegExp(`a restore needs master key ${manifest.master_key_ids[0]}`));

  // What the backup holds, and how.
  assert.equal(mode(backup), 0o700);
  const names = fs.readdirSync(backup).sort();
  assert.deepEqual(names, ['SHA256SUMS', 'admin-key.pem', 'admin.pem', 'admin.token', 'backup.json', 'ca-key.pem', 'ca.pem', 'tlsplane.db']);
  for (const f of names) assert.equal(mode(file(backup, f)), f === 'ca.pem' ? 0o644 : 0o600, `${f} mode`);
  const sums = spawnSync('sha256sum', ['-c', 'SHA256SUMS'], { cwd: backup, encoding: 'utf8' });
  assert.equal(sums.status, 0, `sha256sum -c: ${sums.error || sums.stdout + sums.stderr}`);
  for (const f of names) {
    const bytes = fs.readFileSync(file(backup, f));
    assert.equal(bytes.indexOf(keyBody), -1, `${f} holds the certificate's private key in the clear`);
    assert.equal(bytes.indexOf(fs.readFileSync(file(dir, 'master.key'), 'utf8').trim()), -1, `${f} holds the master key`);
  }

  // The master key is kept apart; the data directory is lost.
  const masterKey = fs.readFileSync(file(dir, 'master.key'));
  await stop(e);
  fs.rmSync(dir, { recursive: true, force: true });

  // Restore: a new private directory, the backup's files, the master key.
  fs.mkdirSync(dir, { mode: 0o700 });
  for (const f of names) {
    if (f === 'backup.json' || f === 'SHA256SUMS') continue;
    fs.copyFileSync(file(backup, f), file(dir, f));
    fs.chmodSync(file(dir, f), mode(file(backup, f)));
  }
  // Without the master key the sealed store does not open.
  assert.match(refusedStart(dir), /master\.key is missing and a new key does not open the database/);
  assert.equal(fs.existsSync(file(dir, 'master.key')), false);
  fs.writeFileSync(file(dir, 'master.key'), masterKey, { mode: 0o600 });

  const e2 = await started(dir);
  const api2 = e2.conn.api;
  const trail = await api2.AuditService.ListAuditEvents({ pageSize: 1000, sinceRevision: String(revision - 1) });
  assert.equal(Math.max(...trail.auditEvents.map((a) => Number(a.revision))), revision, 'the restored store ends at the backup revision');
  const got = await api2.CertificateService.GetCertificate({ name: cert.name });
  assert.equal(got.sha256Fingerprint, cert.sha256Fingerprint);
  // Every write answered before the backup began is there.
  for (const a of acked.slice(0, 3)) assert.equal((await api2.CipherPolicyService.GetCipherPolicy({ name: a.name })).name, a.name);
  // The key unseals: a context that uses the certificate builds.
  await api2.TlsContextService.CreateTlsContext({ tlsContextId: uid('restored'), tlsContext: { certificates: [cert.name] } });
  // The admin token of the backup (the one e2 connected with) and the
  // operator token made before it work.
  assert.equal(e2.srv.adminToken, e.srv.adminToken);
  const op = await connect(e2.srv.address, { token: token.secret });
  try {
    await op.api.CertificateService.GetCertificate({ name: cert.name });
  } finally {
    op.close();
  }
  await stop(e2);
});

test('backup refuses a destination that is not empty and a directory without a database', async () => {
  const e = await started();
  const dir = e.srv.dataDir;
  const dest = procs.tempDir('tlsplane-backup-');
  fs.writeFileSync(file(dest, 'other'), 'x');
  let r = tool(['backup', '--data-dir', dir, dest]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /is not empty: a backup goes into a new directory/);
  assert.deepEqual(fs.readdirSync(dest), ['other']);
  await stop(e);
  fs.truncateSync(file(dir, 'tlsplane.db'), 0);
  r = tool(['backup', '--data-dir', dir, path.join(dest, 'b')]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /no database to back up \(0 bytes\)/);
  r = tool(['backup', '--data-dir', dir]);
  assert.equal(r.status, 2, 'DEST is required');
});

test('a 0777 data directory and 0666 database, WAL and SHM are narrowed at start, and logged', async () => {
  const e = await started();
  const dir = e.srv.dataDir;
  await e.conn.api.CipherPolicyService.CreateCipherPolicy({ cipherPolicyId: 'modes', cipherPolicy: {} });
  // Killed: the WAL and SHM files stay, as after a crash.
  e.conn.close();
  e.conn = null;
  e.srv.stopRequested = true;
  e.srv.proc.kill('SIGKILL');
  await e.srv.exited;
  const dbFiles = ['tlsplane.db', 'tlsplane.db-wal', 'tlsplane.db-shm'];
  for (const f of dbFiles) assert.ok(fs.existsSync(file(dir, f)), `${f} is there after the kill`);
  fs.chmodSync(dir, 0o777);
  for (const f of dbFiles) fs.chmodSync(file(dir, f), 0o666);

  const e2 = await started(dir);
  assert.equal(mode(dir), 0o700);
  for (const f of dbFiles) {
    if (fs.existsSync(file(dir, f))) assert.equal(mode(file(dir, f)), 0o600, `${f} mode`);
  }
  const log = e2.srv.log();
  assert.match(log, new RegExp(`warn datadir: ${dir} had mode 0777 \\(group or others had access\\): changed to 0700`));
  for (const f of dbFiles) {
    assert.match(log, new RegExp(`warn datadir: ${dir}/${f} had mode 0666 \\(group or others had access\\): changed to 0600`));
  }
  assert.equal((await e2.conn.api.CipherPolicyService.GetCipherPolicy({ name: 'cipherPolicies/modes' })).name, 'cipherPolicies/modes');
  await stop(e2);

  // A secret in the clear that others may read is refused, not narrowed:
  // it may have been read already.
  fs.chmodSync(file(dir, 'admin.token'), 0o644);
  assert.match(refusedStart(dir), /admin\.token: mode 644; it holds a secret and must be readable by its owner only/);
  assert.equal(mode(file(dir, 'admin.token')), 0o644);
  fs.chmodSync(file(dir, 'admin.token'), 0o600);
  await stop(await started(dir));
});
