/*
 * Unit tests of sl_stream's parsers of what clients send (sl_stream.h): counts (history=, since=,
 * Last-Event-ID), the channels= list and WebSocket commands. No server: check_sse tests the
 * streams themselves; tests/fuzz has fuzz targets of the same functions.
 */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sl_stream.h"
#include "sl_testsuite.h"

static int count(const char *s, long long max, long long *out)
{
    return sl_stream_parse_count(s, strlen(s), max, out);
}

START_TEST(test_parse_count)
{
    long long v = -7;
    ck_assert_int_eq(count("0", 1000, &v), 0);
    ck_assert_int_eq(v, 0);
    ck_assert_int_eq(count("1000", 1000, &v), 0);
    ck_assert_int_eq(v, 1000);
    ck_assert_int_eq(count("0042", 1000, &v), 0);
    ck_assert_int_eq(v, 42);
    ck_assert_int_eq(count("9223372036854775807", INT64_MAX, &v), 0);
    ck_assert(v == INT64_MAX);
    v = -7;
    const char *bad[] = {"", "1001", "-1", "+1", " 1", "1 ", "1.0", "0x10", "9223372036854775808", "00000000000000000001"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(count(bad[i], i == 8 ? INT64_MAX : 1000, &v) == -1, "'%s' accepted", bad[i]);
        ck_assert_int_eq(v, -7); /* untouched */
    }
    /* a maximum below 9: a single digit over it is refused too */
    ck_assert_int_eq(count("0", 0, &v), 0);
    ck_assert_int_eq(count("5", 0, &v), -1);
    ck_assert_int_eq(count("5", 5, &v), 0);
    ck_assert_int_eq(count("6", 5, &v), -1);
    /* only len bytes are read */
    ck_assert_int_eq(sl_stream_parse_count("12x", 2, 100, &v), 0);
    ck_assert_int_eq(v, 12);
}
END_TEST

