/* gRPC client calls on grpc core. Every operation runs as a batch on the
 * call's own pluck queue, each kind with its own tag so that a receiving
 * thread and a sending thread never take each other's completion. */
#include "gclient.h"

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdlib.h>
#include <string.h>

#include "grpcmsg.h"

#define GCLIENT_MAGIC 0x47434c53u
#define STOP_POLL_MS 100 /* how often a blocking wait looks at opts->stop */

struct gclient_stream {
  uint32_t magic;
  grpc_channel *channel;
  grpc_completion_queue *cq;
  grpc_call *call;
  grpc_metadata_array initial_md, trailing_md;
  int md_started; /* RECV_INITIAL_METADATA in flight (plucked at close) */
  grpc_status_code status;
  grpc_slice details;
  int status_started;
  int status_done;
  char tag_start, tag_md, tag_send, tag_recv, tag_status;
};

const char *gclient_status_name(int status) {
  static const char *const names[] = {
      "OK",
      "CANCELLED",
      "UNKNOWN",
      "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED",
      "NOT_FOUND",
      "ALREADY_EXISTS",
      "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION",
      "ABORTED",
      "OUT_OF_RANGE",
      "UNIMPLEMENTED",
      "INTERNAL",
      "UNAVAILABLE",
      "DATA_LOSS",
      "UNAUTHENTICATED",
  };
  return status >= 0 && status < (int)(sizeof(names) / sizeof(names[0])) ? names[status]
                                                                         : "UNKNOWN";
}

static gpr_timespec forever(void) {
  return gpr_inf_future(GPR_CLOCK_MONOTONIC);
}

static gpr_timespec in_ms(int ms) {
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

static int stopped(const struct gclient_opts *o) {
  return o->stop != NULL && atomic_load(o->stop) != 0;
}

/* A channel to target with o's keepalive and credentials. A ping goes
 * out every keepalive_ms however long nothing else was sent (no cap on
 * pings without data, none held back for lack of data): on a stream the
 * server stopped answering, the ping is what notices. */
static grpc_channel *channel_new(const char *target, const struct gclient_opts *o) {
  int keepalive_ms = o->keepalive_ms ? o->keepalive_ms : 20000;
  const char *keys[] = {GRPC_ARG_KEEPALIVE_TIME_MS,
                        GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                        GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
                        GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA,
                        GRPC_ARG_HTTP2_MIN_SENT_PING_INTERVAL_WITHOUT_DATA_MS,
                        GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH};
  int values[] = {keepalive_ms,
                  o->keepalive_timeout_ms ? o->keepalive_timeout_ms : 10000,
                  1,
                  0,
                  keepalive_ms,
                  -1};
  enum { N_ARGS = sizeof(keys) / sizeof(keys[0]) };
  grpc_arg args[N_ARGS];
  for (int i = 0; i < N_ARGS; i++) {
    args[i].type = GRPC_ARG_INTEGER;
    args[i].key = (char *)keys[i];
    args[i].value.integer = values[i];
  }
  grpc_channel_args chargs = {.num_args = N_ARGS, .args = args};
  grpc_channel_credentials *creds;
  if (o->ca_pem != NULL) {
    grpc_ssl_pem_key_cert_pair pair = {.private_key = o->key_pem, .cert_chain = o->cert_pem};
    int mutual = o->key_pem != NULL && o->cert_pem != NULL;
    creds = grpc_ssl_credentials_create(o->ca_pem, mutual ? &pair : NULL, NULL, NULL);
  } else {
    creds = grpc_insecure_credentials_create();
  }
  grpc_channel *ch = grpc_channel_create(target, creds, &chargs);
  grpc_channel_credentials_release(creds);
  return ch;
}

/* The SEND_INITIAL_METADATA op, with the authorization entry when o has
 * one (md must live until the batch completes). */
static void metadata_op(grpc_op *op, const struct gclient_opts *o, grpc_metadata *md) {
  memset(op, 0, sizeof(*op));
  op->op = GRPC_OP_SEND_INITIAL_METADATA;
  if (o->authorization != NULL) {
    memset(md, 0, sizeof(*md));
    md->key = grpc_slice_from_static_string("authorization");
    md->value = grpc_slice_from_copied_string(o->authorization);
    op->data.send_initial_metadata.count = 1;
    op->data.send_initial_metadata.metadata = md;
  }
}

static void metadata_release(const struct gclient_opts *o, grpc_metadata *md) {
  if (o->authorization != NULL)
    grpc_slice_unref(md->value);
}

/* Waits for tag on cq until deadline_ms passes (< 0: no limit) or o's stop
 * flag is set; either way the call is cancelled and the tag awaited, so
 * that nothing is left in flight. Returns 1 when the batch completed
 * successfully, 0 when it failed, -1 when it was cut short (*why says
 * which status). */
static int wait_tag(grpc_completion_queue *cq, grpc_call *call, void *tag, int deadline_ms,
                    const struct gclient_opts *o, grpc_status_code *why) {
  gpr_timespec deadline = deadline_ms < 0 ? forever() : in_ms(deadline_ms);
  for (;;) {
    gpr_timespec until = o->stop != NULL ? in_ms(STOP_POLL_MS) : deadline;
    if (gpr_time_cmp(until, deadline) > 0)
      until = deadline;
    grpc_event ev = grpc_completion_queue_pluck(cq, tag, until, NULL);
    if (ev.type == GRPC_OP_COMPLETE)
      return ev.success ? 1 : 0;
    int expired = gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), deadline) >= 0;
    if (stopped(o) || expired) {
      *why = stopped(o) ? GRPC_STATUS_CANCELLED : GRPC_STATUS_UNAVAILABLE;
      grpc_call_cancel_with_status(call, *why,
                                   stopped(o) ? "stopped by the client" : "connect timeout", NULL);
      grpc_completion_queue_pluck(cq, tag, forever(), NULL);
      return -1;
    }
  }
}

