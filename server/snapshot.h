/* Agent labels and listener selectors: an agent serves the listeners
 * whose agent_selector its labels satisfy (fleet.h builds what it is
 * sent). */
#ifndef TLSPLANE_SERVER_SNAPSHOT_H
#define TLSPLANE_SERVER_SNAPSHOT_H

#include "api.h"
#include "tlsplane/v1/snapshot.pb-c.h"

struct snapshot_label {
  const char *key;
  const char *value;
};

/* Whether a listener's agent_selector is satisfied by labels. */
int snapshot_selector_matches(const Tlsplane__V1__Listener *l, const struct snapshot_label *labels,
                              size_t n_labels);

#endif
