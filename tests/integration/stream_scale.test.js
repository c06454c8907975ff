'use strict';
// Streams hold no thread. The server serves every streaming call from its
// completion queues and its bounded pool, so its thread count is the same
// with 0 streams as with hundreds: here 300 Health/Watch streams over
// several connections and a set of enrolled agents streaming snapshots
// (lib/fakeagent.js), each of which still gets its answer. The limits
// stay: an agent stream without a hello ends at the request timeout, and
// a stream beyond the server-wide cap is refused, naming the cap; once
// the streams close, their places are free again.
//
// The per-address cap on anonymous streams (16) is raised with
// --max-peer-streams so that one loopback address can hold the Watches.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const grpc = require('@grpc/grpc-js');
const { useServer } = require('./lib/server');
const { channelCredentials } = require('./lib/reflect');
const { FakeAgent } = require('./lib/fakeagent');
const { waitFor } = require('./lib/wait');
const { uid } = require('./lib/util');
const { pki } = require('./lib/pki');

const WATCHES = 300;
const CONNECTIONS = 4; // 75 streams each, under grpc's 100 per connection
const AGENTS = 12;
const MAX_STREAMS = WATCHES + AGENTS + 8;
const REQUEST_TIMEOUT_MS = 1500;
const POOL = 4;
// Threads the streams may add, at most: none are expected (the pool and
// the event threads are fixed); grpc core may start a helper or two of
// its own under load.
const GROWTH = 4;
const ANSWER_MS = 20000;

const ctx = useServer({ before, after, beforeEach, afterEach }, {
  start: {
    tls: true,
    extraArgs: [
      '--threads', String(POOL),
      '--request-timeout', String(REQUEST_TIMEOUT_MS),
      '--max-streams', String(MAX_STREAMS),
      '--max-peer-streams', String(2 * MAX_STREAMS),
    ],
  },
});

function serverThreads() {
  const text = fs.readFileSync(`/proc/${ctx.server.proc.pid}/status`, 'utf8');
  return Number(/^Threads:\s+(\d+)/m.exec(text)[1]);
}

// A Health client with a connection of its own.
function healthClient() {
  const Ctor = ctx.conn.clients['grpc.health.v1.Health'].constructor;
  return new Ctor(ctx.server.address, channelCredentials({ ca: ctx.server.ca }), {
    'grpc.use_local_subchannel_pool': 1,
  });
}

// Opens a Watch on client: { call, first (a promise of the first status
// or of the error that ended the call), ended }.
function watch(client) {
  const call = client.Watch({ service: '' });
  const w = { call, error: null, statuses: [] };
  w.first = new Promise((resolve) => {
    call.on('data', (m) => {
      w.statuses.push(m.status);
      resolve({ status: m.status });
    });
    call.on('error', (e) => {
      w.error = e;
      resolve({ error: e });
    });
  });
  return w;
}

// Resolves with p, or rejects after ms (a bound on a hang).
function within(p, ms, what) {
  let timer;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
    }),
  ]);
}