static int run(struct gclient_stream *s, const grpc_op *ops, size_t n, void *tag) {
  if (grpc_call_start_batch(s->call, ops, n, tag, NULL) != GRPC_CALL_OK)
    return -1;
  grpc_event ev = grpc_completion_queue_pluck(s->cq, tag, forever(), NULL);
  return ev.type == GRPC_OP_COMPLETE && ev.success ? 0 : -1;
}

/* Waits for the final status (the batch started at open). */
static void wait_status(struct gclient_stream *s) {
  if (!s->status_started || s->status_done)
    return;
  grpc_completion_queue_pluck(s->cq, &s->tag_status, forever(), NULL);
  s->status_done = 1;
}

static void status_err(grpc_status_code status, grpc_slice details, struct tp_err *err) {
  char *text = grpc_slice_to_c_string(details);
  tp_err_set(err, status == GRPC_STATUS_OK ? GRPC_STATUS_UNAVAILABLE : status, "%s",
             text[0] ? text : "stream ended");
  gpr_free(text);
}

int gclient_stream_open(const char *target, const char *method, const struct gclient_opts *opts,
                        struct gclient_stream **out, struct tp_err *err) {
  struct gclient_opts o = opts ? *opts : (struct gclient_opts){0};
  struct gclient_stream *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  s->magic = GCLIENT_MAGIC;
  grpc_init();
  s->channel = channel_new(target, &o);
  s->cq = grpc_completion_queue_create_for_pluck(NULL);
  grpc_slice path = grpc_slice_from_copied_string(method);
  s->call = grpc_channel_create_call(
      s->channel, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq, path, NULL,
      o.stream_deadline_ms > 0 ? in_ms(o.stream_deadline_ms) : forever(), NULL);
  grpc_slice_unref(path);
  grpc_metadata_array_init(&s->initial_md);
  grpc_metadata_array_init(&s->trailing_md);
  s->details = grpc_empty_slice();

  grpc_op status_op;
  memset(&status_op, 0, sizeof(status_op));
  status_op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  status_op.data.recv_status_on_client.trailing_metadata = &s->trailing_md;
  status_op.data.recv_status_on_client.status = &s->status;
  status_op.data.recv_status_on_client.status_details = &s->details;
  if (grpc_call_start_batch(s->call, &status_op, 1, &s->tag_status, NULL) == GRPC_CALL_OK)
    s->status_started = 1;
  /* Messages are delivered only once the server's headers were asked for. */
  grpc_op md_op;
  memset(&md_op, 0, sizeof(md_op));
  md_op.op = GRPC_OP_RECV_INITIAL_METADATA;
  md_op.data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
  if (grpc_call_start_batch(s->call, &md_op, 1, &s->tag_md, NULL) == GRPC_CALL_OK)
    s->md_started = 1;

  /* Our headers go out at once (fail fast: an unreachable server makes
   * this fail with UNAVAILABLE). The server's headers may come only with
   * its first message, which may wait for ours: not awaited here. */
  grpc_op op;
  grpc_metadata md;
  metadata_op(&op, &o, &md);
  int connect_ms = o.connect_timeout_ms ? o.connect_timeout_ms : 10000;
  grpc_status_code why = GRPC_STATUS_UNAVAILABLE;
  int rc = -1;
  if (grpc_call_start_batch(s->call, &op, 1, &s->tag_start, NULL) == GRPC_CALL_OK)
    rc = wait_tag(s->cq, s->call, &s->tag_start, connect_ms, &o, &why);
  metadata_release(&o, &md);
  if (rc == 1) {
    *out = s;
    return 0;
  }
  wait_status(s);
  if (rc < 0)
    tp_err_set(err, why,
               why == GRPC_STATUS_CANCELLED ? "stopped by the client"
                                            : "no connection within %d ms",
               connect_ms);
  else
    status_err(s->status, s->details, err);
  gclient_stream_close(s);
  return -1;
}

