/* Last use of credentials: noted in memory, written in batches
 * (usage.h says why). Two hash tables under one lock: `live` takes new
 * uses; usage_flush moves it to `flushing` while it writes, so that a use
 * noted meanwhile waits for the next flush and a read still sees what is
 * being written until it is committed. */
#include "usage.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS_MIN 64 /* a power of two */

/* One credential's latest use. kind and name point into the same
 * allocation. */
struct entry {
  struct entry *next;
  uint64_t hash;
  int64_t time_us;
  const char *kind;
  const char *name;
};

/* Chained hash table; n_buckets is 0 (empty, nothing allocated) or a
 * power of two. */
struct table {
  struct entry **buckets;
  size_t n_buckets;
  size_t n;
};

struct usage {
  pthread_mutex_t lock;       /* guards live and flushing */
  pthread_mutex_t flush_lock; /* one usage_flush at a time */
  struct table live;          /* noted since the last flush began */
  struct table flushing;      /* taken by the flush in progress */
};

/* FNV-1a over kind, a NUL, name. */
static uint64_t key_hash(const char *kind, const char *name) {
  uint64_t h = 14695981039346656037ull;
  for (const char *p = kind;; p++) {
    h = (h ^ (unsigned char)*p) * 1099511628211ull;
    if (*p == '\0')
      break;
  }
  for (const char *p = name; *p; p++)
    h = (h ^ (unsigned char)*p) * 1099511628211ull;
  return h;
}

static struct entry *table_find(const struct table *t, uint64_t hash, const char *kind,
                                const char *name) {
  if (t->n_buckets == 0)
    return NULL;
  for (struct entry *e = t->buckets[hash & (t->n_buckets - 1)]; e != NULL; e = e->next)
    if (e->hash == hash && strcmp(e->name, name) == 0 && strcmp(e->kind, kind) == 0)
      return e;
  return NULL;
}

/* Doubles the buckets when the chains grow long; on allocation failure
 * the chains just stay longer. */
static void table_grow(struct table *t) {
  if (t->n_buckets != 0 && t->n <= 2 * t->n_buckets)
    return;
  size_t nb = t->n_buckets ? 2 * t->n_buckets : BUCKETS_MIN;
  struct entry **b = calloc(nb, sizeof(*b));
  if (b == NULL)
    return;
  for (size_t i = 0; i < t->n_buckets; i++) {
    for (struct entry *e = t->buckets[i], *next; e != NULL; e = next) {
      next = e->next;
      e->next = b[e->hash & (nb - 1)];
      b[e->hash & (nb - 1)] = e;
    }
  }
  free(t->buckets);
  t->buckets = b;
  t->n_buckets = nb;
}

/* Links e into t (not there yet). Fails only when t has no buckets and
 * none can be allocated. */
static int table_link(struct table *t, struct entry *e) {
  table_grow(t);
  if (t->n_buckets == 0)
    return -1;
  size_t i = e->hash & (t->n_buckets - 1);
  e->next = t->buckets[i];
  t->buckets[i] = e;
  t->n++;
  return 0;
}

static void table_clear(struct table *t) {
  for (size_t i = 0; i < t->n_buckets; i++) {
    for (struct entry *e = t->buckets[i], *next; e != NULL; e = next) {
      next = e->next;
      free(e);
    }
  }
  free(t->buckets);
  memset(t, 0, sizeof(*t));
}

static struct entry *entry_new(uint64_t hash, const char *kind, const char *name, int64_t time_us) {
  size_t kl = strlen(kind) + 1, nl = strlen(name) + 1;
  struct entry *e = malloc(sizeof(*e) + kl + nl);
  if (e == NULL)
    return NULL;
  char *p = (char *)(e + 1);
  memcpy(p, kind, kl);
  memcpy(p + kl, name, nl);
  e->next = NULL;
  e->hash = hash;
  e->time_us = time_us;
  e->kind = p;
  e->name = p + kl;
  return e;
}

