/* The push hub. Agent streams hold no thread: the RPC core runs each
 * stream's callbacks on its pool (the hello, then acks and stats, each a
 * short update of struct hub_agent under the hub's lock; the hello also a
 * short store write), and one push thread, the hub's own, sends snapshots:
 * woken by every committed revision (hub_notify), every agent that
 * connects and every stream that drained, it decides for each connected
 * agent whose checked revision is behind whether the revision changed
 * what that agent serves (push()), and queues the snapshot on its stream
 * if so. Sends never wait: a slow agent's stream keeps at most one
 * snapshot queued, and is taken again once it drained. Snapshots are
 * built once per revision and label set and shared by reference: the same
 * bytes go to every agent with those labels.
 *
 * What an agent receives is chosen by the labels of its record in the
 * store (set by its join token and UpdateAgent), read again for every
 * revision; the labels its hello claims are only recorded, and a claim
 * that differs from the record is reported, never followed. */
#include "hub.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "log.h"
#include "pb.h"
#include "snapshot.h"

#define HASH_LEN 32
#define HUB_CONN_MAGIC 0x6875bc0eu

/* A snapshot built for one label set at one revision, shared by every
 * agent with those labels. Reference counted: the push thread holds it
 * while it decides and sends. The bytes live in a refcounted slice of
 * their own, so that streams still sending them outlive the entry. */
struct snap_entry {
  struct snap_entry *next;
  char *labels_key;
  int64_t revision;
  grpc_slice slice;             /* a packed ServerMessage carrying the snapshot */
  unsigned char hash[HASH_LEN]; /* of the snapshot without its revision */
  int refs;                     /* under cache_lock */
};

/* One agent the hub knows: connected now, or since it last was. */
struct hub_agent {
  struct hub_agent *next;
  char *name; /* "agents/edge-1" */
  char *version;
  /* The record's labels, which choose the snapshot: set by the hello
   * (agent_record, before the entry is attached), then read and replaced
   * by the push thread only. */
  struct snapshot_label *labels;
  size_t n_labels;
  char *labels_key; /* canonical "k=v\n" lines, sorted */
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
  unsigned char sent_hash[HASH_LEN];
  int has_sent;
  Tlsplane__V1__AgentAck *last_ack;
  Tlsplane__V1__AgentStats *stats;
};

/* Invariants: agents, revision, kicked, stop and every hub_agent field
 * are guarded by lock; an agent entry is freed by whoever unlinks it,
 * unless pinned (then by the push thread). */
struct hub {
  struct api *api;
  pthread_mutex_t lock;
  pthread_cond_t changed; /* kicked or stop: for the push thread */
  int kicked;             /* a revision committed, an agent connected, a stream drained */
  int stop;
  pthread_t pusher;
  int64_t revision;
  struct hub_agent *agents;
  uint64_t connections;
  pthread_mutex_t cache_lock; /* serializes builds; guards the cache */
  struct snap_entry *cache;
};

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void commit_hook(int64_t revision, void *data) {
  hub_notify(data, revision);
}

static void *push_main(void *arg);

int hub_new(struct api *api, struct hub **out, struct tp_err *err) {
  struct hub *hub = calloc(1, sizeof(*hub));
  if (hub == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  hub->api = api;
  hub->revision = store_revision(api->store);
  pthread_mutex_init(&hub->lock, NULL);
  pthread_mutex_init(&hub->cache_lock, NULL);
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&hub->changed, &attr);
  pthread_condattr_destroy(&attr);
  int rc = pthread_create(&hub->pusher, NULL, push_main, hub);
  if (rc != 0) {
    pthread_cond_destroy(&hub->changed);
    pthread_mutex_destroy(&hub->cache_lock);
    pthread_mutex_destroy(&hub->lock);
    free(hub);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "hub: cannot start the push thread: %s",
                      strerror(rc));
  }
  store_set_commit_hook(api->store, commit_hook, hub);
  *out = hub;
  return 0;
}

static void labels_free(struct snapshot_label *labels, size_t n) {
  for (size_t i = 0; labels != NULL && i < n; i++) {
    free((char *)labels[i].key);
    free((char *)labels[i].value);
  }
  free(labels);
}

