/* The gRPC server core: grpc core's C API, event threads on completion
 * queues, a bounded pool of worker threads for unary calls, a thread per
 * streaming call (capped), and dispatch of calls to handlers by full
 * method path. No worker thread ever waits for a client: a unary call
 * reaches the pool only once its whole request has arrived.
 *
 * Messages: every protobuf-c message handed to or returned by a handler is
 * heap-allocated with all its members malloc'd, and is freed with
 * protobuf_c_message_free_unpacked(msg, NULL). */
#ifndef TLSPLANE_SERVER_RPC_H
#define TLSPLANE_SERVER_RPC_H

#include <protobuf-c/protobuf-c.h>

#include "error.h"

struct rpc_server;
struct rpc_stream;

/* What a handler knows about the call it serves. The strings live as long
 * as the call. */
struct rpc_call_info {
  const char *method; /* "/tlsplane.v1.CertificateService/CreateCertificate" */
  const char *peer;   /* e.g. "ipv4:127.0.0.1:51234" */
  /* Who is calling, as the audit trail records it: "token:ci-rotation", a
   * client certificate's subject ("CN=admin,OU=admin,O=tlsplane"),
   * "anonymous" (an open method called without a credential), or "system"
   * for the server's own jobs. */
  const char *actor;
  int role;              /* enum auth_role (auth.h); 0 (none) when anonymous */
  const char *principal; /* token id, certificate principal, agent id ("edge-1"); "" if none */
};

/* The credentials a call arrived with, as the server core finds them. */
struct rpc_credentials {
  const char *method; /* full path, as the client sent it */
  /* The method as a log line or an error message may show it: the path of
   * a registered method, or "unknown method (N bytes)" (a path the client
   * made up may hold anything, a token included). */
  const char *method_shown;
  const char *peer;          /* e.g. "ipv4:127.0.0.1:51234" */
  const char *authorization; /* the "authorization" metadata (its first value); NULL: none */
  /* The client certificate (PEM) that the TLS handshake verified against
   * the client CA; NULL: none (plaintext, or no certificate sent). */
  const char *client_cert_pem;
};

/* Who a call is, filled in by an rpc_auth_fn. */
struct rpc_identity {
  int role; /* enum auth_role */
  char principal[128];
  char actor[512];
};

/* Authenticates and authorizes a call before its handler runs: fills id
 * and returns 0 to let the call run, or returns -1 with err set
 * (UNAUTHENTICATED, PERMISSION_DENIED) to end it with that status. Runs on
 * a pool thread as soon as the call's metadata arrived, before its request
 * message is read (a caller without a credential is refused at once and
 * cannot make the server hold its request). */
typedef int (*rpc_auth_fn)(const struct rpc_credentials *cred, struct rpc_identity *id,
                           struct tp_err *err, void *data);

/* A unary handler. req is the decoded request (owned by the server core,
 * freed after the call). On success returns 0 and sets *resp to a message of
 * the method's output type (ownership passes to the server core). On
 * failure returns -1 with err set; *resp is ignored. */
typedef int (*rpc_unary_fn)(const struct rpc_call_info *call, const ProtobufCMessage *req,
                            ProtobufCMessage **resp, struct tp_err *err, void *data);

/* A unary handler runs on a pool thread with the whole request decoded;
 * its response is sent without the thread waiting for the client. */

/* A streaming handler (client, server or bidi streaming). Runs on a thread
 * of its own for the whole call (streams live long: a pool thread would be
 * lost to every connected agent), so it may block; uses
 * rpc_stream_recv/rpc_stream_send. Returns 0 for status OK, or -1 with err
 * set. Must return soon after rpc_stream_shutting_down turns 1, and must not
 * return while another thread it started still uses the stream. */
typedef int (*rpc_stream_fn)(const struct rpc_call_info *call, struct rpc_stream *stream,
                             struct tp_err *err, void *data);

/* One thread may receive (rpc_stream_recv) while another sends
 * (rpc_stream_send) and a third waits (rpc_stream_wait); two threads must not
 * receive, send or wait at the same time. */

/* Receives the next request message. Returns 1 and sets *msg (caller frees
 * with protobuf_c_message_free_unpacked) when one arrived, 0 when the client
 * half-closed, -1 on a broken call or an undecodable message (err set). */
int rpc_stream_recv(struct rpc_stream *stream, const ProtobufCMessageDescriptor *desc,
                    ProtobufCMessage **msg, struct tp_err *err);
/* As rpc_stream_recv, waiting timeout_ms at most (0: the server's request
 * timeout; negative: no limit): past it the call is ended with
 * DEADLINE_EXCEEDED "no message within N ms" and -1 returned (err set). */
int rpc_stream_recv_within(struct rpc_stream *stream, const ProtobufCMessageDescriptor *desc,
                           ProtobufCMessage **msg, int timeout_ms, struct tp_err *err);

/* Sends one response message (not consumed). Returns 0, or -1 if the call
 * is gone. */
int rpc_stream_send(struct rpc_stream *stream, const ProtobufCMessage *msg);

/* Sends one response message already serialized (data is copied): for
 * one message sent to many streams. Returns 0, or -1 if the call is gone. */
int rpc_stream_send_raw(struct rpc_stream *stream, const uint8_t *data, size_t len);

/* Ends the call now with status and msg (copied): a receive blocked in
 * another thread returns -1, later sends fail. Safe from any thread while
 * the handler runs. */
void rpc_stream_cancel(struct rpc_stream *stream, grpc_status_code status, const char *msg);

