'use strict';
// dns-01 through the server's hook command (--acme-dns-hook), against
// pebble with real validation: pebble asks pebble-challtestsrv for the
// TXT record, and the hook (scripts/acme-dns-hook-challtestsrv, behind a
// wrapper that notes each run) publishes it through challtestsrv's
// management API. A wildcard certificate (*.w.test and w.test) is issued
// by dns-01 and served by an agent (s_client verifies the chain against
// pebble's root for a name under *.w.test); an order with one name a
// listener serves and one it does not answers tls-alpn-01 for the first
// and dns-01 for the second. The failure side: a hook exiting 1 (its
// first line on the certificate, retried with back-off, cleanup run), a
// hook that hangs (killed with its process group at the timeout), the
// TXT values in no log line. A wildcard in one certificate and its base
// name in another share the record: one certificate's values are on it at
// a time, the other's order waiting meanwhile. The hook is the server's
// setting only: no API field names a command, and one sent anyway is
// refused.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { Pebble } = require('./lib/pebble');
const { pki } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { exchange, SClient } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { freePorts, agentBinary } = require('./lib/agent');
const { tool, built } = require('./lib/tools');
const procs = require('./lib/procs');
const { status, seconds, expectRefused, uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');

const RETRY_MS = 1000; // TLSPLANE_RENEW_RETRY_MS and TLSPLANE_ACME_RETRY_MS
const HOOK_TIMEOUT_S = 3;
const SERVED = 'a.dns.test'; // an SNI route of the listener

let srv;
let conn;
let pebble;
let p;
let up;
let agent;
let port; // the agent listener's, pebble's tlsPort
let dir; // the hook's notes
const api = () => conn.api;
const certs = () => api().CertificateService;
const notes = () => path.join(dir, 'runs');

// The hook the server runs: notes each run (action, domain, record, TXT,
// certificate) and its environment, fails for fail.dns.test, hangs with a
// child for hang.dns.test and stop.dns.test (the child's pid in hang.pid,
// stop.pid), holds the present of held.dns.test (a slow DNS provider)
// until the test creates held.release, for at most 2.5 s (inside the
// hook's timeout), and publishes through challtestsrv otherwise.
function writeHook(challtestsrv) {
  const hook = path.join(dir, 'hook');
  const script = path.resolve(__dirname, '../../scripts/acme-dns-hook-challtestsrv');
  fs.writeFileSync(hook, `#!/bin/sh
echo "$TLSPLANE_ACME_ACTION $TLSPLANE_ACME_DOMAIN $TLSPLANE_ACME_RECORD $TLSPLANE_ACME_TXT $TLSPLANE_ACME_CERTIFICATE" >> '${notes()}'
env > '${dir}/env'
case "$TLSPLANE_ACME_ACTION $TLSPLANE_ACME_DOMAIN" in
"present fail.dns.test")
  echo "zone dns.test: the API token was refused"
  echo "a second line, $TLSPLANE_ACME_TXT, never shown" >&2
  exit 1 ;;
"present hang.dns.test"|"present stop.dns.test")
  sleep 600 &
  echo $! > "${dir}/\${TLSPLANE_ACME_DOMAIN%%.*}.pid"
  wait
  exit 0 ;;
"present held.dns.test")
  i=0
  while [ ! -e '${dir}/held.release' ] && [ $i -lt 25 ]; do sleep 0.1; i=$((i + 1)); done ;;
esac
CHALLTESTSRV='${challtestsrv}' exec '${script}'
`, { mode: 0o755 });
  return hook;
}

// The hook's runs so far, parsed.
function runs() {
  if (!fs.existsSync(notes())) return [];
  return fs.readFileSync(notes(), 'utf8').trim().split('\n').filter(Boolean).map((l) => {
    const [action, domain, record, txt, certificate] = l.split(' ');
    return { action, domain, record, txt, certificate };
  });
}

const acme = (pb) => pb.issuer({ acmeContact: ['mailto:admin@dns.test'] });

async function issued(name) {
  return waitFor(`${name}: the order completes`, async () => {
    const c = await certs().GetCertificate({ name });
    if (c.acmeOrder?.lastError) throw new Error(`the order failed: ${c.acmeOrder.lastError}`);
    return c.certificateChainPem ? c : null;
  }, { timeoutMs: 120000 });
}

before(async () => {
  agentBinary();
  tool('curl');
  p = pki();
  dir = procs.tempDir('tlsplane-dns-hook-');
  [port] = await freePorts(1);
  pebble = await Pebble.start({ tlsPort: port });
  up = await Upstream.start({ mode: 'echo' });
  srv = await Server.start({
    tls: true,
    extraArgs: ['--acme-dns-hook', writeHook(pebble.challtestsrv)],
    env: {
      TLSPLANE_RENEW_RETRY_MS: String(RETRY_MS),
      TLSPLANE_ACME_RETRY_MS: String(RETRY_MS),
      TLSPLANE_ACME_DNS_HOOK_TIMEOUT: String(HOOK_TIMEOUT_S),
    },
  });
  conn = await connect(srv.address, srv.connectOptions());
  await api().IssuerService.CreateIssuer({ issuerId: 'pebble', issuer: acme(pebble) });
  await waitFor('the account is valid', async () => (await api().IssuerService.GetIssuer({ name: 'issuers/pebble' })).acmeAccountStatus === 'valid', { timeoutMs: 30000 });
  await certs().CreateCertificate({ certificateId: 'web', certificate: { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key } });
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'web', tlsContext: { certificates: ['certificates/web'] } });
  await api().ListenerService.CreateListener({
    listenerId: 'edge',
    listener: { address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/web', upstream: up.address, sniRoutes: [{ hostname: SERVED, tlsContext: 'tlsContexts/web' }] },
  });
  const tok = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'edge-1' } });
  agent = await CpAgent.start(srv, { name: 'edge-1', joinToken: tok.secret, wait: 'connected' });
  await waitFor('the agent serves the listener', async () => (await exchange(port, {}, { send: 'x\n' })).ok);
});

