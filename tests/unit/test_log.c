/* Unit tests for common/log.c.
 *
 * log_escape: what a client sends cannot end a log line, forge another, or
 * close a quoted field, and is cut at a character, never inside an escape.
 *
 * The rate limit of a kind of line (log_limit_allow: a burst per window,
 * the count of lines left out given with the next one written) and the
 * asynchronous writer (a caller never waits for stderr: with stderr a full
 * pipe nobody reads, ten thousand lines are logged at once; the ones the
 * buffer cannot hold are dropped and said to be, and every line is
 * accounted for).
 *
 * Levels and formats: lines below the level set are not written; a JSON
 * line is one object with time, level, component, msg and the key=value
 * words of the message, whatever bytes the message holds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static const char *esc(const char *s, size_t len) {
  static char buf[LOG_ESCAPE_LEN];
  return log_escape(buf, sizeof(buf), s, len);
}

#define ESC(lit) esc(lit, sizeof(lit) - 1)

static void test_plain_text_is_kept(void **state) {
  (void)state;
  assert_string_equal(ESC("agents/edge-1 version 1.2.3"), "agents/edge-1 version 1.2.3");
  assert_string_equal(esc(NULL, 5), "");
  char buf[16];
  assert_string_equal(log_escape_str(buf, sizeof(buf), NULL), "");
}

static void test_line_breaks_and_quotes_are_escaped(void **state) {
  (void)state;
  assert_string_equal(ESC("bad\n2026-01-01T00:00:00.000Z error hub: forged"),
                      "bad\\n2026-01-01T00:00:00.000Z error hub: forged");
  assert_string_equal(ESC("a\rb\tc"), "a\\rb\\tc");
  assert_string_equal(ESC("say \"hi\" \\ bye"), "say \\\"hi\\\" \\\\ bye");
  assert_string_equal(ESC("nul\0esc\x1b[31mdel\x7f"), "nul\\x00esc\\x1B[31mdel\\x7F");
}

static void test_utf8_kept_unless_invalid_or_hidden(void **state) {
  (void)state;
  assert_string_equal(ESC("Z\xc3\xbcrich \xe2\x82\xac \xf0\x9f\x94\x91"),
                      "Z\xc3\xbcrich \xe2\x82\xac \xf0\x9f\x94\x91");
  /* Not UTF-8: a lone byte, an overlong '/', a surrogate, a cut sequence. */
  assert_string_equal(ESC("\xff"), "\\xFF");
  assert_string_equal(ESC("\xc0\xaf"), "\\xC0\\xAF");
  assert_string_equal(ESC("\xed\xa0\x80"), "\\xED\\xA0\\x80");
  assert_string_equal(ESC("ok\xe2\x82"), "ok\\xE2\\x82");
  /* NEL (a C1 control), the line separator, a bidirectional override. */
  assert_string_equal(ESC("a\xc2\x85z"), "a\\u{0085}z");
  assert_string_equal(ESC("a\xe2\x80\xa8z"), "a\\u{2028}z");
  assert_string_equal(ESC("a\xe2\x80\xaez"), "a\\u{202E}z");
}

static void test_cut_at_a_character_with_an_ellipsis(void **state) {
  (void)state;
  char buf[12];
  assert_string_equal(log_escape_str(buf, sizeof(buf), "0123456789abcdef"), "01234567...");
  assert_string_equal(log_escape_str(buf, sizeof(buf), "0123456789a"), "0123456789a");
  /* An escape is never split. */
  assert_string_equal(log_escape_str(buf, sizeof(buf), "012345\n\n\n"), "012345\\n...");
  assert_string_equal(log_escape_str(buf, sizeof(buf), "0123\xff\xff"), "0123\\xFF...");
  /* Nor is a UTF-8 character. */
  assert_string_equal(log_escape_str(buf, sizeof(buf), "0123456\xe2\x82\xac\xe2\x82\xac"),
                      "0123456...");
  char tiny[8];
  assert_string_equal(log_escape_str(tiny, sizeof(tiny), "\n\n\n\n\n\n"), "\\n\\n...");
  assert_true(strlen(log_escape_str(tiny, sizeof(tiny), "xxxxxxxxxxxxxxxx")) < sizeof(tiny));
}

