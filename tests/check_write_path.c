/*
 * Integration tests of the write path on the real RabbitMQ and PostgreSQL that test.sh starts:
 * POST → RabbitMQ (confirms, back pressure) → persister → database, and the history API.
 */
#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "sl_amqp.h"
#include "sl_db.h"
#include "sl_testutil.h"
#include "sl_uuid.h"
#include "sl_testsuite.h"

static tu_stack_t S;

static void body_plain(int i, char *buf, size_t size)
{
    snprintf(buf, size, "{\"channel\":\"general\",\"author\":\"user%d\",\"text\":\"message %d \xe2\x9c\x93\"}", i % 37, i);
}

static char *post_url(void)
{
    static char url[128];
    snprintf(url, sizeof(url), "%s/v1/messages", S.base);
    return url;
}

/* Every id answered 202 is stored exactly once, nothing else is stored, and seq is 1..N. */
static void assert_exactly_accepted(PGconn *db, long *status, char (*ids)[37], int n)
{
    long long accepted = 0;
    for (int i = 0; i < n; i++)
        accepted += status[i] == 202;
    ck_assert_int_eq(tu_wait_rows(db, accepted, 30000), accepted);
    tu_sleep_ms(300); /* a straggler would show up now */
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), accepted);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(DISTINCT id) FROM messages"), accepted);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(DISTINCT seq) FROM messages"), accepted);
    ck_assert_int_eq(tu_scalar(db, "SELECT coalesce(min(seq), 1) FROM messages"), 1);
    ck_assert_int_eq(tu_scalar(db, "SELECT coalesce(max(seq), 0) FROM messages"), accepted);
    ck_assert_int_eq(tu_scalar(db, "SELECT last_seq FROM sluice_feed WHERE id = 1"), accepted);
    /* and each accepted id is among them */
    for (int i = 0; i < n; i++) {
        if (status[i] != 202)
            continue;
        char sql[160];
        int len = snprintf(sql, sizeof(sql), "SELECT count(*) FROM messages WHERE id = '%s'", ids[i]);
        ck_assert(len > 0 && (size_t)len < sizeof(sql));
        ck_assert_msg(tu_scalar(db, sql) == 1, "accepted id %s stored %lld times", ids[i], tu_scalar(db, sql));
    }
}

START_TEST(test_concurrent_posts_stored_once_gapless)
{
    enum { N = 1000 };
    static long status[N];
    static char ids[N][37];
    tu_stack_start_api(&S, "concurrent", NULL);
    tu_post_many(post_url(), N, 200, body_plain, status, ids, NULL, NULL);
    for (int i = 0; i < N; i++)
        ck_assert_msg(status[i] == 202, "POST %d answered %ld", i, status[i]);
    PGconn *db = tu_db(&S);
    assert_exactly_accepted(db, status, ids, N);

    /* History pages through all of them, newest first, each once. */
    char url[256], cursor[32] = "";
    long long seen = 0, prev = 1LL << 62;
    for (int page = 0; page < 10; page++) {
        tu_resp_t r;
        snprintf(url, sizeof(url), "%s/v1/messages?channel=general&limit=200%s%s", S.base, *cursor ? "&before=" : "",
                 cursor);
        ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
        ck_assert_int_eq(r.status, 200);
        json_error_t e;
        json_t *root = json_loads(r.body, 0, &e), *msgs = json_object_get(root, "messages"), *m;
        size_t i;
        json_array_foreach(msgs, i, m)
        {
            long long seq = json_integer_value(json_object_get(m, "seq"));
            ck_assert_int_lt(seq, prev);
            prev = seq;
            seen++;
            ck_assert_str_eq(json_string_value(json_object_get(m, "channel")), "general");
            ck_assert_str_eq(json_string_value(json_object_get(m, "source")), "api");
        }
        json_t *next = json_object_get(root, "next");
        if (json_is_null(next)) {
            json_decref(root);
            tu_resp_free(&r);
            break;
        }
        snprintf(cursor, sizeof(cursor), "%s", json_string_value(next));
        json_decref(root);
        tu_resp_free(&r);
    }
    ck_assert_int_eq(seen, N);

    /* One by id. */
    tu_resp_t r;
    snprintf(url, sizeof(url), "%s/v1/messages/%s", S.base, ids[17]);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"text\":\"message 17 \xe2\x9c\x93\""));
    tu_resp_free(&r);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

