/* GetServing: who serves what. For a certificate, a TLS context or a
 * listener, the listeners that use it (a certificate through the contexts
 * that name it, a context as a listener's default or SNI context) and,
 * for each, the agents its agent_selector selects among the agents'
 * records, with what each applied for that listener as the push hub last
 * heard (hub_agent_serving). */
#ifndef TLSPLANE_SERVER_SERVING_H
#define TLSPLANE_SERVER_SERVING_H

#include "api.h"
#include "tlsplane/v1/agent.pb-c.h"

/* Builds the answer for `resource` ("certificates/web", "tlsContexts/web"
 * or "listeners/web"), read in one read transaction; the live fields come
 * from api->hub (left empty without one). INVALID_ARGUMENT naming the
 * field `resource` for a malformed name, NOT_FOUND naming it for one that
 * does not exist. *out is the caller's: free with
 * protobuf_c_message_free_unpacked. */
int serving_get(struct api *api, const char *resource, Tlsplane__V1__Serving **out,
                struct tp_err *err);

#endif
