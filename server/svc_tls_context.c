/* TlsContextService: what tls.createSecureContext and the per-connection
 * server options hold, by reference. */
#include <string.h>

#include "api.h"
#include "listener_rules.h"
#include "resolve.h"
#include "tlsconf.h"

static const char *const tls_context_mutable[] = {
    "certificates",        "cipher_policy",   "trust_bundle",
    "revocation_lists",    "request_cert",    "reject_unauthorized",
    "alpn_protocols",      "npn_protocols",   "session_timeout",
    "session_id_context",  "session_tickets", "session_cache_size",
    "tls13_tickets",       "ocsp_stapling",   "max_send_fragment",
    "ocsp_staple_revoked", "client",          NULL};

/* An update keeps the context the kind every listener naming it needs
 * (client for upstream_tls, server otherwise, a trust bundle where the
 * upstream is verified: listener_rules_upstream_context_check, as the
 * agent checks it). FAILED_PRECONDITION naming the listener otherwise. */
static int listeners_check(struct api_op *op, const Tlsplane__V1__TlsContext *ctx,
                           struct tp_err *err) {
  if (op->old == NULL)
    return 0;
  struct store_row *rows = NULL;
  size_t n = 0;
  if (store_referrers(op->txn, api_kind_tls_context.kind, ctx->name, &rows, &n, err) != 0)
    return -1;
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    if (strcmp(rows[i].kind, api_kind_listener.kind) != 0)
      continue;
    ProtobufCMessage *m;
    if (api_read(op->txn, &api_kind_listener, rows[i].name, 0, &m, NULL, err) != 0) {
      rc = -1;
      break;
    }
    const Tlsplane__V1__Listener *l = (const Tlsplane__V1__Listener *)m;
    size_t k = l->n_sni_routes + 1 + (l->upstream_tls != NULL);
    for (size_t j = 0; rc == 0 && j < k; j++) {
      char field[64];
      const char *name;
      if (j == 0) {
        snprintf(field, sizeof(field), "default_tls_context");
        name = l->default_tls_context;
      } else if (j == l->n_sni_routes + 1) {
        snprintf(field, sizeof(field), "upstream_tls.tls_context");
        name = l->upstream_tls->tls_context;
      } else {
        snprintf(field, sizeof(field), "sni_routes[%zu].tls_context", j - 1);
        name = l->sni_routes[j - 1]->tls_context;
      }
      struct tp_err why = {0};
      if (strcmp(name, ctx->name) == 0 &&
          listener_rules_upstream_context_check(l, ctx, field, &why) != 0)
        rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                        "tls_context: %s would no longer load: %s", rows[i].name, why.msg);
    }
    protobuf_c_message_free_unpacked(m, NULL);
  }
  store_rows_free(rows, n);
  return rc;
}

static int tls_context_prepare(struct api_op *op, ProtobufCMessage *res, struct tp_err *err) {
  const Tlsplane__V1__TlsContext *ctx = (const Tlsplane__V1__TlsContext *)res;
  if (ctx->n_certificates == 0 && !ctx->client)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "certificates: at least one certificate is required");
  for (size_t i = 0; i < ctx->n_certificates; i++)
    for (size_t j = 0; j < i; j++)
      if (strcmp(ctx->certificates[i], ctx->certificates[j]) == 0)
        return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                          "certificates[%zu]: %s is listed twice", i, ctx->certificates[i]);
  for (size_t i = 0; i < ctx->n_revocation_lists; i++)
    for (size_t j = 0; j < i; j++)
      if (strcmp(ctx->revocation_lists[i], ctx->revocation_lists[j]) == 0)
        return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                          "revocation_lists[%zu]: %s is listed twice", i, ctx->revocation_lists[i]);
  /* The agent's own build decides: what is accepted here loads everywhere. */
  if (resolve_check_tls_context(op->txn, ctx, NULL, err) != 0)
    return -1;
  return listeners_check(op, ctx, err);
}

static int tls_context_refs(const ProtobufCMessage *res, struct api_refs *refs) {
  const Tlsplane__V1__TlsContext *ctx = (const Tlsplane__V1__TlsContext *)res;
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < ctx->n_certificates; i++)
    rc = api_refs_add(refs, api_kind_certificate.kind, ctx->certificates[i],
                      "tls_context.certificates[%zu]", i);
  if (rc == 0)
    rc = api_refs_add(refs, api_kind_cipher_policy.kind,
                      ctx->cipher_policy[0] ? ctx->cipher_policy : RESOLVE_DEFAULT_CIPHER_POLICY,
                      "tls_context.cipher_policy");
  if (rc == 0 && ctx->trust_bundle[0])
    rc = api_refs_add(refs, api_kind_trust_bundle.kind, ctx->trust_bundle,
                      "tls_context.trust_bundle");
  for (size_t i = 0; rc == 0 && i < ctx->n_revocation_lists; i++)
    rc = api_refs_add(refs, api_kind_revocation_list.kind, ctx->revocation_lists[i],
                      "tls_context.revocation_lists[%zu]", i);
  return rc;
}

const struct api_kind api_kind_tls_context = {
    .kind = "TlsContext",
    .collection = "tlsContexts",
    .resource_field = "tls_context",
    .desc = &tlsplane__v1__tls_context__descriptor,
    .mutable_fields = tls_context_mutable,
    .prepare = tls_context_prepare,
    .refs = tls_context_refs,
};
