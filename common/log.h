/* Logging: one line per event on stderr, "time level component: message".
 * Never pass secrets (keys, tokens, passphrases) to these functions. */
#ifndef TLSPLANE_COMMON_LOG_H
#define TLSPLANE_COMMON_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_msg(enum log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_info(component, ...) log_msg(LOG_INFO, component, __VA_ARGS__)
#define log_warn(component, ...) log_msg(LOG_WARN, component, __VA_ARGS__)
#define log_error(component, ...) log_msg(LOG_ERROR, component, __VA_ARGS__)

#endif
