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

// What the caller may do: "viewer" (reads only) or "writer" (operator or
// admin). No method names the caller's role, so ask for a write that is
// refused before it does anything: a viewer is refused with
// permission_denied; an operator or admin gets invalid_argument (an empty
// request names no certificate), and nothing changes.
export async function role() {
  try {
    await call('CertificateService', 'UpdateCertificate', {});
  } catch (e) {
    if (e.code === 'permission_denied') {
      const m = /\(role (\w+)\)/.exec(e.message);
      return { canWrite: false, name: m ? m[1] : 'viewer' };
    }
    if (e.code === 'invalid_argument') return { canWrite: true, name: 'operator' };
    throw e;
  }
  return { canWrite: true, name: 'operator' };
}
