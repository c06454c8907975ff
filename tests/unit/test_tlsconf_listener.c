/* Unit tests for common/tlsconf_listener: real handshakes over BIO pairs
 * between a client SSL and tlsconf_listener_ssl_new, proving that the
 * context an SNI name selects serves everything of its own (certificate
 * of its own key type, OCSP staple, ALPN / NPN, versions, ciphers, groups,
 * client certificates, session lifetime, record size), that the
 * ticket-key ring rotates and retires keys across separately built
 * listeners, and that the renegotiation policy holds. Leaks are ASan's. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixtures.h"
#include "tlsconf_listener.h"

/* Fixtures made once for the whole run (key generation is the slow part). */
static struct {
  EVP_PKEY *ca_key; /* server CA, P-256 */
  X509 *ca;
  EVP_PKEY *ec_key; /* P-256 */
  EVP_PKEY *rsa_key;
  X509 *ec_default;  /* CN=default.test, EC */
  X509 *rsa_default; /* CN=default.test, RSA */
  X509 *ec_www;      /* CN=www.example.com, EC */
  X509 *rsa_www;     /* CN=www.example.com, RSA */
  X509 *ec_wild;     /* CN=wild.example.com, EC */
  EVP_PKEY *client_ca_key;
  X509 *client_ca;
  EVP_PKEY *client_key;
  X509 *client; /* CN=client under client_ca */
} w;

static X509 *leaf(EVP_PKEY *key, const char *cn, long serial) {
  return fixture_cert(key, &(struct fixture_cert_opts){
                               .cn = cn, .serial = serial, .issuer = w.ca, .issuer_key = w.ca_key});
}

static int world_setup(void **state) {
  w.ca_key = fixture_key_ec("P-256");
  w.ca = fixture_cert(w.ca_key, &(struct fixture_cert_opts){.cn = "Server CA", .is_ca = 1});
  w.ec_key = fixture_key_ec("P-256");
  w.rsa_key = fixture_key_rsa(2048);
  w.ec_default = leaf(w.ec_key, "default.test", 10);
  w.rsa_default = leaf(w.rsa_key, "default.test", 11);
  w.ec_www = leaf(w.ec_key, "www.example.com", 12);
  w.rsa_www = leaf(w.rsa_key, "www.example.com", 13);
  w.ec_wild = leaf(w.ec_key, "wild.example.com", 14);
  w.client_ca_key = fixture_key_ec("P-256");
  w.client_ca =
      fixture_cert(w.client_ca_key, &(struct fixture_cert_opts){.cn = "Client CA", .is_ca = 1});
  w.client_key = fixture_key_ec("P-256");
  w.client = fixture_cert(w.client_key, &(struct fixture_cert_opts){.cn = "client",
                                                                    .serial = 1001,
                                                                    .issuer = w.client_ca,
                                                                    .issuer_key = w.client_ca_key});
  return 0;
}

static int world_teardown(void **state) {
  EVP_PKEY *keys[] = {w.ca_key, w.ec_key, w.rsa_key, w.client_ca_key, w.client_key};
  X509 *certs[] = {w.ca,      w.ec_default, w.rsa_default, w.ec_www,
                   w.rsa_www, w.ec_wild,    w.client_ca,   w.client};
  for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
    EVP_PKEY_free(keys[i]);
  for (size_t i = 0; i < sizeof(certs) / sizeof(certs[0]); i++)
    X509_free(certs[i]);
  return 0;
}

/* Assertions ------------------------------------------------------------- */

static void expect_err_at(int rc, const struct tp_err *err, const char *want, const char *file,
                          int line) {
  if (rc != -1 || err->status != GRPC_STATUS_INVALID_ARGUMENT || strstr(err->msg, want) == NULL)
    fail_msg("%s:%d: want INVALID_ARGUMENT containing \"%s\",\n  got rc=%d status=%d \"%s\"", file,
             line, want, rc, err->status, err->msg);
}

#define EXPECT_ERR(rc, err, want) expect_err_at((rc), (err), (want), __FILE__, __LINE__)

/* Message builders ------------------------------------------------------- */

static char *xstrdup(const char *s) {
  char *c = strdup(s);
  assert_non_null(c);
  return c;
}

static void *xmalloc(size_t n) {
  void *p = malloc(n);
  assert_non_null(p);
  return p;
}

static void set_str(char **field, const char *v) {
  char *copy = xstrdup(v);
  if (*field != protobuf_c_empty_string)
    free(*field);
  *field = copy;
}

static void strv_push(size_t *n, char ***v, const char *s) {
  *v = realloc(*v, (*n + 1) * sizeof(**v));
  assert_non_null(*v);
  (*v)[(*n)++] = xstrdup(s);
}

static void msg_free(void *m) {
  if (m != NULL)
    protobuf_c_message_free_unpacked(m, NULL);
}

static Tlsplane__V1__CertificateMaterial *material(const char *name, EVP_PKEY *key, X509 *cert) {
  Tlsplane__V1__CertificateMaterial *m = xmalloc(sizeof(*m));
  tlsplane__v1__certificate_material__init(m);
  m->certificate = xmalloc(sizeof(*m->certificate));
  tlsplane__v1__certificate__init(m->certificate);
  set_str(&m->certificate->name, name);
  m->certificate->certificate_chain_pem = fixture_pem_chain(cert, w.ca, NULL);
  m->private_key_pem = fixture_pem_key(key);
  return m;
}

/* A context serving the certificates given (key, cert pairs, NULL-ended). */
static Tlsplane__V1__ResolvedTlsContext *rctx(const char *name, ...) {
  Tlsplane__V1__ResolvedTlsContext *rc = xmalloc(sizeof(*rc));
  tlsplane__v1__resolved_tls_context__init(rc);
  rc->tls_context = xmalloc(sizeof(*rc->tls_context));
  tlsplane__v1__tls_context__init(rc->tls_context);
  set_str(&rc->tls_context->name, name);
  va_list ap;
  va_start(ap, name);
  for (EVP_PKEY *key; (key = va_arg(ap, EVP_PKEY *)) != NULL;) {
    X509 *cert = va_arg(ap, X509 *);
    char cname[64];
    snprintf(cname, sizeof(cname), "certificates/c%zu", rc->n_certificates);
    rc->certificates = realloc(rc->certificates, (rc->n_certificates + 1) * sizeof(void *));
    assert_non_null(rc->certificates);
    rc->certificates[rc->n_certificates++] = material(cname, key, cert);
  }
  va_end(ap);
  return rc;
}

static Tlsplane__V1__CipherPolicy *rctx_policy(Tlsplane__V1__ResolvedTlsContext *rc) {
  if (rc->cipher_policy == NULL) {
    rc->cipher_policy = xmalloc(sizeof(*rc->cipher_policy));
    tlsplane__v1__cipher_policy__init(rc->cipher_policy);
  }
  return rc->cipher_policy;
}

static void rctx_tickets(Tlsplane__V1__ResolvedTlsContext *rc, int on) {
  Tlsplane__V1__TlsContext *tc = rc->tls_context;
  tc->session_tickets = xmalloc(sizeof(*tc->session_tickets));
  google__protobuf__bool_value__init(tc->session_tickets);
  tc->session_tickets->value = on;
}

static void rctx_trust_clients(Tlsplane__V1__ResolvedTlsContext *rc) {
  rc->trust_bundle = xmalloc(sizeof(*rc->trust_bundle));
  tlsplane__v1__trust_bundle__init(rc->trust_bundle);
  set_str(&rc->trust_bundle->name, "trustBundles/clients");
  rc->trust_bundle->ca_pem = fixture_pem_cert(w.client_ca);
}

/* A good OCSP response for cert (under w.ca), stored on the context's
 * certificate i; a copy goes to *copy. */
static void rctx_ocsp(Tlsplane__V1__ResolvedTlsContext *rc, size_t i, X509 *cert,
                      unsigned char **copy, size_t *copy_len) {
  time_t now = time(NULL);
  size_t len;
  unsigned char *der =
      fixture_ocsp(cert, w.ca, w.ca, w.ca_key, V_OCSP_CERTSTATUS_GOOD, now - 60, now + 86400, &len);
  *copy = xmalloc(len);
  memcpy(*copy, der, len);
  *copy_len = len;
  ProtobufCBinaryData *b = &rc->certificates[i]->certificate->ocsp_response;
  free(b->data);
  b->data = der;
  b->len = len;
  rc->tls_context->ocsp_stapling = 1;
}

static Tlsplane__V1__ResolvedListener *rl_new(const char *default_ctx) {
  Tlsplane__V1__ResolvedListener *rl = xmalloc(sizeof(*rl));
  tlsplane__v1__resolved_listener__init(rl);
  rl->listener = xmalloc(sizeof(*rl->listener));
  tlsplane__v1__listener__init(rl->listener);
  set_str(&rl->listener->name, "listeners/test");
  set_str(&rl->listener->default_tls_context, default_ctx);
  return rl;
}

/* Adds rc (taking it) under its TlsContext's name. */
static void rl_ctx(Tlsplane__V1__ResolvedListener *rl, Tlsplane__V1__ResolvedTlsContext *rc) {
  Tlsplane__V1__ResolvedListener__TlsContextsEntry *e = xmalloc(sizeof(*e));
  tlsplane__v1__resolved_listener__tls_contexts_entry__init(e);
  set_str(&e->key, rc->tls_context->name);
  e->value = rc;
  rl->tls_contexts = realloc(rl->tls_contexts, (rl->n_tls_contexts + 1) * sizeof(e));
  assert_non_null(rl->tls_contexts);
  rl->tls_contexts[rl->n_tls_contexts++] = e;
}

static void rl_route(Tlsplane__V1__ResolvedListener *rl, const char *host, const char *ctx) {
  Tlsplane__V1__Listener *li = rl->listener;
  Tlsplane__V1__SniRoute *r = xmalloc(sizeof(*r));
  tlsplane__v1__sni_route__init(r);
  set_str(&r->hostname, host);
  set_str(&r->tls_context, ctx);
  li->sni_routes = realloc(li->sni_routes, (li->n_sni_routes + 1) * sizeof(r));
  assert_non_null(li->sni_routes);
  li->sni_routes[li->n_sni_routes++] = r;
}

static void rl_key(Tlsplane__V1__ResolvedListener *rl, const unsigned char *key, size_t len,
                   int active) {
  Tlsplane__V1__TicketKeyMaterial *k = xmalloc(sizeof(*k));
  tlsplane__v1__ticket_key_material__init(k);
  k->key.data = xmalloc(len ? len : 1);
  memcpy(k->key.data, key, len);
  k->key.len = len;
  k->active = active;
  rl->ticket_keys = realloc(rl->ticket_keys, (rl->n_ticket_keys + 1) * sizeof(k));
  assert_non_null(rl->ticket_keys);
  rl->ticket_keys[rl->n_ticket_keys++] = k;
}

