/* The gRPC server core on grpc core's C API.
 *
 * Threads. No thread that serves a handler ever waits for a client.
 *
 * - Event threads (EVENT_THREADS, fixed): each runs one completion queue
 *   (GRPC_CQ_NEXT, registered with the server) and only reacts: a call
 *   arrived, a batch completed, a request is overdue. They never block on
 *   anything but their queue.
 * - The pool (opts->threads, bounded): runs authentication, unary
 *   handlers and stream callbacks, taking jobs from two queues, unary
 *   calls' first (an API call does not wait behind the acks of a push to
 *   every agent; streams still get every fifth turn). It never waits for
 *   a client.
 *
 * That is all: the thread count does not depend on the number of calls,
 * streams or connections.
 *
 * Unary calls come through grpc_server_request_call (every method that is
 * not registered with grpc core, unknown paths included), on an event
 * thread's queue, which is also the queue of every batch of the call, so
 * that all of a call's events reach one event thread in order. A call:
 *
 *   event: arrived -> RECV_CLOSE_ON_SERVER started -> pool: authenticate
 *   pool:  refused / unknown method -> send status (async)
 *          else start RECV_MESSAGE (async)
 *   event: the whole message arrived -> pool: decode, handler, encode,
 *          start the send batch (message + status, async)
 *          (a write method: through the write lane first, see Writes)
 *   event: the send and the close both completed -> the call is released
 *
 * Authentication runs before the request message is read: a caller
 * without a credential is refused as soon as its metadata arrived, so it
 * can make the server hold neither its request bytes (up to 16 MiB a call)
 * nor a call for the request timeout; nothing of the message reaches a
 * handler before both the credential and the whole message are in.
 * A call whose request has not wholly arrived request_timeout_ms after its
 * metadata is cancelled with DEADLINE_EXCEEDED by its event thread's sweep
 * (calls are listed per event thread in arrival order, so the sweep walks
 * only the calls old enough to be overdue or slow). A call's memory is
 * reference counted: each batch in flight, a queued job and the overdue
 * list hold a reference.
 *
 * Bounds: at most MAX_UNARY_CALLS unary calls between arrival and release
 * (past it no new grpc_server_request_call is posted, so further calls
 * wait in grpc core, behind MAX_CONCURRENT_STREAMS per connection); at most
 * MAX_PEER_SLOW requests per client address still arriving SLOW_MS after
 * their receive started (a burst of requests that arrive whole is never
 * slow; a client that holds many half-open calls is), the sweep cancels
 * the rest; at most MAX_HELD_BYTES of received requests not yet decoded;
 * grpc core's own memory under a resource quota; TLS handshakes within
 * HANDSHAKE_TIMEOUT_MS. grpc 1.51 has no cap on connections.
 *
 * Writes. Methods registered with rpc_server_add_write (every call that
 * changes the store) run at most max_writes at a time: a write waits for
 * the store's write lock, and a pool thread that waits serves nobody, so
 * the rest of the pool stays free for reads and health however many
 * clients write. A write whose request arrived while max_writes run waits
 * in the lane, a FIFO that holds no thread (only the call and its
 * request, counted in MAX_HELD_BYTES); each write that ends hands its
 * slot to the oldest waiting one. A waiting write whose client went away
 * (cancelled, past its deadline) is dropped unrun; one that waited
 * LANE_WAIT_MS is answered UNAVAILABLE by the sweep; beyond
 * MAX_LANE_WAITING waiting, RESOURCE_EXHAUSTED at once. Nothing refused by
 * the lane was written.
 *
 * Streams. Streaming methods are registered with grpc core
 * (grpc_server_register_method) and requested apart, one request per method
 * outstanding, on an event thread's queue, which is also the queue of every
 * batch of the call (as for unary calls). A stream:
 *
 *   event: arrived -> RECV_CLOSE_ON_SERVER started -> pool: authenticate,
 *          the caps, the started callback (refused: the status goes out
 *          as a cancellation, which waits for nothing)
 *   pool:  accepted -> RECV_MESSAGE started (one at a time)
 *   event: a message arrived -> pool: decode, message callback, and the
 *          next RECV_MESSAGE (unless the send queue is over
 *          RPC_STREAM_READ_PAUSE: then once it drains below)
 *   any:   rpc_stream_send queues; one SEND_MESSAGE in flight, the next
 *          started by the completion of the last
 *   event: the close completed and no batch is in flight -> pool: ended
 *
 * The callbacks of a stream are serialized by the stream itself: events
 * set flags on it (at most one message is pending, since one receive is in
 * flight at a time) and the first event that finds it idle queues one pool
 * job, which runs the pending callbacks in their fixed order (started,
 * message, drained, half_closed, shutdown, ended) until none is left, one
 * message per turn (a stream with more waits at the back of the queue, so
 * a client that sends without pause holds no thread from the others). A
 * stream never holds a pool thread while it waits for anything.
 *
 * Caps: max_streams in all, and max_peer_streams per client address for
 * calls without a credential (health Watch, reflection); beyond either,
 * RESOURCE_EXHAUSTED naming the cap, sent as a cancellation (grpc core
 * sends it when the connection can take it, so a client that stops reading
 * its socket holds nobody), and the call is freed once its close
 * completed. A stream's bytes queued for sending are capped
 * (RPC_STREAM_MAX_QUEUED); its received message counts in MAX_HELD_BYTES
 * until decoded. "The next message within N ms" (rpc_stream_expect) is a
 * deadline on the stream's event thread's timer list, sorted by deadline
 * and walked by the sweep. A stream's memory is reference counted like a
 * unary call's: each batch in flight, a queued job, the timer list and
 * each rpc_stream_ref hold one.
 *
 * Shutdown. grpc_server_shutdown_and_notify fails every pending
 * request_call (the event threads release those calls) and posts its own
 * tag once all in-flight calls are over; after grace_ms we cancel the calls
 * still running. Calls that grpc had accepted but we had not requested yet
 * are cancelled by grpc core itself when shutdown begins; clients see
 * CANCELLED. Streams are told first (their shutdown callbacks), so that
 * long ones end at once rather than at the end of the grace. Once every
 * call is released (every ended callback ran, every reference dropped),
 * the pool and the event threads are joined, the server is destroyed, and every
 * completion queue is shut down and drained before being destroyed. */

#include "rpc.h"

#include <errno.h>
#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/string_util.h>
#include <grpc/support/time.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "grpcmsg.h"
#include "log.h"
#include "pb.h"

#define CALL_MAGIC 0x7270ca11u
#define RPC_STREAM_MAGIC 0x7270c57eu

/* Receive limit: a PKCS#12 bundle or a large CRL can exceed grpc's 4 MiB. */
#define MAX_RECV_MESSAGE (16 * 1024 * 1024)

/* Threads that run the completion queues. They only react to events, so
 * two keep up with far more calls than the pool can serve. */
#define EVENT_THREADS 2
/* grpc_server_request_call kept outstanding per event thread: calls that
 * arrive together are taken at once, not one per round trip. */
#define REQUESTS_PER_EVENT_THREAD 8
/* Unary calls between arrival and release, at most; past it no new call
 * is requested from grpc core. */
#define MAX_UNARY_CALLS 1024
/* Requests from one client address still arriving SLOW_MS after their
 * receive started, at most; beyond, RESOURCE_EXHAUSTED. Requests arrive
 * whole at once, except large uploads over slow links. */
#define MAX_PEER_SLOW 64
#define SLOW_MS 1000
/* Bytes of received requests not yet decoded, at most. */
#define MAX_HELD_BYTES ((size_t)256 * 1024 * 1024)
/* Memory grpc core may use for its transports (read buffers, messages in
 * transit); under pressure it shrinks flow-control windows. */
#define GRPC_MEMORY_QUOTA ((size_t)1024 * 1024 * 1024)
#define MAX_CONCURRENT_STREAMS 100
#define HANDSHAKE_TIMEOUT_MS (10 * 1000)
/* First read size per connection (bytes). */
#define CONN_READ_CHUNK 4096
#define DEFAULT_REQUEST_TIMEOUT_MS (10 * 1000)
#define DEFAULT_MAX_STREAMS 16384
#define DEFAULT_KEEPALIVE_MS 60000 /* a silent client connection is closed within this */
#define DEFAULT_MAX_PEER_STREAMS 16
/* How often an event thread looks for overdue requests and expired
 * stream timers. */
#define SWEEP_MS 100
/* A refusal by a cap is logged at most this often (with a count). */
#define CAP_LOG_INTERVAL_MS (10 * 1000)
#define PEER_BUCKETS 256
/* Writes waiting for a slot, at most, and how long one waits at most. */
#define MAX_LANE_WAITING 256
#define LANE_WAIT_MS (30 * 1000)

/* A registered method. Exactly one of unary and stream is set, or neither
 * (a placeholder that answers UNIMPLEMENTED). */
struct method {
  char *path; /* "/package.Service/Method", NUL-terminated */
  size_t path_len;
  const ProtobufCMessageDescriptor *req;  /* unary only */
  const ProtobufCMessageDescriptor *resp; /* unary only */
  rpc_unary_fn unary;
  const struct rpc_stream_ops *stream;
  void *data;
  int write;        /* unary: served in the write lane */
  void *registered; /* streams: grpc_server_register_method's handle */
  int requested;    /* streams: a request for the next call is outstanding (calls_mu) */
};

/* One event thread and its completion queue. */
struct event_thread {
  struct rpc_server *srv;
  pthread_t tid;
  grpc_completion_queue *cq; /* GRPC_CQ_NEXT, registered */
  /* Unary calls whose request has not wholly arrived, oldest first (so
   * also in deadline order). Only this thread touches the list. */
  struct call *overdue_head, *overdue_tail;
  int64_t next_sweep_ms;
  /* Streams with a timer (rpc_stream_expect), soonest first (timers_mu:
   * set from any thread, expired by this one's sweep). */
  pthread_mutex_t timers_mu;
  struct call *timers_head, *timers_tail;
};

/* Given to handlers; embedded in the call. */
struct rpc_stream {
  uint32_t magic;
  struct call *call;
};

/* A message queued on a stream. */
struct send_item {
  struct send_item *next;
  grpc_byte_buffer *bb;
  size_t len;
};

/* CALL_EXT: a unary call from another transport (rpc_server_call), with no
 * grpc call behind it. */
enum call_kind { CALL_UNARY, CALL_STREAM, CALL_EXT };
enum op_kind { OP_NEW, OP_CLOSE, OP_RECV, OP_SEND, OP_STATUS };

/* A batch's tag: what completed, for which call. */
struct op {
  struct call *call;
  enum op_kind kind;
};

/* One call, from its request until released. The tags are members so that
 * each is a distinct address owned by the call.
 *
 * A call is reference counted (refs): each batch in flight, the job
 * queued for the pool, the overdue list (unary), the timer list and each
 * rpc_stream_ref (streams) hold one; the last release frees it. A unary
 * call's event-side fields (overdue list, slow_counted) are touched by its
 * event thread only; the pool touches the rest while it holds the job's
 * reference. A stream's state below `smu` is guarded by smu (its callbacks
 * and other threads' sends meet there); what the job runner reads unlocked
 * (info, identity, stream_data once accepted) is written before the
 * callbacks can run. */
