'use strict';
// An independent gRPC client for tlsplane-server whose whole schema comes
// from the server itself, through gRPC server reflection.
//
// Why reflection, and not our own proto/ files?
//
//   * The contract (docs/api.md, DESIGN.md) is that `grpcurl list`,
//     `grpcurl describe` and JSON calls work with no .proto file at hand.
//     An operator's first contact with the API is grpcurl, and grpcurl knows
//     nothing but what reflection serves. So the integration tests talk to
//     the server exactly the way grpcurl does: list_services, then
//     file_containing_symbol for every service, then file_by_filename for
//     every dependency not yet seen, then build the types from those
//     FileDescriptorProtos. If reflection serves an incomplete or broken
//     descriptor set (a missing import, a well-known type not served, a
//     service missing from the list), every test in the suite fails here,
//     not in front of a user.
//   * Loading our .proto files would test the schema against itself: a
//     server that registered the wrong descriptor set, or a stale one, would
//     still pass. Going through reflection tests what is actually served.
//   * Nothing here reads /work/main/proto: the reflection protocol's own
//     messages (grpc.reflection.v1 and v1alpha, which are standard and
//     identical but for the package) are defined inline below with
//     protobufjs's JSON descriptor format, and the descriptor.proto types
//     come from protobufjs/ext/descriptor.
//
// How the served descriptors become clients. @grpc/proto-loader's
// loadFileDescriptorSetFromBuffer (protobufjs Root.fromDescriptor) has two
// gaps against what grpcurl shows a user:
//   * keepCase only applies when parsing .proto text, so it keeps the proto
//     names (certificate_chain_pem), while grpcurl and the JSON mapping use
//     each field's json_name (certificateChainPem);
//   * map fields stay what the descriptor encodes them as, repeated
//     XxxEntry {key, value} messages, while grpcurl shows a JSON object.
// So connect() decodes the served FileDescriptorSet, renames every field to
// the json_name the server serves (lowerCamelCase computed as protoc does
// where absent), builds the protobufjs Root from the descriptors exactly as
// loadFileDescriptorSetFromBuffer does, turns each map-entry field into a
// map field, and loads that with proto-loader's fromJSON. Only names and
// the JS shape change: the wire format depends on field numbers alone.
// The reflection test also loads the untouched served set with
// loadFileDescriptorSetFromBuffer, so both paths are covered.
// conn.root (for describe) keeps the proto names as served.
//
// Loader options: longs: String, enums: String, bytes: Buffer,
// defaults: true, oneofs: true. So requests and responses use lowerCamelCase
// keys; Timestamps and Durations arrive as {seconds: '123', nanos: 0},
// wrappers (BoolValue, Int32Value) as {value: ...}, bytes as Buffer, maps as
// plain objects, unset message fields as null, int64 as strings.
//
// Credentials. Every tlsplane.v1 call needs one (docs/api.md):
//   connect(addr, { token })  sends "authorization: Bearer <token>" with
//                             every call, streams included (an interceptor);
//   connect(addr, { tls: { ca, cert, key } })  TLS, the server verified
//                             against ca (PEM); cert + key: a client
//                             certificate. Without tls: plaintext.
// Both may be given; the token then wins on the server.
//
// Usage:
//   const conn = await connect('127.0.0.1:1234', { token });
//   const cert = await conn.api.CertificateService.CreateCertificate({...});
//   // failure: rejects with the grpc error (err.code, err.details)
//   conn.close();

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const descriptor = require('protobufjs/ext/descriptor');

// The reflection protocol (grpc/reflection/v1/reflection.proto), the same in
// both packages.
function reflectionNamespace() {
  return {
    nested: {
      ServerReflectionRequest: {
        oneofs: {
          messageRequest: {
            oneof: [
              'fileByFilename', 'fileContainingSymbol', 'fileContainingExtension',
              'allExtensionNumbersOfType', 'listServices',
            ],
          },
        },
        fields: {
          host: { type: 'string', id: 1 },
          fileByFilename: { type: 'string', id: 3 },
          fileContainingSymbol: { type: 'string', id: 4 },
          fileContainingExtension: { type: 'ExtensionRequest', id: 5 },
          allExtensionNumbersOfType: { type: 'string', id: 6 },
          listServices: { type: 'string', id: 7 },
        },
      },
      ExtensionRequest: {
        fields: {
          containingType: { type: 'string', id: 1 },
          extensionNumber: { type: 'int32', id: 2 },
        },
      },
      ServerReflectionResponse: {
        oneofs: {
          messageResponse: {
            oneof: [
              'fileDescriptorResponse', 'allExtensionNumbersResponse',
              'listServicesResponse', 'errorResponse',
            ],
          },
        },
        fields: {
          validHost: { type: 'string', id: 1 },
          originalRequest: { type: 'ServerReflectionRequest', id: 2 },
          fileDescriptorResponse: { type: 'FileDescriptorResponse', id: 4 },
          allExtensionNumbersResponse: { type: 'ExtensionNumberResponse', id: 5 },
          listServicesResponse: { type: 'ListServiceResponse', id: 6 },
          errorResponse: { type: 'ErrorResponse', id: 7 },
        },
      },
      FileDescriptorResponse: {
        fields: { fileDescriptorProto: { rule: 'repeated', type: 'bytes', id: 1 } },
      },
      ExtensionNumberResponse: {
        fields: {
          baseTypeName: { type: 'string', id: 1 },
          extensionNumber: { rule: 'repeated', type: 'int32', id: 2 },
        },
      },
      ListServiceResponse: {
        fields: { service: { rule: 'repeated', type: 'ServiceResponse', id: 1 } },
      },
      ServiceResponse: { fields: { name: { type: 'string', id: 1 } } },
      ErrorResponse: {
        fields: {
          errorCode: { type: 'int32', id: 1 },
          errorMessage: { type: 'string', id: 2 },
        },
      },
    },
  };
}