START_TEST(test_persister_sigkill_loses_nothing)
{
    enum { N = 3000 };
    static long status[N];
    static char ids[N][37];
    tu_kill_plan_t plan = {&S, 700, 1800, NULL};
    tu_stack_init(&S, "sigkill", 100000);
    /* small batches, so the kill lands between (and inside) many transactions */
    const char *env[] = {"SLUICE_BATCH_SIZE=50", "SLUICE_BATCH_MS=5", NULL};
    tu_start(&S, "persister", env);
    tu_start(&S, "api", NULL);
    tu_post_many(post_url(), N, 50, body_plain, status, ids, tu_kill_persister_midway, &plan);
    for (int i = 0; i < N; i++)
        ck_assert_msg(status[i] == 202, "POST %d answered %ld", i, status[i]);
    PGconn *db = tu_db(&S);
    assert_exactly_accepted(db, status, ids, N);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

START_TEST(test_full_queue_answers_429_and_keeps_accepted)
{
    enum { N = 60, MAXLEN = 20 };
    long status[N];
    char ids[N][37];
    int accepted = 0, refused = 0;
    tu_stack_init(&S, "full", MAXLEN);
    tu_start(&S, "api", NULL); /* no persister: the queue fills up */
    for (int i = 0; i < N; i++) {
        char body[256];
        tu_resp_t r;
        body_plain(i, body, sizeof(body));
        ck_assert_int_eq(tu_http("POST", post_url(), NULL, "application/json", body, strlen(body), &r), 0);
        status[i] = r.status;
        ids[i][0] = '\0';
        if (r.status == 202) {
            accepted++;
            ck_assert_int_eq(refused, 0); /* once full, it stays full */
            tu_json_str(r.body, "id", ids[i], sizeof(ids[i]));
        } else {
            ck_assert_int_eq(r.status, 429);
            ck_assert_str_eq(r.retry_after, "1");
            ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"queue_full\""));
            refused++;
        }
        tu_resp_free(&r);
    }
    /* RabbitMQ's quorum queues take one message over x-max-length before refusing. */
    ck_assert_int_ge(accepted, MAXLEN);
    ck_assert_int_le(accepted, MAXLEN + 1);
    ck_assert_int_eq(refused, N - accepted);

    tu_start(&S, "persister", NULL);
    PGconn *db = tu_db(&S);
    assert_exactly_accepted(db, status, ids, N);
    /* room again: the api accepts */
    char body[256];
    body_plain(0, body, sizeof(body));
    tu_http_expect("POST", post_url(), NULL, "application/json", body, strlen(body), 202);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* x-max-length-bytes bounds the queue by the bytes of its messages, whatever number of posts
 * each carries: with 4 KiB and posts of 150-250 bytes (each alone in its message here) the api
 * refuses after 16-28 posts, and keeps every one it accepted. */
START_TEST(test_queue_bound_in_bytes)
{
    enum { N = 80, MAXBYTES = 4096 };
    long status[N];
    char ids[N][37];
    int accepted = 0;
    const char *env[] = {"SLUICE_QUEUE_MAX_BYTES=4096", NULL};
    tu_stack_init(&S, "fullbytes", 100000);
    tu_start(&S, "api", env); /* no persister: the queue fills up */
    for (int i = 0; i < N; i++) {
        char body[256];
        tu_resp_t r;
        body_plain(i, body, sizeof(body));
        ck_assert_int_eq(tu_http("POST", post_url(), NULL, "application/json", body, strlen(body), &r), 0);
        status[i] = r.status;
        ids[i][0] = '\0';
        if (r.status == 202) {
            ck_assert_int_eq(accepted, i); /* once full, it stays full */
            accepted++;
            tu_json_str(r.body, "id", ids[i], sizeof(ids[i]));
        } else {
            ck_assert_int_eq(r.status, 429);
            ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"queue_full\""));
        }
        tu_resp_free(&r);
    }
    ck_assert_msg(accepted >= MAXBYTES / 250 && accepted <= MAXBYTES / 150 + 1, "accepted %d posts", accepted);
    tu_start(&S, "persister", env);
    PGconn *db = tu_db(&S);
    assert_exactly_accepted(db, status, ids, N);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

START_TEST(test_broker_down_answers_503_and_recovers)
{
    char url[160], body[256];
    tu_resp_t r;
    tu_stack_start_api(&S, "brokerdown", NULL);
    snprintf(url, sizeof(url), "%s/readyz", S.base);
    ck_assert(tu_wait_status(url, 200, 10000));

    ck_assert_int_eq(tu_servers("stop-rabbitmq"), 0);
    body_plain(1, body, sizeof(body));
    ck_assert_int_eq(tu_http("POST", post_url(), NULL, "application/json", body, strlen(body), &r), 0);
    ck_assert_int_eq(r.status, 503);
    ck_assert_str_eq(r.retry_after, "1");
    ck_assert_msg(r.seconds < 1.0, "503 took %.3f s", r.seconds);
    tu_resp_free(&r);
    ck_assert(tu_wait_status(url, 503, 5000));

    ck_assert_int_eq(tu_servers("start-rabbitmq"), 0);
    ck_assert_msg(tu_wait_status(url, 200, 30000), "api did not become ready after the broker came back");
    tu_http_expect("POST", post_url(), NULL, "application/json", body, strlen(body), 202);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 1, 30000), 1); /* the persister reconnected too */
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

struct bad_request {
    const char *method, *path, *ctype, *body;
    long status;
    const char *code;
};

