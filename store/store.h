/* The storage interface. Every resource is a row (kind, name) holding its
 * serialized protobuf (secrets stripped), its secret bytes apart, its labels
 * and its references to other resources. Every committed write transaction
 * bumps one global revision and writes one audit row per mutation.
 *
 * Backends sit behind struct store_ops (store_int.h): SQLite for a file
 * path (the default), PostgreSQL for a postgres:// or postgresql:// URI
 * (libpq's connection URI), with the same schema, migrations and
 * semantics; several servers may share one PostgreSQL database. Nothing
 * outside store/ writes SQL.
 *
 * Errors: functions return 0 on success and a negative errno-style code on
 * failure, with err set to the gRPC status and message the API returns:
 *   -ENOENT   NOT_FOUND           the resource does not exist
 *   -EEXIST   ALREADY_EXISTS      create of an existing name
 *   -ESTALE   FAILED_PRECONDITION etag mismatch
 *   -EBUSY    FAILED_PRECONDITION delete of a resource still referenced
 *                                 (the message names the referrer);
 *                                 PostgreSQL: store_open while a master-key
 *                                 rotation runs, store_master_key_rotate
 *                                 while another process has the database
 *                                 open
 *   -EINVAL   INVALID_ARGUMENT    a reference to a missing resource (the
 *                                 message names store_ref.field)
 *   -EIO      INTERNAL            the backend failed
 *   -ENOTSUP  FAILED_PRECONDITION store_open: the database's schema is newer
 *                                 than this build (or the version asked for),
 *                                 or store_opts.min_version is;
 *                                 store_backup of a PostgreSQL database
 *                                 (use pg_dump)
 *   -EPROTO   FAILED_PRECONDITION store_open: the database's schema is older
 *                                 than store_opts.min_version (an older copy
 *                                 put in the place of the database)
 *   -EBADMSG  DATA_LOSS           a secret does not unseal: sealed with a
 *                                 master key the store was not opened with,
 *                                 or altered; or a row fails its integrity
 *                                 check (the message names the row)
 *   -ENOKEY   FAILED_PRECONDITION store_open: no master key, or not the one
 *                                 that sealed the stored secrets
 *   -ENODATA  FAILED_PRECONDITION store_backup: no tlsplane database there;
 *                                 store_open: the file holds tables but no
 *                                 schema history (not a tlsplane database)
 *   -EAGAIN   ABORTED             store_reads_check: something a tracked
 *                                 read saw has changed since (the message
 *                                 names it)
 *
 * Secrets at rest. From schema version 3 on, every secret is sealed
 * (AES-256-GCM, a fresh random nonce per write, the row's kind and name as
 * associated data) under the master key the store is opened with; the
 * database file alone reveals none. store_put seals, store_get unseals:
 * callers see plaintext only. A database of an older version is sealed by
 * the migration to version 3.
 *
 * Rows are authenticated. From schema version 4 on, every row's kind, name
 * and data carry a MAC under a key derived from the master key (seal.c):
 * store_put makes it, store_get and store_list check it, so a row edited
 * in the file (a token's role, a certificate's revocation, an agent's
 * labels) or written there by someone without the master key is refused
 * with -EBADMSG naming the row (store_list: the whole list). The
 * migration to version 4 authenticates the rows an older database holds,
 * as it finds them; store_master_key_rotate re-authenticates every row
 * under the new key once the old key has checked it.
 *
 * A failed store_put or store_delete aborts its transaction (it may have
 * written part of its rows): every later call on it, store_commit included,
 * returns that same failure, and store_commit rolls everything back. Failed
 * reads abort it only when the backend failed (-EIO).
 * Thread safety: a struct store is shared by all threads; a struct
 * store_txn belongs to the thread that began it. Transactions draw on a
 * small pool of connections: a thread holds at most one at a time. */
#ifndef TLSPLANE_STORE_H
#define TLSPLANE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

struct store;
struct store_txn;

#define STORE_MASTER_KEY_LEN 32 /* AES-256 */
#define STORE_KEY_ID_LEN 8      /* bytes of a master key's id */
#define STORE_KEYS_MAX_IDS 4    /* key ids store_backup reports */

