/* AgentService: the fleet, as the server records it. Agents are written
 * by the server when they connect; the API reads and forgets them. */
#include "api.h"
#include "tlsplane/v1/agent.pb-c.h"

static const char *const agent_mutable[] = {NULL};

const struct api_kind api_kind_agent = {
    .kind = "Agent",
    .collection = "agents",
    .resource_field = "agent",
    .desc = &tlsplane__v1__agent__descriptor,
    .mutable_fields = agent_mutable,
    .read_only = 1,
};
