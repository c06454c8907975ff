'use strict';
// One SSL_CTX per distinct context, agent-wide (standalone mode): the
// agent keeps every built TLS context under its content hash, shared by
// every listener and version that names the same content. 200 listeners
// over 2 contexts build 2 SSL_CTXs; a certificate change rebuilds only
// the context that uses it; a context nothing uses any more is freed; a
// context that cannot be built is not kept and changes nothing. Read from
// /metrics: tlsplane_ssl_ctx_builds_total and tlsplane_ssl_ctxs.

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { exchange, openTls } = require('./lib/tlsclient');

const N = 200;

describe('contexts shared by many listeners (standalone)', () => {
  let p;
  let up;
  let agent;
  let snap; // (revision, {red, blue}) -> N listeners, even ones on red, odd ones on blue

  async function servedBy(name) {
    const r = await exchange(agent.port(name), {});
    assert.equal(r.ok, true, `${name}: ${r.error}`);
    return r.info.fingerprint;
  }

  function ctxMetrics(m) {
    return { builds: m.get('tlsplane_ssl_ctx_builds_total'), live: m.get('tlsplane_ssl_ctxs') };
  }

  before(async () => {
    p = pki();
    up = await Upstream.start({ mode: 'echo' });
    snap = (rev, { red, blue }) => {
      const r = tlsContext('red', red);
      const b = tlsContext('blue', blue);
      const ls = [];
      for (let i = 0; i < N; i++) {
        ls.push(listener(`l${i}`, { upstream: up.address, defaultContext: i % 2 === 0 ? r : b }));
      }
      return snapshot(rev, ls);
    };
    agent = await Agent.start(snap(1, { red: { certs: [p.rsa] }, blue: { certs: [p.ecdsa] } }), { workers: 1 });
  });

  after(async () => {
    if (agent) await agent.stopClean();
    if (up) await up.close();
  });
  failOnCrash({ afterEach }, () => [agent]);

  test(`${N} listeners over 2 contexts: 2 SSL_CTXs built, each listener serving its own`, async () => {
    const m = await agent.metrics();
    assert.deepEqual(ctxMetrics(m), { builds: 2, live: 2 });
    assert.equal(await servedBy('l0'), p.rsa.fingerprint);
    assert.equal(await servedBy('l1'), p.ecdsa.fingerprint);
    assert.equal(await servedBy(`l${N - 2}`), p.rsa.fingerprint);
    assert.equal(await servedBy(`l${N - 1}`), p.ecdsa.fingerprint);
  });

  test('the same file again builds nothing', async () => {
    const r = await agent.reload(snap(2, { red: { certs: [p.rsa] }, blue: { certs: [p.ecdsa] } }));
    assert.equal(r.applied, true, r.text);
    assert.deepEqual(ctxMetrics(await agent.metrics()), { builds: 2, live: 2 });
  });

  test('a certificate change rebuilds only the context that uses it (+1, not +100); the old one is freed with its last user, a connection in flight', async () => {
    const held = await openTls(agent.port('l0')); // keeps red's old SSL_CTX in use
    assert.equal(held.info.fingerprint, p.rsa.fingerprint);
    const r = await agent.reload(snap(3, { red: { certs: [p.rsaRenewed] }, blue: { certs: [p.ecdsa] } }));
    assert.equal(r.applied, true, r.text);
    assert.deepEqual(r.failed, []);
    let m = await agent.metrics();
    assert.equal(m.get('tlsplane_ssl_ctx_builds_total'), 3);
    assert.equal(m.get('tlsplane_ssl_ctxs'), 3, 'the connection in flight keeps the old red');
    assert.equal(await servedBy('l0'), p.rsaRenewed.fingerprint);
    assert.equal(await servedBy(`l${N - 2}`), p.rsaRenewed.fingerprint);
    assert.equal(await servedBy('l1'), p.ecdsa.fingerprint);
    held.sock.destroy();
    m = await agent.waitForMetrics((x) => x.get('tlsplane_ssl_ctxs') === 2, { what: 'the old red freed' });
    assert.equal(m.get('tlsplane_ssl_ctx_builds_total'), 3);
  });

  test('a context that cannot be built is not kept: its listeners keep their version, nothing else is built', async () => {
    const r = await agent.reload(snap(4, {
      red: { certs: [p.rsaRenewed], policy: { ciphers: 'NOT-A-CIPHER' } },
      blue: { certs: [p.ecdsa] },
    }));
    assert.equal(r.applied, true, r.text);
    assert.equal(r.failed.length, N / 2, r.text);
    const m = await agent.metrics();
    // The bad red is tried, once per listener that names it, and never kept.
    assert.equal(m.get('tlsplane_ssl_ctxs'), 2);
    assert.equal(m.get('tlsplane_ssl_ctx_builds_total'), 3, 'a failed build counted as a build');
    assert.equal(await servedBy('l0'), p.rsaRenewed.fingerprint, 'l0 lost its previous version');
  });
});