struct store_opts {
  int version; /* the schema version to migrate to; 0: the latest */
  /* The master keys (copied): master_keys[0] seals every secret written;
   * each of them unseals what it sealed (more than one only while a
   * master-key rotation is finishing). Required from schema version 3. */
  const uint8_t (*master_keys)[STORE_MASTER_KEY_LEN];
  size_t n_master_keys; /* at most 4 */
  /* The schema floor: the highest schema version the caller knows this
   * database has had (kept outside it). A database whose schema is older
   * is refused with -EPROTO before anything is migrated: the migrations
   * would take its rows as they find them (authenticating them, from
   * version 4), so an older copy put in the database's place would be
   * adopted. 0: no floor. A new database (no tables yet) is not refused. */
  int min_version;
};

/* Opens (creating if needed) the database at path and migrates it to the
 * schema version of opts. path is a file (SQLite) or a postgres:// URI
 * (PostgreSQL: the database must exist; its tables are created in the
 * connection's current schema, each migration step under an advisory lock
 * so that servers opening it at once take turns). Refused with -ENOKEY when no master key is given
 * (from version 3) or when stored secrets are sealed with a key not given;
 * with -EPROTO below opts->min_version; with -ENODATA when the file holds
 * tables but no schema history (a foreign or hand-made file is neither
 * adopted nor migrated). A refused open adds no table or row to the file.
 *
 * Every SQLite connection the store opens runs with SQLite's triggers and
 * views off, in defensive mode and with an untrusted schema: the schema
 * has none of them, so a trigger or view planted in the file does nothing.
 * (PostgreSQL cannot turn triggers off without also turning off foreign
 * keys: whoever can create them there is the database's owner.)
 * Caller frees with store_close. */
int store_open(const char *path, const struct store_opts *opts, struct store **out,
               struct tp_err *err);

/* Whether path names a PostgreSQL database (a postgres:// or
 * postgresql:// URI) rather than a SQLite file. */
int store_path_is_uri(const char *path);

/* path as logs and messages may show it, into buf: a URI without its
 * password (user info or password= parameter); a file path as it is. */
void store_path_display(const char *path, char *buf, size_t len);

/* As store_open without a master key, migrating only up to schema version
 * `version` (tests of upgrades from older databases; versions before 3). */
int store_open_version(const char *path, int version, struct store **out, struct tp_err *err);

/* A master key's id (not secret): the first bytes of a hash of the key,
 * stored with every record it seals. As hex: 16 characters and a NUL. */
void store_master_key_id(const uint8_t key[STORE_MASTER_KEY_LEN], uint8_t id[STORE_KEY_ID_LEN]);
void store_master_key_id_hex(const uint8_t key[STORE_MASTER_KEY_LEN],
                             char hex[2 * STORE_KEY_ID_LEN + 1]);

/* Re-seals every secret and re-authenticates every row under new_key in
 * one write transaction (one new revision, one audit row by actor on
 * resource "masterKey", action "rotate_master_key"), then seals with
 * new_key alone: the keys the store was opened with unseal nothing any
 * more. A row that fails its integrity check fails the rotation (-EBADMSG
 * naming it): an edited row is not re-authenticated. Refused with -EBUSY
 * (FAILED_PRECONDITION) while another server uses the database
 * (PostgreSQL: every open store holds a server lock shared, from its
 * open to its close; the rotation takes it exclusively until it has
 * committed, so a store opened meanwhile is refused with -EBUSY): it
 * would go on with the old key. On failure nothing changed.
 * Call while no other thread uses the store. *n (may be NULL) receives how
 * many secrets were re-sealed. */
int store_master_key_rotate(struct store *s, const uint8_t new_key[STORE_MASTER_KEY_LEN],
                            const char *actor, size_t *n, struct tp_err *err);

/* Waits for no transaction; the caller has finished every txn. */
void store_close(struct store *s);

/* What store_backup copied. */
struct store_backup_info {
  int64_t revision;   /* the last revision the copy holds */
  int schema_version; /* of the copy */
  /* The master keys that sealed the copy's secrets (their ids, hex): the
   * keys a restore needs. Two only while a rotation was finishing. */
  char key_ids[STORE_KEYS_MAX_IDS][2 * STORE_KEY_ID_LEN + 1];
  size_t n_key_ids;
};

