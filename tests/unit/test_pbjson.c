/* Unit tests for common/pbjson: the proto3 JSON mapping both ways over the
 * real tlsplane schema (Snapshot, Listener, Certificate, CipherPolicy,
 * UpdateCertificateRequest), the well-known types with their edge cases,
 * every decode error with the JSON path it names, and hostile input
 * (mutated and truncated documents, deep nesting) under ASan. A small
 * hand-made descriptor covers what the schema lacks: integer and bool map
 * keys, unsigned and floating-point fields, repeated scalars, proto3
 * optional. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/descriptor.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/empty.pb-c.h"
#include "google/protobuf/field_mask.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "pbjson.h"
#include "tlsplane/v1/certificate.pb-c.h"
#include "tlsplane/v1/cipher_policy.pb-c.h"
#include "tlsplane/v1/listener.pb-c.h"
#include "tlsplane/v1/snapshot.pb-c.h"

/* 2026-11-27T00:00:00Z */
#define T_2026_11_27 INT64_C(1795737600)

/* --- Helpers ----------------------------------------------------------- */

static ProtobufCMessage *decode_ok(const ProtobufCMessageDescriptor *desc, const char *json) {
  struct tp_err err = {0};
  ProtobufCMessage *m = (ProtobufCMessage *)1;
  if (pbjson_decode(desc, json, strlen(json), &m, &err) != 0)
    fail_msg("decode of %s failed: %s\n  input: %s", desc->name, err.msg, json);
  assert_non_null(m);
  assert_ptr_equal(m->descriptor, desc);
  return m;
}

/* Decoding fails with exactly this message (status INVALID_ARGUMENT) and
 * leaves *out NULL. */
static void decode_fails(const ProtobufCMessageDescriptor *desc, const char *json,
                         const char *expected) {
  struct tp_err err = {0};
  ProtobufCMessage *m = (ProtobufCMessage *)1;
  int rc = pbjson_decode(desc, json, strlen(json), &m, &err);
  if (rc == 0) {
    protobuf_c_message_free_unpacked(m, NULL);
    fail_msg("decode of %s succeeded, expected: %s\n  input: %s", desc->name, expected, json);
  }
  assert_int_equal(rc, -1);
  assert_null(m);
  assert_int_equal(err.status, GRPC_STATUS_INVALID_ARGUMENT);
  assert_string_equal(err.msg, expected);
}

/* Decoding fails with a message that contains expected. */
static void decode_fails_with(const ProtobufCMessageDescriptor *desc, const char *json, size_t len,
                              const char *expected) {
  struct tp_err err = {0};
  ProtobufCMessage *m = (ProtobufCMessage *)1;
  int rc = pbjson_decode(desc, json, len, &m, &err);
  if (rc == 0)
    protobuf_c_message_free_unpacked(m, NULL);
  assert_int_equal(rc, -1);
  assert_null(m);
  assert_int_equal(err.status, GRPC_STATUS_INVALID_ARGUMENT);
  if (strstr(err.msg, expected) == NULL)
    fail_msg("error \"%s\" does not contain \"%s\"", err.msg, expected);
}

static char *encode_ok(const ProtobufCMessage *m, int flags) {
  struct tp_err err = {0};
  char *out = NULL;
  if (pbjson_encode(m, flags, &out, &err) != 0)
    fail_msg("encode of %s failed: %s", m->descriptor->name, err.msg);
  assert_non_null(out);
  return out;
}

static void assert_encodes(const ProtobufCMessage *m, int flags, const char *expected) {
  char *out = encode_ok(m, flags);
  assert_string_equal(out, expected);
  free(out);
}

static void encode_fails(const ProtobufCMessage *m, const char *expected) {
  struct tp_err err = {0};
  char *out = (char *)1;
  assert_int_equal(pbjson_encode(m, 0, &out, &err), -1);
  assert_null(out);
  assert_int_equal(err.status, GRPC_STATUS_INVALID_ARGUMENT);
  assert_string_equal(err.msg, expected);
}

/* Decodes json, then re-encodes it compactly and compares with expected
 * (json itself when expected is NULL). */
static void assert_json_round_trip(const ProtobufCMessageDescriptor *desc, const char *json,
                                   const char *expected) {
  ProtobufCMessage *m = decode_ok(desc, json);
  assert_encodes(m, 0, expected ? expected : json);
  protobuf_c_message_free_unpacked(m, NULL);
}

static void pack(const ProtobufCMessage *m, uint8_t **buf, size_t *len) {
  *len = protobuf_c_message_get_packed_size(m);
  *buf = malloc(*len + 1);
  assert_non_null(*buf);
  assert_int_equal(protobuf_c_message_pack(m, *buf), *len);
}

static void assert_same_wire(const ProtobufCMessage *a, const ProtobufCMessage *b) {
  uint8_t *ba, *bb;
  size_t la, lb;
  pack(a, &ba, &la);
  pack(b, &bb, &lb);
  assert_int_equal(la, lb);
  assert_memory_equal(ba, bb, la);
  free(ba);
  free(bb);
}

/* encode (flags) -> decode -> the same wire bytes as m. */
static void assert_wire_round_trip(const ProtobufCMessage *m, int flags) {
  char *json = encode_ok(m, flags);
  ProtobufCMessage *back = decode_ok(m->descriptor, json);
  assert_same_wire(m, back);
  protobuf_c_message_free_unpacked(back, NULL);
  free(json);
}

/* --- A hand-made descriptor: pbjsontest.Scalars ----------------------- */

typedef struct {
  ProtobufCMessage base;
  int32_t key;
  char *value;
} TestByIdEntry;

typedef struct {
  ProtobufCMessage base;
  protobuf_c_boolean key;
  int64_t value;
} TestFlagsEntry;

typedef struct {
  ProtobufCMessage base;
  int32_t i32;                /* 1 int32 */
  int64_t s64;                /* 2 sint64 */
  uint32_t u32;               /* 3 uint32 */
  uint64_t f64;               /* 4 fixed64 */
  float f;                    /* 5 float */
  double d;                   /* 6 double */
  size_t n_ri64;              /* 7 repeated int64 */
  int64_t *ri64;              /*   */
  size_t n_rb;                /* 8 repeated bool */
  protobuf_c_boolean *rb;     /*   */
  size_t n_by_id;             /* 9 map<int32, string> */
  TestByIdEntry **by_id;      /*   */
  size_t n_flags;             /* 10 map<bool, int64> */
  TestFlagsEntry **flags;     /*   */
  protobuf_c_boolean has_opt; /* 11 optional int32 (proto3 optional) */
  int32_t opt;                /*   */
  size_t n_rbytes;            /* 12 repeated bytes */
  ProtobufCBinaryData *rbytes;
  size_t n_rd; /* 13 repeated double */
  double *rd;
  uint64_t u64; /* 14 uint64 */
  int32_t sf32; /* 15 sfixed32 */
  size_t n_rs;  /* 16 repeated string */
  char **rs;
} TestScalars;

static const ProtobufCMessageDescriptor by_id_entry_desc, flags_entry_desc, scalars_desc;

static void by_id_entry_init(ProtobufCMessage *m) {
  memset(m, 0, sizeof(TestByIdEntry));
  m->descriptor = &by_id_entry_desc;
  ((TestByIdEntry *)m)->value = (char *)protobuf_c_empty_string;
}

static void flags_entry_init(ProtobufCMessage *m) {
  memset(m, 0, sizeof(TestFlagsEntry));
  m->descriptor = &flags_entry_desc;
}

static void scalars_init(ProtobufCMessage *m) {
  memset(m, 0, sizeof(TestScalars));
  m->descriptor = &scalars_desc;
}

static const ProtobufCFieldDescriptor by_id_entry_fields[] = {
    {"key", 1, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_INT32, 0, offsetof(TestByIdEntry, key), NULL,
     NULL, 0, 0, NULL, NULL},
    {"value", 2, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_STRING, 0, offsetof(TestByIdEntry, value),
     NULL, &protobuf_c_empty_string, 0, 0, NULL, NULL},
};
static const ProtobufCFieldDescriptor flags_entry_fields[] = {
    {"key", 1, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_BOOL, 0, offsetof(TestFlagsEntry, key), NULL,
     NULL, 0, 0, NULL, NULL},
    {"value", 2, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_INT64, 0, offsetof(TestFlagsEntry, value),
     NULL, NULL, 0, 0, NULL, NULL},
};
static const unsigned entry_by_name[] = {0, 1};
static const ProtobufCIntRange entry_ranges[] = {{1, 0}, {0, 2}};

#define SCALAR(name, id, type, member)                                                             \
  {                                                                                                \
    name, id, PROTOBUF_C_LABEL_NONE, type, 0, offsetof(TestScalars, member), NULL, NULL, 0, 0,     \
        NULL, NULL                                                                                 \
  }
