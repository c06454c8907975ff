/* A listener's TLS side (see tlsconf_listener.h): its contexts, the SNI
 * table, the ticket-key ring and the renegotiation policy.
 *
 * How a connection gets its context. Every SSL is made from the
 * listener's base SSL_CTX, which holds no certificate and is the SSL's
 * session_ctx for its whole life: OpenSSL keeps the session cache and
 * calls the ticket-key callback of the session_ctx, never of the context
 * switched to (ssl/ssl_sess.c ssl_get_new_session, ssl/t1_lib.c
 * tls_decrypt_ticket, statem_srvr.c construct_stateless_ticket all use
 * s->session_ctx), so one cache and one ring serve every context alike.
 * The client hello callback then picks the context from the SNI and
 * switches to it with SSL_set_SSL_CTX before OpenSSL negotiates anything:
 * the version, the cipher, the certificate (only the selected context's
 * certificates are in the SSL then: an SNI context with an RSA key never
 * serves the default's ECDSA certificate, nodejs/node#54235), ALPN / NPN,
 * the OCSP staple of the certificate actually served, the trust store and
 * CA names all come from the selected context. The servername callback
 * (run later, during extension parsing) would be too late for versions.
 *
 * SSL_set_SSL_CTX replaces the SSL's CERT (certificates, keys, chains,
 * DH, security level, signature algorithms) and the session ID context,
 * and the SSL reads cipher lists, trust store, CA names and the ALPN /
 * NPN / OCSP callbacks from its current SSL_CTX. What SSL_new copied
 * into the SSL stays, so switch_to copies it from the selected context:
 * options (SSL_OP_NO_TICKET, SSL_OP_CIPHER_SERVER_PREFERENCE), verify mode,
 * callback and parameters, version bounds, groups, max send fragment,
 * mode and ticket count (nginx ngx_ssl_servername and haproxy
 * ssl_sock_switchctx_set copy the same way). The session lifetime, which
 * OpenSSL takes from the session_ctx, is set on the new session in the
 * servername callback.
 *
 * ACME tls-alpn-01 (RFC 8737). A ClientHello whose ALPN list is exactly
 * "acme-tls/1" is a validation client: the client hello callback switches
 * it to the challenge context of its SNI (tlsconf_acme.h: the challenge
 * certificate, nothing resumed, "acme-tls/1" selected) and marks the
 * connection, whose owner closes it after the handshake (it never reaches
 * the upstream); without a challenge for the name the handshake is
 * refused with no_application_protocol. Any other ClientHello, one that
 * offers "acme-tls/1" among other protocols included, never sees a
 * challenge context.
 *
 * Everything here is immutable after build and shared by every worker
 * thread; per-connection state lives in struct conn, the SSL's ex_data.
 * The SSL reaches its listener through that ex_data (never through a
 * callback argument), which holds a reference until SSL_free. */
#include "tlsconf_listener.h"

#include <arpa/inet.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alpn.h"
#include "listener_rules.h"
#include "tlsconf.h"
#include "tlsconf_acme.h"
#include "tlsconf_ctxcache.h"
#include "tlsconf_int.h"

#define LISTENER_MAGIC 0x544c534cu /* "TLSL" */
#define CONN_MAGIC 0x544c5343u     /* "TLSC" */

/* A ticket key as setTicketKeys takes it (listener_rules.h). */
#define TICKET_KEY_LEN LISTENER_RULES_TICKET_KEY_LEN
#define TICKET_PART_LEN LISTENER_RULES_TICKET_KEY_PART_LEN

struct ticket_key {
  unsigned char name[TICKET_PART_LEN];
  unsigned char hmac[TICKET_PART_LEN];
  unsigned char aes[TICKET_PART_LEN];
};

/* One built TlsContext: the value a context cache (tlsconf_ctxcache.h)
 * holds under the context's content hash, shared by every listener and
 * version that names the same content. Nothing in it belongs to a
 * listener: sessions and ticket keys live in each listener's base, the
 * listener is found through the SSL's ex_data, and the session ID context
 * is the context's own (its session_id_context, or the hash of its name),
 * so a shared SSL_CTX serves and resumes exactly as one per listener did.
 * Immutable once kept. */
struct built {
  SSL_CTX *ctx; /* reference held */
  /* What SSL_new copied from the base and switch_to replaces. */
  char *groups;    /* SSL_set1_groups_list form; NULL: OpenSSL's defaults */
  int *group_nids; /* the same as NIDs, when every name has one; else NULL */
  size_t n_group_nids;
  unsigned max_send_fragment; /* bytes */
  /* tlsconf_ctx_build's OCSP status callback, wrapped by status_cb to
   * record what was stapled; NULL when the context staples nothing. */
  int (*status_cb)(SSL *, void *);
  void *status_arg;
};

/* One TlsContext of the listener: its name and the built context (the
 * fields are the cache entry's value's, copied for the handshake path). */
struct entry {
  char *name;            /* "tlsContexts/web" */
  SSL_CTX *ctx;          /* borrowed from ce */
  char *groups;          /* borrowed from ce */
  const int *group_nids; /* borrowed from ce */
  size_t n_group_nids;
  unsigned max_send_fragment;
  int (*status_cb)(SSL *, void *);
  void *status_arg;
  struct tlsconf_ctxcache_entry *ce; /* reference held; NULL until built */
  int reused;                        /* found in the cache, not built for this listener */
};

/* An ACME challenge the listener answers: its name (lower case) and its
 * context (tlsconf_acme_ctx_build's, with the listener's callbacks). */
struct challenge {
  char *host;
  struct entry e;
};

/* An SNI route. host is lower case; for a wildcard it is the part after
 * "*." ("example.com" for "*.example.com"). */
struct route {
  char *host;
  size_t entry; /* index into entries */
  size_t index; /* in sni_routes, for errors */
};

struct tlsconf_listener {
  unsigned magic; /* LISTENER_MAGIC */
  atomic_int refs;
  /* The SSL_new context and every SSL's session_ctx: session cache and
   * ticket keys; no certificate. */
  SSL_CTX *base;
  /* entries[0] is the default context; each context once, however many
   * routes name it. */
  struct entry *entries;
  size_t n_entries;
  /* Both sorted by host (strcmp) for bsearch. */
  struct route *exact;
  size_t n_exact;
  struct route *wild;
  size_t n_wild;
  /* Sorted by host (strcmp) for bsearch; at most one per host. */
  struct challenge *challenges;
  size_t n_challenges;
  /* The ring: keys[active] encrypts, every key decrypts. */
  struct ticket_key *keys;
  size_t n_keys;
  size_t active;
  EVP_CIPHER *aes; /* AES-128-CBC, fetched once */
  int renegotiation_limit;
  int64_t renegotiation_window_ms;
  /* SSL_OP_ALLOW_CLIENT_RENEGOTIATION or SSL_OP_NO_RENEGOTIATION. */
  uint64_t ssl_options;
  /* upstream_tls: the client context (entries[up_entry].ctx, last of the
   * entries and named by no route); up_ctx NULL: cleartext upstream. */
  SSL_CTX *up_ctx;
  size_t up_entry;
  char *up_servername;     /* SNI sent; NULL: none */
  int up_sni_from_client;  /* the client's SNI instead, when it sent one */
  int up_alpn_from_client; /* the client's ALPN protocol, when it negotiated one */
  int up_verify;           /* rejectUnauthorized */
  /* The name checked: up_check (check_server_identity), else the SNI
   * sent, else up_host (the upstream's host). */
  char *up_check;
  char *up_host;
  int up_min_dh_bits; /* minDHSize */
};

/* Per connection, in the SSL's ex_data; freed with the SSL. */
struct conn {
  unsigned magic;             /* CONN_MAGIC */
  struct tlsconf_listener *l; /* reference held */
  const struct entry *entry;  /* the selected context; NULL before the ClientHello */
  int ocsp_requested;         /* this handshake's ClientHello had status_request (OCSP) */
  int ocsp_stapled;           /* and the status callback stapled a response */
  enum tlsconf_acme acme;     /* whether the ClientHello was an ACME validation, and its fate */
  const char *acme_host;      /* TLSCONF_ACME_ANSWERED: the challenge's name (in l) */
  char protocol[256];         /* tlsconf_conn_info's ALPN / NPN copy, NUL-terminated */
};

static struct tlsconf_listener *listener_check(const struct tlsconf_listener *p) {
  if (p == NULL || p->magic != LISTENER_MAGIC)
    abort(); /* memory corruption or a foreign pointer: never go on */
  return (struct tlsconf_listener *)p;
}

