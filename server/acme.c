/* The RFC 8555 protocol core (see acme.h). */
#include "acme.h"

#include <ctype.h>
#include <curl/curl.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pbjson.h"

#define BAD_NONCE "urn:ietf:params:acme:error:badNonce"
#define RATE_LIMITED "urn:ietf:params:acme:error:rateLimited"
#define JOSE "application/jose+json"

static int oom(struct tp_err *err) {
  return tp_err_set(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
}

/* Prepends "ACME <what>: " to err's message. */
static void err_where(struct tp_err *err, const char *what) {
  char prefix[ACME_URL_MAX + 16];
  snprintf(prefix, sizeof(prefix), "ACME %s: ", what);
  tp_err_prefix(err, prefix);
}

char *acme_b64url(const void *p, size_t n) {
  if (n > (SIZE_MAX / 4) * 3 - 3 || n > INT32_MAX / 2)
    return NULL;
  char *out = malloc(4 * ((n + 2) / 3) + 1);
  if (out == NULL)
    return NULL;
  int len = EVP_EncodeBlock((unsigned char *)out, p, (int)n);
  while (len > 0 && out[len - 1] == '=')
    len--;
  out[len] = '\0';
  for (char *c = out; *c; c++)
    *c = *c == '+' ? '-' : *c == '/' ? '_' : *c;
  return out;
}

int acme_b64url_decode(const char *s, unsigned char **out, size_t *n) {
  size_t len = strlen(s);
  *out = NULL;
  *n = 0;
  while (len > 0 && s[len - 1] == '=')
    len--;
  if (len % 4 == 1 || len > INT32_MAX / 2)
    return -1;
  size_t padded = (len + 3) / 4 * 4;
  char *t = malloc(padded + 1);
  unsigned char *bin = malloc(padded / 4 * 3 + 1);
  if (t == NULL || bin == NULL) {
    free(t);
    free(bin);
    return -1;
  }
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
          c == '_')) { /* not base64url (the standard alphabet neither) */
      free(t);
      free(bin);
      return -1;
    }
    t[i] = c == '-' ? '+' : c == '_' ? '/' : c;
  }
  memset(t + len, '=', padded - len);
  t[padded] = '\0';
  int got = padded > 0 ? EVP_DecodeBlock(bin, (unsigned char *)t, (int)padded) : 0;
  free(t);
  if (got < 0) {
    free(bin);
    return -1;
  }
  /* EVP_DecodeBlock counts the padding's bytes as zeros. */
  *n = (size_t)got - (padded - len);
  *out = bin;
  return 0;
}

/* A big number's bytes as base64url: pad bytes when nonzero (EC
 * coordinates), else as few as it takes (RSA). */
static json_t *bn_json(EVP_PKEY *key, const char *param, int pad) {
  BIGNUM *bn = NULL;
  if (EVP_PKEY_get_bn_param(key, param, &bn) != 1) {
    ERR_clear_error();
    return NULL;
  }
  int len = pad > 0 ? pad : BN_num_bytes(bn);
  unsigned char *bin = malloc(len > 0 ? (size_t)len : 1);
  json_t *j = NULL;
  if (bin != NULL && BN_bn2binpad(bn, bin, len) == len) {
    char *s = acme_b64url(bin, (size_t)len);
    j = s != NULL ? json_string(s) : NULL;
    free(s);
  }
  free(bin);
  BN_free(bn);
  return j;
}

json_t *acme_jwk(EVP_PKEY *key) {
  json_t *jwk = json_object();
  if (jwk == NULL)
    return NULL;
  int ok = 0;
  if (EVP_PKEY_is_a(key, "EC")) {
    char group[32] = "";
    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       NULL) == 1 &&
        strcmp(group, "prime256v1") == 0)
      ok = json_object_set_new(jwk, "crv", json_string("P-256")) == 0 &&
           json_object_set_new(jwk, "kty", json_string("EC")) == 0 &&
           json_object_set_new(jwk, "x", bn_json(key, OSSL_PKEY_PARAM_EC_PUB_X, 32)) == 0 &&
           json_object_set_new(jwk, "y", bn_json(key, OSSL_PKEY_PARAM_EC_PUB_Y, 32)) == 0;
  } else if (EVP_PKEY_is_a(key, "RSA")) {
    ok = json_object_set_new(jwk, "e", bn_json(key, OSSL_PKEY_PARAM_RSA_E, 0)) == 0 &&
         json_object_set_new(jwk, "kty", json_string("RSA")) == 0 &&
         json_object_set_new(jwk, "n", bn_json(key, OSSL_PKEY_PARAM_RSA_N, 0)) == 0;
  }
  ERR_clear_error();
  if (!ok) {
    json_decref(jwk);
    return NULL;
  }
  return jwk;
}

/* JSON in RFC 7638's form: members sorted, no blanks. */
static char *json_canonical(const json_t *j) {
  return json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
}

char *acme_jwk_thumbprint(EVP_PKEY *key) {
  json_t *jwk = acme_jwk(key);
  char *s = jwk != NULL ? json_canonical(jwk) : NULL;
  json_decref(jwk);
  if (s == NULL)
    return NULL;
  unsigned char md[32];
  unsigned int mdlen = 0;
  char *out = NULL;
  if (EVP_Digest(s, strlen(s), md, &mdlen, EVP_sha256(), NULL) == 1)
    out = acme_b64url(md, mdlen);
  free(s);
  return out;
}

