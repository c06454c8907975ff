/* The PostgreSQL backend of the store, selected by a postgres:// or
 * postgresql:// URI (libpq connection URI) in place of a file path.
 *
 * The same tables as the SQLite backend (sqlite.c), built by the same
 * numbered migrations, each in its own transaction recorded in
 * schema_migrations. Several servers may open one database at once: every
 * migration step first takes a transaction-scoped advisory lock
 * (pg_advisory_xact_lock), then reads the schema version, so two opens
 * neither race on a step nor apply one twice.
 *
 * The global revision. Every write transaction runs at READ COMMITTED and
 * begins by locking the single meta row (SELECT ... FOR UPDATE), which it
 * holds until commit or rollback; it commits with the revision it read
 * plus one, and only if it wrote. Writers, in this process or any other,
 * therefore run one at a time, each knows its revision when it begins (the
 * etags it hands out before commit depend on that), and revisions have no
 * gap and no duplicate. READ COMMITTED is what makes this correct: once a
 * writer holds the lock every earlier writer has committed, and each of
 * its statements sees their rows. SERIALIZABLE with retries was the other
 * choice; it would run writers in parallel but would have to replay whole
 * transactions, which callers of store.h do not expect (a failed commit
 * is final), and revisions would still have to be handed out in commit
 * order. Read transactions run at REPEATABLE READ READ ONLY: one snapshot
 * from their first query (the meta row) on, as SQLite's WAL gives them.
 *
 * The pool: a few connections opened on demand; a transaction holds one
 * from begin to end. In-process writers also queue on write_lock so that
 * they wait without holding a connection.
 *
 * Every value reaches SQL as a parameter (PQexecParams, bytea in binary);
 * results come back in binary (int8 in network order, text and bytea as
 * bytes). The only SQL built at run time (store_get, store_list,
 * store_audit_list) joins fixed fragments.
 *
 * Other servers' commits (store_watch_start): every commit that makes a
 * revision also runs pg_notify('tlsplane_revision', '<revision>'),
 * delivered to listeners when (and only if) it commits, in commit order.
 * The watch thread LISTENs on a connection of its own outside the pool
 * and, because a notification sent while it was not connected is never
 * delivered again, also reads meta's revision every STORE_WATCH_CHECK_MS
 * and after every reconnection. Audit rows need no notification of their
 * own: their seq is drawn while the writers' lock is held, so the rows of
 * a later commit always sort after those of an earlier one, and a reader
 * that follows seq misses none.
 *
 * The server lock. Every open store holds a shared session advisory
 * lock (pg_try_advisory_lock_shared) on a connection of its own, the
 * session connection, from before it migrates or reads anything until it
 * closes; store_master_key_rotate takes the same lock exclusively
 * (pg_try_advisory_lock) on its own session connection before its
 * transaction begins and holds it until that has committed. So a rotation
 * is refused while any other process has the database open, and a store
 * opened while a rotation runs is refused (-EBUSY) instead of coming up
 * with the key the rotation is replacing and failing on every row from
 * its commit on. Refused rather than kept waiting: the key it was given
 * is the old one, so once the rotation commits it would be refused all
 * the same (sealed with another key). A session connection that is lost
 * (the database restarted, a network cut) loses the lock with it: the
 * watch thread checks the connection every STORE_WATCH_CHECK_MS and takes
 * the lock again on a new one, and reports through watch.status while a
 * rotation keeps it out. The watch connection is named (application_name
 * "tlsplane-server") for operators reading pg_stat_activity.
 *
 * The job lock (store_job_lock) is a session advisory lock held on one
 * more connection of its own: a session lock outlives transactions, and
 * ends with the session, so a dead holder's lock is free as soon as
 * PostgreSQL sees its connection close.
 *
 * Secrets and row MACs work as with SQLite: store.c seals and MACs, this
 * file stores bytes. store_backup is not supported: pg_dump makes a
 * consistent copy of a live database. */
#include "store_int.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PG_POOL_MAX 8                 /* connections; a thread holds at most one */
#define LOCK_TIMEOUT "10s"            /* waiting for another server's writer, as SQLite's */
#define AUDIT_SINCE_VERSION 2         /* the first schema version with the audit table */
#define AUDIT_CHANGES_SINCE_VERSION 6 /* the first with audit_changes */
#define DUE_SINCE_VERSION 7           /* the first with resources.due_time_us */
/* The advisory lock key of schema migrations ("tlsplane" in ASCII). */
#define MIGRATION_LOCK_KEY "8389207132576247397"
/* The job lock's ("tlsplanf": the next key). */
#define JOB_LOCK_KEY "8389207132576247398"
/* The server lock's ("tlsplang"), as pg_locks shows it: classid the high
 * 32 bits, objid the low ones, objsubid 1 (a bigint key). */
#define SERVER_LOCK_KEY "8389207132576247399"
#define SERVER_LOCK_IN_PG_LOCKS                                                                    \
  "locktype = 'advisory' AND classid = (" SERVER_LOCK_KEY " >> 32)::oid"                           \
  " AND objid = (" SERVER_LOCK_KEY " & 4294967295)::oid AND objsubid = 1"

#define CONNECT_TIMEOUT_S "10" /* seconds, unless the URI says */
#define WATCH_CHANNEL "tlsplane_revision"
/* The watch connection's application_name (pg_stat_activity). */
#define SERVER_APPLICATION "tlsplane-server"
#define WATCH_RETRY_MS 1000 /* between attempts to reconnect the watch */

#define OID_BYTEA 17
#define OID_INT8 20
#define OID_TEXT 25

struct conn {
  PGconn *db;
};

struct pg_store;

struct migration {
  int version;
  const char *description;
  const char *sql; /* run whole by PQexec; constant text only */
  /* Runs after sql, in the same transaction; may be NULL. */
  int (*run)(struct conn *c, struct pg_store *s, struct tp_err *err);
};

static int seal_existing(struct conn *c, struct pg_store *s, struct tp_err *err);
static int mac_existing(struct conn *c, struct pg_store *s, struct tp_err *err);

/* sqlite.c's migrations in PostgreSQL's words. Names sort bytewise
 * (COLLATE "C") as SQLite's do: pagination depends on it. */
static const struct migration migrations[] = {
    {1, "resources, labels, references and the global revision",
     "CREATE TABLE meta (\n"
     "  id INTEGER PRIMARY KEY CHECK (id = 1),\n"
     "  revision BIGINT NOT NULL\n"
     ");\n"
     "INSERT INTO meta (id, revision) VALUES (1, 0);\n"
     "CREATE TABLE resources (\n"
     "  kind TEXT COLLATE \"C\" NOT NULL,\n"
     "  name TEXT COLLATE \"C\" NOT NULL,\n"
     "  etag TEXT NOT NULL,\n"
     "  revision BIGINT NOT NULL,\n"
     "  create_time_us BIGINT NOT NULL,\n"
     "  update_time_us BIGINT NOT NULL,\n"
     "  data BYTEA NOT NULL,\n"
     "  secret BYTEA,\n"
     "  expire_time_us BIGINT NOT NULL DEFAULT 0,\n"
     "  PRIMARY KEY (kind, name)\n"
     ");\n"
     "CREATE TABLE labels (\n"
     "  kind TEXT COLLATE \"C\" NOT NULL,\n"
     "  name TEXT COLLATE \"C\" NOT NULL,\n"
     "  key TEXT COLLATE \"C\" NOT NULL,\n"
     "  value TEXT COLLATE \"C\" NOT NULL,\n"
     "  PRIMARY KEY (kind, name, key),\n"
     "  FOREIGN KEY (kind, name) REFERENCES resources (kind, name) ON DELETE CASCADE\n"
     ");\n"
     /* A referrer takes its references with it; a referenced row cannot
      * go while they exist (store_delete checks first to name the
      * referrer; the RESTRICT key is the backstop). */
     "CREATE TABLE refs (\n"
     "  from_kind TEXT COLLATE \"C\" NOT NULL,\n"
     "  from_name TEXT COLLATE \"C\" NOT NULL,\n"
     "  to_kind TEXT COLLATE \"C\" NOT NULL,\n"
     "  to_name TEXT COLLATE \"C\" NOT NULL,\n"
     "  field TEXT COLLATE \"C\" NOT NULL,\n"
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
     "  seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,\n"
     "  revision BIGINT NOT NULL,\n"
     "  time_us BIGINT NOT NULL,\n"
     "  actor TEXT NOT NULL,\n"
     "  method TEXT NOT NULL,\n"
     "  resource TEXT COLLATE \"C\" NOT NULL,\n"
     "  action TEXT NOT NULL\n"
     ");\n"
     "CREATE INDEX audit_resource ON audit (resource, seq);\n"
     "CREATE INDEX audit_actor ON audit (actor, seq);\n"
     "CREATE INDEX audit_revision ON audit (revision);\n"
     "CREATE INDEX resources_expire ON resources (kind, expire_time_us)\n"
     "  WHERE expire_time_us > 0;\n"
     /* Resources written before the audit trail existed get one event. */
     "INSERT INTO audit (revision, time_us, actor, method, resource, action)\n"
     "  SELECT revision, update_time_us, 'tlsplane', 'schema migration 2', name, 'import'\n"
     "  FROM resources ORDER BY revision, kind, name;\n",
     NULL},
    {3, "secrets sealed under the master key; last use of credentials",
     "CREATE TABLE usage (\n"
     "  kind TEXT COLLATE \"C\" NOT NULL,\n"
     "  name TEXT COLLATE \"C\" NOT NULL,\n"
     "  last_used_us BIGINT NOT NULL,\n"
     "  PRIMARY KEY (kind, name),\n"
     "  FOREIGN KEY (kind, name) REFERENCES resources (kind, name) ON DELETE CASCADE\n"
     ");\n",
     seal_existing},
    {4, "rows authenticated under the master key",
     "CREATE TABLE macs (\n"
     "  kind TEXT COLLATE \"C\" NOT NULL,\n"
     "  name TEXT COLLATE \"C\" NOT NULL,\n"
     "  mac BYTEA NOT NULL,\n"
     "  PRIMARY KEY (kind, name),\n"
     "  FOREIGN KEY (kind, name) REFERENCES resources (kind, name) ON DELETE CASCADE\n"
     ");\n",
     mac_existing},
    {5, "labels found by value", "CREATE INDEX labels_value ON labels (kind, key, value, name);\n",
     NULL},
    {6, "what each audited write changed; audit by time",
     "CREATE TABLE audit_changes (\n"
     "  seq BIGINT NOT NULL REFERENCES audit (seq),\n"
     "  idx BIGINT NOT NULL,\n"
     "  field TEXT NOT NULL,\n"
     "  before_value TEXT NOT NULL,\n"
     "  after_value TEXT NOT NULL,\n"
     "  PRIMARY KEY (seq, idx)\n"
     ");\n"
     "CREATE INDEX audit_time ON audit (time_us, seq);\n",
     NULL},
    {7, "when background jobs next have work on a row",
     "ALTER TABLE resources ADD COLUMN due_time_us BIGINT NOT NULL DEFAULT 0;\n"
     "CREATE INDEX resources_due ON resources (kind, due_time_us)\n"
     "  WHERE due_time_us > 0;\n",
     NULL},
    {8, "pending ACME challenges",
     "CREATE TABLE acme_challenges (\n"
     "  kind TEXT NOT NULL,\n"
     "  name TEXT NOT NULL,\n"
     "  idx BIGINT NOT NULL,\n"
     "  data BYTEA NOT NULL,\n"
     "  secret BYTEA NOT NULL,\n"
     "  PRIMARY KEY (kind, name, idx),\n"
     "  FOREIGN KEY (kind, name) REFERENCES resources (kind, name) ON DELETE CASCADE\n"
     ");\n",
     NULL},
};

