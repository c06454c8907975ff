/* The control-plane source (see source.h): the agent's side of
 * AgentService/Connect.
 *
 * Threads. The main loop applies snapshots and owns the registry; two
 * threads of this source talk to the server, so that nothing on the main
 * loop ever blocks on the network:
 *
 *   conn    enrolls or renews when needed (unary calls), opens the stream
 *           (mutual TLS), sends the hello, then receives: each snapshot is
 *           handed to the main loop through a uv_async (only the newest
 *           one waits: a snapshot replaces the whole configuration, so an
 *           older one not yet applied is worthless). When the stream
 *           ends it backs off (0.5 s doubling to 30 s, with jitter) and
 *           connects again.
 *   send    sends what the main loop queued (the ack or nack of the last
 *           apply, the latest stats) on the current stream, then writes
 *           the cache file; also cuts the stream when the certificate is
 *           due for renewal, so that conn renews and reconnects.
 *
 * Everything they share is under `lock`. An ack is tagged with the stream
 * (`gen`) its snapshot came on and dropped if that stream is gone: the
 * server sends its current snapshot on every new stream, which is then
 * applied (all kept, usually) and acked on the stream that asked.
 *
 * Serving never depends on any of this (invariant 4): the cached snapshot
 * is applied before the first connection attempt, and a lost stream,
 * a refused certificate or a deleted agent only stop updates. */
#include <errno.h>
#include <grpc/grpc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "gclient.h"
#include "identity.h"
#include "log.h"
#include "pb.h"
#include "source.h"
#include "tlsplane/v1/agent.pb-c.h"

#define STREAM_MAGIC 0x5354524du /* "STRM" */
#define CONNECT_METHOD "/tlsplane.v1.AgentService/Connect"
#define ENROLL_METHOD "/tlsplane.v1.AgentService/EnrollAgent"
#define RENEW_METHOD "/tlsplane.v1.AgentService/RenewAgentCertificate"
#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
#define STATS_INTERVAL_MS 10000
#define RENEW_RETRY_S 300 /* after a failed renewal (the old certificate is still good) */

/* How one connection attempt ended. */
enum outcome {
  OUT_FAILED,  /* never got a snapshot: back off further */
  OUT_HEALTHY, /* served snapshots, then ended: back off from the start */
  OUT_REFUSED, /* the credential was refused or the stream cut: the longest back-off */
  OUT_RENEW,   /* ended to renew the certificate: reconnect at once */
  OUT_STOPPED,
};

struct source_stream {
  struct source base;
  unsigned magic;
  struct agent *a;
  struct stream_config cfg; /* every string copied */
  char *ca_pem;

  uv_async_t delivery;
  uv_timer_t stats_timer;
  int started, stopped;
  pthread_t conn_thread, send_thread;
  int have_conn_thread, have_send_thread;

  pthread_mutex_t lock;
  pthread_cond_t cond; /* anything below changed */
  atomic_int stop;
  int wake;                      /* SIGHUP: skip the back-off wait */
  struct gclient_stream *stream; /* the live stream, or NULL */
  uint64_t gen;                  /* bumped for every stream */
  int sender_busy;               /* send is using `stream`: conn waits before closing it */
  int64_t renew_at;              /* send cuts the stream then (seconds since the epoch); 0: never */
  int renew_requested;
  Tlsplane__V1__Snapshot *pending; /* received, not yet taken by the main loop */
  uint64_t pending_gen;
  Tlsplane__V1__AgentMessage *ack; /* to send */
  uint64_t ack_gen;
  Tlsplane__V1__AgentMessage *stats; /* to send */
  uint8_t *blob;                     /* to write to the cache */
  size_t blob_len;
  atomic_llong applied_revision; /* for the hello */

  /* Main loop only. */
  uint64_t delivered_gen;
  int from_cache; /* the next report is the cached snapshot's */

  /* conn thread only. */
  struct identity id;
  int have_id;
  int id_refused;   /* the server refused it (UNAUTHENTICATED) */
  int join_used;    /* the join token was used, or refused, in this process */
  int renew_forced; /* renew on the next attempt, due or not */
  int64_t renew_retry_at;
  uint64_t rand_state;
};

static struct source_stream *stream_check(struct source *s) {
  struct source_stream *ss = (struct source_stream *)s;
  if (ss == NULL || ss->magic != STREAM_MAGIC)
    abort();
  return ss;
}

