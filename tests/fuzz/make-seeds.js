#!/usr/bin/env node
'use strict';
// Makes the fuzzers' fixtures (tests/fuzz/data/) and seed corpora
// (tests/fuzz/corpus/<target>/) from real inputs: keys, certificates,
// PKCS#12 files, CRLs and OCSP responses made by the openssl CLI
// (tests/integration/lib/pki.js), ClientHellos captured from openssl
// s_client and Node, with sessions and tickets a real tlsplane-agent
// issued for the very listener fuzz_tls_server serves, PROXY v2 headers that
// agent sent, API requests and agent stream messages encoded from the
// .proto files (protobufjs), and HTTP requests as curl and Prometheus send
// them.
//
//   node tests/fuzz/make-seeds.js        # needs build/agent/tlsplane-agent (or TLSPLANE_AGENT)
//
// Run it again only to refresh the seeds (it rewrites data/ and corpus/,
// and the committed files are what the fuzzers start from); keys and
// certificates are new each time.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const tls = require('node:tls');

const INTEG = path.join(__dirname, '../integration');
const { pki, PASSPHRASE } = require(`${INTEG}/lib/pki`);
const { Agent, tlsContext, listener, snapshot } = require(`${INTEG}/lib/agent`);
const { Upstream } = require(`${INTEG}/lib/upstream`);
const { SClient, sclient, exchange } = require(`${INTEG}/lib/tlsclient`);
const protobuf = require(`${INTEG}/node_modules/protobufjs`);

const SEP = Buffer.from('\0FUZZ\0', 'latin1'); // fuzz.h FUZZ_SEP
const DATA = path.join(__dirname, 'data');
const CORPUS = path.join(__dirname, 'corpus');
const PROTO = path.join(__dirname, '../../proto');

const join = (...parts) => Buffer.concat(parts.flatMap((p, i) => (i ? [SEP, Buffer.from(p)] : [Buffer.from(p)])));

const written = {};
function seed(target, name, bytes) {
  const dir = path.join(CORPUS, target);
  if (!written[target]) {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    written[target] = 0;
  }
  fs.writeFileSync(path.join(dir, name), bytes);
  written[target]++;
}

// ---------------------------------------------------------------------------
// The .proto files, for binary messages and their proto3 JSON form.

function loadProtos() {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    for (const dir of [PROTO, '/usr/include']) {
      const f = path.join(dir, target);
      if (fs.existsSync(f)) return f;
    }
    return target;
  };
  const files = fs.readdirSync(path.join(PROTO, 'tlsplane/v1')).map((f) => `tlsplane/v1/${f}`);
  root.loadSync(files);
  root.resolveAll();
  return root;
}

const camel = (s) => s.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());

function rfc3339(ts) {
  return new Date(Number(ts.seconds || 0) * 1000 + Math.floor((ts.nanos || 0) / 1e6)).toISOString().replace('.000Z', 'Z');
}

// A protobufjs object (camelCase keys, well-known types as messages) in
// protobuf's JSON mapping, as pbjson reads it.
function toJson(type, obj) {
  switch (type.fullName) {
    case '.google.protobuf.Timestamp':
      return rfc3339(obj);
    case '.google.protobuf.Duration':
      return `${obj.seconds || 0}s`;
    case '.google.protobuf.FieldMask':
      return (obj.paths || []).map(camel).join(',');
    case '.google.protobuf.BoolValue':
    case '.google.protobuf.Int32Value':
    case '.google.protobuf.StringValue':
      return obj.value;
    default:
      break;
  }
  const out = {};
  for (const [k, v] of Object.entries(obj)) {
    const f = type.fields[k];
    assert.ok(f, `${type.fullName} has no field ${k}`);
    const one = (x) => {
      if (f.resolvedType instanceof protobuf.Type) return toJson(f.resolvedType, x);
      if (Buffer.isBuffer(x)) return x.toString('base64');
      if (f.type === 'int64' || f.type === 'uint64') return String(x);
      return x;
    };
    if (f.map) out[k] = Object.fromEntries(Object.entries(v).map(([mk, mv]) => [mk, one(mv)]));
    else if (f.repeated) out[k] = v.map(one);
    else out[k] = one(v);
  }
  return out;
}

