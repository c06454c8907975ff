/* OCSP fetched by the server: the HTTP client (libcurl), the request
 * (OpenSSL's OCSP_* API) and the job round. See ocsp_fetch.h. */
#include "ocsp_fetch.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "certinfo.h"
#include "events.h"
#include "http_fetch.h"
#include "jobs.h"
#include "log.h"
#include "pb.h"
#include "tlsconf.h"

/* The DER OCSPRequest for leaf (SHA-1 CertID, as RFC 5019 responders
 * expect), malloc'd. */
static int request_der(X509 *leaf, X509 *issuer, unsigned char **out, size_t *len,
                       struct tp_err *err) {
  OCSP_REQUEST *req = OCSP_REQUEST_new();
  OCSP_CERTID *id = OCSP_cert_to_id(EVP_sha1(), leaf, issuer);
  unsigned char *der = NULL;
  int n = -1;
  if (req != NULL && id != NULL && OCSP_request_add0_id(req, id) != NULL) {
    id = NULL; /* the request's now */
    n = i2d_OCSP_REQUEST(req, &der);
  }
  OCSP_CERTID_free(id);
  OCSP_REQUEST_free(req);
  if (n <= 0) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "cannot build the OCSP request");
    tp_err_append_openssl(err);
    return -1;
  }
  *out = malloc((size_t)n);
  if (*out == NULL) {
    OPENSSL_free(der);
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  memcpy(*out, der, (size_t)n);
  *len = (size_t)n;
  OPENSSL_free(der);
  return 0;
}

int ocsp_fetch(const char *url, X509 *leaf, X509 *issuer, const atomic_int *stop,
               unsigned char **der, size_t *len, struct tp_err *err) {
  *der = NULL;
  *len = 0;
  if (strncasecmp(url, "http://", 7) != 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "ocsp_responder_url: only http:// responders are asked");
  unsigned char *req = NULL;
  size_t req_len = 0;
  if (request_der(leaf, issuer, &req, &req_len, err) != 0)
    return -1;
  const struct http_fetch_opts o = {.method = "POST",
                                    .body = req,
                                    .body_len = req_len,
                                    .content_type = "application/ocsp-request",
                                    .protocols = "http",
                                    .max_redirects = 0,
                                    .timeout_ms = OCSP_FETCH_TIMEOUT_MS,
                                    .max_bytes = OCSP_FETCH_RESPONSE_MAX,
                                    .stop = stop};
  struct http_fetch_result res = {0};
  int rc = -1;
  if (http_fetch(url, &o, &res, err) != 0)
    tp_err_prefix(err, "asking the responder: ");
  else if (res.status != 200)
    tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "the responder answered HTTP %ld", res.status);
  else if (res.len == 0)
    tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "the responder answered with an empty body");
  else {
    *der = res.body;
    *len = res.len;
    res.body = NULL;
    rc = 0;
  }
  http_fetch_result_clear(&res);
  free(req);
  return rc;
}

int64_t ocsp_retry_delay_s(int64_t base_s, int failures) {
  return jobs_backoff(base_s, base_s * OCSP_RETRY_MAX_FACTOR, failures);
}

/* TLSPLANE_OCSP_RETRY_BASE_SECONDS, or OCSP_RETRY_BASE_S. */
static int64_t retry_base_s(void) {
  const char *v = getenv("TLSPLANE_OCSP_RETRY_BASE_SECONDS");
  if (v == NULL || v[0] == '\0')
    return OCSP_RETRY_BASE_S;
  char *end;
  long n = strtol(v, &end, 10);
  if (*end != '\0' || n < 1 || n > 3600)
    return OCSP_RETRY_BASE_S;
  return n;
}

/* What one fetch came to. */
struct outcome {
  int ok;
  unsigned char *der; /* ok: the checked response */
  size_t len;
  struct certinfo_ocsp info;                     /* ok */
  char error[sizeof(((struct tp_err *)0)->msg)]; /* !ok */
};

/* Whether a TlsContext with ocsp_stapling uses the certificate name. */
static int used_for_stapling(struct store_txn *txn, const char *name, struct tp_err *err) {
  struct store_row *rows = NULL;
  size_t n = 0;
  if (store_referrers(txn, api_kind_certificate.kind, name, &rows, &n, err) != 0)
    return -1;
  int used = 0;
  for (size_t i = 0; !used && i < n; i++) {
    if (strcmp(rows[i].kind, api_kind_tls_context.kind) != 0)
      continue;
    ProtobufCMessage *m = NULL;
    struct tp_err e = {0};
    if (api_read(txn, &api_kind_tls_context, rows[i].name, 0, &m, NULL, &e) != 0)
      continue;
    used = ((Tlsplane__V1__TlsContext *)m)->ocsp_stapling;
    protobuf_c_message_free_unpacked(m, NULL);
  }
  store_rows_free(rows, n);
  return used;
}

