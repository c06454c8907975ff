/* GET /metrics: the agent's counters in Prometheus' text format (0.0.4),
 * served on the main loop by a small libuv TCP server whose requests are
 * parsed by libhttp-parser. Every other path is 404. Bounded like the
 * listeners: at most METRICS_MAX_CONNECTIONS at once (more are closed at
 * accept and counted), each closed unless its request arrives within 5 s
 * and its response goes out within 10 s; accepting goes through
 * acceptor.c. */
#ifndef TLSPLANE_AGENT_METRICS_H
#define TLSPLANE_AGENT_METRICS_H

#include <stddef.h>
#include <uv.h>

#include "agent.h"
#include "error.h"

/* Connections the endpoint serves at once; kept out of the descriptor
 * budget's connections by its reserve (budget.h). */
#define METRICS_MAX_CONNECTIONS 16

struct metrics;

/* Listens on address ("host:port"; port 0: any free port) on loop. */
int metrics_start(struct agent *a, uv_loop_t *loop, const char *address, struct metrics **out,
                  struct tp_err *err);
/* The address actually bound, "127.0.0.1:9443". */
const char *metrics_address(const struct metrics *m);
/* Stops listening and closes every connection; m is freed once the last
 * handle is closed (run the loop). NULL is a no-op. */
void metrics_close(struct metrics *m);

/* The exposition text (caller frees *out). */
int metrics_render(const struct agent *a, char **out, size_t *len);

#endif