#define REPEATED(name, id, type, member, desc)                                                     \
  {                                                                                                \
    name, id, PROTOBUF_C_LABEL_REPEATED, type, offsetof(TestScalars, n_##member),                  \
        offsetof(TestScalars, member), desc, NULL, 0, 0, NULL, NULL                                \
  }

static const ProtobufCFieldDescriptor scalars_fields[] = {
    SCALAR("i32", 1, PROTOBUF_C_TYPE_INT32, i32),
    SCALAR("s64", 2, PROTOBUF_C_TYPE_SINT64, s64),
    SCALAR("u32", 3, PROTOBUF_C_TYPE_UINT32, u32),
    SCALAR("f64", 4, PROTOBUF_C_TYPE_FIXED64, f64),
    SCALAR("f", 5, PROTOBUF_C_TYPE_FLOAT, f),
    SCALAR("d", 6, PROTOBUF_C_TYPE_DOUBLE, d),
    REPEATED("ri64", 7, PROTOBUF_C_TYPE_INT64, ri64, NULL),
    REPEATED("rb", 8, PROTOBUF_C_TYPE_BOOL, rb, NULL),
    REPEATED("by_id", 9, PROTOBUF_C_TYPE_MESSAGE, by_id, &by_id_entry_desc),
    REPEATED("flags", 10, PROTOBUF_C_TYPE_MESSAGE, flags, &flags_entry_desc),
    {"opt", 11, PROTOBUF_C_LABEL_OPTIONAL, PROTOBUF_C_TYPE_INT32, offsetof(TestScalars, has_opt),
     offsetof(TestScalars, opt), NULL, NULL, 0, 0, NULL, NULL},
    REPEATED("rbytes", 12, PROTOBUF_C_TYPE_BYTES, rbytes, NULL),
    REPEATED("rd", 13, PROTOBUF_C_TYPE_DOUBLE, rd, NULL),
    SCALAR("u64", 14, PROTOBUF_C_TYPE_UINT64, u64),
    SCALAR("sf32", 15, PROTOBUF_C_TYPE_SFIXED32, sf32),
    REPEATED("rs", 16, PROTOBUF_C_TYPE_STRING, rs, NULL),
};
/* by_id d f f64 flags i32 opt rb rbytes rd ri64 rs s64 sf32 u32 u64 */
static const unsigned scalars_by_name[] = {8, 5, 4, 3, 9, 0, 10, 7, 11, 12, 6, 15, 1, 14, 2, 13};
static const ProtobufCIntRange scalars_ranges[] = {{1, 0}, {0, 16}};

static const ProtobufCMessageDescriptor by_id_entry_desc = {PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
                                                            "pbjsontest.Scalars.ByIdEntry",
                                                            "ByIdEntry",
                                                            "TestByIdEntry",
                                                            "pbjsontest",
                                                            sizeof(TestByIdEntry),
                                                            2,
                                                            by_id_entry_fields,
                                                            entry_by_name,
                                                            1,
                                                            entry_ranges,
                                                            by_id_entry_init,
                                                            NULL,
                                                            NULL,
                                                            NULL};
static const ProtobufCMessageDescriptor flags_entry_desc = {PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
                                                            "pbjsontest.Scalars.FlagsEntry",
                                                            "FlagsEntry",
                                                            "TestFlagsEntry",
                                                            "pbjsontest",
                                                            sizeof(TestFlagsEntry),
                                                            2,
                                                            flags_entry_fields,
                                                            entry_by_name,
                                                            1,
                                                            entry_ranges,
                                                            flags_entry_init,
                                                            NULL,
                                                            NULL,
                                                            NULL};
static const ProtobufCMessageDescriptor scalars_desc = {PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
                                                        "pbjsontest.Scalars",
                                                        "Scalars",
                                                        "TestScalars",
                                                        "pbjsontest",
                                                        sizeof(TestScalars),
                                                        16,
                                                        scalars_fields,
                                                        scalars_by_name,
                                                        1,
                                                        scalars_ranges,
                                                        scalars_init,
                                                        NULL,
                                                        NULL,
                                                        NULL};

/* --- A Snapshot built in C -------------------------------------------- */

/* Everything a rich Snapshot points to, in one place so that it can live
 * on the stack: every field type the schema uses, maps with string and
 * message values, repeated messages, bytes, wrappers, WKTs, enums. */
struct snap {
  Tlsplane__V1__Snapshot snapshot;
  Tlsplane__V1__ResolvedListener rl, *rls[1];
  Tlsplane__V1__Listener listener;
  Tlsplane__V1__Listener__LabelsEntry label[2], *labels[2];
  Tlsplane__V1__Listener__AgentSelectorEntry sel, *sels[1];
  Tlsplane__V1__SniRoute route[2], *routes[2];
  Google__Protobuf__Timestamp created, not_before, not_after;
  Google__Protobuf__Duration handshake, window, session;
  Google__Protobuf__Int32Value reneg;
  Google__Protobuf__BoolValue tickets, honor;
  Tlsplane__V1__ResolvedListener__TlsContextsEntry ctx_entry, *ctx_entries[1];
  Tlsplane__V1__ResolvedTlsContext rctx;
  Tlsplane__V1__TlsContext ctx;
  char *ctx_certs[1], *alpn[2];
  Tlsplane__V1__CertificateMaterial material, *materials[1];
  Tlsplane__V1__Certificate cert;
  char *dns[2];
  Tlsplane__V1__CipherPolicy policy;
  char *warnings[1];
  Tlsplane__V1__TicketKeyMaterial tk[2], *tks[2];
  uint8_t key0[48], key1[48], pfx[3], ocsp[5];
};

static Tlsplane__V1__Snapshot *build_snapshot(struct snap *s) {
  memset(s, 0, sizeof(*s));
  tlsplane__v1__snapshot__init(&s->snapshot);
  tlsplane__v1__resolved_listener__init(&s->rl);
  tlsplane__v1__listener__init(&s->listener);
  google__protobuf__timestamp__init(&s->created);
  google__protobuf__timestamp__init(&s->not_before);
  google__protobuf__timestamp__init(&s->not_after);
  google__protobuf__duration__init(&s->handshake);
  google__protobuf__duration__init(&s->window);
  google__protobuf__duration__init(&s->session);
  google__protobuf__int32_value__init(&s->reneg);
  google__protobuf__bool_value__init(&s->tickets);
  google__protobuf__bool_value__init(&s->honor);
  tlsplane__v1__resolved_listener__tls_contexts_entry__init(&s->ctx_entry);
  tlsplane__v1__resolved_tls_context__init(&s->rctx);
  tlsplane__v1__tls_context__init(&s->ctx);
  tlsplane__v1__certificate_material__init(&s->material);
  tlsplane__v1__certificate__init(&s->cert);
  tlsplane__v1__cipher_policy__init(&s->policy);

  s->snapshot.revision = INT64_C(9007199254740993); /* 2^53 + 1: not a double */
  s->rls[0] = &s->rl;
  s->snapshot.n_listeners = 1;
  s->snapshot.listeners = s->rls;

  Tlsplane__V1__Listener *l = &s->listener;
  s->rl.listener = l;
  l->name = "listeners/web";
  l->etag = "W/\"7\"";
  for (int i = 0; i < 2; i++) {
    tlsplane__v1__listener__labels_entry__init(&s->label[i]);
    s->labels[i] = &s->label[i];
  }
  s->label[0].key = "team";
  s->label[0].value = "edge";
  s->label[1].key = "env";
  s->label[1].value = "prod";
  l->n_labels = 2;
  l->labels = s->labels;
  s->created.seconds = T_2026_11_27;
  s->created.nanos = 123000000;
  l->create_time = &s->created;
  l->revision = 17;
  l->address = "[::1]:8443";
  l->default_tls_context = "tlsContexts/default";
  for (int i = 0; i < 2; i++) {
    tlsplane__v1__sni_route__init(&s->route[i]);
    s->routes[i] = &s->route[i];
  }
  s->route[0].hostname = "www.example.com";
  s->route[0].tls_context = "tlsContexts/default";
  s->route[1].hostname = "*.example.com";
  s->route[1].tls_context = "tlsContexts/default";
  l->n_sni_routes = 2;
  l->sni_routes = s->routes;
  l->upstream = "127.0.0.1:8080";
  l->proxy_protocol = 1;
  s->handshake.seconds = 12;
  s->handshake.nanos = 500000000;
  l->handshake_timeout = &s->handshake;
  l->max_connections = 1000;
  s->reneg.value = 0; /* set, and zero: must survive */
  l->renegotiation_limit = &s->reneg;
  s->window.seconds = 600;
  l->renegotiation_window = &s->window;
  l->ticket_key_ring = "ticketKeyRings/web";
  tlsplane__v1__listener__agent_selector_entry__init(&s->sel);
  s->sel.key = "region";
  s->sel.value = "eu-west \xc3\xa9\xe2\x82\xac"; /* UTF-8: é € */
  s->sels[0] = &s->sel;
  l->n_agent_selector = 1;
  l->agent_selector = s->sels;

  s->ctx_entry.key = "tlsContexts/default";
  s->ctx_entry.value = &s->rctx;
  s->ctx_entries[0] = &s->ctx_entry;
  s->rl.n_tls_contexts = 1;
  s->rl.tls_contexts = s->ctx_entries;

  s->rctx.tls_context = &s->ctx;
  s->ctx.name = "tlsContexts/default";
  s->ctx_certs[0] = "certificates/www";
  s->ctx.n_certificates = 1;
  s->ctx.certificates = s->ctx_certs;
  s->alpn[0] = "h2";
  s->alpn[1] = "http/1.1";
  s->ctx.n_alpn_protocols = 2;
  s->ctx.alpn_protocols = s->alpn;
  s->session.seconds = 0;
  s->session.nanos = 250000; /* 0.000250s */
  s->ctx.session_timeout = &s->session;
  s->tickets.value = 0;
  s->ctx.session_tickets = &s->tickets;
  s->ctx.session_cache_size = -1;

  Tlsplane__V1__Certificate *c = &s->cert;
  c->name = "certificates/www";
  c->certificate_chain_pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
  memcpy(s->pfx, "\x00\xfb\xff", 3);
  c->pfx.data = s->pfx;
  c->pfx.len = 3;
  memcpy(s->ocsp, "\x30\x03\x0a\x01\x00", 5);
  c->ocsp_response.data = s->ocsp;
  c->ocsp_response.len = 5;
  c->key_bits = 256;
  c->key_curve = "prime256v1";
  s->dns[0] = "www.example.com";
  s->dns[1] = "example.com";
  c->n_dns_names = 2;
  c->dns_names = s->dns;
  s->not_before.seconds = -1; /* 1969-12-31T23:59:59.000000001Z */
  s->not_before.nanos = 1;
  c->not_before = &s->not_before;
  s->not_after.seconds = INT64_C(253402300799);
  s->not_after.nanos = 999999999;
  c->not_after = &s->not_after;
  c->has_private_key = 1;
  s->material.certificate = c;
  s->material.private_key_pem = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n";
  s->materials[0] = &s->material;
  s->rctx.n_certificates = 1;
  s->rctx.certificates = s->materials;

  s->policy.name = "cipherPolicies/modern";
  s->policy.min_version = TLSPLANE__V1__TLS_VERSION__TLS_1_2;
  s->policy.max_version = TLSPLANE__V1__TLS_VERSION__TLS_1_3;
  s->honor.value = 1;
  s->policy.honor_cipher_order = &s->honor;
  s->warnings[0] = "dhparam under 2048 bits";
  s->policy.n_warnings = 1;
  s->policy.warnings = s->warnings;
  s->rctx.cipher_policy = &s->policy;

  for (int i = 0; i < 48; i++) {
    s->key0[i] = (uint8_t)(i * 7 + 1);
    s->key1[i] = (uint8_t)(255 - i);
  }
  for (int i = 0; i < 2; i++) {
    tlsplane__v1__ticket_key_material__init(&s->tk[i]);
    s->tks[i] = &s->tk[i];
  }
  s->tk[0].key.data = s->key0;
  s->tk[0].key.len = 48;
  s->tk[0].active = 1;
  s->tk[1].key.data = s->key1;
  s->tk[1].key.len = 48;
  s->rl.n_ticket_keys = 2;
  s->rl.ticket_keys = s->tks;
  return &s->snapshot;
}

/* --- Round trips -------------------------------------------------------- */

static void test_snapshot_round_trip(void **state) {
  struct snap s;
  Tlsplane__V1__Snapshot *snap = build_snapshot(&s);
  assert_wire_round_trip(&snap->base, 0);
  assert_wire_round_trip(&snap->base, PBJSON_PRETTY);
  assert_wire_round_trip(&snap->base, PBJSON_EMIT_DEFAULTS);
  assert_wire_round_trip(&snap->base, PBJSON_PRETTY | PBJSON_EMIT_DEFAULTS);

  /* The unpacked form (what the agent gets from the server) encodes to
   * the same text as the hand-built one. */
  uint8_t *buf;
  size_t len;
  pack(&snap->base, &buf, &len);
  ProtobufCMessage *unpacked =
      protobuf_c_message_unpack(&tlsplane__v1__snapshot__descriptor, NULL, len, buf);
  assert_non_null(unpacked);
  char *a = encode_ok(&snap->base, 0), *b = encode_ok(unpacked, 0);
  assert_string_equal(a, b);
  free(a);
  free(b);
  free(buf);
  protobuf_c_message_free_unpacked(unpacked, NULL);
}

static void test_snapshot_golden(void **state) {
  struct snap s;
  Tlsplane__V1__Snapshot *snap = build_snapshot(&s);
  /* Field order is field-number order; map entries keep their order. */
  assert_encodes(
      &snap->base, 0,
      "{\"revision\":\"9007199254740993\",\"listeners\":[{\"listener\":{"
      "\"name\":\"listeners/web\",\"etag\":\"W/\\\"7\\\"\","
      "\"labels\":{\"team\":\"edge\",\"env\":\"prod\"},"
      "\"createTime\":\"2026-11-27T00:00:00.123Z\",\"revision\":\"17\","
      "\"address\":\"[::1]:8443\",\"defaultTlsContext\":\"tlsContexts/default\","
      "\"sniRoutes\":[{\"hostname\":\"www.example.com\",\"tlsContext\":\"tlsContexts/default\"},"
      "{\"hostname\":\"*.example.com\",\"tlsContext\":\"tlsContexts/default\"}],"
      "\"upstream\":\"127.0.0.1:8080\",\"proxyProtocol\":true,\"handshakeTimeout\":\"12.500s\","
      "\"maxConnections\":1000,\"renegotiationLimit\":0,\"renegotiationWindow\":\"600s\","
      "\"ticketKeyRing\":\"ticketKeyRings/web\","
      "\"agentSelector\":{\"region\":\"eu-west \xc3\xa9\xe2\x82\xac\"}},"
      "\"tlsContexts\":{\"tlsContexts/default\":{"
      "\"tlsContext\":{\"name\":\"tlsContexts/default\",\"certificates\":[\"certificates/www\"],"
      "\"alpnProtocols\":[\"h2\",\"http/1.1\"],\"sessionTimeout\":\"0.000250s\","
      "\"sessionTickets\":false,\"sessionCacheSize\":-1},"
      "\"certificates\":[{\"certificate\":{\"name\":\"certificates/www\","
      "\"certificateChainPem\":\"-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END "
      "CERTIFICATE-----\\n\","
      "\"pfx\":\"APv/\",\"ocspResponse\":\"MAMKAQA=\",\"keyBits\":256,"
      "\"keyCurve\":\"prime256v1\",\"dnsNames\":[\"www.example.com\",\"example.com\"],"
      "\"notBefore\":\"1969-12-31T23:59:59.000000001Z\","
      "\"notAfter\":\"9999-12-31T23:59:59.999999999Z\",\"hasPrivateKey\":true},"
      "\"privateKeyPem\":\"-----BEGIN PRIVATE KEY-----\\nMIGH\\n-----END PRIVATE KEY-----\\n\"}],"
      "\"cipherPolicy\":{\"name\":\"cipherPolicies/modern\",\"minVersion\":\"TLS_1_2\","
      "\"maxVersion\":\"TLS_1_3\",\"honorCipherOrder\":true,"
      "\"warnings\":[\"dhparam under 2048 bits\"]}}},"
      "\"ticketKeys\":[{\"key\":\"AQgPFh0kKzI5QEdOVVxjanF4f4aNlJuiqbC3vsXM09rh6O/2/"
      "QQLEhkgJy41PENK\","
      "\"active\":true},{\"key\":\"//79/Pv6+fj39vX08/Lx8O/"
      "u7ezr6uno5+bl5OPi4eDf3t3c29rZ2NfW1dTT0tHQ\"}"
      "]}]}");
}

static void test_pretty(void **state) {
  Tlsplane__V1__SniRoute r = TLSPLANE__V1__SNI_ROUTE__INIT;
  r.hostname = "www.example.com";
  r.tls_context = "tlsContexts/default";
  assert_encodes(&r.base, PBJSON_PRETTY,
                 "{\n  \"hostname\": \"www.example.com\",\n"
                 "  \"tlsContext\": \"tlsContexts/default\"\n}");
  Tlsplane__V1__Listener l = TLSPLANE__V1__LISTENER__INIT;
  Tlsplane__V1__SniRoute *routes[] = {&r};
  l.n_sni_routes = 1;
  l.sni_routes = routes;
  assert_encodes(&l.base, PBJSON_PRETTY,
                 "{\n  \"sniRoutes\": [\n    {\n      \"hostname\": \"www.example.com\",\n"
                 "      \"tlsContext\": \"tlsContexts/default\"\n    }\n  ]\n}");
}

/* --- Names and defaults ------------------------------------------------ */

static void test_both_name_styles(void **state) {
  ProtobufCMessage *camel = decode_ok(
      &tlsplane__v1__listener__descriptor,
      "{\"defaultTlsContext\":\"tlsContexts/a\",\"sniRoutes\":[{\"hostname\":\"h\","
      "\"tlsContext\":\"tlsContexts/b\"}],\"handshakeTimeout\":\"1s\",\"maxConnections\":5,"
      "\"agentSelector\":{\"k\":\"v\"},\"renegotiationLimit\":3,\"proxyProtocol\":true}");
  ProtobufCMessage *snake = decode_ok(
      &tlsplane__v1__listener__descriptor,
      "{\"default_tls_context\":\"tlsContexts/a\",\"sni_routes\":[{\"hostname\":\"h\","
      "\"tls_context\":\"tlsContexts/b\"}],\"handshake_timeout\":\"1s\",\"max_connections\":5,"
      "\"agent_selector\":{\"k\":\"v\"},\"renegotiation_limit\":3,\"proxy_protocol\":true}");
  assert_same_wire(camel, snake);
  Tlsplane__V1__Listener *l = (Tlsplane__V1__Listener *)snake;
  assert_string_equal(l->default_tls_context, "tlsContexts/a");
  assert_int_equal(l->n_sni_routes, 1);
  assert_string_equal(l->sni_routes[0]->tls_context, "tlsContexts/b");
  assert_int_equal(l->handshake_timeout->seconds, 1);
  assert_int_equal(l->max_connections, 5);
  assert_int_equal(l->renegotiation_limit->value, 3);
  assert_true(l->proxy_protocol);
  assert_string_equal(l->agent_selector[0]->key, "k");
  /* Output is always lowerCamelCase. */
  assert_encodes(snake, 0,
                 "{\"defaultTlsContext\":\"tlsContexts/a\",\"sniRoutes\":[{\"hostname\":\"h\","
                 "\"tlsContext\":\"tlsContexts/b\"}],\"proxyProtocol\":true,"
                 "\"handshakeTimeout\":\"1s\",\"maxConnections\":5,\"renegotiationLimit\":3,"
                 "\"agentSelector\":{\"k\":\"v\"}}");
  protobuf_c_message_free_unpacked(camel, NULL);
  protobuf_c_message_free_unpacked(snake, NULL);
}

static void test_defaults_omitted(void **state) {
  ProtobufCMessage *m = decode_ok(&tlsplane__v1__listener__descriptor,
                                  "{\"address\":\"127.0.0.1:8443\",\"upstream\":\"\","
                                  "\"maxConnections\":0,\"proxyProtocol\":false,\"revision\":\"0\","
                                  "\"sniRoutes\":[],\"labels\":{}}");
  assert_encodes(m, 0, "{\"address\":\"127.0.0.1:8443\"}");
  protobuf_c_message_free_unpacked(m, NULL);

  Tlsplane__V1__Listener empty = TLSPLANE__V1__LISTENER__INIT;
  assert_encodes(&empty.base, 0, "{}");
  assert_encodes(&empty.base, PBJSON_EMIT_DEFAULTS,
                 "{\"name\":\"\",\"etag\":\"\",\"labels\":{},\"createTime\":null,"
                 "\"updateTime\":null,\"revision\":\"0\",\"address\":\"\","
                 "\"defaultTlsContext\":\"\",\"sniRoutes\":[],\"upstream\":\"\","
                 "\"proxyProtocol\":false,\"handshakeTimeout\":null,\"maxConnections\":0,"
                 "\"renegotiationLimit\":null,\"renegotiationWindow\":null,"
                 "\"ticketKeyRing\":\"\",\"agentSelector\":{},\"idleTimeout\":null,"
                 "\"writeTimeout\":null,\"upstreamTls\":null}");
  Tlsplane__V1__CipherPolicy p = TLSPLANE__V1__CIPHER_POLICY__INIT;
  char *out = encode_ok(&p.base, PBJSON_EMIT_DEFAULTS);
  assert_non_null(strstr(out, "\"minVersion\":\"TLS_VERSION_UNSPECIFIED\""));
  free(out);

  /* EMIT_DEFAULTS output decodes back to the empty message. */
  ProtobufCMessage *back = decode_ok(&tlsplane__v1__listener__descriptor,
                                     "{\"name\":\"\",\"labels\":{},\"createTime\":null,"
                                     "\"revision\":\"0\",\"sniRoutes\":[],"
                                     "\"handshakeTimeout\":null,\"renegotiationLimit\":null}");
  assert_same_wire(&empty.base, back);
  protobuf_c_message_free_unpacked(back, NULL);
}

static void test_null_means_default(void **state) {
  ProtobufCMessage *m =
      decode_ok(&tlsplane__v1__listener__descriptor,
                "{\"address\":null,\"sniRoutes\":null,\"labels\":null,\"handshakeTimeout\":null,"
                "\"renegotiationLimit\":null,\"maxConnections\":null,\"proxyProtocol\":null}");
  assert_int_equal(protobuf_c_message_get_packed_size(m), 0);
  Tlsplane__V1__Listener *l = (Tlsplane__V1__Listener *)m;
  assert_null(l->renegotiation_limit);
  assert_string_equal(l->address, "");
  protobuf_c_message_free_unpacked(m, NULL);
}

/* --- Scalars ------------------------------------------------------------ */

static void test_int64_as_string(void **state) {
  static const struct {
    const char *json;
    int64_t want;
  } cases[] = {
      {"{\"revision\":42}", 42},
      {"{\"revision\":\"42\"}", 42},
      {"{\"revision\":\"-1\"}", -1},
      {"{\"revision\":1e3}", 1000},
      {"{\"revision\":\"1e3\"}", 1000},
      {"{\"revision\":1.0}", 1},
      {"{\"revision\":9007199254740993}", INT64_C(9007199254740993)},
      {"{\"revision\":\"9223372036854775807\"}", INT64_MAX},
      {"{\"revision\":-9223372036854775808}", INT64_MIN},
      {"{\"revision\":\"-9223372036854775808\"}", INT64_MIN},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    Tlsplane__V1__Snapshot *s =
        (Tlsplane__V1__Snapshot *)decode_ok(&tlsplane__v1__snapshot__descriptor, cases[i].json);
    assert_int_equal(s->revision, cases[i].want);
    protobuf_c_message_free_unpacked(&s->base, NULL);
  }
  Tlsplane__V1__Snapshot s = TLSPLANE__V1__SNAPSHOT__INIT;
  s.revision = INT64_MIN;
  assert_encodes(&s.base, 0, "{\"revision\":\"-9223372036854775808\"}");
  s.revision = 42;
  assert_encodes(&s.base, 0, "{\"revision\":\"42\"}");

  const ProtobufCMessageDescriptor *d = &tlsplane__v1__snapshot__descriptor;
  decode_fails(d, "{\"revision\":\"9223372036854775808\"}",
               "revision: \"9223372036854775808\" is out of range for an int64");
  decode_fails(d, "{\"revision\":9.3e18}", "revision: 9.3e+18 is out of range for an int64");
  decode_fails(d, "{\"revision\":\"1.5\"}", "revision: \"1.5\" is not an integer");
  decode_fails(d, "{\"revision\":\" 1\"}", "revision: \" 1\" is not an int64");
  decode_fails(d, "{\"revision\":\"+1\"}", "revision: \"+1\" is not an int64");
  decode_fails(d, "{\"revision\":\"0x10\"}", "revision: \"0x10\" is not an int64");
  decode_fails(d, "{\"revision\":\"\"}", "revision: \"\" is not an int64");
  decode_fails(d, "{\"revision\":[1]}", "revision: expected an int64, got an array");
}

static void test_int32(void **state) {
  const ProtobufCMessageDescriptor *d = &tlsplane__v1__listener__descriptor;
  Tlsplane__V1__Listener *l = (Tlsplane__V1__Listener *)decode_ok(
      d, "{\"maxConnections\":\"2147483647\",\"renegotiationLimit\":\"-2147483648\"}");
  assert_int_equal(l->max_connections, INT32_MAX);
  assert_int_equal(l->renegotiation_limit->value, INT32_MIN);
  protobuf_c_message_free_unpacked(&l->base, NULL);
  decode_fails(d, "{\"maxConnections\":2147483648}",
               "maxConnections: 2147483648 is out of range for an int32");
  decode_fails(d, "{\"maxConnections\":-2147483649}",
               "maxConnections: -2147483649 is out of range for an int32");
  decode_fails(d, "{\"maxConnections\":\"12a\"}", "maxConnections: \"12a\" is not an int32");
  decode_fails(d, "{\"maxConnections\":1.5}", "maxConnections: 1.5 is not an integer");
  decode_fails(d, "{\"maxConnections\":true}", "maxConnections: true is not an int32");
  decode_fails(d, "{\"maxConnections\":{}}", "maxConnections: expected an int32, got an object");
  decode_fails(d, "{\"renegotiationLimit\":\"x\"}", "renegotiationLimit: \"x\" is not an int32");
}

static void test_bool_string_enum(void **state) {
  const ProtobufCMessageDescriptor *d = &tlsplane__v1__cipher_policy__descriptor;
  Tlsplane__V1__CipherPolicy *p = (Tlsplane__V1__CipherPolicy *)decode_ok(
      d, "{\"minVersion\":\"TLS_1_2\",\"maxVersion\":5,\"honorCipherOrder\":false,"
         "\"ecdhDisabled\":true,\"ciphers\":\"ECDHE+AESGCM:!aNULL\"}");
  assert_int_equal(p->min_version, TLSPLANE__V1__TLS_VERSION__TLS_1_2);
  assert_int_equal(p->max_version, TLSPLANE__V1__TLS_VERSION__TLS_1_3);
  assert_non_null(p->honor_cipher_order);
  assert_false(p->honor_cipher_order->value);
  assert_true(p->ecdh_disabled);
  /* A set BoolValue is written even when false. */
  assert_encodes(&p->base, 0,
                 "{\"ciphers\":\"ECDHE+AESGCM:!aNULL\",\"ecdhDisabled\":true,"
                 "\"minVersion\":\"TLS_1_2\",\"maxVersion\":\"TLS_1_3\","
                 "\"honorCipherOrder\":false}");
  /* Numbers the enum does not name are kept and written as numbers. */
  p->min_version = 99;
  p->max_version = 0;
  protobuf_c_message_free_unpacked(&p->honor_cipher_order->base, NULL);
  p->honor_cipher_order = NULL;
  assert_encodes(&p->base, 0,
                 "{\"ciphers\":\"ECDHE+AESGCM:!aNULL\",\"ecdhDisabled\":true,\"minVersion\":99}");
  protobuf_c_message_free_unpacked(&p->base, NULL);
  assert_json_round_trip(d, "{\"minVersion\":99}", NULL);

  decode_fails(d, "{\"minVersion\":\"TLS_9\"}",
               "minVersion: \"TLS_9\" is not a value of tlsplane.v1.TlsVersion");
  decode_fails(d, "{\"minVersion\":\"tls_1_2\"}",
               "minVersion: \"tls_1_2\" is not a value of tlsplane.v1.TlsVersion");
  decode_fails(d, "{\"minVersion\":2147483648}",
               "minVersion: 2147483648 is out of range for an enum number");
  decode_fails(d, "{\"minVersion\":true}", "minVersion: true is not an enum value name or number");
  decode_fails(d, "{\"honorCipherOrder\":\"yes\"}", "honorCipherOrder: \"yes\" is not a boolean");
  decode_fails(d, "{\"ecdhDisabled\":1}", "ecdhDisabled: 1 is not a boolean");
  decode_fails(d, "{\"ciphers\":5}", "ciphers: 5 is not a string");
  decode_fails(d, "{\"ciphers\":[\"a\"]}", "ciphers: expected a string, got an array");
  decode_fails(d, "{\"warnings\":\"a\"}", "warnings: \"a\" is not an array");
}

static void test_scalars_all_types(void **state) {
  const char *json =
      "{\"i32\":-5,\"s64\":\"-9223372036854775808\",\"u32\":4294967295,"
      "\"f64\":\"18446744073709551615\",\"f\":1.5,\"d\":\"-Infinity\",\"ri64\":[1,\"2\",3e0],"
      "\"rb\":[true,false],\"byId\":{\"1\":\"one\",\"-2\":\"minus two\"},"
      "\"flags\":{\"true\":\"5\",\"false\":6},\"opt\":0,\"rbytes\":[\"AQID\",\"_-8\",\"\"],"
      "\"rd\":[\"NaN\",0.25,\"1e3\",\"Infinity\",-0.5],\"u64\":\"18446744073709551615\","
      "\"sf32\":-1,\"rs\":[\"a\",\"\xc3\xa9\",\"\"]}";
  TestScalars *t = (TestScalars *)decode_ok(&scalars_desc, json);
  assert_int_equal(t->i32, -5);
  assert_true(t->s64 == INT64_MIN);
  assert_int_equal(t->u32, UINT32_MAX);
  assert_true(t->f64 == UINT64_MAX);
  assert_true(t->f == 1.5f);
  assert_true(isinf(t->d) && t->d < 0);
  assert_int_equal(t->n_ri64, 3);
  assert_int_equal(t->ri64[2], 3);
  assert_int_equal(t->n_rb, 2);
  assert_int_equal(t->n_by_id, 2);
  assert_int_equal(t->by_id[1]->key, -2);
  assert_string_equal(t->by_id[1]->value, "minus two");
  assert_int_equal(t->n_flags, 2);
  assert_true(t->flags[0]->key);
  assert_int_equal(t->flags[0]->value, 5);
  assert_false(t->flags[1]->key);
  assert_true(t->has_opt);
  assert_int_equal(t->opt, 0);
  assert_int_equal(t->n_rbytes, 3);
  assert_int_equal(t->rbytes[1].len, 2);
  assert_memory_equal(t->rbytes[1].data, "\xff\xef", 2);
  assert_int_equal(t->rbytes[2].len, 0);
  assert_true(isnan(t->rd[0]));
  assert_true(t->rd[2] == 1000.0);
  assert_true(t->u64 == UINT64_MAX);
  assert_int_equal(t->sf32, -1);
  assert_int_equal(t->n_rs, 3);
  assert_string_equal(t->rs[1], "\xc3\xa9");
  /* proto3 optional: set to 0 is written; map keys are strings. */
  assert_encodes(&t->base, 0,
                 "{\"i32\":-5,\"s64\":\"-9223372036854775808\",\"u32\":4294967295,"
                 "\"f64\":\"18446744073709551615\",\"f\":1.5,\"d\":\"-Infinity\","
                 "\"ri64\":[\"1\",\"2\",\"3\"],\"rb\":[true,false],"
                 "\"byId\":{\"1\":\"one\",\"-2\":\"minus two\"},"
                 "\"flags\":{\"true\":\"5\",\"false\":\"6\"},\"opt\":0,"
                 "\"rbytes\":[\"AQID\",\"/+8=\",\"\"],"
                 "\"rd\":[\"NaN\",0.25,1000,\"Infinity\",-0.5],\"u64\":\"18446744073709551615\","
                 "\"sf32\":-1,\"rs\":[\"a\",\"\xc3\xa9\",\"\"]}");
  assert_wire_round_trip(&t->base, 0);
  protobuf_c_message_free_unpacked(&t->base, NULL);

  TestScalars empty;
  scalars_init(&empty.base);
  assert_encodes(&empty.base, 0, "{}");
  /* Unset proto3 optional stays out even under EMIT_DEFAULTS. */
  assert_encodes(&empty.base, PBJSON_EMIT_DEFAULTS,
                 "{\"i32\":0,\"s64\":\"0\",\"u32\":0,\"f64\":\"0\",\"f\":0,\"d\":0,\"ri64\":[],"
                 "\"rb\":[],\"byId\":{},\"flags\":{},\"rbytes\":[],\"rd\":[],\"u64\":\"0\","
                 "\"sf32\":0,\"rs\":[]}");

  /* Floats are written so that they read back exactly. */
  empty.f = 0.1f;
  empty.d = 0.1;
  char *out = encode_ok(&empty.base, 0);
  TestScalars *back = (TestScalars *)decode_ok(&scalars_desc, out);
  assert_true(back->f == 0.1f);
  assert_true(back->d == 0.1);
  protobuf_c_message_free_unpacked(&back->base, NULL);
  free(out);

  const ProtobufCMessageDescriptor *d = &scalars_desc;
  decode_fails(d, "{\"u32\":-1}", "u32: -1 is out of range for a uint32");
  decode_fails(d, "{\"u32\":4294967296}", "u32: 4294967296 is out of range for a uint32");
  decode_fails(d, "{\"u64\":-1}", "u64: -1 is out of range for a uint64");
  decode_fails(d, "{\"u64\":\"-1\"}", "u64: \"-1\" is out of range for a uint64");
  decode_fails(d, "{\"u64\":\"18446744073709551616\"}",
               "u64: \"18446744073709551616\" is out of range for a uint64");
  decode_fails(d, "{\"f64\":1.8446744073709552e19}",
               "f64: 1.8446744073709552e+19 is out of range for a uint64");
  decode_fails(d, "{\"f\":1e39}", "f: 1e+39 is out of range for a float");
  decode_fails(d, "{\"f\":\"3.5e38\"}", "f: \"3.5e38\" is out of range for a float");
  decode_fails(d, "{\"d\":\"1e999\"}", "d: \"1e999\" is out of range for a double");
  decode_fails(d, "{\"d\":\"nan\"}", "d: \"nan\" is not a double");
  decode_fails(d, "{\"d\":\"inf\"}", "d: \"inf\" is not a double");
  decode_fails(d, "{\"d\":\"0x1p3\"}", "d: \"0x1p3\" is not a double");
  decode_fails(d, "{\"ri64\":[1,null]}", "ri64[1]: null is not allowed in a list");
  decode_fails(d, "{\"rb\":[true,\"false\"]}", "rb[1]: \"false\" is not a boolean");
  decode_fails(d, "{\"rd\":[1,{}]}", "rd[1]: expected a double, got an object");
  decode_fails(d, "{\"byId\":{\"01\":\"x\"}}", "byId[\"01\"]: key \"01\" is not an int32 map key");
  decode_fails(d, "{\"byId\":{\"-0\":\"x\"}}", "byId[\"-0\"]: key \"-0\" is not an int32 map key");
  decode_fails(d, "{\"byId\":{\"+1\":\"x\"}}", "byId[\"+1\"]: key \"+1\" is not an int32 map key");
  decode_fails(d, "{\"byId\":{\"2147483648\":\"x\"}}",
               "byId[\"2147483648\"]: key \"2147483648\" is not an int32 map key");
  decode_fails(d, "{\"byId\":{\"1\":2}}", "byId[\"1\"]: 2 is not a string");
  decode_fails(d, "{\"flags\":{\"yes\":1}}",
               "flags[\"yes\"]: key \"yes\" is not a bool map key (\"true\" or \"false\")");
  decode_fails(d, "{\"flags\":{\"true\":\"x\"}}", "flags[\"true\"]: \"x\" is not an int64");
  decode_fails(d, "{\"opt\":1,\"opt\":2}",
               "invalid JSON at line 1, column 14: duplicate object key near '\"opt\"'");
}

/* --- bytes --------------------------------------------------------------- */

static void assert_bytes_decode(const char *json, const char *want, size_t want_len) {
  Google__Protobuf__BytesValue *b =
      (Google__Protobuf__BytesValue *)decode_ok(&google__protobuf__bytes_value__descriptor, json);
  assert_int_equal(b->value.len, want_len);
  if (want_len)
    assert_memory_equal(b->value.data, want, want_len);
  protobuf_c_message_free_unpacked(&b->base, NULL);
}

static void test_bytes_base64(void **state) {
  assert_bytes_decode("\"+/8=\"", "\xfb\xff", 2);
  assert_bytes_decode("\"+/8\"", "\xfb\xff", 2);
  assert_bytes_decode("\"-_8=\"", "\xfb\xff", 2);
  assert_bytes_decode("\"-_8\"", "\xfb\xff", 2);
  assert_bytes_decode("\"AQIDBA==\"", "\x01\x02\x03\x04", 4);
  assert_bytes_decode("\"AQIDBA\"", "\x01\x02\x03\x04", 4);
  assert_bytes_decode("\"AQI=\"", "\x01\x02", 2);
  assert_bytes_decode("\"AQID\"", "\x01\x02\x03", 3);
  assert_bytes_decode("\"AQID\\r\\nBA==\"", "\x01\x02\x03\x04", 4);
  assert_bytes_decode("\"\"", "", 0);

  Google__Protobuf__BytesValue b = GOOGLE__PROTOBUF__BYTES_VALUE__INIT;
  assert_encodes(&b.base, 0, "\"\"");
  b.value.data = (uint8_t *)"\xfb\xff";
  b.value.len = 2;
  assert_encodes(&b.base, 0, "\"+/8=\"");
  b.value.data = (uint8_t *)"\x00";
  b.value.len = 1;
  assert_encodes(&b.base, 0, "\"AA==\"");

  const ProtobufCMessageDescriptor *d = &tlsplane__v1__ticket_key_material__descriptor;
  /* Errors never quote the value: it may be a key. */
  decode_fails(d, "{\"key\":\"a*b=\"}", "key: not valid base64 (invalid character)");
  decode_fails(d, "{\"key\":\"A\"}", "key: not valid base64 (wrong length or padding)");
  decode_fails(d, "{\"key\":\"AQ=\"}", "key: not valid base64 (wrong length or padding)");
  decode_fails(d, "{\"key\":\"AQ===\"}", "key: not valid base64 (wrong length or padding)");
  decode_fails(d, "{\"key\":\"AQ=D\"}", "key: not valid base64 (data after padding)");
  decode_fails(d, "{\"key\":\"+_8=\"}",
               "key: not valid base64 (mixes the standard and URL-safe alphabets)");
  decode_fails(d, "{\"key\":\"AQ ID\"}", "key: not valid base64 (invalid character)");
  decode_fails(d, "{\"key\":1}", "key: 1 is not a base64 string");
}

/* --- Well-known types ------------------------------------------------------ */

static void assert_timestamp(const char *json, int64_t seconds, int32_t nanos,
                             const char *canonical) {
  Google__Protobuf__Timestamp *ts =
      (Google__Protobuf__Timestamp *)decode_ok(&google__protobuf__timestamp__descriptor, json);
  assert_int_equal(ts->seconds, seconds);
  assert_int_equal(ts->nanos, nanos);
  assert_encodes(&ts->base, 0, canonical);
  protobuf_c_message_free_unpacked(&ts->base, NULL);
}

static void test_timestamp(void **state) {
  assert_timestamp("\"1970-01-01T00:00:00Z\"", 0, 0, "\"1970-01-01T00:00:00Z\"");
  assert_timestamp("\"2026-11-27T00:00:00Z\"", T_2026_11_27, 0, "\"2026-11-27T00:00:00Z\"");
  assert_timestamp("\"2026-11-27T01:00:00+01:00\"", T_2026_11_27, 0, "\"2026-11-27T00:00:00Z\"");
  assert_timestamp("\"2026-11-26T18:30:00-05:30\"", T_2026_11_27, 0, "\"2026-11-27T00:00:00Z\"");
  assert_timestamp("\"2026-11-27t00:00:00z\"", T_2026_11_27, 0, "\"2026-11-27T00:00:00Z\"");
  assert_timestamp("\"2026-11-27T00:00:00.5Z\"", T_2026_11_27, 500000000,
                   "\"2026-11-27T00:00:00.500Z\"");
  assert_timestamp("\"2026-11-27T00:00:00.000001Z\"", T_2026_11_27, 1000,
                   "\"2026-11-27T00:00:00.000001Z\"");
  assert_timestamp("\"2026-11-27T00:00:00.12345Z\"", T_2026_11_27, 123450000,
                   "\"2026-11-27T00:00:00.123450Z\"");
  assert_timestamp("\"2026-11-27T00:00:00.123456789Z\"", T_2026_11_27, 123456789,
                   "\"2026-11-27T00:00:00.123456789Z\"");
  assert_timestamp("\"1969-12-31T23:59:59.999Z\"", -1, 999000000, "\"1969-12-31T23:59:59.999Z\"");
  assert_timestamp("\"2024-02-29T12:00:00Z\"", INT64_C(1709208000), 0, "\"2024-02-29T12:00:00Z\"");
  assert_timestamp("\"2000-02-29T00:00:00Z\"", INT64_C(951782400), 0, "\"2000-02-29T00:00:00Z\"");
  assert_timestamp("\"0001-01-01T00:00:00Z\"", INT64_C(-62135596800), 0,
                   "\"0001-01-01T00:00:00Z\"");
  assert_timestamp("\"9999-12-31T23:59:59.999999999Z\"", INT64_C(253402300799), 999999999,
                   "\"9999-12-31T23:59:59.999999999Z\"");
  assert_timestamp("\"0001-01-01T00:59:00+00:59\"", INT64_C(-62135596800), 0,
                   "\"0001-01-01T00:00:00Z\"");

  const ProtobufCMessageDescriptor *d = &google__protobuf__timestamp__descriptor;
  const char *fmt = "(expected YYYY-MM-DDTHH:MM:SS[.fraction]Z or an offset)";
  char want[256];
  static const char *const malformed[] = {
      "2026-11-27 00:00:00Z",
      "2026-11-27T00:00:00",
      "2026-11-27T00:00Z",
      "2026-11-27T00:00:00+0100",
      "2026-11-27T00:00:00Z ",
      "26-11-27T00:00:00Z",
      "",
  };
  for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
    char json[64];
    snprintf(json, sizeof(json), "\"%s\"", malformed[i]);
    snprintf(want, sizeof(want), "\"%s\" is not a timestamp %s", malformed[i], fmt);
    decode_fails(d, json, want);
  }
  decode_fails(d, "\"2026-02-29T00:00:00Z\"",
               "\"2026-02-29T00:00:00Z\" is not a timestamp (no such date or time)");
  decode_fails(d, "\"1900-02-29T00:00:00Z\"",
               "\"1900-02-29T00:00:00Z\" is not a timestamp (no such date or time)");
  decode_fails(d, "\"2026-13-01T00:00:00Z\"",
               "\"2026-13-01T00:00:00Z\" is not a timestamp (no such date or time)");
  decode_fails(d, "\"2026-11-27T24:00:00Z\"",
               "\"2026-11-27T24:00:00Z\" is not a timestamp (no such date or time)");
  decode_fails(d, "\"2026-11-27T00:00:60Z\"",
               "\"2026-11-27T00:00:60Z\" is not a timestamp (no such date or time)");
  decode_fails(d, "\"0000-01-01T00:00:00Z\"",
               "\"0000-01-01T00:00:00Z\" is not a timestamp (no such date or time)");
  decode_fails(d, "\"2026-11-27T00:00:00.Z\"",
               "\"2026-11-27T00:00:00.Z\" is not a timestamp (no digits after '.')");
  decode_fails(d, "\"2026-11-27T00:00:00.1234567890Z\"",
               "\"2026-11-27T00:00:00.1234567890Z\" is not a timestamp (more than 9 fraction "
               "digits)");
  decode_fails(d, "\"2026-11-27T00:00:00+24:00\"",
               "\"2026-11-27T00:00:00+24:00\" is not a timestamp (offset out of range)");
  decode_fails(d, "\"0001-01-01T00:00:00+00:01\"",
               "\"0001-01-01T00:00:00+00:01\" is not a timestamp (outside "
               "0001-01-01T00:00:00Z..9999-12-31T23:59:59.999999999Z)");
  decode_fails(d, "\"9999-12-31T23:59:59-00:01\"",
               "\"9999-12-31T23:59:59-00:01\" is not a timestamp (outside "
               "0001-01-01T00:00:00Z..9999-12-31T23:59:59.999999999Z)");
  decode_fails(d, "1795737600", "1795737600 is not a timestamp (RFC 3339 string)");
  decode_fails(d, "{\"seconds\":1}", "expected a timestamp (RFC 3339 string), got an object");

  Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  ts.seconds = INT64_C(253402300800);
  encode_fails(&ts.base, "timestamp {253402300800s, 0ns} is out of range");
  ts.seconds = 0;
  ts.nanos = -1;
  encode_fails(&ts.base, "timestamp {0s, -1ns} is out of range");
  ts.nanos = 1000000000;
  encode_fails(&ts.base, "timestamp {0s, 1000000000ns} is out of range");

  /* In a message, with the path. */
  Tlsplane__V1__Certificate c = TLSPLANE__V1__CERTIFICATE__INIT;
  ts.seconds = INT64_C(-62135596801);
  ts.nanos = 0;
  c.not_after = &ts;
  encode_fails(&c.base, "notAfter: timestamp {-62135596801s, 0ns} is out of range");
  decode_fails(&tlsplane__v1__certificate__descriptor, "{\"notAfter\":\"tomorrow\"}",
               "notAfter: \"tomorrow\" is not a timestamp (expected "
               "YYYY-MM-DDTHH:MM:SS[.fraction]Z or an offset)");
}

