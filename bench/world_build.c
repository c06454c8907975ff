/* What the server's push costs at fleet scale, without a network: a
 * store with N listeners (one per agent, selector agent=aI) on one
 * context, then the world built cold (after a start), warm (a revision
 * that touched none of them) and after a rotation of the certificate they
 * all use, and the deltas for N agents (the first, then a pass where
 * nothing changed), with the bytes a view holds per agent.
 *
 *   make -C bench world_build && bench/build/world_build 10000
 *
 * Links the server's libraries from the main build tree (../build). */
#include "api.h"
#include "fixtures.h"
#include "fleet.h"
#include "pb.h"
#include "store.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static const uint8_t mk[STORE_MASTER_KEY_LEN] = "tlsplane test master key .......";
static const struct rpc_call_info call = {
    .method = "t", .peer = "", .actor = "system", .principal = ""};
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}
static void put(struct api *api, const struct api_kind *k, ProtobufCMessage *m) {
  struct tp_err err = {0};
  struct store_txn *txn;
  store_begin(api->store, 1, &txn, &err);
  struct api_op op = {.api = api, .kind = k, .txn = txn, .call = &call, .now = time(NULL)};
  if (api_write(&op, m, NULL, "create", &err) != 0) {
    fprintf(stderr, "%s\n", err.msg);
    exit(1);
  }
  store_commit(txn, NULL, &err);
  protobuf_c_message_free_unpacked(m, NULL);
}
int main(int argc, char **argv) {
  int N = argc > 1 ? atoi(argv[1]) : 10000;
  char path[] = "/tmp/tlsplane-world-XXXXXX";
  mkdtemp(path);
  char db[300];
  snprintf(db, sizeof db, "%s/t.db", path);
  struct store_opts o = {.master_keys = &mk, .n_master_keys = 1};
  struct tp_err err = {0};
  struct api api = {0};
  if (store_open(db, &o, &api.store, &err)) {
    fprintf(stderr, "%s\n", err.msg);
    return 1;
  }
  api_seed_builtins(&api, &err);
  EVP_PKEY *key = fixture_key_ec("P-256");
  struct fixture_cert_opts co = {.cn = "x", .san = "DNS:x.example.com"};
  X509 *x = fixture_cert(key, &co);
  Tlsplane__V1__Certificate *c = calloc(1, sizeof *c);
  tlsplane__v1__certificate__init(c);
  c->name = strdup("certificates/web");
  c->certificate_chain_pem = fixture_pem_cert(x);
  c->private_key_pem = fixture_pem_key(key);
  put(&api, &api_kind_certificate, &c->base);
  Tlsplane__V1__TlsContext *t = calloc(1, sizeof *t);
  tlsplane__v1__tls_context__init(t);
  t->name = strdup("tlsContexts/web");
  t->certificates = calloc(1, sizeof(char *));
  t->certificates[0] = strdup("certificates/web");
  t->n_certificates = 1;
  put(&api, &api_kind_tls_context, &t->base);
  /* listeners straight into the store (the API's address check is O(n) per write) */
  double t0 = now();
  struct store_txn *txn;
  store_begin(api.store, 1, &txn, &err);
  for (int i = 0; i < N; i++) {
    Tlsplane__V1__Listener l = TLSPLANE__V1__LISTENER__INIT;
    char name[64], addr[64], v[32];
    snprintf(name, 64, "listeners/l%06d", i);
    snprintf(addr, 64, "127.0.0.1:%d", 10000 + i);
    snprintf(v, 32, "a%d", i);
    l.name = name;
    l.address = addr;
    l.upstream = "127.0.0.1:9";
    l.default_tls_context = "tlsContexts/web";
    Tlsplane__V1__Listener__AgentSelectorEntry e =
        TLSPLANE__V1__LISTENER__AGENT_SELECTOR_ENTRY__INIT;
    e.key = "agent";
    e.value = v;
    Tlsplane__V1__Listener__AgentSelectorEntry *ep = &e;
    l.agent_selector = &ep;
    l.n_agent_selector = 1;
    uint8_t *d;
    size_t dl;
    pb_pack(&l.base, &d, &dl);
    struct store_ref ref = {
        .kind = "TlsContext", .name = "tlsContexts/web", .field = "default_tls_context"};
    struct store_write w = {.kind = "Listener",
                            .name = name,
                            .create = 1,
                            .data = d,
                            .data_len = dl,
                            .refs = &ref,
                            .n_refs = 1,
                            .actor = "t",
                            .method = "t",
                            .action = "create"};
    if (store_put(txn, &w, NULL, &err)) {
      fprintf(stderr, "put %s\n", err.msg);
      return 1;
    }
    free(d);
  }
  store_commit(txn, NULL, &err);
  printf("setup %.0f ms\n", now() - t0);
  struct fleet_world *w1, *w2;
  t0 = now();
  if (fleet_world_build(api.store, NULL, &w1, &err)) {
    fprintf(stderr, "%s\n", err.msg);
    return 1;
  }
  printf("world (cold) %d listeners: %.1f ms, %zu resources\n", N, now() - t0,
         fleet_world_resources(w1));
  t0 = now();
  fleet_world_build(api.store, w1, &w2, &err);
  printf("world (warm, nothing changed): %.1f ms\n", now() - t0);
  { /* rotate the certificate: every listener's context changes */
    EVP_PKEY *k2 = fixture_key_ec("P-256");
    X509 *x2 = fixture_cert(k2, &co);
    struct store_txn *tx;
    store_begin(api.store, 1, &tx, &err);
    ProtobufCMessage *old;
    struct store_row row = {0};
    api_read(tx, &api_kind_certificate, "certificates/web", 1, &old, &row, &err);
    Tlsplane__V1__Certificate *c2 = calloc(1, sizeof *c2);
    tlsplane__v1__certificate__init(c2);
    c2->name = strdup("certificates/web");
    c2->certificate_chain_pem = fixture_pem_cert(x2);
    c2->private_key_pem = fixture_pem_key(k2);
    struct api_op op = {.api = &api,
                        .kind = &api_kind_certificate,
                        .txn = tx,
                        .call = &call,
                        .old = old,
                        .old_row = &row,
                        .now = time(NULL)};
    if (api_write(&op, &c2->base, NULL, "update", &err)) {
      fprintf(stderr, "%s\n", err.msg);
      return 1;
    }
    store_commit(tx, NULL, &err);
    struct fleet_world *w3;
    t0 = now();
    fleet_world_build(api.store, w2, &w3, &err);
    printf("world after a rotation: %.1f ms, %zu resources\n", now() - t0,
           fleet_world_resources(w3));
  }
  /* deltas for N agents */
  struct fleet_view **v = calloc(N, sizeof *v);
  t0 = now();
  size_t bytes = 0;
  for (int i = 0; i < N; i++) {
    fleet_view_new(&v[i]);
    char val[32];
    snprintf(val, 32, "a%d", i);
    struct snapshot_label lb = {"agent", val};
    uint8_t *m;
    size_t len, nf;
    const struct fleet_failure **f;
    fleet_delta(w2, v[i], &lb, 1, &m, &len, NULL, &f, &nf, &err);
    bytes += len;
    free(m);
    free(f);
  }
  printf("first deltas for %d agents: %.1f ms (%.1f us each), %zu bytes total\n", N, now() - t0,
         (now() - t0) * 1000 / N, bytes);
  t0 = now();
  size_t unchanged = 0;
  for (int i = 0; i < N; i++) {
    char val[32];
    snprintf(val, 32, "a%d", i);
    struct snapshot_label lb = {"agent", val};
    uint8_t *m;
    size_t len, nf;
    const struct fleet_failure **f;
    fleet_delta(w2, v[i], &lb, 1, &m, &len, NULL, &f, &nf, &err);
    unchanged += m == NULL;
    free(m);
    free(f);
  }
  printf("no-change pass for %d agents: %.1f ms (%zu unchanged)\n", N, now() - t0, unchanged);
  size_t vb = 0;
  for (int i = 0; i < N; i++)
    vb += fleet_view_bytes(v[i]);
  printf("view bytes per agent: %zu\n", vb / N);
  return 0;
}
