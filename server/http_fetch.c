/* One bounded HTTP request with libcurl (see http_fetch.h). */
#include "http_fetch.h"

#include <curl/curl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A growing buffer, at most cap bytes (0: no cap), kept NUL-terminated. */
struct buf {
  char *p;
  size_t len;
  size_t cap;
  int too_long; /* the cap was reached: the fetch fails */
};

static int buf_add(struct buf *b, const char *data, size_t add) {
  if ((b->cap != 0 && add > b->cap - b->len) || add > SIZE_MAX - 1 - b->len) {
    b->too_long = 1;
    return -1;
  }
  char *np = realloc(b->p, b->len + add + 1);
  if (np == NULL)
    return -1;
  memcpy(np + b->len, data, add);
  b->p = np;
  b->len += add;
  b->p[b->len] = '\0';
  return 0;
}

static size_t body_write(char *data, size_t size, size_t n, void *arg) {
  return buf_add(arg, data, size * n) == 0 ? size * n : 0; /* 0: CURLE_WRITE_ERROR */
}

/* Header lines; a status line starts a new response (after a redirect or
 * a 100 Continue), whose headers replace those seen before. */
static size_t header_write(char *data, size_t size, size_t n, void *arg) {
  struct buf *h = arg;
  size_t len = size * n;
  if (len >= 5 && strncasecmp(data, "HTTP/", 5) == 0)
    h->len = 0;
  return buf_add(h, data, len) == 0 ? len : 0;
}

static int xfer_info(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                     curl_off_t ulnow) {
  (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
  return atomic_load((const atomic_int *)arg) != 0; /* nonzero: CURLE_ABORTED_BY_CALLBACK */
}

/* Response headers are few and short; more than this is no server we
 * want to hear from. */
#define HEADERS_MAX (64 * 1024)

int http_fetch(const char *url, const struct http_fetch_opts *o, struct http_fetch_result *out,
               struct tp_err *err) {
  memset(out, 0, sizeof(*out));
  struct buf body = {.cap = o->max_bytes}, head = {.cap = HEADERS_MAX};
  char curl_err[CURL_ERROR_SIZE] = "";
  struct curl_slist *headers = NULL;
  int post = o->method != NULL && strcmp(o->method, "POST") == 0;
  int oom = 0;
  if (post && o->content_type != NULL) {
    char line[256];
    snprintf(line, sizeof(line), "Content-Type: %s", o->content_type);
    struct curl_slist *l = curl_slist_append(headers, line);
    oom = l == NULL;
    headers = l != NULL ? l : headers;
  }
  for (size_t i = 0; !oom && o->headers != NULL && o->headers[i] != NULL; i++) {
    struct curl_slist *l = curl_slist_append(headers, o->headers[i]);
    oom = l == NULL;
    headers = l != NULL ? l : headers;
  }
  CURL *h = oom ? NULL : curl_easy_init();
  int rc = -1;
  if (h == NULL) {
    tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto done;
  }
  const char *protocols = o->protocols != NULL ? o->protocols : "http,https";
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, protocols);
  if (o->max_redirects > 0) {
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, protocols);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, (long)o->max_redirects);
  } else {
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
  }
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L); /* a thread of ours: no SIGALRM */
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, o->timeout_ms);
  if (o->max_bytes != 0)
    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_bytes);
  if (headers != NULL)
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  if (o->method != NULL && strcmp(o->method, "HEAD") == 0)
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  if (o->ca_pem != NULL) {
    struct curl_blob blob = {
        .data = (void *)o->ca_pem, .len = strlen(o->ca_pem), .flags = CURL_BLOB_COPY};
    curl_easy_setopt(h, CURLOPT_CAINFO_BLOB, &blob);
  }
  if (post) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, o->body_len > 0 ? (const char *)o->body : "");
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
  }
  if (o->stop != NULL) {
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, xfer_info);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, (void *)o->stop);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
  }
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, body_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, header_write);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &head);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_err);
  curl_easy_setopt(h, CURLOPT_USERAGENT, "tlsplane-server");
  CURLcode cc = curl_easy_perform(h);
  long status = 0;
  if (cc == CURLE_OK)
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  /* Not followed (max_redirects 0): a redirect is refused, not taken for
   * the answer. */
  const struct http_fetch_result got = {.headers = head.p, .headers_len = head.len};
  char *location = cc == CURLE_OK && status >= 300 && status < 400 && o->max_redirects == 0
                       ? http_fetch_header(&got, "Location")
                       : NULL;
  if (body.too_long || cc == CURLE_FILESIZE_EXCEEDED)
    tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "the response is longer than %zu bytes", o->max_bytes);
  else if (head.too_long)
    tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "the response's headers are longer than %d bytes",
               HEADERS_MAX);
  else if (cc == CURLE_ABORTED_BY_CALLBACK)
    tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "stopped: the server is shutting down");
  else if (location != NULL)
    tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "HTTP %ld: a redirect, and redirects are not followed",
               status);
  else if (cc == CURLE_TOO_MANY_REDIRECTS)
    tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "more than %d redirects", o->max_redirects);
  else if (cc != CURLE_OK)
    tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "%s",
               curl_err[0] != '\0' ? curl_err : curl_easy_strerror(cc));
  else {
    out->status = status;
    out->body = (unsigned char *)body.p;
    out->len = body.len;
    out->headers = head.p;
    out->headers_len = head.len;
    body.p = head.p = NULL;
    rc = 0;
  }
  free(location);
done:
  free(body.p);
  free(head.p);
  if (h != NULL)
    curl_easy_cleanup(h);
  curl_slist_free_all(headers);
  return rc;
}

char *http_fetch_header(const struct http_fetch_result *r, const char *name) {
  size_t nlen = strlen(name);
  const char *p = r->headers, *end = r->headers + r->headers_len;
  if (p == NULL || nlen == 0)
    return NULL;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *line_end = eol != NULL ? eol : end;
    if ((size_t)(line_end - p) > nlen && p[nlen] == ':' && strncasecmp(p, name, nlen) == 0) {
      const char *v = p + nlen + 1, *ve = line_end;
      while (v < ve && (*v == ' ' || *v == '\t'))
        v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
        ve--;
      return strndup(v, (size_t)(ve - v));
    }
    p = line_end + 1;
  }
  return NULL;
}

void http_fetch_result_clear(struct http_fetch_result *r) {
  free(r->body);
  free(r->headers);
  memset(r, 0, sizeof(*r));
}
