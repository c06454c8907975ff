/* The push hub. One thread per agent stream (the RPC core gives each
 * streaming call its own) sends snapshots; a second thread per stream reads
 * the agent's hellos, acks and stats. Both meet in struct hub_agent under
 * the hub's lock.
 *
 * What an agent receives is chosen by the labels of its record in the
 * store (set by its join token and UpdateAgent), read again for every
 * revision; the labels its hello claims are only recorded, and a claim
 * that differs from the record is reported, never followed. */
#include "hub.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "fleet.h"
#include "log.h"
#include "pb.h"
#include "snapshot.h"

#define HUB_WAKE_MS 1000 /* a stream re-checks shutdown at least this often */
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
  uint64_t connection; /* which stream owns this entry */
  struct rpc_stream *stream;
  int reader_done; /* the agent's side of the stream ended */
  int cut;         /* replaced or deleted: the stream must end */
  int64_t last_seen_us;
  int64_t sent_revision;    /* of the last snapshot sent */
  int64_t checked_revision; /* newest revision compared with what was sent */
  int64_t applied_revision; /* from the last ack */
  int protocol;             /* of its hello: PROTOCOL_DELTA, or older (whole snapshots) */
  /* Protocol 2: what the agent holds (its hello, then every delta sent);
   * only the stream's own thread uses it. */
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

struct hub {
  struct api *api;
  pthread_mutex_t lock;
  pthread_cond_t changed; /* a revision committed, or an agent's state changed */
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
};

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
  hub_notify(data, revision);
}

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
  store_set_commit_hook(api->store, commit_hook, hub);
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
  store_set_commit_hook(hub->api->store, NULL, NULL);
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
  if (revision > hub->revision)
    hub->revision = revision;
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

/* Whether a's stream has a world to push that it has not pushed: a retry
 * is due, or another stream built a newer world. Read without a lock. */
static int world_pending(struct hub *hub, uint64_t seen_generation) {
  int64_t at = atomic_load(&hub->retry_at_ms);
  return (at != 0 && mono_ms() >= at) || atomic_load(&hub->world_generation) != seen_generation;
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
 * claims) when the record is new or they changed (one revision). A claim that differs from the
 * record is logged; it changes nothing the agent receives. */
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

/* Takes the agent's place in the hub for this connection; an older
 * connection of the same agent is cut. */
static void agent_attach(struct hub *hub, struct hub_agent *a, struct rpc_stream *stream) {
  pthread_mutex_lock(&hub->lock);
  for (struct hub_agent **pp = &hub->agents; *pp != NULL; pp = &(*pp)->next) {
    struct hub_agent *old = *pp;
    if (strcmp(old->name, a->name) != 0)
      continue;
    if (old->connected) {
      old->cut = 1;
      rpc_stream_cancel(old->stream, GRPC_STATUS_ABORTED,
                        "replaced by a newer connection of the same agent");
      /* The old stream's thread removes its entry when it ends. */
      break;
    }
    *pp = old->next;
    agent_free(old);
    break;
  }
  a->connected = 1;
  a->stream = stream;
  a->connection = ++hub->connections;
  a->last_seen_us = now_us();
  a->next = hub->agents;
  hub->agents = a;
  pthread_mutex_unlock(&hub->lock);
}

/* The connection ended: the entry stays (disconnected) unless a newer
 * connection of the same agent replaced it. */
static void agent_detach(struct hub *hub, struct hub_agent *a) {
  pthread_mutex_lock(&hub->lock);
  a->connected = 0;
  a->stream = NULL;
  a->last_seen_us = now_us();
  int replaced = 0;
  for (struct hub_agent *o = hub->agents; o != NULL; o = o->next)
    replaced |= o != a && strcmp(o->name, a->name) == 0;
  if (replaced || a->cut) {
    for (struct hub_agent **pp = &hub->agents; *pp != NULL; pp = &(*pp)->next)
      if (*pp == a) {
        *pp = a->next;
        break;
      }
    agent_free(a);
  }
  pthread_cond_broadcast(&hub->changed);
  pthread_mutex_unlock(&hub->lock);
}

struct reader {
  struct hub *hub;
  struct hub_agent *agent;
  struct rpc_stream *stream;
};

