/* The store (store/store.h) against a real SQLite file or, with
 * TLSPLANE_TEST_PG set to a PostgreSQL URI (tests/pg/run-with-postgres),
 * against a real PostgreSQL database: one suite, two backends. Migrations
 * and upgrades, writes and their refusals, revisions, rollback, secrets
 * and their encryption at rest (sealing, the master key, its rotation),
 * label selectors, pagination, references, audit, usage, row
 * authentication (edits made behind the store's back refused), durability
 * and concurrency, also of two stores (two servers) on one database.
 *
 * On PostgreSQL every test gets a database of its own; what only a SQLite
 * file has (its mode, its WAL, store_backup's copy) is checked on SQLite
 * and said not to apply, with the reason, on PostgreSQL. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <sqlite3.h>

#include "fixtures.h"
#include "store.h"
#include "store_int.h"

#define CERT "Certificate"
#define CTX "TlsContext"

/* Master keys for the tests: key A opens every fixture. */
static const uint8_t key_a[STORE_MASTER_KEY_LEN] = "tlsplane test master key A ....";
static const uint8_t key_b[STORE_MASTER_KEY_LEN] = "tlsplane test master key B ....";
static const struct store_opts opts_a = {.master_keys = &key_a, .n_master_keys = 1};

struct fixture {
  char dir[256];
  char path[600]; /* the SQLite file, or the PostgreSQL database's URI */
  char pg_db[64]; /* the PostgreSQL database ("" on SQLite) */
  struct store *s;
};

/* TLSPLANE_TEST_PG: the URI of a PostgreSQL database the run may create
 * databases from; NULL: the run is on SQLite. Set once in main. */
static const char *pg_base;

/* Fails printing both sides unless haystack contains needle. */
#define assert_contains(haystack, needle)                                                          \
  do {                                                                                             \
    const char *h_ = (haystack), *n_ = (needle);                                                   \
    if (h_ == NULL || strstr(h_, n_) == NULL)                                                      \
      fail_msg("\"%s\" does not contain \"%s\"", h_ ? h_ : "(null)", n_);                          \
  } while (0)

/* A call failed with code and err carries status and a message holding
 * `says`. */
#define assert_refused(rc, code, err, st, says)                                                    \
  do {                                                                                             \
    assert_int_equal((rc), (code));                                                                \
    assert_int_equal((err).status, (st));                                                          \
    assert_contains((err).msg, (says));                                                            \
  } while (0)

#define assert_ok(rc, err)                                                                         \
  do {                                                                                             \
    int rc_ = (rc);                                                                                \
    if (rc_ != 0)                                                                                  \
      fail_msg("%s returned %d: %s", #rc, rc_, (err).msg);                                         \
  } while (0)

static void paths_remove(const char *path, const char *dir) {
  char p[700];
  unlink(path);
  snprintf(p, sizeof(p), "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", path);
  unlink(p);
  rmdir(dir);
}

static void pg_quiet(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

/* A connection to uri, failing the test when there is none. */
static PGconn *pg_connect(const char *uri) {
  PGconn *c = PQconnectdb(uri);
  if (PQstatus(c) != CONNECTION_OK)
    fail_msg("connect to %s: %s", uri, PQerrorMessage(c));
  PQsetNoticeProcessor(c, pg_quiet, NULL);
  return c;
}

/* Runs sql (no parameters) on uri. */
static void pg_run(const char *uri, const char *sql) {
  PGconn *c = pg_connect(uri);
  PGresult *res = PQexec(c, sql);
  if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
    fail_msg("%s: %s", sql, PQresultErrorMessage(res));
  PQclear(res);
  PQfinish(c);
}

/* Creates the fixture's database, new and empty; dropped first if it
 * exists. */
static void pg_db_fresh(struct fixture *f) {
  char sql[128];
  snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", f->pg_db);
  pg_run(pg_base, sql);
  snprintf(sql, sizeof(sql), "CREATE DATABASE %s", f->pg_db);
  pg_run(pg_base, sql);
}

/* Says why a check of a SQLite file does not apply on the PostgreSQL
 * pass, and returns 1 there (0 on SQLite: run it). */
static int pg_not_applicable(const char *why) {
  if (pg_base == NULL)
    return 0;
  print_message("[ N/A      ] on PostgreSQL: %s\n", why);
  return 1;
}

static int setup_path(void **state) {
  static int n_databases;
  struct fixture *f = calloc(1, sizeof(*f));
  if (f == NULL)
    return -1;
  fixture_tmpdir(f->dir, sizeof(f->dir));
  snprintf(f->path, sizeof(f->path), "%s/tlsplane.db", f->dir);
  if (pg_base != NULL) {
    /* The base URI with the database name replaced. */
    const char *slash = strrchr(pg_base, '/');
    snprintf(f->pg_db, sizeof(f->pg_db), "tlsplane_test_%d_%d", (int)getpid(), ++n_databases);
    snprintf(f->path, sizeof(f->path), "%.*s/%s", (int)(slash - pg_base), pg_base, f->pg_db);
    pg_db_fresh(f);
  }
  *state = f;
  return 0;
}

/* Empties the fixture's database: a new file, or a new PostgreSQL
 * database. */
static void fixture_reset(struct fixture *f) {
  if (pg_base != NULL) {
    pg_db_fresh(f);
    return;
  }
  char p[700];
  unlink(f->path);
  snprintf(p, sizeof(p), "%s-wal", f->path);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", f->path);
  unlink(p);
}

static int setup_open(void **state) {
  if (setup_path(state) < 0)
    return -1;
  struct fixture *f = *state;
  struct tp_err err = {0};
  if (store_open(f->path, &opts_a, &f->s, &err) < 0) {
    fprintf(stderr, "store_open: %s\n", err.msg);
    return -1;
  }
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  store_close(f->s);
  if (pg_base != NULL) {
    char sql[128];
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", f->pg_db);
    pg_run(pg_base, sql);
    snprintf(f->path, sizeof(f->path), "%s/tlsplane.db", f->dir);
  }
  paths_remove(f->path, f->dir);
  free(f);
  return 0;
}

/* SQLite's spelling in the tests' raw SQL, in PostgreSQL's: "?1" is "$1",
 * a blob cast a bytea one, x'00' a bytea literal. */
static char *pg_dialect(const char *sql) {
  static const struct {
    const char *from, *to;
  } words[] = {
      {"?1", "$1"}, {"?2", "$2"}, {" AS BLOB)", " AS BYTEA)"}, {"x'00'", "'\\x00'::bytea"}};
  size_t cap = strlen(sql) * 2 + 64, len = 0;
  char *out = malloc(cap);
  assert_non_null(out);
  while (*sql != '\0') {
    size_t i = 0;
    while (i < sizeof(words) / sizeof(words[0]) &&
           strncmp(sql, words[i].from, strlen(words[i].from)) != 0)
      i++;
    if (i < sizeof(words) / sizeof(words[0])) {
      memcpy(out + len, words[i].to, strlen(words[i].to));
      len += strlen(words[i].to);
      sql += strlen(words[i].from);
    } else {
      out[len++] = *sql++;
    }
    assert_true(len + 32 < cap);
  }
  out[len] = '\0';
  return out;
}

/* The blob `sql` (one "?1 = kind, ?2 = name" query) selects from the
 * file, read with SQLite itself (no store): what someone holding only the
 * file sees. Returns its length (-1: no such row or NULL) and copies it to
 * buf. */
static int raw_blob(const char *path, const char *sql, const char *kind, const char *name,
                    uint8_t *buf, size_t cap) {
  if (pg_base != NULL) {
    PGconn *c = pg_connect(path);
    char *pg_sql = pg_dialect(sql);
    const char *values[2] = {kind, name};
    PGresult *res = PQexecParams(c, pg_sql, 2, NULL, values, NULL, NULL, 1);
    free(pg_sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
      fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    int len = -1;
    if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 0)) {
      len = PQgetlength(res, 0, 0);
      assert_true((size_t)len <= cap);
      memcpy(buf, PQgetvalue(res, 0, 0), (size_t)len);
    }
    PQclear(res);
    PQfinish(c);
    return len;
  }
  sqlite3 *db;
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
  int len = -1;
  if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
    len = sqlite3_column_bytes(st, 0);
    assert_true((size_t)len <= cap);
    memcpy(buf, sqlite3_column_blob(st, 0), (size_t)len);
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return len;
}

/* The secret column of (kind, name) as stored in the file. */
static int raw_secret(const char *path, const char *kind, const char *name, uint8_t *buf,
                      size_t cap) {
  return raw_blob(path, "SELECT secret FROM resources WHERE kind = ?1 AND name = ?2", kind, name,
                  buf, cap);
}

/* The MAC of (kind, name) as stored in the file. */
static int raw_mac(const char *path, const char *kind, const char *name, uint8_t *buf, size_t cap) {
  return raw_blob(path, "SELECT mac FROM macs WHERE kind = ?1 AND name = ?2", kind, name, buf, cap);
}

/* Runs sql on the file behind the store's back, with SQLite itself: what
 * someone who can write the file, but holds no master key, can do. */
static void file_exec(const char *path, const char *sql) {
  if (pg_base != NULL) {
    char *pg_sql = pg_dialect(sql);
    pg_run(path, pg_sql);
    free(pg_sql);
    return;
  }
  sqlite3 *db;
  char *msg = NULL;
  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
    fail_msg("%s: %s", sql, msg ? msg : "?");
  sqlite3_close(db);
}

/* Sets the secret of the row named name to raw[0..len) behind the
 * store's back. */
static void raw_secret_set(const char *path, const char *name, const uint8_t *raw, int len) {
  const char *sql = "UPDATE resources SET secret = ?1 WHERE name = ?2";
  if (pg_base != NULL) {
    PGconn *c = pg_connect(path);
    char *pg_sql = pg_dialect(sql);
    const char *values[2] = {(const char *)raw, name};
    int lengths[2] = {len, 0}, formats[2] = {1, 0};
    PGresult *res = PQexecParams(c, pg_sql, 2, NULL, values, lengths, formats, 0);
    free(pg_sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
      fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
    PQfinish(c);
    return;
  }
  sqlite3 *db;
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  sqlite3_bind_blob(st, 1, raw, len, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
  assert_int_equal(sqlite3_step(st), SQLITE_DONE);
  sqlite3_finalize(st);
  sqlite3_close(db);
}

/* How many tables, indexes and such the database's schema holds. */
static int schema_objects(const char *path) {
  if (pg_base != NULL) {
    PGconn *c = pg_connect(path);
    PGresult *res = PQexec(c, "SELECT count(*) FROM pg_class c JOIN pg_namespace n"
                              " ON n.oid = c.relnamespace WHERE n.nspname = current_schema()");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    int n = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    PQfinish(c);
    return n;
  }
  sqlite3 *db;
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_schema", -1, &st, NULL),
                   SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  int n = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return n;
}

/* Whether needle occurs in the file at path (the database, its WAL). */
static int file_contains(const char *path, const void *needle, size_t len) {
  FILE *fp = fopen(path, "rb");
  if (fp == NULL)
    return 0;
  fseek(fp, 0, SEEK_END);
  long size = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  uint8_t *data = malloc(size > 0 ? (size_t)size : 1);
  assert_non_null(data);
  size_t got = fread(data, 1, (size_t)size, fp);
  fclose(fp);
  int found = memmem(data, got, needle, len) != NULL;
  free(data);
  return found;
}

/* A write of name with the text data and nothing else. */
static struct store_write write_of(const char *kind, const char *name, int create,
                                   const char *data) {
  struct store_write w = {
      .kind = kind,
      .name = name,
      .create = create,
      .data = (const uint8_t *)data,
      .data_len = strlen(data),
      .actor = "alice",
      .method = "/tlsplane.v1.Test/Write",
  };
  return w;
}

/* One write in its own transaction; returns the committed revision. */
static int64_t put_one(struct store *s, const struct store_write *w, struct store_row *out) {
  struct tp_err err = {0};
  struct store_txn *txn;
  assert_ok(store_begin(s, 1, &txn, &err), err);
  assert_ok(store_put(txn, w, out, &err), err);
  int64_t rev = -1;
  assert_ok(store_commit(txn, &rev, &err), err);
  return rev;
}

static int64_t create_text(struct store *s, const char *kind, const char *name, const char *data) {
  struct store_write w = write_of(kind, name, 1, data);
  return put_one(s, &w, NULL);
}

/* Runs a single failing write in its own transaction and returns its code;
 * the transaction is rolled back. */
static int put_fails(struct store *s, const struct store_write *w, struct tp_err *err) {
  struct store_txn *txn;
  assert_ok(store_begin(s, 1, &txn, err), *err);
  int rc = store_put(txn, w, NULL, err);
  store_rollback(txn);
  return rc;
}

static int delete_one(struct store *s, const char *kind, const char *name, const char *etag,
                      struct tp_err *err) {
  struct store_txn *txn;
  assert_ok(store_begin(s, 1, &txn, err), *err);
  int rc = store_delete(txn, kind, name, etag, "bob", "/tlsplane.v1.Test/Delete", err);
  if (rc < 0) {
    store_rollback(txn);
    return rc;
  }
  return store_commit(txn, NULL, err);
}

/* Reads a row (without secret) in its own transaction. */
static int get_one(struct store *s, const char *kind, const char *name, int with_secret,
                   struct store_row *out, struct tp_err *err) {
  struct store_txn *txn;
  assert_ok(store_begin(s, 0, &txn, err), *err);
  int rc = store_get(txn, kind, name, with_secret, out, err);
  store_rollback(txn);
  return rc;
}

/* Lists and returns the names joined by commas into buf ("" for none). */
static const char *list_names(struct store *s, const struct store_query *q, char *buf, size_t len) {
  struct tp_err err = {0};
  struct store_txn *txn;
  struct store_row *rows;
  size_t n;
  assert_ok(store_begin(s, 0, &txn, &err), err);
  assert_ok(store_list(txn, q, &rows, &n, &err), err);
  store_rollback(txn);
  buf[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    size_t used = strlen(buf);
    snprintf(buf + used, len - used, "%s%s", i ? "," : "", rows[i].name);
  }
  store_rows_free(rows, n);
  return buf;
}

static void audit_all(struct store *s, const struct store_audit_query *q, struct store_audit **a,
                      size_t *n) {
  struct tp_err err = {0};
  struct store_txn *txn;
  assert_ok(store_begin(s, 0, &txn, &err), err);
  assert_ok(store_audit_list(txn, q, a, n, &err), err);
  store_rollback(txn);
}

static void test_open_migrates_and_reopens(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  assert_true(store_schema_latest() >= 2);
  assert_ok(store_open(f->path, &opts_a, &f->s, &err), err);
  assert_int_equal(store_schema_version(f->s), store_schema_latest());
  assert_int_equal(store_revision(f->s), 0);
  create_text(f->s, CERT, "certificates/web", "v1");
  store_close(f->s);
  f->s = NULL;

  if (!pg_not_applicable("the database file is private (mode 0600): no file")) {
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
  }

  assert_ok(store_open(f->path, &opts_a, &f->s, &err), err);
  assert_int_equal(store_schema_version(f->s), store_schema_latest());
  assert_int_equal(store_revision(f->s), 1);
  store_close(f->s);
  f->s = NULL;

  /* An older version than the database has is a downgrade: refused. */
  struct store *old = NULL;
  char newer[64];
  snprintf(newer, sizeof(newer), "schema version %d is newer than 1", store_schema_latest());
  assert_refused(store_open_version(f->path, 1, &old, &err), -ENOTSUP, err,
                 GRPC_STATUS_FAILED_PRECONDITION, newer);
  assert_null(old);
  assert_refused(store_open_version(f->path, 0, &old, &err), -EINVAL, err,
                 GRPC_STATUS_INVALID_ARGUMENT, "schema version 0 unknown");
  assert_refused(store_open_version(f->path, store_schema_latest() + 1, &old, &err), -EINVAL, err,
                 GRPC_STATUS_INVALID_ARGUMENT, "unknown");
}

/* The schema floor: a database older than min_version is refused before
 * it is migrated; a new one is not; tables without schema history are
 * refused as foreign, and nothing is added to them. */
static void test_open_floor_and_foreign(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  assert_ok(store_open_version(f->path, 2, &f->s, &err), err);
  store_close(f->s);
  f->s = NULL;
  struct store_opts floored = opts_a;
  floored.min_version = store_schema_latest();
  struct store *s = NULL;
  assert_refused(store_open(f->path, &floored, &s, &err), -EPROTO, err,
                 GRPC_STATUS_FAILED_PRECONDITION, "database schema version 2 is older than");
  assert_null(s);
  assert_ok(store_open_version(f->path, 2, &s, &err), err); /* still version 2 */
  assert_int_equal(store_schema_version(s), 2);
  store_close(s);
  floored.min_version = store_schema_latest() + 1;
  assert_refused(store_open(f->path, &floored, &s, &err), -ENOTSUP, err,
                 GRPC_STATUS_FAILED_PRECONDITION, "the latest this build knows");

  fixture_reset(f);
  floored.min_version = store_schema_latest();
  assert_ok(store_open(f->path, &floored, &s, &err), err); /* a new database */
  store_close(s);

  fixture_reset(f);
  file_exec(f->path, "CREATE TABLE other (x INTEGER)");
  assert_refused(store_open(f->path, &opts_a, &s, &err), -ENODATA, err,
                 GRPC_STATUS_FAILED_PRECONDITION, "no schema history");
  assert_int_equal(schema_objects(f->path), 1);
}

static void test_upgrade_keeps_rows(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  assert_ok(store_open_version(f->path, 1, &f->s, &err), err);
  assert_int_equal(store_schema_version(f->s), 1);

  struct store_label env = {"env", "prod"};
  struct store_write cert = write_of(CERT, "certificates/web", 1, "cert-v1");
  cert.labels = &env;
  cert.n_labels = 1;
  cert.set_secret = 1;
  cert.secret = (const uint8_t *)"key";
  cert.secret_len = 3;
  cert.expire_time_us = 1000;
  struct store_row before = {0};
  assert_int_equal(put_one(f->s, &cert, &before), 1);
  struct store_ref ref = {CERT, "certificates/web", "tls_context.certificates[0]"};
  struct store_write ctx = write_of(CTX, "tlsContexts/main", 1, "ctx-v1");
  ctx.refs = &ref;
  ctx.n_refs = 1;
  assert_int_equal(put_one(f->s, &ctx, NULL), 2);

  /* Version 1 has no audit trail yet. */
  struct store_audit *a;
  size_t n;
  audit_all(f->s, NULL, &a, &n);
  assert_int_equal(n, 0);
  store_close(f->s);
  f->s = NULL;

  assert_ok(store_open(f->path, &opts_a, &f->s, &err), err);
  assert_int_equal(store_schema_version(f->s), store_schema_latest());
  assert_int_equal(store_revision(f->s), 2);

  struct store_row row;
  assert_ok(get_one(f->s, CERT, "certificates/web", 1, &row, &err), err);
  assert_string_equal(row.etag, before.etag);
  assert_int_equal(row.revision, 1);
  assert_int_equal(row.create_time_us, before.create_time_us);
  assert_int_equal(row.data_len, 7);
  assert_memory_equal(row.data, "cert-v1", 7);
  assert_int_equal(row.secret_len, 3);
  assert_memory_equal(row.secret, "key", 3);
  store_row_clear(&row);
  store_row_clear(&before);
  /* The upgrade sealed the secret written in clear: the file holds the
   * sealed record, under key A. */
  uint8_t raw[256];
  uint8_t id_a[STORE_KEY_ID_LEN];
  store_master_key_id(key_a, id_a);
  assert_int_equal(raw_secret(f->path, CERT, "certificates/web", raw, sizeof(raw)),
                   STORE_SEAL_OVERHEAD + 3);
  assert_int_equal(raw[0], STORE_SEAL_VERSION);
  assert_memory_equal(raw + 1, id_a, STORE_KEY_ID_LEN);

  /* Labels, expiry and references survived and still work. */
  char buf[256];
  struct store_label_req prod = {STORE_LABEL_EQ, "env", "prod"};
  struct store_query q = {.kind = CERT, .labels = &prod, .n_labels = 1};
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)), "certificates/web");
  struct store_query exp = {.kind = CERT, .has_expire_before = 1, .expire_before_us = 2000};
  assert_string_equal(list_names(f->s, &exp, buf, sizeof(buf)), "certificates/web");
  assert_refused(delete_one(f->s, CERT, "certificates/web", NULL, &err), -EBUSY, err,
                 GRPC_STATUS_FAILED_PRECONDITION, "tlsContexts/main");

  /* Migration 2 gave every existing resource an audit event, and new
   * writes are audited. */
  audit_all(f->s, NULL, &a, &n);
  assert_int_equal(n, 2);
  assert_string_equal(a[0].resource, "certificates/web");
  assert_int_equal(a[0].revision, 1);
  assert_string_equal(a[0].action, "import");
  assert_string_equal(a[1].resource, "tlsContexts/main");
  assert_int_equal(a[1].revision, 2);
  store_audit_free(a, n);
  create_text(f->s, CERT, "certificates/api", "cert");
  audit_all(f->s, NULL, &a, &n);
  assert_int_equal(n, 3);
  assert_string_equal(a[2].resource, "certificates/api");
  assert_string_equal(a[2].action, "create");
  assert_int_equal(a[2].revision, 3);
  store_audit_free(a, n);
}

