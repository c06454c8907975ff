/* The accounts of ACME issuers (Issuer.type ACME): the issuer's sealed
 * secret (the account key, and the External Account Binding's MAC key
 * when there is one), and the background job that registers each account
 * (newAccount) on a fetch thread, never in the request that made the
 * issuer, writing the outcome on the issuer: acme_account_status,
 * acme_account_url, acme_last_error, acme_next_attempt_time (back-off:
 * ACME_ACCOUNT_RETRY_BASE_MS doubling up to ACME_ACCOUNT_RETRY_MAX_MS, or
 * the server's Retry-After when longer; TLSPLANE_ACME_RETRY_MS in the
 * environment sets the base, for tests). */
#ifndef TLSPLANE_SERVER_ACME_ACCOUNT_H
#define TLSPLANE_SERVER_ACME_ACCOUNT_H

#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "tlsplane/v1/issuer.pb-c.h"

#define ACME_ACCOUNT_RETRY_BASE_MS (60 * 1000)
#define ACME_ACCOUNT_RETRY_MAX_MS (3600 * 1000)
#define ACME_ACCOUNT_METHOD "job:acme-account"

struct jobs;

/* The issuer's secret: key as PKCS#8 PEM, then the EAB MAC key (eab_len
 * bytes; none when 0) as a PEM block of its own. malloc'd, *len its
 * length; NULL on OOM. Caller wipes and frees. */
uint8_t *acme_secret_make(EVP_PKEY *key, const unsigned char *eab, size_t eab_len, size_t *len);

/* Reads acme_secret_make's output: *key, and *eab (malloc'd, wipe it;
 * NULL when none). -1 when the key does not load. */
int acme_secret_read(const uint8_t *secret, size_t len, EVP_PKEY **key, unsigned char **eab,
                     size_t *eab_len);

/* When the job next registers is's account (µs; 0: never, it is valid). */
int64_t acme_account_due_us(const Tlsplane__V1__Issuer *is);

/* One round: hands the registration of every ACME issuer that is due to
 * the fetch threads. */
void acme_accounts_run(struct api *api, struct jobs *jobs, int64_t now_us);

#endif
