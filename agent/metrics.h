/* GET /metrics: the agent's counters in Prometheus' text format (0.0.4),
 * served on the main loop by a small libuv TCP server whose requests are
 * parsed by libhttp-parser. Every other path is 404. */
#ifndef TLSPLANE_AGENT_METRICS_H
#define TLSPLANE_AGENT_METRICS_H

#include <stddef.h>
#include <uv.h>

#include "agent.h"
#include "error.h"

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
