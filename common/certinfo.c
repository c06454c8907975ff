/* X.509, PEM, PKCS#12 and OCSP inspection on top of OpenSSL. See
 * certinfo.h. */
#include "certinfo.h"

#include <arpa/inet.h>
#include <limits.h>
#include <openssl/bn.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int oom(struct tp_err *err) {
  ERR_clear_error();
  return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
}

/* Copies a memory BIO's contents into a malloc'd NUL-terminated string. */
static char *bio_strdup(BIO *b) {
  char *data;
  long n = BIO_get_mem_data(b, &data);
  if (n < 0)
    return NULL;
  char *s = malloc((size_t)n + 1);
  if (s == NULL)
    return NULL;
  memcpy(s, data, (size_t)n);
  s[n] = '\0';
  return s;
}

/* PEM_read_bio fails with PEM_R_NO_START_LINE once no block is left. */
static int pem_at_end(void) {
  unsigned long e = ERR_peek_last_error();
  return ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
}

void certinfo_certs_free(STACK_OF(X509) *certs) {
  sk_X509_pop_free(certs, X509_free);
}

int certinfo_certs_read(const char *pem, size_t len, const char *field, STACK_OF(X509) **out,
                        struct tp_err *err) {
  *out = NULL;
  if (len > INT_MAX)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: too large", field);
  STACK_OF(X509) *certs = sk_X509_new_null();
  BIO *b = BIO_new_mem_buf(pem, (int)len);
  if (certs == NULL || b == NULL)
    goto failed_oom;
  ERR_set_mark();
  for (int n = 1;; n++) {
    char *name = NULL, *header = NULL;
    unsigned char *data = NULL;
    long dlen = 0;
    /* PEM_read_bio never decrypts, so it can never prompt. */
    if (!PEM_read_bio(b, &name, &header, &data, &dlen)) {
      if (pem_at_end()) {
        ERR_pop_to_mark();
        break;
      }
      ERR_clear_last_mark();
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: PEM block %d does not parse", field, n);
      tp_err_append_openssl(err);
      goto failed;
    }
    int is_cert = strcmp(name, PEM_STRING_X509) == 0 || strcmp(name, PEM_STRING_X509_OLD) == 0;
    if (!is_cert) {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: PEM block %d is a %s, not a CERTIFICATE",
                 field, n, name);
      OPENSSL_free(name);
      OPENSSL_free(header);
      OPENSSL_free(data);
      ERR_clear_last_mark();
      goto failed;
    }
    const unsigned char *p = data;
    X509 *x = d2i_X509(NULL, &p, dlen);
    int trailing = x != NULL && p != data + dlen;
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(data);
    if (x == NULL || trailing) {
      X509_free(x);
      ERR_clear_last_mark();
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: certificate %d does not parse", field, n);
      tp_err_append_openssl(err);
      goto failed;
    }
    if (!sk_X509_push(certs, x)) {
      X509_free(x);
      ERR_clear_last_mark();
      goto failed_oom;
    }
  }
  BIO_free(b);
  if (sk_X509_num(certs) == 0) {
    certinfo_certs_free(certs);
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: no PEM certificate found", field);
  }
  *out = certs;
  return 0;

failed_oom:
  oom(err);
failed:
  BIO_free(b);
  certinfo_certs_free(certs);
  return -1;
}

int certinfo_crl_read(const char *pem, const char *field, X509_CRL **out, struct tp_err *err) {
  *out = NULL;
  size_t len = strlen(pem);
  if (len > INT_MAX) {
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: too large", field);
  }
  BIO *b = BIO_new_mem_buf(pem, (int)len);
  if (b == NULL) {
    return oom(err);
  }
  X509_CRL *crl = NULL;
  for (int n = 1;; n++) {
    char *name = NULL, *header = NULL;
    unsigned char *data = NULL;
    long dlen = 0;
    if (!PEM_read_bio(b, &name, &header, &data, &dlen)) {
      unsigned long e = ERR_peek_last_error();
      if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
        ERR_clear_error();
        if (crl == NULL)
          tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: no PEM X509 CRL found", field);
        break;
      }
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: PEM block %d does not parse", field, n);
      tp_err_append_openssl(err);
      X509_CRL_free(crl);
      crl = NULL;
      break;
    }
    const char *problem = NULL;
    X509_CRL *x = NULL;
    if (strcmp(name, PEM_STRING_X509_CRL) != 0) {
      problem = "is not an X509 CRL";
    } else if (crl != NULL) {
      problem = "is a second CRL (give one CRL per RevocationList)";
    } else {
      const unsigned char *p = data;
      x = d2i_X509_CRL(NULL, &p, dlen);
      if (x == NULL || p != data + dlen)
        problem = "does not parse as a CRL";
    }
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(data);
    if (problem != NULL) {
      X509_CRL_free(x);
      X509_CRL_free(crl);
      crl = NULL;
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: PEM block %d %s", field, n, problem);
      tp_err_append_openssl(err);
      break;
    }
    crl = x;
  }
  BIO_free(b);
  *out = crl;
  return crl != NULL ? 0 : -1;
}

