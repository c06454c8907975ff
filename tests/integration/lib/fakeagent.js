'use strict';
// A fake agent in this process: the real stream protocol
// (AgentService/Connect) under a real agent identity. It enrolls as
// tlsplane-agent does (a join token naming its id, a CSR for a key of its
// own, EnrollAgent), connects with the certificate it got (mutual TLS),
// sends a hello and collects the snapshots the server pushes; it acks or
// nacks as told. What its hello claims is the test's choice, so it also
// plays the hostile agent.
//
//   const a = await FakeAgent.enroll(ctx, 'edge-1', { agentLabels: { site: 'par' } });
//   const snap = await a.next(0);          // the first snapshot (rejects after ms)
//   a.ack(snap);                           // or a.ack(snap, { 'listeners/x': 'why' }): a nack
//   a.close();
//
//   const creds = await FakeAgent.credentials(ctx, 'edge-2');       // enrolled, not connected
//   const b = FakeAgent.connect(ctx, 'edge-2', creds, { claim: { site: 'par' } });
//
// ctx: { server, conn } (lib/server.js useServer's context, or the same
// shape): server.address and server.ca (a TLS server), conn an admin
// connection from lib/reflect.js (its schema is reused, not fetched again).

const assert = require('node:assert/strict');
const grpc = require('@grpc/grpc-js');
const { channelCredentials } = require('./reflect');
const { makeCsr, uid } = require('./util');
const { noteSecret } = require('./server');

class FakeAgent {
  // Enrolls `name` (FakeAgent.credentials) and connects (FakeAgent.connect).
  static async enroll(ctx, name, { agentLabels = {}, replace = false, claim = {}, version } = {}) {
    const creds = await FakeAgent.credentials(ctx, name, { agentLabels, replace });
    return FakeAgent.connect(ctx, name, creds, { claim, version });
  }

  // A join token for `name` (with agentLabels, replace) made by the admin,
  // and the enrollment with it: { cert, key, res (AgentCertificate), token }.
  static async credentials(ctx, name, { agentLabels = {}, replace = false } = {}) {
    const t = await ctx.conn.api.TokenService.CreateToken({
      tokenId: uid('join'), token: { role: 'JOIN', agentId: name, agentLabels, replace },
    });
    noteSecret(t.secret);
    const { key, csr } = makeCsr();
    noteSecret(key.split('\n')[1]);
    const client = FakeAgent._client(ctx, { ca: ctx.server.ca });
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${t.secret}`);
    const def = ctx.conn.packageDefinition['tlsplane.v1.AgentService'].EnrollAgent;
    try {
      const res = await new Promise((resolve, reject) => {
        client.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize,
          { agentId: name, csrPem: csr }, md, { deadline: Date.now() + 15000 },
          (err, r) => (err ? reject(err) : resolve(r)));
      });
      return { cert: res.certificatePem, key, res, token: t };
    } finally {
      client.close();
    }
  }

  // Connects as `name` with creds ({ cert, key }) and sends the hello
  // (labels: claim).
  static connect(ctx, name, creds, { claim = {}, version = 'test-1.0' } = {}) {
    const client = FakeAgent._client(ctx, { ca: ctx.server.ca, cert: creds.cert, key: creds.key });
    return new FakeAgent(client, name, claim, version);
  }

  // An AgentService client of its own (its own connection) with these TLS
  // credentials.
  static _client(ctx, tls) {
    const Ctor = ctx.conn.clients['tlsplane.v1.AgentService'].constructor;
    return new Ctor(ctx.server.address, channelCredentials(tls), { 'grpc.use_local_subchannel_pool': 1 });
  }

  constructor(client, name, claim, version) {
    this.client = client;
    this.name = name;
    this.snapshots = [];
    this.waiters = [];
    this.ended = null;
    this.call = client.Connect();
    this.call.on('data', (m) => {
      assert.equal(m.message, 'snapshot');
      this.snapshots.push(m.snapshot);
      this._wake();
    });
    this.call.on('error', (e) => {
      this.ended = e;
      this._wake();
    });
    this.call.on('end', () => {
      this.ended = this.ended || new Error('ended');
      this._wake();
    });
    this.call.write({ hello: { name, labels: claim, version, appliedRevision: '0' } });
  }

  _wake() {
    for (const w of this.waiters.splice(0)) w();
  }

  // Waits for a change (a snapshot, the end) for at most ms.
  _waitChange(ms) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  // Resolves with snapshot #n+1 (count > n), or rejects after ms or when
  // the stream ends first.
  async next(n, ms = 5000) {
    const deadline = Date.now() + ms;
    while (this.snapshots.length <= n) {
      if (this.ended) throw this.ended;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name}: no snapshot #${n + 1} within ${ms} ms`);
      await this._waitChange(left);
    }
    return this.snapshots[n];
  }

  // Resolves with the error that ended the stream (null if it did not
  // end within ms).
  async ended_(ms = 5000) {
    const deadline = Date.now() + ms;
    while (!this.ended && Date.now() < deadline) await this._waitChange(deadline - Date.now());
    return this.ended;
  }

  ack(snapshot, failed = {}) {
    this.call.write({
      ack: {
        revision: snapshot.revision,
        listeners: snapshot.listeners.map((l) => ({
          listener: l.listener.name,
          applied: !(l.listener.name in failed),
          error: failed[l.listener.name] || '',
        })),
      },
    });
  }

  close() {
    this.call.end();
    this.call.cancel();
    this.client.close();
  }
}

module.exports = { FakeAgent };
