/* tlsplane-agent: serves the listeners of the snapshots it receives from
 * tlsplane-server (control-plane mode: source_stream.c), or of a snapshot
 * file (standalone: source_file.c).
 *
 * The main thread owns the process context (struct agent), the snapshot
 * source, the metrics endpoint and the signals; the workers (worker.c)
 * carry the connections. See agent/README.md for the command line. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <http_parser.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "apply.h"
#include "cli.h"
#include "grpclog.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "recbuf.h"
#include "source.h"
#include "worker.h"

#define PROG "tlsplane-agent"
#define DEFAULT_METRICS_LISTEN "127.0.0.1:9443"
#define MAX_WORKERS LISTENER_MAX_WORKERS
#define MAX_LABELS 64
/* --keepalive: the bound on noticing a silent server, in seconds. The
 * server accepts pings every second (server/rpc.c): the shortest bound
 * pings every 2 s. */
#define KEEPALIVE_DEFAULT_S 30
#define KEEPALIVE_MIN_S 3
#define KEEPALIVE_MAX_S 3600

#ifndef TLSPLANE_VERSION
#define TLSPLANE_VERSION "0.0.0"
#endif

struct options {
  const char *config; /* standalone */
  const char *metrics_listen;
  int workers;
  /* Control-plane mode. */
  const char *server, *ca, *join_token, *cert, *key, *name, *cache_dir;
  const char *label_keys[MAX_LABELS], *label_values[MAX_LABELS];
  size_t n_labels;
  char *label_store[MAX_LABELS]; /* "key\0value" each, malloc'd */
  char *server_store;            /* the --server flags joined with ',' (malloc'd) */
  int renew_now;
  int retry_max_ms;
  int keepalive_s; /* a silent server is left within this bound */
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
          "Usage: tlsplane-agent --server HOST:PORT... --ca FILE --name NAME --cache-dir DIR\n"
          "                      [--join-token TOKEN | --cert FILE --key FILE]\n"
          "                      [--label KEY=VALUE ...] [--metrics-listen HOST:PORT|off]\n"
          "                      [--workers N] [--log-level LEVEL] [--log-format text|json]\n"
          "       tlsplane-agent --config SNAPSHOT.json [--metrics-listen HOST:PORT|off]\n"
          "                      [--workers N] [--log-level LEVEL] [--log-format text|json]\n"
          "       tlsplane-agent --version | --help\n"
          "\n"
          "Terminates TLS for the listeners of the snapshots tlsplane-server pushes (or of a\n"
          "snapshot file: tlsplane.v1.Snapshot in protobuf's JSON mapping) and forwards\n"
          "cleartext to their upstreams.\n"
          "\n"
          "Control plane:\n"
          "  --server HOST:PORT       tlsplane-server's API; repeatable: the agent fails over\n"
          "                           to the next when its stream fails\n"
          "                                         [TLSPLANE_SERVER, comma-separated]\n"
          "  --ca FILE                the control-plane CA (verifies the server) [TLSPLANE_CA]\n"
          "  --join-token TOKEN       one-time token: enrolls when DIR holds no usable agent\n"
          "                           certificate                          [TLSPLANE_JOIN_TOKEN]\n"
          "  --cert FILE, --key FILE  or a client certificate (CN=agent:NAME) and its key\n"
          "                                                       [TLSPLANE_CERT, TLSPLANE_KEY]\n"
          "  --name NAME              the agent id (\"edge-1\")                  [TLSPLANE_NAME]\n"
          "  --label KEY=VALUE        a label, for listeners' agent selectors (repeatable)\n"
          "                                               [TLSPLANE_LABELS, comma-separated]\n"
          "  --cache-dir DIR          the last snapshot applied (served at start, before the\n"
          "                           server answers) and the agent's key and certificate\n"
          "                                                               [TLSPLANE_CACHE_DIR]\n"
          "  --keepalive SECONDS      a server that answers nothing for this long (a network\n"
          "                           partition, its host gone) is left for the next: a ping\n"
          "                           after two thirds of it, the rest to answer; %d to %d\n"
          "                                                      [TLSPLANE_KEEPALIVE, %d]\n"
          "Standalone:\n"
          "  --config FILE            the snapshot; SIGHUP reads it again   [TLSPLANE_CONFIG]\n"
          "Both:\n"
          "  --metrics-listen ADDR    GET /metrics, /healthz on HOST:PORT; \"off\" to disable\n"
          "                           (default %s)            [TLSPLANE_METRICS_LISTEN]\n"
          "  --workers N              worker threads (default: one per core)  [TLSPLANE_WORKERS]\n"
          "  --log-level LEVEL        lines at LEVEL and above: debug, info, warn, error;\n"
          "                           debug adds grpc core's own  [TLSPLANE_LOG_LEVEL, info]\n"
          "  --log-format FORMAT      text, or json: one object a line (time, level,\n"
          "                           component, msg, each key=value of msg)\n"
          "                                                  [TLSPLANE_LOG_FORMAT, text]\n"
          "  -h, --help               this help\n"
          "  --version                the version, the git commit, the libraries' versions\n"
          "\n"
          "A flag wins over its variable. Without a join token the cache dir must hold an\n"
          "enrolled certificate. Tests: TLSPLANE_RENEW_NOW=1 renews the agent certificate once,\n"
          "right after the first snapshot (it is otherwise renewed two thirds into its\n"
          "validity); TLSPLANE_RETRY_MAX_MS caps the wait between connection attempts\n"
          "(default 30000: 0.5 s doubling to 30 s, with jitter).\n"
          "\n"
          "Signals: SIGHUP reloads the snapshot file (standalone) or skips the wait before the\n"
          "next connection attempt (control plane); SIGTERM/SIGINT stop accepting, close idle\n"
          "connections and give the others %d s (a second signal closes them at once).\n"
          "Exit status: 0 after a clean stop, 1 when the agent cannot start, 2 on bad usage.\n",
          KEEPALIVE_MIN_S, KEEPALIVE_MAX_S, KEEPALIVE_DEFAULT_S, DEFAULT_METRICS_LISTEN,
          WORKER_GRACE_MS / 1000);
}

