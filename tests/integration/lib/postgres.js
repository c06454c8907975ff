'use strict';
// A PostgreSQL server of the test's own, as tests/pg/run-with-postgres
// makes one: initdb into a temporary directory, a server on 127.0.0.1 at
// a free port (no Unix socket, fsync off), one database.
//
//   const pg = await Postgres.start();   // pg.uri: postgres://tlsplane@127.0.0.1:PORT/tlsplane
//   pg.uriWithPassword('secret')         // the same with a password (trust auth ignores it)
//   pg.psql(sql)                         // one statement, its output
//   const q = pg.session();              // a psql session kept open (its locks held)
//   await q.run('BEGIN; SELECT ... FOR UPDATE'); await q.close();
//   await pg.stop();                     // also on the process's 'exit', whatever happened
//
// PostgreSQL refuses to run as root: run as root, its programs run as the
// user postgres (nobody if there is none). PG_BIN names the directory of
// its programs (default: Debian's newest under /usr/lib/postgresql).

const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const procs = require('./procs');
const { tool } = require('./tools');

const live = new Set();

// Before procs' own handler, which removes the temporary directories.
process.prependListener('exit', () => {
  for (const pg of live) pg._stopSync();
});

function binDir() {
  if (process.env.PG_BIN) return process.env.PG_BIN;
  const root = '/usr/lib/postgresql';
  const versions = fs.existsSync(root)
    ? fs
        .readdirSync(root)
        .filter((v) => fs.existsSync(path.join(root, v, 'bin', 'initdb')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (versions.length === 0)
    throw new Error('no PostgreSQL server programs (initdb) under /usr/lib/postgresql: install postgresql (scripts/install-deps)');
  return path.join(root, versions[0], 'bin');
}

// The user the server runs as: ourselves, or postgres when we are root.
function owner() {
  if (process.getuid() !== 0) return null;
  const id = spawnSync('id', ['-u', 'postgres']);
  return id.status === 0 ? 'postgres' : 'nobody';
}

class Postgres {
  constructor(dir, bin, user) {
    this.dir = dir;
    this.bin = bin;
    this.user = user;
    this.port = null;
    this.started = false;
  }

  // Runs one of PostgreSQL's programs (as the owner when root); throws
  // with its output when it fails.
  _run(prog, args) {
    const file = path.join(this.bin, prog);
    const [cmd, argv] = this.user ? [tool('runuser'), ['-u', this.user, '--', file, ...args]] : [file, args];
    const r = spawnSync(cmd, argv, { encoding: 'utf8', timeout: 60000 });
    if (r.status !== 0) throw new Error(`${prog} ${args.join(' ')}: exit ${r.status}: ${r.stdout}${r.stderr}`);
    return r.stdout;
  }

  static async start() {
    const dir = procs.tempDir('tlsplane-pg-');
    const user = owner();
    const pg = new Postgres(dir, binDir(), user);
    if (user) spawnSync('chown', [user, dir]);
    pg._run('initdb', ['-D', path.join(dir, 'data'), '-U', 'tlsplane', '-A', 'trust', '-E', 'UTF8', '--no-sync']);
    // A free port: the server itself tells (it fails to start on one in use).
    let last;
    for (let i = 0; i < 5 && !pg.started; i++) {
      const port = 20000 + Math.floor(Math.random() * 40000);
      try {
        pg._run('pg_ctl', [
          '-D', path.join(dir, 'data'), '-l', path.join(dir, 'server.log'), '-w', '-t', '30',
          '-o', `-c listen_addresses=127.0.0.1 -c port=${port} -c unix_socket_directories= -c fsync=off`,
          'start',
        ]);
        pg.port = port;
        pg.started = true;
      } catch (e) {
        last = e;
      }
    }
    if (!pg.started) {
      const log = fs.existsSync(path.join(dir, 'server.log')) ? fs.readFileSync(path.join(dir, 'server.log'), 'utf8') : '';
      throw new Error(`PostgreSQL did not start: ${last && last.message}\n${log}`);
    }
    live.add(pg);
    pg._run('createdb', ['-h', '127.0.0.1', '-p', String(pg.port), '-U', 'tlsplane', 'tlsplane']);
    return pg;
  }

  get uri() {
    return `postgres://tlsplane@127.0.0.1:${this.port}/tlsplane`;
  }

  uriWithPassword(password) {
    return `postgres://tlsplane:${encodeURIComponent(password)}@127.0.0.1:${this.port}/tlsplane`;
  }

  // Runs sql with psql on the database; its output (unaligned, tuples only).
  psql(sql) {
    return this._run('psql', ['-h', '127.0.0.1', '-p', String(this.port), '-U', 'tlsplane', '-d', 'tlsplane', '-At', '-v', 'ON_ERROR_STOP=1', '-c', sql]);
  }

  // A psql session kept open until close(): what it locks stays locked.
  // run(sql) resolves with the output of sql once psql has run it (or
  // rejects with psql's output when it fails or exits).
  session() {
    const file = path.join(this.bin, 'psql');
    const args = ['-h', '127.0.0.1', '-p', String(this.port), '-U', 'tlsplane', '-d', 'tlsplane', '-At', '-v', 'ON_ERROR_STOP=1'];
    const [cmd, argv] = this.user ? [tool('runuser'), ['-u', this.user, '--', file, ...args]] : [file, args];
    const proc = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let waiting = null;
    const settle = () => {
      if (waiting === null) return;
      const at = out.indexOf(`${waiting.marker}\n`);
      if (at >= 0) {
        const { resolve } = waiting;
        const text = out.slice(0, at);
        out = out.slice(at + waiting.marker.length + 1);
        waiting = null;
        resolve(text);
      } else if (proc.exitCode !== null || proc.signalCode !== null) {
        const { reject } = waiting;
        waiting = null;
        reject(new Error(`psql exited (${proc.exitCode ?? proc.signalCode}): ${out}`));
      }
    };
    proc.stdout.on('data', (d) => {
      out += d;
      settle();
    });
    proc.stderr.on('data', (d) => {
      out += d;
    });
    proc.on('exit', settle);
    let n = 0;
    return {
      run: (sql) =>
        new Promise((resolve, reject) => {
          waiting = { marker: `-- done ${++n} --`, resolve, reject };
          proc.stdin.write(`${sql};\n\\echo '${waiting.marker}'\n`);
        }),
      close: () =>
        new Promise((resolve) => {
          if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
          proc.on('exit', () => resolve());
          proc.stdin.end();
        }),
    };
  }

  _stopSync() {
    if (!this.started) return;
    this.started = false;
    live.delete(this);
    try {
      this._run('pg_ctl', ['-D', path.join(this.dir, 'data'), '-m', 'immediate', '-w', 'stop']);
    } catch (_) {
      // gone already
    }
  }

  async stop() {
    this._stopSync();
  }
}

module.exports = { Postgres };
