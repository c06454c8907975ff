/* The event fan-out (events.h): AuditService.WatchEvents.
 *
 * A place in the stream is (revision, sequence): the audit rows of a
 * revision are its sequences 1..n in seq order, the events published
 * while it was the latest revision n+1 and on. The thread is the only one
 * to number events, so every watch sees one order; a watch remembers the
 * place of the last event it was sent or passed over (its filters), and
 * is sent only what comes after it: resuming from that place gives no
 * gap and no duplicate. */
#include "events.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hub.h"
#include "log.h"
#include "pb.h"
#include "tlsplane/v1/certificate.pb-c.h"

#define EVENTS_MAGIC 0x65767473u
#define WATCH_MAGIC 0x77617463u
/* Audit rows read at once, by the ingest and by a watch's replay. */
#define PAGE_ROWS 256
/* A replaying watch reads its next page once its queue is below this. */
#define REPLAY_PAUSE ((size_t)256 * 1024)
/* Published events waiting for the thread; beyond, dropped (logged). */
#define PENDING_MAX 4096
/* Certificates are checked for their renewal window this often, and
 * after every round that read a change to one. */
#define RENEW_CHECK_MS 30000
#define ROLLOUT_CHECK_MS 100
/* The sequence after every event of a revision. */
#define SEQ_END INT32_MAX
#define TYPES_MAX TLSPLANE__V1__EVENT_TYPE__ROLLOUT_NACK

/* A place in the stream. */
struct pos {
  int64_t rev;
  int32_t seq;
};

static int pos_after(struct pos a, struct pos b) {
  return a.rev > b.rev || (a.rev == b.rev && a.seq > b.seq);
}

/* One event, numbered and encoded once for every watch. */
struct entry {
  struct pos pos;
  int type;
  char *kind;      /* the resource's collection; "" for none */
  char **labels;   /* key, value, key, value...: the resource's labels when read */
  size_t n_labels; /* pairs */
  grpc_slice msg;  /* the encoded Event */
};

/* A published event waiting to be numbered. */
struct pending {
  struct pending *next;
  struct events_event e; /* strings owned */
  int64_t time_us;
};

struct watch {
  uint32_t magic;
  struct events *ev;
  struct watch *next;
  struct rpc_stream *stream; /* referenced until the watch is freed */
  int ready;                 /* its request was read */
  int done;                  /* finished (cut, failed): nothing more is sent */
  int gone;                  /* ended: freed once unpinned */
  int pins;                  /* the thread works on it outside the lock */
  /* Filters. */
  char **kinds;
  size_t n_kinds;
  char **selector; /* key, value, ... */
  size_t n_selector;
  uint32_t include; /* bit per type; 0: every type */
  /* The last place sent or passed over. */
  struct pos pos;
  /* Replay from the audit log (while pos is before the ring's floor):
   * rows of revisions above replay_since, after audit seq replay_seq;
   * replay_at numbers them (the place of the last row read). */
  int64_t replay_since;
  int64_t replay_seq;
  struct pos replay_at;
};

/* Invariants: everything below lock is guarded by it; ring[first..first+n)
 * (mod EVENTS_RING) holds the events after floor in order, floor being
 * the place of the last one evicted (at start: the place the server
 * started at); a watch is freed by whoever sees it gone and unpinned. */
struct events {
  uint32_t magic;
  struct api *api;
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t wake;
  int kicked;
  int stop;
  struct entry ring[EVENTS_RING];
  size_t first, n;
  struct pos floor;
  struct pos last; /* the place of the newest event numbered */
  struct pending *pending, **pending_tail;
  size_t n_pending;
  int64_t applied_max; /* the newest ROLLOUT_APPLIED target published */
  /* The newest revision an agent acked since the last rollout check
   * (events_rollout_check); the check runs on this thread at most every
   * ROLLOUT_CHECK_MS, so that acks from a large fleet cost one walk of
   * the fleet per period, not one per ack. */
  int64_t rollout_dirty;
  struct watch *watches;
  size_t n_watches;
  /* The thread's own: the last audit seq read; whether a certificate
   * changed since the last renewal check; the certificates found in their
   * renewal window by it (name, revision: RENEW_SOON was published). */
  int64_t ingested_seq;
  int renew_due;
  struct renew_seen {
    char *name;
    int64_t revision;
  } * renew_seen;
  size_t n_renew_seen;
};