char *certinfo_certs_pem(STACK_OF(X509) *certs) {
  BIO *b = BIO_new(BIO_s_mem());
  if (b == NULL)
    return NULL;
  for (int i = 0; i < sk_X509_num(certs); i++) {
    if (!PEM_write_bio_X509(b, sk_X509_value(certs, i))) {
      BIO_free(b);
      ERR_clear_error();
      return NULL;
    }
  }
  char *s = bio_strdup(b);
  BIO_free(b);
  return s;
}

/* Passphrase callback: hands out the configured passphrase, and fails
 * (instead of prompting on the terminal, OpenSSL's default) when there is
 * none. Records that a passphrase was asked for. */
struct pass_cb_data {
  const char *passphrase;
  int asked;
};

static int pass_cb(char *buf, int size, int rwflag, void *u) {
  struct pass_cb_data *pw = u;
  pw->asked = 1;
  if (pw->passphrase == NULL || pw->passphrase[0] == '\0')
    return -1;
  size_t len = strlen(pw->passphrase);
  if (len > (size_t)size)
    return -1;
  memcpy(buf, pw->passphrase, len);
  return (int)len;
}

/* The fast path for the most common key by far (what snapshots carry, what
 * certinfo_key_pem writes): one unencrypted PKCS#8 "PRIVATE KEY" block.
 * PEM_read_bio_PrivateKey makes a new OSSL_DECODER_CTX for every key, and
 * in OpenSSL 3.0 that enumerates every decoder of every provider: about
 * 300 us a key, most of the cost of building a context. A decoder context
 * for DER PrivateKeyInfo made once per thread and reused decodes the same
 * key in about 20 us. Anything else (another PEM type, a key this path
 * cannot decode) takes the general path, which gives the errors. */
struct key_decoder {
  OSSL_DECODER_CTX *dctx;
  EVP_PKEY *pkey; /* where dctx puts what it decodes */
};

static pthread_once_t key_decoder_once = PTHREAD_ONCE_INIT;
static pthread_key_t key_decoder_key;
static int key_decoder_ok;

static void key_decoder_free(void *p) {
  struct key_decoder *d = p;
  OSSL_DECODER_CTX_free(d->dctx);
  EVP_PKEY_free(d->pkey);
  free(d);
}

static void key_decoder_init(void) {
  key_decoder_ok = pthread_key_create(&key_decoder_key, key_decoder_free) == 0;
}

static struct key_decoder *key_decoder_get(void) {
  pthread_once(&key_decoder_once, key_decoder_init);
  if (!key_decoder_ok)
    return NULL;
  struct key_decoder *d = pthread_getspecific(key_decoder_key);
  if (d != NULL)
    return d;
  if ((d = calloc(1, sizeof(*d))) == NULL)
    return NULL;
  d->dctx = OSSL_DECODER_CTX_new_for_pkey(&d->pkey, "DER", "PrivateKeyInfo", NULL, EVP_PKEY_KEYPAIR,
                                          NULL, NULL);
  if (d->dctx == NULL || pthread_setspecific(key_decoder_key, d) != 0) {
    key_decoder_free(d);
    return NULL;
  }
  return d;
}

static EVP_PKEY *key_read_pkcs8(const char *pem, size_t len) {
  const char *begin = "-----BEGIN PRIVATE KEY-----";
  const char *start = memmem(pem, len, "-----BEGIN ", 11);
  if (start == NULL || (size_t)(pem + len - start) < strlen(begin) ||
      memcmp(start, begin, strlen(begin)) != 0)
    return NULL;
  struct key_decoder *d = key_decoder_get();
  BIO *b = d != NULL ? BIO_new_mem_buf(pem, (int)len) : NULL;
  if (b == NULL)
    return NULL;
  char *name = NULL, *header = NULL;
  unsigned char *data = NULL;
  long dlen = 0;
  EVP_PKEY *key = NULL;
  ERR_set_mark();
  if (PEM_read_bio(b, &name, &header, &data, &dlen) && strcmp(name, PEM_STRING_PKCS8INF) == 0 &&
      header[0] == '\0') {
    const unsigned char *p = data;
    size_t left = (size_t)dlen;
    EVP_PKEY_free(d->pkey);
    d->pkey = NULL;
    if (OSSL_DECODER_from_data(d->dctx, &p, &left) && left == 0) {
      key = d->pkey;
      d->pkey = NULL;
    }
  }
  ERR_pop_to_mark();
  BIO_free(b);
  OPENSSL_free(name);
  OPENSSL_free(header);
  OPENSSL_clear_free(data, dlen > 0 ? (size_t)dlen : 0);
  return key;
}

