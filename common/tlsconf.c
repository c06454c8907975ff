/* TLS configuration, part 1: validating and normalising the resources
 * that hold TLS material (Certificate, TrustBundle, RevocationList) and
 * SNI hostname patterns. Cipher policies live in tlsconf_policy.c, the
 * SSL_CTX build in tlsconf_ctx.c. */
#include "tlsconf.h"

#include <ctype.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>

#include "certinfo.h"
#include "tlsconf_int.h"

/* Protobuf member helpers ----------------------------------------------- */

int tlsconf__oom(struct tp_err *err) {
  ERR_clear_error();
  return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
}

int tlsconf__str_take(char **field, char *value) {
  if (value == NULL)
    return -1;
  if (*field != NULL && *field != protobuf_c_empty_string)
    free(*field);
  *field = value;
  return 0;
}

int tlsconf__str_set(char **field, const char *value) {
  return tlsconf__str_take(field, strdup(value));
}

void tlsconf__str_clear(char **field) {
  if (*field != NULL && *field != protobuf_c_empty_string) {
    OPENSSL_cleanse(*field, strlen(*field));
    free(*field);
  }
  *field = (char *)protobuf_c_empty_string;
}

int tlsconf__ts_set(Google__Protobuf__Timestamp **field, time_t t) {
  if (*field == NULL) {
    *field = malloc(sizeof(**field));
    if (*field == NULL)
      return -1;
    google__protobuf__timestamp__init(*field);
  }
  (*field)->seconds = (int64_t)t;
  (*field)->nanos = 0;
  return 0;
}

void tlsconf__ts_clear(Google__Protobuf__Timestamp **field) {
  if (*field != NULL)
    protobuf_c_message_free_unpacked(&(*field)->base, NULL);
  *field = NULL;
}

void tlsconf__strv_take(size_t *n_field, char ***field, char **v, size_t n) {
  for (size_t i = 0; i < *n_field; i++)
    free((*field)[i]);
  free(*field);
  *field = v;
  *n_field = n;
}

int tlsconf__strv_push(size_t *n_field, char ***field, const char *s) {
  char *copy = strdup(s);
  char **nv = copy ? realloc(*field, (*n_field + 1) * sizeof(*nv)) : NULL;
  if (nv == NULL) {
    free(copy);
    return -1;
  }
  nv[(*n_field)++] = copy;
  *field = nv;
  return 0;
}

void tlsconf__bytes_clear(ProtobufCBinaryData *b) {
  if (b->data != NULL) {
    OPENSSL_cleanse(b->data, b->len);
    free(b->data);
  }
  b->data = NULL;
  b->len = 0;
}

/* Certificate ------------------------------------------------------------ */

/* The derived facts of a certificate, computed before any field of the
 * message is touched. */
struct cert_facts {
  const char *key_algorithm; /* static */
  int key_bits;
  char key_curve[64];
  char *subject, *issuer, *serial, *fingerprint, *chain_pem;
  char **dns, **ips;
  size_t n_dns, n_ips;
  time_t not_before, not_after;
  int chain_length;
  int has_ocsp;
  struct certinfo_ocsp ocsp;
};

static void cert_facts_free(struct cert_facts *f) {
  free(f->subject);
  free(f->issuer);
  free(f->serial);
  free(f->fingerprint);
  free(f->chain_pem);
  for (size_t i = 0; i < f->n_dns; i++)
    free(f->dns[i]);
  free(f->dns);
  for (size_t i = 0; i < f->n_ips; i++)
    free(f->ips[i]);
  free(f->ips);
}

/* Key type and size of the leaf's public key; refuses what TLS servers
 * cannot use and RSA below the security level 1 minimum of 1024 bits
 * (such a key would never load into an SSL_CTX). */
static int key_facts(EVP_PKEY *pub, const char *field, struct cert_facts *f, struct tp_err *err) {
  f->key_algorithm = certinfo_key_algorithm(pub);
  if (f->key_algorithm == NULL) {
    const char *type = EVP_PKEY_get0_type_name(pub);
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: unsupported key type %s (RSA, EC, ED25519 or ED448)", field,
                      type ? type : "?");
  }
  f->key_bits = EVP_PKEY_get_bits(pub);
  if (strcmp(f->key_algorithm, "RSA") == 0 && f->key_bits < 1024)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: %d-bit RSA key is too small (at least 1024)", field, f->key_bits);
  f->key_curve[0] = '\0';
  if (strcmp(f->key_algorithm, "EC") == 0) {
    size_t len = 0;
    if (!EVP_PKEY_get_group_name(pub, f->key_curve, sizeof(f->key_curve), &len)) {
      ERR_clear_error();
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "%s: EC key with explicit curve parameters (use a named curve)", field);
    }
  }
  return 0;
}

