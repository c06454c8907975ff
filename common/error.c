/* The API error out-parameter. */
#include "error.h"

#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* A message cut at the end of the buffer may end inside a UTF-8 sequence;
 * the cut sequence goes, so that a message made of UTF-8 stays UTF-8 (it
 * travels in gRPC statuses and in an agent's nacks, which must be). */
static void utf8_trim_cut(char *s, size_t cap) {
  size_t n = strlen(s);
  if (n + 1 < cap)
    return; /* not cut */
  size_t i = n, cont = 0;
  while (i > 0 && cont < 3 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) {
    i--;
    cont++;
  }
  if (i == 0)
    return;
  unsigned char lead = (unsigned char)s[i - 1];
  size_t want = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
  if (want > 1 && cont + 1 < want)
    s[i - 1] = '\0';
}

int tp_err_set(struct tp_err *err, grpc_status_code status, const char *fmt, ...) {
  if (err == NULL)
    return -1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
  va_end(ap);
  utf8_trim_cut(err->msg, sizeof(err->msg));
  err->status = status;
  return -1;
}

void tp_err_prefix(struct tp_err *err, const char *prefix) {
  if (err == NULL || prefix == NULL || prefix[0] == '\0')
    return;
  char tmp[sizeof(err->msg)];
  snprintf(tmp, sizeof(tmp), "%s%s", prefix, err->msg);
  memcpy(err->msg, tmp, sizeof(err->msg));
  utf8_trim_cut(err->msg, sizeof(err->msg));
}

void tp_err_append_openssl(struct tp_err *err) {
  unsigned long code;
  const char *data;
  int flags;
  while ((code = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
    if (err == NULL)
      continue;
    size_t len = strlen(err->msg);
    char reason[256];
    ERR_error_string_n(code, reason, sizeof(reason));
    const char *r = ERR_reason_error_string(code);
    snprintf(err->msg + len, sizeof(err->msg) - len, "; %s%s%s", r ? r : reason,
             (flags & ERR_TXT_STRING) && data[0] ? ": " : "", (flags & ERR_TXT_STRING) ? data : "");
    utf8_trim_cut(err->msg, sizeof(err->msg));
  }
}
