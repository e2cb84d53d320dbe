/*
 * Integration tests of "messages have a life" (#14) on the real RabbitMQ and PostgreSQL that
 * test.sh starts: PATCH and DELETE /v1/messages/{id} (who may, what history and streams show, the
 * races with the queue) and POST /v1/messages/batch (validation, all-or-nothing at the broker and
 * in the database, idempotency, rate, a persister killed in the middle).
 */
#include <check.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "sl_amqp.h"
#include "sl_message.h"
#include "sl_streamclient.h"
#include "sl_testjwt.h"
#include "sl_testutil.h"
#include "sl_time.h"
#include "sl_uuid.h"
#include "sl_testsuite.h"

static tu_stack_t S;

#define ALICE "Authorization: Bearer alice-token-1"
#define BOB "Authorization: Bearer bob-token-12"
#define STAR "Authorization: Bearer star-token-1"
#define ADMIN "Authorization: Bearer admin-token-1"

static const char *const api_env[] = {"SLUICE_API_TOKENS=alice-token-1:alice,bob-token-12:bob,star-token-1:*",
                                      "SLUICE_ADMIN_TOKEN=admin-token-1", NULL};

static void start(const char *name, long long max_length, int with_persister)
{
    tu_stack_init(&S, name, max_length);
    if (with_persister)
        tu_start(&S, "persister", NULL);
    tu_start(&S, "api", api_env);
}

/* method on path of the api, with headers (lines joined by '\n', may be NULL) and a JSON body
 * (may be NULL); the answer in *r (free it). */
static void call(const char *method, const char *path, const char *headers, const char *body, tu_resp_t *r)
{
    char url[256];
    snprintf(url, sizeof(url), "%s%s", S.base, path);
    ck_assert_int_eq(tu_http(method, url, headers, body != NULL ? "application/json" : NULL, body,
                             body != NULL ? strlen(body) : 0, r),
                     0);
}

/* call, asserting the status and the error code (NULL: no error expected); frees the answer. */
static void expect(const char *method, const char *path, const char *headers, const char *body, long status,
                   const char *code)
{
    tu_resp_t r;
    char want[96];
    call(method, path, headers, body, &r);
    ck_assert_msg(r.status == status, "%s %s answered %ld, want %ld: %s", method, path, r.status, status, r.body);
    if (code != NULL) {
        snprintf(want, sizeof(want), "\"code\":\"%s\"", code);
        ck_assert_msg(strstr(r.body, want) != NULL, "%s %s: %s lacks %s", method, path, r.body, want);
    }
    tu_resp_free(&r);
}

/* POSTs text as author with the token header; the new id in id. */
static void post(const char *token, const char *author, const char *text, char id[37])
{
    char body[256];
    tu_resp_t r;
    snprintf(body, sizeof(body), "{\"author\":\"%s\",\"text\":\"%s\"}", author, text);
    call("POST", "/v1/messages", token, body, &r);
    ck_assert_msg(r.status == 202, "POST answered %ld: %s", r.status, r.body);
    ck_assert_int_eq(tu_json_str(r.body, "id", id, 37), 0);
    tu_resp_free(&r);
}

/* PATCH (text) or DELETE (text NULL) of message id; returns the status, the answer's event_id in
 * event_id (when 202 and event_id is not NULL). */
static long change(const char *headers, const char *id, const char *text, char event_id[37])
{
    char path[96], body[1200];
    tu_resp_t r;
    snprintf(path, sizeof(path), "/v1/messages/%s", id);
    if (text != NULL)
        snprintf(body, sizeof(body), "{\"text\":\"%s\"}", text);
    call(text != NULL ? "PATCH" : "DELETE", path, headers, text != NULL ? body : NULL, &r);
    long status = r.status;
    if (status == 202) {
        char got[37];
        ck_assert_int_eq(tu_json_str(r.body, "id", got, sizeof(got)), 0);
        ck_assert_str_eq(got, id);
        if (event_id != NULL)
            ck_assert_int_eq(tu_json_str(r.body, "event_id", event_id, 37), 0);
    }
    tu_resp_free(&r);
    return status;
}

static long long scalarf(PGconn *db, const char *fmt, const char *arg)
{
    char sql[512];
    snprintf(sql, sizeof(sql), fmt, arg);
    return tu_scalar(db, sql);
}

static long long wait_scalar(PGconn *db, const char *sql, long long want, int timeout_ms)
{
    long long v = -1;
    for (int waited = 0; waited <= timeout_ms && (v = tu_scalar(db, sql)) != want; waited += 100)
        tu_sleep_ms(100);
    return v;
}

/* ---- edits and deletes ------------------------------------------------------------------------ */

/* The author edits, then deletes: each is a seq-numbered event right after the message, history
 * shows the new text (and edited_at), then nothing, and SSE and NDJSON streams get message,
 * update, delete in seq order. An edit or delete of the deleted message is 409. */