static void version(void) {
  char http_parser[32];
  unsigned long v = http_parser_version();
  snprintf(http_parser, sizeof(http_parser), "%lu.%lu.%lu", (v >> 16) & 255, (v >> 8) & 255,
           v & 255);
  const struct cli_lib libs[] = {{"libuv", uv_version_string()}, {"http-parser", http_parser}};
  cli_version_print(stdout, PROG, libs, sizeof(libs) / sizeof(libs[0]));
}

static int parse_workers(const char *s, int *out) {
  char *end;
  long n = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || n < 1 || n > MAX_WORKERS)
    return -1;
  *out = (int)n;
  return 0;
}

static const char *env(const char *name) {
  const char *v = getenv(name);
  return v != NULL && v[0] != '\0' ? v : NULL;
}

/* An agent id, as the server's names want it: 1 to 63 lower-case letters,
 * digits and '-', starting with a letter. */
static int valid_id(const char *s) {
  size_t n = strlen(s);
  if (n < 1 || n > 63 || !islower((unsigned char)s[0]))
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!islower((unsigned char)s[i]) && !isdigit((unsigned char)s[i]) && s[i] != '-')
      return 0;
  return 1;
}

static void options_free(struct options *o) {
  for (size_t i = 0; i < o->n_labels; i++)
    free(o->label_store[i]);
  o->n_labels = 0;
  free(o->server_store);
  o->server_store = NULL;
}

/* --keepalive (or TLSPLANE_KEEPALIVE): whole seconds within the bounds;
 * NULL: the default. */
static int parse_keepalive(const char *what, const char *text, int *out) {
  *out = KEEPALIVE_DEFAULT_S;
  if (text == NULL)
    return 0;
  char *end;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno != 0 || *text == '\0' || *end != '\0' || v < KEEPALIVE_MIN_S || v > KEEPALIVE_MAX_S) {
    cli_usage_error(PROG, "%s: \"%s\" is not a number of seconds from %d to %d", what, text,
                    KEEPALIVE_MIN_S, KEEPALIVE_MAX_S);
    return -1;
  }
  *out = (int)v;
  return 0;
}

/* Appends a --server flag to the list (joined with ','). */
static int add_server(struct options *o, const char *addr) {
  size_t old = o->server_store != NULL ? strlen(o->server_store) : 0;
  char *joined = realloc(o->server_store, old + strlen(addr) + 2);
  if (joined == NULL)
    return -1;
  if (old > 0)
    joined[old++] = ',';
  strcpy(joined + old, addr);
  o->server_store = joined;
  return 0;
}

