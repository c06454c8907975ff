/* Requests as tlsplane-server receives them: a first line with the method
 * path ("/tlsplane.v1.CertificateService/CreateCertificate"; every method
 * of every tlsplane.v1 service, found through the service descriptors,
 * streams included), or else a first byte that picks one, then the
 * protobuf message in a grpc byte buffer, decoded by common/grpcmsg.c and
 * checked by pb_input_check as server/rpc.c does: a message the server
 * refuses there (bad UTF-8, an over-long string, a Timestamp or Duration
 * out of range) goes no further, as it goes no further in the server.
 *
 * What follows the decode without a store: the resource a request carries
 * (CreateCertificate's certificate, UpdateListener's listener, ...) goes
 * through its kind's validation hook exactly as api_write runs it on a
 * create (for every kind whose validation needs no transaction), and the
 * request is written as JSON as `tlsplane-server call` prints messages.
 *
 * What must hold: no crash, leak or undefined behaviour; a validation
 * that refuses says why with INVALID_ARGUMENT (or RESOURCE_EXHAUSTED); one
 * that accepts leaves a message that still packs and unpacks. */
#include <grpc/byte_buffer.h>
#include <grpc/slice.h>
#include <openssl/crypto.h>
#include <protobuf-c/protobuf-c.h>
#include <time.h>

#include "api.h"
#include "fuzz.h"
#include "grpcmsg.h"
#include "pb.h"
#include "pbjson.h"

#define MAX_METHODS 256

static const ProtobufCMethodDescriptor *methods[MAX_METHODS];
static char *paths[MAX_METHODS]; /* "/tlsplane.v1.CertificateService/CreateCertificate" */
static size_t n_methods;

/* Kinds whose prepare hook runs without a store transaction (TlsContext's
 * resolves its references in the store: the agent-side target builds
 * contexts instead). */
static const struct api_kind *const kinds[] = {
    &api_kind_certificate,   &api_kind_trust_bundle, &api_kind_revocation_list,
    &api_kind_cipher_policy, &api_kind_listener,     &api_kind_ticket_key_ring,
};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  const char *names[64];
  size_t n = api_service_names(names, 64);
  for (size_t i = 0; i < n && i < 64; i++) {
    const ProtobufCServiceDescriptor *svc = api_service_find(names[i]);
    FUZZ_ASSERT(svc != NULL);
    for (unsigned m = 0; m < svc->n_methods && n_methods < MAX_METHODS; m++) {
      size_t len = strlen(svc->name) + strlen(svc->methods[m].name) + 3;
      paths[n_methods] = malloc(len);
      FUZZ_ASSERT(paths[n_methods] != NULL);
      snprintf(paths[n_methods], len, "/%s/%s", svc->name, svc->methods[m].name);
      methods[n_methods++] = &svc->methods[m];
    }
  }
  FUZZ_ASSERT(n_methods > 0);
  return 0;
}

static const struct api_kind *kind_of(const ProtobufCMessageDescriptor *d) {
  for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
    if (kinds[i]->desc == d)
      return kinds[i];
  return NULL;
}

/* Runs the validation hook of every resource the request carries. */
static void validate_resources(const ProtobufCMessage *req) {
  const ProtobufCMessageDescriptor *d = req->descriptor;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->type != PROTOBUF_C_TYPE_MESSAGE || f->label == PROTOBUF_C_LABEL_REPEATED)
      continue;
    const struct api_kind *kind = kind_of(f->descriptor);
    const ProtobufCMessage *res = *(ProtobufCMessage *const *)pb_member(req, f);
    if (kind == NULL || kind->prepare == NULL || res == NULL)
      continue;
    ProtobufCMessage *copy = pb_clone(res);
    if (copy == NULL)
      abort();
    struct api_op op = {.kind = kind, .now = time(NULL)};
    struct tp_err err = {0};
    if (kind->prepare(&op, copy, &err) != 0) {
      FUZZ_ASSERT(err.status == GRPC_STATUS_INVALID_ARGUMENT ||
                  err.status == GRPC_STATUS_RESOURCE_EXHAUSTED);
      FUZZ_ASSERT(err.msg[0] != '\0');
    } else {
      ProtobufCMessage *again = pb_clone(copy);
      FUZZ_ASSERT(again != NULL);
      protobuf_c_message_free_unpacked(again, NULL);
    }
    if (op.secret != NULL) {
      OPENSSL_cleanse(op.secret, op.secret_len);
      free(op.secret);
    }
    protobuf_c_message_free_unpacked(copy, NULL);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct fuzz_part body;
  int i = fuzz_pick(data, size, (const char *const *)paths, n_methods, &body);
  if (i < 0)
    return 0;
  const ProtobufCMethodDescriptor *method = methods[i];
  grpc_slice slice = grpc_slice_from_copied_buffer((const char *)body.p, body.n);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
  grpc_slice_unref(slice);
  ProtobufCMessage *req = grpcmsg_decode(bb, method->input); /* destroys bb */
  if (req == NULL)
    return 0;
  FUZZ_ASSERT(req->descriptor == method->input);
  struct tp_err err = {0};
  if (pb_input_check(req, &err) != 0) {
    FUZZ_ASSERT(err.status == GRPC_STATUS_INVALID_ARGUMENT && err.msg[0] != '\0');
    protobuf_c_message_free_unpacked(req, NULL);
    return 0;
  }
  validate_resources(req);
  char *json = NULL;
  if (pbjson_encode(req, PBJSON_PRETTY, &json, &err) == 0)
    free(json);
  else
    FUZZ_ASSERT(err.status == GRPC_STATUS_INVALID_ARGUMENT);
  protobuf_c_message_free_unpacked(req, NULL);
  return 0;
}
