'use strict';
// A cleartext upstream for tlsplane-agent's listeners, on 127.0.0.1 and an
// ephemeral port, that records what every connection brought.
//
//   const up = await Upstream.start({ mode: 'echo', proxy: true });
//   up.address                  // "127.0.0.1:PORT", a listener's upstream
//   const c = await up.nextConnection();
//   c.proxy                     // the parsed PROXY v2 header (see parseProxyV2)
//   await up.close();
//
// Modes:
//   'echo'  every byte is sent back; when the agent half-closes (the client
//           sent close_notify or FIN) the echo finishes and then ends too,
//           so a half-close is observable end to end.
//   'http'  an HTTP/1.1 server (node:http): GET /bytes/N answers N bytes
//           (a repeating pattern), POST /sha256 answers the SHA-256 of the
//           request body and its length, GET /hello answers "hello".
//   'hold'  reads and counts, never answers (connections that stay open).
//   'stall' never reads: what the agent sends fills the socket's buffers
//           (an upstream that stopped taking data).
//
// With proxy: true every connection must start with a PROXY protocol v2
// header; it is parsed (and removed) before the mode sees the stream. A
// connection without one is recorded with proxyError and closed.
//
// With path: '/dir/x.sock' it listens on that Unix-domain socket instead
// (up.address is then "unix:/dir/x.sock"). With tls: { cert, key } the
// stream after the PROXY header (if any) is TLS, served by node:tls, as
// HAProxy's `accept-proxy` + `ssl` bind expects it; rec.tls then holds
// what the handshake showed ({ servername, protocol, cipher }).

const crypto = require('node:crypto');
const http = require('node:http');
const net = require('node:net');
const { Duplex } = require('node:stream');
const tls = require('node:tls');

const PP2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

// TLV types of the PROXY protocol v2 specification (HAProxy's
// doc/proxy-protocol.txt, section 2.2).
const PP2 = {
  TYPE_ALPN: 0x01,
  TYPE_AUTHORITY: 0x02,
  TYPE_SSL: 0x20,
  SUBTYPE_SSL_VERSION: 0x21,
  SUBTYPE_SSL_CN: 0x22,
  SUBTYPE_SSL_CIPHER: 0x23,
  CLIENT_SSL: 0x01,
  CLIENT_CERT_CONN: 0x02,
  CLIENT_CERT_SESS: 0x04,
};

function parseTlvs(buf) {
  const out = [];
  for (let off = 0; off < buf.length;) {
    if (off + 3 > buf.length) throw new Error(`truncated TLV at ${off}`);
    const type = buf[off];
    const len = buf.readUInt16BE(off + 1);
    if (off + 3 + len > buf.length) throw new Error(`TLV 0x${type.toString(16)} overruns the header`);
    out.push({ type, value: buf.subarray(off + 3, off + 3 + len) });
    off += 3 + len;
  }
  return out;
}

function ipv4(buf) {
  return Array.from(buf).join('.');
}

function ipv6(buf) {
  const parts = [];
  for (let i = 0; i < 16; i += 2) parts.push(buf.readUInt16BE(i).toString(16));
  return parts.join(':');
}

// Parses a complete PROXY v2 header at the start of buf. Returns null when
// more bytes are needed, throws when it is not one. The result:
//   { length, command: 'PROXY'|'LOCAL', family: 'TCP4'|'TCP6'|'UNSPEC',
//     src: {address, port}, dst: {address, port},
//     alpn, authority,                       // strings or undefined
//     ssl: { client, verify, version, cn, cipher } or undefined,
//     tlvs: [{type, value}] }               // every top-level TLV, in order
function parseProxyV2(buf) {
  if (buf.length < 16) {
    if (!PP2_SIGNATURE.subarray(0, buf.length).equals(buf.subarray(0, Math.min(buf.length, 12)))) {
      throw new Error('not a PROXY v2 signature');
    }
    return null;
  }
  if (!buf.subarray(0, 12).equals(PP2_SIGNATURE)) throw new Error('not a PROXY v2 signature');
  const verCmd = buf[12];
  if ((verCmd & 0xf0) !== 0x20) throw new Error(`version ${verCmd >> 4}, expected 2`);
  const fam = buf[13];
  const len = buf.readUInt16BE(14);
  if (buf.length < 16 + len) return null;
  const body = buf.subarray(16, 16 + len);
  const h = {
    length: 16 + len,
    command: (verCmd & 0x0f) === 1 ? 'PROXY' : (verCmd & 0x0f) === 0 ? 'LOCAL' : `0x${(verCmd & 0x0f).toString(16)}`,
    family: fam === 0x11 ? 'TCP4' : fam === 0x21 ? 'TCP6' : fam === 0x00 ? 'UNSPEC' : `0x${fam.toString(16)}`,
    src: null,
    dst: null,
    tlvs: [],
  };
  let off = 0;
  if (fam === 0x11) {
    h.src = { address: ipv4(body.subarray(0, 4)), port: body.readUInt16BE(8) };
    h.dst = { address: ipv4(body.subarray(4, 8)), port: body.readUInt16BE(10) };
    off = 12;
  } else if (fam === 0x21) {
    h.src = { address: ipv6(body.subarray(0, 16)), port: body.readUInt16BE(32) };
    h.dst = { address: ipv6(body.subarray(16, 32)), port: body.readUInt16BE(34) };
    off = 36;
  }
  h.tlvs = parseTlvs(body.subarray(off));
  for (const t of h.tlvs) {
    if (t.type === PP2.TYPE_ALPN) h.alpn = t.value.toString('latin1');
    else if (t.type === PP2.TYPE_AUTHORITY) h.authority = t.value.toString('latin1');
    else if (t.type === PP2.TYPE_SSL) {
      if (t.value.length < 5) throw new Error('PP2_TYPE_SSL shorter than 5 bytes');
      const ssl = { client: t.value[0], verify: t.value.readUInt32BE(1), subTlvs: parseTlvs(t.value.subarray(5)) };
      for (const s of ssl.subTlvs) {
        if (s.type === PP2.SUBTYPE_SSL_VERSION) ssl.version = s.value.toString('latin1');
        else if (s.type === PP2.SUBTYPE_SSL_CN) ssl.cn = s.value.toString('utf8');
        else if (s.type === PP2.SUBTYPE_SSL_CIPHER) ssl.cipher = s.value.toString('latin1');
      }
      h.ssl = ssl;
    }
  }
  return h;
}

