// The audit trail, newest first (ListAuditEvents' default order), a page
// of PAGE events at a time, each with what it changed (serials, key ids,
// references: never a secret).
import { call } from '../api.js';
import { h, table, time } from '../dom.js';
import { Pager } from '../pager.js';

const PAGE = 50;

function changes(e) {
  return (e.changes || []).map((c) => h('div', { class: 'change' }, `${c.field}: ${c.before || '–'} → ${c.after || '–'}`));
}

export function mount(root, ctx) {
  const pager = new Pager(PAGE);
  const list = h('div', { id: 'audit' });
  root.append(h('h2', {}, 'Audit'), pager.controls(() => ctx.refreshSoon(), 'page'), list);
  const columns = [
    { title: 'Revision', cell: (e) => e.revision },
    { title: 'Time', cell: (e) => time(e.time) },
    { title: 'Actor', cell: (e) => e.actor },
    { title: 'Action', cell: (e) => e.action },
    { title: 'Resource', cell: (e) => e.resource },
    { title: 'Changes', cell: (e) => changes(e) },
    { title: 'Method', cell: (e) => e.method },
  ];
  return async function refresh() {
    const r = await call('AuditService', 'ListAuditEvents', pager.request({ orderBy: 'time desc' }));
    pager.update(r.nextPageToken);
    list.replaceChildren(table(columns, r.auditEvents || [], { id: 'audit-table' }));
  };
}
