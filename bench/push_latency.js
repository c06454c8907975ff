#!/usr/bin/env node
'use strict';
// Push latency: from an API commit (a certificate rotated with
// UpdateCertificate) until every agent has acked the new revision.
//
//   node bench/push_latency.js [--real 1,10,100] [--fake 100,1000,10000]
//       [--layouts shared,distinct] [--protocol 1|2] [--iterations 100]
//       [--children 4] [--per-child 2500]
//
// Scenarios, each on a fresh tlsplane-server (TLS, its own data dir,
// --max-streams N + 64 so that N agent streams fit beside the API's):
//   real N   N real tlsplane-agent processes (--workers 1), each enrolled
//            with a join token (mutual TLS), each with a listener of its
//            own (agent selector agent=<id>: one address per agent on one
//            host) on the rotated certificate's context: every agent
//            builds the new SSL_CTX, swaps it in, acks, then writes its
//            cache file. "Acked" is the server's view: GetRollout
//            (agents_applied == N) polled back to back.
//   fake N   N stream clients (tests/integration's FakeAgent: @grpc/grpc-js,
//            a connection each, each enrolled with a join token carrying
//            its labels and connected with its own agent certificate)
//            spread over child Node processes (--children, default
//            ceil(N / --per-child), at least 1; fakes i = c, c + k, ...
//            in child c of k), which ack every update as soon as it
//            arrives: the server's side of the push alone. --protocol 2:
//            their hello says protocol 2 and they apply deltas. Two label
//            layouts: "distinct" (a listener and a label set per agent)
//            and "shared" (one listener, one label set for all).
//            "Acked" is counted at the fakes: each child reports (over
//            IPC) the CLOCK_MONOTONIC time at which its last fake wrote
//            its ack of the revision; the figure is the latest of them
//            minus t0 (process.hrtime is CLOCK_MONOTONIC, one clock for
//            every process). Before the next iteration GetRollout is
//            asked (every 10 ms, untimed) until the server counts every
//            agent applied, so that no push overlaps the previous one.
//            GetRollout is not polled back to back here: at 10,000
//            agents it lists every pending agent under the hub's lock
//            and would be most of what the server does.
// Each iteration: UpdateCertificate alternating between two certificates
// (so that every commit changes what the agents serve), t0 just before the
// call; the figure is t(all acked) - t0, which includes the API call and
// its commit (reported separately as "commit"). WARMUP unrecorded
// iterations first, 20 ms between iterations.
//
// Beside it, for the fake scenarios:
//   server CPU per push   utime + stime of the server (/proc/PID/stat, all
//                         its threads) over the measured iterations / their
//                         number (the confirming GetRollout calls included);
//   fakes' CPU per push   the same for the child processes (the load
//                         generator shares the 2 cores);
//   threads               /proc/PID/status Threads of the server with the
//                         agents enrolled but not connected, and with N
//                         streams connected;
//   RSS per agent         (VmRSS with N connected - VmRSS before they
//                         connect) / N, a fresh server per scenario;
//   Get p50/p99           a reader in a child process of its own calling
//                         CertificateService.GetCertificate back to back
//                         (one call in flight) from the first measured
//                         push to the last;
//   setup                 listeners created (8 calls in flight), agents
//                         enrolled (CreateToken then EnrollAgent with a CSR,
//                         one key pair reused for every CSR of a child: the
//                         server signs a certificate per agent; 16 agents in
//                         flight per child), streams connected (200 in
//                         flight per child) until each has its first
//                         update.
//
// Uses tests/integration's harness and node_modules (cd tests/integration
// && npm ci), TLSPLANE_SERVER / TLSPLANE_AGENT or build/. For 10,000
// agents raise the descriptor limit first (ulimit -n 65536): the server
// holds a connection per agent.

const path = require('node:path');
const fs = require('node:fs');
const os = require('node:os');
const { execFileSync, fork } = require('node:child_process');
const { lib, args, opt, now, delay, q, cpuMs } = require('./harness');
const { Server, noteSecret } = require(`${lib}/server`);
const { connect } = require(`${lib}/reflect`);
const { CpAgent } = require(`${lib}/cpagent`);
const { FakeAgent } = require(`${lib}/fakeagent`);
const { makeCsr } = require(`${lib}/util`);
const net = require('node:net');

const REAL = opt('real', '1,10').split(',').filter(Boolean).map(Number);
const FAKE = opt('fake', '100').split(',').filter(Boolean).map(Number);
const LAYOUTS = opt('layouts', 'shared,distinct').split(',').filter(Boolean);
const PROTOCOL = Number(opt('protocol', '2'));
const ITER = Number(opt('iterations', '100'));
const CHILDREN = opt('children', '');
const PER_CHILD = Number(opt('per-child', '2500'));
const WARMUP = 5;


