/* A client connection: TLS terminated over libuv (the way Node's TLSWrap
 * and h2o's socket layer do it) and its cleartext proxied to the
 * listener's upstream. Lives on one worker's loop. See conn.c for the
 * state machine. */
#ifndef TLSPLANE_AGENT_CONN_H
#define TLSPLANE_AGENT_CONN_H

#include <uv.h>

#include "worker.h"

/* Takes fd, a connection just accepted on wl's listening socket from peer,
 * and starts its handshake with wl's current version. Enforces the
 * descriptor budget and max_connections; a connection refused, or one
 * whose memory cannot be allocated, is closed at once and counted. */
void conn_accept(struct wlistener *wl, int fd, const struct sockaddr *peer);

/* Graceful shutdown of the worker: connections still in their handshake
 * are closed; established ones idle for WORKER_IDLE_MS (nothing buffered,
 * no I/O) are closed cleanly (close_notify to the client); with force,
 * every connection is closed now. now is uv_now of the worker's loop. */
void conn_drain(struct conn *c, uint64_t now, int force);

/* The next connection of the worker's list (for walks that may close). */
struct conn *conn_next(struct conn *c);

#endif
