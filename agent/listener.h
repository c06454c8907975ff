/* Listeners as the agent serves them.
 *
 * struct listener is one listener name ("listeners/web") for the life of
 * the process: its counters, its live connection count and, on the main
 * thread, which version it serves. It outlives configuration changes so
 * that counters and max_connections span every version.
 *
 * struct listener_version is one applied configuration of it: the TLS side
 * (tlsconf_listener), the resolved bind and upstream addresses and the
 * limits. Immutable once published to the workers, shared by them and
 * reference counted: every worker's listening socket and every connection
 * holds a reference, so a connection keeps the SSL_CTXs, upstream and
 * limits it started with until it ends (DESIGN.md, invariant 3).
 *
 * Both travel through void * (uv handles, SSL app data) inside other
 * structs and carry magic numbers checked by listener_check /
 * listener_version_check. */
#ifndef TLSPLANE_AGENT_LISTENER_H
#define TLSPLANE_AGENT_LISTENER_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

#include "error.h"
#include "rset.h"
#include "stats.h"
#include "tlsconf_listener.h"
#include "tlsplane/v1/snapshot.pb-c.h"

#define LISTENER_MAGIC 0x4c49534eu         /* "LISN" */
#define LISTENER_VERSION_MAGIC 0x4c564552u /* "LVER" */

/* How long a connection to the upstream may take. */
#define LISTENER_UPSTREAM_CONNECT_TIMEOUT_MS 10000

union sockaddr_any {
  struct sockaddr sa;
  struct sockaddr_in in4;
  struct sockaddr_in6 in6;
};

struct listener_version;
struct tlsconf_cert_facts; /* tlsconf.h */

/* The most worker threads an agent runs (--workers). */
#define LISTENER_MAX_WORKERS 256
/* Upstream sessions kept per worker and listener version. Each upstream
 * connection takes one when it starts (a TLS 1.3 ticket is offered once)
 * and its handshake brings one or more (OpenSSL's servers send two
 * tickets after a full TLS 1.3 handshake and one after a resumption), so
 * a row fills up to about as many upstream connections as its worker
 * starts before the first tickets come back, and this is its ceiling: 4
 * resumed 77 % of the bench's 25 connections starting at once per worker,
 * 32 resumed 97-99 %. A kept session costs 1288 bytes with a ticket of
 * OpenSSL's size (measured with OpenSSL 3.0's allocator hooks); the
 * upstream's certificate, 4-4.5 KiB parsed, is shared by the sessions of
 * one full handshake and those resumed from them. */
#define LISTENER_UP_SESSIONS 64
/* A session whose ticket is longer is not kept (a TLS 1.3 ticket may be
 * up to 64 KiB; OpenSSL's hold the session: about 200 bytes, a few
 * hundred more with a client certificate). */
#define LISTENER_UP_TICKET_MAX 8192

struct listener {
  unsigned magic;
  atomic_int refs; /* the registry's, plus one per version */
  char *name;      /* "listeners/web" */
  struct stats stats;

  /* Main thread only (apply.c, metrics.c). */
  struct listener_version *applied; /* the version served (reference held), NULL if none */
  int64_t applied_revision;         /* the snapshot revision applied gave it */
  int64_t served_since;             /* the revision applied was put in place at (NEW, CHANGE) */
  char last_error[1024];            /* why the newest version was not applied; "" if it was */
  int dropped;                      /* gone from the snapshot; kept while connections drain */
  int in_snapshot;                  /* apply.c's mark while it applies a snapshot */
  struct listener *next;            /* registry list */
};

