/* grpc core's log lines through log_msg, escaped and rate-limited. */
#include "grpclog.h"

#include <grpc/support/log.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* Lines per second, at most. */
#define GRPCLOG_BURST 20

/* The rate limit: the current one-second window and what it let through.
 * Process-wide, as grpc core's log function is. */
static struct {
  pthread_mutex_t mu;
  time_t window;
  int lines;             /* logged in window */
  unsigned long dropped; /* not logged since the last line that was */
} limit = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void sink(gpr_log_func_args *args) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  pthread_mutex_lock(&limit.mu);
  if (now.tv_sec != limit.window) {
    limit.window = now.tv_sec;
    limit.lines = 0;
  }
  int pass = limit.lines < GRPCLOG_BURST;
  unsigned long dropped = 0;
  if (pass) {
    limit.lines++;
    dropped = limit.dropped;
    limit.dropped = 0;
  } else {
    limit.dropped++;
  }
  pthread_mutex_unlock(&limit.mu);
  if (!pass)
    return;
  if (dropped > 0)
    log_warn("grpc", "%lu lines of grpc core not logged (more than %d a second)", dropped,
             GRPCLOG_BURST);
  const char *file = args->file != NULL ? args->file : "";
  const char *base = strrchr(file, '/');
  char text[1024];
  log_escape_str(text, sizeof(text), args->message);
  enum log_level level = args->severity == GPR_LOG_SEVERITY_DEBUG  ? LOG_DEBUG
                         : args->severity == GPR_LOG_SEVERITY_INFO ? LOG_INFO
                                                                   : LOG_WARN;
  log_msg(level, "grpc", "%s:%d: %s", base != NULL ? base + 1 : file, args->line, text);
}

void grpclog_route(void) {
  const char *v = getenv("GRPC_VERBOSITY");
  if (v == NULL || v[0] == '\0')
    gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);
  gpr_set_log_function(sink);
}
