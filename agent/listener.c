/* Listeners and their versions (see listener.h). */
#include "listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "addr.h"
#include "listener_rules.h"
#include "tlsconf.h"

/* Listen backlog: what the kernel queues per socket (capped by
 * net.core.somaxconn). */
#define LISTEN_BACKLOG 1024

struct listener *listener_check(void *p) {
  struct listener *l = p;
  if (l == NULL || l->magic != LISTENER_MAGIC)
    abort();
  return l;
}

struct listener_version *listener_version_check(void *p) {
  struct listener_version *v = p;
  if (v == NULL || v->magic != LISTENER_VERSION_MAGIC)
    abort();
  return v;
}

struct listener *listener_new(const char *name) {
  struct listener *l = calloc(1, sizeof(*l));
  if (l == NULL || (l->name = strdup(name)) == NULL) {
    free(l);
    return NULL;
  }
  l->magic = LISTENER_MAGIC;
  atomic_init(&l->refs, 1);
  return l;
}

void listener_ref(struct listener *l) {
  atomic_fetch_add_explicit(&listener_check(l)->refs, 1, memory_order_relaxed);
}

void listener_unref(struct listener *l) {
  if (l == NULL)
    return;
  if (atomic_fetch_sub_explicit(&listener_check(l)->refs, 1, memory_order_acq_rel) != 1)
    return;
  free(l->name);
  l->magic = 0;
  free(l);
}

void listener_version_ref(struct listener_version *v) {
  atomic_fetch_add_explicit(&listener_version_check(v)->refs, 1, memory_order_relaxed);
}

static void version_free(struct listener_version *v) {
  for (size_t i = 0; v->up_sessions != NULL && i < LISTENER_MAX_WORKERS; i++) {
    struct listener_up_sessions *row = v->up_sessions[i];
    for (size_t j = 0; row != NULL && j < row->n; j++)
      SSL_SESSION_free(row->kept[j]);
    free(row);
  }
  free(v->up_sessions);
  free(v->certs);
  tlsconf_listener_unref(v->tls);
  listener_unref(v->listener);
  free(v->address);
  free(v->upstream);
  free(v->upstream_path);
  v->magic = 0;
  free(v);
}

void listener_version_unref(struct listener_version *v) {
  if (v == NULL)
    return;
  if (atomic_fetch_sub_explicit(&listener_version_check(v)->refs, 1, memory_order_acq_rel) != 1)
    return;
  version_free(v);
}

void listener_addr_format(const union sockaddr_any *a, char *buf, size_t len) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (a->sa.sa_family == AF_INET) {
    inet_ntop(AF_INET, &a->in4.sin_addr, host, sizeof(host));
    snprintf(buf, len, "%s:%u", host, ntohs(a->in4.sin_port));
  } else if (a->sa.sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &a->in6.sin6_addr, host, sizeof(host));
    snprintf(buf, len, "[%s]:%u", host, ntohs(a->in6.sin6_port));
  } else {
    snprintf(buf, len, "?");
  }
}

static socklen_t addr_len(const union sockaddr_any *a) {
  return a->sa.sa_family == AF_INET6 ? sizeof(a->in6) : sizeof(a->in4);
}

int listener_addr_equal(const union sockaddr_any *a, const union sockaddr_any *b) {
  if (a->sa.sa_family != b->sa.sa_family)
    return 0;
  if (a->sa.sa_family == AF_INET)
    return a->in4.sin_port == b->in4.sin_port && a->in4.sin_addr.s_addr == b->in4.sin_addr.s_addr;
  if (a->sa.sa_family == AF_INET6)
    return a->in6.sin6_port == b->in6.sin6_port &&
           memcmp(&a->in6.sin6_addr, &b->in6.sin6_addr, sizeof(a->in6.sin6_addr)) == 0;
  return 0;
}

/* Resolves host (as listener_rules_addr_parse or addr_parse left it) and
 * port; address is the whole text, for errors. */
