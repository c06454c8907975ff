/* Logging to stderr, one write per line so that threads do not interleave,
 * as text or as JSON objects (jansson); optionally through a buffer and a
 * writer thread (log_async_start), and rate limits for lines that come in
 * floods (see log.h). */
#include "log.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The asynchronous writer: the logger's process context (stderr is the
 * process's). Between log_async_start and log_async_stop, lines are
 * appended to ring (whole lines only, never split) under lock and the
 * writer thread takes them out; lock is held only to copy bytes, never
 * across a write(2). */
static struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  pthread_t thread;
  int running;                /* lines go to the ring */
  int stopping;               /* the writer ends once the ring is empty */
  char *buf;                  /* LOG_ASYNC_BUFFER bytes */
  size_t head, len;           /* where the oldest waiting byte is; how many wait */
  unsigned long long dropped; /* lines that found the ring full, not yet reported */
} ring = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static size_t utf8_decode(const unsigned char *p, size_t n, unsigned *cp);

/* Whether s[0..len) is valid UTF-8 without NUL bytes (what a JSON string
 * can hold as it is). */
static int utf8_valid(const char *s, size_t len) {
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; i < len;) {
    unsigned cp;
    size_t step = p[i] < 0x80 ? (p[i] != 0) : utf8_decode(p + i, len - i, &cp);
    if (step == 0)
      return 0;
    i += step;
  }
  return 1;
}

/* The logger's settings (log.h): the process's, like stderr. Set at start,
 * read by every thread. */
static struct {
  _Atomic int level;  /* enum log_level: lines below it are not written */
  _Atomic int format; /* enum log_format */
} config = {LOG_INFO, LOG_FORMAT_TEXT};

static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* The longest message a line holds; what is longer is cut. */
#define LOG_MSG_MAX 2048
/* The longest line: a JSON one (escapes and fields) is longer than its
 * message; one that does not fit is written with its message cut and
 * without the fields (json_line). */
#define LOG_LINE_MAX 8192

/* "2026-01-02T03:04:05.678Z" into buf (at least 32 bytes). */
static void time_now(char *buf, size_t size) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf + n, size - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

static void kv_add(const char *key, const char *value, size_t len, void *data) {
  json_t *o = data;
  static const char *const reserved[] = {"time", "level", "component", "msg"};
  for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
    if (strcmp(key, reserved[i]) == 0)
      return;
  if (json_object_get(o, key) != NULL)
    return; /* the first one wins */
  /* A whole number is a number ("revision=12"), the rest strings. */
  size_t digits = len > 0 && value[0] == '-' ? 1 : 0;
  while (digits < len && value[digits] >= '0' && value[digits] <= '9')
    digits++;
  json_t *v = NULL;
  if (digits == len && len > 0 && len <= 18 && !(len == 1 && value[0] == '-'))
    v = json_integer(strtoll(value, NULL, 10));
  else
    v = json_stringn(value, len); /* NULL when not UTF-8: the field is left out */
  json_object_set_new(o, key, v);
}

/* The four fields every JSON line has. msg must be valid UTF-8. */
static json_t *json_base(const char *time, enum log_level level, const char *component,
                         const char *msg, size_t len) {
  json_t *o = json_object();
  if (o == NULL)
    return NULL;
  json_object_set_new(o, "time", json_string(time));
  json_object_set_new(o, "level", json_string(level_names[level]));
  json_object_set_new(o, "component", json_string(component));
  json_object_set_new(o, "msg", json_stringn(msg, len));
  return o;
}

/* One JSON line (with its '\n') into out (LOG_LINE_MAX bytes); its length, or
 * 0 when it cannot be made (out of memory). */
static size_t json_line(char *out, const char *time, enum log_level level, const char *component,
                        const char *msg) {
  char escaped[LOG_MSG_MAX];
  size_t len = strlen(msg);
  if (!utf8_valid(msg, len)) {
    /* Bytes that are not UTF-8 cannot be a JSON string: escaped as in a
     * text line (\xNN). */
    msg = log_escape(escaped, sizeof(escaped), msg, len);
    len = strlen(msg);
  }
  json_t *o = json_base(time, level, component, msg, len);
  if (o == NULL)
    return 0;
  log_kv_each(msg, kv_add, o);
  size_t n = json_dumpb(o, out, LOG_LINE_MAX - 1, JSON_COMPACT);
  json_decref(o);
  if (n == 0 || n > LOG_LINE_MAX - 1) {
    /* Too long: the message cut (at a character) so that even escaped
     * byte by byte it fits, and no fields. */
    size_t cut = len < LOG_MSG_MAX / 4 ? len : LOG_MSG_MAX / 4;
    while (cut > 0 && cut < len && ((unsigned char)msg[cut] & 0xc0) == 0x80)
      cut--;
    if ((o = json_base(time, level, component, msg, cut)) == NULL)
      return 0;
    n = json_dumpb(o, out, LOG_LINE_MAX - 1, JSON_COMPACT);
    json_decref(o);
    if (n == 0 || n > LOG_LINE_MAX - 1)
      return 0;
  }
  out[n++] = '\n';
  return n;
}

