'use strict';
// The server's HTTPS side (--http-listen): every unary method of every
// service called once through grpcurl (lib/grpcurl.js, over gRPC) and once
// through curl (the Connect protocol, JSON over HTTPS) with the same JSON,
// as the admin and as a viewer, and the two answers compared; then the
// protocol's edges: each error code's HTTP status, 415 for another codec,
// 405, connect-protocol-version, connect-timeout-ms, oversized and
// malformed bodies (refused, nothing written), client certificates,
// /metrics and /healthz, the security headers, and Node's fetch against a
// plaintext server.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const { uid } = require('./lib/util');
const { CODE_NAMES } = require('./lib/grpcurl');

const GRPCURL_JS = path.join(__dirname, 'lib/grpcurl.js');
// Connect's names for the codes (docs/protocol.md), by gRPC code number.
const CONNECT_CODES = [
  'ok', 'canceled', 'unknown', 'invalid_argument', 'deadline_exceeded', 'not_found', 'already_exists',
  'permission_denied', 'resource_exhausted', 'failed_precondition', 'aborted', 'out_of_range',
  'unimplemented', 'internal', 'unavailable', 'data_loss', 'unauthenticated',
];
const HTTP_STATUS = {
  canceled: 499, unknown: 500, invalid_argument: 400, deadline_exceeded: 504, not_found: 404,
  already_exists: 409, permission_denied: 403, resource_exhausted: 429, failed_precondition: 400,
  aborted: 409, out_of_range: 400, unimplemented: 501, internal: 500, unavailable: 503,
  data_loss: 500, unauthenticated: 401,
};

let srv;
let conn;
let p;
let tmp;
let viewer;

const api = () => conn.api;

function run(cmd, args, input) {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, timeout: 60000 }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : -1) : 0, stdout, stderr });
    });
    if (input !== undefined) child.stdin.end(input);
  });
}

// grpcurl's answer: { ok: true, body } or { ok: false, code, message }.
async function viaGrpcurl(method, json, token) {
  const r = await run(process.execPath, [GRPCURL_JS, '-cacert', path.join(srv.dataDir, 'ca.pem'), '-H', `authorization: Bearer ${token}`, '-d', json, srv.address, method]);
  if (r.code === 0) return { ok: true, body: JSON.parse(r.stdout) };
  const m = /Code: (\w+)\n\s+Message: ([\s\S]*?)\n?$/.exec(r.stderr);
  assert.ok(m, `grpcurl ${method} failed without a status: ${r.stderr}`);
  return { ok: false, code: CONNECT_CODES[CODE_NAMES.indexOf(m[1])], message: m[2] };
}

// curl's answer, the same shape, with the HTTP status and headers.
async function curl(pathname, { body, token, headers = [], method = 'POST', extra = [], http = '--http2' } = {}) {
  const hfile = path.join(tmp, `h-${uid('c')}`);
  const args = ['-sS', http, '--cacert', path.join(srv.dataDir, 'ca.pem'), '-D', hfile, '-X', method, '-o', '-', '-w', '\n%{http_code}'];
  if (token) args.push('-H', `authorization: Bearer ${token}`);
  for (const h of headers) args.push('-H', h);
  if (body !== undefined) args.push('--data-binary', '@-');
  args.push(...extra, `${srv.httpBase}${pathname}`);
  const r = await run('curl', args, body);
  assert.equal(r.code, 0, `curl ${pathname}: ${r.stderr}`);
  const cut = r.stdout.lastIndexOf('\n');
  const status = Number(r.stdout.slice(cut + 1));
  const text = r.stdout.slice(0, cut);
  const head = fs.readFileSync(hfile, 'utf8').toLowerCase();
  return { status, text, head };
}

async function viaCurl(method, json, token) {
  const r = await curl(`/${method}`, { body: json, token, headers: ['content-type: application/json'] });
  const body = JSON.parse(r.text);
  if (r.status === 200) return { ok: true, body };
  assert.equal(r.status, HTTP_STATUS[body.code], `${method}: HTTP ${r.status} for ${body.code}`);
  return { ok: false, code: body.code, message: body.message };
}

// Fields that change between two calls made one after the other: when a
// credential was last used (the call itself uses it).
function stable(v) {
  if (Array.isArray(v)) return v.map(stable);
  if (v && typeof v === 'object') {
    const out = {};
    for (const [k, x] of Object.entries(v)) if (k !== 'lastUseTime' && k !== 'lastUsedTime') out[k] = stable(x);
    return out;
  }
  return v;
}

