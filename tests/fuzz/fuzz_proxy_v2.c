/* The PROXY v2 header builder (agent/proxy_v2.c) with what a client
 * chooses: the SNI (authority), the ALPN protocol, the client
 * certificate's CN and its verification result, the addresses, and the
 * TLS facts. The first bytes pick the address families, flags, ports, the
 * verify result and the room given; the parts after FUZZ_SEP are the
 * strings (alpn, authority, version, cipher, cn).
 *
 * What must hold: PROXY_V2_MAX always suffices; a smaller buffer is
 * refused (-ENOSPC) exactly when the header does not fit, and nothing is
 * written past it (the buffer is a heap block of exactly that size); what
 * is written is the header a receiver parses back into the same facts:
 * signature, version and command, family, a length that covers the rest,
 * the addresses, each string TLV present when its string is non-empty and
 * cut at 255 bytes, the SSL TLV with its client bits, verify and
 * sub-TLVs, and nothing else. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "fuzz.h"
#include "proxy_v2.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  return 0;
}

struct reader {
  const uint8_t *p;
  size_t n;
};

static const uint8_t *take(struct reader *r, size_t n) {
  FUZZ_ASSERT(r->n >= n);
  const uint8_t *p = r->p;
  r->p += n;
  r->n -= n;
  return p;
}

static unsigned get_u16(struct reader *r) {
  const uint8_t *p = take(r, 2);
  return (unsigned)p[0] << 8 | p[1];
}

/* An address of the family code picks (0: none, 1: IPv4, 2: IPv6, 3: a
 * family the builder does not carry), with bytes from seed. */
static const struct sockaddr *make_addr(int code, const uint8_t *seed,
                                        struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof(*ss));
  switch (code) {
  case 1: {
    struct sockaddr_in *s = (struct sockaddr_in *)ss;
    s->sin_family = AF_INET;
    memcpy(&s->sin_addr, seed, 4);
    memcpy(&s->sin_port, seed + 4, 2);
    return (struct sockaddr *)s;
  }
  case 2: {
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)ss;
    s->sin6_family = AF_INET6;
    memcpy(&s->sin6_addr, seed, 16);
    memcpy(&s->sin6_port, seed + 16, 2);
    return (struct sockaddr *)s;
  }
  case 3:
    ss->ss_family = AF_UNIX;
    return (struct sockaddr *)ss;
  default:
    return NULL;
  }
}

/* The 16-byte form and port of an inet address (IPv4 mapped). */
static void as6(const struct sockaddr *sa, uint8_t ip[16], uint8_t port[2]) {
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
    memcpy(ip, &s->sin6_addr, 16);
    memcpy(port, &s->sin6_port, 2);
  } else {
    const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memcpy(ip, mapped, 12);
    memcpy(ip + 12, &s->sin_addr, 4);
    memcpy(port, &s->sin_port, 2);
  }
}

/* A string TLV of type, if s says there is one: checks and consumes it. */
static void expect_str(struct reader *r, uint8_t type, const char *s) {
  if (s == NULL || s[0] == '\0')
    return;
  size_t n = strnlen(s, 255);
  FUZZ_ASSERT(*take(r, 1) == type);
  FUZZ_ASSERT(get_u16(r) == n);
  FUZZ_ASSERT(memcmp(take(r, n), s, n) == 0);
}