static const struct api_kind *const kinds[] = {
    &api_kind_certificate,        &api_kind_trust_bundle, &api_kind_revocation_list,
    &api_kind_cipher_policy,      &api_kind_tls_context,  &api_kind_listener,
    &api_kind_ticket_key_ring,    &api_kind_agent,        &api_kind_token,
    &api_kind_client_certificate,
};
#define N_KINDS (sizeof(kinds) / sizeof(kinds[0]))

static const struct api_kind *kind_of_collection(const char *coll, size_t len) {
  for (size_t i = 0; i < N_KINDS; i++)
    if (strlen(kinds[i]->collection) == len && strncmp(kinds[i]->collection, coll, len) == 0)
      return kinds[i];
  return NULL;
}

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void kick_locked(struct events *ev) {
  ev->kicked = 1;
  pthread_cond_signal(&ev->wake);
}

static void kick(struct events *ev) {
  pthread_mutex_lock(&ev->lock);
  kick_locked(ev);
  pthread_mutex_unlock(&ev->lock);
}

static void strv_free(char **v, size_t n) {
  for (size_t i = 0; v != NULL && i < n; i++)
    free(v[i]);
  free(v);
}

static void entry_clear(struct entry *e) {
  free(e->kind);
  strv_free(e->labels, 2 * e->n_labels);
  grpc_slice_unref(e->msg);
  memset(e, 0, sizeof(*e));
}

/* Reads the labels of resource `name` as txn sees it into e (none when it
 * is gone or cannot be read: the event still goes, as one on a resource
 * without labels). Sets e->kind. 0, or -1 (out of memory). */
static int entry_resource(struct entry *e, struct store_txn *txn, const char *name) {
  const char *slash = strchr(name, '/');
  const struct api_kind *k =
      slash != NULL ? kind_of_collection(name, (size_t)(slash - name)) : NULL;
  e->kind = strdup(k != NULL ? k->collection : "");
  if (e->kind == NULL)
    return -1;
  if (k == NULL || txn == NULL)
    return 0;
  struct tp_err err = {0};
  ProtobufCMessage *msg = NULL;
  if (api_read(txn, k, name, 0, &msg, NULL, &err) != 0)
    return 0;
  size_t n = pb_map_size(msg, "labels");
  int rc = 0;
  if (n > 0 && (e->labels = calloc(2 * n, sizeof(char *))) == NULL)
    rc = -1;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    const char *key, *value;
    pb_map_entry(msg, "labels", i, &key, &value);
    e->labels[2 * i] = strdup(key);
    e->labels[2 * i + 1] = strdup(value);
    e->n_labels = i + 1;
    if (e->labels[2 * i] == NULL || e->labels[2 * i + 1] == NULL)
      rc = -1;
  }
  protobuf_c_message_free_unpacked(msg, NULL);
  return rc;
}

static const char *str_or_empty(const char *s) {
  return s != NULL ? s : "";
}

/* Makes e for event m at place pos (m's revision and sequence are set
 * here), reading its resource's labels through txn (NULL: none). 0, or -1
 * (out of memory; e is cleared). */
static int entry_make(struct entry *e, struct pos pos, Tlsplane__V1__Event *m,
                      struct store_txn *txn, int64_t time_us) {
  memset(e, 0, sizeof(*e));
  e->pos = pos;
  e->type = m->type;
  m->revision = pos.rev;
  m->sequence = pos.seq;
  Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  ts.seconds = time_us / 1000000;
  ts.nanos = (int32_t)(time_us % 1000000) * 1000;
  m->time = &ts;
  if (entry_resource(e, txn, m->resource) != 0)
    goto failed;
  m->kind = e->kind;
  size_t len = protobuf_c_message_get_packed_size(&m->base);
  e->msg = grpc_slice_malloc(len);
  protobuf_c_message_pack(&m->base, GRPC_SLICE_START_PTR(e->msg));
  m->time = NULL;
  m->kind = "";
  return 0;
failed:
  m->time = NULL;
  e->msg = grpc_empty_slice();
  entry_clear(e);
  return -1;
}

static int entry_from_audit(struct entry *e, struct pos pos, const struct store_audit *a,
                            struct store_txn *txn) {
  Tlsplane__V1__Event m = TLSPLANE__V1__EVENT__INIT;
  m.type = TLSPLANE__V1__EVENT_TYPE__RESOURCE_CHANGED;
  m.resource = (char *)str_or_empty(a->resource);
  m.action = (char *)str_or_empty(a->action);
  m.actor = (char *)str_or_empty(a->actor);
  return entry_make(e, pos, &m, txn, a->time_us);
}

