/*
 * sl_sse: the streaming service: the live feed (RabbitMQ) into the hub, the hub into SSE, NDJSON
 * and WebSocket streams, presence and occupancy shared with the other instances (sl_presence, over
 * the same RabbitMQ connection), GET /v1/channels and /v1/channels/{channel}/presence, pulls and
 * long-polls (GET /v1/messages?after=, sl_pull.h), plus /healthz, /readyz and /metrics. One h2o
 * event loop.
 */
#ifndef SL_SSE_H
#define SL_SSE_H

#define H2O_USE_LIBUV 0
#include <h2o.h>

#include "sl_presence.h"
#include "sl_pull.h"
#include "sl_stream.h"

/* Whether the client of req may see channel in GET /v1/channels and read its presence: 0 when it
 * may, else the HTTP status that refuses it (401: no or bad credentials, 403: not allowed). The
 * list leaves out every channel refused; the presence of one is answered with that status. The
 * hook for private channels (a token's channels claim); NULL: every channel is public. */
typedef int (*sl_sse_channel_filter_cb)(void *data, h2o_req_t *req, const char *channel);

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
    const char *presence_exchange;    /* fanout exchange of the instances' presence snapshots */
    long long presence_heartbeat_ms;  /* sl_presence_conf_t's, 0 for their defaults */
    long long presence_ttl_ms;
    long long presence_grace_ms;
    long long presence_max_users;
    sl_sse_channel_filter_cb channel_filter;
    void *channel_filter_data;
    sl_stream_conf_t stream;
    sl_jwt_t *jwt;                  /* readers' tokens (may be NULL or disabled: ignored); the caller's */
    const sl_chanpolicy_t *policy;  /* SLUICE_PRIVATE_CHANNELS (NULL: none private); the caller's */
    sl_pull_conf_t pull;         /* GET /v1/messages?after= (limit_max: stream.history_max) */
} sl_sse_conf_t;

typedef struct sl_sse sl_sse_t;

sl_sse_t *sl_sse_create(h2o_loop_t *loop, const sl_sse_conf_t *conf);
/* The sl_http handler: data is the sl_sse_t. */
int sl_sse_handle(void *data, h2o_req_t *req);
/* This instance's presence registry, for the streams: each subscription enters its channel and
 * leaves it when it ends; streams that asked for presence events listen (sl_presence.h). */
sl_presence_t *sl_sse_presence(sl_sse_t *s);
/* Ends every stream (shutdown). */
void sl_sse_close_streams(sl_sse_t *s);
size_t sl_sse_streams(const sl_sse_t *s);
/* Sends a last presence snapshot (the counts of the streams ended by sl_sse_close_streams go at
 * once everywhere; their users stay until the TTL, for clients that reconnect elsewhere), then
 * frees everything. */
void sl_sse_destroy(sl_sse_t *s);

#endif