static void rl_clear_keys(Tlsplane__V1__ResolvedListener *rl) {
  for (size_t i = 0; i < rl->n_ticket_keys; i++)
    msg_free(rl->ticket_keys[i]);
  free(rl->ticket_keys);
  rl->ticket_keys = NULL;
  rl->n_ticket_keys = 0;
}

static struct tlsconf_listener *build_ok(const Tlsplane__V1__ResolvedListener *rl) {
  struct tp_err err = {0};
  struct tlsconf_listener *l = NULL;
  if (tlsconf_listener_build(rl, &l, &err) != 0)
    fail_msg("build failed: status=%d \"%s\"", err.status, err.msg);
  assert_non_null(l);
  return l;
}

static int build(const Tlsplane__V1__ResolvedListener *rl, struct tp_err *err) {
  memset(err, 0, sizeof(*err));
  struct tlsconf_listener *l = (struct tlsconf_listener *)&l; /* must be reset */
  int rc = tlsconf_listener_build(rl, &l, err);
  if (rc == 0)
    assert_non_null(l);
  else
    assert_null(l);
  tlsconf_listener_unref(l);
  return rc;
}

/* The three-context listener most tests use: default (EC
 * "default.test"), "www.example.com" (EC "www.example.com") and
 * "*.example.com" (EC "wild.example.com"). */
static Tlsplane__V1__ResolvedListener *rl_three(void) {
  Tlsplane__V1__ResolvedListener *rl = rl_new("tlsContexts/default");
  rl_ctx(rl, rctx("tlsContexts/default", w.ec_key, w.ec_default, NULL));
  rl_ctx(rl, rctx("tlsContexts/www", w.ec_key, w.ec_www, NULL));
  rl_ctx(rl, rctx("tlsContexts/wild", w.ec_key, w.ec_wild, NULL));
  rl_route(rl, "www.example.com", "tlsContexts/www");
  rl_route(rl, "*.example.com", "tlsContexts/wild");
  return rl;
}

static Tlsplane__V1__ResolvedTlsContext *rl_find(Tlsplane__V1__ResolvedListener *rl,
                                                 const char *name) {
  for (size_t i = 0; i < rl->n_tls_contexts; i++)
    if (strcmp(rl->tls_contexts[i]->key, name) == 0)
      return rl->tls_contexts[i]->value;
  fail_msg("no context %s", name);
  return NULL;
}

/* Connections ------------------------------------------------------------ */

static SSL *client_new(int max_version, const char *sni) {
  SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
  assert_non_null(cctx);
  SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);
  if (max_version)
    assert_true(SSL_CTX_set_max_proto_version(cctx, max_version));
  SSL *c = SSL_new(cctx);
  SSL_CTX_free(cctx); /* c keeps it */
  assert_non_null(c);
  if (sni != NULL)
    assert_true(SSL_set_tlsext_host_name(c, sni));
  return c;
}

static SSL *client_with_cert(int max_version, const char *sni, X509 *cert, EVP_PKEY *key) {
  SSL *c = client_new(max_version, sni);
  assert_true(SSL_use_certificate(c, cert));
  assert_true(SSL_use_PrivateKey(c, key));
  return c;
}

/* Handshakes client with a new SSL of l; returns 0 on success. */
static int connect_to(struct tlsconf_listener *l, SSL *client, SSL **server_out) {
  SSL *s = tlsconf_listener_ssl_new(l);
  assert_non_null(s);
  *server_out = s;
  return fixture_handshake(client, s);
}

/* Closes cleanly (a session of a connection freed without close_notify is
 * not resumable) and frees both. */
static void close_both(SSL *c, SSL *s) {
  SSL_shutdown(c);
  SSL_shutdown(s);
  SSL_free(c);
  SSL_free(s);
}

static void free_both(SSL *c, SSL *s) {
  SSL_free(c);
  SSL_free(s);
}

/* The CN of the certificate the server sent, "" without one. */
static void served_cn(SSL *c, char *buf, size_t len) {
  buf[0] = '\0';
  X509 *peer = SSL_get0_peer_certificate(c);
  if (peer != NULL)
    X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, buf, (int)len);
}

static int served_key_type(SSL *c) {
  X509 *peer = SSL_get0_peer_certificate(c);
  assert_non_null(peer);
  return EVP_PKEY_get_base_id(X509_get0_pubkey(peer));
}

/* ACME tls-alpn-01 ------------------------------------------------------- */

/* A challenge certificate as RFC 8737 has it: self-signed, subjectAltName
 * san, the acmeIdentifier extension (critical or not) holding a SHA-256. */
static X509 *acme_cert(EVP_PKEY *key, const char *cn, const char *san, int critical) {
  X509 *x = fixture_cert(key, &(struct fixture_cert_opts){.cn = cn, .san = san});
  unsigned char digest[32];
  memset(digest, 0x5a, sizeof(digest));
  ASN1_OCTET_STRING *inner = ASN1_OCTET_STRING_new();
  ASN1_OCTET_STRING *value = ASN1_OCTET_STRING_new();
  ASN1_OBJECT *oid = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1);
  assert_true(inner != NULL && value != NULL && oid != NULL);
  assert_true(ASN1_OCTET_STRING_set(inner, digest, sizeof(digest)));
  unsigned char *der = NULL;
  int n = i2d_ASN1_OCTET_STRING(inner, &der);
  assert_true(n > 0 && ASN1_OCTET_STRING_set(value, der, n));
  X509_EXTENSION *ext = X509_EXTENSION_create_by_OBJ(NULL, oid, critical, value);
  assert_non_null(ext);
  assert_true(X509_add_ext(x, ext, -1));
  assert_true(X509_sign(x, key, EVP_sha256()) > 0);
  X509_EXTENSION_free(ext);
  ASN1_OBJECT_free(oid);
  ASN1_OCTET_STRING_free(value);
  ASN1_OCTET_STRING_free(inner);
  OPENSSL_free(der);
  return x;
}

static void rl_challenge(Tlsplane__V1__ResolvedListener *rl, const char *name, EVP_PKEY *key,
                         X509 *cert) {
  Tlsplane__V1__AcmeChallengeMaterial *m = xmalloc(sizeof(*m));
  tlsplane__v1__acme_challenge_material__init(m);
  set_str(&m->server_name, name);
  m->certificate_pem = fixture_pem_cert(cert);
  m->private_key_pem = fixture_pem_key(key);
  rl->acme_challenges =
      realloc(rl->acme_challenges, (rl->n_acme_challenges + 1) * sizeof(*rl->acme_challenges));
  assert_non_null(rl->acme_challenges);
  rl->acme_challenges[rl->n_acme_challenges++] = m;
}

static void rl_clear_challenges(Tlsplane__V1__ResolvedListener *rl) {
  for (size_t i = 0; i < rl->n_acme_challenges; i++)
    msg_free(rl->acme_challenges[i]);
  free(rl->acme_challenges);
  rl->acme_challenges = NULL;
  rl->n_acme_challenges = 0;
}

static SSL *client_alpn(int max_version, const char *sni, const unsigned char *alpn, size_t len) {
  SSL *c = client_new(max_version, sni);
  if (alpn != NULL)
    assert_int_equal(SSL_set_alpn_protos(c, alpn, (unsigned)len), 0);
  return c;
}

static const unsigned char ALPN_ACME[] = "\x0a"
                                         "acme-tls/1";
static const unsigned char ALPN_H2_ACME[] = "\x02"
                                            "h2"
                                            "\x0a"
                                            "acme-tls/1";

/* A ClientHello whose ALPN list is exactly acme-tls/1 gets the challenge
 * of its SNI (either case), with acme-tls/1 selected, at TLS 1.2 and 1.3;
 * without a challenge for its name (or without SNI) it is refused; any
 * other ClientHello gets the listener's contexts as before. */
static void test_acme_challenge_served(void **state) {
  EVP_PKEY *key = fixture_key_ec("P-256");
  X509 *cert = acme_cert(key, "a.test", "DNS:a.test", 1);
  Tlsplane__V1__ResolvedListener *rl = rl_three();
  rl_challenge(rl, "a.test", key, cert);
  struct tlsconf_listener *l = build_ok(rl);
  assert_int_equal(tlsconf_listener_acme_challenges(l), 1);
  assert_int_equal(tlsconf_listener_contexts(l), 3); /* challenges are not among them */
  char cn[64];
  const int versions[] = {TLS1_2_VERSION, TLS1_3_VERSION};
  for (size_t i = 0; i < 2; i++) {
    SSL *c = client_alpn(versions[i], i ? "A.Test" : "a.test", ALPN_ACME, sizeof(ALPN_ACME) - 1);
    SSL *s;
    assert_int_equal(connect_to(l, c, &s), 0);
    served_cn(c, cn, sizeof(cn));
    assert_string_equal(cn, "a.test");
    const unsigned char *proto;
    unsigned proto_len;
    SSL_get0_alpn_selected(c, &proto, &proto_len);
    assert_int_equal(proto_len, 10);
    assert_memory_equal(proto, "acme-tls/1", 10);
    const char *host = NULL;
    assert_int_equal(tlsconf_ssl_acme(s, &host), TLSCONF_ACME_ANSWERED);
    assert_string_equal(host, "a.test");
    assert_int_equal(SSL_version(s), versions[i]);
    close_both(c, s);
  }
  /* acme-tls/1 among others, and no ALPN: the default context. */
  SSL *c = client_alpn(0, "a.test", ALPN_H2_ACME, sizeof(ALPN_H2_ACME) - 1), *s;
  assert_int_equal(connect_to(l, c, &s), 0);
  served_cn(c, cn, sizeof(cn));
  assert_string_equal(cn, "default.test");
  assert_int_equal(tlsconf_ssl_acme(s, NULL), TLSCONF_ACME_NONE);
  close_both(c, s);
  c = client_alpn(0, "www.example.com", NULL, 0);
  assert_int_equal(connect_to(l, c, &s), 0);
  served_cn(c, cn, sizeof(cn));
  assert_string_equal(cn, "www.example.com");
  close_both(c, s);
  /* Exactly acme-tls/1 for another name, or no name: refused. */
  const char *others[] = {"b.test", "www.example.com", NULL};
  for (size_t i = 0; i < 3; i++) {
    c = client_alpn(0, others[i], ALPN_ACME, sizeof(ALPN_ACME) - 1);
    assert_int_not_equal(connect_to(l, c, &s), 0);
    assert_int_equal(tlsconf_ssl_acme(s, NULL), TLSCONF_ACME_REFUSED);
    ERR_clear_error();
    free_both(c, s);
  }
  tlsconf_listener_unref(l);
  msg_free(rl);
  X509_free(cert);
  EVP_PKEY_free(key);
}

