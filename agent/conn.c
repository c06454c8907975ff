/* A client connection: TLS terminated over libuv and OpenSSL, cleartext
 * proxied to the listener's upstream.
 *
 * The TLS stream follows Node's TLSWrap and h2o's socket layer. OpenSSL
 * never touches a socket; it talks to one custom BIO per connection that
 * serves as both enc_in and enc_out:
 *
 *   client --TLS--> w->rbuf --enc_in--> SSL_read --> w->clear --> upstream
 *   client <--TLS-- w->out <--enc_out-- SSL_write <-- w->rbuf <-- upstream
 *
 * enc_in reads straight from the worker's read buffer, which libuv filled
 * and which is consumed (SSL_read until WANT_READ) before the read callback
 * returns; enc_out appends to the worker's output buffer, which every
 * callback that drove SSL flushes before it returns (uv_try_write first,
 * the rest copied and sent by the one uv_write in flight). So the data path
 * allocates nothing per read: a connection owns buffers only while a peer
 * is not draining (struct wq), and OpenSSL releases its own record buffers
 * when idle (SSL_MODE_RELEASE_BUFFERS).
 *
 * Backpressure: a side is read only while what was read from it can go
 * out. The client is not read while the upstream write queue holds a
 * read's worth, nor while more than CONN_CLIENT_HIGH waits to be sent to
 * the client, whatever produced it: cleartext from the upstream, or what
 * OpenSSL writes on its own in answer to the client (KeyUpdate responses,
 * alerts), which a client that never reads could otherwise pile up. The
 * upstream is not read while anything is queued for the client (or
 * SSL_write is waiting on a renegotiation). Every buffer is thus bounded
 * by about one read (WORKER_READ_SIZE) plus a few TLS records.
 *
 * Time: besides the handshake, connect and linger timers (c->timer), an
 * established connection has a watch timer (c->watch) for the listener's
 * idle_timeout (no byte either way) and write_timeout (a side with bytes
 * waiting that takes none). It is not restarted on every read or write:
 * the times of the last I/O and of each side's last progress are kept,
 * and the timer, when it fires, closes the connection or sets itself for
 * the next deadline; a write starting only brings it forward.
 *
 * Life of a connection (flags below):
 *   accept -> handshake (timer: handshake_timeout) -> HS_DONE: connect the
 *   upstream (timer: connect timeout), PROXY v2 header and early cleartext
 *   queued -> UP_CONNECTED: data both ways ->
 *   client close_notify or EOF (CLIENT_EOF): once the upstream queue is out,
 *     shutdown(upstream) (UP_SHUT); upstream data still flows to the client;
 *   upstream EOF (UP_EOF): close_notify (TLS_SHUT), then once flushed
 *     shutdown(client) (CLIENT_SHUT; timer: linger for the client to close);
 *   both directions over -> close.
 * Failures take the short way: FINISH flushes what is queued for the client
 * (an alert, a close_notify) and closes; a dead client socket closes at
 * once. Every handle is closed with uv_close and the connection is freed in
 * the last close callback. */
#include "conn.h"

#include <limits.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "budget.h"
#include "log.h"
#include "proxy_v2.h"
#include "recbuf.h"
#include "tlsconf.h"

#define CONN_MAGIC 0x434f4e4eu /* "CONN" */

/* After our FIN, how long the client has to close its side. */
#define CONN_LINGER_MS 30000
/* Closing: how long what is queued for the client may take to go out. */
#define CONN_FINISH_MS 5000
/* The client is not read while more than this waits for the upstream. */
#define CONN_UPSTREAM_HIGH (64 * 1024)
/* Room SSL_read needs to return a whole record. */
#define TLS_RECORD_MAX (16 * 1024)
/* The client is not read while more than this waits to be sent to it:
 * above one upstream read's worth of records, so that a download does
 * not stop the client's reads. */
#define CONN_CLIENT_HIGH (WORKER_READ_SIZE + 2 * TLS_RECORD_MAX)
/* TLS 1.3 KeyUpdates a client may send per window; beyond, the
 * connection is closed (each one costs a key derivation, and asks for a
 * KeyUpdate back). Real clients send one every few gigabytes. */
#define CONN_KEY_UPDATE_LIMIT 32
#define CONN_KEY_UPDATE_WINDOW_MS 60000

enum {
  F_HS_DONE = 1u << 0,           /* first handshake complete */
  F_CLIENT_EOF = 1u << 1,        /* no more data from the client (close_notify or EOF) */
  F_CLIENT_GONE = 1u << 2,       /* client socket EOF or error: not read any more */
  F_UP_INIT = 1u << 3,           /* upstream handle initialized (must be closed) */
  F_UP_CONNECTED = 1u << 4,      /* upstream connected */
  F_UP_EOF = 1u << 5,            /* no more data from the upstream */
  F_UP_SHUT = 1u << 6,           /* shutdown(upstream) issued */
  F_UP_SHUT_DONE = 1u << 7,      /* ... and done */
  F_TLS_SHUT = 1u << 8,          /* close_notify queued for the client */
  F_CLIENT_SHUT = 1u << 9,       /* shutdown(client) issued */
  F_CLIENT_SHUT_DONE = 1u << 10, /* ... and done */
  F_FINISH = 1u << 11,           /* flush what is queued for the client, then close */
  F_CLOSING = 1u << 12,          /* handles closing; nothing more happens */
  F_CLIENT_READING = 1u << 13,
  F_UP_READING = 1u << 14,
  F_RENEG_EXCEEDED = 1u << 15,      /* set by the info callback inside SSL_read */
  F_COUNTED = 1u << 16,             /* counted in stats.connections */
  F_KEY_UPDATE_EXCEEDED = 1u << 17, /* set by the message callback inside SSL_read */
  F_UP_TLS_DONE = 1u << 18,         /* upstream_tls: the upstream handshake is complete */
  F_UP_TLS_SHUT = 1u << 19,         /* upstream_tls: close_notify queued for the upstream */
};

/* The writes of one direction: at most one uv_write in flight; what comes
 * meanwhile waits in queued. Both buffers exist only while needed. */
struct wq {
  uv_write_t req;
  char *inflight;      /* the buffer being written; NULL when idle */
  size_t inflight_len; /* its length */
  struct wbuf queued;  /* next, in order */
  uint64_t progress;   /* uv_now when the socket last took bytes, or a write began */
  size_t unsent;       /* of inflight, what libuv had not written when last looked at */
};

struct conn {
  unsigned magic;
  unsigned flags;
  struct worker *w;
  struct listener_version *v; /* reference held: this connection's configuration */
  SSL *ssl;
  /* enc_in: the encrypted bytes being fed to SSL (inside w->rbuf). */
  const char *in_p;
  size_t in_len;
  uv_tcp_t client;
  /* The upstream: TCP, or a Unix socket (v->upstream_path). Used as a
   * uv_stream_t / uv_handle_t through either member. */
  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } upstream;
  uv_timer_t timer; /* handshake timeout, then connect timeout, then linger */
  uv_timer_t watch; /* established: idle_timeout and write_timeout */
  uv_connect_t connect_req;
  uv_shutdown_t client_shut, up_shut;
  struct wq cw; /* to the client: TLS records */
  struct wq uw; /* to the upstream: cleartext */
  /* Upstream cleartext SSL_write could not take yet (WANT_READ while a
   * renegotiation is in progress); the upstream is not read meanwhile. */
  struct wbuf pend;
  /* upstream_tls (tls.connect): the client SSL toward the upstream, NULL
   * for a cleartext upstream. Its memory BIOs: up_in holds what the
   * upstream sent and SSL has not read, up_out what SSL wrote, moved to uw
   * (up_flush) after every SSL call. up_clear: the client's cleartext
   * waiting for the upstream handshake (nothing reaches an upstream that
   * has not been verified) or for SSL_write to take it. */
  SSL *up_ssl;
  BIO *up_in, *up_out;
  struct wbuf up_clear;
  int handles; /* open handles; freed when the last is closed */
  int reneg_count;
  uint64_t reneg_start; /* uv_now at the start of the renegotiation window */
  int key_updates;      /* KeyUpdates received in the current window */
  uint64_t key_update_start;
  uint64_t last_io; /* uv_now of the last read or write, either side */
  union sockaddr_any peer;
  struct conn *prev, *next; /* the worker's list */
};

