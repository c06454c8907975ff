'use strict';
// One log format for every line either binary writes (docs/operations.md,
// "Logs"): with --log-format json each line is a JSON object with time,
// level, component and msg (and the key=value words of msg), grpc core's
// own lines among them; with --log-level debug grpc core's debug lines
// come too, in the same format; --log-level warn leaves out info. A
// successful API write is logged at info with its revision, action,
// resource, actor and method, and never its secret.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { agentBinary, freePort, httpGet } = require('./lib/agent');
const { pki } = require('./lib/pki');
const { uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');
const procs = require('./lib/procs');

// A text line: "2026-01-02T03:04:05.678Z level component: message".
const TEXT_LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info|warn|error) [a-z]+: /;

const servers = [];
after(async () => {
  for (const s of servers) if (s.running) await s.stopClean();
});

// The lines of a log, each parsed as JSON (every one must be an object
// with the four fields).
function jsonLines(text) {
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      let o;
      try {
        o = JSON.parse(l);
      } catch (e) {
        assert.fail(`a log line that is not JSON (${e.message}): ${l}`);
      }
      assert.equal(typeof o, 'object', l);
      assert.match(o.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, l);
      assert.ok(['debug', 'info', 'warn', 'error'].includes(o.level), l);
      assert.match(o.component, /^[a-z]+$/, l);
      assert.equal(typeof o.msg, 'string', l);
      return o;
    });
}

// Writes bytes that are no TLS to a TLS port and waits for the close.
function garbage(address) {
  const [host, port] = address.split(':');
  return new Promise((resolve) => {
    const s = net.connect({ host, port: Number(port) }, () => s.write('GET / HTTP/1.0\r\n\r\n'));
    s.on('error', resolve);
    s.on('close', resolve);
    s.setTimeout(10000, () => s.destroy());
    s.resume();
  });
}

test('--log-format json: every line of the server is a JSON object, grpc core and the write log among them', async () => {
  const srv = await Server.start({ tls: true, extraArgs: ['--log-format', 'json'] });
  servers.push(srv);
  const conn = await connect(srv.address, srv.connectOptions());
  const p = pki();
  const key = p.ecdsa.key;
  noteSecret(key.split('\n').slice(1, -2).join(''));
  const id = uid('json');
  const cert = await conn.api.CertificateService.CreateCertificate({
    certificateId: id,
    certificate: { certificateChainPem: p.ecdsa.chain || p.ecdsa.cert, privateKeyPem: key },
  });
  const token = await conn.api.TokenService.CreateToken({ tokenId: uid('viewer'), token: { role: 'VIEWER' } });
  noteSecret(token.secret);
  conn.close();

  // grpc core's own line: a server name it does not know.
  const sni = spawnSync('openssl', ['s_client', '-connect', srv.address, '-servername', 'nobody.invalid'], { input: '', timeout: 20000 });
  assert.equal(sni.error, undefined, `openssl s_client: ${sni.error}`);
  const grpcLine = await waitFor('a grpc core line in JSON', () =>
    jsonLines(srv.log()).find((o) => o.component === 'grpc' && o.msg.includes('No match found for server name')));
  assert.equal(grpcLine.level, 'warn');

  // The writes: revision, action, resource, actor and method as fields.
  const writes = await waitFor('the writes logged', () => {
    const w = jsonLines(srv.log()).filter((o) => o.component === 'api' && o.msg.startsWith('committed'));
    return w.length >= 2 && w;
  });
  const certWrite = writes.find((o) => o.resource === `certificates/${id}`);
  assert.ok(certWrite, JSON.stringify(writes));
  assert.deepEqual(
    { level: certWrite.level, revision: certWrite.revision, action: certWrite.action, actor: certWrite.actor, method: certWrite.method },
    { level: 'info', revision: Number(cert.revision), action: 'create', actor: 'token:admin', method: '/tlsplane.v1.CertificateService/CreateCertificate' },
  );
  const tokenWrite = writes.find((o) => o.resource === token.token.name);
  assert.ok(tokenWrite, JSON.stringify(writes));
  assert.equal(tokenWrite.method, '/tlsplane.v1.TokenService/CreateToken');

  await srv.stopClean(); // no registered secret in the log
  const lines = jsonLines(srv.log());
  assert.ok(lines.some((o) => o.component === 'server' && /^listening on /.test(o.msg)));
  assert.ok(lines.some((o) => o.component === 'server' && o.msg === 'stopped'));
  assert.ok(!srv.log().includes(token.secret));
});

