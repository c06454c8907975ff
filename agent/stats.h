/* Per-listener counters: the events of Node's tls.Server ('connection',
 * 'secureConnection', 'newSession', 'resumeSession', 'OCSPRequest',
 * 'clientError') as numbers. Every worker thread adds to the same
 * counters with relaxed atomics; /metrics reads them (metrics.c). */
#ifndef TLSPLANE_AGENT_STATS_H
#define TLSPLANE_AGENT_STATS_H

#include <stdatomic.h>
#include <stdint.h>

/* Why a client connection ended badly ('clientError'). The names are the
 * metric's cause label and the log line's cause=. */
enum stats_cause {
  CAUSE_HANDSHAKE_FAILED,    /* the TLS handshake failed (alert, protocol error) */
  CAUSE_HANDSHAKE_ABORTED,   /* the client closed or reset during the handshake */
  CAUSE_HANDSHAKE_TIMEOUT,   /* no complete handshake within handshake_timeout */
  CAUSE_MAX_CONNECTIONS,     /* over the listener's max_connections */
  CAUSE_RENEGOTIATION_LIMIT, /* more renegotiations than the limit per window */
  CAUSE_UPSTREAM_CONNECT,    /* the upstream refused, was unreachable or timed out */
  CAUSE_TLS_ERROR,           /* a fatal TLS error after the handshake */
  CAUSE_COUNT
};

const char *stats_cause_name(enum stats_cause cause);

struct stats {
  atomic_llong connections;       /* gauge: open client connections (server.connections) */
  atomic_llong connections_total; /* TCP connections accepted */
  atomic_llong handshakes;        /* handshakes completed ('secureConnection') */
  atomic_llong resumptions;       /* of which resumed a session ('resumeSession' hit) */
  atomic_llong new_sessions;      /* of which full: a new session ('newSession') */
  atomic_llong ocsp_requests;     /* handshakes whose client sent status_request */
  atomic_llong ocsp_staples;      /* of which got a stapled OCSP response */
  atomic_llong bytes_in;          /* bytes read from clients (TLS records) */
  atomic_llong bytes_out;         /* bytes written to clients (TLS records) */
  atomic_llong client_errors[CAUSE_COUNT];
};

static inline void stats_add(atomic_llong *c, long long n) {
  atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static inline long long stats_get(atomic_llong *c) {
  return atomic_load_explicit(c, memory_order_relaxed);
}

#endif
