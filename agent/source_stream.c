/* The control-plane source (see source.h): the agent's side of
 * AgentService/Connect. This file is the source object: its vtable, its
 * lifetime and its threads; the rest is described in stream_int.h. */
#include <errno.h>
#include <grpc/grpc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "log.h"
#include "stream_int.h"

/* The vtable ------------------------------------------------------------------ */

static int stream_first(struct source *src, const struct rset **out, int64_t *revision,
                        struct tp_err *err) {
  struct source_stream *s = stream_check(src);
  *out = NULL;
  *revision = 0;
  size_t len;
  int rc = cache_path_read(s->cfg.ca_path, &s->ca_pem, &len, err);
  if (rc == 0)
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s: no such file", s->cfg.ca_path);
  if (rc <= 0) {
    tp_err_prefix(err, "--ca: ");
    return -1;
  }
  if (cache_dir_prepare(s->cfg.cache_dir, err) != 0) {
    tp_err_prefix(err, "--cache-dir: ");
    return -1;
  }
  if (!stream_enroll_mode(s)) {
    struct identity id;
    if (identity_from_files(s->cfg.key_path, s->cfg.cert_path, &id, err) != 0)
      return -1;
    identity_clear(&id);
  } else if (s->cfg.join_token == NULL) {
    /* Without a join token only an enrolled certificate will do. */
    struct identity id;
    rc = identity_load(s->cfg.cache_dir, &id, err);
    if (rc <= 0) {
      if (rc == 0)
        tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                   "%s holds no agent certificate: enroll with --join-token (or give --cert "
                   "and --key)",
                   s->cfg.cache_dir);
      return -1;
    }
    identity_clear(&id);
  }
  struct rset *set = NULL;
  int64_t rev = 0;
  struct tp_err cerr = {0};
  rc = cache_state_load(s->cfg.cache_dir, &set, &rev, &cerr);
  if (rc < 0) {
    log_warn("agent", "cache: %s: ignored; waiting for the control plane", cerr.msg);
  } else if (rc == 1) {
    log_info("agent",
             "cache %s: revision %lld found (%zu listeners, %zu resources): serving it until the "
             "control plane answers",
             s->cfg.cache_dir, (long long)rev, rset_listener_count(set), rset_resource_count(set));
    s->from_cache = 1;
    atomic_store(&s->applied_revision, rev);
    s->desired = set; /* the hello reports what this serves */
    s->desired_gen = 0;
    *out = set;
    *revision = rev;
  } else {
    log_info("agent", "cache %s: empty: nothing to serve until the control plane answers",
             s->cfg.cache_dir);
  }
  return 0;
}

static int stream_start(struct source *src, struct tp_err *err) {
  struct source_stream *s = stream_check(src);
  s->from_cache = 0; /* the cached snapshot's report came (or there was none) */
  uv_async_init(s->base.loop, &s->delivery, stream__on_delivery);
  s->delivery.data = s;
  uv_timer_init(s->base.loop, &s->stats_timer);
  s->stats_timer.data = s;
  int every = s->cfg.stats_interval_ms > 0 ? s->cfg.stats_interval_ms : STREAM_STATS_INTERVAL_MS;
  uv_timer_start(&s->stats_timer, stream__on_stats_timer, (uint64_t)every, (uint64_t)every);
  s->started = 1;
  /* One grpc_init for the source's life: every stream and call in between
   * takes and drops its own reference, and gRPC is not torn down and set
   * up again at each reconnection. */
  grpc_init();
  int rc = pthread_create(&s->send_thread, NULL, stream__send_main, s);
  s->have_send_thread = rc == 0;
  if (rc == 0) {
    rc = pthread_create(&s->conn_thread, NULL, stream__conn_main, s);
    s->have_conn_thread = rc == 0;
  }
  if (rc != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "cannot start a thread: %s",
                      strerror(rc));
  return 0;
}

