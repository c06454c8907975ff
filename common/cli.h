/* What the command lines of tlsplane-server and tlsplane-agent share: a
 * wrong command line said in one line (and where to read more), and
 * --version. Output goes to stdout or stderr as usage text, never through
 * the logger. */
#ifndef TLSPLANE_COMMON_CLI_H
#define TLSPLANE_COMMON_CLI_H

#include <getopt.h>
#include <stddef.h>
#include <stdio.h>

/* The exit status of bad usage. */
#define CLI_EXIT_USAGE 2

/* After getopt_long (called with opterr = 0 and an optstring that starts
 * with ':') returned '?' or ':': one line on stderr naming the option and
 * what is wrong with it, as getopt would ("tlsplane-server: unrecognized
 * option '--bogus'"), then "Try 'PROG --help'.". prog names the command
 * ("tlsplane-server", "tlsplane-server init"); longopts is the table
 * getopt_long was given. Returns CLI_EXIT_USAGE. */
int cli_bad_option(const char *prog, int c, char **argv, const struct option *longopts);

/* Any other wrong command line: "PROG: " and the message in one line on
 * stderr, then the same "Try" line. Returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *prog, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Sets the logger's level (log_level_set) from text, a flag's argument or
 * a variable's value, which `what` names ("--log-level",
 * "TLSPLANE_LOG_LEVEL"): 0, or CLI_EXIT_USAGE after cli_usage_error when
 * text is no level. NULL or "": nothing changes. */
int cli_log_level(const char *prog, const char *what, const char *text);
/* The same for the format (log_format_set). */
int cli_log_format(const char *prog, const char *what, const char *text);

/* A library a binary links beyond those of tlsplane_common, and the
 * version it reports at run time. */
struct cli_lib {
  const char *name;
  const char *version;
};

/* --version: "PROG VERSION", "commit HASH" (the git commit the build was
 * made from, "-modified" when the tree had changes; "unknown" outside a
 * git checkout), then one "NAME VERSION" line per library as it reports
 * itself at run time: OpenSSL, grpc (its core version), protobuf-c and
 * jansson, then extra[0..n). */
void cli_version_print(FILE *out, const char *prog, const struct cli_lib *extra, size_t n);

/* The project's version ("0.1.0"). */
const char *cli_project_version(void);

#endif