/* Asks c's responder and checks the answer against its issuer at now. */
static void fetch_one(const Tlsplane__V1__Certificate *c, time_t now, const atomic_int *stop,
                      struct outcome *o) {
  struct tp_err err = {0};
  X509 *leaf = NULL, *issuer = NULL;
  memset(o, 0, sizeof(*o));
  if (tlsconf_certificate_ocsp_target(c, &leaf, &issuer, &err) == 0 &&
      ocsp_fetch(c->ocsp_responder_url, leaf, issuer, stop, &o->der, &o->len, &err) == 0 &&
      certinfo_ocsp_check(o->der, o->len, leaf, issuer, now, 1, &o->info, &err) == 0)
    o->ok = 1;
  if (!o->ok) {
    free(o->der);
    o->der = NULL;
    /* "ocsp_response: ..." names the field of the upload; here it is the
     * responder's answer. */
    const char *msg = err.msg;
    if (strncmp(msg, "ocsp_response: ", 15) == 0)
      msg += 15;
    snprintf(o->error, sizeof(o->error), "%s", msg[0] != '\0' ? msg : "failed");
  }
  X509_free(leaf);
  X509_free(issuer);
}

/* An outcome, and the etag of the certificate it was fetched for. */
struct outcome_at {
  const struct outcome *o;
  const char *etag;
};

/* The certificate after the outcome, unless it changed since its etag
 * was read (its own schedule holds then: nothing written). */
