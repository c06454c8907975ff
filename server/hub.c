/* The push hub. Agent streams hold no thread: the RPC core runs each
 * stream's callbacks on its pool (the hello, then acks and stats, each a
 * short update of struct hub_agent under the hub's lock; the hello also a
 * short store write), and one push thread, the hub's own, sends snapshots:
 * woken by every committed revision (hub_notify), every agent that
 * connects and every busy stream once it drained, it decides for each connected
 * agent whose checked revision is behind whether the revision changed
 * what that agent serves (push()), and queues the snapshot on its stream
 * if so. Sends never wait: a slow agent's stream keeps at most one
 * message queued, and is taken again once it drained.
 *
 * What is sent comes from the revision's world (fleet.h), built once for
 * every agent: a protocol 2 agent gets the delta between what it holds
 * (its view) and the world's listeners for its labels, an older agent its
 * whole snapshot when that changed. A world that cannot be built, or is
 * built with failures, is built again on a back-off; nothing is removed
 * from an agent meanwhile (invariant 8).
 *
 * What an agent receives is chosen by the labels of its record in the
 * store (set by its join token and UpdateAgent), which the world holds;
 * the labels its hello claims are only recorded, and a claim that differs
 * from the record is reported, never followed. */
#include "hub.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "events.h"
#include "fleet.h"
#include "log.h"
#include "pb.h"
#include "snapshot.h"

#define HUB_CONN_MAGIC 0x6875bc0eu
#define HASH_LEN RSET_HASH_LEN
/* A world that could not be built, or built with failures, is built again
 * after a delay that doubles from the first to the last. */
#define RETRY_FIRST_MS 1000
#define RETRY_MAX_MS (60 * 1000)
/* Server-side failures kept per agent for GetRollout. */
#define AGENT_FAILURES_MAX 8
/* The stream protocol that sends deltas (AgentHello.protocol). */
#define PROTOCOL_DELTA 2

/* A listener the server could not build for an agent, as GetRollout
 * reports it. */
struct agent_failure {
  char *listener;
  char *reason;
};

/* One agent the hub knows: connected now, or since it last was. */
struct hub_agent {
  struct hub_agent *next;
  char *name; /* "agents/edge-1" */
  char *version;
  int connected;
  uint64_t connection;       /* which stream owns this entry */
  struct rpc_stream *stream; /* referenced while connected */
  int cut;                   /* replaced or deleted: the stream must end */
  int fresh;                 /* connected, its first round not done yet */
  int pinned;                /* the push thread works on it outside the lock */
  int doomed;                /* unlinked while pinned: the push thread frees it */
  int64_t last_seen_us;
  int64_t sent_revision;    /* of the last snapshot sent */
  int64_t checked_revision; /* newest revision compared with what was sent */
  int64_t applied_revision; /* from the last ack */
  int protocol;             /* of its hello: PROTOCOL_DELTA, or older (whole snapshots) */
  /* Protocol 2: what the agent holds (its hello, then every delta sent);
   * only the push thread uses it once the entry is attached. */
  struct fleet_view *view;
  uint64_t world_generation;         /* of the world last pushed */
  unsigned char sent_hash[HASH_LEN]; /* older protocol: of the last snapshot sent */
  int has_sent;
  Tlsplane__V1__AgentAck *last_ack;
  Tlsplane__V1__AgentStats *stats;
  /* Why the server could not build some of its listeners at
   * failed_revision (the world's failures that concern it). */
  struct agent_failure failures[AGENT_FAILURES_MAX];
  size_t n_failures;
  int64_t failed_revision;
  Tlsplane__V1__PushStats pushed; /* on this stream; counts only, no pointers */
};

/* Invariants: agents, revision, kicked, stop and every hub_agent field
 * are guarded by lock; an agent entry is freed by whoever unlinks it,
 * unless pinned (then by the push thread). */
struct hub {
  struct api *api;
  pthread_mutex_t lock;
  pthread_cond_t changed; /* kicked or stop: for the push thread */
  int kicked;             /* a revision committed, an agent connected, a busy stream drained */
  int stop;
  pthread_t pusher;
  int64_t revision;
  struct hub_agent *agents;
  uint64_t connections;
  /* The world agents are brought to (fleet.h): built once per revision,
   * shared by every stream. world_lock serializes builds and guards the
   * fields below it; streams hold a reference while they use a world. */
  pthread_mutex_t world_lock;
  struct fleet_world *world;
  /* A build failed (world_error, at world_error_revision) or left
   * failures: the next attempt is due at retry_at_ms (monotonic), after
   * retry_ms. world_generation counts worlds built, so that a rebuild of
   * the same revision still reaches every stream. */
  char world_error[sizeof(((struct tp_err *)0)->msg)];
  int64_t world_error_revision;
  _Atomic int64_t retry_at_ms; /* 0: none due; read by streams without the lock */
  int64_t retry_ms;
  _Atomic uint64_t world_generation;
  /* Push latency (lock): when each recent revision committed, and how
   * long agents took from the commit to their ack of it. */
  struct {
    int64_t revision;
    int64_t at_ms; /* monotonic */
  } commits[HUB_COMMITS];
  size_t commits_next;
  unsigned long latency_buckets[HUB_LATENCY_BUCKETS]; /* cumulative counts are made on read */
  unsigned long latency_count;
  double latency_sum_s;
};

const double hub_latency_bounds_s[HUB_LATENCY_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                          0.5,   1,    2.5,   5,    10};

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void commit_hook(int64_t revision, void *data) {
  struct hub *hub = data;
  hub_notify(hub, revision);
  events_notify(hub->api->events, revision);
}

/* The store's watch: a revision another server committed (or this one:
 * hub_notify and events_notify take each revision once) goes the way of
 * this server's own commits. */
static void watch_revision(int64_t revision, void *data) {
  commit_hook(revision, data);
}

static void watch_status(const char *msg, void *data) {
  (void)data;
  if (msg != NULL)
    log_warn("hub",
             "not hearing other servers' commits: %s (reconnecting every second; their "
             "revisions reach this server's agents once it is back)",
             msg);
  else
    log_info("hub", "hearing other servers' commits again");
}

