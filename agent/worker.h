/* Workers: one thread per core, each with its own uv_loop, its own
 * listening socket per listener (SO_REUSEPORT: the kernel spreads
 * connections over the workers) and the connections it accepted. Nothing
 * of a worker is touched by another thread except its mailbox.
 *
 * The main thread talks to a worker only through worker_post: a message
 * is queued under the mailbox mutex and the worker's uv_async wakes it; it
 * then applies the message on its own loop (apply.c builds everything
 * beforehand, so a worker only swaps pointers and opens sockets it was
 * handed). */
#ifndef TLSPLANE_AGENT_WORKER_H
#define TLSPLANE_AGENT_WORKER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "acceptor.h"
#include "budget.h"
#include "listener.h"

#define WORKER_MAGIC 0x574f524bu    /* "WORK" */
#define WLISTENER_MAGIC 0x574c5354u /* "WLST" */

/* Size of the per-worker read buffer: every read of every socket of the
 * worker goes there and is consumed before the read callback returns. */
#define WORKER_READ_SIZE (64 * 1024)

/* Graceful shutdown: connections idle this long are closed at once... */
#define WORKER_IDLE_MS 1000
/* ... and every connection still open after this is closed. */
#define WORKER_GRACE_MS 10000

/* What a worker does with one listener in an APPLY message. The listener
 * pointer is the key; a message holds one reference to version. */
enum worker_op_kind {
  WORKER_OP_CLOSE, /* stop accepting: close the listening socket */
  WORKER_OP_SWAP,  /* same address: new connections get version */
  WORKER_OP_OPEN,  /* (new) address: listen on fd (replacing any previous socket) */
};

struct worker_op {
  enum worker_op_kind kind;
  struct listener *listener;
  struct listener_version *version; /* SWAP, OPEN: a reference passed to the worker */
  int fd;                           /* OPEN: a bound, listening socket passed to the worker */
};

enum worker_msg_kind {
  WORKER_MSG_APPLY,    /* ops, in order: every CLOSE before any OPEN; may be empty */
  WORKER_MSG_SHUTDOWN, /* stop accepting, close idle connections, drain the rest */
  WORKER_MSG_FORCE,    /* close every connection now */
};

struct worker_msg {
  enum worker_msg_kind kind;
  int64_t revision; /* APPLY: the snapshot the ops come from */
  size_t n_ops;
  struct worker_op *ops;
  struct worker_msg *next;
};

/* A listening socket of one listener on one worker. */
struct wlistener {
  unsigned magic;
  struct acceptor acc; /* the socket, accepted from with accept4 (acceptor.h) */
  struct worker *w;
  struct listener *listener;        /* the key; borrowed (version holds a reference) */
  struct listener_version *version; /* new connections get this; reference held */
  struct wlistener *next;
};

struct conn;

/* A growable byte buffer. */
struct wbuf {
  char *base;
  size_t len, cap;
};

struct worker {
  unsigned magic;
  int id;
  uv_loop_t loop;
  uv_thread_t thread;
  struct budget *budget; /* the process's, shared by every worker (budget.h) */

  /* Mailbox: written by the main thread under lock. */
  uv_mutex_t lock;
  uv_async_t async;
  struct worker_msg *head, *tail;
  int closed; /* the async handle is closing: posts are dropped */

  /* Signalled (thread-safe) once the thread's loop has ended. */
  uv_async_t *done;
  atomic_int finished;
  /* The revision of the last APPLY message this loop has carried out: the
   * connections it accepts from now on get that snapshot. Written by the
   * worker, read by the main thread (metrics). */
  atomic_llong revision;

  struct wlistener *listeners;
  struct conn *conns; /* every open connection (for shutdown) */
  size_t n_conns;

  int draining;      /* shutdown requested */
  uint64_t deadline; /* uv_now when the grace ends */
  uv_timer_t sweep;  /* shutdown: closes idle connections, then all */

  /* Scratch space shared by every connection of the worker, each used
   * only within one callback (see conn.c). */
  char *rbuf;            /* WORKER_READ_SIZE: what libuv reads into */
  char *clear;           /* cleartext decrypted from one client read */
  size_t clear_cap;      /* room for a read's worth and a partial record */
  struct wbuf out;       /* TLS records produced in one callback */
  struct conn *out_conn; /* whose records are in out */
};

/* Makes a worker and starts its thread. done (a handle of the main loop)
 * is signalled when the thread has finished; then call worker_join.
 * budget: the process's descriptor budget (borrowed; outlives the
 * worker). */
int worker_start(int id, uv_async_t *done, struct budget *budget, struct worker **out);
/* Queues m for w (takes ownership of m and what it holds). When the worker
 * has already stopped, m is released instead. Any thread. */
void worker_post(struct worker *w, struct worker_msg *m);
/* Frees a message and releases what it still holds (versions, fds). */
void worker_msg_free(struct worker_msg *m);
/* Whether the thread has finished. */
int worker_finished(struct worker *w);
/* Joins the finished thread and frees w. */
void worker_join(struct worker *w);

struct worker *worker_check(void *p);

/* Called on the worker's loop when a connection or a listening socket is
 * gone: once draining and nothing is left, the worker stops. */
void worker__maybe_stop(struct worker *w);
struct wlistener *wlistener_check(void *p);

#endif
