/*
 * Tests of retention (sl_retention.h): the policy's parser, and, against a real api + persister +
 * sse on the servers test.sh starts, the persister's job deleting old rows in batches while seq
 * stays as it is, and every reader answering a position before the retained range with an explicit
 * reset: SSE, NDJSON and WebSocket resumes and pulls, on an sse instance that answers from memory
 * and on one that reads the database, the api's pull, and the api's history at its end.
 *
 * SLUICE_TEST_ONLY=<part of a name> runs only the matching tests.
 */
#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_message.h"
#include "sl_pullclient.h"
#include "sl_retention.h"
#include "sl_streamclient.h"
#include "sl_testnet.h"
#include "sl_testjwt.h"
#include "sl_testsuite.h"
#include "sl_testutil.h"
#include "sl_wsclient.h"

static tu_stack_t S;

/* ---- the policy ------------------------------------------------------------------------------------ */

START_TEST(test_policy_parse_and_match)
{
    sl_retention_policy_t p;
    char err[256];
    ck_assert_int_eq(sl_retention_parse("mastodon=7d, chat-*=10000,x?=2s,keep=forever,*=90d", &p, err, sizeof(err)), 0);
    ck_assert_int_eq(p.n, 5);
    ck_assert(p.wildcards);
    ck_assert(sl_retention_deletes(&p));
    ck_assert_int_eq(p.rules[0].kind, SL_RETAIN_AGE);
    ck_assert_int_eq(p.rules[0].value, 7LL * 86400 * 1000000);
    ck_assert_int_eq(p.rules[1].kind, SL_RETAIN_COUNT);
    ck_assert_int_eq(p.rules[1].value, 10000);
    ck_assert_int_eq(p.rules[2].value, 2000000);
    ck_assert_int_eq(p.rules[3].kind, SL_RETAIN_FOREVER);
    ck_assert_ptr_eq(sl_retention_match(&p, "mastodon"), &p.rules[0]);
    ck_assert_ptr_eq(sl_retention_match(&p, "chat-room_1"), &p.rules[1]);
    ck_assert_ptr_eq(sl_retention_match(&p, "x1"), &p.rules[2]);
    ck_assert_ptr_eq(sl_retention_match(&p, "x12"), &p.rules[4]); /* ? is one character */
    ck_assert_ptr_eq(sl_retention_match(&p, "keep"), &p.rules[3]);
    ck_assert_ptr_eq(sl_retention_match(&p, "general"), &p.rules[4]); /* the first match wins */

    ck_assert_int_eq(sl_retention_parse("", &p, err, sizeof(err)), 0);
    ck_assert_int_eq(p.n, 0);
    ck_assert(!sl_retention_deletes(&p));
    ck_assert_ptr_null(sl_retention_match(&p, "general"));
    ck_assert_int_eq(sl_retention_parse("a=forever", &p, err, sizeof(err)), 0);
    ck_assert(!sl_retention_deletes(&p));
    ck_assert(!p.wildcards);
    ck_assert_int_eq(sl_retention_parse("w=3w,h=1h,m=5m", &p, err, sizeof(err)), 0);
    ck_assert_int_eq(p.rules[0].value, 3LL * 604800 * 1000000);
    ck_assert_int_eq(p.rules[1].value, 3600LL * 1000000);
    ck_assert_int_eq(p.rules[2].value, 300LL * 1000000);

    static const char *const bad[] = {"x", "=7d", "x=", "x=0", "x=0d", "x=7y", "x=7dd", "X=7d", "a b=1", "x=-1",
                                      "x=forever1", "x=99999999999999999d", ",", "x=1,,y=2", "#x=1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        ck_assert_msg(sl_retention_parse(bad[i], &p, err, sizeof(err)) == -1, "'%s' was accepted", bad[i]);
        ck_assert_msg(strstr(err, "retention rule") != NULL, "'%s': no message (%s)", bad[i], err);
    }
}
END_TEST

/* ---- the stack ------------------------------------------------------------------------------------- */

/* A stack whose persister runs with persister_env (its retention), an api open to writing, and an
 * sse with sse_env (may be NULL), ready. */
