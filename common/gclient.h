/* A gRPC client on grpc core's C API: what the agent uses to hold its
 * stream to the control plane and to make its enrollment calls, and what
 * `tlsplane-server call` uses. Blocking calls, meant for a thread of their
 * own: one thread may receive on a stream while another sends.
 *
 * Security: TLS when opts->ca_pem is set (the server is verified against
 * that CA and must name the target's host), with a client certificate
 * when key_pem and cert_pem are set too (mutual TLS); plaintext otherwise.
 * A bearer token goes in the "authorization" metadata of every call.
 *
 * Messages received are heap-allocated; free them with
 * protobuf_c_message_free_unpacked(msg, NULL). */
#ifndef TLSPLANE_COMMON_GCLIENT_H
#define TLSPLANE_COMMON_GCLIENT_H

#include <protobuf-c/protobuf-c.h>
#include <stdatomic.h>

#include "error.h"

struct gclient_stream;

struct gclient_opts {
  int keepalive_ms;         /* HTTP/2 ping interval; 0: 20 s */
  int keepalive_timeout_ms; /* a ping unanswered this long ends the stream; 0: 10 s */
  int connect_timeout_ms;   /* streams: until the call is under way; 0: 10 s */
  int deadline_ms;          /* unary calls: the whole call; 0: 30 s */
  int stream_deadline_ms;   /* streams: the whole stream (DEADLINE_EXCEEDED); 0: none */
  /* PEM strings, used during the open / call only (copied by grpc). */
  const char *ca_pem;   /* TLS, verifying the server against it; NULL: plaintext */
  const char *key_pem;  /* with cert_pem: the client certificate (mutual TLS) */
  const char *cert_pem; /* the client certificate chain */
  /* The value of the "authorization" metadata ("Bearer tlsp_..."); NULL:
   * none. Never logged. */
  const char *authorization;
  /* When set and it turns non-zero, a blocking open or unary call gives
   * up within 100 ms with CANCELLED (another thread is stopping). */
  const atomic_int *stop;
};

/* Starts a bidirectional stream on method ("/pkg.Service/Method") of the
 * server at target ("host:port"). Returns 0 once the call is under way,
 * or -1 with err (UNAVAILABLE when it cannot be reached in
 * connect_timeout_ms or the TLS handshake fails; CANCELLED when *stop was
 * set). Caller frees with gclient_stream_close. opts may be NULL. */
int gclient_stream_open(const char *target, const char *method, const struct gclient_opts *opts,
                        struct gclient_stream **out, struct tp_err *err);

/* Sends one message. 0, or -1 when the stream is over. */
int gclient_stream_send(struct gclient_stream *s, const ProtobufCMessage *msg);

/* Sends one message and half-closes: the last message of the stream
 * (a server-streaming call's request). 0, or -1 when the stream is over. */
int gclient_stream_send_last(struct gclient_stream *s, const ProtobufCMessage *msg);

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

/* One unary call: sends req to method of target, and on status OK returns
 * 0 with *resp, a new message of type resp_desc (caller frees). Otherwise
 * -1 with err holding the status and message the server (or the
 * transport) gave; *resp is NULL. opts may be NULL. */
int gclient_unary(const char *target, const char *method, const struct gclient_opts *opts,
                  const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
                  ProtobufCMessage **resp, struct tp_err *err);

/* "UNAVAILABLE" for GRPC_STATUS_UNAVAILABLE, ... ("UNKNOWN" for what is
 * not a status code). */
const char *gclient_status_name(int status);

#endif