static int entry_from_pending(struct entry *e, struct pos pos, const struct pending *p,
                              struct store_txn *txn) {
  Tlsplane__V1__Event m = TLSPLANE__V1__EVENT__INIT;
  m.type = p->e.type;
  m.resource = (char *)p->e.resource;
  m.listener = (char *)p->e.listener;
  m.agent = (char *)p->e.agent;
  m.reason = (char *)p->e.reason;
  m.target_revision = p->e.target_revision;
  return entry_make(e, pos, &m, txn, p->time_us);
}

/* Whether w's filters let e through. */
static int entry_matches(const struct watch *w, const struct entry *e) {
  if (w->include != 0 && !(w->include & (1u << e->type)))
    return 0;
  if (e->kind[0] == '\0')
    return 1; /* on no resource: kinds and labels do not apply */
  if (w->n_kinds > 0) {
    size_t i = 0;
    while (i < w->n_kinds && strcmp(w->kinds[i], e->kind) != 0)
      i++;
    if (i == w->n_kinds)
      return 0;
  }
  for (size_t i = 0; i < w->n_selector; i++) {
    size_t j = 0;
    while (j < e->n_labels && (strcmp(e->labels[2 * j], w->selector[2 * i]) != 0 ||
                               strcmp(e->labels[2 * j + 1], w->selector[2 * i + 1]) != 0))
      j++;
    if (j == e->n_labels)
      return 0;
  }
  return 1;
}

/* Appends e (taken) to the ring, evicting the oldest when full. */
static void ring_push_locked(struct events *ev, struct entry *e) {
  if (ev->n == EVENTS_RING) {
    struct entry *old = &ev->ring[ev->first];
    ev->floor = old->pos;
    entry_clear(old);
    ev->first = (ev->first + 1) % EVENTS_RING;
    ev->n--;
  }
  ev->ring[(ev->first + ev->n) % EVENTS_RING] = *e;
  ev->n++;
  ev->last = e->pos;
  memset(e, 0, sizeof(*e));
}

/* The place after row a, the previous row read being at *at. */
static struct pos place_next(struct pos *at, int64_t revision) {
  if (revision == at->rev)
    at->seq++;
  else {
    at->rev = revision;
    at->seq = 1;
  }
  return *at;
}

/* Numbers the audit rows committed since the last round, then the
 * published events, into the ring. */
static void ingest(struct events *ev) {
  struct tp_err err = {0};
  struct store_txn *txn = NULL;
  if (store_begin(ev->api->store, 0, &txn, &err) != 0) {
    log_warn("events", "reading the audit log: %s", err.msg);
    return;
  }
  for (;;) {
    struct store_audit_query q = {.after_seq = ev->ingested_seq, .limit = PAGE_ROWS};
    struct store_audit *rows = NULL;
    size_t n = 0;
    if (store_audit_list(txn, &q, &rows, &n, &err) != 0) {
      log_warn("events", "reading the audit log: %s", err.msg);
      break;
    }
    for (size_t i = 0; i < n; i++) {
      pthread_mutex_lock(&ev->lock);
      struct pos at = ev->last;
      pthread_mutex_unlock(&ev->lock);
      struct entry e;
      if (entry_from_audit(&e, place_next(&at, rows[i].revision), &rows[i], txn) != 0) {
        /* Not numbered: the next round reads it again. */
        n = 0;
        break;
      }
      pthread_mutex_lock(&ev->lock);
      ring_push_locked(ev, &e);
      pthread_mutex_unlock(&ev->lock);
      ev->ingested_seq = rows[i].seq;
      if (rows[i].resource != NULL && strncmp(rows[i].resource, "certificates/", 13) == 0)
        ev->renew_due = 1;
    }
    store_audit_free(rows, n);
    if (n < PAGE_ROWS)
      break;
  }
  pthread_mutex_lock(&ev->lock);
  struct pending *p = ev->pending;
  ev->pending = NULL;
  ev->pending_tail = &ev->pending;
  ev->n_pending = 0;
  pthread_mutex_unlock(&ev->lock);
  while (p != NULL) {
    struct pending *next = p->next;
    pthread_mutex_lock(&ev->lock);
    struct pos at = {ev->last.rev, ev->last.seq + 1};
    pthread_mutex_unlock(&ev->lock);
    struct entry e;
    if (entry_from_pending(&e, at, p, txn) == 0) {
      pthread_mutex_lock(&ev->lock);
      ring_push_locked(ev, &e);
      pthread_mutex_unlock(&ev->lock);
    }
    free((char *)p->e.resource);
    free((char *)p->e.listener);
    free((char *)p->e.agent);
    free((char *)p->e.reason);
    free(p);
    p = next;
  }
  store_rollback(txn);
}

