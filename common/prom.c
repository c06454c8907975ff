/* The Prometheus text format (see prom.h). */
#include "prom.h"

void prom_label(FILE *f, const char *v) {
  for (; v != NULL && *v != '\0'; v++) {
    if (*v == '\\' || *v == '"')
      fputc('\\', f);
    if (*v == '\n')
      fputs("\\n", f);
    else
      fputc(*v, f);
  }
}

void prom_family(FILE *f, const char *name, const char *type, const char *help) {
  fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}
