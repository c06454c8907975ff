'use strict';
// tlsplane-server with its store on PostgreSQL (--store), against a
// PostgreSQL server of the test's own (lib/postgres.js: initdb in a temp
// dir, 127.0.0.1, a free port; stopped in after(), also on failure).
//
// * init on an empty database makes the data directory as on a new file;
//   the directory holds no tlsplane.db; the URI's password is in no log
//   line or message; backup refuses (pg_dump) and init --force refuses;
//   the initialised directory on a database without its data is refused.
// * Two servers on one database, the second with a copy of the first's
//   data directory (the same CA and master key): writes alternating
//   between them from concurrent clients get consecutive revisions (the
//   audit log has every one, once), and every acknowledged write reads
//   back the same from both.
// * An agent connected to server B serves a certificate uploaded to server
//   A (the time it took is printed); a WatchEvents stream on B sees a
//   change made on A.
// * Background jobs run on one server: the one holding the job lock
//   rotates a ticket-key ring on schedule; killed (SIGKILL), the other
//   takes the lock within seconds and the rotations go on there.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { Server, serverBinary, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { Postgres } = require('./lib/postgres');
const procs = require('./lib/procs');
const { teardown } = procs;
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { exchange } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { freePort, agentBinary } = require('./lib/agent');
const { uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');

const PASSWORD = 'pg-password-never-shown';
noteSecret(PASSWORD);

let pg;
let dirA;
let up;
let agent;
const servers = [];
const conns = [];
let A; // { srv, conn } of each server
let B;

function run(args, env = {}) {
  return spawnSync(serverBinary(), args, { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60000 });
}

before(async () => {
  pg = await Postgres.start();
});

after(() => teardown(
  async () => agent && agent.running && agent.stopClean(),
  async () => up && up.close(),
  ...conns.map((c) => async () => c.close()),
  ...servers.map((s) => async () => s.running && s.stopClean()),
  async () => pg && pg.stop(),
));

test('init on an empty PostgreSQL database makes the data directory; the store is the database, its password never shown', async () => {
  dirA = procs.tempDir('tlsplane-ha-a-');
  // TLSPLANE_STORE as well as --store.
  const init = run(['init', '--data-dir', dirA], { TLSPLANE_STORE: pg.uriWithPassword(PASSWORD) });
  assert.equal(init.status, 0, init.stderr);
  assert.match(init.stdout, /initialised/);
  for (const f of ['ca.pem', 'ca-key.pem', 'master.key', 'admin.token', 'admin.pem', 'schema-version'])
    assert.ok(fs.existsSync(path.join(dirA, f)), `${f} made`);
  assert.ok(!fs.existsSync(path.join(dirA, 'tlsplane.db')), 'no tlsplane.db: the store is the database');
  assert.ok(!(init.stdout + init.stderr).includes(PASSWORD));
  assert.match(pg.psql('SELECT count(*) FROM resources'), /^[1-9]\d*\n$/, 'the admin credentials are rows of the database');

  const again = run(['init', '--data-dir', dirA, '--store', pg.uriWithPassword(PASSWORD)]);
  assert.equal(again.status, 1);
  assert.match(again.stderr, /initialised already/);
  const force = run(['init', '--force', '--data-dir', dirA, '--store', pg.uriWithPassword(PASSWORD)]);
  assert.equal(force.status, 1);
  assert.match(force.stderr, /PostgreSQL database \(--store\): drop and create the database instead/);
  assert.ok(!(force.stdout + force.stderr).includes(PASSWORD));
  const backup = run(['backup', '--data-dir', dirA, '--store', pg.uriWithPassword(PASSWORD), path.join(dirA, 'bk')]);
  assert.equal(backup.status, 1);
  assert.match(backup.stderr, /use pg_dump/);
  assert.ok(!fs.existsSync(path.join(dirA, 'bk')), 'nothing written');
  const bad = run(['--data-dir', dirA, '--store', `mysql://u:${PASSWORD}@h/db`]);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--store: not a postgres:\/\/ or postgresql:\/\/ URI/);
  assert.ok(!bad.stderr.includes(PASSWORD));

  // The initialised directory on a database without its data: refused,
  // naming the database without its password.
  pg.psql('CREATE DATABASE other');
  const other = pg.uriWithPassword(PASSWORD).replace(/\/tlsplane$/, '/other');
  const lost = run(['--data-dir', dirA, '--store', other, '--plaintext', '--listen', '127.0.0.1:0']);
  assert.equal(lost.status, 1, lost.stderr);
  assert.match(lost.stderr, /was initialised \(ca\.pem is there\) but its database postgres:\/\/tlsplane@127\.0\.0\.1:\d+\/other holds no data \(revision 0\)/);
  assert.match(lost.stderr, /Restore the database from a dump \(pg_dump/);
  assert.ok(!lost.stderr.includes(PASSWORD));

  const a = await Server.start({ dataDir: dirA, tls: true, extraArgs: ['--store', pg.uriWithPassword(PASSWORD)] });
  servers.push(a);
  assert.match(a.logText, /store postgres:\/\/tlsplane@127\.0\.0\.1:\d+\/tlsplane, revision \d+/);
  const c = await connect(a.address, a.connectOptions());
  conns.push(c);
  const tokens = await c.api.TokenService.ListTokens({});
  assert.ok(tokens.tokens.some((t) => t.name === 'tokens/admin'), 'the admin token made by init');
  assert.ok(!fs.existsSync(path.join(dirA, 'tlsplane.db')));
});

// The second server: a copy of the first one's data directory (everything
// in it: the CA, the master key, the admin credentials; there is no
// tlsplane.db to leave out), on the same database.
async function secondServer() {
  const dirB = procs.tempDir('tlsplane-ha-b-');
  fs.chmodSync(dirB, 0o700);
  for (const f of fs.readdirSync(dirA)) fs.copyFileSync(path.join(dirA, f), path.join(dirB, f));
  const srv = await Server.start({ dataDir: dirB, tls: true, extraArgs: ['--store', pg.uriWithPassword(PASSWORD)] });
  servers.push(srv);
  const conn = await connect(srv.address, srv.connectOptions());
  conns.push(conn);
  return { srv, conn };
}

async function auditSince(conn, since) {
  const events = [];
  let pageToken = '';
  do {
    const r = await conn.api.AuditService.ListAuditEvents({ sinceRevision: String(since), orderBy: 'time asc', pageSize: 500, pageToken });
    events.push(...r.auditEvents);
    pageToken = r.nextPageToken;
  } while (pageToken);
  return events;
}

test('two servers on one database: alternating concurrent writes get consecutive revisions, each present on both', async () => {
  A = { srv: servers[0], conn: conns[0] };
  B = await secondServer();
  const both = [A, B];
  const before = Number((await auditSince(A.conn, 0)).reduce((m, e) => Math.max(m, Number(e.revision)), 0));
  const CLIENTS = 4;
  const WRITES = 12;
  const acked = [];
  await Promise.all(
    [...Array(CLIENTS).keys()].map(async (c) => {
      for (let j = 0; j < WRITES; j++) {
        const on = both[(c + j) % 2];
        const id = `ha-${c}-${j}`;
        const r = await on.conn.api.CipherPolicyService.CreateCipherPolicy({ cipherPolicyId: id, cipherPolicy: { labels: { client: String(c), on: on === A ? 'a' : 'b' } } });
        acked.push({ name: `cipherPolicies/${id}`, revision: Number(r.revision), etag: r.etag });
      }
    }),
  );
  assert.equal(acked.length, CLIENTS * WRITES);
  const revisions = acked.map((w) => w.revision).sort((x, y) => x - y);
  assert.equal(new Set(revisions).size, revisions.length, 'no two writes share a revision');

  // The audit log, read from either server: every revision since, once
  // each, without a gap (background jobs of either server may add theirs).
  const last = revisions[revisions.length - 1];
  for (const s of both) {
    const events = await auditSince(s.conn, before);
    const seen = [...new Set(events.map((e) => Number(e.revision)))].sort((x, y) => x - y).filter((r) => r <= last);
    assert.deepEqual(seen, [...Array(last - before).keys()].map((i) => before + 1 + i), 'consecutive revisions');
    for (const w of acked)
      assert.ok(events.some((e) => Number(e.revision) === w.revision && e.resource === w.name && e.action === 'create'), `${w.name} audited at ${w.revision}`);
  }
  for (const s of both)
    for (const w of acked) {
      const got = await s.conn.api.CipherPolicyService.GetCipherPolicy({ name: w.name });
      assert.equal(got.etag, w.etag, `${w.name} on ${s === A ? 'A' : 'B'}`);
      assert.equal(Number(got.revision), w.revision);
    }

  // A's last write, as B's /metrics reports the revision.
  const metricsRevision = (srv) => {
    const r = spawnSync('curl', ['-sS', '--cacert', path.join(srv.dataDir, 'ca.pem'), '-H', `authorization: Bearer ${srv.adminToken}`, `${srv.httpBase}/metrics`], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return Number(/^tlsplane_revision (\d+)$/m.exec(r.stdout)[1]);
  };
  const onA = await A.conn.api.CipherPolicyService.CreateCipherPolicy({ cipherPolicyId: 'ha-metrics', cipherPolicy: {} });
  await waitFor("B's /metrics shows A's revision", () => metricsRevision(B.srv) >= Number(onA.revision));
});

test('an agent on server B serves a certificate uploaded to server A; a watch on B sees a change made on A', async () => {
  agentBinary();
  const p = pki();
  up = await Upstream.start({ mode: 'echo' });
  const t = await A.conn.api.TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'ha-b', agentLabels: { site: 'ha' } } });
  noteSecret(t.secret);
  agent = await CpAgent.start(B.srv, { name: 'ha-b', labels: { site: 'ha' }, joinToken: t.secret, wait: 'connected' });

  const port = await freePort();
  const leaf = p.leaf('ha-web', { cn: 'web.example.com', sans: ['DNS:web.example.com'] });
  await A.conn.api.CertificateService.CreateCertificate({ certificateId: 'web', certificate: { certificateChainPem: leaf.cert, privateKeyPem: leaf.key } });
  await A.conn.api.TlsContextService.CreateTlsContext({ tlsContextId: 'web', tlsContext: { certificates: ['certificates/web'] } });
  await A.conn.api.ListenerService.CreateListener({
    listenerId: 'web',
    listener: { address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/web', upstream: up.address, agentSelector: { site: 'ha' } },
  });
  const fingerprint = async () => {
    const r = await exchange(port, {}, { send: 'fp\n' }).catch(() => null);
    return r && r.ok ? r.info.fingerprint : null;
  };
  await waitFor('listeners/web served by the agent on B', async () => (await fingerprint()) === leaf.fingerprint);

  // A watch on B, then a new certificate uploaded to A: the watch sees
  // the change, and the agent serves it.
  const call = B.conn.clients['tlsplane.v1.AuditService'].WatchEvents({});
  const events = [];
  let error = null;
  call.on('data', (e) => events.push(e));
  call.on('error', (e) => { error = e; });
  try {
    await waitFor('the watch on B started', async () => {
      await A.conn.api.CipherPolicyService.UpdateCipherPolicy({ cipherPolicy: { name: 'cipherPolicies/ha-0-0', labels: { ping: uid('p') } }, updateMask: { paths: ['labels'] } });
      return events.some((e) => e.resource === 'cipherPolicies/ha-0-0');
    }, { intervalMs: 200 });
    const next = p.leaf(`ha-web-${uid('r')}`, { cn: 'web.example.com', sans: ['DNS:web.example.com'] });
    const start = Date.now();
    const r = await A.conn.api.CertificateService.UpdateCertificate({
      certificate: { name: 'certificates/web', certificateChainPem: next.cert, privateKeyPem: next.key },
      updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
    });
    await waitFor('the certificate uploaded to A served by the agent on B', async () => (await fingerprint()) === next.fingerprint, { intervalMs: 10 });
    const ms = Date.now() - start;
    console.log(`# a certificate uploaded to server A was served by an agent on server B ${ms} ms after the upload`);
    const seen = await waitFor('the watch on B sees the update made on A', () =>
      events.find((e) => e.type === 'RESOURCE_CHANGED' && e.resource === 'certificates/web' && Number(e.revision) === Number(r.revision)));
    assert.equal(seen.action, 'update');
    assert.equal(error, null);
    assert.ok(ms < 5000, `served within 5 s (took ${ms} ms)`);
  } finally {
    call.cancel();
  }
});

