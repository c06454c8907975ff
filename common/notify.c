/* systemd readiness notifications (see notify.h). */
#include "notify.h"

#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "log.h"

void notify_service(const char *state) {
  /* Empty is unset too (sd_notify would call it invalid). */
  const char *sock = getenv("NOTIFY_SOCKET");
  if (sock == NULL || sock[0] == '\0')
    return;
  int rc = sd_notify(0, state);
  if (rc < 0)
    log_warn("notify", "sd_notify %s: %s", state, strerror(-rc));
}
