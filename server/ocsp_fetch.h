/* OCSP fetched by the server: for each certificate whose leaf names an
 * http:// OCSP responder (Certificate.ocsp_responder_url) and that a
 * TlsContext with ocsp_stapling uses, a fetch thread (jobs.h) asks the responder,
 * checks the answer against the leaf's issuer and stores it as a write of
 * the certificate (actor "system", one revision, pushed to agents like any
 * write).
 *
 * Schedule (Certificate.ocsp_next_attempt_time, indexed as the row's due
 * time): the first fetch when the leaf is written, a refresh when half of
 * (nextUpdate - thisUpdate) has passed (an hour after the fetch when the
 * response has no nextUpdate), and after a failure a retry with a back-off
 * of base, 2 base, 4 base, ... at most 60 base, where base is 60 s (1 min
 * doubling to 1 h), or TLSPLANE_OCSP_RETRY_BASE_SECONDS when set (1 to
 * 3600). A failure keeps the stored response: agents staple it until its
 * nextUpdate, never after. */
#ifndef TLSPLANE_SERVER_OCSP_FETCH_H
#define TLSPLANE_SERVER_OCSP_FETCH_H

#include <openssl/x509.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "api.h"

#define OCSP_FETCH_TIMEOUT_MS 10000         /* connect and transfer, in all */
#define OCSP_FETCH_RESPONSE_MAX (64 * 1024) /* bytes; a longer answer is refused */
#define OCSP_RETRY_BASE_S 60
#define OCSP_RETRY_MAX_FACTOR 60 /* the back-off stops doubling at 60 x base */
#define OCSP_REFRESH_NO_NEXT_UPDATE_S 3600

/* Asks the responder at url (http:// only) for leaf's status, issued by
 * issuer: an OCSPRequest by HTTP POST (application/ocsp-request), within
 * OCSP_FETCH_TIMEOUT_MS, without redirects, refusing answers longer than
 * OCSP_FETCH_RESPONSE_MAX or with an HTTP status other than 200. *der
 * (malloc'd, caller frees) receives the body as it came, unchecked. On
 * failure err says why (UNAVAILABLE for the network and the responder,
 * INVALID_ARGUMENT for the URL). stop (may be NULL): see http_fetch_opts. */
int ocsp_fetch(const char *url, X509 *leaf, X509 *issuer, const atomic_int *stop,
               unsigned char **der, size_t *len, struct tp_err *err);

/* What a round leaves for the next: the names (sorted, malloc'd) of the
 * due certificates that no stapling context used at store revision
 * `revision`. While the revision stays, none of them can have come into
 * use, so the next round does not ask again. Zero-initialised: nothing
 * known. */
struct ocsp_rounds {
  int64_t revision;
  char **unused;
  size_t n_unused;
};

/* Frees what r holds and zeroes it. */
void ocsp_rounds_clear(struct ocsp_rounds *r);

struct jobs;

/* One round: the fetch for every certificate whose next attempt is
 * before now_us and that a stapling context uses is handed to the fetch
 * threads of jobs (NULL: fetched on the calling thread); each fetch
 * writes its own outcome. r (may be NULL) carries what one round learnt
 * to the next. Returns how many fetches were handed on (not one whose
 * fetch still runs), or -1 when the due ones could not be listed. */
int ocsp_refresh_due(struct api *api, struct ocsp_rounds *r, struct jobs *jobs, int64_t now_us);

/* The retry delay after `failures` consecutive failures (1, 2, ...), in
 * seconds, for a back-off base in seconds. */
int64_t ocsp_retry_delay_s(int64_t base_s, int failures);

#endif
