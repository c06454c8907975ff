/* PROXY protocol v2 header builder (see proxy_v2.h). */
#include "proxy_v2.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>

struct out {
  uint8_t *p;
  size_t len, cap;
  int overflow;
};

static void put(struct out *o, const void *data, size_t n) {
  if (o->overflow || n > o->cap - o->len) {
    o->overflow = 1;
    return;
  }
  memcpy(o->p + o->len, data, n);
  o->len += n;
}

static void put_u8(struct out *o, uint8_t v) {
  put(o, &v, 1);
}

static void put_u16(struct out *o, uint16_t v) {
  uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};
  put(o, b, 2);
}

static void put_u32(struct out *o, uint32_t v) {
  uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
  put(o, b, 4);
}

/* A TLV holding a string, left out when s is NULL or empty. */
static void put_tlv_str(struct out *o, uint8_t type, const char *s) {
  if (s == NULL || s[0] == '\0')
    return;
  size_t n = strnlen(s, 255);
  put_u8(o, type);
  put_u16(o, (uint16_t)n);
  put(o, s, n);
}

/* Patches a big-endian 16-bit length at offset at. */
static void patch_u16(struct out *o, size_t at, size_t v) {
  if (o->overflow)
    return;
  o->p[at] = (uint8_t)(v >> 8);
  o->p[at + 1] = (uint8_t)v;
}

/* The 16-byte IPv6 form of an address (IPv4 mapped) and its port, in
 * network byte order. */
static void addr6(const struct sockaddr *sa, uint8_t ip[16], uint16_t *port_be) {
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    memcpy(ip, &s6->sin6_addr, 16);
    *port_be = s6->sin6_port;
  } else {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    memset(ip, 0, 10);
    ip[10] = 0xff;
    ip[11] = 0xff;
    memcpy(ip + 12, &s4->sin_addr, 4);
    *port_be = s4->sin_port;
  }
}

static int is_inet(const struct sockaddr *sa) {
  return sa != NULL && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6);
}

int proxy_v2_build(const struct proxy_v2_info *info, uint8_t *buf, size_t cap) {
  struct out o = {buf, 0, cap, 0};
  put(&o, PP2_SIGNATURE, PP2_SIGNATURE_LEN);
  int proxied = is_inet(info->src) && is_inet(info->dst);
  put_u8(&o, PP2_VERSION | (proxied ? PP2_CMD_PROXY : PP2_CMD_LOCAL));
  if (!proxied) {
    put_u8(&o, PP2_FAM_UNSPEC);
  } else if (info->src->sa_family == AF_INET && info->dst->sa_family == AF_INET) {
    put_u8(&o, PP2_FAM_TCP4);
  } else {
    put_u8(&o, PP2_FAM_TCP6);
  }
  size_t len_at = o.len;
  put_u16(&o, 0); /* patched below */
  size_t body = o.len;

  if (proxied && info->src->sa_family == AF_INET && info->dst->sa_family == AF_INET) {
    const struct sockaddr_in *s = (const struct sockaddr_in *)info->src;
    const struct sockaddr_in *d = (const struct sockaddr_in *)info->dst;
    put(&o, &s->sin_addr, 4);
    put(&o, &d->sin_addr, 4);
    put(&o, &s->sin_port, 2);
    put(&o, &d->sin_port, 2);
  } else if (proxied) {
    uint8_t sip[16], dip[16];
    uint16_t sport, dport;
    addr6(info->src, sip, &sport);
    addr6(info->dst, dip, &dport);
    put(&o, sip, 16);
    put(&o, dip, 16);
    put(&o, &sport, 2);
    put(&o, &dport, 2);
  }

  put_tlv_str(&o, PP2_TYPE_ALPN, info->alpn);
  put_tlv_str(&o, PP2_TYPE_AUTHORITY, info->authority);

  if (info->ssl) {
    uint8_t client = PP2_CLIENT_SSL;
    uint32_t verify = 1;
    if (info->cert_sess) {
      client |= PP2_CLIENT_CERT_SESS;
      verify = (uint32_t)info->verify_result;
      if (info->cert_conn)
        client |= PP2_CLIENT_CERT_CONN;
    }
    put_u8(&o, PP2_TYPE_SSL);
    size_t ssl_len_at = o.len;
    put_u16(&o, 0);
    size_t ssl_body = o.len;
    put_u8(&o, client);
    put_u32(&o, verify);
    put_tlv_str(&o, PP2_SUBTYPE_SSL_VERSION, info->version);
    put_tlv_str(&o, PP2_SUBTYPE_SSL_CN, info->cn);
    put_tlv_str(&o, PP2_SUBTYPE_SSL_CIPHER, info->cipher);
    patch_u16(&o, ssl_len_at, o.len - ssl_body);
  }

  patch_u16(&o, len_at, o.len - body);
  if (o.overflow)
    return -ENOSPC;
  return (int)o.len;
}