/* A server list: HOST:PORT entries separated by ',', none empty. */
static int valid_servers(const char *what, const char *list) {
  size_t n = strlen(list);
  if (n == 0 || list[0] == ',' || list[n - 1] == ',' || strstr(list, ",,") != NULL) {
    cli_usage_error(PROG, "%s: \"%s\" has an empty address (HOST:PORT[,HOST:PORT...])", what, list);
    return -1;
  }
  return 0;
}

/* Adds "k=v" (copied). */
static int add_label(struct options *o, const char *text) {
  const char *eq = strchr(text, '=');
  if (eq == NULL || eq == text) {
    cli_usage_error(PROG, "--label: \"%s\" is not KEY=VALUE", text);
    return -1;
  }
  if (o->n_labels == MAX_LABELS) {
    cli_usage_error(PROG, "--label: at most %d labels", MAX_LABELS);
    return -1;
  }
  char *kv = strdup(text);
  if (kv == NULL)
    return -1;
  kv[eq - text] = '\0';
  for (size_t i = 0; i < o->n_labels; i++)
    if (strcmp(o->label_keys[i], kv) == 0) {
      cli_usage_error(PROG, "--label: \"%s\" given twice", kv);
      free(kv);
      return -1;
    }
  o->label_store[o->n_labels] = kv;
  o->label_keys[o->n_labels] = kv;
  o->label_values[o->n_labels++] = kv + (eq - text) + 1;
  return 0;
}

