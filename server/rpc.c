/* The gRPC server core on grpc core's C API.
 *
 * Threads. A pool of N threads serves calls. Each owns a notification
 * completion queue (registered with the server before it starts) and keeps
 * exactly one grpc_server_request_call outstanding on it. Every call gets a
 * completion queue of its own (GRPC_CQ_PLUCK, not registered; grpc C++'s
 * sync server does the same), on which its batches run synchronously: start
 * a batch, pluck its tag. A unary call is served on the pool thread that
 * received it, then the thread asks for the next call. A streaming call is
 * handed to a thread of its own, because streams live long (agents,
 * Health/Watch) and would otherwise starve the pool; finished stream threads
 * are joined by the pool thread that starts the next one, and at shutdown.
 *
 * Per call, a RECV_CLOSE_ON_SERVER batch is started first, under its own
 * tag; it completes when the call is over (status sent, or cancelled), so
 * plucking it is how rpc_stream_wait learns of a cancellation, and it is
 * plucked before the call is released.
 *
 * Shutdown. grpc_server_shutdown_and_notify fails every pending
 * request_call (the pool threads see success == 0 and leave their loop) and
 * posts its own tag once all in-flight calls are over; after grace_ms we
 * cancel the calls still running. Calls that grpc had accepted but no pool
 * thread had picked up yet (every thread busy) are cancelled by grpc core
 * itself when shutdown begins; clients see CANCELLED. Then the threads are joined, the server
 * is destroyed, and every completion queue is shut down and drained before
 * being destroyed. */
#include "rpc.h"

#include <errno.h>
#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "grpcmsg.h"

#define RPC_STREAM_MAGIC 0x7270c57eu

/* Receive limit: a PKCS#12 bundle or a large CRL can exceed grpc's 4 MiB. */
#define MAX_RECV_MESSAGE (16 * 1024 * 1024)
/* How often rpc_stream_wait looks at the shutdown flag. */
#define WAIT_SLICE_MS 100

/* A registered method. Exactly one of unary and stream is set, or neither
 * (a placeholder that answers UNIMPLEMENTED). */
struct method {
  char *path; /* "/package.Service/Method", NUL-terminated */
  size_t path_len;
  const ProtobufCMessageDescriptor *req;  /* unary only */
  const ProtobufCMessageDescriptor *resp; /* unary only */
  rpc_unary_fn unary;
  rpc_stream_fn stream;
  void *data;
};

struct pool_thread {
  struct rpc_server *srv;
  pthread_t tid;
  grpc_completion_queue *notify_cq; /* registered; request_call notifications only */
};

/* The thread serving one streaming call. Lives on srv->streams_live while
 * the handler runs, then on srv->streams_done until joined. */
struct stream_thread {
  pthread_t tid;
  struct call *call;
  struct stream_thread *next;
};

/* Given to handlers; embedded in the call. */
struct rpc_stream {
  uint32_t magic;
  struct call *call;
  int half_closed; /* the client said it sends no more */
};

/* One call, from request_call until released. The tags are members so that
 * each is a distinct address owned by the call. */
struct call {
  struct rpc_server *srv;
  grpc_call *call;           /* NULL until request_call completed */
  grpc_completion_queue *cq; /* GRPC_CQ_PLUCK, bound to this call only */
  grpc_call_details details;
  grpc_metadata_array md;
  const struct method *method; /* NULL: unknown method */
  char *path;                  /* details.method as a string */
  char *peer;                  /* gpr_malloc'd by grpc_call_get_peer */
  struct rpc_call_info info;
  struct rpc_identity identity; /* info's actor and principal point here */
  struct rpc_stream stream;
  int cancelled;         /* RECV_CLOSE_ON_SERVER's result */
  int close_started;     /* the RECV_CLOSE_ON_SERVER batch is in flight */
  atomic_int close_done; /* ... and its tag has been plucked */
  int sent_initial_md;   /* only the sending side touches it */
  int status_sent;       /* SEND_STATUS_FROM_SERVER completed */
  char tag_close, tag_recv, tag_send;
};

/* Something rpc_server_free releases (rpc_server_add_cleanup). */
struct cleanup {
  void (*cb)(void *data);
  void *data;
  struct cleanup *next;
};

/* Invariants: methods only change before `started`; the stream lists are
 * guarded by mu. */
