/* Background jobs: a thread that wakes on a fixed tick and runs what is
 * due, and the two pools of threads it hands network work to (jobs.h). */
#include "jobs.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acme_account.h"
#include "crl_refresh.h"
#include "issuance.h"
#include "log.h"
#include "ocsp_fetch.h"
#include "pb.h"
#include "usage.h"

#define JOBS_TICK_MS 1000
/* A pool's threads, at most: the larger pool's. */
#define POOL_THREADS_MAX                                                                           \
  (JOBS_FETCH_THREADS > JOBS_ORDER_THREADS ? JOBS_FETCH_THREADS : JOBS_ORDER_THREADS)

/* A queued or running task of a pool. */
struct pool_task {
  struct pool_task *next;
  char *key;
  jobs_fetch_cb cb;
  void *data;
  void (*free_data)(void *data);
  int running; /* a thread took it; it leaves the queue when cb returns */
};

/* Threads that run the tasks handed to them, in the order queued. A key
 * is in the queue at most once, waiting or running: a row is never
 * worked on twice at once, and its outcome is written before it can be
 * queued again. Used twice (struct jobs): the fetches and the orders. */
struct pool {
  pthread_mutex_t lock;
  pthread_cond_t wake; /* a task queued, or stop set */
  pthread_t threads[POOL_THREADS_MAX];
  size_t n_threads;   /* started */
  size_t max_waiting; /* tasks queued and not running, at most; 0: no bound */
  /* Under lock: the queue, in the order queued, and how many of its
   * tasks no thread took yet. */
  struct pool_task *tasks;
  size_t n_waiting;
  atomic_int stop; /* set once, by pool_stop; read by running tasks */
};

struct jobs {
  struct api *api;
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t wake; /* the job thread's tick */
  int stopping;        /* under lock */
  /* What waits on the network: OCSP, CRL, ACME accounts and renewal
   * information on one pool, ACME orders (minutes each) on the other, so
   * that hung orders never hold up a refresh. */
  struct pool fetch;
  struct pool orders;
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

/* Wipes the kind's secret fields of msg (strings and bytes). */
static void secrets_wipe(const struct api_kind *kind, ProtobufCMessage *msg) {
  for (const char *const *name = kind->secret_fields; name != NULL && *name != NULL; name++) {
    const ProtobufCFieldDescriptor *f = pb_field(msg->descriptor, *name);
    if (f == NULL || f->label == PROTOBUF_C_LABEL_REPEATED)
      continue;
    void *v = pb_member(msg, f);
    if (f->type == PROTOBUF_C_TYPE_STRING) {
      char *str = *(char **)v;
      if (str != NULL && str[0] != '\0')
        OPENSSL_cleanse(str, strlen(str));
    } else if (f->type == PROTOBUF_C_TYPE_BYTES) {
      ProtobufCBinaryData *b = v;
      if (b->data != NULL)
        OPENSSL_cleanse(b->data, b->len);
    }
  }
}

int jobs_outcome_write(struct api *api, const struct jobs_outcome *o, struct tp_err *err) {
  struct store_txn *txn;
  if (store_begin(api->store, 1, &txn, err) != 0)
    return -1;
  ProtobufCMessage *old = NULL, *res = NULL;
  struct store_row row = {0};
  int rc = api_read(txn, o->kind, o->name, 1, &old, &row, err);
  if (rc == 0 && o->etag != NULL && strcmp(row.etag, o->etag) != 0)
    rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s changed meanwhile", o->name);
  if (rc == 0 && (res = pb_clone(old)) == NULL)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  struct api_op op = {.api = api,
                      .kind = o->kind,
                      .txn = txn,
                      .call = o->call,
                      .old = old,
                      .old_row = &row,
                      .now = (time_t)(o->now_us / 1000000)};
  const char *action = NULL;
  int edited = rc == 0 ? o->edit(o, old, res, &op, &action, err) : -1;
  if (edited == 0)
    rc = api_write(&op, res, row.etag, action, err);
  else if (edited < 0)
    rc = -1;
  if (edited == 0 && rc == 0)
    rc = store_commit(txn, NULL, err);
  else
    store_rollback(txn);
  if (res != NULL) {
    secrets_wipe(o->kind, res);
    protobuf_c_message_free_unpacked(res, NULL);
  }
  if (old != NULL)
    protobuf_c_message_free_unpacked(old, NULL);
  if (row.secret != NULL)
    OPENSSL_cleanse(row.secret, row.secret_len);
  store_row_clear(&row);
  return rc != 0 ? -1 : edited == 0;
}

static void task_free(struct pool_task *t) {
  t->free_data(t->data);
  free(t->key);
  free(t);
}

static void *pool_main(void *arg) {
  struct pool *p = arg;
  pthread_mutex_lock(&p->lock);
  while (!atomic_load(&p->stop)) {
    struct pool_task *t = p->tasks;
    while (t != NULL && t->running)
      t = t->next;
    if (t == NULL) {
      pthread_cond_wait(&p->wake, &p->lock);
      continue;
    }
    t->running = 1;
    p->n_waiting--;
    pthread_mutex_unlock(&p->lock);
    t->cb(t->data, &p->stop);
    pthread_mutex_lock(&p->lock);
    /* Only now may the key be queued again: its outcome is written. */
    struct pool_task **q = &p->tasks;
    while (*q != t)
      q = &(*q)->next;
    *q = t->next;
    pthread_mutex_unlock(&p->lock);
    task_free(t);
    pthread_mutex_lock(&p->lock);
  }
  pthread_mutex_unlock(&p->lock);
  return NULL;
}

static void pool_init(struct pool *p, size_t max_waiting) {
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->wake, NULL);
  atomic_init(&p->stop, 0);
  p->max_waiting = max_waiting;
}