after(async () => {
  if (agent) await agent.stopClean();
  if (conn) conn.close();
  if (srv && srv.running) await srv.stopClean();
  if (up) await up.close();
  if (pebble) pebble.stop();
});

// Waits until the process pid no longer exists.
async function gone(what, pid) {
  assert.ok(pid > 1, `${what}: pid ${pid}`);
  await waitFor(what, () => {
    try {
      process.kill(pid, 0);
      return false;
    } catch (e) {
      return e.code === 'ESRCH';
    }
  }, { timeoutMs: 5000 });
}

test('--acme-dns-hook: a relative path, a missing file or one not executable stops the start with the reason', () => {
  const bin = built('TLSPLANE_SERVER', 'server/tlsplane-server', 'tlsplane-server');
  const plain = path.join(dir, 'not-executable');
  fs.writeFileSync(plain, '#!/bin/sh\n', { mode: 0o644 });
  for (const [args, env, re] of [
    [['--acme-dns-hook', 'hook.sh'], {}, /--acme-dns-hook: "hook\.sh" is not an absolute path/],
    [[], { TLSPLANE_ACME_DNS_HOOK: path.join(dir, 'none') }, /TLSPLANE_ACME_DNS_HOOK: \S+\/none: No such file or directory/],
    [['--acme-dns-hook', plain], {}, /is not executable/],
    [['--acme-dns-hook', dir], {}, /is not a regular file/],
    [['--acme-dns-hook', '/bin/true', '--acme-dns-hook-timeout', '3601'], {}, /--acme-dns-hook-timeout: "3601" is not a number of seconds from 1 to 3600/],
  ]) {
    let r;
    try {
      execFileSync(bin, ['--data-dir', path.join(dir, 'never'), ...args], { env: { ...process.env, ...env }, stdio: 'pipe' });
      assert.fail(`started with ${JSON.stringify(args)}`);
    } catch (e) {
      r = e;
    }
    assert.equal(r.status, 2, String(r.stderr));
    assert.match(String(r.stderr), re);
  }
  assert.equal(fs.existsSync(path.join(dir, 'never')), false, 'nothing made');
  const help = execFileSync(bin, ['--help'], { encoding: 'utf8' });
  assert.match(help, /--acme-dns-hook PATH[\s\S]*TLSPLANE_ACME_DNS_HOOK, none/);
  assert.match(help, /--acme-dns-hook-timeout SECONDS[\s\S]*TLSPLANE_ACME_DNS_HOOK_TIMEOUT, 120/);
});