struct call {
  uint32_t magic;
  struct rpc_server *srv;
  enum call_kind kind;
  struct event_thread *ev;   /* its notification queue (unary: every batch's) */
  grpc_call *call;           /* NULL until the request completed */
  grpc_completion_queue *cq; /* ev->cq: every batch's */
  grpc_call_details details; /* unary */
  gpr_timespec deadline;     /* stream: the client's deadline (unused: grpc enforces it) */
  grpc_metadata_array md;
  const struct method *method; /* NULL: unknown method */
  struct method *requested;    /* stream: the method whose call was requested */
  char *path;                  /* the method path as sent */
  char *peer;                  /* gpr_malloc'd by grpc_call_get_peer */
  char peer_addr[64];          /* peer without its port: the per-address key */
  char shown[64];              /* "unknown method (N bytes)" */
  struct rpc_call_info info;
  struct rpc_identity identity; /* info's actor and principal point here */
  int cancelled;                /* RECV_CLOSE_ON_SERVER's result */
  int close_started;            /* the RECV_CLOSE_ON_SERVER batch is in flight */
  atomic_int close_done;        /* ... and it completed */
  int sent_initial_md;          /* only the sending side touches it (stream: smu) */
  int status_sent;              /* the status went out (or a cancellation carries it) */
  int peer_stream;              /* counted in its address's anonymous streams */
  int stream_counted;           /* counted in srv->n_streams */
  struct op op_new, op_close, op_recv, op_send, op_status;
  atomic_int refs;
  /* Unary only. */
  atomic_int expired;           /* the sweep cancelled it */
  int64_t arrived_ms;           /* monotonic: when its metadata arrived */
  int64_t deadline_ms;          /* monotonic: the request must have arrived by then */
  atomic_llong recv_started_ms; /* when RECV_MESSAGE started; 0: not started */
  int on_overdue;               /* on ev's overdue list */
  int slow_counted;             /* counted in its address's slow requests */
  struct call *ov_prev, *ov_next;
  grpc_byte_buffer *req_bb;  /* the request, until decoded */
  size_t req_bytes;          /* counted in srv->held_bytes */
  grpc_byte_buffer *resp_bb; /* being sent */
  grpc_slice status_details;
  int has_details;
  /* External only. */
  const struct rpc_external *ext;
  ProtobufCMessage *ext_req; /* decoded, until served */
  int ext_done;              /* ext->done ran */
  /* Write lane (lane_mu). */
  struct call *lane_next;
  int64_t lane_since_ms; /* monotonic: when it began to wait */
  /* Stream only. */
  struct rpc_stream stream;
  void *stream_data;                  /* the started callback's, once accepted */
  struct call *live_prev, *live_next; /* on srv->streams_live (srv->mu) */
  int on_live;
  pthread_mutex_t smu;
  int scheduled;     /* a job is queued or running */
  int begun;         /* the job ran authentication and started */
  int accepted;      /* started accepted the stream */
  int want_read;     /* the last message was handled; read the next */
  int recv_inflight; /* RECV_MESSAGE in flight, into recv_bb */
  grpc_byte_buffer *recv_bb;
  grpc_byte_buffer *pending_bb; /* received, for the message callback */
  size_t pending_bytes;         /* its length, counted in srv->held_bytes */
  int pending_half_closed;      /* for half_closed */
  int pending_drained;          /* for drained */
  int drain_wanted;             /* rpc_stream_notify_drained asked for drained */
  int pending_shutdown;         /* for shutdown */
  int shutdown_done;
  int closed;             /* RECV_CLOSE_ON_SERVER completed: the call is over */
  int finishing;          /* a status was chosen (rpc_stream_finish) */
  int status_after_drain; /* an OK status waits for the queue to empty */
  int status_inflight;
  grpc_status_code finish_status;
  int end_ready;                             /* over and nothing in flight: ended is due */
  int end_done;                              /* ended ran (or, not accepted, was skipped) */
  struct send_item *sendq_head, *sendq_tail; /* waiting, oldest first */
  grpc_byte_buffer *send_bb;                 /* in flight */
  size_t send_len;
  size_t queued_bytes; /* waiting and in flight */
  /* Timer (ev->timers_mu). */
  int on_timer;
  int expect_ms;           /* the timeout given, for the message */
  int64_t expect_deadline; /* monotonic ms */
  struct call *tm_prev, *tm_next;
  struct call *due_next; /* the sweep's list of expired timers */
  int due_ms;
  /* Pool queue. */
  struct call *job_next;
  void (*job_fn)(struct call *c);
};

/* Something rpc_server_free releases (rpc_server_add_cleanup). */
struct cleanup {
  void (*cb)(void *data);
  void *data;
  struct cleanup *next;
};

/* What one client address holds (peers_mu). An entry exists while a count
 * is not zero. */
struct peer {
  struct peer *next;
  int streams; /* streaming calls served without a credential */
  int slow;    /* unary requests still arriving after SLOW_MS */
  char addr[64];
};

/* A cap that refuses calls: counts them, and logs now and then. */
struct cap_note {
  const char *what;
  const char *outcome; /* "refused", "cancelled" */
  atomic_ulong refused;
  atomic_llong next_log_ms;
};

/* A FIFO of calls waiting for a pool thread (linked through job_next). */
struct job_queue {
  struct call *head, *tail;
};
enum { JOBS_CALLS, JOBS_STREAMS };
/* Unary jobs run in a row while stream jobs wait, at most (job_take). */
#define CALLS_PER_STREAM_TURN 4

/* Invariants: methods only change before `started`; the live stream list
 * and n_streams are guarded by mu; the call counters by calls_mu; the job
 * queues by pool_mu; the peer table by peers_mu; the write lane by
 * lane_mu. */
struct rpc_server {
  grpc_server *server;
  grpc_completion_queue *shutdown_cq; /* registered; only the shutdown tag */
  char shutdown_tag;
  int port;
  struct method *methods; /* sorted by path once started */
  size_t n_methods, cap_methods;
  struct cleanup *cleanups; /* most recently added first */
  int started;              /* grpc_server_start was called */
  rpc_auth_fn auth;         /* NULL: calls run anonymous */
  void *auth_data;
  int request_timeout_ms;
  int max_streams;
  int max_peer_streams;
  int shut_down; /* rpc_server_shutdown has run */
  atomic_int shutting_down;

  struct event_thread events[EVENT_THREADS];
  int n_events_started;

  pthread_mutex_t pool_mu;
  pthread_cond_t pool_cv;   /* a job was queued, or pool_stop */
  struct job_queue jobs[2]; /* JOBS_CALLS, JOBS_STREAMS */
  int calls_in_a_row;       /* JOBS_CALLS jobs run since the last stream job */
  int pool_stop;
  pthread_t *pool;
  int n_pool;
  int n_pool_started; /* pool[0..n_pool_started) have a thread to join */

  pthread_mutex_t calls_mu;
  pthread_cond_t calls_cv; /* n_calls dropped */
  int accepting;           /* grpc serves and requests may be posted */
  int n_calls;             /* struct call objects alive, requested ones included */
  int unary_requested;     /* outstanding grpc_server_request_call */
  int unary_live;          /* unary calls between arrival and release */
  unsigned next_event;     /* round robin over the event threads */
  atomic_size_t held_bytes;

  pthread_mutex_t peers_mu;
  struct peer *peers[PEER_BUCKETS];

  pthread_mutex_t lane_mu;
  struct call *lane_head, *lane_tail; /* writes waiting, oldest first */
  int lane_waiting;
  int writes_running; /* writes queued for or on a pool thread */
  int max_writes;

  pthread_mutex_t mu;
  struct call *streams_live; /* accepted streams not yet ended */
  int n_streams;             /* streams admitted by the caps, until released */

  struct cap_note cap_streams, cap_peer_streams, cap_peer_slow, cap_bytes, cap_timeout;
  struct cap_note cap_lane_full, cap_lane_wait;

  /* Calls finished: (n_methods + 1) x RPC_TRANSPORTS x STATUS_CODES, the
   * last method row for paths that name none. Allocated at start. */
  atomic_ulong *counts;
};

/* grpc_status_code runs from OK (0) to UNAUTHENTICATED (16). */
#define STATUS_CODES 17

/* --- helpers --- */

static gpr_timespec deadline_after_ms(long ms) {
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

static gpr_timespec forever(void) {
  return gpr_inf_future(GPR_CLOCK_MONOTONIC);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Shuts down a completion queue that nobody polls any more and drains it. */
static void cq_close(grpc_completion_queue *cq) {
  if (cq == NULL)
    return;
  grpc_completion_queue_shutdown(cq);
  while (grpc_completion_queue_next(cq, forever(), NULL).type != GRPC_QUEUE_SHUTDOWN)
    ;
  grpc_completion_queue_destroy(cq);
}

/* Counts a refusal by a cap; logs it at most every CAP_LOG_INTERVAL_MS,
 * with how many were refused since the last line (a flood of refused
 * calls is one line every few seconds, not one per call). */
static void cap_refused(struct cap_note *cap) {
  unsigned long n = atomic_fetch_add(&cap->refused, 1) + 1;
  int64_t now = now_ms();
  long long next = atomic_load(&cap->next_log_ms);
  if (now < next || !atomic_compare_exchange_strong(&cap->next_log_ms, &next,
                                                    (long long)(now + CAP_LOG_INTERVAL_MS)))
    return;
  atomic_fetch_sub(&cap->refused, n);
  log_warn("rpc", "%s: %lu call%s %s", cap->what, n, n == 1 ? "" : "s", cap->outcome);
}

/* The client address of a grpc peer string ("ipv4:127.0.0.1:51234",
 * "ipv6:[::1]:51234", "ipv6:%5B::1%5D:51234"): what lies between the
 * scheme and the port. */
static void peer_address(const char *peer, char *out, size_t len) {
  const char *start = strchr(peer, ':');
  start = start != NULL ? start + 1 : peer;
  const char *end = strrchr(start, ':');
  if (end == NULL || strncmp(peer, "unix:", 5) == 0)
    end = start + strlen(start);
  size_t n = (size_t)(end - start);
  if (n >= len)
    n = len - 1;
  memcpy(out, start, n);
  out[n] = '\0';
}

static unsigned peer_hash(const char *addr) {
  unsigned h = 2166136261u; /* FNV-1a */
  for (const unsigned char *p = (const unsigned char *)addr; *p != '\0'; p++)
    h = (h ^ *p) * 16777619u;
  return h % PEER_BUCKETS;
}

/* Adds d_streams and d_slow to addr's counts, unless that would take a
 * count that grows above its limit (<= 0: none). Returns 0, or -1 (nothing
 * changed): over the limit, or out of memory. */
static int peer_add(struct rpc_server *srv, const char *addr, int d_streams, int stream_limit,
                    int d_slow, int slow_limit) {
  pthread_mutex_lock(&srv->peers_mu);
  struct peer **pp = &srv->peers[peer_hash(addr)];
  while (*pp != NULL && strcmp((*pp)->addr, addr) != 0)
    pp = &(*pp)->next;
  struct peer *p = *pp;
  int rc = 0;
  if (p == NULL && (d_streams > 0 || d_slow > 0)) {
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
      pthread_mutex_unlock(&srv->peers_mu);
      return -1;
    }
    snprintf(p->addr, sizeof(p->addr), "%s", addr);
    *pp = p;
  }
  if (p == NULL) {
    pthread_mutex_unlock(&srv->peers_mu);
    return 0;
  }
  if ((d_streams > 0 && stream_limit > 0 && p->streams + d_streams > stream_limit) ||
      (d_slow > 0 && slow_limit > 0 && p->slow + d_slow > slow_limit)) {
    rc = -1;
  } else {
    p->streams += d_streams;
    p->slow += d_slow;
  }
  if (p->streams <= 0 && p->slow <= 0) {
    *pp = p->next;
    free(p);
  }
  pthread_mutex_unlock(&srv->peers_mu);
  return rc;
}

/* The one place where the server's transport security is chosen: TLS
 * with the server's certificate, clients verified against the client CA
 * when they present a certificate (a token works without one), or
 * plaintext when no certificate is given. */
static grpc_server_credentials *server_credentials(const struct rpc_server_opts *opts) {
  if (opts->tls_cert_pem == NULL || opts->tls_key_pem == NULL)
    return grpc_insecure_server_credentials_create();
  grpc_ssl_pem_key_cert_pair pair = {.private_key = opts->tls_key_pem,
                                     .cert_chain = opts->tls_cert_pem};
  /* The config copies the PEM strings. */
  grpc_ssl_server_certificate_config *config =
      grpc_ssl_server_certificate_config_create(opts->tls_client_ca_pem, &pair, 1);
  grpc_ssl_server_credentials_options *options =
      grpc_ssl_server_credentials_create_options_using_config(
          opts->tls_client_ca_pem != NULL ? GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY
                                          : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
          config);
  return grpc_ssl_server_credentials_create_with_options(options);
}

/* The first value of metadata key, NUL-terminated (caller wipes and frees);
 * NULL when absent. */
static char *metadata_value(const grpc_metadata_array *md, const char *key) {
  size_t klen = strlen(key);
  for (size_t i = 0; i < md->count; i++) {
    const grpc_slice *k = &md->metadata[i].key;
    if (GRPC_SLICE_LENGTH(*k) == klen && memcmp(GRPC_SLICE_START_PTR(*k), key, klen) == 0)
      return strndup((const char *)GRPC_SLICE_START_PTR(md->metadata[i].value),
                     GRPC_SLICE_LENGTH(md->metadata[i].value));
  }
  return NULL;
}

/* The verified client certificate of the call's connection (PEM, caller
 * frees), or NULL. */
static char *client_cert_pem(grpc_call *call) {
  grpc_auth_context *ctx = grpc_call_auth_context(call);
  if (ctx == NULL)
    return NULL;
  char *pem = NULL;
  if (grpc_auth_context_peer_is_authenticated(ctx)) {
    grpc_auth_property_iterator it =
        grpc_auth_context_find_properties_by_name(ctx, GRPC_X509_PEM_CERT_PROPERTY_NAME);
    const grpc_auth_property *p = grpc_auth_property_iterator_next(&it);
    if (p != NULL && p->value != NULL && p->value_length > 0)
      pem = strndup(p->value, p->value_length);
  }
  grpc_auth_context_release(ctx);
  return pem;
}

/* Who is calling: the authenticator's verdict on the call's bearer token
 * or client certificate. Without an authenticator every call is
 * anonymous. Returns 0, or -1 with err: the call must end with it. */
static int call_authenticate(struct call *c, struct tp_err *err) {
  struct rpc_identity *id = &c->identity;
  memset(id, 0, sizeof(*id));
  snprintf(id->actor, sizeof(id->actor), "anonymous");
  int rc = 0;
  if (c->srv->auth != NULL) {
    const struct rpc_external *x = c->ext;
    char *authorization = NULL, *cert = NULL;
    if (x == NULL) {
      authorization = metadata_value(&c->md, "authorization");
      cert = client_cert_pem(c->call);
    } else {
      authorization = x->authorization != NULL ? strdup(x->authorization) : NULL;
      cert = x->client_cert_pem != NULL ? strdup(x->client_cert_pem) : NULL;
    }
    /* A path of the caller's own (x->run) is ours to show; a method path
     * that names nothing is the client's text. */
    const char *shown = c->method != NULL             ? c->method->path
                        : x != NULL && x->run != NULL ? c->path
                                                      : c->shown;
    struct rpc_credentials cred = {.method = c->info.method,
                                   .method_shown = shown,
                                   .peer = c->info.peer,
                                   .authorization = authorization,
                                   .client_cert_pem = cert};
    rc = c->srv->auth(&cred, id, err, c->srv->auth_data);
    if (authorization != NULL) {
      OPENSSL_cleanse(authorization, strlen(authorization));
      free(authorization);
    }
    free(cert);
  }
  c->info.role = id->role;
  c->info.principal = id->principal;
  c->info.actor = id->actor;
  return rc;
}

static grpc_byte_buffer *message_encode(const ProtobufCMessage *msg) {
  return grpcmsg_encode(msg);
}

/* Decodes and destroys bb. */
static ProtobufCMessage *
message_decode(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc, struct tp_err *err) {
  ProtobufCMessage *msg = grpcmsg_decode(bb, desc);
  if (msg == NULL)
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "request: not a valid %s message", desc->name);
  /* Every message a client sends, unary or streamed: UTF-8, lengths and
   * time ranges are checked here, once, before any handler reads it. */
  if (msg != NULL && pb_input_check(msg, err) != 0) {
    protobuf_c_message_free_unpacked(msg, NULL);
    msg = NULL;
  }
  return msg;
}

