/* Unit tests for common/listener_rules: the defaults (the seed's
 * handshakeTimeout 120 s, 3 renegotiations per 600 s, 48-byte ticket
 * keys), each duration's range in the API and in a snapshot (whatever the
 * API accepts an agent loads), the address syntax read without any name
 * lookup, when two bind addresses and two agent selectors overlap, the
 * SNI table's rules, Unix-socket upstreams and upstream_tls's fields. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "listener_rules.h"

static void expect_err_at(int rc, const struct tp_err *err, const char *want, const char *file,
                          int line) {
  if (rc != -1 || err->status != GRPC_STATUS_INVALID_ARGUMENT || strstr(err->msg, want) == NULL) {
    fprintf(stderr,
            "%s:%d: want rc -1, INVALID_ARGUMENT, a message with \"%s\"; got rc %d, "
            "status %d, \"%s\"\n",
            file, line, want, rc, (int)err->status, err->msg);
    fail();
  }
}
#define EXPECT_ERR(rc, err, want) expect_err_at((rc), (err), (want), __FILE__, __LINE__)

static void expect_ok_at(int rc, const struct tp_err *err, const char *file, int line) {
  if (rc != 0) {
    fprintf(stderr, "%s:%d: want rc 0; got rc %d, \"%s\"\n", file, line, rc, err->msg);
    fail();
  }
}
#define EXPECT_OK(rc, err) expect_ok_at((rc), (err), __FILE__, __LINE__)

/* A listener with the fields every check needs; the rest left out. */
static void listener_init(Tlsplane__V1__Listener *l) {
  tlsplane__v1__listener__init(l);
  l->address = "127.0.0.1:8443";
  l->upstream = "127.0.0.1:8080";
  l->default_tls_context = "tlsContexts/web";
}

static Google__Protobuf__Duration duration(int64_t seconds, int32_t nanos) {
  Google__Protobuf__Duration d;
  google__protobuf__duration__init(&d);
  d.seconds = seconds;
  d.nanos = nanos;
  return d;
}

static void test_defaults_are_the_seeds(void **state) {
  (void)state;
  assert_int_equal(LISTENER_RULES_TICKET_KEY_LEN, 48);
  assert_int_equal(3 * LISTENER_RULES_TICKET_KEY_PART_LEN, LISTENER_RULES_TICKET_KEY_LEN);
  Tlsplane__V1__Listener l;
  listener_init(&l);
  struct listener_rules_values v;
  struct tp_err err = {0};
  for (int mode = LISTENER_RULES_AGENT; mode <= LISTENER_RULES_API; mode++) {
    EXPECT_OK(listener_rules_check(&l, (enum listener_rules_mode)mode, &v, &err), &err);
    assert_int_equal(v.handshake_timeout_ms, 120000);
    assert_int_equal(v.renegotiation_limit, 3);
    assert_int_equal(v.renegotiation_window_ms, 600000);
    assert_int_equal(v.idle_timeout_ms, 600000);
    assert_int_equal(v.write_timeout_ms, 60000);
    assert_int_equal(v.max_connections, 0);
    assert_int_equal(v.address.port, 8443);
    assert_int_equal(v.upstream.port, 8080);
  }
  assert_int_equal(listener_rules_handshake_timeout.max_s, 3600);
  assert_int_equal(listener_rules_renegotiation_window.max_s, 86400);
  assert_int_equal(listener_rules_idle_timeout.max_s, 86400);
  assert_int_equal(listener_rules_write_timeout.max_s, 3600);
}

