'use strict';
// The programs the tests run, found or failed: a missing tool or binary
// fails the test that needs it, with a message naming what is missing and
// how to get it. Nothing is ever skipped for want of a program, so that a
// suite cannot pass by running nothing.
//
//   tool('openssl')                        // its path, or throws
//   built('TLSPLANE_AGENT', 'agent/tlsplane-agent', 'the agent')  // likewise for our binaries

const fs = require('node:fs');
const path = require('node:path');

// Debian packages that bring each tool (scripts/install-deps installs them).
const PACKAGES = {
  openssl: 'openssl',
  curl: 'curl',
  sqlite3: 'sqlite3',
  prlimit: 'util-linux',
  setpriv: 'util-linux',
  testssl: 'testssl.sh',
  lego: 'lego',
  pebble: 'pebble',
  'pebble-challtestsrv': 'pebble',
  jq: 'jq',
};

const found = new Map();

function executable(file) {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch (_) {
    return false;
  }
}

// The path of `name` on PATH. Throws when there is none.
function tool(name) {
  if (found.has(name)) return found.get(name);
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    if (!dir) continue;
    const file = path.join(dir, name);
    if (executable(file)) {
      found.set(name, file);
      return file;
    }
  }
  const pkg = PACKAGES[name] || name;
  throw new Error(
    `${name} not found on PATH (${process.env.PATH || ''}): the tests need it; ` +
      `install it with scripts/install-deps (Debian package ${pkg})`,
  );
}

// A tlsplane binary: $envVar when set (it must exist), else the build
// tree's `relative` (build/<relative>). Throws when the file is missing.
function built(envVar, relative, what) {
  const fromEnv = process.env[envVar];
  const file = fromEnv || path.resolve(__dirname, '../../../build', relative);
  if (executable(file)) return file;
  throw new Error(
    `${what} not found: ${file} ${fromEnv ? `(from ${envVar})` : `(set ${envVar} to the binary)`} ` +
      `is not an executable file; build it with \`cmake -S . -B build && cmake --build build\` ` +
      `(ctest sets ${envVar})`,
  );
}

module.exports = { tool, built, PACKAGES };