test('no API field sets a command: none in the schema, and one sent anyway is refused with nothing made', async () => {
  const fields = [];
  const walk = (ns) => {
    for (const n of ns.nestedArray || []) {
      if (n.fieldsArray) for (const f of n.fieldsArray) fields.push(`${n.fullName}.${f.name}`);
      walk(n);
    }
  };
  walk(conn.root.lookup('tlsplane.v1'));
  assert.ok(fields.length > 100, `${fields.length} fields`);
  const COMMANDISH = new Set(['hook', 'command', 'cmd', 'exec', 'executable', 'script', 'program', 'shell', 'argv']);
  const words = (f) => f.split('.').pop().split(/_|(?=[A-Z])/).map((w) => w.toLowerCase());
  assert.deepEqual(fields.filter((f) => words(f).some((w) => COMMANDISH.has(w))), []);
  const ca = path.join(srv.dataDir, 'ca.pem');
  for (const [method, body] of [
    ['CertificateService/IssueCertificate', { certificateId: 'cmd', issuer: 'issuers/pebble', dnsNames: ['*.cmd.test'], acmeDnsHook: '/bin/sh' }],
    ['IssuerService/CreateIssuer', { issuerId: 'cmd', issuer: { ...acme(pebble), acmeDnsHook: '/bin/sh' } }],
  ]) {
    const out = execFileSync(tool('curl'), ['-sS', '--cacert', ca, '-H', `authorization: Bearer ${srv.adminToken}`, '-H', 'content-type: application/json',
      '-X', 'POST', '-d', JSON.stringify(body), `${srv.httpBase}/tlsplane.v1.${method}`], { encoding: 'utf8' });
    const j = JSON.parse(out);
    assert.equal(j.code, 'invalid_argument', out);
    assert.match(j.message, /acmeDnsHook|acme_dns_hook/, out);
  }
  await expectRefused(api(), () => certs().GetCertificate({ name: 'certificates/cmd' }), status.NOT_FOUND);
  await expectRefused(api(), () => api().IssuerService.GetIssuer({ name: 'issuers/cmd' }), status.NOT_FOUND);
});

