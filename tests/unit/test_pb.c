/* Unit tests for the generic protobuf-c helpers (common/pb.c): field swaps
 * and clears through descriptors (what update masks rely on), timestamps,
 * durations, maps and path case conversion. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pb.h"
#include "tlsplane/v1/agent.pb-c.h"
#include "tlsplane/v1/certificate.pb-c.h"
#include "tlsplane/v1/listener.pb-c.h"
#include "tlsplane/v1/ticket_keys.pb-c.h"

static Tlsplane__V1__Listener *listener_new(const char *address, int max_conn) {
  Tlsplane__V1__Listener l = TLSPLANE__V1__LISTENER__INIT;
  Tlsplane__V1__SniRoute route = TLSPLANE__V1__SNI_ROUTE__INIT;
  Tlsplane__V1__SniRoute *routes[] = {&route};
  Google__Protobuf__Duration timeout = GOOGLE__PROTOBUF__DURATION__INIT;
  route.hostname = "*.example.com";
  route.tls_context = "tlsContexts/a";
  timeout.seconds = 30;
  l.address = (char *)address;
  l.max_connections = max_conn;
  l.sni_routes = routes;
  l.n_sni_routes = 1;
  l.handshake_timeout = &timeout;
  return (Tlsplane__V1__Listener *)pb_clone(&l.base);
}

static void test_swap_moves_every_kind_of_field(void **state) {
  (void)state;
  Tlsplane__V1__Listener *a = listener_new("127.0.0.1:1", 5);
  Tlsplane__V1__Listener *b = listener_new("127.0.0.1:2", 9);
  protobuf_c_message_free_unpacked(&b->handshake_timeout->base, NULL);
  b->handshake_timeout = NULL;
  const ProtobufCMessageDescriptor *d = a->base.descriptor;
  pb_field_swap(&a->base, &b->base, pb_field(d, "address"));
  pb_field_swap(&a->base, &b->base, pb_field(d, "max_connections"));
  pb_field_swap(&a->base, &b->base, pb_field(d, "handshake_timeout"));
  pb_field_clear(&b->base, pb_field(d, "sni_routes"));
  assert_string_equal(a->address, "127.0.0.1:2");
  assert_string_equal(b->address, "127.0.0.1:1");
  assert_int_equal(a->max_connections, 9);
  assert_int_equal(b->max_connections, 5);
  assert_null(a->handshake_timeout);
  assert_non_null(b->handshake_timeout);
  assert_int_equal(b->handshake_timeout->seconds, 30);
  assert_int_equal(b->n_sni_routes, 0);
  assert_int_equal(a->n_sni_routes, 1);
  /* Both stay whole messages: they pack and free cleanly. */
  ProtobufCMessage *copy = pb_clone(&b->base);
  assert_non_null(copy);
  protobuf_c_message_free_unpacked(copy, NULL);
  protobuf_c_message_free_unpacked(&a->base, NULL);
  protobuf_c_message_free_unpacked(&b->base, NULL);
}

