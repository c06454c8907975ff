/* The built-in cipher policies (server/svc_cipher_policy.c): seeded on the
 * first start, and rewritten at a later start when the code's version
 * differs from the stored one (a database written before the default
 * policy became Mozilla intermediate). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api.h"
#include "fixtures.h"
#include "store.h"
#include "tlsconf.h"

/* Fails the test with err's message unless rc is 0. */
#define assert_ok(rc, err) ok_or_fail((rc), #rc, &(err))

static void ok_or_fail(int rc, const char *what, const struct tp_err *err) {
  if (rc != 0)
    fail_msg("%s: %d, %s", what, rc, err->msg);
}

static const uint8_t master_key[STORE_MASTER_KEY_LEN] = "tlsplane test master key .......";

static Tlsplane__V1__CipherPolicy *policy_get(struct api *api, const char *name) {
  struct tp_err err = {0};
  struct store_txn *txn;
  ProtobufCMessage *msg = NULL;
  assert_ok(store_begin(api->store, 0, &txn, &err), err);
  assert_ok(api_read(txn, &api_kind_cipher_policy, name, 0, &msg, NULL, &err), err);
  store_rollback(txn);
  return (Tlsplane__V1__CipherPolicy *)msg;
}

/* Writes the built-in "default" as servers before this version stored
 * it: the seed's list, OpenSSL's suites and groups. */
static void store_old_default(struct api *api) {
  struct tp_err err = {0};
  const struct rpc_call_info call = {
      .method = "test", .peer = "local", .actor = "test", .principal = ""};
  Tlsplane__V1__CipherPolicy *cp = policy_get(api, "cipherPolicies/default");
  free(cp->ciphers);
  cp->ciphers = strdup(tlsconf_node2015_ciphers);
  free(cp->ciphersuites);
  cp->ciphersuites = strdup("");
  free(cp->ecdh_curve);
  cp->ecdh_curve = strdup("");
  struct store_txn *txn;
  struct store_row row = {0};
  ProtobufCMessage *old = NULL;
  assert_ok(store_begin(api->store, 1, &txn, &err), err);
  assert_ok(api_read(txn, &api_kind_cipher_policy, cp->name, 1, &old, &row, &err), err);
  struct api_op op = {.api = api,
                      .kind = &api_kind_cipher_policy,
                      .txn = txn,
                      .call = &call,
                      .old = old,
                      .old_row = &row};
  assert_ok(api_write(&op, &cp->base, NULL, "update", &err), err);
  assert_ok(store_commit(txn, NULL, &err), err);
  store_row_clear(&row);
  protobuf_c_message_free_unpacked(old, NULL);
  protobuf_c_message_free_unpacked(&cp->base, NULL);
}

static void test_builtins_upgrade(void **state) {
  (void)state;
  char dir[256], path[300];
  fixture_tmpdir(dir, sizeof(dir));
  snprintf(path, sizeof(path), "%s/tlsplane.db", dir);
  struct store_opts opts = {.master_keys = &master_key, .n_master_keys = 1};
  struct tp_err err = {0};
  struct api api = {0};
  assert_ok(store_open(path, &opts, &api.store, &err), err);

  /* First start: every built-in is created. */
  assert_ok(api_seed_builtins(&api, &err), err);
  const char *const ids[] = {"default", "node-2015-default", "mozilla-modern",
                             "mozilla-intermediate", "mozilla-old"};
  for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
    char name[64];
    snprintf(name, sizeof(name), "cipherPolicies/%s", ids[i]);
    Tlsplane__V1__CipherPolicy *cp = policy_get(&api, name);
    assert_true(cp->built_in);
    protobuf_c_message_free_unpacked(&cp->base, NULL);
  }
  Tlsplane__V1__CipherPolicy *def = policy_get(&api, "cipherPolicies/default");
  assert_string_equal(def->ciphers, tlsconf_default_ciphers);
  assert_string_equal(def->ciphersuites, tlsconf_default_ciphersuites);
  assert_string_equal(def->ecdh_curve, tlsconf_default_groups);
  assert_non_null(def->honor_cipher_order);
  assert_true(def->honor_cipher_order->value);
  assert_int_equal(def->min_version, TLSPLANE__V1__TLS_VERSION__TLS_1_2);
  protobuf_c_message_free_unpacked(&def->base, NULL);
  Tlsplane__V1__CipherPolicy *seed = policy_get(&api, "cipherPolicies/node-2015-default");
  assert_string_equal(seed->ciphers, tlsconf_node2015_ciphers);
  protobuf_c_message_free_unpacked(&seed->base, NULL);

  /* A start with nothing to change writes nothing. */
  int64_t rev = store_revision(api.store);
  assert_ok(api_seed_builtins(&api, &err), err);
  assert_int_equal(store_revision(api.store), rev);

  /* A database from before: "default" holds the seed's list. The next
   * start rewrites it, in one revision, and keeps its name and creation. */
  store_old_default(&api);
  Tlsplane__V1__CipherPolicy *old = policy_get(&api, "cipherPolicies/default");
  assert_string_equal(old->ciphers, tlsconf_node2015_ciphers);
  rev = store_revision(api.store);
  assert_ok(api_seed_builtins(&api, &err), err);
  assert_int_equal(store_revision(api.store), rev + 1);
  def = policy_get(&api, "cipherPolicies/default");
  assert_string_equal(def->ciphers, tlsconf_default_ciphers);
  assert_string_equal(def->ciphersuites, tlsconf_default_ciphersuites);
  assert_string_equal(def->ecdh_curve, tlsconf_default_groups);
  assert_true(def->built_in);
  assert_int_equal(def->create_time->seconds, old->create_time->seconds);
  assert_string_not_equal(def->etag, old->etag);
  protobuf_c_message_free_unpacked(&def->base, NULL);
  protobuf_c_message_free_unpacked(&old->base, NULL);

  store_close(api.store);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_builtins_upgrade),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