struct listener_version {
  unsigned magic;
  atomic_int refs;
  struct listener *listener;    /* reference held */
  struct tlsconf_listener *tls; /* reference held */
  /* ListenerEntry.hash of the entry it was built from (rset.h): an entry
   * with the same hash is KEEP, with nothing compared; zeros: none. */
  uint8_t entry_hash[RSET_HASH_LEN];
  char *address;                /* as configured, "host:port" */
  union sockaddr_any bind_addr; /* resolved; the port is the bound one once open */
  char *upstream;               /* as configured */
  union sockaddr_any upstream_addr;
  char *upstream_path; /* a Unix-socket upstream's path ("unix:/path"); NULL: TCP */
  int proxy_protocol;
  uint64_t handshake_timeout_ms; /* 0: no limit */
  uint64_t idle_timeout_ms;      /* no byte either way for this long closes; 0: no limit */
  uint64_t write_timeout_ms;     /* bytes waiting for a side, none taken this long; 0: no limit */
  int64_t max_connections;       /* 0: no limit */
  int renegotiation_limit;
  uint64_t renegotiation_window_ms;
  /* What it serves, for /metrics: each certificate of its contexts once
   * (by name and fingerprint), in context order; the facts belong to the
   * contexts (tlsconf_ctx_certs) and live as long as tls. */
  const struct tlsconf_cert_facts **certs;
  size_t n_certs;
  /* upstream_tls: the resumable sessions each worker (by worker id) got
   * from its upstream handshakes, newest last (n of them, at most
   * LISTENER_UP_SESSIONS: the oldest goes when full). One is taken for
   * each new upstream connection, so that a TLS 1.3 ticket is offered
   * once (RFC 8446, appendix C.4); a TLS 1.2 session that resumed is kept
   * again. A row is allocated by its worker when it first keeps a
   * session, and read and written only by that worker's thread; all are
   * freed with the version, so that a new configuration starts without
   * sessions. NULL (no memory spent) without upstream_tls. */
  struct listener_up_sessions {
    unsigned n;
    SSL_SESSION *kept[LISTENER_UP_SESSIONS];
  } * *up_sessions; /* LISTENER_MAX_WORKERS row pointers, NULL until used */
};

/* A new listener called name with zeroed counters; one reference (the
 * caller's). NULL when out of memory. */
struct listener *listener_new(const char *name);
void listener_ref(struct listener *l);
/* Drops a reference; the last frees it. NULL is a no-op. */
void listener_unref(struct listener *l);
/* Aborts unless p is a listener (memory corruption or a foreign pointer). */
struct listener *listener_check(void *p);

/* Builds a version of l from rl: checks the Listener fields (address,
 * upstream, limits) by the rules the API applies (listener_rules_check,
 * common/), resolves the bind and upstream addresses
 * (getaddrinfo: call it off the worker loops) and builds the TLS side
 * (tlsconf_listener_build_cached: contexts come from cache, the agent's
 * one cache of built contexts, by the content hashes of entry, the
 * ListenerEntry rl was resolved from, and only those it lacks are built).
 * The version keeps entry's hash (entry NULL: no hash, no sharing by
 * hash). Neither rl nor entry is kept.
 * All or nothing: on failure err names the field ("upstream: ...") and
 * nothing is kept. The result holds one reference (the caller's). */
int listener_version_build(struct listener *l, const Tlsplane__V1__ResolvedListener *rl,
                           const Tlsplane__V1__ListenerEntry *entry, struct tlsconf_ctxcache *cache,
                           struct listener_version **out, struct tp_err *err);
void listener_version_ref(struct listener_version *v);
/* Drops a reference; the last releases the TLS side and the listener.
 * Safe from any thread. NULL is a no-op. */
void listener_version_unref(struct listener_version *v);
struct listener_version *listener_version_check(void *p);

/* Opens n listening sockets on v's bind address, each with SO_REUSEADDR
 * and SO_REUSEPORT (one per worker: the kernel spreads connections over
 * them), non-blocking, listening. With port 0 the first picks a port and
 * the others share it; v->bind_addr then holds the bound port (call this
 * before v is published). probe: first check with a socket without
 * SO_REUSEPORT that nobody listens there: SO_REUSEPORT would otherwise
 * join another process of the same user listening with it (and take half
 * of its connections); pass 0 only when the address is held by sockets of
 * this process that are about to close. On failure every socket opened is
 * closed and err says why ("address: 127.0.0.1:443: bind: Permission
 * denied"). */
int listener_sockets_open(struct listener_version *v, int n, int probe, int *fds,
                          struct tp_err *err);

/* One listening socket on a (non-blocking, close-on-exec, SO_REUSEADDR,
 * TCP_NODELAY; with reuseport also SO_REUSEPORT), in *fd. On failure err
 * says "FIELD: ADDRESS: STEP: REASON" (field: "address",
 * "--metrics-listen"). */
int listener_socket_open(const union sockaddr_any *a, int reuseport, const char *field,
                         const char *address, int *fd, struct tp_err *err);

/* Resolves "host:port" (getaddrinfo: blocking). passive: a bind address,
 * where an empty host (or "*") means every address and port 0 any free
 * port. field names the field in errors. */
int listener_addr_resolve(const char *address, int passive, const char *field,
                          union sockaddr_any *out, struct tp_err *err);

/* Whether a and b are the same address and port. */
int listener_addr_equal(const union sockaddr_any *a, const union sockaddr_any *b);

/* "1.2.3.4:5678" or "[::1]:5678". */
void listener_addr_format(const union sockaddr_any *a, char *buf, size_t len);

#endif
