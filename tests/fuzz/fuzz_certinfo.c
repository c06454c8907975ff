/* PEM, PKCS#12, CRL and OCSP inspection (common/certinfo.c) through the
 * validation the server runs on every write (common/tlsconf.c), and
 * certinfo's own readers. The first byte picks what the parts after it
 * (split at FUZZ_SEP) are:
 *
 *   0  Certificate: chain PEM, private key PEM, passphrase, OCSP (DER)
 *   1  Certificate from PKCS#12: pfx (DER), passphrase, OCSP (DER)
 *   2  TrustBundle: CA PEM
 *   3  RevocationList: CRL as PEM
 *   4  RevocationList: CRL as DER
 *   5  certinfo on a PEM chain: every fact of every certificate
 *   6  OCSP response (DER) checked for the fixture leaf and its issuer
 *   7  a private key PEM and its passphrase
 *
 * (the high bit of the first byte sets allow_invalid_time). What must
 * hold: no crash, leak or undefined behaviour; refusals name a field with
 * INVALID_ARGUMENT (RESOURCE_EXHAUSTED when memory runs out); what is
 * accepted is consistent (a key for a certificate that has one, a chain
 * PEM that reads back as as many certificates as chain_length says). */
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <time.h>

#include "certinfo.h"
#include "fuzz.h"
#include "fuzz_data.h"
#include "tlsconf.h"

static X509 *ocsp_leaf, *ocsp_issuer;

static X509 *pem_cert(const char *pem, size_t len) {
  BIO *b = BIO_new_mem_buf(pem, (int)len);
  X509 *x = b != NULL ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  FUZZ_ASSERT(x != NULL);
  return x;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  ocsp_leaf = pem_cert((const char *)fuzz_data_ocsp_leaf, fuzz_data_ocsp_leaf_len);
  ocsp_issuer = pem_cert((const char *)fuzz_data_ocsp_issuer, fuzz_data_ocsp_issuer_len);
  return 0;
}

static void check_refusal(const struct tp_err *err) {
  FUZZ_ASSERT(err->status == GRPC_STATUS_INVALID_ARGUMENT ||
              err->status == GRPC_STATUS_RESOURCE_EXHAUSTED);
  FUZZ_ASSERT(err->msg[0] != '\0');
}

static size_t pem_count(const char *pem) {
  STACK_OF(X509) *certs = NULL;
  struct tp_err err = {0};
  if (certinfo_certs_read(pem, strlen(pem), "x", &certs, &err) != 0)
    return 0;
  size_t n = (size_t)sk_X509_num(certs);
  certinfo_certs_free(certs);
  return n;
}

static void certificate(struct fuzz_part *p, size_t n, int pfx, int allow_invalid) {
  Tlsplane__V1__Certificate c = TLSPLANE__V1__CERTIFICATE__INIT;
  char *chain = NULL, *key = NULL, *pass = NULL;
  size_t i = 0;
  if (pfx) {
    if (i < n && p[i].n > 0) {
      c.pfx.data = malloc(p[i].n);
      FUZZ_ASSERT(c.pfx.data != NULL);
      memcpy(c.pfx.data, p[i].p, p[i].n);
      c.pfx.len = p[i].n;
    }
    i++;
  } else {
    chain = i < n ? fuzz_strdup(p[i]) : NULL;
    i++;
    key = i < n ? fuzz_strdup(p[i]) : NULL;
    i++;
  }
  pass = i < n ? fuzz_strdup(p[i]) : NULL;
  i++;
  if (i < n && p[i].n > 0) {
    c.ocsp_response.data = malloc(p[i].n);
    FUZZ_ASSERT(c.ocsp_response.data != NULL);
    memcpy(c.ocsp_response.data, p[i].p, p[i].n);
    c.ocsp_response.len = p[i].n;
  }
  /* The message must be freeable as protobuf-c frees unpacked ones. */
  Tlsplane__V1__Certificate *m = malloc(sizeof(*m));
  FUZZ_ASSERT(m != NULL);
  *m = c;
  m->certificate_chain_pem = chain ? chain : strdup("");
  m->private_key_pem = key ? key : strdup("");
  m->passphrase = pass ? pass : strdup("");
  m->allow_invalid_time = allow_invalid;
  FUZZ_ASSERT(m->certificate_chain_pem && m->private_key_pem && m->passphrase);
  char *key_pem = NULL;
  struct tp_err err = {0};
  if (tlsconf_certificate_prepare(m, NULL, time(NULL), &key_pem, &err) != 0) {
    check_refusal(&err);
    FUZZ_ASSERT(key_pem == NULL);
  } else {
    FUZZ_ASSERT(m->has_private_key == (key_pem != NULL));
    FUZZ_ASSERT(m->private_key_pem[0] == '\0' && m->pfx.len == 0);
    FUZZ_ASSERT(pem_count(m->certificate_chain_pem) == (size_t)m->chain_length);
    if (key_pem != NULL) {
      OPENSSL_cleanse(key_pem, strlen(key_pem));
      free(key_pem);
    }
  }
  protobuf_c_message_free_unpacked(&m->base, NULL);
}

