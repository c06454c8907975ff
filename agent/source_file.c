/* The file source: a tlsplane.v1.Snapshot in protobuf's JSON mapping, read
 * at start and again on SIGHUP (see source.h), and held as a resource set
 * (agent_set_from_snapshot): every resource once, by content hash, so that
 * listeners sharing a context share its SSL_CTX. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "pbjson.h"
#include "source.h"

/* A snapshot holds key material for every listener; anything this large
 * is a mistake. */
#define SOURCE_FILE_MAX (256u << 20)

struct source_file {
  struct source base;
  char *path;
  struct rset *set; /* the file's, as last read */
};

int source_file_load(const char *path, Tlsplane__V1__Snapshot **out, struct tp_err *err) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return tp_err_set(err, GRPC_STATUS_NOT_FOUND, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) ||
      (uint64_t)st.st_size > SOURCE_FILE_MAX) {
    fclose(f);
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: not a regular file of at most %u MiB",
                      path, SOURCE_FILE_MAX >> 20);
  }
  size_t len = (size_t)st.st_size;
  char *json = malloc(len + 1);
  if (json == NULL) {
    fclose(f);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s: out of memory", path);
  }
  size_t got = fread(json, 1, len, f);
  int read_error = ferror(f);
  fclose(f);
  if (read_error || got != len) {
    free(json);
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "%s: read error", path);
  }
  json[len] = '\0';
  ProtobufCMessage *msg = NULL;
  int rc = pbjson_decode(&tlsplane__v1__snapshot__descriptor, json, len, &msg, err);
  /* The file holds private keys: wipe the copy. */
  memset(json, 0, len);
  free(json);
  if (rc != 0) {
    char prefix[512];
    snprintf(prefix, sizeof(prefix), "%s: ", path);
    tp_err_prefix(err, prefix);
    return -1;
  }
  *out = (Tlsplane__V1__Snapshot *)msg;
  return 0;
}

static struct source_file *source_file_check(struct source *s) {
  return (struct source_file *)s;
}

/* The file as a set: 0 with *out and *revision, or -1 with err. */
static int file_read(struct source_file *f, struct rset **out, int64_t *revision,
                     struct tp_err *err) {
  Tlsplane__V1__Snapshot *snap = NULL;
  if (source_file_load(f->path, &snap, err) != 0)
    return -1;
  *revision = snap->revision;
  int rc = agent_set_from_snapshot(snap, out, err);
  protobuf_c_message_free_unpacked(&snap->base, NULL);
  if (rc != 0) {
    char prefix[512];
    snprintf(prefix, sizeof(prefix), "%s: ", f->path);
    tp_err_prefix(err, prefix);
  }
  return rc;
}

static int file_first(struct source *s, const struct rset **out, int64_t *revision,
                      struct tp_err *err) {
  struct source_file *f = source_file_check(s);
  *out = NULL;
  if (file_read(f, &f->set, revision, err) != 0)
    return -1;
  *out = f->set;
  return 0;
}

static void file_refresh(struct source *s) {
  struct source_file *f = source_file_check(s);
  struct rset *set = NULL;
  int64_t revision = 0;
  struct tp_err err = {0};
  log_info("agent", "config %s: reloading", f->path);
  if (file_read(f, &set, &revision, &err) != 0) {
    s->cb(NULL, 0, &err, s->data);
    return;
  }
  /* What is served shares the resources it still uses (rset.h): the
   * previous set can go. */
  rset_free(f->set);
  f->set = set;
  s->cb(set, revision, NULL, s->data);
}

static void file_report(struct source *s, const struct apply_report *r) {
  struct source_file *f = source_file_check(s);
  size_t n[APPLY_FAILED + 1] = {0};
  for (size_t i = 0; i < r->n; i++)
    n[r->results[i].action]++;
  log_msg(r->n_failed == 0 ? LOG_INFO : LOG_WARN, "agent",
          "config %s: revision %lld %s: %zu new, %zu changed, %zu kept, %zu dropped, %zu not "
          "applied (%.1f ms)",
          f->path, (long long)r->revision, r->n_failed == 0 ? "applied" : "applied in part",
          n[APPLY_NEW], n[APPLY_CHANGE], n[APPLY_KEEP], n[APPLY_DROP], n[APPLY_FAILED],
          r->apply_ms);
}

static void file_close(struct source *s) {
  struct source_file *f = source_file_check(s);
  rset_free(f->set);
  free(f->path);
  free(f);
}

static const struct source_ops file_ops = {
    .name = "file",
    .first = file_first,
    .refresh = file_refresh,
    .report = file_report,
    .close = file_close,
};

struct source *source_file_new(const char *path, uv_loop_t *loop, source_cb cb, void *data) {
  struct source_file *f = calloc(1, sizeof(*f));
  if (f == NULL || (f->path = strdup(path)) == NULL) {
    free(f);
    return NULL;
  }
  f->base.ops = &file_ops;
  f->base.loop = loop;
  f->base.cb = cb;
  f->base.data = data;
  return &f->base;
}
