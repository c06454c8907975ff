'use strict';
// docs/rotation.md, "An ACME client as the job": lego (Debian's package)
// obtains and renews a certificate from pebble (Let's Encrypt's test CA,
// Debian's package) with real HTTP-01 validation (pebble-challtestsrv
// resolves the test name to 127.0.0.1, pebble connects to lego's
// listener), and scripts/lego-hook uploads it through the API with an
// operator token, then waits on WatchEvents until every agent serves it.
// A real agent serves the renewed chain (verified against pebble's root)
// under a loop of handshakes that counts failures; the hook writes nothing
// for a certificate already stored, and fails visibly when a write is
// refused or no agent applies the change in time.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const tls = require('node:tls');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { Server, serverBinary } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const { Pebble } = require('./lib/pebble');
const { Upstream } = require('./lib/upstream');
const { exchange } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { freePorts, agentBinary } = require('./lib/agent');
const { tool } = require('./lib/tools');
const procs = require('./lib/procs');
const { uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');

const DOMAIN = 'web.tlsplane.test';
const HOOK = path.join(__dirname, '..', '..', 'scripts', 'lego-hook');

let srv;
let conn;
let p;
let up;
let dir;
let pebble;
let operator;
let agent;
let listenerPort;
const api = () => conn.api;

// Runs a command to its end: { status, out, err }.
function run(bin, args, env = {}) {
  return new Promise((resolve) => {
    const [cmd, argv] = procs.command(bin, args);
    const child = spawn(cmd, argv, { env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (b) => { out += b; });
    child.stderr.on('data', (b) => { err += b; });
    child.on('exit', (status) => resolve({ status, out, err }));
  });
}

// The hook's environment: the API, the control-plane CA, a token.
function hookEnv(token, extra = {}) {
  return {
    TLSPLANE_LISTEN: srv.address,
    TLSPLANE_CA: path.join(srv.dataDir, 'ca.pem'),
    TLSPLANE_TOKEN: token,
    TLSPLANE_CALL: `${serverBinary()} call`,
    TLSPLANE_CERTIFICATE: 'certificates/web',
    TLSPLANE_WAIT_SECONDS: '60',
    ...extra,
  };
}

// lego against pebble, HTTP-01 on lego's own listener; the hook after it.
function lego(command, hookFlag, extra = []) {
  return run(tool('lego'), [
    '--server', pebble.directory, '--accept-tos', '--email', 'ops@example.test',
    '--domains', DOMAIN, '--http', '--http.port', `127.0.0.1:${pebble.httpPort}`, '--key-type', 'ec256',
    '--path', path.join(dir, 'lego'), command, ...extra, hookFlag, HOOK,
  ], { ...hookEnv(operator.secret), LEGO_CA_CERTIFICATES: pebble.trustFile });
}

const legoFile = (ext) => path.join(dir, 'lego', 'certificates', `${DOMAIN}.${ext}`);

// A client of the listener that verifies the chain against pebble's root
// and the name.
const verifying = () => ({ ca: pebble.root, servername: DOMAIN, checkServerIdentity: tls.checkServerIdentity });

// What the agent serves on the listener.
async function served() {
  const r = await exchange(listenerPort, verifying(), { send: 'x\n' });
  return r.ok ? r.info.fingerprint : `failed: ${r.phase}: ${r.error}`;
}

const fingerprint = (pem) => new crypto.X509Certificate(pem).fingerprint256;

before(async () => {
  agentBinary();
  p = pki();
  dir = procs.tempDir('tlsplane-lego-');
  [listenerPort] = await freePorts(1);
  pebble = await Pebble.start();
  up = await Upstream.start({ mode: 'echo' });
  srv = await Server.start({ tls: true });
  conn = await connect(srv.address, srv.connectOptions());
  operator = await api().TokenService.CreateToken({ tokenId: uid('lego'), token: { role: 'OPERATOR' } });
});

after(async () => {
  if (agent) await agent.stopClean();
  if (conn) conn.close();
  if (srv && srv.running) await srv.stopClean();
  if (up) await up.close();
  if (pebble) pebble.stop();
});

test('lego obtains a certificate from pebble; the hook creates the resource through the API', async () => {
  const r = await lego('run', '--run-hook');
  assert.equal(r.status, 0, `lego run:\n${r.err}`);
  assert.match(r.out + r.err, /tlsplane-lego-hook: certificates\/web written/);
  const c = await api().CertificateService.GetCertificate({ name: 'certificates/web' });
  assert.equal(c.sha256Fingerprint, fingerprint(fs.readFileSync(legoFile('crt'), 'utf8')));
  assert.deepEqual(c.dnsNames, [DOMAIN]);
  assert.equal(c.chainLength, 2, 'the leaf and pebble\'s intermediate');
  assert.equal(c.hasPrivateKey, true);
  assert.equal(c.privateKeyPem, '', 'the key is never read back');
  // Served by an agent once a listener uses it.
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'web', tlsContext: { certificates: ['certificates/web'] } });
  await api().ListenerService.CreateListener({ listenerId: 'web', listener: { address: `127.0.0.1:${listenerPort}`, defaultTlsContext: 'tlsContexts/web', upstream: up.address } });
  const tok = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'lego-a' } });
  agent = await CpAgent.start(srv, { name: 'lego-a', joinToken: tok.secret, wait: 'connected' });
  await waitFor('the agent serves the ACME certificate, verified against pebble\'s root', async () => (await served()) === c.sha256Fingerprint);
});