/* ES256: the DER ECDSA signature of what, as the raw r||s (RFC 7518 3.4). */
static char *es256_sign(EVP_PKEY *key, const char *what) {
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  unsigned char *der = NULL;
  size_t der_len = 0;
  char *out = NULL;
  if (md != NULL && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
      EVP_DigestSign(md, NULL, &der_len, (const unsigned char *)what, strlen(what)) == 1 &&
      (der = malloc(der_len)) != NULL &&
      EVP_DigestSign(md, der, &der_len, (const unsigned char *)what, strlen(what)) == 1) {
    const unsigned char *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    unsigned char raw[64];
    if (sig != NULL && BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32) == 32 &&
        BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32) == 32)
      out = acme_b64url(raw, sizeof(raw));
    ECDSA_SIG_free(sig);
  }
  ERR_clear_error();
  free(der);
  EVP_MD_CTX_free(md);
  return out;
}

/* HS256 of what under key. */
static char *hs256_sign(const unsigned char *key, size_t key_len, const char *what) {
  unsigned char mac[32];
  size_t mac_len = 0;
  if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, key_len, (const unsigned char *)what,
                strlen(what), mac, sizeof(mac), &mac_len) == NULL) {
    ERR_clear_error();
    return NULL;
  }
  return acme_b64url(mac, mac_len);
}

/* The flattened JWS of payload (already text) under protected, signed
 * by sign. */
static json_t *jws_make(json_t *protected, const char *payload, EVP_PKEY *key,
                        const unsigned char *hmac, size_t hmac_len) {
  char *ph = json_canonical(protected);
  char *ph64 = ph != NULL ? acme_b64url(ph, strlen(ph)) : NULL;
  char *pl64 = acme_b64url(payload, strlen(payload));
  char *input = NULL, *sig = NULL;
  json_t *jws = NULL;
  if (ph64 != NULL && pl64 != NULL && (input = malloc(strlen(ph64) + strlen(pl64) + 2)) != NULL) {
    sprintf(input, "%s.%s", ph64, pl64);
    sig = key != NULL ? es256_sign(key, input) : hs256_sign(hmac, hmac_len, input);
  }
  if (sig != NULL)
    jws = json_pack("{s:s, s:s, s:s}", "protected", ph64, "payload", pl64, "signature", sig);
  free(ph);
  free(ph64);
  free(pl64);
  free(input);
  free(sig);
  return jws;
}

char *acme_jws(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
               const char *payload) {
  json_t *ph = json_pack("{s:s, s:s, s:s}", "alg", "ES256", "nonce", nonce, "url", url);
  if (ph == NULL)
    return NULL;
  int ok = kid != NULL ? json_object_set_new(ph, "kid", json_string(kid)) == 0
                       : json_object_set_new(ph, "jwk", acme_jwk(key)) == 0;
  json_t *jws = ok ? jws_make(ph, payload != NULL ? payload : "", key, NULL, 0) : NULL;
  char *out = jws != NULL ? json_dumps(jws, JSON_COMPACT) : NULL;
  json_decref(ph);
  json_decref(jws);
  return out;
}

json_t *acme_eab(EVP_PKEY *account_key, const char *eab_kid, const unsigned char *hmac_key,
                 size_t hmac_len, const char *url) {
  json_t *jwk = acme_jwk(account_key);
  char *payload = jwk != NULL ? json_canonical(jwk) : NULL;
  json_t *ph = json_pack("{s:s, s:s, s:s}", "alg", "HS256", "kid", eab_kid, "url", url);
  json_t *jws =
      payload != NULL && ph != NULL ? jws_make(ph, payload, NULL, hmac_key, hmac_len) : NULL;
  json_decref(jwk);
  json_decref(ph);
  free(payload);
  return jws;
}

/* body as a JSON object, or NULL. */
static json_t *object_load(const char *body, size_t len) {
  if (body == NULL || len == 0)
    return NULL;
  json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
  if (j != NULL && !json_is_object(j)) {
    json_decref(j);
    return NULL;
  }
  return j;
}

/* Member name of o when it is a string no longer than max, strdup'd. */
static char *member_string(const json_t *o, const char *name, size_t max) {
  const json_t *v = json_object_get(o, name);
  if (!json_is_string(v) || json_string_length(v) > max)
    return NULL;
  return strdup(json_string_value(v));
}

/* An absolute https URL, for the directory's members. */
static int url_ok(const char *u) {
  return u != NULL && strncmp(u, "https://", 8) == 0 && strlen(u) > 8 &&
         strpbrk(u, " \t\r\n") == NULL;
}

int acme_directory_parse(const char *body, size_t len, struct acme_directory *d,
                         struct tp_err *err) {
  memset(d, 0, sizeof(*d));
  json_t *j = object_load(body, len);
  if (j == NULL)
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "the ACME directory is not a JSON object");
  d->new_nonce = member_string(j, "newNonce", ACME_URL_MAX);
  d->new_account = member_string(j, "newAccount", ACME_URL_MAX);
  d->new_order = member_string(j, "newOrder", ACME_URL_MAX);
  const json_t *meta = json_object_get(j, "meta");
  if (json_is_object(meta)) {
    d->terms_of_service = member_string(meta, "termsOfService", ACME_URL_MAX);
    d->eab_required = json_is_true(json_object_get(meta, "externalAccountRequired"));
  }
  /* Optional (RFC 9773 4): one that is not an https URL is as none. */
  d->renewal_info = member_string(j, "renewalInfo", ACME_URL_MAX);
  if (d->renewal_info != NULL && !url_ok(d->renewal_info)) {
    free(d->renewal_info);
    d->renewal_info = NULL;
  }
  json_decref(j);
  const char *missing = !url_ok(d->new_nonce)     ? "newNonce"
                        : !url_ok(d->new_account) ? "newAccount"
                        : !url_ok(d->new_order)   ? "newOrder"
                                                  : NULL;
  if (missing != NULL) {
    acme_directory_clear(d);
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "the ACME directory has no %s (an https URL)",
                      missing);
  }
  return 0;
}

