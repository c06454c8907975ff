'use strict';
// Protocol 2 seen from the agent, against a fake control plane (a gRPC
// server in this file that speaks AgentService/Connect): the hello says
// protocol 2; a SnapshotDelta that does not apply to the agent's set (a
// resource whose hash is not its content's) changes nothing, is answered
// with a nack naming the reason, and the agent reconnects with a new
// hello; a delta that applies is acked; a listener whose entry names an
// ACME challenge resource (protocol 4) answers tls-alpn-01 with it.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const tls = require('node:tls');
const { pki } = require('./lib/pki');
const { CpAgent } = require('./lib/cpagent');
const { agentBinary } = require('./lib/agent');
const { waitFor } = require('./lib/wait');

const PROTO_DIR = path.join(__dirname, '..', '..', 'proto');
const AGENT_PROTO = 'tlsplane/v1/agent.proto';

let server;
let agent;
let p;
let Resource; // protobufjs type: what the agent hashes
const streams = []; // per Connect call: { hello, acks: [], call }
let onHello = () => {};

// The SHA-256 of r serialized with its hash empty (rset.h).
function resourceHash(r) {
  return crypto.createHash('sha256').update(Resource.encode(Resource.fromObject({ ...r, hash: undefined })).finish()).digest();
}

before(async () => {
  agentBinary();
  p = pki();
  const cp = p.leaf('fake-cp', { cn: '127.0.0.1', sans: ['IP:127.0.0.1'] });
  const ag = p.leaf('fake-agent', { cn: 'agent:fake-1' });
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => (path.isAbsolute(target) || target.startsWith('google/') ? target : path.join(PROTO_DIR, target));
  await root.load(path.join(PROTO_DIR, 'tlsplane/v1/snapshot.proto'), { keepCase: false });
  Resource = root.lookupType('tlsplane.v1.Resource');

  const def = protoLoader.loadSync(AGENT_PROTO, { includeDirs: [PROTO_DIR], longs: String, defaults: false, oneofs: true });
  const svc = grpc.loadPackageDefinition(def).tlsplane.v1.AgentService.service;
  server = new grpc.Server();
  server.addService(svc, {
    Connect: (call) => {
      const s = { hello: null, acks: [], call, ended: false };
      streams.push(s);
      call.on('data', (m) => {
        if (m.hello) {
          s.hello = m.hello;
          onHello(s, streams.length);
        } else if (m.ack) {
          s.acks.push(m.ack);
        }
      });
      call.on('end', () => {
        s.ended = true;
        call.end();
      });
      call.on('cancelled', () => {
        s.ended = true;
      });
      call.on('error', () => {
        s.ended = true;
      });
    },
  });
  const creds = grpc.ServerCredentials.createSsl(Buffer.from(p.ca.cert), [{ cert_chain: Buffer.from(cp.cert), private_key: Buffer.from(cp.key) }], false);
  const port = await new Promise((resolve, reject) => server.bindAsync('127.0.0.1:0', creds, (e, port2) => (e ? reject(e) : resolve(port2))));
  // The first stream gets a delta whose resource does not match its hash;
  // the next a good one.
  const policy = { cipherPolicy: { name: 'cipherPolicies/p' } };
  onHello = (s, n) => {
    if (n === 1) {
      s.call.write({ delta: { revision: '5', resources: [{ hash: Buffer.alloc(32, 7), ...policy }] } });
    } else if (n === 2) {
      s.call.write({ delta: { revision: '6', resources: [{ hash: resourceHash(policy), ...policy }] } });
    }
  };
  agent = await CpAgent.start({ address: `127.0.0.1:${port}`, ca: p.ca.cert }, { name: 'fake-1', cert: ag.cert, key: ag.key });
});

after(async () => {
  if (agent && agent.running) await agent.stopClean();
  if (server) server.forceShutdown();
});

test('the hello says protocol 4 and reports what the agent serves (nothing yet)', async () => {
  const s = await waitFor('a hello', () => streams[0] && streams[0].hello);
  assert.equal(s.name, 'fake-1');
  assert.equal(s.protocol, 4);
  assert.deepEqual(s.resources || [], []);
  assert.deepEqual(s.listeners || [], []);
});

test('a delta that does not apply changes nothing: a nack naming the reason, then a new stream and hello', async () => {
  const nack = await waitFor('the nack of revision 5', () => streams[0] && streams[0].acks.find((a) => a.revision === '5'));
  assert.equal(nack.listeners.length, 1);
  assert.equal(nack.listeners[0].listener || '', '');
  assert.equal(nack.listeners[0].applied || false, false);
  assert.match(nack.listeners[0].error, /^delta: resources\[0\]\.hash: [0-9a-f]+\.\.\. does not match its content/);
  await waitFor('the agent cut the stream', () => streams[0].ended, { timeoutMs: 10000 });
  const second = await waitFor('a second hello', () => streams[1] && streams[1].hello, { timeoutMs: 15000 });
  assert.equal(second.protocol, 4);
  const m = await agent.metrics();
  assert.equal(m.get('tlsplane_config_apply_total', { result: 'error' }), 1);
  assert.doesNotMatch(agent.logText, /revision 5 applied/, 'the bad delta was applied');
  assert.match(agent.logText, /config not applied, nothing changed: delta: resources\[0\]/);
});

