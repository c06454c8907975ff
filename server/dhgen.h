/* New DH parameters for cipher policies (CipherPolicyService.
 * GenerateDhParameters), made off the request threads: the call marks the
 * policy's dh_generation RUNNING and queues the work; one thread of its
 * own generates each safe prime in turn (seconds to minutes of CPU), then
 * writes it into the policy's dhparam_pem as one revision, actor
 * "system", and marks the generation DONE, or FAILED with the reason. */
#ifndef TLSPLANE_SERVER_DHGEN_H
#define TLSPLANE_SERVER_DHGEN_H

#include "api.h"

/* Generations waiting or running at once, at most; beyond,
 * RESOURCE_EXHAUSTED. */
#define DHGEN_MAX_QUEUED 4

struct dhgen;

/* Starts the thread; first marks FAILED every generation a previous run
 * of the server left RUNNING (its work was lost with that process).
 * Caller stops it with dhgen_stop, after the RPC server has stopped. */
int dhgen_start(struct api *api, struct dhgen **out, struct tp_err *err);

/* Stops the thread: the generation in progress is abandoned (and marked
 * FAILED on the next start). NULL is a no-op. */
void dhgen_stop(struct dhgen *g);

/* The GenerateDhParameters handler's work: marks policy `name` RUNNING
 * for `bits` (2048, 3072 or 4096) under etag (may be ""), queues it, and
 * sets *resp to the policy as written. */
int dhgen_request(struct dhgen *g, const struct rpc_call_info *call, const char *name, int bits,
                  const char *etag, ProtobufCMessage **resp, struct tp_err *err);

#endif