static struct conn *conn_check(void *p) {
  struct conn *c = p;
  if (c == NULL || c->magic != CONN_MAGIC)
    abort(); /* memory corruption or a foreign pointer: never go on */
  return c;
}

struct conn *conn_next(struct conn *c) {
  return c->next;
}

static void conn_close(struct conn *c);
static void flush_client(struct conn *c);
static void after_io(struct conn *c);

static int wbuf_append(struct wbuf *b, const char *data, size_t len) {
  if (len > b->cap - b->len) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < len)
      cap *= 2;
    char *p = realloc(b->base, cap);
    if (p == NULL)
      return -1;
    b->base = p;
    b->cap = cap;
  }
  memcpy(b->base + b->len, data, len);
  b->len += len;
  return 0;
}

static void wbuf_free(struct wbuf *b) {
  free(b->base);
  *b = (struct wbuf){0};
}

static int wq_idle(const struct wq *q) {
  return q->inflight == NULL && q->queued.len == 0;
}

/* Bytes waiting in q. */
static size_t wq_size(const struct wq *q) {
  return (q->inflight != NULL ? q->inflight_len : 0) + q->queued.len;
}

/* Events and logs --------------------------------------------------------- */

static struct stats *conn_stats(struct conn *c) {
  return &c->v->listener->stats;
}

/* 'clientError': counts cause and logs one line (never secrets: reasons
 * come from OpenSSL's error strings and libuv's). Lines are limited per
 * listener and cause (log_limit): a flood of bad clients never floods the
 * log, and the line written says how many were left out. */
static void client_error(struct conn *c, enum stats_cause cause, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void client_error(struct conn *c, enum stats_cause cause, const char *fmt, ...) {
  struct stats *st = conn_stats(c);
  stats_add(&st->client_errors[cause], 1);
  unsigned long long suppressed;
  if (!log_limit_allow(&st->client_error_log[cause], uv_now(&c->w->loop), &suppressed))
    return;
  char reason[256], quoted[512], peer[64], more[48] = "";
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof(reason), fmt, ap);
  va_end(ap);
  size_t j = 0;
  for (size_t i = 0; reason[i] != '\0' && j + 2 < sizeof(quoted); i++) {
    char ch = reason[i];
    if (ch == '"' || ch == '\\')
      quoted[j++] = '\\';
    quoted[j++] = (ch == '\n' || ch == '\r') ? ' ' : ch;
  }
  quoted[j] = '\0';
  listener_addr_format(&c->peer, peer, sizeof(peer));
  if (suppressed > 0)
    snprintf(more, sizeof(more), " suppressed=%llu", suppressed);
  log_info("agent", "listener=%s client=%s cause=%s reason=\"%s\"%s", c->v->listener->name, peer,
           stats_cause_name(cause), quoted, more);
}

/* Empties this thread's OpenSSL error queue, which must be empty before
 * each SSL call (SSL_get_error reads it). ERR_clear_error walks every slot
 * of the queue, about 840 instructions in OpenSSL 3.0 even when it is
 * empty, as it nearly always is: twice per keep-alive request that was 9 %
 * of the request. ERR_peek_error sees exactly what SSL_get_error sees. */
static void err_reset(void) {
  if (ERR_peek_error() != 0)
    ERR_clear_error();
}

/* The first OpenSSL error of this thread's queue as text; drains the queue
 * (it must be empty before the next SSL call: SSL_get_error reads it). */
static void ssl_reason(int ssl_error, char *buf, size_t len) {
  unsigned long code = ERR_peek_error();
  if (code != 0) {
    const char *r = ERR_reason_error_string(code);
    if (r != NULL)
      snprintf(buf, len, "%s", r);
    else
      ERR_error_string_n(code, buf, len);
  } else {
    snprintf(buf, len, "TLS error %d", ssl_error);
  }
  err_reset();
}

/* The BIO ------------------------------------------------------------------ */

static int bio_write(BIO *b, const char *data, int len) {
  struct conn *c = conn_check(BIO_get_data(b));
  struct worker *w = c->w;
  BIO_clear_retry_flags(b);
  if (len <= 0)
    return 0;
  /* The worker's buffer when this connection may use it (nothing of its
   * own waits before), else behind what waits: order is kept. Counted in
   * bytes_out once the socket takes them (wq_delivered), not here. */
  int rc;
  if (wq_idle(&c->cw) && (w->out.len == 0 || w->out_conn == c)) {
    rc = wbuf_append(&w->out, data, (size_t)len);
    w->out_conn = c;
  } else {
    rc = wbuf_append(&c->cw.queued, data, (size_t)len);
  }
  return rc == 0 ? len : -1;
}

static int bio_read(BIO *b, char *out, int len) {
  struct conn *c = conn_check(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  if (c->in_len == 0) {
    BIO_set_retry_read(b);
    return -1;
  }
  size_t n = c->in_len < (size_t)len ? c->in_len : (size_t)len;
  memcpy(out, c->in_p, n);
  c->in_p += n;
  c->in_len -= n;
  return (int)n;
}

/* OpenSSL asks 13 times per keep-alive request, mostly whether the BIO
 * does kernel TLS: only PENDING needs the connection. */
static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  switch (cmd) {
  case BIO_CTRL_FLUSH:
    return 1;
  case BIO_CTRL_PENDING: {
    struct conn *c = BIO_get_data(b);
    return c != NULL ? (long)conn_check(c)->in_len : 0;
  }
  default:
    return 0;
  }
}

static int bio_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

/* The BIO method: made once per process, immutable afterwards. */
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;
static BIO_METHOD *bio_meth;

static void bio_meth_init(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tlsplane conn");
  if (m == NULL || !BIO_meth_set_write(m, bio_write) || !BIO_meth_set_read(m, bio_read) ||
      !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create)) {
    BIO_meth_free(m);
    return;
  }
  bio_meth = m;
}

/* Writes ------------------------------------------------------------------- */

static void watch_arm(struct conn *c);

/* The socket of q took n bytes: that side makes progress; bytes_out
 * counts what the client's socket took. */
static void wq_delivered(struct conn *c, struct wq *q, size_t n) {
  q->progress = c->last_io = uv_now(&c->w->loop);
  if (q == &c->cw)
    stats_add(&conn_stats(c)->bytes_out, (long long)n);
}

/* Starts the uv_write of what is queued, unless one is in flight. */
static int wq_start(struct conn *c, struct wq *q, uv_stream_t *s, uv_write_cb cb) {
  if (q->inflight != NULL || q->queued.len == 0)
    return 0;
  uv_buf_t b = uv_buf_init(q->queued.base, (unsigned)q->queued.len);
  q->inflight = q->queued.base;
  q->inflight_len = q->queued.len;
  q->queued = (struct wbuf){0};
  q->req.data = c;
  q->progress = uv_now(&c->w->loop); /* the write-stall clock starts */
  q->unsent = q->inflight_len;
  int rc = uv_write(&q->req, s, &b, 1, cb);
  if (rc != 0) {
    free(q->inflight);
    q->inflight = NULL;
    return rc;
  }
  watch_arm(c);
  return 0;
}

/* Sends what waited in q->queued (the upstream's, during its connect):
 * what the socket takes at once needs no write request and leaves no
 * write in flight, so the client is not paused for it (update_reading),
 * which would cost two epoll_ctl calls to resume. */
