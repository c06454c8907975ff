/* TLS configuration: the one place where the seed's option semantics live.
 *
 * The server validates every write with these functions and the agent
 * builds its SSL_CTXs with the same tlsconf_ctx_build, so what the API
 * accepts every agent can load (DESIGN.md, invariant 1).
 *
 * Error messages name the resource field (proto field names, no resource
 * prefix: "private_key_pem: does not match the certificate"); the caller
 * prefixes the request field ("certificate."). Status is INVALID_ARGUMENT
 * unless stated. */
#ifndef TLSPLANE_COMMON_TLSCONF_H
#define TLSPLANE_COMMON_TLSCONF_H

#include <openssl/ssl.h>
#include <stdint.h>
#include <time.h>

#include "error.h"
#include "tlsplane/v1/certificate.pb-c.h"
#include "tlsplane/v1/cipher_policy.pb-c.h"
#include "tlsplane/v1/revocation_list.pb-c.h"
#include "tlsplane/v1/snapshot.pb-c.h"
#include "tlsplane/v1/tls_context.pb-c.h"
#include "tlsplane/v1/trust_bundle.pb-c.h"

/* The default cipher policy: what a context without a cipher policy
 * gets, and what a policy's empty ciphers, ciphersuites and ecdh_curve
 * mean. Mozilla's "intermediate" configuration (guidelines 6.0: TLS 1.2
 * and 1.3; ECDHE with AES-GCM or ChaCha20-Poly1305 only, so forward secret
 * and AEAD throughout; groups X25519, P-256, P-384; its first group,
 * X25519MLKEM768, is not in OpenSSL 3.0) served in the server's order
 * (honorCipherOrder's default). Versions and the security level are
 * tlsconf_cipher_policy_prepare's defaults. */
extern const char tlsconf_default_ciphers[];
extern const char tlsconf_default_ciphersuites[];
extern const char tlsconf_default_groups[];

/* Mozilla's "old" configuration's cipher list (guidelines 5.7, the last
 * with one): what empty ciphers mean in a policy that enables TLS 1.0 or
 * 1.1 or sets ecdh_disabled, which the default's TLS 1.2 ECDHE ciphers
 * cannot serve; also the built-in cipherPolicies/mozilla-old. */
extern const char tlsconf_old_ciphers[];

/* The seed's default cipher list (tls.createServer's `ciphers` default in
 * 2015), exactly, joined without spaces: the built-in policy
 * cipherPolicies/node-2015-default. It offers RSA key exchange without
 * forward secrecy, CBC with SHA-1, CCM8 and ARIA (its "HIGH"). */
extern const char tlsconf_node2015_ciphers[];

