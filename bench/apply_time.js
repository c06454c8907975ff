#!/usr/bin/env node
'use strict';
// How long tlsplane-agent takes to apply a snapshot of N TLS contexts
// (standalone, from a file): one listener whose default context and
// N - 1 SNI routes ("h<i>.bench.example") each have a context of their
// own, each context one ECDSA P-256 certificate and key (--certs
// distinct certificates, cycled: every context still parses and builds
// its own SSL_CTX; --certs all: one certificate per context).
//
//   node bench/apply_time.js [--contexts 1000,10000] [--certs 100|all] [--rounds 3]
//   node bench/apply_time.js --contexts '' --listeners 10000 --shared 10 [--rounds 3]
//
// Certificates are made in this process (one P-256 key for every
// certificate, each with its own serial, CN and SAN, self-signed with
// node:crypto's ECDSA and a small DER encoder): 50,000 take ~3 s, so
// nothing is cached between runs.
//
// For each size, per round, a fresh agent (--workers 2):
//   start   from spawn to "revision 1 applied" (process start, reading and
//           decoding the JSON file, building every SSL_CTX, binding);
//   change  SIGHUP with revision 2, where every context changed (another
//           sessionTimeout): file decode + build beside the running ones + swap;
//   keep    SIGHUP with revision 3, the same content again (all kept);
//   one     SIGHUP with revision 4, one context's certificate replaced by
//           a new one (the listener is rebuilt; the other contexts'
//           SSL_CTXs are reused);
// and the agent's own "(X ms)" of agent_apply (building and swapping,
// without reading the file). RSS: the agent's VmRSS once started, and
// after "one" (the old and new versions of every context existed at once
// during "change all").
//
// --listeners L --shared S: L listeners (each on 127.0.0.1:0, a port of
// its own chosen by the kernel) whose default contexts are S contexts
// (listener i uses context i % S, each a certificate of its own): time
// from spawn to "revision 1 applied", RSS, and the SSL_CTXs built, from
// the agent's /metrics when it has an SSL_CTX metric (a name with
// "ssl_ctx"), else from its log ("N of M contexts built" per listener,
// summed: what main builds, one SSL_CTX per context of each listener);
// then "one": SIGHUP with one of the S contexts' certificate replaced
// (L / S listeners use it). --listener-workers (default 1): each worker
// opens its own socket for every listener (SO_REUSEPORT), so 10,000
// listeners with 2 workers need 20,000 descriptors.
//
// Needs TLSPLANE_AGENT or build/agent/tlsplane-agent (a RelWithDebInfo
// build: a sanitizer build's figures mean nothing).

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const SIZES = opt('contexts', '1000,10000').split(',').filter(Boolean).map(Number);
const CERTS = opt('certs', '100');
const LISTENERS = opt('listeners', '').split(',').filter(Boolean).map(Number);
const SHARED = Number(opt('shared', '10'));
const ROUNDS = Number(opt('rounds', '3'));
const WORKERS = opt('workers', '2');
// A listener's socket is opened once per worker (SO_REUSEPORT): 10,000
// listeners with 2 workers need 20,000 descriptors, this box's hard limit.
const LISTENER_WORKERS = opt('listener-workers', '1');
const AGENT = process.env.TLSPLANE_AGENT || path.resolve(__dirname, '../build/agent/tlsplane-agent');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-apply-bench-'));
process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));

// DER, just what a certificate needs.
function derLen(n) {
  if (n < 128) return Buffer.from([n]);
  const b = [];
  for (; n; n >>= 8) b.unshift(n & 255);
  return Buffer.from([0x80 | b.length, ...b]);
}
const der = (tag, ...parts) => {
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from([tag]), derLen(body.length), body]);
};
const utc = (d) => der(0x17, Buffer.from(`${d.toISOString().slice(2, 19).replace(/[-T:]/g, '')}Z`));
const cnName = (cn) => der(0x30, der(0x31, der(0x30, Buffer.from('0603550403', 'hex'), der(0x0c, Buffer.from(cn)))));
const ECDSA_SHA256 = Buffer.from('300a06082a8648ce3d040302', 'hex');

