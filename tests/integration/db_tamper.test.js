'use strict';
// Someone who can write tlsplane.db but holds no master key edits it with
// the sqlite3 CLI while the server is stopped: a token's role raised to
// ADMIN, a client certificate's role raised to ADMIN, an agent given the
// labels that select a listener's keys. At the next start every edited
// record is refused (the credential with UNAUTHENTICATED, the agent's
// stream with DATA_LOSS) and the log names the record that failed its
// integrity check; untouched credentials work on.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { FakeAgent } = require('./lib/fakeagent');
const { pki } = require('./lib/pki');
const { status, expectGrpcError, uid, makeCsr } = require('./lib/util');

let srv;
let conn;
const ctx = {
  get server() {
    return srv;
  },
  get conn() {
    return conn;
  },
};
const api = () => conn.api;
const conns = [];

before(async () => {
  srv = await Server.start({ tls: true });
  conn = await connect(srv.address, srv.connectOptions());
});

after(async () => {
  for (const c of conns) c.close();
  if (conn) conn.close();
  if (srv && srv.running) await srv.stopClean();
});

async function connectAs({ token, cert, key }) {
  const tls = { ca: srv.ca };
  if (cert) Object.assign(tls, { cert, key });
  const c = await connect(srv.address, { tls, token });
  conns.push(c);
  return c;
}

// The sqlite3 CLI on the server's database, as a user with file access
// runs it. A missing sqlite3 fails the test.
function sqlite(sql) {
  const r = spawnSync('sqlite3', [path.join(srv.dataDir, 'tlsplane.db'), sql], { encoding: 'utf8' });
  assert.ifError(r.error);
  assert.equal(r.status, 0, `sqlite3: ${r.stderr}`);
  return r.stdout.trim();
}

// Rewrites the stored resource (kind, name): decoded with the schema the
// server served (root: lib/reflect.js conn.root), changed by edit, encoded
// and written back in place.
function editRow(root, kind, name, type, edit) {
  const where = `kind = '${kind}' AND name = '${name}'`;
  const hex = sqlite(`SELECT hex(data) FROM resources WHERE ${where}`);
  assert.match(hex, /^[0-9A-F]+$/, `${name} is stored`);
  const T = root.lookupType(type);
  const msg = T.decode(Buffer.from(hex, 'hex'));
  edit(msg);
  const out = Buffer.from(T.encode(msg).finish()).toString('hex');
  assert.notEqual(out.toUpperCase(), hex, `${name}: the edit changes the row`);
  sqlite(`UPDATE resources SET data = X'${out}' WHERE ${where}`);
  assert.equal(sqlite(`SELECT hex(data) FROM resources WHERE ${where}`), out.toUpperCase());
}