void acme_directory_clear(struct acme_directory *d) {
  free(d->new_nonce);
  free(d->new_account);
  free(d->new_order);
  free(d->terms_of_service);
  free(d->renewal_info);
  memset(d, 0, sizeof(*d));
}

int acme_problem_parse(const char *body, size_t len, struct acme_problem *p) {
  memset(p, 0, sizeof(*p));
  json_t *j = object_load(body, len);
  if (j == NULL)
    return -1;
  p->type = member_string(j, "type", 256);
  p->detail = member_string(j, "detail", 1024);
  const json_t *st = json_object_get(j, "status");
  if (json_is_integer(st) && json_integer_value(st) >= 100 && json_integer_value(st) < 600)
    p->status = (long)json_integer_value(st);
  json_decref(j);
  if (p->type == NULL) {
    acme_problem_clear(p);
    return -1;
  }
  return 0;
}

void acme_problem_clear(struct acme_problem *p) {
  free(p->type);
  free(p->detail);
  memset(p, 0, sizeof(*p));
}

char *acme_account_status_parse(const char *body, size_t len) {
  json_t *j = object_load(body, len);
  char *s = j != NULL ? member_string(j, "status", 32) : NULL;
  json_decref(j);
  return s;
}

void acme_client_init(struct acme_client *c, const char *directory_url, const char *ca_pem,
                      const atomic_int *stop) {
  memset(c, 0, sizeof(*c));
  c->directory_url = directory_url;
  c->ca_pem = ca_pem;
  c->stop = stop;
}

void acme_client_clear(struct acme_client *c) {
  acme_directory_clear(&c->dir);
  free(c->nonce);
  c->nonce = NULL;
}

static struct http_fetch_opts fetch_opts(const struct acme_client *c) {
  return (struct http_fetch_opts){.protocols = "https",
                                  .timeout_ms = ACME_TIMEOUT_MS,
                                  .max_bytes = ACME_MAX_BYTES,
                                  .stop = c->stop,
                                  .ca_pem = c->ca_pem};
}

/* Keeps the response's Replay-Nonce for the next request. */
static void nonce_take(struct acme_client *c, const struct http_fetch_result *r) {
  char *n = http_fetch_header(r, "Replay-Nonce");
  if (n != NULL && n[0] != '\0' && strlen(n) < 256) {
    free(c->nonce);
    c->nonce = n;
  } else
    free(n);
}

/* Retry-After as seconds from now: delta-seconds or an HTTP-date. */
static int64_t retry_after(const struct http_fetch_result *r) {
  char *v = http_fetch_header(r, "Retry-After");
  int64_t s = 0;
  if (v != NULL) {
    char *end = NULL;
    long long n = strtoll(v, &end, 10);
    if (end != v && *end == '\0')
      s = n;
    else {
      time_t t = curl_getdate(v, NULL);
      if (t != -1)
        s = (int64_t)t - (int64_t)time(NULL);
    }
  }
  free(v);
  if (s < 0)
    s = 0;
  return s > ACME_RETRY_AFTER_MAX_S ? ACME_RETRY_AFTER_MAX_S : s;
}

/* The error of a non-2xx response r from url: its problem, or its
 * status. Sets *bad_nonce when it is one. */
static int response_error(struct acme_client *c, const char *what,
                          const struct http_fetch_result *r, int *bad_nonce, struct tp_err *err) {
  struct acme_problem p;
  int has = acme_problem_parse((const char *)r->body, r->len, &p) == 0;
  int rate = has && strcmp(p.type, RATE_LIMITED) == 0;
  if (bad_nonce != NULL)
    *bad_nonce = has && strcmp(p.type, BAD_NONCE) == 0;
  if (rate || r->status == 429 || r->status == 503)
    c->retry_after_s = retry_after(r);
  grpc_status_code code = rate || r->status >= 500 || r->status == 429
                              ? GRPC_STATUS_UNAVAILABLE
                              : GRPC_STATUS_FAILED_PRECONDITION;
  char later[64] = "";
  if (c->retry_after_s > 0)
    snprintf(later, sizeof(later), " (retry after %lld s)", (long long)c->retry_after_s);
  if (has)
    tp_err_set(err, code, "ACME %s: HTTP %ld: %s%s%s%s", what, r->status, p.type,
               p.detail != NULL ? ": " : "", p.detail != NULL ? p.detail : "", later);
  else
    tp_err_set(err, code, "ACME %s: HTTP %ld (no problem document)%s", what, r->status, later);
  acme_problem_clear(&p);
  return -1;
}

int acme_directory_fetch(struct acme_client *c, struct tp_err *err) {
  c->retry_after_s = 0;
  if (c->directory_url == NULL || strncmp(c->directory_url, "https://", 8) != 0)
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION, "the ACME directory URL is not https");
  struct http_fetch_opts o = fetch_opts(c);
  struct http_fetch_result r = {0};
  if (http_fetch(c->directory_url, &o, &r, err) != 0) {
    err_where(err, c->directory_url);
    return -1;
  }
  int rc;
  if (r.status != 200)
    rc = response_error(c, "directory", &r, NULL, err);
  else {
    acme_directory_clear(&c->dir);
    rc = acme_directory_parse((const char *)r.body, r.len, &c->dir, err);
  }
  http_fetch_result_clear(&r);
  return rc;
}