#define N_MIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

struct pg_store {
  struct store base;
  char *conninfo;                       /* as given (may hold a password: never in messages) */
  char display[STORE_PATH_DISPLAY_MAX]; /* the URI without its password, for messages */
  pthread_mutex_t write_lock;           /* held by this process's one write txn */
  pthread_mutex_t pool_lock;            /* guards idle, n_idle, n_open */
  pthread_cond_t pool_cond;             /* a connection came back, or a slot came free */
  struct conn *idle[PG_POOL_MAX];
  int n_idle;
  int n_open; /* idle + in use; at most PG_POOL_MAX */
  /* The watch (store_watch_start): its thread, and a pipe whose read end
   * it polls beside its connection; a byte written stops it. */
  pthread_t watcher;
  int watch_stop[2];
  int64_t watch_told; /* the last revision given to watch.revision (watcher thread) */
  /* The job lock (store_job_lock): its connection, kept between calls,
   * and whether its session holds the lock. */
  pthread_mutex_t job_lock;
  struct conn *job_conn;
  int job_held;
  /* The server lock (see the top of the file): the session connection
   * holding it shared (NULL while lost), guarded by session_lock (the
   * watch thread takes it again). */
  pthread_mutex_t session_lock;
  struct conn *session;
};

struct pg_txn {
  struct store_txn base;
  struct conn *conn;
};

static struct pg_store *to_store(struct store *s) {
  return (struct pg_store *)s;
}

static struct pg_txn *to_txn(struct store_txn *t) {
  return (struct pg_txn *)t;
}

/* PostgreSQL's message without its trailing newline. */
static int db_fail_text(struct tp_err *err, const char *msg, const char *what) {
  char text[512];
  snprintf(text, sizeof(text), "%s", msg && *msg ? msg : "connection lost");
  size_t n = strlen(text);
  while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' '))
    text[--n] = '\0';
  tp_err_set(err, GRPC_STATUS_INTERNAL, "store: %s: %s", what, text);
  return -EIO;
}

static int db_fail(struct tp_err *err, struct conn *c, const char *what) {
  return db_fail_text(err, c->db ? PQerrorMessage(c->db) : "out of memory", what);
}

/* Query parameters: text and int8 as text, bytea as binary. */
struct params {
  int n, cap, failed;
  const char **values;
  int *lengths, *formats;
  Oid *types;
  char (*num)[24]; /* int8 values as text; values[] points here at exec */
};

static void params_free(struct params *p) {
  free(p->values);
  free(p->lengths);
  free(p->formats);
  free(p->types);
  free(p->num);
  memset(p, 0, sizeof(*p));
}

static int params_grow(struct params *p) {
  if (p->failed)
    return -1;
  if (p->n < p->cap)
    return 0;
  int cap = p->cap ? p->cap * 2 : 16;
  const char **v = realloc(p->values, (size_t)cap * sizeof(*v));
  if (v != NULL)
    p->values = v;
  int *l = realloc(p->lengths, (size_t)cap * sizeof(*l));
  if (l != NULL)
    p->lengths = l;
  int *f = realloc(p->formats, (size_t)cap * sizeof(*f));
  if (f != NULL)
    p->formats = f;
  Oid *t = realloc(p->types, (size_t)cap * sizeof(*t));
  if (t != NULL)
    p->types = t;
  char(*num)[24] = realloc(p->num, (size_t)cap * sizeof(*num));
  if (num != NULL)
    p->num = num;
  if (v == NULL || l == NULL || f == NULL || t == NULL || num == NULL) {
    p->failed = 1;
    return -1;
  }
  p->cap = cap;
  return 0;
}

/* NULL binds SQL NULL. */
static void param_text(struct params *p, const char *s) {
  if (params_grow(p) < 0)
    return;
  p->values[p->n] = s;
  p->lengths[p->n] = 0;
  p->formats[p->n] = 0;
  p->types[p->n] = OID_TEXT;
  p->n++;
}

static void param_int(struct params *p, int64_t v) {
  if (params_grow(p) < 0)
    return;
  snprintf(p->num[p->n], sizeof(p->num[p->n]), "%lld", (long long)v);
  p->values[p->n] = NULL; /* set at exec: num moves as it grows */
  p->lengths[p->n] = 0;
  p->formats[p->n] = 0;
  p->types[p->n] = OID_INT8;
  p->n++;
}

/* NULL binds SQL NULL unless never_null (an empty bytea then). */
static void param_blob(struct params *p, const void *d, size_t len, int never_null) {
  if (params_grow(p) < 0)
    return;
  if (d == NULL && never_null) {
    d = "";
    len = 0;
  }
  if (len > INT32_MAX) {
    p->failed = 1;
    return;
  }
  p->values[p->n] = d;
  p->lengths[p->n] = (int)len;
  p->formats[p->n] = 1;
  p->types[p->n] = OID_BYTEA;
  p->n++;
}

/* Runs sql with p (then freed), results in binary. The result (caller
 * PQclear's) when it has status want, NULL with err set otherwise. */
static PGresult *params_exec(struct conn *c, const char *sql, struct params *p, const char *what,
                             ExecStatusType want, struct tp_err *err) {
  if (p->failed) {
    params_free(p);
    store__err_nomem(err, what);
    return NULL;
  }
  for (int i = 0; i < p->n; i++)
    if (p->types[i] == OID_INT8)
      p->values[i] = p->num[i];
  PGresult *res =
      PQexecParams(c->db, sql, p->n, p->types, p->values, p->lengths, p->formats, 1 /* binary */);
  params_free(p);
  if (res == NULL || PQresultStatus(res) != want) {
    db_fail_text(err, res ? PQresultErrorMessage(res) : PQerrorMessage(c->db), what);
    PQclear(res);
    return NULL;
  }
  return res;
}

/* Builds parameters from fmt: 't' const char * (NULL binds NULL), 'i'
 * int64_t, 'b' const void * and size_t (NULL binds NULL), 'B' the same but
 * never NULL. */
static void params_va(struct params *p, const char *fmt, va_list ap) {
  for (; *fmt != '\0'; fmt++) {
    switch (*fmt) {
    case 't':
      param_text(p, va_arg(ap, const char *));
      break;
    case 'i':
      param_int(p, va_arg(ap, int64_t));
      break;
    case 'b':
    case 'B': {
      const void *d = va_arg(ap, const void *);
      size_t len = va_arg(ap, size_t);
      param_blob(p, d, len, *fmt == 'B');
      break;
    }
    default:
      p->failed = 1;
    }
  }
}

