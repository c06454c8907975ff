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
//
// Protocol 2 (content-addressed deltas), by option; the default is
// protocol 1 (a hello without protocol, whole snapshots):
//
//   const a = await FakeAgent.enroll(ctx, 'edge-3', { agentLabels, protocol: 2 });
//   const d = await a.next(0);      // the first update: a SnapshotDelta (or a
//                                   // Snapshot from a server that speaks 1 only)
//   a.resources                     // Map: hex hash -> Resource it holds
//   a.listeners                     // Map: listener name -> ListenerEntry
//   a.ack(d);                       // one ListenerResult per listener held
//   const b = await a.reconnect();  // a new stream whose hello reports what a holds
//
// With protocol 2 the hello carries protocol = 2, the revision applied and
// the hashes held (resources, listeners as ListenerVersion); each delta is
// applied as the agent applies it (resources added, listeners added or
// replaced, listeners removed, resources removed) and what a listener names
// but is not held is recorded in a.problems. Either protocol counts what
// the stream brought: a.bytesReceived (the serialized ServerMessages, gRPC
// framing aside), a.messagesReceived, a.resourcesReceived (Resources in
// deltas). autoAck: true acks every update as it arrives (a.acks counts
// them; a.onAck(revision) is called after each).

const assert = require('node:assert/strict');
const grpc = require('@grpc/grpc-js');
const { channelCredentials } = require('./reflect');
const { makeCsr, uid } = require('./util');
const { noteSecret } = require('./server');

class FakeAgent {
  // Enrolls `name` (FakeAgent.credentials) and connects (FakeAgent.connect).
  static async enroll(ctx, name, { agentLabels = {}, replace = false, claim = {}, version, ...more } = {}) {
    const creds = await FakeAgent.credentials(ctx, name, { agentLabels, replace });
    return FakeAgent.connect(ctx, name, creds, { claim, version, ...more });
  }