static void *push_main(void *arg);

int hub_new(struct api *api, struct hub **out, struct tp_err *err) {
  struct hub *hub = calloc(1, sizeof(*hub));
  if (hub == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  hub->api = api;
  hub->revision = store_revision(api->store);
  pthread_mutex_init(&hub->lock, NULL);
  pthread_mutex_init(&hub->world_lock, NULL);
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&hub->changed, &attr);
  pthread_condattr_destroy(&attr);
  int rc = pthread_create(&hub->pusher, NULL, push_main, hub);
  if (rc != 0) {
    pthread_cond_destroy(&hub->changed);
    pthread_mutex_destroy(&hub->world_lock);
    pthread_mutex_destroy(&hub->lock);
    free(hub);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "hub: cannot start the push thread: %s",
                      strerror(rc));
  }
  store_set_commit_hook(api->store, commit_hook, hub);
  const struct store_watch watch = {watch_revision, watch_status, hub};
  if (store_watch_start(api->store, &watch, err) != 0) {
    hub_free(hub);
    return -1;
  }
  *out = hub;
  return 0;
}

static void failures_clear(struct hub_agent *a) {
  for (size_t i = 0; i < a->n_failures; i++) {
    free(a->failures[i].listener);
    free(a->failures[i].reason);
  }
  a->n_failures = 0;
}

static void agent_free(struct hub_agent *a) {
  failures_clear(a);
  fleet_view_free(a->view);
  free(a->name);
  free(a->version);
  if (a->last_ack != NULL)
    protobuf_c_message_free_unpacked(&a->last_ack->base, NULL);
  if (a->stats != NULL)
    protobuf_c_message_free_unpacked(&a->stats->base, NULL);
  free(a);
}

void hub_free(struct hub *hub) {
  if (hub == NULL)
    return;
  store_watch_stop(hub->api->store);
  store_set_commit_hook(hub->api->store, NULL, NULL);
  pthread_mutex_lock(&hub->lock);
  hub->stop = 1;
  pthread_cond_broadcast(&hub->changed);
  pthread_mutex_unlock(&hub->lock);
  pthread_join(hub->pusher, NULL);
  while (hub->agents != NULL) {
    struct hub_agent *a = hub->agents;
    hub->agents = a->next;
    agent_free(a);
  }
  fleet_world_unref(hub->world);
  pthread_cond_destroy(&hub->changed);
  pthread_mutex_destroy(&hub->world_lock);
  pthread_mutex_destroy(&hub->lock);
  free(hub);
}

void hub_notify(struct hub *hub, int64_t revision) {
  pthread_mutex_lock(&hub->lock);
  if (revision > hub->revision) {
    hub->revision = revision;
    hub->commits[hub->commits_next % HUB_COMMITS].revision = revision;
    hub->commits[hub->commits_next % HUB_COMMITS].at_ms = mono_ms();
    hub->commits_next++;
  }
  hub->kicked = 1;
  pthread_cond_broadcast(&hub->changed);
  pthread_mutex_unlock(&hub->lock);
}

/* --- worlds --- */

/* Logs a world's failures that the previous world did not have at the
 * same revision with the same reason: one line per revision and cause,
 * however often the build is retried. */
static void failures_log(const struct fleet_world *w, const struct fleet_world *prev) {
  size_t n, n_prev = 0;
  const struct fleet_failure *f = fleet_world_failures(w, &n);
  const struct fleet_failure *pf = prev != NULL ? fleet_world_failures(prev, &n_prev) : NULL;
  int same_revision = prev != NULL && fleet_world_revision(prev) == fleet_world_revision(w);
  for (size_t i = 0; i < n; i++) {
    int seen = 0;
    for (size_t j = 0; same_revision && j < n_prev && !seen; j++)
      seen = strcmp(pf[j].listener, f[i].listener) == 0 && strcmp(pf[j].reason, f[i].reason) == 0;
    if (!seen)
      log_error("hub",
                "revision %lld: %s cannot be built: %s (agents keep the version they serve; "
                "retrying with back-off)",
                (long long)fleet_world_revision(w), f[i].listener, f[i].reason);
  }
}

/* Builds the world at the store's revision if the current one is older
 * than `revision` or a retry is due. Called with world_lock held. */
static void world_update(struct hub *hub, int64_t revision) {
  int64_t now = mono_ms();
  int stale = hub->world == NULL || fleet_world_revision(hub->world) < revision;
  int retry = hub->retry_at_ms != 0 && now >= hub->retry_at_ms;
  if (!stale && !retry)
    return;
  if (!retry && hub->retry_at_ms != 0 && hub->world_error[0] != '\0')
    return; /* the last build failed: wait for its retry, even for a newer revision */
  struct fleet_world *w = NULL;
  struct tp_err err = {0};
  if (fleet_world_build(hub->api->store, hub->world, &w, &err) != 0) {
    int64_t rev = store_revision(hub->api->store);
    if (rev != hub->world_error_revision || strcmp(err.msg, hub->world_error) != 0)
      log_error("hub",
                "revision %lld: the configuration cannot be read: %s (agents keep what they "
                "serve; retrying with back-off)",
                (long long)rev, err.msg);
    snprintf(hub->world_error, sizeof(hub->world_error), "%s", err.msg);
    hub->world_error_revision = rev;
    hub->retry_ms = hub->retry_ms ? hub->retry_ms * 2 : RETRY_FIRST_MS;
    if (hub->retry_ms > RETRY_MAX_MS)
      hub->retry_ms = RETRY_MAX_MS;
    hub->retry_at_ms = now + hub->retry_ms;
    return;
  }
  failures_log(w, hub->world);
  size_t n_failures;
  fleet_world_failures(w, &n_failures);
  if (n_failures > 0) {
    hub->retry_ms = hub->retry_ms ? hub->retry_ms * 2 : RETRY_FIRST_MS;
    if (hub->retry_ms > RETRY_MAX_MS)
      hub->retry_ms = RETRY_MAX_MS;
    hub->retry_at_ms = now + hub->retry_ms;
  } else {
    hub->retry_ms = 0;
    hub->retry_at_ms = 0;
  }
  hub->world_error[0] = '\0';
  fleet_world_unref(hub->world);
  hub->world = w;
  hub->world_generation++;
}

