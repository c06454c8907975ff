/* RevocationListService: CRLs checked against client certificates (crl). */
#include "api.h"
#include "pb.h"
#include "resolve.h"
#include "tlsconf.h"

static const char *const revocation_list_mutable[] = {"crl_pem", "crl_der", NULL};

static int revocation_list_prepare(struct api_op *op, ProtobufCMessage *res, struct tp_err *err) {
  return tlsconf_revocation_list_prepare((Tlsplane__V1__RevocationList *)res, err);
}

/* Indexed so that a freshness job can find CRLs whose next update is near. */
static int64_t revocation_list_expire_time(const ProtobufCMessage *res) {
  return pb_timestamp_us(((const Tlsplane__V1__RevocationList *)res)->next_update);
}

const struct api_kind api_kind_revocation_list = {
    .kind = "RevocationList",
    .collection = "revocationLists",
    .resource_field = "revocation_list",
    .desc = &tlsplane__v1__revocation_list__descriptor,
    .mutable_fields = revocation_list_mutable,
    .prepare = revocation_list_prepare,
    .expire_time_us = revocation_list_expire_time,
    .check_referrers = resolve_check_referrers,
};
