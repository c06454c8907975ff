/* The ACME protocol core's offline parts (server/acme.c): base64url, the
 * RFC 7638 thumbprint (RFC 7638 3.1's example key), the ES256 JWS
 * verified with OpenSSL over its protected header and payload, the EAB's
 * HS256, the directory, problem, order and authorization documents
 * read, the tls-alpn-01 challenge certificate (RFC 8737 3) checked
 * with OpenSSL's own parser, and RFC 9773's certID (its 4.1 example) and
 * renewalInfo documents. */
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
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
  assert_null(d.renewal_info); /* optional */
  acme_directory_clear(&d);
  const char ari[] = "{\"newNonce\":\"https://a.test/n\",\"newAccount\":\"https://a.test/a\","
                     "\"newOrder\":\"https://a.test/o\",\"renewalInfo\":\"https://a.test/ri\"}";
  assert_int_equal(acme_directory_parse(ari, strlen(ari), &d, &err), 0);
  assert_string_equal(d.renewal_info, "https://a.test/ri");
  acme_directory_clear(&d);
  const char ari_http[] = "{\"newNonce\":\"https://a.test/n\",\"newAccount\":\"https://a.test/a\","
                          "\"newOrder\":\"https://a.test/o\",\"renewalInfo\":\"http://a.test/ri\"}";
  assert_int_equal(acme_directory_parse(ari_http, strlen(ari_http), &d, &err), 0);
  assert_null(d.renewal_info); /* not https: as none */
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

static void test_order_documents(void **state) {
  (void)state;
  struct tp_err err = {0};
  struct acme_order o;
  const char order[] =
      "{\"status\":\"pending\",\"identifiers\":[{\"type\":\"dns\",\"value\":\"a.test\"}],"
      "\"authorizations\":[\"https://ca.test/authz/1\",\"https://ca.test/authz/2\"],"
      "\"finalize\":\"https://ca.test/final/1\"}";
  assert_int_equal(acme_order_parse(order, strlen(order), &o, &err), 0);
  assert_string_equal(o.status, "pending");
  assert_int_equal(o.n_authorizations, 2);
  assert_string_equal(o.authorizations[1], "https://ca.test/authz/2");
  assert_string_equal(o.finalize, "https://ca.test/final/1");
  assert_null(o.certificate);
  assert_null(o.error);
  acme_order_clear(&o);
  const char invalid[] = "{\"status\":\"invalid\",\"authorizations\":[],\"finalize\":\"https://"
                         "ca.test/f\",\"error\":{\"type\":\"urn:ietf:params:acme:error:"
                         "unauthorized\",\"detail\":\"no\"}}";
  assert_int_equal(acme_order_parse(invalid, strlen(invalid), &o, &err), 0);
  assert_string_equal(o.error, "urn:ietf:params:acme:error:unauthorized: no");
  acme_order_clear(&o);
  const char http[] = "{\"status\":\"pending\",\"authorizations\":[\"http://ca.test/a\"],"
                      "\"finalize\":\"https://ca.test/f\"}";
  assert_int_equal(acme_order_parse(http, strlen(http), &o, &err), -1);
  assert_non_null(strstr(err.msg, "authorizations"));
  assert_int_equal(acme_order_parse("{\"status\":1}", 12, &o, &err), -1);

  struct acme_authz a;
  const char authz[] =
      "{\"status\":\"pending\",\"identifier\":{\"type\":\"dns\",\"value\":\"A.Test\"},"
      "\"challenges\":[{\"type\":\"http-01\",\"url\":\"https://ca.test/c/0\",\"token\":\"x\","
      "\"status\":\"pending\"},{\"type\":\"tls-alpn-01\",\"url\":\"https://ca.test/c/1\","
      "\"token\":\"tok-EN_1\",\"status\":\"pending\"}]}";
  assert_int_equal(acme_authz_parse(authz, strlen(authz), &a, &err), 0);
  assert_string_equal(a.identifier, "a.test"); /* lower case */
  assert_string_equal(a.challenge_url, "https://ca.test/c/1");
  assert_string_equal(a.token, "tok-EN_1");
  assert_null(a.challenge_error);
  acme_authz_clear(&a);
  const char noalpn[] = "{\"status\":\"pending\",\"identifier\":{\"type\":\"dns\",\"value\":"
                        "\"a.test\"},\"challenges\":[]}";
  assert_int_equal(acme_authz_parse(noalpn, strlen(noalpn), &a, &err), 0);
  assert_null(a.challenge_url);
  acme_authz_clear(&a);
  const char badtoken[] = "{\"status\":\"pending\",\"identifier\":{\"type\":\"dns\",\"value\":"
                          "\"a.test\"},\"challenges\":[{\"type\":\"tls-alpn-01\",\"url\":"
                          "\"https://ca.test/c\",\"token\":\"a/b\",\"status\":\"pending\"}]}";
  assert_int_equal(acme_authz_parse(badtoken, strlen(badtoken), &a, &err), -1);
  const char ip[] = "{\"status\":\"pending\",\"identifier\":{\"type\":\"ip\",\"value\":"
                    "\"127.0.0.1\"},\"challenges\":[]}";
  assert_int_equal(acme_authz_parse(ip, strlen(ip), &a, &err), -1);
  assert_non_null(strstr(err.msg, "dns"));
}

