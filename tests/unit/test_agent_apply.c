/* Unit tests for the agent's apply (agent/apply.c) from a resource set:
 * KEEP by entry hash alone, a listener whose new version fails keeping
 * its served entry in a->served (and so in the cache file), DROP, the
 * context cache shared across listeners and versions, and the time to
 * plan many unchanged listeners. No worker runs (n_workers 0): only the
 * main thread's side is exercised; no socket is opened (port 0 and no
 * worker: nothing to bind). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "apply.h"
#include "cache.h"
#include "fixtures.h"
#include "log.h"
#include "pb.h"
#include "rset.h"
#include "tlsconf_listener.h"

static struct {
  EVP_PKEY *key, *other_key;
  X509 *cert_a, *cert_b;
  char *pem_key, *pem_other_key, *pem_a, *pem_b;
} w;

static int world_setup(void **state) {
  w.key = fixture_key_ec("P-256");
  w.other_key = fixture_key_ec("P-256");
  w.cert_a = fixture_cert(w.key, &(struct fixture_cert_opts){.cn = "a.test", .serial = 1});
  w.cert_b = fixture_cert(w.key, &(struct fixture_cert_opts){.cn = "b.test", .serial = 2});
  w.pem_key = fixture_pem_key(w.key);
  w.pem_other_key = fixture_pem_key(w.other_key);
  w.pem_a = fixture_pem_cert(w.cert_a);
  w.pem_b = fixture_pem_cert(w.cert_b);
  return 0;
}

static int world_teardown(void **state) {
  EVP_PKEY_free(w.key);
  EVP_PKEY_free(w.other_key);
  X509_free(w.cert_a);
  X509_free(w.cert_b);
  free(w.pem_key);
  free(w.pem_other_key);
  free(w.pem_a);
  free(w.pem_b);
  return 0;
}

/* A listener on 127.0.0.1:0 whose default context ctx serves chain with
 * key (the context's content: two listeners given the same share it). */
static Tlsplane__V1__ResolvedListener *resolved_on(const char *name, const char *address,
                                                   const char *ctx, const char *chain,
                                                   const char *key) {
  Tlsplane__V1__Listener l = TLSPLANE__V1__LISTENER__INIT;
  l.name = (char *)name;
  l.address = (char *)address;
  l.upstream = "127.0.0.1:9";
  l.default_tls_context = (char *)ctx;
  Tlsplane__V1__Certificate cert = TLSPLANE__V1__CERTIFICATE__INIT;
  cert.name = "certificates/c";
  cert.certificate_chain_pem = (char *)chain;
  Tlsplane__V1__CertificateMaterial cm = TLSPLANE__V1__CERTIFICATE_MATERIAL__INIT;
  cm.certificate = &cert;
  cm.private_key_pem = (char *)key;
  Tlsplane__V1__CertificateMaterial *cms[] = {&cm};
  char *certs[] = {"certificates/c"};
  Tlsplane__V1__TlsContext tc = TLSPLANE__V1__TLS_CONTEXT__INIT;
  tc.name = (char *)ctx;
  tc.certificates = certs;
  tc.n_certificates = 1;
  Tlsplane__V1__ResolvedTlsContext rc = TLSPLANE__V1__RESOLVED_TLS_CONTEXT__INIT;
  rc.tls_context = &tc;
  rc.certificates = cms;
  rc.n_certificates = 1;
  Tlsplane__V1__ResolvedListener__TlsContextsEntry me =
      TLSPLANE__V1__RESOLVED_LISTENER__TLS_CONTEXTS_ENTRY__INIT;
  me.key = (char *)ctx;
  me.value = &rc;
  Tlsplane__V1__ResolvedListener__TlsContextsEntry *mes[] = {&me};
  Tlsplane__V1__ResolvedListener rl = TLSPLANE__V1__RESOLVED_LISTENER__INIT;
  rl.listener = &l;
  rl.tls_contexts = mes;
  rl.n_tls_contexts = 1;
  return (Tlsplane__V1__ResolvedListener *)pb_clone(&rl.base);
}

static Tlsplane__V1__ResolvedListener *resolved(const char *name, const char *ctx,
                                                const char *chain, const char *key) {
  return resolved_on(name, "127.0.0.1:0", ctx, chain, key);
}

/* Adds rl to s (rl freed). */
static void put(struct rset *s, Tlsplane__V1__ResolvedListener *rl) {
  struct tp_err err = {0};
  if (rset_intern(s, rl, NULL, &err) != 0)
    fail_msg("rset_intern: %s", err.msg);
  protobuf_c_message_free_unpacked(&rl->base, NULL);
}

static struct agent *agent_new(void) {
  struct agent *a = calloc(1, sizeof(*a));
  assert_non_null(a);
  assert_int_equal(tlsconf_listener_cache_new(&a->ctxcache), 0);
  a->workers = NULL;
  a->n_workers = 0;
  return a;
}

