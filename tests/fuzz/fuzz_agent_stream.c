/* What tlsplane-agent receives from the control plane, decoded by
 * common/grpcmsg.c as common/gclient.c does, then handled as the agent
 * handles it as far as that needs no sockets. The first byte picks:
 *
 *   even  a ServerMessage of the AgentService/Connect stream: its
 *         snapshot's listeners are built as agent/listener.c builds them
 *         before anything is swapped in (tlsconf_listener_build: every
 *         context with its certificates, keys, policy, trust bundle,
 *         CRLs, the SNI table, the ticket-key ring), each listener on its
 *         own as the apply does, and built again through a context cache
 *         that holds the first build's contexts
 *         (tlsconf_listener_build_cached, the agent's path)
 *   odd   an AgentCertificate (the answer to EnrollAgent / RenewAgent):
 *         the certificate checked against the agent's key, its facts
 *         read, whether the CA in the answer issued it, and whether it
 *         can be used (agent/identity.c)
 *
 * What must hold: no crash, leak or undefined behaviour; a build refused
 * says why with a message naming a field; one accepted builds again from
 * itself reusing every context. */
#include <grpc/byte_buffer.h>
#include <grpc/slice.h>
#include <time.h>

#include "fuzz.h"
#include "fuzz_data.h"
#include "grpcmsg.h"
#include "identity.h"
#include "tlsconf_listener.h"
#include "tlsplane/v1/agent.pb-c.h"

static char *agent_key_pem;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  agent_key_pem = fuzz_strdup((struct fuzz_part){fuzz_data_agent_key, fuzz_data_agent_key_len});
  return 0;
}

static ProtobufCMessage *decode(const uint8_t *data, size_t size,
                                const ProtobufCMessageDescriptor *desc) {
  grpc_slice slice = grpc_slice_from_copied_buffer((const char *)data, size);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
  grpc_slice_unref(slice);
  return grpcmsg_decode(bb, desc); /* destroys bb */
}

static void snapshot(const Tlsplane__V1__Snapshot *snap) {
  for (size_t i = 0; i < snap->n_listeners; i++) {
    struct tlsconf_listener *l = NULL;
    struct tp_err err = {0};
    if (tlsconf_listener_build(snap->listeners[i], &l, &err) != 0) {
      FUZZ_ASSERT(l == NULL);
      FUZZ_ASSERT(err.status == GRPC_STATUS_INVALID_ARGUMENT ||
                  err.status == GRPC_STATUS_RESOURCE_EXHAUSTED);
      FUZZ_ASSERT(err.msg[0] != '\0');
      continue;
    }
    struct tlsconf_ctxcache *cache = NULL;
    struct tlsconf_listener *first = NULL, *again = NULL;
    struct tp_err err2 = {0};
    FUZZ_ASSERT(tlsconf_listener_cache_new(&cache) == 0);
    if (tlsconf_listener_build_cached(snap->listeners[i], NULL, cache, &first, &err2) != 0 ||
        tlsconf_listener_build_cached(snap->listeners[i], NULL, cache, &again, &err2) != 0) {
      fprintf(stderr, "built once, not again through a cache: %s\n", err2.msg);
      abort();
    }
    FUZZ_ASSERT(tlsconf_listener_reused(again) == tlsconf_listener_contexts(again));
    FUZZ_ASSERT(tlsconf_listener_contexts(again) == tlsconf_listener_contexts(l));
    FUZZ_ASSERT(tlsconf_ctxcache_live(cache) == tlsconf_listener_contexts(l));
    tlsconf_listener_unref(first);
    tlsconf_listener_unref(again);
    FUZZ_ASSERT(tlsconf_ctxcache_live(cache) == 0);
    tlsconf_ctxcache_unref(cache);
    tlsconf_listener_unref(l);
  }
}

static void certificate(const Tlsplane__V1__AgentCertificate *ac) {
  struct identity id = {0};
  struct tp_err err = {0};
  if (identity_make(agent_key_pem, ac->certificate_pem, &id, &err) != 0)
    return;
  FUZZ_ASSERT(id.cert_pem != NULL && id.key_pem != NULL);
  (void)identity_issued_by(&id, ac->ca_pem);
  char why[256];
  (void)identity_unusable(&id, "edge-1", (int64_t)time(NULL), why, sizeof(why));
  identity_clear(&id);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  if (data[0] % 2 == 0) {
    ProtobufCMessage *m = decode(data + 1, size - 1, &tlsplane__v1__server_message__descriptor);
    if (m == NULL)
      return 0;
    const Tlsplane__V1__ServerMessage *sm = (const Tlsplane__V1__ServerMessage *)m;
    if (sm->message_case == TLSPLANE__V1__SERVER_MESSAGE__MESSAGE_SNAPSHOT && sm->snapshot != NULL)
      snapshot(sm->snapshot);
    protobuf_c_message_free_unpacked(m, NULL);
  } else {
    ProtobufCMessage *m = decode(data + 1, size - 1, &tlsplane__v1__agent_certificate__descriptor);
    if (m == NULL)
      return 0;
    certificate((const Tlsplane__V1__AgentCertificate *)m);
    protobuf_c_message_free_unpacked(m, NULL);
  }
  return 0;
}
