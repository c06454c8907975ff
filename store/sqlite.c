/* The SQLite backend of the store.
 *
 * One database file in WAL mode with synchronous=FULL, so that a commit
 * that returned survives a crash, and foreign keys on. The store keeps a
 * small pool of connections; every transaction takes one for its lifetime
 * and gives it back at commit or rollback. Write transactions also hold
 * write_lock from begin to end, so writers run one at a time and each
 * knows its revision (committed + 1) when it begins; BEGIN IMMEDIATE takes
 * SQLite's own write lock as well, which guards against other processes.
 * Readers never wait for the writer: WAL gives each its snapshot.
 *
 * The schema is built by the numbered steps of `migrations`, each in its
 * own transaction and recorded in schema_migrations. A store opened at an
 * older version (store_open_version) works without what later steps add:
 * before version 2 there is no audit trail, before version 3 secrets are
 * stored as given (store.c seals them from version 3 on; the migration to
 * version 3 seals those already stored, in the same transaction), before
 * version 4 rows carry no MAC (the migration to version 4 authenticates
 * those already stored).
 *
 * Every value reaches SQL through a bound parameter; the only SQL built at
 * run time (store_list, store_audit_list) joins fixed fragments.
 *
 * The file is not trusted to hold only what the migrations made: whoever
 * can write it can add a trigger (copying each row as it is written, or
 * rewriting it) or turn a table into a view. The schema has neither, so
 * every connection runs with both off, in defensive mode (no writable
 * schema, no corrupting pragmas) and with an untrusted schema (functions
 * with side effects cannot run from it). Foreign-key actions are not
 * triggers and stay on. */
#include "store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POOL_MAX 16                   /* connections; a thread holds at most one */
#define BUSY_TIMEOUT_MS 10000         /* waiting for another process's lock */
#define AUDIT_SINCE_VERSION 2         /* the first schema version with the audit table */
#define AUDIT_CHANGES_SINCE_VERSION 6 /* the first with audit_changes */
#define DUE_SINCE_VERSION 7           /* the first with resources.due_time_us */

struct conn;
struct sqlite_store;

struct migration {
  int version;
  const char *description;
  const char *sql; /* run whole by sqlite3_exec; constant text only */
  /* Runs after sql, in the same transaction; may be NULL. */
  int (*run)(struct conn *c, struct sqlite_store *s, struct tp_err *err);
};

static int seal_existing(struct conn *c, struct sqlite_store *s, struct tp_err *err);
static int mac_existing(struct conn *c, struct sqlite_store *s, struct tp_err *err);

static const struct migration migrations[] = {
    {1, "resources, labels, references and the global revision",
     "CREATE TABLE meta (\n"
     "  id INTEGER PRIMARY KEY CHECK (id = 1),\n"
     "  revision INTEGER NOT NULL\n"
     ");\n"
     "INSERT INTO meta (id, revision) VALUES (1, 0);\n"
     "CREATE TABLE resources (\n"
     "  kind TEXT NOT NULL,\n"
     "  name TEXT NOT NULL,\n"
     "  etag TEXT NOT NULL,\n"
     "  revision INTEGER NOT NULL,\n"
     "  create_time_us INTEGER NOT NULL,\n"
     "  update_time_us INTEGER NOT NULL,\n"
     "  data BLOB NOT NULL,\n"
     "  secret BLOB,\n"
     "  expire_time_us INTEGER NOT NULL DEFAULT 0,\n"
     "  PRIMARY KEY (kind, name)\n"
     ") WITHOUT ROWID;\n"
     "CREATE TABLE labels (\n"
     "  kind TEXT NOT NULL,\n"
     "  name TEXT NOT NULL,\n"
     "  key TEXT NOT NULL,\n"
     "  value TEXT NOT NULL,\n"
     "  PRIMARY KEY (kind, name, key),\n"
     "  FOREIGN KEY (kind, name) REFERENCES resources (kind, name) ON DELETE CASCADE\n"
     ") WITHOUT ROWID;\n"
     /* A referrer takes its references with it; a referenced row cannot
      * go while they exist. store_delete checks first to name the
      * referrer, the RESTRICT key is the backstop. */
     "CREATE TABLE refs (\n"
     "  from_kind TEXT NOT NULL,\n"
     "  from_name TEXT NOT NULL,\n"
     "  to_kind TEXT NOT NULL,\n"
     "  to_name TEXT NOT NULL,\n"
     "  field TEXT NOT NULL,\n"
     "  FOREIGN KEY (from_kind, from_name) REFERENCES resources (kind, name)\n"
     "    ON DELETE CASCADE,\n"
     "  FOREIGN KEY (to_kind, to_name) REFERENCES resources (kind, name)\n"
     "    ON DELETE RESTRICT\n"
     ");\n"
     "CREATE INDEX refs_from ON refs (from_kind, from_name);\n"
     "CREATE INDEX refs_to ON refs (to_kind, to_name);\n",
     NULL},
    {2, "audit trail; expiry index",
     "CREATE TABLE audit (\n"
     "  seq INTEGER PRIMARY KEY AUTOINCREMENT,\n"
     "  revision INTEGER NOT NULL,\n"
     "  time_us INTEGER NOT NULL,\n"
     "  actor TEXT NOT NULL,\n"
     "  method TEXT NOT NULL,\n"
     "  resource TEXT NOT NULL,\n"
     "  action TEXT NOT NULL\n"
     ");\n"
     "CREATE INDEX audit_resource ON audit (resource, seq);\n"
     "CREATE INDEX audit_actor ON audit (actor, seq);\n"
     "CREATE INDEX audit_revision ON audit (revision);\n"
     /* Only rows that expire; the expiry scan asks for the few of them
      * due soon. */
     "CREATE INDEX resources_expire ON resources (kind, expire_time_us)\n"
     "  WHERE expire_time_us > 0;\n"
     /* Resources written before the audit trail existed get one event,
      * their last write as the upgrade found it, so that every resource
      * has a history. */
     "INSERT INTO audit (revision, time_us, actor, method, resource, action)\n"
     "  SELECT revision, update_time_us, 'tlsplane', 'schema migration 2', name, 'import'\n"
     "  FROM resources ORDER BY revision, kind, name;\n",
     NULL},
    {3, "secrets sealed under the master key; last use of credentials",
     /* When a token or a client certificate last authenticated a call:
      * not a change of the resource (no revision, no etag). */
     "CREATE TABLE usage (\n"
     "  kind TEXT NOT NULL,\n"
     "  name TEXT NOT NULL,\n"
     "  last_used_us INTEGER NOT NULL,\n"
     "  PRIMARY KEY (kind, name),\n"
     "  FOREIGN KEY (kind, name) REFERENCES resources (kind, name) ON DELETE CASCADE\n"
     ") WITHOUT ROWID;\n",
     seal_existing},
    {4, "rows authenticated under the master key",
     /* One MAC per row (seal.c), beside it so that the statements of
      * older schemas stay as they are; a row without one is refused. */
     "CREATE TABLE macs (\n"
     "  kind TEXT NOT NULL,\n"
     "  name TEXT NOT NULL,\n"
     "  mac BLOB NOT NULL,\n"
     "  PRIMARY KEY (kind, name),\n"
     "  FOREIGN KEY (kind, name) REFERENCES resources (kind, name) ON DELETE CASCADE\n"
     ") WITHOUT ROWID;\n",
     mac_existing},
    {5, "labels found by value",
     /* A selector such as agent=edge-1 among thousands of rows of a kind
      * finds its rows through this index instead of testing every row. */
     "CREATE INDEX labels_value ON labels (kind, key, value, name);\n", NULL},
    {6, "what each audited write changed; audit by time",
     /* Rows of older writes have none. Values are what the API shows
      * (serial numbers, key ids, resource names), never secrets. */
     "CREATE TABLE audit_changes (\n"
     "  seq INTEGER NOT NULL REFERENCES audit (seq),\n"
     "  idx INTEGER NOT NULL,\n"
     "  field TEXT NOT NULL,\n"
     "  before_value TEXT NOT NULL,\n"
     "  after_value TEXT NOT NULL,\n"
     "  PRIMARY KEY (seq, idx)\n"
     ") WITHOUT ROWID;\n"
     "CREATE INDEX audit_time ON audit (time_us, seq);\n",
     NULL},
    {7, "when background jobs next have work on a row",
     /* Only rows with work scheduled; the job thread asks for the few of
      * them due now (store_query.due_before_us). */
     "ALTER TABLE resources ADD COLUMN due_time_us INTEGER NOT NULL DEFAULT 0;\n"
     "CREATE INDEX resources_due ON resources (kind, due_time_us)\n"
     "  WHERE due_time_us > 0;\n",
     NULL},
};

