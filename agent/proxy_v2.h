/* PROXY protocol version 2 headers, as HAProxy sends them ("send-proxy-v2"
 * with "proxy-v2-options ssl,cert-cn,ssl-cipher", doc/proxy-protocol.txt):
 * the client's source and destination addresses, then the TLVs
 * PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY (the SNI) and PP2_TYPE_SSL with its
 * sub-TLVs PP2_SUBTYPE_SSL_VERSION, PP2_SUBTYPE_SSL_CN and
 * PP2_SUBTYPE_SSL_CIPHER, in that order.
 *
 * A pure function of its input: no allocation, no I/O, so that it is unit
 * tested byte for byte (tests/unit/test_proxy_v2.c). */
#ifndef TLSPLANE_AGENT_PROXY_V2_H
#define TLSPLANE_AGENT_PROXY_V2_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define PP2_SIGNATURE "\r\n\r\n\0\r\nQUIT\n"
#define PP2_SIGNATURE_LEN 12
#define PP2_VERSION 0x20
#define PP2_CMD_LOCAL 0x00
#define PP2_CMD_PROXY 0x01
#define PP2_FAM_UNSPEC 0x00
#define PP2_FAM_TCP4 0x11
#define PP2_FAM_TCP6 0x21

#define PP2_TYPE_ALPN 0x01
#define PP2_TYPE_AUTHORITY 0x02
#define PP2_TYPE_SSL 0x20
#define PP2_SUBTYPE_SSL_VERSION 0x21
#define PP2_SUBTYPE_SSL_CN 0x22
#define PP2_SUBTYPE_SSL_CIPHER 0x23

#define PP2_CLIENT_SSL 0x01
#define PP2_CLIENT_CERT_CONN 0x02
#define PP2_CLIENT_CERT_SESS 0x04

/* Room for the largest header proxy_v2_build makes: the fixed part and
 * IPv6 addresses (52), ALPN and SNI (3 + 255 each), the SSL TLV (8) with
 * version, CN and cipher (3 + 255 each). */
#define PROXY_V2_MAX 1400

/* What the header says about one client connection. Strings may be NULL
 * (the TLV is then left out); each is cut at 255 bytes. */
struct proxy_v2_info {
  /* The client's address and the address it connected to (the listener's
   * side of the accepted socket). AF_INET or AF_INET6; an IPv4 and an IPv6
   * address together are sent as IPv6 (the IPv4 one mapped). Anything
   * else, or NULL, gives a LOCAL header with no address. */
  const struct sockaddr *src;
  const struct sockaddr *dst;
  const char *alpn;      /* the negotiated ALPN (or NPN) protocol */
  const char *authority; /* the SNI host name */
  int ssl;               /* the client came over TLS: the SSL TLV is sent */
  const char *version;   /* "TLSv1.3" */
  const char *cipher;    /* OpenSSL cipher name */
  const char *cn;        /* client certificate subject CN */
  int cert_conn;         /* a client certificate was sent on this connection */
  int cert_sess;         /* the TLS session has a client certificate */
  /* The verification result of the client certificate (X509_V_OK, 0, when
   * it verified). Sent in the <verify> field when cert_sess is set; without
   * a client certificate <verify> is 1 ("not verified"), as the
   * specification says it is non-zero unless a certificate was presented
   * and verified (HAProxy sends 0 there; a receiver must not take that for
   * an authenticated client). */
  long verify_result;
};

/* Writes the header for info into buf (cap bytes). Returns its length, or
 * -ENOSPC when cap is too small (PROXY_V2_MAX always suffices). */
int proxy_v2_build(const struct proxy_v2_info *info, uint8_t *buf, size_t cap);

#endif
