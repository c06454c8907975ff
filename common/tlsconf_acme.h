/* An ACME tls-alpn-01 challenge (RFC 8737) as an SSL_CTX: what a listener
 * serves to a validation client that offers exactly ALPN "acme-tls/1" for
 * the challenge's name (tlsconf_listener.c chooses it in its client hello
 * callback). Built from an AcmeChallengeMaterial (snapshot.proto), the
 * one place its rules live: the agent builds with it, and a server that
 * makes challenges can check what it made with the same code. */
#ifndef TLSPLANE_COMMON_TLSCONF_ACME_H
#define TLSPLANE_COMMON_TLSCONF_ACME_H

#include <openssl/ssl.h>

#include "error.h"
#include "tlsplane/v1/snapshot.pb-c.h"

/* Checks m and builds its SSL_CTX: server_name a lower-case DNS name (no
 * wildcard, no trailing dot: tls-alpn-01 validates one name),
 * certificate_pem exactly one certificate whose subjectAltName holds
 * server_name as a dNSName and which carries the id-pe-acmeIdentifier
 * extension (1.3.6.1.5.5.7.1.31, critical), private_key_pem its key
 * (unencrypted). The context: TLS 1.2 at least, that certificate and key,
 * no session cache, no tickets, no client certificate, an ALPN select
 * callback that chooses "acme-tls/1" and refuses any list without it
 * (alert no_application_protocol), and a session ID context of its own
 * (no session of another context resumes in it). INVALID_ARGUMENT naming
 * the field ("certificate_pem: ...", "private_key_pem: does not match the
 * certificate"); the caller adds which challenge. *out holds one
 * reference (SSL_CTX_free); m may be freed afterwards. */
int tlsconf_acme_ctx_build(const Tlsplane__V1__AcmeChallengeMaterial *m, SSL_CTX **out,
                           struct tp_err *err);

#endif