/* A nonce from newNonce (HEAD). */
static int nonce_fetch(struct acme_client *c, struct tp_err *err) {
  struct http_fetch_opts o = fetch_opts(c);
  o.method = "HEAD";
  struct http_fetch_result r = {0};
  if (http_fetch(c->dir.new_nonce, &o, &r, err) != 0) {
    err_where(err, "newNonce");
    return -1;
  }
  int rc = 0;
  free(c->nonce);
  c->nonce = NULL;
  nonce_take(c, &r);
  if (r.status < 200 || r.status > 299)
    rc = response_error(c, "newNonce", &r, NULL, err);
  else if (c->nonce == NULL)
    rc = tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "ACME newNonce: no Replay-Nonce header");
  http_fetch_result_clear(&r);
  return rc;
}

/* acme_post, asking for the media type accept (NULL: no Accept). */
static int post_accept(struct acme_client *c, EVP_PKEY *key, const char *kid, const char *url,
                       const char *payload, const char *accept, struct http_fetch_result *out,
                       struct tp_err *err) {
  memset(out, 0, sizeof(*out));
  c->retry_after_s = 0;
  if (c->dir.new_nonce == NULL)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "ACME: no directory read");
  for (int attempt = 0; attempt < 2; attempt++) {
    if (c->nonce == NULL && nonce_fetch(c, err) != 0)
      return -1;
    char *jws = acme_jws(key, kid, c->nonce, url, payload);
    free(c->nonce); /* used: each nonce once */
    c->nonce = NULL;
    if (jws == NULL)
      return tp_err_set(err, GRPC_STATUS_INTERNAL, "ACME: signing the request failed");
    struct http_fetch_opts o = fetch_opts(c);
    o.method = "POST";
    o.body = jws;
    o.body_len = strlen(jws);
    o.content_type = JOSE;
    char accept_line[128];
    const char *headers[2] = {NULL, NULL};
    if (accept != NULL) {
      snprintf(accept_line, sizeof(accept_line), "Accept: %s", accept);
      headers[0] = accept_line;
      o.headers = headers;
    }
    int rc = http_fetch(url, &o, out, err);
    free(jws);
    if (rc != 0) {
      err_where(err, url);
      return -1;
    }
    nonce_take(c, out);
    if (out->status >= 200 && out->status <= 299)
      return 0;
    int bad_nonce = 0;
    response_error(c, url, out, &bad_nonce, err);
    http_fetch_result_clear(out);
    if (!bad_nonce)
      return -1;
  }
  return -1; /* badNonce twice: err says so */
}

int acme_post(struct acme_client *c, EVP_PKEY *key, const char *kid, const char *url,
              const char *payload, struct http_fetch_result *out, struct tp_err *err) {
  return post_accept(c, key, kid, url, payload, NULL, out, err);
}

int acme_account_register(struct acme_client *c, EVP_PKEY *key, const char *const *contact,
                          size_t n_contact, const char *eab_kid, const unsigned char *hmac_key,
                          size_t hmac_len, char **url, char **status, struct tp_err *err) {
  *url = *status = NULL;
  if (c->dir.new_account == NULL && acme_directory_fetch(c, err) != 0)
    return -1;
  if (c->dir.eab_required && (eab_kid == NULL || eab_kid[0] == '\0'))
    return tp_err_set(err, GRPC_STATUS_FAILED_PRECONDITION,
                      "the ACME server requires an External Account Binding (acme_eab_kid, "
                      "acme_eab_hmac_key)");
  json_t *req = json_pack("{s:b}", "termsOfServiceAgreed", 1);
  json_t *contacts = json_array();
  int ok = req != NULL && contacts != NULL;
  for (size_t i = 0; ok && i < n_contact; i++)
    ok = json_array_append_new(contacts, json_string(contact[i])) == 0;
  if (ok && n_contact > 0)
    ok = json_object_set(req, "contact", contacts) == 0;
  if (ok && eab_kid != NULL && eab_kid[0] != '\0')
    ok = json_object_set_new(req, "externalAccountBinding",
                             acme_eab(key, eab_kid, hmac_key, hmac_len, c->dir.new_account)) == 0;
  char *payload = ok ? json_dumps(req, JSON_COMPACT) : NULL;
  json_decref(contacts);
  json_decref(req);
  if (payload == NULL)
    return oom(err);
  struct http_fetch_result r;
  int rc = acme_post(c, key, NULL, c->dir.new_account, payload, &r, err);
  free(payload);
  if (rc != 0)
    return -1;
  *url = http_fetch_header(&r, "Location");
  *status = acme_account_status_parse((const char *)r.body, r.len);
  http_fetch_result_clear(&r);
  if (*url == NULL || !url_ok(*url) || strlen(*url) > ACME_URL_MAX || *status == NULL) {
    free(*url);
    free(*status);
    *url = *status = NULL;
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE,
                      "ACME newAccount: the answer has no account URL (Location) or status");
  }
  return 0;
}

/* ---- Orders ---- */

/* A problem object member (an order's or a challenge's "error") as
 * "type: detail", malloc'd; NULL when absent. */
static char *problem_text(const json_t *o) {
  const json_t *e = json_object_get(o, "error");
  if (!json_is_object(e))
    return NULL;
  const json_t *type = json_object_get(e, "type"), *detail = json_object_get(e, "detail");
  const char *t = json_is_string(type) ? json_string_value(type) : "(no type)";
  const char *d = json_is_string(detail) ? json_string_value(detail) : NULL;
  char buf[1024];
  snprintf(buf, sizeof(buf), "%.256s%s%.700s", t, d != NULL ? ": " : "", d != NULL ? d : "");
  return strdup(buf);
}