/* Copies the database at path into a new file dest (mode 0600; refused
 * if it exists): one consistent snapshot, the last committed revision,
 * with its secrets sealed as they are. Works from another process while
 * a server has the database open (the backend's online backup; writers
 * are not blocked). Needs no master key and writes nothing to path.
 * Refused with -ENODATA (FAILED_PRECONDITION) when path holds no
 * tlsplane schema; the copy is checked and removed on any failure.
 * PostgreSQL: -ENOTSUP (FAILED_PRECONDITION): pg_dump copies a live
 * PostgreSQL database consistently. */
int store_backup(const char *path, const char *dest, struct store_backup_info *info,
                 struct tp_err *err);

/* The schema version of the open database; the latest this build knows. */
int store_schema_version(struct store *s);
int store_schema_latest(void);

/* The last committed revision (0 for a new database). */
int64_t store_revision(struct store *s);

/* How many transactions may be open at once (the backend's connections);
 * a store_begin beyond them waits for one to end. */
int store_connections(struct store *s);

/* Begins a transaction. A write transaction holds the write lock from begin
 * to commit/rollback (writers run one at a time), so its reads are
 * consistent with what it writes. Caller ends it with store_commit or
 * store_rollback. */
int store_begin(struct store *s, int write, struct store_txn **out, struct tp_err *err);

/* Commits and frees txn. If the transaction wrote anything the global
 * revision is bumped once and *revision (may be NULL) receives it;
 * otherwise it receives the current revision (for a read transaction, the
 * one it read). Durable on return (synchronous commit). On failure
 * everything is rolled back. */
int store_commit(struct store_txn *txn, int64_t *revision, struct tp_err *err);

/* Sets the function called after every commit that made a new revision,
 * on the committing thread, after the commit is durable. Set it before any
 * transaction begins; cb must not begin a write transaction. */
void store_set_commit_hook(struct store *s, void (*cb)(int64_t revision, void *data), void *data);

/* Watching for commits made by other processes on the same database
 * (several servers sharing one PostgreSQL database). Between
 * store_watch_start and store_watch_stop, on a thread of the store's own:
 *   revision(rev, data)  for each revision newer than the last it gave
 *                        (several commits may come as one call, with the
 *                        newest), once store_revision shows it; also for
 *                        this process's own commits, after or before their
 *                        commit hook (callers take each revision once);
 *   status(msg, data)    (may be NULL) when the watch loses its way to the
 *                        database (msg says why, without a password) and
 *                        when it has it back (msg NULL); revisions
 *                        committed meanwhile come once it is back.
 * PostgreSQL: every commit that makes a revision notifies it (NOTIFY
 * tlsplane_revision, '<revision>') and the watch LISTENs on a connection of
 * its own; notifications are not replayed, so it also reads the revision
 * every STORE_WATCH_CHECK_MS, and after every reconnection.
 * SQLite (one process per file): starts nothing, and returns 0.
 * Set once, before transactions begin; -EBUSY when watching already.
 * The callbacks must not begin a write transaction. */
#define STORE_WATCH_CHECK_MS 1000
struct store_watch {
  void (*revision)(int64_t revision, void *data);
  void (*status)(const char *msg, void *data);
  void *data;
};
int store_watch_start(struct store *s, const struct store_watch *w, struct tp_err *err);
/* Stops the watch and joins its thread: no callback runs after it
 * returns. A no-op when not watching; store_close calls it. */
void store_watch_stop(struct store *s);

/* The job lock: which one of the servers sharing a database runs the
 * background jobs. 1 when this store holds it (taken now, or still held),
 * 0 when another process does, negative (err set) when it cannot tell
 * (the database is out of reach: not held then). Call it before each
 * round of jobs, from one thread.
 * PostgreSQL: a session advisory lock (pg_try_advisory_lock) on a
 * connection of its own, checked with a query at each call. It goes with
 * its session: when the holding process dies (even by SIGKILL) its
 * connection closes and PostgreSQL releases the lock, so the next call of
 * another server takes it; a holder whose connection broke finds out at
 * its next call and stops. Released by store_close.
 * SQLite: always 1 (one process per file). */
