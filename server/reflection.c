/* gRPC server reflection from a compiled-in FileDescriptorSet.
 *
 * At startup the set is indexed once: each file's serialized
 * FileDescriptorProto is a slice of the original bytes (found by walking the
 * set's top-level fields, so nothing is re-encoded), its dependencies are
 * resolved to file indices, and every fully-qualified symbol is put in a
 * sorted table. Requests are then answered by lookups only; the index is
 * read-only and shared by all streams.
 *
 * v1 and v1alpha are the same protocol under two package names: their
 * messages have identical fields and numbers, so both services run the same
 * handler with the v1 message types, and the bytes on the wire are what
 * v1alpha clients expect. */
#include "reflection.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "descriptor_set.h"
#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "log.h"

#define REFLECTION_MAGIC 0x5ef1ec70u

enum symbol_kind { SYM_PACKAGE, SYM_MESSAGE, SYM_ENUM, SYM_SERVICE, SYM_METHOD, SYM_EXTENSION };

struct refl_file {
  const char *name;         /* "tlsplane/v1/certificate.proto"; owned by refl->set */
  ProtobufCBinaryData data; /* the serialized FileDescriptorProto, inside the set's bytes */
  size_t n_deps;
  size_t *deps; /* indices of the files it imports (all present: --include_imports) */
};

struct refl_symbol {
  char *name; /* fully qualified, no leading dot */
  enum symbol_kind kind;
  size_t file;
};

struct refl_extension {
  char *extendee; /* fully qualified message name, no leading dot */
  int32_t number;
  size_t file;
};

/* Invariants: symbols is sorted by name and holds each name once (a package
 * maps to the first file that declares it); everything is immutable after
 * reflection_new. */
struct reflection {
  uint32_t magic;
  char **services; /* what list_services answers, sorted */
  size_t n_services;
  Google__Protobuf__FileDescriptorSet *set;
  struct refl_file *files;
  size_t n_files;
  struct refl_symbol *symbols;
  size_t n_symbols, cap_symbols;
  struct refl_extension *exts;
  size_t n_exts, cap_exts;
};

/* --- indexing --- */

static int varint_read(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  uint64_t r = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*p >= end)
      return -1;
    uint8_t b = *(*p)++;
    r |= (uint64_t)(b & 0x7f) << shift;
    if ((b & 0x80) == 0) {
      *v = r;
      return 0;
    }
  }
  return -1;
}

/* Finds the bytes of each FileDescriptorSet.file (field 1). Returns the
 * number found, or -1 if the wire format is broken. out has room for max. */
static long file_slices(const uint8_t *set, size_t len, ProtobufCBinaryData *out, size_t max) {
  const uint8_t *p = set, *end = set + len;
  size_t n = 0;
  while (p < end) {
    uint64_t key, v;
    if (varint_read(&p, end, &key) < 0)
      return -1;
    switch (key & 7) {
    case 0:
      if (varint_read(&p, end, &v) < 0)
        return -1;
      break;
    case 1:
      if (end - p < 8)
        return -1;
      p += 8;
      break;
    case 5:
      if (end - p < 4)
        return -1;
      p += 4;
      break;
    case 2:
      if (varint_read(&p, end, &v) < 0 || v > (uint64_t)(end - p))
        return -1;
      if ((key >> 3) == 1) {
        if (n == max)
          return -1;
        out[n].data = (uint8_t *)p;
        out[n].len = (size_t)v;
        n++;
      }
      p += v;
      break;
    default:
      return -1;
    }
  }
  return (long)n;
}

static char *qualify(const char *scope, const char *name) {
  if (name == NULL)
    return NULL;
  char *s = NULL;
  if (scope == NULL || scope[0] == '\0')
    return strdup(name);
  if (asprintf(&s, "%s.%s", scope, name) < 0)
    return NULL;
  return s;
}

/* Takes ownership of name. */
static int symbol_add(struct reflection *refl, char *name, enum symbol_kind kind, size_t file) {
  if (name == NULL)
    return -ENOMEM;
  if (refl->n_symbols == refl->cap_symbols) {
    size_t cap = refl->cap_symbols ? 2 * refl->cap_symbols : 256;
    struct refl_symbol *s = realloc(refl->symbols, cap * sizeof(*s));
    if (s == NULL) {
      free(name);
      return -ENOMEM;
    }
    refl->symbols = s;
    refl->cap_symbols = cap;
  }
  refl->symbols[refl->n_symbols++] = (struct refl_symbol){name, kind, file};
  return 0;
}

