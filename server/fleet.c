/* Worlds, views and deltas (see fleet.h). */
#include "fleet.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "acme_order.h"
#include "listener_rules.h"
#include "log.h"
#include "pb.h"
#include "resolve.h"

#define TICKET_KEY_LEN LISTENER_RULES_TICKET_KEY_LEN
/* A hello may report this many resources and listeners at most. */
#define VIEW_MAX_ENTRIES 1000000

/* --- a string -> index table, the memos of a build --- */

struct memo {
  char *name;
  int ok;
  uint8_t hash[RSET_HASH_LEN];
  char *reason; /* when !ok */
  /* The rows its content comes from (a context: itself, its certificates,
   * cipher policy, trust bundle and CRLs): while none of them changed, the
   * next world reuses it. */
  char **deps;
  size_t n_deps;
};

struct memo_tab {
  struct memo *v;
  size_t n, cap;
  size_t *slots; /* index + 1; 0: empty */
  size_t n_slots;
};

static uint64_t fnv(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++)
    h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

static struct memo *memo_find(const struct memo_tab *t, const char *name) {
  if (t->n_slots == 0)
    return NULL;
  for (size_t i = fnv(name) & (t->n_slots - 1);; i = (i + 1) & (t->n_slots - 1)) {
    if (t->slots[i] == 0)
      return NULL;
    if (strcmp(t->v[t->slots[i] - 1].name, name) == 0)
      return &t->v[t->slots[i] - 1];
  }
}

static int memo_rehash(struct memo_tab *t, size_t n_slots) {
  size_t *slots = calloc(n_slots, sizeof(*slots));
  if (slots == NULL)
    return -ENOMEM;
  for (size_t k = 0; k < t->n; k++) {
    size_t i = fnv(t->v[k].name) & (n_slots - 1);
    while (slots[i] != 0)
      i = (i + 1) & (n_slots - 1);
    slots[i] = k + 1;
  }
  free(t->slots);
  t->slots = slots;
  t->n_slots = n_slots;
  return 0;
}

/* A new entry for name (not in t); NULL when out of memory. */
static struct memo *memo_add(struct memo_tab *t, const char *name) {
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    struct memo *v = realloc(t->v, cap * sizeof(*v));
    if (v == NULL)
      return NULL;
    t->v = v;
    t->cap = cap;
  }
  if ((t->n + 1) * 2 > t->n_slots && memo_rehash(t, t->n_slots ? t->n_slots * 2 : 128) != 0)
    return NULL;
  struct memo *m = &t->v[t->n];
  memset(m, 0, sizeof(*m));
  if ((m->name = strdup(name)) == NULL)
    return NULL;
  size_t i = fnv(name) & (t->n_slots - 1);
  while (t->slots[i] != 0)
    i = (i + 1) & (t->n_slots - 1);
  t->slots[i] = ++t->n;
  return m;
}

static void memo_free(struct memo_tab *t) {
  for (size_t i = 0; i < t->n; i++) {
    free(t->v[i].name);
    free(t->v[i].reason);
    for (size_t j = 0; j < t->v[i].n_deps; j++)
      free(t->v[i].deps[j]);
    free(t->v[i].deps);
  }
  free(t->v);
  free(t->slots);
}

/* One listener of a world. */
struct wlistener {
  char *name;
  /* In the world's set; NULL when it failed with no earlier entry (every
   * agent keeps what it holds under this name). */
  const Tlsplane__V1__ListenerEntry *entry;
  const struct fleet_failure *failure; /* NULL: built at this revision */
  /* Failed with no earlier entry: its row, decoded when it could be (for
   * its agent_selector; NULL: which agents it is for is unknown). */
  Tlsplane__V1__Listener *failed_row;
  /* The oldest stream protocol that can apply entry, and what an agent
   * of an older one is told (listener_protocol). */
  int protocol;
  struct fleet_failure too_old;
  /* entry with the challenges this listener answers, for agents of
   * FLEET_PROTOCOL_ACME or later (owned, not in the set); NULL: none. */
  Tlsplane__V1__ListenerEntry *acme_entry;
};

/* A pending ACME challenge (acme_order.h), its resource in the set. */
struct wchallenge {
  char *server_name;
  char certificate[160]; /* the certificate being ordered */
  uint8_t hash[RSET_HASH_LEN];
};

/* The listeners whose agent_selector's first pair is `pair` ("k=v"). */
struct pair_index {
  char *pair;
  size_t *idx; /* into fleet_world.ls, ascending */
  size_t n, cap;
};

/* An agent's record, as far as the world needs it. */
struct wagent {
  char *name;
  struct snapshot_label *labels; /* sorted by key; strings owned */
  size_t n_labels;
  int unreadable; /* its record could not be read: it is sent nothing new */
};

struct fleet_world {
  atomic_int refs;
  int64_t revision;
  struct rset *set;
  struct wlistener *ls; /* in name order */
  size_t n_ls;
  struct fleet_failure *failures; /* strings owned */
  size_t n_failures;
  struct pair_index *pairs; /* in pair order */
  size_t n_pairs;
  size_t *everyone; /* listeners with an empty selector */
  size_t n_everyone;
  /* What this world resolved, by name: the next build reuses what did not
   * change since this world's revision. */
  struct memo_tab contexts;
  struct memo_tab rings;
  struct wagent *agents; /* in name order */
  size_t n_agents;
  struct wchallenge *chals;
  size_t n_chals;
};

struct vlistener {
  char *name;
  uint8_t hash[RSET_HASH_LEN];
};

struct fleet_view {
  struct vlistener *ls; /* in name order */
  size_t n_ls;
  uint8_t (*res)[RSET_HASH_LEN]; /* in byte order, each once */
  size_t n_res;
  int synced;   /* a delta was made for it: the agent knows the revision */
  int protocol; /* the agent's stream protocol (fleet_view_set_protocol) */
};

/* --- building a world --- */

struct build {
  struct store_txn *txn;
  struct fleet_world *w;
  const struct fleet_world *prev;
  /* Names of the rows written since prev's revision (the audit trail);
   * changed_all: unknown, nothing of prev is reused. */
  struct memo_tab changed;
  int changed_all;
  size_t cap_failures;
  /* Contexts and rings whose rows failed their integrity check in an
   * earlier attempt (which aborts the transaction): not read again, so
   * that the next attempt gets past them. restart: this attempt met one. */
  struct memo_tab *bad;
  int restart;
};

/* After a failed read of `name`: if it aborted the transaction, notes it
 * bad and has the build begin again. */
static void bad_note(struct build *b, const char *name, const char *reason) {
  if (!store_txn_failed(b->txn))
    return;
  struct memo *m = memo_find(b->bad, name);
  if (m == NULL && (m = memo_add(b->bad, name)) != NULL)
    m->reason = strdup(reason);
  b->restart = 1;
}

/* A memo failed for a reason found in an earlier attempt. */
static int bad_known(struct build *b, struct memo *m) {
  const struct memo *bad = memo_find(b->bad, m->name);
  if (bad == NULL)
    return 0;
  m->reason = strdup(bad->reason ? bad->reason : "cannot be read");
  return 1;
}

/* Whether none of m's rows changed since the previous world. */
static int memo_unchanged(const struct build *b, const struct memo *m) {
  if (b->changed_all || !m->ok || memo_find(&b->changed, m->name) != NULL)
    return 0;
  for (size_t i = 0; i < m->n_deps; i++)
    if (memo_find(&b->changed, m->deps[i]) != NULL)
      return 0;
  return 1;
}

static int deps_add(struct memo *m, const char *name) {
  char **v = realloc(m->deps, (m->n_deps + 1) * sizeof(*v));
  if (v == NULL)
    return -ENOMEM;
  m->deps = v;
  if ((v[m->n_deps] = strdup(name)) == NULL)
    return -ENOMEM;
  m->n_deps++;
  return 0;
}

/* The rows a context's content comes from. */
static int deps_of_context(struct memo *m, const Tlsplane__V1__TlsContext *ctx) {
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < ctx->n_certificates; i++)
    rc = deps_add(m, ctx->certificates[i]);
  if (rc == 0)
    rc = deps_add(m, ctx->cipher_policy[0] ? ctx->cipher_policy : RESOLVE_DEFAULT_CIPHER_POLICY);
  if (rc == 0 && ctx->trust_bundle[0])
    rc = deps_add(m, ctx->trust_bundle);
  for (size_t i = 0; rc == 0 && i < ctx->n_revocation_lists; i++)
    rc = deps_add(m, ctx->revocation_lists[i]);
  return rc;
}

