/*
 * Integration tests of sluice-ingest in streaming mode, against the fake Mastodon
 * (tests/fake_mastodon.c) and the real RabbitMQ/PostgreSQL with the api and the persister:
 * mapping into the database, reconnects without duplicates, edits and deletes through to the
 * database and the live exchange, and the control endpoint.
 */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_ingest_util.h"
#include "fake_mastodon.h"
#include "sl_amqp.h"
#include "sl_streamclient.h"
#include "sl_testutil.h"
#include "sl_wsclient.h"
#include "sl_testsuite.h"

#define TOKEN "test-token-123"

static tu_stack_t S;

static void post_status(fm_t *f, const char *id, const char *acct, const char *html)
{
    char *json = fm_status_json(id, acct, html, NULL);
    fm_post(f, json);
    free(json);
}

static const char *const stream_env[] = {"SLUICE_MASTODON_TOKEN=" TOKEN, NULL};

/* Rows of a message by status id: its body, or NULL when absent (malloc'd). */
static char *body_of(PGconn *db, const char *status_id, const char *column)
{
    char id[37], sql[256];
    it_message_id(status_id, id);
    snprintf(sql, sizeof(sql), "SELECT %s FROM messages WHERE id = '%s'", column, id);
    PGresult *r = PQexec(db, sql);
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    char *v = PQntuples(r) == 1 && !PQgetisnull(r, 0, 0) ? strdup(PQgetvalue(r, 0, 0)) : NULL;
    PQclear(r);
    return v;
}

/* The column (or SQL expression) of the message made from status_id equals want. */
static void assert_column(PGconn *db, const char *status_id, const char *column, const char *want)
{
    char *v = body_of(db, status_id, column);
    ck_assert_msg(v != NULL && strcmp(v, want) == 0, "status %s, %s: got %s, want %s", status_id, column,
                  v != NULL ? v : "(no row)", want);
    free(v);
}

START_TEST(test_stream_statuses_are_stored)
{
    fm_conf_t fc = {.token = TOKEN, .heartbeat_ms = 300};
    fm_t *f = fm_start(&fc);
    it_ingest_t g;
    ck_assert_ptr_nonnull(f);
    fm_set_split(f, 1); /* every event arrives cut mid-line, mid-character, between CR and LF */
    fm_set_crlf(f, 1);
    tu_stack_start_api(&S, "ingest_map", NULL);
    it_start_ingest(&g, &S, fm_url(f), stream_env);
    ck_assert_msg(fm_wait_streams(f, 1, 10000), "ingest did not open the stream; see %s", g.log);
    ck_assert(it_wait_field(&g, "mode", "streaming", 5000));
    ck_assert(it_wait_field(&g, "state", "running", 5000));

    post_status(f, "101", "alice", "<p>Hello &amp; welcome, it&#39;s caf\xc3\xa9 time \xf0\x9f\x8c\x8a</p>");
    post_status(f, "102", "bob@remote.example", "<p>first</p><p>second<br>third</p>");
    post_status(f, "103", "carol", "<p><a href=\"https://x.example/long\"><span class=\"invisible\">https://</span>"
                                   "<span>x.example/long</span></a> &#x27;quoted&#x27;</p>");
    post_status(f, "104", "dave", "<p></p>");                   /* empty text: skipped */
    fm_event(f, "announcement", "{\"id\":\"1\",\"content\":\"x\"}"); /* unknown event: ignored */
    /* an event whose JSON spans several data: lines */
    char *compact = fm_status_json("105", "erin", "<p>multi-line</p>", NULL);
    json_t *o = json_loads(compact, 0, NULL);
    char *multi = json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    ck_assert_ptr_nonnull(strchr(multi, '\n'));
    fm_event(f, "update", multi);
    free(multi);
    free(compact);
    json_decref(o);
    fm_raw(f, ":thump\n", 7);

    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 4, 20000), 4);
    tu_sleep_ms(500);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 4);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE source = 'mastodon' AND channel = 'mastodon'"), 4);
    assert_column(db, "101", "body", "Hello & welcome, it's caf\xc3\xa9 time \xf0\x9f\x8c\x8a");
    assert_column(db, "101", "author", "alice");
    assert_column(db, "101", "url", "https://remote.example/@alice/101");
    assert_column(db, "102", "body", "first\n\nsecond\nthird");
    assert_column(db, "102", "author", "bob@remote.example");
    assert_column(db, "103", "body", "https://x.example/long 'quoted'");
    assert_column(db, "105", "body", "multi-line");
    ck_assert_ptr_null(body_of(db, "104", "body"));
    assert_column(db, "101", "created_at = '2026-03-01T12:00:00Z'", "t");

    /* the history API shows the original post's address */
    char url[256];
    tu_resp_t r;
    snprintf(url, sizeof(url), "%s/v1/messages?channel=mastodon", S.base);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"url\":\"https://remote.example/@alice/101\""));
    ck_assert_ptr_nonnull(strstr(r.body, "\"source\":\"mastodon\""));
    tu_resp_free(&r);

    /* the stream was found through the instance document, on the streaming server */
    fm_stats_t st;
    fm_stats(f, &st);
    ck_assert_str_eq(st.last_stream_path, "/api/v1/streaming/public");
    ck_assert_int_ge(st.instance_requests, 1);
    ck_assert_int_eq(st.stream_401, 0);
    json_t *state = it_state(&g);
    json_t *ev = json_object_get(state, "events");
    ck_assert_int_eq(json_integer_value(json_object_get(ev, "received")), 6);
    ck_assert_int_eq(json_integer_value(json_object_get(ev, "skipped")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(ev, "enqueued")), 4);
    ck_assert(json_is_true(json_object_get(state, "connected")));
    ck_assert(json_is_string(json_object_get(state, "connected_since")));
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(state, "source"), "stream")), "public");
    json_decref(state);

    it_finish(&S, &g, db, f);
}
END_TEST

