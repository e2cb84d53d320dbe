/* Unit tests: sl_message validation and coding, sl_uuid, sl_time, sl_config. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_config.h"
#include "sl_message.h"
#include "sl_meta.h"
#include "sl_ratelimit.h"
#include "sl_time.h"
#include "sl_uuid.h"
#include "sl_testsuite.h"

struct bad_case {
    const char *body;
    const char *code;
    const char *field;
};

static const struct bad_case bad_cases[] = {
    {"", "invalid_json", NULL},
    {"{", "invalid_json", NULL},
    {"[1,2]", "not_an_object", NULL},
    {"\"text\"", "not_an_object", NULL},
    {"{\"author\":\"a\"}", "missing_field", "text"},
    {"{\"text\":\"hi\"}", "missing_field", "author"},
    {"{\"author\":1,\"text\":\"hi\"}", "invalid_type", "author"},
    {"{\"author\":\"a\",\"text\":[\"hi\"]}", "invalid_type", "text"},
    {"{\"author\":\"a\",\"text\":\"\"}", "invalid_length", "text"},
    {"{\"author\":\"\",\"text\":\"x\"}", "invalid_length", "author"},
    {"{\"author\":\"a\",\"text\":\"x\",\"channel\":\"Bad Channel\"}", "invalid_channel", "channel"},
    {"{\"author\":\"a\",\"text\":\"x\",\"channel\":\"\"}", "invalid_length", "channel"},
    {"{\"author\":\"a\",\"text\":\"x\",\"channel\":5}", "invalid_type", "channel"},
    {"{\"author\":\"a\",\"text\":\"x\",\"channel\":\"#\"}", "invalid_channel", "channel"},
    {"{\"author\":\"a\",\"text\":\"x\",\"channel\":\"##general\"}", "invalid_channel", "channel"},
    {"{\"author\":\"a\",\"text\":\"x\",\"channel\":\"general#\"}", "invalid_channel", "channel"},
    {"{\"author\":\"a\",\"text\":\"x\",\"channel\":\"#General\"}", "invalid_channel", "channel"},
    {"{\"author\":\"a\",\"text\":\"x\",\"color\":\"red\"}", "unknown_field", NULL},
    /* only ingest sets url and meta */
    {"{\"author\":\"a\",\"text\":\"x\",\"meta\":{\"display_name\":\"A\"}}", "unknown_field", NULL},
    {"{\"author\":\"a\",\"text\":\"x\",\"url\":\"https://x.example/\"}", "unknown_field", NULL},
    {"{\"author\":\"a\",\"author\":\"b\",\"text\":\"x\"}", "invalid_json", NULL},
    {"{\"author\":\"a\\u0000b\",\"text\":\"x\"}", "invalid_json", NULL},
    {"{\"author\":\"a\\nb\",\"text\":\"x\"}", "invalid_author", "author"},
    {"{\"author\":\"a\",\"text\":\"\xc3\x28\"}", "invalid_utf8", NULL},
    {"{\"author\":\"a\",\"text\":\"\xed\xa0\x80\"}", "invalid_utf8", NULL},
    {"{\"author\":\"a\",\"text\":\"x\",\"source\":\"mastodon\"}", "invalid_source", "source"},
};

START_TEST(test_bad_bodies)
{
    const struct bad_case *c = &bad_cases[_i];
    sl_message_t m;
    sl_error_t err;
    ck_assert_int_eq(sl_message_from_request(c->body, strlen(c->body), &m, &err), -1);
    ck_assert_int_eq(err.status, 400);
    ck_assert_msg(strcmp(err.code, c->code) == 0, "case %d: code %s, want %s", _i, err.code, c->code);
    if (c->field == NULL)
        ck_assert_ptr_null(err.field);
    else
        ck_assert_str_eq(err.field, c->field);
    ck_assert_int_gt(strlen(err.message), 0);
}
END_TEST

START_TEST(test_good_body_defaults)
{
    const char *b = "{\"author\":\"alice\",\"text\":\"h\xc3\xa9llo \xf0\x9f\x8c\x8a\"}";
    sl_message_t m;
    sl_error_t err;
    ck_assert_int_eq(sl_message_from_request(b, strlen(b), &m, &err), 0);
    ck_assert_str_eq(m.channel, "general");
    ck_assert_str_eq(m.author, "alice");
    ck_assert_str_eq(m.source, "api");
    ck_assert_str_eq(m.text, "h\xc3\xa9llo \xf0\x9f\x8c\x8a");
}
END_TEST