static void trust_bundle(struct fuzz_part *p, size_t n, int allow_invalid) {
  Tlsplane__V1__TrustBundle *tb = malloc(sizeof(*tb));
  FUZZ_ASSERT(tb != NULL);
  tlsplane__v1__trust_bundle__init(tb);
  tb->ca_pem = fuzz_strdup(p[0]);
  tb->allow_invalid_time = allow_invalid;
  struct tp_err err = {0};
  if (tlsconf_trust_bundle_prepare(tb, time(NULL), &err) != 0)
    check_refusal(&err);
  else
    FUZZ_ASSERT(pem_count(tb->ca_pem) == tb->n_certificates);
  protobuf_c_message_free_unpacked(&tb->base, NULL);
}

static void revocation_list(struct fuzz_part *p, size_t n, int der) {
  Tlsplane__V1__RevocationList *rl = malloc(sizeof(*rl));
  FUZZ_ASSERT(rl != NULL);
  tlsplane__v1__revocation_list__init(rl);
  if (der) {
    rl->crl_pem = strdup("");
    if (p[0].n > 0) {
      rl->crl_der.data = malloc(p[0].n);
      FUZZ_ASSERT(rl->crl_der.data != NULL);
      memcpy(rl->crl_der.data, p[0].p, p[0].n);
      rl->crl_der.len = p[0].n;
    }
  } else {
    rl->crl_pem = fuzz_strdup(p[0]);
  }
  FUZZ_ASSERT(rl->crl_pem != NULL);
  struct tp_err err = {0};
  if (tlsconf_revocation_list_prepare(rl, &err) != 0) {
    check_refusal(&err);
  } else {
    /* Stored as PEM, which reads back as one CRL. */
    FUZZ_ASSERT(rl->crl_der.len == 0);
    X509_CRL *crl = NULL;
    struct tp_err err2 = {0};
    FUZZ_ASSERT(certinfo_crl_read(rl->crl_pem, "crl_pem", &crl, &err2) == 0);
    X509_CRL_free(crl);
  }
  protobuf_c_message_free_unpacked(&rl->base, NULL);
}

