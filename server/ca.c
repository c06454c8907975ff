/* The control-plane CA: keys and certificates made with OpenSSL's X.509
 * API (no hand-written ASN.1). */
#include "ca.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certinfo.h"

#define CA_VALIDITY_S (10LL * 365 * 24 * 3600)
#define BACKDATE_S 300 /* clocks of clients a little behind still accept a new certificate */
#define SERIAL_LEN 16

struct ca {
  X509 *cert;
  EVP_PKEY *key;
  char *cert_pem;
};

static int oom(struct tp_err *err) {
  return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
}

static int ssl_fail(struct tp_err *err, const char *what) {
  tp_err_set(err, GRPC_STATUS_INTERNAL, "CA: %s failed", what);
  tp_err_append_openssl(err);
  return -1;
}

void ca_free(struct ca *ca) {
  if (ca == NULL)
    return;
  X509_free(ca->cert);
  EVP_PKEY_free(ca->key);
  free(ca->cert_pem);
  free(ca);
}

const char *ca_cert_pem(const struct ca *ca) {
  return ca->cert_pem;
}

X509 *ca_cert(const struct ca *ca) {
  return ca->cert;
}

char *ca_key_pem(const struct ca *ca) {
  return certinfo_key_pem(ca->key);
}

EVP_PKEY *ca_key_new(void) {
  return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

char *ca_cert_to_pem(X509 *x) {
  STACK_OF(X509) *one = sk_X509_new_null();
  if (one == NULL || !sk_X509_push(one, x)) {
    sk_X509_free(one);
    return NULL;
  }
  char *pem = certinfo_certs_pem(one);
  sk_X509_free(one); /* x stays the caller's */
  return pem;
}

int ca_serial_hex(X509 *x, char hex[CA_SERIAL_HEX_LEN + 1]) {
  char *h = certinfo_integer_hex(X509_get0_serialNumber(x));
  if (h == NULL || strlen(h) != CA_SERIAL_HEX_LEN) {
    free(h);
    return -1;
  }
  for (size_t i = 0; i <= CA_SERIAL_HEX_LEN; i++)
    hex[i] = (char)tolower((unsigned char)h[i]);
  free(h);
  return 0;
}

/* 128 random bits, positive, with a first byte of 0x10 to 0x7f: the hex
 * form is always 32 digits. */
static int serial_set(X509 *x) {
  unsigned char b[SERIAL_LEN];
  if (RAND_bytes(b, sizeof(b)) != 1)
    return -1;
  b[0] = (unsigned char)(0x10 + b[0] % 0x70);
  BIGNUM *bn = BN_bin2bn(b, sizeof(b), NULL);
  ASN1_INTEGER *serial = bn ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
  int ok = serial != NULL && X509_set_serialNumber(x, serial) == 1;
  ASN1_INTEGER_free(serial);
  BN_free(bn);
  return ok ? 0 : -1;
}

static int name_add(X509_NAME *n, const char *field, const char *value) {
  return X509_NAME_add_entry_by_txt(n, field, MBSTRING_UTF8, (const unsigned char *)value, -1, -1,
                                    0) == 1
             ? 0
             : -1;
}

/* Adds the extension nid = value, with issuer (or x itself) as context. */
static int ext_add(X509 *x, X509 *issuer, int nid, const char *value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
  X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
  if (ext == NULL)
    return -1;
  int ok = X509_add_ext(x, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok ? 0 : -1;
}

/* The digest a key signs with: none for EdDSA (it hashes itself). */
static const EVP_MD *sign_md(EVP_PKEY *key) {
  int id = EVP_PKEY_get_base_id(key);
  return id == EVP_PKEY_ED25519 || id == EVP_PKEY_ED448 ? NULL : EVP_sha256();
}

/* A certificate shell: version 3, random serial, subject (O=tlsplane
 * first unless cn_only), validity. */
static X509 *cert_start_subject(EVP_PKEY *pub, const char *cn, const char *ou, int64_t validity_s,
                                int cn_only) {
  X509 *x = X509_new();
  X509_NAME *subject = X509_NAME_new();
  int ok = x != NULL && subject != NULL && X509_set_version(x, 2) == 1 && serial_set(x) == 0 &&
           (cn_only || name_add(subject, "O", "tlsplane") == 0) &&
           (ou == NULL || name_add(subject, "OU", ou) == 0) && name_add(subject, "CN", cn) == 0 &&
           X509_set_subject_name(x, subject) == 1 &&
           X509_gmtime_adj(X509_getm_notBefore(x), -BACKDATE_S) != NULL &&
           X509_gmtime_adj(X509_getm_notAfter(x), (long)validity_s) != NULL &&
           X509_set_pubkey(x, pub) == 1;
  X509_NAME_free(subject);
  if (!ok) {
    X509_free(x);
    return NULL;
  }
  return x;
}

static X509 *cert_start(EVP_PKEY *pub, const char *cn, const char *ou, int64_t validity_s) {
  return cert_start_subject(pub, cn, ou, validity_s, 0);
}

int ca_new(struct ca **out, struct tp_err *err) {
  *out = NULL;
  struct ca *ca = calloc(1, sizeof(*ca));
  if (ca == NULL)
    return oom(err);
  unsigned char tag[4];
  char cn[64];
  if (RAND_bytes(tag, sizeof(tag)) != 1 || (ca->key = ca_key_new()) == NULL) {
    ca_free(ca);
    return ssl_fail(err, "making the CA key");
  }
  snprintf(cn, sizeof(cn), "tlsplane CA %02x%02x%02x%02x", tag[0], tag[1], tag[2], tag[3]);
  ca->cert = cert_start(ca->key, cn, NULL, CA_VALIDITY_S);
  int ok = ca->cert != NULL && X509_set_issuer_name(ca->cert, X509_get_subject_name(ca->cert)) &&
           ext_add(ca->cert, NULL, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") == 0 &&
           ext_add(ca->cert, NULL, NID_key_usage,
                   "critical,keyCertSign,cRLSign,digitalSignature") == 0 &&
           ext_add(ca->cert, NULL, NID_subject_key_identifier, "hash") == 0 &&
           X509_sign(ca->cert, ca->key, EVP_sha256()) > 0;
  if (!ok) {
    ca_free(ca);
    return ssl_fail(err, "making the CA certificate");
  }
  if ((ca->cert_pem = ca_cert_to_pem(ca->cert)) == NULL) {
    ca_free(ca);
    return oom(err);
  }
  *out = ca;
  return 0;
}

int ca_load(const char *cert_pem, const char *key_pem, struct ca **out, struct tp_err *err) {
  *out = NULL;
  struct ca *ca = calloc(1, sizeof(*ca));
  if (ca == NULL)
    return oom(err);
  STACK_OF(X509) *certs = NULL;
  if (certinfo_certs_read(cert_pem, strlen(cert_pem), "ca.pem", &certs, err) != 0 ||
      certinfo_key_read(key_pem, strlen(key_pem), NULL, "ca-key.pem", &ca->key, err) != 0) {
    certinfo_certs_free(certs);
    ca_free(ca);
    return -1;
  }
  ca->cert = sk_X509_shift(certs);
  certinfo_certs_free(certs);
  if (X509_check_private_key(ca->cert, ca->key) != 1) {
    ERR_clear_error();
    ca_free(ca);
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "ca-key.pem: not the key of the certificate in ca.pem");
  }
  if (X509_check_ca(ca->cert) == 0) {
    ca_free(ca);
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "ca.pem: not a CA certificate");
  }
  if ((ca->cert_pem = ca_cert_to_pem(ca->cert)) == NULL) {
    ca_free(ca);
    return oom(err);
  }
  *out = ca;
  return 0;
}

static int is_ip(const char *s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* The subjectAltName value for sans ("DNS:a,IP:1.2.3.4"), malloc'd. */
static char *san_value(const char *const *sans, size_t n_sans) {
  size_t len = 1;
  for (size_t i = 0; i < n_sans; i++)
    len += strlen(sans[i]) + 5;
  char *san = malloc(len);
  if (san == NULL)
    return NULL;
  san[0] = '\0';
  for (size_t i = 0; i < n_sans; i++) {
    strcat(san, i ? "," : "");
    strcat(san, is_ip(sans[i]) ? "IP:" : "DNS:");
    strcat(san, sans[i]);
  }
  return san;
}

int ca_csr_make(EVP_PKEY *key, const struct ca_csr_opts *o, char **pem, char **subject,
                struct tp_err *err) {
  *pem = NULL;
  *subject = NULL;
  X509_REQ *req = X509_REQ_new();
  STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
  char *san = san_value(o->sans, o->n_sans);
  if (req == NULL || exts == NULL || san == NULL) {
    X509_REQ_free(req);
    sk_X509_EXTENSION_free(exts);
    free(san);
    return oom(err);
  }
  X509_NAME *n = X509_REQ_get_subject_name(req);
  int ok = X509_REQ_set_version(req, X509_REQ_VERSION_1) == 1 &&
           (o->o == NULL || o->o[0] == '\0' || name_add(n, "O", o->o) == 0) &&
           (o->ou == NULL || o->ou[0] == '\0' || name_add(n, "OU", o->ou) == 0) &&
           name_add(n, "CN", o->cn) == 0 && X509_REQ_set_pubkey(req, key) == 1;
  if (ok && o->n_sans > 0) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, NULL, NULL, req, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name, san);
    ok = ext != NULL && sk_X509_EXTENSION_push(exts, ext) > 0;
    if (!ok)
      X509_EXTENSION_free(ext);
    ok = ok && X509_REQ_add_extensions(req, exts) == 1;
  }
  ok = ok && X509_REQ_sign(req, key, sign_md(key)) > 0;
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  free(san);
  if (!ok) {
    X509_REQ_free(req);
    return ssl_fail(err, "making a certificate signing request");
  }
  BIO *bio = BIO_new(BIO_s_mem());
  BUF_MEM *mem = NULL;
  if (bio != NULL && PEM_write_bio_X509_REQ(bio, req) == 1 && BIO_get_mem_ptr(bio, &mem) == 1)
    *pem = strndup(mem->data, mem->length);
  BIO_free(bio);
  *subject = certinfo_name(X509_REQ_get_subject_name(req));
  X509_REQ_free(req);
  if (*pem == NULL || *subject == NULL) {
    free(*pem);
    free(*subject);
    *pem = *subject = NULL;
    return oom(err);
  }
  return 0;
}