START_TEST(test_edit_and_delete_reach_history_and_streams)
{
    tu_stream_t sse, nd;
    tu_sev_t ev;
    tu_resp_t r;
    char id[37], ev1[37], ev2[37], edited[40], path[96];
    start("edits", 100000, 1);
    tu_start(&S, "sse", NULL);
    ck_assert_int_eq(tu_stream_open(&sse, S.sse_port, "/v1/stream?channels=general&history=0", NULL, 10000), 0);
    ck_assert_int_eq(tu_stream_open(&nd, S.sse_port, "/v1/stream?format=ndjson&history=0", NULL, 10000), 0);
    ck_assert_int_eq(sse.status, 200);
    ck_assert_int_eq(nd.status, 200);

    post(ALICE, "alice", "first words", id);
    ck_assert(tu_stream_next_event(&sse, &ev, 10000));
    ck_assert_str_eq(ev.event, "message");
    long long s1 = ev.seq;

    snprintf(path, sizeof(path), "/v1/messages/%s", id);
    call("PATCH", path, ALICE, "{\"text\":\"better words\"}", &r);
    ck_assert_msg(r.status == 202, "PATCH answered %ld: %s", r.status, r.body);
    ck_assert_int_eq(tu_json_str(r.body, "event_id", ev1, sizeof(ev1)), 0);
    ck_assert_int_eq(tu_json_str(r.body, "edited_at", edited, sizeof(edited)), 0);
    ck_assert_ptr_nonnull(strstr(r.body, "\"type\":\"update\""));
    ck_assert_ptr_nonnull(strstr(r.body, "\"channel\":\"general\""));
    tu_resp_free(&r);
    ck_assert(tu_stream_next_event(&sse, &ev, 10000));
    ck_assert_str_eq(ev.event, "update");
    ck_assert_int_eq(ev.seq, s1 + 1);
    ck_assert_ptr_nonnull(strstr(ev.data, "better words"));
    ck_assert_ptr_nonnull(strstr(ev.data, id));
    ck_assert_ptr_nonnull(strstr(ev.data, ev1));

    /* history: the new text and when it was edited */
    call("GET", "/v1/messages?channel=general", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    json_t *root = json_loads(r.body, 0, NULL), *msgs = json_object_get(root, "messages");
    ck_assert_int_eq(json_array_size(msgs), 1);
    json_t *m = json_array_get(msgs, 0);
    ck_assert_str_eq(json_string_value(json_object_get(m, "id")), id);
    ck_assert_str_eq(json_string_value(json_object_get(m, "text")), "better words");
    ck_assert_str_eq(json_string_value(json_object_get(m, "edited_at")), edited);
    ck_assert_int_eq(json_integer_value(json_object_get(m, "seq")), s1); /* the message keeps its place */
    json_decref(root);
    tu_resp_free(&r);

    ck_assert_int_eq(change(ALICE, id, NULL, ev2), 202);
    ck_assert_str_ne(ev2, ev1);
    ck_assert(tu_stream_next_event(&sse, &ev, 10000));
    ck_assert_str_eq(ev.event, "delete");
    ck_assert_int_eq(ev.seq, s1 + 2);
    ck_assert_ptr_nonnull(strstr(ev.data, id));
    /* the NDJSON stream saw the same three, in the same order */
    const char *want[] = {"message", "update", "delete"};
    for (int i = 0; i < 3; i++) {
        ck_assert(tu_stream_next_event(&nd, &ev, 10000));
        ck_assert_str_eq(ev.event, want[i]);
        ck_assert_int_eq(ev.seq, s1 + i);
    }

    /* gone from history and by id */
    call("GET", "/v1/messages?channel=general", NULL, NULL, &r);
    ck_assert_ptr_nonnull(strstr(r.body, "\"messages\":[]"));
    tu_resp_free(&r);
    expect("GET", path, NULL, NULL, 404, "not_found");
    /* a deleted message is neither edited nor deleted again */
    expect("PATCH", path, ALICE, "{\"text\":\"too late\"}", 409, "message_deleted");
    expect("DELETE", path, ALICE, NULL, 409, "message_deleted");

    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM message_events"), 2);
    ck_assert_int_eq(tu_scalar(db, "SELECT last_seq FROM sluice_feed"), s1 + 2);
    ck_assert_int_eq(scalarf(db, "SELECT count(*) FROM messages WHERE id = '%s' AND deleted_at IS NOT NULL", id), 1);
    PQfinish(db);
    tu_stream_close(&sse);
    tu_stream_close(&nd);
    tu_stack_cleanup(&S);
}
END_TEST

/* Publishes a message from Mastodon (as ingest would) straight to the stack's persist queue. */
static void publish_mastodon(const char *id, const char *author)
{
    sl_message_t m;
    memset(&m, 0, sizeof(m));
    snprintf(m.id, sizeof(m.id), "%s", id);
    snprintf(m.channel, sizeof(m.channel), "mastodon");
    snprintf(m.author, sizeof(m.author), "%s", author);
    snprintf(m.text, sizeof(m.text), "from afar");
    snprintf(m.source, sizeof(m.source), "mastodon");
    m.created_at_us = sl_time_now_us();
    size_t len;
    char *json = sl_message_to_json(&m, &len);
    tu_publish(&S, json, len, 0);
    free(json);
}

/* Who may change what: the author's token, the admin token; not another author, not a token for
 * any author (*), and a message from Mastodon only with the admin token. And every refusal's
 * status and code: 401, 403, 404, 400, 413, 415, 405. */
START_TEST(test_who_may_change_and_refusals)
{
    char m1[37], m2[37], m3[37], masto[37], old[37], v4[37] = "6d3c7e52-0b5a-4c1e-9f77-1b2c3d4e5f60", path[96];
    char long_text[600];
    start("editauth", 100000, 1);
    post(ALICE, "alice", "by alice", m1);
    post(BOB, "bob", "by bob", m2);
    post(STAR, "carol", "by the bot, as carol", m3);
    ck_assert_int_eq(sl_uuid_v5("6ba7b811-9dad-11d1-80b4-00c04fd430c8", "masto", 5, masto), 0);
    publish_mastodon(masto, "alice");
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 4, 20000), 4);

    snprintf(path, sizeof(path), "/v1/messages/%s", m1);
    expect("PATCH", path, NULL, "{\"text\":\"x\"}", 401, "unauthorized");
    expect("PATCH", path, "Authorization: Bearer not-a-real-token", "{\"text\":\"x\"}", 401, "invalid_token");
    expect("DELETE", path, NULL, NULL, 401, "unauthorized");
    expect("PATCH", path, BOB, "{\"text\":\"x\"}", 403, "forbidden");
    expect("DELETE", path, BOB, NULL, 403, "forbidden");
    expect("PATCH", path, STAR, "{\"text\":\"x\"}", 403, "forbidden");
    snprintf(path, sizeof(path), "/v1/messages/%s", m3);
    expect("DELETE", path, STAR, NULL, 403, "forbidden");
    snprintf(path, sizeof(path), "/v1/messages/%s", masto);
    expect("PATCH", path, ALICE, "{\"text\":\"x\"}", 403, "forbidden"); /* same name, but from Mastodon */

    ck_assert_int_eq(change(ALICE, m1, "alice again", NULL), 202);
    ck_assert_int_eq(change(ADMIN, m2, "moderated", NULL), 202);
    ck_assert_int_eq(change(ADMIN, m3, NULL, NULL), 202);
    ck_assert_int_eq(change(ADMIN, masto, NULL, NULL), 202);
    ck_assert_int_eq(wait_scalar(db, "SELECT count(*) FROM message_events", 4, 20000), 4);
    ck_assert_int_eq(scalarf(db, "SELECT count(*) FROM messages WHERE id = '%s' AND body = 'alice again'", m1), 1);
    ck_assert_int_eq(scalarf(db, "SELECT count(*) FROM messages WHERE id = '%s' AND body = 'moderated'", m2), 1);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE deleted_at IS NOT NULL"), 2);

    /* unknown ids: not a UUID, a UUIDv4, a UUIDv7 of an hour ago (not one that may still be queued) */
    expect("PATCH", "/v1/messages/not-a-uuid", ALICE, "{\"text\":\"x\"}", 404, "not_found");
    snprintf(path, sizeof(path), "/v1/messages/%s", v4);
    expect("PATCH", path, ALICE, "{\"text\":\"x\"}", 404, "not_found");
    ck_assert_int_eq(sl_uuid_v7_at((uint64_t)(sl_time_now_us() / 1000 - 3600 * 1000), old), 0);
    snprintf(path, sizeof(path), "/v1/messages/%s", old);
    expect("DELETE", path, ALICE, NULL, 404, "not_found");

    /* bad bodies, headers and methods */
    snprintf(path, sizeof(path), "/v1/messages/%s", m1);
    expect("PATCH", path, ALICE, "{}", 400, "missing_field");
    expect("PATCH", path, ALICE, "{\"text\":\"x\",\"author\":\"mallory\"}", 400, "unknown_field");
    expect("PATCH", path, ALICE, "{\"text\":\"\"}", 400, "invalid_length");
    expect("PATCH", path, ALICE, "not json", 400, "invalid_json");
    memset(long_text, 'x', 501);
    long_text[501] = '\0';
    ck_assert_int_eq(change(ALICE, m1, long_text, NULL), 400);
    expect("PATCH", path, ALICE "\nIdempotency-Key: has space", "{\"text\":\"x\"}", 400, "invalid_idempotency_key");
    char url[160];
    snprintf(url, sizeof(url), "%s%s", S.base, path);
    tu_http_expect("PATCH", url, ALICE, "text/plain", "{\"text\":\"x\"}", 12, 415);
    char *big = malloc(20000);
    memset(big, ' ', 20000);
    memcpy(big, "{\"text\":\"x\"}", 12);
    tu_http_expect("PATCH", url, ALICE, "application/json", big, 20000, 413);
    free(big);
    expect("PUT", path, ALICE, "{\"text\":\"x\"}", 405, "method_not_allowed");
    expect("GET", "/v1/messages/batch", NULL, NULL, 405, "method_not_allowed");
    tu_sleep_ms(300);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM message_events"), 4); /* none of those changed anything */
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