static struct conn *conn_check(void *p) {
  struct conn *c = p;
  if (c == NULL || c->magic != CONN_MAGIC)
    abort();
  return c;
}

/* The SSL ex_data index, registered once per process (process context). */
static pthread_once_t conn_index_once = PTHREAD_ONCE_INIT;
static int conn_index = -1;

static void conn_free(struct conn *c) {
  if (c == NULL)
    return;
  conn_check(c);
  c->magic = 0;
  tlsconf_listener_unref(c->l);
  free(c);
}

/* Runs for every SSL of the process, most of them not ours (ptr NULL). */
static void conn_free_cb(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                         void *argp) {
  conn_free(ptr);
}

/* SSL_dup: the copy gets its own conn and listener reference. */
static int conn_dup_cb(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d, int idx,
                       long argl, void *argp) {
  if (*from_d == NULL)
    return 1;
  struct conn *src = conn_check(*from_d);
  struct conn *c = malloc(sizeof(*c));
  if (c == NULL) {
    *from_d = NULL;
    return 0;
  }
  *c = *src;
  tlsconf_listener_ref(c->l);
  *from_d = c;
  return 1;
}

static void conn_index_init(void) {
  conn_index = SSL_get_ex_new_index(0, NULL, NULL, conn_dup_cb, conn_free_cb);
}

/* The SSL's conn, or NULL for an SSL not made by
 * tlsconf_listener_ssl_new. */
static struct conn *conn_get(const SSL *ssl) {
  pthread_once(&conn_index_once, conn_index_init);
  if (conn_index < 0)
    return NULL;
  void *p = SSL_get_ex_data(ssl, conn_index);
  return p == NULL ? NULL : conn_check(p);
}

/* SNI ------------------------------------------------------------------- */

/* Copies the ClientHello's host_name, lower-cased, into out (at least 256
 * bytes). Returns 1 with a name, 0 without one, -1 when it is malformed
 * (the default context is used and OpenSSL's own parser then refuses the
 * ClientHello). */
static int sni_get(SSL *ssl, char *out) {
  const unsigned char *p;
  size_t len;
  if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &len))
    return 0;
  if (len < 2 || (((size_t)p[0] << 8) | p[1]) != len - 2)
    return -1;
  p += 2;
  len -= 2;
  while (len >= 3) {
    unsigned type = p[0];
    size_t n = ((size_t)p[1] << 8) | p[2];
    p += 3;
    len -= 3;
    if (n > len)
      return -1;
    if (type == TLSEXT_NAMETYPE_host_name) {
      if (n == 0 || n > TLSEXT_MAXLEN_host_name || memchr(p, 0, n) != NULL)
        return -1;
      for (size_t i = 0; i < n; i++)
        out[i] = p[i] >= 'A' && p[i] <= 'Z' ? (char)(p[i] - 'A' + 'a') : (char)p[i];
      out[n] = '\0';
      return 1;
    }
    p += n;
    len -= n;
  }
  return len == 0 ? 0 : -1;
}

static int route_cmp_key(const void *key, const void *elem) {
  return strcmp(key, ((const struct route *)elem)->host);
}

static int route_cmp(const void *a, const void *b) {
  const struct route *ra = a, *rb = b;
  int c = strcmp(ra->host, rb->host);
  return c != 0 ? c : (ra->index > rb->index) - (ra->index < rb->index);
}

/* Exact names first, then "*." patterns of exactly one more label, then
 * the default context. host is lower case. */
static const struct entry *select_entry(const struct tlsconf_listener *l, const char *host) {
  const struct route *r = NULL;
  if (host != NULL) {
    if (l->n_exact > 0)
      r = bsearch(host, l->exact, l->n_exact, sizeof(*r), route_cmp_key);
    const char *dot = strchr(host, '.');
    if (r == NULL && l->n_wild > 0 && dot != NULL && dot != host)
      r = bsearch(dot + 1, l->wild, l->n_wild, sizeof(*r), route_cmp_key);
  }
  return &l->entries[r != NULL ? r->entry : 0];
}

static int challenge_cmp_key(const void *key, const void *elem) {
  return strcmp(key, ((const struct challenge *)elem)->host);
}

static int challenge_cmp(const void *a, const void *b) {
  return strcmp(((const struct challenge *)a)->host, ((const struct challenge *)b)->host);
}

/* The challenge for host (lower case), or NULL. */
static const struct challenge *challenge_find(const struct tlsconf_listener *l, const char *host) {
  if (host == NULL || l->n_challenges == 0)
    return NULL;
  return bsearch(host, l->challenges, l->n_challenges, sizeof(*l->challenges), challenge_cmp_key);
}

/* Whether the ClientHello's ALPN list is exactly "acme-tls/1" (RFC 8737,
 * section 3: what an ACME validation client sends; one that lists it
 * among others is an ordinary client). */
static int alpn_is_acme(SSL *ssl) {
  static const uint8_t acme[] = ALPN_ACME_TLS_1;
  const unsigned char *p;
  size_t len;
  return SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &p,
                                   &len) &&
         alpn_ext_is_only(p, len, acme, sizeof(acme) - 1) == 1;
}

/* Makes e the SSL's context and copies what SSL_set_SSL_CTX leaves as
 * SSL_new copied it from the base (see the top of this file). */
static int switch_to(SSL *ssl, const struct tlsconf_listener *l, const struct entry *e) {
  SSL_CTX *ctx = e->ctx;
  if (SSL_set_SSL_CTX(ssl, ctx) != ctx)
    return -1;
  /* Options the application set on the SSL itself stay. */
  uint64_t cur = SSL_get_options(ssl);
  uint64_t want = (cur & ~SSL_CTX_get_options(l->base)) | SSL_CTX_get_options(ctx) | l->ssl_options;
  SSL_clear_options(ssl, cur & ~want);
  SSL_set_options(ssl, want);
  SSL_set_verify(ssl, SSL_CTX_get_verify_mode(ctx), SSL_CTX_get_verify_callback(ctx));
  if (!X509_VERIFY_PARAM_set1(SSL_get0_param(ssl), SSL_CTX_get0_param(ctx)))
    return -1;
  if (!SSL_set_min_proto_version(ssl, SSL_CTX_get_min_proto_version(ctx)) ||
      !SSL_set_max_proto_version(ssl, SSL_CTX_get_max_proto_version(ctx)))
    return -1;
  /* The SSL starts with the base's groups, which are OpenSSL's defaults:
   * only a context with its own list changes them. As NIDs when it can:
   * parsing the names costs some 8,000 instructions a connection. */
  if (e->group_nids != NULL) {
    if (!SSL_set1_groups(ssl, e->group_nids, e->n_group_nids))
      return -1;
  } else if (e->groups != NULL && !SSL_set1_groups_list(ssl, e->groups)) {
    return -1;
  }
  if (!SSL_set_max_send_fragment(ssl, e->max_send_fragment))
    return -1;
  SSL_set_mode(ssl, SSL_CTX_get_mode(ctx));
  /* The cache is the base's: a context that turned its own off and has no
   * tickets gets no TLS 1.3 (stateful) tickets either, as alone it would
   * issue only tickets that never resume. TLS 1.2 session IDs follow the
   * context by themselves (tls_construct_server_hello reads the
   * SSL_CTX's cache mode). */
  size_t tickets = SSL_CTX_get_num_tickets(ctx);
  if ((want & SSL_OP_NO_TICKET) && !(SSL_CTX_get_session_cache_mode(ctx) & SSL_SESS_CACHE_SERVER))
    tickets = 0;
  if (!SSL_set_num_tickets(ssl, tickets))
    return -1;
  return 0;
}

/* Callbacks --------------------------------------------------------------- */

/* Runs first in every ClientHello, before version, cipher and certificate
 * are chosen. A renegotiation or the second ClientHello after a
 * HelloRetryRequest keeps the context of the first. */
