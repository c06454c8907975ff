/* The resource set (see rset.h): two open-addressing tables, resources by
 * content hash and listener entries by name. */
#include "rset.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pb.h"

/* A held resource, shared by every set that holds it. */
struct rres {
  atomic_int refs;
  Tlsplane__V1__Resource *msg; /* msg->hash is the key (RSET_HASH_LEN bytes) */
};

/* An open-addressing table of pointers; TOMB marks a removed slot. The
 * capacity is a power of two, kept at most 3/4 full (tombstones
 * included). */
struct tab {
  void **slots;
  size_t cap;
  size_t n;    /* live entries */
  size_t used; /* live entries and tombstones */
};

static char tomb_mark;
#define TOMB ((void *)&tomb_mark)

/* A held listener entry, shared by every set that holds it. */
struct rlis {
  atomic_int refs;
  Tlsplane__V1__ListenerEntry *e; /* e->listener->name is the key */
};

struct rset {
  struct tab res;       /* struct rres * by hash */
  struct tab listeners; /* struct rlis * by listener name */
};

/* --- keys --- */

static uint64_t hash_key(const uint8_t *hash) {
  uint64_t k;
  memcpy(&k, hash, sizeof(k)); /* already uniform: a SHA-256 prefix */
  return k;
}

static uint64_t name_key(const char *name) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *name; name++)
    h = (h ^ (uint8_t)*name) * 1099511628211ull;
  return h;
}

static const uint8_t *res_hash(const void *entry) {
  return ((const struct rres *)entry)->msg->hash.data;
}

static const char *entry_name(const void *entry) {
  return ((const struct rlis *)entry)->e->listener->name;
}

/* The slot of key in t (found, or where it goes): is_res picks the
 * table's key type. */
static size_t tab_slot(const struct tab *t, int is_res, const void *key, int *found) {
  uint64_t k = is_res ? hash_key(key) : name_key(key);
  size_t mask = t->cap - 1, i = (size_t)k & mask, free_slot = (size_t)-1;
  for (;;) {
    void *e = t->slots[i];
    if (e == NULL) {
      *found = 0;
      return free_slot != (size_t)-1 ? free_slot : i;
    }
    if (e == TOMB) {
      if (free_slot == (size_t)-1)
        free_slot = i;
    } else if (is_res ? memcmp(res_hash(e), key, RSET_HASH_LEN) == 0
                      : strcmp(entry_name(e), key) == 0) {
      *found = 1;
      return i;
    }
    i = (i + 1) & mask;
  }
}

static void *tab_get(const struct tab *t, int is_res, const void *key) {
  if (t->n == 0)
    return NULL;
  int found;
  size_t i = tab_slot(t, is_res, key, &found);
  return found ? t->slots[i] : NULL;
}

static int tab_grow(struct tab *t, int is_res) {
  if (t->cap != 0 && (t->used + 1) * 4 <= t->cap * 3)
    return 0;
  size_t cap = t->cap ? t->cap : 16;
  while ((t->n + 1) * 2 > cap) /* rehashed at most half full */
    cap *= 2;
  void **old = t->slots;
  size_t old_cap = t->cap;
  t->slots = calloc(cap, sizeof(*t->slots));
  if (t->slots == NULL) {
    t->slots = old;
    return -ENOMEM;
  }
  t->cap = cap;
  t->used = t->n;
  for (size_t i = 0; i < old_cap; i++) {
    if (old[i] == NULL || old[i] == TOMB)
      continue;
    int found;
    size_t j =
        tab_slot(t, is_res, is_res ? (const void *)res_hash(old[i]) : entry_name(old[i]), &found);
    t->slots[j] = old[i];
  }
  free(old);
  return 0;
}

/* Inserts e under its key, which t must not hold. */
static int tab_insert(struct tab *t, int is_res, void *e) {
  if (tab_grow(t, is_res) != 0)
    return -ENOMEM;
  int found;
  size_t i = tab_slot(t, is_res, is_res ? (const void *)res_hash(e) : entry_name(e), &found);
  if (t->slots[i] == NULL)
    t->used++;
  t->slots[i] = e;
  t->n++;
  return 0;
}

/* Removes and returns the entry under key, or NULL. */
static void *tab_take(struct tab *t, int is_res, const void *key) {
  if (t->n == 0)
    return NULL;
  int found;
  size_t i = tab_slot(t, is_res, key, &found);
  if (!found)
    return NULL;
  void *e = t->slots[i];
  t->slots[i] = TOMB;
  t->n--;
  return e;
}

static void *tab_next(const struct tab *t, size_t *iter) {
  while (*iter < t->cap) {
    void *e = t->slots[(*iter)++];
    if (e != NULL && e != TOMB)
      return e;
  }
  return NULL;
}

/* --- resources --- */

static void err_prefix_index(struct tp_err *err, const char *field, size_t i) {
  char p[48];
  snprintf(p, sizeof(p), "%s[%zu]: ", field, i);
  tp_err_prefix(err, p);
}

