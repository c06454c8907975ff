/* IssuerService: the CAs the control plane issues certificates from. A
 * CA's key (INTERNAL_CA, IMPORTED_CA) is the row's secret, sealed like
 * every key; CONTROL_PLANE_CA uses the server's own CA (api->ca) and
 * SELF_SIGNED needs none. */
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "acme.h"
#include "acme_account.h"
#include "api.h"
#include "ca.h"
#include "certinfo.h"
#include "crl_refresh.h"
#include "pb.h"
#include "tlsplane/v1/issuer.pb-c.h"

#define ISSUER_CA_LIFETIME_S (10LL * 365 * 24 * 3600)
#define ISSUER_CA_LIFETIME_MIN_S 60LL
#define ISSUER_CA_LIFETIME_MAX_S (30LL * 365 * 24 * 3600)

/* Every input field: the create-only ones too (the engine keeps only
 * these from a request); prepare refuses a change of a create-only one. */
static const char *const issuer_mutable[] = {"type",
                                             "common_name",
                                             "parent",
                                             "ca_key_algorithm",
                                             "ca_lifetime",
                                             "certificate_pem",
                                             "private_key_pem",
                                             "passphrase",
                                             "key_algorithm",
                                             "acme_directory_url",
                                             "acme_ca_pem",
                                             "acme_contact",
                                             "acme_terms_agreed",
                                             "acme_eab_kid",
                                             "acme_eab_hmac_key",
                                             NULL};

/* Not acme_eab_hmac_key: a new one is sealed with the stored account key. */
static const char *const issuer_secret_fields[] = {"private_key_pem", NULL};

#define ACME_CONTACTS_MAX 10
#define ACME_CONTACT_MAX_LEN 254
#define ACME_EAB_KID_MAX_LEN 256

static int oom(struct tp_err *err) {
  return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
}

static int key_algorithm_check(Tlsplane__V1__KeyAlgorithm alg, const char *field,
                               struct tp_err *err) {
  if (alg < TLSPLANE__V1__KEY_ALGORITHM__KEY_ALGORITHM_UNSPECIFIED ||
      alg > TLSPLANE__V1__KEY_ALGORITHM__ED25519)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: %d is not a KeyAlgorithm (RSA_2048, RSA_3072, RSA_4096, ECDSA_P256, "
                      "ECDSA_P384, ED25519)",
                      field, (int)alg);
  return 0;
}

/* The facts of the CA certificate first in is->certificate_pem. */
static int facts_set(Tlsplane__V1__Issuer *is, X509 *x, struct tp_err *err) {
  time_t nb = 0, na = 0;
  char *subject = certinfo_name(X509_get_subject_name(x));
  char *fp = certinfo_fingerprint(x);
  const char *alg = certinfo_key_algorithm(X509_get0_pubkey(x));
  int rc = subject != NULL && fp != NULL && certinfo_time(X509_get0_notBefore(x), &nb) == 0 &&
                   certinfo_time(X509_get0_notAfter(x), &na) == 0 &&
                   pb_string_set(&is->base, "subject", subject) == 0 &&
                   pb_string_set(&is->base, "sha256_fingerprint", fp) == 0 &&
                   pb_string_set(&is->base, "ca_key_type", alg ? alg : "") == 0 &&
                   pb_timestamp_set(&is->base, "not_before", (int64_t)nb * 1000000) == 0 &&
                   pb_timestamp_set(&is->base, "not_after", (int64_t)na * 1000000) == 0
               ? 0
               : oom(err);
  free(subject);
  free(fp);
  return rc;
}

/* Hands key over as the secret to store (PKCS#8 PEM). */
static int secret_set(struct api_op *op, EVP_PKEY *key, struct tp_err *err) {
  char *pem = certinfo_key_pem(key);
  if (pem == NULL)
    return oom(err);
  op->set_secret = 1;
  op->secret = (uint8_t *)pem;
  op->secret_len = strlen(pem);
  return 0;
}