struct rpc_server {
  grpc_server *server;
  grpc_completion_queue *shutdown_cq; /* registered; only the shutdown tag */
  char shutdown_tag;
  int port;
  struct method *methods; /* sorted by path once started */
  size_t n_methods, cap_methods;
  struct cleanup *cleanups; /* most recently added first */
  struct pool_thread *pool;
  int n_pool;
  int n_pool_started; /* pool[0..n_pool_started) have a thread to join */
  int started;        /* grpc_server_start was called */
  rpc_auth_fn auth;   /* NULL: calls run anonymous */
  void *auth_data;
  int shut_down; /* rpc_server_shutdown has run */
  atomic_int shutting_down;
  pthread_mutex_t mu;
  pthread_cond_t stream_done_cv; /* a stream thread moved itself to streams_done */
  struct stream_thread *streams_live, *streams_done;
};

/* --- helpers --- */

static gpr_timespec deadline_after_ms(long ms) {
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

static gpr_timespec forever(void) {
  return gpr_inf_future(GPR_CLOCK_MONOTONIC);
}

/* Shuts down a completion queue that nobody polls any more and drains it.
 * A pluck queue is drained by plucking a tag that never comes. */
static void cq_close(grpc_completion_queue *cq, int pluck) {
  if (cq == NULL)
    return;
  grpc_completion_queue_shutdown(cq);
  if (pluck) {
    char none;
    while (grpc_completion_queue_pluck(cq, &none, forever(), NULL).type != GRPC_QUEUE_SHUTDOWN)
      ;
  } else {
    while (grpc_completion_queue_next(cq, forever(), NULL).type != GRPC_QUEUE_SHUTDOWN)
      ;
  }
  grpc_completion_queue_destroy(cq);
}

/* The one place where the server's transport security is chosen: TLS
 * with the server's certificate, clients verified against the client CA
 * when they present a certificate (a token works without one), or
 * plaintext when no certificate is given. */
static grpc_server_credentials *server_credentials(const struct rpc_server_opts *opts) {
  if (opts->tls_cert_pem == NULL || opts->tls_key_pem == NULL)
    return grpc_insecure_server_credentials_create();
  grpc_ssl_pem_key_cert_pair pair = {.private_key = opts->tls_key_pem,
                                     .cert_chain = opts->tls_cert_pem};
  /* The config copies the PEM strings. */
  grpc_ssl_server_certificate_config *config =
      grpc_ssl_server_certificate_config_create(opts->tls_client_ca_pem, &pair, 1);
  grpc_ssl_server_credentials_options *options =
      grpc_ssl_server_credentials_create_options_using_config(
          opts->tls_client_ca_pem != NULL ? GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY
                                          : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
          config);
  return grpc_ssl_server_credentials_create_with_options(options);
}

/* The first value of metadata key, NUL-terminated (caller wipes and frees);
 * NULL when absent. */
static char *metadata_value(const grpc_metadata_array *md, const char *key) {
  size_t klen = strlen(key);
  for (size_t i = 0; i < md->count; i++) {
    const grpc_slice *k = &md->metadata[i].key;
    if (GRPC_SLICE_LENGTH(*k) == klen && memcmp(GRPC_SLICE_START_PTR(*k), key, klen) == 0)
      return strndup((const char *)GRPC_SLICE_START_PTR(md->metadata[i].value),
                     GRPC_SLICE_LENGTH(md->metadata[i].value));
  }
  return NULL;
}

/* The verified client certificate of the call's connection (PEM, caller
 * frees), or NULL. */
static char *client_cert_pem(grpc_call *call) {
  grpc_auth_context *ctx = grpc_call_auth_context(call);
  if (ctx == NULL)
    return NULL;
  char *pem = NULL;
  if (grpc_auth_context_peer_is_authenticated(ctx)) {
    grpc_auth_property_iterator it =
        grpc_auth_context_find_properties_by_name(ctx, GRPC_X509_PEM_CERT_PROPERTY_NAME);
    const grpc_auth_property *p = grpc_auth_property_iterator_next(&it);
    if (p != NULL && p->value != NULL && p->value_length > 0)
      pem = strndup(p->value, p->value_length);
  }
  grpc_auth_context_release(ctx);
  return pem;
}

/* Who is calling: the authenticator's verdict on the call's bearer token
 * or client certificate. Without an authenticator every call is
 * anonymous. Returns 0, or -1 with err: the call must end with it. */
static int call_authenticate(struct call *c, struct tp_err *err) {
  struct rpc_identity *id = &c->identity;
  memset(id, 0, sizeof(*id));
  snprintf(id->actor, sizeof(id->actor), "anonymous");
  int rc = 0;
  if (c->srv->auth != NULL) {
    char *authorization = metadata_value(&c->md, "authorization");
    char *cert = client_cert_pem(c->call);
    struct rpc_credentials cred = {.method = c->info.method,
                                   .peer = c->info.peer,
                                   .authorization = authorization,
                                   .client_cert_pem = cert};
    rc = c->srv->auth(&cred, id, err, c->srv->auth_data);
    if (authorization != NULL) {
      OPENSSL_cleanse(authorization, strlen(authorization));
      free(authorization);
    }
    free(cert);
  }
  c->info.role = id->role;
  c->info.principal = id->principal;
  c->info.actor = id->actor;
  return rc;
}

static grpc_byte_buffer *message_encode(const ProtobufCMessage *msg) {
  return grpcmsg_encode(msg);
}

/* Decodes and destroys bb. */
static ProtobufCMessage *
message_decode(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc, struct tp_err *err) {
  ProtobufCMessage *msg = grpcmsg_decode(bb, desc);
  if (msg == NULL)
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "request: not a valid %s message", desc->name);
  return msg;
}

