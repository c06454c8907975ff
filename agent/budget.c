/* The descriptor budget (see budget.h). */
#include "budget.h"

#include <errno.h>
#include <sys/resource.h>

const char *budget_refusal_name(enum budget_refusal r) {
  static const char *const names[REFUSED_COUNT] = {
      [REFUSED_DESCRIPTORS] = "descriptors",
      [REFUSED_OUT_OF_MEMORY] = "out_of_memory",
      [REFUSED_METRICS] = "metrics_connections",
  };
  return (unsigned)r < REFUSED_COUNT ? names[r] : "unknown";
}

void budget_init(struct budget *b, int n_workers) {
  struct rlimit rl = {0};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
    rl.rlim_cur = rl.rlim_max = 1024; /* what Linux gives a process by default */
  }
  b->fd_limit_was = (long)rl.rlim_cur;
  /* Raising the soft limit up to the hard one needs no privilege. */
  if (rl.rlim_cur < rl.rlim_max) {
    struct rlimit raised = {.rlim_cur = rl.rlim_max, .rlim_max = rl.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0)
      rl.rlim_cur = rl.rlim_max;
  }
  b->fd_limit = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (rlim_t)(1L << 30)
                    ? 1L << 30
                    : (long)rl.rlim_cur;
  b->reserve = BUDGET_RESERVE + (long)BUDGET_RESERVE_PER_WORKER * n_workers;
  atomic_init(&b->listening, 0);
  atomic_init(&b->connections, 0);
  for (int i = 0; i < REFUSED_COUNT; i++)
    atomic_init(&b->refused[i], 0);
  atomic_init(&b->accept_errors, 0);
}

long budget_connections_max(struct budget *b) {
  long room = b->fd_limit - b->reserve - atomic_load_explicit(&b->listening, memory_order_relaxed);
  return room > 0 ? room / 2 : 0;
}

int budget_connection_take(struct budget *b) {
  long max = budget_connections_max(b);
  if (atomic_fetch_add_explicit(&b->connections, 1, memory_order_relaxed) >= max) {
    atomic_fetch_sub_explicit(&b->connections, 1, memory_order_relaxed);
    return -EMFILE;
  }
  return 0;
}

void budget_connection_release(struct budget *b) {
  atomic_fetch_sub_explicit(&b->connections, 1, memory_order_relaxed);
}

int budget_refuse(struct budget *b, enum budget_refusal r, uint64_t now_ms,
                  unsigned long long *suppressed) {
  atomic_fetch_add_explicit(&b->refused[r], 1, memory_order_relaxed);
  return log_limit_allow(&b->refused_log[r], now_ms, suppressed);
}

int budget_accept_error(struct budget *b, uint64_t now_ms, unsigned long long *suppressed) {
  atomic_fetch_add_explicit(&b->accept_errors, 1, memory_order_relaxed);
  return log_limit_allow(&b->accept_error_log, now_ms, suppressed);
}
