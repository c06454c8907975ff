'use strict';
// upstream_tls through the API: client TlsContexts (client: true) and a
// listener's upstream_tls are checked with the agent's own rules
// (common/listener_rules.c, common/tlsconf_ctx.c), so what the API refuses
// names the field and writes nothing, and what it accepts an enrolled
// agent serves: TLS to a real upstream, pushed live.

const { test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const tls = require('node:tls');
const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki } = require('./lib/pki');
const { CpAgent } = require('./lib/cpagent');
const { freePorts, agentBinary } = require('./lib/agent');
const { HOST } = require('./lib/tlsclient');
const { status, expectRefused, uid } = require('./lib/util');
const { FakeAgent } = require('./lib/fakeagent');
const { waitFor } = require('./lib/wait');

let srv;
let conn;
let p;
let x;
let agent;
let upstream;
const seen = [];
const api = () => conn.api;

function talk(port, data, want) {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host: HOST, port, rejectUnauthorized: false });
    const chunks = [];
    sock.on('secureConnect', () => sock.write(data));
    sock.on('data', (d) => {
      chunks.push(d);
      if (Buffer.concat(chunks).length >= want) sock.end();
    });
    sock.on('error', () => {});
    sock.on('close', () => resolve(Buffer.concat(chunks).toString()));
    setTimeout(() => reject(new Error('no answer or close within 10 s')), 10000).unref();
  });
}

before(async () => {
  agentBinary();
  p = pki();
  x = p.agentExtras();
  upstream = tls.createServer({ cert: p.rsa.cert, key: p.rsa.key, ca: p.ca.cert, requestCert: true }, (sock) => {
    seen.push({ servername: sock.servername, cn: sock.getPeerCertificate().subject.CN });
    sock.on('data', (d) => sock.write(Buffer.concat([Buffer.from('up:'), d])));
    sock.on('error', () => {});
  });
  await new Promise((r) => upstream.listen(0, HOST, r));
  srv = await Server.start({ tls: true });
  conn = await connect(srv.address, srv.connectOptions());
  for (const [id, leaf] of [['web', p.rsa], ['alice', x.alice], ['other', p.ecdsa]]) {
    await api().CertificateService.CreateCertificate({
      certificateId: id, certificate: { certificateChainPem: leaf.cert, privateKeyPem: leaf.key },
    });
  }
  await api().TrustBundleService.CreateTrustBundle({ trustBundleId: 'ca', trustBundle: { caPem: p.ca.cert } });
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'web', tlsContext: { certificates: ['certificates/web'] } });
  await api().TlsContextService.CreateTlsContext({
    tlsContextId: 'up', tlsContext: { client: true, certificates: ['certificates/alice'], trustBundle: 'trustBundles/ca' },
  });
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'up-no-ca', tlsContext: { client: true } });
});

after(async () => {
  if (agent && agent.running) await agent.stopClean();
  if (conn) conn.close();
  if (srv && srv.running) await srv.stopClean();
  if (upstream) await new Promise((r) => upstream.close(r));
});

afterEach((t) => {
  if (agent) agent.assertAlive(`during "${t.name}"`);
});

const createListener = (fields) => api().ListenerService.CreateListener({
  listenerId: uid('lis'),
  listener: { address: '127.0.0.1:0', defaultTlsContext: 'tlsContexts/web', upstream: '127.0.0.1:9', ...fields },
});

test('client contexts: server-only fields, a bad NPN name and a second certificate are refused, naming the field; NPN protocols are taken', async () => {
  for (const [fields, field] of [
    [{ requestCert: true }, 'tls_context.request_cert: a server option, not for a client context'],
    [{ npnProtocols: ['h2', ''] }, 'tls_context.npn_protocols[1]: a protocol name must be 1 to 255 bytes'],
    [{ sessionTickets: { value: false } }, 'tls_context.session_tickets: a server option'],
    [{ certificates: ['certificates/alice', 'certificates/other'] }, 'tls_context.certificates: a client context has at most one'],
  ]) {
    await expectRefused(api(), () => api().TlsContextService.CreateTlsContext({
      tlsContextId: uid('ctx'), tlsContext: { client: true, ...fields },
    }), status.INVALID_ARGUMENT, { field, what: JSON.stringify(fields) });
  }
  // tls.connect's NPNProtocols, offered to the upstream
  const npn = await api().TlsContextService.CreateTlsContext({
    tlsContextId: uid('ctx'), tlsContext: { client: true, npnProtocols: ['h2', 'http/1.1'] },
  });
  assert.deepEqual(npn.npnProtocols, ['h2', 'http/1.1']);
  await api().TlsContextService.DeleteTlsContext({ name: npn.name });
});

