/*
 * Integration tests of sluice-ingest's fallbacks and limits, against the fake Mastodon and the
 * real RabbitMQ/PostgreSQL: polling without a token (min_id paging, restarts, a page limit), polling
 * after streaming is refused with 401, the instance's rate limit, and back pressure from a full
 * persist queue all the way to the Mastodon socket without losing anything.
 */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_ingest_util.h"
#include "fake_mastodon.h"
#include "sl_testutil.h"
#include "sl_testsuite.h"

static tu_stack_t S;

static void add_statuses(fm_t *f, int from, int to, int post)
{
    for (int i = from; i <= to; i++) {
        char id[16], html[64];
        snprintf(id, sizeof(id), "%d", i);
        snprintf(html, sizeof(html), "<p>status %d</p>", i);
        char *json = fm_status_json(id, "poller", html, NULL);
        if (post)
            fm_post(f, json);
        else
            fm_add_to_timeline(f, json);
        free(json);
    }
}

static long long seq_of(PGconn *db, int status)
{
    char id[37], sid[16], sql[160];
    snprintf(sid, sizeof(sid), "%d", status);
    it_message_id(sid, id);
    snprintf(sql, sizeof(sql), "SELECT seq FROM messages WHERE id = '%s'", id);
    return tu_scalar(db, sql);
}

START_TEST(test_polling_without_token)
{
    fm_conf_t fc = {.token = "only-for-streaming"};
    fm_t *f = fm_start(&fc);
    it_ingest_t g;
    const char *env[] = {"SLUICE_INGEST_POLL_LIMIT=10", NULL};
    add_statuses(f, 1001, 1005, 0);
    tu_stack_start_api(&S, "ingest_poll", NULL);
    it_start_ingest(&g, &S, fm_url(f), env);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 5, 20000), 5);
    ck_assert(it_wait_field(&g, "mode", "polling", 1000));

    /* 25 new statuses at once: more than a page of 10, so the gap is filled by paging forward (min_id) */
    add_statuses(f, 1006, 1030, 0);
    ck_assert_int_eq(tu_wait_rows(db, 30, 20000), 30);
    tu_sleep_ms(600);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 30);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(DISTINCT id) FROM messages"), 30);
    for (int i = 1002; i <= 1030; i++) /* stored oldest first */
        ck_assert_msg(seq_of(db, i) > seq_of(db, i - 1), "status %d stored before %d", i, i - 1);
    fm_stats_t st;
    fm_stats(f, &st);
    ck_assert_int_gt(st.timeline_cursor_requests, 0);
    ck_assert_int_eq(st.stream_connects, 0);
    ck_assert_int_eq(st.rate_limited_answers, 0);

    /* a restart polls the newest page again: nothing is stored twice */
    ck_assert_int_eq(it_stop_ingest(&g), 0);
    it_start_ingest(&g, &S, fm_url(f), env);
    for (int i = 0; i < 50; i++) {
        json_t *state = it_state(&g);
        long long enq = json_integer_value(json_object_get(json_object_get(state, "events"), "enqueued"));
        json_decref(state);
        if (enq >= 10)
            break;
        tu_sleep_ms(100);
    }
    add_statuses(f, 1031, 1031, 0);
    ck_assert_int_eq(tu_wait_rows(db, 31, 20000), 31);
    tu_sleep_ms(600);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 31);
    ck_assert_int_eq(tu_scalar(db, "SELECT max(seq) FROM messages"), 31);

    it_finish(&S, &g, db, f);
}
END_TEST

/* More new statuses than one poll may read (300, 40 a page, 2 pages a poll): the polls that stop
 * at the page limit go on from where they stopped, so every status is stored, once, oldest first
 * (a poll that jumped to the newest id skipped the 220 between). */
START_TEST(test_polling_page_limit_skips_nothing)
{
    fm_conf_t fc = {.token = "only-for-streaming"};
    fm_t *f = fm_start(&fc);
    it_ingest_t g;
    const char *env[] = {"SLUICE_INGEST_POLL_LIMIT=40", "SLUICE_INGEST_POLL_MAX_PAGES=2",
                         "SLUICE_INGEST_POLL_INTERVAL_MS=200", NULL};
    add_statuses(f, 5000, 5000, 0);
    tu_stack_start_api(&S, "ingest_pages", NULL);
    it_start_ingest(&g, &S, fm_url(f), env);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 1, 20000), 1);
    add_statuses(f, 5001, 5300, 0);
    ck_assert_int_eq(tu_wait_rows(db, 301, 30000), 301);
    tu_sleep_ms(600);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 301);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(DISTINCT id) FROM messages"), 301);
    for (int i = 5001; i <= 5300; i++) /* every one, oldest first */
        ck_assert_msg(seq_of(db, i) > seq_of(db, i - 1), "status %d stored before %d", i, i - 1);
    it_finish(&S, &g, db, f);
}
END_TEST

START_TEST(test_refused_streaming_falls_back_to_polling)
{
    fm_conf_t fc = {.token = "the-right-token"};
    fm_t *f = fm_start(&fc);
    it_ingest_t g;
    const char *env[] = {"SLUICE_MASTODON_TOKEN=a-wrong-token", "SLUICE_MASTODON_STREAM=hashtag:cats", NULL};
    add_statuses(f, 2001, 2003, 0);
    tu_stack_start_api(&S, "ingest_401", NULL);
    it_start_ingest(&g, &S, fm_url(f), env);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 3, 20000), 3);
    fm_stats_t st;
    fm_stats(f, &st);
    ck_assert_int_ge(st.stream_401, 1);
    ck_assert_str_eq(st.last_stream_path, "");  /* never opened */
    ck_assert_ptr_nonnull(strstr(st.last_timeline_query, "limit=40"));
    json_t *state = it_state(&g);
    ck_assert_str_eq(json_string_value(json_object_get(state, "mode")), "polling");
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(state, "last_error")), "401"));
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(state, "source"), "stream")), "hashtag:cats");
    json_decref(state);
    add_statuses(f, 2004, 2004, 1); /* streamed to nobody, found by the next poll */
    ck_assert_int_eq(tu_wait_rows(db, 4, 20000), 4);

    it_finish(&S, &g, db, f);
}
END_TEST

