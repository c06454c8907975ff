/* Issuing from issuers and renewing what was issued (issuance.h). */
#include "issuance.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acme_ari.h"
#include "acme_order.h"
#include "ca.h"
#include "certinfo.h"
#include "csr.h"
#include "events.h"
#include "jobs.h"
#include "log.h"
#include "pb.h"

#define LIFETIME_DEFAULT_S (90LL * 24 * 3600)
#define LIFETIME_MIN_S 60LL
#define LIFETIME_MAX_S (825LL * 24 * 3600)
#define NAMES_MAX 100
#define RENEW_BATCH 16 /* renewals per round; the rest wait for the next */

static int oom(struct tp_err *err) {
  return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
}

static void pem_wipe_free(char *pem) {
  if (pem != NULL) {
    OPENSSL_cleanse(pem, strlen(pem));
    free(pem);
  }
}

/* The leaf followed by the certificates of ca_chain_pem that are not
 * self-signed (intermediates: clients have the root). */
static char *chain_make(X509 *leaf, const char *ca_chain_pem, struct tp_err *err) {
  STACK_OF(X509) *chain = NULL;
  if (ca_chain_pem != NULL && ca_chain_pem[0] != '\0' &&
      certinfo_certs_read(ca_chain_pem, strlen(ca_chain_pem), "issuer.certificate_pem", &chain,
                          err) != 0)
    return NULL;
  STACK_OF(X509) *out = sk_X509_new_null();
  char *pem = NULL;
  if (out != NULL && sk_X509_push(out, leaf)) {
    int ok = 1;
    for (int i = 0; ok && chain != NULL && i < sk_X509_num(chain); i++) {
      X509 *x = sk_X509_value(chain, i);
      if (X509_check_issued(x, x) != X509_V_OK)
        ok = sk_X509_push(out, x) > 0;
    }
    pem = ok ? certinfo_certs_pem(out) : NULL;
  }
  sk_X509_free(out); /* the certificates stay their owners' */
  certinfo_certs_free(chain);
  if (pem == NULL)
    oom(err);
  return pem;
}

/* The CA of the issuer is (read with its secret row). */
static int issuer_ca(struct api *api, const Tlsplane__V1__Issuer *is, const struct store_row *row,
                     struct ca **out, struct tp_err *err) {
  *out = NULL;
  if (is->type == TLSPLANE__V1__ISSUER__TYPE__CONTROL_PLANE_CA) {
    if (api->ca == NULL)
      return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                        "issuer: %s: this server has no control-plane CA", is->name);
    char *key = ca_key_pem(api->ca);
    if (key == NULL)
      return oom(err);
    int rc = ca_load(ca_cert_pem(api->ca), key, out, err);
    pem_wipe_free(key);
    return rc;
  }
  if (row->secret == NULL)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "issuer: %s: holds no CA key",
                      is->name);
  char *key = strndup((const char *)row->secret, row->secret_len);
  if (key == NULL)
    return oom(err);
  struct tp_err e = {0};
  int rc = ca_load(is->certificate_pem, key, out, &e);
  pem_wipe_free(key);
  if (rc != 0)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "issuer: %s: its CA certificate and key do not load: %s", is->name, e.msg);
  return 0;
}

