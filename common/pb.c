/* Generic protobuf-c helpers. protobuf-c keeps no reflection API beyond its
 * descriptors, so field access goes through the offsets they record. */
#include "pb.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

ProtobufCMessage *pb_clone(const ProtobufCMessage *msg) {
  uint8_t *buf;
  size_t len;
  if (pb_pack(msg, &buf, &len) != 0)
    return NULL;
  ProtobufCMessage *copy = protobuf_c_message_unpack(msg->descriptor, NULL, len, buf);
  free(buf);
  return copy;
}

int pb_pack(const ProtobufCMessage *msg, uint8_t **buf, size_t *len) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  uint8_t *b = malloc(n ? n : 1);
  if (b == NULL)
    return -1;
  protobuf_c_message_pack(msg, b);
  *buf = b;
  *len = n;
  return 0;
}

const ProtobufCFieldDescriptor *pb_field(const ProtobufCMessageDescriptor *desc, const char *name) {
  return protobuf_c_message_descriptor_get_field_by_name(desc, name);
}

void *pb_member(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f) {
  return (char *)msg + f->offset;
}

const char *pb_string_get(const ProtobufCMessage *msg, const char *name) {
  const ProtobufCFieldDescriptor *f = pb_field(msg->descriptor, name);
  if (f == NULL || f->type != PROTOBUF_C_TYPE_STRING || f->label == PROTOBUF_C_LABEL_REPEATED)
    return NULL;
  const char *s = *(char **)pb_member(msg, f);
  return s ? s : "";
}

int pb_string_set(ProtobufCMessage *msg, const char *name, const char *value) {
  const ProtobufCFieldDescriptor *f = pb_field(msg->descriptor, name);
  if (f == NULL || f->type != PROTOBUF_C_TYPE_STRING || f->label == PROTOBUF_C_LABEL_REPEATED)
    return -1;
  char *copy = strdup(value ? value : "");
  if (copy == NULL)
    return -1;
  pb_field_clear(msg, f);
  *(char **)pb_member(msg, f) = copy;
  return 0;
}

ProtobufCMessage *pb_message_get(const ProtobufCMessage *msg, const char *name) {
  const ProtobufCFieldDescriptor *f = pb_field(msg->descriptor, name);
  if (f == NULL || f->type != PROTOBUF_C_TYPE_MESSAGE || f->label == PROTOBUF_C_LABEL_REPEATED)
    return NULL;
  return *(ProtobufCMessage **)pb_member(msg, f);
}

size_t pb_type_size(ProtobufCType type) {
  switch (type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
  case PROTOBUF_C_TYPE_FLOAT:
  case PROTOBUF_C_TYPE_ENUM:
    return 4;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
  case PROTOBUF_C_TYPE_DOUBLE:
    return 8;
  case PROTOBUF_C_TYPE_BOOL:
    return sizeof(protobuf_c_boolean);
  case PROTOBUF_C_TYPE_STRING:
    return sizeof(char *);
  case PROTOBUF_C_TYPE_BYTES:
    return sizeof(ProtobufCBinaryData);
  case PROTOBUF_C_TYPE_MESSAGE:
    return sizeof(ProtobufCMessage *);
  }
  return 0;
}

static void swap_bytes(void *a, void *b, size_t n) {
  unsigned char tmp[sizeof(ProtobufCBinaryData) > 8 ? sizeof(ProtobufCBinaryData) : 8];
  memcpy(tmp, a, n);
  memcpy(a, b, n);
  memcpy(b, tmp, n);
}

