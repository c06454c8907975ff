/* The control-plane source's internals, shared by its files (source.h has
 * the public side):
 *
 *   source_stream.c   the source object: its vtable, lifetime, threads
 *   stream_session.c  the conn thread: connect, hello, receive loop, back-off
 *   stream_report.c   ack / nack and stats messages, the queue and the send
 *                     thread that drains it (and hands the served state to
 *                     the cache, cache.c)
 *   enroll.c          the agent's identity: EnrollAgent, RenewAgentCertificate
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
#ifndef TLSPLANE_AGENT_STREAM_INT_H
#define TLSPLANE_AGENT_STREAM_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <uv.h>

#include "gclient.h"
#include "identity.h"
#include "source.h"
#include "tlsplane/v1/agent.pb-c.h"

#define STREAM_MAGIC 0x5354524du /* "STRM" */
#define STREAM_CONNECT_METHOD "/tlsplane.v1.AgentService/Connect"
#define STREAM_ENROLL_METHOD "/tlsplane.v1.AgentService/EnrollAgent"
#define STREAM_RENEW_METHOD "/tlsplane.v1.AgentService/RenewAgentCertificate"
#define STREAM_BACKOFF_MIN_MS 500
#define STREAM_BACKOFF_MAX_MS 30000
#define STREAM_STATS_INTERVAL_MS 10000
#define STREAM_RENEW_RETRY_S 300 /* after a failed renewal (the old certificate is still good) */

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

static inline struct source_stream *stream_check(struct source *s) {
  struct source_stream *ss = (struct source_stream *)s;
  if (ss == NULL || ss->magic != STREAM_MAGIC)
    abort();
  return ss;
}

/* Enrolled identity (the cache dir's), not --cert / --key files. */
static inline int stream_enroll_mode(const struct source_stream *s) {
  return s->cfg.cert_path == NULL;
}

/* stream_session.c: the conn thread (arg: the source_stream), and the
 * main loop's side of a delivery (the uv_async). */
void *stream__conn_main(void *arg);
void stream__on_delivery(uv_async_t *h);
/* *ts = ms from now on CLOCK_MONOTONIC (the clock of `cond`). */
void stream__deadline_in(struct timespec *ts, int64_t ms);

/* stream_report.c: the report vtable entry (main loop), the stats timer
 * and a stats message queued now (main loop), the send thread. */
void stream__report(struct source *src, const struct apply_report *r);
void stream__on_stats_timer(uv_timer_t *t);
void stream__stats_queue(struct source_stream *s);
void *stream__send_main(void *arg);
/* Frees a message queued (NULL: no-op). */
void stream__message_free(Tlsplane__V1__AgentMessage *m);

/* enroll.c (conn thread): the credential for the next connection; 0, or
 * -1 with err (its status says whether to retry soon). */
int stream__identity_ensure(struct source_stream *s, struct tp_err *err);

#endif