/* A leaf for pub signed by signer_key as signer (NULL: self-signed). */
static int leaf_make(X509 *signer, EVP_PKEY *signer_key, EVP_PKEY *pub,
                     const struct ca_issue_opts *o, X509 **out, struct tp_err *err) {
  *out = NULL;
  X509 *x = cert_start_subject(pub, o->cn, o->ou, o->validity_s, o->cn_only);
  if (x == NULL)
    return ssl_fail(err, "starting a certificate");
  char *san = san_value(o->sans, o->n_sans);
  if (san == NULL) {
    X509_free(x);
    return oom(err);
  }
  X509 *issuer = signer ? signer : x;
  int ok =
      X509_set_issuer_name(x, X509_get_subject_name(issuer)) == 1 &&
      ext_add(x, issuer, NID_basic_constraints, "critical,CA:FALSE") == 0 &&
      ext_add(x, issuer, NID_key_usage, "critical,digitalSignature,keyEncipherment") == 0 &&
      ext_add(x, issuer, NID_ext_key_usage, o->server ? "serverAuth" : "clientAuth") == 0 &&
      ext_add(x, issuer, NID_subject_key_identifier, "hash") == 0 &&
      (signer == NULL || ext_add(x, issuer, NID_authority_key_identifier, "keyid:always") == 0) &&
      (o->n_sans == 0 || ext_add(x, issuer, NID_subject_alt_name, san) == 0) &&
      X509_sign(x, signer_key, sign_md(signer_key)) > 0;
  free(san);
  if (!ok) {
    X509_free(x);
    return ssl_fail(err, "signing a certificate");
  }
  *out = x;
  return 0;
}