/* Wipes the key material a resource holds, then frees it. */
static void resource_free(Tlsplane__V1__Resource *r) {
  if (r == NULL)
    return;
  if (r->content_case == TLSPLANE__V1__RESOURCE__CONTENT_CERTIFICATE && r->certificate != NULL &&
      r->certificate->private_key_pem != NULL)
    OPENSSL_cleanse(r->certificate->private_key_pem, strlen(r->certificate->private_key_pem));
  if (r->content_case == TLSPLANE__V1__RESOURCE__CONTENT_TICKET_KEYS && r->ticket_keys != NULL)
    for (size_t i = 0; i < r->ticket_keys->n_keys; i++)
      if (r->ticket_keys->keys[i] != NULL && r->ticket_keys->keys[i]->key.data != NULL)
        OPENSSL_cleanse(r->ticket_keys->keys[i]->key.data, r->ticket_keys->keys[i]->key.len);
  if (r->content_case == TLSPLANE__V1__RESOURCE__CONTENT_ACME_CHALLENGE &&
      r->acme_challenge != NULL && r->acme_challenge->private_key_pem != NULL)
    OPENSSL_cleanse(r->acme_challenge->private_key_pem, strlen(r->acme_challenge->private_key_pem));
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void rres_unref(struct rres *h) {
  if (atomic_fetch_sub(&h->refs, 1) == 1) {
    resource_free(h->msg);
    free(h);
  }
}

static void entry_free(Tlsplane__V1__ListenerEntry *e) {
  if (e != NULL)
    protobuf_c_message_free_unpacked(&e->base, NULL);
}

static void rlis_unref(struct rlis *l) {
  if (l != NULL && atomic_fetch_sub(&l->refs, 1) == 1) {
    entry_free(l->e);
    free(l);
  }
}

int rset_new(struct rset **out) {
  *out = calloc(1, sizeof(**out));
  return *out ? 0 : -ENOMEM;
}

void rset_free(struct rset *s) {
  if (s == NULL)
    return;
  size_t it = 0;
  struct rres *h;
  while ((h = tab_next(&s->res, &it)) != NULL)
    rres_unref(h);
  it = 0;
  struct rlis *l;
  while ((l = tab_next(&s->listeners, &it)) != NULL)
    rlis_unref(l);
  free(s->res.slots);
  free(s->listeners.slots);
  free(s);
}

/* SHA-256, fetched once: EVP_sha256() is fetched again (under the
 * provider store's locks) by every EVP_Digest, a cost per resource that
 * shows at tens of thousands of listeners. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void) {
  sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

/* SHA-256 of msg serialized, over a buffer of its own. */
static int digest(const ProtobufCMessage *msg, uint8_t hash[RSET_HASH_LEN]) {
  size_t len = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = malloc(len ? len : 1);
  if (buf == NULL)
    return -ENOMEM;
  protobuf_c_message_pack(msg, buf);
  pthread_once(&sha256_once, sha256_fetch);
  int ok = EVP_Digest(buf, len, hash, NULL, sha256_md != NULL ? sha256_md : EVP_sha256(), NULL);
  OPENSSL_cleanse(buf, len); /* it may hold a private key */
  free(buf);
  return ok ? 0 : -ENOMEM;
}

int rset_resource_hash(const Tlsplane__V1__Resource *r, uint8_t hash[RSET_HASH_LEN]) {
  Tlsplane__V1__Resource bare = *r; /* shallow: packing only reads */
  bare.hash.data = NULL;
  bare.hash.len = 0;
  return digest(&bare.base, hash);
}

int rset_listener_hash(const Tlsplane__V1__ListenerEntry *e, uint8_t hash[RSET_HASH_LEN]) {
  Tlsplane__V1__ListenerEntry bare = *e;
  bare.hash.data = NULL;
  bare.hash.len = 0;
  return digest(&bare.base, hash);
}

/* Sets *field (empty) to hash, or checks it against hash (verify), or
 * trusts it. */
static int hash_settle(ProtobufCBinaryData *field, const uint8_t *hash, int verify,
                       const char *what, struct tp_err *err) {
  if (field->len == 0) {
    if ((field->data = malloc(RSET_HASH_LEN)) == NULL)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(field->data, hash, RSET_HASH_LEN);
    field->len = RSET_HASH_LEN;
    return 0;
  }
  if (field->len != RSET_HASH_LEN)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s.hash: %zu bytes, not %d", what,
                      field->len, RSET_HASH_LEN);
  if (verify && memcmp(field->data, hash, RSET_HASH_LEN) != 0) {
    char a[16], b[16];
    return tp_err_set(
        err, GRPC_STATUS_INVALID_ARGUMENT, "%s.hash: %s... does not match its content (%s...)",
        what, rset_hash_short(field->data, a, sizeof(a)), rset_hash_short(hash, b, sizeof(b)));
  }
  return 0;
}

