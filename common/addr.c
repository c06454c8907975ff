/* "host:port" addresses. */
#include "addr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

int addr_parse(const char *addr, char *host, size_t host_len, int *port, int allow_port0,
               const char *field, struct tp_err *err) {
  const char *colon, *h = addr;
  size_t hlen;
  if (addr == NULL || addr[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: required (host:port)", field);
  if (addr[0] == '[') {
    const char *close = strchr(addr, ']');
    if (close == NULL || close[1] != ':')
      goto bad;
    h = addr + 1;
    hlen = (size_t)(close - h);
    colon = close + 1;
  } else {
    colon = strrchr(addr, ':');
    if (colon == NULL || memchr(addr, ':', (size_t)(colon - addr)) != NULL)
      goto bad;
    hlen = (size_t)(colon - addr);
  }
  if (hlen >= host_len)
    goto bad;
  char *end;
  long p = strtol(colon + 1, &end, 10);
  if (colon[1] == '\0' || *end != '\0' || !isdigit((unsigned char)colon[1]) ||
      p < (allow_port0 ? 0 : 1) || p > 65535)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: \"%s\" needs a port from 1 to 65535",
                      field, addr);
  memcpy(host, h, hlen);
  host[hlen] = '\0';
  *port = (int)p;
  return 0;
bad:
  return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                    "%s: \"%s\" is not host:port (or [ipv6]:port)", field, addr);
}

int addr_is_ip(const char *host) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

int addr_is_hostname(const char *host) {
  size_t n = strlen(host), label = 0;
  if (n == 0 || n > 253)
    return 0;
  for (size_t i = 0; i <= n; i++) {
    char c = host[i];
    if (c == '.' || c == '\0') {
      if (label == 0 || label > 63 || host[i - 1] == '-')
        return 0;
      label = 0;
      continue;
    }
    if (!isalnum((unsigned char)c) && !(c == '-' && label > 0))
      return 0;
    label++;
  }
  return 1;
}

int addr_is_loopback(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
  if (sa->sa_family != AF_INET6)
    return 0;
  const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
  return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
}
