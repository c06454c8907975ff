// Certificates: one page of the list, sorted by expiry (or by a clicked
// header), filtered in the page by a name / subject / SAN substring, an
// expiry timeline of the page, and who serves each
// (AgentService.GetServing); operators upload a renewal.
import { call } from '../api.js';
import { h, labels, table, time } from '../dom.js';
import { expiry, keyType } from '../format.js';
import { Pager } from '../pager.js';
import { timeline } from '../timeline.js';

const PAGE_SIZE = 100;

function servedBy(serving) {
  if (!serving) return '';
  const agents = (serving.listeners || []).flatMap((l) => (l.agents || []).map((a) => ({ ...a, listener: l.listener })));
  if (agents.length === 0) return h('span', { class: 'muted' }, 'no agent');
  return agents.map((a) =>
    h(
      'div',
      { class: `serving ${a.current ? 'current' : 'pending'}`, 'data-agent': a.agent },
      `${a.agent} on ${a.listener}: revision ${a.appliedRevision || 0}`,
      a.current ? ' ✓' : ' (applying)',
      a.connected ? '' : ' offline',
      a.lastNack ? ` nack: ${a.lastNack}` : '',
    ),
  );
}

function ocsp(c) {
  if (!c.ocspCertStatus) return h('span', { class: 'muted' }, 'no staple');
  return h('span', { class: `ocsp ocsp-${c.ocspCertStatus}` }, c.ocspCertStatus, c.ocspNextUpdate ? [h('br'), `next update ${time(c.ocspNextUpdate)}`] : '');
}

// The link to a certificate's own page: "#/certificates/web".
export function certLink(name) {
  return h('a', { href: `#/${name}`, class: 'cert-link' }, name);
}

const SORTS = {
  name: (a, b) => a.name.localeCompare(b.name),
  notAfter: (a, b) => new Date(a.notAfter) - new Date(b.notAfter),
};

// A distinguished name that may wrap after each comma.
function dn(name) {
  return (name || '').split(',').flatMap((part, i) => (i ? [',', h('wbr'), part] : [part]));
}

function matches(c, text) {
  if (!text) return true;
  const hay = [c.name, c.subject, ...(c.dnsNames || []), ...(c.ipAddresses || [])].join('\n').toLowerCase();
  return hay.includes(text.toLowerCase());
}

function expiryCell(c) {
  const e = expiry(c.notAfter);
  return h('span', { class: `expiry ${e.cls}` }, time(c.notAfter), h('br'), e.text);
}

// Reads a file input into a textarea.
function fileInto(input, area) {
  input.addEventListener('change', async () => {
    if (input.files.length) area.value = await input.files[0].text();
  });
}

function uploadForm(cert, status, done) {
  const chain = h('textarea', { id: 'upload-chain', rows: 6, spellcheck: 'false', placeholder: '-----BEGIN CERTIFICATE-----' });
  const key = h('textarea', { id: 'upload-key', rows: 4, spellcheck: 'false', autocomplete: 'off', placeholder: '-----BEGIN PRIVATE KEY-----' });
  const chainFile = h('input', { type: 'file', id: 'upload-chain-file', accept: '.pem,.crt' });
  const keyFile = h('input', { type: 'file', id: 'upload-key-file', accept: '.pem,.key' });
  fileInto(chainFile, chain);
  fileInto(keyFile, key);
  const result = h('p', { id: 'upload-result', role: 'status' });
  const submit = async (ev) => {
    ev.preventDefault();
    result.textContent = 'uploading…';
    result.className = '';
    try {
      const r = await call('CertificateService', 'UpdateCertificate', {
        certificate: { name: cert.name, etag: cert.etag, certificateChainPem: chain.value, privateKeyPem: key.value },
        updateMask: { paths: ['certificate_chain_pem', 'private_key_pem'] },
      });
      key.value = '';
      result.textContent = `uploaded: ${r.name} at revision ${r.revision}, expires ${time(r.notAfter)}`;
      done();
    } catch (e) {
      result.textContent = `refused (${e.code}): ${e.message}`;
      result.className = 'error';
    }
  };
  return h(
    'form',
    { id: 'upload', class: 'panel', onsubmit: submit },
    h('h3', {}, `Upload a renewed certificate for ${cert.name}`),
    h('p', { class: 'muted' }, `Sent with etag ${cert.etag}: refused if the certificate changed since.`),
    h('label', { for: 'upload-chain' }, 'Certificate chain (PEM, leaf first)'),
    chainFile,
    chain,
    h('label', { for: 'upload-key' }, 'Private key (PEM)'),
    keyFile,
    key,
    h('div', {}, h('button', { type: 'submit' }, 'Upload'), ' ', h('button', { type: 'button', onclick: () => status.close() }, 'Cancel')),
    result,
  );
}

