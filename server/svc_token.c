/* TokenService: bearer tokens. A token's secret ("tlsp_<id>_<random>") is
 * shown once, in CreateToken's response; the store keeps its SHA-256 as
 * the row's secret (sealed, as every secret). Revoking keeps the token
 * listed; auth.c refuses it from the next call on. */
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "auth.h"
#include "pb.h"
#include "tlsplane/v1/auth.pb-c.h"

#define JOIN_TTL_DEFAULT_S 3600
/* The longest a token may live when it has an expiry: ten years. */
#define TOKEN_TTL_MAX_S (3653 * 86400LL)

static const char *const token_mutable[] = {"description", NULL};

static void token_decorate(struct api *api, ProtobufCMessage *res) {
  api_last_used_decorate(api, &api_kind_token, res);
}

const struct api_kind api_kind_token = {
    .kind = "Token",
    .collection = "tokens",
    .resource_field = "token",
    .desc = &tlsplane__v1__token__descriptor,
    .mutable_fields = token_mutable,
    .decorate = token_decorate,
    .read_only = 1, /* CreateToken is its own method */
};

/* Fields only the server sets. */
static void token_clear_output(Tlsplane__V1__Token *t) {
  static const char *const out[] = {"last_used_time", "revoked", "revoke_time",
                                    "created_by",     "used_by", "use_time"};
  for (size_t i = 0; i < sizeof(out) / sizeof(out[0]); i++)
    pb_field_clear(&t->base, pb_field(t->base.descriptor, out[i]));
}

int api_token_create(struct api *api, struct store_txn *txn, const struct rpc_call_info *call,
                     const char *id, const Tlsplane__V1__Token *in, int replace, char **secret,
                     Tlsplane__V1__Token **out, struct tp_err *err) {
  *secret = NULL;
  char name[96];
  snprintf(name, sizeof(name), "tokens/%.80s", id);
  if (api_name_check(&api_kind_token, name, "token_id", err) != 0)
    return -1;
  switch (in->role) {
  case TLSPLANE__V1__ROLE__ADMIN:
  case TLSPLANE__V1__ROLE__OPERATOR:
  case TLSPLANE__V1__ROLE__VIEWER:
  case TLSPLANE__V1__ROLE__JOIN:
    break;
  default:
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "token.role: ADMIN, OPERATOR, VIEWER or JOIN (agents authenticate with "
                      "client certificates)");
  }
  int64_t now_us = pb_now_us();
  time_t now = (time_t)(now_us / 1000000);
  if (in->expire_time != NULL && pb_timestamp_us(in->expire_time) <= now_us)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "token.expire_time: in the past");
  if (in->expire_time != NULL &&
      pb_timestamp_us(in->expire_time) > pb_sat_add(now_us, TOKEN_TTL_MAX_S * 1000000))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "token.expire_time: at most ten years from now (unset: the token does not "
                      "expire)");
  /* A join token enrolls one agent, which it names: a token that let the
   * agent choose would enroll anyone as an existing agent. */
  if (in->role == TLSPLANE__V1__ROLE__JOIN) {
    char agent[96];
    if (in->agent_id[0] == '\0')
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "token.agent_id: required for a join token (the agent id it enrolls)");
    snprintf(agent, sizeof(agent), "agents/%.80s", in->agent_id);
    if (api_name_check(&api_kind_agent, agent, "token.agent_id", err) != 0)
      return -1;
    if (api_labels_check(&in->base, "agent_labels", "token.agent_labels", err) != 0)
      return -1;
  } else if (in->agent_id[0] != '\0') {
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "token.agent_id: only join tokens name an agent");
  } else if (in->n_agent_labels > 0) {
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "token.agent_labels: only join tokens give an agent labels");
  } else if (in->replace) {
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "token.replace: only join tokens replace an agent's certificate");
  }
  Tlsplane__V1__Token *t = (Tlsplane__V1__Token *)pb_clone(&in->base);
  if (t == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  token_clear_output(t);
  pb_string_set(&t->base, "name", name);
  pb_string_set(&t->base, "created_by", call->actor);
  if (t->role == TLSPLANE__V1__ROLE__JOIN && t->expire_time == NULL)
    pb_timestamp_set(&t->base, "expire_time", now_us + JOIN_TTL_DEFAULT_S * 1000000LL);

  struct store_row old_row = {0};
  ProtobufCMessage *old = NULL;
  struct tp_err probe = {0};
  int exists = replace && api_read(txn, &api_kind_token, name, 0, &old, &old_row, &probe) == 0;
  if (replace && !exists && probe.status != GRPC_STATUS_NOT_FOUND) {
    *err = probe;
    protobuf_c_message_free_unpacked(&t->base, NULL);
    return -1;
  }
  uint8_t hash[AUTH_TOKEN_HASH_LEN];
  struct api_op op = {.api = api,
                      .kind = &api_kind_token,
                      .txn = txn,
                      .call = call,
                      .old = old,
                      .old_row = exists ? &old_row : NULL,
                      .now = now,
                      .set_secret = 1};
  int rc = auth_token_new(id, secret, hash);
  if (rc == 0 && (op.secret = malloc(AUTH_TOKEN_HASH_LEN)) == NULL)
    rc = -1;
  if (rc != 0) {
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  } else {
    memcpy(op.secret, hash, AUTH_TOKEN_HASH_LEN);
    op.secret_len = AUTH_TOKEN_HASH_LEN;
    rc = api_write(&op, &t->base, NULL, exists ? "replace" : "create", err);
  }
  OPENSSL_cleanse(hash, sizeof(hash));
  if (old != NULL)
    protobuf_c_message_free_unpacked(old, NULL);
  store_row_clear(&old_row);
  if (rc != 0) {
    if (*secret != NULL) {
      OPENSSL_cleanse(*secret, strlen(*secret));
      free(*secret);
      *secret = NULL;
    }
    protobuf_c_message_free_unpacked(&t->base, NULL);
    return -1;
  }
  if (out != NULL)
    *out = t;
  else
    protobuf_c_message_free_unpacked(&t->base, NULL);
  return 0;
}

