/* A cache of built TLS contexts, keyed by content hash: parse once,
 * instantiate many (HAProxy's ckch_store / ckch_inst). Every listener and
 * every version of a listener that names a context with the same content
 * (the same ContextMaterial resource hash, rset.h) shares one built
 * context, and so one SSL_CTX: 10,000 listeners over 10 contexts build 10
 * SSL_CTXs, and a change of one certificate rebuilds only the contexts
 * that use it (their hash changes; the others are found again).
 *
 * The cache does not know what it holds: the caller builds a value (for
 * tlsconf_listener.c, an SSL_CTX with what its connections copy from it)
 * and the cache keeps it under its hash for as long as a reference to its
 * entry is held, then frees it with the free function given to
 * tlsconf_ctxcache_new. An SSL that switched to an SSL_CTX holds its own
 * OpenSSL reference, so a connection in flight never loses its context
 * (invariant 3), whatever happens to the entry.
 *
 * Thread safety: every function may be called from any thread (a mutex
 * guards the table; builds run outside it, so builds of different
 * contexts proceed in parallel). The cache is reference counted, and every
 * entry holds a reference to it: it is freed when its owner and its last
 * entry are gone, whichever comes last. */
#ifndef TLSPLANE_COMMON_TLSCONF_CTXCACHE_H
#define TLSPLANE_COMMON_TLSCONF_CTXCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define TLSCONF_CTXCACHE_HASH_LEN 32

struct tlsconf_ctxcache;
struct tlsconf_ctxcache_entry;

/* Frees a value the cache holds (when its last entry reference goes). */
typedef void (*tlsconf_ctxcache_free_cb)(void *value);
/* Builds the value for an entry: 0 with *value, or -1 with err. */
typedef int (*tlsconf_ctxcache_build_cb)(void *data, void **value, struct tp_err *err);

/* An empty cache with one reference (the caller's: release with
 * tlsconf_ctxcache_unref). 0 or -ENOMEM. */
int tlsconf_ctxcache_new(tlsconf_ctxcache_free_cb free_value, struct tlsconf_ctxcache **out);
void tlsconf_ctxcache_ref(struct tlsconf_ctxcache *c);
/* Drops a reference; the cache is freed when the last one goes (entries
 * hold one each). NULL is a no-op. */
void tlsconf_ctxcache_unref(struct tlsconf_ctxcache *c);

/* The entry under hash, with a reference for the caller (release with
 * tlsconf_ctxcache_entry_release). When the cache holds none, build(data)
 * makes the value, outside the cache's lock, and it is kept under hash;
 * *built says which happened (1: built now, 0: found). Two threads
 * building the same hash at once both build; the first kept wins and the
 * other's value is freed. On failure (build's or -ENOMEM) nothing is kept,
 * err says why, and *out is NULL. */
int tlsconf_ctxcache_get(struct tlsconf_ctxcache *c, const uint8_t hash[TLSCONF_CTXCACHE_HASH_LEN],
                         tlsconf_ctxcache_build_cb build, void *data,
                         struct tlsconf_ctxcache_entry **out, int *built, struct tp_err *err);
/* The value of e: valid while a reference to e is held. */
void *tlsconf_ctxcache_entry_value(const struct tlsconf_ctxcache_entry *e);
/* Drops the caller's reference to e; the last one removes e from the
 * cache and frees its value. NULL is a no-op. Any thread. */
void tlsconf_ctxcache_entry_release(struct tlsconf_ctxcache_entry *e);

/* Values built since the cache was made (tlsplane_ssl_ctx_builds_total),
 * and entries held now (tlsplane_ssl_ctxs). */
uint64_t tlsconf_ctxcache_builds(struct tlsconf_ctxcache *c);
size_t tlsconf_ctxcache_live(struct tlsconf_ctxcache *c);

#endif
