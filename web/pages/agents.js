// Agents: one page of the fleet, with what each applied, how far behind
// the current revision it is, its last nack (listener and reason), and
// per listener the stats it last reported (connections, handshakes,
// resumptions, client errors by cause).
import { call } from '../api.js';
import { h, labels, table, time } from '../dom.js';
import { Pager } from '../pager.js';

// The listeners' nacks, or the agent's own when it names no listener.
function nacks(a) {
  const per = (a.listeners || []).filter((l) => l.lastNack);
  if (per.length) return per.map((l) => h('div', { class: 'error nack', 'data-listener': l.listener }, `${l.listener}: ${l.lastNack}`));
  return a.lastNack ? h('span', { class: 'error nack' }, a.lastNack) : '';
}

// Revisions between the current one and the one it applied; the rollout
// says whether it still has something to apply (a revision that changes
// nothing it serves leaves it behind, with nothing to do).
function lag(a, current, ro) {
  const n = Math.max(0, current - Number(a.appliedRevision || 0));
  if (n === 0) return h('span', { class: 'lag current' }, '0');
  if ((ro.agentsFailed || []).includes(a.name)) return h('span', { class: 'lag failed' }, `${n} (failed)`);
  if ((ro.agentsPending || []).includes(a.name)) return h('span', { class: 'lag behind' }, `${n} (applying)`);
  return h('span', { class: 'lag current' }, `${n} (nothing to apply)`);
}

// Only the causes that happened.
function clientErrors(l) {
  const e = Object.entries(l.clientErrors || {}).filter(([, n]) => Number(n) > 0);
  return e.length === 0 ? h('span', { class: 'muted' }, 'none') : e.map(([cause, n]) => h('div', { class: 'client-error', 'data-cause': cause }, `${cause}: ${n}`));
}

const listenerColumns = [
  { title: 'Agent', cell: (r) => r.agent },
  { title: 'Listener', cell: (r) => r.listener },
  { title: 'Applied revision', cell: (r) => r.appliedRevision || '0' },
  { title: 'Connections', cell: (r) => h('span', { class: 'connections' }, r.connections || '0') },
  { title: 'Handshakes', cell: (r) => h('span', { class: 'handshakes' }, r.handshakes || '0') },
  { title: 'Resumptions', cell: (r) => h('span', { class: 'resumptions' }, r.resumptions || '0') },
  { title: 'Client errors', cell: clientErrors },
  { title: 'Last nack', cell: (r) => h('span', { class: r.lastNack ? 'error' : '' }, r.lastNack || '') },
];

export function mount(root, ctx) {
  const pager = new Pager(100);
  const list = h('div', { id: 'agents' });
  const perListener = h('div', { id: 'agent-listeners' });
  root.append(h('h2', {}, 'Agents'), pager.controls(() => ctx.refreshSoon()), list, h('h3', {}, 'Per listener'), perListener);
  let ro = {};
  const columns = [
    { title: 'Name', cell: (a) => a.name },
    { title: 'Connected', cell: (a) => h('span', { class: a.connected ? 'yes' : 'no' }, a.connected ? 'connected' : 'offline') },
    { title: 'Applied revision', cell: (a) => h('span', { class: 'applied-revision' }, a.appliedRevision || '0') },
    { title: 'Lag (revisions)', cell: (a) => lag(a, Number(ro.revision || 0), ro) },
    { title: 'Last nack', cell: nacks },
    { title: 'Labels', cell: (a) => [labels(a.labels), a.labelsMismatch ? h('span', { class: 'error' }, ' (claims other labels)') : ''] },
    { title: 'Version', cell: (a) => a.version || '' },
    { title: 'Last seen', cell: (a) => time(a.lastSeen) },
  ];
  return async function refresh() {
    let r;
    [ro, r] = await Promise.all([call('AgentService', 'GetRollout', {}), call('AgentService', 'ListAgents', pager.request())]);
    pager.update(r.nextPageToken);
    const agents = r.agents || [];
    list.replaceChildren(table(columns, agents, { id: 'agents-table' }));
    const rows = agents.flatMap((a) => (a.listeners || []).map((l) => ({ ...l, agent: a.name })));
    perListener.replaceChildren(table(listenerColumns, rows, { id: 'agent-listeners-table', rowName: (l) => `${l.agent} ${l.listener}` }));
  };
}