/* The line for msg in the format set, with its '\n', into out (LOG_LINE_MAX
 * bytes); its length. */
static size_t format_line(char *out, enum log_level level, const char *component, const char *msg) {
  char time[40];
  time_now(time, sizeof(time));
  if (atomic_load_explicit(&config.format, memory_order_relaxed) == LOG_FORMAT_JSON) {
    size_t n = json_line(out, time, level, component, msg);
    if (n > 0)
      return n;
    /* Out of memory: a text line rather than none. */
  }
  int n = snprintf(out, LOG_LINE_MAX - 1, "%s %s %s: %s", time, level_names[level], component, msg);
  size_t len = n < 0 ? 0 : (size_t)n < LOG_LINE_MAX - 1 ? (size_t)n : LOG_LINE_MAX - 2;
  out[len++] = '\n';
  return len;
}

static void write_all(const char *p, size_t len) {
  while (len > 0) {
    ssize_t w = write(STDERR_FILENO, p, len);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return; /* stderr is gone: nothing else can be done with the line */
    p += w;
    len -= (size_t)w;
  }
}

/* Appends a whole line, or drops it when it does not fit. Under lock. */
static void ring_put(const char *line, size_t n) {
  if (n > LOG_ASYNC_BUFFER - ring.len) {
    ring.dropped++;
    return;
  }
  size_t tail = (ring.head + ring.len) % LOG_ASYNC_BUFFER;
  size_t first = n < LOG_ASYNC_BUFFER - tail ? n : LOG_ASYNC_BUFFER - tail;
  memcpy(ring.buf + tail, line, first);
  memcpy(ring.buf, line + first, n - first);
  ring.len += n;
}

static void *ring_writer(void *arg) {
  /* What one write(2) takes out of the ring: whole lines, so that another
   * writer of stderr (a sanitizer report) never lands inside one. */
  static char chunk[64 * 1024];
  pthread_mutex_lock(&ring.lock);
  for (;;) {
    while (ring.len == 0 && ring.dropped == 0 && !ring.stopping)
      pthread_cond_wait(&ring.cond, &ring.lock);
    if (ring.len == 0 && ring.dropped == 0)
      break; /* stopping, and everything is out */
    size_t n = ring.len < sizeof(chunk) ? ring.len : sizeof(chunk);
    size_t first = n < LOG_ASYNC_BUFFER - ring.head ? n : LOG_ASYNC_BUFFER - ring.head;
    memcpy(chunk, ring.buf + ring.head, first);
    memcpy(chunk + first, ring.buf, n - first);
    while (n > 0 && chunk[n - 1] != '\n')
      n--; /* lines end in '\n' and are shorter than chunk: n > 0 unless len was 0 */
    ring.head = (ring.head + n) % LOG_ASYNC_BUFFER;
    ring.len -= n;
    unsigned long long dropped = ring.dropped;
    ring.dropped = 0;
    pthread_mutex_unlock(&ring.lock);
    write_all(chunk, n);
    if (dropped > 0) {
      char msg[128], line[LOG_LINE_MAX];
      snprintf(msg, sizeof(msg), "%llu log lines dropped: stderr did not take them fast enough",
               dropped);
      write_all(line, format_line(line, LOG_WARN, "log", msg));
    }
    pthread_mutex_lock(&ring.lock);
  }
  pthread_mutex_unlock(&ring.lock);
  return NULL;
}

int log_async_start(void) {
  pthread_mutex_lock(&ring.lock);
  int rc = 0;
  if (ring.running)
    goto done;
  if (ring.buf == NULL && (ring.buf = malloc(LOG_ASYNC_BUFFER)) == NULL) {
    rc = -ENOMEM;
    goto done;
  }
  ring.head = ring.len = 0;
  ring.dropped = 0;
  ring.stopping = 0;
  rc = -pthread_create(&ring.thread, NULL, ring_writer, NULL);
  if (rc == 0)
    ring.running = 1;
done:
  pthread_mutex_unlock(&ring.lock);
  return rc;
}

void log_async_stop(void) {
  pthread_mutex_lock(&ring.lock);
  if (!ring.running) {
    pthread_mutex_unlock(&ring.lock);
    return;
  }
  ring.stopping = 1;
  pthread_cond_signal(&ring.cond);
  pthread_mutex_unlock(&ring.lock);
  pthread_join(ring.thread, NULL);
  pthread_mutex_lock(&ring.lock);
  ring.running = 0;
  free(ring.buf);
  ring.buf = NULL;
  pthread_mutex_unlock(&ring.lock);
}