void pb_field_swap(ProtobufCMessage *a, ProtobufCMessage *b, const ProtobufCFieldDescriptor *f) {
  if (f->label == PROTOBUF_C_LABEL_REPEATED) {
    swap_bytes((char *)a + f->quantifier_offset, (char *)b + f->quantifier_offset, sizeof(size_t));
    swap_bytes(pb_member(a, f), pb_member(b, f), sizeof(void *));
    return;
  }
  if (f->quantifier_offset != 0) {
    /* proto2 optional "has_" flag, or the case member of a oneof. */
    size_t qsize =
        (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ? sizeof(uint32_t) : sizeof(protobuf_c_boolean);
    swap_bytes((char *)a + f->quantifier_offset, (char *)b + f->quantifier_offset, qsize);
  }
  swap_bytes(pb_member(a, f), pb_member(b, f), pb_type_size(f->type));
}

void pb_field_clear(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f) {
  const ProtobufCMessageDescriptor *desc = msg->descriptor;
  ProtobufCMessage *blank = malloc(desc->sizeof_message);
  if (blank == NULL)
    abort();
  desc->message_init(blank);
  pb_field_swap(msg, blank, f);
  protobuf_c_message_free_unpacked(blank, NULL);
}

Google__Protobuf__Timestamp *pb_timestamp_new(int64_t us) {
  Google__Protobuf__Timestamp *ts = malloc(sizeof(*ts));
  if (ts == NULL)
    return NULL;
  google__protobuf__timestamp__init(ts);
  int64_t sec = us / 1000000, rem = us % 1000000;
  if (rem < 0) {
    rem += 1000000;
    sec -= 1;
  }
  ts->seconds = sec;
  ts->nanos = (int32_t)(rem * 1000);
  return ts;
}

int pb_timestamp_set(ProtobufCMessage *msg, const char *name, int64_t us) {
  const ProtobufCFieldDescriptor *f = pb_field(msg->descriptor, name);
  if (f == NULL || f->type != PROTOBUF_C_TYPE_MESSAGE ||
      f->descriptor != &google__protobuf__timestamp__descriptor)
    return -1;
  Google__Protobuf__Timestamp *ts = pb_timestamp_new(us);
  if (ts == NULL)
    return -1;
  pb_field_clear(msg, f);
  *(Google__Protobuf__Timestamp **)pb_member(msg, f) = ts;
  return 0;
}

int64_t pb_timestamp_us(const Google__Protobuf__Timestamp *ts) {
  if (ts == NULL)
    return 0;
  return pb_sat_add(pb_sat_mul(ts->seconds, 1000000), ts->nanos / 1000);
}

int64_t pb_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

Google__Protobuf__Duration *pb_duration_new(int64_t seconds) {
  Google__Protobuf__Duration *d = malloc(sizeof(*d));
  if (d == NULL)
    return NULL;
  google__protobuf__duration__init(d);
  d->seconds = seconds;
  return d;
}

int64_t pb_duration_ms(const Google__Protobuf__Duration *d) {
  if (d == NULL)
    return -1;
  return pb_sat_add(pb_sat_mul(d->seconds, 1000), d->nanos / 1000000);
}

int pb_is_map_field(const ProtobufCMessageDescriptor *owner, const ProtobufCFieldDescriptor *f) {
  if (f->label != PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_MESSAGE)
    return 0;
  const ProtobufCMessageDescriptor *e = f->descriptor;
  if (e == NULL || e->n_fields != 2 || e->fields[0].id != 1 || e->fields[1].id != 2 ||
      strcmp(e->fields[0].name, "key") != 0 || strcmp(e->fields[1].name, "value") != 0 ||
      e->fields[0].label == PROTOBUF_C_LABEL_REPEATED ||
      e->fields[1].label == PROTOBUF_C_LABEL_REPEATED)
    return 0;
  switch (e->fields[0].type) {
  case PROTOBUF_C_TYPE_FLOAT:
  case PROTOBUF_C_TYPE_DOUBLE:
  case PROTOBUF_C_TYPE_ENUM:
  case PROTOBUF_C_TYPE_BYTES:
  case PROTOBUF_C_TYPE_MESSAGE:
    return 0;
  default:
    break;
  }
  /* e->name must be owner->name + "." + MapEntryName(f->name). */
  size_t on = strlen(owner->name);
  if (strncmp(e->name, owner->name, on) != 0 || e->name[on] != '.')
    return 0;
  const char *s = e->name + on + 1;
  int up = 1;
  for (const char *p = f->name; *p; p++) {
    if (*p == '_') {
      up = 1;
      continue;
    }
    char c = up && *p >= 'a' && *p <= 'z' ? (char)(*p - 'a' + 'A') : *p;
    if (*s++ != c)
      return 0;
    up = 0;
  }
  return strcmp(s, "Entry") == 0;
}

size_t pb_map_size(const ProtobufCMessage *msg, const char *name) {
  const ProtobufCFieldDescriptor *f = pb_field(msg->descriptor, name);
  if (f == NULL || f->label != PROTOBUF_C_LABEL_REPEATED)
    return 0;
  return *(size_t *)((char *)msg + f->quantifier_offset);
}

void pb_map_entry(const ProtobufCMessage *msg, const char *name, size_t i, const char **key,
                  const char **value) {
  const ProtobufCFieldDescriptor *f = pb_field(msg->descriptor, name);
  ProtobufCMessage *entry = (*(ProtobufCMessage ***)pb_member(msg, f))[i];
  *key = pb_string_get(entry, "key");
  *value = pb_string_get(entry, "value");
}

int pb_map_borrow(ProtobufCMessage *dst, const char *map_dst, const ProtobufCMessage *src,
                  const char *map_src, void **mem) {
  *mem = NULL;
  const ProtobufCFieldDescriptor *f = pb_field(dst->descriptor, map_dst);
  if (f == NULL || !pb_is_map_field(dst->descriptor, f))
    return -1;
  const ProtobufCMessageDescriptor *ed = f->descriptor;
  const ProtobufCFieldDescriptor *fk = pb_field(ed, "key"), *fv = pb_field(ed, "value");
  if (fk == NULL || fv == NULL || fk->type != PROTOBUF_C_TYPE_STRING ||
      fv->type != PROTOBUF_C_TYPE_STRING)
    return -1;
  size_t n = pb_map_size(src, map_src);
  /* n pointers, then n entries, each aligned as a pointer is. */
  size_t entry = (ed->sizeof_message + sizeof(void *) - 1) / sizeof(void *) * sizeof(void *);
  char *block = calloc(1, n * (sizeof(void *) + entry) + 1);
  if (block == NULL)
    return -1;
  ProtobufCMessage **ptrs = (ProtobufCMessage **)block;
  for (size_t i = 0; i < n; i++) {
    ProtobufCMessage *e = (ProtobufCMessage *)(block + n * sizeof(void *) + i * entry);
    protobuf_c_message_init(ed, e);
    const char *k, *v;
    pb_map_entry(src, map_src, i, &k, &v);
    *(const char **)pb_member(e, fk) = k;
    *(const char **)pb_member(e, fv) = v;
    ptrs[i] = e;
  }
  *(size_t *)((char *)dst + f->quantifier_offset) = n;
  *(ProtobufCMessage ***)pb_member(dst, f) = ptrs;
  *mem = block;
  return 0;
}

int pb_map_equal(const ProtobufCMessage *a, const char *map_a, const ProtobufCMessage *b,
                 const char *map_b) {
  size_t n = pb_map_size(a, map_a);
  if (n != pb_map_size(b, map_b))
    return 0;
  for (size_t i = 0; i < n; i++) {
    const char *k, *v, *k2, *v2;
    pb_map_entry(a, map_a, i, &k, &v);
    size_t j = 0;
    for (; j < n; j++) {
      pb_map_entry(b, map_b, j, &k2, &v2);
      if (strcmp(k, k2) == 0)
        break;
    }
    if (j == n || strcmp(v, v2) != 0)
      return 0;
  }
  return 1;
}

char *pb_snake_case(const char *path) {
  size_t n = strlen(path), upper = 0;
  for (size_t i = 0; i < n; i++)
    upper += isupper((unsigned char)path[i]) != 0;
  char *out = malloc(n + upper + 1), *p = out;
  if (out == NULL)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)path[i];
    if (isupper(c)) {
      *p++ = '_';
      *p++ = (char)tolower(c);
    } else {
      *p++ = (char)c;
    }
  }
  *p = '\0';
  return out;
}

