/* Unit tests for common/tlsconf: every check of tlsconf.h with its
 * success and failure side, and handshakes over BIO pairs proving that
 * tlsconf_ctx_build applies what it was given. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certinfo.h"
#include "fixtures.h"
#include "tlsconf.h"

/* Fixtures made once for the whole run (key generation is the slow part). */
static struct {
  EVP_PKEY *ca_key; /* root CA, P-256 */
  X509 *ca;
  EVP_PKEY *int_key; /* intermediate under ca */
  X509 *inter;
  EVP_PKEY *rsa_key; /* RSA-2048 */
  X509 *rsa_leaf;    /* under ca, with DNS and IP SANs */
  EVP_PKEY *ec_key;  /* P-256 */
  X509 *ec_leaf;     /* under ca */
  X509 *int_leaf;    /* ec_key under inter */
  X509 *expired;     /* ec_key under ca, 2019-01-01 .. 2020-01-01 */
  X509 *future;      /* ec_key under ca, from 2100 */
  EVP_PKEY *ec384_key;
  X509 *ec384_leaf;
  EVP_PKEY *ed_key; /* Ed25519 */
  X509 *ed_leaf;
  EVP_PKEY *client_ca_key;
  X509 *client_ca;
  EVP_PKEY *client_key;
  X509 *client;         /* serial 1001 under client_ca */
  X509 *client_revoked; /* serial 1002 under client_ca, in client_crl */
  X509_CRL *client_crl;
} w;

static int world_setup(void **state) {
  time_t now = time(NULL);
  w.ca_key = fixture_key_ec("P-256");
  w.ca = fixture_cert(w.ca_key, &(struct fixture_cert_opts){.cn = "Test Root CA", .is_ca = 1});
  w.int_key = fixture_key_ec("P-256");
  w.inter = fixture_cert(w.int_key, &(struct fixture_cert_opts){.cn = "Test Intermediate CA",
                                                                .is_ca = 1,
                                                                .serial = 2,
                                                                .issuer = w.ca,
                                                                .issuer_key = w.ca_key});
  w.rsa_key = fixture_key_rsa(2048);
  w.rsa_leaf = fixture_cert(
      w.rsa_key, &(struct fixture_cert_opts){.cn = "www.example.com",
                                             .san = "DNS:www.example.com,DNS:example.com,IP:"
                                                    "127.0.0.1,IP:::1",
                                             .serial = 0x1A2B3C,
                                             .issuer = w.ca,
                                             .issuer_key = w.ca_key});
  w.ec_key = fixture_key_ec("P-256");
  w.ec_leaf = fixture_cert(w.ec_key, &(struct fixture_cert_opts){.cn = "ec.example.com",
                                                                 .san = "DNS:ec.example.com",
                                                                 .serial = 10,
                                                                 .issuer = w.ca,
                                                                 .issuer_key = w.ca_key});
  w.int_leaf = fixture_cert(w.ec_key, &(struct fixture_cert_opts){.cn = "int.example.com",
                                                                  .serial = 11,
                                                                  .issuer = w.inter,
                                                                  .issuer_key = w.int_key});
  w.expired =
      fixture_cert(w.ec_key, &(struct fixture_cert_opts){.cn = "expired.example.com",
                                                         .not_before = fixture_time(2019, 1, 1),
                                                         .not_after = fixture_time(2020, 1, 1),
                                                         .serial = 12,
                                                         .issuer = w.ca,
                                                         .issuer_key = w.ca_key});
  w.future =
      fixture_cert(w.ec_key, &(struct fixture_cert_opts){.cn = "future.example.com",
                                                         .not_before = fixture_time(2100, 1, 1),
                                                         .not_after = fixture_time(2101, 1, 1),
                                                         .serial = 13,
                                                         .issuer = w.ca,
                                                         .issuer_key = w.ca_key});
  w.ec384_key = fixture_key_ec("P-384");
  w.ec384_leaf = fixture_cert(w.ec384_key, &(struct fixture_cert_opts){.cn = "ec384.example.com",
                                                                       .serial = 14,
                                                                       .issuer = w.ca,
                                                                       .issuer_key = w.ca_key});
  w.ed_key = fixture_key_ed25519();
  w.ed_leaf = fixture_cert(
      w.ed_key, &(struct fixture_cert_opts){
                    .cn = "ed.example.com", .serial = 15, .issuer = w.ca, .issuer_key = w.ca_key});
  w.client_ca_key = fixture_key_ec("P-256");
  w.client_ca =
      fixture_cert(w.client_ca_key, &(struct fixture_cert_opts){.cn = "Client CA", .is_ca = 1});
  w.client_key = fixture_key_ec("P-256");
  w.client = fixture_cert(w.client_key, &(struct fixture_cert_opts){.cn = "client",
                                                                    .serial = 1001,
                                                                    .issuer = w.client_ca,
                                                                    .issuer_key = w.client_ca_key});
  w.client_revoked =
      fixture_cert(w.client_key, &(struct fixture_cert_opts){.cn = "revoked client",
                                                             .serial = 1002,
                                                             .issuer = w.client_ca,
                                                             .issuer_key = w.client_ca_key});
  long revoked[] = {1002};
  w.client_crl = fixture_crl(w.client_ca, w.client_ca_key, revoked, 1, now - 60, now + 86400, 42);
  return 0;
}

static int world_teardown(void **state) {
  EVP_PKEY *keys[] = {w.ca_key,    w.int_key, w.rsa_key,       w.ec_key,
                      w.ec384_key, w.ed_key,  w.client_ca_key, w.client_key};
  X509 *certs[] = {w.ca,     w.inter,      w.rsa_leaf, w.ec_leaf,   w.int_leaf, w.expired,
                   w.future, w.ec384_leaf, w.ed_leaf,  w.client_ca, w.client,   w.client_revoked};
  for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
    EVP_PKEY_free(keys[i]);
  for (size_t i = 0; i < sizeof(certs) / sizeof(certs[0]); i++)
    X509_free(certs[i]);
  X509_CRL_free(w.client_crl);
  return 0;
}

/* Assertions ------------------------------------------------------------- */

static void expect_ok_at(int rc, const struct tp_err *err, const char *file, int line) {
  if (rc != 0)
    fail_msg("%s:%d: want success, got rc=%d status=%d \"%s\"", file, line, rc, err->status,
             err->msg);
}

static void expect_err_at(int rc, const struct tp_err *err, const char *want, int exact,
                          const char *file, int line) {
  int match = exact ? strcmp(err->msg, want) == 0 : strstr(err->msg, want) != NULL;
  if (rc != -1 || err->status != GRPC_STATUS_INVALID_ARGUMENT || !match)
    fail_msg("%s:%d: want INVALID_ARGUMENT %s \"%s\",\n  got rc=%d status=%d \"%s\"", file, line,
             exact ? "exactly" : "containing", want, rc, err->status, err->msg);
}

#define EXPECT_OK(rc, err) expect_ok_at((rc), (err), __FILE__, __LINE__)
/* The message starts with / contains want. */
#define EXPECT_ERR(rc, err, want) expect_err_at((rc), (err), (want), 0, __FILE__, __LINE__)
#define EXPECT_ERR_EXACT(rc, err, want) expect_err_at((rc), (err), (want), 1, __FILE__, __LINE__)

static int has_prefix(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Message builders ------------------------------------------------------- */

static char *xstrdup(const char *s) {
  char *c = strdup(s);
  assert_non_null(c);
  return c;
}

static void msg_free(void *m) {
  if (m != NULL)
    protobuf_c_message_free_unpacked(m, NULL);
}

/* A Certificate taking ownership of chain, key and pass (each may be NULL). */
static Tlsplane__V1__Certificate *cert_msg(char *chain, char *key, const char *pass) {
  Tlsplane__V1__Certificate *c = malloc(sizeof(*c));
  assert_non_null(c);
  tlsplane__v1__certificate__init(c);
  if (chain)
    c->certificate_chain_pem = chain;
  if (key)
    c->private_key_pem = key;
  if (pass)
    c->passphrase = xstrdup(pass);
  return c;
}

static void set_bytes(ProtobufCBinaryData *b, unsigned char *data, size_t len) {
  free(b->data);
  b->data = data;
  b->len = len;
}

static int prepare(Tlsplane__V1__Certificate *c, const char *existing, char **key_out,
                   struct tp_err *err) {
  memset(err, 0, sizeof(*err));
  return tlsconf_certificate_prepare(c, existing, time(NULL), key_out, err);
}

static EVP_PKEY *key_from_pem(const char *pem) {
  BIO *b = BIO_new_mem_buf(pem, -1);
  EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
  BIO_free(b);
  assert_non_null(k);
  return k;
}

static char *fingerprint(X509 *x) {
  unsigned char md[32];
  unsigned int n = 0;
  assert_true(X509_digest(x, EVP_sha256(), md, &n));
  char *s = calloc(1, 3 * n);
  for (unsigned i = 0; i < n; i++)
    sprintf(s + 3 * i, "%02X%s", md[i], i + 1 < n ? ":" : "");
  return s;
}

static Tlsplane__V1__CipherPolicy *policy_new(void) {
  Tlsplane__V1__CipherPolicy *cp = malloc(sizeof(*cp));
  assert_non_null(cp);
  tlsplane__v1__cipher_policy__init(cp);
  return cp;
}

static void set_str(char **field, const char *v) {
  char *copy = xstrdup(v);
  if (*field != protobuf_c_empty_string)
    free(*field);
  *field = copy;
}

static void strv_push(size_t *n, char ***v, const char *s) {
  *v = realloc(*v, (*n + 1) * sizeof(**v));
  assert_non_null(*v);
  (*v)[(*n)++] = xstrdup(s);
}

static int policy_check(Tlsplane__V1__CipherPolicy *cp, struct tp_err *err) {
  memset(err, 0, sizeof(*err));
  return tlsconf_cipher_policy_prepare(cp, err);
}

/* Certificate: sources and derived fields --------------------------------- */

/* Runs first: nothing may have loaded the legacy provider before. */
static void test_cert_pfx_legacy_loads_legacy_provider(void **state) {
  assert_int_equal(OSSL_PROVIDER_available(NULL, "legacy"), 0);
  Tlsplane__V1__Certificate *c = cert_msg(NULL, NULL, fixture_legacy_pfx_passphrase);
  unsigned char *pfx = malloc(fixture_legacy_pfx_len);
  memcpy(pfx, fixture_legacy_pfx, fixture_legacy_pfx_len);
  set_bytes(&c->pfx, pfx, fixture_legacy_pfx_len);
  char *key = NULL;
  struct tp_err err;
  EXPECT_OK(prepare(c, NULL, &key, &err), &err);
  assert_int_equal(OSSL_PROVIDER_available(NULL, "legacy"), 1);
  assert_int_equal(OSSL_PROVIDER_available(NULL, "default"), 1);
  /* RFC 2253 lists the last RDN first; this file's subject is /CN=.../O=... */
  assert_string_equal(c->subject, "O=tlsplane test,CN=legacy.example.com");
  assert_string_equal(c->key_algorithm, "EC");
  assert_string_equal(c->sha256_fingerprint, "95:D5:A7:19:D1:3D:A0:6B:7B:75:EF:20:99:CA:82:FC:D8:"
                                             "36:D9:1D:A0:0C:B7:70:D8:3E:E3:C0:48:2C:68:AC");
  assert_int_equal(c->pfx.len, 0);
  assert_null(c->pfx.data);
  assert_string_equal(c->passphrase, "");
  assert_true(has_prefix(key, "-----BEGIN PRIVATE KEY-----"));
  free(key);
  msg_free(c);

  /* Wrong passphrase: a clean error, also for the legacy file. */
  c = cert_msg(NULL, NULL, "nope");
  pfx = malloc(fixture_legacy_pfx_len);
  memcpy(pfx, fixture_legacy_pfx, fixture_legacy_pfx_len);
  set_bytes(&c->pfx, pfx, fixture_legacy_pfx_len);
  EXPECT_ERR_EXACT(prepare(c, NULL, &key, &err), &err,
                   "passphrase: wrong passphrase for the PKCS#12 file");
  assert_null(key);
  msg_free(c);
}

static void test_cert_pem_rsa_derived_fields(void **state) {
  Tlsplane__V1__Certificate *c =
      cert_msg(fixture_pem_chain(w.rsa_leaf, w.ca, NULL), fixture_pem_key(w.rsa_key), NULL);
  c->allow_invalid_time = 0;
  char *key = NULL;
  struct tp_err err;
  EXPECT_OK(prepare(c, NULL, &key, &err), &err);
  assert_string_equal(c->key_algorithm, "RSA");
  assert_int_equal(c->key_bits, 2048);
  assert_string_equal(c->key_curve, "");
  assert_string_equal(c->subject, "CN=www.example.com,O=tlsplane test");
  assert_string_equal(c->issuer, "CN=Test Root CA,O=tlsplane test");
  assert_int_equal(c->n_dns_names, 2);
  assert_string_equal(c->dns_names[0], "www.example.com");
  assert_string_equal(c->dns_names[1], "example.com");
  assert_int_equal(c->n_ip_addresses, 2);
  assert_string_equal(c->ip_addresses[0], "127.0.0.1");
  assert_string_equal(c->ip_addresses[1], "::1");
  assert_string_equal(c->serial_number, "1A2B3C");
  assert_non_null(c->not_before);
  assert_non_null(c->not_after);
  assert_true(c->not_after->seconds - c->not_before->seconds > 300 * 86400);
  char *fp = fingerprint(w.rsa_leaf);
  assert_string_equal(c->sha256_fingerprint, fp);
  free(fp);
  assert_int_equal(c->chain_length, 2);
  assert_true(c->has_private_key);
  assert_null(c->ocsp_next_update);
  assert_string_equal(c->ocsp_cert_status, "");
  /* Input-only fields are gone; the chain is normalised PEM, leaf first. */
  assert_string_equal(c->private_key_pem, "");
  char *want_chain = fixture_pem_chain(w.rsa_leaf, w.ca, NULL);
  assert_string_equal(c->certificate_chain_pem, want_chain);
  free(want_chain);
  /* The key comes back as unencrypted PKCS#8 and is the same key. */
  assert_true(has_prefix(key, "-----BEGIN PRIVATE KEY-----"));
  EVP_PKEY *k = key_from_pem(key);
  assert_int_equal(EVP_PKEY_eq(k, w.rsa_key), 1);
  EVP_PKEY_free(k);

  /* Prepared again (an update keeping the stored key): derived fields
   * are replaced, not leaked. */
  char *key2 = NULL;
  EXPECT_OK(prepare(c, key, &key2, &err), &err);
  assert_true(c->has_private_key);
  assert_string_equal(key2, key);
  assert_int_equal(c->n_dns_names, 2);
  free(key2);
  free(key);
  msg_free(c);
}

static void test_cert_key_types(void **state) {
  struct {
    EVP_PKEY *key;
    X509 *leaf;
    const char *alg;
    int bits;
    const char *curve;
  } cases[] = {
      {w.ec_key, w.ec_leaf, "EC", 256, "prime256v1"},
      {w.ec384_key, w.ec384_leaf, "EC", 384, "secp384r1"},
      {w.ed_key, w.ed_leaf, "ED25519", 256, ""},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    Tlsplane__V1__Certificate *c =
        cert_msg(fixture_pem_chain(cases[i].leaf, w.ca, NULL), fixture_pem_key(cases[i].key), NULL);
    char *key = NULL;
    struct tp_err err;
    EXPECT_OK(prepare(c, NULL, &key, &err), &err);
    assert_string_equal(c->key_algorithm, cases[i].alg);
    assert_int_equal(c->key_bits, cases[i].bits);
    assert_string_equal(c->key_curve, cases[i].curve);
    free(key);
    msg_free(c);
  }
}

static void test_cert_traditional_key(void **state) {
  /* PKCS#1 "RSA PRIVATE KEY" and SEC1 "EC PRIVATE KEY". */
  EVP_PKEY *keys[] = {w.rsa_key, w.ec_key};
  X509 *leafs[] = {w.rsa_leaf, w.ec_leaf};
  for (int i = 0; i < 2; i++) {
    char *pem = fixture_pem_key_traditional(keys[i]);
    assert_null(strstr(pem, "BEGIN PRIVATE KEY"));
    Tlsplane__V1__Certificate *c = cert_msg(fixture_pem_chain(leafs[i], w.ca, NULL), pem, NULL);
    char *key = NULL;
    struct tp_err err;
    EXPECT_OK(prepare(c, NULL, &key, &err), &err);
    assert_true(has_prefix(key, "-----BEGIN PRIVATE KEY-----"));
    free(key);
    msg_free(c);
  }
}

static void check_encrypted(char *(*encode)(EVP_PKEY *, const char *)) {
  struct tp_err err;
  char *key = NULL;
  /* Right passphrase. */
  Tlsplane__V1__Certificate *c =
      cert_msg(fixture_pem_chain(w.ec_leaf, w.ca, NULL), encode(w.ec_key, "s3cret"), "s3cret");
  EXPECT_OK(prepare(c, NULL, &key, &err), &err);
  assert_string_equal(c->passphrase, "");
  assert_string_equal(c->private_key_pem, "");
  EVP_PKEY *k = key_from_pem(key);
  assert_int_equal(EVP_PKEY_eq(k, w.ec_key), 1);
  EVP_PKEY_free(k);
  free(key);
  key = NULL;
  msg_free(c);
  /* Wrong passphrase. */
  c = cert_msg(fixture_pem_chain(w.ec_leaf, w.ca, NULL), encode(w.ec_key, "s3cret"), "wrong");
  EXPECT_ERR_EXACT(prepare(c, NULL, &key, &err), &err,
                   "passphrase: wrong passphrase for private_key_pem");
  assert_null(key);
  msg_free(c);
  /* No passphrase: an error, and never a prompt on the terminal. */
  c = cert_msg(fixture_pem_chain(w.ec_leaf, w.ca, NULL), encode(w.ec_key, "s3cret"), NULL);
  EXPECT_ERR_EXACT(prepare(c, NULL, &key, &err), &err,
                   "passphrase: the private key is encrypted; a passphrase is required");
  msg_free(c);
}

static void test_cert_encrypted_pkcs8(void **state) {
  check_encrypted(fixture_pem_key_encrypted);
}

static void test_cert_encrypted_legacy_pem(void **state) {
  char *pem = fixture_pem_key_legacy_encrypted(w.rsa_key, "x");
  assert_non_null(strstr(pem, "Proc-Type: 4,ENCRYPTED"));
  free(pem);
  check_encrypted(fixture_pem_key_legacy_encrypted);
}

/* A Certificate given as a PKCS#12 file (RSA leaf and CA) made with
 * file_pass, sent with given_pass. */
static Tlsplane__V1__Certificate *pfx_cert(const char *file_pass, const char *given_pass) {
  Tlsplane__V1__Certificate *c = cert_msg(NULL, NULL, given_pass);
  size_t len;
  unsigned char *der = fixture_pkcs12(w.rsa_key, w.rsa_leaf, w.ca, file_pass, &len);
  set_bytes(&c->pfx, der, len);
  return c;
}

static void test_cert_pfx(void **state) {
  struct tp_err err;
  char *key = NULL;
  /* Key, leaf and CA: the chain comes out leaf first. */
  Tlsplane__V1__Certificate *c = pfx_cert("pfx-pass", "pfx-pass");
  EXPECT_OK(prepare(c, NULL, &key, &err), &err);
  assert_int_equal(c->chain_length, 2);
  assert_string_equal(c->key_algorithm, "RSA");
  char *want_chain = fixture_pem_chain(w.rsa_leaf, w.ca, NULL);
  assert_string_equal(c->certificate_chain_pem, want_chain);
  free(want_chain);
  assert_int_equal(c->pfx.len, 0);
  free(key);
  key = NULL;
  msg_free(c);

  c = pfx_cert("pfx-pass", "wrong");
  EXPECT_ERR_EXACT(prepare(c, NULL, &key, &err), &err,
                   "passphrase: wrong passphrase for the PKCS#12 file");
  msg_free(c);

  c = pfx_cert("pfx-pass", NULL);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err, "passphrase: the PKCS#12 file is protected");
  msg_free(c);

  /* pfx with PEM fields: mutually exclusive. */
  c = pfx_cert("pfx-pass", "pfx-pass");
  set_str(&c->certificate_chain_pem, "-----BEGIN CERTIFICATE-----\n");
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err, "pfx: give either pfx or");
  msg_free(c);

  /* Not a PKCS#12 file. */
  c = cert_msg(NULL, NULL, "x");
  set_bytes(&c->pfx, (unsigned char *)xstrdup("garbage"), 7);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err, "pfx: not a PKCS#12 file");
  msg_free(c);
}

