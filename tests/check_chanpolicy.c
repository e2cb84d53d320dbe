/*
 * Unit tests of sl_chanpolicy: channel sets (names and prefix* patterns, as SLUICE_PRIVATE_CHANNELS
 * and a token's channels claim give them), which channels are private, who may read them, and
 * the filter of a stream of every channel.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_chanpolicy.h"
#include "sl_testsuite.h"

static const char C64[] = "abcdefghijklmnopqrstuvwxyz0123456789_-abcdefghijklmnopqrstuvwxyz";  /* 64 */
static const char P63[] = "abcdefghijklmnopqrstuvwxyz0123456789_-abcdefghijklmnopqrstuvwxy*";  /* 63 + '*' */
static const char P64[] = "abcdefghijklmnopqrstuvwxyz0123456789_-abcdefghijklmnopqrstuvwxyz*"; /* 64 + '*' */
static const char C65[] = "abcdefghijklmnopqrstuvwxyz0123456789_-abcdefghijklmnopqrstuvwxyz0"; /* 65 */

START_TEST(test_patterns)
{
    static const struct {
        const char *pat;
        int ok;
    } rows[] = {
        {"general", 1}, {"team-*", 1}, {"*", 1},     {"a", 1},       {"a_b-c9", 1}, {C64, 1},   {P63, 1},
        {"", 0},        {"Bad", 0},    {"a*b", 0},   {"**", 0},      {"*a", 0},     {"a b", 0}, {"a,b", 0},
        {"é", 0},       {C65, 0},      {P64, 0},     {"team-**", 0}, {"-", 1},      {"a.b", 0}, {"a/b", 0},
        {"#general", 1}, {"#team-*", 1}, {"#*", 1},   {"#", 0},       {"##a", 0},    {"a#", 0},
    };
    ck_assert_int_eq(strlen(C64), 64);
    ck_assert_int_eq(strlen(C65), 65);
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        sl_chanset_t s = SL_CHANSET_INIT;
        errno = 0;
        int r = sl_chanset_add(&s, rows[i].pat, strlen(rows[i].pat));
        ck_assert_msg((r == 0) == rows[i].ok, "'%s': %d", rows[i].pat, r);
        if (!rows[i].ok)
            ck_assert_int_eq(errno, EINVAL);
        ck_assert_uint_eq(s.n, rows[i].ok ? 1 : 0);
        sl_chanset_free(&s);
    }
}
END_TEST

