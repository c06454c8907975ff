'use strict';
// The control plane's own security, over real TLS: the data directory the
// first start makes, bearer tokens and client certificates, the table of
// roles against every method, refused credentials (no credential, wrong
// role, revoked, expired, unknown, foreign CA), agent enrollment with a
// one-time join token, mutual TLS for the agent stream, renewal, and
// revocation cutting a stream at once.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { useServer, noteSecret, Server } = require('./lib/server');
const { connect, grpc } = require('./lib/reflect');
const { pki, DAY } = require('./lib/pki');
const { status, statusName, expectGrpcError, uid, makeCsr, rawUnary, bearer, toDate, tokenSecretPart } = require('./lib/util');
const { waitFor } = require('./lib/wait');
const { tool } = require('./lib/tools');

const ctx = useServer({ before, after, beforeEach, afterEach }, { start: { tls: true } });
const api = () => ctx.api;
const srv = () => ctx.server;

const conns = [];
after(() => {
  for (const c of conns) c.close();
});

// A connection as someone: { token } and/or { cert, key }.
async function connectAs({ token, cert, key } = {}) {
  const tls = { ca: srv().ca };
  if (cert) Object.assign(tls, { cert, key });
  const c = await connect(srv().address, { tls, token });
  conns.push(c);
  return c;
}

function tlsCreds({ cert, key } = {}) {
  return grpc.credentials.createSsl(srv().ca, key ? Buffer.from(key) : null, cert ? Buffer.from(cert) : null);
}

async function newToken(role, extra = {}, req = {}) {
  const id = uid(role.toLowerCase());
  const r = await api().TokenService.CreateToken({ tokenId: id, token: { role, ...extra }, ...req });
  noteSecret(r.secret);
  return { id, name: `tokens/${id}`, secret: r.secret, token: r.token };
}

// Enrolls agent `id` with a fresh join token: its key, certificate and the
// response.
async function enroll(id, { joinAgentId = id, askId = '' } = {}) {
  const join = await newToken('JOIN', { agentId: joinAgentId });
  const { key, csr } = makeCsr();
  noteSecret(key.split('\n')[1]);
  const c = await connectAs({ token: join.secret });
  const res = await c.api.AgentService.EnrollAgent({ agentId: askId, csrPem: csr });
  return { key, cert: res.certificatePem, res, join };
}

// An agent stream: resolves with the first message or the error.
function openStream(conn, name) {
  const call = conn.clients['tlsplane.v1.AgentService'].Connect();
  const first = new Promise((resolve) => {
    call.on('data', (m) => resolve({ message: m }));
    call.on('error', (e) => resolve({ error: e }));
    call.on('end', () => resolve({ error: new Error('ended') }));
  });
  call.write({ hello: { name, labels: {}, version: 'auth-test', appliedRevision: '0' } });
  const ended = new Promise((resolve) => {
    call.on('error', resolve);
    call.on('end', () => resolve(null));
  });
  return { call, first, ended };
}

function fileMode(name) {
  return fs.statSync(path.join(srv().dataDir, name)).mode & 0o777;
}

test('the first start made the data directory: CA, server certificate, admin credentials, master key', () => {
  for (const f of ['tlsplane.db', 'ca.pem', 'server.pem']) assert.ok(fs.existsSync(path.join(srv().dataDir, f)), `${f} exists`);
  for (const f of ['ca-key.pem', 'server-key.pem', 'admin.token', 'admin.pem', 'admin-key.pem', 'master.key']) {
    assert.equal(fileMode(f), 0o600, `${f} is private`);
  }
  assert.match(srv().adminToken, /^tlsp_admin_[A-Za-z0-9_-]{43}$/);
  const x = (file, ...a) => execFileSync(tool('openssl'), ['x509', '-in', path.join(srv().dataDir, file), '-noout', ...a]).toString();
  const sans = x('server.pem', '-ext', 'subjectAltName');
  assert.match(sans, /DNS:localhost/);
  assert.match(sans, /IP Address:127\.0\.0\.1/);
  assert.match(x('admin.pem', '-subject', '-nameopt', 'RFC2253'), /CN=admin,OU=admin,O=tlsplane/);
  execFileSync(tool('openssl'), ['verify', '-CAfile', path.join(srv().dataDir, 'ca.pem'), path.join(srv().dataDir, 'server.pem'), path.join(srv().dataDir, 'admin.pem')]);
  const key = fs.readFileSync(path.join(srv().dataDir, 'master.key'), 'utf8').trim();
  assert.equal(Buffer.from(key, 'base64').length, 32);
});

