// Ticket-key rings: the active key's age, each key's name, state and age (never the key bytes,
// which the API does not return either); operators rotate a ring.
import { call } from '../api.js';
import { h, table, time } from '../dom.js';
import { age, duration } from '../format.js';
import { Pager } from '../pager.js';

export function mount(root, ctx) {
  const pager = new Pager(100);
  const list = h('div', { id: 'ticket-keys' });
  const result = h('p', { id: 'rotate-result', role: 'status' });
  root.append(h('h2', {}, 'Ticket keys'), pager.controls(() => ctx.refreshSoon()), list, result);

  const rotate = (ring) => async () => {
    result.className = '';
    try {
      const r = await call('TicketKeyService', 'RotateTicketKeys', { name: ring.name, etag: ring.etag });
      result.textContent = `rotated ${r.name} at revision ${r.revision}`;
      ctx.refreshSoon();
    } catch (e) {
      result.textContent = `refused (${e.code}): ${e.message}`;
      result.className = 'error';
    }
  };
  // The active key is the ring's first (keys are newest first).
  const active = (r) => (r.keys || []).find((k) => k.state === 'ACTIVE');
  const columns = [
    { title: 'Name', cell: (r) => r.name },
    { title: 'Active key age', cell: (r) => h('span', { class: 'active-age' }, active(r) ? age(active(r).createTime) : 'no active key') },
    { title: 'Rotation period', cell: (r) => duration(r.rotationPeriod) },
    { title: 'Keys', cell: (r) => (r.keys || []).map((k) => h('div', {}, h('code', {}, k.keyName), ` ${k.state} since ${time(k.createTime)}`)) },
    { title: 'Last rotation', cell: (r) => time(r.lastRotationTime) },
    { title: 'Next rotation', cell: (r) => time(r.nextRotationTime) },
  ];
  if (ctx.role.canWrite) columns.push({ title: 'Actions', cell: (r) => h('button', { type: 'button', class: 'rotate', onclick: rotate(r) }, 'Rotate') });

  return async function refresh() {
    const r = await call('TicketKeyService', 'ListTicketKeyRings', pager.request());
    pager.update(r.nextPageToken);
    list.replaceChildren(table(columns, r.ticketKeyRings || [], { id: 'ticket-keys-table' }));
  };
}
