/* The metrics endpoint (see metrics.h). Runs on the main thread, which
 * owns the registry it reads; the counters themselves are atomics that
 * the workers add to. */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "acceptor.h"
#include "log.h"
#include "prom.h"
#include "tlsconf.h"

#define METRICS_MAGIC 0x4d545253u /* "MTRS" */
#define MCONN_MAGIC 0x4d434f4eu   /* "MCON" */

/* Request line and headers beyond this are refused. */
#define METRICS_MAX_REQUEST 8192
/* A connection that has not sent a whole request by then is closed, and
 * one whose response has not gone out by then too. */
#define MCONN_READ_TIMEOUT_MS 5000
#define MCONN_WRITE_TIMEOUT_MS 10000

struct mconn;

struct metrics {
  unsigned magic;
  struct agent *a;
  uv_loop_t *loop;
  struct acceptor acc;
  struct mconn *conns;
  int n_conns; /* open connections, at most METRICS_MAX_CONNECTIONS */
  int handles; /* the acceptor and every connection; freed at 0 */
  int closing;
  char address[80];
};

struct mconn {
  unsigned magic;
  struct metrics *m;
  uv_tcp_t tcp;
  uv_timer_t timer; /* MCONN_READ_TIMEOUT_MS, then MCONN_WRITE_TIMEOUT_MS */
  int handles;      /* tcp and timer; freed at 0 */
  struct metrics_request request;
  int responded;
  uv_write_t req;
  char *head, *body; /* the response, freed after the write */
  char rbuf[4096];
  struct mconn *prev, *next;
};

static struct metrics *metrics_check(void *p) {
  struct metrics *m = p;
  if (m == NULL || m->magic != METRICS_MAGIC)
    abort();
  return m;
}

static struct mconn *mconn_check(void *p) {
  struct mconn *mc = p;
  if (mc == NULL || mc->magic != MCONN_MAGIC)
    abort();
  return mc;
}

/* Rendering --------------------------------------------------------------- */

static void sample(FILE *f, const char *name, const struct listener *l, long long v) {
  fprintf(f, "%s{listener=\"", name);
  prom_label(f, l->name);
  fprintf(f, "\"} %lld\n", v);
}

/* A per-listener counter: its field in struct stats. */
struct counter {
  const char *name, *type, *help;
  size_t offset;
};

static const struct counter counters[] = {
    {"tlsplane_connections", "gauge", "Open client connections (server.connections).",
     offsetof(struct stats, connections)},
    {"tlsplane_connections_total", "counter", "Client TCP connections accepted.",
     offsetof(struct stats, connections_total)},
    {"tlsplane_handshakes_total", "counter", "TLS handshakes completed ('secureConnection').",
     offsetof(struct stats, handshakes)},
    {"tlsplane_resumptions_total", "counter",
     "Handshakes that resumed a session, by ID or ticket ('resumeSession' hit).",
     offsetof(struct stats, resumptions)},
    {"tlsplane_new_sessions_total", "counter",
     "Full handshakes, each creating a new session ('newSession').",
     offsetof(struct stats, new_sessions)},
    {"tlsplane_ocsp_requests_total", "counter",
     "Handshakes whose client asked for OCSP stapling ('OCSPRequest').",
     offsetof(struct stats, ocsp_requests)},
    {"tlsplane_ocsp_staples_total", "counter", "Handshakes that got a stapled OCSP response.",
     offsetof(struct stats, ocsp_staples)},
    {"tlsplane_bytes_in_total", "counter", "Bytes read from clients (TLS records).",
     offsetof(struct stats, bytes_in)},
    {"tlsplane_bytes_out_total", "counter",
     "Bytes sent to clients (TLS records), counted when their socket takes them.",
     offsetof(struct stats, bytes_out)},
    {"tlsplane_upstream_handshakes_total", "counter",
     "TLS handshakes with the upstream completed (upstream_tls).",
     offsetof(struct stats, up_handshakes)},
    {"tlsplane_upstream_resumptions_total", "counter",
     "Upstream handshakes that resumed the session kept from the previous one (upstream_tls).",
     offsetof(struct stats, up_resumptions)},
    {"tlsplane_acme_challenges_answered_total", "counter",
     "ACME tls-alpn-01 validations answered with a challenge certificate (also counted as "
     "handshakes); the connection is closed after the handshake.",
     offsetof(struct stats, acme_challenges)},
};