struct share {
  struct rset *dst;
  const struct rset *src;
};

static int share_cb(const uint8_t *hash, void *data) {
  struct share *s = data;
  int rc = rset_resource_share(s->dst, s->src, hash);
  return rc == -ENOENT ? 0 : rc; /* a carried entry is as complete as it was */
}

/* Takes the previous world's context (or ring) `old` over into b's world:
 * its resources shared, its memo copied. 0 or -ENOMEM. */
static int memo_reuse(struct build *b, struct memo *m, const struct memo *old, int is_context) {
  struct share sh = {.dst = b->w->set, .src = b->prev->set};
  int rc;
  if (is_context) {
    /* A one-context listener entry walks the context's resources. */
    Tlsplane__V1__Listener l = TLSPLANE__V1__LISTENER__INIT;
    l.name = "reuse";
    Tlsplane__V1__ListenerEntry__TlsContextsEntry ce =
        TLSPLANE__V1__LISTENER_ENTRY__TLS_CONTEXTS_ENTRY__INIT;
    ce.key = m->name;
    ce.value.data = (uint8_t *)old->hash;
    ce.value.len = RSET_HASH_LEN;
    Tlsplane__V1__ListenerEntry__TlsContextsEntry *cep = &ce;
    Tlsplane__V1__ListenerEntry e = TLSPLANE__V1__LISTENER_ENTRY__INIT;
    e.listener = &l;
    e.tls_contexts = &cep;
    e.n_tls_contexts = 1;
    struct tp_err err = {0};
    rc = rset_listener_uses(b->prev->set, &e, share_cb, &sh, &err);
  } else {
    rc = share_cb(old->hash, &sh);
  }
  if (rc != 0)
    return -ENOMEM;
  m->ok = 1;
  memcpy(m->hash, old->hash, RSET_HASH_LEN);
  for (size_t i = 0; i < old->n_deps; i++)
    if (deps_add(m, old->deps[i]) != 0)
      return -ENOMEM;
  return 0;
}

/* The start of a context's (is_context) or ring's memo in this build: 1
 * with *out the memo when it is settled already (found, reused from the
 * previous world, known bad; NULL: out of memory), 0 with *out a new memo
 * for the caller to resolve. */
static int memo_begin(struct build *b, int is_context, const char *name, struct memo **out) {
  struct memo_tab *mine = is_context ? &b->w->contexts : &b->w->rings;
  if ((*out = memo_find(mine, name)) != NULL)
    return 1;
  if ((*out = memo_add(mine, name)) == NULL)
    return 1;
  const struct memo *old =
      b->prev == NULL ? NULL : memo_find(is_context ? &b->prev->contexts : &b->prev->rings, name);
  if (old != NULL && memo_unchanged(b, old)) {
    if (memo_reuse(b, *out, old, is_context) != 0)
      *out = NULL;
    return 1;
  }
  return bad_known(b, *out);
}

/* The memo of context `name`: resolved (keys unsealed) once per build. */
static const struct memo *context_memo(struct build *b, const char *name) {
  struct memo *m;
  if (memo_begin(b, 1, name, &m))
    return m;
  struct tp_err err = {0};
  ProtobufCMessage *ctx = NULL;
  Tlsplane__V1__ResolvedTlsContext *rc = NULL;
  if (api_read(b->txn, &api_kind_tls_context, name, 0, &ctx, NULL, &err) == 0 &&
      resolve_tls_context(b->txn, (Tlsplane__V1__TlsContext *)ctx, NULL, &rc, &err) == 0 &&
      rset_intern_context(b->w->set, rc, m->hash, &err) == 0)
    m->ok = deps_of_context(m, (Tlsplane__V1__TlsContext *)ctx) == 0;
  if (!m->ok) {
    m->reason = strdup(err.msg[0] ? err.msg : "out of memory");
    bad_note(b, name, err.msg);
  }
  if (rc != NULL) {
    for (size_t i = 0; i < rc->n_certificates; i++) /* the unsealed keys */
      if (rc->certificates[i]->private_key_pem != NULL)
        OPENSSL_cleanse(rc->certificates[i]->private_key_pem,
                        strlen(rc->certificates[i]->private_key_pem));
    protobuf_c_message_free_unpacked(&rc->base, NULL);
  }
  if (ctx != NULL)
    protobuf_c_message_free_unpacked(ctx, NULL);
  return m;
}

