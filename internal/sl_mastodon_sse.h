/*
 * sl_mastodon_sse: an incremental parser of text/event-stream (server-sent events, as Mastodon's
 * streaming API sends them). Bytes go in as they arrive, split anywhere (mid-line, between CR and
 * LF, inside a UTF-8 sequence); each complete event comes out once, through a callback, with its
 * type and its data (several data lines joined with "\n").
 *
 * Lines end with LF, CRLF or CR. A line starting with ':' is a comment (Mastodon's ":)" greeting,
 * its ":thump" heartbeats) and goes to the comment callback. Fields other than "event" and "data"
 * ("id", "retry", unknown ones) are ignored; an event without data is not dispatched; a type not
 * given is "message". An event larger than max_event bytes is dropped whole and counted, so a broken
 * or hostile server cannot make the parser grow without bound.
 *
 * Threading: one parser per connection, used by one thread.
 */
#ifndef SL_MASTODON_SSE_H
#define SL_MASTODON_SSE_H

#include <stddef.h>
#include <stdint.h>

#include "sl_buf.h"

/* One event. data is not NUL-terminated; it is valid during the call only. A non-zero return
 * stops sl_msse_feed, which returns that value. */
typedef int (*sl_msse_event_cb)(void *arg, const char *event, const char *data, size_t len);
/* One comment line, without its ':' (may be NULL in sl_msse_init). */
typedef void (*sl_msse_comment_cb)(void *arg, const char *text, size_t len);

#define SL_MSSE_EVENT_MAX 64

typedef struct sl_msse {
    sl_buf_t line;                   /* the line being read, without its end */
    sl_buf_t data;                   /* data of the event being read */
    char event[SL_MSSE_EVENT_MAX];   /* its type ("" until an event: line) */
    int has_data;
    int pending_cr;                  /* the last byte was a CR: an LF next ends nothing more */
    int line_too_long, event_too_big;
    int at_start;                    /* nothing read yet: a byte-order mark is skipped */
    size_t max_event;
    uint64_t events, comments, dropped;
    sl_msse_event_cb on_event;
    sl_msse_comment_cb on_comment;
    void *arg;
} sl_msse_t;

void sl_msse_init(sl_msse_t *p, size_t max_event, sl_msse_event_cb on_event, sl_msse_comment_cb on_comment, void *arg);

/* Parses len bytes. Returns 0, or the first non-zero return of on_event (the rest of buf is then
 * not parsed; reset the parser before using it again). */
int sl_msse_feed(sl_msse_t *p, const char *buf, size_t len);

/* Forgets a half-read event and line (a new connection starts afresh). Counters stay. */
void sl_msse_reset(sl_msse_t *p);

void sl_msse_free(sl_msse_t *p);

#endif