int acme_order_parse(const char *body, size_t len, struct acme_order *o, struct tp_err *err) {
  memset(o, 0, sizeof(*o));
  json_t *j = object_load(body, len);
  if (j == NULL)
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "ACME order: not a JSON object");
  const char *bad = NULL;
  o->status = member_string(j, "status", 32);
  o->finalize = member_string(j, "finalize", ACME_URL_MAX);
  o->certificate = member_string(j, "certificate", ACME_URL_MAX);
  o->error = problem_text(j);
  const json_t *authz = json_object_get(j, "authorizations");
  if (o->status == NULL)
    bad = "status";
  else if (!url_ok(o->finalize))
    bad = "finalize";
  else if (o->certificate != NULL && !url_ok(o->certificate))
    bad = "certificate";
  else if (!json_is_array(authz) || json_array_size(authz) > ACME_ORDER_NAMES_MAX)
    bad = "authorizations";
  else if ((o->authorizations = calloc(json_array_size(authz) + 1, sizeof(char *))) == NULL)
    bad = "authorizations (out of memory)";
  for (size_t i = 0; bad == NULL && i < json_array_size(authz); i++) {
    const json_t *u = json_array_get(authz, i);
    if (!json_is_string(u) || json_string_length(u) > ACME_URL_MAX || !url_ok(json_string_value(u)))
      bad = "authorizations";
    else if ((o->authorizations[o->n_authorizations++] = strdup(json_string_value(u))) == NULL)
      bad = "authorizations (out of memory)";
  }
  json_decref(j);
  if (bad != NULL) {
    acme_order_clear(o);
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "ACME order: no valid %s", bad);
  }
  return 0;
}

void acme_order_clear(struct acme_order *o) {
  free(o->status);
  for (size_t i = 0; i < o->n_authorizations; i++)
    free(o->authorizations[i]);
  free(o->authorizations);
  free(o->finalize);
  free(o->certificate);
  free(o->error);
  memset(o, 0, sizeof(*o));
}

/* A token as RFC 8555 8.1 has it: base64url, bounded. */
static int token_ok(const char *t) {
  size_t n = strlen(t);
  if (n == 0 || n > ACME_TOKEN_MAX)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!(isalnum((unsigned char)t[i]) || t[i] == '-' || t[i] == '_'))
      return 0;
  return 1;
}

/* A challenge object's url, status, token and error, malloc'd: 0, or -1
 * (each then freed and NULL) when one of the first three is missing or
 * bad. */
static int challenge_read(const json_t *ch, char **url, char **status, char **token, char **error) {
  *url = member_string(ch, "url", ACME_URL_MAX);
  *status = member_string(ch, "status", 32);
  *token = member_string(ch, "token", ACME_TOKEN_MAX);
  *error = problem_text(ch);
  if (url_ok(*url) && *status != NULL && *token != NULL && token_ok(*token))
    return 0;
  free(*url);
  free(*status);
  free(*token);
  free(*error);
  *url = *status = *token = *error = NULL;
  return -1;
}

int acme_authz_parse(const char *body, size_t len, struct acme_authz *a, struct tp_err *err) {
  memset(a, 0, sizeof(*a));
  json_t *j = object_load(body, len);
  if (j == NULL)
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "ACME authorization: not a JSON object");
  const char *bad = NULL;
  a->status = member_string(j, "status", 32);
  const json_t *id = json_object_get(j, "identifier");
  const json_t *type = json_is_object(id) ? json_object_get(id, "type") : NULL;
  a->identifier = json_is_object(id) ? member_string(id, "value", 253) : NULL;
  a->wildcard = json_is_true(json_object_get(j, "wildcard"));
  if (a->status == NULL)
    bad = "no string status";
  else if (a->identifier == NULL || a->identifier[0] == '\0')
    bad = "no identifier value";
  else if (!json_is_string(type) || strcmp(json_string_value(type), "dns") != 0)
    bad = "an identifier that is not of type dns";
  for (char *c = a->identifier; bad == NULL && *c; c++) {
    if ((unsigned char)*c < 0x21 || (unsigned char)*c > 0x7e)
      bad = "an identifier that is not a DNS name";
    *c = (char)tolower((unsigned char)*c);
  }
  const json_t *chs = json_object_get(j, "challenges");
  if (bad == NULL && !json_is_array(chs))
    bad = "no challenges array";
  /* The first challenge of each type we answer; others are skipped. */
  for (size_t i = 0; bad == NULL && i < json_array_size(chs) && i < 16; i++) {
    const json_t *ch = json_array_get(chs, i);
    const json_t *t = json_is_object(ch) ? json_object_get(ch, "type") : NULL;
    const char *kind = json_is_string(t) ? json_string_value(t) : "";
    if (strcmp(kind, "tls-alpn-01") == 0 && a->challenge_url == NULL) {
      if (challenge_read(ch, &a->challenge_url, &a->challenge_status, &a->token,
                         &a->challenge_error) != 0)
        bad = "a tls-alpn-01 challenge without a valid url, status or token";
    } else if (strcmp(kind, "dns-01") == 0 && a->dns_challenge_url == NULL) {
      if (challenge_read(ch, &a->dns_challenge_url, &a->dns_challenge_status, &a->dns_token,
                         &a->dns_challenge_error) != 0)
        bad = "a dns-01 challenge without a valid url, status or token";
    }
  }
  json_decref(j);
  if (bad != NULL) {
    acme_authz_clear(a);
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "ACME authorization: %s", bad);
  }
  return 0;
}

void acme_authz_clear(struct acme_authz *a) {
  free(a->status);
  free(a->identifier);
  free(a->challenge_url);
  free(a->challenge_status);
  free(a->token);
  free(a->challenge_error);
  free(a->dns_challenge_url);
  free(a->dns_challenge_status);
  free(a->dns_token);
  free(a->dns_challenge_error);
  memset(a, 0, sizeof(*a));
}

