/* ACME Renewal Information for certificates from ACME issuers (acme_ari.h). */
#include "acme_ari.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acme.h"
#include "jobs.h"
#include "log.h"
#include "pb.h"

static const struct rpc_call_info job_call = {
    .method = ACME_ARI_METHOD, .peer = "local", .actor = "system", .principal = ""};

int64_t acme_ari_check_time_us(const Tlsplane__V1__Certificate *c) {
  if (c->certificate_chain_pem == NULL || c->certificate_chain_pem[0] == '\0' ||
      c->acme_order == NULL || c->acme_order->renewal_info == NULL)
    return 0;
  int64_t t = pb_timestamp_us(c->acme_order->renewal_info->next_check_time);
  return t > 0 ? t : 1;
}

/* What one check found. */
struct outcome {
  int gone;                    /* the directory offers no renewalInfo (any more) */
  const char *why;             /* the failure; NULL after a success */
  struct acme_renewal_info ri; /* after a success */
  int64_t next_us;             /* the next check */
};

/* The delay before the next check: the CA's Retry-After (seconds; -1
 * none) within the bounds. */
static int64_t next_delay_ms(int64_t retry_after_s) {
  int64_t min_ms = jobs_env_positive("TLSPLANE_ACME_ARI_MIN_MS", ACME_ARI_RETRY_MIN_S * 1000LL);
  int64_t ms = retry_after_s < 0 ? ACME_ARI_RETRY_DEFAULT_S * 1000LL : retry_after_s * 1000;
  if (ms < min_ms)
    ms = min_ms;
  return ms > ACME_ARI_RETRY_MAX_S * 1000LL ? ACME_ARI_RETRY_MAX_S * 1000LL : ms;
}

/* A uniformly random moment in [start, end). */
static int64_t window_pick(int64_t start_us, int64_t end_us) {
  uint64_t r = 0;
  if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
    r = (uint64_t)start_us ^ (uint64_t)end_us; /* the RNG failed: any moment will do */
  return start_us + (int64_t)(r % (uint64_t)(end_us - start_us));
}

/* The renewal information after a check (o): a copy of was's with what
 * changed. Caller frees; NULL when out of memory. */
static Tlsplane__V1__AcmeRenewalInfo *info_make(const Tlsplane__V1__AcmeRenewalInfo *was,
                                                const char *cert_id, const struct outcome *o,
                                                int64_t now_us) {
  Tlsplane__V1__AcmeRenewalInfo *ri = (Tlsplane__V1__AcmeRenewalInfo *)pb_clone(&was->base);
  if (ri == NULL)
    return NULL;
  ProtobufCMessage *m = &ri->base;
  int ok = pb_string_set(m, "cert_id", cert_id != NULL ? cert_id : "") == 0 &&
           pb_string_set(m, "last_error", o->why != NULL ? o->why : "") == 0 &&
           pb_timestamp_set(m, "next_check_time", o->next_us) == 0;
  if (ok && o->why == NULL) {
    int64_t start = o->ri.start_us, end = o->ri.end_us;
    int64_t at = pb_timestamp_us(ri->renewal_time);
    /* The same window keeps its moment (RFC 9773 4.2: pick again only
     * when the window changed); a past window is renewed in now. */
    int same = pb_timestamp_us(ri->window_start) == start &&
               pb_timestamp_us(ri->window_end) == end && at >= start && at < end;
    if (end <= now_us)
      at = now_us;
    else if (!same)
      at = window_pick(start, end);
    ok = pb_timestamp_set(m, "window_start", start) == 0 &&
         pb_timestamp_set(m, "window_end", end) == 0 &&
         pb_timestamp_set(m, "renewal_time", at) == 0 &&
         pb_string_set(m, "explanation_url",
                       o->ri.explanation_url != NULL ? o->ri.explanation_url : "") == 0;
  }
  if (!ok) {
    protobuf_c_message_free_unpacked(m, NULL);
    return NULL;
  }
  return ri;
}

/* An outcome, and the certID of the chain it is for. */
struct outcome_for {
  const struct outcome *o;
  const char *cert_id;
};

/* The certificate with the outcome's renewal information, as long as it
 * still serves the chain it is for and waits for a check. */
static int outcome_edit(const struct jobs_outcome *w, const ProtobufCMessage *old,
                        ProtobufCMessage *res, struct api_op *op, const char **action,
                        struct tp_err *err) {
  (void)op;
  const struct outcome_for *f = w->data;
  const struct outcome *o = f->o;
  const char *cert_id = f->cert_id;
  const Tlsplane__V1__Certificate *was = (const Tlsplane__V1__Certificate *)old;
  char *now_id = acme_cert_id_pem(was->certificate_chain_pem);
  int changed = was->acme_order == NULL || was->acme_order->renewal_info == NULL ||
                (now_id == NULL) != (cert_id == NULL) ||
                (now_id != NULL && strcmp(now_id, cert_id) != 0);
  free(now_id);
  if (changed)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "%s changed meanwhile", w->name);
  Tlsplane__V1__Certificate *c = (Tlsplane__V1__Certificate *)res;
  Tlsplane__V1__AcmeRenewalInfo *ri =
      o->gone ? NULL : info_make(was->acme_order->renewal_info, cert_id, o, w->now_us);
  if (!o->gone && ri == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  protobuf_c_message_free_unpacked(&c->acme_order->renewal_info->base, NULL);
  c->acme_order->renewal_info = ri;
  *action = "acme_renewal_info";
  return 0;
}

