/* gRPC client streams on grpc core. Every operation runs as a batch on the
 * stream's own pluck queue, each kind with its own tag so that a receiving
 * thread and a sending thread never take each other's completion. */
#include "gclient.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdlib.h>
#include <string.h>

#define GCLIENT_MAGIC 0x47434c53u

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

static gpr_timespec forever(void) {
  return gpr_inf_future(GPR_CLOCK_MONOTONIC);
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

static void status_to_err(struct gclient_stream *s, struct tp_err *err) {
  char *details = grpc_slice_to_c_string(s->details);
  tp_err_set(err, s->status == GRPC_STATUS_OK ? GRPC_STATUS_UNAVAILABLE : s->status, "%s",
             details[0] ? details : "stream ended");
  gpr_free(details);
}

int gclient_stream_open(const char *target, const char *method, const struct gclient_opts *opts,
                        struct gclient_stream **out, struct tp_err *err) {
  struct gclient_opts o = opts ? *opts : (struct gclient_opts){0};
  struct gclient_stream *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  s->magic = GCLIENT_MAGIC;
  grpc_init();
  grpc_arg args[4];
  const char *keys[4] = {GRPC_ARG_KEEPALIVE_TIME_MS, GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                         GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
                         GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH};
  int values[4] = {o.keepalive_ms ? o.keepalive_ms : 20000,
                   o.keepalive_timeout_ms ? o.keepalive_timeout_ms : 10000, 1, -1};
  for (int i = 0; i < 4; i++) {
    args[i].type = GRPC_ARG_INTEGER;
    args[i].key = (char *)keys[i];
    args[i].value.integer = values[i];
  }
  grpc_channel_args chargs = {.num_args = 4, .args = args};
  /* TLS and credentials arrive with the control plane's security. */
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  s->channel = grpc_channel_create(target, creds, &chargs);
  grpc_channel_credentials_release(creds);
  s->cq = grpc_completion_queue_create_for_pluck(NULL);
  grpc_slice path = grpc_slice_from_copied_string(method);
  s->call = grpc_channel_create_call(s->channel, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq, path, NULL,
                                     forever(), NULL);
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
  grpc_op ops[1];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  int connect_ms = o.connect_timeout_ms ? o.connect_timeout_ms : 10000;
  if (grpc_call_start_batch(s->call, ops, 1, &s->tag_start, NULL) != GRPC_CALL_OK)
    goto failed;
  grpc_event ev = grpc_completion_queue_pluck(
      s->cq, &s->tag_start,
      gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(connect_ms, GPR_TIMESPAN)),
      NULL);
  if (ev.type == GRPC_QUEUE_TIMEOUT) {
    grpc_call_cancel_with_status(s->call, GRPC_STATUS_UNAVAILABLE, "connect timeout", NULL);
    grpc_completion_queue_pluck(s->cq, &s->tag_start, forever(), NULL);
    goto failed;
  }
  if (!ev.success)
    goto failed;
  *out = s;
  return 0;
failed:
  wait_status(s);
  status_to_err(s, err);
  if (err != NULL && err->status == GRPC_STATUS_OK)
    err->status = GRPC_STATUS_UNAVAILABLE;
  gclient_stream_close(s);
  return -1;
}

int gclient_stream_send(struct gclient_stream *s, const ProtobufCMessage *msg) {
  size_t len = protobuf_c_message_get_packed_size(msg);
  grpc_slice slice = grpc_slice_malloc(len);
  protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
  grpc_slice_unref(slice);
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_SEND_MESSAGE;
  op.data.send_message.send_message = bb;
  int rc = run(s, &op, 1, &s->tag_send);
  grpc_byte_buffer_destroy(bb);
  return rc;
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
    status_to_err(s, err);
    return -1;
  }
  grpc_byte_buffer_reader reader;
  if (!grpc_byte_buffer_reader_init(&reader, bb)) {
    grpc_byte_buffer_destroy(bb);
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "cannot read a message");
  }
  grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
  grpc_byte_buffer_reader_destroy(&reader);
  grpc_byte_buffer_destroy(bb);
  *msg = protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
  grpc_slice_unref(all);
  if (*msg == NULL)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "the server sent a message that is not a %s",
                      desc->name);
  return 1;
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