static int enroll_mode(const struct source_stream *s) {
  return s->cfg.cert_path == NULL;
}

static void format_time(int64_t t, char *buf, size_t len) {
  time_t tt = (time_t)t;
  struct tm tm;
  gmtime_r(&tt, &tm);
  strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Messages ---------------------------------------------------------------- */

static void message_free(Tlsplane__V1__AgentMessage *m) {
  if (m != NULL)
    protobuf_c_message_free_unpacked(&m->base, NULL);
}

/* A heap copy of an AgentMessage built on the stack. */
static Tlsplane__V1__AgentMessage *message_copy(const Tlsplane__V1__AgentMessage *m) {
  return (Tlsplane__V1__AgentMessage *)pb_clone(&m->base);
}

/* The ack (every listener applied) or nack of one apply. */
static Tlsplane__V1__AgentMessage *ack_new(const struct apply_report *r) {
  size_t n = r->snapshot != NULL ? r->snapshot->n_listeners : 0;
  if (n > r->n)
    n = r->n;
  Tlsplane__V1__ListenerResult *res = calloc(n + 1, sizeof(*res));
  Tlsplane__V1__ListenerResult **ptrs = calloc(n + 1, sizeof(*ptrs));
  Tlsplane__V1__AgentMessage *out = NULL;
  if (res != NULL && ptrs != NULL) {
    for (size_t i = 0; i < n; i++) {
      tlsplane__v1__listener_result__init(&res[i]);
      res[i].listener = (char *)r->results[i].listener;
      res[i].applied = r->results[i].ok;
      res[i].error = r->results[i].ok ? "" : (char *)r->results[i].reason;
      ptrs[i] = &res[i];
    }
    Tlsplane__V1__AgentAck ack = TLSPLANE__V1__AGENT_ACK__INIT;
    ack.revision = r->revision;
    ack.listeners = ptrs;
    ack.n_listeners = n;
    Tlsplane__V1__AgentMessage msg = TLSPLANE__V1__AGENT_MESSAGE__INIT;
    msg.message_case = TLSPLANE__V1__AGENT_MESSAGE__MESSAGE_ACK;
    msg.ack = &ack;
    out = message_copy(&msg);
  }
  free(res);
  free(ptrs);
  return out;
}

/* Every listener served or failing, with its counters (stats.c). */
static Tlsplane__V1__AgentMessage *stats_new(const struct agent *a) {
  size_t n = 0;
  for (const struct listener *l = a->listeners; l != NULL; l = l->next)
    n += !l->dropped;
  Tlsplane__V1__ListenerStatus *st = calloc(n + 1, sizeof(*st));
  Tlsplane__V1__ListenerStatus **ptrs = calloc(n + 1, sizeof(*ptrs));
  Tlsplane__V1__ListenerStatus__ClientErrorsEntry *ce = calloc((n + 1) * CAUSE_COUNT, sizeof(*ce));
  Tlsplane__V1__ListenerStatus__ClientErrorsEntry **ceptrs =
      calloc((n + 1) * CAUSE_COUNT, sizeof(*ceptrs));
  Tlsplane__V1__AgentMessage *out = NULL;
  if (st != NULL && ptrs != NULL && ce != NULL && ceptrs != NULL) {
    size_t i = 0;
    for (const struct listener *l = a->listeners; l != NULL; l = l->next) {
      if (l->dropped)
        continue;
      Tlsplane__V1__ListenerStatus *s = &st[i];
      tlsplane__v1__listener_status__init(s);
      s->listener = l->name;
      s->applied_revision = l->applied != NULL ? l->applied_revision : 0;
      s->last_nack = (char *)l->last_error;
      s->connections = stats_get((atomic_llong *)&l->stats.connections);
      s->handshakes = stats_get((atomic_llong *)&l->stats.handshakes);
      s->resumptions = stats_get((atomic_llong *)&l->stats.resumptions);
      s->client_errors = &ceptrs[i * CAUSE_COUNT];
      s->n_client_errors = CAUSE_COUNT;
      for (int c = 0; c < CAUSE_COUNT; c++) {
        Tlsplane__V1__ListenerStatus__ClientErrorsEntry *e = &ce[i * CAUSE_COUNT + (size_t)c];
        tlsplane__v1__listener_status__client_errors_entry__init(e);
        e->key = (char *)stats_cause_name((enum stats_cause)c);
        e->value = stats_get((atomic_llong *)&l->stats.client_errors[c]);
        s->client_errors[c] = e;
      }
      ptrs[i++] = s;
    }
    Tlsplane__V1__AgentStats stats = TLSPLANE__V1__AGENT_STATS__INIT;
    stats.listeners = ptrs;
    stats.n_listeners = i;
    Tlsplane__V1__AgentMessage msg = TLSPLANE__V1__AGENT_MESSAGE__INIT;
    msg.message_case = TLSPLANE__V1__AGENT_MESSAGE__MESSAGE_STATS;
    msg.stats = &stats;
    out = message_copy(&msg);
  }
  free(st);
  free(ptrs);
  free(ce);
  free(ceptrs);
  return out;
}

/* The main loop's side --------------------------------------------------- */

static void on_delivery(uv_async_t *h) {
  struct source_stream *s = stream_check(h->data);
  pthread_mutex_lock(&s->lock);
  Tlsplane__V1__Snapshot *snap = s->pending;
  uint64_t gen = s->pending_gen;
  s->pending = NULL;
  pthread_mutex_unlock(&s->lock);
  if (snap == NULL || s->stopped) {
    if (snap != NULL)
      protobuf_c_message_free_unpacked(&snap->base, NULL);
    return;
  }
  s->delivered_gen = gen;
  s->base.cb(snap, NULL, s->base.data); /* applies it, then calls stream_report */
}

static void queue_stats(struct source_stream *s) {
  Tlsplane__V1__AgentMessage *stats = stats_new(s->a);
  if (stats == NULL)
    return;
  pthread_mutex_lock(&s->lock);
  message_free(s->stats);
  s->stats = stats;
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

static void on_stats_timer(uv_timer_t *t) {
  queue_stats(stream_check(t->data));
}

static void stream_report(struct source *src, const struct apply_report *r) {
  struct source_stream *s = stream_check(src);
  size_t n[APPLY_FAILED + 1] = {0};
  for (size_t i = 0; i < r->n; i++)
    n[r->results[i].action]++;
  char what[160];
  snprintf(what, sizeof(what),
           "%zu new, %zu changed, %zu kept, %zu dropped, %zu not applied (%.1f ms)", n[APPLY_NEW],
           n[APPLY_CHANGE], n[APPLY_KEEP], n[APPLY_DROP], n[APPLY_FAILED], r->apply_ms);
  const char *how = r->n_failed == 0 ? "applied" : "applied in part";
  if (s->from_cache) {
    /* What the server acked before is served again; nothing to tell it
     * (its hello says which revision) and nothing new to write. */
    s->from_cache = 0;
    log_msg(r->n_failed == 0 ? LOG_INFO : LOG_WARN, "agent", "cache %s: revision %lld %s: %s",
            s->cfg.cache_dir, (long long)r->revision, how, what);
    return;
  }
  log_msg(r->n_failed == 0 ? LOG_INFO : LOG_WARN, "agent",
          "control plane: revision %lld %s: %s; %s sent", (long long)r->revision, how, what,
          r->n_failed == 0 ? "ack" : "nack");
  atomic_store(&s->applied_revision, r->revision);
  Tlsplane__V1__AgentMessage *ack = ack_new(r), *stats = stats_new(s->a);
  uint8_t *blob = NULL;
  size_t blob_len = 0;
  if (cache_snapshot_pack(s->a, r, &blob, &blob_len) != 0) {
    log_error("agent", "cache %s: cannot pack revision %lld: out of memory", s->cfg.cache_dir,
              (long long)r->revision);
    blob = NULL;
  }
  pthread_mutex_lock(&s->lock);
  if (ack != NULL) {
    message_free(s->ack);
    s->ack = ack;
    s->ack_gen = s->delivered_gen;
  }
  if (stats != NULL) {
    message_free(s->stats);
    s->stats = stats;
  }
  if (blob != NULL) {
    cache_wipe_free(s->blob, s->blob_len); /* an older one not yet written */
    s->blob = blob;
    s->blob_len = blob_len;
  }
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

/* The send thread ---------------------------------------------------------- */

static void deadline_in(struct timespec *ts, int64_t ms) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (ms % 1000) * 1000000;
  if (ts->tv_nsec >= 1000000000) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000;
  }
}

static void *send_main(void *arg) {
  struct source_stream *s = arg;
  pthread_mutex_lock(&s->lock);
  for (;;) {
    int can_send = s->stream != NULL && (s->ack != NULL || s->stats != NULL);
    if (!can_send && s->blob == NULL) {
      if (atomic_load(&s->stop))
        break;
      int64_t now = time(NULL);
      if (s->stream != NULL && s->renew_at > 0 && !s->renew_requested && now >= s->renew_at) {
        s->renew_requested = 1;
        log_info("agent", "control plane: the agent certificate is due for renewal: reconnecting "
                          "with a new one");
        gclient_stream_cancel(s->stream);
        continue;
      }
      if (s->stream != NULL && s->renew_at > 0 && !s->renew_requested) {
        struct timespec ts;
        int64_t wait_s = s->renew_at - now;
        deadline_in(&ts, (wait_s > 60 ? 60 : wait_s) * 1000 + 50);
        pthread_cond_timedwait(&s->cond, &s->lock, &ts);
      } else {
        pthread_cond_wait(&s->cond, &s->lock);
      }
      continue;
    }
    struct gclient_stream *st = s->stream;
    Tlsplane__V1__AgentMessage *ack = NULL, *stats = NULL;
    if (st != NULL) {
      if (s->ack != NULL && s->ack_gen == s->gen)
        ack = s->ack;
      else
        message_free(s->ack); /* for a stream that is gone */
      s->ack = NULL;
      stats = s->stats;
      s->stats = NULL;
    }
    uint8_t *blob = s->blob;
    size_t blob_len = s->blob_len;
    s->blob = NULL;
    s->sender_busy = ack != NULL || stats != NULL;
    pthread_mutex_unlock(&s->lock);
    /* A failed send means the stream is ending: conn sees it too. */
    if (ack != NULL)
      gclient_stream_send(st, &ack->base);
    if (stats != NULL)
      gclient_stream_send(st, &stats->base);
    message_free(ack);
    message_free(stats);
    pthread_mutex_lock(&s->lock);
    s->sender_busy = 0;
    pthread_cond_broadcast(&s->cond);
    if (blob != NULL) {
      /* After the ack: what is served is what was acked; the file only
       * matters at the next start, when the agent reconnects anyway. */
      pthread_mutex_unlock(&s->lock);
      struct tp_err err = {0};
      if (cache_file_write(s->cfg.cache_dir, CACHE_SNAPSHOT, blob, blob_len, 0600, 0, &err) != 0)
        log_error("agent", "cache: cannot write the snapshot: %s", err.msg);
      cache_wipe_free(blob, blob_len);
      pthread_mutex_lock(&s->lock);
    }
  }
  pthread_mutex_unlock(&s->lock);
  return NULL;
}

/* The conn thread: identity ------------------------------------------------- */

static void identity_take(struct source_stream *s, struct identity *id) {
  identity_clear(&s->id);
  s->id = *id;
  memset(id, 0, sizeof(*id));
  s->have_id = 1;
  s->id_refused = 0;
  atomic_store(&s->a->cp_cert_expiry, s->id.not_after);
}

/* Makes a key and a CSR and calls method: EnrollAgent with the join token,
 * RenewAgentCertificate with the current certificate. On success the new
 * identity is stored in the cache dir and taken. */
static int certificate_request(struct source_stream *s, int enroll, struct tp_err *err) {
  char *key = NULL, *csr = NULL;
  if (identity_keygen(s->cfg.name, &key, &csr, err) != 0)
    return -1;
  struct gclient_opts o = {.ca_pem = s->ca_pem, .stop = &s->stop, .deadline_ms = 30000};
  ProtobufCMessage *resp = NULL;
  char *bearer = NULL;
  int rc;
  if (enroll) {
    size_t len = strlen(s->cfg.join_token) + 8;
    if ((bearer = malloc(len)) == NULL) {
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      goto done;
    }
    snprintf(bearer, len, "Bearer %s", s->cfg.join_token);
    o.authorization = bearer;
    Tlsplane__V1__EnrollAgentRequest req = TLSPLANE__V1__ENROLL_AGENT_REQUEST__INIT;
    req.agent_id = (char *)s->cfg.name;
    req.csr_pem = csr;
    rc = gclient_unary(s->cfg.server, ENROLL_METHOD, &o, &req.base,
                       &tlsplane__v1__agent_certificate__descriptor, &resp, err);
  } else {
    o.key_pem = s->id.key_pem;
    o.cert_pem = s->id.cert_pem;
    Tlsplane__V1__RenewAgentCertificateRequest req =
        TLSPLANE__V1__RENEW_AGENT_CERTIFICATE_REQUEST__INIT;
    req.csr_pem = csr;
    rc = gclient_unary(s->cfg.server, RENEW_METHOD, &o, &req.base,
                       &tlsplane__v1__agent_certificate__descriptor, &resp, err);
  }
  if (rc != 0)
    goto done;
  const Tlsplane__V1__AgentCertificate *ac = (const Tlsplane__V1__AgentCertificate *)resp;
  struct identity id;
  if (identity_make(key, ac->certificate_pem, &id, err) != 0) {
    tp_err_prefix(err, "the certificate the server sent: ");
    rc = -1;
    goto done;
  }
  if (identity_store(s->cfg.cache_dir, &id, ac->ca_pem, err) != 0) {
    identity_clear(&id);
    rc = -1;
    goto done;
  }
  identity_take(s, &id);
  char until[40], renew[40];
  format_time(s->id.not_after, until, sizeof(until));
  format_time(s->id.renew_after, renew, sizeof(renew));
  log_info("agent",
           "control plane: %s as %s: certificate %s (serial %s), valid until %s, renewed "
           "after %s; stored in %s",
           enroll ? "enrolled" : "certificate renewed", ac->agent, ac->client_certificate,
           s->id.serial, until, renew, s->cfg.cache_dir);
done:
  if (bearer != NULL)
    cache_wipe_free(bearer, strlen(bearer));
  if (resp != NULL)
    protobuf_c_message_free_unpacked(resp, NULL);
  cache_wipe_free(key, strlen(key));
  free(csr);
  return rc;
}

/* The credential for the next connection: the files of --cert/--key, or
 * the enrolled certificate (loaded from the cache dir, enrolled with the
 * join token, renewed when due). */
static int ensure_identity(struct source_stream *s, struct tp_err *err) {
  if (!enroll_mode(s)) {
    /* Read again every time: an operator may replace them. */
    struct identity id;
    if (identity_from_files(s->cfg.key_path, s->cfg.cert_path, &id, err) != 0)
      return -1;
    identity_take(s, &id);
    return 0;
  }
  int64_t now = time(NULL);
  char why[256];
  if (!s->have_id) {
    struct identity id;
    struct tp_err lerr = {0};
    int rc = identity_load(s->cfg.cache_dir, &id, &lerr);
    const char *bad = rc == 1 ? identity_unusable(&id, s->cfg.name, now, why, sizeof(why)) : NULL;
    if (rc == 1 && bad == NULL && !identity_issued_by(&id, s->ca_pem))
      bad = "the certificate was not issued by the CA of --ca (another control plane?)";
    if (rc == 1 && bad == NULL)
      identity_take(s, &id);
    else if (rc == 1)
      log_warn("agent", "cache %s: %s: not used", s->cfg.cache_dir, bad);
    else if (rc < 0)
      log_warn("agent", "cache: %s: not used", lerr.msg);
    if (rc == 1 && !s->have_id)
      identity_clear(&id);
  }
  if (s->have_id && identity_unusable(&s->id, s->cfg.name, now, why, sizeof(why)) != NULL) {
    log_warn("agent", "control plane: %s", why);
    identity_clear(&s->id);
    s->have_id = 0;
  }
  if (s->have_id && s->id_refused && s->cfg.join_token != NULL && !s->join_used) {
    log_info("agent", "control plane: enrolling again with the join token");
    identity_clear(&s->id);
    s->have_id = 0;
  }
  if (!s->have_id) {
    if (s->cfg.join_token == NULL)
      return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                        "no usable agent certificate in %s and no join token: a new join token "
                        "is needed (--join-token)",
                        s->cfg.cache_dir);
    if (s->join_used)
      return tp_err_set(err, GRPC_STATUS_UNAUTHENTICATED,
                        "the join token was used or refused already: a new join token is needed "
                        "(--join-token)");
    if (certificate_request(s, 1, err) != 0) {
      if (err->status == GRPC_STATUS_UNAUTHENTICATED ||
          err->status == GRPC_STATUS_PERMISSION_DENIED ||
          err->status == GRPC_STATUS_INVALID_ARGUMENT) {
        s->join_used = 1;
        char prefix[128];
        snprintf(prefix, sizeof(prefix),
                 "enrollment refused (%s): ", gclient_status_name(err->status));
        tp_err_prefix(err, prefix);
        size_t len = strlen(err->msg);
        snprintf(err->msg + len, sizeof(err->msg) - len, ": a new join token is needed");
      } else {
        tp_err_prefix(err, "enrollment: ");
      }
      return -1;
    }
    s->join_used = 1; /* one-time: it is spent */
  }
  if (s->renew_forced || (now >= s->id.renew_after && now >= s->renew_retry_at)) {
    s->renew_forced = 0;
    struct tp_err rerr = {0};
    if (certificate_request(s, 0, &rerr) != 0) {
      char until[40];
      format_time(s->id.not_after, until, sizeof(until));
      log_warn("agent",
               "control plane: certificate renewal failed: %s: %s; the current certificate "
               "(valid until %s) stays in use, next try in %d s",
               gclient_status_name(rerr.status), rerr.msg, until, RENEW_RETRY_S);
      s->renew_retry_at = now + RENEW_RETRY_S;
      if (rerr.status == GRPC_STATUS_UNAUTHENTICATED)
        s->id_refused = 1;
    }
  }
  return 0;
}

