'use strict';
// Master-key rotation on PostgreSQL (docs/ha.md, "Master-key rotation"):
// two tlsplane-server processes A and B on one database (lib/ha.js;
// B on a copy of A's data directory), a certificate with its private key
// and join tokens stored through A.
//
// * rotate-master-key --store refuses while the directory's own server
//   runs (the directory is locked).
// * With A stopped and B still running it refuses too, naming the
//   servers connected to the database, and changes nothing (no key made,
//   nothing re-sealed, B still serves calls).
// * With both stopped it re-seals every secret under a new key: every
//   sealed record in the database names the new key's id, none the old.
// * The old key opens nothing: B restarted on it refuses to start, naming
//   the key ids.
// * Both servers given the new master.key start and read the secrets: a
//   join token made before the rotation enrolls an agent on each server,
//   each agent serves the certificate's private key, and the rotation is
//   in the audit log once.
// * A server started while a rotation runs (held open by the test's own
//   psql session locking the row the rotation's transaction needs) is
//   refused at once ("a master-key rotation is in progress") instead of
//   coming up with the old key; once the rotation has committed, it starts
//   on the new key and reads every secret (a join token made before the
//   rotation enrolls an agent that serves the certificate's private key).

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');
const { Server, serverBinary, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { Postgres } = require('./lib/postgres');
const { dataDirs } = require('./lib/ha');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { exchange } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { freePort } = require('./lib/agent');
const { uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');
const { teardown } = require('./lib/procs');

const PASSWORD = 'pg-master-key-password';
noteSecret(PASSWORD);

let pg;
let up;
let dirA;
let dirB;
const live = []; // servers, agents and connections to stop at the end

function run(args, env = {}) {
  return spawnSync(serverBinary(), args, { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60000 });
}

async function start(dir) {
  const srv = await Server.start({ dataDir: dir, tls: true, extraArgs: ['--store', pg.uriWithPassword(PASSWORD)] });
  const conn = await connect(srv.address, srv.connectOptions());
  live.push({ srv, conn });
  return { srv, conn };
}

const masterKey = (dir) => fs.readFileSync(path.join(dir, 'master.key'), 'utf8').trim();
const sealedKeyIds = () =>
  pg.psql("SELECT DISTINCT encode(substring(secret FROM 2 FOR 8), 'hex') FROM resources WHERE secret IS NOT NULL").trim().split('\n').filter(Boolean);

before(async () => {
  pg = await Postgres.start();
  [dirA, dirB] = dataDirs(pg.uriWithPassword(PASSWORD), 2, 'hamk');
  noteSecret(masterKey(dirA));
  up = await Upstream.start({ mode: 'echo' });
});

after(() => teardown(
  ...live.reverse().flatMap((x) => [
    async () => x.agent && x.agent.running && x.agent.stopClean(),
    async () => x.conn && x.conn.close(),
    async () => x.srv && x.srv.running && x.srv.stopClean(),
  ]),
  async () => up && up.close(),
  async () => pg && pg.stop(),
));

test('rotate-master-key on PostgreSQL: refused while any server runs; every secret re-sealed under the new key; a server on the old key refuses to start; both servers on the new key read the secrets', async () => {
  const p = pki();
  const A = await start(dirA);
  const B = await start(dirB);
  const leaf = p.leaf('rk-web', { cn: 'web.example.com', sans: ['DNS:web.example.com'] });
  await A.conn.api.CertificateService.CreateCertificate({ certificateId: 'web', certificate: { certificateChainPem: leaf.cert, privateKeyPem: leaf.key } });
  await A.conn.api.TlsContextService.CreateTlsContext({ tlsContextId: 'web', tlsContext: { certificates: ['certificates/web'] } });
  const agents = [];
  for (const name of ['rk-a', 'rk-b']) {
    const port = await freePort();
    await A.conn.api.ListenerService.CreateListener({
      listenerId: name,
      listener: { address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/web', upstream: up.address, agentSelector: { agent: name } },
    });
    const t = await A.conn.api.TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: name, agentLabels: { agent: name } } });
    noteSecret(t.secret);
    agents.push({ name, port, token: t.secret });
  }
  const oldKey = masterKey(dirA);
  const [oldId] = sealedKeyIds();
  assert.match(oldId, /^[0-9a-f]{16}$/);
  assert.deepEqual(sealedKeyIds(), [oldId], 'every secret sealed under the one key');

  // Refused while A runs: its data directory is locked.
  let r = run(['rotate-master-key', '--data-dir', dirA, '--store', pg.uriWithPassword(PASSWORD)]);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /data directory .* is in use by another tlsplane-server/);
  assert.equal(masterKey(dirA), oldKey);
  assert.deepEqual(sealedKeyIds(), [oldId], 'nothing re-sealed');

  // A stopped, B still running on the old key: refused, nothing changed.
  A.conn.close();
  await A.srv.stopClean();
  r = run(['rotate-master-key', '--data-dir', dirA, '--store', pg.uriWithPassword(PASSWORD)]);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /store: 1 tlsplane-server process is connected to the database \(holding advisory lock \d+ shared, in pg_locks\): stop every server of the deployment, then rotate the master key/);
  assert.ok(!r.stderr.includes(PASSWORD));
  assert.equal(masterKey(dirA), oldKey);
  assert.ok(!fs.existsSync(path.join(dirA, 'master.key.new')), 'the key chosen by the refused run is gone');
  assert.deepEqual(sealedKeyIds(), [oldId], 'nothing re-sealed');
  assert.equal((await B.conn.api.CertificateService.GetCertificate({ name: 'certificates/web' })).name, 'certificates/web', 'B still serves');
  B.conn.close();
  await B.srv.stopClean();

  // Every server stopped.
  r = run(['rotate-master-key', '--data-dir', dirA, '--store', pg.uriWithPassword(PASSWORD)]);
  assert.equal(r.status, 0, r.stderr);
  const m = /master key rotated: (\d+) secrets re-sealed under key ([0-9a-f]{16}) \(was ([0-9a-f]{16})\)/.exec(r.stdout);
  assert.ok(m, r.stdout);
  const [, count, newId, wasId] = m;
  assert.equal(wasId, oldId);
  assert.ok(Number(count) >= 3, `the certificate's key and the tokens re-sealed (${count})`);
  const newKey = masterKey(dirA);
  noteSecret(newKey);
  assert.notEqual(newKey, oldKey);
  assert.ok(!(r.stdout + r.stderr).includes(newKey) && !(r.stdout + r.stderr).includes(PASSWORD));
  assert.deepEqual(sealedKeyIds(), [newId], 'every sealed record names the new key');


  // The old key opens nothing.
  r = run(['--data-dir', dirB, '--store', pg.uriWithPassword(PASSWORD), '--listen', '127.0.0.1:0', '--plaintext']);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`sealed with master key ${newId}, not with the key given`));
  assert.ok(!r.stderr.includes(PASSWORD));

  // B gets the new key; both start and read the secrets.
  fs.copyFileSync(path.join(dirA, 'master.key'), path.join(dirB, 'master.key'));
  fs.chmodSync(path.join(dirB, 'master.key'), 0o600);
  const A2 = await start(dirA);
  const B2 = await start(dirB);
  for (const [i, s] of [A2, B2].entries()) {
    const got = await s.conn.api.CertificateService.GetCertificate({ name: 'certificates/web' });
    assert.equal(got.name, 'certificates/web');
    const a = agents[i];
    a.agent = await CpAgent.start(s.srv, { name: a.name, labels: { agent: a.name }, joinToken: a.token, wait: 'connected' });
    live.push({ agent: a.agent });
    await waitFor(`${a.name} (on ${i === 0 ? 'A' : 'B'}) serves the certificate`, async () => {
      const h = await exchange(a.port, {}, { send: 'fp\n' }).catch(() => null);
      return h && h.ok && h.info.fingerprint === leaf.fingerprint;
    });
  }
  const trail = (await B2.conn.api.AuditService.ListAuditEvents({ resource: 'masterKey' })).auditEvents;
  assert.equal(trail.length, 1);
  assert.equal(trail[0].action, 'rotate_master_key');
});