/* Runs one batch on the call's queue and waits for it. Returns 0 if it
 * succeeded, -1 if it could not start or failed (the call is broken). */
static int batch_run(struct call *c, const grpc_op *ops, size_t n, void *tag) {
  if (grpc_call_start_batch(c->call, ops, n, tag, NULL) != GRPC_CALL_OK)
    return -1;
  grpc_event ev = grpc_completion_queue_pluck(c->cq, tag, forever(), NULL);
  return ev.type == GRPC_OP_COMPLETE && ev.success ? 0 : -1;
}

/* --- calls --- */

static struct call *call_new(struct rpc_server *srv) {
  struct call *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return NULL;
  c->cq = grpc_completion_queue_create_for_pluck(NULL);
  if (c->cq == NULL) {
    free(c);
    return NULL;
  }
  c->srv = srv;
  grpc_call_details_init(&c->details);
  grpc_metadata_array_init(&c->md);
  return c;
}

/* Sends the final status (after the initial metadata if not yet sent, and
 * resp if given). */
static void call_send_status(struct call *c, grpc_byte_buffer *resp, grpc_status_code status,
                             const char *msg) {
  grpc_op ops[3];
  size_t n = 0;
  memset(ops, 0, sizeof(ops));
  if (!c->sent_initial_md) {
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].data.send_initial_metadata.count = 0;
    n++;
  }
  if (resp != NULL) {
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = resp;
    n++;
  }
  grpc_slice details = grpc_slice_from_copied_string(msg != NULL ? msg : "");
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.trailing_metadata_count = 0;
  ops[n].data.send_status_from_server.status = status;
  ops[n].data.send_status_from_server.status_details = &details;
  n++;
  c->sent_initial_md = 1;
  if (batch_run(c, ops, n, &c->tag_send) == 0)
    c->status_sent = 1;
  grpc_slice_unref(details);
}

static void call_send_error(struct call *c, const struct tp_err *err) {
  if (err->status == GRPC_STATUS_OK)
    call_send_status(c, NULL, GRPC_STATUS_INTERNAL, "handler failed without an error");
  else
    call_send_status(c, NULL, err->status, err->msg);
}

/* Releases the call: waits for its close (cancelling it first if no status
 * went out, so that the close comes), then drains its queue. */
static void call_free(struct call *c) {
  if (c == NULL)
    return;
  if (c->call != NULL) {
    if (!c->status_sent)
      grpc_call_cancel(c->call, NULL);
    if (c->close_started && !atomic_load(&c->close_done))
      grpc_completion_queue_pluck(c->cq, &c->tag_close, forever(), NULL);
    grpc_call_unref(c->call);
  }
  cq_close(c->cq, 1);
  grpc_call_details_destroy(&c->details);
  grpc_metadata_array_destroy(&c->md);
  gpr_free(c->peer);
  free(c->path);
  free(c);
}