/* The conn thread: the stream ------------------------------------------------ */

static void deliver(struct source_stream *s, Tlsplane__V1__Snapshot *snap, uint64_t gen) {
  pthread_mutex_lock(&s->lock);
  if (s->pending != NULL) /* not applied yet: superseded */
    protobuf_c_message_free_unpacked(&s->pending->base, NULL);
  s->pending = snap;
  s->pending_gen = gen;
  pthread_mutex_unlock(&s->lock);
  uv_async_send(&s->delivery);
}

static int send_hello(struct source_stream *s, struct gclient_stream *st) {
  Tlsplane__V1__AgentHello__LabelsEntry *entries = calloc(s->cfg.n_labels + 1, sizeof(*entries));
  Tlsplane__V1__AgentHello__LabelsEntry **ptrs = calloc(s->cfg.n_labels + 1, sizeof(*ptrs));
  if (entries == NULL || ptrs == NULL) {
    free(entries);
    free(ptrs);
    return -1;
  }
  for (size_t i = 0; i < s->cfg.n_labels; i++) {
    tlsplane__v1__agent_hello__labels_entry__init(&entries[i]);
    entries[i].key = (char *)s->cfg.label_keys[i];
    entries[i].value = (char *)s->cfg.label_values[i];
    ptrs[i] = &entries[i];
  }
  Tlsplane__V1__AgentHello hello = TLSPLANE__V1__AGENT_HELLO__INIT;
  hello.name = (char *)s->cfg.name;
  hello.labels = ptrs;
  hello.n_labels = s->cfg.n_labels;
  hello.version = (char *)s->cfg.version;
  hello.applied_revision = atomic_load(&s->applied_revision);
  Tlsplane__V1__AgentMessage msg = TLSPLANE__V1__AGENT_MESSAGE__INIT;
  msg.message_case = TLSPLANE__V1__AGENT_MESSAGE__MESSAGE_HELLO;
  msg.hello = &hello;
  int rc = gclient_stream_send(st, &msg.base);
  free(entries);
  free(ptrs);
  return rc;
}

