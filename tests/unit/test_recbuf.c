/* Unit tests for OpenSSL's allocator in the agent (agent/recbuf.c): record
 * buffers and small blocks freed while hot come back to the next request
 * of their class, on the same thread only; everything else is plain malloc
 * and free; a TLS connection over the allocator still works (ASan checks
 * every block). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <malloc.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <string.h>

#include "recbuf.h"

static void test_class_blocks_are_reused_while_hot(void **state) {
  (void)state;
  void *a = OPENSSL_malloc(RECBUF_MIN + 100);
  assert_non_null(a);
  assert_true(malloc_usable_size(a) >= RECBUF_MAX);
  memset(a, 0xab, RECBUF_MAX); /* the whole class size is usable */
  recbuf_hot(1);
  OPENSSL_free(a);
  recbuf_hot(0);
  /* Kept, not given back: malloc cannot hand it out meanwhile. */
  void *m = malloc(RECBUF_MAX);
  assert_ptr_not_equal(m, a);
  free(m);
  void *b = OPENSSL_malloc(RECBUF_MAX);
  assert_ptr_equal(b, a);
  /* Freed while not hot: given back to malloc, not kept. */
  OPENSSL_free(b);
  void *c = OPENSSL_malloc(RECBUF_MIN);
  assert_non_null(c);
  recbuf_hot(1);
  OPENSSL_free(c);
  recbuf_hot(0);
  recbuf_thread_release();
}

static void test_small_blocks_are_reused_while_hot(void **state) {
  (void)state;
  void *a = OPENSSL_malloc(RECBUF_SMALL_MIN);
  assert_non_null(a);
  assert_true(malloc_usable_size(a) >= RECBUF_SMALL_MAX);
  memset(a, 0xab, RECBUF_SMALL_MAX); /* the whole class size is usable */
  recbuf_hot(1);
  OPENSSL_free(a);
  recbuf_hot(0);
  void *b = OPENSSL_zalloc(RECBUF_SMALL_MAX);
  assert_ptr_equal(b, a);
  for (int i = 0; i < RECBUF_SMALL_MAX; i++)
    assert_int_equal(((unsigned char *)b)[i], 0); /* zalloc still zeroes */
  /* Below the class: not a class block, and not kept. */
  void *tiny = OPENSSL_malloc(RECBUF_SMALL_MIN - 1);
  assert_non_null(tiny);
  recbuf_hot(1);
  OPENSSL_free(tiny);
  recbuf_hot(0);
  void *c = OPENSSL_malloc(RECBUF_SMALL_MIN);
  assert_ptr_not_equal(c, tiny);
  /* Freed while not hot: given back to malloc, not kept. */
  OPENSSL_free(b);
  void *d = OPENSSL_malloc(RECBUF_SMALL_MIN);
  assert_non_null(d);
  recbuf_hot(1);
  OPENSSL_free(c);
  OPENSSL_free(d);
  recbuf_hot(0);
  recbuf_thread_release();
}

static void test_other_sizes_untouched(void **state) {
  (void)state;
  recbuf_hot(1);
  /* Requests outside the class get what they asked for, not a class block. */
  void *small = OPENSSL_malloc(100);
  void *big = OPENSSL_malloc(64 * 1024);
  assert_true(malloc_usable_size(small) < RECBUF_MIN);
  assert_true(malloc_usable_size(big) >= 64 * 1024);
  OPENSSL_free(small);
  OPENSSL_free(big);
  void *r = OPENSSL_realloc(OPENSSL_malloc(RECBUF_MIN), 64); /* realloc is plain */
  assert_non_null(r);
  assert_true(malloc_usable_size(r) < RECBUF_MIN);
  OPENSSL_free(r);
  OPENSSL_free(NULL);
  /* Nothing of that was kept: the next class block is a fresh one. */
  void *x = OPENSSL_malloc(RECBUF_MIN);
  assert_ptr_not_equal(x, small);
  OPENSSL_free(x);
  recbuf_hot(0);
  recbuf_thread_release();
}

static void test_cache_is_bounded(void **state) {
  (void)state;
  void *p[RECBUF_CACHED + 2];
  for (int i = 0; i < RECBUF_CACHED + 2; i++)
    p[i] = OPENSSL_malloc(RECBUF_MIN);
  recbuf_hot(1);
  for (int i = 0; i < RECBUF_CACHED + 2; i++)
    OPENSSL_free(p[i]);
  recbuf_hot(0);
  /* The first RECBUF_CACHED came back, the last two went to free. */
  void *q[RECBUF_CACHED];
  for (int i = 0; i < RECBUF_CACHED; i++) {
    q[i] = OPENSSL_malloc(RECBUF_MIN);
    int found = 0;
    for (int j = 0; j < RECBUF_CACHED; j++)
      found |= q[i] == p[j];
    assert_true(found);
  }
  for (int i = 0; i < RECBUF_CACHED; i++)
    OPENSSL_free(q[i]);
  recbuf_thread_release();
}

static void *keep_one(void *arg) {
  recbuf_hot(1);
  OPENSSL_free(arg); /* kept by this thread, freed when it ends */
  recbuf_hot(0);
  return NULL;
}

static void test_thread_end_frees(void **state) {
  (void)state;
  /* LeakSanitizer (the ASan tree) fails the test if the block is lost. */
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, keep_one, OPENSSL_malloc(RECBUF_MIN)), 0);
  assert_int_equal(pthread_join(t, NULL), 0);
}

static void test_crypto_over_the_allocator(void **state) {
  (void)state;
  /* Digests and ciphers allocate through it; nothing breaks. */
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  recbuf_hot(1);
  assert_int_equal(EVP_Digest("abc", 3, md, &len, EVP_sha256(), NULL), 1);
  recbuf_hot(0);
  assert_int_equal(len, 32);
  assert_int_equal(md[0], 0xba);
  recbuf_thread_release();
}

int main(void) {
  /* First, before OpenSSL allocates anything. */
  if (recbuf_install() != 0)
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_class_blocks_are_reused_while_hot),
      cmocka_unit_test(test_small_blocks_are_reused_while_hot),
      cmocka_unit_test(test_other_sizes_untouched),
      cmocka_unit_test(test_cache_is_bounded),
      cmocka_unit_test(test_thread_end_frees),
      cmocka_unit_test(test_crypto_over_the_allocator),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