test('background jobs run on the server holding the job lock; killed, the other takes over and ticket keys still rotate', async () => {
  const LEAD = /info jobs: this server runs the background jobs/;
  const both = [A, B];
  const holder = await waitFor('one server holds the job lock', () => both.find((s) => LEAD.test(s.srv.logText)), { timeoutMs: 10000 });
  const other = holder === A ? B : A;
  assert.ok(!LEAD.test(other.srv.logText), 'only one server runs the jobs');
  const svc = other.conn.api.TicketKeyService;
  const ring = await svc.CreateTicketKeyRing({ ticketKeyRingId: 'ha-ring', ticketKeyRing: { rotationPeriod: { seconds: '10', nanos: 0 }, retainedKeys: 2 } });
  const rotated = await waitFor('a rotation by the holder', async () => {
    const r = await svc.GetTicketKeyRing({ name: ring.name });
    return r.keys[0].keyName !== ring.keys[0].keyName ? r : null;
  }, { timeoutMs: 25000, intervalMs: 200 });
  assert.match(holder.srv.logText, /rotated the ticket keys of ticketKeyRings\/ha-ring on schedule/);
  assert.doesNotMatch(other.srv.logText, /rotated the ticket keys of ticketKeyRings\/ha-ring/);

  const killedAt = Date.now();
  await holder.srv.kill();
  await waitFor('the other server takes the job lock', () => LEAD.test(other.srv.logText), { timeoutMs: 10000, intervalMs: 50 });
  console.log(`# the job lock moved to the other server ${Date.now() - killedAt} ms after the holder was killed`);
  const after = await waitFor('a rotation by the new holder', async () => {
    const r = await svc.GetTicketKeyRing({ name: ring.name });
    return r.keys[0].keyName !== rotated.keys[0].keyName ? r : null;
  }, { timeoutMs: 25000, intervalMs: 200 });
  assert.match(other.srv.logText, /rotated the ticket keys of ticketKeyRings\/ha-ring on schedule/);
  assert.equal(after.keys[1].keyName, rotated.keys[0].keyName, 'the previous key still decrypts');
  const events = await other.conn.api.AuditService.ListAuditEvents({ resource: ring.name });
  assert.ok(events.auditEvents.filter((e) => e.action === 'rotate' && e.actor === 'system').length >= 2);
});