/* The dns-01 challenge beside tls-alpn-01, and its TXT value (RFC 8555
 * 8.4; the digest computed independently with `openssl dgst -sha256
 * -binary | basenc --base64url`). */
static void test_dns01(void **state) {
  (void)state;
  struct tp_err err = {0};
  struct acme_authz a;
  const char both[] =
      "{\"status\":\"pending\",\"wildcard\":true,\"identifier\":{\"type\":\"dns\","
      "\"value\":\"W.test\"},\"challenges\":[{\"type\":\"dns-01\",\"url\":\"https://ca.test/c/2\","
      "\"token\":\"dns-TOK\",\"status\":\"pending\",\"error\":{\"type\":\"urn:x\","
      "\"detail\":\"no TXT\"}},{\"type\":\"dns-01\",\"url\":\"https://ca.test/c/3\","
      "\"token\":\"second\",\"status\":\"pending\"}]}";
  assert_int_equal(acme_authz_parse(both, strlen(both), &a, &err), 0);
  assert_string_equal(a.identifier, "w.test");
  assert_int_equal(a.wildcard, 1);
  assert_null(a.challenge_url); /* no tls-alpn-01 offered (a wildcard) */
  assert_string_equal(a.dns_challenge_url, "https://ca.test/c/2"); /* the first */
  assert_string_equal(a.dns_token, "dns-TOK");
  assert_string_equal(a.dns_challenge_status, "pending");
  assert_string_equal(a.dns_challenge_error, "urn:x: no TXT");
  acme_authz_clear(&a);
  const char badurl[] = "{\"status\":\"pending\",\"identifier\":{\"type\":\"dns\",\"value\":"
                        "\"a.test\"},\"challenges\":[{\"type\":\"dns-01\",\"url\":"
                        "\"http://ca.test/c\",\"token\":\"t\",\"status\":\"pending\"}]}";
  assert_int_equal(acme_authz_parse(badurl, strlen(badurl), &a, &err), -1);
  assert_non_null(strstr(err.msg, "dns-01"));
  assert_null(a.dns_challenge_url);

  char *txt = acme_dns01_txt("tok-EN_1", "thumb-PRINT_x");
  assert_non_null(txt);
  assert_string_equal(txt, "087AvYsS8eFsv6awXZaXDANeBM0qqn9jU7wmFIVYjzU");
  free(txt);
  char longtok[ACME_TOKEN_MAX + 200];
  memset(longtok, 'a', sizeof(longtok) - 1);
  longtok[sizeof(longtok) - 1] = '\0';
  assert_null(acme_dns01_txt(longtok, "thumb"));
}