/* Flags win over environment variables, which win over defaults. */
static int parse_options(int argc, char **argv, struct options *o) {
  static const struct option longopts[] = {
      {"config", required_argument, NULL, 'c'},
      {"metrics-listen", required_argument, NULL, 'm'},
      {"workers", required_argument, NULL, 'w'},
      {"server", required_argument, NULL, 's'},
      {"ca", required_argument, NULL, 'A'},
      {"join-token", required_argument, NULL, 'j'},
      {"cert", required_argument, NULL, 'C'},
      {"key", required_argument, NULL, 'K'},
      {"name", required_argument, NULL, 'n'},
      {"label", required_argument, NULL, 'l'},
      {"cache-dir", required_argument, NULL, 'd'},
      {"keepalive", required_argument, NULL, 'k'},
      {"log-level", required_argument, NULL, 'L'},
      {"log-format", required_argument, NULL, 'F'},
      {"help", no_argument, NULL, 'h'},
      {"version", no_argument, NULL, 'V'},
      {NULL, 0, NULL, 0},
  };
  memset(o, 0, sizeof(*o));
  if (cli_log_level(PROG, "TLSPLANE_LOG_LEVEL", env("TLSPLANE_LOG_LEVEL")) != 0 ||
      cli_log_format(PROG, "TLSPLANE_LOG_FORMAT", env("TLSPLANE_LOG_FORMAT")) != 0)
    return -1;
  const char *metrics = env("TLSPLANE_METRICS_LISTEN");
  o->metrics_listen = metrics != NULL ? metrics : DEFAULT_METRICS_LISTEN;
  const char *workers = getenv("TLSPLANE_WORKERS");
  const char *keepalive = env("TLSPLANE_KEEPALIVE");
  const char *keepalive_what = "TLSPLANE_KEEPALIVE";
  const char *config_flag = NULL, *server_flag = NULL;
  const char *flag_ca = NULL, *flag_token = NULL, *flag_cert = NULL, *flag_key = NULL,
             *flag_name = NULL, *flag_cache = NULL;
  int flag_labels = 0;
  int c;
  opterr = 0; /* cli_bad_option says it, in one line */
  while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
    switch (c) {
    case 'L':
      if (cli_log_level(PROG, "--log-level", optarg) != 0)
        return -1;
      break;
    case 'F':
      if (cli_log_format(PROG, "--log-format", optarg) != 0)
        return -1;
      break;
    case 'c':
      config_flag = optarg;
      break;
    case 'm':
      o->metrics_listen = optarg;
      break;
    case 'w':
      workers = optarg;
      break;
    case 's':
      if (add_server(o, optarg) != 0)
        return -1;
      server_flag = o->server_store;
      break;
    case 'A':
      flag_ca = optarg;
      break;
    case 'j':
      flag_token = optarg;
      break;
    case 'C':
      flag_cert = optarg;
      break;
    case 'K':
      flag_key = optarg;
      break;
    case 'n':
      flag_name = optarg;
      break;
    case 'd':
      flag_cache = optarg;
      break;
    case 'k':
      keepalive = optarg;
      keepalive_what = "--keepalive";
      break;
    case 'l':
      flag_labels = 1;
      if (add_label(o, optarg) != 0)
        return -1;
      break;
    case 'h':
      usage(stdout);
      exit(0);
    case 'V':
      version();
      exit(0);
    default:
      cli_bad_option(PROG, c, argv, longopts);
      return -1;
    }
  }
  if (optind < argc) {
    cli_usage_error(PROG, "unexpected argument '%s'", argv[optind]);
    return -1;
  }
  if (workers != NULL && workers[0] != '\0' && parse_workers(workers, &o->workers) != 0) {
    cli_usage_error(PROG, "--workers: \"%s\" is not a number from 1 to %d", workers, MAX_WORKERS);
    return -1;
  }
  if (o->workers == 0) {
    unsigned n = uv_available_parallelism();
    o->workers = n < 1 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : (int)n;
  }

  /* Which mode: a flag for one wins over the other's variable. */
  if (config_flag != NULL && server_flag != NULL) {
    cli_usage_error(PROG, "--config (standalone) and --server (control plane) exclude each other");
    return -1;
  }
  if (config_flag != NULL) {
    o->config = config_flag;
  } else if (server_flag != NULL) {
    o->server = server_flag;
  } else if (env("TLSPLANE_CONFIG") != NULL && env("TLSPLANE_SERVER") != NULL) {
    cli_usage_error(PROG, "set only one of TLSPLANE_CONFIG and TLSPLANE_SERVER");
    return -1;
  } else {
    o->config = env("TLSPLANE_CONFIG");
    o->server = env("TLSPLANE_SERVER");
  }
  if (o->config == NULL && o->server == NULL) {
    cli_usage_error(PROG, "--server (or TLSPLANE_SERVER) or --config (or TLSPLANE_CONFIG) is "
                          "required");
    return -1;
  }
  if (o->config != NULL)
    return 0;
  if (valid_servers(server_flag != NULL ? "--server" : "TLSPLANE_SERVER", o->server) != 0)
    return -1;

  o->ca = flag_ca != NULL ? flag_ca : env("TLSPLANE_CA");
  o->name = flag_name != NULL ? flag_name : env("TLSPLANE_NAME");
  o->cache_dir = flag_cache != NULL ? flag_cache : env("TLSPLANE_CACHE_DIR");
  /* The credential: given by flags, the variables are not looked at. */
  if (flag_token != NULL || flag_cert != NULL || flag_key != NULL) {
    o->join_token = flag_token;
    o->cert = flag_cert;
    o->key = flag_key;
  } else {
    o->join_token = env("TLSPLANE_JOIN_TOKEN");
    o->cert = env("TLSPLANE_CERT");
    o->key = env("TLSPLANE_KEY");
  }
  const char *labels = env("TLSPLANE_LABELS");
  if (!flag_labels && labels != NULL) {
    char *copy = strdup(labels), *save = NULL;
    int rc = copy != NULL ? 0 : -1;
    for (char *t = copy != NULL ? strtok_r(copy, ",", &save) : NULL; rc == 0 && t != NULL;
         t = strtok_r(NULL, ",", &save))
      rc = add_label(o, t);
    free(copy);
    if (rc != 0)
      return -1;
  }
  o->renew_now = env("TLSPLANE_RENEW_NOW") != NULL && strcmp(env("TLSPLANE_RENEW_NOW"), "0") != 0;
  const char *retry = env("TLSPLANE_RETRY_MAX_MS");
  o->retry_max_ms = retry != NULL ? atoi(retry) : 0;
  if (o->retry_max_ms < 0 || o->retry_max_ms > 3600 * 1000) {
    cli_usage_error(PROG, "TLSPLANE_RETRY_MAX_MS: \"%s\" is not 0 to 3600000", retry);
    return -1;
  }
  if (parse_keepalive(keepalive_what, keepalive, &o->keepalive_s) != 0)
    return -1;
  const char *missing = o->ca == NULL          ? "--ca (or TLSPLANE_CA)"
                        : o->name == NULL      ? "--name (or TLSPLANE_NAME)"
                        : o->cache_dir == NULL ? "--cache-dir (or TLSPLANE_CACHE_DIR)"
                                               : NULL;
  if (missing != NULL) {
    cli_usage_error(PROG, "%s is required with --server", missing);
    return -1;
  }
  if (!valid_id(o->name)) {
    cli_usage_error(PROG,
                    "--name: \"%s\" is not an agent id (1 to 63 lower-case letters, digits and "
                    "'-', starting with a letter)",
                    o->name);
    return -1;
  }
  if ((o->cert == NULL) != (o->key == NULL)) {
    cli_usage_error(PROG, "--cert and --key go together");
    return -1;
  }
  if (o->cert != NULL && o->join_token != NULL) {
    cli_usage_error(PROG, "--join-token and --cert/--key exclude each other");
    return -1;
  }
  return 0;
}

