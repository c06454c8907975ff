/* Logging to stderr, one write per line so that threads do not interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void log_msg(enum log_level level, const char *component, const char *fmt, ...) {
  static const char *const names[] = {"debug", "info", "warn", "error"};
  char line[2048];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = (int)strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
  n += snprintf(line + n, sizeof(line) - (size_t)n, ".%03ldZ %s %s: ", ts.tv_nsec / 1000000,
                names[level], component);
  va_list ap;
  va_start(ap, fmt);
  if (n < (int)sizeof(line))
    n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
  va_end(ap);
  if (n > (int)sizeof(line) - 2)
    n = (int)sizeof(line) - 2;
  line[n++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, (size_t)n);
  (void)w;
}

/* The length of the valid UTF-8 sequence at p[0..n) and its code point,
 * or 0 when it is not one (overlong, surrogate, beyond U+10FFFF, cut). */
static size_t utf8_decode(const unsigned char *p, size_t n, unsigned *cp) {
  size_t len;
  unsigned min;
  if (p[0] >= 0xc2 && p[0] <= 0xdf) {
    len = 2, min = 0x80, *cp = p[0] & 0x1f;
  } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
    len = 3, min = 0x800, *cp = p[0] & 0x0f;
  } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
    len = 4, min = 0x10000, *cp = p[0] & 0x07;
  } else {
    return 0;
  }
  if (len > n)
    return 0;
  for (size_t i = 1; i < len; i++) {
    if ((p[i] & 0xc0) != 0x80)
      return 0;
    *cp = (*cp << 6) | (p[i] & 0x3f);
  }
  if (*cp < min || *cp > 0x10ffff || (*cp >= 0xd800 && *cp <= 0xdfff))
    return 0;
  return len;
}

/* Code points that a terminal or a log viewer may take as a line break or
 * that reorder what is shown. */
static int codepoint_hidden(unsigned cp) {
  return cp < 0xa0 || cp == 0x2028 || cp == 0x2029 || (cp >= 0x202a && cp <= 0x202e) ||
         (cp >= 0x2066 && cp <= 0x2069) || cp == 0x200e || cp == 0x200f || cp == 0x061c;
}

const char *log_escape(char *buf, size_t cap, const char *s, size_t len) {
  static const char ellipsis[] = "...";
  const size_t elen = sizeof(ellipsis) - 1;
  if (cap == 0)
    return buf;
  const unsigned char *p = (const unsigned char *)s;
  if (s == NULL)
    len = 0;
  size_t room = cap - 1; /* the NUL */
  size_t out = 0;
  size_t keep = 0; /* the last piece boundary with room for the ellipsis after it */
  for (size_t i = 0; i < len;) {
    char piece[16];
    size_t plen, step = 1;
    unsigned cp;
    unsigned char ch = p[i];
    if (ch == '"' || ch == '\\') {
      piece[0] = '\\', piece[1] = (char)ch, plen = 2;
    } else if (ch == '\n' || ch == '\r' || ch == '\t') {
      piece[0] = '\\', piece[1] = ch == '\n' ? 'n' : ch == '\r' ? 'r' : 't', plen = 2;
    } else if (ch >= 0x20 && ch < 0x7f) {
      piece[0] = (char)ch, plen = 1;
    } else if (ch >= 0x80 && (step = utf8_decode(p + i, len - i, &cp)) != 0) {
      if (codepoint_hidden(cp)) {
        plen = (size_t)snprintf(piece, sizeof(piece), "\\u{%04X}", cp);
      } else {
        memcpy(piece, p + i, step);
        plen = step;
      }
    } else {
      step = 1;
      plen = (size_t)snprintf(piece, sizeof(piece), "\\x%02X", ch);
    }
    if (out + plen > room) {
      out = keep;
      size_t e = room - out < elen ? room - out : elen;
      memcpy(buf + out, ellipsis, e);
      out += e;
      break;
    }
    memcpy(buf + out, piece, plen);
    out += plen;
    i += step;
    if (out + elen <= room)
      keep = out;
  }
  buf[out] = '\0';
  return buf;
}

const char *log_escape_str(char *buf, size_t cap, const char *s) {
  return log_escape(buf, cap, s, s != NULL ? strlen(s) : 0);
}
