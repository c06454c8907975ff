'use strict';
// Server reflection and health: what `grpcurl list`, `grpcurl describe` and
// a grpcurl call see, with no .proto file at hand.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const protoLoader = require('@grpc/proto-loader');
const { useServer } = require('./lib/server');
const { ReflectionStream, fetchSchema, connect, decodeFile, LOADER_OPTIONS } = require('./lib/reflect');
const { status, expectGrpcError } = require('./lib/util');

const ctx = useServer({ before, after, beforeEach, afterEach });

const TLSPLANE_SERVICES = [
  'tlsplane.v1.AgentService',
  'tlsplane.v1.AuditService',
  'tlsplane.v1.CertificateService',
  'tlsplane.v1.CipherPolicyService',
  'tlsplane.v1.ClientCertificateService',
  'tlsplane.v1.IssuerService',
  'tlsplane.v1.ListenerService',
  'tlsplane.v1.RevocationListService',
  'tlsplane.v1.TicketKeyService',
  'tlsplane.v1.TlsContextService',
  'tlsplane.v1.TokenService',
  'tlsplane.v1.TrustBundleService',
];
const OTHER_SERVICES = [
  'grpc.health.v1.Health',
  'grpc.reflection.v1.ServerReflection',
  'grpc.reflection.v1alpha.ServerReflection',
];

// The resource services' methods, as api.md names them.
function crud(resource, plural) {
  return {
    [`Create${resource}`]: [`Create${resource}Request`, resource],
    [`Get${resource}`]: [`Get${resource}Request`, resource],
    [`List${plural}`]: [`List${plural}Request`, `List${plural}Response`],
    [`Update${resource}`]: [`Update${resource}Request`, resource],
    [`Delete${resource}`]: [`Delete${resource}Request`, 'google.protobuf.Empty'],
  };
}
const EXPECTED_METHODS = {
  'tlsplane.v1.CertificateService': {
    ...crud('Certificate', 'Certificates'),
    IssueCertificate: ['IssueCertificateRequest', 'Certificate'],
    CreateCertificateRequest: ['CreateCertificateRequestRequest', 'Certificate'],
  },
  'tlsplane.v1.IssuerService': crud('Issuer', 'Issuers'),
  'tlsplane.v1.TrustBundleService': crud('TrustBundle', 'TrustBundles'),
  'tlsplane.v1.RevocationListService': crud('RevocationList', 'RevocationLists'),
  'tlsplane.v1.CipherPolicyService': {
    ...crud('CipherPolicy', 'CipherPolicies'),
    ListCiphers: ['ListCiphersRequest', 'ListCiphersResponse'],
  },
  'tlsplane.v1.TlsContextService': crud('TlsContext', 'TlsContexts'),
  'tlsplane.v1.ListenerService': crud('Listener', 'Listeners'),
  'tlsplane.v1.TicketKeyService': {
    ...crud('TicketKeyRing', 'TicketKeyRings'),
    RotateTicketKeys: ['RotateTicketKeysRequest', 'TicketKeyRing'],
    SetTicketKeys: ['SetTicketKeysRequest', 'TicketKeyRing'],
  },
  'tlsplane.v1.AuditService': {
    ListAuditEvents: ['ListAuditEventsRequest', 'ListAuditEventsResponse'],
  },
  'tlsplane.v1.AgentService': {
    GetAgent: ['GetAgentRequest', 'Agent'],
    ListAgents: ['ListAgentsRequest', 'ListAgentsResponse'],
    DeleteAgent: ['DeleteAgentRequest', 'google.protobuf.Empty'],
    GetRollout: ['GetRolloutRequest', 'Rollout'],
    GetServing: ['GetServingRequest', 'Serving'],
    EnrollAgent: ['EnrollAgentRequest', 'AgentCertificate'],
    RenewAgentCertificate: ['RenewAgentCertificateRequest', 'AgentCertificate'],
  },
  'tlsplane.v1.TokenService': {
    CreateToken: ['CreateTokenRequest', 'CreateTokenResponse'],
    GetToken: ['GetTokenRequest', 'Token'],
    ListTokens: ['ListTokensRequest', 'ListTokensResponse'],
    RevokeToken: ['RevokeTokenRequest', 'Token'],
    DeleteToken: ['DeleteTokenRequest', 'google.protobuf.Empty'],
  },
  'tlsplane.v1.ClientCertificateService': {
    IssueClientCertificate: ['IssueClientCertificateRequest', 'ClientCertificate'],
    GetClientCertificate: ['GetClientCertificateRequest', 'ClientCertificate'],
    ListClientCertificates: ['ListClientCertificatesRequest', 'ListClientCertificatesResponse'],
    RevokeClientCertificate: ['RevokeClientCertificateRequest', 'ClientCertificate'],
  },
};