// One P-256 key; certs(k) makes certificate #k (serial k + 1, CN and SAN
// c<k>.bench.example), self-signed with that key.
function certMaker() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const key = privateKey.export({ type: 'pkcs8', format: 'pem' });
  const nb = new Date(Date.now() - 3600e3);
  const na = new Date(Date.now() + 30 * 86400e3);
  const made = new Map();
  return (k) => {
    if (made.has(k)) return made.get(k);
    const cn = `c${k}.bench.example`;
    const serial = Buffer.alloc(9);
    serial[0] = 1;
    serial.writeBigUInt64BE(BigInt(k) + 1n, 1);
    const san = der(0x30, Buffer.from('0603551d11', 'hex'), der(0x04, der(0x30, der(0x82, Buffer.from(cn)))));
    const tbs = der(0x30, Buffer.from('a003020102', 'hex'), der(0x02, serial), ECDSA_SHA256, cnName(cn),
      der(0x30, utc(nb), utc(na)), cnName(cn), spki, der(0xa3, der(0x30, san)));
    const sig = crypto.sign('sha256', tbs, privateKey);
    const cert = der(0x30, tbs, ECDSA_SHA256, der(0x03, Buffer.from([0]), sig));
    const b64 = cert.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
    const c = { cert: `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`, key };
    made.set(k, c);
    return c;
  };
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

