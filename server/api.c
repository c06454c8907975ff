/* The resource API engine: the generic Create/Get/List/Update/Delete
 * handlers every service shares, driven by a struct api_kind. */
#include "api.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certinfo.h"
#include "google/protobuf/empty.pb-c.h"
#include "google/protobuf/field_mask.pb-c.h"
#include "log.h"
#include "pb.h"
#include "usage.h"

#define PAGE_SIZE_DEFAULT 50
#define PAGE_SIZE_MAX 1000
#define ID_MAX 63
#define LABEL_KEY_MAX 63
#define LABEL_VALUE_MAX 253
#define LABELS_MAX 64
#define SELECTOR_MAX 32
/* A checked write is made again at most this often when what it was
 * validated against changed meanwhile. */
#define WRITE_ATTEMPTS 4

/* Metadata every resource carries; the store owns their values. */
static const char *const metadata_fields[] = {"etag", "create_time", "update_time", "revision",
                                              NULL};

int api_refs_add(struct api_refs *refs, const char *kind, const char *name, const char *field_fmt,
                 ...) {
  for (size_t i = 0; i < refs->n; i++)
    if (strcmp(refs->items[i].kind, kind) == 0 && strcmp(refs->items[i].name, name) == 0)
      return 0; /* one reference per target; the first field names it */
  if (refs->n == refs->cap) {
    size_t cap = refs->cap ? refs->cap * 2 : 8;
    struct store_ref *items = realloc(refs->items, cap * sizeof(*items));
    if (items == NULL)
      return -1;
    refs->items = items;
    refs->cap = cap;
  }
  char field[256];
  va_list ap;
  va_start(ap, field_fmt);
  vsnprintf(field, sizeof(field), field_fmt, ap);
  va_end(ap);
  struct store_ref *r = &refs->items[refs->n];
  r->kind = kind;
  r->name = strdup(name);
  r->field = strdup(field);
  if (r->name == NULL || r->field == NULL) {
    free((char *)r->name);
    free((char *)r->field);
    return -1;
  }
  refs->n++;
  return 0;
}

void api_refs_clear(struct api_refs *refs) {
  for (size_t i = 0; i < refs->n; i++) {
    free((char *)refs->items[i].name);
    free((char *)refs->items[i].field);
  }
  free(refs->items);
  memset(refs, 0, sizeof(*refs));
}

static int id_check(const char *id, const char *field, struct tp_err *err) {
  size_t n = strlen(id);
  if (n == 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: required", field);
  int ok = n <= ID_MAX && islower((unsigned char)id[0]) && id[n - 1] != '-';
  for (size_t i = 0; ok && i < n; i++)
    ok = islower((unsigned char)id[i]) || isdigit((unsigned char)id[i]) || id[i] == '-';
  if (!ok)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: \"%s\" is not a valid id (1 to %d lower-case letters, digits and '-', "
                      "starting with a letter and not ending with '-')",
                      field, id, ID_MAX);
  return 0;
}

int api_name_check(const struct api_kind *kind, const char *name, const char *field,
                   struct tp_err *err) {
  size_t clen = strlen(kind->collection);
  if (name == NULL || name[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: required", field);
  if (strncmp(name, kind->collection, clen) != 0 || name[clen] != '/')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: \"%s\" is not a %s name (%s/{id})",
                      field, name, kind->kind, kind->collection);
  return id_check(name + clen + 1, field, err);
}

static int is_listed(const char *const *list, const char *name) {
  for (size_t i = 0; list != NULL && list[i] != NULL; i++)
    if (strcmp(list[i], name) == 0)
      return 1;
  return 0;
}

/* Clears every field the caller may not set: output-only fields and the
 * store's metadata. Keeps name, labels and the mutable fields. */
static void clear_output_fields(const struct api_kind *kind, ProtobufCMessage *res) {
  const ProtobufCMessageDescriptor *d = kind->desc;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const char *fname = d->fields[i].name;
    if (strcmp(fname, "name") == 0 || strcmp(fname, "labels") == 0 ||
        is_listed(kind->mutable_fields, fname))
      continue;
    pb_field_clear(res, &d->fields[i]);
  }
}

void api_clear_output_fields(const struct api_kind *kind, ProtobufCMessage *res) {
  clear_output_fields(kind, res);
}

static void clear_metadata(ProtobufCMessage *res) {
  for (size_t i = 0; metadata_fields[i] != NULL; i++) {
    const ProtobufCFieldDescriptor *f = pb_field(res->descriptor, metadata_fields[i]);
    if (f != NULL)
      pb_field_clear(res, f);
  }
}

