/* Background jobs: a thread that wakes on a fixed tick and runs what is
 * due, and the fetch threads it hands network work to. */
#include "jobs.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acme_account.h"
#include "crl_refresh.h"
#include "issuance.h"
#include "log.h"
#include "ocsp_fetch.h"
#include "usage.h"

#define JOBS_TICK_MS 1000

/* A queued or running fetch. */
struct fetch_task {
  struct fetch_task *next;
  char *key;
  jobs_fetch_cb cb;
  void *data;
  void (*free_data)(void *data);
  int running; /* a fetch thread took it; it leaves the queue when cb returns */
};

struct jobs {
  struct api *api;
  pthread_t thread;
  pthread_t fetchers[JOBS_FETCH_THREADS];
  size_t n_fetchers; /* started */
  pthread_mutex_t lock;
  pthread_cond_t wake;       /* the job thread's tick */
  pthread_cond_t fetch_wake; /* a task queued, or fetch_stop set */
  int stopping;              /* under lock */
  /* Under lock, in the order queued: what waits for a fetch thread and
   * what one runs (a key is in it at most once). */
  struct fetch_task *tasks;
  atomic_int fetch_stop;   /* set once, by jobs_stop; read by running fetches */
  struct ocsp_rounds ocsp; /* the job thread's */
  int lead;                /* the job lock was held at the last round (1), not (0), unknown (-1) */
};

int64_t jobs_backoff(int64_t base, int64_t max, int failures) {
  int64_t d = base;
  for (int i = 1; i < failures && d < max; i++)
    d *= 2;
  return d < max ? d : max;
}

int64_t jobs_env_positive(const char *name, int64_t dflt) {
  const char *env = getenv(name);
  return env != NULL && atoll(env) > 0 ? atoll(env) : dflt;
}

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

static void task_free(struct fetch_task *t) {
  t->free_data(t->data);
  free(t->key);
  free(t);
}

int jobs_fetch_submit(struct jobs *jobs, const char *key, jobs_fetch_cb cb, void *data,
                      void (*free_data)(void *data)) {
  if (jobs == NULL) {
    atomic_int never = 0;
    cb(data, &never);
    free_data(data);
    return 0;
  }
  struct fetch_task *t = calloc(1, sizeof(*t));
  if (t == NULL || (t->key = strdup(key)) == NULL) {
    free(t);
    return -ENOMEM;
  }
  t->cb = cb;
  t->data = data;
  t->free_data = free_data;
  pthread_mutex_lock(&jobs->lock);
  struct fetch_task **tail = &jobs->tasks;
  for (; *tail != NULL; tail = &(*tail)->next)
    if (strcmp((*tail)->key, key) == 0)
      break;
  int rc = -EBUSY;
  if (*tail == NULL) {
    *tail = t;
    pthread_cond_signal(&jobs->fetch_wake);
    rc = 0;
  }
  pthread_mutex_unlock(&jobs->lock);
  if (rc != 0) {
    free(t->key);
    free(t);
  }
  return rc;
}

static void *fetch_main(void *arg) {
  struct jobs *jobs = arg;
  pthread_mutex_lock(&jobs->lock);
  while (!atomic_load(&jobs->fetch_stop)) {
    struct fetch_task *t = jobs->tasks;
    while (t != NULL && t->running)
      t = t->next;
    if (t == NULL) {
      pthread_cond_wait(&jobs->fetch_wake, &jobs->lock);
      continue;
    }
    t->running = 1;
    pthread_mutex_unlock(&jobs->lock);
    t->cb(t->data, &jobs->fetch_stop);
    pthread_mutex_lock(&jobs->lock);
    /* Only now may the key be queued again: its outcome is written. */
    struct fetch_task **p = &jobs->tasks;
    while (*p != t)
      p = &(*p)->next;
    *p = t->next;
    pthread_mutex_unlock(&jobs->lock);
    task_free(t);
    pthread_mutex_lock(&jobs->lock);
  }
  pthread_mutex_unlock(&jobs->lock);
  return NULL;
}

/* Whether this server runs the jobs this round (store_job_lock), saying
 * so when that changes. */
