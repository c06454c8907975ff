/* The agent's key and client certificate (see identity.h). */
#include "identity.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"

void identity_clear(struct identity *id) {
  if (id->key_pem != NULL)
    cache_wipe_free(id->key_pem, strlen(id->key_pem));
  free(id->cert_pem);
  memset(id, 0, sizeof(*id));
}

static int64_t asn1_time_s(const ASN1_TIME *t) {
  struct tm tm;
  if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
    return 0;
  return (int64_t)timegm(&tm);
}

int identity_make(const char *key_pem, const char *cert_pem, struct identity *id,
                  struct tp_err *err) {
  memset(id, 0, sizeof(*id));
  BIO *kb = BIO_new_mem_buf(key_pem, -1), *cb = BIO_new_mem_buf(cert_pem, -1);
  EVP_PKEY *key = kb != NULL ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL;
  X509 *x = cb != NULL ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
  BIO_free(kb);
  BIO_free(cb);
  int rc = -1;
  if (key == NULL) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "key: not a PEM private key (unencrypted)");
  } else if (x == NULL) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "certificate: not a PEM certificate");
  } else if (X509_check_private_key(x, key) != 1) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "the key does not match the certificate");
  } else if ((id->key_pem = strdup(key_pem)) == NULL || (id->cert_pem = strdup(cert_pem)) == NULL) {
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  } else {
    id->not_before = asn1_time_s(X509_get0_notBefore(x));
    id->not_after = asn1_time_s(X509_get0_notAfter(x));
    id->renew_after = id->not_before + (id->not_after - id->not_before) / 3 * 2;
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, id->cn, sizeof(id->cn));
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;
    snprintf(id->serial, sizeof(id->serial), "%s", hex != NULL ? hex : "?");
    OPENSSL_free(hex);
    BN_free(bn);
    rc = 0;
  }
  ERR_clear_error();
  EVP_PKEY_free(key);
  X509_free(x);
  if (rc != 0)
    identity_clear(id);
  return rc;
}

int identity_from_files(const char *key_path, const char *cert_path, struct identity *id,
                        struct tp_err *err) {
  char *key = NULL, *cert = NULL;
  size_t klen = 0, clen = 0;
  int rc = cache_path_read(key_path, &key, &klen, err);
  if (rc == 0)
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "--key %s: no such file", key_path);
  if (rc == 1) {
    rc = cache_path_read(cert_path, &cert, &clen, err);
    if (rc == 0)
      tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "--cert %s: no such file", cert_path);
  }
  if (rc == 1) {
    rc = identity_make(key, cert, id, err) == 0 ? 1 : -1;
    if (rc < 0) {
      char prefix[600];
      snprintf(prefix, sizeof(prefix), "--key %.200s, --cert %.200s: ", key_path, cert_path);
      tp_err_prefix(err, prefix);
    }
  }
  cache_wipe_free(key, klen);
  free(cert);
  return rc == 1 ? 0 : -1;
}

/* The pair (key file, cert file) of dir, when both exist and match. */
static int pair_read(const char *dir, const char *key_name, const char *cert_name,
                     struct identity *id, struct tp_err *err) {
  char *key = NULL, *cert = NULL;
  size_t klen = 0, clen = 0;
  int rc = cache_file_read(dir, key_name, &key, &klen, err);
  if (rc == 1)
    rc = cache_file_read(dir, cert_name, &cert, &clen, err);
  if (rc == 1 && identity_make(key, cert, id, err) != 0)
    rc = -1;
  cache_wipe_free(key, klen);
  free(cert);
  return rc;
}

static void unlink_in(const char *dir, const char *name) {
  char path[4096];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  unlink(path);
}

int identity_load(const char *dir, struct identity *id, struct tp_err *err) {
  memset(id, 0, sizeof(*id));
  struct tp_err ignored = {0};
  struct identity probe;
  /* A renewal wrote both .new files and was interrupted before or between
   * the renames: finish it when the new pair is whole. */
  if (pair_read(dir, IDENTITY_KEY_FILE ".new", IDENTITY_CERT_FILE ".new", &probe, &ignored) == 1) {
    identity_clear(&probe);
    cache_file_commit(dir, IDENTITY_KEY_FILE, &ignored);
    cache_file_commit(dir, IDENTITY_CERT_FILE, &ignored);
  } else if (pair_read(dir, IDENTITY_KEY_FILE, IDENTITY_CERT_FILE ".new", &probe, &ignored) == 1) {
    /* The key was renamed, the certificate not yet. */
    identity_clear(&probe);
    cache_file_commit(dir, IDENTITY_CERT_FILE, &ignored);
  }
  /* Whatever is left over belongs to no pair: the old one stands. */
  unlink_in(dir, IDENTITY_KEY_FILE ".new");
  unlink_in(dir, IDENTITY_CERT_FILE ".new");
  int rc = pair_read(dir, IDENTITY_KEY_FILE, IDENTITY_CERT_FILE, id, err);
  if (rc < 0) {
    char prefix[4200];
    snprintf(prefix, sizeof(prefix), "%s/%s + %s: ", dir, IDENTITY_KEY_FILE, IDENTITY_CERT_FILE);
    tp_err_prefix(err, prefix);
  }
  return rc;
}