int issuance_sign(struct api *api, struct store_txn *txn, const Tlsplane__V1__Issuance *iss,
                  time_t now, char **chain_pem, char **key_pem, struct tp_err *err) {
  *chain_pem = NULL;
  *key_pem = NULL;
  ProtobufCMessage *msg = NULL;
  struct store_row row = {0};
  if (api_read(txn, &api_kind_issuer, iss->issuer, 1, &msg, &row, err) != 0) {
    if (err->status == GRPC_STATUS_NOT_FOUND)
      tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "issuer: %s not found", iss->issuer);
    return -1;
  }
  const Tlsplane__V1__Issuer *is = (const Tlsplane__V1__Issuer *)msg;
  int64_t lifetime_s = pb_duration_ms(iss->lifetime) / 1000;
  const char *sans[2 * NAMES_MAX];
  size_t n_sans = 0;
  for (size_t i = 0; i < iss->n_dns_names && n_sans < 2 * NAMES_MAX; i++)
    sans[n_sans++] = iss->dns_names[i];
  for (size_t i = 0; i < iss->n_ip_addresses && n_sans < 2 * NAMES_MAX; i++)
    sans[n_sans++] = iss->ip_addresses[i];
  struct ca_issue_opts o = {.cn = iss->common_name,
                            .server = 1,
                            .sans = sans,
                            .n_sans = n_sans,
                            .validity_s = lifetime_s,
                            .cn_only = 1};
  struct ca *ca = NULL;
  EVP_PKEY *key = NULL;
  X509 *x = NULL;
  int rc = 0;
  if (is->type == TLSPLANE__V1__ISSUER__TYPE__ACME)
    rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                    "issuer: %s is an ACME issuer: ordering certificates from ACME issuers is not "
                    "built yet",
                    is->name);
  else if (is->type != TLSPLANE__V1__ISSUER__TYPE__SELF_SIGNED) {
    rc = issuer_ca(api, is, &row, &ca, err);
    if (rc == 0 && (int64_t)ca_not_after(ca) < (int64_t)now + lifetime_s) {
      char at[32];
      certinfo_time_format(ca_not_after(ca), at);
      rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "issuer: %s cannot issue a certificate for %lld s: its CA certificate "
                      "expires at %s, before that",
                      is->name, (long long)lifetime_s, at);
    }
  }
  if (rc == 0 && (key = ca_key_generate((enum ca_key_alg)iss->key_algorithm)) == NULL) {
    rc = tp_err_set(err, GRPC_STATUS_INTERNAL, "making the key failed");
    tp_err_append_openssl(err);
  }
  if (rc == 0)
    rc = ca ? ca_issue(ca, key, &o, &x, err) : ca_self_sign(key, &o, &x, err);
  if (rc == 0 && (*chain_pem = chain_make(x, ca ? is->certificate_pem : NULL, err)) == NULL)
    rc = -1;
  if (rc == 0 && (*key_pem = certinfo_key_pem(key)) == NULL)
    rc = oom(err);
  if (rc != 0) {
    free(*chain_pem);
    *chain_pem = NULL;
  }
  X509_free(x);
  EVP_PKEY_free(key);
  ca_free(ca);
  if (row.secret != NULL)
    OPENSSL_cleanse(row.secret, row.secret_len);
  store_row_clear(&row);
  protobuf_c_message_free_unpacked(msg, NULL);
  return rc;
}

/* ---- IssueCertificate ---- */

static int dns_name_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 253)
    return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!(isalnum(c) || c == '-' || c == '.' || (c == '*' && i == 0 && s[1] == '.')))
      return 0;
  }
  return s[0] != '.' && s[n - 1] != '.' && strstr(s, "..") == NULL;
}

static int ip_ok(const char *s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

int issuance_names_check(char *const *dns_names, size_t n_dns_names, char *const *ip_addresses,
                         size_t n_ip_addresses, struct tp_err *err) {
  if (n_dns_names + n_ip_addresses == 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "dns_names: at least one name (dns_names or ip_addresses) is required");
  if (n_dns_names + n_ip_addresses > NAMES_MAX)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "dns_names: at most %d names in all",
                      NAMES_MAX);
  for (size_t i = 0; i < n_dns_names; i++)
    if (!dns_name_ok(dns_names[i]))
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "dns_names[%zu]: \"%s\" is not a DNS name", i, dns_names[i]);
  for (size_t i = 0; i < n_ip_addresses; i++)
    if (!ip_ok(ip_addresses[i]))
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "ip_addresses[%zu]: \"%s\" is not an IP address", i, ip_addresses[i]);
  return 0;
}

