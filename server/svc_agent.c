/* AgentService: the fleet. Agents are recorded by the server when they
 * connect (hub.c); the API reads them with their live state, forgets them,
 * and reports how far a revision has rolled out. */
#include <stdlib.h>

#include "api.h"
#include "hub.h"
#include "tlsplane/v1/agent.pb-c.h"

static const char *const agent_mutable[] = {NULL};

static void agent_decorate(struct api *api, ProtobufCMessage *res) {
  if (api->hub != NULL)
    hub_agent_decorate(api->hub, (Tlsplane__V1__Agent *)res);
}

/* A deleted agent receives no more snapshots: its stream is cut. */
static void agent_deleted(struct api *api, const char *name) {
  if (api->hub != NULL)
    hub_agent_disconnect(api->hub, name, "the agent was deleted");
}

const struct api_kind api_kind_agent = {
    .kind = "Agent",
    .collection = "agents",
    .resource_field = "agent",
    .desc = &tlsplane__v1__agent__descriptor,
    .mutable_fields = agent_mutable,
    .decorate = agent_decorate,
    .deleted = agent_deleted,
    .read_only = 1,
};

static int get_rollout(const struct rpc_call_info *call, const ProtobufCMessage *req,
                       ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct api_binding *b = data;
  const Tlsplane__V1__GetRolloutRequest *r = (const Tlsplane__V1__GetRolloutRequest *)req;
  if (b->api->hub == NULL)
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "no agent hub in this server");
  Tlsplane__V1__Rollout *out;
  if (hub_rollout(b->api->hub, r->revision, &out, err) != 0)
    return -1;
  *resp = &out->base;
  return 0;
}

const struct api_method agent_methods[] = {{"GetRollout", get_rollout}, {NULL, NULL}};