const reflectionRoot = protobuf.Root.fromJSON({
  nested: {
    grpc: {
      nested: {
        reflection: {
          nested: { v1: reflectionNamespace(), v1alpha: reflectionNamespace() },
        },
      },
    },
  },
});

const REFLECTION_VERSIONS = ['v1', 'v1alpha'];

// One ServerReflectionInfo bidi stream. Each request gets exactly one
// response, in order (the protocol's rule), so a FIFO of waiters pairs them.
class ReflectionStream {
  constructor(address, version = 'v1', { deadlineMs = 15000, credentials, metadata } = {}) {
    if (!REFLECTION_VERSIONS.includes(version)) throw new Error(`unknown reflection version ${version}`);
    this.version = version;
    const ns = `grpc.reflection.${version}`;
    this.Request = reflectionRoot.lookupType(`${ns}.ServerReflectionRequest`);
    this.Response = reflectionRoot.lookupType(`${ns}.ServerReflectionResponse`);
    this.client = new grpc.Client(address, credentials || grpc.credentials.createInsecure());
    this.waiters = [];
    this.ended = false;
    this.error = null;
    this.call = this.client.makeBidiStreamRequest(
      `/${ns}.ServerReflection/ServerReflectionInfo`,
      (obj) => Buffer.from(this.Request.encode(this.Request.fromObject(obj)).finish()),
      (buf) => this.Response.toObject(this.Response.decode(buf), {
        longs: String, enums: String, bytes: Buffer, defaults: false, oneofs: true,
      }),
      metadata ? metadata.clone() : new grpc.Metadata(),
      { deadline: Date.now() + deadlineMs },
    );
    this.call.on('data', (msg) => {
      const w = this.waiters.shift();
      if (w) w.resolve(msg);
    });
    this.call.on('error', (err) => {
      this.error = err;
      this._failAll(err);
    });
    this.call.on('end', () => {
      this.ended = true;
      this._failAll(new Error('reflection stream ended by the server'));
    });
    this.call.on('status', () => {});
  }

  _failAll(err) {
    for (const w of this.waiters.splice(0)) w.reject(err);
  }

  // Sends one request ({listServices: ''} / {fileContainingSymbol: 'x'} /
  // {fileByFilename: 'f.proto'} ...) and resolves with its response.
  request(req) {
    if (this.error) return Promise.reject(this.error);
    if (this.ended) return Promise.reject(new Error('reflection stream has ended'));
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.call.write({ host: '', ...req });
    });
  }

  async listServices() {
    const res = await this.request({ listServices: '' });
    if (res.errorResponse) throw reflectionError(res.errorResponse);
    if (!res.listServicesResponse) throw new Error(`list_services answered ${JSON.stringify(res)}`);
    return (res.listServicesResponse.service || []).map((s) => s.name);
  }

  // Resolves with the raw FileDescriptorProto buffers of the answer.
  async fileContainingSymbol(symbol) {
    return fileBuffers(await this.request({ fileContainingSymbol: symbol }));
  }

  async fileByFilename(filename) {
    return fileBuffers(await this.request({ fileByFilename: filename }));
  }

  close() {
    if (!this.ended && !this.error) {
      try {
        this.call.end();
      } catch (_) {
        // already gone
      }
    }
    this.client.close();
  }
}

function reflectionError(er) {
  const e = new Error(`reflection error_response ${er.errorCode}: ${er.errorMessage}`);
  e.code = er.errorCode;
  e.details = er.errorMessage;
  return e;
}

function fileBuffers(res) {
  if (res.errorResponse) throw reflectionError(res.errorResponse);
  if (!res.fileDescriptorResponse) throw new Error(`expected file_descriptor_response, got ${JSON.stringify(res)}`);
  return res.fileDescriptorResponse.fileDescriptorProto || [];
}