/* The world at `revision` or later (or the newest that could be built:
 * NULL when none could), referenced: release with fleet_world_unref.
 * *error receives the reason the newest build failed, if it did. */
static struct fleet_world *world_get(struct hub *hub, int64_t revision, char *error, size_t len) {
  pthread_mutex_lock(&hub->world_lock);
  world_update(hub, revision);
  struct fleet_world *w = hub->world;
  if (w != NULL)
    fleet_world_ref(w);
  snprintf(error, len, "%s", hub->world_error);
  pthread_mutex_unlock(&hub->world_lock);
  return w;
}

/* --- agents --- */

/* A new entry for a connecting agent, from its hello (what it receives
 * follows its record's labels, which the world holds). */
static struct hub_agent *agent_new(const Tlsplane__V1__AgentHello *hello, const char *name) {
  struct hub_agent *a = calloc(1, sizeof(*a));
  if (a == NULL)
    return NULL;
  a->name = strdup(name);
  a->version = strdup(hello->version);
  if (a->name == NULL || a->version == NULL) {
    agent_free(a);
    return NULL;
  }
  a->applied_revision = hello->applied_revision;
  a->protocol = hello->protocol;
  tlsplane__v1__push_stats__init(&a->pushed);
  if (fleet_view_new(&a->view) != 0) {
    agent_free(a);
    return NULL;
  }
  fleet_view_set_protocol(a->view, a->protocol);
  return a;
}

/* The map field `map` of m as "k"="v","k2"="v2" into buf (cut short if
 * need be), each key and value through log_escape: claimed labels come
 * from the agent. */
static void labels_text(const ProtobufCMessage *m, const char *map, char *buf, size_t len) {
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < pb_map_size(m, map) && used + 1 < len; i++) {
    const char *k, *v;
    char ek[LOG_ESCAPE_LEN], ev[LOG_ESCAPE_LEN];
    pb_map_entry(m, map, i, &k, &v);
    int n = snprintf(buf + used, len - used, "%s\"%s\"=\"%s\"", i ? "," : "",
                     log_escape_str(ek, sizeof(ek), k), log_escape_str(ev, sizeof(ev), v));
    if (n < 0 || (size_t)n >= len - used)
      break; /* cut short: snprintf left it terminated */
    used += (size_t)n;
  }
}

/* Records what the agent's hello reports (its version, the labels it
 * claims) when the record is new or they changed (one revision), and
 * gives a the labels of its record. A claim that differs from the record
 * is logged; it changes nothing the agent receives. */
static int agent_record(struct hub *hub, const struct rpc_call_info *call,
                        const Tlsplane__V1__AgentHello *hello, struct hub_agent *a,
                        struct tp_err *err) {
  struct store_txn *txn;
  if (store_begin(hub->api->store, 1, &txn, err) != 0)
    return -1;
  ProtobufCMessage *old = NULL, *rec = NULL;
  struct store_row row = {0};
  struct tp_err probe = {0};
  int exists = api_read(txn, &api_kind_agent, a->name, 0, &old, &row, &probe) == 0;
  int rc = 0;
  if (!exists && probe.status != GRPC_STATUS_NOT_FOUND) {
    *err = probe;
    rc = -1;
  }
  const Tlsplane__V1__Agent *cur = (const Tlsplane__V1__Agent *)old;
  int same = exists && strcmp(cur->version, hello->version) == 0 &&
             pb_map_equal(&hello->base, "labels", old, "claimed_labels");
  if (rc == 0 && !same) {
    /* The reported fields, built over the hello's strings, then copied. */
    Tlsplane__V1__Agent reported = TLSPLANE__V1__AGENT__INIT;
    size_t n = hello->n_labels;
    Tlsplane__V1__Agent__ClaimedLabelsEntry *entries = calloc(n ? n : 1, sizeof(*entries));
    Tlsplane__V1__Agent__ClaimedLabelsEntry **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    for (size_t i = 0; entries != NULL && ptrs != NULL && i < n; i++) {
      tlsplane__v1__agent__claimed_labels_entry__init(&entries[i]);
      entries[i].key = hello->labels[i]->key;
      entries[i].value = hello->labels[i]->value;
      ptrs[i] = &entries[i];
    }
    reported.name = a->name;
    reported.version = hello->version;
    reported.claimed_labels = ptrs;
    reported.n_claimed_labels = n;
    ProtobufCMessage *fields = entries && ptrs ? pb_clone(&reported.base) : NULL;
    free(entries);
    free(ptrs);
    rec = fields != NULL && exists ? pb_clone(old) : fields;
    if (rec != NULL && rec != fields) {
      pb_field_swap(rec, fields, pb_field(rec->descriptor, "version"));
      pb_field_swap(rec, fields, pb_field(rec->descriptor, "claimed_labels"));
    }
    if (fields != NULL && rec != fields)
      protobuf_c_message_free_unpacked(fields, NULL);
    if (rec == NULL) {
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    } else {
      struct api_op op = {.api = hub->api,
                          .kind = &api_kind_agent,
                          .txn = txn,
                          .call = call,
                          .old = old,
                          .old_row = exists ? &row : NULL,
                          .now = time(NULL)};
      rc = api_write(&op, rec, NULL, exists ? "update" : "create", err);
    }
  }
  const Tlsplane__V1__Agent *r = (const Tlsplane__V1__Agent *)(rec != NULL ? rec : old);
  if (rc == 0 && r->labels_mismatch) {
    char claimed[512], recorded[512];
    labels_text(&r->base, "claimed_labels", claimed, sizeof(claimed));
    labels_text(&r->base, "labels", recorded, sizeof(recorded));
    log_warn("hub",
             "agent=%s claims the labels {%s}, its record has {%s}: the claim is ignored (labels "
             "come from its join token or UpdateAgent)",
             a->name, claimed, recorded);
  }
  if (rec != NULL)
    protobuf_c_message_free_unpacked(rec, NULL);
  if (old != NULL)
    protobuf_c_message_free_unpacked(old, NULL);
  store_row_clear(&row);
  if (rc != 0) {
    store_rollback(txn);
    return -1;
  }
  return store_commit(txn, NULL, err);
}

