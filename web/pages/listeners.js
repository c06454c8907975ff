// Listeners and the TLS contexts they use.
import { call } from '../api.js';
import { h, labels, table } from '../dom.js';
import { Pager } from '../pager.js';

export function mount(root, ctx) {
  const lp = new Pager(100);
  const cp = new Pager(100);
  const listeners = h('div', { id: 'listeners' });
  const contexts = h('div', { id: 'tls-contexts' });
  root.append(
    h('h2', {}, 'Listeners'), lp.controls(() => ctx.refreshSoon()), listeners,
    h('h2', {}, 'TLS contexts'), cp.controls(() => ctx.refreshSoon()), contexts,
  );
  const lcols = [
    { title: 'Name', cell: (l) => l.name },
    { title: 'Address', cell: (l) => l.address },
    { title: 'Default context', cell: (l) => l.defaultTlsContext || '' },
    { title: 'SNI routes', cell: (l) => (l.sniRoutes || []).map((s) => h('div', {}, `${s.hostname} → ${s.tlsContext}`)) },
    { title: 'Upstream', cell: (l) => l.upstream || '' },
    { title: 'Agents', cell: (l) => labels(l.agentSelector) },
    { title: 'Ticket keys', cell: (l) => l.ticketKeyRing || '' },
    { title: 'Revision', cell: (l) => l.revision },
  ];
  const ccols = [
    { title: 'Name', cell: (c) => c.name },
    { title: 'Certificates', cell: (c) => (c.certificates || []).map((x) => h('div', {}, x)) },
    { title: 'Cipher policy', cell: (c) => c.cipherPolicy || '' },
    { title: 'Trust bundle', cell: (c) => c.trustBundle || '' },
    { title: 'Client certificates', cell: (c) => (c.requestCert ? (c.rejectUnauthorized ? 'required' : 'requested') : 'no') },
    { title: 'ALPN', cell: (c) => (c.alpnProtocols || []).join(', ') },
    { title: 'OCSP stapling', cell: (c) => (c.ocspStapling ? 'yes' : 'no') },
    { title: 'Revision', cell: (c) => c.revision },
  ];
  return async function refresh() {
    const [l, c] = await Promise.all([
      call('ListenerService', 'ListListeners', lp.request()),
      call('TlsContextService', 'ListTlsContexts', cp.request()),
    ]);
    lp.update(l.nextPageToken);
    cp.update(c.nextPageToken);
    listeners.replaceChildren(table(lcols, l.listeners || [], { id: 'listeners-table' }));
    contexts.replaceChildren(table(ccols, c.tlsContexts || [], { id: 'tls-contexts-table' }));
  };
}
