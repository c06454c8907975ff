/* The snapshot builder: what each agent serves. */
#include "snapshot.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "listener_rules.h"
#include "log.h"
#include "pb.h"
#include "resolve.h"

#define TICKET_KEY_LEN LISTENER_RULES_TICKET_KEY_LEN

int snapshot_selector_matches(const Tlsplane__V1__Listener *l, const struct snapshot_label *labels,
                              size_t n_labels) {
  for (size_t i = 0; i < l->n_agent_selector; i++) {
    const char *k = l->agent_selector[i]->key, *v = l->agent_selector[i]->value;
    size_t j = 0;
    while (j < n_labels && (strcmp(labels[j].key, k) != 0 || strcmp(labels[j].value, v) != 0))
      j++;
    if (j == n_labels)
      return 0;
  }
  return 1;
}

/* Adds the resolved context `name` to rl's map unless it is there. */
static int add_context(struct store_txn *txn, Tlsplane__V1__ResolvedListener *rl, size_t cap,
                       const char *name, struct tp_err *err) {
  for (size_t i = 0; i < rl->n_tls_contexts; i++)
    if (strcmp(rl->tls_contexts[i]->key, name) == 0)
      return 0;
  if (rl->n_tls_contexts == cap)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "too many contexts");
  ProtobufCMessage *ctx;
  if (api_read(txn, &api_kind_tls_context, name, 0, &ctx, NULL, err) != 0)
    return -1;
  Tlsplane__V1__ResolvedTlsContext *resolved = NULL;
  int rc = resolve_tls_context(txn, (Tlsplane__V1__TlsContext *)ctx, NULL, &resolved, err);
  protobuf_c_message_free_unpacked(ctx, NULL);
  if (rc != 0)
    return -1;
  Tlsplane__V1__ResolvedListener__TlsContextsEntry *e = malloc(sizeof(*e));
  char *key = strdup(name);
  if (e == NULL || key == NULL) {
    free(e);
    free(key);
    protobuf_c_message_free_unpacked(&resolved->base, NULL);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  tlsplane__v1__resolved_listener__tls_contexts_entry__init(e);
  e->key = key;
  e->value = resolved;
  rl->tls_contexts[rl->n_tls_contexts++] = e;
  return 0;
}

static int add_ticket_keys(struct store_txn *txn, Tlsplane__V1__ResolvedListener *rl,
                           const char *ring_name, struct tp_err *err) {
  ProtobufCMessage *ring;
  struct store_row row = {0};
  if (api_read(txn, &api_kind_ticket_key_ring, ring_name, 1, &ring, &row, err) != 0)
    return -1;
  size_t n = row.secret_len / TICKET_KEY_LEN;
  int rc = 0;
  rl->ticket_keys = calloc(n ? n : 1, sizeof(*rl->ticket_keys));
  if (rl->ticket_keys == NULL)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  for (size_t i = 0; rc == 0 && i < n; i++) {
    Tlsplane__V1__TicketKeyMaterial *k = malloc(sizeof(*k));
    uint8_t *bytes = malloc(TICKET_KEY_LEN);
    if (k == NULL || bytes == NULL) {
      free(k);
      free(bytes);
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      break;
    }
    tlsplane__v1__ticket_key_material__init(k);
    memcpy(bytes, row.secret + i * TICKET_KEY_LEN, TICKET_KEY_LEN);
    k->key.data = bytes;
    k->key.len = TICKET_KEY_LEN;
    k->active = i == 0; /* the ring keeps its active key first */
    rl->ticket_keys[rl->n_ticket_keys++] = k;
  }
  if (row.secret != NULL)
    OPENSSL_cleanse(row.secret, row.secret_len);
  store_row_clear(&row);
  protobuf_c_message_free_unpacked(ring, NULL);
  return rc;
}

static int resolve_listener(struct store_txn *txn, Tlsplane__V1__Listener *l,
                            Tlsplane__V1__ResolvedListener **out, struct tp_err *err) {
  Tlsplane__V1__ResolvedListener *rl = malloc(sizeof(*rl));
  size_t cap = l->n_sni_routes + 1;
  if (rl == NULL) {
    protobuf_c_message_free_unpacked(&l->base, NULL);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  tlsplane__v1__resolved_listener__init(rl);
  rl->listener = l;
  rl->tls_contexts = calloc(cap, sizeof(*rl->tls_contexts));
  int rc = rl->tls_contexts ? 0 : tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (rc == 0)
    rc = add_context(txn, rl, cap, l->default_tls_context, err);
  for (size_t i = 0; rc == 0 && i < l->n_sni_routes; i++)
    rc = add_context(txn, rl, cap, l->sni_routes[i]->tls_context, err);
  if (rc == 0 && l->ticket_key_ring[0] != '\0')
    rc = add_ticket_keys(txn, rl, l->ticket_key_ring, err);
  if (rc != 0) {
    protobuf_c_message_free_unpacked(&rl->base, NULL);
    return -1;
  }
  *out = rl;
  return 0;
}

int snapshot_build(struct store *store, const struct snapshot_label *labels, size_t n_labels,
                   Tlsplane__V1__Snapshot **out, struct tp_err *err) {
  struct store_txn *txn;
  struct store_row *rows = NULL;
  size_t n = 0;
  struct store_query q = {.kind = api_kind_listener.kind};
  if (store_begin(store, 0, &txn, err) != 0)
    return -1;
  Tlsplane__V1__Snapshot *snap = malloc(sizeof(*snap));
  if (snap == NULL) {
    store_rollback(txn);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  tlsplane__v1__snapshot__init(snap);
  snap->revision = store_txn_revision(txn);
  int rc = store_list(txn, &q, &rows, &n, err);
  if (rc == 0) {
    snap->listeners = calloc(n ? n : 1, sizeof(*snap->listeners));
    if (snap->listeners == NULL)
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  for (size_t i = 0; rc == 0 && i < n; i++) {
    Tlsplane__V1__Listener *l =
        (Tlsplane__V1__Listener *)api_decode_row(&api_kind_listener, &rows[i], err);
    if (l == NULL) {
      rc = -1;
      break;
    }
    if (!snapshot_selector_matches(l, labels, n_labels)) {
      protobuf_c_message_free_unpacked(&l->base, NULL);
      continue;
    }
    Tlsplane__V1__ResolvedListener *rl = NULL;
    if (resolve_listener(txn, l, &rl, err) != 0) {
      /* Cannot happen while references are enforced; an agent still gets
       * every other listener. resolve_listener freed l. */
      log_error("snapshot", "%s left out: %s", rows[i].name, err->msg);
      continue;
    }
    snap->listeners[snap->n_listeners++] = rl;
  }
  store_rows_free(rows, n);
  store_rollback(txn);
  if (rc != 0) {
    protobuf_c_message_free_unpacked(&snap->base, NULL);
    return -1;
  }
  *out = snap;
  return 0;
}