#define N_MIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

/* The fixed statements, prepared once per connection on first use. */
enum stmt_id {
  ST_BEGIN,
  ST_BEGIN_IMMEDIATE,
  ST_COMMIT,
  ST_ROLLBACK,
  ST_META_GET,
  ST_META_SET,
  ST_HEAD,
  ST_EXISTS,
  ST_GET,
  ST_GET_SECRET,
  ST_INSERT,
  ST_UPDATE,
  ST_UPDATE_SECRET,
  ST_LABELS_DELETE,
  ST_LABEL_INSERT,
  ST_REFS_DELETE,
  ST_REF_INSERT,
  ST_REFERRER_FIRST,
  ST_REFERRERS,
  ST_DELETE,
  ST_AUDIT_INSERT,
  ST_AUDIT_CHANGE_INSERT,
  ST_AUDIT_CHANGES,
  ST_SECRETS_ALL,
  ST_SECRET_SET,
  ST_SEALED_KEY_IDS,
  ST_USAGE_SET,
  ST_USAGE_GET,
  ST_MAC_GET,
  ST_MAC_SET,
  ST_MACS_ALL,
  ST_DUE_SET,
  ST_COUNT
};

static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN",
    [ST_BEGIN_IMMEDIATE] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_META_GET] = "SELECT revision FROM meta WHERE id = 1",
    [ST_META_SET] = "UPDATE meta SET revision = ?1 WHERE id = 1",
    [ST_HEAD] = "SELECT etag FROM resources WHERE kind = ?1 AND name = ?2",
    [ST_EXISTS] = "SELECT 1 FROM resources WHERE kind = ?1 AND name = ?2",
    [ST_GET] = "SELECT kind, name, etag, revision, create_time_us, update_time_us, data"
               " FROM resources WHERE kind = ?1 AND name = ?2",
    [ST_GET_SECRET] = "SELECT kind, name, etag, revision, create_time_us, update_time_us, data,"
                      " secret FROM resources WHERE kind = ?1 AND name = ?2",
    [ST_INSERT] = "INSERT INTO resources (kind, name, etag, revision, create_time_us,"
                  " update_time_us, data, expire_time_us, secret)"
                  " VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8)"
                  " RETURNING create_time_us",
    [ST_UPDATE] = "UPDATE resources SET etag = ?3, revision = ?4, update_time_us = ?5, data = ?6,"
                  " expire_time_us = ?7 WHERE kind = ?1 AND name = ?2"
                  " RETURNING create_time_us",
    [ST_UPDATE_SECRET] = "UPDATE resources SET etag = ?3, revision = ?4, update_time_us = ?5,"
                         " data = ?6, expire_time_us = ?7, secret = ?8"
                         " WHERE kind = ?1 AND name = ?2 RETURNING create_time_us",
    [ST_LABELS_DELETE] = "DELETE FROM labels WHERE kind = ?1 AND name = ?2",
    [ST_LABEL_INSERT] = "INSERT INTO labels (kind, name, key, value) VALUES (?1, ?2, ?3, ?4)",
    [ST_REFS_DELETE] = "DELETE FROM refs WHERE from_kind = ?1 AND from_name = ?2",
    [ST_REF_INSERT] = "INSERT INTO refs (from_kind, from_name, to_kind, to_name, field)"
                      " VALUES (?1, ?2, ?3, ?4, ?5)",
    [ST_REFERRER_FIRST] = "SELECT from_name, field FROM refs WHERE to_kind = ?1 AND to_name = ?2"
                          " ORDER BY from_name, field LIMIT 1",
    [ST_REFERRERS] = "SELECT DISTINCT r.kind, r.name, r.etag, r.revision"
                     " FROM refs f JOIN resources r"
                     " ON r.kind = f.from_kind AND r.name = f.from_name"
                     " WHERE f.to_kind = ?1 AND f.to_name = ?2 ORDER BY r.name, r.kind",
    [ST_DELETE] = "DELETE FROM resources WHERE kind = ?1 AND name = ?2",
    [ST_AUDIT_INSERT] = "INSERT INTO audit (revision, time_us, actor, method, resource, action)"
                        " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [ST_AUDIT_CHANGE_INSERT] = "INSERT INTO audit_changes (seq, idx, field, before_value,"
                               " after_value) VALUES (?1, ?2, ?3, ?4, ?5)",
    [ST_AUDIT_CHANGES] = "SELECT field, before_value, after_value FROM audit_changes"
                         " WHERE seq = ?1 ORDER BY idx",
    [ST_SECRETS_ALL] = "SELECT kind, name, secret FROM resources WHERE secret IS NOT NULL"
                       " ORDER BY kind, name",
    [ST_SECRET_SET] = "UPDATE resources SET secret = ?3 WHERE kind = ?1 AND name = ?2",
    [ST_SEALED_KEY_IDS] = "SELECT DISTINCT substr(secret, 2, 8) FROM resources"
                          " WHERE secret IS NOT NULL",
    [ST_USAGE_SET] = "INSERT INTO usage (kind, name, last_used_us) VALUES (?1, ?2, ?3)"
                     " ON CONFLICT (kind, name) DO UPDATE SET last_used_us = excluded.last_used_us",
    [ST_DUE_SET] = "UPDATE resources SET due_time_us = ?3 WHERE kind = ?1 AND name = ?2",
    [ST_USAGE_GET] = "SELECT last_used_us FROM usage WHERE kind = ?1 AND name = ?2",
    [ST_MAC_GET] = "SELECT mac FROM macs WHERE kind = ?1 AND name = ?2",
    [ST_MAC_SET] = "INSERT INTO macs (kind, name, mac) VALUES (?1, ?2, ?3)"
                   " ON CONFLICT (kind, name) DO UPDATE SET mac = excluded.mac",
    [ST_MACS_ALL] = "SELECT r.kind, r.name, r.data, m.mac FROM resources r"
                    " LEFT JOIN macs m ON m.kind = r.kind AND m.name = r.name"
                    " ORDER BY r.kind, r.name",
};

/* One connection and its prepared statements. Used by one transaction at a
 * time; idle ones wait in the pool outside any transaction. */
struct conn {
  sqlite3 *db;
  sqlite3_stmt *stmt[ST_COUNT]; /* NULL until first used */
};

struct sqlite_store {
  struct store base;
  char *path;
  pthread_mutex_t write_lock; /* held by the one write txn, begin to end */
  pthread_mutex_t pool_lock;  /* guards idle, n_idle, n_open */
  pthread_cond_t pool_cond;   /* a connection came back, or a slot came free */
  struct conn *idle[POOL_MAX];
  int n_idle;
  int n_open; /* idle + in use; at most POOL_MAX */
};

struct sqlite_txn {
  struct store_txn base;
  struct conn *conn;
};

static struct sqlite_store *to_store(struct store *s) {
  return (struct sqlite_store *)s;
}

static struct sqlite_txn *to_txn(struct store_txn *t) {
  return (struct sqlite_txn *)t;
}

static int db_fail(struct tp_err *err, sqlite3 *db, const char *what) {
  tp_err_set(err, GRPC_STATUS_INTERNAL, "store: %s: %s", what,
             db ? sqlite3_errmsg(db) : "out of memory");
  return -EIO;
}

static void conn_close(struct conn *c) {
  if (c == NULL)
    return;
  for (int i = 0; i < ST_COUNT; i++)
    sqlite3_finalize(c->stmt[i]);
  sqlite3_close(c->db);
  free(c);
}

/* Runs a pragma that answers one row and returns its text in buf. */
static int pragma_query(sqlite3 *db, const char *sql, char *buf, size_t len, struct tp_err *err) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
    return db_fail(err, db, sql);
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    db_fail(err, db, sql);
    sqlite3_finalize(st);
    return -EIO;
  }
  const unsigned char *t = sqlite3_column_text(st, 0);
  snprintf(buf, len, "%s", t ? (const char *)t : "");
  sqlite3_finalize(st);
  return 0;
}

/* What a planted trigger or view could do is switched off (see above).
 * Each setting is read back: a build that ignores one is refused. */
static int db_harden(sqlite3 *db, const char *path, struct tp_err *err) {
  static const struct {
    int op;
    int value;
    const char *name;
  } settings[] = {
      {SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, "triggers off"},
      {SQLITE_DBCONFIG_ENABLE_VIEW, 0, "views off"},
      {SQLITE_DBCONFIG_DEFENSIVE, 1, "defensive mode"},
      {SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, "untrusted schema"},
  };
  for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
    int now = -1;
    if (sqlite3_db_config(db, settings[i].op, settings[i].value, &now) != SQLITE_OK ||
        now != settings[i].value) {
      tp_err_set(err, GRPC_STATUS_INTERNAL, "store: %s: this SQLite cannot set %s", path,
                 settings[i].name);
      return -EIO;
    }
  }
  return 0;
}

