/* The server's HTTP side: HTTPS (HTTP/1.1 and HTTP/2, on H2O and libuv,
 * one thread of its own) beside the gRPC port, serving
 *
 * - every unary method of the API as JSON, in the Connect protocol
 *   (connectrpc.com, docs/protocol.md): POST /tlsplane.v1.Service/Method
 *   with content-type application/json, the body the request in
 *   protobuf's JSON mapping; the answer the response message, or
 *   {"code": "...", "message": "..."} with the HTTP status the protocol
 *   gives the code. Calls go through rpc_server_call: the same
 *   authentication, role table, write lane and handlers as gRPC;
 * - /metrics (Prometheus text, for the readers' roles), /healthz;
 * - the dashboard's static files (web_root), with a strict
 *   Content-Security-Policy on every response.
 *
 * Bounds: connections (max_connections), requests per HTTP/2 connection,
 * request bodies (GATEWAY_MAX_BODY), calls in flight, TLS handshake and
 * idle timeouts. */
#ifndef TLSPLANE_SERVER_GATEWAY_H
#define TLSPLANE_SERVER_GATEWAY_H

#include <stddef.h>

#include "error.h"
#include "rpc.h"

/* The largest request body taken: a 16 MiB PKCS#12 bundle is about 22 MiB
 * in base64 JSON. Beyond it, 413. */
#define GATEWAY_MAX_BODY ((size_t)24 * 1024 * 1024)

struct gateway;

struct gateway_opts {
  const char *listen; /* "127.0.0.1:7444"; port 0: any free port */
  /* TLS: the server's chain and key, PEM; with client_ca_pem, clients may
   * present a certificate, verified against it (as on the gRPC port).
   * tls_cert_pem NULL: plaintext. */
  const char *tls_cert_pem;
  const char *tls_key_pem;
  const char *tls_client_ca_pem;
  /* The dashboard's files, served for every path that is not an API
   * path; NULL: none (404). */
  const char *web_root;
  struct rpc_server *rpc; /* started; it must outlive the gateway */
  /* The /metrics page (Prometheus text, malloc'd, NUL-terminated; NULL
   * when out of memory). Runs on an RPC pool thread. */
  char *(*metrics)(void *data);
  void *metrics_data;
  int max_connections; /* 0: 256 */
};

/* Binds the port (a port in use is an error). Caller frees with
 * gateway_free. */
int gateway_new(const struct gateway_opts *opts, struct gateway **out, struct tp_err *err);

/* Starts the gateway's thread; from then on it serves. */
int gateway_start(struct gateway *gw, struct tp_err *err);

/* The port bound. */
int gateway_port(const struct gateway *gw);

/* Stops accepting, lets the calls in flight finish (their answers still
 * go out for up to grace_ms), closes every connection, and joins the
 * thread. Call before the RPC server shuts down. A later call does
 * nothing. */
void gateway_shutdown(struct gateway *gw, int grace_ms);

/* Shuts down if that has not happened, and frees. NULL is a no-op. */
void gateway_free(struct gateway *gw);

#endif
