/* The shared parts of the command lines (cli.h). */
#include "cli.h"

#include <grpc/grpc.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <protobuf-c/protobuf-c.h>
#include <stdarg.h>
#include <string.h>

#include "log.h"
#include "tlsplane_git.h" /* TLSPLANE_GIT_COMMIT, made at build time (cmake/git_commit.cmake) */

#ifndef TLSPLANE_VERSION
#define TLSPLANE_VERSION "0.0.0"
#endif

static void try_help(const char *prog) {
  fprintf(stderr, "Try '%s --help'.\n", prog);
}

/* The long option of longopts that argv element arg ("--name" or
 * "--name=value") names, exactly or by a unique abbreviation as
 * getopt_long takes them; NULL when none does. *len receives the length
 * of the name as written, *matches how many options start with it (more
 * than one: an ambiguous abbreviation). */
static const struct option *long_find(const char *arg, const struct option *longopts, size_t *len,
                                      int *matches) {
  const char *name = arg + 2;
  *len = strcspn(name, "=");
  *matches = 0;
  const struct option *exact = NULL, *prefix = NULL;
  for (const struct option *o = longopts; o->name != NULL; o++) {
    if (strncmp(o->name, name, *len) != 0)
      continue;
    (*matches)++;
    prefix = o;
    if (o->name[*len] == '\0')
      exact = o;
  }
  return exact != NULL ? exact : *matches == 1 ? prefix : NULL;
}

int cli_bad_option(const char *prog, int c, char **argv, const struct option *longopts) {
  /* getopt_long has moved optind past a long option it refused; a short
   * one may sit inside a cluster ("-xh"), which only optopt names. optopt
   * is 0 for an unknown long option, the option's val for a known one
   * given without its argument or with one it does not take. */
  const char *arg = optind > 0 ? argv[optind - 1] : NULL;
  size_t len = 0;
  int matches = 0;
  const struct option *o = NULL;
  int is_long = arg != NULL && strncmp(arg, "--", 2) == 0 && arg[2] != '\0';
  if (is_long) {
    o = long_find(arg, longopts, &len, &matches);
    if (optopt != 0 && (o == NULL || o->val != optopt))
      is_long = 0; /* a short option after a long one */
  }
  if (!is_long) {
    if (c == ':')
      fprintf(stderr, "%s: option requires an argument -- '%c'\n", prog, optopt);
    else
      fprintf(stderr, "%s: invalid option -- '%c'\n", prog, optopt);
  } else if (c == ':') {
    fprintf(stderr, "%s: option '--%s' requires an argument\n", prog, o != NULL ? o->name : "");
  } else if (optopt != 0) {
    fprintf(stderr, "%s: option '--%s' doesn't allow an argument\n", prog, o->name);
  } else if (matches > 1) {
    fprintf(stderr, "%s: option '%.*s' is ambiguous\n", prog, (int)len + 2, arg);
  } else {
    fprintf(stderr, "%s: unrecognized option '%.*s'\n", prog, (int)len + 2, arg);
  }
  try_help(prog);
  return CLI_EXIT_USAGE;
}

int cli_usage_error(const char *prog, const char *fmt, ...) {
  fprintf(stderr, "%s: ", prog);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  try_help(prog);
  return CLI_EXIT_USAGE;
}

int cli_log_level(const char *prog, const char *what, const char *text) {
  enum log_level level;
  if (text == NULL || text[0] == '\0')
    return 0;
  if (log_level_parse(text, &level) != 0)
    return cli_usage_error(prog, "%s: '%s' is not a level: debug, info, warn or error", what, text);
  log_level_set(level);
  return 0;
}

int cli_log_format(const char *prog, const char *what, const char *text) {
  enum log_format format;
  if (text == NULL || text[0] == '\0')
    return 0;
  if (log_format_parse(text, &format) != 0)
    return cli_usage_error(prog, "%s: '%s' is not a format: text or json", what, text);
  log_format_set(format);
  return 0;
}

const char *cli_project_version(void) {
  return TLSPLANE_VERSION;
}

void cli_version_print(FILE *out, const char *prog, const struct cli_lib *extra, size_t n) {
  fprintf(out, "%s %s\n", prog, TLSPLANE_VERSION);
  fprintf(out, "commit %s\n", TLSPLANE_GIT_COMMIT);
  /* OpenSSL's own words: "OpenSSL 3.0.15 3 Sep 2024". */
  const char *ossl = OpenSSL_version(OPENSSL_VERSION);
  if (strncmp(ossl, "OpenSSL ", 8) == 0)
    ossl += 8;
  fprintf(out, "openssl %s\n", ossl);
  fprintf(out, "grpc %s (grpc core; \"g\" stands for \"%s\")\n", grpc_version_string(),
          grpc_g_stands_for());
  fprintf(out, "protobuf-c %s\n", protobuf_c_version());
  fprintf(out, "jansson %s\n", jansson_version_str());
  for (size_t i = 0; i < n; i++)
    fprintf(out, "%s %s\n", extra[i].name, extra[i].version);
}
