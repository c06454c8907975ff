/* Who serves what (serving.h). */
#include "serving.h"

#include <stdlib.h>
#include <string.h>

#include "hub.h"
#include "pb.h"
#include "snapshot.h"

/* The kinds GetServing takes. */
static const struct api_kind *const kinds[] = {&api_kind_certificate, &api_kind_tls_context,
                                               &api_kind_listener};

/* Listener names, each once once names_sort ran. */
struct names {
  char **v;
  size_t n, cap;
};

static int names_add(struct names *ns, const char *name) {
  if (ns->n == ns->cap) {
    size_t cap = ns->cap ? 2 * ns->cap : 8;
    char **v = realloc(ns->v, cap * sizeof(*v));
    if (v == NULL)
      return -1;
    ns->v = v;
    ns->cap = cap;
  }
  if ((ns->v[ns->n] = strdup(name)) == NULL)
    return -1;
  ns->n++;
  return 0;
}

static int name_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorts by name and drops duplicates (a listener using the resource
 * through two contexts). */
static void names_sort(struct names *ns) {
  if (ns->n == 0)
    return;
  qsort(ns->v, ns->n, sizeof(*ns->v), name_cmp);
  size_t kept = 1;
  for (size_t i = 1; i < ns->n; i++) {
    if (strcmp(ns->v[i], ns->v[kept - 1]) == 0)
      free(ns->v[i]);
    else
      ns->v[kept++] = ns->v[i];
  }
  ns->n = kept;
}

static void names_clear(struct names *ns) {
  for (size_t i = 0; i < ns->n; i++)
    free(ns->v[i]);
  free(ns->v);
  memset(ns, 0, sizeof(*ns));
}

/* The kind of `resource` by its collection, its name checked. */
static const struct api_kind *resource_kind(const char *resource, struct tp_err *err) {
  if (resource[0] == '\0') {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "resource: required (certificates/{id}, tlsContexts/{id} or listeners/{id})");
    return NULL;
  }
  for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
    size_t len = strlen(kinds[i]->collection);
    if (strncmp(resource, kinds[i]->collection, len) == 0 && resource[len] == '/')
      return api_name_check(kinds[i], resource, "resource", err) == 0 ? kinds[i] : NULL;
  }
  tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
             "resource: \"%.80s\" is not a certificate, TLS context or listener name "
             "(certificates/{id}, tlsContexts/{id} or listeners/{id})",
             resource);
  return NULL;
}

/* Adds to ns the listeners that refer to (kind, name), and, when
 * through_contexts, those that refer to a TLS context that does. */
static int listeners_using(struct store_txn *txn, const char *kind, const char *name,
                           int through_contexts, struct names *ns, struct tp_err *err) {
  struct store_row *rows = NULL;
  size_t n = 0;
  if (store_referrers(txn, kind, name, &rows, &n, err) != 0)
    return -1;
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    if (strcmp(rows[i].kind, api_kind_listener.kind) == 0) {
      if (names_add(ns, rows[i].name) != 0)
        rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    } else if (through_contexts && strcmp(rows[i].kind, api_kind_tls_context.kind) == 0) {
      rc = listeners_using(txn, rows[i].kind, rows[i].name, 0, ns, err);
    }
  }
  store_rows_free(rows, n);
  return rc;
}

/* Every agent record, decoded (in name order). */
struct agents {
  Tlsplane__V1__Agent **v;
  size_t n;
};

static void agents_clear(struct agents *as) {
  for (size_t i = 0; i < as->n; i++)
    protobuf_c_message_free_unpacked(&as->v[i]->base, NULL);
  free(as->v);
  memset(as, 0, sizeof(*as));
}

static int agents_read(struct store_txn *txn, struct agents *as, struct tp_err *err) {
  struct store_query q = {.kind = api_kind_agent.kind};
  struct store_row *rows = NULL;
  size_t n = 0;
  if (store_list(txn, &q, &rows, &n, err) != 0)
    return -1;
  int rc = 0;
  as->v = calloc(n + 1, sizeof(*as->v));
  if (as->v == NULL)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  for (size_t i = 0; rc == 0 && i < n; i++) {
    ProtobufCMessage *m = api_decode_row(&api_kind_agent, &rows[i], err);
    if (m == NULL)
      rc = -1;
    else
      as->v[as->n++] = (Tlsplane__V1__Agent *)m;
  }
  store_rows_free(rows, n);
  return rc;
}

