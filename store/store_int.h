/* The seam between the storage interface (store.h, store.c) and a backend
 * (sqlite.c, postgres.c), in the manner of curl's vtls_int.h: a
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

/* Sealed secrets (seal.c): version | key id | nonce | ciphertext | tag. */
#define STORE_SEAL_VERSION 1
#define STORE_SEAL_NONCE_LEN 12
#define STORE_SEAL_TAG_LEN 16
#define STORE_SEAL_HEADER_LEN (1 + STORE_KEY_ID_LEN) /* version and key id */
#define STORE_SEAL_OVERHEAD (STORE_SEAL_HEADER_LEN + STORE_SEAL_NONCE_LEN + STORE_SEAL_TAG_LEN)
#define STORE_SEALED_SINCE_VERSION 3 /* the first schema version that seals secrets */
#define STORE_KEYS_MAX 4

/* Row authentication (seal.c): version | key id | HMAC-SHA256 tag. */
#define STORE_MAC_VERSION 1
#define STORE_MAC_KEY_LEN 32
#define STORE_MAC_TAG_LEN 32
#define STORE_MAC_LEN (1 + STORE_KEY_ID_LEN + STORE_MAC_TAG_LEN)
#define STORE_MACS_SINCE_VERSION 4 /* the first schema version that authenticates rows */

/* The master keys of an open store: key[0] seals and authenticates; each
 * unseals what it sealed and checks what it authenticated, found by id.
 * mac_key[i] is derived from key[i] (HKDF-SHA256): the key of row MACs. */
struct store_keyring {
  size_t n;
  uint8_t key[STORE_KEYS_MAX][STORE_MASTER_KEY_LEN];
  uint8_t id[STORE_KEYS_MAX][STORE_KEY_ID_LEN];
  uint8_t mac_key[STORE_KEYS_MAX][STORE_MAC_KEY_LEN];
};

/* Adds key (a key already there is not added twice). 0, -ENOSPC, or -EIO
 * when its MAC key cannot be derived. */
int store__keyring_add(struct store_keyring *ring, const uint8_t key[STORE_MASTER_KEY_LEN]);
/* Wipes every key. */
void store__keyring_clear(struct store_keyring *ring);

/* Seals plain[0..len) for the row (kind, name) under ring->key[0]. *out is
 * malloc'd (caller frees). 0, or -EIO / -ENOMEM with err set. */
int store__seal(const struct store_keyring *ring, const char *kind, const char *name,
                const uint8_t *plain, size_t len, uint8_t **out, size_t *out_len,
                struct tp_err *err);
/* Opens a record sealed for the row (kind, name) with whichever key of
 * ring sealed it. *out is malloc'd (caller wipes and frees). 0, or
 * -EBADMSG (DATA_LOSS: unknown key, altered, another row's record). */
int store__unseal(const struct store_keyring *ring, const char *kind, const char *name,
                  const uint8_t *sealed, size_t len, uint8_t **out, size_t *out_len,
                  struct tp_err *err);
void store__key_id_hex(const uint8_t id[STORE_KEY_ID_LEN], char hex[2 * STORE_KEY_ID_LEN + 1]);

/* The MAC of the row (kind, name) holding data[0..len), under
 * ring->mac_key[0]: what lets the store tell a row it wrote from one
 * edited in the file. 0, or -EIO with err set. */
int store__mac(const struct store_keyring *ring, const char *kind, const char *name,
               const uint8_t *data, size_t len, uint8_t out[STORE_MAC_LEN], struct tp_err *err);
/* Checks mac (as stored; NULL: none) against the row with whichever key of
 * ring made it. 0, or -EBADMSG (DATA_LOSS: the row failed its integrity
 * check, the message names the row). */
int store__mac_check(const struct store_keyring *ring, const char *kind, const char *name,
                     const uint8_t *data, size_t len, const uint8_t *mac, size_t mac_len,
                     struct tp_err *err);

/* Turns one row's stored secret into its replacement (*out malloc'd, freed
 * by the caller): sealing plaintext, or re-sealing under another key.
 * Returns 0, or a negative code with err set (the rewrite stops). */
typedef int (*store__rewrite_fn)(const char *kind, const char *name, const uint8_t *in, size_t len,
                                 uint8_t **out, size_t *out_len, void *data, struct tp_err *err);

