/* Unit tests for agent/proxy_v2: the PROXY protocol v2 header, byte for
 * byte, as HAProxy's doc/proxy-protocol.txt lays it out (signature,
 * version/command, family, length, addresses, then the ALPN, AUTHORITY
 * and SSL TLVs, the SSL one with its VERSION, CN and CIPHER sub-TLVs). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "proxy_v2.h"

static struct sockaddr_in v4(const char *ip, uint16_t port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  assert_int_equal(inet_pton(AF_INET, ip, &a.sin_addr), 1);
  return a;
}

static struct sockaddr_in6 v6(const char *ip, uint16_t port) {
  struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
  assert_int_equal(inet_pton(AF_INET6, ip, &a.sin6_addr), 1);
  return a;
}

/* A TLV found in a header. */
struct tlv {
  uint8_t type;
  size_t len;
  const uint8_t *value;
};

/* Finds TLV type among the TLVs in p[0..len); asserts that they parse. */
static int find_tlv(const uint8_t *p, size_t len, uint8_t type, struct tlv *out) {
  size_t i = 0;
  int found = 0;
  while (i < len) {
    assert_true(i + 3 <= len);
    size_t l = (size_t)p[i + 1] << 8 | p[i + 2];
    assert_true(i + 3 + l <= len);
    if (p[i] == type && !found) {
      *out = (struct tlv){p[i], l, p + i + 3};
      found = 1;
    }
    i += 3 + l;
  }
  return found;
}

static void assert_tlv_str(const struct tlv *t, const char *s) {
  assert_int_equal(t->len, strlen(s));
  assert_memory_equal(t->value, s, t->len);
}

/* The fixed part: signature, PROXY command, family, length matching n. */
static void assert_head(const uint8_t *h, int n, uint8_t ver_cmd, uint8_t fam) {
  assert_true(n >= 16);
  assert_memory_equal(h, "\r\n\r\n\0\r\nQUIT\n", 12);
  assert_int_equal(h[12], ver_cmd);
  assert_int_equal(h[13], fam);
  assert_int_equal((h[14] << 8 | h[15]) + 16, n);
}

/* IPv4 with ALPN, SNI and TLS, no client certificate: every byte. */
static void test_ipv4_exact(void **state) {
  struct sockaddr_in src = v4("192.0.2.10", 56324), dst = v4("198.51.100.1", 443);
  struct proxy_v2_info info = {
      .src = (struct sockaddr *)&src,
      .dst = (struct sockaddr *)&dst,
      .alpn = "h2",
      .authority = "www.example.com",
      .ssl = 1,
      .version = "TLSv1.3",
      .cipher = "TLS_AES_128_GCM_SHA256",
  };
  uint8_t buf[PROXY_V2_MAX];
  int n = proxy_v2_build(&info, buf, sizeof(buf));
  static const uint8_t want[] = {
      0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, /* signature */
      0x21, 0x11, 0x00, 0x4e, /* v2 PROXY, TCP4, 78 */
      192,  0,    2,    10,   198,  51,   100,  1,    0xdc, 0x04, 0x01, 0xbb, /* addresses */
      0x01, 0x00, 0x02, 'h',  '2',                                            /* ALPN */
      0x02, 0x00, 0x0f, 'w',  'w',  'w',  '.',  'e',  'x',  'a',  'm',  'p',  'l',
      'e',  '.',  'c',  'o',  'm',                               /* AUTHORITY */
      0x20, 0x00, 0x28,                                          /* SSL, 40 bytes */
      0x01,                                                      /* PP2_CLIENT_SSL */
      0x00, 0x00, 0x00, 0x01,                                    /* verify: no client certificate */
      0x21, 0x00, 0x07, 'T',  'L',  'S',  'v',  '1',  '.',  '3', /* VERSION */
      0x23, 0x00, 0x16, 'T',  'L',  'S',  '_',  'A',  'E',  'S',  '_',  '1',  '2',
      '8',  '_',  'G',  'C',  'M',  '_',  'S',  'H',  'A',  '2',  '5',  '6', /* CIPHER */
  };
  assert_int_equal(n, sizeof(want));
  assert_memory_equal(buf, want, sizeof(want));
}

