/* TLS configuration, part 3: building a server SSL_CTX from a resolved
 * TlsContext (tls.createSecureContext plus the per-server options).
 *
 * Everything a handshake needs beyond OpenSSL's own state (ALPN and NPN
 * lists, OCSP responses) lives in one struct ctx_data hung on the SSL_CTX
 * as ex_data: it is freed by the ex_data free callback when the last
 * reference to the SSL_CTX goes, so connections that still use an old
 * SSL_CTX after a swap keep valid data. It travels through void * to the
 * callbacks and carries a magic number checked on the way back. */
#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "certinfo.h"
#include "pb.h"
#include "tlsconf.h"
#include "tlsconf_int.h"

/* A stored OCSP response of one served certificate. */
struct staple {
  X509 *leaf;         /* reference held */
  unsigned char *der; /* the DER OCSPResponse, malloc'd */
  size_t len;
  int has_next_update;
  time_t next_update; /* never stapled from then on */
};

#define CTX_DATA_MAGIC 0x7c5e4a31u

struct ctx_data {
  unsigned magic; /* CTX_DATA_MAGIC */
  /* ALPN protocols in wire format (length-prefixed), server preference
   * first; alpn_len 0 when none are configured. */
  unsigned char *alpn;
  unsigned alpn_len;
  /* NPN protocols in wire format: advertised (a server context), or
   * wanted, in preference order (a client context). */
  unsigned char *npn;
  unsigned npn_len;
  struct staple *staples;
  size_t n_staples;
  /* What each certificate served is (tlsconf_ctx_certs), in order. */
  struct tlsconf_cert_facts *certs;
  size_t n_certs;
};

static struct ctx_data *ctx_data_check(void *p) {
  struct ctx_data *d = p;
  if (d == NULL || d->magic != CTX_DATA_MAGIC)
    abort(); /* memory corruption or a foreign pointer: never go on */
  return d;
}

static void ctx_data_free(struct ctx_data *d) {
  if (d == NULL)
    return;
  ctx_data_check(d);
  free(d->alpn);
  free(d->npn);
  for (size_t i = 0; i < d->n_staples; i++) {
    X509_free(d->staples[i].leaf);
    free(d->staples[i].der);
  }
  free(d->staples);
  for (size_t i = 0; i < d->n_certs; i++) {
    free(d->certs[i].certificate);
    free(d->certs[i].serial);
    free(d->certs[i].sha256);
  }
  free(d->certs);
  d->magic = 0;
  free(d);
}

static void ctx_data_free_cb(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                             void *argp) {
  ctx_data_free(ptr);
}

/* The ex_data index, registered once per process (process context). */
static pthread_once_t ctx_index_once = PTHREAD_ONCE_INIT;
static int ctx_index = -1;

static void ctx_index_init(void) {
  ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, ctx_data_free_cb);
}

/* Callbacks ------------------------------------------------------------- */

/* ALPN: the first of the server's protocols the client offers (server
 * preference, as Node does); no overlap is a fatal no_application_protocol
 * alert (RFC 7301, section 3.2). */
