/* The data directory: its lock, the master key, the CA, the server's
 * certificate and the admin credentials (datadir.h says what and why). */
#include "datadir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "ca.h"
#include "certinfo.h"
#include "log.h"

#define SERVER_CERT_VALIDITY_S (397LL * 24 * 3600)
#define SERVER_CERT_RENEW_S (30LL * 24 * 3600) /* reissued at start with less left */
#define ADMIN_CERT_VALIDITY_S (365LL * 24 * 3600)
#define SANS_MAX 64
#define FILE_MAX (1024 * 1024)
#define KEY_B64_LEN 44 /* base64 of 32 bytes */

static const char *const default_sans[] = {"localhost", "127.0.0.1", "::1"};

struct datadir {
  char *dir;
  int fd; /* the directory, flock'ed; fsync'ed after renames */
  uint8_t master_key[STORE_MASTER_KEY_LEN];
  int key_from_env; /* TLSPLANE_MASTER_KEY: no master.key file */
  int key_made;     /* made now: master.key is written once the store opened */
  int pending;      /* master.key.new: a rotation to finish */
  uint8_t pending_key[STORE_MASTER_KEY_LEN];
  struct ca *ca;
  int fresh;   /* the CA was made now: the first start */
  int discard; /* init --force: the store was moved aside; make the admin's credentials anew */
  char *server_cert_pem;
  char *server_key_pem;
  int server_made; /* server.pem / server-key.pem to write */
  const char *sans[SANS_MAX];
  size_t n_sans;
  char *store; /* datadir_opts.store (may hold a password); NULL: tlsplane.db */
};

static int oom(struct tp_err *err) {
  return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
}

static void path_of(char *buf, size_t len, const char *dir, const char *name) {
  snprintf(buf, len, "%s/%s", dir, name);
}

static int exists(const char *dir, const char *name) {
  char path[PATH_MAX];
  path_of(path, sizeof(path), dir, name);
  return access(path, F_OK) == 0;
}

/* The store's files: the database and what SQLite keeps beside it. */
static const char *const store_files[] = {"tlsplane.db", "tlsplane.db-wal", "tlsplane.db-shm",
                                          "tlsplane.db-journal"};
#define N_STORE_FILES (sizeof(store_files) / sizeof(store_files[0]))

/* Narrows the mode of the open file or directory fd (path, for the log)
 * to `mode` when group or others have any access, and says so. */
static int mode_tighten(int fd, const char *path, mode_t mode, struct tp_err *err) {
  struct stat st;
  if (fstat(fd, &st) != 0)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "%s: %s", path, strerror(errno));
  if ((st.st_mode & 077) == 0)
    return 0;
  if (fchmod(fd, mode) != 0)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "%s: mode %03o lets group or others in, and it cannot be changed to %03o: %s",
                      path, (unsigned)(st.st_mode & 0777), (unsigned)mode, strerror(errno));
  log_warn("datadir", "%s had mode 0%03o (group or others had access): changed to 0%03o", path,
           (unsigned)(st.st_mode & 0777), (unsigned)mode);
  return 0;
}

/* Every store file of dir that exists gets mode 0600 (SQLite gives the
 * files it creates the database's mode). */
static int store_files_tighten(const char *dir, struct tp_err *err) {
  for (size_t i = 0; i < N_STORE_FILES; i++) {
    char path[PATH_MAX];
    path_of(path, sizeof(path), dir, store_files[i]);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT)
        continue;
      return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s: %s", path, strerror(errno));
    }
    int rc = mode_tighten(fd, path, 0600, err);
    close(fd);
    if (rc != 0)
      return -1;
  }
  return 0;
}

/* A file that holds a secret in the clear must be its owner's alone:
 * refused, not narrowed, since its content may have been read. */
static int secret_mode_check(const char *path, const struct stat *st, struct tp_err *err) {
  if ((st->st_mode & 077) == 0)
    return 0;
  return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                    "%s: mode %03o; it holds a secret and must be readable by its owner only "
                    "(chmod 600 %s)",
                    path, (unsigned)(st->st_mode & 0777), path);
}

/* The secret files the server writes but does not read at start (the
 * admin's credentials) are held to the same rule as those it reads. */
static int admin_files_check(const char *dir, struct tp_err *err) {
  static const char *const names[] = {"admin.token", "admin-key.pem"};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    char path[PATH_MAX];
    struct stat st;
    path_of(path, sizeof(path), dir, names[i]);
    if (stat(path, &st) == 0 && secret_mode_check(path, &st, err) != 0)
      return -1;
  }
  return 0;
}

/* Reads dir/name whole (NUL-terminated, malloc'd; the caller wipes secrets
 * and frees). secret: refused unless only its owner may read it. */
static int file_read(const char *dir, const char *name, int secret, char **out,
                     struct tp_err *err) {
  char path[PATH_MAX];
  path_of(path, sizeof(path), dir, name);
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > FILE_MAX) {
    close(fd);
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "%s: not a regular file of at most %d bytes", path, FILE_MAX);
  }
  if (secret && secret_mode_check(path, &st, err) != 0) {
    close(fd);
    return -1;
  }
  char *buf = malloc((size_t)st.st_size + 1);
  if (buf == NULL) {
    close(fd);
    return oom(err);
  }
  size_t got = 0;
  while (got < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
    if (n <= 0) {
      if (n < 0 && errno == EINTR)
        continue;
      break;
    }
    got += (size_t)n;
  }
  close(fd);
  buf[got] = '\0';
  *out = buf;
  return 0;
}

