/* ClientCertificateService: every client certificate the control-plane CA
 * issues is recorded here, by serial. auth.c accepts a certificate only
 * while its record exists and is not revoked: the TLS handshake checks the
 * chain and the dates, the record the revocation. */
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "auth.h"
#include "ca.h"
#include "certinfo.h"
#include "hub.h"
#include "pb.h"
#include "tlsplane/v1/auth.pb-c.h"

#define PRINCIPAL_MAX 64
#define VALIDITY_DEFAULT_S (365LL * 24 * 3600)
#define VALIDITY_AGENT_S (30LL * 24 * 3600)
#define VALIDITY_MAX_S (3LL * 365 * 24 * 3600)

static const char *const client_cert_mutable[] = {NULL};

static void client_cert_decorate(struct api *api, ProtobufCMessage *res) {
  api_last_used_decorate(api, &api_kind_client_certificate, res);
}

const struct api_kind api_kind_client_certificate = {
    .kind = "ClientCertificate",
    .collection = "clientCertificates",
    .resource_field = "client_certificate",
    .desc = &tlsplane__v1__client_certificate__descriptor,
    .mutable_fields = client_cert_mutable,
    .decorate = client_cert_decorate,
    .read_only = 1,
};

/* A principal: 1 to 64 letters, digits and "-_.@". */
static int principal_check(const char *p, struct tp_err *err) {
  size_t n = strlen(p);
  int ok = n > 0 && n <= PRINCIPAL_MAX;
  for (size_t i = 0; ok && i < n; i++)
    ok = (p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z') ||
         (p[i] >= '0' && p[i] <= '9') || strchr("-_.@", p[i]) != NULL;
  if (!ok)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "principal: 1 to %d letters, digits, '-', '_', '.' or '@'", PRINCIPAL_MAX);
  return 0;
}

int api_client_cert_issue(struct api *api, struct store_txn *txn, const struct rpc_call_info *call,
                          EVP_PKEY *pub, int role, const char *principal, int64_t validity_s,
                          Tlsplane__V1__ClientCertificate **out, struct tp_err *err) {
  if (api->ca == NULL)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "this server has no CA");
  char cn[PRINCIPAL_MAX + 16], agent[96] = "";
  if (role == AUTH_ROLE_AGENT) {
    snprintf(agent, sizeof(agent), "agents/%.80s", principal);
    if (api_name_check(&api_kind_agent, agent, "agent_id", err) != 0)
      return -1;
    snprintf(cn, sizeof(cn), "agent:%s", principal);
  } else {
    if (principal_check(principal, err) != 0)
      return -1;
    snprintf(cn, sizeof(cn), "%s", principal);
  }
  struct ca_issue_opts o = {
      .cn = cn, .ou = auth_role_name(role), .server = 0, .validity_s = validity_s};
  X509 *x = NULL;
  if (ca_issue(api->ca, pub, &o, &x, err) != 0)
    return -1;
  char serial[CA_SERIAL_HEX_LEN + 1], name[96];
  time_t not_before = 0, not_after = 0;
  char *pem = ca_cert_to_pem(x);
  char *subject = certinfo_name(X509_get_subject_name(x));
  char *serial_upper = certinfo_integer_hex(X509_get0_serialNumber(x));
  char *fingerprint = certinfo_fingerprint(x);
  int rc = ca_serial_hex(x, serial) == 0 &&
                   certinfo_time(X509_get0_notBefore(x), &not_before) == 0 &&
                   certinfo_time(X509_get0_notAfter(x), &not_after) == 0
               ? 0
               : -1;
  X509_free(x);
  Tlsplane__V1__ClientCertificate *c = malloc(sizeof(*c));
  if (rc != 0 || pem == NULL || subject == NULL || serial_upper == NULL || fingerprint == NULL ||
      c == NULL) {
    free(pem);
    free(subject);
    free(serial_upper);
    free(fingerprint);
    free(c);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  tlsplane__v1__client_certificate__init(c);
  snprintf(name, sizeof(name), "clientCertificates/serial-%s", serial);
  c->role = (Tlsplane__V1__Role)role;
  c->certificate_pem = pem;
  c->subject = subject;
  c->serial = serial_upper;
  c->fingerprint_sha256 = fingerprint;
  /* The rest through the setters, which copy (init left static ""s). */
  pb_string_set(&c->base, "name", name);
  pb_string_set(&c->base, "principal", cn);
  pb_string_set(&c->base, "agent", agent);
  pb_string_set(&c->base, "issued_by", call->actor);
  pb_timestamp_set(&c->base, "not_before", (int64_t)not_before * 1000000);
  pb_timestamp_set(&c->base, "not_after", (int64_t)not_after * 1000000);
  Tlsplane__V1__ClientCertificate__LabelsEntry entry =
      TLSPLANE__V1__CLIENT_CERTIFICATE__LABELS_ENTRY__INIT;
  Tlsplane__V1__ClientCertificate__LabelsEntry *entries[1] = {&entry};
  if (role == AUTH_ROLE_AGENT) {
    entry.key = "agent";
    entry.value = (char *)principal;
    c->labels = entries;
    c->n_labels = 1;
  }
  /* A deep copy: everything malloc'd, as api_write's result must be. */
  ProtobufCMessage *res = pb_clone(&c->base);
  c->labels = NULL;
  c->n_labels = 0;
  protobuf_c_message_free_unpacked(&c->base, NULL);
  if (res == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  struct api_op op = {.api = api,
                      .kind = &api_kind_client_certificate,
                      .txn = txn,
                      .call = call,
                      .now = time(NULL)};
  if (api_write(&op, res, NULL, "issue", err) != 0) {
    protobuf_c_message_free_unpacked(res, NULL);
    return -1;
  }
  if (out != NULL)
    *out = (Tlsplane__V1__ClientCertificate *)res;
  else
    protobuf_c_message_free_unpacked(res, NULL);
  return 0;
}

int api_client_cert_revoke(struct api *api, struct store_txn *txn, const struct rpc_call_info *call,
                           const char *name, const char *etag,
                           Tlsplane__V1__ClientCertificate **out, struct tp_err *err) {
  if (api_name_check(&api_kind_client_certificate, name, "name", err) != 0)
    return -1;
  ProtobufCMessage *old = NULL, *res = NULL;
  struct store_row row = {0};
  int rc = api_read(txn, &api_kind_client_certificate, name, 0, &old, &row, err);
  if (rc == 0 && etag != NULL && etag[0] != '\0' && strcmp(etag, row.etag) != 0)
    rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                    "etag mismatch: %s was changed (etag %s), re-read it", name, row.etag);
  if (rc == 0 && (res = pb_clone(old)) == NULL)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  Tlsplane__V1__ClientCertificate *c = (Tlsplane__V1__ClientCertificate *)res;
  if (rc == 0 && !c->revoked) {
    struct api_op op = {.api = api,
                        .kind = &api_kind_client_certificate,
                        .txn = txn,
                        .call = call,
                        .old = old,
                        .old_row = &row,
                        .now = time(NULL)};
    c->revoked = 1;
    pb_timestamp_set(res, "revoke_time", (int64_t)op.now * 1000000);
    rc = api_write(&op, res, etag, "revoke", err);
  }
  if (old != NULL)
    protobuf_c_message_free_unpacked(old, NULL);
  store_row_clear(&row);
  if (rc != 0) {
    if (res != NULL)
      protobuf_c_message_free_unpacked(res, NULL);
    return -1;
  }
  if (out != NULL)
    *out = c;
  else
    protobuf_c_message_free_unpacked(res, NULL);
  return 0;
}