static int client_hello_cb(SSL *ssl, int *al, void *arg) {
  struct conn *c = conn_get(ssl);
  if (c == NULL) {
    *al = SSL_AD_INTERNAL_ERROR;
    return SSL_CLIENT_HELLO_ERROR;
  }
  const unsigned char *p;
  size_t len;
  c->ocsp_requested = SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_status_request, &p, &len) &&
                      len >= 1 && p[0] == TLSEXT_STATUSTYPE_ocsp;
  c->ocsp_stapled = 0;
  if (c->entry != NULL)
    return SSL_CLIENT_HELLO_SUCCESS;
  char host[TLSEXT_MAXLEN_host_name + 1];
  const char *sni = sni_get(ssl, host) == 1 ? host : NULL;
  const struct entry *e;
  if (alpn_is_acme(ssl)) {
    const struct challenge *ch = challenge_find(c->l, sni);
    if (ch == NULL) {
      c->acme = TLSCONF_ACME_REFUSED;
      *al = SSL_AD_NO_APPLICATION_PROTOCOL;
      return SSL_CLIENT_HELLO_ERROR;
    }
    c->acme = TLSCONF_ACME_ANSWERED;
    c->acme_host = ch->host;
    e = &ch->e;
  } else {
    e = select_entry(c->l, sni);
  }
  if (switch_to(ssl, c->l, e) != 0) {
    ERR_clear_error();
    *al = SSL_AD_INTERNAL_ERROR;
    return SSL_CLIENT_HELLO_ERROR;
  }
  c->entry = e;
  return SSL_CLIENT_HELLO_SUCCESS;
}

/* Runs after the session of a full handshake exists: it lives as long as
 * its own context says (OpenSSL took the base's timeout). Answering OK
 * acknowledges the name and keeps it in a TLS 1.2 session, so that
 * SSL_get_servername still tells after a resumption. */
static int servername_cb(SSL *ssl, int *al, void *arg) {
  struct conn *c = conn_get(ssl);
  if (c == NULL || c->entry == NULL)
    return SSL_TLSEXT_ERR_NOACK;
  SSL_SESSION *sess = SSL_get_session(ssl);
  if (!SSL_session_reused(ssl) && sess != NULL)
    SSL_SESSION_set_timeout(sess, SSL_CTX_get_timeout(c->entry->ctx));
  return SSL_TLSEXT_ERR_OK;
}

/* Wraps tlsconf_ctx_build's status callback (which staples the response
 * of the certificate chosen) to record that a staple went out. */
static int status_cb(SSL *ssl, void *arg) {
  struct conn *c = conn_get(ssl);
  if (c == NULL || c->entry == NULL || c->entry->status_cb == NULL)
    return SSL_TLSEXT_ERR_NOACK;
  int rc = c->entry->status_cb(ssl, c->entry->status_arg);
  if (rc == SSL_TLSEXT_ERR_OK)
    c->ocsp_stapled = 1;
  return rc;
}

/* Resumption and the client certificate ---------------------------------
 *
 * A session keeps the verdict on its client certificate, and OpenSSL does
 * not verify the certificate again when the session resumes. A ticket
 * outlives the listener version that issued it (the ring is shared by
 * versions and agents), so a client revoked by a CRL update, whose CA left
 * the trust bundle, or whose certificate or CRL has expired since would
 * resume until the session times out. So a ticket carries what verifying
 * needs beyond the store (the verdict of the full handshake and the
 * intermediates the client sent), and every ticket resumption verifies the
 * session's certificate again, against the store of the context selected
 * now and at the current time: the session resumes only when the verdict
 * is still the one it was made with (a client that must send a certificate
 * resumes only a session that has one). Otherwise the client gets a full
 * handshake, which verifies what it sends now; still valid clients keep
 * resuming across a CRL update. Sessions in the server's cache (TLS 1.2
 * session IDs; TLS 1.3 with tickets off) live in the base SSL_CTX of one
 * listener version: a change of a trust bundle or CRL builds a new version
 * with an empty cache, so none of them resumes across it. */

/* A ticket's application data: TICKET_APPDATA_TAG, the verdict (X509_V_*,
 * 4 bytes big-endian), then the client's intermediates, DER one after the
 * other. Intermediates that do not fit are left out: the session then
 * verifies with the store alone, or gets a full handshake. */
#define TICKET_APPDATA_TAG "tpv1"
#define TICKET_APPDATA_HEAD 8
#define TICKET_APPDATA_MAX 16384

/* Session tickets, generate side (SSL_CTX_set_session_ticket_cb): records
 * the verdict and the intermediates of a full handshake in the ticket. A
 * resumed session's renewed ticket carries what its first one carried
 * (OpenSSL copies the application data with the session). Always 1: a
 * ticket without the data only resumes where the store alone verifies. */
static int ticket_gen_cb(SSL *ssl, void *arg) {
  SSL_SESSION *sess = SSL_get_session(ssl);
  X509 *peer = sess != NULL ? SSL_SESSION_get0_peer(sess) : NULL;
  if (peer == NULL || SSL_session_reused(ssl))
    return 1;
  STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl); /* the server's: without the leaf */
  unsigned char buf[TICKET_APPDATA_MAX];
  size_t len = TICKET_APPDATA_HEAD;
  uint32_t verdict = (uint32_t)SSL_get_verify_result(ssl);
  memcpy(buf, TICKET_APPDATA_TAG, 4);
  for (int i = 0; i < 4; i++)
    buf[4 + i] = (unsigned char)(verdict >> (24 - 8 * i));
  for (int i = 0; i < sk_X509_num(chain); i++) {
    X509 *x = sk_X509_value(chain, i);
    int n = X509_cmp(x, peer) == 0 ? 0 : i2d_X509(x, NULL);
    if (n <= 0 || (size_t)n > sizeof(buf) - len)
      continue;
    unsigned char *p = buf + len;
    len += (size_t)i2d_X509(x, &p);
  }
  SSL_SESSION_set1_ticket_appdata(sess, buf, len);
  ERR_clear_error();
  return 1;
}

/* What a ticket recorded: has_verdict is 0 for a ticket without (or with
 * unreadable) application data. untrusted: caller frees. */
struct ticket_record {
  int has_verdict;
  long verdict;
  STACK_OF(X509) *untrusted;
};

static void ticket_record_read(SSL_SESSION *sess, struct ticket_record *r) {
  memset(r, 0, sizeof(*r));
  void *data = NULL;
  size_t len = 0;
  if (!SSL_SESSION_get0_ticket_appdata(sess, &data, &len) || len < TICKET_APPDATA_HEAD ||
      len > TICKET_APPDATA_MAX || memcmp(data, TICKET_APPDATA_TAG, 4) != 0)
    return;
  const unsigned char *p = data, *end = p + len;
  uint32_t verdict = 0;
  for (int i = 0; i < 4; i++)
    verdict = verdict << 8 | p[4 + i];
  if ((r->untrusted = sk_X509_new_null()) == NULL)
    return;
  for (p += TICKET_APPDATA_HEAD; p < end;) {
    X509 *x = d2i_X509(NULL, &p, (long)(end - p));
    if (x == NULL || !sk_X509_push(r->untrusted, x)) {
      X509_free(x);
      sk_X509_pop_free(r->untrusted, X509_free);
      r->untrusted = NULL;
      ERR_clear_error();
      return;
    }
  }
  r->has_verdict = 1;
  r->verdict = (long)verdict;
}

/* Verifies peer as OpenSSL's full handshake does (ssl_verify_cert_chain):
 * the store of the SSL's current context with its flags (CRL checks), the
 * "ssl_client" purpose, the SSL's verify parameters and callback, its
 * security level as the chain's authentication level (a key too weak for
 * the level fails), the current time. Returns the X509_V_* verdict. */
static long peer_verify(SSL *ssl, X509 *peer, STACK_OF(X509) *untrusted) {
  X509_STORE *store = SSL_CTX_get_cert_store(SSL_get_SSL_CTX(ssl));
  X509_STORE_CTX *vctx = X509_STORE_CTX_new();
  long verdict = X509_V_ERR_UNSPECIFIED;
  if (store == NULL || vctx == NULL || !X509_STORE_CTX_init(vctx, store, peer, untrusted))
    goto done;
  if (!X509_STORE_CTX_set_default(vctx, "ssl_client") ||
      !X509_VERIFY_PARAM_set1(X509_STORE_CTX_get0_param(vctx), SSL_get0_param(ssl)) ||
      !X509_STORE_CTX_set_ex_data(vctx, SSL_get_ex_data_X509_STORE_CTX_idx(), ssl))
    goto done;
  X509_VERIFY_PARAM_set_auth_level(X509_STORE_CTX_get0_param(vctx), SSL_get_security_level(ssl));
  SSL_verify_cb cb = SSL_get_verify_callback(ssl);
  if (cb != NULL)
    X509_STORE_CTX_set_verify_cb(vctx, cb);
  int ok = X509_verify_cert(vctx);
  verdict = X509_STORE_CTX_get_error(vctx);
  if (ok <= 0 && verdict == X509_V_OK)
    verdict = X509_V_ERR_UNSPECIFIED;
done:
  X509_STORE_CTX_free(vctx);
  ERR_clear_error();
  return verdict;
}

