/* The server's /metrics page, Prometheus text format 0.0.4: the store's
 * revision, the fleet's rollout of it, push latency, RPCs by method,
 * transport and code, and every certificate's expiry. */
#ifndef TLSPLANE_SERVER_METRICS_TEXT_H
#define TLSPLANE_SERVER_METRICS_TEXT_H

#include "api.h"
#include "hub.h"
#include "rpc.h"

struct metrics_source {
  struct api *api;
  struct hub *hub;
  struct rpc_server *rpc;
};

/* The page (malloc'd, NUL-terminated), or NULL when out of memory; src is
 * a struct metrics_source. A section whose data cannot be read (the
 * store) is left out and counted in tlsplane_metrics_errors. */
char *metrics_text(void *src);

#endif