/* The start of a sample labelled with a listener and a certificate; the
 * caller adds any other labels and the value. */
static void cert_sample(FILE *f, const char *name, const struct listener *l,
                        const struct tlsconf_cert_facts *c) {
  fprintf(f, "%s{listener=\"", name);
  prom_label(f, l->name);
  fputs("\",certificate=\"", f);
  prom_label(f, c->certificate);
  fputc('"', f);
}

/* What each served listener's certificates are, as the apply found them
 * (listener_version.certs): nothing is parsed here. */
static void render_certificates(FILE *f, const struct agent *a) {
  prom_family(
      f, "tlsplane_agent_certificate_not_after_seconds", "gauge",
      "When a certificate a listener serves (default or SNI context) expires: its notAfter, "
      "seconds since the epoch.");
  for (const struct listener *l = a->listeners; l != NULL; l = l->next) {
    for (size_t i = 0; l->applied != NULL && i < l->applied->n_certs; i++) {
      const struct tlsconf_cert_facts *c = l->applied->certs[i];
      cert_sample(f, "tlsplane_agent_certificate_not_after_seconds", l, c);
      fputs(",serial=\"", f);
      prom_label(f, c->serial);
      fputs("\",sha256=\"", f);
      prom_label(f, c->sha256);
      fprintf(f, "\"} %lld\n", (long long)c->not_after);
    }
  }
  prom_family(f, "tlsplane_agent_ocsp_next_update_seconds", "gauge",
              "The next_update of the OCSP response stapled for a certificate a listener serves, "
              "seconds since the epoch (none is stapled from then on).");
  for (const struct listener *l = a->listeners; l != NULL; l = l->next) {
    for (size_t i = 0; l->applied != NULL && i < l->applied->n_certs; i++) {
      const struct tlsconf_cert_facts *c = l->applied->certs[i];
      if (!c->has_ocsp)
        continue;
      cert_sample(f, "tlsplane_agent_ocsp_next_update_seconds", l, c);
      fprintf(f, "} %lld\n", (long long)c->ocsp_next_update);
    }
  }
}