/* Whether sess may resume on ssl, whose context is selected (see above). */
static int session_still_verifies(SSL *ssl, SSL_SESSION *sess) {
  int mode = SSL_get_verify_mode(ssl);
  if (!(mode & SSL_VERIFY_PEER))
    return 1; /* no certificate asked for now */
  X509 *peer = SSL_SESSION_get0_peer(sess);
  if (peer == NULL)
    return !(mode & SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
  struct ticket_record r;
  ticket_record_read(sess, &r);
  long now = peer_verify(ssl, peer, r.untrusted);
  sk_X509_pop_free(r.untrusted, X509_free);
  return now == (r.has_verdict ? r.verdict : X509_V_OK);
}

/* Session tickets, decrypt side: runs once the ticket decrypted (after the
 * client hello callback selected the context). A session that fails
 * session_still_verifies is not resumed, and the full handshake hands out
 * a new ticket, as for a ticket that does not decrypt. */
static SSL_TICKET_RETURN ticket_dec_cb(SSL *ssl, SSL_SESSION *sess, const unsigned char *keyname,
                                       size_t keyname_len, SSL_TICKET_STATUS status, void *arg) {
  if (status != SSL_TICKET_SUCCESS && status != SSL_TICKET_SUCCESS_RENEW)
    return SSL_TICKET_RETURN_IGNORE_RENEW; /* what OpenSSL does without this callback */
  struct conn *c = conn_get(ssl);
  if (c != NULL && c->acme == TLSCONF_ACME_ANSWERED)
    return SSL_TICKET_RETURN_IGNORE; /* a validation gets a full handshake and no ticket */
  if (c == NULL || c->entry == NULL || !session_still_verifies(ssl, sess))
    return SSL_TICKET_RETURN_IGNORE_RENEW;
  return status == SSL_TICKET_SUCCESS_RENEW ? SSL_TICKET_RETURN_USE_RENEW : SSL_TICKET_RETURN_USE;
}

static int ticket_mac_init(EVP_MAC_CTX *hctx, const struct ticket_key *k) {
  OSSL_PARAM params[3];
  params[0] =
      OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, sizeof(k->hmac));
  params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
  params[2] = OSSL_PARAM_construct_end();
  return EVP_MAC_CTX_set_params(hctx, params);
}

/* Session tickets (SSL_CTX_set_tlsext_ticket_key_evp_cb). Encrypt: the
 * active key. Decrypt: the key named in the ticket; 2 (renew under the
 * active key) when that is an older key or the protocol is TLS 1.3; 0 (no resumption, full
 * handshake) for a name not in the ring: a retired key or another ring. */
static int ticket_cb(SSL *ssl, unsigned char *key_name, unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc) {
  struct conn *c = conn_get(ssl);
  if (c == NULL)
    return 0; /* not ours: no ticket, no resumption */
  const struct tlsconf_listener *l = c->l;
  if (enc) {
    const struct ticket_key *k = &l->keys[l->active];
    memcpy(key_name, k->name, sizeof(k->name));
    if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(l->aes)) <= 0 ||
        !EVP_EncryptInit_ex(cctx, l->aes, NULL, k->aes, iv) || !ticket_mac_init(hctx, k))
      return -1;
    return 1;
  }
  for (size_t i = 0; i < l->n_keys; i++) {
    const struct ticket_key *k = &l->keys[i];
    if (memcmp(key_name, k->name, sizeof(k->name)) != 0)
      continue;
    if (!ticket_mac_init(hctx, k) || !EVP_DecryptInit_ex(cctx, l->aes, NULL, k->aes, iv))
      return -1;
    /* TLS 1.3 clients use a ticket once (RFC 8446, appendix C.4): without a
     * renewal a resumed connection hands out no new ticket and the next
     * connection falls back to a full handshake. */
    return i == l->active && SSL_version(ssl) != TLS1_3_VERSION ? 1 : 2;
  }
  return 0;
}

/* Build ----------------------------------------------------------------- */

typedef Tlsplane__V1__ResolvedListener__TlsContextsEntry map_entry;

static int map_cmp(const void *a, const void *b) {
  return strcmp((*(map_entry *const *)a)->key, (*(map_entry *const *)b)->key);
}

static int map_cmp_key(const void *key, const void *elem) {
  return strcmp(key, (*(map_entry *const *)elem)->key);
}

static void listener_free(struct tlsconf_listener *l) {
  for (size_t i = 0; i < l->n_entries; i++) {
    tlsconf_ctxcache_entry_release(l->entries[i].ce);
    free(l->entries[i].name);
  }
  free(l->entries);
  for (size_t i = 0; i < l->n_exact; i++)
    free(l->exact[i].host);
  free(l->exact);
  for (size_t i = 0; i < l->n_wild; i++)
    free(l->wild[i].host);
  free(l->wild);
  for (size_t i = 0; i < l->n_challenges; i++) {
    tlsconf_ctxcache_entry_release(l->challenges[i].e.ce);
    free(l->challenges[i].e.name);
    free(l->challenges[i].host);
  }
  free(l->challenges);
  free(l->up_servername);
  free(l->up_check);
  free(l->up_host);
  if (l->keys != NULL)
    OPENSSL_cleanse(l->keys, l->n_keys * sizeof(*l->keys));
  free(l->keys);
  EVP_CIPHER_free(l->aes);
  SSL_CTX_free(l->base);
  l->magic = 0;
  free(l);
}

/* Callbacks every SSL_CTX of the listener carries: the client hello and
 * servername callbacks run from the SSL's current SSL_CTX (a
 * renegotiation's from the selected one), the ticket callbacks from the
 * session_ctx (the base) but are set on all in case that ever changes. */
static int install_callbacks(SSL_CTX *ctx) {
  SSL_CTX_set_client_hello_cb(ctx, client_hello_cb, NULL);
  SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
  return SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb) &&
         SSL_CTX_set_session_ticket_cb(ctx, ticket_gen_cb, ticket_dec_cb, NULL);
}

static void built_free(void *value) {
  struct built *b = value;
  if (b == NULL)
    return;
  SSL_CTX_free(b->ctx);
  free(b->groups);
  free(b->group_nids);
  free(b);
}

/* The NIDs of a groups list ("X25519:prime256v1:P-384"), for
 * SSL_set1_groups. 0 with *nids NULL when a name has no NID (the list is
 * then used as it is); -1 when out of memory. */
static int group_nids_of(const char *groups, int **nids, size_t *n) {
  *nids = NULL;
  *n = 0;
  char *copy = strdup(groups);
  int *out = calloc(strlen(groups) / 2 + 1, sizeof(*out));
  if (copy == NULL || out == NULL) {
    free(copy);
    free(out);
    return -1;
  }
  size_t k = 0;
  char *save = NULL;
  for (char *name = strtok_r(copy, ":", &save); name != NULL; name = strtok_r(NULL, ":", &save)) {
    int nid = EC_curve_nist2nid(name);
    if (nid == NID_undef)
      nid = OBJ_sn2nid(name);
    if (nid == NID_undef) {
      k = 0;
      break;
    }
    out[k++] = nid;
  }
  free(copy);
  if (k == 0) {
    free(out);
    return 0;
  }
  *nids = out;
  *n = k;
  return 0;
}

/* What a build of one context needs (tlsconf_ctxcache_build_cb's data). */
struct built_args {
  const char *name;
  const Tlsplane__V1__ResolvedTlsContext *rc;
};

/* Builds one context (tlsconf_ctxcache_build_cb): the SSL_CTX with the
 * callbacks every SSL_CTX of a listener carries. */
static int built_make(void *data, void **out, struct tp_err *err) {
  const struct built_args *a = data;
  const Tlsplane__V1__ResolvedTlsContext *rc = a->rc;
  struct built *b = calloc(1, sizeof(*b));
  if (b == NULL)
    return tlsconf__oom(err);
  if (tlsconf_ctx_build(rc, &b->ctx, err) != 0) {
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "%s: ", a->name);
    tp_err_prefix(err, prefix);
    goto failed;
  }
  const char *groups = tlsconf__policy_groups(rc->cipher_policy);
  if (groups != NULL && ((b->groups = strdup(groups)) == NULL ||
                         group_nids_of(groups, &b->group_nids, &b->n_group_nids) != 0)) {
    tlsconf__oom(err);
    goto failed;
  }
  int32_t frag = rc->tls_context->max_send_fragment;
  b->max_send_fragment = frag > 0 ? (unsigned)frag : SSL3_RT_MAX_PLAIN_LENGTH;
  if (!SSL_CTX_get_tlsext_status_cb(b->ctx, &b->status_cb) ||
      !SSL_CTX_get_tlsext_status_arg(b->ctx, &b->status_arg)) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "%s: cannot read the OCSP callback", a->name);
    goto failed;
  }
  if (b->status_cb != NULL)
    SSL_CTX_set_tlsext_status_cb(b->ctx, status_cb);
  if (!install_callbacks(b->ctx)) {
    tlsconf__oom(err);
    goto failed;
  }
  *out = b;
  return 0;
