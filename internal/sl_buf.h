/*
 * sl_buf: a growable byte buffer for building responses and metrics text.
 * Allocation failure aborts the process (as h2o's own allocators do): a service that cannot
 * allocate a few KiB cannot answer anything useful either.
 */
#ifndef SL_BUF_H
#define SL_BUF_H

#include <stddef.h>

typedef struct sl_buf {
    char *data; /* NUL-terminated while len < cap; NULL until the first append */
    size_t len, cap;
} sl_buf_t;

#define SL_BUF_INIT {NULL, 0, 0}

void sl_buf_reserve(sl_buf_t *b, size_t extra);
void sl_buf_append(sl_buf_t *b, const void *p, size_t n);
void sl_buf_appends(sl_buf_t *b, const char *s);
void sl_buf_appendf(sl_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s (NUL-terminated) as a JSON string: quotes, backslashes and control characters escaped
 * (as jansson writes them), everything else copied as is (the caller checked it is UTF-8). */
void sl_buf_append_json_string(sl_buf_t *b, const char *s);
void sl_buf_free(sl_buf_t *b);

#endif