int store_job_lock(struct store *s, struct tp_err *err);

struct store_audit;

/* What a committed transaction did, as its audit rows say it: called
 * after every commit that made a new revision (after the commit hook), on
 * the committing thread, with the first STORE_AUDIT_HOOK_ROWS rows (seq
 * 0, the revision, the time of the commit, actor, method, resource,
 * action; valid during the call only) and how many more there were.
 * Set it before any transaction begins; NULL: none (the transactions
 * keep no copy then). cb must not begin a transaction. */
#define STORE_AUDIT_HOOK_ROWS 16
typedef void (*store_audit_hook_fn)(const struct store_audit *rows, size_t n, size_t more,
                                    void *data);
void store_set_audit_hook(struct store *s, store_audit_hook_fn cb, void *data);

/* Rolls back and frees txn. NULL is a no-op. */
void store_rollback(struct store_txn *txn);

/* For a write transaction: the revision its commit will have. For a read
 * transaction: the revision of the snapshot it reads. */
int64_t store_txn_revision(struct store_txn *txn);

/* Whether txn is aborted (a failed write, a backend failure, or a row or
 * secret that failed its integrity check): every later call returns that
 * failure. A reader that must go on past one bad row begins again. */
int store_txn_failed(const struct store_txn *txn);

struct store_row {
  char *kind;             /* e.g. "Certificate" */
  char *name;             /* e.g. "certificates/web" */
  char *etag;             /* changes on every write */
  int64_t revision;       /* revision of the last write to this row */
  int64_t create_time_us; /* microseconds since the Unix epoch */
  int64_t update_time_us;
  uint8_t *data; /* the serialized resource */
  size_t data_len;
  uint8_t *secret; /* only when asked for; NULL if none */
  size_t secret_len;
  /* The row's authentication tag as the backend read it: the store checks
   * it and drops it before the row reaches its caller. */
  uint8_t *mac;
  size_t mac_len;
};

/* Frees what a row holds (not the row itself) and zeroes it. */
void store_row_clear(struct store_row *row);
/* Clears and frees an array of n rows. NULL is a no-op. */
void store_rows_free(struct store_row *rows, size_t n);

/* Reads one row. with_secret: also read the secret bytes. The row is the
 * caller's: free with store_row_clear (zeroed on failure). */
int store_get(struct store_txn *txn, const char *kind, const char *name, int with_secret,
              struct store_row *out, struct tp_err *err);

struct store_label {
  const char *key;
  const char *value;
};

/* A reference from the written resource to another one. */
struct store_ref {
  const char *kind;  /* e.g. "Certificate" */
  const char *name;  /* e.g. "certificates/web" */
  const char *field; /* for messages, e.g. "tls_context.certificates[0]" */
};

struct store_write {
  const char *kind;
  const char *name;
  int create;              /* 1: must not exist yet; 0: must exist */
  const char *expect_etag; /* NULL or "": no check */
  const uint8_t *data;     /* serialized resource without secrets */
  size_t data_len;
  int set_secret;        /* 1: replace the secret with secret/secret_len */
  const uint8_t *secret; /* may be NULL with set_secret: no secret */
  size_t secret_len;
  const struct store_label *labels; /* replaces the row's labels */
  size_t n_labels;
  const struct store_ref *refs; /* replaces the row's references; each must exist */
  size_t n_refs;
  int64_t expire_time_us; /* indexed for store_query.expire_before_us; 0: none */
  /* When a background job next has work on the row (µs since the epoch),
   * indexed for store_query.due_before_us; 0: none. Ignored by stores
   * opened at a schema older than 7. */
  int64_t due_time_us;
  /* An update only: when data and (with set_secret) the secret are
   * byte-identical to the stored row's, write nothing (no revision, no
   * audit row, the etag stays). For callers whose labels, references and
   * expiry derive from data, so that the same data means the same row.
   * Secrets are compared unsealed in constant time and the plaintext
   * wiped; a row or secret failing its integrity check is not the same. */
  int skip_unchanged;
  /* Audit row. */
  const char *actor;
  const char *method;
  const char *action; /* "create", "update", "rotate", ... */
  /* What the write changed, as the audit row records it (copied; never a
   * secret). */
  const struct store_audit_change *changes;
  size_t n_changes;
};

