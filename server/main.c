/* tlsplane-server: the control plane. Opens the data directory (master
 * key, CA, certificates, the store), serves the gRPC API over TLS (or
 * plaintext on loopback, when asked) with reflection and health, every
 * call authenticated, and stops cleanly on SIGTERM or SIGINT.
 *
 *   tlsplane-server [options]                     serve
 *   tlsplane-server rotate-master-key [--data-dir DIR]   re-seal every secret under a new key
 *   tlsplane-server init [--data-dir DIR] [--force]      initialise; --force: a new store
 *   tlsplane-server backup [--data-dir DIR] DEST         a consistent copy, server running or not
 *   tlsplane-server call [options] SERVICE/METHOD [JSON]  one API call (call.c) */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "acme_dns.h"
#include "addr.h"
#include "api.h"
#include "auth.h"
#include "ca.h"
#include "call.h"
#include "cli.h"
#include "crl_refresh.h"
#include "datadir.h"
#include "dhgen.h"
#include "events.h"
#include "gateway.h"
#include "grpclog.h"
#include "health.h"
#include "hub.h"
#include "jobs.h"
#include "log.h"
#include "metrics_text.h"
#include "notify.h"
#include "reflection.h"
#include "rpc.h"
#include "store.h"
#include "usage.h"

#define PROG "tlsplane-server"
#define SHUTDOWN_GRACE_MS 5000
#define SANS_MAX 32

struct options {
  const char *data_dir;
  const char *store; /* a postgres:// URI; NULL: DIR/tlsplane.db */
  const char *listen;
  const char *http_listen;
  const char *web_root;
  int plaintext;
  int threads;
  int request_timeout_ms;
  int max_streams;
  int max_peer_streams;
  int keepalive_s;
  const char *acme_dns_hook;      /* NULL: none */
  const char *acme_dns_hook_from; /* the flag or variable that set it */
  int acme_dns_hook_timeout_s;
  int crl_retry_base_ms; /* TLSPLANE_CRL_RETRY_BASE_MS; 0: the default (1 min) */
  int64_t agent_cert_lifetime_s;
  const char *sans[SANS_MAX];
  size_t n_sans;
  char *sans_env; /* TLSPLANE_SANS, split in place */
};

