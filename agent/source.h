/* Where configurations come from: a file (standalone mode, source_file.c)
 * or the control plane's gRPC stream (source_stream.c). A small vtable
 * (STYLE.md: redis ConnectionType) so that main.c and apply.c do not care
 * which.
 *
 * A source holds the configuration it was given as a resource set
 * (rset.h: the file's snapshot through rset_from_snapshot; the stream's
 * SnapshotDeltas applied to it, or an older server's Snapshots replacing
 * it) and delivers it to cb on the main loop whenever it changes; the
 * agent applies it (agent_apply) and hands the per-listener results back
 * through source_report, which the stream turns into ack / nack.
 *
 * Lifetime, all on the main thread: new, first (before the loop runs),
 * start (once the first snapshot is applied), stop (when the agent stops;
 * no cb after it), close (after the loop ended). */
#ifndef TLSPLANE_AGENT_SOURCE_H
#define TLSPLANE_AGENT_SOURCE_H

#include <uv.h>

#include "apply.h"
#include "error.h"
#include "rset.h"
#include "tlsplane/v1/snapshot.pb-c.h"

/* A new configuration: set at revision (the source's, borrowed: valid
 * during the call), or NULL with err saying why the source could not
 * produce one. */
typedef void (*source_cb)(const struct rset *set, int64_t revision, const struct tp_err *err,
                          void *data);

struct source;

struct source_ops {
  const char *name;
  /* The configuration to start with, synchronously: 0 with *out (the
   * source's, valid until start; NULL: nothing to serve yet) and
   * *revision, or -1 with err when the agent cannot start. */
  int (*first)(struct source *s, const struct rset **out, int64_t *revision, struct tp_err *err);
  /* Starts delivering (threads, handles on the loop). NULL: nothing to
   * start. Returns 0, or -1 with err when the agent cannot run. */
  int (*start)(struct source *s, struct tp_err *err);
  /* Asks for a fresh configuration now (SIGHUP); it comes through cb. */
  void (*refresh)(struct source *s);
  /* The outcome of applying the configuration last delivered (or the one
   * first returned). */
  void (*report)(struct source *s, const struct apply_report *r);
  /* Stops delivering: cb is not called any more, handles on the loop are
   * closing. NULL: nothing to stop. Idempotent. */
  void (*stop)(struct source *s);
  /* Frees s (after stop, once the loop ended). */
  void (*close)(struct source *s);
};

struct source {
  const struct source_ops *ops;
  uv_loop_t *loop;
  source_cb cb;
  void *data;
};

static inline int source_first(struct source *s, const struct rset **out, int64_t *revision,
                               struct tp_err *err) {
  return s->ops->first(s, out, revision, err);
}
static inline int source_start(struct source *s, struct tp_err *err) {
  return s->ops->start != NULL ? s->ops->start(s, err) : 0;
}
static inline void source_stop(struct source *s) {
  if (s != NULL && s->ops->stop != NULL)
    s->ops->stop(s);
}
static inline void source_refresh(struct source *s) {
  s->ops->refresh(s);
}
static inline void source_report(struct source *s, const struct apply_report *r) {
  s->ops->report(s, r);
}
static inline void source_close(struct source *s) {
  if (s != NULL)
    s->ops->close(s);
}

/* A source reading path (a tlsplane.v1.Snapshot in protobuf's JSON
 * mapping) at start and on every refresh. NULL when out of memory. */
struct source *source_file_new(const char *path, uv_loop_t *loop, source_cb cb, void *data);

/* Reads and decodes a snapshot file; err says what is wrong ("FILE: ..."). */
int source_file_load(const char *path, Tlsplane__V1__Snapshot **out, struct tp_err *err);

/* The control-plane source (source_stream.c). */
struct stream_config {
  const char *server;     /* "host:port" of tlsplane-server */
  const char *ca_path;    /* the control-plane CA: verifies the server */
  const char *join_token; /* enrolls when the cache dir has no usable certificate; or NULL */
  const char *cert_path;  /* or a client certificate and key given as files */
  const char *key_path;
  const char *name; /* the agent id, "edge-1" */
  const char **label_keys, **label_values;
  size_t n_labels;
  const char *cache_dir;
  const char *version;   /* sent in the hello */
  int renew_now;         /* renew the certificate once, right after the first snapshot (tests) */
  int stats_interval_ms; /* 0: 10 s */
  int retry_max_ms;      /* the longest wait between connection attempts; 0: 30 s */
  /* A server silent this long is left (keepalive pings after two thirds
   * of it, the rest to answer); 0: 30 s. */
  int keepalive_ms;
};

/* Connects to the control plane from a thread of its own, receives the
 * agent's configuration (protocol 2: a SnapshotDelta against what the
 * hello reports it serves, then one per change; from an older server:
 * whole Snapshots), answers ack / nack, sends stats, persists what is
 * served in the cache dir and serves it first at the next start (first
 * returns it, or nothing when the cache has none). The strings of cfg
 * are copied. a is the agent's registry (read on the main loop for stats
 * and the cache). NULL when out of memory. */
struct source *source_stream_new(const struct stream_config *cfg, struct agent *a, uv_loop_t *loop,
                                 source_cb cb, void *data);

#endif
