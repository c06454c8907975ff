/* CipherPolicyService: ciphers, honorCipherOrder, ecdhCurve, dhparam,
 * secureProtocol and their modern successors; tls.getCiphers(). */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "pb.h"
#include "resolve.h"
#include "tlsconf.h"

static const char *const cipher_policy_mutable[] = {
    "ciphers",         "ciphersuites", "ecdh_curve",  "ecdh_disabled",      "dhparam_pem",
    "secure_protocol", "min_version",  "max_version", "honor_cipher_order", NULL};

static int cipher_policy_prepare(struct api_op *op, ProtobufCMessage *res, struct tp_err *err) {
  return tlsconf_cipher_policy_prepare((Tlsplane__V1__CipherPolicy *)res, err);
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

/* Mozilla's server-side TLS recommendations, version 5.7. */
#define MOZILLA_INTERMEDIATE_CIPHERS                                                               \
  "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"       \
  "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"         \
  "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
#define MOZILLA_OLD_CIPHERS                                                                        \
  MOZILLA_INTERMEDIATE_CIPHERS                                                                     \
  ":ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:"                     \
  "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:"                        \
  "ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA256:DHE-RSA-AES256-SHA256:"       \
  "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA256:AES256-SHA256:AES128-SHA:AES256-SHA"
#define MOZILLA_TLS13_SUITES                                                                       \
  "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define MOZILLA_GROUPS "X25519:prime256v1:secp384r1"

struct builtin_policy {
  const char *id;
  const char *ciphers; /* NULL: the seed's default list */
  const char *ciphersuites;
  const char *groups;
  const char *dhparam;
  Tlsplane__V1__TlsVersion min_version;
  int honor_cipher_order;
  const char *description;
};

static const struct builtin_policy builtins[] = {
    {"default", NULL, "", "", "", TLSPLANE__V1__TLS_VERSION__TLS_1_2, 1,
     "The seed's tls.createServer defaults"},
    {"mozilla-modern", "", MOZILLA_TLS13_SUITES, MOZILLA_GROUPS, "",
     TLSPLANE__V1__TLS_VERSION__TLS_1_3, 0, "Mozilla modern: TLS 1.3 only"},
    {"mozilla-intermediate", MOZILLA_INTERMEDIATE_CIPHERS, MOZILLA_TLS13_SUITES, MOZILLA_GROUPS,
     ffdhe2048_pem, TLSPLANE__V1__TLS_VERSION__TLS_1_2, 0, "Mozilla intermediate: TLS 1.2 and 1.3"},
    {"mozilla-old", MOZILLA_OLD_CIPHERS, MOZILLA_TLS13_SUITES, MOZILLA_GROUPS, ffdhe2048_pem,
     TLSPLANE__V1__TLS_VERSION__TLS_1_0, 1, "Mozilla old: TLS 1.0 to 1.3, for legacy clients"},
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
  cp->ciphers = strdup(b->ciphers ? b->ciphers : tlsconf_default_ciphers);
  cp->ciphersuites = strdup(b->ciphersuites);
  cp->ecdh_curve = strdup(b->groups);
  cp->dhparam_pem = strdup(b->dhparam);
  cp->min_version = b->min_version;
  cp->built_in = 1;
  (void)b->description;
  return cp;
}

int api_seed_builtins(struct api *api, struct tp_err *err) {
  const struct rpc_call_info call = {
      .method = "startup", .peer = "local", .actor = "system", .principal = ""};
  struct store_txn *txn;
  if (store_begin(api->store, 1, &txn, err) != 0)
    return -1;
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < sizeof(builtins) / sizeof(builtins[0]); i++) {
    char name[64];
    snprintf(name, sizeof(name), "cipherPolicies/%s", builtins[i].id);
    struct store_row row = {0};
    struct tp_err probe = {0};
    if (store_get(txn, api_kind_cipher_policy.kind, name, 0, &row, &probe) == 0) {
      store_row_clear(&row);
      continue;
    }
    if (probe.status != GRPC_STATUS_NOT_FOUND) {
      *err = probe;
      rc = -1;
      break;
    }
    Tlsplane__V1__CipherPolicy *cp = builtin_new(&builtins[i]);
    if (cp == NULL) {
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      break;
    }
    struct api_op op = {
        .api = api, .kind = &api_kind_cipher_policy, .txn = txn, .call = &call, .now = 0};
    rc = api_write(&op, &cp->base, NULL, "create", err);
    protobuf_c_message_free_unpacked(&cp->base, NULL);
  }
  if (rc != 0) {
    store_rollback(txn);
    return -1;
  }
  return store_commit(txn, NULL, err);
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

const struct api_method cipher_policy_methods[] = {{"ListCiphers", list_ciphers}, {NULL, NULL}};
