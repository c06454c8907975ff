/* Unit tests for agent/conn.c at accept: a real worker thread serving a
 * real listener (a TLS context, a socket on 127.0.0.1) accepts
 * connections this thread makes.
 *
 * Memory running out: calloc is wrapped at link time (-Wl,--wrap=calloc,
 * see tests/CMakeLists.txt) and OpenSSL's allocator is replaced
 * (CRYPTO_set_mem_functions), so that while a test arms them the next
 * allocations made on the worker thread fail, exactly as a failed
 * calloc(3) or OPENSSL_malloc would; the agent's code is the one that
 * ships. The connection is refused and counted (cause out_of_memory), the
 * worker goes on, and the next connection completes its handshake.
 *
 * The descriptor budget: with room for one connection, a second one is
 * closed at once and counted (cause descriptors); once the first ends,
 * a new one is served. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "budget.h"
#include "fixtures.h"
#include "listener.h"
#include "pb.h"
#include "pbjson.h"
#include "worker.h"

/* Failure injection -------------------------------------------------------- */

static pthread_t main_thread;
static atomic_int fail_calloc;  /* callocs of other threads still to fail */
static atomic_int fail_openssl; /* OpenSSL allocations of other threads still to fail */

static int take(atomic_int *n) {
  if (pthread_equal(pthread_self(), main_thread) || atomic_load(n) <= 0)
    return 0;
  return atomic_fetch_sub(n, 1) > 0;
}

void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size) {
  return take(&fail_calloc) ? NULL : __real_calloc(n, size);
}

static void *ossl_malloc(size_t n, const char *file, int line) {
  return take(&fail_openssl) ? NULL : malloc(n);
}

static void *ossl_realloc(void *p, size_t n, const char *file, int line) {
  return take(&fail_openssl) ? NULL : realloc(p, n);
}

static void ossl_free(void *p, const char *file, int line) {
  free(p);
}

/* The world: a worker serving one listener -------------------------------- */

static struct {
  EVP_PKEY *key;
  X509 *cert;
  int upstream_port; /* nothing listens there: each connection ends after its handshake */
  uv_loop_t loop;
  uv_async_t done;
  int finished;
  struct budget budget;
  struct listener *l;
  struct listener_version *v;
  struct worker *w;
  int port;
} t;

/* A port of 127.0.0.1 nothing listens on (bound once, then released). */
static int closed_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(a);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0)
    abort();
  close(fd);
  return ntohs(a.sin_port);
}

static Tlsplane__V1__ResolvedListener *resolved_listener(void) {
  char *chain = fixture_pem_cert(t.cert), *key = fixture_pem_key(t.key);
  char upstream[32];
  snprintf(upstream, sizeof(upstream), "127.0.0.1:%d", t.upstream_port);
  json_t *j = json_pack("{s:{s:s, s:s, s:s, s:s}, s:{s:{s:{s:s, s:[s]}, s:[{s:{s:s, s:s}, s:s}]}}}",
                        "listener", "name", "listeners/t", "address", "127.0.0.1:0",
                        "defaultTlsContext", "tlsContexts/t", "upstream", upstream, "tlsContexts",
                        "tlsContexts/t", "tlsContext", "name", "tlsContexts/t", "certificates",
                        "certificates/t", "certificates", "certificate", "name", "certificates/t",
                        "certificateChainPem", chain, "privateKeyPem", key);
  assert_non_null(j);
  ProtobufCMessage *msg = NULL;
  struct tp_err err = {0};
  if (pbjson_from_json(&tlsplane__v1__resolved_listener__descriptor, j, 0, &msg, &err) != 0)
    fail_msg("the listener does not decode: %s", err.msg);
  json_decref(j);
  free(chain);
  free(key);
  return (Tlsplane__V1__ResolvedListener *)msg;
}

static void on_done(uv_async_t *a) {
  if (worker_finished(t.w)) {
    t.finished = 1;
    uv_close((uv_handle_t *)&t.done, NULL);
  }
}

static void post(enum worker_msg_kind kind, int fd) {
  struct worker_msg *m = calloc(1, sizeof(*m));
  assert_non_null(m);
  m->kind = kind;
  if (kind == WORKER_MSG_APPLY) {
    m->ops = calloc(1, sizeof(*m->ops));
    assert_non_null(m->ops);
    m->n_ops = 1;
    m->ops[0] =
        (struct worker_op){.kind = WORKER_OP_OPEN, .listener = t.l, .version = t.v, .fd = fd};
    listener_version_ref(t.v);
  }
  worker_post(t.w, m);
}

static int world_setup(void **state) {
  t.key = fixture_key_ec("P-256");
  t.cert = fixture_cert(t.key, &(struct fixture_cert_opts){.cn = "conn.test"});
  t.upstream_port = closed_port();
  assert_int_equal(uv_loop_init(&t.loop), 0);
  assert_int_equal(uv_async_init(&t.loop, &t.done, on_done), 0);
  budget_init(&t.budget, 1);

  Tlsplane__V1__ResolvedListener *rl = resolved_listener();
  struct tp_err err = {0};
  t.l = listener_new("listeners/t");
  assert_non_null(t.l);
  struct tlsconf_ctxcache *cache;
  assert_int_equal(tlsconf_listener_cache_new(&cache), 0);
  int rc = listener_version_build(t.l, rl, NULL, cache, &t.v, &err);
  tlsconf_ctxcache_unref(cache); /* the version keeps what it uses */
  if (rc != 0)
    fail_msg("listener_version_build: %s", err.msg);
  protobuf_c_message_free_unpacked(&rl->base, NULL);
  int fd;
  if (listener_sockets_open(t.v, 1, 1, &fd, &err) != 0)
    fail_msg("listener_sockets_open: %s", err.msg);
  t.port = ntohs(t.v->bind_addr.in4.sin_port);
  assert_int_equal(worker_start(0, &t.done, &t.budget, &t.w), 0);
  post(WORKER_MSG_APPLY, fd);
  return 0;
}

