// Overview: the current revision, how far its rollout got, and the
// certificates that expire within 30 days.
import { call } from '../api.js';
import { h, table, time } from '../dom.js';
import { expiry } from '../format.js';

const DAY = 24 * 3600 * 1000;
const SOON_DAYS = 30;

function stat(id, title, value) {
  return h('div', { class: 'stat', id }, h('div', { class: 'value' }, String(value)), h('div', { class: 'title' }, title));
}

export function mount(root) {
  const stats = h('div', { class: 'stats' });
  const failures = h('div', { id: 'rollout-failures' });
  const soon = h('div', { id: 'expiring' });
  root.append(h('h2', {}, 'Overview'), stats, failures, h('h3', {}, `Certificates expiring within ${SOON_DAYS} days`), soon);

  return async function refresh() {
    const expiringBefore = new Date(Date.now() + SOON_DAYS * DAY).toISOString();
    const [ro, certs] = await Promise.all([
      call('AgentService', 'GetRollout', {}),
      call('CertificateService', 'ListCertificates', { expiringBefore, pageSize: 100 }),
    ]);
    stats.replaceChildren(
      stat('stat-revision', 'revision', ro.revision || 0),
      stat('stat-connected', 'agents connected', ro.agentsConnected || 0),
      stat('stat-applied', 'agents applied', ro.agentsApplied || 0),
      stat('stat-pending', 'agents applying', (ro.agentsPending || []).length),
      stat('stat-failed', 'agents failed', (ro.agentsFailed || []).length),
    );
    failures.replaceChildren(
      (ro.failures || []).length === 0
        ? ''
        : table(
            [
              { title: 'Agent', cell: (f) => f.agent },
              { title: 'Listener', cell: (f) => f.listener },
              { title: 'Reason', cell: (f) => f.reason },
            ],
            ro.failures,
          ),
    );
    const list = (certs.certificates || []).sort((a, b) => new Date(a.notAfter) - new Date(b.notAfter));
    soon.replaceChildren(
      table(
        [
          { title: 'Name', cell: (c) => h('a', { href: '#/certificates' }, c.name) },
          { title: 'Not after', cell: (c) => time(c.notAfter) },
          { title: 'Expiry', cell: (c) => h('span', { class: `expiry ${expiry(c.notAfter).cls}` }, expiry(c.notAfter).text) },
        ],
        list,
        { rowClass: (c) => expiry(c.notAfter).cls },
      ),
      certs.nextPageToken ? h('p', { class: 'muted' }, 'and more: see Certificates') : '',
    );
  };
}
