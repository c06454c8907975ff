/* CRL freshness (see crl_refresh.h): fetching distribution points with
 * libcurl, checking what comes back against the CRL held, and the
 * in-memory record of each list's fetches. */
#include "crl_refresh.h"

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "certinfo.h"
#include "events.h"
#include "http_fetch.h"
#include "jobs.h"
#include "log.h"
#include "pb.h"
#include "tlsplane/v1/trust_bundle.pb-c.h"

/* What the fetches of one list found since the write whose etag it
 * holds; a list written since (another etag) starts afresh. */
struct fetch_state {
  char *name;
  char *etag;
  int64_t last_us;
  int64_t next_us;
  char *error; /* "" after a success */
  int failures;
};

/* A round asks the store only when something may be due: a write since
 * the last query, a recorded fetch due, or this long since the last query
 * (lists whose stored time comes without any of these: after a restart). */
#define REQUERY_US (INT64_C(60) * 1000000)

struct crl_refresh {
  pthread_mutex_t lock;
  int64_t retry_base_ms;
  /* The job thread's alone: when it last queried the store, at which
   * revision (-1: never). */
  int64_t query_revision;
  int64_t query_us;
  struct fetch_state *items; /* under lock */
  size_t n, cap;
};

struct crl_refresh *crl_refresh_new(int64_t retry_base_ms) {
  struct crl_refresh *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return NULL;
  r->retry_base_ms = retry_base_ms > 0 ? retry_base_ms : CRL_RETRY_BASE_MS;
  r->query_revision = -1;
  pthread_mutex_init(&r->lock, NULL);
  return r;
}

static void state_clear(struct fetch_state *s) {
  free(s->name);
  free(s->etag);
  free(s->error);
}

void crl_refresh_free(struct crl_refresh *r) {
  if (r == NULL)
    return;
  for (size_t i = 0; i < r->n; i++)
    state_clear(&r->items[i]);
  free(r->items);
  pthread_mutex_destroy(&r->lock);
  free(r);
}

/* Under lock. */
static struct fetch_state *state_find(struct crl_refresh *r, const char *name) {
  for (size_t i = 0; i < r->n; i++)
    if (strcmp(r->items[i].name, name) == 0)
      return &r->items[i];
  return NULL;
}

/* Records a fetch of `name` as written with `etag`. Out of memory: not
 * recorded (the list is fetched again next round). */
static void state_set(struct crl_refresh *r, const char *name, const char *etag, int64_t last_us,
                      int64_t next_us, const char *error, int failures) {
  char *e = strdup(etag), *msg = strdup(error);
  if (e == NULL || msg == NULL)
    goto oom;
  pthread_mutex_lock(&r->lock);
  struct fetch_state *s = state_find(r, name);
  if (s == NULL) {
    char *n = strdup(name);
    if (n == NULL || (r->n == r->cap && r->cap > SIZE_MAX / 2 / sizeof(*r->items))) {
      free(n);
      pthread_mutex_unlock(&r->lock);
      goto oom;
    }
    if (r->n == r->cap) {
      size_t cap = r->cap ? 2 * r->cap : 8;
      struct fetch_state *items = realloc(r->items, cap * sizeof(*items));
      if (items == NULL) {
        free(n);
        pthread_mutex_unlock(&r->lock);
        goto oom;
      }
      r->items = items;
      r->cap = cap;
    }
    s = &r->items[r->n++];
    *s = (struct fetch_state){.name = n};
  }
  free(s->etag);
  free(s->error);
  s->etag = e;
  s->error = msg;
  s->last_us = last_us;
  s->next_us = next_us;
  s->failures = failures;
  pthread_mutex_unlock(&r->lock);
  return;
oom:
  free(e);
  free(msg);
}

void crl_refresh_forget(struct crl_refresh *r, const char *name) {
  if (r == NULL)
    return;
  pthread_mutex_lock(&r->lock);
  struct fetch_state *s = state_find(r, name);
  if (s != NULL) {
    state_clear(s);
    *s = r->items[--r->n];
  }
  pthread_mutex_unlock(&r->lock);
}

