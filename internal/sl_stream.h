/*
 * sl_stream: live subscriptions over HTTP: Server-Sent Events and NDJSON streaming on
 * GET /v1/stream, and WebSocket subscriptions on GET /v1/ws.
 *
 * Every subscription starts with history read from the database (the last N messages, or every
 * message after a resume position), then goes on live from the hub, joined at the seam without
 * gap or duplicate (sl_hub.h). The transports share one output path: each event is encoded once
 * per format (sl_event.h) and queued by reference; a connection writes everything queued in one
 * go when its socket can take more. A connection whose queue passes out_max_bytes is cut off (it
 * can resume with Last-Event-ID / since) so a slow client never stalls the rest or grows memory.
 *
 * Transports plug in through one table of functions (struct sl_transport in sl_stream.c), as
 * Nchan's subscribers do. Loop thread only.
 */
#ifndef SL_STREAM_H
#define SL_STREAM_H

#define H2O_USE_LIBUV 0
#include <h2o.h>

#include "sl_hub.h"
#include "sl_pgpool.h"

typedef struct sl_stream_conf {
    long long history_default;  /* messages of history when the request names none */
    long long history_max;      /* largest history request */
    long long replay_max;       /* most messages replayed on resume before answering "reset" */
    long long out_max_bytes;    /* per-connection output queue before the client is cut off */
    long long heartbeat_ms;     /* idle time before a heartbeat */
    long long retry_ms;         /* the SSE retry: field */
    long long max_conns;        /* stream connections before 503 */
    long long max_channels;     /* channels per connection */
    long long ws_max_frame;     /* largest WebSocket message accepted */
} sl_stream_conf_t;

typedef struct sl_stream_stats {
    uint64_t connected[3];      /* now, by transport: sse, ndjson, websocket */
    uint64_t opened_total, events_sent, bytes_queued, slow_disconnects, resets, refused_full;
} sl_stream_stats_t;

typedef struct sl_streams sl_streams_t;

sl_streams_t *sl_streams_create(h2o_loop_t *loop, sl_hub_t *hub, sl_pgpool_t *pg, const sl_stream_conf_t *conf);

/* GET /v1/stream. Answers 400/503 itself when it must. Returns 0. */
int sl_streams_handle_stream(sl_streams_t *s, h2o_req_t *req);
/* GET /v1/ws (the upgrade request). Returns 0. */
int sl_streams_handle_ws(sl_streams_t *s, h2o_req_t *req);

const sl_stream_stats_t *sl_streams_stats(const sl_streams_t *s);
size_t sl_streams_count(const sl_streams_t *s);

/* Ends every stream (for shutdown); their sockets close as the loop runs. */
void sl_streams_close_all(sl_streams_t *s);
void sl_streams_destroy(sl_streams_t *s);

#endif
