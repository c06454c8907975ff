/* The storage interface: checks arguments and transaction state, then
 * dispatches to the backend (store_int.h). Also the helpers every backend
 * shares: clock, etag, copies, and the wording of the API's refusals.
 *
 * Transactions abort on the first failed write: store_put and store_delete
 * may have written part of their rows when they fail, so from then on the
 * transaction answers every call with that failure and store_commit rolls
 * it back. A failed read (other than NOT_FOUND and bad query arguments)
 * means the backend failed and aborts the transaction too. */
#include "store_int.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t store__now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void store__etag_format(char *buf, size_t len, int64_t revision) {
  /* Writers are serialized and every write txn has its own revision, so
   * the revision of a row's last write tells every write apart. */
  snprintf(buf, len, "%" PRId64, revision);
}

uint8_t *store__memdup(const void *src, size_t len) {
  uint8_t *p = malloc(len ? len : 1);
  if (p != NULL && len > 0)
    memcpy(p, src, len);
  return p;
}

int store__rows_reserve(struct store_row **rows, size_t n, size_t *cap) {
  if (n < *cap)
    return 0;
  size_t ncap = *cap ? *cap * 2 : 16;
  struct store_row *p = realloc(*rows, ncap * sizeof(*p));
  if (p == NULL)
    return -ENOMEM;
  memset(p + *cap, 0, (ncap - *cap) * sizeof(*p));
  *rows = p;
  *cap = ncap;
  return 0;
}

int store__err_exists(struct tp_err *err, const char *name) {
  tp_err_set(err, GRPC_STATUS_ALREADY_EXISTS, "%s already exists", name);
  return -EEXIST;
}

int store__err_not_found(struct tp_err *err, const char *name) {
  tp_err_set(err, GRPC_STATUS_NOT_FOUND, "%s not found", name);
  return -ENOENT;
}

int store__err_etag(struct tp_err *err, const char *name, const char *etag) {
  tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
             "etag mismatch: %s was changed (etag %s), re-read it", name, etag);
  return -ESTALE;
}

int store__err_referenced(struct tp_err *err, const char *name, const char *referrer,
                          const char *field) {
  tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s is referenced by %s (%s)", name, referrer,
             field);
  return -EBUSY;
}

int store__err_ref_missing(struct tp_err *err, const char *field, const char *name) {
  tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: %s does not exist", field, name);
  return -EINVAL;
}

int store__err_ref_self(struct tp_err *err, const char *field, const char *name) {
  tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: %s cannot reference itself", field, name);
  return -EINVAL;
}

int store__err_nomem(struct tp_err *err, const char *what) {
  tp_err_set(err, GRPC_STATUS_INTERNAL, "store: %s: out of memory", what);
  return -EIO;
}

static int empty(const char *s) {
  return s == NULL || s[0] == '\0';
}

/* Checks that txn is live (and a write txn if write), and answers with the
 * recorded failure once it has aborted. */
static int txn_check(struct store_txn *txn, int write, const char *op, struct tp_err *err) {
  if (txn == NULL || txn->magic != STORE_TXN_MAGIC) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "%s: not a live transaction", op);
    return -EIO;
  }
  if (txn->failed) {
    if (err != NULL)
      *err = txn->failure;
    return txn->failed;
  }
  if (write && !txn->write) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "%s needs a write transaction", op);
    return -EIO;
  }
  return 0;
}

/* Records the first failure; the transaction is aborted from now on. */
static int txn_fail(struct store_txn *txn, int rc, const struct tp_err *err) {
  if (!txn->failed) {
    txn->failed = rc;
    if (err != NULL)
      txn->failure = *err;
    else
      tp_err_set(&txn->failure, GRPC_STATUS_INTERNAL, "store: transaction aborted");
  }
  return rc;
}

/* A failed read aborts only when the backend failed (or a secret does
 * not unseal). */
static int read_result(struct store_txn *txn, int rc, const struct tp_err *err) {
  if (rc == -EIO || rc == -EBADMSG)
    txn_fail(txn, rc, err);
  return rc;
}

/* Checks the MAC the backend read with row (from the schema version that
 * has them), then drops it: a row someone edited in the file without the
 * master key is refused like a secret that does not unseal. */
static int row_check(struct store_txn *txn, struct store_row *row, struct tp_err *err) {
  int rc = 0;
  if (txn->store->schema_version >= STORE_MACS_SINCE_VERSION)
    rc = store__mac_check(&txn->store->keys, row->kind, row->name, row->data, row->data_len,
                          row->mac, row->mac_len, err);
  free(row->mac);
  row->mac = NULL;
  row->mac_len = 0;
  return rc;
}

/* What a tracked read transaction read (store.h, "Optimistic writes"). */
enum read_what {
  READ_ROW,       /* store_get: seen is the etag, NULL when the row did not exist */
  READ_REFERRERS, /* store_referrers: seen is the list, one "kind name etag" line per row */
};

struct read_entry {
  enum read_what what;
  char *kind;
  char *name;
  char *seen;
};

struct store_reads {
  int64_t revision; /* of the snapshot the reads saw */
  int listed;       /* store_list or store_audit_list ran */
  int incomplete;   /* recording ran out of memory: the record proves nothing */
  struct read_entry *entries;
  size_t n, cap;
};

void store_reads_free(struct store_reads *r) {
  if (r == NULL)
    return;
  for (size_t i = 0; i < r->n; i++) {
    free(r->entries[i].kind);
    free(r->entries[i].name);
    free(r->entries[i].seen);
  }
  free(r->entries);
  free(r);
}