void crl_refresh_decorate(struct crl_refresh *r, Tlsplane__V1__RevocationList *rl) {
  int64_t now = pb_now_us();
  rl->stale = rl->next_update != NULL && pb_timestamp_us(rl->next_update) < now;
  if (r == NULL)
    return;
  pthread_mutex_lock(&r->lock);
  const struct fetch_state *s = state_find(r, rl->name);
  if (s != NULL && strcmp(s->etag, rl->etag) == 0) {
    ProtobufCMessage *m = &rl->base;
    if (pb_timestamp_set(m, "last_fetch_time", s->last_us) == 0 &&
        pb_timestamp_set(m, "next_fetch_time", s->next_us) == 0 &&
        pb_string_set(m, "last_fetch_error", s->error) == 0)
      rl->fetch_failures = s->failures;
  }
  pthread_mutex_unlock(&r->lock);
}

int64_t crl_refresh_schedule(int64_t now_us, int64_t interval_ms, int64_t next_update_us) {
  /* Already past it: due now (a job's write of a stale CRL: the retries
   * that follow are the in-memory back-off's, which only a due row
   * reaches). */
  if (next_update_us != 0 && next_update_us <= now_us)
    return now_us;
  int64_t next = pb_sat_add(now_us, pb_sat_mul(interval_ms, 1000));
  if (next_update_us != 0 && next_update_us < next)
    next = next_update_us;
  return next;
}

static int64_t backoff_ms(const struct crl_refresh *r, int failures) {
  return jobs_backoff(r->retry_base_ms, CRL_RETRY_MAX_MS, failures);
}

int crl_refresh_url_check(const char *url, const char *field, struct tp_err *err) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *user = NULL;
  int rc = 0;
  if (u == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || host[0] == '\0')
    rc = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                    "%s: not a URL (want http://host/path or https://host/path)", field);
  else if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)
    rc = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                    "%s: only http:// and https:// URLs are fetched, not %s://", field, scheme);
  /* The URL is shown and logged: it must carry no credential. */
  else if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK)
    rc = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                    "%s: a user or password in the URL is not accepted (it would be shown)", field);
  curl_free(user);
  curl_free(scheme);
  curl_free(host);
  curl_url_cleanup(u);
  return rc;
}

char *crl_refresh_idp_url(X509_CRL *crl) {
  ISSUING_DIST_POINT *idp = X509_CRL_get_ext_d2i(crl, NID_issuing_distribution_point, NULL, NULL);
  char *url = NULL;
  if (idp != NULL && idp->distpoint != NULL && idp->distpoint->type == 0) {
    GENERAL_NAMES *names = idp->distpoint->name.fullname;
    for (int i = 0; url == NULL && i < sk_GENERAL_NAME_num(names); i++) {
      const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
      if (gn->type != GEN_URI)
        continue;
      const char *s = (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
      int len = ASN1_STRING_length(gn->d.uniformResourceIdentifier);
      struct tp_err ignored = {0};
      char *candidate = strndup(s, (size_t)len);
      if (candidate != NULL && strlen(candidate) == (size_t)len &&
          crl_refresh_url_check(candidate, "", &ignored) == 0)
        url = candidate;
      else
        free(candidate);
    }
  }
  ISSUING_DIST_POINT_free(idp);
  ERR_clear_error();
  return url;
}

/* GETs url into *b (caller clears it): a 2xx or 3xx answer with a body. */
static int fetch(const char *url, const atomic_int *stop, struct http_fetch_result *b,
                 struct tp_err *err) {
  const struct http_fetch_opts o = {.protocols = "http,https",
                                    .max_redirects = 3,
                                    .timeout_ms = CRL_FETCH_TIMEOUT_MS,
                                    .max_bytes = CRL_FETCH_MAX,
                                    .stop = stop};
  if (http_fetch(url, &o, b, err) != 0) {
    char prefix[2100];
    snprintf(prefix, sizeof(prefix), "GET %.2048s: ", url);
    tp_err_prefix(err, prefix);
    return -1;
  }
  if (b->status >= 400)
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "GET %s: HTTP %ld", url, b->status);
  if (b->len == 0)
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "GET %s: empty response", url);
  return 0;
}

/* The fetched CRL, PEM or DER. */
static X509_CRL *body_crl(const struct http_fetch_result *b, struct tp_err *err) {
  X509_CRL *crl = NULL;
  if (b->len >= 10 && memcmp(b->body, "-----BEGIN", 10) == 0) {
    if (strlen((const char *)b->body) != b->len) {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "the fetched CRL: a NUL byte in PEM");
      return NULL;
    }
    if (certinfo_crl_read((const char *)b->body, "the fetched CRL", &crl, err) != 0)
      return NULL;
    return crl;
  }
  const unsigned char *p = b->body;
  crl = d2i_X509_CRL(NULL, &p, (long)b->len);
  if (crl == NULL || p != b->body + b->len) {
    X509_CRL_free(crl);
    ERR_clear_error();
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "the fetched CRL: neither a DER nor a PEM CRL");
    return NULL;
  }
  return crl;
}