START_TEST(test_reconnect_stores_no_duplicates)
{
    fm_conf_t fc = {.token = TOKEN, .heartbeat_ms = 300};
    fm_t *f = fm_start(&fc);
    it_ingest_t g;
    char id[16];
    fm_set_replay(f, 4); /* a new stream first gets the last 4 events again */
    tu_stack_start_api(&S, "ingest_reconnect", NULL);
    it_start_ingest(&g, &S, fm_url(f), stream_env);
    ck_assert(fm_wait_streams(f, 1, 10000));
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof(id), "%d", 200 + i);
        post_status(f, id, "user", "<p>before the drop</p>");
    }
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 6, 20000), 6);

    /* the connection breaks; ingest reconnects and the replay repeats four posts */
    fm_stats_t st;
    fm_stats(f, &st);
    int before = st.stream_connects;
    fm_drop_streams(f);
    for (int waited = 0; waited < 10000 && (st.stream_connects == before || st.streams_open < 1); waited += 50) {
        tu_sleep_ms(50);
        fm_stats(f, &st);
    }
    ck_assert_msg(st.stream_connects > before && st.streams_open == 1, "no reconnect; see %s", g.log);
    for (int i = 6; i < 8; i++) {
        snprintf(id, sizeof(id), "%d", 200 + i);
        post_status(f, id, "user", "<p>after the drop</p>");
    }
    ck_assert_int_eq(tu_wait_rows(db, 8, 20000), 8);

    /* a silent server (no heartbeats) is taken for dead after the idle timeout (2 s here) */
    fm_stats(f, &st);
    int connects = st.stream_connects;
    fm_set_silent(f, 1);
    for (int waited = 0; waited < 10000 && st.stream_connects == connects; waited += 100) {
        tu_sleep_ms(100);
        fm_stats(f, &st);
    }
    ck_assert_msg(st.stream_connects > connects, "a silent stream was not reconnected");
    fm_set_silent(f, 0);
    ck_assert(fm_wait_streams(f, 1, 10000));
    post_status(f, "300", "user", "<p>after the silence</p>");
    ck_assert_int_eq(tu_wait_rows(db, 9, 20000), 9);
    tu_sleep_ms(500);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 9);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(DISTINCT id) FROM messages"), 9);
    ck_assert_int_eq(tu_scalar(db, "SELECT max(seq) FROM messages"), 9);
    json_t *state = it_state(&g);
    ck_assert_int_ge(json_integer_value(json_object_get(state, "reconnects")), 2);
    ck_assert(json_is_string(json_object_get(state, "last_error")));
    json_decref(state);

    it_finish(&S, &g, db, f);
}
END_TEST

