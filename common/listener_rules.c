/* The rules of a Listener, shared by the API and the agent (see
 * listener_rules.h). */
#include "listener_rules.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "pb.h"
#include "tlsconf.h"

const struct listener_rules_duration listener_rules_handshake_timeout = {
    .field = "handshake_timeout", .default_s = 120, .max_s = 3600, .zero_unlimited = 1};
const struct listener_rules_duration listener_rules_renegotiation_window = {
    .field = "renegotiation_window", .default_s = 600, .max_s = 86400, .zero_unlimited = 0};
const struct listener_rules_duration listener_rules_idle_timeout = {
    .field = "idle_timeout", .default_s = 600, .max_s = 86400, .zero_unlimited = 1};
const struct listener_rules_duration listener_rules_write_timeout = {
    .field = "write_timeout", .default_s = 60, .max_s = 3600, .zero_unlimited = 1};

int listener_rules_addr_parse(const char *address, int bind, const char *field,
                              struct listener_rules_addr *out, struct tp_err *err) {
  memset(out, 0, sizeof(*out));
  if (!bind && strncmp(address, "unix:", 5) == 0) {
    const char *path = address + 5;
    if (path[0] != '/')
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "%s: \"%s\": a Unix socket is \"unix:\" and an absolute path", field,
                        address);
    if (strlen(path) >= sizeof(out->path))
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "%s: \"%s\": the path is longer than %zu bytes", field, address,
                        sizeof(out->path) - 1);
    out->kind = LISTENER_RULES_HOST_UNIX;
    snprintf(out->path, sizeof(out->path), "%s", path);
    return 0;
  }
  if (addr_parse(address, out->host, sizeof(out->host), &out->port, bind, field, err) != 0)
    return -1;
  const char *h = out->host;
  struct in_addr v4;
  out->kind = LISTENER_RULES_HOST_NAME;
  if (inet_pton(AF_INET, h, &v4) == 1) {
    out->kind = v4.s_addr == htonl(INADDR_ANY) ? LISTENER_RULES_HOST_ANY : LISTENER_RULES_HOST_IP;
    out->ip.s6_addr[10] = 0xff;
    out->ip.s6_addr[11] = 0xff;
    memcpy(&out->ip.s6_addr[12], &v4, sizeof(v4));
  } else if (inet_pton(AF_INET6, h, &out->ip) == 1) {
    /* "::" binds dual stack (the agent turns IPV6_V6ONLY off). */
    out->kind =
        IN6_IS_ADDR_UNSPECIFIED(&out->ip) ? LISTENER_RULES_HOST_ANY : LISTENER_RULES_HOST_IP;
  } else if (h[0] == '\0' || (bind && strcmp(h, "*") == 0)) {
    out->kind = LISTENER_RULES_HOST_ANY;
    out->host[0] = '\0'; /* "*" is every address, as empty */
  }
  if (bind) {
    if (out->kind == LISTENER_RULES_HOST_NAME && strcmp(h, "localhost") != 0)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "%s: bind host \"%s\" must be an IP address, \"localhost\", \"*\" or "
                        "empty (every address)",
                        field, h);
    return 0;
  }
  if (h[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: \"%s\" needs a host", field, address);
  if (out->kind == LISTENER_RULES_HOST_NAME && !addr_is_hostname(h))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: \"%s\" is neither an IP address nor a hostname", field, h);
  return 0;
}

/* Whether ip is one of the addresses "localhost" resolves to. */
static int is_localhost_ip(const struct in6_addr *ip) {
  static const uint8_t v4[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1};
  return IN6_IS_ADDR_LOOPBACK(ip) || memcmp(ip->s6_addr, v4, sizeof(v4)) == 0;
}

int listener_rules_addrs_overlap(const struct listener_rules_addr *a,
                                 const struct listener_rules_addr *b) {
  if (a->port == 0 || b->port == 0 || a->port != b->port)
    return 0;
  if (a->kind == LISTENER_RULES_HOST_ANY || b->kind == LISTENER_RULES_HOST_ANY)
    return 1;
  if (a->kind == LISTENER_RULES_HOST_NAME && b->kind == LISTENER_RULES_HOST_NAME)
    return strcmp(a->host, b->host) == 0;
  if (a->kind == LISTENER_RULES_HOST_NAME)
    return is_localhost_ip(&b->ip);
  if (b->kind == LISTENER_RULES_HOST_NAME)
    return is_localhost_ip(&a->ip);
  return memcmp(&a->ip, &b->ip, sizeof(a->ip)) == 0;
}