// Every unary method of every tlsplane service, "tlsplane.v1.Svc/Method".
function unaryMethods() {
  const out = [];
  for (const [name, def] of Object.entries(conn.packageDefinition)) {
    if (!name.startsWith('tlsplane.v1.') || def.format) continue;
    for (const m of Object.values(def)) if (!m.requestStream && !m.responseStream) out.push(m.path.slice(1));
  }
  return out.sort();
}

// The request each method is called with: a real name where the method
// reads one resource, {} elsewhere (writes then fail validation, the same
// way through both, and change nothing).
const NAMED = {
  CertificateService: 'certificates/web',
  TlsContextService: 'tlsContexts/web',
  ListenerService: 'listeners/web',
  TicketKeyService: 'ticketKeyRings/ring',
  CipherPolicyService: 'cipherPolicies/default',
  TokenService: 'tokens/admin',
};
function requestFor(method) {
  const [svc, name] = method.slice('tlsplane.v1.'.length).split('/');
  if (name === 'GetServing') return JSON.stringify({ resource: 'certificates/web' });
  if (name === 'GetCaller') return '{}';
  if (name.startsWith('Get') && NAMED[svc] && name !== 'GetRollout') return JSON.stringify({ name: NAMED[svc] });
  return '{}';
}

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-gw-'));
  p = pki();
  srv = await Server.start({ tls: true });
  assert.ok(srv.httpBase, `the server printed its HTTP gateway's port:\n${srv.logText}`);
  conn = await connect(srv.address, srv.connectOptions());
  await api().CertificateService.CreateCertificate({ certificateId: 'web', certificate: { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key } });
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'web', tlsContext: { certificates: ['certificates/web'] } });
  await api().ListenerService.CreateListener({ listenerId: 'web', listener: { address: '127.0.0.1:0', upstream: '127.0.0.1:9', defaultTlsContext: 'tlsContexts/web' } });
  await api().TicketKeyService.CreateTicketKeyRing({ ticketKeyRingId: 'ring', ticketKeyRing: {} });
  const v = await api().TokenService.CreateToken({ tokenId: uid('viewer'), token: { role: 'VIEWER' } });
  noteSecret(v.secret);
  viewer = v.secret;
});