test('TLS only: a plaintext client cannot talk to the server', async () => {
  const r = await rawUnary(srv().address, grpc.credentials.createInsecure(), '/grpc.health.v1.Health/Check');
  assert.equal(statusName(r.code), 'UNAVAILABLE');
  const ok = await rawUnary(srv().address, tlsCreds(), '/grpc.health.v1.Health/Check');
  assert.equal(statusName(ok.code), 'OK', 'health is open over TLS, no credential');
});

test('the admin by token and by client certificate; the audit trail names each', async () => {
  const byToken = await api().CipherPolicyService.CreateCipherPolicy({ cipherPolicyId: uid('tok'), cipherPolicy: {} });
  const certConn = await connectAs({ cert: srv().adminCert, key: srv().adminKey });
  const byCert = await certConn.api.CipherPolicyService.CreateCipherPolicy({ cipherPolicyId: uid('crt'), cipherPolicy: {} });
  const actorOf = async (resource) => (await api().AuditService.ListAuditEvents({ resource })).auditEvents[0].actor;
  assert.equal(await actorOf(byToken.name), 'token:admin');
  assert.equal(await actorOf(byCert.name), 'CN=admin,OU=admin,O=tlsplane');
  const certs = (await api().ClientCertificateService.ListClientCertificates({})).clientCertificates;
  const admin = certs.find((c) => c.principal === 'admin');
  assert.ok(admin.lastUsedTime, 'the admin certificate shows its last use');
  assert.equal(admin.role, 'ADMIN');
  assert.match(admin.name, /^clientCertificates\/serial-[0-9a-f]{32}$/);
});

// Who may call what: one row per method of every tlsplane.v1 service, one
// column per role. The documented table (docs/api.md), written out again.
const READ = ['admin', 'operator', 'viewer'];
const WRITE = ['admin', 'operator'];
function allowedRoles(service, method) {
  if (service === 'TokenService' && method === 'GetCaller') return ['admin', 'operator', 'viewer', 'agent', 'join'];
  if (service === 'TokenService' || service === 'ClientCertificateService') return ['admin'];
  if (service === 'AgentService') {
    if (method === 'Connect') return ['agent'];
    if (method === 'UpdateAgent') return WRITE;
    if (method === 'EnrollAgent') return ['admin', 'join'];
    if (method === 'RenewAgentCertificate') return ['admin', 'agent'];
    if (method === 'DeleteAgent') return ['admin'];
    return READ;
  }
  if (service === 'AuditService') return READ;
  if (service === 'IssuerService' && !/^(Get|List)/.test(method)) return ['admin'];
  if (/^(Get|List)/.test(method)) return READ;
  return WRITE;
}

test('every role against every method: allowed, or refused with the status', async (t) => {
  const agentId = uid('tbl');
  const agent = await enroll(agentId);
  const roles = {
    none: { creds: tlsCreds() },
    admin: { creds: tlsCreds(), token: srv().adminToken },
    operator: { creds: tlsCreds(), token: (await newToken('OPERATOR')).secret },
    viewer: { creds: tlsCreds(), token: (await newToken('VIEWER')).secret },
    agent: { creds: tlsCreds({ cert: agent.cert, key: agent.key }) },
    join: { creds: tlsCreds(), token: (await newToken('JOIN', { agentId: uid('j') })).secret },
  };
  const methods = [];
  for (const [full, def] of Object.entries(ctx.conn.packageDefinition)) {
    if (!full.startsWith('tlsplane.v1.') || def.format) continue;
    for (const [name, m] of Object.entries(def)) {
      if (m && typeof m.path === 'string') methods.push({ service: full.slice(12), name, path: m.path, stream: m.requestStream || m.responseStream });
    }
  }
  assert.ok(methods.length >= 50, `only ${methods.length} methods`);
  const rows = [];
  const failures = [];
  for (const m of methods) {
    const allowed = allowedRoles(m.service, m.name);
    const row = [`${m.service}/${m.name}`];
    for (const [role, who] of Object.entries(roles)) {
      let code;
      if (m.stream) {
        // The agent stream: a hello under the agent's own id.
        const c = new grpc.Client(srv().address, who.creds);
        const call = c.makeBidiStreamRequest(m.path, (x) => x, (x) => x, bearer(who.token));
        code = await new Promise((resolve) => {
          call.on('data', () => resolve(status.OK));
          call.on('error', (e) => resolve(e.code));
          // AgentMessage { hello (1) { name (1) } }
          const name = Buffer.from(role === 'agent' ? agentId : `${role}-table`);
          call.write(Buffer.concat([Buffer.from([0x0a, name.length + 2, 0x0a, name.length]), name]));
        });
        call.cancel();
        c.close();
      } else {
        code = (await rawUnary(srv().address, who.creds, m.path, { metadata: bearer(who.token) })).code;
      }
      const ok = role === 'none'
        ? code === status.UNAUTHENTICATED
        : allowed.includes(role)
          ? code !== status.UNAUTHENTICATED && code !== status.PERMISSION_DENIED
          : code === status.PERMISSION_DENIED;
      if (!ok) failures.push(`${m.service}/${m.name} as ${role}: ${statusName(code)} (allowed: ${allowed.join(', ')})`);
      row.push(allowed.includes(role) ? `yes ${statusName(code)}` : statusName(code));
    }
    rows.push(row.join(' | '));
  }
  t.diagnostic(`method | ${Object.keys(roles).join(' | ')}`);
  for (const row of rows) t.diagnostic(row);
  assert.deepEqual(failures, []);
  // Health and reflection stay open.
  for (const [role, who] of Object.entries(roles)) {
    const r = await rawUnary(srv().address, who.creds, '/grpc.health.v1.Health/Check', { metadata: bearer(who.token) });
    assert.equal(statusName(r.code), 'OK', `health as ${role}`);
  }
});

