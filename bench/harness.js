'use strict';
// What the Node benches share: tests/integration's harness (lib) and its
// node_modules, the command line, the clock, quantiles, CPU time from
// /proc, and a write retried while a server's write lane is full.
//
//   const { lib, opt, now, delay, statusName, q, cpuMs, untilAnswered } = require('./harness');
//   const N = Number(opt('clients', '8'));   // --clients N, or 8

const path = require('node:path');
const fs = require('node:fs');

const lib = path.resolve(__dirname, '../tests/integration/lib');
const grpc = require(path.resolve(__dirname, '../tests/integration/node_modules/@grpc/grpc-js'));

const args = process.argv.slice(2);
// The value after --name on the command line, or dflt.
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};

const now = () => Number(process.hrtime.bigint()) / 1e6;
const delay = (ms) => new Promise((r) => setTimeout(r, ms));
const statusName = (code) => Object.keys(grpc.status).find((k) => grpc.status[k] === code) || String(code);

// The p-quantile of xs (null when empty).
const q = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : null;
};

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

// Calls fn until it is answered with anything but UNAVAILABLE (the
// server's write lane full), or stopped() holds, waiting between tries
// (50 ms doubling to 1 s, half of it random). answered(code) is told of
// every answer ('OK' or the status's name). true when fn succeeded.
async function untilAnswered(fn, answered, stopped) {
  for (let backoff = 50; ; backoff = Math.min(2 * backoff, 1000)) {
    try {
      await fn();
      answered('OK');
      return true;
    } catch (e) {
      const code = statusName(e.code);
      answered(code);
      if (code !== 'UNAVAILABLE' || stopped()) return false;
      await delay(backoff * (0.5 + Math.random() / 2));
    }
  }
}

module.exports = { lib, grpc, args, opt, now, delay, statusName, q, cpuMs, untilAnswered };