static void test_create_get_update_delete(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct store_row created = {0};
  struct store_write w = write_of(CERT, "certificates/web", 1, "first");
  assert_int_equal(put_one(f->s, &w, &created), 1);
  assert_string_equal(created.kind, CERT);
  assert_string_equal(created.name, "certificates/web");
  assert_int_equal(created.revision, 1);
  assert_non_null(created.etag);
  assert_true(created.create_time_us > 1600000000LL * 1000000);
  assert_int_equal(created.create_time_us, created.update_time_us);
  assert_null(created.data);

  struct store_row row;
  assert_ok(get_one(f->s, CERT, "certificates/web", 0, &row, &err), err);
  assert_string_equal(row.kind, CERT);
  assert_string_equal(row.etag, created.etag);
  assert_int_equal(row.revision, 1);
  assert_int_equal(row.data_len, 5);
  assert_memory_equal(row.data, "first", 5);
  store_row_clear(&row);

  /* The same name under another kind is another row. */
  assert_refused(get_one(f->s, CTX, "certificates/web", 0, &row, &err), -ENOENT, err,
                 GRPC_STATUS_NOT_FOUND, "certificates/web");
  assert_null(row.name);

  struct store_row updated = {0};
  w = write_of(CERT, "certificates/web", 0, "second!");
  w.expect_etag = created.etag;
  assert_int_equal(put_one(f->s, &w, &updated), 2);
  assert_string_not_equal(updated.etag, created.etag);
  assert_int_equal(updated.revision, 2);
  assert_int_equal(updated.create_time_us, created.create_time_us);
  assert_true(updated.update_time_us >= created.update_time_us);
  assert_ok(get_one(f->s, CERT, "certificates/web", 0, &row, &err), err);
  assert_int_equal(row.data_len, 7);
  assert_memory_equal(row.data, "second!", 7);
  assert_string_equal(row.etag, updated.etag);
  store_row_clear(&row);

  assert_ok(delete_one(f->s, CERT, "certificates/web", updated.etag, &err), err);
  assert_int_equal(store_revision(f->s), 3);
  assert_refused(get_one(f->s, CERT, "certificates/web", 0, &row, &err), -ENOENT, err,
                 GRPC_STATUS_NOT_FOUND, "certificates/web not found");
  store_row_clear(&created);
  store_row_clear(&updated);

  /* An empty row (no data) is stored and read back as empty. */
  struct store_write empty = {.kind = CERT, .name = "certificates/empty", .create = 1};
  put_one(f->s, &empty, NULL);
  assert_ok(get_one(f->s, CERT, "certificates/empty", 1, &row, &err), err);
  assert_int_equal(row.data_len, 0);
  assert_null(row.secret);
  store_row_clear(&row);
}

static void test_exists_and_not_found(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  create_text(f->s, CERT, "certificates/web", "x");
  struct store_write again = write_of(CERT, "certificates/web", 1, "y");
  assert_refused(put_fails(f->s, &again, &err), -EEXIST, err, GRPC_STATUS_ALREADY_EXISTS,
                 "certificates/web already exists");
  struct store_write missing = write_of(CERT, "certificates/nope", 0, "y");
  assert_refused(put_fails(f->s, &missing, &err), -ENOENT, err, GRPC_STATUS_NOT_FOUND,
                 "certificates/nope");
  assert_refused(delete_one(f->s, CERT, "certificates/nope", NULL, &err), -ENOENT, err,
                 GRPC_STATUS_NOT_FOUND, "certificates/nope");
  /* Nothing of that changed the revision. */
  assert_int_equal(store_revision(f->s), 1);

  struct store_row row;
  assert_ok(get_one(f->s, CERT, "certificates/web", 0, &row, &err), err);
  assert_memory_equal(row.data, "x", 1);
  store_row_clear(&row);
}

static void test_etag_conflict(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct store_row v1 = {0}, v2 = {0};
  struct store_write w = write_of(CERT, "certificates/web", 1, "v1");
  put_one(f->s, &w, &v1);
  w = write_of(CERT, "certificates/web", 0, "v2");
  w.expect_etag = v1.etag;
  put_one(f->s, &w, &v2);

  /* A job that read v1 lost the race. */
  w = write_of(CERT, "certificates/web", 0, "v3");
  w.expect_etag = v1.etag;
  assert_refused(put_fails(f->s, &w, &err), -ESTALE, err, GRPC_STATUS_FAILED_PRECONDITION,
                 "etag mismatch: certificates/web was changed");
  assert_contains(err.msg, v2.etag);
  assert_refused(delete_one(f->s, CERT, "certificates/web", v1.etag, &err), -ESTALE, err,
                 GRPC_STATUS_FAILED_PRECONDITION, "etag mismatch");
  assert_int_equal(store_revision(f->s), 2);

  /* An empty etag skips the check. */
  w.expect_etag = "";
  assert_int_equal(put_one(f->s, &w, NULL), 3);
  struct store_row row;
  assert_ok(get_one(f->s, CERT, "certificates/web", 0, &row, &err), err);
  assert_memory_equal(row.data, "v3", 2);
  store_row_clear(&row);
  store_row_clear(&v1);
  store_row_clear(&v2);
}

/* What the audit hook saw: one call per commit that made a revision. */
struct audit_seen {
  int calls;
  size_t n, more;
  int64_t revision;
  char text[1024]; /* "action resource actor method;" per row */
};

static void audit_seen_cb(const struct store_audit *rows, size_t n, size_t more, void *data) {
  struct audit_seen *seen = data;
  seen->calls++;
  seen->n = n;
  seen->more = more;
  seen->text[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    seen->revision = rows[i].revision;
    assert_true(rows[i].time_us > 0);
    size_t len = strlen(seen->text);
    snprintf(seen->text + len, sizeof(seen->text) - len, "%s %s %s %s;", rows[i].action,
             rows[i].resource, rows[i].actor, rows[i].method);
  }
}

static void test_audit_hook_sees_each_commit(void **state) {
  struct fixture *f = *state;
  struct audit_seen seen = {0};
  store_set_audit_hook(f->s, audit_seen_cb, &seen);
  struct tp_err err = {0};

  /* Two writes and a delete in one transaction: one call, three rows, at
   * the revision the commit made. */
  create_text(f->s, CERT, "certificates/gone", "x");
  assert_int_equal(seen.calls, 1);
  struct store_txn *txn;
  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  struct store_write a = write_of(CERT, "certificates/a", 1, "a");
  struct store_write b = write_of(CERT, "certificates/b", 1, "b");
  b.action = "rotate";
  assert_ok(store_put(txn, &a, NULL, &err), err);
  assert_ok(store_put(txn, &b, NULL, &err), err);
  assert_ok(store_delete(txn, CERT, "certificates/gone", NULL, "bob", "m", &err), err);
  int64_t rev = 0;
  assert_ok(store_commit(txn, &rev, &err), err);
  assert_int_equal(seen.calls, 2);
  assert_int_equal(seen.n, 3);
  assert_int_equal(seen.more, 0);
  assert_int_equal(seen.revision, rev);
  assert_string_equal(seen.text, "create certificates/a alice /tlsplane.v1.Test/Write;"
                                 "rotate certificates/b alice /tlsplane.v1.Test/Write;"
                                 "delete certificates/gone bob m;");

  /* Rolled back, failed, or read only: no call. */
  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  struct store_write c = write_of(CERT, "certificates/c", 1, "c");
  assert_ok(store_put(txn, &c, NULL, &err), err);
  store_rollback(txn);
  assert_int_equal(put_fails(f->s, &a, &err), -EEXIST);
  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  assert_ok(store_put(txn, &c, NULL, &err), err);
  assert_int_equal(store_put(txn, &a, NULL, &err), -EEXIST);
  assert_int_equal(store_commit(txn, NULL, &err), -EEXIST);
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_ok(store_commit(txn, NULL, &err), err);
  assert_int_equal(seen.calls, 2);

  /* Beyond STORE_AUDIT_HOOK_ROWS rows: counted. */
  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  for (int i = 0; i < STORE_AUDIT_HOOK_ROWS + 3; i++) {
    char name[64];
    snprintf(name, sizeof(name), "certificates/many-%d", i);
    struct store_write w = write_of(CERT, name, 1, "m");
    assert_ok(store_put(txn, &w, NULL, &err), err);
  }
  assert_ok(store_commit(txn, NULL, &err), err);
  assert_int_equal(seen.calls, 3);
  assert_int_equal(seen.n, STORE_AUDIT_HOOK_ROWS);
  assert_int_equal(seen.more, 3);
  store_set_audit_hook(f->s, NULL, NULL);
}

static void test_revision_once_per_txn(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  create_text(f->s, CERT, "certificates/a", "a");
  assert_int_equal(store_revision(f->s), 1);

  struct store_txn *txn;
  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  assert_int_equal(store_txn_revision(txn), 2);
  const char *names[] = {"certificates/b", "certificates/c", "certificates/d"};
  for (int i = 0; i < 3; i++) {
    struct store_write w = write_of(CERT, names[i], 1, "x");
    assert_ok(store_put(txn, &w, NULL, &err), err);
  }
  struct store_write w = write_of(CERT, "certificates/a", 0, "a2");
  assert_ok(store_put(txn, &w, NULL, &err), err);
  /* Not visible to others before commit. */
  assert_int_equal(store_revision(f->s), 1);
  struct store_row row;
  assert_refused(get_one(f->s, CERT, "certificates/b", 0, &row, &err), -ENOENT, err,
                 GRPC_STATUS_NOT_FOUND, "certificates/b");
  int64_t rev = 0;
  assert_ok(store_commit(txn, &rev, &err), err);
  assert_int_equal(rev, 2);
  assert_int_equal(store_revision(f->s), 2);
  for (int i = 0; i < 3; i++) {
    assert_ok(get_one(f->s, CERT, names[i], 0, &row, &err), err);
    assert_int_equal(row.revision, 2);
    assert_string_equal(row.etag, "2");
    store_row_clear(&row);
  }

  /* Read-only transactions, and write transactions that wrote nothing,
   * commit no revision. */
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_int_equal(store_txn_revision(txn), 2);
  assert_ok(store_get(txn, CERT, "certificates/a", 0, &row, &err), err);
  store_row_clear(&row);
  rev = 0;
  assert_ok(store_commit(txn, &rev, &err), err);
  assert_int_equal(rev, 2);
  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  assert_ok(store_get(txn, CERT, "certificates/a", 0, &row, &err), err);
  store_row_clear(&row);
  rev = 0;
  assert_ok(store_commit(txn, &rev, &err), err);
  assert_int_equal(rev, 2);
  assert_int_equal(store_revision(f->s), 2);
  assert_int_equal(create_text(f->s, CERT, "certificates/e", "e"), 3);
}

