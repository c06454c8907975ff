#!/usr/bin/env node
'use strict';
// A grpcurl command line on @grpc/grpc-js, for the tests that run the
// README's commands as a user types them (readme.test.js puts it on PATH
// as `grpcurl`; grpcurl is not packaged in Debian). Like grpcurl it knows
// nothing but what the server serves through reflection (lib/reflect.js's
// fetchSchema), and it follows grpcurl 1.9.1 where a user can see it:
//
//   grpcurl [flags] HOST:PORT list [SERVICE]
//   grpcurl [flags] HOST:PORT describe [SYMBOL]
//   grpcurl [flags] HOST:PORT pkg.Service/Method   (or pkg.Service.Method)
//
// Flags: -cacert FILE, -cert FILE -key FILE, -plaintext, -H 'name: value'
// (repeatable; sent with the reflection stream and the call), -d JSON or
// -d @ (stdin: a stream of JSON objects; a unary call takes one),
// -emit-defaults, -allow-unknown-fields, -max-time SECONDS. Go's flag
// syntax: -flag value, -flag=value, --flag; flags end at the first
// argument that is not one.
//
// Requests are read as grpcurl reads them (its JSON parser is
// github.com/jhump/protoreflect's dynamic message): fields by JSON name or
// proto name, unknown fields refused ("message type X has no known field
// named y"), numbers as numbers or strings, enums by name or number, a
// singular value for a repeated field taken as a list of one.
// Timestamp, Duration, the wrappers and Empty have their JSON mapping;
// google.protobuf.FieldMask does not: it is parsed as the message it is
// ({"paths": [...]}), so its string form ("updateMask": "labels") fails
// with "bad input: expecting start of JSON object: '{' ; instead got
// labels", as it does with grpcurl 1.9.1.
//
// Responses are printed as grpcurl prints them: jsonpb JSON indented by
// two spaces, lowerCamelCase names, fields in number order, default
// values left out (-emit-defaults to show them), int64 as strings, enums
// by name, bytes in base64, Timestamps in RFC 3339 and Durations as
// "1.500s", map keys sorted, and <, >, & escaped as Go's encoder does.
//
// Exit status: 0; 64 + the gRPC code when the call fails, after
// "ERROR:\n  Code: NotFound\n  Message: ..." on stderr; 1 for any other
// failure (the request data, the connection, an unknown symbol); 2 for a
// wrong command line.

// grpc-js names the server by its IP address in the TLS ServerName when the
// target is one, and Node warns about it on stderr, which grpcurl does not.
process.noDeprecation = true;

const fs = require('node:fs');
const path = require('node:path');
const protobuf = require('protobufjs');
const { fetchSchema, channelCredentials, toJsonName, grpc, descriptor } = require('./reflect');

const STATUS_OFFSET = 64;
const CODE_NAMES = [
  'OK', 'Canceled', 'Unknown', 'InvalidArgument', 'DeadlineExceeded', 'NotFound', 'AlreadyExists',
  'PermissionDenied', 'ResourceExhausted', 'FailedPrecondition', 'Aborted', 'OutOfRange',
  'Unimplemented', 'Internal', 'Unavailable', 'DataLoss', 'Unauthenticated',
];

class Exit extends Error {
  constructor(code, message) {
    super(message);
    this.exitCode = code;
  }
}

function fail(message) {
  throw new Exit(1, message);
}

function usageError(message) {
  throw new Exit(2, `${message}\nTry '${path.basename(process.argv[1] || 'grpcurl')} -help' for more details.`);
}

// ---------------------------------------------------------------------------
// The command line (Go's flag package).

const BOOL_FLAGS = new Set(['plaintext', 'emit-defaults', 'allow-unknown-fields', 'insecure', 'help']);
const VALUE_FLAGS = new Set(['cacert', 'cert', 'key', 'H', 'd', 'max-time', 'connect-timeout', 'authority']);

function parseArgs(argv) {
  const opts = { headers: [], data: null };
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      i++;
      break;
    }
    if (!a.startsWith('-') || a === '-') break;
    let name = a.replace(/^--?/, '');
    let value = null;
    const eq = name.indexOf('=');
    if (eq >= 0) {
      value = name.slice(eq + 1);
      name = name.slice(0, eq);
    }
    if (BOOL_FLAGS.has(name)) {
      opts[name] = value === null ? true : /^(1|t|true)$/i.test(value);
      continue;
    }
    if (!VALUE_FLAGS.has(name)) usageError(`flag provided but not defined: -${name}`);
    if (value === null) {
      if (i + 1 >= argv.length) usageError(`flag needs an argument: -${name}`);
      value = argv[++i];
    }
    if (name === 'H') opts.headers.push(value);
    else if (name === 'd') opts.data = value;
    else opts[name] = value;
  }
  opts.args = argv.slice(i);
  return opts;
}

function metadataFrom(headers) {
  const md = new grpc.Metadata();
  for (const h of headers) {
    const colon = h.indexOf(':');
    const name = (colon < 0 ? h : h.slice(0, colon)).trim().toLowerCase();
    const value = colon < 0 ? '' : h.slice(colon + 1).trim();
    md.add(name, value);
  }
  return md;
}