/* A query answering rows; NULL with err set. */
static PGresult *q_rows(struct conn *c, const char *sql, const char *what, struct tp_err *err,
                        const char *fmt, ...) {
  struct params p = {0};
  va_list ap;
  va_start(ap, fmt);
  params_va(&p, fmt, ap);
  va_end(ap);
  return params_exec(c, sql, &p, what, PGRES_TUPLES_OK, err);
}

/* A statement answering no rows (or rows ignored: RETURNING-less). */
static int q_run(struct conn *c, const char *sql, const char *what, struct tp_err *err,
                 const char *fmt, ...) {
  struct params p = {0};
  va_list ap;
  va_start(ap, fmt);
  params_va(&p, fmt, ap);
  va_end(ap);
  PGresult *res = params_exec(c, sql, &p, what, PGRES_COMMAND_OK, err);
  if (res == NULL)
    return -EIO;
  PQclear(res);
  return 0;
}

/* Runs constant SQL (several statements allowed) with no parameters. */
static int q_exec(struct conn *c, const char *sql, const char *what, struct tp_err *err) {
  PGresult *res = PQexec(c->db, sql);
  int ok = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;
  if (!ok)
    db_fail_text(err, res ? PQresultErrorMessage(res) : PQerrorMessage(c->db), what);
  PQclear(res);
  return ok ? 0 : -EIO;
}

/* Binary int8 (or int4) column; NULL gives 0. */
static int64_t col_int(const PGresult *res, int row, int col) {
  if (PQgetisnull(res, row, col))
    return 0;
  const char *v = PQgetvalue(res, row, col);
  int len = PQgetlength(res, row, col);
  if (len == 8) {
    uint64_t u;
    memcpy(&u, v, 8);
    return (int64_t)be64toh(u);
  }
  if (len == 4) {
    uint32_t u;
    memcpy(&u, v, 4);
    return (int32_t)be32toh(u);
  }
  return 0;
}

/* A copy of a text column; NULL column gives NULL. */
static int col_text(const PGresult *res, int row, int col, char **out) {
  *out = NULL;
  if (PQgetisnull(res, row, col))
    return 0;
  *out = strdup(PQgetvalue(res, row, col));
  return *out ? 0 : -ENOMEM;
}

/* A copy of a bytea column; empty or NULL gives NULL, length 0. */
static int col_blob(const PGresult *res, int row, int col, uint8_t **out, size_t *len) {
  *out = NULL;
  *len = 0;
  if (PQgetisnull(res, row, col))
    return 0;
  int n = PQgetlength(res, row, col);
  if (n <= 0)
    return 0;
  *out = store__memdup(PQgetvalue(res, row, col), (size_t)n);
  if (*out == NULL)
    return -ENOMEM;
  *len = (size_t)n;
  return 0;
}

/* Reads the columns kind, name, etag, revision and, with `times`,
 * create_time_us, update_time_us, data, and then secret if with_secret. */
static int row_read(const PGresult *res, int i, int times, int with_secret, struct store_row *row) {
  if (col_text(res, i, 0, &row->kind) < 0 || col_text(res, i, 1, &row->name) < 0 ||
      col_text(res, i, 2, &row->etag) < 0)
    return -ENOMEM;
  row->revision = col_int(res, i, 3);
  if (!times)
    return 0;
  row->create_time_us = col_int(res, i, 4);
  row->update_time_us = col_int(res, i, 5);
  if (col_blob(res, i, 6, &row->data, &row->data_len) < 0)
    return -ENOMEM;
  if (with_secret && col_blob(res, i, 7, &row->secret, &row->secret_len) < 0)
    return -ENOMEM;
  return 0;
}

static void conn_close(struct conn *c) {
  if (c == NULL)
    return;
  PQfinish(c->db);
  free(c);
}

/* NOTICEs (CREATE TABLE IF NOT EXISTS) are not ours to print. */
static void notice_quiet(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

static int conn_open(struct pg_store *s, struct conn **out, struct tp_err *err) {
  struct conn *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return store__err_nomem(err, "open");
  /* A bound on connecting (unless the URI sets its own, which comes
   * later and wins): no thread, the watch's among them, waits forever on
   * a server that does not answer. */
  const char *const keys[] = {"connect_timeout", "dbname", NULL};
  const char *const values[] = {CONNECT_TIMEOUT_S, s->conninfo, NULL};
  c->db = PQconnectdbParams(keys, values, 1);
  if (c->db == NULL || PQstatus(c->db) != CONNECTION_OK) {
    char what[STORE_PATH_DISPLAY_MAX + 200];
    snprintf(what, sizeof(what), "connect to %s", s->display);
    db_fail(err, c, what);
    conn_close(c);
    return -EIO;
  }
  PQsetNoticeProcessor(c->db, notice_quiet, NULL);
  /* Explicit, whatever the server's defaults: durable commits, the
   * isolation the revision scheme relies on (see the top of the file). */
  if (q_exec(c,
             "SET synchronous_commit = on;"
             "SET default_transaction_isolation = 'read committed';"
             "SET lock_timeout = '" LOCK_TIMEOUT "';"
             "SET client_min_messages = warning",
             "configure the connection", err) < 0) {
    conn_close(c);
    return -EIO;
  }
  *out = c;
  return 0;
}

static int pool_take(struct pg_store *s, struct conn **out, struct tp_err *err) {
  pthread_mutex_lock(&s->pool_lock);
  while (s->n_idle == 0 && s->n_open >= PG_POOL_MAX)
    pthread_cond_wait(&s->pool_cond, &s->pool_lock);
  if (s->n_idle > 0) {
    *out = s->idle[--s->n_idle];
    pthread_mutex_unlock(&s->pool_lock);
    return 0;
  }
  s->n_open++;
  pthread_mutex_unlock(&s->pool_lock);
  int rc = conn_open(s, out, err);
  if (rc < 0) {
    pthread_mutex_lock(&s->pool_lock);
    s->n_open--;
    pthread_cond_signal(&s->pool_cond);
    pthread_mutex_unlock(&s->pool_lock);
  }
  return rc;
}

static void pool_give(struct pg_store *s, struct conn *c) {
  /* A connection lost, or still inside a transaction (its ROLLBACK
   * failed), is closed rather than handed to the next user. */
  int broken = PQstatus(c->db) != CONNECTION_OK || PQtransactionStatus(c->db) != PQTRANS_IDLE;
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

static void rollback_quiet(struct conn *c) {
  if (PQtransactionStatus(c->db) != PQTRANS_IDLE) {
    PGresult *res = PQexec(c->db, "ROLLBACK");
    PQclear(res);
  }
}

/* The committed revision; for_update also takes the writers' lock. */
static int meta_revision(struct conn *c, int for_update, int64_t *out, struct tp_err *err) {
  PGresult *res = q_rows(c,
                         for_update ? "SELECT revision FROM meta WHERE id = 1 FOR UPDATE"
                                    : "SELECT revision FROM meta WHERE id = 1",
                         "read the revision", err, "");
  if (res == NULL)
    return -EIO;
  int rc = 0;
  if (PQntuples(res) == 1)
    *out = col_int(res, 0, 0);
  else {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: the meta row is missing");
    rc = -EIO;
  }
  PQclear(res);
  return rc;
}

/* One integer from a query of one row. */
static int query_int(struct conn *c, const char *sql, const char *what, int64_t *out,
                     struct tp_err *err) {
  PGresult *res = q_rows(c, sql, what, err, "");
  if (res == NULL)
    return -EIO;
  *out = PQntuples(res) == 1 ? col_int(res, 0, 0) : 0;
  PQclear(res);
  return 0;
}

/* One transaction: takes the migration lock, reads the version and
 * applies the next step towards target. Returns 1 with *version set once
 * the schema is at target, 0 after a step. */
static int migrate_step(struct conn *c, struct pg_store *s, int target, int min_version,
                        int *version, struct tp_err *err) {
  const char *path = s->display;
  int64_t current = 0;
  int rc = -EIO;
  char what[STORE_PATH_DISPLAY_MAX + 200];
  snprintf(what, sizeof(what), "%s: schema_migrations", path);
  if (q_exec(c,
             "BEGIN;"
             "SELECT pg_advisory_xact_lock(" MIGRATION_LOCK_KEY ");"
             "CREATE TABLE IF NOT EXISTS schema_migrations ("
             "  version BIGINT PRIMARY KEY,"
             "  description TEXT NOT NULL,"
             "  applied_time_us BIGINT NOT NULL)",
             what, err) < 0)
    goto failed;
  if (query_int(c, "SELECT COALESCE(MAX(version), 0)::bigint FROM schema_migrations",
                "read the schema version", &current, err) < 0)
    goto failed;
  if (current == 0) {
    /* No history: a new database has nothing else in its schema. */
    int64_t others = 0;
    if (query_int(c,
                  "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                  " WHERE n.nspname = current_schema()"
                  " AND c.relname NOT IN ('schema_migrations', 'schema_migrations_pkey')",
                  "read the schema", &others, err) < 0)
      goto failed;
    if (others > 0) {
      tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                 "store: %s holds %lld tables, indexes, views or sequences but no schema "
                 "history: not a tlsplane database (a foreign or hand-made one)",
                 path, (long long)others);
      rollback_quiet(c);
      return -ENODATA;
    }
  } else if (current < min_version) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "store: %s: database schema version %d is older than %d, the version this "
               "database has had already: an older copy was put in its place",
               path, (int)current, min_version);
    rollback_quiet(c);
    return -EPROTO;
  }
  if (current > target) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "store: %s: database schema version %d is newer than %d%s", path, (int)current,
               target, target == N_MIGRATIONS ? ", the latest this build knows" : "");
    rollback_quiet(c);
    return -ENOTSUP;
  }
  if (current < target) {
    const struct migration *m = &migrations[current];
    snprintf(what, sizeof(what), "%s: migration %d (%s)", path, m->version, m->description);
    if (q_exec(c, m->sql, what, err) < 0)
      goto failed;
    if (m->run != NULL && (rc = m->run(c, s, err)) < 0)
      goto failed;
    rc = -EIO;
    if (q_run(c,
              "INSERT INTO schema_migrations (version, description, applied_time_us)"
              " VALUES ($1, $2, $3)",
              "record the migration", err, "iti", (int64_t)m->version, m->description,
              store__now_us()) < 0)
      goto failed;
  }
  if (q_exec(c, "COMMIT", "commit the migration", err) < 0)
    goto failed;
  *version = current < target ? (int)current + 1 : (int)current;
  return current == target;