int listener_rules_selectors_overlap(const Tlsplane__V1__Listener *a,
                                     const Tlsplane__V1__Listener *b) {
  for (size_t i = 0; i < a->n_agent_selector; i++)
    for (size_t j = 0; j < b->n_agent_selector; j++)
      if (strcmp(a->agent_selector[i]->key, b->agent_selector[j]->key) == 0 &&
          strcmp(a->agent_selector[i]->value, b->agent_selector[j]->value) != 0)
        return 0;
  return 1;
}

int listener_rules_duration_check(const Google__Protobuf__Duration *d,
                                  const struct listener_rules_duration *rule,
                                  enum listener_rules_mode mode, uint64_t *ms, struct tp_err *err) {
  if (d == NULL) {
    *ms = (uint64_t)rule->default_s * 1000;
    return 0;
  }
  if (mode == LISTENER_RULES_API) {
    int64_t v = pb_duration_ms(d);
    if (v <= 0 || d->nanos < 0 || v > rule->max_s * 1000)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "%s: must be more than 0 and at most %llds", rule->field,
                        (long long)rule->max_s);
  }
  /* What any agent loads; the API's range lies within it. */
  if (d->seconds < 0 || d->nanos < 0 || (!rule->zero_unlimited && d->seconds == 0 && d->nanos == 0))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      rule->zero_unlimited ? "%s: must not be negative" : "%s: must be more than 0",
                      rule->field);
  if (d->seconds > LISTENER_RULES_SNAPSHOT_DURATION_MAX_S)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: must be at most %llds", rule->field,
                      (long long)LISTENER_RULES_SNAPSHOT_DURATION_MAX_S);
  uint64_t v = (uint64_t)d->seconds * 1000 + (uint64_t)d->nanos / 1000000;
  *ms = v == 0 && d->nanos > 0 ? 1 : v;
  return 0;
}

static int renegotiation_limit_check(const Tlsplane__V1__Listener *li, int *limit,
                                     struct tp_err *err) {
  *limit = LISTENER_RULES_RENEGOTIATION_LIMIT_DEFAULT;
  if (li->renegotiation_limit == NULL)
    return 0;
  if (li->renegotiation_limit->value < 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "renegotiation_limit: must not be negative (0: refuse renegotiation)");
  *limit = li->renegotiation_limit->value;
  return 0;
}

int listener_rules_renegotiation_check(const Tlsplane__V1__Listener *li,
                                       enum listener_rules_mode mode, int *limit,
                                       uint64_t *window_ms, struct tp_err *err) {
  if (renegotiation_limit_check(li, limit, err) != 0)
    return -1;
  return listener_rules_duration_check(li->renegotiation_window,
                                       &listener_rules_renegotiation_window, mode, window_ms, err);
}

/* A route's hostname lower-cased, and where it stands in sni_routes. */
struct route_key {
  char *host;
  size_t index;
};

static int route_key_cmp(const void *a, const void *b) {
  const struct route_key *x = a, *y = b;
  int c = strcmp(x->host, y->host);
  return c != 0 ? c : (x->index > y->index) - (x->index < y->index);
}

int listener_rules_sni_routes_check(const Tlsplane__V1__Listener *li, struct tp_err *err) {
  size_t n = li->n_sni_routes;
  if (n == 0)
    return 0;
  int rc = -1;
  struct route_key *keys = calloc(n, sizeof(*keys));
  struct route_key *sorted = calloc(n, sizeof(*sorted));
  size_t *first = calloc(n, sizeof(*first)); /* the earliest route with the same hostname */
  if (keys == NULL || sorted == NULL || first == NULL) {
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    const char *h = li->sni_routes[i]->hostname != NULL ? li->sni_routes[i]->hostname : "";
    if ((keys[i].host = strdup(h)) == NULL) {
      tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      goto done;
    }
    for (char *p = keys[i].host; *p; p++)
      if (*p >= 'A' && *p <= 'Z')
        *p = (char)(*p - 'A' + 'a');
    keys[i].index = i;
  }
  memcpy(sorted, keys, n * sizeof(*sorted));
  qsort(sorted, n, sizeof(*sorted), route_key_cmp);
  for (size_t i = 0; i < n; i++)
    first[sorted[i].index] = i > 0 && strcmp(sorted[i - 1].host, sorted[i].host) == 0
                                 ? first[sorted[i - 1].index]
                                 : sorted[i].index;
  for (size_t i = 0; i < n; i++) {
    char prefix[64];
    if (tlsconf_hostname_pattern_check(keys[i].host, err) != 0) {
      snprintf(prefix, sizeof(prefix), "sni_routes[%zu].hostname: ", i);
      tp_err_prefix(err, prefix);
      goto done;
    }
    if (first[i] != i) {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                 "sni_routes[%zu].hostname: \"%s\" is routed twice", i, keys[i].host);
      goto done;
    }
  }
  rc = 0;