/* Reads acks and stats until the stream ends. */
static void *reader_main(void *arg) {
  struct reader *r = arg;
  struct hub *hub = r->hub;
  struct hub_agent *a = r->agent;
  for (;;) {
    ProtobufCMessage *m = NULL;
    struct tp_err err = {0};
    int got = rpc_stream_recv(r->stream, &tlsplane__v1__agent_message__descriptor, &m, &err);
    if (got <= 0) {
      /* A message refused on input (not UTF-8, out of range) ends the
       * stream with the reason, so that the agent's log names the field. */
      if (got < 0 && err.status == GRPC_STATUS_INVALID_ARGUMENT)
        rpc_stream_cancel(r->stream, err.status, err.msg);
      break;
    }
    Tlsplane__V1__AgentMessage *msg = (Tlsplane__V1__AgentMessage *)m;
    pthread_mutex_lock(&hub->lock);
    a->last_seen_us = now_us();
    if (msg->message_case == TLSPLANE__V1__AGENT_MESSAGE__MESSAGE_ACK) {
      Tlsplane__V1__AgentAck *ack = msg->ack;
      msg->ack = NULL;
      msg->message_case = TLSPLANE__V1__AGENT_MESSAGE__MESSAGE__NOT_SET;
      a->applied_revision = ack->revision;
      for (size_t i = 0; i < ack->n_listeners; i++)
        if (!ack->listeners[i]->applied) {
          /* The agent's words: escaped, so that they cannot forge a line. */
          char listener[LOG_ESCAPE_LEN], reason[LOG_ESCAPE_LEN * 2];
          log_warn("hub", "agent=%s revision=%lld listener=\"%s\" not applied: \"%s\"", a->name,
                   (long long)ack->revision,
                   log_escape_str(listener, sizeof(listener), ack->listeners[i]->listener),
                   log_escape_str(reason, sizeof(reason), ack->listeners[i]->error));
        }
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
    pthread_cond_broadcast(&hub->changed);
    pthread_mutex_unlock(&hub->lock);
    protobuf_c_message_free_unpacked(m, NULL);
  }
  pthread_mutex_lock(&hub->lock);
  a->reader_done = 1;
  pthread_cond_broadcast(&hub->changed);
  pthread_mutex_unlock(&hub->lock);
  return NULL;
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
  pthread_cond_broadcast(&hub->changed);
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

/* Sends the agent what `revision` changed for it: a delta (protocol 2),
 * or its whole snapshot when that changed (older agents). Returns -1 when
 * the stream must end. */
static int push(struct hub *hub, struct hub_agent *a, struct rpc_stream *stream, int64_t revision) {
  struct tp_err err = {0};
  char world_error[sizeof(((struct tp_err *)0)->msg)];
  a->world_generation = atomic_load(&hub->world_generation);
  struct fleet_world *w = world_get(hub, revision, world_error, sizeof(world_error));
  if (w == NULL) { /* none built yet: nothing to send, nothing removed */
    failures_set(hub, a, revision, NULL, 0, world_error);
    checked(hub, a, revision);
    return 0;
  }
  /* Its labels as its record has them at the world's revision. */
  const struct snapshot_label *labels = NULL;
  size_t n_labels = 0;
  int found = fleet_world_agent(w, a->name, &labels, &n_labels);
  if (found == -ENOENT) {
    /* Deleted (DeleteAgent cuts the stream too; whichever comes first). */
    fleet_world_unref(w);
    rpc_stream_cancel(stream, GRPC_STATUS_PERMISSION_DENIED, "the agent was deleted");
    return -1;
  }
  if (found != 0) {
    /* An unreadable record (damaged, or edited in the file) sends
     * nothing: the agent keeps what it serves. */
    if (a->failed_revision != fleet_world_revision(w))
      log_error("hub", "agent=%s: its record at revision %lld cannot be read", a->name,
                (long long)fleet_world_revision(w));
    failures_set(hub, a, fleet_world_revision(w), NULL, 0, "its Agent record cannot be read");
    checked(hub, a, fleet_world_revision(w));
    fleet_world_unref(w);
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
    if (rc == 0 && a->has_sent && memcmp(a->sent_hash, hash, HASH_LEN) == 0) {
      OPENSSL_cleanse(bytes, len);
      free(bytes);
      bytes = NULL; /* unchanged content is not sent again */
    }
  }
  if (rc != 0) {
    log_error("hub", "agent=%s: revision %lld: %s", a->name, (long long)fleet_world_revision(w),
              err.msg);
    failures_set(hub, a, fleet_world_revision(w), NULL, 0, err.msg);
  } else {
    failures_set(hub, a, fleet_world_revision(w), failures, n_failures, world_error);
  }
  free(failures);
  int sent = 0;
  if (bytes != NULL) {
    sent = rpc_stream_send_raw(stream, bytes, len);
    if (sent == 0) {
      pthread_mutex_lock(&hub->lock);
      if (a->protocol < PROTOCOL_DELTA)
        memcpy(a->sent_hash, hash, HASH_LEN);
      a->has_sent = 1;
      a->sent_revision = fleet_world_revision(w);
      a->pushed.messages++;
      a->pushed.bytes += (int64_t)len;
      a->pushed.resources += (int64_t)counts.resources;
      a->pushed.listeners += (int64_t)counts.listeners;
      a->pushed.removed_resources += (int64_t)counts.removed_resources;
      a->pushed.removed_listeners += (int64_t)counts.removed_listeners;
      pthread_mutex_unlock(&hub->lock);
    }
    OPENSSL_cleanse(bytes, len); /* key material */
    free(bytes);
  }
  /* Checked up to the world's revision: a commit since gets another
   * round. */
  checked(hub, a, fleet_world_revision(w));
  fleet_world_unref(w);
  return sent;
}

/* AgentService/Connect. */
static int agent_connect(const struct rpc_call_info *call, struct rpc_stream *stream,
                         struct tp_err *err, void *data) {
  struct hub *hub = data;
  ProtobufCMessage *m = NULL;
  /* The hello within the request timeout: a stream that says nothing
   * holds a thread. */
  int rc = rpc_stream_recv_within(stream, &tlsplane__v1__agent_message__descriptor, &m, 0, err);
  if (rc <= 0)
    return rc == 0 ? tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "hello: required first") : -1;
  Tlsplane__V1__AgentMessage *msg = (Tlsplane__V1__AgentMessage *)m;
  char name[128];
  struct hub_agent *a = NULL;
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
  else if (agent_record(hub, call, msg->hello, a, err) != 0)
    rc = -1;
  protobuf_c_message_free_unpacked(m, NULL);
  if (rc < 0) {
    if (a != NULL)
      agent_free(a);
    return -1;
  }
  agent_attach(hub, a, stream);
  char peer[LOG_ESCAPE_LEN], version[LOG_ESCAPE_LEN];
  log_info("hub", "agent=%s connected from %s (version \"%s\", applied revision %lld)", a->name,
           log_escape_str(peer, sizeof(peer), call->peer),
           log_escape_str(version, sizeof(version), a->version), (long long)a->applied_revision);

  struct reader r = {.hub = hub, .agent = a, .stream = stream};
  pthread_t reader;
  int have_reader = pthread_create(&reader, NULL, reader_main, &r) == 0;
  int64_t want = 0; /* the first round sends whatever is current */
  while (have_reader) {
    pthread_mutex_lock(&hub->lock);
    while (!a->cut && !a->reader_done && hub->revision <= a->checked_revision && want != 0 &&
           !world_pending(hub, a->world_generation) && !rpc_stream_shutting_down(stream)) {
      struct timespec deadline;
      clock_gettime(CLOCK_MONOTONIC, &deadline);
      deadline.tv_sec += HUB_WAKE_MS / 1000;
      pthread_cond_timedwait(&hub->changed, &hub->lock, &deadline);
    }
    int stop = a->cut || a->reader_done || rpc_stream_shutting_down(stream);
    want = hub->revision;
    pthread_mutex_unlock(&hub->lock);
    if (stop || push(hub, a, stream, want) != 0)
      break;
  }
  /* Whatever ended the loop, end the call so that the reader returns. */
  rpc_stream_cancel(stream, GRPC_STATUS_UNAVAILABLE, "stream closed by the server");
  if (have_reader)
    pthread_join(reader, NULL);
  log_info("hub", "agent=%s disconnected", a->name);
  agent_detach(hub, a);
  return 0;
}

int hub_register(struct hub *hub, struct rpc_server *srv) {
  char path[128];
  snprintf(path, sizeof(path), "/%s/Connect", tlsplane__v1__agent_service__descriptor.name);
  return rpc_server_add_stream(srv, path, agent_connect, hub);
}

/* --- the API's view --- */

static struct hub_agent *agent_find(struct hub *hub, const char *name) {
  struct hub_agent *found = NULL;
  for (struct hub_agent *a = hub->agents; a != NULL; a = a->next)
    if (strcmp(a->name, name) == 0 && (found == NULL || a->connected))
      found = a;
  return found;
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
    for (size_t j = 0; status != NULL && j < n_status; j++)
      if (status[j] != NULL && strcmp(status[j]->listener, res->listener) == 0) {
        if (!res->applied)
          pb_string_set(&status[j]->base, "last_nack", res->error);
        else
          status[j]->applied_revision = a->last_ack->revision;
      }
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

void hub_agent_disconnect(struct hub *hub, const char *name, const char *why) {
  pthread_mutex_lock(&hub->lock);
  for (struct hub_agent *a = hub->agents; a != NULL; a = a->next)
    if (strcmp(a->name, name) == 0) {
      a->cut = 1;
      if (a->connected)
        rpc_stream_cancel(a->stream, GRPC_STATUS_PERMISSION_DENIED, why);
    }
  pthread_cond_broadcast(&hub->changed);
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