static void test_rollback_leaves_nothing(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  create_text(f->s, CERT, "certificates/a", "a");
  struct store_audit *a;
  size_t n_audit;
  audit_all(f->s, NULL, &a, &n_audit);
  store_audit_free(a, n_audit);

  struct store_txn *txn;
  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  struct store_write w = write_of(CERT, "certificates/b", 1, "b");
  assert_ok(store_put(txn, &w, NULL, &err), err);
  assert_ok(store_delete(txn, CERT, "certificates/a", NULL, "bob", "m", &err), err);
  store_rollback(txn);

  char buf[256];
  struct store_query all = {.kind = CERT};
  assert_string_equal(list_names(f->s, &all, buf, sizeof(buf)), "certificates/a");
  assert_int_equal(store_revision(f->s), 1);
  size_t n;
  audit_all(f->s, NULL, &a, &n);
  assert_int_equal(n, n_audit);
  store_audit_free(a, n);

  /* A failed write aborts the transaction: commit reports it and keeps
   * nothing of what came before it. */
  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  w = write_of(CERT, "certificates/c", 1, "c");
  assert_ok(store_put(txn, &w, NULL, &err), err);
  w = write_of(CERT, "certificates/a", 1, "dup");
  assert_refused(store_put(txn, &w, NULL, &err), -EEXIST, err, GRPC_STATUS_ALREADY_EXISTS,
                 "certificates/a already exists");
  struct store_row row;
  memset(&err, 0, sizeof(err));
  assert_refused(store_get(txn, CERT, "certificates/a", 0, &row, &err), -EEXIST, err,
                 GRPC_STATUS_ALREADY_EXISTS, "certificates/a already exists");
  int64_t rev = -1;
  memset(&err, 0, sizeof(err));
  assert_refused(store_commit(txn, &rev, &err), -EEXIST, err, GRPC_STATUS_ALREADY_EXISTS,
                 "certificates/a already exists");
  assert_int_equal(rev, -1);
  assert_string_equal(list_names(f->s, &all, buf, sizeof(buf)), "certificates/a");
  assert_int_equal(store_revision(f->s), 1);
  /* The write lock was released: the next writer proceeds. */
  assert_int_equal(create_text(f->s, CERT, "certificates/d", "d"), 2);
  store_rollback(NULL);
}

static void test_secrets(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct store_write w = write_of(CERT, "certificates/web", 1, "pub");
  w.set_secret = 1;
  w.secret = (const uint8_t *)"private-1";
  w.secret_len = 9;
  put_one(f->s, &w, NULL);

  struct store_row row;
  assert_ok(get_one(f->s, CERT, "certificates/web", 0, &row, &err), err);
  assert_null(row.secret);
  assert_int_equal(row.secret_len, 0);
  store_row_clear(&row);
  assert_ok(get_one(f->s, CERT, "certificates/web", 1, &row, &err), err);
  assert_int_equal(row.secret_len, 9);
  assert_memory_equal(row.secret, "private-1", 9);
  store_row_clear(&row);

  /* set_secret = 0 keeps it. */
  w = write_of(CERT, "certificates/web", 0, "pub2");
  put_one(f->s, &w, NULL);
  assert_ok(get_one(f->s, CERT, "certificates/web", 1, &row, &err), err);
  assert_memory_equal(row.data, "pub2", 4);
  assert_int_equal(row.secret_len, 9);
  assert_memory_equal(row.secret, "private-1", 9);
  store_row_clear(&row);

  /* set_secret = 1 replaces it, or removes it with none given. */
  w.set_secret = 1;
  w.secret = (const uint8_t *)"private-2!";
  w.secret_len = 10;
  put_one(f->s, &w, NULL);
  assert_ok(get_one(f->s, CERT, "certificates/web", 1, &row, &err), err);
  assert_int_equal(row.secret_len, 10);
  assert_memory_equal(row.secret, "private-2!", 10);
  store_row_clear(&row);
  w.secret = NULL;
  w.secret_len = 0;
  put_one(f->s, &w, NULL);
  assert_ok(get_one(f->s, CERT, "certificates/web", 1, &row, &err), err);
  assert_null(row.secret);
  store_row_clear(&row);

  /* Lists never carry secrets. */
  w = write_of(CERT, "certificates/api", 1, "pub");
  w.set_secret = 1;
  w.secret = (const uint8_t *)"s";
  w.secret_len = 1;
  put_one(f->s, &w, NULL);
  struct store_txn *txn;
  struct store_row *rows;
  size_t n;
  struct store_query q = {.kind = CERT};
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_ok(store_list(txn, &q, &rows, &n, &err), err);
  store_rollback(txn);
  assert_int_equal(n, 2);
  assert_null(rows[0].secret);
  assert_null(rows[1].secret);
  store_rows_free(rows, n);
}

static void put_labels(struct store *s, const char *name, int create,
                       const struct store_label *labels, size_t n) {
  struct store_write w = write_of("Listener", name, create, name);
  w.labels = labels;
  w.n_labels = n;
  put_one(s, &w, NULL);
}

static const char *select_names(struct store *s, const struct store_label_req *reqs, size_t n,
                                char *buf, size_t len) {
  struct store_query q = {.kind = "Listener", .labels = reqs, .n_labels = n};
  return list_names(s, &q, buf, len);
}

static void test_label_selectors(void **state) {
  struct fixture *f = *state;
  struct store_label a[] = {{"env", "prod"}, {"tier", "web"}};
  struct store_label b[] = {{"env", "dev"}};
  put_labels(f->s, "listeners/a", 1, a, 2);
  put_labels(f->s, "listeners/b", 1, b, 1);
  put_labels(f->s, "listeners/c", 1, NULL, 0);
  char buf[256];

  struct store_label_req eq = {STORE_LABEL_EQ, "env", "prod"};
  assert_string_equal(select_names(f->s, &eq, 1, buf, sizeof(buf)), "listeners/a");
  struct store_label_req ne = {STORE_LABEL_NE, "env", "prod"};
  assert_string_equal(select_names(f->s, &ne, 1, buf, sizeof(buf)), "listeners/b,listeners/c");
  struct store_label_req ex = {STORE_LABEL_EXISTS, "env", NULL};
  assert_string_equal(select_names(f->s, &ex, 1, buf, sizeof(buf)), "listeners/a,listeners/b");
  struct store_label_req nex = {STORE_LABEL_NOT_EXISTS, "env", NULL};
  assert_string_equal(select_names(f->s, &nex, 1, buf, sizeof(buf)), "listeners/c");

  /* All requirements must hold. */
  struct store_label_req both[] = {{STORE_LABEL_EXISTS, "env", NULL},
                                   {STORE_LABEL_NE, "tier", "web"}};
  assert_string_equal(select_names(f->s, both, 2, buf, sizeof(buf)), "listeners/b");
  struct store_label_req none[] = {{STORE_LABEL_EQ, "env", "prod"}, {STORE_LABEL_EQ, "env", "dev"}};
  assert_string_equal(select_names(f->s, none, 2, buf, sizeof(buf)), "");

  /* Values are bound, never spliced into the SQL. */
  struct store_label_req inject = {STORE_LABEL_EQ, "env", "x' OR '1'='1"};
  assert_string_equal(select_names(f->s, &inject, 1, buf, sizeof(buf)), "");
  struct store_label_req inject_key = {STORE_LABEL_NOT_EXISTS, "env') OR 1=1 --", NULL};
  assert_string_equal(select_names(f->s, &inject_key, 1, buf, sizeof(buf)),
                      "listeners/a,listeners/b,listeners/c");

  /* An update replaces the labels. */
  struct store_label a2[] = {{"env", "dev"}};
  put_labels(f->s, "listeners/a", 0, a2, 1);
  assert_string_equal(select_names(f->s, &eq, 1, buf, sizeof(buf)), "");
  struct store_label_req tier = {STORE_LABEL_EXISTS, "tier", NULL};
  assert_string_equal(select_names(f->s, &tier, 1, buf, sizeof(buf)), "");
  struct store_label_req dev = {STORE_LABEL_EQ, "env", "dev"};
  assert_string_equal(select_names(f->s, &dev, 1, buf, sizeof(buf)), "listeners/a,listeners/b");

  /* Duplicate keys are refused. */
  struct tp_err err = {0};
  struct store_label dup[] = {{"env", "a"}, {"env", "b"}};
  struct store_write w = write_of("Listener", "listeners/d", 1, "d");
  w.labels = dup;
  w.n_labels = 2;
  assert_refused(put_fails(f->s, &w, &err), -EINVAL, err, GRPC_STATUS_INVALID_ARGUMENT,
                 "labels: duplicate key \"env\"");
}

static void test_pagination(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct store_txn *txn;
  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  /* Inserted out of order; listed in name order. */
  for (int i = 24; i >= 0; i--) {
    char name[64];
    snprintf(name, sizeof(name), "certificates/c%02d", i);
    struct store_write w = write_of(CERT, name, 1, "x");
    assert_ok(store_put(txn, &w, NULL, &err), err);
  }
  struct store_write other = write_of(CTX, "certificates/c05x", 1, "other kind");
  assert_ok(store_put(txn, &other, NULL, &err), err);
  assert_ok(store_commit(txn, NULL, &err), err);

  char after[64] = "";
  int seen = 0, pages = 0;
  for (;;) {
    struct store_query q = {.kind = CERT, .after_name = after[0] ? after : NULL, .limit = 10};
    struct store_row *rows;
    size_t n;
    assert_ok(store_begin(f->s, 0, &txn, &err), err);
    assert_ok(store_list(txn, &q, &rows, &n, &err), err);
    store_rollback(txn);
    if (n == 0) {
      assert_null(rows);
      break;
    }
    pages++;
    assert_true(n <= 10);
    for (size_t i = 0; i < n; i++) {
      char want[64];
      snprintf(want, sizeof(want), "certificates/c%02d", seen++);
      assert_string_equal(rows[i].name, want);
      assert_string_equal(rows[i].kind, CERT);
      assert_memory_equal(rows[i].data, "x", 1);
    }
    snprintf(after, sizeof(after), "%s", rows[n - 1].name);
    store_rows_free(rows, n);
  }
  assert_int_equal(seen, 25);
  assert_int_equal(pages, 3);
}

/* The due time is a second indexed time, apart from the expiry: a row is
 * listed by either without the other. */
static void test_due_beside_expiry(void **state) {
  struct fixture *f = *state;
  const struct {
    const char *name;
    int64_t expire, due;
  } certs[] = {{"certificates/plain", 100, 0},
               {"certificates/due", 900, 100},
               {"certificates/later", 50, 500}};
  for (size_t i = 0; i < 3; i++) {
    struct store_write w = write_of(CERT, certs[i].name, 1, "x");
    w.expire_time_us = certs[i].expire;
    w.due_time_us = certs[i].due;
    put_one(f->s, &w, NULL);
  }
  char buf[256];
  struct store_query q = {.kind = CERT, .has_due_before = 1, .due_before_us = 200};
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)), "certificates/due");
  q.due_before_us = 1000;
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)),
                      "certificates/due,certificates/later");
  /* Both filters hold at once. */
  q.has_expire_before = 1;
  q.expire_before_us = 100;
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)), "certificates/later");
  q.has_expire_before = 0;
  /* An update moves the due time, or clears it (0). */
  struct store_write w = write_of(CERT, "certificates/due", 0, "renewed");
  w.due_time_us = 0;
  put_one(f->s, &w, NULL);
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)), "certificates/later");
  w = write_of(CERT, "certificates/plain", 0, "issued");
  w.due_time_us = 10;
  put_one(f->s, &w, NULL);
  q.due_before_us = 11;
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)), "certificates/plain");
  /* Negative: refused. */
  struct store_txn *txn;
  struct tp_err err = {0};
  w = write_of(CERT, "certificates/neg", 1, "x");
  w.due_time_us = -1;
  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  assert_int_equal(store_put(txn, &w, NULL, &err), -EINVAL);
  store_rollback(txn);
}

static void test_expire_filter(void **state) {
  struct fixture *f = *state;
  const struct {
    const char *name;
    int64_t expire;
  } certs[] = {{"certificates/never", 0},
               {"certificates/soon", 100},
               {"certificates/later", 200},
               {"certificates/far", 300}};
  for (size_t i = 0; i < 4; i++) {
    struct store_write w = write_of(CERT, certs[i].name, 1, "x");
    w.expire_time_us = certs[i].expire;
    put_one(f->s, &w, NULL);
  }
  char buf[256];
  struct store_query q = {.kind = CERT, .has_expire_before = 1, .expire_before_us = 250};
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)),
                      "certificates/later,certificates/soon");
  q.expire_before_us = 200; /* strictly before */
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)), "certificates/soon");
  /* The epoch and before are times like any other: nothing expires then. */
  q.expire_before_us = 0;
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)), "");
  q.expire_before_us = -1000;
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)), "");
  q.has_expire_before = 0; /* no filter */
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)),
                      "certificates/far,certificates/later,certificates/never,certificates/soon");
  q.has_expire_before = 1;
  /* An update moves the expiry. */
  struct store_write w = write_of(CERT, "certificates/far", 0, "renewed early");
  w.expire_time_us = 50;
  put_one(f->s, &w, NULL);
  q.expire_before_us = 100;
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)), "certificates/far");
}

/* The rows a job has work on (store_write.due_time_us), indexed from
 * schema 7 on: an update moves or clears the due time; before schema 7
 * nothing is due and writes still go through. */
static void test_due_filter(void **state) {
  struct fixture *f = *state;
  const struct {
    const char *name;
    int64_t due;
  } certs[] = {{"certificates/none", 0}, {"certificates/now", 100}, {"certificates/later", 300}};
  for (size_t i = 0; i < 3; i++) {
    struct store_write w = write_of(CERT, certs[i].name, 1, "x");
    w.due_time_us = certs[i].due;
    put_one(f->s, &w, NULL);
  }
  char buf[256];
  struct store_query q = {.kind = CERT, .has_due_before = 1, .due_before_us = 200};
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)), "certificates/now");
  q.due_before_us = 100; /* strictly before */
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)), "");
  q.due_before_us = 1000;
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)),
                      "certificates/later,certificates/now");
  struct store_write w = write_of(CERT, "certificates/now", 0, "done");
  put_one(f->s, &w, NULL); /* due 0: nothing more to do */
  w = write_of(CERT, "certificates/none", 0, "scheduled");
  w.due_time_us = 50;
  put_one(f->s, &w, NULL);
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)),
                      "certificates/later,certificates/none");
  struct tp_err err = {0};
  w = write_of(CERT, "certificates/later", 0, "y");
  w.due_time_us = -1;
  assert_refused(put_fails(f->s, &w, &err), -EINVAL, err, GRPC_STATUS_INVALID_ARGUMENT,
                 "negative due time");
}