/* The renewal policy's checks against the lifetime; prefix names it. */
static int renewal_check(const Tlsplane__V1__RenewalPolicy *r, int64_t lifetime_ms,
                         const char *prefix, struct tp_err *err) {
  if (r == NULL)
    return 0;
  if (r->renew_before_kind_case == TLSPLANE__V1__RENEWAL_POLICY__RENEW_BEFORE_KIND_RENEW_BEFORE) {
    int64_t ms = pb_duration_ms(r->renew_before);
    if (ms <= 0 || ms >= lifetime_ms)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "%s.renew_before: must be more than 0 and less than the lifetime (%lld s)",
                        prefix, (long long)(lifetime_ms / 1000));
  } else if (r->renew_before_kind_case ==
             TLSPLANE__V1__RENEWAL_POLICY__RENEW_BEFORE_KIND_RENEW_BEFORE_FRACTION) {
    double f = r->renew_before_fraction;
    if (!(f > 0 && f < 1))
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "%s.renew_before_fraction: must be between 0 and 1 (exclusive)", prefix);
  }
  return 0;
}

/* The issuer's default key algorithm, read through txn, and whether it
 * is an ACME issuer (then r is checked for it, acme_order_check, with
 * the server's DNS hook or none). */
static int issuer_key_algorithm(const struct api *api, struct store_txn *txn, const char *name,
                                const Tlsplane__V1__IssueCertificateRequest *r,
                                Tlsplane__V1__KeyAlgorithm *alg, int *acme, struct tp_err *err) {
  ProtobufCMessage *msg = NULL;
  if (api_read(txn, &api_kind_issuer, name, 0, &msg, NULL, err) != 0) {
    if (err->status == GRPC_STATUS_NOT_FOUND)
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "issuer: %s not found", name);
    return -1;
  }
  const Tlsplane__V1__Issuer *is = (const Tlsplane__V1__Issuer *)msg;
  *acme = is->type == TLSPLANE__V1__ISSUER__TYPE__ACME;
  if (*acme && acme_order_check(is, r, api->acme_dns_hook != NULL, err) != 0) {
    protobuf_c_message_free_unpacked(msg, NULL);
    return -1;
  }
  *alg = ((Tlsplane__V1__Issuer *)msg)->key_algorithm;
  if (*alg == TLSPLANE__V1__KEY_ALGORITHM__KEY_ALGORITHM_UNSPECIFIED)
    *alg = TLSPLANE__V1__KEY_ALGORITHM__ECDSA_P256;
  protobuf_c_message_free_unpacked(msg, NULL);
  return 0;
}

/* Creates c, which has no chain yet but a pending request whose key the
 * hook carries (csr.h), as CreateCertificateRequest does. */
static int pending_create(struct api *api, const struct rpc_call_info *call,
                          const ProtobufCMessage *c, const struct csr_hook *hook,
                          ProtobufCMessage **resp, struct tp_err *err) {
  ProtobufCMessage *res = pb_clone(c);
  if (res == NULL)
    return oom(err);
  struct store_txn *txn;
  int rc = store_begin(api->store, 1, &txn, err);
  if (rc == 0) {
    struct api_op op = {.api = api,
                        .kind = &api_kind_certificate,
                        .txn = txn,
                        .call = call,
                        .now = time(NULL),
                        .hook_data = hook};
    rc = api_write(&op, res, NULL, "issue", err);
    if (rc == 0)
      rc = store_commit(txn, NULL, err);
    else
      store_rollback(txn);
  }
  if (rc == 0)
    *resp = res;
  else
    protobuf_c_message_free_unpacked(res, NULL);
  return rc;
}