static void serve_unary(struct call *c) {
  const struct method *m = c->method;
  struct tp_err err = {.status = GRPC_STATUS_OK};
  grpc_byte_buffer *bb = NULL;
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &bb;
  if (batch_run(c, &op, 1, &c->tag_recv) < 0)
    return; /* cancelled, or the message was too large: core ends the call */
  if (bb == NULL) {
    call_send_status(c, NULL, GRPC_STATUS_INVALID_ARGUMENT, "request: no message");
    return;
  }
  ProtobufCMessage *req = message_decode(bb, m->req, &err);
  if (req == NULL) {
    call_send_error(c, &err);
    return;
  }
  ProtobufCMessage *resp = NULL;
  int rc = m->unary(&c->info, req, &resp, &err, m->data);
  protobuf_c_message_free_unpacked(req, NULL);
  if (rc < 0) {
    call_send_error(c, &err);
    return;
  }
  if (resp == NULL || resp->descriptor != m->resp) {
    if (resp != NULL)
      protobuf_c_message_free_unpacked(resp, NULL);
    call_send_status(c, NULL, GRPC_STATUS_INTERNAL, "handler returned no or the wrong response");
    return;
  }
  grpc_byte_buffer *out = message_encode(resp);
  protobuf_c_message_free_unpacked(resp, NULL);
  call_send_status(c, out, GRPC_STATUS_OK, NULL);
  grpc_byte_buffer_destroy(out);
}

static void serve_stream(struct call *c) {
  const struct method *m = c->method;
  struct tp_err err = {.status = GRPC_STATUS_OK};
  c->stream.magic = RPC_STREAM_MAGIC;
  c->stream.call = c;
  int rc = m->stream(&c->info, &c->stream, &err, m->data);
  c->stream.magic = 0;
  if (rc < 0)
    call_send_error(c, &err);
  else
    call_send_status(c, NULL, GRPC_STATUS_OK, NULL);
}

/* Joins the stream threads that have finished. */
static void streams_reap(struct rpc_server *srv) {
  pthread_mutex_lock(&srv->mu);
  struct stream_thread *done = srv->streams_done;
  srv->streams_done = NULL;
  pthread_mutex_unlock(&srv->mu);
  while (done != NULL) {
    struct stream_thread *next = done->next;
    pthread_join(done->tid, NULL);
    free(done);
    done = next;
  }
}

static void *stream_main(void *arg) {
  struct stream_thread *st = arg;
  struct rpc_server *srv = st->call->srv;
  serve_stream(st->call);
  call_free(st->call);
  st->call = NULL;
  pthread_mutex_lock(&srv->mu);
  struct stream_thread **pp = &srv->streams_live;
  while (*pp != st)
    pp = &(*pp)->next;
  *pp = st->next;
  st->next = srv->streams_done;
  srv->streams_done = st;
  pthread_cond_broadcast(&srv->stream_done_cv);
  pthread_mutex_unlock(&srv->mu);
  return NULL;
}

/* Hands a streaming call to a thread of its own. On failure the call is
 * still the caller's. */
static int stream_spawn(struct call *c) {
  struct rpc_server *srv = c->srv;
  streams_reap(srv);
  struct stream_thread *st = calloc(1, sizeof(*st));
  if (st == NULL)
    return -ENOMEM;
  st->call = c;
  /* Hold mu across pthread_create so that the thread cannot move itself to
   * streams_done (and be joined) before st->tid is written. */
  pthread_mutex_lock(&srv->mu);
  int rc = pthread_create(&st->tid, NULL, stream_main, st);
  if (rc == 0) {
    st->next = srv->streams_live;
    srv->streams_live = st;
  }
  pthread_mutex_unlock(&srv->mu);
  if (rc != 0) {
    free(st);
    return -rc;
  }
  return 0;
}

static int method_cmp_key(const char *path, size_t len, const struct method *m) {
  size_t n = len < m->path_len ? len : m->path_len;
  int d = memcmp(path, m->path, n);
  if (d != 0)
    return d;
  return len < m->path_len ? -1 : len > m->path_len ? 1 : 0;
}