test(`${WATCHES} Watch streams and ${AGENTS} agent streams add no thread; each is answered; the hello deadline and the stream cap hold`, async () => {
  const baseline = serverThreads();
  const clients = Array.from({ length: CONNECTIONS }, healthClient);
  const agents = [];
  const extra = [];
  try {
    // The agents first: enrolled, connected, each with its first snapshot.
    for (let i = 0; i < AGENTS; i++) agents.push(await FakeAgent.enroll(ctx, uid('scale')));
    for (const a of agents) assert.ok(await a.next(0, ANSWER_MS), `${a.name}: its snapshot`);

    const watches = [];
    for (let i = 0; i < WATCHES; i++) watches.push(watch(clients[i % CONNECTIONS]));
    const firsts = await within(Promise.all(watches.map((w) => w.first)), ANSWER_MS, 'the Watch answers');
    for (const f of firsts) assert.deepEqual(f, { status: 'SERVING' });

    const threads = serverThreads();
    assert.ok(threads <= baseline + GROWTH,
      `${WATCHES + AGENTS} streams: the server runs ${threads} threads (${baseline} with none)`);

    // With every stream open, a revision that concerns every agent (a
    // listener for all) reaches each of them.
    const p = pki();
    const certId = uid('cert');
    await ctx.api.CertificateService.CreateCertificate({
      certificateId: certId, certificate: { certificateChainPem: p.ecdsa.chain || p.ecdsa.cert, privateKeyPem: p.ecdsa.key },
    });
    const ctxId = uid('ctx');
    await ctx.api.TlsContextService.CreateTlsContext({
      tlsContextId: ctxId, tlsContext: { certificates: [`certificates/${certId}`] },
    });
    const l = await ctx.api.ListenerService.CreateListener({
      listenerId: uid('all'),
      listener: { address: '127.0.0.1:18443', defaultTlsContext: `tlsContexts/${ctxId}`, upstream: '127.0.0.1:18080' },
    });
    for (const a of agents) {
      const snap = await a.next(1, ANSWER_MS);
      assert.deepEqual(snap.listeners.map((x) => x.listener.name), [l.name], `${a.name}: the new listener`);
    }

    // An agent stream without a hello ends at the request timeout, by a
    // timer, not a thread.
    const silent = uid('silent');
    const creds = await FakeAgent.credentials(ctx, silent);
    const client = FakeAgent._client(ctx, { ca: ctx.server.ca, cert: creds.cert, key: creds.key });
    const started = Date.now();
    const call = client.Connect();
    const err = await within(new Promise((resolve) => {
      call.on('error', resolve);
      call.on('data', () => {});
    }), REQUEST_TIMEOUT_MS + 10000, 'the hello deadline');
    const took = Date.now() - started;
    client.close();
    assert.equal(err.code, grpc.status.DEADLINE_EXCEEDED, err.details);
    assert.equal(err.details, `no message within ${REQUEST_TIMEOUT_MS} ms`);
    assert.ok(took >= REQUEST_TIMEOUT_MS - 100, `ended after ${took} ms`);

    // Beyond the server-wide cap: refused with RESOURCE_EXHAUSTED naming
    // it, and answered without a thread.
    const more = MAX_STREAMS - WATCHES - AGENTS + 10;
    for (let i = 0; i < more; i++) extra.push(watch(clients[i % CONNECTIONS]));
    const outcomes = await within(Promise.all(extra.map((w) => w.first)), ANSWER_MS, 'the streams beyond the cap');
    const refused = outcomes.filter((o) => o.error);
    const served = outcomes.filter((o) => o.status === 'SERVING');
    assert.equal(refused.length + served.length, more);
    assert.ok(refused.length >= 10, `${refused.length} of ${more} refused`);
    assert.ok(WATCHES + AGENTS + served.length <= MAX_STREAMS, `${served.length} more served`);
    for (const { error } of refused) {
      assert.equal(error.code, grpc.status.RESOURCE_EXHAUSTED, error.details);
      assert.equal(error.details, `too many streams: the server serves at most ${MAX_STREAMS} streaming calls at once`);
    }
    assert.ok(serverThreads() <= baseline + GROWTH, 'refusals take no thread');
    // Still serving.
    const ok = await ctx.api['grpc.health.v1.Health'].Check({ service: '' });
    assert.equal(ok.status, 'SERVING');
    for (const w of watches) assert.equal(w.error, null, 'a served Watch stays open');
  } finally {
    for (const c of clients) c.close();
    for (const a of agents) a.close();
  }

  // Closed streams free their places: a new Watch is served, and the
  // agents show disconnected.
  await waitFor('the agents disconnected', async () => {
    for (const a of agents) {
      const g = await ctx.api.AgentService.GetAgent({ name: `agents/${a.name}` });
      if (g.connected) return false;
    }
    return true;
  }, { timeoutMs: ANSWER_MS });
  const fresh = healthClient();
  try {
    const again = await waitFor('a Watch served again', async () => {
      const w = watch(fresh);
      const f = await within(w.first, ANSWER_MS, 'a Watch after the others closed');
      w.call.cancel();
      return f.status === 'SERVING' ? f : null;
    }, { timeoutMs: ANSWER_MS });
    assert.equal(again.status, 'SERVING');
  } finally {
    fresh.close();
  }
  assert.ok(serverThreads() <= baseline + GROWTH, 'no thread left behind');
});
