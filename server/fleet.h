/* What every agent should hold, and what to send each one (protocol 2 of
 * the agent stream, snapshot.proto).
 *
 * A world is one revision's configuration for the whole fleet: every
 * listener as a ListenerEntry and every resource they use once, by content
 * hash (common/rset.h), each context resolved and each key unsealed once
 * per revision however many listeners and agents use it (and reused from
 * the previous world while no write touched it), and the labels of every
 * agent's record, which choose its listeners. A view is what one
 * agent holds: the hashes of its resources and of its listener entries, as
 * its hello reported them and as every delta sent since has changed them.
 * fleet_delta compares the two and gives the SnapshotDelta that brings the
 * agent from its view to the world's listeners for its labels.
 *
 * A listener the server cannot build (an unreadable row, a secret that does
 * not unseal, a reference gone) never removes anything from an agent
 * (invariant 8): the world keeps the entry of the previous world for it,
 * or, when there is none, every agent keeps whatever it holds under that
 * name; the failure is recorded in the world with its reason and reported
 * for each agent it concerns.
 *
 * Worlds are immutable once built and reference counted, so that pushes
 * read them without a lock. Views belong to one agent and one thread at a
 * time. */
#ifndef TLSPLANE_SERVER_FLEET_H
#define TLSPLANE_SERVER_FLEET_H

#include <stdint.h>

#include "api.h"
#include "rset.h"
#include "snapshot.h"
#include "tlsplane/v1/agent.pb-c.h"

struct fleet_world;
struct fleet_view;

/* Agent stream protocols (AgentHello.protocol) that change what may be
 * sent: 3 knows upstream_tls and unix: upstreams. A listener that needs a
 * newer protocol than an agent speaks is not sent to it: the agent keeps
 * what it holds of it, and the listener is among its failures. */
#define FLEET_PROTOCOL_UPSTREAM_TLS 3
/* 4 knows ListenerEntry.acme_challenges. An older agent gets the listener
 * without its challenges (that is no failure of the listener). */
#define FLEET_PROTOCOL_ACME 4
#define FLEET_PROTOCOL_LATEST FLEET_PROTOCOL_ACME

/* A listener the world could not build, and why. */
struct fleet_failure {
  const char *listener; /* "listeners/web" */
  const char *reason;   /* the error, naming the resource and field */
};

/* Builds the world at the store's current revision, reusing prev (may be
 * NULL) for listeners that fail. Fails as a whole only when the store
 * cannot be read at all (err set); a listener that cannot be built is a
 * failure inside the world (fleet_world_failures). The result holds one
 * reference: release with fleet_world_unref. */
int fleet_world_build(struct store *store, const struct fleet_world *prev, struct fleet_world **out,
                      struct tp_err *err);
void fleet_world_ref(struct fleet_world *w);
/* NULL is a no-op; the last reference frees it (wiping key material). */
void fleet_world_unref(struct fleet_world *w);

int64_t fleet_world_revision(const struct fleet_world *w);
/* The world's failures, in listener name order; valid while w lives. */
const struct fleet_failure *fleet_world_failures(const struct fleet_world *w, size_t *n);
/* The labels of agent `name` ("agents/edge-1") as its record had them at
 * w's revision (sorted by key; valid while w lives): what chooses its
 * listeners. -ENOENT: no such agent (deleted); -EBADMSG: its record could
 * not be read (it is sent nothing new). */
int fleet_world_agent(const struct fleet_world *w, const char *name,
                      const struct snapshot_label **labels, size_t *n);

/* ACME tls-alpn-01 challenges (acme_order.h): every challenge row is in
 * the world, and each listener that serves its server_name carries it
 * (ListenerEntry.acme_challenges, for agents of FLEET_PROTOCOL_ACME or
 * later). A listener serves name N when one of its SNI routes matches N
 * (exactly or as a "*." wildcard of one label, case-insensitively), when
 * a context it uses holds `certificate` (the certificate being ordered
 * or renewed), or when a certificate of its default context names N
 * among its dns_names (the same matching). Returns how many listeners
 * that some agent's labels select serve N. */
int fleet_world_serves(const struct fleet_world *w, const char *name, const char *certificate);

/* Counts, for logs and tests: listeners and distinct resources. */
size_t fleet_world_listeners(const struct fleet_world *w);
size_t fleet_world_resources(const struct fleet_world *w);

/* An empty view (an agent that holds nothing) of an agent of
 * FLEET_PROTOCOL_LATEST. Free with fleet_view_free. */
int fleet_view_new(struct fleet_view **out);
/* The agent's stream protocol, from its hello. */
void fleet_view_set_protocol(struct fleet_view *v, int protocol);
void fleet_view_free(struct fleet_view *v);
/* Replaces what v records with what a hello reports (protocol 2):
 * hello->resources and hello->listeners. INVALID_ARGUMENT naming the field
 * for a malformed hash or name; v unchanged then. */
int fleet_view_from_hello(struct fleet_view *v, const Tlsplane__V1__AgentHello *hello,
                          struct tp_err *err);
/* What v holds: listener entries and resources. */
size_t fleet_view_listeners(const struct fleet_view *v);
size_t fleet_view_resources(const struct fleet_view *v);
/* Bytes of memory v holds, for the figure per connected agent. */
size_t fleet_view_bytes(const struct fleet_view *v);

/* What one delta carries. */
struct fleet_counts {
  size_t resources, listeners, removed_resources, removed_listeners;
};

/* What to send an agent with these labels that holds v, to bring it to w.
 * *out is a packed ServerMessage carrying a SnapshotDelta at w's revision
 * (the caller frees it), or NULL (*len 0) when nothing changed for it
 * (the first delta after fleet_view_new or fleet_view_from_hello is made
 * even when empty: the agent learns its revision). v is
 * updated to what the agent holds once it applied the delta. The failures
 * among the agent's listeners are given in *failures (an array of n_failures
 * pointing into w, the caller frees the array; NULL when none); counts
 * (may be NULL) what *out carries. */
int fleet_delta(const struct fleet_world *w, struct fleet_view *v,
                const struct snapshot_label *labels, size_t n_labels, uint8_t **out, size_t *len,
                struct fleet_counts *counts, const struct fleet_failure ***failures,
                size_t *n_failures, struct tp_err *err);

/* The protocol 1 form for an older agent: a packed ServerMessage carrying
 * the whole Snapshot of its listeners at w's revision, and the hash of
 * that snapshot without its revision (unchanged content is not sent
 * again). Failed listeners keep their previous world's entry; while one
 * with none could be the agent's (its selector matches, or is unknown),
 * *out is NULL: a whole snapshot without it would remove it. */
int fleet_snapshot(const struct fleet_world *w, const struct snapshot_label *labels,
                   size_t n_labels, uint8_t **out, size_t *len, uint8_t hash[RSET_HASH_LEN],
                   const struct fleet_failure ***failures, size_t *n_failures, struct tp_err *err);

#endif