static void test_limit_burst_then_suppressed_count(void **state) {
  struct log_limit l = {0};
  unsigned long long suppressed = 99;
  uint64_t t = 1000000;
  for (int i = 0; i < LOG_LIMIT_BURST; i++) {
    assert_int_equal(log_limit_allow(&l, t + (uint64_t)i, &suppressed), 1);
    assert_int_equal(suppressed, 0);
  }
  /* The rest of the window: left out, counted. */
  for (int i = 0; i < 1000; i++)
    assert_int_equal(log_limit_allow(&l, t + 10, &suppressed), 0);
  assert_int_equal(log_limit_allow(&l, t + LOG_LIMIT_WINDOW_MS - 1, &suppressed), 0);
  /* The next window: the first line says how many were left out. */
  assert_int_equal(log_limit_allow(&l, t + LOG_LIMIT_WINDOW_MS, &suppressed), 1);
  assert_int_equal(suppressed, 1001);
  assert_int_equal(log_limit_allow(&l, t + LOG_LIMIT_WINDOW_MS + 1, &suppressed), 1);
  assert_int_equal(suppressed, 0);
}

static void test_limit_burst_of_its_own(void **state) {
  struct log_limit l = {.burst = 20};
  unsigned long long suppressed;
  for (int i = 0; i < 20; i++)
    assert_int_equal(log_limit_allow(&l, 7000, &suppressed), 1);
  assert_int_equal(log_limit_allow(&l, 7001, &suppressed), 0);
  assert_int_equal(log_limit_allow(&l, 7000 + LOG_LIMIT_WINDOW_MS, &suppressed), 1);
  assert_int_equal(suppressed, 1);
}

static void test_limit_bounds_lines_of_a_flood(void **state) {
  /* 100,000 events over 10 s of clock: at most a burst per window are
   * written, and written + suppressed reported = every event but those
   * still waiting to be reported. */
  struct log_limit l = {0};
  unsigned long long suppressed, reported = 0;
  int written = 0;
  const int events = 100000;
  for (int i = 0; i < events; i++) {
    if (log_limit_allow(&l, 5000 + (uint64_t)i / 10, &suppressed)) {
      written++;
      reported += suppressed;
    }
  }
  assert_true(written <= LOG_LIMIT_BURST * (10000 / LOG_LIMIT_WINDOW_MS + 1));
  assert_true(written >= LOG_LIMIT_BURST * (10000 / LOG_LIMIT_WINDOW_MS));
  unsigned long long pending = atomic_load(&l.suppressed);
  assert_int_equal((unsigned long long)written + reported + pending, (unsigned long long)events);
}

/* Reads the pipe until EOF into a growing buffer. */
struct reader {
  int fd;
  char *buf;
  size_t len, cap;
};

static void *read_all(void *arg) {
  struct reader *r = arg;
  for (;;) {
    if (r->cap - r->len < 65536) {
      r->cap = r->cap ? r->cap * 2 : 1 << 20;
      r->buf = realloc(r->buf, r->cap + 1);
      if (r->buf == NULL)
        abort();
    }
    ssize_t n = read(r->fd, r->buf + r->len, r->cap - r->len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    r->len += (size_t)n;
  }
  r->buf[r->len] = '\0';
  return NULL;
}

static void test_async_never_blocks_and_counts_what_it_drops(void **state) {
  int p[2];
  assert_int_equal(pipe(p), 0);
  /* Fill the pipe: whoever writes to it next waits for a reader. */
  int flags = fcntl(p[1], F_GETFL);
  assert_int_equal(fcntl(p[1], F_SETFL, flags | O_NONBLOCK), 0);
  char junk[4096];
  memset(junk, '#', sizeof(junk));
  size_t filled = 0;
  for (;;) {
    ssize_t n = write(p[1], junk, sizeof(junk));
    if (n < 0)
      break;
    filled += (size_t)n;
  }
  assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
  assert_int_equal(fcntl(p[1], F_SETFL, flags), 0);
  int saved = dup(STDERR_FILENO);
  assert_true(saved >= 0);
  assert_int_equal(dup2(p[1], STDERR_FILENO), STDERR_FILENO);
  close(p[1]);

  assert_int_equal(log_async_start(), 0);
  /* Were a line written synchronously, this loop would block on the
   * first one for good: the alarm ends the test instead. */
  alarm(60);
  const int lines = 10000;
  for (int i = 0; i < lines; i++)
    log_info("test", "line %d of a flood nobody reads", i);
  alarm(0);

  /* Now read: the writer goes on, the buffer empties, the drop is said. */
  struct reader r = {.fd = p[0]};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, read_all, &r), 0);
  log_async_stop();
  assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO); /* the pipe's last writer gone */
  close(saved);
  pthread_join(t, NULL);
  close(p[0]);

  assert_true(r.len > filled);
  int seen = 0, next = 0;
  for (const char *s = r.buf; (s = strstr(s, "test: line ")) != NULL; s++) {
    int n = atoi(s + strlen("test: line "));
    assert_true(n >= next); /* in order */
    next = n + 1;
    seen++;
  }
  /* Every report of dropped lines (one after each write that found some). */
  const char *said = " log lines dropped: stderr did not take them fast enough";
  int dropped = 0;
  for (const char *d = r.buf; (d = strstr(d, said)) != NULL; d += strlen(said)) {
    const char *n = d;
    while (n > r.buf && n[-1] >= '0' && n[-1] <= '9')
      n--;
    dropped += atoi(n);
  }
  assert_true(seen > 0);
  assert_true(dropped > 0);
  assert_int_equal(seen + dropped, lines);
  /* The line that says so is a whole log line of its own. */
  assert_non_null(strstr(r.buf, "Z warn log: "));
  free(r.buf);

  /* Stopped: lines are written synchronously again. */
  log_info("test", "after the stop");
}