/* The memo of ticket-key ring `name`. */
static const struct memo *ring_memo(struct build *b, const char *name) {
  struct memo *m;
  if (memo_begin(b, 0, name, &m))
    return m;
  struct tp_err err = {0};
  ProtobufCMessage *ring = NULL;
  struct store_row row = {0};
  if (api_read(b->txn, &api_kind_ticket_key_ring, name, 1, &ring, &row, &err) == 0) {
    size_t n = row.secret_len / TICKET_KEY_LEN;
    Tlsplane__V1__TicketKeyMaterial *keys = calloc(n ? n : 1, sizeof(*keys));
    Tlsplane__V1__TicketKeyMaterial **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    if (keys != NULL && ptrs != NULL) {
      for (size_t i = 0; i < n; i++) {
        tlsplane__v1__ticket_key_material__init(&keys[i]);
        keys[i].key.data = row.secret + i * TICKET_KEY_LEN; /* borrowed: copied by intern */
        keys[i].key.len = TICKET_KEY_LEN;
        keys[i].active = i == 0; /* the ring keeps its active key first */
        ptrs[i] = &keys[i];
      }
      m->ok = rset_intern_ticket_keys(b->w->set, ptrs, n, m->hash, &err) == 0;
    } else {
      tp_err_set(&err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    }
    free(keys);
    free(ptrs);
  }
  if (!m->ok) {
    m->reason = strdup(err.msg);
    bad_note(b, name, err.msg);
  }
  if (row.secret != NULL)
    OPENSSL_cleanse(row.secret, row.secret_len);
  store_row_clear(&row);
  if (ring != NULL)
    protobuf_c_message_free_unpacked(ring, NULL);
  return m;
}

static int failure_add(struct build *b, const char *listener, const char *reason) {
  struct fleet_world *w = b->w;
  if (w->n_failures == b->cap_failures) {
    size_t cap = b->cap_failures ? b->cap_failures * 2 : 8;
    struct fleet_failure *v = realloc(w->failures, cap * sizeof(*v));
    if (v == NULL)
      return -ENOMEM;
    w->failures = v;
    b->cap_failures = cap;
  }
  char *l = strdup(listener), *r = strdup(reason);
  if (l == NULL || r == NULL) {
    free(l);
    free(r);
    return -ENOMEM;
  }
  w->failures[w->n_failures].listener = l;
  w->failures[w->n_failures].reason = r;
  w->n_failures++;
  return 0;
}

/* Adds the context `name` to e's map unless it is there. */
static int entry_add_context(struct build *b, Tlsplane__V1__ListenerEntry *e, size_t cap,
                             const char *name, const char *field, struct tp_err *err) {
  for (size_t i = 0; i < e->n_tls_contexts; i++)
    if (strcmp(e->tls_contexts[i]->key, name) == 0)
      return 0;
  if (e->n_tls_contexts == cap)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "too many contexts");
  const struct memo *m = context_memo(b, name);
  if (m == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (!m->ok)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s: %s: %s", field, name,
                      m->reason ? m->reason : "out of memory");
  Tlsplane__V1__ListenerEntry__TlsContextsEntry *ce = malloc(sizeof(*ce));
  if (ce == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  tlsplane__v1__listener_entry__tls_contexts_entry__init(ce);
  e->tls_contexts[e->n_tls_contexts++] = ce;
  ce->key = strdup(name);
  ce->value.data = malloc(RSET_HASH_LEN);
  if (ce->key == NULL || ce->value.data == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  memcpy(ce->value.data, m->hash, RSET_HASH_LEN);
  ce->value.len = RSET_HASH_LEN;
  return 0;
}

/* The entry for listener l (taken), into the world's set. */
static int entry_build(struct build *b, Tlsplane__V1__Listener *l, struct tp_err *err) {
  Tlsplane__V1__ListenerEntry *e = malloc(sizeof(*e));
  if (e == NULL) {
    protobuf_c_message_free_unpacked(&l->base, NULL);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  tlsplane__v1__listener_entry__init(e);
  e->listener = l;
  size_t cap = l->n_sni_routes + 2;
  int rc = (e->tls_contexts = calloc(cap, sizeof(*e->tls_contexts))) == NULL
               ? tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory")
               : 0;
  if (rc == 0)
    rc = entry_add_context(b, e, cap, l->default_tls_context, "default_tls_context", err);
  for (size_t i = 0; rc == 0 && i < l->n_sni_routes; i++) {
    char field[64];
    snprintf(field, sizeof(field), "sni_routes[%zu].tls_context", i);
    rc = entry_add_context(b, e, cap, l->sni_routes[i]->tls_context, field, err);
  }
  if (rc == 0 && l->upstream_tls != NULL)
    rc =
        entry_add_context(b, e, cap, l->upstream_tls->tls_context, "upstream_tls.tls_context", err);
  if (rc == 0 && l->ticket_key_ring[0] != '\0') {
    const struct memo *m = ring_memo(b, l->ticket_key_ring);
    if (m == NULL)
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    else if (!m->ok)
      rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "ticket_key_ring: %s: %s",
                      l->ticket_key_ring, m->reason ? m->reason : "out of memory");
    else if ((e->ticket_keys.data = malloc(RSET_HASH_LEN)) == NULL)
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    else {
      memcpy(e->ticket_keys.data, m->hash, RSET_HASH_LEN);
      e->ticket_keys.len = RSET_HASH_LEN;
    }
  }
  if (rc != 0) {
    protobuf_c_message_free_unpacked(&e->base, NULL);
    return -1;
  }
  return rset_listener_put(b->w->set, e, 0, err);
}

static const struct wlistener *world_find(const struct fleet_world *w, const char *name) {
  size_t lo = 0, hi = w->n_ls;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(w->ls[mid].name, name);
    if (c == 0)
      return &w->ls[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

/* Carries prev's entry for `name` into the world, with its resources. 0
 * when prev had none (nothing carried), 1 when carried, -1 on failure. */
static int entry_carry(struct build *b, const char *name, struct tp_err *err) {
  const struct wlistener *old = b->prev != NULL ? world_find(b->prev, name) : NULL;
  if (old == NULL || old->entry == NULL)
    return 0;
  struct share s = {.dst = b->w->set, .src = b->prev->set};
  if (rset_listener_uses(b->prev->set, old->entry, share_cb, &s, err) != 0)
    return -1;
  ProtobufCMessage *copy = pb_clone(&old->entry->base);
  if (copy == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  return rset_listener_put(b->w->set, (Tlsplane__V1__ListenerEntry *)copy, 0, err) == 0 ? 1 : -1;
}

static int pair_cmp(const void *a, const void *b) {
  return strcmp(((const struct pair_index *)a)->pair, ((const struct pair_index *)b)->pair);
}

static struct pair_index *pair_find(const struct fleet_world *w, const char *pair) {
  struct pair_index key = {.pair = (char *)pair};
  return w->n_pairs ? bsearch(&key, w->pairs, w->n_pairs, sizeof(*w->pairs), pair_cmp) : NULL;
}

static int idx_push(size_t **v, size_t *n, size_t *cap, size_t i) {
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 4;
    size_t *nv = realloc(*v, c * sizeof(*nv));
    if (nv == NULL)
      return -ENOMEM;
    *v = nv;
    *cap = c;
  }
  (*v)[(*n)++] = i;
  return 0;
}

/* The oldest agent stream protocol that applies l as it is meant: an
 * older agent would ignore upstream_tls (and send cleartext where TLS is
 * configured) or refuse a unix: upstream. */
static int listener_protocol(const Tlsplane__V1__Listener *l) {
  if (l->upstream_tls != NULL || strncmp(l->upstream, "unix:", 5) == 0)
    return FLEET_PROTOCOL_UPSTREAM_TLS;
  return 0;
}

static const char too_old_reason[] =
    "the agent is too old for this listener: upstream_tls and unix: upstreams need an agent of "
    "stream protocol 3 or later (upgrade tlsplane-agent); it keeps what it serves";

/* Indexes listeners by the first pair of their selector: an agent's
 * candidates are the listeners under each of its labels, and those that
 * select every agent. */
static int world_index(struct fleet_world *w) {
  size_t cap_everyone = 0, cap_pairs = 0;
  for (size_t i = 0; i < w->n_ls; i++) {
    const Tlsplane__V1__ListenerEntry *e = w->ls[i].entry;
    if (e == NULL)
      continue;
    const Tlsplane__V1__Listener *l = e->listener;
    w->ls[i].protocol = listener_protocol(l);
    w->ls[i].too_old = (struct fleet_failure){.listener = w->ls[i].name, .reason = too_old_reason};
    if (l->n_agent_selector == 0) {
      if (idx_push(&w->everyone, &w->n_everyone, &cap_everyone, i) != 0)
        return -ENOMEM;
      continue;
    }
    size_t len = strlen(l->agent_selector[0]->key) + strlen(l->agent_selector[0]->value) + 2;
    char *pair = malloc(len);
    if (pair == NULL)
      return -ENOMEM;
    snprintf(pair, len, "%s=%s", l->agent_selector[0]->key, l->agent_selector[0]->value);
    if (w->n_pairs == cap_pairs) {
      size_t c = cap_pairs ? cap_pairs * 2 : 16;
      struct pair_index *v = realloc(w->pairs, c * sizeof(*v));
      if (v == NULL) {
        free(pair);
        return -ENOMEM;
      }
      w->pairs = v;
      cap_pairs = c;
    }
    w->pairs[w->n_pairs++] = (struct pair_index){.pair = pair};
    if (idx_push(&w->pairs[w->n_pairs - 1].idx, &w->pairs[w->n_pairs - 1].n,
                 &w->pairs[w->n_pairs - 1].cap, i) != 0)
      return -ENOMEM;
  }
  /* One index entry per pair: merge the runs that sort together. */
  if (w->n_pairs > 1)
    qsort(w->pairs, w->n_pairs, sizeof(*w->pairs), pair_cmp);
  size_t out = 0;
  for (size_t i = 0; i < w->n_pairs; i++) {
    if (out > 0 && strcmp(w->pairs[out - 1].pair, w->pairs[i].pair) == 0) {
      struct pair_index *p = &w->pairs[out - 1];
      for (size_t j = 0; j < w->pairs[i].n; j++)
        if (idx_push(&p->idx, &p->n, &p->cap, w->pairs[i].idx[j]) != 0)
          return -ENOMEM;
      free(w->pairs[i].pair);
      free(w->pairs[i].idx);
      continue;
    }
    w->pairs[out++] = w->pairs[i];
  }
  w->n_pairs = out;
  return 0;
}

static void wagent_clear(struct wagent *a) {
  for (size_t i = 0; i < a->n_labels; i++) {
    free((char *)a->labels[i].key);
    free((char *)a->labels[i].value);
  }
  free(a->labels);
  free(a->name);
}

static int label_cmp(const void *a, const void *b) {
  return strcmp(((const struct snapshot_label *)a)->key, ((const struct snapshot_label *)b)->key);
}

static int wagent_cmp(const void *a, const void *b) {
  return strcmp(((const struct wagent *)a)->name, ((const struct wagent *)b)->name);
}

/* out from the record rec (name given: rows and records agree). */
static int wagent_from(struct wagent *out, const char *name, const Tlsplane__V1__Agent *rec) {
  memset(out, 0, sizeof(*out));
  size_t n = rec != NULL ? rec->n_labels : 0;
  out->name = strdup(name);
  out->labels = calloc(n ? n : 1, sizeof(*out->labels));
  if (out->name == NULL || out->labels == NULL)
    goto oom;
  for (size_t i = 0; i < n; i++) {
    out->labels[i].key = strdup(rec->labels[i]->key);
    out->labels[i].value = strdup(rec->labels[i]->value);
    out->n_labels++;
    if (out->labels[i].key == NULL || out->labels[i].value == NULL)
      goto oom;
  }
  if (n > 1)
    qsort(out->labels, n, sizeof(*out->labels), label_cmp);
  return 0;
oom:
  wagent_clear(out);
  return -ENOMEM;
}

static int wagent_copy(struct wagent *out, const struct wagent *in) {
  Tlsplane__V1__Agent rec = TLSPLANE__V1__AGENT__INIT;
  Tlsplane__V1__Agent__LabelsEntry *e = calloc(in->n_labels + 1, sizeof(*e));
  Tlsplane__V1__Agent__LabelsEntry **p = calloc(in->n_labels + 1, sizeof(*p));
  int rc = -ENOMEM;
  if (e != NULL && p != NULL) {
    for (size_t i = 0; i < in->n_labels; i++) {
      e[i].key = (char *)in->labels[i].key;
      e[i].value = (char *)in->labels[i].value;
      p[i] = &e[i];
    }
    rec.labels = p;
    rec.n_labels = in->n_labels;
    rc = wagent_from(out, in->name, &rec);
  }
  free(e);
  free(p);
  return rc;
}

/* The agents' labels at the build's revision: the previous world's, with
 * the records written since read again (all of them read when there is
 * no previous world or its changes are unknown). */
static int world_agents(struct build *b, struct tp_err *err) {
  struct fleet_world *w = b->w;
  size_t cap = 0;
  if (b->changed_all) {
    struct store_query q = {.kind = api_kind_agent.kind};
    struct store_row *rows = NULL;
    size_t n = 0;
    if (store_list(b->txn, &q, &rows, &n, err) != 0)
      return -1;
    int rc = (w->agents = calloc(n ? n : 1, sizeof(*w->agents))) == NULL ? -ENOMEM : 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
      struct tp_err why = {0};
      ProtobufCMessage *rec = api_decode_row(&api_kind_agent, &rows[i], &why);
      rc = wagent_from(&w->agents[w->n_agents], rows[i].name, (const Tlsplane__V1__Agent *)rec);
      if (rc == 0)
        w->agents[w->n_agents++].unreadable = rec == NULL;
      if (rec != NULL)
        protobuf_c_message_free_unpacked(rec, NULL);
    }
    store_rows_free(rows, n);
    return rc == 0 ? 0 : tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  const struct fleet_world *prev = b->prev;
  cap = prev->n_agents + b->changed.n + 1;
  if ((w->agents = calloc(cap, sizeof(*w->agents))) == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  const size_t prefix = strlen(api_kind_agent.collection);
  for (size_t i = 0; i < prev->n_agents; i++) {
    if (memo_find(&b->changed, prev->agents[i].name) != NULL)
      continue; /* read again below */
    if (wagent_copy(&w->agents[w->n_agents], &prev->agents[i]) != 0)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    w->agents[w->n_agents++].unreadable = prev->agents[i].unreadable;
  }
  for (size_t i = 0; i < b->changed.n; i++) {
    const char *name = b->changed.v[i].name;
    if (strncmp(name, api_kind_agent.collection, prefix) != 0 || name[prefix] != '/')
      continue;
    ProtobufCMessage *rec = NULL;
    struct tp_err why = {0};
    if (api_read(b->txn, &api_kind_agent, name, 0, &rec, NULL, &why) != 0 &&
        why.status == GRPC_STATUS_NOT_FOUND)
      continue; /* deleted */
    int rc = wagent_from(&w->agents[w->n_agents], name, (const Tlsplane__V1__Agent *)rec);
    if (rec != NULL)
      protobuf_c_message_free_unpacked(rec, NULL);
    if (rc != 0)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    w->agents[w->n_agents++].unreadable = rec == NULL;
  }
  if (w->n_agents > 1)
    qsort(w->agents, w->n_agents, sizeof(*w->agents), wagent_cmp);
  return 0;
}

int fleet_world_agent(const struct fleet_world *w, const char *name,
                      const struct snapshot_label **labels, size_t *n) {
  struct wagent key = {.name = (char *)name};
  const struct wagent *a =
      w->n_agents ? bsearch(&key, w->agents, w->n_agents, sizeof(*w->agents), wagent_cmp) : NULL;
  if (a == NULL)
    return -ENOENT;
  if (a->unreadable)
    return -EBADMSG;
  *labels = a->labels;
  *n = a->n_labels;
  return 0;
}

/* Adds listener `name` to the world being built: l (taken; NULL when its
 * row could not be read, then why says why) built into an entry, or, when
 * that fails, the failure recorded and what agents serve of it kept. 0, or
 * -1 (err set) when the world cannot be built (out of memory). */
static int listener_add(struct build *b, const char *name, Tlsplane__V1__Listener *l,
                        struct tp_err *why, struct tp_err *err) {
  struct fleet_world *w = b->w;
  struct wlistener *wl = &w->ls[w->n_ls];
  if ((wl->name = strdup(name)) == NULL) {
    if (l != NULL)
      protobuf_c_message_free_unpacked(&l->base, NULL);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  w->n_ls++;
  if (l != NULL && entry_build(b, l, why) == 0)
    return 0;
  if (why->status == GRPC_STATUS_RESOURCE_EXHAUSTED) { /* out of memory: no world */
    *err = *why;
    return -1;
  }
  /* Invariant 8: what the agents serve of it stays. */
  int carried = failure_add(b, wl->name, why->msg) != 0 ? -1 : entry_carry(b, wl->name, err);
  if (carried < 0) {
    if (err->msg[0] == '\0')
      tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return -1;
  }
  if (carried == 0 && !store_txn_failed(b->txn)) {
    /* For its agent_selector: which agents may serve it. */
    ProtobufCMessage *row = NULL;
    struct tp_err ignored = {0};
    if (api_read(b->txn, &api_kind_listener, name, 0, &row, NULL, &ignored) == 0)
      wl->failed_row = (Tlsplane__V1__Listener *)row;
  }
  return 0;
}

/* Takes the previous world's entry e over when nothing it uses changed:
 * 1 taken (shared), 0 not (it must be built again), -1 out of memory. */
static int entry_reuse(struct build *b, const Tlsplane__V1__ListenerEntry *e) {
  for (size_t i = 0; i < e->n_tls_contexts; i++) {
    const struct memo *m = context_memo(b, e->tls_contexts[i]->key);
    if (m == NULL)
      return -1;
    if (!m->ok || e->tls_contexts[i]->value.len != RSET_HASH_LEN ||
        memcmp(m->hash, e->tls_contexts[i]->value.data, RSET_HASH_LEN) != 0)
      return 0;
  }
  if (e->listener->ticket_key_ring[0] != '\0') {
    const struct memo *m = ring_memo(b, e->listener->ticket_key_ring);
    if (m == NULL)
      return -1;
    if (!m->ok || e->ticket_keys.len != RSET_HASH_LEN ||
        memcmp(m->hash, e->ticket_keys.data, RSET_HASH_LEN) != 0)
      return 0;
  }
  /* Its resources came with the memos (reused or resolved again to the
   * same content). */
  return rset_listener_share(b->w->set, b->prev->set, e->listener->name) == 0 ? 1 : -1;
}

static int name_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The listeners from the previous world and what was written since: a
 * listener whose row and whose contexts and ring no write touched is
 * shared as it is; the others are read and built again. */
static int world_listeners_since(struct build *b, struct tp_err *err) {
  const struct fleet_world *prev = b->prev;
  const size_t prefix = strlen(api_kind_listener.collection);
  size_t cap = prev->n_ls + b->changed.n + 1, n = 0;
  const char **names = calloc(cap, sizeof(*names));
  if (names == NULL || (b->w->ls = calloc(cap, sizeof(*b->w->ls))) == NULL) {
    free(names);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  for (size_t i = 0; i < prev->n_ls; i++)
    names[n++] = prev->ls[i].name;
  for (size_t i = 0; i < b->changed.n; i++) {
    const char *name = b->changed.v[i].name;
    if (strncmp(name, api_kind_listener.collection, prefix) == 0 && name[prefix] == '/' &&
        world_find(prev, name) == NULL)
      names[n++] = name; /* new since */
  }
  if (n > 1)
    qsort(names, n, sizeof(*names), name_cmp);
  int rc = 0;
  for (size_t i = 0; rc == 0 && !b->restart && i < n; i++) {
    const struct wlistener *old = world_find(prev, names[i]);
    int touched = memo_find(&b->changed, names[i]) != NULL;
    if (!touched && old != NULL && old->entry != NULL && old->failure == NULL) {
      int reused = entry_reuse(b, old->entry);
      if (b->restart)
        break; /* a context aborted the transaction: begin again past it */
      if (reused < 0) {
        rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        break;
      }
      if (reused) {
        struct wlistener *wl = &b->w->ls[b->w->n_ls];
        if ((wl->name = strdup(names[i])) == NULL) {
          rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
          break;
        }
        b->w->n_ls++;
        continue;
      }
      /* Its row as it was (no write touched it): built again from the
       * previous entry's copy, without reading the store. */
      struct tp_err why = {0};
      ProtobufCMessage *copy = pb_clone(&old->entry->listener->base);
      if (copy == NULL) {
        rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        break;
      }
      rc = listener_add(b, names[i], (Tlsplane__V1__Listener *)copy, &why, err);
      continue;
    }
    struct tp_err why = {0};
    ProtobufCMessage *l = NULL;
    const struct memo *bad = memo_find(b->bad, names[i]);
    if (bad != NULL) { /* failed its integrity check in an earlier attempt */
      tp_err_set(&why, GRPC_STATUS_DATA_LOSS, "%s", bad->reason ? bad->reason : "cannot be read");
    } else if (api_read(b->txn, &api_kind_listener, names[i], 0, &l, NULL, &why) != 0) {
      if (why.status == GRPC_STATUS_NOT_FOUND)
        continue; /* deleted */
      bad_note(b, names[i], why.msg);
      if (b->restart)
        break;
    }
    rc = listener_add(b, names[i], (Tlsplane__V1__Listener *)l, &why, err);
  }
  free(names);
  return rc;
}

/* The pending tls-alpn-01 challenges, each a resource of the set. A
 * dns-01 challenge's row (no certificate: the agents have no part in it,
 * acme_order.h) is left out, and so is a row that cannot be read (its
 * order times out and says so); -1 only when out of memory. */
static int world_challenges(struct build *b) {
  struct fleet_world *w = b->w;
  struct store_challenge *rows = NULL;
  size_t n = 0;
  struct tp_err why = {0};
  if (store_challenges_list(b->txn, &rows, &n, &why) != 0 || n == 0) {
    if (why.msg[0] != '\0')
      log_warn("fleet", "ACME challenges: %s", why.msg);
    store_challenges_free(rows, n);
    return 0;
  }
  if ((w->chals = calloc(n, sizeof(*w->chals))) == NULL) {
    store_challenges_free(rows, n);
    return -1;
  }
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    Tlsplane__V1__AcmeChallengeMaterial *m = NULL;
    struct wchallenge *ch = &w->chals[w->n_chals];
    if (acme_challenge_material(&rows[i], &m) != 0)
      continue;
    snprintf(ch->certificate, sizeof(ch->certificate), "%s", rows[i].certificate);
    Tlsplane__V1__Resource *r = malloc(sizeof(*r));
    if (r == NULL || (ch->server_name = strdup(m->server_name)) == NULL) {
      free(r);
      rc = -1;
    } else {
      tlsplane__v1__resource__init(r);
      r->content_case = TLSPLANE__V1__RESOURCE__CONTENT_ACME_CHALLENGE;
      r->acme_challenge = m;
      m = NULL;
      if (rset_resource_hash(r, ch->hash) != 0 || rset_resource_put(w->set, r, 0, &why) != 0) {
        free(ch->server_name);
        ch->server_name = NULL;
        rc = -1; /* rset_resource_put fails only out of memory here */
      } else
        w->n_chals++;
    }
    if (m != NULL) {
      OPENSSL_cleanse(m->private_key_pem, strlen(m->private_key_pem));
      protobuf_c_message_free_unpacked(&m->base, NULL);
    }
  }
  store_challenges_free(rows, n);
  return rc;
}

/* Whether host (a route's hostname or a certificate's name) matches name:
 * the same, or "*.rest" with name one label followed by ".rest". */
static int host_matches(const char *host, const char *name) {
  if (strcasecmp(host, name) == 0)
    return 1;
  if (strncmp(host, "*.", 2) != 0)
    return 0;
  const char *dot = strchr(name, '.');
  return dot != NULL && dot != name && strcasecmp(dot + 1, host + 2) == 0;
}

/* Whether the listener of entry e (resources in w's set) serves name, or
 * uses certificate (see fleet_world_serves). */
static int entry_serves(const struct fleet_world *w, const Tlsplane__V1__ListenerEntry *e,
                        const char *name, const char *certificate) {
  const Tlsplane__V1__Listener *l = e->listener;
  for (size_t i = 0; i < l->n_sni_routes; i++)
    if (host_matches(l->sni_routes[i]->hostname, name))
      return 1;
  for (size_t i = 0; i < e->n_tls_contexts; i++) {
    const Tlsplane__V1__Resource *r = rset_resource_get(w->set, e->tls_contexts[i]->value.data);
    if (r == NULL || r->content_case != TLSPLANE__V1__RESOURCE__CONTENT_TLS_CONTEXT)
      continue;
    int is_default = strcmp(e->tls_contexts[i]->key, l->default_tls_context) == 0;
    for (size_t k = 0; k < r->tls_context->n_certificates; k++) {
      const Tlsplane__V1__Resource *cr =
          rset_resource_get(w->set, r->tls_context->certificates[k].data);
      if (cr == NULL || cr->content_case != TLSPLANE__V1__RESOURCE__CONTENT_CERTIFICATE ||
          cr->certificate->certificate == NULL)
        continue;
      const Tlsplane__V1__Certificate *c = cr->certificate->certificate;
      if (certificate != NULL && strcmp(c->name, certificate) == 0)
        return 1;
      for (size_t d = 0; is_default && d < c->n_dns_names; d++)
        if (host_matches(c->dns_names[d], name))
          return 1;
    }
  }
  return 0;
}

/* Whether some agent of w's records is selected by l. */
static int someone_selects(const struct fleet_world *w, const Tlsplane__V1__Listener *l) {
  for (size_t i = 0; i < w->n_agents; i++)
    if (!w->agents[i].unreadable &&
        snapshot_selector_matches(l, w->agents[i].labels, w->agents[i].n_labels))
      return 1;
  return 0;
}

int fleet_world_serves(const struct fleet_world *w, const char *name, const char *certificate) {
  int n = 0;
  for (size_t i = 0; i < w->n_ls; i++)
    if (w->ls[i].entry != NULL && entry_serves(w, w->ls[i].entry, name, certificate) &&
        someone_selects(w, w->ls[i].entry->listener))
      n++;
  return n;
}

/* For each listener serving a pending challenge's name: its entry with
 * the challenges (at most one per name: the first row's). */
static int world_acme_entries(struct fleet_world *w) {
  for (size_t i = 0; w->n_chals > 0 && i < w->n_ls; i++) {
    struct wlistener *wl = &w->ls[i];
    if (wl->entry == NULL)
      continue;
    size_t *pick = calloc(w->n_chals, sizeof(*pick)), n = 0;
    if (pick == NULL)
      return -1;
    for (size_t c = 0; c < w->n_chals; c++) {
      int dup = 0;
      for (size_t k = 0; k < n; k++)
        dup |= strcmp(w->chals[pick[k]].server_name, w->chals[c].server_name) == 0;
      if (!dup && entry_serves(w, wl->entry, w->chals[c].server_name, w->chals[c].certificate))
        pick[n++] = c;
    }
    if (n == 0) {
      free(pick);
      continue;
    }
    Tlsplane__V1__ListenerEntry *e = (Tlsplane__V1__ListenerEntry *)pb_clone(&wl->entry->base);
    int ok = e != NULL && (e->acme_challenges = calloc(n, sizeof(*e->acme_challenges))) != NULL;
    for (size_t k = 0; ok && k < n; k++) {
      if ((e->acme_challenges[k].data = malloc(RSET_HASH_LEN)) == NULL) {
        ok = 0;
        break;
      }
      memcpy(e->acme_challenges[k].data, w->chals[pick[k]].hash, RSET_HASH_LEN);
      e->acme_challenges[k].len = RSET_HASH_LEN;
      e->n_acme_challenges++;
    }
    free(pick);
    if (ok) {
      free(e->hash.data);
      e->hash.data = malloc(RSET_HASH_LEN);
      e->hash.len = 0;
      ok = e->hash.data != NULL && rset_listener_hash(e, e->hash.data) == 0;
      e->hash.len = RSET_HASH_LEN;
    }
    if (!ok) {
      if (e != NULL)
        protobuf_c_message_free_unpacked(&e->base, NULL);
      return -1;
    }
    wl->acme_entry = e;
  }
  return 0;
}

/* One attempt at a world (see fleet_world_build); *restart set when it
 * met a row that aborted its transaction (noted in bad). */
static int world_try(struct store *store, const struct fleet_world *prev, struct memo_tab *bad,
                     int *restart, struct fleet_world **out, struct tp_err *err) {
  struct fleet_world *w = calloc(1, sizeof(*w));
  if (w == NULL || rset_new(&w->set) != 0) {
    free(w);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  atomic_init(&w->refs, 1);
  struct build b = {.w = w, .prev = prev, .bad = bad};
  struct store_row *rows = NULL;
  size_t n = 0;
  struct store_query q = {.kind = api_kind_listener.kind};
  if (store_begin(store, 0, &b.txn, err) != 0) {
    fleet_world_unref(w);
    return -1;
  }
  w->revision = store_txn_revision(b.txn);
  b.changed_all = prev == NULL;
  if (prev != NULL) {
    /* What was written since prev: every write leaves an audit row in its
     * own transaction, so the trail is the change feed. */
    struct store_audit_query aq = {.since_revision = prev->revision};
    struct store_audit *audit = NULL;
    size_t n_audit = 0;
    struct tp_err why = {0};
    if (store_audit_list(b.txn, &aq, &audit, &n_audit, &why) != 0)
      b.changed_all = 1;
    for (size_t i = 0; !b.changed_all && i < n_audit; i++)
      if (memo_find(&b.changed, audit[i].resource) == NULL &&
          memo_add(&b.changed, audit[i].resource) == NULL)
        b.changed_all = 1;
    store_audit_free(audit, n_audit);
  }
  int rc = 0;
  if (b.changed_all) {
    rc = store_list(b.txn, &q, &rows, &n, err);
    if (rc == 0 && (w->ls = calloc(n ? n : 1, sizeof(*w->ls))) == NULL)
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    /* Rows come in name order, and so do the world's listeners. */
    for (size_t i = 0; rc == 0 && !b.restart && i < n; i++) {
      struct tp_err why = {0};
      Tlsplane__V1__Listener *l =
          (Tlsplane__V1__Listener *)api_decode_row(&api_kind_listener, &rows[i], &why);
      rc = listener_add(&b, rows[i].name, l, &why, err);
    }
  } else {
    rc = world_listeners_since(&b, err);
  }
  store_rows_free(rows, n);
  *restart = b.restart;
  if (rc == 0 && !b.restart && world_agents(&b, err) != 0)
    rc = -1;
  if (rc == 0 && !b.restart && world_challenges(&b) != 0)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  store_rollback(b.txn);
  memo_free(&b.changed);
  /* Entries and failures resolved to pointers once the set is complete. */
  for (size_t i = 0, f = 0; rc == 0 && i < w->n_ls; i++) {
    w->ls[i].entry = rset_listener_get(w->set, w->ls[i].name);
    if (f < w->n_failures && strcmp(w->failures[f].listener, w->ls[i].name) == 0)
      w->ls[i].failure = &w->failures[f++];
  }
  if (rc == 0 && (world_index(w) != 0 || world_acme_entries(w) != 0))
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (rc != 0 || b.restart) {
    fleet_world_unref(w);
    return rc != 0 ? -1 : 0;
  }
  *out = w;
  return 0;
}

/* Attempts at most this many times: each new one gets past one more row
 * that fails its integrity check. */
#define BUILD_ATTEMPTS 16

int fleet_world_build(struct store *store, const struct fleet_world *prev, struct fleet_world **out,
                      struct tp_err *err) {
  struct memo_tab bad = {0};
  int rc = -1;
  for (int attempt = 0; attempt < BUILD_ATTEMPTS; attempt++) {
    int restart = 0;
    *out = NULL;
    rc = world_try(store, prev, &bad, &restart, out, err);
    if (rc != 0 || !restart)
      break;
    rc = tp_err_set(err, GRPC_STATUS_DATA_LOSS, "more than %d damaged rows", BUILD_ATTEMPTS - 1);
  }
  memo_free(&bad);
  return rc;
}

void fleet_world_ref(struct fleet_world *w) {
  atomic_fetch_add(&w->refs, 1);
}

void fleet_world_unref(struct fleet_world *w) {
  if (w == NULL || atomic_fetch_sub(&w->refs, 1) != 1)
    return;
  for (size_t i = 0; i < w->n_ls; i++) {
    free(w->ls[i].name);
    if (w->ls[i].failed_row != NULL)
      protobuf_c_message_free_unpacked(&w->ls[i].failed_row->base, NULL);
    if (w->ls[i].acme_entry != NULL)
      protobuf_c_message_free_unpacked(&w->ls[i].acme_entry->base, NULL);
  }
  free(w->ls);
  for (size_t i = 0; i < w->n_chals; i++)
    free(w->chals[i].server_name);
  free(w->chals);
  for (size_t i = 0; i < w->n_failures; i++) {
    free((char *)w->failures[i].listener);
    free((char *)w->failures[i].reason);
  }
  free(w->failures);
  for (size_t i = 0; i < w->n_pairs; i++) {
    free(w->pairs[i].pair);
    free(w->pairs[i].idx);
  }
  free(w->pairs);
  free(w->everyone);
  memo_free(&w->contexts);
  memo_free(&w->rings);
  for (size_t i = 0; i < w->n_agents; i++)
    wagent_clear(&w->agents[i]);
  free(w->agents);
  rset_free(w->set);
  free(w);
}

int64_t fleet_world_revision(const struct fleet_world *w) {
  return w->revision;
}

const struct fleet_failure *fleet_world_failures(const struct fleet_world *w, size_t *n) {
  *n = w->n_failures;
  return w->failures;
}

size_t fleet_world_listeners(const struct fleet_world *w) {
  return w->n_ls;
}

size_t fleet_world_resources(const struct fleet_world *w) {
  return rset_resource_count(w->set);
}

/* --- views --- */

int fleet_view_new(struct fleet_view **out) {
  *out = calloc(1, sizeof(**out));
  if (*out == NULL)
    return -ENOMEM;
  (*out)->protocol = FLEET_PROTOCOL_LATEST;
  return 0;
}

void fleet_view_set_protocol(struct fleet_view *v, int protocol) {
  v->protocol = protocol;
}

static void view_listeners_free(struct vlistener *ls, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(ls[i].name);
  free(ls);
}

void fleet_view_free(struct fleet_view *v) {
  if (v == NULL)
    return;
  view_listeners_free(v->ls, v->n_ls);
  free(v->res);
  free(v);
}

static int hash_cmp(const void *a, const void *b) {
  return memcmp(a, b, RSET_HASH_LEN);
}

static int vlistener_cmp(const void *a, const void *b) {
  return strcmp(((const struct vlistener *)a)->name, ((const struct vlistener *)b)->name);
}

/* Sorts hashes and drops repeats; the new count. */
static size_t hashes_unique(uint8_t (*h)[RSET_HASH_LEN], size_t n) {
  if (n <= 1)
    return n;
  qsort(h, n, RSET_HASH_LEN, hash_cmp);
  size_t out = 1;
  for (size_t i = 1; i < n; i++)
    if (memcmp(h[i], h[out - 1], RSET_HASH_LEN) != 0)
      memcpy(h[out++], h[i], RSET_HASH_LEN);
  return out;
}

int fleet_view_from_hello(struct fleet_view *v, const Tlsplane__V1__AgentHello *hello,
                          struct tp_err *err) {
  if (hello->n_resources > VIEW_MAX_ENTRIES || hello->n_listeners > VIEW_MAX_ENTRIES)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "hello: reports more than %d resources or listeners", VIEW_MAX_ENTRIES);
  for (size_t i = 0; i < hello->n_resources; i++)
    if (hello->resources[i].len != RSET_HASH_LEN)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "hello.resources[%zu]: %zu bytes, not a %d-byte hash", i,
                        hello->resources[i].len, RSET_HASH_LEN);
  for (size_t i = 0; i < hello->n_listeners; i++)
    if (hello->listeners[i]->hash.len != RSET_HASH_LEN ||
        api_name_check(&api_kind_listener, hello->listeners[i]->listener, "hello.listeners", err) !=
            0)
      return err->status
                 ? -1
                 : tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                              "hello.listeners[%zu].hash: not a %d-byte hash", i, RSET_HASH_LEN);
  size_t nr = hello->n_resources, nl = hello->n_listeners;
  uint8_t(*res)[RSET_HASH_LEN] = malloc((nr ? nr : 1) * RSET_HASH_LEN);
  struct vlistener *ls = calloc(nl ? nl : 1, sizeof(*ls));
  if (res == NULL || ls == NULL) {
    free(res);
    free(ls);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  for (size_t i = 0; i < nr; i++)
    memcpy(res[i], hello->resources[i].data, RSET_HASH_LEN);
  for (size_t i = 0; i < nl; i++) {
    if ((ls[i].name = strdup(hello->listeners[i]->listener)) == NULL) {
      view_listeners_free(ls, i);
      free(res);
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    }
    memcpy(ls[i].hash, hello->listeners[i]->hash.data, RSET_HASH_LEN);
  }
  if (nl > 1)
    qsort(ls, nl, sizeof(*ls), vlistener_cmp);
  size_t kept = 0; /* a name reported twice: the first */
  for (size_t i = 0; i < nl; i++) {
    if (kept > 0 && strcmp(ls[kept - 1].name, ls[i].name) == 0) {
      free(ls[i].name);
      continue;
    }
    ls[kept++] = ls[i];
  }
  view_listeners_free(v->ls, v->n_ls);
  free(v->res);
  v->ls = ls;
  v->n_ls = kept;
  v->res = res;
  v->n_res = hashes_unique(res, nr);
  v->synced = 0;
  return 0;
}

size_t fleet_view_listeners(const struct fleet_view *v) {
  return v->n_ls;
}

size_t fleet_view_resources(const struct fleet_view *v) {
  return v->n_res;
}

size_t fleet_view_bytes(const struct fleet_view *v) {
  size_t n = sizeof(*v) + v->n_res * RSET_HASH_LEN + v->n_ls * sizeof(*v->ls);
  for (size_t i = 0; i < v->n_ls; i++)
    n += strlen(v->ls[i].name) + 1;
  return n;
}

/* --- deltas --- */

static int idx_cmp(const void *a, const void *b) {
  size_t x = *(const size_t *)a, y = *(const size_t *)b;
  return x < y ? -1 : x > y;
}

/* The world's listeners for these labels, as ascending indices into
 * w->ls (name order). */
static int select_listeners(const struct fleet_world *w, const struct snapshot_label *labels,
                            size_t n_labels, size_t **out, size_t *n_out) {
  size_t *v = NULL, n = 0, cap = 0;
  for (size_t i = 0; i < w->n_everyone; i++)
    if (idx_push(&v, &n, &cap, w->everyone[i]) != 0)
      goto oom;
  for (size_t j = 0; j < n_labels; j++) {
    size_t len = strlen(labels[j].key) + strlen(labels[j].value) + 2;
    char stack[256], *pair = len <= sizeof(stack) ? stack : malloc(len);
    if (pair == NULL)
      goto oom;
    memcpy(pair, labels[j].key, strlen(labels[j].key));
    pair[strlen(labels[j].key)] = '=';
    memcpy(pair + strlen(labels[j].key) + 1, labels[j].value, strlen(labels[j].value) + 1);
    const struct pair_index *p = pair_find(w, pair);
    if (pair != stack)
      free(pair);
    for (size_t k = 0; p != NULL && k < p->n; k++)
      if (snapshot_selector_matches(w->ls[p->idx[k]].entry->listener, labels, n_labels) &&
          idx_push(&v, &n, &cap, p->idx[k]) != 0)
        goto oom;
  }
  /* Each listener is indexed under one pair, so each appears once. */
  if (n > 1)
    qsort(v, n, sizeof(*v), idx_cmp);
  *out = v;
  *n_out = n;
  return 0;
oom:
  free(v);
  return -ENOMEM;
}

struct collect {
  uint8_t (*h)[RSET_HASH_LEN];
  size_t n, cap;
};

static int collect_cb(const uint8_t *hash, void *data) {
  struct collect *c = data;
  if (c->n == c->cap) {
    size_t cap = c->cap ? c->cap * 2 : 16;
    uint8_t(*h)[RSET_HASH_LEN] = realloc(c->h, cap * RSET_HASH_LEN);
    if (h == NULL)
      return -ENOMEM;
    c->h = h;
    c->cap = cap;
  }
  memcpy(c->h[c->n++], hash, RSET_HASH_LEN);
  return 0;
}

static int failure_push(const struct fleet_failure ***v, size_t *n, size_t *cap,
                        const struct fleet_failure *f) {
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 4;
    const struct fleet_failure **nv = realloc(*v, c * sizeof(*nv));
    if (nv == NULL)
      return -ENOMEM;
    *v = nv;
    *cap = c;
  }
  (*v)[(*n)++] = f;
  return 0;
}

/* The message carrying d (or snap), packed. */
static int message_pack(Tlsplane__V1__SnapshotDelta *d, Tlsplane__V1__Snapshot *snap, uint8_t **out,
                        size_t *len) {
  Tlsplane__V1__ServerMessage msg = TLSPLANE__V1__SERVER_MESSAGE__INIT;
  if (d != NULL) {
    msg.message_case = TLSPLANE__V1__SERVER_MESSAGE__MESSAGE_DELTA;
    msg.delta = d;
  } else {
    msg.message_case = TLSPLANE__V1__SERVER_MESSAGE__MESSAGE_SNAPSHOT;
    msg.snapshot = snap;
  }
  return pb_pack(&msg.base, out, len);
}

int fleet_delta(const struct fleet_world *w, struct fleet_view *v,
                const struct snapshot_label *labels, size_t n_labels, uint8_t **out, size_t *len,
                struct fleet_counts *counts, const struct fleet_failure ***failures,
                size_t *n_failures, struct tp_err *err) {
  if (counts != NULL)
    memset(counts, 0, sizeof(*counts));
  *out = NULL;
  *len = 0;
  *failures = NULL;
  *n_failures = 0;
  size_t *sel = NULL, n_sel = 0, cap_fail = 0;
  if (select_listeners(w, labels, n_labels, &sel, &n_sel) != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");

  Tlsplane__V1__SnapshotDelta d = TLSPLANE__V1__SNAPSHOT_DELTA__INIT;
  d.revision = w->revision;
  struct vlistener *nl = calloc(n_sel + v->n_ls + 1, sizeof(*nl)); /* the view after */
  d.listeners = calloc(n_sel + 1, sizeof(*d.listeners));
  d.removed_listeners = calloc(v->n_ls + 1, sizeof(*d.removed_listeners));
  struct collect want = {0};
  size_t n_nl = 0;
  int hold = 0; /* a kept listener uses resources the world cannot name */
  int rc = nl && d.listeners && d.removed_listeners
               ? 0
               : tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");

  /* Listeners: a merge of the selection and the view, both in name order. */
  size_t i = 0, j = 0;
  while (rc == 0 && (i < n_sel || j < v->n_ls)) {
    const struct wlistener *wl = i < n_sel ? &w->ls[sel[i]] : NULL;
    const struct vlistener *vl = j < v->n_ls ? &v->ls[j] : NULL;
    int c = wl == NULL ? 1 : vl == NULL ? -1 : strcmp(wl->name, vl->name);
    if (c > 0) { /* held, no longer selected */
      const struct wlistener *failed = world_find(w, vl->name);
      if (failed != NULL && failed->entry == NULL) {
        /* Failed with nothing to carry: the agent keeps it. */
        nl[n_nl].name = vl->name;
        memcpy(nl[n_nl++].hash, vl->hash, RSET_HASH_LEN);
        hold = 1;
        if (failure_push(failures, n_failures, &cap_fail, failed->failure) != 0)
          rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      } else {
        d.removed_listeners[d.n_removed_listeners++] = vl->name;
      }
      j++;
      continue;
    }
    if (wl->protocol > v->protocol) {
      /* Too new for the agent: it keeps what it holds of it, if anything
       * (invariant 8), and the rollout says why. */
      if (failure_push(failures, n_failures, &cap_fail, &wl->too_old) != 0)
        rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      if (c == 0) {
        nl[n_nl].name = vl->name;
        memcpy(nl[n_nl++].hash, vl->hash, RSET_HASH_LEN);
        hold = 1;
      }
      i++;
      j += c == 0;
      continue;
    }
    const Tlsplane__V1__ListenerEntry *e =
        wl->acme_entry != NULL && v->protocol >= FLEET_PROTOCOL_ACME ? wl->acme_entry : wl->entry;
    if (wl->failure != NULL && failure_push(failures, n_failures, &cap_fail, wl->failure) != 0)
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    if (c == 0 && memcmp(vl->hash, e->hash.data, RSET_HASH_LEN) == 0)
      ; /* held as it is */
    else
      d.listeners[d.n_listeners++] = (Tlsplane__V1__ListenerEntry *)e;
    nl[n_nl].name = wl->name;
    memcpy(nl[n_nl++].hash, e->hash.data, RSET_HASH_LEN);
    struct tp_err why = {0};
    if (rc == 0 && rset_listener_uses(w->set, e, collect_cb, &want, &why) != 0)
      rc = tp_err_set(err, GRPC_STATUS_INTERNAL, "%s", why.msg[0] ? why.msg : "out of memory");
    i++;
    j += c == 0;
  }
  free(sel);

  /* The first delta goes even when empty: it tells the agent the revision
   * it serves, which its ack confirms. */
  int changed = rc == 0 && (d.n_listeners > 0 || d.n_removed_listeners > 0 || !v->synced);
  uint8_t(*res)[RSET_HASH_LEN] = NULL;
  size_t n_res = 0;
  if (changed) {
    /* Resources: what the listeners after use, against what the view has. */
    size_t n_want = hashes_unique(want.h, want.n);
    res = malloc((n_want + (hold ? v->n_res : 0) + 1) * RSET_HASH_LEN);
    d.resources = calloc(n_want + 1, sizeof(*d.resources));
    d.removed_resources = calloc(v->n_res + 1, sizeof(*d.removed_resources));
    if (res == NULL || d.resources == NULL || d.removed_resources == NULL)
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    size_t a = 0, b = 0;
    while (rc == 0 && (a < n_want || b < v->n_res)) {
      int c = a == n_want ? 1 : b == v->n_res ? -1 : memcmp(want.h[a], v->res[b], RSET_HASH_LEN);
      if (c < 0) { /* wanted, not held */
        d.resources[d.n_resources++] =
            (Tlsplane__V1__Resource *)rset_resource_get(w->set, want.h[a]);
        memcpy(res[n_res++], want.h[a++], RSET_HASH_LEN);
      } else if (c > 0) { /* held, not wanted */
        if (hold) {
          memcpy(res[n_res++], v->res[b], RSET_HASH_LEN);
        } else {
          d.removed_resources[d.n_removed_resources].data = v->res[b];
          d.removed_resources[d.n_removed_resources++].len = RSET_HASH_LEN;
        }
        b++;
      } else {
        memcpy(res[n_res++], want.h[a++], RSET_HASH_LEN);
        b++;
      }
    }
    if (rc == 0 && message_pack(&d, NULL, out, len) != 0)
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    if (rc == 0 && counts != NULL)
      *counts = (struct fleet_counts){.resources = d.n_resources,
                                      .listeners = d.n_listeners,
                                      .removed_resources = d.n_removed_resources,
                                      .removed_listeners = d.n_removed_listeners};
  }
  free(want.h);
  free(d.listeners);
  free(d.removed_listeners);
  free(d.resources);
  free(d.removed_resources);
  if (rc == 0 && changed) {
    /* The view becomes what the agent holds once it applied the delta. */
    for (size_t k = 0; k < n_nl; k++)
      if ((nl[k].name = strdup(nl[k].name)) == NULL) {
        view_listeners_free(nl, k);
        nl = NULL;
        free(*out);
        *out = NULL;
        *len = 0;
        rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        break;
      }
    if (rc == 0) {
      view_listeners_free(v->ls, v->n_ls);
      free(v->res);
      v->ls = nl;
      v->n_ls = n_nl;
      v->res = res;
      v->n_res = n_res;
      v->synced = 1;
      return 0;
    }
  }
  free(nl);
  free(res);
  if (rc != 0) {
    free(*failures);
    *failures = NULL;
    *n_failures = 0;
  }
  return rc;
}

int fleet_snapshot(const struct fleet_world *w, const struct snapshot_label *labels,
                   size_t n_labels, uint8_t **out, size_t *len, uint8_t hash[RSET_HASH_LEN],
                   const struct fleet_failure ***failures, size_t *n_failures, struct tp_err *err) {
  *failures = NULL;
  *n_failures = 0;
  size_t *sel = NULL, n_sel = 0, cap_fail = 0;
  if (select_listeners(w, labels, n_labels, &sel, &n_sel) != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  /* A listener that failed with nothing to carry may be one the agent
   * serves: a whole snapshot without it would remove it, so the agent is
   * sent nothing until it builds. */
  for (size_t i = 0; i < w->n_ls; i++) {
    const struct wlistener *wl = &w->ls[i];
    if (wl->entry != NULL || wl->failure == NULL)
      continue;
    if (wl->failed_row != NULL && !snapshot_selector_matches(wl->failed_row, labels, n_labels))
      continue;
    if (failure_push(failures, n_failures, &cap_fail, wl->failure) != 0) {
      free(sel);
      free(*failures);
      *failures = NULL;
      *n_failures = 0;
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    }
  }
  /* A listener too new for a protocol 1 agent is one a whole snapshot
   * could neither carry nor leave out (the agent may hold it): likewise. */
  for (size_t i = 0; i < n_sel; i++)
    if (w->ls[sel[i]].protocol > 1 &&
        failure_push(failures, n_failures, &cap_fail, &w->ls[sel[i]].too_old) != 0) {
      free(sel);
      free(*failures);
      *failures = NULL;
      *n_failures = 0;
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    }
  if (*n_failures > 0) {
    free(sel);
    *out = NULL;
    *len = 0;
    return 0;
  }
  Tlsplane__V1__Snapshot snap = TLSPLANE__V1__SNAPSHOT__INIT;
  snap.listeners = calloc(n_sel + 1, sizeof(*snap.listeners));
  int rc = snap.listeners ? 0 : tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  for (size_t i = 0; rc == 0 && i < n_sel; i++) {
    const struct wlistener *wl = &w->ls[sel[i]];
    if (wl->failure != NULL && failure_push(failures, n_failures, &cap_fail, wl->failure) != 0)
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    if (rc == 0 && rset_resolve(w->set, wl->entry, &snap.listeners[snap.n_listeners], err) == 0)
      snap.n_listeners++;
    else
      rc = -1;
  }
  free(sel);
  uint8_t *bare = NULL;
  size_t bare_len = 0;
  /* What an agent serves, apart from the revision number: unchanged
   * content is not sent again. */
  if (rc == 0 && pb_pack(&snap.base, &bare, &bare_len) != 0)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (rc == 0) {
    EVP_Digest(bare, bare_len, hash, NULL, EVP_sha256(), NULL);
    OPENSSL_cleanse(bare, bare_len);
    snap.revision = w->revision;
    if (message_pack(NULL, &snap, out, len) != 0)
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  free(bare);
  for (size_t i = 0; i < snap.n_listeners; i++)
    rset_resolved_free(snap.listeners[i]);
  free(snap.listeners);
  if (rc != 0) {
    free(*failures);
    *failures = NULL;
    *n_failures = 0;
  }
  return rc;
}
