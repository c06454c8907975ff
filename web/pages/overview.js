// Overview: agents connected of all, the rollout of the current revision
// (with each failure's reason), certificates by expiry bucket and the next
// five to expire. Agents and certificates are counted over at most
// COUNT_PAGES pages of 100; past that a count reads "N+".
import { call, collect } from '../api.js';
import { h, table, time } from '../dom.js';
import { BUCKETS, expiry } from '../format.js';

const COUNT_PAGES = 10;
const NEXT = 5;

function stat(id, title, value) {
  return h('div', { class: 'stat', id }, h('div', { class: 'value' }, String(value)), h('div', { class: 'title' }, title));
}

const count = (n, more) => (more ? `${n}+` : String(n));

function rolloutStats(ro, agents) {
  const connected = agents.items.filter((a) => a.connected).length;
  return [
    stat('stat-revision', 'revision', ro.revision || 0),
    stat('stat-agents', 'agents connected / total', `${count(connected, agents.more)} / ${count(agents.items.length, agents.more)}`),
    stat('stat-applied', 'agents applied', ro.agentsApplied || 0),
    stat('stat-pending', 'agents applying', (ro.agentsPending || []).length),
    stat('stat-failed', 'agents failed', (ro.agentsFailed || []).length),
  ];
}

function failuresTable(ro) {
  if ((ro.failures || []).length === 0) return '';
  return [
    h('h3', {}, 'Rollout failures'),
    table(
      [
        { title: 'Agent', cell: (f) => f.agent },
        { title: 'Listener', cell: (f) => f.listener },
        { title: 'Reason', cell: (f) => [f.reason, f.serverSide ? h('span', { class: 'muted' }, ' (server side)') : ''] },
      ],
      ro.failures,
      { id: 'rollout-failures-table', rowName: (f) => `${f.agent} ${f.listener}` },
    ),
  ];
}

function bucketStats(certs) {
  const n = Object.fromEntries(BUCKETS.map((b) => [b.cls, 0]));
  for (const c of certs.items) n[expiry(c.notAfter).cls] = (n[expiry(c.notAfter).cls] || 0) + 1;
  return BUCKETS.map((b) => {
    const el = stat(`stat-${b.cls}`, `certificates ${b.title}`, count(n[b.cls], certs.more));
    el.classList.add('bucket', b.cls);
    return el;
  });
}

function nextExpiries(certs) {
  const now = Date.now();
  const next = certs.items
    .filter((c) => c.notAfter && new Date(c.notAfter).getTime() > now)
    .sort((a, b) => new Date(a.notAfter) - new Date(b.notAfter))
    .slice(0, NEXT);
  return table(
    [
      { title: 'Name', cell: (c) => h('a', { href: `#/${c.name}` }, c.name) },
      { title: 'Subject', cell: (c) => c.subject },
      { title: 'Not after', class: 'nowrap', cell: (c) => time(c.notAfter) },
      { title: 'Expiry', cell: (c) => h('span', { class: `expiry ${expiry(c.notAfter).cls}` }, expiry(c.notAfter).text) },
    ],
    next,
    { id: 'next-expiries-table', rowClass: (c) => expiry(c.notAfter).cls },
  );
}

export function mount(root) {
  const stats = h('div', { class: 'stats', id: 'rollout' });
  const failures = h('div', { id: 'rollout-failures' });
  const buckets = h('div', { class: 'stats', id: 'buckets' });
  const soon = h('div', { id: 'next-expiries' });
  root.append(
    h('h2', {}, 'Overview'), stats, failures,
    h('h3', {}, 'Certificates by expiry'), buckets,
    h('h3', {}, `The next ${NEXT} to expire`), soon,
  );

  return async function refresh() {
    const [ro, agents, certs] = await Promise.all([
      call('AgentService', 'GetRollout', {}),
      collect('AgentService', 'ListAgents', 'agents', {}, { maxPages: COUNT_PAGES }),
      collect('CertificateService', 'ListCertificates', 'certificates', {}, { maxPages: COUNT_PAGES }),
    ]);
    stats.replaceChildren(...rolloutStats(ro, agents));
    failures.replaceChildren(...[failuresTable(ro)].flat());
    buckets.replaceChildren(...bucketStats(certs));
    soon.replaceChildren(nextExpiries(certs), certs.more ? h('p', { class: 'muted' }, `of the first ${certs.items.length} certificates`) : '');
  };
}
