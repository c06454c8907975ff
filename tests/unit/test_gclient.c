/* Unit tests for the gRPC client (common/gclient.c) against the server
 * core (server/rpc.c) in the same process, on loopback: streams, unary
 * calls, the authorization metadata, TLS with and without a client
 * certificate, deadlines and the stop flag; and the server's stream API
 * (the expect timer, sends and finish from another thread, a shared
 * slice, a reference past ended). */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "fixtures.h"
#include "gclient.h"
#include "grpc/health/v1/health.pb-c.h"
#include "rpc.h"

#define ECHO "/test.Echo/Stream"
#define UNARY "/test.Echo/Unary"

/* Echoes every request's service name back as a response status number
 * (its length); "end" ends with OK, "fail" with FAILED_PRECONDITION. */
static int echo_started(struct rpc_stream *stream, const struct rpc_call_info *call, void *data,
                        void **stream_data, struct tp_err *err) {
  *stream_data = NULL;
  return 0;
}

static int echo_message(struct rpc_stream *stream, void *stream_data, ProtobufCMessage *m,
                        struct tp_err *err) {
  Grpc__Health__V1__HealthCheckRequest *req = (Grpc__Health__V1__HealthCheckRequest *)m;
  int end = strcmp(req->service, "end") == 0, fail = strcmp(req->service, "fail") == 0;
  Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  resp.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)strlen(req->service);
  protobuf_c_message_free_unpacked(m, NULL);
  if (end) {
    rpc_stream_finish(stream, GRPC_STATUS_OK, NULL);
    return 1;
  }
  if (fail)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "told to fail");
  return rpc_stream_send(stream, &resp.base) == 0 ? 0 : 1;
}

static const struct rpc_stream_ops echo_ops = {
    .req = &grpc__health__v1__health_check_request__descriptor,
    .started = echo_started,
    .message = echo_message,
};

/* "Held" streams: the test itself drives them from its own thread. The
 * started callback takes a reference (held_stream) and requires a message
 * within HELD_EXPECT_MS; ended is counted. */
#define HELD "/test.Echo/Held"
#define HELD_EXPECT_MS 1000
#define HELD_WAIT_S 30
static pthread_mutex_t held_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t held_cv = PTHREAD_COND_INITIALIZER;
static struct rpc_stream *held_stream;
static int held_started, held_messages, held_ended;

static int held_started_cb(struct rpc_stream *stream, const struct rpc_call_info *call, void *data,
                           void **stream_data, struct tp_err *err) {
  rpc_stream_ref(stream);
  assert_int_equal(rpc_stream_expect(stream, HELD_EXPECT_MS), 0);
  pthread_mutex_lock(&held_mu);
  held_stream = stream;
  held_started++;
  pthread_cond_broadcast(&held_cv);
  pthread_mutex_unlock(&held_mu);
  *stream_data = NULL;
  return 0;
}

static int held_message(struct rpc_stream *stream, void *stream_data, ProtobufCMessage *m,
                        struct tp_err *err) {
  protobuf_c_message_free_unpacked(m, NULL);
  pthread_mutex_lock(&held_mu);
  held_messages++;
  pthread_cond_broadcast(&held_cv);
  pthread_mutex_unlock(&held_mu);
  return 0;
}

static void held_ended_cb(struct rpc_stream *stream, void *stream_data) {
  pthread_mutex_lock(&held_mu);
  held_ended++;
  pthread_cond_broadcast(&held_cv);
  pthread_mutex_unlock(&held_mu);
}

static const struct rpc_stream_ops held_ops = {
    .req = &grpc__health__v1__health_check_request__descriptor,
    .started = held_started_cb,
    .message = held_message,
    .ended = held_ended_cb,
};

/* Waits until *count reaches n (held_mu); 0, or -1 after HELD_WAIT_S. */
static int held_wait(const int *count, int n) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += HELD_WAIT_S;
  pthread_mutex_lock(&held_mu);
  int rc = 0;
  while (*count < n && rc == 0)
    rc = pthread_cond_timedwait(&held_cv, &held_mu, &until);
  int reached = *count >= n;
  pthread_mutex_unlock(&held_mu);
  return reached ? 0 : -1;
}