int certinfo_key_read(const char *pem, size_t len, const char *passphrase, const char *field,
                      EVP_PKEY **out, struct tp_err *err) {
  *out = NULL;
  if (len > INT_MAX)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: too large", field);
  if ((*out = key_read_pkcs8(pem, len)) != NULL)
    return 0;
  BIO *b = BIO_new_mem_buf(pem, (int)len);
  if (b == NULL)
    return oom(err);
  struct pass_cb_data pw = {passphrase, 0};
  EVP_PKEY *key = PEM_read_bio_PrivateKey(b, NULL, pass_cb, &pw);
  BIO_free(b);
  if (key != NULL) {
    ERR_clear_error();
    *out = key;
    return 0;
  }
  if (pw.asked) {
    /* The reason OpenSSL gives ("bad decrypt", "unsupported") says
     * nothing more than this does. */
    ERR_clear_error();
    if (passphrase == NULL || passphrase[0] == '\0')
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "passphrase: the private key is encrypted; a passphrase is required");
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "passphrase: wrong passphrase for %s",
                      field);
  }
  tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: no private key found", field);
  tp_err_append_openssl(err);
  return -1;
}

char *certinfo_key_pem(EVP_PKEY *key) {
  BIO *b = BIO_new(BIO_s_mem());
  if (b == NULL)
    return NULL;
  char *s = NULL;
  if (PEM_write_bio_PKCS8PrivateKey(b, key, NULL, NULL, 0, NULL, NULL))
    s = bio_strdup(b);
  ERR_clear_error();
  /* The buffer held the key in clear. */
  char *data;
  long n = BIO_get_mem_data(b, &data);
  if (n > 0)
    OPENSSL_cleanse(data, (size_t)n);
  BIO_free(b);
  return s;
}

/* OpenSSL 3's legacy provider (RC2, RC4, DES, ...), loaded on first need.
 * Loading any provider explicitly turns off the implicit loading of the
 * default provider, so the default provider is loaded explicitly first.
 * Part of the process context: loaded once, never unloaded. */
static pthread_once_t legacy_once = PTHREAD_ONCE_INIT;
static OSSL_PROVIDER *default_provider;
static OSSL_PROVIDER *legacy_provider;

static void legacy_load(void) {
  default_provider = OSSL_PROVIDER_load(NULL, "default");
  legacy_provider = OSSL_PROVIDER_load(NULL, "legacy");
}

static int legacy_ensure(void) {
  pthread_once(&legacy_once, legacy_load);
  return default_provider != NULL && legacy_provider != NULL;
}

/* Orders the PKCS#12 certificates: leaf, then each issuer found in pool. */
static int chain_from_pool(X509 *leaf, STACK_OF(X509) *pool, STACK_OF(X509) **out) {
  STACK_OF(X509) *chain = sk_X509_new_null();
  if (chain == NULL || !sk_X509_push(chain, leaf)) {
    sk_X509_free(chain);
    return -1;
  }
  X509_up_ref(leaf);
  X509 *last = leaf;
  while (X509_check_issued(last, last) != X509_V_OK) {
    X509 *next = NULL;
    for (int i = 0; i < sk_X509_num(pool); i++) {
      X509 *c = sk_X509_value(pool, i);
      if (X509_cmp(c, last) != 0 && X509_check_issued(c, last) == X509_V_OK) {
        next = c;
        (void)sk_X509_delete(pool, i);
        break;
      }
    }
    if (next == NULL)
      break;
    if (!sk_X509_push(chain, next)) {
      X509_free(next);
      certinfo_certs_free(chain);
      return -1;
    }
    last = next;
  }
  *out = chain;
  return 0;
}

/* Key-derivation work a PKCS#12 file may ask for, as the sum of the
 * iteration counts of its MAC and of every encrypted part and key (see
 * certinfo.h). */
#define PKCS12_MAX_ITERATIONS 1000000