/* Whether crl's signature verifies with a certificate of some trust
 * bundle named as its issuer. */
static int signed_by_a_trusted_issuer(struct api *api, X509_CRL *crl, struct tp_err *err) {
  struct store_txn *txn = NULL;
  struct store_row *rows = NULL;
  size_t n = 0;
  struct store_query q = {.kind = api_kind_trust_bundle.kind};
  if (store_begin(api->store, 0, &txn, err) != 0)
    return -1;
  int rc = store_list(txn, &q, &rows, &n, err);
  store_rollback(txn);
  if (rc != 0)
    return -1;
  int named = 0, verified = 0;
  const X509_NAME *issuer = X509_CRL_get_issuer(crl);
  for (size_t i = 0; i < n && !verified; i++) {
    struct tp_err ignored = {0};
    Tlsplane__V1__TrustBundle *tb =
        (Tlsplane__V1__TrustBundle *)api_decode_row(&api_kind_trust_bundle, &rows[i], &ignored);
    STACK_OF(X509) *certs = NULL;
    if (tb != NULL && tb->ca_pem[0] != '\0' &&
        certinfo_certs_read(tb->ca_pem, strlen(tb->ca_pem), "ca_pem", &certs, &ignored) == 0) {
      for (int k = 0; k < sk_X509_num(certs) && !verified; k++) {
        X509 *x = sk_X509_value(certs, k);
        if (X509_NAME_cmp(X509_get_subject_name(x), issuer) != 0)
          continue;
        named = 1;
        EVP_PKEY *key = X509_get0_pubkey(x);
        verified = key != NULL && X509_CRL_verify(crl, key) == 1;
      }
    }
    certinfo_certs_free(certs);
    if (tb != NULL)
      protobuf_c_message_free_unpacked(&tb->base, NULL);
  }
  store_rows_free(rows, n);
  ERR_clear_error();
  if (verified)
    return 0;
  return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                    named ? "the fetched CRL's signature does not verify with its issuer's "
                            "certificate (trust bundles)"
                          : "no trust bundle holds the CRL issuer's certificate: the fetched CRL's "
                            "signature cannot be verified");
}

/* Checks the fetched CRL against the one held: same issuer, a trusted
 * signature, not older. *same: the very same CRL. */
static int fetched_check(struct api *api, X509_CRL *got, X509_CRL *held, int *same,
                         struct tp_err *err) {
  unsigned char *a = NULL, *b = NULL;
  int la = i2d_X509_CRL(got, &a), lb = i2d_X509_CRL(held, &b);
  *same = la > 0 && la == lb && memcmp(a, b, (size_t)la) == 0;
  OPENSSL_free(a);
  OPENSSL_free(b);
  if (*same)
    return 0;
  if (X509_NAME_cmp(X509_CRL_get_issuer(got), X509_CRL_get_issuer(held)) != 0) {
    char *g = certinfo_name(X509_CRL_get_issuer(got)),
         *h = certinfo_name(X509_CRL_get_issuer(held));
    tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "the fetched CRL is issued by %s, not by %s",
               g ? g : "?", h ? h : "?");
    free(g);
    free(h);
    return -1;
  }
  if (signed_by_a_trusted_issuer(api, got, err) != 0)
    return -1;
  /* An older CRL (a replay) would forget the revocations made since. */
  time_t tg, th;
  if (certinfo_time(X509_CRL_get0_lastUpdate(got), &tg) != 0 ||
      certinfo_time(X509_CRL_get0_lastUpdate(held), &th) != 0)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "the fetched CRL: invalid thisUpdate");
  ASN1_INTEGER *ng = X509_CRL_get_ext_d2i(got, NID_crl_number, NULL, NULL);
  ASN1_INTEGER *nh = X509_CRL_get_ext_d2i(held, NID_crl_number, NULL, NULL);
  int older = tg < th || (ng != NULL && nh != NULL && ASN1_INTEGER_cmp(ng, nh) < 0);
  ASN1_INTEGER_free(ng);
  ASN1_INTEGER_free(nh);
  ERR_clear_error();
  if (older)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "the fetched CRL is older than the one held (thisUpdate or cRLNumber)");
  return 0;
}

/* Stores the fetched CRL (PEM) as a new version of `name` written with
 * etag. *etag_out (caller frees) receives the new etag. */
