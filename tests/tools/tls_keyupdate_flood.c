/* tls_keyupdate_flood HOST PORT COUNT: a TLS 1.3 client that completes a
 * handshake (no verification) and then sends COUNT KeyUpdate messages,
 * each asking for one back (SSL_KEY_UPDATE_REQUESTED), as fast as the
 * socket takes them, and never reads a byte of what the server sends.
 * Node's tls has no way to send a KeyUpdate; s_client's "K" reads too.
 *
 * Prints one line, "sent N closed" (a write failed: the server ended the
 * connection), "sent N stalled" (no write progress for 10 s: the server
 * stopped reading) or "sent N done", and exits 0; exit 1 when the
 * connection or the handshake fails, 2 on bad usage. */
#include <errno.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int connect_to(const char *host, const char *port) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
  if (getaddrinfo(host, port, &hints, &res) != 0)
    return -1;
  int fd = -1;
  for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  return fd;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s HOST PORT COUNT\n", argv[0]);
    return 2;
  }
  long count = strtol(argv[3], NULL, 10);
  signal(SIGPIPE, SIG_IGN);
  int fd = connect_to(argv[1], argv[2]);
  if (fd < 0) {
    fprintf(stderr, "connect %s:%s: %s\n", argv[1], argv[2], strerror(errno));
    return 1;
  }
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL *ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  if (SSL_connect(ssl) != 1) {
    fprintf(stderr, "handshake failed: ");
    ERR_print_errors_fp(stderr);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    return 1;
  }
  /* From here on a write that cannot go out within 10 s fails. */
  struct timeval tv = {.tv_sec = 10};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  long sent = 0;
  const char *result = "done";
  while (sent < count) {
    if (SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED) != 1 || SSL_do_handshake(ssl) != 1) {
      int e = errno;
      result = e == EAGAIN || e == EWOULDBLOCK ? "stalled" : "closed";
      break;
    }
    sent++;
  }
  printf("sent %ld %s\n", sent, result);
  fflush(stdout);
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  close(fd);
  return 0;
}