/* Adds an ASN.1 INTEGER iteration count to *sum (anything beyond a long,
 * or negative, counts as too many). */
static void iterations_add(const ASN1_INTEGER *iter, uint64_t *sum) {
  long n = iter != NULL ? ASN1_INTEGER_get(iter) : 1;
  *sum += n < 0 ? (uint64_t)PKCS12_MAX_ITERATIONS + 1 : (uint64_t)n;
}

/* The iterations of a password-based encryption algorithm: PKCS#12 and
 * PKCS#5 v1 schemes (PBEPARAM), PBES2 with PBKDF2. Other key derivations
 * (scrypt) are not counted here: counted as too many, so that no cost
 * is left unbounded. */
static void pbe_iterations_add(const X509_ALGOR *alg, uint64_t *sum) {
  const ASN1_OBJECT *oid;
  const void *param;
  int ptype;
  X509_ALGOR_get0(&oid, &ptype, &param, alg);
  if (ptype != V_ASN1_SEQUENCE) {
    *sum += PKCS12_MAX_ITERATIONS + 1;
    return;
  }
  ASN1_TYPE t = {.type = V_ASN1_SEQUENCE, .value.sequence = (ASN1_STRING *)param};
  if (OBJ_obj2nid(oid) != NID_pbes2) {
    PBEPARAM *pbe = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBEPARAM), &t);
    if (pbe != NULL)
      iterations_add(pbe->iter, sum);
    else
      *sum += PKCS12_MAX_ITERATIONS + 1;
    PBEPARAM_free(pbe);
    return;
  }
  PBE2PARAM *pbe2 = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBE2PARAM), &t);
  PBKDF2PARAM *kdf = NULL;
  if (pbe2 != NULL && OBJ_obj2nid(pbe2->keyfunc->algorithm) == NID_id_pbkdf2 &&
      pbe2->keyfunc->parameter != NULL && pbe2->keyfunc->parameter->type == V_ASN1_SEQUENCE)
    kdf = ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBKDF2PARAM), pbe2->keyfunc->parameter);
  if (kdf != NULL)
    iterations_add(kdf->iter, sum);
  else
    *sum += PKCS12_MAX_ITERATIONS + 1;
  PBKDF2PARAM_free(kdf);
  PBE2PARAM_free(pbe2);
}

static void bags_iterations_add(const STACK_OF(PKCS12_SAFEBAG) *bags, int depth, uint64_t *sum) {
  for (int i = 0; i < sk_PKCS12_SAFEBAG_num(bags) && *sum <= PKCS12_MAX_ITERATIONS; i++) {
    const PKCS12_SAFEBAG *bag = sk_PKCS12_SAFEBAG_value(bags, i);
    switch (PKCS12_SAFEBAG_get_nid(bag)) {
    case NID_pkcs8ShroudedKeyBag: {
      const X509_ALGOR *alg;
      X509_SIG_get0(PKCS12_SAFEBAG_get0_pkcs8(bag), &alg, NULL);
      pbe_iterations_add(alg, sum);
      break;
    }
    case NID_safeContentsBag:
      if (depth < 8)
        bags_iterations_add(PKCS12_SAFEBAG_get0_safes(bag), depth + 1, sum);
      else
        *sum += PKCS12_MAX_ITERATIONS + 1;
      break;
    default:
      break;
    }
  }
}

static int pkcs12_too_costly(struct tp_err *err) {
  return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                    "pfx: the file asks for more than %d key-derivation iterations in all (MAC, "
                    "encrypted parts and keys); files of openssl, Windows, Java and macOS use a "
                    "few thousand",
                    PKCS12_MAX_ITERATIONS);
}

/* Sums the iterations of p12's MAC and of every encrypted part and key
 * inside, refusing the file beyond PKCS12_MAX_ITERATIONS before any of
 * them is spent. An encrypted part is opened (with pass, as PKCS12_parse
 * will) to see the keys inside only once its own cost is known to fit.
 * 0, or -1 with err. */