/* PRAGMA journal_mode = WAL into mode. Switching a new database to WAL
 * takes an exclusive lock, and SQLite answers SQLITE_BUSY at once, without
 * its busy handler, while another connection opens the same new file:
 * tried again every 10 ms for the busy timeout. */
static int wal_mode(sqlite3 *db, char *mode, size_t len, struct tp_err *err) {
  for (int waited = 0;; waited += 10) {
    int rc = pragma_query(db, "PRAGMA journal_mode = WAL", mode, len, err);
    if (rc == 0 || (sqlite3_errcode(db) & 0xff) != SQLITE_BUSY || waited >= BUSY_TIMEOUT_MS)
      return rc;
    usleep(10000);
  }
}

static int conn_open(const char *path, struct conn **out, struct tp_err *err) {
  struct conn *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return store__err_nomem(err, "open");
  /* Each connection serves one thread at a time: no SQLite mutex needed. */
  int rc = sqlite3_open_v2(path, &c->db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: open %s: %s", path,
               c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
    goto failed_open;
  }
  sqlite3_extended_result_codes(c->db, 1);
  sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
  if (db_harden(c->db, path, err) < 0)
    goto failed_open;
  char mode[16];
  if (wal_mode(c->db, mode, sizeof(mode), err) < 0)
    goto failed_open;
  if (strcmp(mode, "wal") != 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: %s: cannot use WAL (journal mode is %s)", path,
               mode);
    goto failed_open;
  }
  char *msg = NULL;
  if (sqlite3_exec(c->db, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;", NULL, NULL,
                   &msg) != SQLITE_OK) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: %s: pragmas: %s", path, msg ? msg : "?");
    sqlite3_free(msg);
    goto failed_open;
  }
  /* A build without foreign keys accepts the pragma and ignores it. */
  char fk[8];
  if (pragma_query(c->db, "PRAGMA foreign_keys", fk, sizeof(fk), err) < 0)
    goto failed_open;
  if (strcmp(fk, "1") != 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: this SQLite does not enforce foreign keys");
    goto failed_open;
  }
  *out = c;
  return 0;

failed_open:
  conn_close(c);
  return -EIO;
}

/* Binds parameters 1, 2, ... from fmt: 't' const char * (NULL binds NULL),
 * 'i' int64_t, 'b' const void * and size_t (NULL binds NULL), 'B' the same
 * but never NULL (an empty blob instead). Values must outlive the step. */
static int bind_va(sqlite3_stmt *st, const char *fmt, va_list ap) {
  int rc = SQLITE_OK;
  for (int i = 1; rc == SQLITE_OK && fmt[i - 1] != '\0'; i++) {
    switch (fmt[i - 1]) {
    case 't': {
      const char *s = va_arg(ap, const char *);
      rc = sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
      break;
    }
    case 'i':
      rc = sqlite3_bind_int64(st, i, va_arg(ap, int64_t));
      break;
    case 'b':
    case 'B': {
      const void *p = va_arg(ap, const void *);
      size_t len = va_arg(ap, size_t);
      if (p == NULL && fmt[i - 1] == 'B')
        p = "";
      if (len > INT32_MAX)
        return SQLITE_TOOBIG;
      rc = sqlite3_bind_blob(st, i, p, (int)len, SQLITE_STATIC);
      break;
    }
    default:
      return SQLITE_MISUSE;
    }
  }
  return rc;
}

/* The prepared statement id, prepared on first use. */
static sqlite3_stmt *stmt_get(struct conn *c, enum stmt_id id, struct tp_err *err) {
  if (c->stmt[id] == NULL && sqlite3_prepare_v3(c->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                                &c->stmt[id], NULL) != SQLITE_OK) {
    db_fail(err, c->db, stmt_sql[id]);
    return NULL;
  }
  return c->stmt[id];
}

/* Makes st ready for its next use and drops its bindings, which point
 * into the caller's memory. */
static void stmt_done(sqlite3_stmt *st) {
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
}

/* The statement id bound from fmt (see bind_va); NULL with err set. The
 * caller steps it and ends with stmt_done. */
static sqlite3_stmt *stmt_prepare(struct conn *c, enum stmt_id id, struct tp_err *err,
                                  const char *fmt, ...) {
  sqlite3_stmt *st = stmt_get(c, id, err);
  if (st == NULL)
    return NULL;
  va_list ap;
  va_start(ap, fmt);
  int rc = bind_va(st, fmt, ap);
  va_end(ap);
  if (rc != SQLITE_OK) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: bind: %s", sqlite3_errstr(rc));
    stmt_done(st);
    return NULL;
  }
  return st;
}

/* Runs the statement id, bound from fmt, which returns no rows. */
static int stmt_exec(struct conn *c, enum stmt_id id, const char *what, struct tp_err *err,
                     const char *fmt, ...) {
  sqlite3_stmt *st = stmt_get(c, id, err);
  if (st == NULL)
    return -EIO;
  va_list ap;
  va_start(ap, fmt);
  int rc = bind_va(st, fmt, ap);
  va_end(ap);
  if (rc != SQLITE_OK) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: %s: bind: %s", what, sqlite3_errstr(rc));
    stmt_done(st);
    return -EIO;
  }
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: %s: unexpected row", what);
  else if (rc != SQLITE_DONE)
    db_fail(err, c->db, what);
  stmt_done(st);
  return rc == SQLITE_DONE ? 0 : -EIO;
}

/* Copies column i (text) into *out; a NULL column gives NULL. */
static int col_text(sqlite3_stmt *st, int i, char **out) {
  const unsigned char *t = sqlite3_column_text(st, i);
  if (t == NULL) {
    *out = NULL;
    return sqlite3_errcode(sqlite3_db_handle(st)) == SQLITE_NOMEM ? -ENOMEM : 0;
  }
  *out = strdup((const char *)t);
  return *out ? 0 : -ENOMEM;
}

/* Copies column i (blob); an empty or NULL column gives NULL, length 0. */
static int col_blob(sqlite3_stmt *st, int i, uint8_t **out, size_t *len) {
  const void *p = sqlite3_column_blob(st, i);
  int n = sqlite3_column_bytes(st, i);
  *out = NULL;
  *len = 0;
  if (n <= 0)
    return 0;
  if (p == NULL)
    return -ENOMEM;
  *out = store__memdup(p, (size_t)n);
  if (*out == NULL)
    return -ENOMEM;
  *len = (size_t)n;
  return 0;
}

/* Reads the columns kind, name, etag, revision and, with `times`,
 * create_time_us, update_time_us, data, and then secret if with_secret. */
static int row_read(sqlite3_stmt *st, int times, int with_secret, struct store_row *row) {
  if (col_text(st, 0, &row->kind) < 0 || col_text(st, 1, &row->name) < 0 ||
      col_text(st, 2, &row->etag) < 0)
    return -ENOMEM;
  row->revision = sqlite3_column_int64(st, 3);
  if (!times)
    return 0;
  row->create_time_us = sqlite3_column_int64(st, 4);
  row->update_time_us = sqlite3_column_int64(st, 5);
  if (col_blob(st, 6, &row->data, &row->data_len) < 0)
    return -ENOMEM;
  if (with_secret && col_blob(st, 7, &row->secret, &row->secret_len) < 0)
    return -ENOMEM;
  return 0;
}

/* The pool. Connections open lazily up to POOL_MAX; beyond that a
 * transaction waits for one to come back. */
static int pool_take(struct sqlite_store *s, struct conn **out, struct tp_err *err) {
  pthread_mutex_lock(&s->pool_lock);
  while (s->n_idle == 0 && s->n_open >= POOL_MAX)
    pthread_cond_wait(&s->pool_cond, &s->pool_lock);
  if (s->n_idle > 0) {
    *out = s->idle[--s->n_idle];
    pthread_mutex_unlock(&s->pool_lock);
    return 0;
  }
  s->n_open++;
  pthread_mutex_unlock(&s->pool_lock);
  int rc = conn_open(s->path, out, err);
  if (rc < 0) {
    pthread_mutex_lock(&s->pool_lock);
    s->n_open--;
    pthread_cond_signal(&s->pool_cond);
    pthread_mutex_unlock(&s->pool_lock);
  }
  return rc;
}

