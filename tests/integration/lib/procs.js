'use strict';
// The processes and temp directories the tests start, in one place, so that
// none outlives the test process: every live process is SIGKILLed on
// 'exit' (and on SIGINT / SIGTERM / SIGHUP of the test process), temp dirs
// are removed unless TLSPLANE_KEEP_DATA is set, and every process gets a
// parent-death signal (util-linux's setpriv), so even a SIGKILLed test
// process takes its children with it.
//
//   const [cmd, argv] = procs.command(binary, args);  // spawn(cmd, argv)
//   procs.track(obj);    // obj.proc is a ChildProcess
//   procs.untrack(obj);  // on its 'exit'
//   procs.tempDir('tlsplane-x-');

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { tool } = require('./tools');

const live = new Set();
const tempDirs = new Set();

// LeakSanitizer's suppressions (ASan builds): leaks inside system
// libraries, which tests/lsan.supp names with the reason. Every process
// the tests start inherits it.
if (process.env.LSAN_OPTIONS === undefined) {
  process.env.LSAN_OPTIONS = `suppressions=${path.resolve(__dirname, '../../lsan.supp')}`;
}

function killAll() {
  for (const o of live) {
    try {
      o.proc.kill('SIGKILL');
    } catch (_) {
      // already gone
    }
  }
  live.clear();
  if (!process.env.TLSPLANE_KEEP_DATA) {
    for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
  }
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => {
    killAll();
    process.exit(128 + os.constants.signals[sig]);
  });
}

// The command line that runs binary with args and a parent-death signal
// (util-linux's setpriv: required, so that no test leaves processes
// behind however it ends).
function command(binary, args) {
  return [tool('setpriv'), ['--pdeathsig', 'SIGKILL', '--', binary, ...args]];
}

function tempDir(prefix) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.add(d);
  return d;
}

// SIGTERM, then wait for o.exited; SIGKILL after ms. Resolves with o.exit
// ({code, signal}, plus timedOut when it had to be killed).
async function terminate(o, ms) {
  o.stopRequested = true;
  o.proc.kill('SIGTERM');
  let timer;
  const r = await Promise.race([
    o.exited,
    new Promise((resolve) => {
      timer = setTimeout(() => resolve('timeout'), ms);
    }),
  ]);
  clearTimeout(timer);
  if (r === 'timeout') {
    o.proc.kill('SIGKILL');
    await o.exited;
    o.exit.timedOut = true;
  }
  return o.exit;
}

// Runs every step of a teardown (async functions) even when one throws,
// then throws the first error: a failed stop must not leave the servers
// and databases of the later steps running, which would keep the test
// process alive until its timeout.
async function teardown(...steps) {
  let first = null;
  for (const step of steps) {
    try {
      await step();
    } catch (err) {
      first = first || err;
    }
  }
  if (first) throw first;
}

module.exports = {
  teardown,
  command,
  terminate,
  tempDir,
  trackDir: (d) => tempDirs.add(d),
  track: (o) => live.add(o),
  untrack: (o) => live.delete(o),
};
