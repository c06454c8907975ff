/* The tlsplane.v1 services and the kinds behind them. */
#include <string.h>

#include "api.h"
#include "tlsplane/v1/agent.pb-c.h"
#include "tlsplane/v1/audit.pb-c.h"
#include "tlsplane/v1/auth.pb-c.h"
#include "tlsplane/v1/certificate.pb-c.h"
#include "tlsplane/v1/cipher_policy.pb-c.h"
#include "tlsplane/v1/issuer.pb-c.h"
#include "tlsplane/v1/listener.pb-c.h"
#include "tlsplane/v1/revocation_list.pb-c.h"
#include "tlsplane/v1/ticket_keys.pb-c.h"
#include "tlsplane/v1/tls_context.pb-c.h"
#include "tlsplane/v1/trust_bundle.pb-c.h"

extern const struct api_method certificate_methods[];
extern const struct api_method cipher_policy_methods[];
extern const struct api_method ticket_key_methods[];
extern const struct api_method audit_methods[];
extern const struct api_method agent_methods[];
extern const struct api_method token_methods[];
extern const struct api_method client_cert_methods[];

struct service {
  const ProtobufCServiceDescriptor *desc;
  const struct api_kind *kind;
  const struct api_method *custom;
};

static const struct service services[] = {
    {&tlsplane__v1__certificate_service__descriptor, &api_kind_certificate, certificate_methods},
    {&tlsplane__v1__trust_bundle_service__descriptor, &api_kind_trust_bundle, NULL},
    {&tlsplane__v1__revocation_list_service__descriptor, &api_kind_revocation_list, NULL},
    {&tlsplane__v1__cipher_policy_service__descriptor, &api_kind_cipher_policy,
     cipher_policy_methods},
    {&tlsplane__v1__tls_context_service__descriptor, &api_kind_tls_context, NULL},
    {&tlsplane__v1__listener_service__descriptor, &api_kind_listener, NULL},
    {&tlsplane__v1__ticket_key_service__descriptor, &api_kind_ticket_key_ring, ticket_key_methods},
    {&tlsplane__v1__agent_service__descriptor, &api_kind_agent, agent_methods},
    {&tlsplane__v1__audit_service__descriptor, NULL, audit_methods},
    {&tlsplane__v1__token_service__descriptor, &api_kind_token, token_methods},
    {&tlsplane__v1__client_certificate_service__descriptor, &api_kind_client_certificate,
     client_cert_methods},
    {&tlsplane__v1__issuer_service__descriptor, &api_kind_issuer, NULL},
};

size_t api_service_names(const char **names, size_t max) {
  size_t n = sizeof(services) / sizeof(services[0]);
  for (size_t i = 0; i < n && i < max; i++)
    names[i] = services[i].desc->name;
  return n;
}

const ProtobufCServiceDescriptor *api_service_find(const char *name) {
  for (size_t i = 0; i < sizeof(services) / sizeof(services[0]); i++)
    if (strcmp(services[i].desc->name, name) == 0)
      return services[i].desc;
  return NULL;
}

int api_register_all(struct api *api, struct rpc_server *srv) {
  for (size_t i = 0; i < sizeof(services) / sizeof(services[0]); i++)
    if (api_service_register(api, srv, services[i].desc, services[i].kind, services[i].custom) != 0)
      return -1;
  return 0;
}