START_TEST(test_covers)
{
    sl_chanset_t s = SL_CHANSET_INIT;
    char err[256];
    ck_assert_int_eq(sl_chanset_parse(&s, " general , team-*,#news,team-*,#general", err, sizeof(err)), 0);
    ck_assert_uint_eq(s.n, 3); /* team-* once, #general is general */
    static const struct {
        const char *channel;
        int covered;
    } rows[] = {
        {"general", 1}, {"news", 1},     {"team-", 1},    {"team-red", 1}, {"team-red-2", 1}, {"generals", 0},
        {"genera", 0},  {"team", 0},     {"teams", 0},    {"random", 0},   {"new", 0},        {"news-x", 0},
        {"", 0},        {"xteam-a", 0},  {"general2", 0},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        ck_assert_msg(sl_chanset_covers(&s, rows[i].channel, strlen(rows[i].channel)) == rows[i].covered, "%s",
                      rows[i].channel);
    /* the length counts, not a NUL: "general" as the first 7 bytes of "generalx" */
    ck_assert(sl_chanset_covers(&s, "generalx", 7));
    ck_assert(!sl_chanset_covers(&s, "generalx", 8));
    sl_chanset_free(&s);
    ck_assert_ptr_null(s.pats);
    ck_assert(!sl_chanset_covers(&s, "general", 7));
    ck_assert(!sl_chanset_covers(NULL, "general", 7));

    ck_assert_int_eq(sl_chanset_parse(&s, "*", err, sizeof(err)), 0);
    ck_assert(sl_chanset_covers(&s, "anything", 8));
    ck_assert(sl_chanset_covers(&s, C64, 64));
    sl_chanset_free(&s);
}
END_TEST

START_TEST(test_parse_errors)
{
    static const struct {
        const char *list;
        const char *why; /* NULL: accepted */
        size_t n;
    } rows[] = {
        {NULL, NULL, 0},       {"", NULL, 0},           {"a", NULL, 1},           {"a,b", NULL, 2},
        {" a , b ", NULL, 2},  {"a,a,a", NULL, 1},      {"a,,b", "''", 0},        {"a,", "''", 0},
        {",a", "''", 0},       {"a,B", "'B'", 0},       {"a, ,b", "''", 0},       {"a,b c", "'b c'", 0},
        {"team*,x*y", "'x*y'", 0},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        sl_chanset_t s = SL_CHANSET_INIT;
        char err[256] = "";
        int r = sl_chanset_parse(&s, rows[i].list, err, sizeof(err));
        if (rows[i].why == NULL) {
            ck_assert_msg(r == 0, "'%s': %s", rows[i].list, err);
            ck_assert_uint_eq(s.n, rows[i].n);
        } else {
            ck_assert_msg(r == -1, "'%s' accepted", rows[i].list);
            ck_assert_msg(strstr(err, rows[i].why) != NULL, "'%s': '%s' lacks %s", rows[i].list, err, rows[i].why);
        }
        sl_chanset_free(&s);
    }
    /* at most SL_CHANSET_MAX patterns */
    char *big = malloc(SL_CHANSET_MAX * 8 + 16), *p = big;
    for (int i = 0; i <= SL_CHANSET_MAX; i++)
        p += sprintf(p, "%sc%d", i ? "," : "", i);
    sl_chanset_t s = SL_CHANSET_INIT;
    char err[256];
    ck_assert_int_eq(sl_chanset_parse(&s, big, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "more than"));
    ck_assert_uint_eq(s.n, SL_CHANSET_MAX);
    sl_chanset_free(&s);
    free(big);
}
END_TEST

START_TEST(test_policy)
{
    char err[256];
    sl_chanset_t none = SL_CHANSET_INIT, red = SL_CHANSET_INIT, teams = SL_CHANSET_INIT, all = SL_CHANSET_INIT;
    ck_assert_int_eq(sl_chanset_parse(&red, "team-red,staff", err, sizeof(err)), 0);
    ck_assert_int_eq(sl_chanset_parse(&teams, "team-*", err, sizeof(err)), 0);
    ck_assert_int_eq(sl_chanset_parse(&all, "*", err, sizeof(err)), 0);
    sl_chanpolicy_t *p = sl_chanpolicy_create("staff, team-*", err, sizeof(err));
    ck_assert_ptr_nonnull(p);
    ck_assert(sl_chanpolicy_any_private(p));
    static const struct {
        const char *channel;
        int granted; /* 0: no token, 1: a token without channels, 2: team-red+staff, 3: team-*, 4: * */
        sl_chan_read_t want;
    } rows[] = {
        {"general", 0, SL_CHAN_READ_OK},          {"general", 1, SL_CHAN_READ_OK},
        {"general", 2, SL_CHAN_READ_OK},          {"staff", 0, SL_CHAN_READ_NEED_TOKEN},
        {"staff", 1, SL_CHAN_READ_FORBIDDEN},     {"staff", 2, SL_CHAN_READ_OK},
        {"staff", 3, SL_CHAN_READ_FORBIDDEN},     {"staff", 4, SL_CHAN_READ_OK},
        {"team-red", 0, SL_CHAN_READ_NEED_TOKEN}, {"team-red", 2, SL_CHAN_READ_OK},
        {"team-blue", 2, SL_CHAN_READ_FORBIDDEN}, {"team-blue", 3, SL_CHAN_READ_OK},
        {"team-", 3, SL_CHAN_READ_OK},            {"teams", 0, SL_CHAN_READ_OK},
        {"staffing", 0, SL_CHAN_READ_OK},         {"team-blue", 4, SL_CHAN_READ_OK},
    };
    const sl_chanset_t *g[] = {NULL, &none, &red, &teams, &all};
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        const char *ch = rows[i].channel;
        sl_chan_read_t r = sl_chanpolicy_read(p, g[rows[i].granted], ch, strlen(ch));
        ck_assert_msg(r == rows[i].want, "%s with %d: %d, want %d", ch, rows[i].granted, r, rows[i].want);
        ck_assert_int_eq(sl_chanpolicy_may_read(p, g[rows[i].granted], ch, strlen(ch)), r == SL_CHAN_READ_OK);
        ck_assert_int_eq(sl_chanpolicy_is_private(p, ch, strlen(ch)), strcmp(ch, "staff") == 0 || strncmp(ch, "team-", 5) == 0);
    }
    /* the private set, pattern by pattern (what an SQL filter is built from) */
    const sl_chanset_t *priv = sl_chanpolicy_private(p);
    ck_assert_uint_eq(priv->n, 2);
    const char *name;
    int prefix;
    ck_assert_uint_eq(sl_chanset_pattern(priv, 0, &name, &prefix), 5);
    ck_assert_str_eq(name, "staff");
    ck_assert_int_eq(prefix, 0);
    ck_assert_uint_eq(sl_chanset_pattern(priv, 1, &name, &prefix), 5);
    ck_assert_str_eq(name, "team-");
    ck_assert_int_eq(prefix, 1);
    ck_assert_uint_eq(sl_chanpolicy_private(NULL)->n, 0);
    /* no policy, or an empty one: every channel public, whoever asks */
    sl_chanpolicy_t *open = sl_chanpolicy_create("", err, sizeof(err));
    ck_assert_ptr_nonnull(open);
    ck_assert(!sl_chanpolicy_any_private(open) && !sl_chanpolicy_any_private(NULL));
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        const char *ch = rows[i].channel;
        ck_assert_int_eq(sl_chanpolicy_read(open, NULL, ch, strlen(ch)), SL_CHAN_READ_OK);
        ck_assert_int_eq(sl_chanpolicy_read(NULL, NULL, ch, strlen(ch)), SL_CHAN_READ_OK);
    }
    /* every channel private */
    sl_chanpolicy_t *closed = sl_chanpolicy_create("*", err, sizeof(err));
    ck_assert_int_eq(sl_chanpolicy_read(closed, NULL, "general", 7), SL_CHAN_READ_NEED_TOKEN);
    ck_assert_int_eq(sl_chanpolicy_read(closed, &red, "general", 7), SL_CHAN_READ_FORBIDDEN);
    ck_assert_int_eq(sl_chanpolicy_read(closed, &all, "general", 7), SL_CHAN_READ_OK);

    /* a stream of every channel: the events it carries */
    const char *events[] = {"general", "staff", "team-red", "team-blue", "random", "staff", "team-red"};
    const char *want[5] = {"general,random", "general,random", "general,staff,team-red,random,staff,team-red",
                           "general,team-red,team-blue,random,team-red",
                           "general,staff,team-red,team-blue,random,staff,team-red"};
    for (int k = 0; k < 5; k++) {
        char got[256] = "";
        for (size_t e = 0; e < sizeof(events) / sizeof(events[0]); e++) {
            if (sl_chanpolicy_may_read(p, g[k], events[e], strlen(events[e])))
                snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%s", got[0] ? "," : "", events[e]);
        }
        ck_assert_msg(strcmp(got, want[k]) == 0, "granted %d: %s, want %s", k, got, want[k]);
    }

    ck_assert_ptr_null(sl_chanpolicy_create("staff,Team", err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "SLUICE_PRIVATE_CHANNELS"));
    ck_assert_ptr_nonnull(strstr(err, "'Team'"));

    ck_assert_str_eq(sl_chan_read_code(SL_CHAN_READ_NEED_TOKEN), "token_required");
    ck_assert_str_eq(sl_chan_read_code(SL_CHAN_READ_FORBIDDEN), "channel_forbidden");
    ck_assert_ptr_null(sl_chan_read_code(SL_CHAN_READ_OK));
    ck_assert_int_eq(sl_chan_read_status(SL_CHAN_READ_NEED_TOKEN), 401);
    ck_assert_int_eq(sl_chan_read_status(SL_CHAN_READ_FORBIDDEN), 403);
    ck_assert_ptr_nonnull(sl_chan_read_message(SL_CHAN_READ_FORBIDDEN));

    sl_chanpolicy_destroy(p);
    sl_chanpolicy_destroy(open);
    sl_chanpolicy_destroy(closed);
    sl_chanpolicy_destroy(NULL);
    sl_chanset_free(&red);
    sl_chanset_free(&teams);
    sl_chanset_free(&all);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chanpolicy");
    TCase *tc = tcase_create("unit");
    tcase_add_test(tc, test_patterns);
    tcase_add_test(tc, test_covers);
    tcase_add_test(tc, test_parse_errors);
    tcase_add_test(tc, test_policy);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
