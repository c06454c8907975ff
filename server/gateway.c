/* The HTTP gateway on H2O (see gateway.h).
 *
 * Threads. One thread runs a libuv loop with H2O's context on it: it
 * accepts, reads requests, and writes answers; it never runs a handler
 * nor waits for one. A call is handed to the RPC core (rpc_server_call),
 * which authenticates and serves it on its pool; the pool thread encodes
 * the answer as JSON and queues it back to the loop (a mutex-guarded list
 * and a uv_async), which sends it.
 *
 * A call (struct gw_call) is owned by two holders, both on the loop
 * thread: the HTTP request (released when H2O disposes of the request's
 * memory pool: answered and sent, or the client went away) and the RPC
 * side (released when its answer has been taken off the done list). So an
 * answer that comes after its client left is dropped, and nothing the
 * pool writes into a call is freed before the pool is done with it.
 *
 * Deadlines (Connect-Timeout-Ms) are checked by the loop's sweep every
 * SWEEP_MS: an overdue call is answered deadline_exceeded at once, and the
 * RPC core does not run it any more if it has not started (for a write:
 * nothing was written).
 *
 * Shutdown: the listener closes, H2O is asked to end its connections
 * (HTTP/2 GOAWAY, no keep-alive), the calls in flight finish and are
 * answered for up to the grace; then every connection's socket is shut
 * down, so that H2O closes each itself, and once the calls have all come
 * back and the connections are gone, the context is disposed of and the
 * loop ends. */
#include "gateway.h"

#include <errno.h>
#include <h2o.h>
#include <h2o/http2.h>
#include <h2o/socket/uv-binding.h>
#include <h2o/version.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <uv.h>

#include "addr.h"
#include "certinfo.h"
#include "connect.h"
#include "log.h"
#include "pbjson.h"

#if H2O_VERSION_MAJOR != 2 || H2O_VERSION_MINOR != 2
#error                                                                                             \
    "gateway.c reads the verified client certificate through H2O 2.2's socket layout (peer_cert_pem): check it against this H2O version"
#endif

#define DEFAULT_MAX_CONNECTIONS 256
/* Calls handed to the RPC core and not yet back, at most; beyond, 429. */
#define MAX_CALLS 256
#define SWEEP_MS 100
#define HANDSHAKE_TIMEOUT_MS (10 * 1000)
/* An HTTP/1.1 request must arrive within it, and a kept-alive connection
 * idles at most this long; an HTTP/2 connection idles at most IDLE_MS. */
#define REQUEST_TIMEOUT_MS (10 * 1000)
#define IDLE_MS (30 * 1000)
#define MAX_REQUESTS_PER_CONNECTION 16
/* A connection H2O has not closed this long after its socket was shut
 * down (past the grace) is left open: the loop ends without it. */
#define STOP_ABANDON_MS 3000

static const char content_security_policy[] =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

enum gw_kind { GW_RPC, GW_METRICS };

struct gateway;

/* One call through the gateway (see the top of the file). */
struct gw_call {
  struct gateway *gw;
  enum gw_kind kind;
  h2o_req_t *req; /* NULL once H2O disposed of it */
  int refs;       /* the request's and the RPC side's (loop thread) */
  int responded;
  int64_t deadline_ms; /* monotonic; 0: none */
  struct rpc_external x;
  char method[256];
  char peer[96];
  char *authorization; /* wiped when freed */
  char *cert_pem;
  char *body; /* the request body (may hold a private key): wiped when freed */
  size_t body_len;
  /* The outcome, written by the pool before the call goes on the done
   * list. */
  grpc_status_code status;
  char *msg;
  char *out; /* the JSON response, or the metrics text */
  struct gw_call *done_next;
  struct gw_call *prev, *next; /* gw->calls: handed to the RPC core, not yet back */
};

/* A connection, from accept until H2O closed its socket. */
struct gw_conn {
  uv_tcp_t tcp; /* first: the close callback gets its address */
  struct gateway *gw;
  struct gw_conn *prev, *next;
};

struct gw_handler {
  h2o_handler_t super;
  struct gateway *gw;
};

struct gateway {
  struct gateway_opts opts;
  char *web_root;
  int port;
  int max_connections;
  SSL_CTX *ssl_ctx; /* NULL: plaintext */
  pthread_t thread;
  int thread_started;
  int shut_down;