failed:
  built_free(b);
  return -1;
}

int tlsconf_listener_cache_new(struct tlsconf_ctxcache **out) {
  return tlsconf_ctxcache_new(built_free, out);
}

/* Building contexts is the slow part of applying a listener (an SSL_CTX,
 * a certificate and a key to decode: some 200 us each with OpenSSL 3.0),
 * and a listener may have thousands. They are independent, so past a few
 * dozen they are built by several threads at once; the result, errors
 * included, is the same as building them one after the other. */
#define PARALLEL_MIN_ENTRIES 32
#define PARALLEL_PER_THREAD 16 /* at least this many contexts per thread */
#define PARALLEL_MAX_THREADS 8

typedef Tlsplane__V1__ListenerEntry__TlsContextsEntry hash_entry;

struct build_job {
  struct tlsconf_listener *l;
  const char **names; /* per entry */
  map_entry **map;
  size_t n_map;
  struct tlsconf_ctxcache *cache;
  /* The content hashes of the contexts by name, sorted (NULL: none given:
   * each context's is computed). */
  hash_entry **hashes;
  size_t n_hashes;
  size_t n;                 /* entries to build */
  struct tp_err *errs;      /* per entry */
  atomic_size_t next;       /* the next entry to take */
  atomic_size_t first_fail; /* lowest entry that failed (n: none); later ones are skipped */
};

static int hash_cmp(const void *a, const void *b) {
  return strcmp((*(hash_entry *const *)a)->key, (*(hash_entry *const *)b)->key);
}

static int hash_cmp_key(const void *key, const void *elem) {
  return strcmp(key, (*(hash_entry *const *)elem)->key);
}

/* The content hash the cache knows rc by: the one given for name (the
 * ContextMaterial resource's, rset.h), else SHA-256 of rc packed. */
static int context_hash(const struct build_job *j, const char *name,
                        const Tlsplane__V1__ResolvedTlsContext *rc,
                        uint8_t hash[TLSCONF_CTXCACHE_HASH_LEN]) {
  hash_entry *const *he =
      j->n_hashes > 0 ? bsearch(name, j->hashes, j->n_hashes, sizeof(*j->hashes), hash_cmp_key)
                      : NULL;
  if (he != NULL && (*he)->value.len == TLSCONF_CTXCACHE_HASH_LEN) {
    memcpy(hash, (*he)->value.data, TLSCONF_CTXCACHE_HASH_LEN);
    return 0;
  }
  size_t len = protobuf_c_message_get_packed_size(&rc->base);
  uint8_t stack[4096], *buf = len <= sizeof(stack) ? stack : malloc(len);
  if (buf == NULL)
    return -1;
  protobuf_c_message_pack(&rc->base, buf);
  SHA256(buf, len, hash);
  OPENSSL_cleanse(buf, len); /* private keys */
  if (buf != stack)
    free(buf);
  return 0;
}

/* Entry k: its context found in the cache by content hash, or built and
 * kept there. */
static int entry_get(struct build_job *j, size_t k, struct tp_err *err) {
  struct entry *e = &j->l->entries[k];
  const char *name = j->names[k];
  map_entry *const *me =
      j->n_map > 0 ? bsearch(name, j->map, j->n_map, sizeof(*j->map), map_cmp_key) : NULL;
  if (me == NULL || (*me)->value == NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "tls_contexts: no \"%s\"", name);
  const Tlsplane__V1__ResolvedTlsContext *rc = (*me)->value;
  uint8_t hash[TLSCONF_CTXCACHE_HASH_LEN];
  if ((e->name = strdup(name)) == NULL || context_hash(j, name, rc, hash) != 0)
    return tlsconf__oom(err);
  struct built_args args = {.name = name, .rc = rc};
  int built = 0;
  if (tlsconf_ctxcache_get(j->cache, hash, built_make, &args, &e->ce, &built, err) != 0)
    return -1;
  const struct built *b = tlsconf_ctxcache_entry_value(e->ce);
  e->ctx = b->ctx;
  e->groups = b->groups;
  e->group_nids = b->group_nids;
  e->n_group_nids = b->n_group_nids;
  e->max_send_fragment = b->max_send_fragment;
  e->status_cb = b->status_cb;
  e->status_arg = b->status_arg;
  e->reused = !built;
  return 0;
}

static void build_one(struct build_job *j, size_t k) {
  if (k >= atomic_load(&j->first_fail))
    return; /* an earlier one failed: its error is the one reported */
  if (entry_get(j, k, &j->errs[k]) == 0)
    return;
  size_t cur = atomic_load(&j->first_fail);
  while (k < cur && !atomic_compare_exchange_weak(&j->first_fail, &cur, k))
    ;
}

static void *build_thread(void *arg) {
  struct build_job *j = arg;
  for (size_t k; (k = atomic_fetch_add(&j->next, 1)) < j->n;)
    build_one(j, k);
  ERR_clear_error();
  return NULL;
}

static void build_all(struct build_job *j) {
  atomic_init(&j->next, 0);
  atomic_init(&j->first_fail, j->n);
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  size_t threads = j->n / PARALLEL_PER_THREAD;
  if (cpus > 0 && threads > (size_t)cpus)
    threads = (size_t)cpus;
  if (threads > PARALLEL_MAX_THREADS)
    threads = PARALLEL_MAX_THREADS;
  pthread_t tids[PARALLEL_MAX_THREADS];
  size_t started = 0;
  /* This thread is one of them. */
  while (j->n >= PARALLEL_MIN_ENTRIES && started + 1 < threads &&
         pthread_create(&tids[started], NULL, build_thread, j) == 0)
    started++;
  build_thread(j);
  for (size_t i = 0; i < started; i++)
    pthread_join(tids[i], NULL);
}