test('a wildcard (*.w.test and w.test) validated by dns-01 through the hook, issued and served: s_client verifies it for x.w.test', async () => {
  const made = await certs().IssueCertificate({ certificateId: 'wild', issuer: 'issuers/pebble', dnsNames: ['*.w.test', 'w.test'] });
  assert.equal(made.certificateChainPem, '');
  const done = await issued('certificates/wild');
  assert.equal(done.acmeOrder.status, 'valid');
  const authz = done.acmeOrder.authorizations.map((a) => [a.identifier, a.status, a.challengeType]).sort();
  assert.deepEqual(authz, [['*.w.test', 'valid', 'dns-01'], ['w.test', 'valid', 'dns-01']]);
  // The hook presented two values on the one record and cleaned up after.
  const mine = runs().filter((r) => r.certificate === 'certificates/wild');
  for (const r of mine) noteSecret(r.txt);
  const presents = mine.filter((r) => r.action === 'present');
  assert.equal(presents.length, 2, JSON.stringify(mine));
  for (const r of mine) {
    assert.equal(r.domain, 'w.test');
    assert.equal(r.record, '_acme-challenge.w.test.');
    assert.match(r.txt, /^[A-Za-z0-9_-]{43}$/, 'base64url of a SHA-256');
  }
  assert.notEqual(presents[0].txt, presents[1].txt);
  await waitFor('cleanup ran for both', () => runs().filter((r) => r.certificate === 'certificates/wild' && r.action === 'cleanup').length === 2);
  // The clean environment: the five variables and PATH, nothing of the server's.
  const env = fs.readFileSync(path.join(dir, 'env'), 'utf8');
  assert.match(env, /^TLSPLANE_ACME_CERTIFICATE=certificates\/wild$/m);
  assert.match(env, /^PATH=\/usr\/local\/sbin:/m);
  const names = env.split('\n').map((l) => l.split('=')[0]).filter((n) => /^[A-Z_][A-Z0-9_]*$/.test(n));
  assert.deepEqual(names.filter((n) => !['PWD', 'OLDPWD', 'SHLVL', '_'].includes(n)).sort(),
    ['PATH', 'TLSPLANE_ACME_ACTION', 'TLSPLANE_ACME_CERTIFICATE', 'TLSPLANE_ACME_DOMAIN', 'TLSPLANE_ACME_RECORD', 'TLSPLANE_ACME_TXT']);
  // Served: a listener route for *.w.test with the issued certificate.
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'wild', tlsContext: { certificates: ['certificates/wild'] } });
  await api().ListenerService.UpdateListener({
    listener: { name: 'listeners/edge', sniRoutes: [{ hostname: SERVED, tlsContext: 'tlsContexts/web' }, { hostname: '*.w.test', tlsContext: 'tlsContexts/wild' }] },
    updateMask: { paths: ['sni_routes'] },
  });
  const root = path.join(dir, 'pebble-root.pem');
  fs.writeFileSync(root, pebble.root);
  const r = await waitFor('s_client verifies the wildcard for x.w.test', async () => {
    const c = SClient.start(port, ['-servername', 'x.w.test', '-verify_hostname', 'x.w.test', '-CAfile', root, '-verify_return_error']);
    c.end();
    const res = await c.done();
    return res.handshake && /Verify return code: 0 \(ok\)/.test(res.out) ? res : null;
  }, { timeoutMs: 20000 });
  assert.match(r.out, /subject=CN ?= ?\*\.w\.test|subject=.*\*\.w\.test/);
});

test('a wildcard in one certificate and its base name in another, ordered at once: one certificate\'s values on the record at a time, the other waiting, both issued with no failure', async () => {
  const NAME = 'held.dns.test';
  await Promise.all([
    certs().IssueCertificate({ certificateId: 'held-wild', issuer: 'issuers/pebble', dnsNames: [`*.${NAME}`] }),
    certs().IssueCertificate({ certificateId: 'held-base', issuer: 'issuers/pebble', dnsNames: [NAME] }),
  ]);
  const ids = ['held-wild', 'held-base'];
  const errors = { 'held-wild': new Set(), 'held-base': new Set() };
  let failures = 0;
  const look = async () => {
    const both = {};
    for (const id of ids) {
      both[id] = await certs().GetCertificate({ name: `certificates/${id}` });
      if (both[id].acmeOrder?.lastError) errors[id].add(both[id].acmeOrder.lastError);
      failures = Math.max(failures, both[id].renewalFailures || 0, both[id].acmeOrder?.failures || 0);
    }
    return both;
  };
  // The first one's "present" is held: its challenge is out meanwhile.
  // Once the other is seen waiting, the hook is let go.
  const waiting = await waitFor('one order waiting for the other\'s challenge', async () => {
    const both = await look();
    const id = ids.find((i) => (both[i].acmeOrder?.lastError || '').startsWith('waiting: '));
    return id ? { id, other: ids.find((i) => i !== id) } : null;
  }, { timeoutMs: 30000, intervalMs: 100 });
  fs.writeFileSync(path.join(dir, 'held.release'), '');
  const why = `waiting: certificates/${waiting.other} has a challenge out for ${NAME}`;
  const done = await waitFor('both orders complete', async () => {
    const both = await look();
    return ids.every((i) => both[i].certificateChainPem) ? both : null;
  }, { timeoutMs: 120000, intervalMs: 250 });
  for (const id of ids) {
    assert.equal(done[id].acmeOrder.status, 'valid', id);
    assert.equal(done[id].acmeOrder.lastError, '', id);
    assert.equal(done[id].lastRenewalError, '', id);
  }
  assert.equal(failures, 0, 'no failure counted');
  assert.deepEqual([...errors[waiting.other]], []);
  assert.deepEqual([...errors[waiting.id]], [why]);
  // On the record, the first certificate's present and cleanup, then the
  // other's: never both at once.
  const mine = runs().filter((r) => r.domain === NAME);
  for (const r of mine) noteSecret(r.txt);
  assert.deepEqual(mine.map((r) => [r.action, r.certificate]), [
    ['present', `certificates/${waiting.other}`], ['cleanup', `certificates/${waiting.other}`],
    ['present', `certificates/${waiting.id}`], ['cleanup', `certificates/${waiting.id}`],
  ]);
});

