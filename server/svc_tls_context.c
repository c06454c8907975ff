/* TlsContextService: what tls.createSecureContext and the per-connection
 * server options hold, by reference. */
#include <string.h>

#include "api.h"
#include "resolve.h"
#include "tlsconf.h"

static const char *const tls_context_mutable[] = {"certificates",
                                                  "cipher_policy",
                                                  "trust_bundle",
                                                  "revocation_lists",
                                                  "request_cert",
                                                  "reject_unauthorized",
                                                  "alpn_protocols",
                                                  "npn_protocols",
                                                  "session_timeout",
                                                  "session_id_context",
                                                  "session_tickets",
                                                  "session_cache_size",
                                                  "ocsp_stapling",
                                                  "max_send_fragment",
                                                  "ocsp_staple_revoked",
                                                  "client",
                                                  NULL};

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
  return resolve_check_tls_context(op->txn, ctx, NULL, err);
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
