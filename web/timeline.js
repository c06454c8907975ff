// The expiry timeline: an SVG of the next DAYS days with one mark per
// certificate that expires within them, coloured by its expiry bucket and
// titled with its name and date. Built with DOM calls, styled by classes.
import { s, time } from './dom.js';
import { expiry } from './format.js';

const DAY = 24 * 3600 * 1000;
const DAYS = 90;
const W = 900; // viewBox units
const PAD = 20;
const LANE = 12; // vertical step between marks that would overlap
const LANES = 4;
const TICKS = [0, 7, 30, 60, 90];

const x = (days) => PAD + ((W - 2 * PAD) * days) / DAYS;

// Marks that would overlap go to the next lane (of LANES).
function lanes(marks) {
  const last = [];
  for (const m of marks) {
    let lane = last.findIndex((lx) => m.x - lx >= LANE);
    if (lane < 0) lane = last.length < LANES ? last.length : marks.indexOf(m) % LANES;
    last[lane] = m.x;
    m.lane = lane;
  }
  return marks;
}

export function timeline(certs, now = Date.now()) {
  const marks = certs
    .map((c) => ({ c, days: (new Date(c.notAfter).getTime() - now) / DAY }))
    .filter((m) => m.c.notAfter && m.days > 0 && m.days <= DAYS)
    .sort((a, b) => a.days - b.days)
    .map((m) => ({ ...m, x: x(m.days) }));
  const axisY = PAD + LANES * LANE;
  const height = axisY + 30;
  return s(
    'svg',
    { id: 'expiry-timeline', class: 'timeline', viewBox: `0 0 ${W} ${height}`, role: 'img', 'aria-label': `expiries over the next ${DAYS} days` },
    s('title', {}, `Certificates on this page expiring within ${DAYS} days: ${marks.length}`),
    s('rect', { class: 'band band-critical', x: x(0), y: PAD - 8, width: x(7) - x(0), height: axisY - PAD + 8 }),
    s('rect', { class: 'band band-warn', x: x(7), y: PAD - 8, width: x(30) - x(7), height: axisY - PAD + 8 }),
    s('line', { class: 'axis', x1: x(0), y1: axisY, x2: x(DAYS), y2: axisY }),
    TICKS.map((d) => [
      s('line', { class: 'tick', x1: x(d), y1: axisY, x2: x(d), y2: axisY + 5 }),
      s('text', { class: 'tick-label', x: x(d), y: axisY + 18 }, d === 0 ? 'now' : `${d} d`),
    ]),
    lanes(marks).map((m) =>
      s(
        'circle',
        { class: `mark ${expiry(m.c.notAfter, now).cls}`, cx: m.x.toFixed(1), cy: axisY - 6 - m.lane * LANE, r: 5, 'data-name': m.c.name },
        s('title', {}, `${m.c.name}: ${time(m.c.notAfter)} (${expiry(m.c.notAfter, now).text})`),
      ),
    ),
  );
}
