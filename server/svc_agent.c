/* AgentService: the fleet. An agent's record is made when it enrolls
 * (labels from its join token) or first connects (hub.c); the API reads
 * it with its live state, sets its labels (UpdateAgent), forgets it
 * (revoking its certificates), reports how far a revision has rolled out,
 * and gives agents their client certificates: enrollment with a one-time
 * join token bound to the agent's id, renewal with the current
 * certificate.
 *
 * The record decides what the agent receives: its labels are set by the
 * join token and by admins and operators, never by the agent, whose hello
 * only reports its version and the labels it claims (kept apart, in
 * claimed_labels, for the fleet view). */
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
#include "serving.h"
#include "tlsplane/v1/agent.pb-c.h"

static const char *const agent_mutable[] = {NULL}; /* and labels, as every kind */

static void agent_decorate(struct api *api, ProtobufCMessage *res) {
  if (api->hub != NULL)
    hub_agent_decorate(api->hub, (Tlsplane__V1__Agent *)res);
}

/* Gives res the value of field `name` that from has (none when from is
 * NULL). */
static int field_copy(ProtobufCMessage *res, const ProtobufCMessage *from, const char *name) {
  const ProtobufCFieldDescriptor *f = pb_field(res->descriptor, name);
  if (from == NULL) {
    pb_field_clear(res, f);
    return 0;
  }
  ProtobufCMessage *copy = pb_clone(from);
  if (copy == NULL)
    return -1;
  pb_field_swap(res, copy, f);
  protobuf_c_message_free_unpacked(copy, NULL);
  return 0;
}

/* Who writes which part of the record: the agent itself (its stream, role
 * AGENT) reports its version and claimed labels, and its labels stay what
 * the record has; everyone else (enrollment, UpdateAgent) sets labels, and
 * what the agent reported stays. */
static int agent_prepare(struct api_op *op, ProtobufCMessage *res, struct tp_err *err) {
  Tlsplane__V1__Agent *a = (Tlsplane__V1__Agent *)res;
  int rc = 0;
  if (op->call->role == AUTH_ROLE_AGENT) {
    rc = field_copy(res, op->old, "labels");
  } else if (op->old != NULL) {
    rc = field_copy(res, op->old, "version");
    if (rc == 0)
      rc = field_copy(res, op->old, "claimed_labels");
  }
  if (rc != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  a->labels_mismatch =
      a->n_claimed_labels > 0 && !pb_map_equal(res, "labels", res, "claimed_labels");
  return 0;
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
    .prepare = agent_prepare,
    .decorate = agent_decorate,
    .deleting = agent_deleting,
    .deleted = agent_deleted,
    /* No CreateAgent: records come from enrollment and the stream. */
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

static int get_serving(const struct rpc_call_info *call, const ProtobufCMessage *req,
                       ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const Tlsplane__V1__GetServingRequest *r = (const Tlsplane__V1__GetServingRequest *)req;
  Tlsplane__V1__Serving *out;
  if (serving_get(b->api, r->resource, &out, err) != 0)
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
 * from the token when empty): it must still be good (auth.c checked it
 * before the call, but two enrollments with one token race to here; the
 * write lock orders them) and name that agent. *used receives the token
 * as written (caller frees). */
static int join_token_use(struct api *api, struct store_txn *txn, const struct rpc_call_info *call,
                          const char *name, char *agent_id, size_t len, Tlsplane__V1__Token **used,
                          struct tp_err *err) {
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
  else if (t->agent_id[0] == '\0')
    /* Made before join tokens were bound to one agent: it would enroll
     * any id, an existing agent's included. */
    rc = tp_err_set(err, GRPC_STATUS_PERMISSION_DENIED,
                    "authorization: join token %s names no agent; make one with token.agent_id",
                    name);
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
  if (rc == 0) {
    *used = (Tlsplane__V1__Token *)res;
    res = NULL;
  }
  if (res != NULL)
    protobuf_c_message_free_unpacked(res, NULL);
  protobuf_c_message_free_unpacked(old, NULL);
  store_row_clear(&row);
  return rc;
}

/* A new Agent named name with the agent_labels of the join token t (none
 * when t is NULL). Caller frees. */
static ProtobufCMessage *agent_labelled_new(const char *name, const Tlsplane__V1__Token *t) {
  Tlsplane__V1__Agent a = TLSPLANE__V1__AGENT__INIT;
  size_t n = t != NULL ? t->n_agent_labels : 0;
  Tlsplane__V1__Agent__LabelsEntry *entries = calloc(n ? n : 1, sizeof(*entries));
  Tlsplane__V1__Agent__LabelsEntry **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
  ProtobufCMessage *res = NULL;
  if (entries != NULL && ptrs != NULL) {
    for (size_t i = 0; i < n; i++) {
      tlsplane__v1__agent__labels_entry__init(&entries[i]);
      entries[i].key = t->agent_labels[i]->key;
      entries[i].value = t->agent_labels[i]->value;
      ptrs[i] = &entries[i];
    }
    a.name = (char *)name;
    a.labels = ptrs;
    a.n_labels = n;
    res = pb_clone(&a.base); /* a deep copy: api_write's result is all malloc'd */
  }
  free(entries);
  free(ptrs);
  return res;
}

/* Whether client certificate c is live: an agent's, neither revoked nor
 * expired. */
static int cert_live(const Tlsplane__V1__ClientCertificate *c, int64_t now_us) {
  return c->role == TLSPLANE__V1__ROLE__AGENT && !c->revoked &&
         pb_timestamp_us(c->not_after) > now_us;
}

/* Enrollment of agent `id` inside txn, before its certificate is issued:
 * an id that holds a live certificate is refused, unless the join token
 * `t` was made to replace it (then every live one is revoked; *replaced
 * counts them). The record is made, with the token's labels; an existing
 * one takes the token's labels if it has any, else keeps its own. t is
 * NULL when the admin enrolls directly (never a replacement). */
static int agent_enroll(struct api *api, struct store_txn *txn, const struct rpc_call_info *call,
                        const char *id, const Tlsplane__V1__Token *t, int *replaced,
                        struct tp_err *err) {
  char name[96];
  snprintf(name, sizeof(name), "agents/%s", id);
  struct store_label_req label = {STORE_LABEL_EQ, "agent", id};
  struct store_query q = {
      .kind = api_kind_client_certificate.kind, .labels = &label, .n_labels = 1};
  struct store_row *rows = NULL;
  size_t n = 0;
  if (store_list(txn, &q, &rows, &n, err) != 0)
    return -1;
  int64_t now_us = (int64_t)time(NULL) * 1000000;
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    Tlsplane__V1__ClientCertificate *c = (Tlsplane__V1__ClientCertificate *)api_decode_row(
        &api_kind_client_certificate, &rows[i], err);
    if (c == NULL) {
      rc = -1;
      break;
    }
    if (cert_live(c, now_us) && (t == NULL || !t->replace))
      rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "agent_id: %s already holds a live certificate (%s); to replace it, enroll "
                      "with a join token made with replace: true (that certificate is then "
                      "revoked), or revoke it first",
                      name, c->name);
    else if (cert_live(c, now_us) &&
             (rc = api_client_cert_revoke(api, txn, call, c->name, NULL, NULL, err)) == 0)
      (*replaced)++;
    protobuf_c_message_free_unpacked(&c->base, NULL);
  }
  store_rows_free(rows, n);
  if (rc != 0)
    return -1;

  ProtobufCMessage *old = NULL, *res = NULL;
  struct store_row row = {0};
  struct tp_err probe = {0};
  int exists = api_read(txn, &api_kind_agent, name, 0, &old, &row, &probe) == 0;
  if (!exists && probe.status != GRPC_STATUS_NOT_FOUND) {
    *err = probe;
    return -1;
  }
  if (!exists || (t != NULL && t->n_agent_labels > 0)) {
    ProtobufCMessage *fresh = agent_labelled_new(name, t);
    if (fresh != NULL && exists) {
      res = pb_clone(old);
      if (res != NULL)
        pb_field_swap(res, fresh, pb_field(res->descriptor, "labels"));
      protobuf_c_message_free_unpacked(fresh, NULL);
    } else {
      res = fresh;
    }
    if (res == NULL) {
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    } else {
      struct api_op op = {.api = api,
                          .kind = &api_kind_agent,
                          .txn = txn,
                          .call = call,
                          .old = old,
                          .old_row = exists ? &row : NULL,
                          .now = time(NULL)};
      rc = api_write(&op, res, NULL, "enroll", err);
      protobuf_c_message_free_unpacked(res, NULL);
    }
  }
  if (old != NULL)
    protobuf_c_message_free_unpacked(old, NULL);
  store_row_clear(&row);
  return rc;
}