/* Gives one row (its data and its MAC as stored, NULL if none) a new MAC
 * in out: authenticating a row of an older schema, or re-authenticating
 * under another key after checking the old MAC. 0, or a negative code
 * with err set (the rewrite stops). */
typedef int (*store__mac_fn)(const char *kind, const char *name, const uint8_t *row_data,
                             size_t len, const uint8_t *mac, size_t mac_len,
                             uint8_t out[STORE_MAC_LEN], void *data, struct tp_err *err);

struct store_ops {
  const char *name; /* "sqlite" */
  int latest_version;

  /* Allocates the backend's store (struct store first in it), copies keys
   * into it, and migrates to `version` (1..latest_version, checked by
   * store.c); the migration to STORE_SEALED_SINCE_VERSION seals the
   * secrets already stored with keys->key[0] (none given: -ENOKEY).
   * Before any migration: a schema below min_version (0..version, checked
   * by store.c) is refused with -EPROTO, tables without schema history
   * with -ENODATA, each adding nothing to the file. */
  int (*open)(const char *path, int version, int min_version, const struct store_keyring *keys,
              struct store **out, struct tp_err *err);
  /* Frees everything; no transaction is open. */
  void (*close)(struct store *s);
  /* store_backup: path to a new file dest, without opening a store
   * (another process may have it open). */
  int (*backup)(const char *path, const char *dest, struct store_backup_info *info,
                struct tp_err *err);

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
  /* The primitives store.c's put and delete are made of (the checks, the
   * etag, the order of writes and the audit rows live there, once). Each
   * runs inside txn, a write transaction. */
  /* 1 and *etag (malloc'd) when the row exists; 0 and *etag NULL when not. */
  int (*row_head)(struct store_txn *txn, const char *kind, const char *name, char **etag,
                  struct tp_err *err);
  /* 1 when the row exists, 0 when not. */
  int (*row_exists)(struct store_txn *txn, const char *kind, const char *name, struct tp_err *err);
  /* Inserts (w->create) or updates the row itself, with etag and txn's
   * revision, its secret when w->set_secret (an insert without one stores
   * none; an update without one keeps it) and its due time;
   * *create_time receives its create_time_us (kept on update). */
  int (*row_write)(struct store_txn *txn, const struct store_write *w, const char *etag,
                   int64_t now_us, int64_t *create_time, struct tp_err *err);
  /* Replaces the row's labels, or (outgoing) references, by w's; replace
   * 0: the row has none yet (it was just inserted). */
  int (*labels_write)(struct store_txn *txn, const struct store_write *w, int replace,
                      struct tp_err *err);
  int (*refs_write)(struct store_txn *txn, const struct store_write *w, int replace,
                    struct tp_err *err);
  /* The first row (by name, then field) that refers to (kind, name): 1
   * with *from and *field malloc'd, 0 when none does. */
  int (*referrer_first)(struct store_txn *txn, const char *kind, const char *name, char **from,
                        char **field, struct tp_err *err);
  /* Removes the row; its labels, outgoing references, usage and MAC go
   * with it. */
  int (*row_delete)(struct store_txn *txn, const char *kind, const char *name, struct tp_err *err);
  /* One audit row at txn's revision and what it changed (changes may be
   * NULL); nothing before the schema has audit rows. */
  int (*audit_insert)(struct store_txn *txn, const char *actor, const char *method,
                      const char *resource, const char *action,
                      const struct store_audit_change *changes, size_t n_changes, int64_t now_us,
                      struct tp_err *err);
  int (*list)(struct store_txn *txn, const struct store_query *q, struct store_row **rows,
              size_t *n, struct tp_err *err);
  int (*referrers)(struct store_txn *txn, const char *kind, const char *name,
                   struct store_row **rows, size_t *n, struct tp_err *err);
  int (*audit_list)(struct store_txn *txn, const struct store_audit_query *q,
                    struct store_audit **out, size_t *n, struct tp_err *err);

