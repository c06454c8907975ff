'use strict';
// Hostile clients against the server's RPC core, with a raw HTTP/2 client
// (lib/rawh2.js): unary calls whose request never comes take no worker
// thread and are ended at the request timeout, and one address cannot hold
// many of them; a request over the receive limit is refused; streaming
// calls without a credential are capped per client address, and all
// streaming calls server-wide, so the server's threads stay bounded; a
// refused stream takes no thread, even when its client does not read.
//
// The server runs with a pool of POOL threads, so that "more half-open
// calls than threads" is the same number on every machine.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const { useServer } = require('./lib/server');
const { RawH2, frame } = require('./lib/rawh2');
const { statusName } = require('./lib/util');

const POOL = 2;
const REQUEST_TIMEOUT_MS = 8000;
const MAX_STREAMS = 24;
const PEER_STREAMS = 16; // the default
const PEER_SLOW = 64;
// Threads beyond the pool and the streams: the main thread, the event
// threads, grpc core's own (timers, executor, resolver).
const THREAD_MARGIN = 30;
// A bound on a hang, far below REQUEST_TIMEOUT_MS; not a speed assertion.
const ANSWER_MS = 5000;

const ctx = useServer(
  { before, after, beforeEach, afterEach },
  {
    start: {
      extraArgs: ['--threads', String(POOL)],
      env: { TLSPLANE_REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS), TLSPLANE_MAX_STREAMS: String(MAX_STREAMS) },
    },
  },
);
const api = () => ctx.api;

const raws = [];
after(() => {
  for (const h of raws) h.close();
});

async function raw(localAddress) {
  const h = await RawH2.connect(ctx.server.address, localAddress ? { localAddress } : {});
  raws.push(h);
  return h;
}

