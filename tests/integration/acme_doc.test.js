'use strict';
// docs/acme.md as an operator runs it: every ```sh block, in order, with
// bash (lib/docblocks.js), against a real tlsplane-server whose data dir
// is the blocks' `var`, a real agent enrolled with a join token, `grpcurl`
// on PATH as lib/grpcurl.js, and pebble (Let's Encrypt's test CA) for
// Let's Encrypt and for the CA requiring an External Account Binding, with
// real validation: pebble resolves www.example.com through challtestsrv
// to 127.0.0.1 and connects to the agent's listener (pebble's tlsPort),
// which answers tls-alpn-01. What the page promises is checked as a user
// sees it: the issued chain served by the agent, verified against pebble's
// root, first from the staging issuer, then from the production one.
//
// The only substitutions are those that must be made (the ports, pebble's
// directory and the CA that verifies its HTTPS for Let's Encrypt's, the EAB
// key pebble was given, pebble's root for the system's), each of which must
// match; a block BLOCKS does not know fails the test.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const { spawnSync } = require('node:child_process');
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
const DOC = path.join(REPO, 'docs/acme.md');
const NAME = 'www.example.com';
const EAB_KID = 'doc-kid';
const EAB_KEY = crypto.randomBytes(32).toString('base64url');

const ctx = {};
const api = () => ctx.conn.api;
const work = (f) => path.join(ctx.work, f);
const fingerprint = (pem) => new crypto.X509Certificate(pem).fingerprint256;

// The fingerprint a client verifying against pebble's root for NAME sees.
async function served() {
  const r = await exchange(ctx.port, { ca: ctx.pb.root, servername: NAME, checkServerIdentity: tls.checkServerIdentity }, { send: 'x\n' });
  return r.ok ? r.info.fingerprint : `failed: ${r.phase}: ${r.error}`;
}

before(async () => {
  for (const t of ['bash', 'jq', 'openssl', 'pebble', 'pebble-challtestsrv']) tool(t);
  agentBinary();
  ctx.root = procs.tempDir('tlsplane-acme-doc-');
  [ctx.port] = await freePorts(1);
  [ctx.pb, ctx.eab] = await Promise.all([Pebble.start({ tlsPort: ctx.port }), Pebble.start({ eabKeys: { [EAB_KID]: EAB_KEY } })]);
  ctx.up = await Upstream.start({ mode: 'echo' });
  // A first retry after one second instead of one minute: the failure
  // shown by "When it fails" is retried within the test.
  ctx.srv = await Server.start({ tls: true, env: { TLSPLANE_RENEW_RETRY_MS: '1000', TLSPLANE_ACME_RETRY_MS: '1000' } });
  ctx.conn = await connect(ctx.srv.address, ctx.srv.connectOptions());
  const bin = docs.toolsDir(path.join(ctx.root, 'bin'), { 'tlsplane-server': serverBinary() });
  ctx.work = path.join(ctx.root, 'work');
  fs.mkdirSync(ctx.work);
  ctx.page = docs.pageRunner({ doc: 'docs/acme.md', cwd: ctx.work, env: { ...process.env, PATH: `${bin}${path.delimiter}${process.env.PATH}` }, address: ctx.srv.address });
  fs.symlinkSync(ctx.srv.dataDir, work('var'));
  fs.writeFileSync(work('pebble-root.pem'), ctx.pb.root);
  const tok = await api().TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'doc-a' } });
  ctx.agent = await CpAgent.start(ctx.srv, { name: 'doc-a', joinToken: tok.secret, wait: 'connected' });
});

after(async () => {
  if (ctx.agent) await ctx.agent.stopClean();
  if (ctx.conn) ctx.conn.close();
  if (ctx.srv && ctx.srv.running) await ctx.srv.stopClean();
  if (ctx.up) await ctx.up.close();
  if (ctx.pb) ctx.pb.stop();
  if (ctx.eab) ctx.eab.stop();
});

// Every block runs after the first (S and g), in the working directory.
const runBlock = (block, subs) => ctx.page.run(block, subs);