test('a cipher policy of DHE ciphers only and no DH parameters: taken, and usable by a client context (the upstream brings the group); a server context with it is refused naming the field, nothing written', async () => {
  const dheOnly = { minVersion: 'TLS_1_2', maxVersion: 'TLS_1_2', ciphers: 'DHE-RSA-AES128-GCM-SHA256' };
  const pol = await api().CipherPolicyService.CreateCipherPolicy({ cipherPolicyId: uid('dhe'), cipherPolicy: dheOnly });
  assert.equal(pol.dhparamBits, 0);
  const up = await api().TlsContextService.CreateTlsContext({
    tlsContextId: uid('up-dhe'), tlsContext: { client: true, trustBundle: 'trustBundles/ca', cipherPolicy: pol.name },
  });
  assert.equal(up.cipherPolicy, pol.name);
  const refused = /cipher_policy: ciphers: no cipher of "DHE-RSA-AES128-GCM-SHA256" can be used with TLS 1\.2 to TLS 1\.2 \(a server's DHE ciphers need dhparam_pem or dhparam_group\)/;
  await expectRefused(api(), () => api().TlsContextService.CreateTlsContext({
    tlsContextId: uid('web-dhe'), tlsContext: { certificates: ['certificates/web'], cipherPolicy: pol.name },
  }), status.INVALID_ARGUMENT, { includes: refused, what: 'a server context with a DHE-only policy and no DH' });
  // A policy a server context uses cannot become one.
  const pol2 = await api().CipherPolicyService.CreateCipherPolicy({
    cipherPolicyId: uid('dhe-grp'), cipherPolicy: { ...dheOnly, dhparamGroup: 'ffdhe2048' },
  });
  assert.equal(pol2.dhparamBits, 2048);
  const web = await api().TlsContextService.CreateTlsContext({
    tlsContextId: uid('web-dhe'), tlsContext: { certificates: ['certificates/web'], cipherPolicy: pol2.name },
  });
  await expectRefused(api(), () => api().CipherPolicyService.UpdateCipherPolicy({
    cipherPolicy: { name: pol2.name, dhparamGroup: '' }, updateMask: { paths: ['dhparam_group'] },
  }), status.FAILED_PRECONDITION, { includes: [web.name, refused], what: 'dropping the DH group of a server context\'s policy' });
  for (const name of [web.name, up.name]) await api().TlsContextService.DeleteTlsContext({ name });
  for (const name of [pol.name, pol2.name]) await api().CipherPolicyService.DeleteCipherPolicy({ name });
});

test('upstream_tls: bad input is refused naming the field, nothing written', async () => {
  for (const [upstreamTls, field, extra] of [
    [{}, 'listener.upstream_tls.tls_context: required'],
    [{ tlsContext: 'tlsContexts/nope' }, /^listener\.upstream_tls\.tls_context: .*tlsContexts\/nope/],
    [{ tlsContext: 'tlsContexts/web' }, 'listener.upstream_tls.tls_context: tlsContexts/web is not a client context'],
    [{ tlsContext: 'tlsContexts/up-no-ca' }, 'listener.upstream_tls.tls_context: tlsContexts/up-no-ca has no trust_bundle'],
    [{ tlsContext: 'tlsContexts/up', servername: '10.0.0.1' }, 'listener.upstream_tls.servername: "10.0.0.1" is not a DNS hostname'],
    [{ tlsContext: 'tlsContexts/up', servername: 'bad_name!' }, 'listener.upstream_tls.servername:'],
    [{ tlsContext: 'tlsContexts/up', checkServerIdentity: 'x..y' }, 'listener.upstream_tls.check_server_identity:'],
    [{ tlsContext: 'tlsContexts/up', minDhSize: -1 }, 'listener.upstream_tls.min_dh_size: -1 bits'],
    [{ tlsContext: 'tlsContexts/up', minDhSize: 20000 }, 'listener.upstream_tls.min_dh_size: 20000 bits'],
    [{ tlsContext: 'tlsContexts/up-no-ca', rejectUnauthorized: { value: false }, checkServerIdentity: 'a.example.com' },
      'listener.upstream_tls.check_server_identity: needs reject_unauthorized'],
    [{ tlsContext: 'tlsContexts/up' }, 'listener.default_tls_context: tlsContexts/up is a client context', { defaultTlsContext: 'tlsContexts/up' }],
    [{ tlsContext: 'tlsContexts/up' }, 'listener.upstream_tls.check_server_identity: required for a Unix-socket upstream', { upstream: 'unix:/run/app.sock' }],
    [undefined, 'listener.upstream: "unix:run/app.sock": a Unix socket is "unix:" and an absolute path', { upstream: 'unix:run/app.sock' }],
    [undefined, `listener.upstream: "unix:/${'x'.repeat(120)}": the path is longer than 107 bytes`, { upstream: `unix:/${'x'.repeat(120)}` }],
  ]) {
    await expectRefused(api(), () => createListener({ upstreamTls, ...(extra || {}) }), status.INVALID_ARGUMENT,
      { field, what: JSON.stringify(upstreamTls) });
  }
  // A Unix-socket upstream, with the name to check given.
  const unix = await createListener({ upstream: 'unix:/run/app.sock', upstreamTls: { tlsContext: 'tlsContexts/up', servername: 'app.internal' } });
  assert.equal(unix.upstream, 'unix:/run/app.sock');
  await api().ListenerService.DeleteListener({ name: unix.name });
  // Verification off: no trust bundle needed.
  const ok = await createListener({ upstreamTls: { tlsContext: 'tlsContexts/up-no-ca', rejectUnauthorized: { value: false } } });
  assert.equal(ok.upstreamTls.tlsContext, 'tlsContexts/up-no-ca');
  await api().ListenerService.DeleteListener({ name: ok.name });
});

test('an enrolled agent serves a listener with upstream_tls: the client certificate and SNI reach the upstream, data both ways', async () => {
  const [port] = await freePorts(1);
  await api().ListenerService.CreateListener({
    listenerId: 'tls-up',
    listener: {
      address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/web', upstream: `${HOST}:${upstream.address().port}`,
      upstreamTls: { tlsContext: 'tlsContexts/up', servername: 'www.example.com' },
    },
  });
  const tok = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'up-1' } });
  noteSecret(tok.secret);
  agent = await CpAgent.start(srv, { name: 'up-1', joinToken: tok.secret, wait: 'connected' });
  await agent.waitForLog(/listener=listeners\/tls-up new: serving on/);
  assert.equal(await talk(port, 'ping', 'up:ping'.length), 'up:ping');
  assert.deepEqual(seen.at(-1), { servername: 'www.example.com', cn: 'alice' });
});

