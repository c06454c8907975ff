/* notify_listen PATH: the service manager's side of sd_notify(3), for the
 * tests: binds a unix datagram socket at PATH, prints "listening", then
 * each datagram received as one line ("READY=1"; several assignments in
 * one datagram joined by spaces). Stops on SIGTERM, or by itself after 120
 * s without a datagram. Node has no unix datagram sockets. */
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: notify_listen PATH\n");
    return 2;
  }
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(argv[1]) >= sizeof(sa.sun_path)) {
    fprintf(stderr, "notify_listen: %s: path too long\n", argv[1]);
    return 2;
  }
  strcpy(sa.sun_path, argv[1]);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    perror("notify_listen: socket");
    return 1;
  }
  printf("listening\n");
  fflush(stdout);
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n = poll(&p, 1, 120000);
    if (n <= 0)
      break;
    char buf[4096];
    ssize_t len = recv(fd, buf, sizeof(buf) - 1, 0);
    if (len < 0)
      break;
    buf[len] = '\0';
    for (ssize_t i = 0; i < len; i++)
      if (buf[i] == '\n')
        buf[i] = ' ';
    while (len > 0 && buf[len - 1] == ' ')
      buf[--len] = '\0';
    printf("%s\n", buf);
    fflush(stdout);
  }
  unlink(argv[1]);
  return 0;
}
