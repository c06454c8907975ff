/* systemd's service readiness protocol (sd_notify(3), through libsystemd):
 * what a Type=notify unit waits for. Outside such a unit (no NOTIFY_SOCKET
 * in the environment, or empty) nothing is sent.
 *
 *   READY=1      the server's API listens; the agent serves its first
 *                configuration (the snapshot file, or the cached snapshot,
 *                or nothing when it has none yet: it does not wait for the
 *                control plane, which may be away for long)
 *   STOPPING=1   a stop signal arrived and draining began */
#ifndef TLSPLANE_NOTIFY_H
#define TLSPLANE_NOTIFY_H

/* Sends state ("READY=1") to the service manager; a failure is logged at
 * warn, never fatal. */
void notify_service(const char *state);

#endif
