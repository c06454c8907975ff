/* grpc core's log lines through log_msg, escaped and rate-limited. */
#include "grpclog.h"

#include <grpc/support/log.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* Lines per second, at most. */
#define GRPCLOG_BURST 20

/* Process-wide, as grpc core's log function is. */
static struct log_limit limit = {.burst = GRPCLOG_BURST};

static void sink(gpr_log_func_args *args) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  unsigned long long dropped = 0;
  if (!log_limit_allow(&limit, (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000,
                       &dropped))
    return;
  if (dropped > 0)
    log_warn("grpc", "%llu lines of grpc core not logged (more than %d a second)", dropped,
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
  /* Set before grpc_init, the verbosity stays: grpc_init reads
   * GRPC_VERBOSITY only when none was set. */
  const char *v = getenv("GRPC_VERBOSITY");
  if (v == NULL || v[0] == '\0')
    gpr_set_log_verbosity(log_enabled(LOG_DEBUG) ? GPR_LOG_SEVERITY_DEBUG : GPR_LOG_SEVERITY_ERROR);
  gpr_set_log_function(sink);
}