static void secret_free(char *s) {
  if (s != NULL) {
    OPENSSL_cleanse(s, strlen(s));
    free(s);
  }
}

/* Writes dir/name whole: a temporary file with the final mode, fsync,
 * rename over name, fsync of the directory (dirfd). */
static int file_write(int dirfd, const char *dir, const char *name, const char *data, mode_t mode,
                      struct tp_err *err) {
  char tmp[PATH_MAX], path[PATH_MAX], tmpname[256];
  snprintf(tmpname, sizeof(tmpname), ".%s.tmp", name);
  path_of(tmp, sizeof(tmp), dir, tmpname);
  path_of(path, sizeof(path), dir, name);
  unlink(tmp); /* left by a crash */
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "%s: %s", tmp, strerror(errno));
  size_t len = strlen(data), done = 0;
  int rc = fchmod(fd, mode); /* not narrowed or widened by the umask */
  while (rc == 0 && done < len) {
    ssize_t n = write(fd, data + done, len - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      rc = -1;
      break;
    }
    done += (size_t)n;
  }
  if (rc == 0)
    rc = fsync(fd);
  int saved = errno;
  close(fd);
  if (rc == 0 && rename(tmp, path) != 0) {
    rc = -1;
    saved = errno;
  }
  if (rc != 0) {
    unlink(tmp);
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "writing %s: %s", path, strerror(saved));
  }
  if (fsync(dirfd) != 0)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "%s: fsync: %s", dir, strerror(errno));
  return 0;
}

/* base64 of a master key, NUL-terminated, with a newline. */
static void key_encode(const uint8_t key[STORE_MASTER_KEY_LEN], char out[KEY_B64_LEN + 2]) {
  EVP_EncodeBlock((unsigned char *)out, key, STORE_MASTER_KEY_LEN);
  out[KEY_B64_LEN] = '\n';
  out[KEY_B64_LEN + 1] = '\0';
}

/* The key in text (base64 of 32 bytes; surrounding white space ignored). */
static int key_decode(const char *text, const char *what, uint8_t key[STORE_MASTER_KEY_LEN],
                      struct tp_err *err) {
  while (*text == ' ' || *text == '\t' || *text == '\n' || *text == '\r')
    text++;
  size_t n = strlen(text);
  while (n > 0 &&
         (text[n - 1] == ' ' || text[n - 1] == '\t' || text[n - 1] == '\n' || text[n - 1] == '\r'))
    n--;
  unsigned char buf[KEY_B64_LEN];
  int ok =
      n == KEY_B64_LEN && text[KEY_B64_LEN - 1] == '=' && text[KEY_B64_LEN - 2] != '=' &&
      EVP_DecodeBlock(buf, (const unsigned char *)text, KEY_B64_LEN) == STORE_MASTER_KEY_LEN + 1;
  if (ok)
    memcpy(key, buf, STORE_MASTER_KEY_LEN);
  OPENSSL_cleanse(buf, sizeof(buf));
  if (!ok)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "%s: not a master key (the base64 of 32 bytes: openssl rand -base64 32)",
                      what);
  return 0;
}

static int key_read(const char *dir, const char *name, uint8_t key[STORE_MASTER_KEY_LEN],
                    struct tp_err *err) {
  char *text;
  if (file_read(dir, name, 1, &text, err) != 0)
    return -1;
  char what[PATH_MAX];
  path_of(what, sizeof(what), dir, name);
  int rc = key_decode(text, what, key, err);
  secret_free(text);
  return rc;
}

static int key_write(int dirfd, const char *dir, const char *name,
                     const uint8_t key[STORE_MASTER_KEY_LEN], struct tp_err *err) {
  char text[KEY_B64_LEN + 2];
  key_encode(key, text);
  int rc = file_write(dirfd, dir, name, text, 0600, err);
  OPENSSL_cleanse(text, sizeof(text));
  return rc;
}

/* Creates (0700) and locks dir. Returns the directory's fd. */
static int dir_lock(const char *dir, int create, struct tp_err *err) {
  if (create && mkdir(dir, 0700) != 0 && errno != EEXIST)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "data directory %s: %s", dir, strerror(errno));
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "data directory %s: %s", dir,
                      strerror(errno));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    close(fd);
    if (e == EWOULDBLOCK)
      return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                        "data directory %s is in use by another tlsplane-server (or "
                        "rotate-master-key, or init)",
                        dir);
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "data directory %s: lock: %s", dir, strerror(e));
  }
  /* Whoever may enter the directory may replace or remove what is in it. */
  if (mode_tighten(fd, dir, 0700, err) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* The master key: TLSPLANE_MASTER_KEY, else master.key, else a new one
 * (written by datadir_store_open); and master.key.new, a rotation to
 * finish. */
static int master_key_load(struct datadir *dd, struct tp_err *err) {
  const char *env = getenv("TLSPLANE_MASTER_KEY");
  if (env != NULL && env[0] != '\0') {
    dd->key_from_env = 1;
    return key_decode(env, "TLSPLANE_MASTER_KEY", dd->master_key, err);
  }
  if (exists(dd->dir, "master.key.new")) {
    if (key_read(dd->dir, "master.key.new", dd->pending_key, err) != 0)
      return -1;
    dd->pending = 1;
  }
  if (exists(dd->dir, "master.key"))
    return key_read(dd->dir, "master.key", dd->master_key, err);
  if (dd->pending) /* renamed already: the new key is the key */
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "%s: master.key.new without master.key; restore master.key", dd->dir);
  if (RAND_bytes(dd->master_key, STORE_MASTER_KEY_LEN) != 1)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "no random bytes for a master key");
  dd->key_made = 1;
  return 0;
}