/* The contexts: the default first, then each route's in route order. */
static int entries_build(struct tlsconf_listener *l, const Tlsplane__V1__ResolvedListener *rl,
                         const Tlsplane__V1__ListenerEntry *hashes, struct tlsconf_ctxcache *cache,
                         size_t *route_entry, struct tp_err *err) {
  const Tlsplane__V1__Listener *li = rl->listener;
  map_entry **map = NULL;
  size_t *map_to_entry = NULL;
  const char **names = NULL;
  hash_entry **hash_sorted = NULL;
  struct tp_err *errs = NULL;
  struct tp_err route_err = {0};
  int rc = -1;
  if (li->default_tls_context[0] == '\0')
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "default_tls_context: required");
  l->entries = calloc(li->n_sni_routes + 2, sizeof(*l->entries));
  map = malloc((rl->n_tls_contexts + 1) * sizeof(*map));
  map_to_entry = malloc((rl->n_tls_contexts + 1) * sizeof(*map_to_entry));
  names = calloc(li->n_sni_routes + 2, sizeof(*names));
  if (l->entries == NULL || map == NULL || map_to_entry == NULL || names == NULL) {
    tlsconf__oom(err);
    goto done;
  }
  for (size_t i = 0; i < rl->n_tls_contexts; i++)
    map[i] = rl->tls_contexts[i];
  qsort(map, rl->n_tls_contexts, sizeof(*map), map_cmp);
  for (size_t i = 0; i < rl->n_tls_contexts; i++) {
    map_to_entry[i] = SIZE_MAX;
    if (i > 0 && strcmp(map[i - 1]->key, map[i]->key) == 0) {
      tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "tls_contexts: \"%s\" appears twice",
                 map[i]->key);
      goto done;
    }
  }
  /* Which contexts, in which order. A route naming no context stops the
   * walk: the contexts before it are still built, and one of them failing
   * is reported first, as when each was built on the way. */
  size_t n = 0;
  size_t n_walk = li->n_sni_routes + 1 + (li->upstream_tls != NULL);
  for (size_t i = 0; i < n_walk; i++) {
    int up = i == li->n_sni_routes + 1; /* upstream_tls's, last */
    const char *name = i == 0 ? li->default_tls_context
                       : up   ? li->upstream_tls->tls_context
                              : li->sni_routes[i - 1]->tls_context;
    map_entry **me = rl->n_tls_contexts > 0
                         ? bsearch(name, map, rl->n_tls_contexts, sizeof(*map), map_cmp_key)
                         : NULL;
    char field[64];
    if (i == 0)
      snprintf(field, sizeof(field), "default_tls_context");
    else if (up)
      snprintf(field, sizeof(field), "upstream_tls.tls_context");
    else
      snprintf(field, sizeof(field), "sni_routes[%zu].tls_context", i - 1);
    if (me != NULL && (*me)->value != NULL && (*me)->value->tls_context != NULL &&
        listener_rules_upstream_context_check(li, (*me)->value->tls_context, field, &route_err) !=
            0)
      break;
    if (me == NULL) {
      if (up)
        tp_err_set(&route_err, GRPC_STATUS_INVALID_ARGUMENT,
                   "upstream_tls.tls_context: \"%s\" is not in tls_contexts", name);
      else if (i == 0)
        tp_err_set(&route_err, GRPC_STATUS_INVALID_ARGUMENT,
                   "default_tls_context: \"%s\" is not in tls_contexts", name);
      else
        tp_err_set(&route_err, GRPC_STATUS_INVALID_ARGUMENT,
                   "sni_routes[%zu].tls_context: \"%s\" is not in tls_contexts", i - 1, name);
      break;
    }
    size_t m = (size_t)(me - map);
    if (map_to_entry[m] == SIZE_MAX) {
      map_to_entry[m] = n;
      names[n++] = name;
    }
    if (up)
      l->up_entry = map_to_entry[m];
    else if (i > 0)
      route_entry[i - 1] = map_to_entry[m];
  }
  if ((errs = calloc(n + 1, sizeof(*errs))) == NULL) {
    tlsconf__oom(err);
    goto done;
  }
  size_t n_hashes = hashes != NULL ? hashes->n_tls_contexts : 0;
  if (n_hashes > 0) {
    if ((hash_sorted = malloc(n_hashes * sizeof(*hash_sorted))) == NULL) {
      tlsconf__oom(err);
      goto done;
    }
    memcpy(hash_sorted, hashes->tls_contexts, n_hashes * sizeof(*hash_sorted));
    qsort(hash_sorted, n_hashes, sizeof(*hash_sorted), hash_cmp);
  }
  struct build_job job = {.l = l,
                          .names = names,
                          .map = map,
                          .n_map = rl->n_tls_contexts,
                          .cache = cache,
                          .hashes = hash_sorted,
                          .n_hashes = n_hashes,
                          .n = n,
                          .errs = errs};
  l->n_entries = n; /* listener_free frees whatever was built */
  build_all(&job);
  size_t failed = atomic_load(&job.first_fail);
  if (failed < n) {
    *err = errs[failed];
    goto done;
  }
  if (route_err.status != GRPC_STATUS_OK) {
    *err = route_err;
    goto done;
  }
  rc = 0;
done:
  free(map);
  free(map_to_entry);
  free(names);
  free(hash_sorted);
  free(errs);
  return rc;
}

static int routes_build(struct tlsconf_listener *l, const Tlsplane__V1__Listener *li,
                        const size_t *route_entry, struct tp_err *err) {
  if (li->n_sni_routes == 0)
    return 0;
  /* Patterns and duplicates: the rules the API checked (listener_rules.c). */
  if (listener_rules_sni_routes_check(li, err) != 0)
    return -1;
  l->exact = calloc(li->n_sni_routes, sizeof(*l->exact));
  l->wild = calloc(li->n_sni_routes, sizeof(*l->wild));
  if (l->exact == NULL || l->wild == NULL)
    return tlsconf__oom(err);
  for (size_t i = 0; i < li->n_sni_routes; i++) {
    char *host = strdup(li->sni_routes[i]->hostname);
    if (host == NULL)
      return tlsconf__oom(err);
    for (char *p = host; *p; p++)
      if (*p >= 'A' && *p <= 'Z')
        *p = (char)(*p - 'A' + 'a');
    int wild = strncmp(host, "*.", 2) == 0;
    if (wild)
      memmove(host, host + 2, strlen(host + 2) + 1);
    struct route *r = wild ? &l->wild[l->n_wild++] : &l->exact[l->n_exact++];
    r->host = host;
    r->entry = route_entry[i];
    r->index = i;
  }
  qsort(l->exact, l->n_exact, sizeof(*l->exact), route_cmp);
  qsort(l->wild, l->n_wild, sizeof(*l->wild), route_cmp);
  return 0;
}

/* What a build of one challenge context needs. */
struct challenge_args {
  const Tlsplane__V1__AcmeChallengeMaterial *m;
};

/* Builds one challenge context (tlsconf_ctxcache_build_cb): nothing is
 * stapled, groups and fragment size are OpenSSL's defaults. */
static int challenge_make(void *data, void **out, struct tp_err *err) {
  const struct challenge_args *a = data;
  struct built *b = calloc(1, sizeof(*b));
  if (b == NULL)
    return tlsconf__oom(err);
  if (tlsconf_acme_ctx_build(a->m, &b->ctx, err) != 0)
    goto failed;
  b->max_send_fragment = SSL3_RT_MAX_PLAIN_LENGTH;
  if (!install_callbacks(b->ctx)) {
    tlsconf__oom(err);
    goto failed;
  }
  *out = b;
  return 0;
failed:
  built_free(b);
  return -1;
}

/* The content hash the cache knows challenge i by: the resource hash
 * given (ListenerEntry.acme_challenges[i], in the order rset_resolve gives
 * them), else SHA-256 of a tag and the packed material (the tag keeps it
 * apart from any packed ResolvedTlsContext's). */
static int challenge_hash(const Tlsplane__V1__ResolvedListener *rl,
                          const Tlsplane__V1__ListenerEntry *hashes, size_t i,
                          uint8_t hash[TLSCONF_CTXCACHE_HASH_LEN]) {
  if (hashes != NULL && hashes->n_acme_challenges == rl->n_acme_challenges &&
      hashes->acme_challenges[i].len == TLSCONF_CTXCACHE_HASH_LEN) {
    memcpy(hash, hashes->acme_challenges[i].data, TLSCONF_CTXCACHE_HASH_LEN);
    return 0;
  }
  static const char tag[] = "tlsplane.v1.AcmeChallengeMaterial";
  const ProtobufCMessage *m = &rl->acme_challenges[i]->base;
  size_t len = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = malloc(sizeof(tag) + len);
  if (buf == NULL)
    return -1;
  memcpy(buf, tag, sizeof(tag));
  protobuf_c_message_pack(m, buf + sizeof(tag));
  SHA256(buf, sizeof(tag) + len, hash);
  OPENSSL_cleanse(buf, sizeof(tag) + len); /* the private key */
  free(buf);
  return 0;
}

/* The ACME challenges (rl->acme_challenges), each context from the cache
 * or built and kept there. Errors name the challenge by its server_name
 * ("acme_challenges[a.test]: private_key_pem: ..."), or by its index
 * while the name itself is wrong. */
static int challenges_build(struct tlsconf_listener *l, const Tlsplane__V1__ResolvedListener *rl,
                            const Tlsplane__V1__ListenerEntry *hashes,
                            struct tlsconf_ctxcache *cache, struct tp_err *err) {
  size_t n = rl->n_acme_challenges;
  if (n == 0)
    return 0;
  if ((l->challenges = calloc(n, sizeof(*l->challenges))) == NULL)
    return tlsconf__oom(err);
  for (size_t i = 0; i < n; i++) {
    const Tlsplane__V1__AcmeChallengeMaterial *m = rl->acme_challenges[i];
    const char *name = m != NULL && m->server_name != NULL ? m->server_name : "";
    char prefix[TLSEXT_MAXLEN_host_name + 40];
    struct tp_err name_err = {0};
    if (m == NULL)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "acme_challenges[%zu]: empty", i);
    if (name[0] == '\0' || strncmp(name, "*.", 2) == 0 ||
        tlsconf_hostname_pattern_check(name, &name_err) != 0)
      snprintf(prefix, sizeof(prefix), "acme_challenges[%zu]: ", i);
    else
      snprintf(prefix, sizeof(prefix), "acme_challenges[%s]: ", name);
    for (size_t j = 0; j < l->n_challenges; j++)
      if (strcmp(l->challenges[j].host, name) == 0)
        return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                          "acme_challenges[%s]: server_name: \"%s\" has two challenges", name,
                          name);
    uint8_t hash[TLSCONF_CTXCACHE_HASH_LEN];
    if (challenge_hash(rl, hashes, i, hash) != 0)
      return tlsconf__oom(err);
    struct challenge *ch = &l->challenges[l->n_challenges];
    struct challenge_args args = {.m = m};
    int built = 0;
    if (tlsconf_ctxcache_get(cache, hash, challenge_make, &args, &ch->e.ce, &built, err) != 0) {
      tp_err_prefix(err, prefix);
      return -1;
    }
    l->n_challenges++; /* listener_free releases it from here on */
    const struct built *b = tlsconf_ctxcache_entry_value(ch->e.ce);
    ch->e.ctx = b->ctx;
    ch->e.max_send_fragment = b->max_send_fragment;
    ch->e.reused = !built;
    /* A cached context was checked when it was built, under the same
     * content: its name is the one checked then. */
    if ((ch->host = strdup(name)) == NULL || asprintf(&ch->e.name, "acmeChallenges/%s", name) < 0) {
      ch->e.name = NULL;
      return tlsconf__oom(err);
    }
  }
  qsort(l->challenges, l->n_challenges, sizeof(*l->challenges), challenge_cmp);
  return 0;
}

