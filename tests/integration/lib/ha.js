'use strict';
// What the tests of several servers share (docs/ha.md): data directories
// for servers on one PostgreSQL database, the servers themselves, a
// listener an agent serves, and a handshake loop run against it while a
// server goes away.
//
//   const pg = await Postgres.start();
//   const dirs = dataDirs(pg.uriWithPassword(PASSWORD), 2, 'hafo');  // init once, then copies
//   const ha = await HaServers.start({ password: PASSWORD, tag: 'hafo', servers: [{}, { extraArgs: [...] }] });
//   ha.pg, ha.servers[i], ha.conns[i] (reflection clients as the admin)
//   const leaf = await serveWeb(ha.conns[0], p, { site: 'fo', port, upstream: up.address });
//   const loop = HandshakeLoop.start(port);  // loop.ok, loop.failed, loop.last (fingerprint)
//   await loop.stop();
//   await ha.stop();
//
// The first data directory is made by `tlsplane-server init --store`; the
// others are copies of it (the same CA and master key), as a deployment's
// second server is set up.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { Server, serverBinary } = require('./server');
const { connect } = require('./reflect');
const { Postgres } = require('./postgres');
const procs = require('./procs');
const { exchange } = require('./tlsclient');
const { uid } = require('./util');
const { waitFor } = require('./wait');

const { teardown } = procs;

// n data directories for servers of the database at store (a URI).
function dataDirs(store, n, tag) {
  const first = procs.tempDir(`tlsplane-${tag}-0-`);
  const init = spawnSync(serverBinary(), ['init', '--data-dir', first, '--store', store], { encoding: 'utf8', timeout: 60000 });
  assert.equal(init.status, 0, init.stderr);
  const dirs = [first];
  for (let i = 1; i < n; i++) {
    const dir = procs.tempDir(`tlsplane-${tag}-${i}-`);
    fs.chmodSync(dir, 0o700);
    for (const f of fs.readdirSync(first)) fs.copyFileSync(path.join(first, f), path.join(dir, f));
    dirs.push(dir);
  }
  return dirs;
}

class HaServers {
  // A PostgreSQL of its own and one TLS server for each entry of servers:
  // { extraArgs, listen }, where listen may be a function of the servers
  // started before it (e.g. the same port as the first on another
  // address).
  static async start({ password, tag, servers }) {
    const ha = new HaServers();
    ha.pg = await Postgres.start();
    ha.dirs = dataDirs(ha.pg.uriWithPassword(password), servers.length, tag);
    for (const [i, o] of servers.entries()) {
      const listen = typeof o.listen === 'function' ? o.listen(ha.servers) : o.listen;
      const srv = await Server.start({
        dataDir: ha.dirs[i], tls: true, listen, extraArgs: ['--store', ha.pg.uriWithPassword(password), ...(o.extraArgs || [])],
      });
      ha.servers.push(srv);
      ha.conns.push(await connect(srv.address, srv.connectOptions()));
    }
    return ha;
  }

  constructor() {
    this.pg = null;
    this.dirs = [];
    this.servers = [];
    this.conns = [];
  }

  // Every server stopped and PostgreSQL with them, even when a server's
  // stop finds a fault (then thrown, after the rest).
  stop() {
    return teardown(
      ...this.conns.map((c) => async () => c.close()),
      ...this.servers.map((s) => async () => s.running && s.stopClean()),
      async () => this.pg && this.pg.stop(),
    );
  }
}

// The fingerprint of the certificate the agent's listener on port serves,
// or null when the handshake (or the echo through it) failed.
async function handshake(port) {
  const r = await exchange(port, {}, { send: 'fp\n', timeoutMs: 5000 }).catch(() => null);
  return r && r.ok ? r.info.fingerprint : null;
}

// certificates/web, tlsContexts/web and listeners/web on 127.0.0.1:port
// for the agents labelled site, made through conn; waits until the agent
// serves it. The leaf served.
async function serveWeb(conn, p, { site, port, upstream }) {
  const leaf = p.leaf(`${site}-web`, { cn: 'web.example.com', sans: ['DNS:web.example.com'] });
  await conn.api.CertificateService.CreateCertificate({ certificateId: 'web', certificate: { certificateChainPem: leaf.cert, privateKeyPem: leaf.key } });
  await conn.api.TlsContextService.CreateTlsContext({ tlsContextId: 'web', tlsContext: { certificates: ['certificates/web'] } });
  await conn.api.ListenerService.CreateListener({
    listenerId: 'web',
    listener: { address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/web', upstream, agentSelector: { site } },
  });
  await waitFor('listeners/web served', async () => (await handshake(port)) === leaf.fingerprint);
  return leaf;
}

// A new certificate for certificates/web uploaded through conn; the leaf.
async function uploadWeb(conn, p, site) {
  const next = p.leaf(`${site}-web-${uid('r')}`, { cn: 'web.example.com', sans: ['DNS:web.example.com'] });
  await conn.api.CertificateService.UpdateCertificate({
    certificate: { name: 'certificates/web', certificateChainPem: next.cert, privateKeyPem: next.key },
    updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
  });
  return next;
}

// Handshakes with port one after the other, without a pause, until
// stopped: ok and failed count them, last is the fingerprint last served.
class HandshakeLoop {
  static start(port) {
    const loop = new HandshakeLoop();
    loop.running = (async () => {
      while (!loop.stopping) {
        const fp = await handshake(port);
        if (fp === null) loop.failed++;
        else {
          loop.ok++;
          loop.last = fp;
        }
      }
    })();
    return loop;
  }

  constructor() {
    this.ok = 0;
    this.failed = 0;
    this.last = null;
    this.stopping = false;
    this.running = null;
  }

  async stop() {
    this.stopping = true;
    await this.running;
  }
}

module.exports = { HaServers, dataDirs, handshake, serveWeb, uploadWeb, HandshakeLoop };