// The body GET /bytes/N answers: a pattern a truncation or reordering
// cannot hide (every 4-byte word is its own offset).
function patternBytes(n) {
  const buf = Buffer.alloc(n);
  for (let i = 0; i + 4 <= n; i += 4) buf.writeUInt32BE(i >>> 0, i);
  return buf;
}

class Upstream {
  constructor({ mode, proxy, path, tls: tlsOpts }) {
    this.mode = mode;
    this.proxy = proxy;
    this.path = path;
    this.tlsOpts = tlsOpts;
    this.connections = []; // one record per accepted connection, in order
    this.sockets = new Set();
    this.waiters = [];
    this.server = null;
    this.http = null;
    this.port = null;
    this.address = null;
  }

  static async start({ mode = 'echo', proxy = false, path = null, tls: tlsOpts = null } = {}) {
    const up = new Upstream({ mode, proxy, path, tls: tlsOpts });
    await up._listen();
    return up;
  }

  _listen() {
    if (this.mode === 'http') {
      this.http = http.createServer((req, res) => this._httpRequest(req, res));
      this.http.keepAliveTimeout = 1000;
    }
    this.server = net.createServer({ allowHalfOpen: true }, (sock) => this._accept(sock));
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      if (this.path) {
        this.server.listen(this.path, () => {
          this.address = `unix:${this.path}`;
          resolve();
        });
        return;
      }
      this.server.listen(0, '127.0.0.1', () => {
        this.port = this.server.address().port;
        this.address = `127.0.0.1:${this.port}`;
        resolve();
      });
    });
  }

  _accept(sock) {
    const rec = {
      index: this.connections.length,
      remotePort: sock.remotePort,
      proxy: null,
      proxyError: null,
      bytesIn: 0,
      data: [], // echo/hold: chunks received after the PROXY header (first 64 KiB)
      dataLen: 0,
      halfClosed: false, // the agent sent FIN
      closed: false,
      hadError: null,
      requests: [], // http: "METHOD /path"
    };
    rec.closedPromise = new Promise((resolve) => {
      rec._resolveClosed = resolve;
    });
    this.connections.push(rec);
    this.sockets.add(sock);
    sock.on('error', (err) => {
      rec.hadError = err.code || err.message;
    });
    sock.on('close', () => {
      rec.closed = true;
      this.sockets.delete(sock);
      rec._resolveClosed();
    });
    const ready = (rest) => {
      if (this.tlsOpts) {
        this._serveTls(sock, rec, rest);
        return;
      }
      this._notify(rec);
      this._serve(sock, rec, rest);
    };
    if (!this.proxy) {
      ready(Buffer.alloc(0));
      return;
    }
    let buf = Buffer.alloc(0);
    const onData = (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      let h;
      try {
        h = parseProxyV2(buf);
      } catch (err) {
        sock.off('data', onData);
        rec.proxyError = err.message;
        this._notify(rec);
        sock.destroy();
        return;
      }
      if (!h) return;
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.pause();
      rec.proxy = h;
      ready(buf.subarray(h.length));
    };
    const onEnd = () => {
      rec.proxyError = `the connection ended after ${buf.length} bytes, before a complete PROXY v2 header`;
      this._notify(rec);
      sock.end();
    };
    sock.on('data', onData);
    sock.on('end', onEnd);
  }

  // TLS over what follows the PROXY header: the bytes already read
  // (rest) first, then the socket's, through a Duplex that node:tls wraps
  // (a net.Socket would be read from its handle, past what was read).
  _serveTls(sock, rec, rest) {
    rec.tls = null;
    const raw = new Duplex({
      read() {
        sock.resume();
      },
      write(chunk, encoding, cb) {
        sock.write(chunk, cb);
      },
      final(cb) {
        sock.end();
        cb();
      },
    });
    if (rest.length) raw.push(rest);
    sock.on('data', (chunk) => {
      if (!raw.push(chunk)) sock.pause();
    });
    sock.on('end', () => raw.push(null));
    sock.on('close', () => raw.destroy());
    const ts = new tls.TLSSocket(raw, { isServer: true, ...this.tlsOpts });
    ts.on('error', (err) => {
      rec.hadError = err.code || err.message;
      sock.destroy();
    });
    ts.once('secure', () => {
      rec.tls = { servername: ts.servername || null, protocol: ts.getProtocol(), cipher: ts.getCipher().name };
      this._notify(rec);
      this._serve(ts, rec, Buffer.alloc(0));
    });
  }

  _serve(sock, rec, rest) {
    const count = (chunk) => {
      rec.bytesIn += chunk.length;
      if (rec.dataLen < 65536) {
        rec.data.push(chunk);
        rec.dataLen += chunk.length;
      }
    };
    if (this.mode === 'http') {
      sock.on('data', (c) => {
        rec.bytesIn += c.length;
      });
      if (rest.length) {
        rec.bytesIn += rest.length;
        sock.unshift(rest);
      }
      sock.resume();
      sock.setNoDelay(true);
      sock._tpRecord = rec;
      this.http.emit('connection', sock);
      return;
    }
    if (this.mode === 'echo') {
      const onChunk = (chunk) => {
        count(chunk);
        sock.write(chunk);
      };
      if (rest.length) onChunk(rest);
      sock.on('data', onChunk);
      sock.on('end', () => {
        rec.halfClosed = true;
        sock.end(); // after everything echoed so far
      });
    } else if (this.mode === 'stall') {
      return; // never resumed: the kernel's buffers fill and the agent's writes stall
    } else {
      if (rest.length) count(rest);
      sock.on('data', count);
      sock.on('end', () => {
        rec.halfClosed = true;
        sock.end();
      });
    }
    sock.resume();
  }

  _httpRequest(req, res) {
    const rec = req.socket._tpRecord;
    if (rec) rec.requests.push(`${req.method} ${req.url}`);
    let m;
    if (req.method === 'GET' && (m = /^\/bytes\/(\d+)$/.exec(req.url))) {
      const body = patternBytes(Number(m[1]));
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
      res.end(body);
    } else if (req.method === 'POST' && req.url === '/sha256') {
      const h = crypto.createHash('sha256');
      let n = 0;
      req.on('data', (c) => {
        h.update(c);
        n += c.length;
      });
      req.on('end', () => {
        const body = `${h.digest('hex')} ${n}\n`;
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      });
    } else if (req.url === '/hello') {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 6 });
      res.end('hello\n');
    } else {
      res.writeHead(404, { 'content-length': 0 });
      res.end();
    }
  }

  _notify(rec) {
    const w = this.waiters.filter((x) => x.index === rec.index);
    this.waiters = this.waiters.filter((x) => x.index !== rec.index);
    for (const x of w) {
      clearTimeout(x.timer);
      x.resolve(this.connections[x.index]);
    }
  }

  // The connection number `index` (0-based, in accept order) once its PROXY
  // header (if any) is parsed. Default: the one after those seen so far
  // by earlier calls. Rejects after timeoutMs.
  nextConnection({ index, timeoutMs = 10000 } = {}) {
    if (index === undefined) {
      index = this._next || 0;
      this._next = index + 1;
    } else {
      this._next = Math.max(this._next || 0, index + 1);
    }
    const rec = this.connections[index];
    if (rec && (!this.proxy || rec.proxy || rec.proxyError)) return Promise.resolve(rec);
    return new Promise((resolve, reject) => {
      const x = { index, resolve };
      x.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((y) => y !== x);
        reject(new Error(`upstream: no connection #${index} within ${timeoutMs} ms (${this.connections.length} so far)`));
      }, timeoutMs);
      this.waiters.push(x);
    });
  }

  // Skips every connection seen so far: the next nextConnection() waits
  // for a new one.
  skipSeen() {
    this._next = this.connections.length;
  }

  async close() {
    for (const s of this.sockets) s.destroy();
    if (this.http) this.http.close();
    await new Promise((resolve) => this.server.close(() => resolve()));
  }
}

module.exports = { Upstream, parseProxyV2, patternBytes, PP2 };