failed:
  rollback_quiet(c);
  return rc;
}

static int migrate(struct conn *c, struct pg_store *s, int target, int min_version, int *version,
                   struct tp_err *err) {
  int rc;
  /* The floor is for the schema found, not for the steps taken from it. */
  while ((rc = migrate_step(c, s, target, min_version, version, err)) == 0)
    min_version = 0;
  return rc < 0 ? rc : 0;
}

/* Replaces every stored secret by fn's result, on c inside its
 * transaction. */
static int conn_secrets_rewrite(struct conn *c, store__rewrite_fn fn, void *data, size_t *n,
                                struct tp_err *err) {
  *n = 0;
  PGresult *res = q_rows(c,
                         "SELECT kind, name, secret FROM resources WHERE secret IS NOT NULL"
                         " ORDER BY kind, name",
                         "read the secrets", err, "");
  if (res == NULL)
    return -EIO;
  int rc = 0, count = PQntuples(res);
  for (int i = 0; rc == 0 && i < count; i++) {
    uint8_t *out = NULL;
    size_t out_len = 0;
    rc = fn(PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), (const uint8_t *)PQgetvalue(res, i, 2),
            (size_t)PQgetlength(res, i, 2), &out, &out_len, data, err);
    if (rc == 0)
      rc = q_run(c, "UPDATE resources SET secret = $3 WHERE kind = $1 AND name = $2",
                 "rewrite a secret", err, "ttB", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), out,
                 out_len);
    free(out);
  }
  for (int i = 0; i < count; i++)
    OPENSSL_cleanse(PQgetvalue(res, i, 2), (size_t)PQgetlength(res, i, 2));
  PQclear(res);
  if (rc == 0)
    *n = (size_t)count;
  return rc;
}

static int seal_one(const char *kind, const char *name, const uint8_t *in, size_t len,
                    uint8_t **out, size_t *out_len, void *data, struct tp_err *err) {
  return store__seal(data, kind, name, in, len, out, out_len, err);
}

/* The migration to version 3: every secret stored so far is sealed. */
static int seal_existing(struct conn *c, struct pg_store *s, struct tp_err *err) {
  size_t n;
  if (s->base.keys.n == 0) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "store: sealing the stored secrets needs a master key");
    return -ENOKEY;
  }
  return conn_secrets_rewrite(c, seal_one, &s->base.keys, &n, err);
}

/* Gives every row fn's MAC, on c inside its transaction. */
static int conn_macs_rewrite(struct conn *c, store__mac_fn fn, void *data, size_t *n,
                             struct tp_err *err) {
  *n = 0;
  PGresult *res = q_rows(c,
                         "SELECT r.kind, r.name, r.data, m.mac FROM resources r"
                         " LEFT JOIN macs m ON m.kind = r.kind AND m.name = r.name"
                         " ORDER BY r.kind, r.name",
                         "read the rows", err, "");
  if (res == NULL)
    return -EIO;
  int rc = 0, count = PQntuples(res);
  for (int i = 0; rc == 0 && i < count; i++) {
    uint8_t mac[STORE_MAC_LEN];
    int has_mac = !PQgetisnull(res, i, 3);
    rc = fn(PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), (const uint8_t *)PQgetvalue(res, i, 2),
            (size_t)PQgetlength(res, i, 2), has_mac ? (const uint8_t *)PQgetvalue(res, i, 3) : NULL,
            has_mac ? (size_t)PQgetlength(res, i, 3) : 0, mac, data, err);
    if (rc == 0)
      rc = q_run(c,
                 "INSERT INTO macs (kind, name, mac) VALUES ($1, $2, $3)"
                 " ON CONFLICT (kind, name) DO UPDATE SET mac = excluded.mac",
                 "write a row's MAC", err, "ttb", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), mac,
                 (size_t)STORE_MAC_LEN);
  }
  PQclear(res);
  if (rc == 0)
    *n = (size_t)count;
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
static int mac_existing(struct conn *c, struct pg_store *s, struct tp_err *err) {
  size_t n;
  if (s->base.keys.n == 0) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "store: authenticating the stored rows needs a master key");
    return -ENOKEY;
  }
  return conn_macs_rewrite(c, mac_fresh, &s->base.keys, &n, err);
}

/* A session connection holding the server lock shared. -EBUSY while a
 * master-key rotation holds it. */
static int session_open(struct pg_store *s, struct conn **out, struct tp_err *err) {
  struct conn *c;
  int64_t got = 0;
  if (conn_open(s, &c, err) < 0)
    return -EIO;
  if (query_int(c, "SELECT pg_try_advisory_lock_shared(" SERVER_LOCK_KEY ")::int",
                "the server lock", &got, err) < 0) {
    conn_close(c);
    return -EIO;
  }
  if (got != 1) {
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
               "store: %s: a master-key rotation is in progress (tlsplane-server "
               "rotate-master-key holds advisory lock " SERVER_LOCK_KEY
               "): the master key given is being replaced; start again once the rotation "
               "has finished, with the new key",
               s->display);
    conn_close(c);
    return -EBUSY;
  }
  *out = c;
  return 0;
}

/* A lost session connection replaced, the lock taken again on the new
 * one; the caller holds session_lock. 0 while held; -EBUSY while a
 * rotation keeps it out. */
static int session_renew(struct pg_store *s, struct tp_err *err) {
  int64_t one = 0;
  if (s->session != NULL && query_int(s->session, "SELECT 1", "the server lock", &one, err) < 0) {
    conn_close(s->session);
    s->session = NULL;
  }
  return s->session != NULL ? 0 : session_open(s, &s->session, err);
}

static void pg_close(struct store *base) {
  struct pg_store *s = to_store(base);
  store__keyring_clear(&s->base.keys);
  for (int i = 0; i < s->n_idle; i++)
    conn_close(s->idle[i]);
  conn_close(s->job_conn); /* releases the job lock with its session */
  conn_close(s->session);  /* and the server lock */
  pthread_mutex_destroy(&s->job_lock);
  pthread_mutex_destroy(&s->session_lock);
  pthread_cond_destroy(&s->pool_cond);
  pthread_mutex_destroy(&s->pool_lock);
  pthread_mutex_destroy(&s->write_lock);
  if (s->conninfo != NULL)
    OPENSSL_cleanse(s->conninfo, strlen(s->conninfo)); /* may hold a password */
  free(s->conninfo);
  free(s);
}

/* Raises the store's revision to rev if another process committed it. */
static void revision_seen(struct store *s, int64_t rev) {
  int64_t cur = atomic_load(&s->revision);
  while (cur < rev && !atomic_compare_exchange_weak(&s->revision, &cur, rev))
    ;
}