START_TEST(test_bad_inputs_get_documented_errors)
{
    static char big[17 * 1024 + 64];
    memset(big, 'a', sizeof(big) - 1);
    memcpy(big, "{\"author\":\"a\",\"text\":\"", 22);
    big[sizeof(big) - 3] = '"';
    big[sizeof(big) - 2] = '}';
    const struct bad_request cases[] = {
        {"POST", "/v1/messages", "application/json", "{not json", 400, "invalid_json"},
        {"POST", "/v1/messages", "application/json", "", 400, "invalid_json"},
        {"POST", "/v1/messages", "application/json", "[]", 400, "not_an_object"},
        {"POST", "/v1/messages", "application/json", "{\"author\":5,\"text\":\"x\"}", 400, "invalid_type"},
        {"POST", "/v1/messages", "application/json", "{\"author\":\"a\"}", 400, "missing_field"},
        {"POST", "/v1/messages", "application/json", "{\"author\":\"a\",\"text\":\"\xff\"}", 400, "invalid_utf8"},
        {"POST", "/v1/messages", "application/json", "{\"author\":\"a\",\"text\":\"x\",\"channel\":\"No!\"}", 400,
         "invalid_channel"},
        {"POST", "/v1/messages", "application/json", big, 413, "body_too_large"},
        {"POST", "/v1/messages", "text/plain", "{\"author\":\"a\",\"text\":\"x\"}", 415, "unsupported_media_type"},
        {"POST", "/v1/messages", NULL, "{\"author\":\"a\",\"text\":\"x\"}", 415, "unsupported_media_type"},
        {"PUT", "/v1/messages", "application/json", "{}", 405, "method_not_allowed"},
        {"PUT", "/v1/messages/0190f5f0-0000-7000-8000-000000000000", NULL, NULL, 405, "method_not_allowed"},
        {"DELETE", "/v1/messages/0190f5f0-0000-7000-8000-000000000000", NULL, NULL, 404, "not_found"},
        {"GET", "/v1/nothing", NULL, NULL, 404, "not_found"},
        {"GET", "/v1/messages/not-a-uuid", NULL, NULL, 404, "not_found"},
        {"GET", "/v1/messages/0190f5f0-0000-7000-8000-000000000000", NULL, NULL, 404, "not_found"},
        {"GET", "/v1/messages?limit=0", NULL, NULL, 400, "invalid_limit"},
        {"GET", "/v1/messages?limit=201", NULL, NULL, 400, "invalid_limit"},
        {"GET", "/v1/messages?limit=abc", NULL, NULL, 400, "invalid_limit"},
        {"GET", "/v1/messages?before=-3", NULL, NULL, 400, "invalid_cursor"},
        {"GET", "/v1/messages?before=9999999999999999999", NULL, NULL, 400, "invalid_cursor"}, /* > INT64_MAX */
        {"GET", "/v1/messages?before=9223372036854775808", NULL, NULL, 400, "invalid_cursor"},
        {"GET", "/v1/messages?limit=99999999999999999999", NULL, NULL, 400, "invalid_limit"},
        {"GET", "/v1/messages?channel=UPPER", NULL, NULL, 400, "invalid_channel"},
        {"GET", "/v1/messages?channel=%23", NULL, NULL, 400, "invalid_channel"},
        {"GET", "/v1/messages?channel=%23%23ops", NULL, NULL, 400, "invalid_channel"},
        {"POST", "/v1/messages", "application/json", "{\"author\":\"a\",\"text\":\"x\",\"channel\":\"#\"}", 400,
         "invalid_channel"},
    };
    tu_stack_start_api(&S, "badinput", NULL);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct bad_request *c = &cases[i];
        char url[256], want[96];
        tu_resp_t r;
        snprintf(url, sizeof(url), "%s%s", S.base, c->path);
        ck_assert_int_eq(tu_http(c->method, url, NULL, c->ctype, c->body, c->body ? strlen(c->body) : 0, &r), 0);
        ck_assert_msg(r.status == c->status, "case %zu: %s %s -> %ld, want %ld (%s)", i, c->method, c->path, r.status,
                      c->status, r.body);
        snprintf(want, sizeof(want), "\"code\":\"%s\"", c->code);
        ck_assert_msg(strstr(r.body, want) != NULL, "case %zu: body %s lacks %s", i, r.body, want);
        ck_assert_ptr_nonnull(strstr(r.body, "\"message\":\""));
        tu_resp_free(&r);
    }
    /* still serving */
    tu_resp_t r;
    const char *good = "{\"author\":\"a\",\"text\":\"still here\"}";
    ck_assert_int_eq(tu_http("POST", post_url(), NULL, "application/json; charset=utf-8", good, strlen(good), &r), 0);
    ck_assert_int_eq(r.status, 202);
    tu_resp_free(&r);
    /* "#ops" is the channel ops, in a body and (percent-encoded) in a query; answers name it ops. */
    const char *hashed = "{\"author\":\"a\",\"text\":\"hash\",\"channel\":\"#ops\"}";
    tu_http_expect("POST", post_url(), NULL, "application/json", hashed, strlen(hashed), 202);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 2, 20000), 2);
    tu_sleep_ms(200);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 2);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE channel = 'ops' AND body = 'hash'"), 1);
    PQfinish(db);
    char url[256];
    snprintf(url, sizeof(url), "%s/v1/messages?channel=%%23ops", S.base);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_msg(strstr(r.body, "\"channel\":\"ops\"") != NULL && strstr(r.body, "\"text\":\"hash\"") != NULL &&
                      strstr(r.body, "still here") == NULL && strchr(r.body, '#') == NULL,
                  "GET ?channel=%%23ops: %s", r.body);
    tu_resp_free(&r);
    tu_stack_cleanup(&S);
}
END_TEST