static const struct method *method_find(const struct rpc_server *srv, const char *path,
                                        size_t len) {
  size_t lo = 0, hi = srv->n_methods;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int d = method_cmp_key(path, len, &srv->methods[mid]);
    if (d == 0)
      return &srv->methods[mid];
    if (d < 0)
      hi = mid;
    else
      lo = mid + 1;
  }
  return NULL;
}

/* Serves a call that request_call just delivered; releases it unless a
 * stream thread took it. */
static void call_dispatch(struct call *c) {
  struct rpc_server *srv = c->srv;
  size_t len = GRPC_SLICE_LENGTH(c->details.method);
  const char *path = (const char *)GRPC_SLICE_START_PTR(c->details.method);
  c->method = method_find(srv, path, len);
  c->path = strndup(path, len);
  c->peer = grpc_call_get_peer(c->call);
  c->info.method = c->method != NULL ? c->method->path : c->path != NULL ? c->path : "";
  c->info.peer = c->peer != NULL ? c->peer : "";

  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  op.data.recv_close_on_server.cancelled = &c->cancelled;
  if (grpc_call_start_batch(c->call, &op, 1, &c->tag_close, NULL) == GRPC_CALL_OK)
    c->close_started = 1;

  /* Authentication comes first, also for unknown methods: a caller
   * without a credential learns nothing about the API. */
  char msg[512];
  struct tp_err auth_err = {.status = GRPC_STATUS_OK};
  if (call_authenticate(c, &auth_err) != 0) {
    call_send_error(c, &auth_err);
  } else if (c->method == NULL) {
    snprintf(msg, sizeof(msg), "unknown method %s", c->info.method);
    call_send_status(c, NULL, GRPC_STATUS_UNIMPLEMENTED, msg);
  } else if (c->method->unary != NULL) {
    serve_unary(c);
  } else if (c->method->stream != NULL) {
    if (stream_spawn(c) == 0)
      return;
    snprintf(msg, sizeof(msg), "%s: no thread to serve the stream", c->info.method);
    call_send_status(c, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
  } else {
    snprintf(msg, sizeof(msg), "method %s is not implemented", c->info.method);
    call_send_status(c, NULL, GRPC_STATUS_UNIMPLEMENTED, msg);
  }
  call_free(c);
}

static void *pool_main(void *arg) {
  struct pool_thread *t = arg;
  struct rpc_server *srv = t->srv;
  while (!atomic_load(&srv->shutting_down)) {
    struct call *c = call_new(srv);
    if (c == NULL) {
      /* Out of memory: keep the thread, try again shortly. */
      struct timespec ts = {0, 100 * 1000 * 1000};
      nanosleep(&ts, NULL);
      continue;
    }
    if (grpc_server_request_call(srv->server, &c->call, &c->details, &c->md, c->cq, t->notify_cq,
                                 c) != GRPC_CALL_OK) {
      call_free(c);
      break;
    }
    /* Only our own request is ever queued on notify_cq. success == 0: the
     * server is shutting down and failed the request. */
    grpc_event ev = grpc_completion_queue_next(t->notify_cq, forever(), NULL);
    if (ev.type != GRPC_OP_COMPLETE || !ev.success || c->call == NULL) {
      call_free(c);
      break;
    }
    call_dispatch(c);
  }
  return NULL;
}

/* --- rpc_stream --- */

static struct call *stream_call(struct rpc_stream *stream) {
  if (stream == NULL || stream->magic != RPC_STREAM_MAGIC)
    abort(); /* a stream used after its handler returned */
  return stream->call;
}

int rpc_stream_recv(struct rpc_stream *stream, const ProtobufCMessageDescriptor *desc,
                    ProtobufCMessage **msg, struct tp_err *err) {
  struct call *c = stream_call(stream);
  *msg = NULL;
  if (stream->half_closed)
    return 0;
  grpc_byte_buffer *bb = NULL;
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &bb;
  if (batch_run(c, &op, 1, &c->tag_recv) < 0)
    return tp_err_set(err, GRPC_STATUS_CANCELLED, "call cancelled");
  if (bb == NULL) {
    stream->half_closed = 1;
    return 0;
  }
  *msg = message_decode(bb, desc, err);
  return *msg != NULL ? 1 : -1;
}

static int stream_send_bb(struct rpc_stream *stream, grpc_byte_buffer *bb) {
  struct call *c = stream_call(stream);
  grpc_op ops[2];
  size_t n = 0;
  memset(ops, 0, sizeof(ops));
  if (!c->sent_initial_md) {
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].data.send_initial_metadata.count = 0;
    n++;
  }
  ops[n].op = GRPC_OP_SEND_MESSAGE;
  ops[n].data.send_message.send_message = bb;
  n++;
  c->sent_initial_md = 1;
  int rc = batch_run(c, ops, n, &c->tag_send);
  grpc_byte_buffer_destroy(bb);
  return rc;
}