/* Appends SEND_INITIAL_METADATA (empty) to ops at *n unless the call sent
 * it already; only the sending side calls it. */
static void ops_initial_metadata(struct call *c, grpc_op *ops, size_t *n) {
  if (c->sent_initial_md)
    return;
  ops[*n].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[*n].data.send_initial_metadata.count = 0;
  (*n)++;
  c->sent_initial_md = 1;
}

/* Appends SEND_STATUS_FROM_SERVER; details must live until the batch
 * starts. */
static void ops_status(grpc_op *ops, size_t *n, grpc_status_code status, grpc_slice *details) {
  ops[*n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[*n].data.send_status_from_server.trailing_metadata_count = 0;
  ops[*n].data.send_status_from_server.status = status;
  ops[*n].data.send_status_from_server.status_details = details;
  (*n)++;
}

static const struct method *method_find(const struct rpc_server *srv, const char *path, size_t len);

/* --- calls --- */

/* A call object for the next request, counted in srv->n_calls (the caller
 * has counted it). Every batch of the call completes on ev's queue. */
static struct call *call_new(struct rpc_server *srv, enum call_kind kind, struct event_thread *ev) {
  struct call *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return NULL;
  c->magic = CALL_MAGIC;
  c->srv = srv;
  c->kind = kind;
  c->ev = ev;
  c->cq = ev->cq;
  if (kind == CALL_STREAM) {
    pthread_mutex_init(&c->smu, NULL);
    c->stream.magic = RPC_STREAM_MAGIC;
    c->stream.call = c;
  }
  c->op_new = (struct op){c, OP_NEW};
  c->op_close = (struct op){c, OP_CLOSE};
  c->op_recv = (struct op){c, OP_RECV};
  c->op_send = (struct op){c, OP_SEND};
  c->op_status = (struct op){c, OP_STATUS};
  atomic_init(&c->refs, 1);
  atomic_init(&c->expired, 0);
  atomic_init(&c->recv_started_ms, 0);
  atomic_init(&c->close_done, 0);
  grpc_call_details_init(&c->details);
  grpc_metadata_array_init(&c->md);
  return c;
}

/* Fills in what the call is: method, path, peer. path/len: the method path
 * as the client sent it. */
static void call_describe(struct call *c, const char *path, size_t len) {
  if (c->method == NULL)
    c->method = method_find(c->srv, path, len);
  c->path = strndup(path, len);
  c->peer = grpc_call_get_peer(c->call);
  peer_address(c->peer != NULL ? c->peer : "", c->peer_addr, sizeof(c->peer_addr));
  /* A path that names no method is the client's text: it may hold
   * anything (a token pasted in the wrong place), so logs and errors show
   * its length only. */
  snprintf(c->shown, sizeof(c->shown), "unknown method (%zu bytes)", len);
  c->info.method = c->method != NULL ? c->method->path : c->path != NULL ? c->path : "";
  c->info.peer = c->peer != NULL ? c->peer : "";
}

static void calls_released(struct rpc_server *srv, int unary);
static void sendq_drop(struct call *c);
static void ext_finish(struct call *c, grpc_status_code status, const char *msg,
                       ProtobufCMessage *resp);

/* Frees the memory of a call whose grpc call (if any) is over. */
static void call_destroy(struct call *c) {
  struct rpc_server *srv = c->srv;
  if (c->kind == CALL_EXT)
    ext_finish(c, GRPC_STATUS_INTERNAL, "the call was dropped unanswered", NULL);
  int unary_live = c->kind == CALL_UNARY && c->call != NULL;
  if (c->call != NULL) {
    if (!c->status_sent)
      grpc_call_cancel(c->call, NULL);
    grpc_call_unref(c->call);
  }
  if (c->kind == CALL_STREAM) {
    sendq_drop(c);
    if (c->send_bb != NULL)
      grpc_byte_buffer_destroy(c->send_bb);
    if (c->recv_bb != NULL)
      grpc_byte_buffer_destroy(c->recv_bb);
    if (c->pending_bb != NULL) {
      grpc_byte_buffer_destroy(c->pending_bb);
      atomic_fetch_sub(&srv->held_bytes, c->pending_bytes);
    }
    if (c->peer_stream)
      peer_add(srv, c->peer_addr, -1, 0, 0, 0);
    if (c->stream_counted) {
      pthread_mutex_lock(&srv->mu);
      srv->n_streams--;
      pthread_mutex_unlock(&srv->mu);
    }
    c->stream.magic = 0;
    pthread_mutex_destroy(&c->smu);
  }
  if (c->req_bb != NULL)
    grpc_byte_buffer_destroy(c->req_bb);
  if (c->resp_bb != NULL)
    grpc_byte_buffer_destroy(c->resp_bb);
  if (c->has_details)
    grpc_slice_unref(c->status_details);
  grpc_call_details_destroy(&c->details);
  grpc_metadata_array_destroy(&c->md);
  gpr_free(c->peer);
  free(c->path);
  c->magic = 0;
  free(c);
  calls_released(srv, unary_live);
}

/* --- the pool --- */

/* Queues fn(c) for a pool thread; the job owns one of c's references (unary)
 * or c itself (stream). Unary calls and streams wait in queues of their
 * own (see job_take). */
static void job_push(struct call *c, void (*fn)(struct call *c)) {
  struct rpc_server *srv = c->srv;
  struct job_queue *q = &srv->jobs[c->kind == CALL_STREAM ? JOBS_STREAMS : JOBS_CALLS];
  c->job_fn = fn;
  c->job_next = NULL;
  pthread_mutex_lock(&srv->pool_mu);
  if (q->tail != NULL)
    q->tail->job_next = c;
  else
    q->head = c;
  q->tail = c;
  pthread_cond_signal(&srv->pool_cv);
  pthread_mutex_unlock(&srv->pool_mu);
}

/* The next job (pool_mu held), NULL when both queues are empty. Unary
 * calls go first: a push to thousands of agents queues thousands of
 * stream jobs (their acks) at once, and an API call that waited behind
 * them all would take as long as the whole push. Streams still get one
 * turn in every CALLS_PER_STREAM_TURN + 1 jobs, so that a flood of unary
 * calls (bounded by MAX_UNARY_CALLS anyway) cannot stall them. */
static struct call *job_take(struct rpc_server *srv) {
  struct job_queue *calls = &srv->jobs[JOBS_CALLS], *streams = &srv->jobs[JOBS_STREAMS];
  struct job_queue *q = calls;
  if (calls->head == NULL ||
      (streams->head != NULL && srv->calls_in_a_row >= CALLS_PER_STREAM_TURN))
    q = streams;
  struct call *c = q->head;
  if (c == NULL)
    return NULL;
  srv->calls_in_a_row = q == calls ? srv->calls_in_a_row + 1 : 0;
  q->head = c->job_next;
  if (q->head == NULL)
    q->tail = NULL;
  return c;
}

/* Runs jobs until the pool is stopped; the queues are empty by then (every
 * call is released before rpc_server_shutdown stops the pool). */
static void *pool_main(void *arg) {
  struct rpc_server *srv = arg;
  pthread_mutex_lock(&srv->pool_mu);
  for (;;) {
    struct call *c;
    while ((c = job_take(srv)) == NULL && !srv->pool_stop)
      pthread_cond_wait(&srv->pool_cv, &srv->pool_mu);
    if (c == NULL)
      break;
    pthread_mutex_unlock(&srv->pool_mu);
    c->job_fn(c);
    pthread_mutex_lock(&srv->pool_mu);
  }
  pthread_mutex_unlock(&srv->pool_mu);
  return NULL;
}

/* --- requesting calls --- */

static struct event_thread *event_next(struct rpc_server *srv) {
  return &srv->events[srv->next_event++ % EVENT_THREADS]; /* under calls_mu */
}

/* Releases the call object of a request that could not be posted (c NULL:
 * it could not even be made; it was counted all the same). */
static void request_abandon(struct rpc_server *srv, struct call *c) {
  if (c == NULL) {
    calls_released(srv, 0);
    return;
  }
  c->call = NULL;
  call_destroy(c);
}

/* Keeps REQUESTS_PER_EVENT_THREAD unary requests outstanding per event
 * thread while fewer than MAX_UNARY_CALLS unary calls are live. Called from
 * any thread: at start, whenever a unary call arrives or is released, and by
 * each sweep (which retries after an allocation failed). */
static void unary_request_more(struct rpc_server *srv) {
  for (;;) {
    pthread_mutex_lock(&srv->calls_mu);
    if (!srv->accepting || srv->unary_requested >= REQUESTS_PER_EVENT_THREAD * EVENT_THREADS ||
        srv->unary_live + srv->unary_requested >= MAX_UNARY_CALLS) {
      pthread_mutex_unlock(&srv->calls_mu);
      return;
    }
    struct event_thread *ev = event_next(srv);
    srv->unary_requested++;
    srv->n_calls++;
    pthread_mutex_unlock(&srv->calls_mu);
    struct call *c = call_new(srv, CALL_UNARY, ev);
    if (c == NULL || grpc_server_request_call(srv->server, &c->call, &c->details, &c->md, ev->cq,
                                              ev->cq, &c->op_new) != GRPC_CALL_OK) {
      pthread_mutex_lock(&srv->calls_mu);
      srv->unary_requested--;
      pthread_mutex_unlock(&srv->calls_mu);
      request_abandon(srv, c);
      return;
    }
  }
}

/* Requests the next call of streaming method m, unless one is requested. */
static void stream_request(struct rpc_server *srv, struct method *m) {
  pthread_mutex_lock(&srv->calls_mu);
  if (!srv->accepting || m->requested) {
    pthread_mutex_unlock(&srv->calls_mu);
    return;
  }
  struct event_thread *ev = event_next(srv);
  m->requested = 1;
  srv->n_calls++;
  pthread_mutex_unlock(&srv->calls_mu);
  struct call *c = call_new(srv, CALL_STREAM, ev);
  if (c != NULL) {
    c->method = m;
    c->requested = m;
    if (grpc_server_request_registered_call(srv->server, m->registered, &c->call, &c->deadline,
                                            &c->md, NULL, ev->cq, ev->cq,
                                            &c->op_new) == GRPC_CALL_OK)
      return;
  }
  pthread_mutex_lock(&srv->calls_mu);
  m->requested = 0;
  pthread_mutex_unlock(&srv->calls_mu);
  request_abandon(srv, c);
}

static void streams_request_all(struct rpc_server *srv) {
  for (size_t i = 0; i < srv->n_methods; i++)
    if (srv->methods[i].stream != NULL)
      stream_request(srv, &srv->methods[i]);
}

/* A call object is gone (unary_live: it was a live unary call): lets
 * shutdown know, and requests another unary call in its place. */
static void calls_released(struct rpc_server *srv, int unary_live) {
  pthread_mutex_lock(&srv->calls_mu);
  srv->n_calls--;
  if (unary_live)
    srv->unary_live--;
  pthread_cond_broadcast(&srv->calls_cv);
  pthread_mutex_unlock(&srv->calls_mu);
  if (unary_live)
    unary_request_more(srv);
}

/* --- unary calls --- */

static void call_ref(struct call *c) {
  atomic_fetch_add(&c->refs, 1);
}

static void call_unref(struct call *c) {
  if (atomic_fetch_sub(&c->refs, 1) == 1)
    call_destroy(c);
}

/* Starts a batch on a unary call under one reference, which the batch's
 * completion releases. Returns 0, or -1 (nothing started, the call
 * cancelled so that it ends, the reference released). */
static int unary_start(struct call *c, const grpc_op *ops, size_t n, struct op *op) {
  call_ref(c);
  if (grpc_call_start_batch(c->call, ops, n, op, NULL) == GRPC_CALL_OK)
    return 0;
  grpc_call_cancel(c->call, NULL);
  call_unref(c);
  return -1;
}

/* Counts a call's status, once per call. */
static void call_count(struct call *c, grpc_status_code status) {
  struct rpc_server *srv = c->srv;
  if (srv->counts == NULL || (unsigned)status >= STATUS_CODES)
    return;
  size_t row = c->method != NULL ? (size_t)(c->method - srv->methods) : srv->n_methods;
  size_t transport = c->kind == CALL_EXT ? RPC_TRANSPORT_EXTERNAL : RPC_TRANSPORT_GRPC;
  atomic_fetch_add(&srv->counts[(row * RPC_TRANSPORTS + transport) * STATUS_CODES + status], 1);
}

/* An external call's end: hands the outcome to its caller, once (resp,
 * on OK, goes with it). */
static void ext_finish(struct call *c, grpc_status_code status, const char *msg,
                       ProtobufCMessage *resp) {
  if (c->ext_req != NULL) {
    protobuf_c_message_free_unpacked(c->ext_req, NULL);
    c->ext_req = NULL;
  }
  if (c->ext_done) {
    if (resp != NULL)
      protobuf_c_message_free_unpacked(resp, NULL);
    return;
  }
  c->ext_done = 1;
  if (c->ext->run == NULL)
    call_count(c, status);
  c->ext->done(status, msg != NULL ? msg : "", resp, c->ext->data);
}

/* Sends the call's end: the initial metadata, resp if given (the call owns
 * it from here on), the status. Does not wait. An external call's end goes
 * to its caller (resp is NULL for those). */
static void unary_finish(struct call *c, grpc_byte_buffer *resp, grpc_status_code status,
                         const char *msg) {
  if (c->kind == CALL_EXT) {
    if (resp != NULL)
      grpc_byte_buffer_destroy(resp);
    ext_finish(c, status, msg, NULL);
    return;
  }
  call_count(c, status);
  grpc_op ops[3];
  size_t n = 0;
  memset(ops, 0, sizeof(ops));
  ops_initial_metadata(c, ops, &n);
  if (resp != NULL) {
    c->resp_bb = resp;
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = resp;
    n++;
  }
  c->status_details = grpc_slice_from_copied_string(msg != NULL ? msg : "");
  c->has_details = 1;
  ops_status(ops, &n, status, &c->status_details);
  unary_start(c, ops, n, &c->op_send);
}

static void unary_finish_error(struct call *c, const struct tp_err *err) {
  if (err->status == GRPC_STATUS_OK)
    unary_finish(c, NULL, GRPC_STATUS_INTERNAL, "handler failed without an error");
  else
    unary_finish(c, NULL, err->status, err->msg);
}

static void overdue_remove(struct call *c) {
  struct event_thread *ev = c->ev;
  if (!c->on_overdue)
    return;
  if (c->ov_prev != NULL)
    c->ov_prev->ov_next = c->ov_next;
  else
    ev->overdue_head = c->ov_next;
  if (c->ov_next != NULL)
    c->ov_next->ov_prev = c->ov_prev;
  else
    ev->overdue_tail = c->ov_prev;
  c->ov_prev = c->ov_next = NULL;
  c->on_overdue = 0;
  if (c->slow_counted) {
    peer_add(c->srv, c->peer_addr, 0, 0, -1, 0);
    c->slow_counted = 0;
  }
  call_unref(c);
}

/* Pool: the request arrived whole. Decode, run the handler, send. */
static void unary_serve(struct call *c) {
  struct rpc_server *srv = c->srv;
  const struct method *m = c->method;
  struct tp_err err = {.status = GRPC_STATUS_OK};
  ProtobufCMessage *req = NULL;
  if (c->kind == CALL_EXT) {
    req = c->ext_req;
    c->ext_req = NULL;
    if (c->ext->deadline_ms > 0 && now_ms() >= c->ext->deadline_ms) {
      protobuf_c_message_free_unpacked(req, NULL);
      req = NULL;
      tp_err_set(&err, GRPC_STATUS_DEADLINE_EXCEEDED,
                 "the call's deadline passed before it ran; nothing was done");
    }
  } else {
    grpc_byte_buffer *bb = c->req_bb;
    c->req_bb = NULL;
    req = message_decode(bb, m->req, &err);
    atomic_fetch_sub(&srv->held_bytes, c->req_bytes);
    c->req_bytes = 0;
  }
  if (req == NULL) {
    unary_finish_error(c, &err);
    call_unref(c);
    return;
  }
  ProtobufCMessage *resp = NULL;
  int rc = m->unary(&c->info, req, &resp, &err, m->data);
  protobuf_c_message_free_unpacked(req, NULL);
  if (rc < 0) {
    unary_finish_error(c, &err);
  } else if (resp == NULL || resp->descriptor != m->resp) {
    if (resp != NULL)
      protobuf_c_message_free_unpacked(resp, NULL);
    unary_finish(c, NULL, GRPC_STATUS_INTERNAL, "handler returned no or the wrong response");
  } else if (c->kind == CALL_EXT) {
    ext_finish(c, GRPC_STATUS_OK, NULL, resp);
  } else {
    grpc_byte_buffer *out = message_encode(resp);
    protobuf_c_message_free_unpacked(resp, NULL);
    unary_finish(c, out, GRPC_STATUS_OK, NULL);
  }
  call_unref(c);
}

/* --- the write lane --- */

/* Answers a write that leaves the lane unrun; takes the lane's reference. */
static void lane_refuse(struct call *c, grpc_status_code status, const char *msg) {
  if (c->req_bb != NULL) {
    grpc_byte_buffer_destroy(c->req_bb);
    c->req_bb = NULL;
  }
  atomic_fetch_sub(&c->srv->held_bytes, c->req_bytes);
  c->req_bytes = 0;
  if (c->kind != CALL_EXT && atomic_load(&c->close_done))
    grpc_call_cancel(c->call, NULL); /* nobody to answer */
  else
    unary_finish(c, NULL, status, msg);
  call_unref(c);
}

static void write_serve(struct call *c);

/* A write slot is free: hands it to the oldest waiting write that can
 * still be answered, or gives it back. */
static void lane_release(struct rpc_server *srv) {
  for (;;) {
    pthread_mutex_lock(&srv->lane_mu);
    struct call *c = srv->lane_head;
    if (c != NULL) {
      srv->lane_head = c->lane_next;
      if (srv->lane_head == NULL)
        srv->lane_tail = NULL;
      srv->lane_waiting--;
    } else {
      srv->writes_running--;
    }
    pthread_mutex_unlock(&srv->lane_mu);
    if (c == NULL)
      return;
    if (!atomic_load(&c->close_done) && !atomic_load(&srv->shutting_down)) {
      job_push(c, write_serve); /* the slot goes with it */
      return;
    }
    lane_refuse(c, GRPC_STATUS_UNAVAILABLE, "the server is shutting down; nothing was written");
  }
}

/* Pool: a write in its slot. */
static void write_serve(struct call *c) {
  struct rpc_server *srv = c->srv;
  unary_serve(c);
  lane_release(srv);
}

/* Event: a write's request arrived whole: runs it if a slot is free,
 * else it waits in the lane. Takes the receive's reference. */
static void lane_enter(struct call *c) {
  struct rpc_server *srv = c->srv;
  int run = 0, waiting;
  pthread_mutex_lock(&srv->lane_mu);
  waiting = srv->lane_waiting;
  if (srv->writes_running < srv->max_writes && srv->lane_head == NULL) {
    srv->writes_running++;
    run = 1;
  } else if (waiting < MAX_LANE_WAITING) {
    c->lane_next = NULL;
    c->lane_since_ms = now_ms();
    if (srv->lane_tail != NULL)
      srv->lane_tail->lane_next = c;
    else
      srv->lane_head = c;
    srv->lane_tail = c;
    srv->lane_waiting++;
    waiting = -1;
  }
  pthread_mutex_unlock(&srv->lane_mu);
  if (run) {
    job_push(c, write_serve);
  } else if (waiting >= 0) {
    char msg[192];
    cap_refused(&srv->cap_lane_full);
    snprintf(msg, sizeof(msg),
             "server busy: %d writes wait already, the most it queues; nothing was written, retry "
             "with backoff",
             MAX_LANE_WAITING);
    lane_refuse(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
  }
}

/* Event: answers the writes that waited LANE_WAIT_MS (the oldest first). */
static void lane_sweep(struct rpc_server *srv, int64_t now) {
  for (;;) {
    pthread_mutex_lock(&srv->lane_mu);
    struct call *c = srv->lane_head;
    if (c != NULL && c->lane_since_ms + LANE_WAIT_MS <= now) {
      srv->lane_head = c->lane_next;
      if (srv->lane_head == NULL)
        srv->lane_tail = NULL;
      srv->lane_waiting--;
    } else {
      c = NULL;
    }
    pthread_mutex_unlock(&srv->lane_mu);
    if (c == NULL)
      return;
    char msg[192];
    cap_refused(&srv->cap_lane_wait);
    snprintf(msg, sizeof(msg),
             "server busy: the write waited %d ms behind other writes; nothing was written, retry",
             LANE_WAIT_MS);
    lane_refuse(c, GRPC_STATUS_UNAVAILABLE, msg);
  }
}

/* Pool: the call's metadata arrived. Authentication comes first, also for
 * unknown methods: a caller without a credential learns nothing about the
 * API, and its request is never read. */
static void unary_authorize(struct call *c) {
  char msg[512];
  struct tp_err err = {.status = GRPC_STATUS_OK};
  if (atomic_load(&c->expired)) {
    /* The sweep ended it while it waited for a pool thread. */
  } else if (call_authenticate(c, &err) != 0) {
    unary_finish_error(c, &err);
  } else if (c->method == NULL) {
    snprintf(msg, sizeof(msg), "%s", c->shown);
    unary_finish(c, NULL, GRPC_STATUS_UNIMPLEMENTED, msg);
  } else if (c->method->unary == NULL) {
    snprintf(msg, sizeof(msg), "method %s is not implemented", c->method->path);
    unary_finish(c, NULL, GRPC_STATUS_UNIMPLEMENTED, msg);
  } else {
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->req_bb;
    atomic_store(&c->recv_started_ms, (long long)now_ms());
    if (unary_start(c, &op, 1, &c->op_recv) != 0)
      atomic_store(&c->recv_started_ms, 0);
  }
  call_unref(c);
}

/* Pool: an external call, as unary_authorize and unary_received together
 * for a request that is already whole. */
static void ext_authorize(struct call *c) {
  char msg[512];
  struct tp_err err = {.status = GRPC_STATUS_OK};
  const struct rpc_external *x = c->ext;
  const struct method *m = c->method;
  if (call_authenticate(c, &err) != 0) {
    unary_finish_error(c, &err);
  } else if (x->run != NULL) {
    x->run(&c->info, x->data);
    ext_finish(c, GRPC_STATUS_OK, NULL, NULL);
  } else if (m == NULL) {
    unary_finish(c, NULL, GRPC_STATUS_UNIMPLEMENTED, c->shown);
  } else if (m->stream != NULL) {
    snprintf(msg, sizeof(msg),
             "method %s streams: only unary methods are served here; call it over gRPC", m->path);
    unary_finish(c, NULL, GRPC_STATUS_UNIMPLEMENTED, msg);
  } else if (m->unary == NULL) {
    snprintf(msg, sizeof(msg), "method %s is not implemented", m->path);
    unary_finish(c, NULL, GRPC_STATUS_UNIMPLEMENTED, msg);
  } else if (x->decode(m->req, &c->ext_req, &err, x->data) != 0 ||
             pb_input_check(c->ext_req, &err) != 0) {
    if (err.status == GRPC_STATUS_OK)
      tp_err_set(&err, GRPC_STATUS_INVALID_ARGUMENT, "request: not a valid %s message",
                 m->req->name);
    unary_finish_error(c, &err);
  } else if (m->write) {
    lane_enter(c); /* takes the job's reference */
    return;
  } else {
    unary_serve(c); /* takes the job's reference */
    return;
  }
  call_unref(c);
}

/* Event: a unary call arrived (or, success == 0, its request failed at
 * shutdown). */
static void unary_arrived(struct call *c, int success) {
  struct rpc_server *srv = c->srv;
  struct event_thread *ev = c->ev;
  pthread_mutex_lock(&srv->calls_mu);
  srv->unary_requested--;
  int live = success && c->call != NULL;
  if (live)
    srv->unary_live++;
  pthread_mutex_unlock(&srv->calls_mu);
  if (!live) {
    c->call = NULL;
    call_destroy(c);
    return;
  }
  unary_request_more(srv);
  call_describe(c, (const char *)GRPC_SLICE_START_PTR(c->details.method),
                GRPC_SLICE_LENGTH(c->details.method));
  /* refs is 1: this function's, handed to the pool's job below. */
  c->arrived_ms = now_ms();
  c->deadline_ms = c->arrived_ms + srv->request_timeout_ms;
  call_ref(c);
  c->on_overdue = 1;
  c->ov_prev = ev->overdue_tail;
  if (ev->overdue_tail != NULL)
    ev->overdue_tail->ov_next = c;
  else
    ev->overdue_head = c;
  ev->overdue_tail = c;

  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  op.data.recv_close_on_server.cancelled = &c->cancelled;
  if (unary_start(c, &op, 1, &c->op_close) == 0)
    c->close_started = 1;
  job_push(c, unary_authorize);
}

/* Event: the request message arrived, or the call broke (cancelled, too
 * large: grpc core ended it with its status). */
static void unary_received(struct call *c, int success) {
  struct rpc_server *srv = c->srv;
  overdue_remove(c);
  if (!success || atomic_load(&c->expired)) {
    grpc_call_cancel(c->call, NULL);
    call_unref(c);
    return;
  }
  if (c->req_bb == NULL) {
    unary_finish(c, NULL, GRPC_STATUS_INVALID_ARGUMENT, "request: no message");
    call_unref(c);
    return;
  }
  size_t n = grpc_byte_buffer_length(c->req_bb);
  if (atomic_fetch_add(&srv->held_bytes, n) + n > MAX_HELD_BYTES) {
    atomic_fetch_sub(&srv->held_bytes, n);
    grpc_byte_buffer_destroy(c->req_bb);
    c->req_bb = NULL;
    cap_refused(&srv->cap_bytes);
    char msg[128];
    snprintf(msg, sizeof(msg), "the server holds %zu MiB of requests already; retry later",
             MAX_HELD_BYTES >> 20);
    unary_finish(c, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
    call_unref(c);
    return;
  }
  c->req_bytes = n;
  /* The receive's reference goes with it. */
  if (c->method->write)
    lane_enter(c);
  else
    job_push(c, unary_serve);
}

static void unary_sent(struct call *c, int success) {
  c->status_sent = success;
  if (!success)
    grpc_call_cancel(c->call, NULL);
  if (c->resp_bb != NULL) {
    grpc_byte_buffer_destroy(c->resp_bb);
    c->resp_bb = NULL;
  }
  call_unref(c);
}

static void unary_closed(struct call *c) {
  atomic_store(&c->close_done, 1);
  overdue_remove(c);
  call_unref(c);
}

/* Event: cancels the calls whose request is overdue, and those beyond
 * MAX_PEER_SLOW slow ones of their address. The list is in arrival order,
 * so the walk stops at the first call too young to be either. */
static void overdue_sweep(struct event_thread *ev, int64_t now) {
  struct rpc_server *srv = ev->srv;
  int64_t young = srv->request_timeout_ms < SLOW_MS ? srv->request_timeout_ms : SLOW_MS;
  for (struct call *c = ev->overdue_head; c != NULL && c->arrived_ms + young <= now;
       c = c->ov_next) {
    if (atomic_load(&c->expired))
      continue; /* already cancelled, leaves the list once its batches end */
    char msg[192];
    if (c->deadline_ms <= now) {
      atomic_store(&c->expired, 1);
      cap_refused(&srv->cap_timeout);
      snprintf(msg, sizeof(msg), "request: not complete within %d ms", srv->request_timeout_ms);
      grpc_call_cancel_with_status(c->call, GRPC_STATUS_DEADLINE_EXCEEDED, msg, NULL);
      continue;
    }
    long long started = atomic_load(&c->recv_started_ms);
    if (c->slow_counted || started == 0 || started + SLOW_MS > now)
      continue;
    if (peer_add(srv, c->peer_addr, 0, 0, 1, MAX_PEER_SLOW) == 0) {
      c->slow_counted = 1;
      continue;
    }
    atomic_store(&c->expired, 1);
    cap_refused(&srv->cap_peer_slow);
    snprintf(msg, sizeof(msg),
             "request: too many requests from %s still arriving after %d ms (at most %d)",
             c->peer_addr, SLOW_MS, MAX_PEER_SLOW);
    grpc_call_cancel_with_status(c->call, GRPC_STATUS_RESOURCE_EXHAUSTED, msg, NULL);
  }
}

static int method_cmp_key(const char *path, size_t len, const struct method *m) {
  size_t n = len < m->path_len ? len : m->path_len;
  int d = memcmp(path, m->path, n);
  if (d != 0)
    return d;
  return len < m->path_len ? -1 : len > m->path_len ? 1 : 0;
}

static const struct method *method_find(const struct rpc_server *srv, const char *path,
                                        size_t len) {
  size_t lo = 0, hi = srv->n_methods;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int d = method_cmp_key(path, len, &srv->methods[mid]);
    if (d == 0)
      return &srv->methods[mid];
    if (d < 0)
      hi = mid;
    else
      lo = mid + 1;
  }
  return NULL;
}

/* --- streaming calls --- */

static void stream_run(struct call *c);

/* Drops a reference that is known not to be the last (the caller holds
 * another), so that it may be dropped with smu held. */
static void call_unref_held(struct call *c) {
  atomic_fetch_sub(&c->refs, 1);
}

/* Starts a batch on a stream under one reference, which the batch's
 * completion releases (smu held; the caller holds a reference too).
 * Returns 0, or -1: nothing started, and the call is cancelled so that its
 * close comes. */
static int stream_batch(struct call *c, const grpc_op *ops, size_t n, struct op *op) {
  call_ref(c);
  if (grpc_call_start_batch(c->call, ops, n, op, NULL) == GRPC_CALL_OK)
    return 0;
  grpc_call_cancel(c->call, NULL);
  call_unref_held(c);
  return -1;
}

/* Has a pool thread run the stream's pending callbacks, unless one is on
 * it already (smu held). The job holds a reference. */
static void stream_schedule(struct call *c) {
  if (c->scheduled)
    return;
  c->scheduled = 1;
  call_ref(c);
  job_push(c, stream_run);
}

/* Drops the messages waiting to be sent (smu held); the one in flight
 * completes on its own. */
static void sendq_drop(struct call *c) {
  while (c->sendq_head != NULL) {
    struct send_item *it = c->sendq_head;
    c->sendq_head = it->next;
    c->queued_bytes -= it->len;
    grpc_byte_buffer_destroy(it->bb);
    free(it);
  }
  c->sendq_tail = NULL;
  c->status_after_drain = 0;
}

/* Takes c off its event thread's timer list. Returns 1 if it was on: the
 * list's reference is then the caller's to drop. */
static int timer_remove(struct call *c) {
  struct event_thread *ev = c->ev;
  pthread_mutex_lock(&ev->timers_mu);
  int was = c->on_timer;
  if (was) {
    if (c->tm_prev != NULL)
      c->tm_prev->tm_next = c->tm_next;
    else
      ev->timers_head = c->tm_next;
    if (c->tm_next != NULL)
      c->tm_next->tm_prev = c->tm_prev;
    else
      ev->timers_tail = c->tm_prev;
    c->tm_prev = c->tm_next = NULL;
    c->on_timer = 0;
  }
  pthread_mutex_unlock(&ev->timers_mu);
  return was;
}

/* Puts c on its event thread's timer list, due ms from now, replacing its
 * timer if it has one (smu held). Deadlines mostly come in order (one
 * timeout for all), so the walk from the tail is short. */
static void timer_set(struct call *c, int ms) {
  struct event_thread *ev = c->ev;
  int was = timer_remove(c);
  pthread_mutex_lock(&ev->timers_mu);
  if (!was)
    call_ref(c); /* the list's */
  c->expect_ms = ms;
  c->expect_deadline = now_ms() + ms;
  struct call *after = ev->timers_tail;
  while (after != NULL && after->expect_deadline > c->expect_deadline)
    after = after->tm_prev;
  c->tm_prev = after;
  c->tm_next = after != NULL ? after->tm_next : ev->timers_head;
  if (c->tm_next != NULL)
    c->tm_next->tm_prev = c;
  else
    ev->timers_tail = c;
  if (after != NULL)
    after->tm_next = c;
  else
    ev->timers_head = c;
  c->on_timer = 1;
  pthread_mutex_unlock(&ev->timers_mu);
}

/* Ends the stream's call once it is over and nothing of it is in flight:
 * ended is then due (smu held). */
static void stream_check_end(struct call *c) {
  if (c->end_ready || !c->closed || c->recv_inflight || c->send_bb != NULL || c->status_inflight)
    return;
  c->end_ready = 1;
  sendq_drop(c);
  stream_schedule(c);
}

/* Posts the next receive if the last message was handled, the call goes on
 * and the client reads what it is sent (smu held). */
static void stream_read_maybe(struct call *c) {
  if (!c->want_read || c->recv_inflight || c->closed || c->finishing ||
      c->queued_bytes > RPC_STREAM_READ_PAUSE)
    return;
  c->want_read = 0;
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &c->recv_bb;
  c->recv_bb = NULL;
  if (stream_batch(c, &op, 1, &c->op_recv) == 0)
    c->recv_inflight = 1;
}

/* Sends the chosen status (smu held). */
static void stream_status_start(struct call *c) {
  grpc_op ops[2];
  size_t n = 0;
  memset(ops, 0, sizeof(ops));
  ops_initial_metadata(c, ops, &n);
  ops_status(ops, &n, c->finish_status, &c->status_details);
  if (stream_batch(c, ops, n, &c->op_status) == 0)
    c->status_inflight = 1;
}

/* Hands the oldest queued message to grpc unless one is in flight; with
 * none left, the status that waited for them (smu held). */
static void stream_send_next(struct call *c) {
  if (c->send_bb != NULL || c->closed)
    return;
  struct send_item *it = c->sendq_head;
  if (it == NULL) {
    if (c->status_after_drain) {
      c->status_after_drain = 0;
      stream_status_start(c);
    }
    return;
  }
  c->sendq_head = it->next;
  if (c->sendq_head == NULL)
    c->sendq_tail = NULL;
  grpc_op ops[2];
  size_t n = 0;
  memset(ops, 0, sizeof(ops));
  ops_initial_metadata(c, ops, &n);
  ops[n].op = GRPC_OP_SEND_MESSAGE;
  ops[n].data.send_message.send_message = it->bb;
  n++;
  c->send_bb = it->bb;
  c->send_len = it->len;
  free(it);
  if (stream_batch(c, ops, n, &c->op_send) != 0) {
    grpc_byte_buffer_destroy(c->send_bb);
    c->send_bb = NULL;
    c->queued_bytes -= c->send_len;
  }
}

/* Chooses the call's status (smu held): OK after the queued messages, any
 * other at once as a cancellation, which needs no flow-control window. */
static int stream_finish_locked(struct call *c, grpc_status_code status, const char *msg) {
  if (c->finishing || c->end_ready || c->closed) {
    c->finishing = 1;
    return -EALREADY;
  }
  c->finishing = 1;
  c->finish_status = status;
  call_count(c, status);
  if (status == GRPC_STATUS_OK) {
    c->status_details = grpc_slice_from_copied_string(msg != NULL ? msg : "");
    c->has_details = 1;
    if (c->send_bb == NULL && c->sendq_head == NULL)
      stream_status_start(c);
    else
      c->status_after_drain = 1;
  } else {
    sendq_drop(c);
    grpc_call_cancel_with_status(c->call, status, msg != NULL ? msg : "", NULL);
    c->status_sent = 1; /* the cancellation is the status */
  }
  return 0;
}

static int stream_finish(struct call *c, grpc_status_code status, const char *msg) {
  pthread_mutex_lock(&c->smu);
  int rc = stream_finish_locked(c, status, msg);
  int timer = timer_remove(c); /* nothing more is read */
  if (timer)
    call_unref_held(c); /* the caller holds one */
  pthread_mutex_unlock(&c->smu);
  return rc;
}

static void stream_finish_error(struct call *c, const struct tp_err *err) {
  if (err->status == GRPC_STATUS_OK)
    stream_finish(c, GRPC_STATUS_INTERNAL, "handler failed without an error");
  else
    stream_finish(c, err->status, err->msg);
}

/* Pool: the stream is not served (authentication, a cap, or its started
 * callback said no). Its status goes out as a cancellation, which waits
 * for nothing; the call is freed once its close completed. */
static void stream_refuse(struct call *c, const struct tp_err *err) {
  pthread_mutex_lock(&c->smu);
  if (err->status == GRPC_STATUS_OK)
    stream_finish_locked(c, GRPC_STATUS_INTERNAL, "refused without an error");
  else
    stream_finish_locked(c, err->status, err->msg);
  pthread_mutex_unlock(&c->smu);
}

/* Counts the stream within the caps. On failure nothing is counted and
 * msg says why. */
static int stream_admit(struct call *c, char *msg, size_t len) {
  struct rpc_server *srv = c->srv;
  /* A call that runs without a credential counts against its address. */
  if (c->identity.role == 0) {
    if (peer_add(srv, c->peer_addr, 1, srv->max_peer_streams, 0, 0) != 0) {
      cap_refused(&srv->cap_peer_streams);
      snprintf(msg, len,
               "too many streams: %s has %d open streaming calls without a credential (at most "
               "%d per address)",
               c->peer_addr, srv->max_peer_streams, srv->max_peer_streams);
      return -1;
    }
    c->peer_stream = 1;
  }
  int rc = 0;
  pthread_mutex_lock(&srv->mu);
  if (srv->n_streams >= srv->max_streams) {
    rc = -1;
  } else {
    srv->n_streams++;
    c->stream_counted = 1;
  }
  pthread_mutex_unlock(&srv->mu);
  if (rc != 0) {
    cap_refused(&srv->cap_streams);
    snprintf(msg, len, "too many streams: the server serves at most %d streaming calls at once",
             srv->max_streams);
    if (c->peer_stream) {
      peer_add(srv, c->peer_addr, -1, 0, 0, 0);
      c->peer_stream = 0;
    }
  }
  return rc;
}

/* Pool (the stream's first job): authentication, the caps, started. */
static void stream_begin(struct call *c) {
  struct rpc_server *srv = c->srv;
  const struct rpc_stream_ops *ops = c->method->stream;
  struct tp_err err = {.status = GRPC_STATUS_OK};
  char msg[512];
  if (call_authenticate(c, &err) != 0) {
    stream_refuse(c, &err);
    return;
  }
  if (stream_admit(c, msg, sizeof(msg)) != 0) {
    tp_err_set(&err, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s", msg);
    stream_refuse(c, &err);
    return;
  }
  void *stream_data = NULL;
  if (ops->started(&c->stream, &c->info, c->method->data, &stream_data, &err) != 0) {
    stream_refuse(c, &err);
    return;
  }
  /* On the live list before the shutdown flag is read, under the lock
   * rpc_server_shutdown walks the list with: a stream either is on the
   * list it walks or sees the flag. */
  pthread_mutex_lock(&srv->mu);
  c->live_prev = NULL;
  c->live_next = srv->streams_live;
  if (srv->streams_live != NULL)
    srv->streams_live->live_prev = c;
  srv->streams_live = c;
  c->on_live = 1;
  int shutting = atomic_load(&srv->shutting_down);
  pthread_mutex_unlock(&srv->mu);
  pthread_mutex_lock(&c->smu);
  c->stream_data = stream_data;
  c->accepted = 1;
  if (shutting)
    c->pending_shutdown = 1;
  c->want_read = 1;
  stream_read_maybe(c);
  pthread_mutex_unlock(&c->smu);
}

static void stream_live_remove(struct call *c) {
  struct rpc_server *srv = c->srv;
  pthread_mutex_lock(&srv->mu);
  if (c->on_live) {
    if (c->live_prev != NULL)
      c->live_prev->live_next = c->live_next;
    else
      srv->streams_live = c->live_next;
    if (c->live_next != NULL)
      c->live_next->live_prev = c->live_prev;
    c->live_prev = c->live_next = NULL;
    c->on_live = 0;
  }
  pthread_mutex_unlock(&srv->mu);
}

/* Pool: one received message to the handler. Returns 0 to read the next,
 * 1 to read no more, -1 when the call is finishing. */
static int stream_deliver(struct call *c, grpc_byte_buffer *bb) {
  const struct rpc_stream_ops *ops = c->method->stream;
  struct tp_err err = {.status = GRPC_STATUS_OK};
  ProtobufCMessage *msg = message_decode(bb, ops->req, &err);
  if (msg == NULL) {
    stream_finish_error(c, &err);
    return -1;
  }
  int rc = ops->message(&c->stream, c->stream_data, msg, &err);
  if (rc < 0) {
    stream_finish_error(c, &err);
    return -1;
  }
  return rc > 0 ? 1 : 0;
}

/* Whether a callback is due (smu held). */
static int stream_pending(const struct call *c) {
  return c->pending_bb != NULL || c->pending_drained || c->pending_half_closed ||
         (c->pending_shutdown && !c->shutdown_done) || (c->end_ready && !c->end_done);
}

/* Pool: runs the stream's pending callbacks, one at a time, in their
 * order, until none is left (after a message, the rest waits for another
 * turn). Takes the job's reference. */
static void stream_run(struct call *c) {
  const struct rpc_stream_ops *ops = c->method->stream;
  struct rpc_stream *s = &c->stream;
  pthread_mutex_lock(&c->smu);
  for (;;) {
    if (!c->begun) {
      c->begun = 1;
      pthread_mutex_unlock(&c->smu);
      stream_begin(c);
      pthread_mutex_lock(&c->smu);
      continue;
    }
    /* Callbacks between started and ended: none once the call is over. */
    int live = c->accepted && !c->end_ready;
    if (c->pending_bb != NULL) {
      grpc_byte_buffer *bb = c->pending_bb;
      size_t n = c->pending_bytes;
      c->pending_bb = NULL;
      c->pending_bytes = 0;
      int deliver = live && !c->finishing;
      pthread_mutex_unlock(&c->smu);
      int rc = 1;
      if (deliver)
        rc = stream_deliver(c, bb);
      else
        grpc_byte_buffer_destroy(bb);
      atomic_fetch_sub(&c->srv->held_bytes, n);
      pthread_mutex_lock(&c->smu);
      if (rc == 0) {
        c->want_read = 1;
        stream_read_maybe(c);
      }
      if (stream_pending(c)) {
        /* One message per turn: a client that sends without pause keeps
         * no pool thread from the others; the rest waits at the back of
         * the queue, the job's reference with it. */
        job_push(c, stream_run);
        pthread_mutex_unlock(&c->smu);
        return;
      }
      continue;
    }
    if (c->pending_drained) {
      c->pending_drained = 0;
      if (live && ops->drained != NULL) {
        pthread_mutex_unlock(&c->smu);
        ops->drained(s, c->stream_data);
        pthread_mutex_lock(&c->smu);
      }
      continue;
    }
    if (c->pending_half_closed) {
      c->pending_half_closed = 0;
      if (live && !c->finishing) {
        pthread_mutex_unlock(&c->smu);
        if (ops->half_closed != NULL)
          ops->half_closed(s, c->stream_data);
        else
          stream_finish(c, GRPC_STATUS_OK, NULL);
        pthread_mutex_lock(&c->smu);
      }
      continue;
    }
    if (c->pending_shutdown && !c->shutdown_done) {
      c->shutdown_done = 1;
      if (live && !c->finishing) {
        pthread_mutex_unlock(&c->smu);
        if (ops->shutdown != NULL)
          ops->shutdown(s, c->stream_data);
        else
          stream_finish(c, GRPC_STATUS_UNAVAILABLE, "the server is shutting down");
        pthread_mutex_lock(&c->smu);
      }
      continue;
    }
    if (c->end_ready && !c->end_done) {
      c->end_done = 1;
      pthread_mutex_unlock(&c->smu);
      if (c->accepted) {
        stream_live_remove(c);
        if (ops->ended != NULL)
          ops->ended(s, c->stream_data);
      }
      pthread_mutex_lock(&c->smu);
      continue;
    }
    break;
  }
  c->scheduled = 0;
  pthread_mutex_unlock(&c->smu);
  call_unref(c);
}

/* Event: a streaming call arrived (or its request failed at shutdown). */
static void stream_arrived(struct call *c, int success) {
  struct rpc_server *srv = c->srv;
  struct method *m = c->requested;
  pthread_mutex_lock(&srv->calls_mu);
  m->requested = 0;
  pthread_mutex_unlock(&srv->calls_mu);
  if (!success || c->call == NULL) {
    c->call = NULL;
    call_destroy(c);
    return;
  }
  stream_request(srv, m);
  call_describe(c, m->path, m->path_len);
  /* Nobody else knows the call yet: no lock. refs is 1, the job's. */
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  op.data.recv_close_on_server.cancelled = &c->cancelled;
  call_ref(c);
  if (grpc_call_start_batch(c->call, &op, 1, &c->op_close, NULL) == GRPC_CALL_OK) {
    c->close_started = 1;
  } else {
    /* Without a close the end cannot be learned: treat the call as over. */
    call_unref_held(c);
    grpc_call_cancel(c->call, NULL);
    c->closed = 1;
    atomic_store(&c->close_done, 1);
    c->end_ready = 1;
  }
  c->scheduled = 1;
  job_push(c, stream_run);
}

/* Event: the call is over (status sent, or cancelled: by the client, its
 * deadline, a broken connection, shutdown). */
static void stream_closed(struct call *c) {
  pthread_mutex_lock(&c->smu);
  c->closed = 1;
  atomic_store(&c->close_done, 1);
  if (timer_remove(c))
    call_unref_held(c);
  sendq_drop(c);
  stream_check_end(c);
  pthread_mutex_unlock(&c->smu);
  call_unref(c);
}

/* Event: a message arrived, the client half-closed (no message), or the
 * receive failed (the call is broken; its close follows). */
static void stream_received(struct call *c, int success) {
  struct rpc_server *srv = c->srv;
  pthread_mutex_lock(&c->smu);
  c->recv_inflight = 0;
  grpc_byte_buffer *bb = c->recv_bb;
  c->recv_bb = NULL;
  if (timer_remove(c))
    call_unref_held(c);
  if (!success || c->closed || c->finishing) {
    if (bb != NULL)
      grpc_byte_buffer_destroy(bb);
  } else if (bb == NULL) {
    c->pending_half_closed = 1;
    stream_schedule(c);
  } else {
    size_t n = grpc_byte_buffer_length(bb);
    if (atomic_fetch_add(&srv->held_bytes, n) + n > MAX_HELD_BYTES) {
      atomic_fetch_sub(&srv->held_bytes, n);
      grpc_byte_buffer_destroy(bb);
      cap_refused(&srv->cap_bytes);
      char msg[128];
      snprintf(msg, sizeof(msg), "the server holds %zu MiB of requests already; retry later",
               MAX_HELD_BYTES >> 20);
      stream_finish_locked(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
    } else {
      c->pending_bb = bb;
      c->pending_bytes = n;
      stream_schedule(c);
    }
  }
  stream_check_end(c);
  pthread_mutex_unlock(&c->smu);
  call_unref(c);
}

/* Event: a message was taken by the transport (or the call broke). */
static void stream_sent(struct call *c, int success) {
  pthread_mutex_lock(&c->smu);
  grpc_byte_buffer_destroy(c->send_bb);
  c->send_bb = NULL;
  c->queued_bytes -= c->send_len;
  c->send_len = 0;
  if (!success) {
    sendq_drop(c);
    grpc_call_cancel(c->call, NULL);
  } else {
    stream_send_next(c);
    if (c->drain_wanted && c->send_bb == NULL && c->sendq_head == NULL && !c->finishing) {
      c->drain_wanted = 0;
      c->pending_drained = 1;
      stream_schedule(c);
    }
  }
  stream_read_maybe(c);
  stream_check_end(c);
  pthread_mutex_unlock(&c->smu);
  call_unref(c);
}

/* Event: the status went out (the close completes with it). */
static void stream_status_sent(struct call *c, int success) {
  pthread_mutex_lock(&c->smu);
  c->status_inflight = 0;
  c->status_sent = success;
  if (!success)
    grpc_call_cancel(c->call, NULL);
  stream_check_end(c);
  pthread_mutex_unlock(&c->smu);
  call_unref(c);
}

/* Event: finishes the streams whose expected message is overdue. */
static void timer_sweep(struct event_thread *ev, int64_t now) {
  struct call *due = NULL;
  pthread_mutex_lock(&ev->timers_mu);
  while (ev->timers_head != NULL && ev->timers_head->expect_deadline <= now) {
    struct call *c = ev->timers_head;
    ev->timers_head = c->tm_next;
    if (ev->timers_head != NULL)
      ev->timers_head->tm_prev = NULL;
    else
      ev->timers_tail = NULL;
    c->tm_prev = c->tm_next = NULL;
    c->on_timer = 0;
    c->due_ms = c->expect_ms;
    c->due_next = due;
    due = c;
  }
  pthread_mutex_unlock(&ev->timers_mu);
  while (due != NULL) {
    struct call *c = due;
    due = c->due_next;
    char text[96];
    snprintf(text, sizeof(text), "no message within %d ms", c->due_ms);
    pthread_mutex_lock(&c->smu);
    stream_finish_locked(c, GRPC_STATUS_DEADLINE_EXCEEDED, text);
    pthread_mutex_unlock(&c->smu);
    call_unref(c); /* the list's */
  }
}

/* --- event threads --- */

static void event_dispatch(void *tag, int success) {
  struct op *op = tag;
  struct call *c = op->call;
  if (c == NULL || c->magic != CALL_MAGIC)
    abort();
  int unary = c->kind == CALL_UNARY;
  switch (op->kind) {
  case OP_NEW:
    if (unary)
      unary_arrived(c, success);
    else
      stream_arrived(c, success);
    break;
  case OP_CLOSE:
    if (unary)
      unary_closed(c);
    else
      stream_closed(c);
    break;
  case OP_RECV:
    if (unary)
      unary_received(c, success);
    else
      stream_received(c, success);
    break;
  case OP_SEND:
    if (unary)
      unary_sent(c, success);
    else
      stream_sent(c, success);
    break;
  case OP_STATUS:
    stream_status_sent(c, success);
    break;
  }
}

static void *event_main(void *arg) {
  struct event_thread *ev = arg;
  struct rpc_server *srv = ev->srv;
  for (;;) {
    grpc_event e = grpc_completion_queue_next(ev->cq, deadline_after_ms(SWEEP_MS), NULL);
    if (e.type == GRPC_QUEUE_SHUTDOWN)
      break;
    if (e.type == GRPC_OP_COMPLETE)
      event_dispatch(e.tag, e.success);
    int64_t now = now_ms();
    if (now >= ev->next_sweep_ms) {
      ev->next_sweep_ms = now + SWEEP_MS;
      overdue_sweep(ev, now);
      lane_sweep(srv, now);
      timer_sweep(ev, now);
      /* Requests that could not be posted (out of memory) are retried. */
      unary_request_more(srv);
      streams_request_all(srv);
    }
  }
  return NULL;
}

/* --- rpc_stream --- */

static struct call *stream_call(const struct rpc_stream *stream) {
  if (stream == NULL || stream->magic != RPC_STREAM_MAGIC)
    abort(); /* not a stream, or one used after its last reference */
  return stream->call;
}

/* Queues bb (consumed). */
static int stream_send_bb(struct call *c, grpc_byte_buffer *bb) {
  if (bb == NULL)
    return -ENOMEM;
  size_t len = grpc_byte_buffer_length(bb);
  struct send_item *it = malloc(sizeof(*it));
  if (it == NULL) {
    grpc_byte_buffer_destroy(bb);
    return -ENOMEM;
  }
  int rc = 0;
  pthread_mutex_lock(&c->smu);
  if (c->finishing || c->closed || c->end_ready) {
    rc = -EPIPE;
  } else if (c->queued_bytes + len > RPC_STREAM_MAX_QUEUED) {
    char msg[160];
    snprintf(msg, sizeof(msg),
             "the client does not read: %zu bytes wait to be sent on this stream (at most %zu)",
             c->queued_bytes, RPC_STREAM_MAX_QUEUED);
    stream_finish_locked(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
    rc = -ENOBUFS;
  } else {
    it->next = NULL;
    it->bb = bb;
    it->len = len;
    if (c->sendq_tail != NULL)
      c->sendq_tail->next = it;
    else
      c->sendq_head = it;
    c->sendq_tail = it;
    c->queued_bytes += len;
    stream_send_next(c);
  }
  pthread_mutex_unlock(&c->smu);
  if (rc != 0) {
    free(it);
    grpc_byte_buffer_destroy(bb);
  }
  return rc;
}

int rpc_stream_send(struct rpc_stream *stream, const ProtobufCMessage *msg) {
  struct call *c = stream_call(stream);
  return stream_send_bb(c, message_encode(msg));
}

int rpc_stream_send_slice(struct rpc_stream *stream, grpc_slice slice) {
  struct call *c = stream_call(stream);
  /* The byte buffer takes a reference on the slice: nothing is copied. */
  return stream_send_bb(c, grpc_raw_byte_buffer_create(&slice, 1));
}

size_t rpc_stream_queued(struct rpc_stream *stream) {
  struct call *c = stream_call(stream);
  pthread_mutex_lock(&c->smu);
  size_t n = c->queued_bytes;
  pthread_mutex_unlock(&c->smu);
  return n;
}

void rpc_stream_notify_drained(struct rpc_stream *stream) {
  struct call *c = stream_call(stream);
  pthread_mutex_lock(&c->smu);
  if (c->method->stream->drained != NULL && !c->finishing) {
    if (c->send_bb == NULL && c->sendq_head == NULL) {
      c->pending_drained = 1; /* empty already */
      stream_schedule(c);
    } else {
      c->drain_wanted = 1;
    }
  }
  pthread_mutex_unlock(&c->smu);
}

int rpc_stream_finish(struct rpc_stream *stream, grpc_status_code status, const char *msg) {
  return stream_finish(stream_call(stream), status, msg);
}

int rpc_stream_expect(struct rpc_stream *stream, int timeout_ms) {
  struct call *c = stream_call(stream);
  int rc = 0;
  pthread_mutex_lock(&c->smu);
  if (c->finishing || c->closed || c->end_ready)
    rc = -EPIPE;
  else
    timer_set(c, timeout_ms > 0 ? timeout_ms : c->srv->request_timeout_ms);
  pthread_mutex_unlock(&c->smu);
  return rc;
}

const struct rpc_call_info *rpc_stream_call(const struct rpc_stream *stream) {
  return &stream_call(stream)->info;
}

void rpc_stream_ref(struct rpc_stream *stream) {
  call_ref(stream_call(stream));
}

void rpc_stream_unref(struct rpc_stream *stream) {
  call_unref(stream_call(stream));
}

/* --- registration --- */

/* Checks "/service/method". */
static int path_check(const char *path) {
  if (path == NULL || path[0] != '/')
    return -EINVAL;
  const char *slash = strchr(path + 1, '/');
  if (slash == NULL || slash == path + 1 || slash[1] == '\0' || strchr(slash + 1, '/') != NULL)
    return -EINVAL;
  return 0;
}

/* Adds or completes a method. A placeholder (no handler) takes a handler
 * later; a handled method is never replaced. */
static int method_add(struct rpc_server *srv, const char *path,
                      const ProtobufCMessageDescriptor *req, const ProtobufCMessageDescriptor *resp,
                      rpc_unary_fn unary, const struct rpc_stream_ops *stream, int write,
                      void *data) {
  if (srv->started)
    return -EBUSY;
  int rc = path_check(path);
  if (rc < 0)
    return rc;
  if (unary != NULL && (req == NULL || resp == NULL))
    return -EINVAL;
  struct method *m = NULL;
  for (size_t i = 0; i < srv->n_methods; i++) {
    if (strcmp(srv->methods[i].path, path) == 0) {
      m = &srv->methods[i];
      break;
    }
  }
  if (m != NULL && (m->unary != NULL || m->stream != NULL))
    return -EEXIST;
  if (m == NULL) {
    if (srv->n_methods == srv->cap_methods) {
      size_t cap = srv->cap_methods ? 2 * srv->cap_methods : 64;
      struct method *ms = realloc(srv->methods, cap * sizeof(*ms));
      if (ms == NULL)
        return -ENOMEM;
      srv->methods = ms;
      srv->cap_methods = cap;
    }
    char *copy = strdup(path);
    if (copy == NULL)
      return -ENOMEM;
    m = &srv->methods[srv->n_methods++];
    memset(m, 0, sizeof(*m));
    m->path = copy;
    m->path_len = strlen(copy);
  }
  m->req = req;
  m->resp = resp;
  m->unary = unary;
  m->stream = stream;
  m->write = write;
  m->data = data;
  return 0;
}

int rpc_server_add_unary(struct rpc_server *srv, const char *method,
                         const ProtobufCMessageDescriptor *req,
                         const ProtobufCMessageDescriptor *resp, rpc_unary_fn fn, void *data) {
  return method_add(srv, method, req, resp, fn, NULL, 0, data);
}

int rpc_server_add_write(struct rpc_server *srv, const char *method,
                         const ProtobufCMessageDescriptor *req,
                         const ProtobufCMessageDescriptor *resp, rpc_unary_fn fn, void *data) {
  if (fn == NULL)
    return -EINVAL;
  return method_add(srv, method, req, resp, fn, NULL, 1, data);
}

int rpc_server_add_stream(struct rpc_server *srv, const char *method,
                          const struct rpc_stream_ops *ops, void *data) {
  if (ops != NULL && (ops->req == NULL || ops->started == NULL || ops->message == NULL))
    return -EINVAL;
  return method_add(srv, method, NULL, NULL, NULL, ops, 0, data);
}

int rpc_server_add_service(struct rpc_server *srv, const ProtobufCServiceDescriptor *svc,
                           const rpc_unary_fn *fns, void *data) {
  if (svc == NULL || svc->magic != PROTOBUF_C__SERVICE_DESCRIPTOR_MAGIC)
    return -EINVAL;
  for (unsigned i = 0; i < svc->n_methods; i++) {
    const ProtobufCMethodDescriptor *md = &svc->methods[i];
    char path[512];
    int n = snprintf(path, sizeof(path), "/%s/%s", svc->name, md->name);
    if (n < 0 || (size_t)n >= sizeof(path))
      return -EINVAL;
    rpc_unary_fn fn = fns != NULL ? fns[i] : NULL;
    int rc = method_add(srv, path, md->input, md->output, fn, NULL, 0, data);
    if (rc == -EEXIST && fn == NULL)
      continue; /* already handled, e.g. a streaming method */
    if (rc < 0)
      return rc;
  }
  return 0;
}

int rpc_server_add_cleanup(struct rpc_server *srv, void (*cb)(void *data), void *data) {
  struct cleanup *c = malloc(sizeof(*c));
  if (c == NULL)
    return -ENOMEM;
  c->cb = cb;
  c->data = data;
  c->next = srv->cleanups;
  srv->cleanups = c;
  return 0;
}

/* --- lifetime --- */

static int default_threads(void) {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  long n = cores > 0 ? 2 * cores : 4;
  if (n < 4)
    n = 4;
  if (n > 256)
    n = 256;
  return (int)n;
}

static void cap_init(struct cap_note *cap, const char *what, const char *outcome) {
  cap->what = what;
  cap->outcome = outcome;
  atomic_init(&cap->refused, 0);
  atomic_init(&cap->next_log_ms, 0);
}

int rpc_server_new(const struct rpc_server_opts *opts, struct rpc_server **out,
                   struct tp_err *err) {
  *out = NULL;
  if (opts == NULL || opts->listen == NULL || opts->listen[0] == '\0') {
    tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "listen: address required");
    return -EINVAL;
  }
  struct rpc_server *srv = calloc(1, sizeof(*srv));
  if (srv == NULL) {
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return -ENOMEM;
  }
  srv->n_pool = opts->threads > 0 ? opts->threads : default_threads();
  srv->auth = opts->auth;
  srv->auth_data = opts->auth_data;
  srv->request_timeout_ms =
      opts->request_timeout_ms > 0 ? opts->request_timeout_ms : DEFAULT_REQUEST_TIMEOUT_MS;
  srv->max_streams = opts->max_streams > 0 ? opts->max_streams : DEFAULT_MAX_STREAMS;
  srv->max_peer_streams =
      opts->max_peer_streams > 0 ? opts->max_peer_streams : DEFAULT_MAX_PEER_STREAMS;
  srv->max_writes = srv->n_pool / 2;
  if (opts->max_writes > 0 && opts->max_writes < srv->max_writes)
    srv->max_writes = opts->max_writes;
  if (srv->max_writes < 1)
    srv->max_writes = 1;
  srv->pool = calloc((size_t)srv->n_pool, sizeof(*srv->pool));
  if (srv->pool == NULL) {
    free(srv);
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return -ENOMEM;
  }
  pthread_mutex_init(&srv->mu, NULL);
  pthread_mutex_init(&srv->pool_mu, NULL);
  pthread_cond_init(&srv->pool_cv, NULL);
  pthread_mutex_init(&srv->calls_mu, NULL);
  pthread_cond_init(&srv->calls_cv, NULL);
  pthread_mutex_init(&srv->peers_mu, NULL);
  pthread_mutex_init(&srv->lane_mu, NULL);
  atomic_init(&srv->shutting_down, 0);
  atomic_init(&srv->held_bytes, 0);
  cap_init(&srv->cap_streams, "streams: the server-wide cap is reached", "refused");
  cap_init(&srv->cap_peer_streams, "streams without a credential: an address reached its cap",
           "refused");
  cap_init(&srv->cap_peer_slow, "slow requests: an address reached its cap", "cancelled");
  cap_init(&srv->cap_bytes, "requests held: the byte cap is reached", "refused");
  cap_init(&srv->cap_timeout, "requests not complete in time", "cancelled");
  cap_init(&srv->cap_lane_full, "writes: the lane is full", "refused");
  cap_init(&srv->cap_lane_wait, "writes: waited too long in the lane", "refused");

  int keepalive_ms = opts->keepalive_ms > 0 ? opts->keepalive_ms : DEFAULT_KEEPALIVE_MS;
  grpc_init();
  grpc_resource_quota *quota = grpc_resource_quota_create("tlsplane-server");
  grpc_resource_quota_resize(quota, GRPC_MEMORY_QUOTA);
  grpc_arg args[] = {
      {GRPC_ARG_INTEGER, GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, {.integer = MAX_RECV_MESSAGE}},
      /* Bind or fail: never share the port with another process. */
      {GRPC_ARG_INTEGER, GRPC_ARG_ALLOW_REUSEPORT, {.integer = 0}},
      /* Find dead clients (an agent whose host vanished, a partition)
       * within the keepalive bound (60 s by default): a ping after two
       * thirds of it, however long nothing else was sent, the rest to
       * answer. */
      {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_TIME_MS, {.integer = keepalive_ms - keepalive_ms / 3}},
      {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_TIMEOUT_MS, {.integer = keepalive_ms / 3}},
      {GRPC_ARG_INTEGER, GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, {.integer = 0}},
      {GRPC_ARG_INTEGER,
       GRPC_ARG_HTTP2_MIN_SENT_PING_INTERVAL_WITHOUT_DATA_MS,
       {.integer = keepalive_ms - keepalive_ms / 3}},
      /* Let clients keep idle connections alive with pings as often as
       * one a second (an agent's --keepalive 3 pings every 2 s) rather
       * than answering them with GOAWAY too_many_pings; a client that
       * pings faster is told so after two strikes. */
      {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, {.integer = 1}},
      {GRPC_ARG_INTEGER, GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, {.integer = 1000}},
      {GRPC_ARG_INTEGER, GRPC_ARG_HTTP2_MAX_PING_STRIKES, {.integer = 2}},
      /* What one connection, and one TLS handshake, can hold. */
      {GRPC_ARG_INTEGER, GRPC_ARG_MAX_CONCURRENT_STREAMS, {.integer = MAX_CONCURRENT_STREAMS}},
      {GRPC_ARG_INTEGER, GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, {.integer = HANDSHAKE_TIMEOUT_MS}},
      /* Memory per connection, which an agent holds alone: 4 KiB first
       * reads (grpc grows them under load). GRPC_ARG_TSI_MAX_FRAME_SIZE is
       * left at its default on purpose: with 4 KiB frames grpc 1.51 sent
       * corrupt TLS records under load while a large request was being
       * received ("wrong version number" at the client, about one run in
       * ten of the 1 MiB uploads in input.test.js on a busy 2-core host). */
      {GRPC_ARG_INTEGER, GRPC_ARG_TCP_READ_CHUNK_SIZE, {.integer = CONN_READ_CHUNK}},
      {GRPC_ARG_POINTER,
       GRPC_ARG_RESOURCE_QUOTA,
       {.pointer = {.p = quota, .vtable = grpc_resource_quota_arg_vtable()}}},
  };
  grpc_channel_args channel_args = {sizeof(args) / sizeof(args[0]), args};
  srv->server = grpc_server_create(&channel_args, NULL);
  grpc_resource_quota_unref(quota); /* the server holds its own reference */
  srv->shutdown_cq = grpc_completion_queue_create_for_next(NULL);
  grpc_server_register_completion_queue(srv->server, srv->shutdown_cq, NULL);
  for (int i = 0; i < EVENT_THREADS; i++) {
    srv->events[i].srv = srv;
    pthread_mutex_init(&srv->events[i].timers_mu, NULL);
    srv->events[i].cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(srv->server, srv->events[i].cq, NULL);
  }

  grpc_server_credentials *creds = server_credentials(opts);
  srv->port = creds != NULL ? grpc_server_add_http2_port(srv->server, opts->listen, creds) : 0;
  if (creds != NULL)
    grpc_server_credentials_release(creds);
  if (srv->port == 0) {
    tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "listen %s: address in use or unavailable",
               opts->listen);
    rpc_server_free(srv);
    return -EADDRINUSE;
  }
  *out = srv;
  return 0;
}

static int method_sort_cmp(const void *a, const void *b) {
  const struct method *mb = b;
  const struct method *ma = a;
  return method_cmp_key(ma->path, ma->path_len, mb);
}

int rpc_server_start(struct rpc_server *srv, struct tp_err *err) {
  if (srv->started || srv->shut_down)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "rpc server already started");
  qsort(srv->methods, srv->n_methods, sizeof(*srv->methods), method_sort_cmp);
  srv->counts = calloc((srv->n_methods + 1) * RPC_TRANSPORTS * STATUS_CODES, sizeof(*srv->counts));
  if (srv->counts == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "rpc server: out of memory");
  srv->started = 1;
  /* Streams are registered so that they are requested apart from the
   * unary calls, each with a queue of its own. */
  for (size_t i = 0; i < srv->n_methods; i++) {
    struct method *m = &srv->methods[i];
    if (m->stream == NULL)
      continue;
    m->registered =
        grpc_server_register_method(srv->server, m->path, NULL, GRPC_SRM_PAYLOAD_NONE, 0);
    if (m->registered == NULL)
      return tp_err_set(err, GRPC_STATUS_INTERNAL, "rpc server: cannot register %s", m->path);
  }
  /* Every thread runs before grpc serves a call: a server that cannot
   * start them all serves nothing (the ones running are joined by
   * rpc_server_shutdown). */
  for (int i = 0; i < srv->n_pool; i++) {
    int rc = pthread_create(&srv->pool[i], NULL, pool_main, srv);
    if (rc != 0)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED,
                        "rpc server: cannot start pool thread %d of %d: %s", i + 1, srv->n_pool,
                        strerror(rc));
    srv->n_pool_started++;
  }
  for (int i = 0; i < EVENT_THREADS; i++) {
    srv->events[i].next_sweep_ms = now_ms() + SWEEP_MS;
    int rc = pthread_create(&srv->events[i].tid, NULL, event_main, &srv->events[i]);
    if (rc != 0)
      return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED,
                        "rpc server: cannot start event thread %d of %d: %s", i + 1, EVENT_THREADS,
                        strerror(rc));
    srv->n_events_started++;
  }
  grpc_server_start(srv->server);
  pthread_mutex_lock(&srv->calls_mu);
  srv->accepting = 1;
  pthread_mutex_unlock(&srv->calls_mu);
  unary_request_more(srv);
  streams_request_all(srv);
  return 0;
}