static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg) {
  struct ctx_data *d = ctx_data_check(arg);
  for (unsigned i = 0; i < d->alpn_len; i += 1u + d->alpn[i]) {
    const unsigned char *want = d->alpn + i + 1;
    unsigned want_len = d->alpn[i];
    for (unsigned j = 0; j < inlen;) {
      unsigned len = in[j];
      if (len == 0 || j + 1 + len > inlen)
        return SSL_TLSEXT_ERR_ALERT_FATAL; /* malformed list */
      if (len == want_len && memcmp(in + j + 1, want, len) == 0) {
        *out = want;
        *outlen = (unsigned char)want_len;
        return SSL_TLSEXT_ERR_OK;
      }
      j += 1 + len;
    }
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

#ifndef OPENSSL_NO_NEXTPROTONEG
static int npn_advertise_cb(SSL *ssl, const unsigned char **out, unsigned int *outlen, void *arg) {
  struct ctx_data *d = ctx_data_check(arg);
  *out = d->npn;
  *outlen = d->npn_len;
  return SSL_TLSEXT_ERR_OK;
}

/* NPN, a client context: the first of the server's protocols that we
 * want; none in common: our first (NPN has no refusal: the client always
 * names one), as Node's NPNProtocols did. `in` is the server's list as
 * received; SSL_select_next_proto checks its framing. */
static int npn_select_cb(SSL *ssl, unsigned char **out, unsigned char *outlen,
                         const unsigned char *in, unsigned int inlen, void *arg) {
  struct ctx_data *d = ctx_data_check(arg);
  SSL_select_next_proto(out, outlen, in, inlen, d->npn, d->npn_len);
  return SSL_TLSEXT_ERR_OK;
}
#endif

/* OCSP stapling: OpenSSL has chosen the certificate (by the client's
 * signature algorithms) before calling this, so SSL_get_certificate is the
 * one being served; staple its response, unless that has expired. */
static int status_cb(SSL *ssl, void *arg) {
  struct ctx_data *d = ctx_data_check(arg);
  X509 *served = SSL_get_certificate(ssl);
  if (served == NULL)
    return SSL_TLSEXT_ERR_NOACK;
  time_t now = time(NULL);
  for (size_t i = 0; i < d->n_staples; i++) {
    struct staple *s = &d->staples[i];
    if (X509_cmp(s->leaf, served) != 0)
      continue;
    if (s->has_next_update && s->next_update <= now)
      return SSL_TLSEXT_ERR_NOACK;
    unsigned char *copy = OPENSSL_memdup(s->der, s->len);
    if (copy == NULL)
      return SSL_TLSEXT_ERR_NOACK;
    if (!SSL_set_tlsext_status_ocsp_resp(ssl, copy, (long)s->len)) {
      OPENSSL_free(copy);
      return SSL_TLSEXT_ERR_NOACK;
    }
    return SSL_TLSEXT_ERR_OK; /* ssl owns copy */
  }
  return SSL_TLSEXT_ERR_NOACK;
}

/* request_cert without reject_unauthorized: go on whatever the
 * verification says; SSL_get_verify_result keeps the reason (Node's
 * authorized / authorizationError). */
static int verify_accept_cb(int preverify_ok, X509_STORE_CTX *x509_ctx) {
  return 1;
}

/* reject_unauthorized: OpenSSL's verdict, except that a CRL past its
 * nextUpdate is still used. The control plane refreshes CRLs and flags one
 * it could not (RevocationList.stale); until a newer one arrives the last
 * one keeps refusing the certificates it revokes (OpenSSL goes on to check
 * the certificate against it once this returns 1) and the others are
 * served, instead of every client being refused because a CRL endpoint was
 * down. */
static int verify_crl_cb(int preverify_ok, X509_STORE_CTX *x509_ctx) {
  if (!preverify_ok && X509_STORE_CTX_get_error(x509_ctx) == X509_V_ERR_CRL_HAS_EXPIRED) {
    X509_STORE_CTX_set_error(x509_ctx, X509_V_OK);
    return 1;
  }
  return preverify_ok;
}

/* Build steps ------------------------------------------------------------ */

/* Encodes protocol names as an ALPN/NPN wire list. */
static int protos_wire(char **names, size_t n, const char *field, unsigned char **out,
                       unsigned *out_len, struct tp_err *err) {
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    size_t len = strlen(names[i]);
    if (len < 1 || len > 255)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "%s[%zu]: a protocol name must be 1 to 255 bytes (got %zu)", field, i, len);
    total += 1 + len;
  }
  if (total > 65535)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: the list is longer than 65535 bytes encoded", field);
  unsigned char *w = malloc(total > 0 ? total : 1);
  if (w == NULL)
    return tlsconf__oom(err);
  size_t pos = 0;
  for (size_t i = 0; i < n; i++) {
    size_t len = strlen(names[i]);
    w[pos++] = (unsigned char)len;
    memcpy(w + pos, names[i], len);
    pos += len;
  }
  *out = w;
  *out_len = (unsigned)total;
  return 0;
}

/* One certificate of a context, read back from its material. */
struct loaded_cert {
  EVP_PKEY *key;
  STACK_OF(X509) *chain; /* leaf first */
  const char *alg;       /* certinfo_key_algorithm */
};

static void loaded_cert_free(struct loaded_cert *lc) {
  EVP_PKEY_free(lc->key);
  certinfo_certs_free(lc->chain);
}