// certs(k): certificate k of the cycle (nCerts of them; Infinity: one per
// context); oneChanged: that context gets a certificate no other has.
function snapshot(revision, n, certs, nCerts, port, sessionTimeout, oneChanged = -1) {
  const contexts = {};
  const routes = [];
  for (let i = 0; i < n; i++) {
    const c = i === oneChanged ? certs(n + 1 + i) : certs(Number.isFinite(nCerts) ? i % nCerts : i);
    const name = `tlsContexts/ctx-${i}`;
    contexts[name] = {
      tlsContext: { name, certificates: [`certificates/cert-${i}`], sessionTimeout },
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

// L listeners on port 0, listener i on context i % shared; changed: the
// index of a context whose certificate is replaced.
function listenersSnapshot(revision, l, shared, certs, changed = -1) {
  const ctx = [];
  for (let j = 0; j < shared; j++) {
    const c = certs(j === changed ? 1000000 + j : j);
    const name = `tlsContexts/shared-${j}`;
    ctx.push({
      tlsContext: { name, certificates: [`certificates/shared-${j}`], sessionTimeout: '300s' },
      certificates: [{ certificate: { name: `certificates/shared-${j}`, certificateChainPem: c.cert }, privateKeyPem: c.key }],
    });
  }
  const listeners = [];
  for (let i = 0; i < l; i++) {
    const c = ctx[i % shared];
    listeners.push({
      listener: { name: `listeners/l-${i}`, address: '127.0.0.1:0', defaultTlsContext: c.tlsContext.name, upstream: '127.0.0.1:9' },
      tlsContexts: { [c.tlsContext.name]: c },
    });
  }
  return { revision: String(revision), listeners };
}

function rssKib(pid) {
  return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
}

function get(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.on('data', (c) => {
        body += c;
      });
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

// A fresh agent on file: { proc, waitFor(re), log() }.
function startAgent(file, metricsPort, workers = WORKERS) {
  let log = '';
  const waiters = [];
  const proc = spawn(AGENT, ['--config', file, '--workers', workers, '--metrics-listen', metricsPort ? `127.0.0.1:${metricsPort}` : 'off'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stderr.on('data', (c) => {
    log += c.toString();
    for (const w of [...waiters]) w();
  });
  const waitFor = (re) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timeout waiting for ${re}: ${log.slice(-2000)}`)), 300000);
    const check = () => {
      const m = re.exec(log);
      if (m) {
        waiters.splice(waiters.indexOf(check), 1);
        clearTimeout(timer);
        resolve({ at: process.hrtime.bigint(), m });
      }
    };
    waiters.push(check);
    check();
  });
  return { proc, waitFor, log: () => log };
}

const ms = (a, b) => Number(b - a) / 1e6;

async function stopAgent(proc) {
  proc.kill('SIGTERM');
  await new Promise((r) => proc.on('exit', r));
}

// The SSL_CTX figures of the agent's /metrics: every sample whose name
// has "ssl_ctx" ({} when there is none).
async function sslCtxMetrics(port) {
  const out = {};
  const body = await get(`http://127.0.0.1:${port}/metrics`);
  for (const line of body.split('\n')) {
    if (line.startsWith('#') || !/ssl_ctx/i.test(line)) continue;
    const [k, v] = line.trim().split(/\s+/);
    out[k] = Number(v);
  }
  return out;
}

// The agent's log drops lines its stderr does not take fast enough (10,000
// listeners log 10,000 "serving" lines at once): wait for the "applied"
// line, or for /metrics' tlsplane_config_revision to reach rev (asked every
// 200 ms after the first second; such a time is marked "metrics" and is
// late by up to 200 ms plus the /metrics call).
async function waitApplied(a, rev, re, metricsPort) {
  let done = false;
  const viaLog = a.waitFor(re).then((r) => ({ ...r, by: 'log' }));
  const viaMetrics = (async () => {
    await delay(1000);
    while (!done) {
      const body = await get(`http://127.0.0.1:${metricsPort}/metrics`).catch(() => '');
      const m = /^tlsplane_config_revision (\d+)/m.exec(body);
      if (m && Number(m[1]) >= rev) return { at: process.hrtime.bigint(), m: null, by: 'metrics' };
      await delay(200);
    }
    return new Promise(() => {});
  })();
  const r = await Promise.race([viaLog, viaMetrics]);
  done = true;
  return r;
}

const delay = (t) => new Promise((r) => setTimeout(r, t));

async function listenersRound(l, shared, certs) {
  const file = path.join(dir, `listeners-${l}.json`);
  write(file, listenersSnapshot(1, l, shared, certs));
  const size = fs.statSync(file).size;
  const metricsPort = await freePort();
  const t0 = process.hrtime.bigint();
  const a = startAgent(file, metricsPort, LISTENER_WORKERS);
  const started = await waitApplied(a, 1, /revision 1 applied: (\d+) new.*\((\d+\.\d) ms\)/, metricsPort);
  const rss = rssKib(a.proc.pid);
  const built = (rev) => {
    let n = 0;
    let lines = 0;
    const re = new RegExp(`revision ${rev}; (\\d+) of (\\d+) contexts built`, 'g');
    for (const m of a.log().matchAll(re)) {
      n += Number(m[1]);
      lines++;
    }
    return { n, lines };
  };
  const metrics1 = await sslCtxMetrics(metricsPort).catch(() => ({}));
  const built1 = built(1);
  write(file, listenersSnapshot(2, l, shared, certs, 0));
  const t1 = process.hrtime.bigint();
  a.proc.kill('SIGHUP');
  const one = await waitApplied(a, 2, /revision 2 applied: 0 new, (\d+) changed.*\((\d+\.\d) ms\)/, metricsPort);
  const metrics2 = await sslCtxMetrics(metricsPort).catch(() => ({}));
  const built2 = built(2);
  await stopAgent(a.proc);
  return {
    listeners: l,
    shared_contexts: shared,
    file_mib: size / 1048576,
    start_ms: ms(t0, started.at),
    start_by: started.by,
    start_apply_ms: started.m ? Number(started.m[2]) : null,
    rss_mib: rss / 1024,
    ssl_ctx_metrics: metrics1,
    contexts_built_log: built1.n,
    listeners_logged: built1.lines,
    log_dropped: [...a.log().matchAll(/(\d+) log lines dropped/g)].reduce((t, m) => t + Number(m[1]), 0),
    one_changed_listeners: one.m ? Number(one.m[1]) : null,
    one_ms: ms(t1, one.at),
    one_by: one.by,
    one_apply_ms: one.m ? Number(one.m[2]) : null,
    one_ssl_ctx_metrics: metrics2,
    one_contexts_built_log: built2.n,
  };
}

async function round(n, certs, nCerts) {
  const file = path.join(dir, `snap-${n}.json`);
  const port = await freePort();
  write(file, snapshot(1, n, certs, nCerts, port, '300s'));
  const size = fs.statSync(file).size;
  const t0 = process.hrtime.bigint();
  const { proc, waitFor, log: logText } = startAgent(file, 0);
  const started = await waitFor(/revision 1 applied: (\d+) new.*\((\d+\.\d) ms\)/);
  const rssStart = rssKib(proc.pid);
  write(file, snapshot(2, n, certs, nCerts, port, '600s'));
  const t1 = process.hrtime.bigint();
  proc.kill('SIGHUP');
  const changed = await waitFor(/revision 2 applied: 0 new, (\d+) changed.*\((\d+\.\d) ms\)/);
  write(file, snapshot(3, n, certs, nCerts, port, '600s'));
  const t2 = process.hrtime.bigint();
  proc.kill('SIGHUP');
  const kept = await waitFor(/revision 3 applied: 0 new, 0 changed, (\d+) kept.*\((\d+\.\d) ms\)/);
  write(file, snapshot(4, n, certs, nCerts, port, '600s', Math.floor(n / 2)));
  const t3 = process.hrtime.bigint();
  proc.kill('SIGHUP');
  const one = await waitFor(/revision 4 applied: 0 new, 1 changed.*\((\d+\.\d) ms\)/);
  if (!/revision 4; 1 of \d+ contexts built/.test(logText())) throw new Error(`revision 4 rebuilt more than one context: ${logText().slice(-600)}`);
  const rss = rssKib(proc.pid);
  await stopAgent(proc);
  return {
    contexts: n,
    certificates: Number.isFinite(nCerts) ? Math.min(n, nCerts) : n,
    file_mib: size / 1048576,
    start_ms: ms(t0, started.at),
    start_apply_ms: Number(started.m[2]),
    change_ms: ms(t1, changed.at),
    change_apply_ms: Number(changed.m[2]),
    keep_ms: ms(t2, kept.at),
    keep_apply_ms: Number(kept.m[2]),
    one_ms: ms(t3, one.at),
    one_apply_ms: Number(one.m[1]),
    rss_start_mib: rssStart / 1024,
    rss_mib: rss / 1024,
  };
}

(async () => {
  if (!fs.existsSync(AGENT)) throw new Error(`no agent at ${AGENT} (set TLSPLANE_AGENT)`);
  const certs = certMaker();
  const nCerts = CERTS === 'all' ? Infinity : Number(CERTS);
  const med = (xs) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] : NaN);
  const rows = [];
  for (const n of SIZES) {
    const t = Date.now();
    for (let k = 0; k < Math.min(n, nCerts); k++) certs(k);
    console.error(`${Math.min(n, nCerts)} certificates made in ${Date.now() - t} ms`);
    for (let r = 0; r < ROUNDS; r++) {
      const row = await round(n, certs, nCerts);
      console.log(JSON.stringify(row));
      rows.push(row);
    }
  }
  const lrows = [];
  for (const l of LISTENERS) {
    for (let r = 0; r < ROUNDS; r++) {
      const row = await listenersRound(l, SHARED, certs);
      console.log(JSON.stringify(row));
      lrows.push(row);
    }
  }
  if (SIZES.length) {
    console.log('\n| contexts | certificates | file | start (spawn → applied) | of which apply | change all (SIGHUP → applied) | of which apply | keep all | of which apply | change one | of which apply | RSS started / after |');
    console.log('|---|---|---|---|---|---|---|---|---|---|---|---|');
  }
  for (const n of SIZES) {
    const rs = rows.filter((r) => r.contexts === n);
    const f = (k) => med(rs.map((r) => r[k]));
    console.log(`| ${n} | ${f('certificates')} | ${f('file_mib').toFixed(1)} MiB | ${f('start_ms').toFixed(0)} ms | ${f('start_apply_ms').toFixed(0)} ms | ${f('change_ms').toFixed(0)} ms | ${f('change_apply_ms').toFixed(0)} ms | ${f('keep_ms').toFixed(0)} ms | ${f('keep_apply_ms').toFixed(0)} ms | ${f('one_ms').toFixed(0)} ms | ${f('one_apply_ms').toFixed(0)} ms | ${f('rss_start_mib').toFixed(0)} / ${f('rss_mib').toFixed(0)} MiB |`);
  }
  if (LISTENERS.length) {
    console.log('\n| listeners | shared contexts | file | start (spawn → applied) | of which apply | RSS | SSL_CTXs (metrics) | contexts built (log lines that reached it) | change one context: listeners / time / of which apply / built (log) |');
    console.log('|---|---|---|---|---|---|---|---|---|');
  }
  for (const l of LISTENERS) {
    const rs = lrows.filter((r) => r.listeners === l);
    const f = (k) => med(rs.map((r) => r[k]).filter((x) => x !== null));
    const m = rs[rs.length - 1].ssl_ctx_metrics;
    const metrics = Object.keys(m).length ? Object.entries(m).map(([k, v]) => `${k} ${v}`).join(', ') : 'no ssl_ctx metric';
    console.log(`| ${l} | ${SHARED} | ${f('file_mib').toFixed(1)} MiB | ${f('start_ms').toFixed(0)} ms | ${f('start_apply_ms').toFixed(0)} ms | ${f('rss_mib').toFixed(0)} MiB | ${metrics} | ${f('contexts_built_log')} of ${f('listeners_logged')} lines | ${f('one_changed_listeners')} / ${f('one_ms').toFixed(0)} ms / ${f('one_apply_ms').toFixed(0)} ms / ${f('one_contexts_built_log')} |`);
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
