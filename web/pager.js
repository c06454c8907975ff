// Server-side paging (page_size / page_token): one page is fetched and
// rendered at a time, so a long list never lands in the page at once.
import { h } from './dom.js';

export class Pager {
  constructor(size = 100) {
    this.size = size;
    this.tokens = ['']; // the token of each page seen so far
    this.index = 0;
    this.next = '';
    this.nav = null;
  }

  request(extra = {}) {
    return { ...extra, pageSize: this.size, pageToken: this.tokens[this.index] };
  }

  // After a page came: its next_page_token.
  update(nextPageToken) {
    this.next = nextPageToken || '';
    if (this.nav) this.render();
  }

  // The prev / next controls; onchange() runs after a move.
  controls(onchange, label = 'page') {
    this.onchange = onchange;
    this.label = label;
    this.nav = h('div', { class: 'pager' });
    this.render();
    return this.nav;
  }

  render() {
    const move = (d) => () => {
      if (d > 0) this.tokens[this.index + 1] = this.next;
      this.index += d;
      this.onchange();
    };
    this.nav.replaceChildren(
      h('button', { type: 'button', class: 'prev', disabled: this.index === 0, onclick: move(-1) }, '← prev'),
      h('span', {}, `${this.label} ${this.index + 1}`),
      h('button', { type: 'button', class: 'next', disabled: !this.next, onclick: move(1) }, 'next →'),
    );
  }
}
