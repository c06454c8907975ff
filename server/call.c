/* tlsplane-server call (see call.h). */
#include "call.h"

#include <getopt.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cli.h"
#include "descriptor_set.h"
#include "gclient.h"
#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "pbjson.h"

#define CALL_INPUT_MAX (64u << 20)
#define PROG "tlsplane-server call"

static void usage(FILE *f) {
  fprintf(
      f, "usage: tlsplane-server call [--server HOST:PORT] [--data-dir DIR] [--ca FILE]\n"
         "                            [--token-file FILE] [--plaintext] [--quiet]\n"
         "                            [--max-time SECONDS] [--max-messages N]\n"
         "                            SERVICE/METHOD [JSON | @FILE | -]\n"
         "\n"
         "One call of the API; the request (default {}) and the response in protobuf's\n"
         "JSON mapping, as grpcurl takes and prints them. SERVICE may leave out\n"
         "\"tlsplane.v1.\": CertificateService/GetCertificate. A server-streaming method\n"
         "(AuditService/WatchEvents) prints each message as it comes, one JSON object\n"
         "per line, until the server ends the stream, N messages came, or the time is up.\n"
         "\n"
         "  --server HOST:PORT  the API                  [TLSPLANE_LISTEN, 127.0.0.1:7443]\n"
         "  --data-dir DIR      where the defaults below live       [TLSPLANE_DATA_DIR, ./var]\n"
         "  --ca FILE           verifies the server                      (default DIR/ca.pem)\n"
         "  --token-file FILE   bearer token          [TLSPLANE_TOKEN; default DIR/admin.token]\n"
         "  --plaintext         no TLS (a server started with --plaintext)\n"
         "  --quiet             print nothing on success\n"
         "  --max-time SECONDS  give up after this long (DEADLINE_EXCEEDED)\n"
         "                                          (default: 60 for a unary call; streams: none)\n"
         "  --max-messages N    a stream: end it after N messages, with success\n"
         "  -h, --help          this text\n"
         "Exit status: 0 when the call succeeded, 1 when it failed (the gRPC status and\n"
         "message on stderr; a stream cut short by --max-time too), 2 on bad usage.\n");
}

/* A whole file (or stdin for "-"), NUL-terminated; NULL on error. */
static char *slurp(const char *path, size_t *len) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  if (f == NULL)
    return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  while (buf != NULL) {
    if (n + 1 == cap) {
      char *bigger = cap < CALL_INPUT_MAX ? realloc(buf, cap * 2) : NULL;
      if (bigger == NULL) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = bigger;
      cap *= 2;
    }
    size_t got = fread(buf + n, 1, cap - 1 - n, f);
    n += got;
    if (got == 0)
      break;
  }
  if (f != stdin)
    fclose(f);
  if (buf != NULL) {
    buf[n] = '\0';
    *len = n;
  }
  return buf;
}

/* The method descriptor for "Service/Method". */
static const ProtobufCMethodDescriptor *method_find(const char *arg, char *path, size_t len) {
  const char *slash = strchr(arg, '/');
  if (slash == NULL || strchr(slash + 1, '/') != NULL)
    return NULL;
  char service[256];
  snprintf(service, sizeof(service), "%.*s", (int)(slash - arg), arg);
  const ProtobufCServiceDescriptor *svc = NULL;
  if (strcmp(service, grpc__health__v1__health__descriptor.name) == 0 ||
      strcmp(service, "Health") == 0) {
    svc = &grpc__health__v1__health__descriptor;
  } else {
    svc = api_service_find(service);
    if (svc == NULL) {
      char full[300];
      snprintf(full, sizeof(full), "tlsplane.v1.%s", service);
      svc = api_service_find(full);
    }
  }
  if (svc == NULL)
    return NULL;
  const ProtobufCMethodDescriptor *m =
      protobuf_c_service_descriptor_get_method_by_name(svc, slash + 1);
  if (m != NULL)
    snprintf(path, len, "/%s/%s", svc->name, m->name);
  return m;
}

/* Whether path ("/pkg.Service/Method") streams from the server, as the
 * API's descriptor set (what reflection serves) says. */