/* A challenge that cannot be built fails the listener, naming it. */
static void test_acme_challenge_errors(void **state) {
  struct tp_err err;
  EVP_PKEY *key = fixture_key_ec("P-256");
  X509 *good = acme_cert(key, "a.test", "DNS:a.test", 1);
  X509 *soft = acme_cert(key, "a.test", "DNS:a.test", 0);
  X509 *other_name = acme_cert(key, "b.test", "DNS:b.test", 1);
  X509 *plain = fixture_cert(key, &(struct fixture_cert_opts){.cn = "a.test", .san = "DNS:a.test"});
  Tlsplane__V1__ResolvedListener *rl = rl_three();

  rl_challenge(rl, "a.test", w.rsa_key, good);
  EXPECT_ERR(build(rl, &err), &err,
             "acme_challenges[a.test]: private_key_pem: does not match the certificate");
  rl_clear_challenges(rl);
  rl_challenge(rl, "a.test", key, soft);
  EXPECT_ERR(build(rl, &err), &err,
             "acme_challenges[a.test]: certificate_pem: the acmeIdentifier extension must be "
             "critical");
  rl_clear_challenges(rl);
  rl_challenge(rl, "a.test", key, plain);
  EXPECT_ERR(build(rl, &err), &err,
             "acme_challenges[a.test]: certificate_pem: no acmeIdentifier extension");
  rl_clear_challenges(rl);
  rl_challenge(rl, "a.test", key, other_name);
  EXPECT_ERR(build(rl, &err), &err,
             "acme_challenges[a.test]: certificate_pem: \"a.test\" is not a DNS name of its "
             "subjectAltName");
  rl_clear_challenges(rl);
  rl_challenge(rl, "*.a.test", key, good);
  EXPECT_ERR(build(rl, &err), &err, "acme_challenges[0]: server_name: \"*.a.test\": tls-alpn-01");
  rl_clear_challenges(rl);
  rl_challenge(rl, "A.test", key, good);
  EXPECT_ERR(build(rl, &err), &err, "acme_challenges[0]: server_name: \"A.test\": must be lower");
  rl_clear_challenges(rl);
  rl_challenge(rl, "", key, good);
  EXPECT_ERR(build(rl, &err), &err, "acme_challenges[0]: server_name: required");
  rl_clear_challenges(rl);
  rl_challenge(rl, "a.test", key, good);
  set_str(&rl->acme_challenges[0]->certificate_pem, "not a PEM");
  EXPECT_ERR(build(rl, &err), &err, "acme_challenges[a.test]: certificate_pem: ");
  rl_clear_challenges(rl);
  rl_challenge(rl, "a.test", key, good);
  rl_challenge(rl, "b.test", key, other_name);
  rl_challenge(rl, "a.test", key, good);
  EXPECT_ERR(build(rl, &err), &err,
             "acme_challenges[a.test]: server_name: \"a.test\" has two challenges");
  rl_clear_challenges(rl);
  rl_challenge(rl, "a.test", key, good);
  rl_challenge(rl, "b.test", key, other_name);
  assert_int_equal(build(rl, &err), 0);

  msg_free(rl);
  X509 *certs[] = {good, soft, other_name, plain};
  for (size_t i = 0; i < 4; i++)
    X509_free(certs[i]);
  EVP_PKEY_free(key);
}

/* Build errors ------------------------------------------------------------ */

static void test_build_errors(void **state) {
  struct tp_err err;
  Tlsplane__V1__ResolvedListener *rl = rl_three();

  Tlsplane__V1__Listener *li = rl->listener;
  rl->listener = NULL;
  EXPECT_ERR(build(rl, &err), &err, "listener: required");
  rl->listener = li;

  set_str(&li->default_tls_context, "");
  EXPECT_ERR(build(rl, &err), &err, "default_tls_context: required");
  set_str(&li->default_tls_context, "tlsContexts/none");
  EXPECT_ERR(build(rl, &err), &err,
             "default_tls_context: \"tlsContexts/none\" is not in tls_contexts");
  set_str(&li->default_tls_context, "tlsContexts/default");

  set_str(&li->sni_routes[1]->tls_context, "tlsContexts/none");
  EXPECT_ERR(build(rl, &err), &err,
             "sni_routes[1].tls_context: \"tlsContexts/none\" is not in tls_contexts");
  set_str(&li->sni_routes[1]->tls_context, "tlsContexts/wild");

  set_str(&li->sni_routes[0]->hostname, "bad_host.example.com");
  EXPECT_ERR(build(rl, &err), &err, "sni_routes[0].hostname: ");
  set_str(&li->sni_routes[0]->hostname, "*.com");
  EXPECT_ERR(build(rl, &err), &err, "sni_routes[0].hostname: ");
  set_str(&li->sni_routes[0]->hostname, "www.example.com");

  rl_route(rl, "WWW.Example.com", "tlsContexts/default");
  EXPECT_ERR(build(rl, &err), &err, "sni_routes[2].hostname: \"www.example.com\" is routed twice");
  set_str(&li->sni_routes[2]->hostname, "*.EXAMPLE.com");
  EXPECT_ERR(build(rl, &err), &err, "sni_routes[2].hostname: \"*.example.com\" is routed twice");
  /* Upper case is matched lower-cased. */
  set_str(&li->sni_routes[2]->hostname, "API.example.com");
  struct tlsconf_listener *l = build_ok(rl);
  tlsconf_listener_unref(l);

  /* A context that does not build names itself, even as an SNI route's
   * only: nothing of the listener is kept. */
  Tlsplane__V1__ResolvedTlsContext *wild = rl_find(rl, "tlsContexts/wild");
  wild->tls_context->max_send_fragment = 100;
  EXPECT_ERR(build(rl, &err), &err, "tlsContexts/wild: max_send_fragment: must be 512");
  wild->tls_context->max_send_fragment = 0;
  Tlsplane__V1__ResolvedTlsContext *def = rl_find(rl, "tlsContexts/default");
  def->tls_context->reject_unauthorized = 1;
  EXPECT_ERR(build(rl, &err), &err, "tlsContexts/default: reject_unauthorized: needs request_cert");
  def->tls_context->reject_unauthorized = 0;

  /* Ticket keys. */
  unsigned char k[3][48];
  assert_int_equal(RAND_bytes(&k[0][0], sizeof(k)), 1);
  rl_key(rl, k[0], 32, 1);
  EXPECT_ERR(build(rl, &err), &err, "ticket_keys[0]: must be 48 bytes (got 32)");
  rl_clear_keys(rl);
  rl_key(rl, k[0], 48, 0);
  rl_key(rl, k[1], 48, 0);
  EXPECT_ERR(build(rl, &err), &err, "ticket_keys: exactly one key must be active (0 are)");
  rl_clear_keys(rl);
  rl_key(rl, k[0], 48, 1);
  rl_key(rl, k[1], 48, 1);
  EXPECT_ERR(build(rl, &err), &err, "ticket_keys: exactly one key must be active (2 are)");
  rl_clear_keys(rl);
  memcpy(k[2], k[0], 16); /* same name, other secrets */
  rl_key(rl, k[0], 48, 1);
  rl_key(rl, k[1], 48, 0);
  rl_key(rl, k[2], 48, 0);
  EXPECT_ERR(build(rl, &err), &err, "ticket_keys[2]: same key name as ticket_keys[0]");
  rl_clear_keys(rl);

  /* Renegotiation. */
  li->renegotiation_limit = xmalloc(sizeof(*li->renegotiation_limit));
  google__protobuf__int32_value__init(li->renegotiation_limit);
  li->renegotiation_limit->value = -1;
  EXPECT_ERR(build(rl, &err), &err, "renegotiation_limit: must not be negative");
  li->renegotiation_limit->value = 0;
  li->renegotiation_window = xmalloc(sizeof(*li->renegotiation_window));
  google__protobuf__duration__init(li->renegotiation_window);
  EXPECT_ERR(build(rl, &err), &err, "renegotiation_window: must be more than 0");
  li->renegotiation_window->seconds = -5;
  EXPECT_ERR(build(rl, &err), &err, "renegotiation_window: must be more than 0");
  li->renegotiation_window->seconds = 30;
  l = build_ok(rl);
  assert_int_equal(tlsconf_listener_renegotiation_limit(l), 0);
  assert_int_equal(tlsconf_listener_renegotiation_window_ms(l), 30000);
  tlsconf_listener_unref(l);
  msg_free(rl);

  /* Defaults: 3 per 600 s. */
  rl = rl_three();
  l = build_ok(rl);
  assert_int_equal(tlsconf_listener_renegotiation_limit(l), 3);
  assert_int_equal(tlsconf_listener_renegotiation_window_ms(l), 600000);
  tlsconf_listener_unref(l);
  msg_free(rl);
}

/* SNI selection ----------------------------------------------------------- */

static void test_sni_selection(void **state) {
  Tlsplane__V1__ResolvedListener *rl = rl_three();
  struct tlsconf_listener *l = build_ok(rl);
  static const struct {
    const char *sni;
    const char *context;
    const char *cn;
  } cases[] = {
      {NULL, "tlsContexts/default", "default.test"},
      {"www.example.com", "tlsContexts/www", "www.example.com"},
      {"WWW.Example.COM", "tlsContexts/www", "www.example.com"},
      {"a.example.com", "tlsContexts/wild", "wild.example.com"},
      {"A.EXAMPLE.com", "tlsContexts/wild", "wild.example.com"},
      {"a.b.example.com", "tlsContexts/default", "default.test"},
      {"example.com", "tlsContexts/default", "default.test"},
      {"other.org", "tlsContexts/default", "default.test"},
      {"www.example.com.", "tlsContexts/default", "default.test"},
      {"wwwexample.com", "tlsContexts/default", "default.test"},
  };
  int versions[] = {TLS1_3_VERSION, TLS1_2_VERSION};
  for (int v = 0; v < 2; v++) {
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
      SSL *c = client_new(versions[v], cases[i].sni), *s;
      assert_null(tlsconf_ssl_context_name(c)); /* not a listener's SSL */
      assert_int_equal(connect_to(l, c, &s), 0);
      const char *name = tlsconf_ssl_context_name(s);
      char cn[256];
      served_cn(c, cn, sizeof(cn));
      if (name == NULL || strcmp(name, cases[i].context) != 0 || strcmp(cn, cases[i].cn) != 0)
        fail_msg("TLS %x, SNI %s: want %s (%s), got %s (%s)", versions[v],
                 cases[i].sni ? cases[i].sni : "(none)", cases[i].context, cases[i].cn,
                 name ? name : "NULL", cn);
      struct tlsconf_conn_info info;
      tlsconf_conn_info(s, &info);
      if (cases[i].sni == NULL)
        assert_null(info.servername);
      else
        assert_string_equal(info.servername, cases[i].sni);
      assert_int_equal(SSL_version(s), versions[v]);
      free_both(c, s);
    }
  }
  /* Before its ClientHello an SSL has no context yet. */
  SSL *s = tlsconf_listener_ssl_new(l);
  assert_null(tlsconf_ssl_context_name(s));
  SSL_free(s);
  tlsconf_listener_unref(l);
  msg_free(rl);
}