static int addr_resolve(const char *host, int port, int passive, const char *field,
                        const char *address, union sockaddr_any *out, struct tp_err *err) {
  if (!passive && host[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: \"%s\" needs a host", field, address);
  if (passive && strcmp(host, "*") == 0)
    host = ""; /* every address, as the API reads it */
  char service[8];
  snprintf(service, sizeof(service), "%d", port);
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : AI_ADDRCONFIG);
  int rc = getaddrinfo(host[0] ? host : NULL, service, &hints, &res);
  if (rc != 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: cannot resolve \"%s\": %s", field,
                      host, gai_strerror(rc));
  /* An empty bind host: prefer the IPv6 wildcard, which (dual stack)
   * also takes IPv4; otherwise the first answer. */
  const struct addrinfo *pick = res;
  for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    if (passive && host[0] == '\0' && ai->ai_family == AF_INET6) {
      pick = ai;
      break;
    }
  }
  for (; pick != NULL; pick = pick->ai_next) {
    if ((pick->ai_family == AF_INET || pick->ai_family == AF_INET6) &&
        pick->ai_addrlen <= sizeof(*out))
      break;
  }
  if (pick == NULL) {
    freeaddrinfo(res);
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: \"%s\" has no IPv4 or IPv6 address",
                      field, host);
  }
  memset(out, 0, sizeof(*out));
  memcpy(out, pick->ai_addr, pick->ai_addrlen);
  freeaddrinfo(res);
  return 0;
}

int listener_addr_resolve(const char *address, int passive, const char *field,
                          union sockaddr_any *out, struct tp_err *err) {
  char host[256];
  int port;
  if (addr_parse(address, host, sizeof(host), &port, passive, field, err) != 0)
    return -1;
  return addr_resolve(host, port, passive, field, address, out, err);
}

static int facts_same(const struct tlsconf_cert_facts *x, const struct tlsconf_cert_facts *y) {
  return strcmp(x->certificate, y->certificate) == 0 && strcmp(x->sha256, y->sha256) == 0;
}

/* v->certs: every certificate of v's contexts, once though several
 * contexts serve it (a listener has a few contexts of a few each). */
static int certs_collect(struct listener_version *v) {
  size_t n_ctx = tlsconf_listener_contexts(v->tls), total = 0;
  const struct tlsconf_cert_facts *facts;
  for (size_t i = 0; i < n_ctx; i++)
    total += tlsconf_ctx_certs(tlsconf_listener_context(v->tls, i), &facts);
  if ((v->certs = calloc(total + 1, sizeof(*v->certs))) == NULL)
    return -1;
  for (size_t i = 0; i < n_ctx; i++) {
    size_t n = tlsconf_ctx_certs(tlsconf_listener_context(v->tls, i), &facts);
    for (size_t k = 0; k < n; k++) {
      size_t j = 0;
      while (j < v->n_certs && !facts_same(v->certs[j], &facts[k]))
        j++;
      if (j == v->n_certs)
        v->certs[v->n_certs++] = &facts[k];
    }
  }
  return 0;
}