static int cert_facts_collect(STACK_OF(X509) *chain, struct cert_facts *f, struct tp_err *err) {
  X509 *leaf = sk_X509_value(chain, 0);
  f->chain_length = sk_X509_num(chain);
  f->subject = certinfo_name(X509_get_subject_name(leaf));
  f->issuer = certinfo_name(X509_get_issuer_name(leaf));
  f->serial = certinfo_integer_hex(X509_get0_serialNumber(leaf));
  f->fingerprint = certinfo_fingerprint(leaf);
  f->chain_pem = certinfo_certs_pem(chain);
  if (f->subject == NULL || f->issuer == NULL || f->serial == NULL || f->fingerprint == NULL ||
      f->chain_pem == NULL || certinfo_sans(leaf, &f->dns, &f->n_dns, &f->ips, &f->n_ips) != 0)
    return tlsconf__oom(err);
  if (certinfo_time(X509_get0_notBefore(leaf), &f->not_before) != 0 ||
      certinfo_time(X509_get0_notAfter(leaf), &f->not_after) != 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "certificate_chain_pem: invalid validity period");
  return 0;
}

/* Writes the facts into c. Only allocation can fail here. */
static int cert_facts_store(Tlsplane__V1__Certificate *c, struct cert_facts *f, int has_key) {
  if (tlsconf__str_set(&c->key_algorithm, f->key_algorithm) != 0 ||
      tlsconf__str_set(&c->key_curve, f->key_curve) != 0)
    return -1;
  /* Each string moves into c as soon as it is stored. */
  char **owned[] = {&f->subject, &f->issuer, &f->serial, &f->fingerprint, &f->chain_pem};
  char **dest[] = {&c->subject, &c->issuer, &c->serial_number, &c->sha256_fingerprint,
                   &c->certificate_chain_pem};
  for (size_t i = 0; i < sizeof(owned) / sizeof(owned[0]); i++) {
    if (tlsconf__str_take(dest[i], *owned[i]) != 0)
      return -1;
    *owned[i] = NULL;
  }
  tlsconf__strv_take(&c->n_dns_names, &c->dns_names, f->dns, f->n_dns);
  tlsconf__strv_take(&c->n_ip_addresses, &c->ip_addresses, f->ips, f->n_ips);
  f->dns = f->ips = NULL;
  f->n_dns = f->n_ips = 0;
  c->key_bits = f->key_bits;
  c->chain_length = f->chain_length;
  c->has_private_key = has_key;
  if (tlsconf__ts_set(&c->not_before, f->not_before) != 0 ||
      tlsconf__ts_set(&c->not_after, f->not_after) != 0)
    return -1;
  if (f->has_ocsp) {
    if (tlsconf__str_set(&c->ocsp_cert_status, certinfo_ocsp_status_name(f->ocsp.status)) != 0)
      return -1;
    if (f->ocsp.has_next_update) {
      if (tlsconf__ts_set(&c->ocsp_next_update, f->ocsp.next_update) != 0)
        return -1;
    } else {
      tlsconf__ts_clear(&c->ocsp_next_update);
    }
  } else {
    tlsconf__str_clear(&c->ocsp_cert_status);
    tlsconf__ts_clear(&c->ocsp_next_update);
  }
  return 0;
}

static int size_check(size_t len, size_t max, const char *field, struct tp_err *err) {
  if (len <= max)
    return 0;
  return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: %zu bytes, at most %zu", field, len,
                    max);
}