/* nodejs/node#54235: an SNI context whose key type differs from the
 * default's serves its own certificate, and never one of the default's. */
static void test_sni_own_key_type(void **state) {
  int versions[] = {TLS1_3_VERSION, TLS1_2_VERSION};
  for (int v = 0; v < 2; v++) {
    for (int rsa_default = 0; rsa_default < 2; rsa_default++) {
      Tlsplane__V1__ResolvedListener *rl = rl_new("tlsContexts/default");
      rl_ctx(rl, rsa_default ? rctx("tlsContexts/default", w.rsa_key, w.rsa_default, NULL)
                             : rctx("tlsContexts/default", w.ec_key, w.ec_default, NULL));
      rl_ctx(rl, rsa_default ? rctx("tlsContexts/www", w.ec_key, w.ec_www, NULL)
                             : rctx("tlsContexts/www", w.rsa_key, w.rsa_www, NULL));
      rl_route(rl, "www.example.com", "tlsContexts/www");
      struct tlsconf_listener *l = build_ok(rl);
      int default_type = rsa_default ? EVP_PKEY_RSA : EVP_PKEY_EC;
      int www_type = rsa_default ? EVP_PKEY_EC : EVP_PKEY_RSA;
      for (int round = 0; round < 2; round++) {
        const char *sni = round ? "www.example.com" : NULL;
        SSL *c = client_new(versions[v], sni), *s;
        assert_int_equal(connect_to(l, c, &s), 0);
        char cn[256];
        served_cn(c, cn, sizeof(cn));
        assert_string_equal(cn, round ? "www.example.com" : "default.test");
        assert_int_equal(served_key_type(c), round ? www_type : default_type);
        free_both(c, s);
      }
      tlsconf_listener_unref(l);
      msg_free(rl);
    }

    /* The default serves RSA and ECDSA, the SNI context ECDSA only: a
     * client that accepts only RSA signatures must fail on the SNI
     * name (Node serves the default's RSA certificate there). */
    Tlsplane__V1__ResolvedListener *rl = rl_new("tlsContexts/default");
    rl_ctx(rl, rctx("tlsContexts/default", w.rsa_key, w.rsa_default, w.ec_key, w.ec_default, NULL));
    rl_ctx(rl, rctx("tlsContexts/www", w.ec_key, w.ec_www, NULL));
    rl_route(rl, "www.example.com", "tlsContexts/www");
    struct tlsconf_listener *l = build_ok(rl);
    const char *rsa_only = "rsa_pss_rsae_sha256:RSA+SHA256";
    SSL *c = client_new(versions[v], NULL), *s;
    assert_true(SSL_set1_sigalgs_list(c, rsa_only));
    assert_int_equal(connect_to(l, c, &s), 0);
    assert_int_equal(served_key_type(c), EVP_PKEY_RSA);
    free_both(c, s);
    c = client_new(versions[v], "www.example.com");
    assert_true(SSL_set1_sigalgs_list(c, rsa_only));
    assert_int_equal(connect_to(l, c, &s), -1);
    free_both(c, s);
    c = client_new(versions[v], "www.example.com");
    assert_int_equal(connect_to(l, c, &s), 0);
    assert_int_equal(served_key_type(c), EVP_PKEY_EC);
    free_both(c, s);
    tlsconf_listener_unref(l);
    msg_free(rl);
  }
}

/* The staple is the served certificate's, from the selected context. */
static void test_sni_ocsp(void **state) {
  Tlsplane__V1__ResolvedListener *rl = rl_new("tlsContexts/default");
  Tlsplane__V1__ResolvedTlsContext *def = rctx("tlsContexts/default", w.ec_key, w.ec_default, NULL);
  Tlsplane__V1__ResolvedTlsContext *www = rctx("tlsContexts/www", w.rsa_key, w.rsa_www, NULL);
  Tlsplane__V1__ResolvedTlsContext *wild = rctx("tlsContexts/wild", w.ec_key, w.ec_wild, NULL);
  unsigned char *def_resp, *www_resp;
  size_t def_len, www_len;
  rctx_ocsp(def, 0, w.ec_default, &def_resp, &def_len);
  rctx_ocsp(www, 0, w.rsa_www, &www_resp, &www_len);
  rl_ctx(rl, def);
  rl_ctx(rl, www);
  rl_ctx(rl, wild); /* no stapling */
  rl_route(rl, "www.example.com", "tlsContexts/www");
  rl_route(rl, "*.example.com", "tlsContexts/wild");
  struct tlsconf_listener *l = build_ok(rl);
  int versions[] = {TLS1_3_VERSION, TLS1_2_VERSION};
  for (int v = 0; v < 2; v++) {
    static const char *snis[] = {NULL, "www.example.com", "a.example.com"};
    for (int i = 0; i < 3; i++) {
      for (int ask = 0; ask < 2; ask++) {
        SSL *c = client_new(versions[v], snis[i]), *s;
        if (ask)
          assert_true(SSL_set_tlsext_status_type(c, TLSEXT_STATUSTYPE_ocsp));
        assert_int_equal(connect_to(l, c, &s), 0);
        const unsigned char *resp = NULL;
        long n = SSL_get_tlsext_status_ocsp_resp(c, &resp);
        struct tlsconf_conn_info info;
        tlsconf_conn_info(s, &info);
        assert_int_equal(info.ocsp_requested, ask);
        if (!ask || i == 2) {
          assert_int_equal(n, -1);
          assert_int_equal(info.ocsp_stapled, 0);
        } else {
          const unsigned char *want = i == 0 ? def_resp : www_resp;
          size_t want_len = i == 0 ? def_len : www_len;
          assert_int_equal(n, (long)want_len);
          assert_memory_equal(resp, want, want_len);
          assert_int_equal(info.ocsp_stapled, 1);
        }
        free_both(c, s);
      }
    }
  }
  tlsconf_listener_unref(l);
  free(def_resp);
  free(www_resp);
  msg_free(rl);
}

#ifndef OPENSSL_NO_NEXTPROTONEG
static int npn_select_cb(SSL *ssl, unsigned char **out, unsigned char *outlen,
                         const unsigned char *in, unsigned int inlen, void *arg) {
  static const unsigned char mine[] = "\x06spdy/3\x08http/1.1";
  SSL_select_next_proto(out, outlen, in, inlen, mine, sizeof(mine) - 1);
  return SSL_TLSEXT_ERR_OK;
}
#endif

static void test_sni_alpn_npn(void **state) {
  Tlsplane__V1__ResolvedListener *rl = rl_three();
  Tlsplane__V1__TlsContext *def = rl_find(rl, "tlsContexts/default")->tls_context;
  Tlsplane__V1__TlsContext *www = rl_find(rl, "tlsContexts/www")->tls_context;
  strv_push(&def->n_alpn_protocols, &def->alpn_protocols, "http/1.1");
  strv_push(&www->n_alpn_protocols, &www->alpn_protocols, "h2");
  strv_push(&www->n_alpn_protocols, &www->alpn_protocols, "http/1.1");
  strv_push(&www->n_npn_protocols, &www->npn_protocols, "spdy/3");
  struct tlsconf_listener *l = build_ok(rl);
  static const unsigned char offer[] = "\x02h2\x08http/1.1";
  static const struct {
    const char *sni;
    const char *want; /* NULL: none */
  } cases[] = {
      {NULL, "http/1.1"},
      {"www.example.com", "h2"},
      {"a.example.com", NULL}, /* the wildcard context has no ALPN */
  };
  for (size_t i = 0; i < 3; i++) {
    SSL *c = client_new(0, cases[i].sni), *s;
    assert_int_equal(SSL_set_alpn_protos(c, offer, sizeof(offer) - 1), 0);
    assert_int_equal(connect_to(l, c, &s), 0);
    struct tlsconf_conn_info info;
    tlsconf_conn_info(s, &info);
    if (cases[i].want == NULL)
      assert_null(info.protocol);
    else
      assert_string_equal(info.protocol, cases[i].want);
    free_both(c, s);
  }
  /* A client offering h2 only: no overlap with the default's list is a
   * fatal no_application_protocol there, the SNI context serves it. */
  static const unsigned char h2[] = "\x02h2";
  SSL *c = client_new(0, NULL), *s;
  assert_int_equal(SSL_set_alpn_protos(c, h2, sizeof(h2) - 1), 0);
  assert_int_equal(connect_to(l, c, &s), -1);
  free_both(c, s);
  c = client_new(0, "www.example.com");
  assert_int_equal(SSL_set_alpn_protos(c, h2, sizeof(h2) - 1), 0);
  assert_int_equal(connect_to(l, c, &s), 0);
  free_both(c, s);
#ifndef OPENSSL_NO_NEXTPROTONEG
  /* NPN (TLS 1.2) from the SNI context. */
  SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
  assert_non_null(cctx);
  SSL_CTX_set_next_proto_select_cb(cctx, npn_select_cb, NULL);
  assert_true(SSL_CTX_set_max_proto_version(cctx, TLS1_2_VERSION));
  for (int i = 0; i < 2; i++) {
    c = SSL_new(cctx);
    /* In parentheses: the macro casts its argument to void * as it is. */
    assert_true(SSL_set_tlsext_host_name(c, (i ? "www.example.com" : "default.test")));
    assert_int_equal(connect_to(l, c, &s), 0);
    struct tlsconf_conn_info info;
    tlsconf_conn_info(s, &info);
    if (i)
      assert_string_equal(info.protocol, "spdy/3");
    else
      assert_null(info.protocol);
    free_both(c, s);
  }
  SSL_CTX_free(cctx);
#endif
  tlsconf_listener_unref(l);
  msg_free(rl);
}