static void pool_give(struct sqlite_store *s, struct conn *c) {
  /* A connection still inside a transaction (its ROLLBACK failed) would
   * hand that transaction to the next user: close it instead. */
  int broken = !sqlite3_get_autocommit(c->db);
  if (broken)
    conn_close(c);
  pthread_mutex_lock(&s->pool_lock);
  if (broken)
    s->n_open--;
  else
    s->idle[s->n_idle++] = c;
  pthread_cond_signal(&s->pool_cond);
  pthread_mutex_unlock(&s->pool_lock);
}

static int meta_revision(struct conn *c, int64_t *out, struct tp_err *err) {
  sqlite3_stmt *st = stmt_prepare(c, ST_META_GET, err, "");
  if (st == NULL)
    return -EIO;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    *out = sqlite3_column_int64(st, 0);
  else if (rc == SQLITE_DONE)
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: the meta row is missing");
  else
    db_fail(err, c->db, "read the revision");
  stmt_done(st);
  return rc == SQLITE_ROW ? 0 : -EIO;
}

static void rollback_quiet(struct conn *c) {
  if (!sqlite3_get_autocommit(c->db))
    stmt_exec(c, ST_ROLLBACK, "rollback", NULL, "");
}

/* Reads the schema version; 0 before the first migration. */
static int schema_version_read(struct conn *c, int *out, struct tp_err *err) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(c->db, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations", -1, &st,
                         NULL) != SQLITE_OK)
    return db_fail(err, c->db, "read the schema version");
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    *out = sqlite3_column_int(st, 0);
  else
    db_fail(err, c->db, "read the schema version");
  sqlite3_finalize(st);
  return rc == SQLITE_ROW ? 0 : -EIO;
}

static int migration_record(struct conn *c, const struct migration *m, struct tp_err *err) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(c->db,
                         "INSERT INTO schema_migrations (version, description, applied_time_us)"
                         " VALUES (?1, ?2, ?3)",
                         -1, &st, NULL) != SQLITE_OK)
    return db_fail(err, c->db, "record the migration");
  sqlite3_bind_int(st, 1, m->version);
  sqlite3_bind_text(st, 2, m->description, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, store__now_us());
  int rc = sqlite3_step(st);
  if (rc != SQLITE_DONE)
    db_fail(err, c->db, "record the migration");
  sqlite3_finalize(st);
  return rc == SQLITE_DONE ? 0 : -EIO;
}

/* How many objects the file's schema has besides schema_migrations. */
static int schema_objects_other(struct conn *c, int *n, struct tp_err *err) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(c->db,
                         "SELECT count(*) FROM sqlite_schema WHERE name <> 'schema_migrations'", -1,
                         &st, NULL) != SQLITE_OK)
    return db_fail(err, c->db, "read the schema");
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    *n = sqlite3_column_int(st, 0);
  else
    db_fail(err, c->db, "read the schema");
  sqlite3_finalize(st);
  return rc == SQLITE_ROW ? 0 : -EIO;
}

/* One transaction: reads the version (inside it, in case another process
 * migrated meanwhile) and applies the next step towards target. Returns 1
 * with *version set once the schema is at target, 0 after a step. */
static int migrate_step(struct conn *c, struct sqlite_store *s, const char *path, int target,
                        int min_version, int *version, struct tp_err *err) {
  char *msg = NULL;
  int current = 0;
  int rc = -EIO;
  if (sqlite3_exec(c->db,
                   "BEGIN IMMEDIATE;"
                   "CREATE TABLE IF NOT EXISTS schema_migrations ("
                   "  version INTEGER PRIMARY KEY,"
                   "  description TEXT NOT NULL,"
                   "  applied_time_us INTEGER NOT NULL)",
                   NULL, NULL, &msg) != SQLITE_OK) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: %s: schema_migrations: %s", path,
               msg ? msg : sqlite3_errmsg(c->db));
    goto failed;
  }
  if (schema_version_read(c, &current, err) < 0)
    goto failed;
  if (current == 0) {
    /* No history: a new database has nothing else in it. Tables (or
     * anything) without one are not ours to adopt or to migrate. */
    int others = 0;
    if ((rc = schema_objects_other(c, &others, err)) < 0)
      goto failed;
    rc = -EIO;
    if (others > 0) {
      tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                 "store: %s holds %d tables, indexes, views or triggers but no schema history: "
                 "not a tlsplane database (a foreign or hand-made file)",
                 path, others);
      rollback_quiet(c);
      return -ENODATA;
    }
  } else if (current < min_version) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "store: %s: database schema version %d is older than %d, the version this "
               "database has had already: an older copy was put in its place",
               path, current, min_version);
    rollback_quiet(c);
    return -EPROTO;
  }
  if (current > target) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "store: %s: database schema version %d is newer than %d%s", path, current, target,
               target == N_MIGRATIONS ? ", the latest this build knows" : "");
    rollback_quiet(c);
    return -ENOTSUP;
  }
  if (current < target) {
    const struct migration *m = &migrations[current];
    if (sqlite3_exec(c->db, m->sql, NULL, NULL, &msg) != SQLITE_OK) {
      tp_err_set(err, GRPC_STATUS_INTERNAL, "store: %s: migration %d (%s): %s", path, m->version,
                 m->description, msg ? msg : sqlite3_errmsg(c->db));
      goto failed;
    }
    if (m->run != NULL && (rc = m->run(c, s, err)) < 0)
      goto failed;
    rc = -EIO;
    if (migration_record(c, m, err) < 0)
      goto failed;
  }
  if (stmt_exec(c, ST_COMMIT, "commit the migration", err, "") < 0)
    goto failed;
  *version = current < target ? current + 1 : current;
  return current == target;

failed:
  sqlite3_free(msg);
  rollback_quiet(c);
  return rc;
}

/* Applies the steps of `migrations` in order until the schema is at
 * target. */
static int migrate(struct conn *c, struct sqlite_store *s, const char *path, int target,
                   int min_version, int *version, struct tp_err *err) {
  int rc;
  /* The floor is for the schema found, not for the steps taken from it. */
  while ((rc = migrate_step(c, s, path, target, min_version, version, err)) == 0)
    min_version = 0;
  return rc < 0 ? rc : 0;
}

/* Replaces every stored secret by fn's result, on c inside its
 * transaction. The secrets are read first, then written: the rewrite never
 * steps a query over the rows it changes. */
static int conn_secrets_rewrite(struct conn *c, store__rewrite_fn fn, void *data, size_t *n,
                                struct tp_err *err) {
  struct store_row *rows = NULL;
  size_t count = 0, cap = 0;
  int rc = 0;
  *n = 0;
  sqlite3_stmt *st = stmt_prepare(c, ST_SECRETS_ALL, err, "");
  if (st == NULL)
    return -EIO;
  int step;
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    if (store__rows_reserve(&rows, count, &cap) < 0) {
      rc = store__err_nomem(err, "read the secrets");
      break;
    }
    struct store_row *r = &rows[count++];
    if (col_text(st, 0, &r->kind) < 0 || col_text(st, 1, &r->name) < 0 ||
        col_blob(st, 2, &r->secret, &r->secret_len) < 0) {
      rc = store__err_nomem(err, "read the secrets");
      break;
    }
  }
  if (rc == 0 && step != SQLITE_DONE)
    rc = db_fail(err, c->db, "read the secrets");
  stmt_done(st);
  for (size_t i = 0; rc == 0 && i < count; i++) {
    uint8_t *out = NULL;
    size_t out_len = 0;
    rc = fn(rows[i].kind, rows[i].name, rows[i].secret, rows[i].secret_len, &out, &out_len, data,
            err);
    if (rc == 0)
      rc = stmt_exec(c, ST_SECRET_SET, "rewrite a secret", err, "ttB", rows[i].kind, rows[i].name,
                     out, out_len);
    free(out);
  }
  for (size_t i = 0; i < count; i++)
    if (rows[i].secret != NULL)
      OPENSSL_cleanse(rows[i].secret, rows[i].secret_len);
  store_rows_free(rows, count);
  if (rc == 0)
    *n = count;
  return rc;
}

static int seal_one(const char *kind, const char *name, const uint8_t *in, size_t len,
                    uint8_t **out, size_t *out_len, void *data, struct tp_err *err) {
  return store__seal(data, kind, name, in, len, out, out_len, err);
}

static void sqlite_close(struct store *base) {
  struct sqlite_store *s = to_store(base);
  store__keyring_clear(&s->base.keys);
  for (int i = 0; i < s->n_idle; i++)
    conn_close(s->idle[i]);
  pthread_cond_destroy(&s->pool_cond);
  pthread_mutex_destroy(&s->pool_lock);
  pthread_mutex_destroy(&s->write_lock);
  free(s->path);
  free(s);
}