test('a delta that applies is acked', async () => {
  const ack = await waitFor('the ack of revision 6', () => streams[1] && streams[1].acks.find((a) => a.revision === '6'), { timeoutMs: 10000 });
  assert.deepEqual(ack.listeners || [], []);
  await agent.waitForLog(/control plane: revision 6 applied: 0 new, 0 changed, 0 kept, 0 dropped, 0 not applied .*; ack sent/);
  assert.equal((await agent.metrics()).get('tlsplane_config_revision'), 6);
  assert.equal(streams.length, 2, 'the agent reconnected after a good delta');
});

test('protocol 4: a listener entry naming an ACME challenge resource answers acme-tls/1 with it, and serves every other client its context', async () => {
  // Resources as a server sends them: a certificate, a context naming it
  // by hash, a challenge; the listener names the context and the
  // challenge by hash.
  const challengeCert = (() => {
    p.run(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'delta-acme.key']);
    const digest = crypto.createHash('sha256').update('token.delta').digest('hex');
    p.run(['req', '-new', '-x509', '-key', 'delta-acme.key', '-out', 'delta-acme.crt', '-days', '7', '-subj', '/CN=acme.test',
      '-addext', 'subjectAltName=DNS:acme.test', '-addext', `1.3.6.1.5.5.7.1.31=critical,DER:0420${digest}`]);
    return { cert: p.read('delta-acme.crt'), key: p.read('delta-acme.key') };
  })();
  const cert = { certificate: { certificate: { name: 'certificates/web', certificateChainPem: p.rsa.cert }, privateKeyPem: p.rsa.key } };
  const certHash = resourceHash(cert);
  const ctx = { tlsContext: { tlsContext: { name: 'tlsContexts/web', certificates: ['certificates/web'] }, certificates: [certHash] } };
  const ctxHash = resourceHash(ctx);
  const acme = { acmeChallenge: { serverName: 'acme.test', certificatePem: challengeCert.cert, privateKeyPem: challengeCert.key } };
  const acmeHash = resourceHash(acme);
  const entry = {
    listener: { name: 'listeners/acme', address: '127.0.0.1:0', defaultTlsContext: 'tlsContexts/web', upstream: '127.0.0.1:9' },
    tlsContexts: { 'tlsContexts/web': ctxHash },
    acmeChallenges: [acmeHash],
  };
  const from = agent.logText.length;
  streams[1].call.write({
    delta: {
      revision: '7',
      resources: [{ hash: certHash, ...cert }, { hash: ctxHash, ...ctx }, { hash: acmeHash, ...acme }],
      listeners: [entry],
    },
  });
  const ack = await waitFor('the ack of revision 7', () => streams[1].acks.find((a) => a.revision === '7'), { timeoutMs: 10000 });
  assert.deepEqual((ack.listeners || []).filter((l) => !l.applied), [], JSON.stringify(ack));
  await agent.waitForLog(/control plane: revision 7 applied: 1 new/, { from });
  await agent.waitForWorkers(7);
  const connect = (opts) => new Promise((resolve) => {
    const r = {};
    const sock = tls.connect({ host: '127.0.0.1', port: agent.port('acme'), rejectUnauthorized: false, ...opts });
    sock.on('secureConnect', () => {
      r.alpn = sock.alpnProtocol;
      r.fingerprint = sock.getPeerCertificate().fingerprint256;
    });
    sock.on('end', () => {
      r.ended = true;
    });
    sock.on('error', (e) => {
      r.error = e.code || e.message;
    });
    sock.on('close', () => resolve(r));
    setTimeout(() => sock.destroy(), 5000);
  });
  const fp = (pem) => new crypto.X509Certificate(pem).fingerprint256;
  const v = await connect({ servername: 'acme.test', ALPNProtocols: ['acme-tls/1'] });
  assert.equal(v.fingerprint, fp(challengeCert.cert), JSON.stringify(v));
  assert.equal(v.alpn, 'acme-tls/1');
  assert.equal(v.ended, true, 'the agent did not close the validation connection');
  const o = await connect({ servername: 'acme.test', ALPNProtocols: ['h2', 'acme-tls/1'] });
  assert.equal(o.fingerprint, fp(p.rsa.cert), JSON.stringify(o));
  assert.equal((await agent.metrics()).get('tlsplane_acme_challenges_answered_total', { listener: 'listeners/acme' }), 1);
});