/* One connection: credentials, the stream, snapshots until it ends. */
static enum outcome session(struct source_stream *s, struct tp_err *err) {
  int received = 0;
  if (ensure_identity(s, err) != 0) {
    if (atomic_load(&s->stop))
      return OUT_STOPPED;
    return err->status == GRPC_STATUS_UNAVAILABLE || err->status == GRPC_STATUS_DEADLINE_EXCEEDED
               ? OUT_FAILED
               : OUT_REFUSED;
  }
  /* Keepalive pings every 20 s (the server allows one per 10 s), 10 s to
   * answer: a half-open connection (a partition, a server host gone) is
   * noticed within half a minute; a killed server at once (RST). */
  struct gclient_opts o = {.ca_pem = s->ca_pem,
                           .key_pem = s->id.key_pem,
                           .cert_pem = s->id.cert_pem,
                           .keepalive_ms = 20000,
                           .keepalive_timeout_ms = 10000,
                           .connect_timeout_ms = 10000,
                           .stop = &s->stop};
  struct gclient_stream *st;
  if (gclient_stream_open(s->cfg.server, CONNECT_METHOD, &o, &st, err) != 0)
    return atomic_load(&s->stop) ? OUT_STOPPED : OUT_FAILED;
  ProtobufCMessage *m = NULL;
  if (send_hello(s, st) != 0) {
    /* The status says why (a refused certificate ends the call at once). */
    if (gclient_stream_recv(st, &tlsplane__v1__server_message__descriptor, &m, err) >= 0) {
      if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
      tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "the stream ended before the hello");
    }
    gclient_stream_close(st);
    goto ended;
  }
  pthread_mutex_lock(&s->lock);
  if (atomic_load(&s->stop)) {
    pthread_mutex_unlock(&s->lock);
    gclient_stream_close(st);
    return OUT_STOPPED;
  }
  s->stream = st;
  uint64_t gen = ++s->gen;
  s->renew_requested = 0;
  s->renew_at = enroll_mode(s) ? (s->id.renew_after > s->renew_retry_at ? s->id.renew_after
                                                                        : s->renew_retry_at)
                               : 0;
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);

  for (;;) {
    int rc = gclient_stream_recv(st, &tlsplane__v1__server_message__descriptor, &m, err);
    if (rc <= 0) {
      if (rc == 0)
        tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "the server ended the stream");
      break;
    }
    Tlsplane__V1__ServerMessage *sm = (Tlsplane__V1__ServerMessage *)m;
    if (sm->message_case == TLSPLANE__V1__SERVER_MESSAGE__MESSAGE_SNAPSHOT &&
        sm->snapshot != NULL) {
      Tlsplane__V1__Snapshot *snap = sm->snapshot;
      sm->snapshot = NULL;
      sm->message_case = TLSPLANE__V1__SERVER_MESSAGE__MESSAGE__NOT_SET;
      if (received++ == 0) {
        atomic_store(&s->a->cp_connected, 1);
        atomic_fetch_add(&s->a->cp_connects, 1);
        log_info("agent",
                 "control plane %s: connected as agents/%s (certificate serial %s), snapshot "
                 "revision %lld",
                 s->cfg.server, s->cfg.name, s->id.serial, (long long)snap->revision);
      }
      deliver(s, snap, gen);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    if (received > 0 && s->cfg.renew_now && enroll_mode(s)) {
      /* Due now: the send thread cuts the stream as when the date comes. */
      s->cfg.renew_now = 0;
      log_info("agent", "control plane: renewal due now (TLSPLANE_RENEW_NOW)");
      pthread_mutex_lock(&s->lock);
      s->renew_at = time(NULL);
      pthread_cond_broadcast(&s->cond);
      pthread_mutex_unlock(&s->lock);
    }
  }
  pthread_mutex_lock(&s->lock);
  s->stream = NULL;
  while (s->sender_busy)
    pthread_cond_wait(&s->cond, &s->lock);
  int renew = s->renew_requested;
  s->renew_requested = 0;
  pthread_mutex_unlock(&s->lock);
  gclient_stream_close(st);
  atomic_store(&s->a->cp_connected, 0);
  if (atomic_load(&s->stop))
    return OUT_STOPPED;
  if (renew) {
    s->renew_forced = 1;
    return OUT_RENEW;
  }
  if (received > 0 && err->status == GRPC_STATUS_PERMISSION_DENIED)
    return OUT_REFUSED; /* cut by the server: deleted, or its certificate revoked */