char *acme_dns01_txt(const char *token, const char *thumbprint) {
  /* keyAuthorization = token "." base64url(thumbprint) (RFC 8555 8.1). */
  char ka[ACME_TOKEN_MAX + 128];
  int n = snprintf(ka, sizeof(ka), "%s.%s", token, thumbprint);
  unsigned char digest[32];
  if (n < 0 || (size_t)n >= sizeof(ka) ||
      EVP_Digest(ka, (size_t)n, digest, NULL, EVP_sha256(), NULL) != 1)
    return NULL;
  return acme_b64url(digest, sizeof(digest));
}

/* id-pe-acmeIdentifier (RFC 8737 6.1). */
#define ACME_IDENTIFIER_OID "1.3.6.1.5.5.7.1.31"

/* OpenSSL's error queue appended to err after what failed. */
static int ossl_fail(struct tp_err *err, const char *what) {
  tp_err_set(err, GRPC_STATUS_INTERNAL, "the challenge certificate: %s failed", what);
  tp_err_append_openssl(err);
  return -1;
}

int acme_challenge_cert(const char *name, const char *token, const char *thumbprint,
                        char **cert_pem, char **key_pem, struct tp_err *err) {
  *cert_pem = *key_pem = NULL;
  char host[254];
  size_t n = strlen(name);
  if (n == 0 || n >= sizeof(host))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "the challenge certificate: bad name");
  for (size_t i = 0; i <= n; i++)
    host[i] = (char)tolower((unsigned char)name[i]);
  /* keyAuthorization = token "." base64url(thumbprint) (RFC 8555 8.1). */
  char ka[ACME_TOKEN_MAX + 128];
  snprintf(ka, sizeof(ka), "%s.%s", token, thumbprint);
  unsigned char digest[32];
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
  ASN1_OCTET_STRING *ext_der = ASN1_OCTET_STRING_new();
  ASN1_OBJECT *oid = OBJ_txt2obj(ACME_IDENTIFIER_OID, 1);
  X509_EXTENSION *ext = NULL;
  unsigned char *der = NULL;
  int der_len = 0, rc = 0;
  char san[sizeof(host) + 8];
  snprintf(san, sizeof(san), "DNS:%s", host);
  X509V3_CTX v3;
  X509_EXTENSION *san_ext = NULL;
  if (key == NULL || x == NULL || os == NULL || ext_der == NULL || oid == NULL)
    rc = ossl_fail(err, "allocating");
  else if (EVP_Digest(ka, strlen(ka), digest, NULL, EVP_sha256(), NULL) != 1 ||
           ASN1_OCTET_STRING_set(os, digest, sizeof(digest)) != 1 ||
           (der_len = i2d_ASN1_OCTET_STRING(os, &der)) <= 0 ||
           ASN1_OCTET_STRING_set(ext_der, der, der_len) != 1 ||
           (ext = X509_EXTENSION_create_by_OBJ(NULL, oid, 1, ext_der)) == NULL)
    rc = ossl_fail(err, "the acmeIdentifier extension");
  if (rc == 0) {
    /* A random 16-byte serial (RFC 5280 4.1.2.2: positive, at most 20). */
    BIGNUM *serial = BN_new();
    ASN1_INTEGER *sn = NULL;
    X509_NAME *subject = X509_NAME_new();
    int ok = serial != NULL && subject != NULL && BN_rand(serial, 127, BN_RAND_TOP_ANY, 0) == 1 &&
             (sn = BN_to_ASN1_INTEGER(serial, NULL)) != NULL && X509_set_version(x, 2) == 1 &&
             X509_set_serialNumber(x, sn) == 1 &&
             X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, (const unsigned char *)host,
                                        -1, -1, 0) == 1 &&
             X509_set_subject_name(x, subject) == 1 && X509_set_issuer_name(x, subject) == 1 &&
             X509_gmtime_adj(X509_getm_notBefore(x), -3600) != NULL &&
             X509_gmtime_adj(X509_getm_notAfter(x), 7L * 24 * 3600) != NULL &&
             X509_set_pubkey(x, key) == 1;
    if (ok) {
      X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
      ok = (san_ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san)) != NULL &&
           X509_add_ext(x, san_ext, -1) == 1 && X509_add_ext(x, ext, -1) == 1 &&
           X509_sign(x, key, EVP_sha256()) > 0;
    }
    BN_free(serial);
    ASN1_INTEGER_free(sn);
    X509_NAME_free(subject);
    if (!ok)
      rc = ossl_fail(err, "signing");
  }
  if (rc == 0) {
    BIO *b = BIO_new(BIO_s_mem());
    char *data;
    long len;
    if (b != NULL && PEM_write_bio_X509(b, x) == 1 && (len = BIO_get_mem_data(b, &data)) > 0)
      *cert_pem = strndup(data, (size_t)len);
    BIO_free(b);
    BIO *k = BIO_new(BIO_s_secmem());
    if (k != NULL && PEM_write_bio_PKCS8PrivateKey(k, key, NULL, NULL, 0, NULL, NULL) == 1 &&
        (len = BIO_get_mem_data(k, &data)) > 0 && (*key_pem = malloc((size_t)len + 1)) != NULL) {
      memcpy(*key_pem, data, (size_t)len);
      (*key_pem)[len] = '\0';
    }
    BIO_free(k);
    if (*cert_pem == NULL || *key_pem == NULL) {
      rc = ossl_fail(err, "writing PEM");
      free(*cert_pem);
      if (*key_pem != NULL) {
        OPENSSL_cleanse(*key_pem, strlen(*key_pem));
        free(*key_pem);
      }
      *cert_pem = *key_pem = NULL;
    }
  }
  ERR_clear_error();
  OPENSSL_cleanse(ka, sizeof(ka));
  OPENSSL_free(der);
  X509_EXTENSION_free(san_ext);
  X509_EXTENSION_free(ext);
  ASN1_OBJECT_free(oid);
  ASN1_OCTET_STRING_free(os);
  ASN1_OCTET_STRING_free(ext_der);
  X509_free(x);
  EVP_PKEY_free(key);
  return rc;
}