static int same_text(const char *a, const char *b) {
  return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* Records one read on a tracked txn (once per row and kind of read: one
 * snapshot answers the same every time). */
static void reads_note(struct store_txn *txn, enum read_what what, const char *kind,
                       const char *name, const char *seen) {
  struct store_reads *r = txn->reads;
  if (r == NULL || r->incomplete)
    return;
  for (size_t i = 0; i < r->n; i++)
    if (r->entries[i].what == what && strcmp(r->entries[i].name, name) == 0 &&
        strcmp(r->entries[i].kind, kind) == 0)
      return;
  if (r->n == r->cap) {
    size_t cap = r->cap ? 2 * r->cap : 16;
    struct read_entry *e = realloc(r->entries, cap * sizeof(*e));
    if (e == NULL) {
      r->incomplete = 1;
      return;
    }
    r->entries = e;
    r->cap = cap;
  }
  struct read_entry *e = &r->entries[r->n];
  e->what = what;
  e->kind = strdup(kind);
  e->name = strdup(name);
  e->seen = seen ? strdup(seen) : NULL;
  if (e->kind == NULL || e->name == NULL || (seen != NULL && e->seen == NULL)) {
    free(e->kind);
    free(e->name);
    free(e->seen);
    r->incomplete = 1;
    return;
  }
  r->n++;
}

/* The referrer rows as one text ("kind name etag" lines); NULL when out
 * of memory. */
static char *referrers_text(const struct store_row *rows, size_t n) {
  size_t len = 1;
  for (size_t i = 0; i < n; i++)
    len += strlen(rows[i].kind) + strlen(rows[i].name) + strlen(rows[i].etag) + 3;
  char *text = malloc(len);
  if (text == NULL)
    return NULL;
  size_t at = 0;
  for (size_t i = 0; i < n; i++)
    at += (size_t)snprintf(text + at, len - at, "%s %s %s\n", rows[i].kind, rows[i].name,
                           rows[i].etag);
  text[at] = '\0';
  return text;
}

static int reads_changed(struct tp_err *err, const char *what) {
  tp_err_set(err, GRPC_STATUS_ABORTED, "%s changed while this write was being validated", what);
  return -EAGAIN;
}

static int is_postgres_uri(const char *path) {
  return strncmp(path, "postgres://", 11) == 0 || strncmp(path, "postgresql://", 13) == 0;
}

void store__path_display(const char *path, char *buf, size_t len) {
  char *p = is_postgres_uri(path) ? strdup(path) : NULL;
  if (p == NULL) {
    snprintf(buf, len, "%s", is_postgres_uri(path) ? "the PostgreSQL database" : path);
    return;
  }
  char *start = strstr(p, "://") + 3;
  /* user:password@host: the user info ends at the first '@' before any
   * '/' of the path. */
  char *at = strchr(start, '@'), *slash = strchr(start, '/');
  if (at != NULL && (slash == NULL || at < slash)) {
    char *colon = memchr(start, ':', (size_t)(at - start));
    if (colon != NULL)
      memmove(colon, at, strlen(at) + 1);
  }
  /* ...?password=secret&...: the parameter goes, with its separator. */
  char *q = strchr(p, '?');
  while (q != NULL) {
    char *next = strchr(q + 1, '&');
    if (strncmp(q + 1, "password=", 9) == 0) {
      if (next == NULL) {
        *q = '\0';
        break;
      }
      memmove(q + 1, next + 1, strlen(next + 1) + 1);
      continue;
    }
    q = next;
  }
  snprintf(buf, len, "%s", p);
  OPENSSL_cleanse(p, strlen(path));
  free(p);
}

int store_path_is_uri(const char *path) {
  return path != NULL && is_postgres_uri(path);
}

void store_path_display(const char *path, char *buf, size_t len) {
  store__path_display(path, buf, len);
}

const struct store_ops *store__ops_for(const char *path) {
  return is_postgres_uri(path) ? &store__postgres_ops : &store__sqlite_ops;
}

int store_schema_latest(void) {
  return store__sqlite_ops.latest_version;
}

/* Opens at version with the master keys of ring, then checks that every
 * stored secret is sealed with one of them: a wrong key is refused here,
 * not at the first read. */
static int open_with(const char *path, int version, int min_version,
                     const struct store_keyring *ring, struct store **out, struct tp_err *err) {
  *out = NULL;
  if (empty(path)) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "store: no database path");
    return -EINVAL;
  }
  const struct store_ops *ops = store__ops_for(path);
  if (version < 1 || version > ops->latest_version) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "store: schema version %d unknown (this build knows 1 to %d)", version,
               ops->latest_version);
    return -EINVAL;
  }
  char shown[STORE_PATH_DISPLAY_MAX];
  store__path_display(path, shown, sizeof(shown));
  if (min_version > ops->latest_version) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "store: %s has had schema version %d, newer than %d, the latest this build knows",
               shown, min_version, ops->latest_version);
    return -ENOTSUP;
  }
  if (min_version < 0 || min_version > version) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "store: schema floor %d is not within 0 to the version asked for (%d)", min_version,
               version);
    return -EINVAL;
  }
  if (version >= STORE_SEALED_SINCE_VERSION && ring->n == 0) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "store: a master key is required (secrets are sealed from schema version %d)",
               STORE_SEALED_SINCE_VERSION);
    return -ENOKEY;
  }
  int rc = ops->open(path, version, min_version, ring, out, err);
  if (rc < 0)
    return rc;
  struct store *s = *out;
  s->magic = STORE_MAGIC;
  s->ops = ops;
  if (s->schema_version < STORE_SEALED_SINCE_VERSION)
    return 0;
  struct store_txn *txn;
  uint8_t(*ids)[STORE_KEY_ID_LEN] = NULL;
  size_t n = 0;
  rc = store_begin(s, 0, &txn, err);
  if (rc == 0) {
    rc = ops->sealed_key_ids(txn, &ids, &n, err);
    store_rollback(txn);
  }
  for (size_t i = 0; rc == 0 && i < n; i++) {
    size_t k = 0;
    while (k < s->keys.n && memcmp(s->keys.id[k], ids[i], STORE_KEY_ID_LEN) != 0)
      k++;
    if (k == s->keys.n) {
      char hex[2 * STORE_KEY_ID_LEN + 1], given[2 * STORE_KEY_ID_LEN + 1];
      store__key_id_hex(ids[i], hex);
      store__key_id_hex(s->keys.id[0], given);
      tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                 "store: %s: secrets are sealed with master key %s, not with the key given (%s)",
                 shown, hex, given);
      rc = -ENOKEY;
    }
  }
  free(ids);
  if (rc < 0) {
    store_close(s);
    *out = NULL;
  }
  return rc;
}