static int cert_load(const Tlsplane__V1__CertificateMaterial *m, const char *label,
                     struct loaded_cert *lc, struct tp_err *err) {
  if (m->certificate == NULL || m->certificate->certificate_chain_pem[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "certificates: %s has no certificate",
                      label);
  if (m->private_key_pem[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "certificates: %s has no private key",
                      label);
  char field[160];
  snprintf(field, sizeof(field), "certificates: %s: private_key_pem", label);
  if (certinfo_key_read(m->private_key_pem, strlen(m->private_key_pem), NULL, field, &lc->key,
                        err) != 0)
    return -1;
  snprintf(field, sizeof(field), "certificates: %s: certificate_chain_pem", label);
  const char *pem = m->certificate->certificate_chain_pem;
  if (certinfo_certs_read(pem, strlen(pem), field, &lc->chain, err) != 0)
    return -1;
  if (!X509_check_private_key(sk_X509_value(lc->chain, 0), lc->key)) {
    ERR_clear_error();
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "certificates: %s: private key does not match the certificate", label);
  }
  if ((lc->alg = certinfo_key_algorithm(lc->key)) == NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "certificates: %s has an unsupported key type", label);
  return 0;
}

/* Records what the certificate is, for tlsconf_ctx_certs: found here,
 * once per built context, never per handshake or per scrape. */
static int facts_add(struct ctx_data *d, const struct loaded_cert *lc, const char *label,
                     struct tp_err *err) {
  X509 *leaf = sk_X509_value(lc->chain, 0);
  struct tlsconf_cert_facts *f = &d->certs[d->n_certs];
  memset(f, 0, sizeof(*f));
  d->n_certs++; /* freed with d from here on, whatever is missing */
  if (certinfo_time(X509_get0_notAfter(leaf), &f->not_after) != 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "certificates: %s: the certificate's notAfter does not parse", label);
  if ((f->certificate = strdup(label)) == NULL ||
      (f->serial = certinfo_integer_hex(X509_get0_serialNumber(leaf))) == NULL ||
      (f->sha256 = certinfo_fingerprint(leaf)) == NULL)
    return tlsconf__oom(err);
  return 0;
}

/* Keeps a copy of the certificate's OCSP response for the status callback.
 * The issuer the response is matched with comes from the certificate's
 * issuer_certificate_pem or its chain (tlsconf__ocsp_issuer); only the
 * chain is served. A response saying "revoked" is left out unless
 * staple_revoked (TlsContext.ocsp_staple_revoked). */
static int staple_add(struct ctx_data *d, const Tlsplane__V1__Certificate *c,
                      const struct loaded_cert *lc, int staple_revoked, const char *label,
                      struct tp_err *err) {
  const ProtobufCBinaryData *ocsp = &c->ocsp_response;
  X509 *leaf = sk_X509_value(lc->chain, 0);
  X509 *issuer = NULL;
  struct staple s = {0};
  int status = V_OCSP_CERTSTATUS_UNKNOWN;
  if (tlsconf__ocsp_issuer(c, lc->chain, &issuer, err) != 0) {
    char prefix[160];
    snprintf(prefix, sizeof(prefix), "certificates: %s: ", label);
    tp_err_prefix(err, prefix);
    return -1;
  }
  int found =
      issuer != NULL && certinfo_ocsp_next_update(ocsp->data, ocsp->len, leaf, issuer,
                                                  &s.has_next_update, &s.next_update, &status) == 0;
  X509_free(issuer);
  if (!found)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "certificates: %s: ocsp_response names no response for the certificate "
                      "and its issuer",
                      label);
  if (status == V_OCSP_CERTSTATUS_REVOKED && !staple_revoked)
    return 0;
  struct staple *ns = realloc(d->staples, (d->n_staples + 1) * sizeof(*ns));
  if (ns == NULL)
    return tlsconf__oom(err);
  d->staples = ns;
  if ((s.der = malloc(ocsp->len)) == NULL)
    return tlsconf__oom(err);
  memcpy(s.der, ocsp->data, ocsp->len);
  s.len = ocsp->len;
  s.leaf = leaf;
  X509_up_ref(leaf);
  d->staples[d->n_staples++] = s;
  struct tlsconf_cert_facts *f = &d->certs[d->n_certs - 1]; /* facts_add's, just before */
  f->has_ocsp = s.has_next_update;
  f->ocsp_next_update = s.next_update;
  return 0;
}