function makeCerts() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-push-bench-'));
  const out = [];
  for (let i = 0; i < 2; i++) {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '30',
      '-subj', `/CN=bench-${i}.example`, '-keyout', `${dir}/k${i}.pem`, '-out', `${dir}/c${i}.pem`,
    ], { stdio: 'ignore' });
    out.push({ cert: fs.readFileSync(`${dir}/c${i}.pem`, 'utf8'), key: fs.readFileSync(`${dir}/k${i}.pem`, 'utf8') });
  }
  fs.rmSync(dir, { recursive: true, force: true });
  return out;
}

// n listener ports below the ephemeral range (an agent's own outgoing
// connections could take an ephemeral one between the check and the bind),
// each checked free.
async function benchPorts(n, base = 23000) {
  const ports = [];
  for (let p = base; ports.length < n; p++) {
    const free = await new Promise((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(p, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (free) ports.push(p);
  }
  return ports;
}

async function setup(certs, maxStreams = 0) {
  const srv = await Server.start({ tls: true, extraArgs: maxStreams ? ['--max-streams', String(maxStreams)] : [] });
  const conn = await connect(srv.address, srv.connectOptions());
  const api = conn.api;
  await api.CertificateService.CreateCertificate({
    certificateId: 'web', certificate: { certificateChainPem: certs[0].cert, privateKeyPem: certs[0].key },
  });
  await api.TlsContextService.CreateTlsContext({ tlsContextId: 'web', tlsContext: { certificates: ['certificates/web'] } });
  return { srv, conn, api };
}

async function listener(api, id, port, selector) {
  await api.ListenerService.CreateListener({
    listenerId: id,
    listener: { address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/web', upstream: '127.0.0.1:9', agentSelector: selector },
  });
}

// Threads and VmRSS (KiB) of a process.
function procStatus(pid) {
  const t = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return { threads: Number(/Threads:\s+(\d+)/.exec(t)[1]), rssKib: Number(/VmRSS:\s+(\d+)/.exec(t)[1]) };
}

// At most `limit` of fn(0..n-1) at once.
async function pool(n, limit, fn) {
  let next = 0;
  const run = async () => {
    while (next < n) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(limit, n) }, run));
}

// opts: iterations (ITER), rolloutApi (api): the server the agents are
// connected to, asked for GetRollout (another server than the one
// written to, in bench/ha.js).
async function measure(api, certs, n, label, pids = [], srvPid = null, opts = {}) {
  const iterations = opts.iterations || ITER;
  const rolloutApi = opts.rolloutApi || api;
  const lat = [];
  const commit = [];
  let cpu0 = 0;
  let srv0 = 0;
  for (let i = 0; i < WARMUP + iterations; i++) {
    if (i === WARMUP) {
      cpu0 = cpuMs(pids);
      srv0 = srvPid ? cpuMs([srvPid]) : 0;
    }
    const c = certs[(i + 1) % 2];
    const t0 = now();
    const r = await api.CertificateService.UpdateCertificate({
      certificate: { name: 'certificates/web', certificateChainPem: c.cert, privateKeyPem: c.key },
      updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
    });
    const t1 = now();
    for (;;) {
      // Another server than the one written to refuses a revision it has
      // not learnt of yet (INVALID_ARGUMENT): not yet, then.
      const ro = await rolloutApi.AgentService.GetRollout({ revision: r.revision }).catch((e) => {
        if (rolloutApi !== api && e.code === 3 && /not a committed revision/.test(e.details)) return null;
        throw e;
      });
      if (ro === null) continue;
      if (ro.agentsApplied === n) break;
      if (ro.agentsFailed.length) throw new Error(`nack: ${ro.agentsFailed}`);
      if (now() - t0 > 30000) throw new Error(`revision ${r.revision}: ${ro.agentsApplied}/${n} applied after 30 s`);
    }
    const t2 = now();
    if (i >= WARMUP) {
      lat.push(t2 - t0);
      commit.push(t1 - t0);
    }
    await delay(20);
  }
  const row = {
    scenario: label, agents: n, iterations,
    p50_ms: q(lat, 0.5), p95_ms: q(lat, 0.95), p99_ms: q(lat, 0.99), max_ms: Math.max(...lat),
    commit_p50_ms: q(commit, 0.5), commit_p99_ms: q(commit, 0.99),
    // CPU per push: each agent's (real agents only; includes its 10 s stats
    // and the GetRollout polling's share is the server's), and the server's.
    agent_cpu_ms_per_push: pids.length ? (cpuMs(pids) - cpu0) / iterations / pids.length : null,
    server_cpu_ms_per_push: srvPid ? (cpuMs([srvPid]) - srv0) / iterations : null,
  };
  if (!opts.quiet) console.log(JSON.stringify(row));
  return row;
}

async function realScenario(certs, n) {
  const { srv, conn, api } = await setup(certs);
  const agents = [];
  try {
    const ports = await benchPorts(n);
    for (let i = 0; i < n; i++) {
      const id = `bench-${i}`;
      await listener(api, `web-${i}`, ports[i], { agent: id });
      const t = await api.TokenService.CreateToken({ tokenId: `join-${id}`, token: { role: 'JOIN', agentId: id, agentLabels: { agent: id } } });
      noteSecret(t.secret);
      agents.push(CpAgent.start(srv, { name: id, labels: { agent: id }, joinToken: t.secret, wait: 'connected', env: { TLSPLANE_RETRY_MAX_MS: '30000' } }));
    }
    const started = await Promise.all(agents.splice(0));
    agents.push(...started);
    const load = os.loadavg()[0];
    const row = await measure(api, certs, n, `real ${n}`, agents.map((a) => a.proc.pid), srv.proc.pid);
    return { ...row, load_before: load, load_after: os.loadavg()[0] };
  } finally {
    for (const a of agents) await a.stop();
    conn.close();
    await srv.stop();
  }
}

// A child process of the bench: fakes (role 'fakes') or the reader
// (role 'reader'); messages over IPC.
function child(role, init) {
  const c = fork(__filename, ['--child', role], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const waiters = [];
  const inbox = [];
  c.on('message', (m) => {
    if (m.type === 'error') {
      console.error(`child ${role}: ${m.error}`);
      process.exit(1);
    }
    inbox.push(m);
    for (const w of waiters.splice(0)) w();
  });
  c.on('exit', (code) => {
    if (code && !c.stopping) {
      console.error(`child ${role} exited with ${code}`);
      process.exit(1);
    }
  });
  c.send({ type: 'init', ...init });
  return {
    proc: c,
    inbox,
    send: (m) => c.send(m),
    // The first message of this type (removed from the inbox) that pred accepts.
    async wait(type, pred = () => true) {
      for (;;) {
        const i = inbox.findIndex((m) => m.type === type && pred(m));
        if (i >= 0) return inbox.splice(i, 1)[0];
        await new Promise((r) => waiters.push(r));
      }
    },
    stop() {
      c.stopping = true;
      c.kill('SIGTERM');
    },
  };
}

async function fakeScenario(certs, n, layout) {
  const { srv, conn, api } = await setup(certs, n + 64);
  const k = CHILDREN ? Number(CHILDREN) : Math.max(1, Math.ceil(n / PER_CHILD));
  const kids = [];
  let reader = null;
  try {
    const load0 = os.loadavg()[0];
    const tl = now();
    const ports = await benchPorts(layout === 'shared' ? 1 : n);
    if (layout === 'shared') await listener(api, 'web-all', ports[0], { fleet: 'bench' });
    else await pool(n, 8, (i) => listener(api, `web-${i}`, ports[i], { agent: `fake-${i}` }));
    const listenersMs = now() - tl;
    const init = {
      address: srv.address, ca: srv.ca.toString(), token: srv.adminToken, n, k, layout, protocol: PROTOCOL,
    };
    const te = now();
    for (let c = 0; c < k; c++) kids.push(child('fakes', { ...init, index: c }));
    await Promise.all(kids.map((c) => c.wait('enrolled')));
    const enrollMs = now() - te;
    await delay(500);
    const before = procStatus(srv.proc.pid);
    const tc = now();
    for (const c of kids) c.send({ type: 'connect' });
    await Promise.all(kids.map((c) => c.wait('ready')));
    const connectMs = now() - tc;
    await delay(1000);
    const held = procStatus(srv.proc.pid);
    const ro = await api.AgentService.GetRollout({ revision: 0 });
    if (ro.agentsConnected !== n) throw new Error(`${ro.agentsConnected} of ${n} agents connected`);
    reader = child('reader', { address: srv.address, ca: srv.ca.toString(), token: srv.adminToken });
    await reader.wait('ready');

    const lat = [];
    const commit = [];
    let srv0 = 0;
    let kids0 = 0;
    const kidPids = kids.map((c) => c.proc.pid);
    for (let i = 0; i < WARMUP + ITER; i++) {
      if (i === WARMUP) {
        reader.send({ type: 'start' });
        srv0 = cpuMs([srv.proc.pid]);
        kids0 = cpuMs(kidPids);
      }
      const c = certs[(i + 1) % 2];
      const t0 = now();
      const r = await api.CertificateService.UpdateCertificate({
        certificate: { name: 'certificates/web', certificateChainPem: c.cert, privateKeyPem: c.key },
        updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
      });
      const t1 = now();
      const acked = await Promise.all(kids.map((kid) => kid.wait('acked', (m) => m.revision === r.revision)));
      const t2 = Math.max(...acked.map((m) => m.at));
      if (acked.some((m) => m.at < t0)) throw new Error('an ack before its commit: not the same clock');
      for (let polls = 0; ; polls++) {
        const ro = await api.AgentService.GetRollout({ revision: r.revision });
        if (ro.agentsApplied === n) break;
        if (ro.agentsFailed.length) throw new Error(`nack: ${ro.agentsFailed.slice(0, 5)}`);
        if (polls > 3000) throw new Error(`revision ${r.revision}: ${ro.agentsApplied}/${n} applied after 30 s`);
        await delay(10);
      }
      if (i >= WARMUP) {
        lat.push(t2 - t0);
        commit.push(t1 - t0);
      }
      await delay(20);
    }
    const srvCpu = (cpuMs([srv.proc.pid]) - srv0) / ITER;
    const kidsCpu = (cpuMs(kidPids) - kids0) / ITER;
    reader.send({ type: 'stop' });
    const gets = await reader.wait('gets');
    let bytes = 0;
    let resources = 0;
    for (const c of kids) c.send({ type: 'stats' });
    for (const c of kids) {
      const st = await c.wait('stats');
      bytes += st.bytes;
      resources += st.resources;
    }
    const row = {
      scenario: `fake ${n} (${layout} labels, protocol ${PROTOCOL})`, agents: n, layout, protocol: PROTOCOL, iterations: ITER,
      children: k,
      p50_ms: q(lat, 0.5), p99_ms: q(lat, 0.99), max_ms: Math.max(...lat),
      commit_p50_ms: q(commit, 0.5), commit_p99_ms: q(commit, 0.99),
      agent_cpu_ms_per_push: null,
      server_cpu_ms_per_push: srvCpu,
      fakes_cpu_ms_per_push: kidsCpu,
      threads_before: before.threads, threads_connected: held.threads,
      rss_before_mib: before.rssKib / 1024, rss_connected_mib: held.rssKib / 1024,
      rss_kib_per_agent: (held.rssKib - before.rssKib) / n,
      get_p50_ms: gets.p50, get_p99_ms: gets.p99, get_max_ms: gets.max, gets: gets.count,
      listeners_s: listenersMs / 1000, enroll_s: enrollMs / 1000, connect_s: connectMs / 1000,
      bytes_received_per_agent: bytes / n, resources_received_per_agent: resources / n,
      load_before: load0, load_after: os.loadavg()[0],
    };
    console.log(JSON.stringify(row));
    return row;
  } finally {
    if (reader) reader.stop();
    for (const c of kids) c.stop();
    conn.close();
    await srv.stop();
  }
}

// Child 'fakes': enrolls and connects fakes init.index, + k, ... of n.
async function fakesChild(init) {
  const ctx = { server: { address: init.address, ca: Buffer.from(init.ca) } };
  ctx.conn = await connect(init.address, { token: init.token, tls: { ca: ctx.server.ca } });
  const ids = [];
  for (let i = init.index; i < init.n; i += init.k) ids.push(`fake-${i}`);
  const keyPair = makeCsr();
  const enrollClient = FakeAgent._client(ctx, { ca: ctx.server.ca });
  const creds = new Array(ids.length);
  await pool(ids.length, 16, async (j) => {
    const labels = init.layout === 'shared' ? { fleet: 'bench' } : { agent: ids[j] };
    creds[j] = await FakeAgent.credentials(ctx, ids[j], { agentLabels: labels, keyPair, client: enrollClient });
  });
  enrollClient.close();
  process.send({ type: 'enrolled' });
  await new Promise((resolve) => process.once('message', resolve)); // connect
  const acks = new Map(); // revision -> fakes that acked it
  const fakes = [];
  const onAck = (revision) => {
    const c = (acks.get(revision) || 0) + 1;
    acks.set(revision, c);
    if (c === ids.length) {
      process.send({ type: 'acked', revision, at: now() });
      acks.delete(revision);
    }
  };
  await pool(ids.length, 200, async (j) => {
    const labels = init.layout === 'shared' ? { fleet: 'bench' } : { agent: ids[j] };
    const a = FakeAgent.connect(ctx, ids[j], creds[j], { claim: labels, version: 'bench-fake', protocol: init.protocol, autoAck: true });
    let first;
    const got = new Promise((resolve) => {
      first = resolve;
    });
    a.onAck = (revision) => {
      // Only the counts matter here: drop what the fake keeps of each update.
      a.snapshots.length = 0;
      if (a.updates) {
        a.updates.length = 0;
        a.deltas.length = 0;
      }
      first();
      onAck(revision);
    };
    a.call.on('error', (e) => {
      if (!process.exiting) process.send({ type: 'error', error: `${ids[j]}: ${e.message}` });
    });
    fakes.push(a);
    await got;
  });
  process.send({ type: 'ready' });
  process.on('message', (m) => {
    if (m.type !== 'stats') return;
    let bytes = 0;
    let resources = 0;
    for (const a of fakes) {
      bytes += a.bytesReceived;
      resources += a.resourcesReceived || 0;
    }
    process.send({ type: 'stats', bytes, resources });
  });
  process.on('SIGTERM', () => {
    process.exiting = true;
    for (const a of fakes) a.close();
    process.exit(0);
  });
}

// Child 'reader': GetCertificate back to back between 'start' and 'stop'.
async function readerChild(init) {
  const conn = await connect(init.address, { token: init.token, tls: { ca: Buffer.from(init.ca) } });
  await conn.api.CertificateService.GetCertificate({ name: 'certificates/web' });
  let on = false;
  process.on('message', (m) => {
    if (m.type === 'start') on = true;
    if (m.type === 'stop') on = false;
  });
  process.send({ type: 'ready' });
  const lat = [];
  while (!on) await delay(5);
  while (on) {
    const t0 = now();
    await conn.api.CertificateService.GetCertificate({ name: 'certificates/web' });
    lat.push(now() - t0);
  }
  process.send({ type: 'gets', count: lat.length, p50: q(lat, 0.5), p99: q(lat, 0.99), max: lat.length ? Math.max(...lat) : null });
  process.on('SIGTERM', () => process.exit(0));
}

module.exports = { makeCerts, benchPorts, listener, procStatus, pool, measure, WARMUP };

if (require.main !== module) {
  // Required by another bench (bench/ha.js) for the helpers above.
} else if (args[0] === '--child') {
  process.once('message', (init) => {
    (args[1] === 'reader' ? readerChild(init) : fakesChild(init)).catch((e) => {
      process.send({ type: 'error', error: e.stack || String(e) });
    });
  });
} else {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}

async function main() {
  const certs = makeCerts();
  const rows = [];
  for (const n of REAL) rows.push(await realScenario(certs, n));
  for (const n of FAKE) {
    for (const layout of LAYOUTS) rows.push(await fakeScenario(certs, n, layout));
  }
  console.log('\n| agents | p50 | p99 | max | of which the API call (p50 / p99) | CPU per push: each agent / the server / the fakes | threads: 0 / N connected | RSS per agent | Get p50 / p99 during pushes | bytes received per agent | setup: listeners / enroll / connect | load (1 min) |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|');
  const f = (x) => `${x.toFixed(1)} ms`;
  const c = (x) => (x === null || x === undefined ? '–' : `${x.toFixed(2)} ms`);
  const o = (x, g) => (x === null || x === undefined ? '–' : g(x));
  for (const r of rows) {
    console.log(`| ${r.scenario} | ${f(r.p50_ms)} | ${f(r.p99_ms)} | ${f(r.max_ms)} | ${f(r.commit_p50_ms)} / ${f(r.commit_p99_ms)} | ${c(r.agent_cpu_ms_per_push)} / ${c(r.server_cpu_ms_per_push)} / ${c(r.fakes_cpu_ms_per_push)} | ${o(r.threads_before, (x) => `${x} / ${r.threads_connected}`)} | ${o(r.rss_kib_per_agent, (x) => `${x.toFixed(1)} KiB`)} | ${o(r.get_p50_ms, (x) => `${x.toFixed(1)} / ${r.get_p99_ms.toFixed(1)} ms`)} | ${o(r.bytes_received_per_agent, (x) => `${x.toFixed(0)} B`)} | ${o(r.listeners_s, (x) => `${x.toFixed(1)} / ${r.enroll_s.toFixed(1)} / ${r.connect_s.toFixed(1)} s`)} | ${r.load_before.toFixed(2)} → ${r.load_after.toFixed(2)} |`);
  }
  process.exit(0);
}