START_TEST(test_idempotency_key_gives_one_message)
{
    const char *b1 = "{\"author\":\"carol\",\"text\":\"only once\"}";
    const char *b2 = "{\"author\":\"dave\",\"text\":\"same key, other author\"}";
    char id1[37], id2[37], id3[37], at1[40], at2[40];
    tu_resp_t r;
    tu_stack_start_api(&S, "idem", NULL);
    ck_assert_int_eq(tu_http("POST", post_url(), "Idempotency-Key: abc-123", "application/json", b1, strlen(b1), &r), 0);
    ck_assert_int_eq(r.status, 202);
    tu_json_str(r.body, "id", id1, sizeof(id1));
    tu_json_str(r.body, "created_at", at1, sizeof(at1));
    tu_resp_free(&r);
    /* The retry comes before and after the first is stored: both give the first answer. */
    for (int round = 0; round < 2; round++) {
        ck_assert_int_eq(tu_http("POST", post_url(), "Idempotency-Key: abc-123", "application/json", b1, strlen(b1), &r),
                         0);
        ck_assert_int_eq(r.status, 202);
        tu_json_str(r.body, "id", id2, sizeof(id2));
        tu_json_str(r.body, "created_at", at2, sizeof(at2));
        ck_assert_str_eq(id2, id1);
        ck_assert_str_eq(at2, at1);
        tu_resp_free(&r);
        if (round == 0) {
            PGconn *db = tu_db(&S);
            tu_wait_rows(db, 1, 20000);
            PQfinish(db);
        }
    }
    ck_assert_int_eq(tu_http("POST", post_url(), "Idempotency-Key: abc-123", "application/json", b2, strlen(b2), &r), 0);
    ck_assert_int_eq(r.status, 202);
    tu_json_str(r.body, "id", id3, sizeof(id3));
    ck_assert_str_ne(id3, id1);
    tu_resp_free(&r);
    const char *bad = "Idempotency-Key: has space";
    tu_http_expect("POST", post_url(), bad, "application/json", b1, strlen(b1), 400);

    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 2, 20000), 2);
    tu_sleep_ms(300);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE author = 'carol'"), 1);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 2);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

struct term_plan {
    int at;
    int exit_status;
};

static void term_api_midway(int done, void *arg)
{
    struct term_plan *t = arg;
    if (done == t->at)
        kill(S.api, SIGTERM);
}