/* Keeps the create-only field f of old unless res sets another value. */
static int keep_create_only(ProtobufCMessage *res, const ProtobufCMessage *old, const char *fname,
                            struct tp_err *err) {
  const ProtobufCFieldDescriptor *f = pb_field(res->descriptor, fname);
  void *now = pb_member(res, f);
  const void *was = pb_member((ProtobufCMessage *)old, f);
  int differs = 0, unset = 0;
  switch (f->type) {
  case PROTOBUF_C_TYPE_STRING:
    unset = (*(char **)now)[0] == '\0';
    differs = strcmp(*(char **)now, *(char *const *)was) != 0;
    if (unset && pb_string_set(res, fname, *(char *const *)was) != 0)
      return oom(err);
    break;
  case PROTOBUF_C_TYPE_ENUM:
    unset = *(int *)now == 0;
    differs = *(int *)now != *(const int *)was;
    if (unset)
      *(int *)now = *(const int *)was;
    break;
  default: { /* a Duration */
    Google__Protobuf__Duration **d = now;
    Google__Protobuf__Duration *const *w = was;
    unset = *d == NULL;
    differs =
        (*d == NULL) != (*w == NULL) || (*d != NULL && pb_duration_ms(*d) != pb_duration_ms(*w));
    if (unset && *w != NULL && (*d = pb_duration_new((*w)->seconds)) == NULL)
      return oom(err);
    if (unset && *d != NULL)
      (*d)->nanos = (*w)->nanos;
  }
  }
  if (!unset && differs)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: cannot change once the issuer exists",
                      fname);
  return 0;
}

/* Reads the CA issuer `name` (its certificate and key) through txn. */
static int parent_load(struct api_op *op, const char *name, struct ca **out, char **parent_chain,
                       struct tp_err *err) {
  *out = NULL;
  *parent_chain = NULL;
  if (api_name_check(&api_kind_issuer, name, "parent", err) != 0)
    return -1;
  ProtobufCMessage *msg = NULL;
  struct store_row row = {0};
  if (api_read(op->txn, &api_kind_issuer, name, 1, &msg, &row, err) != 0) {
    if (err->status == GRPC_STATUS_NOT_FOUND)
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "parent: %s not found", name);
    return -1;
  }
  const Tlsplane__V1__Issuer *p = (const Tlsplane__V1__Issuer *)msg;
  int rc = 0;
  if (p->type == TLSPLANE__V1__ISSUER__TYPE__CONTROL_PLANE_CA) {
    if (op->api->ca == NULL)
      rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "parent: this server has no CA");
    else {
      char *key = ca_key_pem(op->api->ca);
      rc = key != NULL ? ca_load(ca_cert_pem(op->api->ca), key, out, err) : oom(err);
      if (key != NULL) {
        OPENSSL_cleanse(key, strlen(key));
        free(key);
      }
    }
  } else if (p->type == TLSPLANE__V1__ISSUER__TYPE__SELF_SIGNED ||
             p->type == TLSPLANE__V1__ISSUER__TYPE__ACME || row.secret == NULL) {
    rc = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "parent: %s is not a CA", name);
  } else {
    char *key = strndup((const char *)row.secret, row.secret_len);
    rc = key != NULL ? ca_load(p->certificate_pem, key, out, err) : oom(err);
    if (key != NULL) {
      OPENSSL_cleanse(key, strlen(key));
      free(key);
    }
  }
  if (rc == 0 && (*parent_chain =
                      strdup(*p->certificate_pem ? p->certificate_pem : ca_cert_pem(*out))) == NULL)
    rc = oom(err);
  if (rc != 0) {
    ca_free(*out);
    *out = NULL;
  }
  if (row.secret != NULL)
    OPENSSL_cleanse(row.secret, row.secret_len);
  store_row_clear(&row);
  protobuf_c_message_free_unpacked(msg, NULL);
  return rc;
}