/* Gives r its hash (computed when empty or verify), as rset_resource_put. */
static int resource_settle(Tlsplane__V1__Resource *r, int verify, const char *what,
                           struct tp_err *err) {
  if (r->content_case == TLSPLANE__V1__RESOURCE__CONTENT__NOT_SET)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: no content", what);
  if (r->hash.len != 0 && !verify)
    return hash_settle(&r->hash, NULL, 0, what, err);
  uint8_t h[RSET_HASH_LEN];
  if (rset_resource_hash(r, h) != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  return hash_settle(&r->hash, h, verify, what, err);
}

/* Holds r (settled) unless its hash is held; takes ownership. */
static int resource_hold(struct rset *s, Tlsplane__V1__Resource *r, struct tp_err *err) {
  if (tab_get(&s->res, 1, r->hash.data) != NULL) {
    resource_free(r);
    return 0;
  }
  struct rres *h = malloc(sizeof(*h));
  if (h == NULL || (h->msg = r, atomic_init(&h->refs, 1), tab_insert(&s->res, 1, h)) != 0) {
    free(h);
    resource_free(r);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  return 0;
}

int rset_resource_put(struct rset *s, Tlsplane__V1__Resource *r, int verify, struct tp_err *err) {
  if (resource_settle(r, verify, "resource", err) != 0) {
    resource_free(r);
    return -1;
  }
  return resource_hold(s, r, err);
}

const Tlsplane__V1__Resource *rset_resource_get(const struct rset *s, const uint8_t *hash) {
  struct rres *h = tab_get(&s->res, 1, hash);
  return h ? h->msg : NULL;
}

int rset_resource_share(struct rset *dst, const struct rset *src, const uint8_t *hash) {
  struct rres *h = tab_get(&src->res, 1, hash);
  if (h == NULL)
    return -ENOENT;
  if (tab_get(&dst->res, 1, hash) != NULL)
    return 0;
  atomic_fetch_add(&h->refs, 1);
  if (tab_insert(&dst->res, 1, h) != 0) {
    rres_unref(h);
    return -ENOMEM;
  }
  return 0;
}

int rset_resource_remove(struct rset *s, const uint8_t *hash) {
  struct rres *h = tab_take(&s->res, 1, hash);
  if (h == NULL)
    return -ENOENT;
  rres_unref(h);
  return 0;
}

size_t rset_resource_count(const struct rset *s) {
  return s->res.n;
}

const Tlsplane__V1__Resource *rset_resource_next(const struct rset *s, size_t *iter) {
  struct rres *h = tab_next(&s->res, iter);
  return h ? h->msg : NULL;
}

/* --- listeners --- */

static int entry_settle(Tlsplane__V1__ListenerEntry *e, int verify, const char *what,
                        struct tp_err *err) {
  if (e->listener == NULL || e->listener->name == NULL || e->listener->name[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s.listener.name: required", what);
  if (e->hash.len != 0 && !verify)
    return hash_settle(&e->hash, NULL, 0, what, err);
  uint8_t h[RSET_HASH_LEN];
  if (rset_listener_hash(e, h) != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  return hash_settle(&e->hash, h, verify, what, err);
}

/* Holds e (settled), replacing the entry of its name; takes ownership. */
static int entry_hold(struct rset *s, Tlsplane__V1__ListenerEntry *e, struct tp_err *err) {
  struct rlis *l = malloc(sizeof(*l));
  if (l == NULL) {
    entry_free(e);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  atomic_init(&l->refs, 1);
  l->e = e;
  rlis_unref(tab_take(&s->listeners, 0, e->listener->name));
  if (tab_insert(&s->listeners, 0, l) != 0) {
    rlis_unref(l);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  return 0;
}

int rset_listener_put(struct rset *s, Tlsplane__V1__ListenerEntry *e, int verify,
                      struct tp_err *err) {
  if (entry_settle(e, verify, "listener", err) != 0) {
    entry_free(e);
    return -1;
  }
  return entry_hold(s, e, err);
}

const Tlsplane__V1__ListenerEntry *rset_listener_get(const struct rset *s, const char *name) {
  const struct rlis *l = tab_get(&s->listeners, 0, name);
  return l ? l->e : NULL;
}

int rset_listener_share(struct rset *dst, const struct rset *src, const char *name) {
  struct rlis *l = tab_get(&src->listeners, 0, name);
  if (l == NULL)
    return -ENOENT;
  if (tab_get(&dst->listeners, 0, name) == l)
    return 0;
  atomic_fetch_add(&l->refs, 1);
  rlis_unref(tab_take(&dst->listeners, 0, name));
  if (tab_insert(&dst->listeners, 0, l) != 0) {
    rlis_unref(l);
    return -ENOMEM;
  }
  return 0;
}

int rset_listener_remove(struct rset *s, const char *name) {
  struct rlis *l = tab_take(&s->listeners, 0, name);
  if (l == NULL)
    return -ENOENT;
  rlis_unref(l);
  return 0;
}

size_t rset_listener_count(const struct rset *s) {
  return s->listeners.n;
}

const Tlsplane__V1__ListenerEntry *rset_listener_next(const struct rset *s, size_t *iter) {
  const struct rlis *l = tab_next(&s->listeners, iter);
  return l ? l->e : NULL;
}

/* A hash field that names a resource: 32 bytes. */
static int ref_ok(const ProtobufCBinaryData *ref) {
  return ref->len == RSET_HASH_LEN;
}

/* How a walk finds a resource by hash. */
typedef const Tlsplane__V1__Resource *(*lookup_fn)(const void *from, const uint8_t *hash);

static const Tlsplane__V1__Resource *set_lookup(const void *from, const uint8_t *hash) {
  return rset_resource_get(from, hash);
}

/* Looks up a context for listener e, as rset_listener_uses reports it. */
static const Tlsplane__V1__ContextMaterial *
context_get(lookup_fn lookup, const void *from, const Tlsplane__V1__ListenerEntry *e,
            const Tlsplane__V1__ListenerEntry__TlsContextsEntry *ce, struct tp_err *err) {
  const Tlsplane__V1__Resource *r = ref_ok(&ce->value) ? lookup(from, ce->value.data) : NULL;
  if (r == NULL || r->content_case != TLSPLANE__V1__RESOURCE__CONTENT_TLS_CONTEXT ||
      r->tls_context == NULL) {
    char h[16];
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: tls_contexts[%s]: resource %s is not %s",
               e->listener->name, ce->key,
               ref_ok(&ce->value) ? rset_hash_short(ce->value.data, h, sizeof(h)) : "(malformed)",
               r == NULL ? "held" : "a context");
    return NULL;
  }
  return r->tls_context;
}

static int uses_walk(lookup_fn lookup, const void *from, const Tlsplane__V1__ListenerEntry *e,
                     int (*cb)(const uint8_t *hash, void *data), void *data, struct tp_err *err) {
  int rc;
  for (size_t i = 0; i < e->n_tls_contexts; i++) {
    const Tlsplane__V1__ContextMaterial *cm = context_get(lookup, from, e, e->tls_contexts[i], err);
    if (cm == NULL)
      return -1;
    if ((rc = cb(e->tls_contexts[i]->value.data, data)) != 0)
      return rc;
    for (size_t j = 0; j < cm->n_certificates; j++)
      if (ref_ok(&cm->certificates[j]) && (rc = cb(cm->certificates[j].data, data)) != 0)
        return rc;
    if (ref_ok(&cm->cipher_policy) && (rc = cb(cm->cipher_policy.data, data)) != 0)
      return rc;
    if (ref_ok(&cm->trust_bundle) && (rc = cb(cm->trust_bundle.data, data)) != 0)
      return rc;
    for (size_t j = 0; j < cm->n_revocation_lists; j++)
      if (ref_ok(&cm->revocation_lists[j]) && (rc = cb(cm->revocation_lists[j].data, data)) != 0)
        return rc;
  }
  if (ref_ok(&e->ticket_keys) && (rc = cb(e->ticket_keys.data, data)) != 0)
    return rc;
  for (size_t i = 0; i < e->n_acme_challenges; i++)
    if (ref_ok(&e->acme_challenges[i]) && (rc = cb(e->acme_challenges[i].data, data)) != 0)
      return rc;
  return 0;
}

int rset_listener_uses(const struct rset *s, const Tlsplane__V1__ListenerEntry *e,
                       int (*cb)(const uint8_t *hash, void *data), void *data, struct tp_err *err) {
  return uses_walk(set_lookup, s, e, cb, data, err);
}

/* --- the protocol 1 form --- */

/* Holds a new resource wrapping content (taken), and gives its hash. */
static int intern_resource(struct rset *s, Tlsplane__V1__Resource__ContentCase kind, void *content,
                           uint8_t hash[RSET_HASH_LEN], struct tp_err *err) {
  Tlsplane__V1__Resource *r = malloc(sizeof(*r));
  if (r == NULL || content == NULL) {
    free(r);
    if (content != NULL)
      protobuf_c_message_free_unpacked(content, NULL);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  tlsplane__v1__resource__init(r);
  r->content_case = kind;
  switch (kind) {
  case TLSPLANE__V1__RESOURCE__CONTENT_CERTIFICATE:
    r->certificate = content;
    break;
  case TLSPLANE__V1__RESOURCE__CONTENT_TRUST_BUNDLE:
    r->trust_bundle = content;
    break;
  case TLSPLANE__V1__RESOURCE__CONTENT_REVOCATION_LIST:
    r->revocation_list = content;
    break;
  case TLSPLANE__V1__RESOURCE__CONTENT_CIPHER_POLICY:
    r->cipher_policy = content;
    break;
  case TLSPLANE__V1__RESOURCE__CONTENT_TLS_CONTEXT:
    r->tls_context = content;
    break;
  case TLSPLANE__V1__RESOURCE__CONTENT_TICKET_KEYS:
    r->ticket_keys = content;
    break;
  case TLSPLANE__V1__RESOURCE__CONTENT_ACME_CHALLENGE:
    r->acme_challenge = content;
    break;
  default:
    break;
  }
  if (resource_settle(r, 0, "resource", err) != 0) {
    resource_free(r);
    return -1;
  }
  memcpy(hash, r->hash.data, RSET_HASH_LEN);
  return resource_hold(s, r, err);
}

/* A copy of a message (NULL for NULL; *oom set when the copy failed). */
static void *copy_of(const void *msg, int *oom) {
  if (msg == NULL)
    return NULL;
  void *c = pb_clone(msg);
  *oom |= c == NULL;
  return c;
}

static int hash_field(ProtobufCBinaryData *f, const uint8_t *hash) {
  if ((f->data = malloc(RSET_HASH_LEN)) == NULL)
    return -1;
  memcpy(f->data, hash, RSET_HASH_LEN);
  f->len = RSET_HASH_LEN;
  return 0;
}

int rset_intern_context(struct rset *s, const Tlsplane__V1__ResolvedTlsContext *rc,
                        uint8_t hash[RSET_HASH_LEN], struct tp_err *err) {
  Tlsplane__V1__ContextMaterial *cm = malloc(sizeof(*cm));
  if (cm == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  tlsplane__v1__context_material__init(cm);
  int oom = 0, rc_ = 0;
  uint8_t h[RSET_HASH_LEN];
  cm->tls_context = copy_of(rc->tls_context, &oom);
  cm->certificates = calloc(rc->n_certificates ? rc->n_certificates : 1, sizeof(*cm->certificates));
  cm->revocation_lists =
      calloc(rc->n_revocation_lists ? rc->n_revocation_lists : 1, sizeof(*cm->revocation_lists));
  oom |= cm->certificates == NULL || cm->revocation_lists == NULL;
  for (size_t i = 0; !oom && rc_ == 0 && i < rc->n_certificates; i++) {
    rc_ = intern_resource(s, TLSPLANE__V1__RESOURCE__CONTENT_CERTIFICATE,
                          copy_of(rc->certificates[i], &oom), h, err);
    if (rc_ == 0 && hash_field(&cm->certificates[cm->n_certificates++], h) != 0)
      oom = 1;
  }
  if (!oom && rc_ == 0 && rc->cipher_policy != NULL) {
    rc_ = intern_resource(s, TLSPLANE__V1__RESOURCE__CONTENT_CIPHER_POLICY,
                          copy_of(rc->cipher_policy, &oom), h, err);
    if (rc_ == 0 && hash_field(&cm->cipher_policy, h) != 0)
      oom = 1;
  }
  if (!oom && rc_ == 0 && rc->trust_bundle != NULL) {
    rc_ = intern_resource(s, TLSPLANE__V1__RESOURCE__CONTENT_TRUST_BUNDLE,
                          copy_of(rc->trust_bundle, &oom), h, err);
    if (rc_ == 0 && hash_field(&cm->trust_bundle, h) != 0)
      oom = 1;
  }
  for (size_t i = 0; !oom && rc_ == 0 && i < rc->n_revocation_lists; i++) {
    rc_ = intern_resource(s, TLSPLANE__V1__RESOURCE__CONTENT_REVOCATION_LIST,
                          copy_of(rc->revocation_lists[i], &oom), h, err);
    if (rc_ == 0 && hash_field(&cm->revocation_lists[cm->n_revocation_lists++], h) != 0)
      oom = 1;
  }
  if (oom || rc_ != 0) {
    protobuf_c_message_free_unpacked(&cm->base, NULL);
    return rc_ != 0 ? -1 : tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  return intern_resource(s, TLSPLANE__V1__RESOURCE__CONTENT_TLS_CONTEXT, cm, hash, err);
}

int rset_intern_ticket_keys(struct rset *s, Tlsplane__V1__TicketKeyMaterial *const *keys, size_t n,
                            uint8_t hash[RSET_HASH_LEN], struct tp_err *err) {
  Tlsplane__V1__TicketKeyRingMaterial *ring = malloc(sizeof(*ring));
  if (ring == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  tlsplane__v1__ticket_key_ring_material__init(ring);
  int oom = (ring->keys = calloc(n ? n : 1, sizeof(*ring->keys))) == NULL;
  for (size_t i = 0; !oom && i < n; i++)
    if ((ring->keys[ring->n_keys] = copy_of(keys[i], &oom)) != NULL)
      ring->n_keys++;
  if (oom) {
    for (size_t i = 0; i < ring->n_keys; i++) /* wiped, as every copy of a key */
      OPENSSL_cleanse(ring->keys[i]->key.data, ring->keys[i]->key.len);
    protobuf_c_message_free_unpacked(&ring->base, NULL);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  return intern_resource(s, TLSPLANE__V1__RESOURCE__CONTENT_TICKET_KEYS, ring, hash, err);
}

int rset_intern(struct rset *s, const Tlsplane__V1__ResolvedListener *rl,
                const Tlsplane__V1__ListenerEntry **out, struct tp_err *err) {
  if (rl->listener == NULL || rl->listener->name == NULL || rl->listener->name[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "listener.name: required");
  Tlsplane__V1__ListenerEntry *e = malloc(sizeof(*e));
  if (e == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  tlsplane__v1__listener_entry__init(e);
  int oom = 0, rc = 0;
  e->listener = copy_of(rl->listener, &oom);
  size_t n = rl->n_tls_contexts;
  oom |= (e->tls_contexts = calloc(n ? n : 1, sizeof(*e->tls_contexts))) == NULL;
  for (size_t i = 0; !oom && rc == 0 && i < n; i++) {
    const Tlsplane__V1__ResolvedListener__TlsContextsEntry *in = rl->tls_contexts[i];
    uint8_t h[RSET_HASH_LEN];
    if (in->value == NULL) {
      rc = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: tls_contexts[%s]: no context",
                      rl->listener->name, in->key);
      break;
    }
    if ((rc = rset_intern_context(s, in->value, h, err)) != 0)
      break;
    Tlsplane__V1__ListenerEntry__TlsContextsEntry *ce = malloc(sizeof(*ce));
    if (ce == NULL) {
      oom = 1;
      break;
    }
    tlsplane__v1__listener_entry__tls_contexts_entry__init(ce);
    e->tls_contexts[e->n_tls_contexts++] = ce;
    if ((ce->key = strdup(in->key)) == NULL || hash_field(&ce->value, h) != 0)
      oom = 1;
  }
  if (!oom && rc == 0 && rl->n_ticket_keys > 0) {
    uint8_t h[RSET_HASH_LEN];
    rc = rset_intern_ticket_keys(s, rl->ticket_keys, rl->n_ticket_keys, h, err);
    if (rc == 0 && hash_field(&e->ticket_keys, h) != 0)
      oom = 1;
  }
  if (!oom && rc == 0 && rl->n_acme_challenges > 0)
    oom = (e->acme_challenges = calloc(rl->n_acme_challenges, sizeof(*e->acme_challenges))) == NULL;
  for (size_t i = 0; !oom && rc == 0 && i < rl->n_acme_challenges; i++) {
    uint8_t h[RSET_HASH_LEN];
    if (rl->acme_challenges[i] == NULL) {
      rc = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: acme_challenges[%zu]: empty",
                      rl->listener->name, i);
      break;
    }
    rc = intern_resource(s, TLSPLANE__V1__RESOURCE__CONTENT_ACME_CHALLENGE,
                         copy_of(rl->acme_challenges[i], &oom), h, err);
    if (rc == 0 && hash_field(&e->acme_challenges[e->n_acme_challenges++], h) != 0)
      oom = 1;
  }
  if (oom || rc != 0) {
    entry_free(e);
    return rc != 0 ? -1 : tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  if (rset_listener_put(s, e, 0, err) != 0)
    return -1;
  if (out != NULL)
    *out = rset_listener_get(s, rl->listener->name);
  return 0;
}

int rset_from_snapshot(const Tlsplane__V1__Snapshot *snap, struct rset **out, struct tp_err *err) {
  struct rset *s;
  if (rset_new(&s) != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  for (size_t i = 0; i < snap->n_listeners; i++) {
    if (rset_intern(s, snap->listeners[i], NULL, err) != 0) {
      err_prefix_index(err, "listeners", i);
      rset_free(s);
      return -1;
    }
  }
  *out = s;
  return 0;
}

/* The resource `hash` of kind `kind`, or NULL (err set, naming where). */
static const Tlsplane__V1__Resource *leaf_get(const struct rset *s, const ProtobufCBinaryData *ref,
                                              Tlsplane__V1__Resource__ContentCase kind,
                                              const char *listener, const char *ctx,
                                              const char *field, struct tp_err *err) {
  const Tlsplane__V1__Resource *r = ref_ok(ref) ? rset_resource_get(s, ref->data) : NULL;
  if (r != NULL && r->content_case == kind)
    return r;
  char h[16];
  tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: tls_contexts[%s]: %s: resource %s is not %s",
             listener, ctx, field,
             ref_ok(ref) ? rset_hash_short(ref->data, h, sizeof(h)) : "(malformed)",
             r == NULL ? "held" : "of that kind");
  return NULL;
}

void rset_resolved_free(Tlsplane__V1__ResolvedListener *rl) {
  if (rl == NULL)
    return;
  for (size_t i = 0; rl->tls_contexts != NULL && i < rl->n_tls_contexts; i++) {
    Tlsplane__V1__ResolvedListener__TlsContextsEntry *ce = rl->tls_contexts[i];
    if (ce == NULL)
      continue;
    if (ce->value != NULL) {
      free(ce->value->certificates);
      free(ce->value->revocation_lists);
      free(ce->value);
    }
    free(ce);
  }
  free(rl->tls_contexts);
  free(rl->acme_challenges);
  free(rl);
}

/* A borrowed ResolvedTlsContext for cm. */
static Tlsplane__V1__ResolvedTlsContext *resolve_context(const struct rset *s,
                                                         const Tlsplane__V1__ContextMaterial *cm,
                                                         const char *listener, const char *ctx,
                                                         struct tp_err *err) {
  Tlsplane__V1__ResolvedTlsContext *rc = malloc(sizeof(*rc));
  if (rc == NULL) {
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return NULL;
  }
  tlsplane__v1__resolved_tls_context__init(rc);
  rc->tls_context = cm->tls_context;
  rc->certificates = calloc(cm->n_certificates ? cm->n_certificates : 1, sizeof(*rc->certificates));
  rc->revocation_lists =
      calloc(cm->n_revocation_lists ? cm->n_revocation_lists : 1, sizeof(*rc->revocation_lists));
  const Tlsplane__V1__Resource *r;
  int ok = rc->certificates != NULL && rc->revocation_lists != NULL;
  if (!ok)
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  for (size_t i = 0; ok && i < cm->n_certificates; i++) {
    char field[48];
    snprintf(field, sizeof(field), "certificates[%zu]", i);
    ok = (r = leaf_get(s, &cm->certificates[i], TLSPLANE__V1__RESOURCE__CONTENT_CERTIFICATE,
                       listener, ctx, field, err)) != NULL;
    if (ok)
      rc->certificates[rc->n_certificates++] = r->certificate;
  }
  if (ok && cm->cipher_policy.len != 0) {
    ok = (r = leaf_get(s, &cm->cipher_policy, TLSPLANE__V1__RESOURCE__CONTENT_CIPHER_POLICY,
                       listener, ctx, "cipher_policy", err)) != NULL;
    if (ok)
      rc->cipher_policy = r->cipher_policy;
  }
  if (ok && cm->trust_bundle.len != 0) {
    ok = (r = leaf_get(s, &cm->trust_bundle, TLSPLANE__V1__RESOURCE__CONTENT_TRUST_BUNDLE, listener,
                       ctx, "trust_bundle", err)) != NULL;
    if (ok)
      rc->trust_bundle = r->trust_bundle;
  }
  for (size_t i = 0; ok && i < cm->n_revocation_lists; i++) {
    char field[48];
    snprintf(field, sizeof(field), "revocation_lists[%zu]", i);
    ok = (r = leaf_get(s, &cm->revocation_lists[i], TLSPLANE__V1__RESOURCE__CONTENT_REVOCATION_LIST,
                       listener, ctx, field, err)) != NULL;
    if (ok)
      rc->revocation_lists[rc->n_revocation_lists++] = r->revocation_list;
  }
  if (!ok) {
    free(rc->certificates);
    free(rc->revocation_lists);
    free(rc);
    return NULL;
  }
  return rc;
}

int rset_resolve(const struct rset *s, const Tlsplane__V1__ListenerEntry *e,
                 Tlsplane__V1__ResolvedListener **out, struct tp_err *err) {
  Tlsplane__V1__ResolvedListener *rl = malloc(sizeof(*rl));
  if (rl == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  tlsplane__v1__resolved_listener__init(rl);
  rl->listener = e->listener;
  size_t n = e->n_tls_contexts;
  rl->tls_contexts = calloc(n ? n : 1, sizeof(*rl->tls_contexts));
  int ok = rl->tls_contexts != NULL;
  if (!ok)
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  for (size_t i = 0; ok && i < n; i++) {
    const Tlsplane__V1__ListenerEntry__TlsContextsEntry *in = e->tls_contexts[i];
    const Tlsplane__V1__ContextMaterial *cm = context_get(set_lookup, s, e, in, err);
    Tlsplane__V1__ResolvedListener__TlsContextsEntry *ce = malloc(sizeof(*ce));
    ok = cm != NULL && ce != NULL;
    if (!ok) {
      free(ce);
      if (cm != NULL)
        tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      break;
    }
    tlsplane__v1__resolved_listener__tls_contexts_entry__init(ce);
    ce->key = in->key;
    rl->tls_contexts[rl->n_tls_contexts++] = ce;
    ok = (ce->value = resolve_context(s, cm, e->listener->name, in->key, err)) != NULL;
  }
  if (ok && e->ticket_keys.len != 0) {
    const Tlsplane__V1__Resource *r =
        ref_ok(&e->ticket_keys) ? rset_resource_get(s, e->ticket_keys.data) : NULL;
    ok = r != NULL && r->content_case == TLSPLANE__V1__RESOURCE__CONTENT_TICKET_KEYS;
    if (ok) {
      rl->ticket_keys = r->ticket_keys->keys;
      rl->n_ticket_keys = r->ticket_keys->n_keys;
    } else {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: ticket_keys: resource is not held",
                 e->listener->name);
    }
  }
  if (ok && e->n_acme_challenges > 0) {
    rl->acme_challenges = calloc(e->n_acme_challenges, sizeof(*rl->acme_challenges));
    if ((ok = rl->acme_challenges != NULL) == 0)
      tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  for (size_t i = 0; ok && i < e->n_acme_challenges; i++) {
    const ProtobufCBinaryData *ref = &e->acme_challenges[i];
    const Tlsplane__V1__Resource *r = ref_ok(ref) ? rset_resource_get(s, ref->data) : NULL;
    ok = r != NULL && r->content_case == TLSPLANE__V1__RESOURCE__CONTENT_ACME_CHALLENGE &&
         r->acme_challenge != NULL;
    if (ok) {
      rl->acme_challenges[rl->n_acme_challenges++] = r->acme_challenge;
    } else {
      char h[16];
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                 "%s: acme_challenges[%zu]: resource %s is not %s", e->listener->name, i,
                 ref_ok(ref) ? rset_hash_short(ref->data, h, sizeof(h)) : "(malformed)",
                 r == NULL ? "held" : "an ACME challenge");
    }
  }
  if (!ok) {
    rset_resolved_free(rl);
    return -1;
  }
  *out = rl;
  return 0;
}

static int entry_name_cmp(const void *a, const void *b) {
  const Tlsplane__V1__ListenerEntry *x = *(Tlsplane__V1__ListenerEntry *const *)a,
                                    *y = *(Tlsplane__V1__ListenerEntry *const *)b;
  return strcmp(x->listener->name, y->listener->name);
}

/* s's listeners in name order (caller frees the array). */
static const Tlsplane__V1__ListenerEntry **entries_sorted(const struct rset *s) {
  const Tlsplane__V1__ListenerEntry **v = calloc(s->listeners.n ? s->listeners.n : 1, sizeof(*v));
  if (v == NULL)
    return NULL;
  size_t it = 0, n = 0;
  const Tlsplane__V1__ListenerEntry *e;
  while ((e = rset_listener_next(s, &it)) != NULL)
    v[n++] = e;
  qsort(v, n, sizeof(*v), entry_name_cmp);
  return v;
}

void rset_snapshot_free(Tlsplane__V1__Snapshot *snap) {
  if (snap == NULL)
    return;
  for (size_t i = 0; snap->listeners != NULL && i < snap->n_listeners; i++)
    rset_resolved_free(snap->listeners[i]);
  free(snap->listeners);
  free(snap);
}

int rset_snapshot(const struct rset *s, int64_t revision, Tlsplane__V1__Snapshot **out,
                  struct tp_err *err) {
  Tlsplane__V1__Snapshot *snap = malloc(sizeof(*snap));
  const Tlsplane__V1__ListenerEntry **v = entries_sorted(s);
  if (snap == NULL || v == NULL) {
    free(snap);
    free(v);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  tlsplane__v1__snapshot__init(snap);
  snap->revision = revision;
  size_t n = s->listeners.n;
  int rc = (snap->listeners = calloc(n ? n : 1, sizeof(*snap->listeners))) == NULL
               ? tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory")
               : 0;
  for (size_t i = 0; rc == 0 && i < n; i++)
    if ((rc = rset_resolve(s, v[i], &snap->listeners[i], err)) == 0)
      snap->n_listeners++;
  free(v);
  if (rc != 0) {
    rset_snapshot_free(snap);
    return -1;
  }
  *out = snap;
  return 0;
}

/* --- deltas and state --- */

/* A hash table over borrowed resources (or bare hashes), for the checks
 * of a delta before anything of it is held. */
struct key_entry {
  struct rres r;
  Tlsplane__V1__Resource bare; /* carries just the hash, for bare hashes */
};

static void keys_free(struct tab *t, struct key_entry *keys) {
  free(t->slots);
  free(keys);
}

/* A table of refs[0..n) (bare hashes) or of res[0..n) (borrowed). */
static int keys_tab(const ProtobufCBinaryData *refs, Tlsplane__V1__Resource *const *res, size_t n,
                    struct tab *t, struct key_entry **keys) {
  memset(t, 0, sizeof(*t));
  *keys = calloc(n ? n : 1, sizeof(**keys));
  if (*keys == NULL)
    return -ENOMEM;
  for (size_t i = 0; i < n; i++) {
    struct key_entry *k = &(*keys)[i];
    if (refs != NULL) {
      k->bare.hash = refs[i];
      k->r.msg = &k->bare;
    } else {
      k->r.msg = res[i];
    }
    if (k->r.msg->hash.len != RSET_HASH_LEN || tab_get(t, 1, k->r.msg->hash.data) != NULL)
      continue; /* malformed (refused by the caller) or repeated */
    if (tab_insert(t, 1, &k->r) != 0)
      return -ENOMEM;
  }
  return 0;
}

/* The resources a delta's result holds: s's, less the removed, plus the
 * added. */
struct after {
  const struct rset *s;
  struct tab removed;
  struct tab added;
  const uint8_t *missing; /* the first hash held_cb did not find */
};

static const Tlsplane__V1__Resource *after_lookup(const void *from, const uint8_t *hash) {
  const struct after *a = from;
  struct rres *h = tab_get(&a->added, 1, hash);
  if (h != NULL)
    return h->msg;
  if (tab_get(&a->removed, 1, hash) != NULL)
    return NULL;
  return rset_resource_get(a->s, hash);
}

static int held_cb(const uint8_t *hash, void *data) {
  struct after *a = data;
  if (after_lookup(a, hash) != NULL)
    return 0;
  a->missing = hash;
  return 1;
}

/* Checks that listener e holds everything it uses after the delta. */
static int listener_complete(struct after *a, const Tlsplane__V1__ListenerEntry *e,
                             struct tp_err *err) {
  int rc = uses_walk(after_lookup, a, e, held_cb, a, err);
  if (rc > 0) {
    char h[16];
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: uses resource %s, which is not held",
                      e->listener->name, rset_hash_short(a->missing, h, sizeof(h)));
  }
  return rc;
}

int rset_delta_apply(struct rset *s, Tlsplane__V1__SnapshotDelta *d, struct tp_err *err) {
  /* 1. Every entry of d well formed, hashes checked against content. */
  for (size_t i = 0; i < d->n_resources; i++) {
    char what[32];
    snprintf(what, sizeof(what), "resources[%zu]", i);
    if (d->resources[i] == NULL)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: empty", what);
    if (resource_settle(d->resources[i], 1, what, err) != 0)
      return -1;
  }
  /* d's listeners by name (borrowed), for the checks below. */
  struct tab names = {0};
  struct rlis *wraps = calloc(d->n_listeners + 1, sizeof(*wraps));
  if (wraps == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  for (size_t i = 0; i < d->n_listeners; i++) {
    char what[32];
    snprintf(what, sizeof(what), "listeners[%zu]", i);
    int rc = 0;
    if (d->listeners[i] == NULL)
      rc = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: empty", what);
    else if (entry_settle(d->listeners[i], 1, what, err) != 0)
      rc = -1;
    else if (tab_get(&names, 0, d->listeners[i]->listener->name) != NULL)
      rc = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: %s appears twice", what,
                      d->listeners[i]->listener->name);
    else if ((wraps[i].e = d->listeners[i], tab_insert(&names, 0, &wraps[i])) != 0)
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    if (rc != 0) {
      free(names.slots);
      free(wraps);
      return -1;
    }
  }
  /* Removals of what s does not hold are no-ops (a sender that lost track
   * of a removal must not stop every later delta); a listener both
   * removed and added is refused. */
  for (size_t i = 0; i < d->n_removed_listeners; i++) {
    if (tab_get(&names, 0, d->removed_listeners[i]) != NULL) {
      free(names.slots);
      free(wraps);
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "removed_listeners[%zu]: %s is also added", i, d->removed_listeners[i]);
    }
  }
  for (size_t i = 0; i < d->n_removed_resources; i++) {
    if (!ref_ok(&d->removed_resources[i])) {
      free(names.slots);
      free(wraps);
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "removed_resources[%zu]: %zu bytes, not %d", i, d->removed_resources[i].len,
                        RSET_HASH_LEN);
    }
  }

  /* 2. The result complete: every listener it keeps or adds holds what it
   * uses, looked up in what the set will hold. */
  struct after a = {.s = s};
  struct key_entry *removed_keys = NULL, *added_keys = NULL;
  int rc = 0;
  if (keys_tab(d->removed_resources, NULL, d->n_removed_resources, &a.removed, &removed_keys) !=
          0 ||
      keys_tab(NULL, d->resources, d->n_resources, &a.added, &added_keys) != 0)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  for (size_t i = 0; rc == 0 && i < d->n_listeners; i++)
    if ((rc = listener_complete(&a, d->listeners[i], err)) != 0)
      err_prefix_index(err, "listeners", i);
  if (rc == 0 && d->n_removed_resources > 0) {
    /* What stays must not use what goes. */
    size_t it = 0;
    const Tlsplane__V1__ListenerEntry *e;
    while (rc == 0 && (e = rset_listener_next(s, &it)) != NULL) {
      if (listener_complete(&a, e, err) == 0 || tab_get(&names, 0, e->listener->name) != NULL)
        continue; /* complete, or replaced by the delta */
      int dropped = 0;
      for (size_t j = 0; j < d->n_removed_listeners && !dropped; j++)
        dropped = strcmp(d->removed_listeners[j], e->listener->name) == 0;
      if (!dropped) {
        tp_err_prefix(err, "removed_resources: ");
        rc = -1;
      }
    }
  }
  free(names.slots);
  free(wraps);
  keys_free(&a.removed, removed_keys);
  keys_free(&a.added, added_keys);
  if (rc != 0)
    return -1;

  /* 3. Commit: only allocation can fail from here, and then the set may
   * hold more than it should (never less than its listeners need). */
  for (size_t i = 0; i < d->n_resources; i++) {
    Tlsplane__V1__Resource *r = d->resources[i];
    d->resources[i] = NULL;
    if (resource_hold(s, r, err) != 0)
      rc = -1;
  }
  for (size_t i = 0; rc == 0 && i < d->n_listeners; i++) {
    Tlsplane__V1__ListenerEntry *e = d->listeners[i];
    d->listeners[i] = NULL;
    if (entry_hold(s, e, err) != 0)
      rc = -1;
  }
  if (rc == 0) {
    for (size_t i = 0; i < d->n_removed_listeners; i++)
      rset_listener_remove(s, d->removed_listeners[i]);
    for (size_t i = 0; i < d->n_removed_resources; i++)
      rset_resource_remove(s, d->removed_resources[i].data);
  }
  /* Moved out: d's arrays are emptied so that freeing d frees the rest. */
  for (size_t i = 0; i < d->n_resources; i++)
    resource_free(d->resources[i]);
  for (size_t i = 0; i < d->n_listeners; i++)
    entry_free(d->listeners[i]);
  free(d->resources);
  free(d->listeners);
  d->resources = NULL;
  d->listeners = NULL;
  d->n_resources = d->n_listeners = 0;
  return rc;
}

void rset_state_free(Tlsplane__V1__AgentState *st) {
  if (st == NULL)
    return;
  free(st->resources);
  free(st->listeners);
  free(st);
}

int rset_state(const struct rset *s, int64_t revision, Tlsplane__V1__AgentState **out) {
  Tlsplane__V1__AgentState *st = malloc(sizeof(*st));
  if (st == NULL)
    return -ENOMEM;
  tlsplane__v1__agent_state__init(st);
  st->revision = revision;
  st->resources = calloc(s->res.n ? s->res.n : 1, sizeof(*st->resources));
  st->listeners = (Tlsplane__V1__ListenerEntry **)entries_sorted(s);
  if (st->resources == NULL || st->listeners == NULL) {
    rset_state_free(st);
    return -ENOMEM;
  }
  size_t it = 0;
  struct rres *h;
  while ((h = tab_next(&s->res, &it)) != NULL)
    st->resources[st->n_resources++] = h->msg;
  st->n_listeners = s->listeners.n;
  *out = st;
  return 0;
}

int rset_from_state(Tlsplane__V1__AgentState *st, struct rset **out, struct tp_err *err) {
  Tlsplane__V1__SnapshotDelta d = TLSPLANE__V1__SNAPSHOT_DELTA__INIT;
  d.revision = st->revision;
  d.resources = st->resources;
  d.n_resources = st->n_resources;
  d.listeners = st->listeners;
  d.n_listeners = st->n_listeners;
  struct rset *s;
  if (rset_new(&s) != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  int rc = rset_delta_apply(s, &d, err);
  /* d took st's arrays (emptied them on success; on failure they are
   * st's still). */
  st->resources = d.resources;
  st->n_resources = d.n_resources;
  st->listeners = d.listeners;
  st->n_listeners = d.n_listeners;
  if (rc != 0) {
    rset_free(s);
    return -1;
  }
  *out = s;
  return 0;
}

const char *rset_hash_short(const uint8_t *hash, char *buf, size_t len) {
  static const char hex[] = "0123456789abcdef";
  size_t n = 0;
  for (size_t i = 0; i < 6 && n + 2 < len; i++) {
    buf[n++] = hex[hash[i] >> 4];
    buf[n++] = hex[hash[i] & 15];
  }
  buf[n] = '\0';
  return buf;
}
