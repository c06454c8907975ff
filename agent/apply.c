/* Applying a configuration in two phases (see apply.h). */
#include "apply.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "pb.h"
#include "rset.h"

const char *apply_action_name(enum apply_action a) {
  switch (a) {
  case APPLY_KEEP:
    return "keep";
  case APPLY_NEW:
    return "new";
  case APPLY_CHANGE:
    return "change";
  case APPLY_DROP:
    return "drop";
  case APPLY_FAILED:
    return "failed";
  }
  return "?";
}

const char *agent_apply_result_name(enum agent_apply_result r) {
  static const char *const names[AGENT_APPLY_RESULT_COUNT] = {"ack", "nack", "error"};
  return (unsigned)r < AGENT_APPLY_RESULT_COUNT ? names[r] : "?";
}

/* One listener of the set on its way. */
struct plan {
  const Tlsplane__V1__ListenerEntry *e; /* the set's */
  struct listener *l;
  struct listener_version *nv; /* NEW, CHANGE: the version built (reference held) */
  enum apply_action action;
  int same_address; /* CHANGE: keeps its listening sockets */
  int *fds;         /* NEW, CHANGE to a new address: one bound socket per worker */
  struct apply_result *res;
};

/* The registry by name for one apply: open addressing over the list,
 * so that finding 50,000 listeners is not 50,000 walks of the list. */
struct index {
  struct listener **slots;
  size_t mask;
};

static uint64_t name_hash(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *s; s++)
    h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

static int index_build(struct index *x, struct listener *list, size_t n) {
  size_t cap = 16;
  while (cap < 2 * n + 2)
    cap *= 2;
  if ((x->slots = calloc(cap, sizeof(*x->slots))) == NULL)
    return -1;
  x->mask = cap - 1;
  for (struct listener *l = list; l != NULL; l = l->next) {
    size_t i = (size_t)name_hash(l->name) & x->mask;
    while (x->slots[i] != NULL)
      i = (i + 1) & x->mask;
    x->slots[i] = l;
  }
  return 0;
}

static struct listener *index_find(const struct index *x, const char *name) {
  for (size_t i = (size_t)name_hash(name) & x->mask; x->slots[i] != NULL; i = (i + 1) & x->mask)
    if (strcmp(x->slots[i]->name, name) == 0)
      return x->slots[i];
  return NULL;
}

/* Forgets dropped listeners whose last connection has ended. */
static void registry_prune(struct agent *a) {
  struct listener **p = &a->listeners;
  while (*p != NULL) {
    struct listener *l = *p;
    if (l->dropped && l->applied == NULL && atomic_load(&l->refs) == 1) {
      *p = l->next;
      listener_unref(l);
    } else {
      p = &l->next;
    }
  }
}

static void plan_fail(struct plan *p, const char *reason) {
  p->action = APPLY_FAILED;
  p->res->ok = 0;
  free(p->res->reason_owned);
  p->res->reason_owned = strdup(reason);
  p->res->reason = p->res->reason_owned != NULL ? p->res->reason_owned : "out of memory";
  listener_version_unref(p->nv);
  p->nv = NULL;
}

/* Phase 1 for one listener: KEEP by entry hash, or a new version built
 * beside the running one from the resolved entry. p->l is set. */
static void plan_build(struct agent *a, const struct rset *set, struct plan *p) {
  const Tlsplane__V1__ListenerEntry *e = p->e;
  struct listener *l = p->l;
  p->res->ok = 1;
  p->res->listener = l->name;
  p->res->reason = "";
  if (l->applied != NULL && e->hash.len == RSET_HASH_LEN &&
      memcmp(l->applied->entry_hash, e->hash.data, RSET_HASH_LEN) == 0) {
    p->action = APPLY_KEEP;
    return;
  }
  struct tp_err err = {0};
  Tlsplane__V1__ResolvedListener *rl = NULL;
  if (rset_resolve(set, e, &rl, &err) != 0 ||
      listener_version_build(l, rl, e, a->ctxcache, &p->nv, &err) != 0) {
    rset_resolved_free(rl);
    plan_fail(p, err.msg);
    return;
  }
  rset_resolved_free(rl);
  p->action = l->applied != NULL ? APPLY_CHANGE : APPLY_NEW;
  p->same_address = l->applied != NULL && strcmp(l->applied->address, p->nv->address) == 0;
  if (p->same_address)
    p->nv->bind_addr = l->applied->bind_addr; /* the bound port, for port 0 */
}