static void stream_refresh(struct source *src) {
  struct source_stream *s = stream_check(src);
  log_info("agent", "SIGHUP: connecting to the control plane now if not connected");
  pthread_mutex_lock(&s->lock);
  s->wake = 1;
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

static void stream_stop(struct source *src) {
  struct source_stream *s = stream_check(src);
  if (!s->started || s->stopped)
    return;
  s->stopped = 1;
  atomic_store(&s->stop, 1);
  pthread_mutex_lock(&s->lock);
  if (s->stream != NULL)
    gclient_stream_cancel(s->stream);
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
  /* Both notice within 100 ms (gclient polls the stop flag); the send
   * thread writes a pending cache file first. */
  if (s->have_conn_thread)
    pthread_join(s->conn_thread, NULL);
  if (s->have_send_thread)
    pthread_join(s->send_thread, NULL);
  s->have_conn_thread = s->have_send_thread = 0;
  uv_close((uv_handle_t *)&s->delivery, NULL);
  uv_timer_stop(&s->stats_timer);
  uv_close((uv_handle_t *)&s->stats_timer, NULL);
  grpc_shutdown();
  log_info("agent", "control plane: disconnected (stopping)");
}

static void config_free(struct stream_config *c) {
  free((char *)c->server);
  free((char *)c->ca_path);
  if (c->join_token != NULL)
    cache_wipe_free((char *)c->join_token, strlen(c->join_token));
  free((char *)c->cert_path);
  free((char *)c->key_path);
  free((char *)c->name);
  free((char *)c->cache_dir);
  free((char *)c->version);
  for (size_t i = 0; i < c->n_labels; i++) {
    free((char *)c->label_keys[i]);
    free((char *)c->label_values[i]);
  }
  free(c->label_keys);
  free(c->label_values);
}

/* Splits s->cfg.server at ',' into s->servers; -1 when out of memory. */
static int servers_split(struct source_stream *s) {
  size_t n = 1;
  for (const char *p = s->cfg.server; *p != '\0'; p++)
    n += *p == ',';
  s->servers = calloc(n, sizeof(char *));
  if (s->servers == NULL)
    return -1;
  const char *p = s->cfg.server;
  for (;;) {
    size_t len = strcspn(p, ",");
    if ((s->servers[s->n_servers] = strndup(p, len)) == NULL)
      return -1;
    s->n_servers++;
    if (p[len] == '\0')
      return 0;
    p += len + 1;
  }
}

static void stream_close(struct source *src) {
  struct source_stream *s = stream_check(src);
  stream_stop(src);
  stream__inbox_free(s->inbox);
  rset_free(s->desired);
  if (s->held != NULL)
    protobuf_c_message_free_unpacked(&s->held->base, NULL);
  stream__message_free(s->ack);
  stream__message_free(s->stats);
  cache_wipe_free(s->blob, s->blob_len);
  identity_clear(&s->id);
  if (s->ca_pem != NULL)
    free(s->ca_pem);
  config_free(&s->cfg);
  for (size_t i = 0; i < s->n_servers; i++)
    free(s->servers[i]);
  free(s->servers);
  pthread_mutex_destroy(&s->lock);
  pthread_cond_destroy(&s->cond);
  s->magic = 0;
  free(s);
}

static const struct source_ops stream_ops = {
    .name = "control plane",
    .first = stream_first,
    .start = stream_start,
    .refresh = stream_refresh,
    .report = stream__report,
    .stop = stream_stop,
    .close = stream_close,
};

static char *dup_or_null(const char *v, int *oom) {
  if (v == NULL)
    return NULL;
  char *c = strdup(v);
  if (c == NULL)
    *oom = 1;
  return c;
}

struct source *source_stream_new(const struct stream_config *cfg, struct agent *a, uv_loop_t *loop,
                                 source_cb cb, void *data) {
  struct source_stream *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return NULL;
  int oom = 0;
  s->cfg = *cfg;
  s->cfg.server = dup_or_null(cfg->server, &oom);
  s->cfg.ca_path = dup_or_null(cfg->ca_path, &oom);
  s->cfg.join_token = dup_or_null(cfg->join_token, &oom);
  s->cfg.cert_path = dup_or_null(cfg->cert_path, &oom);
  s->cfg.key_path = dup_or_null(cfg->key_path, &oom);
  s->cfg.name = dup_or_null(cfg->name, &oom);
  s->cfg.cache_dir = dup_or_null(cfg->cache_dir, &oom);
  s->cfg.version = dup_or_null(cfg->version, &oom);
  s->cfg.label_keys = calloc(cfg->n_labels + 1, sizeof(char *));
  s->cfg.label_values = calloc(cfg->n_labels + 1, sizeof(char *));
  s->cfg.n_labels = 0;
  oom |= s->cfg.label_keys == NULL || s->cfg.label_values == NULL;
  for (size_t i = 0; !oom && i < cfg->n_labels; i++) {
    s->cfg.label_keys[i] = dup_or_null(cfg->label_keys[i], &oom);
    s->cfg.label_values[i] = dup_or_null(cfg->label_values[i], &oom);
    s->cfg.n_labels = i + 1;
  }
  pthread_mutex_init(&s->lock, NULL);
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&s->cond, &attr);
  pthread_condattr_destroy(&attr);
  s->magic = STREAM_MAGIC;
  s->inbox_tail = &s->inbox;
  s->base.ops = &stream_ops;
  s->base.loop = loop;
  s->base.cb = cb;
  s->base.data = data;
  s->a = a;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  s->rand_state = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40);
  if (s->rand_state == 0)
    s->rand_state = 0x9e3779b97f4a7c15ull;
  a->control_plane = 1;
  if (!oom && s->cfg.server != NULL && servers_split(s) != 0)
    oom = 1;
  if (!oom && s->n_servers == 0)
    oom = 1; /* no server: main.c requires one */
  if (oom) {
    stream_close(&s->base);
    return NULL;
  }
  return &s->base;
}