/* Unlinks a from the agent list (hub->lock) and frees it, unless the push
 * thread holds it: then that thread frees it once done (a->doomed). */
static void agent_drop(struct hub *hub, struct hub_agent *a) {
  for (struct hub_agent **pp = &hub->agents; *pp != NULL; pp = &(*pp)->next)
    if (*pp == a) {
      *pp = a->next;
      break;
    }
  a->next = NULL;
  if (a->pinned)
    a->doomed = 1;
  else
    agent_free(a);
}

/* Wakes the push thread (hub->lock). */
static void hub_kick(struct hub *hub) {
  hub->kicked = 1;
  pthread_cond_broadcast(&hub->changed);
}

/* Takes the agent's place in the hub for this connection (holding a
 * reference on stream until agent_detach); an older connection of the
 * same agent is cut. */
static void agent_attach(struct hub *hub, struct hub_agent *a, struct rpc_stream *stream) {
  rpc_stream_ref(stream);
  pthread_mutex_lock(&hub->lock);
  for (struct hub_agent *old = hub->agents; old != NULL; old = old->next) {
    if (strcmp(old->name, a->name) != 0)
      continue;
    if (old->connected) {
      old->cut = 1;
      rpc_stream_finish(old->stream, GRPC_STATUS_ABORTED,
                        "replaced by a newer connection of the same agent");
      /* The old stream's ended callback removes its entry. */
    } else {
      agent_drop(hub, old);
    }
    break;
  }
  a->connected = 1;
  a->fresh = 1;
  a->stream = stream;
  a->connection = ++hub->connections;
  a->last_seen_us = now_us();
  a->next = hub->agents;
  hub->agents = a;
  hub_kick(hub);
  pthread_mutex_unlock(&hub->lock);
}

/* The connection ended: the entry stays (disconnected) unless a newer
 * connection of the same agent replaced it. */
static void agent_detach(struct hub *hub, struct hub_agent *a) {
  pthread_mutex_lock(&hub->lock);
  struct rpc_stream *stream = a->stream;
  a->connected = 0;
  a->stream = NULL;
  a->last_seen_us = now_us();
  int replaced = 0;
  for (struct hub_agent *o = hub->agents; o != NULL; o = o->next)
    replaced |= o != a && strcmp(o->name, a->name) == 0;
  if (replaced || a->cut)
    agent_drop(hub, a);
  pthread_mutex_unlock(&hub->lock);
  if (stream != NULL)
    rpc_stream_unref(stream);
}

/* An agent acked revision (lock held): the time since its commit, if the
 * commit is recent enough to be remembered. */
static void latency_observe(struct hub *hub, int64_t revision) {
  for (size_t i = 0; i < HUB_COMMITS; i++) {
    if (hub->commits[i].revision != revision || hub->commits[i].at_ms == 0)
      continue;
    double s = (double)(mono_ms() - hub->commits[i].at_ms) / 1000.0;
    size_t b = 0;
    while (b < HUB_LATENCY_BUCKETS && s > hub_latency_bounds_s[b])
      b++;
    if (b < HUB_LATENCY_BUCKETS)
      hub->latency_buckets[b]++;
    hub->latency_count++;
    hub->latency_sum_s += s;
    return;
  }
}

/* An ack or stats from a connected agent: recorded for the API. Takes
 * ownership of msg. */
static void agent_report(struct hub *hub, struct hub_agent *a, Tlsplane__V1__AgentMessage *msg) {
  int64_t acked = 0;
  pthread_mutex_lock(&hub->lock);
  a->last_seen_us = now_us();
  if (msg->message_case == TLSPLANE__V1__AGENT_MESSAGE__MESSAGE_ACK) {
    Tlsplane__V1__AgentAck *ack = msg->ack;
    msg->ack = NULL;
    msg->message_case = TLSPLANE__V1__AGENT_MESSAGE__MESSAGE__NOT_SET;
    if (ack->revision > a->applied_revision)
      latency_observe(hub, ack->revision);
    a->applied_revision = ack->revision;
    for (size_t i = 0; i < ack->n_listeners; i++)
      if (!ack->listeners[i]->applied) {
        /* The agent's words: escaped, so that they cannot forge a line. */
        char listener[LOG_ESCAPE_LEN], reason[LOG_ESCAPE_LEN * 2];
        log_warn("hub", "agent=%s revision=%lld listener=\"%s\" not applied: \"%s\"", a->name,
                 (long long)ack->revision,
                 log_escape_str(listener, sizeof(listener), ack->listeners[i]->listener),
                 log_escape_str(reason, sizeof(reason), ack->listeners[i]->error));
        struct events_event e = {.type = TLSPLANE__V1__EVENT_TYPE__ROLLOUT_NACK,
                                 .resource = ack->listeners[i]->listener,
                                 .listener = ack->listeners[i]->listener,
                                 .agent = a->name,
                                 .reason = ack->listeners[i]->error,
                                 .target_revision = ack->revision};
        events_publish(hub->api->events, &e);
      }
    acked = ack->revision;
    if (a->last_ack != NULL)
      protobuf_c_message_free_unpacked(&a->last_ack->base, NULL);
    a->last_ack = ack;
  } else if (msg->message_case == TLSPLANE__V1__AGENT_MESSAGE__MESSAGE_STATS) {
    if (a->stats != NULL)
      protobuf_c_message_free_unpacked(&a->stats->base, NULL);
    a->stats = msg->stats;
    msg->stats = NULL;
    msg->message_case = TLSPLANE__V1__AGENT_MESSAGE__MESSAGE__NOT_SET;
  }
  pthread_mutex_unlock(&hub->lock);
  protobuf_c_message_free_unpacked(&msg->base, NULL);
  if (acked > 0)
    events_rollout_check(hub->api->events, acked);
}

static int hello_check(const Tlsplane__V1__AgentHello *h, char *name, size_t len,
                       struct tp_err *err) {
  snprintf(name, len, "agents/%s", h->name);
  if (api_name_check(&api_kind_agent, name, "hello.name", err) != 0)
    return -1;
  /* Claims are recorded: bounded and shaped as labels are. */
  return api_labels_check(&h->base, "labels", "hello.labels", err);
}

