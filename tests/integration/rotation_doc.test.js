'use strict';
// docs/rotation.md as an operator runs it: every ```sh block, in order,
// with bash (lib/docblocks.js), against a real tlsplane-server whose data
// dir is the blocks' `var`, a real agent enrolled with a join token, and
// `grpcurl` on PATH as lib/grpcurl.js (grpcurl is not packaged in Debian).
// Each recipe ends with what a client of the agent sees: the internal
// certificate renewed by the server and served, the outside CA's chain
// attached and then re-keyed, lego's certificate (from pebble, with real
// HTTP-01 validation) served and renewed.
//
// A block that cannot run as written has its substitutions in BLOCKS (the
// ports, short lifetimes, pebble for Let's Encrypt), each of which must
// match; a block BLOCKS does not know fails the test.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const tls = require('node:tls');
const { Server, serverBinary } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { Pebble } = require('./lib/pebble');
const { Upstream } = require('./lib/upstream');
const { exchange } = require('./lib/tlsclient');
const { CpAgent } = require('./lib/cpagent');
const { freePorts, agentBinary } = require('./lib/agent');
const { tool } = require('./lib/tools');
const procs = require('./lib/procs');
const { uid } = require('./lib/util');
const { waitFor } = require('./lib/wait');
const docs = require('./lib/docblocks');

const REPO = path.resolve(__dirname, '../..');
const DOC = path.join(REPO, 'docs/rotation.md');

const ctx = {};
const api = () => ctx.conn.api;

// The fingerprint a client verifying against ca (PEM) for name sees.
async function served(port, ca, name) {
  const r = await exchange(port, { ca, servername: name, checkServerIdentity: tls.checkServerIdentity }, { send: 'x\n' });
  return r.ok ? r.info.fingerprint : `failed: ${r.phase}: ${r.error}`;
}

const fingerprint = (pem) => new crypto.X509Certificate(pem).fingerprint256;
const work = (f) => path.join(ctx.work, f);

async function startPebble() {
  ctx.pb = await Pebble.start();
  ctx.pebbleCa = ctx.pb.trustFile;
  ctx.pebbleRoot = ctx.pb.root;
}

before(async () => {
  for (const t of ['bash', 'jq', 'openssl', 'lego', 'pebble', 'pebble-challtestsrv']) tool(t);
  agentBinary();
  ctx.root = procs.tempDir('tlsplane-rotation-doc-');
  ctx.up = await Upstream.start({ mode: 'echo' });
  ctx.srv = await Server.start({ tls: true });
  ctx.conn = await connect(ctx.srv.address, ctx.srv.connectOptions());
  const [apiPort, shopPort] = await freePorts(2);
  ctx.ports = { api: apiPort, shop: shopPort };
  await startPebble();
  const bin = docs.toolsDir(path.join(ctx.root, 'bin'), { 'tlsplane-server': serverBinary() });
  ctx.env = { ...process.env, PATH: `${bin}${path.delimiter}${process.env.PATH}`, LEGO_CA_CERTIFICATES: ctx.pebbleCa };
  for (const k of ['TLSPLANE_TOKEN', 'TLSPLANE_LISTEN', 'TLSPLANE_CERTIFICATE']) delete ctx.env[k];
  ctx.work = path.join(ctx.root, 'work');
  fs.mkdirSync(ctx.work);
  fs.symlinkSync(ctx.srv.dataDir, work('var'));
  fs.symlinkSync(path.join(REPO, 'scripts'), work('scripts'));
  ctx.page = docs.pageRunner({ doc: 'docs/rotation.md', cwd: ctx.work, env: ctx.env, address: ctx.srv.address });
  const tok = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'doc-a' } });
  ctx.agent = await CpAgent.start(ctx.srv, { name: 'doc-a', joinToken: tok.secret, wait: 'connected' });
});

after(async () => {
  if (ctx.agent) await ctx.agent.stopClean();
  if (ctx.conn) ctx.conn.close();
  if (ctx.srv && ctx.srv.running) await ctx.srv.stopClean();
  if (ctx.up) await ctx.up.close();
  if (ctx.pb) ctx.pb.stop();
});

// Every block runs after the first (S and g), in the working directory.
const runBlock = (block, subs, opts) => ctx.page.run(block, subs, opts);

const legoSubs = () => [
  { from: 'https://acme-v02.api.letsencrypt.org/directory', to: ctx.pb.directory, why: 'pebble for Let\'s Encrypt' },
  { from: '--http.port :80', to: `--http.port 127.0.0.1:${ctx.pb.httpPort}`, why: 'pebble\'s httpPort, on loopback' },
  { from: '/var/lib/lego', to: path.join(ctx.root, 'lego'), why: 'a temporary lego directory' },
];

