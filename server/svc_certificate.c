/* CertificateService: certificates and their private keys. */
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "issuance.h"
#include "pb.h"
#include "resolve.h"
#include "tlsconf.h"

static const char *const certificate_mutable[] = {
    "certificate_chain_pem", "private_key_pem",        "passphrase", "pfx", "allow_invalid_time",
    "ocsp_response",         "issuer_certificate_pem", NULL};

/* A new key (PEM or inside a PKCS#12) replaces the stored one unread. */
static const char *const certificate_secret_fields[] = {"private_key_pem", "pfx", NULL};

static int certificate_prepare(struct api_op *op, ProtobufCMessage *res, struct tp_err *err) {
  Tlsplane__V1__Certificate *c = (Tlsplane__V1__Certificate *)res;
  const Tlsplane__V1__Certificate *old = (const Tlsplane__V1__Certificate *)op->old;
  int new_key = c->private_key_pem[0] != '\0' || c->pfx.len > 0;
  /* A new pfx brings its own chain: the stored one gives way. */
  if (old != NULL && c->pfx.len > 0 &&
      strcmp(old->certificate_chain_pem, c->certificate_chain_pem) == 0)
    pb_field_clear(res, pb_field(res->descriptor, "certificate_chain_pem"));
  char *existing = NULL;
  if (!new_key && op->old_row != NULL && op->old_row->secret != NULL) {
    existing = strndup((const char *)op->old_row->secret, op->old_row->secret_len);
    if (existing == NULL)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  /* A write that leaves chain and key as they are (labels, an OCSP
   * response) does not re-judge the validity period already accepted. */
  if (old != NULL && !new_key && strcmp(old->certificate_chain_pem, c->certificate_chain_pem) == 0)
    c->allow_invalid_time = 1;
  char *key = NULL;
  int rc = tlsconf_certificate_prepare(c, existing, op->now, &key, err);
  if (existing != NULL) {
    OPENSSL_cleanse(existing, strlen(existing));
    free(existing);
  }
  if (rc != 0)
    return -1;
  if (key == NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "private_key_pem: required (or pfx with the key inside)");
  if (issuance_prepare(c, old, err) != 0) {
    OPENSSL_cleanse(key, strlen(key));
    free(key);
    return -1;
  }
  op->set_secret = 1;
  op->secret = (uint8_t *)key;
  op->secret_len = strlen(key);
  return 0;
}

/* The facts operators follow from one certificate to the next. */
static int certificate_audit_changes(const ProtobufCMessage *old, const ProtobufCMessage *res,
                                     struct api_changes *ch) {
  static const Tlsplane__V1__Certificate none = TLSPLANE__V1__CERTIFICATE__INIT;
  const Tlsplane__V1__Certificate *was = old ? (const Tlsplane__V1__Certificate *)old : &none;
  const Tlsplane__V1__Certificate *now = (const Tlsplane__V1__Certificate *)res;
  if (api_changes_add(ch, "serial_number", was->serial_number, now->serial_number) != 0 ||
      api_changes_add(ch, "sha256_fingerprint", was->sha256_fingerprint, now->sha256_fingerprint) !=
          0 ||
      api_changes_time(ch, "not_after", was->not_after, now->not_after) != 0)
    return -1;
  return 0;
}

static int64_t certificate_expire_time(const ProtobufCMessage *res) {
  return pb_timestamp_us(((const Tlsplane__V1__Certificate *)res)->not_after);
}

static int64_t certificate_due_time(const ProtobufCMessage *res) {
  return issuance_due_time_us((const Tlsplane__V1__Certificate *)res);
}

/* An issued certificate names its issuer: the issuer cannot go first. */
static int certificate_refs(const ProtobufCMessage *res, struct api_refs *refs) {
  const Tlsplane__V1__Certificate *c = (const Tlsplane__V1__Certificate *)res;
  if (c->issuance != NULL && c->issuance->issuer[0] != '\0')
    return api_refs_add(refs, api_kind_issuer.kind, c->issuance->issuer,
                        "certificate.issuance.issuer");
  return 0;
}

const struct api_method certificate_methods[] = {{"IssueCertificate", issuance_rpc_issue},
                                                 {NULL, NULL}};

const struct api_kind api_kind_certificate = {
    .kind = "Certificate",
    .collection = "certificates",
    .resource_field = "certificate",
    .desc = &tlsplane__v1__certificate__descriptor,
    .mutable_fields = certificate_mutable,
    .prepare = certificate_prepare,
    .audit_changes = certificate_audit_changes,
    .expire_time_us = certificate_expire_time,
    .due_time_us = certificate_due_time,
    .refs = certificate_refs,
    .check_referrers = resolve_check_referrers,
    .secret_fields = certificate_secret_fields,
};