int store_open_version(const char *path, int version, struct store **out, struct tp_err *err) {
  struct store_keyring none = {0};
  return open_with(path, version, 0, &none, out, err);
}

int store_open(const char *path, const struct store_opts *opts, struct store **out,
               struct tp_err *err) {
  struct store_keyring ring = {0};
  int version = opts != NULL && opts->version != 0 ? opts->version : store_schema_latest();
  *out = NULL;
  if (opts != NULL && (opts->n_master_keys > STORE_KEYS_MAX ||
                       (opts->master_keys == NULL && opts->n_master_keys > 0))) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "store: at most %d master keys", STORE_KEYS_MAX);
    return -EINVAL;
  }
  for (size_t i = 0; opts != NULL && i < opts->n_master_keys; i++)
    if (store__keyring_add(&ring, opts->master_keys[i]) == -EIO) {
      store__keyring_clear(&ring);
      tp_err_set(err, GRPC_STATUS_INTERNAL, "store: cannot derive the row authentication key");
      return -EIO;
    }
  int rc = open_with(path, version, opts != NULL ? opts->min_version : 0, &ring, out, err);
  store__keyring_clear(&ring);
  return rc;
}

int store_backup(const char *path, const char *dest, struct store_backup_info *info,
                 struct tp_err *err) {
  memset(info, 0, sizeof(*info));
  if (empty(path) || empty(dest)) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "store_backup: a database and a destination");
    return -EINVAL;
  }
  return store__ops_for(path)->backup(path, dest, info, err);
}

int store_watch_start(struct store *s, const struct store_watch *w, struct tp_err *err) {
  if (s->watching) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "store: watching already");
    return -EBUSY;
  }
  s->watch = *w;
  if (s->ops->watch_start != NULL) {
    int rc = s->ops->watch_start(s, err);
    if (rc < 0) {
      memset(&s->watch, 0, sizeof(s->watch));
      return rc;
    }
  }
  s->watching = 1;
  return 0;
}

void store_watch_stop(struct store *s) {
  if (s == NULL || !s->watching)
    return;
  if (s->ops->watch_stop != NULL)
    s->ops->watch_stop(s);
  s->watching = 0;
  memset(&s->watch, 0, sizeof(s->watch));
}

int store_job_lock(struct store *s, struct tp_err *err) {
  return s->ops->job_lock != NULL ? s->ops->job_lock(s, err) : 1;
}

void store_close(struct store *s) {
  if (s == NULL)
    return;
  store_watch_stop(s);
  s->magic = 0;
  store__keyring_clear(&s->keys);
  s->ops->close(s);
}

int store_schema_version(struct store *s) {
  return s->schema_version;
}

int64_t store_revision(struct store *s) {
  return atomic_load(&s->revision);
}

int store_connections(struct store *s) {
  return s->connections;
}

int store_begin(struct store *s, int write, struct store_txn **out, struct tp_err *err) {
  *out = NULL;
  if (s == NULL || s->magic != STORE_MAGIC) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store_begin: not an open store");
    return -EIO;
  }
  int rc = s->ops->begin(s, write != 0, out, err);
  if (rc < 0)
    return rc;
  (*out)->magic = STORE_TXN_MAGIC;
  (*out)->store = s;
  (*out)->write = write != 0;
  return 0;
}

int store_begin_tracked(struct store *s, struct store_txn **out, struct tp_err *err) {
  int rc = store_begin(s, 0, out, err);
  if (rc < 0)
    return rc;
  struct store_reads *r = calloc(1, sizeof(*r));
  if (r == NULL) {
    store_rollback(*out);
    *out = NULL;
    return store__err_nomem(err, "begin");
  }
  r->revision = (*out)->revision;
  (*out)->reads = r;
  return 0;
}

struct store_reads *store_reads_take(struct store_txn *txn) {
  if (txn == NULL || txn->magic != STORE_TXN_MAGIC)
    return NULL;
  struct store_reads *r = txn->reads;
  txn->reads = NULL;
  return r;
}

int store_reads_check(struct store_txn *txn, const struct store_reads *r, struct tp_err *err) {
  int rc = txn_check(txn, 1, "store_reads_check", err);
  if (rc < 0)
    return rc;
  if (r == NULL || r->incomplete) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store_reads_check: no complete record of the reads");
    return -EIO;
  }
  /* Writers are serialized: the revision before this one is the last
   * commit. The same as the reads' snapshot: nothing can have changed. */
  if (txn->revision - 1 == r->revision)
    return 0;
  if (r->listed)
    return reads_changed(err, "a listed resource");
  const struct store_ops *ops = txn->store->ops;
  for (size_t i = 0; i < r->n; i++) {
    const struct read_entry *e = &r->entries[i];
    struct tp_err why = {0};
    int same;
    if (e->what == READ_ROW) {
      struct store_row row = {0};
      rc = ops->get(txn, e->kind, e->name, 0, &row, &why);
      same = rc == 0 ? same_text(row.etag, e->seen) : rc == -ENOENT && e->seen == NULL;
      store_row_clear(&row);
    } else {
      struct store_row *rows = NULL;
      size_t n = 0;
      rc = ops->referrers(txn, e->kind, e->name, &rows, &n, &why);
      char *text = rc == 0 ? referrers_text(rows, n) : NULL;
      if (rc == 0 && text == NULL)
        rc = store__err_nomem(&why, "store_reads_check");
      same = rc == 0 && same_text(text, e->seen);
      free(text);
      store_rows_free(rows, n);
    }
    if (rc < 0 && rc != -ENOENT) {
      if (err != NULL)
        *err = why;
      return txn_fail(txn, rc, &why);
    }
    if (!same)
      return reads_changed(err, e->what == READ_ROW ? e->name : "what references it");
  }
  return 0;
}