START_TEST(test_edits_and_deletes_propagate)
{
    fm_conf_t fc = {.token = TOKEN, .heartbeat_ms = 300};
    fm_t *f = fm_start(&fc);
    it_ingest_t g;
    char id1[37], id2[37], ghost[37], url[256];
    tu_stack_start_api(&S, "ingest_events", NULL);
    amqp_connection_state_t live = it_live_open(&S);
    it_start_ingest(&g, &S, fm_url(f), stream_env);
    ck_assert(fm_wait_streams(f, 1, 10000));
    it_message_id("401", id1);
    it_message_id("402", id2);
    it_local_id(fm_url(f), "999", ghost);

    post_status(f, "401", "alice", "<p>original text</p>");
    post_status(f, "402", "bob", "<p>soon deleted</p>");
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 2, 20000), 2);
    char *edited = fm_status_json("401", "alice", "<p>edited text</p>", "2026-03-02T10:00:00.000Z");
    fm_event(f, "status.update", edited);
    fm_event(f, "delete", "402");
    fm_event(f, "delete", "999"); /* a post we never saw */
    fm_event(f, "delete", "402"); /* the same deletion again */
    fm_event(f, "status.update", edited);
    free(edited);
    ck_assert_int_eq(it_wait_count(db, "SELECT count(*) FROM message_events", 3, 20000), 3);
    tu_sleep_ms(500);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM message_events"), 3);

    /* the database: edited text and time, deletion time, one gapless seq over messages and events */
    assert_column(db, "401", "body", "edited text");
    assert_column(db, "401", "edited_at = '2026-03-02T10:00:00Z'", "t");
    assert_column(db, "402", "deleted_at IS NOT NULL", "t");
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM (SELECT seq FROM messages UNION ALL SELECT seq FROM "
                                   "message_events) s WHERE seq BETWEEN 1 AND 5"),
                     5);
    ck_assert_int_eq(tu_scalar(db, "SELECT last_seq FROM sluice_feed WHERE id = 1"), 5);
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT seq FROM message_events WHERE message_id = '%s' AND type = 'delete'", ghost);
    ck_assert_int_eq(tu_scalar(db, sql), 5);

    /* the api: the deleted message is gone, the edited one says so */
    tu_resp_t r;
    snprintf(url, sizeof(url), "%s/v1/messages?channel=mastodon", S.base);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    json_t *root = json_loads(r.body, 0, NULL), *msgs = json_object_get(root, "messages");
    ck_assert_int_eq(json_array_size(msgs), 1);
    json_t *m = json_array_get(msgs, 0);
    ck_assert_str_eq(json_string_value(json_object_get(m, "id")), id1);
    ck_assert_str_eq(json_string_value(json_object_get(m, "text")), "edited text");
    ck_assert_str_eq(json_string_value(json_object_get(m, "edited_at")), "2026-03-02T10:00:00.000000Z");
    json_decref(root);
    tu_resp_free(&r);
    snprintf(url, sizeof(url), "%s/v1/messages/%s", S.base, id2);
    tu_http_expect("GET", url, NULL, NULL, NULL, 0, 404);

    /* the live exchange: messages and events in seq order, each once */
    const char *want_type[] = {NULL, NULL, "update", "delete", "delete"};
    const char *want_id[] = {id1, id2, id1, id2, ghost};
    for (int i = 0; i < 5; i++) {
        char *s = it_live_next(live, 10000);
        ck_assert_msg(s != NULL, "live event %d missing", i + 1);
        json_t *e = json_loads(s, 0, NULL);
        ck_assert_ptr_nonnull(e);
        ck_assert_int_eq(json_integer_value(json_object_get(e, "seq")), i + 1);
        ck_assert_str_eq(json_string_value(json_object_get(e, "id")), want_id[i]);
        ck_assert_str_eq(json_string_value(json_object_get(e, "channel")), "mastodon");
        json_t *type = json_object_get(e, "type");
        if (want_type[i] == NULL) {
            ck_assert_ptr_null(type);
            ck_assert_str_eq(json_string_value(json_object_get(e, "source")), "mastodon");
        } else {
            ck_assert_str_eq(json_string_value(type), want_type[i]);
            ck_assert(json_is_string(json_object_get(e, "event_id")));
        }
        if (i == 2) {
            ck_assert_str_eq(json_string_value(json_object_get(e, "text")), "edited text");
            ck_assert_str_eq(json_string_value(json_object_get(e, "edited_at")), "2026-03-02T10:00:00.000000Z");
        }
        json_decref(e);
        free(s);
    }
    char *extra = it_live_next(live, 500);
    ck_assert_msg(extra == NULL, "unexpected live payload %s", extra);
    sl_amqp_close(live);

    /* the events table holds what the live exchange carried, for replays by seq */
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM message_events WHERE body LIKE '%%\"seq\":3%%' AND type = 'update'");
    ck_assert_int_eq(tu_scalar(db, sql), 1);

    it_finish(&S, &g, db, f);
}
END_TEST

/* The same post federated to two instances, each read by its own ingest: one message; its edit
 * and its deletion, read from both, are one update and one delete. A boost of it is a message of
 * its own. */
