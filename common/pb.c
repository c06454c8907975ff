/* Generic protobuf-c helpers. protobuf-c keeps no reflection API beyond its
 * descriptors, so field access goes through the offsets they record. */
#include "pb.h"

#include <ctype.h>
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
  return ts->seconds * 1000000 + ts->nanos / 1000;
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
  return d->seconds * 1000 + d->nanos / 1000000;
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