static void test_durations(void **state) {
  (void)state;
  struct tp_err err = {0};
  uint64_t ms;
  const struct listener_rules_duration *hs = &listener_rules_handshake_timeout;
  Google__Protobuf__Duration d = duration(0, 0);
  /* "0s": refused by the API, no limit in a snapshot. */
  EXPECT_ERR(listener_rules_duration_check(&d, hs, LISTENER_RULES_API, &ms, &err), &err,
             "handshake_timeout: must be more than 0 and at most 3600s");
  EXPECT_OK(listener_rules_duration_check(&d, hs, LISTENER_RULES_AGENT, &ms, &err), &err);
  assert_int_equal(ms, 0);
  /* The renegotiation window has no "no limit". */
  EXPECT_ERR(listener_rules_duration_check(&d, &listener_rules_renegotiation_window,
                                           LISTENER_RULES_AGENT, &ms, &err),
             &err, "renegotiation_window: must be more than 0");
  d = duration(-1, 0);
  EXPECT_ERR(listener_rules_duration_check(&d, hs, LISTENER_RULES_AGENT, &ms, &err), &err,
             "handshake_timeout: must not be negative");
  EXPECT_ERR(listener_rules_duration_check(&d, &listener_rules_idle_timeout, LISTENER_RULES_API,
                                           &ms, &err),
             &err, "idle_timeout: must be more than 0 and at most 86400s");
  d = duration(3601, 0);
  EXPECT_ERR(listener_rules_duration_check(&d, hs, LISTENER_RULES_API, &ms, &err), &err,
             "at most 3600s");
  EXPECT_OK(listener_rules_duration_check(&d, hs, LISTENER_RULES_AGENT, &ms, &err), &err);
  assert_int_equal(ms, 3601000);
  EXPECT_ERR(listener_rules_duration_check(&d, &listener_rules_write_timeout, LISTENER_RULES_API,
                                           &ms, &err),
             &err, "write_timeout: must be more than 0 and at most 3600s");
  d = duration(LISTENER_RULES_SNAPSHOT_DURATION_MAX_S + 1, 0);
  EXPECT_ERR(listener_rules_duration_check(&d, hs, LISTENER_RULES_AGENT, &ms, &err), &err,
             "handshake_timeout: must be at most 31622400s");
  /* Under a millisecond: at least 1 ms in a snapshot (not "no limit"). */
  d = duration(0, 500000);
  EXPECT_OK(listener_rules_duration_check(&d, hs, LISTENER_RULES_AGENT, &ms, &err), &err);
  assert_int_equal(ms, 1);
  /* Whatever the API accepts, an agent loads with the same value. */
  const struct listener_rules_duration *rules[] = {
      &listener_rules_handshake_timeout, &listener_rules_renegotiation_window,
      &listener_rules_idle_timeout, &listener_rules_write_timeout};
  for (size_t r = 0; r < sizeof(rules) / sizeof(rules[0]); r++) {
    const int64_t tries[] = {1, 2, 59, 60, 120, 600, 3600, 86400, rules[r]->max_s};
    for (size_t t = 0; t < sizeof(tries) / sizeof(tries[0]); t++) {
      d = duration(tries[t], 0);
      uint64_t api_ms = 0, agent_ms = 0;
      if (listener_rules_duration_check(&d, rules[r], LISTENER_RULES_API, &api_ms, &err) != 0) {
        assert_true(tries[t] > rules[r]->max_s);
        continue;
      }
      EXPECT_OK(listener_rules_duration_check(&d, rules[r], LISTENER_RULES_AGENT, &agent_ms, &err),
                &err);
      assert_int_equal(api_ms, agent_ms);
      assert_int_equal(api_ms, (uint64_t)tries[t] * 1000);
    }
  }
  /* Left out: the default. */
  EXPECT_OK(listener_rules_duration_check(NULL, hs, LISTENER_RULES_API, &ms, &err), &err);
  assert_int_equal(ms, 120000);
}

static void test_limits(void **state) {
  (void)state;
  Tlsplane__V1__Listener l;
  listener_init(&l);
  struct listener_rules_values v;
  struct tp_err err = {0};
  l.max_connections = -1;
  EXPECT_ERR(listener_rules_check(&l, LISTENER_RULES_AGENT, &v, &err), &err,
             "max_connections: must not be negative (0: no limit)");
  l.max_connections = 1000;
  Google__Protobuf__Int32Value limit;
  google__protobuf__int32_value__init(&limit);
  limit.value = -1;
  l.renegotiation_limit = &limit;
  EXPECT_ERR(listener_rules_check(&l, LISTENER_RULES_API, &v, &err), &err,
             "renegotiation_limit: must not be negative (0: refuse renegotiation)");
  limit.value = 0;
  EXPECT_OK(listener_rules_check(&l, LISTENER_RULES_API, &v, &err), &err);
  assert_int_equal(v.renegotiation_limit, 0);
  assert_int_equal(v.max_connections, 1000);
  EXPECT_ERR(listener_rules_check(NULL, LISTENER_RULES_API, &v, &err), &err, "listener: required");
}