struct usage *usage_new(void) {
  struct usage *u = calloc(1, sizeof(*u));
  if (u == NULL)
    return NULL;
  pthread_mutex_init(&u->lock, NULL);
  pthread_mutex_init(&u->flush_lock, NULL);
  return u;
}

void usage_free(struct usage *u) {
  if (u == NULL)
    return;
  table_clear(&u->live);
  table_clear(&u->flushing);
  pthread_mutex_destroy(&u->flush_lock);
  pthread_mutex_destroy(&u->lock);
  free(u);
}

void usage_note(struct usage *u, const char *kind, const char *name, int64_t time_us) {
  uint64_t h = key_hash(kind, name);
  pthread_mutex_lock(&u->lock);
  struct entry *e = table_find(&u->live, h, kind, name);
  if (e != NULL) {
    if (time_us > e->time_us)
      e->time_us = time_us;
  } else if ((e = entry_new(h, kind, name, time_us)) != NULL && table_link(&u->live, e) != 0) {
    free(e);
  }
  pthread_mutex_unlock(&u->lock);
}

int64_t usage_last(struct usage *u, const char *kind, const char *name) {
  uint64_t h = key_hash(kind, name);
  int64_t t = 0;
  pthread_mutex_lock(&u->lock);
  const struct entry *a = table_find(&u->live, h, kind, name);
  const struct entry *b = table_find(&u->flushing, h, kind, name);
  if (a != NULL)
    t = a->time_us;
  if (b != NULL && b->time_us > t)
    t = b->time_us;
  pthread_mutex_unlock(&u->lock);
  return t;
}

/* Puts what a failed flush took back into live (under u->lock); a use
 * noted there since keeps the later time. */
static void flushing_restore(struct usage *u) {
  struct table *f = &u->flushing;
  for (size_t i = 0; i < f->n_buckets; i++) {
    for (struct entry *e = f->buckets[i], *next; e != NULL; e = next) {
      next = e->next;
      struct entry *cur = table_find(&u->live, e->hash, e->kind, e->name);
      if (cur != NULL) {
        if (e->time_us > cur->time_us)
          cur->time_us = e->time_us;
        free(e);
      } else if (table_link(&u->live, e) != 0) {
        free(e);
      }
    }
  }
  free(f->buckets);
  memset(f, 0, sizeof(*f));
}

int usage_flush(struct usage *u, struct store *s, struct tp_err *err) {
  pthread_mutex_lock(&u->flush_lock);
  pthread_mutex_lock(&u->lock);
  u->flushing = u->live;
  memset(&u->live, 0, sizeof(u->live));
  pthread_mutex_unlock(&u->lock);

  /* Only this thread changes `flushing` until it is given back: reading
   * it here without the lock is safe (readers only read). */
  const struct table *f = &u->flushing;
  int written = 0, rc = 0;
  struct store_txn *txn = NULL;
  if (f->n > 0 && (rc = store_begin(s, 1, &txn, err)) == 0) {
    for (size_t i = 0; rc == 0 && i < f->n_buckets; i++) {
      for (const struct entry *e = f->buckets[i]; rc == 0 && e != NULL; e = e->next) {
        struct tp_err why = {0};
        rc = store_usage_set(txn, e->kind, e->name, e->time_us, &why);
        if (rc == -ENOENT) {
          rc = 0; /* deleted since it was used */
        } else if (rc < 0) {
          *err = why;
        } else {
          written++;
        }
      }
    }
    if (rc == 0)
      rc = store_commit(txn, NULL, err);
    else
      store_rollback(txn);
  }

  pthread_mutex_lock(&u->lock);
  if (rc == 0)
    table_clear(&u->flushing);
  else
    flushing_restore(u);
  pthread_mutex_unlock(&u->lock);
  pthread_mutex_unlock(&u->flush_lock);
  return rc == 0 ? written : -1;
}