  uv_loop_t loop;
  int loop_ready;
  uv_tcp_t listener;
  uv_async_t wake;
  uv_timer_t sweep;
  h2o_globalconf_t config;
  h2o_context_t ctx;
  h2o_accept_ctx_t accept_ctx;
  int config_ready;
  int ctx_ready;

  /* Loop thread only. */
  struct gw_conn *conns;
  int n_conns;
  struct gw_call *calls;
  int n_calls;
  int stopping;
  int64_t stop_deadline_ms; /* the grace's end */
  int conns_shut;           /* every connection's socket was shut down */
  int abandoned;            /* connections outlived STOP_ABANDON_MS: left open */
  unsigned long refused_conns;

  /* Between the pool, the caller of gateway_shutdown and the loop. */
  pthread_mutex_t mu;
  struct gw_call *done_head, *done_tail;
  int stop_requested;
  int grace_ms;
};

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- answers (loop thread) --- */

static const char *reason(int http) {
  switch (http) {
  case 200:
    return "OK";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 409:
    return "Conflict";
  case 413:
    return "Payload Too Large";
  case 415:
    return "Unsupported Media Type";
  case 429:
    return "Too Many Requests";
  case 499:
    return "Client Closed Request";
  case 501:
    return "Not Implemented";
  case 503:
    return "Service Unavailable";
  case 504:
    return "Gateway Timeout";
  default:
    return "Internal Server Error";
  }
}

static void send_body(h2o_req_t *req, int http, const char *type, const char *body, size_t len) {
  req->res.status = http;
  req->res.reason = reason(http);
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, type, strlen(type));
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                 H2O_STRLIT("no-store"));
  h2o_send_inline(req, body, len);
}

/* A Connect error: {"code": ..., "message": ...} with the code's HTTP
 * status (http > 0 overrides it: 405, 413, 415). */
static void send_error(h2o_req_t *req, int http, grpc_status_code status, const char *msg) {
  static const char fallback[] = "{\"code\":\"resource_exhausted\"}";
  char *text = connect_error_json(status, msg);
  send_body(req, http > 0 ? http : connect_code_http(status), "application/json",
            text != NULL ? text : fallback, text != NULL ? strlen(text) : sizeof(fallback) - 1);
  free(text);
}

/* --- calls --- */

static void call_free(struct gw_call *gc) {
  if (gc->authorization != NULL) {
    OPENSSL_cleanse(gc->authorization, strlen(gc->authorization));
    free(gc->authorization);
  }
  if (gc->body != NULL) {
    OPENSSL_cleanse(gc->body, gc->body_len);
    free(gc->body);
  }
  free(gc->cert_pem);
  free(gc->msg);
  free(gc->out);
  free(gc);
}

static void call_unref(struct gw_call *gc) {
  if (--gc->refs == 0)
    call_free(gc);
}

/* H2O disposes of the request's pool: the request is gone. */
static void req_disposed(void *p) {
  struct gw_call *gc = *(struct gw_call **)p;
  gc->req = NULL;
  call_unref(gc);
}

static void call_answer(struct gw_call *gc) {
  if (gc->responded || gc->req == NULL)
    return;
  gc->responded = 1;
  if (gc->status != GRPC_STATUS_OK)
    send_error(gc->req, 0, gc->status, gc->msg != NULL ? gc->msg : "");
  else if (gc->kind == GW_METRICS)
    send_body(gc->req, 200, "text/plain; version=0.0.4; charset=utf-8",
              gc->out != NULL ? gc->out : "", gc->out != NULL ? strlen(gc->out) : 0);
  else
    send_body(gc->req, 200, "application/json", gc->out != NULL ? gc->out : "{}",
              gc->out != NULL ? strlen(gc->out) : 2);
}

static void calls_unlink(struct gateway *gw, struct gw_call *gc) {
  if (gc->prev != NULL)
    gc->prev->next = gc->next;
  else
    gw->calls = gc->next;
  if (gc->next != NULL)
    gc->next->prev = gc->prev;
  gw->n_calls--;
}

/* Pool: decodes the request body as the method's input. */
static int call_decode(const ProtobufCMessageDescriptor *desc, ProtobufCMessage **req,
                       struct tp_err *err, void *data) {
  struct gw_call *gc = data;
  /* An empty body is the empty message, as `curl -X POST` sends it. */
  if (gc->body_len == 0)
    return pbjson_decode(desc, "{}", 2, req, err);
  return pbjson_decode(desc, gc->body, gc->body_len, req, err);
}

