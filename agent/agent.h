/* The agent's process context (STYLE.md: the one documented process
 * context). Owned by the main thread: apply.c changes it, metrics.c reads
 * it, main.c makes and frees it. Workers never see it; they get what they
 * need through their mailboxes. */
#ifndef TLSPLANE_AGENT_AGENT_H
#define TLSPLANE_AGENT_AGENT_H

#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "budget.h"
#include "listener.h"
#include "worker.h"

/* tlsplane_config_apply_total{result}. */
enum agent_apply_result {
  AGENT_APPLY_ACK,   /* every listener of the snapshot applied */
  AGENT_APPLY_NACK,  /* some listener not applied (it keeps its previous version) */
  AGENT_APPLY_ERROR, /* the snapshot itself could not be read: nothing changed */
  AGENT_APPLY_RESULT_COUNT
};

struct agent {
  uv_loop_t *loop; /* the main loop */
  struct worker **workers;
  int n_workers;
  struct budget budget; /* descriptors; the workers hold a pointer to it */
  /* Every listener of the snapshot applied last (served or not), and
   * dropped ones whose connections still drain. */
  struct listener *listeners;
  /* Every built TLS context, by content hash, shared by every listener
   * and version (tlsconf_ctxcache.h); made by main.c. */
  struct tlsconf_ctxcache *ctxcache;
  /* What the agent serves (apply.c keeps it; NULL until the first apply):
   * per listener served, the entry of its version, and the resources
   * those use. The cache file and the hello of the control-plane stream
   * are made from it. */
  struct rset *served;
  int64_t revision; /* of the last snapshot applied, in whole or in part */
  long long apply_total[AGENT_APPLY_RESULT_COUNT];
  /* Control-plane mode only (the stream's thread writes them). */
  int control_plane;           /* snapshots come from tlsplane-server */
  atomic_int cp_connected;     /* 1 while the stream is up */
  atomic_llong cp_connects;    /* streams established since the start */
  atomic_llong cp_failovers;   /* moves to the next server of the list */
  atomic_llong cp_cert_expiry; /* the agent certificate's notAfter, seconds since the epoch */
};

const char *agent_apply_result_name(enum agent_apply_result r);

#endif