/* Ends w with status (it may resume from the last event it received). */
static void watch_cut(struct watch *w, grpc_status_code status, const char *msg) {
  w->done = 1;
  rpc_stream_finish(w->stream, status, msg);
}

/* One page of w's replay from the audit log. Returns 1 when more is to
 * come, 0 when w reached the ring. */
static int watch_replay(struct events *ev, struct watch *w) {
  struct tp_err err = {0};
  struct store_txn *txn = NULL;
  if (store_begin(ev->api->store, 0, &txn, &err) != 0) {
    watch_cut(w, GRPC_STATUS_UNAVAILABLE, "the audit log cannot be read now: resume later");
    return 0;
  }
  struct store_audit_query q = {
      .after_seq = w->replay_seq, .since_revision = w->replay_since, .limit = PAGE_ROWS};
  struct store_audit *rows = NULL;
  size_t n = 0;
  if (store_audit_list(txn, &q, &rows, &n, &err) != 0) {
    store_rollback(txn);
    watch_cut(w, GRPC_STATUS_UNAVAILABLE, "the audit log cannot be read now: resume later");
    return 0;
  }
  int64_t snapshot = store_txn_revision(txn);
  pthread_mutex_lock(&ev->lock);
  struct pos floor = ev->floor;
  pthread_mutex_unlock(&ev->lock);
  int reached = 0;
  for (size_t i = 0; i < n && !w->done; i++) {
    struct pos at = w->replay_at;
    struct pos p = place_next(&at, rows[i].revision);
    if (pos_after(p, floor)) {
      reached = 1; /* the ring holds it and what follows */
      break;
    }
    w->replay_at = at;
    w->replay_seq = rows[i].seq;
    if (!pos_after(p, w->pos))
      continue;
    struct entry e;
    if (entry_from_audit(&e, p, &rows[i], txn) != 0) {
      watch_cut(w, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory: resume later");
      break;
    }
    if (entry_matches(w, &e) && rpc_stream_send_slice(w->stream, e.msg) != 0)
      w->done = 1;
    w->pos = p;
    entry_clear(&e);
  }
  store_audit_free(rows, n);
  store_rollback(txn);
  /* Every row up to the snapshot read and the ring's floor no later: what
   * lies between is in the ring, or was an event kept in memory only. */
  if (!reached && n < PAGE_ROWS && snapshot >= floor.rev)
    reached = 1;
  if (reached && pos_after(floor, w->pos))
    w->pos = floor;
  return !reached;
}

/* Brings w up to date, as far as its queue allows. */
static void watch_serve(struct events *ev, struct watch *w) {
  if (!w->ready || w->done)
    return;
  size_t queued = rpc_stream_queued(w->stream);
  if (queued > EVENTS_QUEUE_MAX) {
    watch_cut(w, GRPC_STATUS_RESOURCE_EXHAUSTED,
              "the client does not read its events: resume from the last one received");
    return;
  }
  pthread_mutex_lock(&ev->lock);
  int behind = pos_after(ev->floor, w->pos);
  pthread_mutex_unlock(&ev->lock);
  if (behind) {
    if (queued > REPLAY_PAUSE) {
      rpc_stream_notify_drained(w->stream); /* its drained callback kicks */
      return;
    }
    if (watch_replay(ev, w))
      rpc_stream_notify_drained(w->stream);
    else
      kick(ev); /* the ring next */
    return;
  }
  pthread_mutex_lock(&ev->lock);
  for (size_t i = 0; i < ev->n && !w->done; i++) {
    const struct entry *e = &ev->ring[(ev->first + i) % EVENTS_RING];
    if (!pos_after(e->pos, w->pos))
      continue;
    if (entry_matches(w, e) && rpc_stream_send_slice(w->stream, e->msg) != 0)
      w->done = 1;
    w->pos = e->pos;
  }
  pthread_mutex_unlock(&ev->lock);
}

static void watch_free(struct watch *w) {
  strv_free(w->kinds, w->n_kinds);
  strv_free(w->selector, 2 * w->n_selector);
  rpc_stream_unref(w->stream);
  w->magic = 0;
  free(w);
}

static void serve_all(struct events *ev) {
  pthread_mutex_lock(&ev->lock);
  size_t n = 0;
  struct watch *list[EVENTS_WATCHES_MAX];
  for (struct watch *w = ev->watches; w != NULL && n < EVENTS_WATCHES_MAX; w = w->next)
    if (w->ready && !w->done) {
      w->pins++;
      list[n++] = w;
    }
  pthread_mutex_unlock(&ev->lock);
  for (size_t i = 0; i < n; i++)
    watch_serve(ev, list[i]);
  pthread_mutex_lock(&ev->lock);
  for (size_t i = 0; i < n; i++)
    if (--list[i]->pins == 0 && list[i]->gone)
      watch_free(list[i]);
  pthread_mutex_unlock(&ev->lock);
}

static void renew_seen_free(struct renew_seen *v, size_t n) {
  for (size_t i = 0; v != NULL && i < n; i++)
    free(v[i].name);
  free(v);
}

/* RENEW_SOON for every certificate with less than a third of its
 * lifetime left, once per certificate and revision (a renewal is a new
 * revision, and a new window). */
static void renew_check(struct events *ev) {
  struct tp_err err = {0};
  struct store_txn *txn = NULL;
  if (store_begin(ev->api->store, 0, &txn, &err) != 0)
    return;
  struct store_query q = {.kind = api_kind_certificate.kind};
  struct store_row *rows = NULL;
  size_t n = 0;
  if (store_list(txn, &q, &rows, &n, &err) != 0) {
    store_rollback(txn);
    log_warn("events", "renewal check: %s", err.msg);
    return;
  }
  store_rollback(txn);
  struct renew_seen *seen = calloc(n ? n : 1, sizeof(*seen));
  size_t n_seen = 0;
  int64_t now = now_us();
  for (size_t i = 0; seen != NULL && i < n; i++) {
    Tlsplane__V1__Certificate *c =
        (Tlsplane__V1__Certificate *)api_decode_row(&api_kind_certificate, &rows[i], &err);
    if (c == NULL)
      continue;
    int64_t nb = pb_timestamp_us(c->not_before), na = pb_timestamp_us(c->not_after);
    int in_window =
        c->not_before != NULL && c->not_after != NULL && na > nb && na - now < (na - nb) / 3;
    protobuf_c_message_free_unpacked(&c->base, NULL);
    if (!in_window || (seen[n_seen].name = strdup(rows[i].name)) == NULL)
      continue;
    seen[n_seen].revision = rows[i].revision;
    n_seen++;
    size_t j = 0;
    while (j < ev->n_renew_seen && (strcmp(ev->renew_seen[j].name, rows[i].name) != 0 ||
                                    ev->renew_seen[j].revision != rows[i].revision))
      j++;
    if (j < ev->n_renew_seen)
      continue; /* told already */
    char reason[128];
    int64_t left_s = (na - now) / 1000000;
    snprintf(reason, sizeof(reason), "less than a third of its lifetime left (%lld s)",
             (long long)(left_s > 0 ? left_s : 0));
    struct events_event e = {
        .type = TLSPLANE__V1__EVENT_TYPE__RENEW_SOON, .resource = rows[i].name, .reason = reason};
    events_publish(ev, &e);
  }
  store_rows_free(rows, n);
  if (seen == NULL)
    return;
  renew_seen_free(ev->renew_seen, ev->n_renew_seen);
  ev->renew_seen = seen;
  ev->n_renew_seen = n_seen;
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Publishes ROLLOUT_APPLIED when every connected agent serves revision
 * (none pending, none failed); events_publish keeps it once per revision. */
static void rollout_check(struct events *ev, int64_t revision) {
  Tlsplane__V1__Rollout *r = NULL;
  struct tp_err err = {0};
  if (ev->api->hub == NULL || hub_rollout(ev->api->hub, revision, &r, &err) != 0)
    return;
  if (r->agents_connected > 0 && r->agents_applied == r->agents_connected) {
    struct events_event e = {.type = TLSPLANE__V1__EVENT_TYPE__ROLLOUT_APPLIED,
                             .target_revision = revision};
    events_publish(ev, &e);
  }
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void *events_main(void *arg) {
  struct events *ev = arg;
  int64_t next_check_ms = 0; /* at once: certificates already in their window */
  int64_t next_rollout_ms = 0;
  for (;;) {
    pthread_mutex_lock(&ev->lock);
    for (;;) {
      int64_t now = mono_ms();
      int64_t due = next_check_ms;
      if (ev->rollout_dirty > 0 && next_rollout_ms < due)
        due = next_rollout_ms;
      if (ev->kicked || ev->stop || now >= due)
        break;
      int64_t wait_ms = due - now;
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until);
      until.tv_sec += wait_ms / 1000;
      until.tv_nsec += (wait_ms % 1000) * 1000000;
      if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
      }
      pthread_cond_timedwait(&ev->wake, &ev->lock, &until);
    }
    int stop = ev->stop;
    ev->kicked = 0;
    int64_t rollout = 0;
    if (ev->rollout_dirty > 0 && mono_ms() >= next_rollout_ms) {
      rollout = ev->rollout_dirty;
      ev->rollout_dirty = 0;
      next_rollout_ms = mono_ms() + ROLLOUT_CHECK_MS;
    }
    pthread_mutex_unlock(&ev->lock);
    if (stop)
      break;
    if (rollout > 0)
      rollout_check(ev, rollout);
    ingest(ev);
    if (ev->renew_due || mono_ms() >= next_check_ms) {
      ev->renew_due = 0;
      renew_check(ev);
      next_check_ms = mono_ms() + RENEW_CHECK_MS;
    }
    serve_all(ev);
  }
  return NULL;
}

/* Where the audit log ends: its last row's seq and the place of that row
 * (the number of rows at its revision). */
static int log_end(struct events *ev, struct tp_err *err) {
  struct store_txn *txn = NULL;
  if (store_begin(ev->api->store, 0, &txn, err) != 0)
    return -1;
  struct store_audit_query q = {.descending = 1, .limit = 1};
  struct store_audit *rows = NULL;
  size_t n = 0;
  int rc = store_audit_list(txn, &q, &rows, &n, err);
  ev->last.rev = store_revision(ev->api->store);
  if (rc == 0 && n == 1) {
    ev->ingested_seq = rows[0].seq;
    int64_t rev = rows[0].revision;
    struct store_audit *same = NULL;
    size_t n_same = 0;
    struct store_audit_query qs = {.since_revision = rev - 1};
    if ((rc = store_audit_list(txn, &qs, &same, &n_same, err)) == 0 && rev == ev->last.rev)
      ev->last.seq = (int32_t)n_same;
    store_audit_free(same, n_same);
  }
  store_audit_free(rows, n);
  store_rollback(txn);
  ev->floor = ev->last;
  return rc;
}

int events_new(struct api *api, struct events **out, struct tp_err *err) {
  struct events *ev = calloc(1, sizeof(*ev));
  if (ev == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  ev->magic = EVENTS_MAGIC;
  ev->api = api;
  ev->pending_tail = &ev->pending;
  if (log_end(ev, err) != 0) {
    free(ev);
    return -1;
  }
  pthread_mutex_init(&ev->lock, NULL);
  pthread_cond_init(&ev->wake, NULL);
  int rc = pthread_create(&ev->thread, NULL, events_main, ev);
  if (rc != 0) {
    pthread_cond_destroy(&ev->wake);
    pthread_mutex_destroy(&ev->lock);
    free(ev);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "events: cannot start the thread: %s",
                      strerror(rc));
  }
  *out = ev;
  return 0;
}

void events_free(struct events *ev) {
  if (ev == NULL)
    return;
  pthread_mutex_lock(&ev->lock);
  ev->stop = 1;
  pthread_cond_signal(&ev->wake);
  pthread_mutex_unlock(&ev->lock);
  pthread_join(ev->thread, NULL);
  for (size_t i = 0; i < ev->n; i++)
    entry_clear(&ev->ring[(ev->first + i) % EVENTS_RING]);
  while (ev->pending != NULL) {
    struct pending *p = ev->pending;
    ev->pending = p->next;
    free((char *)p->e.resource);
    free((char *)p->e.listener);
    free((char *)p->e.agent);
    free((char *)p->e.reason);
    free(p);
  }
  renew_seen_free(ev->renew_seen, ev->n_renew_seen);
  pthread_cond_destroy(&ev->wake);
  pthread_mutex_destroy(&ev->lock);
  ev->magic = 0;
  free(ev);
}

void events_notify(struct events *ev, int64_t revision) {
  (void)revision;
  if (ev != NULL)
    kick(ev);
}

void events_rollout_check(struct events *ev, int64_t revision) {
  if (ev == NULL)
    return;
  pthread_mutex_lock(&ev->lock);
  if (revision > ev->rollout_dirty) {
    ev->rollout_dirty = revision;
    pthread_cond_signal(&ev->wake); /* the thread waits until the check is due */
  }
  pthread_mutex_unlock(&ev->lock);
}

void events_publish(struct events *ev, const struct events_event *e) {
  if (ev == NULL)
    return;
  struct pending *p = calloc(1, sizeof(*p));
  if (p == NULL)
    return;
  p->e = *e;
  p->e.resource = strdup(str_or_empty(e->resource));
  p->e.listener = strdup(str_or_empty(e->listener));
  p->e.agent = strdup(str_or_empty(e->agent));
  p->e.reason = strdup(str_or_empty(e->reason));
  p->time_us = now_us();
  int ok = p->e.resource && p->e.listener && p->e.agent && p->e.reason;
  pthread_mutex_lock(&ev->lock);
  if (e->type == TLSPLANE__V1__EVENT_TYPE__ROLLOUT_APPLIED) {
    if (e->target_revision <= ev->applied_max)
      ok = 0;
    else if (ok)
      ev->applied_max = e->target_revision;
  }
  if (ok && ev->n_pending >= PENDING_MAX) {
    ok = 0;
    log_warn("events", "%d events wait to be sent: one more is dropped", PENDING_MAX);
  }
  if (ok) {
    *ev->pending_tail = p;
    ev->pending_tail = &p->next;
    ev->n_pending++;
    kick_locked(ev);
  }
  pthread_mutex_unlock(&ev->lock);
  if (!ok) {
    free((char *)p->e.resource);
    free((char *)p->e.listener);
    free((char *)p->e.agent);
    free((char *)p->e.reason);
    free(p);
  }
}

/* The stream. */

static struct watch *watch_from(void *data) {
  struct watch *w = data;
  if (w == NULL || w->magic != WATCH_MAGIC)
    abort();
  return w;
}

static int watch_started(struct rpc_stream *stream, const struct rpc_call_info *call, void *data,
                         void **stream_data, struct tp_err *err) {
  (void)call;
  struct events *ev = data;
  struct watch *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  w->magic = WATCH_MAGIC;
  w->ev = ev;
  w->stream = stream;
  pthread_mutex_lock(&ev->lock);
  if (ev->n_watches >= EVENTS_WATCHES_MAX) {
    pthread_mutex_unlock(&ev->lock);
    free(w);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED,
                      "too many event watches (%d): try again later", EVENTS_WATCHES_MAX);
  }
  rpc_stream_ref(stream);
  w->next = ev->watches;
  ev->watches = w;
  ev->n_watches++;
  pthread_mutex_unlock(&ev->lock);
  *stream_data = w;
  return 0;
}