int metrics_render(const struct agent *a, char **out, size_t *len) {
  *out = NULL;
  *len = 0;
  FILE *f = open_memstream(out, len);
  if (f == NULL)
    return -1;
  prom_family(f, "tlsplane_config_revision", "gauge",
              "Revision of the last snapshot applied, in whole or in part.");
  fprintf(f, "tlsplane_config_revision %lld\n", (long long)a->revision);
  prom_family(f, "tlsplane_config_apply_total", "counter",
              "Snapshots applied, by result: ack (every listener), nack (some listener not "
              "applied), error (the snapshot could not be read).");
  for (int r = 0; r < AGENT_APPLY_RESULT_COUNT; r++)
    fprintf(f, "tlsplane_config_apply_total{result=\"%s\"} %lld\n",
            agent_apply_result_name((enum agent_apply_result)r), a->apply_total[r]);
  prom_family(f, "tlsplane_workers", "gauge", "Worker threads.");
  fprintf(f, "tlsplane_workers %d\n", a->n_workers);
  if (a->ctxcache != NULL) {
    prom_family(f, "tlsplane_ssl_ctx_builds_total", "counter",
                "TLS contexts built (one SSL_CTX each); a context found again by its content hash "
                "is not built again.");
    fprintf(f, "tlsplane_ssl_ctx_builds_total %llu\n",
            (unsigned long long)tlsconf_ctxcache_builds(a->ctxcache));
    prom_family(f, "tlsplane_ssl_ctxs", "gauge",
                "Distinct TLS contexts (SSL_CTXs) held, shared by every listener, version and "
                "connection that uses them.");
    fprintf(f, "tlsplane_ssl_ctxs %zu\n", tlsconf_ctxcache_live(a->ctxcache));
  }
  struct budget *b = (struct budget *)&a->budget;
  prom_family(f, "tlsplane_agent_descriptors_limit", "gauge",
              "File descriptors the agent may open (RLIMIT_NOFILE, raised to the hard limit).");
  fprintf(f, "tlsplane_agent_descriptors_limit %ld\n", b->fd_limit);
  prom_family(f, "tlsplane_agent_connection_budget", "gauge",
              "Client connections the descriptors allow (two each), after the reserve and the "
              "listening sockets.");
  fprintf(f, "tlsplane_agent_connection_budget %ld\n", budget_connections_max(b));
  prom_family(f, "tlsplane_agent_connections_refused_total", "counter",
              "Connections closed at accept, by cause: descriptors (the budget is spent), "
              "out_of_memory, metrics_connections (the metrics endpoint's cap).");
  for (int r = 0; r < REFUSED_COUNT; r++)
    fprintf(f, "tlsplane_agent_connections_refused_total{cause=\"%s\"} %lld\n",
            budget_refusal_name((enum budget_refusal)r), stats_get(&b->refused[r]));
  prom_family(f, "tlsplane_agent_accept_errors_total", "counter",
              "accept(2) failures for want of descriptors or memory (accepting pauses briefly).");
  fprintf(f, "tlsplane_agent_accept_errors_total %lld\n", stats_get(&b->accept_errors));
  prom_family(f, "tlsplane_worker_config_revision", "gauge",
              "Revision of the last snapshot a worker thread has put in place: the connections it "
              "accepts from then on get it.");
  for (int k = 0; k < a->n_workers; k++)
    if (a->workers[k] != NULL) /* NULL once joined at shutdown */
      fprintf(f, "tlsplane_worker_config_revision{worker=\"%d\"} %lld\n", k,
              (long long)atomic_load(&a->workers[k]->revision));
  if (a->control_plane) {
    prom_family(f, "tlsplane_control_plane_connected", "gauge",
                "1 while the stream to tlsplane-server is up (snapshots are served either way).");
    fprintf(f, "tlsplane_control_plane_connected %d\n",
            atomic_load(&((struct agent *)a)->cp_connected));
    prom_family(f, "tlsplane_control_plane_connects_total", "counter",
                "Streams to tlsplane-server established (each one sent the agent its snapshot).");
    fprintf(f, "tlsplane_control_plane_connects_total %lld\n",
            (long long)atomic_load(&((struct agent *)a)->cp_connects));
    prom_family(f, "tlsplane_control_plane_failovers_total", "counter",
                "Moves to the next server of the --server list after a stream to one ended or "
                "failed.");
    fprintf(f, "tlsplane_control_plane_failovers_total %lld\n",
            (long long)atomic_load(&((struct agent *)a)->cp_failovers));
    prom_family(f, "tlsplane_agent_certificate_expiry_seconds", "gauge",
                "When the agent's client certificate expires (Unix time; 0: none loaded yet).");
    fprintf(f, "tlsplane_agent_certificate_expiry_seconds %lld\n",
            (long long)atomic_load(&((struct agent *)a)->cp_cert_expiry));
  }

  prom_family(f, "tlsplane_listener_up", "gauge",
              "1 when the listener accepts connections, 0 when it is not served (its build failed, "
              "or it was dropped and its connections drain).");
  for (const struct listener *l = a->listeners; l != NULL; l = l->next)
    sample(f, "tlsplane_listener_up", l, l->applied != NULL);
  prom_family(f, "tlsplane_listener_info", "gauge",
              "The listener's bound address and upstream (value 1), while served.");
  for (const struct listener *l = a->listeners; l != NULL; l = l->next) {
    if (l->applied == NULL)
      continue;
    char bound[80];
    listener_addr_format(&l->applied->bind_addr, bound, sizeof(bound));
    fputs("tlsplane_listener_info{listener=\"", f);
    prom_label(f, l->name);
    fputs("\",address=\"", f);
    prom_label(f, bound);
    fputs("\",upstream=\"", f);
    prom_label(f, l->applied->upstream);
    fputs("\"} 1\n", f);
  }
  prom_family(f, "tlsplane_listener_applied_revision", "gauge",
              "Snapshot revision of the version the listener serves.");
  for (const struct listener *l = a->listeners; l != NULL; l = l->next)
    if (l->applied != NULL)
      sample(f, "tlsplane_listener_applied_revision", l, l->applied_revision);
  render_certificates(f, a);

  for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
    const struct counter *c = &counters[i];
    prom_family(f, c->name, c->type, c->help);
    for (const struct listener *l = a->listeners; l != NULL; l = l->next)
      sample(f, c->name, l, stats_get((atomic_llong *)((char *)&l->stats + c->offset)));
  }
  prom_family(f, "tlsplane_client_errors_total", "counter",
              "Client connections that ended in an error ('clientError'), by cause.");
  for (const struct listener *l = a->listeners; l != NULL; l = l->next) {
    for (int c = 0; c < CAUSE_COUNT; c++) {
      fputs("tlsplane_client_errors_total{listener=\"", f);
      prom_label(f, l->name);
      fprintf(f, "\",cause=\"%s\"} %lld\n", stats_cause_name((enum stats_cause)c),
              stats_get((atomic_llong *)&l->stats.client_errors[c]));
    }
  }
  if (fclose(f) != 0) {
    free(*out);
    *out = NULL;
    return -1;
  }
  return 0;
}