int rpc_server_call(struct rpc_server *srv, const struct rpc_external *x) {
  pthread_mutex_lock(&srv->calls_mu);
  if (!srv->accepting) {
    pthread_mutex_unlock(&srv->calls_mu);
    return -ESHUTDOWN;
  }
  srv->n_calls++;
  pthread_mutex_unlock(&srv->calls_mu);
  struct call *c = call_new(srv, CALL_EXT, &srv->events[0]);
  size_t len = strlen(x->method);
  if (c != NULL) {
    c->ext = x;
    c->path = strndup(x->method, len);
    c->peer = gpr_strdup(x->peer != NULL ? x->peer : "");
  }
  if (c == NULL || c->path == NULL || c->peer == NULL) {
    if (c != NULL) {
      c->ext_done = 1; /* done never runs: the caller is told here */
      call_destroy(c);
    } else {
      calls_released(srv, 0);
    }
    return -ENOMEM;
  }
  if (x->run == NULL)
    c->method = method_find(srv, x->method, len);
  peer_address(c->peer, c->peer_addr, sizeof(c->peer_addr));
  snprintf(c->shown, sizeof(c->shown), "unknown method (%zu bytes)", len);
  c->info.method = c->method != NULL ? c->method->path : c->path;
  c->info.peer = c->peer;
  job_push(c, ext_authorize);
  return 0;
}