int ca_issue(const struct ca *ca, EVP_PKEY *pub, const struct ca_issue_opts *o, X509 **out,
             struct tp_err *err) {
  return leaf_make(ca->cert, ca->key, pub, o, out, err);
}

int ca_self_sign(EVP_PKEY *key, const struct ca_issue_opts *o, X509 **out, struct tp_err *err) {
  return leaf_make(NULL, key, key, o, out, err);
}

EVP_PKEY *ca_key_generate(enum ca_key_alg alg) {
  switch (alg) {
  case CA_KEY_RSA_2048:
    return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
  case CA_KEY_RSA_3072:
    return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)3072);
  case CA_KEY_RSA_4096:
    return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)4096);
  case CA_KEY_ECDSA_P256:
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  case CA_KEY_ECDSA_P384:
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
  case CA_KEY_ED25519:
    return EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
  }
  return NULL;
}

int ca_make(const struct ca *parent, const char *cn, EVP_PKEY *key, int64_t validity_s,
            struct ca **out, struct tp_err *err) {
  *out = NULL;
  struct ca *ca = calloc(1, sizeof(*ca));
  if (ca == NULL) {
    EVP_PKEY_free(key);
    return oom(err);
  }
  ca->key = key;
  if (parent != NULL && X509_get_pathlen(parent->cert) == 0) {
    ca_free(ca);
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "parent: its certificate allows no CA below it (pathlen 0)");
  }
  X509 *signer = parent ? parent->cert : NULL;
  EVP_PKEY *signer_key = parent ? parent->key : key;
  ca->cert = cert_start(key, cn, NULL, validity_s);
  int ok = ca->cert != NULL &&
           X509_set_issuer_name(ca->cert, X509_get_subject_name(signer ? signer : ca->cert)) &&
           ext_add(ca->cert, signer, NID_basic_constraints,
                   parent ? "critical,CA:TRUE,pathlen:0" : "critical,CA:TRUE") == 0 &&
           ext_add(ca->cert, signer, NID_key_usage,
                   "critical,keyCertSign,cRLSign,digitalSignature") == 0 &&
           ext_add(ca->cert, signer, NID_subject_key_identifier, "hash") == 0 &&
           (parent == NULL ||
            ext_add(ca->cert, signer, NID_authority_key_identifier, "keyid:always") == 0) &&
           X509_sign(ca->cert, signer_key, sign_md(signer_key)) > 0;
  if (!ok) {
    ca_free(ca);
    return ssl_fail(err, "making a CA certificate");
  }
  if ((ca->cert_pem = ca_cert_to_pem(ca->cert)) == NULL) {
    ca_free(ca);
    return oom(err);
  }
  *out = ca;
  return 0;
}