/* Keeps a copy of an audit row txn wrote, for the audit hook. */
static void audit_note(struct store_txn *txn, const char *actor, const char *method,
                       const char *resource, const char *action) {
  if (txn->store->audit_hook == NULL)
    return;
  if (txn->audit == NULL &&
      (txn->audit = calloc(STORE_AUDIT_HOOK_ROWS, sizeof(*txn->audit))) == NULL) {
    txn->audit_more++;
    return;
  }
  if (txn->n_audit == STORE_AUDIT_HOOK_ROWS) {
    txn->audit_more++;
    return;
  }
  struct store_audit *a = &txn->audit[txn->n_audit];
  a->actor = strdup(actor);
  a->method = strdup(method);
  a->resource = strdup(resource);
  a->action = strdup(action);
  if (a->actor == NULL || a->method == NULL || a->resource == NULL || a->action == NULL) {
    free(a->actor);
    free(a->method);
    free(a->resource);
    free(a->action);
    memset(a, 0, sizeof(*a));
    txn->audit_more++;
    return;
  }
  txn->n_audit++;
}

/* Takes the copies out of txn (before the backend frees it). */
static struct store_audit *audit_take(struct store_txn *txn, size_t *n, size_t *more) {
  struct store_audit *a = txn->audit;
  *n = txn->n_audit;
  *more = txn->audit_more;
  txn->audit = NULL;
  txn->n_audit = txn->audit_more = 0;
  return a;
}

int store_commit(struct store_txn *txn, int64_t *revision, struct tp_err *err) {
  if (txn == NULL || txn->magic != STORE_TXN_MAGIC) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store_commit: not a live transaction");
    return -EIO;
  }
  const struct store_ops *ops = txn->store->ops;
  txn->magic = 0;
  store_reads_free(txn->reads);
  txn->reads = NULL;
  size_t n_audit, audit_more;
  struct store_audit *audit = audit_take(txn, &n_audit, &audit_more);
  if (txn->failed) {
    store_audit_free(audit, n_audit);
    int rc = txn->failed;
    if (err != NULL)
      *err = txn->failure;
    ops->rollback(txn);
    return rc;
  }
  /* Read before commit frees txn. A write txn that wrote nothing commits
   * no revision: the current one is the one before its own. */
  int64_t rev = txn->revision;
  int wrote = txn->write && txn->wrote;
  struct store *s = txn->store;
  if (!wrote)
    rev -= txn->write;
  int rc = ops->commit(txn, err);
  if (rc < 0) {
    store_audit_free(audit, n_audit);
    return rc;
  }
  if (revision != NULL)
    *revision = rev;
  if (wrote && s->commit_hook != NULL)
    s->commit_hook(rev, s->commit_hook_data);
  if (wrote && s->audit_hook != NULL && (n_audit > 0 || audit_more > 0)) {
    int64_t now = store__now_us();
    for (size_t i = 0; i < n_audit; i++) {
      audit[i].revision = rev;
      audit[i].time_us = now;
    }
    s->audit_hook(audit, n_audit, audit_more, s->audit_hook_data);
  }
  store_audit_free(audit, n_audit);
  return 0;
}

void store_set_commit_hook(struct store *s, void (*cb)(int64_t revision, void *data), void *data) {
  s->commit_hook = cb;
  s->commit_hook_data = data;
}

void store_set_audit_hook(struct store *s, store_audit_hook_fn cb, void *data) {
  s->audit_hook = cb;
  s->audit_hook_data = data;
}

void store_rollback(struct store_txn *txn) {
  if (txn == NULL || txn->magic != STORE_TXN_MAGIC)
    return;
  txn->magic = 0;
  store_reads_free(txn->reads);
  txn->reads = NULL;
  size_t n_audit, audit_more;
  struct store_audit *audit = audit_take(txn, &n_audit, &audit_more);
  store_audit_free(audit, n_audit);
  txn->store->ops->rollback(txn);
}

int64_t store_txn_revision(struct store_txn *txn) {
  return txn->revision;
}

int store_txn_failed(const struct store_txn *txn) {
  return txn->failed != 0;
}

void store_row_clear(struct store_row *row) {
  if (row == NULL)
    return;
  free(row->kind);
  free(row->name);
  free(row->etag);
  free(row->data);
  free(row->secret);
  free(row->mac);
  memset(row, 0, sizeof(*row));
}

void store_rows_free(struct store_row *rows, size_t n) {
  if (rows == NULL)
    return;
  for (size_t i = 0; i < n; i++)
    store_row_clear(&rows[i]);
  free(rows);
}

void store_audit_free(struct store_audit *a, size_t n) {
  if (a == NULL)
    return;
  for (size_t i = 0; i < n; i++) {
    free(a[i].actor);
    free(a[i].method);
    free(a[i].resource);
    free(a[i].action);
    for (size_t j = 0; j < a[i].n_changes; j++) {
      free(a[i].changes[j].field);
      free(a[i].changes[j].before);
      free(a[i].changes[j].after);
    }
    free(a[i].changes);
  }
  free(a);
}

static int check_key(const char *kind, const char *name, const char *op, struct tp_err *err) {
  if (empty(kind) || empty(name)) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: kind and name are required", op);
    return -EINVAL;
  }
  return 0;
}

int store_get(struct store_txn *txn, const char *kind, const char *name, int with_secret,
              struct store_row *out, struct tp_err *err) {
  memset(out, 0, sizeof(*out));
  int rc = txn_check(txn, 0, "store_get", err);
  if (rc == 0)
    rc = check_key(kind, name, "store_get", err);
  if (rc < 0)
    return rc;
  rc = txn->store->ops->get(txn, kind, name, with_secret != 0, out, err);
  if (rc == 0 || rc == -ENOENT)
    reads_note(txn, READ_ROW, kind, name, rc == 0 ? out->etag : NULL);
  if (rc == 0)
    rc = row_check(txn, out, err);
  if (rc == 0 && out->secret != NULL && txn->store->schema_version >= STORE_SEALED_SINCE_VERSION) {
    uint8_t *plain;
    size_t len;
    rc = store__unseal(&txn->store->keys, kind, name, out->secret, out->secret_len, &plain, &len,
                       err);
    free(out->secret);
    out->secret = rc == 0 ? plain : NULL;
    out->secret_len = rc == 0 ? len : 0;
  }
  if (rc < 0)
    store_row_clear(out);
  return read_result(txn, rc, err);
}