/* INTERNAL_CA on create: a new key and CA certificate. */
static int internal_make(struct api_op *op, Tlsplane__V1__Issuer *is, struct tp_err *err) {
  if (key_algorithm_check(is->ca_key_algorithm, "ca_key_algorithm", err) != 0)
    return -1;
  int64_t lifetime_s = ISSUER_CA_LIFETIME_S;
  if (is->ca_lifetime != NULL) {
    lifetime_s = pb_duration_ms(is->ca_lifetime) / 1000;
    if (lifetime_s < ISSUER_CA_LIFETIME_MIN_S || lifetime_s > ISSUER_CA_LIFETIME_MAX_S)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "ca_lifetime: %lld s is out of range (%lld s to 30 years)",
                        (long long)lifetime_s, ISSUER_CA_LIFETIME_MIN_S);
  }
  struct ca *parent = NULL;
  char *parent_chain = NULL;
  if (is->parent[0] != '\0') {
    if (parent_load(op, is->parent, &parent, &parent_chain, err) != 0)
      return -1;
    int64_t left = (int64_t)ca_not_after(parent) - (int64_t)op->now;
    if (left < ISSUER_CA_LIFETIME_MIN_S) {
      ca_free(parent);
      free(parent_chain);
      return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                        "parent: %s expires in %lld s: too soon to sign a CA", is->parent,
                        (long long)left);
    }
    if (lifetime_s > left)
      lifetime_s = left;
  }
  char cn[128];
  if (is->common_name[0] != '\0')
    snprintf(cn, sizeof(cn), "%s", is->common_name);
  else
    snprintf(cn, sizeof(cn), "tlsplane issuer %s", strchr(is->name, '/') + 1);
  Tlsplane__V1__KeyAlgorithm alg =
      is->ca_key_algorithm ? is->ca_key_algorithm : TLSPLANE__V1__KEY_ALGORITHM__ECDSA_P256;
  EVP_PKEY *key = ca_key_generate((enum ca_key_alg)alg);
  struct ca *ca = NULL;
  int rc;
  if (key == NULL) {
    rc = tp_err_set(err, GRPC_STATUS_INTERNAL, "making the CA key failed");
    tp_err_append_openssl(err);
  } else
    rc = ca_make(parent, cn, key, lifetime_s, &ca, err);
  if (rc == 0) {
    is->ca_key_algorithm = alg;
    size_t len = strlen(ca_cert_pem(ca)) + (parent_chain ? strlen(parent_chain) : 0) + 1;
    char *chain = malloc(len);
    if (chain == NULL)
      rc = oom(err);
    else {
      snprintf(chain, len, "%s%s", ca_cert_pem(ca), parent_chain ? parent_chain : "");
      rc = pb_string_set(&is->base, "certificate_pem", chain) == 0 ? 0 : oom(err);
      free(chain);
    }
  }
  if (rc == 0) {
    char *kpem = ca_key_pem(ca);
    if (kpem == NULL)
      rc = oom(err);
    else {
      op->set_secret = 1;
      op->secret = (uint8_t *)kpem;
      op->secret_len = strlen(kpem);
    }
  }
  ca_free(ca);
  ca_free(parent);
  free(parent_chain);
  return rc;
}

/* IMPORTED_CA: the certificate is a CA and the key is its key. */
static int imported_check(struct api_op *op, Tlsplane__V1__Issuer *is, STACK_OF(X509) *certs,
                          struct tp_err *err) {
  EVP_PKEY *key = NULL;
  X509 *x = sk_X509_value(certs, 0);
  if (X509_check_ca(x) == 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "certificate_pem: not a CA certificate (basicConstraints CA:TRUE)");
  if (is->private_key_pem[0] == '\0') {
    if (op->old_row == NULL || op->old_row->secret == NULL)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "private_key_pem: required (the CA's private key, PEM)");
    if (certinfo_key_read((const char *)op->old_row->secret, op->old_row->secret_len, NULL,
                          "private_key_pem", &key, err) != 0)
      return tp_err_set(err, GRPC_STATUS_INTERNAL, "the stored CA key does not load");
  } else if (certinfo_key_read(is->private_key_pem, strlen(is->private_key_pem), is->passphrase,
                               "private_key_pem", &key, err) != 0)
    return -1;
  int rc = 0;
  if (X509_check_private_key(x, key) != 1) {
    ERR_clear_error();
    rc = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                    "private_key_pem: not the key of certificate_pem's first certificate");
  } else if (is->private_key_pem[0] != '\0')
    rc = secret_set(op, key, err);
  EVP_PKEY_free(key);
  return rc;
}

/* The first ACME input field is sets, or NULL. */
static const char *acme_input_set(const Tlsplane__V1__Issuer *is) {
  return is->acme_directory_url[0]  ? "acme_directory_url"
         : is->acme_ca_pem[0]       ? "acme_ca_pem"
         : is->n_acme_contact       ? "acme_contact"
         : is->acme_terms_agreed    ? "acme_terms_agreed"
         : is->acme_eab_kid[0]      ? "acme_eab_kid"
         : is->acme_eab_hmac_key[0] ? "acme_eab_hmac_key"
                                    : NULL;
}