static int sqlite_open(const char *path, int version, int min_version,
                       const struct store_keyring *keys, struct store **out, struct tp_err *err) {
  if (!sqlite3_threadsafe()) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: this SQLite is built without threads");
    return -EIO;
  }
  struct sqlite_store *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return store__err_nomem(err, "open");
  s->path = strdup(path);
  if (s->path == NULL) {
    free(s);
    return store__err_nomem(err, "open");
  }
  pthread_mutex_init(&s->write_lock, NULL);
  pthread_mutex_init(&s->pool_lock, NULL);
  pthread_cond_init(&s->pool_cond, NULL);
  s->base.keys = *keys;

  /* The database holds secrets: create it private. SQLite gives its -wal
   * and -shm files the database file's mode. */
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: open %s: %s", path, strerror(errno));
    sqlite_close(&s->base);
    return -EIO;
  }
  close(fd);

  struct conn *c;
  int rc = conn_open(path, &c, err);
  if (rc < 0)
    goto failed_conn;
  rc = migrate(c, s, path, version, min_version, &s->base.schema_version, err);
  if (rc < 0)
    goto failed_migrate;
  int64_t rev;
  rc = meta_revision(c, &rev, err);
  if (rc < 0)
    goto failed_migrate;
  atomic_store(&s->base.revision, rev);
  s->idle[s->n_idle++] = c;
  s->n_open = 1;
  s->base.connections = POOL_MAX;
  *out = &s->base;
  return 0;

failed_migrate:
  conn_close(c);
failed_conn:
  sqlite_close(&s->base);
  return rc;
}

static int sqlite_begin(struct store *base, int write, struct store_txn **out, struct tp_err *err) {
  struct sqlite_store *s = to_store(base);
  struct sqlite_txn *t = calloc(1, sizeof(*t));
  if (t == NULL)
    return store__err_nomem(err, "begin");
  if (write)
    pthread_mutex_lock(&s->write_lock);
  int rc = pool_take(s, &t->conn, err);
  if (rc < 0)
    goto failed_take;
  rc = stmt_exec(t->conn, write ? ST_BEGIN_IMMEDIATE : ST_BEGIN, "begin", err, "");
  if (rc < 0)
    goto failed_begin;
  /* Reading meta also fixes a reader's snapshot here rather than at its
   * first query. */
  int64_t rev;
  rc = meta_revision(t->conn, &rev, err);
  if (rc < 0)
    goto failed_meta;
  t->base.revision = write ? rev + 1 : rev;
  *out = &t->base;
  return 0;

failed_meta:
  rollback_quiet(t->conn);
failed_begin:
  pool_give(s, t->conn);
failed_take:
  if (write)
    pthread_mutex_unlock(&s->write_lock);
  free(t);
  return rc;
}

/* Gives back what begin took and frees t. */
static void txn_end(struct sqlite_txn *t) {
  struct sqlite_store *s = to_store(t->base.store);
  int write = t->base.write;
  pool_give(s, t->conn);
  if (write)
    pthread_mutex_unlock(&s->write_lock);
  free(t);
}

static int sqlite_commit(struct store_txn *base, struct tp_err *err) {
  struct sqlite_txn *t = to_txn(base);
  struct conn *c = t->conn;
  int rc = 0;
  if (base->wrote)
    rc = stmt_exec(c, ST_META_SET, "bump the revision", err, "i", base->revision);
  if (rc == 0)
    rc = stmt_exec(c, ST_COMMIT, "commit", err, "");
  if (rc == 0 && base->wrote)
    atomic_store(&base->store->revision, base->revision);
  if (rc < 0)
    rollback_quiet(c);
  txn_end(t);
  return rc;
}

static void sqlite_rollback(struct store_txn *base) {
  struct sqlite_txn *t = to_txn(base);
  rollback_quiet(t->conn);
  txn_end(t);
}

static int sqlite_get(struct store_txn *base, const char *kind, const char *name, int with_secret,
                      struct store_row *out, struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  sqlite3_stmt *st = stmt_prepare(c, with_secret ? ST_GET_SECRET : ST_GET, err, "tt", kind, name);
  if (st == NULL)
    return -EIO;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    rc = row_read(st, 1, with_secret, out) < 0 ? store__err_nomem(err, "get") : 0;
  else if (rc == SQLITE_DONE)
    rc = store__err_not_found(err, name);
  else
    rc = db_fail(err, c->db, "get");
  stmt_done(st);
  if (rc < 0 || base->store->schema_version < STORE_MACS_SINCE_VERSION)
    return rc;
  if ((st = stmt_prepare(c, ST_MAC_GET, err, "tt", kind, name)) == NULL)
    return -EIO;
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    rc = col_blob(st, 0, &out->mac, &out->mac_len) < 0 ? store__err_nomem(err, "get") : 0;
  else
    rc = rc == SQLITE_DONE ? 0 : db_fail(err, c->db, "get the row's MAC");
  stmt_done(st);
  return rc;
}

/* Looks up the row's etag: 1 and *etag (caller frees) if it exists, 0 if
 * not. */
static int row_head(struct store_txn *base, const char *kind, const char *name, char **etag,
                    struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  sqlite3_stmt *st = stmt_prepare(c, ST_HEAD, err, "tt", kind, name);
  if (st == NULL)
    return -EIO;
  int rc = sqlite3_step(st);
  *etag = NULL;
  if (rc == SQLITE_ROW)
    rc = col_text(st, 0, etag) < 0 ? store__err_nomem(err, "read etag") : 1;
  else if (rc == SQLITE_DONE)
    rc = 0;
  else
    rc = db_fail(err, c->db, "read etag");
  stmt_done(st);
  return rc;
}

static int row_exists(struct store_txn *base, const char *kind, const char *name,
                      struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  sqlite3_stmt *st = stmt_prepare(c, ST_EXISTS, err, "tt", kind, name);
  if (st == NULL)
    return -EIO;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    rc = 1;
  else if (rc == SQLITE_DONE)
    rc = 0;
  else
    rc = db_fail(err, c->db, "look up a reference");
  stmt_done(st);
  return rc;
}

/* Writes the audit row and what it changed (changes may be NULL). */
static int audit_insert(struct store_txn *base, const char *actor, const char *method,
                        const char *name, const char *action, const struct store_audit_change *ch,
                        size_t n_changes, int64_t now, struct tp_err *err) {
  if (base->store->schema_version < AUDIT_SINCE_VERSION)
    return 0;
  struct conn *c = to_txn(base)->conn;
  int rc = stmt_exec(c, ST_AUDIT_INSERT, "write the audit row", err, "iitttt", base->revision, now,
                     actor, method, name, action);
  if (rc < 0 || base->store->schema_version < AUDIT_CHANGES_SINCE_VERSION)
    return rc;
  int64_t seq = sqlite3_last_insert_rowid(c->db);
  for (size_t i = 0; rc == 0 && i < n_changes; i++)
    rc = stmt_exec(c, ST_AUDIT_CHANGE_INSERT, "write an audit change", err, "iittt", seq,
                   (int64_t)i, ch[i].field ? ch[i].field : "", ch[i].before ? ch[i].before : "",
                   ch[i].after ? ch[i].after : "");
  return rc;
}

/* Inserts or updates the row itself; *create_time receives its
 * create_time_us (kept on update). */
static int row_write(struct store_txn *base, const struct store_write *w, const char *etag,
                     int64_t now, int64_t *create_time, struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  enum stmt_id id = w->create ? ST_INSERT : w->set_secret ? ST_UPDATE_SECRET : ST_UPDATE;
  /* Parameters ?1 to ?7 are common. ?8 is the secret: without set_secret
   * an insert binds NULL (no secret) and an update (ST_UPDATE) leaves the
   * column alone. */
  const uint8_t *secret = w->set_secret ? w->secret : NULL;
  size_t secret_len = secret ? w->secret_len : 0;
  sqlite3_stmt *st;
  if (id == ST_UPDATE)
    st = stmt_prepare(c, id, err, "tttiiBi", w->kind, w->name, etag, base->revision, now, w->data,
                      w->data_len, w->expire_time_us);
  else
    st = stmt_prepare(c, id, err, "tttiiBib", w->kind, w->name, etag, base->revision, now, w->data,
                      w->data_len, w->expire_time_us, secret, secret_len);
  if (st == NULL)
    return -EIO;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *create_time = sqlite3_column_int64(st, 0);
    rc = sqlite3_step(st);
  }
  rc = rc == SQLITE_DONE ? 0 : db_fail(err, c->db, w->create ? "insert" : "update");
  stmt_done(st);
  /* Before DUE_SINCE_VERSION there is no column: nothing is ever due. */
  if (rc == 0 && base->store->schema_version >= DUE_SINCE_VERSION)
    rc = stmt_exec(c, ST_DUE_SET, "set the due time", err, "tti", w->kind, w->name, w->due_time_us);
  return rc;
}

