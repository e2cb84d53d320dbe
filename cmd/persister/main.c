/*
 * sluice-persister: persist queue → database, exactly once, then the live exchange. Wiring only:
 * the work is internal/sl_persister.c; a second thread serves /healthz, /readyz and /metrics.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "sl_amqp.h"
#include "sl_config.h"
#include "sl_http.h"
#include "sl_log.h"
#include "sl_persister.h"
#include "sl_retention.h"
#include "sl_service.h"

static volatile sig_atomic_t stopping;

struct service {
    sl_persister_t *p;
    sl_retention_t *retention; /* NULL: no retention rule deletes anything */
};

static int on_req(void *data, h2o_req_t *req)
{
    struct service *svc = data;
    sl_persister_t *p = svc->p;
    int get = sl_http_method_is(req, "GET") || sl_http_method_is(req, "HEAD");
    int health = sl_http_path_is(req, "/healthz"), ready = sl_http_path_is(req, "/readyz"), metrics = sl_http_path_is(req, "/metrics");
    if (!health && !ready && !metrics) {
        sl_http_fail(req, 404, "not_found", NULL, "no such endpoint", 0);
    } else if (!get) {
        sl_http_method_not_allowed(req, "GET");
    } else if (health) {
        sl_http_send(req, 200, NULL, H2O_STRLIT("{\"status\":\"ok\"}"));
    } else if (ready) {
        int ok = sl_persister_ready(p);
        sl_http_send(req, ok ? 200 : 503, NULL, ok ? "{\"status\":\"ready\"}" : "{\"status\":\"unavailable\"}",
                     ok ? 18 : 24);
    } else {
        sl_buf_t b = SL_BUF_INIT;
        sl_persister_render_metrics(p, &b);
        sl_retention_render_metrics(svc->retention, &b);
        sl_http_send_metrics(req, &b);
        sl_buf_free(&b);
    }
    return 0;
}

struct worker {
    sl_persister_t *p;
    int status;
};

static void *work(void *arg)
{
    struct worker *w = arg;
    w->status = sl_persister_run(w->p, &stopping);
    stopping = 1;
    return NULL;
}

