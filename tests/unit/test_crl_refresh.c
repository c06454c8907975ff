/* CRL refresh (server/crl_refresh.c), the parts without a network: when
 * the next fetch is due, which distribution points are accepted, and what
 * a read shows (stale; nothing recorded for a list not fetched). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "crl_refresh.h"
#include "pb.h"

#define S INT64_C(1000000) /* µs per second */

static void test_schedule(void **state) {
  (void)state;
  int64_t now = 1000 * S;
  /* The interval, when no next_update comes first. */
  assert_int_equal(crl_refresh_schedule(now, 3600 * 1000, 0), now + 3600 * S);
  assert_int_equal(crl_refresh_schedule(now, 3600 * 1000, now + 7200 * S), now + 3600 * S);
  /* A next_update before the interval is over: then. */
  assert_int_equal(crl_refresh_schedule(now, 3600 * 1000, now + 60 * S), now + 60 * S);
  /* Already past it: due now. */
  assert_int_equal(crl_refresh_schedule(now, 3600 * 1000, now), now);
  assert_int_equal(crl_refresh_schedule(now, 3600 * 1000, now - S), now);
  /* No overflow with a huge interval. */
  assert_int_equal(crl_refresh_schedule(now, INT64_MAX, 0), INT64_MAX);
}

static void test_url_check(void **state) {
  (void)state;
  const char *good[] = {"http://127.0.0.1/ca.crl", "https://crl.example.com/a/b.crl",
                        "HTTP://crl.example.com:8080/x", "http://[::1]:80/ca.crl"};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    struct tp_err err = {0};
    if (crl_refresh_url_check(good[i], "distribution_point", &err) != 0)
      fail_msg("%s refused: %s", good[i], err.msg);
  }
  const char *bad[] = {"ftp://crl.example.com/ca.crl",
                       "file:///etc/passwd",
                       "ldap://x/cn=ca",
                       "not a url",
                       "",
                       "http://",
                       "crl.example.com/ca.crl",
                       "http://user:secret@crl.example.com/ca.crl"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    struct tp_err err = {0};
    if (crl_refresh_url_check(bad[i], "distribution_point", &err) == 0)
      fail_msg("\"%s\" accepted", bad[i]);
    assert_int_equal(err.status, GRPC_STATUS_INVALID_ARGUMENT);
    assert_non_null(strstr(err.msg, "distribution_point: "));
  }
}

static void test_decorate(void **state) {
  (void)state;
  struct crl_refresh *r = crl_refresh_new(0);
  assert_non_null(r);
  Tlsplane__V1__RevocationList rl = TLSPLANE__V1__REVOCATION_LIST__INIT;
  rl.name = "revocationLists/a";
  rl.etag = "e1";
  Google__Protobuf__Timestamp past = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  past.seconds = 1000;
  rl.next_update = &past;
  crl_refresh_decorate(r, &rl);
  assert_true(rl.stale);
  assert_null(rl.last_fetch_time); /* nothing fetched: nothing shown */
  Google__Protobuf__Timestamp future = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  future.seconds = pb_now_us() / S + 3600;
  rl.next_update = &future;
  crl_refresh_decorate(r, &rl);
  assert_false(rl.stale);
  rl.next_update = NULL; /* no nextUpdate: never stale */
  crl_refresh_decorate(r, &rl);
  assert_false(rl.stale);
  crl_refresh_forget(r, "revocationLists/a"); /* not there: a no-op */
  crl_refresh_free(r);
  crl_refresh_decorate(NULL, &rl);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_schedule),
      cmocka_unit_test(test_url_check),
      cmocka_unit_test(test_decorate),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