/* Reads r's filters into w. */
static int watch_filters(struct watch *w, const Tlsplane__V1__WatchEventsRequest *r,
                         struct tp_err *err) {
  for (size_t i = 0; i < r->n_kinds; i++)
    if (kind_of_collection(r->kinds[i], strlen(r->kinds[i])) == NULL)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "kinds[%zu]: unknown kind \"%.64s\" (a collection: \"certificates\", "
                        "\"listeners\", ...)",
                        i, r->kinds[i]);
  for (size_t i = 0; i < r->n_include; i++) {
    int t = (int)r->include[i];
    if (t <= 0 || t > TYPES_MAX)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "include[%zu]: unknown event type %d", i,
                        t);
    w->include |= 1u << t;
  }
  if (api_labels_check(&r->base, "label_selector", "label_selector", err) != 0)
    return -1;
  size_t n_sel = pb_map_size(&r->base, "label_selector");
  if ((r->n_kinds > 0 && (w->kinds = calloc(r->n_kinds, sizeof(char *))) == NULL) ||
      (n_sel > 0 && (w->selector = calloc(2 * n_sel, sizeof(char *))) == NULL))
    goto nomem;
  for (size_t i = 0; i < r->n_kinds; i++) {
    if ((w->kinds[i] = strdup(r->kinds[i])) == NULL)
      goto nomem;
    w->n_kinds = i + 1;
  }
  for (size_t i = 0; i < n_sel; i++) {
    const char *key, *value;
    pb_map_entry(&r->base, "label_selector", i, &key, &value);
    w->selector[2 * i] = strdup(key);
    w->selector[2 * i + 1] = strdup(value);
    w->n_selector = i + 1;
    if (w->selector[2 * i] == NULL || w->selector[2 * i + 1] == NULL)
      goto nomem;
  }
  return 0;