function serverThreads() {
  const text = fs.readFileSync(`/proc/${ctx.server.proc.pid}/status`, 'utf8');
  return Number(/^Threads:\s+(\d+)/m.exec(text)[1]);
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

async function waitFor(fn, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const CHECK = '/grpc.health.v1.Health/Check';
const WATCH = '/grpc.health.v1.Health/Watch';

test('half-open unary calls take no worker: health and reads answer while they are held, and the server ends them at the request timeout', async () => {
  const h = await raw();
  try {
    // HEADERS, never a body, on one connection, 4 x the pool: open calls
    // (no credential needed), and calls with the admin's token.
    const held = [];
    for (let i = 0; i < 4 * POOL; i++) held.push(h.call(CHECK));
    for (let i = 0; i < 2; i++) {
      held.push(h.call('/tlsplane.v1.CertificateService/GetCertificate', { headers: { authorization: `Bearer ${ctx.server.adminToken}` } }));
    }
    // Without a credential a call is refused before its request is read.
    const anonymous = [0, 1].map(() => h.call('/tlsplane.v1.CertificateService/ListCertificates'));

    // Meanwhile a normal client is served, unauthenticated and as the admin.
    const health = await api()['grpc.health.v1.Health'].Check({ service: '' }, { deadlineMs: ANSWER_MS });
    assert.equal(health.status, 'SERVING');
    const list = await api().CertificateService.ListCertificates({}, { deadlineMs: ANSWER_MS });
    assert.ok(Array.isArray(list.certificates));
    await api().CertificateService.GetCertificate({ name: 'certificates/none' }, { deadlineMs: ANSWER_MS }).then(
      () => assert.fail('GetCertificate of a missing certificate succeeded'),
      (e) => assert.equal(statusName(e.code), 'NOT_FOUND', e.details),
    );
    for (const c of anonymous) {
      const r = await within(c.closed, ANSWER_MS, 'an unauthenticated half-open call');
      assert.equal(statusName(r.status), 'UNAUTHENTICATED', r.message);
    }
    assert.deepEqual(held.filter((c) => c.result !== null).map((c) => c.result), [], 'the held calls are still held');

    // The server ends every held call once the request timeout passes.
    for (const c of held) {
      const r = await within(c.closed, REQUEST_TIMEOUT_MS + 15000, `held call ${c.path}`);
      assert.equal(statusName(r.status), 'DEADLINE_EXCEEDED', `${c.path}: ${r.message}`);
      assert.equal(r.message, `request: not complete within ${REQUEST_TIMEOUT_MS} ms`);
    }
    const again = await api()['grpc.health.v1.Health'].Check({ service: '' }, { deadlineMs: ANSWER_MS });
    assert.equal(again.status, 'SERVING');
  } finally {
    h.close();
  }
});

test(`one address holds at most ${PEER_SLOW} requests still arriving after 1 s; beyond, they are cancelled`, async () => {
  const h = await raw('127.0.0.4');
  try {
    const held = [];
    for (let i = 0; i < PEER_SLOW + 6; i++) held.push(h.call(CHECK));
    const outcomes = {};
    for (const c of held) {
      const r = await within(c.closed, REQUEST_TIMEOUT_MS + 15000, 'a half-open call');
      const key = `${statusName(r.status)}: ${r.message}`;
      outcomes[key] = (outcomes[key] || 0) + 1;
    }
    assert.deepEqual(outcomes, {
      [`RESOURCE_EXHAUSTED: request: too many requests from 127.0.0.4 still arriving after 1000 ms (at most ${PEER_SLOW})`]: 6,
      [`DEADLINE_EXCEEDED: request: not complete within ${REQUEST_TIMEOUT_MS} ms`]: PEER_SLOW,
    });
  } finally {
    h.close();
  }
});

test('a request over the 16 MiB receive limit is refused with RESOURCE_EXHAUSTED', async () => {
  const h = await raw();
  try {
    const c = h.call(CHECK, { body: frame(Buffer.alloc(16 * 1024 * 1024 + 1)) });
    const r = await within(c.closed, 30000, 'an oversized request');
    assert.equal(statusName(r.status), 'RESOURCE_EXHAUSTED', r.message);
  } finally {
    h.close();
  }
  const ok = await api()['grpc.health.v1.Health'].Check({ service: '' }, { deadlineMs: ANSWER_MS });
  assert.equal(ok.status, 'SERVING');
});

// Opens n Watch streams over the connections hs; resolves with the served
// ones (a first message came) and the refused ones (closed first).
async function openWatches(hs, n) {
  const calls = [];
  for (let i = 0; i < n; i++) calls.push(hs[i % hs.length].call(WATCH, { body: frame() }));
  const served = [];
  const refused = [];
  for (const c of calls) {
    const m = await c.firstMessage(20000);
    if (m !== null) served.push(c);
    else refused.push(c);
  }
  return { served, refused };
}

// Closes the connections; stream threads end once their calls do.
async function closeAll(hs, baseline) {
  for (const h of hs) h.close();
  await waitFor(() => serverThreads() <= baseline, 20000, 'the stream threads ending');
}

test(`anonymous Watch streams beyond ${PEER_STREAMS} from one address are refused with RESOURCE_EXHAUSTED; threads stay bounded`, async () => {
  const baseline = serverThreads();
  const hs = [await raw()];
  try {
    const { served, refused } = await openWatches(hs, 80);
    assert.equal(served.length, PEER_STREAMS, 'streams served');
    assert.equal(refused.length, 80 - PEER_STREAMS, 'streams refused');
    for (const c of refused) {
      assert.equal(statusName(c.result.status), 'RESOURCE_EXHAUSTED', c.result.message);
      assert.equal(
        c.result.message,
        `too many streams: 127.0.0.1 has ${PEER_STREAMS} open streaming calls without a credential (at most ${PEER_STREAMS} per address)`,
      );
    }
    for (const c of served) assert.equal(c.result, null, 'a served stream stays open');
    const ok = await api()['grpc.health.v1.Health'].Check({ service: '' }, { deadlineMs: ANSWER_MS });
    assert.equal(ok.status, 'SERVING');
    const threads = serverThreads();
    assert.ok(threads < PEER_STREAMS + POOL + THREAD_MARGIN, `the server runs ${threads} threads`);
  } finally {
    await closeAll(hs, baseline);
  }
});

test(`the server-wide stream cap (${MAX_STREAMS}): streams beyond it are refused, naming the cap`, async () => {
  const baseline = serverThreads();
  const hs = [await raw('127.0.0.2'), await raw('127.0.0.3')];
  try {
    const { served, refused } = await openWatches(hs, 2 * PEER_STREAMS);
    assert.equal(served.length, MAX_STREAMS, 'streams served');
    assert.equal(refused.length, 2 * PEER_STREAMS - MAX_STREAMS, 'streams refused');
    for (const c of refused) {
      assert.equal(statusName(c.result.status), 'RESOURCE_EXHAUSTED', c.result.message);
      assert.equal(c.result.message, `too many streams: the server serves at most ${MAX_STREAMS} streaming calls at once`);
    }
    const threads = serverThreads();
    assert.ok(threads < MAX_STREAMS + POOL + THREAD_MARGIN, `the server runs ${threads} threads`);
    const ok = await api()['grpc.health.v1.Health'].Check({ service: '' }, { deadlineMs: ANSWER_MS });
    assert.equal(ok.status, 'SERVING');
  } finally {
    await closeAll(hs, baseline);
  }
});

// A TCP relay to the server (from localAddress) that can stop reading what
// the server sends: the server's writes on that connection then stall, as
// they do towards a client that does not read its socket.
async function stallingRelay(target, localAddress) {
  const [host, port] = target.split(':');
  const relay = { up: null, stalled: false };
  relay.server = net.createServer((down) => {
    const up = net.connect({ host, port: Number(port), localAddress });
    relay.up = up;
    down.on('data', (d) => up.write(d));
    up.on('data', (d) => {
      down.write(d);
      if (relay.stalled) up.pause();
    });
    down.on('error', () => {});
    up.on('error', () => {});
    down.on('close', () => up.destroy());
    up.on('close', () => down.destroy());
  });
  await new Promise((resolve) => relay.server.listen(0, '127.0.0.1', resolve));
  relay.address = `127.0.0.1:${relay.server.address().port}`;
  relay.stall = () => {
    relay.stalled = true;
    relay.up.pause();
  };
  relay.resume = () => {
    relay.stalled = false;
    relay.up.resume();
  };
  relay.close = () => {
    if (relay.up) relay.up.destroy();
    relay.server.close();
  };
  return relay;
}

// A ServerReflectionRequest { file_containing_symbol: symbol }, framed.
function reflectionRequest(symbol) {
  const s = Buffer.from(symbol);
  return frame(Buffer.concat([Buffer.from([0x22, s.length]), s]));
}

const REFLECT = '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo';

test('refusing a stream takes no thread: while a client that does not read holds its connection, its refused streams do not stop Health', async () => {
  const relay = await stallingRelay(ctx.server.address, '127.0.0.5');
  const window = 2 ** 31 - 1;
  const s = await RawH2.connect(relay.address, { settings: { initialWindowSize: window } });
  raws.push(s);
  try {
    s.session.setLocalWindowSize(window);
    // The address's 16 streams: a reflection stream that makes the server
    // write, and Watch streams.
    const refl = s.call(REFLECT, { body: reflectionRequest('tlsplane.v1.AgentService'), endStream: false });
    assert.notEqual(await refl.firstMessage(ANSWER_MS), null, 'reflection answers');
    const watches = [];
    for (let i = 0; i < PEER_STREAMS - 1; i++) watches.push(s.call(WATCH, { body: frame() }));
    for (const w of watches) assert.notEqual(await w.firstMessage(ANSWER_MS), null, 'a Watch is served');

    // The client stops reading, and keeps asking for 20 KiB answers until
    // the server's flow-control windows (which grow only by what the
    // server sends back) are used up: by then the server has tried to
    // write far more than any socket holds, and its writes on this
    // connection are stuck.
    relay.stall();
    await waitFor(() => {
      for (let i = 0; i < 2000; i++) refl.stream.write(reflectionRequest('tlsplane.v1.AgentService'));
      return refl.stream.writableLength >= 64 * 1024;
    }, 30000, 'the server\'s writes to the stalled client backing up');

    // Streams beyond the address's cap, more than the pool has threads:
    // each is refused, though the refusal cannot reach the client yet.
    const refused = [];
    for (let i = 0; i < 2 * POOL; i++) refused.push(s.call(WATCH, { body: frame() }));
    const ok = await within(
      api()['grpc.health.v1.Health'].Check({ service: '' }, { deadlineMs: ANSWER_MS }),
      ANSWER_MS + 1000, 'Health while refusals wait on a stalled client');
    assert.equal(ok.status, 'SERVING');
    const list = await api().CertificateService.ListCertificates({}, { deadlineMs: ANSWER_MS });
    assert.ok(Array.isArray(list.certificates));

    // Once the client reads again, it learns why.
    relay.resume();
    for (const c of refused) {
      const r = await within(c.closed, 20000, 'a refused stream');
      assert.equal(statusName(r.status), 'RESOURCE_EXHAUSTED', r.message);
      assert.equal(
        r.message,
        `too many streams: 127.0.0.5 has ${PEER_STREAMS} open streaming calls without a credential (at most ${PEER_STREAMS} per address)`,
      );
    }
  } finally {
    s.close();
    relay.close();
  }
});