/* Health ------------------------------------------------------------------ */

/* The oldest revision a worker has put in place (INT64_MAX: no worker). */
static int64_t workers_revision(const struct agent *a) {
  int64_t min = INT64_MAX;
  for (int k = 0; k < a->n_workers; k++) {
    if (a->workers[k] == NULL) /* joined at shutdown */
      continue;
    int64_t r = atomic_load(&a->workers[k]->revision);
    if (r < min)
      min = r;
  }
  return min;
}

/* A reason on one line of the body: control characters become spaces. */
static void put_line(FILE *f, const char *s) {
  for (; *s != '\0'; s++)
    fputc((unsigned char)*s < 0x20 ? ' ' : *s, f);
}

/* One line for l when it is not applied; returns 1 then, else 0. */
static int health_listener(FILE *f, const struct listener *l, int64_t in_place) {
  if (l->last_error[0] != '\0') {
    fprintf(f, "%s: not applied: ", l->name);
    put_line(f, l->last_error);
    if (l->applied != NULL)
      fprintf(f, " (serves revision %lld)\n", (long long)l->applied_revision);
    else
      fputs(" (not served)\n", f);
    return 1;
  }
  if (l->applied == NULL) {
    fprintf(f, "%s: not served\n", l->name);
    return 1;
  }
  if (l->served_since > in_place) {
    fprintf(f, "%s: pending: revision %lld is not in place on every worker yet\n", l->name,
            (long long)l->served_since);
    return 1;
  }
  return 0;
}

int metrics_health(const struct agent *a, char **out, size_t *len) {
  *out = NULL;
  *len = 0;
  FILE *f = open_memstream(out, len);
  if (f == NULL)
    return -1;
  int status = 200;
  if (a->apply_total[AGENT_APPLY_ACK] + a->apply_total[AGENT_APPLY_NACK] == 0) {
    fputs("no configuration\n", f);
    status = 503;
  } else {
    int64_t in_place = workers_revision(a);
    for (const struct listener *l = a->listeners; l != NULL; l = l->next)
      if (!l->dropped && health_listener(f, l, in_place))
        status = 503;
    if (status == 200)
      fputs("ok\n", f);
  }
  if (fclose(f) != 0) {
    free(*out);
    *out = NULL;
    return -1;
  }
  return status;
}