test('tokens: the secret is shown once and stored as a hash; revoked, deleted, expired or wrong tokens are refused at once', async () => {
  const op = await newToken('OPERATOR', { description: 'ci rotation job' });
  assert.match(op.secret, new RegExp(`^tlsp_${op.id}_[A-Za-z0-9_-]{43}$`));
  const got = await api().TokenService.GetToken({ name: op.name });
  assert.ok(!JSON.stringify(got).includes(tokenSecretPart(op.secret)), 'no read returns the secret');
  assert.equal(got.role, 'OPERATOR');
  assert.equal(got.createdBy, 'token:admin');
  assert.equal(got.lastUsedTime, null);

  const c = await connectAs({ token: op.secret });
  const pol = await c.api.CipherPolicyService.CreateCipherPolicy({ cipherPolicyId: uid('op'), cipherPolicy: {} });
  const events = (await api().AuditService.ListAuditEvents({ resource: pol.name })).auditEvents;
  assert.equal(events[0].actor, `token:${op.id}`);
  const listed = (await api().TokenService.ListTokens({})).tokens.find((x) => x.name === op.name);
  assert.ok(listed.lastUsedTime, 'the token shows its last use');

  // A wrong secret for a real token id; a token of no known shape.
  const wrong = op.secret.slice(0, -4) + (op.secret.endsWith('AAAA') ? 'BBBB' : 'AAAA');
  await expectGrpcError(connectAs({ token: wrong }).then((x) => x.api.CipherPolicyService.ListCipherPolicies({})), status.UNAUTHENTICATED);
  let r = await rawUnary(srv().address, tlsCreds(), '/tlsplane.v1.CertificateService/ListCertificates', { metadata: bearer('not-a-token') });
  assert.equal(statusName(r.code), 'UNAUTHENTICATED');
  const md = new grpc.Metadata();
  md.set('authorization', 'Basic YWRtaW46YWRtaW4=');
  r = await rawUnary(srv().address, tlsCreds(), '/tlsplane.v1.CertificateService/ListCertificates', { metadata: md });
  assert.equal(statusName(r.code), 'UNAUTHENTICATED');

  // Revoked: the very next call is refused; the token stays listed.
  const revoked = await api().TokenService.RevokeToken({ name: op.name });
  assert.equal(revoked.revoked, true);
  assert.ok(revoked.revokeTime);
  const err = await expectGrpcError(c.api.CipherPolicyService.ListCipherPolicies({}), status.UNAUTHENTICATED);
  assert.match(err.details, /revoked/);

  // Deleted: gone.
  const v = await newToken('VIEWER');
  const vc = await connectAs({ token: v.secret });
  await vc.api.CipherPolicyService.ListCipherPolicies({});
  await api().TokenService.DeleteToken({ name: v.name });
  await expectGrpcError(vc.api.CipherPolicyService.ListCipherPolicies({}), status.UNAUTHENTICATED);

  // Expired: a ttl lasts exactly the ttl from the moment the token is made
  // (not to the end of a whole second), then every call is refused. 3 s,
  // so that the call before the expiry has time for its TLS handshake on a
  // loaded machine.
  const made = Date.now();
  const short = await newToken('VIEWER', {}, { ttl: { seconds: '3', nanos: 0 } });
  const expires = toDate(short.token.expireTime).getTime();
  assert.ok(expires >= made + 3000 && expires <= Date.now() + 3000,
    `a 3 s ttl expires ${expires - made} ms after the request was sent`);
  const sc = await connectAs({ token: short.secret });
  await sc.api.CipherPolicyService.ListCipherPolicies({});
  const e2 = await waitFor('the expired token refused', () =>
    sc.api.CipherPolicyService.ListCipherPolicies({}).then(() => null, (e) => e), { timeoutMs: 30000 });
  assert.equal(statusName(e2.code), 'UNAUTHENTICATED', e2.details);
  assert.match(e2.details, /expired/);
  assert.ok(Date.now() >= expires, 'refused before its expire_time');

  // Bad requests.
  await expectGrpcError(api().TokenService.CreateToken({ tokenId: uid('x'), token: { role: 'AGENT' } }), status.INVALID_ARGUMENT, { field: 'token.role' });
  await expectGrpcError(api().TokenService.CreateToken({ tokenId: 'Bad_Id', token: { role: 'VIEWER' } }), status.INVALID_ARGUMENT, { field: 'token_id' });
  await expectGrpcError(api().TokenService.CreateToken({ tokenId: op.id, token: { role: 'VIEWER' } }), status.ALREADY_EXISTS);
  await expectGrpcError(api().TokenService.CreateToken({ tokenId: uid('x'), token: { role: 'VIEWER', expireTime: { seconds: '1000', nanos: 0 } } }), status.INVALID_ARGUMENT, { field: 'token.expire_time' });
});