/* Installs one certificate: its leaf, key and exact chain. */
static int cert_install(SSL_CTX *ctx, const struct loaded_cert *lc, const char *label,
                        struct tp_err *err) {
  STACK_OF(X509) *rest = sk_X509_dup(lc->chain); /* shares lc's references */
  if (rest == NULL)
    return tlsconf__oom(err);
  X509 *leaf = sk_X509_shift(rest);
  int ok = SSL_CTX_use_cert_and_key(ctx, leaf, lc->key, rest, 1); /* takes its own refs */
  sk_X509_free(rest);
  if (!ok) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "certificates: %s does not load", label);
    tp_err_append_openssl(err);
    return -1;
  }
  return 0;
}

static int add_certificates(SSL_CTX *ctx, struct ctx_data *d,
                            const Tlsplane__V1__ResolvedTlsContext *rc, int stapling,
                            int staple_revoked, struct tp_err *err) {
  enum { MAX_CERTS = 8 };
  /* The key algorithm of each certificate loaded so far: OpenSSL has one
   * slot per algorithm, and a second certificate would silently replace
   * the first. */
  const char *algs[MAX_CERTS];
  char labels[MAX_CERTS][96]; /* "certificates/" + a 63-character id */
  if (rc->n_certificates == 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "certificates: at least one certificate is required");
  if (rc->n_certificates > MAX_CERTS)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "certificates: at most one certificate per key algorithm");
  if ((d->certs = calloc(rc->n_certificates, sizeof(*d->certs))) == NULL)
    return tlsconf__oom(err);
  for (size_t i = 0; i < rc->n_certificates; i++) {
    const Tlsplane__V1__CertificateMaterial *m = rc->certificates[i];
    if (m->certificate != NULL && m->certificate->name[0] != '\0')
      snprintf(labels[i], sizeof(labels[i]), "%s", m->certificate->name);
    else
      snprintf(labels[i], sizeof(labels[i]), "certificates[%zu]", i);
    struct loaded_cert lc = {0};
    int rc2 = cert_load(m, labels[i], &lc, err);
    for (size_t j = 0; rc2 == 0 && j < i; j++) {
      if (strcmp(algs[j], lc.alg) == 0)
        rc2 = tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                         "certificates: two certificates with key algorithm %s (%s, %s)", lc.alg,
                         labels[j], labels[i]);
    }
    if (rc2 == 0)
      rc2 = cert_install(ctx, &lc, labels[i], err);
    if (rc2 == 0)
      rc2 = facts_add(d, &lc, labels[i], err);
    if (rc2 == 0 && stapling && m->certificate->ocsp_response.len > 0)
      rc2 = staple_add(d, m->certificate, &lc, staple_revoked, labels[i], err);
    algs[i] = lc.alg;
    loaded_cert_free(&lc);
    if (rc2 != 0)
      return -1;
  }
  return 0;
}

/* ca + crl: the store that verifies client certificates, and the CA
 * names sent in the CertificateRequest. */
static int add_trust(SSL_CTX *ctx, const Tlsplane__V1__ResolvedTlsContext *rc, struct tp_err *err) {
  const Tlsplane__V1__TrustBundle *tb = rc->trust_bundle;
  int has_bundle = tb != NULL && tb->ca_pem[0] != '\0';
  if (!has_bundle) {
    if (rc->n_revocation_lists > 0)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "revocation_lists: need a trust_bundle");
    return 0;
  }
  STACK_OF(X509) *certs = NULL;
  STACK_OF(X509_NAME) *names = NULL;
  X509_STORE *store = NULL;
  if (certinfo_certs_read(tb->ca_pem, strlen(tb->ca_pem), "trust_bundle: ca_pem", &certs, err) != 0)
    return -1;
  if ((store = X509_STORE_new()) == NULL || (names = sk_X509_NAME_new_null()) == NULL)
    goto failed_oom;
  for (int i = 0; i < sk_X509_num(certs); i++) {
    X509 *x = sk_X509_value(certs, i);
    if (!X509_STORE_add_cert(store, x))
      goto failed_oom;
    X509_NAME *name = X509_NAME_dup(X509_get_subject_name(x));
    if (name == NULL || !sk_X509_NAME_push(names, name)) {
      X509_NAME_free(name);
      goto failed_oom;
    }
  }
  for (size_t i = 0; i < rc->n_revocation_lists; i++) {
    const Tlsplane__V1__RevocationList *rl = rc->revocation_lists[i];
    char field[160];
    if (rl->name[0] != '\0')
      snprintf(field, sizeof(field), "revocation_lists: %s: crl_pem", rl->name);
    else
      snprintf(field, sizeof(field), "revocation_lists[%zu]: crl_pem", i);
    X509_CRL *crl = NULL;
    if (certinfo_crl_read(rl->crl_pem, field, &crl, err) != 0)
      goto failed;
    int ok = X509_STORE_add_crl(store, crl);
    X509_CRL_free(crl);
    if (!ok)
      goto failed_oom;
  }
  /* The client's own certificate is checked against its issuer's CRL; a
   * client whose issuer has no CRL here fails with "unable to get
   * certificate CRL". Intermediates are not checked (no CRL_CHECK_ALL). */
  if (rc->n_revocation_lists > 0)
    X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
  SSL_CTX_set_cert_store(ctx, store);
  SSL_CTX_set_client_CA_list(ctx, names);
  certinfo_certs_free(certs);
  return 0;