static void test_strings_and_timestamps(void **state) {
  (void)state;
  Tlsplane__V1__TicketKeyRing *r = (Tlsplane__V1__TicketKeyRing *)pb_clone(
      &(Tlsplane__V1__TicketKeyRing)TLSPLANE__V1__TICKET_KEY_RING__INIT.base);
  assert_string_equal(pb_string_get(&r->base, "name"), "");
  assert_null(pb_string_get(&r->base, "retained_keys"));
  assert_int_equal(pb_string_set(&r->base, "name", "ticketKeyRings/a"), 0);
  assert_int_equal(pb_string_set(&r->base, "name", "ticketKeyRings/b"), 0);
  assert_string_equal(r->name, "ticketKeyRings/b");
  assert_int_equal(pb_timestamp_set(&r->base, "create_time", -1500001), 0);
  assert_int_equal(r->create_time->seconds, -2);
  assert_int_equal(r->create_time->nanos, 499999000);
  assert_int_equal(pb_timestamp_us(r->create_time), -1500001);
  assert_int_equal(pb_timestamp_set(&r->base, "rotation_period", 1), -1); /* a Duration */
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void test_maps(void **state) {
  (void)state;
  Tlsplane__V1__Listener__LabelsEntry e1 = TLSPLANE__V1__LISTENER__LABELS_ENTRY__INIT;
  Tlsplane__V1__Listener__LabelsEntry e2 = TLSPLANE__V1__LISTENER__LABELS_ENTRY__INIT;
  Tlsplane__V1__Listener__LabelsEntry *entries[] = {&e1, &e2};
  Tlsplane__V1__Listener l = TLSPLANE__V1__LISTENER__INIT;
  e1.key = "env";
  e1.value = "prod";
  e2.key = "team";
  e2.value = "edge";
  l.labels = entries;
  l.n_labels = 2;
  assert_int_equal(pb_map_size(&l.base, "labels"), 2);
  const char *k, *v;
  pb_map_entry(&l.base, "labels", 1, &k, &v);
  assert_string_equal(k, "team");
  assert_string_equal(v, "edge");
  assert_int_equal(pb_map_size(&l.base, "address"), 0);

  /* Borrowed into another message's map of another entry type: the same
   * entries, the same strings, and a clone of it owns copies. */
  Tlsplane__V1__Certificate c = TLSPLANE__V1__CERTIFICATE__INIT;
  void *mem;
  assert_int_equal(pb_map_borrow(&c.base, "labels", &l.base, "labels", &mem), 0);
  assert_non_null(mem);
  assert_int_equal(c.n_labels, 2);
  assert_ptr_equal(c.labels[0]->key, e1.key);
  assert_true(pb_map_equal(&c.base, "labels", &l.base, "labels"));
  ProtobufCMessage *copy = pb_clone(&c.base);
  free(mem);
  assert_non_null(copy);
  assert_true(pb_map_equal(copy, "labels", &l.base, "labels"));
  protobuf_c_message_free_unpacked(copy, NULL);
  /* Not a map, or none: refused, nothing set. */
  Tlsplane__V1__Certificate d = TLSPLANE__V1__CERTIFICATE__INIT;
  assert_int_equal(pb_map_borrow(&d.base, "name", &l.base, "labels", &mem), -1);
  assert_null(mem);
  assert_int_equal(d.n_labels, 0);
  assert_int_equal(pb_map_borrow(&d.base, "labels", &l.base, "address", &mem), 0);
  assert_int_equal(d.n_labels, 0);
  free(mem);
}

static void test_snake_case(void **state) {
  (void)state;
  char *s = pb_snake_case("certificateChainPem");
  assert_string_equal(s, "certificate_chain_pem");
  free(s);
  s = pb_snake_case("labels");
  assert_string_equal(s, "labels");
  free(s);
  s = pb_snake_case("already_snake");
  assert_string_equal(s, "already_snake");
  free(s);
}

static void test_durations(void **state) {
  (void)state;
  Google__Protobuf__Duration *d = pb_duration_new(120);
  assert_int_equal(pb_duration_ms(d), 120000);
  d->nanos = 500000000;
  assert_int_equal(pb_duration_ms(d), 120500);
  assert_int_equal(pb_duration_ms(NULL), -1);
  protobuf_c_message_free_unpacked(&d->base, NULL);
}

/* Time arithmetic saturates: a client's Duration or Timestamp of +-2^63
 * seconds reads as the largest value, never as a wrapped one (which once
 * turned -9223372036854775807 s into 1 s). */
static void test_saturating_arithmetic(void **state) {
  (void)state;
  assert_int_equal(pb_sat_add(1, 2), 3);
  assert_int_equal(pb_sat_add(INT64_MAX, 1), INT64_MAX);
  assert_int_equal(pb_sat_add(INT64_MIN, -1), INT64_MIN);
  assert_int_equal(pb_sat_add(INT64_MAX, INT64_MIN), -1);
  assert_int_equal(pb_sat_mul(-3, 7), -21);
  assert_int_equal(pb_sat_mul(INT64_MAX, 2), INT64_MAX);
  assert_int_equal(pb_sat_mul(INT64_MIN, 2), INT64_MIN);
  assert_int_equal(pb_sat_mul(INT64_MIN, -1), INT64_MAX);
  assert_int_equal(pb_sat_mul(-INT64_MAX, 1000), INT64_MIN);

  Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
  d.seconds = -INT64_MAX;
  assert_int_equal(pb_duration_ms(&d), INT64_MIN);
  d.seconds = INT64_MAX;
  d.nanos = 999999999;
  assert_int_equal(pb_duration_ms(&d), INT64_MAX);
  Google__Protobuf__Timestamp t = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  t.seconds = INT64_MIN;
  assert_int_equal(pb_timestamp_us(&t), INT64_MIN);
  t.seconds = INT64_MAX;
  assert_int_equal(pb_timestamp_us(&t), INT64_MAX);
  t.seconds = PB_TIMESTAMP_MAX_S;
  t.nanos = 999999999;
  assert_int_equal(pb_timestamp_us(&t), PB_TIMESTAMP_MAX_S * 1000000 + 999999);
}

static void test_utf8(void **state) {
  (void)state;
  size_t bad = 99;
  assert_true(pb_utf8_valid("", 0, &bad));
  assert_true(pb_utf8_valid("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x94\x92", 15, &bad));
  assert_false(pb_utf8_valid("ab\xff", 3, &bad));
  assert_int_equal(bad, 2);
  assert_false(pb_utf8_valid("\xc0\x80", 2, &bad)); /* overlong NUL */
  assert_int_equal(bad, 0);
  assert_false(pb_utf8_valid("x\xed\xa0\x80", 4, &bad)); /* a surrogate */
  assert_int_equal(bad, 1);
  assert_false(pb_utf8_valid("\xf4\x90\x80\x80", 4, &bad)); /* past U+10FFFF */
  assert_false(pb_utf8_valid("\xe2\x82", 2, &bad));         /* cut short */
  assert_int_equal(pb_utf8_seq("\xe2\x82\xac", 3), 3);
  assert_int_equal(pb_utf8_seq("\xe2\x82\xac", 2), 0);

  /* An error message cut at its buffer's end stays UTF-8 (an agent's nack
   * carries one). */
  struct tp_err err = {0};
  char pad[sizeof(err.msg)];
  memset(pad, 'a', sizeof(pad) - 3);
  pad[sizeof(pad) - 3] = '\0';
  tp_err_set(&err, GRPC_STATUS_INVALID_ARGUMENT, "%s\xe2\x82\xac", pad);
  assert_int_equal(strlen(err.msg), sizeof(err.msg) - 3);
  assert_true(pb_utf8_valid(err.msg, strlen(err.msg), NULL));
}

static void expect_refused(const ProtobufCMessage *m, const char *msg) {
  struct tp_err err = {0};
  assert_int_equal(pb_input_check(m, &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_INVALID_ARGUMENT);
  assert_string_equal(err.msg, msg);
}

/* One check over the descriptors: every string (nested, repeated, maps,
 * oneofs) and every Timestamp and Duration, named by its path. */
static void test_input_check(void **state) {
  (void)state;
  struct tp_err err = {0};
  Tlsplane__V1__Listener l = TLSPLANE__V1__LISTENER__INIT;
  Tlsplane__V1__CreateListenerRequest req = TLSPLANE__V1__CREATE_LISTENER_REQUEST__INIT;
  Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
  req.listener_id = "web";
  req.listener = &l;
  l.address = "127.0.0.1:443";
  l.handshake_timeout = &d;
  d.seconds = 30;
  assert_int_equal(pb_input_check(&req.base, &err), 0);

  d.seconds = -9223372036854775807LL;
  expect_refused(&req.base, "listener.handshake_timeout: seconds -9223372036854775807 is outside "
                            "-315576000000..315576000000");
  d.seconds = 1;
  d.nanos = -1;
  expect_refused(&req.base, "listener.handshake_timeout: seconds and nanos have opposite signs");
  d.nanos = 1000000000;
  expect_refused(&req.base, "listener.handshake_timeout: nanos 1000000000 is outside "
                            "-999999999..999999999");
  d.seconds = 0;
  d.nanos = -5;
  assert_int_equal(pb_input_check(&req.base, &err), 0);

  Tlsplane__V1__SniRoute r0 = TLSPLANE__V1__SNI_ROUTE__INIT, r1 = TLSPLANE__V1__SNI_ROUTE__INIT;
  Tlsplane__V1__SniRoute *routes[] = {&r0, &r1};
  r0.hostname = "a.example";
  r1.hostname = "b.ex\xe4mple";
  l.sni_routes = routes;
  l.n_sni_routes = 2;
  expect_refused(&req.base, "listener.sni_routes[1].hostname: not valid UTF-8 (at byte 4)");
  r1.hostname = "b.example";

  Tlsplane__V1__Listener__LabelsEntry e = TLSPLANE__V1__LISTENER__LABELS_ENTRY__INIT;
  Tlsplane__V1__Listener__LabelsEntry *entries[] = {&e};
  e.key = "env";
  e.value = "pr\xc0\x80"
            "d";
  l.labels = entries;
  l.n_labels = 1;
  expect_refused(&req.base, "listener.labels[\"env\"]: not valid UTF-8 (at byte 2)");
  e.key = "\xffk";
  e.value = "v";
  expect_refused(&req.base, "listener.labels: not valid UTF-8 (at byte 0)");
  l.n_labels = 0;

  char big[PB_STRING_MAX + 2];
  memset(big, 'a', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  l.upstream = big;
  expect_refused(&req.base, "listener.upstream: 2049 bytes long, at most 2048");
  l.upstream = "";
  assert_int_equal(pb_input_check(&req.base, &err), 0);

  /* PEM text is bounded by its kind's own checks, not by PB_STRING_MAX. */
  Tlsplane__V1__Certificate c = TLSPLANE__V1__CERTIFICATE__INIT;
  c.certificate_chain_pem = big;
  assert_int_equal(pb_input_check(&c.base, &err), 0);

  /* A Timestamp, and the member of a oneof that is set. */
  Tlsplane__V1__ListCertificatesRequest lr = TLSPLANE__V1__LIST_CERTIFICATES_REQUEST__INIT;
  Google__Protobuf__Timestamp t = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  lr.expiring_before = &t;
  t.seconds = PB_TIMESTAMP_MIN_S;
  assert_int_equal(pb_input_check(&lr.base, &err), 0);
  t.seconds = INT64_MAX;
  expect_refused(&lr.base, "expiring_before: seconds 9223372036854775807 is outside "
                           "0001-01-01T00:00:00Z..9999-12-31T23:59:59Z "
                           "(-62135596800..253402300799)");
  t.seconds = 0;
  t.nanos = -1;
  expect_refused(&lr.base, "expiring_before: nanos -1 is outside 0..999999999");

  Tlsplane__V1__AgentMessage am = TLSPLANE__V1__AGENT_MESSAGE__INIT;
  Tlsplane__V1__AgentHello hello = TLSPLANE__V1__AGENT_HELLO__INIT;
  am.message_case = TLSPLANE__V1__AGENT_MESSAGE__MESSAGE_HELLO;
  am.hello = &hello;
  hello.name = "edge-1";
  hello.version = "1.0\xfe";
  expect_refused(&am.base, "hello.version: not valid UTF-8 (at byte 3)");
}

/* A stored value out of range reads back as the nearest valid one. */
static void test_times_clamp(void **state) {
  (void)state;
  Tlsplane__V1__Listener l = TLSPLANE__V1__LISTENER__INIT;
  Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT,
                             w = GOOGLE__PROTOBUF__DURATION__INIT;
  Google__Protobuf__Timestamp t = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  l.handshake_timeout = &d;
  l.renegotiation_window = &w;
  l.create_time = &t;
  d.seconds = 30;
  w.seconds = 600;
  t.seconds = 1700000000;
  char path[64];
  assert_int_equal(pb_times_clamp(&l.base, path, sizeof(path)), 0);
  assert_string_equal(path, "");
  d.seconds = -9223372036854775807LL;
  w.seconds = 5;
  w.nanos = -3;
  t.seconds = INT64_MAX;
  assert_int_equal(pb_times_clamp(&l.base, path, sizeof(path)), 3);
  assert_string_equal(path, "create_time");
  assert_int_equal(d.seconds, -PB_DURATION_MAX_S);
  assert_int_equal(w.seconds, 5);
  assert_int_equal(w.nanos, 0);
  assert_int_equal(t.seconds, PB_TIMESTAMP_MAX_S);
  struct tp_err err = {0};
  assert_int_equal(pb_input_check(&l.base, &err), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_saturating_arithmetic),
      cmocka_unit_test(test_utf8),
      cmocka_unit_test(test_input_check),
      cmocka_unit_test(test_times_clamp),
      cmocka_unit_test(test_swap_moves_every_kind_of_field),
      cmocka_unit_test(test_strings_and_timestamps),
      cmocka_unit_test(test_maps),
      cmocka_unit_test(test_snake_case),
      cmocka_unit_test(test_durations),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