function qualify(type) {
  return type.includes('.') ? `.${type}` : `.tlsplane.v1.${type}`;
}

// `grpcurl describe SERVICE` prints one line per method like this.
function describeService(files, fullName) {
  const pkg = fullName.slice(0, fullName.lastIndexOf('.'));
  const short = fullName.slice(fullName.lastIndexOf('.') + 1);
  for (const { proto } of files.values()) {
    if ((proto.package || '') !== pkg) continue;
    const svc = (proto.service || []).find((s) => s.name === short);
    if (svc) {
      return svc.method.map((m) => {
        const cs = m.clientStreaming ? 'stream ' : '';
        const ss = m.serverStreaming ? 'stream ' : '';
        return `rpc ${m.name} ( ${cs}${m.inputType} ) returns ( ${ss}${m.outputType} );`;
      });
    }
  }
  return null;
}

function findMessage(files, fullName) {
  for (const { proto } of files.values()) {
    const pkg = proto.package ? `${proto.package}.` : '';
    for (const m of proto.messageType || []) if (pkg + m.name === fullName) return { file: proto, message: m };
  }
  return null;
}

let schemaV1;

test('list_services lists every tlsplane.v1 service, health and both reflection services', async () => {
  const rs = new ReflectionStream(ctx.server.address, 'v1');
  try {
    const services = await rs.listServices();
    assert.equal(new Set(services).size, services.length, `duplicates in ${services}`);
    for (const s of [...TLSPLANE_SERVICES, ...OTHER_SERVICES]) {
      assert.ok(services.includes(s), `list_services lacks ${s}; got ${services.join(', ')}`);
    }
  } finally {
    rs.close();
  }
});

test('the whole schema loads through reflection, dependencies included', async () => {
  schemaV1 = await fetchSchema(ctx.server.address, 'v1');
  const names = [...schemaV1.files.keys()];
  for (const wkt of ['google/protobuf/timestamp.proto', 'google/protobuf/field_mask.proto', 'google/protobuf/empty.proto']) {
    assert.ok(names.includes(wkt), `${wkt} was not served; files: ${names.join(', ')}`);
  }
  // Every import of every served file was served too.
  for (const { proto } of schemaV1.files.values()) {
    for (const dep of proto.dependency || []) assert.ok(schemaV1.files.has(dep), `${proto.name} imports ${dep}, not served`);
  }
  // @grpc/proto-loader's own loader takes the served set untouched, and
  // every service comes out with its methods.
  const pkgDef = protoLoader.loadFileDescriptorSetFromBuffer(schemaV1.setBuffer, LOADER_OPTIONS);
  for (const s of [...TLSPLANE_SERVICES, 'grpc.health.v1.Health']) {
    assert.ok(pkgDef[s], `${s} missing from the loaded package definition`);
    for (const method of Object.keys(EXPECTED_METHODS[s] || { Check: 1 })) {
      assert.equal(pkgDef[s][method] && pkgDef[s][method].path, `/${s}/${method}`);
    }
  }
});

test('describe: every service has the documented methods with their request and response types', () => {
  assert.ok(schemaV1, 'schema not loaded');
  for (const [svc, methods] of Object.entries(EXPECTED_METHODS)) {
    const lines = describeService(schemaV1.files, svc);
    assert.ok(lines, `${svc} not found in the served files`);
    const expected = Object.entries(methods).map(
      ([m, [req, res]]) => `rpc ${m} ( ${qualify(req)} ) returns ( ${qualify(res)} );`,
    );
    for (const line of expected) assert.ok(lines.includes(line), `${svc}: expected "${line}"; describe shows:\n${lines.join('\n')}`);
    // Every method's types resolve to a served message.
    for (const line of lines) {
      for (const t of line.match(/\.[\w.]+/g)) {
        assert.ok(findMessage(schemaV1.files, t.slice(1)), `${svc}: ${t} is not a served message`);
      }
    }
  }
});

