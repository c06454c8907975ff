/* Accepting on a listening socket with accept4 (see acceptor.h). */
#include "acceptor.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "listener.h"

static struct acceptor *acceptor_check(void *p) {
  struct acceptor *a = p;
  if (a == NULL || a->magic != ACCEPTOR_MAGIC)
    abort();
  return a;
}

static void on_readable(uv_poll_t *p, int status, int events);

/* Errors accept(2) passes on from a connection that failed before it was
 * taken: that connection is lost, the next one may be fine. */
static int connection_error(int e) {
  switch (e) {
  case EINTR:
  case ECONNABORTED:
  case EPROTO:
  case ENETDOWN:
  case ENOPROTOOPT:
  case EHOSTDOWN:
  case ENONET:
  case EHOSTUNREACH:
  case EOPNOTSUPP:
  case ENETUNREACH:
  case EPERM: /* a firewall rule */
    return 1;
  default:
    return 0;
  }
}

static void on_resume(uv_timer_t *t) {
  struct acceptor *a = acceptor_check(t->data);
  if (!a->closing)
    uv_poll_start(&a->poll, UV_READABLE, on_readable);
}

static void pause_after(struct acceptor *a, int err) {
  uv_poll_stop(&a->poll);
  uv_timer_start(&a->resume, on_resume, ACCEPTOR_BACKOFF_MS, 0);
  if (a->on_error != NULL)
    a->on_error(a, err, a->data);
}

static void on_readable(uv_poll_t *p, int status, int events) {
  struct acceptor *a = acceptor_check(p->data);
  if (status < 0) {
    pause_after(a, status);
    return;
  }
  for (int i = 0; i < ACCEPTOR_BATCH && !a->closing; i++) {
    union sockaddr_any peer = {0};
    socklen_t len = sizeof(peer);
    int fd = accept4(a->fd, &peer.sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int e = errno;
      if (e == EAGAIN || e == EWOULDBLOCK)
        return;
      if (connection_error(e))
        continue;
      pause_after(a, -e); /* EMFILE, ENFILE, ENOBUFS, ENOMEM, or worse */
      return;
    }
    a->cb(a, fd, &peer.sa, a->data); /* may close a */
  }
}

int acceptor_start(struct acceptor *a, uv_loop_t *loop, int fd, acceptor_cb cb,
                   acceptor_error_cb on_error, void *data) {
  *a = (struct acceptor){
      .magic = ACCEPTOR_MAGIC, .fd = fd, .cb = cb, .on_error = on_error, .data = data};
  uv_timer_init(loop, &a->resume);
  a->resume.data = a;
  a->handles = 1;
  int rc = uv_poll_init(loop, &a->poll, fd);
  if (rc != 0)
    return rc;
  a->poll.data = a;
  a->handles = 2;
  return uv_poll_start(&a->poll, UV_READABLE, on_readable);
}

static void on_handle_close(uv_handle_t *h) {
  struct acceptor *a = acceptor_check(h->data);
  if (--a->handles > 0)
    return;
  if (a->fd >= 0)
    close(a->fd);
  a->fd = -1;
  acceptor_close_cb cb = a->close_cb;
  void *data = a->data;
  a->magic = 0;
  if (cb != NULL)
    cb(a, data); /* a may be freed from here on */
}

void acceptor_close(struct acceptor *a, acceptor_close_cb close_cb) {
  if (a->closing)
    return;
  a->closing = 1;
  a->close_cb = close_cb;
  if (a->handles == 2)
    uv_close((uv_handle_t *)&a->poll, on_handle_close);
  uv_close((uv_handle_t *)&a->resume, on_handle_close);
}