int rpc_stream_send(struct rpc_stream *stream, const ProtobufCMessage *msg) {
  return stream_send_bb(stream, message_encode(msg));
}

int rpc_stream_send_raw(struct rpc_stream *stream, const uint8_t *data, size_t len) {
  grpc_slice slice = grpc_slice_from_copied_buffer((const char *)data, len);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
  grpc_slice_unref(slice);
  return stream_send_bb(stream, bb);
}

void rpc_stream_cancel(struct rpc_stream *stream, grpc_status_code status, const char *msg) {
  struct call *c = stream_call(stream);
  grpc_call_cancel_with_status(c->call, status, msg, NULL);
}

int rpc_stream_shutting_down(struct rpc_stream *stream) {
  return atomic_load(&stream_call(stream)->srv->shutting_down);
}

int rpc_stream_wait(struct rpc_stream *stream, int timeout_ms) {
  struct call *c = stream_call(stream);
  gpr_timespec end = deadline_after_ms(timeout_ms > 0 ? timeout_ms : 0);
  for (;;) {
    if (atomic_load(&c->srv->shutting_down) || atomic_load(&c->close_done))
      return 1;
    if (!c->close_started)
      return 1; /* cannot learn of a cancellation: treat the call as over */
    gpr_timespec now = gpr_now(GPR_CLOCK_MONOTONIC);
    if (gpr_time_cmp(now, end) >= 0)
      return 0;
    gpr_timespec slice = gpr_time_add(now, gpr_time_from_millis(WAIT_SLICE_MS, GPR_TIMESPAN));
    if (gpr_time_cmp(slice, end) > 0)
      slice = end;
    /* The close completes before the handler sent a status only if the
     * call was cancelled. */
    grpc_event ev = grpc_completion_queue_pluck(c->cq, &c->tag_close, slice, NULL);
    if (ev.type == GRPC_OP_COMPLETE) {
      atomic_store(&c->close_done, 1);
      return 1;
    }
  }
}

/* --- registration --- */

/* Checks "/service/method". */
static int path_check(const char *path) {
  if (path == NULL || path[0] != '/')
    return -EINVAL;
  const char *slash = strchr(path + 1, '/');
  if (slash == NULL || slash == path + 1 || slash[1] == '\0' || strchr(slash + 1, '/') != NULL)
    return -EINVAL;
  return 0;
}

/* Adds or completes a method. A placeholder (no handler) takes a handler
 * later; a handled method is never replaced. */
static int method_add(struct rpc_server *srv, const char *path,
                      const ProtobufCMessageDescriptor *req, const ProtobufCMessageDescriptor *resp,
                      rpc_unary_fn unary, rpc_stream_fn stream, void *data) {
  if (srv->started)
    return -EBUSY;
  int rc = path_check(path);
  if (rc < 0)
    return rc;
  if (unary != NULL && (req == NULL || resp == NULL))
    return -EINVAL;
  struct method *m = NULL;
  for (size_t i = 0; i < srv->n_methods; i++) {
    if (strcmp(srv->methods[i].path, path) == 0) {
      m = &srv->methods[i];
      break;
    }
  }
  if (m != NULL && (m->unary != NULL || m->stream != NULL))
    return -EEXIST;
  if (m == NULL) {
    if (srv->n_methods == srv->cap_methods) {
      size_t cap = srv->cap_methods ? 2 * srv->cap_methods : 64;
      struct method *ms = realloc(srv->methods, cap * sizeof(*ms));
      if (ms == NULL)
        return -ENOMEM;
      srv->methods = ms;
      srv->cap_methods = cap;
    }
    char *copy = strdup(path);
    if (copy == NULL)
      return -ENOMEM;
    m = &srv->methods[srv->n_methods++];
    memset(m, 0, sizeof(*m));
    m->path = copy;
    m->path_len = strlen(copy);
  }
  m->req = req;
  m->resp = resp;
  m->unary = unary;
  m->stream = stream;
  m->data = data;
  return 0;
}