/* Validates and normalises a Certificate on write.
 * In: c's input fields (certificate_chain_pem + private_key_pem, or pfx,
 *     with passphrase when encrypted; allow_invalid_time; ocsp_response).
 *     When neither a key nor a pfx is given, existing_key_pem (the stored
 *     key, may be NULL) is used: a renewed chain for the same key.
 * Checks: PEM/PKCS#12 parse, passphrase, key matches the leaf, the chain is
 *     in order (each certificate issued by the next), validity at `now`
 *     unless allow_invalid_time, the OCSP response (if any) is successful
 *     and names the leaf.
 * Out: c->certificate_chain_pem holds the chain PEM (leaf first); every
 *     derived field is set (key_algorithm, key_bits, key_curve, subject,
 *     issuer, dns_names, ip_addresses, serial_number, not_before, not_after,
 *     sha256_fingerprint, chain_length, has_private_key, ocsp_next_update,
 *     ocsp_cert_status, ocsp_responder_url); the input-only fields (private_key_pem,
 *     passphrase, pfx, allow_invalid_time) are freed and cleared.
 *     *key_pem_out receives the unencrypted PKCS#8 PEM key (caller frees
 *     with free()). Derived message fields are allocated with malloc and
 *     are freed by protobuf_c_message_free_unpacked; derived fields already
 *     set (an update re-preparing a stored resource) are replaced.
 * Details:
 *   - No key at all (no private_key_pem, no pfx, existing_key_pem NULL) is
 *     accepted: has_private_key is false and *key_pem_out NULL; such a
 *     certificate cannot be served (tlsconf_ctx_build refuses it).
 *   - Keys: RSA (at least 1024 bits), EC on a named curve, Ed25519, Ed448;
 *     other types are refused. key_bits is EVP_PKEY_get_bits (256 for
 *     Ed25519, 456 for Ed448).
 *   - Encrypted keys never prompt: without passphrase the error is
 *     "passphrase: the private key is encrypted; a passphrase is required",
 *     with a wrong one "passphrase: wrong passphrase for private_key_pem"
 *     ("... for the PKCS#12 file" for pfx).
 *   - pfx: the chain is the key's certificate followed by the file's
 *     certificates that issue it, in issuing order; others are dropped.
 *     Files that need RC2/RC4/DES (`openssl pkcs12 -legacy`) make OpenSSL's
 *     legacy provider load (with the default provider) once per process.
 *   - certificate_chain_pem holds only CERTIFICATE blocks ("PEM block 2 is
 *     a PRIVATE KEY, not a CERTIFICATE") and is rewritten as clean PEM.
 *   - The chain order check also verifies each signature with the next
 *     certificate's key. Validity is checked for every certificate of the
 *     chain ("certificate expired at ..." for the leaf, "certificate 2
 *     expired at ..." for the others).
 *   - ocsp_response needs the leaf's issuer: issuer_certificate_pem
 *     (exactly one certificate that issued the leaf; rewritten as clean
 *     PEM, checked even without a response) or else the chain's second
 *     certificate; its signature must verify with the issuer or a
 *     responder the issuer delegated to; next_update must not be past
 *     ("ocsp_response: expired at ..."; checked even with
 *     allow_invalid_time). A revoked status is accepted and reported in
 *     ocsp_cert_status.
 *   - A stored key (existing_key_pem) that does not parse is
 *     GRPC_STATUS_INTERNAL.
 * On failure c stays a valid message (free it as usual) whose content is
 * unspecified, and *key_pem_out is NULL. */
int tlsconf_certificate_prepare(Tlsplane__V1__Certificate *c, const char *existing_key_pem,
                                time_t now, char **key_pem_out, struct tp_err *err);

/* The leaf of c's stored chain and the certificate that issued it (from
 * issuer_certificate_pem or the chain), for asking its OCSP responder.
 * FAILED_PRECONDITION when neither names the issuer. Caller frees both
 * with X509_free (NULL on failure). */
int tlsconf_certificate_ocsp_target(const Tlsplane__V1__Certificate *c, X509 **leaf, X509 **issuer,
                                    struct tp_err *err);

/* Bounds of PEM and DER input, checked by the *_prepare functions before
 * anything is parsed, so that no write costs more than a real deployment
 * needs (a chain of 5,000 certificates is refused, not parsed). In bytes
 * unless named otherwise; docs/api.md lists them. */
#define TLSCONF_CHAIN_CERTS_MAX 10 /* leaf + intermediates (+ root) */
#define TLSCONF_CHAIN_PEM_MAX (64 * 1024)
#define TLSCONF_KEY_PEM_MAX (64 * 1024)
#define TLSCONF_PFX_MAX (256 * 1024)
#define TLSCONF_OCSP_MAX (64 * 1024)
#define TLSCONF_TRUST_BUNDLE_CERTS_MAX 1000 /* Mozilla's root store has ~150 */
#define TLSCONF_TRUST_BUNDLE_PEM_MAX (4 * 1024 * 1024)
#define TLSCONF_CRL_MAX (8 * 1024 * 1024) /* crl_pem or crl_der */
#define TLSCONF_TLS13_TICKETS_MAX 10
#define TLSCONF_TLS13_TICKETS_DEFAULT 2 /* OpenSSL's, and the seed's */

