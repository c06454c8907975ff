/*
 * tlsload: a small TLS load generator for tlsplane's benchmarks.
 *
 * Unlike h2load or wrk it never resumes a session behind your back: every
 * connection gets a fresh SSL object, and SSL_session_reused() is counted on
 * every one, so "full" really means full handshakes and "resumed" really
 * means resumptions (see shared/BENCHMARKING.md).
 *
 * Modes
 *   full       one connection per operation, no session offered (ticket
 *              support is announced, as by a first-time client): one HTTP/1.1
 *              request with "Connection: close", then close_notify + close.
 *              Must report resumed = 0.
 *   resumed    as full, but every client slot offers the latest session it
 *              got (TLS 1.3 tickets are taken from SSL_CTX_sess_set_new_cb,
 *              i.e. after the handshake, when the NewSessionTicket arrives).
 *              Must report resumed ~= ops (only the first handshake of each
 *              slot is full).
 *   keepalive  one connection per client, HTTP/1.1 keep-alive requests on it;
 *              an operation is one request, latency is per request.
 *   bulk       as keepalive, but each request downloads a large body
 *              (default path /1m); reports MiB/s.
 *   idle       opens -c connections (at most --inflight handshakes at once),
 *              does one keep-alive request on each, prints a "ready" JSON
 *              line, then holds them open until -d seconds pass or SIGTERM.
 *
 * Output: one JSON line per run on stdout (idle: a "ready" line first).
 *
 * Only loopback targets (127.0.0.0/8) are accepted.
 *
 * HTTP handling is deliberately minimal: the status line and Content-Length
 * (or read-to-EOF) of responses from bench/'s own nginx upstream.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { M_FULL, M_RESUMED, M_KEEPALIVE, M_BULK, M_IDLE };
static const char *mode_names[] = {"full", "resumed", "keepalive", "bulk", "idle"};

enum state { ST_FREE, ST_CONNECTING, ST_HANDSHAKE, ST_WRITE, ST_READ, ST_HELD };

/* ---- configuration ---------------------------------------------------- */
static struct {
  enum mode mode;
  int conc;
  int threads;
  long long nops;  /* 0: use duration */
  double duration; /* seconds */
  double timeout;  /* per operation, seconds */
  int inflight;    /* idle mode: concurrent handshakes */
  int tls_version; /* 0 = any, else TLS1_2_VERSION / TLS1_3_VERSION */
  const char *cipher, *ciphersuites, *groups, *sigalgs;
  const char *sni, *path, *host_header, *label;
  struct sockaddr_in addr;
  char target[96];
} cfg = {
    .mode = M_FULL,
    .conc = 50,
    .threads = 1,
    .nops = 0,
    .duration = 10,
    .timeout = 10,
    .inflight = 50,
    .sni = "localhost",
};

static SSL_CTX *g_ctx;
static char g_req[1024];
static size_t g_req_len;
static atomic_llong g_started;    /* operations handed out (-n mode) */
static atomic_int g_stop;         /* SIGINT/SIGTERM or deadline */
static atomic_int g_established;  /* idle mode */
static atomic_int g_failed_conns; /* idle mode */
static uint64_t g_deadline_ns;
static uint64_t g_t0_ns;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- per-thread state --------------------------------------------------- */
struct thr;

struct conn {
  int fd;
  enum state st;
  SSL *ssl;
  SSL_SESSION *sess; /* resumed mode: latest session received on this slot */
  struct thr *t;
  uint64_t op_t0;
  int op_active; /* an operation is counted against the budget */
  /* response parsing */
  char hdr[4096];
  size_t hlen;
  int hdr_done;
  int status;
  long long body_left; /* -1: read to EOF */
  int conn_close;      /* response said Connection: close */
  int established;     /* idle mode */
};

