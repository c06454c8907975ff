/* grpc.health.v1.Health over the rpc core. */
#include "health.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"

#define HEALTH_MAGIC 0x4ea17400u
#define WATCH_MAGIC 0x4ea17401u

typedef Grpc__Health__V1__HealthCheckResponse__ServingStatus serving_status;

/* Travels as the handlers' data pointer; immutable once registered. */
struct health {
  uint32_t magic;
  struct rpc_server *srv;
  char **names; /* the services answered for, besides "" */
  size_t n_names;
};

/* One Watch stream; travels as its stream data. */
struct watch {
  uint32_t magic;
  const struct health *h;
  int answered;        /* the request came and its status was sent */
  int notify_shutdown; /* a known service, not already NOT_SERVING */
};

static struct health *health_from(void *data) {
  struct health *h = data;
  if (h == NULL || h->magic != HEALTH_MAGIC)
    abort();
  return h;
}

static int service_known(const struct health *h, const char *name) {
  if (name[0] == '\0')
    return 1; /* the server as a whole */
  for (size_t i = 0; i < h->n_names; i++) {
    if (strcmp(h->names[i], name) == 0)
      return 1;
  }
  return 0;
}

static serving_status current_status(const struct health *h) {
  return rpc_server_shutting_down(h->srv)
             ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
             : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
}

static int health_check(const struct rpc_call_info *call, const ProtobufCMessage *req,
                        ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const struct health *h = health_from(data);
  const Grpc__Health__V1__HealthCheckRequest *r = (const Grpc__Health__V1__HealthCheckRequest *)req;
  if (!service_known(h, r->service))
    return tp_err_set(err, GRPC_STATUS_NOT_FOUND, "service: unknown service \"%s\"", r->service);
  Grpc__Health__V1__HealthCheckResponse *out = malloc(sizeof(*out));
  if (out == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  grpc__health__v1__health_check_response__init(out);
  out->status = current_status(h);
  *resp = &out->base;
  return 0;
}

static struct watch *watch_from(void *data) {
  struct watch *w = data;
  if (w == NULL || w->magic != WATCH_MAGIC)
    abort();
  return w;
}

static int watch_send(struct rpc_stream *stream, serving_status status) {
  Grpc__Health__V1__HealthCheckResponse out = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  out.status = status;
  return rpc_stream_send(stream, &out.base);
}

/* Watch: statuses never change while the server runs, so a Watch has one
 * message to send, and a second one (NOT_SERVING) when shutdown begins.
 * Between the two the stream is held without a thread, until the client
 * ends it or the server shuts down. */
static int watch_started(struct rpc_stream *stream, const struct rpc_call_info *call, void *data,
                         void **stream_data, struct tp_err *err) {
  struct watch *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  w->magic = WATCH_MAGIC;
  w->h = health_from(data);
  *stream_data = w;
  return 0;
}

/* The one request. Nothing more is read: the answer does not change. */
static int watch_message(struct rpc_stream *stream, void *stream_data, ProtobufCMessage *msg,
                         struct tp_err *err) {
  struct watch *w = watch_from(stream_data);
  const Grpc__Health__V1__HealthCheckRequest *r = (const Grpc__Health__V1__HealthCheckRequest *)msg;
  int known = service_known(w->h, r->service);
  protobuf_c_message_free_unpacked(msg, NULL);
  serving_status first =
      known ? current_status(w->h)
            : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
  w->answered = 1;
  w->notify_shutdown =
      known && first != GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
  if (watch_send(stream, first) < 0)
    return tp_err_set(err, GRPC_STATUS_CANCELLED, "call cancelled");
  return 1;
}

/* Only before the request (after it nothing is read): a Watch needs one. */
static void watch_half_closed(struct rpc_stream *stream, void *stream_data) {
  if (!watch_from(stream_data)->answered)
    rpc_stream_finish(stream, GRPC_STATUS_INVALID_ARGUMENT, "request: no message");
}

static void watch_shutdown(struct rpc_stream *stream, void *stream_data) {
  struct watch *w = watch_from(stream_data);
  if (w->notify_shutdown)
    watch_send(stream, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
  rpc_stream_finish(stream, GRPC_STATUS_OK, NULL);
}

static void watch_ended(struct rpc_stream *stream, void *stream_data) {
  struct watch *w = watch_from(stream_data);
  w->magic = 0;
  free(w);
}

static const struct rpc_stream_ops watch_ops = {
    .req = &grpc__health__v1__health_check_request__descriptor,
    .started = watch_started,
    .message = watch_message,
    .half_closed = watch_half_closed,
    .shutdown = watch_shutdown,
    .ended = watch_ended,
};

static void health_free(void *data) {
  struct health *h = data;
  for (size_t i = 0; i < h->n_names; i++)
    free(h->names[i]);
  free(h->names);
  h->magic = 0;
  free(h);
}

int health_register(struct rpc_server *srv, const char *const *services, size_t n) {
  struct health *h = calloc(1, sizeof(*h));
  if (h == NULL)
    return -ENOMEM;
  h->magic = HEALTH_MAGIC;
  h->srv = srv;
  /* The same set that reflection's list_services answers with. */
  static const char *const own[] = {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                                    "grpc.reflection.v1alpha.ServerReflection"};
  const size_t n_own = sizeof(own) / sizeof(own[0]);
  h->names = calloc(n + n_own, sizeof(*h->names));
  if (h->names == NULL)
    goto failed_malloc;
  for (size_t i = 0; i < n + n_own; i++) {
    h->names[i] = strdup(i < n ? services[i] : own[i - n]);
    if (h->names[i] == NULL)
      goto failed_malloc;
    h->n_names++;
  }
  if (rpc_server_add_cleanup(srv, health_free, h) < 0)
    goto failed_malloc;
  /* From here on h is the server's: freed by rpc_server_free. */
  int rc = rpc_server_add_unary(
      srv, "/grpc.health.v1.Health/Check", &grpc__health__v1__health_check_request__descriptor,
      &grpc__health__v1__health_check_response__descriptor, health_check, h);
  if (rc == 0)
    rc = rpc_server_add_stream(srv, "/grpc.health.v1.Health/Watch", &watch_ops, h);
  return rc;

failed_malloc:
  health_free(h);
  return -ENOMEM;
}