static void usage(FILE *out) {
  fprintf(out,
          "usage: tlsplane-server [--data-dir DIR] [--store URI] [--listen HOST:PORT]\n"
          "                       [--san NAME ...]\n"
          "                       [--http-listen HOST:PORT] [--web-root DIR]\n"
          "                       [--plaintext] [--threads N] [--request-timeout MS]\n"
          "                       [--max-streams N] [--max-peer-streams N] [--keepalive S]\n"
          "                       [--agent-cert-lifetime DURATION]\n"
          "                       [--acme-dns-hook PATH] [--acme-dns-hook-timeout S]\n"
          "                       [--log-level LEVEL] [--log-format text|json]\n"
          "       tlsplane-server rotate-master-key [--data-dir DIR] [--store URI]\n"
          "       tlsplane-server init [--data-dir DIR] [--store URI] [--force]\n"
          "       tlsplane-server backup [--data-dir DIR] DEST\n"
          "       tlsplane-server call [--server HOST:PORT] [--data-dir DIR] SERVICE/METHOD "
          "[JSON]\n"
          "\n"
          "  --data-dir DIR      data directory: tlsplane.db, the CA, the server's and the\n"
          "                      admin's credentials, master.key  [TLSPLANE_DATA_DIR, ./var]\n"
          "  --store URI         the store on PostgreSQL instead of DIR/tlsplane.db: a\n"
          "                      postgres:// or postgresql:// URI (libpq's syntax); several\n"
          "                      servers may share one database, each with a copy of the\n"
          "                      same data directory (docs/ha.md)          [TLSPLANE_STORE]\n"
          "  --listen HOST:PORT  gRPC API address        [TLSPLANE_LISTEN, 127.0.0.1:7443]\n"
          "  --http-listen HOST:PORT  HTTPS address of the JSON API (Connect protocol),\n"
          "                      /metrics and the dashboard\n"
          "                                 [TLSPLANE_HTTP_LISTEN, 127.0.0.1:7444]\n"
          "  --web-root DIR      the dashboard's files   [TLSPLANE_WEB_ROOT, " TLSPLANE_WEB_ROOT
          "]\n"
          "  --san NAME          another DNS name or IP address for the server certificate,\n"
          "                      beside localhost, 127.0.0.1 and ::1 (repeatable)\n"
          "                                      [TLSPLANE_SANS, comma-separated]\n"
          "  --plaintext         serve both ports without TLS (loopback development only;\n"
          "                      calls still need a token)   [TLSPLANE_PLAINTEXT=1]\n"
          "  --threads N         API threads (0: two per core)   [TLSPLANE_THREADS, 0]\n"
          "  --request-timeout MS  a unary call whose request is not whole MS after its\n"
          "                      headers is cancelled [TLSPLANE_REQUEST_TIMEOUT_MS, 10000]\n"
          "  --max-streams N     streaming calls (agents, Watch, reflection) at once\n"
          "                                      [TLSPLANE_MAX_STREAMS, 16384]\n"
          "  --max-peer-streams N  streaming calls without a credential per client\n"
          "                      address         [TLSPLANE_MAX_PEER_STREAMS, 16]\n"
          "  --keepalive SECONDS a client connection that answers nothing for this long\n"
          "                      (an agent's host gone, a network partition) is closed and\n"
          "                      its streams freed: a ping after two thirds of it, the rest\n"
          "                      to answer; 3 to 3600          [TLSPLANE_KEEPALIVE, 60]\n"
          "  --agent-cert-lifetime DURATION  the lifetime of the certificates issued to\n"
          "                      agents (an agent renews at two thirds of it): a number\n"
          "                      with s, m, h or d, 10m to 825d\n"
          "                                      [TLSPLANE_AGENT_CERT_LIFETIME, 30d]\n"
          "  --acme-dns-hook PATH  the command that answers ACME dns-01 challenges (for\n"
          "                      wildcards and names no listener serves): an absolute path\n"
          "                      to an executable, run without a shell; docs/acme.md\n"
          "                                      [TLSPLANE_ACME_DNS_HOOK, none]\n"
          "  --acme-dns-hook-timeout SECONDS  a run of the hook still going after this\n"
          "                      long is killed; 1 to 3600\n"
          "                                      [TLSPLANE_ACME_DNS_HOOK_TIMEOUT, 120]\n"
          "  --log-level LEVEL   lines at LEVEL and above: debug, info, warn or error;\n"
          "                      debug adds grpc core's own  [TLSPLANE_LOG_LEVEL, info]\n"
          "  --log-format FORMAT text, or json: one object a line (time, level,\n"
          "                      component, msg, and each key=value of msg)\n"
          "                                      [TLSPLANE_LOG_FORMAT, text]\n"
          "  -h, --help          this text\n"
          "  --version           the version, the git commit and the libraries' versions\n"
          "\n"
          "  The master key that seals secrets at rest is DIR/master.key, or the base64 of\n"
          "  32 bytes in TLSPLANE_MASTER_KEY. rotate-master-key re-seals every secret under\n"
          "  a new key (the server must be stopped; on PostgreSQL every server of the\n"
          "  deployment); with TLSPLANE_MASTER_KEY, the new key comes from\n"
          "  TLSPLANE_NEW_MASTER_KEY.\n"
          "\n"
          "  init makes a data directory as the first start does, without serving. A\n"
          "  directory that was initialised and lost its database refuses to start:\n"
          "  restore a backup, or init --force, which keeps the CA and the master key,\n"
          "  moves the old database aside (every resource, token and agent certificate\n"
          "  record goes with it) and makes new admin credentials.\n"
          "\n"
          "  backup writes a consistent copy of the database (safe while the server runs)\n"
          "  and the CA and admin credentials into DEST, a new directory. It never holds\n"
          "  the master key: keep that apart; a restore needs both (docs/operations.md).\n"
          "  With --store, use pg_dump instead: backup copies only tlsplane.db.\n"
          "\n"
          "  call: one unary API call, request and response in protobuf's JSON mapping\n"
          "  (tlsplane-server call --help).\n"
          "\n"
          "  Exit status: 0 after a clean stop (SIGTERM, SIGINT), 1 when the server cannot\n"
          "  start (a data directory in use by another tlsplane-server among the reasons),\n"
          "  2 on bad usage.\n");
}

static void version(void) {
  const struct cli_lib libs[] = {{"sqlite", sqlite3_libversion()}};
  cli_version_print(stdout, PROG, libs, sizeof(libs) / sizeof(libs[0]));
}

static const char *env_or(const char *name, const char *dflt) {
  const char *v = getenv(name);
  return v && v[0] ? v : dflt;
}

/* A positive count (a limit, milliseconds) from flag or variable `what`:
 * 0 and *out set, or -1 with a message. */
static int parse_positive(const char *what, const char *text, int *out) {
  char *end = NULL;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v <= 0 || v > 1000000000) {
    cli_usage_error(PROG, "%s: \"%s\" is not a positive whole number", what, text);
    return -1;
  }
  *out = (int)v;
  return 0;
}

