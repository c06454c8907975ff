'use strict';
// A TLS 1.3 KeyUpdate flood from a client that never reads: each
// KeyUpdate asks for one back, which OpenSSL writes on its own. The agent
// closes the connection past 32 KeyUpdates a minute (cause
// key_update_limit), and while it runs never reads a client that more
// than a bounded amount already waits for: its memory stays flat.
// The client is tests/tools/tls_keyupdate_flood.c (Node's tls cannot send
// a KeyUpdate).

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { exchange, HOST } = require('./lib/tlsclient');

const UPDATES = 2000000;

function floodTool() {
  const candidates = [process.env.TLSPLANE_KEYUPDATE_FLOOD, path.resolve(__dirname, '../../build/tests/tls_keyupdate_flood')];
  const found = candidates.find((c) => c && fs.existsSync(c));
  assert.ok(found, `tls_keyupdate_flood not found (set TLSPLANE_KEYUPDATE_FLOOD; looked at ${candidates.filter(Boolean).join(', ')})`);
  return found;
}

// Runs the flood; resolves { sent, result } from its one line of output.
function flood(port, count, { timeoutMs = 240000 } = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(floodTool(), [HOST, String(port), String(count)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout.on('data', (d) => { out += d; });
    proc.stderr.on('data', (d) => { out += d; });
    const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    proc.on('error', reject);
    proc.on('exit', (code, signal) => {
      clearTimeout(timer);
      const m = /^sent (\d+) (closed|stalled|done)$/m.exec(out);
      if (code !== 0 || !m) {
        reject(new Error(`tls_keyupdate_flood exited ${code ?? signal}: ${out}`));
        return;
      }
      resolve({ sent: Number(m[1]), result: m[2] });
    });
  });
}

function rssBytes(pid) {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]) * 1024;
}

describe('TLS 1.3 KeyUpdate flood', () => {
  let up;
  let agent;

  before(async () => {
    const p = pki();
    up = await Upstream.start({ mode: 'echo' });
    agent = await Agent.start(snapshot(1, [
      listener('web', { upstream: up.address, defaultContext: tlsContext('web', { certs: [p.rsa] }) }),
    ]));
  });

  after(async () => {
    if (agent) await agent.stopClean();
    if (up) await up.close();
  });
  failOnCrash({ afterEach }, () => [agent]);

  test(`${UPDATES} KeyUpdates from a client that never reads: closed past the limit and counted, RSS stays flat`, async () => {
    const port = agent.port('web');
    const L = { listener: 'listeners/web', cause: 'key_update_limit' };
    // Warm the agent up (a handshake of each kind its allocator will see).
    assert.equal((await exchange(port, {})).ok, true);
    const m0 = await agent.metrics();
    const rss0 = rssBytes(agent.proc.pid);
    const r = await flood(port, UPDATES);
    const growth = rssBytes(agent.proc.pid) - rss0;
    assert.ok(growth < 16 * 1024 * 1024, `RSS grew by ${(growth / 1048576).toFixed(1)} MB during the flood (${r.sent} KeyUpdates, ${r.result})`);
    assert.equal(r.result, 'closed', `the flood ended ${r.result} after ${r.sent} KeyUpdates`);
    assert.ok(r.sent < UPDATES, 'every KeyUpdate was taken');
    await agent.waitForMetrics((m) => m.get('tlsplane_client_errors_total', L) === m0.get('tlsplane_client_errors_total', L) + 1,
      { what: 'key_update_limit counted once' });
    await agent.waitForLog(/listener=listeners\/web client=\S+ cause=key_update_limit reason="more than 32 KeyUpdates in 60 s"/);
    // Other clients are served meanwhile and after.
    assert.equal((await exchange(port, {})).ok, true);
  });
});