START_TEST(test_sigterm_finishes_in_flight)
{
    enum { N = 400 };
    static long status[N];
    static char ids[N][37];
    struct term_plan plan = {100, -1};
    tu_stack_start_api(&S, "sigterm", NULL);
    tu_post_many(post_url(), N, 100, body_plain, status, ids, term_api_midway, &plan);
    int accepted = 0;
    for (int i = 0; i < N; i++) {
        accepted += status[i] == 202;
        /* after SIGTERM a request is answered or refused at connect, never half-accepted */
        ck_assert_msg(status[i] == 202 || status[i] == 0 || status[i] == 503, "POST %d answered %ld", i, status[i]);
    }
    ck_assert_int_ge(accepted, 100);
    ck_assert_int_eq(tu_stop(&S.api, SIGTERM, 15000), 0); /* it exits 0 by itself */
    PGconn *db = tu_db(&S);
    assert_exactly_accepted(db, status, ids, N);
    ck_assert_int_eq(tu_stop(&S.persister, SIGTERM, 15000), 0);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* Messages in the stack's dead-letter queue, once there are want of them (or after 5 s). */
static long dead_count(amqp_connection_state_t c, long want)
{
    char dead[200];
    snprintf(dead, sizeof(dead), "%s.dead", S.queue);
    amqp_queue_declare_ok_t *ok = NULL;
    for (int i = 0; i < 50; i++) {
        ok = amqp_queue_declare(c, SL_AMQP_CHANNEL, amqp_cstring_bytes(dead), 1, 0, 0, 0, amqp_empty_table);
        ck_assert_ptr_nonnull(ok);
        if ((long)ok->message_count == want)
            break;
        tu_sleep_ms(100);
    }
    return (long)ok->message_count;
}

START_TEST(test_undecodable_message_is_dead_lettered)
{
    char err[256];
    tu_stack_init(&S, "poison", 100000);
    tu_start(&S, "api", NULL); /* declares the topology */
    amqp_connection_state_t c = sl_amqp_open(getenv("SLUICE_AMQP_URL"), "test", 0, 5000, err, sizeof(err));
    ck_assert_msg(c != NULL, "%s", err);
    amqp_bytes_t junk = amqp_cstring_bytes("{this is not a message");
    ck_assert_int_eq(amqp_basic_publish(c, SL_AMQP_CHANNEL, amqp_cstring_bytes(""), amqp_cstring_bytes(S.queue), 0, 0,
                                        NULL, junk),
                     AMQP_STATUS_OK);
    /* A batch of two items (one per line, as the api sends a loop turn's posts): the good one is
     * stored, the bad one alone goes to the dead-letter queue. */
    char batch[512], id[SL_UUID_STRLEN];
    ck_assert_int_eq(sl_uuid_v7(id), 0);
    snprintf(batch, sizeof(batch),
             "{\"id\":\"%s\",\"channel\":\"general\",\"author\":\"a\",\"text\":\"beside the poison\","
             "\"source\":\"api\",\"created_at\":\"2026-01-01T00:00:00.000000Z\"}\n{\"id\":\"not a uuid\"}",
             id);
    ck_assert_int_eq(amqp_basic_publish(c, SL_AMQP_CHANNEL, amqp_cstring_bytes(""), amqp_cstring_bytes(S.queue), 0, 0,
                                        NULL, amqp_cstring_bytes(batch)),
                     AMQP_STATUS_OK);
    const char *good = "{\"author\":\"a\",\"text\":\"after the poison\"}";
    tu_http_expect("POST", post_url(), NULL, "application/json", good, strlen(good), 202);
    tu_start(&S, "persister", NULL);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 2, 20000), 2);
    const char *idp[] = {id};
    PGresult *res = PQexecParams(db, "SELECT body FROM messages WHERE id = $1", 1, NULL, idp, NULL, NULL, 0);
    ck_assert_int_eq(PQntuples(res), 1);
    ck_assert_str_eq(PQgetvalue(res, 0, 0), "beside the poison");
    PQclear(res);
    ck_assert_int_eq(dead_count(c, 2), 2); /* the junk message, and the bad line of the batch */
    sl_amqp_close(c);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST


/* Publishes lines (joined by '\n') as one message straight to the stack's persist queue. */
static void publish_lines(amqp_connection_state_t c, const char *const *lines, int n)
{
    char body[2048] = "";
    for (int i = 0; i < n; i++) {
        size_t used = strlen(body);
        int len = snprintf(body + used, sizeof(body) - used, "%s%s", i > 0 ? "\n" : "", lines[i]);
        ck_assert(len > 0 && (size_t)len < sizeof(body) - used);
    }
    ck_assert_int_eq(amqp_basic_publish(c, SL_AMQP_CHANNEL, amqp_cstring_bytes(""), amqp_cstring_bytes(S.queue), 0, 0,
                                        NULL, amqp_cstring_bytes(body)),
                     AMQP_STATUS_OK);
}

static void message_line(char *buf, size_t size, const char *id, const char *text)
{
    int len = snprintf(buf, size,
                       "{\"id\":\"%s\",\"channel\":\"general\",\"author\":\"a\",\"text\":\"%s\","
                       "\"source\":\"api\",\"created_at\":\"2026-01-01T00:00:00.000000Z\"}",
                       id, text);
    ck_assert(len > 0 && (size_t)len < size);
}

/* A message whose UUIDv7 id is stored already, delivered again without the redelivered flag (so
 * the persister inserts without looking ids up first): the primary key refuses the batch, which is
 * stored again with the lookups; the repeat is skipped and the others are numbered without a gap. */