/* Whether listener l selects agent a (its record's labels). */
static int selects(const Tlsplane__V1__Listener *l, const Tlsplane__V1__Agent *a) {
  struct snapshot_label stack[16], *labels = stack;
  if (a->n_labels > sizeof(stack) / sizeof(stack[0]) &&
      (labels = calloc(a->n_labels, sizeof(*labels))) == NULL)
    return 0;
  for (size_t i = 0; i < a->n_labels; i++)
    labels[i] = (struct snapshot_label){a->labels[i]->key, a->labels[i]->value};
  int yes = snapshot_selector_matches(l, labels, a->n_labels);
  if (labels != stack)
    free(labels);
  return yes;
}

/* The entry of listener `name` with the agents it selects (their names;
 * the live fields come later). */
static int listener_entry(struct store_txn *txn, const char *name, const struct agents *as,
                          Tlsplane__V1__ServingListener **out, struct tp_err *err) {
  ProtobufCMessage *m;
  if (api_read(txn, &api_kind_listener, name, 0, &m, NULL, err) != 0)
    return -1;
  const Tlsplane__V1__Listener *l = (const Tlsplane__V1__Listener *)m;
  Tlsplane__V1__ServingListener *sl = malloc(sizeof(*sl));
  int rc = 0;
  if (sl == NULL) {
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto failed_alloc;
  }
  tlsplane__v1__serving_listener__init(sl);
  sl->agents = calloc(as->n + 1, sizeof(*sl->agents));
  if (sl->agents == NULL || pb_string_set(&sl->base, "listener", name) != 0)
    rc = -1;
  for (size_t i = 0; rc == 0 && i < as->n; i++) {
    if (!selects(l, as->v[i]))
      continue;
    Tlsplane__V1__ServingAgent *sa = malloc(sizeof(*sa));
    if (sa == NULL) {
      rc = -1;
      break;
    }
    tlsplane__v1__serving_agent__init(sa);
    sl->agents[sl->n_agents++] = sa;
    rc = pb_string_set(&sa->base, "agent", as->v[i]->name);
  }
  if (rc != 0) {
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    protobuf_c_message_free_unpacked(&sl->base, NULL);
  } else {
    *out = sl;
  }
failed_alloc:
  protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

/* Reads what the answer needs from the store: the resource's revision,
 * the listeners that use it and the agents each selects. */
static int serving_read(struct store_txn *txn, const struct api_kind *kind, const char *resource,
                        Tlsplane__V1__Serving *s, struct tp_err *err) {
  ProtobufCMessage *m;
  struct store_row row = {0};
  if (api_read(txn, kind, resource, 0, &m, &row, err) != 0) {
    store_row_clear(&row);
    if (err->status == GRPC_STATUS_NOT_FOUND)
      tp_err_set(err, GRPC_STATUS_NOT_FOUND, "resource: %s does not exist", resource);
    return -1;
  }
  s->revision = row.revision;
  protobuf_c_message_free_unpacked(m, NULL);
  store_row_clear(&row);

  struct names ns = {0};
  struct agents as = {0};
  int rc = kind == &api_kind_listener ? names_add(&ns, resource)
                                      : listeners_using(txn, kind->kind, resource, 1, &ns, err);
  if (rc != 0 && err->status == GRPC_STATUS_OK)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  names_sort(&ns);
  if (rc == 0)
    rc = agents_read(txn, &as, err);
  if (rc == 0 && (s->listeners = calloc(ns.n + 1, sizeof(*s->listeners))) == NULL)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  for (size_t i = 0; rc == 0 && i < ns.n; i++) {
    rc = listener_entry(txn, ns.v[i], &as, &s->listeners[s->n_listeners], err);
    if (rc == 0)
      s->n_listeners++;
  }
  agents_clear(&as);
  names_clear(&ns);
  return rc;
}

int serving_get(struct api *api, const char *resource, Tlsplane__V1__Serving **out,
                struct tp_err *err) {
  const struct api_kind *kind = resource_kind(resource, err);
  if (kind == NULL)
    return -1;
  Tlsplane__V1__Serving *s = malloc(sizeof(*s));
  if (s == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  tlsplane__v1__serving__init(s);
  struct store_txn *txn;
  int rc = pb_string_set(&s->base, "resource", resource) != 0
               ? tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory")
               : store_begin(api->store, 0, &txn, err);
  if (rc == 0) {
    rc = serving_read(txn, kind, resource, s, err);
    store_rollback(txn);
  }
  if (rc != 0) {
    protobuf_c_message_free_unpacked(&s->base, NULL);
    return -1;
  }
  /* The live part, after the transaction: the hub's lock is never held
   * with a store connection. */
  for (size_t i = 0; api->hub != NULL && i < s->n_listeners; i++)
    for (size_t j = 0; j < s->listeners[i]->n_agents; j++)
      hub_agent_serving(api->hub, s->listeners[i]->listener, s->revision,
                        s->listeners[i]->agents[j]);
  *out = s;
  return 0;
}
