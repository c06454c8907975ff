#!/usr/bin/env node
'use strict';
// Reads while many writers run: Health/Check and GetCertificate latency
// (p50 / p99 / max over a fixed number of calls) against one
// tlsplane-server (TLS, a fresh data dir) while W concurrent writers keep
// writing certificates with real keys.
//
//   node bench/write_contention.js [--writers 200] [--reads 500] [--contexts 20]
//                                  [--threads N] [--rounds 1]
//
// Each writer loops over three writes, one after the other:
//   create   CreateCertificate of a new id (RSA 2048 PEM key and chain:
//            parse, key match)
//   own      UpdateCertificate of the writer's own certificate, alternating
//            a PKCS#12 (AES-256, PBKDF2: decrypted on the server) and PEM
//   shared   UpdateCertificate of certificates/shared, which --contexts
//            TlsContexts use: every such write rebuilds each of them
// A writer answered UNAVAILABLE (the server's "too many writes at once")
// tries again after an exponential backoff with jitter, as a gRPC retry
// policy would (50 ms doubling up to 1 s, each wait 50-100 % of that);
// the figures count those answers apart from the writes done, and give
// the latency of each write done, its retries included.
//
// The writers run in a child process (their own event loop), so that the
// reader's clock measures the server and not the writers' callbacks. The
// reader first measures without writers (the baseline), then starts the
// writers, waits until they have had 2 x W answers, and measures again:
// --reads sequential calls of each method, interleaved. The writes per
// second are counted over that phase, and over at least 20 s of it.
//
// Uses tests/integration's harness and node_modules (cd tests/integration
// && npm ci), TLSPLANE_SERVER or build/.

const os = require('node:os');
const { fork } = require('node:child_process');
const { lib, args, opt, now, delay, statusName, untilAnswered } = require('./harness');
const { connect } = require(`${lib}/reflect`);

const WRITERS = Number(opt('writers', '200'));
const READS = Number(opt('reads', '500'));
const CONTEXTS = Number(opt('contexts', '20'));
const THREADS = opt('threads', '');
const ROUNDS = Number(opt('rounds', '1'));
const DEADLINE_MS = 60000;
const WRITE_WINDOW_MS = 20000;


// --- the writers (child process) ---

async function writerMain({ address, options, writers }) {
  const { pki, PASSPHRASE } = require(`${lib}/pki`);
  const p = pki();
  const conn = await connect(address, options);
  const certs = conn.api.CertificateService;
  const counts = {}; // "create OK", "shared UNAVAILABLE", ...
  const note = (what, code) => {
    const k = `${what} ${code}`;
    counts[k] = (counts[k] || 0) + 1;
  };
  let stop = false;
  let answers = 0;
  let done = 0; // writes answered OK
  process.on('message', (m) => {
    if (m === 'stop') stop = true;
  });
  const latencies = [];
  const call = async (what, fn) => {
    const t0 = now();
    const answered = (code) => {
      note(what, code);
      answers++;
    };
    if (await untilAnswered(fn, answered, () => stop)) {
      latencies.push(now() - t0);
      done++;
    }
  };
  const own = (i) => `certificates/own-${i}`;
  for (let i = 0; i < writers; i++) {
    await certs.CreateCertificate({
      certificateId: `own-${i}`,
      certificate: { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key },
    }, { deadlineMs: DEADLINE_MS });
  }
  process.send({ ready: true });
  const loop = async (i) => {
    for (let n = 0; !stop; n++) {
      await call('create', () => certs.CreateCertificate({
        certificateId: `w${i}-${n}`,
        certificate: { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key },
      }, { deadlineMs: DEADLINE_MS }));
      if (stop) break;
      const pfx = n % 2 === 0;
      await call('own', () => certs.UpdateCertificate({
        certificate: pfx
          ? { name: own(i), pfx: p.rsa.pfx, passphrase: PASSPHRASE }
          : { name: own(i), certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key },
        updateMask: { paths: pfx ? ['pfx', 'passphrase'] : ['certificate_chain_pem', 'private_key_pem'] },
      }, { deadlineMs: DEADLINE_MS }));
      if (stop) break;
      const c = n % 2 === 0 ? p.rsaRenewed : p.rsa;
      await call('shared', () => certs.UpdateCertificate({
        certificate: { name: 'certificates/shared', certificateChainPem: c.cert, privateKeyPem: p.rsa.key },
        updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
      }, { deadlineMs: DEADLINE_MS }));
    }
  };
  const timer = setInterval(() => process.send({ answers, ok: done }), 100);
  const t0 = now();
  await Promise.all(Array.from({ length: writers }, (_, i) => loop(i)));
  clearInterval(timer);
  process.send({ done: true, counts, seconds: (now() - t0) / 1000, latency: quantiles(latencies) });
  conn.close();
}

// --- the reader and the orchestration (main process) ---

function quantiles(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { p50: q(0.5), p99: q(0.99), max: s[s.length - 1] };
}

