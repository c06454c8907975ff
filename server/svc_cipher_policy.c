/* CipherPolicyService: ciphers, honorCipherOrder, ecdhCurve, dhparam,
 * secureProtocol and their modern successors; tls.getCiphers(). */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "dhgen.h"
#include "log.h"
#include "pb.h"
#include "resolve.h"
#include "tlsconf.h"

static const char *const cipher_policy_mutable[] = {"ciphers",
                                                    "ciphersuites",
                                                    "ecdh_curve",
                                                    "ecdh_disabled",
                                                    "dhparam_pem",
                                                    "secure_protocol",
                                                    "min_version",
                                                    "max_version",
                                                    "honor_cipher_order",
                                                    "dhparam_group",
                                                    NULL};

static int cipher_policy_prepare(struct api_op *op, ProtobufCMessage *res, struct tp_err *err) {
  Tlsplane__V1__CipherPolicy *cp = (Tlsplane__V1__CipherPolicy *)res;
  /* dh_generation is the server's record of GenerateDhParameters: an
   * update keeps the stored one (the generic engine clears output
   * fields), a generation's own writes set it. */
  const Tlsplane__V1__CipherPolicy *old = (const Tlsplane__V1__CipherPolicy *)op->old;
  if (cp->dh_generation == NULL && old != NULL && old->dh_generation != NULL &&
      (cp->dh_generation = (Tlsplane__V1__DhGeneration *)pb_clone(&old->dh_generation->base)) ==
          NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  return tlsconf_cipher_policy_prepare(cp, err);
}

static int cipher_policy_check_mutable(const ProtobufCMessage *res, struct tp_err *err) {
  const Tlsplane__V1__CipherPolicy *cp = (const Tlsplane__V1__CipherPolicy *)res;
  if (cp->built_in)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "%s is built in and cannot be changed or deleted; create a policy of "
                      "your own instead",
                      cp->name);
  return 0;
}

const struct api_kind api_kind_cipher_policy = {
    .kind = "CipherPolicy",
    .collection = "cipherPolicies",
    .resource_field = "cipher_policy",
    .desc = &tlsplane__v1__cipher_policy__descriptor,
    .mutable_fields = cipher_policy_mutable,
    .prepare = cipher_policy_prepare,
    .check_mutable = cipher_policy_check_mutable,
    .check_referrers = resolve_check_referrers,
};

/* RFC 7919 ffdhe2048, as Mozilla's "old" configuration recommends. */
static const char ffdhe2048_pem[] =
    "-----BEGIN DH PARAMETERS-----\n"
    "MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz\n"
    "+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a\n"
    "87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7\n"
    "YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi\n"
    "7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD\n"
    "ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==\n"
    "-----END DH PARAMETERS-----\n";

/* OpenSSL 3.0's own TLS 1.3 default (OSSL_default_ciphersuites()), which
 * the seed's defaults were served with before the default became Mozilla
 * intermediate. */
#define OPENSSL_DEFAULT_SUITES                                                                     \
  "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"

/* The content of a built-in policy. The code owns it: at every start a
 * stored built-in that differs is rewritten (built-ins are read-only
 * through the API, so nothing of a user's is lost). */
struct builtin_policy {
  const char *id;
  const char *ciphers;
  const char *ciphersuites;
  const char *groups;
  const char *dhparam;
  Tlsplane__V1__TlsVersion min_version;
  int honor_cipher_order;
};

static const struct builtin_policy builtins[] = {
    /* What a context without a policy uses (RESOLVE_DEFAULT_CIPHER_POLICY):
     * tlsconf's default policy, spelt out so that reads show it. */
    {"default", tlsconf_default_ciphers, tlsconf_default_ciphersuites, tlsconf_default_groups, "",
     TLSPLANE__V1__TLS_VERSION__TLS_1_2, 1},
    /* The seed's tls.createServer defaults: what "default" held until it
     * became Mozilla intermediate, for clients that need it. */
    {"node-2015-default", tlsconf_node2015_ciphers, OPENSSL_DEFAULT_SUITES, "auto", "",
     TLSPLANE__V1__TLS_VERSION__TLS_1_2, 1},
    /* Mozilla's guidelines 6.0, as published (client order); their first
     * group, X25519MLKEM768, is not in OpenSSL 3.0. */
    {"mozilla-modern", "", tlsconf_default_ciphersuites, tlsconf_default_groups, "",
     TLSPLANE__V1__TLS_VERSION__TLS_1_3, 0},
    {"mozilla-intermediate", tlsconf_default_ciphers, tlsconf_default_ciphersuites,
     tlsconf_default_groups, "", TLSPLANE__V1__TLS_VERSION__TLS_1_2, 0},
    {"mozilla-old", tlsconf_old_ciphers, tlsconf_default_ciphersuites, tlsconf_default_groups,
     ffdhe2048_pem, TLSPLANE__V1__TLS_VERSION__TLS_1_0, 1},
};

