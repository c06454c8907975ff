/* Errors as the API reports them: a gRPC status code and a message that
 * names the field and the reason ("certificate.private_key_pem: does not
 * match the certificate"). Lives in the caller's out-parameter, never in a
 * static buffer. */
#ifndef TLSPLANE_COMMON_ERROR_H
#define TLSPLANE_COMMON_ERROR_H

#include <grpc/status.h>

struct tp_err {
  grpc_status_code status; /* GRPC_STATUS_OK until set */
  char msg[1024];
};

/* Sets status and message (printf format). Returns -1, so that callers can
 * write `return tp_err_set(err, ...)`. err may be NULL. */
int tp_err_set(struct tp_err *err, grpc_status_code status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to err->msg (e.g. the request field that held the
 * resource: "certificate."). */
void tp_err_prefix(struct tp_err *err, const char *prefix);

/* Appends the OpenSSL error queue (drained) to err->msg as "; reason". */
void tp_err_append_openssl(struct tp_err *err);

#endif