int main(int argc, char **argv)
{
    const char *host;
    long long port;
    sl_http_opts_t http_opts;
    sl_persister_conf_t conf;
    sl_retention_conf_t rconf;
    const char *retention;
    sl_opt_t opts[] = {
        {"host", "SLUICE_PERSISTER_HOST", SL_OPT_STR, &host, "127.0.0.1", 0, 0, "address of the metrics endpoint"},
        {"port", "SLUICE_PERSISTER_PORT", SL_OPT_INT, &port, "8083", 0, 65535,
         "port of /healthz, /readyz, /metrics (0: none)"},
        {"amqp-url", "SLUICE_AMQP_URL", SL_OPT_STR, &conf.amqp_url, "amqp://guest:guest@127.0.0.1:5672/", 0, 0,
         "RabbitMQ URL, or a comma-separated list of the cluster's nodes"},
        {"db-url", "SLUICE_DB_URL", SL_OPT_STR, &conf.db_url, "postgresql://postgres@127.0.0.1:5433/sluice", 0, 0,
         "PostgreSQL/CockroachDB URL"},
        {"queue-max-length", "SLUICE_QUEUE_MAX_LENGTH", SL_OPT_INT, &conf.queue_max_length, "100000", 1, 1e9,
         "x-max-length of the persist queue (must match the api's)"},
        {"queue-max-bytes", "SLUICE_QUEUE_MAX_BYTES", SL_OPT_INT, &conf.queue_max_bytes, SL_AMQP_MAX_BYTES_DEFAULT, 0, 1e12,
         "x-max-length-bytes of the persist queue (0: none; must match everywhere)"},
        SL_HTTP_OPTIONS(&http_opts),
        {"batch-size", "SLUICE_BATCH_SIZE", SL_OPT_INT, &conf.batch_size, "1000", 1, 5000, "messages per transaction"},
        {"batch-ms", "SLUICE_BATCH_MS", SL_OPT_INT, &conf.batch_ms, "0", 0, 60000,
         "longest wait for a batch to fill, in ms (0: what arrived goes as soon as the previous commit ends)"},
        {"prefetch", "SLUICE_PREFETCH", SL_OPT_INT, &conf.prefetch, "2000", 1, 65535, "unacked deliveries in flight"},
        {"db-query-timeout-ms", "SLUICE_DB_QUERY_TIMEOUT_MS", SL_OPT_INT, &conf.db_timeout_ms, "10000", 100, 3600000,
         "statement_timeout of the database session; the client gives up 1 s later (a transient failure)"},
        {"retention", "SLUICE_RETENTION", SL_OPT_STR, &retention, "", 0, 0,
         "how long channels keep messages: pattern=limit,... (first match; '*' and '?' in patterns; limit <N>s|m|h|d|w,"
         " <N> messages kept, or forever), e.g. mastodon=7d,chat=10000,*=90d; empty: everything forever"},
        {"retention-interval-ms", "SLUICE_RETENTION_INTERVAL_MS", SL_OPT_INT, &rconf.interval_ms, "60000", 10, 86400000,
         "pause between two passes of the retention job"},
        {"retention-batch", "SLUICE_RETENTION_BATCH", SL_OPT_INT, &rconf.batch, "1000", 1, 100000,
         "messages the retention job deletes per transaction"},
        {"retention-pause-ms", "SLUICE_RETENTION_PAUSE_MS", SL_OPT_INT, &rconf.pause_ms, "10", 0, 60000,
         "pause of the retention job between two batches"},
    };
    int r = sl_config_parse(opts, sizeof(opts) / sizeof(opts[0]), argc, argv, "sluice-persister",
                            "sluice persister: persist queue -> database (exactly once) -> live exchange.");
    if (r != 0)
        return r > 0 ? 0 : 2;
    if (sl_service_check("sluice-persister", conf.amqp_url, &http_opts) != 0)
        return 2;
    sl_log_init("persister");
    sl_http_trap_signals(&stopping);
    if (conf.prefetch < conf.batch_size) {
        SL_ERROR("event=bad_config error=\"prefetch must be at least batch-size\"");
        return 2;
    }
    {
        char err[512];
        if (sl_retention_parse(retention, &rconf.policy, err, sizeof(err)) != 0) {
            fprintf(stderr, "sluice-persister: SLUICE_RETENTION (--retention): %s\n", err);
            return 2;
        }
    }
    sl_persister_t *p = sl_persister_create(&conf);
    if (p == NULL)
        return 1;
    /* The retention job: a thread and a database connection of its own, never in the writer's way. */
    rconf.db_url = conf.db_url;
    rconf.db_timeout_ms = conf.db_timeout_ms;
    struct service svc = {p, sl_retention_start(&rconf)};
    if (svc.retention == NULL && sl_retention_deletes(&rconf.policy)) {
        SL_ERROR("event=start_failed error=\"the retention job could not start\"");
        return 1;
    }

    /* The persister works in a thread of its own; the main thread serves the endpoints (h2o keeps
     * thread-local memory pools, which are only freed for a thread that lives to the end). */
    struct worker w = {p, 0};
    pthread_t thread;
    if (pthread_create(&thread, NULL, work, &w) != 0) {
        SL_ERROR("event=start_failed error=\"pthread_create\"");
        return 1;
    }
    if (port > 0) {
        sl_http_server_t server;
        if (sl_http_setup(&server, on_req, &svc, 4096, &http_opts) != 0) {
            SL_ERROR("event=start_failed error=\"out of memory\"");
            return 1;
        }
        if (sl_http_listen(&server, host, (int)port) != 0) {
            stopping = 1;
        } else {
            SL_INFO("event=listening host=%s port=%lld", host, port);
            sl_http_run(&server, &stopping);
        }
        sl_http_drain(&server, 1000, NULL, NULL);
        sl_http_dispose(&server);
    }
    pthread_join(thread, NULL);
    sl_retention_stop(svc.retention);
    sl_persister_destroy(p);
    r = w.status;
    return r;
}