/* Returns 1 once the server is shutting down (long streams should end). */
int rpc_stream_shutting_down(struct rpc_stream *stream);

/* Waits up to timeout_ms for the call to end from the client's side (the
 * client cancelled, its deadline passed, its connection broke) or for the
 * server to begin shutting down. Returns 1 if either happened (the handler
 * should return), 0 after timeout_ms without either. Notices a shutdown
 * within 100 ms. A server-streaming handler with nothing to send loops on
 * it: while (!rpc_stream_wait(s, 1000)) {...}. */
int rpc_stream_wait(struct rpc_stream *stream, int timeout_ms);

struct rpc_server_opts {
  const char *listen; /* "127.0.0.1:7443" */
  int threads;        /* pool threads serving unary calls; 0: 2 x cores, at least 4 */
  /* A unary call whose request message has not wholly arrived this long
   * (ms) after its metadata is cancelled (DEADLINE_EXCEEDED); 0: 10000. */
  int request_timeout_ms;
  /* Streaming calls served at once (one thread each; an agent stream holds
   * two); beyond, RESOURCE_EXHAUSTED. 0: 4096. */
  int max_streams;
  /* Streaming calls served at once per client IP address for calls that
   * run without a credential (health Watch, reflection); 0: 16. */
  int max_peer_streams;
  /* Write methods (rpc_server_add_write) run at once, at most; more wait
   * in the write lane, holding no thread. 0, or more than half the pool
   * threads: half the pool threads (at least one). */
  int max_writes;
  /* TLS: the server's certificate chain and private key, PEM (copied).
   * NULL: plaintext. With client_ca_pem, clients may present a certificate,
   * which the handshake verifies against it (one that does not verify, or
   * has expired, fails the handshake); clients without one still connect. */
  const char *tls_cert_pem;
  const char *tls_key_pem;
  const char *tls_client_ca_pem;
  /* Runs before every call's handler; NULL: every call runs, anonymous. */
  rpc_auth_fn auth;
  void *auth_data;
};

/* Creates the server and binds its port (a port in use is an error, not
 * shared: SO_REUSEPORT is off). Calls grpc_init; rpc_server_free calls the
 * matching grpc_shutdown. Caller frees with rpc_server_free. */
int rpc_server_new(const struct rpc_server_opts *opts, struct rpc_server **out, struct tp_err *err);

/* Registers handlers before rpc_server_start (from one thread). method: the
 * full path "/package.Service/Method" (copied); req/resp: the message
 * descriptors. A method registered without a handler (a NULL fn here or in
 * rpc_server_add_service) answers UNIMPLEMENTED and may be registered again
 * with one; registering a handled method twice fails. Returns 0, -EINVAL for
 * a malformed path, -EEXIST, -EBUSY once started, -ENOMEM. */
int rpc_server_add_unary(struct rpc_server *srv, const char *method,
                         const ProtobufCMessageDescriptor *req,
                         const ProtobufCMessageDescriptor *resp, rpc_unary_fn fn, void *data);
int rpc_server_add_stream(struct rpc_server *srv, const char *method, rpc_stream_fn fn, void *data);
/* As rpc_server_add_unary, for a method that writes: its calls run in the
 * write lane, at most opts.max_writes at once, the others waiting (without
 * a thread) in arrival order; a write that waits too long or finds the
 * lane full is answered UNAVAILABLE or RESOURCE_EXHAUSTED unrun. */
int rpc_server_add_write(struct rpc_server *srv, const char *method,
                         const ProtobufCMessageDescriptor *req,
                         const ProtobufCMessageDescriptor *resp, rpc_unary_fn fn, void *data);

/* Registers every method of a protobuf-c service descriptor, the i-th
 * method handled by fns[i] (fns NULL or a NULL entry: UNIMPLEMENTED, until
 * registered with a handler). protobuf-c descriptors do not say which
 * methods stream: register those with rpc_server_add_stream, before or after
 * this (a method that already has a handler is skipped here). Same returns
 * as rpc_server_add_unary. */
int rpc_server_add_service(struct rpc_server *srv, const ProtobufCServiceDescriptor *svc,
                           const rpc_unary_fn *fns, void *data);

/* Starts the event threads and the pool, then serving. On failure the
 * server serves nothing; free it with rpc_server_free. */
int rpc_server_start(struct rpc_server *srv, struct tp_err *err);

/* The port actually bound (useful with port 0). */
int rpc_server_port(const struct rpc_server *srv);

/* Has rpc_server_free call cb(data) after every thread that could use data
 * is joined: for state that handlers share and that lives as long as the
 * server (reflection's index). Callbacks run in reverse order of adding.
 * Returns 0, or -ENOMEM (cb never runs; the caller still owns data). */
int rpc_server_add_cleanup(struct rpc_server *srv, void (*cb)(void *data), void *data);

/* Returns 1 once rpc_server_shutdown has begun (e.g. health answers
 * NOT_SERVING from then on). */
int rpc_server_shutting_down(const struct rpc_server *srv);

/* Stops accepting calls, lets in-flight calls finish for up to grace_ms
 * (< 0: no limit), then cancels the rest, and joins the pool, the event
 * threads and every streaming handler's thread. Call once, from a thread that is not
 * serving a call; a later call does nothing. */
void rpc_server_shutdown(struct rpc_server *srv, int grace_ms);

/* Shuts down (grace 0) if that has not happened, destroys the server and
 * releases grpc. NULL is a no-op. */
void rpc_server_free(struct rpc_server *srv);

#endif