/* Starts n threads (at most POOL_THREADS_MAX). -1 when one does not
 * start: those started run until pool_stop. */
static int pool_start(struct pool *p, size_t n) {
  for (; p->n_threads < n && p->n_threads < POOL_THREADS_MAX; p->n_threads++)
    if (pthread_create(&p->threads[p->n_threads], NULL, pool_main, p) != 0)
      return -1;
  return 0;
}

/* As jobs_fetch_submit, on p; -EBUSY also when max_waiting tasks wait. */
static int pool_submit(struct pool *p, const char *key, jobs_fetch_cb cb, void *data,
                       void (*free_data)(void *data)) {
  struct pool_task *t = calloc(1, sizeof(*t));
  if (t == NULL || (t->key = strdup(key)) == NULL) {
    free(t);
    return -ENOMEM;
  }
  t->cb = cb;
  t->data = data;
  t->free_data = free_data;
  pthread_mutex_lock(&p->lock);
  struct pool_task **tail = &p->tasks;
  for (; *tail != NULL; tail = &(*tail)->next)
    if (strcmp((*tail)->key, key) == 0)
      break;
  int rc = -EBUSY;
  if (*tail == NULL && (p->max_waiting == 0 || p->n_waiting < p->max_waiting)) {
    *tail = t;
    p->n_waiting++;
    pthread_cond_signal(&p->wake);
    rc = 0;
  }
  pthread_mutex_unlock(&p->lock);
  if (rc != 0) {
    free(t->key);
    free(t);
  }
  return rc;
}

/* Tells p's threads and running tasks to stop, without waiting. */
static void pool_stop(struct pool *p) {
  pthread_mutex_lock(&p->lock);
  atomic_store(&p->stop, 1);
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->lock);
}

/* After pool_stop: joins the threads, drops what they did not take. */
static void pool_close(struct pool *p) {
  for (size_t i = 0; i < p->n_threads; i++)
    pthread_join(p->threads[i], NULL);
  p->n_threads = 0;
  while (p->tasks != NULL) {
    struct pool_task *t = p->tasks;
    p->tasks = t->next;
    task_free(t);
  }
  pthread_cond_destroy(&p->wake);
  pthread_mutex_destroy(&p->lock);
}

/* jobs NULL: cb and free_data now, on the calling thread. */
static int submit(struct jobs *jobs, struct pool *p, const char *key, jobs_fetch_cb cb, void *data,
                  void (*free_data)(void *data)) {
  if (jobs == NULL) {
    atomic_int never = 0;
    cb(data, &never);
    free_data(data);
    return 0;
  }
  return pool_submit(p, key, cb, data, free_data);
}

int jobs_fetch_submit(struct jobs *jobs, const char *key, jobs_fetch_cb cb, void *data,
                      void (*free_data)(void *data)) {
  return submit(jobs, jobs != NULL ? &jobs->fetch : NULL, key, cb, data, free_data);
}

int jobs_order_submit(struct jobs *jobs, const char *key, jobs_fetch_cb cb, void *data,
                      void (*free_data)(void *data)) {
  return submit(jobs, jobs != NULL ? &jobs->orders : NULL, key, cb, data, free_data);
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

/* Both pools stopped first, then joined: their running tasks abort side
 * by side. */
static void pools_close(struct jobs *jobs) {
  pool_stop(&jobs->fetch);
  pool_stop(&jobs->orders);
  pool_close(&jobs->fetch);
  pool_close(&jobs->orders);
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
  jobs->lead = -1;
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_mutex_init(&jobs->lock, NULL);
  pthread_cond_init(&jobs->wake, &attr);
  pthread_condattr_destroy(&attr);
  pool_init(&jobs->fetch, 0);
  pool_init(&jobs->orders, JOBS_ORDER_WAITING_MAX);
  if (pool_start(&jobs->fetch, JOBS_FETCH_THREADS) != 0 ||
      pool_start(&jobs->orders, JOBS_ORDER_THREADS) != 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "cannot start the fetch and order threads");
    goto failed_threads;
  }
  if (pthread_create(&jobs->thread, NULL, jobs_main, jobs) != 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "cannot start the job thread");
    goto failed_threads;
  }
  *out = jobs;
  return 0;
failed_threads:
  pools_close(jobs);
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
  pools_close(jobs);
  usage_write(jobs->api);
  ocsp_rounds_clear(&jobs->ocsp);
  curl_global_cleanup(); /* jobs_start's init: no thread of ours uses curl now */
  pthread_cond_destroy(&jobs->wake);
  pthread_mutex_destroy(&jobs->lock);
  free(jobs);
}