START_TEST(test_unflagged_repeat_of_stored_id_is_skipped)
{
    char err[256], id1[SL_UUID_STRLEN], id2[SL_UUID_STRLEN], id3[SL_UUID_STRLEN], l1[512], l2[512], l2b[512], l3[512];
    tu_stack_init(&S, "repeat", 100000);
    tu_start(&S, "api", NULL); /* declares the topology */
    tu_start(&S, "persister", NULL);
    amqp_connection_state_t c = sl_amqp_open(getenv("SLUICE_AMQP_URL"), "test", 0, 5000, err, sizeof(err));
    ck_assert_msg(c != NULL, "%s", err);
    ck_assert_int_eq(sl_uuid_v7(id1), 0);
    ck_assert_int_eq(sl_uuid_v7(id2), 0);
    ck_assert_int_eq(sl_uuid_v7(id3), 0);
    message_line(l1, sizeof(l1), id1, "first");
    message_line(l2, sizeof(l2), id2, "second");
    message_line(l2b, sizeof(l2b), id2, "second, sent again with another text");
    message_line(l3, sizeof(l3), id3, "third");
    publish_lines(c, (const char *const[]){l1, l2}, 2);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 2, 20000), 2);
    publish_lines(c, (const char *const[]){l2b, l3}, 2);
    ck_assert_int_eq(tu_wait_rows(db, 3, 20000), 3);
    tu_sleep_ms(300); /* nothing more comes */
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 3);
    ck_assert_int_eq(tu_scalar(db, "SELECT max(seq) FROM messages"), 3);
    ck_assert_int_eq(tu_scalar(db, "SELECT last_seq FROM sluice_feed WHERE id = 1"), 3);
    const char *p3[] = {id3}, *p2[] = {id2};
    PGresult *res = PQexecParams(db, "SELECT seq FROM messages WHERE id = $1", 1, NULL, p3, NULL, NULL, 0);
    ck_assert_int_eq(PQntuples(res), 1);
    ck_assert_str_eq(PQgetvalue(res, 0, 0), "3");
    PQclear(res);
    res = PQexecParams(db, "SELECT body FROM messages WHERE id = $1", 1, NULL, p2, NULL, NULL, 0);
    ck_assert_int_eq(PQntuples(res), 1);
    ck_assert_str_eq(PQgetvalue(res, 0, 0), "second"); /* the first copy stays */
    PQclear(res);
    /* and it went through the refused fast insert, not around it */
    ck_assert_msg(tu_log_contains(&S, "persister", "event=db_batch_repeats_stored_ids"),
                  "the persister did not log the refused fast insert");
    sl_amqp_close(c);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* The database refuses a message's data (class 22: year 0 is a valid RFC 3339 time, not a valid
 * timestamptz): that message alone is dead-lettered, confirmed, whether it came alone or in a
 * delivery with others; everything around it is stored in order. */
START_TEST(test_poison_refused_by_database_is_dead_lettered_alone)
{
    char err[256], ids[4][SL_UUID_STRLEN], lines[4][512];
    tu_stack_init(&S, "dbpoison", 100000);
    tu_start(&S, "api", NULL); /* declares the topology */
    amqp_connection_state_t c = sl_amqp_open(getenv("SLUICE_AMQP_URL"), "test", 0, 5000, err, sizeof(err));
    ck_assert_msg(c != NULL, "%s", err);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(sl_uuid_v7(ids[i]), 0);
        message_line(lines[i], sizeof(lines[i]), ids[i], i == 1 || i == 3 ? "poison" : "good");
    }
    char *year0 = strstr(lines[1], "2026-01-01");
    memcpy(year0, "0000", 4);
    year0 = strstr(lines[3], "2026-01-01");
    memcpy(year0, "0000", 4);
    publish_lines(c, (const char *const[]){lines[0], lines[1], lines[2]}, 3);
    publish_lines(c, (const char *const[]){lines[3]}, 1);
    tu_start(&S, "persister", NULL);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 2, 20000), 2);
    ck_assert_int_eq(dead_count(c, 2), 2);
    tu_sleep_ms(300);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE body = 'good'"), 2);
    ck_assert_int_eq(tu_scalar(db, "SELECT max(seq) FROM messages"), 2);
    ck_assert(tu_log_contains(&S, "persister", "event=batch_refused"));
    ck_assert(tu_log_contains(&S, "persister", "reason=\"refused by the database\""));
    sl_amqp_close(c);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* What a failover looks like to a client: the server turns read-only for a while (25006). Posts
 * accepted meanwhile wait in the queue, the persister keeps its batch and says so (/readyz 503,
 * transient failures counted), and stores every one once the server takes writes again: none is
 * dead-lettered. */
START_TEST(test_read_only_database_loses_nothing)
{
    enum { N = 20 };
    static long status[N];
    static char ids[N][37];
    char url[160], err[256];
    tu_stack_start_api(&S, "readonly", NULL);
    PGconn *db = tu_db(&S);
    PQclear(PQexec(db, "SET default_transaction_read_only = off")); /* this session stays writable */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/readyz", S.persister_port);
    ck_assert(tu_wait_status(url, 200, 10000));
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM (SELECT pg_reload_conf()) r"), 1);
    PQclear(PQexec(db, "ALTER SYSTEM SET default_transaction_read_only = on"));
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM (SELECT pg_reload_conf()) r"), 1);
    tu_sleep_ms(300);
    tu_post_many(post_url(), N, 4, body_plain, status, ids, NULL, NULL);
    for (int i = 0; i < N; i++)
        ck_assert_msg(status[i] == 202, "POST %d answered %ld", i, status[i]);
    ck_assert(tu_wait_status(url, 503, 5000)); /* it holds a batch it cannot store */
    tu_sleep_ms(3000);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 0);
    PQclear(PQexec(db, "ALTER SYSTEM RESET default_transaction_read_only"));
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM (SELECT pg_reload_conf()) r"), 1);
    assert_exactly_accepted(db, status, ids, N);
    ck_assert(tu_wait_status(url, 200, 10000));
    ck_assert(tu_log_contains(&S, "persister", "event=db_transient_failure"));
    ck_assert(!tu_log_contains(&S, "persister", "event=dead_lettered"));
    amqp_connection_state_t c = sl_amqp_open(getenv("SLUICE_AMQP_URL"), "test", 0, 5000, err, sizeof(err));
    ck_assert_msg(c != NULL, "%s", err);
    ck_assert_int_eq(dead_count(c, 0), 0);
    tu_resp_t r;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", S.persister_port);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_ptr_nonnull(strstr(r.body, "sluice_persister_db_failures_total{class=\"poison\"} 0"));
    ck_assert_ptr_null(strstr(r.body, "sluice_persister_db_failures_total{class=\"transient\"} 0"));
    tu_resp_free(&r);
    sl_amqp_close(c);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* A test that failed half-way must not leave the server read-only for the others. */
