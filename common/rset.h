/* A resource set: what an agent holds in protocol 2 of the agent stream
 * (snapshot.proto), every resource once, named by the SHA-256 of its
 * content, and listeners that refer to resources by hash.
 *
 * The server builds one set per revision (every listener, each resource
 * resolved and unsealed once) and sends each agent the difference between
 * what it holds and what it should; the agent keeps one set, applies each
 * SnapshotDelta to it, and turns a listener back into the ResolvedListener
 * its TLS code builds from (rset_resolve). The protocol 1 form (Snapshot:
 * resources inline) goes both ways too: rset_intern (a snapshot file, an
 * older server) and rset_resolve per listener (an older agent).
 *
 * Resources and listener entries are immutable once held and reference
 * counted: two sets may share one (rset_resource_share,
 * rset_listener_share), so an agent can keep the resources of
 * the version it serves beside those of a newer one at no copy. Key
 * material (a certificate's private key, ticket keys, an ACME challenge's
 * key) is wiped when the
 * last reference goes.
 *
 * Thread safety: a set belongs to one thread at a time; sharing resources
 * between sets owned by different threads is safe (atomic counts). */
#ifndef TLSPLANE_COMMON_RSET_H
#define TLSPLANE_COMMON_RSET_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "tlsplane/v1/snapshot.pb-c.h"

#define RSET_HASH_LEN 32

struct rset;

/* An empty set. Caller frees with rset_free. 0 or -ENOMEM. */
int rset_new(struct rset **out);
/* Frees s and drops its references (wiping key material of the last). NULL
 * is a no-op. */
void rset_free(struct rset *s);

/* Computes the content hash of r (of e): SHA-256 of the message
 * serialized with its hash field empty, into hash. 0 or -ENOMEM. */
int rset_resource_hash(const Tlsplane__V1__Resource *r, uint8_t hash[RSET_HASH_LEN]);
int rset_listener_hash(const Tlsplane__V1__ListenerEntry *e, uint8_t hash[RSET_HASH_LEN]);

/* --- resources --- */

/* Adds r, taking ownership (also on failure: r is freed). r must have
 * content; its hash field is checked against its content when verify is 1
 * (what came over the wire), set from it when r->hash is empty. A resource
 * with that hash already held is kept and r freed. INVALID_ARGUMENT for a
 * wrong hash or no content. */
int rset_resource_put(struct rset *s, Tlsplane__V1__Resource *r, int verify, struct tp_err *err);
/* The resource held under hash, or NULL. Valid while s holds it. */
const Tlsplane__V1__Resource *rset_resource_get(const struct rset *s, const uint8_t *hash);
/* Makes dst hold src's resource `hash` as well (shared, not copied).
 * 0, -ENOENT (src does not hold it), -ENOMEM. */
int rset_resource_share(struct rset *dst, const struct rset *src, const uint8_t *hash);
/* Drops s's reference to `hash`. 0 or -ENOENT. */
int rset_resource_remove(struct rset *s, const uint8_t *hash);
size_t rset_resource_count(const struct rset *s);
/* Iteration in no particular order: start *iter at 0; NULL at the end.
 * The set must not change during an iteration. */
const Tlsplane__V1__Resource *rset_resource_next(const struct rset *s, size_t *iter);

/* --- listeners --- */

/* Adds e, or replaces the listener of the same name (e->listener->name),
 * taking ownership (also on failure). e->hash is set from its content when
 * empty, checked when verify is 1. INVALID_ARGUMENT: no listener or name,
 * a wrong hash. Does not check that the resources it names are held (see
 * rset_listener_uses). */
int rset_listener_put(struct rset *s, Tlsplane__V1__ListenerEntry *e, int verify,
                      struct tp_err *err);
const Tlsplane__V1__ListenerEntry *rset_listener_get(const struct rset *s, const char *name);
/* Makes dst hold src's entry for listener `name` as well (shared, not
 * copied; replacing one of that name). Its resources are not shared with
 * it (rset_resource_share). 0, -ENOENT, -ENOMEM. */
int rset_listener_share(struct rset *dst, const struct rset *src, const char *name);
/* 0 or -ENOENT. */
int rset_listener_remove(struct rset *s, const char *name);
size_t rset_listener_count(const struct rset *s);
/* As rset_resource_next, for listeners. */
const Tlsplane__V1__ListenerEntry *rset_listener_next(const struct rset *s, size_t *iter);