test('lego renews; the hook returns once every agent serves the new chain, with no failed handshake', async () => {
  const before = await api().CertificateService.GetCertificate({ name: 'certificates/web' });
  let running = true;
  const res = { ok: 0, failed: [] };
  const loop = async () => {
    while (running) {
      const r = await exchange(listenerPort, verifying(), { send: 'x\n' });
      if (r.ok) res.ok++;
      else res.failed.push(`${r.phase}: ${r.error}`);
    }
  };
  const loops = [loop(), loop()];
  let r;
  try {
    // Pebble's certificates last five years: renew whatever is left.
    r = await lego('renew', '--renew-hook', ['--days', '100000', '--no-random-sleep']);
    assert.equal(r.status, 0, `lego renew:\n${r.err}`);
    // The hook returned: the agent serves the renewal already (no polling).
    const after = await api().CertificateService.GetCertificate({ name: 'certificates/web' });
    assert.notEqual(after.serialNumber, before.serialNumber);
    assert.equal(after.sha256Fingerprint, fingerprint(fs.readFileSync(legoFile('crt'), 'utf8')));
    assert.equal(await served(), after.sha256Fingerprint);
    assert.match(r.out + r.err, new RegExp(`revision ${after.revision} is served by every agent`));
  } finally {
    running = false;
    await Promise.all(loops);
  }
  assert.deepEqual(res.failed, [], 'no handshake failed');
  assert.ok(res.ok > 5, `only ${res.ok} handshakes`);
});

test('the hook is idempotent: a certificate already stored writes nothing', async () => {
  const before = await api().CertificateService.GetCertificate({ name: 'certificates/web' });
  const events = (await api().AuditService.ListAuditEvents({ resource: 'certificates/web' })).auditEvents.length;
  const r = await run(HOOK, [], { ...hookEnv(operator.secret), LEGO_CERT_PATH: legoFile('crt'), LEGO_CERT_KEY_PATH: legoFile('key'), LEGO_CERT_DOMAIN: DOMAIN });
  assert.equal(r.status, 0, r.err);
  assert.match(r.err, /already holds this certificate: nothing written/);
  const after = await api().CertificateService.GetCertificate({ name: 'certificates/web' });
  assert.equal(after.revision, before.revision);
  assert.equal(after.etag, before.etag);
  assert.equal((await api().AuditService.ListAuditEvents({ resource: 'certificates/web' })).auditEvents.length, events);
});

test('a change no agent serves is applied by every agent at once: the hook does not wait for nothing', async () => {
  const env = (leaf) => ({
    ...hookEnv(operator.secret, { TLSPLANE_CERTIFICATE: 'certificates/spare', TLSPLANE_WAIT_SECONDS: '20' }),
    LEGO_CERT_PATH: leaf.certFile, LEGO_CERT_KEY_PATH: leaf.keyFile, LEGO_CERT_DOMAIN: DOMAIN,
  });
  const first = await run(HOOK, [], env(p.leaf(uid('spare'), { cn: DOMAIN, sans: [`DNS:${DOMAIN}`] })));
  assert.equal(first.status, 0, first.err);
  const second = await run(HOOK, [], env(p.leaf(uid('spare'), { cn: DOMAIN, sans: [`DNS:${DOMAIN}`] })));
  assert.equal(second.status, 0, second.err);
  const c = await api().CertificateService.GetCertificate({ name: 'certificates/spare' });
  assert.match(second.err, new RegExp(`revision ${c.revision} is served by every agent`));
});

test('the hook fails visibly: a viewer\'s token is refused, and a change no agent applies times out', async () => {
  const leaf = p.leaf(uid('other'), { cn: DOMAIN, sans: [`DNS:${DOMAIN}`] });
  const files = { LEGO_CERT_PATH: p.file(`${leaf.name}.crt`), LEGO_CERT_KEY_PATH: p.file(`${leaf.name}.key`), LEGO_CERT_DOMAIN: DOMAIN };
  const before = await api().CertificateService.GetCertificate({ name: 'certificates/web' });
  const viewer = await api().TokenService.CreateToken({ tokenId: uid('viewer'), token: { role: 'VIEWER' } });
  const denied = await run(HOOK, [], { ...hookEnv(viewer.secret), ...files });
  assert.equal(denied.status, 1);
  assert.match(denied.err, /PERMISSION_DENIED/);
  assert.match(denied.err, /UpdateCertificate certificates\/web refused/);
  assert.equal((await api().CertificateService.GetCertificate({ name: 'certificates/web' })).revision, before.revision);
  // With the agent gone, the write lands but the wait runs out.
  await agent.stopClean();
  agent = null;
  const late = await run(HOOK, [], { ...hookEnv(operator.secret, { TLSPLANE_WAIT_SECONDS: '2' }), ...files });
  assert.equal(late.status, 1);
  assert.match(late.err, /not served by every agent in 2 s/);
  const now = await api().CertificateService.GetCertificate({ name: 'certificates/web' });
  assert.notEqual(now.revision, before.revision);
  assert.equal(now.sha256Fingerprint, leaf.fingerprint);
});
