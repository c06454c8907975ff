/* proto3 JSON (common/pbjson.c) as the agent reads its snapshot file and
 * `tlsplane-server call` reads requests: a first line naming the message
 * type ("tlsplane.v1.Snapshot"; any input or output of any method of any
 * tlsplane.v1 service, found through the service descriptors), or else a
 * first byte that picks one, then the JSON text.
 *
 * What must hold: a refusal is INVALID_ARGUMENT (or RESOURCE_EXHAUSTED)
 * with a non-empty, valid UTF-8 message; what decodes encodes (compact,
 * pretty, with defaults); and the encoding decodes again to a message that
 * encodes to the same text (the mapping round-trips). */
#include <protobuf-c/protobuf-c.h>

#include "api.h"
#include "fuzz.h"
#include "pbjson.h"
#include "tlsplane/v1/snapshot.pb-c.h"

#define MAX_TYPES 256

static const ProtobufCMessageDescriptor *types[MAX_TYPES];
static const char *type_names[MAX_TYPES];
static size_t n_types;

static void add_type(const ProtobufCMessageDescriptor *d) {
  for (size_t i = 0; i < n_types; i++)
    if (types[i] == d)
      return;
  if (n_types < MAX_TYPES) {
    type_names[n_types] = d->name;
    types[n_types++] = d;
  }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  add_type(&tlsplane__v1__snapshot__descriptor);
  const char *names[64];
  size_t n = api_service_names(names, 64);
  for (size_t i = 0; i < n && i < 64; i++) {
    const ProtobufCServiceDescriptor *svc = api_service_find(names[i]);
    FUZZ_ASSERT(svc != NULL);
    for (unsigned m = 0; m < svc->n_methods; m++) {
      add_type(svc->methods[m].input);
      add_type(svc->methods[m].output);
    }
  }
  return 0;
}

/* Whether s is valid UTF-8 (no overlong forms, no surrogates). */
static int utf8_valid(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    unsigned c = *p;
    size_t len = c < 0x80             ? 1
                 : (c & 0xe0) == 0xc0 ? 2
                 : (c & 0xf0) == 0xe0 ? 3
                 : (c & 0xf8) == 0xf0 ? 4
                                      : 0;
    if (len == 0 || (len == 2 && c < 0xc2) || (len == 4 && c > 0xf4))
      return 0;
    for (size_t i = 1; i < len; i++)
      if ((p[i] & 0xc0) != 0x80)
        return 0;
    if (len == 3 && ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0)))
      return 0;
    if (len == 4 && ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90)))
      return 0;
    p += len;
  }
  return 1;
}

static void check_refusal(const struct tp_err *err) {
  FUZZ_ASSERT(err->status == GRPC_STATUS_INVALID_ARGUMENT ||
              err->status == GRPC_STATUS_RESOURCE_EXHAUSTED);
  FUZZ_ASSERT(err->msg[0] != '\0');
  FUZZ_ASSERT(utf8_valid(err->msg));
}

/* Encodes m with flags; decodes that again and checks it encodes the
 * same. */
static void round_trip(const ProtobufCMessage *m, int flags) {
  char *text = NULL;
  struct tp_err err = {0};
  FUZZ_ASSERT(pbjson_encode(m, flags, &text, &err) == 0);
  ProtobufCMessage *again = NULL;
  struct tp_err err2 = {0};
  if (pbjson_decode(m->descriptor, text, strlen(text), &again, &err2) != 0) {
    fprintf(stderr, "encoded, not decoded again: %s\n%s\n", err2.msg, text);
    abort();
  }
  char *text2 = NULL;
  FUZZ_ASSERT(pbjson_encode(again, flags, &text2, &err) == 0);
  if (strcmp(text, text2) != 0) {
    fprintf(stderr, "round trip changed the message:\n%s\n%s\n", text, text2);
    abort();
  }
  free(text2);
  protobuf_c_message_free_unpacked(again, NULL);
  free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct fuzz_part json;
  int t = fuzz_pick(data, size, type_names, n_types, &json);
  if (t < 0)
    return 0;
  const ProtobufCMessageDescriptor *desc = types[t];
  ProtobufCMessage *m = NULL;
  struct tp_err err = {0};
  if (pbjson_decode(desc, (const char *)json.p, json.n, &m, &err) != 0) {
    FUZZ_ASSERT(m == NULL);
    check_refusal(&err);
    return 0;
  }
  FUZZ_ASSERT(m != NULL && m->descriptor == desc);
  round_trip(m, 0);
  round_trip(m, PBJSON_PRETTY);
  round_trip(m, PBJSON_EMIT_DEFAULTS);
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}
