/* The ALPN extension of a ClientHello as the agent's client hello
 * callback reads it (common/alpn.c) to tell an ACME tls-alpn-01
 * validation (the list exactly "acme-tls/1", RFC 8737) from every other
 * client: the input is the extension body as a client sends it.
 *
 * What must hold: nothing is read outside the input (a heap block of
 * exactly its size); the answer is -1, 0 or 1; 1 for "acme-tls/1" exactly
 * when the input is that one-name list byte for byte; well-formedness
 * agrees with a second reading of RFC 7301 (a 2-byte length equal to the
 * rest, then 1..255-byte names filling it exactly, at least one); and a
 * well-formed list "is only" its own first name exactly when it has one
 * name. */
#include "alpn.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  return 0;
}

/* The second reading: the number of names, or -1 when malformed. */
static long names_in(const uint8_t *p, size_t n) {
  if (n < 2 || (size_t)(p[0] << 8 | p[1]) + 2 != n)
    return -1;
  long names = 0;
  size_t off = 2;
  while (off < n) {
    size_t len = p[off];
    if (len == 0 || off + 1 + len > n)
      return -1;
    off += 1 + len;
    names++;
  }
  return names > 0 ? names : -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *ext = malloc(size ? size : 1);
  if (ext == NULL)
    abort();
  if (size > 0)
    memcpy(ext, data, size);
  static const uint8_t acme[] = ALPN_ACME_TLS_1;
  static const uint8_t exact[] = {0x00, 0x0b, 0x0a, 'a', 'c', 'm', 'e',
                                  '-',  't',  'l',  's', '/', '1'};
  int rc = alpn_ext_is_only(size ? ext : NULL, size, acme, sizeof(acme) - 1);
  FUZZ_ASSERT(rc == -1 || rc == 0 || rc == 1);
  FUZZ_ASSERT((rc == 1) == (size == sizeof(exact) && memcmp(ext, exact, size) == 0));
  long names = names_in(ext, size);
  FUZZ_ASSERT((rc == -1) == (names < 0));
  if (names > 0) {
    int own = alpn_ext_is_only(ext, size, ext + 3, ext[2]);
    FUZZ_ASSERT(own == (names == 1 ? 1 : 0));
  }
  free(ext);
  return 0;
}