static void held_reset(void) {
  pthread_mutex_lock(&held_mu);
  held_stream = NULL;
  held_started = held_messages = held_ended = 0;
  pthread_mutex_unlock(&held_mu);
}

/* "slow" calls: the handler holds the call until the test releases it
 * (slow_release), so that a client-side deadline or stop is what ends the
 * call, however slow the machine. Bounded by SLOW_MAX_S so that a broken
 * test cannot hang. */
#define SLOW_MAX_S 30
static pthread_mutex_t slow_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t slow_cv = PTHREAD_COND_INITIALIZER;
static int slow_started, slow_returned, slow_released;

static void slow_reset(void) {
  pthread_mutex_lock(&slow_mu);
  slow_started = slow_returned = slow_released = 0;
  pthread_mutex_unlock(&slow_mu);
}

static void slow_release(void) {
  pthread_mutex_lock(&slow_mu);
  slow_released = 1;
  pthread_cond_broadcast(&slow_cv);
  pthread_mutex_unlock(&slow_mu);
}

static struct timespec slow_deadline(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  t.tv_sec += SLOW_MAX_S;
  return t;
}

static void slow_hold(void) {
  struct timespec until = slow_deadline();
  pthread_mutex_lock(&slow_mu);
  slow_started++;
  pthread_cond_broadcast(&slow_cv);
  while (!slow_released && pthread_cond_timedwait(&slow_cv, &slow_mu, &until) == 0)
    ;
  slow_returned++;
  pthread_mutex_unlock(&slow_mu);
}

/* Waits until a "slow" handler holds a call; 0, or -1 after SLOW_MAX_S. */
static int slow_wait_started(void) {
  struct timespec until = slow_deadline();
  pthread_mutex_lock(&slow_mu);
  int rc = 0;
  while (slow_started == 0 && rc == 0)
    rc = pthread_cond_timedwait(&slow_cv, &slow_mu, &until);
  int started = slow_started;
  pthread_mutex_unlock(&slow_mu);
  return started > 0 ? 0 : -1;
}

static int slow_returned_count(void) {
  pthread_mutex_lock(&slow_mu);
  int n = slow_returned;
  pthread_mutex_unlock(&slow_mu);
  return n;
}

/* Unary: answers with the length of the service name; "fail" ends with
 * FAILED_PRECONDITION, "slow" holds the call until slow_release,
 * "whoami" answers with the length of what the authenticator saw (token
 * or client certificate). */
static char seen_auth[256], seen_cert_cn[256];

static int unary(const struct rpc_call_info *call, const ProtobufCMessage *req,
                 ProtobufCMessage **resp, struct tp_err *err, void *data) {
  const Grpc__Health__V1__HealthCheckRequest *r = (const Grpc__Health__V1__HealthCheckRequest *)req;
  if (strcmp(r->service, "fail") == 0)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "told to fail");
  if (strcmp(r->service, "slow") == 0)
    slow_hold();
  Grpc__Health__V1__HealthCheckResponse *out = malloc(sizeof(*out));
  grpc__health__v1__health_check_response__init(out);
  out->status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)strlen(r->service);
  *resp = &out->base;
  return 0;
}

/* Records what each call presented; refuses "Bearer bad". */
static int authenticate(const struct rpc_credentials *cred, struct rpc_identity *id,
                        struct tp_err *err, void *data) {
  snprintf(seen_auth, sizeof(seen_auth), "%s", cred->authorization ? cred->authorization : "");
  seen_cert_cn[0] = '\0';
  if (cred->client_cert_pem != NULL) {
    BIO *b = BIO_new_mem_buf(cred->client_cert_pem, -1);
    X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    if (x != NULL) {
      X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, seen_cert_cn,
                                sizeof(seen_cert_cn));
      X509_free(x);
    }
  }
  if (cred->authorization != NULL && strcmp(cred->authorization, "Bearer bad") == 0)
    return tp_err_set(err, GRPC_STATUS_UNAUTHENTICATED, "authorization: bad token");
  return 0;
}

