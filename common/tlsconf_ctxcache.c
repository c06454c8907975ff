/* A cache of built TLS contexts keyed by content hash (see
 * tlsconf_ctxcache.h). A chained hash table under one mutex; the bucket is
 * the first bytes of the (SHA-256) hash, which are uniform already. The
 * table doubles when it holds more entries than buckets. */
#include "tlsconf_ctxcache.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define CTXCACHE_MAGIC 0x43545843u       /* "CTXC" */
#define CTXCACHE_ENTRY_MAGIC 0x43544345u /* "CTCE" */
#define CTXCACHE_BUCKETS_MIN 64

struct tlsconf_ctxcache_entry {
  unsigned magic;
  uint8_t hash[TLSCONF_CTXCACHE_HASH_LEN];
  void *value;
  size_t refs;                         /* under the cache's lock */
  struct tlsconf_ctxcache *cache;      /* reference held */
  struct tlsconf_ctxcache_entry *next; /* bucket chain */
};

struct tlsconf_ctxcache {
  unsigned magic;
  atomic_int refs; /* the owner's, plus one per entry */
  tlsconf_ctxcache_free_cb free_value;
  pthread_mutex_t lock;
  /* Under lock. */
  struct tlsconf_ctxcache_entry **buckets;
  size_t n_buckets; /* a power of two */
  size_t n_entries;
  uint64_t builds;
};

static struct tlsconf_ctxcache *cache_check(struct tlsconf_ctxcache *c) {
  if (c == NULL || c->magic != CTXCACHE_MAGIC)
    abort();
  return c;
}

static struct tlsconf_ctxcache_entry *entry_check(const struct tlsconf_ctxcache_entry *e) {
  if (e == NULL || e->magic != CTXCACHE_ENTRY_MAGIC)
    abort();
  return (struct tlsconf_ctxcache_entry *)e;
}

static size_t bucket_of(const struct tlsconf_ctxcache *c, const uint8_t *hash) {
  uint64_t h;
  memcpy(&h, hash, sizeof(h));
  return (size_t)h & (c->n_buckets - 1);
}

int tlsconf_ctxcache_new(tlsconf_ctxcache_free_cb free_value, struct tlsconf_ctxcache **out) {
  *out = NULL;
  struct tlsconf_ctxcache *c = calloc(1, sizeof(*c));
  if (c == NULL || (c->buckets = calloc(CTXCACHE_BUCKETS_MIN, sizeof(*c->buckets))) == NULL) {
    free(c);
    return -ENOMEM;
  }
  c->magic = CTXCACHE_MAGIC;
  atomic_init(&c->refs, 1);
  c->free_value = free_value;
  c->n_buckets = CTXCACHE_BUCKETS_MIN;
  pthread_mutex_init(&c->lock, NULL);
  *out = c;
  return 0;
}

void tlsconf_ctxcache_ref(struct tlsconf_ctxcache *c) {
  atomic_fetch_add_explicit(&cache_check(c)->refs, 1, memory_order_relaxed);
}

void tlsconf_ctxcache_unref(struct tlsconf_ctxcache *c) {
  if (c == NULL)
    return;
  if (atomic_fetch_sub_explicit(&cache_check(c)->refs, 1, memory_order_acq_rel) != 1)
    return;
  /* No entry is left: each held a reference. */
  pthread_mutex_destroy(&c->lock);
  free(c->buckets);
  c->magic = 0;
  free(c);
}

/* Under lock. */
static struct tlsconf_ctxcache_entry *find(const struct tlsconf_ctxcache *c, const uint8_t *hash) {
  for (struct tlsconf_ctxcache_entry *e = c->buckets[bucket_of(c, hash)]; e != NULL; e = e->next)
    if (memcmp(e->hash, hash, TLSCONF_CTXCACHE_HASH_LEN) == 0)
      return e;
  return NULL;
}

