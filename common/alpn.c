/* The ALPN extension of a ClientHello (see alpn.h). */
#include "alpn.h"

#include <string.h>

int alpn_ext_is_only(const uint8_t *ext, size_t len, const uint8_t *proto, size_t proto_len) {
  if (ext == NULL || len < 2)
    return -1;
  size_t list_len = ((size_t)ext[0] << 8) | ext[1];
  if (list_len != len - 2 || list_len < 2)
    return -1;
  const uint8_t *p = ext + 2;
  size_t left = list_len;
  size_t names = 0;
  int first_matches = 0;
  while (left > 0) {
    size_t n = p[0];
    if (n == 0 || n > left - 1)
      return -1;
    if (names == 0)
      first_matches = n == proto_len && memcmp(p + 1, proto, n) == 0;
    names++;
    p += 1 + n;
    left -= 1 + n;
  }
  return names == 1 && first_matches ? 1 : 0;
}
