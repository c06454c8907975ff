/* CRL freshness: the server fetches each RevocationList that has a
 * distribution_point on its schedule (refresh_interval, or its CRL's
 * next_update when that comes first) and stores a newer CRL as one write
 * (action "refresh", actor "system") that reaches agents like any other.
 * The job thread runs the rounds (jobs.c); the due lists are found with
 * the store's indexed time (the stored next_fetch_time).
 *
 * What the fetches found (last fetch time and error, back-off) is kept in
 * memory, not written: a fetch that brings the same CRL makes no revision
 * and pushes nothing. Reads show it (crl_refresh_decorate). After a
 * restart every list whose stored next_fetch_time has passed is fetched
 * at once; one whose stored time comes later within a minute of it. A
 * round queries the store only when a write, a recorded time or that
 * minute says something may be due.
 *
 * Thread safety: every function may be called from any thread; rounds run
 * on the job thread only, the fetches they hand on on the fetch threads. */
#ifndef TLSPLANE_SERVER_CRL_REFRESH_H
#define TLSPLANE_SERVER_CRL_REFRESH_H

#include <openssl/x509.h>
#include <stdint.h>

#include "api.h"
#include "tlsplane/v1/revocation_list.pb-c.h"

/* The method name of the job's writes (rpc_call_info.method). */
#define CRL_REFRESH_METHOD "job:crl-refresh"
/* refresh_interval: default and range, seconds. */
#define CRL_REFRESH_DEFAULT_S 3600
#define CRL_REFRESH_MIN_S 60
#define CRL_REFRESH_MAX_S (30 * 86400)
/* After a failed fetch: retry_base_ms, doubling per failure in a row, up
 * to CRL_RETRY_MAX_MS. */
#define CRL_RETRY_BASE_MS 60000
#define CRL_RETRY_MAX_MS 3600000
/* A fetch gives up after this long, and past this many bytes. */
#define CRL_FETCH_TIMEOUT_MS 10000
#define CRL_FETCH_MAX (16 * 1024 * 1024)

struct crl_refresh;

/* retry_base_ms: the first back-off (0: CRL_RETRY_BASE_MS). Caller frees
 * with crl_refresh_free. NULL when out of memory. */
struct crl_refresh *crl_refresh_new(int64_t retry_base_ms);
/* NULL is a no-op. */
void crl_refresh_free(struct crl_refresh *r);

struct jobs;

/* One round: hands the fetch of every list that is due at now_us to the
 * fetch threads of jobs (NULL: fetches on the calling thread); each
 * fetch records and writes its own outcome. Returns how many were handed
 * on (a list whose fetch still runs is not), or -1 when the store could
 * not be read. */
int crl_refresh_run(struct api *api, struct jobs *jobs, int64_t now_us);

/* Shows what the fetches of rl found since it was last written:
 * last_fetch_time, next_fetch_time, last_fetch_error, fetch_failures; and
 * stale (now past next_update). r may be NULL. */
void crl_refresh_decorate(struct crl_refresh *r, Tlsplane__V1__RevocationList *rl);

/* Drops what is kept for the list `name` (deleted). */
void crl_refresh_forget(struct crl_refresh *r, const char *name);

/* When the next fetch is due after a successful one at now_us:
 * interval_ms later, or at next_update_us (0: none) if that is earlier;
 * now_us when next_update_us has passed. */
int64_t crl_refresh_schedule(int64_t now_us, int64_t interval_ms, int64_t next_update_us);

/* Checks that url is an http:// or https:// URL with a host ("<field>:
 * ..."). */
int crl_refresh_url_check(const char *url, const char *field, struct tp_err *err);

/* The first http(s) URI of crl's issuing distribution point, malloc'd;
 * NULL when there is none (or out of memory). */
char *crl_refresh_idp_url(X509_CRL *crl);

#endif