static int ca_load_or_make(struct datadir *dd, struct tp_err *err) {
  if (!exists(dd->dir, "ca.pem")) {
    dd->fresh = 1;
    return ca_new(&dd->ca, err);
  }
  char *cert = NULL, *key = NULL;
  int rc = file_read(dd->dir, "ca.pem", 0, &cert, err);
  if (rc == 0)
    rc = file_read(dd->dir, "ca-key.pem", 1, &key, err);
  if (rc == 0)
    rc = ca_load(cert, key, &dd->ca, err);
  free(cert);
  secret_free(key);
  return rc;
}

/* Keeps server.pem when the CA signed it, it has more than
 * SERVER_CERT_RENEW_S left, its SANs are the ones asked for and the key
 * matches; else issues a new key and certificate. */
static int server_cert_load_or_make(struct datadir *dd, struct tp_err *err) {
  if (!dd->fresh && exists(dd->dir, "server.pem") && exists(dd->dir, "server-key.pem")) {
    char *cert = NULL, *key = NULL;
    STACK_OF(X509) *certs = NULL;
    EVP_PKEY *pkey = NULL;
    struct tp_err ignored = {0};
    if (file_read(dd->dir, "server-key.pem", 1, &key, err) != 0)
      return -1;
    int keep = file_read(dd->dir, "server.pem", 0, &cert, &ignored) == 0 &&
               certinfo_certs_read(cert, strlen(cert), "server.pem", &certs, &ignored) == 0 &&
               certinfo_key_read(key, strlen(key), NULL, "server-key.pem", &pkey, &ignored) == 0 &&
               X509_check_private_key(sk_X509_value(certs, 0), pkey) == 1 &&
               ca_cert_current(dd->ca, sk_X509_value(certs, 0), dd->sans, dd->n_sans, time(NULL),
                               SERVER_CERT_RENEW_S);
    certinfo_certs_free(certs);
    EVP_PKEY_free(pkey);
    if (keep) {
      dd->server_cert_pem = cert;
      dd->server_key_pem = key;
      return 0;
    }
    free(cert);
    secret_free(key);
    log_info("datadir", "server.pem: missing, expiring, or not for these names: a new one");
  }
  EVP_PKEY *pkey = ca_key_new();
  if (pkey == NULL)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "no key for the server certificate");
  struct ca_issue_opts o = {.cn = "tlsplane-server",
                            .ou = NULL,
                            .server = 1,
                            .sans = dd->sans,
                            .n_sans = dd->n_sans,
                            .validity_s = SERVER_CERT_VALIDITY_S};
  X509 *x = NULL;
  int rc = ca_issue(dd->ca, pkey, &o, &x, err);
  if (rc == 0) {
    dd->server_cert_pem = ca_cert_to_pem(x);
    dd->server_key_pem = certinfo_key_pem(pkey);
    if (dd->server_cert_pem == NULL || dd->server_key_pem == NULL)
      rc = oom(err);
  }
  X509_free(x);
  EVP_PKEY_free(pkey);
  dd->server_made = 1;
  return rc;
}

int datadir_open(const struct datadir_opts *opts, struct datadir **out, struct tp_err *err) {
  *out = NULL;
  struct datadir *dd = calloc(1, sizeof(*dd));
  if (dd == NULL)
    return oom(err);
  dd->fd = -1;
  if ((dd->dir = strdup(opts->dir)) == NULL) {
    free(dd);
    return oom(err);
  }
  if (opts->store != NULL && (dd->store = strdup(opts->store)) == NULL) {
    datadir_close(dd);
    return oom(err);
  }
  for (size_t i = 0; i < sizeof(default_sans) / sizeof(default_sans[0]); i++)
    dd->sans[dd->n_sans++] = default_sans[i];
  for (size_t i = 0; i < opts->n_sans; i++) {
    int dup = 0;
    for (size_t j = 0; j < dd->n_sans; j++)
      dup |= strcmp(dd->sans[j], opts->sans[i]) == 0;
    if (dup)
      continue;
    if (dd->n_sans == SANS_MAX) {
      datadir_close(dd);
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "--san: at most %d names", SANS_MAX - 3);
    }
    dd->sans[dd->n_sans++] = opts->sans[i];
  }
  int rc = dd->fd = dir_lock(dd->dir, 1, err);
  if (rc >= 0)
    rc = admin_files_check(dd->dir, err);
  if (rc == 0)
    rc = master_key_load(dd, err);
  if (rc == 0)
    rc = ca_load_or_make(dd, err);
  if (rc == 0 && !opts->init)
    rc = server_cert_load_or_make(dd, err);
  if (rc != 0) {
    datadir_close(dd);
    return -1;
  }
  *out = dd;
  return 0;
}

/* Re-seals every secret of s under the pending key, then installs it as
 * master.key (the rename is the commit point of the rotation as a whole).
 * store_master_key_rotate's refusals keep their code (-EBUSY: another
 * server runs, nothing changed). */
