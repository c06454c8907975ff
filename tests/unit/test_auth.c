/* The control plane's credentials (server/auth.c, server/ca.c): the table
 * of roles per method, token shape and hashing, authentication of a call
 * against a real store, and the CA (issuing, CSRs, reloading). */
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "api.h"
#include "auth.h"
#include "ca.h"
#include "certinfo.h"
#include "fixtures.h"
#include "store.h"

#define assert_contains(haystack, needle)                                                          \
  do {                                                                                             \
    const char *h_ = (haystack), *n_ = (needle);                                                   \
    if (h_ == NULL || strstr(h_, n_) == NULL)                                                      \
      fail_msg("\"%s\" does not contain \"%s\"", h_ ? h_ : "(null)", n_);                          \
  } while (0)

#define assert_ok(rc, err)                                                                         \
  do {                                                                                             \
    int rc_ = (rc);                                                                                \
    if (rc_ != 0)                                                                                  \
      fail_msg("%s returned %d: %s", #rc, rc_, (err).msg);                                         \
  } while (0)

static void test_method_table(void **state) {
  (void)state;
  const char *create = "/tlsplane.v1.CertificateService/CreateCertificate";
  const char *list = "/tlsplane.v1.CertificateService/ListCertificates";
  assert_true(auth_method_allows(create, AUTH_ROLE_ADMIN));
  assert_true(auth_method_allows(create, AUTH_ROLE_OPERATOR));
  assert_false(auth_method_allows(create, AUTH_ROLE_VIEWER));
  assert_false(auth_method_allows(create, AUTH_ROLE_AGENT));
  assert_false(auth_method_allows(create, AUTH_ROLE_NONE));
  assert_true(auth_method_allows(list, AUTH_ROLE_VIEWER));
  assert_false(auth_method_allows(list, AUTH_ROLE_JOIN));
  /* Credentials: the admin's alone, reads included. */
  assert_false(auth_method_allows("/tlsplane.v1.TokenService/ListTokens", AUTH_ROLE_OPERATOR));
  assert_true(auth_method_allows("/tlsplane.v1.TokenService/ListTokens", AUTH_ROLE_ADMIN));
  assert_false(auth_method_allows("/tlsplane.v1.AgentService/DeleteAgent", AUTH_ROLE_OPERATOR));
  /* Agents and join tokens: their own methods only. */
  assert_true(auth_method_allows("/tlsplane.v1.AgentService/Connect", AUTH_ROLE_AGENT));
  assert_false(auth_method_allows("/tlsplane.v1.AgentService/Connect", AUTH_ROLE_OPERATOR));
  /* The stream carries keys: not even the admin receives it. */
  assert_false(auth_method_allows("/tlsplane.v1.AgentService/Connect", AUTH_ROLE_ADMIN));
  /* Agents' labels are set by those who write listeners, never by agents. */
  assert_true(auth_method_allows("/tlsplane.v1.AgentService/UpdateAgent", AUTH_ROLE_OPERATOR));
  assert_false(auth_method_allows("/tlsplane.v1.AgentService/UpdateAgent", AUTH_ROLE_VIEWER));
  assert_false(auth_method_allows("/tlsplane.v1.AgentService/UpdateAgent", AUTH_ROLE_AGENT));
  assert_false(auth_method_allows("/tlsplane.v1.AgentService/ListAgents", AUTH_ROLE_AGENT));
  assert_true(auth_method_allows("/tlsplane.v1.AgentService/EnrollAgent", AUTH_ROLE_JOIN));
  assert_false(auth_method_allows("/tlsplane.v1.AgentService/EnrollAgent", AUTH_ROLE_AGENT));
  assert_true(
      auth_method_allows("/tlsplane.v1.AgentService/RenewAgentCertificate", AUTH_ROLE_AGENT));
  /* Open: health and reflection, also without a role. */
  assert_true(auth_method_allows("/grpc.health.v1.Health/Check", AUTH_ROLE_NONE));
  assert_true(auth_method_allows("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", 0));
  /* Deny by default: what no rule covers, even for the admin. */
  assert_false(auth_method_allows("/other.v1.Service/Method", AUTH_ROLE_ADMIN));
  assert_false(auth_method_allows("/tlsplane.v1.NewService/GetThing", AUTH_ROLE_ADMIN));
  assert_false(auth_method_allows("/tlsplane.v1.CertificateService/A/B", AUTH_ROLE_ADMIN));
  assert_string_equal(auth_role_name(AUTH_ROLE_OPERATOR), "operator");
  assert_string_equal(auth_role_name(99), "none");
}

static void test_token_shape(void **state) {
  (void)state;
  char *a, *b;
  uint8_t ha[AUTH_TOKEN_HASH_LEN], hb[AUTH_TOKEN_HASH_LEN], h[AUTH_TOKEN_HASH_LEN];
  assert_int_equal(auth_token_new("ci-rotation", &a, ha), 0);
  assert_int_equal(auth_token_new("ci-rotation", &b, hb), 0);
  assert_int_equal(strncmp(a, "tlsp_ci-rotation_", 17), 0);
  assert_int_equal(strlen(a), 17 + 43);
  for (const char *p = a + 17; *p; p++)
    assert_non_null(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", *p));
  assert_string_not_equal(a, b);
  unsigned int n = 0;
  EVP_Digest(a, strlen(a), h, &n, EVP_sha256(), NULL);
  assert_memory_equal(h, ha, AUTH_TOKEN_HASH_LEN);
  assert_memory_not_equal(ha, hb, AUTH_TOKEN_HASH_LEN);
  free(a);
  free(b);
}

/* A PKCS#10 request for key, signed by sign_with (another key: a request
 * whose signature does not verify). */
static char *csr_pem(EVP_PKEY *key, EVP_PKEY *sign_with) {
  X509_REQ *req = X509_REQ_new();
  X509_NAME *name = X509_NAME_new();
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)"x", -1, -1, 0);
  X509_REQ_set_subject_name(req, name);
  X509_REQ_set_pubkey(req, key);
  X509_REQ_sign(req, sign_with, EVP_sha256());
  BIO *bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509_REQ(bio, req);
  char *data;
  long len = BIO_get_mem_data(bio, &data);
  char *out = strndup(data, (size_t)len);
  BIO_free(bio);
  X509_NAME_free(name);
  X509_REQ_free(req);
  return out;
}