/* What fn writes to stderr (lines written synchronously, fewer than a
 * pipe holds), caught in a pipe. Caller frees. */
static char *captured(void (*fn)(void)) {
  int p[2];
  assert_int_equal(pipe(p), 0);
  int saved = dup(STDERR_FILENO);
  assert_true(saved >= 0);
  assert_int_equal(dup2(p[1], STDERR_FILENO), STDERR_FILENO);
  close(p[1]);
  fn();
  assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
  close(saved);
  struct reader r = {.fd = p[0]};
  read_all(&r);
  close(p[0]);
  return r.buf;
}

static void log_each_level(void) {
  log_msg(LOG_DEBUG, "test", "at debug");
  log_info("test", "at info");
  log_warn("test", "at warn");
  log_error("test", "at error");
}

static void test_level_leaves_out_what_is_below(void **state) {
  log_level_set(LOG_WARN);
  assert_false(log_enabled(LOG_INFO));
  assert_true(log_enabled(LOG_ERROR));
  char *out = captured(log_each_level);
  log_level_set(LOG_INFO);
  assert_null(strstr(out, "at debug"));
  assert_null(strstr(out, "at info"));
  assert_non_null(strstr(out, "Z warn test: at warn\n"));
  assert_non_null(strstr(out, "Z error test: at error\n"));
  free(out);

  log_level_set(LOG_DEBUG);
  out = captured(log_each_level);
  log_level_set(LOG_INFO);
  assert_non_null(strstr(out, "Z debug test: at debug\n"));
  assert_non_null(strstr(out, "Z info test: at info\n"));
  free(out);
}

static void test_levels_and_formats_parse(void **state) {
  enum log_level l;
  enum log_format f;
  assert_int_equal(log_level_parse("debug", &l), 0);
  assert_int_equal(l, LOG_DEBUG);
  assert_int_equal(log_level_parse("warning", &l), 0);
  assert_int_equal(l, LOG_WARN);
  assert_int_equal(log_level_parse("error", &l), 0);
  assert_int_equal(l, LOG_ERROR);
  assert_int_equal(log_level_parse("INFO", &l), -EINVAL);
  assert_int_equal(log_level_parse("", &l), -EINVAL);
  assert_int_equal(log_format_parse("json", &f), 0);
  assert_int_equal(f, LOG_FORMAT_JSON);
  assert_int_equal(log_format_parse("text", &f), 0);
  assert_int_equal(f, LOG_FORMAT_TEXT);
  assert_int_equal(log_format_parse("xml", &f), -EINVAL);
  assert_string_equal(log_level_name(LOG_WARN), "warn");
}

struct kv_seen {
  char text[512];
};

static void kv_note(const char *key, const char *value, size_t len, void *data) {
  struct kv_seen *seen = data;
  size_t n = strlen(seen->text);
  assert_int_equal(strlen(value), len);
  snprintf(seen->text + n, sizeof(seen->text) - n, "[%s|%s]", key, value);
}

static void test_kv_words_of_a_message(void **state) {
  struct kv_seen seen = {""};
  size_t n = log_kv_each("listener=listeners/web: accept: client=[::1]:443 cause=timeout "
                         "reason=\"said \\\"no\\\"\\n\\\\ \\x01\" (agent=edge-1, revision=12) "
                         "a==b x= =y Upper=no mid=dle=x",
                         kv_note, &seen);
  assert_string_equal(seen.text, "[listener|listeners/web][client|[::1]:443][cause|timeout]"
                                 "[reason|said \"no\"\n\\ \\x01][agent|edge-1][revision|12]"
                                 "[a|=b][x|][mid|dle=x]");
  assert_int_equal(n, 9);
  seen.text[0] = '\0';
  assert_int_equal(log_kv_each("no pairs here", kv_note, &seen), 0);
  assert_int_equal(log_kv_each("cut=\"no end", kv_note, &seen), 1);
  assert_string_equal(seen.text, "[cut|no end]");
}

