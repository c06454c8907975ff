/* The dns-01 hook command (acme_dns.h). */
#include "acme_dns.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 10 /* how often a run looks at the hook, its deadline and the stop flag */

int acme_dns_hook_check(const char *path, struct tp_err *err) {
  struct stat st;
  if (path == NULL || path[0] != '/')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "\"%s\" is not an absolute path",
                      path != NULL ? path : "");
  if (stat(path, &st) != 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s: %s", path, strerror(errno));
  if (!S_ISREG(st.st_mode))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s is not a regular file", path);
  if (access(path, X_OK) != 0)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "%s is not executable: %s", path,
                      strerror(errno));
  return 0;
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* What one run read of the hook's output. */
struct output {
  char buf[ACME_DNS_HOOK_OUTPUT_MAX];
  size_t len;
  int eof;
};

/* Reads what fd has (waiting at most ms for it), keeping the first
 * ACME_DNS_HOOK_OUTPUT_MAX bytes and dropping the rest. */
static void output_read(struct output *o, int fd, int ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  if (o->eof || poll(&p, 1, ms) <= 0)
    return;
  char scratch[1024];
  char *into = o->len < sizeof(o->buf) ? o->buf + o->len : scratch;
  size_t room = o->len < sizeof(o->buf) ? sizeof(o->buf) - o->len : sizeof(scratch);
  ssize_t n = read(fd, into, room);
  if (n > 0 && into != scratch)
    o->len += (size_t)n;
  else if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
    o->eof = 1;
}

/* The output's first non-empty line, printable ASCII only, bounded. */
static void first_line(const struct output *o, char *line, size_t size) {
  size_t i = 0, n = 0;
  while (i < o->len && (o->buf[i] == '\n' || o->buf[i] == '\r'))
    i++;
  for (; i < o->len && o->buf[i] != '\n' && o->buf[i] != '\r' && n + 1 < size; i++)
    line[n++] = o->buf[i] >= 0x20 && o->buf[i] < 0x7f ? o->buf[i] : '?';
  line[n] = '\0';
}

/* line with each occurrence of secret (the TXT value, should a hook echo
 * it) replaced by "(txt)", in place. */
static void redact(char *line, const char *secret) {
  size_t n = strlen(secret);
  char *at;
  while (n >= 5 && (at = strstr(line, secret)) != NULL) {
    memmove(at + 5, at + n, strlen(at + n) + 1);
    memcpy(at, "(txt)", 5);
  }
}

/* "NAME=value", malloc'd. */
static char *env_entry(const char *name, const char *value) {
  size_t len = strlen(name) + strlen(value) + 2;
  char *e = malloc(len);
  if (e != NULL)
    snprintf(e, len, "%s=%s", name, value);
  return e;
}

/* Starts the hook with envp, its output into *out_fd: 0 and *pid, or an
 * errno value. */
static int spawn_hook(const char *path, char *const *envp, pid_t *pid, int *out_fd) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0)
    return errno;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  int rc = posix_spawn_file_actions_init(&fa);
  if (rc != 0) {
    close(fds[0]);
    close(fds[1]);
    return rc;
  }
  if ((rc = posix_spawnattr_init(&at)) != 0) {
    posix_spawn_file_actions_destroy(&fa);
    close(fds[0]);
    close(fds[1]);
    return rc;
  }
  /* The server blocks SIGINT and SIGTERM in every thread (sigwait) and
   * ignores SIGPIPE: the hook gets neither. A group of its own, so that
   * killing it takes what it started too. Nothing of the server's but
   * the pipe reaches it. */
  sigset_t none, dflt;
  sigemptyset(&none);
  sigemptyset(&dflt);
  sigaddset(&dflt, SIGPIPE);
  sigaddset(&dflt, SIGINT);
  sigaddset(&dflt, SIGTERM);
  sigaddset(&dflt, SIGCHLD);
  if (rc == 0)
    rc = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                           POSIX_SPAWN_SETSIGDEF);
  if (rc == 0)
    rc = posix_spawnattr_setpgroup(&at, 0);
  if (rc == 0)
    rc = posix_spawnattr_setsigmask(&at, &none);
  if (rc == 0)
    rc = posix_spawnattr_setsigdefault(&at, &dflt);
  if (rc == 0)
    rc = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  if (rc == 0)
    rc = posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  if (rc == 0)
    rc = posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
  if (rc == 0)
    rc = posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  if (rc == 0)
    rc = posix_spawn_file_actions_addchdir_np(&fa, "/");
  char *const argv[] = {(char *)path, NULL};
  if (rc == 0)
    rc = posix_spawn(pid, path, &fa, &at, argv, envp);
  posix_spawnattr_destroy(&at);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    return rc;
  }
  *out_fd = fds[0];
  return 0;
}