#define JWT_SECRET "a-shared-secret-for-jwt-writers-0123456789"

/* "Authorization: Bearer <HS256 JWT>" for sub (with a channels claim when not NULL), an hour. */
static char *jwt_bearer(const char *sub, const char *channels)
{
    char claims[256], *header;
    snprintf(claims, sizeof(claims), "{\"sub\":\"%s\",\"exp\":%lld%s%s%s}", sub, (long long)time(NULL) + 3600,
             channels != NULL ? ",\"channels\":[\"" : "", channels != NULL ? channels : "", channels != NULL ? "\"]" : "");
    char *t = tu_jwt_hs256(JWT_SECRET, claims);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_gt(asprintf(&header, "Authorization: Bearer %s", t), 0);
    free(t);
    return header;
}

/* A JWT writer is its sub: it edits and deletes its own messages, within its channels, not
 * another's; a batch holds it to its channels item by item. */
START_TEST(test_jwt_writer_edits_its_own)
{
    const char *env[] = {"SLUICE_API_TOKENS=star-token-1:*", "SLUICE_JWT_SECRET=" JWT_SECRET, NULL};
    char carol_id[37], erin_news[37], erin_general[37], path[96];
    tu_resp_t r;
    tu_stack_start_api(&S, "editjwt", env);
    char *carol = jwt_bearer("carol", NULL), *dave = jwt_bearer("dave", NULL), *erin = jwt_bearer("erin", "news");
    post(carol, "carol", "by carol", carol_id);
    call("POST", "/v1/messages", erin, "{\"author\":\"erin\",\"channel\":\"news\",\"text\":\"in news\"}", &r);
    ck_assert_int_eq(r.status, 202);
    ck_assert_int_eq(tu_json_str(r.body, "id", erin_news, sizeof(erin_news)), 0);
    tu_resp_free(&r);
    post(STAR, "erin", "erin in general, by the bot", erin_general);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 3, 20000), 3);

    ck_assert_int_eq(change(carol, carol_id, "carol, edited", NULL), 202);
    snprintf(path, sizeof(path), "/v1/messages/%s", carol_id);
    expect("DELETE", path, dave, NULL, 403, "forbidden");
    ck_assert_int_eq(change(erin, erin_news, "news, edited", NULL), 202);
    snprintf(path, sizeof(path), "/v1/messages/%s", erin_general);
    expect("PATCH", path, erin, "{\"text\":\"x\"}", 403, "channel_forbidden");
    expect("DELETE", path, STAR, NULL, 403, "forbidden");
    ck_assert_int_eq(change(dave, "0190f5f0-0000-7000-8000-000000000000", NULL, NULL), 404);

    const char *batch = "[{\"author\":\"erin\",\"channel\":\"news\",\"text\":\"ok\"},"
                        "{\"author\":\"erin\",\"channel\":\"general\",\"text\":\"not here\"}]";
    char url[160];
    snprintf(url, sizeof(url), "%s/v1/messages/batch", S.base);
    ck_assert_int_eq(tu_http("POST", url, erin, "application/json", batch, strlen(batch), &r), 0);
    ck_assert_int_eq(r.status, 403);
    ck_assert_ptr_nonnull(strstr(r.body, "\"items\":[{\"index\":1,\"code\":\"channel_forbidden\""));
    tu_resp_free(&r);
    ck_assert_int_eq(wait_scalar(db, "SELECT count(*) FROM message_events", 2, 20000), 2);
    tu_sleep_ms(300);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 3);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE body LIKE '%, edited'"), 2);
    free(carol);
    free(dave);
    free(erin);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* An edit of a message accepted but not stored yet (it waits in the queue) is 409 not_stored_yet
 * with Retry-After, and goes through once the message is stored. */