void log_msg(enum log_level level, const char *component, const char *fmt, ...) {
  if (!log_enabled(level))
    return;
  char msg[LOG_MSG_MAX], line[LOG_LINE_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  size_t n = format_line(line, level, component, msg);
  pthread_mutex_lock(&ring.lock);
  if (ring.running && !ring.stopping) {
    ring_put(line, n);
    pthread_cond_signal(&ring.cond);
    pthread_mutex_unlock(&ring.lock);
    return;
  }
  pthread_mutex_unlock(&ring.lock);
  write_all(line, n);
}

void log_level_set(enum log_level level) {
  atomic_store(&config.level, (int)level);
}

enum log_level log_level_get(void) {
  return (enum log_level)atomic_load(&config.level);
}

void log_format_set(enum log_format format) {
  atomic_store(&config.format, (int)format);
}

enum log_format log_format_get(void) {
  return (enum log_format)atomic_load(&config.format);
}

int log_enabled(enum log_level level) {
  return (int)level >= atomic_load_explicit(&config.level, memory_order_relaxed);
}

int log_level_parse(const char *text, enum log_level *out) {
  for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
    if (strcmp(text, level_names[i]) == 0) {
      *out = (enum log_level)i;
      return 0;
    }
  }
  if (strcmp(text, "warning") == 0) {
    *out = LOG_WARN;
    return 0;
  }
  return -EINVAL;
}

int log_format_parse(const char *text, enum log_format *out) {
  if (strcmp(text, "text") == 0)
    *out = LOG_FORMAT_TEXT;
  else if (strcmp(text, "json") == 0)
    *out = LOG_FORMAT_JSON;
  else
    return -EINVAL;
  return 0;
}

const char *log_level_name(enum log_level level) {
  return (unsigned)level < sizeof(level_names) / sizeof(level_names[0]) ? level_names[level] : "?";
}

static int key_char(char c, int first) {
  return (c >= 'a' && c <= 'z') || (!first && ((c >= '0' && c <= '9') || c == '_'));
}

size_t log_kv_each(const char *msg,
                   void (*cb)(const char *key, const char *value, size_t len, void *data),
                   void *data) {
  char key[33], value[LOG_MSG_MAX];
  size_t found = 0;
  for (const char *p = msg; *p != '\0';) {
    int word_start = p == msg || p[-1] == ' ' || p[-1] == '(';
    if (!word_start || !key_char(*p, 1)) {
      p++;
      continue;
    }
    const char *k = p;
    while (key_char(*p, 0))
      p++;
    if (*p != '=' || (size_t)(p - k) >= sizeof(key))
      continue;
    memcpy(key, k, (size_t)(p - k));
    key[p - k] = '\0';
    p++;
    size_t len = 0;
    if (*p == '"') {
      /* As log_escape wrote it: up to the first '"' without a backslash. */
      for (p++; *p != '\0' && *p != '"'; p++) {
        char c = *p;
        if (c == '\\' && p[1] != '\0') {
          char e = p[1];
          c = e == 'n' ? '\n' : e == 'r' ? '\r' : e == 't' ? '\t' : e;
          if (e == 'n' || e == 'r' || e == 't' || e == '"' || e == '\\')
            p++;
          else
            c = '\\'; /* \xNN, \u{...}: kept as written */
        }
        if (len < sizeof(value) - 1)
          value[len++] = c;
      }
      if (*p == '"')
        p++;
    } else {
      const char *v = p;
      while (*p != '\0' && *p != ' ')
        p++;
      size_t n = (size_t)(p - v);
      while (n > 0 && strchr(",;:)", v[n - 1]) != NULL)
        n--;
      len = n < sizeof(value) - 1 ? n : sizeof(value) - 1;
      memcpy(value, v, len);
    }
    value[len] = '\0';
    cb(key, value, len, data);
    found++;
  }
  return found;
}

int log_limit_allow(struct log_limit *l, uint64_t now_ms, unsigned long long *suppressed) {
  uint64_t end = atomic_load_explicit(&l->window_end, memory_order_relaxed);
  if (end == 0 || now_ms >= end) {
    /* A new window: whoever moves window_end on also resets the count. */
    if (atomic_compare_exchange_strong(&l->window_end, &end, now_ms + LOG_LIMIT_WINDOW_MS))
      atomic_store_explicit(&l->count, 0, memory_order_relaxed);
  }
  unsigned burst = l->burst > 0 ? l->burst : LOG_LIMIT_BURST;
  if (atomic_fetch_add_explicit(&l->count, 1, memory_order_relaxed) >= burst) {
    atomic_fetch_add_explicit(&l->suppressed, 1, memory_order_relaxed);
    return 0;
  }
  *suppressed = atomic_exchange_explicit(&l->suppressed, 0, memory_order_relaxed);
  return 1;
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