static int keys_build(struct tlsconf_listener *l, const Tlsplane__V1__ResolvedListener *rl,
                      struct tp_err *err) {
  if ((l->aes = EVP_CIPHER_fetch(NULL, "AES-128-CBC", NULL)) == NULL) {
    tp_err_set(err, GRPC_STATUS_INTERNAL, "ticket_keys: AES-128-CBC is not available");
    tp_err_append_openssl(err);
    return -1;
  }
  size_t n = rl->n_ticket_keys > 0 ? rl->n_ticket_keys : 1;
  if ((l->keys = calloc(n, sizeof(*l->keys))) == NULL)
    return tlsconf__oom(err);
  l->n_keys = n;
  if (rl->n_ticket_keys == 0) {
    /* No ring: one random key for this build, shared by its contexts. */
    if (RAND_bytes((unsigned char *)l->keys, sizeof(*l->keys)) <= 0) {
      tp_err_set(err, GRPC_STATUS_INTERNAL, "ticket_keys: no random key");
      tp_err_append_openssl(err);
      return -1;
    }
    l->active = 0;
    return 0;
  }
  size_t n_active = 0;
  for (size_t i = 0; i < n; i++) {
    const Tlsplane__V1__TicketKeyMaterial *m = rl->ticket_keys[i];
    if (m->key.len != TICKET_KEY_LEN)
      return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                        "ticket_keys[%zu]: must be %d bytes (got %zu)", i, TICKET_KEY_LEN,
                        m->key.len);
    struct ticket_key *k = &l->keys[i];
    memcpy(k->name, m->key.data, TICKET_PART_LEN);
    memcpy(k->hmac, m->key.data + TICKET_PART_LEN, TICKET_PART_LEN);
    memcpy(k->aes, m->key.data + 2 * TICKET_PART_LEN, TICKET_PART_LEN);
    for (size_t j = 0; j < i; j++)
      if (memcmp(l->keys[j].name, k->name, TICKET_PART_LEN) == 0)
        return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                          "ticket_keys[%zu]: same key name as ticket_keys[%zu]", i, j);
    if (m->active) {
      l->active = i;
      n_active++;
    }
  }
  if (n_active != 1)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT,
                      "ticket_keys: exactly one key must be active (%zu are)", n_active);
  return 0;
}

static int renegotiation_build(struct tlsconf_listener *l, const Tlsplane__V1__Listener *li,
                               struct tp_err *err) {
  uint64_t window_ms;
  if (listener_rules_renegotiation_check(li, LISTENER_RULES_AGENT, &l->renegotiation_limit,
                                         &window_ms, err) != 0)
    return -1;
  l->renegotiation_window_ms = (int64_t)window_ms;
  /* OpenSSL 3 refuses client-initiated renegotiation unless allowed; the
   * agent counts and enforces the limit per window. */
  l->ssl_options =
      l->renegotiation_limit > 0 ? SSL_OP_ALLOW_CLIENT_RENEGOTIATION : SSL_OP_NO_RENEGOTIATION;
  return 0;
}

/* The base SSL_CTX: session cache (the largest of the contexts'; off when
 * every context turned its own off) and the callbacks. The default
 * context's session timeout stands until servername_cb sets each
 * session's own. */
static int base_build(struct tlsconf_listener *l, struct tp_err *err) {
  if ((l->base = SSL_CTX_new(TLS_server_method())) == NULL)
    return tlsconf__oom(err);
  SSL_CTX_set_mode(l->base, SSL_MODE_NO_AUTO_CHAIN);
  long size = 0;
  int cache = 0;
  for (size_t i = 0; i < l->n_entries; i++) {
    SSL_CTX *ctx = l->entries[i].ctx;
    if (!(SSL_CTX_get_session_cache_mode(ctx) & SSL_SESS_CACHE_SERVER))
      continue;
    cache = 1;
    long s = SSL_CTX_sess_get_cache_size(ctx);
    if (s > size)
      size = s;
  }
  SSL_CTX_set_session_cache_mode(l->base, cache ? SSL_SESS_CACHE_SERVER : SSL_SESS_CACHE_OFF);
  if (cache)
    SSL_CTX_sess_set_cache_size(l->base, size);
  SSL_CTX_set_timeout(l->base, SSL_CTX_get_timeout(l->entries[0].ctx));
  if (!install_callbacks(l->base))
    return tlsconf__oom(err);
  return 0;
}

/* upstream_tls: what each upstream SSL gets besides its context. */
static int upstream_build(struct tlsconf_listener *l, const Tlsplane__V1__Listener *li,
                          struct tp_err *err) {
  if (li->upstream_tls == NULL)
    return 0;
  struct listener_rules_values vals;
  if (listener_rules_check(li, LISTENER_RULES_AGENT, &vals, err) != 0)
    return -1;
  const Tlsplane__V1__UpstreamTls *u = li->upstream_tls;
  l->up_ctx = l->entries[l->up_entry].ctx;
  l->up_verify = u->reject_unauthorized == NULL || u->reject_unauthorized->value;
  l->up_sni_from_client = u->servername_from_client;
  l->up_alpn_from_client = u->alpn_from_client;
  l->up_min_dh_bits = u->min_dh_size > 0 ? u->min_dh_size : 1024;
  if ((u->servername[0] != '\0' && (l->up_servername = strdup(u->servername)) == NULL) ||
      (u->check_server_identity[0] != '\0' &&
       (l->up_check = strdup(u->check_server_identity)) == NULL) ||
      (l->up_host = strdup(vals.upstream.host)) == NULL)
    return tlsconf__oom(err);
  return 0;
}

int tlsconf_listener_build(const Tlsplane__V1__ResolvedListener *rl, struct tlsconf_listener **out,
                           struct tp_err *err) {
  /* A cache of its own, which its entries keep alive: the same context
   * named by several routes is still built once. */
  struct tlsconf_ctxcache *cache;
  if (tlsconf_listener_cache_new(&cache) != 0)
    return tlsconf__oom(err);
  int rc = tlsconf_listener_build_cached(rl, NULL, cache, out, err);
  tlsconf_ctxcache_unref(cache);
  return rc;
}

size_t tlsconf_listener_reused(const struct tlsconf_listener *l) {
  size_t n = 0;
  for (size_t i = 0; i < tlsconf_listener_contexts(l); i++)
    n += l->entries[i].reused;
  return n;
}

size_t tlsconf_listener_contexts(const struct tlsconf_listener *l) {
  /* upstream_tls's context is the last entry and serves no client. */
  return l->n_entries - (l->up_ctx != NULL);
}

const SSL_CTX *tlsconf_listener_context(const struct tlsconf_listener *l, size_t i) {
  return i < tlsconf_listener_contexts(l) ? l->entries[i].ctx : NULL;
}