static int labels_write(struct store_txn *base, const struct store_write *w, int replace,
                        struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  int rc = 0;
  if (replace)
    rc = stmt_exec(c, ST_LABELS_DELETE, "replace labels", err, "tt", w->kind, w->name);
  for (size_t i = 0; rc == 0 && i < w->n_labels; i++) {
    const char *value = w->labels[i].value ? w->labels[i].value : "";
    rc = stmt_exec(c, ST_LABEL_INSERT, "write a label", err, "tttt", w->kind, w->name,
                   w->labels[i].key, value);
  }
  return rc;
}

static int refs_write(struct store_txn *base, const struct store_write *w, int replace,
                      struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  int rc = 0;
  if (replace)
    rc = stmt_exec(c, ST_REFS_DELETE, "replace references", err, "tt", w->kind, w->name);
  for (size_t i = 0; rc == 0 && i < w->n_refs; i++) {
    const struct store_ref *r = &w->refs[i];
    rc = stmt_exec(c, ST_REF_INSERT, "write a reference", err, "ttttt", w->kind, w->name, r->kind,
                   r->name, r->field);
  }
  return rc;
}

static int referrer_first(struct store_txn *base, const char *kind, const char *name, char **from,
                          char **field, struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  *from = *field = NULL;
  sqlite3_stmt *st = stmt_prepare(c, ST_REFERRER_FIRST, err, "tt", kind, name);
  if (st == NULL)
    return -EIO;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    rc = col_text(st, 0, from) < 0 || col_text(st, 1, field) < 0
             ? store__err_nomem(err, "read the referrer")
             : 1;
  } else {
    rc = rc == SQLITE_DONE ? 0 : db_fail(err, c->db, "look up referrers");
  }
  stmt_done(st);
  if (rc < 0) {
    free(*from);
    free(*field);
    *from = *field = NULL;
  }
  return rc;
}

/* Labels and outgoing references go with the row (ON DELETE CASCADE). */
static int row_delete(struct store_txn *base, const char *kind, const char *name,
                      struct tp_err *err) {
  return stmt_exec(to_txn(base)->conn, ST_DELETE, "delete", err, "tt", kind, name);
}

/* A growing SQL text made of fixed fragments. */
struct sql_buf {
  char *p;
  size_t len, cap;
  int failed; /* an allocation failed; p is unusable */
};

static void sql_add(struct sql_buf *b, const char *s) {
  size_t n = strlen(s);
  if (b->failed)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
      b->failed = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n + 1);
  b->len += n;
}

/* Prepares the SQL in b (then freed) for one use. */
static sqlite3_stmt *sql_prepare(struct conn *c, struct sql_buf *b, const char *what,
                                 struct tp_err *err) {
  sqlite3_stmt *st = NULL;
  if (b->failed)
    store__err_nomem(err, what);
  else if (sqlite3_prepare_v2(c->db, b->p, (int)b->len, &st, NULL) != SQLITE_OK)
    db_fail(err, c->db, what);
  free(b->p);
  return st;
}

static int sqlite_list(struct store_txn *base, const struct store_query *q, struct store_row **rows,
                       size_t *n, struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  struct sql_buf b = {0};
  int macs = base->store->schema_version >= STORE_MACS_SINCE_VERSION;
  sql_add(&b, "SELECT r.kind, r.name, r.etag, r.revision, r.create_time_us, r.update_time_us,"
              " r.data");
  sql_add(&b, macs ? ", m.mac FROM resources r LEFT JOIN macs m"
                     " ON m.kind = r.kind AND m.name = r.name"
                   : " FROM resources r");
  sql_add(&b, " WHERE r.kind = ?");
  if (q->after_name != NULL)
    sql_add(&b, " AND r.name > ?");
  if (q->has_expire_before)
    sql_add(&b, " AND r.expire_time_us > 0 AND r.expire_time_us < ?");
  if (q->has_due_before)
    sql_add(&b, base->store->schema_version >= DUE_SINCE_VERSION
                    ? " AND r.due_time_us > 0 AND r.due_time_us < ?"
                    : " AND ? < 0"); /* nothing is scheduled before the column exists */
  for (size_t i = 0; i < q->n_labels; i++) {
    /* NE holds when no label has key=value, which includes a missing key
     * (a row has at most one value per key). */
    static const char *const frag[] = {
        /* The rows are taken from the labels (index labels_value), not
         * every row of the kind tested. */
        [STORE_LABEL_EQ] = " AND r.name IN (SELECT l.name FROM labels l WHERE l.kind = ? AND"
                           " l.key = ? AND l.value = ?)",
        [STORE_LABEL_NE] = " AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.kind = r.kind AND"
                           " l.name = r.name AND l.key = ? AND l.value = ?)",
        [STORE_LABEL_EXISTS] = " AND EXISTS (SELECT 1 FROM labels l WHERE l.kind = r.kind AND"
                               " l.name = r.name AND l.key = ?)",
        [STORE_LABEL_NOT_EXISTS] = " AND NOT EXISTS (SELECT 1 FROM labels l WHERE"
                                   " l.kind = r.kind AND l.name = r.name AND l.key = ?)",
    };
    sql_add(&b, frag[q->labels[i].op]);
  }
  sql_add(&b, " ORDER BY r.name");
  if (q->limit > 0)
    sql_add(&b, " LIMIT ?");
  sqlite3_stmt *st = sql_prepare(c, &b, "list", err);
  if (st == NULL)
    return -EIO;

  int k = 1;
  int rc = sqlite3_bind_text(st, k++, q->kind, -1, SQLITE_STATIC);
  if (rc == SQLITE_OK && q->after_name != NULL)
    rc = sqlite3_bind_text(st, k++, q->after_name, -1, SQLITE_STATIC);
  if (rc == SQLITE_OK && q->has_expire_before)
    rc = sqlite3_bind_int64(st, k++, q->expire_before_us);
  if (rc == SQLITE_OK && q->has_due_before)
    rc = sqlite3_bind_int64(st, k++, q->due_before_us);
  for (size_t i = 0; rc == SQLITE_OK && i < q->n_labels; i++) {
    const struct store_label_req *l = &q->labels[i];
    if (l->op == STORE_LABEL_EQ)
      rc = sqlite3_bind_text(st, k++, q->kind, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
      rc = sqlite3_bind_text(st, k++, l->key, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK && (l->op == STORE_LABEL_EQ || l->op == STORE_LABEL_NE))
      rc = sqlite3_bind_text(st, k++, l->value ? l->value : "", -1, SQLITE_STATIC);
  }
  if (rc == SQLITE_OK && q->limit > 0)
    rc = sqlite3_bind_int64(st, k++, q->limit);
  if (rc != SQLITE_OK) {
    db_fail(err, c->db, "list: bind");
    sqlite3_finalize(st);
    return -EIO;
  }

  size_t cap = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (store__rows_reserve(rows, *n, &cap) < 0)
      goto failed_row;
    /* Counted first so that store_rows_free also frees a half-read row. */
    struct store_row *row = &(*rows)[(*n)++];
    if (row_read(st, 1, 0, row) < 0 || (macs && col_blob(st, 7, &row->mac, &row->mac_len) < 0))
      goto failed_row;
  }
  if (rc != SQLITE_DONE) {
    db_fail(err, c->db, "list");
    goto failed;
  }
  sqlite3_finalize(st);
  return 0;

failed_row:
  store__err_nomem(err, "list");
failed:
  sqlite3_finalize(st);
  store_rows_free(*rows, *n);
  *rows = NULL;
  *n = 0;
  return -EIO;
}

static int sqlite_referrers(struct store_txn *base, const char *kind, const char *name,
                            struct store_row **rows, size_t *n, struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  sqlite3_stmt *st = stmt_prepare(c, ST_REFERRERS, err, "tt", kind, name);
  if (st == NULL)
    return -EIO;
  size_t cap = 0;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (store__rows_reserve(rows, *n, &cap) < 0 || row_read(st, 0, 0, &(*rows)[(*n)++]) < 0) {
      rc = store__err_nomem(err, "referrers");
      goto failed;
    }
  }
  if (rc != SQLITE_DONE) {
    rc = db_fail(err, c->db, "referrers");
    goto failed;
  }
  stmt_done(st);
  return 0;

failed:
  stmt_done(st);
  store_rows_free(*rows, *n);
  *rows = NULL;
  *n = 0;
  return rc;
}