/* Pool: /metrics, once the caller may read it. */
static void call_metrics(const struct rpc_call_info *call, void *data) {
  (void)call;
  struct gw_call *gc = data;
  gc->out =
      gc->gw->opts.metrics != NULL ? gc->gw->opts.metrics(gc->gw->opts.metrics_data) : strdup("");
  if (gc->out == NULL) {
    gc->status = GRPC_STATUS_RESOURCE_EXHAUSTED;
    gc->msg = strdup("out of memory");
  }
}

/* Pool: the outcome; encoded here, sent by the loop. */
static void call_done(grpc_status_code status, const char *msg, ProtobufCMessage *resp,
                      void *data) {
  struct gw_call *gc = data;
  struct gateway *gw = gc->gw;
  if (gc->status == GRPC_STATUS_OK)
    gc->status = status;
  if (status != GRPC_STATUS_OK) {
    free(gc->out);
    gc->out = NULL;
    gc->msg = strdup(msg);
  } else if (resp != NULL) {
    struct tp_err err = {.status = GRPC_STATUS_OK};
    if (pbjson_encode(resp, 0, &gc->out, &err) != 0) {
      gc->status = err.status;
      gc->msg = strdup(err.msg);
    }
  }
  if (resp != NULL)
    protobuf_c_message_free_unpacked(resp, NULL);
  pthread_mutex_lock(&gw->mu);
  gc->done_next = NULL;
  if (gw->done_tail != NULL)
    gw->done_tail->done_next = gc;
  else
    gw->done_head = gc;
  gw->done_tail = gc;
  /* Under mu: the loop closes wake under mu once every call is back, so
   * this send never meets a closed handle. */
  uv_async_send(&gw->wake);
  pthread_mutex_unlock(&gw->mu);
}

/* "ipv4:127.0.0.1:51234", as grpc names peers. */
static void peer_name(h2o_socket_t *sock, char *out, size_t len) {
  struct sockaddr_storage ss;
  snprintf(out, len, "unknown");
  if (sock == NULL || h2o_socket_getpeername(sock, (struct sockaddr *)&ss) == 0)
    return;
  char host[64];
  if (ss.ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
    uv_ip4_name(in, host, sizeof(host));
    snprintf(out, len, "ipv4:%s:%u", host, ntohs(in->sin_port));
  } else if (ss.ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
    uv_ip6_name(in6, host, sizeof(host));
    snprintf(out, len, "ipv6:[%s]:%u", host, ntohs(in6->sin6_port));
  }
}

/* H2O 2.2 keeps the connection's SSL in a private struct that begins
 * with the SSL_CTX and the SSL (lib/common/socket.c, struct
 * st_h2o_socket_ssl_t) and has no accessor for either. The layout is
 * pinned by the version check at the top of the file, and both pointers
 * are checked against our own SSL_CTX before either is used. */
struct h2o_ssl_prefix {
  SSL_CTX *ssl_ctx;
  SSL *ossl;
};

/* The client certificate the handshake verified (PEM, caller frees), or
 * NULL. */
static char *peer_cert_pem(struct gateway *gw, h2o_socket_t *sock) {
  if (gw->ssl_ctx == NULL || sock == NULL || sock->ssl == NULL)
    return NULL;
  const struct h2o_ssl_prefix *p = (const struct h2o_ssl_prefix *)sock->ssl;
  if (p->ssl_ctx != gw->ssl_ctx || p->ossl == NULL || SSL_get_SSL_CTX(p->ossl) != gw->ssl_ctx)
    return NULL;
  X509 *x = SSL_get0_peer_certificate(p->ossl);
  if (x == NULL || SSL_get_verify_result(p->ossl) != X509_V_OK)
    return NULL;
  BIO *b = BIO_new(BIO_s_mem());
  char *pem = NULL;
  if (b != NULL && PEM_write_bio_X509(b, x) == 1) {
    char *data;
    long n = BIO_get_mem_data(b, &data);
    if (n > 0)
      pem = strndup(data, (size_t)n);
  }
  BIO_free(b);
  return pem;
}

/* The first value of a request header, as a new string; NULL if absent. */
static char *header_dup(h2o_req_t *req, const h2o_token_t *token) {
  ssize_t i = h2o_find_header(&req->headers, token, -1);
  if (i < 0)
    return NULL;
  return strndup(req->headers.entries[i].value.base, req->headers.entries[i].value.len);
}