  // A join token for `name` (with agentLabels, replace) made by the admin,
  // and the enrollment with it: { cert, key, res (AgentCertificate), token }.
  // keyPair ({ key, csr }, from util.makeCsr) reuses one key for many
  // agents (the server signs a certificate per agent all the same) and
  // client (FakeAgent._client(ctx, { ca })) one connection for many
  // enrollments: both for benchmarks that enroll thousands.
  static async credentials(ctx, name, { agentLabels = {}, replace = false, keyPair, client: shared } = {}) {
    const t = await ctx.conn.api.TokenService.CreateToken({
      tokenId: uid('join'), token: { role: 'JOIN', agentId: name, agentLabels, replace },
    });
    noteSecret(t.secret);
    const { key, csr } = keyPair || makeCsr();
    noteSecret(key.split('\n')[1]);
    const client = shared || FakeAgent._client(ctx, { ca: ctx.server.ca });
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
      if (!shared) client.close();
    }
  }

  // Connects as `name` with creds ({ cert, key }) and sends the hello
  // (labels: claim). protocol: 2 for deltas; hold: what the agent holds
  // already ({ revision, resources: Map or [Resource], listeners: Map or
  // [ListenerEntry] }, e.g. another FakeAgent's held()), reported in its
  // hello; autoAck: ack every update on arrival.
  static connect(ctx, name, creds, { claim = {}, version = 'test-1.0', protocol = 1, hold = null, autoAck = false } = {}) {
    const client = FakeAgent._client(ctx, { ca: ctx.server.ca, cert: creds.cert, key: creds.key });
    return new FakeAgent(client, name, claim, version, { ctx, creds, protocol, hold, autoAck });
  }

  // An AgentService client of its own (its own connection) with these TLS
  // credentials.
  static _client(ctx, tls) {
    const Ctor = ctx.conn.clients['tlsplane.v1.AgentService'].constructor;
    return new Ctor(ctx.server.address, channelCredentials(tls), { 'grpc.use_local_subchannel_pool': 1 });
  }

  constructor(client, name, claim, version, { ctx = null, creds = null, protocol = 1, hold = null, autoAck = false } = {}) {
    this.client = client;
    this.name = name;
    this.claim = claim;
    this.version = version;
    this.ctx = ctx;
    this.creds = creds;
    this.protocol = protocol;
    this.autoAck = autoAck;
    this.snapshots = [];
    this.waiters = [];
    this.ended = null;
    this.bytesReceived = 0;
    this.messagesReceived = 0;
    this.acks = 0;
    this.onAck = null;
    const values = (x) => (x instanceof Map ? [...x.values()] : x || []);
    if (protocol === 2) {
      this.updates = []; // every Snapshot or SnapshotDelta, in order
      this.deltas = [];
      this.resources = new Map(); // hex hash -> Resource
      this.listeners = new Map(); // listener name -> ListenerEntry
      this.revision = hold ? String(hold.revision || '0') : '0';
      for (const r of values(hold && hold.resources)) this.resources.set(hex(r.hash), r);
      for (const l of values(hold && hold.listeners)) this.listeners.set(l.listener.name, l);
      this.resourcesReceived = 0;
      this.problems = [];
    }
    // Connect with a deserializer that counts the bytes of each message.
    const def = ctx && ctx.conn ? ctx.conn.packageDefinition['tlsplane.v1.AgentService'].Connect : null;
    if (def) {
      this.call = client.makeBidiStreamRequest(def.path, def.requestSerialize, (buf) => {
        this.bytesReceived += buf.length;
        this.messagesReceived++;
        return def.responseDeserialize(buf);
      }, new grpc.Metadata(), {});
    } else {
      this.call = client.Connect();
    }
    this.call.on('data', (m) => {
      if (protocol === 2) this._update(m);
      else {
        assert.equal(m.message, 'snapshot');
        this.snapshots.push(m.snapshot);
        if (autoAck) this.ack(m.snapshot);
      }
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
    const hello = { name, labels: claim, version, appliedRevision: '0' };
    if (protocol === 2) {
      hello.protocol = 2;
      hello.appliedRevision = this.revision;
      hello.resources = [...this.resources.values()].map((r) => r.hash);
      hello.listeners = [...this.listeners.values()].map((l) => ({ listener: l.listener.name, hash: l.hash }));
    }
    this.call.write({ hello });
  }

  // Protocol 2: one ServerMessage (a delta, or a snapshot from a server
  // that speaks protocol 1 only).
  _update(m) {
    if (m.message === 'snapshot') {
      this.snapshots.push(m.snapshot);
      this.updates.push(m.snapshot);
      this.revision = m.snapshot.revision;
    } else {
      assert.equal(m.message, 'delta');
      this._apply(m.delta);
      this.deltas.push(m.delta);
      this.updates.push(m.delta);
    }
    if (this.autoAck) this.ack(this.updates[this.updates.length - 1]);
  }

  // Applies a SnapshotDelta as the agent does: resources added, listeners
  // added or replaced, listeners removed, resources removed. What a listener
  // names but is not held afterwards goes to this.problems.
  _apply(d) {
    for (const r of d.resources || []) {
      this.resources.set(hex(r.hash), r);
      this.resourcesReceived++;
    }
    for (const l of d.listeners || []) this.listeners.set(l.listener.name, l);
    for (const name of d.removedListeners || []) this.listeners.delete(name);
    for (const h of d.removedResources || []) this.resources.delete(hex(h));
    for (const l of this.listeners.values()) {
      const need = [...Object.values(l.tlsContexts || {})];
      if (l.ticketKeys && l.ticketKeys.length) need.push(l.ticketKeys);
      for (const h of Object.values(l.tlsContexts || {})) {
        const ctxr = this.resources.get(hex(h));
        const c = ctxr && ctxr.tlsContext;
        if (!c) continue;
        need.push(...(c.certificates || []), ...(c.revocationLists || []));
        if (c.cipherPolicy && c.cipherPolicy.length) need.push(c.cipherPolicy);
        if (c.trustBundle && c.trustBundle.length) need.push(c.trustBundle);
      }
      for (const h of need) {
        if (!this.resources.has(hex(h))) this.problems.push(`revision ${d.revision}: ${l.listener.name} names ${hex(h)}, not held`);
      }
    }
    this.revision = d.revision;
  }

  // Protocol 2: what this agent holds ({ revision, resources, listeners }),
  // for FakeAgent.connect's hold.
  held() {
    return { revision: this.revision, resources: new Map(this.resources), listeners: new Map(this.listeners) };
  }

  // Protocol 2: closes this stream and connects again as the same agent,
  // its hello reporting what this one holds. Resolves with the new FakeAgent.
  async reconnect(more = {}) {
    assert.ok(this.ctx && this.creds, 'reconnect needs an agent made by FakeAgent.connect or enroll');
    const hold = this.held();
    this.close();
    return FakeAgent.connect(this.ctx, this.name, this.creds, {
      claim: this.claim, version: this.version, protocol: this.protocol, hold, autoAck: this.autoAck, ...more,
    });
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
  // the stream ends first. Protocol 2: update #n+1 (a delta or a snapshot).
  async next(n, ms = 5000) {
    const deadline = Date.now() + ms;
    const got = this.protocol === 2 ? this.updates : this.snapshots;
    while (got.length <= n) {
      if (this.ended) throw this.ended;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name}: no ${this.protocol === 2 ? 'update' : 'snapshot'} #${n + 1} within ${ms} ms`);
      await this._waitChange(left);
    }
    return got[n];
  }

  // Resolves with the error that ended the stream (null if it did not
  // end within ms).
  async ended_(ms = 5000) {
    const deadline = Date.now() + ms;
    while (!this.ended && Date.now() < deadline) await this._waitChange(deadline - Date.now());
    return this.ended;
  }

  // Acks (or, with failed: { listener: why }, nacks) a snapshot; a delta
  // with one ListenerResult per listener held once it is applied.
  ack(snapshot, failed = {}) {
    const names = snapshot.listeners && !('removedListeners' in snapshot)
      ? snapshot.listeners.map((l) => l.listener.name)
      : [...this.listeners.keys()];
    this.call.write({
      ack: {
        revision: snapshot.revision,
        listeners: names.map((name) => ({
          listener: name,
          applied: !(name in failed),
          error: failed[name] || '',
        })),
      },
    });
    this.acks++;
    if (this.onAck) this.onAck(snapshot.revision);
  }

  close() {
    this.call.end();
    this.call.cancel();
    this.client.close();
  }
}

function hex(b) {
  return Buffer.from(b || []).toString('hex');
}

module.exports = { FakeAgent };
