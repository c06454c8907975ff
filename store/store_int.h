/* The seam between the storage interface (store.h, store.c) and a backend
 * (sqlite.c now, PostgreSQL later), in the manner of curl's vtls_int.h: a
 * small table of operations per backend, and the state every backend
 * shares at the start of its own structs.
 *
 * store.c checks arguments and transaction state before it calls a backend
 * operation, so a backend may assume: txn is live and not failed, write
 * operations get a write transaction, kind and name are non-empty, label
 * keys are unique and non-empty, every reference has kind, name and field
 * and is not to the row itself, the audit strings (actor, method, action)
 * are set, and an empty expect_etag arrives as NULL. Label values may be
 * NULL (meaning ""). A backend operation that fails may leave its writes
 * behind: store.c then aborts the transaction.
 * Messages the API shows come from the store__err_* helpers so that every
 * backend words them alike. */
#ifndef TLSPLANE_STORE_INT_H
#define TLSPLANE_STORE_INT_H

#include <stdatomic.h>
#include <stdint.h>

#include "store.h"

#define STORE_MAGIC 0x53544f52u     /* "STOR" */
#define STORE_TXN_MAGIC 0x54584e53u /* "TXNS" */

struct store_ops {
  const char *name; /* "sqlite" */
  int latest_version;

  /* Allocates the backend's store (struct store first in it), migrating to
   * `version` (1..latest_version, checked by store.c). */
  int (*open)(const char *path, int version, struct store **out, struct tp_err *err);
  /* Frees everything; no transaction is open. */
  void (*close)(struct store *s);

  /* Allocates the backend's txn (struct store_txn first in it) and fills
   * txn->revision. A write txn holds the store's write lock on return. */
  int (*begin)(struct store *s, int write, struct store_txn **out, struct tp_err *err);
  /* Commits (bumping the revision to txn->revision if txn->wrote), frees
   * txn and releases what begin took, also on failure (then rolled back). */
  int (*commit)(struct store_txn *txn, struct tp_err *err);
  /* Rolls back, frees txn and releases what begin took. */
  void (*rollback)(struct store_txn *txn);

  int (*get)(struct store_txn *txn, const char *kind, const char *name, int with_secret,
             struct store_row *out, struct tp_err *err);
  int (*put)(struct store_txn *txn, const struct store_write *w, struct store_row *out,
             struct tp_err *err);
  int (*del)(struct store_txn *txn, const char *kind, const char *name, const char *expect_etag,
             const char *actor, const char *method, struct tp_err *err);
  int (*list)(struct store_txn *txn, const struct store_query *q, struct store_row **rows,
              size_t *n, struct tp_err *err);
  int (*referrers)(struct store_txn *txn, const char *kind, const char *name,
                   struct store_row **rows, size_t *n, struct tp_err *err);
  int (*audit_list)(struct store_txn *txn, const struct store_audit_query *q,
                    struct store_audit **out, size_t *n, struct tp_err *err);
};

/* Shared head of every backend's store. */
struct store {
  uint32_t magic; /* STORE_MAGIC */
  const struct store_ops *ops;
  int schema_version;       /* after migration; fixed while open */
  _Atomic int64_t revision; /* last committed; written by the commit that made it */
  /* Called after every commit that made a revision; set before use. */
  void (*commit_hook)(int64_t revision, void *data);
  void *commit_hook_data;
};

/* Shared head of every backend's transaction. Belongs to one thread. */
struct store_txn {
  uint32_t magic; /* STORE_TXN_MAGIC */
  struct store *store;
  int write;
  int wrote;        /* a put or delete succeeded: commit bumps the revision */
  int64_t revision; /* write: the revision commit will have (committed + 1);
                       read: the revision of the snapshot it reads */
  /* The first failed write (or backend failure) aborts the transaction:
   * later calls and store_commit return this code and message, and
   * store_commit rolls everything back. */
  int failed;
  struct tp_err failure;
};

extern const struct store_ops store__sqlite_ops;

/* Microseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t store__now_us(void);

/* The etag of a row last written at `revision`, into buf. */
void store__etag_format(char *buf, size_t len, int64_t revision);

/* A malloc'd copy of len bytes (len may be 0); NULL on allocation failure. */
uint8_t *store__memdup(const void *src, size_t len);

/* Grows *rows (capacity *cap) to hold at least n + 1 rows; 0 or -ENOMEM. */
int store__rows_reserve(struct store_row **rows, size_t n, size_t *cap);

/* The API's wording of each refusal; each returns its negative errno. */
int store__err_exists(struct tp_err *err, const char *name);
int store__err_not_found(struct tp_err *err, const char *name);
int store__err_etag(struct tp_err *err, const char *name, const char *etag);
int store__err_referenced(struct tp_err *err, const char *name, const char *referrer,
                          const char *field);
int store__err_ref_missing(struct tp_err *err, const char *field, const char *name);
int store__err_ref_self(struct tp_err *err, const char *field, const char *name);
int store__err_nomem(struct tp_err *err, const char *what);

#endif