static int rotation_finish(int dirfd, const char *dir, struct store *s,
                           const uint8_t new_key[STORE_MASTER_KEY_LEN], const char *actor,
                           size_t *n, struct tp_err *err) {
  int rc = store_master_key_rotate(s, new_key, actor, n, err);
  if (rc != 0)
    return rc;
  char from[PATH_MAX], to[PATH_MAX];
  path_of(from, sizeof(from), dir, "master.key.new");
  path_of(to, sizeof(to), dir, "master.key");
  if (rename(from, to) != 0 || fsync(dirfd) != 0)
    return tp_err_set(err, GRPC_STATUS_INTERNAL,
                      "%s: the secrets are sealed under master.key.new, but it cannot replace "
                      "master.key (%s); rename it by hand",
                      dir, strerror(errno));
  return 0;
}

/* Every refusal to use the store at start, worded in one place: what was
 * found (found: a phrase after "data directory DIR"), what was expected,
 * and the way back, chosen by what refused it:
 *   -ENOENT   the store of an initialised directory is gone (lost)
 *   -ENODATA  not a tlsplane database (foreign or hand-made)
 *   -EPROTO   an older schema than the directory has run (floor: which)
 *   -ENOTSUP  a newer schema than this build knows
 *   -ENOKEY   sealed under a master key that is not here
 * Returns -1. */
static int store_refused(const char *dir, const char *store, int rc, int floor, const char *found,
                         struct tp_err *err) {
  char restore[640], db[1024] = "tlsplane.db";
  if (store != NULL) {
    /* The operator's database: restored with pg_restore, or dropped and
     * created empty (an empty database is initialised like a new file). */
    store_path_display(store, db, sizeof(db));
    snprintf(restore, sizeof(restore),
             "Restore the database from a dump (pg_dump%s; docs/ha.md), or start over with "
             "tlsplane-server init on an empty database and a new data directory (a new CA and "
             "master key; every resource, token and agent certificate record is lost)",
             rc == -EPROTO ? " taken by this version of tlsplane-server" : "");
  } else {
    snprintf(restore, sizeof(restore),
             "Restore tlsplane.db from a backup (tlsplane-server backup; docs/operations.md)%s, "
             "or start over with: tlsplane-server init --force --data-dir %s (keeps the CA and "
             "the master key, discards the store, makes new admin credentials)",
             rc == -EPROTO ? " taken by this version of tlsplane-server" : "", dir);
  }
  char text[sizeof(err->msg)];
  snprintf(text, sizeof(text), "%s", found);
  switch (rc) {
  case -ENOENT:
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "data directory %s was initialised (ca.pem is there) but its database "
                      "%s %s: every resource, token and agent certificate record is "
                      "gone. %s",
                      dir, db, text, restore);
  case -ENODATA:
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "data directory %s: %s is refused, not adopted: %s; expected a "
                      "database this server made. %s",
                      dir, db, text, restore);
  case -EPROTO:
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "data directory %s: %s is refused: %s; expected schema version %d "
                      "or later (schema-version: the highest this directory has run). %s",
                      dir, db, text, floor, restore);
  case -ENOTSUP:
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "data directory %s: %s. Run the tlsplane-server that last ran here, or a "
                      "later one (this one knows schema versions up to %d)",
                      dir, text, store_schema_latest());
  case -ENOKEY:
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "data directory %s: %s. Put back the master key that sealed it (master.key "
                      "or TLSPLANE_MASTER_KEY; a backup's backup.json names it by id)",
                      dir, text);
  default:
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "data directory %s: %s", dir, text);
  }
}

#define SCHEMA_FLOOR "schema-version"
#define SCHEMA_FLOOR_MAX 9999

/* The schema floor: the highest schema version this directory's store has
 * run, kept outside the database (schema-version) so that an older copy
 * put in the database's place is refused (store_opts.min_version). 0 when
 * the file is not there (a new directory, or one from before the file). */
static int schema_floor_read(const char *dir, int *floor, struct tp_err *err) {
  *floor = 0;
  if (!exists(dir, SCHEMA_FLOOR))
    return 0;
  char *text = NULL;
  if (file_read(dir, SCHEMA_FLOOR, 0, &text, err) != 0)
    return -1;
  long v = 0;
  size_t i = 0;
  while (text[i] >= '0' && text[i] <= '9' && v <= SCHEMA_FLOOR_MAX)
    v = v * 10 + (text[i++] - '0');
  int ok =
      i > 0 && v >= 1 && v <= SCHEMA_FLOOR_MAX && (text[i] == '\0' || strcmp(text + i, "\n") == 0);
  free(text);
  if (!ok)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "%s/%s: not a schema version (one number, as tlsplane-server writes it: the "
                      "highest schema version this directory has run)",
                      dir, SCHEMA_FLOOR);
  *floor = (int)v;
  return 0;
}

/* Raises schema-version to the schema of the open store s (never lowers
 * it): called after every open, which is when the store migrates. */
static int schema_floor_raise(int dirfd, const char *dir, int floor, struct store *s,
                              struct tp_err *err) {
  int v = store_schema_version(s);
  if (v <= floor)
    return 0;
  char text[16];
  snprintf(text, sizeof(text), "%d\n", v);
  if (file_write(dirfd, dir, SCHEMA_FLOOR, text, 0600, err) != 0)
    return -1;
  if (floor > 0)
    log_info("datadir", "%s/%s: raised from %d to %d", dir, SCHEMA_FLOOR, floor, v);
  return 0;
}

