/* RevocationListService: CRLs checked against client certificates (crl),
 * kept fresh from their distribution point (crl_refresh.h). */
#include <string.h>

#include "api.h"
#include "certinfo.h"
#include "crl_refresh.h"
#include "pb.h"
#include "resolve.h"
#include "tlsconf.h"

static const char *const revocation_list_mutable[] = {"crl_pem", "crl_der", "distribution_point",
                                                      "refresh_interval", NULL};

/* distribution_point and refresh_interval: checked, defaulted. */
static int freshness_prepare(Tlsplane__V1__RevocationList *rl, struct tp_err *err) {
  if (rl->distribution_point[0] == '\0') {
    X509_CRL *crl = NULL;
    if (certinfo_crl_read(rl->crl_pem, "crl_pem", &crl, err) != 0)
      return -1;
    char *url = crl_refresh_idp_url(crl);
    X509_CRL_free(crl);
    if (url != NULL) {
      int rc = pb_string_set(&rl->base, "distribution_point", url);
      free(url);
      if (rc != 0)
        return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    }
  } else if (crl_refresh_url_check(rl->distribution_point, "distribution_point", err) != 0) {
    return -1;
  }
  if (rl->refresh_interval == NULL &&
      (rl->refresh_interval = pb_duration_new(CRL_REFRESH_DEFAULT_S)) == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  int64_t ms = pb_duration_ms(rl->refresh_interval);
  if (ms < CRL_REFRESH_MIN_S * 1000 || ms > CRL_REFRESH_MAX_S * INT64_C(1000))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "refresh_interval: must be %d s (1 min) to %d s (30 days)", CRL_REFRESH_MIN_S,
                      CRL_REFRESH_MAX_S);
  return 0;
}

static int revocation_list_prepare(struct api_op *op, ProtobufCMessage *res, struct tp_err *err) {
  Tlsplane__V1__RevocationList *rl = (Tlsplane__V1__RevocationList *)res;
  const Tlsplane__V1__RevocationList *old = (const Tlsplane__V1__RevocationList *)op->old;
  if (tlsconf_revocation_list_prepare(rl, err) != 0 || freshness_prepare(rl, err) != 0)
    return -1;
  /* A fetch's write (crl_refresh.c) brings last_fetch_time and is next
   * due on schedule; any other write keeps the last fetch time and is
   * fetched at once (a new list, a new URL or CRL). What later fetches
   * find lives in memory (decorate). */
  int fetched = op->call != NULL && op->call->method != NULL &&
                strcmp(op->call->method, CRL_REFRESH_METHOD) == 0;
  int64_t now_us = (int64_t)op->now * 1000000;
  int64_t last = fetched ? pb_timestamp_us(rl->last_fetch_time)
                         : (old != NULL ? pb_timestamp_us(old->last_fetch_time) : 0);
  for (const char *const *f =
           (const char *const[]){"last_fetch_time", "next_fetch_time", "last_fetch_error", NULL};
       *f != NULL; f++)
    pb_field_clear(res, pb_field(res->descriptor, *f));
  rl->fetch_failures = 0;
  rl->stale = 0;
  if (last != 0 && pb_timestamp_set(res, "last_fetch_time", last) != 0)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (rl->distribution_point[0] != '\0') {
    int64_t next = fetched ? crl_refresh_schedule(now_us, pb_duration_ms(rl->refresh_interval),
                                                  pb_timestamp_us(rl->next_update))
                           : now_us;
    if (pb_timestamp_set(res, "next_fetch_time", next) != 0)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  return 0;
}

/* Indexed so that the refresh job finds the lists that are due. */
static int64_t revocation_list_due_time(const ProtobufCMessage *res) {
  return pb_timestamp_us(((const Tlsplane__V1__RevocationList *)res)->next_fetch_time);
}

static void revocation_list_decorate(struct api *api, ProtobufCMessage *res) {
  crl_refresh_decorate(api->crl_refresh, (Tlsplane__V1__RevocationList *)res);
}

static void revocation_list_deleted(struct api *api, const char *name) {
  crl_refresh_forget(api->crl_refresh, name);
}

const struct api_kind api_kind_revocation_list = {
    .kind = "RevocationList",
    .collection = "revocationLists",
    .resource_field = "revocation_list",
    .desc = &tlsplane__v1__revocation_list__descriptor,
    .mutable_fields = revocation_list_mutable,
    .prepare = revocation_list_prepare,
    .expire_time_us = revocation_list_due_time,
    .check_referrers = resolve_check_referrers,
    .decorate = revocation_list_decorate,
    .deleted = revocation_list_deleted,
};