START_TEST(test_edit_of_queued_message_says_not_stored_yet)
{
    char id[37], path[96];
    tu_resp_t r;
    start("editqueued", 100000, 0); /* no persister yet */
    post(ALICE, "alice", "still in the queue", id);
    snprintf(path, sizeof(path), "/v1/messages/%s", id);
    call("PATCH", path, ALICE, "{\"text\":\"edited early\"}", &r);
    ck_assert_msg(r.status == 409, "answered %ld: %s", r.status, r.body);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"not_stored_yet\""));
    ck_assert_str_eq(r.retry_after, "1");
    tu_resp_free(&r);
    tu_start(&S, "persister", NULL);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 1, 20000), 1);
    ck_assert_int_eq(change(ALICE, id, "edited in time", NULL), 202);
    ck_assert_int_eq(wait_scalar(db, "SELECT count(*) FROM messages WHERE body = 'edited in time'", 1, 20000), 1);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* Idempotency-Key on PATCH and DELETE: a retry answers the first event's id (before and after it
 * is stored, and even after the message was deleted since), stores nothing twice; the same key
 * with another text is 422. */
START_TEST(test_idempotent_edit_and_delete)
{
    char id[37], e1[37], e2[37], d1[37], d2[37];
    start("editidem", 100000, 1);
    post(ALICE, "alice", "original", id);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 1, 20000), 1);
    const char *k1 = ALICE "\nIdempotency-Key: edit-1";
    ck_assert_int_eq(change(k1, id, "edited once", e1), 202);
    ck_assert_int_eq(change(k1, id, "edited once", e2), 202);
    ck_assert_str_eq(e2, e1);
    ck_assert_int_eq(wait_scalar(db, "SELECT count(*) FROM message_events", 1, 20000), 1);
    ck_assert_int_eq(change(k1, id, "edited once", e2), 202); /* stored by now */
    ck_assert_str_eq(e2, e1);
    ck_assert_int_eq(change(k1, id, "another text", NULL), 422);

    const char *k2 = ALICE "\nIdempotency-Key: delete-1";
    ck_assert_int_eq(change(k2, id, NULL, d1), 202);
    ck_assert_int_eq(change(k2, id, NULL, d2), 202);
    ck_assert_str_eq(d2, d1);
    ck_assert_int_eq(wait_scalar(db, "SELECT count(*) FROM message_events", 2, 20000), 2);
    /* the message is deleted now: the retries still get their first answers, a new request 409 */
    ck_assert_int_eq(change(k2, id, NULL, d2), 202);
    ck_assert_str_eq(d2, d1);
    ck_assert_int_eq(change(k1, id, "edited once", e2), 202);
    ck_assert_str_eq(e2, e1);
    ck_assert_int_eq(change(ALICE "\nIdempotency-Key: delete-2", id, NULL, NULL), 409);
    ck_assert_int_eq(change(k2, id, "a PATCH with the DELETE's key", NULL), 422);
    tu_sleep_ms(300);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM message_events"), 2);
    ck_assert_int_eq(scalarf(db, "SELECT count(*) FROM message_events WHERE event_id = '%s'", e1), 1);
    ck_assert_int_eq(scalarf(db, "SELECT count(*) FROM message_events WHERE event_id = '%s'", d1), 1);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* Persister metric value (one sample line "name value"), or -1. */
static double persister_metric(const char *name)
{
    char url[128];
    tu_resp_t r;
    double v = -1;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", S.persister_port);
    if (tu_http("GET", url, NULL, NULL, NULL, 0, &r) == 0) {
        for (char *line = strtok(r.body, "\n"); line != NULL; line = strtok(NULL, "\n")) {
            size_t n = strlen(name);
            if (strncmp(line, name, n) == 0 && line[n] == ' ')
                v = strtod(line + n + 1, NULL);
        }
    }
    tu_resp_free(&r);
    return v;
}

/* Messages in the stack's dead-letter queue. */
static long dead_letters(void)
{
    char err[256], dead[200];
    snprintf(dead, sizeof(dead), "%s.dead", S.queue);
    amqp_connection_state_t c = sl_amqp_open(getenv("SLUICE_AMQP_URL"), "test", 0, 5000, err, sizeof(err));
    ck_assert_msg(c != NULL, "%s", err);
    amqp_queue_declare_ok_t *ok =
        amqp_queue_declare(c, SL_AMQP_CHANNEL, amqp_cstring_bytes(dead), 1, 0, 0, 0, amqp_empty_table);
    ck_assert_ptr_nonnull(ok);
    long n = (long)ok->message_count;
    sl_amqp_close(c);
    return n;
}