/* Versions, ciphers and groups of the selected context apply: they are
 * chosen after the switch. */
static void test_sni_cipher_policy(void **state) {
  Tlsplane__V1__ResolvedListener *rl = rl_three();
  Tlsplane__V1__CipherPolicy *www = rctx_policy(rl_find(rl, "tlsContexts/www"));
  www->max_version = TLSPLANE__V1__TLS_VERSION__TLS_1_2;
  set_str(&www->ciphers, "ECDHE-ECDSA-AES256-GCM-SHA384");
  set_str(&www->ecdh_curve, "P-384");
  Tlsplane__V1__CipherPolicy *wild = rctx_policy(rl_find(rl, "tlsContexts/wild"));
  wild->min_version = TLSPLANE__V1__TLS_VERSION__TLS_1_3;
  struct tlsconf_listener *l = build_ok(rl);

  SSL *c = client_new(0, "www.example.com"), *s;
  assert_int_equal(connect_to(l, c, &s), 0);
  struct tlsconf_conn_info info;
  tlsconf_conn_info(s, &info);
  assert_string_equal(info.version, "TLSv1.2");
  assert_string_equal(info.cipher, "ECDHE-ECDSA-AES256-GCM-SHA384");
  assert_int_equal(SSL_get_negotiated_group(s), NID_secp384r1);
  free_both(c, s);

  c = client_new(0, NULL);
  assert_int_equal(connect_to(l, c, &s), 0);
  tlsconf_conn_info(s, &info);
  assert_string_equal(info.version, "TLSv1.3");
  assert_int_equal(SSL_get_negotiated_group(s), NID_X25519);
  free_both(c, s);

  /* TLS 1.3 only on the wildcard: a TLS 1.2 client fails there only. */
  c = client_new(TLS1_2_VERSION, "a.example.com");
  assert_int_equal(connect_to(l, c, &s), -1);
  free_both(c, s);
  c = client_new(TLS1_2_VERSION, NULL);
  assert_int_equal(connect_to(l, c, &s), 0);
  free_both(c, s);
  tlsconf_listener_unref(l);
  msg_free(rl);

  /* A HelloRetryRequest: the second ClientHello keeps the context the
   * first selected. */
  rl = rl_three();
  set_str(&rctx_policy(rl_find(rl, "tlsContexts/www"))->ecdh_curve, "X25519");
  l = build_ok(rl);
  for (int i = 0; i < 2; i++) {
    c = client_new(0, i ? "www.example.com" : NULL);
    assert_true(SSL_set1_groups_list(c, "P-256:X25519")); /* a P-256 key share */
    assert_int_equal(connect_to(l, c, &s), 0);
    assert_int_equal(SSL_get_negotiated_group(s), i ? NID_X25519 : NID_X9_62_prime256v1);
    assert_string_equal(tlsconf_ssl_context_name(s), i ? "tlsContexts/www" : "tlsContexts/default");
    free_both(c, s);
  }
  tlsconf_listener_unref(l);
  msg_free(rl);

  /* The default's groups do not leak into an SNI context with OpenSSL's
   * defaults. */
  rl = rl_three();
  set_str(&rctx_policy(rl_find(rl, "tlsContexts/default"))->ecdh_curve, "P-384");
  l = build_ok(rl);
  c = client_new(0, NULL);
  assert_int_equal(connect_to(l, c, &s), 0);
  assert_int_equal(SSL_get_negotiated_group(s), NID_secp384r1);
  free_both(c, s);
  c = client_new(0, "www.example.com");
  assert_int_equal(connect_to(l, c, &s), 0);
  assert_int_equal(SSL_get_negotiated_group(s), NID_X25519);
  free_both(c, s);
  tlsconf_listener_unref(l);
  msg_free(rl);
}

/* The largest application-data record the client received. */
static void record_cb(int write_p, int version, int content_type, const void *buf, size_t len,
                      SSL *ssl, void *arg) {
  const unsigned char *p = buf;
  if (write_p || content_type != SSL3_RT_HEADER || len < 5 || p[0] != SSL3_RT_APPLICATION_DATA)
    return;
  size_t n = ((size_t)p[3] << 8) | p[4];
  size_t *max = arg;
  if (n > *max)
    *max = n;
}

static void test_sni_max_send_fragment(void **state) {
  Tlsplane__V1__ResolvedListener *rl = rl_three();
  rl_find(rl, "tlsContexts/www")->tls_context->max_send_fragment = 512;
  struct tlsconf_listener *l = build_ok(rl);
  for (int i = 0; i < 2; i++) {
    SSL *c = client_new(0, i ? "www.example.com" : NULL), *s;
    assert_int_equal(connect_to(l, c, &s), 0);
    size_t max = 0;
    SSL_set_msg_callback(c, record_cb);
    SSL_set_msg_callback_arg(c, &max);
    unsigned char buf[4000];
    memset(buf, 'x', sizeof(buf));
    assert_int_equal(SSL_write(s, buf, sizeof(buf)), (int)sizeof(buf));
    size_t got = 0;
    while (got < sizeof(buf)) {
      int n = SSL_read(c, buf, sizeof(buf));
      assert_true(n > 0);
      got += (size_t)n;
    }
    if (i)
      assert_true(max > 512 && max <= 512 + 64); /* plus type, tag, ... */
    else
      assert_true(max > 4000);
    free_both(c, s);
  }
  tlsconf_listener_unref(l);
  msg_free(rl);
}

/* request_cert / reject_unauthorized of the SNI context, with its CA
 * names and trust store. */
static void test_sni_client_cert(void **state) {
  Tlsplane__V1__ResolvedListener *rl = rl_three();
  Tlsplane__V1__ResolvedTlsContext *www = rl_find(rl, "tlsContexts/www");
  rctx_trust_clients(www);
  www->tls_context->request_cert = 1;
  www->tls_context->reject_unauthorized = 1;
  Tlsplane__V1__ResolvedTlsContext *wild = rl_find(rl, "tlsContexts/wild");
  rctx_trust_clients(wild);
  wild->tls_context->request_cert = 1;
  struct tlsconf_listener *l = build_ok(rl);
  int versions[] = {TLS1_3_VERSION, TLS1_2_VERSION};
  for (int v = 0; v < 2; v++) {
    struct tlsconf_conn_info info;
    /* Required: without a certificate the handshake fails. */
    SSL *c = client_new(versions[v], "www.example.com"), *s;
    assert_int_equal(connect_to(l, c, &s), -1);
    free_both(c, s);

    /* Required and given: authorized, the client saw the CA names. */
    c = client_with_cert(versions[v], "www.example.com", w.client, w.client_key);
    assert_int_equal(connect_to(l, c, &s), 0);
    assert_int_equal(fixture_exchange(c, s), 0); /* TLS 1.3: the server verifies late */
    tlsconf_conn_info(s, &info);
    assert_int_equal(info.has_peer_cert, 1);
    assert_int_equal(info.verify_result, X509_V_OK);
    assert_null(info.verify_error);
    assert_string_equal(info.peer_cn, "client");
    STACK_OF(X509_NAME) *names = SSL_get_client_CA_list(c);
    assert_non_null(names);
    assert_int_equal(sk_X509_NAME_num(names), 1);
    assert_int_equal(
        X509_NAME_cmp(sk_X509_NAME_value(names, 0), X509_get_subject_name(w.client_ca)), 0);
    free_both(c, s);

    /* The default asks for nothing: the same client sends nothing. */
    c = client_with_cert(versions[v], NULL, w.client, w.client_key);
    assert_int_equal(connect_to(l, c, &s), 0);
    tlsconf_conn_info(s, &info);
    assert_int_equal(info.has_peer_cert, 0);
    assert_int_equal(info.verify_result, X509_V_OK);
    assert_null(info.verify_error);
    assert_string_equal(info.peer_cn, "");
    free_both(c, s);

    /* Requested, not required: no certificate, or an untrusted one, gets
     * through unauthorized with the reason. */
    c = client_new(versions[v], "a.example.com");
    assert_int_equal(connect_to(l, c, &s), 0);
    tlsconf_conn_info(s, &info);
    assert_int_equal(info.has_peer_cert, 0);
    assert_int_equal(info.verify_result, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT);
    assert_string_equal(info.verify_error,
                        X509_verify_cert_error_string(X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT));
    free_both(c, s);
    c = client_with_cert(versions[v], "a.example.com", w.ec_www, w.ec_key);
    assert_int_equal(connect_to(l, c, &s), 0);
    assert_int_equal(fixture_exchange(c, s), 0);
    tlsconf_conn_info(s, &info);
    assert_int_equal(info.has_peer_cert, 1);
    assert_int_equal(info.verify_result, X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE);
    assert_string_equal(info.verify_error, "unable to verify the first certificate");
    assert_string_equal(info.peer_cn, "www.example.com");
    free_both(c, s);
  }
  tlsconf_listener_unref(l);
  msg_free(rl);
}

/* Sessions ---------------------------------------------------------------- */

/* A full handshake on l with SNI sni; returns the client's session (after
 * TLS 1.3 tickets arrived) and, with timeout, the server session's
 * lifetime in seconds. */
static SSL_SESSION *session_timed(struct tlsconf_listener *l, int version, const char *sni,
                                  long *timeout) {
  SSL *c = client_new(version, sni), *s;
  assert_int_equal(connect_to(l, c, &s), 0);
  assert_int_equal(SSL_session_reused(s), 0);
  assert_int_equal(fixture_exchange(c, s), 0);
  SSL_SESSION *sess = SSL_get1_session(c);
  assert_non_null(sess);
  if (timeout != NULL)
    *timeout = SSL_SESSION_get_timeout(SSL_get_session(s));
  close_both(c, s);
  return sess;
}

static SSL_SESSION *session_from(struct tlsconf_listener *l, int version, const char *sni) {
  return session_timed(l, version, sni, NULL);
}

/* Presents sess to l; returns whether it resumed. With next, the client's
 * session afterwards (a renewed ticket) goes there. */
static int resume(struct tlsconf_listener *l, int version, const char *sni, SSL_SESSION *sess,
                  SSL_SESSION **next) {
  SSL *c = client_new(version, sni), *s;
  assert_true(SSL_set_session(c, sess));
  assert_int_equal(connect_to(l, c, &s), 0);
  assert_int_equal(fixture_exchange(c, s), 0);
  int reused = SSL_session_reused(s);
  assert_int_equal(SSL_session_reused(c), reused);
  struct tlsconf_conn_info info;
  tlsconf_conn_info(s, &info);
  assert_int_equal(info.resumed, reused);
  if (next != NULL) {
    *next = SSL_get1_session(c);
    assert_non_null(*next);
  }
  close_both(c, s);
  return reused;
}

