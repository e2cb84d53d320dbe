/*
 * sl_event: one feed event (a stored message, or an update/delete of one) as the streaming
 * service passes it around: parsed once, encoded at most once per wire format, and shared by
 * reference among every subscriber that receives it.
 *
 * Reference counts are plain integers: events live on one event-loop thread.
 */
#ifndef SL_EVENT_H
#define SL_EVENT_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "sl_message.h"

typedef enum { SL_FMT_SSE = 0, SL_FMT_NDJSON, SL_FMT_WS, SL_FMT__COUNT } sl_format_t;

typedef struct sl_event {
    unsigned refcnt;
    int64_t seq;
    char channel[SL_CHANNEL_MAX + 1];
    char type[16];          /* "message", "update", "delete" */
    int64_t created_at_us;  /* of the message, 0 when unknown */
    int64_t received_us;    /* monotonic time it reached this process */
    h2o_iovec_t json;       /* the event's JSON object, owned */
    h2o_iovec_t enc[SL_FMT__COUNT]; /* frames, made on first use, owned */
} sl_event_t;

/* Parses a live-exchange payload: a message object with "seq", or an event object with "type",
 * "seq" and "channel". Returns a new event (refcnt 1), or NULL when it is not one. */
sl_event_t *sl_event_from_json(const char *json, size_t len);

/* A row of the feed (SL_DB_FEED_MESSAGES / SL_DB_FEED_EVENTS in sl_db.h): a message or an event.
 * refcnt 1; NULL when the row is not readable. */
sl_event_t *sl_event_from_row(const PGresult *res, int row);

/* A stored message (from the database), refcnt 1; NULL on no memory. */
sl_event_t *sl_event_from_message(const sl_message_t *m);

/* The event framed for fmt: SSE "id:/event:/data:" block, one NDJSON line, or the text of a
 * WebSocket {"type":…,"message":…} frame. Valid while the caller holds a reference. */
h2o_iovec_t sl_event_encode(sl_event_t *ev, sl_format_t fmt);

static inline sl_event_t *sl_event_retain(sl_event_t *ev)
{
    ev->refcnt++;
    return ev;
}
void sl_event_release(sl_event_t *ev);

#endif