static void test_ca(void **state) {
  (void)state;
  struct tp_err err = {0};
  struct ca *ca;
  assert_ok(ca_new(&ca, &err), err);
  X509 *root = ca_cert(ca);
  assert_int_equal(X509_check_ca(root), 1);

  /* A client certificate: the subject the server sets, a 128-bit serial. */
  EVP_PKEY *key = ca_key_new();
  struct ca_issue_opts client = {.cn = "agent:edge-1", .ou = "agent", .validity_s = 3600};
  X509 *x;
  assert_ok(ca_issue(ca, key, &client, &x, &err), err);
  assert_int_equal(X509_verify(x, X509_get0_pubkey(root)), 1);
  char *subject = certinfo_name(X509_get_subject_name(x));
  assert_string_equal(subject, "CN=agent:edge-1,OU=agent,O=tlsplane");
  free(subject);
  char serial[CA_SERIAL_HEX_LEN + 1];
  assert_int_equal(ca_serial_hex(x, serial), 0);
  assert_int_equal(strlen(serial), 32);
  assert_int_equal(X509_check_purpose(x, X509_PURPOSE_SSL_CLIENT, 0), 1);
  assert_int_not_equal(X509_check_purpose(x, X509_PURPOSE_SSL_SERVER, 0), 1);
  X509_free(x);

  /* A server certificate: current only with its exact SANs and enough
   * time left. */
  const char *sans[] = {"localhost", "127.0.0.1", "::1", "cp.example.com"};
  struct ca_issue_opts server = {
      .cn = "s", .server = 1, .sans = sans, .n_sans = 4, .validity_s = 10 * 24 * 3600};
  assert_ok(ca_issue(ca, key, &server, &x, &err), err);
  time_t now = time(NULL);
  assert_true(ca_cert_current(ca, x, sans, 4, now, 24 * 3600));
  const char *reordered[] = {"cp.example.com", "::1", "localhost", "127.0.0.1"};
  assert_true(ca_cert_current(ca, x, reordered, 4, now, 24 * 3600));
  assert_false(ca_cert_current(ca, x, sans, 3, now, 24 * 3600));
  assert_false(ca_cert_current(ca, x, sans, 4, now, 30 * 24 * 3600));

  /* Another CA does not vouch for it; a reloaded CA does. */
  struct ca *other;
  assert_ok(ca_new(&other, &err), err);
  assert_false(ca_cert_current(other, x, sans, 4, now, 0));
  char *key_pem = ca_key_pem(ca);
  struct ca *again;
  assert_ok(ca_load(ca_cert_pem(ca), key_pem, &again, &err), err);
  assert_true(ca_cert_current(again, x, sans, 4, now, 0));
  char *other_key = ca_key_pem(other);
  struct ca *mismatched = NULL;
  assert_int_equal(ca_load(ca_cert_pem(ca), other_key, &mismatched, &err), -1);
  assert_null(mismatched);
  assert_int_equal(err.status, GRPC_STATUS_FAILED_PRECONDITION);
  assert_contains(err.msg, "not the key of the certificate");
  X509_free(x);
  free(key_pem);
  free(other_key);

  /* CSRs: proof of possession, and the key types accepted. */
  EVP_PKEY *pub;
  char *good = csr_pem(key, key);
  assert_ok(ca_csr_read(good, "csr_pem", &pub, &err), err);
  assert_int_equal(EVP_PKEY_eq(pub, key), 1);
  EVP_PKEY_free(pub);
  EVP_PKEY *thief = ca_key_new();
  char *forged = csr_pem(key, thief);
  assert_int_equal(ca_csr_read(forged, "csr_pem", &pub, &err), -1);
  assert_contains(err.msg, "csr_pem: the request's signature does not verify");
  EVP_PKEY *small = fixture_key_rsa(1024);
  char *weak = csr_pem(small, small);
  assert_int_equal(ca_csr_read(weak, "csr_pem", &pub, &err), -1);
  assert_contains(err.msg, "RSA key of 1024 bits");
  assert_int_equal(ca_csr_read("garbage", "csr_pem", &pub, &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_INVALID_ARGUMENT);
  assert_int_equal(ca_csr_read("", "csr_pem", &pub, &err), -1);
  assert_contains(err.msg, "csr_pem: required");
  free(good);
  free(forged);
  free(weak);
  EVP_PKEY_free(small);
  EVP_PKEY_free(thief);
  EVP_PKEY_free(key);
  ca_free(other);
  ca_free(again);
  ca_free(ca);
}

/* auth_call against a real store: a token, a client certificate, and
 * every way of being refused. */
static void test_auth_call(void **state) {
  (void)state;
  char dir[256], path[300];
  fixture_tmpdir(dir, sizeof(dir));
  snprintf(path, sizeof(path), "%s/tlsplane.db", dir);
  static const uint8_t mk[STORE_MASTER_KEY_LEN] = "tlsplane test master key .......";
  struct store_opts opts = {.master_keys = &mk, .n_master_keys = 1};
  struct tp_err err = {0};
  struct api api = {0};
  assert_ok(store_open(path, &opts, &api.store, &err), err);
  assert_ok(ca_new(&api.ca, &err), err);
  const struct rpc_call_info setup = {
      .method = "test", .peer = "local", .actor = "test", .principal = ""};

  struct store_txn *txn;
  Tlsplane__V1__Token viewer = TLSPLANE__V1__TOKEN__INIT;
  viewer.role = TLSPLANE__V1__ROLE__VIEWER;
  char *secret;
  EVP_PKEY *key = ca_key_new();
  Tlsplane__V1__ClientCertificate *cc = NULL;
  assert_ok(store_begin(api.store, 1, &txn, &err), err);
  assert_ok(api_token_create(&api, txn, &setup, "dash", &viewer, 0, &secret, NULL, &err), err);
  assert_ok(
      api_client_cert_issue(&api, txn, &setup, key, AUTH_ROLE_AGENT, "edge-1", 3600, &cc, &err),
      err);
  assert_ok(store_commit(txn, NULL, &err), err);

  char header[256];
  snprintf(header, sizeof(header), "Bearer %s", secret);
  const char *list = "/tlsplane.v1.CertificateService/ListCertificates";
  const char *create = "/tlsplane.v1.CertificateService/CreateCertificate";
  struct rpc_credentials cred = {.method = list, .peer = "test", .authorization = header};
  struct rpc_identity id;
  assert_ok(auth_call(&cred, &id, &err, &api), err);
  assert_int_equal(id.role, AUTH_ROLE_VIEWER);
  assert_string_equal(id.principal, "dash");
  assert_string_equal(id.actor, "token:dash");

  cred.method = create;
  assert_int_equal(auth_call(&cred, &id, &err, &api), -1);
  assert_int_equal(err.status, GRPC_STATUS_PERMISSION_DENIED);
  assert_contains(err.msg, "token:dash (role viewer) may not call");
  assert_string_equal(id.actor, "anonymous");

  /* A token on the agent stream: refused, saying why. */
  cred.method = "/tlsplane.v1.AgentService/Connect";
  assert_int_equal(auth_call(&cred, &id, &err, &api), -1);
  assert_int_equal(err.status, GRPC_STATUS_PERMISSION_DENIED);
  assert_contains(err.msg, "only agents stream snapshots");
  cred.method = list;

  /* A wrong secret for a real id looks like an unknown token. */
  cred.method = list;
  header[strlen(header) - 1] ^= 1;
  assert_int_equal(auth_call(&cred, &id, &err, &api), -1);
  assert_int_equal(err.status, GRPC_STATUS_UNAUTHENTICATED);
  assert_contains(err.msg, "unknown or invalid token");
  cred.authorization = "Bearer tlsp_nobody_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
  assert_int_equal(auth_call(&cred, &id, &err, &api), -1);
  assert_contains(err.msg, "unknown or invalid token");
  cred.authorization = "Basic dXNlcjpwYXNz";
  assert_int_equal(auth_call(&cred, &id, &err, &api), -1);
  assert_contains(err.msg, "expected \"Bearer <token>\"");

  /* No credential: refused, except for open methods. */
  cred.authorization = NULL;
  assert_int_equal(auth_call(&cred, &id, &err, &api), -1);
  assert_int_equal(err.status, GRPC_STATUS_UNAUTHENTICATED);
  cred.method = "/grpc.health.v1.Health/Check";
  assert_ok(auth_call(&cred, &id, &err, &api), err);
  assert_int_equal(id.role, AUTH_ROLE_NONE);

  /* The agent's certificate: its id as principal, its subject as actor. */
  cred.method = "/tlsplane.v1.AgentService/Connect";
  cred.client_cert_pem = cc->certificate_pem;
  assert_ok(auth_call(&cred, &id, &err, &api), err);
  assert_int_equal(id.role, AUTH_ROLE_AGENT);
  assert_string_equal(id.principal, "edge-1");
  assert_string_equal(id.actor, "CN=agent:edge-1,OU=agent,O=tlsplane");
  cred.method = list;
  assert_int_equal(auth_call(&cred, &id, &err, &api), -1);
  assert_int_equal(err.status, GRPC_STATUS_PERMISSION_DENIED);
  /* Revoked: refused. */
  cred.method = "/tlsplane.v1.AgentService/Connect";
  assert_ok(store_begin(api.store, 1, &txn, &err), err);
  assert_ok(api_client_cert_revoke(&api, txn, &setup, cc->name, NULL, NULL, &err), err);
  assert_ok(store_commit(txn, NULL, &err), err);
  assert_int_equal(auth_call(&cred, &id, &err, &api), -1);
  assert_int_equal(err.status, GRPC_STATUS_UNAUTHENTICATED);
  assert_contains(err.msg, "is revoked");
  /* A certificate of the same CA that was never recorded. */
  struct ca_issue_opts o = {.cn = "admin", .ou = "admin", .validity_s = 3600};
  X509 *x;
  assert_ok(ca_issue(api.ca, key, &o, &x, &err), err);
  char *pem = ca_cert_to_pem(x);
  cred.client_cert_pem = pem;
  assert_int_equal(auth_call(&cred, &id, &err, &api), -1);
  assert_contains(err.msg, "not issued by this control plane");
  free(pem);
  X509_free(x);

  protobuf_c_message_free_unpacked(&cc->base, NULL);
  EVP_PKEY_free(key);
  free(secret);
  ca_free(api.ca);
  store_close(api.store);
  char p[320];
  unlink(path);
  snprintf(p, sizeof(p), "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", path);
  unlink(p);
  rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_method_table),
      cmocka_unit_test(test_token_shape),
      cmocka_unit_test(test_ca),
      cmocka_unit_test(test_auth_call),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
