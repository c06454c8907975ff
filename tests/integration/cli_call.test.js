'use strict';
// `tlsplane-server call`: one unary API call from the command line, the
// request and the response in protobuf's JSON mapping (what `make run`'s
// scripts/demo uses instead of grpcurl), as the admin of a data dir by
// default, over TLS verified against its CA.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { useServer, serverBinary } = require('./lib/server');

const ctx = useServer({ before, after, beforeEach, afterEach }, { start: { tls: true } });

function call(args, { input, env = {} } = {}) {
  const srv = ctx.server;
  const r = spawnSync(serverBinary(), ['call', '--server', srv.address, '--data-dir', srv.dataDir, ...args], {
    input, encoding: 'utf8', env: { ...process.env, ...env },
  });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

test('a call as the admin of the data dir: the response in JSON', () => {
  const h = call(['grpc.health.v1.Health/Check']);
  assert.equal(h.status, 0, h.err);
  assert.deepEqual(JSON.parse(h.out), { status: 'SERVING' });
  // The short service name, a request with lowerCamelCase fields.
  const r = call(['CipherPolicyService/CreateCipherPolicy', '{"cipherPolicyId": "cli", "cipherPolicy": {"minVersion": "TLS_1_2"}}']);
  assert.equal(r.status, 0, r.err);
  const p = JSON.parse(r.out);
  assert.equal(p.name, 'cipherPolicies/cli');
  assert.equal(p.minVersion, 'TLS_1_2');
  // The request from a file, and from stdin.
  const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-call-')), 'req.json');
  fs.writeFileSync(f, '{"name": "cipherPolicies/cli"}');
  assert.equal(JSON.parse(call(['tlsplane.v1.CipherPolicyService/GetCipherPolicy', `@${f}`]).out).name, 'cipherPolicies/cli');
  assert.equal(JSON.parse(call(['CipherPolicyService/GetCipherPolicy', '-'], { input: '{"name": "cipherPolicies/cli"}' }).out).name, 'cipherPolicies/cli');
  fs.rmSync(path.dirname(f), { recursive: true, force: true });
  // --quiet prints nothing.
  const q = call(['--quiet', 'CipherPolicyService/GetCipherPolicy', '{"name": "cipherPolicies/cli"}']);
  assert.equal(q.status, 0);
  assert.equal(q.out, '');
});

test('a failed call: exit status 1 and the gRPC status on stderr; bad usage: 2', () => {
  const nf = call(['CertificateService/GetCertificate', '{"name": "certificates/none"}']);
  assert.equal(nf.status, 1);
  assert.match(nf.err, /^tlsplane-server call: NOT_FOUND: /);
  // Another token: the server's verdict.
  const bad = call(['CertificateService/ListCertificates'], { env: { TLSPLANE_TOKEN: 'tlsp_nope_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' } });
  assert.equal(bad.status, 1);
  assert.match(bad.err, /UNAUTHENTICATED/);
  const noMethod = call(['CertificateService/Nope']);
  assert.equal(noMethod.status, 2);
  assert.match(noMethod.err, /no such method/);
  const badJson = call(['CertificateService/GetCertificate', '{"nom": 1}']);
  assert.equal(badJson.status, 2);
  assert.match(badJson.err, /unknown field "nom"/);
  // Without TLS against a TLS server: the transport's status.
  const plain = call(['--plaintext', 'grpc.health.v1.Health/Check']);
  assert.equal(plain.status, 1);
  assert.match(plain.err, /UNAVAILABLE/);
});

// A server-streaming method: one JSON object per line as messages come.
function callAsync(args) {
  const srv = ctx.server;
  return new Promise((resolve) => {
    const child = spawn(serverBinary(), ['call', '--server', srv.address, '--data-dir', srv.dataDir, ...args]);
    let out = '', err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('exit', (status) => resolve({ status, out, err }));
  });
}

test('a stream: each event on a line, --max-messages ends it, --max-time gives up', async () => {
  const start = call(['CipherPolicyService/CreateCipherPolicy', '{"cipherPolicyId": "watched", "cipherPolicy": {"minVersion": "TLS_1_2"}}']);
  assert.equal(start.status, 0, start.err);
  const rev = JSON.parse(start.out).revision;
  // Resumed from before the change: the change and the next one, then stop.
  const watch = callAsync(['--max-messages', '2', 'AuditService/WatchEvents',
    JSON.stringify({ sinceRevision: String(Number(rev) - 1), include: ['RESOURCE_CHANGED'] })]);
  assert.equal(call(['CipherPolicyService/DeleteCipherPolicy', '{"name": "cipherPolicies/watched"}']).status, 0);
  const w = await watch;
  assert.equal(w.status, 0, w.err);
  const lines = w.out.trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(lines.map((e) => [e.resource, e.action]),
    [['cipherPolicies/watched', 'create'], ['cipherPolicies/watched', 'delete']]);
  assert.equal(lines[0].revision, rev);
  // Nothing more comes: --max-time ends the wait with DEADLINE_EXCEEDED.
  const t0 = Date.now();
  const idle = await callAsync(['--max-time', '1', 'AuditService/WatchEvents', '{"include": ["RENEWED"]}']);
  assert.equal(idle.status, 1);
  assert.match(idle.err, /DEADLINE_EXCEEDED/);
  assert.equal(idle.out, '');
  assert.ok(Date.now() - t0 < 20000);
  // A stream's error is the server's: a revision beyond the current one.
  const ahead = await callAsync(['AuditService/WatchEvents', '{"sinceRevision": "99999999"}']);
  assert.equal(ahead.status, 1);
  assert.match(ahead.err, /OUT_OF_RANGE/);
  const bad = call(['--max-messages', 'x', 'AuditService/WatchEvents']);
  assert.equal(bad.status, 2);
  assert.match(bad.err, /--max-messages/);
});
