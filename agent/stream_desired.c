/* The control-plane source, what the server has sent (see stream_int.h):
 * on the main loop, the messages the conn thread received are taken in
 * order and turned into the desired set, which the agent then applies
 * once for them all.
 *
 *   delta     applied to the desired set (rset_delta_apply, all or
 *             nothing). The first of a stream is against what the hello
 *             reported, the served set: the desired set starts again
 *             from a copy of it (resources shared, entries copied).
 *   snapshot  an older server's whole configuration: a new desired set
 *             (agent_set_from_snapshot) replaces the old one.
 *
 * A delta that does not apply stops the batch: what applied before it is
 * applied and acked, it is answered with a nack naming the reason, and
 * the stream is cut so that the server syncs again from a hello. */
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "pb.h"
#include "stream_int.h"

void stream__inbox_free(struct inbox_msg *m) {
  while (m != NULL) {
    struct inbox_msg *next = m->next;
    if (m->msg != NULL)
      protobuf_c_message_free_unpacked(&m->msg->base, NULL);
    free(m);
    m = next;
  }
}

/* A set holding what src holds: resources shared, listener entries
 * copied. NULL src: an empty set. */
static int set_copy(const struct rset *src, struct rset **out, struct tp_err *err) {
  struct rset *s;
  if (rset_new(&s) != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  size_t it = 0;
  const Tlsplane__V1__Resource *r;
  while (src != NULL && (r = rset_resource_next(src, &it)) != NULL) {
    if (rset_resource_share(s, src, r->hash.data) != 0) {
      rset_free(s);
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    }
  }
  it = 0;
  const Tlsplane__V1__ListenerEntry *e;
  while (src != NULL && (e = rset_listener_next(src, &it)) != NULL) {
    Tlsplane__V1__ListenerEntry *copy = (Tlsplane__V1__ListenerEntry *)pb_clone(&e->base);
    if (copy == NULL || rset_listener_put(s, copy, 0, err) != 0) {
      rset_free(s);
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    }
  }
  *out = s;
  return 0;
}

/* One message of stream gen into s->desired. 0, or -1 with err (and
 * *revision, the message's): nothing changed. */
static int take(struct source_stream *s, Tlsplane__V1__ServerMessage *m, uint64_t gen,
                int64_t *revision, struct tp_err *err) {
  if (m->message_case == TLSPLANE__V1__SERVER_MESSAGE__MESSAGE_SNAPSHOT) {
    *revision = m->snapshot->revision;
    struct rset *set;
    if (agent_set_from_snapshot(m->snapshot, &set, err) != 0) {
      tp_err_prefix(err, "snapshot: ");
      return -1;
    }
    rset_free(s->desired);
    s->desired = set;
    s->desired_gen = gen;
    return 0;
  }
  Tlsplane__V1__SnapshotDelta *d = m->delta;
  *revision = d->revision;
  if (s->desired_gen != gen) {
    /* The stream's first delta: against what its hello reported. */
    struct rset *base = NULL;
    if (set_copy(s->a->served, &base, err) != 0)
      return -1;
    rset_free(s->desired);
    s->desired = base;
    s->desired_gen = gen;
  }
  if (rset_delta_apply(s->desired, d, err) != 0) {
    tp_err_prefix(err, "delta: ");
    return -1;
  }
  return 0;
}

void stream__on_delivery(uv_async_t *h) {
  struct source_stream *s = stream_check(h->data);
  pthread_mutex_lock(&s->lock);
  struct inbox_msg *batch = s->inbox;
  s->inbox = NULL;
  s->inbox_tail = &s->inbox;
  uint64_t cur = s->gen;
  s->applying = batch != NULL && !s->stopped;
  pthread_mutex_unlock(&s->lock);
  if (batch == NULL || s->stopped) {
    stream__inbox_free(batch);
    return;
  }
  int64_t revision = 0, failed_revision = 0;
  int have = 0, failed = 0, resync = 0;
  struct tp_err err = {0};
  for (struct inbox_msg *m = batch; m != NULL && !failed; m = m->next) {
    if (m->gen != cur)
      continue; /* its stream is gone: the next one starts from a hello */
    int64_t rev = 0;
    if (take(s, m->msg, m->gen, &rev, &err) != 0) {
      failed = 1;
      failed_revision = rev;
      /* A delta the set cannot take: the server's idea of what the agent
       * holds is wrong, and only a new hello puts it right. A refused
       * snapshot is whole: nothing to resync. */
      resync = m->msg->message_case == TLSPLANE__V1__SERVER_MESSAGE__MESSAGE_DELTA;
      break;
    }
    revision = rev;
    have = 1;
  }
  stream__inbox_free(batch);
  if (have) {
    s->delivered_gen = cur;
    s->base.cb(s->desired, revision, NULL, s->base.data); /* applies it, calls stream__report */
  }
  if (failed) {
    agent_apply_error(s->a, &err);
    log_warn("agent", "control plane: revision %lld not applied: nack sent%s",
             (long long)failed_revision,
             resync ? "; reconnecting so that the server sends again what the agent lacks" : "");
    s->delivered_gen = cur;
    stream__nack_queue(s, failed_revision, err.msg, resync);
  }
  pthread_mutex_lock(&s->lock);
  s->applying = 0;
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
}
