// One certificate (#/certificates/{id}): its facts, the TLS contexts that
// name it and the listeners that use them, the agents serving it and at
// which revision (AgentService.GetServing), and its audit history
// (ListAuditEvents filtered by resource), newest first.
import { call, collect } from '../api.js';
import { facts, h, labels, table, time } from '../dom.js';
import { expiry, keyType } from '../format.js';
import { Pager } from '../pager.js';
import { changes } from './audit.js';

const CONTEXT_PAGES = 10;

// Issued certificates: when the server renews it, and a failed renewal
// (the error and the next attempt) in the failure's colour.
function renewal(c) {
  if (c.lastRenewalError) {
    return h('span', { class: 'renewal-failed' }, `failed (${c.renewalFailures} attempt(s)): ${c.lastRenewalError}; next attempt ${time(c.nextAttemptTime)}`);
  }
  return `${time(c.renewalTime)}${c.lastRenewalTime ? `, last renewed ${time(c.lastRenewalTime)}` : ''}`;
}

function certFacts(c) {
  const e = expiry(c.notAfter);
  return facts(
    [
      ['Subject', c.subject],
      ['Issuer', c.issuer],
      ['SANs', [...(c.dnsNames || []), ...(c.ipAddresses || [])].join(', ')],
      ['Serial', h('code', {}, c.serialNumber || '')],
      ['SHA-256', h('code', {}, c.sha256Fingerprint || '')],
      ['Not before', time(c.notBefore)],
      ['Not after', h('span', { class: `expiry ${e.cls}` }, `${time(c.notAfter)} (${e.text})`)],
      ['Key', keyType(c)],
      ['Chain', `${c.chainLength || 0} certificate(s)`],
      ['OCSP staple', c.ocspCertStatus ? `${c.ocspCertStatus}, next update ${time(c.ocspNextUpdate)}` : 'none'],
      ...(c.issuance ? [['Issued by', c.issuance.issuer], ['Renewal', renewal(c)]] : []),
      ['Labels', labels(c.labels)],
      ['Revision', `${c.revision} (updated ${time(c.updateTime)})`],
    ],
    'certificate-facts',
  );
}

function servingRows(serving) {
  return (serving.listeners || []).flatMap((l) =>
    (l.agents || []).length === 0 ? [{ listener: l.listener }] : l.agents.map((a) => ({ ...a, listener: l.listener })),
  );
}

const servingColumns = [
  { title: 'Listener', cell: (r) => r.listener },
  { title: 'Agent', cell: (r) => r.agent || h('span', { class: 'muted' }, 'no agent selected') },
  { title: 'Connected', cell: (r) => (r.agent ? h('span', { class: r.connected ? 'yes' : 'no' }, r.connected ? 'connected' : 'offline') : '') },
  { title: 'Applied revision', cell: (r) => (r.agent ? h('span', { class: 'applied-revision' }, r.appliedRevision || '0') : '') },
  { title: 'Current', cell: (r) => (r.agent ? h('span', { class: `serving ${r.current ? 'current' : 'pending'}` }, r.current ? 'yes' : 'applying') : '') },
  { title: 'Last nack', cell: (r) => h('span', { class: r.lastNack ? 'error' : '' }, r.lastNack || '') },
];

const auditColumns = [
  { title: 'Revision', cell: (e) => e.revision },
  { title: 'Time', class: 'nowrap', cell: (e) => time(e.time) },
  { title: 'Actor', cell: (e) => e.actor },
  { title: 'Action', cell: (e) => e.action },
  { title: 'Changes', cell: (e) => changes(e) },
];

export function mount(root, ctx) {
  const name = `certificates/${ctx.id}`;
  const pager = new Pager(50);
  const head = h('div', { id: 'certificate' });
  const contexts = h('div', { id: 'certificate-contexts' });
  const serving = h('div', { id: 'certificate-serving' });
  const audit = h('div', { id: 'certificate-audit' });
  root.append(
    h('p', {}, h('a', { href: '#/certificates' }, '← Certificates')),
    h('h2', {}, name), head,
    h('h3', {}, 'TLS contexts that name it'), contexts,
    h('h3', {}, 'Listeners and the agents serving it'), serving,
    h('h3', {}, 'Audit history'), pager.controls(() => ctx.refreshSoon()), audit,
  );

  return async function refresh() {
    const [c, ctxs, srv, events] = await Promise.all([
      call('CertificateService', 'GetCertificate', { name }),
      collect('TlsContextService', 'ListTlsContexts', 'tlsContexts', {}, { maxPages: CONTEXT_PAGES }),
      call('AgentService', 'GetServing', { resource: name }),
      call('AuditService', 'ListAuditEvents', pager.request({ resource: name, orderBy: 'time desc' })),
    ]);
    head.replaceChildren(certFacts(c));
    const using = ctxs.items.filter((t) => (t.certificates || []).includes(name));
    contexts.replaceChildren(
      table([{ title: 'TLS context', cell: (t) => t.name }, { title: 'Certificates', cell: (t) => (t.certificates || []).join(', ') }], using, { id: 'certificate-contexts-table' }),
      ctxs.more ? h('p', { class: 'muted' }, `of the first ${ctxs.items.length} TLS contexts`) : '',
    );
    serving.replaceChildren(
      table(servingColumns, servingRows(srv), { id: 'certificate-serving-table', rowName: (r) => `${r.listener} ${r.agent || ''}`.trim() }),
    );
    pager.update(events.nextPageToken);
    audit.replaceChildren(table(auditColumns, events.auditEvents || [], { id: 'certificate-audit-table' }));
  };
}
