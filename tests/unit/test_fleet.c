/* Unit tests for server/fleet: a world built from a real store sends each
 * agent what its labels select, every resource once; the next delta sends
 * only what changed; what an agent applies with common/rset ends where the
 * server's view says; a listener that fails to build is carried, never
 * removed; pending ACME challenges reach the listeners that serve their
 * names, for agents of protocol 4 only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "api.h"
#include "fixtures.h"
#include "fleet.h"
#include "pb.h"
#include "rset.h"
#include "store.h"

static const uint8_t master_key[STORE_MASTER_KEY_LEN] = "tlsplane test master key .......";

#define assert_ok(expr, err)                                                                       \
  do {                                                                                             \
    if ((expr) != 0)                                                                               \
      fail_msg("%s: %s", #expr, (err).msg);                                                        \
  } while (0)

struct env {
  char path[300];
  struct api api;
};

static const struct rpc_call_info test_call = {
    .method = "test", .peer = "", .actor = "system", .principal = ""};

static void put(struct env *e, const struct api_kind *kind, ProtobufCMessage *res, int update) {
  struct tp_err err = {0};
  struct store_txn *txn;
  assert_ok(store_begin(e->api.store, 1, &txn, &err), err);
  ProtobufCMessage *old = NULL;
  struct store_row row = {0};
  if (update)
    assert_ok(api_read(txn, kind, pb_string_get(res, "name"), 1, &old, &row, &err), err);
  struct api_op op = {.api = &e->api,
                      .kind = kind,
                      .txn = txn,
                      .call = &test_call,
                      .old = old,
                      .old_row = update ? &row : NULL,
                      .now = time(NULL)};
  assert_ok(api_write(&op, res, NULL, update ? "update" : "create", &err), err);
  assert_ok(store_commit(txn, NULL, &err), err);
  if (old != NULL)
    protobuf_c_message_free_unpacked(old, NULL);
  store_row_clear(&row);
  protobuf_c_message_free_unpacked(res, NULL);
}

static void put_certificate(struct env *e, const char *name, const char *cn, int update) {
  EVP_PKEY *key = fixture_key_ec("P-256");
  struct fixture_cert_opts o = {.cn = cn, .san = "DNS:www.example.com"};
  X509 *x = fixture_cert(key, &o);
  Tlsplane__V1__Certificate *c = calloc(1, sizeof(*c));
  tlsplane__v1__certificate__init(c);
  c->name = strdup(name);
  c->certificate_chain_pem = fixture_pem_cert(x);
  c->private_key_pem = fixture_pem_key(key);
  X509_free(x);
  EVP_PKEY_free(key);
  put(e, &api_kind_certificate, &c->base, update);
}

static void put_context(struct env *e, const char *name, const char *cert) {
  Tlsplane__V1__TlsContext *t = calloc(1, sizeof(*t));
  tlsplane__v1__tls_context__init(t);
  t->name = strdup(name);
  t->certificates = calloc(1, sizeof(char *));
  t->certificates[0] = strdup(cert);
  t->n_certificates = 1;
  put(e, &api_kind_tls_context, &t->base, 0);
}

/* A listener on ctx for agents with agent=<selector> (NULL: every agent). */
static void put_listener(struct env *e, const char *name, int port, const char *ctx,
                         const char *selector) {
  Tlsplane__V1__Listener *l = calloc(1, sizeof(*l));
  tlsplane__v1__listener__init(l);
  l->name = strdup(name);
  char addr[64];
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
  l->address = strdup(addr);
  l->upstream = strdup("127.0.0.1:9");
  l->default_tls_context = strdup(ctx);
  if (selector != NULL) {
    l->agent_selector = calloc(1, sizeof(*l->agent_selector));
    l->agent_selector[0] = calloc(1, sizeof(**l->agent_selector));
    tlsplane__v1__listener__agent_selector_entry__init(l->agent_selector[0]);
    l->agent_selector[0]->key = strdup("agent");
    l->agent_selector[0]->value = strdup(selector);
    l->n_agent_selector = 1;
  }
  put(e, &api_kind_listener, &l->base, 0);
}

