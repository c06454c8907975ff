/* Per-listener counters: the events of Node's tls.Server ('connection',
 * 'secureConnection', 'newSession', 'resumeSession', 'OCSPRequest',
 * 'clientError') as numbers. Every worker thread adds to the same
 * counters with relaxed atomics; /metrics reads them (metrics.c). */
#ifndef TLSPLANE_AGENT_STATS_H
#define TLSPLANE_AGENT_STATS_H

#include <stdatomic.h>
#include <stdint.h>

#include "log.h"

/* Why a client connection ended badly ('clientError'). The names are the
 * metric's cause label and the log line's cause=. */
enum stats_cause {
  CAUSE_HANDSHAKE_FAILED,       /* the TLS handshake failed (alert, protocol error) */
  CAUSE_HANDSHAKE_ABORTED,      /* the client closed or reset during the handshake */
  CAUSE_HANDSHAKE_TIMEOUT,      /* no complete handshake within handshake_timeout */
  CAUSE_MAX_CONNECTIONS,        /* over the listener's max_connections */
  CAUSE_RENEGOTIATION_LIMIT,    /* more renegotiations than the limit per window */
  CAUSE_UPSTREAM_CONNECT,       /* the upstream refused, was unreachable or timed out */
  CAUSE_TLS_ERROR,              /* a fatal TLS error after the handshake */
  CAUSE_KEY_UPDATE_LIMIT,       /* more TLS 1.3 KeyUpdates than CONN_KEY_UPDATE_LIMIT per window */
  CAUSE_IDLE_TIMEOUT,           /* no byte either way for the listener's idle_timeout */
  CAUSE_CLIENT_WRITE_TIMEOUT,   /* the client took nothing of what waited for write_timeout */
  CAUSE_UPSTREAM_WRITE_TIMEOUT, /* the upstream took nothing of what waited for write_timeout */
  CAUSE_UPSTREAM_TLS_HANDSHAKE, /* upstream_tls: the handshake with the upstream failed or timed out
                                 */
  CAUSE_UPSTREAM_VERIFY, /* upstream_tls: the upstream's certificate did not verify or match */
  /* The ALPN list was exactly "acme-tls/1" (an ACME tls-alpn-01
   * validation) for a name the listener holds no challenge for. */
  CAUSE_ACME_NO_CHALLENGE,
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
  atomic_llong bytes_out;         /* bytes of TLS records the client's socket took */
  atomic_llong up_handshakes;     /* upstream_tls: handshakes with the upstream completed */
  atomic_llong up_resumptions;    /* of which resumed the session kept from the last one */
  atomic_llong acme_challenges;   /* ACME tls-alpn-01 validations answered (handshakes too) */
  atomic_llong client_errors[CAUSE_COUNT];
  /* The log line of each cause, limited (a flood of bad clients makes a
   * few lines a second, each saying how many were left out). */
  struct log_limit client_error_log[CAUSE_COUNT];
  struct log_limit acme_log; /* the line of each challenge answered */
};

static inline void stats_add(atomic_llong *c, long long n) {
  atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static inline long long stats_get(atomic_llong *c) {
  return atomic_load_explicit(c, memory_order_relaxed);
}

#endif