/* The file says how much work reading it takes: a MAC, certificates or a
 * key derived with more iterations than a server thread may spend are
 * refused before any is spent (2^31 would be a quarter of an hour). */
static void test_cert_pfx_iterations_bounded(void **state) {
  struct tp_err err;
  char *key = NULL;
  struct {
    int iter, mac_iter, ok;
  } cases[] = {
      {1000001, 1, 0},     /* the key and the certificates */
      {1, 1000001, 0},     /* the MAC */
      {100000, 100000, 1}, /* 300,000 in all: far above the usual, still read */
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    Tlsplane__V1__Certificate *c = cert_msg(NULL, NULL, "pfx-pass");
    size_t len;
    unsigned char *der = fixture_pkcs12_iter(w.rsa_key, w.rsa_leaf, w.ca, "pfx-pass", cases[i].iter,
                                             cases[i].mac_iter, &len);
    set_bytes(&c->pfx, der, len);
    if (cases[i].ok) {
      EXPECT_OK(prepare(c, NULL, &key, &err), &err);
      free(key);
      key = NULL;
    } else {
      EXPECT_ERR_EXACT(prepare(c, NULL, &key, &err), &err,
                       "pfx: the file asks for more than 1000000 key-derivation iterations in "
                       "all (MAC, encrypted parts and keys); files of openssl, Windows, Java and "
                       "macOS use a few thousand");
      assert_null(key);
    }
    msg_free(c);
  }
}

static void test_cert_key_mismatch(void **state) {
  struct tp_err err;
  char *key = NULL;
  Tlsplane__V1__Certificate *c =
      cert_msg(fixture_pem_chain(w.rsa_leaf, w.ca, NULL), fixture_pem_key(w.ec_key), NULL);
  EXPECT_ERR_EXACT(prepare(c, NULL, &key, &err), &err,
                   "private_key_pem: key does not match the certificate");
  assert_null(key);
  msg_free(c);
}

static void test_cert_chain_order(void **state) {
  struct tp_err err;
  char *key = NULL;
  /* leaf, intermediate, root: in order. */
  Tlsplane__V1__Certificate *c =
      cert_msg(fixture_pem_chain(w.int_leaf, w.inter, w.ca, NULL), fixture_pem_key(w.ec_key), NULL);
  EXPECT_OK(prepare(c, NULL, &key, &err), &err);
  assert_int_equal(c->chain_length, 3);
  assert_string_equal(c->issuer, "CN=Test Intermediate CA,O=tlsplane test");
  free(key);
  key = NULL;
  msg_free(c);
  /* The intermediate left out: the root does not issue the leaf. */
  c = cert_msg(fixture_pem_chain(w.int_leaf, w.ca, NULL), fixture_pem_key(w.ec_key), NULL);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err,
             "certificate_chain_pem: certificate 2 does not issue certificate 1");
  msg_free(c);
  /* Out of order. */
  c = cert_msg(fixture_pem_chain(w.int_leaf, w.ca, w.inter, NULL), fixture_pem_key(w.ec_key), NULL);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err,
             "certificate_chain_pem: certificate 2 does not issue certificate 1");
  msg_free(c);
  c = cert_msg(fixture_pem_chain(w.int_leaf, w.inter, w.ec_leaf, NULL), fixture_pem_key(w.ec_key),
               NULL);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err,
             "certificate_chain_pem: certificate 3 does not issue certificate 2");
  msg_free(c);
}

static void test_cert_validity(void **state) {
  struct tp_err err;
  char *key = NULL;
  Tlsplane__V1__Certificate *c =
      cert_msg(fixture_pem_chain(w.expired, w.ca, NULL), fixture_pem_key(w.ec_key), NULL);
  EXPECT_ERR_EXACT(prepare(c, NULL, &key, &err), &err,
                   "certificate_chain_pem: certificate expired at 2020-01-01T00:00:00Z (set "
                   "allow_invalid_time to accept it)");
  c->allow_invalid_time = 1;
  EXPECT_OK(prepare(c, NULL, &key, &err), &err);
  assert_false(c->allow_invalid_time);
  assert_int_equal(c->not_after->seconds, fixture_time(2020, 1, 1));
  free(key);
  key = NULL;
  msg_free(c);

  c = cert_msg(fixture_pem_chain(w.future, w.ca, NULL), fixture_pem_key(w.ec_key), NULL);
  EXPECT_ERR_EXACT(prepare(c, NULL, &key, &err), &err,
                   "certificate_chain_pem: certificate is not valid before 2100-01-01T00:00:00Z "
                   "(set allow_invalid_time to accept it)");
  c->allow_invalid_time = 1;
  EXPECT_OK(prepare(c, NULL, &key, &err), &err);
  free(key);
  msg_free(c);

  /* An expired issuer in the chain is named by position. */
  EVP_PKEY *old_ca_key = fixture_key_ec("P-256");
  X509 *old_ca =
      fixture_cert(old_ca_key, &(struct fixture_cert_opts){.cn = "Old CA",
                                                           .is_ca = 1,
                                                           .not_before = fixture_time(2010, 1, 1),
                                                           .not_after = fixture_time(2015, 6, 1)});
  X509 *leaf = fixture_cert(w.ec_key, &(struct fixture_cert_opts){.cn = "old.example.com",
                                                                  .issuer = old_ca,
                                                                  .issuer_key = old_ca_key});
  c = cert_msg(fixture_pem_chain(leaf, old_ca, NULL), fixture_pem_key(w.ec_key), NULL);
  key = NULL;
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err,
             "certificate_chain_pem: certificate 2 expired at 2015-06-01T00:00:00Z");
  msg_free(c);
  X509_free(leaf);
  X509_free(old_ca);
  EVP_PKEY_free(old_ca_key);
}

static void test_cert_existing_or_no_key(void **state) {
  struct tp_err err;
  char *key = NULL;
  /* A renewed chain for the stored key. */
  char *stored = fixture_pem_key(w.ec_key);
  Tlsplane__V1__Certificate *c = cert_msg(fixture_pem_chain(w.ec_leaf, w.ca, NULL), NULL, NULL);
  EXPECT_OK(prepare(c, stored, &key, &err), &err);
  assert_true(c->has_private_key);
  assert_string_equal(key, stored);
  free(key);
  key = NULL;
  msg_free(c);
  /* A chain for another key than the stored one. */
  c = cert_msg(fixture_pem_chain(w.rsa_leaf, w.ca, NULL), NULL, NULL);
  EXPECT_ERR(prepare(c, stored, &key, &err), &err,
             "certificate_chain_pem: the certificate does not match the stored private key");
  msg_free(c);
  free(stored);
  /* No key at all: accepted, has_private_key false, no key out. */
  c = cert_msg(fixture_pem_chain(w.ec_leaf, w.ca, NULL), NULL, NULL);
  EXPECT_OK(prepare(c, NULL, &key, &err), &err);
  assert_false(c->has_private_key);
  assert_null(key);
  msg_free(c);
}