time_t ca_not_after(const struct ca *ca) {
  time_t t = 0;
  if (certinfo_time(X509_get0_notAfter(ca->cert), &t) != 0)
    return 0;
  return t;
}

int ca_csr_read(const char *pem, const char *field, EVP_PKEY **pub, struct tp_err *err) {
  *pub = NULL;
  if (pem == NULL || pem[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: required (a PKCS#10 request, PEM)",
                      field);
  BIO *bio = BIO_new_mem_buf(pem, -1);
  X509_REQ *req = bio ? PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL) : NULL;
  BIO_free(bio);
  ERR_clear_error();
  if (req == NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: not a certificate signing request (PEM \"CERTIFICATE REQUEST\")", field);
  EVP_PKEY *key = X509_REQ_get_pubkey(req);
  int verified = key != NULL && X509_REQ_verify(req, key) == 1;
  X509_REQ_free(req);
  ERR_clear_error();
  if (!verified) {
    EVP_PKEY_free(key);
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: the request's signature does not verify with its key", field);
  }
  const char *alg = certinfo_key_algorithm(key);
  int bits = EVP_PKEY_get_bits(key);
  int ok = alg != NULL && ((strcmp(alg, "EC") == 0 && (bits == 256 || bits == 384)) ||
                           (strcmp(alg, "RSA") == 0 && bits >= 2048 && bits <= 8192) ||
                           strcmp(alg, "ED25519") == 0);
  if (!ok) {
    EVP_PKEY_free(key);
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: %s key of %d bits; use EC P-256 or P-384, RSA of 2048 bits or more, "
                      "or Ed25519",
                      field, alg ? alg : "an unsupported", bits);
  }
  *pub = key;
  return 0;
}

/* Whether the names of x's subjectAltName are exactly sans (any order). */
static int sans_equal(X509 *x, const char *const *sans, size_t n_sans) {
  char **dns = NULL, **ips = NULL;
  size_t n_dns = 0, n_ips = 0;
  if (certinfo_sans(x, &dns, &n_dns, &ips, &n_ips) != 0)
    return 0;
  int equal = n_dns + n_ips == n_sans;
  for (size_t i = 0; equal && i < n_sans; i++) {
    int found = 0;
    for (size_t j = 0; !found && j < n_dns; j++)
      found = strcmp(dns[j], sans[i]) == 0;
    for (size_t j = 0; !found && j < n_ips; j++)
      found = strcmp(ips[j], sans[i]) == 0;
    equal = found;
  }
  for (size_t j = 0; j < n_dns; j++)
    free(dns[j]);
  for (size_t j = 0; j < n_ips; j++)
    free(ips[j]);
  free(dns);
  free(ips);
  return equal;
}

int ca_cert_current(const struct ca *ca, X509 *x, const char *const *sans, size_t n_sans,
                    time_t now, int64_t min_left_s) {
  EVP_PKEY *ca_pub = X509_get0_pubkey(ca->cert);
  if (ca_pub == NULL || X509_verify(x, ca_pub) != 1) {
    ERR_clear_error();
    return 0;
  }
  time_t not_after;
  if (certinfo_time(X509_get0_notAfter(x), &not_after) != 0 || not_after - now < min_left_s)
    return 0;
  return sans_equal(x, sans, n_sans);
}