/* The race the api cannot see: a delete, then an edit and a second delete of the same message,
 * all accepted while the message was not deleted yet (they wait in the queue together). The
 * persister numbers and applies the first delete; the edit and the second delete get no seq, are
 * neither applied nor published, and are kept in message_events_ignored and logged: not
 * dead-lettered, not lost without a trace. A retry of the edit's key still answers 202. */
START_TEST(test_edit_after_delete_is_kept_not_applied)
{
    char id[37], d1[37], e1[37], d2[37], e1b[37];
    tu_stream_t st;
    tu_sev_t ev;
    start("editrace", 100000, 1);
    tu_start(&S, "sse", NULL);
    ck_assert_int_eq(tu_stream_open(&st, S.sse_port, "/v1/stream?history=0&format=ndjson", NULL, 10000), 0);
    post(ALICE, "alice", "soon gone", id);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 1, 20000), 1);
    ck_assert(tu_stream_next_event(&st, &ev, 10000));
    ck_assert_str_eq(ev.event, "message");
    ck_assert_int_eq(tu_stop(&S.persister, SIGTERM, 15000), 0);

    ck_assert_int_eq(change(ALICE, id, NULL, d1), 202);
    ck_assert_int_eq(change(ALICE "\nIdempotency-Key: late-edit", id, "edited after its delete", e1), 202);
    ck_assert_int_eq(change(ADMIN, id, NULL, d2), 202);
    tu_start(&S, "persister", NULL);
    ck_assert_int_eq(wait_scalar(db, "SELECT count(*) FROM message_events_ignored", 2, 20000), 2);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM message_events"), 1);
    ck_assert_int_eq(scalarf(db, "SELECT count(*) FROM message_events WHERE event_id = '%s'", d1), 1);
    ck_assert_int_eq(scalarf(db, "SELECT count(*) FROM message_events_ignored WHERE event_id = '%s' AND type = 'update'", e1),
                     1);
    ck_assert_int_eq(scalarf(db, "SELECT count(*) FROM message_events_ignored WHERE event_id = '%s' AND type = 'delete'", d2),
                     1);
    ck_assert_int_eq(scalarf(db, "SELECT count(*) FROM messages WHERE id = '%s' AND body = 'soon gone'", id), 1);
    ck_assert_int_eq(tu_scalar(db, "SELECT last_seq FROM sluice_feed"), 2);
    ck_assert(tu_log_contains(&S, "persister", "event=event_ignored type=update"));
    ck_assert(tu_log_contains(&S, "persister", "event=event_ignored type=delete"));
    ck_assert_int_eq((long)persister_metric("sluice_persister_events_ignored_total"), 2);
    ck_assert_int_eq(dead_letters(), 0);
    /* the stream got the delete, and nothing after it */
    ck_assert(tu_stream_next_event(&st, &ev, 10000));
    ck_assert_str_eq(ev.event, "delete");
    ck_assert_int_eq(ev.seq, 2);
    ck_assert_int_eq(tu_stream_next_event(&st, &ev, 1000), 0);
    /* the edit's retry answers as the first time */
    ck_assert_int_eq(change(ALICE "\nIdempotency-Key: late-edit", id, "edited after its delete", e1b), 202);
    ck_assert_str_eq(e1b, e1);
    tu_stream_close(&st);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- batches -------------------------------------------------------------------------------- */

static void batch_url(char *url, size_t size)
{
    snprintf(url, size, "%s/v1/messages/batch", S.base);
}

/* POSTs body to the batch endpoint as ctype with headers; the answer in *r. */
static void post_batch(const char *headers, const char *ctype, const char *body, tu_resp_t *r)
{
    char url[160];
    batch_url(url, sizeof(url));
    ck_assert_int_eq(tu_http("POST", url, headers, ctype, body, strlen(body), r), 0);
}

/* The ids of a 202 batch answer, in order; returns their count. */
static size_t batch_ids(const char *answer, char (*ids)[37], size_t max)
{
    json_t *root = json_loads(answer, 0, NULL), *msgs = json_object_get(root, "messages"), *m;
    size_t i, n = 0;
    json_array_foreach(msgs, i, m)
    {
        if (n < max)
            snprintf(ids[n++], 37, "%s", json_string_value(json_object_get(m, "id")));
    }
    json_decref(root);
    return n;
}

/* A JSON array of n messages "<tag>-<i>" by author. malloc'd. */
static char *batch_body(const char *author, const char *tag, int n)
{
    char *b = malloc((size_t)n * 80 + 8), *p = b;
    p += sprintf(p, "[");
    for (int i = 0; i < n; i++)
        p += sprintf(p, "%s{\"author\":\"%s\",\"text\":\"%s-%d\"}", i > 0 ? "," : "", author, tag, i);
    sprintf(p, "]");
    return b;
}

/* A batch with bad items is refused whole: 400 listing every bad index with its error, and
 * nothing is stored (JSON array and NDJSON); so are a forbidden author, a wrong type, no items
 * and too many. */