static void start_stack(const char *name, const char *const *persister_env, const char *const *sse_env)
{
    tu_stack_init(&S, name, 100000);
    tu_start(&S, "persister", persister_env);
    tu_start(&S, "api", NULL);
    tu_start(&S, "sse", sse_env);
    tu_wait_sse_ready(S.sse_port);
}

static const char *sse_base(int port, char *buf, size_t size)
{
    snprintf(buf, size, "http://127.0.0.1:%d", port);
    return buf;
}

static void post_body(int i, char *buf, size_t size)
{
    /* 3 of every 4 in x, the rest in y */
    snprintf(buf, size, "{\"channel\":\"%s\",\"author\":\"a%d\",\"text\":\"t%d\"}", i % 4 == 3 ? "y" : "x", i % 5, i);
}

static void post_many(int n, void (*body)(int, char *, size_t))
{
    char url[128];
    long *status = calloc((size_t)n, sizeof(*status));
    ck_assert_ptr_nonnull(status);
    snprintf(url, sizeof(url), "%s/v1/messages", S.base);
    tu_post_many(url, n, 16, body, status, NULL, NULL, NULL);
    for (int i = 0; i < n; i++)
        ck_assert_msg(status[i] == 202, "POST %d answered %ld", i, status[i]);
    free(status);
}