static void agent_free(struct agent *a) {
  agent_listeners_free(a);
  tlsconf_ctxcache_unref(a->ctxcache);
  free(a);
}

static const struct apply_result *result_of(const struct apply_report *r, const char *name) {
  for (size_t i = 0; i < r->n; i++)
    if (strcmp(r->results[i].listener, name) == 0)
      return &r->results[i];
  fail_msg("no result for %s", name);
  return NULL;
}

/* agent_apply with its log (a line per new listener) sent nowhere. */
static int apply(struct agent *a, const struct rset *s, int64_t rev, struct apply_report *r) {
  fflush(stderr);
  int saved = dup(2), null = open("/dev/null", O_WRONLY);
  assert_true(saved >= 0 && null >= 0);
  dup2(null, 2);
  close(null);
  int rc = agent_apply(a, s, rev, r);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  return rc;
}

static void expect_served_hash(const struct agent *a, const struct rset *s, const char *name) {
  const Tlsplane__V1__ListenerEntry *want = rset_listener_get(s, name),
                                    *got = rset_listener_get(a->served, name);
  assert_non_null(want);
  assert_non_null(got);
  assert_memory_equal(want->hash.data, got->hash.data, RSET_HASH_LEN);
}

/* Two listeners over one context: one SSL_CTX; the same set again: KEEP
 * with nothing built; a certificate change: one build; a listener whose
 * new version fails keeps its served entry (and the cache file has it);
 * a listener missing from the set is DROPped and its resources go. */
static void test_apply_from_a_set(void **state) {
  struct agent *a = agent_new();
  struct rset *s1;
  assert_int_equal(rset_new(&s1), 0);
  put(s1, resolved("listeners/x", "tlsContexts/shared", w.pem_a, w.pem_key));
  put(s1, resolved("listeners/y", "tlsContexts/shared", w.pem_a, w.pem_key));
  struct apply_report r;
  assert_int_equal(apply(a, s1, 1, &r), 0);
  assert_int_equal(r.n_listeners, 2);
  assert_int_equal(result_of(&r, "listeners/x")->action, APPLY_NEW);
  assert_int_equal(result_of(&r, "listeners/y")->action, APPLY_NEW);
  apply_report_free(&r);
  assert_int_equal(tlsconf_ctxcache_builds(a->ctxcache), 1);
  assert_int_equal(tlsconf_ctxcache_live(a->ctxcache), 1);
  assert_int_equal(rset_listener_count(a->served), 2);
  expect_served_hash(a, s1, "listeners/x");

  /* The same again: KEEP, nothing built. */
  assert_int_equal(apply(a, s1, 2, &r), 0);
  assert_int_equal(result_of(&r, "listeners/x")->action, APPLY_KEEP);
  assert_int_equal(result_of(&r, "listeners/y")->action, APPLY_KEEP);
  apply_report_free(&r);
  assert_int_equal(tlsconf_ctxcache_builds(a->ctxcache), 1);

  /* x gets another certificate; y's new version names a key that is not
   * its certificate's: x CHANGEs (one build), y keeps what it serves. */
  struct rset *s2;
  assert_int_equal(rset_new(&s2), 0);
  put(s2, resolved("listeners/x", "tlsContexts/shared", w.pem_b, w.pem_key));
  put(s2, resolved("listeners/y", "tlsContexts/shared", w.pem_a, w.pem_other_key));
  assert_int_equal(apply(a, s2, 3, &r), -1);
  assert_int_equal(result_of(&r, "listeners/x")->action, APPLY_CHANGE);
  const struct apply_result *y = result_of(&r, "listeners/y");
  assert_int_equal(y->action, APPLY_FAILED);
  assert_non_null(strstr(y->reason, "tlsContexts/shared"));
  assert_int_equal(r.n_failed, 1);
  apply_report_free(&r);
  assert_int_equal(tlsconf_ctxcache_builds(a->ctxcache), 2); /* the bad one is not counted */
  assert_int_equal(tlsconf_ctxcache_live(a->ctxcache), 2);   /* y still serves the old one */
  expect_served_hash(a, s2, "listeners/x");
  expect_served_hash(a, s1, "listeners/y"); /* the served entry, not the desired one */

  /* The cache file holds what is served: y's old entry, and what it uses
   * though s2 no longer has it. */
  rset_free(s1);
  uint8_t *buf;
  size_t len;
  assert_int_equal(cache_state_pack(a->served, 3, &buf, &len), 0);
  Tlsplane__V1__AgentState *st = tlsplane__v1__agent_state__unpack(NULL, len, buf);
  cache_wipe_free(buf, len);
  assert_non_null(st);
  struct rset *back;
  struct tp_err err = {0};
  if (rset_from_state(st, &back, &err) != 0)
    fail_msg("rset_from_state: %s", err.msg);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  assert_int_equal(rset_listener_count(back), 2);
  assert_memory_equal(rset_listener_get(back, "listeners/y")->hash.data,
                      rset_listener_get(a->served, "listeners/y")->hash.data, RSET_HASH_LEN);
  rset_free(back);

  /* Only x left: y is DROPped, and so is what only it used. */
  struct rset *s3;
  assert_int_equal(rset_new(&s3), 0);
  put(s3, resolved("listeners/x", "tlsContexts/shared", w.pem_b, w.pem_key));
  assert_int_equal(apply(a, s3, 4, &r), 0);
  assert_int_equal(result_of(&r, "listeners/x")->action, APPLY_KEEP);
  assert_int_equal(result_of(&r, "listeners/y")->action, APPLY_DROP);
  apply_report_free(&r);
  assert_int_equal(rset_listener_count(a->served), 1);
  assert_int_equal(rset_resource_count(a->served), 2); /* x's context and certificate */
  assert_int_equal(tlsconf_ctxcache_live(a->ctxcache), 1);
  rset_free(s2);
  rset_free(s3);
  agent_free(a);
}