async function readPhase(api, n) {
  const health = api['grpc.health.v1.Health'];
  const lat = { health: [], get: [] };
  const errors = {};
  for (let i = 0; i < n; i++) {
    for (const [k, fn] of [
      ['health', () => health.Check({ service: '' }, { deadlineMs: DEADLINE_MS })],
      ['get', () => api.CertificateService.GetCertificate({ name: 'certificates/shared' }, { deadlineMs: DEADLINE_MS })],
    ]) {
      const t0 = now();
      try {
        await fn();
        lat[k].push(now() - t0);
      } catch (e) {
        const key = `${k} ${statusName(e.code)}`;
        errors[key] = (errors[key] || 0) + 1;
      }
    }
  }
  return { health: quantiles(lat.health), get: quantiles(lat.get), errors };
}

async function round(r) {
  const { Server } = require(`${lib}/server`);
  const { pki } = require(`${lib}/pki`);
  const p = pki();
  const srv = await Server.start({ tls: true, extraArgs: THREADS ? ['--threads', THREADS] : [] });
  const conn = await connect(srv.address, srv.connectOptions());
  const api = conn.api;
  let child = null;
  try {
    await api.CertificateService.CreateCertificate({
      certificateId: 'shared', certificate: { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key },
    });
    for (let i = 0; i < CONTEXTS; i++) {
      await api.TlsContextService.CreateTlsContext({ tlsContextId: `ctx-${i}`, tlsContext: { certificates: ['certificates/shared'] } });
    }
    const load0 = os.loadavg()[0];
    const idle = await readPhase(api, READS);

    child = fork(__filename, ['--child'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let answers = 0;
    let writesDone = 0;
    let done = null;
    const finished = new Promise((resolve) => {
      child.on('message', (m) => {
        if (m.answers !== undefined) answers = m.answers;
        if (m.ok !== undefined) writesDone = m.ok;
        if (m.done) {
          done = m;
          resolve();
        }
      });
    });
    const ready = new Promise((resolve) => child.once('message', (m) => m.ready && resolve()));
    child.send({ address: srv.address, options: srv.connectOptions(), writers: WRITERS });
    await ready;
    while (answers < 2 * WRITERS) await delay(20);
    // The write rate is taken over the read phase, and at least
    // WRITE_WINDOW_MS of it: a steady state, however fast the reads are.
    const w0 = { t: now(), n: writesDone };
    const busy = await readPhase(api, READS);
    while (now() - w0.t < WRITE_WINDOW_MS) await delay(50);
    const w1 = { t: now(), n: writesDone };
    const load1 = os.loadavg()[0];
    child.send('stop');
    await finished;
    child = null;
    const row = {
      round: r, writers: WRITERS, contexts: CONTEXTS, reads: READS, threads: THREADS || 'default',
      loadavg_before: Number(load0.toFixed(2)), loadavg_during: Number(load1.toFixed(2)),
      idle, busy, writes: done.counts, write_seconds: Number(done.seconds.toFixed(1)), write_latency: done.latency,
      writes_per_s: Number(((w1.n - w0.n) / ((w1.t - w0.t) / 1000)).toFixed(1)),
    };
    console.log(JSON.stringify(row));
    return row;
  } finally {
    if (child) child.kill('SIGKILL');
    conn.close();
    await srv.stop();
  }
}

async function main() {
  const rows = [];
  for (let r = 0; r < ROUNDS; r++) rows.push(await round(r));
  const f = (x) => `${x.toFixed(1)} ms`;
  const q = (x) => `${f(x.p50)} / ${f(x.p99)} / ${f(x.max)}`;
  console.log(`\n${WRITERS} writers, ${CONTEXTS} contexts on certificates/shared, ${READS} calls of each read`);
  console.log('| round | Health p50 / p99 / max | Get p50 / p99 / max | idle: Health / Get p99 | writes done per s | a write, retries included: p50 / p99 | UNAVAILABLE per s | other errors | load avg |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    let busy = 0;
    const other = {};
    for (const [k, n] of Object.entries(r.writes)) {
      const code = k.split(' ')[1];
      if (code === 'UNAVAILABLE') busy += n;
      else if (code === 'OK') continue;
      else other[k] = n;
    }
    for (const [k, n] of Object.entries(r.busy.errors)) other[`read ${k}`] = n;
    const otherText = Object.entries(other).map(([k, n]) => `${k}: ${n}`).join(', ') || 'none';
    const wl = r.write_latency.p50 === undefined ? '–' : `${f(r.write_latency.p50)} / ${f(r.write_latency.p99)}`;
    console.log(`| ${r.round} | ${q(r.busy.health)} | ${q(r.busy.get)} | ${f(r.idle.health.p99)} / ${f(r.idle.get.p99)} | ${r.writes_per_s.toFixed(0)} | ${wl} | ${(busy / r.write_seconds).toFixed(0)} | ${otherText} | ${r.loadavg_before} → ${r.loadavg_during} |`);
  }
}

if (args.includes('--child')) {
  process.once('message', (m) => writerMain(m).then(() => process.exit(0), (e) => {
    console.error(e);
    process.exit(1);
  }));
} else {
  main().then(() => process.exit(0), (e) => {
    console.error(e);
    process.exit(1);
  });
}