static int pg_open(const char *path, int version, int min_version, const struct store_keyring *keys,
                   struct store **out, struct tp_err *err) {
  struct pg_store *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return store__err_nomem(err, "open");
  s->conninfo = strdup(path);
  store__path_display(path, s->display, sizeof(s->display));
  pthread_mutex_init(&s->write_lock, NULL);
  pthread_mutex_init(&s->pool_lock, NULL);
  pthread_cond_init(&s->pool_cond, NULL);
  pthread_mutex_init(&s->job_lock, NULL);
  pthread_mutex_init(&s->session_lock, NULL);
  if (s->conninfo == NULL) {
    pg_close(&s->base);
    return store__err_nomem(err, "open");
  }
  s->base.keys = *keys;

  struct conn *c;
  int rc = session_open(s, &s->session, err);
  if (rc < 0)
    goto failed_conn;
  rc = conn_open(s, &c, err);
  if (rc < 0)
    goto failed_conn;
  rc = migrate(c, s, version, min_version, &s->base.schema_version, err);
  if (rc < 0)
    goto failed_migrate;
  int64_t rev;
  rc = meta_revision(c, 0, &rev, err);
  if (rc < 0)
    goto failed_migrate;
  atomic_store(&s->base.revision, rev);
  s->idle[s->n_idle++] = c;
  s->n_open = 1;
  s->base.connections = PG_POOL_MAX;
  *out = &s->base;
  return 0;

failed_migrate:
  conn_close(c);
failed_conn:
  pg_close(&s->base);
  return rc;
}

static int pg_backup(const char *path, const char *dest, struct store_backup_info *info,
                     struct tp_err *err) {
  (void)path;
  (void)dest;
  (void)info;
  tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
             "store: backup of a PostgreSQL database is not supported: use pg_dump");
  return -ENOTSUP;
}

