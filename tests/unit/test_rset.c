/* Unit tests for common/rset: a resolved snapshot interned holds each
 * resource once, resolves back to the same bytes, and deltas apply whole
 * or not at all. The content is opaque to the set, so no real
 * certificates are needed. Leaks and wipes are ASan's to see. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pb.h"
#include "rset.h"

/* A resolved context named ctx with one certificate (cert, key) and the
 * default policy. */
static Tlsplane__V1__ResolvedTlsContext *context(const char *ctx, const char *cert,
                                                 const char *key) {
  Tlsplane__V1__ResolvedTlsContext *rc = calloc(1, sizeof(*rc));
  tlsplane__v1__resolved_tls_context__init(rc);
  rc->tls_context = calloc(1, sizeof(*rc->tls_context));
  tlsplane__v1__tls_context__init(rc->tls_context);
  rc->tls_context->name = strdup(ctx);
  rc->certificates = calloc(1, sizeof(*rc->certificates));
  rc->n_certificates = 1;
  Tlsplane__V1__CertificateMaterial *m = calloc(1, sizeof(*m));
  tlsplane__v1__certificate_material__init(m);
  m->certificate = calloc(1, sizeof(*m->certificate));
  tlsplane__v1__certificate__init(m->certificate);
  m->certificate->name = strdup(cert);
  m->private_key_pem = strdup(key);
  rc->certificates[0] = m;
  rc->cipher_policy = calloc(1, sizeof(*rc->cipher_policy));
  tlsplane__v1__cipher_policy__init(rc->cipher_policy);
  rc->cipher_policy->name = strdup("cipherPolicies/default");
  return rc;
}

/* A resolved listener `name` whose default context is ctx (taken). */
static Tlsplane__V1__ResolvedListener *listener(const char *name,
                                                Tlsplane__V1__ResolvedTlsContext *ctx) {
  Tlsplane__V1__ResolvedListener *rl = calloc(1, sizeof(*rl));
  tlsplane__v1__resolved_listener__init(rl);
  rl->listener = calloc(1, sizeof(*rl->listener));
  tlsplane__v1__listener__init(rl->listener);
  rl->listener->name = strdup(name);
  rl->listener->default_tls_context = strdup(ctx->tls_context->name);
  rl->tls_contexts = calloc(1, sizeof(*rl->tls_contexts));
  rl->n_tls_contexts = 1;
  Tlsplane__V1__ResolvedListener__TlsContextsEntry *e = calloc(1, sizeof(*e));
  tlsplane__v1__resolved_listener__tls_contexts_entry__init(e);
  e->key = strdup(ctx->tls_context->name);
  e->value = ctx;
  rl->tls_contexts[0] = e;
  return rl;
}

/* Two listeners on one context, one on another. */
static Tlsplane__V1__Snapshot *snapshot(void) {
  Tlsplane__V1__Snapshot *snap = calloc(1, sizeof(*snap));
  tlsplane__v1__snapshot__init(snap);
  snap->revision = 7;
  snap->listeners = calloc(3, sizeof(*snap->listeners));
  snap->listeners[snap->n_listeners++] =
      listener("listeners/a", context("tlsContexts/web", "certificates/web", "KEY-1"));
  snap->listeners[snap->n_listeners++] =
      listener("listeners/b", context("tlsContexts/web", "certificates/web", "KEY-1"));
  snap->listeners[snap->n_listeners++] =
      listener("listeners/c", context("tlsContexts/api", "certificates/api", "KEY-2"));
  return snap;
}

/* Frees and empties a bytes field (an entry's hash, to be computed
 * again from the changed content). */
static void bytes_clear(ProtobufCBinaryData *b) {
  free(b->data);
  b->data = NULL;
  b->len = 0;
}

static void assert_same_bytes(const ProtobufCMessage *a, const ProtobufCMessage *b) {
  uint8_t *x, *y;
  size_t xl, yl;
  assert_int_equal(pb_pack(a, &x, &xl), 0);
  assert_int_equal(pb_pack(b, &y, &yl), 0);
  assert_int_equal(xl, yl);
  assert_memory_equal(x, y, xl);
  free(x);
  free(y);
}