static void assert_duration(const char *json, int64_t seconds, int32_t nanos,
                            const char *canonical) {
  Google__Protobuf__Duration *du =
      (Google__Protobuf__Duration *)decode_ok(&google__protobuf__duration__descriptor, json);
  assert_int_equal(du->seconds, seconds);
  assert_int_equal(du->nanos, nanos);
  assert_encodes(&du->base, 0, canonical);
  protobuf_c_message_free_unpacked(&du->base, NULL);
}

static void test_duration(void **state) {
  assert_duration("\"1.500s\"", 1, 500000000, "\"1.500s\"");
  assert_duration("\"1.5s\"", 1, 500000000, "\"1.500s\"");
  assert_duration("\"120s\"", 120, 0, "\"120s\"");
  assert_duration("\"0s\"", 0, 0, "\"0s\"");
  assert_duration("\"0.000s\"", 0, 0, "\"0s\"");
  assert_duration("\"-1.5s\"", -1, -500000000, "\"-1.500s\"");
  assert_duration("\"-0.5s\"", 0, -500000000, "\"-0.500s\"");
  assert_duration("\"-0.000000001s\"", 0, -1, "\"-0.000000001s\"");
  assert_duration("\"0.00025s\"", 0, 250000, "\"0.000250s\"");
  assert_duration("\"1.000000001s\"", 1, 1, "\"1.000000001s\"");
  assert_duration("\"315576000000s\"", INT64_C(315576000000), 0, "\"315576000000s\"");
  assert_duration("\"-315576000000.999999999s\"", INT64_C(-315576000000), -999999999,
                  "\"-315576000000.999999999s\"");

  const ProtobufCMessageDescriptor *d = &google__protobuf__duration__descriptor;
  static const char *const bad[] = {"12x",           "1",    "s",    "1.s",  "+1s",
                                    "1s ",           " 1s",  ".5s",  "1e3s", "1.0000000001s",
                                    "315576000001s", "--1s", "1.5S", ""};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    char json[64], want[128];
    snprintf(json, sizeof(json), "\"%s\"", bad[i]);
    snprintf(want, sizeof(want), "\"%s\" is not a duration", bad[i]);
    decode_fails(d, json, want);
  }
  decode_fails(d, "12", "12 is not a duration");
  decode_fails(d, "{}", "expected a duration, got an object");
  decode_fails(&tlsplane__v1__snapshot__descriptor,
               "{\"listeners\":[{\"listener\":{\"handshakeTimeout\":\"12x\"}}]}",
               "listeners[0].listener.handshakeTimeout: \"12x\" is not a duration");

  Google__Protobuf__Duration du = GOOGLE__PROTOBUF__DURATION__INIT;
  du.seconds = -5;
  assert_encodes(&du.base, 0, "\"-5s\"");
  du.seconds = 0;
  du.nanos = 500;
  assert_encodes(&du.base, 0, "\"0.000000500s\"");
  du.seconds = 1;
  du.nanos = -5;
  encode_fails(&du.base, "duration {1s, -5ns} is out of range or mixes signs");
  du.seconds = INT64_C(315576000001);
  du.nanos = 0;
  encode_fails(&du.base, "duration {315576000001s, 0ns} is out of range or mixes signs");
  du.seconds = 0;
  du.nanos = 1000000000;
  encode_fails(&du.base, "duration {0s, 1000000000ns} is out of range or mixes signs");
}