static int bind_port(const struct listener_version *v) {
  return v->bind_addr.sa.sa_family == AF_INET6 ? v->bind_addr.in6.sin6_port
                                               : v->bind_addr.in4.sin_port;
}

/* Whether x and y would listen on the same address. Port 0 (any free
 * port; a version not yet opened) never conflicts; otherwise the same
 * text, or different spellings of one address ("localhost:443",
 * "127.0.0.1:443"). */
static int same_bind(const struct listener_version *x, const struct listener_version *y) {
  if (bind_port(x) == 0 || bind_port(y) == 0)
    return 0;
  return strcmp(x->address, y->address) == 0 || listener_addr_equal(&x->bind_addr, &y->bind_addr);
}

/* Who listens on a port, by port (network order; port 0 never conflicts
 * and is not indexed): finding another listener on an address is a look
 * at one bucket, not a walk of every listener (50,000 new listeners would
 * otherwise take 2.5 billion comparisons). Buckets are ports modulo a
 * power of two sized to the entries (an apply that changes one of a few
 * listeners clears a few words, not a table of every port); a bucket may
 * hold other ports, which same_bind tells apart. Entries are indices,
 * chained through next; SIZE_MAX ends a chain. */
#define PORTS 65536
struct port_index {
  size_t *head; /* mask + 1 */
  size_t *next; /* one per entry */
  size_t mask;
};

static int port_index_init(struct port_index *x, size_t n) {
  size_t buckets = 16;
  while (buckets < 2 * n && buckets < PORTS)
    buckets *= 2;
  x->mask = buckets - 1;
  x->head = malloc(buckets * sizeof(*x->head));
  x->next = malloc((n + 1) * sizeof(*x->next));
  if (x->head == NULL || x->next == NULL)
    return -1;
  memset(x->head, 0xff, buckets * sizeof(*x->head)); /* SIZE_MAX */
  return 0;
}

/* The first entry of port's bucket (SIZE_MAX: none; port 0: none). */
static size_t port_index_first(const struct port_index *x, int port) {
  return port != 0 ? x->head[(size_t)port & x->mask] : SIZE_MAX;
}

static void port_index_add(struct port_index *x, const struct listener_version *v, size_t k) {
  int port = v != NULL ? bind_port(v) : 0;
  if (port == 0)
    return;
  x->next[k] = x->head[(size_t)port & x->mask];
  x->head[(size_t)port & x->mask] = k;
}

static void port_index_free(struct port_index *x) {
  free(x->head);
  free(x->next);
}

/* The addresses checked in phase 1. applied: the plans' served versions
 * (index: plan); fresh: the new versions of the plans checked so far
 * (index: plan); registry: every served version of the registry, plans
 * or not (index: into regs). */
struct addr_check {
  struct port_index applied, fresh, registry;
  const struct listener **regs;
};

/* SO_REUSEPORT would let two listeners of ours share an address and split
 * its connections: the later one is refused instead. What another listener
 * j will serve once applied, as far as is known while checking i: its new
 * version if it comes earlier, else what it serves now. The first such j
 * in name order is named. */