test('client certificates: foreign CA, expired, not issued here, or revoked are refused', async () => {
  const p = pki();
  const admin = async (creds) => rawUnary(srv().address, creds, '/tlsplane.v1.CipherPolicyService/ListCipherPolicies');

  // A certificate of another CA: the handshake fails.
  let r = await admin(tlsCreds({ cert: p.ecdsa.cert, key: p.ecdsa.key }));
  assert.equal(statusName(r.code), 'UNAVAILABLE', `foreign CA: ${r.details}`);

  // Signed with the control plane's own CA key (stolen, say) but expired:
  // the handshake fails too.
  fs.copyFileSync(path.join(srv().dataDir, 'ca.pem'), p.file('srvca.crt'));
  fs.copyFileSync(path.join(srv().dataDir, 'ca-key.pem'), p.file('srvca.key'));
  const now = Date.now();
  const expired = p.leaf('srv-expired', { cn: 'admin', o: 'tlsplane', issuer: 'srvca', start: new Date(now - 10 * DAY), end: new Date(now - DAY) });
  r = await admin(tlsCreds({ cert: expired.cert, key: expired.key }));
  assert.equal(statusName(r.code), 'UNAVAILABLE', `expired: ${r.details}`);

  // Valid and signed by the CA, but never issued (no record): refused.
  const forged = p.leaf('srv-forged', { cn: 'admin', o: 'tlsplane', issuer: 'srvca' });
  r = await admin(tlsCreds({ cert: forged.cert, key: forged.key }));
  assert.equal(statusName(r.code), 'UNAUTHENTICATED', `not issued here: ${r.details}`);
  assert.match(r.details, /not issued by this control plane/);

  // Issued for an operator: works as one; revoked: refused at once.
  const { key, csr } = makeCsr('whatever');
  noteSecret(key.split('\n')[1]);
  const issued = await api().ClientCertificateService.IssueClientCertificate({ csrPem: csr, role: 'OPERATOR', principal: 'alice' });
  assert.equal(issued.subject, 'CN=alice,OU=operator,O=tlsplane');
  assert.equal(issued.issuedBy, 'token:admin');
  const alice = await connectAs({ cert: issued.certificatePem, key });
  const pol = await alice.api.CipherPolicyService.CreateCipherPolicy({ cipherPolicyId: uid('alice'), cipherPolicy: {} });
  assert.equal((await api().AuditService.ListAuditEvents({ resource: pol.name })).auditEvents[0].actor, 'CN=alice,OU=operator,O=tlsplane');
  await expectGrpcError(alice.api.TokenService.ListTokens({}), status.PERMISSION_DENIED);
  await api().ClientCertificateService.RevokeClientCertificate({ name: issued.name });
  const err = await expectGrpcError(alice.api.CipherPolicyService.ListCipherPolicies({}), status.UNAUTHENTICATED);
  assert.match(err.details, /revoked/);

  // A CSR whose signature does not match its key is refused.
  const tampered = csr.replace(/(\n[A-Za-z0-9+/]{10})[A-Za-z0-9+/]/, (m, a) => a + (m.endsWith('A') ? 'B' : 'A'));
  await expectGrpcError(api().ClientCertificateService.IssueClientCertificate({ csrPem: tampered, role: 'VIEWER', principal: 'bob' }), status.INVALID_ARGUMENT, { field: 'csr_pem' });
  await expectGrpcError(api().ClientCertificateService.IssueClientCertificate({ csrPem: csr, role: 'JOIN', principal: 'bob' }), status.INVALID_ARGUMENT, { field: 'role' });
});