static void test_wrappers(void **state) {
  assert_json_round_trip(&google__protobuf__int64_value__descriptor, "\"-5\"", NULL);
  assert_json_round_trip(&google__protobuf__int64_value__descriptor, "-5", "\"-5\"");
  assert_json_round_trip(&google__protobuf__uint64_value__descriptor, "\"18446744073709551615\"",
                         NULL);
  assert_json_round_trip(&google__protobuf__int32_value__descriptor, "\"-3\"", "-3");
  assert_json_round_trip(&google__protobuf__int32_value__descriptor, "0", NULL);
  assert_json_round_trip(&google__protobuf__uint32_value__descriptor, "4294967295", NULL);
  assert_json_round_trip(&google__protobuf__bool_value__descriptor, "false", NULL);
  assert_json_round_trip(&google__protobuf__bool_value__descriptor, "true", NULL);
  assert_json_round_trip(&google__protobuf__string_value__descriptor, "\"\"", NULL);
  assert_json_round_trip(&google__protobuf__string_value__descriptor, "\"x\\\"y\"", NULL);
  assert_json_round_trip(&google__protobuf__bytes_value__descriptor, "\"AAEC\"", NULL);
  assert_json_round_trip(&google__protobuf__double_value__descriptor, "0.5", NULL);
  assert_json_round_trip(&google__protobuf__double_value__descriptor, "\"NaN\"", NULL);
  assert_json_round_trip(&google__protobuf__double_value__descriptor, "-2", NULL);
  /* Non-integral reals: jansson writes 17 significant digits, exact but
   * not always shortest; what matters is that they read back the same. */
  Google__Protobuf__DoubleValue dv = GOOGLE__PROTOBUF__DOUBLE_VALUE__INIT;
  static const double reals[] = {-1e300, 0.1, 1.0 / 3, 5e-324, 1.7976931348623157e308};
  for (size_t i = 0; i < sizeof(reals) / sizeof(reals[0]); i++) {
    dv.value = reals[i];
    assert_wire_round_trip(&dv.base, 0);
  }
  assert_json_round_trip(&google__protobuf__float_value__descriptor, "\"-Infinity\"", NULL);
  assert_json_round_trip(&google__protobuf__float_value__descriptor, "2.5", NULL);
  assert_json_round_trip(&google__protobuf__float_value__descriptor, "\"1e3\"", "1000");

  decode_fails(&google__protobuf__int32_value__descriptor, "null", "expected an int32, got null");
  decode_fails(&google__protobuf__bool_value__descriptor, "{\"value\":true}",
               "expected a boolean, got an object");
  decode_fails(&google__protobuf__int64_value__descriptor, "\"1.5\"", "\"1.5\" is not an integer");

  /* Wrappers in a message: null and absent are unset; set zero stays. */
  Tlsplane__V1__TlsContext *c = (Tlsplane__V1__TlsContext *)decode_ok(
      &tlsplane__v1__tls_context__descriptor, "{\"sessionTickets\":false}");
  assert_non_null(c->session_tickets);
  assert_false(c->session_tickets->value);
  assert_encodes(&c->base, 0, "{\"sessionTickets\":false}");
  protobuf_c_message_free_unpacked(&c->base, NULL);
  c = (Tlsplane__V1__TlsContext *)decode_ok(&tlsplane__v1__tls_context__descriptor,
                                            "{\"sessionTickets\":null}");
  assert_null(c->session_tickets);
  protobuf_c_message_free_unpacked(&c->base, NULL);
}