/* What store_put refuses before the backend sees it. */
static int check_write(const struct store_write *w, struct tp_err *err) {
  if (w == NULL) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store_put: no write");
    return -EIO;
  }
  int rc = check_key(w->kind, w->name, "store_put", err);
  if (rc < 0)
    return rc;
  if ((w->data == NULL && w->data_len > 0) || (w->secret == NULL && w->secret_len > 0) ||
      (w->labels == NULL && w->n_labels > 0) || (w->refs == NULL && w->n_refs > 0)) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store_put: %s: a length without its bytes", w->name);
    return -EIO;
  }
  if (w->due_time_us < 0) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "store_put: %s: negative due time", w->name);
    return -EINVAL;
  }
  if (w->expire_time_us < 0) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "store_put: %s: negative expire time", w->name);
    return -EINVAL;
  }
  for (size_t i = 0; i < w->n_labels; i++) {
    if (empty(w->labels[i].key)) {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "labels: empty key");
      return -EINVAL;
    }
    for (size_t j = 0; j < i; j++)
      if (strcmp(w->labels[i].key, w->labels[j].key) == 0) {
        tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "labels: duplicate key \"%s\"",
                   w->labels[i].key);
        return -EINVAL;
      }
  }
  for (size_t i = 0; i < w->n_refs; i++) {
    const struct store_ref *r = &w->refs[i];
    if (empty(r->kind) || empty(r->name) || empty(r->field)) {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                 "store_put: %s: reference %zu lacks kind, name or field", w->name, i);
      return -EINVAL;
    }
    if (strcmp(r->kind, w->kind) == 0 && strcmp(r->name, w->name) == 0)
      return store__err_ref_self(err, r->field, r->name);
  }
  return 0;
}

/* Whether the stored secret (as the backend read it) is plain[0..len):
 * unsealed and compared in constant time, the plaintext wiped. One that
 * does not unseal is not the same. */
static int secret_same(struct store_txn *txn, const struct store_row *row, const uint8_t *plain,
                       size_t len) {
  if (row->secret == NULL || plain == NULL)
    return row->secret == NULL && plain == NULL;
  if (txn->store->schema_version < STORE_SEALED_SINCE_VERSION)
    return row->secret_len == len && CRYPTO_memcmp(row->secret, plain, len) == 0;
  struct tp_err ignored;
  uint8_t *stored;
  size_t stored_len;
  if (store__unseal(&txn->store->keys, row->kind, row->name, row->secret, row->secret_len, &stored,
                    &stored_len, &ignored) != 0)
    return 0;
  int same = stored_len == len && CRYPTO_memcmp(stored, plain, len) == 0;
  OPENSSL_cleanse(stored, stored_len);
  free(stored);
  return same;
}

/* For skip_unchanged: 1 when w leaves the stored row as it is (out, may
 * be NULL, then receives its metadata), 0 when it must be written (also
 * when the row is missing, has another etag or fails its check: the
 * backend's put refuses or replaces it), or -EIO. */
static int put_unchanged(struct store_txn *txn, const struct store_write *w, struct store_row *out,
                         struct tp_err *err) {
  struct store_row row;
  memset(&row, 0, sizeof(row));
  int rc = txn->store->ops->get(txn, w->kind, w->name, w->set_secret, &row, err);
  if (rc == -ENOENT)
    return 0;
  if (rc < 0)
    return rc;
  struct tp_err ignored;
  int same = row_check(txn, &row, &ignored) == 0 &&
             (w->expect_etag == NULL || strcmp(w->expect_etag, row.etag) == 0) &&
             row.data_len == w->data_len &&
             (w->data_len == 0 || memcmp(row.data, w->data, w->data_len) == 0) &&
             (!w->set_secret || secret_same(txn, &row, w->secret, w->secret_len));
  if (row.secret != NULL)
    OPENSSL_cleanse(row.secret, row.secret_len);
  free(row.secret);
  free(row.data);
  row.secret = row.data = NULL;
  row.secret_len = row.data_len = 0;
  if (same && out != NULL) {
    *out = row;
    return 1;
  }
  store_row_clear(&row);
  return same;
}

/* The row checks and writes of a put, the same on every backend: the row
 * exists or not as w->create says, its etag is the expected one, every
 * reference exists (named by its field, before anything is written: a
 * foreign key would refuse too, but without naming it), then the row, its
 * labels and references, and the audit row. out (may be NULL) receives
 * the written row's metadata. */
static int row_put(struct store_txn *txn, const struct store_write *w, struct store_row *out,
                   struct tp_err *err) {
  const struct store_ops *ops = txn->store->ops;
  char *current;
  int rc = ops->row_head(txn, w->kind, w->name, &current, err);
  if (rc < 0)
    return rc;
  if (rc == 1 && w->create)
    rc = store__err_exists(err, w->name);
  else if (rc == 0 && !w->create)
    rc = store__err_not_found(err, w->name);
  else if (rc == 1 && w->expect_etag && strcmp(w->expect_etag, current) != 0)
    rc = store__err_etag(err, w->name, current);
  else
    rc = 0;
  free(current);
  if (rc < 0)
    return rc;
  for (size_t i = 0; i < w->n_refs; i++) {
    const struct store_ref *r = &w->refs[i];
    rc = ops->row_exists(txn, r->kind, r->name, err);
    if (rc < 0)
      return rc;
    if (rc == 0)
      return store__err_ref_missing(err, r->field, r->name);
  }

  char etag[32];
  store__etag_format(etag, sizeof(etag), txn->revision);
  int64_t now = store__now_us();
  int64_t create_time = now;
  rc = ops->row_write(txn, w, etag, now, &create_time, err);
  if (rc == 0)
    rc = ops->labels_write(txn, w, !w->create, err);
  if (rc == 0)
    rc = ops->refs_write(txn, w, !w->create, err);
  if (rc == 0)
    rc = ops->audit_insert(txn, w->actor, w->method, w->name, w->action, w->changes, w->n_changes,
                           now, err);
  if (rc < 0 || out == NULL)
    return rc;

  out->kind = strdup(w->kind);
  out->name = strdup(w->name);
  out->etag = strdup(etag);
  if (out->kind == NULL || out->name == NULL || out->etag == NULL)
    return store__err_nomem(err, "put");
  out->revision = txn->revision;
  out->create_time_us = create_time;
  out->update_time_us = now;
  return 0;
}

