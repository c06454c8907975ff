/* AgentService: the fleet. Agents are recorded by the server when they
 * connect (hub.c); the API reads them with their live state, forgets them
 * (revoking their certificates), reports how far a revision has rolled
 * out, and gives agents their client certificates: enrollment with a
 * one-time join token, renewal with the current certificate. */
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "auth.h"
#include "ca.h"
#include "hub.h"
#include "pb.h"
#include "tlsplane/v1/agent.pb-c.h"

#define AGENT_CERT_VALIDITY_S (30LL * 24 * 3600)

static const char *const agent_mutable[] = {NULL};

static void agent_decorate(struct api *api, ProtobufCMessage *res) {
  if (api->hub != NULL)
    hub_agent_decorate(api->hub, (Tlsplane__V1__Agent *)res);
}

/* A deleted agent's certificates are revoked with it, in the same
 * transaction: it cannot connect again. */
static int agent_deleting(struct api_op *op, const ProtobufCMessage *res, struct tp_err *err) {
  const char *id = pb_string_get(res, "name") + strlen("agents/");
  struct store_label_req label = {STORE_LABEL_EQ, "agent", id};
  struct store_query q = {
      .kind = api_kind_client_certificate.kind, .labels = &label, .n_labels = 1};
  struct store_row *rows = NULL;
  size_t n = 0;
  if (store_list(op->txn, &q, &rows, &n, err) != 0)
    return -1;
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < n; i++)
    rc = api_client_cert_revoke(op->api, op->txn, op->call, rows[i].name, NULL, NULL, err);
  store_rows_free(rows, n);
  return rc;
}

/* A deleted agent receives no more snapshots: its stream is cut. */
static void agent_deleted(struct api *api, const char *name) {
  if (api->hub != NULL)
    hub_agent_disconnect(api->hub, name, "the agent was deleted");
}

const struct api_kind api_kind_agent = {
    .kind = "Agent",
    .collection = "agents",
    .resource_field = "agent",
    .desc = &tlsplane__v1__agent__descriptor,
    .mutable_fields = agent_mutable,
    .decorate = agent_decorate,
    .deleting = agent_deleting,
    .deleted = agent_deleted,
    .read_only = 1,
};

static int get_rollout(const struct rpc_call_info *call, const ProtobufCMessage *req,
                       ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const Tlsplane__V1__GetRolloutRequest *r = (const Tlsplane__V1__GetRolloutRequest *)req;
  if (b->api->hub == NULL)
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "no agent hub in this server");
  Tlsplane__V1__Rollout *out;
  if (hub_rollout(b->api->hub, r->revision, &out, err) != 0)
    return -1;
  *resp = &out->base;
  return 0;
}

