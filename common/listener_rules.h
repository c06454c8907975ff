/* The rules of a Listener (listener.proto), written once for the API and
 * the agent: each field's default and range, the syntax of the bind and
 * upstream addresses, the SNI table, the ticket-key length, and when two
 * listeners' addresses collide.
 *
 * The server validates a CreateListener / UpdateListener with
 * listener_rules_check (LISTENER_RULES_API) and the agent runs the same
 * function on every listener it applies (LISTENER_RULES_AGENT), before it
 * resolves names and binds: what the API accepted, every agent can load
 * (the API mode only adds each field's own range on top of the agent's
 * checks). Nothing here binds a socket, looks up a name or touches
 * OpenSSL. */
#ifndef TLSPLANE_COMMON_LISTENER_RULES_H
#define TLSPLANE_COMMON_LISTENER_RULES_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "tlsplane/v1/listener.pb-c.h"
#include "tlsplane/v1/tls_context.pb-c.h"

/* ticketKeys / setTicketKeys: a key is 48 bytes, the 16-byte name (sent
 * in clear in every ticket), the 16-byte HMAC-SHA256 key and the 16-byte
 * AES-128-CBC key (Node's ticket format). */
#define LISTENER_RULES_TICKET_KEY_LEN 48
#define LISTENER_RULES_TICKET_KEY_PART_LEN 16

/* renegotiation_limit: client-initiated renegotiations allowed per
 * renegotiation_window when the field is absent (the seed: 3 per 10
 * minutes). */
#define LISTENER_RULES_RENEGOTIATION_LIMIT_DEFAULT 3

/* The Duration fields of a Listener. default_s: what the server stores when
 * the field is left out, and what an agent applies when a snapshot has
 * none. max_s: the longest the API accepts (a snapshot may carry up to
 * LISTENER_RULES_SNAPSHOT_DURATION_MAX_S). zero_unlimited: in a snapshot,
 * "0s" means no limit (the API always requires more than 0). */
struct listener_rules_duration {
  const char *field; /* "handshake_timeout" */
  int64_t default_s;
  int64_t max_s;
  int zero_unlimited;
};

extern const struct listener_rules_duration listener_rules_handshake_timeout;    /* 120 s, 3600 s */
extern const struct listener_rules_duration listener_rules_renegotiation_window; /* 600 s, 1 day */
extern const struct listener_rules_duration listener_rules_idle_timeout;         /* 600 s, 1 day */
extern const struct listener_rules_duration listener_rules_write_timeout;        /* 60 s, 3600 s */

/* The longest duration a snapshot may carry (a year): beyond any the API
 * accepts, and no overflow in milliseconds. */
#define LISTENER_RULES_SNAPSHOT_DURATION_MAX_S (366LL * 86400)

enum listener_rules_mode {
  /* What an agent loads (a snapshot from the server or a file). */
  LISTENER_RULES_AGENT,
  /* What the API stores: the agent's rules plus each field's own range. */
  LISTENER_RULES_API,
};

enum listener_rules_host {
  LISTENER_RULES_HOST_ANY,  /* every address: "", "*", "0.0.0.0", "::" */
  LISTENER_RULES_HOST_IP,   /* an IPv4 or IPv6 literal (ip holds it) */
  LISTENER_RULES_HOST_NAME, /* a name, resolved by the agent ("localhost", an upstream host) */
  LISTENER_RULES_HOST_UNIX, /* an upstream "unix:/path": path holds it, host is empty */
};

/* A "host:port" as a listener writes it, parsed without any name lookup. */
struct listener_rules_addr {
  enum listener_rules_host kind;
  char host[256];     /* as written, without brackets ("*" reads as "": every address) */
  int port;           /* 0: any free port (bind addresses only) */
  struct in6_addr ip; /* HOST_IP: the address, IPv4 as ::ffff:a.b.c.d */
  char path[108];     /* HOST_UNIX: the socket's absolute path (sun_path's size) */
};

