/* tlsplane-agent, standalone: serves the listeners of a snapshot file.
 *
 * The main thread owns the process context (struct agent), the snapshot
 * source, the metrics endpoint and the signals; the workers (worker.c)
 * carry the connections. See agent/README.md for the command line. */
#include <getopt.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "apply.h"
#include "log.h"
#include "metrics.h"
#include "source.h"
#include "worker.h"

#define DEFAULT_METRICS_LISTEN "127.0.0.1:9443"
#define MAX_WORKERS 256

struct options {
  const char *config;
  const char *metrics_listen;
  int workers;
};

/* Everything the main loop's callbacks need. */
struct main_ctx {
  struct agent a;
  struct source *source;
  struct metrics *metrics;
  uv_signal_t sighup, sigterm, sigint;
  uv_async_t worker_done;
  int n_joined;
  int stopping; /* 0: running, 1: draining, 2: forced */
};

static void usage(FILE *f) {
  fprintf(f,
          "Usage: tlsplane-agent --config SNAPSHOT.json [--metrics-listen HOST:PORT|off]\n"
          "                      [--workers N]\n"
          "\n"
          "Terminates TLS for the listeners of a snapshot (tlsplane.v1.Snapshot in\n"
          "protobuf's JSON mapping) and forwards cleartext to their upstreams.\n"
          "\n"
          "  --config FILE            the snapshot; SIGHUP reads it again   [TLSPLANE_CONFIG]\n"
          "  --metrics-listen ADDR    Prometheus GET /metrics on HOST:PORT, \"off\" to disable\n"
          "                           (default %s)            [TLSPLANE_METRICS_LISTEN]\n"
          "  --workers N              worker threads (default: one per core)  [TLSPLANE_WORKERS]\n"
          "  -h, --help               this help\n"
          "\n"
          "Signals: SIGHUP reloads the snapshot; SIGTERM/SIGINT stop accepting, close idle\n"
          "connections and give the others %d s (a second signal closes them at once).\n"
          "Exit status: 0 after a clean stop, 1 when the agent cannot start, 2 on bad usage.\n",
          DEFAULT_METRICS_LISTEN, WORKER_GRACE_MS / 1000);
}

static int parse_workers(const char *s, int *out) {
  char *end;
  long n = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || n < 1 || n > MAX_WORKERS)
    return -1;
  *out = (int)n;
  return 0;
}

/* Flags win over environment variables, which win over defaults. */
static int parse_options(int argc, char **argv, struct options *o) {
  static const struct option longopts[] = {
      {"config", required_argument, NULL, 'c'},
      {"metrics-listen", required_argument, NULL, 'm'},
      {"workers", required_argument, NULL, 'w'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *env;
  o->config = getenv("TLSPLANE_CONFIG");
  o->metrics_listen = (env = getenv("TLSPLANE_METRICS_LISTEN")) != NULL && env[0] != '\0'
                          ? env
                          : DEFAULT_METRICS_LISTEN;
  o->workers = 0;
  const char *workers = getenv("TLSPLANE_WORKERS");
  int c;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 'c':
      o->config = optarg;
      break;
    case 'm':
      o->metrics_listen = optarg;
      break;
    case 'w':
      workers = optarg;
      break;
    case 'h':
      usage(stdout);
      exit(0);
    default:
      usage(stderr);
      return -1;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "tlsplane-agent: unexpected argument \"%s\"\n", argv[optind]);
    return -1;
  }
  if (o->config == NULL || o->config[0] == '\0') {
    fprintf(stderr, "tlsplane-agent: --config (or TLSPLANE_CONFIG) is required\n");
    usage(stderr);
    return -1;
  }
  if (workers != NULL && workers[0] != '\0' && parse_workers(workers, &o->workers) != 0) {
    fprintf(stderr, "tlsplane-agent: --workers: \"%s\" is not a number from 1 to %d\n", workers,
            MAX_WORKERS);
    return -1;
  }
  if (o->workers == 0) {
    unsigned n = uv_available_parallelism();
    o->workers = n < 1 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : (int)n;
  }
  return 0;
}

/* Snapshots ------------------------------------------------------------------ */

static void apply_snapshot(struct main_ctx *m, Tlsplane__V1__Snapshot *snap) {
  struct apply_report report;
  agent_apply(&m->a, snap, &report);
  if (report.results != NULL)
    source_report(m->source, &report);
  apply_report_free(&report);
  protobuf_c_message_free_unpacked(&snap->base, NULL);
}

static void on_snapshot(Tlsplane__V1__Snapshot *snap, const struct tp_err *err, void *data) {
  struct main_ctx *m = data;
  if (snap == NULL) {
    agent_apply_error(&m->a, err);
    return;
  }
  if (m->stopping) {
    protobuf_c_message_free_unpacked(&snap->base, NULL);
    return;
  }
  apply_snapshot(m, snap);
}

/* Stopping ------------------------------------------------------------------- */

static void close_main_handles(struct main_ctx *m) {
  metrics_close(m->metrics);
  m->metrics = NULL;
  uv_close((uv_handle_t *)&m->sighup, NULL);
  uv_close((uv_handle_t *)&m->sigterm, NULL);
  uv_close((uv_handle_t *)&m->sigint, NULL);
  uv_close((uv_handle_t *)&m->worker_done, NULL);
}