/* The HTTP server ----------------------------------------------------------- */

static void metrics_handle_closed(struct metrics *m) {
  if (--m->handles == 0) {
    m->magic = 0;
    free(m);
  }
}

static void on_mconn_close(uv_handle_t *h) {
  struct mconn *mc = mconn_check(h->data);
  if (--mc->handles > 0)
    return;
  struct metrics *m = mc->m;
  if (mc->prev != NULL)
    mc->prev->next = mc->next;
  else
    m->conns = mc->next;
  if (mc->next != NULL)
    mc->next->prev = mc->prev;
  m->n_conns--;
  free(mc->head);
  free(mc->body);
  mc->magic = 0;
  free(mc);
  metrics_handle_closed(m);
}

static void mconn_close(struct mconn *mc) {
  if (!uv_is_closing((uv_handle_t *)&mc->tcp)) {
    uv_close((uv_handle_t *)&mc->tcp, on_mconn_close);
    uv_close((uv_handle_t *)&mc->timer, on_mconn_close);
  }
}

static void on_written(uv_write_t *req, int status) {
  mconn_close(mconn_check(req->data));
}

static void on_mconn_timeout(uv_timer_t *t) {
  mconn_close(mconn_check(t->data));
}

/* One response, then the connection is closed ("Connection: close"). */
static void respond(struct mconn *mc, int status, const char *reason, const char *type, char *body,
                    size_t body_len, int head_only) {
  mc->responded = 1;
  uv_read_stop((uv_stream_t *)&mc->tcp);
  uv_timer_start(&mc->timer, on_mconn_timeout, MCONN_WRITE_TIMEOUT_MS, 0);
  mc->body = body;
  int n = asprintf(&mc->head,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                   "Connection: close\r\n\r\n",
                   status, reason, type, body_len, status == 405 ? "Allow: GET, HEAD\r\n" : "");
  if (n < 0) {
    mc->head = NULL;
    mconn_close(mc);
    return;
  }
  uv_buf_t bufs[2] = {uv_buf_init(mc->head, (unsigned)n),
                      uv_buf_init(body, head_only ? 0 : (unsigned)body_len)};
  mc->req.data = mc;
  if (uv_write(&mc->req, (uv_stream_t *)&mc->tcp, bufs, 2, on_written) != 0)
    mconn_close(mc);
}

static void respond_text(struct mconn *mc, int status, const char *reason, const char *text) {
  char *body = strdup(text);
  respond(mc, status, reason, "text/plain; charset=utf-8", body, body ? strlen(body) : 0, 0);
}

/* The request --------------------------------------------------------------- */

static struct metrics_request *request_check(http_parser *p) {
  struct metrics_request *r = p->data;
  if (r == NULL || r->magic != METRICS_REQUEST_MAGIC)
    abort();
  return r;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  struct metrics_request *r = request_check(p);
  if (len > sizeof(r->url) - 1 - r->url_len)
    return 1; /* too long: a parser error */
  memcpy(r->url + r->url_len, at, len);
  r->url_len += len;
  return 0;
}

/* Whether the URL's path (u parsed it from r->url) is path. */
static int path_is(const struct metrics_request *r, const struct http_parser_url *u,
                   const char *path) {
  size_t n = strlen(path);
  return (u->field_set & (1 << UF_PATH)) && u->field_data[UF_PATH].len == n &&
         memcmp(r->url + u->field_data[UF_PATH].off, path, n) == 0;
}

