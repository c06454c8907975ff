// How a certificate's expiry reads: a class for its colour and a text.
// > 30 days: ok; <= 30 days: warn; < 7 days: critical; past: expired.

const DAY = 24 * 3600 * 1000;

export function expiry(notAfter, now = Date.now()) {
  if (!notAfter) return { cls: 'expiry-unknown', text: '' };
  const left = new Date(notAfter).getTime() - now;
  const days = Math.round(Math.abs(left) / DAY);
  const n = (d) => (d === 1 ? '1 day' : `${d} days`);
  if (left <= 0) return { cls: 'expiry-expired', text: days === 0 ? 'expired today' : `expired ${n(days)} ago` };
  let cls = 'expiry-ok';
  if (left < 7 * DAY) cls = 'expiry-critical';
  else if (left <= 30 * DAY) cls = 'expiry-warn';
  const text = left < DAY ? `expires in ${Math.max(1, Math.round(left / 3600000))} h` : `expires in ${n(days)}`;
  return { cls, text };
}

export function duration(d) {
  // protobuf JSON: "86400s"
  const s = parseFloat(d);
  if (!d || Number.isNaN(s)) return '';
  if (s % 86400 === 0) return `${s / 86400} d`;
  if (s % 3600 === 0) return `${s / 3600} h`;
  return `${s} s`;
}

// The expiry buckets, in order: the class expiry() gives and a title.
export const BUCKETS = [
  { cls: 'expiry-expired', title: 'expired' },
  { cls: 'expiry-critical', title: 'expire in < 7 days' },
  { cls: 'expiry-warn', title: 'expire in ≤ 30 days' },
  { cls: 'expiry-ok', title: 'expire in > 30 days' },
];

// How long ago `ts` was: "45 s", "12 min", "5 h", "3 d".
export function age(ts, now = Date.now()) {
  if (!ts) return '';
  const s = Math.max(0, Math.round((now - new Date(ts).getTime()) / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

// A certificate's key: "EC 256 (prime256v1)", "RSA 2048", "ED25519".
export function keyType(c) {
  const parts = [c.keyAlgorithm || '', c.keyBits ? String(c.keyBits) : '', c.keyCurve ? `(${c.keyCurve})` : ''];
  return parts.filter(Boolean).join(' ');
}
