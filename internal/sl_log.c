/*
 * sl_log: logfmt lines on stderr, one write(2) per event so lines from several processes
 * sharing a log file never interleave.
 */
#include "sl_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

sl_log_level_t sl_log_threshold = SL_LOG_INFO;
static const char *service_name = "sluice";
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void sl_log_init(const char *service)
{
    const char *lvl = getenv("SLUICE_LOG_LEVEL");
    service_name = service;
    if (lvl == NULL)
        return;
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(lvl, level_names[i]) == 0)
            sl_log_threshold = (sl_log_level_t)i;
    }
}

void sl_log_emit(sl_log_level_t level, const char *fmt, ...)
{
    char line[4096];
    struct timeval tv;
    struct tm tm;
    size_t off;
    int n;
    va_list ap;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    off = strftime(line, sizeof(line), "ts=%Y-%m-%dT%H:%M:%S", &tm);
    n = snprintf(line + off, sizeof(line) - off, ".%06ldZ level=%s svc=%s ", (long)tv.tv_usec, level_names[level],
                 service_name);
    if (n > 0)
        off += (size_t)n;
    va_start(ap, fmt);
    n = vsnprintf(line + off, sizeof(line) - off - 1, fmt, ap);
    va_end(ap);
    if (n > 0)
        off += (size_t)n < sizeof(line) - off - 1 ? (size_t)n : sizeof(line) - off - 2;
    line[off++] = '\n';
    ssize_t unused = write(STDERR_FILENO, line, off);
    (void)unused;
}

const char *sl_log_quote(char *buf, size_t size, const char *s)
{
    size_t o = 0;
    if (size < 3) {
        if (size > 0)
            buf[0] = '\0';
        return buf;
    }
    buf[o++] = '"';
    for (; s != NULL && *s != '\0' && o + 3 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c < 0x20) {
            buf[o++] = ' '; /* keep the line one line */
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}