static void reset_read_only(void)
{
    const char *url = getenv("SLUICE_DB_URL");
    PGconn *c = url != NULL ? PQconnectdb(url) : NULL;
    if (c != NULL && PQstatus(c) == CONNECTION_OK) {
        PQclear(PQexec(c, "SET default_transaction_read_only = off"));
        PQclear(PQexec(c, "ALTER SYSTEM RESET default_transaction_read_only"));
        PQclear(PQexec(c, "SELECT pg_reload_conf()"));
    }
    PQfinish(c);
}

START_TEST(test_database_restart_loses_nothing)
{
    enum { N = 300 };
    static long status[N];
    static char ids[N][37];
    char url[160];
    tu_stack_start_api(&S, "dbrestart", NULL);
    tu_post_many(post_url(), N / 3, 20, body_plain, status, ids, NULL, NULL);
    ck_assert_int_eq(tu_servers("stop-postgres"), 0);
    /* Posting needs only the broker: it goes on, the persister holds its batch and retries. */
    tu_post_many(post_url(), N / 3, 20, body_plain, status + N / 3, ids + N / 3, NULL, NULL);
    snprintf(url, sizeof(url), "%s/readyz", S.base);
    ck_assert(tu_wait_status(url, 503, 5000)); /* the api's read pool noticed */
    ck_assert_int_eq(tu_servers("start-postgres"), 0);
    tu_post_many(post_url(), N - 2 * (N / 3), 20, body_plain, status + 2 * (N / 3), ids + 2 * (N / 3), NULL, NULL);
    for (int i = 0; i < N; i++)
        ck_assert_msg(status[i] == 202, "POST %d answered %ld", i, status[i]);
    PGconn *db = tu_db(&S);
    assert_exactly_accepted(db, status, ids, N);
    ck_assert(tu_wait_status(url, 200, 10000));
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

START_TEST(test_blocked_broker_answers_503)
{
    char url[160], body[256];
    tu_resp_t r;
    tu_stack_start_api(&S, "blocked", NULL);
    body_plain(0, body, sizeof(body));
    tu_http_expect("POST", post_url(), NULL, "application/json", body, strlen(body), 202);
    /* A memory alarm: RabbitMQ blocks publishing connections and tells them (connection.blocked). */
    ck_assert_int_eq(tu_servers("rabbitmqctl set_vm_memory_high_watermark 0.000001 >/dev/null"), 0);
    snprintf(url, sizeof(url), "%s/readyz", S.base);
    int saw_blocked = 0;
    tu_http_timeout_ms = 1000;
    for (int i = 0; i < 50 && !saw_blocked; i++) {
        /* The publish that meets the alarm waits for the broker (it may still be stored later);
         * the ones after it are refused at once. */
        tu_http("POST", post_url(), NULL, "application/json", body, strlen(body), &r);
        saw_blocked = r.status == 503 && strstr(r.body, "broker_blocked") != NULL;
        if (saw_blocked)
            ck_assert_str_eq(r.retry_after, "1");
        tu_resp_free(&r);
        if (!saw_blocked)
            tu_sleep_ms(100);
    }
    tu_http_timeout_ms = 20000;
    ck_assert_msg(saw_blocked, "never answered 503 broker_blocked");
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 503);
    ck_assert_ptr_nonnull(strstr(r.body, "\"amqp\":\"blocked\""));
    tu_resp_free(&r);
    ck_assert_int_eq(tu_servers("rabbitmqctl set_vm_memory_high_watermark 0.4 >/dev/null"), 0);
    ck_assert(tu_wait_status(url, 200, 15000));
    tu_http_expect("POST", post_url(), NULL, "application/json", body, strlen(body), 202);
    tu_stack_cleanup(&S);
}
END_TEST