static void test_intern_shares_and_resolves_back(void **state) {
  (void)state;
  Tlsplane__V1__Snapshot *snap = snapshot();
  struct rset *s;
  struct tp_err err = {0};
  assert_int_equal(rset_from_snapshot(snap, &s, &err), 0);
  /* web: context + certificate; api: context + certificate; one policy. */
  assert_int_equal(rset_resource_count(s), 5);
  assert_int_equal(rset_listener_count(s), 3);
  const Tlsplane__V1__ListenerEntry *a = rset_listener_get(s, "listeners/a");
  const Tlsplane__V1__ListenerEntry *b = rset_listener_get(s, "listeners/b");
  assert_non_null(a);
  assert_non_null(b);
  assert_memory_equal(a->tls_contexts[0]->value.data, b->tls_contexts[0]->value.data,
                      RSET_HASH_LEN);
  assert_memory_not_equal(a->hash.data, b->hash.data, RSET_HASH_LEN); /* names differ */

  Tlsplane__V1__Snapshot *back;
  assert_int_equal(rset_snapshot(s, 7, &back, &err), 0);
  assert_same_bytes(&back->base, &snap->base);
  rset_snapshot_free(back);
  rset_free(s);
  protobuf_c_message_free_unpacked(&snap->base, NULL);
}

/* A delta carrying a's entry again with a new certificate. */
static Tlsplane__V1__SnapshotDelta *delta_rotating(const struct rset *from, const char *key) {
  struct rset *next;
  struct tp_err err = {0};
  assert_int_equal(rset_new(&next), 0);
  Tlsplane__V1__ResolvedListener *rl =
      listener("listeners/a", context("tlsContexts/web", "certificates/web", key));
  assert_int_equal(rset_intern(next, rl, NULL, &err), 0);
  protobuf_c_message_free_unpacked(&rl->base, NULL);
  Tlsplane__V1__SnapshotDelta *d = calloc(1, sizeof(*d));
  tlsplane__v1__snapshot_delta__init(d);
  d->revision = 8;
  d->resources = calloc(rset_resource_count(next), sizeof(*d->resources));
  size_t it = 0;
  const Tlsplane__V1__Resource *r;
  while ((r = rset_resource_next(next, &it)) != NULL)
    if (rset_resource_get(from, r->hash.data) == NULL)
      d->resources[d->n_resources++] = (Tlsplane__V1__Resource *)pb_clone(&r->base);
  d->listeners = calloc(1, sizeof(*d->listeners));
  d->listeners[d->n_listeners++] =
      (Tlsplane__V1__ListenerEntry *)pb_clone(&rset_listener_get(next, "listeners/a")->base);
  rset_free(next);
  return d;
}

static void test_delta_applies_whole(void **state) {
  (void)state;
  Tlsplane__V1__Snapshot *snap = snapshot();
  struct rset *s;
  struct tp_err err = {0};
  assert_int_equal(rset_from_snapshot(snap, &s, &err), 0);
  protobuf_c_message_free_unpacked(&snap->base, NULL);

  Tlsplane__V1__SnapshotDelta *d = delta_rotating(s, "KEY-3");
  assert_int_equal(d->n_resources, 2); /* a new certificate, a new context; the policy is held */
  assert_int_equal(rset_delta_apply(s, d, &err), 0);
  protobuf_c_message_free_unpacked(&d->base, NULL);
  assert_int_equal(rset_resource_count(s), 7);
  const Tlsplane__V1__ListenerEntry *a = rset_listener_get(s, "listeners/a");
  const Tlsplane__V1__ListenerEntry *b = rset_listener_get(s, "listeners/b");
  assert_memory_not_equal(a->tls_contexts[0]->value.data, b->tls_contexts[0]->value.data,
                          RSET_HASH_LEN);
  Tlsplane__V1__ResolvedListener *rl;
  assert_int_equal(rset_resolve(s, a, &rl, &err), 0);
  assert_string_equal(rl->tls_contexts[0]->value->certificates[0]->private_key_pem, "KEY-3");
  rset_resolved_free(rl);
  rset_free(s);
}