static void test_addresses(void **state) {
  (void)state;
  struct listener_rules_addr a;
  struct tp_err err = {0};
  EXPECT_OK(listener_rules_addr_parse("*:443", 1, "address", &a, &err), &err);
  assert_int_equal(a.kind, LISTENER_RULES_HOST_ANY);
  assert_string_equal(a.host, "");
  EXPECT_OK(listener_rules_addr_parse(":443", 1, "address", &a, &err), &err);
  assert_int_equal(a.kind, LISTENER_RULES_HOST_ANY);
  EXPECT_OK(listener_rules_addr_parse("0.0.0.0:443", 1, "address", &a, &err), &err);
  assert_int_equal(a.kind, LISTENER_RULES_HOST_ANY);
  assert_string_equal(a.host, "0.0.0.0");
  EXPECT_OK(listener_rules_addr_parse("[::]:443", 1, "address", &a, &err), &err);
  assert_int_equal(a.kind, LISTENER_RULES_HOST_ANY);
  EXPECT_OK(listener_rules_addr_parse("[::1]:443", 1, "address", &a, &err), &err);
  assert_int_equal(a.kind, LISTENER_RULES_HOST_IP);
  assert_string_equal(a.host, "::1");
  EXPECT_OK(listener_rules_addr_parse("localhost:443", 1, "address", &a, &err), &err);
  assert_int_equal(a.kind, LISTENER_RULES_HOST_NAME);
  EXPECT_OK(listener_rules_addr_parse("127.0.0.1:0", 1, "address", &a, &err), &err);
  assert_int_equal(a.port, 0);
  EXPECT_ERR(listener_rules_addr_parse("www.example.com:443", 1, "address", &a, &err), &err,
             "address: bind host \"www.example.com\" must be an IP address, \"localhost\", \"*\" "
             "or empty (every address)");
  EXPECT_ERR(listener_rules_addr_parse("127.0.0.1", 1, "address", &a, &err), &err,
             "address: \"127.0.0.1\" is not host:port (or [ipv6]:port)");
  EXPECT_ERR(listener_rules_addr_parse("", 1, "address", &a, &err), &err,
             "address: required (host:port)");
  /* Upstreams: a host is required, a name is fine (the agent resolves it). */
  EXPECT_OK(listener_rules_addr_parse("backend.internal:8080", 0, "upstream", &a, &err), &err);
  assert_int_equal(a.kind, LISTENER_RULES_HOST_NAME);
  EXPECT_ERR(listener_rules_addr_parse(":8080", 0, "upstream", &a, &err), &err,
             "upstream: \":8080\" needs a host");
  EXPECT_ERR(listener_rules_addr_parse("*:8080", 0, "upstream", &a, &err), &err,
             "upstream: \"*\" is neither an IP address nor a hostname");
  EXPECT_ERR(listener_rules_addr_parse("bad_host:8080", 0, "upstream", &a, &err), &err,
             "upstream: \"bad_host\" is neither an IP address nor a hostname");
  EXPECT_ERR(listener_rules_addr_parse("127.0.0.1:0", 0, "upstream", &a, &err), &err,
             "upstream: \"127.0.0.1:0\" needs a port from 1 to 65535");
}

/* Unix-socket upstreams, and the upstream_tls fields checked without the
 * context (listener_rules_upstream_context_check checks that). */