START_TEST(test_batch_with_bad_items_stores_nothing)
{
    tu_resp_t r;
    start("batchbad", 100000, 1);
    const char *arr = "[{\"author\":\"alice\",\"text\":\"ok 0\"},{\"author\":\"alice\"},{\"author\":\"alice\",\"text\":\"ok 2\"},"
                      "{\"author\":\"alice\",\"text\":\"x\",\"channel\":\"No Caps\"},{\"author\":\"alice\",\"text\":\"ok 4\"}]";
    post_batch(ALICE, "application/json", arr, &r);
    ck_assert_msg(r.status == 400, "answered %ld: %s", r.status, r.body);
    json_t *root = json_loads(r.body, 0, NULL), *err = json_object_get(root, "error");
    ck_assert_str_eq(json_string_value(json_object_get(err, "code")), "invalid_batch");
    json_t *items = json_object_get(err, "items");
    ck_assert_int_eq(json_array_size(items), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(items, 0), "index")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(items, 0), "code")), "missing_field");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(items, 0), "field")), "text");
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(items, 1), "index")), 3);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(items, 1), "code")), "invalid_channel");
    json_decref(root);
    tu_resp_free(&r);

    const char *nd = "{\"author\":\"alice\",\"text\":\"ok 0\"}\n{\"author\":\"alice\",\"text\":\"ok 1\"}\n{\"author\":\"alice\",";
    post_batch(ALICE, "application/x-ndjson", nd, &r);
    ck_assert_int_eq(r.status, 400);
    ck_assert_ptr_nonnull(strstr(r.body, "\"items\":[{\"index\":2,\"code\":\"invalid_json\""));
    tu_resp_free(&r);

    const char *other = "[{\"author\":\"alice\",\"text\":\"mine\"},{\"author\":\"bob\",\"text\":\"not mine\"}]";
    post_batch(ALICE, "application/json", other, &r);
    ck_assert_int_eq(r.status, 403);
    ck_assert_ptr_nonnull(strstr(r.body, "\"items\":[{\"index\":1,\"code\":\"forbidden\""));
    tu_resp_free(&r);
    post_batch(NULL, "application/json", other, &r);
    ck_assert_int_eq(r.status, 401);
    tu_resp_free(&r);
    post_batch(ALICE, "text/plain", "[]", &r);
    ck_assert_int_eq(r.status, 415);
    tu_resp_free(&r);
    post_batch(ALICE, "application/json", "[]", &r);
    ck_assert_int_eq(r.status, 400);
    ck_assert_ptr_nonnull(strstr(r.body, "invalid_batch_size"));
    tu_resp_free(&r);
    post_batch(ALICE, "application/json", "{\"author\":\"alice\",\"text\":\"x\"}", &r);
    ck_assert_int_eq(r.status, 400);
    ck_assert_ptr_nonnull(strstr(r.body, "not_an_array"));
    tu_resp_free(&r);
    char *many = batch_body("alice", "many", SL_BATCH_MAX + 1);
    post_batch(ALICE, "application/json", many, &r);
    ck_assert_int_eq(r.status, 400);
    ck_assert_ptr_nonnull(strstr(r.body, "invalid_batch_size"));
    tu_resp_free(&r);
    free(many);

    /* a good one goes through, alone */
    post_batch(ALICE, "application/x-ndjson", "{\"author\":\"alice\",\"text\":\"good\"}\n", &r);
    ck_assert_int_eq(r.status, 202);
    tu_resp_free(&r);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 1, 20000), 1);
    tu_sleep_ms(300);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 1);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE body = 'good'"), 1);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

static void body_single(int i, char *buf, size_t size)
{
    snprintf(buf, size, "{\"author\":\"alice\",\"text\":\"single-%d\"}", i);
}

struct singles {
    const char *url;
    long status[300];
};

static void *post_singles(void *arg)
{
    struct singles *s = arg;
    tu_post_many(s->url, 300, 20, body_single, s->status, NULL, NULL, NULL);
    return NULL;
}

/* A batch of 100, sent while 300 single posts come in at the same time: every id once, in
 * consecutive seqs in the batch's order, and a stream delivers them one after the other. A retry
 * with the batch's Idempotency-Key gives the same ids and stores nothing more. */
START_TEST(test_batch_of_100_stored_once_and_consecutively)
{
    static char ids[SL_BATCH_MAX][37], again[SL_BATCH_MAX][37];
    static struct singles singles;
    char url[160], sql[256];
    tu_stream_t st;
    tu_sev_t ev;
    tu_resp_t r;
    pthread_t t;
    tu_stack_start_api(&S, "batch100", NULL); /* no tokens: the single posts need none */
    tu_start(&S, "sse", NULL);
    ck_assert_int_eq(tu_stream_open(&st, S.sse_port, "/v1/stream?history=0&format=ndjson", NULL, 10000), 0);
    snprintf(url, sizeof(url), "%s/v1/messages", S.base);
    singles.url = url;
    ck_assert_int_eq(pthread_create(&t, NULL, post_singles, &singles), 0);
    tu_sleep_ms(50);
    char *body = batch_body("alice", "batch", SL_BATCH_MAX);
    const char *key = "Idempotency-Key: batch-100";
    post_batch(key, "application/json", body, &r);
    ck_assert_msg(r.status == 202, "answered %ld: %s", r.status, r.body);
    ck_assert_uint_eq(batch_ids(r.body, ids, SL_BATCH_MAX), SL_BATCH_MAX);
    tu_resp_free(&r);
    post_batch(key, "application/json", body, &r); /* a retry, perhaps before it is stored */
    ck_assert_int_eq(r.status, 202);
    ck_assert_uint_eq(batch_ids(r.body, again, SL_BATCH_MAX), SL_BATCH_MAX);
    for (int i = 0; i < SL_BATCH_MAX; i++)
        ck_assert_str_eq(again[i], ids[i]);
    tu_resp_free(&r);
    pthread_join(t, NULL);
    for (int i = 0; i < 300; i++)
        ck_assert_int_eq(singles.status[i], 202);

    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 400, 30000), 400);
    post_batch(key, "application/json", body, &r); /* and after */
    ck_assert_int_eq(r.status, 202);
    ck_assert_uint_eq(batch_ids(r.body, again, SL_BATCH_MAX), SL_BATCH_MAX);
    ck_assert_str_eq(again[SL_BATCH_MAX - 1], ids[SL_BATCH_MAX - 1]);
    tu_resp_free(&r);
    free(body);
    tu_sleep_ms(300);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 400);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(DISTINCT seq) FROM messages"), 400);
    ck_assert_int_eq(tu_scalar(db, "SELECT max(seq) FROM messages"), 400);
    long long first = scalarf(db, "SELECT seq FROM messages WHERE id = '%s'", ids[0]);
    for (int i = 0; i < SL_BATCH_MAX; i++) {
        snprintf(sql, sizeof(sql), "SELECT seq FROM messages WHERE id = '%.36s' AND body = 'batch-%d'", ids[i], i);
        ck_assert_int_eq(tu_scalar(db, sql), first + i);
    }
    /* the stream: 400 messages, the batch's 100 one after the other */
    int seen = 0, run = 0, longest = 0;
    while (seen < 400 && tu_stream_next_event(&st, &ev, 10000)) {
        seen++;
        run = strstr(ev.data, "\"text\":\"batch-") != NULL ? run + 1 : 0;
        longest = run > longest ? run : longest;
        if (ev.seq == first)
            ck_assert_ptr_nonnull(strstr(ev.data, ids[0]));
    }
    ck_assert_int_eq(seen, 400);
    ck_assert_int_eq(longest, SL_BATCH_MAX);
    tu_stream_close(&st);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* A full queue refuses a batch whole (429 queue_full, nothing of it stored), and a retry with the
 * same key once there is room stores it once. */