/* Signs the CSR for agent `agent_id` and records the certificate, in one
 * transaction with using up the join token (join: its name, or NULL) and,
 * for an enrollment (enroll: 1; a renewal: 0), the checks and the record
 * of agent_enroll. */
static int agent_cert_issue(struct api *api, const struct rpc_call_info *call, const char *join,
                            int enroll, char *agent_id, size_t len, const char *csr_pem,
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
  Tlsplane__V1__Token *token = NULL;
  int replaced = 0;
  int rc = join != NULL ? join_token_use(api, txn, call, join, agent_id, len, &token, err) : 0;
  if (rc == 0 && enroll)
    rc = agent_enroll(api, txn, call, agent_id, token, &replaced, err);
  if (rc == 0)
    rc = api_client_cert_issue(api, txn, call, pub, AUTH_ROLE_AGENT, agent_id,
                               api->agent_cert_lifetime_s > 0 ? api->agent_cert_lifetime_s
                                                              : API_AGENT_CERT_LIFETIME_S,
                               &c, err);
  EVP_PKEY_free(pub);
  if (token != NULL)
    protobuf_c_message_free_unpacked(&token->base, NULL);
  if (rc == 0)
    rc = store_commit(txn, NULL, err);
  else
    store_rollback(txn);
  if (rc == 0 && replaced > 0 && api->hub != NULL) {
    /* The replaced certificates are revoked: their stream ends now. */
    char agent[96];
    snprintf(agent, sizeof(agent), "agents/%s", agent_id);
    hub_agent_disconnect(api->hub, agent,
                         "the agent's certificate was replaced by a new enrollment");
  }
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
    return agent_cert_issue(b->api, call, token, 1, agent_id, sizeof(agent_id), r->csr_pem, resp,
                            err);
  }
  /* The admin enrolls an agent directly. */
  if (agent_id[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "agent_id: required");
  return agent_cert_issue(b->api, call, NULL, 1, agent_id, sizeof(agent_id), r->csr_pem, resp, err);
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
  return agent_cert_issue(b->api, call, NULL, 0, agent_id, sizeof(agent_id), r->csr_pem, resp, err);
}

const struct api_method agent_methods[] = {{"GetRollout", get_rollout},
                                           {"GetServing", get_serving},
                                           {"EnrollAgent", enroll_agent},
                                           {"RenewAgentCertificate", renew_agent_certificate},
                                           {NULL, NULL}};
