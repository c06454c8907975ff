/* Applying a configuration: the two-phase configuration change (STYLE.md,
 * hitch's reconfigure).
 *
 * The configuration is a resource set (rset.h): every resource once, by
 * content hash, and a ListenerEntry per listener that names them by hash;
 * its hash changes whenever the listener or anything it uses changes.
 *
 * Phase 1, on the main thread, beside what runs: every listener of the
 * set is compared with the version it serves by entry hash alone: KEEP
 * when equal (nothing packed, resolved or compared: 50,000 unchanged
 * listeners apply in tens of milliseconds), else the entry is resolved
 * (rset_resolve: borrowed, nothing copied) and a new version built
 * (addresses resolved, tlsconf_listener_build_cached: contexts come from
 * the agent's context cache by content hash, only new content is built)
 * and, when its address is new, its listening sockets are bound. A
 * listener that fails any step is not applied and keeps its previous
 * version, if it has one; the others move on (DESIGN.md, invariant 2).
 * Listeners missing from the set are DROPped.
 *
 * Phase 2: each worker gets one message with the changes, every CLOSE
 * before any OPEN, and swaps pointers on its own loop: a changed listener
 * on the same address keeps its sockets and new connections get the new
 * version; connections in flight keep theirs (they hold a reference).
 *
 * Whoever delivered the configuration (source.h: a file, the control-plane
 * stream) gets the per-listener results, to log or to send as
 * ack / nack. */
#ifndef TLSPLANE_AGENT_APPLY_H
#define TLSPLANE_AGENT_APPLY_H

#include <stddef.h>
#include <stdint.h>

#include "agent.h"
#include "error.h"
#include "rset.h"
#include "tlsplane/v1/snapshot.pb-c.h"

enum apply_action {
  APPLY_KEEP,   /* unchanged: nothing to do */
  APPLY_NEW,    /* now served */
  APPLY_CHANGE, /* new version served (same address: same sockets) */
  APPLY_DROP,   /* gone from the set: no longer accepting; connections drain */
  APPLY_FAILED, /* not applied: keeps its previous version, if any */
};

/* One per listener, so small: 50,000 of them are made for every apply. */
struct apply_result {
  const char *listener; /* its name (the registry's or the set's: valid while the report is) */
  enum apply_action action;
  int ok;             /* 0 only for APPLY_FAILED */
  const char *reason; /* APPLY_FAILED: why, naming the field; else "" */
  char *reason_owned; /* reason when malloc'd (apply_report_free frees it) */
};

struct apply_report {
  int64_t revision;
  size_t n_listeners; /* results[0 .. n_listeners): the set's listeners, in name order */
  size_t n;           /* every listener of the set, then the dropped ones */
  struct apply_result *results;
  size_t n_failed;
  double apply_ms; /* how long agent_apply took (both phases, on the main thread) */
};

const char *apply_action_name(enum apply_action a);

/* Applies set at revision (only read: nothing of it is kept but shared
 * resources, see a->served). Fills report (free with apply_report_free);
 * returns 0 when every listener was applied (ack), -1 when some was not
 * (nack). Then a->served is what the agent serves: for each listener
 * served, the entry of the version it serves (the set's when applied, the
 * previous one when not) with the resources it uses, shared with set. */
int agent_apply(struct agent *a, const struct rset *set, int64_t revision,
                struct apply_report *report);

/* A protocol 1 snapshot (a file, an older server) as a set
 * (rset_from_snapshot), refused whole when a listener has no name or a
 * name twice (err names it: "listeners[2].listener.name: ..."). Caller
 * frees *out with rset_free. */
int agent_set_from_snapshot(const Tlsplane__V1__Snapshot *snap, struct rset **out,
                            struct tp_err *err);

/* A configuration that could not even be read (err says why): nothing changes,
 * the failure is logged and counted. */
void agent_apply_error(struct agent *a, const struct tp_err *err);

void apply_report_free(struct apply_report *r);

/* Releases every listener of the registry and a->served (at exit, after
 * the workers have stopped). */
void agent_listeners_free(struct agent *a);

#endif