/* Validates a TrustBundle (ca_pem: one or more CA certificates, each valid at
 * now unless allow_invalid_time) and sets its derived certificates[];
 * clears allow_invalid_time. ca_pem may hold only CERTIFICATE blocks and is
 * rewritten as clean PEM. A certificate without basicConstraints CA:TRUE is
 * accepted as a trust anchor (Node's `ca` takes self-signed leaves too);
 * is_ca tells. */
int tlsconf_trust_bundle_prepare(Tlsplane__V1__TrustBundle *tb, time_t now, struct tp_err *err);

/* Validates a RevocationList given as crl_pem or crl_der, stores it as PEM in
 * crl_pem, clears crl_der, and sets the derived fields. Exactly one CRL;
 * delta CRLs are refused. An expired CRL is accepted here (the agent's
 * verification then fails client certificates of that issuer with "CRL has
 * expired", as OpenSSL does); its signature is checked by OpenSSL when it
 * is used, against the trust bundle. */
int tlsconf_revocation_list_prepare(Tlsplane__V1__RevocationList *rl, struct tp_err *err);

/* Validates a CipherPolicy by building an SSL_CTX with it: ciphers,
 * ciphersuites, ecdh_curve / ecdh_disabled, dhparam_pem (2048 to 8192
 * bits, p and q prime: EVP_PKEY_param_check), secure_protocol (an OpenSSL method name; SSLv3 and
 * SSLv2 refused as not supported by this OpenSSL) or min/max_version, and
 * honor_cipher_order. Sets dhparam_bits and warnings (replacing earlier
 * ones). The same code applies the policy in tlsconf_ctx_build.
 * Semantics:
 *   - Versions: min_version unset is TLS 1.2 (TLS 1.0 when max_version is
 *     below 1.2), max_version unset is TLS 1.3. secure_protocol
 *     "TLS_method" / "SSLv23_method" mean TLS 1.0 to 1.3, "TLSv1_method",
 *     "TLSv1_1_method", "TLSv1_2_method", "TLSv1_3_method" one version;
 *     each also as _server_method / _client_method.
 *   - Security level, set explicitly so the host's openssl.cnf or libssl
 *     build default cannot change what validates: 2; 0 when TLS 1.0 or
 *     1.1 is enabled (OpenSSL
 *     3 refuses their handshake signatures above level 0). "@SECLEVEL=n" in
 *     ciphers overrides.
 *   - Empty ciphers / ciphersuites: tlsconf_default_ciphers /
 *     tlsconf_default_ciphersuites; empty ciphers with TLS 1.0 or 1.1
 *     enabled or with ecdh_disabled: tlsconf_old_ciphers.
 *   - ciphers: entries that match nothing are ignored (as OpenSSL does) and
 *     reported in warnings; a list matching nothing is an error, and so is
 *     a policy under which no cipher is usable with its versions. DHE
 *     ciphers count here whether or not the policy has DH parameters: a
 *     client context (upstream_tls) needs none (the upstream chooses the
 *     group, minDHSize bounds it). A server context without them
 *     negotiates no DHE cipher, as the seed says, so tlsconf_ctx_build
 *     refuses a server context whose policy has only DHE ciphers and no
 *     dhparam_pem / dhparam_group.
 *   - ciphers may name TLS 1.3 suites too (Node's ciphers option does):
 *     those go to the TLS 1.3 suites, the rest to the TLS 1.2 list. Giving
 *     them there and ciphersuites as well is an error naming both; a list
 *     of only TLS 1.3 suites leaves nothing for TLS 1.2, so TLS 1.3 is the
 *     lowest version (a warning says so).
 *   - ciphersuites: every name must be a TLS 1.3 suite this OpenSSL knows
 *     (OpenSSL itself would skip unknown names silently).
 *   - ecdh_curve: each group must exist ("ecdh_curve: unknown group
 *     \"P-999\""); empty: tlsconf_default_groups; "auto": OpenSSL's
 *     default groups.
 *     ecdh_disabled removes ECDHE ciphers and leaves TLS 1.3 the groups
 *     ffdhe2048:ffdhe3072:ffdhe4096 (clients without FFDHE groups fail);
 *     it contradicts a non-empty ecdh_curve. */
