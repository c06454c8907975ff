/* The server's /metrics page (see metrics.h). Written into a memory
 * stream, one family after another, each with its HELP and TYPE. */
#include "metrics_text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pb.h"
#include "prom.h"
#include "serving.h"
#include "store.h"
#include "tlsplane/v1/agent.pb-c.h"
#include "tlsplane/v1/certificate.pb-c.h"
#include "tlsplane/v1/revocation_list.pb-c.h"

static const char *const code_names[] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

static void rpc_count(const char *method, int transport, grpc_status_code code, unsigned long n,
                      void *data) {
  FILE *f = data;
  fputs("tlsplane_rpc_calls_total{method=\"", f);
  prom_label(f, method);
  fprintf(f, "\",transport=\"%s\",code=\"%s\"} %lu\n",
          transport == RPC_TRANSPORT_GRPC ? "grpc" : "connect",
          (unsigned)code < sizeof(code_names) / sizeof(code_names[0]) ? code_names[code]
                                                                      : "UNKNOWN",
          n);
}

static void rollout(FILE *f, struct metrics_source *src, int64_t revision, int *errors) {
  Tlsplane__V1__Rollout *r = NULL;
  struct tp_err err = {.status = 0};
  if (src->hub == NULL || hub_rollout(src->hub, 0, &r, &err) != 0) {
    (*errors)++;
    return;
  }
  prom_family(f, "tlsplane_agents_connected", "gauge", "Agents with a stream open to this server.");
  fprintf(f, "tlsplane_agents_connected %d\n", r->agents_connected);
  prom_family(f, "tlsplane_agents_applied", "gauge",
              "Connected agents that serve the configuration of the revision (or a later one).");
  fprintf(f, "tlsplane_agents_applied{revision=\"%lld\"} %d\n", (long long)revision,
          r->agents_applied);
  prom_family(f, "tlsplane_agents_pending", "gauge",
              "Connected agents still applying the revision.");
  fprintf(f, "tlsplane_agents_pending{revision=\"%lld\"} %zu\n", (long long)revision,
          r->n_agents_pending);
  prom_family(f, "tlsplane_agents_failed", "gauge",
              "Connected agents that refused (nacked) the revision or could not be sent it.");
  fprintf(f, "tlsplane_agents_failed{revision=\"%lld\"} %zu\n", (long long)revision,
          r->n_agents_failed);
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void latency(FILE *f, struct hub *hub) {
  struct hub_latency l;
  hub_latency(hub, &l);
  prom_family(f, "tlsplane_push_latency_seconds", "histogram",
              "From a revision's commit to each agent's ack of it.");
  for (size_t b = 0; b < HUB_LATENCY_BUCKETS; b++)
    fprintf(f, "tlsplane_push_latency_seconds_bucket{le=\"%g\"} %lu\n", hub_latency_bounds_s[b],
            l.le[b]);
  fprintf(f, "tlsplane_push_latency_seconds_bucket{le=\"+Inf\"} %lu\n", l.count);
  fprintf(f, "tlsplane_push_latency_seconds_sum %.6f\n", l.sum_s);
  fprintf(f, "tlsplane_push_latency_seconds_count %lu\n", l.count);
}

/* Seconds since the epoch of a Timestamp; 0: unset. */
static long long seconds(const Google__Protobuf__Timestamp *t) {
  return t != NULL ? (long long)t->seconds : 0;
}

/* Who serves each certificate costs a read of every agent record per
 * certificate: past this many certificates x agents, the family is left
 * out (GetServing answers for one certificate at any size). */
#define SERVING_MAX_PAIRS 200000

/* For each certificate, the agents that serve it as it is now (connected,
 * current) on each listener. */
static void serving(FILE *f, struct api *api, const struct store_row *rows, size_t n, int *errors) {
  Tlsplane__V1__Rollout *r = NULL;
  struct tp_err err = {.status = 0};
  size_t agents = 0;
  if (api->hub != NULL && hub_rollout(api->hub, 0, &r, &err) == 0) {
    agents = (size_t)r->agents_connected;
    protobuf_c_message_free_unpacked(&r->base, NULL);
  }
  prom_family(f, "tlsplane_certificate_served", "gauge",
              "1 for each listener and connected agent that serves the certificate as it is now.");
  if (n * (agents + 1) > SERVING_MAX_PAIRS) {
    fprintf(f, "# left out: %zu certificates x %zu agents; ask GetServing per certificate\n", n,
            agents);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    Tlsplane__V1__Serving *s = NULL;
    if (serving_get(api, rows[i].name, &s, &err) != 0) {
      (*errors)++;
      continue;
    }
    for (size_t l = 0; l < s->n_listeners; l++)
      for (size_t a = 0; a < s->listeners[l]->n_agents; a++) {
        const Tlsplane__V1__ServingAgent *sa = s->listeners[l]->agents[a];
        if (!sa->connected || !sa->current)
          continue;
        fputs("tlsplane_certificate_served{certificate=\"", f);
        prom_label(f, rows[i].name);
        fputs("\",listener=\"", f);
        prom_label(f, s->listeners[l]->listener);
        fputs("\",agent=\"", f);
        prom_label(f, sa->agent);
        fputs("\"} 1\n", f);
      }
    protobuf_c_message_free_unpacked(&s->base, NULL);
  }
}

/* What the stored OCSP responses say, and how the server's fetches go
 * (ocsp_fetch.h). */
static void ocsp_families(FILE *f, const struct store_row *rows, size_t n) {
  prom_family(f, "tlsplane_certificate_ocsp_status", "gauge",
              "1 for the status (good, revoked, unknown) the stored OCSP response of each "
              "certificate gives; a revoked one is not stapled unless the context says so.");
  for (size_t i = 0; i < n; i++) {
    Tlsplane__V1__Certificate *c =
        tlsplane__v1__certificate__unpack(NULL, rows[i].data_len, rows[i].data);
    if (c == NULL)
      continue;
    if (c->ocsp_cert_status[0] != '\0') {
      fputs("tlsplane_certificate_ocsp_status{certificate=\"", f);
      prom_label(f, rows[i].name);
      fputs("\",status=\"", f);
      prom_label(f, c->ocsp_cert_status);
      fputs("\"} 1\n", f);
    }
    tlsplane__v1__certificate__free_unpacked(c, NULL);
  }
  prom_family(f, "tlsplane_certificate_ocsp_fetch_failures", "gauge",
              "Failed OCSP fetches since the last success, for each certificate whose responder "
              "the server asks.");
  for (size_t i = 0; i < n; i++) {
    Tlsplane__V1__Certificate *c =
        tlsplane__v1__certificate__unpack(NULL, rows[i].data_len, rows[i].data);
    if (c == NULL)
      continue;
    if (c->ocsp_responder_url[0] != '\0') {
      fputs("tlsplane_certificate_ocsp_fetch_failures{certificate=\"", f);
      prom_label(f, rows[i].name);
      fprintf(f, "\"} %d\n", c->ocsp_fetch_failures);
    }
    tlsplane__v1__certificate__free_unpacked(c, NULL);
  }
}

/* The certificates the server issued: when each renews, and how many
 * attempts in a row failed. */
static void renewals(FILE *f, const struct store_row *rows, size_t n) {
  static const char *const families[][2] = {
      {"tlsplane_certificate_renewal_time_seconds",
       "When the server renews each certificate it issued (seconds since the epoch)."},
      {"tlsplane_certificate_renewal_failures",
       "Failed renewal attempts of each issued certificate since its last renewal."},
  };
  for (size_t k = 0; k < 2; k++) {
    prom_family(f, families[k][0], "gauge", families[k][1]);
    for (size_t i = 0; i < n; i++) {
      Tlsplane__V1__Certificate *c =
          tlsplane__v1__certificate__unpack(NULL, rows[i].data_len, rows[i].data);
      if (c == NULL)
        continue;
      if (c->issuance != NULL) {
        fprintf(f, "%s{certificate=\"", families[k][0]);
        prom_label(f, rows[i].name);
        if (k == 0)
          fprintf(f, "\"} %lld\n", seconds(c->renewal_time));
        else
          fprintf(f, "\"} %d\n", (int)c->renewal_failures);
      }
      tlsplane__v1__certificate__free_unpacked(c, NULL);
    }
  }
}

static void certificates(FILE *f, struct api *api, int *errors) {
  struct store *store = api->store;
  struct store_txn *txn = NULL;
  struct store_row *rows = NULL;
  size_t n = 0;
  struct tp_err err = {.status = 0};
  struct store_query q = {.kind = "Certificate"};
  if (store_begin(store, 0, &txn, &err) != 0 || store_list(txn, &q, &rows, &n, &err) != 0) {
    store_rollback(txn);
    (*errors)++;
    return;
  }
  store_rollback(txn);
  prom_family(f, "tlsplane_certificate_not_after_seconds", "gauge",
              "When each certificate's leaf expires (seconds since the epoch); not for one "
              "whose request is pending with no chain yet.");
  for (size_t i = 0; i < n; i++) {
    Tlsplane__V1__Certificate *c =
        tlsplane__v1__certificate__unpack(NULL, rows[i].data_len, rows[i].data);
    if (c == NULL) {
      (*errors)++;
      continue;
    }
    if (c->not_after == NULL) { /* no leaf yet (CreateCertificateRequest) */
      tlsplane__v1__certificate__free_unpacked(c, NULL);
      continue;
    }
    fputs("tlsplane_certificate_not_after_seconds{certificate=\"", f);
    prom_label(f, rows[i].name);
    fputs("\",serial=\"", f);
    prom_label(f, c->serial_number);
    fputs("\",sha256=\"", f);
    prom_label(f, c->sha256_fingerprint);
    fprintf(f, "\"} %lld\n", seconds(c->not_after));
    tlsplane__v1__certificate__free_unpacked(c, NULL);
  }
  prom_family(f, "tlsplane_certificate_ocsp_next_update_seconds", "gauge",
              "When each certificate's stapled OCSP response stops being valid (seconds since the "
              "epoch); only certificates with one.");
  for (size_t i = 0; i < n; i++) {
    Tlsplane__V1__Certificate *c =
        tlsplane__v1__certificate__unpack(NULL, rows[i].data_len, rows[i].data);
    if (c == NULL)
      continue;
    if (c->ocsp_next_update != NULL) {
      fputs("tlsplane_certificate_ocsp_next_update_seconds{certificate=\"", f);
      prom_label(f, rows[i].name);
      fprintf(f, "\"} %lld\n", seconds(c->ocsp_next_update));
    }
    tlsplane__v1__certificate__free_unpacked(c, NULL);
  }
  ocsp_families(f, rows, n);
  renewals(f, rows, n);
  serving(f, api, rows, n, errors);
  store_rows_free(rows, n);
}

/* Each CRL's next update, and whether it is past it (stale). */
static void revocation_lists(FILE *f, struct api *api, int *errors) {
  struct store_txn *txn = NULL;
  struct store_row *rows = NULL;
  size_t n = 0;
  struct tp_err err = {.status = 0};
  struct store_query q = {.kind = "RevocationList"};
  if (store_begin(api->store, 0, &txn, &err) != 0 || store_list(txn, &q, &rows, &n, &err) != 0) {
    store_rollback(txn);
    (*errors)++;
    return;
  }
  store_rollback(txn);
  long long now = (long long)(pb_now_us() / 1000000);
  for (int pass = 0; pass < 2; pass++) {
    if (pass == 0)
      prom_family(f, "tlsplane_revocation_list_next_update_seconds", "gauge",
                  "When each CRL's next update is due (seconds since the epoch); only CRLs with "
                  "one.");
    else
      prom_family(f, "tlsplane_revocation_list_stale", "gauge",
                  "1 when the CRL is past its next update (agents keep enforcing it), else 0.");
    for (size_t i = 0; i < n; i++) {
      Tlsplane__V1__RevocationList *rl =
          tlsplane__v1__revocation_list__unpack(NULL, rows[i].data_len, rows[i].data);
      if (rl == NULL) {
        *errors += pass == 0;
        continue;
      }
      if (rl->next_update != NULL) {
        fputs(pass == 0 ? "tlsplane_revocation_list_next_update_seconds{revocation_list=\""
                        : "tlsplane_revocation_list_stale{revocation_list=\"",
              f);
        prom_label(f, rows[i].name);
        fprintf(f, "\"} %lld\n",
                pass == 0 ? seconds(rl->next_update) : (long long)(seconds(rl->next_update) < now));
      }
      tlsplane__v1__revocation_list__free_unpacked(rl, NULL);
    }
  }
  store_rows_free(rows, n);
}

char *metrics_text(void *data) {
  struct metrics_source *src = data;
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (f == NULL)
    return NULL;
  int errors = 0;
  int64_t revision = store_revision(src->api->store);
  prom_family(f, "tlsplane_revision", "gauge", "The store's current revision.");
  fprintf(f, "tlsplane_revision %lld\n", (long long)revision);
  if (src->hub != NULL) {
    rollout(f, src, revision, &errors);
    latency(f, src->hub);
  }
  prom_family(f, "tlsplane_rpc_calls_total", "counter",
              "API calls finished, by method, transport (grpc, or connect: the JSON gateway) and "
              "status code.");
  if (src->rpc != NULL)
    rpc_server_counts(src->rpc, rpc_count, f);
  certificates(f, src->api, &errors);
  revocation_lists(f, src->api, &errors);
  prom_family(f, "tlsplane_metrics_errors", "gauge",
              "Sections of this page that could not be read this time.");
  fprintf(f, "tlsplane_metrics_errors %d\n", errors);
  if (fclose(f) != 0) {
    free(buf);
    return NULL;
  }
  return buf;
}