static int pg_begin(struct store *base, int write, struct store_txn **out, struct tp_err *err) {
  struct pg_store *s = to_store(base);
  struct pg_txn *t = calloc(1, sizeof(*t));
  if (t == NULL)
    return store__err_nomem(err, "begin");
  if (write)
    pthread_mutex_lock(&s->write_lock);
  const char *begin = write ? "BEGIN ISOLATION LEVEL READ COMMITTED"
                            : "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
  int rc = pool_take(s, &t->conn, err);
  if (rc < 0)
    goto failed_take;
  rc = q_exec(t->conn, begin, "begin", err);
  if (rc < 0 && PQstatus(t->conn->db) != CONNECTION_OK) {
    /* An idle connection the server dropped (a restart, a failover):
     * closed, and one new connection tried. */
    pool_give(s, t->conn);
    rc = pool_take(s, &t->conn, err);
    if (rc < 0)
      goto failed_take;
    rc = q_exec(t->conn, begin, "begin", err);
  }
  if (rc < 0)
    goto failed_begin;
  /* A writer locks the meta row until it ends (the writers' lock); a
   * reader's first query fixes its snapshot here. */
  int64_t rev;
  rc = meta_revision(t->conn, write, &rev, err);
  if (rc < 0)
    goto failed_meta;
  revision_seen(base, rev);
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

static void txn_end(struct pg_txn *t) {
  struct pg_store *s = to_store(t->base.store);
  int write = t->base.write;
  pool_give(s, t->conn);
  if (write)
    pthread_mutex_unlock(&s->write_lock);
  free(t);
}

static int pg_commit(struct store_txn *base, struct tp_err *err) {
  struct pg_txn *t = to_txn(base);
  struct conn *c = t->conn;
  int rc = 0;
  if (base->wrote) {
    /* The notification goes out with the commit, to every server's
     * watch (see the top of the file). */
    PGresult *res = q_rows(c,
                           "WITH bump AS (UPDATE meta SET revision = $1 WHERE id = 1 RETURNING "
                           "revision) SELECT pg_notify('" WATCH_CHANNEL "', revision::text) "
                           "FROM bump",
                           "bump the revision", err, "i", base->revision);
    if (res == NULL)
      rc = -EIO;
    PQclear(res);
  }
  if (rc == 0) {
    /* COMMIT of a transaction that failed answers ROLLBACK, not an
     * error. */
    PGresult *res = PQexec(c->db, "COMMIT");
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
      rc = db_fail_text(err, res ? PQresultErrorMessage(res) : PQerrorMessage(c->db), "commit");
    else if (strcmp(PQcmdStatus(res), "COMMIT") != 0)
      rc = db_fail_text(err, "the transaction was rolled back", "commit");
    PQclear(res);
  }
  if (rc == 0 && base->wrote)
    revision_seen(base->store, base->revision);
  if (rc < 0)
    rollback_quiet(c);
  txn_end(t);
  return rc;
}

static void pg_rollback(struct store_txn *base) {
  struct pg_txn *t = to_txn(base);
  rollback_quiet(t->conn);
  txn_end(t);
}

static int pg_get(struct store_txn *base, const char *kind, const char *name, int with_secret,
                  struct store_row *out, struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  int macs = base->store->schema_version >= STORE_MACS_SINCE_VERSION;
  char sql[512];
  snprintf(sql, sizeof(sql),
           "SELECT r.kind, r.name, r.etag, r.revision, r.create_time_us, r.update_time_us,"
           " r.data, %s, %s FROM resources r%s WHERE r.kind = $1 AND r.name = $2",
           with_secret ? "r.secret" : "NULL::bytea", macs ? "m.mac" : "NULL::bytea",
           macs ? " LEFT JOIN macs m ON m.kind = r.kind AND m.name = r.name" : "");
  PGresult *res = q_rows(c, sql, "get", err, "tt", kind, name);
  if (res == NULL)
    return -EIO;
  int rc;
  if (PQntuples(res) == 0)
    rc = store__err_not_found(err, name);
  else if (row_read(res, 0, 1, with_secret, out) < 0 ||
           col_blob(res, 0, 8, &out->mac, &out->mac_len) < 0)
    rc = store__err_nomem(err, "get");
  else
    rc = 0;
  if (with_secret && PQntuples(res) > 0)
    OPENSSL_cleanse(PQgetvalue(res, 0, 7), (size_t)PQgetlength(res, 0, 7));
  PQclear(res);
  return rc;
}

/* The row's etag: 1 and *etag (caller frees) if it exists, 0 if not. */
static int row_head(struct store_txn *base, const char *kind, const char *name, char **etag,
                    struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  *etag = NULL;
  PGresult *res = q_rows(c, "SELECT etag FROM resources WHERE kind = $1 AND name = $2", "read etag",
                         err, "tt", kind, name);
  if (res == NULL)
    return -EIO;
  int rc = 0;
  if (PQntuples(res) > 0)
    rc = col_text(res, 0, 0, etag) < 0 ? store__err_nomem(err, "read etag") : 1;
  PQclear(res);
  return rc;
}

static int row_exists(struct store_txn *base, const char *kind, const char *name,
                      struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  PGresult *res = q_rows(c, "SELECT 1 FROM resources WHERE kind = $1 AND name = $2",
                         "look up a reference", err, "tt", kind, name);
  if (res == NULL)
    return -EIO;
  int rc = PQntuples(res) > 0;
  PQclear(res);
  return rc;
}

/* Writes the audit row and what it changed (changes may be NULL). */
static int audit_insert(struct store_txn *base, const char *actor, const char *method,
                        const char *name, const char *action, const struct store_audit_change *ch,
                        size_t n_changes, int64_t now, struct tp_err *err) {
  if (base->store->schema_version < AUDIT_SINCE_VERSION)
    return 0;
  struct conn *c = to_txn(base)->conn;
  PGresult *res = q_rows(c,
                         "INSERT INTO audit (revision, time_us, actor, method, resource, action)"
                         " VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
                         "write the audit row", err, "iitttt", base->revision, now, actor, method,
                         name, action);
  if (res == NULL)
    return -EIO;
  int64_t seq = col_int(res, 0, 0);
  PQclear(res);
  int rc = 0;
  if (base->store->schema_version < AUDIT_CHANGES_SINCE_VERSION)
    return 0;
  for (size_t i = 0; rc == 0 && i < n_changes; i++)
    rc = q_run(c,
               "INSERT INTO audit_changes (seq, idx, field, before_value, after_value)"
               " VALUES ($1, $2, $3, $4, $5)",
               "write an audit change", err, "iittt", seq, (int64_t)i,
               ch[i].field ? ch[i].field : "", ch[i].before ? ch[i].before : "",
               ch[i].after ? ch[i].after : "");
  return rc;
}

/* Inserts or updates the row itself; *create_time receives its
 * create_time_us (kept on update). */
static int row_write(struct store_txn *base, const struct store_write *w, const char *etag,
                     int64_t now, int64_t *create_time, struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  const uint8_t *secret = w->set_secret ? w->secret : NULL;
  size_t secret_len = secret ? w->secret_len : 0;
  PGresult *res;
  if (w->create)
    res = q_rows(c,
                 "INSERT INTO resources (kind, name, etag, revision, create_time_us,"
                 " update_time_us, data, expire_time_us, secret)"
                 " VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8) RETURNING create_time_us",
                 "insert", err, "tttiiBib", w->kind, w->name, etag, base->revision, now, w->data,
                 w->data_len, w->expire_time_us, secret, secret_len);
  else if (w->set_secret)
    res = q_rows(c,
                 "UPDATE resources SET etag = $3, revision = $4, update_time_us = $5, data = $6,"
                 " expire_time_us = $7, secret = $8 WHERE kind = $1 AND name = $2"
                 " RETURNING create_time_us",
                 "update", err, "tttiiBib", w->kind, w->name, etag, base->revision, now, w->data,
                 w->data_len, w->expire_time_us, secret, secret_len);
  else
    res = q_rows(c,
                 "UPDATE resources SET etag = $3, revision = $4, update_time_us = $5, data = $6,"
                 " expire_time_us = $7 WHERE kind = $1 AND name = $2 RETURNING create_time_us",
                 "update", err, "tttiiBi", w->kind, w->name, etag, base->revision, now, w->data,
                 w->data_len, w->expire_time_us);
  if (res == NULL)
    return -EIO;
  if (PQntuples(res) > 0)
    *create_time = col_int(res, 0, 0);
  PQclear(res);
  if (base->store->schema_version >= DUE_SINCE_VERSION)
    return q_run(c, "UPDATE resources SET due_time_us = $3 WHERE kind = $1 AND name = $2",
                 "set the due time", err, "tti", w->kind, w->name, w->due_time_us);
  return 0;
}

static int labels_write(struct store_txn *base, const struct store_write *w, int replace,
                        struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  int rc = 0;
  if (replace)
    rc = q_run(c, "DELETE FROM labels WHERE kind = $1 AND name = $2", "replace labels", err, "tt",
               w->kind, w->name);
  for (size_t i = 0; rc == 0 && i < w->n_labels; i++)
    rc = q_run(c, "INSERT INTO labels (kind, name, key, value) VALUES ($1, $2, $3, $4)",
               "write a label", err, "tttt", w->kind, w->name, w->labels[i].key,
               w->labels[i].value ? w->labels[i].value : "");
  return rc;
}

static int refs_write(struct store_txn *base, const struct store_write *w, int replace,
                      struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  int rc = 0;
  if (replace)
    rc = q_run(c, "DELETE FROM refs WHERE from_kind = $1 AND from_name = $2", "replace references",
               err, "tt", w->kind, w->name);
  for (size_t i = 0; rc == 0 && i < w->n_refs; i++) {
    const struct store_ref *r = &w->refs[i];
    rc = q_run(c,
               "INSERT INTO refs (from_kind, from_name, to_kind, to_name, field)"
               " VALUES ($1, $2, $3, $4, $5)",
               "write a reference", err, "ttttt", w->kind, w->name, r->kind, r->name, r->field);
  }
  return rc;
}

static int referrer_first(struct store_txn *base, const char *kind, const char *name, char **from,
                          char **field, struct tp_err *err) {
  *from = *field = NULL;
  PGresult *res = q_rows(to_txn(base)->conn,
                         "SELECT from_name, field FROM refs WHERE to_kind = $1 AND to_name = $2"
                         " ORDER BY from_name, field LIMIT 1",
                         "look up referrers", err, "tt", kind, name);
  if (res == NULL)
    return -EIO;
  int rc = 0;
  if (PQntuples(res) > 0) {
    rc = col_text(res, 0, 0, from) < 0 || col_text(res, 0, 1, field) < 0
             ? store__err_nomem(err, "read the referrer")
             : 1;
  }
  PQclear(res);
  if (rc < 0) {
    free(*from);
    free(*field);
    *from = *field = NULL;
  }
  return rc;
}

/* Labels, outgoing references, usage and the MAC go with the row (ON
 * DELETE CASCADE). */
static int row_delete(struct store_txn *base, const char *kind, const char *name,
                      struct tp_err *err) {
  return q_run(to_txn(base)->conn, "DELETE FROM resources WHERE kind = $1 AND name = $2", "delete",
               err, "tt", kind, name);
}

/* A growing SQL text made of fixed fragments, each '?' a placeholder
 * numbered in order ($1, $2, ...) as it is added. */
struct sql_buf {
  char *p;
  size_t len, cap;
  int n_params;
  int failed; /* an allocation failed; p is unusable */
};

static void sql_add(struct sql_buf *b, const char *s) {
  for (; *s != '\0' && !b->failed; s++) {
    char piece[16];
    if (*s == '?')
      snprintf(piece, sizeof(piece), "$%d", ++b->n_params);
    else {
      piece[0] = *s;
      piece[1] = '\0';
    }
    size_t n = strlen(piece);
    if (b->len + n + 1 > b->cap) {
      size_t cap = b->cap ? b->cap * 2 : 512;
      char *p = realloc(b->p, cap);
      if (p == NULL) {
        b->failed = 1;
        return;
      }
      b->p = p;
      b->cap = cap;
    }
    memcpy(b->p + b->len, piece, n + 1);
    b->len += n;
  }
}

static int pg_list(struct store_txn *base, const struct store_query *q, struct store_row **rows,
                   size_t *n, struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  struct sql_buf b = {0};
  struct params p = {0};
  int macs = base->store->schema_version >= STORE_MACS_SINCE_VERSION;
  sql_add(&b, "SELECT r.kind, r.name, r.etag, r.revision, r.create_time_us, r.update_time_us,"
              " r.data");
  sql_add(&b, macs ? ", m.mac FROM resources r LEFT JOIN macs m"
                     " ON m.kind = r.kind AND m.name = r.name"
                   : " FROM resources r");
  sql_add(&b, " WHERE r.kind = ?");
  param_text(&p, q->kind);
  if (q->after_name != NULL) {
    sql_add(&b, " AND r.name > ?");
    param_text(&p, q->after_name);
  }
  if (q->has_expire_before) {
    sql_add(&b, " AND r.expire_time_us > 0 AND r.expire_time_us < ?");
    param_int(&p, q->expire_before_us);
  }
  if (q->has_due_before) {
    sql_add(&b, base->store->schema_version >= DUE_SINCE_VERSION
                    ? " AND r.due_time_us > 0 AND r.due_time_us < ?"
                    : " AND ? < 0"); /* nothing is scheduled before the column exists */
    param_int(&p, q->due_before_us);
  }
  for (size_t i = 0; i < q->n_labels; i++) {
    /* NE holds when no label has key=value, which includes a missing key. */
    static const char *const frag[] = {
        [STORE_LABEL_EQ] = " AND r.name IN (SELECT l.name FROM labels l WHERE l.kind = ? AND"
                           " l.key = ? AND l.value = ?)",
        [STORE_LABEL_NE] = " AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.kind = r.kind AND"
                           " l.name = r.name AND l.key = ? AND l.value = ?)",
        [STORE_LABEL_EXISTS] = " AND EXISTS (SELECT 1 FROM labels l WHERE l.kind = r.kind AND"
                               " l.name = r.name AND l.key = ?)",
        [STORE_LABEL_NOT_EXISTS] = " AND NOT EXISTS (SELECT 1 FROM labels l WHERE"
                                   " l.kind = r.kind AND l.name = r.name AND l.key = ?)",
    };
    const struct store_label_req *l = &q->labels[i];
    sql_add(&b, frag[l->op]);
    if (l->op == STORE_LABEL_EQ)
      param_text(&p, q->kind);
    param_text(&p, l->key);
    if (l->op == STORE_LABEL_EQ || l->op == STORE_LABEL_NE)
      param_text(&p, l->value ? l->value : "");
  }
  sql_add(&b, " ORDER BY r.name");
  if (q->limit > 0) {
    sql_add(&b, " LIMIT ?");
    param_int(&p, q->limit);
  }
  if (b.failed) {
    free(b.p);
    params_free(&p);
    return store__err_nomem(err, "list");
  }
  PGresult *res = params_exec(c, b.p, &p, "list", PGRES_TUPLES_OK, err);
  free(b.p);
  if (res == NULL)
    return -EIO;
  size_t cap = 0;
  int count = PQntuples(res);
  for (int i = 0; i < count; i++) {
    if (store__rows_reserve(rows, *n, &cap) < 0)
      goto failed_row;
    /* Counted first so that store_rows_free also frees a half-read row. */
    struct store_row *row = &(*rows)[(*n)++];
    if (row_read(res, i, 1, 0, row) < 0 ||
        (macs && col_blob(res, i, 7, &row->mac, &row->mac_len) < 0))
      goto failed_row;
  }
  PQclear(res);
  return 0;

failed_row:
  PQclear(res);
  store_rows_free(*rows, *n);
  *rows = NULL;
  *n = 0;
  return store__err_nomem(err, "list");
}

static int pg_referrers(struct store_txn *base, const char *kind, const char *name,
                        struct store_row **rows, size_t *n, struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  PGresult *res = q_rows(c,
                         "SELECT DISTINCT r.kind, r.name, r.etag, r.revision"
                         " FROM refs f JOIN resources r"
                         " ON r.kind = f.from_kind AND r.name = f.from_name"
                         " WHERE f.to_kind = $1 AND f.to_name = $2 ORDER BY r.name, r.kind",
                         "referrers", err, "tt", kind, name);
  if (res == NULL)
    return -EIO;
  size_t cap = 0;
  int count = PQntuples(res);
  for (int i = 0; i < count; i++)
    if (store__rows_reserve(rows, *n, &cap) < 0 || row_read(res, i, 0, 0, &(*rows)[(*n)++]) < 0) {
      PQclear(res);
      store_rows_free(*rows, *n);
      *rows = NULL;
      *n = 0;
      return store__err_nomem(err, "referrers");
    }
  PQclear(res);
  return 0;
}

/* Reads the changes of the audit row a (a->seq). */
static int audit_changes_read(struct conn *c, struct store_audit *a, struct tp_err *err) {
  PGresult *res = q_rows(c,
                         "SELECT field, before_value, after_value FROM audit_changes"
                         " WHERE seq = $1 ORDER BY idx",
                         "audit changes", err, "i", a->seq);
  if (res == NULL)
    return -EIO;
  int count = PQntuples(res), rc = 0;
  if (count > 0 && (a->changes = calloc((size_t)count, sizeof(*a->changes))) == NULL)
    rc = store__err_nomem(err, "audit changes");
  for (int i = 0; rc == 0 && i < count; i++) {
    struct store_audit_change *ch = &a->changes[a->n_changes++];
    if (col_text(res, i, 0, &ch->field) < 0 || col_text(res, i, 1, &ch->before) < 0 ||
        col_text(res, i, 2, &ch->after) < 0)
      rc = store__err_nomem(err, "audit changes");
  }
  PQclear(res);
  return rc;
}

static int pg_audit_list(struct store_txn *base, const struct store_audit_query *q,
                         struct store_audit **out, size_t *n, struct tp_err *err) {
  if (base->store->schema_version < AUDIT_SINCE_VERSION)
    return 0;
  struct conn *c = to_txn(base)->conn;
  struct sql_buf b = {0};
  struct params p = {0};
  sql_add(&b, "SELECT seq, revision, time_us, actor, method, resource, action FROM audit"
              " WHERE seq > ? AND revision > ?");
  param_int(&p, q->after_seq);
  param_int(&p, q->since_revision);
  if (q->before_seq > 0) {
    sql_add(&b, " AND seq < ?");
    param_int(&p, q->before_seq);
  }
  if (q->resource != NULL) {
    sql_add(&b, " AND resource = ?");
    param_text(&p, q->resource);
  }
  if (q->actor != NULL) {
    sql_add(&b, " AND actor = ?");
    param_text(&p, q->actor);
  }
  if (q->has_start_time) {
    sql_add(&b, " AND time_us >= ?");
    param_int(&p, q->start_time_us);
  }
  if (q->has_end_time) {
    sql_add(&b, " AND time_us < ?");
    param_int(&p, q->end_time_us);
  }
  sql_add(&b, q->descending ? " ORDER BY seq DESC" : " ORDER BY seq");
  if (q->limit > 0) {
    sql_add(&b, " LIMIT ?");
    param_int(&p, q->limit);
  }
  if (b.failed) {
    free(b.p);
    params_free(&p);
    return store__err_nomem(err, "audit list");
  }
  PGresult *res = params_exec(c, b.p, &p, "audit list", PGRES_TUPLES_OK, err);
  free(b.p);
  if (res == NULL)
    return -EIO;
  int count = PQntuples(res), rc = 0;
  if (count > 0 && (*out = calloc((size_t)count, sizeof(**out))) == NULL)
    rc = store__err_nomem(err, "audit list");
  for (int i = 0; rc == 0 && i < count; i++) {
    struct store_audit *a = &(*out)[(*n)++];
    a->seq = col_int(res, i, 0);
    a->revision = col_int(res, i, 1);
    a->time_us = col_int(res, i, 2);
    if (col_text(res, i, 3, &a->actor) < 0 || col_text(res, i, 4, &a->method) < 0 ||
        col_text(res, i, 5, &a->resource) < 0 || col_text(res, i, 6, &a->action) < 0)
      rc = store__err_nomem(err, "audit list");
  }
  PQclear(res);
  for (size_t i = 0;
       rc == 0 && base->store->schema_version >= AUDIT_CHANGES_SINCE_VERSION && i < *n; i++)
    rc = audit_changes_read(c, &(*out)[i], err);
  if (rc < 0) {
    store_audit_free(*out, *n);
    *out = NULL;
    *n = 0;
    return -EIO;
  }
  return 0;
}

static int pg_secrets_rewrite(struct store_txn *base, store__rewrite_fn fn, void *data, size_t *n,
                              struct tp_err *err) {
  return conn_secrets_rewrite(to_txn(base)->conn, fn, data, n, err);
}

/* store_master_key_rotate: the server lock taken exclusively on this
 * store's session connection (its own shared hold does not conflict), or
 * -EBUSY naming how many other processes hold it shared. */
static int pg_rotation_lock(struct store *base, struct tp_err *err) {
  struct pg_store *s = to_store(base);
  int64_t got = 0, others = 0;
  pthread_mutex_lock(&s->session_lock);
  int rc = session_renew(s, err); /* a connection lost since the open: a new one */
  if (rc == 0 && query_int(s->session, "SELECT pg_try_advisory_lock(" SERVER_LOCK_KEY ")::int",
                           "the server lock", &got, err) < 0) {
    rc = -EIO;
  } else if (rc == 0 && got != 1) {
    rc = query_int(s->session,
                   "SELECT count(DISTINCT pid) FROM pg_locks WHERE " SERVER_LOCK_IN_PG_LOCKS
                   " AND mode = 'ShareLock' AND granted AND pid <> pg_backend_pid()",
                   "count the servers", &others, err);
    if (rc == 0) {
      tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                 "store: %lld tlsplane-server process%s connected to the database (holding "
                 "advisory lock " SERVER_LOCK_KEY " shared, in pg_locks): stop every server "
                 "of the deployment, then rotate the master key",
                 (long long)others, others == 1 ? " is" : "es are");
      rc = -EBUSY;
    }
  }
  pthread_mutex_unlock(&s->session_lock);
  return rc;
}