/* Opens dir's database (store: a postgres:// URI; NULL: tlsplane.db) at
 * the latest schema, refusing one below floor, then raises the floor to
 * what it opened. Refusals are store_refused's. */
static int store_open_floored(int dirfd, const char *dir, const char *store,
                              const struct store_opts *o, int floor, struct store **out,
                              struct tp_err *err) {
  char db[PATH_MAX];
  path_of(db, sizeof(db), dir, "tlsplane.db");
  struct store_opts with_floor = *o;
  with_floor.min_version = floor;
  int rc = store_open(store != NULL ? store : db, &with_floor, out, err);
  if (rc == -ENODATA || rc == -EPROTO || rc == -ENOTSUP || rc == -ENOKEY)
    store_refused(dir, store, rc, floor, err->msg, err);
  if (rc != 0)
    return rc;
  if (schema_floor_raise(dirfd, dir, floor, *out, err) != 0) {
    store_close(*out);
    *out = NULL;
    return -EIO;
  }
  return 0;
}

int datadir_initialised(const struct datadir *dd) {
  return !dd->fresh;
}

int datadir_store_open(struct datadir *dd, struct store **out, struct tp_err *err) {
  char db[PATH_MAX], key_path[PATH_MAX];
  int floor;
  path_of(db, sizeof(db), dd->dir, "tlsplane.db");
  path_of(key_path, sizeof(key_path), dd->dir, "master.key");
  *out = NULL;
  /* ca.pem is the last file the first start writes: from then on the
   * store holds the admin's credentials and everything else, and a
   * database that is not there was lost, not yet to be made. Refused
   * before anything is created or written. */
  int initialised = !dd->fresh && !dd->discard;
  struct stat st;
  if (dd->store != NULL) {
    /* PostgreSQL: no file to find, narrow or size; an empty database is
     * told by its revision below. */
  } else if (stat(db, &st) != 0) {
    if (errno != ENOENT)
      return tp_err_set(err, GRPC_STATUS_INTERNAL, "%s: %s", db, strerror(errno));
    if (initialised)
      return store_refused(dd->dir, NULL, -ENOENT, 0, "is missing", err);
  } else if (initialised && st.st_size == 0) {
    return store_refused(dd->dir, NULL, -ENOENT, 0, "is empty (0 bytes)", err);
  }
  if (schema_floor_read(dd->dir, &floor, err) != 0)
    return -1;
  if (dd->store == NULL && store_files_tighten(dd->dir, err) != 0)
    return -1;
  /* A new key is on disk before anything is sealed under it: opening a
   * database of an older schema seals its secrets at once (migration 3). */
  if (dd->key_made && key_write(dd->fd, dd->dir, "master.key", dd->master_key, err) != 0)
    return -1;
  uint8_t keys[2][STORE_MASTER_KEY_LEN];
  memcpy(keys[0], dd->master_key, STORE_MASTER_KEY_LEN);
  if (dd->pending)
    memcpy(keys[1], dd->pending_key, STORE_MASTER_KEY_LEN);
  struct store_opts o = {.master_keys = (const uint8_t(*)[STORE_MASTER_KEY_LEN])keys,
                         .n_master_keys = dd->pending ? 2 : 1};
  int rc = store_open_floored(dd->fd, dd->dir, dd->store, &o, floor, out, err);
  OPENSSL_cleanse(keys, sizeof(keys));
  if (dd->key_made && (rc == -ENOKEY || rc == -ENODATA || rc == -EPROTO || rc == -ENOTSUP)) {
    /* Refused before anything was sealed under the new key (or sealed
     * under a key that is not here): it must not stay to be mistaken for
     * the right one. */
    unlink(key_path);
    fsync(dd->fd);
    if (rc == -ENOKEY)
      tp_err_prefix(err, "master.key is missing and a new key does not open the database: ");
  }
  if (rc != 0)
    return -1;
  dd->key_made = 0;
  if (initialised && store_revision(*out) == 0) {
    /* A database file without a single commit (say, replaced by an
     * empty SQLite file): lost as surely. */
    store_close(*out);
    *out = NULL;
    return store_refused(dd->dir, dd->store, -ENOENT, 0, "holds no data (revision 0)", err);
  }
  if (dd->pending) {
    char id[2 * STORE_KEY_ID_LEN + 1];
    store_master_key_id_hex(dd->pending_key, id);
    log_warn("datadir", "finishing an interrupted master-key rotation to key %s", id);
    size_t n = 0;
    if (rotation_finish(dd->fd, dd->dir, *out, dd->pending_key,
                        "tlsplane-server (finishing rotate-master-key)", &n, err) != 0) {
      store_close(*out);
      *out = NULL;
      return -1;
    }
    memcpy(dd->master_key, dd->pending_key, STORE_MASTER_KEY_LEN);
    OPENSSL_cleanse(dd->pending_key, STORE_MASTER_KEY_LEN);
    dd->pending = 0;
    log_info("datadir", "master-key rotation finished: %zu secrets sealed under key %s", n, id);
  }
  return 0;
}