nomem:
  return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
}

/* Checks since_revision against the store: not beyond the latest
 * revision, not before the audit log. */
static int watch_since(struct events *ev, const Tlsplane__V1__WatchEventsRequest *r,
                       struct tp_err *err) {
  if (r->since_revision < 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "since_revision: must not be negative");
  if (r->since_sequence < 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "since_sequence: must not be negative");
  if (r->since_sequence > 0 && r->since_revision == 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "since_sequence: needs since_revision (the revision of that event)");
  if (r->since_revision == 0)
    return 0;
  int64_t latest = store_revision(ev->api->store);
  if (r->since_revision > latest)
    return tp_err_set(err, GRPC_STATUS_OUT_OF_RANGE,
                      "since_revision: %lld is after the latest revision, %lld",
                      (long long)r->since_revision, (long long)latest);
  struct store_txn *txn = NULL;
  if (store_begin(ev->api->store, 0, &txn, err) != 0)
    return -1;
  struct store_audit_query q = {.limit = 1};
  struct store_audit *rows = NULL;
  size_t n = 0;
  int rc = store_audit_list(txn, &q, &rows, &n, err);
  store_rollback(txn);
  int64_t oldest = n == 1 ? rows[0].revision : latest + 1;
  store_audit_free(rows, n);
  if (rc != 0)
    return -1;
  if (r->since_revision < oldest - 1)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "since_revision: %lld is older than the audit log, which begins at "
                      "revision %lld",
                      (long long)r->since_revision, (long long)oldest);
  return 0;
}