int tlsconf_listener_build_cached(const Tlsplane__V1__ResolvedListener *rl,
                                  const Tlsplane__V1__ListenerEntry *hashes,
                                  struct tlsconf_ctxcache *cache, struct tlsconf_listener **out,
                                  struct tp_err *err) {
  *out = NULL;
  const Tlsplane__V1__Listener *li = rl->listener;
  if (li == NULL)
    return tp_err_set(err, GRPC_STATUS_INVALID_ARGUMENT, "listener: required");
  pthread_once(&conn_index_once, conn_index_init);
  if (conn_index < 0)
    return tp_err_set(err, GRPC_STATUS_INTERNAL, "no SSL ex_data index");
  struct tlsconf_listener *l = calloc(1, sizeof(*l));
  size_t *route_entry = calloc(li->n_sni_routes + 1, sizeof(*route_entry));
  if (l == NULL || route_entry == NULL) {
    free(l);
    free(route_entry);
    return tlsconf__oom(err);
  }
  l->magic = LISTENER_MAGIC;
  atomic_init(&l->refs, 1);
  if (renegotiation_build(l, li, err) != 0 ||
      entries_build(l, rl, hashes, cache, route_entry, err) != 0 ||
      routes_build(l, li, route_entry, err) != 0 ||
      challenges_build(l, rl, hashes, cache, err) != 0 || keys_build(l, rl, err) != 0 ||
      base_build(l, err) != 0 || upstream_build(l, li, err) != 0) {
    free(route_entry);
    listener_free(l);
    ERR_clear_error();
    return -1;
  }
  free(route_entry);
  *out = l;
  return 0;
}

void tlsconf_listener_ref(struct tlsconf_listener *l) {
  atomic_fetch_add_explicit(&listener_check(l)->refs, 1, memory_order_relaxed);
}

void tlsconf_listener_unref(struct tlsconf_listener *l) {
  if (l == NULL)
    return;
  if (atomic_fetch_sub_explicit(&listener_check(l)->refs, 1, memory_order_acq_rel) != 1)
    return;
  listener_free(l);
}

SSL *tlsconf_listener_ssl_new(struct tlsconf_listener *l) {
  listener_check(l);
  SSL *ssl = SSL_new(l->base);
  struct conn *c = calloc(1, sizeof(*c));
  if (ssl == NULL || c == NULL)
    goto failed;
  c->magic = CONN_MAGIC;
  c->l = l;
  tlsconf_listener_ref(l);
  if (!SSL_set_ex_data(ssl, conn_index, c)) {
    conn_free(c);
    c = NULL;
    goto failed;
  }
  /* From here on c is freed with ssl. Refused renegotiation is refused
   * before any ClientHello callback. */
  SSL_set_options(ssl, l->ssl_options);
  return ssl;
failed:
  free(c);
  SSL_free(ssl);
  ERR_clear_error();
  return NULL;
}

SSL *tlsconf_listener_upstream_ssl_new(struct tlsconf_listener *l, SSL *client) {
  listener_check(l);
  if (l->up_ctx == NULL)
    return NULL;
  SSL *ssl = SSL_new(l->up_ctx);
  if (ssl == NULL)
    goto failed;
  const char *sni = l->up_servername;
  if (l->up_sni_from_client && client != NULL) {
    const char *cs = SSL_get_servername(client, TLSEXT_NAMETYPE_host_name);
    if (cs != NULL && cs[0] != '\0')
      sni = cs;
  }
  if (sni != NULL && !SSL_set_tlsext_host_name(ssl, sni))
    goto failed;
  const unsigned char *proto = NULL;
  unsigned proto_len = 0;
  if (l->up_alpn_from_client && client != NULL)
    SSL_get0_alpn_selected(client, &proto, &proto_len);
  if (proto_len > 0) {
    unsigned char wire[256];
    wire[0] = (unsigned char)proto_len; /* at most 255 (RFC 7301) */
    memcpy(wire + 1, proto, proto_len);
    if (SSL_set_alpn_protos(ssl, wire, proto_len + 1) != 0)
      goto failed;
  }
  if (l->up_verify) {
    const char *name = l->up_check != NULL ? l->up_check : sni != NULL ? sni : l->up_host;
    struct in6_addr ip;
    int is_ip = inet_pton(AF_INET, name, &ip) == 1 || inet_pton(AF_INET6, name, &ip) == 1;
    SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
    if (is_ip ? !X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name)
              : !SSL_set1_host(ssl, name))
      goto failed;
  } else {
    SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
  }
  SSL_set_connect_state(ssl);
  return ssl;
failed:
  SSL_free(ssl);
  ERR_clear_error();
  return NULL;
}

int tlsconf_listener_upstream_check(const struct tlsconf_listener *l, SSL *ssl, char *why,
                                    size_t why_len) {
  listener_check(l);
  EVP_PKEY *tmp = NULL;
  if (!SSL_get_peer_tmp_key(ssl, &tmp)) {
    ERR_clear_error();
    return 0; /* no ephemeral key (TLS 1.3 reports its group's; none: resumed) */
  }
  int bits = EVP_PKEY_get_bits(tmp);
  int dh = EVP_PKEY_is_a(tmp, "DH");
  EVP_PKEY_free(tmp);
  if (dh && bits < l->up_min_dh_bits) {
    snprintf(why, why_len, "DH parameter size %d is less than min_dh_size %d", bits,
             l->up_min_dh_bits);
    return -1;
  }
  return 0;
}

int tlsconf_listener_upstream_tls(const struct tlsconf_listener *l) {
  return listener_check((struct tlsconf_listener *)l)->up_ctx != NULL;
}

enum tlsconf_acme tlsconf_ssl_acme(const SSL *ssl, const char **host) {
  struct conn *c = conn_get(ssl);
  if (host != NULL)
    *host = c != NULL ? c->acme_host : NULL;
  return c != NULL ? c->acme : TLSCONF_ACME_NONE;
}

size_t tlsconf_listener_acme_challenges(const struct tlsconf_listener *l) {
  return listener_check(l)->n_challenges;
}

const char *tlsconf_ssl_context_name(const SSL *ssl) {
  struct conn *c = conn_get(ssl);
  return c != NULL && c->entry != NULL ? c->entry->name : NULL;
}

int tlsconf_listener_renegotiation_limit(const struct tlsconf_listener *l) {
  return listener_check(l)->renegotiation_limit;
}

int64_t tlsconf_listener_renegotiation_window_ms(const struct tlsconf_listener *l) {
  return listener_check(l)->renegotiation_window_ms;
}

/* The subject's (first) CN as UTF-8, cut at a character boundary to fit;
 * "" when there is none or it holds a NUL. */
static void peer_cn(X509 *peer, char *out, size_t out_len) {
  out[0] = '\0';
  X509_NAME *subject = X509_get_subject_name(peer);
  int idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (idx < 0)
    return;
  unsigned char *utf8 = NULL;
  int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx)));
  if (n < 0) {
    ERR_clear_error();
    return;
  }
  size_t len = (size_t)n;
  if (memchr(utf8, 0, len) == NULL) {
    if (len >= out_len) {
      len = out_len - 1;
      while (len > 0 && (utf8[len] & 0xC0) == 0x80) /* utf8[len] continues a character */
        len--;
    }
    memcpy(out, utf8, len);
    out[len] = '\0';
  }
  OPENSSL_free(utf8);
}

void tlsconf_conn_info(SSL *ssl, struct tlsconf_conn_info *info) {
  memset(info, 0, sizeof(*info));
  struct conn *c = conn_get(ssl);
  info->servername = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  const unsigned char *proto = NULL;
  unsigned proto_len = 0;
  SSL_get0_alpn_selected(ssl, &proto, &proto_len);
#ifndef OPENSSL_NO_NEXTPROTONEG
  if (proto_len == 0)
    SSL_get0_next_proto_negotiated(ssl, &proto, &proto_len);
#endif
  if (proto_len > 0 && c != NULL && proto_len < sizeof(c->protocol)) {
    memcpy(c->protocol, proto, proto_len);
    c->protocol[proto_len] = '\0';
    info->protocol = c->protocol;
  }
  info->version = SSL_get_version(ssl);
  const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
  info->cipher = cipher != NULL ? SSL_CIPHER_get_name(cipher) : NULL;
  info->resumed = SSL_session_reused(ssl);
  X509 *peer = SSL_get0_peer_certificate(ssl);
  info->has_peer_cert = peer != NULL;
  info->verify_result = SSL_get_verify_result(ssl);
  if (peer != NULL) {
    peer_cn(peer, info->peer_cn, sizeof(info->peer_cn));
  } else if (SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER) {
    /* Asked for and not given: Node's authorizationError for this case. */
    info->verify_result = X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT;
  }
  if (info->verify_result != X509_V_OK)
    info->verify_error = X509_verify_cert_error_string(info->verify_result);
  if (c != NULL) {
    info->ocsp_requested = c->ocsp_requested;
    info->ocsp_stapled = c->ocsp_stapled;
  }
}