// By first line: what each block is, how it runs and what it must show.
const BLOCKS = [
  {
    first: /^S=127\.0\.0\.1:7443$/,
    async run(block) {
      await runBlock(block);
      ctx.page.setPrelude(block);
    },
  },
  {
    first: /^g -d '\{"tokenId": "rotation-job"/,
    async run(block) {
      await runBlock(block);
      const secret = fs.readFileSync(work('var/rotation-job.token'), 'utf8').trim();
      assert.match(secret, /^tlsp_rotation-job_/);
      assert.equal(fs.statSync(work('var/rotation-job.token')).mode & 0o777, 0o600);
    },
  },
  {
    first: /^g -d '\{"issuerId": "internal"/,
    async run(block) {
      const r = await runBlock(block, [
        { from: '"lifetime": "2592000s", "renewal": {"renewBefore": "864000s"}', to: '"lifetime": "60s", "renewal": {"renewBefore": "40s"}', why: 'a 60 s certificate renewed after 20 s' },
        { from: '127.0.0.1:9450', to: `127.0.0.1:${ctx.ports.api}`, why: 'a free port' },
        { from: '127.0.0.1:8080', to: ctx.up.address, why: 'the test\'s upstream' },
      ]);
      assert.deepEqual(docs.jsonOf(r.sections, /jq '\{name, type, commonName\}'/), { name: 'issuers/internal', type: 'INTERNAL_CA', commonName: 'Example Internal CA' });
      ctx.api = docs.jsonOf(r.sections, /jq '\{name, serialNumber, notAfter, renewalTime\}'/);
      assert.equal(ctx.api.name, 'certificates/api');
      assert.ok(ctx.api.serialNumber && ctx.api.renewalTime, JSON.stringify(ctx.api));
    },
  },
  {
    first: /^g -d '\{"name": "issuers\/internal"\}'/,
    async run(block) {
      const r = await runBlock(block);
      const ca = fs.readFileSync(work('internal-ca.pem'), 'utf8');
      assert.match(ca, /BEGIN CERTIFICATE/);
      const state = docs.jsonOf(r.sections, /jq '\{renewalTime/);
      assert.ok(state.renewalTime, JSON.stringify(state));
      assert.equal(state.renewalFailures, null, 'no failure yet');
      // What the recipe promises: served, then renewed by the server and
      // served again, verified against the issuer's certificate.
      const first = await api().CertificateService.GetCertificate({ name: 'certificates/api' });
      await waitFor('the agent serves certificates/api', async () => (await served(ctx.ports.api, ca, 'api.internal.example')) === first.sha256Fingerprint);
      const renewed = await waitFor('the server renews certificates/api', async () => {
        const c = await api().CertificateService.GetCertificate({ name: 'certificates/api' });
        return c.serialNumber !== first.serialNumber ? c : null;
      }, { timeoutMs: 45000 });
      assert.equal(renewed.renewalFailures, 0);
      assert.ok(renewed.lastRenewalTime);
      await waitFor('the agent serves the renewal', async () => (await served(ctx.ports.api, ca, 'api.internal.example')) === renewed.sha256Fingerprint);
    },
  },
  {
    first: /^tlsplane-server call --server \$S --data-dir var --max-time 5 AuditService\/WatchEvents/,
    async run(block) {
      const r = await runBlock(block, [{ from: '--max-time 5', to: '--max-time 2', why: 'a shorter wait' }]);
      const lines = docs.outputOf(r.sections, /WatchEvents/).trim().split('\n').filter(Boolean);
      for (const l of lines) assert.ok(['RENEW_SOON', 'RENEWED', 'RENEWAL_FAILED'].includes(JSON.parse(l).type), l);
    },
  },
  {
    first: /^mkdir -p outside-ca && cd outside-ca$/,
    async run(block) {
      await runBlock(block);
      assert.ok(fs.existsSync(work('outside-ca/ca.pem')) && fs.existsSync(work('outside-ca/ca.cnf')));
    },
  },
  {
    first: /^g -d '\{"certificateId": "shop"/,
    async run(block) {
      const r = await runBlock(block);
      assert.match(docs.outputOf(r.sections, /openssl req -in shop\.csr/), /verify OK[\s\S]*subject=O ?= ?Example, CN ?= ?shop\.example\.com/);
      const shop = docs.jsonOf(r.sections, /jq '\{name, serialNumber, issuer, hasPrivateKey\}'/);
      assert.equal(shop.name, 'certificates/shop');
      assert.equal(shop.hasPrivateKey, true);
      assert.match(shop.issuer, /CN=Example Outside CA/);
      ctx.shop = shop;
    },
  },
  {
    first: /^g -d '\{"tlsContextId": "shop"/,
    async run(block) {
      await runBlock(block, [
        { from: '127.0.0.1:9451', to: `127.0.0.1:${ctx.ports.shop}`, why: 'a free port' },
        { from: '127.0.0.1:8080', to: ctx.up.address, why: 'the test\'s upstream' },
      ]);
      const ca = fs.readFileSync(work('outside-ca/ca.pem'), 'utf8');
      const c = await api().CertificateService.GetCertificate({ name: 'certificates/shop' });
      await waitFor('the agent serves the outside CA\'s chain', async () => (await served(ctx.ports.shop, ca, 'shop.example.com')) === c.sha256Fingerprint);
    },
  },
  {
    first: /^g -d '\{"certificate": "certificates\/shop"/,
    async run(block) {
      const r = await runBlock(block);
      const serial = docs.outputOf(r.sections, /jq -r \.serialNumber/).trim();
      assert.notEqual(serial, ctx.shop.serialNumber, 'a new certificate');
      const c = await api().CertificateService.GetCertificate({ name: 'certificates/shop' });
      assert.equal(c.serialNumber, serial);
      assert.equal(c.pendingRequest, null, 'the request ended');
      ctx.shopRenewed = c;
    },
  },
  {
    first: /^export TLSPLANE_LISTEN=\$S/,
    async run(block) {
      const r = await runBlock(block, legoSubs(), { timeoutMs: 180000 });
      assert.match(r.stdout + r.stderr, /tlsplane-lego-hook: certificates\/www written/);
      const c = await api().CertificateService.GetCertificate({ name: 'certificates/www' });
      assert.deepEqual(c.dnsNames, ['www.example.com']);
      // "give it a TLS context and a listener as above"
      const [port] = await freePorts(1);
      ctx.ports.www = port;
      await api().TlsContextService.CreateTlsContext({ tlsContextId: 'www', tlsContext: { certificates: ['certificates/www'] } });
      await api().ListenerService.CreateListener({ listenerId: 'www', listener: { address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/www', upstream: ctx.up.address } });
      await waitFor('the agent serves lego\'s certificate', async () => (await served(port, ctx.pebbleRoot, 'www.example.com')) === c.sha256Fingerprint);
      // The renewal block runs with this block's environment.
      ctx.legoEnv = block.text.split('\n').filter((l) => l.startsWith('export ')).join('\n') + '\n';
      ctx.www = c;
    },
  },
  {
    first: /^lego --server https:\/\/acme-v02/,
    async run(block) {
      const subs = [...legoSubs(), { from: '--days 30', to: '--days 100000 --no-random-sleep', why: 'pebble\'s certificates last 5 years: renew now' }];
      const saved = ctx.page.prelude;
      ctx.page.prelude += ctx.legoEnv;
      let r;
      try {
        r = await runBlock(block, subs, { timeoutMs: 180000 });
      } finally {
        ctx.page.prelude = saved;
      }
      const c = await api().CertificateService.GetCertificate({ name: 'certificates/www' });
      assert.notEqual(c.serialNumber, ctx.www.serialNumber);
      assert.match(r.stdout + r.stderr, new RegExp(`revision ${c.revision} is served by every agent`));
      // The hook returned: no waiting here.
      assert.equal(await served(ctx.ports.www, ctx.pebbleRoot, 'www.example.com'), c.sha256Fingerprint);
    },
  },
  {
    first: /^pebble-challtestsrv /,
    // Not run: the harness starts pebble and challtestsrv with these flags
    // on free ports (startPebble), and the two lego blocks above ran
    // against them.
    async run(block) {
      for (const flag of ['-defaultIPv4 127.0.0.1', "-http01 ''", 'PEBBLE_VA_NOSLEEP=1', '-dnsserver 127.0.0.1:8053', '--run-hook ./scripts/lego-hook']) {
        assert.ok(block.text.includes(flag), `the pebble block shows ${flag}`);
      }
    },
  },
  {
    first: /^rev=\$\(g -d '\{"name": "certificates\/shop"\}'/,
    async run(block) {
      const r = await runBlock(block);
      const ev = JSON.parse(r.stdout.trim().split('\n').pop());
      assert.equal(ev.type, 'ROLLOUT_APPLIED');
      assert.ok(Number(ev.targetRevision) >= Number(ctx.shopRenewed.revision), JSON.stringify(ev));
      assert.equal(await served(ctx.ports.shop, fs.readFileSync(work('outside-ca/ca.pem'), 'utf8'), 'shop.example.com'), ctx.shopRenewed.sha256Fingerprint);
    },
  },
];

test('every ```sh block of docs/rotation.md runs as written, in order, and does what the page says', { timeout: 600000 }, async () => {
  const blocks = docs.shBlocks(DOC);
  assert.ok(blocks.length >= 10, `${blocks.length} blocks`);
  for (const block of blocks) {
    const known = BLOCKS.filter((b) => b.first.test(block.first));
    assert.equal(known.length, 1, `docs/rotation.md line ${block.line}: a block rotation_doc.test.js does not know (${block.first}): add it to BLOCKS`);
    await known[0].run(block);
  }
  assert.equal(blocks.length, BLOCKS.length, 'every entry of BLOCKS matched a block');
});
