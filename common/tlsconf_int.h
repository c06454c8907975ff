/* Internals shared by tlsconf.c (resource validation), tlsconf_policy.c
 * (cipher policies) and tlsconf_ctx.c (the SSL_CTX build). Not for use
 * outside common/tlsconf*.c. */
#ifndef TLSPLANE_COMMON_TLSCONF_INT_H
#define TLSPLANE_COMMON_TLSCONF_INT_H

#include <openssl/ssl.h>
#include <time.h>

#include "error.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "tlsplane/v1/certificate.pb-c.h"
#include "tlsplane/v1/cipher_policy.pb-c.h"

/* Setters for protobuf-c message members, which are malloc'd and freed by
 * protobuf_c_message_free_unpacked. Each frees the previous value (a
 * string equal to protobuf_c_empty_string is the unset default and is
 * never freed). Setters return 0, or -1 when out of memory (the field
 * keeps its previous value then). */
int tlsconf__str_set(char **field, const char *value);
/* Takes ownership of value (malloc'd; NULL means out of memory: -1). */
int tlsconf__str_take(char **field, char *value);
/* Resets to "", wiping the old value first (it may be a secret). */
void tlsconf__str_clear(char **field);
int tlsconf__ts_set(Google__Protobuf__Timestamp **field, time_t t);
void tlsconf__ts_clear(Google__Protobuf__Timestamp **field);
/* Takes ownership of v[0..n) (malloc'd strings in a malloc'd array). */
void tlsconf__strv_take(size_t *n_field, char ***field, char **v, size_t n);
/* Appends a copy of s. */
int tlsconf__strv_push(size_t *n_field, char ***field, const char *s);
/* Frees and resets a bytes field, wiping it first. */
void tlsconf__bytes_clear(ProtobufCBinaryData *b);

int tlsconf__oom(struct tp_err *err);

/* The issuer of chain's leaf an OCSP response of c is checked with:
 * c->issuer_certificate_pem when set (exactly one certificate, which must
 * have issued the leaf: names, key identifiers, signature), else the
 * chain's second certificate, else none (*out NULL). *out holds a
 * reference (X509_free). The one rule both tlsconf_certificate_prepare
 * and tlsconf_ctx_build use; errors name issuer_certificate_pem. */
int tlsconf__ocsp_issuer(const Tlsplane__V1__Certificate *c, STACK_OF(X509) *chain, X509 **out,
                         struct tp_err *err);

/* What applying a policy learnt beyond success. */
struct tlsconf_policy_info {
  int dhparam_bits;  /* 0 without dhparam_pem */
  char *warnings[8]; /* malloc'd; caller frees with tlsconf__policy_info_free */
  size_t n_warnings;
};

void tlsconf__policy_info_free(struct tlsconf_policy_info *info);

/* Who the policy is applied for: the context being built (its method,
 * server or client, decides whether DHE ciphers need DH parameters), or
 * the policy on its own, which a server or a client context may use. */
enum tlsconf__policy_use { TLSCONF__POLICY_CTX, TLSCONF__POLICY_ALONE };

/* Applies cp (NULL: the defaults) to ctx: security level, protocol
 * versions, TLS <= 1.2 cipher list, TLS 1.3 suites, groups, ECDH on/off,
 * DH parameters, server cipher preference; then checks that some cipher
 * is usable (for use). The one place both tlsconf_cipher_policy_prepare
 * and tlsconf_ctx_build get their cipher semantics from. Errors name the
 * CipherPolicy field. info may be NULL; with info, warnings are also
 * collected (cipher list entries that match nothing, weak DH). */
int tlsconf__policy_apply(SSL_CTX *ctx, const Tlsplane__V1__CipherPolicy *cp,
                          enum tlsconf__policy_use use, struct tlsconf_policy_info *info,
                          struct tp_err *err);

/* The key-exchange groups tlsconf__policy_apply sets for cp, in
 * SSL_set1_groups_list form, or NULL when it leaves OpenSSL's defaults.
 * The SNI switch (tlsconf_listener.c) copies them onto the SSL:
 * SSL_set_SSL_CTX does not carry groups, and OpenSSL 3.0 has no getter
 * for an SSL_CTX's list. The string lives in cp or is static. */
const char *tlsconf__policy_groups(const Tlsplane__V1__CipherPolicy *cp);

#endif