START_TEST(test_same_post_from_two_instances_is_one_message)
{
    fm_conf_t fc = {.token = TOKEN, .heartbeat_ms = 300};
    fm_t *fa = fm_start(&fc), *fb = fm_start(&fc);
    it_ingest_t ga, gb;
    char id[37], sql[256];
    ck_assert(fa != NULL && fb != NULL);
    tu_stack_start_api(&S, "ingest_dedupe", NULL);
    it_start_ingest(&ga, &S, fm_url(fa), stream_env);
    it_start_ingest(&gb, &S, fm_url(fb), stream_env);
    ck_assert_msg(fm_wait_streams(fa, 1, 10000) && fm_wait_streams(fb, 1, 10000), "see %s and %s", ga.log, gb.log);
    it_message_id("601", id);

    /* A numbers the post 601, B 88601; they arrive together, then another one in the other order */
    char *post = fm_status_json("601", "alice@remote.example", "<p>federated</p>", NULL);
    char *copy = fm_with_id(post, "88601");
    char *post2 = fm_status_json("602", "alice@remote.example", "<p>second</p>", NULL);
    char *copy2 = fm_with_id(post2, "88602");
    fm_post(fa, post);
    fm_post(fb, copy);
    fm_post(fb, copy2);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 2, 20000), 2);
    fm_post(fa, post2);
    char *boost = fm_boost_json("88700", "bob@b.example", post);
    fm_post(fb, boost);
    ck_assert_int_eq(tu_wait_rows(db, 3, 20000), 3);
    tu_sleep_ms(800);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 3);
    assert_column(db, "601", "body", "federated");
    assert_column(db, "602", "body", "second");
    assert_column(db, "88700", "author", "bob@b.example");
    assert_column(db, "88700", "body", "federated");
    assert_column(db, "88700", "url", "https://remote.example/@alice@remote.example/601");

    /* the edit and the deletion, each from both instances */
    char *edited = fm_status_json("601", "alice@remote.example", "<p>federated, edited</p>", "2026-03-02T10:00:00.000Z");
    char *edited_b = fm_with_id(edited, "88601");
    fm_event(fb, "status.update", edited_b);
    fm_event(fa, "status.update", edited);
    ck_assert_int_eq(it_wait_count(db, "SELECT count(*) FROM message_events", 1, 20000), 1);
    fm_event(fa, "delete", "601");
    fm_event(fb, "delete", "88601");
    ck_assert_int_eq(it_wait_count(db, "SELECT count(*) FROM message_events", 2, 20000), 2);
    tu_sleep_ms(800);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM message_events"), 2);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM message_events WHERE message_id = '%s'", id);
    ck_assert_int_eq(tu_scalar(db, sql), 2);
    assert_column(db, "601", "body", "federated, edited");
    assert_column(db, "601", "deleted_at IS NOT NULL", "t");
    assert_column(db, "88700", "deleted_at IS NULL", "t"); /* the boost stays */
    ck_assert_int_eq(tu_scalar(db, "SELECT last_seq FROM sluice_feed WHERE id = 1"), 5);

    free(post);
    free(copy);
    free(post2);
    free(copy2);
    free(boost);
    free(edited);
    free(edited_b);
    ck_assert_int_eq(it_stop_ingest(&ga), 0);
    ck_assert_int_eq(it_stop_ingest(&gb), 0);
    PQfinish(db);
    tu_stack_cleanup(&S);
    fm_stop(fa);
    fm_stop(fb);
}
END_TEST

/* One ingest reads two instances at once, one streaming and one polling, each with its own state
 * and cursor in GET /v1/ingest; a post both have is stored once. */
