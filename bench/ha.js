#!/usr/bin/env node
'use strict';
// High availability: writes per second and push latency with two
// tlsplane-server processes on one PostgreSQL database, next to one
// server on SQLite doing the same.
//
//   node bench/ha.js [--clients 8] [--seconds 20] [--pushes 50] [--rounds 3]
//                    [--stores sqlite,postgres]
//
// Each round runs every store, in turn (interleaved: sqlite, postgres,
// sqlite, ...), each on fresh servers and data directories:
//   sqlite    one server (TLS), its store DIR/tlsplane.db;
//   postgres  a PostgreSQL server of the bench's own, started as the
//             integration tests start one (tests/integration/lib/
//             postgres.js: initdb into a temp dir, as an unprivileged user
//             when run as root, 127.0.0.1 at a free port, fsync off;
//             stopped at the end of the round), `init --store` on it, and
//             two servers A and B on it, B on a copy of A's data directory.
// Writes: --clients concurrent clients, each with a gRPC connection of its
//   own to every server, each writing its own certificate with
//   UpdateCertificate back to back (alternating two P-256 certificates
//   with their keys: chain parsed, key matched, key sealed) for --seconds;
//   on PostgreSQL client c's k-th write goes to server (c + k) mod 2, so
//   that both servers write at once. A client answered UNAVAILABLE (the
//   server's write lane full) waits as write_contention.js's writers do
//   and tries again; the figures count those answers apart. Reported:
//   writes done per second, a write's latency p50 / p99, and CPU per
//   write (utime + stime from /proc, summed over the servers and, on
//   PostgreSQL, the postmaster and its backends; the bench's own process
//   apart).
// Push latency: a real tlsplane-agent (--workers 1) connected to the
//   OTHER server (B; the one server on SQLite), a listener on
//   certificates/web; --pushes UpdateCertificate calls of that
//   certificate on server A (after 5 unrecorded), one at a time, each
//   timed from just before the call until B's GetRollout counts the agent
//   applied (polled back to back): bench/push_latency.js's measure(). On
//   PostgreSQL that includes B learning of A's commit (LISTEN/NOTIFY).
//   After the last push the agent's listener is checked to serve the
//   last certificate.
//
// Uses tests/integration's harness and node_modules (cd tests/integration
// && npm ci), TLSPLANE_SERVER / TLSPLANE_AGENT or build/, and Debian's
// postgresql (PG_BIN to choose another).

const path = require('node:path');
const fs = require('node:fs');
const os = require('node:os');
const { lib, opt, now, delay, q, cpuMs, untilAnswered } = require('./harness');
const { Server, noteSecret } = require(`${lib}/server`);
const { connect } = require(`${lib}/reflect`);
const { CpAgent } = require(`${lib}/cpagent`);
const { Postgres } = require(`${lib}/postgres`);
const { dataDirs } = require(`${lib}/ha`);
const { exchange, fingerprint } = require(`${lib}/tlsclient`);
const { makeCerts, benchPorts, listener, measure, WARMUP } = require('./push_latency');

const CLIENTS = Number(opt('clients', '8'));
const SECONDS = Number(opt('seconds', '20'));
const PUSHES = Number(opt('pushes', '50'));
const ROUNDS = Number(opt('rounds', '3'));
const STORES = opt('stores', 'sqlite,postgres').split(',').filter(Boolean);
const DEADLINE_MS = 60000;