void rpc_server_counts(const struct rpc_server *srv, rpc_count_fn fn, void *data) {
  if (srv->counts == NULL)
    return;
  for (size_t row = 0; row <= srv->n_methods; row++)
    for (int t = 0; t < RPC_TRANSPORTS; t++)
      for (int code = 0; code < STATUS_CODES; code++) {
        unsigned long n =
            atomic_load(&srv->counts[(row * RPC_TRANSPORTS + t) * STATUS_CODES + code]);
        if (n > 0)
          fn(row < srv->n_methods ? srv->methods[row].path : "unknown", t, (grpc_status_code)code,
             n, data);
      }
}

int rpc_server_port(const struct rpc_server *srv) {
  return srv->port;
}

int rpc_server_shutting_down(const struct rpc_server *srv) {
  return atomic_load(&srv->shutting_down);
}

void rpc_server_shutdown(struct rpc_server *srv, int grace_ms) {
  if (srv == NULL || srv->shut_down)
    return;
  /* Set first: no new request is posted, and a stream accepted from now on
   * learns of the shutdown as it starts (stream_begin). */
  atomic_store(&srv->shutting_down, 1);
  pthread_mutex_lock(&srv->calls_mu);
  srv->accepting = 0;
  pthread_mutex_unlock(&srv->calls_mu);
  /* Every stream is told, so that long ones end within the grace rather
   * than being cancelled at its end. */
  pthread_mutex_lock(&srv->mu);
  for (struct call *c = srv->streams_live; c != NULL; c = c->live_next) {
    pthread_mutex_lock(&c->smu);
    c->pending_shutdown = 1;
    stream_schedule(c);
    pthread_mutex_unlock(&c->smu);
  }
  pthread_mutex_unlock(&srv->mu);
  grpc_server_shutdown_and_notify(srv->server, srv->shutdown_cq, &srv->shutdown_tag);
  gpr_timespec grace = grace_ms < 0 ? forever() : deadline_after_ms(grace_ms);
  grpc_event ev = grpc_completion_queue_next(srv->shutdown_cq, grace, NULL);
  if (ev.type == GRPC_QUEUE_TIMEOUT) {
    grpc_server_cancel_all_calls(srv->server);
    ev = grpc_completion_queue_next(srv->shutdown_cq, forever(), NULL);
  }
  /* Every pending request has failed by now and every call is over; the
   * event threads and the pool release what is left, ended callbacks
   * included, and handlers drop their stream references (a started server
   * has both; one that never started has no call). */
  pthread_mutex_lock(&srv->calls_mu);
  while (srv->n_calls > 0 && srv->n_events_started == EVENT_THREADS && srv->n_pool_started > 0)
    pthread_cond_wait(&srv->calls_cv, &srv->calls_mu);
  pthread_mutex_unlock(&srv->calls_mu);
  pthread_mutex_lock(&srv->pool_mu);
  srv->pool_stop = 1;
  pthread_cond_broadcast(&srv->pool_cv);
  pthread_mutex_unlock(&srv->pool_mu);
  for (int i = 0; i < srv->n_pool_started; i++)
    pthread_join(srv->pool[i], NULL);
  srv->n_pool_started = 0;
  for (int i = 0; i < srv->n_events_started; i++) {
    grpc_completion_queue_shutdown(srv->events[i].cq);
    pthread_join(srv->events[i].tid, NULL);
  }
  srv->shut_down = 1;
}

