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
const { waitFor } = require('./lib/wait');
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