/* A delete's checks and writes, the same on every backend: the row exists
 * with the expected etag and nothing refers to it. */
static int row_del(struct store_txn *txn, const char *kind, const char *name,
                   const char *expect_etag, const char *actor, const char *method,
                   struct tp_err *err) {
  const struct store_ops *ops = txn->store->ops;
  char *current;
  int rc = ops->row_head(txn, kind, name, &current, err);
  if (rc < 0)
    return rc;
  if (rc == 0)
    rc = store__err_not_found(err, name);
  else if (expect_etag && strcmp(expect_etag, current) != 0)
    rc = store__err_etag(err, name, current);
  else
    rc = 0;
  free(current);
  if (rc < 0)
    return rc;

  char *from, *field;
  rc = ops->referrer_first(txn, kind, name, &from, &field, err);
  if (rc == 1)
    rc = store__err_referenced(err, name, from, field);
  free(from);
  free(field);
  if (rc < 0)
    return rc;
  rc = ops->row_delete(txn, kind, name, err);
  if (rc < 0)
    return rc;
  return ops->audit_insert(txn, actor, method, name, "delete", NULL, 0, store__now_us(), err);
}

int store_put(struct store_txn *txn, const struct store_write *w, struct store_row *out,
              struct tp_err *err) {
  struct tp_err local; /* the failure is kept even when the caller passes no err */
  if (err == NULL)
    err = &local;
  if (out != NULL)
    memset(out, 0, sizeof(*out));
  int rc = txn_check(txn, 1, "store_put", err);
  if (rc < 0)
    return rc;
  rc = check_write(w, err);
  if (rc < 0)
    return txn_fail(txn, rc, err);
  /* The backend gets every audit string filled in. */
  struct store_write wd = *w;
  if (wd.actor == NULL)
    wd.actor = "";
  if (wd.method == NULL)
    wd.method = "";
  if (empty(wd.action))
    wd.action = wd.create ? "create" : "update";
  if (wd.expect_etag != NULL && wd.expect_etag[0] == '\0')
    wd.expect_etag = NULL;
  if (wd.skip_unchanged && !wd.create) {
    rc = put_unchanged(txn, &wd, out, err);
    if (rc < 0)
      return txn_fail(txn, rc, err);
    if (rc == 1)
      return 0;
  }
  /* The backend sees sealed secrets only. */
  uint8_t *sealed = NULL;
  if (wd.set_secret && wd.secret != NULL &&
      txn->store->schema_version >= STORE_SEALED_SINCE_VERSION) {
    size_t len;
    rc = store__seal(&txn->store->keys, wd.kind, wd.name, wd.secret, wd.secret_len, &sealed, &len,
                     err);
    if (rc < 0)
      return txn_fail(txn, rc, err);
    wd.secret = sealed;
    wd.secret_len = len;
  }
  rc = row_put(txn, &wd, out, err);
  free(sealed);
  if (rc == 0 && txn->store->schema_version >= STORE_MACS_SINCE_VERSION) {
    uint8_t mac[STORE_MAC_LEN];
    rc = store__mac(&txn->store->keys, wd.kind, wd.name, wd.data, wd.data_len, mac, err);
    if (rc == 0)
      rc = txn->store->ops->mac_set(txn, wd.kind, wd.name, mac, err);
  }
  if (rc < 0) {
    store_row_clear(out);
    return txn_fail(txn, rc, err);
  }
  audit_note(txn, wd.actor, wd.method, wd.name, wd.action);
  txn->wrote = 1;
  return 0;
}

int store_delete(struct store_txn *txn, const char *kind, const char *name, const char *expect_etag,
                 const char *actor, const char *method, struct tp_err *err) {
  struct tp_err local;
  if (err == NULL)
    err = &local;
  int rc = txn_check(txn, 1, "store_delete", err);
  if (rc < 0)
    return rc;
  rc = check_key(kind, name, "store_delete", err);
  if (rc < 0)
    return txn_fail(txn, rc, err);
  rc = row_del(txn, kind, name, empty(expect_etag) ? NULL : expect_etag, actor ? actor : "",
               method ? method : "", err);
  if (rc < 0)
    return txn_fail(txn, rc, err);
  audit_note(txn, actor ? actor : "", method ? method : "", name, "delete");
  txn->wrote = 1;
  return 0;
}

int store_list(struct store_txn *txn, const struct store_query *q, struct store_row **rows,
               size_t *n, struct tp_err *err) {
  *rows = NULL;
  *n = 0;
  int rc = txn_check(txn, 0, "store_list", err);
  if (rc < 0)
    return rc;
  if (q == NULL || empty(q->kind)) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "store_list: kind is required");
    return -EINVAL;
  }
  if (q->labels == NULL && q->n_labels > 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store_list: label count without labels");
    return -EIO;
  }
  for (size_t i = 0; i < q->n_labels; i++) {
    const struct store_label_req *l = &q->labels[i];
    if (empty(l->key) || (unsigned)l->op > STORE_LABEL_NOT_EXISTS) {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                 "label_selector: requirement %zu lacks a key or an operator", i);
      return -EINVAL;
    }
  }
  if (txn->reads != NULL)
    txn->reads->listed = 1;
  rc = txn->store->ops->list(txn, q, rows, n, err);
  for (size_t i = 0; rc == 0 && i < *n; i++)
    rc = row_check(txn, &(*rows)[i], err);
  if (rc < 0) {
    store_rows_free(*rows, *n);
    *rows = NULL;
    *n = 0;
  }
  return read_result(txn, rc, err);
}