test('--agent-cert-lifetime: enrolled and renewed agent certificates live that long, renewed at two thirds', async () => {
  const s2 = await Server.start({ tls: true, extraArgs: ['--agent-cert-lifetime', '2h'] });
  const opened = [];
  try {
    const admin = await connect(s2.address, s2.connectOptions());
    opened.push(admin);
    const id = uid('short');
    const join = await admin.api.TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: id } });
    noteSecret(join.secret);
    const joined = await connect(s2.address, { tls: { ca: s2.ca }, token: join.secret });
    opened.push(joined);
    const first = makeCsr();
    noteSecret(first.key.split('\n')[1]);
    const res = await joined.api.AgentService.EnrollAgent({ agentId: id, csrPem: first.csr });
    const lifetime = (r) => {
      const x = new crypto.X509Certificate(r.certificatePem);
      return (Date.parse(x.validTo) - Date.parse(x.validFrom)) / 1000;
    };
    // Issued a little in the past (clock skew), so at least 2 h and at most 2 h plus that.
    const enrolled = lifetime(res);
    assert.ok(enrolled >= 7200 && enrolled <= 7200 + 3600, `the enrolled certificate lives ${enrolled} s`);
    const hoursLeft = (Number(res.notAfter.seconds) * 1000 - Date.now()) / 3600e3;
    assert.ok(hoursLeft > 1.9 && hoursLeft <= 2.01, `valid for ${hoursLeft} more hours`);
    const renewIn = (Number(res.renewAfter.seconds) * 1000 - Date.now()) / 3600e3;
    assert.ok(renewIn > 1.1 && renewIn < 1.4, `renewed in ${renewIn} hours (two thirds of its life)`);
    const agentConn = await connect(s2.address, { tls: { ca: s2.ca, cert: res.certificatePem, key: first.key } });
    opened.push(agentConn);
    const next = makeCsr();
    noteSecret(next.key.split('\n')[1]);
    const renewed = await agentConn.api.AgentService.RenewAgentCertificate({ csrPem: next.csr });
    assert.equal(lifetime(renewed), enrolled, 'the renewed certificate lives as long');
  } finally {
    for (const c of opened) c.close();
    await s2.stopClean();
  }
});