// The postmaster and its children (the backends, the checkpointer, ...).
function pgPids(pg) {
  const main = Number(fs.readFileSync(path.join(pg.dir, 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
  const pids = [main];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const ppid = Number(fs.readFileSync(`/proc/${d}/stat`, 'utf8').split(') ')[1].split(' ')[1]);
      if (ppid === main) pids.push(Number(d));
    } catch (_) {
      // gone
    }
  }
  return pids;
}

// Servers for one store: [{ srv, conn }], and the PostgreSQL server.
async function startServers(store) {
  if (store === 'sqlite') {
    const srv = await Server.start({ tls: true });
    return { pg: null, servers: [{ srv, conn: await connect(srv.address, srv.connectOptions()) }] };
  }
  const pg = await Postgres.start();
  const servers = [];
  for (const dir of dataDirs(pg.uri, 2, 'ha-bench')) {
    const srv = await Server.start({ dataDir: dir, tls: true, extraArgs: ['--store', pg.uri] });
    servers.push({ srv, conn: await connect(srv.address, srv.connectOptions()) });
  }
  return { pg, servers };
}

async function writes(servers, certs, pg) {
  const api = servers[0].conn.api;
  for (let c = 0; c < CLIENTS; c++) {
    await api.CertificateService.CreateCertificate({
      certificateId: `own-${c}`, certificate: { certificateChainPem: certs[0].cert, privateKeyPem: certs[0].key },
    });
  }
  // A connection of its own per client and server.
  const clients = [];
  for (let c = 0; c < CLIENTS; c++) {
    const conns = [];
    for (const s of servers) conns.push(await connect(s.srv.address, s.srv.connectOptions()));
    clients.push(conns);
  }
  const counts = {};
  const lat = [];
  let done = 0;
  let stop = false;
  const note = (k) => {
    counts[k] = (counts[k] || 0) + 1;
  };
  const loop = async (c) => {
    for (let k = 0; !stop; k++) {
      const conn = clients[c][(c + k) % servers.length];
      const crt = certs[(k + 1) % 2];
      const t0 = now();
      const update = () =>
        conn.api.CertificateService.UpdateCertificate({
          certificate: { name: `certificates/own-${c}`, certificateChainPem: crt.cert, privateKeyPem: crt.key },
          updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
        }, { deadlineMs: DEADLINE_MS });
      if ((await untilAnswered(update, note, () => stop)) && !stop) {
        done++;
        lat.push(now() - t0);
      }
    }
  };
  const srvPids = servers.map((s) => s.srv.proc.pid);
  const pg0 = pg ? cpuMs(pgPids(pg)) : 0;
  const srv0 = cpuMs(srvPids);
  const self0 = process.cpuUsage();
  const t0 = now();
  const running = Array.from({ length: CLIENTS }, (_, c) => loop(c));
  await delay(SECONDS * 1000);
  stop = true;
  const seconds = (now() - t0) / 1000;
  const n = done;
  const srvCpu = cpuMs(srvPids) - srv0;
  const pgCpu = pg ? cpuMs(pgPids(pg)) - pg0 : 0;
  const self = process.cpuUsage(self0);
  await Promise.all(running);
  for (const conns of clients) for (const c of conns) c.close();
  return {
    writes_per_s: n / seconds, writes: n, seconds,
    write_p50_ms: q(lat, 0.5), write_p99_ms: q(lat, 0.99),
    unavailable: counts.UNAVAILABLE || 0,
    other_errors: Object.entries(counts).filter(([k]) => k !== 'OK' && k !== 'UNAVAILABLE').map(([k, v]) => `${k}: ${v}`).join(', '),
    servers_cpu_ms_per_write: srvCpu / n,
    postgres_cpu_ms_per_write: pg ? pgCpu / n : null,
    bench_cpu_ms_per_write: (self.user + self.system) / 1000 / n,
  };
}

async function pushes(servers, certs) {
  const A = servers[0];
  const B = servers[servers.length - 1];
  const api = A.conn.api;
  await api.CertificateService.CreateCertificate({
    certificateId: 'web', certificate: { certificateChainPem: certs[0].cert, privateKeyPem: certs[0].key },
  });
  await api.TlsContextService.CreateTlsContext({ tlsContextId: 'web', tlsContext: { certificates: ['certificates/web'] } });
  const [port] = await benchPorts(1);
  await listener(api, 'web', port, { agent: 'bench-ha' });
  const t = await api.TokenService.CreateToken({ tokenId: 'join-bench-ha', token: { role: 'JOIN', agentId: 'bench-ha', agentLabels: { agent: 'bench-ha' } } });
  noteSecret(t.secret);
  const agent = await CpAgent.start(B.srv, { name: 'bench-ha', labels: { agent: 'bench-ha' }, joinToken: t.secret, wait: 'connected', env: { TLSPLANE_RETRY_MAX_MS: '30000' } });
  try {
    const row = await measure(api, certs, 1, 'ha', [agent.proc.pid], B.srv.proc.pid, { iterations: PUSHES, rolloutApi: B.conn.api, quiet: true });
    // measure() ends on certs[(WARMUP + PUSHES) % 2]: the agent serves it.
    const r = await exchange(port, {}, { send: '', timeoutMs: 5000 });
    const want = fingerprint(certs[(WARMUP + PUSHES) % 2].cert);
    if (!r.ok || r.info.fingerprint !== want) throw new Error(`the agent does not serve the last certificate: ${r.error || r.info.fingerprint}`);
    return row;
  } finally {
    await agent.stop();
  }
}

async function scenario(store, certs, round) {
  const load0 = os.loadavg()[0];
  const { pg, servers } = await startServers(store);
  try {
    const w = await writes(servers, certs, pg);
    const p = await pushes(servers, certs);
    const row = {
      round, store, servers: servers.length, clients: CLIENTS, ...w,
      push_p50_ms: p.p50_ms, push_p95_ms: p.p95_ms, push_max_ms: p.max_ms, pushes: p.iterations,
      push_commit_p50_ms: p.commit_p50_ms,
      load_before: load0, load_after: os.loadavg()[0],
    };
    console.log(JSON.stringify(row));
    return row;
  } finally {
    for (const s of servers) {
      s.conn.close();
      await s.srv.stop();
    }
    if (pg) await pg.stop();
  }
}

async function main() {
  const certs = makeCerts();
  const rows = [];
  for (let r = 0; r < ROUNDS; r++) for (const store of STORES) rows.push(await scenario(store, certs, r));
  const f1 = (x) => (x === null || x === undefined ? '–' : x.toFixed(1));
  const f2 = (x) => (x === null || x === undefined ? '–' : x.toFixed(2));
  console.log(`\n${CLIENTS} clients writing for ${SECONDS} s; ${PUSHES} pushes; ${os.cpus().length} CPUs, ${os.cpus()[0].model}`);
  console.log('| round | store | writes per s | a write p50 / p99 | CPU per write: servers / PostgreSQL / bench | UNAVAILABLE | other errors | push p50 / p95 / max (write on A, agent on B) | of which the write (p50) | load (1 min) |');
  console.log('|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const label = r.store === 'sqlite' ? 'SQLite, 1 server' : 'PostgreSQL, 2 servers';
    console.log(`| ${r.round} | ${label} | ${r.writes_per_s.toFixed(0)} | ${f1(r.write_p50_ms)} / ${f1(r.write_p99_ms)} ms | ${f2(r.servers_cpu_ms_per_write)} / ${f2(r.postgres_cpu_ms_per_write)} / ${f2(r.bench_cpu_ms_per_write)} ms | ${r.unavailable} | ${r.other_errors || 'none'} | ${f1(r.push_p50_ms)} / ${f1(r.push_p95_ms)} / ${f1(r.push_max_ms)} ms | ${f1(r.push_commit_p50_ms)} ms | ${r.load_before.toFixed(2)} → ${r.load_after.toFixed(2)} |`);
  }
  const med = (xs) => q(xs, 0.5);
  console.log('\nMedians over the rounds:');
  console.log('| store | writes per s | a write p50 | CPU per write: servers / PostgreSQL | push p50 | push p95 |');
  console.log('|---|---|---|---|---|---|');
  for (const store of STORES) {
    const rs = rows.filter((r) => r.store === store);
    const label = store === 'sqlite' ? 'SQLite, 1 server' : 'PostgreSQL, 2 servers';
    console.log(`| ${label} | ${med(rs.map((r) => r.writes_per_s)).toFixed(0)} | ${f1(med(rs.map((r) => r.write_p50_ms)))} ms | ${f2(med(rs.map((r) => r.servers_cpu_ms_per_write)))} / ${store === 'sqlite' ? '–' : f2(med(rs.map((r) => r.postgres_cpu_ms_per_write)))} ms | ${f1(med(rs.map((r) => r.push_p50_ms)))} ms | ${f1(med(rs.map((r) => r.push_p95_ms)))} ms |`);
  }
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