int datadir_store_discard(struct datadir *dd, char *moved, size_t len, struct tp_err *err) {
  moved[0] = '\0';
  if (dd->store != NULL)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "init --force discards tlsplane.db, and the store is a PostgreSQL "
                      "database (--store): drop and create the database instead (pg_dump "
                      "first), then run init without --force");
  char stamp[32], base[96];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
  snprintf(base, sizeof(base), "tlsplane.db.discarded-%s", stamp);
  int any = 0;
  for (size_t i = 0; i < N_STORE_FILES; i++) {
    char from[PATH_MAX], to[PATH_MAX], name[128];
    path_of(from, sizeof(from), dd->dir, store_files[i]);
    struct stat st;
    if (lstat(from, &st) != 0)
      continue;
    if (S_ISREG(st.st_mode) && st.st_size == 0) {
      unlink(from); /* nothing in it to keep */
      continue;
    }
    /* tlsplane.db-wal -> <base>-wal: the set stays openable together. */
    snprintf(name, sizeof(name), "%s%s", base, store_files[i] + strlen("tlsplane.db"));
    path_of(to, sizeof(to), dd->dir, name);
    if (rename(from, to) != 0)
      return tp_err_set(err, GRPC_STATUS_INTERNAL, "moving %s aside: %s", from, strerror(errno));
    any = 1;
  }
  if (fsync(dd->fd) != 0)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "%s: fsync: %s", dd->dir, strerror(errno));
  if (any)
    snprintf(moved, len, "%s", base);
  dd->discard = 1;
  return 0;
}

/* The first start's admin credentials: tokens/admin and a client
 * certificate, recorded in one transaction. */
static int admin_make(struct api *api, char **token, char **cert_pem, char **key_pem,
                      struct tp_err *err) {
  const struct rpc_call_info call = {.method = "tlsplane-server (first start)",
                                     .peer = "local",
                                     .actor = "tlsplane-server",
                                     .role = AUTH_ROLE_ADMIN,
                                     .principal = ""};
  Tlsplane__V1__Token t = TLSPLANE__V1__TOKEN__INIT;
  t.role = TLSPLANE__V1__ROLE__ADMIN;
  t.description = "the admin token made on the first start (admin.token)";
  EVP_PKEY *key = ca_key_new();
  if (key == NULL)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "no key for the admin certificate");
  struct store_txn *txn;
  Tlsplane__V1__ClientCertificate *c = NULL;
  int rc = store_begin(api->store, 1, &txn, err);
  if (rc == 0) {
    /* replace: a first start that stopped before ca.pem left one. */
    rc = api_token_create(api, txn, &call, "admin", &t, 1, token, NULL, err);
    if (rc == 0)
      rc = api_client_cert_issue(api, txn, &call, key, AUTH_ROLE_ADMIN, "admin",
                                 ADMIN_CERT_VALIDITY_S, &c, err);
    if (rc == 0)
      rc = store_commit(txn, NULL, err);
    else
      store_rollback(txn);
  }
  if (rc == 0) {
    *cert_pem = strdup(c->certificate_pem);
    *key_pem = certinfo_key_pem(key);
    if (*cert_pem == NULL || *key_pem == NULL)
      rc = oom(err);
  }
  if (c != NULL)
    protobuf_c_message_free_unpacked(&c->base, NULL);
  EVP_PKEY_free(key);
  return rc;
}

int datadir_init(struct datadir *dd, struct api *api, struct tp_err *err) {
  char *token = NULL, *admin_cert = NULL, *admin_key = NULL, *ca_key = NULL, *token_line = NULL;
  int rc = 0;
  if (dd->fresh || dd->discard) {
    rc = admin_make(api, &token, &admin_cert, &admin_key, err);
    if (rc == 0 && (token_line = malloc(strlen(token) + 2)) == NULL)
      rc = oom(err);
    if (rc == 0) {
      sprintf(token_line, "%s\n", token);
      rc = file_write(dd->fd, dd->dir, "admin.token", token_line, 0600, err);
    }
    if (rc == 0)
      rc = file_write(dd->fd, dd->dir, "admin-key.pem", admin_key, 0600, err);
    if (rc == 0)
      rc = file_write(dd->fd, dd->dir, "admin.pem", admin_cert, 0600, err);
  }
  if (rc == 0 && dd->server_made) {
    rc = file_write(dd->fd, dd->dir, "server-key.pem", dd->server_key_pem, 0600, err);
    if (rc == 0)
      rc = file_write(dd->fd, dd->dir, "server.pem", dd->server_cert_pem, 0644, err);
    if (rc == 0)
      dd->server_made = 0;
  }
  if (rc == 0 && dd->fresh) {
    /* ca.pem last: its presence says the first start completed. */
    if ((ca_key = ca_key_pem(dd->ca)) == NULL)
      rc = oom(err);
    if (rc == 0)
      rc = file_write(dd->fd, dd->dir, "ca-key.pem", ca_key, 0600, err);
    if (rc == 0)
      rc = file_write(dd->fd, dd->dir, "ca.pem", ca_cert_pem(dd->ca), 0644, err);
    if (rc == 0)
      log_info("datadir",
               "first start: made the control-plane CA, %sthe admin credentials (admin.token, "
               "admin.pem) in %s",
               dd->server_cert_pem != NULL ? "the server certificate and " : "", dd->dir);
  }
  secret_free(token);
  secret_free(token_line);
  secret_free(admin_key);
  secret_free(ca_key);
  free(admin_cert);
  return rc;
}

