'use strict';
// The command lines of both binaries (README.md, agent/README.md):
// --version names the project's version, the git commit and each library
// with the version it reports at run time; -h and --help print the usage
// and exit 0, on the server's commands too; a wrong command line (an
// unknown flag, a missing argument, a bad --log-level) is said in one line
// and a "Try ... --help" line, with exit status 2.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { serverBinary } = require('./lib/server');
const { agentBinary } = require('./lib/agent');

// Neither binary may find a setting of the test's environment.
const CLEAN_ENV = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TLSPLANE_')));

function run(binary, args, env = {}) {
  const r = spawnSync(binary, args, { encoding: 'utf8', timeout: 15000, env: { ...CLEAN_ENV, ...env } });
  assert.equal(r.error, undefined, `${binary} ${args.join(' ')}: ${r.error}`);
  return r;
}

const binaries = () => [
  ['tlsplane-server', serverBinary()],
  ['tlsplane-agent', agentBinary()],
];

// The lines of --version as name -> version.
function versionLines(stdout) {
  const out = new Map();
  for (const line of stdout.trim().split('\n')) {
    const m = /^(\S+) (\S+)/.exec(line);
    assert.ok(m, `a --version line that is not "NAME VERSION": ${JSON.stringify(line)}`);
    out.set(m[1], m[2]);
  }
  return out;
}