// ---------------------------------------------------------------------------
// The served descriptors, decoded with descriptor.proto's own types
// (json_name and source_code_info included).

const FileType = descriptor.FileDescriptorProto;

const T = {
  DOUBLE: 1, FLOAT: 2, INT64: 3, UINT64: 4, INT32: 5, FIXED64: 6, FIXED32: 7, BOOL: 8, STRING: 9,
  GROUP: 10, MESSAGE: 11, BYTES: 12, UINT32: 13, ENUM: 14, SFIXED32: 15, SFIXED64: 16, SINT32: 17, SINT64: 18,
};
const TYPE_NAMES = Object.fromEntries(Object.entries(T).map(([k, v]) => [v, k.toLowerCase()]));
const LABEL_REPEATED = 3;

// The schema: messages, enums and services by full name (no leading dot).
function buildSchema(files) {
  const messages = new Map();
  const enums = new Map();
  const services = new Map();
  for (const { raw } of files.values()) {
    const f = FileType.toObject(FileType.decode(raw), { defaults: false });
    const comments = new Map();
    for (const loc of (f.sourceCodeInfo && f.sourceCodeInfo.location) || []) {
      if (loc.leadingComments) comments.set((loc.path || []).join('.'), loc.leadingComments);
    }
    const pkg = f.package ? `${f.package}.` : '';
    const addEnum = (e, prefix, where) => {
      const values = (e.value || []).map((v) => ({ name: v.name, number: v.number || 0 }));
      enums.set(prefix + e.name, {
        kind: 'enum', name: e.name, fullName: prefix + e.name, values, comment: comments.get(where),
        byName: new Map(values.map((v) => [v.name, v])), byNumber: new Map(values.map((v) => [v.number, v])),
      });
    };
    const addMessage = (m, prefix, where) => {
      const fullName = prefix + m.name;
      const oneofs = (m.oneofDecl || []).map((o) => o.name);
      const fields = (m.field || []).map((fd, i) => ({
        name: fd.name,
        jsonName: fd.jsonName || toJsonName(fd.name),
        number: fd.number,
        repeated: fd.label === LABEL_REPEATED,
        type: fd.type,
        typeName: (fd.typeName || '').replace(/^\./, ''),
        oneof: fd.oneofIndex !== undefined && !fd.proto3Optional ? oneofs[fd.oneofIndex] : null,
        oneofIndex: fd.oneofIndex,
        presence: fd.proto3Optional || fd.oneofIndex !== undefined,
        comment: comments.get(`${where}.2.${i}`),
      }));
      const msg = {
        kind: 'message', name: m.name, fullName, fields, oneofs, comment: comments.get(where),
        mapEntry: !!(m.options && m.options.mapEntry), nested: [], nestedEnums: [],
        syntax: f.syntax || 'proto2',
      };
      msg.byNumber = new Map(fields.map((x) => [x.number, x]));
      messages.set(fullName, msg);
      (m.nestedType || []).forEach((n, i) => {
        msg.nested.push(`${fullName}.${n.name}`);
        addMessage(n, `${fullName}.`, `${where}.3.${i}`);
      });
      (m.enumType || []).forEach((e, i) => {
        msg.nestedEnums.push(`${fullName}.${e.name}`);
        addEnum(e, `${fullName}.`, `${where}.4.${i}`);
      });
    };
    (f.messageType || []).forEach((m, i) => addMessage(m, pkg, `4.${i}`));
    (f.enumType || []).forEach((e, i) => addEnum(e, pkg, `5.${i}`));
    (f.service || []).forEach((s, i) => {
      const fullName = pkg + s.name;
      services.set(fullName, {
        kind: 'service', name: s.name, fullName, comment: comments.get(`6.${i}`),
        methods: (s.method || []).map((m, j) => ({
          kind: 'method', name: m.name, fullName: `${fullName}.${m.name}`,
          inputType: (m.inputType || '').replace(/^\./, ''), outputType: (m.outputType || '').replace(/^\./, ''),
          clientStreaming: !!m.clientStreaming, serverStreaming: !!m.serverStreaming,
          comment: comments.get(`6.${i}.2.${j}`),
        })),
      });
    });
  }
  for (const m of messages.values()) {
    m.isMap = (fd) => fd.type === T.MESSAGE && fd.repeated && messages.get(fd.typeName) && messages.get(fd.typeName).mapEntry;
  }
  return { messages, enums, services };
}

// ---------------------------------------------------------------------------
// JSON in: what jhump/protoreflect's dynamic message accepts.

// How Go's %v shows a json.Token.
function tokenText(v) {
  if (v === null) return '<nil>';
  if (Array.isArray(v)) return '[';
  if (typeof v === 'object') return '{';
  return String(v);
}

function badInput(expected, v) {
  return new Error(`bad input: expecting ${expected} ; instead got ${tokenText(v)}`);
}

