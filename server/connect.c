/* The Connect protocol's unary form (see connect.h). */
#include "connect.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const struct {
  const char *name;
  int http;
} codes[] = {
    [GRPC_STATUS_OK] = {"ok", 200},
    [GRPC_STATUS_CANCELLED] = {"canceled", 499},
    [GRPC_STATUS_UNKNOWN] = {"unknown", 500},
    [GRPC_STATUS_INVALID_ARGUMENT] = {"invalid_argument", 400},
    [GRPC_STATUS_DEADLINE_EXCEEDED] = {"deadline_exceeded", 504},
    [GRPC_STATUS_NOT_FOUND] = {"not_found", 404},
    [GRPC_STATUS_ALREADY_EXISTS] = {"already_exists", 409},
    [GRPC_STATUS_PERMISSION_DENIED] = {"permission_denied", 403},
    [GRPC_STATUS_RESOURCE_EXHAUSTED] = {"resource_exhausted", 429},
    [GRPC_STATUS_FAILED_PRECONDITION] = {"failed_precondition", 400},
    [GRPC_STATUS_ABORTED] = {"aborted", 409},
    [GRPC_STATUS_OUT_OF_RANGE] = {"out_of_range", 400},
    [GRPC_STATUS_UNIMPLEMENTED] = {"unimplemented", 501},
    [GRPC_STATUS_INTERNAL] = {"internal", 500},
    [GRPC_STATUS_UNAVAILABLE] = {"unavailable", 503},
    [GRPC_STATUS_DATA_LOSS] = {"data_loss", 500},
    [GRPC_STATUS_UNAUTHENTICATED] = {"unauthenticated", 401},
};

static grpc_status_code known(grpc_status_code code) {
  return (unsigned)code < sizeof(codes) / sizeof(codes[0]) ? code : GRPC_STATUS_UNKNOWN;
}

const char *connect_code_name(grpc_status_code code) {
  return codes[known(code)].name;
}

int connect_code_http(grpc_status_code code) {
  return codes[known(code)].http;
}

static int name_char(char ch) {
  return ch == '_' || (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
         (ch >= 'A' && ch <= 'Z');
}

int connect_rpc_path(const char *p, size_t len) {
  if (len < 4 || p[0] != '/')
    return 0;
  size_t i = 1, dots = 0;
  for (; i < len && p[i] != '/'; i++) {
    if (p[i] == '.')
      dots++;
    else if (!name_char(p[i]))
      return 0;
  }
  if (dots == 0 || i == 1 || i + 1 >= len || p[1] == '.' || p[i - 1] == '.')
    return 0;
  for (size_t j = i + 1; j < len; j++)
    if (!name_char(p[j]))
      return 0;
  return 1;
}

int connect_content_type_json(const char *v, size_t len) {
  static const char json[] = "application/json";
  size_t n = 0;
  while (n < len && v[n] != ';' && v[n] != ' ' && v[n] != '\t')
    n++;
  return n == sizeof(json) - 1 && strncasecmp(v, json, n) == 0;
}

int connect_timeout_parse(const char *v, size_t len, int64_t *ms) {
  if (len == 0 || len > 10)
    return -1;
  int64_t x = 0;
  for (size_t i = 0; i < len; i++) {
    if (v[i] < '0' || v[i] > '9')
      return -1;
    x = x * 10 + (v[i] - '0');
  }
  *ms = x;
  return 0;
}

/* The length of the UTF-8 sequence at s (n bytes left), 0 if it is not
 * one: RFC 3629 (no overlongs, surrogates or code points past U+10FFFF). */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len = c < 0x80                 ? 1
               : c >= 0xc2 && c <= 0xdf ? 2
               : c >= 0xe0 && c <= 0xef ? 3
               : c >= 0xf0 && c <= 0xf4 ? 4
                                        : 0;
  if (len == 0 || len > n)
    return 0;
  for (size_t i = 1; i < len; i++)
    if ((s[i] & 0xc0) != 0x80)
      return 0;
  if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f) || (c == 0xf0 && s[1] < 0x90) ||
      (c == 0xf4 && s[1] > 0x8f))
    return 0;
  return len;
}

char *connect_error_json(grpc_status_code code, const char *msg) {
  size_t n = msg != NULL ? strlen(msg) : 0;
  char *clean = malloc(n + 1);
  if (clean == NULL)
    return NULL;
  for (size_t i = 0; i < n;) {
    size_t k = utf8_len((const unsigned char *)msg + i, n - i);
    if (k == 0) {
      clean[i++] = '?';
      continue;
    }
    memcpy(clean + i, msg + i, k);
    i += k;
  }
  clean[n] = '\0';
  json_t *o = json_pack("{s:s,s:s}", "code", connect_code_name(code), "message", clean);
  free(clean);
  char *text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  return text;
}