static void plan_check_address(struct plan *plans, struct addr_check *c, size_t i) {
  struct plan *p = &plans[i];
  if (p->nv == NULL || p->same_address) {
    if (p->nv != NULL)
      port_index_add(&c->fresh, p->nv, i);
    return;
  }
  int port = bind_port(p->nv);
  size_t hit = SIZE_MAX;
  for (size_t j = port_index_first(&c->fresh, port); j != SIZE_MAX; j = c->fresh.next[j])
    if (j < hit && plans[j].nv != NULL && same_bind(p->nv, plans[j].nv))
      hit = j;
  for (size_t j = port_index_first(&c->applied, port); j != SIZE_MAX; j = c->applied.next[j])
    if (j != i && j < hit && (j > i || plans[j].nv == NULL) && plans[j].l != NULL &&
        same_bind(p->nv, plans[j].l->applied))
      hit = j;
  if (hit != SIZE_MAX) {
    char reason[512];
    snprintf(reason, sizeof(reason), "address: %s is already used by %s", p->nv->address,
             plans[hit].l->name);
    plan_fail(p, reason);
    return;
  }
  port_index_add(&c->fresh, p->nv, i);
}

static void plan_open_sockets(struct agent *a, struct addr_check *c, struct plan *p) {
  if (p->nv == NULL || p->same_address)
    return;
  struct tp_err err = {0};
  p->fds = calloc((size_t)a->n_workers, sizeof(int));
  if (p->fds == NULL) {
    plan_fail(p, "out of memory");
    return;
  }
  /* The address may be ours already: a listener dropped or moved in this
   * same apply (live ones were refused by plan_check_address). */
  int ours = 0, port = bind_port(p->nv);
  for (size_t k = port_index_first(&c->registry, port); k != SIZE_MAX && !ours;
       k = c->registry.next[k])
    ours = same_bind(c->regs[k]->applied, p->nv);
  if (listener_sockets_open(p->nv, a->n_workers, !ours, p->fds, &err) != 0) {
    free(p->fds);
    p->fds = NULL;
    plan_fail(p, err.msg);
  }
}

static void push_op(struct worker_msg *m, enum worker_op_kind kind, struct listener *l,
                    struct listener_version *v, int fd) {
  struct worker_op *op = &m->ops[m->n_ops++];
  op->kind = kind;
  op->listener = l;
  op->version = v;
  if (v != NULL)
    listener_version_ref(v);
  op->fd = fd;
}

static void log_served(const struct plan *p, int64_t revision) {
  char bound[80];
  listener_addr_format(&p->nv->bind_addr, bound, sizeof(bound));
  size_t n = tlsconf_listener_contexts(p->nv->tls), reused = tlsconf_listener_reused(p->nv->tls);
  log_info("agent",
           "listener=%s %s: serving on %s (%s), upstream %s%s%s, revision %lld; %zu of %zu "
           "contexts built (the others shared)",
           p->l->name, p->action == APPLY_NEW ? "new" : "changed", bound, p->nv->address,
           p->nv->upstream, tlsconf_listener_upstream_tls(p->nv->tls) ? " over TLS" : "",
           p->nv->proxy_protocol ? " with PROXY v2" : "", (long long)revision, n - reused, n);
}

static int entry_cmp(const void *x, const void *y) {
  const Tlsplane__V1__ListenerEntry *a = *(const Tlsplane__V1__ListenerEntry *const *)x,
                                    *b = *(const Tlsplane__V1__ListenerEntry *const *)y;
  return strcmp(a->listener->name, b->listener->name);
}

/* rset_listener_uses' callback: s->dst shares the resource from s->src. */
struct share {
  struct rset *dst;
  const struct rset *src;
};

static int share_cb(const uint8_t *hash, void *data) {
  struct share *s = data;
  int rc = rset_resource_share(s->dst, s->src, hash);
  return rc == -ENOENT ? 0 : rc; /* a leaf the set lacks: the build failed on it */
}