/* The key name a ticket was issued under (its first 16 bytes). */
static void ticket_name(SSL_SESSION *sess, unsigned char name[16]) {
  const unsigned char *tick = NULL;
  size_t len = 0;
  SSL_SESSION_get0_ticket(sess, &tick, &len);
  assert_true(len > 16);
  memcpy(name, tick, 16);
}

static void test_ticket_ring(void **state) {
  unsigned char k1[48], k2[48], k3[48], name[16];
  assert_int_equal(RAND_bytes(k1, 48), 1);
  assert_int_equal(RAND_bytes(k2, 48), 1);
  assert_int_equal(RAND_bytes(k3, 48), 1);
  int versions[] = {TLS1_3_VERSION, TLS1_2_VERSION};
  for (int v = 0; v < 2; v++) {
    int version = versions[v];
    Tlsplane__V1__ResolvedListener *rl = rl_three();
    rl_key(rl, k1, 48, 1);
    /* Two agents: two listeners built separately from the same ring. */
    struct tlsconf_listener *a = build_ok(rl), *b = build_ok(rl);
    SSL_SESSION *old = session_from(a, version, "www.example.com");
    ticket_name(old, name);
    assert_memory_equal(name, k1, 16);
    assert_int_equal(resume(b, version, "www.example.com", old, NULL), 1);
    if (version == TLS1_3_VERSION) {
      /* A resumed TLS 1.3 connection hands out a fresh ticket (clients use
       * each once), which resumes in turn. */
      SSL_SESSION *again = NULL;
      assert_int_equal(resume(b, version, "www.example.com", old, &again), 1);
      const unsigned char *t_old, *t_new;
      size_t n_old, n_new;
      SSL_SESSION_get0_ticket(old, &t_old, &n_old);
      SSL_SESSION_get0_ticket(again, &t_new, &n_new);
      assert_true(n_old != n_new || memcmp(t_old, t_new, n_old) != 0);
      assert_int_equal(resume(a, version, "www.example.com", again, NULL), 1);
      SSL_SESSION_free(again);
    }
    /* A session resumes only in its own context. */
    assert_int_equal(resume(b, version, "a.example.com", old, NULL), 0);
    assert_int_equal(resume(b, version, NULL, old, NULL), 0);
    /* Default context too, which the SSL was not made from either. */
    SSL_SESSION *dflt = session_from(a, version, NULL);
    assert_int_equal(resume(b, version, NULL, dflt, NULL), 1);
    SSL_SESSION_free(dflt);

    /* Rotation: k2 active, k1 decrypt-only. The old ticket resumes and
     * is renewed under k2. */
    rl_clear_keys(rl);
    rl_key(rl, k2, 48, 1);
    rl_key(rl, k1, 48, 0);
    struct tlsconf_listener *rotated = build_ok(rl);
    SSL_SESSION *renewed = NULL;
    assert_int_equal(resume(rotated, version, "www.example.com", old, &renewed), 1);
    ticket_name(renewed, name);
    assert_memory_equal(name, k2, 16);
    SSL_SESSION *fresh = session_from(rotated, version, "www.example.com");
    ticket_name(fresh, name);
    assert_memory_equal(name, k2, 16);
    /* The listeners still on the old ring do not know k2. */
    assert_int_equal(resume(a, version, "www.example.com", fresh, NULL), 0);

    /* Retirement: k3 active, k2 decrypt-only, k1 gone. */
    rl_clear_keys(rl);
    rl_key(rl, k3, 48, 1);
    rl_key(rl, k2, 48, 0);
    struct tlsconf_listener *retired = build_ok(rl);
    assert_int_equal(resume(retired, version, "www.example.com", old, NULL), 0);
    assert_int_equal(resume(retired, version, "www.example.com", fresh, NULL), 1);

    SSL_SESSION_free(old);
    SSL_SESSION_free(renewed);
    SSL_SESSION_free(fresh);
    tlsconf_listener_unref(a);
    tlsconf_listener_unref(b);
    tlsconf_listener_unref(rotated);
    tlsconf_listener_unref(retired);
    msg_free(rl);
  }
}

/* Without a ring each build has its own random key: tickets resume across
 * the contexts' connections of one build, not on another build. */
static void test_ticket_no_ring(void **state) {
  Tlsplane__V1__ResolvedListener *rl = rl_three();
  struct tlsconf_listener *a = build_ok(rl), *b = build_ok(rl);
  int versions[] = {TLS1_3_VERSION, TLS1_2_VERSION};
  for (int v = 0; v < 2; v++) {
    SSL_SESSION *sess = session_from(a, versions[v], "a.example.com");
    assert_int_equal(resume(a, versions[v], "b.example.com", sess, NULL), 1);
    assert_int_equal(resume(b, versions[v], "b.example.com", sess, NULL), 0);
    SSL_SESSION_free(sess);
  }
  tlsconf_listener_unref(a);
  tlsconf_listener_unref(b);
  msg_free(rl);
}

/* Tickets off: session IDs in the listener's one cache, each session in
 * its own context, living its own context's session_timeout. */
static void test_session_id_resumption(void **state) {
  Tlsplane__V1__ResolvedListener *rl = rl_three();
  static const char *names[] = {"tlsContexts/default", "tlsContexts/www", "tlsContexts/wild"};
  for (int i = 0; i < 3; i++)
    rctx_tickets(rl_find(rl, names[i]), 0);
  Tlsplane__V1__TlsContext *www = rl_find(rl, "tlsContexts/www")->tls_context;
  www->session_timeout = xmalloc(sizeof(*www->session_timeout));
  google__protobuf__duration__init(www->session_timeout);
  www->session_timeout->seconds = 1234;
  rl_find(rl, "tlsContexts/wild")->tls_context->session_cache_size = -1;
  struct tlsconf_listener *l = build_ok(rl);
  int versions[] = {TLS1_2_VERSION, TLS1_3_VERSION};
  for (int v = 0; v < 2; v++) {
    int version = versions[v];
    long timeout = 0;
    SSL_SESSION *s_www = session_timed(l, version, "www.example.com", &timeout);
    const unsigned char *tick = NULL;
    size_t tick_len = 0;
    SSL_SESSION_get0_ticket(s_www, &tick, &tick_len);
    if (version == TLS1_2_VERSION) {
      assert_int_equal(tick_len, 0); /* a session ID, no ticket */
      unsigned int id_len = 0;
      SSL_SESSION_get_id(s_www, &id_len);
      assert_int_not_equal(id_len, 0);
    }
    assert_int_equal(timeout, 1234);
    if (version == TLS1_3_VERSION) /* the ticket lifetime tells the client */
      assert_int_equal(SSL_SESSION_get_ticket_lifetime_hint(s_www), 1234);
    assert_int_equal(resume(l, version, "www.example.com", s_www, NULL), 1);
    assert_int_equal(resume(l, version, NULL, s_www, NULL), 0);
    assert_int_equal(resume(l, version, "a.example.com", s_www, NULL), 0);

    SSL_SESSION *s_def = session_timed(l, version, NULL, &timeout);
    assert_int_equal(timeout, 300);
    assert_int_equal(resume(l, version, NULL, s_def, NULL), 1);
    assert_int_equal(resume(l, version, "www.example.com", s_def, NULL), 0);

    /* The wildcard context turned its cache off: nothing resumes there. */
    SSL_SESSION *s_wild = session_from(l, version, "a.example.com");
    assert_int_equal(resume(l, version, "a.example.com", s_wild, NULL), 0);

    SSL_SESSION_free(s_www);
    SSL_SESSION_free(s_def);
    SSL_SESSION_free(s_wild);
  }
  tlsconf_listener_unref(l);
  msg_free(rl);
}

/* Revocation that resumption cannot dodge ---------------------------------- */

/* A CRL of issuer revoking the serials given (0-terminated). */
static Tlsplane__V1__RevocationList *crl_msg(const char *name, X509 *issuer, EVP_PKEY *key,
                                             const long *revoked) {
  size_t n = 0;
  while (revoked[n] != 0)
    n++;
  time_t now = time(NULL);
  X509_CRL *crl = fixture_crl(issuer, key, revoked, n, now - 60, now + 86400, 1);
  Tlsplane__V1__RevocationList *rl = xmalloc(sizeof(*rl));
  tlsplane__v1__revocation_list__init(rl);
  set_str(&rl->name, name);
  rl->crl_pem = fixture_pem_crl(crl);
  X509_CRL_free(crl);
  return rl;
}

/* One mTLS context (trusting w.client_ca, reject_unauthorized as given)
 * with CRLs of w.client_ca revoking `revoked` and of inter revoking
 * nothing, under the ticket key k. */
static Tlsplane__V1__ResolvedListener *
rl_mtls(const unsigned char *k, int reject, const long *revoked, X509 *inter, EVP_PKEY *inter_key) {
  static const long none[] = {0};
  Tlsplane__V1__ResolvedListener *rl = rl_new("tlsContexts/mtls");
  Tlsplane__V1__ResolvedTlsContext *rc = rctx("tlsContexts/mtls", w.ec_key, w.ec_default, NULL);
  rctx_trust_clients(rc);
  rc->tls_context->request_cert = 1;
  rc->tls_context->reject_unauthorized = reject;
  rc->revocation_lists = xmalloc(2 * sizeof(*rc->revocation_lists));
  rc->revocation_lists[0] = crl_msg("revocationLists/ca", w.client_ca, w.client_ca_key, revoked);
  rc->revocation_lists[1] = crl_msg("revocationLists/inter", inter, inter_key, none);
  rc->n_revocation_lists = 2;
  rl_ctx(rl, rc);
  rl_key(rl, k, 48, 1);
  return rl;
}

static SSL *client_as(int version, X509 *cert, EVP_PKEY *key, X509 *chain) {
  SSL *c = client_with_cert(version, NULL, cert, key);
  if (chain != NULL)
    assert_true(SSL_add1_chain_cert(c, chain));
  return c;
}

/* A full handshake as cert; the client's session (tickets included). */
static SSL_SESSION *session_as(struct tlsconf_listener *l, int version, X509 *cert, EVP_PKEY *key,
                               X509 *chain) {
  SSL *c = client_as(version, cert, key, chain), *s;
  assert_int_equal(connect_to(l, c, &s), 0);
  assert_int_equal(fixture_exchange(c, s), 0);
  assert_int_equal(SSL_session_reused(s), 0);
  SSL_SESSION *sess = SSL_get1_session(c);
  assert_non_null(sess);
  close_both(c, s);
  return sess;
}

