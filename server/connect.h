/* The Connect protocol's unary form (connectrpc.com, docs/protocol.md) as
 * the HTTP gateway reads and writes it: which paths are RPCs, the
 * content type, connect-timeout-ms, and the error body with its HTTP
 * status. Pure functions over the request's bytes: no H2O, no state. */
#ifndef TLSPLANE_SERVER_CONNECT_H
#define TLSPLANE_SERVER_CONNECT_H

#include <grpc/status.h>
#include <stddef.h>
#include <stdint.h>

/* Whether path (len bytes, no query) is "/package.Service/Method": a
 * dotted service name and a method name of letters, digits and '_'. */
int connect_rpc_path(const char *path, size_t len);

/* Whether a content-type value is application/json (any case, parameters
 * such as "; charset=utf-8" allowed). */
int connect_content_type_json(const char *value, size_t len);

/* connect-timeout-ms: 1 to 10 ASCII digits. 0 with *ms set, or -1. */
int connect_timeout_parse(const char *value, size_t len, int64_t *ms);

/* Connect's name for a gRPC code ("invalid_argument") and its HTTP status;
 * a code out of range is "unknown", 500. */
const char *connect_code_name(grpc_status_code code);
int connect_code_http(grpc_status_code code);

/* The error body {"code": ..., "message": ...} (malloc'd, NUL-terminated;
 * NULL when out of memory). Bytes of msg that are not UTF-8 become '?',
 * so the body is always valid JSON. */
char *connect_error_json(grpc_status_code code, const char *msg);

#endif
