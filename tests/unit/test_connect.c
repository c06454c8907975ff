/* The Connect protocol's pieces (server/connect.c): every gRPC code's name
 * and HTTP status as the protocol's table gives them, the RPC path test,
 * the content type, connect-timeout-ms, and the error body. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "connect.h"

static void test_codes(void **state) {
  (void)state;
  static const struct {
    grpc_status_code code;
    const char *name;
    int http;
  } table[] = {
      {GRPC_STATUS_CANCELLED, "canceled", 499},
      {GRPC_STATUS_UNKNOWN, "unknown", 500},
      {GRPC_STATUS_INVALID_ARGUMENT, "invalid_argument", 400},
      {GRPC_STATUS_DEADLINE_EXCEEDED, "deadline_exceeded", 504},
      {GRPC_STATUS_NOT_FOUND, "not_found", 404},
      {GRPC_STATUS_ALREADY_EXISTS, "already_exists", 409},
      {GRPC_STATUS_PERMISSION_DENIED, "permission_denied", 403},
      {GRPC_STATUS_RESOURCE_EXHAUSTED, "resource_exhausted", 429},
      {GRPC_STATUS_FAILED_PRECONDITION, "failed_precondition", 400},
      {GRPC_STATUS_ABORTED, "aborted", 409},
      {GRPC_STATUS_OUT_OF_RANGE, "out_of_range", 400},
      {GRPC_STATUS_UNIMPLEMENTED, "unimplemented", 501},
      {GRPC_STATUS_INTERNAL, "internal", 500},
      {GRPC_STATUS_UNAVAILABLE, "unavailable", 503},
      {GRPC_STATUS_DATA_LOSS, "data_loss", 500},
      {GRPC_STATUS_UNAUTHENTICATED, "unauthenticated", 401},
  };
  for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
    assert_string_equal(connect_code_name(table[i].code), table[i].name);
    assert_int_equal(connect_code_http(table[i].code), table[i].http);
  }
  assert_string_equal(connect_code_name((grpc_status_code)99), "unknown");
  assert_int_equal(connect_code_http((grpc_status_code)-1), 500);
}

static int path_ok(const char *p) {
  return connect_rpc_path(p, strlen(p));
}

static void test_paths(void **state) {
  (void)state;
  assert_true(path_ok("/tlsplane.v1.CertificateService/GetCertificate"));
  assert_true(path_ok("/grpc.health.v1.Health/Check"));
  assert_false(path_ok("/"));
  assert_false(path_ok("/index.html"));
  assert_false(path_ok("/app.js"));
  assert_false(path_ok("/pages/audit.js"));
  assert_false(path_ok("/metrics"));
  assert_false(path_ok("/tlsplane.v1.CertificateService/"));
  assert_false(path_ok("/tlsplane.v1.CertificateService/Get/x"));
  assert_false(path_ok("/.x/Y"));
  assert_false(path_ok("/x./Y"));
  assert_false(path_ok("/a.b/C.js"));
  assert_false(path_ok("tlsplane.v1.X/Y"));
  assert_false(path_ok("/a b.c/D"));
}

static void test_content_type_and_timeout(void **state) {
  (void)state;
  const char *yes[] = {"application/json", "application/json; charset=utf-8", "Application/JSON"};
  const char *no[] = {"application/proto", "application/json+x", "text/json", "",
                      "application/jso"};
  for (size_t i = 0; i < 3; i++)
    assert_true(connect_content_type_json(yes[i], strlen(yes[i])));
  for (size_t i = 0; i < 5; i++)
    assert_false(connect_content_type_json(no[i], strlen(no[i])));
  int64_t ms = -1;
  assert_int_equal(connect_timeout_parse("0", 1, &ms), 0);
  assert_int_equal(ms, 0);
  assert_int_equal(connect_timeout_parse("9999999999", 10, &ms), 0);
  assert_int_equal(ms, 9999999999LL);
  assert_int_equal(connect_timeout_parse("12345678901", 11, &ms), -1);
  assert_int_equal(connect_timeout_parse("", 0, &ms), -1);
  assert_int_equal(connect_timeout_parse("-1", 2, &ms), -1);
  assert_int_equal(connect_timeout_parse("1.5", 3, &ms), -1);
}

static void test_error_body(void **state) {
  (void)state;
  char *text =
      connect_error_json(GRPC_STATUS_NOT_FOUND, "certificates/\xff\"x\" not found \xe2\x82\xac");
  assert_non_null(text);
  json_error_t e;
  json_t *o = json_loads(text, 0, &e);
  assert_non_null(o);
  assert_string_equal(json_string_value(json_object_get(o, "code")), "not_found");
  assert_string_equal(json_string_value(json_object_get(o, "message")),
                      "certificates/?\"x\" not found \xe2\x82\xac");
  json_decref(o);
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_codes),
      cmocka_unit_test(test_paths),
      cmocka_unit_test(test_content_type_and_timeout),
      cmocka_unit_test(test_error_body),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
