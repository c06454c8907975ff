/* OpenSSL's allocator for the agent (see recbuf.h). */
#include "recbuf.h"

#include <malloc.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>

/* A thread's cached blocks; n of them in block[0..n). Registered with
 * cache_key the first time a block is cached, so that the thread's end
 * frees them. */
struct cache {
  int hot; /* recbuf_hot */
  int n;
  int registered;
  void *block[RECBUF_CACHED];
};

static __thread struct cache cache;
static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void on_thread_end(void *arg) {
  (void)arg;
  recbuf_thread_release();
}

static void cache_key_init(void) {
  (void)pthread_key_create(&cache_key, on_thread_end);
}

/* Requests of the class are served with blocks of RECBUF_MAX bytes, so
 * that every cached block serves every request; a block comes back with
 * malloc's usable size, RECBUF_MAX rounded up to its chunk size. */
static int request_cacheable(size_t n) {
  return n >= RECBUF_MIN && n <= RECBUF_MAX;
}

static int block_cacheable(size_t usable) {
  return usable >= RECBUF_MAX && usable < RECBUF_MAX + 64;
}

static void *recbuf_malloc(size_t num, const char *file, int line) {
  (void)file;
  (void)line;
  struct cache *c = &cache;
  if (!request_cacheable(num))
    return malloc(num);
  if (c->n > 0)
    return c->block[--c->n];
  return malloc(RECBUF_MAX);
}

static void *recbuf_realloc(void *p, size_t num, const char *file, int line) {
  (void)file;
  (void)line;
  return realloc(p, num);
}

static void recbuf_free(void *p, const char *file, int line) {
  (void)file;
  (void)line;
  struct cache *c = &cache;
  if (c->hot && p != NULL && c->n < RECBUF_CACHED && block_cacheable(malloc_usable_size(p))) {
    if (!c->registered) {
      pthread_once(&cache_once, cache_key_init);
      if (pthread_setspecific(cache_key, c) != 0) {
        free(p);
        return;
      }
      c->registered = 1;
    }
    c->block[c->n++] = p;
    return;
  }
  free(p);
}

int recbuf_install(void) {
  return CRYPTO_set_mem_functions(recbuf_malloc, recbuf_realloc, recbuf_free) ? 0 : -1;
}

void recbuf_hot(int on) {
  cache.hot = on;
}

void recbuf_thread_release(void) {
  struct cache *c = &cache;
  while (c->n > 0)
    free(c->block[--c->n]);
}
