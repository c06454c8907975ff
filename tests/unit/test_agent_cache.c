/* Unit tests for the agent's cache dir (agent/cache.c) and identity
 * (agent/identity.c): atomic files and their modes, the served state
 * as an AgentState and back, an older agent's snapshot cache, the key and certificate pair
 * surviving a renewal interrupted at every step, the CSR the agent sends. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache.h"
#include "fixtures.h"
#include "identity.h"
#include "pb.h"
#include "rset.h"

static char *path_in(const char *dir, const char *name) {
  static char buf[4096];
  snprintf(buf, sizeof(buf), "%s/%s", dir, name);
  return buf;
}

static int exists(const char *dir, const char *name) {
  return access(path_in(dir, name), F_OK) == 0;
}

static void write_file(const char *dir, const char *name, const char *text) {
  FILE *f = fopen(path_in(dir, name), "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void test_file_write_is_atomic_and_private(void **state) {
  char dir[512];
  fixture_tmpdir(dir, sizeof(dir));
  char sub[600];
  snprintf(sub, sizeof(sub), "%s/cache", dir);
  struct tp_err err = {0};
  assert_int_equal(cache_dir_prepare(sub, &err), 0);
  struct stat st;
  assert_int_equal(stat(sub, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0700);
  assert_int_equal(cache_dir_prepare(sub, &err), 0); /* exists: fine */

  /* An existing file with another mode gets the one asked for. */
  write_file(sub, "x", "old");
  chmod(path_in(sub, "x"), 0644);
  assert_int_equal(cache_file_write(sub, "x", "new content", 11, 0600, 0, &err), 0);
  assert_int_equal(stat(path_in(sub, "x"), &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_false(exists(sub, "x.new"));
  char *data;
  size_t len;
  assert_int_equal(cache_file_read(sub, "x", &data, &len, &err), 1);
  assert_int_equal(len, 11);
  assert_string_equal(data, "new content");
  cache_wipe_free(data, len);
  assert_int_equal(cache_file_read(sub, "missing", &data, &len, &err), 0);

  /* Two-step: the .new file, then the rename. */
  assert_int_equal(cache_file_write(sub, "x", "third", 5, 0600, 1, &err), 0);
  assert_true(exists(sub, "x.new"));
  assert_int_equal(cache_file_read(sub, "x", &data, &len, &err), 1);
  assert_string_equal(data, "new content");
  cache_wipe_free(data, len);
  assert_int_equal(cache_file_commit(sub, "x", &err), 0);
  assert_int_equal(cache_file_read(sub, "x", &data, &len, &err), 1);
  assert_string_equal(data, "third");
  cache_wipe_free(data, len);

  /* A file where the directory should be. */
  assert_int_equal(cache_dir_prepare(path_in(sub, "x"), &err), -1);
  assert_non_null(strstr(err.msg, "not a directory"));
}

/* A key and a certificate for agent:<name> signed by a test CA, as PEM. */
struct pair {
  char *key, *cert;
};

static struct pair make_pair(const char *cn, long serial, time_t not_after) {
  EVP_PKEY *key = fixture_key_ec("P-256");
  X509 *x = fixture_cert(
      key, &(struct fixture_cert_opts){.cn = cn, .serial = serial, .not_after = not_after});
  struct pair p = {fixture_pem_key(key), fixture_pem_cert(x)};
  X509_free(x);
  EVP_PKEY_free(key);
  return p;
}

static void pair_free(struct pair *p) {
  free(p->key);
  free(p->cert);
}

static void test_identity_make_and_checks(void **state) {
  struct pair p = make_pair("agent:edge-1", 7, 0), q = make_pair("agent:edge-1", 8, 0);
  struct identity id;
  struct tp_err err = {0};
  assert_int_equal(identity_make(p.key, p.cert, &id, &err), 0);
  assert_string_equal(id.cn, "agent:edge-1");
  assert_string_equal(id.serial, "07");
  assert_true(id.not_after > id.not_before);
  assert_int_equal(id.renew_after, id.not_before + (id.not_after - id.not_before) / 3 * 2);
  char why[256];
  assert_null(identity_unusable(&id, "edge-1", time(NULL), why, sizeof(why)));
  assert_non_null(identity_unusable(&id, "edge-2", time(NULL), why, sizeof(why)));
  assert_non_null(strstr(why, "the certificate is for agent:edge-1, not agent:edge-2"));
  assert_non_null(identity_unusable(&id, "edge-1", id.not_after, why, sizeof(why)));
  assert_non_null(strstr(why, "expired"));
  identity_clear(&id);
  /* A key that is not the certificate's. */
  assert_int_equal(identity_make(q.key, p.cert, &id, &err), -1);
  assert_string_equal(err.msg, "the key does not match the certificate");
  assert_int_equal(identity_make("junk", p.cert, &id, &err), -1);
  pair_free(&p);
  pair_free(&q);
}

static void test_identity_issued_by(void **state) {
  EVP_PKEY *ca_key = fixture_key_ec("P-256"), *other_key = fixture_key_ec("P-256"),
           *key = fixture_key_ec("P-256");
  X509 *ca = fixture_cert(ca_key, &(struct fixture_cert_opts){.cn = "tlsplane CA", .is_ca = 1});
  X509 *other =
      fixture_cert(other_key, &(struct fixture_cert_opts){.cn = "tlsplane CA", .is_ca = 1});
  X509 *x =
      fixture_cert(key, &(struct fixture_cert_opts){
                            .cn = "agent:edge-1", .serial = 5, .issuer = ca, .issuer_key = ca_key});
  char *ca_pem = fixture_pem_cert(ca), *other_pem = fixture_pem_cert(other),
       *both = fixture_pem_chain(other, ca, NULL), *key_pem = fixture_pem_key(key),
       *cert_pem = fixture_pem_cert(x);
  struct identity id;
  struct tp_err err = {0};
  assert_int_equal(identity_make(key_pem, cert_pem, &id, &err), 0);
  assert_int_equal(identity_issued_by(&id, ca_pem), 1);
  /* Another CA with the same name: the signature tells them apart. */
  assert_int_equal(identity_issued_by(&id, other_pem), 0);
  assert_int_equal(identity_issued_by(&id, both), 1);
  assert_int_equal(identity_issued_by(&id, "not a PEM"), 0);
  identity_clear(&id);
  free(ca_pem);
  free(other_pem);
  free(both);
  free(key_pem);
  free(cert_pem);
  X509_free(ca);
  X509_free(other);
  X509_free(x);
  EVP_PKEY_free(ca_key);
  EVP_PKEY_free(other_key);
  EVP_PKEY_free(key);
}

static void test_keygen_makes_a_p256_csr(void **state) {
  char *key, *csr;
  struct tp_err err = {0};
  assert_int_equal(identity_keygen("edge-1", &key, &csr, &err), 0);
  BIO *b = BIO_new_mem_buf(csr, -1);
  X509_REQ *req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
  BIO_free(b);
  assert_non_null(req);
  EVP_PKEY *pub = X509_REQ_get0_pubkey(req);
  assert_int_equal(X509_REQ_verify(req, pub), 1);
  char group[32];
  size_t glen;
  assert_int_equal(EVP_PKEY_get_group_name(pub, group, sizeof(group), &glen), 1);
  assert_string_equal(group, "prime256v1");
  char cn[64];
  X509_NAME_get_text_by_NID(X509_REQ_get_subject_name(req), NID_commonName, cn, sizeof(cn));
  assert_string_equal(cn, "agent:edge-1");
  b = BIO_new_mem_buf(key, -1);
  EVP_PKEY *priv = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
  BIO_free(b);
  assert_non_null(priv);
  assert_int_equal(EVP_PKEY_eq(priv, pub), 1);
  assert_non_null(strstr(key, "BEGIN PRIVATE KEY")); /* PKCS#8, unencrypted */
  EVP_PKEY_free(priv);
  X509_REQ_free(req);
  cache_wipe_free(key, strlen(key));
  free(csr);
}

static void load_expect(const char *dir, const char *serial) {
  struct identity id;
  struct tp_err err = {0};
  assert_int_equal(identity_load(dir, &id, &err), 1);
  assert_string_equal(id.serial, serial);
  identity_clear(&id);
  assert_false(exists(dir, "agent-key.pem.new"));
  assert_false(exists(dir, "agent.pem.new"));
}

/* Every point where a renewal can be interrupted leaves a matching pair. */
static void test_identity_survives_an_interrupted_renewal(void **state) {
  char dir[512];
  fixture_tmpdir(dir, sizeof(dir));
  struct tp_err err = {0};
  struct identity id;
  assert_int_equal(identity_load(dir, &id, &err), 0); /* nothing yet */

  struct pair old = make_pair("agent:edge-1", 0x10, 0), new = make_pair("agent:edge-1", 0x11, 0);
  struct identity a, b;
  assert_int_equal(identity_make(old.key, old.cert, &a, &err), 0);
  assert_int_equal(identity_make(new.key, new.cert, &b, &err), 0);
  assert_int_equal(identity_store(dir, &a, "CA PEM", &err), 0);
  struct stat st;
  assert_int_equal(stat(path_in(dir, "agent-key.pem"), &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_true(exists(dir, "ca.pem"));
  load_expect(dir, "10");

  /* Only the new key written: the old pair stands. */
  assert_int_equal(cache_file_write(dir, "agent-key.pem", new.key, strlen(new.key), 0600, 1, &err),
                   0);
  load_expect(dir, "10");
  /* Both written, none renamed: the new pair is whole, and taken. */
  assert_int_equal(cache_file_write(dir, "agent-key.pem", new.key, strlen(new.key), 0600, 1, &err),
                   0);
  assert_int_equal(cache_file_write(dir, "agent.pem", new.cert, strlen(new.cert), 0644, 1, &err),
                   0);
  load_expect(dir, "11");
  /* Back to the old pair, then a crash between the two renames. */
  assert_int_equal(identity_store(dir, &a, NULL, &err), 0);
  assert_int_equal(cache_file_write(dir, "agent-key.pem", new.key, strlen(new.key), 0600, 1, &err),
                   0);
  assert_int_equal(cache_file_write(dir, "agent.pem", new.cert, strlen(new.cert), 0644, 1, &err),
                   0);
  assert_int_equal(cache_file_commit(dir, "agent-key.pem", &err), 0);
  load_expect(dir, "11");
  /* A complete renewal. */
  assert_int_equal(identity_store(dir, &a, NULL, &err), 0);
  assert_int_equal(identity_store(dir, &b, NULL, &err), 0);
  load_expect(dir, "11");
  /* A key and a certificate that do not match, with nothing to recover. */
  write_file(dir, "agent-key.pem", old.key);
  assert_int_equal(identity_load(dir, &id, &err), -1);
  assert_non_null(strstr(err.msg, "the key does not match the certificate"));

  identity_clear(&a);
  identity_clear(&b);
  pair_free(&old);
  pair_free(&new);
}

/* A ResolvedListener named name on address with one context holding a
 * certificate material (key text included: what the cache must keep). */
static Tlsplane__V1__ResolvedListener *resolved(const char *name, const char *address,
                                                const char *key) {
  Tlsplane__V1__Listener l = TLSPLANE__V1__LISTENER__INIT;
  l.name = (char *)name;
  l.address = (char *)address;
  l.default_tls_context = "tlsContexts/c";
  Tlsplane__V1__Certificate cert = TLSPLANE__V1__CERTIFICATE__INIT;
  cert.name = "certificates/c";
  Tlsplane__V1__CertificateMaterial cm = TLSPLANE__V1__CERTIFICATE_MATERIAL__INIT;
  cm.certificate = &cert;
  cm.private_key_pem = (char *)key;
  Tlsplane__V1__CertificateMaterial *cms[] = {&cm};
  Tlsplane__V1__TlsContext tc = TLSPLANE__V1__TLS_CONTEXT__INIT;
  tc.name = "tlsContexts/c";
  Tlsplane__V1__ResolvedTlsContext rc = TLSPLANE__V1__RESOLVED_TLS_CONTEXT__INIT;
  rc.tls_context = &tc;
  rc.certificates = cms;
  rc.n_certificates = 1;
  Tlsplane__V1__ResolvedListener__TlsContextsEntry me =
      TLSPLANE__V1__RESOLVED_LISTENER__TLS_CONTEXTS_ENTRY__INIT;
  me.key = "tlsContexts/c";
  me.value = &rc;
  Tlsplane__V1__ResolvedListener__TlsContextsEntry *mes[] = {&me};
  Tlsplane__V1__ResolvedListener rl = TLSPLANE__V1__RESOLVED_LISTENER__INIT;
  rl.listener = &l;
  rl.tls_contexts = mes;
  rl.n_tls_contexts = 1;
  return (Tlsplane__V1__ResolvedListener *)pb_clone(&rl.base);
}

static struct rset *set_of(Tlsplane__V1__ResolvedListener **ls, size_t n) {
  struct rset *s;
  struct tp_err err = {0};
  assert_int_equal(rset_new(&s), 0);
  for (size_t i = 0; i < n; i++)
    if (rset_intern(s, ls[i], NULL, &err) != 0)
      fail_msg("rset_intern: %s", err.msg);
  return s;
}

/* Whether a and b hold the same listener entries and resources, by hash. */
static void expect_same(const struct rset *a, const struct rset *b) {
  assert_int_equal(rset_listener_count(a), rset_listener_count(b));
  assert_int_equal(rset_resource_count(a), rset_resource_count(b));
  size_t it = 0;
  const Tlsplane__V1__ListenerEntry *e;
  while ((e = rset_listener_next(a, &it)) != NULL) {
    const Tlsplane__V1__ListenerEntry *f = rset_listener_get(b, e->listener->name);
    assert_non_null(f);
    assert_int_equal(f->hash.len, RSET_HASH_LEN);
    assert_memory_equal(f->hash.data, e->hash.data, RSET_HASH_LEN);
  }
  it = 0;
  const Tlsplane__V1__Resource *r;
  while ((r = rset_resource_next(a, &it)) != NULL)
    assert_non_null(rset_resource_get(b, r->hash.data));
}

/* The served state as an AgentState (state.pb, 0600) and back, hashes
 * verified; an older agent's snapshot.pb goes once state.pb is written. */
static void test_state_round_trip(void **state) {
  Tlsplane__V1__ResolvedListener *ls[] = {resolved("listeners/web", "127.0.0.1:1", "KEY-A"),
                                          resolved("listeners/api", "127.0.0.1:2", "KEY-A")};
  struct rset *served = set_of(ls, 2);
  assert_int_equal(rset_resource_count(served), 2); /* one context, one certificate, shared */
  uint8_t *buf;
  size_t len;
  assert_int_equal(cache_state_pack(served, 42, &buf, &len), 0);

  char dir[512];
  fixture_tmpdir(dir, sizeof(dir));
  struct tp_err err = {0};
  struct rset *loaded = NULL;
  int64_t rev = -1;
  assert_int_equal(cache_state_load(dir, &loaded, &rev, &err), 0); /* nothing yet */
  assert_null(loaded);
  write_file(dir, CACHE_SNAPSHOT, "an older agent's");
  assert_int_equal(cache_state_write(dir, buf, len, &err), 0);
  assert_false(exists(dir, CACHE_SNAPSHOT));
  struct stat st;
  assert_int_equal(stat(path_in(dir, CACHE_STATE), &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_int_equal(cache_state_load(dir, &loaded, &rev, &err), 1);
  assert_int_equal(rev, 42);
  expect_same(served, loaded);
  const Tlsplane__V1__ListenerEntry *web = rset_listener_get(loaded, "listeners/web");
  Tlsplane__V1__ResolvedListener *rl;
  assert_int_equal(rset_resolve(loaded, web, &rl, &err), 0);
  assert_string_equal(rl->tls_contexts[0]->value->certificates[0]->private_key_pem, "KEY-A");
  rset_resolved_free(rl);
  rset_free(loaded);

  /* A resource whose content does not match its hash: refused whole. */
  buf[len - 1] ^= 1;
  assert_int_equal(cache_state_write(dir, buf, len, &err), 0);
  assert_int_equal(cache_state_load(dir, &loaded, &rev, &err), -1);
  assert_null(loaded);
  assert_non_null(strstr(err.msg, CACHE_STATE));
  write_file(dir, CACHE_STATE, "\xff\xff\xff garbage");
  assert_int_equal(cache_state_load(dir, &loaded, &rev, &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_DATA_LOSS);

  cache_wipe_free(buf, len);
  rset_free(served);
  for (size_t i = 0; i < 2; i++)
    protobuf_c_message_free_unpacked(&ls[i]->base, NULL);
}

/* An upgraded agent starts from its old cache: snapshot.pb (a packed
 * Snapshot) loads as the same set rset_from_snapshot makes. */
static void test_old_snapshot_cache_loads(void **state) {
  Tlsplane__V1__ResolvedListener *ls[] = {resolved("listeners/web", "127.0.0.1:1", "KEY-A"),
                                          resolved("listeners/api", "127.0.0.1:2", "KEY-B")};
  Tlsplane__V1__Snapshot snap = TLSPLANE__V1__SNAPSHOT__INIT;
  snap.revision = 7;
  snap.listeners = ls;
  snap.n_listeners = 2;
  uint8_t *buf;
  size_t len;
  assert_int_equal(pb_pack(&snap.base, &buf, &len), 0);
  char dir[512];
  fixture_tmpdir(dir, sizeof(dir));
  struct tp_err err = {0};
  assert_int_equal(cache_file_write(dir, CACHE_SNAPSHOT, buf, len, 0600, 0, &err), 0);
  struct rset *loaded = NULL, *want = set_of(ls, 2);
  int64_t rev = 0;
  assert_int_equal(cache_state_load(dir, &loaded, &rev, &err), 1);
  assert_int_equal(rev, 7);
  expect_same(want, loaded);
  /* Two certificates, and so two contexts (a context names its certificates by hash). */
  assert_int_equal(rset_resource_count(loaded), 4);
  rset_free(loaded);
  write_file(dir, CACHE_SNAPSHOT, "\xff\xff\xff garbage");
  assert_int_equal(cache_state_load(dir, &loaded, &rev, &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_DATA_LOSS);
  rset_free(want);
  cache_wipe_free(buf, len);
  for (size_t i = 0; i < 2; i++)
    protobuf_c_message_free_unpacked(&ls[i]->base, NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_file_write_is_atomic_and_private),
      cmocka_unit_test(test_identity_make_and_checks),
      cmocka_unit_test(test_identity_issued_by),
      cmocka_unit_test(test_keygen_makes_a_p256_csr),
      cmocka_unit_test(test_identity_survives_an_interrupted_renewal),
      cmocka_unit_test(test_state_round_trip),
      cmocka_unit_test(test_old_snapshot_cache_loads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