/* --- Integer time arithmetic ------------------------------------------- */

int64_t pb_sat_add(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r))
    return b > 0 ? INT64_MAX : INT64_MIN;
  return r;
}

int64_t pb_sat_mul(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r))
    return (a < 0) != (b < 0) ? INT64_MIN : INT64_MAX;
  return r;
}

/* --- UTF-8 --------------------------------------------------------------- */

size_t pb_utf8_seq(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  if (n == 0)
    return 0;
  uint32_t c = p[0], min;
  size_t len;
  if (c < 0x80)
    return 1;
  if ((c & 0xE0) == 0xC0) {
    len = 2, min = 0x80, c &= 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3, min = 0x800, c &= 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4, min = 0x10000, c &= 0x07;
  } else {
    return 0;
  }
  if (n < len)
    return 0;
  for (size_t i = 1; i < len; i++) {
    if ((p[i] & 0xC0) != 0x80)
      return 0;
    c = (c << 6) | (p[i] & 0x3F);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
    return 0;
  return len;
}

int pb_utf8_valid(const char *s, size_t n, size_t *bad) {
  size_t i = 0;
  while (i < n) {
    /* ASCII runs are the common case. */
    if ((unsigned char)s[i] < 0x80) {
      i++;
      continue;
    }
    size_t len = pb_utf8_seq(s + i, n - i);
    if (len == 0) {
      if (bad != NULL)
        *bad = i;
      return 0;
    }
    i += len;
  }
  return 1;
}

/* --- Walking every value of a message ---------------------------------- */

size_t pb_path_push(struct pb_path *p, const char *fmt, ...) {
  size_t saved = p->len;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(p->buf + p->len, sizeof(p->buf) - p->len, fmt, ap);
  va_end(ap);
  if (n > 0)
    p->len += (size_t)n;
  if (p->len >= sizeof(p->buf))
    p->len = sizeof(p->buf) - 1;
  return saved;
}

void pb_path_pop(struct pb_path *p, size_t saved) {
  p->len = saved;
  p->buf[saved] = '\0';
}

/* The walk behind pb_input_check (check: err set on the first bad value)
 * and pb_times_clamp (clamp: values changed and counted). path is the
 * field path of the value being visited. */
struct walk {
  struct tp_err *err; /* check */
  int clamp;
  size_t clamped;
  char *first; /* clamp: the first clamped value's path (may be NULL) */
  size_t first_len;
  struct pb_path path;
};

static int walk_fail(struct walk *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int walk_fail(struct walk *w, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  return tp_err_set(w->err, GRPC_STATUS_INVALID_ARGUMENT, "%s: %s",
                    w->path.len ? w->path.buf : "request", msg);
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int walk_string(struct walk *w, const ProtobufCFieldDescriptor *f, const char *s) {
  if (w->clamp || s == NULL)
    return 0;
  size_t n = strlen(s), bad;
  if (n > PB_STRING_MAX && !ends_with(f->name, "_pem"))
    return walk_fail(w, "%zu bytes long, at most %d", n, PB_STRING_MAX);
  if (!pb_utf8_valid(s, n, &bad))
    return walk_fail(w, "not valid UTF-8 (at byte %zu)", bad);
  return 0;
}

static void clamped(struct walk *w) {
  if (w->clamped++ == 0 && w->first != NULL)
    snprintf(w->first, w->first_len, "%s", w->path.buf);
}

static int walk_timestamp(struct walk *w, Google__Protobuf__Timestamp *ts) {
  if (w->clamp) {
    Google__Protobuf__Timestamp was = *ts;
    if (ts->seconds < PB_TIMESTAMP_MIN_S)
      ts->seconds = PB_TIMESTAMP_MIN_S, ts->nanos = 0;
    else if (ts->seconds > PB_TIMESTAMP_MAX_S)
      ts->seconds = PB_TIMESTAMP_MAX_S, ts->nanos = PB_NANOS_MAX;
    if (ts->nanos < 0)
      ts->nanos = 0;
    else if (ts->nanos > PB_NANOS_MAX)
      ts->nanos = PB_NANOS_MAX;
    if (ts->seconds != was.seconds || ts->nanos != was.nanos)
      clamped(w);
    return 0;
  }
  if (ts->seconds < PB_TIMESTAMP_MIN_S || ts->seconds > PB_TIMESTAMP_MAX_S)
    return walk_fail(w,
                     "seconds %" PRId64 " is outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z "
                     "(%" PRId64 "..%" PRId64 ")",
                     ts->seconds, PB_TIMESTAMP_MIN_S, PB_TIMESTAMP_MAX_S);
  if (ts->nanos < 0 || ts->nanos > PB_NANOS_MAX)
    return walk_fail(w, "nanos %" PRId32 " is outside 0..%d", ts->nanos, PB_NANOS_MAX);
  return 0;
}

static int walk_duration(struct walk *w, Google__Protobuf__Duration *d) {
  if (w->clamp) {
    Google__Protobuf__Duration was = *d;
    if (d->seconds < -PB_DURATION_MAX_S)
      d->seconds = -PB_DURATION_MAX_S, d->nanos = 0;
    else if (d->seconds > PB_DURATION_MAX_S)
      d->seconds = PB_DURATION_MAX_S, d->nanos = 0;
    if (d->nanos < -PB_NANOS_MAX)
      d->nanos = -PB_NANOS_MAX;
    else if (d->nanos > PB_NANOS_MAX)
      d->nanos = PB_NANOS_MAX;
    if ((d->seconds > 0 && d->nanos < 0) || (d->seconds < 0 && d->nanos > 0))
      d->nanos = 0;
    if (d->seconds != was.seconds || d->nanos != was.nanos)
      clamped(w);
    return 0;
  }
  if (d->seconds < -PB_DURATION_MAX_S || d->seconds > PB_DURATION_MAX_S)
    return walk_fail(w, "seconds %" PRId64 " is outside -%" PRId64 "..%" PRId64, d->seconds,
                     PB_DURATION_MAX_S, PB_DURATION_MAX_S);
  if (d->nanos < -PB_NANOS_MAX || d->nanos > PB_NANOS_MAX)
    return walk_fail(w, "nanos %" PRId32 " is outside -%d..%d", d->nanos, PB_NANOS_MAX,
                     PB_NANOS_MAX);
  if ((d->seconds > 0 && d->nanos < 0) || (d->seconds < 0 && d->nanos > 0))
    return walk_fail(w, "seconds and nanos have opposite signs");
  return 0;
}

static int walk_message(struct walk *w, ProtobufCMessage *m);

static int walk_value(struct walk *w, const ProtobufCFieldDescriptor *f, void *v) {
  if (f->type == PROTOBUF_C_TYPE_STRING)
    return walk_string(w, f, *(char **)v);
  if (f->type != PROTOBUF_C_TYPE_MESSAGE || *(ProtobufCMessage **)v == NULL)
    return 0;
  ProtobufCMessage *sub = *(ProtobufCMessage **)v;
  if (sub->descriptor == &google__protobuf__timestamp__descriptor)
    return walk_timestamp(w, (Google__Protobuf__Timestamp *)sub);
  if (sub->descriptor == &google__protobuf__duration__descriptor)
    return walk_duration(w, (Google__Protobuf__Duration *)sub);
  return walk_message(w, sub);
}

/* A map entry: the key (a string key is checked as such) names the value
 * in the path when it is printable. */
static int walk_map_entry(struct walk *w, const ProtobufCFieldDescriptor *f, size_t i,
                          ProtobufCMessage *entry) {
  const ProtobufCFieldDescriptor *kf = &entry->descriptor->fields[0];
  const ProtobufCFieldDescriptor *vf = &entry->descriptor->fields[1];
  size_t saved;
  int rc = 0;
  if (kf->type == PROTOBUF_C_TYPE_STRING) {
    const char *key = *(char **)pb_member(entry, kf);
    saved = pb_path_push(&w->path, "%s%s", w->path.len ? "." : "", f->name);
    rc = walk_string(w, kf, key);
    pb_path_pop(&w->path, saved);
    if (rc != 0)
      return rc;
    size_t n = key ? strlen(key) : 0;
    if (n <= 64)
      saved =
          pb_path_push(&w->path, "%s%s[\"%s\"]", w->path.len ? "." : "", f->name, key ? key : "");
    else
      saved = pb_path_push(&w->path, "%s%s[%zu]", w->path.len ? "." : "", f->name, i);
  } else {
    saved = pb_path_push(&w->path, "%s%s[%zu]", w->path.len ? "." : "", f->name, i);
  }
  rc = walk_value(w, vf, pb_member(entry, vf));
  pb_path_pop(&w->path, saved);
  return rc;
}

static int walk_message(struct walk *w, ProtobufCMessage *m) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
      continue;
    if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
        *(uint32_t *)((char *)m + f->quantifier_offset) != f->id)
      continue; /* another member of the oneof is set */
    int rc = 0;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(size_t *)((char *)m + f->quantifier_offset);
      char *arr = *(char **)pb_member(m, f);
      size_t step = pb_type_size(f->type);
      int map = pb_is_map_field(d, f);
      for (size_t j = 0; rc == 0 && arr != NULL && j < n; j++) {
        if (map && *(ProtobufCMessage **)(arr + j * step) != NULL) {
          rc = walk_map_entry(w, f, j, *(ProtobufCMessage **)(arr + j * step));
          continue;
        }
        size_t saved = pb_path_push(&w->path, "%s%s[%zu]", w->path.len ? "." : "", f->name, j);
        rc = walk_value(w, f, arr + j * step);
        pb_path_pop(&w->path, saved);
      }
    } else {
      size_t saved = pb_path_push(&w->path, "%s%s", w->path.len ? "." : "", f->name);
      rc = walk_value(w, f, pb_member(m, f));
      pb_path_pop(&w->path, saved);
    }
    if (rc != 0)
      return rc;
  }
  return 0;
}

int pb_input_check(const ProtobufCMessage *msg, struct tp_err *err) {
  struct walk w = {.err = err};
  /* The check only reads: the walk is shared with pb_times_clamp. */
  return walk_message(&w, (ProtobufCMessage *)msg);
}

size_t pb_times_clamp(ProtobufCMessage *msg, char *path, size_t path_len) {
  struct walk w = {.clamp = 1, .first = path, .first_len = path_len};
  if (path != NULL && path_len > 0)
    path[0] = '\0';
  walk_message(&w, msg);
  return w.clamped;
}
