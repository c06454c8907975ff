/* Worker threads: a loop each, their listening sockets, their connections
 * (see worker.h). */
#include "worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"

#define SWEEP_INTERVAL_MS 250

struct worker *worker_check(void *p) {
  struct worker *w = p;
  if (w == NULL || w->magic != WORKER_MAGIC)
    abort();
  return w;
}

struct wlistener *wlistener_check(void *p) {
  struct wlistener *wl = p;
  if (wl == NULL || wl->magic != WLISTENER_MAGIC)
    abort();
  return wl;
}

void worker_msg_free(struct worker_msg *m) {
  if (m == NULL)
    return;
  for (size_t i = 0; i < m->n_ops; i++) {
    listener_version_unref(m->ops[i].version);
    if (m->ops[i].kind == WORKER_OP_OPEN && m->ops[i].fd >= 0)
      close(m->ops[i].fd);
  }
  free(m->ops);
  free(m);
}

/* Listening sockets ---------------------------------------------------- */

static void on_wlistener_close(struct acceptor *a, void *data) {
  struct wlistener *wl = wlistener_check(data);
  struct worker *w = wl->w;
  listener_version_unref(wl->version);
  wl->magic = 0;
  free(wl);
  worker__maybe_stop(w); /* the worker may be done */
}

static void wlistener_close(struct wlistener *wl) {
  struct worker *w = wl->w;
  for (struct wlistener **p = &w->listeners; *p != NULL; p = &(*p)->next) {
    if (*p == wl) {
      *p = wl->next;
      break;
    }
  }
  acceptor_close(&wl->acc, on_wlistener_close);
}

static struct wlistener *wlistener_find(struct worker *w, const struct listener *l) {
  for (struct wlistener *wl = w->listeners; wl != NULL; wl = wl->next)
    if (wl->listener == l)
      return wl;
  return NULL;
}

static void on_accept(struct acceptor *a, int fd, const struct sockaddr *peer, void *data) {
  conn_accept(wlistener_check(data), fd, peer);
}

/* accept(2) itself failed (EMFILE and the like, which the budget should
 * make rare: descriptors used by something it does not count): the
 * acceptor pauses; the connections wait in the kernel's queue. */
static void on_accept_error(struct acceptor *a, int err, void *data) {
  struct wlistener *wl = wlistener_check(data);
  unsigned long long suppressed;
  if (!budget_accept_error(wl->w->budget, uv_now(&wl->w->loop), &suppressed))
    return;
  char more[48] = "";
  if (suppressed > 0)
    snprintf(more, sizeof(more), " suppressed=%llu", suppressed);
  log_warn("agent", "listener=%s: accept: %s: accepting paused for %d ms%s", wl->listener->name,
           uv_strerror(err), ACCEPTOR_BACKOFF_MS, more);
}

/* Takes op's fd and version reference. */
static void wlistener_open(struct worker *w, struct worker_op *op) {
  struct wlistener *old = wlistener_find(w, op->listener);
  if (old != NULL)
    wlistener_close(old); /* the address changed */
  struct wlistener *wl = calloc(1, sizeof(*wl));
  if (wl == NULL) {
    log_error("agent", "listener=%s: worker %d: out of memory", op->listener->name, w->id);
    return; /* worker_msg_free closes the fd */
  }
  wl->magic = WLISTENER_MAGIC;
  wl->w = w;
  wl->listener = op->listener;
  int rc = acceptor_start(&wl->acc, &w->loop, op->fd, on_accept, on_accept_error, wl);
  op->fd = -1; /* the acceptor owns it */
  wl->version = op->version;
  op->version = NULL;
  wl->next = w->listeners;
  w->listeners = wl;
  if (rc != 0) {
    log_error("agent", "listener=%s: worker %d: listen: %s", op->listener->name, w->id,
              uv_strerror(rc));
    wlistener_close(wl);
  }
}

/* Messages --------------------------------------------------------------- */

static void worker_stop(struct worker *w) {
  uv_mutex_lock(&w->lock);
  w->closed = 1;
  uv_mutex_unlock(&w->lock);
  uv_close((uv_handle_t *)&w->async, NULL);
  uv_close((uv_handle_t *)&w->sweep, NULL);
}

void worker__maybe_stop(struct worker *w) {
  if (w->draining && !w->closed && w->n_conns == 0 && w->listeners == NULL)
    worker_stop(w);
}

static void sweep(struct worker *w, int force) {
  uint64_t now = uv_now(&w->loop);
  if (now >= w->deadline)
    force = 1;
  for (struct conn *c = w->conns; c != NULL; c = conn_next(c))
    conn_drain(c, now, force);
}

static void on_sweep(uv_timer_t *t) {
  sweep(worker_check(t->data), 0);
}

