/* ListenerService: tls.createServer + server.listen + addContext: address,
 * default context, SNI routes, upstream and limits. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "listener_rules.h"
#include "pb.h"
#include "tlsplane/v1/listener.pb-c.h"

static const char *const listener_mutable[] = {
    "address",         "default_tls_context", "sni_routes",
    "upstream",        "proxy_protocol",      "handshake_timeout",
    "max_connections", "renegotiation_limit", "renegotiation_window",
    "ticket_key_ring", "agent_selector",      "idle_timeout",
    "write_timeout",   "upstream_tls",        NULL,
};

/* A Duration left out gets its default stored, so that reads show what
 * agents apply. */
static int duration_default(Google__Protobuf__Duration **d,
                            const struct listener_rules_duration *rule, struct tp_err *err) {
  if (*d == NULL && (*d = pb_duration_new(rule->default_s)) == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  return 0;
}

static int listener_prepare(struct api_op *op, ProtobufCMessage *res, struct tp_err *err) {
  Tlsplane__V1__Listener *l = (Tlsplane__V1__Listener *)res;
  /* Route hostnames are stored lower-cased, as agents match them. */
  for (size_t i = 0; i < l->n_sni_routes; i++)
    for (char *p = l->sni_routes[i]->hostname; *p; p++)
      *p = (char)tolower((unsigned char)*p);
  /* The agent's own rules (common/listener_rules.c), with the API's
   * ranges: what is accepted here loads on every agent. */
  struct listener_rules_values vals;
  if (listener_rules_check(l, LISTENER_RULES_API, &vals, err) != 0)
    return -1;
  if (api_name_check(&api_kind_tls_context, l->default_tls_context, "default_tls_context", err) !=
      0)
    return -1;
  for (size_t i = 0; i < l->n_sni_routes; i++) {
    char field[64];
    snprintf(field, sizeof(field), "sni_routes[%zu].tls_context", i);
    if (api_name_check(&api_kind_tls_context, l->sni_routes[i]->tls_context, field, err) != 0)
      return -1;
  }
  if (l->upstream_tls != NULL && api_name_check(&api_kind_tls_context, l->upstream_tls->tls_context,
                                                "upstream_tls.tls_context", err) != 0)
    return -1;
  if (duration_default(&l->handshake_timeout, &listener_rules_handshake_timeout, err) != 0 ||
      duration_default(&l->renegotiation_window, &listener_rules_renegotiation_window, err) != 0 ||
      duration_default(&l->idle_timeout, &listener_rules_idle_timeout, err) != 0 ||
      duration_default(&l->write_timeout, &listener_rules_write_timeout, err) != 0)
    return -1;
  if (l->renegotiation_limit == NULL) {
    l->renegotiation_limit = malloc(sizeof(*l->renegotiation_limit));
    if (l->renegotiation_limit == NULL)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    google__protobuf__int32_value__init(l->renegotiation_limit);
    l->renegotiation_limit->value = vals.renegotiation_limit;
  }
  if (l->ticket_key_ring[0] != '\0' &&
      api_name_check(&api_kind_ticket_key_ring, l->ticket_key_ring, "ticket_key_ring", err) != 0)
    return -1;
  for (size_t i = 0; i < l->n_agent_selector; i++)
    if (l->agent_selector[i]->key[0] == '\0')
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "agent_selector: empty label key");
  return 0;
}

/* Appends "k=v" of each entry of sel whose key is not in skip (may be
 * NULL) to buf at *at. */
static void selector_append(const Tlsplane__V1__Listener *sel, const Tlsplane__V1__Listener *skip,
                            char *buf, size_t len, size_t *at) {
  for (size_t i = 0; i < sel->n_agent_selector && *at < len; i++) {
    const Tlsplane__V1__Listener__AgentSelectorEntry *e = sel->agent_selector[i];
    int dup = 0;
    for (size_t j = 0; skip != NULL && j < skip->n_agent_selector && !dup; j++)
      dup = strcmp(skip->agent_selector[j]->key, e->key) == 0;
    if (dup)
      continue;
    int n = snprintf(buf + *at, len - *at, "%s%s=%s", *at > 1 ? ", " : "", e->key, e->value);
    *at = n < 0 ? len : *at + (size_t)n;
  }
}

/* Whether a and b have the same agent_selector (as sets). */
static int selectors_equal(const Tlsplane__V1__Listener *a, const Tlsplane__V1__Listener *b) {
  if (a->n_agent_selector != b->n_agent_selector)
    return 0;
  for (size_t i = 0; i < a->n_agent_selector; i++) {
    size_t j = 0;
    while (j < b->n_agent_selector &&
           (strcmp(a->agent_selector[i]->key, b->agent_selector[j]->key) != 0 ||
            strcmp(a->agent_selector[i]->value, b->agent_selector[j]->value) != 0))
      j++;
    if (j == b->n_agent_selector)
      return 0;
  }
  return 1;
}

/* Two listeners whose bind addresses collide (listener_rules_addrs_overlap)
 * and that one agent can be given (listener_rules_selectors_overlap) would
 * make that agent nack one of them: refused here, inside the write
 * transaction, so that two concurrent writes cannot both pass. An agent
 * whose labels an UpdateAgent changes is not checked: it nacks as before. */