START_TEST(test_full_queue_refuses_the_whole_batch)
{
    enum { MAXLEN = 5 };
    char id[37];
    tu_resp_t r;
    int accepted = 0;
    start("batchfull", MAXLEN, 0); /* no persister: the queue fills up */
    for (int i = 0; i < MAXLEN * 3; i++) {
        char body[128];
        snprintf(body, sizeof(body), "{\"author\":\"alice\",\"text\":\"single-%d\"}", i);
        call("POST", "/v1/messages", ALICE, body, &r);
        accepted += r.status == 202;
        long status = r.status;
        tu_resp_free(&r);
        if (status == 429)
            break;
    }
    ck_assert_int_ge(accepted, MAXLEN);
    char *body = batch_body("alice", "refused", 20);
    const char *key = ALICE "\nIdempotency-Key: full-1";
    post_batch(key, "application/json", body, &r);
    ck_assert_msg(r.status == 429, "answered %ld: %s", r.status, r.body);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"queue_full\""));
    ck_assert_str_eq(r.retry_after, "1");
    tu_resp_free(&r);
    tu_start(&S, "persister", NULL);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, accepted, 20000), accepted);
    tu_sleep_ms(500);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE body LIKE 'refused-%'"), 0);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), accepted);
    /* room again: the retry with the key is accepted, once */
    post_batch(key, "application/json", body, &r);
    ck_assert_int_eq(r.status, 202);
    tu_resp_free(&r);
    post_batch(key, "application/json", body, &r);
    ck_assert_int_eq(r.status, 202);
    tu_resp_free(&r);
    ck_assert_int_eq(tu_wait_rows(db, accepted + 20, 20000), accepted + 20);
    tu_sleep_ms(300);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE body LIKE 'refused-%'"), 20);
    post(ALICE, "alice", "after", id);
    free(body);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

static void body_batch50(int i, char *buf, size_t size)
{
    size_t o = (size_t)snprintf(buf, size, "[");
    for (int k = 0; k < 50 && o < size; k++)
        o += (size_t)snprintf(buf + o, size - o, "%s{\"author\":\"a%d\",\"text\":\"b%d-%d\"}", k > 0 ? "," : "", k % 7,
                              i, k);
    snprintf(buf + o, size - o, "]");
}

/* 60 batches of 50 posted 10 at a time while the persister is SIGKILLed and restarted: every
 * message of every batch is stored once, seq stays gapless, and each batch's messages are
 * consecutive in its own order (one transaction each, redelivered whole). */
START_TEST(test_persister_sigkill_during_batches_loses_nothing)
{
    enum { N = 60, PER = 50 };
    static long status[N];
    char url[160], sql[256];
    const char *env[] = {"SLUICE_BATCH_SIZE=120", "SLUICE_BATCH_MS=5", NULL};
    tu_kill_plan_t plan = {&S, 15, 35, env};
    tu_stack_init(&S, "batchkill", 100000);
    tu_start(&S, "persister", env);
    tu_start(&S, "api", NULL);
    batch_url(url, sizeof(url));
    tu_post_many(url, N, 10, body_batch50, status, NULL, tu_kill_persister_midway, &plan);
    for (int i = 0; i < N; i++)
        ck_assert_msg(status[i] == 202, "batch %d answered %ld", i, status[i]);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, N * PER, 30000), N * PER);
    tu_sleep_ms(300);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), N * PER);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(DISTINCT body) FROM messages"), N * PER);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(DISTINCT seq) FROM messages"), N * PER);
    ck_assert_int_eq(tu_scalar(db, "SELECT max(seq) FROM messages"), N * PER);
    ck_assert_int_eq(tu_scalar(db, "SELECT last_seq FROM sluice_feed"), N * PER);
    for (int i = 0; i < N; i++) {
        /* seq - k is one value for the whole batch: consecutive, in the batch's order */
        snprintf(sql, sizeof(sql),
                 "SELECT count(DISTINCT seq - split_part(body, '-', 2)::int) FROM messages WHERE body LIKE 'b%d-%%'", i);
        ck_assert_msg(tu_scalar(db, sql) == 1, "batch %d is not consecutive", i);
    }
    ck_assert(tu_log_contains(&S, "persister", "event=amqp_connected")); /* it did restart */
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* One queue line as the api writes a new message, with text; created_at in year 0 (valid RFC
 * 3339, refused by the database: poison, SQLSTATE class 22) when poison. */