static void pg_rotation_unlock(struct store *base) {
  struct pg_store *s = to_store(base);
  struct tp_err ignored = {0};
  int64_t done = 0;
  pthread_mutex_lock(&s->session_lock);
  if (s->session != NULL)
    (void)query_int(s->session, "SELECT pg_advisory_unlock(" SERVER_LOCK_KEY ")::int",
                    "the server lock", &done, &ignored);
  pthread_mutex_unlock(&s->session_lock);
}

static int pg_sealed_key_ids(struct store_txn *base, uint8_t (**ids)[STORE_KEY_ID_LEN], size_t *n,
                             struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  *ids = NULL;
  *n = 0;
  PGresult *res = q_rows(c,
                         "SELECT DISTINCT substring(secret FROM 2 FOR 8) FROM resources"
                         " WHERE secret IS NOT NULL",
                         "sealed key ids", err, "");
  if (res == NULL)
    return -EIO;
  int count = PQntuples(res), rc = 0;
  if (count > 0 && (*ids = malloc((size_t)count * STORE_KEY_ID_LEN)) == NULL)
    rc = store__err_nomem(err, "sealed key ids");
  for (int i = 0; rc == 0 && i < count; i++) {
    if (PQgetlength(res, i, 0) != STORE_KEY_ID_LEN) {
      /* Too short to be sealed: the record names no key. */
      tp_err_set(err, GRPC_STATUS_DATA_LOSS, "store: a stored secret is not a sealed record");
      rc = -EBADMSG;
      break;
    }
    memcpy((*ids)[(*n)++], PQgetvalue(res, i, 0), STORE_KEY_ID_LEN);
  }
  PQclear(res);
  if (rc < 0) {
    free(*ids);
    *ids = NULL;
    *n = 0;
  }
  return rc;
}

static int pg_usage_set(struct store_txn *base, const char *kind, const char *name, int64_t time_us,
                        struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  int rc = row_exists(base, kind, name, err);
  if (rc < 0)
    return rc;
  if (rc == 0)
    return store__err_not_found(err, name);
  return q_run(c,
               "INSERT INTO usage (kind, name, last_used_us) VALUES ($1, $2, $3)"
               " ON CONFLICT (kind, name) DO UPDATE SET last_used_us = excluded.last_used_us",
               "record the last use", err, "tti", kind, name, time_us);
}

static int pg_usage_get(struct store_txn *base, const char *kind, const char *name,
                        int64_t *time_us, struct tp_err *err) {
  PGresult *res =
      q_rows(to_txn(base)->conn, "SELECT last_used_us FROM usage WHERE kind = $1 AND name = $2",
             "read the last use", err, "tt", kind, name);
  if (res == NULL)
    return -EIO;
  if (PQntuples(res) > 0)
    *time_us = col_int(res, 0, 0);
  PQclear(res);
  return 0;
}

static int pg_challenges_set(struct store_txn *base, const char *certificate,
                             const struct store_challenge *ch, size_t n, struct tp_err *err) {
  struct conn *c = to_txn(base)->conn;
  int rc = q_run(c, "DELETE FROM acme_challenges WHERE kind = $1 AND name = $2",
                 "remove the challenges", err, "tt", "Certificate", certificate);
  for (size_t i = 0; rc == 0 && i < n; i++)
    rc = q_run(c,
               "INSERT INTO acme_challenges (kind, name, idx, data, secret)"
               " VALUES ($1, $2, $3, $4, $5)",
               "write a challenge", err, "ttiBB", "Certificate", certificate, ch[i].index,
               ch[i].data, ch[i].data_len, ch[i].secret, ch[i].secret_len);
  return rc;
}

