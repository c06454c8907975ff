/* The last use of credentials (server/usage.c): noted in memory, nothing
 * in the store until a flush, the latest time wins, a flush writes every
 * use in one transaction without a revision and forgets them, a deleted
 * credential is skipped, and uses noted after a flush wait for the next. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixtures.h"
#include "store.h"
#include "usage.h"

#define assert_ok(rc, err)                                                                         \
  do {                                                                                             \
    int rc_ = (rc);                                                                                \
    if (rc_ < 0)                                                                                   \
      fail_msg("%s returned %d: %s", #rc, rc_, (err).msg);                                         \
  } while (0)

static const uint8_t key[STORE_MASTER_KEY_LEN] = "tlsplane test master key U ....";

struct fixture {
  char dir[256];
  char path[300];
  struct store *s;
  struct usage *u;
};

static void put(struct store *s, const char *kind, const char *name) {
  struct tp_err err = {0};
  struct store_txn *txn;
  struct store_write w = {.kind = kind,
                          .name = name,
                          .create = 1,
                          .data = (const uint8_t *)"x",
                          .data_len = 1,
                          .actor = "test",
                          .method = "test"};
  assert_ok(store_begin(s, 1, &txn, &err), err);
  assert_ok(store_put(txn, &w, NULL, &err), err);
  assert_ok(store_commit(txn, NULL, &err), err);
}

static int64_t stored(struct store *s, const char *kind, const char *name) {
  struct tp_err err = {0};
  struct store_txn *txn;
  int64_t t = -1;
  assert_ok(store_begin(s, 0, &txn, &err), err);
  assert_ok(store_usage_get(txn, kind, name, &t, &err), err);
  store_rollback(txn);
  return t;
}

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof(*f));
  struct tp_err err = {0};
  fixture_tmpdir(f->dir, sizeof(f->dir));
  snprintf(f->path, sizeof(f->path), "%s/tlsplane.db", f->dir);
  struct store_opts o = {.master_keys = &key, .n_master_keys = 1};
  if (store_open(f->path, &o, &f->s, &err) < 0 || (f->u = usage_new()) == NULL) {
    fprintf(stderr, "setup: %s\n", err.msg);
    return -1;
  }
  put(f->s, "Token", "tokens/ci");
  put(f->s, "Token", "tokens/gone");
  put(f->s, "ClientCertificate", "clientCertificates/serial-01");
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  char p[400];
  usage_free(f->u);
  store_close(f->s);
  unlink(f->path);
  snprintf(p, sizeof(p), "%s-wal", f->path);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", f->path);
  unlink(p);
  rmdir(f->dir);
  free(f);
  return 0;
}

static void test_noted_then_flushed(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  usage_note(f->u, "Token", "tokens/ci", 2000);
  usage_note(f->u, "Token", "tokens/ci", 1000); /* older: the latest wins */
  usage_note(f->u, "ClientCertificate", "clientCertificates/serial-01", 3000);
  /* The same name of another kind is another credential. */
  assert_int_equal(usage_last(f->u, "ClientCertificate", "tokens/ci"), 0);
  assert_int_equal(usage_last(f->u, "Token", "tokens/ci"), 2000);
  /* Nothing reached the store: noting is not a write. */
  assert_int_equal(stored(f->s, "Token", "tokens/ci"), 0);
  int64_t rev = store_revision(f->s);

  assert_int_equal(usage_flush(f->u, f->s, &err), 2);
  assert_int_equal(stored(f->s, "Token", "tokens/ci"), 2000);
  assert_int_equal(stored(f->s, "ClientCertificate", "clientCertificates/serial-01"), 3000);
  assert_int_equal(store_revision(f->s), rev); /* usage is not a change */
  /* Flushed uses are the store's now. */
  assert_int_equal(usage_last(f->u, "Token", "tokens/ci"), 0);
  assert_int_equal(usage_flush(f->u, f->s, &err), 0);

  /* A credential deleted after its use is skipped, the rest written. */
  usage_note(f->u, "Token", "tokens/gone", 4000);
  usage_note(f->u, "Token", "tokens/ci", 5000);
  struct store_txn *txn;
  assert_ok(store_begin(f->s, 1, &txn, &err), err);
  assert_ok(store_delete(txn, "Token", "tokens/gone", NULL, "test", "test", &err), err);
  assert_ok(store_commit(txn, NULL, &err), err);
  assert_int_equal(usage_flush(f->u, f->s, &err), 1);
  assert_int_equal(stored(f->s, "Token", "tokens/ci"), 5000);
}

/* Many credentials (the table grows) noted from several threads. */
#define NOTERS 4
#define NAMES 500

struct noter {
  struct usage *u;
  int id;
};

static void *noter_main(void *arg) {
  struct noter *n = arg;
  for (int i = 0; i < NAMES; i++) {
    char name[64];
    snprintf(name, sizeof(name), "tokens/t%d", i);
    usage_note(n->u, "Token", name, 100 * i + n->id);
  }
  return NULL;
}

static void test_many_threads(void **state) {
  struct fixture *f = *state;
  pthread_t t[NOTERS];
  struct noter n[NOTERS];
  for (int i = 0; i < NOTERS; i++) {
    n[i] = (struct noter){.u = f->u, .id = i};
    assert_int_equal(pthread_create(&t[i], NULL, noter_main, &n[i]), 0);
  }
  for (int i = 0; i < NOTERS; i++)
    pthread_join(t[i], NULL);
  for (int i = 0; i < NAMES; i++) {
    char name[64];
    snprintf(name, sizeof(name), "tokens/t%d", i);
    assert_int_equal(usage_last(f->u, "Token", name), 100 * i + NOTERS - 1);
  }
  /* None of them exists in the store: all skipped, all forgotten. */
  struct tp_err err = {0};
  assert_int_equal(usage_flush(f->u, f->s, &err), 0);
  assert_int_equal(usage_last(f->u, "Token", "tokens/t7"), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_noted_then_flushed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_many_threads, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