static int store_fetched(struct api *api, const char *name, const char *etag, X509_CRL *crl,
                         int64_t now_us, char **etag_out, struct tp_err *err) {
  const struct rpc_call_info call = {
      .method = CRL_REFRESH_METHOD, .peer = "local", .actor = "system", .principal = ""};
  char *pem = NULL;
  BIO *bio = BIO_new(BIO_s_mem());
  if (bio != NULL && PEM_write_bio_X509_CRL(bio, crl)) {
    char *data;
    long len = BIO_get_mem_data(bio, &data);
    pem = strndup(data, (size_t)len);
  }
  BIO_free(bio);
  if (pem == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  struct store_txn *txn;
  if (store_begin(api->store, 1, &txn, err) != 0) {
    free(pem);
    return -1;
  }
  ProtobufCMessage *old = NULL, *res = NULL;
  struct store_row row = {0};
  int rc = api_read(txn, &api_kind_revocation_list, name, 0, &old, &row, err);
  if (rc == 0 && (res = pb_clone(old)) == NULL)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  struct api_op op = {.api = api,
                      .kind = &api_kind_revocation_list,
                      .txn = txn,
                      .call = &call,
                      .old = old,
                      .old_row = &row,
                      .now = (time_t)(now_us / 1000000)};
  if (rc == 0 && (pb_string_set(res, "crl_pem", pem) != 0 ||
                  pb_timestamp_set(res, "last_fetch_time", now_us) != 0))
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (rc == 0)
    rc = api_write(&op, res, etag, "refresh", err);
  if (rc == 0)
    rc = store_commit(txn, NULL, err);
  else
    store_rollback(txn);
  if (rc == 0 && (*etag_out = strdup(((Tlsplane__V1__RevocationList *)res)->etag)) == NULL)
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (old != NULL)
    protobuf_c_message_free_unpacked(old, NULL);
  if (res != NULL)
    protobuf_c_message_free_unpacked(res, NULL);
  store_row_clear(&row);
  free(pem);
  return rc;
}

/* Fetches one list and records what came of it (nothing when stopped). */
static void refresh_one(struct api *api, const Tlsplane__V1__RevocationList *rl, int failures,
                        const atomic_int *stop, int64_t now_us) {
  struct crl_refresh *r = api->crl_refresh;
  struct tp_err err = {0};
  struct http_fetch_result b = {0};
  X509_CRL *got = NULL, *held = NULL;
  char *etag = NULL;
  int same = 0;
  int rc = fetch(rl->distribution_point, stop, &b, &err);
  if (atomic_load(stop))
    goto done; /* the server stops: not a failure of the endpoint's */
  if (rc == 0 && (got = body_crl(&b, &err)) == NULL)
    rc = -1;
  if (rc == 0)
    rc = certinfo_crl_read(rl->crl_pem, "crl_pem", &held, &err);
  if (rc == 0)
    rc = fetched_check(api, got, held, &same, &err);
  if (rc == 0 && !same) {
    rc = store_fetched(api, rl->name, rl->etag, got, now_us, &etag, &err);
    if (rc == 0)
      log_info("crl", "%s: a new CRL from %s stored", rl->name, rl->distribution_point);
  }
  int64_t next_update = 0;
  const ASN1_TIME *nu = got != NULL ? X509_CRL_get0_nextUpdate(got) : NULL;
  time_t t;
  if (nu != NULL && certinfo_time(nu, &t) == 0)
    next_update = (int64_t)t * 1000000;
  /* Still past its next update: the issuer has not published yet. */
  if (rc == 0 && nu != NULL && next_update <= now_us) {
    char when[32];
    certinfo_time_format((time_t)(next_update / 1000000), when);
    rc = tp_err_set(&err, GRPC_STATUS_UNAVAILABLE,
                    "the distribution point serves a CRL past its nextUpdate (%s)", when);
  }
  const char *at = etag != NULL ? etag : rl->etag;
  if (rc == 0) {
    state_set(r, rl->name, at, now_us,
              crl_refresh_schedule(now_us, pb_duration_ms(rl->refresh_interval), next_update), "",
              0);
  } else {
    failures++;
    int64_t delay = backoff_ms(r, failures);
    log_warn("crl", "%s: %s (attempt %d, next in %lld ms)", rl->name, err.msg, failures,
             (long long)delay);
    /* The list agents enforce is past its nextUpdate and no newer one came:
     * WatchEvents hears of it at each failed attempt (as often as the
     * back-off allows). */
    if (rl->next_update != NULL && pb_timestamp_us(rl->next_update) <= now_us) {
      char reason[300];
      snprintf(reason, sizeof(reason), "past its nextUpdate; refresh failed: %.200s", err.msg);
      const struct events_event e = {
          .type = TLSPLANE__V1__EVENT_TYPE__CRL_STALE, .resource = rl->name, .reason = reason};
      events_publish(api->events, &e);
    }
    state_set(r, rl->name, at, now_us, pb_sat_add(now_us, delay * 1000), err.msg, failures);
  }
done:
  free(etag);
  http_fetch_result_clear(&b);
  X509_CRL_free(got);
  X509_CRL_free(held);
  ERR_clear_error();
}

/* A list's fetch, handed to a fetch thread. */
struct refresh_task {
  struct api *api;
  Tlsplane__V1__RevocationList *rl; /* as listed */
};

/* Whether the list `name`, read with etag, is due at now_us, by what the
 * fetches since that write recorded; *failures: the failures in a row
 * they counted. */
static int state_due(struct crl_refresh *r, const char *name, const char *etag, int64_t now_us,
                     int *failures) {
  pthread_mutex_lock(&r->lock);
  const struct fetch_state *s = state_find(r, name);
  int matches = s != NULL && strcmp(s->etag, etag) == 0;
  int later = matches && s->next_us > now_us;
  *failures = matches ? s->failures : 0;
  pthread_mutex_unlock(&r->lock);
  return !later;
}

static void refresh_task_run(void *data, const atomic_int *stop) {
  struct refresh_task *t = data;
  int64_t now_us = pb_now_us();
  int failures;
  /* Asked again now: a fetch of the list that ended after the round
   * looked may have recorded a later time (and another count). */
  if (state_due(t->api->crl_refresh, t->rl->name, t->rl->etag, now_us, &failures))
    refresh_one(t->api, t->rl, failures, stop, now_us);
}

static void refresh_task_free(void *data) {
  struct refresh_task *t = data;
  protobuf_c_message_free_unpacked(&t->rl->base, NULL);
  free(t);
}

int crl_refresh_run(struct api *api, struct jobs *jobs, int64_t now_us) {
  struct crl_refresh *r = api->crl_refresh;
  if (r == NULL)
    return 0;
  /* Due rows can only come from a write (a user's is due at once), from
   * a recorded fetch's time, or from the stored times of rows this
   * process has not seen fetched (after a restart). The rows whose stored
   * time has passed but whose recorded one has not are listed by every
   * query, so the store is not asked every tick for nothing. */
  int64_t revision = store_revision(api->store);
  int64_t soonest = INT64_MAX;
  pthread_mutex_lock(&r->lock);
  for (size_t i = 0; i < r->n; i++)
    if (r->items[i].next_us < soonest)
      soonest = r->items[i].next_us;
  pthread_mutex_unlock(&r->lock);
  if (revision == r->query_revision && now_us < soonest && now_us - r->query_us < REQUERY_US)
    return 0;
  struct tp_err err = {0};
  struct store_row *rows = NULL;
  size_t n = 0;
  if (jobs_list_due(api->store, api_kind_revocation_list.kind, JOBS_DUE_EXPIRE, now_us, 0, &rows,
                    &n, &err) != 0) {
    log_warn("crl", "CRL refresh: %s", err.msg);
    return -1;
  }
  r->query_revision = revision;
  r->query_us = now_us;
  int fetched = 0;
  for (size_t i = 0; i < n; i++) {
    /* The stored next_fetch_time has passed; what the fetches since the
     * row was written found may say later. */
    int failures;
    if (!state_due(r, rows[i].name, rows[i].etag, now_us, &failures))
      continue;
    Tlsplane__V1__RevocationList *rl =
        (Tlsplane__V1__RevocationList *)api_decode_row(&api_kind_revocation_list, &rows[i], &err);
    if (rl == NULL) {
      log_warn("crl", "%s: %s", rows[i].name, err.msg);
      continue;
    }
    struct refresh_task *t = NULL;
    if (rl->distribution_point[0] == '\0' || (t = malloc(sizeof(*t))) == NULL) {
      protobuf_c_message_free_unpacked(&rl->base, NULL);
      continue;
    }
    *t = (struct refresh_task){.api = api, .rl = rl};
    /* -EBUSY: its fetch is still running; its outcome decides the next. */
    if (jobs_fetch_submit(jobs, rl->name, refresh_task_run, t, refresh_task_free) == 0)
      fetched++;
    else
      refresh_task_free(t);
  }
  store_rows_free(rows, n);
  return fetched;
}