test('a context change that the listener using it could not load is refused, naming the listener; nothing written', async () => {
  const cur = await api().TlsContextService.GetTlsContext({ name: 'tlsContexts/up' });
  for (const [fields, paths, why] of [
    [{ trustBundle: '' }, ['trust_bundle'], 'upstream_tls.tls_context: tlsContexts/up has no trust_bundle'],
    [{ client: false }, ['client'], 'upstream_tls.tls_context: tlsContexts/up is not a client context'],
  ]) {
    await expectRefused(api(), () => api().TlsContextService.UpdateTlsContext({
      tlsContext: { name: 'tlsContexts/up', etag: cur.etag, ...fields }, updateMask: { paths },
    }), status.FAILED_PRECONDITION, { field: `tls_context: listeners/tls-up would no longer load: ${why}`, what: paths[0] });
  }
});

// An agent of stream protocol 2 would ignore upstream_tls and send the
// client's bytes to the upstream in cleartext: the server does not send
// it such a listener. It keeps what it holds, and the rollout says why.
test('an agent of protocol 2 is not sent a listener with upstream_tls or a unix: upstream: it keeps what it held, the rollout names the listener', async () => {
  const old = await FakeAgent.enroll({ server: srv, conn }, uid('old'), { protocol: 2, agentLabels: { gen: 'old' } });
  try {
    const sel = { gen: 'old' };
    let n = 0;
    old.ack(await old.next(n++, 10000));
    const id = uid('lis');
    const name = `listeners/${id}`;
    const created = await api().ListenerService.CreateListener({
      listenerId: id, listener: { address: '127.0.0.1:0', defaultTlsContext: 'tlsContexts/web', upstream: '127.0.0.1:9', agentSelector: sel },
    });
    old.ack(await old.next(n++, 10000));
    const held = Buffer.from(old.listeners.get(name).hash).toString('hex');
    // Made a TLS upstream: not sent; what the agent holds stays.
    const upd = await api().ListenerService.UpdateListener({
      listener: { name, etag: created.etag, upstreamTls: { tlsContext: 'tlsContexts/up', servername: 'www.example.com' } },
      updateMask: { paths: ['upstream_tls'] },
    });
    const failedAt = (rev, listener) => waitFor(`GetRollout ${rev}: ${old.name} failed on ${listener}`, async () => {
      const r = await api().AgentService.GetRollout({ revision: String(rev) });
      return r.failures.find((f) => f.agent === `agents/${old.name}` && f.listener === listener) || null;
    });
    const f = await failedAt(upd.revision, name);
    assert.equal(f.serverSide, true);
    assert.match(f.reason, /too old for this listener: upstream_tls and unix: upstreams need an agent of stream protocol 3/);
    assert.equal(Buffer.from(old.listeners.get(name).hash).toString('hex'), held, 'the agent still holds the cleartext version');
    assert.equal(old.listeners.get(name).listener.upstreamTls, null);
    // A new listener on a unix: upstream never reaches it.
    const unixId = uid('lis');
    const u = await api().ListenerService.CreateListener({
      listenerId: unixId, listener: { address: '127.0.0.1:0', defaultTlsContext: 'tlsContexts/web', upstream: 'unix:/run/none.sock', agentSelector: sel },
    });
    await failedAt(u.revision, `listeners/${unixId}`);
    assert.equal(old.listeners.has(`listeners/${unixId}`), false);
    // Deleting them: the agent is sent the removal.
    await api().ListenerService.DeleteListener({ name: `listeners/${unixId}` });
    await api().ListenerService.DeleteListener({ name });
    await waitFor('the old agent drops the listener', async () => {
      if (old.updates.length > n) old.ack(await old.next(n++, 1000));
      return !old.listeners.has(name);
    });
  } finally {
    old.close();
  }
});