static int pkcs12_cost_check(PKCS12 *p12, const char *pass, struct tp_err *err) {
  uint64_t sum = 0;
  if (PKCS12_mac_present(p12)) {
    const ASN1_INTEGER *iter = NULL;
    PKCS12_get0_mac(NULL, NULL, NULL, &iter, p12);
    iterations_add(iter, &sum);
  }
  STACK_OF(PKCS7) *safes = sum <= PKCS12_MAX_ITERATIONS ? PKCS12_unpack_authsafes(p12) : NULL;
  for (int i = 0; i < sk_PKCS7_num(safes) && sum <= PKCS12_MAX_ITERATIONS; i++) {
    PKCS7 *p7 = sk_PKCS7_value(safes, i);
    STACK_OF(PKCS12_SAFEBAG) *bags = NULL;
    int nid = OBJ_obj2nid(p7->type);
    if (nid == NID_pkcs7_data) {
      bags = PKCS12_unpack_p7data(p7);
    } else if (nid == NID_pkcs7_encrypted && p7->d.encrypted != NULL &&
               p7->d.encrypted->enc_data != NULL) {
      pbe_iterations_add(p7->d.encrypted->enc_data->algorithm, &sum);
      if (sum <= PKCS12_MAX_ITERATIONS) {
        bags = PKCS12_unpack_p7encdata(p7, pass, pass != NULL ? -1 : 0);
        if (bags == NULL && legacy_ensure()) /* RC2 and the like */
          bags = PKCS12_unpack_p7encdata(p7, pass, pass != NULL ? -1 : 0);
      }
    }
    bags_iterations_add(bags, 0, &sum);
    sk_PKCS12_SAFEBAG_pop_free(bags, PKCS12_SAFEBAG_free);
  }
  sk_PKCS7_pop_free(safes, PKCS7_free);
  ERR_clear_error();
  return sum > PKCS12_MAX_ITERATIONS ? pkcs12_too_costly(err) : 0;
}

int certinfo_pkcs12_read(const unsigned char *der, size_t len, const char *passphrase,
                         EVP_PKEY **key, STACK_OF(X509) **chain, struct tp_err *err) {
  *key = NULL;
  *chain = NULL;
  if (len > LONG_MAX)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "pfx: too large");
  const unsigned char *p = der;
  PKCS12 *p12 = d2i_PKCS12(NULL, &p, (long)len);
  if (p12 == NULL) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "pfx: not a PKCS#12 file");
    tp_err_append_openssl(err);
    return -1;
  }
  int have_pass = passphrase != NULL && passphrase[0] != '\0';
  /* Every iteration count comes from the file: bound the work before any
   * of it is done (the MAC's first). */
  const ASN1_INTEGER *mac_iter = NULL;
  uint64_t mac_cost = 0; /* the first work done: checked on its own */
  if (PKCS12_mac_present(p12)) {
    PKCS12_get0_mac(NULL, NULL, NULL, &mac_iter, p12);
    iterations_add(mac_iter, &mac_cost);
  }
  if (mac_cost > PKCS12_MAX_ITERATIONS) {
    PKCS12_free(p12);
    return pkcs12_too_costly(err);
  }
  /* Check the MAC first: it tells a wrong passphrase apart from a file
   * that needs an algorithm we lack. An empty password may have been
   * encoded either as no password or as an empty string. */
  const char *pass = have_pass ? passphrase : NULL;
  if (PKCS12_mac_present(p12)) {
    int ok = have_pass ? PKCS12_verify_mac(p12, passphrase, -1) : PKCS12_verify_mac(p12, NULL, 0);
    if (!ok && !have_pass && PKCS12_verify_mac(p12, "", 0)) {
      ok = 1;
      pass = "";
    }
    if (!ok) {
      PKCS12_free(p12);
      ERR_clear_error();
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        have_pass ? "passphrase: wrong passphrase for the PKCS#12 file"
                                  : "passphrase: the PKCS#12 file is protected; a passphrase "
                                    "is required");
    }
  }
  if (pkcs12_cost_check(p12, pass, err) != 0) {
    PKCS12_free(p12);
    return -1;
  }
  EVP_PKEY *pkey = NULL;
  X509 *cert = NULL;
  STACK_OF(X509) *ca = NULL;
  if (!PKCS12_parse(p12, have_pass ? passphrase : "", &pkey, &cert, &ca)) {
    /* Most likely RC2-40 or another cipher only the legacy provider has. */
    ERR_clear_error();
    int legacy = legacy_ensure();
    if (!legacy || !PKCS12_parse(p12, have_pass ? passphrase : "", &pkey, &cert, &ca)) {
      PKCS12_free(p12);
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                 legacy ? "pfx: cannot be decrypted"
                        : "pfx: needs OpenSSL's legacy provider, which could not be loaded");
      tp_err_append_openssl(err);
      return -1;
    }
  }
  PKCS12_free(p12);
  int rc = -1;
  if (pkey == NULL) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "pfx: holds no private key");
    goto done;
  }
  if (cert == NULL) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "pfx: holds no certificate for its private key");
    goto done;
  }
  if (chain_from_pool(cert, ca, chain) != 0) {
    oom(err);
    goto done;
  }
  *key = pkey;
  pkey = NULL;
  rc = 0;