static int jobs_lead(struct jobs *jobs) {
  struct tp_err err = {0};
  int rc = store_job_lock(jobs->api->store, &err);
  int lead = rc > 0;
  if (rc < 0 && jobs->lead != 0)
    log_warn("jobs", "the job lock: %s (not running background jobs until it is back)", err.msg);
  else if (lead && jobs->lead != 1)
    log_info("jobs", "this server runs the background jobs (it holds the job lock)");
  else if (rc == 0 && jobs->lead != 0)
    log_info("jobs", "another server runs the background jobs (it holds the job lock)");
  jobs->lead = lead;
  return lead;
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
    int64_t now_us = (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;
    if (jobs_lead(jobs)) {
      jobs_rotate_due_ticket_keys(jobs->api, now_us);
      ocsp_refresh_due(jobs->api, &jobs->ocsp, jobs, now_us);
      crl_refresh_run(jobs->api, jobs, now_us);
      issuance_renew_due(jobs->api, jobs, now_us);
      acme_accounts_run(jobs->api, jobs, now_us);
    }
    usage_write(jobs->api);
    pthread_mutex_lock(&jobs->lock);
  }
  pthread_mutex_unlock(&jobs->lock);
  return NULL;
}

/* Stops and joins the fetch threads, then drops what they did not take. */
static void fetchers_stop(struct jobs *jobs) {
  pthread_mutex_lock(&jobs->lock);
  atomic_store(&jobs->fetch_stop, 1);
  pthread_cond_broadcast(&jobs->fetch_wake);
  pthread_mutex_unlock(&jobs->lock);
  for (size_t i = 0; i < jobs->n_fetchers; i++)
    pthread_join(jobs->fetchers[i], NULL);
  jobs->n_fetchers = 0;
  while (jobs->tasks != NULL) {
    struct fetch_task *t = jobs->tasks;
    jobs->tasks = t->next;
    task_free(t);
  }
}

int jobs_start(struct api *api, struct jobs **out, struct tp_err *err) {
  /* Before any thread uses curl; jobs_stop cleans up. */
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "cannot initialise libcurl");
  struct jobs *jobs = calloc(1, sizeof(*jobs));
  if (jobs == NULL) {
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto failed_alloc;
  }
  jobs->api = api;
  atomic_init(&jobs->fetch_stop, 0);
  jobs->lead = -1;
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_mutex_init(&jobs->lock, NULL);
  pthread_cond_init(&jobs->wake, &attr);
  pthread_cond_init(&jobs->fetch_wake, NULL);
  pthread_condattr_destroy(&attr);
  for (; jobs->n_fetchers < JOBS_FETCH_THREADS; jobs->n_fetchers++)
    if (pthread_create(&jobs->fetchers[jobs->n_fetchers], NULL, fetch_main, jobs) != 0) {
      tp_err_set(err, GRPC_STATUS_INTERNAL, "cannot start the fetch threads");
      goto failed_threads;
    }
  if (pthread_create(&jobs->thread, NULL, jobs_main, jobs) != 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "cannot start the job thread");
    goto failed_threads;
  }
  *out = jobs;
  return 0;
failed_threads:
  fetchers_stop(jobs);
  pthread_cond_destroy(&jobs->fetch_wake);
  pthread_cond_destroy(&jobs->wake);
  pthread_mutex_destroy(&jobs->lock);
  free(jobs);
failed_alloc:
  curl_global_cleanup();
  return -1;
}

void jobs_stop(struct jobs *jobs) {
  if (jobs == NULL)
    return;
  pthread_mutex_lock(&jobs->lock);
  jobs->stopping = 1;
  pthread_cond_signal(&jobs->wake);
  pthread_mutex_unlock(&jobs->lock);
  /* The job thread first: nothing is queued once it is gone. */
  pthread_join(jobs->thread, NULL);
  fetchers_stop(jobs);
  usage_write(jobs->api);
  ocsp_rounds_clear(&jobs->ocsp);
  curl_global_cleanup(); /* jobs_start's init: no thread of ours uses curl now */
  pthread_cond_destroy(&jobs->fetch_wake);
  pthread_cond_destroy(&jobs->wake);
  pthread_mutex_destroy(&jobs->lock);
  free(jobs);
}
