/* ListenerService: tls.createServer + server.listen + addContext: address,
 * default context, SNI routes, upstream and limits. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "api.h"
#include "pb.h"
#include "tlsconf.h"
#include "tlsconf_listener.h"
#include "tlsplane/v1/listener.pb-c.h"

#define HANDSHAKE_TIMEOUT_DEFAULT_S 120    /* the seed's handshakeTimeout default */
#define RENEGOTIATION_LIMIT_DEFAULT 3      /* the seed: three renegotiations ... */
#define RENEGOTIATION_WINDOW_DEFAULT_S 600 /* ... every 10 minutes */
#define HANDSHAKE_TIMEOUT_MAX_S 3600

static const char *const listener_mutable[] = {
    "address",
    "default_tls_context",
    "sni_routes",
    "upstream",
    "proxy_protocol",
    "handshake_timeout",
    "max_connections",
    "renegotiation_limit",
    "renegotiation_window",
    "ticket_key_ring",
    "agent_selector",
    "idle_timeout",
    "write_timeout",
    NULL,
};

static int duration_check(Google__Protobuf__Duration **d, int64_t dflt_s, int64_t max_s,
                          const char *field, struct tp_err *err) {
  if (*d == NULL) {
    *d = pb_duration_new(dflt_s);
    if (*d == NULL)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return 0;
  }
  int64_t ms = pb_duration_ms(*d);
  if (ms <= 0 || (*d)->nanos < 0 || ms > max_s * 1000)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: must be more than 0 and at most %llds", field, (long long)max_s);
  return 0;
}

static int listener_prepare(struct api_op *op, ProtobufCMessage *res, struct tp_err *err) {
  Tlsplane__V1__Listener *l = (Tlsplane__V1__Listener *)res;
  char host[256];
  int port;
  if (addr_parse(l->address, host, sizeof(host), &port, 0, "address", err) != 0)
    return -1;
  if (host[0] != '\0' && strcmp(host, "*") != 0 && strcmp(host, "localhost") != 0 &&
      !addr_is_ip(host))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "address: bind host \"%s\" must be an IP address, \"localhost\", \"*\" or "
                      "empty (every address)",
                      host);
  if (addr_parse(l->upstream, host, sizeof(host), &port, 0, "upstream", err) != 0)
    return -1;
  if (!addr_is_ip(host) && !addr_is_hostname(host))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "upstream: \"%s\" is neither an IP address nor a hostname", host);
  if (api_name_check(&api_kind_tls_context, l->default_tls_context, "default_tls_context", err) !=
      0)
    return -1;
  for (size_t i = 0; i < l->n_sni_routes; i++) {
    Tlsplane__V1__SniRoute *r = l->sni_routes[i];
    char field[64];
    for (char *p = r->hostname; *p; p++)
      *p = (char)tolower((unsigned char)*p);
    if (tlsconf_hostname_pattern_check(r->hostname, err) != 0) {
      snprintf(field, sizeof(field), "sni_routes[%zu].hostname: ", i);
      tp_err_prefix(err, field);
      return -1;
    }
    for (size_t j = 0; j < i; j++)
      if (strcmp(l->sni_routes[j]->hostname, r->hostname) == 0)
        return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                          "sni_routes[%zu].hostname: \"%s\" is routed twice", i, r->hostname);
    snprintf(field, sizeof(field), "sni_routes[%zu].tls_context", i);
    if (api_name_check(&api_kind_tls_context, r->tls_context, field, err) != 0)
      return -1;
  }
  if (duration_check(&l->handshake_timeout, HANDSHAKE_TIMEOUT_DEFAULT_S, HANDSHAKE_TIMEOUT_MAX_S,
                     "handshake_timeout", err) != 0 ||
      duration_check(&l->renegotiation_window, RENEGOTIATION_WINDOW_DEFAULT_S, 86400,
                     "renegotiation_window", err) != 0 ||
      duration_check(&l->idle_timeout, TLSCONF_IDLE_TIMEOUT_DEFAULT_S, TLSCONF_IDLE_TIMEOUT_MAX_S,
                     "idle_timeout", err) != 0 ||
      duration_check(&l->write_timeout, TLSCONF_WRITE_TIMEOUT_DEFAULT_S,
                     TLSCONF_WRITE_TIMEOUT_MAX_S, "write_timeout", err) != 0)
    return -1;
  if (l->max_connections < 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "max_connections: must not be negative (0: no limit)");
  if (l->renegotiation_limit == NULL) {
    l->renegotiation_limit = malloc(sizeof(*l->renegotiation_limit));
    if (l->renegotiation_limit == NULL)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    google__protobuf__int32_value__init(l->renegotiation_limit);
    l->renegotiation_limit->value = RENEGOTIATION_LIMIT_DEFAULT;
  } else if (l->renegotiation_limit->value < 0) {
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "renegotiation_limit: must not be negative (0: refuse renegotiation)");
  }
  if (l->ticket_key_ring[0] != '\0' &&
      api_name_check(&api_kind_ticket_key_ring, l->ticket_key_ring, "ticket_key_ring", err) != 0)
    return -1;
  for (size_t i = 0; i < l->n_agent_selector; i++)
    if (l->agent_selector[i]->key[0] == '\0')
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "agent_selector: empty label key");
  return 0;
}

static int listener_refs(const ProtobufCMessage *res, struct api_refs *refs) {
  const Tlsplane__V1__Listener *l = (const Tlsplane__V1__Listener *)res;
  int rc = api_refs_add(refs, api_kind_tls_context.kind, l->default_tls_context,
                        "listener.default_tls_context");
  for (size_t i = 0; rc == 0 && i < l->n_sni_routes; i++)
    rc = api_refs_add(refs, api_kind_tls_context.kind, l->sni_routes[i]->tls_context,
                      "listener.sni_routes[%zu].tls_context", i);
  if (rc == 0 && l->ticket_key_ring[0] != '\0')
    rc = api_refs_add(refs, api_kind_ticket_key_ring.kind, l->ticket_key_ring,
                      "listener.ticket_key_ring");
  return rc;
}

const struct api_kind api_kind_listener = {
    .kind = "Listener",
    .collection = "listeners",
    .resource_field = "listener",
    .desc = &tlsplane__v1__listener__descriptor,
    .mutable_fields = listener_mutable,
    .prepare = listener_prepare,
    .refs = listener_refs,
};