ended:
  if (err->status == GRPC_STATUS_UNAUTHENTICATED) {
    s->id_refused = enroll_mode(s);
    size_t len = strlen(err->msg);
    snprintf(err->msg + len, sizeof(err->msg) - len,
             " (the agent certificate was revoked, has expired or the agent was deleted: %s)",
             s->cfg.join_token != NULL && !s->join_used && enroll_mode(s)
                 ? "enrolling again with the join token"
                 : "a new join token is needed");
    return OUT_REFUSED;
  }
  if (err->status == GRPC_STATUS_PERMISSION_DENIED)
    return OUT_REFUSED;
  return received > 0 ? OUT_HEALTHY : OUT_FAILED;
}

static uint64_t next_rand(struct source_stream *s) {
  uint64_t x = s->rand_state; /* xorshift64: jitter, not secrets */
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return s->rand_state = x;
}

/* Waits ms unless stopping or woken (SIGHUP). */
static void pause_ms(struct source_stream *s, int64_t ms) {
  struct timespec ts;
  deadline_in(&ts, ms);
  pthread_mutex_lock(&s->lock);
  while (!atomic_load(&s->stop) && !s->wake &&
         pthread_cond_timedwait(&s->cond, &s->lock, &ts) != ETIMEDOUT)
    ;
  s->wake = 0;
  pthread_mutex_unlock(&s->lock);
}