test('enrollment: a one-time join token and a CSR give an agent its certificate; mutual TLS from then on', async () => {
  const id = uid('edge');
  const a = await enroll(id);
  assert.match(a.cert, /BEGIN CERTIFICATE/);
  assert.equal(a.res.caPem.trim(), srv().ca.toString().trim());
  assert.equal(a.res.agent, `agents/${id}`);
  const days = (Number(a.res.notAfter.seconds) * 1000 - Date.now()) / DAY;
  assert.ok(days > 29 && days <= 30.1, `valid for ${days} days`);
  assert.ok(Number(a.res.renewAfter.seconds) < Number(a.res.notAfter.seconds));
  const subject = execFileSync(tool('openssl'), ['x509', '-noout', '-subject', '-nameopt', 'RFC2253'], { input: a.cert }).toString();
  assert.match(subject, new RegExp(`CN=agent:${id},OU=agent,O=tlsplane`), 'the server sets the subject, not the CSR');

  // The join token is used up.
  const used = await api().TokenService.GetToken({ name: a.join.name });
  assert.equal(used.usedBy, `agents/${id}`);
  const again = await connectAs({ token: a.join.secret });
  const { csr } = makeCsr();
  const e = await expectGrpcError(again.api.AgentService.EnrollAgent({ agentId: id, csrPem: csr }), status.UNAUTHENTICATED);
  assert.match(e.details, /already used/);

  // The agent's stream, under its own id only.
  const agentConn = await connectAs({ cert: a.cert, key: a.key });
  const s = openStream(agentConn, id);
  const first = await s.first;
  assert.ok(first.message && first.message.snapshot, `a snapshot: ${first.error && first.error.details}`);
  const other = openStream(agentConn, uid('someone-else'));
  const denied = await other.first;
  assert.equal(denied.error && denied.error.code, status.PERMISSION_DENIED);
  assert.match(denied.error.details, /not this agent/);
  await expectGrpcError(agentConn.api.CertificateService.ListCertificates({}), status.PERMISSION_DENIED);
  const g = await api().AgentService.GetAgent({ name: `agents/${id}` });
  assert.equal(g.connected, true);
  // The record: made by the enrollment, then the agent's version.
  const ev = (await api().AuditService.ListAuditEvents({ resource: `agents/${id}`, orderBy: 'time asc' })).auditEvents;
  assert.deepEqual(ev.map((e) => [e.actor, e.action]), [
    [`token:${a.join.id}`, 'enroll'],
    [`CN=agent:${id},OU=agent,O=tlsplane`, 'update'],
  ]);

  // Renewal: the current certificate, a new key.
  const next = makeCsr();
  noteSecret(next.key.split('\n')[1]);
  const renewed = await agentConn.api.AgentService.RenewAgentCertificate({ csrPem: next.csr });
  assert.notEqual(renewed.clientCertificate, a.res.clientCertificate);
  assert.equal(renewed.agent, `agents/${id}`);
  const renewedConn = await connectAs({ cert: renewed.certificatePem, key: next.key });
  await expectGrpcError(renewedConn.api.AgentService.RenewAgentCertificate({ csrPem: '' }), status.INVALID_ARGUMENT, { field: 'csr_pem' });
  await expectGrpcError(api().AgentService.RenewAgentCertificate({ csrPem: next.csr }), status.FAILED_PRECONDITION);

  // Deleting the agent cuts its stream at once and revokes every
  // certificate it has: it receives nothing more.
  await api().AgentService.DeleteAgent({ name: `agents/${id}` });
  const cut = await s.ended;
  assert.equal(cut && cut.code, status.PERMISSION_DENIED);
  const certs = (await api().ClientCertificateService.ListClientCertificates({ labelSelector: `agent=${id}` })).clientCertificates;
  assert.equal(certs.length, 2);
  for (const c of certs) assert.equal(c.revoked, true, `${c.name} revoked`);
  const back = openStream(renewedConn, id);
  const refused = await back.first;
  assert.equal(refused.error && refused.error.code, status.UNAUTHENTICATED);
});

