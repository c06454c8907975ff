/* The bounded HTTP request (server/http_fetch.c) against a loopback HTTP
 * responder that runs on a thread of the test: the cap on the body, the
 * timeout, a non-2xx status, reading response headers, a POST with its
 * content type and extra headers, redirects refused or followed, and a
 * transfer stopped from outside. */
#include <curl/curl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "http_fetch.h"

#define MAX_BYTES 1000 /* the cap the tests set */
#define HELD_MAX 16    /* connections /hang keeps open */

/* The responder: one thread, one connection at a time; /hang leaves its
 * connection open and unanswered until the responder stops. */
struct responder {
  int fd;
  int port;
  pthread_t thread;
  atomic_int stop;
  int held[HELD_MAX];
  int n_held;
};

static void send_all(int fd, const char *p, size_t len) {
  while (len > 0) {
    ssize_t k = send(fd, p, len, MSG_NOSIGNAL);
    if (k <= 0)
      return;
    p += k;
    len -= (size_t)k;
  }
}

static void respond(int fd, const char *status, const char *headers, const char *body,
                    size_t body_len) {
  char head[1024];
  int n = snprintf(head, sizeof(head),
                   "HTTP/1.1 %s\r\nContent-Length: %zu\r\nConnection: close\r\n%s\r\n", status,
                   body_len, headers);
  send_all(fd, head, (size_t)n);
  send_all(fd, body, body_len);
}

/* Reads one request (headers and a Content-Length body) into req. */
static size_t read_request(int fd, char *req, size_t cap) {
  size_t len = 0;
  char *end = NULL;
  while (len < cap - 1 && (end = strstr(req, "\r\n\r\n")) == NULL) {
    ssize_t k = recv(fd, req + len, cap - 1 - len, 0);
    if (k <= 0)
      return len;
    len += (size_t)k;
    req[len] = '\0';
  }
  if (end == NULL)
    return len;
  const char *cl = strstr(req, "Content-Length: ");
  size_t want = (size_t)(end + 4 - req) + (cl != NULL && cl < end ? strtoul(cl + 16, NULL, 10) : 0);
  while (len < want && len < cap - 1) {
    ssize_t k = recv(fd, req + len, cap - 1 - len, 0);
    if (k <= 0)
      break;
    len += (size_t)k;
    req[len] = '\0';
  }
  return len;
}

static void serve(struct responder *r, int fd) {
  char req[8192] = "";
  size_t len = read_request(fd, req, sizeof(req));
  char path[256] = "";
  sscanf(req, "%*s %255s", path);
  if (strcmp(path, "/hang") == 0 && r->n_held < HELD_MAX) {
    r->held[r->n_held++] = fd; /* never answered */
    return;
  }
  if (strcmp(path, "/big") == 0) {
    char body[MAX_BYTES + 1];
    memset(body, 'x', sizeof(body));
    respond(fd, "200 OK", "", body, sizeof(body));
  } else if (strcmp(path, "/fits") == 0) {
    char body[MAX_BYTES];
    memset(body, 'y', sizeof(body));
    respond(fd, "200 OK", "", body, sizeof(body));
  } else if (strcmp(path, "/missing") == 0) {
    respond(fd, "404 Not Found", "", "nope", 4);
  } else if (strcmp(path, "/headers") == 0) {
    respond(fd, "201 Created",
            "Replay-Nonce:   nonce-1 \r\nLocation: http://127.0.0.1/acct/1\r\nRetry-After: 3\r\n",
            "{}", 2);
  } else if (strcmp(path, "/redirect") == 0) {
    respond(fd, "302 Found", "Location: /headers\r\n", "", 0);
  } else if (strcmp(path, "/loop") == 0) {
    respond(fd, "302 Found", "Location: /loop\r\n", "", 0);
  } else if (strcmp(path, "/echo") == 0) {
    respond(fd, "200 OK", "", req, len); /* what came, for the test to read */
  } else {
    respond(fd, "500 Internal Server Error", "", "?", 1);
  }
  close(fd);
}

static void *responder_main(void *arg) {
  struct responder *r = arg;
  while (!atomic_load(&r->stop)) {
    struct pollfd p = {.fd = r->fd, .events = POLLIN};
    if (poll(&p, 1, 50) <= 0)
      continue;
    int c = accept(r->fd, NULL, NULL);
    if (c >= 0)
      serve(r, c);
  }
  return NULL;
}