static void *conn_main(void *arg) {
  struct source_stream *s = arg;
  int failures = 0;
  while (!atomic_load(&s->stop)) {
    struct tp_err err = {0};
    enum outcome out = session(s, &err);
    if (out == OUT_STOPPED || atomic_load(&s->stop))
      break;
    if (out == OUT_RENEW) {
      failures = 0;
      continue;
    }
    if (out == OUT_HEALTHY)
      failures = 0;
    int64_t cap = s->cfg.retry_max_ms > 0 ? s->cfg.retry_max_ms : BACKOFF_MAX_MS;
    int64_t base = BACKOFF_MIN_MS << (failures < 6 ? failures : 6);
    if (base > cap || out == OUT_REFUSED)
      base = cap;
    failures++;
    /* Equal jitter: half fixed, half random, so that a fleet cut off at
     * once does not come back at once. */
    int64_t delay = base / 2 + (int64_t)(next_rand(s) % (uint64_t)(base / 2 + 1));
    log_msg(out == OUT_REFUSED ? LOG_ERROR : LOG_WARN, "agent",
            "control plane %s: %s: %s; serving the last snapshot applied (revision %lld), "
            "retrying in %.1f s",
            s->cfg.server, gclient_status_name(err.status), err.msg,
            (long long)atomic_load(&s->applied_revision), (double)delay / 1000);
    pause_ms(s, delay);
  }
  return NULL;
}