after(async () => {
  if (conn) conn.close();
  if (srv) await srv.stop();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

for (const who of ['admin', 'viewer']) {
  test(`every unary method answers the same through grpcurl and through curl, as the ${who}`, async () => {
    const token = who === 'admin' ? srv.adminToken : viewer;
    const methods = unaryMethods();
    assert.ok(methods.length >= 40, `the schema lists ${methods.length} unary methods`);
    const before = (await api().AuditService.ListAuditEvents({ pageSize: 1 })).auditEvents[0];
    let okCount = 0;
    for (const method of methods) {
      const json = requestFor(method);
      const g = await viaGrpcurl(method, json, token);
      const c = await viaCurl(method, json, token);
      assert.deepEqual(stable(c), stable(g), `${method} ${json} as ${who}`);
      if (g.ok) okCount++;
      if (who === 'viewer' && !method.includes('/Get') && !method.includes('/List')) assert.equal(g.ok, false, `${method} refused to a viewer`);
    }
    assert.ok(okCount >= 15, `${okCount} methods answered OK`);
    // Every write was refused: no audit event since.
    const now = (await api().AuditService.ListAuditEvents({ pageSize: 1 })).auditEvents[0];
    assert.equal(now.revision, before.revision, `nothing was written by the walk: ${JSON.stringify(now)}`);
  });
}

test('each error code has its HTTP status, and bad requests write nothing', async () => {
  const json = ['content-type: application/json'];
  const cases = [
    // [what, path, options, code]
    ['no credential', '/tlsplane.v1.CertificateService/ListCertificates', { body: '{}', headers: json }, 'unauthenticated'],
    ['a viewer writing', '/tlsplane.v1.CertificateService/DeleteCertificate', { body: '{"name":"certificates/web"}', token: viewer, headers: json }, 'permission_denied'],
    ['unknown resource', '/tlsplane.v1.CertificateService/GetCertificate', { body: '{"name":"certificates/none"}', token: srv.adminToken, headers: json }, 'not_found'],
    ['existing id', '/tlsplane.v1.TlsContextService/CreateTlsContext', { body: '{"tlsContextId":"web","tlsContext":{"certificates":["certificates/web"]}}', token: srv.adminToken, headers: json }, 'already_exists'],
    ['unknown field', '/tlsplane.v1.CertificateService/ListCertificates', { body: '{"nope":1}', token: srv.adminToken, headers: json }, 'invalid_argument'],
    ['malformed JSON', '/tlsplane.v1.CertificateService/CreateCertificate', { body: '{"certificateId": "x",', token: srv.adminToken, headers: json }, 'invalid_argument'],
    ['a streaming method', '/grpc.health.v1.Health/Watch', { body: '{}', headers: json }, 'unimplemented'],
    ['an unknown method of a service', '/tlsplane.v1.CertificateService/Nope', { body: '{}', token: srv.adminToken, headers: json }, 'unimplemented'],
    ['an unknown service', '/tlsplane.v1.Nope/Nope', { body: '{}', token: srv.adminToken, headers: json }, 'permission_denied'],
    ['the deadline passed', '/tlsplane.v1.CertificateService/ListCertificates', { body: '{}', token: srv.adminToken, headers: [...json, 'connect-timeout-ms: 0'] }, 'deadline_exceeded'],
    ['a bad timeout', '/tlsplane.v1.CertificateService/ListCertificates', { body: '{}', token: srv.adminToken, headers: [...json, 'connect-timeout-ms: 12345678901'] }, 'invalid_argument'],
    ['another protocol version', '/tlsplane.v1.CertificateService/ListCertificates', { body: '{}', token: srv.adminToken, headers: [...json, 'connect-protocol-version: 2'] }, 'invalid_argument'],
    ['a compressed body', '/tlsplane.v1.CertificateService/ListCertificates', { body: '{}', token: srv.adminToken, headers: [...json, 'content-encoding: gzip'] }, 'unimplemented'],
    ['a stale etag', '/tlsplane.v1.TlsContextService/UpdateTlsContext', { body: '{"tlsContext":{"name":"tlsContexts/web","etag":"1","certificates":["certificates/web"]}}', token: srv.adminToken, headers: json }, null],
  ];
  const rev0 = (await api().AuditService.ListAuditEvents({ pageSize: 1 })).auditEvents[0].revision;
  for (const [what, pathname, opts, code] of cases) {
    const r = await curl(pathname, opts);
    const body = JSON.parse(r.text);
    assert.match(r.head, /content-type: application\/json/, what);
    if (code) assert.equal(body.code, code, `${what}: ${r.text}`);
    assert.equal(r.status, HTTP_STATUS[body.code], `${what}: HTTP ${r.status} for ${body.code}`);
    assert.ok(body.message && body.message.length > 0, `${what}: a message`);
  }
  // The stale etag is one of the spec's 409/400 codes.
  const stale = JSON.parse((await curl(cases[cases.length - 1][1], cases[cases.length - 1][2])).text);
  assert.ok(['aborted', 'failed_precondition'].includes(stale.code), JSON.stringify(stale));

  // Another codec: 415. GET on a method: 405, Allow: POST.
  const proto = await curl('/tlsplane.v1.CertificateService/ListCertificates', { body: '', token: srv.adminToken, headers: ['content-type: application/proto'] });
  assert.equal(proto.status, 415);
  const get = await curl('/tlsplane.v1.CertificateService/ListCertificates', { method: 'GET', token: srv.adminToken });
  assert.equal(get.status, 405);
  assert.match(get.head, /allow: post/);

  // A body beyond 24 MiB: 413 (HTTP/1.1) or the stream refused (HTTP/2),
  // never a call.
  const big = `{"certificateId":"big","certificate":{"certificateChainPem":"${'A'.repeat(25 * 1024 * 1024)}"}}`;
  const r413 = await curl('/tlsplane.v1.CertificateService/CreateCertificate', { body: big, token: srv.adminToken, headers: json, http: '--http1.1', extra: ['-H', 'transfer-encoding: chunked'] });
  assert.equal(r413.status, 413, r413.text.slice(0, 200));

  const rev1 = (await api().AuditService.ListAuditEvents({ pageSize: 1 })).auditEvents[0].revision;
  assert.equal(rev1, rev0, 'no refused request wrote anything');
  await assert.rejects(api().CertificateService.GetCertificate({ name: 'certificates/big' }), /NOT_FOUND|not found/);
});

test('a write through the gateway is a write: audited as the caller, pushed like any other', async () => {
  const id = uid('gw');
  const r = await curl('/tlsplane.v1.CertificateService/CreateCertificate', {
    body: JSON.stringify({ certificateId: id, certificate: { certificateChainPem: p.ecdsa2.cert, privateKeyPem: p.ecdsa2.key } }),
    token: srv.adminToken,
    headers: ['content-type: application/json; charset=utf-8', 'connect-protocol-version: 1'],
  });
  assert.equal(r.status, 200, r.text);
  const made = JSON.parse(r.text);
  assert.equal(made.name, `certificates/${id}`);
  assert.equal(made.privateKeyPem, undefined, 'no key returned');
  assert.ok(!r.text.includes('PRIVATE KEY'));
  const got = await api().CertificateService.GetCertificate({ name: made.name });
  assert.equal(got.etag, made.etag);
  const ev = (await api().AuditService.ListAuditEvents({ pageSize: 1 })).auditEvents[0];
  assert.equal(ev.resource, made.name);
  assert.equal(ev.actor, 'token:admin');
  assert.ok(!srv.logText.includes(p.ecdsa2.key.split('\n')[1]), 'the key is not logged');
});

test('client certificates authenticate over the gateway as over gRPC', async () => {
  const r = await curl('/tlsplane.v1.TokenService/ListTokens', {
    body: '{}', headers: ['content-type: application/json'], extra: ['--cert', path.join(srv.dataDir, 'admin.pem'), '--key', path.join(srv.dataDir, 'admin-key.pem')],
  });
  assert.equal(r.status, 200, r.text);
  assert.ok(JSON.parse(r.text).tokens.length >= 1);
  // A certificate from another CA fails the handshake.
  const bad = await run('curl', ['-sS', '--cacert', path.join(srv.dataDir, 'ca.pem'), '--cert', p.file('ecdsa.crt'), '--key', p.file('ecdsa.key'), '-X', 'POST', '-H', 'content-type: application/json', '-d', '{}', `${srv.httpBase}/tlsplane.v1.TokenService/ListTokens`]);
  assert.notEqual(bad.code, 0, 'a foreign client certificate is refused');
});

test('/metrics for readers, /healthz for anyone, security headers everywhere', async () => {
  const anon = await curl('/metrics', { method: 'GET' });
  assert.equal(anon.status, 401);
  const m = await curl('/metrics', { method: 'GET', token: viewer });
  assert.equal(m.status, 200);
  assert.match(m.head, /content-type: text\/plain; version=0\.0\.4/);
  const rev = store => Number(/^tlsplane_revision (\d+)$/m.exec(store)[1]);
  const cert = await api().CertificateService.GetCertificate({ name: 'certificates/web' });
  assert.ok(rev(m.text) >= Number(cert.revision));
  const notAfter = new RegExp(`^tlsplane_certificate_not_after_seconds\\{certificate="certificates/web",serial="${cert.serialNumber}",sha256="${cert.sha256Fingerprint}"\\} (\\d+)$`, 'm').exec(m.text);
  assert.ok(notAfter, m.text);
  assert.equal(Number(notAfter[1]), Number(cert.notAfter.seconds));
  assert.match(m.text, /^tlsplane_rpc_calls_total\{method="\/tlsplane\.v1\.CertificateService\/ListCertificates",transport="connect",code="OK"\} \d+$/m);
  assert.match(m.text, /^tlsplane_rpc_calls_total\{method="\/tlsplane\.v1\.CertificateService\/GetCertificate",transport="grpc",code="OK"\} \d+$/m);
  assert.match(m.text, /^tlsplane_push_latency_seconds_count \d+$/m);
  assert.match(m.text, /^tlsplane_agents_connected 0$/m);
  const agentToken = await curl('/metrics', { method: 'GET', token: 'tp_nope' });
  assert.equal(agentToken.status, 401);

  const h = await curl('/healthz', { method: 'GET' });
  assert.equal(h.status, 200);
  assert.equal(h.text.trim(), 'ok');
  for (const r of [m, h, anon]) {
    assert.match(r.head, /content-security-policy: default-src 'none'; script-src 'self';[^\n]*frame-ancestors 'none'/);
    assert.match(r.head, /x-content-type-options: nosniff/);
    assert.match(r.head, /referrer-policy: no-referrer/);
  }
});

test('plaintext when asked, on loopback, and Node\'s fetch speaks it', async () => {
  const plain = await Server.start({ tls: false });
  try {
    assert.match(plain.httpBase, /^http:\/\/127\.0\.0\.1:\d+$/);
    const res = await fetch(`${plain.httpBase}/tlsplane.v1.CertificateService/ListCertificates`, {
      method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${plain.adminToken}` }, body: '{}',
    });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {});
    const denied = await fetch(`${plain.httpBase}/tlsplane.v1.TokenService/ListTokens`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    assert.equal(denied.status, 401);
    assert.equal((await denied.json()).code, 'unauthenticated');
  } finally {
    await plain.stop();
  }
  // Not on another address.
  const r = await run(srv.binary, ['--data-dir', path.join(tmp, 'x'), '--plaintext', '--listen', '127.0.0.1:0', '--http-listen', '0.0.0.0:0']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--plaintext serves on loopback only/);
  // A port in use: the server does not start.
  const busy = await run(srv.binary, ['--data-dir', path.join(tmp, 'y'), '--listen', '127.0.0.1:0', '--http-listen', `127.0.0.1:${srv.httpPort}`]);
  assert.equal(busy.code, 1, busy.stderr);
  assert.match(busy.stderr, /--http-listen: cannot listen on 127\.0\.0\.1:\d+: address already in use/);
});