int issuance_rpc_issue(const struct rpc_call_info *call, const ProtobufCMessage *req,
                       ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  struct api *api = b->api;
  const Tlsplane__V1__IssueCertificateRequest *r =
      (const Tlsplane__V1__IssueCertificateRequest *)req;
  char name[160];
  snprintf(name, sizeof(name), "certificates/%.100s", r->certificate_id);
  if (r->certificate_id[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "certificate_id: required");
  if (api_name_check(&api_kind_certificate, name, "certificate_id", err) != 0 ||
      api_name_check(&api_kind_issuer, r->issuer, "issuer", err) != 0)
    return -1;
  if (issuance_names_check(r->dns_names, r->n_dns_names, r->ip_addresses, r->n_ip_addresses, err) !=
      0)
    return -1;
  if (strlen(r->common_name) > 64)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "common_name: at most 64 characters");
  int64_t lifetime_s = r->lifetime ? pb_duration_ms(r->lifetime) / 1000 : LIFETIME_DEFAULT_S;
  if (lifetime_s < LIFETIME_MIN_S || lifetime_s > LIFETIME_MAX_S)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "lifetime: %lld s is out of range (%lld s to 825 days)",
                      (long long)lifetime_s, LIFETIME_MIN_S);
  if (r->key_algorithm < 0 || r->key_algorithm > TLSPLANE__V1__KEY_ALGORITHM__ED25519)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "key_algorithm: %d is not a KeyAlgorithm",
                      (int)r->key_algorithm);
  if (renewal_check(r->renewal, lifetime_s * 1000, "renewal", err) != 0 ||
      api_labels_check(req, "labels", "labels", err) != 0)
    return -1;

  Google__Protobuf__Duration lifetime = GOOGLE__PROTOBUF__DURATION__INIT;
  lifetime.seconds = lifetime_s;
  Tlsplane__V1__Issuance iss = TLSPLANE__V1__ISSUANCE__INIT;
  iss.issuer = r->issuer;
  iss.common_name = r->common_name[0] ? r->common_name
                    : r->n_dns_names  ? r->dns_names[0]
                                      : r->ip_addresses[0];
  iss.dns_names = r->dns_names;
  iss.n_dns_names = r->n_dns_names;
  iss.ip_addresses = r->ip_addresses;
  iss.n_ip_addresses = r->n_ip_addresses;
  iss.lifetime = &lifetime;
  iss.key_algorithm = r->key_algorithm;
  iss.renewal = r->renewal;

  char *chain = NULL, *key = NULL;
  struct store_txn *txn;
  if (store_begin(api->store, 0, &txn, err) != 0)
    return -1;
  Tlsplane__V1__KeyAlgorithm issuer_alg = TLSPLANE__V1__KEY_ALGORITHM__ECDSA_P256;
  int acme = 0;
  int rc = issuer_key_algorithm(api, txn, r->issuer, r, &issuer_alg, &acme, err);
  if (iss.key_algorithm == TLSPLANE__V1__KEY_ALGORITHM__KEY_ALGORITHM_UNSPECIFIED)
    iss.key_algorithm = issuer_alg;
  Tlsplane__V1__PendingRequest *pr = NULL;
  if (rc == 0 && acme)
    /* No chain yet: the order runs as a job (acme_order.h); the key and
     * its request wait sealed on the certificate. */
    rc = acme_order_request_make(&iss, time(NULL), &key, &pr, err);
  else if (rc == 0)
    rc = issuance_sign(api, txn, &iss, time(NULL), &chain, &key, err);
  store_rollback(txn);
  if (rc != 0)
    return -1;

  Tlsplane__V1__Certificate c = TLSPLANE__V1__CERTIFICATE__INIT;
  c.name = name;
  c.issuance = &iss;
  void *labels = NULL;
  if (pb_map_borrow(&c.base, "labels", &r->base, "labels", &labels) != 0) {
    rc = oom(err);
  } else if (pr != NULL) {
    const struct csr_hook hook = {.pending_key_pem = key};
    c.pending_request = pr;
    rc = pending_create(api, call, &c.base, &hook, resp, err);
  } else {
    c.certificate_chain_pem = chain;
    c.private_key_pem = key;
    rc = api_create(api, &api_kind_certificate, call, &c.base, "issue", resp, err);
  }
  if (pr != NULL)
    protobuf_c_message_free_unpacked(&pr->base, NULL);
  free(labels);
  free(chain);
  pem_wipe_free(key);
  return rc;
}