static int world_teardown(void **state) {
  post(WORKER_MSG_SHUTDOWN, -1);
  post(WORKER_MSG_FORCE, -1);
  while (!t.finished)
    uv_run(&t.loop, UV_RUN_ONCE);
  uv_run(&t.loop, UV_RUN_DEFAULT);
  worker_join(t.w);
  assert_int_equal(uv_loop_close(&t.loop), 0);
  listener_version_unref(t.v);
  listener_unref(t.l);
  X509_free(t.cert);
  EVP_PKEY_free(t.key);
  return 0;
}

/* Clients ------------------------------------------------------------------- */

static int client_connect(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((uint16_t)t.port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_true(fd >= 0);
  assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  struct timeval tv = {.tv_sec = 20};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

/* Whether the agent closed fd (EOF or reset) within 20 s, having sent
 * nothing. */
static int closed_by_agent(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  if (poll(&p, 1, 20000) != 1)
    return 0;
  char c;
  ssize_t n = recv(fd, &c, 1, 0);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

/* A TLS 1.3 handshake over fd; 1 when it completed. */
static int handshake(int fd) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  SSL *ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  int ok = SSL_connect(ssl) == 1;
  if (!ok)
    ERR_print_errors_fp(stderr);
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  return ok;
}

static long long counter(atomic_llong *c) {
  return atomic_load(c);
}

/* Waits up to 20 s for *c to be want. */
static int reaches(atomic_llong *c, long long want) {
  for (int i = 0; i < 2000 && counter(c) != want; i++)
    usleep(10000);
  return counter(c) == want;
}

/* Tests --------------------------------------------------------------------- */

static void test_served_before_anything_fails(void **state) {
  int fd = client_connect();
  assert_true(handshake(fd));
  close(fd);
}

static void test_calloc_failure_refuses_that_connection_only(void **state) {
  atomic_llong *oom = &t.budget.refused[REFUSED_OUT_OF_MEMORY];
  long long before = counter(oom), total = counter(&t.l->stats.connections_total);
  assert_true(reaches(&t.l->stats.connections, 0)); /* the worker has nothing else to do */
  atomic_store(&fail_calloc, 1);                    /* the struct conn */
  int fd = client_connect();
  assert_true(closed_by_agent(fd));
  close(fd);
  assert_true(reaches(oom, before + 1));
  assert_int_equal(atomic_load(&fail_calloc), 0);
  assert_int_equal(counter(&t.l->stats.connections_total), total + 1);
  /* The worker goes on. */
  fd = client_connect();
  assert_true(handshake(fd));
  close(fd);
  assert_int_equal(counter(oom), before + 1);
}

static void test_openssl_allocation_failure_refuses_that_connection_only(void **state) {
  atomic_llong *oom = &t.budget.refused[REFUSED_OUT_OF_MEMORY];
  long long before = counter(oom);
  assert_true(reaches(&t.l->stats.connections, 0));
  atomic_store(&fail_openssl, 1); /* the BIO */
  int fd = client_connect();
  assert_true(closed_by_agent(fd));
  close(fd);
  assert_true(reaches(oom, before + 1));
  assert_int_equal(atomic_load(&fail_openssl), 0);
  fd = client_connect();
  assert_true(handshake(fd));
  close(fd);
}

static void test_descriptor_budget_refuses_the_excess_and_frees_room(void **state) {
  /* Room for exactly one more client connection than those open now. */
  assert_true(reaches(&t.l->stats.connections, 0));
  long open_now = atomic_load(&t.budget.connections);
  t.budget.fd_limit = t.budget.reserve + atomic_load(&t.budget.listening) + 2 * (open_now + 1);
  assert_int_equal(budget_connections_max(&t.budget), open_now + 1);
  atomic_llong *spent = &t.budget.refused[REFUSED_DESCRIPTORS];
  long long before = counter(spent);
  int first = client_connect(); /* held in its handshake */
  for (int i = 0; i < 2000 && atomic_load(&t.budget.connections) == open_now; i++)
    usleep(10000);
  int second = client_connect();
  assert_true(closed_by_agent(second));
  close(second);
  assert_true(reaches(spent, before + 1));
  /* The first one leaves: the next is served. */
  close(first);
  assert_true(reaches(&t.l->stats.connections, 0));
  for (int i = 0; i < 2000 && atomic_load(&t.budget.connections) > open_now; i++)
    usleep(10000);
  int third = client_connect();
  assert_true(handshake(third));
  close(third);
  assert_int_equal(counter(spent), before + 1);
  t.budget.fd_limit = 1L << 20;
}

int main(void) {
  main_thread = pthread_self();
  signal(SIGPIPE, SIG_IGN); /* as the agent does: a peer gone is an error code */
  /* Before OpenSSL allocates anything. */
  if (!CRYPTO_set_mem_functions(ossl_malloc, ossl_realloc, ossl_free))
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_served_before_anything_fails),
      cmocka_unit_test(test_calloc_failure_refuses_that_connection_only),
      cmocka_unit_test(test_openssl_allocation_failure_refuses_that_connection_only),
      cmocka_unit_test(test_descriptor_budget_refuses_the_excess_and_frees_room),
  };
  return cmocka_run_group_tests(tests, world_setup, world_teardown);
}