static void test_upstream_tls(void **state) {
  (void)state;
  struct listener_rules_addr a;
  struct listener_rules_values v;
  struct tp_err err = {0};
  EXPECT_OK(listener_rules_addr_parse("unix:/run/app.sock", 0, "upstream", &a, &err), &err);
  assert_int_equal(a.kind, LISTENER_RULES_HOST_UNIX);
  assert_string_equal(a.path, "/run/app.sock");
  EXPECT_ERR(listener_rules_addr_parse("unix:app.sock", 0, "upstream", &a, &err), &err,
             "upstream: \"unix:app.sock\": a Unix socket is \"unix:\" and an absolute path");
  EXPECT_ERR(listener_rules_addr_parse("unix:/run/app.sock", 1, "address", &a, &err), &err,
             "address: ");

  Tlsplane__V1__Listener l;
  listener_init(&l);
  Tlsplane__V1__UpstreamTls u = TLSPLANE__V1__UPSTREAM_TLS__INIT;
  Google__Protobuf__BoolValue off = GOOGLE__PROTOBUF__BOOL_VALUE__INIT;
  l.upstream_tls = &u;
  EXPECT_ERR(listener_rules_check(&l, LISTENER_RULES_API, &v, &err), &err,
             "upstream_tls.tls_context: required");
  u.tls_context = "tlsContexts/up";
  EXPECT_OK(listener_rules_check(&l, LISTENER_RULES_API, &v, &err), &err);
  assert_int_equal(v.upstream_tls, 1);
  u.servername = "10.0.0.1";
  EXPECT_ERR(listener_rules_check(&l, LISTENER_RULES_API, &v, &err), &err,
             "upstream_tls.servername: \"10.0.0.1\" is not a DNS hostname");
  u.servername = "www.example.com";
  u.check_server_identity = "10.0.0.1";
  EXPECT_OK(listener_rules_check(&l, LISTENER_RULES_API, &v, &err), &err);
  u.check_server_identity = "x..y";
  EXPECT_ERR(listener_rules_check(&l, LISTENER_RULES_API, &v, &err), &err,
             "upstream_tls.check_server_identity: \"x..y\" is neither an IP address nor a "
             "hostname");
  u.check_server_identity = "a.example.com";
  u.reject_unauthorized = &off;
  EXPECT_ERR(listener_rules_check(&l, LISTENER_RULES_API, &v, &err), &err,
             "upstream_tls.check_server_identity: needs reject_unauthorized");
  u.check_server_identity = "";
  u.min_dh_size = -1;
  EXPECT_ERR(listener_rules_check(&l, LISTENER_RULES_API, &v, &err), &err,
             "upstream_tls.min_dh_size: -1 bits");
  u.min_dh_size = 0;
  /* A Unix socket: no host to check, so a name is needed when verifying. */
  u.reject_unauthorized = NULL;
  u.servername = "";
  l.upstream = "unix:/run/app.sock";
  EXPECT_ERR(listener_rules_check(&l, LISTENER_RULES_API, &v, &err), &err,
             "upstream_tls.check_server_identity: required for a Unix-socket upstream");
  u.servername = "app.internal";
  EXPECT_OK(listener_rules_check(&l, LISTENER_RULES_API, &v, &err), &err);

  /* Which kind of context each field names. */
  Tlsplane__V1__TlsContext ctx = TLSPLANE__V1__TLS_CONTEXT__INIT;
  ctx.name = "tlsContexts/up";
  EXPECT_ERR(listener_rules_upstream_context_check(&l, &ctx, "upstream_tls.tls_context", &err),
             &err, "upstream_tls.tls_context: tlsContexts/up is not a client context");
  ctx.client = 1;
  EXPECT_ERR(listener_rules_upstream_context_check(&l, &ctx, "upstream_tls.tls_context", &err),
             &err, "upstream_tls.tls_context: tlsContexts/up has no trust_bundle");
  ctx.trust_bundle = "trustBundles/ca";
  EXPECT_OK(listener_rules_upstream_context_check(&l, &ctx, "upstream_tls.tls_context", &err),
            &err);
  EXPECT_ERR(listener_rules_upstream_context_check(&l, &ctx, "default_tls_context", &err), &err,
             "default_tls_context: tlsContexts/up is a client context (for upstream_tls only)");
}

static int overlap(const char *x, const char *y) {
  struct listener_rules_addr a, b;
  struct tp_err err = {0};
  if (listener_rules_addr_parse(x, 1, "address", &a, &err) != 0 ||
      listener_rules_addr_parse(y, 1, "address", &b, &err) != 0) {
    fprintf(stderr, "%s\n", err.msg);
    fail();
  }
  int o = listener_rules_addrs_overlap(&a, &b);
  assert_int_equal(o, listener_rules_addrs_overlap(&b, &a)); /* symmetric */
  return o;
}

static void test_addresses_overlap(void **state) {
  (void)state;
  assert_true(overlap("127.0.0.1:8443", "127.0.0.1:8443"));
  assert_false(overlap("127.0.0.1:8443", "127.0.0.1:8444"));
  assert_false(overlap("127.0.0.1:8443", "127.0.0.2:8443"));
  /* Every address overlaps any host on its port. */
  assert_true(overlap("0.0.0.0:8443", "127.0.0.1:8443"));
  assert_true(overlap("[::]:8443", "127.0.0.1:8443"));
  assert_true(overlap("[::]:8443", "0.0.0.0:8443"));
  assert_true(overlap(":8443", "[::1]:8443"));
  assert_true(overlap("*:8443", "10.1.2.3:8443"));
  assert_false(overlap("0.0.0.0:8443", "127.0.0.1:8444"));
  /* Port 0: any free port, never a collision. */
  assert_false(overlap("127.0.0.1:0", "127.0.0.1:0"));
  assert_false(overlap("0.0.0.0:0", "127.0.0.1:0"));
  /* Spellings of one address. */
  assert_true(overlap("[::ffff:127.0.0.1]:8443", "127.0.0.1:8443"));
  assert_true(overlap("[0:0::1]:8443", "[::1]:8443"));
  assert_true(overlap("localhost:8443", "127.0.0.1:8443"));
  assert_true(overlap("localhost:8443", "[::1]:8443"));
  assert_true(overlap("localhost:8443", "localhost:8443"));
  assert_false(overlap("localhost:8443", "127.0.0.2:8443"));
}