static void test_field_mask(void **state) {
  const ProtobufCMessageDescriptor *d = &tlsplane__v1__update_certificate_request__descriptor;
  Tlsplane__V1__UpdateCertificateRequest *r = (Tlsplane__V1__UpdateCertificateRequest *)decode_ok(
      d, "{\"certificate\":{\"name\":\"certificates/www\"},"
         "\"updateMask\":\"certificateChainPem,privateKeyPem,labels,certificate.notAfter\"}");
  assert_non_null(r->update_mask);
  assert_int_equal(r->update_mask->n_paths, 4);
  assert_string_equal(r->update_mask->paths[0], "certificate_chain_pem");
  assert_string_equal(r->update_mask->paths[1], "private_key_pem");
  assert_string_equal(r->update_mask->paths[2], "labels");
  assert_string_equal(r->update_mask->paths[3], "certificate.not_after");
  assert_encodes(
      &r->base, 0,
      "{\"certificate\":{\"name\":\"certificates/www\"},"
      "\"updateMask\":\"certificateChainPem,privateKeyPem,labels,certificate.notAfter\"}");
  protobuf_c_message_free_unpacked(&r->base, NULL);

  /* An empty mask is a set FieldMask with no paths. */
  r = (Tlsplane__V1__UpdateCertificateRequest *)decode_ok(d, "{\"update_mask\":\"\"}");
  assert_non_null(r->update_mask);
  assert_int_equal(r->update_mask->n_paths, 0);
  assert_encodes(&r->base, 0, "{\"updateMask\":\"\"}");
  protobuf_c_message_free_unpacked(&r->base, NULL);

  const char *tail = " is not a field mask path (lowerCamelCase names joined by '.')";
  char want[256];
  static const char *const bad[][2] = {
      {"private_key_pem", "private_key_pem"},
      {"a,,b", ""},
      {"labels,", ""},
      {"1abc", "1abc"},
      {"certificate..name", "certificate..name"},
      {"name,foo-bar", "foo-bar"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    char json[128];
    snprintf(json, sizeof(json), "{\"updateMask\":\"%s\"}", bad[i][0]);
    snprintf(want, sizeof(want), "updateMask: \"%s\"%s", bad[i][1], tail);
    decode_fails(d, json, want);
  }
  decode_fails(d, "{\"updateMask\":[\"a\"]}",
               "updateMask: expected a field mask (comma-separated paths, or {\"paths\": [...]}), "
               "got an array");

  /* The object form grpcurl sends: proto field names, kept as they are. */
  r = (Tlsplane__V1__UpdateCertificateRequest *)decode_ok(
      d, "{\"updateMask\":{\"paths\":[\"certificate_chain_pem\",\"labels\",\"certificate.not_"
         "after\"]}}");
  assert_non_null(r->update_mask);
  assert_int_equal(r->update_mask->n_paths, 3);
  assert_string_equal(r->update_mask->paths[0], "certificate_chain_pem");
  assert_string_equal(r->update_mask->paths[1], "labels");
  assert_string_equal(r->update_mask->paths[2], "certificate.not_after");
  assert_encodes(&r->base, 0,
                 "{\"updateMask\":\"certificateChainPem,labels,certificate.notAfter\"}");
  protobuf_c_message_free_unpacked(&r->base, NULL);
  r = (Tlsplane__V1__UpdateCertificateRequest *)decode_ok(d, "{\"updateMask\":{\"paths\":[]}}");
  assert_non_null(r->update_mask);
  assert_int_equal(r->update_mask->n_paths, 0);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  decode_fails(d, "{\"updateMask\":{\"paths\":[\"labels\",\"privateKeyPem\"]}}",
               "updateMask: paths[1]: \"privateKeyPem\" is not a field mask path (field names "
               "joined by '.')");
  decode_fails(d, "{\"updateMask\":{\"paths\":[\"labels\",7]}}",
               "updateMask: paths[1]: expected a string, got a number");
  decode_fails(d, "{\"updateMask\":{\"paths\":\"labels\"}}",
               "updateMask: paths: expected an array of strings, got a string");
  decode_fails(d, "{\"updateMask\":{\"path\":[\"labels\"]}}",
               "updateMask: a field mask object has only \"paths\", not \"path\"");

  Google__Protobuf__FieldMask fm = GOOGLE__PROTOBUF__FIELD_MASK__INIT;
  char *paths[] = {"key_bits", "fooBar"};
  fm.paths = paths;
  fm.n_paths = 1;
  assert_encodes(&fm.base, 0, "\"keyBits\"");
  fm.n_paths = 2;
  encode_fails(&fm.base, "field mask path \"fooBar\" has no lowerCamelCase form");
  paths[1] = "foo__bar";
  encode_fails(&fm.base, "field mask path \"foo__bar\" has no lowerCamelCase form");
  paths[1] = "foo_1";
  encode_fails(&fm.base, "field mask path \"foo_1\" has no lowerCamelCase form");
  Tlsplane__V1__UpdateCertificateRequest req = TLSPLANE__V1__UPDATE_CERTIFICATE_REQUEST__INIT;
  req.update_mask = &fm;
  encode_fails(&req.base, "updateMask: field mask path \"foo_1\" has no lowerCamelCase form");
}

static void test_empty_and_unsupported(void **state) {
  assert_json_round_trip(&google__protobuf__empty__descriptor, "{}", NULL);
  Google__Protobuf__Empty e = GOOGLE__PROTOBUF__EMPTY__INIT;
  assert_encodes(&e.base, PBJSON_EMIT_DEFAULTS, "{}");
  decode_fails(&google__protobuf__empty__descriptor, "{\"a\":1}",
               "unknown field \"a\" in google.protobuf.Empty");
  decode_fails(&google__protobuf__empty__descriptor, "[]",
               "expected an object (google.protobuf.Empty), got an array");

  /* Any is refused, by name: a descriptor that claims to be one. */
  ProtobufCMessageDescriptor any = google__protobuf__empty__descriptor;
  any.name = "google.protobuf.Any";
  decode_fails(&any, "{}", "google.protobuf.Any is not supported");
  ProtobufCMessage m = {&any, 0, NULL};
  encode_fails(&m, "google.protobuf.Any is not supported");
}

/* --- Maps and oneofs ------------------------------------------------------- */

static void test_maps(void **state) {
  const ProtobufCMessageDescriptor *d = &tlsplane__v1__resolved_listener__descriptor;
  Tlsplane__V1__ResolvedListener *rl = (Tlsplane__V1__ResolvedListener *)decode_ok(
      d, "{\"tlsContexts\":{\"b\":{\"tlsContext\":{\"name\":\"tlsContexts/b\"}},\"a\":{}}}");
  assert_int_equal(rl->n_tls_contexts, 2);
  assert_string_equal(rl->tls_contexts[0]->key, "b");
  assert_string_equal(rl->tls_contexts[0]->value->tls_context->name, "tlsContexts/b");
  assert_string_equal(rl->tls_contexts[1]->key, "a");
  assert_non_null(rl->tls_contexts[1]->value);
  /* A message map value is written even when empty. */
  assert_encodes(
      &rl->base, 0,
      "{\"tlsContexts\":{\"b\":{\"tlsContext\":{\"name\":\"tlsContexts/b\"}},\"a\":{}}}");
  protobuf_c_message_free_unpacked(&rl->base, NULL);

  /* An entry with no value on the wire still reads as an empty object. */
  Tlsplane__V1__ResolvedListener__TlsContextsEntry
      e = TLSPLANE__V1__RESOLVED_LISTENER__TLS_CONTEXTS_ENTRY__INIT,
      *ep = &e;
  Tlsplane__V1__ResolvedListener l = TLSPLANE__V1__RESOLVED_LISTENER__INIT;
  e.key = "x";
  l.n_tls_contexts = 1;
  l.tls_contexts = &ep;
  assert_encodes(&l.base, 0, "{\"tlsContexts\":{\"x\":{}}}");
  /* Duplicate keys on the wire: the last one wins, as in proto. */
  Tlsplane__V1__Listener__LabelsEntry le[2] = {TLSPLANE__V1__LISTENER__LABELS_ENTRY__INIT,
                                               TLSPLANE__V1__LISTENER__LABELS_ENTRY__INIT};
  Tlsplane__V1__Listener__LabelsEntry *lep[2] = {&le[0], &le[1]};
  le[0].key = le[1].key = "k";
  le[0].value = "first";
  le[1].value = "second";
  Tlsplane__V1__Listener li = TLSPLANE__V1__LISTENER__INIT;
  li.n_labels = 2;
  li.labels = lep;
  assert_encodes(&li.base, 0, "{\"labels\":{\"k\":\"second\"}}");

  decode_fails(d, "{\"tlsContexts\":[]}", "tlsContexts: expected an object (a map), got an array");
  decode_fails(d, "{\"tlsContexts\":{\"a\":null}}",
               "tlsContexts[\"a\"]: null is not allowed as a map value");
  decode_fails(d, "{\"tlsContexts\":{\"a\":\"b\"}}",
               "tlsContexts[\"a\"]: \"b\" is not an object (tlsplane.v1.ResolvedTlsContext)");
  decode_fails(d, "{\"tlsContexts\":{\"ctx\":{\"tlsContext\":{\"requestCert\":1}}}}",
               "tlsContexts[\"ctx\"].tlsContext.requestCert: 1 is not a boolean");
  decode_fails(d, "{\"tlsContexts\":{\"ctx\":{\"tlsContext\":{\"x\":1}}}}",
               "tlsContexts[\"ctx\"].tlsContext: unknown field \"x\" in tlsplane.v1.TlsContext");
  decode_fails(&tlsplane__v1__listener__descriptor, "{\"labels\":{\"a\":1}}",
               "labels[\"a\"]: 1 is not a string");
  decode_fails(&tlsplane__v1__listener__descriptor, "{\"labels\":{\"a\":\"1\",\"a\":\"2\"}}",
               "invalid JSON at line 1, column 22: duplicate object key near '\"a\"'");
}

static void test_oneof(void **state) {
  const ProtobufCMessageDescriptor *d =
      &grpc__reflection__v1__server_reflection_request__descriptor;
  Grpc__Reflection__V1__ServerReflectionRequest *r =
      (Grpc__Reflection__V1__ServerReflectionRequest *)decode_ok(
          d, "{\"host\":\"h\",\"listServices\":\"\"}");
  assert_int_equal(r->message_request_case,
                   GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES);
  assert_string_equal(r->list_services, "");
  /* A set oneof member is written even at its default. */
  assert_encodes(&r->base, 0, "{\"host\":\"h\",\"listServices\":\"\"}");
  assert_encodes(&r->base, PBJSON_EMIT_DEFAULTS, "{\"host\":\"h\",\"listServices\":\"\"}");
  assert_wire_round_trip(&r->base, 0);
  protobuf_c_message_free_unpacked(&r->base, NULL);

  r = (Grpc__Reflection__V1__ServerReflectionRequest *)decode_ok(
      d, "{\"file_containing_extension\":{\"containingType\":\"a.B\",\"extensionNumber\":5}}");
  assert_int_equal(
      r->message_request_case,
      GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION);
  assert_int_equal(r->file_containing_extension->extension_number, 5);
  assert_encodes(
      &r->base, 0,
      "{\"fileContainingExtension\":{\"containingType\":\"a.B\",\"extensionNumber\":5}}");
  protobuf_c_message_free_unpacked(&r->base, NULL);

  /* null leaves a member unset, so another may follow. */
  r = (Grpc__Reflection__V1__ServerReflectionRequest *)decode_ok(
      d, "{\"fileByFilename\":null,\"fileContainingSymbol\":\"tlsplane.v1.Listener\"}");
  assert_int_equal(
      r->message_request_case,
      GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL);
  protobuf_c_message_free_unpacked(&r->base, NULL);

  Grpc__Reflection__V1__ServerReflectionRequest none =
      GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
  assert_encodes(&none.base, PBJSON_EMIT_DEFAULTS, "{\"host\":\"\"}");

  decode_fails(d, "{\"fileByFilename\":\"a\",\"listServices\":\"*\"}",
               "listServices: fileByFilename of the same oneof is already set");
  /* The member that lost must not leak (ASan): a message, then a string. */
  decode_fails(d,
               "{\"fileContainingExtension\":{\"containingType\":\"a\"},\"list_services\":\"*\"}",
               "list_services: fileContainingExtension of the same oneof is already set");
  decode_fails(d, "{\"fileContainingExtension\":{\"extensionNumber\":\"x\"}}",
               "fileContainingExtension.extensionNumber: \"x\" is not an int32");
}

/* --- proto2: explicit presence and required fields (descriptor.proto) ---- */

static void test_proto2(void **state) {
  const ProtobufCMessageDescriptor *d = &google__protobuf__file_descriptor_proto__descriptor;
  const char *json =
      "{\"name\":\"a.proto\",\"messageType\":[{\"name\":\"M\",\"field\":[{\"name\":\"x\","
      "\"number\":1,\"label\":\"LABEL_OPTIONAL\",\"type\":\"TYPE_INT32\",\"jsonName\":\"x\"}]}],"
      "\"options\":{\"optimizeFor\":\"SPEED\",\"javaMultipleFiles\":false}}";
  Google__Protobuf__FileDescriptorProto *f =
      (Google__Protobuf__FileDescriptorProto *)decode_ok(d, json);
  assert_true(f->options->has_java_multiple_files);
  assert_true(f->options->has_optimize_for);
  assert_int_equal(f->message_type[0]->field[0]->number, 1);
  /* Explicitly set defaults are written back. */
  assert_encodes(&f->base, 0, json);
  assert_wire_round_trip(&f->base, 0);
  protobuf_c_message_free_unpacked(&f->base, NULL);

  decode_fails(&google__protobuf__uninterpreted_option__descriptor,
               "{\"name\":[{\"namePart\":\"x\"}]}",
               "name[0]: required field is_extension of "
               "google.protobuf.UninterpretedOption.NamePart is missing");
  decode_fails(&google__protobuf__uninterpreted_option__descriptor,
               "{\"name\":[{\"namePart\":\"x\",\"isExtension\":null}]}",
               "name[0]: required field is_extension of "
               "google.protobuf.UninterpretedOption.NamePart is missing");
  assert_json_round_trip(&google__protobuf__uninterpreted_option__descriptor,
                         "{\"name\":[{\"namePart\":\"x\",\"isExtension\":false}]}", NULL);
}

/* --- Errors ---------------------------------------------------------------- */

static void test_errors_name_the_path(void **state) {
  const ProtobufCMessageDescriptor *snap = &tlsplane__v1__snapshot__descriptor;
  const ProtobufCMessageDescriptor *lis = &tlsplane__v1__listener__descriptor;
  decode_fails(snap, "{\"listeners\":[{\"listener\":{\"foo\":1}}]}",
               "listeners[0].listener: unknown field \"foo\" in tlsplane.v1.Listener");
  decode_fails(lis, "{\"foo\":1}", "unknown field \"foo\" in tlsplane.v1.Listener");
  decode_fails(lis, "{\"Address\":\"x\"}", "unknown field \"Address\" in tlsplane.v1.Listener");
  decode_fails(lis, "{\"max_connections\":1,\"maxConnections\":2}",
               "field given twice, as \"max_connections\" and \"maxConnections\"");
  decode_fails(snap,
               "{\"listeners\":[{},{\"listener\":{\"sniRoutes\":[{\"hostname\":\"a\"},"
               "{\"tlsContext\":1}]}}]}",
               "listeners[1].listener.sniRoutes[1].tlsContext: 1 is not a string");
  decode_fails(snap, "{\"listeners\":[{\"ticketKeys\":[{\"key\":\"a*b=\"}]}]}",
               "listeners[0].ticketKeys[0].key: not valid base64 (invalid character)");
  decode_fails(snap, "{\"listeners\":{}}", "listeners: expected an array, got an object");
  decode_fails(snap, "{\"listeners\":[null]}", "listeners[0]: null is not allowed in a list");
  decode_fails(snap, "{\"listeners\":[[]]}",
               "listeners[0]: expected an object (tlsplane.v1.ResolvedListener), got an array");
  decode_fails(lis, "[]", "expected an object (tlsplane.v1.Listener), got an array");
  decode_fails(lis, "\"x\"", "\"x\" is not an object (tlsplane.v1.Listener)");
  decode_fails(lis, "null", "expected an object (tlsplane.v1.Listener), got null");
  decode_fails(lis, "{\"sniRoutes\":{}}", "sniRoutes: expected an array, got an object");
  decode_fails(lis, "{\"handshakeTimeout\":12}", "handshakeTimeout: 12 is not a duration");
  decode_fails(lis, "{\"createTime\":\"2026-02-29T00:00:00Z\"}",
               "createTime: \"2026-02-29T00:00:00Z\" is not a timestamp (no such date or time)");
  /* Messages stay valid UTF-8 when a quote is cut inside a character. */
  char json[512], want[512], key[256] = "a";
  for (int i = 0; i < 100; i++)
    strcat(key, "\xc3\xa9");
  snprintf(json, sizeof(json), "{\"%s\":1}", key);
  snprintf(want, sizeof(want), "unknown field \"%.63s?\" in tlsplane.v1.Listener", key);
  decode_fails(lis, json, want);
  /* Long keys and values are cut short in messages. */
  snprintf(json, sizeof(json), "{\"%0100d\":1}", 0);
  snprintf(want, sizeof(want), "unknown field \"%064d\" in tlsplane.v1.Listener", 0);
  decode_fails(lis, json, want);
  char nines[101];
  memset(nines, '9', 100);
  nines[100] = '\0';
  snprintf(json, sizeof(json), "{\"maxConnections\":\"%s\"}", nines);
  snprintf(want, sizeof(want), "maxConnections: \"%.64s...\" is out of range for an int32", nines);
  decode_fails(lis, json, want);
}

static void test_syntax_errors(void **state) {
  const ProtobufCMessageDescriptor *lis = &tlsplane__v1__listener__descriptor;
  decode_fails(lis, "{\n  \"address\": \"a\",\n  \"upstream\" \"b\"\n}",
               "invalid JSON at line 3, column 16: ':' expected near '\"b\"'");
  decode_fails(lis, "{\"address\":\"a\"",
               "invalid JSON at line 1, column 14: '}' expected near end of file");
  decode_fails(lis, "", "invalid JSON at line 1, column 0: unexpected token near end of file");
  decode_fails_with(lis, "{\"address\":\"a\",\"address\":\"b\"}", 29, "duplicate object key");
  decode_fails_with(lis, "{\"maxConnections\":NaN}", 22, "invalid JSON at line 1");
  decode_fails_with(lis, "{\"maxConnections\":1e400}", 24, "real number overflow");
  decode_fails_with(lis, "{\"revision\":123456789012345678901234567890}", 43, "too big integer");
  decode_fails_with(lis, "{\"address\":\"a\\u0000b\"}", 22, "\\u0000 is not allowed");
  decode_fails_with(lis, "{\"address\":\"\xff\"}", 15, "invalid JSON at line 1");
  decode_fails_with(lis, "{\"address\":\"a\"}\0{}", 18, "invalid JSON at line 1");
  decode_fails_with(lis, "{\"address\":\"a\"} {}", 18, "end of file expected");
  decode_fails_with(lis, "{\"address\":\"a\"}", 14, "invalid JSON");
  /* The NUL byte is outside len: only the first 15 bytes count. */
  ProtobufCMessage *m = NULL;
  struct tp_err err = {0};
  assert_int_equal(pbjson_decode(lis, "{\"address\":\"a\"}garbage", 15, &m, &err), 0);
  protobuf_c_message_free_unpacked(m, NULL);
}

static void test_nesting_limits(void **state) {
  /* DescriptorProto nests itself (nested_type): the message depth limit. */
  const ProtobufCMessageDescriptor *d = &google__protobuf__descriptor_proto__descriptor;
  size_t cap = 64 * 1024;
  char *json = malloc(cap);
  assert_non_null(json);
  for (int depth = 60; depth <= 70; depth += 10) {
    size_t n = 0;
    for (int i = 1; i < depth; i++)
      n += (size_t)snprintf(json + n, cap - n, "{\"nestedType\":[");
    n += (size_t)snprintf(json + n, cap - n, "{\"name\":\"leaf\"}");
    for (int i = 1; i < depth; i++)
      n += (size_t)snprintf(json + n, cap - n, "]}");
    if (depth <= PBJSON_MAX_DEPTH) {
      ProtobufCMessage *m = decode_ok(d, json);
      char *out = encode_ok(m, 0);
      assert_string_equal(out, json);
      free(out);
      protobuf_c_message_free_unpacked(m, NULL);
    } else {
      decode_fails_with(d, json, n, "messages nested deeper than 64");
    }
  }
  /* JSON nested far beyond anything: jansson's own limit, no stack overflow. */
  size_t deep = 60000;
  char *arr = malloc(2 * deep + 1);
  assert_non_null(arr);
  memset(arr, '[', deep);
  memset(arr + deep, ']', deep);
  arr[2 * deep] = '\0';
  decode_fails_with(&tlsplane__v1__listener__descriptor, arr, 2 * deep, "invalid JSON");
  snprintf(json, cap, "{\"address\":");
  size_t n = strlen(json);
  memset(json + n, '{', 3000);
  json[n + 3000] = '\0';
  decode_fails_with(&tlsplane__v1__listener__descriptor, json, n + 3000, "invalid JSON");
  free(arr);
  free(json);

  /* Encoding refuses the same depth. */
  Google__Protobuf__DescriptorProto chain[70], *next[70];
  for (int i = 0; i < 70; i++) {
    google__protobuf__descriptor_proto__init(&chain[i]);
    next[i] = i + 1 < 70 ? &chain[i + 1] : NULL;
    if (next[i]) {
      chain[i].n_nested_type = 1;
      chain[i].nested_type = &next[i];
    }
  }
  struct tp_err err = {0};
  char *out = (char *)1;
  assert_int_equal(pbjson_encode(&chain[0].base, 0, &out, &err), -1);
  assert_null(out);
  assert_non_null(strstr(err.msg, "messages nested deeper than 64"));
  assert_non_null(strstr(err.msg, "nestedType[0].nestedType[0]"));
}

static void test_ignore_unknown(void **state) {
  json_error_t jerr;
  json_t *j = json_loads("{\"foo\":{\"bar\":[1,2]},\"minVersion\":\"TLS_9\","
                         "\"maxVersion\":\"TLS_1_3\",\"warnings\":[\"w\"]}",
                         0, &jerr);
  assert_non_null(j);
  ProtobufCMessage *m = NULL;
  struct tp_err err = {0};
  assert_int_equal(pbjson_from_json(&tlsplane__v1__cipher_policy__descriptor, j,
                                    PBJSON_IGNORE_UNKNOWN, &m, &err),
                   0);
  Tlsplane__V1__CipherPolicy *p = (Tlsplane__V1__CipherPolicy *)m;
  assert_int_equal(p->min_version, 0);
  assert_int_equal(p->max_version, TLSPLANE__V1__TLS_VERSION__TLS_1_3);
  assert_int_equal(p->n_warnings, 1);
  protobuf_c_message_free_unpacked(m, NULL);
  /* Without the flag the same document fails. */
  assert_int_equal(pbjson_from_json(&tlsplane__v1__cipher_policy__descriptor, j, 0, &m, &err), -1);
  assert_null(m);
  assert_string_equal(err.msg, "unknown field \"foo\" in tlsplane.v1.CipherPolicy");
  json_decref(j);

  /* The jansson form of encode. */
  Tlsplane__V1__SniRoute r = TLSPLANE__V1__SNI_ROUTE__INIT;
  r.hostname = "a";
  json_t *o = NULL;
  assert_int_equal(pbjson_to_json(&r.base, 0, &o, &err), 0);
  assert_string_equal(json_string_value(json_object_get(o, "hostname")), "a");
  json_decref(o);
}

static void test_encode_errors(void **state) {
  (void)state;
  Tlsplane__V1__Listener l = TLSPLANE__V1__LISTENER__INIT;
  Google__Protobuf__Duration du = GOOGLE__PROTOBUF__DURATION__INIT;
  du.seconds = 1;
  du.nanos = -5;
  l.handshake_timeout = &du;
  encode_fails(&l.base, "handshakeTimeout: duration {1s, -5ns} is out of range or mixes signs");
}

/* A string that is not UTF-8 (a row stored before input was checked) is
 * written with U+FFFD for each bad byte instead of failing the whole
 * message: one bad label must not make a List unreadable. */
static void test_encode_repairs_utf8(void **state) {
  (void)state;
  Tlsplane__V1__Listener l = TLSPLANE__V1__LISTENER__INIT;
  l.address = "a\xff";
  assert_encodes(&l.base, 0, "{\"address\":\"a\xEF\xBF\xBD\"}");

  struct snap s;
  Tlsplane__V1__Snapshot *snap = build_snapshot(&s);
  s.ctx.alpn_protocols[1] = "h\xc3";      /* a sequence cut short */
  s.label[1].value = "\xc0\x80";          /* overlong NUL */
  s.label[1].key = "e\xffnv\xed\xa0\x80"; /* a stray byte and a surrogate */
  char *out = encode_ok(&snap->base, 0);
  assert_non_null(strstr(out, "\"h\xEF\xBF\xBD\""));
  assert_non_null(strstr(out, "\"e\xEF\xBF\xBDnv\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\":"
                              "\"\xEF\xBF\xBD\xEF\xBF\xBD\""));
  free(out);
}

/* --- The operator's snapshot file ------------------------------------------ */

/* What an operator would write by hand for a standalone agent: one
 * listener on 127.0.0.1:8443 with a default context and an SNI route to a
 * mutual-TLS context, a real certificate and key, two ticket keys, names
 * in either style. */
static const char sample_snapshot[] =
    "{\n"
    "  \"revision\": \"42\",\n"
    "  \"listeners\": [\n"
    "    {\n"
    "      \"listener\": {\n"
    "        \"name\": \"listeners/web\",\n"
    "        \"address\": \"127.0.0.1:8443\",\n"
    "        \"defaultTlsContext\": \"tlsContexts/default\",\n"
    "        \"sniRoutes\": [\n"
    "          { \"hostname\": \"api.example.com\", \"tlsContext\": \"tlsContexts/api\" }\n"
    "        ],\n"
    "        \"upstream\": \"127.0.0.1:8080\",\n"
    "        \"handshakeTimeout\": \"10s\",\n"
    "        \"maxConnections\": 10000,\n"
    "        \"renegotiationLimit\": 0,\n"
    "        \"ticketKeyRing\": \"ticketKeyRings/web\",\n"
    "        \"labels\": { \"env\": \"prod\" }\n"
    "      },\n"
    "      \"tlsContexts\": {\n"
    "        \"tlsContexts/default\": {\n"
    "          \"tlsContext\": {\n"
    "            \"name\": \"tlsContexts/default\",\n"
    "            \"certificates\": [\"certificates/www\"],\n"
    "            \"cipherPolicy\": \"cipherPolicies/modern\",\n"
    "            \"alpnProtocols\": [\"h2\", \"http/1.1\"],\n"
    "            \"sessionTimeout\": \"300s\",\n"
    "            \"sessionTickets\": true\n"
    "          },\n"
    "          \"certificates\": [\n"
    "            {\n"
    "              \"certificate\": {\n"
    "                \"name\": \"certificates/www\",\n"
    "                \"certificateChainPem\": \"-----BEGIN CERTIFICATE-----\\n"
    "MIIBpjCCAU2gAwIBAgIUI24WWgVa4pOhlMHXPtQRaXZtIMIwCgYIKoZIzj0EAwIw\\n"
    "GjEYMBYGA1UEAwwPd3d3LmV4YW1wbGUuY29tMCAXDTI2MTEyNzAwMjEwNloYDzIx\\n"
    "MjYxMTAzMDAyMTA2WjAaMRgwFgYDVQQDDA93d3cuZXhhbXBsZS5jb20wWTATBgcq\\n"
    "hkjOPQIBBggqhkjOPQMBBwNCAAQ3hCDA8aAluSQuFbt4+K/+K+8hXjx7HlYTWxaF\\n"
    "gWyo3Y2oFBYzpw6xnn2hZVRMbqeuvYx5C2DR02NdcfRDDo40o28wbTAdBgNVHQ4E\\n"
    "FgQU0LhID6IjMPZXefq0zfoIMy9ppkYwHwYDVR0jBBgwFoAU0LhID6IjMPZXefq0\\n"
    "zfoIMy9ppkYwDwYDVR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgg93d3cuZXhhbXBs\\n"
    "ZS5jb20wCgYIKoZIzj0EAwIDRwAwRAIgKeFvw6w6xeS4IhyQg/N8YIZ7kQ6jPpJ3\\n"
    "a+r+4rFLMyUCIET4m0kJexetiAnJSwwnSD7PErjKnC0mYQzB3gmW0pgG\\n"
    "-----END CERTIFICATE-----\\n\",\n"
    "                \"notBefore\": \"2026-11-27T00:21:06Z\",\n"
    "                \"notAfter\": \"2126-11-03T00:21:06Z\",\n"
    "                \"dnsNames\": [\"www.example.com\"],\n"
    "                \"keyAlgorithm\": \"EC\",\n"
    "                \"keyBits\": 256\n"
    "              },\n"
    "              \"privateKeyPem\": \"-----BEGIN PRIVATE KEY-----\\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgRT1J+zNbkvDGaC3H\\n"
    "fYBz9xEv7h1uJxf4LQUSsLgmKpihRANCAAQ3hCDA8aAluSQuFbt4+K/+K+8hXjx7\\n"
    "HlYTWxaFgWyo3Y2oFBYzpw6xnn2hZVRMbqeuvYx5C2DR02NdcfRDDo40\\n"
    "-----END PRIVATE KEY-----\\n\"\n"
    "            }\n"
    "          ],\n"
    "          \"cipherPolicy\": {\n"
    "            \"name\": \"cipherPolicies/modern\",\n"
    "            \"minVersion\": \"TLS_1_2\",\n"
    "            \"maxVersion\": \"TLS_1_3\",\n"
    "            \"ciphersuites\": \"TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256\",\n"
    "            \"honorCipherOrder\": true\n"
    "          }\n"
    "        },\n"
    "        \"tlsContexts/api\": {\n"
    "          \"tls_context\": {\n"
    "            \"name\": \"tlsContexts/api\",\n"
    "            \"certificates\": [\"certificates/www\"],\n"
    "            \"trust_bundle\": \"trustBundles/clients\",\n"
    "            \"request_cert\": true,\n"
    "            \"reject_unauthorized\": true\n"
    "          },\n"
    "          \"trust_bundle\": {\n"
    "            \"name\": \"trustBundles/clients\",\n"
    "            \"ca_pem\": \"-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END "
    "CERTIFICATE-----\\n\"\n"
    "          }\n"
    "        }\n"
    "      },\n"
    "      \"ticketKeys\": [\n"
    "        { \"key\": \"d02HZs7G46Ul8UNW3fccit0N9wCXhqb+rEEfOWNr6qfAeRwCqKNMj6WCaYQqIaek\", "
    "\"active\": true },\n"
    "        { \"key\": \"Bw8IZ2CJUhhxRkwgIqgaFCQj1V0RsrI_clzHDrhiEFvzlu7uIGe_2eU9BS3QOYoE\" }\n"
    "      ]\n"
    "    }\n"
    "  ]\n"
    "}\n";

static void test_sample_snapshot(void **state) {
  Tlsplane__V1__Snapshot *s =
      (Tlsplane__V1__Snapshot *)decode_ok(&tlsplane__v1__snapshot__descriptor, sample_snapshot);
  assert_int_equal(s->revision, 42);
  assert_int_equal(s->n_listeners, 1);
  Tlsplane__V1__ResolvedListener *rl = s->listeners[0];
  Tlsplane__V1__Listener *l = rl->listener;
  assert_string_equal(l->address, "127.0.0.1:8443");
  assert_int_equal(l->handshake_timeout->seconds, 10);
  assert_int_equal(l->max_connections, 10000);
  assert_non_null(l->renegotiation_limit);
  assert_int_equal(l->renegotiation_limit->value, 0);
  assert_string_equal(l->sni_routes[0]->hostname, "api.example.com");
  assert_int_equal(rl->n_tls_contexts, 2);

  Tlsplane__V1__ResolvedTlsContext *def = rl->tls_contexts[0]->value;
  assert_string_equal(rl->tls_contexts[0]->key, "tlsContexts/default");
  assert_int_equal(def->tls_context->session_timeout->seconds, 300);
  assert_true(def->tls_context->session_tickets->value);
  assert_int_equal(def->cipher_policy->min_version, TLSPLANE__V1__TLS_VERSION__TLS_1_2);
  assert_true(def->cipher_policy->honor_cipher_order->value);
  Tlsplane__V1__Certificate *c = def->certificates[0]->certificate;
  assert_int_equal(c->not_before->seconds, T_2026_11_27 + 21 * 60 + 6);

  /* The PEM strings survive JSON escaping: OpenSSL reads them and the key
   * matches the certificate. */
  BIO *bio = BIO_new_mem_buf(c->certificate_chain_pem, -1);
  X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
  BIO_free(bio);
  assert_non_null(x);
  bio = BIO_new_mem_buf(def->certificates[0]->private_key_pem, -1);
  EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
  BIO_free(bio);
  assert_non_null(key);
  assert_int_equal(X509_check_private_key(x, key), 1);
  EVP_PKEY_free(key);
  X509_free(x);

  Tlsplane__V1__ResolvedTlsContext *api = rl->tls_contexts[1]->value;
  assert_true(api->tls_context->request_cert);
  assert_true(api->tls_context->reject_unauthorized);
  assert_string_equal(api->trust_bundle->name, "trustBundles/clients");

  /* 48-byte ticket keys, standard and URL-safe base64. */
  assert_int_equal(rl->n_ticket_keys, 2);
  assert_int_equal(rl->ticket_keys[0]->key.len, 48);
  assert_memory_equal(rl->ticket_keys[0]->key.data, "\x77\x4d\x87\x66", 4);
  assert_true(rl->ticket_keys[0]->active);
  assert_int_equal(rl->ticket_keys[1]->key.len, 48);
  assert_memory_equal(rl->ticket_keys[1]->key.data + 45, "\x39\x8a\x04", 3);
  assert_false(rl->ticket_keys[1]->active);

  /* Written back out (pretty, canonical) it reads as the same snapshot. */
  assert_wire_round_trip(&s->base, PBJSON_PRETTY);
  char *out = encode_ok(&s->base, PBJSON_PRETTY);
  assert_non_null(strstr(out, "\"trustBundle\": \"trustBundles/clients\""));
  assert_non_null(strstr(out, "\"key\": \"Bw8IZ2CJUhhxRkwgIqgaFCQj1V0RsrI/clzHDrhiEFvzlu7uIGe/"
                              "2eU9BS3QOYoE\""));
  free(out);
  protobuf_c_message_free_unpacked(&s->base, NULL);
}

/* --- Hostile input ----------------------------------------------------------- */

static uint32_t rng_next(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

/* Every prefix and thousands of byte-level mutations of the sample: each
 * decode succeeds or fails cleanly; ASan/UBSan catch the rest. */
static void test_hostile_mutations(void **state) {
  const ProtobufCMessageDescriptor *d = &tlsplane__v1__snapshot__descriptor;
  size_t len = strlen(sample_snapshot);
  char *buf = malloc(len * 2 + 16);
  assert_non_null(buf);
  int ok = 0, failed = 0;
  for (size_t cut = 0; cut < len; cut++) {
    ProtobufCMessage *m = NULL;
    struct tp_err err = {0};
    if (pbjson_decode(d, sample_snapshot, cut, &m, &err) == 0) {
      ok++;
      protobuf_c_message_free_unpacked(m, NULL);
    } else {
      failed++;
      assert_null(m);
      assert_true(err.msg[0] != '\0');
    }
  }
  /* Only the prefix that drops the final newline is a whole document. */
  assert_int_equal(ok, 1);

  static const char alphabet[] = "{}[]\":,0123456789-+.eE\\/ntrufalsNIy_=Zs \x01\xff";
  uint32_t seed = 0x2545F491;
  for (int iter = 0; iter < 4000; iter++) {
    size_t n = len;
    memcpy(buf, sample_snapshot, len);
    int edits = 1 + (int)(rng_next(&seed) % 4);
    for (int e = 0; e < edits && n > 1; e++) {
      size_t at = rng_next(&seed) % n;
      switch (rng_next(&seed) % 3) {
      case 0: /* replace */
        buf[at] = alphabet[rng_next(&seed) % (sizeof(alphabet) - 1)];
        break;
      case 1: /* delete */
        memmove(buf + at, buf + at + 1, n - at - 1);
        n--;
        break;
      default: /* duplicate a short run */
        if (n + 8 < len * 2) {
          size_t run = 1 + rng_next(&seed) % 8;
          if (at + run > n)
            run = n - at;
          memmove(buf + at + run, buf + at, n - at);
          n += run;
        }
        break;
      }
    }
    ProtobufCMessage *m = NULL;
    struct tp_err err = {0};
    if (pbjson_decode(d, buf, n, &m, &err) == 0) {
      ok++;
      char *out = encode_ok(m, 0); /* whatever decodes, encodes */
      free(out);
      protobuf_c_message_free_unpacked(m, NULL);
    } else {
      failed++;
      assert_null(m);
      assert_int_equal(err.status, GRPC_STATUS_INVALID_ARGUMENT);
    }
  }
  assert_true(ok > 0 && failed > 0);
  free(buf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_snapshot_round_trip),
      cmocka_unit_test(test_snapshot_golden),
      cmocka_unit_test(test_pretty),
      cmocka_unit_test(test_both_name_styles),
      cmocka_unit_test(test_defaults_omitted),
      cmocka_unit_test(test_null_means_default),
      cmocka_unit_test(test_int64_as_string),
      cmocka_unit_test(test_int32),
      cmocka_unit_test(test_bool_string_enum),
      cmocka_unit_test(test_scalars_all_types),
      cmocka_unit_test(test_bytes_base64),
      cmocka_unit_test(test_timestamp),
      cmocka_unit_test(test_duration),
      cmocka_unit_test(test_wrappers),
      cmocka_unit_test(test_field_mask),
      cmocka_unit_test(test_empty_and_unsupported),
      cmocka_unit_test(test_maps),
      cmocka_unit_test(test_oneof),
      cmocka_unit_test(test_proto2),
      cmocka_unit_test(test_errors_name_the_path),
      cmocka_unit_test(test_syntax_errors),
      cmocka_unit_test(test_nesting_limits),
      cmocka_unit_test(test_ignore_unknown),
      cmocka_unit_test(test_encode_errors),
      cmocka_unit_test(test_encode_repairs_utf8),
      cmocka_unit_test(test_sample_snapshot),
      cmocka_unit_test(test_hostile_mutations),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