static void test_ipv6(void **state) {
  struct sockaddr_in6 src = v6("2001:db8::1", 40000), dst = v6("2001:db8::2", 8443);
  struct proxy_v2_info info = {.src = (struct sockaddr *)&src, .dst = (struct sockaddr *)&dst};
  uint8_t buf[PROXY_V2_MAX];
  int n = proxy_v2_build(&info, buf, sizeof(buf));
  assert_int_equal(n, 16 + 36);
  assert_head(buf, n, 0x21, 0x21);
  assert_memory_equal(buf + 16, &src.sin6_addr, 16);
  assert_memory_equal(buf + 32, &dst.sin6_addr, 16);
  assert_int_equal(buf[48] << 8 | buf[49], 40000);
  assert_int_equal(buf[50] << 8 | buf[51], 8443);
}

/* An IPv4 client on a dual-stack listener: both sent as IPv6. */
static void test_mixed_families_map_ipv4(void **state) {
  struct sockaddr_in src = v4("203.0.113.7", 1234);
  struct sockaddr_in6 dst = v6("::1", 443);
  struct proxy_v2_info info = {.src = (struct sockaddr *)&src, .dst = (struct sockaddr *)&dst};
  uint8_t buf[PROXY_V2_MAX];
  int n = proxy_v2_build(&info, buf, sizeof(buf));
  assert_int_equal(n, 16 + 36);
  assert_head(buf, n, 0x21, 0x21);
  static const uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 7};
  assert_memory_equal(buf + 16, mapped, 16);
  assert_int_equal(buf[48] << 8 | buf[49], 1234);
}

/* No usable addresses: a LOCAL header, TLVs still sent. */
static void test_local_without_addresses(void **state) {
  struct proxy_v2_info info = {.authority = "a.example", .ssl = 0};
  uint8_t buf[PROXY_V2_MAX];
  int n = proxy_v2_build(&info, buf, sizeof(buf));
  assert_head(buf, n, 0x20, 0x00);
  struct tlv t;
  assert_true(find_tlv(buf + 16, (size_t)n - 16, 0x02, &t));
  assert_tlv_str(&t, "a.example");
  assert_false(find_tlv(buf + 16, (size_t)n - 16, 0x20, &t)); /* ssl 0: no SSL TLV */
}

static struct tlv ssl_tlv(const struct proxy_v2_info *info, uint8_t *buf) {
  int n = proxy_v2_build(info, buf, PROXY_V2_MAX);
  assert_true(n > 16 + 12);
  assert_head(buf, n, 0x21, 0x11);
  struct tlv t;
  assert_true(find_tlv(buf + 28, (size_t)n - 28, 0x20, &t));
  assert_true(t.len >= 5);
  return t;
}

static uint32_t verify_of(const struct tlv *t) {
  return (uint32_t)t->value[1] << 24 | (uint32_t)t->value[2] << 16 | (uint32_t)t->value[3] << 8 |
         t->value[4];
}

/* A client certificate verified on this connection: CERT_CONN and
 * CERT_SESS, verify 0, the CN as a sub-TLV. */
static void test_client_certificate_verified(void **state) {
  struct sockaddr_in src = v4("127.0.0.1", 5000), dst = v4("127.0.0.1", 443);
  struct proxy_v2_info info = {.src = (struct sockaddr *)&src,
                               .dst = (struct sockaddr *)&dst,
                               .ssl = 1,
                               .version = "TLSv1.2",
                               .cipher = "ECDHE-ECDSA-AES128-GCM-SHA256",
                               .cn = "client-one",
                               .cert_conn = 1,
                               .cert_sess = 1,
                               .verify_result = 0};
  uint8_t buf[PROXY_V2_MAX];
  struct tlv t = ssl_tlv(&info, buf);
  assert_int_equal(t.value[0], PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS);
  assert_int_equal(verify_of(&t), 0);
  struct tlv sub;
  assert_true(find_tlv(t.value + 5, t.len - 5, PP2_SUBTYPE_SSL_VERSION, &sub));
  assert_tlv_str(&sub, "TLSv1.2");
  assert_true(find_tlv(t.value + 5, t.len - 5, PP2_SUBTYPE_SSL_CN, &sub));
  assert_tlv_str(&sub, "client-one");
  assert_true(find_tlv(t.value + 5, t.len - 5, PP2_SUBTYPE_SSL_CIPHER, &sub));
  assert_tlv_str(&sub, "ECDHE-ECDSA-AES128-GCM-SHA256");
  /* Sub-TLVs in HAProxy's order: VERSION, CN, CIPHER. */
  assert_int_equal(t.value[5], PP2_SUBTYPE_SSL_VERSION);
}