START_TEST(test_one_ingest_reads_several_sources)
{
    fm_conf_t fa_conf = {.token = TOKEN, .heartbeat_ms = 300}, fb_conf = {.token = "only-for-streaming"};
    fm_t *fa = fm_start(&fa_conf), *fb = fm_start(&fb_conf);
    it_ingest_t g;
    char urls[256], tu[300];
    ck_assert(fa != NULL && fb != NULL);
    snprintf(urls, sizeof(urls), "SLUICE_MASTODON_URL=%s, %s", fm_url(fa), fm_url(fb));
    const char *env[] = {urls, "SLUICE_MASTODON_TOKEN=" TOKEN ",", "SLUICE_INGEST_POLL_LIMIT=10", NULL};
    char *post = fm_status_json("701", "carol@remote.example", "<p>on both</p>", NULL);
    char *copy = fm_with_id(post, "99701");
    char *only_b = fm_status_json("702", "dan@remote.example", "<p>only on b</p>", NULL);
    char *only_b2 = fm_with_id(only_b, "99702");
    fm_add_to_timeline(fb, copy);
    fm_add_to_timeline(fb, only_b2);
    tu_stack_start_api(&S, "ingest_sources", NULL);
    it_start_ingest(&g, &S, "unused", env);
    ck_assert_msg(fm_wait_streams(fa, 1, 10000), "see %s", g.log);
    fm_post(fa, post);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 2, 20000), 2);
    ck_assert(it_wait_field(&g, "mode", "mixed", 5000));
    tu_sleep_ms(800);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 2);
    assert_column(db, "701", "body", "on both");
    assert_column(db, "702", "body", "only on b");

    json_t *state = it_state(&g), *sources = json_object_get(state, "sources");
    ck_assert_str_eq(json_string_value(json_object_get(state, "state")), "running");
    snprintf(tu, sizeof(tu), "%s, %s", fm_url(fa), fm_url(fb));
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(state, "source"), "url")), tu);
    ck_assert_int_eq(json_array_size(sources), 2);
    json_t *a = json_array_get(sources, 0), *b = json_array_get(sources, 1);
    ck_assert_str_eq(json_string_value(json_object_get(a, "url")), fm_url(fa));
    ck_assert_str_eq(json_string_value(json_object_get(b, "url")), fm_url(fb));
    ck_assert_str_eq(json_string_value(json_object_get(a, "stream")), "public");
    ck_assert_str_eq(json_string_value(json_object_get(a, "mode")), "streaming");
    ck_assert_str_eq(json_string_value(json_object_get(b, "mode")), "polling");
    ck_assert_str_eq(json_string_value(json_object_get(a, "state")), "running");
    ck_assert_str_eq(json_string_value(json_object_get(b, "state")), "running");
    ck_assert(json_is_null(json_object_get(a, "cursor")));
    ck_assert_str_eq(json_string_value(json_object_get(b, "cursor")), "99702"); /* the next poll's min_id */
    ck_assert(json_is_true(json_object_get(a, "connected")) && json_is_true(json_object_get(b, "connected")));
    ck_assert(json_is_true(json_object_get(state, "connected")));
    ck_assert(json_is_string(json_object_get(b, "last_item_at")));
    json_t *ea = json_object_get(a, "events"), *eb = json_object_get(b, "events"), *e = json_object_get(state, "events");
    ck_assert_int_eq(json_integer_value(json_object_get(ea, "enqueued")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(eb, "enqueued")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(e, "enqueued")), 3); /* the persister stored 2 */
    ck_assert_int_eq(json_integer_value(json_object_get(e, "received")),
                     json_integer_value(json_object_get(ea, "received")) +
                         json_integer_value(json_object_get(eb, "received")));
    ck_assert_int_ge(json_integer_value(json_object_get(b, "polls")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(a, "polls")), 0);
    json_decref(state);

    /* B goes on from its cursor: a new status there is found by the next poll */
    char *later = fm_status_json("99703", "dan@remote.example", "<p>later on b</p>", NULL);
    fm_add_to_timeline(fb, later);
    ck_assert_int_eq(tu_wait_rows(db, 3, 20000), 3);
    ck_assert(it_wait_field(&g, "sources.1.cursor", "99703", 5000));

    /* the control endpoint stops and starts every source */
    tu_resp_t r;
    it_command(&g, "application/json", "{\"command\":\"stop\"}", &r);
    ck_assert_int_eq(r.status, 200);
    tu_resp_free(&r);
    ck_assert(it_wait_field(&g, "state", "stopped", 5000));
    ck_assert(fm_wait_streams(fa, 0, 5000));
    state = it_state(&g);
    sources = json_object_get(state, "sources");
    for (size_t i = 0; i < 2; i++)
        ck_assert_str_eq(json_string_value(json_object_get(json_array_get(sources, i), "state")), "stopped");
    json_decref(state);

    char url[160];
    snprintf(url, sizeof(url), "%s/metrics", g.base);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_ptr_nonnull(strstr(r.body, "sluice_ingest_sources 2\n"));
    tu_resp_free(&r);

    free(post);
    free(copy);
    free(only_b);
    free(only_b2);
    free(later);
    ck_assert_int_eq(it_stop_ingest(&g), 0);
    PQfinish(db);
    tu_stack_cleanup(&S);
    fm_stop(fa);
    fm_stop(fb);
}
END_TEST

/* A status with what a wall shows beside the text: names, avatar, warning, media (one of them with a
 * javascript: link), language; malloc'd JSON. */
