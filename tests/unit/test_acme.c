/* The ACME protocol core's offline parts (server/acme.c): base64url, the
 * RFC 7638 thumbprint (RFC 7638 3.1's example key), the ES256 JWS
 * verified with OpenSSL over its protected header and payload, the EAB's
 * HS256, and the directory and problem documents read. */
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "acme.h"

/* RFC 7638 3.1. */
static const char rfc7638_n[] =
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"
    "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
    "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-"
    "bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
static const char rfc7638_thumbprint[] = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

static void test_b64url(void **state) {
  (void)state;
  const unsigned char bin[] = {0xfb, 0xff, 0xfe, 0x00, 0x01};
  char *s = acme_b64url(bin, sizeof(bin));
  assert_string_equal(s, "-__-AAE"); /* url alphabet, no padding */
  unsigned char *back = NULL;
  size_t n = 0;
  assert_int_equal(acme_b64url_decode(s, &back, &n), 0);
  assert_int_equal(n, sizeof(bin));
  assert_memory_equal(back, bin, sizeof(bin));
  free(back);
  free(s);
  s = acme_b64url("", 0);
  assert_string_equal(s, "");
  free(s);
  assert_int_equal(acme_b64url_decode("a+b/", &back, &n), -1); /* the standard alphabet */
  assert_int_equal(acme_b64url_decode("abcde", &back, &n), -1);
}

static void test_thumbprint_rfc7638(void **state) {
  (void)state;
  unsigned char *nbin = NULL;
  size_t nlen = 0;
  assert_int_equal(acme_b64url_decode(rfc7638_n, &nbin, &nlen), 0);
  assert_int_equal(nlen, 256);
  BIGNUM *n = BN_bin2bn(nbin, (int)nlen, NULL), *e = BN_new();
  BN_set_word(e, 65537);
  OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
  OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n);
  OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e);
  OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
  EVP_PKEY *key = NULL;
  assert_int_equal(EVP_PKEY_fromdata_init(ctx), 1);
  assert_int_equal(EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params), 1);
  char *tp = acme_jwk_thumbprint(key);
  assert_non_null(tp);
  assert_string_equal(tp, rfc7638_thumbprint);
  free(tp);
  EVP_PKEY_free(key);
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  OSSL_PARAM_BLD_free(bld);
  BN_free(n);
  BN_free(e);
  free(nbin);
}

/* The decoded member `name` of the JWS j, NUL-terminated. */
static char *jws_part(json_t *j, const char *name, size_t *len) {
  unsigned char *p = NULL;
  size_t n = 0;
  assert_int_equal(acme_b64url_decode(json_string_value(json_object_get(j, name)), &p, &n), 0);
  char *s = malloc(n + 1);
  memcpy(s, p, n);
  s[n] = '\0';
  free(p);
  if (len != NULL)
    *len = n;
  return s;
}

/* Verifies the ES256 JWS text with OpenSSL: raw r||s back to DER. */
static void es256_verify(EVP_PKEY *key, const char *text) {
  json_t *j = json_loads(text, 0, NULL);
  assert_non_null(j);
  const char *ph = json_string_value(json_object_get(j, "protected"));
  const char *pl = json_string_value(json_object_get(j, "payload"));
  char *input = malloc(strlen(ph) + strlen(pl) + 2);
  sprintf(input, "%s.%s", ph, pl);
  size_t slen = 0;
  unsigned char *raw = (unsigned char *)jws_part(j, "signature", &slen);
  assert_int_equal(slen, 64);
  ECDSA_SIG *sig = ECDSA_SIG_new();
  ECDSA_SIG_set0(sig, BN_bin2bn(raw, 32, NULL), BN_bin2bn(raw + 32, 32, NULL));
  unsigned char *der = NULL;
  int der_len = i2d_ECDSA_SIG(sig, &der);
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key), 1);
  assert_int_equal(
      EVP_DigestVerify(md, der, (size_t)der_len, (unsigned char *)input, strlen(input)), 1);
  /* A changed payload does not verify. */
  input[strlen(input) - 1] ^= 1;
  assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key), 1);
  assert_int_not_equal(
      EVP_DigestVerify(md, der, (size_t)der_len, (unsigned char *)input, strlen(input)), 1);
  EVP_MD_CTX_free(md);
  OPENSSL_free(der);
  ECDSA_SIG_free(sig);
  free(raw);
  free(input);
  json_decref(j);
}

