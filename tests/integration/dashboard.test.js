'use strict';
// The web dashboard (web/) in a real browser: Debian's chromium driven by
// playwright-core, against a real tlsplane-server (its HTTPS gateway
// serves the files and the JSON API) and a real tlsplane-agent serving a
// listener. A viewer reads certificates (expiry colours), agents and the
// other pages and sees no action; an operator uploads a renewed
// certificate through the page and sees the agent apply it without a
// reload, while openssl s_client sees the new certificate on the agent.
//
// TLSPLANE_SCREENSHOTS_DIR=DIR: the certificates page is also saved as
// DIR/dashboard-certificates.png (docs/ keeps one).

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const tls = require('node:tls');
const { Server, noteSecret } = require('./lib/server');
const { connect } = require('./lib/reflect');
const { pki, DAY } = require('./lib/pki');
const { Upstream } = require('./lib/upstream');
const { CpAgent } = require('./lib/cpagent');
const { freePorts, agentBinary } = require('./lib/agent');
const { sclient } = require('./lib/tlsclient');
const { tempDir } = require('./lib/procs');
const { waitFor } = require('./lib/wait');

const CHROMIUM = '/usr/bin/chromium';
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
  "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
// The one refused request a page makes on purpose: the viewer's forced
// upload below. Chromium logs every 4xx fetch as a console error; any
// other console error fails.
const PROBE = /\/tlsplane\.v1\.CertificateService\/UpdateCertificate$/;

let srv;
let conn;
let p;
let up;
let agent;
let browser;
let port; // the agent's listener
let viewerToken;
let operatorToken;
const shots = tempDir('tlsplane-dashboard-');
const consoleErrors = [];

const api = () => conn.api;

async function token(role) {
  const r = await api().TokenService.CreateToken({ tokenId: `dash-${role.toLowerCase()}`, token: { role } });
  noteSecret(r.secret);
  return r.secret;
}

// The gateway's certificate is checked against the server CA here (Node);
// chromium, which has no flag to trust a CA, then takes it as it is.
function gatewayVerified() {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port: srv.httpPort, ca: srv.ca, servername: 'localhost' }, () => {
      s.end();
      resolve();
    });
    s.on('error', reject);
  });
}

async function launch() {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: run scripts/install-deps (it installs Debian's chromium)`);
  const { chromium } = require('playwright-core');
  await gatewayVerified();
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
}

// A new tab, signed in with `secret`, on #/certificates.
async function signedIn(secret, hash = '#/certificates') {
  const page = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const url = m.location().url || '';
    if (/Failed to load resource: the server responded with a status of 403/.test(m.text()) && PROBE.test(url)) return;
    consoleErrors.push(`${m.text()} (${url})`);
  });
  page.on('pageerror', (e) => consoleErrors.push(`pageerror: ${e.message}`));
  const res = await page.goto(`${srv.httpBase}/${hash}`);
  page.firstResponse = res;
  await page.fill('#token', secret);
  await page.click('#sign-in button[type=submit]');
  await page.waitForSelector('#who:has-text("signed in")');
  return page;
}