/* Calls cb(hash, data) for every resource e uses: its contexts, each
 * context's certificates, cipher policy, trust bundle and CRLs, its
 * ticket keys and its ACME challenges (a hash used twice is reported
 * twice). Resolved through s:
 * a context s does not hold ends the walk with INVALID_ARGUMENT naming
 * the listener and the context ("listeners/web: tls_contexts[tlsContexts/x]:
 * resource 1f2e... is not held"); a missing leaf resource is reported to
 * cb all the same (cb may look it up). cb returns 0 to go on, nonzero to
 * stop the walk, which then returns that value. */
int rset_listener_uses(const struct rset *s, const Tlsplane__V1__ListenerEntry *e,
                       int (*cb)(const uint8_t *hash, void *data), void *data, struct tp_err *err);

/* --- the protocol 1 form --- */

/* Adds rl's contexts, certificates, policies, bundles, CRLs, ticket keys
 * and ACME challenges (one resource each, in order) as resources
 * (copied) and rl as a listener entry (replacing one of the same name);
 * *out (may be NULL) is the entry, valid while s holds it. */
int rset_intern(struct rset *s, const Tlsplane__V1__ResolvedListener *rl,
                const Tlsplane__V1__ListenerEntry **out, struct tp_err *err);
/* Adds one resolved context (copied) with the resources it names, and
 * gives the hash of its ContextMaterial resource. */
int rset_intern_context(struct rset *s, const Tlsplane__V1__ResolvedTlsContext *rc,
                        uint8_t hash[RSET_HASH_LEN], struct tp_err *err);
/* Adds a ticket-key ring (copied; keys[0] active) and gives its hash. */
int rset_intern_ticket_keys(struct rset *s, Tlsplane__V1__TicketKeyMaterial *const *keys, size_t n,
                            uint8_t hash[RSET_HASH_LEN], struct tp_err *err);
/* A set holding every listener of snap (rset_intern for each). */
int rset_from_snapshot(const Tlsplane__V1__Snapshot *snap, struct rset **out, struct tp_err *err);

/* The listener e of s in the protocol 1 form: what tlsconf_listener_build
 * takes. The messages inside are s's own (borrowed, not copied): valid
 * while s holds them; never free it with protobuf_c_message_free_unpacked,
 * only with rset_resolved_free. INVALID_ARGUMENT (as rset_listener_uses)
 * when a resource it names is not held. */
int rset_resolve(const struct rset *s, const Tlsplane__V1__ListenerEntry *e,
                 Tlsplane__V1__ResolvedListener **out, struct tp_err *err);
void rset_resolved_free(Tlsplane__V1__ResolvedListener *rl);
/* Every listener of s resolved (rset_resolve), in name order, as a
 * Snapshot at revision; free with rset_snapshot_free. */
int rset_snapshot(const struct rset *s, int64_t revision, Tlsplane__V1__Snapshot **out,
                  struct tp_err *err);
void rset_snapshot_free(Tlsplane__V1__Snapshot *snap);

/* --- deltas and state --- */

/* Applies d to s: its resources are added, its listeners added or
 * replaced, then its removed listeners and resources dropped. All or
 * nothing: d is checked first (hashes against content, every listener of
 * the result holds every resource it uses; removing what s does not hold
 * is a no-op),
 * and on failure s is unchanged and err names the entry ("resources[3]:
 * ...", "listeners[0] (listeners/web): ..."). The resources and listeners
 * of d are moved into s (d keeps empty slots); the caller still frees d. */
int rset_delta_apply(struct rset *s, Tlsplane__V1__SnapshotDelta *d, struct tp_err *err);

/* s as an AgentState at revision (the agent's cache file). Borrowed as
 * rset_resolve's result is: free with rset_state_free. */
int rset_state(const struct rset *s, int64_t revision, Tlsplane__V1__AgentState **out);
void rset_state_free(Tlsplane__V1__AgentState *st);
/* A set from a state (st's resources and listeners are moved into it;
 * hashes verified; every listener must hold what it uses). */
int rset_from_state(Tlsplane__V1__AgentState *st, struct rset **out, struct tp_err *err);

/* Hex of the first bytes of hash, for messages: "1f2e3d4c5b6a". buf holds
 * at least 13 bytes. */
const char *rset_hash_short(const uint8_t *hash, char *buf, size_t len);

#endif
