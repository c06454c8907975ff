/* Logging: one line per event on stderr, in one of two formats:
 *
 *   text  2026-01-02T03:04:05.678Z info agent: listener=listeners/web client=...
 *   json  {"time":"2026-01-02T03:04:05.678Z","level":"info","component":"agent",
 *          "msg":"listener=listeners/web client=...","listener":"listeners/web",...}
 *
 * A JSON line is one object (jansson): time (UTC, milliseconds), level,
 * component and msg, the text line's message as it is, then every
 * key=value word of the message as a field of its own (log_kv_each).
 * Lines below the level set (log_level_set; info by default) are not
 * written. Never pass secrets (keys, tokens, passphrases) to these
 * functions.
 *
 * By default each line is one write(2) by the caller. A process whose
 * threads must never block on stderr (the agent's workers) calls
 * log_async_start: lines then go to a bounded buffer that a thread of the
 * logger's own writes out; see below. Lines of one kind that can come in
 * floods (one per failed client connection) go through a struct
 * log_limit. */
#ifndef TLSPLANE_COMMON_LOG_H
#define TLSPLANE_COMMON_LOG_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_FORMAT_TEXT, LOG_FORMAT_JSON };

void log_msg(enum log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(component, ...) log_msg(LOG_DEBUG, component, __VA_ARGS__)
#define log_info(component, ...) log_msg(LOG_INFO, component, __VA_ARGS__)
#define log_warn(component, ...) log_msg(LOG_WARN, component, __VA_ARGS__)
#define log_error(component, ...) log_msg(LOG_ERROR, component, __VA_ARGS__)

/* The logger's settings: part of the process context, set once at start
 * (after the command line is read, before threads log), read by every
 * log_msg. */
void log_level_set(enum log_level level);
enum log_level log_level_get(void);
void log_format_set(enum log_format format);
enum log_format log_format_get(void);
/* Whether a line at level would be written now: lets a caller skip work
 * that only a line needs. */
int log_enabled(enum log_level level);

/* "debug", "info", "warn" (or "warning"), "error": 0 and *out set; -EINVAL
 * for anything else. */
int log_level_parse(const char *text, enum log_level *out);
/* "text", "json": 0 and *out set; -EINVAL for anything else. */
int log_format_parse(const char *text, enum log_format *out);
/* The name of a level as lines show it ("warn"). */
const char *log_level_name(enum log_level level);

/* Calls cb for every key=value word of msg, in order: a key (a lower-case
 * letter, then lower-case letters, digits and '_', at most 32) at the start
 * of msg or after a space or '(', then '=', then the value: a quoted one
 * ("...", as log_escape writes them; \" \\ \n \r \t are undone, the other
 * escapes stay as they are) or the bytes up to the next space, without a
 * trailing ',', ';', ':' or ')'. value is NUL-terminated in a buffer of the
 * walker's, valid during the call only. Returns how many pairs it found. */
size_t log_kv_each(const char *msg,
                   void (*cb)(const char *key, const char *value, size_t len, void *data),
                   void *data);

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

/* From now on log_msg copies each line into a buffer of LOG_ASYNC_BUFFER
 * bytes and returns; a thread of the logger writes the buffer to stderr.
 * So a full pipe or a slow terminal on stderr never blocks a caller: when
 * the buffer is full the line is dropped, counted, and the writer says
 * "N log lines dropped" once it can. Lines keep the order they were logged
 * in. Returns 0, or a negative errno when the thread cannot start (lines
 * are then written synchronously, as before). Call once, from one thread. */
int log_async_start(void);
/* Writes out what the buffer holds, stops the thread, and goes back to
 * synchronous writes. A no-op when not started. */
void log_async_stop(void);

#define LOG_ASYNC_BUFFER (256 * 1024)

/* How often one kind of line may be written: at most burst lines (0:
 * LOG_LIMIT_BURST) per LOG_LIMIT_WINDOW_MS; the others are counted, and the
 * next line written says how many were left out. Zero-initialized (calloc,
 * = {0}, or = {.burst = N});
 * threads may share one (atomics: a race lets at most a line or two more
 * through a window). */
#define LOG_LIMIT_BURST 5
#define LOG_LIMIT_WINDOW_MS 1000

struct log_limit {
  atomic_uint_fast64_t window_end; /* now_ms at which the current window ends; 0: none yet */
  atomic_uint count;               /* lines asked for in the current window */
  atomic_ullong suppressed;        /* lines left out since the last one written */
  unsigned burst;                  /* lines per window; 0: LOG_LIMIT_BURST */
};

/* Whether a line of this kind may be written now. now_ms: a monotonic
 * clock in milliseconds (uv_now). When it returns 1, *suppressed is the
 * number of lines left out since the last one written (say it in the
 * line); when it returns 0 the line is counted as left out. */
int log_limit_allow(struct log_limit *l, uint64_t now_ms, unsigned long long *suppressed);

#endif