static int pg_challenges_list(struct store_txn *base, struct store_challenge **out, size_t *n,
                              struct tp_err *err) {
  PGresult *res = q_rows(to_txn(base)->conn,
                         "SELECT name, idx, data, secret FROM acme_challenges"
                         " WHERE kind = 'Certificate' ORDER BY name, idx",
                         "read the challenges", err, "");
  if (res == NULL)
    return -EIO;
  int count = PQntuples(res), rc = 0;
  struct store_challenge *v = calloc((size_t)count + 1, sizeof(*v));
  if (v == NULL)
    rc = store__err_nomem(err, "challenges");
  for (int i = 0; rc == 0 && i < count; i++) {
    v[i].index = col_int(res, i, 1);
    if (col_text(res, i, 0, &v[i].certificate) != 0 || v[i].certificate == NULL ||
        col_blob(res, i, 2, &v[i].data, &v[i].data_len) != 0 ||
        col_blob(res, i, 3, &v[i].secret, &v[i].secret_len) != 0)
      rc = store__err_nomem(err, "challenges");
  }
  PQclear(res);
  if (rc < 0) {
    store_challenges_free(v, v != NULL ? (size_t)count : 0);
    return rc;
  }
  *out = v;
  *n = (size_t)count;
  return 0;
}

static int pg_mac_set(struct store_txn *base, const char *kind, const char *name,
                      const uint8_t mac[STORE_MAC_LEN], struct tp_err *err) {
  return q_run(to_txn(base)->conn,
               "INSERT INTO macs (kind, name, mac) VALUES ($1, $2, $3)"
               " ON CONFLICT (kind, name) DO UPDATE SET mac = excluded.mac",
               "write the row's MAC", err, "ttb", kind, name, mac, (size_t)STORE_MAC_LEN);
}

static int pg_macs_rewrite(struct store_txn *base, store__mac_fn fn, void *data, size_t *n,
                           struct tp_err *err) {
  return conn_macs_rewrite(to_txn(base)->conn, fn, data, n, err);
}

/* --- the watch --- */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* rev is committed: store_revision shows it, and the callback hears of it
 * unless it heard of it (or a later one) already. */
static void watch_tell(struct pg_store *s, int64_t rev) {
  revision_seen(&s->base, rev);
  if (rev <= s->watch_told)
    return;
  s->watch_told = rev;
  s->base.watch.revision(rev, s->base.watch.data);
}

static void watch_status(struct pg_store *s, const char *msg) {
  if (s->base.watch.status != NULL)
    s->base.watch.status(msg, s->base.watch.data);
}

/* The newest revision among the notifications received so far (0: none). */
static int64_t notified(struct conn *c) {
  int64_t best = 0;
  PGnotify *n;
  while ((n = PQnotifies(c->db)) != NULL) {
    char *end = NULL;
    long long v = strtoll(n->extra, &end, 10);
    if (end != n->extra && *end == '\0' && v > best)
      best = v;
    PQfreemem(n);
  }
  return best;
}

/* The watch thread's check of the server lock. */
static int session_check(struct pg_store *s, struct tp_err *err) {
  pthread_mutex_lock(&s->session_lock);
  int rc = session_renew(s, err);
  pthread_mutex_unlock(&s->session_lock);
  return rc;
}

static void *watch_main(void *arg) {
  struct pg_store *s = arg;
  struct conn *c = NULL;
  int lost = 0; /* status() was told the watch is lost, and not yet that it is back */
  int64_t retry_at = 0, check_at = 0;
  for (;;) {
    struct tp_err err = {0};
    int64_t now = mono_ms();
    if (c == NULL && now >= retry_at) {
      if (conn_open(s, &c, &err) == 0 &&
          (q_exec(c, "SET application_name = '" SERVER_APPLICATION "'", "application name", &err) <
               0 ||
           q_exec(c, "LISTEN " WATCH_CHANNEL, "listen", &err) < 0 || session_check(s, &err) < 0)) {
        conn_close(c);
        c = NULL;
      }
      if (c != NULL) {
        check_at = now; /* what was committed while away */
        if (lost)
          watch_status(s, NULL);
        lost = 0;
      } else {
        if (!lost)
          watch_status(s, err.msg);
        lost = 1;
        retry_at = now + WATCH_RETRY_MS;
      }
    }
    int64_t rev = 0;
    if (c != NULL && now >= check_at) {
      if (meta_revision(c, 0, &rev, &err) == 0 && session_check(s, &err) == 0) {
        check_at = now + STORE_WATCH_CHECK_MS;
      } else {
        watch_status(s, err.msg);
        lost = 1;
        conn_close(c);
        c = NULL;
        retry_at = now + WATCH_RETRY_MS;
      }
    }
    if (c != NULL) {
      int64_t n = notified(c);
      rev = n > rev ? n : rev;
    }
    if (rev > 0)
      watch_tell(s, rev);
    int64_t until = c != NULL ? check_at : retry_at;
    int timeout = (int)(until - mono_ms());
    struct pollfd fds[2] = {{.fd = s->watch_stop[0], .events = POLLIN},
                            {.fd = c != NULL ? PQsocket(c->db) : -1, .events = POLLIN}};
    if (poll(fds, 2, timeout < 0 ? 0 : timeout) < 0 && errno != EINTR)
      break;
    if (fds[0].revents != 0)
      break;
    if (c != NULL && fds[1].revents != 0 && !PQconsumeInput(c->db)) {
      db_fail(&err, c, "watch");
      watch_status(s, err.msg);
      lost = 1;
      conn_close(c);
      c = NULL;
      retry_at = mono_ms() + WATCH_RETRY_MS;
    }
  }
  conn_close(c);
  return NULL;
}

static int pg_watch_start(struct store *base, struct tp_err *err) {
  struct pg_store *s = to_store(base);
  if (pipe2(s->watch_stop, O_CLOEXEC) != 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: watch: pipe: %s", strerror(errno));
    return -EIO;
  }
  s->watch_told = store_revision(base);
  int rc = pthread_create(&s->watcher, NULL, watch_main, s);
  if (rc != 0) {
    close(s->watch_stop[0]);
    close(s->watch_stop[1]);
    tp_err_set(err, GRPC_STATUS_INTERNAL, "store: watch: cannot start its thread: %s",
               strerror(rc));
    return -EIO;
  }
  return 0;
}

static void pg_watch_stop(struct store *base) {
  struct pg_store *s = to_store(base);
  char byte = 1;
  while (write(s->watch_stop[1], &byte, 1) < 0 && errno == EINTR)
    ;
  pthread_join(s->watcher, NULL);
  close(s->watch_stop[0]);
  close(s->watch_stop[1]);
}

/* --- the job lock --- */

static int pg_job_lock(struct store *base, struct tp_err *err) {
  struct pg_store *s = to_store(base);
  pthread_mutex_lock(&s->job_lock);
  int rc = 0;
  if (s->job_conn == NULL && conn_open(s, &s->job_conn, err) < 0)
    rc = -EIO;
  PGresult *res = NULL;
  if (rc == 0)
    res = q_rows(s->job_conn,
                 s->job_held ? "SELECT 1" : "SELECT pg_try_advisory_lock(" JOB_LOCK_KEY ")::int",
                 "the job lock", err, "");
  if (rc == 0 && res == NULL) {
    /* The session, and the lock with it, is gone (or going): a new
     * connection tries again at the next call. */
    conn_close(s->job_conn);
    s->job_conn = NULL;
    s->job_held = 0;
    rc = -EIO;
  } else if (rc == 0) {
    s->job_held = PQntuples(res) == 1 && col_int(res, 0, 0) == 1;
    rc = s->job_held;
  }
  PQclear(res);
  pthread_mutex_unlock(&s->job_lock);
  return rc;
}

const struct store_ops store__postgres_ops = {
    .name = "postgres",
    .latest_version = N_MIGRATIONS,
    .open = pg_open,
    .close = pg_close,
    .backup = pg_backup,
    .begin = pg_begin,
    .commit = pg_commit,
    .rollback = pg_rollback,
    .get = pg_get,
    .row_head = row_head,
    .row_exists = row_exists,
    .row_write = row_write,
    .labels_write = labels_write,
    .refs_write = refs_write,
    .referrer_first = referrer_first,
    .row_delete = row_delete,
    .audit_insert = audit_insert,
    .list = pg_list,
    .referrers = pg_referrers,
    .audit_list = pg_audit_list,
    .secrets_rewrite = pg_secrets_rewrite,
    .sealed_key_ids = pg_sealed_key_ids,
    .rotation_lock = pg_rotation_lock,
    .rotation_unlock = pg_rotation_unlock,
    .usage_set = pg_usage_set,
    .usage_get = pg_usage_get,
    .challenges_set = pg_challenges_set,
    .challenges_list = pg_challenges_list,
    .mac_set = pg_mac_set,
    .macs_rewrite = pg_macs_rewrite,
    .watch_start = pg_watch_start,
    .watch_stop = pg_watch_stop,
    .job_lock = pg_job_lock,
};