int tlsconf__ocsp_issuer(const Tlsplane__V1__Certificate *c, STACK_OF(X509) *chain, X509 **out,
                         struct tp_err *err) {
  *out = NULL;
  X509 *leaf = sk_X509_value(chain, 0);
  if (c->issuer_certificate_pem[0] == '\0') {
    if (sk_X509_num(chain) >= 2 && X509_up_ref(sk_X509_value(chain, 1)))
      *out = sk_X509_value(chain, 1);
    return 0;
  }
  STACK_OF(X509) *given = NULL;
  if (certinfo_certs_read(c->issuer_certificate_pem, strlen(c->issuer_certificate_pem),
                          "issuer_certificate_pem", &given, err) != 0)
    return -1;
  int rc = -1;
  X509 *issuer = sk_X509_value(given, 0);
  EVP_PKEY *pub = X509_get0_pubkey(issuer);
  if (sk_X509_num(given) != 1)
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "issuer_certificate_pem: holds %d certificates; give only the one that issued "
               "the leaf",
               sk_X509_num(given));
  else if (X509_check_issued(issuer, leaf) != X509_V_OK || pub == NULL ||
           X509_verify(leaf, pub) <= 0)
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "issuer_certificate_pem: did not issue the leaf certificate (its subject, key "
               "identifier or key does not match the leaf's issuer and signature)");
  else if (X509_up_ref(issuer)) {
    *out = issuer;
    rc = 0;
  } else
    tlsconf__oom(err);
  ERR_clear_error();
  certinfo_certs_free(given);
  return rc;
}

int tlsconf_certificate_prepare(Tlsplane__V1__Certificate *c, const char *existing_key_pem,
                                time_t now, char **key_pem_out, struct tp_err *err) {
  *key_pem_out = NULL;
  EVP_PKEY *key = NULL;
  STACK_OF(X509) *chain = NULL;
  struct cert_facts facts;
  memset(&facts, 0, sizeof(facts));
  char *key_pem = NULL;
  X509 *ocsp_issuer = NULL;
  char *issuer_pem = NULL; /* issuer_certificate_pem rewritten as clean PEM */
  int rc = -1;
  int has_pfx = c->pfx.len > 0;
  int has_key = c->private_key_pem[0] != '\0';
  int has_chain = c->certificate_chain_pem[0] != '\0';
  /* Where the chain and the key came from, for messages. */
  const char *chain_field = "certificate_chain_pem";
  const char *key_field = "private_key_pem";

  if (size_check(strlen(c->certificate_chain_pem), TLSCONF_CHAIN_PEM_MAX, chain_field, err) != 0 ||
      size_check(strlen(c->private_key_pem), TLSCONF_KEY_PEM_MAX, key_field, err) != 0 ||
      size_check(c->pfx.len, TLSCONF_PFX_MAX, "pfx", err) != 0 ||
      size_check(c->ocsp_response.len, TLSCONF_OCSP_MAX, "ocsp_response", err) != 0)
    goto done;

  if (has_pfx) {
    if (has_chain || has_key) {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                 "pfx: give either pfx or certificate_chain_pem and private_key_pem, not both");
      goto done;
    }
    if (certinfo_pkcs12_read(c->pfx.data, c->pfx.len, c->passphrase, &key, &chain, err) != 0)
      goto done;
    chain_field = key_field = "pfx";
  } else {
    if (!has_chain) {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                 has_key ? "certificate_chain_pem: required with private_key_pem"
                         : "certificate_chain_pem: required (or pfx)");
      goto done;
    }
    if (certinfo_certs_read(c->certificate_chain_pem, strlen(c->certificate_chain_pem), chain_field,
                            &chain, err) != 0)
      goto done;
    if (has_key) {
      if (certinfo_key_read(c->private_key_pem, strlen(c->private_key_pem), c->passphrase,
                            key_field, &key, err) != 0)
        goto done;
    } else if (existing_key_pem != NULL && existing_key_pem[0] != '\0') {
      if (certinfo_key_read(existing_key_pem, strlen(existing_key_pem), NULL,
                            "the stored private key", &key, err) != 0) {
        err->status = GRPC_STATUS_INTERNAL;
        goto done;
      }
    }
  }

  if (sk_X509_num(chain) > TLSCONF_CHAIN_CERTS_MAX) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: %d certificates, at most %d", chain_field,
               sk_X509_num(chain), TLSCONF_CHAIN_CERTS_MAX);
    goto done;
  }
  X509 *leaf = sk_X509_value(chain, 0);
  EVP_PKEY *pub = X509_get0_pubkey(leaf);
  if (pub == NULL) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: the certificate's public key does not parse",
               chain_field);
    tp_err_append_openssl(err);
    goto done;
  }
  if (key_facts(pub, chain_field, &facts, err) != 0)
    goto done;
  if (key != NULL && !X509_check_private_key(leaf, key)) {
    ERR_clear_error();
    if (has_key || has_pfx)
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: key does not match the certificate",
                 key_field);
    else
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                 "certificate_chain_pem: the certificate does not match the stored private key "
                 "(give private_key_pem with a new key)");
    goto done;
  }
  if (certinfo_chain_check_order(chain, chain_field, err) != 0)
    goto done;
  if (!c->allow_invalid_time && certinfo_chain_check_time(chain, now, chain_field, err) != 0)
    goto done;
  if (tlsconf__ocsp_issuer(c, chain, &ocsp_issuer, err) != 0)
    goto done;
  if (c->issuer_certificate_pem[0] != '\0') {
    STACK_OF(X509) *one = sk_X509_new_null();
    if (one == NULL || !sk_X509_push(one, ocsp_issuer) ||
        (issuer_pem = certinfo_certs_pem(one)) == NULL) {
      sk_X509_free(one);
      tlsconf__oom(err);
      goto done;
    }
    sk_X509_free(one); /* the reference stays ocsp_issuer's */
  }
  if (c->ocsp_response.len > 0) {
    if (ocsp_issuer == NULL) {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                 "ocsp_response: checking it needs the leaf's issuer: give it in "
                 "issuer_certificate_pem (not served to clients) or after the leaf in "
                 "certificate_chain_pem (served)");
      goto done;
    }
    if (certinfo_ocsp_check(c->ocsp_response.data, c->ocsp_response.len, leaf, ocsp_issuer, now,
                            !c->allow_invalid_time, &facts.ocsp, err) != 0)
      goto done;
    facts.has_ocsp = 1;
  }
  if (cert_facts_collect(chain, &facts, err) != 0)
    goto done;
  char *url = certinfo_ocsp_url(leaf);
  if (url == NULL || tlsconf__str_take(&c->ocsp_responder_url, url) != 0) {
    tlsconf__oom(err);
    goto done;
  }
  if (key != NULL && (key_pem = certinfo_key_pem(key)) == NULL) {
    tlsconf__oom(err);
    goto done;
  }
  if (cert_facts_store(c, &facts, key != NULL) != 0) {
    tlsconf__oom(err);
    goto done;
  }
  if (issuer_pem != NULL) {
    tlsconf__str_take(&c->issuer_certificate_pem, issuer_pem); /* cannot fail: not NULL */
    issuer_pem = NULL;
  }
  tlsconf__str_clear(&c->private_key_pem);
  tlsconf__str_clear(&c->passphrase);
  tlsconf__bytes_clear(&c->pfx);
  c->allow_invalid_time = 0;
  *key_pem_out = key_pem;
  key_pem = NULL;
  rc = 0;
