/* Which listeners an agent's labels select (the worlds of fleet.c send
 * each agent the listeners it selects). */
#include "snapshot.h"

#include <stdlib.h>
#include <string.h>

int snapshot_selector_matches(const Tlsplane__V1__Listener *l, const struct snapshot_label *labels,
                              size_t n_labels) {
  for (size_t i = 0; i < l->n_agent_selector; i++) {
    const char *k = l->agent_selector[i]->key, *v = l->agent_selector[i]->value;
    size_t j = 0;
    while (j < n_labels && (strcmp(labels[j].key, k) != 0 || strcmp(labels[j].value, v) != 0))
      j++;
    if (j == n_labels)
      return 0;
  }
  return 1;
}
