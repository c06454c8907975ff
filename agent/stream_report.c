/* The control-plane source, reporting (see stream_int.h): the ack or nack
 * of every apply and the stats, queued by the main loop and sent by the
 * send thread on the current stream, which also hands the served state to
 * the cache file. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cache.h"
#include "log.h"
#include "pb.h"
#include "stream_int.h"

/* Messages ---------------------------------------------------------------- */

void stream__message_free(Tlsplane__V1__AgentMessage *m) {
  if (m != NULL)
    protobuf_c_message_free_unpacked(&m->base, NULL);
}

/* A heap copy of an AgentMessage built on the stack. */
static Tlsplane__V1__AgentMessage *message_copy(const Tlsplane__V1__AgentMessage *m) {
  return (Tlsplane__V1__AgentMessage *)pb_clone(&m->base);
}

/* The ack (every listener applied) or nack of one apply. */
static Tlsplane__V1__AgentMessage *ack_new(const struct apply_report *r) {
  size_t n = r->n_listeners < r->n ? r->n_listeners : r->n;
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

/* What the hello reports: the hashes of what the agent serves (served:
 * its resources, and a ListenerVersion per listener). */
static Tlsplane__V1__AgentHello *held_new(const struct rset *served) {
  size_t nr = served != NULL ? rset_resource_count(served) : 0;
  size_t nl = served != NULL ? rset_listener_count(served) : 0;
  ProtobufCBinaryData *res = calloc(nr + 1, sizeof(*res));
  Tlsplane__V1__ListenerVersion *lv = calloc(nl + 1, sizeof(*lv));
  Tlsplane__V1__ListenerVersion **lvp = calloc(nl + 1, sizeof(*lvp));
  Tlsplane__V1__AgentHello *out = NULL;
  if (res != NULL && lv != NULL && lvp != NULL) {
    size_t it = 0, k = 0;
    const Tlsplane__V1__Resource *r;
    while (served != NULL && k < nr && (r = rset_resource_next(served, &it)) != NULL)
      res[k++] = r->hash;
    it = 0;
    size_t j = 0;
    const Tlsplane__V1__ListenerEntry *e;
    while (served != NULL && j < nl && (e = rset_listener_next(served, &it)) != NULL) {
      tlsplane__v1__listener_version__init(&lv[j]);
      lv[j].listener = e->listener->name;
      lv[j].hash = e->hash;
      lvp[j] = &lv[j];
      j++;
    }
    Tlsplane__V1__AgentHello h = TLSPLANE__V1__AGENT_HELLO__INIT;
    h.resources = res;
    h.n_resources = k;
    h.listeners = lvp;
    h.n_listeners = j;
    out = (Tlsplane__V1__AgentHello *)pb_clone(&h.base);
  }
  free(res);
  free(lv);
  free(lvp);
  return out;
}

/* Records what the hello reports now; and the served state for the
 * cache file unless from_cache (it was read from there). */
static void held_update(struct source_stream *s, int64_t revision, int write_cache) {
  Tlsplane__V1__AgentHello *held = held_new(s->a->served);
  if (held == NULL)
    log_error("agent", "control plane: out of memory recording what is served for the hello");
  uint8_t *blob = NULL;
  size_t blob_len = 0;
  if (write_cache && cache_state_pack(s->a->served, revision, &blob, &blob_len) != 0) {
    log_error("agent", "cache %s: cannot pack revision %lld: out of memory", s->cfg.cache_dir,
              (long long)revision);
    blob = NULL;
  }
  pthread_mutex_lock(&s->lock);
  if (held != NULL) {
    if (s->held != NULL)
      protobuf_c_message_free_unpacked(&s->held->base, NULL);
    s->held = held;
  }
  if (blob != NULL) {
    cache_wipe_free(s->blob, s->blob_len); /* an older one not yet written */
    s->blob = blob;
    s->blob_len = blob_len;
  }
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

void stream__nack_queue(struct source_stream *s, int64_t revision, const char *reason, int resync) {
  Tlsplane__V1__ListenerResult res = TLSPLANE__V1__LISTENER_RESULT__INIT;
  Tlsplane__V1__ListenerResult *ptrs[1] = {&res};
  res.listener = "";
  res.applied = 0;
  res.error = (char *)reason;
  Tlsplane__V1__AgentAck ack = TLSPLANE__V1__AGENT_ACK__INIT;
  ack.revision = revision;
  ack.listeners = ptrs;
  ack.n_listeners = 1;
  Tlsplane__V1__AgentMessage msg = TLSPLANE__V1__AGENT_MESSAGE__INIT;
  msg.message_case = TLSPLANE__V1__AGENT_MESSAGE__MESSAGE_ACK;
  msg.ack = &ack;
  Tlsplane__V1__AgentMessage *m = message_copy(&msg);
  pthread_mutex_lock(&s->lock);
  if (m != NULL) {
    stream__message_free(s->ack);
    s->ack = m;
    s->ack_gen = s->delivered_gen;
    s->ack_resync = resync;
  } else if (resync && s->stream != NULL && s->delivered_gen == s->gen) {
    /* No nack: the resync alone. */
    s->resync_requested = 1;
    gclient_stream_cancel(s->stream);
  }
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

void stream__stats_queue(struct source_stream *s) {
  Tlsplane__V1__AgentMessage *stats = stats_new(s->a);
  if (stats == NULL)
    return;
  pthread_mutex_lock(&s->lock);
  stream__message_free(s->stats);
  s->stats = stats;
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

void stream__on_stats_timer(uv_timer_t *t) {
  stream__stats_queue(stream_check(t->data));
}

void stream__report(struct source *src, const struct apply_report *r) {
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
     * (its hello says what is held) and nothing new to write. */
    s->from_cache = 0;
    log_msg(r->n_failed == 0 ? LOG_INFO : LOG_WARN, "agent", "cache %s: revision %lld %s: %s",
            s->cfg.cache_dir, (long long)r->revision, how, what);
    held_update(s, r->revision, 0);
    return;
  }
  log_msg(r->n_failed == 0 ? LOG_INFO : LOG_WARN, "agent",
          "control plane: revision %lld %s: %s; %s sent", (long long)r->revision, how, what,
          r->n_failed == 0 ? "ack" : "nack");
  atomic_store(&s->applied_revision, r->revision);
  Tlsplane__V1__AgentMessage *ack = ack_new(r), *stats = stats_new(s->a);
  held_update(s, r->revision, 1);
  pthread_mutex_lock(&s->lock);
  if (ack != NULL) {
    stream__message_free(s->ack);
    s->ack = ack;
    s->ack_gen = s->delivered_gen;
    s->ack_resync = 0;
  }
  if (stats != NULL) {
    stream__message_free(s->stats);
    s->stats = stats;
  }
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

/* The send thread ---------------------------------------------------------- */

void *stream__send_main(void *arg) {
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
        stream__deadline_in(&ts, (wait_s > 60 ? 60 : wait_s) * 1000 + 50);
        pthread_cond_timedwait(&s->cond, &s->lock, &ts);
      } else {
        pthread_cond_wait(&s->cond, &s->lock);
      }
      continue;
    }
    struct gclient_stream *st = s->stream;
    Tlsplane__V1__AgentMessage *ack = NULL, *stats = NULL;
    int resync = 0;
    if (st != NULL) {
      if (s->ack != NULL && s->ack_gen == s->gen) {
        ack = s->ack;
        resync = s->ack_resync;
      } else {
        stream__message_free(s->ack); /* for a stream that is gone */
      }
      s->ack = NULL;
      s->ack_resync = 0;
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
    stream__message_free(ack);
    stream__message_free(stats);
    pthread_mutex_lock(&s->lock);
    if (resync && s->stream == st) {
      /* The nack of a delta that did not apply is out: a new stream, a
       * new hello, and the server sends what the agent lacks. */
      s->resync_requested = 1;
      gclient_stream_cancel(st);
    }
    s->sender_busy = 0;
    pthread_cond_broadcast(&s->cond);
    if (blob != NULL) {
      /* After the ack: what is served is what was acked; the file only
       * matters at the next start, when the agent reconnects anyway. */
      pthread_mutex_unlock(&s->lock);
      struct tp_err err = {0};
      if (cache_state_write(s->cfg.cache_dir, blob, blob_len, &err) != 0)
        log_error("agent", "cache: cannot write the served state: %s", err.msg);
      cache_wipe_free(blob, blob_len);
      pthread_mutex_lock(&s->lock);
    }
  }
  pthread_mutex_unlock(&s->lock);
  return NULL;
}
