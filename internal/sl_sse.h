/*
 * sl_sse: the streaming service: the live feed (RabbitMQ) into the hub, the hub into SSE, NDJSON
 * and WebSocket streams, plus /healthz, /readyz and /metrics. One h2o event loop.
 */
#ifndef SL_SSE_H
#define SL_SSE_H

#define H2O_USE_LIBUV 0
#include <h2o.h>

#include "sl_stream.h"

typedef struct sl_sse_conf {
    const char *amqp_url;
    const char *db_url;
    const char *live_exchange;
    const char *instance;        /* names this instance in the broker's connection list */
    const char *api_url;         /* where the page posts and reads history ("" = this host, port 8080) */
    long long db_conns;          /* for histories; the hub has one more connection of its own */
    long long db_connect_timeout_ms; /* per database host and attempt (0: the pool's default) */
    long long db_query_timeout_ms;   /* from query to answer (0: the pool's default) */
    long long check_ms;          /* how often the hub compares its position with the database */
    long long live_backlog;      /* cap of this instance's live queue */
    long long recent;            /* delivered events kept in memory to serve history without the database */
    long long seam_max;          /* events a stream holds while it reads its history (sl_hub.h) */
    sl_stream_conf_t stream;
} sl_sse_conf_t;

typedef struct sl_sse sl_sse_t;

sl_sse_t *sl_sse_create(h2o_loop_t *loop, const sl_sse_conf_t *conf);
/* The sl_http handler: data is the sl_sse_t. */
int sl_sse_handle(void *data, h2o_req_t *req);
/* Ends every stream (shutdown). */
void sl_sse_close_streams(sl_sse_t *s);
size_t sl_sse_streams(const sl_sse_t *s);
void sl_sse_destroy(sl_sse_t *s);

#endif