static void test_delta_refused_changes_nothing(void **state) {
  (void)state;
  Tlsplane__V1__Snapshot *snap = snapshot();
  struct rset *s;
  struct tp_err err = {0};
  assert_int_equal(rset_from_snapshot(snap, &s, &err), 0);
  protobuf_c_message_free_unpacked(&snap->base, NULL);
  const uint8_t *old_hash = rset_listener_get(s, "listeners/a")->hash.data;
  uint8_t before[RSET_HASH_LEN];
  memcpy(before, old_hash, RSET_HASH_LEN);

  /* The new context without its certificate: refused, naming the listener. */
  Tlsplane__V1__SnapshotDelta *d = delta_rotating(s, "KEY-4");
  for (size_t i = 0; i < d->n_resources; i++)
    if (d->resources[i]->content_case == TLSPLANE__V1__RESOURCE__CONTENT_CERTIFICATE) {
      protobuf_c_message_free_unpacked(&d->resources[i]->base, NULL);
      d->resources[i] = d->resources[--d->n_resources];
      break;
    }
  assert_int_equal(rset_delta_apply(s, d, &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_INVALID_ARGUMENT);
  assert_non_null(strstr(err.msg, "listeners[0]: listeners/a"));
  assert_non_null(strstr(err.msg, "not held"));
  protobuf_c_message_free_unpacked(&d->base, NULL);
  assert_int_equal(rset_resource_count(s), 5);
  assert_memory_equal(rset_listener_get(s, "listeners/a")->hash.data, before, RSET_HASH_LEN);

  /* A hash that does not match the content. */
  d = delta_rotating(s, "KEY-5");
  d->resources[0]->hash.data[0] ^= 1;
  memset(&err, 0, sizeof(err));
  assert_int_equal(rset_delta_apply(s, d, &err), -1);
  assert_non_null(strstr(err.msg, "does not match its content"));
  protobuf_c_message_free_unpacked(&d->base, NULL);

  /* Removing a resource a listener still uses. */
  d = calloc(1, sizeof(*d));
  tlsplane__v1__snapshot_delta__init(d);
  const Tlsplane__V1__ListenerEntry *c = rset_listener_get(s, "listeners/c");
  d->removed_resources = calloc(1, sizeof(*d->removed_resources));
  d->removed_resources[0].data = malloc(RSET_HASH_LEN);
  memcpy(d->removed_resources[0].data, c->tls_contexts[0]->value.data, RSET_HASH_LEN);
  d->removed_resources[0].len = RSET_HASH_LEN;
  d->n_removed_resources = 1;
  memset(&err, 0, sizeof(err));
  assert_int_equal(rset_delta_apply(s, d, &err), -1);
  assert_non_null(strstr(err.msg, "listeners/c"));
  assert_int_equal(rset_resource_count(s), 5);

  /* ... and with the listener removed too, it goes. */
  d->removed_listeners = calloc(1, sizeof(*d->removed_listeners));
  d->removed_listeners[0] = strdup("listeners/c");
  d->n_removed_listeners = 1;
  assert_int_equal(rset_delta_apply(s, d, &err), 0);
  protobuf_c_message_free_unpacked(&d->base, NULL);
  assert_int_equal(rset_listener_count(s), 2);
  assert_int_equal(rset_resource_count(s), 4); /* api's certificate is left: not removed */
  rset_free(s);
}

static void test_state_round_trip_and_share(void **state) {
  (void)state;
  Tlsplane__V1__Snapshot *snap = snapshot();
  struct rset *s, *t, *u;
  struct tp_err err = {0};
  assert_int_equal(rset_from_snapshot(snap, &s, &err), 0);
  protobuf_c_message_free_unpacked(&snap->base, NULL);
  Tlsplane__V1__AgentState *st;
  assert_int_equal(rset_state(s, 9, &st), 0);
  uint8_t *buf;
  size_t len;
  assert_int_equal(pb_pack(&st->base, &buf, &len), 0);
  rset_state_free(st);
  Tlsplane__V1__AgentState *back = tlsplane__v1__agent_state__unpack(NULL, len, buf);
  free(buf);
  assert_non_null(back);
  assert_int_equal(back->revision, 9);
  assert_int_equal(rset_from_state(back, &t, &err), 0);
  protobuf_c_message_free_unpacked(&back->base, NULL);
  assert_int_equal(rset_resource_count(t), 5);
  assert_int_equal(rset_listener_count(t), 3);
  assert_memory_equal(rset_listener_get(t, "listeners/b")->hash.data,
                      rset_listener_get(s, "listeners/b")->hash.data, RSET_HASH_LEN);

  /* Shared resources outlive the set they came from. */
  assert_int_equal(rset_new(&u), 0);
  size_t it = 0;
  const Tlsplane__V1__Resource *r;
  while ((r = rset_resource_next(s, &it)) != NULL)
    assert_int_equal(rset_resource_share(u, s, r->hash.data), 0);
  rset_free(s);
  it = 0;
  size_t n = 0;
  while ((r = rset_resource_next(u, &it)) != NULL)
    n++;
  assert_int_equal(n, 5);
  assert_non_null(
      rset_resource_get(u, rset_listener_get(t, "listeners/c")->tls_contexts[0]->value.data));
  rset_free(u);
  rset_free(t);
}

/* Many listeners: the tables grow and shrink without losing an entry. */
/* A challenge for name (AcmeChallengeMaterial; the content is opaque to
 * the set). */
static Tlsplane__V1__AcmeChallengeMaterial *challenge(const char *name, const char *key) {
  Tlsplane__V1__AcmeChallengeMaterial *m = calloc(1, sizeof(*m));
  tlsplane__v1__acme_challenge_material__init(m);
  m->server_name = strdup(name);
  m->certificate_pem = strdup("CERT");
  m->private_key_pem = strdup(key);
  return m;
}

static void add_challenge(Tlsplane__V1__ResolvedListener *rl,
                          Tlsplane__V1__AcmeChallengeMaterial *m) {
  rl->acme_challenges =
      realloc(rl->acme_challenges, (rl->n_acme_challenges + 1) * sizeof(*rl->acme_challenges));
  rl->acme_challenges[rl->n_acme_challenges++] = m;
}

/* ACME challenges: one resource each, shared by listeners naming the same
 * content, resolved back in order; a delta naming one it does not carry
 * is refused; a hash naming another kind of resource does not resolve. */
static void test_acme_challenges(void **state) {
  (void)state;
  Tlsplane__V1__Snapshot *snap = snapshot();
  add_challenge(snap->listeners[0], challenge("a.test", "KEY-A"));
  add_challenge(snap->listeners[0], challenge("b.test", "KEY-B"));
  add_challenge(snap->listeners[2], challenge("a.test", "KEY-A"));
  struct rset *s;
  struct tp_err err = {0};
  assert_int_equal(rset_from_snapshot(snap, &s, &err), 0);
  assert_int_equal(rset_resource_count(s), 7); /* 5, and two challenges */
  const Tlsplane__V1__ListenerEntry *a = rset_listener_get(s, "listeners/a");
  const Tlsplane__V1__ListenerEntry *c = rset_listener_get(s, "listeners/c");
  assert_int_equal(a->n_acme_challenges, 2);
  assert_int_equal(c->n_acme_challenges, 1);
  assert_memory_equal(a->acme_challenges[0].data, c->acme_challenges[0].data, RSET_HASH_LEN);
  const Tlsplane__V1__Resource *r = rset_resource_get(s, a->acme_challenges[1].data);
  assert_non_null(r);
  assert_int_equal(r->content_case, TLSPLANE__V1__RESOURCE__CONTENT_ACME_CHALLENGE);
  assert_string_equal(r->acme_challenge->server_name, "b.test");

  Tlsplane__V1__Snapshot *back;
  assert_int_equal(rset_snapshot(s, 7, &back, &err), 0);
  assert_same_bytes(&back->base, &snap->base);
  rset_snapshot_free(back);
  protobuf_c_message_free_unpacked(&snap->base, NULL);

  /* A delta giving b a challenge without the resource: refused. */
  Tlsplane__V1__ListenerEntry *e =
      (Tlsplane__V1__ListenerEntry *)pb_clone(&rset_listener_get(s, "listeners/b")->base);
  bytes_clear(&e->hash);
  e->acme_challenges = calloc(1, sizeof(*e->acme_challenges));
  e->acme_challenges[0].data = calloc(1, RSET_HASH_LEN);
  e->acme_challenges[0].len = RSET_HASH_LEN;
  e->n_acme_challenges = 1;
  e->acme_challenges[0].data[0] = 0x42;
  Tlsplane__V1__SnapshotDelta *d = calloc(1, sizeof(*d));
  tlsplane__v1__snapshot_delta__init(d);
  d->listeners = calloc(1, sizeof(*d->listeners));
  d->listeners[d->n_listeners++] = e;
  assert_int_equal(rset_delta_apply(s, d, &err), -1);
  assert_non_null(strstr(err.msg, "listeners/b"));
  assert_non_null(strstr(err.msg, "not held"));
  assert_int_equal(rset_listener_get(s, "listeners/b")->n_acme_challenges, 0);

  /* With a's first challenge: applies, and resolves to it. */
  memcpy(e->acme_challenges[0].data, a->acme_challenges[0].data, RSET_HASH_LEN);
  bytes_clear(&e->hash); /* the first apply set it from the old content */
  memset(&err, 0, sizeof(err));
  assert_int_equal(rset_delta_apply(s, d, &err), 0);
  protobuf_c_message_free_unpacked(&d->base, NULL);
  Tlsplane__V1__ResolvedListener *rl;
  assert_int_equal(rset_resolve(s, rset_listener_get(s, "listeners/b"), &rl, &err), 0);
  assert_int_equal(rl->n_acme_challenges, 1);
  assert_string_equal(rl->acme_challenges[0]->server_name, "a.test");
  assert_string_equal(rl->acme_challenges[0]->private_key_pem, "KEY-A");
  rset_resolved_free(rl);

  /* A hash that names a context, not a challenge: the listener does not
   * resolve, and the error says which challenge. */
  e = (Tlsplane__V1__ListenerEntry *)pb_clone(&rset_listener_get(s, "listeners/b")->base);
  bytes_clear(&e->hash);
  memcpy(e->acme_challenges[0].data, e->tls_contexts[0]->value.data, RSET_HASH_LEN);
  assert_int_equal(rset_listener_put(s, e, 0, &err), 0);
  memset(&err, 0, sizeof(err));
  assert_int_equal(rset_resolve(s, rset_listener_get(s, "listeners/b"), &rl, &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_INVALID_ARGUMENT);
  assert_non_null(strstr(err.msg, "listeners/b: acme_challenges[0]: resource"));
  assert_non_null(strstr(err.msg, "is not an ACME challenge"));
  rset_free(s);
}

static void test_many(void **state) {
  (void)state;
  struct rset *s;
  struct tp_err err = {0};
  assert_int_equal(rset_new(&s), 0);
  for (int i = 0; i < 3000; i++) {
    char name[64], cert[64], key[64];
    snprintf(name, sizeof(name), "listeners/l%d", i);
    snprintf(cert, sizeof(cert), "certificates/c%d", i % 100);
    snprintf(key, sizeof(key), "KEY-%d", i % 100);
    Tlsplane__V1__ResolvedListener *rl = listener(name, context("tlsContexts/x", cert, key));
    assert_int_equal(rset_intern(s, rl, NULL, &err), 0);
    protobuf_c_message_free_unpacked(&rl->base, NULL);
  }
  assert_int_equal(rset_listener_count(s), 3000);
  assert_int_equal(rset_resource_count(s), 201); /* 100 certificates, 100 contexts, 1 policy */
  for (int i = 0; i < 3000; i += 2) {
    char name[64];
    snprintf(name, sizeof(name), "listeners/l%d", i);
    assert_int_equal(rset_listener_remove(s, name), 0);
  }
  assert_int_equal(rset_listener_count(s), 1500);
  assert_null(rset_listener_get(s, "listeners/l0"));
  assert_non_null(rset_listener_get(s, "listeners/l2999"));
  rset_free(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_intern_shares_and_resolves_back),
      cmocka_unit_test(test_delta_applies_whole),
      cmocka_unit_test(test_delta_refused_changes_nothing),
      cmocka_unit_test(test_state_round_trip_and_share),
      cmocka_unit_test(test_acme_challenges),
      cmocka_unit_test(test_many),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
