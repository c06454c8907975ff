'use strict';
// The standalone command line and start (agent/README.md): --help, bad
// usage (exit 2), a config or metrics address that cannot be used at start
// (exit 1), a listener that cannot be served at start (the agent serves the
// others), and the /metrics endpoint's answers. A clean SIGTERM (exit 0) is
// asserted at the end of every agent_*.test.js file.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const { pki } = require('./lib/pki');
const { Agent, agentBinary, tlsContext, listener, snapshot } = require('./lib/agent');
const { Upstream } = require('./lib/upstream');
const { exchange } = require('./lib/tlsclient');

function request(address, method, urlPath) {
  return new Promise((resolve, reject) => {
    const [host, port] = address.split(':');
    const req = http.request({ host, port, method, path: urlPath, timeout: 5000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${urlPath}: no answer`)));
    req.on('error', reject);
    req.end();
  });
}

function run(args, { env = {} } = {}) {
  const r = spawnSync(agentBinary(), args, {
    encoding: 'utf8',
    timeout: 15000,
    env: { ...process.env, TLSPLANE_CONFIG: '', TLSPLANE_WORKERS: '', TLSPLANE_METRICS_LISTEN: '', ...env },
  });
  return { status: r.status, signal: r.signal, out: r.stdout + r.stderr };
}

describe('tlsplane-agent command line', () => {
  let tmp;
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-cli-'));
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  test('--help prints the usage and exits 0', () => {
    const r = run(['--help']);
    assert.equal(r.status, 0, r.out);
    assert.match(r.out, /--config/);
    assert.match(r.out, /--metrics-listen/);
    assert.match(r.out, /--workers/);
  });

  test('bad usage exits 2: no --config, an unknown flag, --workers 0', () => {
    for (const args of [[], ['--config', path.join(tmp, 'x.json'), '--no-such-flag'], ['--config', path.join(tmp, 'x.json'), '--workers', '0']]) {
      const r = run(args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.out}`);
    }
  });

  test('a config that cannot be loaded at start exits 1 and says why', () => {
    const missing = run(['--config', path.join(tmp, 'missing.json'), '--metrics-listen', 'off']);
    assert.equal(missing.status, 1, missing.out);
    assert.match(missing.out, /missing\.json/);
    const badFile = path.join(tmp, 'bad.json');
    fs.writeFileSync(badFile, '{"revision": "1", "listeners": [');
    const bad = run(['--config', badFile, '--metrics-listen', 'off']);
    assert.equal(bad.status, 1, bad.out);
    assert.match(bad.out, /bad\.json/);
  });

  test('a metrics address that cannot be bound exits 1', async () => {
    const squatter = net.createServer();
    await new Promise((resolve) => squatter.listen(0, '127.0.0.1', resolve));
    try {
      const good = path.join(tmp, 'empty.json');
      fs.writeFileSync(good, '{"revision": "1", "listeners": []}');
      const r = run(['--config', good, '--metrics-listen', `127.0.0.1:${squatter.address().port}`]);
      assert.equal(r.status, 1, r.out);
    } finally {
      await new Promise((resolve) => squatter.close(resolve));
    }
  });

  test('a listener that cannot be served at start does not stop the agent: the others are served, it shows up 0', async () => {
    const p = pki();
    const up = await Upstream.start({ mode: 'echo' });
    let agent;
    try {
      agent = await Agent.start(snapshot(1, [
        listener('good', { upstream: up.address, defaultContext: tlsContext('good', { certs: [p.rsa] }) }),
        listener('broken', { upstream: up.address, defaultContext: tlsContext('broken', { certs: [p.rsa], policy: { ciphers: 'NOT-A-CIPHER' } }) }),
      ]), { expectAllApplied: false });
      assert.match(agent.log(), /listener=listeners\/broken not applied: .*cipher/);
      const r = await exchange(agent.port('good'), {});
      assert.equal(r.ok, true, r.error);
      const m = await agent.metrics();
      assert.equal(m.get('tlsplane_listener_up', { listener: 'listeners/good' }), 1);
      assert.equal(m.get('tlsplane_listener_up', { listener: 'listeners/broken' }), 0);
      // server.address(): the bound address, while served.
      assert.deepEqual(m.find('tlsplane_listener_info', { listener: 'listeners/good' }).map((x) => x.labels),
        [{ listener: 'listeners/good', address: `127.0.0.1:${agent.port('good')}`, upstream: up.address }]);
      assert.deepEqual(m.find('tlsplane_listener_info', { listener: 'listeners/broken' }), []);
      assert.equal(m.get('tlsplane_config_apply_total', { result: 'nack' }), 1);
      // /metrics: HEAD too; other paths 404, other methods 405.
      assert.equal(await request(agent.metricsAddress, 'HEAD', '/metrics'), 200);
      assert.equal(await request(agent.metricsAddress, 'GET', '/nothing'), 404);
      assert.equal(await request(agent.metricsAddress, 'POST', '/metrics'), 405);
    } finally {
      if (agent) await agent.stopClean();
      await up.close();
    }
  });
});