static void on_worker_done(uv_async_t *h) {
  struct main_ctx *m = h->data;
  for (int i = 0; i < m->a.n_workers; i++) {
    struct worker *w = m->a.workers[i];
    if (w != NULL && worker_finished(w)) {
      worker_join(w);
      m->a.workers[i] = NULL;
      m->n_joined++;
    }
  }
  if (m->n_joined == m->a.n_workers)
    close_main_handles(m);
}

static void post_all(struct main_ctx *m, enum worker_msg_kind kind) {
  for (int i = 0; i < m->a.n_workers; i++) {
    struct worker_msg *msg = calloc(1, sizeof(*msg));
    if (msg == NULL)
      continue;
    msg->kind = kind;
    if (m->a.workers[i] != NULL)
      worker_post(m->a.workers[i], msg);
    else
      free(msg);
  }
}

static void on_stop_signal(uv_signal_t *h, int signum) {
  struct main_ctx *m = h->data;
  if (m->stopping == 0) {
    log_info("agent", "%s: stopping: no new connections, idle ones closed, %d s for the rest",
             strsignal(signum), WORKER_GRACE_MS / 1000);
    m->stopping = 1;
    post_all(m, WORKER_MSG_SHUTDOWN);
  } else if (m->stopping == 1) {
    log_info("agent", "%s again: closing every connection now", strsignal(signum));
    m->stopping = 2;
    post_all(m, WORKER_MSG_FORCE);
  }
}

static void on_sighup(uv_signal_t *h, int signum) {
  struct main_ctx *m = h->data;
  if (!m->stopping)
    source_refresh(m->source);
}

/* Main --------------------------------------------------------------------------- */

int main(int argc, char **argv) {
  struct options o;
  if (parse_options(argc, argv, &o) != 0)
    return 2;
  signal(SIGPIPE, SIG_IGN); /* a peer gone mid-write is an error code, not a signal */
  OPENSSL_init_ssl(0, NULL);

  struct main_ctx ctx = {0}; /* outlives the loops: every callback's data */
  struct main_ctx *m = &ctx;
  uv_loop_t loop;
  struct tp_err err = {0};
  Tlsplane__V1__Snapshot *snap = NULL;

  /* The first snapshot must be readable: there is nothing to serve
   * otherwise, and an operator must hear about it at once. */
  m->source = source_file_new(o.config, &loop, on_snapshot, m);
  if (m->source == NULL || source_first(m->source, &snap, &err) != 0) {
    fprintf(stderr, "tlsplane-agent: cannot load the config: %s\n",
            m->source == NULL ? "out of memory" : err.msg);
    source_close(m->source);
    return 1;
  }
  if (uv_loop_init(&loop) != 0) {
    fprintf(stderr, "tlsplane-agent: cannot make an event loop\n");
    protobuf_c_message_free_unpacked(&snap->base, NULL);
    source_close(m->source);
    return 1;
  }
  m->a.loop = &loop;
  int status = 1;

  if (strcmp(o.metrics_listen, "off") != 0 &&
      metrics_start(&m->a, &loop, o.metrics_listen, &m->metrics, &err) != 0) {
    fprintf(stderr, "tlsplane-agent: %s\n", err.msg);
    uv_run(&loop, UV_RUN_DEFAULT); /* closes what metrics_start opened */
    goto done;
  }
  uv_async_init(&loop, &m->worker_done, on_worker_done);
  m->worker_done.data = m;
  uv_signal_init(&loop, &m->sighup);
  uv_signal_init(&loop, &m->sigterm);
  uv_signal_init(&loop, &m->sigint);
  m->sighup.data = m->sigterm.data = m->sigint.data = m;

  m->a.workers = calloc((size_t)o.workers, sizeof(*m->a.workers));
  int started = 0, rc = m->a.workers != NULL ? 0 : UV_ENOMEM;
  while (rc == 0 && started < o.workers) {
    rc = worker_start(started, &m->worker_done, &m->a.workers[started]);
    if (rc == 0)
      started++;
  }
  m->a.n_workers = started;
  if (rc != 0) {
    fprintf(stderr, "tlsplane-agent: cannot start worker %d: %s\n", started, uv_strerror(rc));
    /* Those started stop at once (nothing to drain); on_worker_done joins
     * them and closes the main handles. */
    m->stopping = 1;
    post_all(m, WORKER_MSG_SHUTDOWN);
    if (started == 0)
      close_main_handles(m);
    uv_run(&loop, UV_RUN_DEFAULT);
    goto done;
  }

  apply_snapshot(m, snap);
  snap = NULL;
  uv_signal_start(&m->sighup, on_sighup, SIGHUP);
  uv_signal_start(&m->sigterm, on_stop_signal, SIGTERM);
  uv_signal_start(&m->sigint, on_stop_signal, SIGINT);
  log_info("agent", "ready: revision %lld, %d workers, metrics %s", (long long)m->a.revision,
           m->a.n_workers, m->metrics != NULL ? metrics_address(m->metrics) : "off");

  uv_run(&loop, UV_RUN_DEFAULT);
  log_info("agent", "stopped");
  status = 0;

done:
  if (snap != NULL)
    protobuf_c_message_free_unpacked(&snap->base, NULL);
  source_close(m->source);
  free(m->a.workers);
  agent_listeners_free(&m->a);
  if (uv_loop_close(&loop) != 0)
    log_error("agent", "main loop not closed cleanly");
  return status;
}
