/*
 * sluice-api: accepts posts (POST /v1/messages, /v1/messages/batch), edits and deletes into
 * RabbitMQ with publisher confirms and serves history from the database. Wiring only: the
 * handlers live in internal/sl_api.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_api.h"
#include "sl_auth.h"
#include "sl_chanpolicy.h"
#include "sl_amqp.h"
#include "sl_config.h"
#include "sl_db.h"
#include "sl_http.h"
#include "sl_jwt.h"
#include "sl_log.h"
#include "sl_migrator.h"
#include "sl_service.h"
#include "sl_time.h"

static volatile sig_atomic_t stopping;

static size_t inflight(void *api)
{
    return sl_api_inflight(api);
}

int main(int argc, char **argv)
{
    const char *host, *amqp_url, *db_url, *tokens, *tokens_file, *private_channels;
    long long port, migrate_wait, drain_s;
    sl_http_opts_t http_opts;
    sl_jwt_conf_t jwt_conf;
    sl_api_conf_t conf;
    sl_opt_t opts[] = {
        {"host", "SLUICE_API_HOST", SL_OPT_STR, &host, "127.0.0.1", 0, 0, "address to listen on"},
        {"port", "SLUICE_API_PORT", SL_OPT_INT, &port, "8080", 1, 65535, "port to listen on"},
        {"amqp-url", "SLUICE_AMQP_URL", SL_OPT_STR, &amqp_url, "amqp://guest:guest@127.0.0.1:5672/", 0, 0,
         "RabbitMQ URL, or a comma-separated list of the nodes' URLs"},
        {"db-url", "SLUICE_DB_URL", SL_OPT_STR, &db_url, "postgresql://postgres@127.0.0.1:5433/sluice", 0, 0,
         "PostgreSQL/CockroachDB URL"},
        {"queue-max-length", "SLUICE_QUEUE_MAX_LENGTH", SL_OPT_INT, &conf.queue_max_length, "100000", 1, 1e9,
         "x-max-length of the persist queue (must match the persister's)"},
        {"queue-max-bytes", "SLUICE_QUEUE_MAX_BYTES", SL_OPT_INT, &conf.queue_max_bytes, SL_AMQP_MAX_BYTES_DEFAULT, 0, 1e12,
         "x-max-length-bytes of the persist queue (0: none; must match everywhere)"},
        {"max-unconfirmed", "SLUICE_API_MAX_UNCONFIRMED", SL_OPT_INT, &conf.max_unconfirmed, "10000", 1, 1e6,
         "publishes awaiting confirmation before answering 503"},
        {"db-conns", "SLUICE_API_DB_CONNS", SL_OPT_INT, &conf.db_conns, "4", 1, 64, "database connections for reads"},
        {"db-connect-timeout-ms", "SLUICE_DB_CONNECT_TIMEOUT_MS", SL_OPT_INT, &conf.db_connect_timeout_ms, "5000", 100,
         600000, "deadline of a database connection attempt, per host (TCP, TLS, login, session setup)"},
        {"db-query-timeout-ms", "SLUICE_DB_QUERY_TIMEOUT_MS", SL_OPT_INT, &conf.db_query_timeout_ms, "10000", 100,
         3600000, "deadline of a query, from asking to answer (the session's statement_timeout is 90% of it)"},
        {"retry-after", "SLUICE_RETRY_AFTER", SL_OPT_INT, &conf.retry_after_s, "1", 1, 3600,
         "seconds in Retry-After on 429/503"},
        {"history-max", "SLUICE_HISTORY_MAX", SL_OPT_INT, &conf.history_max, "200", 1, 1000,
         "largest page of GET /v1/messages"},
        {"migrate-wait", "SLUICE_MIGRATE_WAIT", SL_OPT_INT, &migrate_wait, "10", 0, 3600,
         "seconds to wait for the database at start"},
        {"tokens", "SLUICE_API_TOKENS", SL_OPT_STR, &tokens, "", 0, 0,
         "writer tokens, token:author,... (author * = any); none: posting is open"},
        {"tokens-file", "SLUICE_API_TOKENS_FILE", SL_OPT_STR, &tokens_file, "", 0, 0,
         "file of writer tokens, one 'token author' per line"},
        {"admin-token", "SLUICE_ADMIN_TOKEN", SL_OPT_STR, &conf.admin_token, "", 0, 0,
         "bearer token that may edit and delete any message (none: no admin)"},
        {"client-rate", "SLUICE_API_CLIENT_RATE", SL_OPT_DOUBLE, &conf.client_rate, "0", 0, 1e6,
         "requests/s per client (token or address) before 429; 0: no limit"},
        {"client-burst", "SLUICE_API_CLIENT_BURST", SL_OPT_DOUBLE, &conf.client_burst, "20", 1, 1e6,
         "burst allowed by the per-client limit"},
        {"private-channels", "SLUICE_PRIVATE_CHANNELS", SL_OPT_STR, &private_channels, "", 0, 0,
         "channels (names and prefix* patterns, comma-separated) whose history only readers with a token covering "
         "them may read (as on sse); empty: none"},
        {"jwt-reader-audience", "SLUICE_JWT_READER_AUDIENCE", SL_OPT_STR, &conf.reader_audience, "", 0, 0,
         "required aud of readers' JWTs on the history of private channels (empty: SLUICE_JWT_AUDIENCE); sse's "
         "audience lets one reader token read both, and not write"},
        SL_JWT_OPTIONS(&jwt_conf),
        SL_HTTP_OPTIONS(&http_opts),
        {"drain-timeout", "SLUICE_DRAIN_TIMEOUT", SL_OPT_INT, &drain_s, "10", 0, 3600,
         "seconds to finish requests in flight on SIGTERM"},
    };
    int r = sl_config_parse(opts, sizeof(opts) / sizeof(opts[0]), argc, argv, "sluice-api",
                            "sluice api: POST /v1/messages into RabbitMQ, history from the database.");
    if (r != 0)
        return r > 0 ? 0 : 2;
    if (sl_service_check("sluice-api", amqp_url, &http_opts) != 0)
        return 2;
    conf.amqp_url = amqp_url;
    conf.db_url = db_url;
    sl_log_init("api");
    char err[512];
    sl_jwt_t *jwt = sl_jwt_create(&jwt_conf, err, sizeof(err));
    conf.policy = NULL;
    if (jwt == NULL || (conf.policy = sl_chanpolicy_create(private_channels, err, sizeof(err))) == NULL ||
        (conf.auth = sl_auth_create(tokens, tokens_file, jwt, err, sizeof(err))) == NULL) {
        fprintf(stderr, "sluice-api: %s\n", err);
        sl_chanpolicy_destroy(conf.policy);
        sl_jwt_destroy(jwt);
        return 2;
    }
    if (sl_auth_open(conf.auth))
        SL_WARN("event=writes_open reason=\"no SLUICE_API_TOKENS and no JWT key: anyone who reaches the api may post as "
                "anyone\"");
    else
        SL_INFO("event=writer_tokens count=%zu jwt=%d", sl_auth_count(conf.auth), sl_jwt_enabled(jwt));
    if (sl_chanpolicy_any_private(conf.policy) && !sl_jwt_enabled(jwt))
        SL_WARN("event=private_channels_closed reason=\"SLUICE_PRIVATE_CHANNELS without a JWT key: nobody can read "
                "the private channels' history\"");
    sl_http_trap_signals(&stopping);
    /* Best effort: posts work without the database; history needs the schema. The migration runs
     * on a thread of its own so that a database that hangs does not keep the api from listening
     * (it gets a head start of SL_MIGRATOR_HEAD_START_MS). */
    sl_migrator_t *migrator = sl_migrator_start(db_url, (int)migrate_wait, &stopping);
    if (migrator == NULL)
        sl_db_migrate_url(db_url, (int)migrate_wait, &stopping);

    sl_http_raise_nofile(); /* one descriptor per client connection */
    sl_http_server_t server;
    sl_api_t *api;
    if (sl_http_setup(&server, sl_api_handle, NULL, 1024 * 1024, &http_opts) != 0 ||
        (api = sl_api_create(server.loop, &conf)) == NULL) {
        SL_ERROR("event=start_failed error=\"out of memory\"");
        return 1;
    }
    server.data = api;
    if (sl_jwt_enabled(jwt))
        sl_http_on_sighup(&server, sl_jwt_on_sighup, jwt);
    if (sl_http_listen(&server, host, (int)port) != 0)
        return 1;
    SL_INFO("event=listening host=%s port=%lld", host, port);
    sl_http_run(&server, &stopping);

    /* Stop accepting, end idle connections, answer what is in flight (their confirms), leave. */
    SL_INFO("event=draining inflight=%zu connections=%zu", sl_api_inflight(api), sl_http_connections(&server));
    sl_http_drain(&server, drain_s * 1000, inflight, api);
    SL_INFO("event=stopped inflight=%zu connections=%zu", sl_api_inflight(api), sl_http_connections(&server));
    sl_api_destroy(api);
    sl_jwt_destroy(jwt);
    sl_http_dispose(&server);
    sl_migrator_finish(migrator);
    return 0;
}
