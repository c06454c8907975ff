// The audit trail, newest first (ListAuditEvents' default order), a page
// of PAGE events at a time, each with what it changed (serials, key ids,
// references: never a secret). A filter form narrows it by actor,
// resource and time range (the request's actor, resource, start_time and
// end_time): the server filters, so paging stays exact.
import { call } from '../api.js';
import { h, table, time } from '../dom.js';
import { Pager } from '../pager.js';

const PAGE = 50;

export function changes(e) {
  return (e.changes || []).map((c) => h('div', { class: 'change' }, `${c.field}: ${c.before || '–'} → ${c.after || '–'}`));
}

// A datetime-local input's value (local time) as an RFC 3339 UTC time.
function instant(input) {
  if (!input.value) return undefined;
  const d = new Date(input.value);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
}

function filterForm(onapply) {
  const field = (id, label, attrs) => [h('label', { for: id }, label), h('input', { id, name: id, autocomplete: 'off', spellcheck: 'false', ...attrs })];
  const form = h(
    'form',
    { id: 'audit-filter', class: 'filters' },
    h('div', {}, field('audit-actor', 'Actor', { type: 'text', placeholder: 'token:ci-rotator' })),
    h('div', {}, field('audit-resource', 'Resource', { type: 'text', placeholder: 'certificates/web' })),
    h('div', {}, field('audit-start', 'From', { type: 'datetime-local', step: 1 })),
    h('div', {}, field('audit-end', 'Until', { type: 'datetime-local', step: 1 })),
    h('div', {}, h('button', { type: 'submit' }, 'Apply'), ' ', h('button', { type: 'reset' }, 'Clear')),
  );
  const read = () => ({
    actor: form.elements['audit-actor'].value.trim() || undefined,
    resource: form.elements['audit-resource'].value.trim() || undefined,
    startTime: instant(form.elements['audit-start']),
    endTime: instant(form.elements['audit-end']),
  });
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    onapply(read());
  });
  form.addEventListener('reset', () => setTimeout(() => onapply(read())));
  return form;
}

export function mount(root, ctx) {
  let pager = new Pager(PAGE);
  let filter = {};
  const list = h('div', { id: 'audit' });
  const nav = h('div', {});
  const paging = () => nav.replaceChildren(pager.controls(() => ctx.refreshSoon(), 'page'));
  const form = filterForm((f) => {
    filter = f;
    pager = new Pager(PAGE); // a new filter starts from its first page
    paging();
    ctx.refreshSoon();
  });
  paging();
  root.append(h('h2', {}, 'Audit'), form, nav, list);
  const columns = [
    { title: 'Revision', cell: (e) => e.revision },
    { title: 'Time', class: 'nowrap', cell: (e) => time(e.time) },
    { title: 'Actor', cell: (e) => h('span', { class: 'actor' }, e.actor) },
    { title: 'Action', cell: (e) => e.action },
    { title: 'Resource', cell: (e) => e.resource },
    { title: 'Changes', cell: (e) => changes(e) },
    { title: 'Method', cell: (e) => e.method },
  ];
  return async function refresh() {
    const r = await call('AuditService', 'ListAuditEvents', pager.request({ ...filter, orderBy: 'time desc' }));
    pager.update(r.nextPageToken);
    list.replaceChildren(table(columns, r.auditEvents || [], { id: 'audit-table' }));
  };
}
