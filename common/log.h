/* Logging: one line per event on stderr, "time level component: message".
 * Never pass secrets (keys, tokens, passphrases) to these functions. */
#ifndef TLSPLANE_COMMON_LOG_H
#define TLSPLANE_COMMON_LOG_H

#include <stddef.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_msg(enum log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_info(component, ...) log_msg(LOG_INFO, component, __VA_ARGS__)
#define log_warn(component, ...) log_msg(LOG_WARN, component, __VA_ARGS__)
#define log_error(component, ...) log_msg(LOG_ERROR, component, __VA_ARGS__)

/* A buffer size that holds one escaped field of a log line. */
#define LOG_ESCAPE_LEN 256

/* Writes the bytes s[0..len), text a client controls (a method path, an
 * agent's version or nack reason, a name in a TLS handshake), into buf
 * (cap bytes, at least 8) as text that is safe inside a log line and
 * inside double quotes: it cannot end the line, forge another, or close
 * the quotes. Printable ASCII stays as it is, except `"` and `\`, which
 * get a backslash; \n, \r and \t are written so; other control bytes and
 * every byte that is not part of valid UTF-8 become \xNN; valid UTF-8
 * stays, except C1 controls, U+2028/U+2029 and the bidirectional
 * controls, which become \u{XXXX}. What does not fit is cut at a
 * character and marked "...". s NULL: "". Returns buf. */
const char *log_escape(char *buf, size_t cap, const char *s, size_t len);

/* log_escape of a NUL-terminated string (NULL: ""). */
const char *log_escape_str(char *buf, size_t cap, const char *s);

#endif