int listener_version_build(struct listener *l, const Tlsplane__V1__ResolvedListener *rl,
                           const Tlsplane__V1__ListenerEntry *entry, struct tlsconf_ctxcache *cache,
                           struct listener_version **out, struct tp_err *err) {
  *out = NULL;
  const Tlsplane__V1__Listener *li = rl->listener;
  if (li == NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "listener: required");
  struct listener_version *v = calloc(1, sizeof(*v));
  if (v == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  v->magic = LISTENER_VERSION_MAGIC;
  atomic_init(&v->refs, 1);
  listener_ref(l);
  v->listener = l;

  /* The API's own rules (what it accepted loads here), then what only an
   * agent does: name lookups. */
  struct listener_rules_values vals;
  if (listener_rules_check(li, LISTENER_RULES_AGENT, &vals, err) != 0)
    goto failed;
  if (addr_resolve(vals.address.host, vals.address.port, 1, "address", li->address, &v->bind_addr,
                   err) != 0 ||
      (vals.upstream.kind != LISTENER_RULES_HOST_UNIX &&
       addr_resolve(vals.upstream.host, vals.upstream.port, 0, "upstream", li->upstream,
                    &v->upstream_addr, err) != 0))
    goto failed;
  if (vals.upstream.kind == LISTENER_RULES_HOST_UNIX &&
      (v->upstream_path = strdup(vals.upstream.path)) == NULL) {
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto failed;
  }
  v->proxy_protocol = li->proxy_protocol;
  v->handshake_timeout_ms = vals.handshake_timeout_ms;
  v->idle_timeout_ms = vals.idle_timeout_ms;
  v->write_timeout_ms = vals.write_timeout_ms;
  v->max_connections = vals.max_connections;

  if ((v->address = strdup(li->address)) == NULL || (v->upstream = strdup(li->upstream)) == NULL) {
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto failed;
  }
  if (entry != NULL && entry->hash.len == RSET_HASH_LEN)
    memcpy(v->entry_hash, entry->hash.data, RSET_HASH_LEN);

  /* Contexts the agent has built already (for any listener) are shared. */
  if (tlsconf_listener_build_cached(rl, entry, cache, &v->tls, err) != 0)
    goto failed;
  if (tlsconf_listener_upstream_tls(v->tls) &&
      (v->up_sessions = calloc(LISTENER_MAX_WORKERS, sizeof(*v->up_sessions))) == NULL) {
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto failed;
  }
  v->renegotiation_limit = tlsconf_listener_renegotiation_limit(v->tls);
  int64_t window = tlsconf_listener_renegotiation_window_ms(v->tls);
  v->renegotiation_window_ms = window > 0 ? (uint64_t)window : 0;
  if (certs_collect(v) != 0) {
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto failed;
  }
  *out = v;
  return 0;
failed:
  version_free(v);
  return -1;
}

/* Binds a socket to a; without out, closes it again (the probe). */
static int open_one(const union sockaddr_any *a, int reuseport, int *fd_out, struct tp_err *err,
                    const char *field, const char *address) {
  const char *step = "socket";
  int fd = socket(a->sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    goto failed;
  int one = 1, zero = 0;
  step = "setsockopt";
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
    goto failed;
  /* The IPv6 wildcard takes IPv4 too (Node's default for "::"). */
  if (a->sa.sa_family == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED(&a->in6.sin6_addr))
    (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
  step = "bind";
  if (bind(fd, &a->sa, addr_len(a)) != 0)
    goto failed;
  if (fd_out == NULL) { /* the probe */
    close(fd);
    return 0;
  }
  step = "listen";
  if (listen(fd, LISTEN_BACKLOG) != 0)
    goto failed;
  *fd_out = fd;
  return 0;
failed:;
  int e = errno;
  if (fd >= 0)
    close(fd);
  return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "%s: %s: %s: %s", field, address, step,
                    strerror(e));
}

int listener_socket_open(const union sockaddr_any *a, int reuseport, const char *field,
                         const char *address, int *fd, struct tp_err *err) {
  *fd = -1;
  return open_one(a, reuseport, fd, err, field, address);
}

static int port_of(const union sockaddr_any *a) {
  return ntohs(a->sa.sa_family == AF_INET6 ? a->in6.sin6_port : a->in4.sin_port);
}

int listener_sockets_open(struct listener_version *v, int n, int probe, int *fds,
                          struct tp_err *err) {
  for (int i = 0; i < n; i++)
    fds[i] = -1;
  if (probe && port_of(&v->bind_addr) != 0 &&
      open_one(&v->bind_addr, 0, NULL, err, "address", v->address) != 0)
    return -1;
  for (int i = 0; i < n; i++) {
    if (open_one(&v->bind_addr, 1, &fds[i], err, "address", v->address) != 0)
      goto failed;
    if (i == 0) {
      /* Port 0: the others join the port the first one got. */
      union sockaddr_any bound;
      socklen_t len = sizeof(bound);
      if (getsockname(fds[0], &bound.sa, &len) != 0) {
        tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "address: %s: getsockname: %s", v->address,
                   strerror(errno));
        goto failed;
      }
      if (bound.sa.sa_family == AF_INET)
        v->bind_addr.in4.sin_port = bound.in4.sin_port;
      else
        v->bind_addr.in6.sin6_port = bound.in6.sin6_port;
    }
  }
  return 0;
failed:
  for (int i = 0; i < n; i++) {
    if (fds[i] >= 0)
      close(fds[i]);
    fds[i] = -1;
  }
  return -1;
}
