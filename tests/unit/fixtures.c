/* Shared helpers for the unit tests. See fixtures.h. */
#include "fixtures.h"

#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fixture_tmpdir(char *buf, size_t len) {
  const char *base = getenv("TLSPLANE_TMP");
  snprintf(buf, len, "%s/tlsplane-test-XXXXXX", base ? base : "/tmp");
  if (mkdtemp(buf) == NULL) {
    perror("mkdtemp");
    abort();
  }
}

/* A fixture that cannot be made is a broken test, not a result. */
#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "%s:%d: fixture failed: %s\n", __FILE__, __LINE__, #cond);                   \
      ERR_print_errors_fp(stderr);                                                                 \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

EVP_PKEY *fixture_key_rsa(int bits) {
  EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
  CHECK(k != NULL);
  return k;
}

EVP_PKEY *fixture_key_ec(const char *curve) {
  EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", curve);
  CHECK(k != NULL);
  return k;
}

EVP_PKEY *fixture_key_ed25519(void) {
  EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
  CHECK(k != NULL);
  return k;
}

time_t fixture_time(int year, int month, int day) {
  struct tm tm;
  memset(&tm, 0, sizeof(tm));
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  return timegm(&tm);
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
  X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
  CHECK(ext != NULL);
  CHECK(X509_add_ext(x, ext, -1));
  X509_EXTENSION_free(ext);
}

/* Ed25519 and Ed448 sign without a separate digest. */
static const EVP_MD *sign_md(EVP_PKEY *key) {
  int id = EVP_PKEY_get_base_id(key);
  return id == EVP_PKEY_ED25519 || id == EVP_PKEY_ED448 ? NULL : EVP_sha256();
}

X509 *fixture_cert(EVP_PKEY *key, const struct fixture_cert_opts *o) {
  time_t now = time(NULL);
  X509 *x = X509_new();
  CHECK(x != NULL);
  CHECK(X509_set_version(x, X509_VERSION_3));
  CHECK(ASN1_INTEGER_set(X509_get_serialNumber(x), o->serial ? o->serial : 1));
  X509_NAME *name = X509_NAME_new();
  CHECK(name != NULL);
  CHECK(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"tlsplane test",
                                   -1, -1, 0));
  CHECK(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)o->cn, -1, -1,
                                   0));
  CHECK(X509_set_subject_name(x, name));
  X509_NAME_free(name);
  X509 *issuer = o->issuer ? o->issuer : x;
  EVP_PKEY *issuer_key = o->issuer_key ? o->issuer_key : key;
  CHECK(X509_set_issuer_name(x, X509_get_subject_name(issuer)));
  CHECK(ASN1_TIME_set(X509_getm_notBefore(x), o->not_before ? o->not_before : now - 3600));
  CHECK(ASN1_TIME_set(X509_getm_notAfter(x), o->not_after ? o->not_after : now + 365 * 86400));
  CHECK(X509_set_pubkey(x, key));
  add_ext(x, issuer, NID_subject_key_identifier, "hash");
  if (o->issuer != NULL)
    add_ext(x, issuer, NID_authority_key_identifier, "keyid:always");
  if (o->is_ca) {
    add_ext(x, issuer, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(x, issuer, NID_key_usage, "critical,keyCertSign,cRLSign,digitalSignature");
  } else {
    add_ext(x, issuer, NID_basic_constraints, "CA:FALSE");
  }
  if (o->san != NULL)
    add_ext(x, issuer, NID_subject_alt_name, o->san);
  if (o->eku != NULL)
    add_ext(x, issuer, NID_ext_key_usage, o->eku);
  CHECK(X509_sign(x, issuer_key, sign_md(issuer_key)) > 0);
  return x;
}

static char *bio_take(BIO *b) {
  char *data;
  long n = BIO_get_mem_data(b, &data);
  CHECK(n >= 0);
  char *s = malloc((size_t)n + 1);
  CHECK(s != NULL);
  memcpy(s, data, (size_t)n);
  s[n] = '\0';
  BIO_free(b);
  return s;
}

char *fixture_pem_cert(X509 *x) {
  BIO *b = BIO_new(BIO_s_mem());
  CHECK(b != NULL && PEM_write_bio_X509(b, x));
  return bio_take(b);
}

