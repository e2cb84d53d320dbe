/*
 * sl_stream_ndjson: NDJSON streaming on GET /v1/stream (format=ndjson, or Accept:
 * application/x-ndjson): what differs from SSE; the streaming itself is sl_stream_http.c's.
 * Events are one JSON object a line (sl_event_encode, SL_FMT_NDJSON); an empty line keeps the
 * connection alive.
 */
#include "sl_stream_int.h"

#include <stdio.h>

static int ndjson_reset(char *buf, size_t size, long long since)
{
    return snprintf(buf, size, "{\"type\":\"reset\",\"reason\":\"too_old\",\"since\":%lld}\n", since);
}

static int ndjson_expired(char *buf, size_t size, long long exp)
{
    return snprintf(buf, size, "{\"type\":\"token_expired\",\"reason\":\"token_expired\",\"exp\":%lld}\n", exp);
}

/* No first bytes of its own: the body starts with a heartbeat. */
static const struct sl_http_format ndjson_format = {"application/x-ndjson", "\n", NULL, ndjson_reset, ndjson_expired};

const struct sl_transport sl_stream_ndjson = {
    .name = "ndjson",
    .kind = T_NDJSON,
    .fmt = SL_FMT_NDJSON,
    .flush = sl_stream_http_flush,
    .abort = sl_stream_http_abort,
    .heartbeat = sl_stream_http_heartbeat,
    .gone = sl_stream_http_gone,
    .queue = sl_stream_http_queue,
    .http = &ndjson_format,
};
