/*
 * sluice-sse: live streams (SSE, NDJSON, WebSocket) of the feed, each starting with history and
 * resumable. Wiring only: the work is internal/sl_sse.c, sl_stream.c and sl_hub.c.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "sl_amqp.h"
#include "sl_chanpolicy.h"
#include "sl_config.h"
#include "sl_db.h"
#include "sl_http.h"
#include "sl_jwt.h"
#include "sl_log.h"
#include "sl_migrator.h"
#include "sl_service.h"
#include "sl_sse.h"
#include "sl_time.h"

static volatile sig_atomic_t stopping;

static size_t streams(void *sse)
{
    return sl_sse_streams(sse);
}

int main(int argc, char **argv)
{
    const char *host, *instance, *private_channels;
    long long port, drain_s, migrate_wait;
    sl_http_opts_t http_opts;
    sl_jwt_conf_t jwt_conf;
    sl_sse_conf_t conf;
    memset(&conf, 0, sizeof(conf)); /* channel_filter: none, every channel is public */
    sl_opt_t opts[] = {
        {"host", "SLUICE_SSE_HOST", SL_OPT_STR, &host, "127.0.0.1", 0, 0, "address to listen on"},
        {"port", "SLUICE_SSE_PORT", SL_OPT_INT, &port, "8081", 1, 65535, "port to listen on"},
        {"amqp-url", "SLUICE_AMQP_URL", SL_OPT_STR, &conf.amqp_url, "amqp://guest:guest@127.0.0.1:5672/", 0, 0,
         "RabbitMQ URL, or a comma-separated list of the nodes' URLs"},
        {"db-url", "SLUICE_DB_URL", SL_OPT_STR, &conf.db_url, "postgresql://postgres@127.0.0.1:5433/sluice", 0, 0,
         "PostgreSQL/CockroachDB URL"},
        {"live-exchange", "SLUICE_LIVE_EXCHANGE", SL_OPT_STR, &conf.live_exchange, "sluice.live", 0, 0,
         "topic exchange the persister publishes stored messages to"},
        {"presence-exchange", "SLUICE_PRESENCE_EXCHANGE", SL_OPT_STR, &conf.presence_exchange, "sluice.presence", 0, 0,
         "fanout exchange the sse instances share their presence snapshots through"},
        {"presence-heartbeat-ms", "SLUICE_PRESENCE_HEARTBEAT_MS", SL_OPT_INT, &conf.presence_heartbeat_ms, "2000", 10,
         600000, "how often this instance publishes its presence snapshot"},
        {"presence-ttl-ms", "SLUICE_PRESENCE_TTL_MS", SL_OPT_INT, &conf.presence_ttl_ms, "0", 0, 3600000,
         "an instance whose last snapshot is older than this is dropped (0: 3 x the heartbeat)"},
        {"presence-grace-ms", "SLUICE_PRESENCE_GRACE_MS", SL_OPT_INT, &conf.presence_grace_ms, "0", 0, 3600000,
         "a user whose last subscription ended stays present this long (0: one heartbeat)"},
        {"presence-max-users", "SLUICE_PRESENCE_MAX_USERS", SL_OPT_INT, &conf.presence_max_users, "1000", 1, 1e6,
         "users listed per channel and instance; past it the presence set is truncated (occupancy stays exact)"},
        {"instance", "SLUICE_SSE_INSTANCE", SL_OPT_STR, &instance, "", 0, 0,
         "name of this instance (default: host:port)"},
        {"api-url", "SLUICE_SSE_API_URL", SL_OPT_STR, &conf.api_url, "", 0, 0,
         "api base URL the web page uses (empty: the page's host, port 8080)"},
        {"db-conns", "SLUICE_SSE_DB_CONNS", SL_OPT_INT, &conf.db_conns, "4", 1, 64, "database connections"},
        {"db-connect-timeout-ms", "SLUICE_DB_CONNECT_TIMEOUT_MS", SL_OPT_INT, &conf.db_connect_timeout_ms, "5000", 100,
         600000, "deadline of a database connection attempt, per host (TCP, TLS, login, session setup)"},
        {"db-query-timeout-ms", "SLUICE_DB_QUERY_TIMEOUT_MS", SL_OPT_INT, &conf.db_query_timeout_ms, "10000", 100,
         3600000, "deadline of a query, from asking to answer (the session's statement_timeout is 90% of it)"},
        {"check-ms", "SLUICE_SSE_CHECK_MS", SL_OPT_INT, &conf.check_ms, "1000", 10, 600000,
         "how often to compare the live position with the database (and to read the retention's low-water marks)"},
        {"live-backlog", "SLUICE_SSE_LIVE_BACKLOG", SL_OPT_INT, &conf.live_backlog, "100000", 1, 1e9,
         "cap of this instance's live queue in messages, one per committed batch (oldest dropped, then "
         "backfilled; 64 MiB at most)"},
        {"recent", "SLUICE_SSE_RECENT", SL_OPT_INT, &conf.recent, "10000", 0, 1e7,
         "recent events kept in memory to serve history and resume without the database"},
        {"seam-max", "SLUICE_SSE_SEAM_MAX", SL_OPT_INT, &conf.seam_max, "10000", 1, 1e7,
         "events a stream holds while it reads its history; past it, it reads what it missed from the database"},
        {"history", "SLUICE_SSE_HISTORY", SL_OPT_INT, &conf.stream.history_default, "20", 0, 1000,
         "messages of history when a request names none"},
        {"history-max", "SLUICE_SSE_HISTORY_MAX", SL_OPT_INT, &conf.stream.history_max, "1000", 0, 100000,
         "largest history a request may ask"},
        {"replay-max", "SLUICE_SSE_REPLAY_MAX", SL_OPT_INT, &conf.stream.replay_max, "10000", 1, 1e7,
         "most messages replayed on resume; beyond, a reset event and newest history"},
        {"out-max-bytes", "SLUICE_SSE_OUT_MAX_BYTES", SL_OPT_INT, &conf.stream.out_max_bytes, "1048576", 1024, 1e9,
         "per-connection output queue before a slow client is cut off"},
        {"heartbeat-ms", "SLUICE_SSE_HEARTBEAT_MS", SL_OPT_INT, &conf.stream.heartbeat_ms, "15000", 10, 3600000,
         "idle time before a heartbeat"},
        {"retry-ms", "SLUICE_SSE_RETRY_MS", SL_OPT_INT, &conf.stream.retry_ms, "3000", 0, 3600000,
         "reconnect delay announced to EventSource clients"},
        {"max-conns", "SLUICE_SSE_MAX_CONNS", SL_OPT_INT, &conf.stream.max_conns, "10000", 1, 1e7,
         "stream connections before 503"},
        {"max-channels", "SLUICE_SSE_MAX_CHANNELS", SL_OPT_INT, &conf.stream.max_channels, "32", 1, 1000,
         "channels per connection"},
        {"ws-max-frame", "SLUICE_SSE_WS_MAX_FRAME", SL_OPT_INT, &conf.stream.ws_max_frame, "4096", 64, 1e7,
         "largest WebSocket message accepted (larger: close 1009)"},
        {"ws-rate", "SLUICE_SSE_WS_RATE", SL_OPT_DOUBLE, &conf.stream.ws_rate, "10", 0, 1e6,
         "messages per second a WebSocket client may send (more: close 1008); 0: no limit"},
        {"ws-burst", "SLUICE_SSE_WS_BURST", SL_OPT_DOUBLE, &conf.stream.ws_burst, "50", 1, 1e6,
         "messages a WebSocket client may send at once before ws-rate applies"},
        {"history-concurrency", "SLUICE_SSE_HISTORY_CONCURRENCY", SL_OPT_INT, &conf.stream.history_concurrency, "32",
         1, 1e6, "histories (history and resume reads) this instance reads at once; more: 503 history_busy"},
        {"history-per-client", "SLUICE_SSE_HISTORY_PER_CLIENT", SL_OPT_INT, &conf.stream.history_per_client, "4", 1,
         1e6, "histories one client address may read at once; more: 503 history_busy"},
        {"pull-max-waiters", "SLUICE_SSE_PULL_MAX_WAITERS", SL_OPT_INT, &conf.pull.max_waiters, "10000", 1, 1e7,
         "long-polls (GET /v1/messages?after=&wait=) this instance holds at once; more: 503 too_many_waiters"},
        {"pull-waiters-per-client", "SLUICE_SSE_PULL_WAITERS_PER_CLIENT", SL_OPT_INT, &conf.pull.waiters_per_client,
         "64", 1, 1e7, "long-polls one client address may hold at once; more: 503 too_many_waiters"},
        {"migrate-wait", "SLUICE_MIGRATE_WAIT", SL_OPT_INT, &migrate_wait, "10", 0, 3600,
         "seconds to wait for the database at start"},
        {"private-channels", "SLUICE_PRIVATE_CHANNELS", SL_OPT_STR, &private_channels, "", 0, 0,
         "channels (names and prefix* patterns, comma-separated) only readers with a token covering them may read; "
         "empty: none"},
        SL_JWT_OPTIONS(&jwt_conf),
        SL_HTTP_OPTIONS(&http_opts),
        {"drain-timeout", "SLUICE_DRAIN_TIMEOUT", SL_OPT_INT, &drain_s, "5", 0, 3600,
         "seconds to close streams on SIGTERM"},
    };
    int r = sl_config_parse(opts, sizeof(opts) / sizeof(opts[0]), argc, argv, "sluice-sse",
                            "sluice sse: live streams of the feed (SSE, NDJSON, WebSocket) with history and resume.");
    if (r != 0)
        return r > 0 ? 0 : 2;
    if (sl_service_check("sluice-sse", conf.amqp_url, &http_opts) != 0)
        return 2;
    if (conf.presence_ttl_ms != 0 && conf.presence_ttl_ms <= conf.presence_heartbeat_ms) {
        fprintf(stderr, "sluice-sse: SLUICE_PRESENCE_TTL_MS (%lld) must be above SLUICE_PRESENCE_HEARTBEAT_MS (%lld)\n",
                conf.presence_ttl_ms, conf.presence_heartbeat_ms);
        return 2;
    }
    sl_log_init("sse");
    char err[512];
    sl_jwt_t *jwt = sl_jwt_create(&jwt_conf, err, sizeof(err));
    sl_chanpolicy_t *policy = jwt != NULL ? sl_chanpolicy_create(private_channels, err, sizeof(err)) : NULL;
    if (jwt == NULL || policy == NULL) {
        fprintf(stderr, "sluice-sse: %s\n", err);
        sl_jwt_destroy(jwt);
        return 2;
    }
    conf.jwt = jwt;
    conf.policy = policy;
    if (sl_chanpolicy_any_private(policy) && !sl_jwt_enabled(jwt))
        SL_WARN("event=private_channels_closed reason=\"SLUICE_PRIVATE_CHANNELS without a JWT key: nobody can read "
                "the private channels\"");
    else
        SL_INFO("event=reader_access jwt=%d private_channels=%d", sl_jwt_enabled(jwt),
                sl_chanpolicy_any_private(policy));
    sl_http_trap_signals(&stopping);
    char name[128];
    if (*instance == '\0') {
        snprintf(name, sizeof(name), "%s:%lld pid %d", host, port, (int)getpid());
        instance = name;
    }
    conf.instance = instance;
    conf.pull.limit_max = conf.stream.history_max > 0 ? conf.stream.history_max : 1;
    /* On a thread of its own: a database that hangs must not keep the service from listening. */
    sl_migrator_t *migrator = sl_migrator_start(conf.db_url, (int)migrate_wait, &stopping);
    if (migrator == NULL)
        sl_db_migrate_url(conf.db_url, (int)migrate_wait, &stopping);

    /* Each stream is a descriptor: take what the system allows, and never promise more. */
    long nofile = sl_http_raise_nofile();
    if (nofile > 0 && conf.stream.max_conns > nofile - 64) {
        SL_WARN("event=max_conns_capped max_conns=%lld open_files_limit=%ld", conf.stream.max_conns, nofile);
        conf.stream.max_conns = nofile - 64 > 1 ? nofile - 64 : 1;
    }

    sl_http_server_t server;
    sl_sse_t *sse;
    if (sl_http_setup(&server, sl_sse_handle, NULL, 64 * 1024, &http_opts) != 0 ||
        (sse = sl_sse_create(server.loop, &conf)) == NULL) {
        SL_ERROR("event=start_failed error=\"out of memory\"");
        return 1;
    }
    server.data = sse;
    if (sl_jwt_enabled(jwt))
        sl_http_on_sighup(&server, sl_jwt_on_sighup, jwt);
    if (sl_http_listen(&server, host, (int)port) != 0)
        return 1;
    SL_INFO("event=listening host=%s port=%lld instance=\"%s\"", host, port, instance);
    sl_http_run(&server, &stopping);

    /* Streams end (clients resume elsewhere with Last-Event-ID), then the rest. */
    sl_sse_close_streams(sse);
    sl_http_drain(&server, drain_s * 1000, streams, sse);
    SL_INFO("event=stopped streams=%zu connections=%zu", sl_sse_streams(sse), sl_http_connections(&server));
    sl_sse_destroy(sse);
    sl_http_dispose(&server);
    sl_chanpolicy_destroy(policy);
    sl_jwt_destroy(jwt);
    sl_migrator_finish(migrator);
    return 0;
}
