/*
 * sl_pgpool on a real event loop against the test PostgreSQL, a "black hole" (a listener that
 * completes TCP handshakes and never says a word: nobody accept()s) and a listener that never
 * completes one (its backlog is full). Every test runs a 10 ms timer on the same loop and asserts
 * that it kept firing: nothing the pool does may stall the loop.
 */
#include <check.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sl_pgpool.h"
#include "sl_testnet.h"
#include "sl_testsuite.h"
#include "sl_time.h"

/* ---- the loop and its heartbeat ------------------------------------------------------------- */

static h2o_loop_t *loop;
static h2o_timeout_t beat_to;
static h2o_timeout_entry_t beat;
static int64_t last_beat_us, max_gap_us;
static int beats;

static void on_beat(h2o_timeout_entry_t *e)
{
    int64_t now = sl_time_mono_us();
    if (last_beat_us != 0 && now - last_beat_us > max_gap_us)
        max_gap_us = now - last_beat_us;
    last_beat_us = now;
    beats++;
    h2o_timeout_link(loop, &beat_to, e);
}

static void setup(void)
{
    loop = h2o_evloop_create();
    h2o_timeout_init(loop, &beat_to, 10);
    beat.cb = on_beat;
    beats = 0;
    max_gap_us = 0;
    last_beat_us = 0;
    h2o_timeout_link(loop, &beat_to, &beat);
}

static void teardown(void)
{
    if (h2o_timeout_is_linked(&beat))
        h2o_timeout_unlink(&beat);
    for (int i = 0; i < 10; i++) /* let closed sockets be freed */
        h2o_evloop_run(loop, 1);
    h2o_timeout_dispose(loop, &beat_to);
    h2o_evloop_destroy(loop);
}

/* Runs the loop until *flag or timeout_ms; returns the ms waited. */
static int64_t run_until(const int *flag, int timeout_ms)
{
    int64_t start = sl_time_mono_us();
    while ((flag == NULL || !*flag) && sl_time_mono_us() - start < (int64_t)timeout_ms * 1000)
        h2o_evloop_run(loop, 10);
    return (sl_time_mono_us() - start) / 1000;
}

static int pool_ready_flag(sl_pgpool_t *p, int timeout_ms, int64_t *ms)
{
    int64_t start = sl_time_mono_us();
    while (!sl_pgpool_ready(p) && sl_time_mono_us() - start < (int64_t)timeout_ms * 1000)
        h2o_evloop_run(loop, 10);
    *ms = (sl_time_mono_us() - start) / 1000;
    return sl_pgpool_ready(p);
}

/* ---- queries -------------------------------------------------------------------------------- */

struct answer {
    int done, calls;
    int64_t started_us, ms;
    char err[256];
    char value[64];
};

static void on_answer(void *data, const PGresult *res, const char *err)
{
    struct answer *a = data;
    a->calls++;
    a->done = 1;
    a->ms = (sl_time_mono_us() - a->started_us) / 1000;
    snprintf(a->err, sizeof(a->err), "%s", err != NULL ? err : "");
    a->value[0] = '\0';
    if (res != NULL && PQntuples(res) > 0)
        snprintf(a->value, sizeof(a->value), "%s", PQgetvalue(res, 0, 0));
}

static sl_pgquery_t *ask(sl_pgpool_t *p, const char *sql, struct answer *a)
{
    memset(a, 0, sizeof(*a));
    a->started_us = sl_time_mono_us();
    return sl_pgpool_query(p, sql, 0, NULL, on_answer, a);
}

/* ---- servers -------------------------------------------------------------------------------- */

static int listener(int backlog, int *port)
{
    int fd = tu_net_listen(backlog, port);
    ck_assert_int_ge(fd, 0);
    return fd;
}

/* Completes handshakes (the kernel does) and never answers: nobody accept()s. */
static int black_hole(int *port)
{
    return listener(64, port);
}