static long long scalar1(PGconn *db, const char *sql, const char *param)
{
    const char *p[] = {param};
    PGresult *r = PQexecParams(db, sql, 1, NULL, p, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1, "%s: %s", sql, PQerrorMessage(db));
    long long v = PQgetisnull(r, 0, 0) ? -1 : strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

static long long channel_rows(PGconn *db, const char *channel)
{
    return scalar1(db, "SELECT count(*) FROM messages WHERE channel = $1", channel);
}

/* seq || ':' || id of every message of channel, in order: what must not change. */
static char *channel_rows_text(PGconn *db, const char *channel)
{
    const char *p[] = {channel};
    PGresult *r = PQexecParams(db, "SELECT string_agg(seq || ':' || id, ',' ORDER BY seq) FROM messages WHERE channel = $1",
                               1, NULL, p, NULL, NULL, 0);
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    char *s = strdup(PQgetisnull(r, 0, 0) ? "" : PQgetvalue(r, 0, 0));
    PQclear(r);
    return s;
}

/* ---- what a reader says about a position ----------------------------------------------------------- */

/* The first event of a stream (SSE or NDJSON) that is not a retry or heartbeat; its kind, or -1. */
static int stream_first(int port, const char *target, tu_sev_t *ev, tu_stream_t *st)
{
    ck_assert_int_eq(tu_stream_open(st, port, target, NULL, 5000), 0);
    ck_assert_int_eq(st->status, 200);
    for (long long end = tu_now_ms() + 5000; tu_now_ms() < end;) {
        int rc = tu_stream_next(st, ev, (int)(end - tu_now_ms()));
        if (rc < 0)
            break;
        if (rc == 1 && ev->kind != TU_EV_RETRY && ev->kind != TU_EV_HEARTBEAT)
            return (int)ev->kind;
    }
    return -1;
}

/* A resume of channels at since on port answers a reset first (SSE and NDJSON). A reader from
 * memory learns the marks within a second: asked again until then (at most 5 s). */
static void expect_stream_reset(int port, const char *channels, long long since)
{
    static const char *const formats[] = {"sse", "ndjson"};
    for (int f = 0; f < 2; f++) {
        char target[256];
        tu_sev_t ev;
        int kind = -1;
        snprintf(target, sizeof(target), "/v1/stream?channels=%s&since=%lld&history=5&format=%s", channels, since,
                 formats[f]);
        for (long long end = tu_now_ms() + 5000; kind != TU_EV_RESET && tu_now_ms() < end;) {
            tu_stream_t st;
            kind = stream_first(port, target, &ev, &st);
            tu_stream_close(&st);
            if (kind != TU_EV_RESET)
                tu_sleep_ms(200);
        }
        ck_assert_msg(kind == TU_EV_RESET, "port %d %s: no reset first (kind %d)", port, target, kind);
    }
}

/* A resume of channels at since gives its messages after since, in order, without a reset: the seqs
 * of the first n events equal want. */
static void expect_stream_resume(int port, const char *channels, long long since, const long long *want, size_t n)
{
    char target[256];
    tu_stream_t st;
    tu_sev_t ev;
    snprintf(target, sizeof(target), "/v1/stream?channels=%s&since=%lld&format=ndjson", channels, since);
    for (size_t i = 0; i < n; i++) {
        int kind = i == 0 ? stream_first(port, target, &ev, &st) : (tu_stream_next(&st, &ev, 5000) == 1 ? (int)ev.kind : -1);
        ck_assert_msg(kind == TU_EV_MESSAGE && ev.seq == want[i], "port %d %s: event %zu is kind %d seq %lld, want %lld",
                      port, target, i, kind, ev.seq, want[i]);
    }
    tu_stream_close(&st);
}

static json_t *ws_next(tu_ws_t *w)
{
    tu_wsmsg_t m;
    json_error_t e;
    ck_assert_int_eq(tu_ws_recv_data(w, &m, 10000), 1);
    json_t *o = json_loads(m.data, 0, &e);
    ck_assert_msg(json_is_object(o), "not JSON: %s", m.data);
    return o;
}

/* A WebSocket subscription to channel with since gets a reset right after "subscribed" (want 1),
 * or its history without one (want 0; returns the number of messages in it). */
static size_t ws_subscribe(int port, const char *channel, long long since, int want_reset)
{
    tu_ws_t w;
    char cmd[160];
    size_t got = 0;
    for (long long end = tu_now_ms() + 5000;;) {
        ck_assert_int_eq(tu_ws_open(&w, port, "/v1/ws", 5000), 0);
        snprintf(cmd, sizeof(cmd), "{\"command\":\"subscribe\",\"channel\":\"%s\",\"since\":%lld}", channel, since);
        ck_assert_int_eq(tu_ws_send_text(&w, cmd), 0);
        json_t *o = ws_next(&w);
        char *text = json_dumps(o, JSON_COMPACT);
        ck_assert_msg(strcmp(json_string_value(json_object_get(o, "type")), "subscribed") == 0, "subscribe: %s", text);
        free(text);
        json_decref(o);
        o = ws_next(&w);
        const char *type = json_string_value(json_object_get(o, "type"));
        int reset = strcmp(type, "reset") == 0;
        if (!reset)
            got = json_array_size(json_object_get(o, "messages"));
        if (reset)
            ck_assert_str_eq(json_string_value(json_object_get(o, "reason")), "too_old");
        json_decref(o);
        tu_ws_close(&w);
        if (reset == want_reset)
            return got;
        ck_assert_msg(want_reset && tu_now_ms() < end, "port %d: subscribe %s since %lld: %s", port, channel, since,
                      reset ? "a reset" : "no reset");
        tu_sleep_ms(200);
    }
}

/* A pull after `after` of channel (NULL: all) answers a too_old reset with the mark as next. */
static void expect_pull_reset(const char *base, const char *channel, long long after, long long mark)
{
    char q[160];
    tu_page_t pg;
    snprintf(q, sizeof(q), "after=%lld%s%s", after, channel ? "&channel=" : "", channel ? channel : "");
    for (long long end = tu_now_ms() + 5000;; tu_sleep_ms(200)) {
        ck_assert_int_eq(tu_pull(base, q, &pg), 0);
        ck_assert_int_eq(pg.status, 200);
        if (strcmp(pg.reset, "too_old") == 0 || tu_now_ms() > end)
            break;
        tu_page_free(&pg);
    }
    ck_assert_msg(strcmp(pg.reset, "too_old") == 0, "%s ?%s: no reset", base, q);
    ck_assert_int_eq(pg.reset_since, after);
    ck_assert_int_eq(pg.n, 0);
    ck_assert_int_eq(pg.next, mark);
    tu_page_free(&pg);
}

/* ---- tests ------------------------------------------------------------------------------------------ */

/* Age: x keeps 3 s. Its rows go in batches of at most 40 (seen between them: SLUICE_RETENTION_PAUSE_MS=300),
 * with the update event of one of them; y and every seq stay as they are; then every reader
 * answers a position before x's mark with a reset, and one inside the range with its messages. */
START_TEST(test_age_retention_deletes_in_batches_and_resets)
{
    const char *const persister_env[] = {"SLUICE_RETENTION=x=3s", "SLUICE_RETENTION_INTERVAL_MS=200",
                                         "SLUICE_RETENTION_BATCH=40", "SLUICE_RETENTION_PAUSE_MS=300", NULL};
    /* (every check below is a new stream or socket from this one client: no history cap in the way) */
    const char *const sse_env[] = {"SLUICE_SSE_HISTORY_PER_CLIENT=1000", "SLUICE_SSE_HISTORY_CONCURRENCY=1000", NULL};
    const char *const no_memory[] = {"SLUICE_SSE_RECENT=0", "SLUICE_SSE_HISTORY_PER_CLIENT=1000",
                                     "SLUICE_SSE_HISTORY_CONCURRENCY=1000", NULL};
    start_stack("retention_age", persister_env, sse_env);
    int port2 = 0;
    pid_t sse2 = tu_start_at(&S, "sse", &port2, no_memory);
    tu_wait_sse_ready(port2);
    PGconn *db = tu_db(&S);

    long long t0 = tu_now_ms();
    post_many(200, post_body); /* 150 in x, 50 in y */
    ck_assert_int_eq(tu_wait_rows(db, 200, 20000), 200);
    char id[40];
    const char *p0[] = {"x"};
    PGresult *r = PQexecParams(db, "SELECT id FROM messages WHERE channel = $1 ORDER BY seq OFFSET 2 LIMIT 1", 1, NULL,
                               p0, NULL, NULL, 0);
    ck_assert_int_eq(PQntuples(r), 1);
    snprintf(id, sizeof(id), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    tu_publish_event(&S, SL_MESSAGE_UPDATE, id, "x", "edited before it went");
    long long event_seq = -1;
    for (long long end = tu_now_ms() + 10000; event_seq < 0 && tu_now_ms() < end; tu_sleep_ms(50))
        event_seq = scalar1(db, "SELECT max(seq) FROM message_events WHERE message_id = $1::uuid", id);
    ck_assert_int_gt(event_seq, 0);
    long long last = tu_scalar(db, "SELECT last_seq FROM sluice_feed WHERE id = 1");
    ck_assert_int_eq(last, 201);
    char *y_before = channel_rows_text(db, "y");
    ck_assert_int_eq(channel_rows(db, "x"), 150);
    ck_assert_msg(tu_now_ms() - t0 < 2500, "posting took %lld ms: x may have started going", tu_now_ms() - t0);

    /* the job: x goes 40 at a time, 300 ms apart */
    long long seen[16], nseen = 0, prev = 150;
    for (long long end = tu_now_ms() + 20000; prev > 0 && tu_now_ms() < end; tu_sleep_ms(25)) {
        long long n = channel_rows(db, "x");
        if (n != prev && nseen < 16)
            seen[nseen++] = n;
        prev = n;
    }
    ck_assert_msg(prev == 0, "x still has %lld rows", prev);
    printf("retention: x went from 150 rows through");
    for (long long i = 0; i < nseen; i++)
        printf(" %lld", seen[i]);
    printf(" (batches of at most 40), %lld ms after the posts\n", tu_now_ms() - t0);
    ck_assert_int_ge(nseen, 4);
    for (long long i = 0; i < nseen; i++)
        ck_assert_msg((i ? seen[i - 1] : 150) - seen[i] <= 40, "x went from %lld to %lld rows at once",
                      i ? seen[i - 1] : 150, seen[i]);

    /* y and the feed's positions as they were; the event of x's message went with it */
    char *y_after = channel_rows_text(db, "y");
    ck_assert_str_eq(y_before, y_after);
    free(y_before);
    free(y_after);
    ck_assert_int_eq(tu_scalar(db, "SELECT last_seq FROM sluice_feed WHERE id = 1"), last);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM message_events"), 0);
    long long mark = scalar1(db, "SELECT low_seq FROM sluice_retention WHERE channel = $1", "x");
    ck_assert_int_eq(mark, event_seq); /* the highest seq deleted: the event's, posted last */
    ck_assert_int_eq(scalar1(db, "SELECT count(*) FROM sluice_retention WHERE channel <> $1", "x"), 0);
    /* GET /v1/channels's counts follow: x has no message left, y its 50 */
    ck_assert_int_eq(scalar1(db, "SELECT messages FROM sluice_channels WHERE channel = $1", "x"), 0);
    ck_assert_int_eq(scalar1(db, "SELECT messages FROM sluice_channels WHERE channel = $1", "y"), 50);
    ck_assert_double_eq(tu_metric(S.persister_port, "sluice_persister_retention_deleted_total{table=\"messages\"}"), 150);
    ck_assert_double_eq(tu_metric(S.persister_port, "sluice_persister_retention_deleted_total{table=\"events\"}"), 1);
    ck_assert_double_ge(tu_metric(S.persister_port, "sluice_persister_retention_batches_total"), 4);

    /* a new message of x takes the next seq: nothing is renumbered */
    char body[128];
    tu_resp_t resp;
    char url[128];
    snprintf(url, sizeof(url), "%s/v1/messages", S.base);
    int len = snprintf(body, sizeof(body), "{\"channel\":\"x\",\"author\":\"late\",\"text\":\"after the job\"}");
    ck_assert_int_eq(tu_http("POST", url, NULL, "application/json", body, (size_t)len, &resp), 0);
    ck_assert_int_eq(resp.status, 202);
    tu_resp_free(&resp);
    ck_assert_int_eq(tu_wait_rows(db, 51, 10000), 51);
    ck_assert_int_eq(scalar1(db, "SELECT max(seq) FROM messages WHERE channel = $1", "x"), last + 1);
    ck_assert(tu_wait_metric(S.sse_port, "sluice_sse_position", (double)(last + 1), 10000));
    ck_assert(tu_wait_metric(port2, "sluice_sse_position", (double)(last + 1), 10000));

    /* before the mark: a reset everywhere, from memory and from the database */
    char b1[64], b2[64];
    const char *bases[3] = {sse_base(S.sse_port, b1, sizeof(b1)), sse_base(port2, b2, sizeof(b2)), S.base};
    int ports[2] = {S.sse_port, port2};
    for (int i = 0; i < 2; i++) {
        expect_stream_reset(ports[i], "x", 5);
        expect_stream_reset(ports[i], "x,y", mark - 1);
        ws_subscribe(ports[i], "x", 5, 1);
    }
    for (int i = 0; i < 3; i++) {
        expect_pull_reset(bases[i], "x", 5, mark);
        expect_pull_reset(bases[i], NULL, 0, mark); /* every channel: x's mark counts */
    }
    /* inside the range: what is kept, no reset */
    long long after_job = last + 1;
    long long y_all[50];
    size_t ny = 0;
    r = PQexecParams(db, "SELECT seq FROM messages WHERE channel = $1 ORDER BY seq", 1, NULL, (const char *[]){"y"}, NULL,
                     NULL, 0);
    for (int i = 0; i < PQntuples(r) && ny < 50; i++)
        y_all[ny++] = strtoll(PQgetvalue(r, i, 0), NULL, 10);
    PQclear(r);
    ck_assert_int_eq(ny, 50);
    for (int i = 0; i < 2; i++) {
        expect_stream_resume(ports[i], "x", mark, &after_job, 1);
        expect_stream_resume(ports[i], "y", 0, y_all, ny); /* y lost nothing: from its start */
        ck_assert_int_eq(ws_subscribe(ports[i], "x", mark, 0), 1);
    }
    for (int i = 0; i < 3; i++) {
        tu_page_t pg;
        char q[96];
        snprintf(q, sizeof(q), "after=%lld&channel=x", mark);
        ck_assert_int_eq(tu_pull(bases[i], q, &pg), 0);
        ck_assert_msg(pg.status == 200 && pg.reset[0] == '\0' && pg.n == 1 && pg.seqs[0] == after_job,
                      "%s ?%s: %ld, reset '%s', %zu items", bases[i], q, pg.status, pg.reset, pg.n);
        tu_page_free(&pg);
        ck_assert_int_eq(tu_pull(bases[i], "after=0&channel=y&limit=100", &pg), 0);
        ck_assert_msg(pg.reset[0] == '\0' && pg.n == 50 && pg.seqs[0] == y_all[0], "%s: y from 0", bases[i]);
        tu_page_free(&pg);
    }
    /* the api's history of x ends with the reset: a page with what is kept, then the reset */
    tu_page_t pg;
    ck_assert_int_eq(tu_pull(S.base, "channel=x", &pg), 0);
    ck_assert_msg(pg.status == 200 && pg.n == 1 && pg.seqs[0] == after_job && pg.next == after_job && !pg.reset[0],
                  "history of x: %zu items, next %lld, reset '%s'", pg.n, pg.next, pg.reset);
    tu_page_free(&pg);
    char q[64];
    snprintf(q, sizeof(q), "channel=x&before=%lld", after_job);
    ck_assert_int_eq(tu_pull(S.base, q, &pg), 0);
    ck_assert_msg(pg.n == 0 && pg.next == -1 && strcmp(pg.reset, "too_old") == 0 && pg.reset_since == after_job,
                  "history of x before %lld: %zu items, reset '%s' since %lld", after_job, pg.n, pg.reset,
                  pg.reset_since);
    tu_page_free(&pg);
    ck_assert_int_eq(tu_pull(S.base, "channel=y&limit=100", &pg), 0); /* y's history: its start, no reset */
    ck_assert_msg(pg.n == 50 && pg.next == -1 && !pg.reset[0], "history of y: %zu, reset '%s'", pg.n, pg.reset);
    tu_page_free(&pg);
    /* a stream's newest history of x (no resume) from memory shows only what is kept */
    for (int i = 0; i < 2; i++) {
        long long want = after_job;
        char target[96];
        tu_stream_t st;
        tu_sev_t ev;
        snprintf(target, sizeof(target), "/v1/stream?channels=x&history=20&format=ndjson");
        ck_assert_int_eq(stream_first(ports[i], target, &ev, &st), TU_EV_MESSAGE);
        ck_assert_msg(ev.seq == want, "port %d: the history of x starts at %lld, want %lld", ports[i], ev.seq, want);
        tu_stream_close(&st);
    }
    printf("retention: sse (memory) resets %.0f, sse (database) resets %.0f, pull resets %.0f / %.0f; mark of x %lld\n",
           tu_metric(S.sse_port, "sluice_sse_resets_total"), tu_metric(port2, "sluice_sse_resets_total"),
           tu_metric(S.sse_port, "sluice_sse_pull_answers_total{how=\"reset\"}"),
           tu_metric(port2, "sluice_sse_pull_answers_total{how=\"reset\"}"), mark);
    ck_assert_double_eq(tu_metric(S.sse_port, "sluice_sse_retention_low_seq"), (double)mark);
    PQfinish(db);
    ck_assert_int_eq(tu_stop(&sse2, SIGTERM, 15000), 0);
    tu_stack_cleanup(&S);
}
END_TEST

static void chat_body(int i, char *buf, size_t size)
{
    snprintf(buf, size, "{\"channel\":\"%s\",\"author\":\"a\",\"text\":\"c%d\"}", i % 8 == 7 ? "other" : "chat-1", i);
}

/* Count: chat-* keeps its newest 10 (a wildcard rule: the job lists the channels); other is kept
 * ("*=forever" after it). */
START_TEST(test_count_retention_keeps_the_newest)
{
    const char *const persister_env[] = {"SLUICE_RETENTION=chat-*=10,*=forever", "SLUICE_RETENTION_INTERVAL_MS=200",
                                         "SLUICE_RETENTION_BATCH=7", NULL};
    start_stack("retention_count", persister_env, NULL);
    PGconn *db = tu_db(&S);
    post_many(80, chat_body); /* 70 in chat-1, 10 in other */
    long long stored = 0; /* (seq is gapless: all 80 are stored at 80, whatever the job took already) */
    for (long long end = tu_now_ms() + 20000; stored < 80 && tu_now_ms() < end; tu_sleep_ms(50))
        stored = tu_scalar(db, "SELECT last_seq FROM sluice_feed WHERE id = 1");
    ck_assert_int_eq(stored, 80);
    long long n = -1;
    for (long long end = tu_now_ms() + 20000; n != 10 && tu_now_ms() < end; tu_sleep_ms(50))
        n = channel_rows(db, "chat-1");
    ck_assert_int_eq(n, 10);
    ck_assert_int_eq(channel_rows(db, "other"), 10);
    /* the newest 10 stay; the mark is the newest that went */
    long long kept_min = scalar1(db, "SELECT min(seq) FROM messages WHERE channel = $1", "chat-1");
    long long mark = scalar1(db, "SELECT low_seq FROM sluice_retention WHERE channel = $1", "chat-1");
    ck_assert_int_lt(mark, kept_min);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE channel = 'chat-1' AND seq > (SELECT low_seq FROM"
                                   " sluice_retention WHERE channel = 'chat-1')"),
                     10);
    ck_assert_int_eq(tu_scalar(db, "SELECT max(seq) FROM messages WHERE channel = 'chat-1' AND seq <= (SELECT low_seq"
                                   " FROM sluice_retention WHERE channel = 'chat-1')"),
                     -1);
    ck_assert_double_ge(tu_metric(S.persister_port, "sluice_persister_retention_batches_total"), 9); /* 60 / 7 */
    char base[64];
    expect_pull_reset(sse_base(S.sse_port, base, sizeof(base)), "chat-1", mark - 1, mark);
    tu_page_t pg;
    char q[96];
    snprintf(q, sizeof(q), "after=%lld&channel=chat-1", mark);
    ck_assert_int_eq(tu_pull(base, q, &pg), 0);
    ck_assert_msg(pg.n == 10 && pg.seqs[0] == kept_min && !pg.reset[0], "after the mark: %zu, reset '%s'", pg.n,
                  pg.reset);
    tu_page_free(&pg);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

static void staff_body(int i, char *buf, size_t size)
{
    /* 3 of every 4 in the private staff, the rest in general */
    snprintf(buf, size, "{\"channel\":\"%s\",\"author\":\"a\",\"text\":\"s%d\"}", i % 4 == 3 ? "general" : "staff", i);
}

/* base's page of query (history or pull): no reset, and exactly want's seqs (n of them) in order. */
static void expect_page_seqs(const char *base, const char *query, const long long *want, size_t n)
{
    tu_page_t pg;
    ck_assert_int_eq(tu_pull(base, query, &pg), 0);
    ck_assert_msg(pg.status == 200 && pg.reset[0] == '\0', "%s ?%s: %ld, reset '%s'", base, query, pg.status,
                  pg.reset);
    ck_assert_msg(pg.n == n, "%s ?%s: %zu messages, want %zu", base, query, pg.n, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(pg.seqs[i], want[i]);
    tu_page_free(&pg);
}

/* A private channel's retention resets its readers only: a reader of every channel that may not
 * read it (no token) reads the public channels from their start, with no reset, on sse from memory
 * and from the database, and on the api (pull and history); a token that covers it is reset. */
START_TEST(test_private_retention_resets_only_its_readers)
{
#define SECRET "a-shared-secret-for-jwt-readers-0123456789"
    const char *const persister_env[] = {"SLUICE_RETENTION=staff=2,*=forever", "SLUICE_RETENTION_INTERVAL_MS=200",
                                         NULL};
    const char *const env[] = {"SLUICE_JWT_SECRET=" SECRET, "SLUICE_PRIVATE_CHANNELS=staff", NULL};
    const char *const nomem_env[] = {"SLUICE_JWT_SECRET=" SECRET, "SLUICE_PRIVATE_CHANNELS=staff",
                                     "SLUICE_SSE_RECENT=0", NULL};
    char claims[160], q[1024], bases[3][64];
    start_stack("retention_private", persister_env, env); /* its api is open to writing, for post_many */
    int api_port = 0, nomem_port = 0;
    pid_t api = tu_start_at(&S, "api", &api_port, env); /* the readers' api */
    pid_t nomem = tu_start_at(&S, "sse", &nomem_port, nomem_env);
    tu_wait_sse_ready(nomem_port);
    PGconn *db = tu_db(&S);
    post_many(40, staff_body); /* 30 in staff, 10 in general */
    long long n = -1;
    for (long long end = tu_now_ms() + 20000; n != 2 && tu_now_ms() < end; tu_sleep_ms(50))
        n = channel_rows(db, "staff");
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(channel_rows(db, "general"), 10);
    long long mark = scalar1(db, "SELECT low_seq FROM sluice_retention WHERE channel = $1", "staff");
    long long asc[10], desc[10];
    PGresult *res = PQexec(db, "SELECT seq FROM messages WHERE channel = 'general' ORDER BY seq");
    ck_assert_int_eq(PQntuples(res), 10);
    for (int i = 0; i < 10; i++)
        desc[9 - i] = asc[i] = atoll(PQgetvalue(res, i, 0));
    PQclear(res);
    ck_assert_int_lt(asc[0], mark); /* the public channel has messages below the private one's mark */

    snprintf(claims, sizeof(claims), "{\"sub\":\"sam\",\"exp\":%lld,\"channels\":[\"staff\"]}",
             (long long)time(NULL) + 600);
    char *t = tu_jwt_hs256(SECRET, claims);
    snprintf(bases[0], sizeof(bases[0]), "http://127.0.0.1:%d", S.sse_port);
    snprintf(bases[1], sizeof(bases[1]), "http://127.0.0.1:%d", nomem_port);
    snprintf(bases[2], sizeof(bases[2]), "http://127.0.0.1:%d", api_port);
    for (int b = 0; b < 3; b++) {
        /* the staff reader is reset (once the instance has read the mark: sse reads it every check) */
        tu_page_t pg;
        snprintf(q, sizeof(q), "after=0&limit=100&token=%s", t);
        for (long long end = tu_now_ms() + 10000;; tu_sleep_ms(100)) {
            ck_assert_int_eq(tu_pull(bases[b], q, &pg), 0);
            if (strcmp(pg.reset, "too_old") == 0 || tu_now_ms() > end)
                break;
            tu_page_free(&pg);
        }
        ck_assert_msg(strcmp(pg.reset, "too_old") == 0 && pg.next == mark, "%s: reset '%s', next %lld (mark %lld)",
                      bases[b], pg.reset, pg.next, mark);
        tu_page_free(&pg);
        /* the others read every public message */
        expect_page_seqs(bases[b], "after=0&limit=100", asc, 10);
    }
    /* the api's history: to its start, no reset, and no page after it */
    expect_page_seqs(bases[2], "limit=100", desc, 10);
    tu_page_t last;
    ck_assert_int_eq(tu_pull(bases[2], "limit=100", &last), 0);
    ck_assert_msg(last.next == -1, "history: next %lld after its start", last.next);
    tu_page_free(&last);
    free(t);
    ck_assert_int_eq(tu_stop(&nomem, SIGTERM, 10000), 0);
    ck_assert_int_eq(tu_stop(&api, SIGTERM, 10000), 0);
    PQfinish(db);
    tu_stack_cleanup(&S);
#undef SECRET
}
END_TEST

int main(void)
{
    const tu_named_test_t tests[] = {
        {"policy", test_policy_parse_and_match},
        {"age", test_age_retention_deletes_in_batches_and_resets},
        {"count", test_count_retention_keeps_the_newest},
        {"private", test_private_retention_resets_only_its_readers},
    };
    return tu_run_named("retention", tests, sizeof(tests) / sizeof(tests[0]), 240);
}