static int extension_add(struct reflection *refl, const char *scope,
                         const Google__Protobuf__FieldDescriptorProto *f, size_t file) {
  int rc = symbol_add(refl, qualify(scope, f->name), SYM_EXTENSION, file);
  if (rc < 0 || f->extendee == NULL)
    return rc;
  if (refl->n_exts == refl->cap_exts) {
    size_t cap = refl->cap_exts ? 2 * refl->cap_exts : 16;
    struct refl_extension *e = realloc(refl->exts, cap * sizeof(*e));
    if (e == NULL)
      return -ENOMEM;
    refl->exts = e;
    refl->cap_exts = cap;
  }
  const char *extendee = f->extendee[0] == '.' ? f->extendee + 1 : f->extendee;
  char *copy = strdup(extendee);
  if (copy == NULL)
    return -ENOMEM;
  refl->exts[refl->n_exts++] = (struct refl_extension){copy, f->number, file};
  return 0;
}

static int message_index(struct reflection *refl, const char *scope,
                         const Google__Protobuf__DescriptorProto *m, size_t file) {
  char *name = qualify(scope, m->name);
  int rc = symbol_add(refl, name, SYM_MESSAGE, file);
  if (rc < 0)
    return rc;
  /* name is owned by the table now and lives as long as it. */
  for (size_t i = 0; rc == 0 && i < m->n_nested_type; i++)
    rc = message_index(refl, name, m->nested_type[i], file);
  for (size_t i = 0; rc == 0 && i < m->n_enum_type; i++)
    rc = symbol_add(refl, qualify(name, m->enum_type[i]->name), SYM_ENUM, file);
  for (size_t i = 0; rc == 0 && i < m->n_extension; i++)
    rc = extension_add(refl, name, m->extension[i], file);
  return rc;
}

static int file_index(struct reflection *refl, const Google__Protobuf__FileDescriptorProto *fd,
                      size_t file) {
  const char *pkg = fd->package != NULL ? fd->package : "";
  int rc = 0;
  /* "tlsplane.v1" declares the packages "tlsplane" and "tlsplane.v1". */
  for (const char *dot = pkg; rc == 0 && pkg[0] != '\0'; dot++) {
    if (*dot == '.' || *dot == '\0')
      rc = symbol_add(refl, strndup(pkg, (size_t)(dot - pkg)), SYM_PACKAGE, file);
    if (*dot == '\0')
      break;
  }
  for (size_t i = 0; rc == 0 && i < fd->n_message_type; i++)
    rc = message_index(refl, pkg, fd->message_type[i], file);
  for (size_t i = 0; rc == 0 && i < fd->n_enum_type; i++)
    rc = symbol_add(refl, qualify(pkg, fd->enum_type[i]->name), SYM_ENUM, file);
  for (size_t i = 0; rc == 0 && i < fd->n_extension; i++)
    rc = extension_add(refl, pkg, fd->extension[i], file);
  for (size_t i = 0; rc == 0 && i < fd->n_service; i++) {
    const Google__Protobuf__ServiceDescriptorProto *svc = fd->service[i];
    char *svc_name = qualify(pkg, svc->name);
    rc = symbol_add(refl, svc_name, SYM_SERVICE, file);
    for (size_t j = 0; rc == 0 && j < svc->n_method; j++)
      rc = symbol_add(refl, qualify(svc_name, svc->method[j]->name), SYM_METHOD, file);
  }
  return rc;
}

static int symbol_cmp(const void *a, const void *b) {
  const struct refl_symbol *sa = a, *sb = b;
  int d = strcmp(sa->name, sb->name);
  if (d != 0)
    return d;
  return sa->file < sb->file ? -1 : sa->file > sb->file;
}

/* Sorts, and keeps the first file of a name declared by several (packages). */
static void symbols_finish(struct reflection *refl) {
  qsort(refl->symbols, refl->n_symbols, sizeof(*refl->symbols), symbol_cmp);
  size_t n = 0;
  for (size_t i = 0; i < refl->n_symbols; i++) {
    if (n > 0 && strcmp(refl->symbols[n - 1].name, refl->symbols[i].name) == 0) {
      free(refl->symbols[i].name);
      continue;
    }
    refl->symbols[n++] = refl->symbols[i];
  }
  refl->n_symbols = n;
}

static const struct refl_symbol *symbol_find(const struct reflection *refl, const char *name) {
  if (name[0] == '.')
    name++;
  size_t lo = 0, hi = refl->n_symbols;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int d = strcmp(name, refl->symbols[mid].name);
    if (d == 0)
      return &refl->symbols[mid];
    if (d < 0)
      hi = mid;
    else
      lo = mid + 1;
  }
  return NULL;
}

