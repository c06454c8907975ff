/* ACME Renewal Information (RFC 9773) for certificates from ACME issuers.
 *
 * When an order completes and the CA's directory offers renewalInfo, the
 * certificate's AcmeOrder.renewal_info receives the new chain's certID
 * and a check due at once. The renewal job hands a due check to a fetch
 * thread (keyed by the certificate's name, like its order, so that the
 * two never run at once): the directory, then renewalInfo/<certID>; the
 * suggested window, a renewal time drawn uniformly inside it (now when
 * the window is past; kept while the window stays the same) and the next
 * check (the CA's Retry-After within [ACME_ARI_RETRY_MIN_S,
 * ACME_ARI_RETRY_MAX_S], ACME_ARI_RETRY_DEFAULT_S when it names none) are
 * written on the certificate in one revision. issuance_prepare then
 * renews at the sooner of that time and the policy's.
 *
 * A failed check is recorded in renewal_info.last_error (the window and
 * the time already chosen stay) and asked again after the same bounded
 * delay; it is not a renewal failure: renewal_failures and the order's
 * back-off are untouched. A directory that no longer offers renewalInfo
 * clears renewal_info. TLSPLANE_ACME_ARI_MIN_MS lowers the lower bound
 * (tests). */
#ifndef TLSPLANE_SERVER_ACME_ARI_H
#define TLSPLANE_SERVER_ACME_ARI_H

#include <stdint.h>

#include "api.h"
#include "tlsplane/v1/certificate.pb-c.h"

#define ACME_ARI_METHOD "job:acme-renewal-info"

struct jobs;

/* When c's renewal information is next to be asked for (µs since the
 * epoch); 0 when never (no chain, or no renewal_info). */
int64_t acme_ari_check_time_us(const Tlsplane__V1__Certificate *c);

/* Hands the check of certificate `name` to the fetch threads (once: not
 * while its check or order is queued or running). jobs NULL: runs it now,
 * on the calling thread. */
void acme_ari_submit(struct api *api, struct jobs *jobs, const char *name);

#endif
