/* Generic protobuf-c helpers: field access through message descriptors,
 * deep copies, timestamps, labels maps.
 *
 * Every message these functions produce is heap-allocated with all its
 * members malloc'd; free it with protobuf_c_message_free_unpacked(msg, NULL). */
#ifndef TLSPLANE_COMMON_PB_H
#define TLSPLANE_COMMON_PB_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"

/* A deep copy of msg (pack + unpack). NULL on allocation failure. */
ProtobufCMessage *pb_clone(const ProtobufCMessage *msg);

/* Packs msg into a malloc'd buffer. Caller frees *buf. */
int pb_pack(const ProtobufCMessage *msg, uint8_t **buf, size_t *len);

/* The field descriptor called name, or NULL. */
const ProtobufCFieldDescriptor *pb_field(const ProtobufCMessageDescriptor *desc, const char *name);

/* Pointer to the member that holds field f inside msg. */
void *pb_member(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f);

/* A string field's value ("" when unset); NULL if there is no such field. */
const char *pb_string_get(const ProtobufCMessage *msg, const char *name);
/* Replaces a string field's value with a copy of value. */
int pb_string_set(ProtobufCMessage *msg, const char *name, const char *value);

/* A sub-message field's value (may be NULL), or NULL if no such field. */
ProtobufCMessage *pb_message_get(const ProtobufCMessage *msg, const char *name);

/* Bytes a value of this type occupies in a message (one element of a
 * repeated field, or the member of a singular one). */
size_t pb_type_size(ProtobufCType type);

/* Swaps the storage of field f between two messages of the same type (the
 * value, its presence flag and, for repeated fields, the count). Both
 * messages stay valid for protobuf_c_message_free_unpacked. */
void pb_field_swap(ProtobufCMessage *a, ProtobufCMessage *b, const ProtobufCFieldDescriptor *f);

/* Frees field f's value and resets it to its default. */
void pb_field_clear(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f);

/* protobuf's own ranges for the well-known types (timestamp.proto,
 * duration.proto). Within them, µs since the epoch and ms of a duration
 * fit an int64 many times over. */
#define PB_TIMESTAMP_MIN_S INT64_C(-62135596800) /* 0001-01-01T00:00:00Z */
#define PB_TIMESTAMP_MAX_S INT64_C(253402300799) /* 9999-12-31T23:59:59Z */
#define PB_DURATION_MAX_S INT64_C(315576000000)  /* +-10,000 years */
#define PB_NANOS_MAX 999999999

/* The longest value a client may send in a string field: every string
 * field but PEM text (fields named *_pem, bounded by the message size and
 * by the checks of their own kind). In bytes. */
#define PB_STRING_MAX 2048

/* The path of the value being worked on in a message, for error messages
 * ("listeners[0].listener.address"). Pushes return the length to pop back
 * to; a path too long to fit is cut short, which only shortens the
 * message. */
struct pb_path {
  size_t len;
  char buf[512];
};
size_t pb_path_push(struct pb_path *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void pb_path_pop(struct pb_path *p, size_t saved);

/* a + b and a * b, saturated at INT64_MIN / INT64_MAX instead of
 * overflowing. */
int64_t pb_sat_add(int64_t a, int64_t b);
int64_t pb_sat_mul(int64_t a, int64_t b);

/* The length of the well-formed UTF-8 sequence (RFC 3629: no overlong
 * forms, surrogates or code points past U+10FFFF) at s[0..n), 1 to 4; 0
 * when s does not start with one. */
size_t pb_utf8_seq(const char *s, size_t n);
/* Whether s[0..n) is well-formed UTF-8; if not, *bad (may be NULL)
 * receives the offset of the first byte that is not. */
int pb_utf8_valid(const char *s, size_t n, size_t *bad);

/* Checks a message received from a client before anything reads it, over
 * every field of every nested message, repeated field and map: each string
 * is well-formed UTF-8 (proto3 requires it; protobuf-c does not check) and
 * at most PB_STRING_MAX bytes (except *_pem fields); each Timestamp and
 * Duration is within protobuf's range (Timestamp seconds in
 * [0001-01-01, 9999-12-31] and nanos in [0, 1e9); Duration seconds within
 * +-PB_DURATION_MAX_S and nanos of the same sign). Returns 0, or -1 with
 * err set to INVALID_ARGUMENT naming the field by its path from msg
 * ("listener.handshake_timeout: ...", "hello.labels[\"k\"]: ..."). */
int pb_input_check(const ProtobufCMessage *msg, struct tp_err *err);

/* Clamps every Timestamp and Duration inside msg (nested messages,
 * repeated fields and maps) into protobuf's range, so that a value stored
 * before it was checked reads back as the nearest valid one instead of
 * failing every read. Returns how many values it changed; path (may be
 * NULL) receives the first one's field path. */
size_t pb_times_clamp(ProtobufCMessage *msg, char *path, size_t path_len);

/* Sets a Timestamp sub-message field from microseconds since the epoch
 * (replacing any previous value). */
int pb_timestamp_set(ProtobufCMessage *msg, const char *name, int64_t us);
Google__Protobuf__Timestamp *pb_timestamp_new(int64_t us);
/* Microseconds since the epoch of a Timestamp (0 for NULL), saturated
 * rather than overflowing for values out of protobuf's range. */
int64_t pb_timestamp_us(const Google__Protobuf__Timestamp *ts);
/* The current time (CLOCK_REALTIME) in microseconds since the epoch: the
 * clock every Timestamp a client sees or sets is compared with, so that an
 * expiry set to now + ttl lasts ttl, not ttl minus the part of the second
 * already gone. */
int64_t pb_now_us(void);

Google__Protobuf__Duration *pb_duration_new(int64_t seconds);
/* Milliseconds of a Duration (-1 for NULL), saturated rather than
 * overflowing for values out of protobuf's range. */
int64_t pb_duration_ms(const Google__Protobuf__Duration *d);

/* Whether f (a field of owner) is a map field. protobuf-c keeps no
 * map_entry option, so an entry type is recognised by what protoc makes of
 * `map<K, V> foo_bar`: a repeated message FooBarEntry nested in the field's
 * message, with exactly key (1) and value (2), K integral, bool or string. */
int pb_is_map_field(const ProtobufCMessageDescriptor *owner, const ProtobufCFieldDescriptor *f);

/* map<string,string> fields: entries are messages with key (1) and value (2). */
size_t pb_map_size(const ProtobufCMessage *msg, const char *name);
void pb_map_entry(const ProtobufCMessage *msg, const char *name, size_t i, const char **key,
                  const char **value);

/* Points dst's map_dst at entries holding src's map_src keys and values
 * (both map<string,string>, dst's empty), borrowed, not copied: for a
 * message built on the stack from a request. The entries live in one
 * block, *mem, which the caller frees once dst is no longer used (dst is
 * then never passed to protobuf_c_message_free_unpacked). 0, or -1 on OOM
 * or a field that is no such map (dst unchanged, *mem NULL). */
int pb_map_borrow(ProtobufCMessage *dst, const char *map_dst, const ProtobufCMessage *src,
                  const char *map_src, void **mem);
/* Whether map field map_a of a and map_b of b hold the same entries, in
 * any order (keys are unique in each). */
int pb_map_equal(const ProtobufCMessage *a, const char *map_a, const ProtobufCMessage *b,
                 const char *map_b);

/* Converts a lowerCamelCase path to snake_case (a copy; caller frees). */
char *pb_snake_case(const char *path);

#endif