static void test_jws_es256(void **state) {
  (void)state;
  EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  assert_non_null(key);

  /* With the jwk (newAccount). */
  char *text = acme_jws(key, NULL, "nonce-1", "https://ca.test/new-acct", "{\"a\":1}");
  assert_non_null(text);
  es256_verify(key, text);
  json_t *j = json_loads(text, 0, NULL);
  char *ph = jws_part(j, "protected", NULL), *pl = jws_part(j, "payload", NULL);
  assert_string_equal(pl, "{\"a\":1}");
  json_t *h = json_loads(ph, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(h, "alg")), "ES256");
  assert_string_equal(json_string_value(json_object_get(h, "nonce")), "nonce-1");
  assert_string_equal(json_string_value(json_object_get(h, "url")), "https://ca.test/new-acct");
  assert_null(json_object_get(h, "kid"));
  json_t *jwk = json_object_get(h, "jwk");
  assert_string_equal(json_string_value(json_object_get(jwk, "kty")), "EC");
  assert_string_equal(json_string_value(json_object_get(jwk, "crv")), "P-256");
  assert_int_equal(strlen(json_string_value(json_object_get(jwk, "x"))), 43);
  assert_int_equal(strlen(json_string_value(json_object_get(jwk, "y"))), 43);
  assert_null(json_object_get(jwk, "d")); /* public only */
  json_decref(h);
  free(ph);
  free(pl);
  json_decref(j);
  free(text);

  /* With the kid, POST-as-GET: the empty payload. */
  text = acme_jws(key, "https://ca.test/acct/1", "nonce-2", "https://ca.test/order/1", NULL);
  es256_verify(key, text);
  j = json_loads(text, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(j, "payload")), "");
  ph = jws_part(j, "protected", NULL);
  h = json_loads(ph, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(h, "kid")), "https://ca.test/acct/1");
  assert_null(json_object_get(h, "jwk"));
  json_decref(h);
  free(ph);
  json_decref(j);
  free(text);

  /* Thumbprint: 32 bytes of SHA-256, base64url. */
  char *tp = acme_jwk_thumbprint(key);
  assert_int_equal(strlen(tp), 43);
  free(tp);
  EVP_PKEY_free(key);
}

static void test_eab_hs256(void **state) {
  (void)state;
  EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  const unsigned char hmac[] = "0123456789abcdef0123456789abcdef";
  json_t *eab = acme_eab(key, "kid-1", hmac, 32, "https://ca.test/new-acct");
  assert_non_null(eab);
  char *ph = jws_part(eab, "protected", NULL), *pl = jws_part(eab, "payload", NULL);
  json_t *h = json_loads(ph, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(h, "alg")), "HS256");
  assert_string_equal(json_string_value(json_object_get(h, "kid")), "kid-1");
  assert_string_equal(json_string_value(json_object_get(h, "url")), "https://ca.test/new-acct");
  json_t *payload_jwk = json_loads(pl, 0, NULL), *jwk = acme_jwk(key);
  assert_true(json_equal(payload_jwk, jwk));
  char input[4096];
  snprintf(input, sizeof(input), "%s.%s", json_string_value(json_object_get(eab, "protected")),
           json_string_value(json_object_get(eab, "payload")));
  unsigned char mac[32];
  size_t mac_len = 0;
  assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, hmac, 32, (unsigned char *)input,
                            strlen(input), mac, sizeof(mac), &mac_len));
  char *want = acme_b64url(mac, mac_len);
  assert_string_equal(json_string_value(json_object_get(eab, "signature")), want);
  free(want);
  json_decref(payload_jwk);
  json_decref(jwk);
  json_decref(h);
  free(ph);
  free(pl);
  json_decref(eab);
  EVP_PKEY_free(key);
}

static void test_documents(void **state) {
  (void)state;
  struct acme_directory d;
  struct tp_err err = {0};
  const char dir[] = "{\"newNonce\":\"https://a.test/n\",\"newAccount\":\"https://a.test/a\","
                     "\"newOrder\":\"https://a.test/o\",\"meta\":{\"termsOfService\":"
                     "\"https://a.test/tos\",\"externalAccountRequired\":true}}";
  assert_int_equal(acme_directory_parse(dir, strlen(dir), &d, &err), 0);
  assert_string_equal(d.new_nonce, "https://a.test/n");
  assert_string_equal(d.new_account, "https://a.test/a");
  assert_string_equal(d.new_order, "https://a.test/o");
  assert_string_equal(d.terms_of_service, "https://a.test/tos");
  assert_int_equal(d.eab_required, 1);
  acme_directory_clear(&d);
  const char nodir[] = "{\"newNonce\":\"http://a.test/n\",\"newAccount\":\"https://a.test/a\"}";
  assert_int_equal(acme_directory_parse(nodir, strlen(nodir), &d, &err), -1);
  assert_non_null(strstr(err.msg, "newNonce"));
  assert_int_equal(acme_directory_parse("[1]", 3, &d, &err), -1);

  struct acme_problem p;
  const char prob[] = "{\"type\":\"urn:ietf:params:acme:error:badNonce\",\"detail\":\"JWS has "
                      "an invalid anti-replay nonce\",\"status\":400}";
  assert_int_equal(acme_problem_parse(prob, strlen(prob), &p), 0);
  assert_string_equal(p.type, "urn:ietf:params:acme:error:badNonce");
  assert_string_equal(p.detail, "JWS has an invalid anti-replay nonce");
  assert_int_equal(p.status, 400);
  acme_problem_clear(&p);
  assert_int_equal(acme_problem_parse("{\"detail\":\"x\"}", 14, &p), -1);
  assert_int_equal(acme_problem_parse("not json", 8, &p), -1);

  char *st = acme_account_status_parse("{\"status\":\"valid\"}", 18);
  assert_string_equal(st, "valid");
  free(st);
  assert_null(acme_account_status_parse("{\"status\":1}", 12));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_b64url),    cmocka_unit_test(test_thumbprint_rfc7638),
      cmocka_unit_test(test_jws_es256), cmocka_unit_test(test_eab_hs256),
      cmocka_unit_test(test_documents),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
