/* AuditService: who changed what, when, at which revision. */
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "pb.h"
#include "tlsplane/v1/audit.pb-c.h"

#define AUDIT_PAGE_DEFAULT 100
#define AUDIT_PAGE_MAX 1000

static Tlsplane__V1__AuditChange *change_new(const struct store_audit_change *c) {
  Tlsplane__V1__AuditChange *ch = malloc(sizeof(*ch));
  if (ch == NULL)
    return NULL;
  tlsplane__v1__audit_change__init(ch);
  ch->field = strdup(c->field ? c->field : "");
  ch->before = strdup(c->before ? c->before : "");
  ch->after = strdup(c->after ? c->after : "");
  if (!ch->field || !ch->before || !ch->after) {
    protobuf_c_message_free_unpacked(&ch->base, NULL);
    return NULL;
  }
  return ch;
}

/* Adds a's changes to e; 0 or -1 (out of memory). */
static int event_changes_set(Tlsplane__V1__AuditEvent *e, const struct store_audit *a) {
  if (a->n_changes == 0)
    return 0;
  if ((e->changes = calloc(a->n_changes, sizeof(*e->changes))) == NULL)
    return -1;
  for (size_t i = 0; i < a->n_changes; i++) {
    if ((e->changes[i] = change_new(&a->changes[i])) == NULL)
      return -1;
    e->n_changes = i + 1;
  }
  return 0;
}

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
  if (!e->name || !e->time || !e->actor || !e->method || !e->resource || !e->action ||
      event_changes_set(e, a) != 0) {
    protobuf_c_message_free_unpacked(&e->base, NULL);
    return NULL;
  }
  return e;
}

/* A list request's order and filters, which a page token is bound to. */
struct audit_list_args {
  struct store_audit_query q;
  char fingerprint[17]; /* hex of the first 8 bytes of SHA-256 over them */
};

/* Reads order_by, the time range and the filters of r into a. */
static int audit_args_parse(const Tlsplane__V1__ListAuditEventsRequest *r,
                            struct audit_list_args *a, struct tp_err *err) {
  struct store_audit_query *q = &a->q;
  if (r->order_by[0] == '\0' || strcmp(r->order_by, "time desc") == 0)
    q->descending = 1;
  else if (strcmp(r->order_by, "time asc") != 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "order_by: must be \"time desc\" or \"time asc\", not \"%.64s\"",
                      r->order_by);
  q->has_start_time = r->start_time != NULL;
  q->start_time_us = pb_timestamp_us(r->start_time);
  q->has_end_time = r->end_time != NULL;
  q->end_time_us = pb_timestamp_us(r->end_time);
  if (q->has_start_time && q->has_end_time && q->end_time_us < q->start_time_us)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "end_time: before start_time");
  q->resource = r->resource[0] ? r->resource : NULL;
  q->actor = r->actor[0] ? r->actor : NULL;
  q->since_revision = r->since_revision;

  /* Lengths first, so that no two filters spell the same text. */
  char *text = NULL;
  int n =
      asprintf(&text, "%d|%d:%" PRId64 "|%d:%" PRId64 "|%" PRId64 "|%zu:%s|%zu:%s", q->descending,
               q->has_start_time, q->start_time_us, q->has_end_time, q->end_time_us,
               q->since_revision, strlen(r->resource), r->resource, strlen(r->actor), r->actor);
  if (n < 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  int ok = EVP_Digest(text, (size_t)n, md, &md_len, EVP_sha256(), NULL);
  free(text);
  if (!ok)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "page token: SHA-256 failed");
  for (int i = 0; i < 8; i++)
    snprintf(a->fingerprint + 2 * i, 3, "%02x", md[i]);
  return 0;
}

/* Page tokens: the base64 of "<seq of the last event shown>.<fingerprint
 * of the order and filters>", so that a token is refused with another
 * order or other filters than the list that gave it. */
static int audit_token_decode(const char *token, struct audit_list_args *a, struct tp_err *err) {
  char text[64];
  char *end;
  if (api_token_decode(token, text, sizeof(text)) != 0)
    goto bad;
  long long seq = strtoll(text, &end, 10);
  if (end == text || *end != '.' || seq <= 0 || strcmp(end + 1, a->fingerprint) != 0)
    goto bad;
  if (a->q.descending)
    a->q.before_seq = seq;
  else
    a->q.after_seq = seq;
  return 0;
bad:
  return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                    "page_token: not a token from a previous audit list with this order_by and "
                    "these filters");
}

static char *audit_token_encode(int64_t seq, const struct audit_list_args *a) {
  char text[64];
  snprintf(text, sizeof(text), "%" PRId64 ".%s", seq, a->fingerprint);
  return api_token_encode(text);
}

/* The response for rows[0..n), of which the first limit are shown. */
static int audit_response(struct store_audit *rows, size_t n, int limit,
                          const struct audit_list_args *a, ProtobufCMessage **resp,
                          struct tp_err *err) {
  size_t shown = n > (size_t)limit ? (size_t)limit : n;
  Tlsplane__V1__ListAuditEventsResponse *out = malloc(sizeof(*out));
  if (out == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  tlsplane__v1__list_audit_events_response__init(out);
  out->audit_events = calloc(shown ? shown : 1, sizeof(*out->audit_events));
  for (size_t i = 0; out->audit_events != NULL && i < shown; i++) {
    if ((out->audit_events[i] = event_new(&rows[i])) == NULL)
      break;
    out->n_audit_events = i + 1;
  }
  int ok = out->n_audit_events == shown;
  if (ok && n > shown) {
    char *token = audit_token_encode(rows[shown - 1].seq, a);
    ok = token != NULL && pb_string_set(&out->base, "next_page_token", token) == 0;
    free(token);
  }
  if (!ok) {
    protobuf_c_message_free_unpacked(&out->base, NULL);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  *resp = &out->base;
  return 0;
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
  struct audit_list_args a = {0};
  if (audit_args_parse(r, &a, err) != 0)
    return -1;
  if (r->page_token[0] != '\0' && audit_token_decode(r->page_token, &a, err) != 0)
    return -1;
  a.q.limit = limit + 1;
  struct store_txn *txn;
  struct store_audit *rows = NULL;
  size_t n = 0;
  if (store_begin(b->api->store, 0, &txn, err) != 0)
    return -1;
  int rc = store_audit_list(txn, &a.q, &rows, &n, err);
  store_rollback(txn);
  if (rc == 0)
    rc = audit_response(rows, n, limit, &a, resp, err);
  store_audit_free(rows, n);
  return rc == 0 ? 0 : -1;
}

const struct api_method audit_methods[] = {{"ListAuditEvents", list_audit_events}, {NULL, NULL}};
