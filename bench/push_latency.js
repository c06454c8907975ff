#!/usr/bin/env node
'use strict';
// Push latency: from an API commit (a certificate rotated with
// UpdateCertificate) until every agent has acked the new revision, as the
// server sees it (GetRollout: agents_applied == N, polled back to back).
//
//   node bench/push_latency.js [--real 1,10] [--fake 100] [--iterations 100]
//
// Scenarios, each on a fresh tlsplane-server (TLS, its own data dir):
//   real N   N real tlsplane-agent processes (--workers 1), each enrolled
//            with a join token (mutual TLS), each with a listener of its
//            own (agent selector agent=<id>: one address per agent on one
//            host) on the rotated certificate's context: every agent
//            builds the new SSL_CTX, swaps it in, acks, then writes its
//            cache file.
//   fake N   N stream clients in this process (tests/integration's
//            FakeAgent: @grpc/grpc-js, one connection each, each enrolled
//            with a join token carrying its labels and connected with its
//            own agent certificate), which ack every snapshot as soon as it
//            arrives: the server's side of the push alone. Two label layouts:
//            "distinct" (a listener and a label set per agent: the server
//            builds N snapshots per revision) and "shared" (one listener,
//            one label set for all: one snapshot build, N sends).
// Each iteration: UpdateCertificate alternating between two certificates
// (so that every commit changes what the agents serve), t0 just before the
// call; the figure is t(all acked) - t0, which includes the API call and
// its commit (reported separately as "commit").
//
// Uses tests/integration's harness and node_modules (cd tests/integration
// && npm ci), TLSPLANE_SERVER / TLSPLANE_AGENT or build/.

const path = require('node:path');
const fs = require('node:fs');
const os = require('node:os');
const { execFileSync } = require('node:child_process');
const lib = path.resolve(__dirname, '../tests/integration/lib');
const { Server, noteSecret } = require(`${lib}/server`);
const { connect } = require(`${lib}/reflect`);
const { CpAgent } = require(`${lib}/cpagent`);
const { FakeAgent } = require(`${lib}/fakeagent`);
const net = require('node:net');

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const REAL = opt('real', '1,10').split(',').filter(Boolean).map(Number);
const FAKE = opt('fake', '100').split(',').filter(Boolean).map(Number);
const ITER = Number(opt('iterations', '100'));
const WARMUP = 5;

const now = () => Number(process.hrtime.bigint()) / 1e6;
const delay = (ms) => new Promise((r) => setTimeout(r, ms));

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

async function setup(certs) {
  const srv = await Server.start({ tls: true });
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

// A stream client that acks every snapshot at once; its record's labels
// (what it receives) come from its join token.
async function fakeAgent(srv, conn, name, labels) {
  const a = await FakeAgent.enroll({ server: srv, conn }, name, { agentLabels: labels, claim: labels, version: 'bench-fake' });
  a.call.on('data', (m) => {
    a.ack(m.snapshot);
    a.snapshots.length = 0; // only the count matters here
  });
  let snapshots = 0;
  a.call.on('data', () => {
    snapshots++;
  });
  return {
    first: new Promise((resolve, reject) => {
      a.call.once('data', resolve);
      a.call.once('error', reject);
    }),
    get snapshots() {
      return snapshots;
    },
    close() {
      a.close();
    },
  };
}

// utime + stime of pids (and their threads), in ms.
function cpuMs(pids) {
  const tick = 100; // USER_HZ
  let t = 0;
  for (const pid of pids) {
    try {
      const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
      t += (Number(f[11]) + Number(f[12])) * (1000 / tick);
    } catch (_) {
      // gone
    }
  }
  return t;
}

async function measure(api, certs, n, label, pids = [], srvPid = null) {
  const lat = [];
  const commit = [];
  let cpu0 = 0;
  let srv0 = 0;
  for (let i = 0; i < WARMUP + ITER; i++) {
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
      const ro = await api.AgentService.GetRollout({ revision: r.revision });
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
  const q = (xs, p) => {
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor(p * s.length))];
  };
  const row = {
    scenario: label, agents: n, iterations: ITER,
    p50_ms: q(lat, 0.5), p99_ms: q(lat, 0.99), max_ms: Math.max(...lat),
    commit_p50_ms: q(commit, 0.5), commit_p99_ms: q(commit, 0.99),
    // CPU per push: each agent's (real agents only; includes its 10 s stats
    // and the GetRollout polling's share is the server's), and the server's.
    agent_cpu_ms_per_push: pids.length ? (cpuMs(pids) - cpu0) / ITER / pids.length : null,
    server_cpu_ms_per_push: srvPid ? (cpuMs([srvPid]) - srv0) / ITER : null,
  };
  console.log(JSON.stringify(row));
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
    return await measure(api, certs, n, `real ${n}`, agents.map((a) => a.proc.pid), srv.proc.pid);
  } finally {
    for (const a of agents) await a.stop();
    conn.close();
    await srv.stop();
  }
}

async function fakeScenario(certs, n, layout) {
  const { srv, conn, api } = await setup(certs);
  const fakes = [];
  try {
    const ports = await benchPorts(layout === 'shared' ? 1 : n);
    if (layout === 'shared') await listener(api, 'web-all', ports[0], { fleet: 'bench' });
    for (let i = 0; i < n; i++) {
      const id = `fake-${i}`;
      if (layout !== 'shared') await listener(api, `web-${i}`, ports[i], { agent: id });
      fakes.push(await fakeAgent(srv, conn, id, layout === 'shared' ? { fleet: 'bench' } : { agent: id }));
    }
    await Promise.all(fakes.map((f) => f.first));
    return await measure(api, certs, n, `fake ${n} (${layout} labels)`, [], srv.proc.pid);
  } finally {
    for (const f of fakes) f.close();
    conn.close();
    await srv.stop();
  }
}

(async () => {
  const certs = makeCerts();
  const rows = [];
  for (const n of REAL) rows.push(await realScenario(certs, n));
  for (const n of FAKE) {
    rows.push(await fakeScenario(certs, n, 'shared'));
    rows.push(await fakeScenario(certs, n, 'distinct'));
  }
  console.log('\n| agents | p50 | p99 | max | of which the API call (p50 / p99) | CPU per push: each agent / the server |');
  console.log('|---|---|---|---|---|---|');
  const f = (x) => `${x.toFixed(1)} ms`;
  const c = (x) => (x === null ? '–' : `${x.toFixed(2)} ms`);
  for (const r of rows) {
    console.log(`| ${r.scenario} | ${f(r.p50_ms)} | ${f(r.p99_ms)} | ${f(r.max_ms)} | ${f(r.commit_p50_ms)} / ${f(r.commit_p99_ms)} | ${c(r.agent_cpu_ms_per_push)} / ${c(r.server_cpu_ms_per_push)} |`);
  }
  process.exit(0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