/* A port of 127.0.0.1 free now (bound, then released). */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(sa);
  assert_true(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
              getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
  close(fd);
  return ntohs(sa.sin_port);
}

/* Two listeners of the set on one address: the later in name order is
 * refused, naming the other; the first is served; one on another port of
 * the same host is not refused. */
static void test_two_listeners_on_one_address(void **state) {
  struct agent *a = agent_new();
  char one[32], two[32];
  snprintf(one, sizeof(one), "127.0.0.1:%d", free_port());
  snprintf(two, sizeof(two), "127.0.0.1:%d", free_port());
  struct rset *s;
  assert_int_equal(rset_new(&s), 0);
  put(s, resolved_on("listeners/b", one, "tlsContexts/c", w.pem_a, w.pem_key));
  put(s, resolved_on("listeners/a", one, "tlsContexts/c", w.pem_a, w.pem_key));
  put(s, resolved_on("listeners/c", two, "tlsContexts/c", w.pem_a, w.pem_key));
  struct apply_report r;
  assert_int_equal(apply(a, s, 1, &r), -1);
  assert_int_equal(result_of(&r, "listeners/a")->action, APPLY_NEW);
  assert_int_equal(result_of(&r, "listeners/c")->action, APPLY_NEW);
  const struct apply_result *b = result_of(&r, "listeners/b");
  assert_int_equal(b->action, APPLY_FAILED);
  char want[128];
  snprintf(want, sizeof(want), "address: %s is already used by listeners/a", one);
  assert_string_equal(b->reason, want);
  apply_report_free(&r);
  rset_free(s);
  agent_free(a);
}

/* N unchanged listeners plan by hash alone: the second apply of the same
 * set builds nothing and takes a small fraction of the first.
 * TLSPLANE_APPLY_MANY=50000 measures more (the figure is printed). */
static void test_many_unchanged_listeners_plan_fast(void **state) {
  const char *env = getenv("TLSPLANE_APPLY_MANY");
  int many = env != NULL && atoi(env) > 0 ? atoi(env) : 5000;
  struct agent *a = agent_new();
  struct rset *s;
  assert_int_equal(rset_new(&s), 0);
  for (int i = 0; i < many; i++) {
    char name[64];
    snprintf(name, sizeof(name), "listeners/l%05d", i);
    put(s, resolved(name, i % 2 ? "tlsContexts/a" : "tlsContexts/b", i % 2 ? w.pem_a : w.pem_b,
                    w.pem_key));
  }
  struct apply_report r;
  uint64_t t0 = uv_hrtime();
  assert_int_equal(apply(a, s, 1, &r), 0);
  double first_ms = (double)(uv_hrtime() - t0) / 1e6;
  apply_report_free(&r);
  assert_int_equal(tlsconf_ctxcache_builds(a->ctxcache), 2);
  assert_int_equal(tlsconf_ctxcache_live(a->ctxcache), 2);
  t0 = uv_hrtime();
  assert_int_equal(apply(a, s, 2, &r), 0);
  double again_ms = (double)(uv_hrtime() - t0) / 1e6;
  for (size_t i = 0; i < r.n; i++)
    assert_int_equal(r.results[i].action, APPLY_KEEP);
  apply_report_free(&r);
  print_message("%d listeners over 2 contexts: first apply %.1f ms, unchanged again %.1f ms\n",
                many, first_ms, again_ms);
  assert_true(again_ms * 10 < first_ms);
  rset_free(s);
  agent_free(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_apply_from_a_set),
      cmocka_unit_test(test_two_listeners_on_one_address),
      cmocka_unit_test(test_many_unchanged_listeners_plan_fast),
  };
  return cmocka_run_group_tests(tests, world_setup, world_teardown);
}
