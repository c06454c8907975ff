'use strict';
// The harness itself: a missing binary or tool fails with a message that
// names it and how to get it (never a skip), and waitFor waits for a
// condition with a deadline.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { tool, built } = require('./lib/tools');
const net = require('node:net');
const { waitFor, deadline } = require('./lib/wait');
const { agentBinary } = require('./lib/agent');
const { serverBinary } = require('./lib/server');

// Runs fn with process.env[name] set to value (undefined: unset).
function withEnv(name, value, fn) {
  const saved = process.env[name];
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
  try {
    return fn();
  } finally {
    if (saved === undefined) delete process.env[name];
    else process.env[name] = saved;
  }
}

test('a binary named by its variable but missing fails, naming the file, the variable and how to build it', () => {
  const missing = path.join(os.tmpdir(), `tlsplane-no-such-agent-${process.pid}`);
  withEnv('TLSPLANE_AGENT', missing, () => {
    assert.throws(agentBinary, (e) => {
      assert.match(e.message, /^tlsplane-agent not found: /);
      assert.ok(e.message.includes(missing), e.message);
      assert.match(e.message, /from TLSPLANE_AGENT/);
      assert.match(e.message, /cmake --build build/);
      return true;
    });
  });
  withEnv('TLSPLANE_SERVER', missing, () => {
    assert.throws(serverBinary, /^Error: tlsplane-server not found: .*from TLSPLANE_SERVER/);
  });
});

test('a file that is there but not executable is no binary either', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-harness-'));
  try {
    const f = path.join(dir, 'tlsplane-agent');
    fs.writeFileSync(f, '#!/bin/sh\n', { mode: 0o644 });
    withEnv('TLSPLANE_X', f, () => assert.throws(() => built('TLSPLANE_X', 'x', 'x'), /is not an executable file/));
    fs.chmodSync(f, 0o755);
    withEnv('TLSPLANE_X', f, () => assert.equal(built('TLSPLANE_X', 'x', 'x'), f));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a tool not on PATH fails, naming it and scripts/install-deps', () => {
  assert.throws(() => tool('tlsplane-no-such-tool'), (e) => {
    assert.match(e.message, /^tlsplane-no-such-tool not found on PATH/);
    assert.match(e.message, /scripts\/install-deps/);
    return true;
  });
  withEnv('PATH', '/nonexistent', () => {
    assert.throws(() => tool('prlimit'), /prlimit not found on PATH.*Debian package util-linux/);
  });
  assert.ok(path.isAbsolute(tool('openssl')));
});

test('waitFor: resolves with the first truthy result, rejects at its deadline naming the last failure', async () => {
  let n = 0;
  assert.equal(await waitFor('the third try', () => (++n >= 3 ? `try ${n}` : null), { intervalMs: 1 }), 'try 3');
  await assert.rejects(
    waitFor('never', () => {
      throw new Error('not yet');
    }, { timeoutMs: 50, intervalMs: 5 }),
    /^Error: never: not within 50 ms \(last: not yet\)$/,
  );
});

test('deadline: data that arrived while the event loop was busy wins over a timer that fell due meanwhile', async () => {
  const server = net.createServer();
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const accepted = new Promise((r) => server.once('connection', r));
  const client = net.connect(server.address().port, '127.0.0.1');
  await new Promise((r) => client.once('connect', r));
  const peer = await accepted;
  try {
    for (const [name, arm] of [['deadline', deadline], ['setTimeout', (ms, fn) => {
      const t = setTimeout(fn, ms);
      return () => clearTimeout(t);
    }]]) {
      let got = false;
      let fired = false;
      const cancel = arm(20, () => {
        fired = true;
      });
      const seen = new Promise((r) => peer.once('data', () => {
        got = true;
        cancel();
        r();
      }));
      client.write('x'); // in the kernel at once: libuv writes what it can right away
      // Busy, as when keys are made with openssl synchronously: the data is
      // there and the timer falls due before either is looked at.
      const until = Date.now() + 200;
      while (Date.now() < until);
      await seen;
      await new Promise((r) => setImmediate(r));
      if (name === 'deadline') assert.deepEqual({ got, fired }, { got: true, fired: false }, name);
      else assert.equal(fired, true, 'a plain timer fires first: the case deadline() is for');
    }
  } finally {
    client.destroy();
    peer.destroy();
    server.close();
  }
});