failed_oom:
  tlsconf__oom(err);
failed:
  sk_X509_NAME_pop_free(names, X509_NAME_free);
  X509_STORE_free(store);
  certinfo_certs_free(certs);
  return -1;
}

static int set_sessions(SSL_CTX *ctx, const Tlsplane__V1__TlsContext *tc, struct tp_err *err) {
  /* sessionTimeout, 1 s to 7 days (RFC 8446, section 4.6.1: no ticket
   * lives longer than 7 days). */
  long timeout = 300;
  if (tc->session_timeout != NULL) {
    int64_t s = pb_sat_add(tc->session_timeout->seconds, tc->session_timeout->nanos > 0);
    if (s < 1 || s > 604800)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "session_timeout: must be 1 s to 7 days (604800 s)");
    timeout = (long)s;
  }
  SSL_CTX_set_timeout(ctx, timeout);

  /* sessionIdContext: given, or SHA-256 of the context's name, so that
   * sessions resume only in the context that made them (OpenSSL refuses
   * to resume request_cert sessions without one). */
  unsigned char sid[SSL_MAX_SID_CTX_LENGTH];
  size_t sid_len = strlen(tc->session_id_context);
  if (sid_len > SSL_MAX_SID_CTX_LENGTH)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "session_id_context: %zu bytes, at most %d", sid_len, SSL_MAX_SID_CTX_LENGTH);
  if (sid_len > 0) {
    memcpy(sid, tc->session_id_context, sid_len);
  } else {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (!EVP_Digest(tc->name, strlen(tc->name), md, &md_len, EVP_sha256(), NULL))
      return tlsconf__oom(err);
    sid_len = md_len < sizeof(sid) ? md_len : sizeof(sid);
    memcpy(sid, md, sid_len);
  }
  if (!SSL_CTX_set_session_id_context(ctx, sid, (unsigned)sid_len))
    return tlsconf__oom(err);

  if (tc->session_tickets != NULL && !tc->session_tickets->value)
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  else
    SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);

  /* TLS 1.3 tickets per full handshake: each costs an encryption, an
   * HMAC and a record; a resumption sends one whatever the count. */
  int tickets = TLSCONF_TLS13_TICKETS_DEFAULT;
  if (tc->tls13_tickets != NULL) {
    tickets = tc->tls13_tickets->value;
    if (tickets < 0 || tickets > TLSCONF_TLS13_TICKETS_MAX)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "tls13_tickets: must be 0 to %d (unset: %d)", TLSCONF_TLS13_TICKETS_MAX,
                        TLSCONF_TLS13_TICKETS_DEFAULT);
  }
  if (!SSL_CTX_set_num_tickets(ctx, (size_t)tickets))
    return tlsconf__oom(err);

  if (tc->session_cache_size < -1)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "session_cache_size: -1 (no cache), 0 (default) or a positive size");
  if (tc->session_cache_size == -1)
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  else if (tc->session_cache_size > 0)
    SSL_CTX_sess_set_cache_size(ctx, tc->session_cache_size);
  return 0;
}

/* A client SSL's new-session callback and its data (ex_data of the SSL,
 * freed with it). */
struct session_hook {
  tlsconf_session_cb cb;
  void *data;
};

static pthread_once_t hook_index_once = PTHREAD_ONCE_INIT;
static int hook_index = -1;

static void hook_free_cb(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                         void *argp) {
  free(ptr);
}