static int method_streams(const char *path) {
  Google__Protobuf__FileDescriptorSet *set = google__protobuf__file_descriptor_set__unpack(
      NULL, tlsplane_descriptor_set_len, tlsplane_descriptor_set);
  int streams = 0;
  for (size_t f = 0; set != NULL && f < set->n_file; f++) {
    const Google__Protobuf__FileDescriptorProto *fd = set->file[f];
    for (size_t i = 0; i < fd->n_service; i++) {
      for (size_t j = 0; j < fd->service[i]->n_method; j++) {
        const Google__Protobuf__MethodDescriptorProto *m = fd->service[i]->method[j];
        char full[600];
        snprintf(full, sizeof(full), "/%s%s%s/%s", fd->package ? fd->package : "",
                 fd->package ? "." : "", fd->service[i]->name, m->name);
        if (strcmp(full, path) == 0)
          streams = m->has_server_streaming && m->server_streaming;
      }
    }
  }
  if (set != NULL)
    google__protobuf__file_descriptor_set__free_unpacked(set, NULL);
  return streams;
}

/* Prints a response; 0, or -1 (said on stderr). */
static int print_message(const ProtobufCMessage *msg, int flags, int quiet) {
  struct tp_err err = {0};
  char *json = NULL;
  if (pbjson_encode(msg, flags, &json, &err) != 0) {
    fprintf(stderr, "tlsplane-server call: the response: %s\n", err.msg);
    return -1;
  }
  if (!quiet) {
    printf("%s\n", json);
    fflush(stdout);
  }
  free(json);
  return 0;
}

/* A server-streaming call: each message on a line of its own. */
static int call_stream(const char *server, const char *path, const struct gclient_opts *o,
                       const ProtobufCMessage *req, const ProtobufCMessageDescriptor *out,
                       long max_messages, int quiet) {
  struct tp_err err = {0};
  struct gclient_stream *st = NULL;
  int status = 1;
  if (gclient_stream_open(server, path, o, &st, &err) != 0) {
    fprintf(stderr, "tlsplane-server call: %s: %s\n", gclient_status_name(err.status), err.msg);
    return 1;
  }
  if (gclient_stream_send_last(st, req) != 0) {
    /* The stream ended already: its status says why, below. */
  }
  for (long n = 0;;) {
    ProtobufCMessage *msg = NULL;
    int rc = gclient_stream_recv(st, out, &msg, &err);
    if (rc == 0) {
      status = 0;
      break;
    }
    if (rc < 0) {
      fprintf(stderr, "tlsplane-server call: %s: %s\n", gclient_status_name(err.status), err.msg);
      break;
    }
    rc = print_message(msg, 0, quiet);
    protobuf_c_message_free_unpacked(msg, NULL);
    if (rc != 0)
      break;
    if (max_messages > 0 && ++n >= max_messages) {
      status = 0;
      break;
    }
  }
  gclient_stream_close(st);
  return status;
}

/* A non-negative number option; -1 when it is not one. */
static long number_arg(const char *s, long max) {
  char *end = NULL;
  long v = strtol(s, &end, 10);
  return s[0] != '\0' && *end == '\0' && v >= 0 && v <= max ? v : -1;
}