int rpc_server_add_unary(struct rpc_server *srv, const char *method,
                         const ProtobufCMessageDescriptor *req,
                         const ProtobufCMessageDescriptor *resp, rpc_unary_fn fn, void *data) {
  return method_add(srv, method, req, resp, fn, NULL, data);
}

int rpc_server_add_stream(struct rpc_server *srv, const char *method, rpc_stream_fn fn,
                          void *data) {
  return method_add(srv, method, NULL, NULL, NULL, fn, data);
}

int rpc_server_add_service(struct rpc_server *srv, const ProtobufCServiceDescriptor *svc,
                           const rpc_unary_fn *fns, void *data) {
  if (svc == NULL || svc->magic != PROTOBUF_C__SERVICE_DESCRIPTOR_MAGIC)
    return -EINVAL;
  for (unsigned i = 0; i < svc->n_methods; i++) {
    const ProtobufCMethodDescriptor *md = &svc->methods[i];
    char path[512];
    int n = snprintf(path, sizeof(path), "/%s/%s", svc->name, md->name);
    if (n < 0 || (size_t)n >= sizeof(path))
      return -EINVAL;
    rpc_unary_fn fn = fns != NULL ? fns[i] : NULL;
    int rc = method_add(srv, path, md->input, md->output, fn, NULL, data);
    if (rc == -EEXIST && fn == NULL)
      continue; /* already handled, e.g. a streaming method */
    if (rc < 0)
      return rc;
  }
  return 0;
}

int rpc_server_add_cleanup(struct rpc_server *srv, void (*cb)(void *data), void *data) {
  struct cleanup *c = malloc(sizeof(*c));
  if (c == NULL)
    return -ENOMEM;
  c->cb = cb;
  c->data = data;
  c->next = srv->cleanups;
  srv->cleanups = c;
  return 0;
}

/* --- lifetime --- */

static int default_threads(void) {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  long n = cores > 0 ? 2 * cores : 4;
  if (n < 4)
    n = 4;
  if (n > 256)
    n = 256;
  return (int)n;
}

int rpc_server_new(const struct rpc_server_opts *opts, struct rpc_server **out,
                   struct tp_err *err) {
  *out = NULL;
  if (opts == NULL || opts->listen == NULL || opts->listen[0] == '\0') {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "listen: address required");
    return -EINVAL;
  }
  struct rpc_server *srv = calloc(1, sizeof(*srv));
  if (srv == NULL) {
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return -ENOMEM;
  }
  srv->n_pool = opts->threads > 0 ? opts->threads : default_threads();
  srv->auth = opts->auth;
  srv->auth_data = opts->auth_data;
  srv->pool = calloc((size_t)srv->n_pool, sizeof(*srv->pool));
  if (srv->pool == NULL) {
    free(srv);
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return -ENOMEM;
  }
  pthread_mutex_init(&srv->mu, NULL);
  pthread_cond_init(&srv->stream_done_cv, NULL);
  atomic_init(&srv->shutting_down, 0);

  grpc_init();
  grpc_arg args[] = {
      {GRPC_ARG_INTEGER, GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, {.integer = MAX_RECV_MESSAGE}},
      /* Bind or fail: never share the port with another process. */
      {GRPC_ARG_INTEGER, GRPC_ARG_ALLOW_REUSEPORT, {.integer = 0}},
      /* Find dead clients (an agent whose host vanished) within ~1.5 min. */
      {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_TIME_MS, {.integer = 60 * 1000}},
      {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_TIMEOUT_MS, {.integer = 20 * 1000}},
      /* Let clients keep idle connections alive with pings every >= 10 s
       * rather than answering them with GOAWAY too_many_pings. */
      {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, {.integer = 1}},
      {GRPC_ARG_INTEGER, GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, {.integer = 10000}},
  };
  grpc_channel_args channel_args = {sizeof(args) / sizeof(args[0]), args};
  srv->server = grpc_server_create(&channel_args, NULL);
  srv->shutdown_cq = grpc_completion_queue_create_for_next(NULL);
  grpc_server_register_completion_queue(srv->server, srv->shutdown_cq, NULL);
  for (int i = 0; i < srv->n_pool; i++) {
    srv->pool[i].srv = srv;
    srv->pool[i].notify_cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(srv->server, srv->pool[i].notify_cq, NULL);
  }

  grpc_server_credentials *creds = server_credentials(opts);
  srv->port = creds != NULL ? grpc_server_add_http2_port(srv->server, opts->listen, creds) : 0;
  if (creds != NULL)
    grpc_server_credentials_release(creds);
  if (srv->port == 0) {
    tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "listen %s: address in use or unavailable",
               opts->listen);
    rpc_server_free(srv);
    return -EADDRINUSE;
  }
  *out = srv;
  return 0;
}

