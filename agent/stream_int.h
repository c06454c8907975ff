/* The control-plane source's internals, shared by its files (source.h has
 * the public side):
 *
 *   source_stream.c   the source object: its vtable, lifetime, threads
 *   stream_session.c  the conn thread: connect, hello, receive loop, back-off
 *   stream_desired.c  what the server has sent, on the main loop: the
 *                     messages received applied in order to the desired
 *                     set (deltas) or replacing it (an older server's
 *                     snapshots), then handed to the agent to apply
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
 *           (mutual TLS), sends the hello (protocol 2, and the hashes of
 *           what the agent serves: the main loop keeps them in `held`),
 *           then receives: each message is queued in `inbox` for the main
 *           loop and signalled through a uv_async (deltas in order, each
 *           applies to the one before; a snapshot replaces the whole
 *           configuration, so what is queued before it is dropped). When
 *           the stream ends it moves to the next server of the list (it
 *           fails over) and connects again; once a whole round of them
 *           failed it backs off (0.5 s doubling to 30 s, full jitter).
 *   send    sends what the main loop queued (the ack or nack of the last
 *           apply, the latest stats) on the current stream, then writes
 *           the cache file; also cuts the stream when the certificate is
 *           due for renewal, so that conn renews and reconnects.
 *
 * Everything they share is under `lock`. An ack is tagged with the stream
 * (`gen`) its message came on and dropped if that stream is gone; so are
 * messages of a stream that is gone. The first delta of a stream is taken
 * against what its hello reported: the desired set starts again from the
 * served one (a->served) then. So that the two are the same, conn sends
 * no hello while the main loop is applying (`applying`), and the main
 * loop drops what came on an older stream. The server sends what the
 * agent lacks on every new stream, which is then applied (all kept,
 * usually) and acked on the stream that asked.
 *
 * A delta that does not apply to the desired set (rset_delta_apply: a
 * hash that does not match, a listener naming what is not held) changes
 * nothing: it is answered with a nack naming the reason (one
 * ListenerResult with an empty listener name), and the send thread then
 * cuts the stream, so that the next one starts from a hello and the
 * server sends again what the agent lacks. Reconnecting backs off as a
 * failed attempt does, so that a server that keeps sending a bad delta is
 * not hammered.
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
/* The stream protocol this agent speaks (AgentHello.protocol): 4,
 * listeners with ACME tls-alpn-01 challenges (ListenerEntry.
 * acme_challenges, which the server sends only to agents of 4 or later);
 * 3, listeners with upstream_tls or a unix: upstream (sent only to agents
 * of 3 or later); 2, deltas of a resource set. It takes protocol 1
 * snapshots from older servers. */
#define STREAM_PROTOCOL 4
#define STREAM_BACKOFF_MIN_MS 500
#define STREAM_BACKOFF_MAX_MS 30000
#define STREAM_BACKOFF_FLOOR_MS 100 /* the least wait after a round of failures */
#define STREAM_STATS_INTERVAL_MS 10000
#define STREAM_RENEW_RETRY_S 300 /* after a failed renewal (the old certificate is still good) */

/* How one connection attempt ended. */
enum outcome {
  OUT_FAILED,  /* never got a configuration, or a delta did not apply: back off further */
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
  /* cfg.server split at ',': the servers tried in turn (see
   * stream_session.c's failover); the conn thread's `cur` is the one in
   * use, for the stream, enrollment and renewal alike. */
  char **servers;
  size_t n_servers;

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
  struct inbox_msg *inbox; /* received, not yet taken by the main loop, oldest first */
  struct inbox_msg **inbox_tail;
  int applying; /* the main loop is applying what it took from inbox */
  /* What the agent serves, as the hello reports it (its resources and
   * listeners fields only), made by the main loop after every apply. */
  Tlsplane__V1__AgentHello *held;
  Tlsplane__V1__AgentMessage *ack; /* to send */
  uint64_t ack_gen;
  int ack_resync;                    /* cut the stream once ack is sent (a delta did not apply) */
  int resync_requested;              /* the send thread cut the stream for that */
  Tlsplane__V1__AgentMessage *stats; /* to send */
  uint8_t *blob;                     /* to write to the cache */
  size_t blob_len;
  atomic_llong applied_revision; /* for the hello */

  /* Main loop only. */
  uint64_t delivered_gen;
  int from_cache; /* the next report is the cached state's */
  /* What the server has sent: the desired set, and the stream whose
   * messages built it (0: from the cache). */
  struct rset *desired;
  uint64_t desired_gen;

  /* conn thread only. */
  size_t cur; /* servers[cur]: the server tried now */
  struct identity id;
  int have_id;
  int id_refused;   /* the server refused it (UNAUTHENTICATED) */
  int join_used;    /* the join token was used, or refused, in this process */
  int renew_forced; /* renew on the next attempt, due or not */
  int64_t renew_retry_at;
  uint64_t rand_state;
};

/* One message received (inbox). */
struct inbox_msg {
  Tlsplane__V1__ServerMessage *msg; /* a snapshot or a delta */
  uint64_t gen;                     /* the stream it came on */
  struct inbox_msg *next;
};

static inline struct source_stream *stream_check(struct source *s) {
  struct source_stream *ss = (struct source_stream *)s;
  if (ss == NULL || ss->magic != STREAM_MAGIC)
    abort();
  return ss;
}

/* Enrolled identity (the cache dir's), not --cert / --key files. */
/* The server the conn thread talks to now. */
static inline const char *stream_server(const struct source_stream *s) {
  return s->servers[s->cur];
}

static inline int stream_enroll_mode(const struct source_stream *s) {
  return s->cfg.cert_path == NULL;
}

/* stream_session.c: the conn thread (arg: the source_stream). */
void *stream__conn_main(void *arg);

/* stream_desired.c: the main loop's side of a delivery (the uv_async);
 * freeing what inbox holds (under lock, or once the threads are gone). */
void stream__on_delivery(uv_async_t *h);
void stream__inbox_free(struct inbox_msg *m);
/* *ts = ms from now on CLOCK_MONOTONIC (the clock of `cond`). */
void stream__deadline_in(struct timespec *ts, int64_t ms);

/* stream_report.c: the report vtable entry (main loop), the stats timer
 * and a stats message queued now (main loop), the send thread. */
void stream__report(struct source *src, const struct apply_report *r);
void stream__on_stats_timer(uv_timer_t *t);
void stream__stats_queue(struct source_stream *s);
void *stream__send_main(void *arg);
/* Queues a nack of revision that names no listener, saying why (a delta
 * that did not apply); with resync, the send thread cuts the stream once
 * it is sent. Main loop. */
void stream__nack_queue(struct source_stream *s, int64_t revision, const char *reason, int resync);
/* Frees a message queued (NULL: no-op). */
void stream__message_free(Tlsplane__V1__AgentMessage *m);

/* enroll.c (conn thread): the credential for the next connection; 0, or
 * -1 with err (its status says whether to retry soon). */
int stream__identity_ensure(struct source_stream *s, struct tp_err *err);

#endif
