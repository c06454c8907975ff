/* Generic protobuf-c helpers: field access through message descriptors,
 * deep copies, timestamps, labels maps.
 *
 * Every message these functions produce is heap-allocated with all its
 * members malloc'd; free it with protobuf_c_message_free_unpacked(msg, NULL). */
#ifndef TLSPLANE_COMMON_PB_H
#define TLSPLANE_COMMON_PB_H

#include <protobuf-c/protobuf-c.h>
#include <stdint.h>

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

/* Sets a Timestamp sub-message field from microseconds since the epoch
 * (replacing any previous value). */
int pb_timestamp_set(ProtobufCMessage *msg, const char *name, int64_t us);
Google__Protobuf__Timestamp *pb_timestamp_new(int64_t us);
/* Microseconds since the epoch of a Timestamp (0 for NULL). */
int64_t pb_timestamp_us(const Google__Protobuf__Timestamp *ts);
/* The current time (CLOCK_REALTIME) in microseconds since the epoch: the
 * clock every Timestamp a client sees or sets is compared with, so that an
 * expiry set to now + ttl lasts ttl, not ttl minus the part of the second
 * already gone. */
int64_t pb_now_us(void);

Google__Protobuf__Duration *pb_duration_new(int64_t seconds);
/* Milliseconds of a Duration (-1 for NULL). */
int64_t pb_duration_ms(const Google__Protobuf__Duration *d);

/* map<string,string> fields: entries are messages with key (1) and value (2). */
size_t pb_map_size(const ProtobufCMessage *msg, const char *name);
void pb_map_entry(const ProtobufCMessage *msg, const char *name, size_t i, const char **key,
                  const char **value);

/* Converts a lowerCamelCase path to snake_case (a copy; caller frees). */
char *pb_snake_case(const char *path);

#endif