static int header_is(h2o_req_t *req, const char *name, const char **value, size_t *len) {
  ssize_t i = h2o_find_header_by_str(&req->headers, name, strlen(name), -1);
  if (i < 0)
    return 0;
  *value = req->headers.entries[i].value.base;
  *len = req->headers.entries[i].value.len;
  return 1;
}

static int iov_eq(const char *s, size_t len, const char *lit) {
  return len == strlen(lit) && strncasecmp(s, lit, len) == 0;
}

/* Hands a call to the RPC core; answers at once if it cannot be. */
static void call_start(struct gateway *gw, h2o_req_t *req, struct gw_call *gc) {
  gc->gw = gw;
  gc->req = req;
  gc->refs = 2;
  struct gw_call **slot = h2o_mem_alloc_shared(&req->pool, sizeof(*slot), req_disposed);
  *slot = gc;
  h2o_socket_t *sock =
      req->conn->callbacks->get_socket != NULL ? req->conn->callbacks->get_socket(req->conn) : NULL;
  peer_name(sock, gc->peer, sizeof(gc->peer));
  gc->authorization = header_dup(req, H2O_TOKEN_AUTHORIZATION);
  gc->cert_pem = peer_cert_pem(gw, sock);
  gc->x = (struct rpc_external){.method = gc->method,
                                .peer = gc->peer,
                                .authorization = gc->authorization,
                                .client_cert_pem = gc->cert_pem,
                                .deadline_ms = gc->deadline_ms,
                                .decode = gc->kind == GW_RPC ? call_decode : NULL,
                                .run = gc->kind == GW_METRICS ? call_metrics : NULL,
                                .done = call_done,
                                .data = gc};
  int rc =
      gw->stopping || gw->n_calls >= MAX_CALLS ? -EAGAIN : rpc_server_call(gw->opts.rpc, &gc->x);
  if (rc != 0) {
    gc->responded = 1;
    if (rc == -EAGAIN && !gw->stopping) {
      char msg[128];
      snprintf(msg, sizeof(msg), "server busy: %d calls in flight already; retry with backoff",
               MAX_CALLS);
      send_error(req, 0, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
    } else {
      send_error(req, 0, GRPC_STATUS_UNAVAILABLE, "the server is shutting down");
    }
    call_unref(gc); /* the RPC side's: it never got the call */
    return;
  }
  gc->prev = NULL;
  gc->next = gw->calls;
  if (gw->calls != NULL)
    gw->calls->prev = gc;
  gw->calls = gc;
  gw->n_calls++;
}

/* Checks a Connect unary request's headers; 0, or answers and returns -1. */
static int connect_headers(h2o_req_t *req, int64_t *deadline_ms) {
  const char *v;
  size_t n;
  ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_TYPE, -1);
  if (i < 0 || !connect_content_type_json(req->headers.entries[i].value.base,
                                          req->headers.entries[i].value.len)) {
    send_error(req, 415, GRPC_STATUS_INVALID_ARGUMENT,
               "content-type: only application/json is served here (protobuf's JSON mapping)");
    return -1;
  }
  if (header_is(req, "connect-protocol-version", &v, &n) && !iov_eq(v, n, "1")) {
    send_error(req, 0, GRPC_STATUS_INVALID_ARGUMENT,
               "connect-protocol-version: only version 1 is served");
    return -1;
  }
  if ((header_is(req, "content-encoding", &v, &n) ||
       header_is(req, "connect-content-encoding", &v, &n)) &&
      !iov_eq(v, n, "identity")) {
    send_error(req, 0, GRPC_STATUS_UNIMPLEMENTED,
               "content-encoding: only identity is served (send the body uncompressed)");
    return -1;
  }
  *deadline_ms = 0;
  if (header_is(req, "connect-timeout-ms", &v, &n)) {
    int64_t ms;
    if (connect_timeout_parse(v, n, &ms) != 0) {
      send_error(req, 0, GRPC_STATUS_INVALID_ARGUMENT,
                 "connect-timeout-ms: a count of milliseconds, 1 to 10 digits");
      return -1;
    }
    *deadline_ms = now_ms() + ms;
  }
  return 0;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req) {
  struct gateway *gw = ((struct gw_handler *)self)->gw;
  size_t path_len = req->query_at != SIZE_MAX ? req->query_at : req->path.len;
  const char *path = req->path.base;
  int get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) ||
            h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
  int post = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"));

  if (h2o_memis(path, path_len, H2O_STRLIT("/healthz"))) {
    if (!get) {
      h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("GET, HEAD"));
      send_error(req, 405, GRPC_STATUS_INVALID_ARGUMENT, "/healthz: GET or HEAD");
    } else if (gw->stopping || rpc_server_shutting_down(gw->opts.rpc)) {
      send_body(req, 503, "text/plain; charset=utf-8", H2O_STRLIT("shutting down\n"));
    } else {
      send_body(req, 200, "text/plain; charset=utf-8", H2O_STRLIT("ok\n"));
    }
    return 0;
  }
  int metrics = h2o_memis(path, path_len, H2O_STRLIT("/metrics"));
  if (!metrics && !connect_rpc_path(path, path_len))
    return -1; /* the dashboard's files */
  if (metrics ? !get : !post) {
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL,
                   metrics ? "GET, HEAD" : "POST", metrics ? 9 : 4);
    send_error(req, 405, GRPC_STATUS_INVALID_ARGUMENT,
               metrics ? "/metrics: GET or HEAD" : "an API method is called with POST");
    return 0;
  }
  int64_t deadline_ms = 0;
  if (!metrics && connect_headers(req, &deadline_ms) != 0)
    return 0;
  if (path_len >= sizeof(((struct gw_call *)0)->method)) {
    send_error(req, 0, GRPC_STATUS_UNIMPLEMENTED, "unknown method (too long)");
    return 0;
  }
  struct gw_call *gc = calloc(1, sizeof(*gc));
  if (gc != NULL && !metrics && req->entity.base != NULL && req->entity.len > 0) {
    gc->body = malloc(req->entity.len);
    if (gc->body != NULL) {
      memcpy(gc->body, req->entity.base, req->entity.len);
      gc->body_len = req->entity.len;
    }
  }
  if (gc == NULL || (!metrics && req->entity.len > 0 && gc->body == NULL)) {
    free(gc);
    send_error(req, 0, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return 0;
  }
  gc->kind = metrics ? GW_METRICS : GW_RPC;
  memcpy(gc->method, path, path_len);
  gc->method[path_len] = '\0';
  gc->deadline_ms = deadline_ms;
  call_start(gw, req, gc);
  return 0;
}