static void apply_msg(struct worker *w, struct worker_msg *m) {
  for (size_t i = 0; i < m->n_ops; i++) {
    struct worker_op *op = &m->ops[i];
    struct wlistener *wl = wlistener_find(w, op->listener);
    switch (op->kind) {
    case WORKER_OP_CLOSE:
      if (wl != NULL)
        wlistener_close(wl);
      break;
    case WORKER_OP_SWAP:
      if (wl != NULL) {
        struct listener_version *old = wl->version;
        wl->version = op->version;
        op->version = NULL;
        listener_version_unref(old);
      }
      break;
    case WORKER_OP_OPEN:
      if (!w->draining)
        wlistener_open(w, op);
      break;
    }
  }
}

static void on_async(uv_async_t *a) {
  struct worker *w = worker_check(a->data);
  uv_mutex_lock(&w->lock);
  struct worker_msg *m = w->head;
  w->head = w->tail = NULL;
  uv_mutex_unlock(&w->lock);
  while (m != NULL) {
    struct worker_msg *next = m->next;
    switch (m->kind) {
    case WORKER_MSG_APPLY:
      apply_msg(w, m);
      atomic_store(&w->revision, m->revision);
      break;
    case WORKER_MSG_SHUTDOWN:
      if (!w->draining) {
        w->draining = 1;
        w->deadline = uv_now(&w->loop) + WORKER_GRACE_MS;
        while (w->listeners != NULL)
          wlistener_close(w->listeners);
        sweep(w, 0);
        uv_timer_start(&w->sweep, on_sweep, SWEEP_INTERVAL_MS, SWEEP_INTERVAL_MS);
      }
      break;
    case WORKER_MSG_FORCE:
      if (w->draining)
        sweep(w, 1);
      break;
    }
    worker_msg_free(m);
    m = next;
  }
  worker__maybe_stop(w);
}

void worker_post(struct worker *w, struct worker_msg *m) {
  m->next = NULL;
  uv_mutex_lock(&w->lock);
  if (w->closed) {
    uv_mutex_unlock(&w->lock);
    worker_msg_free(m);
    return;
  }
  if (w->tail != NULL)
    w->tail->next = m;
  else
    w->head = m;
  w->tail = m;
  uv_async_send(&w->async); /* under the lock: the handle cannot be closing */
  uv_mutex_unlock(&w->lock);
}

/* The thread ------------------------------------------------------------- */

static void run(void *arg) {
  struct worker *w = worker_check(arg);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  atomic_store(&w->finished, 1);
  uv_async_send(w->done);
}

int worker_finished(struct worker *w) {
  return atomic_load(&w->finished);
}

static void worker_free(struct worker *w) {
  struct worker_msg *m = w->head;
  while (m != NULL) {
    struct worker_msg *next = m->next;
    worker_msg_free(m);
    m = next;
  }
  int rc = uv_loop_close(&w->loop);
  if (rc != 0)
    log_error("agent", "worker %d: loop not closed: %s", w->id, uv_strerror(rc));
  uv_mutex_destroy(&w->lock);
  free(w->rbuf);
  free(w->clear);
  free(w->out.base);
  w->magic = 0;
  free(w);
}

void worker_join(struct worker *w) {
  uv_thread_join(&w->thread);
  worker_free(w);
}

int worker_start(int id, uv_async_t *done, struct budget *budget, struct worker **out) {
  *out = NULL;
  struct worker *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return UV_ENOMEM;
  w->magic = WORKER_MAGIC;
  w->id = id;
  w->budget = budget;
  w->done = done;
  atomic_init(&w->finished, 0);
  atomic_init(&w->revision, 0);
  w->clear_cap = WORKER_READ_SIZE + 32 * 1024;
  w->rbuf = malloc(WORKER_READ_SIZE);
  w->clear = malloc(w->clear_cap);
  w->out.cap = WORKER_READ_SIZE + 32 * 1024;
  w->out.base = malloc(w->out.cap);
  if (w->rbuf == NULL || w->clear == NULL || w->out.base == NULL) {
    free(w->rbuf);
    free(w->clear);
    free(w->out.base);
    free(w);
    return UV_ENOMEM;
  }
  int rc = uv_loop_init(&w->loop);
  if (rc != 0)
    goto failed_loop;
  if ((rc = uv_mutex_init(&w->lock)) != 0)
    goto failed_mutex;
  uv_async_init(&w->loop, &w->async, on_async);
  w->async.data = w;
  uv_timer_init(&w->loop, &w->sweep);
  w->sweep.data = w;
  if ((rc = uv_thread_create(&w->thread, run, w)) != 0)
    goto failed_thread;
  *out = w;
  return 0;
failed_thread:
  uv_close((uv_handle_t *)&w->async, NULL);
  uv_close((uv_handle_t *)&w->sweep, NULL);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  uv_mutex_destroy(&w->lock);
failed_mutex:
  uv_loop_close(&w->loop);
failed_loop:
  free(w->rbuf);
  free(w->clear);
  free(w->out.base);
  free(w);
  return rc;
}
