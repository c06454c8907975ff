/* OpenSSL's allocator for the agent (see recbuf.h). */
#include "recbuf.h"

#include <malloc.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>

/* A thread's cached blocks: n record buffers in block[0..n), n_small
 * small blocks in small[0..n_small). Registered with cache_key the first
 * time a block is cached, so that the thread's end frees them. */
struct cache {
  int hot; /* recbuf_hot */
  int n;
  int n_small;
  int registered;
  void *block[RECBUF_CACHED];
  void *small[RECBUF_SMALL_CACHED];
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

/* The small class is one chunk size of glibc's (48 bytes, 40 usable):
 * every request of the class gets such a chunk from malloc anyway, so a
 * cached block costs no more memory than the one malloc would give. */
static int small_request(size_t n) {
  return n >= RECBUF_SMALL_MIN && n <= RECBUF_SMALL_MAX;
}

static int small_block(size_t usable) {
  return usable >= RECBUF_SMALL_MAX && usable < RECBUF_SMALL_MAX + 16;
}

static void *recbuf_malloc(size_t num, const char *file, int line) {
  (void)file;
  (void)line;
  struct cache *c = &cache;
  if (small_request(num))
    return c->n_small > 0 ? c->small[--c->n_small] : malloc(RECBUF_SMALL_MAX);
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

/* Registers the thread's cache for its end; 0, or -1 when it cannot
 * keep blocks. */
static int cache_register(struct cache *c) {
  if (c->registered)
    return 0;
  pthread_once(&cache_once, cache_key_init);
  if (pthread_setspecific(cache_key, c) != 0)
    return -1;
  c->registered = 1;
  return 0;
}

static void recbuf_free(void *p, const char *file, int line) {
  (void)file;
  (void)line;
  struct cache *c = &cache;
  if (c->hot && p != NULL) {
    size_t usable = malloc_usable_size(p);
    if (c->n < RECBUF_CACHED && block_cacheable(usable) && cache_register(c) == 0) {
      c->block[c->n++] = p;
      return;
    }
    if (c->n_small < RECBUF_SMALL_CACHED && small_block(usable) && cache_register(c) == 0) {
      c->small[c->n_small++] = p;
      return;
    }
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
  while (c->n_small > 0)
    free(c->small[--c->n_small]);
}