static int setup(void **state) {
  struct responder *r = calloc(1, sizeof(*r));
  assert_non_null(r);
  r->fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(r->fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(r->fd, (struct sockaddr *)&a, sizeof(a)), 0);
  assert_int_equal(listen(r->fd, 16), 0);
  socklen_t alen = sizeof(a);
  assert_int_equal(getsockname(r->fd, (struct sockaddr *)&a, &alen), 0);
  r->port = ntohs(a.sin_port);
  atomic_init(&r->stop, 0);
  assert_int_equal(pthread_create(&r->thread, NULL, responder_main, r), 0);
  assert_int_equal(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
  *state = r;
  return 0;
}

static int teardown(void **state) {
  struct responder *r = *state;
  atomic_store(&r->stop, 1);
  pthread_join(r->thread, NULL);
  for (int i = 0; i < r->n_held; i++)
    close(r->held[i]);
  close(r->fd);
  free(r);
  curl_global_cleanup();
  return 0;
}

static void url(const struct responder *r, const char *path, char *buf, size_t len) {
  snprintf(buf, len, "http://127.0.0.1:%d%s", r->port, path);
}

static int64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Fetches path with o; returns http_fetch's result. */
static int get(const struct responder *r, const char *path, const struct http_fetch_opts *o,
               struct http_fetch_result *res, struct tp_err *err) {
  char u[128];
  url(r, path, u, sizeof(u));
  return http_fetch(u, o, res, err);
}

static void test_cap(void **state) {
  const struct responder *r = *state;
  const struct http_fetch_opts o = {.timeout_ms = 5000, .max_bytes = MAX_BYTES};
  struct http_fetch_result res = {0};
  struct tp_err err = {0};
  /* Exactly the cap: received whole. */
  assert_int_equal(get(r, "/fits", &o, &res, &err), 0);
  assert_int_equal(res.status, 200);
  assert_int_equal(res.len, MAX_BYTES);
  assert_int_equal(res.body[MAX_BYTES], '\0');
  http_fetch_result_clear(&res);
  /* One byte more: refused, and says so. */
  assert_int_equal(get(r, "/big", &o, &res, &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_UNAVAILABLE);
  assert_non_null(strstr(err.msg, "longer than 1000 bytes"));
  assert_null(res.body);
  assert_int_equal(res.status, 0);
}

static void test_timeout(void **state) {
  const struct responder *r = *state;
  const struct http_fetch_opts o = {.timeout_ms = 300};
  struct http_fetch_result res = {0};
  struct tp_err err = {0};
  int64_t t0 = now_ms();
  assert_int_equal(get(r, "/hang", &o, &res, &err), -1);
  int64_t took = now_ms() - t0;
  assert_true(took >= 250);
  assert_true(took < 3000);
  assert_int_equal(err.status, GRPC_STATUS_UNAVAILABLE);
  if (strstr(err.msg, "imed out") == NULL) /* curl: "Operation timed out after ..." */
    fail_msg("not a timeout: %s", err.msg);
}

static void test_stop(void **state) {
  const struct responder *r = *state;
  atomic_int stop;
  atomic_init(&stop, 1);
  const struct http_fetch_opts o = {.timeout_ms = 20000, .stop = &stop};
  struct http_fetch_result res = {0};
  struct tp_err err = {0};
  int64_t t0 = now_ms();
  assert_int_equal(get(r, "/hang", &o, &res, &err), -1);
  assert_true(now_ms() - t0 < 3000);
  assert_non_null(strstr(err.msg, "stopped"));
}

static void test_status(void **state) {
  const struct responder *r = *state;
  const struct http_fetch_opts o = {.timeout_ms = 5000};
  struct http_fetch_result res = {0};
  struct tp_err err = {0};
  /* A non-2xx answer is an answer: the status and body say what came. */
  assert_int_equal(get(r, "/missing", &o, &res, &err), 0);
  assert_int_equal(res.status, 404);
  assert_int_equal(res.len, 4);
  assert_string_equal((const char *)res.body, "nope");
  http_fetch_result_clear(&res);
  assert_int_equal(get(r, "/other", &o, &res, &err), 0);
  assert_int_equal(res.status, 500);
  http_fetch_result_clear(&res);
}

static void test_headers(void **state) {
  const struct responder *r = *state;
  const struct http_fetch_opts o = {.timeout_ms = 5000};
  struct http_fetch_result res = {0};
  struct tp_err err = {0};
  assert_int_equal(get(r, "/headers", &o, &res, &err), 0);
  assert_int_equal(res.status, 201);
  char *nonce = http_fetch_header(&res, "replay-nonce"), *loc = http_fetch_header(&res, "Location"),
       *retry = http_fetch_header(&res, "Retry-After");
  assert_string_equal(nonce, "nonce-1"); /* case-insensitive, blanks trimmed */
  assert_string_equal(loc, "http://127.0.0.1/acct/1");
  assert_string_equal(retry, "3");
  assert_null(http_fetch_header(&res, "Replay")); /* a prefix is not the name */
  assert_null(http_fetch_header(&res, "Link"));
  free(nonce);
  free(loc);
  free(retry);
  http_fetch_result_clear(&res);
}

static void test_post(void **state) {
  const struct responder *r = *state;
  const char *const extra[] = {"Accept: application/json", NULL};
  const char body[] = "{\"protected\":\"x\"}";
  const struct http_fetch_opts o = {.method = "POST",
                                    .body = body,
                                    .body_len = strlen(body),
                                    .content_type = "application/jose+json",
                                    .headers = extra,
                                    .protocols = "http",
                                    .timeout_ms = 5000};
  struct http_fetch_result res = {0};
  struct tp_err err = {0};
  assert_int_equal(get(r, "/echo", &o, &res, &err), 0);
  assert_int_equal(res.status, 200);
  const char *got = (const char *)res.body;
  assert_true(strncmp(got, "POST /echo HTTP/1.1\r\n", 21) == 0);
  assert_non_null(strstr(got, "\r\nContent-Type: application/jose+json\r\n"));
  assert_non_null(strstr(got, "\r\nAccept: application/json\r\n"));
  assert_non_null(strstr(got, "\r\n\r\n{\"protected\":\"x\"}"));
  http_fetch_result_clear(&res);
}

static void test_redirects(void **state) {
  const struct responder *r = *state;
  struct http_fetch_result res = {0};
  struct tp_err err = {0};
  /* None followed: the redirect is refused, not taken for the answer. */
  const struct http_fetch_opts none = {.timeout_ms = 5000};
  assert_int_equal(get(r, "/redirect", &none, &res, &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_UNAVAILABLE);
  if (strstr(err.msg, "redirects are not followed") == NULL)
    fail_msg("%s", err.msg);
  assert_null(res.body);
  /* Followed: the last response's status and headers. */
  const struct http_fetch_opts some = {.timeout_ms = 5000, .max_redirects = 3};
  assert_int_equal(get(r, "/redirect", &some, &res, &err), 0);
  assert_int_equal(res.status, 201);
  char *nonce = http_fetch_header(&res, "Replay-Nonce");
  assert_string_equal(nonce, "nonce-1");
  free(nonce);
  http_fetch_result_clear(&res);
  /* Too many. */
  assert_int_equal(get(r, "/loop", &some, &res, &err), -1);
  if (strstr(err.msg, "more than 3 redirects") == NULL)
    fail_msg("%s", err.msg);
}

static void test_protocols(void **state) {
  (void)state;
  const struct http_fetch_opts o = {.protocols = "http", .timeout_ms = 2000};
  struct http_fetch_result res = {0};
  struct tp_err err = {0};
  assert_int_equal(http_fetch("https://127.0.0.1:9/x", &o, &res, &err), -1);
  assert_int_equal(err.status, GRPC_STATUS_UNAVAILABLE);
  assert_int_equal(http_fetch("file:///etc/passwd", &o, &res, &err), -1);
  assert_null(res.body);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cap),       cmocka_unit_test(test_timeout),
      cmocka_unit_test(test_stop),      cmocka_unit_test(test_status),
      cmocka_unit_test(test_headers),   cmocka_unit_test(test_post),
      cmocka_unit_test(test_redirects), cmocka_unit_test(test_protocols),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
