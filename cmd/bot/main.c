/*
 * sluice-bot: posts realistic messages to the api at a steady rate and obeys its back pressure.
 * Wiring only: the generator, the scheduler and the loop live in internal/sl_bot.c.
 */
#include <curl/curl.h>
#include <stdio.h>

#include "sl_bot.h"
#include "sl_config.h"
#include "sl_http.h"
#include "sl_log.h"

static volatile sig_atomic_t stopping;

int main(int argc, char **argv)
{
    sl_bot_conf_t conf;
    double rate = 0, per_minute = 0;
    long long seed;
    char err[256];
    sl_opt_t opts[] = {
        {"token", "SLUICE_BOT_TOKEN", SL_OPT_STR, &conf.token, "", 0, 0,
         "bearer token for the api when it has writer tokens (one for author *)"},
        {"api-url", "SLUICE_BOT_API_URL", SL_OPT_STR, &conf.api_url, "http://127.0.0.1:8080", 0, 0,
         "base URL of the api"},
        {"rate", "SLUICE_BOT_RATE", SL_OPT_DOUBLE, &rate, NULL, 0.001, 1e6,
         "messages per second, fractions allowed (default 1; or --per-minute)"},
        {"per-minute", "SLUICE_BOT_PER_MINUTE", SL_OPT_DOUBLE, &per_minute, NULL, 0.001, 6e7,
         "messages per minute (instead of --rate)"},
        {"delay", "SLUICE_BOT_DELAY", SL_OPT_DOUBLE, &conf.delay_s, "0", 0, 86400, "seconds before the first message"},
        {"channels", "SLUICE_BOT_CHANNELS", SL_OPT_STR, &conf.channels, "general,random,help", 0, 0,
         "comma-separated channels to post to"},
        {"authors", "SLUICE_BOT_AUTHORS", SL_OPT_INT, &conf.authors, "50", 1, SL_BOT_MAX_AUTHORS, "distinct authors"},
        {"concurrency", "SLUICE_BOT_CONCURRENCY", SL_OPT_INT, &conf.concurrency, "16", 1, 10000,
         "requests in flight at most"},
        {"count", "SLUICE_BOT_COUNT", SL_OPT_INT, &conf.count, "0", 0, 1e15,
         "messages to send, then exit (0: no limit)"},
        {"duration", "SLUICE_BOT_DURATION", SL_OPT_DOUBLE, &conf.duration_s, "0", 0, 1e9,
         "seconds to send for, then exit (0: no limit)"},
        {"summary-interval", "SLUICE_BOT_SUMMARY_INTERVAL", SL_OPT_DOUBLE, &conf.summary_s, "10", 0.05, 86400,
         "seconds between summary lines"},
        {"timeout", "SLUICE_BOT_TIMEOUT", SL_OPT_DOUBLE, &conf.timeout_s, "10", 0.01, 3600,
         "seconds per request before it counts as a connection error"},
        {"seed", "SLUICE_BOT_SEED", SL_OPT_INT, &seed, "0", 0, 9e18,
         "generator seed (0: from the clock; the one used is logged)"},
    };
    int r = sl_config_parse(opts, sizeof(opts) / sizeof(opts[0]), argc, argv, "sluice-bot",
                            "sluice bot: posts realistic messages to the api at a steady rate, obeying back pressure.");
    if (r != 0)
        return r > 0 ? 0 : 2;
    if (rate > 0 && per_minute > 0) {
        fprintf(stderr, "sluice-bot: --rate (SLUICE_BOT_RATE) and --per-minute (SLUICE_BOT_PER_MINUTE) are both set; "
                        "give one\n");
        return 2;
    }
    conf.rate = rate > 0 ? rate : per_minute > 0 ? per_minute / 60 : 1;
    conf.seed = (uint64_t)seed;
    if (sl_bot_conf_check(&conf, err, sizeof(err)) != 0) {
        fprintf(stderr, "sluice-bot: %s\n", err);
        return 2;
    }
    sl_log_init("bot");
    sl_http_trap_signals(&stopping);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        SL_ERROR("event=start_failed error=\"curl_global_init failed\"");
        return 1;
    }
    r = sl_bot_run(&conf, &stopping, NULL);
    curl_global_cleanup();
    return r == 0 ? 0 : 1;
}
