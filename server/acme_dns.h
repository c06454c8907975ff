/* dns-01 (RFC 8555 8.4) answered by an operator's hook command.
 *
 * The command is the server's own setting (--acme-dns-hook or
 * TLSPLANE_ACME_DNS_HOOK), never an API field: no caller chooses what the
 * server runs. It runs with posix_spawn, no shell, in a process group of
 * its own, stdin /dev/null, stdout and stderr into one pipe, and a clean
 * environment: PATH=ACME_DNS_HOOK_PATH_ENV plus
 *
 *   TLSPLANE_ACME_ACTION       "present" or "cleanup"
 *   TLSPLANE_ACME_DOMAIN       the identifier, without "*."
 *   TLSPLANE_ACME_RECORD       "_acme-challenge." DOMAIN "."
 *   TLSPLANE_ACME_TXT          the TXT value, base64url(SHA-256(keyAuthorization))
 *   TLSPLANE_ACME_CERTIFICATE  the certificate's name ("certificates/x")
 *
 * Exit status 0 is success. Bounded: the hook is killed (SIGKILL to its
 * process group) at its timeout or when the server stops, its output is
 * read up to ACME_DNS_HOOK_OUTPUT_MAX bytes (the rest drained and
 * dropped) and only its first line is kept, and whatever it left running
 * in its process group is killed when it exits. It runs on the calling
 * thread: an order's, never the job thread or an API thread. */
#ifndef TLSPLANE_SERVER_ACME_DNS_H
#define TLSPLANE_SERVER_ACME_DNS_H

#include <stdatomic.h>

#include "error.h"

#define ACME_DNS_HOOK_TIMEOUT_S 120      /* the default timeout of one run */
#define ACME_DNS_HOOK_TIMEOUT_MAX_S 3600 /* the longest one may be given */
#define ACME_DNS_HOOK_OUTPUT_MAX 4096    /* bytes of its output kept */
#define ACME_DNS_HOOK_LINE_MAX 256       /* characters of its first line shown */
#define ACME_DNS_HOOK_PATH_ENV "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* The server's hook; borrowed strings, set once at start. */
struct acme_dns_hook {
  const char *path; /* absolute, executable (acme_dns_hook_check) */
  int timeout_s;    /* 1 to ACME_DNS_HOOK_TIMEOUT_MAX_S */
};

/* Whether path can be the hook: absolute, a regular file, executable by
 * the server. 0, or -1 with err saying why (path named). */
int acme_dns_hook_check(const char *path, struct tp_err *err);

/* Runs h once for action ("present" or "cleanup") of the dns-01
 * challenge of domain (without "*.") with TXT value txt, for
 * certificate. Waits until it exits, its timeout passes or *stop is set
 * (stop may be NULL). 0 when it exited with status 0; otherwise -1 with
 * err: UNAVAILABLE "dns-01 hook ACTION RECORD: exit status N: FIRST LINE"
 * (or "killed by signal N", "killed after its timeout of N s", "cannot
 * run: ..."), CANCELLED when the server is stopping. Never logs, and txt
 * is in no message. */
int acme_dns_hook_run(const struct acme_dns_hook *h, const char *action, const char *domain,
                      const char *txt, const char *certificate, const atomic_int *stop,
                      struct tp_err *err);

#endif
