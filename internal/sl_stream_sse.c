/*
 * sl_stream_sse: Server-Sent Events on GET /v1/stream (the default format): what differs from
 * NDJSON; the streaming itself is sl_stream_http.c's. Events are framed by sl_event_encode
 * (SL_FMT_SSE: id:, event:, data: lines).
 */
#include "sl_stream_int.h"

#include <stdio.h>

/* The client's reconnection delay, before anything else. */
static int sse_first(const sl_stream_conf_t *conf, char *buf, size_t size)
{
    return snprintf(buf, size, "retry: %lld\n\n", conf->retry_ms);
}

static int sse_reset(char *buf, size_t size, long long since)
{
    return snprintf(buf, size, "event: reset\ndata: {\"reason\":\"too_old\",\"since\":%lld}\n\n", since);
}

/* Its own event type: an EventSource reconnects by itself when a stream ends, with the same URL
 * (and so the same expired ?token=): a page listens for this one to reconnect with a new token. */
static int sse_expired(char *buf, size_t size, long long exp)
{
    return snprintf(buf, size, "event: token_expired\ndata: {\"reason\":\"token_expired\",\"exp\":%lld}\n\n", exp);
}

static const struct sl_http_format sse_format = {"text/event-stream", ": heartbeat\n\n", sse_first, sse_reset,
                                                 sse_expired};

const struct sl_transport sl_stream_sse = {
    .name = "sse",
    .kind = T_SSE,
    .fmt = SL_FMT_SSE,
    .flush = sl_stream_http_flush,
    .abort = sl_stream_http_abort,
    .heartbeat = sl_stream_http_heartbeat,
    .gone = sl_stream_http_gone,
    .queue = sl_stream_http_queue,
    .http = &sse_format,
};