function decodeFile(buf) {
  return descriptor.FileDescriptorProto.decode(buf);
}

// What grpcurl does before `grpcurl list` / `describe` / a call: every
// service's file, then the transitive closure of their dependencies.
// Returns { services, files: Map(name -> {raw, proto}), order: [names
// dependencies first], setBuffer: FileDescriptorSet bytes }. metadata (a
// grpc.Metadata) goes with the stream, as grpcurl sends its -H headers.
async function fetchSchema(address, version = 'v1', credentials = undefined, metadata = undefined) {
  const rs = new ReflectionStream(address, version, { credentials, metadata });
  try {
    const services = await rs.listServices();
    const files = new Map();
    const add = (bufs) => {
      for (const raw of bufs) {
        const proto = decodeFile(raw);
        if (!proto.name) throw new Error('reflection served a FileDescriptorProto without a name');
        if (!files.has(proto.name)) files.set(proto.name, { raw: Buffer.from(raw), proto });
      }
    };
    for (const svc of services) {
      const bufs = await rs.fileContainingSymbol(svc);
      if (bufs.length === 0) throw new Error(`file_containing_symbol(${svc}) returned no file`);
      add(bufs);
    }
    // Follow dependency names with file_by_filename for any missing file.
    for (;;) {
      const missing = new Set();
      for (const { proto } of files.values()) {
        for (const dep of proto.dependency || []) if (!files.has(dep)) missing.add(dep);
      }
      if (missing.size === 0) break;
      for (const dep of missing) {
        let bufs;
        try {
          bufs = await rs.fileByFilename(dep);
        } catch (e) {
          throw new Error(`file_by_filename(${dep}): ${e.message}`);
        }
        add(bufs);
        if (!files.has(dep)) throw new Error(`file_by_filename(${dep}) did not return ${dep}`);
      }
    }
    const order = topoOrder(files);
    const w = protobuf.Writer.create();
    for (const name of order) w.uint32((1 << 3) | 2).bytes(files.get(name).raw); // FileDescriptorSet.file = 1
    return { services, files, order, setBuffer: Buffer.from(w.finish()) };
  } finally {
    rs.close();
  }
}

// Dependencies before dependants, as protoc --include_imports writes them.
function topoOrder(files) {
  const order = [];
  const state = new Map();
  const visit = (name, stack) => {
    if (state.get(name) === 'done') return;
    if (state.get(name) === 'visiting') throw new Error(`import cycle: ${[...stack, name].join(' -> ')}`);
    state.set(name, 'visiting');
    for (const dep of files.get(name).proto.dependency || []) visit(dep, [...stack, name]);
    state.set(name, 'done');
    order.push(name);
  };
  for (const name of [...files.keys()].sort()) visit(name, []);
  return order;
}

// protoc's ToJsonName: drop each '_' and upper-case the letter after it.
function toJsonName(name) {
  let out = '';
  let upper = false;
  for (const ch of name) {
    if (ch === '_') upper = true;
    else if (upper) {
      out += ch.toUpperCase();
      upper = false;
    } else out += ch;
  }
  return out;
}

// The same FileDescriptorSet with every field named by its json_name.
function withJsonFieldNames(setBuffer) {
  const set = descriptor.FileDescriptorSet.decode(setBuffer);
  const renameMessage = (m) => {
    for (const f of m.field || []) f.name = f.jsonName || toJsonName(f.name);
    for (const f of m.extension || []) f.name = f.jsonName || toJsonName(f.name);
    for (const n of m.nestedType || []) renameMessage(n);
  };
  for (const file of set.file) for (const m of file.messageType || []) renameMessage(m);
  return Buffer.from(descriptor.FileDescriptorSet.encode(set).finish());
}

// protobufjs JSON of the served schema with map-entry fields as map fields.
function schemaJson(setBuffer) {
  const set = descriptor.FileDescriptorSet.decode(setBuffer);
  // Map entries as the descriptors declare them (options.map_entry on the
  // nested XxxEntry type; protobufjs's Root.fromDescriptor does not carry
  // that option over to the entry type).
  const mapEntries = new Set();
  const collectEntries = (prefix, m) => {
    const full = `${prefix}.${m.name}`;
    if (m.options && m.options.mapEntry) mapEntries.add(full);
    for (const n of m.nestedType || []) collectEntries(full, n);
  };
  for (const file of set.file) {
    for (const m of file.messageType || []) collectEntries(file.package ? `.${file.package}` : '', m);
  }
  const root = protobuf.Root.fromDescriptor(set);
  root.resolveAll();
  const types = [];
  const collect = (ns) => {
    for (const child of ns.nestedArray) {
      if (child instanceof protobuf.Type) types.push(child);
      if (child.nestedArray) collect(child);
    }
  };
  collect(root);
  for (const type of types) {
    for (const field of [...type.fieldsArray]) {
      const entry = field.resolvedType;
      if (!field.repeated || !(entry instanceof protobuf.Type)) continue;
      if (!mapEntries.has(entry.fullName)) continue;
      const key = entry.fields.key || entry.fieldsArray.find((f) => f.id === 1);
      const value = entry.fields.value || entry.fieldsArray.find((f) => f.id === 2);
      const valueType = value.resolvedType ? value.resolvedType.fullName : value.type;
      type.remove(field);
      type.add(new protobuf.MapField(field.name, field.id, key.type, valueType));
    }
  }
  return root.toJSON();
}