char *fixture_pem_chain(X509 *first, ...) {
  BIO *b = BIO_new(BIO_s_mem());
  CHECK(b != NULL);
  va_list ap;
  va_start(ap, first);
  for (X509 *x = first; x != NULL; x = va_arg(ap, X509 *))
    CHECK(PEM_write_bio_X509(b, x));
  va_end(ap);
  return bio_take(b);
}

char *fixture_pem_key(EVP_PKEY *key) {
  BIO *b = BIO_new(BIO_s_mem());
  CHECK(b != NULL && PEM_write_bio_PKCS8PrivateKey(b, key, NULL, NULL, 0, NULL, NULL));
  return bio_take(b);
}

char *fixture_pem_key_traditional(EVP_PKEY *key) {
  BIO *b = BIO_new(BIO_s_mem());
  CHECK(b != NULL && PEM_write_bio_PrivateKey_traditional(b, key, NULL, NULL, 0, NULL, NULL));
  return bio_take(b);
}

char *fixture_pem_key_encrypted(EVP_PKEY *key, const char *passphrase) {
  BIO *b = BIO_new(BIO_s_mem());
  CHECK(b != NULL);
  CHECK(PEM_write_bio_PKCS8PrivateKey(b, key, EVP_aes_256_cbc(), passphrase,
                                      (int)strlen(passphrase), NULL, NULL));
  return bio_take(b);
}

char *fixture_pem_key_legacy_encrypted(EVP_PKEY *key, const char *passphrase) {
  BIO *b = BIO_new(BIO_s_mem());
  CHECK(b != NULL);
  CHECK(PEM_write_bio_PrivateKey_traditional(b, key, EVP_aes_128_cbc(),
                                             (const unsigned char *)passphrase,
                                             (int)strlen(passphrase), NULL, NULL));
  return bio_take(b);
}

unsigned char *fixture_pkcs12(EVP_PKEY *key, X509 *cert, X509 *ca, const char *passphrase,
                              size_t *len) {
  return fixture_pkcs12_iter(key, cert, ca, passphrase, 0, 0, len);
}

unsigned char *fixture_pkcs12_iter(EVP_PKEY *key, X509 *cert, X509 *ca, const char *passphrase,
                                   int iter, int mac_iter, size_t *len) {
  STACK_OF(X509) *cas = sk_X509_new_null();
  CHECK(cas != NULL);
  if (ca != NULL)
    CHECK(sk_X509_push(cas, ca));
  PKCS12 *p12 = PKCS12_create(passphrase, "tlsplane", key, cert, cas, 0, 0, iter, mac_iter, 0);
  CHECK(p12 != NULL);
  sk_X509_free(cas);
  unsigned char *der = NULL;
  int n = i2d_PKCS12(p12, &der);
  CHECK(n > 0);
  PKCS12_free(p12);
  unsigned char *out = malloc((size_t)n);
  CHECK(out != NULL);
  memcpy(out, der, (size_t)n);
  OPENSSL_free(der);
  *len = (size_t)n;
  return out;
}

X509_CRL *fixture_crl(X509 *ca, EVP_PKEY *ca_key, const long *revoked, size_t n_revoked,
                      time_t this_update, time_t next_update, long crl_number) {
  X509_CRL *crl = X509_CRL_new();
  CHECK(crl != NULL);
  CHECK(X509_CRL_set_version(crl, X509_CRL_VERSION_2));
  CHECK(X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca)));
  ASN1_TIME *t = ASN1_TIME_set(NULL, this_update);
  CHECK(t != NULL && X509_CRL_set1_lastUpdate(crl, t));
  CHECK(ASN1_TIME_set(t, next_update) && X509_CRL_set1_nextUpdate(crl, t));
  for (size_t i = 0; i < n_revoked; i++) {
    X509_REVOKED *r = X509_REVOKED_new();
    ASN1_INTEGER *serial = ASN1_INTEGER_new();
    CHECK(r != NULL && serial != NULL && ASN1_INTEGER_set(serial, revoked[i]));
    CHECK(X509_REVOKED_set_serialNumber(r, serial));
    CHECK(ASN1_TIME_set(t, this_update) && X509_REVOKED_set_revocationDate(r, t));
    CHECK(X509_CRL_add0_revoked(crl, r));
    ASN1_INTEGER_free(serial);
  }
  ASN1_TIME_free(t);
  if (crl_number != 0) {
    ASN1_INTEGER *num = ASN1_INTEGER_new();
    CHECK(num != NULL && ASN1_INTEGER_set(num, crl_number));
    CHECK(X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0));
    ASN1_INTEGER_free(num);
  }
  CHECK(X509_CRL_sort(crl));
  CHECK(X509_CRL_sign(crl, ca_key, sign_md(ca_key)) > 0);
  return crl;
}

