/* The control-plane source, the session (see stream_int.h): the conn
 * thread connects, sends the hello, receives snapshots and hands them to
 * the main loop, and backs off when the stream ends. */
#include <errno.h>
#include <grpc/grpc.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "pb.h"
#include "stream_int.h"

/* Time ------------------------------------------------------------------------ */

void stream__deadline_in(struct timespec *ts, int64_t ms) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (ms % 1000) * 1000000;
  if (ts->tv_nsec >= 1000000000) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000;
  }
}

/* The conn thread: the stream ------------------------------------------------ */

/* Queues m (taking it) for the main loop. A snapshot replaces the whole
 * configuration: what is queued before it is dropped. */
static int deliver(struct source_stream *s, Tlsplane__V1__ServerMessage *m, uint64_t gen) {
  struct inbox_msg *im = calloc(1, sizeof(*im));
  if (im == NULL) {
    protobuf_c_message_free_unpacked(&m->base, NULL);
    return -1;
  }
  im->msg = m;
  im->gen = gen;
  pthread_mutex_lock(&s->lock);
  if (m->message_case == TLSPLANE__V1__SERVER_MESSAGE__MESSAGE_SNAPSHOT) {
    stream__inbox_free(s->inbox); /* not applied yet: superseded */
    s->inbox = NULL;
    s->inbox_tail = &s->inbox;
  }
  *s->inbox_tail = im;
  s->inbox_tail = &im->next;
  pthread_mutex_unlock(&s->lock);
  uv_async_send(&s->delivery);
  return 0;
}

/* The hello: who the agent is, protocol 2, and what it serves (held, the
 * main loop's record of it; borrowed). */
static int send_hello(struct source_stream *s, struct gclient_stream *st,
                      const Tlsplane__V1__AgentHello *held) {
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
  hello.protocol = STREAM_PROTOCOL;
  if (held != NULL) {
    hello.resources = held->resources;
    hello.n_resources = held->n_resources;
    hello.listeners = held->listeners;
    hello.n_listeners = held->n_listeners;
  }
  Tlsplane__V1__AgentMessage msg = TLSPLANE__V1__AGENT_MESSAGE__INIT;
  msg.message_case = TLSPLANE__V1__AGENT_MESSAGE__MESSAGE_HELLO;
  msg.hello = &hello;
  int rc = gclient_stream_send(st, &msg.base);
  free(entries);
  free(ptrs);
  return rc;
}