static long file_find(const struct reflection *refl, const char *name) {
  for (size_t i = 0; i < refl->n_files; i++) {
    if (strcmp(refl->files[i].name, name) == 0)
      return (long)i;
  }
  return -1;
}

static void reflection_free(void *data);

/* Builds the index of set (which must outlive it). */
static int reflection_new(const uint8_t *set, size_t len, struct reflection **out,
                          struct tp_err *err) {
  *out = NULL;
  struct reflection *refl = calloc(1, sizeof(*refl));
  if (refl == NULL)
    goto failed_malloc;
  refl->magic = REFLECTION_MAGIC;
  refl->set = google__protobuf__file_descriptor_set__unpack(NULL, len, set);
  if (refl->set == NULL) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "reflection: descriptor set does not parse");
    goto failed;
  }
  refl->n_files = refl->set->n_file;
  refl->files = calloc(refl->n_files ? refl->n_files : 1, sizeof(*refl->files));
  ProtobufCBinaryData *slices = calloc(refl->n_files ? refl->n_files : 1, sizeof(*slices));
  if (refl->files == NULL || slices == NULL) {
    free(slices);
    goto failed_malloc;
  }
  long n = file_slices(set, len, slices, refl->n_files);
  for (size_t i = 0; i < refl->n_files; i++)
    refl->files[i].data = slices[i];
  free(slices);
  if (n != (long)refl->n_files) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "reflection: descriptor set: cannot find each file");
    goto failed;
  }

  for (size_t i = 0; i < refl->n_files; i++) {
    const Google__Protobuf__FileDescriptorProto *fd = refl->set->file[i];
    struct refl_file *f = &refl->files[i];
    if (fd->name == NULL) {
      tp_err_set(err, GRPC_STATUS_INTERNAL, "reflection: descriptor set: file %zu has no name", i);
      goto failed;
    }
    f->name = fd->name;
    if (file_index(refl, fd, i) < 0)
      goto failed_malloc;
  }
  /* Imports come before their importers in the set, but resolve by name
   * once all files are known so that order does not matter. */
  for (size_t i = 0; i < refl->n_files; i++) {
    const Google__Protobuf__FileDescriptorProto *fd = refl->set->file[i];
    struct refl_file *f = &refl->files[i];
    f->deps = calloc(fd->n_dependency ? fd->n_dependency : 1, sizeof(*f->deps));
    if (f->deps == NULL)
      goto failed_malloc;
    for (size_t j = 0; j < fd->n_dependency; j++) {
      long d = file_find(refl, fd->dependency[j]);
      if (d < 0) {
        tp_err_set(err, GRPC_STATUS_INTERNAL, "reflection: %s imports %s, which is not in the set",
                   f->name, fd->dependency[j]);
        goto failed;
      }
      f->deps[f->n_deps++] = (size_t)d;
    }
  }
  symbols_finish(refl);
  *out = refl;
  return 0;

failed_malloc:
  tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "reflection: out of memory");
failed:
  reflection_free(refl);
  return -1;
}

static void reflection_free(void *data) {
  struct reflection *refl = data;
  if (refl == NULL)
    return;
  for (size_t i = 0; i < refl->n_services; i++)
    free(refl->services[i]);
  free(refl->services);
  for (size_t i = 0; i < refl->n_symbols; i++)
    free(refl->symbols[i].name);
  free(refl->symbols);
  for (size_t i = 0; i < refl->n_exts; i++)
    free(refl->exts[i].extendee);
  free(refl->exts);
  for (size_t i = 0; refl->files != NULL && i < refl->n_files; i++)
    free(refl->files[i].deps);
  free(refl->files);
  if (refl->set != NULL)
    google__protobuf__file_descriptor_set__free_unpacked(refl->set, NULL);
  refl->magic = 0;
  free(refl);
}

/* --- answering --- */

typedef Grpc__Reflection__V1__ServerReflectionRequest refl_request;
typedef Grpc__Reflection__V1__ServerReflectionResponse refl_response;

/* Appends file and then, depth first, what it imports, each file once. */
static void files_collect(const struct reflection *refl, size_t file, unsigned char *seen,
                          ProtobufCBinaryData *out, size_t *n) {
  if (seen[file])
    return;
  seen[file] = 1;
  out[(*n)++] = refl->files[file].data;
  for (size_t i = 0; i < refl->files[file].n_deps; i++)
    files_collect(refl, refl->files[file].deps[i], seen, out, n);
}

