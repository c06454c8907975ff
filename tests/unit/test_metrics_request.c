/* Unit tests for the metrics endpoint's request parsing
 * (agent/metrics.c metrics_request_feed): the answer each request gets,
 * however its bytes arrive. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"

/* The answer to text fed in pieces of chunk bytes (0: all at once);
 * *head_only and *path (either may be NULL) as the request left them. */
static int answer(const char *text, size_t chunk, int *head_only, enum metrics_path *path) {
  struct metrics_request r;
  metrics_request_init(&r);
  size_t len = strlen(text), step = chunk ? chunk : len;
  int status = 0;
  for (size_t off = 0; off < len && status == 0; off += step)
    status = metrics_request_feed(&r, text + off, len - off < step ? len - off : step);
  if (head_only != NULL)
    *head_only = r.head_only;
  if (path != NULL)
    *path = r.path;
  return status;
}

static void test_answers(void **state) {
  static const struct {
    const char *request;
    int status;
    enum metrics_path path; /* when 200 */
  } cases[] = {
      {"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200, METRICS_PATH_METRICS},
      {"GET /metrics?x=1 HTTP/1.0\r\n\r\n", 200, METRICS_PATH_METRICS},
      {"GET http://127.0.0.1:9100/metrics HTTP/1.1\r\n\r\n", 200, METRICS_PATH_METRICS},
      {"HEAD /metrics HTTP/1.1\r\n\r\n", 200, METRICS_PATH_METRICS},
      {"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", 405, METRICS_PATH_METRICS},
      {"GET /metrics/x HTTP/1.1\r\n\r\n", 404, METRICS_PATH_METRICS},
      {"GET / HTTP/1.1\r\n\r\n", 404, METRICS_PATH_METRICS},
      {"hello\r\n\r\n", 400, METRICS_PATH_METRICS},
      {"GET /metrics HTTP/1.1\r\n", 0, METRICS_PATH_METRICS}, /* not complete yet */
      {"GET /healthz HTTP/1.1\r\n\r\n", 200, METRICS_PATH_HEALTHZ},
      {"HEAD /healthz?verbose HTTP/1.0\r\n\r\n", 200, METRICS_PATH_HEALTHZ},
      {"DELETE /healthz HTTP/1.1\r\n\r\n", 405, METRICS_PATH_HEALTHZ},
      {"GET /healthz/ HTTP/1.1\r\n\r\n", 404, METRICS_PATH_METRICS},
      {"GET /health HTTP/1.1\r\n\r\n", 404, METRICS_PATH_METRICS},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    for (size_t chunk = 0; chunk < 8; chunk++) {
      int head = -1;
      enum metrics_path path = METRICS_PATH_METRICS;
      assert_int_equal(answer(cases[i].request, chunk, &head, &path), cases[i].status);
      if (cases[i].status == 200) {
        assert_int_equal(head, strncmp(cases[i].request, "HEAD", 4) == 0);
        assert_int_equal(path, cases[i].path);
      }
    }
  }
}

static void test_oversized_head_is_431(void **state) {
  size_t n = 9000;
  char *req = malloc(n + 64);
  assert_non_null(req);
  strcpy(req, "GET /metrics HTTP/1.1\r\nX-Pad: ");
  size_t len = strlen(req);
  memset(req + len, 'a', n);
  req[len + n] = '\0';
  assert_int_equal(answer(req, 0, NULL, NULL), 431);
  assert_int_equal(answer(req, 100, NULL, NULL), 431);
  free(req);
}

static void test_one_request_then_nothing(void **state) {
  struct metrics_request r;
  metrics_request_init(&r);
  const char *two = "GET /nope HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n";
  assert_int_equal(metrics_request_feed(&r, two, strlen(two)), 404);
  assert_int_equal(metrics_request_feed(&r, "GET /metrics HTTP/1.1\r\n\r\n", 26), 404);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_answers),
      cmocka_unit_test(test_oversized_head_is_431),
      cmocka_unit_test(test_one_request_then_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