START_TEST(test_idempotent_retry_of_confirmed_post_needs_no_room)
{
    const char *b = "{\"author\":\"erin\",\"text\":\"confirmed once\"}";
    char id1[37], id2[37], body[256];
    tu_resp_t r;
    tu_stack_init(&S, "idemfull", 2);
    tu_start(&S, "api", NULL); /* no persister: nothing leaves the queue */
    ck_assert_int_eq(tu_http("POST", post_url(), "Idempotency-Key: k-1", "application/json", b, strlen(b), &r), 0);
    ck_assert_int_eq(r.status, 202);
    tu_json_str(r.body, "id", id1, sizeof(id1));
    tu_resp_free(&r);
    for (int i = 0; i < 4; i++) { /* fill it */
        body_plain(i, body, sizeof(body));
        ck_assert_int_eq(tu_http("POST", post_url(), NULL, "application/json", body, strlen(body), &r), 0);
        tu_resp_free(&r);
    }
    ck_assert_int_eq(tu_http("POST", post_url(), NULL, "application/json", body, strlen(body), &r), 0);
    ck_assert_int_eq(r.status, 429); /* full indeed */
    tu_resp_free(&r);
    /* The retry of the confirmed post is answered from the key, without a publish: 202, same id.
     * (The key's "accepted" mark is written after the 202; give it a moment.) */
    tu_sleep_ms(300);
    ck_assert_int_eq(tu_http("POST", post_url(), "Idempotency-Key: k-1", "application/json", b, strlen(b), &r), 0);
    ck_assert_msg(r.status == 202, "retry answered %ld: %s", r.status, r.body);
    tu_json_str(r.body, "id", id2, sizeof(id2));
    ck_assert_str_eq(id2, id1);
    tu_resp_free(&r);
    tu_start(&S, "persister", NULL);
    PGconn *db = tu_db(&S);
    ck_assert_int_ge(tu_wait_rows(db, 3, 20000), 3);
    tu_sleep_ms(300);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE author = 'erin'"), 1);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* Migrations apply every version not recorded, not only those past the highest (parallel branches
 * add them in any order); version 6 adds messages.meta as JSONB. */
START_TEST(test_migrations_fill_gaps)
{
    sl_db_t db;
    char err[512];
    tu_stack_init(&S, "migrate", 100000);
    ck_assert_int_eq(sl_db_connect(&db, S.db_url, err, sizeof(err)), SL_DB_OK);
    ck_assert_msg(sl_db_migrate(&db, err, sizeof(err)) == SL_DB_OK, "%s", err);
    PGconn *c = tu_db(&S);
    ck_assert_int_eq(tu_scalar(c, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'messages'"
                                  " AND column_name = 'meta' AND data_type = 'jsonb'"),
                     1);
    ck_assert_int_eq(tu_scalar(c, "SELECT count(*) FROM sluice_schema_migrations WHERE version = 6"), 1);
    /* version 3 forgotten (as if it came from a branch merged after 6 had run) */
    PGresult *r = PQexec(c, "DELETE FROM sluice_schema_migrations WHERE version = 3;"
                            " ALTER TABLE idempotency_keys DROP COLUMN accepted_at");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    ck_assert_msg(sl_db_migrate(&db, err, sizeof(err)) == SL_DB_OK, "%s", err);
    ck_assert_int_eq(tu_scalar(c, "SELECT count(*) FROM sluice_schema_migrations WHERE version = 3"), 1);
    ck_assert_int_eq(tu_scalar(c, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'idempotency_keys'"
                                  " AND column_name = 'accepted_at'"),
                     1);
    ck_assert_int_ge(sl_db_schema_version(&db), 6);
    sl_db_close(&db);
    PQfinish(c);
    tu_stack_cleanup(&S);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("write_path");
    TCase *tc = tcase_create("integration");
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, test_bad_inputs_get_documented_errors);
    tcase_add_test(tc, test_concurrent_posts_stored_once_gapless);
    tcase_add_test(tc, test_idempotency_key_gives_one_message);
    tcase_add_test(tc, test_idempotent_retry_of_confirmed_post_needs_no_room);
    tcase_add_test(tc, test_full_queue_answers_429_and_keeps_accepted);
    tcase_add_test(tc, test_queue_bound_in_bytes);
    tcase_add_test(tc, test_undecodable_message_is_dead_lettered);
    tcase_add_test(tc, test_unflagged_repeat_of_stored_id_is_skipped);
    tcase_add_test(tc, test_poison_refused_by_database_is_dead_lettered_alone);
    tcase_add_test(tc, test_read_only_database_loses_nothing);
    tcase_add_unchecked_fixture(tc, NULL, reset_read_only);
    tcase_add_test(tc, test_persister_sigkill_loses_nothing);
    tcase_add_test(tc, test_sigterm_finishes_in_flight);
    tcase_add_test(tc, test_broker_down_answers_503_and_recovers);
    tcase_add_test(tc, test_database_restart_loses_nothing);
    tcase_add_test(tc, test_blocked_broker_answers_503);
    tcase_add_test(tc, test_migrations_fill_gaps);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