/* Whether pid has exited, leaving it unreaped (its id, and so its
 * process group's, cannot be reused until waitpid). */
static int exited(pid_t pid) {
  siginfo_t si = {0};
  if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0)
    return errno == ECHILD;
  return si.si_pid == pid;
}

int acme_dns_hook_run(const struct acme_dns_hook *h, const char *action, const char *domain,
                      const char *txt, const char *certificate, const atomic_int *stop,
                      struct tp_err *err) {
  size_t rlen = strlen(domain) + sizeof("_acme-challenge..");
  char *record = malloc(rlen);
  if (record != NULL)
    snprintf(record, rlen, "_acme-challenge.%s.", domain);
  char *envp[] = {env_entry("PATH", ACME_DNS_HOOK_PATH_ENV),
                  env_entry("TLSPLANE_ACME_ACTION", action),
                  env_entry("TLSPLANE_ACME_DOMAIN", domain),
                  record != NULL ? env_entry("TLSPLANE_ACME_RECORD", record) : NULL,
                  env_entry("TLSPLANE_ACME_TXT", txt),
                  env_entry("TLSPLANE_ACME_CERTIFICATE", certificate),
                  NULL};
  const size_t n_env = sizeof(envp) / sizeof(envp[0]) - 1;
  int rc = 0;
  for (size_t i = 0; i < n_env; i++)
    if (envp[i] == NULL)
      rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  pid_t pid = 0;
  int fd = -1, e = 0;
  if (rc == 0 && (e = spawn_hook(h->path, envp, &pid, &fd)) != 0)
    rc = tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "dns-01 hook %s %s: cannot run %s: %s", action,
                    record, h->path, strerror(e));
  struct output *out = rc == 0 ? calloc(1, sizeof(*out)) : NULL;
  if (rc == 0 && out == NULL) {
    kill(-pid, SIGKILL);
    waitpid(pid, NULL, 0);
    rc = tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  if (rc == 0) {
    int64_t until = mono_ms() + (int64_t)h->timeout_s * 1000;
    int timed_out = 0, stopped = 0;
    for (;;) {
      if (exited(pid))
        break;
      if (stop != NULL && atomic_load(stop) != 0) {
        stopped = 1;
        break;
      }
      if (mono_ms() >= until) {
        timed_out = 1;
        break;
      }
      if (out->eof) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = TICK_MS * 1000000L};
        nanosleep(&ts, NULL);
      } else
        output_read(out, fd, TICK_MS);
    }
    /* What it wrote before it exited, as far as it is there now. */
    for (int i = 0; i < 64 && !out->eof; i++)
      output_read(out, fd, 0);
    /* The hook and whatever it left in its group; reaped after, so that
     * the group's id cannot have been reused. */
    kill(-pid, SIGKILL);
    int wstatus = 0;
    pid_t reaped;
    while ((reaped = waitpid(pid, &wstatus, 0)) < 0 && errno == EINTR)
      ;
    close(fd);
    char line[ACME_DNS_HOOK_LINE_MAX + 1];
    first_line(out, line, sizeof(line));
    redact(line, txt);
    const char *sep = line[0] ? ": " : "";
    if (stopped)
      rc = tp_err_set(err, GRPC_STATUS_CANCELLED, "dns-01 hook %s %s: the server is stopping",
                      action, record);
    else if (timed_out)
      rc = tp_err_set(err, GRPC_STATUS_UNAVAILABLE,
                      "dns-01 hook %s %s: killed after its timeout of %d s%s%s", action, record,
                      h->timeout_s, sep, line);
    else if (reaped != pid) /* reaped by someone else (SIGCHLD ignored): no success to trust */
      rc = tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "dns-01 hook %s %s: its exit status was lost",
                      action, record);
    else if (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) != 0)
      rc = tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "dns-01 hook %s %s: exit status %d%s%s", action,
                      record, WEXITSTATUS(wstatus), sep, line);
    else if (WIFSIGNALED(wstatus))
      rc = tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "dns-01 hook %s %s: killed by signal %d%s%s",
                      action, record, WTERMSIG(wstatus), sep, line);
    free(out);
  }
  for (size_t i = 0; i < n_env; i++)
    free(envp[i]);
  free(record);
  return rc;
}