static char *rich_status(const char *id, const char *spoiler, const char *description, const char *edited_at)
{
    char *base = fm_status_json(id, "erin@remote.example", "<p>look at this</p>", edited_at), long_name[400] = "";
    json_t *o = json_loads(base, 0, NULL), *account = json_object_get(o, "account");
    free(base);
    for (int i = 0; i < 100; i++)
        strcat(long_name, "\xc3\xa9");
    strcat(long_name, "\n<script>alert(1)</script>");
    json_object_set_new(account, "display_name", json_string(long_name));
    json_object_set_new(account, "avatar", json_string("https://remote.example/avatars/erin.png"));
    json_object_set_new(account, "url", json_string("javascript:alert(document.cookie)"));
    json_object_set_new(o, "spoiler_text", json_string(spoiler));
    json_object_set_new(o, "sensitive", json_true());
    json_object_set_new(o, "language", json_string("fr"));
    json_object_set_new(o, "media_attachments",
                        json_pack("[{s:s, s:s, s:s, s:s}, {s:s, s:s, s:s}]", "type", "image", "url",
                                  "https://files.remote.example/1.jpg", "preview_url",
                                  "https://files.remote.example/1s.jpg", "description", description, "type", "image",
                                  "url", "javascript:alert(2)", "preview_url", "https://files.remote.example/2s.jpg"));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* The meta of a message as JSON (from a stream event, a history answer, a live payload). */
static json_t *meta_in(const char *json)
{
    json_t *o = json_loads(json, 0, NULL);
    ck_assert_msg(o != NULL, "not JSON: %s", json);
    json_t *inner = json_object_get(o, "message"); /* a WebSocket frame */
    json_t *meta = json_incref(json_object_get(inner != NULL ? inner : o, "meta"));
    json_decref(o);
    return meta;
}

/* The next feed event of a stream (heartbeats and the like skipped): 1, or 0 when none came. */
static int next_event(tu_stream_t *st, tu_sev_t *ev)
{
    for (int i = 0; i < 20; i++) {
        if (tu_stream_next(st, ev, 10000) != 1)
            return 0;
        if (ev->kind == TU_EV_MESSAGE)
            return 1;
    }
    return 0;
}

/* The next WebSocket frame carrying a feed event (acknowledgements skipped): 1, or 0. */
static int next_frame(tu_ws_t *ws, tu_wsmsg_t *wm)
{
    for (int i = 0; i < 20; i++) {
        if (tu_ws_recv_data(ws, wm, 10000) != 1)
            return 0;
        if (strstr(wm->data, "\"message\":{") != NULL)
            return 1;
    }
    return 0;
}

/* meta, from Mastodon to every reader: the database, the live exchange, history answers, and the
 * SSE, NDJSON and WebSocket streams (live and replayed), for a post, its edit and a boost of it;
 * a javascript: link never gets through, and the api refuses a post that brings its own meta. */
START_TEST(test_meta_end_to_end)
{
    fm_conf_t fc = {.token = TOKEN, .heartbeat_ms = 300};
    fm_t *f = fm_start(&fc);
    it_ingest_t g;
    char id[37], boost_id[37], url[256], sql[512];
    tu_resp_t r;
    tu_stack_start(&S, "ingest_meta", NULL);
    amqp_connection_state_t live = it_live_open(&S);
    tu_stream_t sse;
    tu_ws_t ws;
    tu_sev_t ev;
    tu_wsmsg_t wm;
    ck_assert_int_eq(tu_stream_open(&sse, S.sse_port, "/v1/stream?channels=mastodon&history=0", NULL, 10000), 0);
    ck_assert_int_eq(sse.status, 200);
    ck_assert_int_eq(tu_ws_open(&ws, S.sse_port, "/v1/ws", 10000), 0);
    ck_assert_int_eq(tu_ws_send_text(&ws, "{\"command\":\"subscribe\",\"channel\":\"mastodon\",\"history\":0}"), 0);
    tu_sleep_ms(300);
    it_start_ingest(&g, &S, fm_url(f), stream_env);
    ck_assert(fm_wait_streams(f, 1, 10000));
    it_message_id("801", id);
    it_message_id("802", boost_id);

    char *post = rich_status("801", "spiders", "A spider\non its web", NULL);
    fm_post(f, post);
    char *boost = fm_boost_json("802", "bob@b.example", post);
    fm_post(f, boost);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 2, 20000), 2);

    /* stored as JSONB */
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM messages WHERE id = '%s' AND meta->>'spoiler_text' = 'spiders' AND"
             " meta->>'language' = 'fr' AND meta->'sensitive' = 'true' AND jsonb_array_length(meta->'media') = 1 AND"
             " meta->'media'->0->>'description' = 'A spider on its web' AND meta->>'avatar' ="
             " 'https://remote.example/avatars/erin.png' AND meta->>'url' = 'https://remote.example/@erin@remote.example/801'"
             " AND NOT meta ? 'account_url' AND NOT meta ? 'reblog' AND length(meta->>'display_name') = 64",
             id);
    ck_assert_int_eq(tu_scalar(db, sql), 1);
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM messages WHERE id = '%s' AND author = 'bob@b.example' AND"
             " meta->'reblog'->>'acct' = 'erin@remote.example' AND meta->'reblog'->>'url' ="
             " 'https://remote.example/@erin@remote.example/801' AND meta->>'display_name' = 'Booster' AND"
             " meta->>'spoiler_text' = 'spiders'",
             boost_id);
    ck_assert_int_eq(tu_scalar(db, sql), 1);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE meta::text LIKE '%javascript%'"), 0);

    /* the history: meta as stored, the same as on the live exchange and on every stream */
    snprintf(url, sizeof(url), "%s/v1/messages/%s", S.base, id);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_null(strstr(r.body, "javascript"));
    json_t *want = meta_in(r.body);
    tu_resp_free(&r);
    ck_assert(json_is_object(want));
    ck_assert_str_eq(json_string_value(json_object_get(want, "spoiler_text")), "spiders");
    ck_assert_int_eq(json_array_size(json_object_get(want, "media")), 1);
    char *live1 = it_live_next(live, 10000), *live2 = it_live_next(live, 10000);
    ck_assert(live1 != NULL && live2 != NULL);
    json_t *got = meta_in(live1);
    ck_assert_msg(json_equal(got, want), "live: %s", live1);
    json_decref(got);
    ck_assert_int_eq(next_event(&sse, &ev), 1);
    got = meta_in(ev.data);
    ck_assert_msg(json_equal(got, want), "sse: %s", ev.data);
    json_decref(got);
    ck_assert_int_eq(next_event(&sse, &ev), 1);
    got = meta_in(ev.data);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(got, "reblog"), "acct")), "erin@remote.example");
    json_decref(got);
    ck_assert_int_eq(next_frame(&ws, &wm), 1);
    got = meta_in(wm.data);
    ck_assert_msg(json_equal(got, want), "ws: %s", wm.data);
    json_decref(got);
    /* replayed from the database: SSE and NDJSON history */
    tu_stream_t hist;
    ck_assert_int_eq(tu_stream_open(&hist, S.sse_port, "/v1/stream?channels=mastodon&history=5&format=ndjson", NULL,
                                    10000), 0);
    ck_assert_int_eq(next_event(&hist, &ev), 1);
    got = meta_in(ev.data);
    ck_assert_msg(json_equal(got, want), "ndjson history: %s", ev.data);
    json_decref(got);
    tu_stream_close(&hist);
    ck_assert_int_eq(tu_stream_open(&hist, S.sse_port, "/v1/stream?channels=mastodon&history=5", NULL, 10000), 0);
    ck_assert_int_eq(next_event(&hist, &ev), 1);
    ck_assert_ptr_nonnull(strstr(ev.data, "\"meta\":{"));
    got = meta_in(ev.data);
    ck_assert_msg(json_equal(got, want), "sse history: %s", ev.data);
    json_decref(got);
    tu_stream_close(&hist);
    json_decref(want);
    free(live1);
    free(live2);

    /* the edit lifts the warning and changes the description: the update event carries the new
     * meta, and the stored message takes it */
    char *edited = rich_status("801", "", "A spider, seen closer", "2026-03-02T10:00:00.000Z");
    fm_event(f, "status.update", edited);
    ck_assert_int_eq(it_wait_count(db, "SELECT count(*) FROM message_events", 1, 20000), 1);
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM messages WHERE id = '%s' AND NOT meta ? 'spoiler_text' AND"
             " meta->'media'->0->>'description' = 'A spider, seen closer' AND body = 'look at this'",
             id);
    ck_assert_int_eq(it_wait_count(db, sql, 1, 5000), 1);
    ck_assert_int_eq(next_event(&sse, &ev), 1);
    ck_assert_str_eq(ev.event, "update");
    got = meta_in(ev.data);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(got, "media"), 0), "description")),
                     "A spider, seen closer");
    ck_assert_ptr_null(json_object_get(got, "spoiler_text"));
    json_decref(got);
    char *upd = it_live_next(live, 10000);
    ck_assert_ptr_nonnull(upd);
    ck_assert_ptr_nonnull(strstr(upd, "\"type\":\"update\""));
    ck_assert_ptr_nonnull(strstr(upd, "A spider, seen closer"));
    free(upd);
    snprintf(url, sizeof(url), "%s/v1/messages?channel=mastodon", S.base);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_ptr_nonnull(strstr(r.body, "A spider, seen closer"));
    ck_assert_ptr_null(strstr(r.body, "javascript"));
    tu_resp_free(&r);

    /* only ingest gives meta */
    snprintf(url, sizeof(url), "%s/v1/messages", S.base);
    const char *forged = "{\"author\":\"x\",\"text\":\"y\",\"meta\":{\"avatar\":\"https://evil.example/a.png\"}}";
    ck_assert_int_eq(tu_http("POST", url, NULL, "application/json", forged, strlen(forged), &r), 0);
    ck_assert_int_eq(r.status, 400);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"unknown_field\""));
    tu_resp_free(&r);

    free(post);
    free(boost);
    free(edited);
    tu_stream_close(&sse);
    tu_ws_close(&ws);
    sl_amqp_close(live);
    it_finish(&S, &g, db, f);
}
END_TEST

