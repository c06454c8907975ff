/* The snapshot an agent serves: the listeners whose agent_selector its
 * labels satisfy, each resolved with every context, certificate (key
 * included), policy, trust bundle, CRL and ticket key it names. It leaves
 * the server only on an agent's stream. */
#ifndef TLSPLANE_SERVER_SNAPSHOT_H
#define TLSPLANE_SERVER_SNAPSHOT_H

#include "api.h"
#include "tlsplane/v1/snapshot.pb-c.h"

struct snapshot_label {
  const char *key;
  const char *value;
};

/* Builds the snapshot for an agent with these labels from one consistent
 * read of the store; out->revision is the revision read. Caller frees *out
 * with protobuf_c_message_free_unpacked. */
int snapshot_build(struct store *store, const struct snapshot_label *labels, size_t n_labels,
                   Tlsplane__V1__Snapshot **out, struct tp_err *err);

/* Whether a listener's agent_selector is satisfied by labels. */
int snapshot_selector_matches(const Tlsplane__V1__Listener *l, const struct snapshot_label *labels,
                              size_t n_labels);

#endif
