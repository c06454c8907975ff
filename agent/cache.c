/* The cache directory (see cache.h). */
#include "cache.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pb.h"

int cache_dir_prepare(const char *dir, struct tp_err *err) {
  if (mkdir(dir, 0700) != 0 && errno != EEXIST)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s: %s", dir, strerror(errno));
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s: not a directory", dir);
  if (access(dir, W_OK | X_OK) != 0)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s: %s", dir, strerror(errno));
  return 0;
}

static int fsync_dir(const char *dir, struct tp_err *err) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "%s: %s", dir, strerror(errno));
  int rc = fsync(fd);
  int e = errno;
  close(fd);
  if (rc != 0)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "%s: fsync: %s", dir, strerror(e));
  return 0;
}

int cache_file_write(const char *dir, const char *name, const void *data, size_t len, mode_t mode,
                     int tmp_only, struct tp_err *err) {
  char path[4096], tmp[4096];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  /* A fixed temporary name: one writer per cache dir (the agent), and a
   * leftover from a crash is simply overwritten. */
  snprintf(tmp, sizeof(tmp), "%s/%s.new", dir, name);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "%s: %s", tmp, strerror(errno));
  /* The mode of a file that existed already is not changed by open. */
  if (fchmod(fd, mode) != 0)
    goto failed;
  const char *p = data;
  size_t left = len;
  while (left > 0) {
    ssize_t n = write(fd, p, left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      goto failed;
    p += n;
    left -= (size_t)n;
  }
  if (fsync(fd) != 0)
    goto failed;
  if (close(fd) != 0) {
    fd = -1;
    goto failed;
  }
  if (tmp_only)
    return 0;
  return cache_file_commit(dir, name, err);
failed:;
  int e = errno;
  if (fd >= 0)
    close(fd);
  unlink(tmp);
  return tp_err_set(err, GRPC_STATUS_INTERNAL, "%s: %s", tmp, strerror(e));
}

int cache_file_commit(const char *dir, const char *name, struct tp_err *err) {
  char path[4096], tmp[4096];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  snprintf(tmp, sizeof(tmp), "%s/%s.new", dir, name);
  if (rename(tmp, path) != 0)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "rename %s: %s", tmp, strerror(errno));
  return fsync_dir(dir, err);
}

int cache_path_read(const char *path, char **data, size_t *len, struct tp_err *err) {
  *data = NULL;
  *len = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT)
      return 0;
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s: %s", path, strerror(errno));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > CACHE_FILE_MAX) {
    close(fd);
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "%s: not a regular file of at most %u MiB", path, CACHE_FILE_MAX >> 20);
  }
  size_t size = (size_t)st.st_size;
  char *buf = malloc(size + 1);
  if (buf == NULL) {
    close(fd);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s: out of memory", path);
  }
  size_t got = 0;
  while (got < size) {
    ssize_t n = read(fd, buf + got, size - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    got += (size_t)n;
  }
  close(fd);
  if (got != size) {
    cache_wipe_free(buf, size);
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s: short read", path);
  }
  buf[size] = '\0';
  *data = buf;
  *len = size;
  return 1;
}

int cache_file_read(const char *dir, const char *name, char **data, size_t *len,
                    struct tp_err *err) {
  char path[4096];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  return cache_path_read(path, data, len, err);
}

void cache_wipe_free(void *data, size_t len) {
  if (data == NULL)
    return;
  OPENSSL_cleanse(data, len);
  free(data);
}

int cache_state_pack(const struct rset *served, int64_t revision, uint8_t **out, size_t *len) {
  *out = NULL;
  *len = 0;
  struct rset *empty = NULL;
  if (served == NULL && rset_new(&empty) != 0)
    return -1;
  Tlsplane__V1__AgentState *st;
  if (rset_state(served != NULL ? served : empty, revision, &st) != 0) {
    rset_free(empty);
    return -1;
  }
  int rc = pb_pack(&st->base, out, len);
  rset_state_free(st);
  rset_free(empty);
  return rc;
}

int cache_state_write(const char *dir, const void *data, size_t len, struct tp_err *err) {
  if (cache_file_write(dir, CACHE_STATE, data, len, 0600, 0, err) != 0)
    return -1;
  /* The older form is stale now (and holds keys). */
  char path[4096];
  snprintf(path, sizeof(path), "%s/%s", dir, CACHE_SNAPSHOT);
  if (unlink(path) != 0 && errno != ENOENT)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "%s: %s", path, strerror(errno));
  return 0;
}

int cache_state_load(const char *dir, struct rset **out, int64_t *revision, struct tp_err *err) {
  *out = NULL;
  *revision = 0;
  char *data;
  size_t len;
  const char *name = CACHE_STATE;
  int state = 1;
  int rc = cache_file_read(dir, name, &data, &len, err);
  if (rc == 0) {
    name = CACHE_SNAPSHOT;
    state = 0;
    rc = cache_file_read(dir, name, &data, &len, err);
  }
  if (rc <= 0)
    return rc;
  rc = -1;
  if (state) {
    Tlsplane__V1__AgentState *st =
        tlsplane__v1__agent_state__unpack(NULL, len, (const uint8_t *)data);
    if (st == NULL) {
      tp_err_set(err, GRPC_STATUS_DATA_LOSS, "%s/%s: not a tlsplane.v1.AgentState", dir, name);
    } else {
      *revision = st->revision;
      rc = rset_from_state(st, out, err) == 0 ? 1 : -1;
      /* On failure st still holds the keys: wiped before they are freed. */
      for (size_t i = 0; i < st->n_resources; i++) {
        Tlsplane__V1__Resource *r = st->resources[i];
        if (r->content_case == TLSPLANE__V1__RESOURCE__CONTENT_CERTIFICATE &&
            r->certificate != NULL && r->certificate->private_key_pem != NULL)
          OPENSSL_cleanse(r->certificate->private_key_pem, strlen(r->certificate->private_key_pem));
        if (r->content_case == TLSPLANE__V1__RESOURCE__CONTENT_TICKET_KEYS &&
            r->ticket_keys != NULL)
          for (size_t k = 0; k < r->ticket_keys->n_keys; k++)
            OPENSSL_cleanse(r->ticket_keys->keys[k]->key.data, r->ticket_keys->keys[k]->key.len);
        if (r->content_case == TLSPLANE__V1__RESOURCE__CONTENT_ACME_CHALLENGE &&
            r->acme_challenge != NULL && r->acme_challenge->private_key_pem != NULL)
          OPENSSL_cleanse(r->acme_challenge->private_key_pem,
                          strlen(r->acme_challenge->private_key_pem));
      }
      protobuf_c_message_free_unpacked(&st->base, NULL);
    }
  } else {
    Tlsplane__V1__Snapshot *snap = tlsplane__v1__snapshot__unpack(NULL, len, (const uint8_t *)data);
    if (snap == NULL) {
      tp_err_set(err, GRPC_STATUS_DATA_LOSS, "%s/%s: not a tlsplane.v1.Snapshot", dir, name);
    } else {
      *revision = snap->revision;
      rc = rset_from_snapshot(snap, out, err) == 0 ? 1 : -1;
      protobuf_c_message_free_unpacked(&snap->base, NULL);
    }
  }
  cache_wipe_free(data, len);
  if (rc < 0 && err->status != GRPC_STATUS_DATA_LOSS) {
    char prefix[4200];
    snprintf(prefix, sizeof(prefix), "%s/%s: ", dir, name);
    tp_err_prefix(err, prefix);
  }
  return rc;
}