test('describe a message: Certificate fields with their numbers and JSON names', () => {
  const found = findMessage(schemaV1.files, 'tlsplane.v1.Certificate');
  assert.ok(found, 'tlsplane.v1.Certificate not served');
  const fields = Object.fromEntries(found.message.field.map((f) => [f.name, f]));
  const expect = {
    name: [1, 'name'],
    etag: [2, 'etag'],
    labels: [3, 'labels'],
    certificate_chain_pem: [10, 'certificateChainPem'],
    private_key_pem: [11, 'privateKeyPem'],
    pfx: [13, 'pfx'],
    sha256_fingerprint: [30, 'sha256Fingerprint'],
    not_after: [29, 'notAfter'],
  };
  for (const [name, [number, jsonName]] of Object.entries(expect)) {
    assert.ok(fields[name], `Certificate.${name} missing`);
    assert.equal(fields[name].number, number, `Certificate.${name} number`);
    if (fields[name].jsonName) assert.equal(fields[name].jsonName, jsonName, `Certificate.${name} json_name`);
  }
  assert.equal(fields.not_after.typeName, '.google.protobuf.Timestamp');
  // ListCertificatesRequest.expiring_before is "expiringBefore" in JSON (api.md).
  const lreq = findMessage(schemaV1.files, 'tlsplane.v1.ListCertificatesRequest');
  const eb = lreq.message.field.find((f) => f.name === 'expiring_before');
  assert.ok(eb, 'ListCertificatesRequest.expiring_before missing');
  if (eb.jsonName) assert.equal(eb.jsonName, 'expiringBefore');
});

// The comment protoc keeps for the element at `path` in a file's source
// info (what grpcurl describe prints above the element), or undefined.
function commentAt(file, path) {
  const loc = (file.sourceCodeInfo?.location || []).find((l) => l.path.length === path.length && l.path.every((x, i) => x === path[i]));
  return loc?.leadingComments;
}