static void test_cert_bad_input(void **state) {
  struct tp_err err;
  char *key = NULL;
  Tlsplane__V1__Certificate *c = cert_msg(NULL, NULL, NULL);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err, "certificate_chain_pem: required");
  msg_free(c);
  c = cert_msg(xstrdup("hello"), fixture_pem_key(w.ec_key), NULL);
  EXPECT_ERR_EXACT(prepare(c, NULL, &key, &err), &err,
                   "certificate_chain_pem: no PEM certificate found");
  msg_free(c);
  /* A private key pasted into the (public) chain field. */
  char *chain = fixture_pem_cert(w.ec_leaf);
  char *k = fixture_pem_key(w.ec_key);
  char *both = malloc(strlen(chain) + strlen(k) + 1);
  strcpy(both, chain);
  strcat(both, k);
  free(chain);
  free(k);
  c = cert_msg(both, fixture_pem_key(w.ec_key), NULL);
  EXPECT_ERR_EXACT(prepare(c, NULL, &key, &err), &err,
                   "certificate_chain_pem: PEM block 2 is a PRIVATE KEY, not a CERTIFICATE");
  msg_free(c);
  c = cert_msg(fixture_pem_chain(w.ec_leaf, w.ca, NULL), xstrdup("not a key"), NULL);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err, "private_key_pem: no private key found");
  msg_free(c);
  /* A corrupted certificate body. */
  chain = fixture_pem_cert(w.ec_leaf);
  chain[100] = chain[100] == 'A' ? 'B' : 'A';
  chain[101] = chain[101] == 'A' ? 'B' : 'A';
  c = cert_msg(chain, NULL, NULL);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err, "certificate_chain_pem: ");
  msg_free(c);
  /* A key type TLS servers cannot sign with. */
  EVP_PKEY *x25519 = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
  assert_non_null(x25519);
  X509 *xleaf =
      fixture_cert(x25519, &(struct fixture_cert_opts){
                               .cn = "x25519.example.com", .issuer = w.ca, .issuer_key = w.ca_key});
  c = cert_msg(fixture_pem_chain(xleaf, w.ca, NULL), fixture_pem_key(x25519), NULL);
  EXPECT_ERR_EXACT(prepare(c, NULL, &key, &err), &err,
                   "certificate_chain_pem: unsupported key type X25519 (RSA, EC, ED25519 or "
                   "ED448)");
  msg_free(c);
  X509_free(xleaf);
  EVP_PKEY_free(x25519);
  /* RSA keys below 1024 bits never load into an SSL_CTX. */
  EVP_PKEY *small = fixture_key_rsa(512);
  X509 *leaf =
      fixture_cert(small, &(struct fixture_cert_opts){
                              .cn = "small.example.com", .issuer = w.ca, .issuer_key = w.ca_key});
  c = cert_msg(fixture_pem_chain(leaf, w.ca, NULL), fixture_pem_key(small), NULL);
  EXPECT_ERR_EXACT(prepare(c, NULL, &key, &err), &err,
                   "certificate_chain_pem: 512-bit RSA key is too small (at least 1024)");
  msg_free(c);
  X509_free(leaf);
  EVP_PKEY_free(small);
}

/* Certificate: OCSP -------------------------------------------------------- */

static Tlsplane__V1__Certificate *ocsp_cert(unsigned char *ocsp, size_t len) {
  Tlsplane__V1__Certificate *c =
      cert_msg(fixture_pem_chain(w.ec_leaf, w.ca, NULL), fixture_pem_key(w.ec_key), NULL);
  set_bytes(&c->ocsp_response, ocsp, len);
  return c;
}

static void test_cert_ocsp(void **state) {
  struct tp_err err;
  char *key = NULL;
  time_t now = time(NULL);
  size_t len;
  unsigned char *der = fixture_ocsp(w.ec_leaf, w.ca, w.ca, w.ca_key, V_OCSP_CERTSTATUS_GOOD,
                                    now - 60, now + 3 * 86400, &len);
  Tlsplane__V1__Certificate *c = ocsp_cert(der, len);
  EXPECT_OK(prepare(c, NULL, &key, &err), &err);
  assert_string_equal(c->ocsp_cert_status, "good");
  assert_non_null(c->ocsp_next_update);
  assert_int_equal(c->ocsp_next_update->seconds, now + 3 * 86400);
  /* The response stays (it is what the agents staple). */
  assert_int_equal(c->ocsp_response.len, len);
  free(key);
  key = NULL;
  msg_free(c);

  der = fixture_ocsp(w.ec_leaf, w.ca, w.ca, w.ca_key, V_OCSP_CERTSTATUS_REVOKED, now - 60,
                     now + 86400, &len);
  c = ocsp_cert(der, len);
  EXPECT_OK(prepare(c, NULL, &key, &err), &err);
  assert_string_equal(c->ocsp_cert_status, "revoked");
  free(key);
  key = NULL;
  msg_free(c);

  /* Expired. */
  der = fixture_ocsp(w.ec_leaf, w.ca, w.ca, w.ca_key, V_OCSP_CERTSTATUS_GOOD,
                     fixture_time(2020, 1, 1), fixture_time(2020, 1, 8), &len);
  c = ocsp_cert(der, len);
  EXPECT_ERR_EXACT(prepare(c, NULL, &key, &err), &err,
                   "ocsp_response: expired at 2020-01-08T00:00:00Z");
  msg_free(c);

  /* A response for another certificate. */
  der = fixture_ocsp(w.rsa_leaf, w.ca, w.ca, w.ca_key, V_OCSP_CERTSTATUS_GOOD, now - 60,
                     now + 86400, &len);
  c = ocsp_cert(der, len);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err,
             "ocsp_response: holds no response for this certificate (serial 0A)");
  msg_free(c);

  /* Signed by someone else than the issuer. */
  der = fixture_ocsp(w.ec_leaf, w.ca, w.client_ca, w.client_ca_key, V_OCSP_CERTSTATUS_GOOD,
                     now - 60, now + 86400, &len);
  c = ocsp_cert(der, len);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err, "ocsp_response: signature does not verify");
  msg_free(c);

  /* Signed by a responder the issuer delegated to (OCSPSigning). */
  EVP_PKEY *resp_key = fixture_key_ec("P-256");
  X509 *responder = fixture_cert(resp_key, &(struct fixture_cert_opts){.cn = "OCSP responder",
                                                                       .eku = "OCSPSigning",
                                                                       .serial = 77,
                                                                       .issuer = w.ca,
                                                                       .issuer_key = w.ca_key});
  der = fixture_ocsp(w.ec_leaf, w.ca, responder, resp_key, V_OCSP_CERTSTATUS_GOOD, now - 60,
                     now + 86400, &len);
  c = ocsp_cert(der, len);
  EXPECT_OK(prepare(c, NULL, &key, &err), &err);
  free(key);
  key = NULL;
  msg_free(c);
  /* The same key in a certificate without the delegation. */
  X509 *plain = fixture_cert(
      resp_key, &(struct fixture_cert_opts){
                    .cn = "not a responder", .serial = 78, .issuer = w.ca, .issuer_key = w.ca_key});
  der = fixture_ocsp(w.ec_leaf, w.ca, plain, resp_key, V_OCSP_CERTSTATUS_GOOD, now - 60,
                     now + 86400, &len);
  c = ocsp_cert(der, len);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err, "ocsp_response: signature does not verify");
  msg_free(c);
  X509_free(plain);
  X509_free(responder);
  EVP_PKEY_free(resp_key);

  /* Produced in the future (beyond 5 minutes of clock skew). */
  der = fixture_ocsp(w.ec_leaf, w.ca, w.ca, w.ca_key, V_OCSP_CERTSTATUS_GOOD,
                     fixture_time(2100, 1, 1), fixture_time(2100, 1, 8), &len);
  c = ocsp_cert(der, len);
  EXPECT_ERR_EXACT(prepare(c, NULL, &key, &err), &err,
                   "ocsp_response: not valid before 2100-01-01T00:00:00Z");
  msg_free(c);

  /* Unsuccessful response status. */
  der = fixture_ocsp_status(OCSP_RESPONSE_STATUS_TRYLATER, &len);
  c = ocsp_cert(der, len);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err,
             "ocsp_response: response status is trylater (3), not successful");
  msg_free(c);

  /* Garbage. */
  c = ocsp_cert((unsigned char *)xstrdup("junk"), 4);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err, "ocsp_response: not a DER OCSPResponse");
  msg_free(c);

  /* No issuer in the chain to check the response against. */
  der = fixture_ocsp(w.ec_leaf, w.ca, w.ca, w.ca_key, V_OCSP_CERTSTATUS_GOOD, now - 60, now + 86400,
                     &len);
  c = cert_msg(fixture_pem_cert(w.ec_leaf), fixture_pem_key(w.ec_key), NULL);
  set_bytes(&c->ocsp_response, der, len);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err,
             "ocsp_response: checking it needs the leaf's issuer: give it in "
             "issuer_certificate_pem");

  /* The issuer given apart: checked with it, and kept apart (the chain
   * stays the leaf alone), as clean PEM. */
  char *issuer_pem = fixture_pem_cert(w.ca);
  size_t n = strlen(issuer_pem);
  c->issuer_certificate_pem = malloc(n + 20);
  snprintf(c->issuer_certificate_pem, n + 20, "\n\n%s\n", issuer_pem);
  EXPECT_OK(prepare(c, NULL, &key, &err), &err);
  assert_string_equal(c->ocsp_cert_status, "good");
  assert_int_equal(c->chain_length, 1);
  assert_string_equal(c->issuer_certificate_pem, issuer_pem);
  free(key);
  key = NULL;
  /* Prepared again (an update, the key kept apart): the same. */
  EXPECT_OK(prepare(c, NULL, &key, &err), &err);
  assert_string_equal(c->issuer_certificate_pem, issuer_pem);
  /* A certificate that did not issue the leaf, or more than one. */
  free(c->issuer_certificate_pem);
  c->issuer_certificate_pem = fixture_pem_cert(w.client_ca);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err,
             "issuer_certificate_pem: did not issue the leaf certificate");
  free(c->issuer_certificate_pem);
  c->issuer_certificate_pem = fixture_pem_chain(w.ca, w.client_ca, NULL);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err, "issuer_certificate_pem: holds 2 certificates");
  free(c->issuer_certificate_pem);
  c->issuer_certificate_pem = fixture_pem_key(w.ec_key);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err,
             "issuer_certificate_pem: PEM block 1 is a PRIVATE KEY");
  /* Checked even without a response. */
  free(c->ocsp_response.data);
  c->ocsp_response.data = NULL;
  c->ocsp_response.len = 0;
  free(c->issuer_certificate_pem);
  c->issuer_certificate_pem = fixture_pem_cert(w.client_ca);
  EXPECT_ERR(prepare(c, NULL, &key, &err), &err,
             "issuer_certificate_pem: did not issue the leaf certificate");
  free(issuer_pem);
  msg_free(c);
}

/* TrustBundle -------------------------------------------------------------- */

static Tlsplane__V1__TrustBundle *bundle_new(char *pem) {
  Tlsplane__V1__TrustBundle *tb = malloc(sizeof(*tb));
  assert_non_null(tb);
  tlsplane__v1__trust_bundle__init(tb);
  if (pem)
    tb->ca_pem = pem;
  return tb;
}

static void test_trust_bundle(void **state) {
  struct tp_err err = {0};
  Tlsplane__V1__TrustBundle *tb = bundle_new(fixture_pem_chain(w.ca, w.client_ca, w.ec_leaf, NULL));
  EXPECT_OK(tlsconf_trust_bundle_prepare(tb, time(NULL), &err), &err);
  assert_int_equal(tb->n_certificates, 3);
  assert_string_equal(tb->certificates[0]->subject, "CN=Test Root CA,O=tlsplane test");
  assert_string_equal(tb->certificates[0]->issuer, "CN=Test Root CA,O=tlsplane test");
  assert_true(tb->certificates[0]->is_ca);
  assert_string_equal(tb->certificates[1]->subject, "CN=Client CA,O=tlsplane test");
  assert_false(tb->certificates[2]->is_ca);
  char *fp = fingerprint(w.client_ca);
  assert_string_equal(tb->certificates[1]->sha256_fingerprint, fp);
  free(fp);
  assert_non_null(tb->certificates[2]->not_after);
  /* Prepared again: the derived list is replaced. */
  EXPECT_OK(tlsconf_trust_bundle_prepare(tb, time(NULL), &err), &err);
  assert_int_equal(tb->n_certificates, 3);
  msg_free(tb);

  EVP_PKEY *k = fixture_key_ec("P-256");
  X509 *old = fixture_cert(k, &(struct fixture_cert_opts){.cn = "Old CA",
                                                          .is_ca = 1,
                                                          .not_before = fixture_time(2010, 1, 1),
                                                          .not_after = fixture_time(2020, 1, 1)});
  tb = bundle_new(fixture_pem_chain(w.ca, old, NULL));
  EXPECT_ERR_EXACT(tlsconf_trust_bundle_prepare(tb, time(NULL), &err), &err,
                   "ca_pem: certificate 2 (CN=Old CA,O=tlsplane test) expired at "
                   "2020-01-01T00:00:00Z (set allow_invalid_time to accept it)");
  tb->allow_invalid_time = 1;
  EXPECT_OK(tlsconf_trust_bundle_prepare(tb, time(NULL), &err), &err);
  assert_false(tb->allow_invalid_time);
  msg_free(tb);
  X509_free(old);
  EVP_PKEY_free(k);

  tb = bundle_new(NULL);
  EXPECT_ERR_EXACT(tlsconf_trust_bundle_prepare(tb, time(NULL), &err), &err, "ca_pem: required");
  msg_free(tb);
  tb = bundle_new(fixture_pem_key(w.ec_key));
  EXPECT_ERR(tlsconf_trust_bundle_prepare(tb, time(NULL), &err), &err,
             "ca_pem: PEM block 1 is a PRIVATE KEY, not a CERTIFICATE");
  msg_free(tb);
}

/* RevocationList ----------------------------------------------------------- */

static Tlsplane__V1__RevocationList *crl_msg(void) {
  Tlsplane__V1__RevocationList *rl = malloc(sizeof(*rl));
  assert_non_null(rl);
  tlsplane__v1__revocation_list__init(rl);
  return rl;
}

