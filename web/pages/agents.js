// Agents: one page of the fleet, with what each applied.
import { call } from '../api.js';
import { h, labels, table, time } from '../dom.js';
import { Pager } from '../pager.js';

export function mount(root, ctx) {
  const pager = new Pager(100);
  const list = h('div', { id: 'agents' });
  root.append(h('h2', {}, 'Agents'), pager.controls(() => ctx.refreshSoon()), list);
  const columns = [
    { title: 'Name', cell: (a) => a.name },
    { title: 'Connected', cell: (a) => h('span', { class: a.connected ? 'yes' : 'no' }, a.connected ? 'connected' : 'offline') },
    { title: 'Applied revision', cell: (a) => h('span', { class: 'applied-revision' }, a.appliedRevision || '0') },
    { title: 'Last nack', cell: (a) => h('span', { class: a.lastNack ? 'error' : '' }, a.lastNack || '') },
    { title: 'Labels', cell: (a) => [labels(a.labels), a.labelsMismatch ? h('span', { class: 'error' }, ' (claims other labels)') : ''] },
    { title: 'Version', cell: (a) => a.version || '' },
    { title: 'Last seen', cell: (a) => time(a.lastSeen) },
  ];
  return async function refresh() {
    const r = await call('AgentService', 'ListAgents', pager.request());
    pager.update(r.nextPageToken);
    list.replaceChildren(table(columns, r.agents || [], { id: 'agents-table' }));
  };
}
