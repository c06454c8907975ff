/* The agent's metrics endpoint (agent/metrics.c): an HTTP request as a
 * client sends it, fed to metrics_request_feed in the pieces the first
 * byte says (as reads split it), parsed by libhttp-parser.
 *
 * What must hold: every request gets exactly one answer of the documented
 * set, and the same answer however its bytes are split; no request is
 * still undecided once more than 8 KiB have arrived; GET and HEAD of
 * /metrics and /healthz are the only 200s, and say which. */
#include "fuzz.h"
#include "metrics.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  return 0;
}

static int decide(const uint8_t *req, size_t len, size_t chunk) {
  struct metrics_request r;
  metrics_request_init(&r);
  int status = 0;
  for (size_t off = 0; off < len && status == 0; off += chunk) {
    size_t n = len - off < chunk ? len - off : chunk;
    status = metrics_request_feed(&r, (const char *)req + off, n);
    FUZZ_ASSERT(status == r.status);
  }
  if (status != 0) /* decided once and for all */
    FUZZ_ASSERT(metrics_request_feed(&r, "GET / HTTP/1.1\r\n\r\n", 18) == status);
  else
    FUZZ_ASSERT(r.seen <= 8192);
  if (status == 200) {
    FUZZ_ASSERT(r.parser.method == HTTP_GET || r.parser.method == HTTP_HEAD);
    FUZZ_ASSERT(r.head_only == (r.parser.method == HTTP_HEAD));
    FUZZ_ASSERT(r.path == METRICS_PATH_METRICS || r.path == METRICS_PATH_HEALTHZ);
    FUZZ_ASSERT(strstr(r.url, r.path == METRICS_PATH_HEALTHZ ? "/healthz" : "/metrics") != NULL);
  }
  return status;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  size_t chunk = (size_t)data[0] + 1;
  int whole = decide(data + 1, size - 1, size);
  int split = decide(data + 1, size - 1, chunk);
  FUZZ_ASSERT(whole == 0 || whole == 200 || whole == 400 || whole == 404 || whole == 405 ||
              whole == 431);
  /* The 8 KiB limit is judged per read: a request refused as too large in
   * one read may still be decided otherwise when it arrives in pieces. */
  if (whole != 431 && split != 431)
    FUZZ_ASSERT(whole == split);
  return 0;
}