struct bad_command {
    const char *ctype, *body;
    long status;
    const char *code;
};

START_TEST(test_control_endpoint_starts_and_stops)
{
    fm_conf_t fc = {.token = TOKEN, .heartbeat_ms = 300};
    fm_t *f = fm_start(&fc);
    it_ingest_t g;
    tu_resp_t r;
    const char *env[] = {"SLUICE_MASTODON_TOKEN=" TOKEN, "SLUICE_INGEST_AUTOSTART=0", NULL};
    tu_stack_start_api(&S, "ingest_control", NULL);
    it_start_ingest(&g, &S, fm_url(f), env);
    ck_assert(it_wait_field(&g, "state", "stopped", 1000));
    tu_sleep_ms(500);
    fm_stats_t st;
    fm_stats(f, &st);
    ck_assert_int_eq(st.stream_connects, 0); /* no autostart: nothing read */

    it_command(&g, "application/json", "{\"command\":\"start\"}", &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"state\":\"running\""));
    tu_resp_free(&r);
    ck_assert(fm_wait_streams(f, 1, 10000));
    post_status(f, "501", "a", "<p>one</p>");
    post_status(f, "502", "a", "<p>two</p>");
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 2, 20000), 2);

    it_command(&g, "application/json", "{\"command\":\"stop\"}", &r);
    ck_assert_int_eq(r.status, 200);
    tu_resp_free(&r);
    ck_assert(it_wait_field(&g, "state", "stopped", 5000));
    ck_assert(fm_wait_streams(f, 0, 5000));
    post_status(f, "503", "a", "<p>while stopped</p>");
    tu_sleep_ms(1500);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 2);
    json_t *state = it_state(&g);
    ck_assert(json_is_false(json_object_get(state, "connected")));
    json_decref(state);

    it_command(&g, "application/json; charset=utf-8", "{\"command\":\"start\"}", &r);
    ck_assert_int_eq(r.status, 200);
    tu_resp_free(&r);
    ck_assert(fm_wait_streams(f, 1, 10000));
    post_status(f, "504", "a", "<p>resumed</p>");
    ck_assert_int_eq(tu_wait_rows(db, 3, 20000), 3);
    assert_column(db, "504", "body", "resumed");
    it_command(&g, "application/json", "{\"command\":\"start\"}", &r); /* already running: fine */
    ck_assert_int_eq(r.status, 200);
    tu_resp_free(&r);

    const struct bad_command bad[] = {
        {"application/json", "{\"command\":\"pause\"}", 400, "invalid_command"},
        {"application/json", "{\"command\":7}", 400, "invalid_command"},
        {"application/json", "{}", 400, "missing_field"},
        {"application/json", "{\"command\":\"stop\",\"now\":true}", 400, "unknown_field"},
        {"application/json", "[\"stop\"]", 400, "not_an_object"},
        {"application/json", "stop", 400, "invalid_json"},
        {"text/plain", "{\"command\":\"stop\"}", 415, "unsupported_media_type"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char want[64];
        it_command(&g, bad[i].ctype, bad[i].body, &r);
        snprintf(want, sizeof(want), "\"code\":\"%s\"", bad[i].code);
        ck_assert_msg(r.status == bad[i].status && strstr(r.body, want) != NULL, "case %zu: %ld %s", i, r.status, r.body);
        tu_resp_free(&r);
    }
    ck_assert(it_wait_field(&g, "state", "running", 1000)); /* a bad command changes nothing */
    char url[160];
    snprintf(url, sizeof(url), "%s/v1/ingest", g.base);
    tu_http_expect("PUT", url, NULL, "application/json", "{}", 2, 405);
    snprintf(url, sizeof(url), "%s/v1/nothing", g.base);
    tu_http_expect("GET", url, NULL, NULL, NULL, 0, 404);
    snprintf(url, sizeof(url), "%s/readyz", g.base);
    ck_assert(tu_wait_status(url, 200, 5000));
    snprintf(url, sizeof(url), "%s/metrics", g.base);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "sluice_ingest_events_total{outcome=\"enqueued\"} 3"));
    ck_assert_ptr_nonnull(strstr(r.body, "sluice_ingest_running 1"));
    tu_resp_free(&r);

    it_finish(&S, &g, db, f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ingest_stream");
    TCase *tc = tcase_create("integration");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_stream_statuses_are_stored);
    tcase_add_test(tc, test_reconnect_stores_no_duplicates);
    tcase_add_test(tc, test_edits_and_deletes_propagate);
    tcase_add_test(tc, test_same_post_from_two_instances_is_one_message);
    tcase_add_test(tc, test_one_ingest_reads_several_sources);
    tcase_add_test(tc, test_meta_end_to_end);
    tcase_add_test(tc, test_control_endpoint_starts_and_stops);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