static int on_message_complete(http_parser *p) {
  struct metrics_request *r = request_check(p);
  struct http_parser_url u;
  http_parser_url_init(&u);
  r->url[r->url_len] = '\0';
  if (http_parser_parse_url(r->url, r->url_len, 0, &u) != 0 || !(u.field_set & (1 << UF_PATH)))
    r->status = 400;
  else if (path_is(r, &u, "/metrics") || path_is(r, &u, "/healthz"))
    r->status = p->method != HTTP_GET && p->method != HTTP_HEAD ? 405 : 200;
  else
    r->status = 404;
  r->path = path_is(r, &u, "/healthz") ? METRICS_PATH_HEALTHZ : METRICS_PATH_METRICS;
  r->head_only = p->method == HTTP_HEAD;
  http_parser_pause(p, 1); /* one request per connection */
  return 0;
}

static const http_parser_settings parser_settings = {
    .on_url = on_url,
    .on_message_complete = on_message_complete,
};

void metrics_request_init(struct metrics_request *r) {
  memset(r, 0, sizeof(*r));
  r->magic = METRICS_REQUEST_MAGIC;
  http_parser_init(&r->parser, HTTP_REQUEST);
  r->parser.data = r;
}

int metrics_request_feed(struct metrics_request *r, const char *data, size_t len) {
  if (r->status != 0)
    return r->status;
  r->seen += len;
  size_t done = http_parser_execute(&r->parser, &parser_settings, data, len);
  if (r->status != 0)
    return r->status;
  if (HTTP_PARSER_ERRNO(&r->parser) != HPE_OK || done != len)
    r->status = 400;
  else if (r->seen > METRICS_MAX_REQUEST)
    r->status = 431;
  return r->status;
}

/* The connections ------------------------------------------------------------ */

static void answer_metrics(struct mconn *mc) {
  char *text;
  size_t len;
  if (metrics_render(mc->m->a, &text, &len) != 0)
    respond_text(mc, 500, "Internal Server Error", "out of memory\n");
  else
    respond(mc, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", text, len,
            mc->request.head_only);
}

static void answer_health(struct mconn *mc) {
  char *text;
  size_t len;
  int status = metrics_health(mc->m->a, &text, &len);
  if (status < 0)
    respond_text(mc, 500, "Internal Server Error", "out of memory\n");
  else
    respond(mc, status, status == 200 ? "OK" : "Service Unavailable", "text/plain; charset=utf-8",
            text, len, mc->request.head_only);
}