static void test_revocation_list(void **state) {
  struct tp_err err = {0};
  time_t now = time(NULL);
  long revoked[] = {7, 8, 9};
  X509_CRL *crl = fixture_crl(w.ca, w.ca_key, revoked, 3, now - 60, now + 86400, 0x2A);
  char *pem = fixture_pem_crl(crl);

  size_t len;
  unsigned char *der;
  Tlsplane__V1__RevocationList *rl = crl_msg();
  rl->crl_pem = xstrdup(pem);
  EXPECT_OK(tlsconf_revocation_list_prepare(rl, &err), &err);
  assert_string_equal(rl->issuer, "CN=Test Root CA,O=tlsplane test");
  assert_int_equal(rl->this_update->seconds, now - 60);
  assert_int_equal(rl->next_update->seconds, now + 86400);
  assert_int_equal(rl->revoked_count, 3);
  assert_string_equal(rl->crl_number, "2A");
  assert_string_equal(rl->crl_pem, pem);
  msg_free(rl);

  /* DER in, PEM out. */
  rl = crl_msg();
  der = fixture_der_crl(crl, &len);
  set_bytes(&rl->crl_der, der, len);
  EXPECT_OK(tlsconf_revocation_list_prepare(rl, &err), &err);
  assert_string_equal(rl->crl_pem, pem);
  assert_int_equal(rl->crl_der.len, 0);
  assert_int_equal(rl->revoked_count, 3);
  msg_free(rl);

  rl = crl_msg();
  EXPECT_ERR(tlsconf_revocation_list_prepare(rl, &err), &err, "crl_pem: required");
  rl->crl_pem = xstrdup(pem);
  der = fixture_der_crl(crl, &len);
  set_bytes(&rl->crl_der, der, len);
  EXPECT_ERR(tlsconf_revocation_list_prepare(rl, &err), &err,
             "crl_der: give either crl_pem or crl_der");
  msg_free(rl);

  rl = crl_msg();
  set_bytes(&rl->crl_der, (unsigned char *)xstrdup("junk"), 4);
  EXPECT_ERR(tlsconf_revocation_list_prepare(rl, &err), &err, "crl_der: not a DER X509 CRL");
  msg_free(rl);

  rl = crl_msg();
  rl->crl_pem = malloc(2 * strlen(pem) + 1);
  strcpy(rl->crl_pem, pem);
  strcat(rl->crl_pem, pem);
  EXPECT_ERR(tlsconf_revocation_list_prepare(rl, &err), &err,
             "crl_pem: PEM block 2 is a second CRL");
  msg_free(rl);

  /* No cRLNumber: crl_number empty; no revoked entries: 0. */
  X509_CRL *bare = fixture_crl(w.ca, w.ca_key, NULL, 0, now - 60, now + 86400, 0);
  rl = crl_msg();
  rl->crl_pem = fixture_pem_crl(bare);
  EXPECT_OK(tlsconf_revocation_list_prepare(rl, &err), &err);
  assert_string_equal(rl->crl_number, "");
  assert_int_equal(rl->revoked_count, 0);
  msg_free(rl);
  /* A delta CRL. */
  ASN1_INTEGER *base = ASN1_INTEGER_new();
  assert_true(ASN1_INTEGER_set(base, 1));
  assert_true(X509_CRL_add1_ext_i2d(bare, NID_delta_crl, base, 1, 0));
  assert_true(X509_CRL_sign(bare, w.ca_key, EVP_sha256()) > 0);
  ASN1_INTEGER_free(base);
  rl = crl_msg();
  rl->crl_pem = fixture_pem_crl(bare);
  EXPECT_ERR_EXACT(tlsconf_revocation_list_prepare(rl, &err), &err,
                   "crl_pem: delta CRLs are not supported");
  msg_free(rl);
  X509_CRL_free(bare);

  rl = crl_msg();
  rl->crl_pem = fixture_pem_cert(w.ca);
  EXPECT_ERR(tlsconf_revocation_list_prepare(rl, &err), &err,
             "crl_pem: PEM block 1 is not an X509 CRL");
  msg_free(rl);
  free(pem);
  X509_CRL_free(crl);
}

/* CipherPolicy ------------------------------------------------------------- */

static void test_policy_default(void **state) {
  /* The seed's list survives verbatim as cipherPolicies/node-2015-default. */
  assert_string_equal(tlsconf_node2015_ciphers,
                      "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256:"
                      "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384:"
                      "DHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-SHA256:DHE-RSA-AES128-SHA256:"
                      "ECDHE-RSA-AES256-SHA384:DHE-RSA-AES256-SHA384:ECDHE-RSA-AES256-SHA256:"
                      "DHE-RSA-AES256-SHA256:HIGH:!aNULL:!eNULL:!EXPORT:!DES:!RC4:!MD5:!PSK:!SRP:"
                      "!CAMELLIA");
  struct tp_err err;
  Tlsplane__V1__CipherPolicy *cp = policy_new();
  EXPECT_OK(policy_check(cp, &err), &err);
  assert_int_equal(cp->n_warnings, 0);
  assert_int_equal(cp->dhparam_bits, 0);
  /* An empty policy is the default policy: Mozilla intermediate's suites
   * and nothing else, in its order (forward secret, AEAD only). */
  static const char *const want[] = {
      "TLS_AES_128_GCM_SHA256",       "TLS_AES_256_GCM_SHA384",
      "TLS_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256",
      "ECDHE-RSA-AES128-GCM-SHA256",  "ECDHE-ECDSA-AES256-GCM-SHA384",
      "ECDHE-RSA-AES256-GCM-SHA384",  "ECDHE-ECDSA-CHACHA20-POLY1305",
      "ECDHE-RSA-CHACHA20-POLY1305"};
  Tlsplane__V1__ListCiphersResponse resp = TLSPLANE__V1__LIST_CIPHERS_RESPONSE__INIT;
  EXPECT_OK(tlsconf_ciphers_list(cp, &resp, &err), &err);
  assert_int_equal(resp.n_ciphers, sizeof(want) / sizeof(want[0]));
  for (size_t i = 0; i < resp.n_ciphers; i++)
    assert_string_equal(resp.ciphers[i]->name, want[i]);
  for (size_t i = 0; i < resp.n_ciphers; i++)
    protobuf_c_message_free_unpacked(&resp.ciphers[i]->base, NULL);
  free(resp.ciphers);
  msg_free(cp);
}