static void hook_index_init(void) {
  hook_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, hook_free_cb);
}

int tlsconf_ssl_session_cb_set(SSL *ssl, tlsconf_session_cb cb, void *data) {
  pthread_once(&hook_index_once, hook_index_init);
  struct session_hook *h = hook_index >= 0 ? malloc(sizeof(*h)) : NULL;
  if (h == NULL)
    return -ENOMEM;
  h->cb = cb;
  h->data = data;
  free(SSL_get_ex_data(ssl, hook_index));
  if (!SSL_set_ex_data(ssl, hook_index, h)) {
    free(h);
    ERR_clear_error();
    return -ENOMEM;
  }
  return 0;
}

/* Every new session of a client context (each TLS 1.3 ticket is one),
 * to the SSL's hook. */
static int client_new_session_cb(SSL *ssl, SSL_SESSION *sess) {
  pthread_once(&hook_index_once, hook_index_init);
  struct session_hook *h = hook_index >= 0 ? SSL_get_ex_data(ssl, hook_index) : NULL;
  return h != NULL ? h->cb(h->data, sess) : 0;
}

/* The rest of a client context (tls.connect's secureContext, client set):
 * the client certificate, the trust store verifying upstreams and the
 * ALPN and NPN lists offered. Verification itself (rejectUnauthorized,
 * checkServerIdentity) is set per SSL by the listener that uses it. */
static int client_build(SSL_CTX *ctx, struct ctx_data *d,
                        const Tlsplane__V1__ResolvedTlsContext *rc, struct tp_err *err) {
  const Tlsplane__V1__TlsContext *tc = rc->tls_context;
  /* The server-only fields: refused rather than ignored. */
  const char *server_only = tc->request_cert                    ? "request_cert"
                            : tc->reject_unauthorized           ? "reject_unauthorized"
                            : tc->n_revocation_lists > 0        ? "revocation_lists"
                            : tc->session_timeout != NULL       ? "session_timeout"
                            : tc->session_id_context[0] != '\0' ? "session_id_context"
                            : tc->session_tickets != NULL       ? "session_tickets"
                            : tc->session_cache_size != 0       ? "session_cache_size"
                            : tc->tls13_tickets != NULL         ? "tls13_tickets"
                            : tc->ocsp_stapling                 ? "ocsp_stapling"
                            : tc->ocsp_staple_revoked           ? "ocsp_staple_revoked"
                            : tc->max_send_fragment != 0        ? "max_send_fragment"
                                                                : NULL;
  if (server_only != NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: a server option, not for a client context", server_only);
  if (rc->n_certificates > 1)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "certificates: a client context has at most one (the client certificate)");
  if (rc->n_certificates == 1 && add_certificates(ctx, d, rc, 0, 0, err) != 0)
    return -1;
  if (add_trust(ctx, rc, err) != 0)
    return -1;
  if (tc->n_alpn_protocols > 0) {
    if (protos_wire(tc->alpn_protocols, tc->n_alpn_protocols, "alpn_protocols", &d->alpn,
                    &d->alpn_len, err) != 0)
      return -1;
    if (SSL_CTX_set_alpn_protos(ctx, d->alpn, d->alpn_len) != 0)
      return tlsconf__oom(err);
  }
  /* NPNProtocols: the extension is sent (TLS 1.2 and below only) when the
   * select callback is set, so only with a list. */
  if (tc->n_npn_protocols > 0) {
#ifndef OPENSSL_NO_NEXTPROTONEG
    if (protos_wire(tc->npn_protocols, tc->n_npn_protocols, "npn_protocols", &d->npn, &d->npn_len,
                    err) != 0)
      return -1;
    SSL_CTX_set_next_proto_select_cb(ctx, npn_select_cb, d);
#else
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "npn_protocols: this OpenSSL is built without NPN (use alpn_protocols)");
#endif
  }
  /* Sessions are kept by whoever uses the context (the agent: a few per
   * upstream and worker), handed over by tlsconf_ssl_session_cb_set's
   * callback, not in a cache here. */
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx, client_new_session_cb);
  return 0;
}

