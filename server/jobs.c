/* Background jobs: a thread that wakes on a fixed tick and runs what is due. */
#include "jobs.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "crl_refresh.h"
#include "issuance.h"
#include "log.h"
#include "ocsp_fetch.h"
#include "usage.h"

#define JOBS_TICK_MS 1000

struct jobs {
  struct api *api;
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t wake;
  int stopping;            /* under lock */
  struct ocsp_rounds ocsp; /* the job thread's */
};

int jobs_list_due(struct store *store, const char *kind, enum jobs_due_time which, int64_t now_us,
                  int limit, struct store_row **rows, size_t *n, struct tp_err *err) {
  struct store_query q = {.kind = kind, .limit = limit};
  if (which == JOBS_DUE_EXPIRE) {
    q.has_expire_before = 1;
    q.expire_before_us = now_us + 1;
  } else {
    q.has_due_before = 1;
    q.due_before_us = now_us + 1;
  }
  struct store_txn *txn;
  *rows = NULL;
  *n = 0;
  if (store_begin(store, 0, &txn, err) != 0)
    return -1;
  int rc = store_list(txn, &q, rows, n, err);
  store_rollback(txn);
  return rc;
}

int jobs_rotate_due_ticket_keys(struct api *api, int64_t now_us) {
  const struct rpc_call_info call = {
      .method = "job:ticket-key-rotation", .peer = "local", .actor = "system", .principal = ""};
  struct tp_err err = {0};
  struct store_row *rows = NULL;
  size_t n = 0;
  if (jobs_list_due(api->store, api_kind_ticket_key_ring.kind, JOBS_DUE_EXPIRE, now_us, 0, &rows,
                    &n, &err) != 0) {
    log_warn("jobs", "ticket-key rotation: %s", err.msg);
    return -1;
  }
  int rotated = 0;
  for (size_t i = 0; i < n; i++) {
    /* The etag guards against a rotation by hand in between. */
    if (api_ticket_keys_rotate(api, &call, rows[i].name, rows[i].etag, NULL, &err) == 0) {
      log_info("jobs", "rotated the ticket keys of %s on schedule", rows[i].name);
      rotated++;
    } else if (err.status != GRPC_STATUS_FAILED_PRECONDITION &&
               err.status != GRPC_STATUS_NOT_FOUND) {
      log_warn("jobs", "rotating %s: %s", rows[i].name, err.msg);
    }
  }
  store_rows_free(rows, n);
  return rotated;
}

/* The last uses noted since the previous round, in one write. */
static void usage_write(struct api *api) {
  struct tp_err err = {0};
  if (api->usage != NULL && usage_flush(api->usage, api->store, &err) < 0)
    log_warn("jobs", "recording the last use of credentials: %s", err.msg);
}

static void *jobs_main(void *arg) {
  struct jobs *jobs = arg;
  pthread_mutex_lock(&jobs->lock);
  while (!jobs->stopping) {
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += JOBS_TICK_MS / 1000;
    pthread_cond_timedwait(&jobs->wake, &jobs->lock, &deadline);
    if (jobs->stopping)
      break;
    pthread_mutex_unlock(&jobs->lock);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    jobs_rotate_due_ticket_keys(jobs->api, (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000);
    ocsp_refresh_due(jobs->api, &jobs->ocsp, (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000);
    crl_refresh_run(jobs->api, (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000);
    issuance_renew_due(jobs->api, (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000);
    usage_write(jobs->api);
    pthread_mutex_lock(&jobs->lock);
  }
  pthread_mutex_unlock(&jobs->lock);
  return NULL;
}

int jobs_start(struct api *api, struct jobs **out, struct tp_err *err) {
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) /* before the job thread uses curl */
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "cannot initialise libcurl");
  struct jobs *jobs = calloc(1, sizeof(*jobs));
  if (jobs == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  jobs->api = api;
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_mutex_init(&jobs->lock, NULL);
  pthread_cond_init(&jobs->wake, &attr);
  pthread_condattr_destroy(&attr);
  if (pthread_create(&jobs->thread, NULL, jobs_main, jobs) != 0) {
    pthread_cond_destroy(&jobs->wake);
    pthread_mutex_destroy(&jobs->lock);
    free(jobs);
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "cannot start the job thread");
  }
  *out = jobs;
  return 0;
}

void jobs_stop(struct jobs *jobs) {
  if (jobs == NULL)
    return;
  pthread_mutex_lock(&jobs->lock);
  jobs->stopping = 1;
  pthread_cond_signal(&jobs->wake);
  pthread_mutex_unlock(&jobs->lock);
  pthread_join(jobs->thread, NULL);
  usage_write(jobs->api);
  ocsp_rounds_clear(&jobs->ocsp);
  curl_global_cleanup(); /* jobs_start's init: the fetchers ran on this thread */
  pthread_cond_destroy(&jobs->wake);
  pthread_mutex_destroy(&jobs->lock);
  free(jobs);
}