done:
  if (key_pem != NULL) {
    OPENSSL_cleanse(key_pem, strlen(key_pem));
    free(key_pem);
  }
  cert_facts_free(&facts);
  X509_free(ocsp_issuer);
  free(issuer_pem);
  EVP_PKEY_free(key);
  certinfo_certs_free(chain);
  return rc;
}

int tlsconf_certificate_ocsp_target(const Tlsplane__V1__Certificate *c, X509 **leaf, X509 **issuer,
                                    struct tp_err *err) {
  *leaf = *issuer = NULL;
  STACK_OF(X509) *chain = NULL;
  if (certinfo_certs_read(c->certificate_chain_pem, strlen(c->certificate_chain_pem),
                          "certificate_chain_pem", &chain, err) != 0)
    return -1;
  int rc = tlsconf__ocsp_issuer(c, chain, issuer, err);
  if (rc == 0 && *issuer == NULL)
    rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                    "the leaf's issuer is needed to ask for and check an OCSP response: give it "
                    "in issuer_certificate_pem or after the leaf in certificate_chain_pem");
  if (rc == 0 && !X509_up_ref(sk_X509_value(chain, 0)))
    rc = tlsconf__oom(err);
  if (rc == 0)
    *leaf = sk_X509_value(chain, 0);
  else {
    X509_free(*issuer);
    *issuer = NULL;
  }
  certinfo_certs_free(chain);
  return rc;
}

/* TrustBundle ------------------------------------------------------------ */

static Tlsplane__V1__TrustedCertificate *trusted_new(X509 *x) {
  Tlsplane__V1__TrustedCertificate *t = malloc(sizeof(*t));
  if (t == NULL)
    return NULL;
  tlsplane__v1__trusted_certificate__init(t);
  time_t nb, na;
  if (tlsconf__str_take(&t->subject, certinfo_name(X509_get_subject_name(x))) != 0 ||
      tlsconf__str_take(&t->issuer, certinfo_name(X509_get_issuer_name(x))) != 0 ||
      tlsconf__str_take(&t->sha256_fingerprint, certinfo_fingerprint(x)) != 0 ||
      certinfo_time(X509_get0_notBefore(x), &nb) != 0 ||
      certinfo_time(X509_get0_notAfter(x), &na) != 0 || tlsconf__ts_set(&t->not_before, nb) != 0 ||
      tlsconf__ts_set(&t->not_after, na) != 0) {
    protobuf_c_message_free_unpacked(&t->base, NULL);
    return NULL;
  }
  t->is_ca = (X509_get_extension_flags(x) & EXFLAG_CA) != 0;
  return t;
}