int tlsconf_cipher_policy_prepare(Tlsplane__V1__CipherPolicy *cp, struct tp_err *err);

/* Checks an SNI hostname pattern: a hostname, or "*." followed by a
 * hostname of at least two labels (one leading wildcard label: "*.com" is
 * refused). Labels are 1 to 63 of [a-z0-9-] not starting or ending with
 * '-', at most 253 characters in all, no trailing dot, no numeric last
 * label (an IP address). Upper case is refused (lower-case expected). The
 * message names the pattern but no field ("\"Foo.com\": must be lower
 * case"); the caller prefixes its field. */
int tlsconf_hostname_pattern_check(const char *pattern, struct tp_err *err);

/* Builds a server SSL_CTX from a resolved context: every certificate with
 * its key and chain (one per key algorithm), the cipher policy (or the
 * default policy when rc->cipher_policy is NULL), trust bundle and CRLs
 * (X509_V_FLAG_CRL_CHECK), request_cert / reject_unauthorized, ALPN and NPN
 * selection, session timeout / id context / tickets / cache size, OCSP
 * stapling (the response of the certificate actually served), max send
 * fragment. The SSL_CTX owns copies of everything it needs (rc may be freed
 * afterwards). Caller frees with SSL_CTX_free. Error messages name the
 * TlsContext field ("certificates: two certificates with key algorithm EC
 * (certificates/a, certificates/b)"); errors of the cipher policy are
 * prefixed "cipher_policy: ".
 * Semantics:
 *   - Certificates: one per key algorithm (RSA, EC, ED25519, ED448), each
 *     with its key (a certificate without a key is refused) and exactly its
 *     stored chain (SSL_MODE_NO_AUTO_CHAIN: never a chain built from the
 *     trust bundle). OpenSSL picks the certificate per handshake from the
 *     client's signature algorithms. Validity is not checked here (the
 *     server's expiry jobs own that; an agent loading a snapshot never
 *     fails on the clock).
 *   - request_cert: SSL_VERIFY_PEER. With reject_unauthorized also
 *     SSL_VERIFY_FAIL_IF_NO_PEER_CERT and OpenSSL's verdict ends the
 *     handshake; without it a verify callback accepts every chain and
 *     SSL_get_verify_result keeps the verdict (Node's authorized /
 *     authorizationError: authorized = a peer certificate was sent and the
 *     result is X509_V_OK). reject_unauthorized needs request_cert and a
 *     trust bundle. request_cert without a trust bundle is allowed: every
 *     client certificate is then unauthorized (no system roots are used).
 *   - trust_bundle: the verify store and the CA names sent in the
 *     CertificateRequest. revocation_lists (which need a trust_bundle) add
 *     X509_V_FLAG_CRL_CHECK: the client's own certificate is checked
 *     against its issuer's CRL (intermediates are not: no CRL_CHECK_ALL),
 *     and a client whose issuer has no CRL in the list fails with "unable
 *     to get certificate CRL".
 *   - ALPN: the first of alpn_protocols the client offers (server
 *     preference); no overlap ends the handshake with a fatal
 *     no_application_protocol alert, as Node does. Clients sending no ALPN
 *     get none. NPN advertises npn_protocols (TLS 1.2 and below). Each name
 *     1 to 255 bytes ("alpn_protocols[1]: ...").
 *   - session_timeout: 1 s to 7 days (RFC 8446 caps ticket lifetime at 7
 *     days); default 300 s. session_id_context: at most 32 bytes; default
 *     the SHA-256 of the TlsContext's name, so that sessions resume only in
 *     the context that made them and request_cert contexts can resume at
 *     all. session_tickets false sets SSL_OP_NO_TICKET. session_cache_size
 *     -1 turns the server cache off, 0 keeps OpenSSL's default, n > 0 sets
 *     it; below -1 is an error. tls13_tickets: 0 to 10 tickets after a
 *     full TLS 1.3 handshake (SSL_CTX_set_num_tickets), unset 2.
 *   - ocsp_stapling: a status callback staples the stored ocsp_response of
 *     the certificate chosen for the handshake, and nothing once that
 *     response's next_update has passed (checked per handshake). The
 *     response is matched with the issuer of issuer_certificate_pem or the
 *     chain; issuer_certificate_pem is never served.
 *   - max_send_fragment: 512 to 16384; 0 leaves 16384.
 *   - Callback data lives in the SSL_CTX's ex_data (freed with the last
 *     reference to the SSL_CTX), so connections keep working on a context
 *     the caller has already released.
 *   - SNI: SSL_set_SSL_CTX switches the certificates, security level, DH
 *     parameters, cipher lists, trust store, CA names and the ALPN / NPN /
 *     OCSP callbacks, but not what SSL_new copied into the SSL: verify
 *     mode and callback, options (SSL_OP_NO_TICKET,
 *     SSL_OP_CIPHER_SERVER_PREFERENCE), version bounds, groups, max send
 *     fragment; session cache and ticket keys stay those of the SSL's
 *     first SSL_CTX. An SNI callback must copy the former from the new
 *     SSL_CTX (SSL_set_verify, SSL_set_options / SSL_clear_options,
 *     SSL_set_min/max_proto_version, ...). */