static void test_challenge_certificate(void **state) {
  (void)state;
  struct tp_err err = {0};
  char *cert = NULL, *key = NULL;
  const char *token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";
  const char *thumb = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
  assert_int_equal(acme_challenge_cert("WWW.Example.Test", token, thumb, &cert, &key, &err), 0);
  BIO *b = BIO_new_mem_buf(cert, -1);
  X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
  BIO_free(b);
  assert_non_null(x);
  b = BIO_new_mem_buf(key, -1);
  EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
  BIO_free(b);
  assert_non_null(k);
  assert_int_equal(X509_check_private_key(x, k), 1);
  assert_true(EVP_PKEY_is_a(k, "EC"));
  assert_int_equal(EVP_PKEY_get_bits(k), 256);
  assert_int_equal(X509_check_issued(x, x), X509_V_OK); /* self-signed */
  assert_int_equal(X509_verify(x, k), 1);

  /* subjectAltName: exactly one dNSName, lower case. */
  GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  assert_non_null(sans);
  assert_int_equal(sk_GENERAL_NAME_num(sans), 1);
  const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, 0);
  assert_int_equal(gn->type, GEN_DNS);
  assert_string_equal((const char *)ASN1_STRING_get0_data(gn->d.dNSName), "www.example.test");
  GENERAL_NAMES_free(sans);

  /* id-pe-acmeIdentifier: critical, its value the DER OCTET STRING of
   * SHA-256(token "." thumbprint). */
  ASN1_OBJECT *oid = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1);
  int at = X509_get_ext_by_OBJ(x, oid, -1);
  assert_true(at >= 0);
  X509_EXTENSION *ext = X509_get_ext(x, at);
  assert_int_equal(X509_EXTENSION_get_critical(ext), 1);
  const ASN1_OCTET_STRING *value = X509_EXTENSION_get_data(ext);
  char ka[256];
  snprintf(ka, sizeof(ka), "%s.%s", token, thumb);
  unsigned char want[2 + 32] = {0x04, 0x20};
  assert_int_equal(EVP_Digest(ka, strlen(ka), want + 2, NULL, EVP_sha256(), NULL), 1);
  assert_int_equal(ASN1_STRING_length(value), sizeof(want));
  assert_memory_equal(ASN1_STRING_get0_data(value), want, sizeof(want));
  const unsigned char *p = ASN1_STRING_get0_data(value);
  ASN1_OCTET_STRING *inner = d2i_ASN1_OCTET_STRING(NULL, &p, ASN1_STRING_length(value));
  assert_non_null(inner);
  assert_int_equal(ASN1_STRING_length(inner), 32);
  ASN1_OCTET_STRING_free(inner);
  ASN1_OBJECT_free(oid);

  /* Each one has a fresh key. */
  char *cert2 = NULL, *key2 = NULL;
  assert_int_equal(acme_challenge_cert("www.example.test", token, thumb, &cert2, &key2, &err), 0);
  assert_string_not_equal(key, key2);
  free(cert2);
  free(key2);
  assert_int_equal(acme_challenge_cert("", token, thumb, &cert2, &key2, &err), -1);

  EVP_PKEY_free(k);
  X509_free(x);
  free(cert);
  free(key);
}

/* RFC 9773 4.1's example: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:
 * 84:7B:A0:AE:2C:DE:01:C8:D4 and serial 0x87654321 (DER 00 87 65 43 21). */
static X509 *ari_example_cert(const char *serial_hex, int with_aki) {
  static const unsigned char keyid[] = {0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3,
                                        0x7B, 0x84, 0x7B, 0xA0, 0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4};
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  BIGNUM *bn = NULL;
  assert_true(BN_hex2bn(&bn, serial_hex) > 0);
  ASN1_INTEGER *serial = BN_to_ASN1_INTEGER(bn, NULL);
  assert_int_equal(X509_set_serialNumber(x, serial), 1);
  X509_NAME *n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"ari.test", -1, -1, 0);
  X509_set_issuer_name(x, n);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, key);
  if (with_aki) {
    AUTHORITY_KEYID *akid = AUTHORITY_KEYID_new();
    akid->keyid = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING_set(akid->keyid, keyid, sizeof(keyid));
    assert_int_equal(X509_add1_ext_i2d(x, NID_authority_key_identifier, akid, 0, 0), 1);
    AUTHORITY_KEYID_free(akid);
  }
  assert_true(X509_sign(x, key, EVP_sha256()) > 0);
  ASN1_INTEGER_free(serial);
  BN_free(bn);
  EVP_PKEY_free(key);
  return x;
}

