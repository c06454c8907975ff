/* A gRPC client stream on grpc core's C API: what the agent uses to hold
 * its stream to the control plane. Blocking calls, meant for a thread of
 * their own: one thread may receive while another sends.
 *
 * Messages received are heap-allocated; free them with
 * protobuf_c_message_free_unpacked(msg, NULL). */
#ifndef TLSPLANE_COMMON_GCLIENT_H
#define TLSPLANE_COMMON_GCLIENT_H

#include <protobuf-c/protobuf-c.h>

#include "error.h"

struct gclient_stream;

struct gclient_opts {
  int keepalive_ms;         /* HTTP/2 ping interval; 0: 20 s */
  int keepalive_timeout_ms; /* a ping unanswered this long ends the stream; 0: 10 s */
  int connect_timeout_ms;   /* 0: 10 s */
};

/* Starts a bidirectional stream on method ("/pkg.Service/Method") of the
 * server at target ("host:port"). Returns 0 once the server answered with
 * its headers, or -1 with err (UNAVAILABLE when it cannot be reached in
 * connect_timeout_ms). Caller frees with gclient_stream_close. opts may be
 * NULL. */
int gclient_stream_open(const char *target, const char *method, const struct gclient_opts *opts,
                        struct gclient_stream **out, struct tp_err *err);

/* Sends one message. 0, or -1 when the stream is over. */
int gclient_stream_send(struct gclient_stream *s, const ProtobufCMessage *msg);

/* Receives one message: 1 with *msg, 0 when the server ended the stream
 * with OK, -1 otherwise with err holding the status the server (or the
 * transport) gave. */
int gclient_stream_recv(struct gclient_stream *s, const ProtobufCMessageDescriptor *desc,
                        ProtobufCMessage **msg, struct tp_err *err);

/* Ends the stream from any thread: a blocked receive returns -1. */
void gclient_stream_cancel(struct gclient_stream *s);

/* Cancels if needed, waits for the final status and frees everything.
 * No other thread may use s any more. NULL is a no-op. */
void gclient_stream_close(struct gclient_stream *s);

#endif