/* ---- The Certificate kind's part ---- */

static int timestamp_copy(ProtobufCMessage *msg, const char *field,
                          const Google__Protobuf__Timestamp *from) {
  return from == NULL ? 0 : pb_timestamp_set(msg, field, pb_timestamp_us(from));
}

int issuance_prepare(Tlsplane__V1__Certificate *c, const Tlsplane__V1__Certificate *old,
                     struct tp_err *err) {
  if (c->issuance == NULL && old != NULL && old->issuance != NULL) {
    c->issuance = (Tlsplane__V1__Issuance *)pb_clone(&old->issuance->base);
    if (c->issuance == NULL ||
        timestamp_copy(&c->base, "last_renewal_time", old->last_renewal_time) != 0 ||
        timestamp_copy(&c->base, "next_attempt_time", old->next_attempt_time) != 0 ||
        pb_string_set(&c->base, "last_renewal_error", old->last_renewal_error) != 0)
      return oom(err);
    c->renewal_failures = old->renewal_failures;
  }
  if (c->acme_order == NULL && old != NULL && old->acme_order != NULL &&
      (c->acme_order = (Tlsplane__V1__AcmeOrder *)pb_clone(&old->acme_order->base)) == NULL)
    return oom(err);
  if (c->issuance == NULL) {
    pb_field_clear(&c->base, pb_field(c->base.descriptor, "renewal_time"));
    return 0;
  }
  int64_t lifetime_us = pb_duration_ms(c->issuance->lifetime) * 1000;
  /* An ACME CA chooses the lifetime itself: the policy is of that one. */
  if (c->acme_order != NULL && c->not_before != NULL && c->not_after != NULL &&
      pb_timestamp_us(c->not_after) > pb_timestamp_us(c->not_before))
    lifetime_us = pb_timestamp_us(c->not_after) - pb_timestamp_us(c->not_before);
  int64_t before_us = lifetime_us / 3;
  const Tlsplane__V1__RenewalPolicy *r = c->issuance->renewal;
  if (r != NULL &&
      r->renew_before_kind_case == TLSPLANE__V1__RENEWAL_POLICY__RENEW_BEFORE_KIND_RENEW_BEFORE)
    before_us = pb_duration_ms(r->renew_before) * 1000;
  else if (r != NULL && r->renew_before_kind_case ==
                            TLSPLANE__V1__RENEWAL_POLICY__RENEW_BEFORE_KIND_RENEW_BEFORE_FRACTION)
    before_us = (int64_t)((double)lifetime_us * r->renew_before_fraction);
  int64_t at = pb_sat_add(pb_timestamp_us(c->not_after), -before_us);
  /* The CA's suggestion (RFC 9773) wins when sooner: the client SHOULD
   * renew inside its window, and the policy stays the operator's floor. */
  const Tlsplane__V1__AcmeRenewalInfo *ari =
      c->acme_order != NULL ? c->acme_order->renewal_info : NULL;
  if (ari != NULL && ari->renewal_time != NULL && pb_timestamp_us(ari->renewal_time) < at)
    at = pb_timestamp_us(ari->renewal_time);
  if (pb_timestamp_set(&c->base, "renewal_time", at > 0 ? at : 1) != 0)
    return oom(err);
  return 0;
}

/* When the renewal (or its retry) is due: next_attempt_time is set after
 * a failure, or by an ACME order waiting for another certificate's
 * challenge (acme_order.h, no failure), and cleared by a success. */
static int64_t renewal_due_us(const Tlsplane__V1__Certificate *c) {
  int64_t due = c->next_attempt_time != NULL ? pb_timestamp_us(c->next_attempt_time)
                                             : pb_timestamp_us(c->renewal_time);
  return due > 0 ? due : 1;
}