test('--version: the version, the git commit and each library with its version', () => {
  const cmake = fs.readFileSync(path.resolve(__dirname, '../../CMakeLists.txt'), 'utf8');
  const projectVersion = /project\(tlsplane VERSION (\S+)/.exec(cmake)[1];
  // This test runs from a git checkout: the commit is known, and is HEAD's
  // (or HEAD's marked as modified) unless the tree changed since the build.
  const git = spawnSync('git', ['-C', path.resolve(__dirname, '../..'), 'rev-parse', '--short=12', 'HEAD'], { encoding: 'utf8' });
  const libs = {
    'tlsplane-server': ['openssl', 'grpc', 'protobuf-c', 'jansson', 'sqlite'],
    'tlsplane-agent': ['openssl', 'grpc', 'protobuf-c', 'jansson', 'libuv', 'http-parser'],
  };
  for (const [name, bin] of binaries()) {
    const r = run(bin, ['--version']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, '');
    const v = versionLines(r.stdout);
    assert.equal(v.get(name), projectVersion, r.stdout);
    const commit = v.get('commit');
    assert.match(commit, /^([0-9a-f]{12}(-modified)?|unknown)$/, r.stdout);
    if (git.status === 0) assert.notEqual(commit, 'unknown', `${name} was built from a git checkout: ${r.stdout}`);
    for (const lib of libs[name]) {
      assert.ok(v.has(lib), `${name} --version names ${lib}: ${r.stdout}`);
      assert.match(v.get(lib), /^\d+\.\d+(\.\d+)?/, `${lib}'s version: ${r.stdout}`);
    }
  }
  // The versions are the libraries' own: OpenSSL's, as its CLI says it.
  const ossl = spawnSync('openssl', ['version'], { encoding: 'utf8' });
  if (ossl.status === 0) {
    const cli = /^OpenSSL (\S+)/.exec(ossl.stdout);
    const v = versionLines(run(serverBinary(), ['--version']).stdout);
    assert.equal(v.get('openssl'), cli[1], 'the OpenSSL the server runs with is the system one');
  }
});

test('-h and --help print the usage on stdout and exit 0, for the server commands too', () => {
  for (const [name, bin] of binaries()) {
    for (const flag of ['-h', '--help']) {
      const r = run(bin, [flag]);
      assert.equal(r.status, 0, `${name} ${flag}: ${r.stderr}`);
      assert.match(r.stdout, /--log-level/, `${name} ${flag}`);
      assert.match(r.stdout, /--log-format/, `${name} ${flag}`);
      assert.match(r.stdout, /--version/, `${name} ${flag}`);
      assert.match(r.stdout, /TLSPLANE_LOG_LEVEL/, `${name} ${flag}`);
      assert.equal(r.stderr, '');
    }
  }
  for (const cmd of ['init', 'backup', 'rotate-master-key', 'call']) {
    for (const flag of ['-h', '--help']) {
      const r = run(serverBinary(), [cmd, flag]);
      assert.equal(r.status, 0, `tlsplane-server ${cmd} ${flag}: ${r.stderr}`);
      assert.match(r.stdout, new RegExp(`tlsplane-server ${cmd}`), `tlsplane-server ${cmd} ${flag}`);
      assert.equal(r.stderr, '');
    }
  }
});

// A refusal in one line, then where to read more.
function assertOneLine(r, prog, message, what) {
  assert.equal(r.status, 2, `${what}: exit status; stderr:\n${r.stderr}`);
  assert.equal(r.stdout, '', `${what}: nothing on stdout`);
  const lines = r.stderr.split('\n');
  assert.equal(lines.length, 3, `${what}: two lines on stderr:\n${r.stderr}`);
  assert.equal(lines[0], `${prog}: ${message}`, what);
  assert.equal(lines[1], `Try '${prog} --help'.`, what);
  assert.equal(lines[2], '');
}

test('an unknown flag: one line naming it, where to read more, exit status 2', () => {
  for (const [name, bin] of binaries()) {
    assertOneLine(run(bin, ['--bogus']), name, "unrecognized option '--bogus'", `${name} --bogus`);
    assertOneLine(run(bin, ['--bogus=1']), name, "unrecognized option '--bogus'", `${name} --bogus=1`);
    assertOneLine(run(bin, ['-x']), name, "invalid option -- 'x'", `${name} -x`);
    assertOneLine(run(bin, ['--help=yes']), name, "option '--help' doesn't allow an argument", `${name} --help=yes`);
    assertOneLine(run(bin, ['--log-level']), name, "option '--log-level' requires an argument", `${name} --log-level`);
    assertOneLine(run(bin, ['--log-level', 'loud']), name, "--log-level: 'loud' is not a level: debug, info, warn or error", `${name} --log-level loud`);
    assertOneLine(run(bin, ['--log-format', 'xml']), name, "--log-format: 'xml' is not a format: text or json", `${name} --log-format xml`);
  }
  // The variables are checked like the flags.
  assertOneLine(run(serverBinary(), [], { TLSPLANE_LOG_FORMAT: 'xml' }), 'tlsplane-server', "TLSPLANE_LOG_FORMAT: 'xml' is not a format: text or json", 'TLSPLANE_LOG_FORMAT=xml');
  assertOneLine(run(agentBinary(), ['--config', 'x.json'], { TLSPLANE_LOG_LEVEL: 'chatty' }), 'tlsplane-agent', "TLSPLANE_LOG_LEVEL: 'chatty' is not a level: debug, info, warn or error", 'TLSPLANE_LOG_LEVEL=chatty');
  // An agent certificate's lifetime takes a unit and stays within its range.
  const lifetimeRule = 'is not a duration from 10m to 825d (a number with s, m, h or d)';
  for (const v of ['30', '5m', '826d', '1y', '-2h']) {
    assertOneLine(run(serverBinary(), ['--agent-cert-lifetime', v]), 'tlsplane-server', `--agent-cert-lifetime: "${v}" ${lifetimeRule}`, `--agent-cert-lifetime ${v}`);
  }
  assertOneLine(run(serverBinary(), [], { TLSPLANE_AGENT_CERT_LIFETIME: '0d' }), 'tlsplane-server', `TLSPLANE_AGENT_CERT_LIFETIME: "0d" ${lifetimeRule}`, 'TLSPLANE_AGENT_CERT_LIFETIME=0d');
  // An ambiguous abbreviation, and an argument where none is taken.
  assertOneLine(run(serverBinary(), ['--max', '3']), 'tlsplane-server', "option '--max' is ambiguous", '--max');
  assertOneLine(run(serverBinary(), ['serve']), 'tlsplane-server', "unexpected argument 'serve' (the commands: init, backup, rotate-master-key, call)", 'serve');
  assertOneLine(run(agentBinary(), []), 'tlsplane-agent', '--server (or TLSPLANE_SERVER) or --config (or TLSPLANE_CONFIG) is required', 'no mode');
  // The server's commands name themselves.
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-cli-'));
  try {
    for (const cmd of ['init', 'backup', 'rotate-master-key', 'call']) {
      assertOneLine(run(serverBinary(), [cmd, '--data-dir', tmp, '--bogus']), `tlsplane-server ${cmd}`, "unrecognized option '--bogus'", `${cmd} --bogus`);
    }
    assertOneLine(run(serverBinary(), ['backup', '--data-dir', tmp]), 'tlsplane-server backup', 'DEST is missing', 'backup without DEST');
    assertOneLine(run(serverBinary(), ['init', '--data-dir', tmp, 'extra']), 'tlsplane-server init', "unexpected argument 'extra'", 'init extra');
    assertOneLine(run(serverBinary(), ['rotate-master-key', '--force']), 'tlsplane-server rotate-master-key', "unrecognized option '--force'", 'rotate-master-key --force');
    assertOneLine(run(serverBinary(), ['call']), 'tlsplane-server call', 'SERVICE/METHOD is missing', 'call without a method');
    // Refused before anything was made.
    assert.deepEqual(fs.readdirSync(tmp), []);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