/* Offers sess as cert: 1 resumed, 0 a full handshake, -1 refused. With
 * verify, the verdict the server reports. */
static int resume_as(struct tlsconf_listener *l, int version, SSL_SESSION *sess, X509 *cert,
                     EVP_PKEY *key, X509 *chain, long *verify) {
  SSL *c = client_as(version, cert, key, chain), *s;
  assert_true(SSL_set_session(c, sess));
  int rc = connect_to(l, c, &s);
  if (rc == 0)
    rc = fixture_exchange(c, s);
  int out = rc != 0 ? -1 : SSL_session_reused(s);
  if (verify != NULL && rc == 0) {
    struct tlsconf_conn_info info;
    tlsconf_conn_info(s, &info);
    *verify = info.verify_result;
  }
  if (rc == 0)
    close_both(c, s);
  else
    free_both(c, s);
  return out;
}

/* A CRL update revoking bob: his ticket (TLS 1.2 and 1.3) made before it
 * is not resumed and his full handshake is refused; alice's resumes, and
 * so does carol's, whose intermediate only her ticket carries (the trust
 * bundle holds the root). Without reject_unauthorized bob gets a full
 * handshake whose verdict is CERT_REVOKED, not his session's OK. */
static void test_resumption_reverifies(void **state) {
  unsigned char k[48];
  assert_int_equal(RAND_bytes(k, 48), 1);
  EVP_PKEY *inter_key = fixture_key_ec("P-256");
  X509 *inter = fixture_cert(inter_key, &(struct fixture_cert_opts){.cn = "Client Intermediate",
                                                                    .is_ca = 1,
                                                                    .serial = 3000,
                                                                    .issuer = w.client_ca,
                                                                    .issuer_key = w.client_ca_key});
  EVP_PKEY *bob_key = fixture_key_ec("P-256"), *carol_key = fixture_key_ec("P-256");
  X509 *bob = fixture_cert(bob_key, &(struct fixture_cert_opts){.cn = "bob",
                                                                .serial = 1002,
                                                                .issuer = w.client_ca,
                                                                .issuer_key = w.client_ca_key});
  X509 *carol = fixture_cert(
      carol_key, &(struct fixture_cert_opts){
                     .cn = "carol", .serial = 2002, .issuer = inter, .issuer_key = inter_key});
  static const long none[] = {0}, bob_revoked[] = {1002, 0};
  int versions[] = {TLS1_3_VERSION, TLS1_2_VERSION};
  for (int reject = 1; reject >= 0; reject--) {
    Tlsplane__V1__ResolvedListener *before = rl_mtls(k, reject, none, inter, inter_key);
    Tlsplane__V1__ResolvedListener *after = rl_mtls(k, reject, bob_revoked, inter, inter_key);
    struct tlsconf_listener *l1 = build_ok(before), *l2 = build_ok(after);
    for (int v = 0; v < 2; v++) {
      int version = versions[v];
      SSL_SESSION *s_alice = session_as(l1, version, w.client, w.client_key, NULL);
      SSL_SESSION *s_bob = session_as(l1, version, bob, bob_key, NULL);
      SSL_SESSION *s_carol = session_as(l1, version, carol, carol_key, inter);
      assert_int_equal(resume_as(l1, version, s_bob, bob, bob_key, NULL, NULL), 1);

      long verify = -1;
      assert_int_equal(resume_as(l2, version, s_alice, w.client, w.client_key, NULL, &verify), 1);
      assert_int_equal(verify, X509_V_OK);
      assert_int_equal(resume_as(l2, version, s_carol, carol, carol_key, inter, NULL), 1);
      if (reject) {
        assert_int_equal(resume_as(l2, version, s_bob, bob, bob_key, NULL, NULL), -1);
        SSL *c = client_as(version, bob, bob_key, NULL), *s;
        int rc = connect_to(l2, c, &s);
        assert_int_equal(rc == 0 ? fixture_exchange(c, s) : rc, -1);
        free_both(c, s);
      } else {
        assert_int_equal(resume_as(l2, version, s_bob, bob, bob_key, NULL, &verify), 0);
        assert_int_equal(verify, X509_V_ERR_CERT_REVOKED);
      }
      SSL_SESSION_free(s_alice);
      SSL_SESSION_free(s_bob);
      SSL_SESSION_free(s_carol);
    }
    /* A context that now requires a certificate resumes no session made
     * without one. */
    if (!reject) {
      SSL_SESSION *anon = session_from(l1, TLS1_3_VERSION, NULL);
      Tlsplane__V1__ResolvedListener *strict = rl_mtls(k, 1, none, inter, inter_key);
      struct tlsconf_listener *l3 = build_ok(strict);
      assert_int_equal(resume_as(l1, TLS1_3_VERSION, anon, w.client, w.client_key, NULL, NULL), 1);
      assert_int_equal(resume_as(l3, TLS1_3_VERSION, anon, w.client, w.client_key, NULL, NULL), 0);
      SSL_SESSION_free(anon);
      tlsconf_listener_unref(l3);
      msg_free(strict);
    }
    tlsconf_listener_unref(l1);
    tlsconf_listener_unref(l2);
    msg_free(before);
    msg_free(after);
  }
  X509_free(bob);
  X509_free(carol);
  X509_free(inter);
  EVP_PKEY_free(bob_key);
  EVP_PKEY_free(carol_key);
  EVP_PKEY_free(inter_key);
}

/* Renegotiation ------------------------------------------------------------ */

static void test_renegotiation(void **state) {
  for (int limit = 0; limit < 2; limit++) {
    Tlsplane__V1__ResolvedListener *rl = rl_three();
    if (limit == 0) {
      Tlsplane__V1__Listener *li = rl->listener;
      li->renegotiation_limit = xmalloc(sizeof(*li->renegotiation_limit));
      google__protobuf__int32_value__init(li->renegotiation_limit);
      li->renegotiation_limit->value = 0;
    }
    struct tlsconf_listener *l = build_ok(rl);
    assert_int_equal(tlsconf_listener_renegotiation_limit(l), limit ? 3 : 0);
    for (int sni = 0; sni < 2; sni++) {
      SSL *c = client_new(TLS1_2_VERSION, sni ? "www.example.com" : NULL), *s;
      assert_int_equal(connect_to(l, c, &s), 0);
      if (limit) {
        assert_int_equal(fixture_renegotiate(c, s), 0);
        assert_int_equal(fixture_renegotiate(c, s), 0);
        assert_int_equal(fixture_exchange(c, s), 0);
        /* The context stays the one of the first handshake. */
        assert_string_equal(tlsconf_ssl_context_name(s),
                            sni ? "tlsContexts/www" : "tlsContexts/default");
      } else {
        assert_int_equal(fixture_renegotiate(c, s), -1);
      }
      free_both(c, s);
    }
    tlsconf_listener_unref(l);
    msg_free(rl);
  }
}

/* Connection info ------------------------------------------------------- */

static void test_conn_info(void **state) {
  Tlsplane__V1__ResolvedListener *rl = rl_three();
  Tlsplane__V1__TlsContext *www = rl_find(rl, "tlsContexts/www")->tls_context;
  strv_push(&www->n_alpn_protocols, &www->alpn_protocols, "h2");
  struct tlsconf_listener *l = build_ok(rl);
  static const unsigned char offer[] = "\x02h2";
  SSL *c = client_new(0, "www.example.com");
  assert_int_equal(SSL_set_alpn_protos(c, offer, sizeof(offer) - 1), 0);
  /* An option the application sets on the SSL survives the switch. */
  SSL *s = tlsconf_listener_ssl_new(l);
  assert_non_null(s);
  SSL_set_options(s, SSL_OP_IGNORE_UNEXPECTED_EOF);
  assert_int_equal(fixture_handshake(c, s), 0);
  assert_true(SSL_get_options(s) & SSL_OP_IGNORE_UNEXPECTED_EOF);
  assert_true(SSL_get_options(s) & SSL_OP_ALLOW_CLIENT_RENEGOTIATION);
  struct tlsconf_conn_info info;
  tlsconf_conn_info(s, &info);
  assert_string_equal(info.servername, "www.example.com");
  assert_string_equal(info.protocol, "h2");
  assert_string_equal(info.version, "TLSv1.3");
  assert_string_equal(info.cipher, SSL_CIPHER_get_name(SSL_get_current_cipher(c)));
  assert_int_equal(info.resumed, 0);
  assert_int_equal(info.has_peer_cert, 0);
  assert_int_equal(info.verify_result, X509_V_OK);
  assert_null(info.verify_error);
  assert_string_equal(info.peer_cn, "");
  assert_int_equal(info.ocsp_requested, 0);
  assert_int_equal(info.ocsp_stapled, 0);
  free_both(c, s);

  /* TLS 1.2 resumption keeps the name (it lives in the session). */
  SSL_SESSION *sess = session_from(l, TLS1_2_VERSION, "www.example.com");
  c = client_new(TLS1_2_VERSION, "www.example.com");
  assert_true(SSL_set_session(c, sess));
  assert_int_equal(connect_to(l, c, &s), 0);
  tlsconf_conn_info(s, &info);
  assert_int_equal(info.resumed, 1);
  assert_string_equal(info.servername, "www.example.com");
  assert_string_equal(info.version, "TLSv1.2");
  assert_string_equal(tlsconf_ssl_context_name(s), "tlsContexts/www");
  free_both(c, s);
  SSL_SESSION_free(sess);

  /* An SSL that is not a listener's: no context, no protocol copy. */
  SSL_CTX *sctx = SSL_CTX_new(TLS_server_method());
  assert_non_null(sctx);
  s = SSL_new(sctx);
  assert_null(tlsconf_ssl_context_name(s));
  tlsconf_conn_info(s, &info);
  assert_null(info.protocol);
  assert_int_equal(info.ocsp_requested, 0);
  SSL_free(s);
  SSL_CTX_free(sctx);
  tlsconf_listener_unref(l);
  msg_free(rl);
}

/* Reference counting ------------------------------------------------------ */

