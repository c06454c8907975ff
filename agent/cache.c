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

static const struct listener *registry_find(const struct agent *a, const char *name) {
  for (const struct listener *l = a->listeners; l != NULL; l = l->next)
    if (strcmp(l->name, name) == 0)
      return l;
  return NULL;
}

int cache_snapshot_pack(const struct agent *a, const struct apply_report *r, uint8_t **out,
                        size_t *len) {
  const Tlsplane__V1__Snapshot *snap = r->snapshot;
  size_t n = snap->n_listeners;
  Tlsplane__V1__ResolvedListener **ls = calloc(n + 1, sizeof(*ls));
  Tlsplane__V1__ResolvedListener **owned = calloc(n + 1, sizeof(*owned)); /* unpacked here */
  if (ls == NULL || owned == NULL) {
    free(ls);
    free(owned);
    return -1;
  }
  size_t k = 0, n_owned = 0;
  for (size_t i = 0; i < n && i < r->n; i++) {
    const struct apply_result *res = &r->results[i];
    if (res->action != APPLY_FAILED) {
      ls[k++] = snap->listeners[i];
      continue;
    }
    /* Not applied: what it still serves, if anything, and only once (a
     * duplicate entry fails while the first of its name was applied). */
    const struct listener *l = registry_find(a, res->listener);
    if (l == NULL || l->applied == NULL)
      continue;
    int seen = 0;
    for (size_t j = 0; j < k && !seen; j++)
      seen = ls[j]->listener != NULL && strcmp(ls[j]->listener->name, l->name) == 0;
    if (seen)
      continue;
    Tlsplane__V1__ResolvedListener *prev =
        tlsplane__v1__resolved_listener__unpack(NULL, l->applied->config_len, l->applied->config);
    if (prev == NULL)
      continue;
    owned[n_owned++] = prev;
    ls[k++] = prev;
  }
  Tlsplane__V1__Snapshot served = TLSPLANE__V1__SNAPSHOT__INIT;
  served.revision = snap->revision;
  served.listeners = ls;
  served.n_listeners = k;
  int rc = pb_pack(&served.base, out, len);
  for (size_t i = 0; i < n_owned; i++)
    tlsplane__v1__resolved_listener__free_unpacked(owned[i], NULL);
  free(owned);
  free(ls);
  return rc;
}

int cache_snapshot_write(const char *dir, const void *data, size_t len, struct tp_err *err) {
  return cache_file_write(dir, CACHE_SNAPSHOT, data, len, 0600, 0, err);
}

int cache_snapshot_load(const char *dir, Tlsplane__V1__Snapshot **out, struct tp_err *err) {
  *out = NULL;
  char *data;
  size_t len;
  int rc = cache_file_read(dir, CACHE_SNAPSHOT, &data, &len, err);
  if (rc <= 0)
    return rc;
  *out = tlsplane__v1__snapshot__unpack(NULL, len, (const uint8_t *)data);
  cache_wipe_free(data, len);
  if (*out == NULL)
    return tp_err_set(err, GRPC_STATUS_DATA_LOSS, "%s/%s: not a tlsplane.v1.Snapshot", dir,
                      CACHE_SNAPSHOT);
  return 1;
}