START_TEST(test_parse_channels)
{
    char(*ch)[SL_CHANNEL_MAX + 1] = NULL;
    sl_error_t err;
    const char *list = "general,news,general,a-b_9";
    ck_assert_int_eq(sl_stream_parse_channels(list, strlen(list), 3, &ch, &err), 3);
    ck_assert_str_eq(ch[0], "general");
    ck_assert_str_eq(ch[1], "news");
    ck_assert_str_eq(ch[2], "a-b_9");
    free(ch);
    /* "#news" is news (a query's %23news arrives decoded): one channel, named without '#' */
    list = "#general,news,general,#news";
    ck_assert_int_eq(sl_stream_parse_channels(list, strlen(list), 3, &ch, &err), 2);
    ck_assert_str_eq(ch[0], "general");
    ck_assert_str_eq(ch[1], "news");
    free(ch);

    const struct {
        const char *list;
        const char *code;
    } bad[] = {{"", "invalid_channel"},      {"a,", "invalid_channel"},    {",a", "invalid_channel"},
               {"a,,b", "invalid_channel"},  {"A", "invalid_channel"},     {"a b", "invalid_channel"},
               {"#", "invalid_channel"},     {"##a", "invalid_channel"},   {"a#", "invalid_channel"},
               {"a,b,c,d", "too_many_channels"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ch = NULL;
        ck_assert_msg(sl_stream_parse_channels(bad[i].list, strlen(bad[i].list), 3, &ch, &err) == -1, "'%s' accepted",
                      bad[i].list);
        ck_assert_ptr_null(ch);
        ck_assert_int_eq(err.status, 400);
        ck_assert_str_eq(err.code, bad[i].code);
        ck_assert_str_eq(err.field, "channels");
    }
    /* 65 bytes is one too many */
    char longest[66];
    memset(longest, 'x', 65);
    longest[65] = '\0';
    ck_assert_int_eq(sl_stream_parse_channels(longest, 64, 3, &ch, &err), 1);
    free(ch);
    ck_assert_int_eq(sl_stream_parse_channels(longest, 65, 3, &ch, &err), -1);
}
END_TEST

static int ws(const char *text, sl_ws_command_t *cmd, sl_error_t *err)
{
    return sl_stream_ws_parse(text, strlen(text), 20, 1000, cmd, err);
}

START_TEST(test_ws_parse)
{
    sl_ws_command_t c;
    sl_error_t err;
    ck_assert_int_eq(ws("{\"command\":\"ping\"}", &c, &err), 0);
    ck_assert_int_eq(c.verb, SL_WS_PING);
    ck_assert_int_eq(ws("{\"command\":\"subscribe\",\"channel\":\"general\"}", &c, &err), 0);
    ck_assert_int_eq(c.verb, SL_WS_SUBSCRIBE);
    ck_assert_str_eq(c.channel, "general");
    ck_assert_int_eq(c.history, 20);
    ck_assert_int_eq(c.since, -1);
    ck_assert_int_eq(ws("{\"command\":\"subscribe\",\"channel\":\"n\",\"history\":0,\"since\":951,\"x\":1}", &c, &err), 0);
    ck_assert_int_eq(c.history, 0);
    ck_assert_int_eq(c.since, 951);
    /* unsubscribe reads the channel only */
    ck_assert_int_eq(ws("{\"command\":\"unsubscribe\",\"channel\":\"n\",\"history\":-5}", &c, &err), 0);
    ck_assert_int_eq(c.verb, SL_WS_UNSUBSCRIBE);
    ck_assert_str_eq(c.channel, "n");
    ck_assert_int_eq(ws("{\"command\":\"subscribe\",\"channel\":\"#general\"}", &c, &err), 0);
    ck_assert_str_eq(c.channel, "general");
    ck_assert_int_eq(c.presence, 0);
    ck_assert_int_eq(ws("{\"command\":\"subscribe\",\"channel\":\"n\",\"presence\":true}", &c, &err), 0);
    ck_assert_int_eq(c.presence, 1);
    ck_assert_int_eq(ws("{\"command\":\"subscribe\",\"channel\":\"n\",\"presence\":false}", &c, &err), 0);
    ck_assert_int_eq(c.presence, 0);
    ck_assert_int_eq(ws("{\"command\":\"unsubscribe\",\"channel\":\"n\",\"presence\":1}", &c, &err), 0);
    ck_assert_ptr_null(c.token);
    /* tokens: auth's always, a subscribe's when given (null: none); the caller frees them */
    ck_assert_int_eq(ws("{\"command\":\"auth\",\"token\":\"a.b.c\"}", &c, &err), 0);
    ck_assert_int_eq(c.verb, SL_WS_AUTH);
    ck_assert_str_eq(c.token, "a.b.c");
    ck_assert_int_eq(c.token_len, 5);
    free(c.token);
    ck_assert_int_eq(ws("{\"command\":\"subscribe\",\"channel\":\"team-a\",\"token\":\"x.y.z\",\"since\":3}", &c, &err),
                     0);
    ck_assert_int_eq(c.verb, SL_WS_SUBSCRIBE);
    ck_assert_str_eq(c.token, "x.y.z");
    ck_assert_int_eq(c.since, 3);
    free(c.token);
    ck_assert_int_eq(ws("{\"command\":\"subscribe\",\"channel\":\"team-a\",\"token\":null}", &c, &err), 0);
    ck_assert_ptr_null(c.token);
    ck_assert_int_eq(ws("{\"command\":\"unsubscribe\",\"channel\":\"team-a\",\"token\":7}", &c, &err), 0);
    ck_assert_ptr_null(c.token);
    /* a token then a bad channel: refused, and nothing is left to free */
    ck_assert_int_eq(ws("{\"command\":\"subscribe\",\"channel\":\"No!\",\"token\":\"x.y.z\"}", &c, &err), -1);
    ck_assert_ptr_null(c.token);

    const struct {
        const char *text, *code;
    } bad[] = {
        {"", "invalid_json"},
        {"not json", "invalid_json"},
        {"[1]", "invalid_json"},
        {"{\"command\":\"ping\"} x", "invalid_json"},
        {"{}", "missing_command"},
        {"{\"command\":1}", "missing_command"},
        {"{\"command\":\"dance\"}", "unknown_command"},
        {"{\"command\":\"subscribe\"}", "invalid_channel"},
        {"{\"command\":\"subscribe\",\"channel\":\"No!\"}", "invalid_channel"},
        {"{\"command\":\"unsubscribe\",\"channel\":\"\"}", "invalid_channel"},
        {"{\"command\":\"subscribe\",\"channel\":\"#\"}", "invalid_channel"},
        {"{\"command\":\"subscribe\",\"channel\":\"a\\u0000b\"}", "invalid_json"}, /* jansson refuses NUL */
        {"{\"command\":\"subscribe\",\"channel\":\"x\",\"history\":1001}", "invalid_history"},
        {"{\"command\":\"subscribe\",\"channel\":\"x\",\"history\":-1}", "invalid_history"},
        {"{\"command\":\"subscribe\",\"channel\":\"x\",\"history\":1.5}", "invalid_history"},
        {"{\"command\":\"subscribe\",\"channel\":\"x\",\"since\":\"7\"}", "invalid_since"},
        {"{\"command\":\"subscribe\",\"channel\":\"x\",\"since\":-1}", "invalid_since"},
        {"{\"command\":\"subscribe\",\"channel\":\"x\",\"presence\":1}", "invalid_presence"},
        {"{\"command\":\"subscribe\",\"channel\":\"x\",\"presence\":\"true\"}", "invalid_presence"},
        {"{\"command\":\"subscribe\",\"channel\":\"x\",\"presence\":null}", "invalid_presence"},
        {"{\"command\":\"auth\"}", "invalid_token"},
        {"{\"command\":\"auth\",\"token\":null}", "invalid_token"},
        {"{\"command\":\"auth\",\"token\":\"\"}", "invalid_token"},
        {"{\"command\":\"subscribe\",\"channel\":\"x\",\"token\":42}", "invalid_token"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(ws(bad[i].text, &c, &err) == -1, "'%s' accepted", bad[i].text);
        ck_assert_msg(strcmp(err.code, bad[i].code) == 0, "'%s': %s, want %s", bad[i].text, err.code, bad[i].code);
        ck_assert_int_eq(err.status, 400);
        ck_assert_ptr_null(err.field);
        ck_assert(err.message[0] != '\0');
    }
}
END_TEST

START_TEST(test_parse_presence)
{
    const struct {
        const char *v;
        int want;
    } cases[] = {{"1", 1}, {"true", 1}, {"0", 0}, {"false", 0}, {"", -1},     {"yes", -1},
                 {"2", -1}, {"TRUE", -1}, {"10", -1}, {"true ", -1}, {"fals", -1}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        ck_assert_msg(sl_stream_parse_presence(cases[i].v, strlen(cases[i].v)) == cases[i].want, "'%s'", cases[i].v);
    ck_assert_int_eq(sl_stream_parse_presence("1x", 1), 1); /* reads len bytes only */
}
END_TEST

int main(void)
{
    Suite *s = suite_create("stream");
    TCase *tc = tcase_create("parsers");
    tcase_add_test(tc, test_parse_count);
    tcase_add_test(tc, test_parse_channels);
    tcase_add_test(tc, test_ws_parse);
    tcase_add_test(tc, test_parse_presence);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
