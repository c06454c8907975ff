/* GET /metrics: the agent's counters in Prometheus' text format (0.0.4),
 * and GET /healthz: whether every listener is served as configured (for
 * load balancers), served on the main loop by a small libuv TCP server whose requests are
 * parsed by libhttp-parser. Every other path is 404. Bounded like the
 * listeners: at most METRICS_MAX_CONNECTIONS at once (more are closed at
 * accept and counted), each closed unless its request arrives within 5 s
 * and its response goes out within 10 s; accepting goes through
 * acceptor.c. */
#ifndef TLSPLANE_AGENT_METRICS_H
#define TLSPLANE_AGENT_METRICS_H

#include <http_parser.h>
#include <stddef.h>
#include <uv.h>

#include "agent.h"
#include "error.h"

/* Connections the endpoint serves at once; kept out of the descriptor
 * budget's connections by its reserve (budget.h). */
#define METRICS_MAX_CONNECTIONS 16

#define METRICS_REQUEST_MAGIC 0x4d524551u /* "MREQ" */

/* What a request asks for, once its status is 200. */
enum metrics_path {
  METRICS_PATH_METRICS, /* /metrics */
  METRICS_PATH_HEALTHZ, /* /healthz */
};

/* One request of a metrics connection, parsed as its bytes arrive; apart
 * from the connection so that it can be driven without a socket
 * (tests/fuzz/fuzz_metrics_http.c). Initialise with metrics_request_init;
 * it holds nothing to free. */
struct metrics_request {
  unsigned magic;
  http_parser parser;
  char url[1024];
  size_t url_len;
  size_t seen;            /* bytes fed so far */
  int status;             /* 0 until decided; then the answer: 200, 400, 404, 405, 431 */
  int head_only;          /* 200 to a HEAD: headers only */
  enum metrics_path path; /* when status is 200 */
};

void metrics_request_init(struct metrics_request *r);
/* Feeds len more bytes of the request and returns r->status: 0 while more
 * is needed; once decided, the answer (and later bytes are ignored): 200
 * for GET or HEAD /metrics or /healthz (r->path says which; /healthz may
 * then still answer 503), 404 for another path, 405 for another method
 * on those two, 400 when the request does not parse, 431 when its head
 * goes beyond 8 KiB. One request per connection: what follows it is not
 * read. */
int metrics_request_feed(struct metrics_request *r, const char *data, size_t len);

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

/* /healthz: returns 200 with "ok\n" in *out when every listener of the
 * configuration applied last is applied and in place on every worker;
 * 503 with a line per listener that is not ("listeners/web: not applied:
 * REASON", "listeners/web: pending: ..."), or "no configuration\n" before
 * any configuration was applied; -1 when out of memory. Caller frees
 * *out. */
int metrics_health(const struct agent *a, char **out, size_t *len);

#endif