char *fixture_pem_crl(X509_CRL *crl) {
  BIO *b = BIO_new(BIO_s_mem());
  CHECK(b != NULL && PEM_write_bio_X509_CRL(b, crl));
  return bio_take(b);
}

unsigned char *fixture_der_crl(X509_CRL *crl, size_t *len) {
  unsigned char *der = NULL;
  int n = i2d_X509_CRL(crl, &der);
  CHECK(n > 0);
  unsigned char *out = malloc((size_t)n);
  CHECK(out != NULL);
  memcpy(out, der, (size_t)n);
  OPENSSL_free(der);
  *len = (size_t)n;
  return out;
}

static unsigned char *ocsp_der(OCSP_RESPONSE *resp, size_t *len) {
  unsigned char *der = NULL;
  int n = i2d_OCSP_RESPONSE(resp, &der);
  CHECK(n > 0);
  unsigned char *out = malloc((size_t)n);
  CHECK(out != NULL);
  memcpy(out, der, (size_t)n);
  OPENSSL_free(der);
  *len = (size_t)n;
  return out;
}

unsigned char *fixture_ocsp(X509 *leaf, X509 *issuer, X509 *signer, EVP_PKEY *signer_key,
                            int status, time_t this_update, time_t next_update, size_t *len) {
  OCSP_BASICRESP *bs = OCSP_BASICRESP_new();
  OCSP_CERTID *id = OCSP_cert_to_id(NULL, leaf, issuer);
  ASN1_TIME *thisupd = ASN1_GENERALIZEDTIME_set(NULL, this_update);
  ASN1_TIME *nextupd = next_update ? ASN1_GENERALIZEDTIME_set(NULL, next_update) : NULL;
  CHECK(bs != NULL && id != NULL && thisupd != NULL);
  int revoked = status == V_OCSP_CERTSTATUS_REVOKED;
  CHECK(OCSP_basic_add1_status(bs, id, status, revoked ? OCSP_REVOKED_STATUS_KEYCOMPROMISE : 0,
                               revoked ? thisupd : NULL, thisupd, nextupd) != NULL);
  CHECK(OCSP_basic_sign(bs, signer, signer_key, EVP_sha256(), NULL, 0));
  OCSP_RESPONSE *resp = OCSP_response_create(OCSP_RESPONSE_STATUS_SUCCESSFUL, bs);
  CHECK(resp != NULL);
  unsigned char *out = ocsp_der(resp, len);
  OCSP_RESPONSE_free(resp);
  OCSP_BASICRESP_free(bs);
  OCSP_CERTID_free(id);
  ASN1_TIME_free(thisupd);
  ASN1_TIME_free(nextupd);
  return out;
}

unsigned char *fixture_ocsp_status(int response_status, size_t *len) {
  OCSP_RESPONSE *resp = OCSP_response_create(response_status, NULL);
  CHECK(resp != NULL);
  unsigned char *out = ocsp_der(resp, len);
  OCSP_RESPONSE_free(resp);
  return out;
}

int fixture_handshake(SSL *client, SSL *server) {
  BIO *cb = NULL, *sb = NULL;
  CHECK(BIO_new_bio_pair(&cb, 0, &sb, 0));
  SSL_set_bio(client, cb, cb);
  SSL_set_bio(server, sb, sb);
  SSL_set_connect_state(client);
  SSL_set_accept_state(server);
  SSL *sides[2] = {client, server};
  int done[2] = {0, 0};
  for (int round = 0; round < 100 && !(done[0] && done[1]); round++) {
    for (int i = 0; i < 2; i++) {
      if (done[i])
        continue;
      int r = SSL_do_handshake(sides[i]);
      if (r == 1) {
        done[i] = 1;
        continue;
      }
      int e = SSL_get_error(sides[i], r);
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        return -1;
      }
    }
  }
  ERR_clear_error();
  return done[0] && done[1] ? 0 : -1;
}