int acme_order_new(struct acme_client *c, EVP_PKEY *key, const char *kid, const char *const *names,
                   size_t n, const char *replaces, char **url, struct acme_order *o,
                   struct tp_err *err) {
  *url = NULL;
  memset(o, 0, sizeof(*o));
  if (n == 0 || n > ACME_ORDER_NAMES_MAX)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "ACME newOrder: 1 to %d names",
                      ACME_ORDER_NAMES_MAX);
  if (c->dir.new_order == NULL && acme_directory_fetch(c, err) != 0)
    return -1;
  json_t *ids = json_array();
  int ok = ids != NULL;
  for (size_t i = 0; ok && i < n; i++)
    ok = json_array_append_new(ids, json_pack("{s:s,s:s}", "type", "dns", "value", names[i])) == 0;
  json_t *req = ok ? json_pack("{s:O}", "identifiers", ids) : NULL;
  /* A server without ARI need not know the member (RFC 9773 5). */
  if (req != NULL && replaces != NULL && replaces[0] != '\0' && c->dir.renewal_info != NULL &&
      json_object_set_new(req, "replaces", json_string(replaces)) != 0) {
    json_decref(req);
    req = NULL;
  }
  char *payload = req != NULL ? json_dumps(req, JSON_COMPACT) : NULL;
  json_decref(req);
  json_decref(ids);
  if (payload == NULL)
    return oom(err);
  struct http_fetch_result r;
  int rc = acme_post(c, key, kid, c->dir.new_order, payload, &r, err);
  free(payload);
  if (rc != 0)
    return -1;
  *url = http_fetch_header(&r, "Location");
  if (*url == NULL || !url_ok(*url) || strlen(*url) > ACME_URL_MAX)
    rc = tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "ACME newOrder: the answer has no order URL");
  else
    rc = acme_order_parse((const char *)r.body, r.len, o, err);
  http_fetch_result_clear(&r);
  if (rc != 0) {
    free(*url);
    *url = NULL;
  }
  return rc;
}

int acme_order_get(struct acme_client *c, EVP_PKEY *key, const char *kid, const char *url,
                   struct acme_order *o, struct tp_err *err) {
  memset(o, 0, sizeof(*o));
  struct http_fetch_result r;
  if (acme_post(c, key, kid, url, NULL, &r, err) != 0)
    return -1;
  int rc = acme_order_parse((const char *)r.body, r.len, o, err);
  http_fetch_result_clear(&r);
  return rc;
}

int acme_authz_get(struct acme_client *c, EVP_PKEY *key, const char *kid, const char *url,
                   struct acme_authz *a, struct tp_err *err) {
  memset(a, 0, sizeof(*a));
  struct http_fetch_result r;
  if (acme_post(c, key, kid, url, NULL, &r, err) != 0)
    return -1;
  int rc = acme_authz_parse((const char *)r.body, r.len, a, err);
  http_fetch_result_clear(&r);
  return rc;
}

int acme_challenge_respond(struct acme_client *c, EVP_PKEY *key, const char *kid, const char *url,
                           struct tp_err *err) {
  struct http_fetch_result r;
  if (acme_post(c, key, kid, url, "{}", &r, err) != 0)
    return -1;
  http_fetch_result_clear(&r);
  return 0;
}

int acme_order_finalize(struct acme_client *c, EVP_PKEY *key, const char *kid,
                        const char *finalize_url, const char *csr_pem, struct acme_order *o,
                        struct tp_err *err) {
  memset(o, 0, sizeof(*o));
  BIO *b = BIO_new_mem_buf(csr_pem, -1);
  X509_REQ *req = b != NULL ? PEM_read_bio_X509_REQ(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  unsigned char *der = NULL;
  int der_len = req != NULL ? i2d_X509_REQ(req, &der) : -1;
  X509_REQ_free(req);
  ERR_clear_error();
  if (der_len <= 0)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "ACME finalize: the stored CSR does not load");
  char *csr = acme_b64url(der, (size_t)der_len);
  OPENSSL_free(der);
  json_t *j = csr != NULL ? json_pack("{s:s}", "csr", csr) : NULL;
  char *payload = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  free(csr);
  if (payload == NULL)
    return oom(err);
  struct http_fetch_result r;
  int rc = acme_post(c, key, kid, finalize_url, payload, &r, err);
  free(payload);
  if (rc != 0)
    return -1;
  rc = acme_order_parse((const char *)r.body, r.len, o, err);
  http_fetch_result_clear(&r);
  return rc;
}

int acme_certificate_download(struct acme_client *c, EVP_PKEY *key, const char *kid,
                              const char *url, char **chain_pem, struct tp_err *err) {
  *chain_pem = NULL;
  struct http_fetch_result r;
  if (post_accept(c, key, kid, url, NULL, "application/pem-certificate-chain", &r, err) != 0)
    return -1;
  int rc = 0;
  if (r.body == NULL || r.len == 0 || strlen((const char *)r.body) != r.len)
    rc = tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "ACME certificate: an empty or binary answer");
  else if ((*chain_pem = strdup((const char *)r.body)) == NULL)
    rc = oom(err);
  http_fetch_result_clear(&r);
  return rc;
}

/* ---- Renewal Information (RFC 9773) ---- */