/* Parses hdr back and checks it says what info says. */
static void check_header(const uint8_t *hdr, size_t len, const struct proxy_v2_info *info) {
  struct reader r = {hdr, len};
  FUZZ_ASSERT(memcmp(take(&r, PP2_SIGNATURE_LEN), PP2_SIGNATURE, PP2_SIGNATURE_LEN) == 0);
  int inet_src =
      info->src != NULL && (info->src->sa_family == AF_INET || info->src->sa_family == AF_INET6);
  int inet_dst =
      info->dst != NULL && (info->dst->sa_family == AF_INET || info->dst->sa_family == AF_INET6);
  int proxied = inet_src && inet_dst;
  FUZZ_ASSERT(*take(&r, 1) == (PP2_VERSION | (proxied ? PP2_CMD_PROXY : PP2_CMD_LOCAL)));
  int v4 = proxied && info->src->sa_family == AF_INET && info->dst->sa_family == AF_INET;
  uint8_t fam = *take(&r, 1);
  FUZZ_ASSERT(fam == (!proxied ? PP2_FAM_UNSPEC : v4 ? PP2_FAM_TCP4 : PP2_FAM_TCP6));
  FUZZ_ASSERT(get_u16(&r) == r.n); /* the length covers exactly the rest */
  if (v4) {
    const struct sockaddr_in *s = (const struct sockaddr_in *)info->src;
    const struct sockaddr_in *d = (const struct sockaddr_in *)info->dst;
    FUZZ_ASSERT(memcmp(take(&r, 4), &s->sin_addr, 4) == 0);
    FUZZ_ASSERT(memcmp(take(&r, 4), &d->sin_addr, 4) == 0);
    FUZZ_ASSERT(memcmp(take(&r, 2), &s->sin_port, 2) == 0);
    FUZZ_ASSERT(memcmp(take(&r, 2), &d->sin_port, 2) == 0);
  } else if (proxied) {
    uint8_t sip[16], dip[16], sport[2], dport[2];
    as6(info->src, sip, sport);
    as6(info->dst, dip, dport);
    FUZZ_ASSERT(memcmp(take(&r, 16), sip, 16) == 0);
    FUZZ_ASSERT(memcmp(take(&r, 16), dip, 16) == 0);
    FUZZ_ASSERT(memcmp(take(&r, 2), sport, 2) == 0);
    FUZZ_ASSERT(memcmp(take(&r, 2), dport, 2) == 0);
  }
  expect_str(&r, PP2_TYPE_ALPN, info->alpn);
  expect_str(&r, PP2_TYPE_AUTHORITY, info->authority);
  if (info->ssl) {
    FUZZ_ASSERT(*take(&r, 1) == PP2_TYPE_SSL);
    unsigned ssl_len = get_u16(&r);
    FUZZ_ASSERT(ssl_len == r.n); /* the SSL TLV is the last one */
    uint8_t client = *take(&r, 1);
    uint8_t want = PP2_CLIENT_SSL;
    if (info->cert_sess)
      want |= PP2_CLIENT_CERT_SESS | (info->cert_conn ? PP2_CLIENT_CERT_CONN : 0);
    FUZZ_ASSERT(client == want);
    const uint8_t *v = take(&r, 4);
    uint32_t verify = (uint32_t)v[0] << 24 | (uint32_t)v[1] << 16 | (uint32_t)v[2] << 8 | v[3];
    /* Never 0 ("verified") without a client certificate. */
    FUZZ_ASSERT(verify == (info->cert_sess ? (uint32_t)info->verify_result : 1u));
    expect_str(&r, PP2_SUBTYPE_SSL_VERSION, info->version);
    expect_str(&r, PP2_SUBTYPE_SSL_CN, info->cn);
    expect_str(&r, PP2_SUBTYPE_SSL_CIPHER, info->cipher);
  }
  FUZZ_ASSERT(r.n == 0);
}

#define FIXED 44 /* flags 1, verify 4, cap 2, addresses 18 + 18, spare 1 */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < FIXED)
    return 0;
  uint8_t flags = data[0];
  long verify =
      (long)((uint32_t)data[1] << 24 | (uint32_t)data[2] << 16 | (uint32_t)data[3] << 8 | data[4]);
  size_t cap = ((size_t)data[5] << 8 | data[6]) % (PROXY_V2_MAX + 64);
  struct sockaddr_storage src_ss, dst_ss;
  struct proxy_v2_info info = {
      .src = make_addr(flags & 3, data + 7, &src_ss),
      .dst = make_addr((flags >> 2) & 3, data + 25, &dst_ss),
      .ssl = (flags >> 4) & 1,
      .cert_conn = (flags >> 5) & 1,
      .cert_sess = (flags >> 6) & 1,
      .verify_result = (flags >> 7) ? verify : 0,
  };
  struct fuzz_part parts[5] = {{0}};
  size_t n = fuzz_split(data + FIXED, size - FIXED, parts, 5);
  char *str[5] = {NULL};
  for (size_t i = 0; i < n; i++)
    str[i] = fuzz_strdup(parts[i]);
  info.alpn = str[0];
  info.authority = str[1];
  info.version = str[2];
  info.cipher = str[3];
  info.cn = str[4];

  uint8_t *full = malloc(PROXY_V2_MAX);
  FUZZ_ASSERT(full != NULL);
  int len = proxy_v2_build(&info, full, PROXY_V2_MAX);
  FUZZ_ASSERT(len > 0 && len <= PROXY_V2_MAX);
  check_header(full, (size_t)len, &info);

  uint8_t *small = malloc(cap ? cap : 1);
  FUZZ_ASSERT(small != NULL);
  int got = proxy_v2_build(&info, small, cap);
  if (cap < (size_t)len) {
    FUZZ_ASSERT(got == -ENOSPC);
  } else {
    FUZZ_ASSERT(got == len);
    FUZZ_ASSERT(memcmp(small, full, (size_t)len) == 0);
  }
  free(small);
  free(full);
  for (size_t i = 0; i < 5; i++)
    free(str[i]);
  return 0;
}