static int set_metadata(ProtobufCMessage *res, const struct store_row *row) {
  const ProtobufCFieldDescriptor *f = pb_field(res->descriptor, "revision");
  if (pb_string_set(res, "name", row->name) != 0 || pb_string_set(res, "etag", row->etag) != 0 ||
      pb_timestamp_set(res, "create_time", row->create_time_us) != 0 ||
      pb_timestamp_set(res, "update_time", row->update_time_us) != 0 || f == NULL)
    return -1;
  *(int64_t *)pb_member(res, f) = row->revision;
  return 0;
}

ProtobufCMessage *api_decode_row(const struct api_kind *kind, const struct store_row *row,
                                 struct tp_err *err) {
  ProtobufCMessage *res = protobuf_c_message_unpack(kind->desc, NULL, row->data_len, row->data);
  if (res == NULL) {
    tp_err_set(err, GRPC_STATUS_DATA_LOSS, "%s: stored data does not decode", row->name);
    return NULL;
  }
  /* A time stored before input was range-checked reads back clamped: one
   * bad value must not make the resource, or every List, unreadable. */
  pb_times_clamp(res, NULL, 0);
  if (set_metadata(res, row) != 0) {
    protobuf_c_message_free_unpacked(res, NULL);
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return NULL;
  }
  return res;
}

int api_read(struct store_txn *txn, const struct api_kind *kind, const char *name, int with_secret,
             ProtobufCMessage **msg, struct store_row *row, struct tp_err *err) {
  struct store_row local = {0};
  struct store_row *r = row ? row : &local;
  if (store_get(txn, kind->kind, name, with_secret, r, err) != 0)
    return -1;
  *msg = api_decode_row(kind, r, err);
  if (row == NULL)
    store_row_clear(&local);
  return *msg ? 0 : -1;
}

static int label_key_ok(const char *k) {
  size_t n = strlen(k);
  if (n == 0 || n > LABEL_KEY_MAX)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)k[i]) && strchr("-_./", k[i]) == NULL)
      return 0;
  return 1;
}

/* Checks the map<string, string> field `map` of msg as labels (field
 * names it in messages: "token.agent_labels") into labels[0..*n). */
static int labels_collect(const ProtobufCMessage *msg, const char *map, const char *field,
                          struct store_label *labels, size_t *n, struct tp_err *err) {
  size_t count = pb_map_size(msg, map);
  if (count > LABELS_MAX)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: at most %d labels", field,
                      LABELS_MAX);
  for (size_t i = 0; i < count; i++) {
    pb_map_entry(msg, map, i, &labels[i].key, &labels[i].value);
    if (!label_key_ok(labels[i].key))
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "%s: key \"%s\" must be 1 to %d letters, digits, '-', '_', '.' "
                        "or '/'",
                        field, labels[i].key, LABEL_KEY_MAX);
    if (strlen(labels[i].value) > LABEL_VALUE_MAX)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "%s: value of \"%s\" is longer than %d characters", field, labels[i].key,
                        LABEL_VALUE_MAX);
    for (size_t j = 0; j < i; j++)
      if (strcmp(labels[i].key, labels[j].key) == 0)
        return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: key \"%s\" given twice", field,
                          labels[i].key);
  }
  *n = count;
  return 0;
}

static int collect_labels(const struct api_kind *kind, const ProtobufCMessage *res,
                          struct store_label *labels, size_t *n, struct tp_err *err) {
  char field[96];
  snprintf(field, sizeof(field), "%s.labels", kind->resource_field);
  return labels_collect(res, "labels", field, labels, n, err);
}

int api_labels_check(const ProtobufCMessage *msg, const char *map, const char *field,
                     struct tp_err *err) {
  struct store_label labels[LABELS_MAX];
  size_t n = 0;
  return labels_collect(msg, map, field, labels, &n, err);
}

int api_changes_add(struct api_changes *ch, const char *field, const char *before,
                    const char *after) {
  before = before ? before : "";
  after = after ? after : "";
  if (strcmp(before, after) == 0)
    return 0;
  if (ch->n == ch->cap) {
    size_t cap = ch->cap ? ch->cap * 2 : 8;
    struct store_audit_change *items = realloc(ch->items, cap * sizeof(*items));
    if (items == NULL)
      return -1;
    ch->items = items;
    ch->cap = cap;
  }
  struct store_audit_change *c = &ch->items[ch->n];
  c->field = strdup(field);
  c->before = strdup(before);
  c->after = strdup(after);
  if (c->field == NULL || c->before == NULL || c->after == NULL) {
    free(c->field);
    free(c->before);
    free(c->after);
    return -1;
  }
  ch->n++;
  return 0;
}

void api_changes_clear(struct api_changes *ch) {
  for (size_t i = 0; i < ch->n; i++) {
    free(ch->items[i].field);
    free(ch->items[i].before);
    free(ch->items[i].after);
  }
  free(ch->items);
  memset(ch, 0, sizeof(*ch));
}