done:
  EVP_PKEY_free(pkey);
  X509_free(cert);
  certinfo_certs_free(ca);
  ERR_clear_error();
  return rc;
}

const char *certinfo_key_algorithm(const EVP_PKEY *key) {
  switch (EVP_PKEY_get_base_id(key)) {
  case EVP_PKEY_RSA:
    return "RSA";
  case EVP_PKEY_EC:
    return "EC";
  case EVP_PKEY_ED25519:
    return "ED25519";
  case EVP_PKEY_ED448:
    return "ED448";
  default:
    return NULL;
  }
}

char *certinfo_name(const X509_NAME *name) {
  BIO *b = BIO_new(BIO_s_mem());
  if (b == NULL)
    return NULL;
  char *s = NULL;
  if (X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253) >= 0)
    s = bio_strdup(b);
  BIO_free(b);
  ERR_clear_error();
  return s;
}

int certinfo_time(const ASN1_TIME *t, time_t *out) {
  struct tm tm;
  if (t == NULL || !ASN1_TIME_to_tm(t, &tm)) {
    ERR_clear_error();
    return -1;
  }
  *out = timegm(&tm);
  return 0;
}

void certinfo_time_format(time_t t, char buf[32]) {
  struct tm tm;
  if (gmtime_r(&t, &tm) == NULL || strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf(buf, 32, "@%lld", (long long)t);
}

char *certinfo_fingerprint(X509 *x) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (!X509_digest(x, EVP_sha256(), md, &n) || n == 0) {
    ERR_clear_error();
    return NULL;
  }
  char *s = malloc(n * 3);
  if (s == NULL)
    return NULL;
  for (unsigned int i = 0; i < n; i++)
    snprintf(s + 3 * i, 4, "%02X%s", md[i], i + 1 < n ? ":" : "");
  return s;
}

char *certinfo_integer_hex(const ASN1_INTEGER *i) {
  BIGNUM *bn = ASN1_INTEGER_to_BN(i, NULL);
  if (bn == NULL) {
    ERR_clear_error();
    return NULL;
  }
  char *hex = BN_bn2hex(bn); /* upper case */
  BN_free(bn);
  if (hex == NULL)
    return NULL;
  char *s = strdup(hex);
  OPENSSL_free(hex);
  return s;
}

static void strv_free(char **v, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(v[i]);
  free(v);
}

static int strv_push(char ***v, size_t *n, char *s) {
  if (s == NULL)
    return -1;
  char **nv = realloc(*v, (*n + 1) * sizeof(*nv));
  if (nv == NULL) {
    free(s);
    return -1;
  }
  nv[(*n)++] = s;
  *v = nv;
  return 0;
}

int certinfo_sans(X509 *x, char ***dns, size_t *n_dns, char ***ips, size_t *n_ips) {
  *dns = *ips = NULL;
  *n_dns = *n_ips = 0;
  GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  ERR_clear_error();
  if (names == NULL)
    return 0;
  int rc = 0;
  for (int i = 0; i < sk_GENERAL_NAME_num(names) && rc == 0; i++) {
    const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
    if (gn->type == GEN_DNS) {
      const ASN1_STRING *s = gn->d.dNSName;
      rc =
          strv_push(dns, n_dns,
                    strndup((const char *)ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s)));
    } else if (gn->type == GEN_IPADD) {
      const ASN1_OCTET_STRING *s = gn->d.iPAddress;
      char buf[INET6_ADDRSTRLEN];
      int len = ASN1_STRING_length(s);
      int af = len == 4 ? AF_INET : len == 16 ? AF_INET6 : -1;
      if (af < 0 || inet_ntop(af, ASN1_STRING_get0_data(s), buf, sizeof(buf)) == NULL)
        continue; /* not an address (a name constraint form): not listed */
      rc = strv_push(ips, n_ips, strdup(buf));
    }
  }
  GENERAL_NAMES_free(names);
  if (rc != 0) {
    strv_free(*dns, *n_dns);
    strv_free(*ips, *n_ips);
    *dns = *ips = NULL;
    *n_dns = *n_ips = 0;
  }
  return rc;
}