// The reverse, for objects written in the JSON mapping (lib/agent.js's
// snapshots): well-known types back to messages.
function fromJson(type, json) {
  switch (type.fullName) {
    case '.google.protobuf.Timestamp': {
      const ms = Date.parse(json);
      return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
    }
    case '.google.protobuf.Duration':
      return { seconds: Number(String(json).replace(/s$/, '')) };
    case '.google.protobuf.FieldMask':
      return { paths: json.split(',') };
    case '.google.protobuf.BoolValue':
    case '.google.protobuf.Int32Value':
    case '.google.protobuf.StringValue':
      return { value: json };
    default:
      break;
  }
  const out = {};
  for (const [k, v] of Object.entries(json)) {
    const f = type.fields[k];
    assert.ok(f, `${type.fullName} has no field ${k}`);
    const one = (x) => (f.resolvedType instanceof protobuf.Type ? fromJson(f.resolvedType, x) : x);
    if (f.map) out[k] = Object.fromEntries(Object.entries(v).map(([mk, mv]) => [mk, one(mv)]));
    else if (f.repeated) out[k] = v.map(one);
    else out[k] = one(v);
  }
  return out;
}

function encode(root, typeName, obj) {
  const t = root.lookupType(typeName);
  toJson(t, obj); // every key names a field (fromObject would drop the others)
  return Buffer.from(t.encode(t.fromObject(obj)).finish());
}

// ---------------------------------------------------------------------------
// ClientHellos: a TCP server that keeps the first TLS handshake record a
// client sends (the whole ClientHello) and then hangs up.

