'use strict';
// An HTTPS front for an ACME server (pebble): every request is forwarded
// to it unchanged, Host header included, so that the server builds every
// URL it hands out (directory, orders, Location, nonces' JWS url checks)
// on the front's own host and the client talks to the front only. On top:
//
//   - the directory gains "renewalInfo" (RFC 9773; not with
//     { renewalInfo: false }), answered here with what
//     front.renewalInfo(certId) returns: { start, end, explanationURL } (a
//     window; Dates or ms), { raw } (that body), { status, detail } (a
//     problem document with that HTTP status) or null (404); each may add
//     retryAfter (seconds, the Retry-After header);
//   - front.intercept(req) may answer a request itself: return
//     { status, headers, body } (req: { method, path, body, payload, url }),
//     or null to forward it;
//   - every request is recorded in front.requests, JWS bodies decoded:
//     { at (ms), method, path, url, body, protected, payload }.
//
//   const front = await AcmeFront.start({ upstream: pebble.directory, upstreamCa, cert, key });
//   front.directory        // "https://127.0.0.1:PORT/dir"
//   front.renewalInfo = (certId) => ({ start, end });
//   front.requestsTo('newOrder')  // the recorded newOrder requests
//   await front.close()

const https = require('node:https');
const net = require('node:net');

function b64urlJson(s) {
  try {
    return s ? JSON.parse(Buffer.from(s, 'base64url').toString('utf8')) : null;
  } catch {
    return null;
  }
}

class AcmeFront {
  static async start({ upstream, upstreamCa, cert, key, renewalInfo = true }) {
    const f = new AcmeFront();
    f.upstream = new URL(upstream);
    f.upstreamCa = upstreamCa;
    f.offerRenewalInfo = renewalInfo;
    f.renewalInfo = () => null;
    f.intercept = () => null;
    f.requests = [];
    f.paths = {}; // the upstream directory's resources, by name, as paths
    f.server = https.createServer({ cert, key }, (req, res) => f.handle(req, res));
    await new Promise((resolve) => f.server.listen(0, '127.0.0.1', resolve));
    f.port = f.server.address().port;
    f.origin = `https://127.0.0.1:${f.port}`;
    f.directory = `${f.origin}${f.upstream.pathname}`;
    return f;
  }

  // The recorded requests to a directory resource ("newOrder", ...).
  requestsTo(name) {
    return this.requests.filter((r) => this.paths[name] && r.path === this.paths[name]);
  }

  async handle(req, res) {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks);
    const rec = { at: Date.now(), method: req.method, path: req.url.split('?')[0], url: `${this.origin}${req.url}`, body: body.toString('utf8') };
    if (body.length) {
      try {
        const jws = JSON.parse(rec.body);
        rec.protected = b64urlJson(jws.protected);
        rec.payload = jws.payload === '' ? '' : b64urlJson(jws.payload);
      } catch { /* not JWS */ }
    }
    this.requests.push(rec);
    try {
      const mine = this.intercept(rec);
      if (mine) return this.answer(res, mine);
      if (rec.path.startsWith('/renewal-info/') && this.offerRenewalInfo) return this.answerRenewalInfo(res, rec.path.slice('/renewal-info/'.length));
      const up = await this.forward(req, body);
      if (rec.path === this.upstream.pathname && up.status === 200) {
        const dir = JSON.parse(up.body.toString('utf8'));
        for (const [k, v] of Object.entries(dir)) if (typeof v === 'string' && v.startsWith('https://')) this.paths[k] = new URL(v).pathname;
        if (this.offerRenewalInfo) dir.renewalInfo = `${this.origin}/renewal-info/`;
        up.body = Buffer.from(JSON.stringify(dir));
        delete up.headers['content-length'];
      }
      this.answer(res, up);
    } catch (e) {
      this.answer(res, { status: 502, body: `front: ${e.message}` });
    }
  }

  answerRenewalInfo(res, certId) {
    const w = this.renewalInfo(certId);
    if (!w) return this.answer(res, { status: 404, headers: { 'content-type': 'application/problem+json' }, body: JSON.stringify({ type: 'urn:ietf:params:acme:error:malformed', detail: `no certificate ${certId}` }) });
    const headers = { 'content-type': w.status && w.status !== 200 ? 'application/problem+json' : 'application/json' };
    if (w.retryAfter !== undefined) headers['retry-after'] = String(w.retryAfter);
    if (w.status && w.status !== 200) return this.answer(res, { status: w.status, headers, body: JSON.stringify({ type: 'urn:ietf:params:acme:error:serverInternal', detail: w.detail || 'scripted failure' }) });
    if (typeof w.raw === 'string') return this.answer(res, { status: 200, headers, body: w.raw });
    const doc = { suggestedWindow: { start: new Date(w.start).toISOString(), end: new Date(w.end).toISOString() } };
    if (w.explanationURL) doc.explanationURL = w.explanationURL;
    return this.answer(res, { status: 200, headers, body: JSON.stringify(doc) });
  }

  answer(res, { status, headers = {}, body = '' }) {
    const b = Buffer.isBuffer(body) ? body : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    const h = { ...headers };
    delete h['transfer-encoding'];
    delete h.connection;
    h['content-length'] = String(b.length);
    res.writeHead(status, h);
    res.end(b);
  }

  forward(req, body) {
    return new Promise((resolve, reject) => {
      const headers = { ...req.headers }; // Host stays the front's
      const r = https.request({
        host: this.upstream.hostname, port: this.upstream.port, method: req.method, path: req.url, headers,
        ca: this.upstreamCa,
        servername: net.isIP(this.upstream.hostname) ? '' : this.upstream.hostname, // not the front's Host
      }, (up) => {
        const chunks = [];
        up.on('data', (c) => chunks.push(c));
        up.on('end', () => resolve({ status: up.statusCode, headers: up.headers, body: Buffer.concat(chunks) }));
        up.on('error', reject);
      });
      r.on('error', reject);
      r.end(body);
    });
  }

  async close() {
    this.server.closeAllConnections?.();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

module.exports = { AcmeFront };
