/* The gRPC server core: grpc core's C API, event threads on completion
 * queues, a bounded pool of worker threads, and dispatch of calls to
 * handlers by full method path. Unary and streaming calls alike are served
 * from the completion queues: no thread per call, per stream or per
 * connection, and no worker thread ever waits for a client. A unary call
 * reaches the pool only once its whole request has arrived; a stream's
 * handler is a set of callbacks (struct rpc_stream_ops) that the pool runs
 * as the stream's events come.
 *
 * Messages: every protobuf-c message handed to or returned by a handler is
 * heap-allocated with all its members malloc'd, and is freed with
 * protobuf_c_message_free_unpacked(msg, NULL). */
#ifndef TLSPLANE_SERVER_RPC_H
#define TLSPLANE_SERVER_RPC_H

#include <grpc/slice.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

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

/* Streams.
 *
 * A streaming call (client, server or bidi streaming) is a struct
 * rpc_stream, served by the callbacks of its method's rpc_stream_ops. The
 * callbacks of one stream run on pool threads, one at a time and in the
 * order of the stream's events:
 *
 *   started -> (message | drained)* -> [half_closed] -> [shutdown] -> ended
 *
 * (drained and shutdown may come between messages too). None of them may
 * block for long: a pool thread that waits serves nobody. Nothing is read
 * before started accepted the stream; each message is read only once the
 * previous one was handled (its message callback returned) and while the
 * stream has at most RPC_STREAM_READ_PAUSE bytes waiting to be sent, so a
 * client holds at most one undecoded message per stream, and one that does
 * not read what it is sent is not read either.
 *
 * Sending and finishing (rpc_stream_send*, rpc_stream_finish) work from any
 * thread, inside or outside the callbacks, and never wait: messages queue
 * on the stream, one is handed to grpc at a time.
 *
 * Lifetime: ended always comes, exactly once, for a stream that started
 * accepted, whatever ended the call (the handler's finish, the client's
 * cancel or deadline, a broken connection, the server's shutdown), and
 * after every other callback of the stream returned. After ended returns
 * the stream is invalid, except to a holder of a reference
 * (rpc_stream_ref), for whom every call fails (-EPIPE) until it
 * rpc_stream_unref's it. References must be dropped for
 * rpc_server_shutdown to return. */

/* The most bytes queued (sent, not yet taken by the transport) on one
 * stream while its next message is still read; beyond, reading pauses
 * until the queue drains below it. */
#define RPC_STREAM_READ_PAUSE ((size_t)64 * 1024)
/* The most bytes queued on one stream: a send beyond it ends the call
 * with RESOURCE_EXHAUSTED (the client does not read) and fails -ENOBUFS. */
#define RPC_STREAM_MAX_QUEUED ((size_t)64 * 1024 * 1024)

struct rpc_stream_ops {
  /* The request message type; each message is decoded as one. */
  const ProtobufCMessageDescriptor *req;
  /* The call's metadata arrived and authentication passed (call lives as
   * long as the stream; also rpc_stream_call). Returns 0 to accept it,
   * setting *stream_data (handed to every later callback), or -1 with err
   * set to refuse it with err's status: then no other callback runs.
   * data: rpc_server_add_stream's. Required. */
  int (*started)(struct rpc_stream *stream, const struct rpc_call_info *call, void *data,
                 void **stream_data, struct tp_err *err);
  /* One request message, decoded and checked (pb_input_check); takes
   * ownership of msg. Returns 0 to read the next message, 1 to read no
   * more (the call stays open: ended still comes; half_closed does not), or
   * -1 with err set to end the call with err's status (rpc_stream_finish).
   * A message that does not decode ends the call with INVALID_ARGUMENT
   * unseen. Required. */
  int (*message)(struct rpc_stream *stream, void *stream_data, ProtobufCMessage *msg,
                 struct tp_err *err);
  /* The client sends no more. NULL: the call finishes with OK once every
   * queued message has gone. */
  void (*half_closed)(struct rpc_stream *stream, void *stream_data);
  /* The send queue became empty (every message queued so far was taken by
   * the transport), once after each rpc_stream_notify_drained: a stream
   * whose sends simply complete costs no callback. NULL: never told. */
  void (*drained)(struct rpc_stream *stream, void *stream_data);
  /* rpc_server_shutdown began: finish soon (a stream not finished within
   * its grace is cancelled). NULL: the call is finished at once with
   * UNAVAILABLE "the server is shutting down". */
  void (*shutdown)(struct rpc_stream *stream, void *stream_data);
  /* The call is over; the last callback. Frees stream_data. NULL: nothing
   * to free. */
  void (*ended)(struct rpc_stream *stream, void *stream_data);
};