static int method_sort_cmp(const void *a, const void *b) {
  const struct method *mb = b;
  const struct method *ma = a;
  return method_cmp_key(ma->path, ma->path_len, mb);
}

int rpc_server_start(struct rpc_server *srv, struct tp_err *err) {
  if (srv->started || srv->shut_down)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "rpc server already started");
  qsort(srv->methods, srv->n_methods, sizeof(*srv->methods), method_sort_cmp);
  srv->started = 1;
  grpc_server_start(srv->server);
  for (int i = 0; i < srv->n_pool; i++) {
    int rc = pthread_create(&srv->pool[i].tid, NULL, pool_main, &srv->pool[i]);
    if (rc != 0) {
      /* Threads already running are joined by rpc_server_shutdown. */
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED,
                        "rpc server: cannot start pool thread %d of %d: %s", i + 1, srv->n_pool,
                        strerror(rc));
    }
    srv->n_pool_started++;
  }
  return 0;
}

int rpc_server_port(const struct rpc_server *srv) {
  return srv->port;
}

int rpc_server_threads(const struct rpc_server *srv) {
  return srv->n_pool;
}

int rpc_server_shutting_down(const struct rpc_server *srv) {
  return atomic_load(&srv->shutting_down);
}

void rpc_server_shutdown(struct rpc_server *srv, int grace_ms) {
  if (srv == NULL || srv->shut_down)
    return;
  /* Set first: streams see it in rpc_stream_wait and end within the grace;
   * pool threads do not ask for another call. */
  atomic_store(&srv->shutting_down, 1);
  grpc_server_shutdown_and_notify(srv->server, srv->shutdown_cq, &srv->shutdown_tag);
  gpr_timespec grace = grace_ms < 0 ? forever() : deadline_after_ms(grace_ms);
  grpc_event ev = grpc_completion_queue_next(srv->shutdown_cq, grace, NULL);
  if (ev.type == GRPC_QUEUE_TIMEOUT) {
    grpc_server_cancel_all_calls(srv->server);
    ev = grpc_completion_queue_next(srv->shutdown_cq, forever(), NULL);
  }
  /* Every pending request_call has failed by now, so the pool threads are
   * out of their loops or about to be. */
  for (int i = 0; i < srv->n_pool_started; i++)
    pthread_join(srv->pool[i].tid, NULL);
  srv->n_pool_started = 0;
  /* No new stream threads can start; wait for the running ones (their
   * calls are over; the handlers return once they notice). */
  for (;;) {
    pthread_mutex_lock(&srv->mu);
    while (srv->streams_live != NULL && srv->streams_done == NULL)
      pthread_cond_wait(&srv->stream_done_cv, &srv->mu);
    int more = srv->streams_live != NULL;
    pthread_mutex_unlock(&srv->mu);
    streams_reap(srv);
    if (!more)
      break;
  }
  srv->shut_down = 1;
}

void rpc_server_free(struct rpc_server *srv) {
  if (srv == NULL)
    return;
  rpc_server_shutdown(srv, 0);
  grpc_server_destroy(srv->server);
  cq_close(srv->shutdown_cq, 0);
  for (int i = 0; i < srv->n_pool; i++)
    cq_close(srv->pool[i].notify_cq, 0);
  for (size_t i = 0; i < srv->n_methods; i++)
    free(srv->methods[i].path);
  free(srv->methods);
  while (srv->cleanups != NULL) {
    struct cleanup *c = srv->cleanups;
    srv->cleanups = c->next;
    c->cb(c->data);
    free(c);
  }
  free(srv->pool);
  pthread_cond_destroy(&srv->stream_done_cv);
  pthread_mutex_destroy(&srv->mu);
  free(srv);
  grpc_shutdown();
}