static int wq_flush(struct conn *c, struct wq *q, uv_stream_t *s, uv_write_cb cb) {
  if (q->inflight != NULL || q->queued.len == 0)
    return 0;
  uv_buf_t b = uv_buf_init(q->queued.base, (unsigned)q->queued.len);
  int n = uv_try_write(s, &b, 1);
  if (n < 0 && n != UV_EAGAIN)
    return n;
  if (n > 0) {
    wq_delivered(c, q, (size_t)n);
    q->queued.len -= (size_t)n;
    memmove(q->queued.base, q->queued.base + n, q->queued.len);
  }
  if (q->queued.len == 0) {
    wbuf_free(&q->queued);
    return 0;
  }
  return wq_start(c, q, s, cb);
}

/* Sends data now if the socket takes it (uv_try_write), else queues a copy
 * of the rest. Returns 0 or a negative uv error. */
static int wq_write(struct conn *c, struct wq *q, uv_stream_t *s, const char *data, size_t len,
                    uv_write_cb cb) {
  if (!wq_idle(q))
    return wbuf_append(&q->queued, data, len) == 0 ? 0 : UV_ENOMEM;
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
  int n = uv_try_write(s, &b, 1);
  if (n > 0)
    wq_delivered(c, q, (size_t)n);
  if (n == (int)len)
    return 0;
  if (n < 0 && n != UV_EAGAIN)
    return n;
  if (n < 0)
    n = 0;
  if (wbuf_append(&q->queued, data + n, len - (size_t)n) != 0)
    return UV_ENOMEM;
  return wq_start(c, q, s, cb);
}

static void on_client_write(uv_write_t *req, int status) {
  struct conn *c = conn_check(req->data);
  free(c->cw.inflight);
  c->cw.inflight = NULL;
  if (status == 0)
    wq_delivered(c, &c->cw, c->cw.inflight_len);
  if (status == UV_ECANCELED || (c->flags & F_CLOSING))
    return;
  if (status < 0 || wq_start(c, &c->cw, (uv_stream_t *)&c->client, on_client_write) != 0) {
    conn_close(c); /* the client is gone: nothing more can reach it */
    return;
  }
  after_io(c);
}

/* Sends what SSL produced for this connection during the current callback. */
static void flush_client(struct conn *c) {
  struct worker *w = c->w;
  if (w->out_conn == c) {
    size_t len = w->out.len;
    w->out.len = 0;
    w->out_conn = NULL;
    if (len > 0 && !(c->flags & F_CLOSING)) {
      if (wq_write(c, &c->cw, (uv_stream_t *)&c->client, w->out.base, len, on_client_write) != 0) {
        conn_close(c);
        return;
      }
    }
  }
  if (!(c->flags & F_CLOSING) && c->cw.inflight == NULL && c->cw.queued.len > 0) {
    if (wq_start(c, &c->cw, (uv_stream_t *)&c->client, on_client_write) != 0)
      conn_close(c);
  }
}

static void on_close_timeout(uv_timer_t *t) {
  conn_close(conn_check(t->data));
}

/* Closes both sides after what is queued for the client is out. notify:
 * end the TLS session with close_notify first. */
static void finish(struct conn *c, int notify) {
  if (c->flags & (F_CLOSING | F_FINISH))
    return;
  c->flags |= F_FINISH;
  uv_timer_start(&c->timer, on_close_timeout, CONN_FINISH_MS, 0);
  if (notify && (c->flags & F_HS_DONE) && !(c->flags & F_TLS_SHUT)) {
    c->flags |= F_TLS_SHUT;
    if (SSL_shutdown(c->ssl) < 0)
      err_reset();
  }
  flush_client(c);
  after_io(c);
}

static void on_up_write(uv_write_t *req, int status) {
  struct conn *c = conn_check(req->data);
  free(c->uw.inflight);
  c->uw.inflight = NULL;
  if (status == 0)
    wq_delivered(c, &c->uw, c->uw.inflight_len);
  if (status == UV_ECANCELED || (c->flags & F_CLOSING))
    return;
  if (status < 0 || wq_start(c, &c->uw, (uv_stream_t *)&c->upstream, on_up_write) != 0) {
    finish(c, 0); /* the upstream is gone: end without close_notify */
    return;
  }
  after_io(c);
}

static void up_tls_failed(struct conn *c, int ssl_error);
static int up_session_keep(struct conn *c, SSL_SESSION *sess);
static void refused(struct worker *w, const struct listener *l, const union sockaddr_any *peer,
                    enum budget_refusal why);

/* Moves what the upstream SSL wrote to the upstream's queue (sent at
 * once when connected; after any PROXY header otherwise). */
static void up_flush(struct conn *c) {
  char *p = NULL;
  long n = BIO_get_mem_data(c->up_out, &p);
  if (n <= 0 || (c->flags & (F_CLOSING | F_FINISH)))
    return;
  int rc = (c->flags & F_UP_CONNECTED)
               ? wq_write(c, &c->uw, (uv_stream_t *)&c->upstream, p, (size_t)n, on_up_write)
               : (wbuf_append(&c->uw.queued, p, (size_t)n) == 0 ? 0 : UV_ENOMEM);
  (void)BIO_reset(c->up_out);
  if (rc != 0)
    finish(c, 0);
}

/* Encrypts client cleartext for the upstream; what SSL_write cannot take
 * yet (WANT_READ: the upstream is renegotiating) waits in up_clear. */
static void up_tls_write(struct conn *c, const char *data, size_t len) {
  size_t done = 0;
  err_reset();
  while (done < len && c->up_clear.len == 0) {
    size_t chunk = len - done > INT_MAX ? INT_MAX : len - done;
    recbuf_hot(1);
    int r = SSL_write(c->up_ssl, data + done, (int)chunk);
    recbuf_hot(0);
    if (r > 0) {
      done += (size_t)r;
      continue;
    }
    int e = SSL_get_error(c->up_ssl, r);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
      up_tls_failed(c, e);
      return;
    }
    break;
  }
  if (done < len && wbuf_append(&c->up_clear, data + done, len - done) != 0) {
    finish(c, 0);
    return;
  }
  up_flush(c);
}

/* Retries the cleartext that waited in up_clear. */
static void up_tls_write_pending(struct conn *c) {
  struct wbuf b = c->up_clear;
  c->up_clear = (struct wbuf){0};
  up_tls_write(c, b.base, b.len);
  wbuf_free(&b);
}

/* Cleartext from the client, to the upstream (queued until connected). */
static void up_send(struct conn *c, const char *data, size_t len) {
  if (len == 0 || (c->flags & (F_CLOSING | F_FINISH | F_UP_SHUT)))
    return;
  if (c->up_ssl != NULL) {
    if (!(c->flags & F_UP_TLS_DONE) || c->up_clear.len > 0) {
      if (wbuf_append(&c->up_clear, data, len) != 0)
        finish(c, 0);
    } else {
      up_tls_write(c, data, len);
    }
    return;
  }
  int rc;
  if (!(c->flags & F_UP_CONNECTED))
    rc = wbuf_append(&c->uw.queued, data, len) == 0 ? 0 : UV_ENOMEM;
  else
    rc = wq_write(c, &c->uw, (uv_stream_t *)&c->upstream, data, len, on_up_write);
  if (rc != 0)
    finish(c, 0);
}

/* TLS ---------------------------------------------------------------------- */

static void tls_failed(struct conn *c, enum stats_cause cause, int ssl_error) {
  char reason[200];
  ssl_reason(ssl_error, reason, sizeof(reason));
  client_error(c, cause, "%s", reason);
  finish(c, 0); /* OpenSSL queued its alert: it goes out first */
}

/* Encrypts cleartext for the client. Returns how much SSL took: less than
 * len only when it waits on the client (a renegotiation in progress). */
