// The audit trail, newest first. The API lists events oldest first from a
// revision on (since_revision), so a page here is a window of WINDOW
// revisions, read forwards and shown backwards: page 1 is the newest
// window, "older" moves the window back.
import { call } from '../api.js';
import { h, table, time } from '../dom.js';

const WINDOW = 50; // revisions per page
const FETCH = 200; // events per call
const MAX_CALLS = 10; // per window: at most FETCH * MAX_CALLS events shown

async function windowEvents(low, high) {
  const out = [];
  let pageToken = '';
  for (let i = 0; i < MAX_CALLS; i++) {
    const r = await call('AuditService', 'ListAuditEvents', { sinceRevision: String(low), pageSize: FETCH, pageToken });
    const ev = r.auditEvents || [];
    out.push(...ev.filter((e) => Number(e.revision) <= high));
    if (!r.nextPageToken || ev.some((e) => Number(e.revision) > high)) break;
    pageToken = r.nextPageToken;
  }
  return out.reverse();
}

export function mount(root, ctx) {
  let page = 0;
  let top = 0; // the newest revision, frozen while an older page shows
  const nav = h('div', { class: 'pager' });
  const list = h('div', { id: 'audit' });
  root.append(h('h2', {}, 'Audit'), nav, list);
  const move = (d) => () => {
    page += d;
    ctx.refreshSoon();
  };
  const columns = [
    { title: 'Revision', cell: (e) => e.revision },
    { title: 'Time', cell: (e) => time(e.time) },
    { title: 'Actor', cell: (e) => e.actor },
    { title: 'Action', cell: (e) => e.action },
    { title: 'Resource', cell: (e) => e.resource },
    { title: 'Method', cell: (e) => e.method },
  ];
  return async function refresh() {
    if (page === 0) top = Number((await call('AgentService', 'GetRollout', {})).revision || 0);
    // The rollout's revision may trail a write agents do not see (a
    // token): page 1 takes everything after its window's start.
    const high = page === 0 ? Infinity : top - page * WINDOW;
    const low = Math.max(0, top - (page + 1) * WINDOW);
    const events = await windowEvents(low, high);
    nav.replaceChildren(
      h('button', { type: 'button', class: 'prev', disabled: page === 0, onclick: move(-1) }, '← newer'),
      h('span', {}, page === 0 ? `revisions after ${low}` : `revisions ${low + 1}–${high}`),
      h('button', { type: 'button', class: 'next', disabled: low === 0, onclick: move(1) }, 'older →'),
    );
    list.replaceChildren(table(columns, events, { id: 'audit-table' }));
  };
}
