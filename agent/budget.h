/* The process's descriptor budget: how many client connections the agent
 * holds at once, so that it never runs out of file descriptors.
 *
 * Running out is not survivable otherwise: libuv (1.44) answers EMFILE on
 * a listening socket by closing a spare descriptor, accepting and closing
 * what is pending and reopening the spare, and when the spare cannot be
 * reopened it retries accept(2) at once in a loop that never returns to
 * the event loop; timers, signals and every other socket of that loop
 * then starve (src/unix/stream.c, uv__server_io). So the agent accepts
 * with acceptor.c, and keeps within a budget:
 *
 *   descriptors = RLIMIT_NOFILE (the soft limit, raised to the hard one)
 *   reserve     = BUDGET_RESERVE + BUDGET_RESERVE_PER_WORKER per worker:
 *                 stdio, event loops, the metrics endpoint and its
 *                 connections, the control-plane stream, the cache files,
 *                 certificate and resolver files, one accept in flight
 *   listening   = the listening sockets open (one per listener per worker)
 *   connections <= (descriptors - reserve - listening) / 2
 *
 * Each client connection takes two descriptors at accept, its own and its
 * upstream's, so that a connection accepted can always reach its
 * upstream. A connection beyond the budget is accepted and closed at once
 * and counted (tlsplane_agent_connections_refused_total{cause=
 * "descriptors"}): the kernel's queue stays empty and a new client is
 * served as soon as a connection ends.
 *
 * Shared by the main thread and every worker: everything that changes is
 * atomic. Made by budget_init on the main thread before the workers. */
#ifndef TLSPLANE_AGENT_BUDGET_H
#define TLSPLANE_AGENT_BUDGET_H

#include <stdatomic.h>
#include <stdint.h>

#include "log.h"

#define BUDGET_RESERVE 64
#define BUDGET_RESERVE_PER_WORKER 8

/* Why a connection was refused at accept: the cause label of
 * tlsplane_agent_connections_refused_total. */
enum budget_refusal {
  REFUSED_DESCRIPTORS,   /* a client connection over the descriptor budget */
  REFUSED_OUT_OF_MEMORY, /* a client connection whose memory could not be allocated */
  REFUSED_METRICS,       /* a metrics connection over METRICS_MAX_CONNECTIONS */
  REFUSED_COUNT
};

const char *budget_refusal_name(enum budget_refusal r);

struct budget {
  long fd_limit;           /* RLIMIT_NOFILE (soft) once raised */
  long fd_limit_was;       /* the soft limit the process started with */
  long reserve;            /* descriptors kept for what is not counted */
  atomic_long listening;   /* listening sockets open (apply.c sets it) */
  atomic_long connections; /* client connections holding their two descriptors */
  atomic_llong refused[REFUSED_COUNT];
  atomic_llong accept_errors; /* accept(2) failed for want of descriptors or memory */
  /* Their log lines, each limited (log.h). */
  struct log_limit refused_log[REFUSED_COUNT];
  struct log_limit accept_error_log;
};

/* Raises the soft RLIMIT_NOFILE to the hard limit (when it can) and sets
 * the reserve for n_workers workers. */
void budget_init(struct budget *b, int n_workers);
/* How many client connections fit now. */
long budget_connections_max(struct budget *b);
/* Takes the two descriptors of a client connection: 0, or -EMFILE when
 * the budget is spent (nothing is taken). Any thread. */
int budget_connection_take(struct budget *b);
/* Gives back what budget_connection_take took. */
void budget_connection_release(struct budget *b);
/* Counts a refusal; returns 1 when its log line may be written now, with
 * *suppressed the lines of that cause left out since the last one. */
int budget_refuse(struct budget *b, enum budget_refusal r, uint64_t now_ms,
                  unsigned long long *suppressed);
/* Counts an accept(2) failure (acceptor.h); the same about its line. */
int budget_accept_error(struct budget *b, uint64_t now_ms, unsigned long long *suppressed);

#endif
