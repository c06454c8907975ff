/* Shared pieces of the libFuzzer targets (tests/fuzz/fuzz_*.c).
 *
 * An input that carries several values (a file and its passphrase, a
 * selector and a message) holds them as parts separated by FUZZ_SEP, so
 * that seeds are real files joined with it (tests/fuzz/make-seeds.js) and
 * a mutation of one part leaves the others whole. A target's first byte,
 * where it has one, chooses what the rest is. */
#ifndef TLSPLANE_FUZZ_H
#define TLSPLANE_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_SEP "\0FUZZ\0"
#define FUZZ_SEP_LEN 6

struct fuzz_part {
  const uint8_t *p;
  size_t n;
};

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Splits data at FUZZ_SEP into at most max parts (the last takes the rest,
 * separators included); returns how many. Parts point into data. */
static inline size_t fuzz_split(const uint8_t *data, size_t size, struct fuzz_part *parts,
                                size_t max) {
  size_t n = 0, start = 0;
  if (max == 0)
    return 0;
  for (size_t i = 0; n + 1 < max && i + FUZZ_SEP_LEN <= size; i++) {
    if (memcmp(data + i, FUZZ_SEP, FUZZ_SEP_LEN) == 0) {
      parts[n].p = data + start;
      parts[n].n = i - start;
      n++;
      start = i + FUZZ_SEP_LEN;
      i = start - 1;
    }
  }
  parts[n].p = data + start;
  parts[n].n = size - start;
  return n + 1;
}

/* A NUL-terminated copy of a part (the code under test takes C strings);
 * aborts when out of memory, which is no finding. */
static inline char *fuzz_strdup(struct fuzz_part part) {
  char *s = malloc(part.n + 1);
  if (s == NULL)
    abort();
  if (part.n > 0)
    memcpy(s, part.p, part.n);
  s[part.n] = '\0';
  return s;
}

/* What a target's input is about: when it starts with one of names[0..n)
 * followed by a newline (how the seeds name it: a message type, a method
 * path), that one; otherwise the first byte picks one. *rest is what
 * follows. Returns the index, or -1 for an empty input. */
static inline int fuzz_pick(const uint8_t *data, size_t size, const char *const *names, size_t n,
                            struct fuzz_part *rest) {
  if (size == 0 || n == 0)
    return -1;
  const uint8_t *nl = memchr(data, '\n', size);
  if (nl != NULL) {
    size_t len = (size_t)(nl - data);
    for (size_t i = 0; i < n; i++) {
      if (strlen(names[i]) == len && memcmp(names[i], data, len) == 0) {
        rest->p = nl + 1;
        rest->n = size - len - 1;
        return (int)i;
      }
    }
  }
  rest->p = data + 1;
  rest->n = size - 1;
  return (int)(data[0] % n);
}

/* An invariant of the code under test does not hold: a finding. */
#define FUZZ_ASSERT(cond)                                                                          \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #cond);            \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

#endif