int tlsconf_trust_bundle_prepare(Tlsplane__V1__TrustBundle *tb, time_t now, struct tp_err *err) {
  STACK_OF(X509) *certs = NULL;
  Tlsplane__V1__TrustedCertificate **list = NULL;
  size_t n = 0;
  char *pem = NULL;
  int rc = -1;
  if (tb->ca_pem[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "ca_pem: required");
  if (size_check(strlen(tb->ca_pem), TLSCONF_TRUST_BUNDLE_PEM_MAX, "ca_pem", err) != 0 ||
      certinfo_certs_read(tb->ca_pem, strlen(tb->ca_pem), "ca_pem", &certs, err) != 0)
    return -1;
  int count = sk_X509_num(certs);
  if (count > TLSCONF_TRUST_BUNDLE_CERTS_MAX) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "ca_pem: %d certificates, at most %d", count,
               TLSCONF_TRUST_BUNDLE_CERTS_MAX);
    goto done;
  }
  for (int i = 0; i < count && !tb->allow_invalid_time; i++) {
    X509 *x = sk_X509_value(certs, i);
    char *subject = certinfo_name(X509_get_subject_name(x));
    char which[384];
    snprintf(which, sizeof(which), "certificate %d (%s)", i + 1, subject ? subject : "?");
    free(subject);
    if (certinfo_cert_check_time(x, now, "ca_pem", which, err) != 0)
      goto done;
  }
  list = calloc((size_t)count, sizeof(*list));
  if (list == NULL || (pem = certinfo_certs_pem(certs)) == NULL) {
    tlsconf__oom(err);
    goto done;
  }
  for (n = 0; n < (size_t)count; n++) {
    if ((list[n] = trusted_new(sk_X509_value(certs, (int)n))) == NULL) {
      tlsconf__oom(err);
      goto done;
    }
  }
  for (size_t i = 0; i < tb->n_certificates; i++)
    protobuf_c_message_free_unpacked(&tb->certificates[i]->base, NULL);
  free(tb->certificates);
  tb->certificates = list;
  tb->n_certificates = n;
  list = NULL;
  tlsconf__str_take(&tb->ca_pem, pem);
  pem = NULL;
  tb->allow_invalid_time = 0;
  rc = 0;
done:
  if (list != NULL) {
    for (size_t i = 0; i < n; i++)
      protobuf_c_message_free_unpacked(&list[i]->base, NULL);
    free(list);
  }
  free(pem);
  certinfo_certs_free(certs);
  return rc;
}

/* RevocationList --------------------------------------------------------- */