/* Reads the changes of the audit row a (a->seq). 0, -ENOMEM or -EIO. */
static int audit_changes_read(struct conn *c, struct store_audit *a, struct tp_err *err) {
  sqlite3_stmt *st = stmt_prepare(c, ST_AUDIT_CHANGES, err, "i", a->seq);
  if (st == NULL)
    return -EIO;
  size_t cap = 0;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (a->n_changes == cap) {
      size_t ncap = cap ? cap * 2 : 4;
      struct store_audit_change *p = realloc(a->changes, ncap * sizeof(*p));
      if (p == NULL)
        break;
      a->changes = p;
      cap = ncap;
    }
    struct store_audit_change *ch = &a->changes[a->n_changes++];
    memset(ch, 0, sizeof(*ch));
    if (col_text(st, 0, &ch->field) < 0 || col_text(st, 1, &ch->before) < 0 ||
        col_text(st, 2, &ch->after) < 0)
      break;
  }
  int failed = rc == SQLITE_ROW    ? store__err_nomem(err, "audit changes")
               : rc != SQLITE_DONE ? db_fail(err, c->db, "audit changes")
                                   : 0;
  stmt_done(st);
  return failed;
}

/* The audit list's statement: fixed fragments for the filters q sets,
 * bound in the same order. */
static sqlite3_stmt *audit_list_prepare(struct conn *c, const struct store_audit_query *q,
                                        struct tp_err *err) {
  struct sql_buf b = {0};
  sql_add(&b, "SELECT seq, revision, time_us, actor, method, resource, action FROM audit"
              " WHERE seq > ? AND revision > ?");
  if (q->before_seq > 0)
    sql_add(&b, " AND seq < ?");
  if (q->resource != NULL)
    sql_add(&b, " AND resource = ?");
  if (q->actor != NULL)
    sql_add(&b, " AND actor = ?");
  if (q->has_start_time)
    sql_add(&b, " AND time_us >= ?");
  if (q->has_end_time)
    sql_add(&b, " AND time_us < ?");
  sql_add(&b, q->descending ? " ORDER BY seq DESC" : " ORDER BY seq");
  if (q->limit > 0)
    sql_add(&b, " LIMIT ?");
  sqlite3_stmt *st = sql_prepare(c, &b, "audit list", err);
  if (st == NULL)
    return NULL;

  int k = 1;
  int rc = sqlite3_bind_int64(st, k++, q->after_seq);
  if (rc == SQLITE_OK)
    rc = sqlite3_bind_int64(st, k++, q->since_revision);
  if (rc == SQLITE_OK && q->before_seq > 0)
    rc = sqlite3_bind_int64(st, k++, q->before_seq);
  if (rc == SQLITE_OK && q->resource != NULL)
    rc = sqlite3_bind_text(st, k++, q->resource, -1, SQLITE_STATIC);
  if (rc == SQLITE_OK && q->actor != NULL)
    rc = sqlite3_bind_text(st, k++, q->actor, -1, SQLITE_STATIC);
  if (rc == SQLITE_OK && q->has_start_time)
    rc = sqlite3_bind_int64(st, k++, q->start_time_us);
  if (rc == SQLITE_OK && q->has_end_time)
    rc = sqlite3_bind_int64(st, k++, q->end_time_us);
  if (rc == SQLITE_OK && q->limit > 0)
    rc = sqlite3_bind_int64(st, k++, q->limit);
  if (rc != SQLITE_OK) {
    db_fail(err, c->db, "audit list: bind");
    sqlite3_finalize(st);
    return NULL;
  }
  return st;
}

static int sqlite_audit_list(struct store_txn *base, const struct store_audit_query *q,
                             struct store_audit **out, size_t *n, struct tp_err *err) {
  if (base->store->schema_version < AUDIT_SINCE_VERSION)
    return 0;
  struct conn *c = to_txn(base)->conn;
  sqlite3_stmt *st = audit_list_prepare(c, q, err);
  if (st == NULL)
    return -EIO;

  size_t cap = 0;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (*n == cap) {
      size_t ncap = cap ? cap * 2 : 16;
      struct store_audit *p = realloc(*out, ncap * sizeof(*p));
      if (p == NULL)
        goto failed_row;
      *out = p;
      cap = ncap;
    }
    struct store_audit *a = &(*out)[(*n)++];
    memset(a, 0, sizeof(*a));
    a->seq = sqlite3_column_int64(st, 0);
    a->revision = sqlite3_column_int64(st, 1);
    a->time_us = sqlite3_column_int64(st, 2);
    if (col_text(st, 3, &a->actor) < 0 || col_text(st, 4, &a->method) < 0 ||
        col_text(st, 5, &a->resource) < 0 || col_text(st, 6, &a->action) < 0)
      goto failed_row;
  }
  if (rc != SQLITE_DONE) {
    db_fail(err, c->db, "audit list");
    goto failed;
  }
  sqlite3_finalize(st);
  st = NULL;
  for (size_t i = 0; base->store->schema_version >= AUDIT_CHANGES_SINCE_VERSION && i < *n; i++)
    if (audit_changes_read(c, &(*out)[i], err) < 0)
      goto failed;
  return 0;

failed_row:
  store__err_nomem(err, "audit list");
failed:
  sqlite3_finalize(st);
  store_audit_free(*out, *n);
  *out = NULL;
  *n = 0;
  return -EIO;
}

/* The migration to version 3: every secret stored so far is sealed. */
static int seal_existing(struct conn *c, struct sqlite_store *s, struct tp_err *err) {
  size_t n;
  if (s->base.keys.n == 0) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "store: sealing the stored secrets needs a master key");
    return -ENOKEY;
  }
  return conn_secrets_rewrite(c, seal_one, &s->base.keys, &n, err);
}

/* Gives every row fn's MAC, on c inside its transaction. The rows are
 * read first (keeping only their names and new MACs), then written: the
 * rewrite never steps a query over the rows it changes. */
static int conn_macs_rewrite(struct conn *c, store__mac_fn fn, void *data, size_t *n,
                             struct tp_err *err) {
  struct store_row *rows = NULL; /* kind, name and mac only */
  size_t count = 0, cap = 0;
  int rc = 0;
  *n = 0;
  sqlite3_stmt *st = stmt_prepare(c, ST_MACS_ALL, err, "");
  if (st == NULL)
    return -EIO;
  int step;
  while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
    if (store__rows_reserve(&rows, count, &cap) < 0) {
      rc = store__err_nomem(err, "read the rows");
      break;
    }
    struct store_row *r = &rows[count++];
    const void *row_data = sqlite3_column_blob(st, 2);
    size_t len = (size_t)sqlite3_column_bytes(st, 2);
    const void *mac = sqlite3_column_blob(st, 3);
    size_t mac_len = (size_t)sqlite3_column_bytes(st, 3);
    if (col_text(st, 0, &r->kind) < 0 || col_text(st, 1, &r->name) < 0 || r->kind == NULL ||
        r->name == NULL || (r->mac = malloc(STORE_MAC_LEN)) == NULL) {
      rc = store__err_nomem(err, "read the rows");
      break;
    }
    r->mac_len = STORE_MAC_LEN;
    rc = fn(r->kind, r->name, row_data, row_data ? len : 0, mac, mac ? mac_len : 0, r->mac, data,
            err);
  }
  if (rc == 0 && step != SQLITE_DONE)
    rc = db_fail(err, c->db, "read the rows");
  stmt_done(st);
  for (size_t i = 0; rc == 0 && i < count; i++)
    rc = stmt_exec(c, ST_MAC_SET, "write a row's MAC", err, "ttb", rows[i].kind, rows[i].name,
                   rows[i].mac, rows[i].mac_len);
  store_rows_free(rows, count);
  if (rc == 0)
    *n = count;
  return rc;
}

/* A row of a schema before version 4: authenticated as it is found. */
static int mac_fresh(const char *kind, const char *name, const uint8_t *row_data, size_t len,
                     const uint8_t *mac, size_t mac_len, uint8_t out[STORE_MAC_LEN], void *data,
                     struct tp_err *err) {
  (void)mac;
  (void)mac_len;
  return store__mac(data, kind, name, row_data, len, out, err);
}

/* The migration to version 4: every row stored so far is authenticated. */
static int mac_existing(struct conn *c, struct sqlite_store *s, struct tp_err *err) {
  size_t n;
  if (s->base.keys.n == 0) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "store: authenticating the stored rows needs a master key");
    return -ENOKEY;
  }
  return conn_macs_rewrite(c, mac_fresh, &s->base.keys, &n, err);
}

static int sqlite_mac_set(struct store_txn *base, const char *kind, const char *name,
                          const uint8_t mac[STORE_MAC_LEN], struct tp_err *err) {
  return stmt_exec(to_txn(base)->conn, ST_MAC_SET, "write the row's MAC", err, "ttb", kind, name,
                   mac, (size_t)STORE_MAC_LEN);
}