/* "#general" is "general" everywhere a channel is written; the stored name has no '#'. */
START_TEST(test_channel_hash_prefix)
{
    char name[SL_CHANNEL_MAX + 2], body[256];
    sl_message_t m;
    sl_error_t err;
    const char *b = "{\"author\":\"a\",\"text\":\"x\",\"channel\":\"#general\"}";
    ck_assert_int_eq(sl_message_from_request(b, strlen(b), &m, &err), 0);
    ck_assert_str_eq(m.channel, "general");

    /* 64 characters are the longest name, with or without the '#'; 65 are refused either way. */
    memset(name, 'x', sizeof(name));
    for (int hash = 0; hash <= 1; hash++) {
        for (int n = SL_CHANNEL_MAX; n <= SL_CHANNEL_MAX + 1; n++) {
            snprintf(body, sizeof(body), "{\"author\":\"a\",\"text\":\"x\",\"channel\":\"%s%.*s\"}", hash ? "#" : "",
                     n, name);
            int rc = sl_message_from_request(body, strlen(body), &m, &err);
            if (n == SL_CHANNEL_MAX) {
                ck_assert_int_eq(rc, 0);
                ck_assert_uint_eq(strlen(m.channel), SL_CHANNEL_MAX);
                ck_assert_int_eq(m.channel[0], 'x');
            } else {
                ck_assert_int_eq(rc, -1);
                ck_assert_int_eq(err.status, 400);
                ck_assert_msg(strcmp(err.code, "invalid_channel") == 0 || strcmp(err.code, "invalid_length") == 0,
                              "hash %d n %d: %s", hash, n, err.code);
            }
        }
    }

    const char *canon = NULL;
    ck_assert_uint_eq(sl_channel_canon("#ops", 4, &canon), 3);
    ck_assert_int_eq(memcmp(canon, "ops", 3), 0);
    ck_assert_uint_eq(sl_channel_canon("ops", 3, &canon), 3);
    ck_assert_uint_eq(sl_channel_canon("#", 1, &canon), 0);
    ck_assert_uint_eq(sl_channel_canon("", 0, &canon), 0);
    ck_assert_uint_eq(sl_channel_canon("#a#", 3, &canon), 0);
}
END_TEST