const LOADER_OPTIONS = {
  keepCase: false,
  longs: String,
  enums: String,
  bytes: Buffer,
  defaults: true,
  oneofs: true,
};

const DEFAULT_DEADLINE_MS = 15000;

// Promisified unary calls for one service: fn(request, {deadlineMs,
// metadata}) resolves with the response or rejects with the grpc error
// (err.code is a grpc.status value, err.details the server's message).
function promisify(client, serviceDef) {
  const api = {};
  for (const [methodName, def] of Object.entries(serviceDef)) {
    if (def.requestStream || def.responseStream) continue;
    api[methodName] = (request = {}, { deadlineMs = DEFAULT_DEADLINE_MS, metadata } = {}) =>
      new Promise((resolve, reject) => {
        client.makeUnaryRequest(
          def.path,
          def.requestSerialize,
          def.responseDeserialize,
          request,
          metadata || new grpc.Metadata(),
          { deadline: Date.now() + deadlineMs },
          (err, res) => (err ? reject(err) : resolve(res)),
        );
      });
  }
  return api;
}

// Connects to a server: loads the schema through reflection (v1 by
// default), and returns clients for every service served.
//   conn.api.CertificateService.CreateCertificate(req) -> Promise
//   conn.api['grpc.health.v1.Health'].Check({})         -> Promise
//   conn.clients[fullServiceName] -> the grpc-js client
//   conn.root: the protobufjs Root of the served schema (for describe)
// Channel credentials for { tls: { ca, cert, key } } (PEM strings or
// Buffers), or plaintext.
function channelCredentials(tls) {
  if (!tls) return grpc.credentials.createInsecure();
  const buf = (x) => (x === undefined || x === null ? null : Buffer.from(x));
  return grpc.credentials.createSsl(buf(tls.ca), buf(tls.key), buf(tls.cert));
}

// An interceptor adding "authorization: Bearer <token>" to every call.
function bearerInterceptor(token) {
  return (options, nextCall) => new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      if (!metadata.get('authorization').length) metadata.set('authorization', `Bearer ${token}`);
      next(metadata, listener);
    },
  });
}

async function connect(address, { version = 'v1', fieldNames = 'json', token, tls } = {}) {
  const creds = channelCredentials(tls);
  const schema = await fetchSchema(address, version, creds);
  const loaderSet = fieldNames === 'json' ? withJsonFieldNames(schema.setBuffer) : schema.setBuffer;
  const packageDefinition = protoLoader.fromJSON(schemaJson(loaderSet), LOADER_OPTIONS);
  const loaded = grpc.loadPackageDefinition(packageDefinition);
  const channel = new grpc.Channel(address, creds, {});
  const interceptors = token ? [bearerInterceptor(token)] : [];
  const clients = {};
  const api = {};
  for (const [fullName, def] of Object.entries(packageDefinition)) {
    if (def.format || !isServiceDefinition(def)) continue;
    const Ctor = fullName.split('.').reduce((o, k) => o && o[k], loaded);
    const client = new Ctor(address, creds, { channelOverride: channel, interceptors });
    clients[fullName] = client;
    const p = promisify(client, def);
    api[fullName] = p;
    if (fullName.startsWith('tlsplane.v1.')) api[fullName.slice('tlsplane.v1.'.length)] = p;
  }
  const root = protobuf.Root.fromDescriptor(descriptor.FileDescriptorSet.decode(schema.setBuffer));
  return {
    address,
    token,
    credentials: creds,
    schema,
    packageDefinition,
    root,
    clients,
    api,
    close() {
      for (const c of Object.values(clients)) c.close();
      channel.close();
    },
  };
}

function isServiceDefinition(def) {
  const methods = Object.values(def);
  return methods.length > 0 && methods.every((m) => m && typeof m.path === 'string' && m.path.startsWith('/'));
}

module.exports = {
  connect,
  channelCredentials,
  bearerInterceptor,
  fetchSchema,
  ReflectionStream,
  decodeFile,
  descriptor,
  LOADER_OPTIONS,
  toJsonName,
  withJsonFieldNames,
  schemaJson,
  grpc,
};