/* Marks `revision` checked for a: nothing more is tried before a newer one
 * commits. */
static void checked(struct hub *hub, struct hub_agent *a, int64_t revision) {
  pthread_mutex_lock(&hub->lock);
  if (revision > a->checked_revision)
    a->checked_revision = revision;
  pthread_mutex_unlock(&hub->lock);
}

/* Records the server-side failures that concern a (the world's failures
 * among its listeners, or why no world could be built). */
static void failures_set(struct hub *hub, struct hub_agent *a, int64_t revision,
                         const struct fleet_failure **f, size_t n, const char *world_error) {
  pthread_mutex_lock(&hub->lock);
  failures_clear(a);
  a->failed_revision = revision;
  if (world_error[0] != '\0') {
    a->failures[0].listener = strdup("");
    a->failures[0].reason = strdup(world_error);
    a->n_failures = 1;
  }
  for (size_t i = 0; i < n && a->n_failures < AGENT_FAILURES_MAX; i++) {
    a->failures[a->n_failures].listener = strdup(f[i]->listener);
    a->failures[a->n_failures].reason = strdup(f[i]->reason);
    a->n_failures++;
  }
  pthread_mutex_unlock(&hub->lock);
}

/* Frees what a slice of push()'s bytes held: key material, wiped. */
static void bytes_destroy(void *p, size_t len) {
  OPENSSL_cleanse(p, len);
  free(p);
}

/* Sends the agent what world w (NULL: none could be built yet; then
 * world_error says why) changed for it: a delta (protocol 2), or its whole
 * snapshot when that changed (older agents). The one per-agent decision of
 * the push thread. Returns -1 when the stream must end. */
static int push(struct hub *hub, struct hub_agent *a, struct rpc_stream *stream,
                const struct fleet_world *w, uint64_t generation, const char *world_error) {
  struct tp_err err = {0};
  a->world_generation = generation;
  if (w == NULL) {                                         /* nothing to send, nothing removed */
    failures_set(hub, a, INT64_MAX, NULL, 0, world_error); /* every revision */
    return 0;
  }
  int64_t revision = fleet_world_revision(w);
  /* Its labels as its record has them at the world's revision. */
  const struct snapshot_label *labels = NULL;
  size_t n_labels = 0;
  int found = fleet_world_agent(w, a->name, &labels, &n_labels);
  if (found == -ENOENT) {
    /* Deleted (DeleteAgent cuts the stream too; whichever comes first). */
    rpc_stream_finish(stream, GRPC_STATUS_PERMISSION_DENIED, "the agent was deleted");
    return -1;
  }
  if (found != 0) {
    /* An unreadable record (damaged, or edited in the file) sends
     * nothing: the agent keeps what it serves. */
    if (a->failed_revision != revision)
      log_error("hub", "agent=%s: its record at revision %lld cannot be read", a->name,
                (long long)revision);
    failures_set(hub, a, revision, NULL, 0, "its Agent record cannot be read");
    checked(hub, a, revision);
    return 0;
  }
  uint8_t *bytes = NULL, hash[HASH_LEN];
  size_t len = 0, n_failures = 0;
  struct fleet_counts counts = {0};
  const struct fleet_failure **failures = NULL;
  int rc;
  if (a->protocol >= PROTOCOL_DELTA) {
    rc = fleet_delta(w, a->view, labels, n_labels, &bytes, &len, &counts, &failures, &n_failures,
                     &err);
  } else {
    rc = fleet_snapshot(w, labels, n_labels, &bytes, &len, hash, &failures, &n_failures, &err);
    if (rc == 0 && bytes != NULL && a->has_sent && memcmp(a->sent_hash, hash, HASH_LEN) == 0) {
      bytes_destroy(bytes, len);
      bytes = NULL; /* unchanged content is not sent again */
    }
  }
  if (rc != 0) {
    log_error("hub", "agent=%s: revision %lld: %s", a->name, (long long)revision, err.msg);
    failures_set(hub, a, revision, NULL, 0, err.msg);
  } else {
    failures_set(hub, a, revision, failures, n_failures, world_error);
  }
  free(failures);
  int sent = 0;
  if (bytes != NULL) {
    /* The stream takes its own reference; the bytes are wiped when the
     * last goes. */
    grpc_slice slice = grpc_slice_new_with_len(bytes, len, bytes_destroy);
    sent = rpc_stream_send_slice(stream, slice) == 0 ? 0 : -1;
    grpc_slice_unref(slice);
    if (sent == 0) {
      pthread_mutex_lock(&hub->lock);
      if (a->protocol < PROTOCOL_DELTA)
        memcpy(a->sent_hash, hash, HASH_LEN);
      a->has_sent = 1;
      a->sent_revision = revision;
      a->pushed.messages++;
      a->pushed.bytes += (int64_t)len;
      a->pushed.resources += (int64_t)counts.resources;
      a->pushed.listeners += (int64_t)counts.listeners;
      a->pushed.removed_resources += (int64_t)counts.removed_resources;
      a->pushed.removed_listeners += (int64_t)counts.removed_listeners;
      pthread_mutex_unlock(&hub->lock);
    }
  }
  /* Checked up to the world's revision: a commit since gets another
   * round. */
  checked(hub, a, revision);
  return sent;
}

/* One agent the push thread works on, outside the lock. */
struct push_job {
  struct hub_agent *agent;   /* pinned */
  struct rpc_stream *stream; /* referenced */
};

/* The push thread: on every kick (a revision committed, an agent
 * connected, a stream drained) it takes every connected agent whose
 * checked revision is behind, and pushes to each whose stream has nothing
 * queued (one that has is taken again when it drains: a slow agent gets
 * the newest snapshot, not every one in between). One thread for all
 * agents: the snapshots are built once per revision and label set
 * anyway, and a send never waits. */