  /* Sealed secrets (the schema seals them: STORE_SEALED_SINCE_VERSION). */
  /* Replaces the secret of every row that has one by fn's result, leaving
   * the rest of the row alone; *n receives how many. */
  int (*secrets_rewrite)(struct store_txn *txn, store__rewrite_fn fn, void *data, size_t *n,
                         struct tp_err *err);
  /* The distinct key ids sealing the stored secrets (malloc'd array). */
  int (*sealed_key_ids)(struct store_txn *txn, uint8_t (**ids)[STORE_KEY_ID_LEN], size_t *n,
                        struct tp_err *err);
  int (*usage_set)(struct store_txn *txn, const char *kind, const char *name, int64_t time_us,
                   struct tp_err *err);
  int (*usage_get)(struct store_txn *txn, const char *kind, const char *name, int64_t *time_us,
                   struct tp_err *err);

  /* Row authentication (the schema has it: STORE_MACS_SINCE_VERSION). get
   * and list return each row's MAC in row->mac (NULL: none stored). */
  /* Stores the MAC of the row (kind, name), which exists. */
  int (*mac_set)(struct store_txn *txn, const char *kind, const char *name,
                 const uint8_t mac[STORE_MAC_LEN], struct tp_err *err);
  /* Replaces the MAC of every row by fn's result; *n receives how many. */
  int (*macs_rewrite)(struct store_txn *txn, store__mac_fn fn, void *data, size_t *n,
                      struct tp_err *err);
  /* Pending ACME challenges (the schema has them:
   * STORE_CHALLENGES_SINCE_VERSION), secrets sealed. Replaces the
   * challenges of (Certificate, certificate), which exists, by c[0..n). */
  int (*challenges_set)(struct store_txn *txn, const char *certificate,
                        const struct store_challenge *c, size_t n, struct tp_err *err);
  /* Every challenge, in certificate and index order (malloc'd array). */
  int (*challenges_list)(struct store_txn *txn, struct store_challenge **out, size_t *n,
                         struct tp_err *err);
  /* store_watch_start / store_watch_stop (store->watch holds the
   * callbacks); NULL: the backend has no other writers to watch. */
  int (*watch_start)(struct store *s, struct tp_err *err);
  void (*watch_stop)(struct store *s);
  /* store_master_key_rotate runs between these: rotation_lock keeps
   * every other process out of the store's database (-EBUSY, err naming
   * them, while another has it open; one that opens it meanwhile is
   * refused) until rotation_unlock, called after the commit or rollback.
   * PostgreSQL: the server lock (postgres.c) taken exclusively. NULL: no
   * other process can use it (SQLite: the data directory's lock keeps
   * them out). */
  int (*rotation_lock)(struct store *s, struct tp_err *err);
  void (*rotation_unlock)(struct store *s);
  /* store_job_lock; NULL: always held. */
  int (*job_lock)(struct store *s, struct tp_err *err);
};

/* Shared head of every backend's store. */
struct store {
  uint32_t magic; /* STORE_MAGIC */
  const struct store_ops *ops;
  int schema_version;       /* after migration; fixed while open */
  int connections;          /* transactions open at once at most; set by open */
  _Atomic int64_t revision; /* last committed; written by the commit that made it */
  /* Called after every commit that made a revision; set before use. */
  void (*commit_hook)(int64_t revision, void *data);
  void *commit_hook_data;
  /* Called with the audit rows of each such commit; set before use. */
  store_audit_hook_fn audit_hook;
  void *audit_hook_data;
  /* store_watch_start's callbacks; watching: between start and stop. */
  struct store_watch watch;
  int watching;
  /* Seals and unseals the secrets (schema_version >= 3); fixed while
   * transactions run (store_master_key_rotate runs alone). */
  struct store_keyring keys;
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
  /* A tracked read transaction (store_begin_tracked): what it has read.
   * NULL otherwise, and once store_reads_take took it. */
  struct store_reads *reads;
  /* For the audit hook (store->audit_hook set): copies of the first
   * STORE_AUDIT_HOOK_ROWS audit rows written (seq, revision and time
   * unset), and how many more (or could not be copied). */
  struct store_audit *audit;
  size_t n_audit;
  size_t audit_more;
};

extern const struct store_ops store__sqlite_ops;
extern const struct store_ops store__postgres_ops;

/* The backend of a database path: PostgreSQL for a postgres:// or
 * postgresql:// URI, SQLite for anything else (a file). */
const struct store_ops *store__ops_for(const char *path);

/* path as messages may show it: a URI without the password of its user
 * info (postgres://user:secret@host/db is postgres://user@host/db). */
#define STORE_PATH_DISPLAY_MAX 1024
void store__path_display(const char *path, char *buf, size_t len);

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
