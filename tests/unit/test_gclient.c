/* Unit tests for the gRPC client stream (common/gclient.c) against the
 * server core (server/rpc.c) in the same process, on loopback. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "gclient.h"
#include "grpc/health/v1/health.pb-c.h"
#include "rpc.h"

#define ECHO "/test.Echo/Stream"

/* Echoes every request's service name back as a response status number
 * (its length); "end" ends with OK, "fail" with FAILED_PRECONDITION. */
static int echo(const struct rpc_call_info *call, struct rpc_stream *stream, struct tp_err *err,
                void *data) {
  for (;;) {
    ProtobufCMessage *m;
    int rc = rpc_stream_recv(stream, &grpc__health__v1__health_check_request__descriptor, &m, err);
    if (rc <= 0)
      return rc;
    Grpc__Health__V1__HealthCheckRequest *req = (Grpc__Health__V1__HealthCheckRequest *)m;
    int end = strcmp(req->service, "end") == 0, fail = strcmp(req->service, "fail") == 0;
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)strlen(req->service);
    protobuf_c_message_free_unpacked(m, NULL);
    if (end)
      return 0;
    if (fail)
      return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "told to fail");
    if (rpc_stream_send(stream, &resp.base) != 0)
      return -1;
  }
}

struct fixture {
  struct rpc_server *srv;
  char target[64];
};

static int setup(void **state) {
  static struct fixture f;
  struct tp_err err = {0};
  struct rpc_server_opts o = {.listen = "127.0.0.1:0", .threads = 2};
  assert_int_equal(rpc_server_new(&o, &f.srv, &err), 0);
  assert_int_equal(rpc_server_add_stream(f.srv, ECHO, echo, NULL), 0);
  assert_int_equal(rpc_server_start(f.srv, &err), 0);
  snprintf(f.target, sizeof(f.target), "127.0.0.1:%d", rpc_server_port(f.srv));
  *state = &f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  rpc_server_shutdown(f->srv, 1000);
  rpc_server_free(f->srv);
  return 0;
}

static int send_service(struct gclient_stream *s, const char *service) {
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)service;
  return gclient_stream_send(s, &req.base);
}

static void test_round_trip_and_ok_end(void **state) {
  struct fixture *f = *state;
  struct gclient_stream *s;
  struct tp_err err = {0};
  assert_int_equal(gclient_stream_open(f->target, ECHO, NULL, &s, &err), 0);
  for (int i = 1; i <= 3; i++) {
    char svc[8] = "xxx";
    svc[i] = '\0';
    assert_int_equal(send_service(s, svc), 0);
    ProtobufCMessage *m;
    assert_int_equal(
        gclient_stream_recv(s, &grpc__health__v1__health_check_response__descriptor, &m, &err), 1);
    assert_int_equal(((Grpc__Health__V1__HealthCheckResponse *)m)->status, i);
    protobuf_c_message_free_unpacked(m, NULL);
  }
  assert_int_equal(send_service(s, "end"), 0);
  ProtobufCMessage *m;
  assert_int_equal(
      gclient_stream_recv(s, &grpc__health__v1__health_check_response__descriptor, &m, &err), 0);
  gclient_stream_close(s);
}

static void test_server_status_reaches_the_client(void **state) {
  struct fixture *f = *state;
  struct gclient_stream *s;
  struct tp_err err = {0};
  assert_int_equal(gclient_stream_open(f->target, ECHO, NULL, &s, &err), 0);
  assert_int_equal(send_service(s, "fail"), 0);
  ProtobufCMessage *m;
  assert_int_equal(
      gclient_stream_recv(s, &grpc__health__v1__health_check_response__descriptor, &m, &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_FAILED_PRECONDITION);
  assert_string_equal(err.msg, "told to fail");
  gclient_stream_close(s);
}

static void test_unknown_method_is_unimplemented(void **state) {
  struct fixture *f = *state;
  struct gclient_stream *s;
  struct tp_err err = {0};
  if (gclient_stream_open(f->target, "/test.Echo/Nope", NULL, &s, &err) == 0) {
    ProtobufCMessage *m;
    assert_int_equal(
        gclient_stream_recv(s, &grpc__health__v1__health_check_response__descriptor, &m, &err), -1);
    gclient_stream_close(s);
  }
  assert_int_equal(err.status, GRPC_STATUS_UNIMPLEMENTED);
}

static void test_unreachable_server_is_unavailable(void **state) {
  (void)state;
  struct gclient_stream *s = NULL;
  struct tp_err err = {0};
  struct gclient_opts o = {.connect_timeout_ms = 2000};
  /* A port nobody listens on: refused at once. */
  int rc = gclient_stream_open("127.0.0.1:1", ECHO, &o, &s, &err);
  if (rc == 0) {
    ProtobufCMessage *m;
    rc = gclient_stream_recv(s, &grpc__health__v1__health_check_response__descriptor, &m, &err);
    gclient_stream_close(s);
  }
  assert_int_equal(rc, -1);
  assert_int_equal(err.status, GRPC_STATUS_UNAVAILABLE);
}

static void *cancel_later(void *arg) {
  usleep(200 * 1000);
  gclient_stream_cancel(arg);
  return NULL;
}

static void test_cancel_unblocks_a_receive(void **state) {
  struct fixture *f = *state;
  struct gclient_stream *s;
  struct tp_err err = {0};
  assert_int_equal(gclient_stream_open(f->target, ECHO, NULL, &s, &err), 0);
  pthread_t t;
  pthread_create(&t, NULL, cancel_later, s);
  ProtobufCMessage *m;
  assert_int_equal(
      gclient_stream_recv(s, &grpc__health__v1__health_check_response__descriptor, &m, &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_CANCELLED);
  pthread_join(t, NULL);
  gclient_stream_close(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip_and_ok_end),
      cmocka_unit_test(test_server_status_reaches_the_client),
      cmocka_unit_test(test_unknown_method_is_unimplemented),
      cmocka_unit_test(test_unreachable_server_is_unavailable),
      cmocka_unit_test(test_cancel_unblocks_a_receive),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