/* Queues one response message (encoded here; msg is not consumed). Returns
 * 0; -EPIPE once the call is finishing or over (nothing queued); -ENOBUFS
 * when it would take the queue beyond RPC_STREAM_MAX_QUEUED (the call is
 * ended with RESOURCE_EXHAUSTED); -ENOMEM. Any thread. */
int rpc_stream_send(struct rpc_stream *stream, const ProtobufCMessage *msg);

/* As rpc_stream_send, for a message already serialized: the stream takes a
 * reference of its own on slice (the caller keeps its own), so one message
 * sent to many streams is stored once (make it with
 * grpc_slice_new_with_user_data, which also frees it when the last
 * reference goes). */
int rpc_stream_send_slice(struct rpc_stream *stream, grpc_slice slice);

/* Bytes queued on the stream and not yet taken by the transport. */
size_t rpc_stream_queued(struct rpc_stream *stream);

/* Asks for one drained callback when the send queue is next empty (soon
 * after this call if it is empty now; never once the stream finishes). */
void rpc_stream_notify_drained(struct rpc_stream *stream);

/* Ends the call with status and msg (copied); the status is sent once: a
 * later finish, or one after the call ended, does nothing and returns
 * -EALREADY. OK is sent after every queued message; any other status at
 * once (messages still queued are dropped), also to a client that does not
 * read. From then on no message, half_closed, drained or shutdown
 * callback starts (a request received but not yet handled is dropped); a
 * callback running meanwhile returns as usual, then ended comes. Any
 * thread. */
int rpc_stream_finish(struct rpc_stream *stream, grpc_status_code status, const char *msg);

/* Requires the next message within timeout_ms (0: the server's request
 * timeout): without it the call is finished with DEADLINE_EXCEEDED "no
 * message within N ms". Counted by the event threads' sweep (every 100
 * ms); a later call replaces the timer. Returns 0, or -EPIPE once the call
 * is finishing or over. Any thread. */
int rpc_stream_expect(struct rpc_stream *stream, int timeout_ms);

/* What the handler knows about the call; lives as long as the stream. */
const struct rpc_call_info *rpc_stream_call(const struct rpc_stream *stream);

/* Keeps the stream's memory past its ended callback (for another thread
 * that holds it); each ref is matched by one unref. Any thread. */
void rpc_stream_ref(struct rpc_stream *stream);
void rpc_stream_unref(struct rpc_stream *stream);