static int send_message(struct gclient_stream *s, const ProtobufCMessage *msg, int last) {
  grpc_byte_buffer *bb = grpcmsg_encode(msg);
  grpc_op ops[2];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_MESSAGE;
  ops[0].data.send_message.send_message = bb;
  ops[1].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  int rc = run(s, ops, last ? 2 : 1, &s->tag_send);
  grpc_byte_buffer_destroy(bb);
  return rc;
}

int gclient_stream_send(struct gclient_stream *s, const ProtobufCMessage *msg) {
  return send_message(s, msg, 0);
}

int gclient_stream_send_last(struct gclient_stream *s, const ProtobufCMessage *msg) {
  return send_message(s, msg, 1);
}

/* Unpacks a received message (bb is destroyed). */
static int unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc,
                  ProtobufCMessage **msg, struct tp_err *err) {
  *msg = grpcmsg_decode(bb, desc);
  if (*msg == NULL)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "the server sent a message that is not a %s",
                      desc->name);
  return 0;
}

int gclient_stream_recv(struct gclient_stream *s, const ProtobufCMessageDescriptor *desc,
                        ProtobufCMessage **msg, struct tp_err *err) {
  *msg = NULL;
  grpc_byte_buffer *bb = NULL;
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &bb;
  if (run(s, &op, 1, &s->tag_recv) != 0 || bb == NULL) {
    wait_status(s);
    if (s->status == GRPC_STATUS_OK && bb == NULL)
      return 0;
    if (bb != NULL)
      grpc_byte_buffer_destroy(bb);
    status_err(s->status, s->details, err);
    return -1;
  }
  return unpack(bb, desc, msg, err) == 0 ? 1 : -1;
}

