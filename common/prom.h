/* The Prometheus text format (0.0.4) as both binaries' /metrics write it. */
#ifndef TLSPLANE_COMMON_PROM_H
#define TLSPLANE_COMMON_PROM_H

#include <stdio.h>

/* A label value: backslash, double quote and newline escaped. NULL: "". */
void prom_label(FILE *f, const char *v);

/* A family's HELP and TYPE lines. */
void prom_family(FILE *f, const char *name, const char *type, const char *help);

#endif
