/* A listener's TLS side, built from a ResolvedListener: one SSL_CTX per
 * TlsContext (tlsconf_ctx_build), the SNI table (server.addContext /
 * SNICallback: exact names, then "*." wildcards of exactly one label, then
 * the default context), the ticket-key ring (ticketKeys / setTicketKeys:
 * the active key encrypts, older keys still decrypt and the ticket is
 * renewed under the active key), the renegotiation policy, and the ACME
 * tls-alpn-01 challenges it answers (RFC 8737, tlsconf_acme.h).
 *
 * Immutable once built, shared by every worker thread, and reference
 * counted: a connection holds a reference for its whole life, so that a
 * configuration change never changes the contexts of a connection in
 * flight (DESIGN.md, invariant 3). */
#ifndef TLSPLANE_COMMON_TLSCONF_LISTENER_H
#define TLSPLANE_COMMON_TLSCONF_LISTENER_H

#include <openssl/ssl.h>

#include "error.h"
#include "tlsconf_ctxcache.h"
#include "tlsplane/v1/snapshot.pb-c.h"

struct tlsconf_listener;

/* Builds every context of rl (its default_tls_context and every SNI route's
 * context, found in rl->tls_contexts by name; one SSL_CTX per context
 * however many routes name it) and the ticket-key ring (rl->ticket_keys:
 * 48-byte keys, exactly one active; none: one random key made for this
 * build and shared by its contexts, so that tickets resume across them
 * but not across builds or agents). All or nothing: on failure nothing is
 * kept and err names the context and field ("tlsContexts/web:
 * certificates: ...") or the listener field ("sni_routes[2].hostname:
 * ...", "ticket_keys[1]: ...", "renegotiation_limit: ...",
 * "acme_challenges[a.test]: private_key_pem: ..."). Challenges: at most
 * one per server_name; each builds one context (tlsconf_acme_ctx_build),
 * cached as contexts are (by ListenerEntry.acme_challenges[i] when
 * given). Route
 * hostnames are matched lower-cased. The result holds one reference;
 * release with tlsconf_listener_unref. rl may be freed afterwards.
 * Sessions: one session cache for the listener (the largest
 * session_cache_size of its contexts), new with every build; a session
 * resumes only in the context that made it (session_id_context) and lives
 * for that context's session_timeout. A ticket whose session has a client
 * certificate resumes only while that certificate still gets the verdict
 * it got (verified again against the selected context's trust store and
 * CRLs, at the current time); otherwise the client gets a full
 * handshake. */
int tlsconf_listener_build(const Tlsplane__V1__ResolvedListener *rl, struct tlsconf_listener **out,
                           struct tp_err *err);

/* A context cache (tlsconf_ctxcache.h) for tlsconf_listener_build_cached:
 * one per process is the point (the agent's is in struct agent). Caller
 * releases it with tlsconf_ctxcache_unref. 0 or -ENOMEM. */
int tlsconf_listener_cache_new(struct tlsconf_ctxcache **out);

/* The same, taking every context from cache by its content hash and
 * building (and keeping there) only those it does not hold: every
 * listener and version naming the same content shares one SSL_CTX, and
 * rotating one certificate among thousands of contexts builds the
 * contexts that use it, not thousands. hashes gives the hash of each
 * context by name (ListenerEntry.tls_contexts: the ContextMaterial
 * resource hashes, rset.h; only that map is read); NULL, or a name it
 * lacks: SHA-256 of the packed ResolvedTlsContext. What the result serves
 * is the same as a fresh build's: a built context holds nothing of a
 * listener or of a version (sessions and ticket keys are the base's, the
 * session ID context is the context's own), so sessions still resume only
 * in the context and listener that made them. The result holds a
 * reference to each of its cache entries until it is freed. */
int tlsconf_listener_build_cached(const Tlsplane__V1__ResolvedListener *rl,
                                  const Tlsplane__V1__ListenerEntry *hashes,
                                  struct tlsconf_ctxcache *cache, struct tlsconf_listener **out,
                                  struct tp_err *err);

/* How many contexts l serves to clients (default and SNI routes; not
 * upstream_tls's), and how many of them its build found in the cache
 * rather than built. */
size_t tlsconf_listener_contexts(const struct tlsconf_listener *l);
size_t tlsconf_listener_reused(const struct tlsconf_listener *l);

/* Context i of l (i < tlsconf_listener_contexts(l)): 0 is the default
 * context, then each SNI route's context once. Valid while l lives. */
const SSL_CTX *tlsconf_listener_context(const struct tlsconf_listener *l, size_t i);

void tlsconf_listener_ref(struct tlsconf_listener *l);
/* Drops a reference; the last one frees everything. NULL is a no-op. */
void tlsconf_listener_unref(struct tlsconf_listener *l);