const WRAPPERS = {
  'google.protobuf.DoubleValue': T.DOUBLE, 'google.protobuf.FloatValue': T.FLOAT,
  'google.protobuf.Int64Value': T.INT64, 'google.protobuf.UInt64Value': T.UINT64,
  'google.protobuf.Int32Value': T.INT32, 'google.protobuf.UInt32Value': T.UINT32,
  'google.protobuf.BoolValue': T.BOOL, 'google.protobuf.StringValue': T.STRING,
  'google.protobuf.BytesValue': T.BYTES,
};
// The types with a JSON mapping of their own in jhump/protoreflect's
// wellKnownTypeNames (google.protobuf.FieldMask is not one of them).
const SPECIAL = new Set([
  'google.protobuf.Any', 'google.protobuf.Empty', 'google.protobuf.Duration', 'google.protobuf.Timestamp',
  'google.protobuf.Struct', 'google.protobuf.Value', 'google.protobuf.ListValue', ...Object.keys(WRAPPERS),
]);

const Long = protobuf.util.Long;

function numberText(v, what) {
  if (v === null) return '0';
  if (typeof v === 'number') return String(v);
  if (typeof v === 'string') return v;
  throw badInput(what || 'number', v);
}

function parseInteger(v, { unsigned, bits }) {
  const s = numberText(v).trim();
  if (!/^-?\d+$/.test(s)) throw new Error(`strconv.Parse${unsigned ? 'Uint' : 'Int'}: parsing ${JSON.stringify(s)}: invalid syntax`);
  const big = BigInt(s);
  const min = unsigned ? 0n : -(2n ** BigInt(bits - 1));
  const max = unsigned ? 2n ** BigInt(bits) - 1n : 2n ** BigInt(bits - 1) - 1n;
  if (big < min || big > max) throw new Error('numeric value is out of range');
  return bits === 64 ? Long.fromString(s, unsigned) : Number(big);
}

function parseScalar(schema, fd, type, v) {
  switch (type) {
    case T.INT32: case T.SINT32: case T.SFIXED32:
      return parseInteger(v, { unsigned: false, bits: 32 });
    case T.UINT32: case T.FIXED32:
      return parseInteger(v, { unsigned: true, bits: 32 });
    case T.INT64: case T.SINT64: case T.SFIXED64:
      return parseInteger(v, { unsigned: false, bits: 64 });
    case T.UINT64: case T.FIXED64:
      return parseInteger(v, { unsigned: true, bits: 64 });
    case T.FLOAT: case T.DOUBLE: {
      const s = numberText(v);
      if (s === 'NaN') return NaN;
      if (s === 'Infinity') return Infinity;
      if (s === '-Infinity') return -Infinity;
      const n = Number(s);
      if (s.trim() === '' || Number.isNaN(n)) throw new Error(`strconv.ParseFloat: parsing ${JSON.stringify(s)}: invalid syntax`);
      return n;
    }
    case T.BOOL:
      if (v === 'true' || v === true) return true;
      if (v === 'false' || v === false || v === null) return false;
      throw badInput('boolean', v);
    case T.STRING:
      if (v === null) return '';
      if (typeof v !== 'string') throw badInput('string', v);
      return v;
    case T.BYTES:
      if (v === null) return Buffer.alloc(0);
      if (typeof v !== 'string') throw badInput('string', v);
      if (!/^[A-Za-z0-9+/]*={0,2}$/.test(v) || v.length % 4 !== 0) throw new Error('illegal base64 data at input byte 0');
      return Buffer.from(v, 'base64');
    case T.ENUM: {
      const e = schema.enums.get(fd.typeName);
      const s = numberText(v);
      if (/^-?\d+$/.test(s)) return parseInteger(s, { unsigned: false, bits: 32 });
      const ev = e && e.byName.get(s);
      if (!ev) throw new Error(`enum ${JSON.stringify(fd.typeName)} does not have value named ${JSON.stringify(s)}`);
      return ev.number;
    }
    default:
      throw new Error(`unknown field type: ${type}`);
  }
}

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/;

function parseSpecial(schema, name, v, opts) {
  const fields = new Map();
  if (WRAPPERS[name]) {
    fields.set(1, parseScalar(schema, null, WRAPPERS[name], v));
    return fields;
  }
  switch (name) {
    case 'google.protobuf.Timestamp': {
      const m = typeof v === 'string' && RFC3339.exec(v);
      if (!m) throw new Error(`bad Timestamp: parsing time ${JSON.stringify(tokenText(v))} as "2006-01-02T15:04:05.999999999Z07:00": cannot parse`);
      let secs = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]) / 1000;
      if (!m[8]) secs -= (m[9] === '-' ? -1 : 1) * (+m[10] * 3600 + +m[11] * 60);
      fields.set(1, Long.fromNumber(secs));
      const nanos = m[7] ? Number(m[7].padEnd(9, '0')) : 0;
      if (nanos) fields.set(2, nanos);
      return fields;
    }
    case 'google.protobuf.Duration': {
      const m = typeof v === 'string' && /^(-)?(\d+)(?:\.(\d{1,9}))?s$/.exec(v);
      if (!m) throw new Error(`bad Duration: time: invalid duration ${JSON.stringify(tokenText(v))}`);
      const sign = m[1] ? -1 : 1;
      const secs = Long.fromString(m[2]).multiply(sign);
      if (!secs.isZero()) fields.set(1, secs);
      const nanos = m[3] ? Number(m[3].padEnd(9, '0')) * sign : 0;
      if (nanos) fields.set(2, nanos);
      return fields;
    }
    case 'google.protobuf.Empty':
      if (v === null || (typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length === 0)) return fields;
      if (typeof v !== 'object' || Array.isArray(v)) throw badInput("start of JSON object: '{'", v);
      if (!opts.allowUnknown) throw new Error(`unknown field "${Object.keys(v)[0]}" in emptypb.Empty`);
      return fields;
    default:
      throw new Error(`${name} in a request is not supported by this client`);
  }
}