function row(page, name) {
  return page.locator(`tr[data-name="${name}"]`);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

before(async () => {
  agentBinary();
  p = pki();
  up = await Upstream.start({ mode: 'echo' });
  srv = await Server.start({ tls: true });
  conn = await connect(srv.address, srv.connectOptions());
  const now = Date.now();
  const soon = p.leaf('dash-soon', { cn: 'soon.example.com', sans: ['DNS:soon.example.com'], end: new Date(now + 5 * DAY) });
  await api().CertificateService.CreateCertificate({ certificateId: 'web', certificate: { certificateChainPem: p.ecdsa.cert, privateKeyPem: p.ecdsa.key } });
  await api().CertificateService.CreateCertificate({ certificateId: 'soon', certificate: { certificateChainPem: soon.cert, privateKeyPem: soon.key } });
  await api().CertificateService.CreateCertificate({
    certificateId: 'old', certificate: { certificateChainPem: p.expired.cert, privateKeyPem: p.expired.key, allowInvalidTime: true },
  });
  await api().TlsContextService.CreateTlsContext({ tlsContextId: 'web', tlsContext: { certificates: ['certificates/web'] } });
  [port] = await freePorts(1);
  await api().ListenerService.CreateListener({
    listenerId: 'web', listener: { address: `127.0.0.1:${port}`, defaultTlsContext: 'tlsContexts/web', upstream: up.address, agentSelector: { site: 'd' } },
  });
  await api().TicketKeyService.CreateTicketKeyRing({ ticketKeyRingId: 'main', ticketKeyRing: {} });
  const join = await api().TokenService.CreateToken({ tokenId: 'dash-join', token: { role: 'JOIN', agentId: 'dash-1', agentLabels: { site: 'd' } } });
  noteSecret(join.secret);
  agent = await CpAgent.start(srv, { name: 'dash-1', labels: { site: 'd' }, joinToken: join.secret, wait: 'connected' });
  await agent.waitForLog(/listener=listeners\/web new: serving on/);
  viewerToken = await token('VIEWER');
  operatorToken = await token('OPERATOR');
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  if (agent && agent.running) await agent.stopClean();
  if (conn) conn.close();
  if (srv && srv.running) await srv.stopClean();
  if (up) await up.close();
});

test('a viewer sees expiry colours, agents and every page, no action, and a forced upload is refused with 403', async () => {
  const page = await signedIn(viewerToken);
  const h = page.firstResponse.headers();
  assert.equal(h['content-security-policy'], CSP);
  assert.equal(h['x-content-type-options'], 'nosniff');
  assert.equal(h['referrer-policy'], 'no-referrer');
  assert.match(await page.textContent('#who'), /viewer/);

  const soon = row(page, 'certificates/soon');
  await soon.waitFor();
  assert.match(await soon.getAttribute('class'), /\bexpiry-critical\b/);
  assert.match(await soon.textContent(), /expires in 5 days/);
  const old = row(page, 'certificates/old');
  assert.match(await old.getAttribute('class'), /\bexpiry-expired\b/);
  assert.match(await old.textContent(), /expired \d+ days ago/);
  assert.match(await row(page, 'certificates/web').getAttribute('class'), /\bexpiry-ok\b/);
  // Sorted by expiry: the expired one first.
  const order = await page.locator('#certificates-table tbody tr').evaluateAll((rs) => rs.map((r) => r.dataset.name));
  assert.deepEqual(order, ['certificates/old', 'certificates/soon', 'certificates/web']);
  // Who serves it (GetServing).
  await page.waitForSelector('tr[data-name="certificates/web"] .serving[data-agent="agents/dash-1"]');
  // No action control, and nothing secret on the page.
  assert.equal(await page.locator('button.upload, #upload, button.rotate').count(), 0);
  const body = await page.textContent('body');
  assert.doesNotMatch(body, /PRIVATE KEY|tlsp_\w{8}/, 'no key, no token secret');
  await shot(page, 'certificates');
  if (process.env.TLSPLANE_SCREENSHOTS_DIR) {
    await page.screenshot({ path: path.join(process.env.TLSPLANE_SCREENSHOTS_DIR, 'dashboard-certificates.png'), fullPage: true });
  }

  // A forced request with the viewer's own token is refused.
  const forced = await page.evaluate(async () => {
    const r = await fetch('/tlsplane.v1.CertificateService/UpdateCertificate', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${sessionStorage.getItem('tlsplane.token')}` },
      body: JSON.stringify({ certificate: { name: 'certificates/web', labels: { x: 'y' } }, updateMask: { paths: ['labels'] } }),
    });
    return { status: r.status, body: await r.json() };
  });
  assert.equal(forced.status, 403);
  assert.equal(forced.body.code, 'permission_denied');
  assert.deepEqual((await api().CertificateService.GetCertificate({ name: 'certificates/web' })).labels, {});

  // Agents: the revision the agent applied, as the API says.
  const g = await waitFor('the agent applied', async () => {
    const a = await api().AgentService.GetAgent({ name: 'agents/dash-1' });
    return a.connected && Number(a.appliedRevision) > 0 ? a : null;
  });
  await page.evaluate(() => (location.hash = '#/agents'));
  await page.waitForSelector(`tr[data-name="agents/dash-1"] .applied-revision:text-is("${g.appliedRevision}")`);
  assert.match(await row(page, 'agents/dash-1').textContent(), /connected.*site=d/);
  await shot(page, 'agents');

  for (const [hash, sel] of [['overview', '#stat-revision'], ['listeners', 'tr[data-name="listeners/web"]'], ['ticket-keys', 'tr[data-name="ticketKeyRings/main"]'], ['audit', '#audit-table tbody tr']]) {
    await page.evaluate((h) => (location.hash = `#/${h}`), hash);
    await page.waitForSelector(sel);
    assert.equal(await page.locator('button.upload, button.rotate').count(), 0, `no action on ${hash}`);
    await shot(page, hash);
  }
  assert.match(await page.textContent('#audit-table'), /token:admin.*create.*ticketKeyRings\/main/s);
  assert.match(await page.textContent('#audit-table tbody tr'), /dash-operator|agents\/dash-1|tokens/);

  // Sign out clears the token.
  await page.click('#sign-out');
  assert.equal(await page.evaluate(() => sessionStorage.length + localStorage.length), 0);
  await page.waitForSelector('#sign-in:not([hidden])');
  await page.close();
  assert.deepEqual(consoleErrors, []);
});

test('an operator uploads a renewed certificate through the page; it shows applied on the agent without a reload, and the agent serves it', async () => {
  const page = await signedIn(operatorToken);
  assert.match(await page.textContent('#who'), /operator/);
  await page.evaluate(() => (window.notReloaded = true));
  const renewed = p.leaf('dash-renewed', { cn: 'www.example.com', sans: ['DNS:www.example.com'] });
  await row(page, 'certificates/web').locator('button.upload').click();
  await page.fill('#upload-chain', renewed.cert);
  await page.fill('#upload-key', renewed.key);
  await page.click('#upload button[type=submit]');
  await page.waitForSelector('#upload-result:has-text("revision")');
  const m = /at revision (\d+)/.exec(await page.textContent('#upload-result'));
  assert.ok(m, await page.textContent('#upload-result'));
  const rev = Number(m[1]);
  assert.equal(await page.inputValue('#upload-key'), '', 'the key is not kept in the form');
  const c = await api().CertificateService.GetCertificate({ name: 'certificates/web' });
  assert.equal(c.sha256Fingerprint, renewed.fingerprint);
  assert.equal(Number(c.revision), rev);

  // The page shows the agent serving the new revision (GetServing), then
  // the agents page its applied revision, with no reload.
  await page.waitForSelector(`tr[data-name="certificates/web"] .serving.current[data-agent="agents/dash-1"]:has-text("revision ${rev}")`);
  await shot(page, 'certificates-renewed');
  await page.evaluate(() => (location.hash = '#/agents'));
  await waitFor('agents page: applied the renewal', async () => Number(await page.textContent('tr[data-name="agents/dash-1"] .applied-revision')) >= rev);
  assert.equal(await page.evaluate(() => window.notReloaded), true);
  const s = await sclient(port, ['-servername', 'www.example.com']);
  assert.ok(s.handshake, 'openssl s_client handshake with the agent');
  assert.equal(s.fingerprint, renewed.fingerprint);

  // Ticket keys: an operator rotates a ring from the page.
  const before = await api().TicketKeyService.GetTicketKeyRing({ name: 'ticketKeyRings/main' });
  await page.evaluate(() => (location.hash = '#/ticket-keys'));
  await row(page, 'ticketKeyRings/main').locator('button.rotate').click();
  await page.waitForSelector('#rotate-result:has-text("rotated ticketKeyRings/main")');
  const afterRing = await api().TicketKeyService.GetTicketKeyRing({ name: 'ticketKeyRings/main' });
  assert.ok(Number(afterRing.revision) > Number(before.revision));
  await page.close();
  assert.deepEqual(consoleErrors, []);
});
