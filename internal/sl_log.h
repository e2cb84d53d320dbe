/*
 * sl_log: one structured line per event (logfmt: key=value pairs) on stderr.
 *
 * Every line starts with ts=, level= and svc=; the caller's format supplies the rest and by
 * convention starts with event=<name>. Lines below the threshold are dropped before anything is
 * formatted, so debug logging on a hot path costs one comparison.
 */
#ifndef SL_LOG_H
#define SL_LOG_H

#include <stddef.h>

typedef enum { SL_LOG_DEBUG = 0, SL_LOG_INFO, SL_LOG_WARN, SL_LOG_ERROR } sl_log_level_t;

extern sl_log_level_t sl_log_threshold;

/* Sets the service tag and reads SLUICE_LOG_LEVEL (debug|info|warn|error, default info).
 * Call once at start, before any other thread exists. */
void sl_log_init(const char *service);

/* Writes one line atomically (a single write(2)); long lines are truncated at 4 KiB. */
void sl_log_emit(sl_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define sl_log(level, ...)                                                                                                    \
    do {                                                                                                                      \
        if ((level) >= sl_log_threshold)                                                                                      \
            sl_log_emit((level), __VA_ARGS__);                                                                                \
    } while (0)
#define SL_DEBUG(...) sl_log(SL_LOG_DEBUG, __VA_ARGS__)
#define SL_INFO(...) sl_log(SL_LOG_INFO, __VA_ARGS__)
#define SL_WARN(...) sl_log(SL_LOG_WARN, __VA_ARGS__)
#define SL_ERROR(...) sl_log(SL_LOG_ERROR, __VA_ARGS__)

/* Copies s into buf as a logfmt value: quoted, with quotes, backslashes and control characters
 * escaped, cut to fit. Returns buf. For messages that may contain spaces (errors from libraries). */
const char *sl_log_quote(char *buf, size_t size, const char *s);

#endif