int store_referrers(struct store_txn *txn, const char *kind, const char *name,
                    struct store_row **rows, size_t *n, struct tp_err *err) {
  *rows = NULL;
  *n = 0;
  int rc = txn_check(txn, 0, "store_referrers", err);
  if (rc == 0)
    rc = check_key(kind, name, "store_referrers", err);
  if (rc < 0)
    return rc;
  rc = txn->store->ops->referrers(txn, kind, name, rows, n, err);
  if (rc == 0 && txn->reads != NULL) {
    char *text = referrers_text(*rows, *n);
    if (text == NULL)
      txn->reads->incomplete = 1;
    else
      reads_note(txn, READ_REFERRERS, kind, name, text);
    free(text);
  }
  return read_result(txn, rc, err);
}

int store_audit_list(struct store_txn *txn, const struct store_audit_query *q,
                     struct store_audit **out, size_t *n, struct tp_err *err) {
  *out = NULL;
  *n = 0;
  int rc = txn_check(txn, 0, "store_audit_list", err);
  if (rc < 0)
    return rc;
  static const struct store_audit_query all;
  if (txn->reads != NULL)
    txn->reads->listed = 1;
  rc = txn->store->ops->audit_list(txn, q ? q : &all, out, n, err);
  return read_result(txn, rc, err);
}

int store_usage_set(struct store_txn *txn, const char *kind, const char *name, int64_t time_us,
                    struct tp_err *err) {
  int rc = txn_check(txn, 1, "store_usage_set", err);
  if (rc == 0)
    rc = check_key(kind, name, "store_usage_set", err);
  if (rc < 0 || txn->store->schema_version < STORE_SEALED_SINCE_VERSION)
    return rc;
  /* Not a write of the row: txn->wrote stays, no revision. */
  rc = txn->store->ops->usage_set(txn, kind, name, time_us, err);
  return read_result(txn, rc, err);
}

int store_usage_get(struct store_txn *txn, const char *kind, const char *name, int64_t *time_us,
                    struct tp_err *err) {
  *time_us = 0;
  int rc = txn_check(txn, 0, "store_usage_get", err);
  if (rc == 0)
    rc = check_key(kind, name, "store_usage_get", err);
  if (rc < 0 || txn->store->schema_version < STORE_SEALED_SINCE_VERSION)
    return rc;
  rc = txn->store->ops->usage_get(txn, kind, name, time_us, err);
  return read_result(txn, rc, err);
}

/* store_master_key_rotate: the old keys unseal and check, the new one
 * seals and authenticates. */
struct reseal {
  const struct store_keyring *from;
  const struct store_keyring *to;
};

/* A row is authenticated under the new key only once the old key vouched
 * for it: a rotation does not launder an edited row. */
static int remac_one(const char *kind, const char *name, const uint8_t *row_data, size_t len,
                     const uint8_t *mac, size_t mac_len, uint8_t out[STORE_MAC_LEN], void *data,
                     struct tp_err *err) {
  const struct reseal *r = data;
  int rc = store__mac_check(r->from, kind, name, row_data, len, mac, mac_len, err);
  return rc < 0 ? rc : store__mac(r->to, kind, name, row_data, len, out, err);
}

static int reseal_one(const char *kind, const char *name, const uint8_t *in, size_t len,
                      uint8_t **out, size_t *out_len, void *data, struct tp_err *err) {
  const struct reseal *r = data;
  uint8_t *plain;
  size_t plain_len;
  int rc = store__unseal(r->from, kind, name, in, len, &plain, &plain_len, err);
  if (rc < 0)
    return rc;
  rc = store__seal(r->to, kind, name, plain, plain_len, out, out_len, err);
  OPENSSL_cleanse(plain, plain_len);
  free(plain);
  return rc;
}

static int challenges_reseal(struct store_txn *txn, const struct reseal *r, struct tp_err *err);

int store_master_key_rotate(struct store *s, const uint8_t new_key[STORE_MASTER_KEY_LEN],
                            const char *actor, size_t *n, struct tp_err *err) {
  size_t count = 0;
  if (n != NULL)
    *n = 0;
  if (s == NULL || s->magic != STORE_MAGIC) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store_master_key_rotate: not an open store");
    return -EIO;
  }
  if (s->schema_version < STORE_SEALED_SINCE_VERSION) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "store: schema version %d seals no secrets (from %d on)", s->schema_version,
               STORE_SEALED_SINCE_VERSION);
    return -ENOTSUP;
  }
  struct store_keyring to = {0};
  if (store__keyring_add(&to, new_key) < 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: cannot derive the row authentication key");
    return -EIO;
  }
  struct reseal r = {.from = &s->keys, .to = &to};
  /* A server still running would keep the old key, and fail on every row
   * from the commit on: every one must be stopped first, and none may
   * start until the commit (the lock is held until then). */
  int locked = 0;
  int rc = 0;
  if (s->ops->rotation_lock != NULL) {
    if ((rc = s->ops->rotation_lock(s, err)) < 0)
      goto done;
    locked = 1;
  }
  struct store_txn *txn;
  rc = store_begin(s, 1, &txn, err);
  if (rc < 0)
    goto done;
  rc = s->ops->secrets_rewrite(txn, reseal_one, &r, &count, err);
  if (rc == 0)
    rc = challenges_reseal(txn, &r, err);
  if (rc == 0 && s->schema_version >= STORE_MACS_SINCE_VERSION) {
    size_t macs = 0;
    rc = s->ops->macs_rewrite(txn, remac_one, &r, &macs, err);
  }
  if (rc == 0)
    rc = s->ops->audit_insert(txn, actor ? actor : "", "rotate-master-key", "masterKey",
                              "rotate_master_key", NULL, 0, store__now_us(), err);
  if (rc == 0)
    audit_note(txn, actor ? actor : "", "rotate-master-key", "masterKey", "rotate_master_key");
  if (rc < 0) {
    store_rollback(txn);
    goto done;
  }
  txn->wrote = 1;
  rc = store_commit(txn, NULL, err);
  if (rc < 0)
    goto done;
  /* Committed: from now on the new key alone. */
  store__keyring_clear(&s->keys);
  s->keys = to;
  if (n != NULL)
    *n = count;