static int acme_contacts_check(const Tlsplane__V1__Issuer *is, struct tp_err *err) {
  if (is->n_acme_contact > ACME_CONTACTS_MAX)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "acme_contact: at most %d contacts",
                      ACME_CONTACTS_MAX);
  for (size_t i = 0; i < is->n_acme_contact; i++) {
    const char *c = is->acme_contact[i];
    size_t len = strlen(c);
    int bad = len > ACME_CONTACT_MAX_LEN || strncmp(c, "mailto:", 7) != 0 ||
              strchr(c + 7, '@') == NULL || c[7] == '@' || c[len - 1] == '@';
    for (size_t k = 0; !bad && k < len; k++)
      bad = (unsigned char)c[k] <= ' ' || c[k] == ',' || c[k] == 0x7f;
    if (bad)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "acme_contact[%zu]: not a mailto: URI with one address "
                        "(\"mailto:admin@example.com\", at most %d characters)",
                        i, ACME_CONTACT_MAX_LEN);
  }
  return 0;
}

static int contacts_equal(const Tlsplane__V1__Issuer *a, const Tlsplane__V1__Issuer *b) {
  if (a->n_acme_contact != b->n_acme_contact)
    return 0;
  for (size_t i = 0; i < a->n_acme_contact; i++)
    if (strcmp(a->acme_contact[i], b->acme_contact[i]) != 0)
      return 0;
  return 1;
}

/* ACME: the directory, the terms, the contacts and the EAB checked; on
 * create the account key made; the account registered again (by the job)
 * when what it is registered with changes. */
static int acme_prepare(struct api_op *op, Tlsplane__V1__Issuer *is,
                        const Tlsplane__V1__Issuer *old, struct tp_err *err) {
  ProtobufCMessage *res = &is->base;
  const char *url = is->acme_directory_url;
  if (url[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "acme_directory_url: required (the ACME server's directory, https://)");
  if (crl_refresh_url_check(url, "acme_directory_url", err) != 0)
    return -1;
  if (strncasecmp(url, "https://", 8) != 0 || strlen(url) > ACME_URL_MAX)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "acme_directory_url: must be an https:// URL of at most %d characters",
                      ACME_URL_MAX);
  if (!is->acme_terms_agreed)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "acme_terms_agreed: must be true: registering the account agrees to the "
                      "ACME server's terms of service");
  if (acme_contacts_check(is, err) != 0)
    return -1;
  if (is->acme_ca_pem[0] != '\0') {
    STACK_OF(X509) *certs = NULL;
    if (certinfo_certs_read(is->acme_ca_pem, strlen(is->acme_ca_pem), "acme_ca_pem", &certs, err) !=
        0)
      return -1;
    char *clean = certinfo_certs_pem(certs);
    certinfo_certs_free(certs);
    int rc = clean != NULL && pb_string_set(res, "acme_ca_pem", clean) == 0 ? 0 : oom(err);
    free(clean);
    if (rc != 0)
      return -1;
  }
  const char *kid = is->acme_eab_kid, *hmac = is->acme_eab_hmac_key;
  int kid_changed = old == NULL || strcmp(kid, old->acme_eab_kid) != 0;
  if (strlen(kid) > ACME_EAB_KID_MAX_LEN)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "acme_eab_kid: at most %d characters",
                      ACME_EAB_KID_MAX_LEN);
  if (hmac[0] != '\0' && kid[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "acme_eab_kid: required with acme_eab_hmac_key");
  if (kid[0] != '\0' && kid_changed && hmac[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "acme_eab_hmac_key: required with a new acme_eab_kid (the MAC key the CA "
                      "gave with it, base64url)");
  unsigned char *eab = NULL;
  size_t eab_len = 0;
  if (hmac[0] != '\0' && (acme_b64url_decode(hmac, &eab, &eab_len) != 0 || eab_len == 0)) {
    free(eab);
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "acme_eab_hmac_key: not base64url (the MAC key as the CA gives it)");
  }
  /* The secret: made on create; made again (same account key) when the
   * EAB key comes or goes. */
  int rc = 0;
  int eab_goes = old != NULL && old->acme_eab_kid[0] != '\0' && kid[0] == '\0';
  if (old == NULL || eab != NULL || eab_goes) {
    EVP_PKEY *key = NULL;
    unsigned char *was = NULL;
    size_t was_len = 0;
    if (old == NULL)
      key = ca_key_generate((enum ca_key_alg)TLSPLANE__V1__KEY_ALGORITHM__ECDSA_P256);
    else if (op->old_row == NULL || acme_secret_read(op->old_row->secret, op->old_row->secret_len,
                                                     &key, &was, &was_len) != 0)
      rc = tp_err_set(err, GRPC_STATUS_INTERNAL, "the stored ACME account key does not load");
    if (rc == 0 && key == NULL)
      rc = tp_err_set(err, GRPC_STATUS_INTERNAL, "making the ACME account key failed");
    size_t len = 0;
    uint8_t *secret = rc == 0 ? acme_secret_make(key, eab, eab_len, &len) : NULL;
    if (rc == 0 && secret == NULL)
      rc = oom(err);
    if (rc == 0) {
      op->set_secret = 1;
      op->secret = secret;
      op->secret_len = len;
    }
    EVP_PKEY_free(key);
    if (was != NULL) {
      OPENSSL_cleanse(was, was_len);
      free(was);
    }
  }
  if (eab != NULL) {
    OPENSSL_cleanse(eab, eab_len);
    free(eab);
  }
  if (rc != 0)
    return -1;
  int changed = old == NULL || strcmp(url, old->acme_directory_url) != 0 ||
                strcmp(is->acme_ca_pem, old->acme_ca_pem) != 0 || !contacts_equal(is, old) ||
                kid_changed || hmac[0] != '\0';
  if (changed) {
    is->acme_registration_failures = 0;
    pb_field_clear(res, pb_field(res->descriptor, "acme_next_attempt_time"));
    if (pb_string_set(res, "acme_account_status", "pending") != 0 ||
        pb_string_set(res, "acme_account_url", "") != 0 ||
        pb_string_set(res, "acme_last_error", "") != 0)
      return oom(err);
  }
  return 0;
}