/* A duration as "90m", "720h", "30d" or "3600s" (a unit is required), within
 * what an agent certificate may live. */
static int parse_lifetime(const char *what, const char *text, int64_t *out) {
  char *end = NULL;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  long long unit = 0;
  if (end != NULL && end != text && end[0] != '\0' && end[1] == '\0')
    unit = end[0] == 's'   ? 1
           : end[0] == 'm' ? 60
           : end[0] == 'h' ? 3600
           : end[0] == 'd' ? 86400
                           : 0;
  if (errno != 0 || unit == 0 || v <= 0 || v > API_AGENT_CERT_LIFETIME_MAX_S / unit ||
      v * unit < API_AGENT_CERT_LIFETIME_MIN_S) {
    cli_usage_error(PROG,
                    "%s: \"%s\" is not a duration from 10m to 825d (a number with s, m, h or d)",
                    what, text);
    return -1;
  }
  *out = v * unit;
  return 0;
}

/* The same from environment variable name, when it is set. */
static int env_positive(const char *name, int *out) {
  const char *v = getenv(name);
  return v != NULL && v[0] != '\0' ? parse_positive(name, v, out) : 0;
}

/* --keepalive: whole seconds, 3 to 3600. */
static int parse_keepalive(const char *what, const char *text, int *out) {
  if (parse_positive(what, text, out) != 0)
    return -1;
  if (*out < 3 || *out > 3600) {
    cli_usage_error(PROG, "%s: \"%s\" is not a number of seconds from 3 to 3600", what, text);
    return -1;
  }
  return 0;
}

static int env_keepalive(const char *name, int *out) {
  const char *v = getenv(name);
  return v != NULL && v[0] != '\0' ? parse_keepalive(name, v, out) : 0;
}

/* --acme-dns-hook-timeout: whole seconds, 1 to ACME_DNS_HOOK_TIMEOUT_MAX_S. */
static int parse_hook_timeout(const char *what, const char *text, int *out) {
  if (parse_positive(what, text, out) != 0)
    return -1;
  if (*out > ACME_DNS_HOOK_TIMEOUT_MAX_S) {
    cli_usage_error(PROG, "%s: \"%s\" is not a number of seconds from 1 to %d", what, text,
                    ACME_DNS_HOOK_TIMEOUT_MAX_S);
    return -1;
  }
  return 0;
}

static int env_hook_timeout(const char *name, int *out) {
  const char *v = getenv(name);
  return v != NULL && v[0] != '\0' ? parse_hook_timeout(name, v, out) : 0;
}

/* --store (or TLSPLANE_STORE) names a PostgreSQL database; the SQLite
 * file is always DIR/tlsplane.db. Never shows the URI: it may hold a
 * password. */
static int check_store(const char *prog, const char *store) {
  if (store == NULL || store_path_is_uri(store))
    return 0;
  cli_usage_error(prog, "--store: not a postgres:// or postgresql:// URI (without --store the "
                        "store is tlsplane.db in the data directory)");
  return -1;
}

