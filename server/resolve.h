/* Resolution of a TlsContext into everything it names, key material
 * included: what tlsconf_ctx_build takes, and what agents receive. */
#ifndef TLSPLANE_SERVER_RESOLVE_H
#define TLSPLANE_SERVER_RESOLVE_H

#include "api.h"
#include "tlsplane/v1/snapshot.pb-c.h"

/* The policy a context uses when it names none. */
#define RESOLVE_DEFAULT_CIPHER_POLICY "cipherPolicies/default"

/* Resolves ctx inside txn. A missing reference fails with INVALID_ARGUMENT
 * naming the TlsContext field ("certificates[1]: certificates/x does not
 * exist"). *out is the caller's: free with protobuf_c_message_free_unpacked. */
int resolve_tls_context(struct store_txn *txn, const Tlsplane__V1__TlsContext *ctx,
                        Tlsplane__V1__ResolvedTlsContext **out, struct tp_err *err);

/* Resolves ctx and builds it with tlsconf_ctx_build, the agent's own code,
 * then frees the SSL_CTX: proof that every agent can load it. */
int resolve_check_tls_context(struct store_txn *txn, const Tlsplane__V1__TlsContext *ctx,
                              struct tp_err *err);

/* After a change to (kind, name) inside op->txn: checks that every
 * TlsContext referencing it still builds. FAILED_PRECONDITION naming the
 * context otherwise. */
int resolve_check_referrers(struct api_op *op, const ProtobufCMessage *res, struct tp_err *err);

#endif