int api_changes_time(struct api_changes *ch, const char *field,
                     const Google__Protobuf__Timestamp *before,
                     const Google__Protobuf__Timestamp *after) {
  char b[32] = "", a[32] = "";
  if (before != NULL)
    certinfo_time_format((time_t)before->seconds, b);
  if (after != NULL)
    certinfo_time_format((time_t)after->seconds, a);
  return api_changes_add(ch, field, b, a);
}

/* The name the reference of field has in refs, or NULL. */
static const char *ref_named(const struct api_refs *refs, const char *field) {
  for (size_t i = 0; i < refs->n; i++)
    if (strcmp(refs->items[i].field, field) == 0)
      return refs->items[i].name;
  return NULL;
}

/* A reference's field as a change names it: without the resource prefix
 * ("default_tls_context", "certificates[0]"), as validation messages do. */
static const char *ref_field(const struct api_kind *kind, const char *field) {
  size_t n = strlen(kind->resource_field);
  if (strncmp(field, kind->resource_field, n) == 0 && field[n] == '.')
    return field + n + 1;
  return field;
}

/* The references that changed from old (NULL: none) to now, by field. */
static int refs_changes(const struct api_kind *kind, const ProtobufCMessage *old,
                        const struct api_refs *now, struct api_changes *ch) {
  struct api_refs was = {0};
  int rc = old != NULL && kind->refs != NULL ? kind->refs(old, &was) : 0;
  for (size_t i = 0; rc == 0 && i < was.n; i++)
    rc = api_changes_add(ch, ref_field(kind, was.items[i].field), was.items[i].name,
                         ref_named(now, was.items[i].field));
  for (size_t i = 0; rc == 0 && i < now->n; i++)
    if (ref_named(&was, now->items[i].field) == NULL)
      rc = api_changes_add(ch, ref_field(kind, now->items[i].field), "", now->items[i].name);
  api_refs_clear(&was);
  return rc;
}

/* A resource validated and ready to write: what store_put takes besides
 * the secret (op->secret). labels point into the resource, which outlives
 * it. */
struct staged {
  uint8_t *data;
  size_t data_len;
  struct api_refs refs;
  struct api_changes changes; /* for the audit row */
  struct store_label labels[LABELS_MAX];
  size_t n_labels;
  int64_t expire_time_us;
  int64_t due_time_us;
};

static void staged_clear(struct staged *st) {
  free(st->data);
  api_refs_clear(&st->refs);
  api_changes_clear(&st->changes);
  memset(st, 0, sizeof(*st));
}

static void op_secret_clear(struct api_op *op) {
  if (op->secret != NULL) {
    OPENSSL_cleanse(op->secret, op->secret_len);
    free(op->secret);
  }
  op->secret = NULL;
  op->secret_len = 0;
  op->set_secret = 0;
}

/* Validates res and derives what it writes, reading only through op->txn
 * (any transaction): prepare (OpenSSL), references, labels, and for an
 * update the contexts that use the resource, built with res in place of
 * the stored version. Writes nothing. */
