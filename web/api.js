// The API over the server's JSON gateway (the Connect protocol, unary):
// POST /tlsplane.v1.Service/Method with the request as protobuf JSON and
// the bearer token. The token lives in sessionStorage only: it goes away
// with the tab, and never appears in a URL.

const TOKEN_KEY = 'tlsplane.token';

export class ApiError extends Error {
  constructor(code, message, httpStatus) {
    super(message);
    this.code = code; // Connect's code: "permission_denied", ...
    this.httpStatus = httpStatus;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(t) {
  sessionStorage.setItem(TOKEN_KEY, t);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// Resolves with the response message, or rejects with an ApiError.
export async function call(service, method, request = {}) {
  const res = await fetch(`/tlsplane.v1.${service}/${method}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token() || ''}` },
    body: JSON.stringify(request),
    cache: 'no-store',
    credentials: 'omit',
  });
  const text = await res.text();
  let body = {};
  try {
    body = text ? JSON.parse(text) : {};
  } catch (_) {
    throw new ApiError('unknown', `${method}: HTTP ${res.status}, not JSON`, res.status);
  }
  if (!res.ok) throw new ApiError(body.code || 'unknown', body.message || `HTTP ${res.status}`, res.status);
  return body;
}

// What the caller may do: TokenService.GetCaller says who the server
// takes the token for. Operators and admins write; viewers read only.
export async function role() {
  const me = await call('TokenService', 'GetCaller', {});
  const name = (me.role || 'ROLE_UNSPECIFIED').toLowerCase();
  return { canWrite: name === 'admin' || name === 'operator', name, actor: me.actor || '' };
}

// Reads up to maxPages pages of `pageSize` items of a List method and
// returns { items, more }: more is true when pages were left unread, so a
// count reads "N+".
export async function collect(service, method, field, request = {}, { maxPages = 10, pageSize = 100 } = {}) {
  const items = [];
  let pageToken = '';
  for (let i = 0; i < maxPages; i++) {
    const r = await call(service, method, { ...request, pageSize, pageToken });
    items.push(...(r[field] || []));
    pageToken = r.nextPageToken || '';
    if (!pageToken) return { items, more: false };
  }
  return { items, more: true };
}
