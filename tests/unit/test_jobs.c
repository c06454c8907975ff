/* Unit tests for server/jobs: the fetch threads and the order threads
 * are two pools. Orders that never end hold the order threads and no
 * more: a fetch still runs at once; at most JOBS_ORDER_WAITING_MAX orders
 * wait, the next one is refused (-EBUSY, its data the caller's), and so
 * is a key queued or running already; jobs_stop tells the running tasks
 * to stop, returns promptly, and frees every task's data exactly once,
 * the waiting ones' without running them. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "api.h"
#include "fixtures.h"
#include "jobs.h"
#include "store.h"

static const uint8_t master_key[STORE_MASTER_KEY_LEN] = "tlsplane test master key .......";

#define assert_ok(expr, err)                                                                       \
  do {                                                                                             \
    if ((expr) != 0)                                                                               \
      fail_msg("%s: %s", #expr, (err).msg);                                                        \
  } while (0)

/* What the tasks did, counted across threads. */
struct counts {
  atomic_int started;
  atomic_int stopped; /* returned because the server stopped */
  atomic_int done;    /* returned on their own */
  atomic_int freed;
};

/* A task: its counts, and whether it blocks until the server stops (an
 * order that never ends) or returns at once (a quick fetch). */
struct task {
  struct counts *counts;
  int blocks;
};

static struct task *task_new(struct counts *c, int blocks) {
  struct task *t = calloc(1, sizeof(*t));
  assert_non_null(t);
  t->counts = c;
  t->blocks = blocks;
  return t;
}

static void task_run(void *data, const atomic_int *stop) {
  struct task *t = data;
  atomic_fetch_add(&t->counts->started, 1);
  while (t->blocks && !atomic_load(stop)) {
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 5 * 1000000L};
    nanosleep(&ts, NULL);
  }
  atomic_fetch_add(t->blocks ? &t->counts->stopped : &t->counts->done, 1);
}

static void task_free(void *data) {
  struct task *t = data;
  atomic_fetch_add(&t->counts->freed, 1);
  free(t);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Polls until *v reaches want, at most ms; returns what it holds then. */
static int wait_for(atomic_int *v, int want, int64_t ms) {
  int64_t until = now_ms() + ms;
  while (atomic_load(v) < want && now_ms() < until) {
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 5 * 1000000L};
    nanosleep(&ts, NULL);
  }
  return atomic_load(v);
}

static void test_orders_apart_and_bounded(void **state) {
  (void)state;
  char dir[256], path[300];
  fixture_tmpdir(dir, sizeof(dir));
  snprintf(path, sizeof(path), "%s/tlsplane.db", dir);
  struct store_opts opts = {.master_keys = &master_key, .n_master_keys = 1};
  struct tp_err err = {0};
  struct api api;
  memset(&api, 0, sizeof(api));
  assert_ok(store_open(path, &opts, &api.store, &err), err);
  struct jobs *jobs = NULL;
  assert_ok(jobs_start(&api, &jobs, &err), err);

  struct counts orders = {0}, fetches = {0};
  char key[32];
  /* Two orders that never end take both order threads... */
  for (int i = 0; i < JOBS_ORDER_THREADS; i++) {
    snprintf(key, sizeof(key), "certificates/o%d", i);
    assert_int_equal(jobs_order_submit(jobs, key, task_run, task_new(&orders, 1), task_free), 0);
  }
  assert_int_equal(wait_for(&orders.started, JOBS_ORDER_THREADS, 5000), JOBS_ORDER_THREADS);
  /* ... the next ones wait, up to the bound ... */
  for (int i = 0; i < JOBS_ORDER_WAITING_MAX; i++) {
    snprintf(key, sizeof(key), "certificates/w%d", i);
    assert_int_equal(jobs_order_submit(jobs, key, task_run, task_new(&orders, 1), task_free), 0);
  }
  /* ... and beyond it, or for a key queued or running, are refused: the
   * data stays the caller's. */
  struct task *refused = task_new(&orders, 1);
  assert_int_equal(jobs_order_submit(jobs, "certificates/more", task_run, refused, task_free),
                   -EBUSY);
  assert_int_equal(jobs_order_submit(jobs, "certificates/o0", task_run, refused, task_free),
                   -EBUSY);
  assert_int_equal(jobs_order_submit(jobs, "certificates/w0", task_run, refused, task_free),
                   -EBUSY);
  free(refused);
  assert_int_equal(atomic_load(&orders.freed), 0);
  assert_int_equal(atomic_load(&orders.started), JOBS_ORDER_THREADS);

  /* A fetch runs at once all the same, on its own threads. */
  assert_int_equal(
      jobs_fetch_submit(jobs, "certificates/o0", task_run, task_new(&fetches, 0), task_free), 0);
  assert_int_equal(wait_for(&fetches.freed, 1, 5000), 1);
  assert_int_equal(atomic_load(&fetches.done), 1);

  /* Stopping tells the running orders, drops the waiting ones. */
  int64_t t0 = now_ms();
  jobs_stop(jobs);
  int64_t took = now_ms() - t0;
  assert_true(took < 3000);
  assert_int_equal(atomic_load(&orders.started), JOBS_ORDER_THREADS);
  assert_int_equal(atomic_load(&orders.stopped), JOBS_ORDER_THREADS);
  assert_int_equal(atomic_load(&orders.freed), JOBS_ORDER_THREADS + JOBS_ORDER_WAITING_MAX);
  store_close(api.store);
}

/* Without jobs (tools): the task runs now, on the calling thread. */
static void test_no_jobs_runs_now(void **state) {
  (void)state;
  struct counts c = {0};
  assert_int_equal(jobs_order_submit(NULL, "certificates/x", task_run, task_new(&c, 0), task_free),
                   0);
  assert_int_equal(atomic_load(&c.done), 1);
  assert_int_equal(atomic_load(&c.freed), 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_orders_apart_and_bounded),
      cmocka_unit_test(test_no_jobs_runs_now),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
