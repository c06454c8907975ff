/* Applying a snapshot in two phases (see apply.h). */
#include "apply.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "pb.h"

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

/* One listener of the snapshot on its way. */
struct plan {
  const Tlsplane__V1__ResolvedListener *rl;
  struct listener *l;          /* NULL when the entry itself is invalid */
  struct listener_version *nv; /* NEW, CHANGE: the version built (reference held) */
  enum apply_action action;
  int same_address; /* CHANGE: keeps its listening sockets */
  int *fds;         /* NEW, CHANGE to a new address: one bound socket per worker */
  struct apply_result *res;
};

static struct listener *registry_find(struct agent *a, const char *name) {
  for (struct listener *l = a->listeners; l != NULL; l = l->next)
    if (strcmp(l->name, name) == 0)
      return l;
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
  snprintf(p->res->reason, sizeof(p->res->reason), "%s", reason);
  listener_version_unref(p->nv);
  p->nv = NULL;
}

/* Phase 1 for one listener: KEEP, or a new version built beside the
 * running one. */
static void plan_build(struct agent *a, struct plan *plans, size_t i) {
  struct plan *p = &plans[i];
  const Tlsplane__V1__Listener *li = p->rl->listener;
  const char *name = li != NULL ? li->name : "";
  p->res->ok = 1;
  if (name[0] == '\0') {
    snprintf(p->res->listener, sizeof(p->res->listener), "listeners[%zu]", i);
    plan_fail(p, "listener.name: required");
    return;
  }
  snprintf(p->res->listener, sizeof(p->res->listener), "%s", name);
  for (size_t j = 0; j < i; j++) {
    if (plans[j].l != NULL && strcmp(plans[j].l->name, name) == 0) {
      plan_fail(p, "listener.name: appears more than once in the snapshot");
      return;
    }
  }
  struct listener *l = registry_find(a, name);
  if (l == NULL) {
    if ((l = listener_new(name)) == NULL) {
      plan_fail(p, "out of memory");
      return;
    }
    struct listener **tail = &a->listeners; /* snapshot order, for /metrics */
    while (*tail != NULL)
      tail = &(*tail)->next;
    *tail = l;
  }
  p->l = l;
  l->dropped = 0;
  l->in_snapshot = 1;

  uint8_t *config;
  size_t config_len;
  if (pb_pack(&p->rl->base, &config, &config_len) != 0) {
    plan_fail(p, "out of memory");
    return;
  }
  if (l->applied != NULL && l->applied->config_len == config_len &&
      memcmp(l->applied->config, config, config_len) == 0) {
    p->action = APPLY_KEEP;
    free(config);
    return;
  }
  struct tp_err err = {0};
  if (listener_version_build(l, p->rl, NULL, a->ctxcache, config, config_len, &p->nv, &err) != 0) {
    free(config);
    plan_fail(p, err.msg);
    return;
  }
  free(config);
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

/* What listener j will serve once applied, as far as is known while
 * checking i: its new version if it is earlier in the snapshot, else what
 * it serves now. */
static const struct listener_version *serving(const struct plan *plans, size_t j, size_t i) {
  const struct plan *q = &plans[j];
  if (q->l == NULL)
    return NULL;
  if (q->nv != NULL)
    return j < i ? q->nv : q->l->applied;
  return q->l->applied;
}

/* SO_REUSEPORT would let two listeners of ours share an address and split
 * its connections: the later one is refused instead. */
static void plan_check_address(struct plan *plans, size_t n, size_t i) {
  struct plan *p = &plans[i];
  if (p->nv == NULL || p->same_address)
    return;
  for (size_t j = 0; j < n; j++) {
    const struct listener_version *other = j == i ? NULL : serving(plans, j, i);
    if (other != NULL && same_bind(p->nv, other)) {
      char reason[512];
      snprintf(reason, sizeof(reason), "address: %s is already used by %s", p->nv->address,
               plans[j].l->name);
      plan_fail(p, reason);
      return;
    }
  }
}

static void plan_open_sockets(struct agent *a, struct plan *p) {
  if (p->nv == NULL || p->same_address)
    return;
  struct tp_err err = {0};
  p->fds = calloc((size_t)a->n_workers, sizeof(int));
  if (p->fds == NULL) {
    plan_fail(p, "out of memory");
    return;
  }
  /* The address may be ours already: a listener dropped or moved in this
   * same snapshot (live ones were refused by plan_check_address). */
  int ours = 0;
  for (const struct listener *l = a->listeners; l != NULL && !ours; l = l->next)
    ours = l->applied != NULL && same_bind(l->applied, p->nv);
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
           "listener=%s %s: serving on %s (%s), upstream %s%s, revision %lld; %zu of %zu "
           "contexts built (the others shared)",
           p->l->name, p->action == APPLY_NEW ? "new" : "changed", bound, p->nv->address,
           p->nv->upstream, p->nv->proxy_protocol ? " with PROXY v2" : "", (long long)revision,
           n - reused, n);
}

