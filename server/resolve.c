/* Resolution of a TlsContext into everything it names. */
#include "resolve.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "pb.h"
#include "tlsconf.h"

/* Reads the resource `name` of `kind` for the TlsContext field `field`,
 * or takes it from over. */
static int read_ref(struct store_txn *txn, const struct resolve_override *over,
                    const struct api_kind *kind, const char *name, const char *field,
                    int with_secret, ProtobufCMessage **msg, struct store_row *row,
                    struct tp_err *err) {
  if (api_name_check(kind, name, field, err) != 0)
    return -1;
  if (over != NULL && strcmp(over->kind, kind->kind) == 0 && strcmp(over->name, name) == 0) {
    *msg = pb_clone(over->res);
    if (*msg == NULL)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return 0;
  }
  if (api_read(txn, kind, name, with_secret, msg, row, err) != 0) {
    if (err->status == GRPC_STATUS_NOT_FOUND)
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: %s does not exist", field, name);
    return -1;
  }
  return 0;
}

static int add_certificate(struct store_txn *txn, const struct resolve_override *over,
                           Tlsplane__V1__ResolvedTlsContext *rc, const char *name, size_t i,
                           struct tp_err *err) {
  char field[64];
  snprintf(field, sizeof(field), "certificates[%zu]", i);
  ProtobufCMessage *cert;
  struct store_row row = {0};
  if (read_ref(txn, over, &api_kind_certificate, name, field, 1, &cert, &row, err) != 0)
    return -1;
  Tlsplane__V1__Certificate *c = (Tlsplane__V1__Certificate *)cert;
  if (c->certificate_chain_pem[0] == '\0') {
    if (row.secret != NULL)
      OPENSSL_cleanse(row.secret, row.secret_len);
    store_row_clear(&row);
    protobuf_c_message_free_unpacked(cert, NULL);
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: %s has no certificate chain yet (its request is pending: attach the "
                      "signed chain first)",
                      field, name);
  }
  /* Agents serve the chain and key; a pending request is the server's. */
  if (c->pending_request != NULL) {
    protobuf_c_message_free_unpacked(&c->pending_request->base, NULL);
    c->pending_request = NULL;
  }
  /* An order's progress is the server's too: it changes nothing served. */
  if (c->acme_order != NULL) {
    protobuf_c_message_free_unpacked(&c->acme_order->base, NULL);
    c->acme_order = NULL;
  }
  /* The key of the overriding certificate is over's (read_ref read no row). */
  int overridden = over != NULL && strcmp(over->kind, api_kind_certificate.kind) == 0 &&
                   strcmp(over->name, name) == 0;
  const uint8_t *secret = overridden ? over->secret : row.secret;
  size_t secret_len = overridden ? over->secret_len : row.secret_len;
  /* The serving key: the secret up to a NUL (a pending key follows it,
   * csr.h), which strndup stops at. */
  Tlsplane__V1__CertificateMaterial *m = malloc(sizeof(*m));
  char *key = secret ? strndup((const char *)secret, secret_len) : strdup("");
  if (row.secret != NULL)
    OPENSSL_cleanse(row.secret, row.secret_len);
  store_row_clear(&row);
  if (m == NULL || key == NULL) {
    free(m);
    free(key);
    protobuf_c_message_free_unpacked(cert, NULL);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  tlsplane__v1__certificate_material__init(m);
  m->certificate = (Tlsplane__V1__Certificate *)cert;
  m->private_key_pem = key;
  rc->certificates[rc->n_certificates++] = m;
  return 0;
}

int resolve_tls_context(struct store_txn *txn, const Tlsplane__V1__TlsContext *ctx,
                        const struct resolve_override *over, Tlsplane__V1__ResolvedTlsContext **out,
                        struct tp_err *err) {
  Tlsplane__V1__ResolvedTlsContext *rc = malloc(sizeof(*rc));
  if (rc == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  tlsplane__v1__resolved_tls_context__init(rc);
  rc->tls_context = (Tlsplane__V1__TlsContext *)pb_clone(&ctx->base);
  rc->certificates = calloc(ctx->n_certificates + 1, sizeof(*rc->certificates));
  rc->revocation_lists = calloc(ctx->n_revocation_lists + 1, sizeof(*rc->revocation_lists));
  if (rc->tls_context == NULL || rc->certificates == NULL || rc->revocation_lists == NULL) {
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto failed;
  }
  for (size_t i = 0; i < ctx->n_certificates; i++)
    if (add_certificate(txn, over, rc, ctx->certificates[i], i, err) != 0)
      goto failed;
  const char *policy = ctx->cipher_policy[0] ? ctx->cipher_policy : RESOLVE_DEFAULT_CIPHER_POLICY;
  if (read_ref(txn, over, &api_kind_cipher_policy, policy, "cipher_policy", 0,
               (ProtobufCMessage **)&rc->cipher_policy, NULL, err) != 0)
    goto failed;
  if (ctx->trust_bundle[0] &&
      read_ref(txn, over, &api_kind_trust_bundle, ctx->trust_bundle, "trust_bundle", 0,
               (ProtobufCMessage **)&rc->trust_bundle, NULL, err) != 0)
    goto failed;
  for (size_t i = 0; i < ctx->n_revocation_lists; i++) {
    char field[64];
    snprintf(field, sizeof(field), "revocation_lists[%zu]", i);
    ProtobufCMessage *rl;
    if (read_ref(txn, over, &api_kind_revocation_list, ctx->revocation_lists[i], field, 0, &rl,
                 NULL, err) != 0)
      goto failed;
    rc->revocation_lists[rc->n_revocation_lists++] = (Tlsplane__V1__RevocationList *)rl;
  }
  *out = rc;
  return 0;
failed:
  protobuf_c_message_free_unpacked(&rc->base, NULL);
  return -1;
}

int resolve_check_tls_context(struct store_txn *txn, const Tlsplane__V1__TlsContext *ctx,
                              const struct resolve_override *over, struct tp_err *err) {
  Tlsplane__V1__ResolvedTlsContext *rc;
  if (resolve_tls_context(txn, ctx, over, &rc, err) != 0)
    return -1;
  SSL_CTX *ssl_ctx = NULL;
  int rv = tlsconf_ctx_build(rc, &ssl_ctx, err);
  SSL_CTX_free(ssl_ctx);
  protobuf_c_message_free_unpacked(&rc->base, NULL);
  return rv;
}

int resolve_check_referrers(struct api_op *op, const ProtobufCMessage *res, struct tp_err *err) {
  const char *name = pb_string_get(res, "name");
  /* The key the change keeps or brings (certificates). */
  const struct store_row *old = op->old_row;
  struct resolve_override over = {
      .kind = op->kind->kind,
      .name = name,
      .res = res,
      .secret = op->set_secret ? op->secret
                : old != NULL  ? old->secret
                               : NULL,
      .secret_len = op->set_secret ? op->secret_len
                    : old != NULL  ? old->secret_len
                                   : 0,
  };
  struct store_row *rows = NULL;
  size_t n = 0;
  if (store_referrers(op->txn, op->kind->kind, name, &rows, &n, err) != 0)
    return -1;
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    if (strcmp(rows[i].kind, api_kind_tls_context.kind) != 0)
      continue;
    ProtobufCMessage *ctx;
    if (api_read(op->txn, &api_kind_tls_context, rows[i].name, 0, &ctx, NULL, err) != 0) {
      rc = -1;
      break;
    }
    struct tp_err why = {0};
    if (resolve_check_tls_context(op->txn, (Tlsplane__V1__TlsContext *)ctx, &over, &why) != 0)
      rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "%s: %s uses %s and would no longer load: %s", op->kind->resource_field,
                      rows[i].name, name, why.msg);
    protobuf_c_message_free_unpacked(ctx, NULL);
  }
  store_rows_free(rows, n);
  return rc;
}