int identity_store(const char *dir, const struct identity *id, const char *ca_pem,
                   struct tp_err *err) {
  if (ca_pem != NULL && ca_pem[0] != '\0' &&
      cache_file_write(dir, IDENTITY_CA_FILE, ca_pem, strlen(ca_pem), 0644, 0, err) != 0)
    return -1;
  if (cache_file_write(dir, IDENTITY_KEY_FILE, id->key_pem, strlen(id->key_pem), 0600, 1, err) !=
          0 ||
      cache_file_write(dir, IDENTITY_CERT_FILE, id->cert_pem, strlen(id->cert_pem), 0644, 1, err) !=
          0)
    return -1;
  if (cache_file_commit(dir, IDENTITY_KEY_FILE, err) != 0 ||
      cache_file_commit(dir, IDENTITY_CERT_FILE, err) != 0)
    return -1;
  return 0;
}

/* PEM of what write() writes to a memory BIO, malloc'd. */
static char *bio_string(BIO *b) {
  char *data;
  long n = BIO_get_mem_data(b, &data);
  char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (s != NULL) {
    memcpy(s, data, (size_t)n);
    s[n] = '\0';
  }
  return s;
}

int identity_keygen(const char *name, char **key_pem, char **csr_pem, struct tp_err *err) {
  *key_pem = *csr_pem = NULL;
  EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  X509_REQ *req = X509_REQ_new();
  BIO *kb = BIO_new(BIO_s_secmem()), *rb = BIO_new(BIO_s_mem());
  char cn[128];
  snprintf(cn, sizeof(cn), "agent:%s", name);
  X509_NAME *subject = X509_REQ_get_subject_name(req != NULL ? req : NULL);
  int ok = key != NULL && req != NULL && kb != NULL && rb != NULL && subject != NULL &&
           X509_REQ_set_version(req, 0) == 1 &&
           X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1,
                                      -1, 0) == 1 &&
           X509_REQ_set_pubkey(req, key) == 1 && X509_REQ_sign(req, key, EVP_sha256()) > 0 &&
           PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL) == 1 &&
           PEM_write_bio_X509_REQ(rb, req) == 1;
  if (ok) {
    *key_pem = bio_string(kb);
    *csr_pem = bio_string(rb);
    ok = *key_pem != NULL && *csr_pem != NULL;
  }
  if (!ok) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "making a key and a certificate request");
    tp_err_append_openssl(err);
    if (*key_pem != NULL)
      cache_wipe_free(*key_pem, strlen(*key_pem));
    free(*csr_pem);
    *key_pem = *csr_pem = NULL;
  }
  BIO_free(kb);
  BIO_free(rb);
  X509_REQ_free(req);
  EVP_PKEY_free(key);
  return ok ? 0 : -1;
}

int identity_issued_by(const struct identity *id, const char *ca_pem) {
  BIO *cb = BIO_new_mem_buf(id->cert_pem, -1), *ab = BIO_new_mem_buf(ca_pem, -1);
  X509 *leaf = cb != NULL ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
  int signed_by = 0;
  for (X509 *ca;
       !signed_by && ab != NULL && (ca = PEM_read_bio_X509(ab, NULL, NULL, NULL)) != NULL;) {
    EVP_PKEY *pub = X509_get0_pubkey(ca);
    signed_by = leaf != NULL && pub != NULL &&
                X509_NAME_cmp(X509_get_issuer_name(leaf), X509_get_subject_name(ca)) == 0 &&
                X509_verify(leaf, pub) == 1;
    X509_free(ca);
  }
  ERR_clear_error();
  X509_free(leaf);
  BIO_free(cb);
  BIO_free(ab);
  return signed_by;
}

static void format_time(int64_t t, char *buf, size_t len) {
  time_t tt = (time_t)t;
  struct tm tm;
  gmtime_r(&tt, &tm);
  strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

const char *identity_unusable(const struct identity *id, const char *name, int64_t now, char *buf,
                              size_t len) {
  char want[128], when[40];
  snprintf(want, sizeof(want), "agent:%s", name);
  if (strcmp(id->cn, want) != 0) {
    snprintf(buf, len, "the certificate is for %s, not %s", id->cn[0] ? id->cn : "(no CN)", want);
    return buf;
  }
  if (now >= id->not_after) {
    format_time(id->not_after, when, sizeof(when));
    snprintf(buf, len, "the certificate expired on %s", when);
    return buf;
  }
  return NULL;
}