int tlsconf_ctx_build(const Tlsplane__V1__ResolvedTlsContext *rc, SSL_CTX **out,
                      struct tp_err *err);

/* A client context (client set) hands every new session of an SSL made
 * from it (each TLS 1.3 NewSessionTicket is one, a TLS 1.2 handshake
 * makes one) to cb(data, sess), set per SSL: cb returns 1 when it keeps
 * the reference to sess (freed later with SSL_SESSION_free), 0 when it
 * does not. 0 or -ENOMEM. */
typedef int (*tlsconf_session_cb)(void *data, SSL_SESSION *sess);
int tlsconf_ssl_session_cb_set(SSL *ssl, tlsconf_session_cb cb, void *data);

/* What a context built by tlsconf_ctx_build serves, per certificate:
 * found once, when the context is built (the agent's /metrics reads it at
 * every scrape). */
struct tlsconf_cert_facts {
  char *certificate;       /* the Certificate's name ("certificates/web"), or "certificates[0]" */
  char *serial;            /* the leaf's serial, upper-case hex (certinfo_integer_hex) */
  char *sha256;            /* the leaf's SHA-256 fingerprint, "AB:CD:..." (certinfo_fingerprint) */
  time_t not_after;        /* the leaf's notAfter, seconds since the epoch */
  int has_ocsp;            /* a response is stapled (ocsp_stapling) and it has a next_update */
  time_t ocsp_next_update; /* when has_ocsp: that next_update, seconds since the epoch */
};

/* The facts of every certificate ctx serves, in the context's order, in
 * *out (valid while ctx lives); returns how many. 0 for an SSL_CTX not
 * made by tlsconf_ctx_build. */
size_t tlsconf_ctx_certs(const SSL_CTX *ctx, const struct tlsconf_cert_facts **out);

/* tls.getCiphers(): the cipher suites enabled by cp (or every suite this
 * OpenSSL supports, when cp is NULL), TLS 1.3 first, in preference order.
 * With cp: the suites usable with its versions at its security level
 * (SSL_get1_supported_ciphers), errors as for
 * tlsconf_cipher_policy_prepare. Without: "ALL:COMPLEMENTOFALL" at level 0
 * plus every TLS 1.3 suite. key_exchange / authentication use the names of
 * SSL_CIPHER_description ("ECDH", "DH", "RSA", "ECDSA", "any"). Fills
 * resp->ciphers, replacing what it held (allocated with malloc; freed by
 * protobuf_c_message_free_unpacked). */
int tlsconf_ciphers_list(const Tlsplane__V1__CipherPolicy *cp,
                         Tlsplane__V1__ListCiphersResponse *resp, struct tp_err *err);

#endif