struct fixture {
  struct rpc_server *srv, *tls_srv;
  char target[64], tls_target[64];
  char *ca_pem, *other_ca_pem, *client_cert_pem, *client_key_pem;
};

static struct rpc_server *server_start(struct rpc_server_opts *o, char *target, size_t len) {
  struct rpc_server *srv;
  struct tp_err err = {0};
  assert_int_equal(rpc_server_new(o, &srv, &err), 0);
  assert_int_equal(rpc_server_add_stream(srv, ECHO, &echo_ops, NULL), 0);
  assert_int_equal(rpc_server_add_stream(srv, HELD, &held_ops, NULL), 0);
  assert_int_equal(
      rpc_server_add_unary(srv, UNARY, &grpc__health__v1__health_check_request__descriptor,
                           &grpc__health__v1__health_check_response__descriptor, unary, NULL),
      0);
  assert_int_equal(rpc_server_start(srv, &err), 0);
  snprintf(target, len, "127.0.0.1:%d", rpc_server_port(srv));
  return srv;
}

static int setup(void **state) {
  static struct fixture f;
  struct rpc_server_opts o = {
      .listen = "127.0.0.1:0", .threads = 2, .auth = authenticate, .auth_data = NULL};
  f.srv = server_start(&o, f.target, sizeof(f.target));

  /* A CA, a server certificate naming 127.0.0.1, a client certificate. */
  EVP_PKEY *ca_key = fixture_key_ec("P-256"), *srv_key = fixture_key_ec("P-256"),
           *cli_key = fixture_key_ec("P-256"), *other_key = fixture_key_ec("P-256");
  X509 *ca = fixture_cert(ca_key, &(struct fixture_cert_opts){.cn = "test CA", .is_ca = 1});
  X509 *other = fixture_cert(other_key, &(struct fixture_cert_opts){.cn = "other CA", .is_ca = 1});
  X509 *srv_cert = fixture_cert(
      srv_key,
      &(struct fixture_cert_opts){
          .cn = "server", .san = "IP:127.0.0.1", .serial = 2, .issuer = ca, .issuer_key = ca_key});
  X509 *cli_cert = fixture_cert(
      cli_key, &(struct fixture_cert_opts){
                   .cn = "agent:edge-1", .serial = 3, .issuer = ca, .issuer_key = ca_key});
  f.ca_pem = fixture_pem_cert(ca);
  f.other_ca_pem = fixture_pem_cert(other);
  f.client_cert_pem = fixture_pem_cert(cli_cert);
  f.client_key_pem = fixture_pem_key(cli_key);
  char *srv_pem = fixture_pem_cert(srv_cert), *srv_key_pem = fixture_pem_key(srv_key);
  struct rpc_server_opts t = {.listen = "127.0.0.1:0",
                              .threads = 2,
                              .tls_cert_pem = srv_pem,
                              .tls_key_pem = srv_key_pem,
                              .tls_client_ca_pem = f.ca_pem,
                              .auth = authenticate};
  f.tls_srv = server_start(&t, f.tls_target, sizeof(f.tls_target));
  free(srv_pem);
  free(srv_key_pem);
  X509_free(ca);
  X509_free(other);
  X509_free(srv_cert);
  X509_free(cli_cert);
  EVP_PKEY_free(ca_key);
  EVP_PKEY_free(srv_key);
  EVP_PKEY_free(cli_key);
  EVP_PKEY_free(other_key);
  *state = &f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  rpc_server_shutdown(f->srv, 1000);
  rpc_server_free(f->srv);
  rpc_server_shutdown(f->tls_srv, 1000);
  rpc_server_free(f->tls_srv);
  free(f->ca_pem);
  free(f->other_ca_pem);
  free(f->client_cert_pem);
  free(f->client_key_pem);
  return 0;
}