/* --- the loop --- */

static void conn_closed(uv_handle_t *h) {
  struct gw_conn *conn = (struct gw_conn *)h;
  struct gateway *gw = conn->gw;
  if (conn->prev != NULL)
    conn->prev->next = conn->next;
  else
    gw->conns = conn->next;
  if (conn->next != NULL)
    conn->next->prev = conn->prev;
  gw->n_conns--;
  free(conn);
}

static void conn_refused(uv_handle_t *h) {
  free(h);
}

static void on_accept(uv_stream_t *listener, int status) {
  struct gateway *gw = listener->data;
  if (status != 0)
    return;
  struct gw_conn *conn = calloc(1, sizeof(*conn));
  if (conn == NULL)
    return;
  uv_tcp_init(&gw->loop, &conn->tcp);
  if (uv_accept(listener, (uv_stream_t *)&conn->tcp) != 0 || gw->stopping ||
      gw->n_conns >= gw->max_connections) {
    if (gw->n_conns >= gw->max_connections && gw->refused_conns++ % 1000 == 0)
      log_warn("gateway", "connection refused: %d connections open, the most served (%lu so far)",
               gw->max_connections, gw->refused_conns);
    uv_close((uv_handle_t *)&conn->tcp, conn_refused);
    return;
  }
  conn->gw = gw;
  conn->next = gw->conns;
  if (gw->conns != NULL)
    gw->conns->prev = conn;
  gw->conns = conn;
  gw->n_conns++;
  uv_tcp_nodelay(&conn->tcp, 1);
  h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)&conn->tcp, conn_closed);
  if (sock == NULL) {
    uv_close((uv_handle_t *)&conn->tcp, conn_closed);
    return;
  }
  h2o_accept(&gw->accept_ctx, sock);
}

/* Takes the answers the pool queued, and sends those whose client waits. */
static void take_done(struct gateway *gw) {
  pthread_mutex_lock(&gw->mu);
  struct gw_call *gc = gw->done_head;
  gw->done_head = gw->done_tail = NULL;
  pthread_mutex_unlock(&gw->mu);
  while (gc != NULL) {
    struct gw_call *next = gc->done_next;
    calls_unlink(gw, gc);
    call_answer(gc);
    call_unref(gc); /* the RPC side's */
    gc = next;
  }
}

