/* TrustBundleService: CA certificates that verify clients (ca). */
#include <string.h>

#include "api.h"
#include "resolve.h"
#include "tlsconf.h"

static const char *const trust_bundle_mutable[] = {"ca_pem", "allow_invalid_time", NULL};

static int trust_bundle_prepare(struct api_op *op, ProtobufCMessage *res, struct tp_err *err) {
  Tlsplane__V1__TrustBundle *tb = (Tlsplane__V1__TrustBundle *)res;
  const Tlsplane__V1__TrustBundle *old = (const Tlsplane__V1__TrustBundle *)op->old;
  if (old != NULL && strcmp(old->ca_pem, tb->ca_pem) == 0)
    tb->allow_invalid_time = 1;
  return tlsconf_trust_bundle_prepare(tb, op->now, err);
}

const struct api_kind api_kind_trust_bundle = {
    .kind = "TrustBundle",
    .collection = "trustBundles",
    .resource_field = "trust_bundle",
    .desc = &tlsplane__v1__trust_bundle__descriptor,
    .mutable_fields = trust_bundle_mutable,
    .prepare = trust_bundle_prepare,
    .check_referrers = resolve_check_referrers,
};