static int sqlite_macs_rewrite(struct store_txn *base, store__mac_fn fn, void *data, size_t *n,
                               struct tp_err *err) {
  return conn_macs_rewrite(to_txn(base)->conn, fn, data, n, err);
}

static int sqlite_secrets_rewrite(struct store_txn *base, store__rewrite_fn fn, void *data,
                                  size_t *n, struct tp_err *err) {
  return conn_secrets_rewrite(to_txn(base)->conn, fn, data, n, err);
}

static int sqlite_sealed_key_ids(struct store_txn *base, uint8_t (**ids)[STORE_KEY_ID_LEN],
                                 size_t *n, struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  *ids = NULL;
  *n = 0;
  sqlite3_stmt *st = stmt_prepare(c, ST_SEALED_KEY_IDS, err, "");
  if (st == NULL)
    return -EIO;
  int rc;
  size_t cap = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const void *p = sqlite3_column_blob(st, 0);
    if (sqlite3_column_bytes(st, 0) != STORE_KEY_ID_LEN || p == NULL) {
      /* Too short to be sealed: the record names no key. */
      stmt_done(st);
      tp_err_set(err, GRPC_STATUS_DATA_LOSS, "store: a stored secret is not a sealed record");
      free(*ids);
      *ids = NULL;
      *n = 0;
      return -EBADMSG;
    }
    if (*n == cap) {
      size_t ncap = cap ? 2 * cap : 4;
      uint8_t(*more)[STORE_KEY_ID_LEN] = realloc(*ids, ncap * STORE_KEY_ID_LEN);
      if (more == NULL) {
        stmt_done(st);
        free(*ids);
        *ids = NULL;
        *n = 0;
        return store__err_nomem(err, "sealed key ids");
      }
      *ids = more;
      cap = ncap;
    }
    memcpy((*ids)[(*n)++], p, STORE_KEY_ID_LEN);
  }
  stmt_done(st);
  if (rc != SQLITE_DONE) {
    free(*ids);
    *ids = NULL;
    *n = 0;
    return db_fail(err, c->db, "sealed key ids");
  }
  return 0;
}

static int sqlite_usage_set(struct store_txn *base, const char *kind, const char *name,
                            int64_t time_us, struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  int rc = row_exists(base, kind, name, err);
  if (rc < 0)
    return rc;
  if (rc == 0)
    return store__err_not_found(err, name);
  return stmt_exec(c, ST_USAGE_SET, "record the last use", err, "tti", kind, name, time_us);
}

static int sqlite_usage_get(struct store_txn *base, const char *kind, const char *name,
                            int64_t *time_us, struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  sqlite3_stmt *st = stmt_prepare(c, ST_USAGE_GET, err, "tt", kind, name);
  if (st == NULL)
    return -EIO;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    *time_us = sqlite3_column_int64(st, 0);
  stmt_done(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    return db_fail(err, c->db, "read the last use");
  return 0;
}

/* store_backup. SQLite's online backup copies every page of the source
 * in one step, inside one read transaction of the source: the copy is the
 * snapshot of one commit. In WAL mode the source's writers go on
 * meanwhile; a step that meets a lock (a checkpoint, recovery) is tried
 * again. */
#define BACKUP_BUSY_TRIES 500
#define BACKUP_BUSY_SLEEP_MS 10

/* Reads what the copy holds into info; -ENODATA when no tlsplane schema. */
static int backup_describe(sqlite3 *db, const char *path, struct store_backup_info *info,
                           struct tp_err *err) {
  char ok[64];
  if (pragma_query(db, "PRAGMA quick_check", ok, sizeof(ok), err) < 0)
    return -EIO;
  if (strcmp(ok, "ok") != 0) {
    tp_err_set(err, GRPC_STATUS_DATA_LOSS, "store: backup of %s: the copy is damaged (%s)", path,
               ok);
    return -EIO;
  }
  sqlite3_stmt *st;
  int has_schema = 0;
  if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_schema WHERE name = 'schema_migrations'", -1,
                         &st, NULL) != SQLITE_OK)
    return db_fail(err, db, "backup: read the schema");
  has_schema = sqlite3_step(st) == SQLITE_ROW;
  sqlite3_finalize(st);
  struct conn c = {.db = db};
  int rc = has_schema ? schema_version_read(&c, &info->schema_version, err) : 0;
  if (rc == 0 && info->schema_version < 1) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "store: %s holds no tlsplane database: nothing to back up", path);
    rc = -ENODATA;
  }
  if (rc == 0)
    rc = meta_revision(&c, &info->revision, err);
  if (rc == 0 && info->schema_version >= STORE_SEALED_SINCE_VERSION) {
    sqlite3_stmt *ids = stmt_prepare(&c, ST_SEALED_KEY_IDS, err, "");
    if (ids == NULL)
      rc = -EIO;
    while (rc == 0 && sqlite3_step(ids) == SQLITE_ROW) {
      const void *p = sqlite3_column_blob(ids, 0);
      if (sqlite3_column_bytes(ids, 0) != STORE_KEY_ID_LEN || p == NULL ||
          info->n_key_ids == STORE_KEYS_MAX_IDS)
        continue; /* store_open names what does not open */
      store__key_id_hex(p, info->key_ids[info->n_key_ids++]);
    }
    if (ids != NULL)
      stmt_done(ids);
  }
  for (int i = 0; i < ST_COUNT; i++)
    sqlite3_finalize(c.stmt[i]);
  return rc;
}

static int sqlite_backup(const char *path, const char *dest, struct store_backup_info *info,
                         struct tp_err *err) {
  sqlite3 *src = NULL, *dst = NULL;
  int rc = -EIO;
  /* Read-only: the backup never writes the live database. */
  if (sqlite3_open_v2(path, &src, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "store: backup: open %s: %s", path,
               src ? sqlite3_errmsg(src) : "out of memory");
    sqlite3_close(src);
    return -EIO;
  }
  sqlite3_busy_timeout(src, BUSY_TIMEOUT_MS);
  if (db_harden(src, path, err) < 0) {
    sqlite3_close(src);
    return -EIO;
  }
  /* Private from the start, as the database itself. */
  int fd = open(dest, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "store: backup: create %s: %s", dest,
               strerror(errno));
    sqlite3_close(src);
    return -EIO;
  }
  close(fd);
  if (sqlite3_open_v2(dest, &dst, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
    db_fail(err, dst, "backup: open the copy");
    goto done;
  }
  if (db_harden(dst, dest, err) < 0)
    goto done;
  sqlite3_backup *b = sqlite3_backup_init(dst, "main", src, "main");
  if (b == NULL) {
    db_fail(err, dst, "backup");
    goto done;
  }
  int step;
  for (int tries = 0;; tries++) {
    step = sqlite3_backup_step(b, -1);
    if ((step != SQLITE_BUSY && step != SQLITE_LOCKED) || tries == BACKUP_BUSY_TRIES)
      break;
    sqlite3_sleep(BACKUP_BUSY_SLEEP_MS);
  }
  sqlite3_backup_finish(b);
  if (step != SQLITE_DONE) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: backup of %s: %s", path, sqlite3_errstr(step));
    goto done;
  }
  rc = backup_describe(dst, path, info, err);

done:
  sqlite3_close(dst);
  sqlite3_close(src);
  if (rc < 0) {
    char p[4096];
    unlink(dest);
    snprintf(p, sizeof(p), "%s-journal", dest);
    unlink(p);
  }
  return rc;
}

const struct store_ops store__sqlite_ops = {
    .name = "sqlite",
    .latest_version = N_MIGRATIONS,
    .open = sqlite_open,
    .close = sqlite_close,
    .backup = sqlite_backup,
    .begin = sqlite_begin,
    .commit = sqlite_commit,
    .rollback = sqlite_rollback,
    .get = sqlite_get,
    .row_head = row_head,
    .row_exists = row_exists,
    .row_write = row_write,
    .labels_write = labels_write,
    .refs_write = refs_write,
    .referrer_first = referrer_first,
    .row_delete = row_delete,
    .audit_insert = audit_insert,
    .list = sqlite_list,
    .referrers = sqlite_referrers,
    .audit_list = sqlite_audit_list,
    .secrets_rewrite = sqlite_secrets_rewrite,
    .sealed_key_ids = sqlite_sealed_key_ids,
    .usage_set = sqlite_usage_set,
    .usage_get = sqlite_usage_get,
    .mac_set = sqlite_mac_set,
    .macs_rewrite = sqlite_macs_rewrite,
};
