/* Names of the client error causes (see stats.h). */
#include "stats.h"

const char *stats_cause_name(enum stats_cause cause) {
  static const char *const names[CAUSE_COUNT] = {
      [CAUSE_HANDSHAKE_FAILED] = "handshake_failed",
      [CAUSE_HANDSHAKE_ABORTED] = "handshake_aborted",
      [CAUSE_HANDSHAKE_TIMEOUT] = "handshake_timeout",
      [CAUSE_MAX_CONNECTIONS] = "max_connections",
      [CAUSE_RENEGOTIATION_LIMIT] = "renegotiation_limit",
      [CAUSE_UPSTREAM_CONNECT] = "upstream_connect",
      [CAUSE_TLS_ERROR] = "tls_error",
      [CAUSE_KEY_UPDATE_LIMIT] = "key_update_limit",
      [CAUSE_IDLE_TIMEOUT] = "idle_timeout",
      [CAUSE_CLIENT_WRITE_TIMEOUT] = "client_write_timeout",
      [CAUSE_UPSTREAM_WRITE_TIMEOUT] = "upstream_write_timeout",
      [CAUSE_UPSTREAM_TLS_HANDSHAKE] = "upstream_tls_handshake",
      [CAUSE_UPSTREAM_VERIFY] = "upstream_verify",
      [CAUSE_ACME_NO_CHALLENGE] = "acme_no_challenge",
  };
  return (unsigned)cause < CAUSE_COUNT ? names[cause] : "unknown";
}