static void test_policy_ciphers(void **state) {
  struct tp_err err;
  Tlsplane__V1__CipherPolicy *cp = policy_new();
  set_str(&cp->ciphers, "FOO");
  EXPECT_ERR(policy_check(cp, &err), &err, "ciphers: OpenSSL accepts no cipher in \"FOO\"");
  /* A typo among good entries: accepted (as OpenSSL does), with a warning. */
  set_str(&cp->ciphers, "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES129-GCM-SHA256:!aNULL");
  EXPECT_OK(policy_check(cp, &err), &err);
  assert_int_equal(cp->n_warnings, 1);
  assert_string_equal(cp->warnings[0], "ciphers: \"ECDHE-RSA-AES129-GCM-SHA256\" matches no "
                                       "cipher of this OpenSSL; it is ignored");
  /* Prepared again: warnings are replaced, not appended. */
  set_str(&cp->ciphers, "HIGH:!aNULL");
  EXPECT_OK(policy_check(cp, &err), &err);
  assert_int_equal(cp->n_warnings, 0);

  set_str(&cp->ciphersuites, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256");
  EXPECT_OK(policy_check(cp, &err), &err);
  set_str(&cp->ciphersuites, "TLS_AES_128_GCM_SHA256:TLS_AES_512_GCM_SHA256");
  EXPECT_ERR(policy_check(cp, &err), &err,
             "ciphersuites: unknown TLS 1.3 cipher suite \"TLS_AES_512_GCM_SHA256\"");
  msg_free(cp);

  /* TLS 1.0 only with TLS 1.2-only ciphers: nothing could be negotiated. */
  cp = policy_new();
  cp->min_version = cp->max_version = TLSPLANE__V1__TLS_VERSION__TLS_1_0;
  set_str(&cp->ciphers, "ECDHE-RSA-AES128-GCM-SHA256");
  EXPECT_ERR(policy_check(cp, &err), &err,
             "ciphers: no cipher of \"ECDHE-RSA-AES128-GCM-SHA256\" can be used with TLS 1.0 to "
             "TLS 1.0");
  msg_free(cp);

  /* TLS 1.2 only with DHE ciphers but no DH parameters: valid on its own
   * (a client context needs none; test_build_dhe_only_policy has the
   * server context refusing it). */
  cp = policy_new();
  cp->min_version = cp->max_version = TLSPLANE__V1__TLS_VERSION__TLS_1_2;
  set_str(&cp->ciphers, "DHE-RSA-AES128-GCM-SHA256");
  EXPECT_OK(policy_check(cp, &err), &err);
  assert_int_equal(cp->dhparam_bits, 0);
  set_str(&cp->dhparam_pem, fixture_dh2048_pem);
  EXPECT_OK(policy_check(cp, &err), &err);
  /* An RFC 7919 group instead: at once, and not both. */
  set_str(&cp->dhparam_group, "ffdhe3072");
  EXPECT_ERR(policy_check(cp, &err), &err, "dhparam_group: give either it or dhparam_pem");
  set_str(&cp->dhparam_pem, "");
  EXPECT_OK(policy_check(cp, &err), &err);
  assert_int_equal(cp->dhparam_bits, 3072);
  set_str(&cp->dhparam_group, "ffdhe1024");
  EXPECT_ERR(policy_check(cp, &err), &err, "dhparam_group: \"ffdhe1024\" is not an RFC 7919 group");
  msg_free(cp);
}

static void test_policy_groups(void **state) {
  struct tp_err err;
  Tlsplane__V1__CipherPolicy *cp = policy_new();
  set_str(&cp->ecdh_curve, "P-999");
  EXPECT_ERR_EXACT(policy_check(cp, &err), &err, "ecdh_curve: unknown group \"P-999\"");
  set_str(&cp->ecdh_curve, "X25519:prime256v1:P-999");
  EXPECT_ERR_EXACT(policy_check(cp, &err), &err, "ecdh_curve: unknown group \"P-999\"");
  set_str(&cp->ecdh_curve, "X25519:prime256v1:secp384r1");
  EXPECT_OK(policy_check(cp, &err), &err);
  set_str(&cp->ecdh_curve, "auto");
  EXPECT_OK(policy_check(cp, &err), &err);
  cp->ecdh_disabled = 1;
  EXPECT_OK(policy_check(cp, &err), &err);
  set_str(&cp->ecdh_curve, "prime256v1");
  EXPECT_ERR(policy_check(cp, &err), &err, "ecdh_curve: \"prime256v1\" contradicts ecdh_disabled");
  msg_free(cp);
}

/* ciphers takes TLS 1.3 suite names too, as Node's option does. */
static void test_policy_tls13_names_in_ciphers(void **state) {
  (void)state;
  struct tp_err err;
  Tlsplane__V1__CipherPolicy *cp = policy_new();
  set_str(&cp->ciphers, "TLS_AES_256_GCM_SHA384:ECDHE-RSA-AES128-GCM-SHA256");
  EXPECT_OK(policy_check(cp, &err), &err);
  assert_int_equal(cp->n_warnings, 0);
  /* Only TLS 1.3 suites: nothing is left for TLS 1.2. */
  set_str(&cp->ciphers, "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
  EXPECT_OK(policy_check(cp, &err), &err);
  assert_int_equal(cp->n_warnings, 1);
  assert_string_equal(cp->warnings[0],
                      "ciphers: names only TLS 1.3 suites; TLS 1.2 and below are off");
  cp->max_version = TLSPLANE__V1__TLS_VERSION__TLS_1_2;
  EXPECT_ERR(policy_check(cp, &err), &err,
             "ciphers: names only TLS 1.3 suites (TLS_AES_256_GCM_SHA384:"
             "TLS_CHACHA20_POLY1305_SHA256), but the policy allows at most TLS 1.2");
  cp->max_version = 0;
  set_str(&cp->ciphersuites, "TLS_AES_128_GCM_SHA256");
  EXPECT_ERR(policy_check(cp, &err), &err,
             "ciphers: names TLS 1.3 suites (TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256) "
             "and ciphersuites is set too");
  msg_free(cp);
}

static void test_policy_dhparam(void **state) {
  struct tp_err err;
  Tlsplane__V1__CipherPolicy *cp = policy_new();
  set_str(&cp->dhparam_pem, fixture_dh512_pem);
  EXPECT_ERR_EXACT(policy_check(cp, &err), &err,
                   "dhparam_pem: 512-bit DH parameters; 2048 to 8192 bits are accepted");
  const char *weak[] = {fixture_dh1024_pem, fixture_dhx1024_pem};
  for (int i = 0; i < 2; i++) {
    set_str(&cp->dhparam_pem, weak[i]);
    EXPECT_ERR_EXACT(policy_check(cp, &err), &err,
                     "dhparam_pem: 1024-bit DH parameters; 2048 to 8192 bits are accepted");
  }
  /* The right size, but not a prime: the whole check refuses it. */
  set_str(&cp->dhparam_pem, fixture_dh2048_composite_pem);
  EXPECT_ERR(policy_check(cp, &err), &err,
             "dhparam_pem: invalid DH parameters (the modulus must be a safe prime)");
  set_str(&cp->dhparam_pem, fixture_dh2048_pem);
  EXPECT_OK(policy_check(cp, &err), &err);
  assert_int_equal(cp->dhparam_bits, 2048);
  assert_int_equal(cp->n_warnings, 0);
  set_str(&cp->dhparam_pem, "-----BEGIN DH PARAMETERS-----\nAAAA\n-----END DH PARAMETERS-----\n");
  EXPECT_ERR(policy_check(cp, &err), &err, "dhparam_pem: no PEM DH parameters found");
  /* EC parameters are not DH parameters. */
  set_str(&cp->dhparam_pem, "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n"
                            "-----END EC PARAMETERS-----\n");
  EXPECT_ERR(policy_check(cp, &err), &err, "dhparam_pem: holds EC parameters, not DH");
  msg_free(cp);
}

static void test_policy_versions(void **state) {
  struct tp_err err;
  Tlsplane__V1__CipherPolicy *cp = policy_new();
  const char *ok[] = {"TLS_method",     "SSLv23_method",         "TLS_server_method",
                      "TLSv1_method",   "TLSv1_1_server_method", "TLSv1_2_method",
                      "TLSv1_3_method", "SSLv23_client_method"};
  for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
    set_str(&cp->secure_protocol, ok[i]);
    EXPECT_OK(policy_check(cp, &err), &err);
  }
  set_str(&cp->secure_protocol, "SSLv3_method");
  EXPECT_ERR_EXACT(policy_check(cp, &err), &err,
                   "secure_protocol: SSLv3_method is not supported by this OpenSSL");
  set_str(&cp->secure_protocol, "SSLv2_server_method");
  EXPECT_ERR_EXACT(policy_check(cp, &err), &err,
                   "secure_protocol: SSLv2_server_method is not supported by this OpenSSL");
  set_str(&cp->secure_protocol, "DTLS_method");
  EXPECT_ERR(policy_check(cp, &err), &err,
             "secure_protocol: unknown method \"DTLS_method\" (accepted: TLS_method");
  set_str(&cp->secure_protocol, "TLSv1_2_method");
  cp->min_version = TLSPLANE__V1__TLS_VERSION__TLS_1_2;
  EXPECT_ERR(policy_check(cp, &err), &err,
             "secure_protocol: give either secure_protocol or min_version/max_version");
  set_str(&cp->secure_protocol, "");

  cp->min_version = TLSPLANE__V1__TLS_VERSION__SSL_3_0;
  EXPECT_ERR_EXACT(policy_check(cp, &err), &err,
                   "min_version: SSL_3_0 is not supported by this OpenSSL");
  cp->min_version = TLSPLANE__V1__TLS_VERSION__TLS_1_3;
  cp->max_version = TLSPLANE__V1__TLS_VERSION__TLS_1_2;
  EXPECT_ERR_EXACT(policy_check(cp, &err), &err,
                   "min_version: TLS_1_3 is above max_version TLS_1_2");
  cp->min_version = TLSPLANE__V1__TLS_VERSION__TLS_1_0;
  EXPECT_OK(policy_check(cp, &err), &err);
  cp->max_version = TLSPLANE__V1__TLS_VERSION__SSL_3_0;
  EXPECT_ERR_EXACT(policy_check(cp, &err), &err,
                   "max_version: SSL_3_0 is not supported by this OpenSSL");
  cp->max_version = 9;
  EXPECT_ERR(policy_check(cp, &err), &err, "max_version: unknown TLS version 9");
  msg_free(cp);
}

/* ListCiphers ---------------------------------------------------------------- */

static const Tlsplane__V1__Cipher *find_cipher(const Tlsplane__V1__ListCiphersResponse *r,
                                               const char *name) {
  for (size_t i = 0; i < r->n_ciphers; i++)
    if (strcmp(r->ciphers[i]->name, name) == 0)
      return r->ciphers[i];
  return NULL;
}

static void test_ciphers_list(void **state) {
  struct tp_err err = {0};
  Tlsplane__V1__ListCiphersResponse resp = TLSPLANE__V1__LIST_CIPHERS_RESPONSE__INIT;
  EXPECT_OK(tlsconf_ciphers_list(NULL, &resp, &err), &err);
  assert_true(resp.n_ciphers > 60);
  assert_string_equal(resp.ciphers[0]->version, "TLSv1.3");
  const Tlsplane__V1__Cipher *c = find_cipher(&resp, "ECDHE-RSA-AES128-GCM-SHA256");
  assert_non_null(c);
  assert_string_equal(c->standard_name, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
  assert_string_equal(c->version, "TLSv1.2");
  assert_string_equal(c->key_exchange, "ECDH");
  assert_string_equal(c->authentication, "RSA");
  assert_int_equal(c->bits, 128);
  c = find_cipher(&resp, "TLS_AES_128_CCM_8_SHA256");
  assert_non_null(c);
  assert_string_equal(c->key_exchange, "any");
  assert_string_equal(c->authentication, "any");
  c = find_cipher(&resp, "DHE-RSA-AES256-GCM-SHA384");
  assert_non_null(c);
  assert_string_equal(c->key_exchange, "DH");
  assert_int_equal(c->bits, 256);
  assert_non_null(find_cipher(&resp, "ECDHE-ECDSA-AES128-SHA"));
  assert_non_null(find_cipher(&resp, "NULL-SHA256")); /* every suite, however weak */

  /* A policy: exactly what it enables, in its order, TLS 1.3 first. */
  Tlsplane__V1__CipherPolicy *cp = policy_new();
  set_str(&cp->ciphers, "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256");
  set_str(&cp->ciphersuites, "TLS_CHACHA20_POLY1305_SHA256");
  EXPECT_OK(tlsconf_ciphers_list(cp, &resp, &err), &err);
  assert_int_equal(resp.n_ciphers, 3);
  assert_string_equal(resp.ciphers[0]->name, "TLS_CHACHA20_POLY1305_SHA256");
  assert_string_equal(resp.ciphers[1]->name, "ECDHE-ECDSA-AES256-GCM-SHA384");
  assert_string_equal(resp.ciphers[1]->authentication, "ECDSA");
  assert_string_equal(resp.ciphers[2]->name, "ECDHE-RSA-AES128-GCM-SHA256");
  /* TLS 1.2 only: no TLS 1.3 suite. */
  cp->max_version = TLSPLANE__V1__TLS_VERSION__TLS_1_2;
  EXPECT_OK(tlsconf_ciphers_list(cp, &resp, &err), &err);
  assert_int_equal(resp.n_ciphers, 2);
  msg_free(cp);

  /* ECDH off: no ECDHE cipher left. */
  cp = policy_new();
  cp->ecdh_disabled = 1;
  EXPECT_OK(tlsconf_ciphers_list(cp, &resp, &err), &err);
  assert_true(resp.n_ciphers > 3);
  for (size_t i = 0; i < resp.n_ciphers; i++)
    assert_string_not_equal(resp.ciphers[i]->key_exchange, "ECDH");
  set_str(&cp->ciphers, "FOO");
  EXPECT_ERR(tlsconf_ciphers_list(cp, &resp, &err), &err, "ciphers: OpenSSL accepts no cipher");
  msg_free(cp);
  for (size_t i = 0; i < resp.n_ciphers; i++)
    msg_free(resp.ciphers[i]);
  free(resp.ciphers);
}

/* SNI hostname patterns ---------------------------------------------------- */

static void test_hostname_pattern(void **state) {
  const char *good[] = {"www.example.com",       "*.example.com",  "localhost",
                        "xn--bcher-kva.example", "a-b.c1.example", "*.a.b.example.org"};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    struct tp_err err = {0};
    if (tlsconf_hostname_pattern_check(good[i], &err) != 0)
      fail_msg("\"%s\" refused: %s", good[i], err.msg);
  }
  struct {
    const char *pattern, *why;
  } bad[] = {
      {"", "required"},
      {"Example.com", "must be lower case"},
      {"*.com", "a wildcard must cover"},
      {"a.*.example.com", "a wildcard is only allowed as the whole first label"},
      {"*example.com", "a wildcard is only allowed"},
      {"w*.example.com", "a wildcard is only allowed"},
      {"*", "a wildcard is only allowed"},
      {"foo..example.com", "is not a hostname"},
      {"-a.example.com", "is not a hostname"},
      {"a-.example.com", "is not a hostname"},
      {"example.com.", "is not a hostname"},
      {"a_b.example.com", "is not a hostname"},
      {"1.2.3.4", "is an IP address"},
      {"[::1]", "is not a hostname"},
      {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com", "is not a hostname"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    struct tp_err err = {0};
    EXPECT_ERR(tlsconf_hostname_pattern_check(bad[i].pattern, &err), &err, bad[i].why);
  }
}

/* tlsconf_ctx_build -------------------------------------------------------- */

static Tlsplane__V1__CertificateMaterial *material(const char *name, EVP_PKEY *key, X509 *leaf,
                                                   X509 *issuer) {
  Tlsplane__V1__CertificateMaterial *m = malloc(sizeof(*m));
  assert_non_null(m);
  tlsplane__v1__certificate_material__init(m);
  m->certificate = cert_msg(fixture_pem_chain(leaf, issuer, NULL), NULL, NULL);
  set_str(&m->certificate->name, name);
  m->private_key_pem = fixture_pem_key(key);
  return m;
}

static Tlsplane__V1__ResolvedTlsContext *rctx_new(const char *name) {
  Tlsplane__V1__ResolvedTlsContext *rc = malloc(sizeof(*rc));
  assert_non_null(rc);
  tlsplane__v1__resolved_tls_context__init(rc);
  rc->tls_context = malloc(sizeof(*rc->tls_context));
  assert_non_null(rc->tls_context);
  tlsplane__v1__tls_context__init(rc->tls_context);
  set_str(&rc->tls_context->name, name);
  return rc;
}

static void rctx_add(Tlsplane__V1__ResolvedTlsContext *rc, Tlsplane__V1__CertificateMaterial *m) {
  rc->certificates = realloc(rc->certificates, (rc->n_certificates + 1) * sizeof(m));
  assert_non_null(rc->certificates);
  rc->certificates[rc->n_certificates++] = m;
}

/* A context serving the RSA and the P-256 certificates. */
static Tlsplane__V1__ResolvedTlsContext *rctx_dual(void) {
  Tlsplane__V1__ResolvedTlsContext *rc = rctx_new("tlsContexts/web");
  rctx_add(rc, material("certificates/rsa", w.rsa_key, w.rsa_leaf, w.ca));
  rctx_add(rc, material("certificates/ec", w.ec_key, w.ec_leaf, w.ca));
  return rc;
}

static void rctx_trust_clients(Tlsplane__V1__ResolvedTlsContext *rc, int with_crl) {
  rc->trust_bundle = bundle_new(fixture_pem_cert(w.client_ca));
  set_str(&rc->trust_bundle->name, "trustBundles/clients");
  if (with_crl) {
    Tlsplane__V1__RevocationList *rl = crl_msg();
    set_str(&rl->name, "revocationLists/clients");
    rl->crl_pem = fixture_pem_crl(w.client_crl);
    rc->revocation_lists = malloc(sizeof(rl));
    rc->revocation_lists[0] = rl;
    rc->n_revocation_lists = 1;
  }
}

static SSL_CTX *build_ok(Tlsplane__V1__ResolvedTlsContext *rc) {
  struct tp_err err = {0};
  SSL_CTX *ctx = NULL;
  EXPECT_OK(tlsconf_ctx_build(rc, &ctx, &err), &err);
  assert_non_null(ctx);
  return ctx;
}

static int build(Tlsplane__V1__ResolvedTlsContext *rc, struct tp_err *err) {
  memset(err, 0, sizeof(*err));
  SSL_CTX *ctx = NULL;
  int rc2 = tlsconf_ctx_build(rc, &ctx, err);
  if (rc2 == 0)
    assert_non_null(ctx);
  else
    assert_null(ctx);
  SSL_CTX_free(ctx);
  return rc2;
}

static SSL *client_new(int max_version) {
  SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
  assert_non_null(cctx);
  SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);
  if (max_version)
    assert_true(SSL_CTX_set_max_proto_version(cctx, max_version));
  SSL *c = SSL_new(cctx);
  SSL_CTX_free(cctx); /* c keeps it */
  assert_non_null(c);
  return c;
}

/* Handshakes server_ctx with client; returns 0 on success. Frees nothing. */
static int handshake(SSL_CTX *server_ctx, SSL *client, SSL **server_out) {
  SSL *s = SSL_new(server_ctx);
  assert_non_null(s);
  int r = fixture_handshake(client, s);
  *server_out = s;
  return r;
}

static void test_build_applies_options(void **state) {
  Tlsplane__V1__ResolvedTlsContext *rc = rctx_dual();
  Tlsplane__V1__TlsContext *tc = rc->tls_context;
  /* Defaults. */
  SSL_CTX *ctx = build_ok(rc);
  assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
  assert_int_equal(SSL_CTX_get_max_proto_version(ctx), TLS1_3_VERSION);
  assert_int_equal(SSL_CTX_get_security_level(ctx), 2);
  assert_int_equal(SSL_CTX_get_timeout(ctx), 300);
  assert_int_equal(SSL_CTX_get_options(ctx) & SSL_OP_NO_TICKET, 0);
  assert_int_not_equal(SSL_CTX_get_options(ctx) & SSL_OP_CIPHER_SERVER_PREFERENCE, 0);
  assert_int_equal(SSL_CTX_get_verify_mode(ctx), SSL_VERIFY_NONE);
  assert_int_equal(SSL_CTX_get_session_cache_mode(ctx), SSL_SESS_CACHE_SERVER);
  SSL_CTX_free(ctx);

  /* Everything set. */
  rc->cipher_policy = policy_new();
  rc->cipher_policy->min_version = TLSPLANE__V1__TLS_VERSION__TLS_1_2;
  rc->cipher_policy->max_version = TLSPLANE__V1__TLS_VERSION__TLS_1_2;
  set_str(&rc->cipher_policy->ciphers, "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256");
  rc->cipher_policy->honor_cipher_order = malloc(sizeof(Google__Protobuf__BoolValue));
  google__protobuf__bool_value__init(rc->cipher_policy->honor_cipher_order);
  rc->cipher_policy->honor_cipher_order->value = 0;
  rctx_trust_clients(rc, 1);
  tc->request_cert = tc->reject_unauthorized = 1;
  tc->session_timeout = malloc(sizeof(Google__Protobuf__Duration));
  google__protobuf__duration__init(tc->session_timeout);
  tc->session_timeout->seconds = 3600;
  tc->session_tickets = malloc(sizeof(Google__Protobuf__BoolValue));
  google__protobuf__bool_value__init(tc->session_tickets);
  tc->session_tickets->value = 0;
  tc->session_cache_size = -1;
  tc->max_send_fragment = 1024;
  ctx = build_ok(rc);
  assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
  assert_int_equal(SSL_CTX_get_max_proto_version(ctx), TLS1_2_VERSION);
  assert_int_equal(SSL_CTX_get_timeout(ctx), 3600);
  assert_int_not_equal(SSL_CTX_get_options(ctx) & SSL_OP_NO_TICKET, 0);
  assert_int_equal(SSL_CTX_get_options(ctx) & SSL_OP_CIPHER_SERVER_PREFERENCE, 0);
  assert_int_equal(SSL_CTX_get_verify_mode(ctx), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
  assert_int_equal(SSL_CTX_get_session_cache_mode(ctx), SSL_SESS_CACHE_OFF);
  X509_VERIFY_PARAM *vp = X509_STORE_get0_param(SSL_CTX_get_cert_store(ctx));
  assert_int_not_equal(X509_VERIFY_PARAM_get_flags(vp) & X509_V_FLAG_CRL_CHECK, 0);
  assert_int_equal(X509_VERIFY_PARAM_get_flags(vp) & X509_V_FLAG_CRL_CHECK_ALL, 0);
  STACK_OF(X509_NAME) *cas = SSL_CTX_get_client_CA_list(ctx);
  assert_int_equal(sk_X509_NAME_num(cas), 1);
  assert_int_equal(X509_NAME_cmp(sk_X509_NAME_value(cas, 0), X509_get_subject_name(w.client_ca)),
                   0);
  /* The SSL's cipher list is the policy's, in its order. */
  SSL *s = SSL_new(ctx);
  STACK_OF(SSL_CIPHER) *sk = SSL_get1_supported_ciphers(s);
  assert_int_equal(sk_SSL_CIPHER_num(sk), 2);
  assert_string_equal(SSL_CIPHER_get_name(sk_SSL_CIPHER_value(sk, 0)),
                      "ECDHE-RSA-AES256-GCM-SHA384");
  sk_SSL_CIPHER_free(sk);
  SSL_free(s);
  SSL_CTX_free(ctx);

  tc->session_cache_size = 1000;
  ctx = build_ok(rc);
  assert_int_equal(SSL_CTX_sess_get_cache_size(ctx), 1000);
  assert_int_equal(SSL_CTX_get_session_cache_mode(ctx), SSL_SESS_CACHE_SERVER);
  assert_int_equal(SSL_CTX_get_num_tickets(ctx), 2); /* tls13_tickets unset */
  SSL_CTX_free(ctx);
  tc->tls13_tickets = malloc(sizeof(Google__Protobuf__Int32Value));
  google__protobuf__int32_value__init(tc->tls13_tickets);
  tc->tls13_tickets->value = 1;
  ctx = build_ok(rc);
  assert_int_equal(SSL_CTX_get_num_tickets(ctx), 1);
  SSL_CTX_free(ctx);
  free(tc->tls13_tickets);
  tc->tls13_tickets = NULL;

  /* request_cert alone: verify, but go on (the verify callback keeps the
   * result). */
  tc->reject_unauthorized = 0;
  ctx = build_ok(rc);
  assert_int_equal(SSL_CTX_get_verify_mode(ctx), SSL_VERIFY_PEER);
  assert_non_null(SSL_CTX_get_verify_callback(ctx));
  SSL_CTX_free(ctx);

  /* secure_protocol maps onto the version range; TLS 1.0 lowers the
   * security level so that it works. */
  msg_free(rc->cipher_policy);
  rc->cipher_policy = policy_new();
  set_str(&rc->cipher_policy->secure_protocol, "TLSv1_1_method");
  ctx = build_ok(rc);
  assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_1_VERSION);
  assert_int_equal(SSL_CTX_get_max_proto_version(ctx), TLS1_1_VERSION);
  assert_int_equal(SSL_CTX_get_security_level(ctx), 0);
  SSL_CTX_free(ctx);
  set_str(&rc->cipher_policy->secure_protocol, "TLS_method");
  ctx = build_ok(rc);
  assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_VERSION);
  assert_int_equal(SSL_CTX_get_max_proto_version(ctx), TLS1_3_VERSION);
  SSL_CTX_free(ctx);
  msg_free(rc);
}

