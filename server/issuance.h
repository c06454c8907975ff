/* Issuing certificates from issuers (tlsplane.v1.Issuer) and renewing them:
 * what IssueCertificate and the renewal job share.
 *
 * A certificate issued by the server carries its Issuance (issuer, names,
 * lifetime, key algorithm, renewal policy). Renewal asks the issuer again
 * for the same: a new key and certificate, written as one revision by
 * actor "system". A failed attempt is recorded on the certificate
 * (last_renewal_error, renewal_failures, next_attempt_time) and retried
 * with back-off. */
#ifndef TLSPLANE_SERVER_ISSUANCE_H
#define TLSPLANE_SERVER_ISSUANCE_H

#include <time.h>

#include "api.h"
#include "tlsplane/v1/certificate.pb-c.h"
#include "tlsplane/v1/issuer.pb-c.h"

/* The first retry after a failed renewal (doubling up to the maximum);
 * TLSPLANE_RENEW_RETRY_MS overrides the first (tests). */
#define ISSUANCE_RETRY_BASE_MS (60LL * 1000)
#define ISSUANCE_RETRY_MAX_MS (3600LL * 1000)

/* Signs what iss asks for with its issuer, read through txn (any
 * transaction): a new key of iss->key_algorithm and a certificate for it.
 * *chain_pem receives the leaf and the issuer's intermediates (not its
 * root), *key_pem the key as PKCS#8 PEM: both malloc'd, the caller wipes
 * (OPENSSL_cleanse) and frees the key. Errors say why the issuer cannot
 * issue, naming "issuer": a missing issuer, a CA that does not load, or
 * one whose certificate expires before the new one would. */
int issuance_sign(struct api *api, struct store_txn *txn, const Tlsplane__V1__Issuance *iss,
                  time_t now, char **chain_pem, char **key_pem, struct tp_err *err);

/* The names a certificate asks for (IssueCertificate,
 * CreateCertificateRequest): at least one and at most 100 in all, each a
 * DNS name (a leading "*." allowed) or an IP address. Errors name
 * dns_names[i] or ip_addresses[i] (INVALID_ARGUMENT). */
int issuance_names_check(char *const *dns_names, size_t n_dns_names, char *const *ip_addresses,
                         size_t n_ip_addresses, struct tp_err *err);

/* The IssueCertificate method of CertificateService. */
int issuance_rpc_issue(const struct rpc_call_info *call, const ProtobufCMessage *req,
                       ProtobufCMessage **resp, struct tp_err *err, void *data);

/* For the Certificate kind's prepare: carries the issuance and renewal
 * state of old over to c when the write did not set them (an update by a
 * caller, which clears output fields), and derives renewal_time from
 * not_after and the policy, or the CA's renewal information
 * (acme_order.renewal_info.renewal_time) when that is sooner. 0 or -1
 * (out of memory). */
int issuance_prepare(Tlsplane__V1__Certificate *c, const Tlsplane__V1__Certificate *old,
                     struct tp_err *err);

/* When the renewal job is next due for c (µs since the epoch), 0: never:
 * its renewal (or retry), or the check of its renewal information
 * (acme_ari.h) when sooner. */
int64_t issuance_due_time_us(const Tlsplane__V1__Certificate *c);

/* Renews every certificate whose renewal (or retry) is due at now_us, on
 * the calling thread. Returns how many were renewed, or -1 when the due
 * ones could not be listed; failures are recorded on each certificate. */
struct jobs;
/* Certificates from ACME issuers are handed to jobs' order threads
 * (acme_order.h) instead, and the checks of renewal information that are
 * due to its fetch threads (acme_ari.h). */
int issuance_renew_due(struct api *api, struct jobs *jobs, int64_t now_us);

#endif