int call_main(int argc, char **argv) {
  static const struct option longopts[] = {
      {"server", required_argument, NULL, 's'},   {"data-dir", required_argument, NULL, 'd'},
      {"ca", required_argument, NULL, 'c'},       {"token-file", required_argument, NULL, 't'},
      {"plaintext", no_argument, NULL, 'p'},      {"quiet", no_argument, NULL, 'q'},
      {"max-time", required_argument, NULL, 'T'}, {"max-messages", required_argument, NULL, 'n'},
      {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0}};
  const char *server = getenv("TLSPLANE_LISTEN"), *dir = getenv("TLSPLANE_DATA_DIR");
  const char *ca = NULL, *token_file = NULL;
  int plaintext = 0, quiet = 0, c;
  long max_time = -1, max_messages = 0;
  if (server == NULL || server[0] == '\0')
    server = "127.0.0.1:7443";
  if (dir == NULL || dir[0] == '\0')
    dir = "./var";
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
    switch (c) {
    case 's':
      server = optarg;
      break;
    case 'd':
      dir = optarg;
      break;
    case 'c':
      ca = optarg;
      break;
    case 't':
      token_file = optarg;
      break;
    case 'p':
      plaintext = 1;
      break;
    case 'q':
      quiet = 1;
      break;
    case 'T':
      if ((max_time = number_arg(optarg, 86400L * 365)) <= 0)
        return cli_usage_error(PROG, "--max-time: '%s' is not a number of seconds above 0", optarg);
      break;
    case 'n':
      if ((max_messages = number_arg(optarg, 1L << 30)) <= 0)
        return cli_usage_error(PROG, "--max-messages: '%s' is not a number above 0", optarg);
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      return cli_bad_option(PROG, c, argv, longopts);
    }
  }
  if (optind >= argc)
    return cli_usage_error(PROG, "SERVICE/METHOD is missing");
  if (argc - optind > 2)
    return cli_usage_error(PROG, "unexpected argument '%s' (the request is one argument)",
                           argv[optind + 2]);
  char path[600];
  const ProtobufCMethodDescriptor *method = method_find(argv[optind], path, sizeof(path));
  if (method == NULL) {
    fprintf(stderr, "tlsplane-server call: %s: no such method (SERVICE/METHOD)\n", argv[optind]);
    return 2;
  }
  const char *input = argc - optind == 2 ? argv[optind + 1] : "{}";
  char *text = NULL;
  size_t len = 0;
  if (input[0] == '@' || strcmp(input, "-") == 0) {
    text = slurp(input[0] == '@' ? input + 1 : input, &len);
    if (text == NULL) {
      fprintf(stderr, "tlsplane-server call: cannot read %s\n", input);
      return 2;
    }
  } else if ((text = strdup(input)) != NULL) {
    len = strlen(text);
  }
  struct tp_err err = {0};
  ProtobufCMessage *req = NULL;
  int rc = text != NULL ? pbjson_decode(method->input, text, len, &req, &err) : -1;
  if (text != NULL)
    OPENSSL_cleanse(text, len); /* requests carry private keys */
  free(text);
  if (rc != 0) {
    fprintf(stderr, "tlsplane-server call: the request is not a %s: %s\n", method->input->name,
            err.msg);
    return 2;
  }

  char file[4200];
  char *ca_pem = NULL, *token = NULL, *bearer = NULL;
  size_t ca_len = 0, token_len = 0;
  int status = 1;
  if (!plaintext) {
    if (ca == NULL) {
      snprintf(file, sizeof(file), "%s/ca.pem", dir);
      ca = file;
    }
    if ((ca_pem = slurp(ca, &ca_len)) == NULL) {
      fprintf(stderr, "tlsplane-server call: cannot read the CA %s (--ca, --data-dir)\n", ca);
      goto done;
    }
  }
  const char *env_token = getenv("TLSPLANE_TOKEN");
  if (token_file == NULL && env_token != NULL && env_token[0] != '\0') {
    token = strdup(env_token);
    token_len = token != NULL ? strlen(token) : 0;
  } else {
    char tfile[4200];
    if (token_file == NULL)
      snprintf(tfile, sizeof(tfile), "%s/admin.token", dir);
    token = slurp(token_file != NULL ? token_file : tfile, &token_len);
    if (token == NULL && token_file != NULL) {
      fprintf(stderr, "tlsplane-server call: cannot read %s\n", token_file);
      goto done;
    }
  }
  if (token != NULL) {
    while (token_len > 0 && (token[token_len - 1] == '\n' || token[token_len - 1] == '\r' ||
                             token[token_len - 1] == ' '))
      token[--token_len] = '\0';
    size_t blen = token_len + 8;
    if ((bearer = malloc(blen)) != NULL)
      snprintf(bearer, blen, "Bearer %s", token);
  }
  struct gclient_opts o = {.ca_pem = ca_pem, .authorization = bearer};
  int ms = max_time <= 0 ? 0 : max_time > INT_MAX / 1000 ? INT_MAX : (int)max_time * 1000;
  if (method_streams(path)) {
    o.stream_deadline_ms = ms;
    status = call_stream(server, path, &o, req, method->output, max_messages, quiet);
    goto done;
  }
  o.deadline_ms = ms > 0 ? ms : 60000;
  ProtobufCMessage *resp = NULL;
  if (gclient_unary(server, path, &o, req, method->output, &resp, &err) != 0) {
    fprintf(stderr, "tlsplane-server call: %s: %s\n", gclient_status_name(err.status), err.msg);
    goto done;
  }
  status = print_message(resp, PBJSON_PRETTY, quiet) == 0 ? 0 : 1;
  protobuf_c_message_free_unpacked(resp, NULL);
done:
  protobuf_c_message_free_unpacked(req, NULL);
  free(ca_pem);
  if (token != NULL) {
    OPENSSL_cleanse(token, token_len);
    free(token);
  }
  if (bearer != NULL) {
    OPENSSL_cleanse(bearer, strlen(bearer));
    free(bearer);
  }
  return status;
}