/* Writes o on certificate name, as long as it still serves the chain of
 * cert_id (NULL: a chain without one) and waits for a check (one
 * revision). */
static int outcome_write(struct api *api, const char *name, const char *cert_id,
                         const struct outcome *o, struct tp_err *err) {
  const struct outcome_for f = {.o = o, .cert_id = cert_id};
  const struct jobs_outcome w = {.kind = &api_kind_certificate,
                                 .call = &job_call,
                                 .name = name,
                                 .now_us = pb_now_us(),
                                 .edit = outcome_edit,
                                 .data = (void *)&f};
  return jobs_outcome_write(api, &w, err) < 0 ? -1 : 0;
}

/* Reads what the check needs: the chain's certID and the issuer's
 * directory and trusted CAs (malloc'd). */
static int check_load(struct api *api, const char *name, char **cert_id, char **dir_url,
                      char **ca_pem, struct tp_err *err) {
  struct store_txn *txn;
  if (store_begin(api->store, 0, &txn, err) != 0)
    return -1;
  ProtobufCMessage *cm = NULL, *im = NULL;
  int rc = api_read(txn, &api_kind_certificate, name, 0, &cm, NULL, err);
  const Tlsplane__V1__Certificate *c = (const Tlsplane__V1__Certificate *)cm;
  if (rc == 0 && (c->issuance == NULL || acme_ari_check_time_us(c) == 0))
    rc = tp_err_set(err, GRPC_STATUS_NOT_FOUND, "%s has no renewal information to check", name);
  if (rc == 0 && api_read(txn, &api_kind_issuer, c->issuance->issuer, 0, &im, NULL, err) != 0) {
    /* Not the certificate gone: recorded, and asked again later. */
    char prefix[160];
    snprintf(prefix, sizeof(prefix), "issuer: %.100s: ", c->issuance->issuer);
    tp_err_prefix(err, prefix);
    err->status = GRPC_STATUS_FAILED_PRECONDITION;
    rc = -1;
  }
  store_rollback(txn);
  const Tlsplane__V1__Issuer *is = (const Tlsplane__V1__Issuer *)im;
  if (rc == 0 && is->type != TLSPLANE__V1__ISSUER__TYPE__ACME)
    rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "issuer: %s is not an ACME issuer",
                    is->name);
  if (rc == 0) {
    *cert_id = acme_cert_id_pem(c->certificate_chain_pem);
    *dir_url = strdup(is->acme_directory_url);
    *ca_pem = is->acme_ca_pem[0] != '\0' ? strdup(is->acme_ca_pem) : NULL;
    if (*cert_id == NULL)
      rc = tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "the certificate has no authority key identifier, so no ARI certID");
    else if (*dir_url == NULL || (is->acme_ca_pem[0] != '\0' && *ca_pem == NULL))
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  if (cm != NULL)
    protobuf_c_message_free_unpacked(cm, NULL);
  if (im != NULL)
    protobuf_c_message_free_unpacked(im, NULL);
  return rc;
}

struct task {
  struct api *api;
  char *name;
};

static void task_free(void *data) {
  struct task *t = data;
  free(t->name);
  free(t);
}

static void check_run(void *data, const atomic_int *stop) {
  struct task *t = data;
  char *cert_id = NULL, *dir_url = NULL, *ca_pem = NULL;
  struct tp_err err = {0};
  struct outcome o = {0};
  struct acme_client client;
  acme_client_init(&client, NULL, NULL, stop);
  int64_t retry_after_s = -1;
  int rc = check_load(t->api, t->name, &cert_id, &dir_url, &ca_pem, &err);
  if (rc != 0 && err.status == GRPC_STATUS_NOT_FOUND)
    goto done; /* gone, or nothing to check any more */
  if (rc == 0) {
    acme_client_init(&client, dir_url, ca_pem, stop);
    rc = acme_renewal_info_fetch(&client, cert_id, &o.ri, &retry_after_s, &err);
    /* The directory came and offers no renewalInfo: nothing to ask. */
    o.gone = rc != 0 && err.status == GRPC_STATUS_NOT_FOUND && client.dir.new_order != NULL;
  }
  if (rc != 0 && !o.gone)
    o.why = err.msg;
  o.next_us = pb_now_us() + next_delay_ms(retry_after_s) * 1000;
  if (atomic_load(stop) == 0) {
    struct tp_err werr = {0};
    if (outcome_write(t->api, t->name, cert_id, &o, &werr) != 0 &&
        werr.status != GRPC_STATUS_NOT_FOUND && strstr(werr.msg, "changed meanwhile") == NULL)
      log_warn("jobs", "ACME renewal information of %s: recording it: %s", t->name, werr.msg);
    else if (o.why != NULL)
      log_warn("jobs", "ACME renewal information of %s: %s", t->name, o.why);
  }
done:
  acme_renewal_info_clear(&o.ri);
  acme_client_clear(&client);
  free(cert_id);
  free(dir_url);
  free(ca_pem);
}

void acme_ari_submit(struct api *api, struct jobs *jobs, const char *name) {
  struct task *t = calloc(1, sizeof(*t));
  if (t == NULL || (t->name = strdup(name)) == NULL) {
    free(t);
    return;
  }
  t->api = api;
  if (jobs_fetch_submit(jobs, t->name, check_run, t, task_free) != 0)
    task_free(t); /* queued or running already */
}