START_TEST(test_rate_limit_is_honoured)
{
    fm_conf_t fc = {.token = NULL, .rate_limit = 3, .rate_window_ms = 1500};
    fm_t *f = fm_start(&fc);
    it_ingest_t g;
    const char *env[] = {"SLUICE_INGEST_POLL_INTERVAL_MS=50", NULL};
    tu_stack_init(&S, "ingest_rate", 100000);
    tu_start(&S, "persister", NULL);
    it_start_ingest(&g, &S, fm_url(f), env);
    PGconn *db = tu_db(&S);
    long long t0 = 0;
    for (int i = 0; i < 8; i++) { /* a new status every 400 ms, for longer than two windows */
        add_statuses(f, 3001 + i, 3001 + i, 0);
        tu_sleep_ms(400);
        t0 += 400;
    }
    ck_assert_int_eq(tu_wait_rows(db, 8, 20000), 8);
    fm_stats_t st;
    fm_stats(f, &st);
    /* a poll every 50 ms would be ~70 requests; the budget allows 3 per 1.5 s, and none was refused */
    ck_assert_int_eq(st.rate_limited_answers, 0);
    ck_assert_int_le(st.timeline_requests, 3 * (int)(t0 / 1500 + 4));
    ck_assert_int_ge(st.timeline_requests, 4);
    char url[160];
    tu_resp_t r;
    snprintf(url, sizeof(url), "%s/metrics", g.base);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_ptr_null(strstr(r.body, "sluice_ingest_rate_limited_total 0\n"));
    tu_resp_free(&r);

    it_finish(&S, &g, db, f);
}
END_TEST

START_TEST(test_back_pressure_reaches_mastodon_and_loses_nothing)
{
    enum { N = 200 };
    fm_conf_t fc = {.token = "t", .heartbeat_ms = 500};
    fm_t *f = fm_start(&fc);
    it_ingest_t g;
    const char *env[] = {"SLUICE_MASTODON_TOKEN=t", "SLUICE_INGEST_BUFFER=4", "SLUICE_INGEST_MAX_UNCONFIRMED=4",
                         "SLUICE_INGEST_IDLE_TIMEOUT_MS=3000", NULL};
    static char html[8000];
    tu_stack_init(&S, "ingest_pressure", 5); /* a tiny persist queue, and no persister yet */
    it_start_ingest(&g, &S, fm_url(f), env);
    ck_assert(fm_wait_streams(f, 1, 10000));
    for (int i = 0; i < N; i++) { /* ~6 KB per event: far more than the socket buffers hold */
        char id[16];
        int o = snprintf(html, sizeof(html), "<p>big %d ", i);
        memset(html + o, 'x', 6000);
        strcpy(html + o + 6000, "</p>");
        snprintf(id, sizeof(id), "%d", 5000 + i);
        char *json = fm_status_json(id, "big", html, NULL);
        fm_post(f, json);
        free(json);
    }
    /* the fake's writes stall: ingest stopped reading */
    fm_stats_t st;
    for (int waited = 0; waited < 15000; waited += 100) {
        fm_stats(f, &st);
        if (st.stream_blocked_waits > 0)
            break;
        tu_sleep_ms(100);
    }
    ck_assert_msg(st.stream_blocked_waits > 0, "the fake never had to wait: ingest buffered everything");
    tu_sleep_ms(2500); /* longer than... nothing: back pressure is not silence, the stream stays */
    json_t *state = it_state(&g);
    json_t *ev = json_object_get(state, "events");
    ck_assert_int_le(json_integer_value(json_object_get(ev, "pending")), 8); /* buffer + unconfirmed */
    /* the queue holds 5 messages (a quorum queue takes one more); a message carries the posts
     * published in one loop turn, at most the 4 unconfirmed ones */
    ck_assert_int_le(json_integer_value(json_object_get(ev, "enqueued")), (5 + 1) * 4);
    ck_assert_int_lt(json_integer_value(json_object_get(ev, "received")), N / 2);
    json_decref(state);
    fm_stats(f, &st);
    ck_assert_int_eq(st.stream_connects, 1);
    char url[160];
    tu_resp_t r;
    snprintf(url, sizeof(url), "%s/metrics", g.base);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_ptr_null(strstr(r.body, "sluice_ingest_publish_refusals_total{reason=\"queue_full\"} 0\n"));
    tu_resp_free(&r);

    /* the queue drains: every post arrives, once */
    tu_start(&S, "persister", NULL);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, N, 40000), N);
    tu_sleep_ms(500);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), N);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(DISTINCT id) FROM messages"), N);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE char_length(body) = 500"), N);

    it_finish(&S, &g, db, f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ingest_poll");
    TCase *tc = tcase_create("integration");
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, test_polling_without_token);
    tcase_add_test(tc, test_polling_page_limit_skips_nothing);
    tcase_add_test(tc, test_refused_streaming_falls_back_to_polling);
    tcase_add_test(tc, test_rate_limit_is_honoured);
    tcase_add_test(tc, test_back_pressure_reaches_mastodon_and_loses_nothing);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
