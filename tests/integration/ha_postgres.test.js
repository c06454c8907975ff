'use strict';
// tlsplane-server with its store on PostgreSQL (--store), against a
// PostgreSQL server of the test's own (lib/postgres.js: initdb in a temp
// dir, 127.0.0.1, a free port; stopped in after(), also on failure).
//
// * init on an empty database makes the data directory as on a new file;
//   the directory holds no tlsplane.db; the URI's password is in no log
//   line or message; backup refuses (pg_dump) and init --force refuses.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { Server, serverBinary, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { Postgres } = require('./lib/postgres');
const procs = require('./lib/procs');

const PASSWORD = 'pg-password-never-shown';
noteSecret(PASSWORD);

let pg;
let dirA;
const servers = [];
const conns = [];

function run(args, env = {}) {
  return spawnSync(serverBinary(), args, { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60000 });
}

before(async () => {
  pg = await Postgres.start();
});

after(async () => {
  for (const c of conns) c.close();
  for (const s of servers) if (s.running) await s.stopClean();
  if (pg) await pg.stop();
});

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

  const a = await Server.start({ dataDir: dirA, tls: true, extraArgs: ['--store', pg.uriWithPassword(PASSWORD)] });
  servers.push(a);
  assert.match(a.logText, /store postgres:\/\/tlsplane@127\.0\.0\.1:\d+\/tlsplane, revision \d+/);
  const c = await connect(a.address, a.connectOptions());
  conns.push(c);
  const tokens = await c.api.TokenService.ListTokens({});
  assert.ok(tokens.tokens.some((t) => t.name === 'tokens/admin'), 'the admin token made by init');
  assert.ok(!fs.existsSync(path.join(dirA, 'tlsplane.db')));
});
