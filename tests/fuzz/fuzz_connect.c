/* The HTTP gateway's reading of a Connect request (server/connect.c): the
 * path that says whether a request is an RPC, the content type,
 * connect-timeout-ms, and the error body written with a message that may
 * hold anything a client sent (a name, a field). The first byte picks
 * the function, the second the status code; the rest is the input.
 *
 * What must hold: no crash or undefined behaviour; a path taken as an RPC
 * has the shape "/a.b/C" with only name characters; a parsed timeout is
 * the decimal value of at most 10 digits; an error body is always JSON
 * that jansson reads back, with the code's name and a message as long as
 * the one given. */
#include <jansson.h>

#include "connect.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

static void check_path(const char *p, size_t n) {
  if (!connect_rpc_path(p, n))
    return;
  size_t slashes = 0, dots = 0;
  for (size_t i = 0; i < n; i++) {
    slashes += p[i] == '/';
    dots += p[i] == '.';
  }
  if (p[0] != '/' || slashes != 2 || dots == 0 || p[n - 1] == '/')
    abort();
}

static void check_timeout(const char *p, size_t n) {
  int64_t ms = -1;
  if (connect_timeout_parse(p, n, &ms) != 0)
    return;
  if (n == 0 || n > 10 || ms < 0 || ms > 9999999999LL)
    abort();
  int64_t back = 0;
  for (size_t i = 0; i < n; i++)
    back = back * 10 + (p[i] - '0');
  if (back != ms)
    abort();
}

static void check_error(grpc_status_code code, const char *p, size_t n) {
  char *msg = malloc(n + 1);
  if (msg == NULL)
    return;
  memcpy(msg, p, n);
  msg[n] = '\0';
  char *text = connect_error_json(code, msg);
  if (text != NULL) {
    json_error_t e;
    json_t *o = json_loads(text, 0, &e);
    const char *c = json_string_value(json_object_get(o, "code"));
    const char *m = json_string_value(json_object_get(o, "message"));
    if (o == NULL || c == NULL || m == NULL || strcmp(c, connect_code_name(code)) != 0 ||
        strlen(m) != strlen(msg))
      abort();
    int http = connect_code_http(code);
    if (http < 200 || http > 599)
      abort();
    json_decref(o);
    free(text);
  }
  free(msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2)
    return 0;
  const char *p = (const char *)data + 2;
  size_t n = size - 2;
  switch (data[0] % 4) {
  case 0:
    check_path(p, n);
    break;
  case 1:
    (void)connect_content_type_json(p, n);
    break;
  case 2:
    check_timeout(p, n);
    break;
  default:
    check_error((grpc_status_code)(data[1] % 20), p, n);
  }
  return 0;
}
