#!/usr/bin/env node
'use strict';
// How long tlsplane-agent takes to apply a snapshot of N TLS contexts
// (standalone, from a file): one listener whose default context and
// N - 1 SNI routes ("h<i>.bench.example") each have a context of their
// own, each context one ECDSA P-256 certificate and key (100 distinct
// certificates made with openssl, cycled: every context still parses and
// builds its own SSL_CTX).
//
//   node bench/apply_time.js [--contexts 1000,10000] [--rounds 3]
//
// For each size, per round, a fresh agent (--workers 2):
//   start   from spawn to "revision 1 applied" (process start, reading and
//           decoding the JSON file, building every SSL_CTX, binding);
//   change  SIGHUP with revision 2, where every context changed (another
//           sessionTimeout): file decode + build beside the running ones + swap;
//   keep    SIGHUP with revision 3, the same content again (all kept);
//   one     SIGHUP with revision 4, one context changed (the listener is
//           rebuilt; the other contexts' SSL_CTXs are reused);
// and the agent's own "(X ms)" of agent_apply (building and swapping,
// without reading the file). Needs TLSPLANE_AGENT or build/agent/tlsplane-agent
// (a RelWithDebInfo build: a sanitizer build's figures mean nothing).

const { execFileSync, spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const SIZES = opt('contexts', '1000,10000').split(',').map(Number);
const ROUNDS = Number(opt('rounds', '3'));
const AGENT = process.env.TLSPLANE_AGENT || path.resolve(__dirname, '../build/agent/tlsplane-agent');
const N_CERTS = 100;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-apply-bench-'));
process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));

function makeCerts() {
  const certs = [];
  for (let i = 0; i < N_CERTS; i++) {
    const key = path.join(dir, `k${i}.pem`);
    const crt = path.join(dir, `c${i}.pem`);
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '30',
      '-subj', `/CN=c${i}.bench.example`, '-keyout', key, '-out', crt,
    ], { stdio: 'ignore' });
    certs.push({ cert: fs.readFileSync(crt, 'utf8'), key: fs.readFileSync(key, 'utf8') });
  }
  return certs;
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function snapshot(revision, n, certs, port, sessionTimeout, oneChanged = -1) {
  const contexts = {};
  const routes = [];
  for (let i = 0; i < n; i++) {
    const c = certs[i % certs.length];
    const name = `tlsContexts/ctx-${i}`;
    contexts[name] = {
      tlsContext: { name, certificates: [`certificates/cert-${i}`], sessionTimeout: i === oneChanged ? '900s' : sessionTimeout },
      certificates: [{ certificate: { name: `certificates/cert-${i}`, certificateChainPem: c.cert }, privateKeyPem: c.key }],
    };
    if (i > 0) routes.push({ hostname: `h${i}.bench.example`, tlsContext: name });
  }
  return {
    revision: String(revision),
    listeners: [{
      listener: {
        name: 'listeners/bench', address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/ctx-0',
        sniRoutes: routes, upstream: '127.0.0.1:9',
      },
      tlsContexts: contexts,
    }],
  };
}

function write(file, snap) {
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(snap), { mode: 0o600 });
  fs.renameSync(`${file}.tmp`, file);
}

async function round(n, certs) {
  const file = path.join(dir, `snap-${n}.json`);
  const port = await freePort();
  write(file, snapshot(1, n, certs, port, '300s'));
  const size = fs.statSync(file).size;
  let log = '';
  const waiters = [];
  const t0 = process.hrtime.bigint();
  const proc = spawn(AGENT, ['--config', file, '--workers', '2', '--metrics-listen', 'off'], { stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stderr.on('data', (c) => {
    log += c.toString();
    for (const w of [...waiters]) w();
  });
  const waitFor = (re) => new Promise((resolve, reject) => {
    const check = () => {
      const m = re.exec(log);
      if (m) {
        waiters.splice(waiters.indexOf(check), 1);
        resolve({ at: process.hrtime.bigint(), m });
      }
    };
    const timer = setTimeout(() => reject(new Error(`timeout waiting for ${re}: ${log.slice(-2000)}`)), 120000);
    waiters.push(() => {
      check();
    });
    check();
    void timer;
  });
  const ms = (a, b) => Number(b - a) / 1e6;
  const started = await waitFor(/revision 1 applied: (\d+) new.*\((\d+\.\d) ms\)/);
  write(file, snapshot(2, n, certs, port, '600s'));
  const t1 = process.hrtime.bigint();
  proc.kill('SIGHUP');
  const changed = await waitFor(/revision 2 applied: 0 new, (\d+) changed.*\((\d+\.\d) ms\)/);
  write(file, snapshot(3, n, certs, port, '600s'));
  const t2 = process.hrtime.bigint();
  proc.kill('SIGHUP');
  const kept = await waitFor(/revision 3 applied: 0 new, 0 changed, (\d+) kept.*\((\d+\.\d) ms\)/);
  write(file, snapshot(4, n, certs, port, '600s', Math.floor(n / 2)));
  const t3 = process.hrtime.bigint();
  proc.kill('SIGHUP');
  const one = await waitFor(/revision 4 applied: 0 new, 1 changed.*\((\d+\.\d) ms\)/);
  if (!/revision 4; 1 of \d+ contexts built/.test(log)) throw new Error(`revision 4 rebuilt more than one context: ${log.slice(-600)}`);
  const rss = Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${proc.pid}/status`, 'utf8'))[1]);
  proc.kill('SIGTERM');
  await new Promise((r) => proc.on('exit', r));
  return {
    contexts: n,
    file_mib: size / 1048576,
    start_ms: ms(t0, started.at),
    start_apply_ms: Number(started.m[2]),
    change_ms: ms(t1, changed.at),
    change_apply_ms: Number(changed.m[2]),
    keep_ms: ms(t2, kept.at),
    keep_apply_ms: Number(kept.m[2]),
    one_ms: ms(t3, one.at),
    one_apply_ms: Number(one.m[1]),
    rss_mib: rss / 1024,
  };
}

(async () => {
  if (!fs.existsSync(AGENT)) throw new Error(`no agent at ${AGENT} (set TLSPLANE_AGENT)`);
  const certs = makeCerts();
  const rows = [];
  for (const n of SIZES) {
    for (let r = 0; r < ROUNDS; r++) {
      const row = await round(n, certs);
      console.log(JSON.stringify(row));
      rows.push(row);
    }
  }
  const med = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log('\n| contexts | file | start (spawn → applied) | of which apply | change all (SIGHUP → applied) | of which apply | keep all | of which apply | change one | of which apply | RSS |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const n of SIZES) {
    const rs = rows.filter((r) => r.contexts === n);
    const f = (k) => med(rs.map((r) => r[k]));
    console.log(`| ${n} | ${f('file_mib').toFixed(1)} MiB | ${f('start_ms').toFixed(0)} ms | ${f('start_apply_ms').toFixed(0)} ms | ${f('change_ms').toFixed(0)} ms | ${f('change_apply_ms').toFixed(0)} ms | ${f('keep_ms').toFixed(0)} ms | ${f('keep_apply_ms').toFixed(0)} ms | ${f('one_ms').toFixed(0)} ms | ${f('one_apply_ms').toFixed(0)} ms | ${f('rss_mib').toFixed(0)} MiB |`);
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