function findField(msg, key) {
  return msg.fields.find((f) => f.jsonName === key) || msg.fields.find((f) => f.name === key);
}

// JSON value -> Map(field number -> value | [values]) for message type name.
function parseMessage(schema, name, v, opts) {
  if (SPECIAL.has(name)) return parseSpecial(schema, name, v, opts);
  const msg = schema.messages.get(name);
  if (!msg) throw new Error(`unknown message type ${name}`);
  const out = new Map();
  if (v === null) return out;
  if (typeof v !== 'object' || Array.isArray(v)) throw badInput("start of JSON object: '{'", v);
  for (const [key, value] of Object.entries(v)) {
    const fd = findField(msg, key);
    if (!fd) {
      if (opts.allowUnknown) continue;
      throw new Error(`message type ${name} has no known field named ${key}`);
    }
    if (value === null && !(fd.type === T.MESSAGE && fd.typeName === 'google.protobuf.Value')) {
      if (fd.oneof && fd.type !== T.MESSAGE) throw new Error(`message type ${name} cannot set field ${key} to null: it is not a message type`);
      if (fd.oneof) out.set(fd.number, new Map());
      else out.delete(fd.number);
      continue;
    }
    const element = (x, allowNil) => {
      if (fd.type === T.MESSAGE || fd.type === T.GROUP) {
        if (x === null && allowNil) return new Map();
        return parseMessage(schema, fd.typeName, x, opts);
      }
      return parseScalar(schema, fd, fd.type, x);
    };
    if (msg.isMap(fd) && typeof value === 'object' && !Array.isArray(value)) {
      const entry = schema.messages.get(fd.typeName);
      const kf = entry.byNumber.get(1);
      const vf = entry.byNumber.get(2);
      const entries = [];
      for (const [k, x] of Object.entries(value)) {
        const e = new Map();
        e.set(1, parseScalar(schema, kf, kf.type, k));
        e.set(2, vf.type === T.MESSAGE ? (x === null ? new Map() : parseMessage(schema, vf.typeName, x, opts)) : parseScalar(schema, vf, vf.type, x));
        entries.push(e);
      }
      out.set(fd.number, entries);
    } else if (Array.isArray(value) && fd.typeName !== 'google.protobuf.ListValue' && fd.typeName !== 'google.protobuf.Value') {
      const list = value.map((x) => element(x, false));
      if (fd.repeated) out.set(fd.number, list);
      else if (list.length) out.set(fd.number, list[list.length - 1]);
    } else {
      const x = element(value, false);
      out.set(fd.number, fd.repeated ? [x] : x);
    }
  }
  return out;
}

// The JSON values of a stream, as Go's json.Decoder reads them one by one.
function jsonValues(text) {
  const values = [];
  let i = 0;
  const n = text.length;
  const ws = (c) => c === ' ' || c === '\t' || c === '\n' || c === '\r';
  for (;;) {
    while (i < n && ws(text[i])) i++;
    if (i >= n) break;
    const start = i;
    const c = text[i];
    if (c === '{' || c === '[') {
      let depth = 0;
      let inString = false;
      for (; i < n; i++) {
        const ch = text[i];
        if (inString) {
          if (ch === '\\') i++;
          else if (ch === '"') inString = false;
        } else if (ch === '"') inString = true;
        else if (ch === '{' || ch === '[') depth++;
        else if (ch === '}' || ch === ']') {
          depth--;
          if (depth === 0) {
            i++;
            break;
          }
        }
      }
      if (depth !== 0) throw new Error('unexpected EOF');
    } else if (c === '"') {
      for (i++; i < n && text[i] !== '"'; i++) if (text[i] === '\\') i++;
      if (i >= n) throw new Error('unexpected EOF');
      i++;
    } else {
      while (i < n && !ws(text[i]) && !'{["'.includes(text[i])) i++;
    }
    const chunk = text.slice(start, i);
    try {
      values.push(JSON.parse(chunk));
    } catch (e) {
      throw new Error(`invalid character in ${JSON.stringify(chunk.slice(0, 40))}: ${e.message}`);
    }
  }
  return values;
}

// ---------------------------------------------------------------------------
// The wire format.

function wireType(type) {
  switch (type) {
    case T.DOUBLE: case T.FIXED64: case T.SFIXED64: return 1;
    case T.FLOAT: case T.FIXED32: case T.SFIXED32: return 5;
    case T.STRING: case T.BYTES: case T.MESSAGE: return 2;
    default: return 0;
  }
}

