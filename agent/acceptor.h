/* Accepting connections on a listening socket, without libuv's
 * uv_listen: libuv (1.44) handles EMFILE with a spare descriptor and,
 * once that is gone, retries accept(2) in a loop that never returns to
 * the event loop (budget.h). Here the socket is watched with a uv_poll_t
 * and accept4(2) is called by us:
 *
 * - each wakeup accepts at most ACCEPTOR_BATCH connections, so that a
 *   flood of them never keeps the loop from its timers and other sockets;
 * - on EMFILE, ENFILE, ENOBUFS or ENOMEM accepting stops for
 *   ACCEPTOR_BACKOFF_MS (a uv_timer), the connections wait in the
 *   kernel's queue, and on_error is called once per pause;
 * - the network errors Linux passes on from a connection already gone
 *   (ECONNABORTED, ...) are skipped, as accept(2) says to.
 *
 * An acceptor lives on one loop; it is embedded in its owner and released
 * with acceptor_close, whose callback runs once its handles are closed
 * (the owner may then free it). */
#ifndef TLSPLANE_AGENT_ACCEPTOR_H
#define TLSPLANE_AGENT_ACCEPTOR_H

#include <sys/socket.h>
#include <uv.h>

#define ACCEPTOR_MAGIC 0x41434350u /* "ACCP" */
#define ACCEPTOR_BATCH 64
#define ACCEPTOR_BACKOFF_MS 200

struct acceptor;

/* A connection accepted: fd (non-blocking, close-on-exec) is the
 * callback's to keep or close; peer is its address (len bytes). */
typedef void (*acceptor_cb)(struct acceptor *a, int fd, const struct sockaddr *peer, void *data);
/* Accepting failed with err (a negative errno) and pauses. */
typedef void (*acceptor_error_cb)(struct acceptor *a, int err, void *data);
typedef void (*acceptor_close_cb)(struct acceptor *a, void *data);

struct acceptor {
  unsigned magic;
  int fd;            /* the listening socket; owned */
  uv_poll_t poll;    /* readable: connections are waiting */
  uv_timer_t resume; /* the back-off after an error */
  int handles;       /* open handles; close_cb runs at 0 */
  int closing;
  acceptor_cb cb;
  acceptor_error_cb on_error;
  acceptor_close_cb close_cb;
  void *data;
};

/* Starts accepting on fd (a listening, non-blocking socket) on loop.
 * Takes fd, whatever the result. Returns 0 or a negative uv error; either
 * way the acceptor is released with acceptor_close. */
int acceptor_start(struct acceptor *a, uv_loop_t *loop, int fd, acceptor_cb cb,
                   acceptor_error_cb on_error, void *data);
/* Stops accepting, closes the socket; close_cb (may be NULL) runs once
 * the handles are closed. Calling it again does nothing. */
void acceptor_close(struct acceptor *a, acceptor_close_cb close_cb);

#endif