class Recorder {
  async start() {
    this.waiting = [];
    this.server = net.createServer((sock) => {
      let buf = Buffer.alloc(0);
      sock.on('error', () => {});
      sock.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        if (buf.length >= 5 && buf.length >= 5 + buf.readUInt16BE(3)) {
          sock.destroy();
          const w = this.waiting.shift();
          if (w) w(buf.subarray(0, 5 + buf.readUInt16BE(3)));
        }
      });
    });
    await new Promise((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = this.server.address().port;
    return this;
  }

  // The ClientHello `connect` (which connects to this.port) sends.
  async capture(what, connect) {
    const got = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${what}: no ClientHello within 15 s`)), 15000);
      this.waiting.push((b) => {
        clearTimeout(timer);
        resolve(b);
      });
    });
    const stop = await connect(this.port);
    try {
      return await got;
    } finally {
      stop();
    }
  }

  close() {
    this.server.close();
  }
}

const sclientTo = (args) => async (port) => {
  const c = SClient.start(port, args, { timeoutMs: 15000 });
  return () => c.kill();
};

// The body of the ALPN extension (type 16) of a ClientHello record as
// captured, or null when it has none.
function alpnExtension(record) {
  let off = 5 + 4 + 2 + 32; // record header, handshake header, version, random
  off += 1 + record[off]; // session id
  off += 2 + record.readUInt16BE(off); // cipher suites
  off += 1 + record[off]; // compression methods
  const end = off + 2 + record.readUInt16BE(off);
  for (off += 2; off + 4 <= end;) {
    const type = record.readUInt16BE(off);
    const len = record.readUInt16BE(off + 2);
    if (type === 16) return record.subarray(off + 4, off + 4 + len);
    off += 4 + len;
  }
  return null;
}

const nodeTo = (opts) => async (port) => {
  const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, checkServerIdentity: () => undefined, ...opts });
  s.on('error', () => {});
  return () => s.destroy();
};

// ---------------------------------------------------------------------------

async function main() {
  const p = pki();
  const x = p.agentExtras();
  const root = loadProtos();
  fs.mkdirSync(DATA, { recursive: true });

  // The listener fuzz_tls_server serves (data/listener.json) and the agent
  // below serves too, so that its tickets and sessions resume in the
  // fuzzer: the same contexts, the same ticket-key ring.
  const key = (label) => crypto.createHash('sha512').update(`tlsplane fuzz ticket key ${label}`).digest().subarray(0, 48);
  const contexts = {
    base: tlsContext('fuzz-default', {
      certs: [p.rsa, p.ecdsa], issuer: p.ca.cert, alpnProtocols: ['h2', 'http/1.1'], npnProtocols: ['http/1.1'], ocspStapling: true,
    }),
    clients: tlsContext('fuzz-clients', {
      certs: [p.ecdsa], issuer: p.ca.cert, requestCert: true, rejectUnauthorized: false, ca: p.ca.cert, crls: [p.crlPem],
    }),
    legacy: tlsContext('fuzz-legacy', {
      certs: [p.rsa], issuer: p.ca.cert,
      policy: { ciphers: 'ECDHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:AES128-SHA', dhparamPem: p.dh2048, minVersion: 'TLS_1_2', maxVersion: 'TLS_1_2' },
    }),
    ed: tlsContext('fuzz-ed', { certs: [p.ed25519], issuer: p.ca.cert, sessionTickets: false }),
  };
  // An ACME tls-alpn-01 challenge (RFC 8737) for acme.example.com: self-signed,
  // the critical acmeIdentifier extension.
  p.run(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'fuzz-acme.key']);
  p.run(['req', '-new', '-x509', '-key', 'fuzz-acme.key', '-out', 'fuzz-acme.crt', '-days', '3650',
    '-subj', '/CN=acme.example.com', '-addext', 'subjectAltName=DNS:acme.example.com',
    '-addext', `1.3.6.1.5.5.7.1.31=critical,DER:0420${crypto.createHash('sha256').update('fuzz').digest('hex')}`]);
  const acmeChallenges = [{ serverName: 'acme.example.com', certificatePem: p.read('fuzz-acme.crt'), privateKeyPem: p.read('fuzz-acme.key') }];
  const fuzzListener = (fields) => ({
    ...listener('fuzz', {
      defaultContext: contexts.base,
      sni: [['www.example.com', contexts.clients], ['*.example.org', contexts.legacy], ['ed.example.com', contexts.ed]],
      ticketKeys: [{ key: key(1), active: true }, { key: key(2) }],
      ...fields,
    }),
    acmeChallenges,
  });
  const rl = fuzzListener({ address: '127.0.0.1:8443', upstream: '127.0.0.1:8080' });
  fs.writeFileSync(path.join(DATA, 'listener.json'), `${JSON.stringify(rl, null, 1)}\n`);
  fs.writeFileSync(path.join(DATA, 'ocsp-leaf.pem'), p.rsa.cert);
  fs.writeFileSync(path.join(DATA, 'ocsp-issuer.pem'), p.ca.cert);
  const agentId = p.leaf('agent-edge-1', { type: 'ec', cn: 'agent:edge-1' });
  fs.writeFileSync(path.join(DATA, 'agent-key.pem'), agentId.key);

  // A real agent serving it, in front of an echo upstream that wants
  // PROXY v2 headers.
  const up = await Upstream.start({ mode: 'echo', proxy: true });
  const agent = await Agent.start(snapshot(1, [fuzzListener({ upstream: up.address, proxyProtocol: true })]));
  const rec = await new Recorder().start();
  try {
    const port = agent.port('fuzz');
    const tmp = agent.dir;
    const sess = (name) => path.join(tmp, name);
    const alice = ['-cert', x.alice.certFile, '-key', x.alice.keyFile];
    await sclient(port, ['-tls1_2', '-servername', 'foo.example.com', '-sess_out', sess('t12')]);
    await sclient(port, ['-tls1_2', '-no_ticket', '-sess_out', sess('id12')]);
    await sclient(port, ['-tls1_3', '-sess_out', sess('t13')]);
    await sclient(port, ['-tls1_3', '-servername', 'www.example.com', ...alice, '-sess_out', sess('t13c')]);
    await sclient(port, ['-tls1_2', '-servername', 'a.example.org', '-cipher', 'DHE-RSA-AES256-GCM-SHA384', '-sess_out', sess('dhe12')]);
    const node12 = await exchange(port, { maxVersion: 'TLSv1.2', servername: 'foo.example.com', ALPNProtocols: ['h2'] });
    const node13 = await exchange(port, { minVersion: 'TLSv1.3', servername: 'www.example.com', cert: x.alice.cert, key: x.alice.key });
    assert.ok(node12.session && node13.session, 'the agent gave Node no sessions');
    for (const f of ['t12', 'id12', 't13', 't13c', 'dhe12']) assert.ok(fs.existsSync(sess(f)), `no session ${f}`);

    const hellos = {
      's_client-tls13-sni-alpn-status': ['-tls1_3', '-servername', 'www.example.com', '-alpn', 'h2,http/1.1', '-status'],
      's_client-tls12-wildcard-dhe-npn': ['-tls1_2', '-servername', 'foo.example.org', '-cipher', 'DHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256', '-nextprotoneg', 'http/1.1'],
      's_client-tls12-no-sni-no-ticket': ['-tls1_2', '-no_ticket'],
      's_client-tls13-ed25519-groups': ['-tls1_3', '-servername', 'ed.example.com', '-groups', 'P-384:X25519', '-sigalgs', 'ed25519:ecdsa_secp256r1_sha256'],
      's_client-tls10-11-12': ['-no_tls1_3', '-cipher', 'ALL:@SECLEVEL=0'],
      's_client-tls12-ticket': ['-tls1_2', '-servername', 'foo.example.com', '-sess_in', sess('t12')],
      's_client-tls12-session-id': ['-tls1_2', '-no_ticket', '-sess_in', sess('id12')],
      's_client-tls12-dhe-ticket': ['-tls1_2', '-servername', 'a.example.org', '-sess_in', sess('dhe12')],
      's_client-tls13-psk': ['-tls1_3', '-sess_in', sess('t13')],
      's_client-tls13-psk-client-cert': ['-tls1_3', '-servername', 'www.example.com', ...alice, '-sess_in', sess('t13c')],
      's_client-tls13-acme': ['-tls1_3', '-servername', 'acme.example.com', '-alpn', 'acme-tls/1'],
      's_client-tls12-acme': ['-tls1_2', '-servername', 'acme.example.com', '-alpn', 'acme-tls/1'],
      's_client-acme-no-challenge': ['-servername', 'www.example.com', '-alpn', 'acme-tls/1'],
    };
    for (const [name, args] of Object.entries(hellos)) {
      const hello = await rec.capture(name, sclientTo(args));
      // First byte: read size (256 * 16: the whole hello in one read).
      seed('fuzz_tls_server', name, Buffer.concat([Buffer.from([0xff]), hello]));
    }
    const nodeHellos = {
      'node-default-sni-alpn': { servername: 'www.example.com', ALPNProtocols: ['h2', 'http/1.1'] },
      'node-tls12-session': { maxVersion: 'TLSv1.2', servername: 'foo.example.com', session: node12.session },
      'node-tls13-session': { minVersion: 'TLSv1.3', servername: 'www.example.com', session: node13.session },
    };
    for (const [name, opts] of Object.entries(nodeHellos)) {
      const hello = await rec.capture(name, nodeTo(opts));
      seed('fuzz_tls_server', name, Buffer.concat([Buffer.from([0xff]), hello]));
    }
    // ALPN lists as clients send them, ACME tls-alpn-01 validations among
    // them, for fuzz_alpn: the extension body of each ClientHello.
    const alpnHellos = {
      's_client-acme': sclientTo(['-alpn', 'acme-tls/1', '-servername', 'a.example.com']),
      's_client-h2-acme': sclientTo(['-alpn', 'h2,acme-tls/1', '-servername', 'a.example.com']),
      's_client-h2-http11': sclientTo(['-alpn', 'h2,http/1.1']),
      'node-acme': nodeTo({ servername: 'a.example.com', ALPNProtocols: ['acme-tls/1'] }),
      'node-acme-http11': nodeTo({ servername: 'a.example.com', ALPNProtocols: ['acme-tls/1', 'http/1.1'] }),
      'node-h2-http11': nodeTo({ servername: 'www.example.com', ALPNProtocols: ['h2', 'http/1.1'] }),
    };
    for (const [name, connect] of Object.entries(alpnHellos)) {
      const ext = alpnExtension(await rec.capture(name, connect));
      assert.ok(ext, `${name}: no ALPN extension`);
      seed('fuzz_alpn', name, ext);
    }
    // The same hello in 16-byte reads.
    const split = await rec.capture('split', sclientTo(['-servername', 'www.example.com']));
    seed('fuzz_tls_server', 's_client-16-byte-reads', Buffer.concat([Buffer.from([0x00]), split]));

    // PROXY v2: the facts of the headers the agent sent for those
    // connections, as fuzz_proxy_v2 takes them.
    for (const [i, c] of up.connections.entries()) {
      const h = c.proxy;
      if (!h || !h.src) continue;
      const fixed = Buffer.alloc(44);
      const ssl = h.ssl || { client: 0, verify: 1 };
      const sess = (ssl.client & 4) !== 0;
      fixed[0] = 1 | (1 << 2) | (h.ssl ? 1 << 4 : 0) | ((ssl.client & 2) ? 1 << 5 : 0) | (sess ? 1 << 6 : 0) | (sess ? 1 << 7 : 0);
      fixed.writeUInt32BE(ssl.verify >>> 0, 1);
      fixed.writeUInt16BE(1400, 5);
      const v4 = (a, port, off) => {
        a.split('.').forEach((b, k) => { fixed[off + k] = Number(b); });
        fixed.writeUInt16BE(port, off + 4);
      };
      v4(h.src.address, h.src.port, 7);
      v4(h.dst.address, h.dst.port, 25);
      const strs = [h.alpn || '', h.authority || '', ssl.version || '', ssl.cipher || '', ssl.cn || ''];
      seed('fuzz_proxy_v2', `agent-connection-${i}`, Buffer.concat([fixed, join(...strs)]));
      if (i === 0) {
        // The same over IPv6, and with no address (LOCAL).
        const six = Buffer.from(fixed);
        six[0] = (six[0] & ~0x0f) | 2 | (2 << 2);
        Buffer.from('20010db8000000000000000000000001', 'hex').copy(six, 7);
        seed('fuzz_proxy_v2', 'ipv6', Buffer.concat([six, join(...strs)]));
        const local = Buffer.from(fixed);
        local[0] &= ~0x0f;
        seed('fuzz_proxy_v2', 'local', Buffer.concat([local, join(...strs)]));
      }
    }
  } finally {
    rec.close();
    await agent.stopClean();
    await up.close();
  }

  // Certificates, keys, PKCS#12, CRLs, OCSP (fuzz_certinfo: first byte = operation).
  const op = (n, ...parts) => Buffer.concat([Buffer.from([n]), join(...parts)]);
  const C = 'fuzz_certinfo';
  seed(C, 'cert-rsa-with-ocsp', op(0, p.rsa.cert + p.ca.cert, p.rsa.key, '', p.rsa.ocspResponse));
  seed(C, 'cert-ecdsa', op(0, p.ecdsa.cert + p.ca.cert, p.ecdsa.key));
  seed(C, 'cert-ed25519', op(0, p.ed25519.cert, p.ed25519.key));
  seed(C, 'cert-chain-intermediate', op(0, p.chained.chain, p.chained.key));
  seed(C, 'cert-encrypted-pkcs8', op(0, p.rsa.cert, p.rsa.encryptedPkcs8Key, PASSPHRASE));
  seed(C, 'cert-encrypted-legacy', op(0, p.rsa.cert, p.rsa.encryptedLegacyKey, PASSPHRASE));
  seed(C, 'cert-expired-allowed', op(0x80, p.expired.cert, p.expired.key));
  seed(C, 'cert-key-mismatch', op(0, p.rsa.cert, p.otherRsaKey));
  seed(C, 'pfx-modern', op(1, p.rsa.pfx, PASSPHRASE));
  seed(C, 'pfx-legacy', op(1, p.rsa.pfxLegacy, PASSPHRASE));
  seed(C, 'pfx-3des', op(1, p.rsa.pfx3des, PASSPHRASE));
  seed(C, 'pfx-chain', op(1, p.chained.pfx, PASSPHRASE));
  seed(C, 'trust-bundle', op(2, p.ca.cert + p.ca2.cert + p.inter.cert));
  seed(C, 'crl-pem', op(3, p.crlPem));
  seed(C, 'crl-der', op(4, p.crlDer));
  seed(C, 'facts-chain', op(5, p.chained.chain + p.rsa.cert + p.ed25519.cert));
  seed(C, 'ocsp-good', op(6, p.rsa.ocspResponse));
  seed(C, 'ocsp-other-leaf', op(6, p.ecdsa.ocspResponse));
  seed(C, 'key-pkcs1', op(7, p.rsa.pkcs1Key));
  seed(C, 'key-sec1', op(7, p.ecdsa.sec1Key));
  seed(C, 'key-pkcs8-encrypted', op(7, p.ecdsa.encryptedPkcs8Key, PASSPHRASE));

  // API requests: binary for fuzz_server_request (first line: the method),
  // proto3 JSON for fuzz_pbjson (first line: the message type).
  const ts = (d) => ({ seconds: Math.floor(d.getTime() / 1000), nanos: 0 });
  const requests = [
    ['CertificateService', 'CreateCertificate', 'CreateCertificateRequest', { certificateId: 'web', certificate: { certificateChainPem: p.rsa.cert + p.ca.cert, privateKeyPem: p.rsa.key, ocspResponse: p.rsa.ocspResponse, labels: { env: 'prod' } } }],
    ['CertificateService', 'CreateCertificate', 'CreateCertificateRequest', { certificateId: 'pfx', certificate: { pfx: p.rsa.pfx, passphrase: PASSPHRASE } }],
    ['CertificateService', 'UpdateCertificate', 'UpdateCertificateRequest', { certificate: { name: 'certificates/web', certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key }, updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] } }],
    ['CertificateService', 'ListCertificates', 'ListCertificatesRequest', { pageSize: 50, labelSelector: 'env=prod', expiringBefore: ts(new Date('2030-01-01T00:00:00Z')) }],
    ['TrustBundleService', 'CreateTrustBundle', 'CreateTrustBundleRequest', { trustBundleId: 'clients', trustBundle: { caPem: p.ca.cert + p.ca2.cert } }],
    ['RevocationListService', 'CreateRevocationList', 'CreateRevocationListRequest', { revocationListId: 'ca', revocationList: { crlPem: p.crlPem } }],
    ['RevocationListService', 'CreateRevocationList', 'CreateRevocationListRequest', { revocationListId: 'ca-der', revocationList: { crlDer: p.crlDer } }],
    ['CipherPolicyService', 'CreateCipherPolicy', 'CreateCipherPolicyRequest', { cipherPolicyId: 'p', cipherPolicy: { ciphers: 'ECDHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384', ciphersuites: 'TLS_AES_128_GCM_SHA256', ecdhCurve: 'X25519:P-256', dhparamPem: p.dh2048, minVersion: 'TLS_1_2', maxVersion: 'TLS_1_3', honorCipherOrder: { value: true } } }],
    ['CipherPolicyService', 'ListCiphers', 'ListCiphersRequest', {}],
    ['TlsContextService', 'CreateTlsContext', 'CreateTlsContextRequest', { tlsContextId: 'web', tlsContext: { certificates: ['certificates/web'], cipherPolicy: 'cipherPolicies/p', trustBundle: 'trustBundles/clients', revocationLists: ['revocationLists/ca'], requestCert: true, alpnProtocols: ['h2', 'http/1.1'], sessionTimeout: { seconds: 300 }, sessionIdContext: 'web', ocspStapling: true, maxSendFragment: 4096 } }],
    ['ListenerService', 'CreateListener', 'CreateListenerRequest', { listenerId: 'web', listener: { address: '0.0.0.0:443', defaultTlsContext: 'tlsContexts/web', sniRoutes: [{ hostname: '*.example.com', tlsContext: 'tlsContexts/web' }], upstream: '127.0.0.1:8080', proxyProtocol: true, handshakeTimeout: { seconds: 10 }, maxConnections: 1000, renegotiationLimit: { value: 3 }, renegotiationWindow: { seconds: 600 }, ticketKeyRing: 'ticketKeyRings/shared', agentSelector: { site: 'par' } } }],
    ['ListenerService', 'UpdateListener', 'UpdateListenerRequest', { listener: { name: 'listeners/web', handshakeTimeout: { seconds: 30 } }, updateMask: { paths: ['handshake_timeout'] } }],
    ['TicketKeyService', 'CreateTicketKeyRing', 'CreateTicketKeyRingRequest', { ticketKeyRingId: 'shared', ticketKeyRing: { rotationPeriod: { seconds: 86400 }, retainedKeys: 3 } }],
    ['TicketKeyService', 'SetTicketKeys', 'SetTicketKeysRequest', { name: 'ticketKeyRings/shared', keys: [key(1), key(2)] }],
    ['TokenService', 'CreateToken', 'CreateTokenRequest', { tokenId: 'join-edge-1', token: { role: 'JOIN', agentId: 'edge-1', description: 'edge 1' }, ttl: { seconds: 3600 } }],
    ['ClientCertificateService', 'IssueClientCertificate', 'IssueClientCertificateRequest', { csrPem: '-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n', role: 'OPERATOR', principal: 'ci-rotation', validity: { seconds: 86400 * 30 } }],
    ['AgentService', 'GetRollout', 'GetRolloutRequest', { revision: 7 }],
    ['AgentService', 'Connect', 'AgentMessage', { hello: { name: 'edge-1', labels: { site: 'par' }, version: '0.1.0', appliedRevision: 3 } }],
    ['AgentService', 'Connect', 'AgentMessage', { ack: { revision: 4, listeners: [{ listener: 'listeners/web', applied: false, error: 'address: in use' }] } }],
    ['AuditService', 'ListAuditEvents', 'ListAuditEventsRequest', { pageSize: 100, resource: 'listeners/web', sinceRevision: 3 }],
  ];
  for (const [i, [svc, method, type, obj]] of requests.entries()) {
    const full = `tlsplane.v1.${type}`;
    const bin = encode(root, full, obj);
    seed('fuzz_server_request', `${i}-${method}`, Buffer.concat([Buffer.from(`/tlsplane.v1.${svc}/${method}\n`), bin]));
    const json = JSON.stringify(toJson(root.lookupType(full), obj), null, 1);
    seed('fuzz_pbjson', `${i}-${type}`, Buffer.from(`${full}\n${json}`));
  }
  // The agent's snapshot file: JSON as lib/agent.js writes it.
  const snap = snapshot(5, [rl]);
  seed('fuzz_pbjson', 'snapshot', Buffer.from(`tlsplane.v1.Snapshot\n${JSON.stringify(snap, null, 1)}`));

  // The agent stream (first byte: 0 a ServerMessage, 1 an AgentCertificate).
  const snapObj = fromJson(root.lookupType('tlsplane.v1.Snapshot'), snap);
  seed('fuzz_agent_stream', 'snapshot', Buffer.concat([Buffer.from([0]), encode(root, 'tlsplane.v1.ServerMessage', { snapshot: snapObj })]));
  seed('fuzz_agent_stream', 'snapshot-empty', Buffer.concat([Buffer.from([0]), encode(root, 'tlsplane.v1.ServerMessage', { snapshot: { revision: 6 } })]));
  seed('fuzz_agent_stream', 'agent-certificate', Buffer.concat([Buffer.from([1]), encode(root, 'tlsplane.v1.AgentCertificate', {
    certificatePem: agentId.cert, caPem: p.ca.cert, notAfter: ts(agentId.notAfter), renewAfter: ts(new Date()),
    clientCertificate: `clientCertificates/serial-${agentId.serial}`, agent: 'agents/edge-1',
  })]));

  // The metrics endpoint (first byte: read size - 1).
  const M = 'fuzz_metrics_http';
  const req = (n, text) => Buffer.concat([Buffer.from([n]), Buffer.from(text, 'latin1')]);
  seed(M, 'curl', req(255, 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9100\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n'));
  seed(M, 'prometheus', req(255, 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9100\r\nUser-Agent: Prometheus/2.42.0\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\nAccept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n'));
  seed(M, 'head-split', req(3, 'HEAD /metrics?x=1 HTTP/1.0\r\n\r\n'));
  seed(M, 'post', req(255, 'POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello'));
  seed(M, 'chunked', req(255, 'PUT /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n'));
  seed(M, 'other-path', req(255, 'GET /metrics/x HTTP/1.1\r\n\r\n'));
  seed(M, 'absolute-url', req(255, 'GET http://127.0.0.1:9100/metrics HTTP/1.1\r\n\r\n'));
  seed(M, 'healthz', req(255, 'GET /healthz HTTP/1.1\r\nHost: 10.0.0.5:9443\r\nUser-Agent: ELB-HealthChecker/2.0\r\n\r\n'));
  seed(M, 'healthz-head-split', req(4, 'HEAD /healthz HTTP/1.0\r\n\r\n'));

  // The gateway's Connect reading (first byte: the function, second: a code).
  const C = 'fuzz_connect';
  const con = (fn, code, text) => Buffer.concat([Buffer.from([fn, code]), Buffer.from(text, 'latin1')]);
  seed(C, 'path', con(0, 0, '/tlsplane.v1.CertificateService/GetCertificate'));
  seed(C, 'content-type', con(1, 0, 'application/json; charset=utf-8'));
  seed(C, 'timeout', con(2, 0, '5000'));
  seed(C, 'error', con(3, 5, 'certificates/\xff\xfe not found \xe2\x82\xac'));

  console.log(Object.entries(written).map(([t, n]) => `${t}: ${n}`).join('\n'));
}

main().then(() => process.exit(0), (err) => {
  console.error(err);
  process.exit(1);
});
