/* Where snapshots come from: a file (standalone mode, source_file.c) now,
 * the control plane's gRPC stream later. A small vtable (STYLE.md: redis
 * ConnectionType) so that main.c and apply.c do not care which.
 *
 * A source delivers each new snapshot to cb on the main loop; the agent
 * applies it (agent_apply) and hands the per-listener results back through
 * source_report, which the stream will turn into ack / nack. */
#ifndef TLSPLANE_AGENT_SOURCE_H
#define TLSPLANE_AGENT_SOURCE_H

#include <uv.h>

#include "apply.h"
#include "error.h"
#include "tlsplane/v1/snapshot.pb-c.h"

/* A new snapshot (the callee takes ownership: free with
 * protobuf_c_message_free_unpacked), or NULL with err saying why the
 * source could not produce one. */
typedef void (*source_cb)(Tlsplane__V1__Snapshot *snap, const struct tp_err *err, void *data);

struct source;

struct source_ops {
  const char *name;
  /* The snapshot to start with, synchronously: 0 with *out (caller frees),
   * or -1 with err when the agent cannot start. */
  int (*first)(struct source *s, Tlsplane__V1__Snapshot **out, struct tp_err *err);
  /* Asks for a fresh snapshot now (SIGHUP); it comes through cb. */
  void (*refresh)(struct source *s);
  /* The outcome of applying the snapshot last delivered. */
  void (*report)(struct source *s, const struct apply_report *r);
  /* Stops delivering and frees s. */
  void (*close)(struct source *s);
};

struct source {
  const struct source_ops *ops;
  uv_loop_t *loop;
  source_cb cb;
  void *data;
};

static inline int source_first(struct source *s, Tlsplane__V1__Snapshot **out, struct tp_err *err) {
  return s->ops->first(s, out, err);
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

#endif