// Speaks garbage to the port until the server's log matches re: grpc
// core's lines are rate-limited (20 a second), so one of a burst may be
// left out; each try is another handshake that fails.
async function garbageUntil(srv, re, what) {
  await waitFor(what, async () => {
    if (re.test(srv.log())) return true;
    await garbage(srv.address);
    return re.test(srv.log());
  }, { intervalMs: 300 });
}

test('--log-level debug: grpc core debug lines come, about a peer too, every line in the text format', async () => {
  const srv = await Server.start({ tls: true, extraArgs: ['--log-level', 'debug'] });
  servers.push(srv);
  // From grpc_init on (its experiments, its polling engine), then per
  // connection: the failed handshake of a client that speaks no TLS.
  assert.match(srv.log(), /^\S+ debug grpc: \S+:\d+: /m);
  await garbageUntil(srv, /^\S+ debug grpc: chttp2_server\.cc:\d+: Handshaking failed: /m, 'the debug line of a failed handshake');
  await srv.stopClean();
  const bad = srv.log().split('\n').filter((l) => l !== '' && !TEXT_LINE.test(l));
  assert.deepEqual(bad, [], 'lines not in the format');
});

test("the default level: grpc core's error about a client speaking no TLS, no debug; --log-level error leaves out info and warn", async () => {
  const srv = await Server.start({ tls: true });
  servers.push(srv);
  await garbageUntil(srv, /^\S+Z warn grpc: ssl_transport_security\.cc:\d+: Handshake failed with fatal error SSL_ERROR_SSL: .*http request/m, "grpc core's line about the failed handshake");
  await srv.stopClean();
  assert.doesNotMatch(srv.log(), / debug /);
  assert.match(srv.log(), / info server: listening on /);

  // The agent, standalone and failing to start: only the error, as JSON.
  const r = spawnSync(agentBinary(), ['--config', path.join(srv.dataDir, 'missing.json'), '--metrics-listen', 'off', '--log-level', 'error', '--log-format', 'json'], {
    encoding: 'utf8',
    timeout: 15000,
    env: { ...process.env, TLSPLANE_LOG_LEVEL: '', TLSPLANE_LOG_FORMAT: '' },
  });
  assert.equal(r.status, 1, r.stderr);
  const lines = jsonLines(r.stderr);
  assert.ok(lines.length >= 1, r.stderr);
  assert.deepEqual([...new Set(lines.map((o) => o.level))], ['error'], r.stderr);
  assert.ok(lines.some((o) => o.component === 'agent' && o.msg.includes('missing.json')), r.stderr);
});

test('the agent: every line JSON from start to stop (TLSPLANE_LOG_FORMAT), info left out at warn', async () => {
  const dir = procs.tempDir('tlsplane-log-');
  const config = path.join(dir, 'snapshot.json');
  fs.writeFileSync(config, JSON.stringify({ revision: '1', listeners: [] }));
  const start = async (env) => {
    const port = await freePort();
    const [cmd, argv] = procs.command(agentBinary(), ['--config', config, '--metrics-listen', `127.0.0.1:${port}`, '--workers', '1']);
    const proc = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TLSPLANE_LOG_LEVEL: '', ...env } });
    const o = { proc, out: '', metrics: `http://127.0.0.1:${port}/metrics` };
    o.exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
    proc.stdout.on('data', (c) => (o.out += c));
    proc.stderr.on('data', (c) => (o.out += c));
    return o;
  };
  const a = await start({ TLSPLANE_LOG_FORMAT: 'json' });
  await waitFor('the agent ready', () => a.out.includes('"msg":"ready: revision 1'), { timeoutMs: 20000 });
  a.proc.kill('SIGTERM');
  assert.deepEqual(await a.exited, { code: 0, signal: null }, a.out);
  const lines = jsonLines(a.out);
  const applied = lines.find((o) => /revision 1 applied/.test(o.msg));
  assert.ok(applied, a.out);
  assert.equal(applied.component, 'agent');
  assert.equal(lines[lines.length - 1].msg, 'stopped');

  // At warn the agent says nothing while all is well (its metrics answer
  // once its loop runs, its signals handled), and stops as cleanly.
  const quiet = await start({ TLSPLANE_LOG_FORMAT: '', TLSPLANE_LOG_LEVEL: 'warn' });
  await waitFor('the agent serving /metrics', async () => (await httpGet(quiet.metrics)).status === 200, { timeoutMs: 20000 });
  quiet.proc.kill('SIGTERM');
  assert.deepEqual(await quiet.exited, { code: 0, signal: null }, quiet.out);
  assert.equal(quiet.out, '', 'nothing below warn');
});
