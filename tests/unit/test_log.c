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
 * accounted for). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
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
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