static int create_token(const struct rpc_call_info *call, const ProtobufCMessage *req,
                        ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const Tlsplane__V1__CreateTokenRequest *r = (const Tlsplane__V1__CreateTokenRequest *)req;
  if (r->token == NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "token: required");
  Tlsplane__V1__Token *in = (Tlsplane__V1__Token *)pb_clone(&r->token->base);
  if (in == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (r->ttl != NULL) {
    int64_t ttl_ms = pb_duration_ms(r->ttl);
    if (ttl_ms <= 0 || ttl_ms > TOKEN_TTL_MAX_S * 1000) {
      protobuf_c_message_free_unpacked(&in->base, NULL);
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "ttl: must be more than 0 and at most ten years (%llds)",
                        (long long)TOKEN_TTL_MAX_S);
    }
    pb_timestamp_set(&in->base, "expire_time", pb_now_us() + ttl_ms * 1000);
  }
  struct store_txn *txn;
  if (store_begin(b->api->store, 1, &txn, err) != 0) {
    protobuf_c_message_free_unpacked(&in->base, NULL);
    return -1;
  }
  char *secret = NULL;
  Tlsplane__V1__Token *token = NULL;
  int rc = api_token_create(b->api, txn, call, r->token_id, in, 0, &secret, &token, err);
  protobuf_c_message_free_unpacked(&in->base, NULL);
  if (rc == 0)
    rc = store_commit(txn, NULL, err);
  else
    store_rollback(txn);
  Tlsplane__V1__CreateTokenResponse *out = rc == 0 ? malloc(sizeof(*out)) : NULL;
  if (rc == 0 && out == NULL)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (rc != 0) {
    if (token != NULL)
      protobuf_c_message_free_unpacked(&token->base, NULL);
    if (secret != NULL) {
      OPENSSL_cleanse(secret, strlen(secret));
      free(secret);
    }
    return -1;
  }
  tlsplane__v1__create_token_response__init(out);
  out->token = token;
  out->secret = secret; /* freed with the response */
  *resp = &out->base;
  return 0;
}

static int revoke_token(const struct rpc_call_info *call, const ProtobufCMessage *req,
                        ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const Tlsplane__V1__RevokeTokenRequest *r = (const Tlsplane__V1__RevokeTokenRequest *)req;
  if (api_name_check(&api_kind_token, r->name, "name", err) != 0)
    return -1;
  struct store_txn *txn;
  if (store_begin(b->api->store, 1, &txn, err) != 0)
    return -1;
  ProtobufCMessage *old = NULL, *res = NULL;
  struct store_row row = {0};
  int rc = api_read(txn, &api_kind_token, r->name, 0, &old, &row, err);
  if (rc == 0 && r->etag[0] != '\0' && strcmp(r->etag, row.etag) != 0)
    rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                    "etag mismatch: %s was changed (etag %s), re-read it", r->name, row.etag);
  if (rc == 0 && (res = pb_clone(old)) == NULL)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  Tlsplane__V1__Token *t = (Tlsplane__V1__Token *)res;
  if (rc == 0 && !t->revoked) {
    struct api_op op = {.api = b->api,
                        .kind = &api_kind_token,
                        .txn = txn,
                        .call = call,
                        .old = old,
                        .old_row = &row,
                        .now = time(NULL)};
    t->revoked = 1;
    pb_timestamp_set(res, "revoke_time", (int64_t)op.now * 1000000);
    rc = api_write(&op, res, r->etag, "revoke", err);
  }
  if (rc == 0)
    rc = store_commit(txn, NULL, err);
  else
    store_rollback(txn);
  if (old != NULL)
    protobuf_c_message_free_unpacked(old, NULL);
  store_row_clear(&row);
  if (rc != 0) {
    if (res != NULL)
      protobuf_c_message_free_unpacked(res, NULL);
    return -1;
  }
  token_decorate(b->api, res);
  *resp = res;
  return 0;
}

static int get_caller(const struct rpc_call_info *call, const ProtobufCMessage *req,
                      ProtobufCMessage **resp, struct tp_err *err, void *data) {
  (void)req;
  (void)data;
  Tlsplane__V1__Caller *c = malloc(sizeof(*c));
  if (c == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  tlsplane__v1__caller__init(c);
  c->role = (Tlsplane__V1__Role)call->role;
  if (pb_string_set(&c->base, "actor", call->actor) != 0 ||
      pb_string_set(&c->base, "principal", call->principal) != 0) {
    protobuf_c_message_free_unpacked(&c->base, NULL);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  *resp = &c->base;
  return 0;
}

const struct api_method token_methods[] = {{"CreateToken", create_token},
                                           {"RevokeToken", revoke_token},
                                           {"GetCaller", get_caller},
                                           {NULL, NULL}};
