/* One HTTP request with libcurl, bounded: the protocols allowed, the
 * redirects followed, a timeout for the whole exchange and a cap on the
 * body received. The OCSP fetcher (POST), the CRL fetcher (GET) and any
 * later client (JSON POSTs that read response headers) share it; each
 * keeps only what differs. Safe on any thread once curl_global_init has
 * run (jobs_start). */
#ifndef TLSPLANE_SERVER_HTTP_FETCH_H
#define TLSPLANE_SERVER_HTTP_FETCH_H

#include <stdatomic.h>
#include <stddef.h>

#include "error.h"

/* How to ask. Zero-initialised: a GET over http or https, no redirects. */
struct http_fetch_opts {
  const char *method;         /* "GET" (NULL), "HEAD" (no body) or "POST" */
  const void *body;           /* POST: the request body (may be empty) */
  size_t body_len;            /* bytes of body */
  const char *content_type;   /* POST: the Content-Type header value, or NULL */
  const char *const *headers; /* more "Name: value" lines, NULL-terminated; may be NULL */
  const char *protocols;      /* curl's list, e.g. "http" or "http,https"; NULL: "http,https" */
  int max_redirects;          /* Location followed at most this often (same protocols); 0: none */
  long timeout_ms;            /* connect and transfer in all; 0: no limit */
  size_t max_bytes;           /* a longer body fails the fetch; 0: no limit */
  const atomic_int *stop;     /* may be NULL: once nonzero, the transfer aborts within ~1 s */
  const char *ca_pem; /* https: the CAs trusted instead of the system's (PEM); NULL: the system's */
};

/* What came back. Zero-initialised before the call; cleared with
 * http_fetch_result_clear. */
struct http_fetch_result {
  long status;         /* the last response's HTTP status */
  unsigned char *body; /* malloc'd, NUL-terminated (not counted in len); NULL when empty */
  size_t len;          /* bytes of body */
  char *headers;       /* the last response's header lines, as received; NULL when none */
  size_t headers_len;
};

/* Sends the request to url and receives the response, whatever its HTTP
 * status (out->status says which: a non-2xx answer is no failure here).
 * Fails (-1, err UNAVAILABLE, a message saying why: refused, timed out,
 * longer than max_bytes, stopped) when no complete response came; out
 * is then cleared. */
int http_fetch(const char *url, const struct http_fetch_opts *o, struct http_fetch_result *out,
               struct tp_err *err);

/* The value of response header `name` (case-insensitive), without the
 * surrounding blanks, malloc'd (caller frees); the first when it came
 * more than once. NULL when absent or out of memory. */
char *http_fetch_header(const struct http_fetch_result *r, const char *name);

/* Frees what r holds and zeroes it. */
void http_fetch_result_clear(struct http_fetch_result *r);

#endif