static void stop_begin(struct gateway *gw) {
  gw->stopping = 1;
  pthread_mutex_lock(&gw->mu);
  int grace = gw->grace_ms;
  pthread_mutex_unlock(&gw->mu);
  gw->stop_deadline_ms = grace < 0 ? INT64_MAX : now_ms() + grace;
  uv_close((uv_handle_t *)&gw->listener, NULL);
  h2o_context_request_shutdown(&gw->ctx);
}

/* Shutdown's last steps, once the calls are back: every socket shut down
 * (H2O closes each as it sees the end), and when none is left, the end. */
static void stop_progress(struct gateway *gw) {
  if (!gw->stopping)
    return;
  if (!gw->conns_shut && (gw->n_calls == 0 || now_ms() >= gw->stop_deadline_ms)) {
    if (gw->n_calls == 0 && now_ms() < gw->stop_deadline_ms)
      gw->stop_deadline_ms = now_ms(); /* the abandon delay counts from here */
    for (struct gw_conn *c = gw->conns; c != NULL; c = c->next) {
      uv_os_fd_t fd;
      if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
        shutdown(fd, SHUT_RDWR);
    }
    gw->conns_shut = gw->n_calls == 0;
  }
  if (gw->n_calls == 0 && gw->n_conns > 0 && now_ms() >= gw->stop_deadline_ms + STOP_ABANDON_MS &&
      gw->stop_deadline_ms < INT64_MAX - STOP_ABANDON_MS) {
    /* H2O neither reads nor writes them any more, so it never sees the
     * end: the process is exiting, and they go with it. */
    log_warn("gateway", "%d connections did not close at shutdown; leaving them", gw->n_conns);
    gw->abandoned = 1;
    uv_stop(&gw->loop);
    return;
  }
  if (gw->n_calls == 0 && gw->n_conns == 0 && gw->ctx_ready) {
    /* HTTP/2's graceful shutdown keeps a timer of the context's own linked
     * (to resend GOAWAY) that the context's dispose expects unlinked. */
    if (h2o_timeout_is_linked(&gw->ctx.http2._graceful_shutdown_timeout))
      h2o_timeout_unlink(&gw->ctx.http2._graceful_shutdown_timeout);
    /* Our handles close first and ctx_ready drops before the dispose:
     * h2o_context_dispose runs the loop itself (to finish its own
     * closes), and a sweep or wake-up firing in there must not come back
     * here and dispose of the context twice. */
    gw->ctx_ready = 0;
    pthread_mutex_lock(&gw->mu);
    uv_close((uv_handle_t *)&gw->wake, NULL);
    pthread_mutex_unlock(&gw->mu);
    uv_close((uv_handle_t *)&gw->sweep, NULL);
    h2o_context_dispose(&gw->ctx);
  }
}

static void on_wake(uv_async_t *a) {
  struct gateway *gw = a->data;
  take_done(gw);
  pthread_mutex_lock(&gw->mu);
  int stop = gw->stop_requested;
  pthread_mutex_unlock(&gw->mu);
  if (stop && !gw->stopping)
    stop_begin(gw);
  stop_progress(gw);
}

/* Answers the calls past their deadline; moves shutdown on. */
static void on_sweep(uv_timer_t *t) {
  struct gateway *gw = t->data;
  int64_t now = now_ms();
  for (struct gw_call *gc = gw->calls; gc != NULL; gc = gc->next)
    if (gc->deadline_ms > 0 && now >= gc->deadline_ms && !gc->responded && gc->req != NULL) {
      gc->responded = 1;
      send_error(gc->req, 0, GRPC_STATUS_DEADLINE_EXCEEDED,
                 "the call did not finish within connect-timeout-ms");
    }
  stop_progress(gw);
}

#ifdef __SANITIZE_ADDRESS__
/* H2O keeps freed memory-pool chunks and buffers on free lists of its own
 * (h2o_mem_alloc_recycle), some of them thread-local, and never returns
 * them: once the gateway's thread has exited, LeakSanitizer finds them
 * unreachable. They are caches, not leaks. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) {
  return "leak:h2o_mem_alloc_recycle\n";
}
#endif

static void *gateway_main(void *arg) {
  struct gateway *gw = arg;
  uv_run(&gw->loop, UV_RUN_DEFAULT);
  return NULL;
}

/* --- setup --- */

