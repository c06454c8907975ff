// Building the page: elements from text, never from HTML, so nothing the
// API returns is parsed as markup.

// h('td', {class: 'x'}, 'text', child, ...): attributes, then children
// (strings become text nodes; null and false are skipped; arrays flatten).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

// A table: columns [{title, cell(row) -> node or text}], one row per item.
export function table(columns, rows, { rowClass, id } = {}) {
  return h(
    'table',
    { id },
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', {}, c.title)))),
    h(
      'tbody',
      {},
      rows.length === 0
        ? h('tr', {}, h('td', { colspan: columns.length, class: 'empty' }, 'none'))
        : rows.map((r) => h('tr', { class: rowClass ? rowClass(r) : null, 'data-name': r.name }, columns.map((c) => h('td', {}, c.cell(r))))),
    ),
  );
}

export function labels(map) {
  const entries = Object.entries(map || {});
  return entries.length === 0 ? '' : entries.map(([k, v]) => h('span', { class: 'label' }, `${k}=${v}`));
}

export function time(ts) {
  return ts ? new Date(ts).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '';
}