static int issuer_prepare(struct api_op *op, ProtobufCMessage *res, struct tp_err *err) {
  Tlsplane__V1__Issuer *is = (Tlsplane__V1__Issuer *)res;
  const Tlsplane__V1__Issuer *old = (const Tlsplane__V1__Issuer *)op->old;
  static const char *const create_only[] = {
      "type", "common_name", "parent", "ca_key_algorithm", "ca_lifetime", NULL};
  int rc = 0;
  for (size_t i = 0; old != NULL && create_only[i] != NULL; i++)
    if (keep_create_only(res, &old->base, create_only[i], err) != 0)
      return -1;
  if (is->type <= TLSPLANE__V1__ISSUER__TYPE__TYPE_UNSPECIFIED ||
      is->type > TLSPLANE__V1__ISSUER__TYPE__ACME)
    return tp_err_set(
        err, GRPC_STATUS_INVALID_ARGUMENT,
        "type: required (CONTROL_PLANE_CA, INTERNAL_CA, IMPORTED_CA, SELF_SIGNED or ACME)");
  if (key_algorithm_check(is->key_algorithm, "key_algorithm", err) != 0)
    return -1;
  if (is->key_algorithm == TLSPLANE__V1__KEY_ALGORITHM__KEY_ALGORITHM_UNSPECIFIED)
    is->key_algorithm = TLSPLANE__V1__KEY_ALGORITHM__ECDSA_P256;
  int internal = is->type == TLSPLANE__V1__ISSUER__TYPE__INTERNAL_CA;
  int imported = is->type == TLSPLANE__V1__ISSUER__TYPE__IMPORTED_CA;
  int acme = is->type == TLSPLANE__V1__ISSUER__TYPE__ACME;
  if (!acme && acme_input_set(is) != NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: only for ACME", acme_input_set(is));
  if (!internal &&
      (is->parent[0] || is->common_name[0] || is->ca_key_algorithm || is->ca_lifetime != NULL))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: only for INTERNAL_CA",
                      is->parent[0]          ? "parent"
                      : is->common_name[0]   ? "common_name"
                      : is->ca_key_algorithm ? "ca_key_algorithm"
                                             : "ca_lifetime");
  if (!imported && (is->private_key_pem[0] || is->passphrase[0]))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: only for IMPORTED_CA (the server makes or holds the other CAs' keys)",
                      is->private_key_pem[0] ? "private_key_pem" : "passphrase");
  if (!imported && old != NULL && strcmp(is->certificate_pem, old->certificate_pem) != 0 &&
      is->certificate_pem[0] != '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "certificate_pem: only an IMPORTED_CA's certificate can be replaced");
  if (!imported && old == NULL && is->certificate_pem[0] != '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "certificate_pem: only for IMPORTED_CA (output for the others)");

  switch (is->type) {
  case TLSPLANE__V1__ISSUER__TYPE__CONTROL_PLANE_CA:
    if (op->api->ca == NULL)
      return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                        "type: this server has no control-plane CA");
    rc = pb_string_set(res, "certificate_pem", ca_cert_pem(op->api->ca)) == 0 ? 0 : oom(err);
    break;
  case TLSPLANE__V1__ISSUER__TYPE__SELF_SIGNED:
    break;
  case TLSPLANE__V1__ISSUER__TYPE__INTERNAL_CA:
    if (old == NULL)
      rc = internal_make(op, is, err);
    else if (pb_string_set(res, "certificate_pem", old->certificate_pem) != 0)
      rc = oom(err);
    break;
  case TLSPLANE__V1__ISSUER__TYPE__ACME:
    rc = acme_prepare(op, is, old, err);
    break;
  default: /* IMPORTED_CA */
    break;
  }
  if (rc != 0)
    return -1;
  if (is->type != TLSPLANE__V1__ISSUER__TYPE__SELF_SIGNED && !acme) {
    if (imported && is->certificate_pem[0] == '\0')
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "certificate_pem: required (the CA certificate, PEM)");
    STACK_OF(X509) *certs = NULL;
    if (certinfo_certs_read(is->certificate_pem, strlen(is->certificate_pem), "certificate_pem",
                            &certs, err) != 0)
      return -1;
    rc = imported ? imported_check(op, is, certs, err) : 0;
    if (rc == 0)
      rc = facts_set(is, sk_X509_value(certs, 0), err);
    /* Clean PEM, as read. */
    char *clean = rc == 0 ? certinfo_certs_pem(certs) : NULL;
    if (rc == 0 && (clean == NULL || pb_string_set(res, "certificate_pem", clean) != 0))
      rc = oom(err);
    free(clean);
    certinfo_certs_free(certs);
    if (rc != 0)
      return -1;
  }
  /* Input only. */
  if (is->private_key_pem[0] != '\0')
    OPENSSL_cleanse(is->private_key_pem, strlen(is->private_key_pem));
  if (is->passphrase[0] != '\0')
    OPENSSL_cleanse(is->passphrase, strlen(is->passphrase));
  if (is->acme_eab_hmac_key[0] != '\0')
    OPENSSL_cleanse(is->acme_eab_hmac_key, strlen(is->acme_eab_hmac_key));
  pb_field_clear(res, pb_field(res->descriptor, "private_key_pem"));
  pb_field_clear(res, pb_field(res->descriptor, "passphrase"));
  pb_field_clear(res, pb_field(res->descriptor, "acme_eab_hmac_key"));
  return 0;
}