/* A policy of DHE ciphers only and no DH parameters: a client context
 * (the upstream chooses the group) builds and offers exactly those; a
 * server context, which could negotiate none, is refused naming why. */
static void test_build_dhe_only_policy(void **state) {
  struct tp_err err;
  Tlsplane__V1__ResolvedTlsContext *rc = rctx_new("tlsContexts/up");
  rc->tls_context->client = 1;
  rc->cipher_policy = policy_new();
  rc->cipher_policy->min_version = rc->cipher_policy->max_version =
      TLSPLANE__V1__TLS_VERSION__TLS_1_2;
  set_str(&rc->cipher_policy->ciphers, "DHE-RSA-AES128-GCM-SHA256");
  SSL_CTX *ctx = build_ok(rc);
  SSL *s = SSL_new(ctx);
  STACK_OF(SSL_CIPHER) *sk = SSL_get1_supported_ciphers(s);
  assert_int_equal(sk_SSL_CIPHER_num(sk), 1);
  assert_string_equal(SSL_CIPHER_get_name(sk_SSL_CIPHER_value(sk, 0)), "DHE-RSA-AES128-GCM-SHA256");
  sk_SSL_CIPHER_free(sk);
  SSL_free(s);
  SSL_CTX_free(ctx);
  rc->tls_context->client = 0;
  rctx_add(rc, material("certificates/rsa", w.rsa_key, w.rsa_leaf, w.ca));
  EXPECT_ERR_EXACT(build(rc, &err), &err,
                   "cipher_policy: ciphers: no cipher of \"DHE-RSA-AES128-GCM-SHA256\" can be used "
                   "with TLS 1.2 to TLS 1.2 (a server's DHE ciphers need dhparam_pem or "
                   "dhparam_group)");
  set_str(&rc->cipher_policy->dhparam_group, "ffdhe2048");
  assert_int_equal(build(rc, &err), 0);
  msg_free(rc);
}

/* A client context (upstream_tls): a client SSL_CTX with no certificate
 * needed, at most one, none of the server-only fields, ALPN offered (NPN:
 * test_handshake_client_npn). */