static SSL_CTX *ssl_ctx_make(const struct gateway_opts *o, struct tp_err *err) {
  STACK_OF(X509) *chain = NULL, *cas = NULL;
  EVP_PKEY *key = NULL;
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == NULL) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "gateway: SSL_CTX_new failed");
    goto fail;
  }
  if (certinfo_certs_read(o->tls_cert_pem, strlen(o->tls_cert_pem), "server certificate", &chain,
                          err) != 0 ||
      certinfo_key_read(o->tls_key_pem, strlen(o->tls_key_pem), NULL, "server key", &key, err) != 0)
    goto fail;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  if (SSL_CTX_use_certificate(ctx, sk_X509_value(chain, 0)) != 1 ||
      SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "gateway: the server certificate and key do not load");
    goto fail;
  }
  for (int i = 1; i < sk_X509_num(chain); i++)
    if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(chain, i)) != 1) {
      tp_err_set(err, GRPC_STATUS_INTERNAL, "gateway: the server chain does not load");
      goto fail;
    }
  if (o->tls_client_ca_pem != NULL) {
    if (certinfo_certs_read(o->tls_client_ca_pem, strlen(o->tls_client_ca_pem), "client CA", &cas,
                            err) != 0)
      goto fail;
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    for (int i = 0; i < sk_X509_num(cas); i++)
      if (X509_STORE_add_cert(store, sk_X509_value(cas, i)) != 1 ||
          SSL_CTX_add_client_CA(ctx, sk_X509_value(cas, i)) != 1) {
        tp_err_set(err, GRPC_STATUS_INTERNAL, "gateway: the client CA does not load");
        goto fail;
      }
    /* A certificate is asked for, not required (tokens work without one);
     * one that does not verify fails the handshake. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  }
  h2o_ssl_register_alpn_protocols(ctx, h2o_http2_alpn_protocols);
  certinfo_certs_free(chain);
  certinfo_certs_free(cas);
  EVP_PKEY_free(key);
  return ctx;
fail:
  certinfo_certs_free(chain);
  certinfo_certs_free(cas);
  EVP_PKEY_free(key);
  SSL_CTX_free(ctx);
  return NULL;
}

static int bind_listener(struct gateway *gw, struct tp_err *err) {
  char host[256];
  int port = 0;
  if (addr_parse(gw->opts.listen, host, sizeof(host), &port, 1, "--http-listen", err) != 0)
    return -1;
  struct addrinfo hints = {
      .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *ai = NULL;
  char ports[16];
  snprintf(ports, sizeof(ports), "%d", port);
  int rc = getaddrinfo(host[0] != '\0' ? host : NULL, ports, &hints, &ai);
  if (rc != 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "--http-listen: %s: %s", gw->opts.listen,
                      gai_strerror(rc));
  uv_tcp_init(&gw->loop, &gw->listener);
  gw->listener.data = gw;
  rc = uv_tcp_bind(&gw->listener, ai->ai_addr, 0);
  freeaddrinfo(ai);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&gw->listener, 128, on_accept);
  if (rc != 0)
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "--http-listen: cannot listen on %s: %s",
                      gw->opts.listen, uv_strerror(rc));
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  uv_tcp_getsockname(&gw->listener, (struct sockaddr *)&ss, &len);
  gw->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                            : ((struct sockaddr_in *)&ss)->sin_port);
  return 0;
}

/* Headers on every response, the dashboard's files and errors included. */
static h2o_iovec_t hdr_csp = {H2O_STRLIT("content-security-policy")};
static h2o_iovec_t hdr_nosniff = {H2O_STRLIT("x-content-type-options")};
static h2o_iovec_t hdr_referrer = {H2O_STRLIT("referrer-policy")};
static h2o_iovec_t hdr_frame = {H2O_STRLIT("x-frame-options")};
static h2o_headers_command_t security_headers[] = {
    {H2O_HEADERS_CMD_SET,
     &hdr_csp,
     {(char *)content_security_policy, sizeof(content_security_policy) - 1}},
    {H2O_HEADERS_CMD_SET, &hdr_nosniff, {H2O_STRLIT("nosniff")}},
    {H2O_HEADERS_CMD_SET, &hdr_referrer, {H2O_STRLIT("no-referrer")}},
    {H2O_HEADERS_CMD_SET, &hdr_frame, {H2O_STRLIT("DENY")}},
    {H2O_HEADERS_CMD_NULL, NULL, {NULL, 0}},
};

static void config_make(struct gateway *gw) {
  h2o_config_init(&gw->config);
  gw->config_ready = 1;
  gw->config.server_name = h2o_iovec_init(H2O_STRLIT("tlsplane"));
  gw->config.max_request_entity_size = GATEWAY_MAX_BODY;
  gw->config.handshake_timeout = HANDSHAKE_TIMEOUT_MS;
  gw->config.http1.req_timeout = REQUEST_TIMEOUT_MS;
  gw->config.http1.upgrade_to_http2 = 0;
  gw->config.http2.idle_timeout = IDLE_MS;
  gw->config.http2.graceful_shutdown_timeout = 0;
  gw->config.http2.max_concurrent_requests_per_connection = MAX_REQUESTS_PER_CONNECTION;
  h2o_hostconf_t *host =
      h2o_config_register_host(&gw->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
  h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
  struct gw_handler *h = (struct gw_handler *)h2o_create_handler(path, sizeof(*h));
  h->super.on_req = on_req;
  h->gw = gw;
  if (gw->web_root != NULL) {
    static const char *index_files[] = {"index.html", NULL};
    h2o_file_register(path, gw->web_root, index_files, NULL, 0);
  }
  h2o_headers_register(path, security_headers);
}

int gateway_new(const struct gateway_opts *opts, struct gateway **out, struct tp_err *err) {
  *out = NULL;
  struct gateway *gw = calloc(1, sizeof(*gw));
  if (gw == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "gateway: out of memory");
  gw->opts = *opts;
  gw->max_connections = opts->max_connections > 0 ? opts->max_connections : DEFAULT_MAX_CONNECTIONS;
  pthread_mutex_init(&gw->mu, NULL);
  *out = gw;
  if (opts->web_root != NULL && (gw->web_root = strdup(opts->web_root)) == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "gateway: out of memory");
  if (opts->tls_cert_pem != NULL && (gw->ssl_ctx = ssl_ctx_make(opts, err)) == NULL)
    return -1;
  if (uv_loop_init(&gw->loop) != 0)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "gateway: uv_loop_init failed");
  gw->loop_ready = 1;
  uv_async_init(&gw->loop, &gw->wake, on_wake);
  gw->wake.data = gw;
  uv_timer_init(&gw->loop, &gw->sweep);
  gw->sweep.data = gw;
  if (bind_listener(gw, err) != 0)
    return -1;
  config_make(gw);
  h2o_context_init(&gw->ctx, &gw->loop, &gw->config);
  gw->ctx_ready = 1;
  gw->accept_ctx.ctx = &gw->ctx;
  gw->accept_ctx.hosts = gw->config.hosts;
  gw->accept_ctx.ssl_ctx = gw->ssl_ctx;
  return 0;
}

int gateway_start(struct gateway *gw, struct tp_err *err) {
  uv_timer_start(&gw->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
  int rc = pthread_create(&gw->thread, NULL, gateway_main, gw);
  if (rc != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "gateway: cannot start its thread: %s",
                      strerror(rc));
  gw->thread_started = 1;
  return 0;
}

int gateway_port(const struct gateway *gw) {
  return gw->port;
}

void gateway_shutdown(struct gateway *gw, int grace_ms) {
  if (gw == NULL || gw->shut_down || !gw->thread_started)
    return;
  pthread_mutex_lock(&gw->mu);
  gw->stop_requested = 1;
  gw->grace_ms = grace_ms;
  pthread_mutex_unlock(&gw->mu);
  uv_async_send(&gw->wake);
  pthread_join(gw->thread, NULL);
  gw->shut_down = 1;
}

static void close_any(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

void gateway_free(struct gateway *gw) {
  if (gw == NULL)
    return;
  gateway_shutdown(gw, 0);
  if (gw->abandoned) {
    /* Connections H2O still holds: its context cannot be disposed of. */
    free(gw);
    return;
  }
  if (gw->loop_ready) {
    /* A gateway that never ran (or whose loop left handles): close what
     * is left and let the loop finish the closes. */
    if (gw->ctx_ready) {
      gw->ctx_ready = 0;
      h2o_context_dispose(&gw->ctx);
    }
    uv_walk(&gw->loop, close_any, NULL);
    uv_run(&gw->loop, UV_RUN_DEFAULT);
    uv_loop_close(&gw->loop);
  }
  if (gw->config_ready)
    h2o_config_dispose(&gw->config);
  SSL_CTX_free(gw->ssl_ctx);
  free(gw->web_root);
  pthread_mutex_destroy(&gw->mu);
  free(gw);
}