static size_t tls_write(struct conn *c, const char *p, size_t len) {
  size_t done = 0;
  while (done < len && !(c->flags & (F_CLOSING | F_FINISH))) {
    size_t chunk = len - done > INT_MAX ? INT_MAX : len - done;
    recbuf_hot(1);
    int r = SSL_write(c->ssl, p + done, (int)chunk);
    recbuf_hot(0);
    if (r > 0) {
      done += (size_t)r;
      continue;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
      return done;
    tls_failed(c, CAUSE_TLS_ERROR, e);
    return len;
  }
  return len;
}

/* Cleartext from the upstream (in the worker's read buffer). */
static void clear_out(struct conn *c, const char *p, size_t len) {
  err_reset();
  size_t done = tls_write(c, p, len);
  if (done < len && wbuf_append(&c->pend, p + done, len - done) != 0)
    finish(c, 0);
}

/* Retries what SSL_write could not take before. */
static void clear_out_pending(struct conn *c) {
  size_t done = tls_write(c, c->pend.base, c->pend.len);
  if (done == c->pend.len) {
    wbuf_free(&c->pend);
  } else if (done > 0) {
    memmove(c->pend.base, c->pend.base + done, c->pend.len - done);
    c->pend.len -= done;
  }
}

/* Decrypts everything enc_in holds and sends it upstream. */
static void clear_in(struct conn *c) {
  struct worker *w = c->w;
  size_t n = 0;
  for (;;) {
    if (w->clear_cap - n < TLS_RECORD_MAX) {
      up_send(c, w->clear, n);
      n = 0;
      if (c->flags & (F_CLOSING | F_FINISH))
        return;
    }
    recbuf_hot(1);
    int r = SSL_read(c->ssl, w->clear + n, (int)(w->clear_cap - n));
    recbuf_hot(0);
    if (r > 0) {
      n += (size_t)r;
      /* enc_in is empty and OpenSSL holds neither cleartext nor record
       * bytes: another SSL_read could only find nothing and say
       * WANT_READ, after setting up and releasing a record buffer; one
       * keep-alive request paid about 1,000 instructions for it. */
      if (c->in_len == 0 && !SSL_has_pending(c->ssl))
        break;
      continue;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
      break;
    up_send(c, w->clear, n); /* authentic data before the end goes on */
    if (e == SSL_ERROR_ZERO_RETURN) {
      c->flags |= F_CLIENT_EOF; /* close_notify: a half-close */
      return;
    }
    tls_failed(c, CAUSE_TLS_ERROR, e);
    return;
  }
  up_send(c, w->clear, n);
  if ((c->flags & F_RENEG_EXCEEDED) && !(c->flags & (F_CLOSING | F_FINISH))) {
    client_error(c, CAUSE_RENEGOTIATION_LIMIT, "more than %d renegotiations in %llu s",
                 c->v->renegotiation_limit,
                 (unsigned long long)(c->v->renegotiation_window_ms / 1000));
    finish(c, 0);
  }
  if ((c->flags & F_KEY_UPDATE_EXCEEDED) && !(c->flags & (F_CLOSING | F_FINISH))) {
    client_error(c, CAUSE_KEY_UPDATE_LIMIT, "more than %d KeyUpdates in %d s",
                 CONN_KEY_UPDATE_LIMIT, CONN_KEY_UPDATE_WINDOW_MS / 1000);
    finish(c, 0);
  }
}

/* Counts client-initiated renegotiations (TLS 1.2 and older: a handshake
 * starting after the first one finished) in a window; over the limit the
 * connection is closed once SSL_read returns (not from inside OpenSSL).
 * With limit 0 OpenSSL itself refuses them (tlsconf_listener_ssl_new). */
static void info_cb(const SSL *ssl, int where, int ret) {
  if (!(where & SSL_CB_HANDSHAKE_START))
    return;
  struct conn *c = conn_check(SSL_get_app_data(ssl));
  if (!(c->flags & F_HS_DONE) || SSL_version(ssl) >= TLS1_3_VERSION ||
      c->v->renegotiation_limit <= 0)
    return;
  uint64_t now = uv_now(&c->w->loop);
  if (c->reneg_count == 0 || now - c->reneg_start >= c->v->renegotiation_window_ms) {
    c->reneg_start = now;
    c->reneg_count = 0;
  }
  if (++c->reneg_count > c->v->renegotiation_limit)
    c->flags |= F_RENEG_EXCEEDED;
}

/* Counts the KeyUpdates the client sends (TLS 1.3; OpenSSL 3.0 has no
 * counter of its own): past CONN_KEY_UPDATE_LIMIT in a window, the rest of
 * this read is not given to OpenSSL (enc_in emptied) and the connection
 * is closed once SSL_read returns. */
static void msg_cb(int write_p, int version, int content_type, const void *buf, size_t len,
                   SSL *ssl, void *arg) {
  if (write_p || content_type != SSL3_RT_HANDSHAKE || len < 1 ||
      ((const unsigned char *)buf)[0] != SSL3_MT_KEY_UPDATE)
    return;
  struct conn *c = conn_check(SSL_get_app_data(ssl));
  uint64_t now = uv_now(&c->w->loop);
  if (c->key_updates == 0 || now - c->key_update_start >= CONN_KEY_UPDATE_WINDOW_MS) {
    c->key_update_start = now;
    c->key_updates = 0;
  }
  if (++c->key_updates > CONN_KEY_UPDATE_LIMIT) {
    c->flags |= F_KEY_UPDATE_EXCEEDED;
    c->in_len = 0;
  }
}

/* The upstream ------------------------------------------------------------- */

static void upstream_connect_failed(struct conn *c, int status) {
  client_error(c, CAUSE_UPSTREAM_CONNECT, "%s: %s", c->v->upstream, uv_strerror(status));
  finish(c, 1);
}

static void on_connect_timeout(uv_timer_t *t) {
  struct conn *c = conn_check(t->data);
  upstream_connect_failed(c, UV_ETIMEDOUT);
}

/* The upstream handshake failed (or its connection ended before it was
 * done): counted by cause, the client's connection closed without
 * close_notify and without a word of why (the reason is the agent's log
 * line, never the client's). */
static void up_tls_failed(struct conn *c, int ssl_error) {
  /* Without reject_unauthorized OpenSSL records a verify result all the
   * same, and goes on: only a verifying SSL fails for it. */
  long v = SSL_get_verify_result(c->up_ssl);
  if (v != X509_V_OK && (SSL_get_verify_mode(c->up_ssl) & SSL_VERIFY_PEER) &&
      !(c->flags & F_UP_TLS_DONE)) {
    err_reset();
    client_error(c, CAUSE_UPSTREAM_VERIFY, "%s: %s", c->v->upstream,
                 X509_verify_cert_error_string(v));
  } else {
    char reason[200];
    ssl_reason(ssl_error, reason, sizeof(reason));
    client_error(c, CAUSE_UPSTREAM_TLS_HANDSHAKE, "%s: %s", c->v->upstream, reason);
  }
  finish(c, 0);
}

static void on_up_tls_timeout(uv_timer_t *t) {
  struct conn *c = conn_check(t->data);
  client_error(c, CAUSE_UPSTREAM_TLS_HANDSHAKE, "%s: no TLS handshake within %d ms", c->v->upstream,
               LISTENER_UPSTREAM_CONNECT_TIMEOUT_MS);
  finish(c, 0);
}

/* Drives the upstream handshake; once done, the client's cleartext that
 * waited goes out, and the session is kept for this worker's next
 * upstream connection. */
static void up_handshake(struct conn *c) {
  err_reset();
  int r = SSL_do_handshake(c->up_ssl);
  if (r != 1) {
    int e = SSL_get_error(c->up_ssl, r);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
      up_tls_failed(c, e);
    else
      up_flush(c);
    return;
  }
  char why[128];
  if (tlsconf_listener_upstream_check(c->v->tls, c->up_ssl, why, sizeof(why)) != 0) {
    client_error(c, CAUSE_UPSTREAM_TLS_HANDSHAKE, "%s: %s", c->v->upstream, why);
    finish(c, 0);
    return;
  }
  c->flags |= F_UP_TLS_DONE;
  if (!(c->flags & F_FINISH)) /* else the timer is the finish timer: it stays */
    uv_timer_stop(&c->timer);
  struct stats *st = conn_stats(c);
  stats_add(&st->up_handshakes, 1);
  if (SSL_session_reused(c->up_ssl)) {
    stats_add(&st->up_resumptions, 1);
    /* TLS 1.2: the session resumed can resume again (a TLS 1.3 ticket
     * used is no longer resumable, and up_session_keep leaves it). */
    SSL_SESSION *again = SSL_get1_session(c->up_ssl);
    if (again != NULL && !up_session_keep(c, again))
      SSL_SESSION_free(again);
  }
  up_flush(c);
  if (c->up_clear.len > 0 && !(c->flags & (F_CLOSING | F_FINISH)))
    up_tls_write_pending(c);
}

/* This worker's row of kept upstream sessions, allocated on first use
 * when create is set; NULL without upstream_tls or memory. */
static struct listener_up_sessions *up_sessions_row(struct conn *c, int create) {
  int id = c->w->id;
  if (id < 0 || id >= LISTENER_MAX_WORKERS || c->v->up_sessions == NULL)
    return NULL;
  if (c->v->up_sessions[id] == NULL && create)
    c->v->up_sessions[id] = calloc(1, sizeof(*c->v->up_sessions[id]));
  return c->v->up_sessions[id];
}

/* Keeps sess (a reference the caller gives) for this worker's next
 * upstream connections if it can resume and its ticket is not too long;
 * a session already kept is not kept twice; the oldest goes when full. Returns whether it was kept
 * (otherwise the caller still holds its reference). */
static int up_session_keep(struct conn *c, SSL_SESSION *sess) {
  if (sess == NULL || !SSL_SESSION_is_resumable(sess))
    return 0;
  const unsigned char *tick;
  size_t tick_len;
  SSL_SESSION_get0_ticket(sess, &tick, &tick_len);
  if (tick_len > LISTENER_UP_TICKET_MAX)
    return 0;
  struct listener_up_sessions *row = up_sessions_row(c, 1);
  if (row == NULL)
    return 0;
  for (unsigned i = 0; i < row->n; i++)
    if (row->kept[i] == sess)
      return 0;
  if (row->n == LISTENER_UP_SESSIONS) {
    SSL_SESSION_free(row->kept[0]);
    memmove(row->kept, row->kept + 1, (LISTENER_UP_SESSIONS - 1) * sizeof(*row->kept));
    row->n--;
  }
  row->kept[row->n++] = sess;
  return 1;
}

/* Each new session of the upstream (a TLS 1.2 handshake's, each TLS 1.3
 * NewSessionTicket), from OpenSSL inside SSL_do_handshake / SSL_read. */
static int up_new_session(void *data, SSL_SESSION *sess) {
  return up_session_keep(conn_check(data), sess);
}

/* Decrypts what the upstream sent (in up_in) and passes it to the client. */
static void up_tls_read(struct conn *c) {
  struct worker *w = c->w;
  if (!(c->flags & F_UP_TLS_DONE)) {
    up_handshake(c);
    if (!(c->flags & F_UP_TLS_DONE) || (c->flags & (F_CLOSING | F_FINISH)))
      return;
  }
  for (;;) {
    err_reset();
    recbuf_hot(1);
    int r = SSL_read(c->up_ssl, w->clear, (int)w->clear_cap);
    recbuf_hot(0);
    if (r > 0) {
      clear_out(c, w->clear, (size_t)r);
      if (c->flags & (F_CLOSING | F_FINISH))
        return;
      continue;
    }
    int e = SSL_get_error(c->up_ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
      break;
    if (e == SSL_ERROR_ZERO_RETURN) {
      c->flags |= F_UP_EOF; /* close_notify from the upstream */
      break;
    }
    up_tls_failed(c, e);
    return;
  }
  up_flush(c);
  if (c->up_clear.len > 0 && !(c->flags & (F_CLOSING | F_FINISH)))
    up_tls_write_pending(c);
}

/* upstream_tls: the SSL toward the upstream and its memory BIOs, with
 * this worker's session from the last upstream handshake offered. */
static int up_tls_init(struct conn *c) {
  c->up_ssl = tlsconf_listener_upstream_ssl_new(c->v->tls, c->ssl);
  c->up_in = BIO_new(BIO_s_mem());
  c->up_out = BIO_new(BIO_s_mem());
  if (c->up_ssl == NULL || c->up_in == NULL || c->up_out == NULL) {
    BIO_free(c->up_in);
    BIO_free(c->up_out);
    c->up_in = c->up_out = NULL;
    err_reset();
    return -1;
  }
  /* An empty mem BIO reads as "retry", not as EOF. */
  BIO_set_mem_eof_return(c->up_in, -1);
  SSL_set_bio(c->up_ssl, c->up_in, c->up_out); /* taken by up_ssl */
  SSL_set_app_data(c->up_ssl, c);
  if (tlsconf_ssl_session_cb_set(c->up_ssl, up_new_session, c) != 0) {
    SSL_free(c->up_ssl);
    c->up_ssl = NULL;
    return -1;
  }
  SSL_set_mode(c->up_ssl, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  /* The newest session this worker kept for the same SNI, taken:
   * offered once. The SNI is the only part of the name checked that
   * varies by connection (servername_from_client), and a resumed session
   * is not verified again: a session verified for one name must never
   * resume for another. */
  const char *sni = SSL_get_servername(c->up_ssl, TLSEXT_NAMETYPE_host_name);
  struct listener_up_sessions *row = up_sessions_row(c, 0);
  for (int i = row != NULL ? (int)row->n - 1 : -1; i >= 0; i--) {
    const char *h = SSL_SESSION_get0_hostname(row->kept[i]);
    if ((h == NULL) != (sni == NULL) || (h != NULL && strcmp(h, sni) != 0))
      continue;
    SSL_SESSION *sess = row->kept[i];
    memmove(row->kept + i, row->kept + i + 1, (size_t)(row->n - i - 1) * sizeof(*row->kept));
    row->n--;
    (void)SSL_set_session(c->up_ssl, sess); /* takes its own reference */
    SSL_SESSION_free(sess);
    break;
  }
  err_reset();
  return 0;
}

static void on_up_connect(uv_connect_t *req, int status) {
  struct conn *c = conn_check(req->data);
  if (status == UV_ECANCELED || (c->flags & F_CLOSING))
    return;
  if (c->flags & F_FINISH) {
    /* Closing while connecting: c->timer is the finish timer now, and it
     * stays, since a client that does not drain leaves nothing else to
     * close the connection. The upstream has no use any more. */
    after_io(c);
    return;
  }
  uv_timer_stop(&c->timer);
  if (status < 0) {
    upstream_connect_failed(c, status);
    return;
  }
  c->flags |= F_UP_CONNECTED;
  if (c->v->upstream_path == NULL)
    (void)uv_tcp_nodelay(&c->upstream.tcp, 1);
  if (wq_flush(c, &c->uw, (uv_stream_t *)&c->upstream, on_up_write) != 0) {
    finish(c, 0);
    return;
  }
  if (c->up_ssl != NULL) {
    uv_timer_start(&c->timer, on_up_tls_timeout, LISTENER_UPSTREAM_CONNECT_TIMEOUT_MS, 0);
    up_handshake(c); /* the ClientHello, after any PROXY header */
    if (c->flags & F_CLOSING)
      return;
  }
  after_io(c);
}

static void up_connect(struct conn *c) {
  int rc = c->v->upstream_path != NULL ? uv_pipe_init(&c->w->loop, &c->upstream.pipe, 0)
                                       : uv_tcp_init(&c->w->loop, &c->upstream.tcp);
  if (rc != 0) {
    upstream_connect_failed(c, rc);
    return;
  }
  c->upstream.tcp.data = c; /* the same field in both members */
  c->flags |= F_UP_INIT;
  c->handles++;
  if (tlsconf_listener_upstream_tls(c->v->tls) && up_tls_init(c) != 0) {
    refused(c->w, c->v->listener, &c->peer, REFUSED_OUT_OF_MEMORY);
    finish(c, 0);
    return;
  }
  c->connect_req.data = c;
  if (c->v->upstream_path != NULL)
    uv_pipe_connect(&c->connect_req, &c->upstream.pipe, c->v->upstream_path,
                    on_up_connect); /* errors come to the callback */
  else
    rc = uv_tcp_connect(&c->connect_req, &c->upstream.tcp, &c->v->upstream_addr.sa, on_up_connect);
  if (rc != 0) {
    upstream_connect_failed(c, rc);
    return;
  }
  uv_timer_start(&c->timer, on_connect_timeout, LISTENER_UPSTREAM_CONNECT_TIMEOUT_MS, 0);
}

/* The PROXY protocol v2 header, first on the upstream connection. */
static void proxy_header(struct conn *c, const struct tlsconf_conn_info *info) {
  union sockaddr_any local;
  int len = sizeof(local);
  struct proxy_v2_info pi = {0};
  if (c->peer.sa.sa_family != AF_UNSPEC && uv_tcp_getsockname(&c->client, &local.sa, &len) == 0) {
    pi.src = &c->peer.sa;
    pi.dst = &local.sa;
  }
  pi.alpn = info->protocol;
  pi.authority = info->servername;
  pi.ssl = 1;
  pi.version = info->version;
  pi.cipher = info->cipher;
  pi.cn = info->peer_cn[0] != '\0' ? info->peer_cn : NULL;
  pi.cert_sess = info->has_peer_cert;
  pi.cert_conn = info->has_peer_cert && !info->resumed;
  pi.verify_result = info->verify_result;
  uint8_t hdr[PROXY_V2_MAX];
  int n = proxy_v2_build(&pi, hdr, sizeof(hdr));
  if (n < 0 || wbuf_append(&c->uw.queued, (const char *)hdr, (size_t)n) != 0)
    finish(c, 0);
}

/* An ACME tls-alpn-01 validation (RFC 8737) got its challenge
 * certificate: counted, logged (the name, never the key; limited as
 * client errors are), and closed with close_notify. It never reaches the
 * upstream: the validation is the handshake itself. */
static void acme_answered(struct conn *c, const char *host) {
  struct stats *st = conn_stats(c);
  stats_add(&st->acme_challenges, 1);
  unsigned long long suppressed;
  if (log_limit_allow(&st->acme_log, uv_now(&c->w->loop), &suppressed)) {
    char peer[64], more[48] = "";
    listener_addr_format(&c->peer, peer, sizeof(peer));
    if (suppressed > 0)
      snprintf(more, sizeof(more), " suppressed=%llu", suppressed);
    log_info("agent", "listener=%s client=%s acme_challenge=%s answered%s", c->v->listener->name,
             peer, host, more);
  }
  finish(c, 1);
}

/* 'secureConnection'. */
static void handshake_done(struct conn *c) {
  struct stats *st = conn_stats(c);
  c->flags |= F_HS_DONE;
  uv_timer_stop(&c->timer);
  c->last_io = uv_now(&c->w->loop);
  watch_arm(c);
  struct tlsconf_conn_info info;
  tlsconf_conn_info(c->ssl, &info);
  stats_add(&st->handshakes, 1);
  stats_add(info.resumed ? &st->resumptions : &st->new_sessions, 1);
  if (info.ocsp_requested)
    stats_add(&st->ocsp_requests, 1);
  if (info.ocsp_stapled)
    stats_add(&st->ocsp_staples, 1);
  const char *acme_host;
  if (tlsconf_ssl_acme(c->ssl, &acme_host) == TLSCONF_ACME_ANSWERED) {
    acme_answered(c, acme_host);
    return;
  }
  if (c->v->proxy_protocol)
    proxy_header(c, &info);
  if (!(c->flags & F_FINISH))
    up_connect(c);
}

/* Runs SSL over what enc_in holds: the handshake, then application data,
 * then any cleartext that was waiting for the client. */
static void tls_cycle(struct conn *c) {
  err_reset(); /* SSL_get_error reads this thread's queue */
  if (!(c->flags & F_HS_DONE)) {
    int r = SSL_do_handshake(c->ssl);
    if (r != 1) {
      int e = SSL_get_error(c->ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return;
      if (tlsconf_ssl_acme(c->ssl, NULL) == TLSCONF_ACME_REFUSED) {
        ERR_clear_error();
        client_error(c, CAUSE_ACME_NO_CHALLENGE,
                     "ALPN acme-tls/1 for a name with no ACME challenge on this listener");
        finish(c, 0); /* the no_application_protocol alert goes out first */
      } else {
        tls_failed(c, CAUSE_HANDSHAKE_FAILED, e);
      }
      return;
    }
    handshake_done(c);
    if (c->flags & (F_CLOSING | F_FINISH))
      return;
  }
  clear_in(c);
  if (c->pend.len > 0 && !(c->flags & (F_CLOSING | F_FINISH)))
    clear_out_pending(c);
}

/* Reading, the state machine ------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  struct conn *c = conn_check(h->data);
  *buf = uv_buf_init(c->w->rbuf, WORKER_READ_SIZE);
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* Starts or stops reading each side (see "Backpressure" above). */
static void update_reading(struct conn *c) {
  if (c->flags & F_CLOSING)
    return;
  int client = !(c->flags & (F_CLIENT_GONE | F_FINISH)) &&
               ((c->flags & F_CLIENT_EOF) ||
                (c->uw.inflight == NULL && c->uw.queued.len < CONN_UPSTREAM_HIGH &&
                 c->up_clear.len < CONN_UPSTREAM_HIGH && wq_size(&c->cw) < CONN_CLIENT_HIGH));
  if (client && !(c->flags & F_CLIENT_READING)) {
    if (uv_read_start((uv_stream_t *)&c->client, on_alloc, on_client_read) == 0)
      c->flags |= F_CLIENT_READING;
  } else if (!client && (c->flags & F_CLIENT_READING)) {
    uv_read_stop((uv_stream_t *)&c->client);
    c->flags &= ~F_CLIENT_READING;
  }
  int up = (c->flags & F_UP_CONNECTED) && !(c->flags & (F_UP_EOF | F_FINISH | F_TLS_SHUT)) &&
           wq_idle(&c->cw) && c->pend.len == 0;
  if (up && !(c->flags & F_UP_READING)) {
    if (uv_read_start((uv_stream_t *)&c->upstream, on_alloc, on_up_read) == 0)
      c->flags |= F_UP_READING;
  } else if (!up && (c->flags & F_UP_READING)) {
    uv_read_stop((uv_stream_t *)&c->upstream);
    c->flags &= ~F_UP_READING;
  }
}

static void on_up_shutdown(uv_shutdown_t *req, int status) {
  struct conn *c = conn_check(req->data);
  if (status == UV_ECANCELED || (c->flags & F_CLOSING))
    return;
  c->flags |= F_UP_SHUT_DONE;
  after_io(c);
}

static void on_client_shutdown(uv_shutdown_t *req, int status) {
  struct conn *c = conn_check(req->data);
  if (status == UV_ECANCELED || (c->flags & F_CLOSING))
    return;
  c->flags |= F_CLIENT_SHUT_DONE;
  after_io(c);
}

/* Both directions are over and everything is out, close_notify sent both
 * ways: close(2) sends each peer its FIN after what it already has, so a
 * shutdown(2) of either side first would only cost a syscall and a loop
 * iteration (and fails with ENOTCONN on a client that has gone). */
static int all_over(const struct conn *c) {
  return (c->flags & F_CLIENT_EOF) && (c->flags & F_UP_EOF) && (c->flags & F_TLS_SHUT) &&
         c->up_ssl == NULL && wq_idle(&c->cw) && wq_idle(&c->uw) && c->pend.len == 0 &&
         c->up_clear.len == 0;
}

/* Moves the half-closes on; closes when both directions are over. */
static void progress(struct conn *c) {
  if (c->flags & F_FINISH) {
    if (wq_idle(&c->cw))
      conn_close(c);
    return;
  }
  if (all_over(c)) {
    conn_close(c);
    return;
  }
  /* Client to upstream is over, TLS upstream: close_notify first, once
   * everything the client sent is encrypted. */
  if (c->up_ssl != NULL && (c->flags & F_CLIENT_EOF) && (c->flags & F_UP_TLS_DONE) &&
      !(c->flags & F_UP_TLS_SHUT) && c->up_clear.len == 0) {
    c->flags |= F_UP_TLS_SHUT;
    if (SSL_shutdown(c->up_ssl) < 0)
      err_reset();
    up_flush(c);
    if (c->flags & (F_CLOSING | F_FINISH))
      return;
  }
  /* Client to upstream is over: FIN to the upstream once its queue is out. */
  if ((c->flags & F_CLIENT_EOF) && (c->up_ssl == NULL || (c->flags & F_UP_TLS_SHUT)) &&
      (c->flags & F_UP_CONNECTED) && !(c->flags & F_UP_SHUT) && wq_idle(&c->uw)) {
    c->flags |= F_UP_SHUT;
    c->up_shut.data = c;
    if (uv_shutdown(&c->up_shut, (uv_stream_t *)&c->upstream, on_up_shutdown) != 0)
      c->flags |= F_UP_SHUT_DONE;
  }
  /* Upstream to client is over: close_notify, then FIN once it is out. */
  if ((c->flags & F_UP_EOF) && !(c->flags & F_TLS_SHUT) && c->pend.len == 0) {
    c->flags |= F_TLS_SHUT;
    if (SSL_shutdown(c->ssl) < 0)
      err_reset();
    flush_client(c);
    if (c->flags & F_CLOSING)
      return;
    if (all_over(c)) {
      conn_close(c);
      return;
    }
  }
  if ((c->flags & F_TLS_SHUT) && !(c->flags & F_CLIENT_SHUT) && wq_idle(&c->cw)) {
    c->flags |= F_CLIENT_SHUT;
    c->client_shut.data = c;
    if (uv_shutdown(&c->client_shut, (uv_stream_t *)&c->client, on_client_shutdown) != 0)
      c->flags |= F_CLIENT_SHUT_DONE;
    uv_timer_start(&c->timer, on_close_timeout, CONN_LINGER_MS, 0);
  }
  if ((c->flags & F_CLIENT_EOF) && (c->flags & F_UP_SHUT_DONE) && (c->flags & F_CLIENT_SHUT_DONE))
    conn_close(c);
}

/* The end of every callback that moved data: send what SSL produced, move
 * the state on, adjust reading. */
static void after_io(struct conn *c) {
  flush_client(c);
  if (c->flags & F_CLOSING)
    return;
  progress(c);
  update_reading(c);
}

static void client_read_end(struct conn *c, ssize_t err) {
  c->flags |= F_CLIENT_GONE;
  if (!(c->flags & F_HS_DONE)) {
    client_error(c, CAUSE_HANDSHAKE_ABORTED, "%s",
                 err == UV_EOF ? "connection closed by the client" : uv_strerror((int)err));
    conn_close(c);
  } else if (err == UV_EOF) {
    c->flags |= F_CLIENT_EOF; /* TCP half-close: the upstream gets a FIN */
  } else {
    conn_close(c); /* reset: nothing more can reach the client */
  }
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct conn *c = conn_check(s->data);
  if (nread == 0)
    return;
  if (nread < 0) {
    uv_read_stop(s);
    c->flags &= ~F_CLIENT_READING;
    client_read_end(c, nread);
  } else {
    c->last_io = uv_now(&c->w->loop);
    stats_add(&conn_stats(c)->bytes_in, nread);
    if ((c->flags & F_CLIENT_SHUT) && !(c->flags & F_FINISH)) /* still talking: keep lingering */
      uv_timer_start(&c->timer, on_close_timeout, CONN_LINGER_MS, 0);
    if (!(c->flags & F_CLIENT_EOF)) {
      c->in_p = buf->base;
      c->in_len = (size_t)nread;
      tls_cycle(c);
      c->in_p = NULL;
      c->in_len = 0;
    }
  }
  if (!(c->flags & F_CLOSING))
    after_io(c);
}

static void on_up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct conn *c = conn_check(s->data);
  if (nread == 0)
    return;
  if (nread < 0) {
    uv_read_stop(s);
    c->flags &= ~F_UP_READING;
    c->flags |= F_UP_EOF;
    if (c->up_ssl != NULL && !(c->flags & F_UP_TLS_DONE)) {
      client_error(c, CAUSE_UPSTREAM_TLS_HANDSHAKE, "%s: %s during the TLS handshake",
                   c->v->upstream, nread == UV_EOF ? "connection closed" : uv_strerror((int)nread));
      finish(c, 0);
    } else if (nread != UV_EOF)
      finish(c, 0); /* reset: the client must not take it for a clean end */
  } else if (c->up_ssl != NULL) {
    c->last_io = uv_now(&c->w->loop);
    if (BIO_write(c->up_in, buf->base, (int)nread) != (int)nread) {
      finish(c, 0);
    } else {
      up_tls_read(c);
    }
  } else {
    c->last_io = uv_now(&c->w->loop);
    clear_out(c, buf->base, (size_t)nread);
  }
  if (!(c->flags & F_CLOSING))
    after_io(c);
}

/* Idle and stalled connections ---------------------------------------------- */

static void on_watch(uv_timer_t *t);

/* Sets the watch timer for the earliest deadline, unless it is set for
 * that or sooner: the idle deadline only moves later as data moves (the
 * timer then finds it has not passed and sets itself again), a stall
 * deadline appears when a write begins. */
static void watch_arm(struct conn *c) {
  if (!(c->flags & F_HS_DONE) || (c->flags & (F_CLOSING | F_FINISH)))
    return;
  uint64_t deadline = UINT64_MAX, wt = c->v->write_timeout_ms;
  if (c->v->idle_timeout_ms > 0)
    deadline = c->last_io + c->v->idle_timeout_ms;
  if (wt > 0 && c->cw.inflight != NULL && c->cw.progress + wt < deadline)
    deadline = c->cw.progress + wt;
  if (wt > 0 && c->uw.inflight != NULL && c->uw.progress + wt < deadline)
    deadline = c->uw.progress + wt;
  if (deadline == UINT64_MAX)
    return;
  uint64_t now = uv_now(&c->w->loop), in = deadline > now ? deadline - now : 0;
  if (uv_is_active((uv_handle_t *)&c->watch) && uv_timer_get_due_in(&c->watch) <= in)
    return;
  uv_timer_start(&c->watch, on_watch, in, 0);
}

/* Whether q's write in flight has moved since last looked at: libuv
 * writes what the socket takes as it can, and counts down what is left. */
static void wq_check_progress(struct conn *c, struct wq *q, uv_stream_t *s, uint64_t now) {
  if (q->inflight == NULL)
    return;
  size_t left = uv_stream_get_write_queue_size(s);
  if (left < q->unsent) {
    q->unsent = left;
    q->progress = c->last_io = now;
  }
}

static void on_watch(uv_timer_t *t) {
  struct conn *c = conn_check(t->data);
  if (c->flags & (F_CLOSING | F_FINISH))
    return;
  uint64_t now = uv_now(&c->w->loop), wt = c->v->write_timeout_ms;
  wq_check_progress(c, &c->cw, (uv_stream_t *)&c->client, now);
  if (c->flags & F_UP_CONNECTED)
    wq_check_progress(c, &c->uw, (uv_stream_t *)&c->upstream, now);
  if (wt > 0 && c->cw.inflight != NULL && now - c->cw.progress >= wt) {
    client_error(c, CAUSE_CLIENT_WRITE_TIMEOUT, "the client took none of %zu bytes for %llu ms",
                 wq_size(&c->cw), (unsigned long long)wt);
    conn_close(c); /* nothing more can reach it */
    return;
  }
  if (wt > 0 && c->uw.inflight != NULL && now - c->uw.progress >= wt) {
    client_error(c, CAUSE_UPSTREAM_WRITE_TIMEOUT, "the upstream took none of %zu bytes for %llu ms",
                 wq_size(&c->uw), (unsigned long long)wt);
    finish(c, 0); /* without close_notify: what the client sent did not all arrive */
    return;
  }
  if (c->v->idle_timeout_ms > 0 && now - c->last_io >= c->v->idle_timeout_ms) {
    client_error(c, CAUSE_IDLE_TIMEOUT, "no data either way for %llu ms",
                 (unsigned long long)c->v->idle_timeout_ms);
    finish(c, 1);
    return;
  }
  watch_arm(c);
}

/* Closing -------------------------------------------------------------------- */

static void conn_free(struct conn *c) {
  struct worker *w = c->w;
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    w->conns = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  w->n_conns--;
  budget_connection_release(w->budget);
  if (c->flags & F_COUNTED)
    stats_add(&conn_stats(c)->connections, -1);
  SSL_free(c->ssl);
  SSL_free(c->up_ssl);
  wbuf_free(&c->up_clear);
  free(c->cw.inflight);
  free(c->uw.inflight);
  wbuf_free(&c->cw.queued);
  wbuf_free(&c->uw.queued);
  wbuf_free(&c->pend);
  listener_version_unref(c->v);
  c->magic = 0;
  free(c);
  worker__maybe_stop(w);
}

static void on_close(uv_handle_t *h) {
  struct conn *c = conn_check(h->data);
  if (--c->handles == 0)
    conn_free(c);
}

static void conn_close(struct conn *c) {
  if (c->flags & F_CLOSING)
    return;
  c->flags |= F_CLOSING;
  /* What the client's socket took of a write cut short counts as sent,
   * once: a write libuv completed but whose callback it deferred still
   * reports success after this, and must add nothing. */
  if (c->cw.inflight != NULL) {
    size_t left = uv_stream_get_write_queue_size((uv_stream_t *)&c->client);
    if (left < c->cw.inflight_len)
      stats_add(&conn_stats(c)->bytes_out, (long long)(c->cw.inflight_len - left));
    c->cw.inflight_len = 0;
  }
  if (c->w->out_conn == c) {
    c->w->out.len = 0;
    c->w->out_conn = NULL;
  }
  uv_close((uv_handle_t *)&c->client, on_close);
  uv_close((uv_handle_t *)&c->timer, on_close);
  uv_close((uv_handle_t *)&c->watch, on_close);
  if (c->flags & F_UP_INIT)
    uv_close((uv_handle_t *)&c->upstream, on_close);
}

void conn_drain(struct conn *c, uint64_t now, int force) {
  if (c->flags & F_CLOSING)
    return;
  if (force || !(c->flags & F_HS_DONE)) {
    conn_close(c);
    return;
  }
  if (wq_idle(&c->cw) && wq_idle(&c->uw) && c->pend.len == 0 && c->up_clear.len == 0 &&
      now - c->last_io >= WORKER_IDLE_MS)
    finish(c, 1);
}

/* Accepting ----------------------------------------------------------------- */

static void on_handshake_timeout(uv_timer_t *t) {
  struct conn *c = conn_check(t->data);
  client_error(c, CAUSE_HANDSHAKE_TIMEOUT, "no handshake within %llu ms",
               (unsigned long long)c->v->handshake_timeout_ms);
  conn_close(c);
}

/* Counts a connection refused at accept and logs it (limited). */
static void refused(struct worker *w, const struct listener *l, const union sockaddr_any *peer,
                    enum budget_refusal why) {
  unsigned long long suppressed;
  if (!budget_refuse(w->budget, why, uv_now(&w->loop), &suppressed))
    return;
  char addr[64], reason[128], more[48] = "";
  listener_addr_format(peer, addr, sizeof(addr));
  if (why == REFUSED_DESCRIPTORS)
    snprintf(reason, sizeof(reason), "%ld connections hold every descriptor the agent may use",
             budget_connections_max(w->budget));
  else
    snprintf(reason, sizeof(reason), "out of memory");
  if (suppressed > 0)
    snprintf(more, sizeof(more), " suppressed=%llu", suppressed);
  log_msg(why == REFUSED_DESCRIPTORS ? LOG_WARN : LOG_ERROR, "agent",
          "listener=%s client=%s refused cause=%s reason=\"%s\"%s", l->name, addr,
          budget_refusal_name(why), reason, more);
}

void conn_accept(struct wlistener *wl, int fd, const struct sockaddr *peer) {
  struct worker *w = wl->w;
  struct listener_version *v = wl->version;
  stats_add(&v->listener->stats.connections_total, 1);
  if (budget_connection_take(w->budget) != 0) {
    close(fd);
    refused(w, v->listener, (const union sockaddr_any *)peer, REFUSED_DESCRIPTORS);
    return;
  }
  struct conn *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    budget_connection_release(w->budget);
    close(fd);
    refused(w, v->listener, (const union sockaddr_any *)peer, REFUSED_OUT_OF_MEMORY);
    return;
  }
  c->magic = CONN_MAGIC;
  c->w = w;
  listener_version_ref(v);
  c->v = v;
  c->peer = *(const union sockaddr_any *)peer;
  c->next = w->conns;
  if (w->conns != NULL)
    w->conns->prev = c;
  w->conns = c;
  w->n_conns++;
  uv_tcp_init(&w->loop, &c->client);
  uv_timer_init(&w->loop, &c->timer);
  uv_timer_init(&w->loop, &c->watch);
  c->client.data = c;
  c->timer.data = c;
  c->watch.data = c;
  c->handles = 3;
  if (uv_tcp_open(&c->client, fd) != 0) {
    close(fd);
    conn_close(c);
    return;
  }
  struct stats *st = conn_stats(c);
  long long live = atomic_fetch_add_explicit(&st->connections, 1, memory_order_relaxed) + 1;
  c->flags |= F_COUNTED;
  if (v->max_connections > 0 && live > v->max_connections) {
    client_error(c, CAUSE_MAX_CONNECTIONS, "max_connections (%lld) reached",
                 (long long)v->max_connections);
    conn_close(c);
    return;
  }
  pthread_once(&bio_once, bio_meth_init);
  BIO *bio = bio_meth != NULL ? BIO_new(bio_meth) : NULL;
  c->ssl = bio != NULL ? tlsconf_listener_ssl_new(v->tls) : NULL;
  if (c->ssl == NULL) {
    BIO_free(bio);
    err_reset();
    refused(w, v->listener, &c->peer, REFUSED_OUT_OF_MEMORY);
    conn_close(c);
    return;
  }
  BIO_set_data(bio, c);
  SSL_set_bio(c->ssl, bio, bio); /* one reference, taken by ssl */
  SSL_set_app_data(c->ssl, c);
  SSL_set_info_callback(c->ssl, info_cb);
  SSL_set_msg_callback(c->ssl, msg_cb);
  SSL_set_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                           SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_set_accept_state(c->ssl);
  c->last_io = uv_now(&w->loop);
  if (v->handshake_timeout_ms > 0)
    uv_timer_start(&c->timer, on_handshake_timeout, v->handshake_timeout_ms, 0);
  update_reading(c);
}