/* A resumed session with a certificate: CERT_SESS only; a certificate
 * that did not verify: its verify result, non-zero. */
static void test_client_certificate_resumed_and_failed(void **state) {
  struct sockaddr_in src = v4("127.0.0.1", 5000), dst = v4("127.0.0.1", 443);
  struct proxy_v2_info info = {.src = (struct sockaddr *)&src,
                               .dst = (struct sockaddr *)&dst,
                               .ssl = 1,
                               .version = "TLSv1.3",
                               .cert_conn = 0,
                               .cert_sess = 1,
                               .verify_result =
                                   20 /* X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY */};
  uint8_t buf[PROXY_V2_MAX];
  struct tlv t = ssl_tlv(&info, buf);
  assert_int_equal(t.value[0], PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS);
  assert_int_equal(verify_of(&t), 20);
  struct tlv sub;
  assert_false(find_tlv(t.value + 5, t.len - 5, PP2_SUBTYPE_SSL_CN, &sub));
}

/* Longest strings: each cut at 255 bytes, and PROXY_V2_MAX suffices. */
static void test_long_strings_fit(void **state) {
  char big[400];
  memset(big, 'x', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  struct sockaddr_in6 src = v6("::1", 1), dst = v6("::1", 2);
  struct proxy_v2_info info = {.src = (struct sockaddr *)&src,
                               .dst = (struct sockaddr *)&dst,
                               .alpn = big,
                               .authority = big,
                               .ssl = 1,
                               .version = big,
                               .cipher = big,
                               .cn = big,
                               .cert_conn = 1,
                               .cert_sess = 1};
  uint8_t buf[PROXY_V2_MAX];
  int n = proxy_v2_build(&info, buf, sizeof(buf));
  assert_int_equal(n, 16 + 36 + 2 * (3 + 255) + 3 + 5 + 3 * (3 + 255));
  assert_head(buf, n, 0x21, 0x21);
  struct tlv t;
  assert_true(find_tlv(buf + 52, (size_t)n - 52, PP2_TYPE_AUTHORITY, &t));
  assert_int_equal(t.len, 255);
}

static void test_buffer_too_small(void **state) {
  struct sockaddr_in src = v4("127.0.0.1", 5000), dst = v4("127.0.0.1", 443);
  struct proxy_v2_info info = {
      .src = (struct sockaddr *)&src, .dst = (struct sockaddr *)&dst, .authority = "a.example"};
  uint8_t buf[PROXY_V2_MAX];
  int n = proxy_v2_build(&info, buf, sizeof(buf));
  assert_true(n > 0);
  assert_int_equal(proxy_v2_build(&info, buf, (size_t)n - 1), -ENOSPC);
  assert_int_equal(proxy_v2_build(&info, buf, 10), -ENOSPC);
  assert_int_equal(proxy_v2_build(&info, buf, (size_t)n), n);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ipv4_exact),
      cmocka_unit_test(test_ipv6),
      cmocka_unit_test(test_mixed_families_map_ipv4),
      cmocka_unit_test(test_local_without_addresses),
      cmocka_unit_test(test_client_certificate_verified),
      cmocka_unit_test(test_client_certificate_resumed_and_failed),
      cmocka_unit_test(test_long_strings_fit),
      cmocka_unit_test(test_buffer_too_small),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