/* Drops from served every resource none of its listeners uses. */
static void served_collect(struct rset *served) {
  struct rset *used;
  if (rset_new(&used) != 0)
    return; /* kept a little longer, nothing worse */
  struct share sh = {.dst = used, .src = served};
  size_t it = 0;
  const Tlsplane__V1__ListenerEntry *e;
  int rc = 0;
  while (rc == 0 && (e = rset_listener_next(served, &it)) != NULL) {
    struct tp_err err = {0};
    rc = rset_listener_uses(served, e, share_cb, &sh, &err);
  }
  size_t n = rset_resource_count(served), k = 0;
  const uint8_t **gone = rc == 0 ? calloc(n + 1, sizeof(*gone)) : NULL;
  const Tlsplane__V1__Resource *r;
  it = 0;
  while (gone != NULL && (r = rset_resource_next(served, &it)) != NULL)
    if (rset_resource_get(used, r->hash.data) == NULL)
      gone[k++] = r->hash.data;
  /* Removed after the walk (a set must not change while iterated); used
   * still holds a reference to none of them, so each hash stays valid
   * until its own removal. */
  uint8_t hash[RSET_HASH_LEN];
  for (size_t i = 0; i < k; i++) {
    memcpy(hash, gone[i], RSET_HASH_LEN);
    rset_resource_remove(served, hash);
  }
  free(gone);
  rset_free(used);
}

/* After the commit: a->served follows what is served now. An applied
 * listener's entry (a copy) and resources (shared) come from set; a
 * listener not applied keeps its entry; a dropped one goes. Returns -1
 * when out of memory (a->served may then lack a listener: the cache file
 * and the hello then report less than is served, and the server sends it
 * again). */
static int served_update(struct agent *a, const struct rset *set, const struct plan *plans,
                         size_t n, const struct apply_report *report) {
  if (a->served == NULL && rset_new(&a->served) != 0)
    return -1;
  int changed = 0, rc = 0;
  struct share sh = {.dst = a->served, .src = set};
  for (size_t i = 0; i < n; i++) {
    const struct plan *p = &plans[i];
    if (p->action != APPLY_NEW && p->action != APPLY_CHANGE)
      continue;
    changed = 1;
    struct tp_err err = {0};
    Tlsplane__V1__ListenerEntry *copy = NULL;
    if (rset_listener_uses(set, p->e, share_cb, &sh, &err) != 0 ||
        (copy = (Tlsplane__V1__ListenerEntry *)pb_clone(&p->e->base)) == NULL ||
        rset_listener_put(a->served, copy, 0, &err) != 0) { /* put frees copy on failure */
      rset_listener_remove(a->served, p->l->name); /* its old entry is not what is served */
      rc = -1;
    }
  }
  for (size_t i = report->n_listeners; i < report->n; i++) {
    if (report->results[i].action == APPLY_DROP &&
        rset_listener_remove(a->served, report->results[i].listener) == 0)
      changed = 1;
  }
  if (changed)
    served_collect(a->served);
  return rc;
}

static int str_cmp(const void *x, const void *y) {
  return strcmp(*(const char *const *)x, *(const char *const *)y);
}

int agent_set_from_snapshot(const Tlsplane__V1__Snapshot *snap, struct rset **out,
                            struct tp_err *err) {
  *out = NULL;
  for (size_t i = 0; i < snap->n_listeners; i++) {
    const Tlsplane__V1__Listener *li = snap->listeners[i]->listener;
    if (li == NULL || li->name == NULL || li->name[0] == '\0')
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "listeners[%zu].listener.name: required",
                        i);
  }
  /* Duplicates, by sorting the names. */
  const char **v = calloc(snap->n_listeners + 1, sizeof(*v));
  if (v == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  for (size_t i = 0; i < snap->n_listeners; i++)
    v[i] = snap->listeners[i]->listener->name;
  qsort(v, snap->n_listeners, sizeof(*v), str_cmp);
  for (size_t i = 1; i < snap->n_listeners; i++) {
    if (strcmp(v[i - 1], v[i]) == 0) {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                 "listener.name: %s appears more than once in the snapshot", v[i]);
      free(v);
      return -1;
    }
  }
  free(v);
  return rset_from_snapshot(snap, out, err);
}