static int stage(struct api_op *op, ProtobufCMessage *res, struct staged *st, struct tp_err *err) {
  const struct api_kind *kind = op->kind;
  if (kind->prepare != NULL && kind->prepare(op, res, err) != 0) {
    char prefix[128];
    snprintf(prefix, sizeof(prefix), "%s.", kind->resource_field);
    if (err->status == GRPC_STATUS_INVALID_ARGUMENT)
      tp_err_prefix(err, prefix);
    return -1;
  }
  if (kind->refs != NULL && kind->refs(res, &st->refs) != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (collect_labels(kind, res, st->labels, &st->n_labels, err) != 0)
    return -1;
  if (op->old_row != NULL && kind->check_referrers != NULL &&
      kind->check_referrers(op, res, err) != 0)
    return -1;
  if (refs_changes(kind, op->old, &st->refs, &st->changes) != 0 ||
      (kind->audit_changes != NULL && kind->audit_changes(op->old, res, &st->changes) != 0))
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  clear_metadata(res);
  if (pb_pack(res, &st->data, &st->data_len) != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  st->expire_time_us = kind->expire_time_us ? kind->expire_time_us(res) : 0;
  st->due_time_us = kind->due_time_us ? kind->due_time_us(res) : 0;
  return 0;
}

/* Writes what stage made (and op->secret) inside op->txn, a write
 * transaction; res receives its new metadata. */
static int staged_put(struct api_op *op, ProtobufCMessage *res, const struct staged *st,
                      const char *expect_etag, const char *action, struct tp_err *err) {
  struct store_write w = {
      .kind = op->kind->kind,
      .name = pb_string_get(res, "name"),
      .create = op->old_row == NULL,
      .expect_etag = expect_etag,
      .data = st->data,
      .data_len = st->data_len,
      .set_secret = op->set_secret,
      .secret = op->secret,
      .secret_len = op->secret_len,
      .labels = st->labels,
      .n_labels = st->n_labels,
      .refs = st->refs.items,
      .n_refs = st->refs.n,
      .expire_time_us = st->expire_time_us,
      .due_time_us = st->due_time_us,
      /* Labels, references and expiry derive from data: the same data
       * and secret leave the row as it is. */
      .skip_unchanged = 1,
      .actor = op->call->actor,
      .method = op->call->method,
      .action = action,
      .changes = st->changes.items,
      .n_changes = st->changes.n,
  };
  if (op->kind->check_in_write != NULL && op->kind->check_in_write(op, res, err) != 0)
    return -1;
  struct store_row row = {0};
  if (store_put(op->txn, &w, &row, err) != 0)
    return -1;
  int rc = set_metadata(res, &row);
  store_row_clear(&row);
  if (rc != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  return 0;
}

int api_write(struct api_op *op, ProtobufCMessage *res, const char *expect_etag, const char *action,
              struct tp_err *err) {
  struct staged st = {0};
  int rc = stage(op, res, &st, err);
  if (rc == 0)
    rc = staged_put(op, res, &st, expect_etag, action, err);
  staged_clear(&st);
  op_secret_clear(op);
  return rc;
}

/* Commits txn, or rolls it back when rc != 0. */
static int finish(struct store_txn *txn, int rc, struct tp_err *err) {
  if (rc != 0) {
    store_rollback(txn);
    return rc;
  }
  return store_commit(txn, NULL, err);
}

/* What one attempt of a checked write read and owns: the stored version
 * of the resource (an update), with its secret. */
struct attempt {
  ProtobufCMessage *old;
  struct store_row old_row;
};

static void attempt_clear(struct attempt *a) {
  if (a->old != NULL)
    protobuf_c_message_free_unpacked(a->old, NULL);
  if (a->old_row.secret != NULL)
    OPENSSL_cleanse(a->old_row.secret, a->old_row.secret_len);
  store_row_clear(&a->old_row);
  memset(a, 0, sizeof(*a));
}

/* Makes the resource one attempt writes, reading through op->txn: sets
 * *res (the caller's), and for an update reads the stored version into a
 * and points op->old and op->old_row at it. */
typedef int (*build_fn)(struct api_op *op, struct attempt *a, ProtobufCMessage **res,
                        struct tp_err *err, const void *data);

/* A create or update whose validation (prepare, the contexts that use the
 * resource: all the OpenSSL work) runs in a tracked read transaction,
 * outside the store's write lock, so that the lock is held only for a
 * short write transaction: it checks that nothing the validation read has
 * changed since (store_reads_check), then writes. When something did, the
 * whole attempt is made again from a fresh read; the last of
 * WRITE_ATTEMPTS validates inside the write transaction, so that a write
 * on a resource other writers keep changing goes through all the same
 * (holding the lock longer, once). One transaction, one revision, as
 * api_write. */
static int write_checked(const struct api_binding *b, const struct rpc_call_info *call,
                         build_fn build, const void *data, const char *expect_etag,
                         const char *action, ProtobufCMessage **out, struct tp_err *err) {
  for (int attempt = 1;; attempt++) {
    int locked = attempt == WRITE_ATTEMPTS;
    struct attempt a = {0};
    struct staged st = {0};
    struct store_reads *reads = NULL;
    ProtobufCMessage *res = NULL;
    struct store_txn *txn;
    struct api_op op = {.api = b->api, .kind = b->kind, .call = call, .now = time(NULL)};
    int again = 0;
    int rc = 0;
    if (!locked) {
      rc = store_begin_tracked(b->api->store, &txn, err) == 0 ? 0 : -1;
      if (rc == 0) {
        op.txn = txn;
        rc = build(&op, &a, &res, err, data);
        if (rc == 0)
          rc = stage(&op, res, &st, err);
        reads = store_reads_take(txn);
        store_rollback(txn);
      }
    }
    if (rc == 0 && store_begin(b->api->store, 1, &txn, err) != 0)
      rc = -1;
    else if (rc == 0) {
      op.txn = txn;
      if (locked) {
        rc = build(&op, &a, &res, err, data);
        if (rc == 0)
          rc = stage(&op, res, &st, err);
      } else {
        int checked = store_reads_check(txn, reads, err);
        if (checked == -EAGAIN)
          again = 1;
        rc = checked;
      }
      if (rc == 0)
        rc = staged_put(&op, res, &st, expect_etag, action, err);
      rc = finish(txn, rc, err);
    }
    staged_clear(&st);
    op_secret_clear(&op);
    store_reads_free(reads);
    attempt_clear(&a);
    if (rc == 0) {
      *out = res;
      return 0;
    }
    if (res != NULL)
      protobuf_c_message_free_unpacked(res, NULL);
    if (!again)
      return -1;
  }
}

struct create_args {
  const ProtobufCMessage *in; /* the request's resource */
  const char *name;
};

static int build_create(struct api_op *op, struct attempt *a, ProtobufCMessage **res,
                        struct tp_err *err, const void *data) {
  const struct create_args *c = data;
  (void)a;
  if ((*res = pb_clone(c->in)) == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  clear_output_fields(op->kind, *res);
  if (pb_string_set(*res, "name", c->name) != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  return 0;
}

/* api_create's build: the resource as the server made it. */
static int build_made(struct api_op *op, struct attempt *a, ProtobufCMessage **res,
                      struct tp_err *err, const void *data) {
  (void)op;
  (void)a;
  if ((*res = pb_clone(data)) == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  return 0;
}

int api_create(struct api *api, const struct api_kind *kind, const struct rpc_call_info *call,
               const ProtobufCMessage *res, const char *action, ProtobufCMessage **out,
               struct tp_err *err) {
  const struct api_binding b = {.api = api, .kind = kind};
  return write_checked(&b, call, build_made, res, NULL, action, out, err);
}

static int rpc_create(const struct rpc_call_info *call, const ProtobufCMessage *req,
                      ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const struct api_kind *kind = b->kind;
  char id_field[96];
  snprintf(id_field, sizeof(id_field), "%s_id", kind->resource_field);
  if (kind->read_only)
    return tp_err_set(err, GRPC_STATUS_UNIMPLEMENTED, "%s resources are created by the server",
                      kind->kind);
  const char *id = pb_string_get(req, id_field);
  const ProtobufCMessage *in = pb_message_get(req, kind->resource_field);
  if (in == NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: required", kind->resource_field);
  if (id_check(id, id_field, err) != 0)
    return -1;
  char name[160];
  snprintf(name, sizeof(name), "%s/%s", kind->collection, id);
  struct create_args c = {.in = in, .name = name};
  return write_checked(b, call, build_create, &c, NULL, "create", resp, err);
}

static int rpc_get(const struct rpc_call_info *call, const ProtobufCMessage *req,
                   ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const char *name = pb_string_get(req, "name");
  if (api_name_check(b->kind, name, "name", err) != 0)
    return -1;
  struct store_txn *txn;
  if (store_begin(b->api->store, 0, &txn, err) != 0)
    return -1;
  int rc = api_read(txn, b->kind, name, 0, resp, NULL, err);
  store_rollback(txn);
  if (rc == 0 && b->kind->decorate != NULL)
    b->kind->decorate(b->api, *resp);
  return rc;
}

char *api_token_encode(const char *text) {
  size_t n = strlen(text);
  char *out = malloc(4 * ((n + 2) / 3) + 1);
  if (out != NULL)
    EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)text, (int)n);
  return out;
}

int api_token_decode(const char *token, char *text, size_t len) {
  size_t n = strlen(token);
  if (n == 0 || n % 4 != 0 || n / 4 * 3 >= len)
    return -1;
  int out = EVP_DecodeBlock((unsigned char *)text, (const unsigned char *)token, (int)n);
  if (out < 0)
    return -1;
  while (out > 0 && token[n - 1] == '=') { /* EVP_DecodeBlock counts padding as zeros */
    out--;
    n--;
  }
  text[out] = '\0';
  return strlen(text) == (size_t)out ? 0 : -1;
}

/* List page tokens are the base64 of the last name returned. */
static int page_token_decode(const struct api_kind *kind, const char *token, char *name, size_t len,
                             struct tp_err *err) {
  if (api_token_decode(token, name, len) != 0 || api_name_check(kind, name, "page_token", err) != 0)
    goto bad;
  return 0;
bad:
  return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                    "page_token: not a token from a previous %s list", kind->kind);
}

/* Parses "k=v,k!=v,k,!k" into reqs (pointing into buf, which it modifies). */
static int selector_parse(char *buf, struct store_label_req *reqs, size_t *n, struct tp_err *err) {
  size_t count = 0;
  char *save = NULL;
  for (char *tok = strtok_r(buf, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
    while (isspace((unsigned char)*tok))
      tok++;
    char *end = tok + strlen(tok);
    while (end > tok && isspace((unsigned char)end[-1]))
      *--end = '\0';
    if (count == SELECTOR_MAX)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "label_selector: at most %d requirements", SELECTOR_MAX);
    struct store_label_req *r = &reqs[count];
    char *ne = strstr(tok, "!="), *eq = strchr(tok, '=');
    if (ne != NULL) {
      *ne = '\0';
      r->op = STORE_LABEL_NE;
      r->key = tok;
      r->value = ne + 2;
    } else if (eq != NULL) {
      *eq = '\0';
      r->op = STORE_LABEL_EQ;
      r->key = tok;
      r->value = eq + 1 + (eq[1] == '='); /* k==v as k=v */
    } else if (tok[0] == '!') {
      r->op = STORE_LABEL_NOT_EXISTS;
      r->key = tok + 1;
      r->value = NULL;
    } else {
      r->op = STORE_LABEL_EXISTS;
      r->key = tok;
      r->value = NULL;
    }
    char *kend = (char *)r->key + strlen(r->key);
    while (kend > r->key && isspace((unsigned char)kend[-1]))
      *--kend = '\0';
    while (r->value != NULL && isspace((unsigned char)*r->value))
      r->value++;
    if (!label_key_ok(r->key))
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "label_selector: \"%s\" is not a requirement (k=v, k!=v, k or !k)", tok);
    count++;
  }
  *n = count;
  return 0;
}

static int rpc_list(const struct rpc_call_info *call, const ProtobufCMessage *req,
                    ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const ProtobufCMessageDescriptor *out_desc = b->list_output;
  const struct api_kind *kind = b->kind;
  const ProtobufCFieldDescriptor *f_size = pb_field(req->descriptor, "page_size");
  int32_t page_size = f_size ? *(int32_t *)pb_member(req, f_size) : 0;
  const char *token = pb_string_get(req, "page_token");
  const char *selector = pb_string_get(req, "label_selector");
  const ProtobufCMessage *expiring =
      pb_field(req->descriptor, "expiring_before") ? pb_message_get(req, "expiring_before") : NULL;

  if (page_size < 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "page_size: must not be negative");
  if (page_size == 0)
    page_size = PAGE_SIZE_DEFAULT;
  if (page_size > PAGE_SIZE_MAX)
    page_size = PAGE_SIZE_MAX;
  char after[192] = "";
  if (token != NULL && token[0] != '\0' &&
      page_token_decode(kind, token, after, sizeof(after), err) != 0)
    return -1;
  char selbuf[1024];
  struct store_label_req reqs[SELECTOR_MAX];
  size_t n_reqs = 0;
  if (selector != NULL && selector[0] != '\0') {
    if (strlen(selector) >= sizeof(selbuf))
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "label_selector: too long");
    strcpy(selbuf, selector);
    if (selector_parse(selbuf, reqs, &n_reqs, err) != 0)
      return -1;
  }

  struct store_query q = {
      .kind = kind->kind,
      .after_name = after[0] ? after : NULL,
      .limit = page_size + 1,
      .labels = reqs,
      .n_labels = n_reqs,
      .has_expire_before = expiring != NULL,
      .expire_before_us =
          expiring ? pb_timestamp_us((const Google__Protobuf__Timestamp *)expiring) : 0,
  };
  struct store_txn *txn;
  struct store_row *rows = NULL;
  size_t n = 0;
  if (store_begin(b->api->store, 0, &txn, err) != 0)
    return -1;
  int rc = store_list(txn, &q, &rows, &n, err);
  store_rollback(txn);
  if (rc != 0)
    return -1;

  size_t shown = n > (size_t)page_size ? (size_t)page_size : n;
  ProtobufCMessage *out = malloc(out_desc->sizeof_message);
  ProtobufCMessage **items = calloc(shown ? shown : 1, sizeof(*items));
  if (out == NULL || items == NULL) {
    free(out);
    free(items);
    store_rows_free(rows, n);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  out_desc->message_init(out);
  const ProtobufCFieldDescriptor *f_items = protobuf_c_message_descriptor_get_field(out_desc, 1);
  *(size_t *)((char *)out + f_items->quantifier_offset) = shown;
  *(ProtobufCMessage ***)pb_member(out, f_items) = items;
  for (size_t i = 0; i < shown; i++) {
    items[i] = api_decode_row(kind, &rows[i], err);
    if (items[i] == NULL) {
      *(size_t *)((char *)out + f_items->quantifier_offset) = i;
      protobuf_c_message_free_unpacked(out, NULL);
      store_rows_free(rows, n);
      return -1;
    }
    if (kind->decorate != NULL)
      kind->decorate(b->api, items[i]);
  }
  if (n > shown) {
    char *next = api_token_encode(rows[shown - 1].name);
    pb_string_set(out, "next_page_token", next ? next : "");
    free(next);
  }
  store_rows_free(rows, n);
  *resp = out;
  return 0;
}

struct update_args {
  const ProtobufCMessage *in; /* the request's resource */
  const char *name;
  const ProtobufCFieldDescriptor *const *fields; /* to replace */
  size_t n_fields;
};

/* The stored version with the fields of the mask replaced from the
 * request's. */
static int build_update(struct api_op *op, struct attempt *a, ProtobufCMessage **res,
                        struct tp_err *err, const void *data) {
  const struct update_args *u = data;
  const struct api_kind *kind = op->kind;
  /* A new secret in the request replaces the stored one, unread. */
  int with_secret = 1;
  for (size_t i = 0; i < u->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = u->fields[i];
    if (!is_listed(kind->secret_fields, f->name))
      continue;
    const void *v = pb_member(u->in, f);
    if ((f->type == PROTOBUF_C_TYPE_STRING && (*(char *const *)v)[0] != '\0') ||
        (f->type == PROTOBUF_C_TYPE_BYTES && ((const ProtobufCBinaryData *)v)->len > 0))
      with_secret = 0;
  }
  if (api_read(op->txn, kind, u->name, with_secret, &a->old, &a->old_row, err) != 0)
    return -1;
  op->old = a->old;
  op->old_row = &a->old_row;
  if (kind->check_mutable != NULL && kind->check_mutable(a->old, err) != 0)
    return -1;
  ProtobufCMessage *incoming = pb_clone(u->in);
  *res = pb_clone(a->old);
  if (*res == NULL || incoming == NULL) {
    if (incoming != NULL)
      protobuf_c_message_free_unpacked(incoming, NULL);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  clear_output_fields(kind, *res);
  for (size_t i = 0; i < u->n_fields; i++)
    pb_field_swap(*res, incoming, u->fields[i]);
  protobuf_c_message_free_unpacked(incoming, NULL);
  return 0;
}

static int rpc_update(const struct rpc_call_info *call, const ProtobufCMessage *req,
                      ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const struct api_kind *kind = b->kind;
  if (kind->read_only)
    return tp_err_set(err, GRPC_STATUS_UNIMPLEMENTED, "%s resources are written by the server",
                      kind->kind);
  const ProtobufCMessage *in = pb_message_get(req, kind->resource_field);
  if (in == NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: required", kind->resource_field);
  char name_field[96];
  snprintf(name_field, sizeof(name_field), "%s.name", kind->resource_field);
  const char *name = pb_string_get(in, "name");
  if (api_name_check(kind, name, name_field, err) != 0)
    return -1;

  /* The fields to replace. */
  const Google__Protobuf__FieldMask *mask =
      (const Google__Protobuf__FieldMask *)pb_message_get(req, "update_mask");
  const ProtobufCFieldDescriptor *fields[64];
  size_t n_fields = 0;
  if (mask != NULL && mask->n_paths > 0) {
    for (size_t i = 0; i < mask->n_paths; i++) {
      char *path = pb_snake_case(mask->paths[i]);
      const ProtobufCFieldDescriptor *f = path ? pb_field(kind->desc, path) : NULL;
      int ok = f != NULL && (strcmp(path, "labels") == 0 || is_listed(kind->mutable_fields, path));
      free(path);
      if (!ok)
        return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                          "update_mask: \"%s\" is not a field of %s that can be updated",
                          mask->paths[i], kind->kind);
      /* A field named twice would be swapped in and back out again. */
      for (size_t j = 0; j < n_fields; j++)
        if (fields[j] == f)
          return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                            "update_mask: \"%s\" names the field %s a second time", mask->paths[i],
                            f->name);
      if (n_fields == sizeof(fields) / sizeof(fields[0]))
        return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "update_mask: too many paths");
      fields[n_fields++] = f;
    }
  } else {
    fields[n_fields++] = pb_field(kind->desc, "labels");
    for (size_t i = 0; kind->mutable_fields[i] != NULL; i++)
      fields[n_fields++] = pb_field(kind->desc, kind->mutable_fields[i]);
  }

  struct update_args u = {.in = in, .name = name, .fields = fields, .n_fields = n_fields};
  return write_checked(b, call, build_update, &u, pb_string_get(in, "etag"), "update", resp, err);
}

static int rpc_delete(const struct rpc_call_info *call, const ProtobufCMessage *req,
                      ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const struct api_kind *kind = b->kind;
  const char *name = pb_string_get(req, "name");
  if (api_name_check(kind, name, "name", err) != 0)
    return -1;
  struct store_txn *txn;
  if (store_begin(b->api->store, 1, &txn, err) != 0)
    return -1;
  ProtobufCMessage *old = NULL;
  int rc = api_read(txn, kind, name, 0, &old, NULL, err);
  if (rc == 0 && kind->check_mutable != NULL)
    rc = kind->check_mutable(old, err);
  if (rc == 0 && kind->deleting != NULL) {
    struct api_op op = {.api = b->api, .kind = kind, .txn = txn, .call = call, .now = time(NULL)};
    rc = kind->deleting(&op, old, err);
  }
  if (rc == 0)
    rc = store_delete(txn, kind->kind, name, pb_string_get(req, "etag"), call->actor, call->method,
                      err);
  if (old != NULL)
    protobuf_c_message_free_unpacked(old, NULL);
  if (finish(txn, rc, err) != 0)
    return -1;
  if (kind->deleted != NULL)
    kind->deleted(b->api, name);
  Google__Protobuf__Empty *empty = malloc(sizeof(*empty));
  if (empty == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  google__protobuf__empty__init(empty);
  *resp = &empty->base;
  return 0;
}

void api_audit_log(const struct store_audit *rows, size_t n, size_t more, void *data) {
  /* Names are checked before they are written, actors and methods are
   * not all the server's own words (a certificate's subject): escaped. */
  for (size_t i = 0; i < n; i++) {
    char resource[LOG_ESCAPE_LEN], actor[LOG_ESCAPE_LEN], method[LOG_ESCAPE_LEN];
    log_info("api", "committed revision=%lld: action=%s resource=\"%s\" actor=\"%s\" method=\"%s\"",
             (long long)rows[i].revision, rows[i].action,
             log_escape_str(resource, sizeof(resource), rows[i].resource),
             log_escape_str(actor, sizeof(actor), rows[i].actor),
             log_escape_str(method, sizeof(method), rows[i].method));
  }
  if (more > 0)
    log_info("api", "committed revision=%lld: %zu more writes (the audit trail has them all)",
             n > 0 ? (long long)rows[0].revision : 0LL, more);
}

void api_last_used_decorate(struct api *api, const struct api_kind *kind, ProtobufCMessage *res) {
  struct tp_err err = {0};
  struct store_txn *txn;
  const char *name = pb_string_get(res, "name");
  int64_t stored = 0, noted = api->usage ? usage_last(api->usage, kind->kind, name) : 0;
  if (store_begin(api->store, 0, &txn, &err) == 0) {
    if (store_usage_get(txn, kind->kind, name, &stored, &err) != 0)
      stored = 0;
    store_rollback(txn);
  }
  int64_t last = noted > stored ? noted : stored;
  if (last > 0)
    pb_timestamp_set(res, "last_used_time", last);
}

void api_usage_note(struct api *api, const struct api_kind *kind, const char *name,
                    int64_t time_us) {
  if (api->usage != NULL)
    usage_note(api->usage, kind->kind, name, time_us);
}

static int starts_with(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

int api_service_register(struct api *api, struct rpc_server *srv,
                         const ProtobufCServiceDescriptor *svc, const struct api_kind *kind,
                         const struct api_method *custom) {
  const size_t max = sizeof(api->bindings) / sizeof(api->bindings[0]);
  if (api->n_bindings == max)
    return -1;
  struct api_binding *b = &api->bindings[api->n_bindings++];
  *b = (struct api_binding){.api = api, .kind = kind};
  for (unsigned i = 0; i < svc->n_methods; i++) {
    const ProtobufCMethodDescriptor *m = &svc->methods[i];
    char path[256];
    snprintf(path, sizeof(path), "/%s/%s", svc->name, m->name);
    rpc_unary_fn fn = NULL;
    void *data = b;
    for (size_t j = 0; custom != NULL && custom[j].name != NULL; j++)
      if (strcmp(custom[j].name, m->name) == 0)
        fn = custom[j].fn;
    if (fn == NULL && kind != NULL) {
      if (starts_with(m->name, "Create"))
        fn = rpc_create;
      else if (starts_with(m->name, "Get"))
        fn = rpc_get;
      else if (starts_with(m->name, "Update"))
        fn = rpc_update;
      else if (starts_with(m->name, "Delete"))
        fn = rpc_delete;
      else if (starts_with(m->name, "List")) {
        if (api->n_bindings == max)
          return -1;
        struct api_binding *lb = &api->bindings[api->n_bindings++];
        *lb = (struct api_binding){.api = api, .kind = kind, .list_output = m->output};
        data = lb;
        fn = rpc_list;
      }
    }
    if (fn == NULL)
      continue; /* the server core answers UNIMPLEMENTED */
    /* Writes by the rule auth.c's table uses: all but Get* and List*. */
    int write = !starts_with(m->name, "Get") && !starts_with(m->name, "List");
    if ((write ? rpc_server_add_write : rpc_server_add_unary)(srv, path, m->input, m->output, fn,
                                                              data) != 0)
      return -1;
  }
  return 0;
}