/* Parses a listener's address (bind: 1) or upstream (bind: 0). An
 * upstream may also be "unix:" and an absolute path of at most 107 bytes
 * (a Unix-domain socket, HOST_UNIX, port 0). A bind
 * host is empty or "*" (every address), an IP literal or "localhost"; its
 * port may be 0. An upstream host is an IP literal or a DNS hostname, its
 * port 1 to 65535. field names the field in errors (INVALID_ARGUMENT:
 * "address: ...", "upstream: ..."). */
int listener_rules_addr_parse(const char *address, int bind, const char *field,
                              struct listener_rules_addr *out, struct tp_err *err);

/* Whether two bind addresses collide on one host: the same port (not 0:
 * any free port never collides) and the same IP, or either one every
 * address ("0.0.0.0:P" and "[::]:P" overlap any host on port P;
 * "localhost" is 127.0.0.1 and ::1). */
int listener_rules_addrs_overlap(const struct listener_rules_addr *a,
                                 const struct listener_rules_addr *b);

/* Whether one agent's labels can satisfy both agent_selectors: no key
 * with different values in the two (an empty selector matches every
 * agent). */
int listener_rules_selectors_overlap(const Tlsplane__V1__Listener *a,
                                     const Tlsplane__V1__Listener *b);

/* A Duration field by rule: *ms its value in milliseconds (at least 1 for
 * any positive duration; 0: no limit, agent mode only), rule->default_s
 * when d is NULL. */
int listener_rules_duration_check(const Google__Protobuf__Duration *d,
                                  const struct listener_rules_duration *rule,
                                  enum listener_rules_mode mode, uint64_t *ms, struct tp_err *err);

/* renegotiation_limit (default LISTENER_RULES_RENEGOTIATION_LIMIT_DEFAULT,
 * not negative) and renegotiation_window (more than 0). */
int listener_rules_renegotiation_check(const Tlsplane__V1__Listener *li,
                                       enum listener_rules_mode mode, int *limit,
                                       uint64_t *window_ms, struct tp_err *err);

/* The SNI table: each route's hostname, compared lower-cased, is a
 * hostname or "*." and one (tlsconf_hostname_pattern_check), and none is
 * routed twice ("sni_routes[2].hostname: ..."; the first route in order
 * that is bad or repeats an earlier one is named). */
int listener_rules_sni_routes_check(const Tlsplane__V1__Listener *li, struct tp_err *err);

/* What a Listener means, its defaults applied. */
struct listener_rules_values {
  struct listener_rules_addr address;
  struct listener_rules_addr upstream;
  uint64_t handshake_timeout_ms; /* 0: no limit */
  uint64_t idle_timeout_ms;      /* 0: no limit */
  uint64_t write_timeout_ms;     /* 0: no limit */
  int64_t max_connections;       /* 0: no limit */
  int renegotiation_limit;       /* 0: renegotiation refused */
  uint64_t renegotiation_window_ms;
  int upstream_tls; /* upstream_tls is set */
};

/* The rules between li and a TlsContext it names in field
 * ("default_tls_context", "sni_routes[0].tls_context",
 * "upstream_tls.tls_context"): upstream_tls names a client context (with
 * a trust_bundle unless reject_unauthorized is false), every other field
 * a server one. INVALID_ARGUMENT naming field and the context. */
int listener_rules_upstream_context_check(const Tlsplane__V1__Listener *li,
                                          const Tlsplane__V1__TlsContext *ctx, const char *field,
                                          struct tp_err *err);

/* Checks every listener-level field of li (address, upstream, the
 * durations, max_connections, renegotiation, SNI hostnames) and fills
 * *out. INVALID_ARGUMENT naming the field, without the "listener."
 * prefix ("upstream: \":8080\" needs a host"). References to other
 * resources (contexts, rings) are not checked here. */
int listener_rules_check(const Tlsplane__V1__Listener *li, enum listener_rules_mode mode,
                         struct listener_rules_values *out, struct tp_err *err);

#endif
