/* pbjson: protobuf's proto3 JSON mapping over protobuf-c descriptors, the
 * text grpcurl and protojson print. The agent reads its Snapshot from a
 * file in this form; the HTTP gateway speaks it.
 *
 * Mapping (https://protobuf.dev/programming-guides/json/):
 * - Field names are written lowerCamelCase (computed from the proto name,
 *   as protoc does: "handshake_timeout" -> "handshakeTimeout"); on input
 *   both that and the proto name are accepted.
 * - 32-bit integers, float and double are JSON numbers; 64-bit integers
 *   are strings. Input also takes numbers as strings, integral numbers
 *   written with a fraction or exponent ("1e3"), and "NaN", "Infinity",
 *   "-Infinity" for float/double. Enums are written by value name (numbers
 *   for values the schema does not know) and read by name or number.
 *   bytes are standard base64 with padding on output; input takes standard
 *   or URL-safe base64, padded or not, line breaks ignored.
 * - repeated fields are arrays, map fields objects (integer and bool keys
 *   as their decimal / "true" / "false" text), messages objects.
 * - google.protobuf.Timestamp is an RFC 3339 string in UTC with 0, 3, 6
 *   or 9 fraction digits ("2026-11-27T00:00:00Z"; input takes any offset
 *   and 1 to 9 digits), Duration a decimal count of seconds with an "s"
 *   ("1.500s"), the wrappers (BoolValue, Int32Value, ...) the bare wrapped
 *   value, FieldMask a string of comma-separated lowerCamelCase paths
 *   (output) or, on input, also the object form grpcurl sends,
 *   {"paths": ["certificate_chain_pem"]} (proto field names as they are),
 *   Empty {}. Any, Struct, Value and ListValue are refused.
 * - Output omits fields at their default (proto3 implicit presence) and
 *   unset messages, wrappers and oneofs; a set oneof member or wrapper is
 *   written even when its value is the default.
 * - null for a field on input means "leave at its default"; null inside
 *   an array or as a map value is an error.
 *
 * Input is strict by default, as protojson is:
 * - a key that names no field is an error ("unknown field \"foo\" in
 *   tlsplane.v1.Listener"), unless PBJSON_IGNORE_UNKNOWN (which also
 *   skips enum value names the schema does not know);
 * - a key repeated in one object is an error, and so is one field given
 *   under both of its names, or two members of one oneof;
 * - integer map keys must be canonical decimal ("7", not "07" or "+7"), so
 *   that two keys never name one entry;
 * - messages nest at most PBJSON_MAX_DEPTH deep (jansson itself refuses
 *   JSON nested deeper than 2048);
 * - numbers jansson cannot hold (integers beyond 64-bit signed, reals
 *   beyond double) are JSON syntax errors: a uint64 above 2^63-1 must be
 *   given as a string, which is how every encoder writes it.
 *
 * Every error is GRPC_STATUS_INVALID_ARGUMENT (RESOURCE_EXHAUSTED when
 * memory runs out) with a message that starts with the JSON path of the
 * offending value, keys as they were written:
 *   listeners[0].listener.handshakeTimeout: "12x" is not a duration
 *   listeners[0].tlsContexts["ctx"].tlsContext: unknown field "x" in tlsplane.v1.TlsContext
 * and, for JSON syntax errors, the line and column. Error messages never
 * echo bytes values (ticket keys, PKCS#12 files): they may be secret. They
 * quote at most 64 bytes of a key or string and are always valid UTF-8
 * (stray bytes become '?'), so they can go into a gRPC status or a JSON
 * error body as they are.
 *
 * Thread-safety: no global state; jansson's allocator is whatever the
 * process set (malloc by default). */
#ifndef TLSPLANE_COMMON_PBJSON_H
#define TLSPLANE_COMMON_PBJSON_H

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

#include "error.h"

enum {
  /* Encode: indent by two spaces, one field per line. Default: compact. */
  PBJSON_PRETTY = 1 << 0,
  /* Encode: also write fields at their default: scalars as 0 / "" /
   * false / the zero enum name, repeated as [], maps as {}, unset message
   * fields as null. Unset oneof members stay omitted. */
  PBJSON_EMIT_DEFAULTS = 1 << 1,
  /* Decode (pbjson_from_json only): skip unknown keys and unknown enum
   * value names instead of failing. */
  PBJSON_IGNORE_UNKNOWN = 1 << 2,
};

/* How deep messages may nest inside one another on decode and encode. */
#define PBJSON_MAX_DEPTH 64

/* Parses len bytes of JSON text (need not be NUL-terminated) into a new
 * message of type desc. On success *out is the message, heap-allocated
 * with every member malloc'd: the caller frees it with
 * protobuf_c_message_free_unpacked(*out, NULL). On failure returns -1,
 * sets err, leaves *out NULL and has allocated nothing. */
int pbjson_decode(const ProtobufCMessageDescriptor *desc, const char *json, size_t len,
                  ProtobufCMessage **out, struct tp_err *err);

/* Writes msg as JSON text (flags: PBJSON_PRETTY, PBJSON_EMIT_DEFAULTS).
 * On success *out is a NUL-terminated malloc'd string the caller frees
 * with free(); there is no trailing newline. Fails (-1, err set, *out
 * NULL) only on out-of-memory (RESOURCE_EXHAUSTED) or when msg holds what
 * JSON cannot say (INVALID_ARGUMENT, with the path): a string or map key
 * that is not UTF-8, a Timestamp or Duration out of its range, a FieldMask
 * path that has no lowerCamelCase form, Any/Struct/Value. Doubles are
 * written exactly but with up to 17 significant digits (jansson's format:
 * 0.1 comes out as 0.10000000000000001); integral values as integers. */
int pbjson_encode(const ProtobufCMessage *msg, int flags, char **out, struct tp_err *err);

/* jansson-level forms of the two, for callers that hold a json_t (the
 * HTTP gateway embeds messages in larger documents).
 *
 * pbjson_from_json reads json (borrowed, not modified) into a new message
 * as pbjson_decode does; flags: PBJSON_IGNORE_UNKNOWN. Caller frees *out
 * with protobuf_c_message_free_unpacked(*out, NULL).
 *
 * pbjson_to_json sets *out to a new reference (caller json_decref()s it):
 * a JSON object for ordinary messages, a string, number or bool for the
 * well-known types that map to one. */
int pbjson_from_json(const ProtobufCMessageDescriptor *desc, const json_t *json, int flags,
                     ProtobufCMessage **out, struct tp_err *err);
int pbjson_to_json(const ProtobufCMessage *msg, int flags, json_t **out, struct tp_err *err);

/* Reads an RFC 3339 date-time (YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|
 * -HH:MM), years 0001 to 9999) as the JSON mapping of a Timestamp does:
 * 0 with *secs and *nanos (UTC), or -1 with *why (static text) saying
 * what is wrong. */
int pbjson_timestamp_parse(const char *s, int64_t *secs, int32_t *nanos, const char **why);

#endif