/* Snapshots ------------------------------------------------------------------ */

static void apply_config(struct main_ctx *m, const struct rset *set, int64_t revision) {
  struct apply_report report;
  agent_apply(&m->a, set, revision, &report);
  if (report.results != NULL)
    source_report(m->source, &report);
  apply_report_free(&report);
}

static void on_config(const struct rset *set, int64_t revision, const struct tp_err *err,
                      void *data) {
  struct main_ctx *m = data;
  if (set == NULL) {
    agent_apply_error(&m->a, err);
    return;
  }
  if (!m->stopping)
    apply_config(m, set, revision);
}

/* Stopping ------------------------------------------------------------------- */

static void close_main_handles(struct main_ctx *m) {
  source_stop(m->source);
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
    notify_service("STOPPING=1");
    log_info("agent", "%s: stopping: no new connections, idle ones closed, %d s for the rest",
             strsignal(signum), WORKER_GRACE_MS / 1000);
    m->stopping = 1;
    source_stop(m->source); /* the control plane sees this agent go at once */
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

static struct source *source_new(const struct options *o, struct main_ctx *m, uv_loop_t *loop) {
  if (o->config != NULL)
    return source_file_new(o->config, loop, on_config, m);
  struct stream_config cfg = {
      .server = o->server,
      .ca_path = o->ca,
      .join_token = o->join_token,
      .cert_path = o->cert,
      .key_path = o->key,
      .name = o->name,
      .label_keys = (const char **)o->label_keys,
      .label_values = (const char **)o->label_values,
      .n_labels = o->n_labels,
      .cache_dir = o->cache_dir,
      .version = "tlsplane-agent/" TLSPLANE_VERSION,
      .renew_now = o->renew_now,
      .retry_max_ms = o->retry_max_ms,
      .keepalive_ms = o->keepalive_s * 1000,
  };
  return source_stream_new(&cfg, &m->a, loop, on_config, m);
}

int main(int argc, char **argv) {
  /* Before anything calls into OpenSSL; without it, plain malloc. */
  (void)recbuf_install();
  struct options o;
  if (parse_options(argc, argv, &o) != 0) {
    options_free(&o);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN); /* a peer gone mid-write is an error code, not a signal */
  OPENSSL_init_ssl(0, NULL);
  grpclog_route();
  /* A worker never waits for stderr (log.h); when the thread cannot start,
   * lines are written synchronously. */
  (void)log_async_start();

  struct main_ctx ctx = {0}; /* outlives the loops: every callback's data */
  struct main_ctx *m = &ctx;
  uv_loop_t loop;
  struct tp_err err = {0};
  const struct rset *first = NULL;
  int64_t first_revision = 0;

  if (uv_loop_init(&loop) != 0) {
    log_error("agent", "cannot make an event loop");
    options_free(&o);
    log_async_stop();
    return 1;
  }
  m->a.loop = &loop;
  if (tlsconf_listener_cache_new(&m->a.ctxcache) != 0) {
    log_error("agent", "out of memory");
    uv_loop_close(&loop);
    options_free(&o);
    log_async_stop();
    return 1;
  }
  /* The first snapshot: the file must be readable (there is nothing to
   * serve otherwise, and an operator must hear about it at once); the
   * control plane's comes from the cache, if any, and the agent serves it
   * before the server answers. */
  m->source = source_new(&o, m, &loop);
  if (m->source == NULL || source_first(m->source, &first, &first_revision, &err) != 0) {
    log_error("agent", "cannot %s: %s", o.config != NULL ? "load the config" : "start",
              m->source == NULL ? "out of memory" : err.msg);
    source_close(m->source);
    tlsconf_ctxcache_unref(m->a.ctxcache);
    uv_loop_close(&loop);
    options_free(&o);
    log_async_stop();
    return 1;
  }
  int status = 1;

  if (strcmp(o.metrics_listen, "off") != 0 &&
      metrics_start(&m->a, &loop, o.metrics_listen, &m->metrics, &err) != 0) {
    log_error("agent", "%s", err.msg);
    uv_run(&loop, UV_RUN_DEFAULT); /* closes what metrics_start opened */
    goto done;
  }
  uv_async_init(&loop, &m->worker_done, on_worker_done);
  m->worker_done.data = m;
  uv_signal_init(&loop, &m->sighup);
  uv_signal_init(&loop, &m->sigterm);
  uv_signal_init(&loop, &m->sigint);
  m->sighup.data = m->sigterm.data = m->sigint.data = m;

  budget_init(&m->a.budget, o.workers);
  char raised[64] = "";
  if (m->a.budget.fd_limit > m->a.budget.fd_limit_was)
    snprintf(raised, sizeof(raised), " (soft limit raised from %ld)", m->a.budget.fd_limit_was);
  log_info("agent", "descriptors: %ld%s, %ld reserved: room for %ld client connections",
           m->a.budget.fd_limit, raised, m->a.budget.reserve, budget_connections_max(&m->a.budget));
  m->a.workers = calloc((size_t)o.workers, sizeof(*m->a.workers));
  int started = 0, rc = m->a.workers != NULL ? 0 : UV_ENOMEM;
  while (rc == 0 && started < o.workers) {
    rc = worker_start(started, &m->worker_done, &m->a.budget, &m->a.workers[started]);
    if (rc == 0)
      started++;
  }
  m->a.n_workers = started;
  if (rc != 0)
    log_error("agent", "cannot start worker %d: %s", started, uv_strerror(rc));
  if (rc == 0) {
    if (first != NULL)
      apply_config(m, first, first_revision);
    first = NULL;
    if (source_start(m->source, &err) != 0) {
      log_error("agent", "%s", err.msg);
      rc = -1;
    }
  }
  if (rc != 0) {
    /* Those started stop at once (nothing to drain); on_worker_done joins
     * them and closes the main handles. */
    m->stopping = 1;
    post_all(m, WORKER_MSG_SHUTDOWN);
    post_all(m, WORKER_MSG_FORCE);
    if (started == 0)
      close_main_handles(m);
    uv_run(&loop, UV_RUN_DEFAULT);
    goto done;
  }

  uv_signal_start(&m->sighup, on_sighup, SIGHUP);
  uv_signal_start(&m->sigterm, on_stop_signal, SIGTERM);
  uv_signal_start(&m->sigint, on_stop_signal, SIGINT);
  if (o.server != NULL)
    log_info("agent", "ready: revision %lld, %d workers, metrics %s, control plane %s as agents/%s",
             (long long)m->a.revision, m->a.n_workers,
             m->metrics != NULL ? metrics_address(m->metrics) : "off", o.server, o.name);
  else
    log_info("agent", "ready: revision %lld, %d workers, metrics %s", (long long)m->a.revision,
             m->a.n_workers, m->metrics != NULL ? metrics_address(m->metrics) : "off");
  notify_service("READY=1");

  uv_run(&loop, UV_RUN_DEFAULT);
  log_info("agent", "stopped");
  status = 0;

done:
  source_close(m->source);
  free(m->a.workers);
  agent_listeners_free(&m->a);
  /* Entries still held (none once every version is gone) keep it alive. */
  tlsconf_ctxcache_unref(m->a.ctxcache);
  if (uv_loop_close(&loop) != 0)
    log_error("agent", "main loop not closed cleanly");
  options_free(&o);
  log_async_stop();
  recbuf_thread_release();
  return status;
}
