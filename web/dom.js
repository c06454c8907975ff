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

// A table: columns [{title, cell(row) -> node or text, class}], one row per item
// (its data-name is rowName(row), by default row.name). With sort
// ({key, desc}) and onSort(key), a column with a sortKey has a header
// that sorts by it when clicked.
export function table(columns, rows, { rowClass, id, rowName, sort, onSort } = {}) {
  const name = rowName || ((r) => r.name);
  return h(
    'table',
    { id },
    h('thead', {}, h('tr', {}, columns.map((c) => header(c, sort, onSort)))),
    h(
      'tbody',
      {},
      rows.length === 0
        ? h('tr', {}, h('td', { colspan: columns.length, class: 'empty' }, 'none'))
        : rows.map((r) => h('tr', { class: rowClass ? rowClass(r) : null, 'data-name': name(r) }, columns.map((c) => h('td', { class: c.class }, c.cell(r))))),
    ),
  );
}

function header(c, sort, onSort) {
  if (!c.sortKey || !onSort) return h('th', {}, c.title);
  const on = sort && sort.key === c.sortKey;
  const dir = on ? (sort.desc ? 'descending' : 'ascending') : 'none';
  return h(
    'th',
    { class: `sortable${on ? ' sorted' : ''}`, 'data-sort': c.sortKey, 'aria-sort': dir, onclick: () => onSort(c.sortKey) },
    c.title,
    on ? (sort.desc ? ' ▼' : ' ▲') : '',
  );
}

const SVG_NS = 'http://www.w3.org/2000/svg';

// s('rect', {class: 'x', x: 1}, child, ...): an SVG element, as h() builds
// HTML ones (attributes only: the CSP allows no inline style).
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    el.setAttribute(k === 'className' ? 'class' : k, String(v));
  }
  append(el, children);
  return el;
}

// A key / value list: [[title, value], ...].
export function facts(pairs, id) {
  return h('dl', { class: 'facts', id }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v === '' || v === undefined ? '–' : v)]));
}

export function labels(map) {
  const entries = Object.entries(map || {});
  return entries.length === 0 ? '' : entries.map(([k, v]) => h('span', { class: 'label' }, `${k}=${v}`));
}

export function time(ts) {
  return ts ? new Date(ts).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '';
}
