/* tlsplane-server: the control plane. Opens the store, serves the gRPC API
 * with reflection and health, and stops cleanly on SIGTERM or SIGINT. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "addr.h"
#include "api.h"
#include "health.h"
#include "hub.h"
#include "jobs.h"
#include "log.h"
#include "reflection.h"
#include "rpc.h"
#include "store.h"

#define SHUTDOWN_GRACE_MS 5000

struct options {
  const char *data_dir;
  const char *listen;
  int plaintext;
  int threads;
};

static void usage(FILE *out) {
  fprintf(out,
          "usage: tlsplane-server [--data-dir DIR] [--listen HOST:PORT] [--plaintext]\n"
          "                       [--threads N]\n"
          "\n"
          "  --data-dir DIR      data directory, holds tlsplane.db  [TLSPLANE_DATA_DIR, ./var]\n"
          "  --listen HOST:PORT  gRPC API address        [TLSPLANE_LISTEN, 127.0.0.1:7443]\n"
          "  --plaintext         serve the API without TLS (loopback development only)\n"
          "                                               [TLSPLANE_PLAINTEXT=1]\n"
          "  --threads N         API threads (0: two per core)   [TLSPLANE_THREADS, 0]\n"
          "  --help              this text\n");
}

static const char *env_or(const char *name, const char *dflt) {
  const char *v = getenv(name);
  return v && v[0] ? v : dflt;
}

static int parse_options(int argc, char **argv, struct options *o) {
  o->data_dir = env_or("TLSPLANE_DATA_DIR", "./var");
  o->listen = env_or("TLSPLANE_LISTEN", "127.0.0.1:7443");
  o->plaintext = strcmp(env_or("TLSPLANE_PLAINTEXT", "0"), "1") == 0;
  o->threads = atoi(env_or("TLSPLANE_THREADS", "0"));
  static const struct option longopts[] = {
      {"data-dir", required_argument, NULL, 'd'}, {"listen", required_argument, NULL, 'l'},
      {"plaintext", no_argument, NULL, 'p'},      {"threads", required_argument, NULL, 't'},
      {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (c) {
    case 'd':
      o->data_dir = optarg;
      break;
    case 'l':
      o->listen = optarg;
      break;
    case 'p':
      o->plaintext = 1;
      break;
    case 't':
      o->threads = atoi(optarg);
      break;
    case 'h':
      usage(stdout);
      exit(0);
    default:
      usage(stderr);
      return -1;
    }
  }
  if (optind != argc) {
    usage(stderr);
    return -1;
  }
  return 0;
}

/* The API is served without TLS only on loopback, and only when asked. */
static int check_listen(const struct options *o) {
  char host[256];
  int port;
  struct tp_err err = {0};
  if (addr_parse(o->listen, host, sizeof(host), &port, 1, "--listen", &err) != 0) {
    fprintf(stderr, "tlsplane-server: %s\n", err.msg);
    return -1;
  }
  if (!o->plaintext) {
    fprintf(stderr, "tlsplane-server: the API is served over TLS only once authentication is "
                    "set up; for loopback development start with --plaintext\n");
    return -1;
  }
  if (strncmp(host, "127.", 4) != 0 && strcmp(host, "::1") != 0 && strcmp(host, "localhost") != 0) {
    fprintf(stderr, "tlsplane-server: --plaintext serves on loopback only, not on %s\n", o->listen);
    return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  struct options o;
  if (parse_options(argc, argv, &o) != 0 || check_listen(&o) != 0)
    return 2;

  /* Signals are taken by sigwait below; every thread inherits the mask. */
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, NULL);
  signal(SIGPIPE, SIG_IGN);

  if (mkdir(o.data_dir, 0700) != 0 && errno != EEXIST) {
    log_error("server", "data directory %s: %s", o.data_dir, strerror(errno));
    return 1;
  }
  char db_path[4096];
  snprintf(db_path, sizeof(db_path), "%s/tlsplane.db", o.data_dir);

  struct tp_err err = {0};
  struct api api = {0};
  struct rpc_server *srv = NULL;
  struct jobs *jobs = NULL;
  struct hub *hub = NULL;
  int status = 1;
  if (store_open(db_path, &api.store, &err) != 0) {
    log_error("server", "store %s: %s", db_path, err.msg);
    return 1;
  }
  if (api_seed_builtins(&api, &err) != 0) {
    log_error("server", "built-in resources: %s", err.msg);
    goto close_store;
  }
  if (hub_new(&api, &hub, &err) != 0) {
    log_error("server", "%s", err.msg);
    goto close_store;
  }
  api.hub = hub;
  struct rpc_server_opts ropts = {.listen = o.listen, .threads = o.threads};
  if (rpc_server_new(&ropts, &srv, &err) != 0) {
    log_error("server", "%s", err.msg);
    goto close_store;
  }
  const char *services[16];
  size_t n_services = api_service_names(services, 16);
  if (api_register_all(&api, srv) != 0 || hub_register(hub, srv) != 0 ||
      health_register(srv, services, n_services) != 0 ||
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
  char host[256];
  int port;
  struct tp_err ignored = {0};
  if (addr_parse(o.listen, host, sizeof(host), &port, 1, "listen", &ignored) != 0)
    snprintf(host, sizeof(host), "127.0.0.1");
  log_info("server", "listening on %s%s%s:%d (plaintext), data in %s, revision %lld",
           strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", rpc_server_port(srv),
           db_path, (long long)store_revision(api.store));

  int sig = 0;
  sigwait(&stop, &sig);
  log_info("server", "%s: stopping; in-flight calls finish first", strsignal(sig));
  rpc_server_shutdown(srv, SHUTDOWN_GRACE_MS);
  status = 0;
free_server:
  jobs_stop(jobs);
  rpc_server_free(srv);
close_store:
  hub_free(hub);
  store_close(api.store);
  if (status == 0)
    log_info("server", "stopped");
  return status;
}