/* A new server-side SSL for one connection, with SNI selection, ticket
 * keys and the renegotiation policy installed. It is made from the
 * listener's base SSL_CTX (session cache and ticket keys, no certificate)
 * and switched to the selected context (default or SNI) when its
 * ClientHello arrives, before anything is negotiated. Holds its own
 * reference to l until SSL_free. Caller frees with SSL_free. NULL on
 * allocation failure. Options set on the SSL by the caller survive the
 * switch. */
SSL *tlsconf_listener_ssl_new(struct tlsconf_listener *l);

/* upstream_tls (tls.connect): whether l encrypts to its upstream, and a
 * new client SSL for one upstream connection of the client connection
 * `client` (its SNI and ALPN protocol are read when servername_from_client
 * / alpn_from_client ask; may be NULL): the client context (client
 * certificate, trust store, cipher policy, ALPN list), the SNI, and with
 * reject_unauthorized peer verification against the trust store and the
 * name check (check_server_identity, else the SNI sent, else the
 * upstream's host: SSL_set1_host, or the IP address). In connect state.
 * Caller frees with SSL_free. NULL when l has no upstream_tls, or on
 * allocation failure. */
int tlsconf_listener_upstream_tls(const struct tlsconf_listener *l);

/* After ssl's (an upstream SSL of l) handshake: what OpenSSL does not
 * check itself. minDHSize: a DHE key exchange with a prime under
 * min_dh_size bits. -1 with the reason in why, else 0. */
int tlsconf_listener_upstream_check(const struct tlsconf_listener *l, SSL *ssl, char *why,
                                    size_t why_len);
SSL *tlsconf_listener_upstream_ssl_new(struct tlsconf_listener *l, SSL *client);

/* The tls_context name that served ssl ("tlsContexts/web"), for logs and
 * metrics: known once the ClientHello has been processed; NULL before it
 * and for an SSL not made by tlsconf_listener_ssl_new. Valid while ssl
 * lives. */
const char *tlsconf_ssl_context_name(const SSL *ssl);

/* Whether ssl's ClientHello was an ACME tls-alpn-01 validation: its ALPN
 * list exactly "acme-tls/1". ANSWERED: the listener has a challenge for
 * its SNI, which it serves (the challenge certificate, "acme-tls/1"
 * selected); the caller closes the connection once the handshake is done
 * (close_notify, nothing forwarded) and *host (may be NULL) is the name,
 * valid while ssl lives. REFUSED: no challenge for its SNI (or no SNI);
 * the handshake failed with alert no_application_protocol. NONE: an
 * ordinary ClientHello, or none yet. */
enum tlsconf_acme { TLSCONF_ACME_NONE, TLSCONF_ACME_ANSWERED, TLSCONF_ACME_REFUSED };
enum tlsconf_acme tlsconf_ssl_acme(const SSL *ssl, const char **host);

/* How many ACME challenges l answers. */
size_t tlsconf_listener_acme_challenges(const struct tlsconf_listener *l);

/* Client-initiated renegotiations allowed per window (the listener's
 * renegotiation_limit / renegotiation_window; limit 0: renegotiation is
 * refused by OpenSSL itself). */
int tlsconf_listener_renegotiation_limit(const struct tlsconf_listener *l);
int64_t tlsconf_listener_renegotiation_window_ms(const struct tlsconf_listener *l);

/* What a connection negotiated, as Node exposes it (servername, ALPN/NPN
 * protocol, getCipher(), authorized/authorizationError,
 * getPeerCertificate().subject.CN) and as PROXY protocol v2 TLVs carry it.
 * Strings point into ssl or into info; valid while ssl lives (protocol:
 * until the next tlsconf_conn_info call on ssl). Node's authorized is
 * has_peer_cert && verify_result == X509_V_OK. A context that requested a
 * certificate and got none reports X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
 * (as Node does); one that requested none reports X509_V_OK with
 * verify_error NULL. The OCSP fields are those of the last ClientHello. */
struct tlsconf_conn_info {
  const char *servername;   /* SNI, or NULL */
  const char *protocol;     /* ALPN or NPN protocol selected, or NULL */
  const char *version;      /* "TLSv1.3" */
  const char *cipher;       /* OpenSSL name, e.g. "TLS_AES_128_GCM_SHA256" */
  int resumed;              /* session resumed (ID or ticket) */
  int has_peer_cert;        /* the client sent a certificate */
  long verify_result;       /* X509_V_OK when authorized */
  const char *verify_error; /* authorizationError text, or NULL when authorized */
  char peer_cn[256];        /* client certificate subject CN, or "" */
  int ocsp_requested;       /* the client sent status_request ('OCSPRequest') */
  int ocsp_stapled;         /* and a response was stapled */
};

void tlsconf_conn_info(SSL *ssl, struct tlsconf_conn_info *info);

#endif
