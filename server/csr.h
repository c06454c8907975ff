/* Certificate signing requests for outside CAs: CreateCertificateRequest
 * makes a key and a CSR for it, and the certificate keeps the request
 * pending (pending_request) until the signed chain is attached with
 * UpdateCertificate. The Certificate kind's prepare (svc_certificate.c)
 * settles the pending state of every write with csr_prepare.
 *
 * A certificate row's secret is its serving key's PEM, then, while a
 * request is pending, a NUL byte and the pending key's PEM. Readers that
 * take the secret as a C string (resolve.c, which hands keys to agents)
 * read the serving key alone; a certificate with no chain yet has an
 * empty serving key, and no TlsContext may name it. */
#ifndef TLSPLANE_SERVER_CSR_H
#define TLSPLANE_SERVER_CSR_H

#include "api.h"
#include "tlsplane/v1/certificate.pb-c.h"

/* The CreateCertificateRequest method of CertificateService. */
int csr_rpc_create(const struct rpc_call_info *call, const ProtobufCMessage *req,
                   ProtobufCMessage **resp, struct tp_err *err, void *data);

/* What CreateCertificateRequest hands the prepare hook (api_op.hook_data)
 * with a certificate whose pending_request it has just set. */
struct csr_hook {
  const char *pending_key_pem; /* the new request's key (the caller's) */
};

/* A new key and its request, asking for what r asks (its names, subject
 * fields and key algorithm; the other fields are not read): *key_pem
 * (PKCS#8 PEM; the caller wipes and frees it) and *pr (caller frees with
 * protobuf_c_message_free_unpacked), request_time now. */
int csr_request_make(const Tlsplane__V1__CreateCertificateRequestRequest *r, time_t now,
                     char **key_pem, Tlsplane__V1__PendingRequest **pr, struct tp_err *err);

/* The keys one certificate write starts from, malloc'd PEM or NULL: the
 * serving key and the pending request's. csr_keys_clear wipes them. */
struct csr_keys {
  char *serving;
  char *pending;
};

void csr_keys_clear(struct csr_keys *k);

/* Settles the pending request of c, the certificate op writes, before its
 * chain and key are validated; new_key: the write brings its own key.
 * Fills k from op (the stored secret, or the hook's new request). The
 * stored request is kept unless the write drops it (unset with
 * "pending_request" in the update mask), brings a new key, or attaches a
 * chain for the pending key: then k->serving becomes that key. A chain
 * for neither key is refused (INVALID_ARGUMENT naming
 * certificate_chain_pem). *pending_only: c has no chain yet, only its
 * request (nothing else to validate). */
int csr_prepare(struct api_op *op, Tlsplane__V1__Certificate *c, int new_key, struct csr_keys *k,
                int *pending_only, struct tp_err *err);

/* The row's secret for c: key (the serving key's PEM; "" when there is
 * none yet), then a NUL and k->pending while c has a pending request.
 * *secret is malloc'd (the engine wipes and frees it). 0, or -1 when out
 * of memory. */
int csr_secret_make(const Tlsplane__V1__Certificate *c, const char *key, const struct csr_keys *k,
                    uint8_t **secret, size_t *secret_len);

#endif