test('a name a listener serves answers tls-alpn-01, one no listener serves dns-01, in one order', async () => {
  await certs().IssueCertificate({ certificateId: 'mixed', issuer: 'issuers/pebble', dnsNames: [SERVED, 'nobody.dns.test'] });
  const done = await issued('certificates/mixed');
  const authz = Object.fromEntries(done.acmeOrder.authorizations.map((a) => [a.identifier, [a.status, a.challengeType]]));
  assert.deepEqual(authz, { [SERVED]: ['valid', 'tls-alpn-01'], 'nobody.dns.test': ['valid', 'dns-01'] });
  const mine = runs().filter((r) => r.certificate === 'certificates/mixed');
  for (const r of mine) noteSecret(r.txt);
  assert.deepEqual(mine.map((r) => [r.action, r.domain]), [['present', 'nobody.dns.test'], ['cleanup', 'nobody.dns.test']]);
  assert.ok((await agent.metrics()).get('tlsplane_acme_challenges_answered_total') >= 1, 'the agent answered tls-alpn-01');
});

test('the hook failing: its first line on the certificate, retried with back-off, cleanup run each time', async () => {
  await certs().IssueCertificate({ certificateId: 'fail', issuer: 'issuers/pebble', dnsNames: ['fail.dns.test'] });
  const failed = await waitFor('two failures recorded', async () => {
    const c = await certs().GetCertificate({ name: 'certificates/fail' });
    return c.acmeOrder?.failures >= 2 ? c : null;
  }, { timeoutMs: 30000 });
  assert.equal(failed.acmeOrder.lastError, 'dns-01 hook present _acme-challenge.fail.dns.test.: exit status 1: zone dns.test: the API token was refused');
  assert.equal(failed.lastRenewalError, failed.acmeOrder.lastError);
  assert.ok(seconds(failed.acmeOrder.nextAttemptTime) > Date.now() / 1000 - 1, 'a next attempt ahead');
  assert.equal(failed.certificateChainPem, '');
  assert.deepEqual(failed.acmeOrder.authorizations.map((a) => [a.identifier, a.challengeType]), [['fail.dns.test', 'dns-01']]);
  await certs().DeleteCertificate({ name: 'certificates/fail' });
  const mine = runs().filter((r) => r.certificate === 'certificates/fail');
  for (const r of mine) noteSecret(r.txt);
  const presents = mine.filter((r) => r.action === 'present').length;
  assert.ok(presents >= 2, JSON.stringify(mine));
  await waitFor('cleanup after each present', () => runs().filter((r) => r.certificate === 'certificates/fail' && r.action === 'cleanup').length >= presents);
  assert.doesNotMatch(srv.log(), /a second line/);
});

