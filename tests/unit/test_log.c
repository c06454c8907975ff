/* Unit tests for common/log.c's log_escape: what a client sends cannot end
 * a log line, forge another, or close a quoted field, and is cut at a
 * character, never inside an escape. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_plain_text_is_kept),
      cmocka_unit_test(test_line_breaks_and_quotes_are_escaped),
      cmocka_unit_test(test_utf8_kept_unless_invalid_or_hidden),
      cmocka_unit_test(test_cut_at_a_character_with_an_ellipsis),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