static void test_due_before_schema_7(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  assert_ok(store_open_version(f->path, 2, &f->s, &err), err); /* any before 7 */
  struct store_write w = write_of(CERT, "certificates/web", 1, "x");
  w.due_time_us = 100;
  put_one(f->s, &w, NULL);
  w = write_of(CERT, "certificates/web", 0, "y");
  w.due_time_us = 100;
  put_one(f->s, &w, NULL);
  char buf[256];
  struct store_query q = {.kind = CERT, .has_due_before = 1, .due_before_us = 1000};
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)), "");
  q.has_due_before = 0;
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)), "certificates/web");
}

static void test_references(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  create_text(f->s, CERT, "certificates/web", "cert");

  struct store_ref refs[] = {{CERT, "certificates/web", "tls_context.certificates[0]"},
                             {CERT, "certificates/nope", "tls_context.certificates[1]"}};
  struct store_write ctx = write_of(CTX, "tlsContexts/main", 1, "ctx");
  ctx.refs = refs;
  ctx.n_refs = 2;
  assert_refused(put_fails(f->s, &ctx, &err), -EINVAL, err, GRPC_STATUS_INVALID_ARGUMENT,
                 "tls_context.certificates[1]: certificates/nope does not exist");
  /* The kind is part of the key: a TlsContext of that name is no
   * certificate. */
  create_text(f->s, CTX, "certificates/nope", "wrong kind");
  assert_refused(put_fails(f->s, &ctx, &err), -EINVAL, err, GRPC_STATUS_INVALID_ARGUMENT,
                 "tls_context.certificates[1]: certificates/nope does not exist");
  ctx.n_refs = 1;
  put_one(f->s, &ctx, NULL);

  /* A resource cannot reference itself. */
  struct store_ref self = {CTX, "tlsContexts/main", "tls_context.parent"};
  struct store_write selfw = write_of(CTX, "tlsContexts/main", 0, "ctx");
  selfw.refs = &self;
  selfw.n_refs = 1;
  assert_refused(put_fails(f->s, &selfw, &err), -EINVAL, err, GRPC_STATUS_INVALID_ARGUMENT,
                 "tls_context.parent");

  struct store_ref ref2 = {CERT, "certificates/web", "listener.default_certificate"};
  struct store_write listener = write_of("Listener", "listeners/https", 1, "l");
  listener.refs = &ref2;
  listener.n_refs = 1;
  put_one(f->s, &listener, NULL);

  struct store_txn *txn;
  struct store_row *rows;
  size_t n;
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_ok(store_referrers(txn, CERT, "certificates/web", &rows, &n, &err), err);
  store_rollback(txn);
  assert_int_equal(n, 2);
  assert_string_equal(rows[0].name, "listeners/https");
  assert_string_equal(rows[0].kind, "Listener");
  assert_string_equal(rows[1].name, "tlsContexts/main");
  assert_string_equal(rows[1].etag, "3");
  store_rows_free(rows, n);

  /* Refused while referenced, naming the (first) referrer and its field. */
  assert_refused(
      delete_one(f->s, CERT, "certificates/web", NULL, &err), -EBUSY, err,
      GRPC_STATUS_FAILED_PRECONDITION,
      "certificates/web is referenced by listeners/https (listener.default_certificate)");
  assert_ok(delete_one(f->s, "Listener", "listeners/https", NULL, &err), err);
  assert_refused(delete_one(f->s, CERT, "certificates/web", NULL, &err), -EBUSY, err,
                 GRPC_STATUS_FAILED_PRECONDITION,
                 "certificates/web is referenced by tlsContexts/main");
  assert_contains(err.msg, "tls_context.certificates[0]");

  /* An update that drops the reference frees the target. */
  struct store_write bare = write_of(CTX, "tlsContexts/main", 0, "ctx without certs");
  put_one(f->s, &bare, NULL);
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_ok(store_referrers(txn, CERT, "certificates/web", &rows, &n, &err), err);
  store_rollback(txn);
  assert_int_equal(n, 0);
  assert_null(rows);
  ctx.create = 0;
  put_one(f->s, &ctx, NULL);

  /* Deleting the referrer takes its references with it. */
  assert_ok(delete_one(f->s, CTX, "tlsContexts/main", NULL, &err), err);
  assert_ok(delete_one(f->s, CERT, "certificates/web", NULL, &err), err);
  struct store_row row;
  assert_refused(get_one(f->s, CERT, "certificates/web", 0, &row, &err), -ENOENT, err,
                 GRPC_STATUS_NOT_FOUND, "certificates/web");
}

static void test_audit(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct store_write w = write_of(CERT, "certificates/web", 1, "x");
  put_one(f->s, &w, NULL); /* rev 1, alice, create */
  w = write_of(CERT, "certificates/web", 0, "y");
  w.actor = "rotator";
  w.method = "/tlsplane.v1.CertificateService/UpdateCertificate";
  w.action = "rotate";
  put_one(f->s, &w, NULL);                          /* rev 2, rotator, rotate */
  create_text(f->s, CERT, "certificates/api", "z"); /* rev 3 */
  assert_ok(delete_one(f->s, CERT, "certificates/web", NULL, &err), err); /* rev 4, bob */

  struct store_audit *a;
  size_t n;
  audit_all(f->s, NULL, &a, &n);
  assert_int_equal(n, 4);
  const char *resources[] = {"certificates/web", "certificates/web", "certificates/api",
                             "certificates/web"};
  const char *actions[] = {"create", "rotate", "create", "delete"};
  const char *actors[] = {"alice", "rotator", "alice", "bob"};
  int64_t now = 0;
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(a[i].revision, (int64_t)i + 1);
    if (i > 0)
      assert_true(a[i].seq > a[i - 1].seq);
    assert_true(a[i].time_us >= now);
    now = a[i].time_us;
    assert_string_equal(a[i].resource, resources[i]);
    assert_string_equal(a[i].action, actions[i]);
    assert_string_equal(a[i].actor, actors[i]);
  }
  assert_string_equal(a[1].method, "/tlsplane.v1.CertificateService/UpdateCertificate");
  assert_string_equal(a[3].method, "/tlsplane.v1.Test/Delete");
  int64_t second_seq = a[1].seq;
  store_audit_free(a, n);

  struct store_audit_query by_resource = {.resource = "certificates/api"};
  audit_all(f->s, &by_resource, &a, &n);
  assert_int_equal(n, 1);
  assert_int_equal(a[0].revision, 3);
  store_audit_free(a, n);

  struct store_audit_query by_actor = {.actor = "alice", .since_revision = 1};
  audit_all(f->s, &by_actor, &a, &n);
  assert_int_equal(n, 1);
  assert_string_equal(a[0].resource, "certificates/api");
  store_audit_free(a, n);

  struct store_audit_query page = {.after_seq = second_seq, .limit = 1};
  audit_all(f->s, &page, &a, &n);
  assert_int_equal(n, 1);
  assert_int_equal(a[0].revision, 3);
  page.after_seq = a[0].seq;
  store_audit_free(a, n);
  audit_all(f->s, &page, &a, &n);
  assert_int_equal(n, 1);
  assert_int_equal(a[0].revision, 4);
  page.after_seq = a[0].seq;
  store_audit_free(a, n);
  audit_all(f->s, &page, &a, &n);
  assert_int_equal(n, 0);
  assert_null(a);

  struct store_audit_query nobody = {.actor = "mallory"};
  audit_all(f->s, &nobody, &a, &n);
  assert_int_equal(n, 0);
}

/* Newest first, a half-open time range, the changes each row recorded. */
static void test_audit_order_time_changes(void **state) {
  struct fixture *f = *state;
  struct store_audit_change ch[] = {{"serial_number", "01", "02"}, {"not_after", "", "2030"}};
  struct store_write w = write_of(CERT, "certificates/web", 1, "x");
  w.changes = ch;
  w.n_changes = 2;
  put_one(f->s, &w, NULL);
  create_text(f->s, CERT, "certificates/api", "y");
  create_text(f->s, CERT, "certificates/db", "z");

  struct store_audit *a;
  size_t n;
  audit_all(f->s, NULL, &a, &n);
  assert_int_equal(n, 3);
  assert_int_equal(a[0].n_changes, 2);
  assert_string_equal(a[0].changes[0].field, "serial_number");
  assert_string_equal(a[0].changes[0].before, "01");
  assert_string_equal(a[0].changes[0].after, "02");
  assert_string_equal(a[0].changes[1].field, "not_after");
  assert_string_equal(a[0].changes[1].before, "");
  assert_int_equal(a[1].n_changes, 0);
  int64_t seq[3], t[3];
  for (size_t i = 0; i < 3; i++) {
    seq[i] = a[i].seq;
    t[i] = a[i].time_us;
  }
  store_audit_free(a, n);

  struct store_audit_query desc = {.descending = 1, .limit = 2};
  audit_all(f->s, &desc, &a, &n);
  assert_int_equal(n, 2);
  assert_int_equal(a[0].seq, seq[2]);
  assert_int_equal(a[1].seq, seq[1]);
  store_audit_free(a, n);
  desc.before_seq = seq[1];
  audit_all(f->s, &desc, &a, &n);
  assert_int_equal(n, 1);
  assert_int_equal(a[0].seq, seq[0]);
  assert_int_equal(a[0].n_changes, 2);
  store_audit_free(a, n);

  struct store_audit_query range = {
      .has_start_time = 1, .start_time_us = t[1], .has_end_time = 1, .end_time_us = t[2]};
  audit_all(f->s, &range, &a, &n);
  size_t want = t[1] < t[2] ? 1 : 0; /* two writes in one microsecond: none */
  assert_int_equal(n, want);
  if (want)
    assert_int_equal(a[0].seq, seq[1]);
  store_audit_free(a, n);
}

/* skip_unchanged: the same data and secret commit nothing; a new secret,
 * new data or a stale etag go through as before. */
static void test_put_skip_unchanged(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct store_write w = write_of(CERT, "certificates/web", 1, "chain");
  w.set_secret = 1;
  w.secret = (const uint8_t *)"key-1";
  w.secret_len = 5;
  struct store_row first = {0};
  int64_t rev = put_one(f->s, &w, &first);

  w.create = 0;
  w.skip_unchanged = 1;
  w.expect_etag = first.etag;
  struct store_row same = {0};
  assert_int_equal(put_one(f->s, &w, &same), rev);
  assert_int_equal(store_revision(f->s), rev);
  assert_string_equal(same.etag, first.etag);
  assert_int_equal(same.revision, first.revision);
  assert_int_equal(same.update_time_us, first.update_time_us);
  store_row_clear(&same);
  struct store_audit *a;
  size_t n;
  audit_all(f->s, NULL, &a, &n);
  assert_int_equal(n, 1);
  store_audit_free(a, n);

  w.secret = (const uint8_t *)"key-2";
  assert_int_equal(put_one(f->s, &w, NULL), rev + 1);
  w.expect_etag = first.etag;
  assert_refused(put_fails(f->s, &w, &err), -ESTALE, err, GRPC_STATUS_FAILED_PRECONDITION, "etag");
  w.expect_etag = NULL;
  w.data = (const uint8_t *)"chain2";
  w.data_len = 6;
  assert_int_equal(put_one(f->s, &w, NULL), rev + 2);
  store_row_clear(&first);
}

static void test_durable_across_reopen(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct store_label env = {"env", "prod"};
  struct store_row written[10];
  for (int i = 0; i < 10; i++) {
    char name[64], data[64];
    snprintf(name, sizeof(name), "certificates/c%d", i);
    snprintf(data, sizeof(data), "data-%d", i);
    struct store_write w = write_of(CERT, name, 1, data);
    w.labels = &env;
    w.n_labels = i % 2;
    put_one(f->s, &w, &written[i]);
  }
  store_close(f->s);
  f->s = NULL;

  assert_ok(store_open(f->path, &opts_a, &f->s, &err), err);
  assert_int_equal(store_revision(f->s), 10);
  for (int i = 0; i < 10; i++) {
    char data[64];
    snprintf(data, sizeof(data), "data-%d", i);
    struct store_row row;
    assert_ok(get_one(f->s, CERT, written[i].name, 0, &row, &err), err);
    assert_string_equal(row.etag, written[i].etag);
    assert_int_equal(row.revision, written[i].revision);
    assert_int_equal(row.create_time_us, written[i].create_time_us);
    assert_int_equal(row.update_time_us, written[i].update_time_us);
    assert_int_equal(row.data_len, strlen(data));
    assert_memory_equal(row.data, data, row.data_len);
    store_row_clear(&row);
    store_row_clear(&written[i]);
  }
  char buf[512];
  struct store_label_req prod = {STORE_LABEL_EQ, "env", "prod"};
  struct store_query q = {.kind = CERT, .labels = &prod, .n_labels = 1};
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)),
                      "certificates/c1,certificates/c3,certificates/c5,certificates/c7,"
                      "certificates/c9");
  /* The next write continues the revision sequence. */
  assert_int_equal(create_text(f->s, CERT, "certificates/next", "n"), 11);
}

static void test_misuse(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct store_txn *txn;
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  struct store_write w = write_of(CERT, "certificates/web", 1, "x");
  assert_refused(store_put(txn, &w, NULL, &err), -EIO, err, GRPC_STATUS_INTERNAL,
                 "needs a write transaction");
  assert_refused(store_delete(txn, CERT, "certificates/web", NULL, "a", "m", &err), -EIO, err,
                 GRPC_STATUS_INTERNAL, "needs a write transaction");
  struct store_query q = {.kind = NULL};
  struct store_row *rows;
  size_t n;
  assert_refused(store_list(txn, &q, &rows, &n, &err), -EINVAL, err, GRPC_STATUS_INVALID_ARGUMENT,
                 "kind is required");
  store_rollback(txn);

  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  w.name = "";
  assert_refused(store_put(txn, &w, NULL, &err), -EINVAL, err, GRPC_STATUS_INVALID_ARGUMENT,
                 "kind and name are required");
  store_rollback(txn);
  assert_int_equal(store_revision(f->s), 0);
}

/* Writers each commit ROUNDS transactions that add one item and bump a
 * counter row; readers check, in their snapshots, that the counter always
 * equals the number of items and that revisions never go back. */
#define WRITERS 4
#define READERS 4
#define ROUNDS 25

struct race {
  struct store *s;
  int id;
  atomic_int *writers_left;
  atomic_int *failures;
  char failure[256]; /* the first failure of this thread */
  int reads;         /* snapshots checked */
};

static void race_fail(struct race *r, const char *what, const struct tp_err *err) {
  atomic_fetch_add(r->failures, 1);
  if (r->failure[0] == '\0')
    snprintf(r->failure, sizeof(r->failure), "%s: %.200s", what, err ? err->msg : "");
}

static void *race_writer(void *arg) {
  struct race *r = arg;
  for (int i = 0; i < ROUNDS; i++) {
    struct tp_err err = {0};
    struct store_txn *txn;
    if (store_begin(r->s, 1, &txn, &err) < 0) {
      race_fail(r, "begin", &err);
      continue;
    }
    struct store_row counter;
    long count = 0;
    int rc = store_get(txn, "Counter", "counters/items", 0, &counter, &err);
    if (rc == 0) {
      count = strtol((const char *)counter.data, NULL, 10);
      store_row_clear(&counter);
    }
    char name[64], text[32];
    snprintf(name, sizeof(name), "items/w%d-%03d", r->id, i);
    snprintf(text, sizeof(text), "%ld", count + 1);
    struct store_write item = write_of("Item", name, 1, name);
    struct store_write cw = write_of("Counter", "counters/items", rc == -ENOENT, text);
    cw.data_len = strlen(text) + 1; /* with its NUL, for strtol */
    if (store_put(txn, &item, NULL, &err) < 0 || store_put(txn, &cw, NULL, &err) < 0) {
      race_fail(r, "put", &err);
      store_rollback(txn);
      continue;
    }
    int64_t expect = store_txn_revision(txn), rev = 0;
    if (store_commit(txn, &rev, &err) < 0)
      race_fail(r, "commit", &err);
    else if (rev != expect)
      race_fail(r, "commit revision differs from the txn's", NULL);
  }
  atomic_fetch_sub(r->writers_left, 1);
  return NULL;
}