static void *push_main(void *arg) {
  struct hub *hub = arg;
  struct push_job *jobs = NULL;
  size_t cap = 0;
  int idle = 0; /* no agent was connected in the last round */
  pthread_mutex_lock(&hub->lock);
  for (;;) {
    while (!hub->stop && !hub->kicked) {
      /* A world to build again (after a failure) wakes the thread at its
       * time, unless nobody would receive it; nothing else does but a
       * kick. */
      int64_t at = atomic_load(&hub->retry_at_ms);
      if (at == 0 || idle) {
        pthread_cond_wait(&hub->changed, &hub->lock);
        continue;
      }
      if (mono_ms() >= at)
        break;
      struct timespec ts = {.tv_sec = at / 1000, .tv_nsec = (at % 1000) * 1000000};
      pthread_cond_timedwait(&hub->changed, &hub->lock, &ts);
    }
    if (hub->stop)
      break;
    hub->kicked = 0;
    int64_t want = hub->revision;
    /* No world is built for nobody: with no agent connected (a bulk
     * import before the fleet comes up), commits cost no build each; the
     * first agent to connect gets one at the latest revision. */
    int anyone = 0;
    for (struct hub_agent *a = hub->agents; a != NULL && !anyone; a = a->next)
      anyone = a->connected && !a->cut && a->stream != NULL;
    idle = !anyone;
    if (idle)
      continue;
    pthread_mutex_unlock(&hub->lock);
    /* The world, once for every agent of this round (built here when a
     * revision committed or a retry is due). */
    char world_error[sizeof(((struct tp_err *)0)->msg)];
    struct fleet_world *w = world_get(hub, want, world_error, sizeof(world_error));
    uint64_t generation = atomic_load(&hub->world_generation);
    pthread_mutex_lock(&hub->lock);
    size_t n = 0;
    for (struct hub_agent *a = hub->agents; a != NULL; a = a->next) {
      if (!a->connected || a->cut || a->pinned || a->stream == NULL ||
          (!a->fresh && a->checked_revision >= want && a->world_generation == generation))
        continue;
      if (n == cap) {
        size_t ncap = cap ? 2 * cap : 64;
        struct push_job *more = realloc(jobs, ncap * sizeof(*jobs));
        if (more == NULL) {
          hub->kicked = 1; /* the rest next round */
          break;
        }
        jobs = more;
        cap = ncap;
      }
      a->pinned = 1;
      rpc_stream_ref(a->stream);
      jobs[n++] = (struct push_job){a, a->stream};
    }
    pthread_mutex_unlock(&hub->lock);
    for (size_t i = 0; i < n; i++) {
      struct hub_agent *a = jobs[i].agent;
      struct rpc_stream *stream = jobs[i].stream;
      int busy = rpc_stream_queued(stream) > 0;
      if (busy)
        rpc_stream_notify_drained(stream); /* which kicks again */
      if (!busy && push(hub, a, stream, w, generation, world_error) != 0)
        rpc_stream_finish(stream, GRPC_STATUS_UNAVAILABLE, "stream closed by the server");
      pthread_mutex_lock(&hub->lock);
      a->pinned = 0;
      if (!busy)
        a->fresh = 0;
      if (a->doomed)
        agent_free(a);
      pthread_mutex_unlock(&hub->lock);
      rpc_stream_unref(stream);
    }
    /* A revision that changed nothing an agent serves is acked by none:
     * whether every agent now serves it is checked here. */
    if (w != NULL && n > 0)
      events_rollout_check(hub->api->events, fleet_world_revision(w));
    fleet_world_unref(w);
    pthread_mutex_lock(&hub->lock);
  }
  pthread_mutex_unlock(&hub->lock);
  free(jobs);
  return NULL;
}

/* --- AgentService/Connect --- */

/* One agent stream; its stream data. */
struct hub_conn {
  uint32_t magic;
  struct hub *hub;
  struct hub_agent *agent; /* NULL until the hello was accepted */
};

static struct hub_conn *conn_from(void *data) {
  struct hub_conn *conn = data;
  if (conn == NULL || conn->magic != HUB_CONN_MAGIC)
    abort();
  return conn;
}

static int connect_started(struct rpc_stream *stream, const struct rpc_call_info *call, void *data,
                           void **stream_data, struct tp_err *err) {
  struct hub_conn *conn = calloc(1, sizeof(*conn));
  if (conn == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  conn->magic = HUB_CONN_MAGIC;
  conn->hub = data;
  /* The hello within the request timeout: a stream that says nothing
   * holds its place in the stream cap. */
  if (rpc_stream_expect(stream, 0) != 0) {
    free(conn);
    return tp_err_set(err, GRPC_STATUS_CANCELLED, "call cancelled");
  }
  *stream_data = conn;
  return 0;
}

/* The first message: the hello. 0, or -1 with err (the stream ends). */
static int connect_hello(struct hub_conn *conn, struct rpc_stream *stream,
                         const Tlsplane__V1__AgentMessage *msg, struct tp_err *err) {
  struct hub *hub = conn->hub;
  const struct rpc_call_info *call = rpc_stream_call(stream);
  char name[128];
  struct hub_agent *a = NULL;
  int rc = 0;
  if (call->role != AUTH_ROLE_AGENT)
    /* auth.c lets agents alone in; the stream carries keys, so it is
     * checked here as well. */
    rc = tp_err_set(err, GRPC_STATUS_PERMISSION_DENIED,
                    "permission denied: only agents stream snapshots (they carry private keys)");
  else if (msg->message_case != TLSPLANE__V1__AGENT_MESSAGE__MESSAGE_HELLO)
    rc = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "hello: the first message must be a hello");
  else if (hello_check(msg->hello, name, sizeof(name), err) != 0)
    rc = -1;
  /* An agent speaks for itself only: the id its certificate names. */
  else if (strcmp(name + strlen("agents/"), call->principal) != 0)
    rc = tp_err_set(err, GRPC_STATUS_PERMISSION_DENIED,
                    "hello.name: \"%s\" is not this agent (its certificate is for \"%s\")",
                    name + strlen("agents/"), call->principal);
  else if ((a = agent_new(msg->hello, name)) == NULL)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  else if (a->protocol >= PROTOCOL_DELTA && fleet_view_from_hello(a->view, msg->hello, err) != 0)
    rc = -1;
  /* A short store write, fine on a pool thread. */
  else if (agent_record(hub, call, msg->hello, a, err) != 0)
    rc = -1;
  if (rc < 0) {
    if (a != NULL)
      agent_free(a);
    return -1;
  }
  agent_attach(hub, a, stream);
  conn->agent = a;
  char peer[LOG_ESCAPE_LEN], version[LOG_ESCAPE_LEN];
  log_info("hub", "agent=%s connected from %s (version \"%s\", applied revision %lld)", a->name,
           log_escape_str(peer, sizeof(peer), call->peer),
           log_escape_str(version, sizeof(version), a->version), (long long)a->applied_revision);
  return 0;
}