test('join tokens: bound to their agent id, expiring, and good for enrollment only', async () => {
  const bound = await newToken('JOIN', { agentId: 'edge-bound' });
  const c = await connectAs({ token: bound.secret });
  const { csr } = makeCsr();
  await expectGrpcError(c.api.AgentService.EnrollAgent({ agentId: 'edge-other', csrPem: csr }), status.PERMISSION_DENIED, { field: 'agent_id' });
  await expectGrpcError(c.api.AgentService.ListAgents({}), status.PERMISSION_DENIED);
  // A join token names its agent: one that would let the agent choose is
  // refused, nothing written.
  const noId = uid('open');
  await expectGrpcError(api().TokenService.CreateToken({ tokenId: noId, token: { role: 'JOIN' } }), status.INVALID_ARGUMENT, { field: 'token.agent_id' });
  await expectGrpcError(api().TokenService.GetToken({ name: `tokens/${noId}` }), status.NOT_FOUND);
  // The agent may leave the id out: the token's is used.
  const named = await newToken('JOIN', { agentId: uid('named') });
  assert.ok(named.token.expireTime, 'a join token expires even when not told to');
  const nc = await connectAs({ token: named.secret });
  const ok = await nc.api.AgentService.EnrollAgent({ csrPem: csr });
  assert.equal(ok.agent, `agents/${named.token.agentId}`);
  // Expired: once its expire_time has passed (seen through a call the
  // token may not make, which does not spend it: PERMISSION_DENIED while
  // it is valid, UNAUTHENTICATED once expired), enrollment is refused.
  const short = await newToken('JOIN', { agentId: uid('late') }, { ttl: { seconds: '1', nanos: 0 } });
  const sc = await connectAs({ token: short.secret });
  const late = await waitFor('the expired join token refused', () =>
    sc.api.AgentService.ListAgents({}).then(() => null, (e) => (e.code === status.UNAUTHENTICATED ? e : null)), { timeoutMs: 30000 });
  assert.match(late.details, /expired/);
  assert.ok(Date.now() >= toDate(short.token.expireTime).getTime(), 'refused before its expire_time');
  const refused = await expectGrpcError(sc.api.AgentService.EnrollAgent({ csrPem: csr }), status.UNAUTHENTICATED);
  assert.match(refused.details, /expired/);
  // Only join tokens name an agent, give it labels, or replace it.
  await expectGrpcError(api().TokenService.CreateToken({ tokenId: uid('x'), token: { role: 'VIEWER', agentId: 'edge-1' } }), status.INVALID_ARGUMENT, { field: 'token.agent_id' });
  await expectGrpcError(api().TokenService.CreateToken({ tokenId: uid('x'), token: { role: 'OPERATOR', agentLabels: { site: 'par' } } }), status.INVALID_ARGUMENT, { field: 'token.agent_labels' });
  await expectGrpcError(api().TokenService.CreateToken({ tokenId: uid('x'), token: { role: 'VIEWER', replace: true } }), status.INVALID_ARGUMENT, { field: 'token.replace' });
  await expectGrpcError(api().TokenService.CreateToken({ tokenId: uid('x'), token: { role: 'JOIN', agentId: 'edge-1', agentLabels: { 'no spaces': 'x' } } }), status.INVALID_ARGUMENT, { field: 'token.agent_labels' });
});

test('enrolling an agent id that holds a live certificate: refused, unless the token was made to replace it (then the old one is revoked and its stream cut)', async () => {
  const id = uid('taken');
  const first = await enroll(id);
  const firstConn = await connectAs({ cert: first.cert, key: first.key });
  const s = openStream(firstConn, id);
  assert.ok((await s.first).message, 'the real agent streams');

  // A second join token for the same id, not made to replace it: refused,
  // nothing changes (the token is not used up, no certificate is issued,
  // the real agent keeps its stream).
  const second = await newToken('JOIN', { agentId: id });
  const sc = await connectAs({ token: second.secret });
  const { key, csr } = makeCsr();
  noteSecret(key.split('\n')[1]);
  const e = await expectGrpcError(sc.api.AgentService.EnrollAgent({ agentId: id, csrPem: csr }), status.FAILED_PRECONDITION, { field: 'agent_id' });
  assert.match(e.details, new RegExp(`agents/${id} already holds a live certificate \\(${first.res.clientCertificate}\\)`));
  assert.match(e.details, /replace: true/);
  assert.equal((await api().TokenService.GetToken({ name: second.name })).usedBy, '');
  const certs = () => api().ClientCertificateService.ListClientCertificates({ labelSelector: `agent=${id}` }).then((r) => r.clientCertificates);
  assert.equal((await certs()).length, 1);
  // The admin enrolling it directly is refused the same way.
  await expectGrpcError(api().AgentService.EnrollAgent({ agentId: id, csrPem: csr }), status.FAILED_PRECONDITION, { field: 'agent_id' });
  // The refusal is synchronous with the stream's fate: a cut would already
  // be on its way. The short wait only lets its end arrive, if any; it
  // cannot make the test pass wrongly (a cut stream fails it at any time).
  const stillUp = await Promise.race([s.ended, new Promise((r) => setTimeout(() => r('up'), 300))]);
  assert.equal(stillUp, 'up', 'the real agent\'s stream was not cut');
  await firstConn.api.AgentService.RenewAgentCertificate({ csrPem: makeCsr().csr }).then((r) => assert.ok(r.certificatePem), (err) => assert.fail(err.details));

  // A token made to replace it: enrolls; every live certificate of the id
  // is revoked in the same transaction and its stream is cut.
  const replace = await newToken('JOIN', { agentId: id, replace: true });
  assert.equal(replace.token.replace, true);
  const rc = await connectAs({ token: replace.secret });
  const res = await rc.api.AgentService.EnrollAgent({ csrPem: csr });
  const cut = await s.ended;
  assert.equal(cut && cut.code, status.PERMISSION_DENIED);
  assert.match(cut.details, /replaced by a new enrollment/);
  const after = await certs();
  assert.equal(after.length, 3, 'enrolled, renewed, replaced');
  for (const c of after) assert.equal(c.revoked, c.name !== res.clientCertificate, `${c.name}: revoked unless the new one`);
  const old = openStream(firstConn, id);
  const refused = await old.first;
  assert.equal(refused.error && refused.error.code, status.UNAUTHENTICATED, 'the old certificate is refused');
  const newConn = await connectAs({ cert: res.certificatePem, key });
  const ns = openStream(newConn, id);
  assert.ok((await ns.first).message, 'the new certificate streams');
  ns.call.cancel();
  // Used up, as every join token.
  const again = await expectGrpcError(rc.api.AgentService.EnrollAgent({ csrPem: csr }), status.UNAUTHENTICATED);
  assert.match(again.details, /already used/);
});