static void test_cert_id(void **state) {
  (void)state;
  X509 *x = ari_example_cert("87654321", 1);
  char *id = acme_cert_id(x);
  assert_string_equal(id, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
  free(id);
  /* The first certificate of a PEM chain. */
  BIO *b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, x);
  PEM_write_bio_X509(b, x);
  BIO_write(b, "", 1);
  char *pem = NULL;
  BIO_get_mem_data(b, &pem);
  id = acme_cert_id_pem(pem);
  assert_string_equal(id, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
  free(id);
  BIO_free(b);
  X509_free(x);
  /* A serial without its top bit set needs no leading zero. */
  x = ari_example_cert("7F01", 1);
  id = acme_cert_id(x);
  assert_string_equal(id, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.fwE");
  free(id);
  X509_free(x);
  /* No authority key identifier: no certID. */
  x = ari_example_cert("01", 0);
  assert_null(acme_cert_id(x));
  X509_free(x);
  assert_null(acme_cert_id_pem(""));
  assert_null(acme_cert_id_pem("not a certificate"));
}

static void test_renewal_info(void **state) {
  (void)state;
  struct acme_renewal_info ri;
  struct tp_err err = {0};
  const char ok[] = "{\"suggestedWindow\":{\"start\":\"2025-01-02T04:00:00Z\",\"end\":"
                    "\"2025-01-03T04:00:00.5+01:00\"},\"explanationURL\":\"https://ca.test/why\"}";
  assert_int_equal(acme_renewal_info_parse(ok, strlen(ok), &ri, &err), 0);
  assert_int_equal(ri.start_us, 1735790400LL * 1000000);
  assert_int_equal(ri.end_us, (1735790400LL + 86400 - 3600) * 1000000 + 500000);
  assert_string_equal(ri.explanation_url, "https://ca.test/why");
  acme_renewal_info_clear(&ri);
  const char plain[] = "{\"suggestedWindow\":{\"start\":\"2025-01-02T04:00:00Z\",\"end\":"
                       "\"2025-01-02T04:00:01Z\"}}";
  assert_int_equal(acme_renewal_info_parse(plain, strlen(plain), &ri, &err), 0);
  assert_null(ri.explanation_url);
  acme_renewal_info_clear(&ri);
  static const struct {
    const char *doc, *why;
  } bad[] = {
      {"[]", "not a JSON object"},
      {"{}", "no suggestedWindow"},
      {"{\"suggestedWindow\":[]}", "no suggestedWindow"},
      {"{\"suggestedWindow\":{\"end\":\"2025-01-02T04:00:00Z\"}}", "start"},
      {"{\"suggestedWindow\":{\"start\":\"2025-01-02 04:00:00\",\"end\":\"2025-01-03T04:00:00Z\"}}",
       "start"},
      {"{\"suggestedWindow\":{\"start\":\"2025-01-02T04:00:00Z\",\"end\":1735790400}}", "end"},
      {"{\"suggestedWindow\":{\"start\":\"2025-01-02T04:00:00Z\",\"end\":\"2025-01-02T04:00:00Z\"}"
       "}",
       "not after its start"},
      {"{\"suggestedWindow\":{\"start\":\"2025-01-03T04:00:00Z\",\"end\":\"2025-01-02T04:00:00Z\"}"
       "}",
       "not after its start"},
      {"{\"suggestedWindow\":{\"start\":\"2025-01-02T04:00:00Z\",\"end\":\"2025-01-03T04:00:00Z\"},"
       "\"explanationURL\":\"http://ca.test/\"}",
       "explanationURL"},
      {"{\"suggestedWindow\":{\"start\":\"2025-01-02T04:00:00Z\",\"end\":\"2025-01-03T04:00:00Z\"},"
       "\"explanationURL\":7}",
       "explanationURL"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    memset(&err, 0, sizeof(err));
    assert_int_equal(acme_renewal_info_parse(bad[i].doc, strlen(bad[i].doc), &ri, &err), -1);
    if (strstr(err.msg, bad[i].why) == NULL)
      fail_msg("%s: \"%s\" does not say %s", bad[i].doc, err.msg, bad[i].why);
    assert_null(ri.explanation_url);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_b64url),
      cmocka_unit_test(test_thumbprint_rfc7638),
      cmocka_unit_test(test_jws_es256),
      cmocka_unit_test(test_eab_hs256),
      cmocka_unit_test(test_documents),
      cmocka_unit_test(test_order_documents),
      cmocka_unit_test(test_challenge_certificate),
      cmocka_unit_test(test_cert_id),
      cmocka_unit_test(test_renewal_info),
      cmocka_unit_test(test_dns01),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