/* Creates or updates a row inside a write transaction. The row's etag,
 * revision and times are set by the store; out (may be NULL) receives them
 * (kind, name, etag, revision, times; no data; free with store_row_clear);
 * for a write skipped as unchanged (skip_unchanged), the stored ones.
 * Refused with -EINVAL: a reference to the row itself, duplicate or empty
 * label keys. A NULL action is "create" or "update" after w->create. */
int store_put(struct store_txn *txn, const struct store_write *w, struct store_row *out,
              struct tp_err *err);

/* Deletes a row inside a write transaction, with its labels and outgoing
 * references, and writes the audit row. Refused with -EBUSY while another
 * row references it. */
int store_delete(struct store_txn *txn, const char *kind, const char *name, const char *expect_etag,
                 const char *actor, const char *method, struct tp_err *err);

enum store_label_op {
  STORE_LABEL_EQ,        /* key=value */
  STORE_LABEL_NE,        /* key!=value (also true when the label is absent) */
  STORE_LABEL_EXISTS,    /* key */
  STORE_LABEL_NOT_EXISTS /* !key */
};

struct store_label_req {
  enum store_label_op op;
  const char *key;
  const char *value; /* EQ and NE only */
};

struct store_query {
  const char *kind;
  const char *after_name; /* only names sorting after this (pagination); NULL: from the start */
  int limit;              /* at most this many rows; 0 or less: no limit */
  const struct store_label_req *labels; /* all must hold */
  size_t n_labels;
  /* 1: only rows with an expiry (expire_time_us > 0) before
   * expire_before_us, which may be 0 or negative (before 1970: none). */
  int has_expire_before;
  int64_t expire_before_us;
  /* 1: only rows with work scheduled (store_write.due_time_us > 0) before
   * due_before_us. */
  int has_due_before;
  int64_t due_before_us;
};

/* Lists rows in name order, without secrets. *rows is the caller's: free
 * with store_rows_free (NULL and 0 when nothing matched or on failure). */
int store_list(struct store_txn *txn, const struct store_query *q, struct store_row **rows,
               size_t *n, struct tp_err *err);

/* The rows that reference (kind, name), in name order, each once, without
 * data or secrets (kind, name, etag, revision only). Free with
 * store_rows_free. None (not -ENOENT) when (kind, name) does not exist. */
int store_referrers(struct store_txn *txn, const char *kind, const char *name,
                    struct store_row **rows, size_t *n, struct tp_err *err);

/* Optimistic writes. A tracked read transaction records what it reads,
 * so that work depending on those reads (validation, OpenSSL) can run
 * outside the write lock and a short write transaction commits its result
 * only if none of them changed meanwhile. Recorded: each row store_get
 * looked up (the etag it had, or that it did not exist), the referrer
 * list of each row store_referrers was asked about, and whether
 * store_list or store_audit_list ran (a list depends on every row of its
 * kind: any commit since counts as a change). */
struct store_reads;

/* Begins a read transaction that records its reads. Ends like any read
 * transaction (store_rollback or store_commit). */
int store_begin_tracked(struct store *s, struct store_txn **out, struct tp_err *err);

/* Takes what the tracked read transaction txn has recorded: the caller
 * frees it with store_reads_free; txn records nothing more. NULL when txn
 * is not a tracked transaction, or the reads were taken already. */
struct store_reads *store_reads_take(struct store_txn *txn);

/* Inside a write transaction: 0 when every recorded read still holds (the
 * rows found have the etags seen, the rows missed are still missing, the
 * referrer lists are the same, and nothing was committed since when a
 * list was read). -EAGAIN (ABORTED, naming the first row that changed)
 * otherwise; -EIO when the check itself failed (that aborts txn). reads
 * NULL: -EIO. Quick when nothing was committed since the reads. */
int store_reads_check(struct store_txn *txn, const struct store_reads *reads, struct tp_err *err);