START_TEST(test_edit_body)
{
    char text[SL_TEXT_MAX_CHARS * 4 + 1];
    sl_error_t err;
    const char *good = "{\"text\":\"better \u00e9\"}";
    ck_assert_int_eq(sl_message_edit_from_request(good, strlen(good), text, &err), 0);
    ck_assert_str_eq(text, "better \xc3\xa9");
    static const struct bad_case bad[] = {
        {"", "invalid_json", NULL},
        {"[]", "not_an_object", NULL},
        {"{}", "missing_field", "text"},
        {"{\"text\":\"\"}", "invalid_length", "text"},
        {"{\"text\":3}", "invalid_type", "text"},
        {"{\"text\":\"x\",\"author\":\"mallory\"}", "unknown_field", NULL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_int_eq(sl_message_edit_from_request(bad[i].body, strlen(bad[i].body), text, &err), -1);
        ck_assert_msg(strcmp(err.code, bad[i].code) == 0, "case %zu: %s", i, err.code);
        ck_assert_int_eq(err.status, 400);
        if (bad[i].field != NULL)
            ck_assert_str_eq(err.field, bad[i].field);
    }
}
END_TEST

/* A batch names every bad item by its index, in order, JSON array and NDJSON alike. */
START_TEST(test_batch_bodies)
{
    static sl_message_t msgs[SL_BATCH_MAX];
    static sl_batch_error_t errs[SL_BATCH_MAX];
    size_t n, nerrs;
    sl_error_t err;
    const char *arr = "[{\"author\":\"a\",\"text\":\"one\"},{\"author\":\"b\"},7,"
                      "{\"author\":\"c\",\"text\":\"x\",\"channel\":\"#news\"},{\"author\":\"d\",\"text\":\"x\",\"k\":1}]";
    ck_assert_int_eq(sl_message_batch_from_request(arr, strlen(arr), 0, msgs, &n, &err, errs, &nerrs), -2);
    ck_assert_uint_eq(nerrs, 3);
    ck_assert_uint_eq(errs[0].index, 1);
    ck_assert_str_eq(errs[0].err.code, "missing_field");
    ck_assert_str_eq(errs[0].err.field, "text");
    ck_assert_uint_eq(errs[1].index, 2);
    ck_assert_str_eq(errs[1].err.code, "not_an_object");
    ck_assert_uint_eq(errs[2].index, 4);
    ck_assert_str_eq(errs[2].err.code, "unknown_field");

    const char *nd = "{\"author\":\"a\",\"text\":\"one\"}\r\n{\"author\":\"b\",\"text\":\"two\",\"channel\":\"#news\"}\n";
    ck_assert_int_eq(sl_message_batch_from_request(nd, strlen(nd), 1, msgs, &n, &err, errs, &nerrs), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(msgs[0].text, "one");
    ck_assert_str_eq(msgs[1].channel, "news");
    ck_assert_str_eq(msgs[1].source, "api");
    const char *nd_bad = "{\"author\":\"a\",\"text\":\"one\"}\n\n{\"author\":\"b\",\"text\":\"two\"";
    ck_assert_int_eq(sl_message_batch_from_request(nd_bad, strlen(nd_bad), 1, msgs, &n, &err, errs, &nerrs), -2);
    ck_assert_uint_eq(nerrs, 2);
    ck_assert_uint_eq(errs[0].index, 1); /* the empty line */
    ck_assert_uint_eq(errs[1].index, 2);
    ck_assert_str_eq(errs[1].err.code, "invalid_json");

    /* the body as a whole */
    static const struct bad_case whole[] = {
        {"", "invalid_json", NULL}, {"{}", "not_an_array", NULL}, {"[]", "invalid_batch_size", NULL}};
    for (size_t i = 0; i < sizeof(whole) / sizeof(whole[0]); i++) {
        ck_assert_int_eq(sl_message_batch_from_request(whole[i].body, strlen(whole[i].body), 0, msgs, &n, &err, errs,
                                                       &nerrs),
                         -1);
        ck_assert_str_eq(err.code, whole[i].code);
    }
    ck_assert_int_eq(sl_message_batch_from_request("", 0, 1, msgs, &n, &err, errs, &nerrs), -1);
    ck_assert_str_eq(err.code, "invalid_batch_size");
    /* 100 messages pass, 101 do not */
    for (int count = SL_BATCH_MAX; count <= SL_BATCH_MAX + 1; count++) {
        char *body = malloc((size_t)count * 40 + 8), *p = body;
        for (int i = 0; i < count; i++)
            p += sprintf(p, "{\"author\":\"a\",\"text\":\"m%d\"}\n", i);
        int rc = sl_message_batch_from_request(body, (size_t)(p - body), 1, msgs, &n, &err, errs, &nerrs);
        ck_assert_int_eq(rc, count == SL_BATCH_MAX ? 0 : -1);
        if (rc == 0)
            ck_assert_str_eq(msgs[99].text, "m99");
        else
            ck_assert_str_eq(err.code, "invalid_batch_size");
        free(body);
    }
}
END_TEST

START_TEST(test_length_limits_count_characters)
{
    /* 500 three-byte characters pass, 501 do not; the limit is characters, not bytes. */
    char body[4096], text[2000];
    sl_message_t m;
    sl_error_t err;
    for (int n = 500; n <= 501; n++) {
        size_t o = 0;
        for (int i = 0; i < n; i++) {
            memcpy(text + o, "\xe2\x82\xac", 3);
            o += 3;
        }
        text[o] = '\0';
        snprintf(body, sizeof(body), "{\"author\":\"a\",\"channel\":\"news_1-x\",\"text\":\"%s\"}", text);
        ck_assert_int_eq(sl_message_from_request(body, strlen(body), &m, &err), n == 500 ? 0 : -1);
    }
    ck_assert_str_eq(err.code, "invalid_length");
}
END_TEST

START_TEST(test_json_round_trip)
{
    sl_message_t m, back;
    sl_error_t err;
    size_t len;
    memset(&m, 0, sizeof(m));
    ck_assert_int_eq(sl_uuid_v7(m.id), 0);
    strcpy(m.channel, "general");
    strcpy(m.author, "bob \"the\" builder");
    strcpy(m.text, "line1\nline2 <script>alert(1)</script> \xe2\x9c\x93");
    strcpy(m.source, "bot");
    m.created_at_us = 1795000000123456LL;
    m.seq = 42;
    char *json = sl_message_to_json(&m, &len);
    ck_assert_ptr_nonnull(json);
    ck_assert_int_eq(sl_message_from_json(json, len, &back, &err), 0);
    free(json);
    ck_assert_str_eq(back.id, m.id);
    ck_assert_str_eq(back.author, m.author);
    ck_assert_str_eq(back.text, m.text);
    ck_assert_str_eq(back.source, "bot");
    ck_assert_int_eq(back.created_at_us, m.created_at_us);
    ck_assert_int_eq(back.seq, 42);
}
END_TEST

/* The direct encoder writes what jansson writes for the same object: every escape class (quote,
 * backslash, named and \u00XX control characters, DEL, slash, non-ASCII) and every member order. */
START_TEST(test_json_encoder_matches_jansson)
{
    sl_message_t m;
    memset(&m, 0, sizeof(m));
    strcpy(m.id, "0190f5f0-0000-7000-8000-000000000000");
    strcpy(m.channel, "general");
    strcpy(m.author, "a\\b\"c/d\x7f");
    for (int c = 1; c < 0x20; c++)
        m.text[c - 1] = (char)c;
    strcat(m.text, " \xe2\x80\xa8 \xf0\x9f\x98\x80 end");
    strcpy(m.source, "api");
    m.created_at_us = 1795000000123456LL;
    for (int variant = 0; variant < 4; variant++) {
        m.type = variant == 2 ? SL_MESSAGE_UPDATE : variant == 3 ? SL_MESSAGE_DELETE : SL_MESSAGE_NEW;
        m.seq = variant == 0 ? 0 : 1234567890123LL;
        if (variant >= 1) {
            strcpy(m.url, "https://example.org/@a/1?x=\"y\"");
            m.edited_at_us = 1795000000999999LL;
            strcpy(m.event_id, "0190f5f0-0000-5000-8000-000000000001");
        }
        size_t len;
        char *ours = sl_message_to_json(&m, &len);
        ck_assert_uint_eq(len, strlen(ours));
        json_t *parsed = json_loadb(ours, len, 0, NULL);
        ck_assert_msg(parsed != NULL, "variant %d: not JSON: %s", variant, ours);
        char *theirs = json_dumps(parsed, JSON_COMPACT | JSON_PRESERVE_ORDER);
        ck_assert_str_eq(ours, theirs);
        json_t *obj = sl_message_to_jansson(&m);
        ck_assert(json_equal(obj, parsed));
        free(theirs);
        free(ours);
        json_decref(obj);
        json_decref(parsed);
    }
}
END_TEST

START_TEST(test_queue_payload_rejects_garbage)
{
    const char *cases[] = {"not json", "{\"id\":\"nope\",\"channel\":\"a\",\"author\":\"b\",\"text\":\"c\","
                                       "\"source\":\"api\",\"created_at\":\"2026-01-01T00:00:00Z\"}",
                           "{\"id\":\"0190f5f0-0000-7000-8000-000000000000\",\"channel\":\"a\",\"author\":\"b\","
                           "\"text\":\"c\",\"source\":\"api\",\"created_at\":\"yesterday\"}"};
    sl_message_t m;
    sl_error_t err;
    for (size_t i = 0; i < 3; i++)
        ck_assert_int_eq(sl_message_from_json(cases[i], strlen(cases[i]), &m, &err), -1);
}
END_TEST

START_TEST(test_error_message_stays_utf8)
{
    /* a message that quotes input cut inside a character is still valid UTF-8, so JSON can carry
     * it (found by fuzzing: the answer was a 500) */
    const char *body = "{\"a\":\"\\\xc3\xa9\"}";
    sl_message_t m;
    sl_error_t err;
    size_t len;
    ck_assert_int_eq(sl_message_from_request(body, strlen(body), &m, &err), -1);
    ck_assert_int_ge(sl_utf8_count(err.message, strlen(err.message)), 0);
    char *j = sl_error_to_json(&err, &len);
    ck_assert_ptr_nonnull(j);
    free(j);
    sl_error_set(&err, 400, "x", NULL, "cut %.1s here", "\xc3\xa9");
    ck_assert_str_eq(err.message, "cut ? here");
}
END_TEST

START_TEST(test_error_json)
{
    sl_error_t err;
    size_t len;
    sl_error_set(&err, 400, "invalid_type", "text", "'%s' must be a string", "text");
    char *j = sl_error_to_json(&err, &len);
    ck_assert_str_eq(j, "{\"error\":{\"code\":\"invalid_type\",\"message\":\"'text' must be a string\",\"field\":\"text\"}}");
    free(j);
}
END_TEST

/* meta (sl_meta.h) on the queue: checked strictly, kept in canonical form, carried by messages and
 * updates, never by deletes. */
START_TEST(test_meta_on_the_queue)
{
    sl_message_t m, back;
    sl_error_t err;
    /* members in any order, with spaces: decoded to the canonical text (compact, keys sorted) */
    const char *in = "{\"id\":\"0190f5f0-0000-7000-8000-000000000000\",\"channel\":\"mastodon\",\"author\":\"a\","
                     "\"text\":\"t\",\"source\":\"mastodon\",\"created_at\":\"2026-01-01T00:00:00Z\","
                     "\"meta\":{ \"url\": \"https://x.example/@a/1\", \"display_name\": \"A \\\"B\\\"\","
                     " \"sensitive\": true, \"language\": \"pt-BR\", \"spoiler_text\": \"cw\","
                     " \"media\": [{\"url\": \"https://x.example/m.png\", \"type\": \"image\","
                     " \"description\": \"alt\", \"preview_url\": \"http://x.example/s.png\"}],"
                     " \"reblog\": {\"url\": \"https://y.example/@o/2\", \"acct\": \"o@y.example\"},"
                     " \"avatar\": \"https://x.example/a.png\", \"account_url\": \"https://x.example/@a\"}}";
    ck_assert_msg(sl_message_from_json(in, strlen(in), &m, &err) == 0, "%s", err.message);
    const char *canon = "{\"account_url\":\"https://x.example/@a\",\"avatar\":\"https://x.example/a.png\","
                        "\"display_name\":\"A \\\"B\\\"\",\"language\":\"pt-BR\",\"media\":[{\"description\":\"alt\","
                        "\"preview_url\":\"http://x.example/s.png\",\"type\":\"image\",\"url\":\"https://x.example/m.png\"}],"
                        "\"reblog\":{\"acct\":\"o@y.example\",\"url\":\"https://y.example/@o/2\"},\"sensitive\":true,"
                        "\"spoiler_text\":\"cw\",\"url\":\"https://x.example/@a/1\"}";
    ck_assert_str_eq(m.meta, canon);
    /* written as a member, read back the same; its JSON is the same as jansson's */
    size_t len;
    char *json = sl_message_to_json(&m, &len);
    ck_assert_ptr_nonnull(strstr(json, canon));
    ck_assert_int_eq(sl_message_from_json(json, len, &back, &err), 0);
    ck_assert_str_eq(back.meta, canon);
    json_t *o = sl_message_to_jansson(&m);
    ck_assert(json_is_object(json_object_get(o, "meta")));
    json_decref(o);
    sl_message_clear(&back);
    free(json);
    /* an update carries it, a delete never */
    m.type = SL_MESSAGE_UPDATE;
    m.edited_at_us = 1;
    ck_assert_int_eq(sl_message_event_id(&m, m.event_id), 0);
    json = sl_message_to_json(&m, &len);
    ck_assert_ptr_nonnull(strstr(json, canon));
    ck_assert_int_eq(sl_message_from_json(json, len, &back, &err), 0);
    ck_assert_str_eq(back.meta, canon);
    sl_message_clear(&back);
    free(json);
    m.type = SL_MESSAGE_DELETE;
    json = sl_message_to_json(&m, &len);
    ck_assert_ptr_null(strstr(json, "meta"));
    free(json);
    sl_message_clear(&m);
    ck_assert_ptr_null(m.meta);
    sl_message_clear(&m); /* twice is fine */

    /* null or absent: none */
    const char *none = "{\"id\":\"0190f5f0-0000-7000-8000-000000000000\",\"channel\":\"a\",\"author\":\"b\",\"text\":\"c\","
                       "\"source\":\"api\",\"created_at\":\"2026-01-01T00:00:00Z\",\"meta\":null}";
    ck_assert_int_eq(sl_message_from_json(none, strlen(none), &m, &err), 0);
    ck_assert_ptr_null(m.meta);

    /* what the schema refuses, each with invalid_meta (a dead letter in the persister) */
    char big[2200];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    char name65[80] = "", desc[700] = "";
    memset(name65, 'n', 65);
    memset(desc, 'd', 501);
    char url_long[1100] = "https://x.example/";
    memset(url_long + 18, 'u', 1030);
    char media9[1200] = "[";
    for (int i = 0; i < 9; i++)
        strcat(media9, i ? ",{\"type\":\"image\",\"url\":\"https://x.example/\"}" : "{\"type\":\"image\",\"url\":\"https://x.example/\"}");
    strcat(media9, "]");
    char bad_metas[][1300] = {
        "[]",
        "{}",
        "\"x\"",
        "{\"color\":\"red\"}",
        "{\"url\":\"javascript:alert(1)\"}",
        "{\"avatar\":\"data:image/png;base64,AAAA\"}",
        "{\"account_url\":\"https://\"}",
        "{\"url\":\"https://x.example/\\n\"}",
        "{\"display_name\":\"\"}",
        "{\"display_name\":\"a\\u0085b\"}",
        "{\"display_name\":7}",
        "{\"language\":\"en us\"}",
        "{\"language\":\"abcdefghijklmnopq\"}",
        "{\"sensitive\":\"yes\"}",
        "{\"media\":[]}",
        "{\"media\":[{\"type\":\"image\"}]}",
        "{\"media\":[{\"type\":\"picture\",\"url\":\"https://x.example/\"}]}",
        "{\"media\":[{\"type\":\"image\",\"url\":\"https://x.example/\",\"preview_url\":\"javascript:x\"}]}",
        "{\"media\":[{\"type\":\"image\",\"url\":\"https://x.example/\",\"blurhash\":\"x\"}]}",
        "{\"media\":{\"type\":\"image\"}}",
        "{\"reblog\":{\"url\":\"https://x.example/\"}}",
        "{\"reblog\":{\"acct\":\"o\",\"url\":\"vbscript:x\"}}",
        "{\"reblog\":{\"acct\":\"o\",\"reblog\":{}}}",
    };
    char fmt[4][1300];
    snprintf(fmt[0], sizeof(fmt[0]), "{\"display_name\":\"%s\"}", name65);
    snprintf(fmt[1], sizeof(fmt[1]), "{\"media\":[{\"type\":\"image\",\"url\":\"https://x.example/\",\"description\":\"%s\"}]}", desc);
    snprintf(fmt[2], sizeof(fmt[2]), "{\"avatar\":\"%s\"}", url_long);
    snprintf(fmt[3], sizeof(fmt[3]), "{\"media\":%s}", media9);
    for (size_t i = 0; i < sizeof(bad_metas) / sizeof(bad_metas[0]) + 4; i++) {
        const char *meta = i < sizeof(bad_metas) / sizeof(bad_metas[0]) ? bad_metas[i] : fmt[i - sizeof(bad_metas) / sizeof(bad_metas[0])];
        static char body[40000];
        snprintf(body, sizeof(body),
                 "{\"id\":\"0190f5f0-0000-7000-8000-000000000000\",\"channel\":\"a\",\"author\":\"b\",\"text\":\"c\","
                 "\"source\":\"mastodon\",\"created_at\":\"2026-01-01T00:00:00Z\",\"meta\":%s}",
                 meta);
        ck_assert_msg(sl_message_from_json(body, strlen(body), &m, &err) == -1, "meta %s was taken", meta);
        ck_assert_msg(strcmp(err.code, "invalid_meta") == 0 && strcmp(err.field, "meta") == 0, "%s: %s %s", meta,
                      err.code, err.message);
        ck_assert_ptr_null(m.meta);
    }
    /* meta taken, then another field refused: nothing leaks (ASan would say) */
    const char *late = "{\"id\":\"nope\",\"channel\":\"a\",\"author\":\"b\",\"text\":\"c\",\"source\":\"mastodon\","
                       "\"created_at\":\"2026-01-01T00:00:00Z\",\"meta\":{\"display_name\":\"A\"}}";
    ck_assert_int_eq(sl_message_from_json(late, strlen(late), &m, &err), -1);
    ck_assert_str_eq(err.code, "invalid_id");
    ck_assert_ptr_null(m.meta);
    /* the link rule */
    ck_assert(sl_meta_web_link("https://x.example/", 18));
    ck_assert(sl_meta_web_link("HTTP://x", 8));
    ck_assert(!sl_meta_web_link("http://", 7));
    ck_assert(!sl_meta_web_link("javascript:alert(1)//https://", 29));
    ck_assert(!sl_meta_web_link(big, strlen(big)));
}
END_TEST

START_TEST(test_uuid_v7_sorted_and_versioned)
{
    char prev[SL_UUID_STRLEN] = "", cur[SL_UUID_STRLEN];
    for (int i = 0; i < 10000; i++) {
        ck_assert_int_eq(sl_uuid_v7_at(1700000000000ULL + (uint64_t)(i / 100), cur), 0);
        ck_assert(sl_uuid_valid(cur, 36));
        ck_assert_int_eq(cur[14], '7');
        ck_assert_int_eq(sl_uuid_version(cur), 7);
        ck_assert(strchr("89ab", cur[19]) != NULL);
        ck_assert_msg(strcmp(prev, cur) < 0, "%s !< %s", prev, cur);
        strcpy(prev, cur);
    }
    ck_assert(!sl_uuid_valid("0190f5f0-0000-7000-8000-00000000000g", 36));
    ck_assert_int_eq(sl_uuid_version("0190f5f0-0000-7000-8000-00000000000g"), -1);
    ck_assert_int_eq(sl_uuid_version("0190f5f0-0000-7000-8000-00000000000"), -1);
    ck_assert_int_eq(sl_uuid_version(""), -1);
}
END_TEST

START_TEST(test_uuid_v5_known_value)
{
    /* RFC 9562 appendix A.4: v5 of "www.example.com" in the DNS namespace. */
    char out[SL_UUID_STRLEN];
    ck_assert_int_eq(sl_uuid_v5("6ba7b810-9dad-11d1-80b4-00c04fd430c8", "www.example.com", 15, out), 0);
    ck_assert_str_eq(out, "2ed6657d-e927-568b-95e1-2665a8aea6a2");
    ck_assert_int_eq(sl_uuid_version(out), 5);
    ck_assert_int_eq(sl_uuid_version("2ED6657D-E927-568B-95E1-2665A8AEA6A2"), 5);
}
END_TEST

START_TEST(test_time_parse_forms)
{
    int64_t us;
    char buf[SL_TIME_RFC3339_LEN];
    ck_assert_int_eq(sl_time_parse("1970-01-01T00:00:00Z", 20, &us), 0);
    ck_assert_int_eq(us, 0);
    const char *pg = "2026-11-24 20:50:01.123456+00";
    ck_assert_int_eq(sl_time_parse(pg, strlen(pg), &us), 0);
    sl_time_format(us, buf);
    ck_assert_str_eq(buf, "2026-11-24T20:50:01.123456Z");
    const char *crdb = "2026-11-24 22:50:01.5+02:00";
    ck_assert_int_eq(sl_time_parse(crdb, strlen(crdb), &us), 0);
    sl_time_format(us, buf);
    ck_assert_str_eq(buf, "2026-11-24T20:50:01.500000Z");
    ck_assert_int_eq(sl_time_parse("2026-13-01T00:00:00Z", 20, &us), -1);
    /* outside what sl_time_format can write back (found by fuzzing) */
    ck_assert_int_eq(sl_time_parse("0000-01-01T00:00:00+01:00", 25, &us), -1);
    ck_assert_int_eq(sl_time_parse("9999-12-31T23:59:60Z", 20, &us), -1);
    ck_assert_int_eq(sl_time_parse("9999-12-31T23:59:59Z", 20, &us), 0);
    ck_assert_int_eq(sl_time_parse("2026-01-01", 10, &us), -1);
    /* days that do not exist, and the leap days that do */
    ck_assert_int_eq(sl_time_parse("2026-02-31T00:00:00Z", 20, &us), -1);
    ck_assert_int_eq(sl_time_parse("2026-04-31T00:00:00Z", 20, &us), -1);
    ck_assert_int_eq(sl_time_parse("2026-02-29T00:00:00Z", 20, &us), -1);
    ck_assert_int_eq(sl_time_parse("1900-02-29T00:00:00Z", 20, &us), -1);
    ck_assert_int_eq(sl_time_parse("2028-02-29T00:00:00Z", 20, &us), 0);
    ck_assert_int_eq(sl_time_parse("2000-02-29T00:00:00Z", 20, &us), 0);
    sl_time_format(us, buf);
    ck_assert_str_eq(buf, "2000-02-29T00:00:00.000000Z");
}
END_TEST

/* Past max_keys, newcomers share overflow buckets by hash: one client that drains its own cannot
 * refuse every other newcomer (with one shared overflow bucket it did). */
START_TEST(test_ratelimit_overflow_is_sharded)
{
    sl_ratelimit_t *r = sl_ratelimit_create(1, 2, 2);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(sl_ratelimit_take(r, "a", 0), 0);
    ck_assert_int_eq(sl_ratelimit_take(r, "b", 0), 0);
    ck_assert_uint_eq(sl_ratelimit_keys(r), 2);
    int refused = 0;
    for (int i = 0; i < 10; i++)
        refused += sl_ratelimit_take(r, "attacker", 0) != 0;
    ck_assert_int_eq(refused, 8); /* its shard's burst of 2, then refused */
    int allowed = 0;
    for (int i = 0; i < 20; i++) {
        char key[16];
        snprintf(key, sizeof(key), "newcomer-%d", i);
        allowed += sl_ratelimit_take(r, key, 0) == 0;
    }
    ck_assert_msg(allowed >= 15, "only %d of 20 newcomers allowed", allowed);
    ck_assert_uint_eq(sl_ratelimit_keys(r), 2); /* memory did not grow */
    sl_ratelimit_destroy(r);
}
END_TEST

/* A batch costs one token per message: it passes when the bucket holds min(n, burst), then
 * leaves it in debt, so the client's average stays at the rate whatever the batch size. */
START_TEST(test_ratelimit_batch_costs_its_messages)
{
    sl_ratelimit_t *r = sl_ratelimit_create(10, 20, 100);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(sl_ratelimit_take_n(r, "c", 15, 0, 0), 0); /* 20 - 15 = 5 left */
    ck_assert_int_eq(sl_ratelimit_take_n(r, "c", 15, 0, 0), 1); /* needs 15: 1 s at 10/s */
    ck_assert_int_eq(sl_ratelimit_take_n(r, "c", 5, 0, 0), 0);  /* the 5 left */
    ck_assert_int_eq(sl_ratelimit_take(r, "c", 0), 1);
    /* a batch larger than the burst passes on a full bucket, and is paid for afterwards */
    ck_assert_int_eq(sl_ratelimit_take_n(r, "d", 100, 0, 0), 0);
    ck_assert_int_eq(sl_ratelimit_take(r, "d", 0), 9);                 /* -80: 8.1 s to reach 1 */
    ck_assert_int_eq(sl_ratelimit_take(r, "d", 8000000), 1);           /* at 8 s: 0 tokens */
    ck_assert_int_eq(sl_ratelimit_take(r, "d", 8100000), 0);           /* at 8.1 s: 1 token */
    ck_assert_int_eq(sl_ratelimit_take_n(r, "d", 100, 0, 8100000), 2); /* needs the full burst of 20 */
    /* the same when the request took its first token at the door: 1 + 99 on a full bucket */
    ck_assert_int_eq(sl_ratelimit_take(r, "e", 0), 0);
    ck_assert_int_eq(sl_ratelimit_take_n(r, "e", 100, 1, 0), 0);
    ck_assert_int_eq(sl_ratelimit_take(r, "e", 0), 9); /* -80 again */
    sl_ratelimit_destroy(r);
}
END_TEST

START_TEST(test_config_env_and_flags)
{
    long long port = 0, batch = 0;
    const char *url = NULL;
    sl_opt_t opts[] = {
        {"port", "SLUICE_TEST_PORT", SL_OPT_INT, &port, "8080", 1, 65535, "port"},
        {"batch", "SLUICE_TEST_BATCH", SL_OPT_INT, &batch, "100", 1, 10000, "batch"},
        {"url", "SLUICE_TEST_URL", SL_OPT_STR, &url, "amqp://x", 0, 0, "url"},
    };
    char *argv[] = {"prog", "--port=9090", "--url", "amqp://y", NULL};
    setenv("SLUICE_TEST_PORT", "7070", 1);
    setenv("SLUICE_TEST_BATCH", "250", 1);
    ck_assert_int_eq(sl_config_parse(opts, 3, 4, argv, "prog", "test"), 0);
    ck_assert_int_eq(port, 9090);
    ck_assert_int_eq(batch, 250);
    ck_assert_str_eq(url, "amqp://y");
    setenv("SLUICE_TEST_BATCH", "0", 1);
    ck_assert_int_eq(sl_config_parse(opts, 3, 1, argv, "prog", "test"), -1);
    char *bad[] = {"prog", "--nope=1", NULL};
    unsetenv("SLUICE_TEST_BATCH");
    ck_assert_int_eq(sl_config_parse(opts, 3, 2, bad, "prog", "test"), -1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("message");
    TCase *tc = tcase_create("core");
    tcase_add_loop_test(tc, test_bad_bodies, 0, sizeof(bad_cases) / sizeof(bad_cases[0]));
    tcase_add_test(tc, test_good_body_defaults);
    tcase_add_test(tc, test_channel_hash_prefix);
    tcase_add_test(tc, test_length_limits_count_characters);
    tcase_add_test(tc, test_json_round_trip);
    tcase_add_test(tc, test_json_encoder_matches_jansson);
    tcase_add_test(tc, test_queue_payload_rejects_garbage);
    tcase_add_test(tc, test_meta_on_the_queue);
    tcase_add_test(tc, test_error_json);
    tcase_add_test(tc, test_error_message_stays_utf8);
    tcase_add_test(tc, test_uuid_v7_sorted_and_versioned);
    tcase_add_test(tc, test_uuid_v5_known_value);
    tcase_add_test(tc, test_time_parse_forms);
    tcase_add_test(tc, test_config_env_and_flags);
    tcase_add_test(tc, test_edit_body);
    tcase_add_test(tc, test_batch_bodies);
    tcase_add_test(tc, test_ratelimit_overflow_is_sharded);
    tcase_add_test(tc, test_ratelimit_batch_costs_its_messages);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