export function mount(root, ctx) {
  const pager = new Pager(PAGE_SIZE);
  const list = h('div', { id: 'certificates' });
  const side = h('div', { id: 'upload-panel' });
  let servingKnown = true; // GetServing answers (an older server may not have it)
  const panel = { close: () => side.replaceChildren() };
  const open = (c) => side.replaceChildren(uploadForm(c, panel, () => ctx.refreshSoon()));

  const columns = [
    { title: 'Name', sortKey: 'name', cell: (c) => certLink(c.name) },
    { title: 'Subject', cell: (c) => dn(c.subject) },
    { title: 'SANs', cell: (c) => [...(c.dnsNames || []), ...(c.ipAddresses || [])].join(', ') },
    { title: 'Not after', sortKey: 'notAfter', cell: expiryCell },
    { title: 'Key', cell: (c) => keyType(c) },
    { title: 'OCSP', cell: ocsp },
    { title: 'Labels', cell: (c) => labels(c.labels) },
    { title: 'Revision', cell: (c) => c.revision },
    { title: 'Served by', class: 'wrap', cell: (c) => servedBy(c.serving) },
  ];
  if (ctx.role.canWrite) {
    columns.push({ title: 'Actions', cell: (c) => h('button', { type: 'button', class: 'upload', onclick: () => open(c) }, 'Upload renewal') });
  }

  const view = { certs: [], sort: { key: 'notAfter', desc: false } };
  const filter = h('input', { type: 'search', id: 'cert-filter', placeholder: 'filter: name, subject or SAN', autocomplete: 'off', spellcheck: 'false' });
  const chart = h('div', { id: 'timeline', class: 'panel wide' });
  const onSort = (key) => {
    view.sort = { key, desc: view.sort.key === key ? !view.sort.desc : false };
    render();
  };
  function render() {
    const sort = SORTS[view.sort.key];
    const rows = view.certs.filter((c) => matches(c, filter.value.trim())).sort((a, b) => (view.sort.desc ? -sort(a, b) : sort(a, b)));
    chart.replaceChildren(h('h3', {}, 'Expiries in the next 90 days'), timeline(rows));
    list.replaceChildren(table(columns, rows, { id: 'certificates-table', rowClass: (c) => expiry(c.notAfter).cls, sort: view.sort, onSort }));
  }
  filter.addEventListener('input', render);

  root.append(
    h('h2', {}, 'Certificates'),
    h('div', { class: 'toolbar' }, h('label', { for: 'cert-filter', class: 'inline' }, 'Filter'), filter, pager.controls(() => ctx.refreshSoon())),
    chart, list, side,
  );

  async function serving(c) {
    if (!servingKnown) return null;
    try {
      return await call('AgentService', 'GetServing', { resource: c.name });
    } catch (e) {
      if (e.code === 'unimplemented') servingKnown = false;
      return null;
    }
  }

  return async function refresh() {
    const r = await call('CertificateService', 'ListCertificates', pager.request());
    const certs = r.certificates || [];
    await Promise.all(certs.map(async (c) => (c.serving = await serving(c))));
    pager.update(r.nextPageToken);
    view.certs = certs;
    render();
  };
}