static void *race_reader(void *arg) {
  struct race *r = arg;
  int64_t last = 0;
  while (atomic_load(r->writers_left) > 0) {
    struct tp_err err = {0};
    struct store_txn *txn;
    if (store_begin(r->s, 0, &txn, &err) < 0) {
      race_fail(r, "begin", &err);
      break;
    }
    int64_t rev = store_txn_revision(txn);
    if (rev < last)
      race_fail(r, "revision went back", NULL);
    last = rev;
    struct store_row counter;
    long count = 0;
    int rc = store_get(txn, "Counter", "counters/items", 0, &counter, &err);
    if (rc == 0) {
      count = strtol((const char *)counter.data, NULL, 10);
      store_row_clear(&counter);
    } else if (rc != -ENOENT) {
      race_fail(r, "get", &err);
    }
    struct store_query q = {.kind = "Item"};
    struct store_row *rows;
    size_t n;
    if (store_list(txn, &q, &rows, &n, &err) < 0)
      race_fail(r, "list", &err);
    else if ((long)n != count || (int64_t)n != rev)
      race_fail(r, "snapshot inconsistent: items, counter and revision differ", NULL);
    store_rows_free(rows, n);
    store_rollback(txn);
    r->reads++;
  }
  return NULL;
}

static void test_concurrent_writers_and_readers(void **state) {
  struct fixture *f = *state;
  atomic_int writers_left = WRITERS, failures = 0;
  struct race races[WRITERS + READERS];
  pthread_t threads[WRITERS + READERS];
  for (int i = 0; i < WRITERS + READERS; i++) {
    races[i] =
        (struct race){.s = f->s, .id = i, .writers_left = &writers_left, .failures = &failures};
    assert_int_equal(
        pthread_create(&threads[i], NULL, i < WRITERS ? race_writer : race_reader, &races[i]), 0);
  }
  int reads = 0;
  for (int i = 0; i < WRITERS + READERS; i++) {
    assert_int_equal(pthread_join(threads[i], NULL), 0);
    if (races[i].failure[0])
      print_error("thread %d: %s\n", i, races[i].failure);
    reads += races[i].reads;
  }
  assert_int_equal(atomic_load(&failures), 0);
  assert_true(reads > 0);

  /* Exactly one revision per transaction, and every item there. */
  assert_int_equal(store_revision(f->s), WRITERS * ROUNDS);
  char buf[32];
  struct store_query q = {.kind = "Counter"};
  assert_string_equal(list_names(f->s, &q, buf, sizeof(buf)), "counters/items");
  struct tp_err err = {0};
  struct store_txn *txn;
  struct store_row *rows;
  size_t n;
  struct store_query items = {.kind = "Item"};
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_ok(store_list(txn, &items, &rows, &n, &err), err);
  store_rows_free(rows, n);
  assert_int_equal(n, WRITERS * ROUNDS);
  struct store_row counter;
  assert_ok(store_get(txn, "Counter", "counters/items", 0, &counter, &err), err);
  assert_string_equal((const char *)counter.data, "100");
  assert_int_equal(counter.revision, WRITERS * ROUNDS);
  store_row_clear(&counter);
  struct store_audit *a;
  size_t n_audit;
  assert_ok(store_audit_list(txn, NULL, &a, &n_audit, &err), err);
  assert_int_equal(n_audit, 2 * WRITERS * ROUNDS);
  store_audit_free(a, n_audit);
  store_rollback(txn);
}

/* store_backup while writers commit: the copy is one snapshot (items,
 * counter and revision agree), private, sealed as the original, opens
 * with the same master key; refusals leave no file behind. */
