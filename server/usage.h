/* When each credential (a token, a client certificate) last authenticated
 * a call. Authentication notes the use here, in memory, and never waits
 * for the store; usage_flush writes the uses noted since the last flush
 * in one write transaction, off the call path (the job thread, every
 * tick, and once more at shutdown). A read of a credential shows the
 * later of the store's record and what is noted here (usage_last), so a
 * use is visible at once.
 *
 * Bounded: an entry exists only for a credential that authenticated
 * since the last flush (the flush drops what it wrote), and only existing
 * credentials authenticate.
 *
 * Thread safety: every function may be called from any thread;
 * usage_flush runs one at a time (a second caller waits). */
#ifndef TLSPLANE_SERVER_USAGE_H
#define TLSPLANE_SERVER_USAGE_H

#include <stdint.h>

#include "error.h"
#include "store.h"

struct usage;

/* Caller frees with usage_free. NULL when out of memory. */
struct usage *usage_new(void);

/* Frees what is noted without writing it (flush first). NULL is a no-op. */
void usage_free(struct usage *u);

/* Notes a use of (kind, name) at time_us (µs since the epoch); the
 * latest time wins. Out of memory: the use is not noted. */
void usage_note(struct usage *u, const char *kind, const char *name, int64_t time_us);

/* The latest use of (kind, name) noted and not yet flushed (or being
 * flushed); 0 when none. */
int64_t usage_last(struct usage *u, const char *kind, const char *name);

/* Writes every use noted so far to s (store_usage_set in one write
 * transaction: no revision, no audit row). A credential deleted meanwhile
 * is skipped. On failure the uses stay noted for the next flush. Returns
 * how many were written, or -1 with err set. */
int usage_flush(struct usage *u, struct store *s, struct tp_err *err);

#endif
