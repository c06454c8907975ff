/* Unit tests for common/alpn: the ALPN extension of a ClientHello read
 * byte for byte (RFC 7301, section 3.1), as the client hello callback
 * tells an ACME tls-alpn-01 validation (the list exactly "acme-tls/1",
 * RFC 8737) from every other client. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "alpn.h"

#define ACME ((const uint8_t *)ALPN_ACME_TLS_1)
#define ACME_LEN (sizeof(ALPN_ACME_TLS_1) - 1)

/* The answer for ext[0..len), copied to a heap block of exactly len bytes
 * so that ASan sees any read past it. */
static int only_acme(const uint8_t *ext, size_t len) {
  uint8_t *copy = malloc(len ? len : 1);
  memcpy(copy, ext, len);
  int rc = alpn_ext_is_only(copy, len, ACME, ACME_LEN);
  free(copy);
  return rc;
}

static void test_exactly_acme(void **state) {
  (void)state;
  static const uint8_t ext[] = {0x00, 0x0b, 0x0a, 'a', 'c', 'm', 'e', '-', 't', 'l', 's', '/', '1'};
  assert_int_equal(only_acme(ext, sizeof(ext)), 1);
}

static void test_other_lists(void **state) {
  (void)state;
  /* h2, then acme-tls/1: an ordinary client. */
  static const uint8_t both[] = {0x00, 0x0e, 0x02, 'h', '2', 0x0a, 'a', 'c',
                                 'm',  'e',  '-',  't', 'l', 's',  '/', '1'};
  assert_int_equal(only_acme(both, sizeof(both)), 0);
  /* acme-tls/1 first, then h2. */
  static const uint8_t first[] = {0x00, 0x0e, 0x0a, 'a', 'c', 'm',  'e', '-',
                                  't',  'l',  's',  '/', '1', 0x02, 'h', '2'};
  assert_int_equal(only_acme(first, sizeof(first)), 0);
  /* One protocol, not acme-tls/1; a prefix of it; it with a byte more; another case. */
  static const uint8_t h2[] = {0x00, 0x03, 0x02, 'h', '2'};
  assert_int_equal(only_acme(h2, sizeof(h2)), 0);
  static const uint8_t prefix[] = {0x00, 0x05, 0x04, 'a', 'c', 'm', 'e'};
  assert_int_equal(only_acme(prefix, sizeof(prefix)), 0);
  static const uint8_t longer[] = {0x00, 0x0c, 0x0b, 'a', 'c', 'm', 'e',
                                   '-',  't',  'l',  's', '/', '1', '0'};
  assert_int_equal(only_acme(longer, sizeof(longer)), 0);
  static const uint8_t upper[] = {0x00, 0x0b, 0x0a, 'A', 'C', 'M', 'E',
                                  '-',  'T',  'L',  'S', '/', '1'};
  assert_int_equal(only_acme(upper, sizeof(upper)), 0);
  /* acme-tls/1 twice: not "exactly one protocol". */
  static const uint8_t twice[] = {0x00, 0x16, 0x0a, 'a', 'c', 'm', 'e', '-', 't', 'l', 's', '/',
                                  '1',  0x0a, 'a',  'c', 'm', 'e', '-', 't', 'l', 's', '/', '1'};
  assert_int_equal(only_acme(twice, sizeof(twice)), 0);
}

static void test_malformed(void **state) {
  (void)state;
  assert_int_equal(alpn_ext_is_only(NULL, 0, ACME, ACME_LEN), -1);
  static const uint8_t one[] = {0x00};
  assert_int_equal(only_acme(one, sizeof(one)), -1);
  /* An empty list (the list must hold at least one name). */
  static const uint8_t empty[] = {0x00, 0x00};
  assert_int_equal(only_acme(empty, sizeof(empty)), -1);
  /* The list length says more, or less, than there is. */
  static const uint8_t more[] = {0x00, 0x0c, 0x0a, 'a', 'c', 'm', 'e',
                                 '-',  't',  'l',  's', '/', '1'};
  assert_int_equal(only_acme(more, sizeof(more)), -1);
  static const uint8_t less[] = {0x00, 0x0a, 0x0a, 'a', 'c', 'm', 'e',
                                 '-',  't',  'l',  's', '/', '1'};
  assert_int_equal(only_acme(less, sizeof(less)), -1);
  /* A name running past the list. */
  static const uint8_t past[] = {0x00, 0x0b, 0x0b, 'a', 'c', 'm', 'e',
                                 '-',  't',  'l',  's', '/', '1'};
  assert_int_equal(only_acme(past, sizeof(past)), -1);
  /* A zero-length name, alone or after a good one. */
  static const uint8_t zero[] = {0x00, 0x01, 0x00};
  assert_int_equal(only_acme(zero, sizeof(zero)), -1);
  static const uint8_t zero_after[] = {0x00, 0x0c, 0x0a, 'a', 'c', 'm', 'e',
                                       '-',  't',  'l',  's', '/', '1', 0x00};
  assert_int_equal(only_acme(zero_after, sizeof(zero_after)), -1);
  /* A good list with a byte after it. */
  static const uint8_t trailing[] = {0x00, 0x0b, 0x0a, 'a', 'c', 'm', 'e',
                                     '-',  't',  'l',  's', '/', '1', 0x00};
  assert_int_equal(only_acme(trailing, sizeof(trailing)), -1);
}

/* The largest list: 2^16-1 bytes of 255-byte names and a last shorter
 * one, all read, none past the end. */
static void test_largest(void **state) {
  (void)state;
  size_t len = 2 + 0xffff;
  uint8_t *ext = malloc(len);
  ext[0] = 0xff;
  ext[1] = 0xff;
  size_t i = 2;
  while (len - i > 256) {
    ext[i] = 255;
    memset(ext + i + 1, 'x', 255);
    i += 256;
  }
  ext[i] = (uint8_t)(len - i - 1);
  memset(ext + i + 1, 'y', len - i - 1);
  assert_int_equal(only_acme(ext, len), 0);
  free(ext);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exactly_acme),
      cmocka_unit_test(test_other_lists),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_largest),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
