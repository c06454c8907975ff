/* The agent's TLS stream fed arbitrary bytes, in memory: a listener built
 * by common/tlsconf_listener.c from a real ResolvedListener (data/
 * listener.json: RSA and ECDSA certificates, SNI routes exact and
 * wildcard, ALPN and NPN, a context that requests client certificates
 * with a trust bundle and a CRL, an OCSP staple, a TLS 1.2-only context
 * with DHE, a ticket-key ring of two keys, and an ACME tls-alpn-01
 * challenge for acme.example.com), one SSL per input made by
 * tlsconf_listener_ssl_new with the modes agent/conn.c sets, and what a
 * client sends given to it through a memory BIO in the pieces the first
 * byte says, the handshake and reads driven as conn.c drives them. So the
 * client-hello callback (SNI, context switch, OCSP request, ALPN
 * "acme-tls/1" alone answered or refused), the ticket
 * callback (decrypting tickets of the ring: the seeds hold real ones),
 * ALPN/NPN selection and session resumption all run. After the bytes,
 * what the connection negotiated is read as conn.c reads it
 * (tlsconf_conn_info) and put into a PROXY v2 header.
 *
 * What must hold: no crash, leak or undefined behaviour; a connection
 * whose handshake completed reports a version and a cipher, and its
 * PROXY v2 header builds; a ClientHello taken for an ACME validation is
 * served the challenge context of its name (and, handshake done,
 * "acme-tls/1"), and one refused never completes. */

#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <string.h>
#include <sys/socket.h>

#include "fuzz.h"
#include "fuzz_data.h"
#include "pbjson.h"
#include "proxy_v2.h"
#include "tlsconf_listener.h"

static struct tlsconf_listener *listener;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  ProtobufCMessage *m = NULL;
  struct tp_err err = {0};
  if (pbjson_decode(&tlsplane__v1__resolved_listener__descriptor, (const char *)fuzz_data_listener,
                    fuzz_data_listener_len, &m, &err) != 0) {
    fprintf(stderr, "data/listener.json: %s\n", err.msg);
    abort();
  }
  if (tlsconf_listener_build((Tlsplane__V1__ResolvedListener *)m, &listener, &err) != 0) {
    fprintf(stderr, "data/listener.json: %s\n", err.msg);
    abort();
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}

/* Discards what the server wrote. */
static void drain(BIO *out) {
  char buf[4096];
  while (BIO_read(out, buf, sizeof(buf)) > 0)
    ;
}

/* Runs the handshake, then reads, until the SSL wants more input or
 * fails: conn.c's cycle after each read. Returns 0 while the connection
 * lives, -1 once it failed or was closed. */
static int cycle(SSL *ssl, BIO *out) {
  ERR_clear_error();
  if (!SSL_is_init_finished(ssl)) {
    int r = SSL_do_handshake(ssl);
    drain(out);
    if (r != 1) {
      int e = SSL_get_error(ssl, r);
      return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 0 : -1;
    }
  }
  char clear[16384];
  for (;;) {
    int r = SSL_read(ssl, clear, sizeof(clear));
    drain(out);
    if (r > 0)
      continue;
    int e = SSL_get_error(ssl, r);
    return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 0 : -1;
  }
}

static void proxy_header(SSL *ssl) {
  struct tlsconf_conn_info info;
  tlsconf_conn_info(ssl, &info);
  const char *ctx = tlsconf_ssl_context_name(ssl);
  const char *acme_host = NULL;
  enum tlsconf_acme acme = tlsconf_ssl_acme(ssl, &acme_host);
  if (acme == TLSCONF_ACME_ANSWERED)
    FUZZ_ASSERT(acme_host != NULL && strcmp(acme_host, "acme.example.com") == 0 && ctx != NULL &&
                strcmp(ctx, "acmeChallenges/acme.example.com") == 0);
  if (acme == TLSCONF_ACME_REFUSED)
    FUZZ_ASSERT(!SSL_is_init_finished(ssl));
  if (!SSL_is_init_finished(ssl))
    return;
  if (acme == TLSCONF_ACME_ANSWERED)
    FUZZ_ASSERT(info.protocol != NULL && strcmp(info.protocol, "acme-tls/1") == 0);
  FUZZ_ASSERT(info.version != NULL && info.cipher != NULL);
  struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET};
  struct proxy_v2_info pp = {
      .src = (struct sockaddr *)&src,
      .dst = (struct sockaddr *)&dst,
      .alpn = info.protocol,
      .authority = info.servername,
      .ssl = 1,
      .version = info.version,
      .cipher = info.cipher,
      .cn = info.peer_cn[0] ? info.peer_cn : NULL,
      .cert_conn = info.has_peer_cert,
      .cert_sess = info.has_peer_cert,
      .verify_result = info.verify_result,
  };
  uint8_t buf[PROXY_V2_MAX];
  FUZZ_ASSERT(proxy_v2_build(&pp, buf, sizeof(buf)) > 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  size_t chunk = ((size_t)data[0] + 1) * 16;
  data++;
  size--;
  SSL *ssl = tlsconf_listener_ssl_new(listener);
  FUZZ_ASSERT(ssl != NULL);
  BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
  FUZZ_ASSERT(in != NULL && out != NULL);
  BIO_set_mem_eof_return(in, -1); /* empty: "retry", as a socket with nothing yet */
  SSL_set_bio(ssl, in, out);
  SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_set_accept_state(ssl);
  int alive = 0;
  for (size_t off = 0; off < size && alive == 0; off += chunk) {
    size_t n = size - off < chunk ? size - off : chunk;
    FUZZ_ASSERT(BIO_write(in, data + off, (int)n) == (int)n);
    alive = cycle(ssl, out);
  }
  proxy_header(ssl);
  SSL_free(ssl);
  ERR_clear_error();
  return 0;
}