int64_t issuance_due_time_us(const Tlsplane__V1__Certificate *c) {
  if (c->issuance == NULL)
    return 0;
  int64_t due = renewal_due_us(c), check = acme_ari_check_time_us(c);
  return check > 0 && check < due ? check : due;
}

/* ---- Renewal ---- */

static int64_t retry_delay_ms(int failures) {
  int64_t base = jobs_env_positive("TLSPLANE_RENEW_RETRY_MS", ISSUANCE_RETRY_BASE_MS);
  return jobs_backoff(base, ISSUANCE_RETRY_MAX_MS, failures);
}

/* One attempt's outcome: the new chain and key, or (chain NULL) the
 * failure in why. */
struct renewal {
  const char *chain;
  const char *key;
  const char *why;
};

/* The certificate after the attempt (jobs_outcome's edit). */
static int renewal_edit(const struct jobs_outcome *w, const ProtobufCMessage *old,
                        ProtobufCMessage *res, struct api_op *op, const char **action,
                        struct tp_err *err) {
  (void)old;
  (void)op;
  const struct renewal *r = w->data;
  Tlsplane__V1__Certificate *c = (Tlsplane__V1__Certificate *)res;
  const ProtobufCMessageDescriptor *d = res->descriptor;
  int rc;
  if (r->chain != NULL) {
    /* A stapled response and its issuer were for the old leaf. */
    pb_field_clear(res, pb_field(d, "ocsp_response"));
    pb_field_clear(res, pb_field(d, "issuer_certificate_pem"));
    pb_field_clear(res, pb_field(d, "next_attempt_time"));
    c->renewal_failures = 0;
    rc = pb_string_set(res, "certificate_chain_pem", r->chain) == 0 &&
                 pb_string_set(res, "private_key_pem", r->key) == 0 &&
                 pb_string_set(res, "last_renewal_error", "") == 0 &&
                 pb_timestamp_set(res, "last_renewal_time", w->now_us) == 0
             ? 0
             : oom(err);
  } else {
    c->renewal_failures++;
    rc = pb_string_set(res, "last_renewal_error", r->why) == 0 &&
                 pb_timestamp_set(res, "next_attempt_time",
                                  w->now_us + retry_delay_ms(c->renewal_failures) * 1000) == 0
             ? 0
             : oom(err);
  }
  *action = r->chain != NULL ? "renew" : "renew_failed";
  return rc;
}

/* Writes the outcome of one attempt on name (still at etag): the new chain
 * and key, or (chain NULL) the failure in why. One revision. */
static int renewal_write(struct api *api, const struct rpc_call_info *call, const char *name,
                         const char *etag, const char *chain, const char *key, const char *why,
                         int64_t now_us, struct tp_err *err) {
  const struct renewal r = {.chain = chain, .key = key, .why = why};
  const struct jobs_outcome w = {.kind = &api_kind_certificate,
                                 .call = call,
                                 .name = name,
                                 .etag = etag,
                                 .now_us = now_us,
                                 .edit = renewal_edit,
                                 .data = (void *)&r};
  return jobs_outcome_write(api, &w, err) < 0 ? -1 : 0;
}

static int issuance_from_acme(struct api *api, const Tlsplane__V1__Certificate *c);