function writeScalar(w, type, v) {
  switch (type) {
    case T.DOUBLE: return w.double(v);
    case T.FLOAT: return w.float(v);
    case T.INT64: return w.int64(v);
    case T.UINT64: return w.uint64(v);
    case T.INT32: return w.int32(v);
    case T.FIXED64: return w.fixed64(v);
    case T.FIXED32: return w.fixed32(v);
    case T.BOOL: return w.bool(v);
    case T.STRING: return w.string(v);
    case T.BYTES: return w.bytes(v);
    case T.UINT32: return w.uint32(v);
    case T.ENUM: return w.int32(v);
    case T.SFIXED32: return w.sfixed32(v);
    case T.SFIXED64: return w.sfixed64(v);
    case T.SINT32: return w.sint32(v);
    case T.SINT64: return w.sint64(v);
    default: throw new Error(`cannot write field type ${type}`);
  }
}

function messageFields(schema, name) {
  if (WRAPPERS[name]) return [{ number: 1, type: WRAPPERS[name], repeated: false }];
  if (name === 'google.protobuf.Timestamp' || name === 'google.protobuf.Duration') {
    return [{ number: 1, type: T.INT64, repeated: false }, { number: 2, type: T.INT32, repeated: false }];
  }
  if (name === 'google.protobuf.Empty') return [];
  const msg = schema.messages.get(name);
  if (!msg) throw new Error(`unknown message type ${name}`);
  return msg.fields;
}

function encodeMessage(schema, name, values, w = protobuf.Writer.create()) {
  const fields = messageFields(schema, name);
  for (const fd of [...fields].sort((a, b) => a.number - b.number)) {
    if (!values.has(fd.number)) continue;
    const v = values.get(fd.number);
    for (const x of fd.repeated ? v : [v]) {
      if (fd.type === T.MESSAGE) {
        w.uint32((fd.number << 3) | 2).fork();
        encodeMessage(schema, fd.typeName, x, w);
        w.ldelim();
      } else {
        w.uint32((fd.number << 3) | wireType(fd.type));
        writeScalar(w, fd.type, x);
      }
    }
  }
  return w;
}

function readScalar(r, type) {
  switch (type) {
    case T.DOUBLE: return r.double();
    case T.FLOAT: return r.float();
    case T.INT64: return r.int64();
    case T.UINT64: return r.uint64();
    case T.INT32: return r.int32();
    case T.FIXED64: return r.fixed64();
    case T.FIXED32: return r.fixed32();
    case T.BOOL: return r.bool();
    case T.STRING: return r.string();
    case T.BYTES: return Buffer.from(r.bytes());
    case T.UINT32: return r.uint32();
    case T.ENUM: return r.int32();
    case T.SFIXED32: return r.sfixed32();
    case T.SFIXED64: return r.sfixed64();
    case T.SINT32: return r.sint32();
    case T.SINT64: return r.sint64();
    default: throw new Error(`cannot read field type ${type}`);
  }
}

