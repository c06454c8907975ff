'use strict';
// `openssl ocsp` answering for a PKI (lib/pki.js) from its index, on
// 127.0.0.1:port, each response valid one minute (-nmin 1) and signed by
// the PKI's OCSP responder certificate. It reads the index when it
// starts: the leaves it answers for go into the index first
// (p.ocspLeaf(name, `http://127.0.0.1:${port}`)).
//
//   const r = await OcspResponder.start(p, port);
//   r.out          // what it printed
//   await r.stop() // SIGKILL, and its exit

const { spawn } = require('node:child_process');
const { tool } = require('./tools');
const procs = require('./procs');
const { waitFor } = require('./wait');

class OcspResponder {
  static async start(p, port) {
    const r = new OcspResponder();
    r.port = port;
    r.out = '';
    const [cmd, argv] = procs.command(tool('openssl'), [
      'ocsp', '-index', 'index.txt', '-port', String(port), '-rsigner', 'ocsp-responder.crt',
      '-rkey', 'ocsp-responder.key', '-CA', 'ca.crt', '-nmin', '1', '-ignore_err',
    ]);
    r.proc = spawn(cmd, argv, { cwd: p.dir, stdio: ['ignore', 'pipe', 'pipe'] });
    r.proc.stdout.on('data', (d) => { r.out += d; });
    r.proc.stderr.on('data', (d) => { r.out += d; });
    r.exited = new Promise((resolve) => r.proc.on('exit', resolve));
    procs.track(r);
    r.proc.on('exit', () => procs.untrack(r));
    // Not probed by connecting: a connection that sends nothing blocks it.
    await waitFor(`openssl ocsp listening on ${port}`, () => /waiting for OCSP client connections/.test(r.out), { timeoutMs: 10000 });
    return r;
  }

  get running() {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async stop() {
    if (this.running) this.proc.kill('SIGKILL');
    await this.exited;
  }
}

module.exports = { OcspResponder };