/* One certificate: sign outside any write lock, then write the outcome. */
static int renew_one(struct api *api, struct jobs *jobs, const struct rpc_call_info *call,
                     const struct store_row *r, int64_t now_us) {
  struct tp_err err = {0};
  Tlsplane__V1__Certificate *c = tlsplane__v1__certificate__unpack(NULL, r->data_len, r->data);
  /* The row's due time is the sooner of its renewal and its next OCSP
   * fetch: only a renewal that is due itself goes on. */
  if (c == NULL || c->issuance == NULL || issuance_due_time_us(c) > now_us) {
    if (c != NULL)
      tlsplane__v1__certificate__free_unpacked(c, NULL);
    return 0;
  }
  if (renewal_due_us(c) > now_us) {
    /* Only its renewal information is due (acme_ari.h). */
    tlsplane__v1__certificate__free_unpacked(c, NULL);
    acme_ari_submit(api, jobs, r->name);
    return 0;
  }
  if (issuance_from_acme(api, c)) {
    /* An order takes minutes: it runs on an order thread. */
    tlsplane__v1__certificate__free_unpacked(c, NULL);
    acme_order_submit(api, jobs, r->name);
    return 0;
  }
  char *chain = NULL, *key = NULL;
  struct store_txn *txn;
  int rc = store_begin(api->store, 0, &txn, &err);
  if (rc == 0) {
    rc = issuance_sign(api, txn, c->issuance, (time_t)(now_us / 1000000), &chain, &key, &err);
    store_rollback(txn);
  }
  tlsplane__v1__certificate__free_unpacked(c, NULL);
  int renewed = 0;
  struct tp_err werr = {0};
  if (rc == 0) {
    if (renewal_write(api, call, r->name, r->etag, chain, key, NULL, now_us, &werr) == 0) {
      log_info("jobs", "renewed %s", r->name);
      const struct events_event e = {.type = TLSPLANE__V1__EVENT_TYPE__RENEWED,
                                     .resource = r->name};
      events_publish(api->events, &e);
      renewed = 1;
    } else if (werr.status != GRPC_STATUS_FAILED_PRECONDITION ||
               strstr(werr.msg, "changed meanwhile") == NULL) {
      /* The new certificate was refused (a context it is in): a failure. */
      err = werr;
      rc = -1;
      memset(&werr, 0, sizeof(werr));
    }
  }
  if (rc != 0) {
    log_warn("jobs", "renewing %s: %s", r->name, err.msg);
    if (renewal_write(api, call, r->name, r->etag, NULL, NULL, err.msg, now_us, &werr) == 0) {
      const struct events_event e = {
          .type = TLSPLANE__V1__EVENT_TYPE__RENEWAL_FAILED, .resource = r->name, .reason = err.msg};
      events_publish(api->events, &e);
    } else if (werr.status != GRPC_STATUS_FAILED_PRECONDITION)
      log_warn("jobs", "recording the failed renewal of %s: %s", r->name, werr.msg);
  }
  free(chain);
  pem_wipe_free(key);
  return renewed;
}

/* Whether c's issuer is an ACME issuer (read now; 0 when unreadable). */
static int issuance_from_acme(struct api *api, const Tlsplane__V1__Certificate *c) {
  struct store_txn *txn;
  struct tp_err err = {0};
  if (store_begin(api->store, 0, &txn, &err) != 0)
    return 0;
  ProtobufCMessage *msg = NULL;
  int acme = api_read(txn, &api_kind_issuer, c->issuance->issuer, 0, &msg, NULL, &err) == 0 &&
             ((Tlsplane__V1__Issuer *)msg)->type == TLSPLANE__V1__ISSUER__TYPE__ACME;
  store_rollback(txn);
  if (msg != NULL)
    protobuf_c_message_free_unpacked(msg, NULL);
  return acme;
}

int issuance_renew_due(struct api *api, struct jobs *jobs, int64_t now_us) {
  const struct rpc_call_info call = {
      .method = "job:certificate-renewal", .peer = "local", .actor = "system", .principal = ""};
  struct tp_err err = {0};
  struct store_row *rows = NULL;
  size_t n = 0;
  if (jobs_list_due(api->store, api_kind_certificate.kind, JOBS_DUE_WORK, now_us, RENEW_BATCH,
                    &rows, &n, &err) != 0) {
    log_warn("jobs", "certificate renewal: %s", err.msg);
    return -1;
  }
  int renewed = 0;
  for (size_t i = 0; i < n; i++)
    renewed += renew_one(api, jobs, &call, &rows[i], now_us);
  store_rows_free(rows, n);
  return renewed;
}