int tlsconf_revocation_list_prepare(Tlsplane__V1__RevocationList *rl, struct tp_err *err) {
  X509_CRL *crl = NULL;
  int has_pem = rl->crl_pem[0] != '\0';
  int has_der = rl->crl_der.len > 0;
  if (has_pem && has_der)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "crl_der: give either crl_pem or crl_der, not both");
  if (!has_pem && !has_der)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "crl_pem: required (or crl_der)");
  if (size_check(strlen(rl->crl_pem), TLSCONF_CRL_MAX, "crl_pem", err) != 0 ||
      size_check(rl->crl_der.len, TLSCONF_CRL_MAX, "crl_der", err) != 0)
    return -1;
  if (has_pem) {
    if (certinfo_crl_read(rl->crl_pem, "crl_pem", &crl, err) != 0)
      return -1;
  } else {
    const unsigned char *p = rl->crl_der.data;
    if (rl->crl_der.len > LONG_MAX)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "crl_der: too large");
    crl = d2i_X509_CRL(NULL, &p, (long)rl->crl_der.len);
    if (crl == NULL || p != rl->crl_der.data + rl->crl_der.len) {
      X509_CRL_free(crl);
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "crl_der: not a DER X509 CRL");
      tp_err_append_openssl(err);
      return -1;
    }
  }
  const char *field = has_pem ? "crl_pem" : "crl_der";
  int rc = -1;
  char *issuer = NULL, *number = NULL, *pem = NULL;
  ASN1_INTEGER *crl_number = NULL;
  ASN1_INTEGER *delta = X509_CRL_get_ext_d2i(crl, NID_delta_crl, NULL, NULL);
  if (delta != NULL) {
    ASN1_INTEGER_free(delta);
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: delta CRLs are not supported", field);
    goto done;
  }
  time_t this_update, next_update = 0;
  const ASN1_TIME *nu = X509_CRL_get0_nextUpdate(crl);
  if (certinfo_time(X509_CRL_get0_lastUpdate(crl), &this_update) != 0 ||
      (nu != NULL && certinfo_time(nu, &next_update) != 0)) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: invalid thisUpdate or nextUpdate", field);
    goto done;
  }
  crl_number = X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL);
  issuer = certinfo_name(X509_CRL_get_issuer(crl));
  number = crl_number != NULL ? certinfo_integer_hex(crl_number) : strdup("");
  BIO *b = BIO_new(BIO_s_mem());
  if (b != NULL && PEM_write_bio_X509_CRL(b, crl)) {
    char *data;
    long n = BIO_get_mem_data(b, &data);
    pem = strndup(data, (size_t)n);
  }
  BIO_free(b);
  if (issuer == NULL || number == NULL || pem == NULL) {
    tlsconf__oom(err);
    goto done;
  }
  STACK_OF(X509_REVOKED) *revoked = X509_CRL_get_REVOKED(crl);
  if (tlsconf__ts_set(&rl->this_update, this_update) != 0 ||
      (nu != NULL && tlsconf__ts_set(&rl->next_update, next_update) != 0)) {
    tlsconf__oom(err);
    goto done;
  }
  if (nu == NULL)
    tlsconf__ts_clear(&rl->next_update);
  rl->revoked_count = revoked != NULL ? sk_X509_REVOKED_num(revoked) : 0;
  tlsconf__str_take(&rl->issuer, issuer);
  tlsconf__str_take(&rl->crl_number, number);
  tlsconf__str_take(&rl->crl_pem, pem);
  issuer = number = pem = NULL;
  tlsconf__bytes_clear(&rl->crl_der);
  rc = 0;
done:
  free(issuer);
  free(number);
  free(pem);
  ASN1_INTEGER_free(crl_number);
  X509_CRL_free(crl);
  ERR_clear_error();
  return rc;
}

/* SNI hostname patterns -------------------------------------------------- */

/* One DNS label: 1 to 63 of [a-z0-9-], not starting or ending with '-'. */
static int label_ok(const char *s, size_t len) {
  if (len == 0 || len > 63 || s[0] == '-' || s[len - 1] == '-')
    return 0;
  for (size_t i = 0; i < len; i++) {
    char ch = s[i];
    if (!(ch >= 'a' && ch <= 'z') && !(ch >= '0' && ch <= '9') && ch != '-')
      return 0;
  }
  return 1;
}

int tlsconf_hostname_pattern_check(const char *pattern, struct tp_err *err) {
  if (pattern == NULL || pattern[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "required");
  const char *host = pattern;
  int wildcard = strncmp(pattern, "*.", 2) == 0;
  if (wildcard)
    host += 2;
  size_t total = strlen(pattern);
  if (total > 253)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "\"%.40s...\" is longer than 253 characters", pattern);
  if (strchr(host, '*') != NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "\"%s\": a wildcard is only allowed as the whole first label "
                      "(\"*.example.com\")",
                      pattern);
  for (const char *p = pattern; *p; p++) {
    if (isupper((unsigned char)*p))
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "\"%s\": must be lower case", pattern);
  }
  int labels = 0;
  const char *last = host;
  size_t last_len = 0;
  for (const char *p = host;;) {
    const char *dot = strchr(p, '.');
    size_t len = dot ? (size_t)(dot - p) : strlen(p);
    if (!label_ok(p, len))
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "\"%s\" is not a hostname (labels of 1 to 63 letters, digits and '-', "
                        "separated by single dots, no trailing dot)",
                        pattern);
    labels++;
    last = p;
    last_len = len;
    if (dot == NULL)
      break;
    p = dot + 1;
  }
  /* A numeric top-level label is an IPv4 address; SNI never carries one
   * (RFC 6066, section 3). */
  if (strspn(last, "0123456789") == last_len)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "\"%s\" is an IP address or ends in a numeric label; SNI names are hostnames",
                      pattern);
  if (wildcard && labels < 2)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "\"%s\": a wildcard must cover the subdomains of a name with at least two "
                      "labels (\"*.example.com\")",
                      pattern);
  return 0;
}