struct ca *datadir_ca(struct datadir *dd) {
  return dd->ca;
}

const char *datadir_server_cert_pem(const struct datadir *dd) {
  return dd->server_cert_pem;
}

const char *datadir_server_key_pem(const struct datadir *dd) {
  return dd->server_key_pem;
}

void datadir_close(struct datadir *dd) {
  if (dd == NULL)
    return;
  OPENSSL_cleanse(dd->master_key, sizeof(dd->master_key));
  OPENSSL_cleanse(dd->pending_key, sizeof(dd->pending_key));
  ca_free(dd->ca);
  free(dd->server_cert_pem);
  secret_free(dd->server_key_pem);
  if (dd->fd >= 0)
    close(dd->fd); /* releases the lock */
  free(dd->dir);
  secret_free(dd->store);
  free(dd);
}

/* The data directory's files a restore needs besides the database, each
 * with its mode in the backup. Not master.key: see datadir_backup. */
static const struct {
  const char *name;
  mode_t mode;
  int secret;
} backup_files[] = {
    {"ca.pem", 0644, 0},    {"ca-key.pem", 0600, 1},    {"admin.token", 0600, 1},
    {"admin.pem", 0600, 0}, {"admin-key.pem", 0600, 1},
};

/* SHA-256 of dir/name as lowercase hex (65 bytes). */
static int file_sha256(const char *dir, const char *name, char hex[65], struct tp_err *err) {
  char path[PATH_MAX];
  path_of(path, sizeof(path), dir, name);
  FILE *fp = fopen(path, "rb");
  if (fp == NULL)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "%s: %s", path, strerror(errno));
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
  unsigned char buf[65536], digest[EVP_MAX_MD_SIZE];
  size_t n;
  while (ok && (n = fread(buf, 1, sizeof(buf), fp)) > 0)
    ok = EVP_DigestUpdate(md, buf, n) == 1;
  unsigned int dlen = 0;
  ok = ok && !ferror(fp) && EVP_DigestFinal_ex(md, digest, &dlen) == 1 && dlen == 32;
  EVP_MD_CTX_free(md);
  fclose(fp);
  OPENSSL_cleanse(buf, sizeof(buf));
  if (!ok)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "%s: cannot hash it", path);
  for (unsigned i = 0; i < 32; i++)
    snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  return 0;
}

/* Writes dest/backup.json (what the backup holds and what a restore
 * needs) and dest/SHA256SUMS (sha256sum -c checks the files). */
static int backup_manifest(int fd, const char *dest, const char *dir,
                           const struct store_backup_info *info, const char *const *files,
                           size_t n_files, struct tp_err *err) {
  char sums[4096] = "", created[32];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(created, sizeof(created), "%Y-%m-%dT%H:%M:%SZ", &tm);
  json_t *ids = json_array(), *names = json_array();
  for (size_t i = 0; i < info->n_key_ids; i++)
    json_array_append_new(ids, json_string(info->key_ids[i]));
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < n_files; i++) {
    char hex[65];
    rc = file_sha256(dest, files[i], hex, err);
    size_t used = strlen(sums);
    if (rc == 0)
      snprintf(sums + used, sizeof(sums) - used, "%s  %s\n", hex, files[i]);
    json_array_append_new(names, json_string(files[i]));
  }
  json_t *m = json_pack("{s:i, s:s, s:s, s:I, s:i, s:o, s:o, s:s}", "format", 1, "created", created,
                        "data_dir", dir, "revision", (json_int_t)info->revision, "schema_version",
                        info->schema_version, "master_key_ids", ids, "files", names, "master_key",
                        "not included: restore needs the master key with one of master_key_ids");
  char *text = m ? json_dumps(m, JSON_INDENT(2)) : NULL;
  json_decref(m);
  if (rc == 0 && text == NULL)
    rc = oom(err);
  if (rc == 0) {
    size_t len = strlen(text);
    char *line = malloc(len + 2);
    if (line == NULL) {
      rc = oom(err);
    } else {
      snprintf(line, len + 2, "%s\n", text);
      rc = file_write(fd, dest, "backup.json", line, 0600, err);
      free(line);
    }
  }
  free(text);
  if (rc == 0)
    rc = file_write(fd, dest, "SHA256SUMS", sums, 0600, err);
  return rc;
}