static Tlsplane__V1__CipherPolicy *builtin_new(const struct builtin_policy *b) {
  Tlsplane__V1__CipherPolicy *cp = malloc(sizeof(*cp));
  Google__Protobuf__BoolValue *honor = malloc(sizeof(*honor));
  Tlsplane__V1__CipherPolicy__LabelsEntry *label = malloc(sizeof(*label));
  Tlsplane__V1__CipherPolicy__LabelsEntry **labels = malloc(sizeof(*labels));
  if (cp == NULL || honor == NULL || label == NULL || labels == NULL) {
    free(cp);
    free(honor);
    free(label);
    free(labels);
    return NULL;
  }
  tlsplane__v1__cipher_policy__init(cp);
  google__protobuf__bool_value__init(honor);
  tlsplane__v1__cipher_policy__labels_entry__init(label);
  honor->value = b->honor_cipher_order;
  cp->honor_cipher_order = honor;
  label->key = strdup("tlsplane.dev/built-in");
  label->value = strdup(b->id);
  labels[0] = label;
  cp->labels = labels;
  cp->n_labels = 1;
  char name[64];
  snprintf(name, sizeof(name), "cipherPolicies/%s", b->id);
  cp->name = strdup(name);
  cp->ciphers = strdup(b->ciphers);
  cp->ciphersuites = strdup(b->ciphersuites);
  cp->ecdh_curve = strdup(b->groups);
  cp->dhparam_pem = strdup(b->dhparam);
  cp->min_version = b->min_version;
  cp->built_in = 1;
  if (label->key == NULL || label->value == NULL || cp->name == NULL || cp->ciphers == NULL ||
      cp->ciphersuites == NULL || cp->ecdh_curve == NULL || cp->dhparam_pem == NULL) {
    protobuf_c_message_free_unpacked(&cp->base, NULL);
    return NULL;
  }
  return cp;
}

/* Whether a stored built-in says something else than the code's version:
 * any field that reaches an SSL_CTX, or its label. */
static int builtin_differs(const Tlsplane__V1__CipherPolicy *have,
                           const Tlsplane__V1__CipherPolicy *want) {
  const char *const have_s[] = {have->ciphers, have->ciphersuites, have->ecdh_curve,
                                have->dhparam_pem, have->secure_protocol};
  const char *const want_s[] = {want->ciphers, want->ciphersuites, want->ecdh_curve,
                                want->dhparam_pem, want->secure_protocol};
  for (size_t i = 0; i < sizeof(have_s) / sizeof(have_s[0]); i++)
    if (strcmp(have_s[i], want_s[i]) != 0)
      return 1;
  if (have->ecdh_disabled != want->ecdh_disabled || have->min_version != want->min_version ||
      have->max_version != want->max_version || !have->built_in)
    return 1;
  const Google__Protobuf__BoolValue *h = have->honor_cipher_order, *w = want->honor_cipher_order;
  if ((h == NULL) != (w == NULL) || (h != NULL && h->value != w->value))
    return 1;
  return have->n_labels != want->n_labels || have->n_labels != 1 ||
         strcmp(have->labels[0]->key, want->labels[0]->key) != 0 ||
         strcmp(have->labels[0]->value, want->labels[0]->value) != 0;
}

/* Creates b, or rewrites it when the stored one differs, in a
 * transaction of its own. *changed: whether anything was written. */
