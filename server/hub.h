/* The push hub: every connected agent's stream, its live state, and the
 * snapshots sent to it. Every committed revision wakes the hub's one push
 * thread, which sends each connected agent the new snapshot if (and only
 * if) the revision changed what that agent serves. A slow or dead agent
 * delays nobody: streams hold no thread (the RPC core runs their
 * callbacks on its pool), sends never wait, and snapshots are built once
 * per revision and label set, then shared. */
#ifndef TLSPLANE_SERVER_HUB_H
#define TLSPLANE_SERVER_HUB_H

#include "api.h"
#include "tlsplane/v1/agent.pb-c.h"

struct hub;

/* Creates the hub over api (api->store must be open) and starts its push
 * thread; registers itself as the store's commit hook, and watches the
 * store for other servers' commits (store_watch_start), which it takes as
 * its own: pushed to agents, and events_notify'd. Caller frees with
 * hub_free (which stops the watch and joins the thread) after the RPC
 * server has stopped. */
int hub_new(struct api *api, struct hub **out, struct tp_err *err);
void hub_free(struct hub *hub);

/* Registers AgentService/Connect (the agent stream) on srv. */
int hub_register(struct hub *hub, struct rpc_server *srv);

/* Wakes the push thread: revision committed. Called by the store's commit
 * hook; never waits. */
void hub_notify(struct hub *hub, int64_t revision);

/* Fills the live fields of an Agent read from the store (connected,
 * last_seen, applied_revision, last_nack, listeners). */
void hub_agent_decorate(struct hub *hub, Tlsplane__V1__Agent *agent);

/* Fills the live fields of out (out->agent names the agent: connected,
 * applied_revision, current, last_nack) for listener `listener`
 * ("listeners/web"), whose resource of interest last changed at
 * `revision` (GetServing; agent.proto says when it is current). An agent
 * the hub has not seen since the server started is left as it is (not
 * connected, nothing applied). */
void hub_agent_serving(struct hub *hub, const char *listener, int64_t revision,
                       Tlsplane__V1__ServingAgent *out);

/* Cuts the stream of agent `name` ("agents/x"), if connected. */
void hub_agent_disconnect(struct hub *hub, const char *name, const char *why);

/* Rollout of a revision (0: the current one) across connected agents. */
int hub_rollout(struct hub *hub, int64_t revision, Tlsplane__V1__Rollout **out, struct tp_err *err);

/* Push latency: from a revision's commit to each agent's ack of it, for
 * the revisions an agent was sent (the last HUB_COMMITS commits). */
#define HUB_COMMITS 256
#define HUB_LATENCY_BUCKETS 11
extern const double hub_latency_bounds_s[HUB_LATENCY_BUCKETS]; /* upper bounds, seconds */
struct hub_latency {
  unsigned long le[HUB_LATENCY_BUCKETS]; /* acks within each bound (cumulative) */
  unsigned long count;                   /* every ack measured (+Inf) */
  double sum_s;
};
void hub_latency(struct hub *hub, struct hub_latency *out);

#endif