/* One unary call asking for service: the status it answered with (the
 * length of the name), or -1 with err. */
static int call_unary(const char *target, const struct gclient_opts *o, const char *service,
                      struct tp_err *err) {
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)service;
  ProtobufCMessage *resp = NULL;
  if (gclient_unary(target, UNARY, o, &req.base,
                    &grpc__health__v1__health_check_response__descriptor, &resp, err) != 0) {
    assert_null(resp);
    return -1;
  }
  int status = ((Grpc__Health__V1__HealthCheckResponse *)resp)->status;
  protobuf_c_message_free_unpacked(resp, NULL);
  return status;
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
  /* The one fixed wait of this file, and it is the behaviour: nothing
   * tells another thread that a receive has blocked, so the cancel comes
   * a moment later. On a machine too slow for the receive to block first,
   * the receive of a stream already cancelled must end CANCELLED all the
   * same: the assertions hold either way. */
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

static void test_unary_round_trip(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  assert_int_equal(call_unary(f->target, NULL, "abcd", &err), 4);
  assert_int_equal(call_unary(f->target, NULL, "", &err), 0);
}

static void test_unary_status_reaches_the_client(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  assert_int_equal(call_unary(f->target, NULL, "fail", &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_FAILED_PRECONDITION);
  assert_string_equal(err.msg, "told to fail");
  assert_string_equal(gclient_status_name(err.status), "FAILED_PRECONDITION");
  assert_string_equal(gclient_status_name(99), "UNKNOWN");
}

static void test_unary_unreachable_is_unavailable(void **state) {
  struct tp_err err = {0};
  struct gclient_opts o = {.deadline_ms = 2000};
  assert_int_equal(call_unary("127.0.0.1:1", &o, "x", &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_UNAVAILABLE);
}

static void test_authorization_metadata(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct gclient_opts o = {.authorization = "Bearer tlsp_x_secret"};
  assert_int_equal(call_unary(f->target, &o, "ab", &err), 2);
  assert_string_equal(seen_auth, "Bearer tlsp_x_secret");
  /* Streams carry it too. */
  struct gclient_stream *s;
  seen_auth[0] = '\0';
  assert_int_equal(gclient_stream_open(f->target, ECHO, &o, &s, &err), 0);
  assert_int_equal(send_service(s, "end"), 0);
  ProtobufCMessage *m;
  assert_int_equal(
      gclient_stream_recv(s, &grpc__health__v1__health_check_response__descriptor, &m, &err), 0);
  gclient_stream_close(s);
  assert_string_equal(seen_auth, "Bearer tlsp_x_secret");
  /* Without it, nothing is sent. */
  assert_int_equal(call_unary(f->target, NULL, "ab", &err), 2);
  assert_string_equal(seen_auth, "");
  /* A refusal is the server's status. */
  o.authorization = "Bearer bad";
  assert_int_equal(call_unary(f->target, &o, "ab", &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_UNAUTHENTICATED);
  assert_string_equal(err.msg, "authorization: bad token");
}

static void test_tls_verifies_the_server(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct gclient_opts o = {.ca_pem = f->ca_pem, .deadline_ms = 5000};
  assert_int_equal(call_unary(f->tls_target, &o, "abc", &err), 3);
  assert_string_equal(seen_cert_cn, "");
  /* Another CA: the handshake fails. */
  o.ca_pem = f->other_ca_pem;
  assert_int_equal(call_unary(f->tls_target, &o, "abc", &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_UNAVAILABLE);
  /* Plaintext to a TLS server, and TLS to a plaintext one. */
  struct gclient_opts plain = {.deadline_ms = 5000};
  assert_int_equal(call_unary(f->tls_target, &plain, "abc", &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_UNAVAILABLE);
  o.ca_pem = f->ca_pem;
  assert_int_equal(call_unary(f->target, &o, "abc", &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_UNAVAILABLE);
}

static void test_tls_client_certificate(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct gclient_opts o = {
      .ca_pem = f->ca_pem, .key_pem = f->client_key_pem, .cert_pem = f->client_cert_pem};
  assert_int_equal(call_unary(f->tls_target, &o, "abcde", &err), 5);
  assert_string_equal(seen_cert_cn, "agent:edge-1");
  /* A stream over mutual TLS, with a token beside it. */
  o.authorization = "Bearer tlsp_y";
  struct gclient_stream *s;
  assert_int_equal(gclient_stream_open(f->tls_target, ECHO, &o, &s, &err), 0);
  assert_int_equal(send_service(s, "xy"), 0);
  ProtobufCMessage *m;
  assert_int_equal(
      gclient_stream_recv(s, &grpc__health__v1__health_check_response__descriptor, &m, &err), 1);
  assert_int_equal(((Grpc__Health__V1__HealthCheckResponse *)m)->status, 2);
  protobuf_c_message_free_unpacked(m, NULL);
  gclient_stream_close(s);
  assert_string_equal(seen_cert_cn, "agent:edge-1");
  assert_string_equal(seen_auth, "Bearer tlsp_y");
}

static void test_unary_deadline(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  struct gclient_opts o = {.deadline_ms = 300};
  slow_reset();
  assert_int_equal(call_unary(f->target, &o, "slow", &err), -1);
  /* Ended by the deadline while the handler still held the call. */
  assert_int_equal(slow_returned_count(), 0);
  slow_release();
  assert_int_equal(err.status, GRPC_STATUS_DEADLINE_EXCEEDED);
}

static atomic_int stop_flag;

/* Sets the stop flag once the server holds the call. */
static void *stop_when_held(void *arg) {
  int *ok = arg;
  *ok = slow_wait_started() == 0;
  atomic_store(&stop_flag, 1);
  return NULL;
}

static void test_stop_flag_ends_a_unary_call(void **state) {
  struct fixture *f = *state;
  struct tp_err err = {0};
  atomic_store(&stop_flag, 0);
  slow_reset();
  struct gclient_opts o = {.stop = &stop_flag};
  pthread_t t;
  int held = 0;
  pthread_create(&t, NULL, stop_when_held, &held);
  assert_int_equal(call_unary(f->target, &o, "slow", &err), -1);
  /* The stop flag ended it, not the handler: that still holds the call. */
  int returned = slow_returned_count();
  slow_release();
  pthread_join(t, NULL);
  assert_true(held);
  assert_int_equal(returned, 0);
  assert_int_equal(err.status, GRPC_STATUS_CANCELLED);
  /* Set before the call: nothing is waited for. */
  slow_reset();
  assert_int_equal(call_unary(f->target, &o, "slow", &err), -1);
  returned = slow_returned_count();
  slow_release();
  assert_int_equal(returned, 0);
  assert_int_equal(err.status, GRPC_STATUS_CANCELLED);
}

/* A stream that sends nothing within rpc_stream_expect's time ends with
 * DEADLINE_EXCEEDED; ended comes once; a reference outlives it, and every
 * call on the stream then fails. */
static void test_stream_expect_and_ref_past_ended(void **state) {
  struct fixture *f = *state;
  held_reset();
  struct gclient_stream *s;
  struct tp_err err = {0};
  assert_int_equal(gclient_stream_open(f->target, HELD, NULL, &s, &err), 0);
  ProtobufCMessage *m;
  assert_int_equal(
      gclient_stream_recv(s, &grpc__health__v1__health_check_response__descriptor, &m, &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_DEADLINE_EXCEEDED);
  assert_string_equal(err.msg, "no message within 1000 ms");
  gclient_stream_close(s);
  assert_int_equal(held_wait(&held_ended, 1), 0);
  pthread_mutex_lock(&held_mu);
  struct rpc_stream *stream = held_stream;
  assert_int_equal(held_ended, 1);
  assert_int_equal(held_messages, 0);
  pthread_mutex_unlock(&held_mu);
  Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  assert_int_equal(rpc_stream_send(stream, &resp.base), -EPIPE);
  assert_int_equal(rpc_stream_finish(stream, GRPC_STATUS_OK, NULL), -EALREADY);
  assert_int_equal(rpc_stream_expect(stream, 10), -EPIPE);
  rpc_stream_unref(stream);
}

static atomic_int slice_freed;
static void slice_free(void *p) {
  free(p);
  atomic_fetch_add(&slice_freed, 1);
}

/* Sends from a thread that is not the stream's: a message, then one
 * serialized message twice by slice reference (freed once, when the last
 * reference goes), then an OK finish after them. */
static void test_stream_send_from_any_thread(void **state) {
  struct fixture *f = *state;
  held_reset();
  atomic_store(&slice_freed, 0);
  struct gclient_stream *s;
  struct tp_err err = {0};
  assert_int_equal(gclient_stream_open(f->target, HELD, NULL, &s, &err), 0);
  assert_int_equal(send_service(s, "keep"), 0); /* stops the expect timer */
  assert_int_equal(held_wait(&held_messages, 1), 0);
  pthread_mutex_lock(&held_mu);
  struct rpc_stream *stream = held_stream;
  pthread_mutex_unlock(&held_mu);

  Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  resp.status = 7;
  assert_int_equal(rpc_stream_send(stream, &resp.base), 0);
  resp.status = 9;
  size_t len = protobuf_c_message_get_packed_size(&resp.base);
  uint8_t *bytes = malloc(len ? len : 1);
  protobuf_c_message_pack(&resp.base, bytes);
  grpc_slice slice = grpc_slice_new_with_user_data(bytes, len, slice_free, bytes);
  assert_int_equal(rpc_stream_send_slice(stream, slice), 0);
  assert_int_equal(rpc_stream_send_slice(stream, slice), 0);
  grpc_slice_unref(slice);
  assert_int_equal(rpc_stream_finish(stream, GRPC_STATUS_OK, NULL), 0);
  assert_int_equal(rpc_stream_finish(stream, GRPC_STATUS_ABORTED, "twice"), -EALREADY);

  int want[] = {7, 9, 9};
  for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
    ProtobufCMessage *m;
    assert_int_equal(
        gclient_stream_recv(s, &grpc__health__v1__health_check_response__descriptor, &m, &err), 1);
    assert_int_equal(((Grpc__Health__V1__HealthCheckResponse *)m)->status, want[i]);
    protobuf_c_message_free_unpacked(m, NULL);
  }
  ProtobufCMessage *m;
  assert_int_equal(
      gclient_stream_recv(s, &grpc__health__v1__health_check_response__descriptor, &m, &err), 0);
  gclient_stream_close(s);
  assert_int_equal(held_wait(&held_ended, 1), 0);
  rpc_stream_unref(stream);
  /* grpc's transport may drop its last reference a moment after the call
   * ended: polled, with a deadline. */
  for (int i = 0; i < HELD_WAIT_S * 100 && atomic_load(&slice_freed) == 0; i++)
    nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
  assert_int_equal(atomic_load(&slice_freed), 1);
  pthread_mutex_lock(&held_mu);
  assert_int_equal(held_ended, 1);
  pthread_mutex_unlock(&held_mu);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip_and_ok_end),
      cmocka_unit_test(test_server_status_reaches_the_client),
      cmocka_unit_test(test_unknown_method_is_unimplemented),
      cmocka_unit_test(test_unreachable_server_is_unavailable),
      cmocka_unit_test(test_cancel_unblocks_a_receive),
      cmocka_unit_test(test_stream_expect_and_ref_past_ended),
      cmocka_unit_test(test_stream_send_from_any_thread),
      cmocka_unit_test(test_unary_round_trip),
      cmocka_unit_test(test_unary_status_reaches_the_client),
      cmocka_unit_test(test_unary_unreachable_is_unavailable),
      cmocka_unit_test(test_authorization_metadata),
      cmocka_unit_test(test_tls_verifies_the_server),
      cmocka_unit_test(test_tls_client_certificate),
      cmocka_unit_test(test_unary_deadline),
      cmocka_unit_test(test_stop_flag_ends_a_unary_call),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