static void log_json_lines(void) {
  char reason[LOG_ESCAPE_LEN];
  log_warn("agent", "listener=%s client=%s cause=%s reason=\"%s\" revision=%d msg=forged",
           "listeners/web", "127.0.0.1:5000", "handshake",
           log_escape_str(reason, sizeof(reason), "bad \"hello\"\nFORGED"), 12);
  log_info("test", "not UTF-8: \xff\xfe, a quote \" and a tab\t");
  log_error("test", "plain");
}

/* Each line of text parsed as JSON: every line must be an object. */
static json_t *json_lines(const char *text) {
  json_t *lines = json_array();
  for (const char *p = text; *p != '\0';) {
    const char *nl = strchr(p, '\n');
    assert_non_null(nl);
    json_error_t e;
    json_t *o = json_loadb(p, (size_t)(nl - p), 0, &e);
    if (o == NULL)
      fail_msg("not JSON (%s): %.*s", e.text, (int)(nl - p), p);
    assert_true(json_is_object(o));
    json_array_append_new(lines, o);
    p = nl + 1;
  }
  return lines;
}

static const char *field(json_t *o, const char *key) {
  json_t *v = json_object_get(o, key);
  if (!json_is_string(v))
    fail_msg("no string field %s", key);
  return json_string_value(v);
}

static void test_json_lines_parse_with_their_fields(void **state) {
  log_format_set(LOG_FORMAT_JSON);
  char *out = captured(log_json_lines);
  log_format_set(LOG_FORMAT_TEXT);
  json_t *lines = json_lines(out);
  assert_int_equal(json_array_size(lines), 3);

  json_t *first = json_array_get(lines, 0);
  const char *time = field(first, "time");
  assert_int_equal(strlen(time), strlen("2026-01-02T03:04:05.678Z"));
  assert_int_equal(time[strlen(time) - 1], 'Z');
  assert_string_equal(field(first, "level"), "warn");
  assert_string_equal(field(first, "component"), "agent");
  assert_string_equal(field(first, "listener"), "listeners/web");
  assert_string_equal(field(first, "client"), "127.0.0.1:5000");
  assert_string_equal(field(first, "cause"), "handshake");
  /* The client's words as they were: JSON escapes them. */
  assert_string_equal(field(first, "reason"), "bad \"hello\"\nFORGED");
  assert_int_equal(json_integer_value(json_object_get(first, "revision")), 12);
  /* msg is the message whole; a word cannot replace it. */
  assert_non_null(strstr(field(first, "msg"), "msg=forged"));
  assert_non_null(strstr(field(first, "msg"), "listener=listeners/web client="));
  /* One line, however the text reads: the newline stays escaped. */
  assert_null(strchr(field(first, "msg"), '\n'));

  json_t *second = json_array_get(lines, 1);
  assert_string_equal(field(second, "level"), "info");
  assert_string_equal(field(second, "msg"), "not UTF-8: \\xFF\\xFE, a quote \\\" and a tab\\t");
  assert_string_equal(field(json_array_get(lines, 2), "level"), "error");
  json_decref(lines);
  free(out);
}

static void log_long_line(void) {
  char big[4000];
  memset(big, '\x01', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  log_info("test", "k=%s", big);
}

static void test_json_line_too_long_is_still_one_object(void **state) {
  log_format_set(LOG_FORMAT_JSON);
  char *out = captured(log_long_line);
  log_format_set(LOG_FORMAT_TEXT);
  json_t *lines = json_lines(out);
  assert_int_equal(json_array_size(lines), 1);
  json_t *o = json_array_get(lines, 0);
  assert_string_equal(field(o, "component"), "test");
  assert_true(strncmp(field(o, "msg"), "k=\x01\x01", 4) == 0);
  json_decref(lines);
  free(out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_plain_text_is_kept),
      cmocka_unit_test(test_line_breaks_and_quotes_are_escaped),
      cmocka_unit_test(test_utf8_kept_unless_invalid_or_hidden),
      cmocka_unit_test(test_cut_at_a_character_with_an_ellipsis),
      cmocka_unit_test(test_limit_burst_then_suppressed_count),
      cmocka_unit_test(test_limit_burst_of_its_own),
      cmocka_unit_test(test_limit_bounds_lines_of_a_flood),
      cmocka_unit_test(test_async_never_blocks_and_counts_what_it_drops),
      cmocka_unit_test(test_level_leaves_out_what_is_below),
      cmocka_unit_test(test_levels_and_formats_parse),
      cmocka_unit_test(test_kv_words_of_a_message),
      cmocka_unit_test(test_json_lines_parse_with_their_fields),
      cmocka_unit_test(test_json_line_too_long_is_still_one_object),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