char *acme_cert_id(X509 *leaf) {
  const ASN1_OCTET_STRING *aki = X509_get0_authority_key_id(leaf);
  const ASN1_INTEGER *serial = X509_get0_serialNumber(leaf);
  ERR_clear_error();
  if (aki == NULL || ASN1_STRING_length(aki) <= 0 || serial == NULL)
    return NULL;
  /* The serial's DER without its tag and length: OpenSSL's encoder,
   * then its header reader to skip to the content. */
  unsigned char *der = NULL;
  int der_len = i2d_ASN1_INTEGER(serial, &der);
  const unsigned char *p = der;
  long content_len = 0;
  int tag = 0, xclass = 0;
  char *out = NULL;
  if (der_len > 0 && (ASN1_get_object(&p, &content_len, &tag, &xclass, der_len) & 0x80) == 0 &&
      tag == V_ASN1_INTEGER && content_len > 0 && p + content_len == der + der_len) {
    char *k = acme_b64url(ASN1_STRING_get0_data(aki), (size_t)ASN1_STRING_length(aki));
    char *s = acme_b64url(p, (size_t)content_len);
    size_t kn = k != NULL ? strlen(k) : 0, sn = s != NULL ? strlen(s) : 0;
    if (k != NULL && s != NULL && kn + 1 + sn <= ACME_CERT_ID_MAX &&
        (out = malloc(kn + sn + 2)) != NULL) {
      memcpy(out, k, kn);
      out[kn] = '.';
      memcpy(out + kn + 1, s, sn + 1);
    }
    free(k);
    free(s);
  }
  ERR_clear_error();
  OPENSSL_free(der);
  return out;
}

char *acme_cert_id_pem(const char *chain_pem) {
  if (chain_pem == NULL || chain_pem[0] == '\0')
    return NULL;
  BIO *b = BIO_new_mem_buf(chain_pem, -1);
  X509 *x = b != NULL ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
  char *id = x != NULL ? acme_cert_id(x) : NULL;
  ERR_clear_error();
  X509_free(x);
  BIO_free(b);
  return id;
}

/* An RFC 3339 member of o as µs since the epoch; -1 when it is not one. */
static int member_time(const json_t *o, const char *name, int64_t *us) {
  const json_t *v = json_object_get(o, name);
  int64_t secs = 0;
  int32_t nanos = 0;
  const char *why = NULL;
  if (!json_is_string(v) || json_string_length(v) > 64 ||
      pbjson_timestamp_parse(json_string_value(v), &secs, &nanos, &why) != 0)
    return -1;
  *us = secs * 1000000 + nanos / 1000;
  return 0;
}

int acme_renewal_info_parse(const char *body, size_t len, struct acme_renewal_info *ri,
                            struct tp_err *err) {
  memset(ri, 0, sizeof(*ri));
  json_t *j = object_load(body, len);
  if (j == NULL)
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "ACME renewalInfo: not a JSON object");
  const json_t *w = json_object_get(j, "suggestedWindow");
  const json_t *ex = json_object_get(j, "explanationURL");
  const char *bad = NULL;
  if (!json_is_object(w))
    bad = "no suggestedWindow object";
  else if (member_time(w, "start", &ri->start_us) != 0)
    bad = "suggestedWindow.start is not an RFC 3339 time";
  else if (member_time(w, "end", &ri->end_us) != 0)
    bad = "suggestedWindow.end is not an RFC 3339 time";
  else if (ri->end_us <= ri->start_us)
    bad = "suggestedWindow.end is not after its start";
  else if (ex != NULL && !json_is_null(ex) &&
           (!url_ok(ri->explanation_url = member_string(j, "explanationURL", ACME_URL_MAX))))
    bad = "explanationURL is not an https URL";
  json_decref(j);
  if (bad != NULL) {
    acme_renewal_info_clear(ri);
    return tp_err_set(err, GRPC_STATUS_UNAVAILABLE, "ACME renewalInfo: %s", bad);
  }
  return 0;
}

void acme_renewal_info_clear(struct acme_renewal_info *ri) {
  free(ri->explanation_url);
  memset(ri, 0, sizeof(*ri));
}

int acme_renewal_info_fetch(struct acme_client *c, const char *cert_id,
                            struct acme_renewal_info *ri, int64_t *retry_after_s,
                            struct tp_err *err) {
  memset(ri, 0, sizeof(*ri));
  *retry_after_s = -1;
  if (c->dir.new_order == NULL && acme_directory_fetch(c, err) != 0)
    return -1;
  if (c->dir.renewal_info == NULL)
    return tp_err_set(err, GRPC_STATUS_NOT_FOUND, "the ACME directory offers no renewalInfo");
  size_t n = strlen(c->dir.renewal_info);
  if (cert_id == NULL || cert_id[0] == '\0' || strlen(cert_id) > ACME_CERT_ID_MAX ||
      strspn(cert_id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.") !=
          strlen(cert_id))
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "ACME renewalInfo: a bad certID");
  char url[ACME_URL_MAX + ACME_CERT_ID_MAX + 2];
  /* RFC 9773 4.1: the certID is a path segment after the URL. */
  snprintf(url, sizeof(url), "%s%s%s", c->dir.renewal_info,
           n > 0 && c->dir.renewal_info[n - 1] == '/' ? "" : "/", cert_id);
  struct http_fetch_opts o = fetch_opts(c);
  struct http_fetch_result r = {0};
  c->retry_after_s = 0;
  if (http_fetch(url, &o, &r, err) != 0) {
    err_where(err, "renewalInfo");
    return -1;
  }
  char *ra = http_fetch_header(&r, "Retry-After");
  if (ra != NULL)
    *retry_after_s = retry_after(&r);
  free(ra);
  int rc;
  if (r.status != 200)
    rc = response_error(c, "renewalInfo", &r, NULL, err);
  else
    rc = acme_renewal_info_parse((const char *)r.body, r.len, ri, err);
  http_fetch_result_clear(&r);
  return rc;
}