test('only agents stream snapshots: the admin token and the admin certificate are refused on AgentService/Connect', async () => {
  const byCert = await connectAs({ cert: srv().adminCert, key: srv().adminKey });
  for (const [who, conn] of [['admin token', ctx.conn], ['admin certificate', byCert]]) {
    const r = await openStream(conn, uid('as-admin')).first;
    assert.ok(r.error, `${who}: no snapshot`);
    assert.equal(r.error.code, status.PERMISSION_DENIED, `${who}: ${r.error.details}`);
    assert.match(r.error.details, /only agents stream snapshots/, who);
  }
  // An operator token too.
  const op = await connectAs({ token: (await newToken('OPERATOR')).secret });
  const r = await openStream(op, uid('as-op')).first;
  assert.equal(r.error && r.error.code, status.PERMISSION_DENIED);
  assert.match(r.error.details, /only agents stream snapshots/);
});

test('revoking an agent certificate cuts its stream at once', async () => {
  const id = uid('cut');
  const a = await enroll(id);
  const conn = await connectAs({ cert: a.cert, key: a.key });
  const s = openStream(conn, id);
  assert.ok((await s.first).message);
  await api().ClientCertificateService.RevokeClientCertificate({ name: a.res.clientCertificate });
  const cut = await s.ended;
  assert.equal(cut && cut.code, status.PERMISSION_DENIED);
  const again = openStream(conn, id);
  assert.equal((await again.first).error.code, status.UNAUTHENTICATED);
});

test('a restart with another --san reissues the server certificate; the CA and the credentials stay', async () => {
  const ca = srv().ca.toString();
  const token = srv().adminToken;
  const before = srv().file('server.pem').toString();
  srv().extraArgs = ['--san', 'cp.example.com', '--san', '10.1.2.3'];
  await ctx.restart();
  const after = srv().file('server.pem').toString();
  assert.notEqual(after, before);
  const sans = execFileSync(tool('openssl'), ['x509', '-noout', '-ext', 'subjectAltName'], { input: after }).toString();
  assert.match(sans, /DNS:cp\.example\.com/);
  assert.match(sans, /IP Address:10\.1\.2\.3/);
  assert.match(sans, /DNS:localhost/);
  assert.equal(srv().ca.toString(), ca);
  assert.equal(srv().adminToken, token);
  await api().CipherPolicyService.ListCipherPolicies({});
  // Same names again: the certificate is kept.
  await ctx.restart();
  assert.equal(srv().file('server.pem').toString(), after);
});

test('GetCaller: every credential learns who it is, and nothing more', async () => {
  for (const role of ['ADMIN', 'OPERATOR', 'VIEWER']) {
    const t = await newToken(role);
    const c = await connectAs({ token: t.secret });
    const me = await c.api.TokenService.GetCaller({});
    assert.deepEqual(me, { actor: `token:${t.id}`, role, principal: t.id });
  }
  const join = await newToken('JOIN', { agentId: uid('joiner') });
  const j = await connectAs({ token: join.secret });
  assert.equal((await j.api.TokenService.GetCaller({})).role, 'JOIN');
  // The admin's client certificate: its subject.
  const byCert = await connectAs({ cert: srv().adminCert, key: srv().adminKey });
  const me = await byCert.api.TokenService.GetCaller({});
  assert.equal(me.role, 'ADMIN');
  assert.match(me.actor, /CN=admin/);
  // Without a credential: refused like any other call.
  const anon = await connectAs({});
  await expectGrpcError(anon.api.TokenService.GetCaller({}), status.UNAUTHENTICATED);
});