int certinfo_cert_check_time(X509 *x, time_t now, const char *field, const char *which,
                             struct tp_err *err) {
  time_t nb, na;
  if (certinfo_time(X509_get0_notBefore(x), &nb) != 0 ||
      certinfo_time(X509_get0_notAfter(x), &na) != 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: %s has an invalid validity period",
                      field, which);
  char when[32];
  if (na < now) {
    certinfo_time_format(na, when);
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: %s expired at %s (set allow_invalid_time to accept it)", field, which,
                      when);
  }
  if (nb > now) {
    certinfo_time_format(nb, when);
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: %s is not valid before %s (set allow_invalid_time to accept it)", field,
                      which, when);
  }
  return 0;
}

int certinfo_chain_check_time(STACK_OF(X509) *chain, time_t now, const char *field,
                              struct tp_err *err) {
  for (int i = 0; i < sk_X509_num(chain); i++) {
    char which[32] = "certificate";
    if (i > 0)
      snprintf(which, sizeof(which), "certificate %d", i + 1);
    if (certinfo_cert_check_time(sk_X509_value(chain, i), now, field, which, err) != 0)
      return -1;
  }
  return 0;
}

int certinfo_chain_check_order(STACK_OF(X509) *chain, const char *field, struct tp_err *err) {
  for (int i = 0; i + 1 < sk_X509_num(chain); i++) {
    X509 *subject = sk_X509_value(chain, i);
    X509 *issuer = sk_X509_value(chain, i + 1);
    /* Names, key identifiers and key usage; then the signature itself. */
    if (X509_check_issued(issuer, subject) != X509_V_OK)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "%s: certificate %d does not issue certificate %d (the chain must be "
                        "leaf first, each certificate followed by its issuer)",
                        field, i + 2, i + 1);
    EVP_PKEY *pub = X509_get0_pubkey(issuer);
    if (pub == NULL || X509_verify(subject, pub) <= 0) {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                 "%s: the signature of certificate %d does not verify with the key of "
                 "certificate %d",
                 field, i + 1, i + 2);
      tp_err_append_openssl(err);
      return -1;
    }
  }
  return 0;
}

const char *certinfo_ocsp_status_name(int status) {
  switch (status) {
  case V_OCSP_CERTSTATUS_GOOD:
    return "good";
  case V_OCSP_CERTSTATUS_REVOKED:
    return "revoked";
  default:
    return "unknown";
  }
}

/* The single response of bs naming leaf (issued by issuer), matched with
 * whichever hash algorithm the responder used for the CertID. */
static OCSP_SINGLERESP *ocsp_find(OCSP_BASICRESP *bs, X509 *leaf, X509 *issuer) {
  for (int i = 0; i < OCSP_resp_count(bs); i++) {
    OCSP_SINGLERESP *single = OCSP_resp_get0(bs, i);
    ASN1_OBJECT *md_oid = NULL;
    if (!OCSP_id_get0_info(NULL, &md_oid, NULL, NULL,
                           (OCSP_CERTID *)OCSP_SINGLERESP_get0_id(single)))
      continue;
    const EVP_MD *md = EVP_get_digestbyobj(md_oid);
    if (md == NULL)
      continue;
    OCSP_CERTID *id = OCSP_cert_to_id(md, leaf, issuer);
    if (id == NULL)
      continue;
    int match = OCSP_id_cmp(id, OCSP_SINGLERESP_get0_id(single)) == 0;
    OCSP_CERTID_free(id);
    if (match)
      return single;
  }
  ERR_clear_error();
  return NULL;
}