/* The one request; nothing more is read. */
static int watch_message(struct rpc_stream *stream, void *stream_data, ProtobufCMessage *msg,
                         struct tp_err *err) {
  (void)stream;
  struct watch *w = watch_from(stream_data);
  struct events *ev = w->ev;
  const Tlsplane__V1__WatchEventsRequest *r = (const Tlsplane__V1__WatchEventsRequest *)msg;
  int rc = watch_since(ev, r, err);
  if (rc == 0)
    rc = watch_filters(w, r, err);
  if (rc != 0) {
    protobuf_c_message_free_unpacked(msg, NULL);
    return -1;
  }
  pthread_mutex_lock(&ev->lock);
  if (r->since_revision == 0)
    w->pos = ev->last;
  else {
    w->pos.rev = r->since_revision;
    w->pos.seq = r->since_sequence > 0 ? r->since_sequence : SEQ_END;
    /* Replay numbers the rows of since_revision from its first. */
    w->replay_since = r->since_revision - 1;
    w->replay_at.rev = w->replay_since;
    w->replay_at.seq = SEQ_END;
  }
  w->ready = 1;
  kick_locked(ev);
  pthread_mutex_unlock(&ev->lock);
  protobuf_c_message_free_unpacked(msg, NULL);
  return 1;
}

