/* AuditService: who changed what, when, at which revision. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "pb.h"
#include "tlsplane/v1/audit.pb-c.h"

#define AUDIT_PAGE_DEFAULT 100
#define AUDIT_PAGE_MAX 1000

static Tlsplane__V1__AuditEvent *event_new(const struct store_audit *a) {
  Tlsplane__V1__AuditEvent *e = malloc(sizeof(*e));
  if (e == NULL)
    return NULL;
  tlsplane__v1__audit_event__init(e);
  char name[64];
  snprintf(name, sizeof(name), "auditEvents/%" PRId64, a->seq);
  e->name = strdup(name);
  e->revision = a->revision;
  e->time = pb_timestamp_new(a->time_us);
  e->actor = strdup(a->actor ? a->actor : "");
  e->method = strdup(a->method ? a->method : "");
  e->resource = strdup(a->resource ? a->resource : "");
  e->action = strdup(a->action ? a->action : "");
  if (!e->name || !e->time || !e->actor || !e->method || !e->resource || !e->action) {
    protobuf_c_message_free_unpacked(&e->base, NULL);
    return NULL;
  }
  return e;
}

static int list_audit_events(const struct rpc_call_info *call, const ProtobufCMessage *req,
                             ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const Tlsplane__V1__ListAuditEventsRequest *r = (const Tlsplane__V1__ListAuditEventsRequest *)req;
  if (r->page_size < 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "page_size: must not be negative");
  int limit = r->page_size == 0 ? AUDIT_PAGE_DEFAULT : r->page_size;
  if (limit > AUDIT_PAGE_MAX)
    limit = AUDIT_PAGE_MAX;
  int64_t after = 0;
  if (r->page_token[0] != '\0') {
    char *end;
    after = strtoll(r->page_token, &end, 10);
    if (*end != '\0' || after <= 0)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "page_token: not a token from a previous audit list");
  }
  struct store_audit_query q = {
      .after_seq = after,
      .limit = limit + 1,
      .resource = r->resource[0] ? r->resource : NULL,
      .actor = r->actor[0] ? r->actor : NULL,
      .since_revision = r->since_revision,
  };
  struct store_txn *txn;
  struct store_audit *rows = NULL;
  size_t n = 0;
  if (store_begin(b->api->store, 0, &txn, err) != 0)
    return -1;
  int rc = store_audit_list(txn, &q, &rows, &n, err);
  store_rollback(txn);
  if (rc != 0)
    return -1;
  size_t shown = n > (size_t)limit ? (size_t)limit : n;
  Tlsplane__V1__ListAuditEventsResponse *out = malloc(sizeof(*out));
  if (out == NULL) {
    store_audit_free(rows, n);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  tlsplane__v1__list_audit_events_response__init(out);
  out->audit_events = calloc(shown ? shown : 1, sizeof(*out->audit_events));
  for (size_t i = 0; out->audit_events != NULL && i < shown; i++) {
    if ((out->audit_events[i] = event_new(&rows[i])) == NULL)
      break;
    out->n_audit_events = i + 1;
  }
  if (out->n_audit_events != shown) {
    store_audit_free(rows, n);
    protobuf_c_message_free_unpacked(&out->base, NULL);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  if (n > shown) {
    char token[32];
    snprintf(token, sizeof(token), "%" PRId64, rows[shown - 1].seq);
    pb_string_set(&out->base, "next_page_token", token);
  }
  store_audit_free(rows, n);
  *resp = &out->base;
  return 0;
}

const struct api_method audit_methods[] = {{"ListAuditEvents", list_audit_events}, {NULL, NULL}};