static int send_error(struct rpc_stream *stream, refl_response *resp, grpc_status_code code,
                      const char *fmt, const char *what) {
  char msg[512];
  snprintf(msg, sizeof(msg), fmt, what);
  Grpc__Reflection__V1__ErrorResponse e = GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
  e.error_code = (int32_t)code;
  e.error_message = msg;
  resp->message_response_case =
      GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
  resp->error_response = &e;
  return rpc_stream_send(stream, &resp->base);
}

static int send_files(const struct reflection *refl, struct rpc_stream *stream, refl_response *resp,
                      size_t file) {
  unsigned char *seen = calloc(refl->n_files, 1);
  ProtobufCBinaryData *files = calloc(refl->n_files, sizeof(*files));
  if (seen == NULL || files == NULL) {
    free(seen);
    free(files);
    return send_error(stream, resp, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s", "out of memory");
  }
  size_t n = 0;
  files_collect(refl, file, seen, files, &n);
  Grpc__Reflection__V1__FileDescriptorResponse fdr =
      GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
  fdr.n_file_descriptor_proto = n;
  fdr.file_descriptor_proto = files;
  resp->message_response_case =
      GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
  resp->file_descriptor_response = &fdr;
  int rc = rpc_stream_send(stream, &resp->base);
  free(seen);
  free(files);
  return rc;
}

static int send_services(const struct reflection *refl, struct rpc_stream *stream,
                         refl_response *resp) {
  size_t n = refl->n_services;
  Grpc__Reflection__V1__ServiceResponse *svcs = calloc(n ? n : 1, sizeof(*svcs));
  Grpc__Reflection__V1__ServiceResponse **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
  if (svcs == NULL || ptrs == NULL) {
    free(svcs);
    free(ptrs);
    return send_error(stream, resp, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s", "out of memory");
  }
  for (size_t i = 0; i < n; i++) {
    grpc__reflection__v1__service_response__init(&svcs[i]);
    svcs[i].name = refl->services[i];
    ptrs[i] = &svcs[i];
  }
  Grpc__Reflection__V1__ListServiceResponse list =
      GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
  list.n_service = n;
  list.service = ptrs;
  resp->message_response_case =
      GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
  resp->list_services_response = &list;
  int rc = rpc_stream_send(stream, &resp->base);
  free(svcs);
  free(ptrs);
  return rc;
}

static int send_extension_numbers(const struct reflection *refl, struct rpc_stream *stream,
                                  refl_response *resp, const char *type) {
  const struct refl_symbol *sym = symbol_find(refl, type);
  if (sym == NULL || sym->kind != SYM_MESSAGE)
    return send_error(stream, resp, GRPC_STATUS_NOT_FOUND, "message type not found: %s", type);
  int32_t *numbers = calloc(refl->n_exts ? refl->n_exts : 1, sizeof(*numbers));
  if (numbers == NULL)
    return send_error(stream, resp, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s", "out of memory");
  size_t n = 0;
  for (size_t i = 0; i < refl->n_exts; i++) {
    if (strcmp(refl->exts[i].extendee, sym->name) == 0)
      numbers[n++] = refl->exts[i].number;
  }
  Grpc__Reflection__V1__ExtensionNumberResponse enr =
      GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
  enr.base_type_name = sym->name;
  enr.n_extension_number = n;
  enr.extension_number = numbers;
  resp->message_response_case =
      GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
  resp->all_extension_numbers_response = &enr;
  int rc = rpc_stream_send(stream, &resp->base);
  free(numbers);
  return rc;
}

static int send_extension_file(const struct reflection *refl, struct rpc_stream *stream,
                               refl_response *resp,
                               const Grpc__Reflection__V1__ExtensionRequest *x) {
  if (x != NULL) {
    const char *type = x->containing_type[0] == '.' ? x->containing_type + 1 : x->containing_type;
    for (size_t i = 0; i < refl->n_exts; i++) {
      if (refl->exts[i].number == x->extension_number && strcmp(refl->exts[i].extendee, type) == 0)
        return send_files(refl, stream, resp, refl->exts[i].file);
    }
  }
  char what[300];
  snprintf(what, sizeof(what), "%s(%d)", x != NULL ? x->containing_type : "",
           x != NULL ? x->extension_number : 0);
  return send_error(stream, resp, GRPC_STATUS_NOT_FOUND, "extension not found: %s", what);
}

/* Answers one request (queues its response); returns -1 only if the
 * stream is finishing or gone. */
static int answer(const struct reflection *refl, struct rpc_stream *stream, refl_request *req) {
  refl_response resp = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
  resp.valid_host = req->host;
  resp.original_request = req;
  switch (req->message_request_case) {
  case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
    return send_services(refl, stream, &resp);
  case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME: {
    long f = file_find(refl, req->file_by_filename);
    if (f < 0)
      return send_error(stream, &resp, GRPC_STATUS_NOT_FOUND, "file not found: %s",
                        req->file_by_filename);
    return send_files(refl, stream, &resp, (size_t)f);
  }
  case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL: {
    const struct refl_symbol *sym = symbol_find(refl, req->file_containing_symbol);
    if (sym == NULL)
      return send_error(stream, &resp, GRPC_STATUS_NOT_FOUND, "symbol not found: %s",
                        req->file_containing_symbol);
    return send_files(refl, stream, &resp, sym->file);
  }
  case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
    return send_extension_file(refl, stream, &resp, req->file_containing_extension);
  case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
    return send_extension_numbers(refl, stream, &resp, req->all_extension_numbers_of_type);
  default:
    /* Not set, or a request kind newer than this protocol version. */
    return send_error(stream, &resp, GRPC_STATUS_UNIMPLEMENTED, "%s",
                      "message_request: not set or not supported");
  }
}

static int info_started(struct rpc_stream *stream, const struct rpc_call_info *call, void *data,
                        void **stream_data, struct tp_err *err) {
  const struct reflection *refl = data;
  if (refl == NULL || refl->magic != REFLECTION_MAGIC)
    abort();
  *stream_data = data;
  return 0;
}

/* One request, answered at once: the answers queue in request order, and
 * the next request is read once this one's answer is queued (and, if the
 * client does not read its answers, once they drained). A half-close ends
 * the call with OK after the last answer (no half_closed callback). */
static int info_message(struct rpc_stream *stream, void *stream_data, ProtobufCMessage *msg,
                        struct tp_err *err) {
  const struct reflection *refl = stream_data;
  if (refl == NULL || refl->magic != REFLECTION_MAGIC)
    abort();
  int rc = answer(refl, stream, (refl_request *)msg);
  protobuf_c_message_free_unpacked(msg, NULL);
  if (rc < 0)
    return tp_err_set(err, GRPC_STATUS_CANCELLED, "call cancelled");
  return 0;
}

static const struct rpc_stream_ops info_ops = {
    .req = &grpc__reflection__v1__server_reflection_request__descriptor,
    .started = info_started,
    .message = info_message,
};

static int name_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* services plus health and the two reflection services, each once, sorted. */
static int services_set(struct reflection *refl, const char *const *services, size_t n) {
  static const char *const own[] = {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                                    "grpc.reflection.v1alpha.ServerReflection"};
  const size_t n_own = sizeof(own) / sizeof(own[0]);
  refl->services = calloc(n + n_own, sizeof(*refl->services));
  if (refl->services == NULL)
    return -ENOMEM;
  for (size_t i = 0; i < n + n_own; i++) {
    const char *name = i < n ? services[i] : own[i - n];
    int dup = 0;
    for (size_t j = 0; j < refl->n_services; j++)
      dup |= strcmp(refl->services[j], name) == 0;
    if (dup)
      continue;
    const struct refl_symbol *sym = symbol_find(refl, name);
    if (sym == NULL || sym->kind != SYM_SERVICE)
      log_warn("reflection", "service %s is not in the descriptor set", name);
    if ((refl->services[refl->n_services] = strdup(name)) == NULL)
      return -ENOMEM;
    refl->n_services++;
  }
  qsort(refl->services, refl->n_services, sizeof(*refl->services), name_cmp);
  return 0;
}

int reflection_register(struct rpc_server *srv, const char *const *services, size_t n) {
  struct tp_err err = {.status = GRPC_STATUS_OK};
  struct reflection *refl;
  if (reflection_new(tlsplane_descriptor_set, tlsplane_descriptor_set_len, &refl, &err) < 0) {
    log_error("reflection", "%s", err.msg);
    return err.status == GRPC_STATUS_RESOURCE_EXHAUSTED ? -ENOMEM : -EINVAL;
  }
  if (services_set(refl, services, n) < 0 ||
      rpc_server_add_cleanup(srv, reflection_free, refl) < 0) {
    reflection_free(refl);
    return -ENOMEM;
  }
  /* From here on refl is the server's: freed by rpc_server_free. */
  int rc = rpc_server_add_stream(srv, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                 &info_ops, refl);
  if (rc < 0)
    return rc;
  return rpc_server_add_stream(
      srv, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &info_ops, refl);
}