int certinfo_ocsp_check(const unsigned char *der, size_t len, X509 *leaf, X509 *issuer, time_t now,
                        int check_signer_time, struct certinfo_ocsp *out, struct tp_err *err) {
  if (len > LONG_MAX)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "ocsp_response: too large");
  const unsigned char *p = der;
  OCSP_RESPONSE *resp = d2i_OCSP_RESPONSE(NULL, &p, (long)len);
  OCSP_BASICRESP *bs = NULL;
  X509_STORE *store = NULL;
  STACK_OF(X509) *untrusted = NULL;
  int rc = -1;
  if (resp == NULL) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "ocsp_response: not a DER OCSPResponse");
    tp_err_append_openssl(err);
    goto done;
  }
  int status = OCSP_response_status(resp);
  if (status != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "ocsp_response: response status is %s (%d), not successful",
               OCSP_response_status_str(status), status);
    goto done;
  }
  bs = OCSP_response_get1_basic(resp);
  if (bs == NULL) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "ocsp_response: not a basic OCSP response");
    tp_err_append_openssl(err);
    goto done;
  }
  OCSP_SINGLERESP *single = ocsp_find(bs, leaf, issuer);
  if (single == NULL) {
    char *serial = certinfo_integer_hex(X509_get0_serialNumber(leaf));
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "ocsp_response: holds no response for this certificate (serial %s)",
               serial ? serial : "?");
    free(serial);
    goto done;
  }
  /* The signer must be the issuer, or a responder the issuer delegated
   * to (OCSP_basic_verify checks the delegation). The issuer is the only
   * trust anchor, hence a partial chain. */
  store = X509_STORE_new();
  untrusted = sk_X509_new_null();
  if (store == NULL || untrusted == NULL || !X509_STORE_add_cert(store, issuer) ||
      !sk_X509_push(untrusted, issuer)) {
    oom(err);
    goto done;
  }
  X509_up_ref(issuer);
  X509_VERIFY_PARAM *vp = X509_STORE_get0_param(store);
  X509_VERIFY_PARAM_set_flags(vp, X509_V_FLAG_PARTIAL_CHAIN);
  if (check_signer_time)
    X509_VERIFY_PARAM_set_time(vp, now);
  else
    X509_VERIFY_PARAM_set_flags(vp, X509_V_FLAG_NO_CHECK_TIME);
  if (OCSP_basic_verify(bs, untrusted, store, 0) <= 0) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "ocsp_response: signature does not verify with the certificate's issuer or a "
               "responder it delegated to");
    tp_err_append_openssl(err);
    goto done;
  }
  int reason;
  ASN1_GENERALIZEDTIME *rev = NULL, *thisupd = NULL, *nextupd = NULL;
  out->status = OCSP_single_get0_status(single, &reason, &rev, &thisupd, &nextupd);
  char when[32];
  if (certinfo_time(thisupd, &out->this_update) != 0) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "ocsp_response: invalid thisUpdate");
    goto done;
  }
  /* Five minutes of clock skew, as OCSP_check_validity suggests. */
  if (out->this_update > now + 300) {
    certinfo_time_format(out->this_update, when);
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "ocsp_response: not valid before %s", when);
    goto done;
  }
  out->has_next_update = nextupd != NULL;
  if (nextupd != NULL) {
    if (certinfo_time(nextupd, &out->next_update) != 0) {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "ocsp_response: invalid nextUpdate");
      goto done;
    }
    if (out->next_update < now) {
      certinfo_time_format(out->next_update, when);
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "ocsp_response: expired at %s", when);
      goto done;
    }
  }
  rc = 0;
done:
  certinfo_certs_free(untrusted);
  X509_STORE_free(store);
  OCSP_BASICRESP_free(bs);
  OCSP_RESPONSE_free(resp);
  ERR_clear_error();
  return rc;
}

int certinfo_ocsp_next_update(const unsigned char *der, size_t len, X509 *leaf, X509 *issuer,
                              int *has_next_update, time_t *next_update, int *status) {
  if (len > LONG_MAX)
    return -1;
  const unsigned char *p = der;
  OCSP_RESPONSE *resp = d2i_OCSP_RESPONSE(NULL, &p, (long)len);
  OCSP_BASICRESP *bs = resp ? OCSP_response_get1_basic(resp) : NULL;
  OCSP_SINGLERESP *single = bs ? ocsp_find(bs, leaf, issuer) : NULL;
  int rc = -1;
  if (single != NULL) {
    int reason;
    ASN1_GENERALIZEDTIME *rev = NULL, *thisupd = NULL, *nextupd = NULL;
    int st = OCSP_single_get0_status(single, &reason, &rev, &thisupd, &nextupd);
    if (status != NULL)
      *status = st;
    *has_next_update = nextupd != NULL;
    rc = nextupd == NULL || certinfo_time(nextupd, next_update) == 0 ? 0 : -1;
  }
  OCSP_BASICRESP_free(bs);
  OCSP_RESPONSE_free(resp);
  ERR_clear_error();
  return rc;
}

char *certinfo_ocsp_url(X509 *leaf) {
  STACK_OF(OPENSSL_STRING) *urls = X509_get1_ocsp(leaf);
  const char *found = "";
  for (int i = 0; i < sk_OPENSSL_STRING_num(urls); i++) {
    const char *u = sk_OPENSSL_STRING_value(urls, i);
    if (OPENSSL_strncasecmp(u, "http://", 7) == 0 && strlen(u) <= CERTINFO_OCSP_URL_MAX) {
      found = u;
      break;
    }
  }
  char *out = strdup(found);
  X509_email_free(urls); /* frees a stack of OPENSSL_STRING, as X509_get1_ocsp documents */
  return out;
}