static void test_refcount(void **state) {
  Tlsplane__V1__ResolvedListener *rl = rl_three();
  struct tlsconf_listener *l = build_ok(rl);
  msg_free(rl); /* the listener owns copies */
  tlsconf_listener_ref(l);
  tlsconf_listener_unref(l);
  tlsconf_listener_unref(NULL);

  /* SSLs outlive the last external reference. */
  SSL *s1 = tlsconf_listener_ssl_new(l);
  SSL *s2 = tlsconf_listener_ssl_new(l);
  SSL *dup = SSL_dup(s2); /* a fresh SSL: a real copy with its own reference */
  assert_non_null(s1);
  assert_non_null(dup);
  assert_ptr_not_equal(dup, s2);
  SSL_free(s2);
  tlsconf_listener_unref(l);

  SSL *c = client_new(0, "www.example.com");
  assert_int_equal(fixture_handshake(c, s1), 0);
  assert_string_equal(tlsconf_ssl_context_name(s1), "tlsContexts/www");
  assert_int_equal(fixture_exchange(c, s1), 0);
  free_both(c, s1);

  c = client_new(0, "a.example.com");
  assert_int_equal(fixture_handshake(c, dup), 0);
  assert_string_equal(tlsconf_ssl_context_name(dup), "tlsContexts/wild");
  free_both(c, dup); /* the last reference: everything goes (ASan) */
}

struct thread_arg {
  struct tlsconf_listener *l;
  int ok;
};

static void *thread_main(void *p) {
  struct thread_arg *a = p;
  a->ok = 1;
  for (int i = 0; i < 200; i++) {
    tlsconf_listener_ref(a->l);
    SSL *s = tlsconf_listener_ssl_new(a->l);
    if (s == NULL)
      a->ok = 0;
    tlsconf_listener_unref(a->l);
    SSL_free(s);
  }
  return NULL;
}

/* References from many threads at once (the atomic count; ASan and the
 * final free tell). */
static void test_refcount_threads(void **state) {
  Tlsplane__V1__ResolvedListener *rl = rl_three();
  struct tlsconf_listener *l = build_ok(rl);
  msg_free(rl);
  enum { N = 4 };
  pthread_t t[N];
  struct thread_arg args[N];
  for (int i = 0; i < N; i++) {
    args[i] = (struct thread_arg){.l = l};
    assert_int_equal(pthread_create(&t[i], NULL, thread_main, &args[i]), 0);
  }
  for (int i = 0; i < N; i++) {
    assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(args[i].ok, 1);
  }
  tlsconf_listener_unref(l);
}

/* Rebuilding and many contexts ---------------------------------------------- */

static struct tlsconf_listener *build_cached_ok(const Tlsplane__V1__ResolvedListener *rl,
                                                struct tlsconf_ctxcache *cache) {
  struct tp_err err = {0};
  struct tlsconf_listener *l = NULL;
  if (tlsconf_listener_build_cached(rl, NULL, cache, &l, &err) != 0)
    fail_msg("build failed: status=%d \"%s\"", err.status, err.msg);
  return l;
}

static void expect_served(struct tlsconf_listener *l, const char *sni, const char *cn_want) {
  SSL *c = client_new(0, sni), *s;
  assert_int_equal(connect_to(l, c, &s), 0);
  char cn[256];
  served_cn(c, cn, sizeof(cn));
  if (strcmp(cn, cn_want) != 0)
    fail_msg("SNI %s: served %s, want %s", sni ? sni : "(none)", cn, cn_want);
  close_both(c, s);
}

/* A build takes from the cache every context it holds by content hash
 * (another version, another listener) and builds the others: it serves
 * exactly what a fresh build would; an entry goes with its last user. */
static void test_build_cached_shares_contexts(void **state) {
  struct tlsconf_ctxcache *cache;
  assert_int_equal(tlsconf_listener_cache_new(&cache), 0);
  Tlsplane__V1__ResolvedListener *rl = rl_three();
  struct tlsconf_listener *l1 = build_cached_ok(rl, cache);
  assert_int_equal(tlsconf_listener_contexts(l1), 3);
  assert_int_equal(tlsconf_listener_reused(l1), 0);
  assert_int_equal(tlsconf_ctxcache_builds(cache), 3);
  assert_int_equal(tlsconf_ctxcache_live(cache), 3);
  /* The same again (another version, or another listener with the same
   * contexts): everything shared, nothing built. */
  struct tlsconf_listener *l2 = build_cached_ok(rl, cache);
  assert_int_equal(tlsconf_listener_reused(l2), 3);
  assert_int_equal(tlsconf_ctxcache_builds(cache), 3);
  assert_int_equal(tlsconf_ctxcache_live(cache), 3);
  expect_served(l2, "www.example.com", "www.example.com");
  /* www gets another certificate: one built, two shared. */
  Tlsplane__V1__ResolvedTlsContext *www = rl_find(rl, "tlsContexts/www");
  msg_free(www->certificates[0]);
  www->certificates[0] = material("certificates/c0", w.ec_key, w.ec_wild);
  struct tlsconf_listener *l3 = build_cached_ok(rl, cache);
  assert_int_equal(tlsconf_listener_contexts(l3), 3);
  assert_int_equal(tlsconf_listener_reused(l3), 2);
  assert_int_equal(tlsconf_ctxcache_builds(cache), 4);
  assert_int_equal(tlsconf_ctxcache_live(cache), 4);
  expect_served(l3, "www.example.com", "wild.example.com");
  expect_served(l3, "a.example.com", "wild.example.com");
  expect_served(l3, NULL, "default.test");
  /* The older versions still serve what they served. */
  expect_served(l1, "www.example.com", "www.example.com");
  tlsconf_listener_unref(l1);
  assert_int_equal(tlsconf_ctxcache_live(cache), 4); /* l2 still uses the old www */
  tlsconf_listener_unref(l2);
  assert_int_equal(tlsconf_ctxcache_live(cache), 3);
  expect_served(l3, "www.example.com", "wild.example.com");
  /* A renamed context is a new one. */
  Tlsplane__V1__ResolvedListener *rl2 = rl_new("tlsContexts/default");
  rl_ctx(rl2, rctx("tlsContexts/default", w.ec_key, w.ec_default, NULL));
  rl_ctx(rl2, rctx("tlsContexts/www2", w.ec_key, w.ec_www, NULL));
  rl_route(rl2, "www.example.com", "tlsContexts/www2");
  struct tlsconf_listener *l4 = build_cached_ok(rl2, cache);
  assert_int_equal(tlsconf_listener_reused(l4), 1);
  expect_served(l4, "www.example.com", "www.example.com");
  /* The owner lets go first: the entries keep the cache until the last
   * listener goes. */
  tlsconf_ctxcache_unref(cache);
  expect_served(l4, "www.example.com", "www.example.com");
  tlsconf_listener_unref(l3);
  tlsconf_listener_unref(l4);
  msg_free(rl);
  msg_free(rl2);
}

/* 100 contexts: built by several threads, each route serving its own;
 * with bad ones, the error is the first in route order, as when they are
 * built one after the other. */
static void test_many_contexts(void **state) {
  Tlsplane__V1__ResolvedListener *rl = rl_new("tlsContexts/ctx-0");
  X509 *certs[100];
  for (int i = 0; i < 100; i++) {
    char name[64], host[64];
    snprintf(name, sizeof(name), "tlsContexts/ctx-%d", i);
    snprintf(host, sizeof(host), "h%d.example.com", i);
    certs[i] = leaf(w.ec_key, host, 100 + i);
    rl_ctx(rl, rctx(name, w.ec_key, certs[i], NULL));
    if (i > 0)
      rl_route(rl, host, name);
  }
  struct tlsconf_listener *l = build_ok(rl);
  assert_int_equal(tlsconf_listener_contexts(l), 100);
  for (int i = 1; i < 100; i += 7) {
    char host[64];
    snprintf(host, sizeof(host), "h%d.example.com", i);
    expect_served(l, host, host);
  }
  struct tlsconf_ctxcache *cache;
  assert_int_equal(tlsconf_listener_cache_new(&cache), 0);
  struct tlsconf_listener *first = build_cached_ok(rl, cache);
  assert_int_equal(tlsconf_listener_reused(first), 0);
  struct tlsconf_listener *again = build_cached_ok(rl, cache);
  assert_int_equal(tlsconf_listener_reused(again), 100);
  assert_int_equal(tlsconf_ctxcache_builds(cache), 100);
  tlsconf_listener_unref(first);
  tlsconf_listener_unref(again);
  assert_int_equal(tlsconf_ctxcache_live(cache), 0);
  tlsconf_ctxcache_unref(cache);
  tlsconf_listener_unref(l);
  /* ctx-70 and then ctx-40 get a key that is not their certificate's. */
  struct tp_err err;
  Tlsplane__V1__ResolvedTlsContext *c70 = rl_find(rl, "tlsContexts/ctx-70");
  msg_free(c70->certificates[0]);
  c70->certificates[0] = material("certificates/c0", w.rsa_key, certs[70]);
  assert_int_equal(build(rl, &err), -1);
  assert_non_null(strstr(err.msg, "tlsContexts/ctx-70: certificates: certificates/c0"));
  Tlsplane__V1__ResolvedTlsContext *c40 = rl_find(rl, "tlsContexts/ctx-40");
  msg_free(c40->certificates[0]);
  c40->certificates[0] = material("certificates/c0", w.rsa_key, certs[40]);
  for (int k = 0; k < 5; k++) {
    assert_int_equal(build(rl, &err), -1);
    assert_non_null(strstr(err.msg, "tlsContexts/ctx-40: "));
  }
  /* A route to a missing context after a bad one: the bad one is named. */
  rl_route(rl, "missing.example.com", "tlsContexts/none");
  assert_int_equal(build(rl, &err), -1);
  assert_non_null(strstr(err.msg, "tlsContexts/ctx-40: "));
  for (int i = 0; i < 100; i++)
    X509_free(certs[i]);
  msg_free(rl);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_build_errors),
      cmocka_unit_test(test_sni_selection),
      cmocka_unit_test(test_sni_own_key_type),
      cmocka_unit_test(test_sni_ocsp),
      cmocka_unit_test(test_sni_alpn_npn),
      cmocka_unit_test(test_sni_cipher_policy),
      cmocka_unit_test(test_sni_max_send_fragment),
      cmocka_unit_test(test_sni_client_cert),
      cmocka_unit_test(test_ticket_ring),
      cmocka_unit_test(test_ticket_no_ring),
      cmocka_unit_test(test_session_id_resumption),
      cmocka_unit_test(test_resumption_reverifies),
      cmocka_unit_test(test_renegotiation),
      cmocka_unit_test(test_conn_info),
      cmocka_unit_test(test_refcount),
      cmocka_unit_test(test_refcount_threads),
      cmocka_unit_test(test_build_cached_shares_contexts),
      cmocka_unit_test(test_many_contexts),
      cmocka_unit_test(test_acme_challenge_served),
      cmocka_unit_test(test_acme_challenge_errors),
  };
  return cmocka_run_group_tests(tests, world_setup, world_teardown);
}
