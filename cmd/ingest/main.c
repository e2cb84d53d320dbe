/*
 * sluice-ingest: reads public posts from Mastodon instances (streaming, or polling without a token;
 * one reading thread per source) and enqueues them, with their edits and deletions, into the persist queue with publisher
 * confirms. Wiring only: the loop side is internal/sl_ingest.c, the reading thread
 * internal/sl_ingest_reader.c, the Mastodon formats internal/sl_mastodon*.c.
 */
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "sl_amqp.h"
#include "sl_config.h"
#include "sl_http.h"
#include "sl_ingest.h"
#include "sl_log.h"
#include "sl_mastodon.h"
#include "sl_service.h"
#include "sl_time.h"

static volatile sig_atomic_t stopping;

static size_t pending(void *g)
{
    return sl_ingest_pending(g);
}

int main(int argc, char **argv)
{
    const char *host, *url, *token, *stream, *channel;
    long long port, autostart, drain_s, queue_cap, id_memory;
    sl_http_opts_t http_opts;
    static sl_ingest_source_t sources[SL_INGEST_MAX_SOURCES];
    size_t nsources = 0;
    sl_ingest_conf_t conf;
    memset(&conf, 0, sizeof(conf));
    sl_ingest_reader_conf_t *rc = &conf.reader;
    sl_opt_t opts[] = {
        {"host", "SLUICE_INGEST_HOST", SL_OPT_STR, &host, "127.0.0.1", 0, 0, "address of the control endpoint"},
        {"port", "SLUICE_INGEST_PORT", SL_OPT_INT, &port, "8082", 1, 65535, "port of the control endpoint"},
        {"amqp-url", "SLUICE_AMQP_URL", SL_OPT_STR, &conf.amqp_url, "amqp://guest:guest@127.0.0.1:5672/", 0, 0,
         "RabbitMQ URL, or a comma-separated list of the nodes' URLs"},
        {"queue-max-length", "SLUICE_QUEUE_MAX_LENGTH", SL_OPT_INT, &conf.queue_max_length, "100000", 1, 1e9,
         "x-max-length of the persist queue (must match the api's and the persister's)"},
        {"queue-max-bytes", "SLUICE_QUEUE_MAX_BYTES", SL_OPT_INT, &conf.queue_max_bytes, SL_AMQP_MAX_BYTES_DEFAULT, 0, 1e12,
         "x-max-length-bytes of the persist queue (0: none; must match everywhere)"},
        {"mastodon-url", "SLUICE_MASTODON_URL", SL_OPT_STR, &url, NULL, 0, 0,
         "Mastodon instance, e.g. https://mastodon.social, or a comma-separated list of up to 16 (one source each; "
         "an instance may be listed again with another stream) (required)"},
        {"mastodon-token", "SLUICE_MASTODON_TOKEN", SL_OPT_STR, &token, NULL, 0, 0,
         "access token (public streams need one since Mastodon 4.2; without one ingest polls); with several sources "
         "on several instances, a comma-separated list, one per source (an empty entry: none)"},
        {"mastodon-stream", "SLUICE_MASTODON_STREAM", SL_OPT_STR, &stream, "public", 0, 0,
         "public, public:local or hashtag:<tag>: one for every source, or a comma-separated list, one per source"},
        {"channel", "SLUICE_INGEST_CHANNEL", SL_OPT_STR, &channel, "mastodon", 0, 0, "channel of the messages made"},
        {"autostart", "SLUICE_INGEST_AUTOSTART", SL_OPT_INT, &autostart, "1", 0, 1,
         "1: start reading at launch; 0: wait for POST /v1/ingest {\"command\":\"start\"}"},
        {"idle-timeout-ms", "SLUICE_INGEST_IDLE_TIMEOUT_MS", SL_OPT_INT, &rc->idle_ms, "60000", 100, 3600000,
         "a stream silent this long is reconnected (Mastodon sends a heartbeat every 15 s)"},
        {"connect-timeout-ms", "SLUICE_INGEST_CONNECT_TIMEOUT_MS", SL_OPT_INT, &rc->connect_timeout_ms, "10000", 100,
         600000, "TCP/TLS connect timeout"},
        {"request-timeout-ms", "SLUICE_INGEST_REQUEST_TIMEOUT_MS", SL_OPT_INT, &rc->request_timeout_ms, "30000", 100,
         600000, "longest REST request (instance, timelines)"},
        {"backoff-min-ms", "SLUICE_INGEST_BACKOFF_MIN_MS", SL_OPT_INT, &rc->backoff_min_ms, "500", 1, 3600000,
         "first reconnect delay (doubles per failure, with jitter)"},
        {"backoff-max-ms", "SLUICE_INGEST_BACKOFF_MAX_MS", SL_OPT_INT, &rc->backoff_max_ms, "60000", 1, 3600000,
         "longest reconnect delay"},
        {"poll-interval-ms", "SLUICE_INGEST_POLL_INTERVAL_MS", SL_OPT_INT, &rc->poll_ms, "5000", 10, 3600000,
         "between timeline polls (polling mode)"},
        {"poll-limit", "SLUICE_INGEST_POLL_LIMIT", SL_OPT_INT, &rc->poll_limit, "40", 1, 40, "statuses per timeline page"},
        {"poll-max-pages", "SLUICE_INGEST_POLL_MAX_PAGES", SL_OPT_INT, &rc->poll_max_pages, "10", 1, 1000,
         "pages followed in one poll to catch up"},
        {"buffer", "SLUICE_INGEST_BUFFER", SL_OPT_INT, &queue_cap, "64", 1, 100000,
         "items read ahead of the broker before reading pauses"},
        {"id-memory", "SLUICE_INGEST_ID_MEMORY", SL_OPT_INT, &id_memory, "65536", 0, 16777216,
         "statuses remembered per source so that their deletion finds them (about 40 bytes each; 0: none)"},
        {"max-unconfirmed", "SLUICE_INGEST_MAX_UNCONFIRMED", SL_OPT_INT, &conf.max_unconfirmed, "32", 1, 10000,
         "publishes awaiting the broker's confirm"},
        {"retry-min-ms", "SLUICE_INGEST_RETRY_MIN_MS", SL_OPT_INT, &conf.retry_min_ms, "200", 1, 3600000,
         "first delay before publishing a refused item again"},
        {"retry-max-ms", "SLUICE_INGEST_RETRY_MAX_MS", SL_OPT_INT, &conf.retry_max_ms, "5000", 1, 3600000,
         "longest delay before publishing a refused item again"},
        {"admin-token", "SLUICE_ADMIN_TOKEN", SL_OPT_STR, &conf.admin_token, "", 0, 0,
         "bearer token required by the control endpoint (/v1/ingest); empty: open"},
        SL_HTTP_OPTIONS(&http_opts),
        {"drain-timeout", "SLUICE_DRAIN_TIMEOUT", SL_OPT_INT, &drain_s, "10", 0, 3600,
         "seconds to get outstanding confirms on SIGTERM"},
    };
    int r = sl_config_parse(opts, sizeof(opts) / sizeof(opts[0]), argc, argv, "sluice-ingest",
                            "sluice ingest: Mastodon public posts -> RabbitMQ (publisher confirms).");
    if (r != 0)
        return r > 0 ? 0 : 2;
    if (sl_service_check("sluice-ingest", conf.amqp_url, &http_opts) != 0)
        return 2;
    {
        char err[512];
        if (url == NULL || sl_ingest_sources_parse(url, stream, token, sources, &nsources, err, sizeof(err)) != 0) {
            fprintf(stderr, "sluice-ingest: %s\n",
                    url == NULL ? "SLUICE_MASTODON_URL (--mastodon-url) must name an http(s):// instance" : err);
            return 2;
        }
    }
    if (!sl_channel_valid(channel, strlen(channel))) {
        fprintf(stderr, "sluice-ingest: SLUICE_INGEST_CHANNEL must match [a-z0-9_-]{1,64}\n");
        return 2;
    }
    if (rc->backoff_max_ms < rc->backoff_min_ms || conf.retry_max_ms < conf.retry_min_ms) {
        fprintf(stderr, "sluice-ingest: a -max-ms option is below its -min-ms\n");
        return 2;
    }
    conf.mastodon_url = url;
    conf.mastodon_stream = stream;
    conf.sources = sources;
    conf.nsources = nsources;
    rc->channel = channel;
    rc->queue_cap = (size_t)queue_cap;
    rc->ids_cap = (size_t)id_memory;

    sl_log_init("ingest");
    /* both before any thread: the reader uses curl and jansson */
    curl_global_init(CURL_GLOBAL_DEFAULT);
    json_object_seed(0);
    sl_http_trap_signals(&stopping);

    sl_http_server_t server;
    sl_ingest_t *g;
    if (sl_http_setup(&server, sl_ingest_handle, NULL, 64 * 1024, &http_opts) != 0 ||
        (g = sl_ingest_create(server.loop, &conf)) == NULL) {
        SL_ERROR("event=start_failed error=\"out of memory\"");
        return 1;
    }
    server.data = g;
    if (sl_http_listen(&server, host, (int)port) != 0) {
        sl_ingest_destroy(g);
        sl_http_dispose(&server);
        return 1;
    }
    SL_INFO("event=listening host=%s port=%lld sources=%zu channel=%s", host, port, nsources, channel);
    if (autostart && sl_ingest_start(g) != 0)
        SL_ERROR("event=start_failed error=\"could not start a reader thread\"");
    sl_http_run(&server, &stopping);

    /* Stop reading, then get the confirms of what was read (retrying refusals) until the deadline. */
    sl_ingest_stop_and_join(g);
    SL_INFO("event=draining pending=%zu", sl_ingest_pending(g));
    sl_http_drain(&server, drain_s * 1000, pending, g);
    SL_INFO("event=stopped pending=%zu", sl_ingest_pending(g));
    sl_ingest_destroy(g);
    sl_http_dispose(&server);
    curl_global_cleanup();
    return 0;
}