static int connect_message(struct rpc_stream *stream, void *stream_data, ProtobufCMessage *m,
                           struct tp_err *err) {
  struct hub_conn *conn = conn_from(stream_data);
  Tlsplane__V1__AgentMessage *msg = (Tlsplane__V1__AgentMessage *)m;
  if (conn->agent != NULL) {
    agent_report(conn->hub, conn->agent, msg);
    return 0;
  }
  int rc = connect_hello(conn, stream, msg, err);
  protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

static void connect_half_closed(struct rpc_stream *stream, void *stream_data) {
  struct hub_conn *conn = conn_from(stream_data);
  if (conn->agent == NULL)
    rpc_stream_finish(stream, GRPC_STATUS_INVALID_ARGUMENT, "hello: required first");
  else
    rpc_stream_finish(stream, GRPC_STATUS_UNAVAILABLE, "stream closed by the server");
}

/* The snapshot went: the push thread may send this agent the next. */
static void connect_drained(struct rpc_stream *stream, void *stream_data) {
  struct hub *hub = conn_from(stream_data)->hub;
  pthread_mutex_lock(&hub->lock);
  hub_kick(hub);
  pthread_mutex_unlock(&hub->lock);
}

static void connect_ended(struct rpc_stream *stream, void *stream_data) {
  struct hub_conn *conn = conn_from(stream_data);
  if (conn->agent != NULL) {
    log_info("hub", "agent=%s disconnected", conn->agent->name);
    agent_detach(conn->hub, conn->agent);
  }
  conn->magic = 0;
  free(conn);
}

static const struct rpc_stream_ops connect_ops = {
    .req = &tlsplane__v1__agent_message__descriptor,
    .started = connect_started,
    .message = connect_message,
    .half_closed = connect_half_closed,
    .drained = connect_drained,
    .ended = connect_ended,
};

int hub_register(struct hub *hub, struct rpc_server *srv) {
  char path[128];
  snprintf(path, sizeof(path), "/%s/Connect", tlsplane__v1__agent_service__descriptor.name);
  return rpc_server_add_stream(srv, path, &connect_ops, hub);
}

/* --- the API's view --- */

static struct hub_agent *agent_find(struct hub *hub, const char *name) {
  struct hub_agent *found = NULL;
  for (struct hub_agent *a = hub->agents; a != NULL; a = a->next)
    if (strcmp(a->name, name) == 0 && (found == NULL || a->connected))
      found = a;
  return found;
}

/* What a serves of `listener` by its last ack and stats: the revision of
 * the version it applied (0: none) and its nack (NULL: none). Called with
 * hub->lock held; *nack points into a. */
static int64_t listener_applied(const struct hub_agent *a, const char *listener,
                                const char **nack) {
  int64_t applied = 0;
  *nack = NULL;
  for (size_t i = 0; a->stats != NULL && i < a->stats->n_listeners; i++) {
    const Tlsplane__V1__ListenerStatus *st = a->stats->listeners[i];
    if (strcmp(st->listener, listener) == 0) {
      applied = st->applied_revision;
      if (st->last_nack[0] != '\0')
        *nack = st->last_nack;
    }
  }
  /* The ack is the newer word on the listeners it names. */
  for (size_t i = 0; a->last_ack != NULL && i < a->last_ack->n_listeners; i++) {
    const Tlsplane__V1__ListenerResult *res = a->last_ack->listeners[i];
    if (strcmp(res->listener, listener) != 0)
      continue;
    if (res->applied) {
      if (a->last_ack->revision > applied)
        applied = a->last_ack->revision;
      *nack = NULL;
    } else {
      *nack = res->error;
    }
  }
  return applied;
}

/* Whether the server could not build `listener` for a at `revision` or
 * later (hub->lock held). */
static int listener_failed(const struct hub_agent *a, const char *listener, int64_t revision) {
  for (size_t i = 0; a->failed_revision >= revision && i < a->n_failures; i++)
    if (a->failures[i].listener[0] == '\0' || strcmp(a->failures[i].listener, listener) == 0)
      return 1;
  return 0;
}

void hub_agent_decorate(struct hub *hub, Tlsplane__V1__Agent *agent) {
  pthread_mutex_lock(&hub->lock);
  struct hub_agent *a = agent_find(hub, agent->name);
  if (a == NULL) {
    pthread_mutex_unlock(&hub->lock);
    return;
  }
  agent->connected = a->connected;
  agent->applied_revision = a->applied_revision;
  agent->protocol = a->protocol;
  Tlsplane__V1__PushStats *pushed = malloc(sizeof(*pushed));
  if (pushed != NULL) {
    *pushed = a->pushed;
    if (agent->pushed != NULL)
      protobuf_c_message_free_unpacked(&agent->pushed->base, NULL);
    agent->pushed = pushed;
  }
  pb_timestamp_set(&agent->base, "last_seen", a->last_seen_us);
  char nack[1024] = "";
  size_t n_status = a->stats ? a->stats->n_listeners : 0;
  Tlsplane__V1__ListenerStatus **status = calloc(n_status ? n_status : 1, sizeof(*status));
  for (size_t i = 0; status != NULL && i < n_status; i++)
    status[i] = (Tlsplane__V1__ListenerStatus *)pb_clone(&a->stats->listeners[i]->base);
  for (size_t i = 0; a->last_ack != NULL && i < a->last_ack->n_listeners; i++) {
    const Tlsplane__V1__ListenerResult *res = a->last_ack->listeners[i];
    if (!res->applied) {
      size_t len = strlen(nack);
      snprintf(nack + len, sizeof(nack) - len, "%s%s: %s", len ? "; " : "", res->listener,
               res->error);
    }
  }
  for (size_t j = 0; status != NULL && j < n_status; j++) {
    if (status[j] == NULL)
      continue;
    const char *why;
    status[j]->applied_revision = listener_applied(a, status[j]->listener, &why);
    pb_string_set(&status[j]->base, "last_nack", why != NULL ? why : "");
  }
  pthread_mutex_unlock(&hub->lock);
  pb_string_set(&agent->base, "last_nack", nack);
  if (status != NULL) {
    size_t kept = 0;
    for (size_t i = 0; i < n_status; i++)
      if (status[i] != NULL)
        status[kept++] = status[i];
    pb_field_clear(&agent->base, pb_field(agent->base.descriptor, "listeners"));
    agent->listeners = status;
    agent->n_listeners = kept;
  }
}

void hub_agent_serving(struct hub *hub, const char *listener, int64_t revision,
                       Tlsplane__V1__ServingAgent *out) {
  char nack[1024] = "";
  pthread_mutex_lock(&hub->lock);
  const struct hub_agent *a = agent_find(hub, out->agent);
  if (a == NULL) {
    pthread_mutex_unlock(&hub->lock);
    return;
  }
  const char *why;
  int64_t applied = listener_applied(a, listener, &why);
  /* Nothing left to send it for that revision: what it serves is current
   * even where the change did not reach it (the same test as
   * GetRollout's). */
  int caught_up = a->has_sent && a->applied_revision == a->sent_revision &&
                  a->checked_revision >= revision && !listener_failed(a, listener, revision);
  out->connected = a->connected;
  out->applied_revision = applied;
  out->current = applied > 0 && (applied >= revision || (caught_up && why == NULL));
  if (why != NULL)
    snprintf(nack, sizeof(nack), "%s", why);
  pthread_mutex_unlock(&hub->lock);
  pb_string_set(&out->base, "last_nack", nack);
}

void hub_agent_disconnect(struct hub *hub, const char *name, const char *why) {
  pthread_mutex_lock(&hub->lock);
  for (struct hub_agent *a = hub->agents; a != NULL; a = a->next)
    if (strcmp(a->name, name) == 0) {
      a->cut = 1;
      if (a->connected)
        rpc_stream_finish(a->stream, GRPC_STATUS_PERMISSION_DENIED, why);
    }
  pthread_mutex_unlock(&hub->lock);
}

/* Appends one failure to r (its array has room). */
static void rollout_failure_add(Tlsplane__V1__Rollout *r, const char *agent, const char *listener,
                                const char *reason, int server_side) {
  Tlsplane__V1__RolloutFailure *f = malloc(sizeof(*f));
  if (f == NULL)
    return;
  tlsplane__v1__rollout_failure__init(f);
  f->agent = strdup(agent);
  f->listener = strdup(listener);
  f->reason = strdup(reason);
  f->server_side = server_side;
  if (f->agent == NULL || f->listener == NULL || f->reason == NULL) {
    protobuf_c_message_free_unpacked(&f->base, NULL);
    return;
  }
  r->failures[r->n_failures++] = f;
}

int hub_rollout(struct hub *hub, int64_t revision, Tlsplane__V1__Rollout **out,
                struct tp_err *err) {
  Tlsplane__V1__Rollout *r = malloc(sizeof(*r));
  if (r == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  tlsplane__v1__rollout__init(r);
  pthread_mutex_lock(&hub->lock);
  if (revision == 0)
    revision = hub->revision;
  if (revision < 0 || revision > hub->revision) {
    int64_t cur = hub->revision;
    pthread_mutex_unlock(&hub->lock);
    free(r);
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "revision: %lld is not a committed revision (the latest is %lld)",
                      (long long)revision, (long long)cur);
  }
  size_t n = 0, n_fail = 0;
  for (struct hub_agent *a = hub->agents; a != NULL; a = a->next)
    if (a->connected) {
      n++;
      n_fail += a->n_failures + (a->last_ack != NULL ? a->last_ack->n_listeners : 0);
    }
  r->revision = revision;
  r->agents_pending = calloc(n ? n : 1, sizeof(char *));
  r->agents_failed = calloc(n ? n : 1, sizeof(char *));
  r->failures = calloc(n_fail ? n_fail : 1, sizeof(*r->failures));
  for (struct hub_agent *a = hub->agents;
       a != NULL && r->agents_pending != NULL && r->agents_failed != NULL && r->failures != NULL;
       a = a->next) {
    if (!a->connected)
      continue;
    r->agents_connected++;
    size_t first = r->n_failures;
    /* Server-side: listeners the world that reached it could not build. */
    for (size_t i = 0; a->failed_revision >= revision && i < a->n_failures; i++)
      rollout_failure_add(r, a->name, a->failures[i].listener, a->failures[i].reason, 1);
    int current =
        a->has_sent && a->applied_revision == a->sent_revision && a->checked_revision >= revision;
    for (size_t i = 0; current && a->last_ack != NULL && i < a->last_ack->n_listeners; i++)
      if (!a->last_ack->listeners[i]->applied)
        rollout_failure_add(r, a->name, a->last_ack->listeners[i]->listener,
                            a->last_ack->listeners[i]->error, 0);
    int failed = r->n_failures > first;
    if (failed)
      r->agents_failed[r->n_agents_failed++] = strdup(a->name);
    else if (current)
      r->agents_applied++;
    else
      r->agents_pending[r->n_agents_pending++] = strdup(a->name);
  }
  pthread_mutex_unlock(&hub->lock);
  *out = r;
  return 0;
}

void hub_latency(struct hub *hub, struct hub_latency *out) {
  memset(out, 0, sizeof(*out));
  pthread_mutex_lock(&hub->lock);
  unsigned long sum = 0;
  for (size_t b = 0; b < HUB_LATENCY_BUCKETS; b++) {
    sum += hub->latency_buckets[b];
    out->le[b] = sum;
  }
  out->count = hub->latency_count;
  out->sum_s = hub->latency_sum_s;
  pthread_mutex_unlock(&hub->lock);
}