done:
  if (locked)
    s->ops->rotation_unlock(s);
  store__keyring_clear(&to);
  return rc;
}

/* ---- Pending ACME challenges ---- */

#define CHALLENGE_SEAL_NAME_MAX 1100 /* a name, '#', an index */

void store_challenges_free(struct store_challenge *c, size_t n) {
  if (c == NULL)
    return;
  for (size_t i = 0; i < n; i++) {
    free(c[i].certificate);
    free(c[i].data);
    if (c[i].secret != NULL)
      OPENSSL_cleanse(c[i].secret, c[i].secret_len);
    free(c[i].secret);
  }
  free(c);
}

/* The associated data of a challenge's sealed key. */
static void challenge_seal_name(char *buf, size_t len, const char *certificate, int64_t index) {
  snprintf(buf, len, "%s#%lld", certificate, (long long)index);
}

int store_challenges_set(struct store_txn *txn, const char *certificate,
                         const struct store_challenge *c, size_t n, const char *actor,
                         const char *method, const char *action, struct tp_err *err) {
  struct tp_err local;
  if (err == NULL)
    err = &local;
  int rc = txn_check(txn, 1, "store_challenges_set", err);
  if (rc < 0)
    return rc;
  if (txn->store->schema_version < STORE_CHALLENGES_SINCE_VERSION) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "store: schema version %d holds no ACME challenges (from %d on)",
               txn->store->schema_version, STORE_CHALLENGES_SINCE_VERSION);
    return txn_fail(txn, -ENOTSUP, err);
  }
  rc = check_key("Certificate", certificate, "store_challenges_set", err);
  if (rc < 0)
    return txn_fail(txn, rc, err);
  const char *slash = strchr(certificate, '/');
  char resource[256];
  snprintf(resource, sizeof(resource), "acmeChallenges/%s",
           slash != NULL ? slash + 1 : certificate);
  struct store_challenge *sealed = calloc(n + 1, sizeof(*sealed));
  if (sealed == NULL)
    return txn_fail(txn, store__err_nomem(err, "challenges"), err);
  for (size_t i = 0; rc == 0 && i < n; i++) {
    char name[CHALLENGE_SEAL_NAME_MAX];
    challenge_seal_name(name, sizeof(name), certificate, c[i].index);
    sealed[i] = c[i];
    sealed[i].secret = NULL;
    rc = store__seal(&txn->store->keys, STORE_CHALLENGE_KIND, name, c[i].secret, c[i].secret_len,
                     &sealed[i].secret, &sealed[i].secret_len, err);
  }
  if (rc == 0) {
    rc = txn->store->ops->row_exists(txn, "Certificate", certificate, err);
    rc = rc < 0 ? rc : rc == 0 ? store__err_not_found(err, certificate) : 0;
  }
  if (rc == 0)
    rc = txn->store->ops->challenges_set(txn, certificate, sealed, n, err);
  if (rc == 0)
    rc = txn->store->ops->audit_insert(txn, actor ? actor : "", method ? method : "", resource,
                                       action ? action : "update", NULL, 0, store__now_us(), err);
  for (size_t i = 0; i < n; i++)
    free(sealed[i].secret);
  free(sealed);
  if (rc < 0)
    return txn_fail(txn, rc, err);
  audit_note(txn, actor ? actor : "", method ? method : "", resource, action ? action : "update");
  txn->wrote = 1;
  return 0;
}

int store_challenges_list(struct store_txn *txn, struct store_challenge **out, size_t *n,
                          struct tp_err *err) {
  *out = NULL;
  *n = 0;
  int rc = txn_check(txn, 0, "store_challenges_list", err);
  if (rc < 0)
    return rc;
  if (txn->store->schema_version < STORE_CHALLENGES_SINCE_VERSION)
    return 0;
  struct store_challenge *c = NULL;
  size_t count = 0;
  rc = txn->store->ops->challenges_list(txn, &c, &count, err);
  for (size_t i = 0; rc == 0 && i < count; i++) {
    char name[CHALLENGE_SEAL_NAME_MAX];
    challenge_seal_name(name, sizeof(name), c[i].certificate, c[i].index);
    uint8_t *plain = NULL;
    size_t len = 0;
    rc = store__unseal(&txn->store->keys, STORE_CHALLENGE_KIND, name, c[i].secret, c[i].secret_len,
                       &plain, &len, err);
    free(c[i].secret);
    c[i].secret = plain;
    c[i].secret_len = len;
  }
  if (rc < 0) {
    store_challenges_free(c, count);
    return read_result(txn, rc, err);
  }
  *out = c;
  *n = count;
  return 0;
}

/* A rotation re-seals the challenges' keys too, one certificate at a
 * time. */
static int challenges_reseal(struct store_txn *txn, const struct reseal *r, struct tp_err *err) {
  if (txn->store->schema_version < STORE_CHALLENGES_SINCE_VERSION)
    return 0;
  struct store_challenge *c = NULL;
  size_t n = 0;
  int rc = txn->store->ops->challenges_list(txn, &c, &n, err);
  for (size_t i = 0; rc == 0 && i < n; i++) {
    char name[CHALLENGE_SEAL_NAME_MAX];
    challenge_seal_name(name, sizeof(name), c[i].certificate, c[i].index);
    uint8_t *again = NULL;
    size_t len = 0;
    rc = reseal_one(STORE_CHALLENGE_KIND, name, c[i].secret, c[i].secret_len, &again, &len,
                    (void *)r, err);
    free(c[i].secret);
    c[i].secret = again;
    c[i].secret_len = len;
  }
  for (size_t i = 0, first = 0; rc == 0 && i < n; i++)
    if (i + 1 == n || strcmp(c[i + 1].certificate, c[first].certificate) != 0) {
      rc =
          txn->store->ops->challenges_set(txn, c[first].certificate, &c[first], i + 1 - first, err);
      first = i + 1;
    }
  store_challenges_free(c, n);
  return rc;
}
