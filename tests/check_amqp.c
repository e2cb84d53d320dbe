/*
 * Unit tests of sl_amqp's URL lists and of sl_amqploop's connecting, without a broker: dead ports
 * (connection refused) and a "black hole" (a listener that never accepts: the kernel completes
 * the TCP handshake, nobody answers AMQP, as with a SIGSTOPped node).
 */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sl_amqp.h"
#include "sl_amqploop.h"
#include "sl_testnet.h"
#include "sl_testsuite.h"
#include "sl_time.h"

START_TEST(test_parse_list)
{
    sl_amqp_urls_t u;
    char err[512];
    ck_assert_int_eq(sl_amqp_urls_parse(&u, "amqp://guest:guest@127.0.0.1:5672/", err, sizeof(err)), 0);
    ck_assert_uint_eq(u.n, 1);
    ck_assert_str_eq(u.url[0], "amqp://guest:guest@127.0.0.1:5672/");
    ck_assert_str_eq(u.shown[0], "amqp://guest@127.0.0.1:5672/");
    sl_amqp_urls_free(&u);

    ck_assert_int_eq(sl_amqp_urls_parse(&u, " amqp://a:b@h1:1/ ,\tamqp://h2:2/v ,amqp://c:d@h3 ", err, sizeof(err)), 0);
    ck_assert_uint_eq(u.n, 3);
    ck_assert_str_eq(u.url[0], "amqp://a:b@h1:1/");
    ck_assert_str_eq(u.url[1], "amqp://h2:2/v");
    ck_assert_str_eq(u.url[2], "amqp://c:d@h3");
    ck_assert_str_eq(u.shown[0], "amqp://a@h1:1/");
    ck_assert_str_eq(u.shown[1], "amqp://h2:2/v");
    ck_assert_str_eq(u.shown[2], "amqp://c@h3");
    sl_amqp_urls_free(&u);

    char list[2048] = "";
    for (int i = 0; i < SL_AMQP_MAX_URLS; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%samqp://h%d:%d/", i ? "," : "", i, 5000 + i);
    ck_assert_int_eq(sl_amqp_urls_parse(&u, list, err, sizeof(err)), 0);
    ck_assert_uint_eq(u.n, SL_AMQP_MAX_URLS);
    ck_assert_str_eq(u.url[SL_AMQP_MAX_URLS - 1], "amqp://h15:5015/");
    sl_amqp_urls_free(&u);
    strcat(list, ",amqp://one-too-many/");
    ck_assert_int_eq(sl_amqp_urls_parse(&u, list, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "at most 16") != NULL, "%s", err);
    ck_assert_uint_eq(u.n, 0);
}
END_TEST

START_TEST(test_parse_refuses_empty_and_bad_entries_without_passwords)
{
    static const struct {
        const char *list, *want;
    } bad[] = {
        {"", "no AMQP URL given"},
        {"   ", "no AMQP URL given"},
        {"amqp://u:secret@h1/,,amqp://u:secret@h2/", "entry 2 of 3 in the URL list is empty"},
        {"amqp://u:secret@h1/,", "entry 2 of 2 in the URL list is empty"},
        {" , amqp://u:secret@h1/", "entry 1 of 2 in the URL list is empty"},
        {"amqp://u:secret@h1/,http://u:secret@h2/", "entry 2 of 2 (http://u@h2/): bad AMQP URL"},
        {"amqp://u:secret@h1:notaport/", "entry 1 of 1 (amqp://u@h1:notaport/): bad AMQP URL"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        sl_amqp_urls_t u;
        char err[512];
        ck_assert_int_eq(sl_amqp_urls_parse(&u, bad[i].list, err, sizeof(err)), -1);
        ck_assert_msg(strstr(err, bad[i].want) != NULL, "'%s': error '%s' lacks '%s'", bad[i].list, err, bad[i].want);
        ck_assert_msg(strstr(err, "secret") == NULL, "'%s': error '%s' shows the password", bad[i].list, err);
        ck_assert_uint_eq(u.n, 0);
        ck_assert_int_eq(sl_amqp_urls_check(bad[i].list, err, sizeof(err)), -1);
    }
}
END_TEST

START_TEST(test_redact)
{
    char b[256];
    ck_assert_str_eq(sl_amqp_url_redact("amqp://guest:guest@127.0.0.1:5672/", b, sizeof(b)), "amqp://guest@127.0.0.1:5672/");
    ck_assert_str_eq(sl_amqp_url_redact("amqp://user@host/vh", b, sizeof(b)), "amqp://user@host/vh");
    ck_assert_str_eq(sl_amqp_url_redact("amqp://host:1/", b, sizeof(b)), "amqp://host:1/");
    ck_assert_str_eq(sl_amqp_url_redact("amqp://u:p@ss@host/", b, sizeof(b)), "amqp://u@host/");
    ck_assert_str_eq(sl_amqp_url_redact("amqp://u:p@[::1]:5672/", b, sizeof(b)), "amqp://u@[::1]:5672/");
    ck_assert_str_eq(sl_amqp_url_redact("amqp://[::1]:5672/x@y", b, sizeof(b)), "amqp://[::1]:5672/x@y");
    ck_assert_str_eq(sl_amqp_url_redact("u:secret@host", b, sizeof(b)), "u@host");
}
END_TEST

/* A port nobody listens on (bound, then closed). */
static int dead_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* A listener that never accepts: connects complete (backlog), AMQP is never answered. */
static int black_hole(int *port)
{
    int fd = tu_net_listen(64, port);
    ck_assert_int_ge(fd, 0);
    return fd;
}

START_TEST(test_open_next_walks_the_list)
{
    char list[256], err[1024];
    size_t cursor = 0;
    int p1 = dead_port(), p2 = dead_port();
    snprintf(list, sizeof(list), "amqp://u:secret@127.0.0.1:%d/,amqp://u:secret@127.0.0.1:%d/", p1, p2);
    ck_assert_ptr_null(sl_amqp_open_next(list, &cursor, "test", 0, 500, err, sizeof(err)));
    ck_assert_uint_eq(cursor, 1);
    ck_assert_msg(strstr(err, "amqp://u@127.0.0.1:") != NULL && strchr(err, ';') != NULL, "%s", err);
    ck_assert_msg(strstr(err, "secret") == NULL, "%s", err);
    ck_assert_ptr_null(sl_amqp_open_next(list, &cursor, "test", 0, 500, err, sizeof(err)));
    ck_assert_uint_eq(cursor, 0);
    ck_assert_ptr_null(sl_amqp_open(list, "test", 0, 500, err, sizeof(err))); /* a list works here too */
    ck_assert_ptr_null(sl_amqp_open_next("amqp://a/,,", &cursor, "test", 0, 500, err, sizeof(err)));
    ck_assert_msg(strstr(err, "empty") != NULL, "%s", err);
}
END_TEST

/* ---- sl_amqploop without a broker: the loop keeps turning, attempts move along the list ---- */

struct probe {
    h2o_loop_t *loop;
    h2o_timeout_t every_5ms;
    h2o_timeout_entry_t tick;
    int64_t last_us, max_gap_us;
    int ticks, setups, ups;
};

static void on_probe(h2o_timeout_entry_t *e)
{
    struct probe *p = H2O_STRUCT_FROM_MEMBER(struct probe, tick, e);
    int64_t now = sl_time_mono_us();
    if (p->last_us != 0 && now - p->last_us > p->max_gap_us)
        p->max_gap_us = now - p->last_us;
    p->last_us = now;
    p->ticks++;
    h2o_timeout_link(p->loop, &p->every_5ms, &p->tick);
}

static int t_setup(void *data, amqp_connection_state_t conn, char *err, size_t errlen)
{
    (void)data, (void)conn, (void)err, (void)errlen;
    return 0;
}
static void t_up(void *data)
{
    ((struct probe *)data)->ups++;
}
static void t_frame(void *data, const amqp_frame_t *f)
{
    (void)data, (void)f;
}
static const sl_amqploop_handlers_t t_handlers = {t_setup, t_up, t_frame, NULL, NULL};

static void run_for(struct probe *p, int ms)
{
    int64_t end = sl_time_mono_us() + (int64_t)ms * 1000;
    while (sl_time_mono_us() < end)
        h2o_evloop_run(p->loop, 10);
}

static void probe_init(struct probe *p)
{
    memset(p, 0, sizeof(*p));
    p->loop = h2o_evloop_create();
    h2o_timeout_init(p->loop, &p->every_5ms, 5);
    p->tick.cb = on_probe;
    h2o_timeout_link(p->loop, &p->every_5ms, &p->tick);
}

static void probe_dispose(struct probe *p)
{
    h2o_timeout_unlink(&p->tick);
    h2o_timeout_dispose(p->loop, &p->every_5ms);
    h2o_evloop_run(p->loop, 0); /* lets h2o free closed sockets */
    h2o_evloop_destroy(p->loop);
}

START_TEST(test_black_hole_does_not_stall_the_loop)
{
    struct probe p;
    sl_amqploop_t l;
    char list[256], err[256];
    int bh_port, bh = black_hole(&bh_port), dead = dead_port();
    snprintf(list, sizeof(list), "amqp://u:secret@127.0.0.1:%d/,amqp://u:secret@127.0.0.1:%d/", bh_port, dead);
    probe_init(&p);
    ck_assert_int_eq(sl_amqploop_init(&l, p.loop, list, "test", 0, 300, 400, &t_handlers, &p, err, sizeof(err)), 0);
    ck_assert_ptr_null(l.conn); /* nothing blocks in init */
    run_for(&p, 200);
    ck_assert_uint_eq(l._failures, 0); /* the black hole holds the first attempt until its deadline */
    run_for(&p, 1300);
    /* black hole (300 ms), dead (at once), backoff 50-100 ms, black hole, dead, backoff 100-200 ms… */
    ck_assert_msg(l._failures >= 4 && l._failures <= 8, "failures %u", l._failures);
    ck_assert_msg(p.max_gap_us < 50000, "the loop stalled for %lld us", (long long)p.max_gap_us);
    ck_assert_int_eq(p.ups, 0);
    ck_assert_ptr_null(l.conn);
    close(bh);
    sl_amqploop_dispose(&l);
    probe_dispose(&p);
}
END_TEST

START_TEST(test_dispose_cuts_a_stalled_attempt_short)
{
    struct probe p;
    sl_amqploop_t l;
    char list[128], err[256];
    int bh_port, bh = black_hole(&bh_port);
    snprintf(list, sizeof(list), "amqp://127.0.0.1:%d/", bh_port);
    probe_init(&p);
    ck_assert_int_eq(sl_amqploop_init(&l, p.loop, list, "test", 0, 10000, 0, &t_handlers, &p, err, sizeof(err)), 0);
    run_for(&p, 200);
    ck_assert_ptr_nonnull(l._attempt); /* stuck in login */
    int64_t t0 = sl_time_mono_us();
    sl_amqploop_dispose(&l);
    int64_t took = sl_time_mono_us() - t0;
    ck_assert_msg(took < 200000, "dispose took %lld us", (long long)took);
    close(bh);
    probe_dispose(&p);
}
END_TEST

START_TEST(test_backoff_once_the_list_failed)
{
    struct probe p;
    sl_amqploop_t l;
    char list[128], err[256];
    snprintf(list, sizeof(list), "amqp://127.0.0.1:%d/", dead_port());
    probe_init(&p);
    ck_assert_int_eq(sl_amqploop_init(&l, p.loop, list, "test", 0, 500, 400, &t_handlers, &p, err, sizeof(err)), 0);
    run_for(&p, 1500);
    /* waits of 50-100, 100-200, 200-400, then 200-400 ms: 5 to 9 attempts in 1.5 s, not hundreds */
    ck_assert_msg(l._failures >= 5 && l._failures <= 10, "failures %u", l._failures);
    sl_amqploop_dispose(&l);
    ck_assert_int_eq(sl_amqploop_init(&l, p.loop, "amqp://a/,", "test", 0, 500, 400, &t_handlers, &p, err, sizeof(err)),
                     -1);
    probe_dispose(&p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("amqp");
    TCase *tc = tcase_create("unit");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_parse_list);
    tcase_add_test(tc, test_parse_refuses_empty_and_bad_entries_without_passwords);
    tcase_add_test(tc, test_redact);
    tcase_add_test(tc, test_open_next_walks_the_list);
    tcase_add_test(tc, test_black_hole_does_not_stall_the_loop);
    tcase_add_test(tc, test_dispose_cuts_a_stalled_attempt_short);
    tcase_add_test(tc, test_backoff_once_the_list_failed);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