/* Never completes a handshake: a backlog of 0 holds one connection, which we make ourselves;
 * further SYNs are dropped. *filler is that connection. */
static int never_accepting(int *port, int *filler)
{
    int fd = listener(0, port);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(0x7f000001);
    a.sin_port = htons((uint16_t)*port);
    *filler = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_eq(connect(*filler, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

/* The test server's host, port, user and database, from SLUICE_DB_URL. */
static char pg_host[128], pg_port[16], pg_user[64], pg_db[64];

static void read_pg_url(void)
{
    const char *url = getenv("SLUICE_DB_URL");
    ck_assert_msg(url != NULL, "SLUICE_DB_URL is not set: run the tests through ./test.sh");
    PQconninfoOption *o = PQconninfoParse(url, NULL);
    ck_assert_ptr_nonnull(o);
    snprintf(pg_host, sizeof(pg_host), "127.0.0.1");
    snprintf(pg_port, sizeof(pg_port), "5432");
    snprintf(pg_user, sizeof(pg_user), "postgres");
    snprintf(pg_db, sizeof(pg_db), "postgres");
    for (PQconninfoOption *i = o; i->keyword != NULL; i++) {
        if (i->val == NULL)
            continue;
        if (strcmp(i->keyword, "host") == 0)
            snprintf(pg_host, sizeof(pg_host), "%s", i->val);
        else if (strcmp(i->keyword, "port") == 0)
            snprintf(pg_port, sizeof(pg_port), "%s", i->val);
        else if (strcmp(i->keyword, "user") == 0)
            snprintf(pg_user, sizeof(pg_user), "%s", i->val);
        else if (strcmp(i->keyword, "dbname") == 0)
            snprintf(pg_db, sizeof(pg_db), "%s", i->val);
    }
    PQconninfoFree(o);
}

static sl_pgpool_t *pool(const char *url, size_t nconns, int connect_ms, int query_ms)
{
    sl_pgpool_conf_t c = {.url = url,
                          .nconns = nconns,
                          .max_queue = 100,
                          .reconnect_ms = 200,
                          .connect_timeout_ms = connect_ms,
                          .query_timeout_ms = query_ms};
    int64_t t0 = sl_time_mono_us();
    sl_pgpool_t *p = sl_pgpool_create(loop, &c);
    ck_assert_ptr_nonnull(p);
    ck_assert_msg(sl_time_mono_us() - t0 < 50000, "sl_pgpool_create took %lld us",
                  (long long)(sl_time_mono_us() - t0));
    return p;
}

static void assert_loop_kept_beating(void)
{
    ck_assert_msg(max_gap_us < 100000, "the loop stalled for %lld ms", (long long)max_gap_us / 1000);
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void on_hole(int hole, int port)
{
    char url[256];
    struct answer early, late;
    snprintf(url, sizeof(url), "host=127.0.0.1 port=%d user=postgres dbname=x", port);
    sl_pgpool_t *p = pool(url, 2, 300, 500);
    /* made while the first attempt runs: waits for it, then fails when it does */
    ck_assert_ptr_nonnull(ask(p, "SELECT 1", &early));
    run_until(&early.done, 2000);
    ck_assert_int_eq(early.calls, 1);
    ck_assert_str_eq(early.err, "database unavailable");
    ck_assert_msg(early.ms >= 250 && early.ms < 500, "failed after %lld ms", (long long)early.ms);
    /* the database is known to be away: refused at once, and not ready, while it stays away */
    ck_assert_ptr_null(ask(p, "SELECT 1", &late));
    run_until(NULL, 1500); /* several reconnect rounds */
    ck_assert_int_eq(sl_pgpool_ready(p), 0);
    ck_assert_ptr_null(ask(p, "SELECT 1", &late));
    ck_assert_int_ge(beats, 150);
    assert_loop_kept_beating();
    sl_pgpool_destroy(p);
    close(hole);
}

START_TEST(test_black_hole)
{
    int port, hole = black_hole(&port);
    on_hole(hole, port);
}
END_TEST

START_TEST(test_never_accepting)
{
    int port, filler, hole = never_accepting(&port, &filler);
    on_hole(hole, port);
    close(filler);
}
END_TEST

/* A query made before the first connection is up waits for it. */
START_TEST(test_query_while_connecting)
{
    struct answer a;
    sl_pgpool_t *p = pool(getenv("SLUICE_DB_URL"), 2, 2000, 2000);
    ck_assert_int_eq(sl_pgpool_ready(p), 0);
    ck_assert_ptr_nonnull(ask(p, "SELECT current_setting('TimeZone')", &a));
    run_until(&a.done, 3000);
    ck_assert_str_eq(a.err, "");
    ck_assert_str_eq(a.value, "UTC");
    ck_assert_ptr_nonnull(ask(p, "SELECT current_setting('statement_timeout')", &a));
    run_until(&a.done, 3000);
    ck_assert_str_eq(a.value, "1800ms");
    assert_loop_kept_beating();
    sl_pgpool_destroy(p);
}
END_TEST

/* A slow statement is ended by the server (statement_timeout, 90% of the deadline); the
 * connection stays. */
START_TEST(test_statement_timeout)
{
    struct answer a, pid1, pid2;
    int64_t ms;
    sl_pgpool_t *p = pool(getenv("SLUICE_DB_URL"), 1, 2000, 2000);
    ck_assert(pool_ready_flag(p, 3000, &ms));
    ask(p, "SELECT pg_backend_pid()", &pid1);
    run_until(&pid1.done, 2000);
    ck_assert_ptr_nonnull(ask(p, "SELECT pg_sleep(5)", &a));
    run_until(&a.done, 4000);
    ck_assert_msg(strstr(a.err, "statement timeout") != NULL, "err: %s", a.err);
    ck_assert_msg(a.ms >= 1750 && a.ms < 2000, "ended after %lld ms", (long long)a.ms);
    ask(p, "SELECT pg_backend_pid()", &pid2);
    run_until(&pid2.done, 2000);
    ck_assert_str_eq(pid1.value, pid2.value);
    assert_loop_kept_beating();
    sl_pgpool_destroy(p);
}
END_TEST

static pid_t stopped_backend;

static void cont_backend(void)
{
    if (stopped_backend > 0)
        kill(stopped_backend, SIGCONT);
    stopped_backend = 0;
}

/* The server stops answering (its backend is SIGSTOPped): the query fails at its deadline, the
 * loop never notices, the connection is replaced. */
START_TEST(test_hung_backend)
{
    struct answer a, pid1, pid2;
    int64_t ms;
    sl_pgpool_t *p = pool(getenv("SLUICE_DB_URL"), 1, 2000, 1000);
    ck_assert(pool_ready_flag(p, 3000, &ms));
    ask(p, "SELECT pg_backend_pid()", &pid1);
    run_until(&pid1.done, 2000);
    stopped_backend = (pid_t)atoi(pid1.value);
    ck_assert_int_gt(stopped_backend, 0);
    /* a failed assertion ends this test process: a watchdog wakes the backend up in any case */
    pid_t watchdog = fork();
    ck_assert_int_ge(watchdog, 0);
    if (watchdog == 0) {
        sleep(5);
        kill(stopped_backend, SIGCONT);
        _exit(0);
    }
    ck_assert_int_eq(kill(stopped_backend, SIGSTOP), 0);
    max_gap_us = 0;
    ck_assert_ptr_nonnull(ask(p, "SELECT 1", &a));
    run_until(&a.done, 3000);
    ck_assert_str_eq(a.err, "database query timed out");
    ck_assert_msg(a.ms >= 950 && a.ms < 1500, "timed out after %lld ms", (long long)a.ms);
    ck_assert_int_eq(a.calls, 1);
    /* dropped and opened again (the postmaster is fine) */
    ck_assert(pool_ready_flag(p, 3000, &ms));
    ask(p, "SELECT pg_backend_pid()", &pid2);
    run_until(&pid2.done, 2000);
    ck_assert_str_eq(pid2.err, "");
    ck_assert_str_ne(pid1.value, pid2.value);
    assert_loop_kept_beating();
    cont_backend();
    run_until(NULL, 100);
    ck_assert_int_eq(a.calls, 1);
    sl_pgpool_destroy(p);
    kill(watchdog, SIGKILL);
    waitpid(watchdog, NULL, 0);
}
END_TEST

/* A cancelled query's callback never runs, even when it times out. */
START_TEST(test_cancel)
{
    struct answer a, b;
    int64_t ms;
    sl_pgpool_t *p = pool(getenv("SLUICE_DB_URL"), 1, 2000, 500);
    ck_assert(pool_ready_flag(p, 3000, &ms));
    sl_pgquery_t *running = ask(p, "SELECT pg_sleep(0.3)", &a);
    sl_pgquery_t *queued = ask(p, "SELECT 2", &b);
    ck_assert_uint_eq(sl_pgpool_pending(p), 2);
    sl_pgpool_cancel(queued);
    ck_assert_uint_eq(sl_pgpool_pending(p), 1);
    sl_pgpool_cancel(running);
    run_until(NULL, 800);
    ck_assert_int_eq(a.calls, 0);
    ck_assert_int_eq(b.calls, 0);
    ck_assert_uint_eq(sl_pgpool_pending(p), 0);
    ck_assert(sl_pgpool_ready(p));
    sl_pgpool_destroy(p);
}
END_TEST

/* host=hole,postgres: the hole costs one connect deadline, then the pool starts with the host
 * that answered. */
START_TEST(test_multi_host)
{
    char url[512];
    int port, hole = black_hole(&port);
    int64_t ms;
    struct answer a;
    snprintf(url, sizeof(url), "host=127.0.0.1,%s port=%d,%s user=%s dbname=%s target_session_attrs=read-write", pg_host,
             port, pg_port, pg_user, pg_db);
    sl_pgpool_t *p = pool(url, 1, 500, 2000);
    ck_assert(pool_ready_flag(p, 3000, &ms));
    fprintf(stderr, "multi-host, dead first host: ready after %lld ms (connect deadline 500 ms)\n", (long long)ms);
    ck_assert_msg(ms >= 450 && ms < 1000, "ready after %lld ms", (long long)ms);
    ck_assert_ptr_nonnull(ask(p, "SELECT 1", &a));
    run_until(&a.done, 2000);
    ck_assert_str_eq(a.value, "1");
    assert_loop_kept_beating();
    sl_pgpool_destroy(p);

    /* a host that refuses moves on at once */
    int closed = port;
    close(hole);
    snprintf(url, sizeof(url), "postgresql://%s@127.0.0.1:%d,%s:%s/%s", pg_user, closed, pg_host, pg_port, pg_db);
    p = pool(url, 1, 500, 2000);
    ck_assert(pool_ready_flag(p, 3000, &ms));
    fprintf(stderr, "multi-host, refusing first host: ready after %lld ms\n", (long long)ms);
    ck_assert_msg(ms < 400, "ready after %lld ms", (long long)ms);
    sl_pgpool_destroy(p);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("pgpool");
    TCase *tc = tcase_create("pgpool");
    tcase_add_unchecked_fixture(tc, read_pg_url, NULL);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_black_hole);
    tcase_add_test(tc, test_never_accepting);
    tcase_add_test(tc, test_query_while_connecting);
    tcase_add_test(tc, test_statement_timeout);
    tcase_add_test(tc, test_hung_backend);
    tcase_add_test(tc, test_cancel);
    tcase_add_test(tc, test_multi_host);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run_suite(suite());
}
