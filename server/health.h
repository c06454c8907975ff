/* grpc.health.v1.Health: the standard health checking protocol.
 *
 * Check answers SERVING for "" (the whole server), for every service named
 * at registration, and for grpc.health.v1.Health and the two reflection
 * services (the set reflection's list_services answers with); NOT_SERVING
 * for those once the server is shutting down; the status NOT_FOUND for any
 * other name. Watch sends the current status (SERVICE_UNKNOWN for an unknown name)
 * and keeps the stream open until the client cancels or the server shuts
 * down; on shutdown it sends NOT_SERVING and ends with OK. */
#ifndef TLSPLANE_SERVER_HEALTH_H
#define TLSPLANE_SERVER_HEALTH_H

#include <stddef.h>

#include "rpc.h"

/* Registers grpc.health.v1.Health on srv (before rpc_server_start).
 * services[0..n): full service names ("tlsplane.v1.CertificateService"),
 * copied. The service's state is freed by rpc_server_free. Returns 0, or a
 * negative errno (-ENOMEM, or from rpc_server_add_*); after a failure srv
 * must not be started, only freed. */
int health_register(struct rpc_server *srv, const char *const *services, size_t n);

#endif
