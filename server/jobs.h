/* Background jobs of the control plane: ticket-key rotation on each ring's
 * schedule (TicketKeyRing.rotation_period), OCSP fetch and refresh
 * (ocsp_fetch.h), CRL refresh (crl_refresh.h), renewal of the
 * certificates issued by the server (issuance.h), and writing the
 * credentials' last uses to the store (usage.h). One thread wakes every
 * JOBS_TICK_MS and asks the store for what is due (an indexed query). */
#ifndef TLSPLANE_SERVER_JOBS_H
#define TLSPLANE_SERVER_JOBS_H

#include "api.h"

struct jobs;

/* Starts the job thread. Caller stops it with jobs_stop. */
int jobs_start(struct api *api, struct jobs **out, struct tp_err *err);

/* Stops and joins the thread (a job in progress finishes first), then
 * writes the last uses noted since its last round. NULL is a no-op. */
void jobs_stop(struct jobs *jobs);

/* Runs one round now, on the calling thread: every ring whose
 * next_rotation_time has passed is rotated (actor "system"). Returns how
 * many were rotated, or -1. */
int jobs_rotate_due_ticket_keys(struct api *api, int64_t now_us);

/* Which time of a row says it is due (struct store_query). */
enum jobs_due_time {
  JOBS_DUE_EXPIRE, /* the row's expiry time (expire_before) */
  JOBS_DUE_WORK,   /* the row's scheduled work (due_before) */
};

/* The rows of kind whose `which` time is at or before now_us, in name
 * order, at most limit of them (0: all), without secrets, read in one
 * read transaction. *rows is the caller's: free with store_rows_free. */
int jobs_list_due(struct store *store, const char *kind, enum jobs_due_time which, int64_t now_us,
                  int limit, struct store_row **rows, size_t *n, struct tp_err *err);

#endif