int fixture_exchange(SSL *client, SSL *server) {
  unsigned char b = 'x';
  int ok = SSL_write(client, &b, 1) == 1 && SSL_read(server, &b, 1) == 1 &&
           SSL_write(server, &b, 1) == 1 && SSL_read(client, &b, 1) == 1 && b == 'x';
  ERR_clear_error();
  return ok ? 0 : -1;
}

int fixture_renegotiate(SSL *client, SSL *server) {
  int rc = -1;
  if (!SSL_renegotiate(client))
    goto done;
  for (int round = 0; round < 100; round++) {
    int r = SSL_do_handshake(client);
    if (r == 1 && !SSL_renegotiate_pending(client)) {
      rc = 0;
      break;
    }
    if (r != 1) {
      int e = SSL_get_error(client, r);
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
        break;
    }
    unsigned char b;
    r = SSL_read(server, &b, 1);
    int e = SSL_get_error(server, r);
    if (r <= 0 && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
      break;
  }
done:
  ERR_clear_error();
  return rc;
}

const unsigned char fixture_legacy_pfx[] = {
    0x30, 0x82, 0x03, 0xe2, 0x02, 0x01, 0x03, 0x30, 0x82, 0x03, 0xa8, 0x06, 0x09, 0x2a, 0x86, 0x48,
    0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01, 0xa0, 0x82, 0x03, 0x99, 0x04, 0x82, 0x03, 0x95, 0x30, 0x82,
    0x03, 0x91, 0x30, 0x82, 0x02, 0x87, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07,
    0x06, 0xa0, 0x82, 0x02, 0x78, 0x30, 0x82, 0x02, 0x74, 0x02, 0x01, 0x00, 0x30, 0x82, 0x02, 0x6d,
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01, 0x30, 0x1c, 0x06, 0x0a, 0x2a,
    0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01, 0x06, 0x30, 0x0e, 0x04, 0x08, 0x04, 0x3f, 0x38,
    0xaf, 0x3c, 0x15, 0x31, 0x41, 0x02, 0x02, 0x08, 0x00, 0x80, 0x82, 0x02, 0x40, 0xba, 0xdc, 0xf4,
    0x41, 0xd6, 0x72, 0x41, 0xcb, 0x99, 0x21, 0x96, 0x70, 0x71, 0xa4, 0x80, 0xb5, 0x50, 0x55, 0x2f,
    0x73, 0x69, 0xa9, 0x35, 0x25, 0x24, 0x2f, 0xdb, 0xcb, 0x2f, 0x09, 0x8e, 0x25, 0x0d, 0x1f, 0xe1,
    0x2c, 0xc5, 0xb0, 0xba, 0x59, 0xd1, 0x7d, 0xeb, 0x06, 0x4d, 0xaf, 0xe7, 0xf0, 0x80, 0xd1, 0xd3,
    0x17, 0x68, 0x6a, 0xd3, 0x9d, 0xb2, 0x9d, 0x6d, 0x7a, 0xdc, 0x23, 0x72, 0x9d, 0xed, 0xb5, 0x37,
    0x1b, 0x56, 0x70, 0xf5, 0x23, 0x58, 0xfc, 0x53, 0x50, 0x44, 0x3c, 0x49, 0xf2, 0x60, 0x13, 0x3a,
    0x89, 0x1b, 0xb3, 0x48, 0x9f, 0xf4, 0x70, 0xe9, 0x19, 0x82, 0x3d, 0xf1, 0xec, 0xdc, 0xe7, 0xd5,
    0x96, 0x6c, 0x28, 0x6c, 0xd6, 0x46, 0xd8, 0x28, 0x27, 0x0d, 0x34, 0xd5, 0x86, 0x08, 0x70, 0x66,
    0xcb, 0xc7, 0x6b, 0x8b, 0xfe, 0xc5, 0x5b, 0xae, 0x83, 0x74, 0x94, 0x28, 0xac, 0xf7, 0xd0, 0xf6,
    0xd9, 0xda, 0x4b, 0x57, 0xe7, 0xd2, 0x8a, 0x87, 0x1d, 0x2e, 0x73, 0x8e, 0x36, 0xe1, 0x20, 0xc9,
    0x28, 0xc5, 0x09, 0x48, 0xec, 0x9d, 0x2b, 0x3d, 0x37, 0x10, 0x60, 0x61, 0x22, 0xb2, 0x6e, 0x37,
    0xa7, 0x24, 0xbe, 0x7d, 0xc0, 0xa6, 0xa1, 0xb9, 0xb7, 0xcc, 0x85, 0x12, 0x4d, 0x63, 0x64, 0x7d,
    0xf1, 0x84, 0x88, 0x76, 0xe9, 0xa7, 0x3c, 0x79, 0x52, 0x77, 0x75, 0x7c, 0x11, 0x49, 0x54, 0xe0,
    0xe1, 0x8f, 0xc5, 0x36, 0xca, 0xf7, 0xfb, 0x4b, 0xcc, 0x7f, 0xb8, 0x36, 0xba, 0xbd, 0xfe, 0x5d,
    0xcd, 0xd0, 0x47, 0x3d, 0xef, 0xb4, 0x0d, 0x59, 0x61, 0xe7, 0xe3, 0xab, 0x40, 0x8c, 0xac, 0x40,
    0x91, 0xeb, 0x3f, 0x16, 0xc7, 0xca, 0x10, 0x7c, 0x37, 0xaf, 0x21, 0x2f, 0x16, 0x31, 0xc2, 0xdf,
    0x52, 0x7c, 0x5c, 0xc6, 0xff, 0xc3, 0x85, 0xdf, 0x0a, 0xc9, 0x82, 0x03, 0xd5, 0x24, 0xc6, 0xf9,
    0xee, 0xdb, 0x47, 0x69, 0x93, 0x67, 0xb3, 0x2c, 0x7c, 0x26, 0xd5, 0x8d, 0x19, 0xa5, 0x43, 0x4d,
    0x32, 0x5a, 0x4d, 0xfd, 0xe9, 0x19, 0x5f, 0x79, 0x26, 0x9d, 0x3d, 0xc7, 0x9f, 0xd2, 0x0f, 0xe9,
    0x03, 0xdc, 0xb4, 0x3f, 0x59, 0x66, 0x58, 0xcf, 0x55, 0x46, 0x2d, 0x96, 0xeb, 0x8e, 0x41, 0xb9,
    0x4f, 0xb3, 0xe5, 0x1d, 0x5d, 0x00, 0x6a, 0x9c, 0x65, 0xcb, 0xae, 0x6a, 0x0f, 0x11, 0xfb, 0xf4,
    0x02, 0x78, 0xf0, 0x17, 0xf2, 0xee, 0xdf, 0x62, 0x46, 0x5b, 0x5e, 0xad, 0xb9, 0x37, 0xfa, 0x03,
    0x24, 0xa4, 0xe6, 0xf6, 0xa9, 0xe5, 0x88, 0x57, 0x53, 0xa6, 0x6d, 0xfd, 0x7a, 0xd2, 0xd1, 0x82,
    0xa9, 0xdb, 0x0e, 0x58, 0x93, 0x73, 0xa1, 0x7b, 0xae, 0xc1, 0xa7, 0xd2, 0x96, 0xf4, 0x69, 0x0e,
    0xf9, 0x9d, 0x61, 0xe0, 0x5d, 0x1e, 0xd5, 0xb5, 0x42, 0x63, 0x8f, 0x44, 0x3e, 0xd2, 0x49, 0xae,
    0xfb, 0x76, 0xb0, 0xc1, 0x6e, 0x52, 0x60, 0x25, 0x33, 0xf6, 0xee, 0xdb, 0x31, 0xdd, 0x72, 0x77,
    0x9d, 0x0c, 0x3d, 0x6b, 0x8a, 0xf9, 0xaf, 0xf4, 0xc8, 0xe6, 0x4c, 0x58, 0x0d, 0x65, 0xcf, 0xd4,
    0x05, 0x35, 0xc5, 0x2e, 0x2d, 0xff, 0x8b, 0x54, 0xe4, 0xe9, 0x3c, 0x19, 0x3c, 0xf3, 0xa0, 0x92,
    0x98, 0xb6, 0xf0, 0xb8, 0xd3, 0x90, 0xd7, 0x15, 0x87, 0x01, 0xbb, 0xe4, 0x58, 0xe5, 0x49, 0xee,
    0x8b, 0xfa, 0x31, 0xf5, 0xf8, 0x9d, 0xe4, 0xdf, 0xe2, 0x96, 0x1d, 0x69, 0x6b, 0x13, 0xab, 0xe6,
    0x8f, 0x36, 0xc5, 0x1d, 0xb0, 0x61, 0xfa, 0xc6, 0x5a, 0x78, 0x1a, 0x9c, 0xa7, 0x0f, 0x79, 0xfb,
    0xd6, 0x20, 0xc7, 0xb0, 0x5e, 0x1b, 0xdc, 0x10, 0xaa, 0xae, 0x8b, 0x83, 0xa6, 0x9f, 0xff, 0x78,
    0x5b, 0x1e, 0x31, 0x1e, 0x8e, 0x68, 0x75, 0xa6, 0xe7, 0xad, 0x72, 0x23, 0xc7, 0x28, 0x59, 0xde,
    0xb7, 0xbc, 0x3c, 0x1e, 0xdf, 0x6c, 0x3e, 0xc8, 0xc7, 0x2f, 0x66, 0xfe, 0xf5, 0xe7, 0xf5, 0x3c,
    0x87, 0xf5, 0x5d, 0x24, 0x7b, 0xdd, 0x9d, 0xa1, 0xb1, 0x7e, 0xc2, 0x42, 0xc2, 0xe6, 0x2c, 0x0b,
    0x53, 0x97, 0x90, 0x37, 0x5f, 0x08, 0xf0, 0x00, 0x5c, 0x4e, 0x2c, 0x62, 0x35, 0x5c, 0x7d, 0xb8,
    0xee, 0xef, 0xd0, 0x76, 0x2f, 0x11, 0x15, 0x29, 0x8c, 0x2b, 0xf5, 0x3d, 0xf9, 0x30, 0x82, 0x01,
    0x02, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01, 0xa0, 0x81, 0xf4, 0x04,
    0x81, 0xf1, 0x30, 0x81, 0xee, 0x30, 0x81, 0xeb, 0x06, 0x0b, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d,
    0x01, 0x0c, 0x0a, 0x01, 0x02, 0xa0, 0x81, 0xb4, 0x30, 0x81, 0xb1, 0x30, 0x1c, 0x06, 0x0a, 0x2a,
    0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01, 0x03, 0x30, 0x0e, 0x04, 0x08, 0x2d, 0xe4, 0x92,
    0xb7, 0x37, 0xe6, 0x86, 0x55, 0x02, 0x02, 0x08, 0x00, 0x04, 0x81, 0x90, 0x1c, 0x89, 0xb0, 0xe3,
    0x43, 0xc1, 0xf0, 0x4a, 0x87, 0x15, 0x34, 0x61, 0x32, 0xa2, 0xd3, 0x20, 0x26, 0x46, 0x0b, 0xae,
    0xab, 0x38, 0xc9, 0x8f, 0x7c, 0x81, 0xa6, 0xf1, 0x1f, 0x3b, 0x95, 0xd1, 0x38, 0x80, 0x5b, 0xcf,
    0x15, 0x3c, 0x65, 0xac, 0xb6, 0x44, 0x2e, 0x8e, 0xa5, 0xbb, 0xc5, 0x97, 0x88, 0x9d, 0x1c, 0x7a,
    0x97, 0x7f, 0xe9, 0x10, 0x9f, 0xac, 0x47, 0xb6, 0xb3, 0x69, 0xdd, 0xf7, 0x27, 0x25, 0x25, 0x4d,
    0x09, 0xc7, 0xef, 0x7b, 0x75, 0x99, 0x0d, 0x96, 0xcb, 0xd5, 0x81, 0x02, 0xde, 0x8b, 0x12, 0x49,
    0xd9, 0xc0, 0xbc, 0x7f, 0x72, 0x1b, 0xfb, 0x08, 0xa1, 0x67, 0x6e, 0xfb, 0xa6, 0x54, 0x15, 0x03,
    0xe7, 0x54, 0x38, 0x59, 0x20, 0x56, 0xb2, 0x36, 0x89, 0x58, 0x06, 0xeb, 0xe7, 0x9e, 0x5a, 0x31,
    0x20, 0x1f, 0x86, 0x11, 0x2f, 0xf5, 0xaf, 0xae, 0x49, 0x29, 0x08, 0xbe, 0xb7, 0x69, 0xdd, 0xfe,
    0xdf, 0x8d, 0xa3, 0x81, 0x09, 0xe1, 0x61, 0xa1, 0xf0, 0xb0, 0x39, 0x50, 0x31, 0x25, 0x30, 0x23,
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x15, 0x31, 0x16, 0x04, 0x14, 0x87,
    0x20, 0x05, 0xe1, 0xfa, 0x62, 0xff, 0x46, 0x7e, 0x98, 0x51, 0x9f, 0xb7, 0x0a, 0x17, 0x5d, 0xc2,
    0x1a, 0xa8, 0x24, 0x30, 0x31, 0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a,
    0x05, 0x00, 0x04, 0x14, 0x61, 0x5b, 0xfe, 0x8c, 0x26, 0xb5, 0x40, 0x51, 0xa0, 0x1e, 0x05, 0x4a,
    0x6b, 0x1c, 0x4d, 0xda, 0x0b, 0xed, 0x34, 0x38, 0x04, 0x08, 0x34, 0xeb, 0x17, 0x61, 0xef, 0x9d,
    0x7a, 0xb6, 0x02, 0x02, 0x08, 0x00};
const size_t fixture_legacy_pfx_len = sizeof(fixture_legacy_pfx);
const char fixture_legacy_pfx_passphrase[] = "legacy-pass";

const char fixture_dh512_pem[] =
    "-----BEGIN X9.42 DH PARAMETERS-----\n"
    "MIGkAkEA1KAtuBqMCBtZQY82e496TuTryINB52J0SMim/SfK8TUQewsIOjmwABED\n"
    "FtEyJj6EA4p7/uyvVcqI5sbFHBqe9wJAC45CoG78RXqJqdLf6+sJcwJ5RAbWSQnT\n"
    "XK3buBHIdKn8VA/TAUPHFFgEjNlfWymJUEFv9Fu/kLuEDRS0WZr60wIdAOZRdBnV\n"
    "wzH5cVoCqcikyJCrwE3XfXd14+jBYac=\n"
    "-----END X9.42 DH PARAMETERS-----\n";
const char fixture_dhx1024_pem[] =
    "-----BEGIN X9.42 DH PARAMETERS-----\n"
    "MIIBJgKBgQCI5NVs7mOQIwNMCesvdYzPt7B8iyFumuAUSYLsSDslJI6NiPbZQ2Ty\n"
    "6F07RZ2hlwsgH4iPQGfyJxIoDcKZHCm8xYb6ne5R9DeASVNGOz1sjO3TKBb060sh\n"
    "XX6h8DTUItcbHyTF+mc0DdKcCwS0eL8F9rlq8CvCgehhKMJZoovh/QKBgAdOsUSK\n"
    "SXM6h+BL7IClwv5o7J3Ily5PvRjC7GqCqF1nLKFS7W4tBL7lZC7GI+tBWi3drKcS\n"
    "abKiRtYtJkBkrGksN6jC9d6D9pOz3ZbavwfLE6YBdR0uz9/gDkUxH6ItfOuFsyBg\n"
    "IohCIPL5Df6oWUceMqMcIA27dPecVRBvE6DCAh0A46fk7XlwFas4Vn6gSuPFrHUE\n"
    "9mg8z6ZhmwJb8w==\n"
    "-----END X9.42 DH PARAMETERS-----\n";
const char fixture_dh1024_pem[] =
    "-----BEGIN DH PARAMETERS-----\n"
    "MIGHAoGBAOCduIKl+tZhJvjooypLIvXJcP8kZTgeS4vINN1f1/YDu8piTCcpDjHC\n"
    "dwSxkG9YyptR5RIpUBPo1pw6ZozG7o+sJ1aveTbbPqnmnfeErq8ufdNWeH8aDndo\n"
    "SwQf2XLNu/4EtVBT49Vu3YbEOPgu23xdEQ3U437XVherm25VX0yvAgEC\n"
    "-----END DH PARAMETERS-----\n";
const char fixture_dh2048_composite_pem[] =
    "-----BEGIN DH PARAMETERS-----\n"
    "MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz\n"
    "+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a\n"
    "87VXE05/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7\n"
    "YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi\n"
    "7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD\n"
    "ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==\n"
    "-----END DH PARAMETERS-----\n";
const char fixture_dh2048_pem[] =
    "-----BEGIN DH PARAMETERS-----\n"
    "MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz\n"
    "+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a\n"
    "87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7\n"
    "YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi\n"
    "7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD\n"
    "ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==\n"
    "-----END DH PARAMETERS-----\n";
