/* tlsplane-server call (see call.h). */
#include "call.h"

#include <getopt.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cli.h"
#include "gclient.h"
#include "grpc/health/v1/health.pb-c.h"
#include "pbjson.h"

#define CALL_INPUT_MAX (64u << 20)
#define PROG "tlsplane-server call"

static void usage(FILE *f) {
  fprintf(f,
          "usage: tlsplane-server call [--server HOST:PORT] [--data-dir DIR] [--ca FILE]\n"
          "                            [--token-file FILE] [--plaintext] [--quiet]\n"
          "                            SERVICE/METHOD [JSON | @FILE | -]\n"
          "\n"
          "One unary call of the API; the request (default {}) and the response in\n"
          "protobuf's JSON mapping, as grpcurl takes and prints them. SERVICE may leave\n"
          "out \"tlsplane.v1.\": CertificateService/GetCertificate.\n"
          "\n"
          "  --server HOST:PORT  the API                  [TLSPLANE_LISTEN, 127.0.0.1:7443]\n"
          "  --data-dir DIR      where the defaults below live       [TLSPLANE_DATA_DIR, ./var]\n"
          "  --ca FILE           verifies the server                      (default DIR/ca.pem)\n"
          "  --token-file FILE   bearer token          [TLSPLANE_TOKEN; default DIR/admin.token]\n"
          "  --plaintext         no TLS (a server started with --plaintext)\n"
          "  --quiet             print nothing on success\n"
          "  -h, --help          this text\n"
          "Exit status: 0 when the call succeeded, 1 when it failed (the gRPC status and\n"
          "message on stderr), 2 on bad usage.\n");
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

int call_main(int argc, char **argv) {
  static const struct option longopts[] = {
      {"server", required_argument, NULL, 's'}, {"data-dir", required_argument, NULL, 'd'},
      {"ca", required_argument, NULL, 'c'},     {"token-file", required_argument, NULL, 't'},
      {"plaintext", no_argument, NULL, 'p'},    {"quiet", no_argument, NULL, 'q'},
      {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
  const char *server = getenv("TLSPLANE_LISTEN"), *dir = getenv("TLSPLANE_DATA_DIR");
  const char *ca = NULL, *token_file = NULL;
  int plaintext = 0, quiet = 0, c;
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
  struct gclient_opts o = {.ca_pem = ca_pem, .authorization = bearer, .deadline_ms = 60000};
  ProtobufCMessage *resp = NULL;
  if (gclient_unary(server, path, &o, req, method->output, &resp, &err) != 0) {
    fprintf(stderr, "tlsplane-server call: %s: %s\n", gclient_status_name(err.status), err.msg);
    goto done;
  }
  char *json = NULL;
  if (pbjson_encode(resp, PBJSON_PRETTY, &json, &err) != 0) {
    fprintf(stderr, "tlsplane-server call: the response: %s\n", err.msg);
  } else {
    if (!quiet)
      printf("%s\n", json);
    status = 0;
  }
  free(json);
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
