/* Background jobs of the control plane: ticket-key rotation on each ring's
 * schedule (TicketKeyRing.rotation_period), OCSP fetch and refresh
 * (ocsp_fetch.h), CRL refresh (crl_refresh.h), renewal of the
 * certificates issued by the server (issuance.h), the registration of
 * ACME issuers' accounts (acme_account.h), and writing the
 * credentials' last uses to the store (usage.h). One thread wakes every
 * JOBS_TICK_MS and asks the store for what is due (an indexed query).
 *
 * What waits on the network runs on two pools of threads fed by the job
 * thread, so that a dead endpoint (a request waits out its timeout)
 * delays neither the rotations nor the renewals: JOBS_FETCH_THREADS fetch
 * threads for what takes one exchange or a few (OCSP and CRL fetches,
 * ACME registrations and renewal-information checks), and
 * JOBS_ORDER_THREADS order threads for ACME orders, which hold theirs for
 * minutes (the challenges' rollout, the authorizations' polling): hung
 * orders never hold up an OCSP or CRL refresh. At most
 * JOBS_ORDER_WAITING_MAX orders wait for an order thread; one refused
 * stays due and is handed over again at a later round.
 *
 * Of several servers sharing a database, only the one holding the store's
 * job lock (store_job_lock, asked every round) runs the jobs; every server
 * writes its own credentials' last uses. */
#ifndef TLSPLANE_SERVER_JOBS_H
#define TLSPLANE_SERVER_JOBS_H

#include <stdatomic.h>

#include "api.h"

#define JOBS_FETCH_THREADS 2
#define JOBS_ORDER_THREADS 2
#define JOBS_ORDER_WAITING_MAX 8 /* queued and not running yet */

struct jobs;

/* Starts the job thread, the fetch threads and the order threads. Caller
 * stops them with jobs_stop. */
int jobs_start(struct api *api, struct jobs **out, struct tp_err *err);

/* Stops and joins the job thread (a round in progress finishes first),
 * then the fetch and the order threads (told to stop together): a fetch
 * or an order in progress is aborted within about a second and writes
 * nothing, queued ones are dropped. Then writes the
 * last uses noted since the last round. NULL is a no-op. */
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

/* The wait before the next attempt after `failures` failed ones in a row
 * (at least 1): base, doubled for each further failure, at most max (in
 * any unit, the same for both). */
int64_t jobs_backoff(int64_t base, int64_t max, int failures);

/* The value of environment variable name when it is a number above 0
 * (a test's short retry base), else dflt. */
int64_t jobs_env_positive(const char *name, int64_t dflt);

/* The rows of kind whose `which` time is at or before now_us, in name
 * order, at most limit of them (0: all), without secrets, read in one
 * read transaction. *rows is the caller's: free with store_rows_free. */
int jobs_list_due(struct store *store, const char *kind, enum jobs_due_time which, int64_t now_us,
                  int limit, struct store_row **rows, size_t *n, struct tp_err *err);

/* The outcome of a job's work on one row, as jobs_outcome_write writes it. */
struct jobs_outcome {
  const struct api_kind *kind;
  const struct rpc_call_info *call; /* the audit's actor and method */
  const char *name;
  /* The version the job read: a row that moved on since is left alone
   * (FAILED_PRECONDITION "NAME changed meanwhile"). NULL: edit judges. */
  const char *etag;
  int64_t now_us;
  /* Turns res (a clone of old, the row as it is now; op->old_row its row,
   * secret included) into the version to write at now_us and names the audit
   * action; may set op->hook_data (the kind's prepare hook's). 0: write
   * it; 1: write nothing; -1: fail (err set). */
  int (*edit)(const struct jobs_outcome *o, const ProtobufCMessage *old, ProtobufCMessage *res,
              struct api_op *op, const char **action, struct tp_err *err);
  void *data; /* edit's */
};

/* Writes o in one write transaction of its own: reads the row, checks
 * its etag, has o->edit change a clone, api_write (the row's etag
 * expected, actor o->call) and commit. 1 written, 0 when edit wrote
 * nothing, -1 on failure (err; nothing written). The clone's secret
 * fields (the kind's) and the row's secret are wiped before they are
 * freed. */
int jobs_outcome_write(struct api *api, const struct jobs_outcome *o, struct tp_err *err);

/* A fetch: cb(data, stop) on a fetch (or order) thread (data carries the api). It does its own
 * writes (each its own write transaction, with the etag checks that
 * guard against a write in between). stop becomes nonzero when the
 * server stops: pass it to http_fetch, and write nothing then. */
typedef void (*jobs_fetch_cb)(void *data, const atomic_int *stop);

/* Hands the fetch of `key` (a resource name, copied) to the fetch
 * threads, unless one for the same key is queued or running (a row is
 * never fetched twice at once). Returns 0 when queued: data is then the
 * queue's, cb runs at most once (not when the server stops first) and
 * free_data(data) exactly once, after it. On failure (-EBUSY: the key is
 * queued or running; -ENOMEM) neither runs and data stays the caller's.
 * jobs NULL: runs cb and free_data now, on the calling thread, and
 * returns 0. */
int jobs_fetch_submit(struct jobs *jobs, const char *key, jobs_fetch_cb cb, void *data,
                      void (*free_data)(void *data));

/* As jobs_fetch_submit, on the order threads (an ACME order, key its
 * certificate's name). -EBUSY also when JOBS_ORDER_WAITING_MAX orders
 * wait already: the caller leaves the order due, to be handed over again
 * at a later round. */
int jobs_order_submit(struct jobs *jobs, const char *key, jobs_fetch_cb cb, void *data,
                      void (*free_data)(void *data));

#endif