void gclient_stream_cancel(struct gclient_stream *s) {
  grpc_call_cancel_with_status(s->call, GRPC_STATUS_CANCELLED, "closed by the client", NULL);
}

void gclient_stream_close(struct gclient_stream *s) {
  if (s == NULL)
    return;
  if (s->magic != GCLIENT_MAGIC)
    abort();
  s->magic = 0;
  if (!s->status_done)
    gclient_stream_cancel(s);
  wait_status(s);
  if (s->md_started)
    grpc_completion_queue_pluck(s->cq, &s->tag_md, forever(), NULL);
  grpc_call_unref(s->call);
  grpc_completion_queue_shutdown(s->cq);
  while (grpc_completion_queue_pluck(s->cq, NULL, forever(), NULL).type != GRPC_QUEUE_SHUTDOWN)
    ;
  grpc_completion_queue_destroy(s->cq);
  grpc_channel_destroy(s->channel);
  grpc_metadata_array_destroy(&s->initial_md);
  grpc_metadata_array_destroy(&s->trailing_md);
  grpc_slice_unref(s->details);
  free(s);
  grpc_shutdown();
}

int gclient_unary(const char *target, const char *method, const struct gclient_opts *opts,
                  const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
                  ProtobufCMessage **resp, struct tp_err *err) {
  struct gclient_opts o = opts ? *opts : (struct gclient_opts){0};
  int deadline_ms = o.deadline_ms ? o.deadline_ms : 30000;
  *resp = NULL;
  grpc_init();
  grpc_channel *channel = channel_new(target, &o);
  grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
  grpc_slice path = grpc_slice_from_copied_string(method);
  /* The deadline travels to the server too; the wait below adds a little
   * so that the call's own status (DEADLINE_EXCEEDED) is what we see. */
  grpc_call *call = grpc_channel_create_call(channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq, path, NULL,
                                             in_ms(deadline_ms), NULL);
  grpc_slice_unref(path);

  grpc_byte_buffer *send = grpcmsg_encode(req);

  grpc_metadata md;
  grpc_metadata_array initial_md, trailing_md;
  grpc_metadata_array_init(&initial_md);
  grpc_metadata_array_init(&trailing_md);
  grpc_byte_buffer *recv = NULL;
  grpc_status_code status = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_op ops[6];
  memset(ops, 0, sizeof(ops));
  metadata_op(&ops[0], &o, &md);
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &recv;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &trailing_md;
  ops[5].data.recv_status_on_client.status = &status;
  ops[5].data.recv_status_on_client.status_details = &details;
  char tag;
  int rc = -1;
  grpc_status_code why = GRPC_STATUS_UNAVAILABLE;
  if (grpc_call_start_batch(call, ops, 6, &tag, NULL) != GRPC_CALL_OK) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "cannot start the call");
  } else if (wait_tag(cq, call, &tag, deadline_ms + 1000, &o, &why) < 0) {
    tp_err_set(err, why, why == GRPC_STATUS_CANCELLED ? "stopped by the client" : "no answer");
  } else if (status != GRPC_STATUS_OK) {
    status_err(status, details, err);
  } else if (recv == NULL) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "the server answered without a message");
  } else {
    rc = unpack(recv, resp_desc, resp, err);
    recv = NULL;
  }
  metadata_release(&o, &md);
  if (recv != NULL)
    grpc_byte_buffer_destroy(recv);
  grpc_byte_buffer_destroy(send);
  grpc_metadata_array_destroy(&initial_md);
  grpc_metadata_array_destroy(&trailing_md);
  grpc_slice_unref(details);
  grpc_call_unref(call);
  grpc_completion_queue_shutdown(cq);
  while (grpc_completion_queue_pluck(cq, NULL, forever(), NULL).type != GRPC_QUEUE_SHUTDOWN)
    ;
  grpc_completion_queue_destroy(cq);
  grpc_channel_destroy(channel);
  grpc_shutdown();
  return rc;
}
