/* "host:port" addresses as listeners and upstreams write them. */
#ifndef TLSPLANE_COMMON_ADDR_H
#define TLSPLANE_COMMON_ADDR_H

#include <stddef.h>

#include "error.h"

/* Splits "host:port", "[v6addr]:port" or ":port" (host empty) into host
 * and port (1 to 65535, or 0 too with allow_port0: "any free port"). field
 * names the field for the message (INVALID_ARGUMENT). */
int addr_parse(const char *addr, char *host, size_t host_len, int *port, int allow_port0,
               const char *field, struct tp_err *err);

/* Whether sa (AF_INET or AF_INET6) is a loopback address: 127.0.0.0/8,
 * ::1, or ::ffff:127.0.0.0/104. */
struct sockaddr;
int addr_is_loopback(const struct sockaddr *sa);

/* Whether host is an IPv4 or IPv6 literal. */
int addr_is_ip(const char *host);

/* Whether host is a valid DNS hostname (letters, digits, '-', dots; labels
 * of 1 to 63 characters, not starting or ending with '-'). */
int addr_is_hostname(const char *host);

#endif