int datadir_backup(const char *dir, const char *store, const char *dest,
                   struct store_backup_info *info, struct tp_err *err) {
  memset(info, 0, sizeof(*info));
  if (store != NULL)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "backup copies tlsplane.db, and the store is a PostgreSQL database "
                      "(--store): use pg_dump (a consistent copy of a live database), and keep "
                      "copies of %s's ca.pem, ca-key.pem, admin.token, admin.pem and admin-key.pem",
                      dir);
  if (!exists(dir, "ca.pem"))
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "%s is not an initialised data directory (no ca.pem)", dir);
  if (exists(dir, "master.key.new"))
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "%s: a master-key rotation is under way (master.key.new): finish it first",
                      dir);
  char db[PATH_MAX], copy[PATH_MAX];
  path_of(db, sizeof(db), dir, "tlsplane.db");
  struct stat st;
  if (stat(db, &st) != 0 || st.st_size == 0)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s: no database to back up (%s)", db,
                      stat(db, &st) != 0 ? strerror(errno) : "0 bytes");
  /* A new directory (or an empty one), private from the start. */
  if (mkdir(dest, 0700) != 0 && errno != EEXIST)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s: %s", dest, strerror(errno));
  int fd = open(dest, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s: %s", dest, strerror(errno));
  DIR *d = fdopendir(dup(fd));
  int empty_dir = d != NULL;
  for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
      empty_dir = 0;
  if (d != NULL)
    closedir(d);
  int rc = 0;
  if (!empty_dir)
    rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                    "%s is not empty: a backup goes into a new directory", dest);
  if (rc == 0)
    rc = mode_tighten(fd, dest, 0700, err);
  path_of(copy, sizeof(copy), dest, "tlsplane.db");
  if (rc == 0 && store_backup(db, copy, info, err) != 0)
    rc = -1;
  const char *files[8];
  size_t n_files = 0;
  if (rc == 0)
    files[n_files++] = "tlsplane.db";
  for (size_t i = 0; rc == 0 && i < sizeof(backup_files) / sizeof(backup_files[0]); i++) {
    if (!exists(dir, backup_files[i].name))
      continue;
    char *text = NULL;
    rc = file_read(dir, backup_files[i].name, backup_files[i].secret, &text, err);
    if (rc == 0)
      rc = file_write(fd, dest, backup_files[i].name, text, backup_files[i].mode, err);
    if (backup_files[i].secret)
      secret_free(text);
    else
      free(text);
    if (rc == 0)
      files[n_files++] = backup_files[i].name;
  }
  if (rc == 0)
    rc = backup_manifest(fd, dest, dir, info, files, n_files, err);
  if (rc == 0 && fsync(fd) != 0)
    rc = tp_err_set(err, GRPC_STATUS_INTERNAL, "%s: fsync: %s", dest, strerror(errno));
  close(fd);
  return rc == 0 ? 0 : -1;
}

int datadir_rotate_master_key(const char *dir, const char *store, char old_id[17], char new_id[17],
                              size_t *n, struct tp_err *err) {
  uint8_t keys[2][STORE_MASTER_KEY_LEN];
  struct store *s = NULL;
  int from_env = 0, made_new = 0;
  *n = 0;
  int fd = dir_lock(dir, 0, err);
  if (fd < 0)
    return -1;
  int rc = store != NULL ? 0 : store_files_tighten(dir, err);
  const char *env = getenv("TLSPLANE_MASTER_KEY");
  if (rc != 0) {
    /* err says why */
  } else if (store == NULL && !exists(dir, "tlsplane.db")) {
    rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s: no tlsplane.db", dir);
  } else if (env != NULL && env[0] != '\0') {
    /* The key lives outside: the operator brings the new one, and sets
     * TLSPLANE_MASTER_KEY to it afterwards. */
    const char *next = getenv("TLSPLANE_NEW_MASTER_KEY");
    from_env = 1;
    rc = key_decode(env, "TLSPLANE_MASTER_KEY", keys[0], err);
    if (rc == 0 && (next == NULL || next[0] == '\0'))
      rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "TLSPLANE_MASTER_KEY gives the master key: give the new one in "
                      "TLSPLANE_NEW_MASTER_KEY (openssl rand -base64 32)");
    if (rc == 0)
      rc = key_decode(next, "TLSPLANE_NEW_MASTER_KEY", keys[1], err);
  } else {
    rc = key_read(dir, "master.key", keys[0], err);
    if (rc == 0 && exists(dir, "master.key.new")) {
      /* An interrupted rotation: finish it with the key already chosen. */
      rc = key_read(dir, "master.key.new", keys[1], err);
    } else if (rc == 0) {
      if (RAND_bytes(keys[1], STORE_MASTER_KEY_LEN) != 1)
        rc = tp_err_set(err, GRPC_STATUS_INTERNAL, "no random bytes for a master key");
      else
        made_new = (rc = key_write(fd, dir, "master.key.new", keys[1], err)) == 0;
    }
  }
  if (rc == 0 && memcmp(keys[0], keys[1], STORE_MASTER_KEY_LEN) == 0)
    rc = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "the new master key is the current one");
  int floor = 0;
  if (rc == 0)
    rc = schema_floor_read(dir, &floor, err);
  if (rc == 0) {
    struct store_opts o = {.master_keys = (const uint8_t(*)[STORE_MASTER_KEY_LEN])keys,
                           .n_master_keys = 2};
    store_master_key_id_hex(keys[0], old_id);
    store_master_key_id_hex(keys[1], new_id);
    rc = store_open_floored(fd, dir, store, &o, floor, &s, err);
  }
  if (rc == 0) {
    if (from_env)
      rc = store_master_key_rotate(s, keys[1], "tlsplane-server rotate-master-key", n, err);
    else
      rc = rotation_finish(fd, dir, s, keys[1], "tlsplane-server rotate-master-key", n, err);
  }
  store_close(s);
  OPENSSL_cleanse(keys, sizeof(keys));
  if (rc == -EBUSY && made_new) {
    /* Refused before anything was sealed under it: the key chosen by this
     * run goes, lest a start take it for an interrupted rotation. */
    char path[PATH_MAX];
    path_of(path, sizeof(path), dir, "master.key.new");
    unlink(path);
    fsync(fd);
  }
  close(fd);
  return rc == 0 ? 0 : -1;
}