static void selector_set(Tlsplane__V1__Listener *l, Tlsplane__V1__Listener__AgentSelectorEntry **e,
                         Tlsplane__V1__Listener__AgentSelectorEntry *store, size_t n,
                         const char *const *kv) {
  for (size_t i = 0; i < n; i++) {
    tlsplane__v1__listener__agent_selector_entry__init(&store[i]);
    store[i].key = (char *)kv[2 * i];
    store[i].value = (char *)kv[2 * i + 1];
    e[i] = &store[i];
  }
  l->agent_selector = e;
  l->n_agent_selector = n;
}

static void test_selectors_overlap(void **state) {
  (void)state;
  Tlsplane__V1__Listener a, b;
  listener_init(&a);
  listener_init(&b);
  Tlsplane__V1__Listener__AgentSelectorEntry sa[2], sb[2], *ea[2], *eb[2];
  assert_true(listener_rules_selectors_overlap(&a, &b)); /* both every agent */
  const char *const site_a[] = {"site", "a", "tier", "edge"};
  const char *const site_b[] = {"site", "b"};
  const char *const env[] = {"env", "prod", "tier", "edge"};
  selector_set(&a, ea, sa, 1, site_a);
  assert_true(listener_rules_selectors_overlap(&a, &b)); /* b: every agent */
  assert_true(listener_rules_selectors_overlap(&b, &a));
  selector_set(&b, eb, sb, 1, site_b);
  assert_false(listener_rules_selectors_overlap(&a, &b));
  selector_set(&b, eb, sb, 1, env);
  assert_true(listener_rules_selectors_overlap(&a, &b)); /* site=a, env=prod */
  selector_set(&a, ea, sa, 2, site_a);
  selector_set(&b, eb, sb, 2, env);
  assert_true(listener_rules_selectors_overlap(&a, &b)); /* tier=edge on both */
  const char *const env_core[] = {"env", "prod", "tier", "core"};
  selector_set(&b, eb, sb, 2, env_core);
  assert_false(listener_rules_selectors_overlap(&a, &b));
  assert_false(listener_rules_selectors_overlap(&b, &a));
}

static void test_sni_routes(void **state) {
  (void)state;
  Tlsplane__V1__Listener l;
  listener_init(&l);
  Tlsplane__V1__SniRoute r[4], *rp[4];
  const char *hosts[] = {"www.example.com", "*.example.com", "example.com", "API.example.com"};
  for (size_t i = 0; i < 4; i++) {
    tlsplane__v1__sni_route__init(&r[i]);
    r[i].hostname = (char *)hosts[i];
    r[i].tls_context = "tlsContexts/web";
    rp[i] = &r[i];
  }
  l.sni_routes = rp;
  l.n_sni_routes = 4;
  struct tp_err err = {0};
  EXPECT_OK(listener_rules_sni_routes_check(&l, &err), &err);
  /* Compared lower-cased: a repeat in other case is routed twice. */
  r[3].hostname = "WWW.Example.com";
  EXPECT_ERR(listener_rules_sni_routes_check(&l, &err), &err,
             "sni_routes[3].hostname: \"www.example.com\" is routed twice");
  r[2].hostname = "*.EXAMPLE.com";
  EXPECT_ERR(listener_rules_sni_routes_check(&l, &err), &err,
             "sni_routes[2].hostname: \"*.example.com\" is routed twice");
  /* The first bad route in order is named. */
  r[1].hostname = "www.*.com";
  EXPECT_ERR(listener_rules_sni_routes_check(&l, &err), &err, "sni_routes[1].hostname: ");
  r[1].hostname = "";
  EXPECT_ERR(listener_rules_sni_routes_check(&l, &err), &err, "sni_routes[1].hostname: required");
  /* And listener_rules_check runs it. */
  struct listener_rules_values v;
  EXPECT_ERR(listener_rules_check(&l, LISTENER_RULES_AGENT, &v, &err), &err,
             "sni_routes[1].hostname: required");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults_are_the_seeds),
      cmocka_unit_test(test_durations),
      cmocka_unit_test(test_limits),
      cmocka_unit_test(test_addresses),
      cmocka_unit_test(test_addresses_overlap),
      cmocka_unit_test(test_selectors_overlap),
      cmocka_unit_test(test_sni_routes),
      cmocka_unit_test(test_upstream_tls),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