static int parse_options(int argc, char **argv, struct options *o) {
  o->data_dir = env_or("TLSPLANE_DATA_DIR", "./var");
  o->store = env_or("TLSPLANE_STORE", NULL);
  o->listen = env_or("TLSPLANE_LISTEN", "127.0.0.1:7443");
  o->http_listen = env_or("TLSPLANE_HTTP_LISTEN", "127.0.0.1:7444");
  o->web_root = env_or("TLSPLANE_WEB_ROOT", TLSPLANE_WEB_ROOT);
  o->plaintext = strcmp(env_or("TLSPLANE_PLAINTEXT", "0"), "1") == 0;
  o->threads = atoi(env_or("TLSPLANE_THREADS", "0"));
  o->request_timeout_ms = 0;
  o->max_streams = 0;
  o->max_peer_streams = 0;
  o->keepalive_s = 0;
  o->acme_dns_hook = env_or("TLSPLANE_ACME_DNS_HOOK", NULL);
  o->acme_dns_hook_from = "TLSPLANE_ACME_DNS_HOOK";
  o->acme_dns_hook_timeout_s = ACME_DNS_HOOK_TIMEOUT_S;
  o->crl_retry_base_ms = 0;
  o->n_sans = 0;
  o->sans_env = NULL;
  const char *sans = getenv("TLSPLANE_SANS");
  if (sans != NULL && sans[0] != '\0' && (o->sans_env = strdup(sans)) != NULL) {
    char *save = NULL;
    for (char *t = strtok_r(o->sans_env, ",", &save); t != NULL && o->n_sans < SANS_MAX;
         t = strtok_r(NULL, ",", &save))
      if (t[0] != '\0')
        o->sans[o->n_sans++] = t;
  }
  if (env_positive("TLSPLANE_REQUEST_TIMEOUT_MS", &o->request_timeout_ms) != 0 ||
      env_positive("TLSPLANE_MAX_STREAMS", &o->max_streams) != 0 ||
      env_positive("TLSPLANE_MAX_PEER_STREAMS", &o->max_peer_streams) != 0 ||
      env_keepalive("TLSPLANE_KEEPALIVE", &o->keepalive_s) != 0 ||
      env_hook_timeout("TLSPLANE_ACME_DNS_HOOK_TIMEOUT", &o->acme_dns_hook_timeout_s) != 0 ||
      env_positive("TLSPLANE_CRL_RETRY_BASE_MS", &o->crl_retry_base_ms) != 0)
    return -1;
  o->agent_cert_lifetime_s = API_AGENT_CERT_LIFETIME_S;
  const char *lifetime = getenv("TLSPLANE_AGENT_CERT_LIFETIME");
  if (lifetime != NULL && lifetime[0] != '\0' &&
      parse_lifetime("TLSPLANE_AGENT_CERT_LIFETIME", lifetime, &o->agent_cert_lifetime_s) != 0)
    return -1;
  static const struct option longopts[] = {{"data-dir", required_argument, NULL, 'd'},
                                           {"store", required_argument, NULL, 'S'},
                                           {"listen", required_argument, NULL, 'l'},
                                           {"http-listen", required_argument, NULL, 'H'},
                                           {"web-root", required_argument, NULL, 'W'},
                                           {"plaintext", no_argument, NULL, 'p'},
                                           {"threads", required_argument, NULL, 't'},
                                           {"san", required_argument, NULL, 's'},
                                           {"request-timeout", required_argument, NULL, 'r'},
                                           {"max-streams", required_argument, NULL, 'm'},
                                           {"max-peer-streams", required_argument, NULL, 'P'},
                                           {"keepalive", required_argument, NULL, 'k'},
                                           {"agent-cert-lifetime", required_argument, NULL, 'A'},
                                           {"acme-dns-hook", required_argument, NULL, 'D'},
                                           {"acme-dns-hook-timeout", required_argument, NULL, 'T'},
                                           {"log-level", required_argument, NULL, 'L'},
                                           {"log-format", required_argument, NULL, 'F'},
                                           {"help", no_argument, NULL, 'h'},
                                           {"version", no_argument, NULL, 'V'},
                                           {NULL, 0, NULL, 0}};
  int c;
  opterr = 0; /* cli_bad_option says it, in one line */
  while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
    switch (c) {
    case 'd':
      o->data_dir = optarg;
      break;
    case 'S':
      o->store = optarg;
      break;
    case 'L':
      if (cli_log_level(PROG, "--log-level", optarg) != 0)
        return -1;
      break;
    case 'F':
      if (cli_log_format(PROG, "--log-format", optarg) != 0)
        return -1;
      break;
    case 'l':
      o->listen = optarg;
      break;
    case 'H':
      o->http_listen = optarg;
      break;
    case 'W':
      o->web_root = optarg;
      break;
    case 'p':
      o->plaintext = 1;
      break;
    case 't':
      o->threads = atoi(optarg);
      break;
    case 'r':
      if (parse_positive("--request-timeout", optarg, &o->request_timeout_ms) != 0)
        return -1;
      break;
    case 'm':
      if (parse_positive("--max-streams", optarg, &o->max_streams) != 0)
        return -1;
      break;
    case 'P':
      if (parse_positive("--max-peer-streams", optarg, &o->max_peer_streams) != 0)
        return -1;
      break;
    case 'k':
      if (parse_keepalive("--keepalive", optarg, &o->keepalive_s) != 0)
        return -1;
      break;
    case 'A':
      if (parse_lifetime("--agent-cert-lifetime", optarg, &o->agent_cert_lifetime_s) != 0)
        return -1;
      break;
    case 'D':
      o->acme_dns_hook = optarg;
      o->acme_dns_hook_from = "--acme-dns-hook";
      break;
    case 'T':
      if (parse_hook_timeout("--acme-dns-hook-timeout", optarg, &o->acme_dns_hook_timeout_s) != 0)
        return -1;
      break;
    case 's':
      if (o->n_sans == SANS_MAX || optarg[0] == '\0') {
        cli_usage_error(PROG, "--san: at most %d non-empty names", SANS_MAX);
        return -1;
      }
      o->sans[o->n_sans++] = optarg;
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
  if (optind != argc) {
    cli_usage_error(PROG,
                    "unexpected argument '%s' (the commands: init, backup, "
                    "rotate-master-key, call)",
                    argv[optind]);
    return -1;
  }
  /* The hook must run when the first order needs it: refused now, not
   * then. */
  struct tp_err err = {0};
  if (o->acme_dns_hook != NULL && acme_dns_hook_check(o->acme_dns_hook, &err) != 0) {
    cli_usage_error(PROG, "%s: %s", o->acme_dns_hook_from, err.msg);
    return -1;
  }
  return check_store(PROG, o->store);
}

/* The API is served without TLS only on loopback, and only when asked:
 * listen is the address given to flag. */
static int check_address(const char *flag, const char *listen, int plaintext) {
  char host[256];
  int port;
  struct tp_err err = {0};
  if (addr_parse(listen, host, sizeof(host), &port, 1, flag, &err) != 0) {
    fprintf(stderr, "tlsplane-server: %s\n", err.msg);
    return -1;
  }
  if (!plaintext)
    return 0;
  /* What the host resolves to decides, not how its name starts:
   * "127.evil.example" is a name like any other. */
  if (host[0] == '\0') {
    fprintf(stderr,
            "tlsplane-server: --plaintext serves on loopback only, not on every address (%s)\n",
            listen);
    return -1;
  }
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
  int gai = getaddrinfo(host, NULL, &hints, &res);
  if (gai != 0) {
    fprintf(stderr,
            "tlsplane-server: --plaintext serves on loopback only, and %s does not resolve (%s)\n",
            host, gai_strerror(gai));
    return -1;
  }
  int rc = 0;
  for (struct addrinfo *ai = res; ai != NULL && rc == 0; ai = ai->ai_next) {
    if (addr_is_loopback(ai->ai_addr))
      continue;
    char shown[INET6_ADDRSTRLEN] = "?";
    getnameinfo(ai->ai_addr, ai->ai_addrlen, shown, sizeof(shown), NULL, 0, NI_NUMERICHOST);
    fprintf(stderr,
            "tlsplane-server: --plaintext serves on loopback only, and %s resolves to %s, which is "
            "not a loopback address\n",
            host, shown);
    rc = -1;
  }
  freeaddrinfo(res);
  return rc;
}

static int check_listen(const struct options *o) {
  return check_address("--listen", o->listen, o->plaintext) != 0 ||
                 check_address("--http-listen", o->http_listen, o->plaintext) != 0
             ? -1
             : 0;
}

/* Starts the HTTP gateway on --http-listen with the gRPC port's TLS
 * material; the dashboard's files when --web-root is a directory. */
static int gateway_open(const struct options *o, const struct rpc_server_opts *ropts,
                        struct rpc_server *srv, struct metrics_source *msrc, struct gateway **out) {
  struct tp_err err = {0};
  struct stat st;
  int web = o->web_root[0] != '\0' && stat(o->web_root, &st) == 0 && S_ISDIR(st.st_mode);
  if (!web)
    log_warn("server", "no dashboard: %s is not a directory (--web-root)", o->web_root);
  struct gateway_opts gopts = {.listen = o->http_listen,
                               .tls_cert_pem = ropts->tls_cert_pem,
                               .tls_key_pem = ropts->tls_key_pem,
                               .tls_client_ca_pem = ropts->tls_client_ca_pem,
                               .web_root = web ? o->web_root : NULL,
                               .rpc = srv,
                               .metrics = metrics_text,
                               .metrics_data = msrc};
  if (gateway_new(&gopts, out, &err) != 0 || gateway_start(*out, &err) != 0) {
    log_error("server", "%s", err.msg);
    return -1;
  }
  log_info("server", "HTTP gateway on %s (port %d, %s)%s%s", o->http_listen, gateway_port(*out),
           o->plaintext ? "plaintext" : "TLS", web ? ", dashboard from " : "",
           web ? o->web_root : "");
  return 0;
}

/* The options of the data-directory tools (rotate-master-key, init,
 * backup; prog: "tlsplane-server init"): --data-dir (*dir), --force when
 * force is not NULL, and exactly n_args operands after them (from
 * argv[optind]). Returns 0 to go on, or 1 with *status the exit status (0
 * after --help, 2 on bad usage). */
static int tool_options(const char *prog, int argc, char **argv, const char **dir,
                        const char **store, int *force, int n_args, int *status) {
  *dir = env_or("TLSPLANE_DATA_DIR", "./var");
  *store = env_or("TLSPLANE_STORE", NULL);
  static const struct option with_force[] = {{"data-dir", required_argument, NULL, 'd'},
                                             {"store", required_argument, NULL, 'S'},
                                             {"force", no_argument, NULL, 'f'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
  static const struct option without_force[] = {{"data-dir", required_argument, NULL, 'd'},
                                                {"store", required_argument, NULL, 'S'},
                                                {"help", no_argument, NULL, 'h'},
                                                {NULL, 0, NULL, 0}};
  const struct option *longopts = force != NULL ? with_force : without_force;
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
    if (c == 'd') {
      *dir = optarg;
    } else if (c == 'S') {
      *store = optarg;
    } else if (c == 'f') {
      *force = 1;
    } else if (c == 'h') {
      usage(stdout);
      *status = 0;
      return 1;
    } else {
      *status = cli_bad_option(prog, c, argv, longopts);
      return 1;
    }
  }
  if (argc - optind < n_args) {
    *status = cli_usage_error(prog, "DEST is missing");
    return 1;
  }
  if (argc - optind > n_args) {
    *status = cli_usage_error(prog, "unexpected argument '%s'", argv[optind + n_args]);
    return 1;
  }
  if (check_store(prog, *store) != 0) {
    *status = CLI_EXIT_USAGE;
    return 1;
  }
  return 0;
}

/* tlsplane-server rotate-master-key [--data-dir DIR] */
static int rotate_main(int argc, char **argv) {
  const char *dir, *store;
  int status;
  if (tool_options(PROG " rotate-master-key", argc, argv, &dir, &store, NULL, 0, &status) != 0)
    return status;
  char old_id[17], new_id[17];
  size_t n = 0;
  struct tp_err err = {0};
  if (datadir_rotate_master_key(dir, store, old_id, new_id, &n, &err) != 0) {
    fprintf(stderr, "tlsplane-server rotate-master-key: %s\n", err.msg);
    return 1;
  }
  printf("master key rotated: %zu secrets re-sealed under key %s (was %s)\n", n, new_id, old_id);
  if (getenv("TLSPLANE_MASTER_KEY") != NULL && getenv("TLSPLANE_MASTER_KEY")[0] != '\0')
    printf("set TLSPLANE_MASTER_KEY to the key of TLSPLANE_NEW_MASTER_KEY before the next start\n");
  return 0;
}

/* tlsplane-server init [--data-dir DIR] [--force] */
static int init_main(int argc, char **argv) {
  const char *dir, *store;
  int force = 0, status;
  if (tool_options(PROG " init", argc, argv, &dir, &store, &force, 0, &status) != 0)
    return status;
  struct tp_err err = {0};
  struct datadir_opts dopts = {.dir = dir, .init = 1, .store = store};
  struct datadir *dd = NULL;
  struct api api = {0};
  char moved[128] = "";
  int rc = datadir_open(&dopts, &dd, &err);
  int initialised = rc == 0 && datadir_initialised(dd);
  if (rc == 0 && initialised && !force)
    rc = tp_err_set(&err, GRPC_STATUS_FAILED_PRECONDITION,
                    "%s is initialised already; init --force discards its store (every resource, "
                    "token and agent certificate record) and makes new admin credentials",
                    dir);
  if (rc == 0 && initialised)
    rc = datadir_store_discard(dd, moved, sizeof(moved), &err);
  if (rc == 0)
    rc = datadir_store_open(dd, &api.store, &err);
  api.ca = rc == 0 ? datadir_ca(dd) : NULL;
  if (rc == 0)
    rc = api_seed_builtins(&api, &err);
  if (rc == 0)
    rc = datadir_init(dd, &api, &err);
  store_close(api.store);
  datadir_close(dd);
  if (rc != 0) {
    fprintf(stderr, "tlsplane-server init: %s\n", err.msg);
    return 1;
  }
  if (!initialised) {
    printf("initialised %s: the control-plane CA, the master key and the admin credentials "
           "(admin.token, admin.pem)\n",
           dir);
    return 0;
  }
  printf("re-initialised %s with a new, empty store\n", dir);
  if (moved[0] != '\0')
    printf("  discarded: the old database, moved to %s/%s (every resource, token, client "
           "certificate record and the audit trail; delete it once you no longer need it)\n",
           dir, moved);
  else
    printf("  discarded: nothing (the database was missing or empty)\n");
  printf("  kept: the CA (ca.pem, ca-key.pem), the master key, the server certificate\n"
         "  made: new admin credentials (admin.token, admin.pem, admin-key.pem; the old ones no "
         "longer work) and the built-in cipher policies\n"
         "  agents must enroll again with new join tokens: their certificate records are gone\n");
  return 0;
}

/* tlsplane-server backup [--data-dir DIR] DEST */
static int backup_main(int argc, char **argv) {
  const char *dir, *store;
  int status;
  if (tool_options(PROG " backup", argc, argv, &dir, &store, NULL, 1, &status) != 0)
    return status;
  const char *dest = argv[optind];
  struct tp_err err = {0};
  struct store_backup_info info;
  if (datadir_backup(dir, store, dest, &info, &err) != 0) {
    fprintf(stderr, "tlsplane-server backup: %s\n", err.msg);
    return 1;
  }
  printf("backup of %s at revision %lld written to %s\n", dir, (long long)info.revision, dest);
  char ids[4 * sizeof(info.key_ids)] = "";
  for (size_t i = 0; i < info.n_key_ids; i++)
    snprintf(ids + strlen(ids), sizeof(ids) - strlen(ids), "%s%s", i ? " or " : "",
             info.key_ids[i]);
  printf("it does not hold the master key: a restore needs master key %s (%s/master.key or "
         "TLSPLANE_MASTER_KEY), kept apart from the backup\n",
         ids[0] ? ids : "(none sealed anything yet)", dir);
  return 0;
}

static const char *bracketed(const char *host, char *buf, size_t len) {
  snprintf(buf, len, strchr(host, ':') ? "[%s]" : "%s", host);
  return buf;
}

int main(int argc, char **argv) {
  /* The log settings of the variables for every command; the server's
   * flags may change them below. */
  if (cli_log_level(PROG, "TLSPLANE_LOG_LEVEL", getenv("TLSPLANE_LOG_LEVEL")) != 0 ||
      cli_log_format(PROG, "TLSPLANE_LOG_FORMAT", getenv("TLSPLANE_LOG_FORMAT")) != 0)
    return CLI_EXIT_USAGE;
  grpclog_route(); /* grpc core's lines in our format, escaped, before grpc_init */
  if (argc >= 2 && strcmp(argv[1], "rotate-master-key") == 0)
    return rotate_main(argc - 1, argv + 1);
  if (argc >= 2 && strcmp(argv[1], "call") == 0)
    return call_main(argc - 1, argv + 1);
  if (argc >= 2 && strcmp(argv[1], "init") == 0)
    return init_main(argc - 1, argv + 1);
  if (argc >= 2 && strcmp(argv[1], "backup") == 0)
    return backup_main(argc - 1, argv + 1);
  struct options o;
  if (parse_options(argc, argv, &o) != 0 || check_listen(&o) != 0) {
    free(o.sans_env);
    return CLI_EXIT_USAGE;
  }
  grpclog_route(); /* again: grpc core's verbosity follows --log-level */

  /* Signals are taken by sigwait below; every thread inherits the mask. */
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, NULL);
  signal(SIGPIPE, SIG_IGN);

  struct tp_err err = {0};
  struct api api = {0};
  struct datadir *dd = NULL;
  struct rpc_server *srv = NULL;
  struct gateway *gw = NULL;
  struct jobs *jobs = NULL;
  struct hub *hub = NULL;
  int status = 1;
  struct datadir_opts dopts = {
      .dir = o.data_dir, .sans = o.sans, .n_sans = o.n_sans, .store = o.store};
  if (datadir_open(&dopts, &dd, &err) != 0) {
    log_error("server", "%s", err.msg);
    free(o.sans_env);
    return 1;
  }
  if (datadir_store_open(dd, &api.store, &err) != 0) {
    log_error("server", "%s", err.msg);
    goto close_datadir;
  }
  store_set_audit_hook(api.store, api_audit_log, NULL); /* every write, logged */
  api.ca = datadir_ca(dd);
  api.agent_cert_lifetime_s = o.agent_cert_lifetime_s;
  const struct acme_dns_hook dns_hook = {.path = o.acme_dns_hook,
                                         .timeout_s = o.acme_dns_hook_timeout_s};
  if (o.acme_dns_hook != NULL) {
    api.acme_dns_hook = &dns_hook;
    log_info("server", "ACME dns-01 through the hook %s (timeout %d s)", o.acme_dns_hook,
             o.acme_dns_hook_timeout_s);
  }
  if ((api.usage = usage_new()) == NULL ||
      (api.crl_refresh = crl_refresh_new(o.crl_retry_base_ms)) == NULL) {
    log_error("server", "out of memory");
    goto close_store;
  }
  if (api_seed_builtins(&api, &err) != 0) {
    log_error("server", "built-in resources: %s", err.msg);
    goto close_store;
  }
  if (datadir_init(dd, &api, &err) != 0) {
    log_error("server", "data directory %s: %s", o.data_dir, err.msg);
    goto close_store;
  }
  if (events_new(&api, &api.events, &err) != 0) {
    log_error("server", "%s", err.msg);
    goto close_store;
  }
  if (hub_new(&api, &hub, &err) != 0) {
    log_error("server", "%s", err.msg);
    goto close_store;
  }
  api.hub = hub;
  struct rpc_server_opts ropts = {.listen = o.listen,
                                  .threads = o.threads,
                                  .request_timeout_ms = o.request_timeout_ms,
                                  .max_streams = o.max_streams,
                                  .max_peer_streams = o.max_peer_streams,
                                  .keepalive_ms = o.keepalive_s * 1000,
                                  /* A write holds a store connection while it is
                                   * validated: half of them stay for reads. */
                                  .max_writes = store_connections(api.store) / 2,
                                  .auth = auth_call,
                                  .auth_data = &api};
  if (!o.plaintext) {
    ropts.tls_cert_pem = datadir_server_cert_pem(dd);
    ropts.tls_key_pem = datadir_server_key_pem(dd);
    ropts.tls_client_ca_pem = ca_cert_pem(api.ca);
  }
  if (rpc_server_new(&ropts, &srv, &err) != 0) {
    log_error("server", "%s", err.msg);
    goto close_store;
  }
  const char *services[16];
  size_t n_services = api_service_names(services, 16);
  if (api_register_all(&api, srv) != 0 || hub_register(hub, srv) != 0 ||
      events_register(api.events, srv) != 0 || health_register(srv, services, n_services) != 0 ||
      reflection_register(srv, services, n_services) != 0) {
    log_error("server", "registering the API services failed");
    goto free_server;
  }
  if (rpc_server_start(srv, &err) != 0) {
    log_error("server", "%s", err.msg);
    goto free_server;
  }
  if (jobs_start(&api, &jobs, &err) != 0) {
    log_error("server", "%s", err.msg);
    goto free_server;
  }
  if (dhgen_start(&api, &api.dhgen, &err) != 0) {
    log_error("server", "%s", err.msg);
    goto free_server;
  }
  struct metrics_source msrc = {.api = &api, .hub = hub, .rpc = srv};
  if (gateway_open(&o, &ropts, srv, &msrc, &gw) != 0)
    goto free_server;
  char host[256], shown[260];
  int port;
  struct tp_err ignored = {0};
  if (addr_parse(o.listen, host, sizeof(host), &port, 1, "listen", &ignored) != 0)
    snprintf(host, sizeof(host), "127.0.0.1");
  bracketed(host, shown, sizeof(shown));
  char store_shown[1024];
  if (o.store != NULL)
    store_path_display(o.store, store_shown, sizeof(store_shown)); /* without its password */
  else
    snprintf(store_shown, sizeof(store_shown), "%s/tlsplane.db", o.data_dir);
  log_info("server", "listening on %s:%d (%s), data in %s, store %s, revision %lld", shown,
           rpc_server_port(srv), o.plaintext ? "plaintext" : "TLS", o.data_dir, store_shown,
           (long long)store_revision(api.store));
  /* The command that works with the files just made; the token itself
   * never reaches the log. */
  log_info("server",
           "try: grpcurl %s%s%s -H \"authorization: Bearer $(cat %s/admin.token)\" %s:%d list",
           o.plaintext ? "-plaintext" : "-cacert ", o.plaintext ? "" : o.data_dir,
           o.plaintext ? "" : "/ca.pem", o.data_dir, shown, rpc_server_port(srv));

  notify_service("READY=1");

  int sig = 0;
  sigwait(&stop, &sig);
  notify_service("STOPPING=1");
  log_info("server", "%s: stopping; in-flight calls finish first", strsignal(sig));
  gateway_shutdown(gw, SHUTDOWN_GRACE_MS);
  rpc_server_shutdown(srv, SHUTDOWN_GRACE_MS);
  status = 0;
free_server:
  gateway_free(gw);
  jobs_stop(jobs);
  dhgen_stop(api.dhgen);
  api.dhgen = NULL;
  /* Every thread of ours that makes grpc slices stops before the RPC
   * server's free releases grpc; the commit hook then finds no events
   * (a commit after this point wakes nobody), and the store's watch,
   * which would wake the events, has stopped. */
  store_watch_stop(api.store);
  events_free(api.events);
  api.events = NULL;
  rpc_server_free(srv);
close_store:
  hub_free(hub);
  events_free(api.events);
  store_close(api.store);
  usage_free(api.usage);
  crl_refresh_free(api.crl_refresh);
close_datadir:
  datadir_close(dd);
  free(o.sans_env);
  if (status == 0)
    log_info("server", "stopped");
  return status;
}