static int builtin_seed(struct api *api, const struct builtin_policy *b, int *changed,
                        struct tp_err *err) {
  const struct rpc_call_info call = {
      .method = "startup", .peer = "local", .actor = "system", .principal = ""};
  *changed = 0;
  Tlsplane__V1__CipherPolicy *want = builtin_new(b);
  if (want == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  struct store_txn *txn;
  if (store_begin(api->store, 1, &txn, err) != 0) {
    protobuf_c_message_free_unpacked(&want->base, NULL);
    return -1;
  }
  ProtobufCMessage *have = NULL;
  struct store_row row = {0};
  struct tp_err probe = {0};
  int rc = api_read(txn, &api_kind_cipher_policy, want->name, 1, &have, &row, &probe);
  if (rc != 0 && probe.status != GRPC_STATUS_NOT_FOUND) {
    *err = probe;
  } else if (rc != 0 || builtin_differs((const Tlsplane__V1__CipherPolicy *)have, want)) {
    struct api_op op = {.api = api,
                        .kind = &api_kind_cipher_policy,
                        .txn = txn,
                        .call = &call,
                        .old = have,
                        .old_row = have != NULL ? &row : NULL,
                        .now = 0};
    rc = api_write(&op, &want->base, NULL, have != NULL ? "update" : "create", err);
    *changed = rc == 0;
  } else {
    rc = 0;
  }
  if (have != NULL)
    protobuf_c_message_free_unpacked(have, NULL);
  store_row_clear(&row);
  protobuf_c_message_free_unpacked(&want->base, NULL);
  if (rc != 0 || !*changed) {
    store_rollback(txn);
    *changed = 0;
    return rc;
  }
  return store_commit(txn, NULL, err);
}

int api_seed_builtins(struct api *api, struct tp_err *err) {
  for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++) {
    int changed;
    struct tp_err e = {0};
    if (builtin_seed(api, &builtins[i], &changed, &e) == 0)
      continue;
    /* A built-in that cannot be rewritten (a context naming it would no
     * longer build) keeps its stored version: the server still starts,
     * and says so. A failing store is fatal. */
    if (e.status != GRPC_STATUS_FAILED_PRECONDITION) {
      *err = e;
      return -1;
    }
    log_warn("server", "built-in cipherPolicies/%s keeps its stored version: %s", builtins[i].id,
             e.msg);
  }
  return 0;
}

/* tls.getCiphers(), or the suites a policy enables. */
static int list_ciphers(const struct rpc_call_info *call, const ProtobufCMessage *req,
                        ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const Tlsplane__V1__ListCiphersRequest *r = (const Tlsplane__V1__ListCiphersRequest *)req;
  ProtobufCMessage *policy = NULL;
  if (r->cipher_policy[0] != '\0') {
    if (api_name_check(&api_kind_cipher_policy, r->cipher_policy, "cipher_policy", err) != 0)
      return -1;
    struct store_txn *txn;
    if (store_begin(b->api->store, 0, &txn, err) != 0)
      return -1;
    int rc = api_read(txn, &api_kind_cipher_policy, r->cipher_policy, 0, &policy, NULL, err);
    store_rollback(txn);
    if (rc != 0)
      return -1;
  }
  Tlsplane__V1__ListCiphersResponse *out = malloc(sizeof(*out));
  if (out == NULL) {
    if (policy != NULL)
      protobuf_c_message_free_unpacked(policy, NULL);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  tlsplane__v1__list_ciphers_response__init(out);
  int rc = tlsconf_ciphers_list((const Tlsplane__V1__CipherPolicy *)policy, out, err);
  if (policy != NULL)
    protobuf_c_message_free_unpacked(policy, NULL);
  if (rc != 0) {
    protobuf_c_message_free_unpacked(&out->base, NULL);
    return -1;
  }
  *resp = &out->base;
  return 0;
}

static int generate_dh_parameters(const struct rpc_call_info *call, const ProtobufCMessage *req,
                                  ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const Tlsplane__V1__GenerateDhParametersRequest *r =
      (const Tlsplane__V1__GenerateDhParametersRequest *)req;
  if (b->api->dhgen == NULL)
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "this server does not generate DH parameters");
  return dhgen_request(b->api->dhgen, call, r->name, r->bits, r->etag, resp, err);
}

const struct api_method cipher_policy_methods[] = {
    {"ListCiphers", list_ciphers}, {"GenerateDhParameters", generate_dh_parameters}, {NULL, NULL}};