struct rpc_server_opts {
  const char *listen; /* "127.0.0.1:7443" */
  int threads;        /* pool threads (unary calls, stream callbacks); 0: 2 x cores, at least 4 */
  /* A unary call whose request message has not wholly arrived this long
   * (ms) after its metadata is cancelled (DEADLINE_EXCEEDED); 0: 10000. */
  int request_timeout_ms;
  /* Streaming calls served at once; beyond, RESOURCE_EXHAUSTED. A stream
   * holds no thread, only memory (about 2 KiB of ours, besides grpc's call
   * and its connection's). 0: 16384. */
  int max_streams;
  /* Streaming calls served at once per client IP address for calls that
   * run without a credential (health Watch, reflection); 0: 16. */
  int max_peer_streams;
  /* Write methods (rpc_server_add_write) run at once, at most; more wait
   * in the write lane, holding no thread. 0, or more than half the pool
   * threads: half the pool threads (at least one). */
  int max_writes;
  /* A connection that answers no HTTP/2 ping for this long (ms; a client
   * whose host vanished or was cut off without a reset) is closed and its
   * calls end (an agent's stream is freed): a ping after two thirds of it
   * without one, the rest to answer. 0: 60 s. */
  int keepalive_ms;
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
/* ops (not copied: it must outlive the server; NULL: UNIMPLEMENTED) serves
 * every call of a streaming method; data is handed to ops->started. */
int rpc_server_add_stream(struct rpc_server *srv, const char *method,
                          const struct rpc_stream_ops *ops, void *data);
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

/* Calls that arrive by another transport (the HTTP gateway's JSON): they
 * take the same way as a gRPC call from authentication on, on the same
 * pool, with the same role table, write lane and handlers. The struct
 * and its strings belong to the caller and must stay valid until done
 * has run. */
struct rpc_external {
  /* "/tlsplane.v1.CertificateService/GetCertificate", or, with run set,
   * a path of the caller's own (e.g. "/metrics") that the authenticator's
   * role table knows. */
  const char *method;
  const char *peer;            /* "ipv4:127.0.0.1:51234" */
  const char *authorization;   /* the Authorization header's value; NULL: none */
  const char *client_cert_pem; /* verified by the caller's TLS handshake; NULL: none */
  /* CLOCK_MONOTONIC milliseconds after which the call is not run any more
   * (answered DEADLINE_EXCEEDED unrun); 0: none. */
  int64_t deadline_ms;
  /* Decodes the request as a message of type desc (the method's input),
   * on a pool thread once the caller is authorized; 0 with *req set, or
   * -1 with err set (the call ends with it). Checked by pb_input_check
   * afterwards, as a gRPC request is. */
  int (*decode)(const ProtobufCMessageDescriptor *desc, ProtobufCMessage **req, struct tp_err *err,
                void *data);
  /* Instead of a method: runs on a pool thread once the caller is
   * authorized for `method`, then done comes with OK. NULL: a method. */
  void (*run)(const struct rpc_call_info *call, void *data);
  /* The outcome, exactly once, on a pool thread: status OK with resp (a
   * message of the method's output type, the callee's to free; NULL for
   * run), or another status and msg. */
  void (*done)(grpc_status_code status, const char *msg, ProtobufCMessage *resp, void *data);
  void *data;
};

/* Starts an external call. Returns 0 (done will run), -ESHUTDOWN once
 * shutdown began or before start, -ENOMEM (done never runs). Any thread.
 * Streaming methods answer UNIMPLEMENTED: only unary calls go this way. */
int rpc_server_call(struct rpc_server *srv, const struct rpc_external *x);

/* Calls finished, by method, transport and status code. */
enum { RPC_TRANSPORT_GRPC, RPC_TRANSPORT_EXTERNAL, RPC_TRANSPORTS };
typedef void (*rpc_count_fn)(const char *method, int transport, grpc_status_code code,
                             unsigned long n, void *data);
/* Calls fn for every count that is not zero; a path that names no method
 * is counted under "unknown". Any thread, once started. */
void rpc_server_counts(const struct rpc_server *srv, rpc_count_fn fn, void *data);

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

/* Stops accepting calls, tells every stream (its shutdown callback), lets
 * in-flight calls finish for up to grace_ms (< 0: no limit), then cancels
 * the rest, waits until every call is released (every stream's ended
 * callback has run and every reference is dropped), and joins the pool and
 * the event threads. Call once, from a thread that is not serving a call;
 * a later call does nothing. */
void rpc_server_shutdown(struct rpc_server *srv, int grace_ms);

/* Shuts down (grace 0) if that has not happened, destroys the server and
 * releases grpc. NULL is a no-op. */
void rpc_server_free(struct rpc_server *srv);

#endif