/* The response of enrollment and renewal. */
static int agent_certificate_new(struct api *api, Tlsplane__V1__ClientCertificate *c,
                                 ProtobufCMessage **resp, struct tp_err *err) {
  Tlsplane__V1__AgentCertificate *out = malloc(sizeof(*out));
  if (out == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  tlsplane__v1__agent_certificate__init(out);
  int64_t nb = pb_timestamp_us(c->not_before), na = pb_timestamp_us(c->not_after);
  if (pb_string_set(&out->base, "certificate_pem", c->certificate_pem) != 0 ||
      pb_string_set(&out->base, "ca_pem", ca_cert_pem(api->ca)) != 0 ||
      pb_string_set(&out->base, "client_certificate", c->name) != 0 ||
      pb_string_set(&out->base, "agent", c->agent) != 0 ||
      pb_timestamp_set(&out->base, "not_after", na) != 0 ||
      pb_timestamp_set(&out->base, "renew_after", nb + (na - nb) / 3 * 2) != 0) {
    protobuf_c_message_free_unpacked(&out->base, NULL);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  *resp = &out->base;
  return 0;
}

/* Uses up the join token `name` inside txn for agent `agent_id` (filled in
 * from the token when empty): it must
 * still be good (auth.c checked it before the call, but two enrollments
 * with one token race to here; the write lock orders them). */
static int join_token_use(struct api *api, struct store_txn *txn, const struct rpc_call_info *call,
                          const char *name, char *agent_id, size_t len, struct tp_err *err) {
  ProtobufCMessage *old = NULL, *res = NULL;
  struct store_row row = {0};
  int rc = api_read(txn, &api_kind_token, name, 0, &old, &row, err);
  if (rc != 0) {
    store_row_clear(&row);
    return tp_err_set(err, GRPC_STATUS_UNAUTHENTICATED, "authorization: the join token is gone");
  }
  const Tlsplane__V1__Token *t = (const Tlsplane__V1__Token *)old;
  time_t now = time(NULL);
  if (t->role != TLSPLANE__V1__ROLE__JOIN || t->revoked || t->used_by[0] != '\0' ||
      (t->expire_time != NULL && pb_timestamp_us(t->expire_time) <= (int64_t)now * 1000000))
    rc = tp_err_set(err, GRPC_STATUS_UNAUTHENTICATED,
                    "authorization: join token %s is used, revoked or expired", name);
  else if (t->agent_id[0] != '\0' && agent_id[0] != '\0' && strcmp(t->agent_id, agent_id) != 0)
    rc = tp_err_set(err, GRPC_STATUS_PERMISSION_DENIED,
                    "agent_id: join token %s enrolls agent \"%s\", not \"%s\"", name, t->agent_id,
                    agent_id);
  else if (t->agent_id[0] == '\0' && agent_id[0] == '\0')
    rc = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                    "agent_id: required (join token %s names no agent)", name);
  if (rc == 0 && agent_id[0] == '\0')
    snprintf(agent_id, len, "%s", t->agent_id);
  if (rc == 0 && (res = pb_clone(old)) == NULL)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (rc == 0) {
    char agent[96];
    snprintf(agent, sizeof(agent), "agents/%.80s", agent_id);
    struct api_op op = {.api = api,
                        .kind = &api_kind_token,
                        .txn = txn,
                        .call = call,
                        .old = old,
                        .old_row = &row,
                        .now = now};
    pb_string_set(res, "used_by", agent);
    pb_timestamp_set(res, "use_time", (int64_t)now * 1000000);
    rc = api_write(&op, res, NULL, "use", err);
  }
  if (res != NULL)
    protobuf_c_message_free_unpacked(res, NULL);
  protobuf_c_message_free_unpacked(old, NULL);
  store_row_clear(&row);
  return rc;
}

/* Signs the CSR for agent `agent_id` and records the certificate, in one
 * transaction with using up the join token (join: its name, or NULL). */
static int agent_cert_issue(struct api *api, const struct rpc_call_info *call, const char *join,
                            char *agent_id, size_t len, const char *csr_pem,
                            ProtobufCMessage **resp, struct tp_err *err) {
  if (api->ca == NULL)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "this server has no CA");
  EVP_PKEY *pub = NULL;
  if (ca_csr_read(csr_pem, "csr_pem", &pub, err) != 0)
    return -1;
  struct store_txn *txn;
  if (store_begin(api->store, 1, &txn, err) != 0) {
    EVP_PKEY_free(pub);
    return -1;
  }
  Tlsplane__V1__ClientCertificate *c = NULL;
  int rc = join != NULL ? join_token_use(api, txn, call, join, agent_id, len, err) : 0;
  if (rc == 0)
    rc = api_client_cert_issue(api, txn, call, pub, AUTH_ROLE_AGENT, agent_id,
                               AGENT_CERT_VALIDITY_S, &c, err);
  EVP_PKEY_free(pub);
  if (rc == 0)
    rc = store_commit(txn, NULL, err);
  else
    store_rollback(txn);
  if (rc == 0)
    rc = agent_certificate_new(api, c, resp, err);
  if (c != NULL)
    protobuf_c_message_free_unpacked(&c->base, NULL);
  return rc;
}

static int enroll_agent(const struct rpc_call_info *call, const ProtobufCMessage *req,
                        ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const Tlsplane__V1__EnrollAgentRequest *r = (const Tlsplane__V1__EnrollAgentRequest *)req;
  char agent_id[80];
  snprintf(agent_id, sizeof(agent_id), "%s", r->agent_id);
  if (strlen(r->agent_id) >= sizeof(agent_id))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "agent_id: too long");
  if (agent_id[0] != '\0') {
    char name[96];
    snprintf(name, sizeof(name), "agents/%s", agent_id);
    if (api_name_check(&api_kind_agent, name, "agent_id", err) != 0)
      return -1;
  }
  if (r->csr_pem[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "csr_pem: required (a PKCS#10 request for the agent's own key)");
  if (call->role == AUTH_ROLE_JOIN) {
    char token[96];
    snprintf(token, sizeof(token), "tokens/%s", call->principal);
    return agent_cert_issue(b->api, call, token, agent_id, sizeof(agent_id), r->csr_pem, resp, err);
  }
  /* The admin enrolls an agent directly. */
  if (agent_id[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "agent_id: required");
  return agent_cert_issue(b->api, call, NULL, agent_id, sizeof(agent_id), r->csr_pem, resp, err);
}

static int renew_agent_certificate(const struct rpc_call_info *call, const ProtobufCMessage *req,
                                   ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const Tlsplane__V1__RenewAgentCertificateRequest *r =
      (const Tlsplane__V1__RenewAgentCertificateRequest *)req;
  if (r->csr_pem[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "csr_pem: required (a PKCS#10 request for the agent's new key)");
  if (call->role != AUTH_ROLE_AGENT)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "an agent renews its certificate with its current one (admins use "
                      "EnrollAgent or ClientCertificateService.IssueClientCertificate)");
  char agent_id[80];
  snprintf(agent_id, sizeof(agent_id), "%s", call->principal);
  return agent_cert_issue(b->api, call, NULL, agent_id, sizeof(agent_id), r->csr_pem, resp, err);
}

const struct api_method agent_methods[] = {{"GetRollout", get_rollout},
                                           {"EnrollAgent", enroll_agent},
                                           {"RenewAgentCertificate", renew_agent_certificate},
                                           {NULL, NULL}};