/* Under lock. A failure to grow leaves longer chains, nothing worse. */
static void grow(struct tlsconf_ctxcache *c) {
  size_t n = c->n_buckets * 2;
  struct tlsconf_ctxcache_entry **b = calloc(n, sizeof(*b));
  if (b == NULL)
    return;
  struct tlsconf_ctxcache_entry **old = c->buckets;
  size_t n_old = c->n_buckets;
  c->buckets = b;
  c->n_buckets = n;
  for (size_t i = 0; i < n_old; i++) {
    while (old[i] != NULL) {
      struct tlsconf_ctxcache_entry *e = old[i];
      old[i] = e->next;
      size_t k = bucket_of(c, e->hash);
      e->next = b[k];
      b[k] = e;
    }
  }
  free(old);
}

int tlsconf_ctxcache_get(struct tlsconf_ctxcache *c, const uint8_t hash[TLSCONF_CTXCACHE_HASH_LEN],
                         tlsconf_ctxcache_build_cb build, void *data,
                         struct tlsconf_ctxcache_entry **out, int *built, struct tp_err *err) {
  cache_check(c);
  *out = NULL;
  *built = 0;
  pthread_mutex_lock(&c->lock);
  struct tlsconf_ctxcache_entry *e = find(c, hash);
  if (e != NULL) {
    e->refs++;
    pthread_mutex_unlock(&c->lock);
    *out = e;
    return 0;
  }
  pthread_mutex_unlock(&c->lock);

  /* Built outside the lock: builds are slow (a key to decode) and others
   * may be found or built meanwhile. */
  void *value = NULL;
  if (build(data, &value, err) != 0)
    return -1;
  struct tlsconf_ctxcache_entry *ne = calloc(1, sizeof(*ne));
  if (ne == NULL) {
    c->free_value(value);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  ne->magic = CTXCACHE_ENTRY_MAGIC;
  memcpy(ne->hash, hash, TLSCONF_CTXCACHE_HASH_LEN);
  ne->value = value;
  ne->refs = 1;
  pthread_mutex_lock(&c->lock);
  c->builds++;
  e = find(c, hash);
  if (e != NULL) { /* another thread kept the same content first */
    e->refs++;
    pthread_mutex_unlock(&c->lock);
    c->free_value(value);
    ne->magic = 0;
    free(ne);
    *out = e;
    *built = 1;
    return 0;
  }
  tlsconf_ctxcache_ref(c);
  ne->cache = c;
  size_t k = bucket_of(c, hash);
  ne->next = c->buckets[k];
  c->buckets[k] = ne;
  if (++c->n_entries > c->n_buckets)
    grow(c);
  pthread_mutex_unlock(&c->lock);
  *out = ne;
  *built = 1;
  return 0;
}

void *tlsconf_ctxcache_entry_value(const struct tlsconf_ctxcache_entry *e) {
  return entry_check(e)->value;
}

void tlsconf_ctxcache_entry_release(struct tlsconf_ctxcache_entry *e) {
  if (e == NULL)
    return;
  entry_check(e);
  struct tlsconf_ctxcache *c = e->cache;
  pthread_mutex_lock(&c->lock);
  if (--e->refs > 0) {
    pthread_mutex_unlock(&c->lock);
    return;
  }
  struct tlsconf_ctxcache_entry **p = &c->buckets[bucket_of(c, e->hash)];
  while (*p != e)
    p = &(*p)->next;
  *p = e->next;
  c->n_entries--;
  pthread_mutex_unlock(&c->lock);
  c->free_value(e->value);
  e->magic = 0;
  free(e);
  tlsconf_ctxcache_unref(c);
}

uint64_t tlsconf_ctxcache_builds(struct tlsconf_ctxcache *c) {
  pthread_mutex_lock(&cache_check(c)->lock);
  uint64_t n = c->builds;
  pthread_mutex_unlock(&c->lock);
  return n;
}

size_t tlsconf_ctxcache_live(struct tlsconf_ctxcache *c) {
  pthread_mutex_lock(&cache_check(c)->lock);
  size_t n = c->n_entries;
  pthread_mutex_unlock(&c->lock);
  return n;
}
