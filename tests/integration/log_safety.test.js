'use strict';
// What clients send never reaches the server's log raw: a token pasted into
// a method path is never logged (a path that names no method is logged as
// "unknown method (N bytes)"), and text a client controls (an agent's
// version and nack reasons, the server name of a TLS handshake that grpc
// core logs) is escaped, so that it can neither start a log line of its
// own nor hide in one. A successful write is logged (revision, action,
// resource, actor, method), its secret never.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { spawnSync } = require('node:child_process');
const { useServer, noteSecret } = require('./lib/server');
const { connect, grpc } = require('./lib/reflect');
const { status, uid, makeCsr, rawUnary, bearer } = require('./lib/util');

const ctx = useServer({ before, after, beforeEach, afterEach }, { start: { tls: true } });
const api = () => ctx.api;
const srv = () => ctx.server;

const conns = [];
after(() => {
  for (const c of conns) c.close();
});

// Text that would start a log line of its own if written raw.
const FORGED = 'FORGED';

// Log lines that start with the forged text `what`.
function forgedLines(what) {
  return srv()
    .log()
    .split('\n')
    .filter((l) => l.startsWith(`${FORGED}-${what}`));
}

// Waits until the server's log matches re at least n times.
async function waitForLog(re, n = 1, ms = 10000) {
  const deadline = Date.now() + ms;
  const g = new RegExp(re.source, 'g');
  while ((srv().log().match(g) || []).length < n) {
    if (Date.now() > deadline) throw new Error(`the server's log does not match ${re} ${n} times within ${ms} ms; tail:\n${srv().tail(10)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function tlsCreds() {
  return grpc.credentials.createSsl(srv().ca);
}

test('a token in a method path never reaches the log: unknown methods are logged by length only', async () => {
  const secret = `tlsp_admin_${crypto.randomBytes(32).toString('base64url')}`;
  noteSecret(secret);
  const viewer = await api().TokenService.CreateToken({ tokenId: uid('viewer'), token: { role: 'VIEWER' } });
  noteSecret(viewer.secret);
  const unknownPath = `/${secret}/X`;
  const underService = `/tlsplane.v1.CertificateService/${secret}`;

  // No credential, the admin's, a viewer's: each refused, each logged.
  const anon = await rawUnary(srv().address, tlsCreds(), unknownPath);
  assert.equal(anon.code, status.UNAUTHENTICATED, anon.details);
  const admin = await rawUnary(srv().address, tlsCreds(), unknownPath, { metadata: bearer(srv().adminToken) });
  assert.equal(admin.code, status.PERMISSION_DENIED, admin.details);
  const view = await rawUnary(srv().address, tlsCreds(), underService, { metadata: bearer(viewer.secret) });
  assert.equal(view.code, status.PERMISSION_DENIED, view.details);
  // An open service: authenticated as anyone, then UNIMPLEMENTED.
  const open = await rawUnary(srv().address, tlsCreds(), `/grpc.health.v1.Health/${secret}`);
  assert.equal(open.code, status.UNIMPLEMENTED, open.details);

  await waitForLog(/warn auth: .*refused/, 3);
  const log = srv().log();
  assert.ok(!log.includes(secret.slice('tlsp_admin_'.length)), 'the log holds the secret part of the path');
  srv().assertLogClean();
  assert.match(log, new RegExp(`warn auth: unknown method \\(${underService.length} bytes\\) from \\S+ refused: permission denied`));
  assert.match(log, new RegExp(`warn auth: unknown method \\(${unknownPath.length} bytes\\) from \\S+ refused: no credential`));
  assert.ok(!view.details.includes(secret), `the refusal quotes the path: ${view.details}`);
});

// Enrolls agent `id` with a join token made for it; a connection with its
// certificate (mutual TLS), as a real agent holds it.
async function enrolledAgent(id) {
  const join = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: id } });
  noteSecret(join.secret);
  const { key, csr } = makeCsr();
  const jc = await connect(srv().address, { tls: { ca: srv().ca }, token: join.secret });
  conns.push(jc);
  const res = await jc.api.AgentService.EnrollAgent({ agentId: id, csrPem: csr });
  const c = await connect(srv().address, { tls: { ca: srv().ca, cert: res.certificatePem, key } });
  conns.push(c);
  return c;
}

test("an agent's version and nack reasons cannot forge log lines", async () => {
  const id = uid('forge');
  const conn = await enrolledAgent(id);
  const call = conn.clients['tlsplane.v1.AgentService'].Connect();
  const first = new Promise((resolve, reject) => {
    call.on('data', resolve);
    call.on('error', reject);
  });
  const version = `1.0\n${FORGED}-VERSION 2026-01-01T00:00:00.000Z error hub: level=error forged`;
  call.write({ hello: { name: id, labels: {}, version, appliedRevision: '0' } });
  const m = await first;
  assert.equal(m.message, 'snapshot');
  call.write({
    ack: {
      revision: m.snapshot.revision,
      listeners: [
        {
          listener: `listeners/x\n${FORGED}-LISTENER level=error`,
          applied: false,
          error: `bind failed\n${FORGED}-NACK 2026-01-01T00:00:00.000Z error hub: level=error forged \u2028 "quoted"`,
        },
      ],
    },
  });
  await waitForLog(/not applied/);
  call.end();
  call.cancel();
  for (const what of ['VERSION', 'LISTENER', 'NACK']) assert.deepEqual(forgedLines(what), [], `log lines started by the agent's ${what.toLowerCase()}`);
  const log = srv().log();
  assert.ok(log.includes(`(version "1.0\\n${FORGED}-VERSION 2026-01-01T00:00:00.000Z error hub: level=error forged"`), 'the version, escaped');
  assert.ok(log.includes(`listener="listeners/x\\n${FORGED}-LISTENER level=error" not applied: "bind failed\\n${FORGED}-NACK`), 'the nack, escaped');
  assert.ok(log.includes('\\u{2028} \\"quoted\\""'), 'a line separator and quotes, escaped');
  // The API still shows the agent's words as they were.
  const agent = await api().AgentService.GetAgent({ name: `agents/${id}` });
  assert.equal(agent.version, version);
});

test("grpc core's own log lines come out in the server's format, escaped (a TLS server name with a newline)", async () => {
  const sni = `evil\n${FORGED}-SNI level=error forged`;
  const r = spawnSync('openssl', ['s_client', '-connect', srv().address, '-servername', sni], { input: '', timeout: 20000 });
  assert.ok(r.error === undefined, `openssl s_client: ${r.error}`);
  await waitForLog(/No match found for server name/);
  assert.deepEqual(forgedLines('SNI'), [], 'log lines started by the server name');
  assert.match(srv().log(), new RegExp(`warn grpc: \\S+:\\d+: No match found for server name: evil\\\\n${FORGED}-SNI level=error forged`));
});

test('a successful write is logged at info with its revision, action, resource, actor and method, never its secret', async () => {
  const id = uid('logged');
  const made = await api().TokenService.CreateToken({ tokenId: id, token: { role: 'VIEWER' } });
  noteSecret(made.secret);
  await waitForLog(new RegExp(`info api: committed revision=\\d+: action=create resource="tokens/${id}" actor="token:admin" method="/tlsplane.v1.TokenService/CreateToken"`));
  const rev = Number(new RegExp(`committed revision=(\\d+): action=create resource="tokens/${id}"`).exec(srv().log())[1]);
  const read = await api().TokenService.GetToken({ name: `tokens/${id}` });
  assert.equal(rev, Number(read.revision), 'the revision the write made');
  // A refused write is not logged as one; a delete is.
  await assert.rejects(api().TokenService.CreateToken({ tokenId: id, token: { role: 'VIEWER' } }));
  await api().TokenService.DeleteToken({ name: `tokens/${id}` });
  await waitForLog(new RegExp(`info api: committed revision=\\d+: action=delete resource="tokens/${id}"`));
  assert.equal(srv().log().split('\n').filter((l) => l.includes(`action=create resource="tokens/${id}"`)).length, 1);
  assert.ok(!srv().log().includes(made.secret));
  srv().assertLogClean();
});