/* Each context l names is of the kind its field needs (client for
 * upstream_tls, server otherwise: listener_rules_upstream_context_check,
 * the agent's own rule). A context that does not exist is refs' error. */
static int contexts_check(struct api_op *op, const Tlsplane__V1__Listener *l, struct tp_err *err) {
  size_t n = l->n_sni_routes + 1 + (l->upstream_tls != NULL);
  for (size_t i = 0; i < n; i++) {
    char field[64];
    const char *name;
    if (i == 0) {
      snprintf(field, sizeof(field), "default_tls_context");
      name = l->default_tls_context;
    } else if (i == l->n_sni_routes + 1) {
      snprintf(field, sizeof(field), "upstream_tls.tls_context");
      name = l->upstream_tls->tls_context;
    } else {
      snprintf(field, sizeof(field), "sni_routes[%zu].tls_context", i - 1);
      name = l->sni_routes[i - 1]->tls_context;
    }
    ProtobufCMessage *ctx;
    struct tp_err why = {0};
    if (api_read(op->txn, &api_kind_tls_context, name, 0, &ctx, NULL, &why) != 0) {
      if (why.status == GRPC_STATUS_NOT_FOUND)
        continue;
      *err = why;
      return -1;
    }
    int rc = listener_rules_upstream_context_check(l, (Tlsplane__V1__TlsContext *)ctx, field, err);
    protobuf_c_message_free_unpacked(ctx, NULL);
    if (rc != 0) {
      tp_err_prefix(err, "listener.");
      return -1;
    }
  }
  return 0;
}

static int listener_check_in_write(struct api_op *op, const ProtobufCMessage *res,
                                   struct tp_err *err) {
  const Tlsplane__V1__Listener *l = (const Tlsplane__V1__Listener *)res;
  struct listener_rules_addr mine, theirs;
  if (contexts_check(op, l, err) != 0)
    return -1;
  struct tp_err ignored = {0};
  if (listener_rules_addr_parse(l->address, 1, "address", &mine, err) != 0)
    return -1;
  if (mine.port == 0)
    return 0; /* any free port: never collides */
  /* An update that moves neither the address nor the agents is not a new
   * collision: listeners stored before this check stay editable. */
  const Tlsplane__V1__Listener *old = (const Tlsplane__V1__Listener *)op->old;
  if (old != NULL && strcmp(old->address, l->address) == 0 && selectors_equal(old, l))
    return 0;
  struct store_query q = {.kind = api_kind_listener.kind};
  struct store_row *rows = NULL;
  size_t n = 0;
  if (store_list(op->txn, &q, &rows, &n, err) != 0)
    return -1;
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    if (strcmp(rows[i].name, l->name) == 0)
      continue;
    /* A row that does not decode, or an address an older server stored,
     * collides with nothing: one bad row never blocks other writes. */
    Tlsplane__V1__Listener *other =
        (Tlsplane__V1__Listener *)api_decode_row(&api_kind_listener, &rows[i], &ignored);
    if (other == NULL)
      continue;
    if (listener_rules_addr_parse(other->address, 1, "address", &theirs, &ignored) == 0 &&
        listener_rules_addrs_overlap(&mine, &theirs) &&
        listener_rules_selectors_overlap(l, other)) {
      char agents[512], as[300] = "";
      size_t at = 1;
      agents[0] = '{';
      selector_append(l, NULL, agents, sizeof(agents) - 1, &at);
      selector_append(other, l, agents, sizeof(agents) - 1, &at);
      if (at > sizeof(agents) - 2)
        at = sizeof(agents) - 2;
      snprintf(agents + at, sizeof(agents) - at, "}");
      if (strcmp(l->address, other->address) != 0)
        snprintf(as, sizeof(as), " (as %s)", other->address);
      rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "listener.address: %s is already used by %s%s for %s%s", l->address,
                      rows[i].name, as, at > 1 ? "agents matching " : "every agent",
                      at > 1 ? agents : "");
    }
    protobuf_c_message_free_unpacked(&other->base, NULL);
  }
  store_rows_free(rows, n);
  return rc;
}

static int listener_refs(const ProtobufCMessage *res, struct api_refs *refs) {
  const Tlsplane__V1__Listener *l = (const Tlsplane__V1__Listener *)res;
  int rc = api_refs_add(refs, api_kind_tls_context.kind, l->default_tls_context,
                        "listener.default_tls_context");
  for (size_t i = 0; rc == 0 && i < l->n_sni_routes; i++)
    rc = api_refs_add(refs, api_kind_tls_context.kind, l->sni_routes[i]->tls_context,
                      "listener.sni_routes[%zu].tls_context", i);
  if (rc == 0 && l->upstream_tls != NULL)
    rc = api_refs_add(refs, api_kind_tls_context.kind, l->upstream_tls->tls_context,
                      "listener.upstream_tls.tls_context");
  if (rc == 0 && l->ticket_key_ring[0] != '\0')
    rc = api_refs_add(refs, api_kind_ticket_key_ring.kind, l->ticket_key_ring,
                      "listener.ticket_key_ring");
  return rc;
}

const struct api_kind api_kind_listener = {
    .kind = "Listener",
    .collection = "listeners",
    .resource_field = "listener",
    .desc = &tlsplane__v1__listener__descriptor,
    .mutable_fields = listener_mutable,
    .prepare = listener_prepare,
    .refs = listener_refs,
    .check_in_write = listener_check_in_write,
};