/* One connection: credentials, the stream, configurations until it ends. */
static enum outcome session(struct source_stream *s, struct tp_err *err) {
  int received = 0;
  if (stream__identity_ensure(s, err) != 0) {
    if (atomic_load(&s->stop))
      return OUT_STOPPED;
    return err->status == GRPC_STATUS_UNAVAILABLE || err->status == GRPC_STATUS_DEADLINE_EXCEEDED
               ? OUT_FAILED
               : OUT_REFUSED;
  }
  /* Keepalive: a ping after two thirds of the bound without one (the
   * server allows one a second), the last third to answer it: a
   * half-open connection (a partition, a server host gone) is noticed
   * within the bound (30 s by default), a killed server at once (RST). */
  int bound_ms = s->cfg.keepalive_ms > 0 ? s->cfg.keepalive_ms : STREAM_KEEPALIVE_MS;
  struct gclient_opts o = {.ca_pem = s->ca_pem,
                           .key_pem = s->id.key_pem,
                           .cert_pem = s->id.cert_pem,
                           .keepalive_ms = bound_ms - bound_ms / 3,
                           .keepalive_timeout_ms = bound_ms / 3,
                           .connect_timeout_ms = 10000,
                           .stop = &s->stop};
  struct gclient_stream *st;
  if (gclient_stream_open(stream_server(s), STREAM_CONNECT_METHOD, &o, &st, err) != 0)
    return atomic_load(&s->stop) ? OUT_STOPPED : OUT_FAILED;
  ProtobufCMessage *m = NULL;
  /* A new stream: what came on the old one is dropped from now on, and
   * the hello reports what is served once no apply is under way (see
   * stream_int.h). */
  pthread_mutex_lock(&s->lock);
  while (s->applying && !atomic_load(&s->stop))
    pthread_cond_wait(&s->cond, &s->lock);
  uint64_t gen = ++s->gen;
  /* Out of memory for the copy: a hello that reports nothing held (the
   * server then sends everything). */
  Tlsplane__V1__AgentHello *held =
      s->held != NULL ? (Tlsplane__V1__AgentHello *)pb_clone(&s->held->base) : NULL;
  pthread_mutex_unlock(&s->lock);
  int hello_rc = send_hello(s, st, held);
  if (held != NULL)
    protobuf_c_message_free_unpacked(&held->base, NULL);
  if (hello_rc != 0) {
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
  s->renew_requested = 0;
  s->resync_requested = 0;
  s->renew_at = s->id.renew_after > s->renew_retry_at ? s->id.renew_after : s->renew_retry_at;
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
    int is_snapshot =
        sm->message_case == TLSPLANE__V1__SERVER_MESSAGE__MESSAGE_SNAPSHOT && sm->snapshot != NULL;
    int is_delta =
        sm->message_case == TLSPLANE__V1__SERVER_MESSAGE__MESSAGE_DELTA && sm->delta != NULL;
    if (!is_snapshot && !is_delta) {
      protobuf_c_message_free_unpacked(m, NULL); /* nothing this agent knows */
      continue;
    }
    if (received++ == 0) {
      atomic_store(&s->a->cp_connected, 1);
      atomic_fetch_add(&s->a->cp_connects, 1);
      log_info("agent",
               "control plane %s: connected as agents/%s (certificate serial %s), %s revision "
               "%lld",
               stream_server(s), s->cfg.name, s->id.serial,
               is_delta ? "protocol 2, delta to" : "protocol 1, snapshot",
               (long long)(is_delta ? sm->delta->revision : sm->snapshot->revision));
    }
    deliver(s, sm, gen);
    if (received > 0 && s->cfg.renew_now) {
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
  int renew = s->renew_requested, resync = s->resync_requested;
  s->renew_requested = s->resync_requested = 0;
  pthread_mutex_unlock(&s->lock);
  gclient_stream_close(st);
  atomic_store(&s->a->cp_connected, 0);
  if (atomic_load(&s->stop))
    return OUT_STOPPED;
  if (renew) {
    s->renew_forced = 1;
    return OUT_RENEW;
  }
  if (resync) {
    tp_err_set(err, GRPC_STATUS_ABORTED,
               "a delta of the server did not apply (nack sent): reconnecting so that the "
               "server syncs from the hello");
    return OUT_FAILED;
  }
  if (received > 0 && err->status == GRPC_STATUS_PERMISSION_DENIED)
    return OUT_REFUSED; /* cut by the server: deleted, or its certificate revoked */
ended:
  if (err->status == GRPC_STATUS_UNAUTHENTICATED) {
    s->id_refused = stream_enroll_mode(s);
    size_t len = strlen(err->msg);
    snprintf(err->msg + len, sizeof(err->msg) - len,
             " (the agent certificate was revoked, has expired or the agent was deleted: %s)",
             s->cfg.join_token != NULL && !s->join_used && stream_enroll_mode(s)
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
  stream__deadline_in(&ts, ms);
  pthread_mutex_lock(&s->lock);
  while (!atomic_load(&s->stop) && !s->wake &&
         pthread_cond_timedwait(&s->cond, &s->lock, &ts) != ETIMEDOUT)
    ;
  s->wake = 0;
  pthread_mutex_unlock(&s->lock);
}

/* Failover. The servers of the list are tried in turn: when a stream
 * ends (the server was killed, a keepalive went unanswered, a refused
 * connection) the next one is tried after a short random wait (full
 * jitter up to STREAM_BACKOFF_MIN_MS); once every server of a round
 * failed the agent waits the exponential back-off (0.5 s doubling to the
 * cap, full jitter, at least STREAM_BACKOFF_FLOOR_MS) so that a control
 * plane that is down altogether is never hammered. A stream that served
 * configurations starts a new round. The hello of the new stream reports
 * what is served, so the new server sends only what changed. */
void *stream__conn_main(void *arg) {
  struct source_stream *s = arg;
  int failures = 0;           /* rounds failed in a row */
  size_t left = s->n_servers; /* attempts left in this round */
  while (!atomic_load(&s->stop)) {
    struct tp_err err = {0};
    enum outcome out = session(s, &err);
    if (out == OUT_STOPPED || atomic_load(&s->stop))
      break;
    if (out == OUT_RENEW) {
      failures = 0;
      continue;
    }
    if (out == OUT_HEALTHY) {
      failures = 0;
      left = s->n_servers;
    }
    int64_t cap = s->cfg.retry_max_ms > 0 ? s->cfg.retry_max_ms : STREAM_BACKOFF_MAX_MS;
    int64_t base, floor_ms = 0;
    if (--left == 0) {
      /* A whole round failed: back off. */
      base = STREAM_BACKOFF_MIN_MS << (failures < 6 ? failures : 6);
      if (base > cap || out == OUT_REFUSED)
        base = cap;
      floor_ms = STREAM_BACKOFF_FLOOR_MS < cap ? STREAM_BACKOFF_FLOOR_MS : cap;
      failures++;
      left = s->n_servers;
    } else {
      base = STREAM_BACKOFF_MIN_MS < cap ? STREAM_BACKOFF_MIN_MS : cap;
    }
    /* Full jitter, so that a fleet cut off at once does not come back at
     * once. */
    int64_t delay = (int64_t)(next_rand(s) % (uint64_t)(base + 1));
    if (delay < floor_ms)
      delay = floor_ms;
    const char *from = stream_server(s);
    if (s->n_servers > 1) {
      s->cur = (s->cur + 1) % s->n_servers;
      atomic_fetch_add(&s->a->cp_failovers, 1);
    }
    char next[300] = "retrying";
    if (s->n_servers > 1)
      snprintf(next, sizeof(next), "failing over to %s", stream_server(s));
    log_msg(out == OUT_REFUSED ? LOG_ERROR : LOG_WARN, "agent",
            "control plane %s: %s: %s; serving the last snapshot applied (revision %lld), "
            "%s in %.1f s",
            from, gclient_status_name(err.status), err.msg,
            (long long)atomic_load(&s->applied_revision), next, (double)delay / 1000);
    pause_ms(s, delay);
  }
  return NULL;
}