// Bytes -> Map(field number -> value | [values]); unknown fields skipped.
function decodeMessage(schema, name, buf) {
  const fields = new Map(messageFields(schema, name).map((f) => [f.number, f]));
  const out = new Map();
  const r = protobuf.Reader.create(buf);
  while (r.pos < r.len) {
    const tag = r.uint32();
    const number = tag >>> 3;
    const wt = tag & 7;
    const fd = fields.get(number);
    if (!fd) {
      r.skipType(wt);
      continue;
    }
    const put = (v) => {
      if (fd.repeated) {
        if (!out.has(number)) out.set(number, []);
        out.get(number).push(v);
      } else out.set(number, v);
    };
    if (fd.type === T.MESSAGE) {
      put(decodeMessage(schema, fd.typeName, r.bytes()));
    } else if (wt === 2 && wireType(fd.type) !== 2) {
      const end = r.uint32() + r.pos;
      while (r.pos < end) put(readScalar(r, fd.type));
    } else {
      put(readScalar(r, fd.type));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// JSON out: jsonpb's output for jhump/protoreflect's dynamic messages.

function longText(v) {
  return typeof v === 'number' ? String(v) : v.toString();
}

function isDefault(type, v) {
  switch (type) {
    case T.STRING: return v === '';
    case T.BYTES: return v.length === 0;
    case T.BOOL: return v === false;
    case T.INT64: case T.UINT64: case T.FIXED64: case T.SFIXED64: case T.SINT64:
      return typeof v === 'number' ? v === 0 : v.isZero();
    default: return v === 0 && !Object.is(v, -0);
  }
}

function defaultValue(type) {
  switch (type) {
    case T.STRING: return '';
    case T.BYTES: return Buffer.alloc(0);
    case T.BOOL: return false;
    default: return 0;
  }
}

function scalarJson(schema, fd, type, v) {
  switch (type) {
    case T.INT64: case T.UINT64: case T.FIXED64: case T.SFIXED64: case T.SINT64:
      return longText(v);
    case T.FLOAT: case T.DOUBLE:
      if (Number.isNaN(v)) return 'NaN';
      if (v === Infinity) return 'Infinity';
      if (v === -Infinity) return '-Infinity';
      return type === T.FLOAT ? Number(Math.fround(v).toPrecision(7)) : v;
    case T.BYTES:
      return Buffer.from(v).toString('base64');
    case T.ENUM: {
      const e = fd && schema.enums.get(fd.typeName);
      const ev = e && e.byNumber.get(v);
      return ev ? ev.name : v;
    }
    default:
      return v;
  }
}

// jsonpb's fractional seconds: 0, 3, 6 or 9 digits.
function fraction(nanos) {
  let s = String(Math.abs(nanos)).padStart(9, '0');
  while (s.endsWith('000')) s = s.slice(0, -3);
  return s ? `.${s}` : '';
}

function specialJson(schema, name, values, opts) {
  if (WRAPPERS[name]) {
    const t = WRAPPERS[name];
    return scalarJson(schema, null, t, values.has(1) ? values.get(1) : defaultValue(t));
  }
  const secs = values.has(1) ? values.get(1) : 0;
  const nanos = values.has(2) ? values.get(2) : 0;
  switch (name) {
    case 'google.protobuf.Timestamp': {
      const ms = Number(longText(secs)) * 1000;
      const d = new Date(ms);
      if (Number.isNaN(d.getTime())) throw new Error(`timestamp: seconds:${longText(secs)} before 0001-01-01`);
      return `${d.toISOString().slice(0, 19)}${fraction(nanos)}Z`;
    }
    case 'google.protobuf.Duration': {
      const s = longText(secs);
      const neg = s.startsWith('-') || nanos < 0;
      return `${neg && !s.startsWith('-') ? '-' : ''}${s}${fraction(nanos)}s`;
    }
    case 'google.protobuf.Empty':
      return {};
    default:
      throw new Error(`${name} in a response is not supported by this client`);
  }
}

function messageJson(schema, name, values, opts) {
  if (SPECIAL.has(name)) return specialJson(schema, name, values, opts);
  const msg = schema.messages.get(name);
  const out = {};
  const proto3 = msg.syntax === 'proto3';
  for (const fd of [...msg.fields].sort((a, b) => a.number - b.number)) {
    const has = values.has(fd.number);
    let v = values.get(fd.number);
    if (msg.isMap(fd)) {
      if (!has && !opts.emitDefaults) continue;
      const entry = schema.messages.get(fd.typeName);
      const kf = entry.byNumber.get(1);
      const vf = entry.byNumber.get(2);
      const m = new Map();
      for (const e of v || []) {
        const k = e.has(1) ? e.get(1) : defaultValue(kf.type);
        const x = e.has(2) ? e.get(2) : (vf.type === T.MESSAGE ? new Map() : defaultValue(vf.type));
        m.set(typeof k === 'object' && k !== null && !Buffer.isBuffer(k) ? longText(k) : String(k), [k, x]);
      }
      const keys = [...m.keys()].sort((a, b) => (kf.type === T.STRING ? (a < b ? -1 : a > b ? 1 : 0) : Number(a) - Number(b)));
      const obj = {};
      for (const k of keys) {
        const x = m.get(k)[1];
        obj[k] = vf.type === T.MESSAGE ? messageJson(schema, vf.typeName, x, opts) : scalarJson(schema, vf, vf.type, x);
      }
      if (keys.length || opts.emitDefaults) out[fd.jsonName] = obj;
      continue;
    }
    if (fd.repeated) {
      if ((!has || v.length === 0) && !opts.emitDefaults) continue;
      out[fd.jsonName] = (v || []).map((x) => (fd.type === T.MESSAGE ? messageJson(schema, fd.typeName, x, opts) : scalarJson(schema, fd, fd.type, x)));
      continue;
    }
    if (fd.type === T.MESSAGE) {
      if (has) out[fd.jsonName] = messageJson(schema, fd.typeName, v, opts);
      else if (opts.emitDefaults && !fd.oneof) out[fd.jsonName] = null;
      continue;
    }
    if (has && proto3 && !fd.presence && isDefault(fd.type, v)) values.delete(fd.number);
    if (!values.has(fd.number)) {
      if (!opts.emitDefaults || fd.oneof) continue;
      v = defaultValue(fd.type);
    }
    out[fd.jsonName] = scalarJson(schema, fd, fd.type, v);
  }
  return out;
}

// Go's encoding/json escapes these in strings; elsewhere in JSON they
// cannot appear.
function goJson(obj) {
  return JSON.stringify(obj, null, 2)
    .replace(/</g, '\\u003c').replace(/>/g, '\\u003e').replace(/&/g, '\\u0026')
    .replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

// ---------------------------------------------------------------------------
// describe: protoprint's text, as grpcurl shows it (doc comments, fully
// qualified type names, elements sorted, no blank lines).

function commentLines(comment, indent) {
  if (!comment) return [];
  const lines = comment.replace(/\n$/, '').split('\n');
  return lines.map((l) => `${indent}//${l.replace(/\s+$/, '')}`);
}

function fieldTypeText(schema, fd) {
  if (fd.type === T.MESSAGE || fd.type === T.ENUM || fd.type === T.GROUP) return `.${fd.typeName}`;
  return TYPE_NAMES[fd.type];
}

function fieldText(schema, msg, fd, indent) {
  const lines = commentLines(fd.comment, indent);
  if (msg.isMap(fd)) {
    const entry = schema.messages.get(fd.typeName);
    const k = entry.byNumber.get(1);
    const v = entry.byNumber.get(2);
    lines.push(`${indent}map<${fieldTypeText(schema, k)}, ${fieldTypeText(schema, v)}> ${fd.name} = ${fd.number};`);
  } else {
    const label = fd.repeated ? 'repeated ' : (fd.presence && !fd.oneof) || msg.syntax !== 'proto3' && !fd.oneof ? 'optional ' : '';
    lines.push(`${indent}${label}${fieldTypeText(schema, fd)} ${fd.name} = ${fd.number};`);
  }
  return lines;
}

function enumText(e, indent) {
  const lines = [...commentLines(e.comment, indent), `${indent}enum ${e.name} {`];
  for (const v of e.values) lines.push(`${indent}  ${v.name} = ${v.number};`);
  lines.push(`${indent}}`);
  return lines;
}

function messageText(schema, msg, indent) {
  const lines = [...commentLines(msg.comment, indent), `${indent}message ${msg.name} {`];
  const inner = `${indent}  `;
  const doneOneofs = new Set();
  for (const fd of [...msg.fields].sort((a, b) => a.number - b.number)) {
    if (fd.oneof) {
      if (doneOneofs.has(fd.oneof)) continue;
      doneOneofs.add(fd.oneof);
      lines.push(`${inner}oneof ${fd.oneof} {`);
      for (const o of msg.fields.filter((x) => x.oneof === fd.oneof).sort((a, b) => a.number - b.number)) {
        lines.push(...fieldText(schema, msg, o, `${inner}  `));
      }
      lines.push(`${inner}}`);
    } else lines.push(...fieldText(schema, msg, fd, inner));
  }
  for (const n of [...msg.nested].sort()) {
    const m = schema.messages.get(n);
    if (!m.mapEntry) lines.push(...messageText(schema, m, inner));
  }
  for (const n of [...msg.nestedEnums].sort()) lines.push(...enumText(schema.enums.get(n), inner));
  lines.push(`${indent}}`);
  return lines;
}

function methodText(m, indent) {
  const s = (b) => (b ? 'stream ' : '');
  return [
    ...commentLines(m.comment, indent),
    `${indent}rpc ${m.name} ( ${s(m.clientStreaming)}.${m.inputType} ) returns ( ${s(m.serverStreaming)}.${m.outputType} );`,
  ];
}

function describe(schema, symbol) {
  const sym = symbol.replace(/^\./, '');
  const svc = schema.services.get(sym);
  if (svc) {
    const lines = [...commentLines(svc.comment, ''), `service ${svc.name} {`];
    for (const m of [...svc.methods].sort((a, b) => (a.name < b.name ? -1 : 1))) lines.push(...methodText(m, '  '));
    lines.push('}');
    return `${sym} is a service:\n${lines.join('\n')}`;
  }
  const msg = schema.messages.get(sym);
  if (msg) return `${sym} is a message:\n${messageText(schema, msg, '').join('\n')}`;
  const e = schema.enums.get(sym);
  if (e) return `${sym} is an enum:\n${enumText(e, '').join('\n')}`;
  const dot = sym.lastIndexOf('.');
  const parent = sym.slice(0, dot);
  const child = sym.slice(dot + 1);
  const ps = schema.services.get(parent);
  const method = ps && ps.methods.find((m) => m.name === child);
  if (method) return `${sym} is a method:\n${methodText(method, '').join('\n')}`;
  const pm = schema.messages.get(parent);
  const field = pm && pm.fields.find((f) => f.name === child);
  if (field) return `${sym} is a field:\n${fieldText(schema, pm, field, '').join('\n')}`;
  fail(`Failed to resolve symbol ${JSON.stringify(sym)}: Symbol not found: ${sym}`);
  return '';
}

// ---------------------------------------------------------------------------

function readFileOrFail(file, what) {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    return fail(`Failed to create TLS config: ${what} ${file}: ${e.message}`);
  }
}

async function main(argv) {
  const opts = parseArgs(argv);
  if (opts.help) {
    process.stdout.write('Usage:\n\tgrpcurl [flags] [address] [list|describe] [symbol]\n');
    return 0;
  }
  if (opts.plaintext && (opts.cert || opts.key)) usageError(`The -${opts.cert ? 'cert' : 'key'} argument can only be used with TLS.`);
  if (!opts.cert !== !opts.key) usageError('The -cert and -key arguments must be used together and both be present.');
  let args = opts.args;
  if (args.length === 0) usageError('Too few arguments.');
  let target = '';
  if (args[0] !== 'list' && args[0] !== 'describe') {
    target = args[0];
    args = args.slice(1);
  }
  if (args.length === 0) usageError('Too few arguments.');
  let verb = 'invoke';
  if (args[0] === 'list' || args[0] === 'describe') {
    verb = args[0];
    args = args.slice(1);
  }
  let symbol = '';
  if (verb === 'invoke') {
    symbol = args[0];
    args = args.slice(1);
  } else {
    if (opts.data !== null && opts.data !== '') process.stderr.write("Warning: The -d argument is not used with 'list' or 'describe' verb.\n");
    if (args.length) {
      symbol = args[0];
      args = args.slice(1);
    }
  }
  if (args.length) usageError('Too many arguments.');
  if (!target) usageError('No host:port specified.');

  const tls = opts.plaintext ? null : {
    ca: opts.cacert ? readFileOrFail(opts.cacert, 'CA file') : undefined,
    cert: opts.cert ? readFileOrFail(opts.cert, 'certificate') : undefined,
    key: opts.key ? readFileOrFail(opts.key, 'key') : undefined,
  };
  const creds = channelCredentials(tls);
  const metadata = metadataFrom(opts.headers);
  const deadlineMs = opts['max-time'] ? Number(opts['max-time']) * 1000 : 0;

  let schemaSet;
  try {
    schemaSet = await fetchSchema(target, 'v1', creds, metadata);
  } catch (e) {
    const what = verb === 'list' ? 'Failed to list services' : verb === 'describe' ? `Failed to resolve symbol ${JSON.stringify(symbol)}` : `Error invoking method ${JSON.stringify(symbol)}`;
    return fail(`${what}: ${e.details || e.message}`);
  }
  const schema = buildSchema(schemaSet.files);

  if (verb === 'list') {
    if (!symbol) {
      const svcs = [...schemaSet.services].sort();
      process.stdout.write(svcs.length ? `${svcs.join('\n')}\n` : '(No services)\n');
    } else {
      const svc = schema.services.get(symbol.replace(/^\./, ''));
      if (!svc) fail(`Failed to list methods for service ${JSON.stringify(symbol)}: Service not found: ${symbol}`);
      const methods = svc.methods.map((m) => m.fullName).sort();
      process.stdout.write(methods.length ? `${methods.join('\n')}\n` : '(No methods)\n');
    }
    return 0;
  }
  if (verb === 'describe') {
    const symbols = symbol ? [symbol] : [...schemaSet.services].sort();
    for (const s of symbols) process.stdout.write(`${describe(schema, s)}\n`);
    return 0;
  }

  // Invoke.
  const invokeFail = (msg) => fail(`Error invoking method ${JSON.stringify(symbol)}: ${msg}`);
  const sym = symbol.replace(/^\./, '');
  const cut = sym.lastIndexOf('/') >= 0 ? sym.lastIndexOf('/') : sym.lastIndexOf('.');
  const svcName = cut > 0 ? sym.slice(0, cut) : '';
  const mthName = cut > 0 ? sym.slice(cut + 1) : '';
  if (!svcName || !mthName) invokeFail(`given method name ${JSON.stringify(symbol)} is not in expected format: 'service/method' or 'service.method'`);
  const svc = schema.services.get(svcName);
  if (!svc) invokeFail(`target server does not expose service ${JSON.stringify(svcName)}`);
  const method = svc.methods.find((m) => m.name === mthName);
  if (!method) invokeFail(`service ${JSON.stringify(svcName)} does not include a method named ${JSON.stringify(mthName)}`);
  if (method.clientStreaming) invokeFail('client-streaming methods are not supported by this client');

  let text = '';
  if (opts.data === '@') text = fs.readFileSync(0, 'utf8');
  else if (opts.data !== null) text = opts.data;
  let requests;
  try {
    requests = jsonValues(text).map((v) => parseMessage(schema, method.inputType, v, { allowUnknown: !!opts['allow-unknown-fields'] }));
  } catch (e) {
    return invokeFail(`error getting request data: ${e.message}`);
  }
  if (requests.length > 1) invokeFail(`method ${JSON.stringify(method.fullName)} is a unary RPC, but request data contained more than 1 message`);
  const request = requests[0] || new Map();

  const client = new grpc.Client(target, creds);
  const serialize = (values) => Buffer.from(encodeMessage(schema, method.inputType, values).finish());
  const deserialize = (buf) => decodeMessage(schema, method.outputType, buf);
  const outOpts = { emitDefaults: !!opts['emit-defaults'] };
  const callOpts = deadlineMs ? { deadline: Date.now() + deadlineMs } : {};
  const path_ = `/${svc.fullName}/${method.name}`;
  const printResponse = (values) => process.stdout.write(`${goJson(messageJson(schema, method.outputType, values, outOpts))}\n`);
  const err = await new Promise((resolve) => {
    if (method.serverStreaming) {
      const call = client.makeServerStreamRequest(path_, serialize, deserialize, request, metadata, callOpts);
      call.on('data', printResponse);
      call.on('error', resolve);
      call.on('end', () => resolve(null));
    } else {
      client.makeUnaryRequest(path_, serialize, deserialize, request, metadata, callOpts, (e, res) => {
        if (!e) printResponse(res);
        resolve(e);
      });
    }
  });
  client.close();
  if (err) {
    const code = typeof err.code === 'number' ? err.code : 2;
    process.stderr.write(`ERROR:\n  Code: ${CODE_NAMES[code] || `Code(${code})`}\n  Message: ${err.details || err.message}\n`);
    return STATUS_OFFSET + code;
  }
  return 0;
}

module.exports = { main, parseArgs, jsonValues, buildSchema, parseMessage, messageJson, CODE_NAMES };

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      if (e instanceof Exit) {
        process.stderr.write(`${e.message}\n`);
        process.exitCode = e.exitCode;
      } else {
        process.stderr.write(`${e.stack || e}\n`);
        process.exitCode = 1;
      }
    },
  );
}