int agent_apply(struct agent *a, const Tlsplane__V1__Snapshot *snap, struct apply_report *report) {
  uint64_t started = uv_hrtime();
  memset(report, 0, sizeof(*report));
  report->revision = snap->revision;
  report->snapshot = snap;
  registry_prune(a);
  size_t n = snap->n_listeners, n_registry = 0;
  for (struct listener *l = a->listeners; l != NULL; l = l->next) {
    n_registry++;
    l->in_snapshot = 0;
  }
  size_t n_ops = n + n_registry;
  struct plan *plans = calloc(n + 1, sizeof(*plans));
  struct worker_msg **msgs = calloc((size_t)a->n_workers, sizeof(*msgs));
  report->results = calloc(n_ops + 1, sizeof(*report->results));
  int oom = plans == NULL || msgs == NULL || report->results == NULL;
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
    free(report->results);
    report->results = NULL;
    struct tp_err err = {0};
    tp_err_set(&err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory applying revision %lld",
               (long long)snap->revision);
    agent_apply_error(a, &err);
    return -1;
  }

  /* Phase 1: build beside what runs; nothing running changes yet. */
  for (size_t i = 0; i < n; i++) {
    plans[i].rl = snap->listeners[i];
    plans[i].res = &report->results[i];
    plan_build(a, plans, i);
  }
  for (size_t i = 0; i < n; i++)
    plan_check_address(plans, n, i);
  for (size_t i = 0; i < n; i++)
    plan_open_sockets(a, &plans[i]);

  /* Phase 2: commit. Every CLOSE before any OPEN. */
  report->n = n;
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
    snprintf(r->listener, sizeof(r->listener), "%s", l->name);
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
      log_served(p, snap->revision);
      listener_version_unref(l->applied);
      l->applied = p->nv; /* the build's reference */
      p->nv = NULL;
      break;
    case APPLY_DROP:
      break;
    }
    l->applied_revision = snap->revision;
    l->last_error[0] = '\0';
  }
  /* Posted even without ops, so that every worker reports the revision it
   * has in place (tlsplane_worker_config_revision). */
  for (int k = 0; k < a->n_workers; k++) {
    msgs[k]->kind = WORKER_MSG_APPLY;
    msgs[k]->revision = snap->revision;
    worker_post(a->workers[k], msgs[k]);
  }
  for (size_t i = 0; i < n; i++) {
    listener_version_unref(plans[i].nv);
    free(plans[i].fds);
  }
  free(plans);
  free(msgs);

  /* The listening sockets now open, for the descriptor budget (sockets of
   * a listener that moved close a moment later: the reserve covers that). */
  long listening = 0;
  for (const struct listener *l = a->listeners; l != NULL; l = l->next)
    if (l->applied != NULL)
      listening += a->n_workers;
  atomic_store(&a->budget.listening, listening);

  a->revision = snap->revision;
  a->apply_total[report->n_failed == 0 ? AGENT_APPLY_ACK : AGENT_APPLY_NACK]++;
  report->apply_ms = (double)(uv_hrtime() - started) / 1e6;
  return report->n_failed == 0 ? 0 : -1;
}

void agent_apply_error(struct agent *a, const struct tp_err *err) {
  a->apply_total[AGENT_APPLY_ERROR]++;
  log_error("agent", "config not applied, nothing changed: %s", err->msg);
}

void apply_report_free(struct apply_report *r) {
  free(r->results);
  memset(r, 0, sizeof(*r));
}

void agent_listeners_free(struct agent *a) {
  while (a->listeners != NULL) {
    struct listener *l = a->listeners;
    a->listeners = l->next;
    listener_version_unref(l->applied);
    l->applied = NULL;
    listener_unref(l);
  }
}