static void facts(struct fuzz_part *p) {
  STACK_OF(X509) *certs = NULL;
  struct tp_err err = {0};
  if (certinfo_certs_read((const char *)p[0].p, p[0].n, "ca_pem", &certs, &err) != 0) {
    check_refusal(&err);
    return;
  }
  FUZZ_ASSERT(sk_X509_num(certs) > 0);
  time_t now = time(NULL);
  for (int i = 0; i < sk_X509_num(certs); i++) {
    X509 *x = sk_X509_value(certs, i);
    free(certinfo_name(X509_get_subject_name(x)));
    free(certinfo_name(X509_get_issuer_name(x)));
    char *fp = certinfo_fingerprint(x);
    FUZZ_ASSERT(fp == NULL || strlen(fp) == 32 * 3 - 1);
    free(fp);
    free(certinfo_integer_hex(X509_get0_serialNumber(x)));
    char **dns = NULL, **ips = NULL;
    size_t n_dns = 0, n_ips = 0;
    if (certinfo_sans(x, &dns, &n_dns, &ips, &n_ips) == 0) {
      for (size_t k = 0; k < n_dns; k++)
        free(dns[k]);
      for (size_t k = 0; k < n_ips; k++)
        free(ips[k]);
      free(dns);
      free(ips);
    }
    time_t t;
    char buf[32];
    if (certinfo_time(X509_get0_notAfter(x), &t) == 0)
      certinfo_time_format(t, buf);
    struct tp_err e = {0};
    if (certinfo_cert_check_time(x, now, "ca_pem", "certificate", &e) != 0)
      check_refusal(&e);
  }
  struct tp_err e = {0};
  if (certinfo_chain_check_order(certs, "certificate_chain_pem", &e) != 0)
    check_refusal(&e);
  char *pem = certinfo_certs_pem(certs);
  FUZZ_ASSERT(pem != NULL);
  FUZZ_ASSERT(pem_count(pem) == (size_t)sk_X509_num(certs));
  free(pem);
  certinfo_certs_free(certs);
}

static void ocsp(struct fuzz_part *p, int check_signer_time) {
  struct certinfo_ocsp info;
  struct tp_err err = {0};
  if (certinfo_ocsp_check(p[0].p, p[0].n, ocsp_leaf, ocsp_issuer, time(NULL), check_signer_time,
                          &info, &err) != 0) {
    check_refusal(&err);
  } else {
    FUZZ_ASSERT(certinfo_ocsp_status_name(info.status) != NULL);
    int has_next = 0;
    time_t next = 0;
    FUZZ_ASSERT(certinfo_ocsp_next_update(p[0].p, p[0].n, ocsp_leaf, ocsp_issuer, &has_next, &next,
                                          NULL) == 0);
    FUZZ_ASSERT(has_next == info.has_next_update && (!has_next || next == info.next_update));
  }
}

static void private_key(struct fuzz_part *p, size_t n) {
  char *pass = n > 1 ? fuzz_strdup(p[1]) : NULL;
  EVP_PKEY *key = NULL;
  struct tp_err err = {0};
  if (certinfo_key_read((const char *)p[0].p, p[0].n, pass, "private_key_pem", &key, &err) != 0) {
    check_refusal(&err);
  } else {
    (void)certinfo_key_algorithm(key);
    char *pem = certinfo_key_pem(key);
    FUZZ_ASSERT(pem != NULL);
    /* What it writes, it reads (unencrypted). */
    EVP_PKEY *again = NULL;
    struct tp_err e = {0};
    FUZZ_ASSERT(certinfo_key_read(pem, strlen(pem), NULL, "private_key_pem", &again, &e) == 0);
    FUZZ_ASSERT(EVP_PKEY_eq(key, again) == 1);
    EVP_PKEY_free(again);
    OPENSSL_cleanse(pem, strlen(pem));
    free(pem);
    EVP_PKEY_free(key);
  }
  free(pass);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  int op = data[0] & 0x7f, allow_invalid = data[0] >> 7;
  struct fuzz_part p[4] = {{0}};
  size_t n = fuzz_split(data + 1, size - 1, p, 4);
  switch (op % 8) {
  case 0:
    certificate(p, n, 0, allow_invalid);
    break;
  case 1:
    certificate(p, n, 1, allow_invalid);
    break;
  case 2:
    trust_bundle(p, n, allow_invalid);
    break;
  case 3:
    revocation_list(p, n, 0);
    break;
  case 4:
    revocation_list(p, n, 1);
    break;
  case 5:
    facts(p);
    break;
  case 6:
    ocsp(p, !allow_invalid);
    break;
  case 7:
    private_key(p, n);
    break;
  }
  return 0;
}