static int outcome_edit(const struct jobs_outcome *w, const ProtobufCMessage *old,
                        ProtobufCMessage *res, struct api_op *op, const char **action,
                        struct tp_err *err) {
  const struct outcome_at *at = w->data;
  const struct outcome *o = at->o;
  int64_t now_us = w->now_us;
  if (strcmp(op->old_row->etag, at->etag) != 0)
    return 1;
  api_clear_output_fields(&api_kind_certificate, res);
  const Tlsplane__V1__Certificate *was = (const Tlsplane__V1__Certificate *)old;
  Tlsplane__V1__Certificate *c = (Tlsplane__V1__Certificate *)res;
  int64_t base = retry_base_s();
  int64_t next_us;
  int oom = 0;
  if (o->ok) {
    int64_t refresh_us = o->info.has_next_update
                             ? ((int64_t)o->info.this_update +
                                ((int64_t)o->info.next_update - (int64_t)o->info.this_update) / 2) *
                                   1000000
                             : now_us + (int64_t)OCSP_REFRESH_NO_NEXT_UPDATE_S * 1000000;
    /* A responder handing out responses already half through their life
     * is not asked again more often than the back-off base. */
    next_us = refresh_us > now_us + base * 1000000 ? refresh_us : now_us + base * 1000000;
    unsigned char *copy = malloc(o->len);
    if (copy == NULL)
      oom = 1;
    else {
      memcpy(copy, o->der, o->len);
      free(c->ocsp_response.data);
      c->ocsp_response.data = copy;
      c->ocsp_response.len = o->len;
    }
    oom = oom || pb_timestamp_set(res, "ocsp_fetch_time", now_us) != 0 ||
          pb_timestamp_set(res, "ocsp_refresh_time", refresh_us) != 0;
  } else {
    c->ocsp_fetch_failures = was->ocsp_fetch_failures + 1;
    next_us = now_us + ocsp_retry_delay_s(base, c->ocsp_fetch_failures) * 1000000;
    oom =
        pb_string_set(res, "ocsp_last_error", o->error) != 0 ||
        (was->ocsp_fetch_time != NULL &&
         pb_timestamp_set(res, "ocsp_fetch_time", pb_timestamp_us(was->ocsp_fetch_time)) != 0) ||
        (was->ocsp_refresh_time != NULL &&
         pb_timestamp_set(res, "ocsp_refresh_time", pb_timestamp_us(was->ocsp_refresh_time)) != 0);
  }
  if (oom || pb_timestamp_set(res, "ocsp_next_attempt_time", next_us) != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  *action = "ocsp_refresh";
  return 0;
}

/* Writes the outcome into certificate name, unless it changed since etag
 * was read (its own schedule holds then). Returns 1 written, 0 skipped,
 * -1. */
static int store_outcome(struct api *api, const char *name, const char *etag,
                         const struct outcome *o, int64_t now_us, struct tp_err *err) {
  static const struct rpc_call_info call = {
      .method = "job:ocsp-refresh", .peer = "local", .actor = "system", .principal = ""};
  struct outcome_at at = {.o = o, .etag = etag};
  const struct jobs_outcome w = {.kind = &api_kind_certificate,
                                 .call = &call,
                                 .name = name,
                                 .now_us = now_us,
                                 .edit = outcome_edit,
                                 .data = &at};
  return jobs_outcome_write(api, &w, err);
}

void ocsp_rounds_clear(struct ocsp_rounds *r) {
  for (size_t i = 0; i < r->n_unused; i++)
    free(r->unused[i]);
  free(r->unused);
  memset(r, 0, sizeof(*r));
}

static int name_cmp(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Whether r knew name unused at revision. */
static int known_unused(const struct ocsp_rounds *r, int64_t revision, const char *name) {
  return r != NULL && r->revision == revision && r->n_unused > 0 &&
         bsearch(&name, r->unused, r->n_unused, sizeof(*r->unused), name_cmp) != NULL;
}

/* Records the names of rows whose used[] is 0, in row (name) order. */
static void rounds_record(struct ocsp_rounds *r, int64_t revision, const struct store_row *rows,
                          const int *used, size_t n) {
  ocsp_rounds_clear(r);
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    k += used[i] == 0;
  if (k == 0 || (r->unused = calloc(k, sizeof(*r->unused))) == NULL)
    return;
  for (size_t i = 0; i < n; i++) {
    if (used[i] != 0)
      continue;
    if ((r->unused[r->n_unused] = strdup(rows[i].name)) == NULL)
      break;
    r->n_unused++;
  }
  r->revision = revision;
}

/* WatchEvents hears of a change of what the responder says (good,
 * revoked, unknown) and of fetches that begin to fail. */
static void ocsp_event(struct api *api, const char *name, const Tlsplane__V1__Certificate *was,
                       const struct outcome *o) {
  char reason[256];
  const char *now = o->ok ? certinfo_ocsp_status_name(o->info.status) : NULL;
  if (now != NULL && strcmp(now, was->ocsp_cert_status) != 0)
    snprintf(reason, sizeof(reason), "OCSP status %s -> %s",
             was->ocsp_cert_status[0] ? was->ocsp_cert_status : "none", now);
  else if (!o->ok && was->ocsp_fetch_failures == 0)
    snprintf(reason, sizeof(reason), "OCSP fetches fail: %.200s", o->error);
  else
    return;
  const struct events_event e = {
      .type = TLSPLANE__V1__EVENT_TYPE__OCSP_CHANGED, .resource = name, .reason = reason};
  events_publish(api->events, &e);
}

/* A certificate's fetch, handed to a fetch thread. */
struct fetch_task {
  struct api *api;
  char *name;
  char *etag;                   /* as listed: the outcome is written only over this */
  Tlsplane__V1__Certificate *c; /* as listed */
};

static void fetch_task_free(void *data) {
  struct fetch_task *t = data;
  free(t->name);
  free(t->etag);
  if (t->c != NULL)
    protobuf_c_message_free_unpacked(&t->c->base, NULL);
  free(t);
}

/* Whether certificate name still has etag (a fetch of it that ended
 * after the round listed it wrote another). */
static int unchanged(struct api *api, const char *name, const char *etag) {
  struct store_txn *txn;
  struct store_row row = {0};
  struct tp_err err = {0};
  if (store_begin(api->store, 0, &txn, &err) != 0)
    return 1; /* store_outcome's own check decides */
  int same = store_get(txn, api_kind_certificate.kind, name, 0, &row, &err) == 0 &&
             strcmp(row.etag, etag) == 0;
  store_rollback(txn);
  store_row_clear(&row);
  return same;
}

/* Fetches, then writes the outcome in its own write transaction (none
 * when the server stops meanwhile). */
static void fetch_task_run(void *data, const atomic_int *stop) {
  struct fetch_task *t = data;
  struct api *api = t->api;
  const Tlsplane__V1__Certificate *c = t->c;
  struct tp_err err = {0};
  if (!unchanged(api, t->name, t->etag))
    return; /* the next round lists it again with its new schedule */
  int64_t now_us = pb_now_us();
  struct outcome o;
  fetch_one(c, (time_t)(now_us / 1000000), stop, &o);
  if (atomic_load(stop)) {
    free(o.der);
    return;
  }
  if (o.ok && o.info.status == V_OCSP_CERTSTATUS_REVOKED)
    log_warn("jobs", "OCSP: %s is revoked, says %s", t->name, c->ocsp_responder_url);
  else if (!o.ok)
    log_warn("jobs", "OCSP for %s from %s: %s", t->name, c->ocsp_responder_url, o.error);
  int rc = store_outcome(api, t->name, t->etag, &o, now_us, &err);
  if (rc < 0 && o.ok) {
    /* A response the certificate cannot take (a context using it no
     * longer builds with it) is a failed fetch: retried after the
     * back-off, not on every round. */
    log_warn("jobs", "OCSP for %s: storing the response: %s", t->name, err.msg);
    o.ok = 0;
    snprintf(o.error, sizeof(o.error), "storing the response: %.900s", err.msg);
    rc = store_outcome(api, t->name, t->etag, &o, now_us, &err);
  }
  if (rc < 0)
    log_warn("jobs", "OCSP for %s: storing the outcome: %s", t->name, err.msg);
  if (rc > 0)
    ocsp_event(api, t->name, c, &o);
  free(o.der);
}

int ocsp_refresh_due(struct api *api, struct ocsp_rounds *r, struct jobs *jobs, int64_t now_us) {
  struct tp_err err = {0};
  struct store_txn *txn;
  struct store_row *rows = NULL;
  size_t n = 0;
  if (jobs_list_due(api->store, api_kind_certificate.kind, JOBS_DUE_WORK, now_us, 0, &rows, &n,
                    &err) != 0)
    goto failed;
  /* Which are used for stapling, read in one transaction; the fetches
   * run after it, on the fetch threads (none is held across the
   * network). */
  if (store_begin(api->store, 0, &txn, &err) != 0) {
    store_rows_free(rows, n);
    goto failed;
  }
  int64_t revision = store_txn_revision(txn);
  int *used = calloc(n ? n : 1, sizeof(*used));
  for (size_t i = 0; used != NULL && i < n; i++) {
    if (known_unused(r, revision, rows[i].name))
      continue;
    used[i] = used_for_stapling(txn, rows[i].name, &err);
    if (used[i] < 0)
      log_warn("jobs", "OCSP for %s: %s", rows[i].name, err.msg);
  }
  store_rollback(txn);
  if (r != NULL && used != NULL)
    rounds_record(r, revision, rows, used, n);
  int queued = 0;
  for (size_t i = 0; used != NULL && i < n; i++) {
    if (used[i] <= 0)
      continue; /* asked for again once a stapling context uses it */
    ProtobufCMessage *m = api_decode_row(&api_kind_certificate, &rows[i], &err);
    if (m == NULL) {
      log_warn("jobs", "OCSP for %s: %s", rows[i].name, err.msg);
      continue;
    }
    const Tlsplane__V1__Certificate *c = (const Tlsplane__V1__Certificate *)m;
    /* The row's due time is the sooner of its next fetch and its renewal
     * (issuance.c): only a fetch that is due itself goes on. */
    if (c->ocsp_next_attempt_time == NULL || pb_timestamp_us(c->ocsp_next_attempt_time) > now_us) {
      protobuf_c_message_free_unpacked(m, NULL);
      continue;
    }
    struct fetch_task *t = calloc(1, sizeof(*t));
    if (t == NULL || (t->name = strdup(rows[i].name)) == NULL ||
        (t->etag = strdup(rows[i].etag)) == NULL) {
      if (t != NULL)
        fetch_task_free(t);
      protobuf_c_message_free_unpacked(m, NULL);
      continue;
    }
    t->api = api;
    t->c = (Tlsplane__V1__Certificate *)m;
    /* -EBUSY: its fetch still runs; the outcome sets the next attempt. */
    if (jobs_fetch_submit(jobs, t->name, fetch_task_run, t, fetch_task_free) == 0)
      queued++;
    else
      fetch_task_free(t);
  }
  free(used);
  store_rows_free(rows, n);
  return queued;
failed:
  log_warn("jobs", "OCSP refresh: %s", err.msg);
  return -1;
}
