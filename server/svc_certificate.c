/* CertificateService: certificates and their private keys. */
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "csr.h"
#include "issuance.h"
#include "pb.h"
#include "resolve.h"
#include "tlsconf.h"

static const char *const certificate_mutable[] = {"certificate_chain_pem",
                                                  "private_key_pem",
                                                  "passphrase",
                                                  "pfx",
                                                  "allow_invalid_time",
                                                  "ocsp_response",
                                                  "issuer_certificate_pem",
                                                  "pending_request",
                                                  NULL};

/* A new key (PEM or inside a PKCS#12) replaces the stored one unread. */
static const char *const certificate_secret_fields[] = {"private_key_pem", "pfx", NULL};

/* The OCSP fetch schedule: output fields only the fetch job writes
 * (ocsp_fetch.c); any other write keeps them. */
static const char *const ocsp_schedule_fields[] = {"ocsp_fetch_time",        "ocsp_refresh_time",
                                                   "ocsp_next_attempt_time", "ocsp_last_error",
                                                   "ocsp_fetch_failures",    NULL};

static void ocsp_schedule_clear(ProtobufCMessage *res) {
  for (size_t i = 0; ocsp_schedule_fields[i] != NULL; i++)
    pb_field_clear(res, pb_field(res->descriptor, ocsp_schedule_fields[i]));
}

/* After the facts are derived (ocsp_responder_url among them): a leaf
 * without an http:// responder has no schedule; the fetch job's own write
 * brings its schedule (ocsp_next_attempt_time set); any other write of the
 * same leaf and responder keeps the stored schedule, and a new leaf or
 * responder is fetched for at once. */
static int ocsp_schedule(struct api_op *op, ProtobufCMessage *res, struct tp_err *err) {
  Tlsplane__V1__Certificate *c = (Tlsplane__V1__Certificate *)res;
  const Tlsplane__V1__Certificate *old = (const Tlsplane__V1__Certificate *)op->old;
  if (c->ocsp_responder_url[0] == '\0') {
    ocsp_schedule_clear(res);
    return 0;
  }
  if (c->ocsp_next_attempt_time != NULL)
    return 0;
  ocsp_schedule_clear(res);
  if (old != NULL && old->ocsp_next_attempt_time != NULL &&
      strcmp(old->ocsp_responder_url, c->ocsp_responder_url) == 0 &&
      strcmp(old->sha256_fingerprint, c->sha256_fingerprint) == 0) {
    ProtobufCMessage *was = pb_clone(&old->base);
    if (was == NULL)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    for (size_t i = 0; ocsp_schedule_fields[i] != NULL; i++)
      pb_field_swap(res, was, pb_field(res->descriptor, ocsp_schedule_fields[i]));
    protobuf_c_message_free_unpacked(was, NULL);
    return 0;
  }
  if (pb_timestamp_set(res, "ocsp_next_attempt_time", (int64_t)op->now * 1000000) != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  return 0;
}

/* A stored OCSP response whose nextUpdate has passed is never served
 * again: a write that leaves it as it is drops it rather than refusing the
 * write as expired (a responder down past nextUpdate, then a label or a
 * failed fetch recorded). */
static void ocsp_drop_expired(struct api_op *op, Tlsplane__V1__Certificate *c) {
  const Tlsplane__V1__Certificate *old = (const Tlsplane__V1__Certificate *)op->old;
  if (old == NULL || old->ocsp_next_update == NULL || c->ocsp_response.len == 0 ||
      pb_timestamp_us(old->ocsp_next_update) > (int64_t)op->now * 1000000 ||
      c->ocsp_response.len != old->ocsp_response.len ||
      memcmp(c->ocsp_response.data, old->ocsp_response.data, c->ocsp_response.len) != 0)
    return;
  pb_field_clear(&c->base, pb_field(c->base.descriptor, "ocsp_response"));
}

static void key_wipe_free(char *key) {
  if (key != NULL) {
    OPENSSL_cleanse(key, strlen(key));
    free(key);
  }
}

static int certificate_prepare(struct api_op *op, ProtobufCMessage *res, struct tp_err *err) {
  Tlsplane__V1__Certificate *c = (Tlsplane__V1__Certificate *)res;
  const Tlsplane__V1__Certificate *old = (const Tlsplane__V1__Certificate *)op->old;
  int new_key = c->private_key_pem[0] != '\0' || c->pfx.len > 0;
  ocsp_drop_expired(op, c);
  /* A new pfx brings its own chain: the stored one gives way. */
  if (old != NULL && c->pfx.len > 0 &&
      strcmp(old->certificate_chain_pem, c->certificate_chain_pem) == 0)
    pb_field_clear(res, pb_field(res->descriptor, "certificate_chain_pem"));
  /* The stored keys, and which of them the write keeps (csr.h). */
  struct csr_keys keys = {0};
  int pending_only = 0;
  if (csr_prepare(op, c, new_key, &keys, &pending_only, err) != 0) {
    csr_keys_clear(&keys);
    return -1;
  }
  /* A write that leaves chain and key as they are (labels, an OCSP
   * response) does not re-judge the validity period already accepted. */
  if (old != NULL && !new_key && strcmp(old->certificate_chain_pem, c->certificate_chain_pem) == 0)
    c->allow_invalid_time = 1;
  char *key = NULL;
  int rc = 0;
  if (pending_only) {
    /* No chain yet: nothing to derive; the key is the request's. */
    c->allow_invalid_time = 0;
    c->has_private_key = 1;
    if ((key = strdup("")) == NULL)
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  } else
    rc = tlsconf_certificate_prepare(c, new_key ? NULL : keys.serving, op->now, &key, err);
  if (rc == 0 && !pending_only)
    rc = ocsp_schedule(op, res, err);
  if (rc == 0 && key == NULL)
    rc = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                    "private_key_pem: required (or pfx with the key inside)");
  if (rc == 0)
    rc = issuance_prepare(c, old, err);
  if (rc == 0 && csr_secret_make(c, key, &keys, &op->secret, &op->secret_len) != 0)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  key_wipe_free(key);
  csr_keys_clear(&keys);
  if (rc != 0)
    return -1;
  op->set_secret = 1;
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
      api_changes_time(ch, "not_after", was->not_after, now->not_after) != 0 ||
      api_changes_add(ch, "ocsp_cert_status", was->ocsp_cert_status, now->ocsp_cert_status) != 0 ||
      api_changes_time(ch, "pending_request.request_time",
                       was->pending_request ? was->pending_request->request_time : NULL,
                       now->pending_request ? now->pending_request->request_time : NULL) != 0)
    return -1;
  return 0;
}

static int64_t certificate_expire_time(const ProtobufCMessage *res) {
  return pb_timestamp_us(((const Tlsplane__V1__Certificate *)res)->not_after);
}

/* When a job next has work on the certificate: the sooner of its next
 * OCSP fetch (ocsp_fetch.c) and its renewal (issuance.c); each job checks
 * its own time on the rows it is handed. */
static int64_t certificate_due_time(const ProtobufCMessage *res) {
  const Tlsplane__V1__Certificate *c = (const Tlsplane__V1__Certificate *)res;
  int64_t ocsp = 0;
  if (c->ocsp_next_attempt_time != NULL) {
    ocsp = pb_timestamp_us(c->ocsp_next_attempt_time);
    ocsp = ocsp > 0 ? ocsp : 1;
  }
  int64_t renew = issuance_due_time_us(c);
  if (ocsp == 0 || (renew > 0 && renew < ocsp))
    return renew;
  return ocsp;
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
                                                 {"CreateCertificateRequest", csr_rpc_create},
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
