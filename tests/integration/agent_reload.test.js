'use strict';
// SIGHUP: the snapshot file read again and applied listener by listener
// (DESIGN.md, invariants 2 and 3): a changed certificate is served to new
// connections while one opened before keeps working on the old; a listener
// whose new version cannot be built or bound keeps serving its previous
// version while the others move on; a file that cannot be read changes
// nothing.

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');

const { pki } = require('./lib/pki');
const { Agent, tlsContext, listener, snapshot, failOnCrash } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { exchange, openTls, echoOn } = require('./lib/tlsclient');

describe('SIGHUP reloads', () => {
  let p;
  let up;
  let agent;
  let snap; // (revision, {a, b}) -> the snapshot, each listener given as its default context's options

  async function servedBy(name) {
    const r = await exchange(agent.port(name), {});
    assert.equal(r.ok, true, `${name}: ${r.error}`);
    return r.info.fingerprint;
  }

  before(async () => {
    p = pki();
    up = await Upstream.start({ mode: 'echo' });
    snap = (rev, { a, b, aAddress, bSni = [] }) => snapshot(rev, [
      listener('a', { upstream: up.address, defaultContext: tlsContext('a', a), ...(aAddress ? { address: aAddress } : {}) }),
      listener('b', {
        upstream: up.address,
        defaultContext: tlsContext('b', b),
        sni: bSni.map(([host, ctxName, ctxOpts]) => [host, tlsContext(ctxName, ctxOpts)]),
      }),
    ]);
    agent = await Agent.start(snap(1, { a: { certs: [p.rsa] }, b: { certs: [p.ecdsa2] } }));
  });

  after(async () => {
    if (agent) await agent.stopClean();
    if (up) await up.close();
  });
  failOnCrash({ afterEach }, () => [agent]);

  test('a swapped certificate is served to new connections; a connection opened before the reload keeps working on the old one and completes', async () => {
    assert.equal(await servedBy('a'), p.rsa.fingerprint);
    const before = await openTls(agent.port('a'));
    assert.equal(before.info.fingerprint, p.rsa.fingerprint);
    await echoOn(before.sock, 'before the reload\n');

    const port = agent.port('a');
    const r = await agent.reload(snap(2, { a: { certs: [p.rsaRenewed] }, b: { certs: [p.ecdsa2] } }));
    assert.equal(r.applied, true, r.text);
    assert.deepEqual(r.failed, []);
    assert.equal(agent.port('a'), port, 'the listener moved');
    assert.equal(await servedBy('a'), p.rsaRenewed.fingerprint, 'new connections still get the old certificate');

    // The old connection: still there, still proxying, then an orderly end.
    await echoOn(before.sock, 'after the reload\n');
    await new Promise((resolve, reject) => {
      before.sock.on('end', resolve);
      before.sock.on('error', reject);
      before.sock.end();
    });
    const m = await agent.metrics();
    assert.equal(m.get('tlsplane_listener_applied_revision', { listener: 'listeners/a' }), 2);
    assert.equal(m.get('tlsplane_config_revision'), 2);
  });

  test('a listener whose new cipher list OpenSSL rejects keeps serving its previous version; another listener in the same file moves on', async () => {
    const m0 = await agent.metrics();
    const r = await agent.reload(snap(3, {
      a: { certs: [p.ecdsa], policy: { ciphers: 'NOT-A-CIPHER:ALSO-NOT' } },
      b: { certs: [p.ecdsa] },
    }));
    assert.equal(r.applied, true, r.text);
    assert.deepEqual(r.failed.map((f) => f.listener), ['listeners/a'], r.text);
    assert.match(r.failed[0].reason, /cipher/, 'the reason names the cipher list');
    assert.equal(await servedBy('a'), p.rsaRenewed.fingerprint, 'listener a must keep revision 2');
    assert.equal(await servedBy('b'), p.ecdsa.fingerprint, 'listener b must move to revision 3');
    const m = await agent.metrics();
    assert.equal(m.get('tlsplane_listener_applied_revision', { listener: 'listeners/a' }), 2);
    assert.equal(m.get('tlsplane_listener_applied_revision', { listener: 'listeners/b' }), 3);
    assert.equal(m.get('tlsplane_listener_up', { listener: 'listeners/a' }), 1);
    assert.equal(m.get('tlsplane_config_apply_total', { result: 'nack' }) - m0.get('tlsplane_config_apply_total', { result: 'nack' }), 1);
  });

  test('a listener whose new address is already taken keeps serving on its old one; the other moves on', async () => {
    const squatter = net.createServer(() => {});
    await new Promise((resolve) => squatter.listen(0, '127.0.0.1', resolve));
    const taken = `127.0.0.1:${squatter.address().port}`;
    const port = agent.port('a');
    try {
      const r = await agent.reload(snap(4, {
        a: { certs: [p.ecdsa] },
        aAddress: taken,
        b: { certs: [p.ecdsa2] },
      }));
      assert.deepEqual(r.failed.map((f) => f.listener), ['listeners/a'], r.text);
      assert.match(r.failed[0].reason, /address|bind|in use/i);
      assert.equal(agent.port('a'), port);
      assert.equal(await servedBy('a'), p.rsaRenewed.fingerprint, 'listener a must keep revision 2 on its old port');
      assert.equal(await servedBy('b'), p.ecdsa2.fingerprint, 'listener b must move to revision 4');
    } finally {
      await new Promise((resolve) => squatter.close(resolve));
    }
  });

  test('an invalid JSON file at SIGHUP changes nothing, and a valid one after it applies', async () => {
    const m0 = await agent.metrics();
    const fpA = await servedBy('a');
    const fpB = await servedBy('b');
    const bad = await agent.reload('{"revision": "5", "listeners": [ {"listener": ');
    assert.equal(bad.applied, false);
    assert.ok(bad.error, `no "config not applied" line: ${bad.text}`);
    const wrongField = await agent.reload('{"revision": "5", "listeners": [], "noSuchField": 1}');
    assert.ok(wrongField.error, `an unknown field was accepted: ${wrongField.text}`);
    assert.match(wrongField.error, /noSuchField/);
    assert.equal(await servedBy('a'), fpA);
    assert.equal(await servedBy('b'), fpB);
    const m = await agent.metrics();
    assert.equal(m.get('tlsplane_config_revision'), m0.get('tlsplane_config_revision'), 'the revision moved');
    assert.equal(m.get('tlsplane_config_apply_total', { result: 'error' }) - m0.get('tlsplane_config_apply_total', { result: 'error' }), 2);
    assert.equal(m.get('tlsplane_listener_up', { listener: 'listeners/b' }), 1);

    const good = await agent.reload(snap(6, { a: { certs: [p.ecdsa] }, b: { certs: [p.rsa] } }));
    assert.equal(good.applied, true, good.text);
    assert.deepEqual(good.failed, []);
    assert.equal(await servedBy('a'), p.ecdsa.fingerprint);
    assert.equal(await servedBy('b'), p.rsa.fingerprint);
  });

  test('SNI contexts are added, replaced and removed live (server.addContext, and what Node cannot: replace, remove)', async () => {
    const base = { a: { certs: [p.ecdsa] }, b: { certs: [p.rsa] } };
    const sni = async () => (await exchange(agent.port('b'), { servername: 'new.example.com' })).info.fingerprint;
    assert.equal(await sni(), p.rsa.fingerprint, 'before: the default context');
    let r = await agent.reload(snap(7, { ...base, bSni: [['new.example.com', 'b-new', { certs: [p.ecdsa] }]] }));
    assert.deepEqual(r.failed, [], r.text);
    assert.equal(await sni(), p.ecdsa.fingerprint, 'added');
    r = await agent.reload(snap(8, { ...base, bSni: [['new.example.com', 'b-new', { certs: [p.ecdsa2] }]] }));
    assert.deepEqual(r.failed, [], r.text);
    assert.equal(await sni(), p.ecdsa2.fingerprint, 'replaced');
    r = await agent.reload(snap(9, base));
    assert.deepEqual(r.failed, [], r.text);
    assert.equal(await sni(), p.rsa.fingerprint, 'removed: back to the default context');
  });

  test('secureProtocol SSLv3_method: refused with a clear error (OpenSSL 3 has no SSL 3.0); the listener keeps its version', async () => {
    const r = await agent.reload(snap(10, { a: { certs: [p.rsa], policy: { secureProtocol: 'SSLv3_method' } }, b: { certs: [p.rsa] } }));
    assert.deepEqual(r.failed.map((f) => f.listener), ['listeners/a'], r.text);
    assert.match(r.failed[0].reason, /secure_protocol.*(SSL ?3|SSLv3)/i);
    assert.equal(await servedBy('a'), p.ecdsa.fingerprint, 'listener a must keep its previous version');
    // dhparam under 1024 bits: the seed throws; the listener is not applied.
    const dh = await agent.reload(snap(11, { a: { certs: [p.rsa], policy: { dhparamPem: p.dh512 } }, b: { certs: [p.rsa] } }));
    assert.deepEqual(dh.failed.map((f) => f.listener), ['listeners/a'], dh.text);
    assert.match(dh.failed[0].reason, /dhparam/);
    assert.equal(await servedBy('a'), p.ecdsa.fingerprint);
  });

  test('listeners on port 0: each gets a free port of its own (none is refused as a duplicate address)', async () => {
    const ctx = (name) => tlsContext(name, { certs: [p.rsa] });
    const r = await agent.reload(snapshot(12, [
      listener('a', { upstream: up.address, defaultContext: tlsContext('a', { certs: [p.ecdsa] }) }),
      listener('b', { upstream: up.address, defaultContext: tlsContext('b', { certs: [p.rsa] }) }),
      listener('zero-1', { upstream: up.address, address: '127.0.0.1:0', defaultContext: ctx('zero-1') }),
      listener('zero-2', { upstream: up.address, address: '127.0.0.1:0', defaultContext: ctx('zero-2') }),
    ]));
    assert.deepEqual(r.failed, [], `listeners refused: ${r.text}`);
    assert.notEqual(agent.port('zero-1'), agent.port('zero-2'));
    for (const name of ['zero-1', 'zero-2']) assert.equal(await servedBy(name), p.rsa.fingerprint);
  });

  test('SIGTERM (server.close): no new connections, an idle established one ends with close_notify, exit status 0', async () => {
    const { sock } = await openTls(agent.port('b'));
    await echoOn(sock, 'before SIGTERM\n');
    const ended = new Promise((resolve) => {
      let end = false;
      let error = null;
      sock.on('end', () => {
        end = true;
      });
      sock.on('error', (e) => {
        error = e.code || e.message;
      });
      sock.on('close', () => resolve({ end, error }));
    });
    const port = agent.port('b');
    const stopping = agent.stopClean(); // SIGTERM; asserts exit 0
    // The listening sockets close: connecting is refused (bounded wait
    // for the workers to act on the signal).
    let refused = false;
    for (let i = 0; i < 30 && !refused; i++) {
      refused = await new Promise((resolve) => {
        const c = net.connect({ host: '127.0.0.1', port });
        c.on('connect', () => {
          c.destroy();
          resolve(false);
        });
        c.on('error', (e) => resolve(e.code === 'ECONNREFUSED'));
      });
      if (!refused) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(refused, true, 'still accepting connections after SIGTERM');
    assert.deepEqual(await ended, { end: true, error: null }, 'the idle connection was not ended with close_notify');
    await stopping;
  });
});