int tlsconf_ctx_build(const Tlsplane__V1__ResolvedTlsContext *rc, SSL_CTX **out,
                      struct tp_err *err) {
  *out = NULL;
  const Tlsplane__V1__TlsContext *tc = rc->tls_context;
  if (tc == NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "tls_context: required");
  pthread_once(&ctx_index_once, ctx_index_init);
  if (ctx_index < 0)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "no SSL_CTX ex_data index");
  SSL_CTX *ctx = SSL_CTX_new(tc->client ? TLS_client_method() : TLS_server_method());
  struct ctx_data *d = calloc(1, sizeof(*d));
  if (ctx == NULL || d == NULL) {
    free(d);
    SSL_CTX_free(ctx);
    return tlsconf__oom(err);
  }
  d->magic = CTX_DATA_MAGIC;
  if (!SSL_CTX_set_ex_data(ctx, ctx_index, d)) {
    ctx_data_free(d);
    SSL_CTX_free(ctx);
    return tlsconf__oom(err);
  }
  /* From here on d is freed with ctx. */

  /* The cipher policy first: it sets the security level the keys are
   * checked against. */
  if (tlsconf__policy_apply(ctx, rc->cipher_policy, TLSCONF__POLICY_CTX, NULL, err) != 0) {
    tp_err_prefix(err, "cipher_policy: ");
    goto failed;
  }
  /* Serve exactly the stored chain, never one built from the trust
   * bundle. */
  SSL_CTX_set_mode(ctx, SSL_MODE_NO_AUTO_CHAIN);
  if (tc->client) {
    if (client_build(ctx, d, rc, err) != 0)
      goto failed;
    ERR_clear_error();
    *out = ctx;
    return 0;
  }
  if (add_certificates(ctx, d, rc, tc->ocsp_stapling, tc->ocsp_staple_revoked, err) != 0)
    goto failed;
  if (add_trust(ctx, rc, err) != 0)
    goto failed;

  if (tc->reject_unauthorized && !tc->request_cert) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "reject_unauthorized: needs request_cert");
    goto failed;
  }
  if (tc->reject_unauthorized &&
      (rc->trust_bundle == NULL || rc->trust_bundle->ca_pem[0] == '\0')) {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "reject_unauthorized: needs a trust_bundle (no client certificate could verify)");
    goto failed;
  }
  if (tc->request_cert)
    SSL_CTX_set_verify(ctx,
                       tc->reject_unauthorized ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                                               : SSL_VERIFY_PEER,
                       tc->reject_unauthorized ? verify_crl_cb : verify_accept_cb);
  else
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);

  if (set_sessions(ctx, tc, err) != 0)
    goto failed;

  if (tc->n_alpn_protocols > 0) {
    if (protos_wire(tc->alpn_protocols, tc->n_alpn_protocols, "alpn_protocols", &d->alpn,
                    &d->alpn_len, err) != 0)
      goto failed;
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select_cb, d);
  }
  if (tc->n_npn_protocols > 0) {
#ifndef OPENSSL_NO_NEXTPROTONEG
    if (protos_wire(tc->npn_protocols, tc->n_npn_protocols, "npn_protocols", &d->npn, &d->npn_len,
                    err) != 0)
      goto failed;
    SSL_CTX_set_next_protos_advertised_cb(ctx, npn_advertise_cb, d);
#else
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
               "npn_protocols: this OpenSSL is built without NPN (use alpn_protocols)");
    goto failed;
#endif
  }
  if (tc->ocsp_stapling && d->n_staples > 0) {
    SSL_CTX_set_tlsext_status_cb(ctx, status_cb);
    SSL_CTX_set_tlsext_status_arg(ctx, d);
  }
  if (tc->max_send_fragment != 0) {
    if (tc->max_send_fragment < 512 || tc->max_send_fragment > 16384) {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                 "max_send_fragment: must be 512 to 16384 bytes (0: 16384)");
      goto failed;
    }
    SSL_CTX_set_max_send_fragment(ctx, tc->max_send_fragment);
  }
  ERR_clear_error();
  *out = ctx;
  return 0;
failed:
  SSL_CTX_free(ctx);
  ERR_clear_error();
  return -1;
}

size_t tlsconf_ctx_certs(const SSL_CTX *ctx, const struct tlsconf_cert_facts **out) {
  *out = NULL;
  pthread_once(&ctx_index_once, ctx_index_init);
  if (ctx_index < 0)
    return 0;
  void *p = SSL_CTX_get_ex_data(ctx, ctx_index);
  if (p == NULL)
    return 0;
  const struct ctx_data *d = ctx_data_check(p);
  *out = d->certs;
  return d->n_certs;
}