static void env_open(struct env *e) {
  char dir[256];
  fixture_tmpdir(dir, sizeof(dir));
  snprintf(e->path, sizeof(e->path), "%s/tlsplane.db", dir);
  struct store_opts opts = {.master_keys = &master_key, .n_master_keys = 1};
  struct tp_err err = {0};
  memset(&e->api, 0, sizeof(e->api));
  assert_ok(store_open(e->path, &opts, &e->api.store, &err), err);
  assert_ok(api_seed_builtins(&e->api, &err), err);
  put_certificate(e, "certificates/web", "web-1", 0);
  put_context(e, "tlsContexts/web", "certificates/web");
  put_listener(e, "listeners/a", 8441, "tlsContexts/web", "1");
  put_listener(e, "listeners/b", 8442, "tlsContexts/web", "2");
  put_listener(e, "listeners/c", 8443, "tlsContexts/web", NULL);
}

/* What an agent does with a packed ServerMessage: applies its delta. */
static void agent_apply(struct rset *agent, const uint8_t *msg, size_t len) {
  Tlsplane__V1__ServerMessage *m = tlsplane__v1__server_message__unpack(NULL, len, msg);
  assert_non_null(m);
  assert_int_equal(m->message_case, TLSPLANE__V1__SERVER_MESSAGE__MESSAGE_DELTA);
  struct tp_err err = {0};
  assert_ok(rset_delta_apply(agent, m->delta, &err), err);
  protobuf_c_message_free_unpacked(&m->base, NULL);
}

static Tlsplane__V1__SnapshotDelta *delta_of(const uint8_t *msg, size_t len) {
  Tlsplane__V1__ServerMessage *m = tlsplane__v1__server_message__unpack(NULL, len, msg);
  assert_non_null(m);
  Tlsplane__V1__SnapshotDelta *d = m->delta;
  m->delta = NULL;
  m->message_case = TLSPLANE__V1__SERVER_MESSAGE__MESSAGE__NOT_SET;
  protobuf_c_message_free_unpacked(&m->base, NULL);
  return d;
}

static const struct snapshot_label agent1[] = {{"agent", "1"}};