static int issuer_refs(const ProtobufCMessage *res, struct api_refs *refs) {
  const Tlsplane__V1__Issuer *is = (const Tlsplane__V1__Issuer *)res;
  if (is->parent[0] != '\0')
    return api_refs_add(refs, "Issuer", is->parent, "issuer.parent");
  return 0;
}

static int issuer_audit_changes(const ProtobufCMessage *old, const ProtobufCMessage *res,
                                struct api_changes *ch) {
  static const Tlsplane__V1__Issuer none = TLSPLANE__V1__ISSUER__INIT;
  const Tlsplane__V1__Issuer *was = old ? (const Tlsplane__V1__Issuer *)old : &none;
  const Tlsplane__V1__Issuer *now = (const Tlsplane__V1__Issuer *)res;
  if (api_changes_add(ch, "acme_directory_url", was->acme_directory_url, now->acme_directory_url) !=
          0 ||
      api_changes_add(ch, "acme_account_status", was->acme_account_status,
                      now->acme_account_status) != 0)
    return -1;
  return api_changes_add(ch, "sha256_fingerprint", was->sha256_fingerprint,
                         now->sha256_fingerprint);
}

static int64_t issuer_due_time_us(const ProtobufCMessage *res) {
  return acme_account_due_us((const Tlsplane__V1__Issuer *)res);
}

const struct api_kind api_kind_issuer = {
    .kind = "Issuer",
    .collection = "issuers",
    .resource_field = "issuer",
    .desc = &tlsplane__v1__issuer__descriptor,
    .mutable_fields = issuer_mutable,
    .prepare = issuer_prepare,
    .refs = issuer_refs,
    .audit_changes = issuer_audit_changes,
    .due_time_us = issuer_due_time_us,
    .secret_fields = issuer_secret_fields,
};
