/* Resolution of a TlsContext into everything it names, key material
 * included: what tlsconf_ctx_build takes, and what agents receive. */
#ifndef TLSPLANE_SERVER_RESOLVE_H
#define TLSPLANE_SERVER_RESOLVE_H

#include "api.h"
#include "tlsplane/v1/snapshot.pb-c.h"

/* The policy a context uses when it names none. */
#define RESOLVE_DEFAULT_CIPHER_POLICY "cipherPolicies/default"

/* A resource resolved from its new version, not yet written, instead of
 * the stored one: how a change is checked against the contexts that use
 * it before it is written. Borrowed, not copied. */
struct resolve_override {
  const char *kind; /* api_kind.kind */
  const char *name;
  const ProtobufCMessage *res;
  const uint8_t *secret; /* a Certificate's private key (PEM); NULL: none */
  size_t secret_len;
};

/* Resolves ctx inside txn, reading (kind, name) of over (may be NULL) as
 * over->res. A missing reference fails with INVALID_ARGUMENT naming the
 * TlsContext field ("certificates[1]: certificates/x does not exist").
 * *out is the caller's: free with protobuf_c_message_free_unpacked. */
int resolve_tls_context(struct store_txn *txn, const Tlsplane__V1__TlsContext *ctx,
                        const struct resolve_override *over, Tlsplane__V1__ResolvedTlsContext **out,
                        struct tp_err *err);

/* Resolves ctx (with over, may be NULL) and builds it with
 * tlsconf_ctx_build, the agent's own code, then frees the SSL_CTX: proof
 * that every agent can load it. */
int resolve_check_tls_context(struct store_txn *txn, const Tlsplane__V1__TlsContext *ctx,
                              const struct resolve_override *over, struct tp_err *err);

/* Before res (the new version of op's resource, with op's secret) is
 * written: checks, reading in op->txn, that every TlsContext referencing
 * it still builds with it. FAILED_PRECONDITION naming the context
 * otherwise. */
int resolve_check_referrers(struct api_op *op, const ProtobufCMessage *res, struct tp_err *err);

#endif
