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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_swap_moves_every_kind_of_field),
      cmocka_unit_test(test_strings_and_timestamps),
      cmocka_unit_test(test_maps),
      cmocka_unit_test(test_snake_case),
      cmocka_unit_test(test_durations),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