test('a hook that hangs: killed with its process group at its timeout, the order failed and retried, cleanup run', async () => {
  const started = Date.now();
  await certs().IssueCertificate({ certificateId: 'hang', issuer: 'issuers/pebble', dnsNames: ['hang.dns.test'] });
  const failed = await waitFor('the timeout recorded', async () => {
    const c = await certs().GetCertificate({ name: 'certificates/hang' });
    return c.acmeOrder?.failures >= 1 ? c : null;
  }, { timeoutMs: 30000 });
  assert.ok(Date.now() - started >= HOOK_TIMEOUT_S * 1000, 'not before its timeout');
  assert.equal(failed.acmeOrder.lastError, `dns-01 hook present _acme-challenge.hang.dns.test.: killed after its timeout of ${HOOK_TIMEOUT_S} s`);
  // The hook's child went with it: the whole group was killed.
  await gone('the hook\'s child is gone', Number(fs.readFileSync(path.join(dir, 'hang.pid'), 'utf8')));
  await waitFor('cleanup ran', () => runs().some((r) => r.certificate === 'certificates/hang' && r.action === 'cleanup'));
  await certs().DeleteCertificate({ name: 'certificates/hang' });
  for (const r of runs()) noteSecret(r.txt);
});

test('a server stopping kills a hook still running (its timeout far off) and stops cleanly', async () => {
  const hook = path.join(dir, 'hook');
  const two = await Server.start({ tls: true, extraArgs: ['--acme-dns-hook', hook, '--acme-dns-hook-timeout', '600'] });
  const c2 = await connect(two.address, two.connectOptions());
  try {
    await c2.api.IssuerService.CreateIssuer({ issuerId: 'pebble', issuer: acme(pebble) });
    await waitFor('the account is valid', async () => (await c2.api.IssuerService.GetIssuer({ name: 'issuers/pebble' })).acmeAccountStatus === 'valid', { timeoutMs: 30000 });
    const pidFile = path.join(dir, 'stop.pid');
    await c2.api.CertificateService.IssueCertificate({ certificateId: 'stop', issuer: 'issuers/pebble', dnsNames: ['stop.dns.test'] });
    await waitFor('the hook runs', () => fs.existsSync(pidFile) && fs.readFileSync(pidFile, 'utf8').trim() !== '');
    const pid = Number(fs.readFileSync(pidFile, 'utf8'));
    const t0 = Date.now();
    c2.close();
    await two.stopClean(); // exit status 0, no secret in its log
    assert.ok(Date.now() - t0 < 10000, `stopped in ${Date.now() - t0} ms`);
    await gone('the hook\'s child is gone', pid);
    for (const r of runs()) noteSecret(r.txt);
  } finally {
    c2.close();
    if (two.running) await two.stop();
  }
});

test('no TXT value in the server\'s log', () => {
  const all = runs();
  assert.ok(all.length >= 6);
  const log = srv.log();
  for (const r of all) assert.ok(!log.includes(r.txt), `the TXT value of ${r.domain} is in the log`);
  assert.match(log, /dns-01 record\(s\) presented by the hook/);
});

test('docs/acme.md shows the hook as scripts/acme-dns-hook-challtestsrv has it', () => {
  const doc = fs.readFileSync(path.resolve(__dirname, '../../docs/acme.md'), 'utf8');
  const section = doc.slice(doc.indexOf('\n## dns-01 through a hook'));
  assert.ok(section.length > 100, 'the section is there');
  const block = /^```sh\n([\s\S]*?)^```$/m.exec(section)[1];
  const script = fs.readFileSync(path.resolve(__dirname, '../../scripts/acme-dns-hook-challtestsrv'), 'utf8')
    .split('\n').filter((l) => !/^\s*#(?!!)/.test(l)).join('\n');
  assert.equal(block, script);
});