static void watch_half_closed(struct rpc_stream *stream, void *stream_data) {
  if (!watch_from(stream_data)->ready)
    rpc_stream_finish(stream, GRPC_STATUS_INVALID_ARGUMENT, "request: no message");
}

static void watch_drained(struct rpc_stream *stream, void *stream_data) {
  (void)stream;
  kick(watch_from(stream_data)->ev);
}

static void watch_shutdown(struct rpc_stream *stream, void *stream_data) {
  (void)stream_data;
  rpc_stream_finish(stream, GRPC_STATUS_UNAVAILABLE,
                    "the server is shutting down: resume from the last event received");
}

static void watch_ended(struct rpc_stream *stream, void *stream_data) {
  (void)stream;
  struct watch *w = watch_from(stream_data);
  struct events *ev = w->ev;
  pthread_mutex_lock(&ev->lock);
  for (struct watch **p = &ev->watches; *p != NULL; p = &(*p)->next)
    if (*p == w) {
      *p = w->next;
      break;
    }
  ev->n_watches--;
  w->gone = 1;
  if (w->pins == 0)
    watch_free(w);
  pthread_mutex_unlock(&ev->lock);
}

static const struct rpc_stream_ops watch_ops = {
    .req = &tlsplane__v1__watch_events_request__descriptor,
    .started = watch_started,
    .message = watch_message,
    .half_closed = watch_half_closed,
    .drained = watch_drained,
    .shutdown = watch_shutdown,
    .ended = watch_ended,
};

int events_register(struct events *ev, struct rpc_server *srv) {
  return rpc_server_add_stream(srv, "/tlsplane.v1.AuditService/WatchEvents", &watch_ops, ev);
}