/* The vtable ------------------------------------------------------------------ */

static int stream_first(struct source *src, Tlsplane__V1__Snapshot **out, struct tp_err *err) {
  struct source_stream *s = stream_check(src);
  *out = NULL;
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
  if (!enroll_mode(s)) {
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
  Tlsplane__V1__Snapshot *snap = NULL;
  struct tp_err cerr = {0};
  rc = cache_snapshot_load(s->cfg.cache_dir, &snap, &cerr);
  if (rc < 0) {
    log_warn("agent", "cache: %s: ignored; waiting for the control plane", cerr.msg);
  } else if (rc == 1) {
    log_info("agent", "cache %s: revision %lld found: serving it until the control plane answers",
             s->cfg.cache_dir, (long long)snap->revision);
    s->from_cache = 1;
    atomic_store(&s->applied_revision, snap->revision);
    *out = snap;
  } else {
    log_info("agent", "cache %s: empty: nothing to serve until the control plane answers",
             s->cfg.cache_dir);
  }
  return 0;
}

static int stream_start(struct source *src, struct tp_err *err) {
  struct source_stream *s = stream_check(src);
  s->from_cache = 0; /* the cached snapshot's report came (or there was none) */
  uv_async_init(s->base.loop, &s->delivery, on_delivery);
  s->delivery.data = s;
  uv_timer_init(s->base.loop, &s->stats_timer);
  s->stats_timer.data = s;
  int every = s->cfg.stats_interval_ms > 0 ? s->cfg.stats_interval_ms : STATS_INTERVAL_MS;
  uv_timer_start(&s->stats_timer, on_stats_timer, (uint64_t)every, (uint64_t)every);
  s->started = 1;
  /* One grpc_init for the source's life: every stream and call in between
   * takes and drops its own reference, and gRPC is not torn down and set
   * up again at each reconnection. */
  grpc_init();
  int rc = pthread_create(&s->send_thread, NULL, send_main, s);
  s->have_send_thread = rc == 0;
  if (rc == 0) {
    rc = pthread_create(&s->conn_thread, NULL, conn_main, s);
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

static void stream_close(struct source *src) {
  struct source_stream *s = stream_check(src);
  stream_stop(src);
  if (s->pending != NULL)
    protobuf_c_message_free_unpacked(&s->pending->base, NULL);
  message_free(s->ack);
  message_free(s->stats);
  cache_wipe_free(s->blob, s->blob_len);
  identity_clear(&s->id);
  if (s->ca_pem != NULL)
    free(s->ca_pem);
  config_free(&s->cfg);
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
    .report = stream_report,
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
  if (oom) {
    stream_close(&s->base);
    return NULL;
  }
  return &s->base;
}