test('describe shows the .proto comments: a field\'s rule and a method\'s behaviour travel in the served descriptors', () => {
  const ctxMsg = findMessage(schemaV1.files, 'tlsplane.v1.TlsContext');
  assert.ok(ctxMsg, 'tlsplane.v1.TlsContext not served');
  assert.ok(ctxMsg.file.sourceCodeInfo?.location?.length > 0, 'tls_context.proto is served without source info');
  const mi = ctxMsg.file.messageType.indexOf(ctxMsg.message);
  const fi = ctxMsg.message.field.findIndex((f) => f.name === 'max_send_fragment');
  // FileDescriptorProto.message_type = 4, DescriptorProto.field = 2.
  assert.match(commentAt(ctxMsg.file, [4, mi, 2, fi]) || '', /setMaxSendFragment: 512 to 16384 bytes/);
  const certFile = findMessage(schemaV1.files, 'tlsplane.v1.Certificate').file;
  const si = certFile.service.findIndex((x) => x.name === 'CertificateService');
  const mj = certFile.service[si].method.findIndex((m) => m.name === 'UpdateCertificate');
  // FileDescriptorProto.service = 6, ServiceDescriptorProto.method = 2.
  assert.match(commentAt(certFile, [6, si, 2, mj]) || '', /A new chain without a new key keeps the stored key/);
  const mk = certFile.service[si].method.findIndex((m) => m.name === 'CreateCertificateRequest');
  assert.match(commentAt(certFile, [6, si, 2, mk]) || '', /certificate signing request \(PKCS#10/);
});

test('file_containing_symbol for a message, an enum, a method and a service', async () => {
  const rs = new ReflectionStream(ctx.server.address, 'v1');
  try {
    for (const [symbol, check] of [
      ['tlsplane.v1.Certificate', (p) => p.messageType.some((m) => m.name === 'Certificate')],
      ['tlsplane.v1.TicketKeyState', (p) => p.enumType.some((e) => e.name === 'TicketKeyState')],
      ['tlsplane.v1.CertificateService.CreateCertificate', (p) => p.service.some((s) => s.name === 'CertificateService')],
      ['tlsplane.v1.ListenerService', (p) => p.service.some((s) => s.name === 'ListenerService')],
      ['google.protobuf.Timestamp', (p) => p.messageType.some((m) => m.name === 'Timestamp')],
    ]) {
      const bufs = await rs.fileContainingSymbol(symbol);
      assert.ok(bufs.length >= 1, `${symbol}: no file`);
      const files = bufs.map(decodeFile);
      assert.ok(files.some(check), `${symbol}: none of ${files.map((f) => f.name).join(', ')} defines it`);
    }
    const byName = (await rs.fileByFilename('tlsplane/v1/certificate.proto')).map(decodeFile);
    assert.ok(byName.some((f) => f.name === 'tlsplane/v1/certificate.proto' && f.package === 'tlsplane.v1'));
  } finally {
    rs.close();
  }
});

test('unknown symbol and file: error_response NOT_FOUND (5), and the stream stays usable', async () => {
  const rs = new ReflectionStream(ctx.server.address, 'v1');
  try {
    const r1 = await rs.request({ fileContainingSymbol: 'tlsplane.v1.NoSuchThing' });
    assert.ok(r1.errorResponse, `expected error_response, got ${JSON.stringify(r1)}`);
    assert.equal(r1.errorResponse.errorCode, status.NOT_FOUND);
    const r2 = await rs.request({ fileByFilename: 'no/such/file.proto' });
    assert.ok(r2.errorResponse, `expected error_response, got ${JSON.stringify(r2)}`);
    assert.equal(r2.errorResponse.errorCode, status.NOT_FOUND);
    // Same stream, next request answered.
    const services = await rs.listServices();
    assert.ok(services.includes('tlsplane.v1.CertificateService'));
    const bufs = await rs.fileContainingSymbol('tlsplane.v1.Listener');
    assert.ok(bufs.length >= 1);
  } finally {
    rs.close();
  }
});

test('v1alpha serves the same services and the same descriptors', async () => {
  const alpha = new ReflectionStream(ctx.server.address, 'v1alpha');
  const v1 = new ReflectionStream(ctx.server.address, 'v1');
  try {
    const [sa, s1] = [await alpha.listServices(), await v1.listServices()];
    assert.deepEqual([...sa].sort(), [...s1].sort());
    const [fa, f1] = [await alpha.fileContainingSymbol('tlsplane.v1.Certificate'), await v1.fileContainingSymbol('tlsplane.v1.Certificate')];
    const byNameA = new Map(fa.map((b) => [decodeFile(b).name, Buffer.from(b)]));
    const byName1 = new Map(f1.map((b) => [decodeFile(b).name, Buffer.from(b)]));
    const cert = 'tlsplane/v1/certificate.proto';
    assert.ok(byNameA.has(cert) && byName1.has(cert));
    assert.ok(byNameA.get(cert).equals(byName1.get(cert)), 'v1alpha and v1 serve different certificate.proto descriptors');
    const err = await alpha.request({ fileContainingSymbol: 'no.such.Symbol' });
    assert.equal(err.errorResponse && err.errorResponse.errorCode, status.NOT_FOUND);
    assert.ok((await alpha.listServices()).length > 0, 'v1alpha stream unusable after an error');
  } finally {
    alpha.close();
    v1.close();
  }
});

test('a client built from v1alpha alone can call the API', async () => {
  const conn = await connect(ctx.server.address, ctx.server.connectOptions({ version: 'v1alpha' }));
  try {
    const res = await conn.api.CipherPolicyService.GetCipherPolicy({ name: 'cipherPolicies/default' });
    assert.equal(res.name, 'cipherPolicies/default');
  } finally {
    conn.close();
  }
});

test('reflection answers many requests on one stream, pipelined, in order', async () => {
  const rs = new ReflectionStream(ctx.server.address, 'v1');
  try {
    const symbols = ['tlsplane.v1.Certificate', 'tlsplane.v1.Listener', 'tlsplane.v1.NoSuch', 'tlsplane.v1.TlsContext'];
    const answers = await Promise.all(symbols.map((s) => rs.request({ fileContainingSymbol: s })));
    assert.ok(answers[0].fileDescriptorResponse && answers[1].fileDescriptorResponse && answers[3].fileDescriptorResponse);
    assert.ok(answers[2].errorResponse);
    const names = (a) => a.fileDescriptorResponse.fileDescriptorProto.map((b) => decodeFile(b).name);
    assert.ok(names(answers[0]).includes('tlsplane/v1/certificate.proto'));
    assert.ok(names(answers[1]).includes('tlsplane/v1/listener.proto'));
    assert.ok(names(answers[3]).includes('tlsplane/v1/tls_context.proto'));
  } finally {
    rs.close();
  }
});

test('health: Check answers SERVING', async () => {
  const health = ctx.api['grpc.health.v1.Health'];
  assert.ok(health, 'grpc.health.v1.Health not loaded through reflection');
  const res = await health.Check({ service: '' });
  assert.equal(res.status, 'SERVING');
});

test('health: an unknown service is NOT_FOUND (grpc.health.v1 protocol)', async () => {
  await expectGrpcError(ctx.api['grpc.health.v1.Health'].Check({ service: 'no.such.Service' }), status.NOT_FOUND);
});

test('an unknown method is UNIMPLEMENTED', async () => {
  const { grpc } = require('./lib/reflect');
  const client = new grpc.Client(ctx.server.address, grpc.credentials.createInsecure());
  const call = (metadata) => new Promise((resolve) => {
    client.makeUnaryRequest(
      '/tlsplane.v1.CertificateService/NoSuchMethod',
      (x) => x,
      (x) => x,
      Buffer.alloc(0),
      metadata,
      { deadline: Date.now() + 10000 },
      (e) => resolve(e),
    );
  });
  try {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${ctx.server.adminToken}`);
    const err = await call(md);
    assert.ok(err, 'an unknown method succeeded');
    assert.equal(err.code, status.UNIMPLEMENTED);
    // Without a credential the caller learns nothing, not even that.
    const anon = await call(new grpc.Metadata());
    assert.equal(anon.code, status.UNAUTHENTICATED);
  } finally {
    client.close();
  }
});