void rpc_server_free(struct rpc_server *srv) {
  if (srv == NULL)
    return;
  rpc_server_shutdown(srv, 0);
  grpc_server_destroy(srv->server);
  cq_close(srv->shutdown_cq);
  for (int i = 0; i < EVENT_THREADS; i++) {
    if (i < srv->n_events_started)
      grpc_completion_queue_destroy(srv->events[i].cq); /* drained by its thread */
    else
      cq_close(srv->events[i].cq);
    pthread_mutex_destroy(&srv->events[i].timers_mu);
  }
  for (size_t i = 0; i < srv->n_methods; i++)
    free(srv->methods[i].path);
  free(srv->methods);
  free(srv->counts);
  while (srv->cleanups != NULL) {
    struct cleanup *c = srv->cleanups;
    srv->cleanups = c->next;
    c->cb(c->data);
    free(c);
  }
  for (int i = 0; i < PEER_BUCKETS; i++)
    while (srv->peers[i] != NULL) {
      struct peer *p = srv->peers[i];
      srv->peers[i] = p->next;
      free(p);
    }
  free(srv->pool);
  pthread_mutex_destroy(&srv->mu);
  pthread_cond_destroy(&srv->pool_cv);
  pthread_mutex_destroy(&srv->pool_mu);
  pthread_cond_destroy(&srv->calls_cv);
  pthread_mutex_destroy(&srv->calls_mu);
  pthread_mutex_destroy(&srv->peers_mu);
  pthread_mutex_destroy(&srv->lane_mu);
  free(srv);
  grpc_shutdown();
}