// pebble for an ACME directory: its URL, and the CA that verifies its
// HTTPS (Let's Encrypt's is verified by the system's roots).
const pebbleFor = (url, pb) => [
  { from: url, to: pb.directory, why: 'pebble for the CA' },
  { from: '"acmeTermsAgreed": true', to: `"acmeTermsAgreed": true, "acmeCaPem": ${JSON.stringify(fs.readFileSync(pb.trustFile, 'utf8'))}`, why: 'the CA of pebble\'s HTTPS' },
];
const STAGING = 'https://acme-staging-v02.api.letsencrypt.org/directory';
const PRODUCTION = 'https://acme-v02.api.letsencrypt.org/directory';
const toAgent = () => ({ from: '-connect www.example.com:443', to: `-connect 127.0.0.1:${ctx.port}`, why: 'the agent listener, pebble\'s tlsPort' });

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
    first: /^g -d '\{"issuerId": "letsencrypt-staging"/,
    async run(block) {
      const r = await runBlock(block, pebbleFor(STAGING, ctx.pb));
      assert.deepEqual(docs.jsonOf(r.sections, /jq '\{name, type, acmeAccountStatus\}'/), { name: 'issuers/letsencrypt-staging', type: 'ACME', acmeAccountStatus: 'pending' });
    },
  },
  {
    first: /^for i in \$\(seq 30\); do$/,
    async run(block) {
      const r = await runBlock(block);
      const got = docs.jsonOf(r.sections, /jq '\{acmeAccountStatus, acmeAccountUrl, acmeLastError\}'/);
      assert.equal(got.acmeAccountStatus, 'valid', JSON.stringify(got));
      assert.ok(got.acmeAccountUrl.startsWith(new URL(ctx.pb.directory).origin + '/'), got.acmeAccountUrl);
      assert.equal(got.acmeLastError, null, 'no error after a success');
    },
  },
  {
    first: /^g -d '\{"issuerId": "zerossl"/,
    async run(block) {
      const r = await runBlock(block, [
        ...pebbleFor('https://acme.zerossl.com/v2/DV90', ctx.eab),
        { from: 'kid-from-the-console', to: EAB_KID, why: 'the key identifier pebble was given' },
        { from: 'hmac-key-from-the-console', to: EAB_KEY, why: 'the MAC key pebble was given' },
      ]);
      assert.deepEqual(docs.jsonOf(r.sections, /jq '\{name, acmeEabKid, acmeAccountStatus\}'/), { name: 'issuers/zerossl', acmeEabKid: EAB_KID, acmeAccountStatus: 'pending' });
      // pebble requires the binding: the account is registered with it.
      const g = await waitFor('the EAB account is valid', async () => {
        const i = await api().IssuerService.GetIssuer({ name: 'issuers/zerossl' });
        return i.acmeAccountStatus === 'valid' ? i : null;
      }, { timeoutMs: 30000 });
      assert.doesNotMatch(JSON.stringify(g), new RegExp(EAB_KEY), 'the MAC key is never returned');
      assert.doesNotMatch(ctx.srv.log(), new RegExp(EAB_KEY), 'nor logged');
    },
  },
  {
    first: /^g -d '\{"issuerId": "self-signed"/,
    async run(block) {
      const r = await runBlock(block, [
        { from: '0.0.0.0:443', to: `127.0.0.1:${ctx.port}`, why: 'pebble\'s tlsPort on loopback' },
        { from: '127.0.0.1:8080', to: ctx.up.address, why: 'the test\'s upstream' },
      ]);
      assert.deepEqual(docs.jsonOf(r.sections, /jq -c '\.listeners/), { listener: 'listeners/www', agents: [{ agent: 'agents/doc-a', connected: true }] });
      const standIn = await api().CertificateService.GetCertificate({ name: 'certificates/www-stand-in' });
      await waitFor('the agent serves the stand-in', async () => {
        const s = await exchange(ctx.port, { servername: NAME }, { send: 'x\n' });
        return s.ok && s.info.fingerprint === fingerprint(standIn.certificateChainPem);
      });
    },
  },
  {
    first: /^g -d '\{"certificateId": "www-staging"/,
    async run(block) {
      const r = await runBlock(block);
      assert.deepEqual(docs.jsonOf(r.sections, /jq '\{name, hasChain/), { name: 'certificates/www-staging', hasChain: false, request: { dnsNames: [NAME], keyAlgorithm: 'ECDSA_P256' } });
    },
  },
  {
    first: /^for i in \$\(seq 60\); do$/,
    async run(block) {
      const r = await runBlock(block);
      const steps = docs.outputOf(r.sections, /jq -c '\.acmeOrder/).trim().split('\n').map((l) => JSON.parse(l));
      assert.deepEqual(steps[steps.length - 1], { status: 'valid', authorizations: [{ identifier: NAME, status: 'valid' }], lastError: null });
      const got = docs.jsonOf(r.sections, /jq '\{serialNumber, issuer, notAfter, renewalTime/);
      assert.match(got.issuer, /Pebble Intermediate CA/);
      assert.ok(got.serialNumber && got.notAfter && got.renewalTime && got.complete, JSON.stringify(got));
    },
  },
  {
    first: /^rev=\$\(g -d '\{"name": "certificates\/www-staging"\}'/,
    async run(block) {
      const r = await runBlock(block);
      assert.deepEqual(JSON.parse(r.stdout.trim().split('\n').pop()), { type: 'RESOURCE_CHANGED', resource: 'certificates/www-staging', action: 'issue', actor: 'system' });
    },
  },
  {
    first: /^rev=\$\(g -d '\{"tlsContext": \{"name": "tlsContexts\/www"/,
    async run(block) {
      const r = await runBlock(block, [toAgent()]);
      const out = docs.outputOf(r.sections, /openssl x509 -noout -subject -issuer/);
      assert.match(out, /issuer=.*Pebble Intermediate CA/);
      assert.match(out, /DNS:www\.example\.com/);
      // What the agent serves right after the block: the issued chain,
      // verified against pebble's root.
      const c = await api().CertificateService.GetCertificate({ name: 'certificates/www-staging' });
      assert.equal(await served(), fingerprint(c.certificateChainPem));
    },
  },
  {
    first: /^g -d '\{"issuerId": "letsencrypt", /,
    async run(block) {
      const r = await runBlock(block, pebbleFor(PRODUCTION, ctx.pb));
      assert.deepEqual(docs.jsonOf(r.sections, /jq '\.acmeOrder \| \{status, lastError\}'/), { status: 'valid', lastError: null });
      const c = await api().CertificateService.GetCertificate({ name: 'certificates/www' });
      await waitFor('the agent serves the production certificate', async () => (await served()) === fingerprint(c.certificateChainPem));
      const left = (await api().CertificateService.ListCertificates({})).certificates.map((x) => x.name);
      assert.ok(!left.includes('certificates/www-staging') && !left.includes('certificates/www-stand-in'), left.join(' '));
      const issuers = (await api().IssuerService.ListIssuers({})).issuers.map((x) => x.name);
      assert.ok(!issuers.includes('issuers/letsencrypt-staging'), issuers.join(' '));
      ctx.www = c;
    },
  },
  {
    first: /^openssl s_client -connect www\.example\.com:443 -servername www\.example\.com -verify_return_error/,
    async run(block) {
      const r = await runBlock(block, [toAgent(), { from: '-verify_return_error', to: '-CAfile pebble-root.pem -verify_return_error', why: 'pebble\'s root for the system\'s' }]);
      assert.match(r.stdout, /Verify return code: 0 \(ok\)/);
    },
  },
  {
    first: /^g -d '\{"name": "certificates\/www"\}' \$S tlsplane\.v1\.CertificateService\/GetCertificate \\$/,
    async run(block) {
      // As written: the production certificate, nothing failed.
      let r = await runBlock(block);
      assert.deepEqual(docs.jsonOf(r.sections, /jq '\{renewalFailures/), { renewalFailures: null, lastRenewalError: null, next: null, order: { status: 'valid', lastError: null, failures: null } });
      // And what the section describes: the same command on a certificate
      // whose order fails (a name no listener serves), retried.
      const watch = ctx.conn.clients['tlsplane.v1.AuditService'].WatchEvents({ kinds: ['certificates'], include: ['RENEWAL_FAILED'] });
      const events = [];
      watch.on('data', (e) => events.push(e));
      watch.on('error', () => {});
      try {
        await api().CertificateService.IssueCertificate({ certificateId: 'nobody', issuer: 'issuers/letsencrypt', dnsNames: ['nobody.example.com'] });
        await waitFor('two failed attempts', async () => ((await api().CertificateService.GetCertificate({ name: 'certificates/nobody' })).renewalFailures >= 2), { timeoutMs: 30000 });
        await waitFor('RENEWAL_FAILED on WatchEvents, with the reason', () => events.some((e) => e.resource === 'certificates/nobody' && e.reason === 'no listener serves nobody.example.com'));
      } finally {
        watch.cancel();
      }
      const audit = (await api().AuditService.ListAuditEvents({ resource: 'certificates/nobody' })).auditEvents;
      assert.ok(audit.some((e) => e.action === 'issue_failed' && e.actor === 'system'), `audit: ${JSON.stringify(audit.map((e) => `${e.actor}:${e.action}`))}`);
      r = await runBlock(block, [{ from: 'certificates/www', to: 'certificates/nobody', why: 'a certificate whose order fails' }]);
      const got = docs.jsonOf(r.sections, /jq '\{renewalFailures/);
      assert.ok(got.renewalFailures >= 2, JSON.stringify(got));
      assert.equal(got.lastRenewalError, 'no listener serves nobody.example.com');
      assert.equal(got.order.lastError, got.lastRenewalError);
      assert.ok(got.order.failures >= 2, JSON.stringify(got));
      assert.ok(Date.parse(got.next) > Date.now() - 5000, `a next attempt: ${got.next}`);
      // The production certificate kept serving.
      assert.equal(await served(), fingerprint(ctx.www.certificateChainPem));
    },
  },
  {
    // The dns-01 section shows two scripts as files, not commands to
    // type: the shipped hook (acme_dns.test.js runs it against pebble and
    // checks this copy equals scripts/acme-dns-hook-challtestsrv) and a
    // wrapper that gives it CHALLTESTSRV. Here: both parse as sh, the
    // hook is the shipped one, and the wrapper sets what the hook reads
    // and execs the hook by its name.
    first: /^#!\/bin\/sh$/,
    scripts: 2,
    async run(block) {
      const r = spawnSync('sh', ['-n'], { input: block.text });
      assert.equal(r.status, 0, `docs/acme.md line ${block.line}: sh -n: ${r.stderr}`);
      const hook = fs.readFileSync(path.resolve(__dirname, '../../scripts/acme-dns-hook-challtestsrv'), 'utf8');
      if (/TLSPLANE_ACME_ACTION/.test(block.text)) {
        assert.match(hook, /\$\{CHALLTESTSRV:-/, 'the shipped hook reads CHALLTESTSRV');
      } else {
        assert.match(block.text, /^CHALLTESTSRV=\S+ exec \S+\/acme-dns-hook-challtestsrv$/m, `docs/acme.md line ${block.line}: the wrapper`);
      }
    },
  },
];

test('every ```sh block of docs/acme.md runs as written, in order, and does what the page says', { timeout: 540000 }, async () => {
  const blocks = docs.shBlocks(DOC);
  assert.ok(blocks.length >= 10, `${blocks.length} blocks`);
  for (const block of blocks) {
    const known = BLOCKS.filter((b) => b.first.test(block.first));
    assert.equal(known.length, 1, `docs/acme.md line ${block.line}: a block acme_doc.test.js does not know (${block.first}): add it to BLOCKS`);
    await known[0].run(block);
  }
  const expected = BLOCKS.reduce((n, b) => n + (b.scripts || 1), 0);
  assert.equal(blocks.length, expected, 'every entry of BLOCKS matched its blocks');
});
