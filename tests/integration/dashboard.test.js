'use strict';
// The web dashboard (web/) in a real browser: Debian's chromium driven by
// playwright-core, against a real tlsplane-server (its HTTPS gateway
// serves the files and the JSON API) and a real tlsplane-agent serving a
// listener. A viewer reads certificates (expiry colours), agents and the
// other pages and sees no action; an operator uploads a renewed
// certificate through the page and sees the agent apply it without a
// reload, while openssl s_client sees the new certificate on the agent.
//
// Then a viewer reads the overview's counts, filters and sorts the
// certificates, reads the expiry timeline and a certificate's own page,
// the agent's per-listener stats after a TLS connection, and the audit
// trail filtered by actor.
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

const names = (page, sel) => page.locator(sel).evaluateAll((rs) => rs.map((r) => r.dataset.name));

test('a viewer reads expiry buckets, filters, sorts and follows a certificate, per-listener stats and the audit by actor', async () => {
  const now = Date.now();
  for (const [id, days] of [['month', 20], ['later', 60]]) {
    const l = p.leaf(`dash-${id}`, { cn: `${id}.example.com`, sans: [`DNS:${id}.example.com`], end: new Date(now + days * DAY) });
    await api().CertificateService.CreateCertificate({ certificateId: id, certificate: { certificateChainPem: l.cert, privateKeyPem: l.key, labels: { team: id } } });
  }
  // old: expired; soon: 5 d; month: 20 d; later: 60 d; web (renewed): a year.
  const page = await signedIn(viewerToken, '#/overview');
  for (const [cls, n] of [['expiry-expired', 1], ['expiry-critical', 1], ['expiry-warn', 1], ['expiry-ok', 2]]) {
    await page.waitForSelector(`#stat-${cls} .value:text-is("${n}")`);
  }
  await page.waitForSelector('#stat-agents .value:text-is("1 / 1")');
  assert.deepEqual(await names(page, '#next-expiries-table tbody tr'), ['certificates/soon', 'certificates/month', 'certificates/later', 'certificates/web']);
  await shot(page, 'overview-buckets');

  // Certificates: by expiry, then by a clicked header; a filter narrows the page.
  await page.evaluate(() => (location.hash = '#/certificates'));
  await page.waitForSelector('tr[data-name="certificates/later"]');
  const byExpiry = ['certificates/old', 'certificates/soon', 'certificates/month', 'certificates/later', 'certificates/web'];
  assert.deepEqual(await names(page, '#certificates-table tbody tr'), byExpiry);
  await page.click('#certificates-table th[data-sort="name"]');
  const byName = [...byExpiry].sort();
  assert.deepEqual(await names(page, '#certificates-table tbody tr'), byName);
  await page.click('#certificates-table th[data-sort="name"]');
  assert.deepEqual(await names(page, '#certificates-table tbody tr'), [...byName].reverse());
  await page.click('#certificates-table th[data-sort="notAfter"]');
  assert.deepEqual(await names(page, '#certificates-table tbody tr'), byExpiry);
  await page.fill('#cert-filter', 'month.example');
  assert.deepEqual(await names(page, '#certificates-table tbody tr'), ['certificates/month']);
  await page.fill('#cert-filter', 'CN=soon');
  assert.deepEqual(await names(page, '#certificates-table tbody tr'), ['certificates/soon']);
  await page.fill('#cert-filter', 'no-such-name');
  assert.equal(await page.textContent('#certificates-table tbody'), 'none');
  await page.fill('#cert-filter', '');
  assert.deepEqual(await names(page, '#certificates-table tbody tr'), byExpiry);
  const web = row(page, 'certificates/web');
  assert.match(await web.textContent(), /EC 256 \(prime256v1\)/);
  assert.match(await web.textContent(), /no staple/);
  assert.match(await row(page, 'certificates/month').textContent(), /team=month/);

  // The timeline: one mark per certificate expiring within 90 days, in its bucket's colour.
  const marks = await page.locator('#expiry-timeline circle.mark').evaluateAll((ms) => ms.map((m) => [m.dataset.name, m.getAttribute('class'), m.textContent]));
  assert.deepEqual(marks.map((m) => m[0]), ['certificates/soon', 'certificates/month', 'certificates/later']);
  assert.deepEqual(marks.map((m) => m[1]), ['mark expiry-critical', 'mark expiry-warn', 'mark expiry-ok']);
  assert.match(marks[0][2], /^certificates\/soon: .*expires in 5 days/);
  assert.equal(await page.locator('#expiry-timeline [style]').count(), 0, 'no inline style');
  await shot(page, 'certificates-timeline');
  if (process.env.TLSPLANE_SCREENSHOTS_DIR) {
    await page.screenshot({ path: path.join(process.env.TLSPLANE_SCREENSHOTS_DIR, 'dashboard-certificates.png'), fullPage: true });
  }

  // A certificate's own page: the context, the listener and the agent
  // serving it at the revision it applied, and its audit history.
  await web.locator('a.cert-link').click();
  assert.equal(await page.evaluate(() => location.hash), '#/certificates/web');
  const serving = await api().AgentService.GetServing({ resource: 'certificates/web' });
  const served = serving.listeners[0].agents[0];
  assert.equal(serving.listeners[0].listener, 'listeners/web');
  const srow = page.locator('#certificate-serving-table tr[data-name="listeners/web agents/dash-1"]');
  await page.waitForSelector(`#certificate-serving-table tr[data-name="listeners/web agents/dash-1"] .applied-revision:text-is("${served.appliedRevision}")`);
  assert.match(await srow.textContent(), /connected.*yes/);
  assert.deepEqual(await names(page, '#certificate-contexts-table tbody tr'), ['tlsContexts/web']);
  assert.match(await page.textContent('#certificate-facts'), /CN=www\.example\.com/);
  const events = await api().AuditService.ListAuditEvents({ resource: 'certificates/web' });
  assert.ok(events.auditEvents.length >= 2, 'created, then renewed');
  await waitFor('the certificate page lists its audit events', async () => {
    const got = await page.locator('#certificate-audit-table tbody tr').evaluateAll((rs) => rs.map((r) => r.cells[0].textContent));
    return JSON.stringify(got) === JSON.stringify(events.auditEvents.map((e) => String(e.revision)));
  });
  const audit = await page.textContent('#certificate-audit-table');
  assert.match(audit, /token:dash-operator.*update.*serial_number/s);
  assert.match(audit, /create/);
  await shot(page, 'certificate');

  // Agents: per-listener stats, reported by the agent every few seconds.
  const stat = async () => ((await api().AgentService.GetAgent({ name: 'agents/dash-1' })).listeners || []).find((l) => l.listener === 'listeners/web');
  const before = Number(((await stat()) || {}).handshakes || 0);
  assert.ok((await sclient(port, ['-servername', 'www.example.com'])).handshake);
  await page.evaluate(() => (location.hash = '#/agents'));
  await waitFor(
    'agents page: the handshake on listeners/web',
    async () => Number(await page.textContent('tr[data-name="agents/dash-1 listeners/web"] .handshakes', { timeout: 1000 })) > before,
    { timeoutMs: 40000, intervalMs: 250 },
  );
  // Lag: the current revision minus the applied one (the new certificates
  // reach no listener, so it has nothing to apply).
  const ro = await api().AgentService.GetRollout({});
  const lag = Number(ro.revision) - Number((await api().AgentService.GetAgent({ name: 'agents/dash-1' })).appliedRevision);
  assert.ok(lag > 0, `lag ${lag}`);
  await page.waitForSelector(`tr[data-name="agents/dash-1"] .lag:text-is("${lag} (nothing to apply)")`);
  await shot(page, 'agents-listeners');

  // Ticket keys: the active key's age.
  await page.evaluate(() => (location.hash = '#/ticket-keys'));
  await page.waitForSelector('tr[data-name="ticketKeyRings/main"] .active-age');
  assert.match(await page.textContent('tr[data-name="ticketKeyRings/main"] .active-age'), /^\d+ (s|min)$/);

  // Audit: only the operator's events, then none after a time to come.
  await page.evaluate(() => (location.hash = '#/audit'));
  await page.waitForSelector('#audit-table tbody tr .actor');
  const all = await page.locator('#audit-table tbody tr').count();
  const mine = (await api().AuditService.ListAuditEvents({ actor: 'token:dash-operator' })).auditEvents;
  assert.ok(mine.length >= 2 && mine.length < all, `${mine.length} of ${all}`);
  await page.fill('#audit-actor', 'token:dash-operator');
  await page.click('#audit-filter button[type=submit]');
  await waitFor('the audit page shows only the operator', async () => {
    const actors = await page.locator('#audit-table tbody tr .actor').allTextContents();
    return actors.length === mine.length && actors.every((a) => a === 'token:dash-operator');
  });
  await page.fill('#audit-start', new Date(Date.now() + 86400e3).toISOString().slice(0, 19));
  await page.click('#audit-filter button[type=submit]');
  await page.waitForSelector('#audit-table td.empty');
  await page.close();
  assert.deepEqual(consoleErrors, []);
});