static void test_selection_and_deltas(void **state) {
  (void)state;
  struct env e;
  env_open(&e);
  struct tp_err err = {0};
  struct fleet_world *w1;
  assert_ok(fleet_world_build(e.api.store, NULL, &w1, &err), err);
  assert_int_equal(fleet_world_listeners(w1), 3);
  assert_int_equal(fleet_world_resources(w1), 3); /* certificate, context, default policy */

  struct fleet_view *v;
  assert_int_equal(fleet_view_new(&v), 0);
  uint8_t *msg;
  size_t len, n_failures;
  const struct fleet_failure **failures;
  assert_ok(fleet_delta(w1, v, agent1, 1, &msg, &len, NULL, &failures, &n_failures, &err), err);
  assert_non_null(msg);
  assert_int_equal(n_failures, 0);
  Tlsplane__V1__SnapshotDelta *d = delta_of(msg, len);
  assert_int_equal(d->revision, fleet_world_revision(w1));
  assert_int_equal(d->n_listeners, 2); /* a (agent=1) and c (everyone), not b */
  assert_string_equal(d->listeners[0]->listener->name, "listeners/a");
  assert_string_equal(d->listeners[1]->listener->name, "listeners/c");
  assert_int_equal(d->n_resources, 3); /* the shared context once */
  protobuf_c_message_free_unpacked(&d->base, NULL);
  struct rset *agent;
  assert_int_equal(rset_new(&agent), 0);
  agent_apply(agent, msg, len);
  free(msg);
  assert_int_equal(rset_listener_count(agent), 2);

  /* Nothing changed: nothing to send. */
  assert_ok(fleet_delta(w1, v, agent1, 1, &msg, &len, NULL, &failures, &n_failures, &err), err);
  assert_null(msg);

  /* The certificate rotates: both listeners change, and the resources
   * sent are the new certificate and context only. */
  put_certificate(&e, "certificates/web", "web-2", 1);
  struct fleet_world *w2;
  assert_ok(fleet_world_build(e.api.store, w1, &w2, &err), err);
  assert_ok(fleet_delta(w2, v, agent1, 1, &msg, &len, NULL, &failures, &n_failures, &err), err);
  d = delta_of(msg, len);
  assert_int_equal(d->n_listeners, 2);
  assert_int_equal(d->n_resources, 2);
  assert_int_equal(d->n_removed_resources, 2);
  assert_int_equal(d->n_removed_listeners, 0);
  protobuf_c_message_free_unpacked(&d->base, NULL);
  agent_apply(agent, msg, len);
  free(msg);
  assert_int_equal(rset_resource_count(agent), 3);
  assert_int_equal(fleet_view_resources(v), 3);

  /* A world with nothing written since shares every entry: nothing to
   * send. */
  struct fleet_world *w2b;
  assert_ok(fleet_world_build(e.api.store, w2, &w2b, &err), err);
  assert_int_equal(fleet_world_listeners(w2b), 3);
  assert_int_equal(fleet_world_resources(w2b), 3);
  assert_ok(fleet_delta(w2b, v, agent1, 1, &msg, &len, NULL, &failures, &n_failures, &err), err);
  assert_null(msg);
  fleet_world_unref(w2b);

  /* A reconnecting agent reports what it holds and gets only the
   * revision (an empty delta), not the world. */
  Tlsplane__V1__AgentHello hello = TLSPLANE__V1__AGENT_HELLO__INIT;
  Tlsplane__V1__AgentState *st;
  assert_int_equal(rset_state(agent, 0, &st), 0);
  hello.protocol = 2;
  hello.n_resources = st->n_resources;
  hello.resources = calloc(st->n_resources, sizeof(*hello.resources));
  for (size_t i = 0; i < st->n_resources; i++)
    hello.resources[i] = st->resources[i]->hash;
  Tlsplane__V1__ListenerVersion lv[2];
  Tlsplane__V1__ListenerVersion *lvp[2];
  for (size_t i = 0; i < st->n_listeners; i++) {
    tlsplane__v1__listener_version__init(&lv[i]);
    lv[i].listener = st->listeners[i]->listener->name;
    lv[i].hash = st->listeners[i]->hash;
    lvp[i] = &lv[i];
  }
  hello.listeners = lvp;
  hello.n_listeners = st->n_listeners;
  struct fleet_view *v2;
  assert_int_equal(fleet_view_new(&v2), 0);
  assert_ok(fleet_view_from_hello(v2, &hello, &err), err);
  free(hello.resources);
  rset_state_free(st);
  assert_ok(fleet_delta(w2, v2, agent1, 1, &msg, &len, NULL, &failures, &n_failures, &err), err);
  assert_non_null(msg);
  d = delta_of(msg, len);
  assert_int_equal(
      d->n_listeners + d->n_resources + d->n_removed_listeners + d->n_removed_resources, 0);
  protobuf_c_message_free_unpacked(&d->base, NULL);
  free(msg);

  /* Its labels change: a goes, b comes, no resource moves. */
  static const struct snapshot_label agent2[] = {{"agent", "2"}};
  assert_ok(fleet_delta(w2, v2, agent2, 1, &msg, &len, NULL, &failures, &n_failures, &err), err);
  d = delta_of(msg, len);
  assert_int_equal(d->n_listeners, 1);
  assert_string_equal(d->listeners[0]->listener->name, "listeners/b");
  assert_int_equal(d->n_removed_listeners, 1);
  assert_string_equal(d->removed_listeners[0], "listeners/a");
  assert_int_equal(d->n_resources + d->n_removed_resources, 0);
  protobuf_c_message_free_unpacked(&d->base, NULL);
  agent_apply(agent, msg, len);
  free(msg);

  fleet_view_free(v);
  fleet_view_free(v2);
  rset_free(agent);
  fleet_world_unref(w1);
  fleet_world_unref(w2);
  store_close(e.api.store);
}