static void message_line(char *buf, size_t size, const char *text, int poison)
{
    char id[SL_UUID_STRLEN];
    ck_assert_int_eq(sl_uuid_v7(id), 0);
    snprintf(buf, size,
             "{\"id\":\"%s\",\"channel\":\"general\",\"author\":\"a\",\"text\":\"%s\",\"source\":\"api\","
             "\"created_at\":\"%s-01-01T00:00:00.000000Z\"}",
             id, text, poison ? "0000" : "2026");
}

/* A batch's delivery (x-sluice-atomic) that the database refuses is dead-lettered whole, all its
 * lines, while the same lines without the header lose only the culprit; a delivery of the batch
 * with an undecodable line is dead-lettered whole too. */
START_TEST(test_refused_batch_is_dead_lettered_whole)
{
    char l[3][512], body[2048];
    tu_stack_init(&S, "batchpoison", 100000);
    tu_start(&S, "api", NULL); /* declares the topology */
    message_line(l[0], sizeof(l[0]), "atomic good", 0);
    message_line(l[1], sizeof(l[1]), "atomic poison", 1);
    message_line(l[2], sizeof(l[2]), "atomic good too", 0);
    snprintf(body, sizeof(body), "%s\n%s\n%s", l[0], l[1], l[2]);
    tu_publish(&S, body, strlen(body), 1);
    message_line(l[0], sizeof(l[0]), "plain good", 0);
    message_line(l[1], sizeof(l[1]), "plain poison", 1);
    message_line(l[2], sizeof(l[2]), "plain good too", 0);
    snprintf(body, sizeof(body), "%s\n%s\n%s", l[0], l[1], l[2]);
    tu_publish(&S, body, strlen(body), 0);
    message_line(l[0], sizeof(l[0]), "undecodable batch", 0);
    snprintf(body, sizeof(body), "%s\n{\"id\":\"nope\"}", l[0]);
    tu_publish(&S, body, strlen(body), 1);
    tu_start(&S, "persister", NULL);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 2, 20000), 2);
    for (int i = 0; i < 50 && dead_letters() < 5; i++)
        tu_sleep_ms(100);
    ck_assert_int_eq(dead_letters(), 5); /* 3 atomic lines, the plain culprit, the undecodable delivery */
    tu_sleep_ms(300);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE body LIKE 'atomic%'"), 0);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE body LIKE 'plain good%'"), 2);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE body = 'undecodable batch'"), 0);
    ck_assert(tu_log_contains(&S, "persister", "event=refused_by_database"));
    ck_assert(tu_log_contains(&S, "persister", "messages=3"));
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* The per-client rate counts messages: a batch of n costs n tokens; one larger than the burst
 * passes on a full bucket and leaves the client waiting until it has paid. */
START_TEST(test_batch_costs_one_token_per_message)
{
    tu_resp_t r;
    tu_stack_init(&S, "batchrate", 100000);
    const char *env[] = {"SLUICE_API_TOKENS=alice-token-1:alice,bob-token-12:bob", "SLUICE_API_CLIENT_RATE=2",
                         "SLUICE_API_CLIENT_BURST=20", NULL};
    tu_start(&S, "api", env);
    char *b15 = batch_body("alice", "fifteen", 15), *b100 = batch_body("bob", "hundred", 100);
    post_batch(ALICE, "application/json", b15, &r);
    ck_assert_int_eq(r.status, 202); /* 20 - 15: 5 left */
    tu_resp_free(&r);
    post_batch(ALICE, "application/json", b15, &r);
    ck_assert_msg(r.status == 429, "answered %ld: %s", r.status, r.body);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"rate_limited\""));
    ck_assert_int_ge(atoi(r.retry_after), 4); /* 14 more needed with 4 left, at 2/s */
    tu_resp_free(&r);
    expect("POST", "/v1/messages", ALICE, "{\"author\":\"alice\",\"text\":\"one\"}", 202, NULL);
    /* bob's token is a client of its own: a batch of 100 passes on its full bucket of 20 */
    post_batch(BOB, "application/json", b100, &r);
    ck_assert_msg(r.status == 202, "answered %ld: %s", r.status, r.body);
    tu_resp_free(&r);
    call("POST", "/v1/messages", BOB, "{\"author\":\"bob\",\"text\":\"in debt\"}", &r);
    ck_assert_int_eq(r.status, 429);
    ck_assert_int_ge(atoi(r.retry_after), 30); /* 20 - 100 = -80: about 40 s at 2/s */
    tu_resp_free(&r);
    free(b15);
    free(b100);
    tu_stack_cleanup(&S);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("edits");
    TCase *tc = tcase_create("integration");
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, test_edit_and_delete_reach_history_and_streams);
    tcase_add_test(tc, test_who_may_change_and_refusals);
    tcase_add_test(tc, test_jwt_writer_edits_its_own);
    tcase_add_test(tc, test_edit_of_queued_message_says_not_stored_yet);
    tcase_add_test(tc, test_idempotent_edit_and_delete);
    tcase_add_test(tc, test_edit_after_delete_is_kept_not_applied);
    tcase_add_test(tc, test_batch_with_bad_items_stores_nothing);
    tcase_add_test(tc, test_batch_of_100_stored_once_and_consecutively);
    tcase_add_test(tc, test_full_queue_refuses_the_whole_batch);
    tcase_add_test(tc, test_persister_sigkill_during_batches_loses_nothing);
    tcase_add_test(tc, test_refused_batch_is_dead_lettered_whole);
    tcase_add_test(tc, test_batch_costs_one_token_per_message);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