test('a server started during a rotation is refused, not left on the old key; after the commit it starts on the new key and reads every secret', async () => {
  const p = pki();
  const A = live.find((x) => x.srv && x.srv.running && x.srv.dataDir === dirA);
  const leaf = p.leaf('rk-web2', { cn: 'web2.example.com', sans: ['DNS:web2.example.com'] });
  await A.conn.api.CertificateService.CreateCertificate({ certificateId: 'web2', certificate: { certificateChainPem: leaf.cert, privateKeyPem: leaf.key } });
  await A.conn.api.TlsContextService.CreateTlsContext({ tlsContextId: 'web2', tlsContext: { certificates: ['certificates/web2'] } });
  const port = await freePort();
  await A.conn.api.ListenerService.CreateListener({
    listenerId: 'rk-c',
    listener: { address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/web2', upstream: up.address, agentSelector: { agent: 'rk-c' } },
  });
  const t = await A.conn.api.TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'rk-c', agentLabels: { agent: 'rk-c' } } });
  noteSecret(t.secret);
  for (const x of live) {
    if (x.agent && x.agent.running) await x.agent.stopClean();
    if (x.conn) x.conn.close();
    if (x.srv && x.srv.running) await x.srv.stopClean();
  }
  const [oldId] = sealedKeyIds();
  const oldKey = masterKey(dirA);

  // The rotation held open: the test's session locks the row every write
  // transaction locks first, so the rotation waits there, after taking
  // the server lock (within its lock_timeout, 10 s).
  const q = pg.session();
  let rotation;
  try {
    await q.run('BEGIN; SELECT revision FROM meta WHERE id = 1 FOR UPDATE');
    rotation = spawn(serverBinary(), ['rotate-master-key', '--data-dir', dirA, '--store', pg.uriWithPassword(PASSWORD)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    rotation.stdout.on('data', (d) => (out += d));
    rotation.stderr.on('data', (d) => (out += d));
    rotation.done = new Promise((resolve) => rotation.on('exit', (code) => resolve({ code, out })));
    await waitFor('the rotation holds the server lock and waits for the row', () =>
      pg.psql(
        "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ExclusiveLock' AND granted)" +
          " || ' ' || (SELECT count(*) FROM pg_locks WHERE NOT granted)",
      ).trim() === '1 1');

    // A server started now: refused at once, before it listens.
    const started = Date.now();
    const r = run(['--data-dir', dirB, '--store', pg.uriWithPassword(PASSWORD), '--listen', '127.0.0.1:0', '--plaintext']);
    console.log(`# a server started during the rotation exited (${r.status}) after ${Date.now() - started} ms`);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /store: .*: a master-key rotation is in progress \(tlsplane-server rotate-master-key holds advisory lock \d+\): the master key given is being replaced; start again once the rotation has finished, with the new key/);
    assert.doesNotMatch(r.stderr, /listening on/);
    assert.ok(!r.stderr.includes(PASSWORD));
    assert.equal(rotation.exitCode, null, 'the rotation still runs');
  } finally {
    await q.run('COMMIT');
    await q.close();
  }
  const done = await rotation.done;
  assert.equal(done.code, 0, done.out);
  const m = /master key rotated: (\d+) secrets re-sealed under key ([0-9a-f]{16}) \(was ([0-9a-f]{16})\)/.exec(done.out);
  assert.ok(m, done.out);
  assert.equal(m[3], oldId);
  const newId = m[2];
  assert.notEqual(masterKey(dirA), oldKey);
  noteSecret(masterKey(dirA));
  assert.deepEqual(sealedKeyIds(), [newId], 'every sealed record names the new key');

  // After the rotation: B on the new key starts and reads every secret.
  fs.copyFileSync(path.join(dirA, 'master.key'), path.join(dirB, 'master.key'));
  fs.chmodSync(path.join(dirB, 'master.key'), 0o600);
  const B = await start(dirB);
  assert.equal((await B.conn.api.CertificateService.GetCertificate({ name: 'certificates/web2' })).name, 'certificates/web2');
  const agent = await CpAgent.start(B.srv, { name: 'rk-c', labels: { agent: 'rk-c' }, joinToken: t.secret, wait: 'connected' });
  live.push({ agent });
  await waitFor('rk-c (on B) serves the certificate', async () => {
    const h = await exchange(port, {}, { send: 'fp\n' }).catch(() => null);
    return h && h.ok && h.info.fingerprint === leaf.fingerprint;
  });
});