static void answer(struct mconn *mc, int status) {
  switch (status) {
  case 200:
    if (mc->request.path == METRICS_PATH_HEALTHZ)
      answer_health(mc);
    else
      answer_metrics(mc);
    break;
  case 404:
    respond_text(mc, 404, "Not Found", "not found\n");
    break;
  case 405:
    respond_text(mc, 405, "Method Not Allowed", "method not allowed\n");
    break;
  case 431:
    respond_text(mc, 431, "Request Header Fields Too Large", "request too large\n");
    break;
  default:
    respond_text(mc, 400, "Bad Request", "bad request\n");
    break;
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  struct mconn *mc = mconn_check(h->data);
  *buf = uv_buf_init(mc->rbuf, sizeof(mc->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct mconn *mc = mconn_check(s->data);
  if (nread == 0 || mc->responded)
    return;
  if (nread < 0) {
    mconn_close(mc);
    return;
  }
  int status = metrics_request_feed(&mc->request, buf->base, (size_t)nread);
  if (status != 0)
    answer(mc, status);
}

/* Counts and logs (limited) a metrics connection refused at accept. */
static void metrics_refused(struct metrics *m, const struct sockaddr *peer,
                            enum budget_refusal why) {
  unsigned long long suppressed;
  if (!budget_refuse(&m->a->budget, why, uv_now(m->loop), &suppressed))
    return;
  char addr[64], more[48] = "";
  listener_addr_format((const union sockaddr_any *)peer, addr, sizeof(addr));
  if (suppressed > 0)
    snprintf(more, sizeof(more), " suppressed=%llu", suppressed);
  log_warn("agent", "metrics: client=%s refused cause=%s reason=\"%d connections open\"%s", addr,
           budget_refusal_name(why), m->n_conns, more);
}

static void on_connection(struct acceptor *a, int fd, const struct sockaddr *peer, void *data) {
  struct metrics *m = metrics_check(data);
  if (m->closing) {
    close(fd);
    return;
  }
  if (m->n_conns >= METRICS_MAX_CONNECTIONS) {
    close(fd);
    metrics_refused(m, peer, REFUSED_METRICS);
    return;
  }
  struct mconn *mc = calloc(1, sizeof(*mc));
  if (mc == NULL) {
    close(fd);
    metrics_refused(m, peer, REFUSED_OUT_OF_MEMORY);
    return;
  }
  mc->magic = MCONN_MAGIC;
  mc->m = m;
  uv_tcp_init(m->loop, &mc->tcp);
  uv_timer_init(m->loop, &mc->timer);
  mc->tcp.data = mc;
  mc->timer.data = mc;
  mc->handles = 2;
  mc->next = m->conns;
  if (m->conns != NULL)
    m->conns->prev = mc;
  m->conns = mc;
  m->n_conns++;
  m->handles++;
  metrics_request_init(&mc->request);
  uv_timer_start(&mc->timer, on_mconn_timeout, MCONN_READ_TIMEOUT_MS, 0);
  if (uv_tcp_open(&mc->tcp, fd) != 0) {
    close(fd);
    mconn_close(mc);
    return;
  }
  if (uv_read_start((uv_stream_t *)&mc->tcp, on_alloc, on_read) != 0)
    mconn_close(mc);
}

static void on_accept_error(struct acceptor *a, int err, void *data) {
  struct metrics *m = metrics_check(data);
  unsigned long long suppressed;
  if (!budget_accept_error(&m->a->budget, uv_now(m->loop), &suppressed))
    return;
  char more[48] = "";
  if (suppressed > 0)
    snprintf(more, sizeof(more), " suppressed=%llu", suppressed);
  log_warn("agent", "metrics: accept: %s: accepting paused for %d ms%s", uv_strerror(err),
           ACCEPTOR_BACKOFF_MS, more);
}

static void on_acceptor_close(struct acceptor *a, void *data) {
  metrics_handle_closed(metrics_check(data));
}

int metrics_start(struct agent *a, uv_loop_t *loop, const char *address, struct metrics **out,
                  struct tp_err *err) {
  *out = NULL;
  union sockaddr_any addr;
  if (listener_addr_resolve(address, 1, "--metrics-listen", &addr, err) != 0)
    return -1;
  int fd;
  if (listener_socket_open(&addr, 0, "--metrics-listen", address, &fd, err) != 0)
    return -1;
  struct metrics *m = calloc(1, sizeof(*m));
  if (m == NULL) {
    close(fd);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  m->magic = METRICS_MAGIC;
  m->a = a;
  m->loop = loop;
  m->handles = 1;
  int rc = acceptor_start(&m->acc, loop, fd, on_connection, on_accept_error, m);
  if (rc != 0) {
    tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "--metrics-listen: %s: %s", address, uv_strerror(rc));
    metrics_close(m);
    return -1;
  }
  union sockaddr_any bound;
  socklen_t len = sizeof(bound);
  if (getsockname(fd, &bound.sa, &len) == 0)
    listener_addr_format(&bound, m->address, sizeof(m->address));
  *out = m;
  return 0;
}

const char *metrics_address(const struct metrics *m) {
  return m->address;
}

void metrics_close(struct metrics *m) {
  if (m == NULL || m->closing)
    return;
  m->closing = 1;
  for (struct mconn *mc = m->conns; mc != NULL; mc = mc->next)
    mconn_close(mc);
  acceptor_close(&m->acc, on_acceptor_close);
}
