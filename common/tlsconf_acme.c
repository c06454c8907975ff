/* An ACME tls-alpn-01 challenge as an SSL_CTX (see tlsconf_acme.h). */
#include "tlsconf_acme.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "alpn.h"
#include "certinfo.h"
#include "tlsconf.h"
#include "tlsconf_int.h"

/* id-pe-acmeIdentifier (RFC 8737, section 6.1). */
#define ACME_IDENTIFIER_OID "1.3.6.1.5.5.7.1.31"
/* The session ID context of every challenge context: none of a listener's
 * TLS contexts uses it (theirs are their session_id_context or a hash of
 * their name), so no session of theirs resumes here. */
#define ACME_SID_CTX "tlsplane acme-tls/1"

/* Chooses "acme-tls/1" from the client's list (in: the wire form without
 * its 2-byte length, as OpenSSL gives it), or refuses the handshake with
 * no_application_protocol. */
static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg) {
  static const unsigned char want[] = ALPN_ACME_TLS_1;
  const size_t want_len = sizeof(want) - 1;
  for (unsigned i = 0; i < inlen;) {
    unsigned n = in[i];
    if (n > inlen - i - 1)
      break;
    if (n == want_len && memcmp(in + i + 1, want, want_len) == 0) {
      *out = in + i + 1;
      *outlen = (unsigned char)n;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + n;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* Whether x names host as a dNSName of its subjectAltName. */
static int san_has(X509 *x, const char *host) {
  char **dns = NULL, **ips = NULL;
  size_t n_dns = 0, n_ips = 0;
  if (certinfo_sans(x, &dns, &n_dns, &ips, &n_ips) != 0)
    return -1;
  int found = 0;
  for (size_t i = 0; i < n_dns; i++) {
    found |= strcasecmp(dns[i], host) == 0;
    free(dns[i]);
  }
  for (size_t i = 0; i < n_ips; i++)
    free(ips[i]);
  free(dns);
  free(ips);
  return found;
}

/* Whether x carries the acmeIdentifier extension, marked critical. */
static int acme_identifier_check(X509 *x, struct tp_err *err) {
  ASN1_OBJECT *oid = OBJ_txt2obj(ACME_IDENTIFIER_OID, 1);
  if (oid == NULL)
    return tlsconf__oom(err);
  int idx = X509_get_ext_by_OBJ(x, oid, -1);
  ASN1_OBJECT_free(oid);
  if (idx < 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "certificate_pem: no acmeIdentifier extension (" ACME_IDENTIFIER_OID ")");
  if (!X509_EXTENSION_get_critical(X509_get_ext(x, idx)))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "certificate_pem: the acmeIdentifier extension must be critical");
  return 0;
}

int tlsconf_acme_ctx_build(const Tlsplane__V1__AcmeChallengeMaterial *m, SSL_CTX **out,
                           struct tp_err *err) {
  *out = NULL;
  STACK_OF(X509) *certs = NULL;
  EVP_PKEY *key = NULL;
  SSL_CTX *ctx = NULL;
  int rc = -1;
  const char *name = m->server_name != NULL ? m->server_name : "";
  if (name[0] == '\0') {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "server_name: required");
    goto done;
  }
  if (strncmp(name, "*.", 2) == 0) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "server_name: \"%s\": tls-alpn-01 validates one name, not a wildcard", name);
    goto done;
  }
  if (tlsconf_hostname_pattern_check(name, err) != 0) {
    tp_err_prefix(err, "server_name: ");
    goto done;
  }
  const char *cert_pem = m->certificate_pem != NULL ? m->certificate_pem : "";
  const char *key_pem = m->private_key_pem != NULL ? m->private_key_pem : "";
  if (cert_pem[0] == '\0') {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "certificate_pem: required");
    goto done;
  }
  if (key_pem[0] == '\0') {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "private_key_pem: required");
    goto done;
  }
  if (certinfo_certs_read(cert_pem, strlen(cert_pem), "certificate_pem", &certs, err) != 0)
    goto done;
  if (sk_X509_num(certs) != 1) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "certificate_pem: one certificate expected (got %d)", sk_X509_num(certs));
    goto done;
  }
  X509 *leaf = sk_X509_value(certs, 0);
  int san = san_has(leaf, name);
  if (san < 0) {
    tlsconf__oom(err);
    goto done;
  }
  if (!san) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "certificate_pem: \"%s\" is not a DNS name of its subjectAltName", name);
    goto done;
  }
  if (acme_identifier_check(leaf, err) != 0)
    goto done;
  if (certinfo_key_read(key_pem, strlen(key_pem), NULL, "private_key_pem", &key, err) != 0)
    goto done;
  if (!X509_check_private_key(leaf, key)) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "private_key_pem: does not match the certificate");
    goto done;
  }
  if ((ctx = SSL_CTX_new(TLS_server_method())) == NULL) {
    tlsconf__oom(err);
    goto done;
  }
  SSL_CTX_set_mode(ctx, SSL_MODE_NO_AUTO_CHAIN | SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
  SSL_CTX_set_alpn_select_cb(ctx, alpn_select_cb, NULL);
  if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) || !SSL_CTX_set_num_tickets(ctx, 0) ||
      !SSL_CTX_set_session_id_context(ctx, (const unsigned char *)ACME_SID_CTX,
                                      sizeof(ACME_SID_CTX) - 1)) {
    tlsconf__oom(err);
    goto done;
  }
  if (!SSL_CTX_use_cert_and_key(ctx, leaf, key, NULL, 1)) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "certificate_pem: not usable");
    tp_err_append_openssl(err);
    goto done;
  }
  *out = ctx;
  ctx = NULL;
  rc = 0;
done:
  SSL_CTX_free(ctx);
  EVP_PKEY_free(key);
  certinfo_certs_free(certs);
  ERR_clear_error();
  return rc;
}
