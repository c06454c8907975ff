'use strict';
// A raw HTTP/2 client that speaks just enough gRPC to behave as a hostile
// client would: HEADERS without a body, streams held open, messages framed
// by hand. Node's http2 module, no gRPC library in between.
//
//   const h = await RawH2.connect('127.0.0.1:PORT', { localAddress: '127.0.0.2' });
//   const c = h.call('/grpc.health.v1.Health/Check', { body: null });  // HEADERS only
//   await c.closed   // { status, message, rst } once the server ended it
//   c.messages       // gRPC messages received (Buffers)
//   await c.firstMessage(ms)
//   h.close()

const http2 = require('node:http2');

// One gRPC message: compressed flag, 4-byte length, payload.
function frame(payload = Buffer.alloc(0)) {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(payload.length, 1);
  return Buffer.concat([head, payload]);
}

class RawCall {
  constructor(session, path, { body, endStream, headers }) {
    this.path = path;
    this.messages = [];
    this.result = null; // set once closed
    this.waiters = [];
    this.buf = Buffer.alloc(0);
    const h = { ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...headers };
    this.stream = session.request(h, { endStream: false });
    let meta = {};
    this.stream.on('response', (hd) => {
      meta = { ...meta, ...hd };
    });
    this.stream.on('trailers', (t) => {
      meta = { ...meta, ...t };
    });
    this.stream.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      while (this.buf.length >= 5) {
        const n = this.buf.readUInt32BE(1);
        if (this.buf.length < 5 + n) break;
        this.messages.push(this.buf.subarray(5, 5 + n));
        this.buf = this.buf.subarray(5 + n);
      }
      this._wake();
    });
    this.stream.on('error', () => {});
    this.closed = new Promise((resolve) => {
      this.stream.on('close', () => {
        const status = meta['grpc-status'] === undefined ? null : Number(meta['grpc-status']);
        const message = meta['grpc-message'] === undefined ? '' : decodeURIComponent(meta['grpc-message']);
        this.result = { status, message, rst: this.stream.rstCode };
        this._wake();
        resolve(this.result);
      });
    });
    if (body !== null && body !== undefined) {
      if (endStream === false) this.stream.write(body);
      else this.stream.end(body);
    }
  }

  _wake() {
    for (const w of this.waiters.splice(0)) w();
  }

  // Resolves with the first message, or with null if the call closed first;
  // rejects after ms.
  async firstMessage(ms) {
    const deadline = Date.now() + ms;
    while (this.messages.length === 0 && this.result === null) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.path}: neither a message nor the end within ${ms} ms`);
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.messages.length > 0 ? this.messages[0] : null;
  }

  cancel() {
    this.stream.close(http2.constants.NGHTTP2_CANCEL);
  }
}

class RawH2 {
  // Connects (plaintext, prior knowledge) and waits for the server's
  // SETTINGS. options: passed to net.connect (localAddress, ...).
  static connect(address, options = {}) {
    return new Promise((resolve, reject) => {
      const session = http2.connect(`http://${address}`, options);
      const h = new RawH2(session);
      session.once('connect', () => resolve(h));
      session.once('error', reject);
    });
  }

  constructor(session) {
    this.session = session;
    this.session.on('error', () => {});
    this.calls = [];
  }

  // Starts a call. body: the bytes of the request (frame() them), or null for
  // HEADERS only; endStream false keeps the request side open after body.
  call(path, { body = null, endStream = true, headers = {} } = {}) {
    const c = new RawCall(this.session, path, { body, endStream, headers });
    this.calls.push(c);
    return c;
  }

  close() {
    if (this.session.destroyed) return;
    for (const c of this.calls) if (c.result === null) c.cancel();
    this.session.destroy();
  }
}

module.exports = { RawH2, frame };
