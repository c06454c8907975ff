/* The dns-01 hook runner (server/acme_dns.c) with real /bin/sh scripts:
 * the path checks; exit status 0 and the environment the hook sees (the
 * five variables and PATH, nothing of ours); a failure's first line,
 * bounded, with the TXT value blanked; a hook writing far more than the
 * bound neither blocks nor grows the message; killed by a signal; killed
 * with its child at its timeout; the stop flag ending a run at once; a
 * path that cannot run. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "acme_dns.h"
#include "fixtures.h"

#define TXT "kVZl7tUTmG6Sm3ZLd4Wr5P9PqaVQdFaPFDmJ0KZz9qA"

static char dir[512];

/* dir/name holding body after a #!/bin/sh line, mode 0755; its path. */
static const char *script(const char *name, const char *body) {
  static char path[600];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fprintf(f, "#!/bin/sh\n%s", body);
  fclose(f);
  assert_int_equal(chmod(path, 0755), 0);
  return path;
}

static int run(const char *path, int timeout_s, const atomic_int *stop, struct tp_err *err) {
  const struct acme_dns_hook h = {.path = path, .timeout_s = timeout_s};
  memset(err, 0, sizeof(*err));
  return acme_dns_hook_run(&h, "present", "w.example", TXT, "certificates/w", stop, err);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void test_check(void **state) {
  (void)state;
  struct tp_err err = {0};
  assert_int_equal(acme_dns_hook_check("hook.sh", &err), -1);
  assert_non_null(strstr(err.msg, "not an absolute path"));
  assert_int_equal(acme_dns_hook_check("/nonexistent/hook", &err), -1);
  assert_non_null(strstr(err.msg, "No such file"));
  assert_int_equal(acme_dns_hook_check(dir, &err), -1);
  assert_non_null(strstr(err.msg, "not a regular file"));
  const char *p = script("plain", "exit 0\n");
  chmod(p, 0644);
  assert_int_equal(acme_dns_hook_check(p, &err), -1); /* even for root: no x bit at all */
  assert_non_null(strstr(err.msg, "not executable"));
  assert_int_equal(acme_dns_hook_check(script("ok", "exit 0\n"), &err), 0);
}

static void test_success_and_environment(void **state) {
  (void)state;
  char out[600];
  snprintf(out, sizeof(out), "%s/env", dir);
  char body[800];
  snprintf(body, sizeof(body), "env | grep -v '^\\(PWD\\|OLDPWD\\|SHLVL\\|_\\)=' | sort > '%s'\n",
           out);
  struct tp_err err;
  setenv("TLSPLANE_MASTER_KEY", "must-not-reach-the-hook", 1);
  assert_int_equal(run(script("env", body), 5, NULL, &err), 0);
  unsetenv("TLSPLANE_MASTER_KEY");
  FILE *f = fopen(out, "r");
  assert_non_null(f);
  char got[2048] = "";
  size_t n = fread(got, 1, sizeof(got) - 1, f);
  got[n] = '\0';
  fclose(f);
  assert_string_equal(got, "PATH=" ACME_DNS_HOOK_PATH_ENV "\n"
                           "TLSPLANE_ACME_ACTION=present\n"
                           "TLSPLANE_ACME_CERTIFICATE=certificates/w\n"
                           "TLSPLANE_ACME_DOMAIN=w.example\n"
                           "TLSPLANE_ACME_RECORD=_acme-challenge.w.example.\n"
                           "TLSPLANE_ACME_TXT=" TXT "\n");
}

static void test_failure_first_line(void **state) {
  (void)state;
  struct tp_err err;
  assert_int_equal(run(script("fail", "echo\necho \"no zone for $TLSPLANE_ACME_TXT\\tx\"\n"
                                      "echo second >&2\nexit 3\n"),
                       5, NULL, &err),
                   -1);
  assert_int_equal(err.status, GRPC_STATUS_UNAVAILABLE);
  assert_string_equal(err.msg,
                      "dns-01 hook present _acme-challenge.w.example.: exit status 3: no zone for "
                      "(txt)?x");
  /* Silent: no trailing ": ". */
  assert_int_equal(run(script("silent", "exit 1\n"), 5, NULL, &err), -1);
  assert_string_equal(err.msg, "dns-01 hook present _acme-challenge.w.example.: exit status 1");
}

static void test_output_bounded(void **state) {
  (void)state;
  struct tp_err err;
  /* 8 MiB on one line: more than any pipe holds, read and dropped. */
  int64_t t0 = now_ms();
  assert_int_equal(
      run(script("flood", "head -c 8388608 /dev/zero | tr '\\0' a\nexit 1\n"), 20, NULL, &err), -1);
  assert_true(now_ms() - t0 < 15000);
  const char *colon = strstr(err.msg, "exit status 1: ");
  assert_non_null(colon);
  assert_int_equal(strlen(colon + strlen("exit status 1: ")), ACME_DNS_HOOK_LINE_MAX);
}

static void test_signal(void **state) {
  (void)state;
  struct tp_err err;
  assert_int_equal(run(script("sig", "echo bye\nkill -TERM $$\n"), 5, NULL, &err), -1);
  assert_string_equal(err.msg,
                      "dns-01 hook present _acme-challenge.w.example.: killed by signal 15: bye");
}

/* The pid a script wrote into dir/name, waiting (bounded) for it. */
static pid_t pid_in(const char *name) {
  char path[600];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  for (int i = 0; i < 500; i++) {
    FILE *f = fopen(path, "r");
    long pid = 0;
    if (f != NULL) {
      int got = fscanf(f, "%ld", &pid);
      fclose(f);
      if (got == 1 && pid > 1)
        return (pid_t)pid;
    }
    usleep(10000);
  }
  fail_msg("no pid in %s", path);
  return -1;
}

/* Whether pid is gone (waiting up to 2 s: SIGKILL is delivered at once,
 * the reaping by init may lag). */
static int gone(pid_t pid) {
  for (int i = 0; i < 200; i++) {
    if (kill(pid, 0) != 0 && errno == ESRCH)
      return 1;
    usleep(10000);
  }
  return 0;
}

static void test_timeout_kills_the_group(void **state) {
  (void)state;
  char body[800];
  snprintf(body, sizeof(body), "echo waiting\nsleep 600 &\necho $! > '%s/timeout.pid'\nwait\n",
           dir);
  struct tp_err err;
  int64_t t0 = now_ms();
  assert_int_equal(run(script("hang", body), 1, NULL, &err), -1);
  int64_t took = now_ms() - t0;
  assert_true(took >= 1000 && took < 5000);
  assert_string_equal(
      err.msg,
      "dns-01 hook present _acme-challenge.w.example.: killed after its timeout of 1 s: waiting");
  assert_true(gone(pid_in("timeout.pid")));
}

static atomic_int stop_flag;

static void *set_stop(void *arg) {
  (void)arg;
  usleep(300000);
  atomic_store(&stop_flag, 1);
  return NULL;
}

static void test_stop(void **state) {
  (void)state;
  char body[800];
  snprintf(body, sizeof(body), "sleep 600 &\necho $! > '%s/stop.pid'\nwait\n", dir);
  const char *p = script("stop", body);
  atomic_store(&stop_flag, 0);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, set_stop, NULL), 0);
  struct tp_err err;
  int64_t t0 = now_ms();
  assert_int_equal(run(p, 600, &stop_flag, &err), -1);
  assert_true(now_ms() - t0 < 3000);
  pthread_join(t, NULL);
  assert_int_equal(err.status, GRPC_STATUS_CANCELLED);
  assert_non_null(strstr(err.msg, "the server is stopping"));
  assert_true(gone(pid_in("stop.pid")));
}

static void test_cannot_run(void **state) {
  (void)state;
  struct tp_err err;
  /* Checked at start, gone since. */
  char path[600];
  snprintf(path, sizeof(path), "%s/removed", dir);
  assert_int_equal(run(path, 5, NULL, &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_UNAVAILABLE);
  /* glibc reports the failed exec; POSIX lets posix_spawn report it as
   * the child's exit status 127 instead (valgrind's does). */
  assert_true(strstr(err.msg, "cannot run") != NULL || strstr(err.msg, "exit status 127") != NULL);
}

int main(void) {
  fixture_tmpdir(dir, sizeof(dir));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_check),
      cmocka_unit_test(test_success_and_environment),
      cmocka_unit_test(test_failure_first_line),
      cmocka_unit_test(test_output_bounded),
      cmocka_unit_test(test_signal),
      cmocka_unit_test(test_timeout_kills_the_group),
      cmocka_unit_test(test_stop),
      cmocka_unit_test(test_cannot_run),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