/* NULL is a no-op. */
void store_reads_free(struct store_reads *reads);

/* When (kind, name) last authenticated a call (a token, a client
 * certificate), microseconds since the epoch. Usage is not a change: no
 * revision, no audit row, no etag change. store_usage_set takes a write
 * transaction (-ENOENT when the row does not exist); store_usage_get gives
 * 0 for never. Before schema version 3 both do nothing. */
int store_usage_set(struct store_txn *txn, const char *kind, const char *name, int64_t time_us,
                    struct tp_err *err);
int store_usage_get(struct store_txn *txn, const char *kind, const char *name, int64_t *time_us,
                    struct tp_err *err);

/* Pending ACME challenges (from schema version 8): the challenges an
 * order of the server has out (tls-alpn-01 challenge certificates, dns-01
 * values), numbered from 0 per certificate, in a table of their own
 * beside the rows. A challenge goes with its certificate's row (deleting
 * the row deletes them). Each key is sealed like any secret (associated
 * data: kind "AcmeChallenge" and "{certificate}#{index}"); the rows carry
 * no MAC (the sealed key authenticates itself, and the challenge is worth
 * nothing without it). A master-key rotation re-seals them with the rows'
 * secrets. */
#define STORE_CHALLENGES_SINCE_VERSION 8
#define STORE_CHALLENGE_KIND "AcmeChallenge"

struct store_challenge {
  char *certificate; /* the Certificate row's name, "certificates/web" */
  int64_t index;     /* 0, 1, ... within it */
  uint8_t *data;     /* the challenge without its key (the caller's encoding) */
  size_t data_len;
  uint8_t *secret; /* its key: plaintext to and from the caller */
  size_t secret_len;
};

/* Replaces the challenges of Certificate `certificate` (which must exist:
 * -ENOENT) by c[0..n) (n 0: removes them; c[i].certificate is ignored),
 * in write transaction txn: a revision, and one audit row by actor with
 * method on resource "acmeChallenges/{certificate id}" (action). Before
 * schema version 8: -ENOTSUP. */
int store_challenges_set(struct store_txn *txn, const char *certificate,
                         const struct store_challenge *c, size_t n, const char *actor,
                         const char *method, const char *action, struct tp_err *err);

/* Every pending challenge, in certificate and index order, keys unsealed:
 * *out is the caller's, free with store_challenges_free. None before
 * schema version 8. A key that does not unseal fails the read (-EBADMSG
 * naming the certificate). */
int store_challenges_list(struct store_txn *txn, struct store_challenge **out, size_t *n,
                          struct tp_err *err);
/* Wipes the keys and frees. NULL is a no-op. */
void store_challenges_free(struct store_challenge *c, size_t n);

/* One field a write changed: its values before and after as text ("" for
 * none). From schema version 6 on; never a secret. */
struct store_audit_change {
  char *field; /* e.g. "serial_number", "tls_context.certificates[0]" */
  char *before;
  char *after;
};

struct store_audit {
  int64_t seq; /* increasing */
  int64_t revision;
  int64_t time_us;
  char *actor;
  char *method;
  char *resource; /* the row's name */
  char *action;
  struct store_audit_change *changes; /* store_audit_list only */
  size_t n_changes;
};

struct store_audit_query {
  int64_t after_seq;      /* pagination: only seq > this (0: none) */
  int64_t before_seq;     /* pagination: only seq < this (0: none) */
  int descending;         /* 1: newest (highest seq) first */
  int limit;              /* 0 or less: no limit */
  const char *resource;   /* NULL: any */
  const char *actor;      /* NULL: any */
  int64_t since_revision; /* only revision > this */
  /* Only rows with start_time_us <= time_us < end_time_us, each bound
   * only when its has_ flag is set. */
  int has_start_time, has_end_time;
  int64_t start_time_us, end_time_us;
};

/* Lists audit rows in seq order (descending: the reverse), each with its
 * changes. Free with store_audit_free. */
int store_audit_list(struct store_txn *txn, const struct store_audit_query *q,
                     struct store_audit **out, size_t *n, struct tp_err *err);
void store_audit_free(struct store_audit *a, size_t n);

#endif