done:
  for (size_t i = 0; keys != NULL && i < n; i++)
    free(keys[i].host);
  free(keys);
  free(sorted);
  free(first);
  return rc;
}

/* upstream_tls's own fields; the context it names is checked by
 * listener_rules_upstream_context_check. */
static int upstream_tls_check(const Tlsplane__V1__Listener *li, struct listener_rules_values *out,
                              struct tp_err *err) {
  const Tlsplane__V1__UpstreamTls *u = li->upstream_tls;
  if (u == NULL)
    return 0;
  if (u->tls_context[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "upstream_tls.tls_context: required (a client TlsContext)");
  if (u->servername[0] != '\0') {
    struct listener_rules_addr a;
    struct tp_err ignored = {0};
    char probe[300];
    snprintf(probe, sizeof(probe), "%s:1", u->servername);
    if (strlen(u->servername) > 253 || !addr_is_hostname(u->servername) ||
        (listener_rules_addr_parse(probe, 0, "", &a, &ignored) == 0 &&
         a.kind != LISTENER_RULES_HOST_NAME))
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "upstream_tls.servername: \"%s\" is not a DNS hostname", u->servername);
  }
  int verify = u->reject_unauthorized == NULL || u->reject_unauthorized->value;
  const char *name = u->check_server_identity;
  if (name[0] != '\0') {
    if (!verify)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "upstream_tls.check_server_identity: needs reject_unauthorized");
    char probe[300];
    struct listener_rules_addr a;
    struct tp_err why = {0};
    snprintf(probe, sizeof(probe), strchr(name, ':') ? "[%s]:1" : "%s:1", name);
    if (strlen(name) > 253 || listener_rules_addr_parse(probe, 0, "", &a, &why) != 0)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "upstream_tls.check_server_identity: \"%s\" is neither an IP address nor "
                        "a hostname",
                        name);
  }
  if (u->min_dh_size < 0 || u->min_dh_size > 16384)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "upstream_tls.min_dh_size: %d bits; 1 to 16384 (0: 1024)", u->min_dh_size);
  /* A Unix socket has no host to check the certificate against. */
  if (verify && out->upstream.kind == LISTENER_RULES_HOST_UNIX && name[0] == '\0' &&
      u->servername[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "upstream_tls.check_server_identity: required for a Unix-socket upstream "
                      "(or servername; no host to check the certificate against)");
  out->upstream_tls = 1;
  return 0;
}

int listener_rules_check(const Tlsplane__V1__Listener *li, enum listener_rules_mode mode,
                         struct listener_rules_values *out, struct tp_err *err) {
  memset(out, 0, sizeof(*out));
  if (li == NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "listener: required");
  if (listener_rules_addr_parse(li->address, 1, "address", &out->address, err) != 0 ||
      listener_rules_addr_parse(li->upstream, 0, "upstream", &out->upstream, err) != 0 ||
      listener_rules_sni_routes_check(li, err) != 0)
    return -1;
  if (listener_rules_duration_check(li->handshake_timeout, &listener_rules_handshake_timeout, mode,
                                    &out->handshake_timeout_ms, err) != 0 ||
      listener_rules_duration_check(li->renegotiation_window, &listener_rules_renegotiation_window,
                                    mode, &out->renegotiation_window_ms, err) != 0 ||
      listener_rules_duration_check(li->idle_timeout, &listener_rules_idle_timeout, mode,
                                    &out->idle_timeout_ms, err) != 0 ||
      listener_rules_duration_check(li->write_timeout, &listener_rules_write_timeout, mode,
                                    &out->write_timeout_ms, err) != 0)
    return -1;
  if (li->max_connections < 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "max_connections: must not be negative (0: no limit)");
  out->max_connections = li->max_connections;
  if (renegotiation_limit_check(li, &out->renegotiation_limit, err) != 0)
    return -1;
  return upstream_tls_check(li, out, err);
}

int listener_rules_upstream_context_check(const Tlsplane__V1__Listener *li,
                                          const Tlsplane__V1__TlsContext *ctx, const char *field,
                                          struct tp_err *err) {
  const Tlsplane__V1__UpstreamTls *u = li->upstream_tls;
  if (u == NULL || strcmp(field, "upstream_tls.tls_context") != 0) {
    if (ctx->client)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "%s: %s is a client context (for upstream_tls only)", field, ctx->name);
    return 0;
  }
  if (!ctx->client)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: %s is not a client context (set its client)", field, ctx->name);
  if ((u->reject_unauthorized == NULL || u->reject_unauthorized->value) &&
      ctx->trust_bundle[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "%s: %s has no trust_bundle to verify the upstream (or set "
                      "upstream_tls.reject_unauthorized false)",
                      field, ctx->name);
  return 0;
}
