/* Logging to stderr, one write per line so that threads do not interleave;
 * optionally through a buffer and a writer thread (log_async_start), and
 * rate limits for lines that come in floods (see log.h). */
#include "log.h"

#include <errno.h>
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

/* "2026-01-02T03:04:05.678Z level component: " into line; its length. */
static int line_prefix(char *line, size_t size, enum log_level level, const char *component) {
  static const char *const names[] = {"debug", "info", "warn", "error"};
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = (int)strftime(line, size, "%Y-%m-%dT%H:%M:%S", &tm);
  n += snprintf(line + n, size - (size_t)n, ".%03ldZ %s %s: ", ts.tv_nsec / 1000000, names[level],
                component);
  return n < (int)size ? n : (int)size - 1;
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
      char line[256];
      int k = line_prefix(line, sizeof(line), LOG_WARN, "log");
      k += snprintf(line + k, sizeof(line) - (size_t)k,
                    "%llu log lines dropped: stderr did not take them fast enough\n", dropped);
      write_all(line, (size_t)k < sizeof(line) ? (size_t)k : sizeof(line) - 1);
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
  char line[2048];
  int n = line_prefix(line, sizeof(line), level, component);
  va_list ap;
  va_start(ap, fmt);
  if (n < (int)sizeof(line))
    n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
  va_end(ap);
  if (n > (int)sizeof(line) - 2)
    n = (int)sizeof(line) - 2;
  line[n++] = '\n';
  pthread_mutex_lock(&ring.lock);
  if (ring.running && !ring.stopping) {
    ring_put(line, (size_t)n);
    pthread_cond_signal(&ring.cond);
    pthread_mutex_unlock(&ring.lock);
    return;
  }
  pthread_mutex_unlock(&ring.lock);
  write_all(line, (size_t)n);
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