test('rows edited in the database file without the master key are refused at the next start; untouched ones work', async () => {
  const newToken = async (role) => {
    const id = uid(role.toLowerCase());
    const r = await api().TokenService.CreateToken({ tokenId: id, token: { role } });
    noteSecret(r.secret);
    return { id, name: `tokens/${id}`, secret: r.secret };
  };
  const issue = async (role, principal) => {
    const { key, csr } = makeCsr();
    noteSecret(key.split('\n')[1]);
    const c = await api().ClientCertificateService.IssueClientCertificate({ csrPem: csr, role, principal });
    return { name: c.name, cert: c.certificatePem, key };
  };
  const operatorToken = await newToken('OPERATOR');
  const viewerToken = await newToken('VIEWER');
  const operatorCert = await issue('OPERATOR', 'alice');
  const viewerCert = await issue('VIEWER', 'bob');
  // An agent with no labels, and a listener whose keys go to site=par.
  const p = pki();
  await api().CertificateService.CreateCertificate({
    certificateId: 'par', certificate: { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key },
  });
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'par', tlsContext: { certificates: ['certificates/par'] } });
  await api().ListenerService.CreateListener({
    listenerId: 'par',
    listener: { address: '127.0.0.1:18443', defaultTlsContext: 'tlsContexts/par', upstream: '127.0.0.1:18080', agentSelector: { site: 'par' } },
  });
  const agentId = uid('edge');
  const agentCreds = await FakeAgent.credentials(ctx, agentId);
  const a = FakeAgent.connect(ctx, agentId, agentCreds);
  assert.deepEqual((await a.next(0)).listeners, [], 'before the edit: not a site=par agent');
  a.close();

  // Before: each credential works as what it is.
  await expectGrpcError((await connectAs({ token: operatorToken.secret })).api.TokenService.ListTokens({}), status.PERMISSION_DENIED);
  await expectGrpcError((await connectAs(operatorCert)).api.TokenService.ListTokens({}), status.PERMISSION_DENIED);
  for (const c of conns.splice(0)) c.close();

  // The edits, with the server stopped, decoded with the schema it served.
  const root = conn.root;
  conn.close();
  conn = null;
  await srv.stopClean();
  editRow(root, 'Token', operatorToken.name, 'tlsplane.v1.Token', (t) => {
    t.role = 1; // ADMIN
  });
  editRow(root, 'ClientCertificate', operatorCert.name, 'tlsplane.v1.ClientCertificate', (c) => {
    c.role = 1; // ADMIN
  });
  editRow(root, 'Agent', `agents/${agentId}`, 'tlsplane.v1.Agent', (g) => {
    // Maps are their entry messages in the served descriptors.
    g.labels = [{ key: 'site', value: 'par' }];
  });

  await srv._spawn();
  conn = await connect(srv.address, srv.connectOptions());
  const logFrom = srv.log().length;

  // The edited token: refused, not an admin.
  const t = await connectAs({ token: operatorToken.secret });
  let e = await expectGrpcError(t.api.TokenService.ListTokens({}), status.UNAUTHENTICATED);
  assert.match(e.details, new RegExp(`the record of ${operatorToken.name} failed its integrity check`));
  e = await expectGrpcError(t.api.CipherPolicyService.ListCipherPolicies({}), status.UNAUTHENTICATED);
  // The edited certificate: refused too.
  const c = await connectAs(operatorCert);
  e = await expectGrpcError(c.api.TokenService.ListTokens({}), status.UNAUTHENTICATED);
  assert.match(e.details, new RegExp(`the record of ${operatorCert.name} failed its integrity check`));
  // Untouched ones work as before.
  await (await connectAs({ token: viewerToken.secret })).api.CipherPolicyService.ListCipherPolicies({});
  await (await connectAs(viewerCert)).api.CipherPolicyService.ListCipherPolicies({});
  await api().CertificateService.GetCertificate({ name: 'certificates/par' });
  // The log names each record, and no secret.
  const log = srv.log().slice(logFrom);
  assert.match(log, new RegExp(`auth: credential ${operatorToken.name} refused: store: ${operatorToken.name} failed its integrity check: it was changed outside the server`));
  assert.match(log, new RegExp(`auth: credential ${operatorCert.name} refused: store: ${operatorCert.name} failed its integrity check`));
  srv.assertLogClean();
  // Reading an edited record is DATA_LOSS naming it.
  e = await expectGrpcError(api().TokenService.GetToken({ name: operatorToken.name }), status.DATA_LOSS);
  assert.match(e.details, new RegExp(`${operatorToken.name} failed its integrity check`));

  // The agent given site=par in the file receives nothing: its stream is
  // refused before any snapshot, keys included.
  const b = FakeAgent.connect(ctx, agentId, agentCreds);
  const err = await b.ended_(10000);
  assert.ok(err, 'the stream ended');
  assert.equal(err.code, status.DATA_LOSS, err.details);
  assert.match(err.details, new RegExp(`agents/${agentId} failed its integrity check`));
  assert.deepEqual(b.snapshots, [], 'no snapshot');
  b.close();
});

test('triggers planted in the database file do nothing when the server writes; the server works on', async () => {
  conn.close();
  conn = null;
  await srv.stopClean();
  // Someone with file access adds triggers: one copies every row (its
  // sealed secret too) as the server writes it into a table of their own,
  // one rewrites the labels the server writes.
  sqlite(
    'CREATE TABLE stolen (kind, name, data, secret);' +
      'CREATE TRIGGER steal_insert AFTER INSERT ON resources BEGIN INSERT INTO stolen VALUES (new.kind, new.name, new.data, new.secret); END;' +
      'CREATE TRIGGER steal_update AFTER UPDATE ON resources BEGIN INSERT INTO stolen VALUES (new.kind, new.name, new.data, new.secret); END;' +
      "CREATE TRIGGER relabel AFTER INSERT ON labels BEGIN UPDATE labels SET value = 'par' WHERE kind = new.kind AND name = new.name AND key = new.key; END;",
  );
  await srv._spawn();
  conn = await connect(srv.address, srv.connectOptions());

  const p = pki();
  const c = await api().CertificateService.CreateCertificate({
    certificateId: 'planted', certificate: { certificateChainPem: p.rsa.cert, privateKeyPem: p.rsa.key, labels: { site: 'lon' } },
  });
  await api().CertificateService.UpdateCertificate({
    certificate: { name: c.name, labels: { site: 'ams' } }, updateMask: { paths: ['labels'] },
  });
  const got = await api().CertificateService.GetCertificate({ name: c.name });
  assert.deepEqual(got.labels, { site: 'ams' });
  assert.equal(sqlite('SELECT count(*) FROM stolen'), '0', 'a planted trigger copied rows');
  assert.equal(sqlite(`SELECT value FROM labels WHERE name = '${c.name}' AND key = 'site'`), 'ams', 'a planted trigger rewrote a label');
  srv.assertLogClean();
});
