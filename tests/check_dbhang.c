/*
 * The services while their database hangs: a "black hole" PostgreSQL (a listener that completes
 * TCP handshakes and never says a word) behind SLUICE_DB_URL, the real RabbitMQ from test.sh.
 * /healthz and keyless POSTs must answer in milliseconds, a history read must fail by its
 * deadline; then a multi-host URL whose first host is the black hole reaches the real database.
 */
#include <check.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sl_testnet.h"
#include "sl_testsuite.h"
#include "sl_testutil.h"
#include "sl_time.h"

static tu_stack_t S;

static int black_hole(int *port)
{
    int fd = tu_net_listen(256, port); /* nobody accept()s: handshakes complete, nothing answers */
    ck_assert_int_ge(fd, 0);
    return fd;
}

static double ms_since(int64_t t0)
{
    return (double)(sl_time_mono_us() - t0) / 1000.0;
}

/* /healthz every 100 ms for ~5 s: each answer within 1 s. A loop blocked on the hung database
 * would stall for its whole deadline (2 to 5 s); the bound is that far above a loop that is free
 * and a shared, busy machine's scheduling (figures are printed to compare runs). Returns the
 * slowest, in ms. */
static double healthz_while(int port)
{
    char url[128];
    double worst = 0;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/healthz", port);
    for (int i = 0; i < 50; i++) {
        tu_resp_t r;
        ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
        ck_assert_int_eq(r.status, 200);
        worst = r.seconds * 1000 > worst ? r.seconds * 1000 : worst;
        tu_resp_free(&r);
        tu_sleep_ms(100);
    }
    ck_assert_msg(worst < 1000, "slowest /healthz %.1f ms", worst);
    return worst;
}

START_TEST(test_services_on_hung_database)
{
    char url[600], env_url[700], post[128], list[128], ready[128], id[40] = "";
    int hole_port, hole = black_hole(&hole_port);
    tu_resp_t r;
    tu_stack_init(&S, "dbhang", 100000);
    snprintf(env_url, sizeof(env_url), "SLUICE_DB_URL=postgresql://postgres@127.0.0.1:%d/sluice", hole_port);
    const char *env[] = {env_url, "SLUICE_DB_QUERY_TIMEOUT_MS=2000", NULL}; /* connect deadline: 5 s default */

    int64_t t0 = sl_time_mono_us();
    tu_start(&S, "api", env);
    double listen_ms = ms_since(t0);
    /* the migration waits for the hole on its own thread; the api listens after its head start */
    ck_assert_msg(listen_ms < 4000, "api listened after %.0f ms", listen_ms);

    snprintf(post, sizeof(post), "%s/v1/messages", S.base);
    snprintf(list, sizeof(list), "%s/v1/messages?limit=5", S.base);
    snprintf(ready, sizeof(ready), "%s/readyz", S.base);

    /* a history read made while the first connection attempt hangs fails by its deadline */
    ck_assert_int_eq(tu_http("GET", list, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 503);
    double first_get_ms = r.seconds * 1000;
    ck_assert_msg(first_get_ms < 2500, "history answered after %.0f ms", first_get_ms);
    tu_resp_free(&r);

    double api_worst = healthz_while(S.api_port);

    const char *body = "{\"channel\":\"general\",\"author\":\"alice\",\"text\":\"posted while the database hangs\"}";
    ck_assert_int_eq(tu_http("POST", post, NULL, "application/json", body, strlen(body), &r), 0);
    ck_assert_msg(r.status == 202, "POST answered %ld: %s", r.status, r.body);
    double post_ms = r.seconds * 1000;
    ck_assert_msg(post_ms < 1500, "POST answered after %.0f ms", post_ms); /* not the 2 s query deadline */
    ck_assert_int_eq(tu_json_str(r.body, "id", id, sizeof(id)), 0);
    tu_resp_free(&r);

    /* the first attempt has failed by now (5 s): reads are refused at once, not after the 2 s
     * query deadline */
    ck_assert_int_eq(tu_http("GET", list, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 503);
    double later_get_ms = r.seconds * 1000;
    ck_assert_msg(later_get_ms < 1000, "history answered after %.0f ms", later_get_ms);
    tu_resp_free(&r);
    ck_assert_int_eq(tu_http("GET", ready, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 503);
    ck_assert_ptr_nonnull(strstr(r.body, "\"db\":\"down\""));
    tu_resp_free(&r);

    /* the sse service too */
    t0 = sl_time_mono_us();
    tu_start(&S, "sse", env);
    double sse_listen_ms = ms_since(t0);
    ck_assert_msg(sse_listen_ms < 4000, "sse listened after %.0f ms", sse_listen_ms);
    double sse_worst = healthz_while(S.sse_port);
    ck_assert_int_eq(tu_stop(&S.sse, SIGTERM, 15000), 0);
    ck_assert_int_eq(tu_stop(&S.api, SIGTERM, 15000), 0);

    /* Multi-host: the black hole first, the real database second. The persister (real URL)
     * migrates and stores what was posted meanwhile. */
    tu_start(&S, "persister", NULL);
    const char *at = strchr(strstr(S.db_url, "://") + 3, '@');
    ck_assert_ptr_nonnull(at);
    snprintf(url, sizeof(url), "%.*s127.0.0.1:%d,%s", (int)(at + 1 - S.db_url), S.db_url, hole_port, at + 1);
    snprintf(env_url, sizeof(env_url), "SLUICE_DB_URL=%s", url);
    const char *env2[] = {env_url, "SLUICE_DB_CONNECT_TIMEOUT_MS=1000", NULL};
    tu_start(&S, "api", env2);
    t0 = sl_time_mono_us();
    ck_assert_msg(tu_wait_status(ready, 200, 5000), "api not ready through %s", url);
    double multi_ms = ms_since(t0);
    ck_assert_msg(multi_ms < 2000, "ready %.0f ms after listening", multi_ms);
    int found = 0;
    for (int i = 0; i < 100 && !found; i++) {
        ck_assert_int_eq(tu_http("GET", list, NULL, NULL, NULL, 0, &r), 0);
        found = r.status == 200 && strstr(r.body, id) != NULL;
        tu_resp_free(&r);
        if (!found)
            tu_sleep_ms(100);
    }
    ck_assert_msg(found, "the post made while the database hung is not in the history");

    fprintf(stderr,
            "database hung: api listened after %.0f ms, sse after %.0f ms; slowest /healthz api %.1f ms, sse %.1f ms;"
            " keyless POST %.1f ms; history GET %.0f ms while connecting, %.1f ms after; multi-host (dead first host,"
            " connect deadline 1000 ms): ready %.0f ms after listening\n",
            listen_ms, sse_listen_ms, api_worst, sse_worst, post_ms, first_get_ms, later_get_ms, multi_ms);
    tu_stack_cleanup(&S);
    close(hole);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dbhang");
    TCase *tc = tcase_create("integration");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_services_on_hung_database);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