int agent_apply(struct agent *a, const struct rset *set, int64_t revision,
                struct apply_report *report) {
  uint64_t started = uv_hrtime();
  memset(report, 0, sizeof(*report));
  report->revision = revision;
  registry_prune(a);
  size_t n = rset_listener_count(set), n_registry = 0;
  struct listener *tail = NULL;
  for (struct listener *l = a->listeners; l != NULL; l = l->next) {
    n_registry++;
    l->in_snapshot = 0;
    tail = l;
  }
  size_t n_ops = n + n_registry;
  struct plan *plans = calloc(n + 1, sizeof(*plans));
  const Tlsplane__V1__ListenerEntry **entries = calloc(n + 1, sizeof(*entries));
  struct worker_msg **msgs = calloc((size_t)a->n_workers, sizeof(*msgs));
  struct index index = {0};
  report->results = calloc(n_ops + 1, sizeof(*report->results));
  int oom = plans == NULL || entries == NULL || msgs == NULL || report->results == NULL ||
            index_build(&index, a->listeners, n_registry) != 0;
  for (int k = 0; !oom && k < a->n_workers; k++) {
    msgs[k] = calloc(1, sizeof(**msgs));
    if (msgs[k] == NULL || (msgs[k]->ops = calloc(n_ops + 1, sizeof(struct worker_op))) == NULL)
      oom = 1;
  }
  if (oom) {
    for (int k = 0; msgs != NULL && k < a->n_workers; k++)
      worker_msg_free(msgs[k]);
    free(msgs);
    free(plans);
    free(entries);
    free(index.slots);
    free(report->results);
    report->results = NULL;
    struct tp_err err = {0};
    tp_err_set(&err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory applying revision %lld",
               (long long)revision);
    agent_apply_error(a, &err);
    return -1;
  }

  /* Phase 1: build beside what runs; nothing running changes yet. In
   * name order: which of two listeners on one address is refused, and the
   * order of /metrics, do not depend on the set's hashing. */
  size_t it = 0;
  for (size_t i = 0; i < n; i++)
    entries[i] = rset_listener_next(set, &it);
  qsort(entries, n, sizeof(*entries), entry_cmp);
  for (size_t i = 0; i < n; i++) {
    struct plan *p = &plans[i];
    p->e = entries[i];
    p->res = &report->results[i];
    struct listener *l = index_find(&index, p->e->listener->name);
    if (l == NULL) {
      if ((l = listener_new(p->e->listener->name)) == NULL) {
        p->res->listener = p->e->listener->name;
        plan_fail(p, "out of memory");
        continue;
      }
      if (tail == NULL)
        a->listeners = l;
      else
        tail->next = l;
      tail = l;
    }
    p->l = l;
    l->dropped = 0;
    l->in_snapshot = 1;
    plan_build(a, set, p);
  }
  free(index.slots);
  struct addr_check check = {0};
  size_t n_regs = 0;
  for (const struct listener *l = a->listeners; l != NULL; l = l->next)
    n_regs++;
  check.regs = calloc(n_regs + 1, sizeof(*check.regs));
  if (check.regs == NULL || port_index_init(&check.applied, n) != 0 ||
      port_index_init(&check.fresh, n) != 0 || port_index_init(&check.registry, n_regs) != 0) {
    for (size_t i = 0; i < n; i++)
      if (plans[i].nv != NULL)
        plan_fail(&plans[i], "out of memory");
  } else {
    for (size_t i = n; i-- > 0;) /* chains in ascending order */
      if (plans[i].l != NULL)
        port_index_add(&check.applied, plans[i].l->applied, i);
    size_t k = 0;
    for (const struct listener *l = a->listeners; l != NULL; l = l->next, k++) {
      check.regs[k] = l;
      port_index_add(&check.registry, l->applied, k);
    }
    for (size_t i = 0; i < n; i++)
      plan_check_address(plans, &check, i);
    for (size_t i = 0; i < n; i++)
      plan_open_sockets(a, &check, &plans[i]);
  }
  port_index_free(&check.applied);
  port_index_free(&check.fresh);
  port_index_free(&check.registry);
  free(check.regs);

  /* Phase 2: commit. Every CLOSE before any OPEN. */
  report->n = report->n_listeners = n;
  for (struct listener *l = a->listeners; l != NULL; l = l->next) {
    if (l->in_snapshot || l->dropped)
      continue;
    if (l->applied != NULL) {
      for (int k = 0; k < a->n_workers; k++)
        push_op(msgs[k], WORKER_OP_CLOSE, l, NULL, -1);
      listener_version_unref(l->applied);
      l->applied = NULL;
      log_info("agent", "listener=%s dropped: no longer accepting; %lld connections drain", l->name,
               stats_get(&l->stats.connections));
    }
    l->dropped = 1;
    l->last_error[0] = '\0';
    struct apply_result *r = &report->results[report->n++];
    r->listener = l->name;
    r->reason = "";
    r->action = APPLY_DROP;
    r->ok = 1;
  }
  for (size_t i = 0; i < n; i++) {
    struct plan *p = &plans[i];
    p->res->action = p->action;
    struct listener *l = p->l;
    switch (p->action) {
    case APPLY_FAILED:
      report->n_failed++;
      if (l != NULL)
        snprintf(l->last_error, sizeof(l->last_error), "%s", p->res->reason);
      log_error("agent", "listener=%s not applied: %s%s", p->res->listener, p->res->reason,
                l != NULL && l->applied != NULL ? " (keeps serving its previous version)" : "");
      continue;
    case APPLY_KEEP:
      break;
    case APPLY_NEW:
    case APPLY_CHANGE:
      for (int k = 0; k < a->n_workers; k++) {
        if (p->same_address) {
          push_op(msgs[k], WORKER_OP_SWAP, l, p->nv, -1);
        } else {
          push_op(msgs[k], WORKER_OP_OPEN, l, p->nv, p->fds[k]);
          p->fds[k] = -1; /* the message owns it */
        }
      }
      log_served(p, revision);
      listener_version_unref(l->applied);
      l->applied = p->nv; /* the build's reference */
      l->served_since = revision;
      p->nv = NULL;
      break;
    case APPLY_DROP:
      break;
    }
    l->applied_revision = revision;
    l->last_error[0] = '\0';
  }
  /* Posted even without ops, so that every worker reports the revision it
   * has in place (tlsplane_worker_config_revision). */
  for (int k = 0; k < a->n_workers; k++) {
    msgs[k]->kind = WORKER_MSG_APPLY;
    msgs[k]->revision = revision;
    worker_post(a->workers[k], msgs[k]);
  }
  if (served_update(a, set, plans, n, report) != 0)
    log_error("agent", "revision %lld: out of memory recording what is served",
              (long long)revision);
  for (size_t i = 0; i < n; i++) {
    listener_version_unref(plans[i].nv);
    free(plans[i].fds);
  }
  free(plans);
  free(entries);
  free(msgs);

  /* The listening sockets now open, for the descriptor budget (sockets of
   * a listener that moved close a moment later: the reserve covers that). */
  long listening = 0;
  for (const struct listener *l = a->listeners; l != NULL; l = l->next)
    if (l->applied != NULL)
      listening += a->n_workers;
  atomic_store(&a->budget.listening, listening);

  a->revision = revision;
  a->apply_total[report->n_failed == 0 ? AGENT_APPLY_ACK : AGENT_APPLY_NACK]++;
  report->apply_ms = (double)(uv_hrtime() - started) / 1e6;
  return report->n_failed == 0 ? 0 : -1;
}

void agent_apply_error(struct agent *a, const struct tp_err *err) {
  a->apply_total[AGENT_APPLY_ERROR]++;
  log_error("agent", "config not applied, nothing changed: %s", err->msg);
}

void apply_report_free(struct apply_report *r) {
  for (size_t i = 0; r->results != NULL && i < r->n; i++)
    free(r->results[i].reason_owned);
  free(r->results);
  memset(r, 0, sizeof(*r));
}

void agent_listeners_free(struct agent *a) {
  rset_free(a->served);
  a->served = NULL;
  while (a->listeners != NULL) {
    struct listener *l = a->listeners;
    a->listeners = l->next;
    listener_version_unref(l->applied);
    l->applied = NULL;
    listener_unref(l);
  }
}