static void agent_free(struct hub_agent *a) {
  labels_free(a->labels, a->n_labels);
  free(a->labels_key);
  free(a->name);
  free(a->version);
  if (a->last_ack != NULL)
    protobuf_c_message_free_unpacked(&a->last_ack->base, NULL);
  if (a->stats != NULL)
    protobuf_c_message_free_unpacked(&a->stats->base, NULL);
  free(a);
}

static void entry_free(struct snap_entry *e) {
  free(e->labels_key);
  grpc_slice_unref(e->slice); /* the bytes go with the last stream's reference */
  free(e);
}

void hub_free(struct hub *hub) {
  if (hub == NULL)
    return;
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
  while (hub->cache != NULL) {
    struct snap_entry *e = hub->cache;
    hub->cache = e->next;
    entry_free(e);
  }
  pthread_cond_destroy(&hub->changed);
  pthread_mutex_destroy(&hub->cache_lock);
  pthread_mutex_destroy(&hub->lock);
  free(hub);
}

void hub_notify(struct hub *hub, int64_t revision) {
  pthread_mutex_lock(&hub->lock);
  if (revision > hub->revision)
    hub->revision = revision;
  hub->kicked = 1;
  pthread_cond_broadcast(&hub->changed);
  pthread_mutex_unlock(&hub->lock);
}

/* --- snapshots --- */

static void snap_release(struct hub *hub, struct snap_entry *e) {
  pthread_mutex_lock(&hub->cache_lock);
  int last = --e->refs == 0;
  pthread_mutex_unlock(&hub->cache_lock);
  if (last)
    entry_free(e);
}

static int snap_encode(Tlsplane__V1__Snapshot *snap, struct snap_entry *e) {
  int64_t revision = snap->revision;
  uint8_t *buf;
  size_t len;
  /* What an agent serves, apart from the revision number: unchanged
   * content is not sent again. */
  snap->revision = 0;
  int rc = pb_pack(&snap->base, &buf, &len);
  snap->revision = revision;
  if (rc != 0)
    return -1;
  EVP_Digest(buf, len, e->hash, NULL, EVP_sha256(), NULL);
  free(buf);
  Tlsplane__V1__ServerMessage msg = TLSPLANE__V1__SERVER_MESSAGE__INIT;
  msg.message_case = TLSPLANE__V1__SERVER_MESSAGE__MESSAGE_SNAPSHOT;
  msg.snapshot = snap;
  uint8_t *bytes;
  size_t n;
  if (pb_pack(&msg.base, &bytes, &n) != 0)
    return -1;
  e->slice = grpc_slice_new_with_user_data(bytes, n, free, bytes);
  return 0;
}

/* The snapshot for a's labels at `revision` or later, shared: release it
 * with snap_release. */
static struct snap_entry *snap_get(struct hub *hub, const struct hub_agent *a, int64_t revision,
                                   struct tp_err *err) {
  pthread_mutex_lock(&hub->cache_lock);
  struct snap_entry **pp = &hub->cache, *e;
  for (e = *pp; e != NULL; pp = &e->next, e = e->next)
    if (strcmp(e->labels_key, a->labels_key) == 0)
      break;
  if (e != NULL && e->revision >= revision) {
    e->refs++;
    pthread_mutex_unlock(&hub->cache_lock);
    return e;
  }
  /* Built under the cache lock: one build per revision and label set, however
   * many agents wait for it. */
  Tlsplane__V1__Snapshot *snap;
  struct snap_entry *fresh = calloc(1, sizeof(*fresh));
  if (fresh == NULL || (fresh->labels_key = strdup(a->labels_key)) == NULL) {
    free(fresh);
    pthread_mutex_unlock(&hub->cache_lock);
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return NULL;
  }
  if (snapshot_build(hub->api->store, a->labels, a->n_labels, &snap, err) != 0) {
    entry_free(fresh);
    pthread_mutex_unlock(&hub->cache_lock);
    return NULL;
  }
  fresh->revision = snap->revision;
  int rc = snap_encode(snap, fresh);
  protobuf_c_message_free_unpacked(&snap->base, NULL);
  if (rc != 0) {
    entry_free(fresh);
    pthread_mutex_unlock(&hub->cache_lock);
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return NULL;
  }
  if (e != NULL) { /* replace the stale entry; senders still holding it free it */
    *pp = e->next;
    if (--e->refs == 0)
      entry_free(e);
  }
  fresh->refs = 2; /* the cache's and the caller's */
  fresh->next = hub->cache;
  hub->cache = fresh;
  pthread_mutex_unlock(&hub->cache_lock);
  return fresh;
}