static void test_backup(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  if (pg_base != NULL) {
    /* pg_dump is PostgreSQL's consistent copy of a live database. */
    char dest[400];
    snprintf(dest, sizeof(dest), "%s/copy.db", f->dir);
    struct store_backup_info info;
    assert_refused(store_backup(f->path, dest, &info, &err), -ENOTSUP, err,
                   GRPC_STATUS_FAILED_PRECONDITION, "use pg_dump");
    assert_int_equal(access(dest, F_OK), -1);
    pg_not_applicable("store_backup's copy (SQLite's online backup into a file)");
    return;
  }
  struct store_write w = write_of(CERT, "certificates/web", 1, "cert");
  w.set_secret = 1;
  w.secret = (const uint8_t *)"-----BEGIN PRIVATE KEY----- backup";
  w.secret_len = strlen((const char *)w.secret);
  put_one(f->s, &w, NULL);

  atomic_int writers_left = WRITERS, failures = 0;
  struct race races[WRITERS];
  pthread_t threads[WRITERS];
  for (int i = 0; i < WRITERS; i++) {
    races[i] =
        (struct race){.s = f->s, .id = i, .writers_left = &writers_left, .failures = &failures};
    assert_int_equal(pthread_create(&threads[i], NULL, race_writer, &races[i]), 0);
  }
  char dest[400];
  snprintf(dest, sizeof(dest), "%s/copy.db", f->dir);
  struct store_backup_info info;
  int rc = store_backup(f->path, dest, &info, &err);
  for (int i = 0; i < WRITERS; i++)
    assert_int_equal(pthread_join(threads[i], NULL), 0);
  assert_int_equal(atomic_load(&failures), 0);
  assert_ok(rc, err);
  assert_int_equal(info.schema_version, store_schema_latest());
  assert_int_equal(info.n_key_ids, 1);
  char id[2 * STORE_KEY_ID_LEN + 1];
  store_master_key_id_hex(key_a, id);
  assert_string_equal(info.key_ids[0], id);
  struct stat st;
  assert_int_equal(stat(dest, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_false(file_contains(dest, "BEGIN PRIVATE KEY", 17));

  struct store *copy;
  assert_ok(store_open(dest, &opts_a, &copy, &err), err);
  assert_int_equal(store_revision(copy), info.revision);
  struct store_txn *txn;
  assert_ok(store_begin(copy, 0, &txn, &err), err);
  struct store_row row;
  assert_ok(store_get(txn, CERT, "certificates/web", 1, &row, &err), err);
  assert_memory_equal(row.secret, w.secret, w.secret_len);
  store_row_clear(&row);
  long count = 0;
  if (store_get(txn, "Counter", "counters/items", 0, &row, &err) == 0) {
    count = strtol((const char *)row.data, NULL, 10);
    store_row_clear(&row);
  }
  struct store_query q = {.kind = "Item"};
  struct store_row *rows;
  size_t n;
  assert_ok(store_list(txn, &q, &rows, &n, &err), err);
  store_rows_free(rows, n);
  assert_int_equal(n, count);
  assert_int_equal((int64_t)n + 1, info.revision); /* + the certificate */
  store_rollback(txn);
  store_close(copy);

  /* The destination must be new. */
  assert_refused(store_backup(f->path, dest, &info, &err), -EIO, err,
                 GRPC_STATUS_FAILED_PRECONDITION, "File exists");
  char p[700];
  snprintf(p, sizeof(p), "%s-wal", dest);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", dest);
  unlink(p);
  unlink(dest);
  /* Nothing to back up: an empty file (a truncated database). */
  char empty[400];
  snprintf(empty, sizeof(empty), "%s/empty.db", f->dir);
  FILE *fp = fopen(empty, "w");
  assert_non_null(fp);
  fclose(fp);
  assert_refused(store_backup(empty, dest, &info, &err), -ENODATA, err,
                 GRPC_STATUS_FAILED_PRECONDITION, "holds no tlsplane database");
  assert_int_equal(access(dest, F_OK), -1);
  unlink(empty);
  /* A missing database is not created. */
  assert_int_equal(store_backup(empty, dest, &info, &err), -EIO);
  assert_int_equal(access(empty, F_OK), -1);
  assert_int_equal(access(dest, F_OK), -1);
}

/* What messages show of a database path: a PostgreSQL URI without its
 * password, anything else as it is. */
static void test_path_display(void **state) {
  (void)state;
  static const struct {
    const char *path, *shown;
  } cases[] = {
      {"/var/lib/tlsplane/tlsplane.db", "/var/lib/tlsplane/tlsplane.db"},
      {"/tmp/a:b@c/tlsplane.db", "/tmp/a:b@c/tlsplane.db"},
      {"postgres://db.example/tlsplane", "postgres://db.example/tlsplane"},
      {"postgres://tp:s3cret@db.example:5432/tlsplane", "postgres://tp@db.example:5432/tlsplane"},
      {"postgresql://tp:s3cret@db.example", "postgresql://tp@db.example"},
      {"postgres://tp@db.example/x?password=s3cret", "postgres://tp@db.example/x"},
      {"postgres://db.example/x?sslmode=require&password=s3cret&connect_timeout=5",
       "postgres://db.example/x?sslmode=require&connect_timeout=5"},
      {"postgres://db.example/x?password=a&password=b", "postgres://db.example/x"},
      {"postgres://db.example/a@b:c", "postgres://db.example/a@b:c"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char shown[STORE_PATH_DISPLAY_MAX];
    store__path_display(cases[i].path, shown, sizeof(shown));
    assert_string_equal(shown, cases[i].shown);
  }
}

/* seal.c: a round trip, a fresh nonce every time, and every way a record
 * can be wrong fails to open. */
static void test_seal_round_trip(void **state) {
  (void)state;
  struct store_keyring a = {0}, b = {0}, ab = {0};
  store__keyring_add(&a, key_a);
  store__keyring_add(&b, key_b);
  store__keyring_add(&ab, key_b);
  store__keyring_add(&ab, key_a);
  struct tp_err err = {0};
  const char *plain = "-----BEGIN PRIVATE KEY-----secret";
  size_t plain_len = strlen(plain);
  uint8_t *s1, *s2, *out;
  size_t l1, l2, out_len;
  assert_ok(
      store__seal(&a, CERT, "certificates/web", (const uint8_t *)plain, plain_len, &s1, &l1, &err),
      err);
  assert_ok(
      store__seal(&a, CERT, "certificates/web", (const uint8_t *)plain, plain_len, &s2, &l2, &err),
      err);
  assert_int_equal(l1, STORE_SEAL_OVERHEAD + plain_len);
  assert_int_equal(l1, l2);
  /* A fresh nonce per record: the same plaintext seals differently. */
  assert_memory_not_equal(s1 + STORE_SEAL_HEADER_LEN, s2 + STORE_SEAL_HEADER_LEN,
                          l1 - STORE_SEAL_HEADER_LEN);
  assert_null(memmem(s1, l1, "PRIVATE", 7));

  assert_ok(store__unseal(&a, CERT, "certificates/web", s1, l1, &out, &out_len, &err), err);
  assert_int_equal(out_len, plain_len);
  assert_memory_equal(out, plain, plain_len);
  free(out);
  /* A ring holding the key among others finds it by id. */
  assert_ok(store__unseal(&ab, CERT, "certificates/web", s2, l2, &out, &out_len, &err), err);
  assert_memory_equal(out, plain, plain_len);
  free(out);

  /* The record's identity is its associated data: another name or kind
   * (a record copied to another row) does not open. */
  assert_refused(store__unseal(&a, CERT, "certificates/other", s1, l1, &out, &out_len, &err),
                 -EBADMSG, err, GRPC_STATUS_DATA_LOSS, "does not decrypt");
  assert_null(out);
  assert_refused(
      store__unseal(&a, "TicketKeyRing", "certificates/web", s1, l1, &out, &out_len, &err),
      -EBADMSG, err, GRPC_STATUS_DATA_LOSS, "does not decrypt");
  /* Another key: refused by id, naming the key. */
  char hex[2 * STORE_KEY_ID_LEN + 1];
  store_master_key_id_hex(key_a, hex);
  assert_refused(store__unseal(&b, CERT, "certificates/web", s1, l1, &out, &out_len, &err),
                 -EBADMSG, err, GRPC_STATUS_DATA_LOSS, hex);
  /* A header naming key B over a record sealed by A: the header is
   * associated data too. */
  uint8_t *forged = malloc(l1);
  memcpy(forged, s1, l1);
  memcpy(forged + 1, b.id[0], STORE_KEY_ID_LEN);
  assert_refused(store__unseal(&ab, CERT, "certificates/web", forged, l1, &out, &out_len, &err),
                 -EBADMSG, err, GRPC_STATUS_DATA_LOSS, "does not decrypt");
  /* Any flipped bit of nonce, ciphertext or tag. */
  for (size_t i = STORE_SEAL_HEADER_LEN; i < l1; i += 7) {
    memcpy(forged, s1, l1);
    forged[i] ^= 0x01;
    assert_int_equal(store__unseal(&a, CERT, "certificates/web", forged, l1, &out, &out_len, &err),
                     -EBADMSG);
  }
  /* Truncated, or not a sealed record at all. */
  assert_int_equal(store__unseal(&a, CERT, "certificates/web", s1, STORE_SEAL_OVERHEAD - 1, &out,
                                 &out_len, &err),
                   -EBADMSG);
  assert_refused(store__unseal(&a, CERT, "certificates/web", (const uint8_t *)plain, plain_len,
                               &out, &out_len, &err),
                 -EBADMSG, err, GRPC_STATUS_DATA_LOSS, "not a sealed record");
  /* An empty secret seals and opens too. */
  free(s2);
  assert_ok(store__seal(&a, CERT, "certificates/web", NULL, 0, &s2, &l2, &err), err);
  assert_ok(store__unseal(&a, CERT, "certificates/web", s2, l2, &out, &out_len, &err), err);
  assert_int_equal(out_len, 0);
  free(out);
  free(forged);
  free(s1);
  free(s2);
}

/* What the file holds: sealed records only, never the secret. */
static void test_secrets_sealed_at_rest(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  const char *secret = "PRIVATE-KEY-BYTES-0123456789abcdef";
  struct store_write w = write_of(CERT, "certificates/web", 1, "public");
  w.set_secret = 1;
  w.secret = (const uint8_t *)secret;
  w.secret_len = strlen(secret);
  put_one(f->s, &w, NULL);
  if (!pg_not_applicable("the plaintext is in neither the database file nor its WAL: no file "
                         "(the stored column is checked below)")) {
    char wal[640];
    snprintf(wal, sizeof(wal), "%s-wal", f->path);
    assert_false(file_contains(f->path, secret, strlen(secret)));
    assert_false(file_contains(wal, secret, strlen(secret)));
    assert_true(file_contains(wal, "public", 6) || file_contains(f->path, "public", 6));
  }

  uint8_t raw[256];
  int len = raw_secret(f->path, CERT, "certificates/web", raw, sizeof(raw));
  assert_int_equal(len, STORE_SEAL_OVERHEAD + strlen(secret));
  struct store_row row;
  assert_ok(get_one(f->s, CERT, "certificates/web", 1, &row, &err), err);
  assert_int_equal(row.secret_len, strlen(secret));
  assert_memory_equal(row.secret, secret, row.secret_len);
  store_row_clear(&row);

  /* A sealed record copied into another row does not open there. */
  struct store_write other = write_of(CERT, "certificates/other", 1, "x");
  other.set_secret = 1;
  other.secret = (const uint8_t *)"s";
  other.secret_len = 1;
  put_one(f->s, &other, NULL);
  raw_secret_set(f->path, "certificates/other", raw, len);
  struct store_txn *txn;
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_refused(store_get(txn, CERT, "certificates/other", 1, &row, &err), -EBADMSG, err,
                 GRPC_STATUS_DATA_LOSS, "certificates/other does not decrypt");
  assert_null(row.secret);
  store_rollback(txn);
  /* Without the secret the row still reads. */
  assert_ok(get_one(f->s, CERT, "certificates/other", 0, &row, &err), err);
  store_row_clear(&row);
}

/* Pending ACME challenges: replaced per certificate in one revision with
 * an audit row, listed with their keys unsealed, sealed at rest (the
 * stored column is a sealed record, the plaintext in no file), gone with
 * their certificate, re-sealed by a master-key rotation. */
static void test_challenges(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  const char *key0 = "CHALLENGE-KEY-ZERO-0123456789", *key1 = "CHALLENGE-KEY-ONE-9876543210";
  put_one(f->s,
          &(struct store_write){.kind = CERT,
                                .name = "certificates/a",
                                .create = 1,
                                .data = (const uint8_t *)"a",
                                .data_len = 1},
          NULL);
  put_one(f->s,
          &(struct store_write){.kind = CERT,
                                .name = "certificates/b",
                                .create = 1,
                                .data = (const uint8_t *)"b",
                                .data_len = 1},
          NULL);
  int64_t rev0 = store_revision(f->s);
  const struct store_challenge two[] = {
      {.index = 0,
       .data = (uint8_t *)"d0",
       .data_len = 2,
       .secret = (uint8_t *)key0,
       .secret_len = strlen(key0)},
      {.index = 1,
       .data = (uint8_t *)"d1",
       .data_len = 2,
       .secret = (uint8_t *)key1,
       .secret_len = strlen(key1)},
  };
  struct store_txn *txn;
  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  assert_ok(store_challenges_set(txn, "certificates/a", two, 2, "system", "job:acme-order",
                                 "acme_challenges_out", &err),
            err);
  assert_ok(store_challenges_set(txn, "certificates/b", two, 1, "system", "job:acme-order",
                                 "acme_challenges_out", &err),
            err);
  int64_t rev = 0;
  assert_ok(store_commit(txn, &rev, &err), err);
  assert_int_equal(rev, rev0 + 1);
  struct store_audit_query q = {.resource = "acmeChallenges/a"};
  struct store_audit *a;
  size_t na;
  audit_all(f->s, &q, &a, &na);
  assert_int_equal(na, 1);
  assert_string_equal(a[0].action, "acme_challenges_out");
  assert_int_equal(a[0].revision, rev);
  store_audit_free(a, na);

  struct store_challenge *c = NULL;
  size_t n = 0;
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_ok(store_challenges_list(txn, &c, &n, &err), err);
  store_rollback(txn);
  assert_int_equal(n, 3);
  assert_string_equal(c[0].certificate, "certificates/a");
  assert_int_equal(c[1].index, 1);
  assert_memory_equal(c[1].data, "d1", 2);
  assert_int_equal(c[1].secret_len, strlen(key1));
  assert_memory_equal(c[1].secret, key1, c[1].secret_len);
  assert_string_equal(c[2].certificate, "certificates/b");
  store_challenges_free(c, n);
  if (!pg_not_applicable("the plaintext is in no file: no file (the column is checked below)")) {
    char wal[640];
    snprintf(wal, sizeof(wal), "%s-wal", f->path);
    assert_false(file_contains(f->path, key0, strlen(key0)));
    assert_false(file_contains(wal, key0, strlen(key0)));
  }
  uint8_t raw[256];
  int len = raw_blob(f->path,
                     "SELECT secret FROM acme_challenges WHERE kind = ?1 AND name = ?2"
                     " AND idx = 0",
                     CERT, "certificates/a", raw, sizeof(raw));
  assert_int_equal(len, STORE_SEAL_OVERHEAD + strlen(key0));
  assert_null(memmem(raw, (size_t)len, key0, strlen(key0)));

  /* A certificate that does not exist has none. */
  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  assert_refused(store_challenges_set(txn, "certificates/none", two, 1, "system", "m", "x", &err),
                 -ENOENT, err, GRPC_STATUS_NOT_FOUND, "certificates/none");
  store_rollback(txn);

  /* Rotation: still readable, under the new key. */
  assert_ok(store_master_key_rotate(f->s, key_b, "local:test", NULL, &err), err);
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_ok(store_challenges_list(txn, &c, &n, &err), err);
  store_rollback(txn);
  assert_int_equal(n, 3);
  assert_memory_equal(c[0].secret, key0, c[0].secret_len);
  store_challenges_free(c, n);
  uint8_t id_b[STORE_KEY_ID_LEN];
  store_master_key_id(key_b, id_b);
  len = raw_blob(f->path,
                 "SELECT secret FROM acme_challenges WHERE kind = ?1 AND name = ?2"
                 " AND idx = 1",
                 CERT, "certificates/a", raw, sizeof(raw));
  assert_memory_equal(raw + 1, id_b, STORE_KEY_ID_LEN);

  /* Removed (n 0) in a revision; the others go with their certificate. */
  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  assert_ok(store_challenges_set(txn, "certificates/a", NULL, 0, "system", "m", "done", &err), err);
  assert_ok(store_delete(txn, CERT, "certificates/b", NULL, "system", "m", &err), err);
  assert_ok(store_commit(txn, NULL, &err), err);
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_ok(store_challenges_list(txn, &c, &n, &err), err);
  store_rollback(txn);
  assert_int_equal(n, 0);
  store_challenges_free(c, n);
}

/* The master key is checked at open: another key, or none, is refused
 * before anything is read. */
static void test_wrong_master_key_refused(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  assert_ok(store_open(f->path, &opts_a, &f->s, &err), err);
  struct store_write w = write_of(CERT, "certificates/web", 1, "x");
  w.set_secret = 1;
  w.secret = (const uint8_t *)"k";
  w.secret_len = 1;
  put_one(f->s, &w, NULL);
  store_close(f->s);
  f->s = NULL;

  struct store *s = NULL;
  struct store_opts opts_b = {.master_keys = &key_b, .n_master_keys = 1};
  char hex_a[2 * STORE_KEY_ID_LEN + 1];
  store_master_key_id_hex(key_a, hex_a);
  assert_refused(store_open(f->path, &opts_b, &s, &err), -ENOKEY, err,
                 GRPC_STATUS_FAILED_PRECONDITION, hex_a);
  assert_null(s);
  if (pg_base != NULL) {
    /* A password in the URI (the test server trusts any) is not in the
     * message. */
    char uri[700];
    const char *at = strchr(f->path, '@');
    assert_non_null(at);
    snprintf(uri, sizeof(uri), "%.*s:pw-not-shown%s", (int)(at - f->path), f->path, at);
    assert_refused(store_open(uri, &opts_b, &s, &err), -ENOKEY, err,
                   GRPC_STATUS_FAILED_PRECONDITION, hex_a);
    assert_contains(err.msg, f->path);
    assert_null(strstr(err.msg, "pw-not-shown"));
  }
  assert_refused(store_open(f->path, NULL, &s, &err), -ENOKEY, err, GRPC_STATUS_FAILED_PRECONDITION,
                 "a master key is required");
  struct store_opts none = {0};
  assert_refused(store_open(f->path, &none, &s, &err), -ENOKEY, err,
                 GRPC_STATUS_FAILED_PRECONDITION, "a master key is required");
  /* Both keys (a rotation finishing): fine. */
  uint8_t both[2][STORE_MASTER_KEY_LEN];
  memcpy(both[0], key_b, STORE_MASTER_KEY_LEN);
  memcpy(both[1], key_a, STORE_MASTER_KEY_LEN);
  struct store_opts opts_ba = {.master_keys = (const uint8_t(*)[STORE_MASTER_KEY_LEN])both,
                               .n_master_keys = 2};
  assert_ok(store_open(f->path, &opts_ba, &f->s, &err), err);
}

/* Rotation re-seals everything under the new key in one revision; the old
 * key opens nothing afterwards, and writes seal with the new key. */
static void test_master_key_rotation(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  char names[5][64], secrets[5][64];
  for (int i = 0; i < 5; i++) {
    snprintf(names[i], sizeof(names[i]), "certificates/c%d", i);
    snprintf(secrets[i], sizeof(secrets[i]), "secret number %d", i);
    struct store_write w = write_of(CERT, names[i], 1, "public");
    w.set_secret = i != 3; /* one row without a secret */
    w.secret = (const uint8_t *)secrets[i];
    w.secret_len = strlen(secrets[i]);
    put_one(f->s, &w, NULL);
  }
  uint8_t before[256];
  int before_len = raw_secret(f->path, CERT, names[0], before, sizeof(before));
  size_t n = 0;
  assert_ok(store_master_key_rotate(f->s, key_b, "local:test", &n, &err), err);
  assert_int_equal(n, 4);
  assert_int_equal(store_revision(f->s), 6);
  struct store_audit_query q = {.resource = "masterKey"};
  struct store_audit *a;
  size_t na;
  audit_all(f->s, &q, &a, &na);
  assert_int_equal(na, 1);
  assert_string_equal(a[0].action, "rotate_master_key");
  assert_string_equal(a[0].actor, "local:test");
  assert_int_equal(a[0].revision, 6);
  store_audit_free(a, na);

  /* Re-sealed: another record, under key B. */
  uint8_t after[256], id_b[STORE_KEY_ID_LEN];
  store_master_key_id(key_b, id_b);
  int after_len = raw_secret(f->path, CERT, names[0], after, sizeof(after));
  assert_int_equal(after_len, before_len);
  assert_memory_not_equal(after, before, (size_t)after_len);
  assert_memory_equal(after + 1, id_b, STORE_KEY_ID_LEN);
  /* Key A does not open it. */
  struct store_keyring ring_a = {0};
  store__keyring_add(&ring_a, key_a);
  uint8_t *out;
  size_t out_len;
  assert_int_equal(
      store__unseal(&ring_a, CERT, names[0], after, (size_t)after_len, &out, &out_len, &err),
      -EBADMSG);
  /* Everything still reads, and etags did not change. */
  for (int i = 0; i < 5; i++) {
    struct store_row row;
    assert_ok(get_one(f->s, CERT, names[i], 1, &row, &err), err);
    if (i == 3) {
      assert_null(row.secret);
    } else {
      assert_int_equal(row.secret_len, strlen(secrets[i]));
      assert_memory_equal(row.secret, secrets[i], row.secret_len);
    }
    assert_int_equal(row.revision, i + 1);
    store_row_clear(&row);
  }
  /* New writes seal with B. */
  struct store_write w = write_of(CERT, "certificates/new", 1, "public");
  w.set_secret = 1;
  w.secret = (const uint8_t *)"fresh";
  w.secret_len = 5;
  put_one(f->s, &w, NULL);
  assert_int_equal(raw_secret(f->path, CERT, "certificates/new", after, sizeof(after)),
                   STORE_SEAL_OVERHEAD + 5);
  assert_memory_equal(after + 1, id_b, STORE_KEY_ID_LEN);
  store_close(f->s);
  f->s = NULL;

  /* Reopened: key A alone is refused, key B opens everything. */
  struct store *s = NULL;
  assert_refused(store_open(f->path, &opts_a, &s, &err), -ENOKEY, err,
                 GRPC_STATUS_FAILED_PRECONDITION, "not with the key given");
  struct store_opts opts_b = {.master_keys = &key_b, .n_master_keys = 1};
  assert_ok(store_open(f->path, &opts_b, &f->s, &err), err);
  struct store_row row;
  assert_ok(get_one(f->s, CERT, names[4], 1, &row, &err), err);
  assert_memory_equal(row.secret, secrets[4], row.secret_len);
  store_row_clear(&row);
}

/* A rotation that fails (a record that does not open) changes nothing. */
static void test_master_key_rotation_all_or_nothing(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  for (int i = 0; i < 3; i++) {
    char name[64];
    snprintf(name, sizeof(name), "certificates/c%d", i);
    struct store_write w = write_of(CERT, name, 1, "public");
    w.set_secret = 1;
    w.secret = (const uint8_t *)"secret";
    w.secret_len = 6;
    put_one(f->s, &w, NULL);
  }
  /* Damage the last record (in name order) behind the store's back. */
  file_exec(f->path, "UPDATE resources SET secret = substr(secret, 1, length(secret) - 1)"
                     " || x'00' WHERE name = 'certificates/c2'");
  uint8_t before[256], after[256];
  int len = raw_secret(f->path, CERT, "certificates/c0", before, sizeof(before));
  size_t n = 99;
  assert_refused(store_master_key_rotate(f->s, key_b, "local:test", &n, &err), -EBADMSG, err,
                 GRPC_STATUS_DATA_LOSS, "certificates/c2");
  assert_int_equal(n, 0);
  assert_int_equal(store_revision(f->s), 3);
  assert_int_equal(raw_secret(f->path, CERT, "certificates/c0", after, sizeof(after)), len);
  assert_memory_equal(after, before, (size_t)len);
  /* Still sealing and opening with A. */
  struct store_row row;
  assert_ok(get_one(f->s, CERT, "certificates/c0", 1, &row, &err), err);
  assert_memory_equal(row.secret, "secret", 6);
  store_row_clear(&row);
}

/* Every row is authenticated: a row edited in the file, one written there
 * anew, one given another row's MAC or stripped of its own, is refused by
 * name (get and list), while untouched rows read on; a rotation refuses to
 * vouch for an edited row, and re-authenticates the rest under the new
 * key. */
static void test_rows_authenticated(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct store_row row;
  struct store_txn *txn;
  struct store_row *rows;
  size_t n;
  create_text(f->s, "Token", "tokens/ci", "role=viewer");
  create_text(f->s, "Token", "tokens/dash", "role=viewer");
  create_text(f->s, "Token", "tokens/ops", "role=operator");
  uint8_t mac[64], id_a[STORE_KEY_ID_LEN];
  store_master_key_id(key_a, id_a);
  assert_int_equal(raw_mac(f->path, "Token", "tokens/ci", mac, sizeof(mac)), STORE_MAC_LEN);
  assert_int_equal(mac[0], STORE_MAC_VERSION);
  assert_memory_equal(mac + 1, id_a, STORE_KEY_ID_LEN);

  /* The role edited in place. */
  file_exec(f->path, "UPDATE resources SET data = CAST('role=admin' AS BLOB)"
                     " WHERE name = 'tokens/ci'");
  assert_refused(get_one(f->s, "Token", "tokens/ci", 0, &row, &err), -EBADMSG, err,
                 GRPC_STATUS_DATA_LOSS,
                 "tokens/ci failed its integrity check: it was changed outside the server");
  assert_null(row.data);
  assert_ok(get_one(f->s, "Token", "tokens/dash", 1, &row, &err), err);
  assert_memory_equal(row.data, "role=viewer", row.data_len);
  assert_null(row.mac);
  store_row_clear(&row);
  struct store_query q = {.kind = "Token"};
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_refused(store_list(txn, &q, &rows, &n, &err), -EBADMSG, err, GRPC_STATUS_DATA_LOSS,
                 "tokens/ci failed its integrity check");
  assert_null(rows);
  assert_int_equal(n, 0);
  store_rollback(txn);

  /* Another row's data and MAC: the MAC names its row. */
  file_exec(f->path,
            "UPDATE resources SET data = (SELECT data FROM resources WHERE name = 'tokens/ops')"
            " WHERE name = 'tokens/dash';"
            "UPDATE macs SET mac = (SELECT mac FROM macs WHERE name = 'tokens/ops')"
            " WHERE name = 'tokens/dash'");
  assert_refused(get_one(f->s, "Token", "tokens/dash", 0, &row, &err), -EBADMSG, err,
                 GRPC_STATUS_DATA_LOSS, "tokens/dash failed its integrity check");
  /* A row written in the file, and a row whose MAC was removed. */
  file_exec(f->path, "INSERT INTO resources (kind, name, etag, revision, create_time_us,"
                     " update_time_us, data) VALUES ('Token', 'tokens/forged', '9', 9, 0, 0,"
                     " CAST('role=admin' AS BLOB));"
                     "DELETE FROM macs WHERE name = 'tokens/ops'");
  assert_refused(
      get_one(f->s, "Token", "tokens/forged", 0, &row, &err), -EBADMSG, err, GRPC_STATUS_DATA_LOSS,
      "tokens/forged failed its integrity check: it carries no valid authentication tag");
  assert_refused(get_one(f->s, "Token", "tokens/ops", 0, &row, &err), -EBADMSG, err,
                 GRPC_STATUS_DATA_LOSS, "tokens/ops failed its integrity check");

  /* A rotation does not launder them: refused, nothing changed. */
  size_t count = 99;
  assert_refused(store_master_key_rotate(f->s, key_b, "local:test", &count, &err), -EBADMSG, err,
                 GRPC_STATUS_DATA_LOSS, "failed its integrity check");
  assert_int_equal(count, 0);
  assert_int_equal(raw_mac(f->path, "Token", "tokens/ci", mac, sizeof(mac)), STORE_MAC_LEN);
  assert_memory_equal(mac + 1, id_a, STORE_KEY_ID_LEN);

  /* Deleting reads nothing: the edited rows can go. Then the rotation
   * re-authenticates what is left under key B. */
  const char *bad[] = {"tokens/ci", "tokens/dash", "tokens/ops", "tokens/forged"};
  for (size_t i = 0; i < 4; i++)
    assert_ok(delete_one(f->s, "Token", bad[i], NULL, &err), err);
  assert_int_equal(raw_mac(f->path, "Token", "tokens/ci", mac, sizeof(mac)), -1);
  create_text(f->s, "Token", "tokens/new", "role=viewer");
  assert_ok(store_master_key_rotate(f->s, key_b, "local:test", &count, &err), err);
  uint8_t id_b[STORE_KEY_ID_LEN];
  store_master_key_id(key_b, id_b);
  assert_int_equal(raw_mac(f->path, "Token", "tokens/new", mac, sizeof(mac)), STORE_MAC_LEN);
  assert_memory_equal(mac + 1, id_b, STORE_KEY_ID_LEN);
  assert_ok(get_one(f->s, "Token", "tokens/new", 0, &row, &err), err);
  store_row_clear(&row);
  store_close(f->s);
  f->s = NULL;
  struct store_opts opts_b = {.master_keys = &key_b, .n_master_keys = 1};
  assert_ok(store_open(f->path, &opts_b, &f->s, &err), err);
  assert_ok(get_one(f->s, "Token", "tokens/new", 0, &row, &err), err);
  store_row_clear(&row);
}

/* A database of schema version 3 has no MACs: the upgrade authenticates
 * its rows as it finds them, and they read on. */
static void test_upgrade_authenticates_rows(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct store_opts v3 = {.version = 3, .master_keys = &key_a, .n_master_keys = 1};
  assert_ok(store_open(f->path, &v3, &f->s, &err), err);
  assert_int_equal(store_schema_version(f->s), 3);
  create_text(f->s, "Token", "tokens/old", "role=viewer");
  struct store_row row;
  assert_ok(get_one(f->s, "Token", "tokens/old", 0, &row, &err), err);
  store_row_clear(&row);
  store_close(f->s);
  f->s = NULL;
  assert_ok(store_open(f->path, &opts_a, &f->s, &err), err);
  assert_int_equal(store_schema_version(f->s), store_schema_latest());
  uint8_t mac[64];
  assert_int_equal(raw_mac(f->path, "Token", "tokens/old", mac, sizeof(mac)), STORE_MAC_LEN);
  assert_ok(get_one(f->s, "Token", "tokens/old", 0, &row, &err), err);
  assert_memory_equal(row.data, "role=viewer", row.data_len);
  store_row_clear(&row);
  /* From now on an edit is refused. */
  file_exec(f->path, "UPDATE resources SET data = CAST('role=admin' AS BLOB)"
                     " WHERE name = 'tokens/old'");
  assert_refused(get_one(f->s, "Token", "tokens/old", 0, &row, &err), -EBADMSG, err,
                 GRPC_STATUS_DATA_LOSS, "tokens/old failed its integrity check");
}

/* Usage is not a change: no revision, no audit row, no etag. */
static void test_usage(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  create_text(f->s, "Token", "tokens/ci", "t");
  struct store_txn *txn;
  int64_t t = -1;
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_ok(store_usage_get(txn, "Token", "tokens/ci", &t, &err), err);
  assert_int_equal(t, 0);
  store_rollback(txn);

  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  assert_ok(store_usage_set(txn, "Token", "tokens/ci", 1234567, &err), err);
  assert_refused(store_usage_set(txn, "Token", "tokens/nope", 1, &err), -ENOENT, err,
                 GRPC_STATUS_NOT_FOUND, "tokens/nope");
  store_rollback(txn);
  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  assert_ok(store_usage_set(txn, "Token", "tokens/ci", 1234567, &err), err);
  int64_t rev = -1;
  assert_ok(store_commit(txn, &rev, &err), err);
  assert_int_equal(rev, 1);
  assert_int_equal(store_revision(f->s), 1);

  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_ok(store_usage_get(txn, "Token", "tokens/ci", &t, &err), err);
  assert_int_equal(t, 1234567);
  store_rollback(txn);
  struct store_row row;
  assert_ok(get_one(f->s, "Token", "tokens/ci", 0, &row, &err), err);
  assert_string_equal(row.etag, "1");
  store_row_clear(&row);
  struct store_audit *a;
  size_t n;
  audit_all(f->s, NULL, &a, &n);
  assert_int_equal(n, 1);
  store_audit_free(a, n);
  /* Deleting the row takes its usage with it. */
  assert_ok(delete_one(f->s, "Token", "tokens/ci", NULL, &err), err);
  create_text(f->s, "Token", "tokens/ci", "t2");
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_ok(store_usage_get(txn, "Token", "tokens/ci", &t, &err), err);
  assert_int_equal(t, 0);
  store_rollback(txn);
}

/* Reads what a validation would: the certificate, a missing row, the
 * certificate's referrers (and optionally a list) in a tracked read
 * transaction. Returns the record. */
static struct store_reads *tracked_read(struct store *s, const char *missing, int list) {
  struct tp_err err = {0};
  struct store_txn *txn;
  struct store_row row;
  assert_ok(store_begin_tracked(s, &txn, &err), err);
  assert_ok(store_get(txn, CERT, "certificates/web", 1, &row, &err), err);
  store_row_clear(&row);
  assert_int_equal(store_get(txn, CERT, missing, 0, &row, &err), -ENOENT);
  struct store_row *rows;
  size_t n;
  assert_ok(store_referrers(txn, CERT, "certificates/web", &rows, &n, &err), err);
  assert_true(n >= 1);
  store_rows_free(rows, n);
  if (list) {
    struct store_query q = {.kind = CTX};
    assert_ok(store_list(txn, &q, &rows, &n, &err), err);
    store_rows_free(rows, n);
  }
  struct store_reads *r = store_reads_take(txn);
  assert_non_null(r);
  assert_null(store_reads_take(txn));
  store_rollback(txn);
  return r;
}

/* store_reads_check in a write transaction of its own; rolled back. */
static int reads_check(struct store *s, const struct store_reads *r, struct tp_err *err) {
  struct store_txn *txn;
  assert_ok(store_begin(s, 1, &txn, err), *err);
  int rc = store_reads_check(txn, r, err);
  store_rollback(txn);
  return rc;
}

static void test_tracked_reads(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  create_text(f->s, CERT, "certificates/web", "cert");
  struct store_ref ref = {CERT, "certificates/web", "tls_context.certificates[0]"};
  struct store_write ctx = write_of(CTX, "tlsContexts/a", 1, "ctx");
  ctx.refs = &ref;
  ctx.n_refs = 1;
  put_one(f->s, &ctx, NULL);

  /* Nothing committed since: holds. A commit of an unrelated row: still
   * holds, row by row. */
  struct store_reads *r = tracked_read(f->s, "certificates/nope", 0);
  assert_ok(reads_check(f->s, r, &err), err);
  create_text(f->s, CERT, "certificates/other", "other");
  assert_ok(reads_check(f->s, r, &err), err);

  /* The row read changed. */
  struct store_write upd = write_of(CERT, "certificates/web", 0, "cert v2");
  put_one(f->s, &upd, NULL);
  assert_refused(reads_check(f->s, r, &err), -EAGAIN, err, GRPC_STATUS_ABORTED,
                 "certificates/web changed while this write was being validated");
  store_reads_free(r);

  /* A row found missing now exists. */
  r = tracked_read(f->s, "certificates/missing", 0);
  create_text(f->s, CERT, "certificates/missing", "now here");
  assert_refused(reads_check(f->s, r, &err), -EAGAIN, err, GRPC_STATUS_ABORTED,
                 "certificates/missing changed");
  store_reads_free(r);

  /* A new referrer of the row whose referrers were read. */
  r = tracked_read(f->s, "certificates/nope", 0);
  ctx.name = "tlsContexts/b";
  put_one(f->s, &ctx, NULL);
  assert_refused(reads_check(f->s, r, &err), -EAGAIN, err, GRPC_STATUS_ABORTED,
                 "what references it changed");
  store_reads_free(r);
  /* A referrer changed (its etag). */
  r = tracked_read(f->s, "certificates/nope", 0);
  struct store_write ctx_upd = write_of(CTX, "tlsContexts/a", 0, "ctx v2");
  ctx_upd.refs = &ref;
  ctx_upd.n_refs = 1;
  put_one(f->s, &ctx_upd, NULL);
  assert_refused(reads_check(f->s, r, &err), -EAGAIN, err, GRPC_STATUS_ABORTED,
                 "what references it changed");
  store_reads_free(r);

  /* A list depends on every row of its kind: any commit counts. */
  r = tracked_read(f->s, "certificates/nope", 1);
  assert_ok(reads_check(f->s, r, &err), err);
  create_text(f->s, "Listener", "listeners/x", "x");
  assert_refused(reads_check(f->s, r, &err), -EAGAIN, err, GRPC_STATUS_ABORTED, "listed");
  store_reads_free(r);

  /* An untracked transaction records nothing; checking nothing is an
   * error, not a pass. */
  struct store_txn *txn;
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_null(store_reads_take(txn));
  store_rollback(txn);
  assert_refused(reads_check(f->s, NULL, &err), -EIO, err, GRPC_STATUS_INTERNAL,
                 "no complete record");
  /* A tracked transaction that is rolled back with its reads frees them
   * (ASan checks). */
  assert_ok(store_begin_tracked(f->s, &txn, &err), err);
  struct store_row row;
  assert_ok(store_get(txn, CERT, "certificates/web", 0, &row, &err), err);
  store_row_clear(&row);
  store_rollback(txn);
}

/* Two servers on one database: this process and a child, each with its
 * own store, write at once. Every commit has its own revision, the
 * revisions are 1..N without a gap or a duplicate, and every acknowledged
 * write reads back at the revision its commit returned. */
#define TWO_WRITES 200

/* Writes items/s<id>-NNN, one per transaction, into revisions. 0, or -1
 * with the failure in failure. */
static int two_writes(struct store *s, int id, int64_t revisions[TWO_WRITES], char *failure,
                      size_t len) {
  for (int i = 0; i < TWO_WRITES; i++) {
    char name[64];
    snprintf(name, sizeof(name), "items/s%d-%03d", id, i);
    struct store_write wr = write_of("Item", name, 1, name);
    struct tp_err err = {0};
    struct store_txn *txn;
    int rc = store_begin(s, 1, &txn, &err);
    if (rc == 0 && (rc = store_put(txn, &wr, NULL, &err)) < 0)
      store_rollback(txn);
    else if (rc == 0)
      rc = store_commit(txn, &revisions[i], &err);
    if (rc < 0) {
      snprintf(failure, len, "%s: %s", name, err.msg);
      return -1;
    }
  }
  return 0;
}

/* The child: opens its own store, says it is ready, waits for the word,
 * writes, and sends its revisions back. Never returns. */
static void two_writer_child(const char *path, int ready_fd, int go_fd, int out_fd) {
  struct tp_err err = {0};
  struct store *s;
  int64_t revisions[TWO_WRITES];
  char failure[1200] = "";
  char c = 0;
  if (store_open(path, &opts_a, &s, &err) < 0) {
    fprintf(stderr, "child: store_open: %s\n", err.msg);
    _exit(1);
  }
  if (write(ready_fd, "r", 1) != 1 || read(go_fd, &c, 1) != 1)
    _exit(1);
  int rc = two_writes(s, 1, revisions, failure, sizeof(failure));
  store_close(s);
  if (rc < 0) {
    fprintf(stderr, "child: %s\n", failure);
    _exit(1);
  }
  _exit(write(out_fd, revisions, sizeof(revisions)) == (ssize_t)sizeof(revisions) ? 0 : 1);
}

static int int64_cmp(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

static void test_two_servers_consecutive_revisions(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  int ready[2], go[2], out[2];
  assert_int_equal(pipe(ready), 0);
  assert_int_equal(pipe(go), 0);
  assert_int_equal(pipe(out), 0);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) /* the parent's store and its connections stay untouched */
    two_writer_child(f->path, ready[1], go[0], out[1]);
  close(ready[1]);
  close(go[0]);
  close(out[1]);
  char c;
  assert_int_equal(read(ready[0], &c, 1), 1);
  assert_int_equal(write(go[1], "g", 1), 1);

  static int64_t revisions[2][TWO_WRITES];
  char failure[1200] = "";
  int rc = two_writes(f->s, 0, revisions[0], failure, sizeof(failure));
  size_t got = 0;
  ssize_t r;
  while (got < sizeof(revisions[1]) &&
         (r = read(out[0], (char *)revisions[1] + got, sizeof(revisions[1]) - got)) > 0)
    got += (size_t)r;
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  close(ready[0]);
  close(go[1]);
  close(out[0]);
  if (rc < 0)
    fail_msg("this process: %s", failure);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  assert_int_equal(got, sizeof(revisions[1]));

  int64_t all[2 * TWO_WRITES];
  memcpy(all, revisions, sizeof(all));
  qsort(all, 2 * TWO_WRITES, sizeof(all[0]), int64_cmp);
  for (int i = 0; i < 2 * TWO_WRITES; i++)
    if (all[i] != i + 1)
      fail_msg("revision %d of the sorted commits is %lld, not %d (a gap or a duplicate)", i,
               (long long)all[i], i + 1);

  /* This store learns the child's commits when it begins again. */
  struct store_txn *txn;
  assert_ok(store_begin(f->s, 0, &txn, &err), err);
  assert_int_equal(store_txn_revision(txn), 2 * TWO_WRITES);
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < TWO_WRITES; i++) {
      char name[64];
      snprintf(name, sizeof(name), "items/s%d-%03d", k, i);
      struct store_row row;
      assert_ok(store_get(txn, "Item", name, 0, &row, &err), err);
      assert_int_equal(row.revision, revisions[k][i]);
      assert_memory_equal(row.data, name, row.data_len);
      store_row_clear(&row);
    }
  struct store_audit *a;
  size_t n;
  assert_ok(store_audit_list(txn, NULL, &a, &n, &err), err);
  assert_int_equal(n, 2 * TWO_WRITES);
  store_audit_free(a, n);
  store_rollback(txn);
}

/* What a watch heard (store_watch_start), for the watching test. */
struct heard {
  _Atomic int64_t revision; /* the newest revision told */
  atomic_int calls, lost, back;
};

static void heard_revision(int64_t revision, void *data) {
  struct heard *h = data;
  atomic_fetch_add(&h->calls, 1);
  int64_t cur = atomic_load(&h->revision);
  if (revision <= cur)
    fail_msg("revision %lld told after %lld", (long long)revision, (long long)cur);
  atomic_store(&h->revision, revision);
}

static void heard_status(const char *msg, void *data) {
  struct heard *h = data;
  if (msg != NULL && strstr(msg, "secret") != NULL)
    fail_msg("the watch's message shows the password: %s", msg);
  atomic_fetch_add(msg != NULL ? &h->lost : &h->back, 1);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits up to ms for the watch to have heard revision; the time it took. */
static int64_t heard_wait(struct heard *h, int64_t revision, int64_t ms) {
  int64_t start = now_ms();
  while (atomic_load(&h->revision) < revision) {
    if (now_ms() - start > ms)
      fail_msg("the watch heard revision %lld, not %lld, within %lld ms",
               (long long)atomic_load(&h->revision), (long long)revision, (long long)ms);
    usleep(5000); /* the poll's interval; the deadline is ms above */
  }
  return now_ms() - start;
}

/* Another server's commits reach this store's watch: each notified at
 * commit (well under the periodic check), a revision made without a
 * notification by the periodic check, and commits made while the watch's
 * connection was cut once it is back. SQLite: nothing to watch. */
static void test_watch_hears_other_servers(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct heard h = {0};
  const struct store_watch w = {heard_revision, heard_status, &h};
  assert_ok(store_watch_start(f->s, &w, &err), err);
  assert_refused(store_watch_start(f->s, &w, &err), -EBUSY, err, GRPC_STATUS_FAILED_PRECONDITION,
                 "watching already");
  int64_t revisions[TWO_WRITES];
  char failure[1200] = "";
  if (pg_base == NULL) {
    assert_int_equal(two_writes(f->s, 0, revisions, failure, sizeof(failure)), 0);
    store_watch_stop(f->s);
    assert_int_equal(atomic_load(&h.calls), 0);
    print_message("[ N/A      ] on SQLite: one process per file, no other server to hear\n");
    return;
  }
  struct store *other;
  assert_ok(store_open(f->path, &opts_a, &other, &err), err);
  for (int i = 0; i < 3; i++) {
    struct store_write wr = write_of("Item",
                                     i == 0   ? "items/w0"
                                     : i == 1 ? "items/w1"
                                              : "items/w2",
                                     1, "x");
    struct store_txn *txn;
    int64_t rev;
    assert_ok(store_begin(other, 1, &txn, &err), err);
    assert_ok(store_put(txn, &wr, NULL, &err), err);
    assert_ok(store_commit(txn, &rev, &err), err);
    int64_t took = heard_wait(&h, rev, 5000);
    print_message("[ INFO     ] revision %lld heard in %lld ms\n", (long long)rev, (long long)took);
    assert_true(took < STORE_WATCH_CHECK_MS / 2);
    assert_int_equal(store_revision(f->s), rev);
  }

  /* Without a notification (one lost): the periodic check. */
  pg_run(f->path, "UPDATE meta SET revision = revision + 1");
  int64_t rev = store_revision(other) + 1;
  heard_wait(&h, rev, 3 * STORE_WATCH_CHECK_MS);
  assert_int_equal(store_revision(f->s), rev);

  /* The watch's connection cut (with every other): it says so, comes back,
   * and hears what was committed meanwhile. */
  pg_run(f->path, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                  "current_database() AND pid <> pg_backend_pid()");
  assert_int_equal(two_writes(other, 1, revisions, failure, sizeof(failure)), 0);
  heard_wait(&h, revisions[TWO_WRITES - 1], 10000);
  assert_true(atomic_load(&h.lost) >= 1);
  assert_int_equal(atomic_load(&h.back), atomic_load(&h.lost));
  store_close(other);
  store_watch_stop(f->s);
  int calls = atomic_load(&h.calls);
  store_watch_stop(f->s); /* twice: a no-op */
  assert_int_equal(atomic_load(&h.calls), calls);
}

/* A master-key rotation while another server has the database open (the
 * server lock, held shared from the open on, before its watch starts) is
 * refused and changes nothing: that server would go on with the old key.
 * Once it closes, the rotation goes through. SQLite: the data
 * directory's lock keeps other servers out. */
static void test_rotation_refused_while_a_server_runs(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct store_write wr = write_of(CERT, "certificates/rk", 1, "public");
  wr.set_secret = 1;
  wr.secret = (const uint8_t *)"a secret";
  wr.secret_len = strlen("a secret");
  put_one(f->s, &wr, NULL);
  if (pg_base == NULL) {
    print_message("[ N/A      ] on SQLite: one process per file, no other server to refuse\n");
    return;
  }
  struct store *other;
  assert_ok(store_open(f->path, &opts_a, &other, &err), err);
  int64_t rev = store_revision(f->s);
  size_t n = 99;
  assert_refused(store_master_key_rotate(f->s, key_b, "local:test", &n, &err), -EBUSY, err,
                 GRPC_STATUS_FAILED_PRECONDITION,
                 "1 tlsplane-server process is connected to the database (holding advisory lock");
  assert_int_equal(n, 0);
  assert_int_equal(store_revision(f->s), rev);
  /* The secret still opens under the old key, in the other store too. */
  struct store_row row;
  assert_ok(get_one(other, CERT, "certificates/rk", 1, &row, &err), err);
  assert_int_equal(row.secret_len, strlen("a secret"));
  assert_memory_equal(row.secret, "a secret", strlen("a secret"));
  store_row_clear(&row);
  store_close(other);
  /* PostgreSQL sees the session end at once on loopback; wait
   * for it with a deadline all the same. */
  int64_t start = now_ms();
  int rc;
  while ((rc = store_master_key_rotate(f->s, key_b, "local:test", &n, &err)) == -EBUSY) {
    if (now_ms() - start > 5000)
      fail_msg("still refused 5 s after the other server stopped: %s", err.msg);
    usleep(20000);
  }
  assert_ok(rc, err);
  assert_int_equal(n, 1);
}

/* A store opened while a master-key rotation holds the server lock
 * (another session holds it exclusively, as rotate-master-key does until
 * its commit) is refused, naming the rotation, and opens once it is
 * over. A store whose session connection is cut takes the lock again on
 * a new one (the watch thread checks it every STORE_WATCH_CHECK_MS), so
 * a rotation is refused again. SQLite: the data directory's lock. */
static void test_open_refused_during_rotation(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  if (pg_base == NULL) {
    print_message("[ N/A      ] on SQLite: one process per file, no rotation beside it\n");
    return;
  }
  store_close(f->s); /* its shared hold would keep the exclusive one out */
  f->s = NULL;
  PGconn *rot = pg_connect(f->path);
  PGresult *res = PQexec(rot, "SELECT pg_try_advisory_lock(8389207132576247399)");
  assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
  assert_string_equal(PQgetvalue(res, 0, 0), "t");
  PQclear(res);
  struct store *s;
  assert_refused(store_open(f->path, &opts_a, &s, &err), -EBUSY, err,
                 GRPC_STATUS_FAILED_PRECONDITION, "a master-key rotation is in progress");
  assert_null(s);
  PQfinish(rot); /* the rotation is over */
  int64_t start = now_ms();
  int rc;
  while ((rc = store_open(f->path, &opts_a, &f->s, &err)) == -EBUSY) {
    if (now_ms() - start > 5000)
      fail_msg("still refused 5 s after the lock went: %s", err.msg);
    usleep(20000);
  }
  assert_ok(rc, err);

  /* Every connection cut: the watching store takes the lock again. */
  struct store *other;
  assert_ok(store_open(f->path, &opts_a, &other, &err), err);
  struct heard h = {0};
  const struct store_watch w = {heard_revision, heard_status, &h};
  assert_ok(store_watch_start(other, &w, &err), err);
  /* The watch connects on its own thread: a cut made before it is up is
   * no loss to it, and it would never say it is back. */
  start = now_ms();
  PGconn *probe = pg_connect(f->path);
  for (;;) {
    PGresult *up = PQexec(probe, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                 "current_database() AND application_name = 'tlsplane-server'");
    int listening = PQresultStatus(up) == PGRES_TUPLES_OK && atoi(PQgetvalue(up, 0, 0)) > 0;
    PQclear(up);
    if (listening)
      break;
    if (now_ms() - start > 5000)
      fail_msg("the watch did not connect within 5 s");
    usleep(20000);
  }
  PQfinish(probe);
  /* Waits (up to 5 s) until each of the store's server processes ended. */
  pg_run(f->path, "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = "
                  "current_database() AND pid <> pg_backend_pid()");
  /* Back once its new connections (the watch's, the session's) are up. */
  start = now_ms();
  while (atomic_load(&h.back) < 1) {
    if (now_ms() - start > 5000)
      fail_msg("the watch did not come back within 5 s");
    usleep(20000);
  }
  size_t n = 99;
  assert_refused(store_master_key_rotate(f->s, key_b, "local:test", &n, &err), -EBUSY, err,
                 GRPC_STATUS_FAILED_PRECONDITION,
                 "1 tlsplane-server process is connected to the database");
  assert_int_equal(n, 0);
  store_watch_stop(other);
  store_close(other);
}

/* The job lock: one store of those sharing a database holds it, checked
 * at every call; it moves to another once the holder closes. SQLite:
 * always held. */
static void test_job_lock_one_holder(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  assert_int_equal(store_job_lock(f->s, &err), 1);
  assert_int_equal(store_job_lock(f->s, &err), 1); /* still held */
  if (pg_base == NULL) {
    print_message("[ N/A      ] on SQLite: one process per file, always the holder\n");
    return;
  }
  struct store *other;
  assert_ok(store_open(f->path, &opts_a, &other, &err), err);
  assert_int_equal(store_job_lock(other, &err), 0);
  assert_int_equal(store_job_lock(f->s, &err), 1);
  store_close(f->s); /* its session, and the lock with it, ends */
  f->s = NULL;
  int held = 0;
  for (int i = 0; i < 200 && held == 0; i++) {
    held = store_job_lock(other, &err);
    if (held == 0)
      usleep(10000); /* polled for at most 2 s */
  }
  assert_int_equal(held, 1);
  /* The holder's session cut: it says it cannot tell, then takes it back. */
  pg_run(f->path, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                  "current_database() AND pid <> pg_backend_pid()");
  assert_refused(store_job_lock(other, &err), -EIO, err, GRPC_STATUS_INTERNAL, "the job lock");
  assert_int_equal(store_job_lock(other, &err), 1);
  store_close(other);
}

/* Two servers opening a new database at once: the migrations run once,
 * each step under the migration lock, and both stores work. */
static void *open_one(void *arg) {
  struct fixture *f = arg;
  struct tp_err err = {0};
  struct store *s;
  if (store_open(f->path, &opts_a, &s, &err) < 0) {
    char *msg = strdup(err.msg);
    return msg ? msg : "store_open failed";
  }
  store_close(s);
  return NULL;
}

static void test_two_servers_open_at_once(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  pthread_t threads[2];
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&threads[i], NULL, open_one, f), 0);
  for (int i = 0; i < 2; i++) {
    void *failure;
    assert_int_equal(pthread_join(threads[i], &failure), 0);
    if (failure != NULL)
      fail_msg("open %d: %s", i, (char *)failure);
  }
  assert_ok(store_open(f->path, &opts_a, &f->s, &err), err);
  assert_int_equal(store_schema_version(f->s), store_schema_latest());
  assert_int_equal(create_text(f->s, CERT, "certificates/web", "v1"), 1);
  uint8_t buf[8];
  char sql[128];
  for (int v = 1; v <= store_schema_latest(); v++) {
    snprintf(sql, sizeof(sql),
             "SELECT CAST(count(*) AS TEXT) FROM schema_migrations WHERE version = %d AND ?1 = ?2",
             v);
    assert_int_equal(raw_blob(f->path, sql, "x", "x", buf, sizeof(buf)), 1);
    assert_int_equal(buf[0], '1');
  }
}

/* PostgreSQL: a server that dropped the store's idle connections (a
 * restart, a failover) costs no call: the next transaction connects
 * again. */
static void test_reconnects_after_drop(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  if (pg_base == NULL) {
    print_message("[ N/A      ] on SQLite: no server to drop the connections\n");
    return;
  }
  create_text(f->s, CERT, "certificates/web", "v1");
  /* Waits (up to 5 s) until each of the store's server processes ended. */
  pg_run(f->path, "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                  " WHERE datname = current_database() AND pid <> pg_backend_pid()");
  struct store_row row;
  assert_ok(get_one(f->s, CERT, "certificates/web", 0, &row, &err), err);
  store_row_clear(&row);
  assert_int_equal(create_text(f->s, CERT, "certificates/api", "v1"), 2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_open_migrates_and_reopens, setup_path, teardown),
      cmocka_unit_test_setup_teardown(test_open_floor_and_foreign, setup_path, teardown),
      cmocka_unit_test_setup_teardown(test_upgrade_keeps_rows, setup_path, teardown),
      cmocka_unit_test_setup_teardown(test_create_get_update_delete, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_exists_and_not_found, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_etag_conflict, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_revision_once_per_txn, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_audit_hook_sees_each_commit, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_rollback_leaves_nothing, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_secrets, setup_open, teardown),
      cmocka_unit_test(test_seal_round_trip),
      cmocka_unit_test(test_path_display),
      cmocka_unit_test_setup_teardown(test_secrets_sealed_at_rest, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_wrong_master_key_refused, setup_path, teardown),
      cmocka_unit_test_setup_teardown(test_master_key_rotation, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_challenges, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_master_key_rotation_all_or_nothing, setup_open,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_usage, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_rows_authenticated, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_upgrade_authenticates_rows, setup_path, teardown),
      cmocka_unit_test_setup_teardown(test_tracked_reads, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_backup, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_label_selectors, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_pagination, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_expire_filter, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_due_beside_expiry, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_due_filter, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_due_before_schema_7, setup_path, teardown),
      cmocka_unit_test_setup_teardown(test_references, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_audit, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_audit_order_time_changes, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_put_skip_unchanged, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_durable_across_reopen, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_misuse, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_concurrent_writers_and_readers, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_two_servers_consecutive_revisions, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_two_servers_open_at_once, setup_path, teardown),
      cmocka_unit_test_setup_teardown(test_watch_hears_other_servers, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_rotation_refused_while_a_server_runs, setup_open,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_open_refused_during_rotation, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_job_lock_one_holder, setup_open, teardown),
      cmocka_unit_test_setup_teardown(test_reconnects_after_drop, setup_open, teardown),
  };
  pg_base = getenv("TLSPLANE_TEST_PG");
  if (pg_base != NULL && *pg_base == '\0')
    pg_base = NULL;
  if (pg_base != NULL) {
    if (strrchr(pg_base, '/') == NULL || strchr(pg_base, '?') != NULL) {
      fprintf(stderr, "TLSPLANE_TEST_PG: a postgres://.../DATABASE URI without options\n");
      return 1;
    }
    return cmocka_run_group_tests_name("store on PostgreSQL", tests, NULL, NULL);
  }
  return cmocka_run_group_tests_name("store on SQLite", tests, NULL, NULL);
}