static void test_build_client(void **state) {
  struct tp_err err;
  Tlsplane__V1__ResolvedTlsContext *rc = rctx_new("tlsContexts/up");
  rc->tls_context->client = 1;
  SSL_CTX *ctx = build_ok(rc);
  assert_ptr_equal(SSL_CTX_get_ssl_method(ctx), TLS_client_method());
  assert_int_equal(SSL_CTX_get_session_cache_mode(ctx),
                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_free(ctx);
  rctx_trust_clients(rc, 0);
  rctx_add(rc, material("certificates/a", w.ec_key, w.ec_leaf, w.ca));
  ctx = build_ok(rc);
  assert_non_null(SSL_CTX_get0_certificate(ctx));
  SSL_CTX_free(ctx);
  rctx_add(rc, material("certificates/rsa", w.rsa_key, w.rsa_leaf, w.ca));
  EXPECT_ERR_EXACT(build(rc, &err), &err,
                   "certificates: a client context has at most one (the client certificate)");
  msg_free(rc);

  rc = rctx_new("tlsContexts/up");
  rc->tls_context->client = 1;
  rc->tls_context->request_cert = 1;
  EXPECT_ERR_EXACT(build(rc, &err), &err,
                   "request_cert: a server option, not for a client context");
  rc->tls_context->request_cert = 0;
  rc->tls_context->max_send_fragment = 1024;
  EXPECT_ERR_EXACT(build(rc, &err), &err,
                   "max_send_fragment: a server option, not for a client context");
  rc->tls_context->max_send_fragment = 0;
  rc->tls_context->tls13_tickets = malloc(sizeof(Google__Protobuf__Int32Value));
  google__protobuf__int32_value__init(rc->tls_context->tls13_tickets);
  EXPECT_ERR_EXACT(build(rc, &err), &err,
                   "tls13_tickets: a server option, not for a client context");
  msg_free(rc);
}

static void test_build_errors(void **state) {
  struct tp_err err;
  Tlsplane__V1__ResolvedTlsContext *rc = rctx_new("tlsContexts/x");
  Tlsplane__V1__TlsContext *saved = rc->tls_context;
  rc->tls_context = NULL;
  EXPECT_ERR_EXACT(build(rc, &err), &err, "tls_context: required");
  rc->tls_context = saved;
  EXPECT_ERR_EXACT(build(rc, &err), &err, "certificates: at least one certificate is required");
  rctx_add(rc, material("certificates/a", w.ec_key, w.ec_leaf, w.ca));
  assert_int_equal(build(rc, &err), 0);
  /* Two certificates of the same key algorithm (P-256 and P-384 share
   * OpenSSL's EC slot). */
  rctx_add(rc, material("certificates/b", w.ec384_key, w.ec384_leaf, w.ca));
  EXPECT_ERR_EXACT(build(rc, &err), &err,
                   "certificates: two certificates with key algorithm EC (certificates/a, "
                   "certificates/b)");
  msg_free(rc);

  /* RSA, EC and Ed25519 side by side are fine. */
  rc = rctx_dual();
  rctx_add(rc, material("certificates/ed", w.ed_key, w.ed_leaf, w.ca));
  assert_int_equal(build(rc, &err), 0);
  msg_free(rc);

  rc = rctx_dual();
  set_str(&rc->certificates[1]->private_key_pem, "");
  EXPECT_ERR_EXACT(build(rc, &err), &err, "certificates: certificates/ec has no private key");
  set_str(&rc->certificates[1]->private_key_pem, rc->certificates[0]->private_key_pem);
  EXPECT_ERR_EXACT(build(rc, &err), &err,
                   "certificates: certificates/ec: private key does not match the certificate");
  msg_free(rc);

  rc = rctx_dual();
  Tlsplane__V1__TlsContext *tc = rc->tls_context;
  tc->reject_unauthorized = 1;
  EXPECT_ERR_EXACT(build(rc, &err), &err, "reject_unauthorized: needs request_cert");
  tc->request_cert = 1;
  EXPECT_ERR(build(rc, &err), &err, "reject_unauthorized: needs a trust_bundle");
  tc->reject_unauthorized = 0;
  assert_int_equal(build(rc, &err), 0); /* request_cert without a bundle: allowed */
  tc->request_cert = 0;

  rctx_trust_clients(rc, 1);
  msg_free(rc->trust_bundle);
  rc->trust_bundle = NULL;
  EXPECT_ERR_EXACT(build(rc, &err), &err, "revocation_lists: need a trust_bundle");
  rc->trust_bundle = bundle_new(fixture_pem_cert(w.client_ca));
  assert_int_equal(build(rc, &err), 0);

  strv_push(&tc->n_alpn_protocols, &tc->alpn_protocols, "h2");
  strv_push(&tc->n_alpn_protocols, &tc->alpn_protocols, "");
  EXPECT_ERR_EXACT(build(rc, &err), &err,
                   "alpn_protocols[1]: a protocol name must be 1 to 255 bytes (got 0)");
  set_str(&tc->alpn_protocols[1], "http/1.1");
  assert_int_equal(build(rc, &err), 0);
  char long_name[300];
  memset(long_name, 'a', sizeof(long_name) - 1);
  long_name[sizeof(long_name) - 1] = '\0';
  strv_push(&tc->n_npn_protocols, &tc->npn_protocols, long_name);
  EXPECT_ERR(build(rc, &err), &err, "npn_protocols[0]: a protocol name must be 1 to 255 bytes");
  set_str(&tc->npn_protocols[0], "http/1.1");
  assert_int_equal(build(rc, &err), 0);

  set_str(&tc->session_id_context, "0123456789abcdef0123456789abcdefX");
  EXPECT_ERR_EXACT(build(rc, &err), &err, "session_id_context: 33 bytes, at most 32");
  set_str(&tc->session_id_context, "0123456789abcdef0123456789abcdef");
  assert_int_equal(build(rc, &err), 0);

  tc->session_timeout = malloc(sizeof(Google__Protobuf__Duration));
  google__protobuf__duration__init(tc->session_timeout);
  EXPECT_ERR(build(rc, &err), &err, "session_timeout: must be 1 s to 7 days");
  tc->session_timeout->seconds = 8 * 86400;
  EXPECT_ERR(build(rc, &err), &err, "session_timeout: must be 1 s to 7 days");
  tc->session_timeout->seconds = 86400;
  assert_int_equal(build(rc, &err), 0);

  tc->session_cache_size = -2;
  EXPECT_ERR(build(rc, &err), &err, "session_cache_size: ");
  tc->session_cache_size = 0;

  tc->tls13_tickets = malloc(sizeof(Google__Protobuf__Int32Value));
  google__protobuf__int32_value__init(tc->tls13_tickets);
  tc->tls13_tickets->value = 11;
  EXPECT_ERR(build(rc, &err), &err, "tls13_tickets: must be 0 to 10 (unset: 2)");
  tc->tls13_tickets->value = -1;
  EXPECT_ERR(build(rc, &err), &err, "tls13_tickets: must be 0 to 10 (unset: 2)");
  tc->tls13_tickets->value = 0;
  assert_int_equal(build(rc, &err), 0);

  tc->max_send_fragment = 100;
  EXPECT_ERR(build(rc, &err), &err, "max_send_fragment: must be 512 to 16384 bytes");
  tc->max_send_fragment = 16385;
  EXPECT_ERR(build(rc, &err), &err, "max_send_fragment: must be 512 to 16384 bytes");
  tc->max_send_fragment = 512;
  assert_int_equal(build(rc, &err), 0);

  /* Policy errors come from the same code as CipherPolicy validation. */
  rc->cipher_policy = policy_new();
  set_str(&rc->cipher_policy->ecdh_curve, "P-999");
  EXPECT_ERR_EXACT(build(rc, &err), &err, "cipher_policy: ecdh_curve: unknown group \"P-999\"");
  msg_free(rc->cipher_policy);
  rc->cipher_policy = NULL;

  /* A 1024-bit RSA key does not load at the default level 2; a policy
   * lowering the level ("@SECLEVEL=1", or TLS 1.0) lets it. */
  EVP_PKEY *k1024 = fixture_key_rsa(1024);
  X509 *leaf =
      fixture_cert(k1024, &(struct fixture_cert_opts){
                              .cn = "weak.example.com", .issuer = w.ca, .issuer_key = w.ca_key});
  Tlsplane__V1__ResolvedTlsContext *weak = rctx_new("tlsContexts/weak");
  rctx_add(weak, material("certificates/weak", k1024, leaf, w.ca));
  EXPECT_ERR(build(weak, &err), &err,
             "certificates: certificates/weak does not load; ee key too small");
  weak->cipher_policy = policy_new();
  set_str(&weak->cipher_policy->ciphers, "HIGH:@SECLEVEL=1");
  assert_int_equal(build(weak, &err), 0);
  /* 1024-bit DH: refused whatever the level. */
  set_str(&weak->cipher_policy->dhparam_pem, fixture_dh1024_pem);
  EXPECT_ERR(build(weak, &err), &err,
             "cipher_policy: dhparam_pem: 1024-bit DH parameters; 2048 to 8192 bits are accepted");
  msg_free(weak);
  X509_free(leaf);
  EVP_PKEY_free(k1024);

  msg_free(rc);
}

/* Handshakes ----------------------------------------------------------------- */

static void test_handshake_cert_by_sigalgs(void **state) {
  Tlsplane__V1__ResolvedTlsContext *rc = rctx_dual();
  SSL_CTX *ctx = build_ok(rc);
  int versions[] = {TLS1_3_VERSION, TLS1_2_VERSION};
  for (int v = 0; v < 2; v++) {
    struct {
      const char *sigalgs;
      X509 *want;
    } cases[] = {
        {"rsa_pss_rsae_sha256:RSA+SHA256", w.rsa_leaf},
        {"ECDSA+SHA256", w.ec_leaf},
    };
    for (int i = 0; i < 2; i++) {
      SSL *c = client_new(versions[v]), *s = NULL;
      assert_true(SSL_set1_sigalgs_list(c, cases[i].sigalgs));
      assert_int_equal(handshake(ctx, c, &s), 0);
      X509 *peer = SSL_get1_peer_certificate(c);
      assert_non_null(peer);
      if (X509_cmp(peer, cases[i].want) != 0)
        fail_msg("version %x sigalgs %s: served the wrong certificate", versions[v],
                 cases[i].sigalgs);
      assert_int_equal(SSL_version(c), versions[v]);
      X509_free(peer);
      SSL_free(c);
      SSL_free(s);
    }
  }
  SSL_CTX_free(ctx);
  msg_free(rc);
}

#ifndef OPENSSL_NO_NEXTPROTONEG
static int npn_select_cb(SSL *ssl, unsigned char **out, unsigned char *outlen,
                         const unsigned char *in, unsigned int inlen, void *arg) {
  static const unsigned char mine[] = "\x08http/1.1";
  SSL_select_next_proto(out, outlen, in, inlen, mine, sizeof(mine) - 1);
  return SSL_TLSEXT_ERR_OK;
}
#endif

static void test_handshake_alpn_npn(void **state) {
  Tlsplane__V1__ResolvedTlsContext *rc = rctx_dual();
  Tlsplane__V1__TlsContext *tc = rc->tls_context;
  strv_push(&tc->n_alpn_protocols, &tc->alpn_protocols, "h2");
  strv_push(&tc->n_alpn_protocols, &tc->alpn_protocols, "http/1.1");
  strv_push(&tc->n_npn_protocols, &tc->npn_protocols, "spdy/3");
  strv_push(&tc->n_npn_protocols, &tc->npn_protocols, "http/1.1");
  SSL_CTX *ctx = build_ok(rc);
  msg_free(rc); /* the ctx owns copies */

  /* Server preference wins: the client lists http/1.1 first. */
  SSL *c = client_new(0), *s = NULL;
  static const unsigned char offer[] = "\x08http/1.1\x02h2";
  assert_int_equal(SSL_set_alpn_protos(c, offer, sizeof(offer) - 1), 0);
  /* The SSL outlives the SSL_CTX reference we drop here: a swapped-out
   * context stays valid for the connections that use it. */
  s = SSL_new(ctx);
  SSL_CTX_free(ctx);
  assert_int_equal(fixture_handshake(c, s), 0);
  const unsigned char *sel = NULL;
  unsigned int sel_len = 0;
  SSL_get0_alpn_selected(c, &sel, &sel_len);
  assert_int_equal(sel_len, 2);
  assert_memory_equal(sel, "h2", 2);
  SSL_CTX *kept = SSL_get_SSL_CTX(s);
  SSL_CTX_up_ref(kept);
  SSL_free(c);
  SSL_free(s);
  ctx = kept;

  /* No protocol in common: a fatal alert, like Node. */
  c = client_new(0);
  static const unsigned char other[] = "\x06spdy/1";
  assert_int_equal(SSL_set_alpn_protos(c, other, sizeof(other) - 1), 0);
  assert_int_equal(handshake(ctx, c, &s), -1);
  SSL_free(c);
  SSL_free(s);

  /* No ALPN offered: no protocol, handshake fine. */
  c = client_new(0);
  assert_int_equal(handshake(ctx, c, &s), 0);
  SSL_get0_alpn_selected(c, &sel, &sel_len);
  assert_int_equal(sel_len, 0);
  SSL_free(c);
  SSL_free(s);

#ifndef OPENSSL_NO_NEXTPROTONEG
  /* NPN (TLS 1.2 only): the client picks from what the server advertises. */
  c = client_new(TLS1_2_VERSION);
  SSL_CTX_set_next_proto_select_cb(SSL_get_SSL_CTX(c), npn_select_cb, NULL);
  assert_int_equal(handshake(ctx, c, &s), 0);
  SSL_get0_next_proto_negotiated(c, &sel, &sel_len);
  assert_int_equal(sel_len, 8);
  assert_memory_equal(sel, "http/1.1", 8);
  SSL_get0_next_proto_negotiated(s, &sel, &sel_len);
  assert_int_equal(sel_len, 8);
  SSL_free(c);
  SSL_free(s);
#endif
  SSL_CTX_free(ctx);
}

/* A client context's npn_protocols (tls.connect's NPNProtocols): offered
 * in TLS 1.2, the first the server advertises is chosen, no overlap picks
 * the client's first; no list: no NPN extension at all; TLS 1.3: none. */
static void test_handshake_client_npn(void **state) {
  struct tp_err err;
  Tlsplane__V1__ResolvedTlsContext *srv = rctx_dual();
  strv_push(&srv->tls_context->n_npn_protocols, &srv->tls_context->npn_protocols, "spdy/3");
  strv_push(&srv->tls_context->n_npn_protocols, &srv->tls_context->npn_protocols, "http/1.1");
  SSL_CTX *sctx = build_ok(srv);
  Tlsplane__V1__ResolvedTlsContext *rc = rctx_new("tlsContexts/up");
  Tlsplane__V1__TlsContext *tc = rc->tls_context;
  tc->client = 1;
  SSL_CTX *plain = build_ok(rc);
  strv_push(&tc->n_npn_protocols, &tc->npn_protocols, "");
  EXPECT_ERR_EXACT(build(rc, &err), &err,
                   "npn_protocols[0]: a protocol name must be 1 to 255 bytes (got 0)");
  set_str(&tc->npn_protocols[0], "h2");
  strv_push(&tc->n_npn_protocols, &tc->npn_protocols, "http/1.1");
  SSL_CTX *cctx = build_ok(rc);
  set_str(&tc->npn_protocols[1], "x-other");
  SSL_CTX *nomatch = build_ok(rc);
  msg_free(rc);

  struct {
    SSL_CTX *client;
    int version;
    const char *want; /* "" : no protocol negotiated */
  } cases[] = {
      {cctx, TLS1_2_VERSION, "http/1.1"}, /* the one both have */
      {nomatch, TLS1_2_VERSION, "h2"},    /* no overlap: the client's first */
      {plain, TLS1_2_VERSION, ""},        /* no list: no extension */
      {cctx, TLS1_3_VERSION, ""},         /* TLS 1.3 has no NPN */
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    SSL *c = SSL_new(cases[i].client), *s = NULL;
    assert_non_null(c);
    assert_true(SSL_set_max_proto_version(c, cases[i].version));
    assert_int_equal(handshake(sctx, c, &s), 0);
    const unsigned char *sel = NULL;
    unsigned int sel_len = 0;
#ifndef OPENSSL_NO_NEXTPROTONEG
    SSL_get0_next_proto_negotiated(s, &sel, &sel_len);
#endif
    if (sel_len != strlen(cases[i].want) ||
        (sel_len > 0 && memcmp(sel, cases[i].want, sel_len) != 0))
      fail_msg("case %zu: the server saw NPN \"%.*s\", want \"%s\"", i, (int)sel_len,
               sel != NULL ? (const char *)sel : "", cases[i].want);
    SSL_free(c);
    SSL_free(s);
  }
  SSL_CTX_free(nomatch);
  SSL_CTX_free(cctx);
  SSL_CTX_free(plain);
  SSL_CTX_free(sctx);
  msg_free(srv);
}

static void set_ocsp(Tlsplane__V1__CertificateMaterial *m, X509 *leaf, time_t this_update,
                     time_t next_update, unsigned char **copy, size_t *copy_len) {
  size_t len;
  unsigned char *der = fixture_ocsp(leaf, w.ca, w.ca, w.ca_key, V_OCSP_CERTSTATUS_GOOD, this_update,
                                    next_update, &len);
  if (copy != NULL) {
    *copy = malloc(len);
    memcpy(*copy, der, len);
    *copy_len = len;
  }
  set_bytes(&m->certificate->ocsp_response, der, len);
}

/* Client asks for a staple; returns the stapled response's length, -1 for
 * none. */
static long staple_for(SSL_CTX *ctx, int version, const char *sigalgs,
                       const unsigned char **resp_copy, unsigned char *buf, size_t buf_len) {
  SSL *c = client_new(version), *s = NULL;
  assert_true(SSL_set1_sigalgs_list(c, sigalgs));
  assert_true(SSL_set_tlsext_status_type(c, TLSEXT_STATUSTYPE_ocsp));
  assert_int_equal(handshake(ctx, c, &s), 0);
  const unsigned char *p = NULL;
  long n = SSL_get_tlsext_status_ocsp_resp(c, &p);
  if (n > 0 && (size_t)n <= buf_len) {
    memcpy(buf, p, (size_t)n);
    *resp_copy = buf;
  }
  SSL_free(c);
  SSL_free(s);
  return n;
}

/* What a built context says it serves (tlsconf_ctx_certs): each
 * certificate's name, serial, fingerprint and notAfter, and the
 * next_update of a stapled response. */
static void expect_facts(const struct tlsconf_cert_facts *f, const char *name, X509 *leaf) {
  assert_string_equal(f->certificate, name);
  char *serial = certinfo_integer_hex(X509_get0_serialNumber(leaf));
  char *sha256 = certinfo_fingerprint(leaf);
  assert_string_equal(f->serial, serial);
  assert_string_equal(f->sha256, sha256);
  free(serial);
  free(sha256);
  time_t not_after;
  assert_int_equal(certinfo_time(X509_get0_notAfter(leaf), &not_after), 0);
  assert_int_equal(f->not_after, not_after);
}

static void test_build_cert_facts(void **state) {
  time_t now = time(NULL);
  Tlsplane__V1__ResolvedTlsContext *rc = rctx_dual();
  set_ocsp(rc->certificates[0], w.rsa_leaf, now - 60, now + 86400, NULL, NULL);
  const struct tlsconf_cert_facts *f = NULL;
  /* Stapling off: the response is not served, so not reported. */
  SSL_CTX *ctx = build_ok(rc);
  assert_int_equal(tlsconf_ctx_certs(ctx, &f), 2);
  expect_facts(&f[0], "certificates/rsa", w.rsa_leaf);
  assert_string_equal(f[0].serial, "1A2B3C");
  expect_facts(&f[1], "certificates/ec", w.ec_leaf);
  assert_false(f[0].has_ocsp);
  assert_false(f[1].has_ocsp);
  SSL_CTX_free(ctx);

  rc->tls_context->ocsp_stapling = 1;
  ctx = build_ok(rc);
  assert_int_equal(tlsconf_ctx_certs(ctx, &f), 2);
  assert_true(f[0].has_ocsp);
  assert_int_equal(f[0].ocsp_next_update, now + 86400);
  assert_false(f[1].has_ocsp); /* no response for it */
  SSL_CTX_free(ctx);
  msg_free(rc);

  /* An SSL_CTX tlsconf_ctx_build did not make: nothing. */
  SSL_CTX *plain = SSL_CTX_new(TLS_server_method());
  assert_non_null(plain);
  assert_int_equal(tlsconf_ctx_certs(plain, &f), 0);
  assert_null(f);
  SSL_CTX_free(plain);
}

static void test_handshake_ocsp_staple_per_certificate(void **state) {
  time_t now = time(NULL);
  Tlsplane__V1__ResolvedTlsContext *rc = rctx_dual();
  unsigned char *rsa_resp, *ec_resp;
  size_t rsa_len, ec_len;
  set_ocsp(rc->certificates[0], w.rsa_leaf, now - 60, now + 86400, &rsa_resp, &rsa_len);
  set_ocsp(rc->certificates[1], w.ec_leaf, now - 60, now + 86400, &ec_resp, &ec_len);

  /* Stapling off: nothing stapled. */
  SSL_CTX *ctx = build_ok(rc);
  unsigned char buf[4096];
  const unsigned char *got = NULL;
  assert_int_equal(staple_for(ctx, 0, "ECDSA+SHA256", &got, buf, sizeof(buf)), -1);
  SSL_CTX_free(ctx);

  rc->tls_context->ocsp_stapling = 1;
  ctx = build_ok(rc);
  /* TLS 1.3 and 1.2, each certificate first and second. */
  for (int round = 0; round < 4; round++) {
    int version = round < 2 ? TLS1_3_VERSION : TLS1_2_VERSION;
    const char *algs[2] = {"rsa_pss_rsae_sha256:RSA+SHA256", "ECDSA+SHA256"};
    unsigned char *want[2] = {rsa_resp, ec_resp};
    size_t want_len[2] = {rsa_len, ec_len};
    for (int j = 0; j < 2; j++) {
      int i = round % 2 ? 1 - j : j;
      got = NULL;
      long n = staple_for(ctx, version, algs[i], &got, buf, sizeof(buf));
      assert_int_equal(n, (long)want_len[i]);
      assert_memory_equal(got, want[i], want_len[i]);
    }
  }
  SSL_CTX_free(ctx);

  /* A response past its next_update is never stapled (checked at
   * handshake time: the build accepts it). */
  set_ocsp(rc->certificates[1], w.ec_leaf, now - 7200, now - 3600, NULL, NULL);
  ctx = build_ok(rc);
  assert_int_equal(staple_for(ctx, 0, "ECDSA+SHA256", &got, buf, sizeof(buf)), -1);
  assert_int_equal(staple_for(ctx, 0, "rsa_pss_rsae_sha256", &got, buf, sizeof(buf)),
                   (long)rsa_len);
  SSL_CTX_free(ctx);

  /* The issuer apart from the chain: stapled, and the chain served is the
   * leaf alone. */
  Tlsplane__V1__ResolvedTlsContext *alone = rctx_new("tlsContexts/alone");
  rctx_add(alone, material("certificates/ec", w.ec_key, w.ec_leaf, NULL));
  alone->certificates[0]->certificate->issuer_certificate_pem = fixture_pem_cert(w.ca);
  alone->tls_context->ocsp_stapling = 1;
  set_ocsp(alone->certificates[0], w.ec_leaf, now - 60, now + 86400, NULL, NULL);
  ctx = build_ok(alone);
  SSL *c = client_new(0), *s = NULL;
  assert_true(SSL_set_tlsext_status_type(c, TLSEXT_STATUSTYPE_ocsp));
  assert_int_equal(handshake(ctx, c, &s), 0);
  const unsigned char *resp = NULL;
  assert_true(SSL_get_tlsext_status_ocsp_resp(c, &resp) > 0);
  assert_int_equal(sk_X509_num(SSL_get_peer_cert_chain(c)), 1);
  SSL_free(c);
  SSL_free(s);
  SSL_CTX_free(ctx);
  /* Without it such a certificate's response cannot be matched. */
  set_str(&alone->certificates[0]->certificate->issuer_certificate_pem, "");
  struct tp_err err;
  EXPECT_ERR(build(alone, &err), &err,
             "certificates: certificates/ec: ocsp_response names no response for the certificate");
  free(alone->certificates[0]->certificate->issuer_certificate_pem);
  alone->certificates[0]->certificate->issuer_certificate_pem = fixture_pem_cert(w.client_ca);
  EXPECT_ERR(build(alone, &err), &err,
             "certificates: certificates/ec: issuer_certificate_pem: did not issue the leaf");
  msg_free(alone);

  /* A response for another certificate does not build. */
  set_ocsp(rc->certificates[1], w.rsa_leaf, now - 60, now + 86400, NULL, NULL);
  EXPECT_ERR(build(rc, &err), &err,
             "certificates: certificates/ec: ocsp_response names no response for the certificate");
  free(rsa_resp);
  free(ec_resp);
  msg_free(rc);
}

static SSL *client_with_cert(X509 *cert, int max_version) {
  SSL *c = client_new(max_version);
  assert_true(SSL_use_certificate(c, cert));
  assert_true(SSL_use_PrivateKey(c, w.client_key));
  return c;
}

static void test_handshake_client_certificates(void **state) {
  int versions[] = {TLS1_3_VERSION, TLS1_2_VERSION};
  for (int v = 0; v < 2; v++) {
    Tlsplane__V1__ResolvedTlsContext *rc = rctx_dual();
    rctx_trust_clients(rc, 1);
    rc->tls_context->request_cert = 1;
    rc->tls_context->reject_unauthorized = 1;
    SSL_CTX *ctx = build_ok(rc);
    SSL *c, *s;

    /* Required and given. */
    c = client_with_cert(w.client, versions[v]);
    assert_int_equal(handshake(ctx, c, &s), 0);
    assert_int_equal(SSL_get_verify_result(s), X509_V_OK);
    assert_non_null(SSL_get0_peer_certificate(s));
    SSL_free(c);
    SSL_free(s);

    /* Required and missing. */
    c = client_new(versions[v]);
    assert_int_equal(handshake(ctx, c, &s), -1);
    SSL_free(c);
    SSL_free(s);

    /* Revoked by the CRL. */
    c = client_with_cert(w.client_revoked, versions[v]);
    assert_int_equal(handshake(ctx, c, &s), -1);
    assert_int_equal(SSL_get_verify_result(s), X509_V_ERR_CERT_REVOKED);
    SSL_free(c);
    SSL_free(s);

    /* Issued by a CA outside the bundle. */
    c = client_new(versions[v]);
    assert_true(SSL_use_certificate(c, w.ec_leaf));
    assert_true(SSL_use_PrivateKey(c, w.ec_key));
    assert_int_equal(handshake(ctx, c, &s), -1);
    SSL_free(c);
    SSL_free(s);
    SSL_CTX_free(ctx);

    /* request_cert without reject_unauthorized: the handshake goes on and
     * the verify result tells (Node's authorized / authorizationError). */
    rc->tls_context->reject_unauthorized = 0;
    ctx = build_ok(rc);
    c = client_with_cert(w.client_revoked, versions[v]);
    assert_int_equal(handshake(ctx, c, &s), 0);
    assert_int_equal(SSL_get_verify_result(s), X509_V_ERR_CERT_REVOKED);
    SSL_free(c);
    SSL_free(s);
    c = client_with_cert(w.client, versions[v]);
    assert_int_equal(handshake(ctx, c, &s), 0);
    assert_int_equal(SSL_get_verify_result(s), X509_V_OK);
    SSL_free(c);
    SSL_free(s);
    SSL_CTX_free(ctx);

    /* request_cert without a trust bundle: every client is unauthorized. */
    msg_free(rc->trust_bundle);
    rc->trust_bundle = NULL;
    for (size_t i = 0; i < rc->n_revocation_lists; i++)
      msg_free(rc->revocation_lists[i]);
    free(rc->revocation_lists);
    rc->revocation_lists = NULL;
    rc->n_revocation_lists = 0;
    ctx = build_ok(rc);
    c = client_with_cert(w.client, versions[v]);
    assert_int_equal(handshake(ctx, c, &s), 0);
    assert_int_not_equal(SSL_get_verify_result(s), X509_V_OK);
    SSL_free(c);
    SSL_free(s);
    SSL_CTX_free(ctx);
    msg_free(rc);
  }
}

/* Resumption of a request_cert context works without an explicit
 * session_id_context (OpenSSL refuses it with none), by ticket and by
 * session ID. */
static void test_handshake_resumption(void **state) {
  for (int tickets = 0; tickets < 2; tickets++) {
    Tlsplane__V1__ResolvedTlsContext *rc = rctx_dual();
    rctx_trust_clients(rc, 0);
    rc->tls_context->request_cert = 1;
    rc->tls_context->session_tickets = malloc(sizeof(Google__Protobuf__BoolValue));
    google__protobuf__bool_value__init(rc->tls_context->session_tickets);
    rc->tls_context->session_tickets->value = tickets;
    SSL_CTX *ctx = build_ok(rc);
    SSL *c = client_with_cert(w.client, TLS1_2_VERSION), *s;
    assert_int_equal(handshake(ctx, c, &s), 0);
    SSL_SESSION *sess = SSL_get1_session(c);
    assert_non_null(sess);
    /* The default context is derived from the TlsContext's name. */
    unsigned char md[32];
    const char *name = "tlsContexts/web";
    assert_true(EVP_Digest(name, strlen(name), md, NULL, EVP_sha256(), NULL));
    unsigned int sid_len = 0;
    const unsigned char *sid = SSL_SESSION_get0_id_context(SSL_get_session(s), &sid_len);
    assert_int_equal(sid_len, 32);
    assert_memory_equal(sid, md, 32);
    /* Close cleanly: OpenSSL marks the session of a connection freed
     * without close_notify as not resumable. */
    SSL_shutdown(c);
    SSL_shutdown(s);
    SSL_free(c);
    SSL_free(s);

    c = client_with_cert(w.client, TLS1_2_VERSION);
    assert_true(SSL_set_session(c, sess));
    assert_int_equal(handshake(ctx, c, &s), 0);
    assert_int_equal(SSL_session_reused(c), 1);
    assert_int_equal(SSL_session_reused(s), 1);
    SSL_free(c);
    SSL_free(s);
    SSL_SESSION_free(sess);
    SSL_CTX_free(ctx);
    msg_free(rc);
  }
}

/* secure_protocol "TLSv1_method" really serves TLS 1.0 (security level
 * 0), and the default range refuses it. */
static void test_handshake_tls10(void **state) {
  Tlsplane__V1__ResolvedTlsContext *rc = rctx_dual();
  SSL *c, *s;
  SSL_CTX *ctx = build_ok(rc);
  c = client_new(TLS1_VERSION);
  SSL_set_security_level(c, 0);
  assert_int_equal(handshake(ctx, c, &s), -1);
  SSL_free(c);
  SSL_free(s);
  SSL_CTX_free(ctx);

  rc->cipher_policy = policy_new();
  set_str(&rc->cipher_policy->secure_protocol, "TLSv1_method");
  ctx = build_ok(rc);
  const char *sigalgs[] = {"RSA+SHA256", "ECDSA+SHA256"};
  for (int i = 0; i < 2; i++) {
    c = client_new(TLS1_VERSION);
    SSL_set_security_level(c, 0);
    assert_true(SSL_set_min_proto_version(c, TLS1_VERSION));
    assert_true(SSL_set1_sigalgs_list(c, sigalgs[i]));
    assert_int_equal(handshake(ctx, c, &s), 0);
    assert_int_equal(SSL_version(s), TLS1_VERSION);
    SSL_free(c);
    SSL_free(s);
  }
  /* A TLS 1.2 client is refused by a TLS 1.0-only server. */
  c = client_new(0);
  assert_true(SSL_set_min_proto_version(c, TLS1_2_VERSION));
  assert_int_equal(handshake(ctx, c, &s), -1);
  SSL_free(c);
  SSL_free(s);
  SSL_CTX_free(ctx);
  msg_free(rc);
}

/* dhparam enables DHE; ecdh_disabled removes ECDHE (TLS 1.2) and limits
 * TLS 1.3 to finite-field groups. */
static void test_handshake_dhe_and_ecdh_disabled(void **state) {
  const char *params[] = {fixture_dh2048_pem};
  for (int i = 0; i < 1; i++) {
    Tlsplane__V1__ResolvedTlsContext *rc = rctx_dual();
    rc->cipher_policy = policy_new();
    rc->cipher_policy->max_version = TLSPLANE__V1__TLS_VERSION__TLS_1_2;
    set_str(&rc->cipher_policy->ciphers, "DHE-RSA-AES128-GCM-SHA256");
    set_str(&rc->cipher_policy->dhparam_pem, params[i]);
    SSL_CTX *ctx = build_ok(rc);
    SSL *c = client_new(0), *s;
    SSL_set_security_level(c, 2);
    if (handshake(ctx, c, &s) != 0)
      fail_msg("DHE handshake with dhparam %d failed", i);
    assert_string_equal(SSL_CIPHER_get_name(SSL_get_current_cipher(c)),
                        "DHE-RSA-AES128-GCM-SHA256");
    SSL_free(c);
    SSL_free(s);
    SSL_CTX_free(ctx);
    msg_free(rc);
  }

  Tlsplane__V1__ResolvedTlsContext *rc = rctx_dual();
  rc->cipher_policy = policy_new();
  rc->cipher_policy->ecdh_disabled = 1;
  SSL_CTX *ctx = build_ok(rc);
  SSL *c = client_new(0), *s;
  assert_int_equal(handshake(ctx, c, &s), 0);
  assert_int_equal(SSL_version(c), TLS1_3_VERSION);
  assert_int_equal(SSL_get_negotiated_group(s), NID_ffdhe2048);
  SSL_free(c);
  SSL_free(s);
  c = client_new(TLS1_2_VERSION);
  assert_true(SSL_set1_sigalgs_list(c, "RSA+SHA256"));
  assert_int_equal(handshake(ctx, c, &s), 0);
  assert_int_not_equal(SSL_CIPHER_get_kx_nid(SSL_get_current_cipher(c)), NID_kx_ecdhe);
  SSL_free(c);
  SSL_free(s);
  SSL_CTX_free(ctx);
  msg_free(rc);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cert_pfx_legacy_loads_legacy_provider),
      cmocka_unit_test(test_cert_pem_rsa_derived_fields),
      cmocka_unit_test(test_cert_key_types),
      cmocka_unit_test(test_cert_traditional_key),
      cmocka_unit_test(test_cert_encrypted_pkcs8),
      cmocka_unit_test(test_cert_encrypted_legacy_pem),
      cmocka_unit_test(test_cert_pfx),
      cmocka_unit_test(test_cert_pfx_iterations_bounded),
      cmocka_unit_test(test_cert_key_mismatch),
      cmocka_unit_test(test_cert_chain_order),
      cmocka_unit_test(test_cert_validity),
      cmocka_unit_test(test_cert_existing_or_no_key),
      cmocka_unit_test(test_cert_bad_input),
      cmocka_unit_test(test_cert_ocsp),
      cmocka_unit_test(test_trust_bundle),
      cmocka_unit_test(test_revocation_list),
      cmocka_unit_test(test_policy_default),
      cmocka_unit_test(test_policy_ciphers),
      cmocka_unit_test(test_policy_groups),
      cmocka_unit_test(test_policy_tls13_names_in_ciphers),
      cmocka_unit_test(test_policy_dhparam),
      cmocka_unit_test(test_policy_versions),
      cmocka_unit_test(test_ciphers_list),
      cmocka_unit_test(test_hostname_pattern),
      cmocka_unit_test(test_build_applies_options),
      cmocka_unit_test(test_build_cert_facts),
      cmocka_unit_test(test_build_errors),
      cmocka_unit_test(test_build_dhe_only_policy),
      cmocka_unit_test(test_build_client),
      cmocka_unit_test(test_handshake_cert_by_sigalgs),
      cmocka_unit_test(test_handshake_alpn_npn),
      cmocka_unit_test(test_handshake_client_npn),
      cmocka_unit_test(test_handshake_ocsp_staple_per_certificate),
      cmocka_unit_test(test_handshake_client_certificates),
      cmocka_unit_test(test_handshake_resumption),
      cmocka_unit_test(test_handshake_tls10),
      cmocka_unit_test(test_handshake_dhe_and_ecdh_disabled),
  };
  return cmocka_run_group_tests(tests, world_setup, world_teardown);
}
