/* Applying a snapshot: the two-phase configuration change (STYLE.md,
 * hitch's reconfigure).
 *
 * Phase 1, on the main thread, beside what runs: every listener of the
 * snapshot is compared with the version it serves (the packed
 * ResolvedListener bytes): KEEP when equal, else a new version is built
 * (addresses resolved, tlsconf_listener_build) and, when its address is
 * new, its listening sockets are bound. A listener that fails any step is
 * not applied and keeps its previous version, if it has one; the others
 * move on (DESIGN.md, invariant 2). Listeners gone from the snapshot are
 * DROPped.
 *
 * Phase 2: each worker gets one message with the changes, every CLOSE
 * before any OPEN, and swaps pointers on its own loop: a changed listener
 * on the same address keeps its sockets and new connections get the new
 * version; connections in flight keep theirs (they hold a reference).
 *
 * Whoever delivered the snapshot (source.h: a file now, the control-plane
 * stream later) gets the per-listener results, to log or to send as
 * ack / nack. */
#ifndef TLSPLANE_AGENT_APPLY_H
#define TLSPLANE_AGENT_APPLY_H

#include <stddef.h>
#include <stdint.h>

#include "agent.h"
#include "error.h"
#include "tlsplane/v1/snapshot.pb-c.h"

enum apply_action {
  APPLY_KEEP,   /* unchanged: nothing to do */
  APPLY_NEW,    /* now served */
  APPLY_CHANGE, /* new version served (same address: same sockets) */
  APPLY_DROP,   /* gone from the snapshot: no longer accepting; connections drain */
  APPLY_FAILED, /* not applied: keeps its previous version, if any */
};

struct apply_result {
  char listener[256]; /* its name, or "listeners[i]" when it has none */
  enum apply_action action;
  int ok;            /* 0 only for APPLY_FAILED */
  char reason[1024]; /* APPLY_FAILED: why, naming the field */
};

struct apply_report {
  int64_t revision;
  /* The snapshot applied (borrowed: valid until the caller of agent_apply
   * frees it). */
  const Tlsplane__V1__Snapshot *snapshot;
  size_t n; /* every listener of the snapshot, then the dropped ones */
  struct apply_result *results;
  size_t n_failed;
  double apply_ms; /* how long agent_apply took (both phases, on the main thread) */
};

const char *apply_action_name(enum apply_action a);

/* Applies snap (not kept: the caller frees it). Fills report (free with
 * apply_report_free); returns 0 when every listener was applied (ack),
 * -1 when some was not (nack). */
int agent_apply(struct agent *a, const Tlsplane__V1__Snapshot *snap, struct apply_report *report);

/* A snapshot that could not even be read (err says why): nothing changes,
 * the failure is logged and counted. */
void agent_apply_error(struct agent *a, const struct tp_err *err);

void apply_report_free(struct apply_report *r);

/* Releases every listener of the registry (at exit, after the workers
 * have stopped). */
void agent_listeners_free(struct agent *a);

#endif