struct thr {
  pthread_t tid;
  int ep;
  struct conn *conns;
  int nconns;
  int next_idle_start; /* idle mode: next slot to open */
  int establishing;    /* idle mode: handshakes in flight */
  /* stats */
  long long ops, errors, handshakes, resumed, conns_opened, reconnects, tickets;
  long long bytes; /* response body bytes */
  uint32_t *lat;   /* microseconds */
  size_t nlat, caplat;
  char version[16], cipher[64], group[32], keytype[16];
  char first_err[160];
  uint64_t t_end;
};

static void lat_add(struct thr *t, uint64_t ns) {
  if (t->nlat == t->caplat) {
    t->caplat = t->caplat ? t->caplat * 2 : 65536;
    t->lat = realloc(t->lat, t->caplat * sizeof(*t->lat));
    if (!t->lat) {
      perror("realloc");
      exit(1);
    }
  }
  uint64_t us = ns / 1000;
  t->lat[t->nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

/* Take one operation from the budget. */
static int take_op(void) {
  if (atomic_load(&g_stop))
    return 0;
  if (cfg.nops > 0)
    return atomic_fetch_add(&g_started, 1) < cfg.nops;
  return now_ns() < g_deadline_ns;
}

static void note_err(struct thr *t, const char *what) {
  if (t->first_err[0])
    return;
  unsigned long e = ERR_peek_error();
  char buf[120] = "";
  if (e)
    ERR_error_string_n(e, buf, sizeof buf);
  snprintf(t->first_err, sizeof t->first_err, "%s%s%s", what, buf[0] ? ": " : "", buf);
  for (char *p = t->first_err; *p; p++)
    if (*p == '"' || *p == '\\')
      *p = '\'';
}

/* New-session callback: keep the latest session of the slot (TLS 1.2: after
 * the handshake; TLS 1.3: one call per NewSessionTicket). */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess) {
  struct conn *c = SSL_get_app_data(ssl);
  if (!c || cfg.mode != M_RESUMED)
    return 0;
  c->t->tickets++;
  if (c->sess)
    SSL_SESSION_free(c->sess);
  c->sess = sess;
  return 1; /* we keep the reference */
}

static void conn_close(struct conn *c, int graceful) {
  if (c->ssl) {
    if (graceful)
      SSL_shutdown(c->ssl); /* send close_notify, don't wait for the peer's */
    SSL_free(c->ssl);
    c->ssl = NULL;
  }
  if (c->fd >= 0) {
    close(c->fd);
    c->fd = -1;
  }
  c->st = ST_FREE;
}

static int conn_open(struct conn *c) {
  struct thr *t = c->t;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    note_err(t, "socket");
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->fd = fd;
  c->ssl = SSL_new(g_ctx);
  if (!c->ssl) {
    note_err(t, "SSL_new");
    conn_close(c, 0);
    return -1;
  }
  SSL_set_app_data(c->ssl, c);
  SSL_set_fd(c->ssl, fd);
  SSL_set_connect_state(c->ssl);
  if (cfg.sni && cfg.sni[0])
    SSL_set_tlsext_host_name(c->ssl, cfg.sni);
  if (cfg.mode == M_RESUMED && c->sess)
    SSL_set_session(c->ssl, c->sess);
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
  if (epoll_ctl(t->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
    note_err(t, "epoll_ctl");
    conn_close(c, 0);
    return -1;
  }
  t->conns_opened++;
  if (connect(fd, (struct sockaddr *)&cfg.addr, sizeof cfg.addr) == 0)
    c->st = ST_HANDSHAKE;
  else if (errno == EINPROGRESS)
    c->st = ST_CONNECTING;
  else {
    note_err(t, strerror(errno));
    conn_close(c, 0);
    return -1;
  }
  return 0;
}

static void begin_request(struct conn *c) {
  c->st = ST_WRITE;
  c->hlen = 0;
  c->hdr_done = 0;
  c->status = 0;
  c->body_left = -1;
  c->conn_close = 0;
}

/* Start the next operation on a slot that has no connection. */
static void start_conn_op(struct conn *c) {
  for (;;) {
    if (cfg.mode == M_FULL || cfg.mode == M_RESUMED) {
      if (!take_op())
        return;
      c->op_active = 1;
    } else {
      c->op_active = 0; /* keepalive/bulk take budget per request */
      if (cfg.mode != M_IDLE &&
          (atomic_load(&g_stop) ||
           (cfg.nops > 0 ? atomic_load(&g_started) >= cfg.nops : now_ns() >= g_deadline_ns)))
        return;
    }
    c->op_t0 = now_ns();
    if (conn_open(c) == 0)
      break;
    c->t->errors++;
    if (cfg.mode == M_IDLE) {
      atomic_fetch_add(&g_failed_conns, 1);
      c->t->establishing--;
      return;
    }
  }
  /* No drive() here: the socket was added to epoll (edge-triggered) before
   * connect(), so its first readiness is reported; this keeps error paths
   * free of recursion. */
}

static void op_failed(struct conn *c, const char *why) {
  struct thr *t = c->t;
  note_err(t, why);
  ERR_clear_error();
  t->errors++;
  conn_close(c, 0);
  if (t->errors >= 1000 && t->ops == 0 && cfg.mode != M_IDLE)
    atomic_store(&g_stop, 1); /* nothing works: don't spin */
  if (cfg.mode == M_IDLE) {
    if (c->established) {
      c->established = 0;
      atomic_fetch_sub(&g_established, 1);
    } else {
      t->establishing--;
    }
    atomic_fetch_add(&g_failed_conns, 1);
    return;
  }
  start_conn_op(c);
}

/* Parse the response header; returns 0 if more is needed, 1 when done, -1 bad. */
static int parse_header(struct conn *c) {
  char *end = memmem(c->hdr, c->hlen, "\r\n\r\n", 4);
  if (!end)
    return c->hlen >= sizeof c->hdr - 1 ? -1 : 0;
  *end = 0;
  if (strncmp(c->hdr, "HTTP/1.", 7) != 0 || c->hlen < 12)
    return -1;
  c->status = atoi(c->hdr + 9);
  c->body_left = -1;
  for (char *line = strstr(c->hdr, "\r\n"); line; line = strstr(line, "\r\n")) {
    line += 2;
    if (strncasecmp(line, "Content-Length:", 15) == 0)
      c->body_left = atoll(line + 15);
    else if (strncasecmp(line, "Connection:", 11) == 0) {
      const char *v = line + 11;
      while (*v == ' ')
        v++;
      if (strncasecmp(v, "close", 5) == 0)
        c->conn_close = 1;
    }
  }
  size_t consumed = (size_t)(end - c->hdr) + 4;
  size_t extra = c->hlen - consumed;
  c->t->bytes += (long long)extra;
  if (c->body_left >= 0)
    c->body_left -= (long long)extra;
  c->hdr_done = 1;
  return 1;
}

static void record_handshake(struct conn *c) {
  struct thr *t = c->t;
  t->handshakes++;
  if (SSL_session_reused(c->ssl))
    t->resumed++;
  if (!t->version[0]) {
    snprintf(t->version, sizeof t->version, "%s", SSL_get_version(c->ssl));
    snprintf(t->cipher, sizeof t->cipher, "%s", SSL_get_cipher_name(c->ssl));
    int g = SSL_get_negotiated_group(c->ssl);
    const char *gn = g ? OBJ_nid2sn(g & ~TLSEXT_nid_unknown) : NULL;
    snprintf(t->group, sizeof t->group, "%s", gn ? gn : "");
    X509 *peer = SSL_get0_peer_certificate(c->ssl);
    EVP_PKEY *pk = peer ? X509_get0_pubkey(peer) : NULL;
    const char *kt = "";
    if (pk) {
      if (EVP_PKEY_is_a(pk, "EC"))
        kt = "EC";
      else if (EVP_PKEY_is_a(pk, "RSA"))
        kt = "RSA";
      else if (EVP_PKEY_is_a(pk, "ED25519"))
        kt = "ED25519";
      else
        kt = "other";
    }
    snprintf(t->keytype, sizeof t->keytype, "%s", kt);
  }
}

/* A response finished successfully. */
static void op_done(struct conn *c) {
  struct thr *t = c->t;
  uint64_t now = now_ns();
  if (c->status < 200 || c->status >= 400) {
    op_failed(c, "bad HTTP status");
    return;
  }
  switch (cfg.mode) {
  case M_FULL:
  case M_RESUMED:
    t->ops++;
    lat_add(t, now - c->op_t0);
    c->op_active = 0;
    conn_close(c, 1);
    start_conn_op(c);
    return;
  case M_KEEPALIVE:
  case M_BULK:
    t->ops++;
    lat_add(t, now - c->op_t0);
    c->op_active = 0;
    if (c->conn_close) {
      conn_close(c, 1);
      t->reconnects++;
      start_conn_op(c);
      return;
    }
    if (!take_op()) {
      conn_close(c, 1);
      return;
    }
    c->op_active = 1;
    c->op_t0 = now;
    begin_request(c);
    return; /* drive() continues */
  case M_IDLE:
    c->st = ST_HELD;
    c->established = 1;
    t->establishing--;
    atomic_fetch_add(&g_established, 1);
    return;
  }
}

static void drive(struct conn *c) {
  static __thread char rbuf[65536];
  for (;;) {
    int r, e;
    switch (c->st) {
    case ST_FREE:
      return;
    case ST_CONNECTING: {
      int err = 0;
      socklen_t l = sizeof err;
      if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err) {
        op_failed(c, err ? strerror(err) : "connect");
        return;
      }
      /* Writable means connected; an event may also be spurious. */
      struct sockaddr_in peer;
      socklen_t pl = sizeof peer;
      if (getpeername(c->fd, (struct sockaddr *)&peer, &pl) < 0)
        return; /* still connecting */
      c->st = ST_HANDSHAKE;
      break;
    }
    case ST_HANDSHAKE:
      r = SSL_do_handshake(c->ssl);
      if (r == 1) {
        record_handshake(c);
        if (cfg.mode == M_KEEPALIVE || cfg.mode == M_BULK) {
          if (!take_op()) {
            conn_close(c, 1);
            return;
          }
          c->op_active = 1;
          c->op_t0 = now_ns();
        }
        begin_request(c);
        break;
      }
      e = SSL_get_error(c->ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return;
      {
        char why[64];
        snprintf(why, sizeof why, "handshake (SSL_get_error %d, errno %d)", e, errno);
        op_failed(c, why);
      }
      return;
    case ST_WRITE:
      r = SSL_write(c->ssl, g_req, (int)g_req_len);
      if (r > 0) {
        c->st = ST_READ;
        break;
      }
      e = SSL_get_error(c->ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return;
      op_failed(c, "write");
      return;
    case ST_READ:
      if (!c->hdr_done)
        r = SSL_read(c->ssl, c->hdr + c->hlen, (int)(sizeof c->hdr - 1 - c->hlen));
      else
        r = SSL_read(c->ssl, rbuf, sizeof rbuf);
      if (r > 0) {
        if (!c->hdr_done) {
          c->hlen += (size_t)r;
          int p = parse_header(c);
          if (p < 0) {
            op_failed(c, "bad HTTP response");
            return;
          }
          if (p == 0)
            break;
        } else {
          c->t->bytes += r;
          if (c->body_left >= 0)
            c->body_left -= r;
        }
        if (c->body_left == 0) {
          op_done(c);
          if (c->st == ST_HELD || c->st == ST_FREE)
            return;
        }
        break;
      }
      e = SSL_get_error(c->ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return;
      if ((e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL || e == SSL_ERROR_SSL) &&
          c->hdr_done && c->body_left < 0) {
        /* body delimited by EOF */
        ERR_clear_error();
        c->conn_close = 1;
        c->body_left = 0;
        op_done(c);
        if (c->st == ST_HELD || c->st == ST_FREE)
          return;
        break;
      }
      {
        char why[96];
        snprintf(why, sizeof why, "%s (SSL_get_error %d, errno %d, %zu header bytes)",
                 c->hdr_done ? "EOF in body" : "EOF before response", e, errno, c->hlen);
        op_failed(c, why);
      }
      return;
    case ST_HELD:
      /* idle: anything arriving (or EOF) ends the connection */
      r = SSL_read(c->ssl, rbuf, sizeof rbuf);
      if (r <= 0) {
        e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
          return;
      }
      op_failed(c, "idle connection closed by server");
      return;
    }
  }
}

static void idle_fill(struct thr *t) {
  while (!atomic_load(&g_stop) &&
         t->establishing < (cfg.inflight + cfg.threads - 1) / cfg.threads &&
         t->next_idle_start < t->nconns) {
    struct conn *c = &t->conns[t->next_idle_start++];
    t->establishing++;
    start_conn_op(c);
  }
}

static void *thread_main(void *arg) {
  struct thr *t = arg;
  struct epoll_event evs[256];
  t->ep = epoll_create1(EPOLL_CLOEXEC);
  if (t->ep < 0) {
    perror("epoll_create1");
    exit(1);
  }
  if (cfg.mode == M_IDLE)
    idle_fill(t);
  else
    for (int i = 0; i < t->nconns; i++)
      start_conn_op(&t->conns[i]);
  uint64_t last_scan = now_ns();
  const uint64_t tmo = (uint64_t)(cfg.timeout * 1e9);
  for (;;) {
    int active = 0;
    for (int i = 0; i < t->nconns; i++)
      if (t->conns[i].st != ST_FREE && t->conns[i].st != ST_HELD) {
        active = 1;
        break;
      }
    if (cfg.mode == M_IDLE) {
      if (atomic_load(&g_stop))
        break;
      if (!active && t->next_idle_start >= t->nconns)
        active = 1; /* holding: keep serving epoll until stopped */
    }
    if (!active)
      break;
    int n = epoll_wait(t->ep, evs, 256, 100);
    if (n < 0 && errno != EINTR) {
      perror("epoll_wait");
      exit(1);
    }
    for (int i = 0; i < n; i++)
      drive(evs[i].data.ptr);
    if (cfg.mode == M_IDLE)
      idle_fill(t);
    uint64_t now = now_ns();
    if (now - last_scan > 200000000ull) {
      last_scan = now;
      for (int i = 0; i < t->nconns; i++) {
        struct conn *c = &t->conns[i];
        if (c->st != ST_FREE && c->st != ST_HELD && now - c->op_t0 > tmo) {
          op_failed(c, "timeout");
          if (cfg.mode == M_IDLE)
            idle_fill(t);
        }
      }
    }
  }
  for (int i = 0; i < t->nconns; i++) {
    conn_close(&t->conns[i], 1);
    if (t->conns[i].sess)
      SSL_SESSION_free(t->conns[i].sess);
  }
  t->t_end = now_ns();
  close(t->ep);
  return NULL;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static void on_signal(int sig) {
  (void)sig;
  atomic_store(&g_stop, 1);
}

static void usage(FILE *f) {
  fprintf(f, "usage: tlsload [options] 127.0.0.1:PORT\n"
             "  -m, --mode MODE        full | resumed | keepalive | bulk | idle (default full)\n"
             "  -c, --concurrency N    concurrent connections (default 50)\n"
             "  -t, --threads N        generator threads (default 1)\n"
             "  -n, --requests N       operations in total (a handshake+request, or a request)\n"
             "  -d, --duration SEC     run for SEC seconds instead of -n (default 10);\n"
             "                         idle: hold the connections this long (default 3600)\n"
             "      --tls1.2 | --tls1.3  pin the protocol version\n"
             "      --cipher LIST      TLS 1.2 cipher list\n"
             "      --ciphersuites L   TLS 1.3 cipher suites\n"
             "      --groups LIST      key-exchange groups (e.g. X25519)\n"
             "      --sigalgs LIST     signature algorithms offered (e.g. ECDSA+SHA256)\n"
             "      --sni NAME         server name (default localhost; \"\" for none)\n"
             "      --path PATH        request path (default / ; bulk: /1m)\n"
             "      --inflight N       idle mode: handshakes in flight (default 50)\n"
             "      --timeout SEC      per-operation timeout (default 10)\n"
             "      --label TEXT       copied into the JSON output\n");
}

int main(int argc, char **argv) {
  enum {
    OPT_TLS12 = 256,
    OPT_TLS13,
    OPT_CIPHER,
    OPT_SUITES,
    OPT_GROUPS,
    OPT_SIGALGS,
    OPT_SNI,
    OPT_PATH,
    OPT_INFLIGHT,
    OPT_TIMEOUT,
    OPT_LABEL
  };
  static const struct option opts[] = {{"mode", required_argument, 0, 'm'},
                                       {"concurrency", required_argument, 0, 'c'},
                                       {"threads", required_argument, 0, 't'},
                                       {"requests", required_argument, 0, 'n'},
                                       {"duration", required_argument, 0, 'd'},
                                       {"tls1.2", no_argument, 0, OPT_TLS12},
                                       {"tls1.3", no_argument, 0, OPT_TLS13},
                                       {"cipher", required_argument, 0, OPT_CIPHER},
                                       {"ciphersuites", required_argument, 0, OPT_SUITES},
                                       {"groups", required_argument, 0, OPT_GROUPS},
                                       {"sigalgs", required_argument, 0, OPT_SIGALGS},
                                       {"sni", required_argument, 0, OPT_SNI},
                                       {"path", required_argument, 0, OPT_PATH},
                                       {"inflight", required_argument, 0, OPT_INFLIGHT},
                                       {"timeout", required_argument, 0, OPT_TIMEOUT},
                                       {"label", required_argument, 0, OPT_LABEL},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  int o, dur_set = 0;
  while ((o = getopt_long(argc, argv, "m:c:t:n:d:h", opts, NULL)) != -1) {
    switch (o) {
    case 'm': {
      int found = 0;
      for (int i = 0; i < 5; i++)
        if (strcmp(optarg, mode_names[i]) == 0) {
          cfg.mode = (enum mode)i;
          found = 1;
        }
      if (!found) {
        fprintf(stderr, "tlsload: unknown mode %s\n", optarg);
        return 2;
      }
      break;
    }
    case 'c':
      cfg.conc = atoi(optarg);
      break;
    case 't':
      cfg.threads = atoi(optarg);
      break;
    case 'n':
      cfg.nops = atoll(optarg);
      break;
    case 'd':
      cfg.duration = atof(optarg);
      dur_set = 1;
      break;
    case OPT_TLS12:
      cfg.tls_version = TLS1_2_VERSION;
      break;
    case OPT_TLS13:
      cfg.tls_version = TLS1_3_VERSION;
      break;
    case OPT_CIPHER:
      cfg.cipher = optarg;
      break;
    case OPT_SUITES:
      cfg.ciphersuites = optarg;
      break;
    case OPT_GROUPS:
      cfg.groups = optarg;
      break;
    case OPT_SIGALGS:
      cfg.sigalgs = optarg;
      break;
    case OPT_SNI:
      cfg.sni = optarg;
      break;
    case OPT_PATH:
      cfg.path = optarg;
      break;
    case OPT_INFLIGHT:
      cfg.inflight = atoi(optarg);
      break;
    case OPT_TIMEOUT:
      cfg.timeout = atof(optarg);
      break;
    case OPT_LABEL:
      cfg.label = optarg;
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  if (optind != argc - 1 || cfg.conc < 1 || cfg.threads < 1 || cfg.inflight < 1) {
    usage(stderr);
    return 2;
  }
  if (cfg.mode == M_IDLE && !dur_set)
    cfg.duration = 3600;
  if (cfg.threads > cfg.conc)
    cfg.threads = cfg.conc;

  /* target: loopback only */
  {
    char host[64];
    snprintf(host, sizeof host, "%s", argv[optind]);
    char *colon = strrchr(host, ':');
    if (!colon) {
      fprintf(stderr, "tlsload: target must be 127.x.y.z:PORT\n");
      return 2;
    }
    *colon = 0;
    int port = atoi(colon + 1);
    memset(&cfg.addr, 0, sizeof cfg.addr);
    cfg.addr.sin_family = AF_INET;
    cfg.addr.sin_port = htons((uint16_t)port);
    if (strcmp(host, "localhost") == 0)
      snprintf(host, sizeof host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &cfg.addr.sin_addr) != 1 || port <= 0 || port > 65535 ||
        (ntohl(cfg.addr.sin_addr.s_addr) >> 24) != 127) {
      fprintf(stderr, "tlsload: refusing target %s: loopback (127.0.0.0/8) only\n", argv[optind]);
      return 2;
    }
    snprintf(cfg.target, sizeof cfg.target, "%s:%d", host, port);
  }

  if (!cfg.path)
    cfg.path = cfg.mode == M_BULK ? "/1m" : "/";
  const char *hosthdr = cfg.sni && cfg.sni[0] ? cfg.sni : "localhost";
  g_req_len = (size_t)snprintf(
      g_req, sizeof g_req, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tlsload\r\n%s\r\n", cfg.path,
      hosthdr, (cfg.mode == M_FULL || cfg.mode == M_RESUMED) ? "Connection: close\r\n" : "");

  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);

  g_ctx = SSL_CTX_new(TLS_client_method());
  if (!g_ctx) {
    ERR_print_errors_fp(stderr);
    return 1;
  }
  SSL_CTX_set_verify(g_ctx, SSL_VERIFY_NONE, NULL);
  SSL_CTX_set_options(g_ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
  if (cfg.tls_version) {
    SSL_CTX_set_min_proto_version(g_ctx, cfg.tls_version);
    SSL_CTX_set_max_proto_version(g_ctx, cfg.tls_version);
  }
  if ((cfg.cipher && !SSL_CTX_set_cipher_list(g_ctx, cfg.cipher)) ||
      (cfg.ciphersuites && !SSL_CTX_set_ciphersuites(g_ctx, cfg.ciphersuites)) ||
      (cfg.groups && !SSL_CTX_set1_groups_list(g_ctx, cfg.groups)) ||
      (cfg.sigalgs && !SSL_CTX_set1_sigalgs_list(g_ctx, cfg.sigalgs))) {
    fprintf(stderr, "tlsload: bad cipher/group/sigalg list\n");
    ERR_print_errors_fp(stderr);
    return 2;
  }
  if (cfg.mode == M_RESUMED) {
    SSL_CTX_set_session_cache_mode(g_ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(g_ctx, new_session_cb);
  } else {
    /* Never offer a session. Like a first-time client, still announce
     * ticket support, so that the server issues tickets (TLS 1.2 and 1.3
     * alike) and that work is part of a full handshake. */
    SSL_CTX_set_session_cache_mode(g_ctx, SSL_SESS_CACHE_OFF);
  }

  struct thr *thr = calloc((size_t)cfg.threads, sizeof *thr);
  struct conn *conns = calloc((size_t)cfg.conc, sizeof *conns);
  if (!thr || !conns) {
    perror("calloc");
    return 1;
  }
  for (int i = 0; i < cfg.conc; i++) {
    conns[i].fd = -1;
    conns[i].st = ST_FREE;
  }
  for (int i = 0; i < cfg.threads; i++) {
    int a = (int)((long long)cfg.conc * i / cfg.threads);
    int b = (int)((long long)cfg.conc * (i + 1) / cfg.threads);
    thr[i].conns = conns + a;
    thr[i].nconns = b - a;
    for (int j = a; j < b; j++)
      conns[j].t = &thr[i];
  }

  g_t0_ns = now_ns();
  g_deadline_ns = g_t0_ns + (uint64_t)(cfg.duration * 1e9);
  for (int i = 0; i < cfg.threads; i++)
    pthread_create(&thr[i].tid, NULL, thread_main, &thr[i]);

  if (cfg.mode == M_IDLE) {
    /* wait until every connection is established (or failed) */
    int ready_printed = 0;
    while (!atomic_load(&g_stop)) {
      int est = atomic_load(&g_established), fail = atomic_load(&g_failed_conns);
      if (!ready_printed && est + fail >= cfg.conc) {
        printf("{\"mode\":\"idle\",\"ready\":true,\"target\":\"%s\",\"established\":%d,"
               "\"errors\":%d,\"seconds\":%.3f}\n",
               cfg.target, est, fail, (double)(now_ns() - g_t0_ns) / 1e9);
        fflush(stdout);
        ready_printed = 1;
      }
      if (now_ns() >= g_deadline_ns)
        atomic_store(&g_stop, 1);
      usleep(20000);
    }
  }
  for (int i = 0; i < cfg.threads; i++)
    pthread_join(thr[i].tid, NULL);

  /* aggregate */
  long long ops = 0, errors = 0, hs = 0, resumed = 0, opened = 0, reconn = 0, bytes = 0,
            tickets = 0;
  size_t nlat = 0;
  uint64_t t_end = g_t0_ns;
  const char *ver = "", *ciph = "", *grp = "", *kt = "", *err1 = "";
  for (int i = 0; i < cfg.threads; i++) {
    ops += thr[i].ops;
    errors += thr[i].errors;
    hs += thr[i].handshakes;
    resumed += thr[i].resumed;
    opened += thr[i].conns_opened;
    reconn += thr[i].reconnects;
    tickets += thr[i].tickets;
    bytes += thr[i].bytes;
    nlat += thr[i].nlat;
    if (thr[i].t_end > t_end)
      t_end = thr[i].t_end;
    if (!ver[0] && thr[i].version[0]) {
      ver = thr[i].version;
      ciph = thr[i].cipher;
      grp = thr[i].group;
      kt = thr[i].keytype;
    }
    if (!err1[0] && thr[i].first_err[0])
      err1 = thr[i].first_err;
  }
  uint32_t *all = malloc((nlat ? nlat : 1) * sizeof *all);
  size_t k = 0;
  for (int i = 0; i < cfg.threads; i++) {
    if (thr[i].nlat)
      memcpy(all + k, thr[i].lat, thr[i].nlat * sizeof *all);
    k += thr[i].nlat;
  }
  qsort(all, nlat, sizeof *all, cmp_u32);
  double p50 = nlat ? all[(size_t)((double)(nlat - 1) * 0.50)] : 0;
  double p99 = nlat ? all[(size_t)((double)(nlat - 1) * 0.99)] : 0;
  double secs = (double)(t_end - g_t0_ns) / 1e9;
  if (cfg.mode == M_IDLE)
    ops = atomic_load(&g_established);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double client_cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                      (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;

  printf("{\"mode\":\"%s\",\"target\":\"%s\",\"label\":\"%s\",\"concurrency\":%d,\"threads\":%d,"
         "\"ops\":%lld,\"seconds\":%.3f,\"ops_per_s\":%.1f,\"handshakes\":%lld,\"resumed\":%lld,"
         "\"errors\":%lld,\"sessions_received\":%lld,\"connections\":%lld,\"reconnects\":%lld,"
         "\"p50_us\":%.0f,\"p99_us\":%.0f,"
         "\"body_bytes\":%lld,\"mib_per_s\":%.1f,\"version\":\"%s\",\"cipher\":\"%s\",\"group\":\"%"
         "s\","
         "\"server_key\":\"%s\",\"client_cpu_s\":%.3f,\"first_error\":\"%s\"}\n",
         mode_names[cfg.mode], cfg.target, cfg.label ? cfg.label : "", cfg.conc, cfg.threads, ops,
         secs, secs > 0 ? (double)ops / secs : 0.0, hs, resumed, errors, tickets, opened, reconn,
         p50, p99, bytes, secs > 0 ? (double)bytes / 1048576.0 / secs : 0.0, ver, ciph, grp, kt,
         client_cpu, err1);
  fflush(stdout);
  return 0;
}