static int issue_client_certificate(const struct rpc_call_info *call, const ProtobufCMessage *req,
                                    ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const Tlsplane__V1__IssueClientCertificateRequest *r =
      (const Tlsplane__V1__IssueClientCertificateRequest *)req;
  int role = (int)r->role;
  if (role != AUTH_ROLE_ADMIN && role != AUTH_ROLE_OPERATOR && role != AUTH_ROLE_VIEWER &&
      role != AUTH_ROLE_AGENT)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "role: ADMIN, OPERATOR, VIEWER or AGENT");
  int64_t validity_s = role == AUTH_ROLE_AGENT ? VALIDITY_AGENT_S : VALIDITY_DEFAULT_S;
  if (r->validity != NULL) {
    validity_s = pb_duration_ms(r->validity) / 1000;
    if (validity_s < 60 || validity_s > VALIDITY_MAX_S)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "validity: from one minute to three years");
  }
  EVP_PKEY *pub = NULL;
  if (ca_csr_read(r->csr_pem, "csr_pem", &pub, err) != 0)
    return -1;
  struct store_txn *txn;
  if (store_begin(b->api->store, 1, &txn, err) != 0) {
    EVP_PKEY_free(pub);
    return -1;
  }
  Tlsplane__V1__ClientCertificate *c = NULL;
  int rc = api_client_cert_issue(b->api, txn, call, pub, role, r->principal, validity_s, &c, err);
  EVP_PKEY_free(pub);
  if (rc == 0)
    rc = store_commit(txn, NULL, err);
  else
    store_rollback(txn);
  if (rc != 0) {
    if (c != NULL)
      protobuf_c_message_free_unpacked(&c->base, NULL);
    return -1;
  }
  *resp = &c->base;
  return 0;
}

static int revoke_client_certificate(const struct rpc_call_info *call, const ProtobufCMessage *req,
                                     ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const Tlsplane__V1__RevokeClientCertificateRequest *r =
      (const Tlsplane__V1__RevokeClientCertificateRequest *)req;
  struct store_txn *txn;
  if (store_begin(b->api->store, 1, &txn, err) != 0)
    return -1;
  Tlsplane__V1__ClientCertificate *c = NULL;
  int rc = api_client_cert_revoke(b->api, txn, call, r->name, r->etag, &c, err);
  if (rc == 0)
    rc = store_commit(txn, NULL, err);
  else
    store_rollback(txn);
  if (rc != 0)
    return -1;
  /* Revoked: its agent stops receiving snapshots (keys) at once; it may
   * reconnect with another certificate that is still good. */
  if (c->agent[0] != '\0' && b->api->hub != NULL)
    hub_agent_disconnect(b->api->hub, c->agent, "the agent's client certificate was revoked");
  client_cert_decorate(b->api, &c->base);
  *resp = &c->base;
  return 0;
}

const struct api_method client_cert_methods[] = {
    {"IssueClientCertificate", issue_client_certificate},
    {"RevokeClientCertificate", revoke_client_certificate},
    {NULL, NULL}};