/* The certificate's sealed key is damaged in the file: the next world
 * cannot build the listeners that use it, keeps their previous entries,
 * and says why; the agent is sent nothing that removes them. */
static void test_failure_keeps_what_agents_serve(void **state) {
  (void)state;
  struct env e;
  env_open(&e);
  /* An unrelated listener on a certificate of its own. */
  put_certificate(&e, "certificates/api", "api-1", 0);
  put_context(&e, "tlsContexts/api", "certificates/api");
  put_listener(&e, "listeners/d", 8444, "tlsContexts/api", "1");
  struct tp_err err = {0};
  struct fleet_world *w1, *w2, *w3;
  assert_ok(fleet_world_build(e.api.store, NULL, &w1, &err), err);
  struct fleet_view *v;
  assert_int_equal(fleet_view_new(&v), 0);
  uint8_t *msg;
  size_t len, n_failures;
  const struct fleet_failure **failures;
  assert_ok(fleet_delta(w1, v, agent1, 1, &msg, &len, NULL, &failures, &n_failures, &err), err);
  free(msg);

  size_t n;
  sqlite3 *db;
  assert_int_equal(sqlite3_open(e.path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db,
                                "UPDATE resources SET secret = zeroblob(length(secret)) WHERE "
                                "name = 'certificates/web'",
                                NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(db);
  /* A world reuses what no write touched since the previous one: the
   * damage shows once the context is resolved again (a write to it, or a
   * restart). */
  assert_ok(fleet_world_build(e.api.store, w1, &w2, &err), err);
  fleet_world_failures(w2, &n);
  assert_int_equal(n, 0);
  fleet_world_unref(w2);
  Tlsplane__V1__TlsContext *t = calloc(1, sizeof(*t));
  tlsplane__v1__tls_context__init(t);
  t->name = strdup("tlsContexts/web");
  t->certificates = calloc(1, sizeof(char *));
  t->certificates[0] = strdup("certificates/web");
  t->n_certificates = 1;
  t->session_id_context = strdup("touched");
  {
    /* Written as the API would not let it be (its certificate no longer
     * unseals): straight through the store's write path. */
    struct store_txn *txn;
    assert_ok(store_begin(e.api.store, 1, &txn, &err), err);
    ProtobufCMessage *old = NULL;
    struct store_row row = {0};
    assert_ok(api_read(txn, &api_kind_tls_context, t->name, 0, &old, &row, &err), err);
    uint8_t *data;
    size_t data_len;
    assert_int_equal(pb_pack(&t->base, &data, &data_len), 0);
    struct store_write wr = {.kind = api_kind_tls_context.kind,
                             .name = t->name,
                             .expect_etag = row.etag,
                             .data = data,
                             .data_len = data_len,
                             .actor = "test",
                             .method = "test",
                             .action = "update"};
    struct store_row out = {0};
    assert_ok(store_put(txn, &wr, &out, &err), err);
    assert_ok(store_commit(txn, NULL, &err), err);
    store_row_clear(&out);
    store_row_clear(&row);
    free(data);
    protobuf_c_message_free_unpacked(old, NULL);
  }
  protobuf_c_message_free_unpacked(&t->base, NULL);

  assert_ok(fleet_world_build(e.api.store, w1, &w2, &err), err);
  const struct fleet_failure *f = fleet_world_failures(w2, &n);
  assert_int_equal(n, 3);
  assert_string_equal(f[0].listener, "listeners/a");
  assert_non_null(strstr(f[0].reason, "tlsContexts/web"));
  assert_int_equal(fleet_world_listeners(w2), 4);
  assert_ok(fleet_delta(w2, v, agent1, 1, &msg, &len, NULL, &failures, &n_failures, &err), err);
  assert_null(msg); /* the carried entries are what it holds */
  assert_int_equal(n_failures, 2);
  free(failures);

  /* Without a previous world (a restart), the agent keeps its listeners
   * and every resource it holds; the unrelated listener builds. */
  assert_ok(fleet_world_build(e.api.store, NULL, &w3, &err), err);
  fleet_world_failures(w3, &n);
  assert_int_equal(n, 3);
  assert_ok(fleet_delta(w3, v, agent1, 1, &msg, &len, NULL, &failures, &n_failures, &err), err);
  assert_null(msg);
  assert_int_equal(n_failures, 2);
  free(failures);
  assert_int_equal(fleet_view_listeners(v), 3);
  assert_int_equal(fleet_view_resources(v), 5);
  /* An older agent would lose them with a whole snapshot: it is sent none. */
  uint8_t hash[RSET_HASH_LEN];
  assert_ok(fleet_snapshot(w3, agent1, 1, &msg, &len, hash, &failures, &n_failures, &err), err);
  assert_null(msg);
  assert_int_equal(n_failures, 2);
  free(failures);
  /* ... and another agent is withheld only for the one that selects
   * every agent. */
  static const struct snapshot_label other[] = {{"agent", "9"}};
  assert_ok(fleet_snapshot(w3, other, 1, &msg, &len, hash, &failures, &n_failures, &err), err);
  assert_null(msg);
  assert_int_equal(n_failures, 1);
  assert_string_equal(failures[0]->listener, "listeners/c");
  free(failures);

  fleet_view_free(v);
  fleet_world_unref(w1);
  fleet_world_unref(w2);
  fleet_world_unref(w3);
  store_close(e.api.store);
}

/* An agent record with agent=<value>. */
static void put_agent(struct env *e, const char *name, const char *value) {
  Tlsplane__V1__Agent *a = calloc(1, sizeof(*a));
  tlsplane__v1__agent__init(a);
  a->name = strdup(name);
  a->labels = calloc(1, sizeof(*a->labels));
  a->labels[0] = calloc(1, sizeof(**a->labels));
  tlsplane__v1__agent__labels_entry__init(a->labels[0]);
  a->labels[0]->key = strdup("agent");
  a->labels[0]->value = strdup(value);
  a->n_labels = 1;
  put(e, &api_kind_agent, &a->base, 0);
}

/* Sets the challenges of certificate (names[i] each, a made-up
 * certificate and key). */
static void put_challenges(struct env *e, const char *certificate, const char *const *names,
                           size_t n) {
  struct store_challenge c[4];
  uint8_t *data[4];
  char keys[4][64];
  for (size_t i = 0; i < n; i++) {
    Tlsplane__V1__AcmeChallengeMaterial m = TLSPLANE__V1__ACME_CHALLENGE_MATERIAL__INIT;
    m.server_name = (char *)names[i];
    m.certificate_pem = "-----BEGIN CERTIFICATE-----\nchallenge\n-----END CERTIFICATE-----\n";
    memset(&c[i], 0, sizeof(c[i]));
    assert_int_equal(pb_pack(&m.base, &data[i], &c[i].data_len), 0);
    c[i].index = (int64_t)i;
    c[i].data = data[i];
    snprintf(keys[i], sizeof(keys[i]), "challenge key of %s", names[i]);
    c[i].secret = (uint8_t *)keys[i];
    c[i].secret_len = strlen(keys[i]);
  }
  struct tp_err err = {0};
  struct store_txn *txn;
  assert_ok(store_begin(e->api.store, 1, &txn, &err), err);
  assert_ok(store_challenges_set(txn, certificate, c, n, "system", "test", "challenges", &err),
            err);
  assert_ok(store_commit(txn, NULL, &err), err);
  for (size_t i = 0; i < n; i++)
    free(data[i]);
}

/* The challenges' server names of listener `name` in delta d ("" when
 * it carries none; NULL when d does not carry the listener). */
static const char *entry_challenges(const Tlsplane__V1__SnapshotDelta *d, const char *name,
                                    char *buf, size_t len) {
  for (size_t i = 0; i < d->n_listeners; i++) {
    const Tlsplane__V1__ListenerEntry *le = d->listeners[i];
    if (strcmp(le->listener->name, name) != 0)
      continue;
    buf[0] = '\0';
    for (size_t k = 0; k < le->n_acme_challenges; k++)
      for (size_t r = 0; r < d->n_resources; r++)
        if (d->resources[r]->content_case == TLSPLANE__V1__RESOURCE__CONTENT_ACME_CHALLENGE &&
            memcmp(d->resources[r]->hash.data, le->acme_challenges[k].data, 32) == 0)
          snprintf(buf + strlen(buf), len - strlen(buf), "%s%s", buf[0] ? "," : "",
                   d->resources[r]->acme_challenge->server_name);
    return buf;
  }
  return NULL;
}

static void test_acme_challenges(void **state) {
  (void)state;
  struct env e;
  env_open(&e);
  struct tp_err err = {0};
  put_agent(&e, "agents/one", "1");
  /* A listener with an SNI route for *.sni.test (agent=1). */
  Tlsplane__V1__Listener *l = calloc(1, sizeof(*l));
  tlsplane__v1__listener__init(l);
  l->name = strdup("listeners/sni");
  l->address = strdup("127.0.0.1:8444");
  l->upstream = strdup("127.0.0.1:9");
  l->default_tls_context = strdup("tlsContexts/other");
  put_certificate(&e, "certificates/other", "other", 0);
  put_context(&e, "tlsContexts/other", "certificates/other");
  l->sni_routes = calloc(1, sizeof(*l->sni_routes));
  l->sni_routes[0] = calloc(1, sizeof(**l->sni_routes));
  tlsplane__v1__sni_route__init(l->sni_routes[0]);
  l->sni_routes[0]->hostname = strdup("*.sni.test");
  l->sni_routes[0]->tls_context = strdup("tlsContexts/other");
  l->n_sni_routes = 1;
  l->agent_selector = calloc(1, sizeof(*l->agent_selector));
  l->agent_selector[0] = calloc(1, sizeof(**l->agent_selector));
  tlsplane__v1__listener__agent_selector_entry__init(l->agent_selector[0]);
  l->agent_selector[0]->key = strdup("agent");
  l->agent_selector[0]->value = strdup("1");
  l->n_agent_selector = 1;
  put(&e, &api_kind_listener, &l->base, 0);
  put_certificate(&e, "certificates/ordered", "ordered", 0);

  /* x.sni.test: the SNI route's (a wildcard of one label); www.example.com:
   * the name the default context's certificate has (a, b, c: web's);
   * renewed.example.org: certificates/web, which web's listeners use. */
  const char *const ordered[] = {"x.sni.test", "www.example.com"};
  const char *const renewed[] = {"renewed.example.org"};
  put_challenges(&e, "certificates/ordered", ordered, 2);
  put_challenges(&e, "certificates/web", renewed, 1);
  struct fleet_world *w;
  assert_ok(fleet_world_build(e.api.store, NULL, &w, &err), err);
  assert_int_equal(fleet_world_serves(w, "x.sni.test", "certificates/ordered"), 1);
  assert_int_equal(fleet_world_serves(w, "X.SNI.test", NULL), 1);
  assert_int_equal(fleet_world_serves(w, "a.b.sni.test", NULL), 0); /* one label only */
  /* a, c and sni, whose default certificate names it too (b's agent=2
   * has no agent record) */
  assert_int_equal(fleet_world_serves(w, "www.example.com", NULL), 3);
  assert_int_equal(fleet_world_serves(w, "renewed.example.org", "certificates/web"), 2);
  assert_int_equal(fleet_world_serves(w, "renewed.example.org", NULL), 0);
  assert_int_equal(fleet_world_serves(w, "nobody.test", "certificates/nothing"), 0);

  /* Protocol 4: each listener with the challenges it serves, and their
   * resources once. */
  struct fleet_view *v4, *v3;
  assert_int_equal(fleet_view_new(&v4), 0);
  assert_int_equal(fleet_view_new(&v3), 0);
  fleet_view_set_protocol(v3, 3);
  uint8_t *msg;
  size_t len, n_failures;
  const struct fleet_failure **failures;
  char buf[256];
  assert_ok(fleet_delta(w, v4, agent1, 1, &msg, &len, NULL, &failures, &n_failures, &err), err);
  assert_int_equal(n_failures, 0);
  Tlsplane__V1__SnapshotDelta *d = delta_of(msg, len);
  assert_int_equal(d->n_listeners, 3); /* a, c, sni */
  assert_string_equal(entry_challenges(d, "listeners/a", buf, sizeof(buf)),
                      "www.example.com,renewed.example.org");
  assert_string_equal(entry_challenges(d, "listeners/c", buf, sizeof(buf)),
                      "www.example.com,renewed.example.org");
  assert_string_equal(entry_challenges(d, "listeners/sni", buf, sizeof(buf)),
                      "x.sni.test,www.example.com");
  size_t n_chal = 0;
  for (size_t r = 0; r < d->n_resources; r++)
    if (d->resources[r]->content_case == TLSPLANE__V1__RESOURCE__CONTENT_ACME_CHALLENGE) {
      n_chal++;
      assert_non_null(strstr(d->resources[r]->acme_challenge->private_key_pem, "challenge key"));
    }
  assert_int_equal(n_chal, 3);
  protobuf_c_message_free_unpacked(&d->base, NULL);
  /* The agent resolves them with the listener. */
  struct rset *agent;
  assert_int_equal(rset_new(&agent), 0);
  agent_apply(agent, msg, len);
  free(msg);
  Tlsplane__V1__ResolvedListener *rl;
  assert_ok(rset_resolve(agent, rset_listener_get(agent, "listeners/sni"), &rl, &err), err);
  assert_int_equal(rl->n_acme_challenges, 2);
  assert_string_equal(rl->acme_challenges[0]->server_name, "x.sni.test");
  rset_resolved_free(rl);

  /* Protocol 3: the listeners without challenges, and no failure. */
  assert_ok(fleet_delta(w, v3, agent1, 1, &msg, &len, NULL, &failures, &n_failures, &err), err);
  assert_int_equal(n_failures, 0);
  d = delta_of(msg, len);
  assert_int_equal(d->n_listeners, 3);
  for (size_t i = 0; i < d->n_listeners; i++)
    assert_int_equal(d->listeners[i]->n_acme_challenges, 0);
  for (size_t r = 0; r < d->n_resources; r++)
    assert_int_not_equal(d->resources[r]->content_case,
                         TLSPLANE__V1__RESOURCE__CONTENT_ACME_CHALLENGE);
  protobuf_c_message_free_unpacked(&d->base, NULL);
  free(msg);

  /* Taken back: the listeners change again, the resources go. */
  put_challenges(&e, "certificates/ordered", NULL, 0);
  put_challenges(&e, "certificates/web", NULL, 0);
  struct fleet_world *w2;
  assert_ok(fleet_world_build(e.api.store, w, &w2, &err), err);
  assert_ok(fleet_delta(w2, v4, agent1, 1, &msg, &len, NULL, &failures, &n_failures, &err), err);
  d = delta_of(msg, len);
  assert_int_equal(d->n_listeners, 3);
  for (size_t i = 0; i < d->n_listeners; i++)
    assert_int_equal(d->listeners[i]->n_acme_challenges, 0);
  assert_int_equal(d->n_removed_resources, 3);
  assert_int_equal(d->n_resources, 0);
  protobuf_c_message_free_unpacked(&d->base, NULL);
  agent_apply(agent, msg, len);
  free(msg);
  /* The protocol 3 agent has nothing new. */
  assert_ok(fleet_delta(w2, v3, agent1, 1, &msg, &len, NULL, &failures, &n_failures, &err), err);
  assert_null(msg);

  rset_free(agent);
  fleet_view_free(v4);
  fleet_view_free(v3);
  fleet_world_unref(w);
  fleet_world_unref(w2);
  store_close(e.api.store);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_selection_and_deltas),
      cmocka_unit_test(test_failure_keeps_what_agents_serve),
      cmocka_unit_test(test_acme_challenges),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