/* --- agents --- */

static int label_cmp(const void *x, const void *y) {
  const struct snapshot_label *a = x, *b = y;
  return strcmp(a->key, b->key);
}

/* A new entry for a connecting agent, from its hello; no labels until
 * agent_labels_set gives it its record's. */
static struct hub_agent *agent_new(const Tlsplane__V1__AgentHello *hello, const char *name) {
  struct hub_agent *a = calloc(1, sizeof(*a));
  if (a == NULL)
    return NULL;
  a->name = strdup(name);
  a->version = strdup(hello->version);
  a->labels_key = strdup("");
  if (a->name == NULL || a->version == NULL || a->labels_key == NULL) {
    agent_free(a);
    return NULL;
  }
  a->applied_revision = hello->applied_revision;
  return a;
}

/* Gives a the labels of its record rec. 0, or -1 (out of memory: a keeps
 * what it had). */
static int agent_labels_set(struct hub_agent *a, const Tlsplane__V1__Agent *rec) {
  size_t n = rec->n_labels, keylen = 1;
  struct snapshot_label *labels = calloc(n ? n : 1, sizeof(*labels));
  if (labels == NULL)
    return -1;
  for (size_t i = 0; i < n; i++) {
    labels[i].key = strdup(rec->labels[i]->key);
    labels[i].value = strdup(rec->labels[i]->value);
    if (labels[i].key == NULL || labels[i].value == NULL) {
      labels_free(labels, i + 1);
      return -1;
    }
    keylen += strlen(labels[i].key) + strlen(labels[i].value) + 2;
  }
  qsort(labels, n, sizeof(*labels), label_cmp);
  char *key = malloc(keylen);
  if (key == NULL) {
    labels_free(labels, n);
    return -1;
  }
  key[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    strcat(key, labels[i].key);
    strcat(key, "=");
    strcat(key, labels[i].value);
    strcat(key, "\n");
  }
  labels_free(a->labels, a->n_labels);
  free(a->labels_key);
  a->labels = labels;
  a->n_labels = n;
  a->labels_key = key;
  return 0;
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
  if (rc == 0 && agent_labels_set(a, r) != 0)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
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

/* Reads the agent's record again (its labels may have changed) and gives a
 * its labels; *revision receives the revision read. NOT_FOUND: the agent
 * was deleted. */
static int agent_labels_refresh(struct hub *hub, struct hub_agent *a, int64_t *revision,
                                struct tp_err *err) {
  struct store_txn *txn;
  if (store_begin(hub->api->store, 0, &txn, err) != 0)
    return -1;
  *revision = store_txn_revision(txn);
  ProtobufCMessage *rec = NULL;
  int rc = api_read(txn, &api_kind_agent, a->name, 0, &rec, NULL, err);
  store_rollback(txn);
  if (rc == 0 && agent_labels_set(a, (const Tlsplane__V1__Agent *)rec) != 0)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (rec != NULL)
    protobuf_c_message_free_unpacked(rec, NULL);
  return rc;
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

/* An ack or stats from a connected agent: recorded for the API. Takes
 * ownership of msg. */
static void agent_report(struct hub *hub, struct hub_agent *a, Tlsplane__V1__AgentMessage *msg) {
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
  pthread_mutex_unlock(&hub->lock);
  protobuf_c_message_free_unpacked(&msg->base, NULL);
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

/* Sends the agent its snapshot if `revision` changed what it serves: the
 * one per-agent decision of the push thread. Returns -1 when the stream
 * must end. */
static int push(struct hub *hub, struct hub_agent *a, struct rpc_stream *stream, int64_t revision) {
  struct tp_err err = {0};
  int64_t labels_revision = 0;
  if (agent_labels_refresh(hub, a, &labels_revision, &err) != 0) {
    if (err.status == GRPC_STATUS_NOT_FOUND) {
      /* Deleted (DeleteAgent cuts the stream too; whichever comes first). */
      rpc_stream_finish(stream, GRPC_STATUS_PERMISSION_DENIED, "the agent was deleted");
      return -1;
    }
    /* An unreadable record (damaged, or edited in the file) sends
     * nothing: the agent keeps what it serves. */
    log_error("hub", "agent=%s: its record at revision %lld: %s", a->name, (long long)revision,
              err.msg);
    checked(hub, a, revision); /* the next revision tries again */
    return 0;
  }
  if (labels_revision > revision)
    revision = labels_revision;
  struct snap_entry *e = snap_get(hub, a, revision, &err);
  if (e == NULL) {
    log_error("hub", "agent=%s: snapshot at revision %lld: %s", a->name, (long long)revision,
              err.msg);
    checked(hub, a, revision); /* the next revision tries again */
    return 0;
  }
  int changed = !a->has_sent || memcmp(a->sent_hash, e->hash, HASH_LEN) != 0;
  int rc = 0;
  if (changed) {
    /* The stream takes a reference on the entry's bytes: every agent with
     * these labels is sent the same bytes, never a copy. */
    rc = rpc_stream_send_slice(stream, e->slice) == 0 ? 0 : -1;
    if (rc == 0) {
      pthread_mutex_lock(&hub->lock);
      memcpy(a->sent_hash, e->hash, HASH_LEN);
      a->has_sent = 1;
      a->sent_revision = e->revision;
      pthread_mutex_unlock(&hub->lock);
    }
  }
  /* Checked up to the revision the labels were read at: a change of the
   * record committed since gets another round. */
  checked(hub, a, labels_revision);
  snap_release(hub, e);
  return rc;
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
  pthread_mutex_lock(&hub->lock);
  for (;;) {
    while (!hub->stop && !hub->kicked)
      pthread_cond_wait(&hub->changed, &hub->lock);
    if (hub->stop)
      break;
    hub->kicked = 0;
    int64_t want = hub->revision;
    size_t n = 0;
    for (struct hub_agent *a = hub->agents; a != NULL; a = a->next) {
      if (!a->connected || a->cut || a->pinned || a->stream == NULL ||
          (!a->fresh && a->checked_revision >= want))
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
      int busy = rpc_stream_queued(stream) > 0; /* drained kicks again */
      if (!busy && push(hub, a, stream, want) != 0)
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

void hub_agent_decorate(struct hub *hub, Tlsplane__V1__Agent *agent) {
  pthread_mutex_lock(&hub->lock);
  struct hub_agent *a = agent_find(hub, agent->name);
  if (a == NULL) {
    pthread_mutex_unlock(&hub->lock);
    return;
  }
  agent->connected = a->connected;
  agent->applied_revision = a->applied_revision;
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
        rpc_stream_finish(a->stream, GRPC_STATUS_PERMISSION_DENIED, why);
    }
  pthread_mutex_unlock(&hub->lock);
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
  size_t n = 0;
  for (struct hub_agent *a = hub->agents; a != NULL; a = a->next)
    n += a->connected;
  r->revision = revision;
  r->agents_pending = calloc(n ? n : 1, sizeof(char *));
  r->agents_failed = calloc(n ? n : 1, sizeof(char *));
  for (struct hub_agent *a = hub->agents;
       a != NULL && r->agents_pending != NULL && r->agents_failed != NULL; a = a->next) {
    if (!a->connected)
      continue;
    r->agents_connected++;
    int failed = 0;
    for (size_t i = 0; a->last_ack != NULL && i < a->last_ack->n_listeners; i++)
      failed |= !a->last_ack->listeners[i]->applied;
    int current =
        a->has_sent && a->applied_revision == a->sent_revision && a->checked_revision >= revision;
    if (current && failed)
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
