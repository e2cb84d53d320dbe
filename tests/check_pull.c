/*
 * Integration tests of pulls and long-polls, GET /v1/messages?after=<seq> (sl_pull.h), black-box:
 * a real api + persister + sse on the RabbitMQ and PostgreSQL that test.sh starts.
 *
 * What every puller must see: each message of its channels once, in seq order, equal to the
 * database, whether its pages came from an instance's memory, from the database, from a long-poll
 * woken by a live event, or from the api.
 *
 * SLUICE_TEST_ONLY=<part of a name> runs only the matching tests (see main).
 */
#include <arpa/inet.h>
#include <check.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sl_pullclient.h"
#include "sl_testjwt.h"
#include "sl_testnet.h"
#include "sl_testsuite.h"
#include "sl_testutil.h"

static tu_stack_t S;

/* ---- one pull ------------------------------------------------------------------------------------ */

static void pull_ok(const char *base, const char *query, tu_page_t *pg)
{
    ck_assert_msg(tu_pull(base, query, pg) == 0, "GET %s/v1/messages?%s: no answer", base, query);
    ck_assert_msg(pg->status == 200, "GET %s/v1/messages?%s answered %ld %s", base, query, pg->status, pg->code);
}

static void expect_error(const char *base, const char *query, long status, const char *code, const char *field)
{
    tu_page_t pg;
    ck_assert_msg(tu_pull(base, query, &pg) == 0, "GET ?%s: no JSON answer", query);
    ck_assert_msg(pg.status == status && strcmp(pg.code, code) == 0 && strcmp(pg.field, field) == 0,
                  "GET %s ?%s: want %ld %s (field %s), got %ld %s (field %s)", base, query, status, code, field,
                  pg.status, pg.code, pg.field);
    tu_page_free(&pg);
}

/* "http://127.0.0.1:port" followed by path ("" for the base), in a buffer of the calling thread. */
static const char *sse_url(int port, const char *path)
{
    static __thread char b[128];
    snprintf(b, sizeof(b), "http://127.0.0.1:%d%s", port, path);
    return b;
}

/* ---- the stack ------------------------------------------------------------------------------------ */


static long long last_seq(PGconn *db)
{
    return tu_scalar(db, "SELECT last_seq FROM sluice_feed WHERE id = 1");
}

/* The database's (seq, id) of the messages of channel (NULL: all), in seq order. */
static size_t db_feed(PGconn *db, const char *channel, long long **seqs, char (**ids)[37])
{
    const char *p[] = {channel};
    PGresult *r = channel != NULL ? PQexecParams(db, "SELECT seq, id FROM messages WHERE channel = $1 ORDER BY seq", 1,
                                                 NULL, p, NULL, NULL, 0)
                                  : PQexec(db, "SELECT seq, id FROM messages ORDER BY seq");
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    size_t n = (size_t)PQntuples(r);
    *seqs = calloc(n + 1, sizeof(**seqs));
    *ids = calloc(n + 1, sizeof(**ids));
    ck_assert(*seqs != NULL && *ids != NULL);
    for (size_t i = 0; i < n; i++) {
        (*seqs)[i] = strtoll(PQgetvalue(r, (int)i, 0), NULL, 10);
        snprintf((*ids)[i], sizeof((*ids)[i]), "%s", PQgetvalue(r, (int)i, 1));
    }
    PQclear(r);
    return n;
}

/* ---- a puller: one client pulling page after page in a thread ------------------------------------- */

typedef struct puller {
    const char *who;
    char base[128];
    char extra[96]; /* the query after after=N: channel, limit, wait */
    int pause_empty_ms;
    pthread_t th;
    atomic_llong stop_at; /* stop once next reaches it (0: not known yet) */
    long long *seqs;
    char (*ids)[37];
    size_t n, cap;
    long long pages, empty, busy;
    double max_seconds;
    char bad[400];
} puller_t;

static void *puller_main(void *arg)
{
    puller_t *p = arg;
    long long after = 0, hard = tu_now_ms() + 150000;
    char query[256];
    for (;;) {
        long long stop = atomic_load(&p->stop_at);
        if (stop > 0 && after >= stop)
            break;
        if (tu_now_ms() > hard) {
            snprintf(p->bad, sizeof(p->bad), "still at after=%lld when time was up (stop at %lld)", after, stop);
            break;
        }
        tu_page_t pg;
        snprintf(query, sizeof(query), "after=%lld%s", after, p->extra);
        if (tu_pull(p->base, query, &pg) != 0 || (pg.status != 200 && pg.status != 503)) {
            snprintf(p->bad, sizeof(p->bad), "?%s answered %ld %s", query, pg.status, pg.code);
            tu_page_free(&pg);
            break;
        }
        if (pg.status == 503) { /* a cap: come back (counted) */
            p->busy++;
            tu_page_free(&pg);
            tu_sleep_ms(50);
            continue;
        }
        p->pages++;
        p->max_seconds = pg.seconds > p->max_seconds ? pg.seconds : p->max_seconds;
        if (pg.reset[0] != '\0') {
            snprintf(p->bad, sizeof(p->bad), "?%s answered a reset (%s)", query, pg.reset);
            tu_page_free(&pg);
            break;
        }
        long long prev = p->n > 0 ? p->seqs[p->n - 1] : after;
        for (size_t i = 0; i < pg.n && p->bad[0] == '\0'; i++) {
            if (pg.seqs[i] <= prev)
                snprintf(p->bad, sizeof(p->bad), "?%s gave seq %lld after %lld", query, pg.seqs[i], prev);
            prev = pg.seqs[i];
            if (p->n == p->cap) {
                p->cap = p->cap ? p->cap * 2 : 1024;
                p->seqs = realloc(p->seqs, p->cap * sizeof(*p->seqs));
                p->ids = realloc(p->ids, p->cap * sizeof(*p->ids));
            }
            p->seqs[p->n] = pg.seqs[i];
            memcpy(p->ids[p->n], pg.ids[i], sizeof(p->ids[0]));
            p->n++;
        }
        if (pg.next < after || (pg.n > 0 && pg.next < pg.seqs[pg.n - 1]))
            snprintf(p->bad, sizeof(p->bad), "?%s: next %lld is behind (last item %lld)", query, pg.next,
                     pg.n > 0 ? pg.seqs[pg.n - 1] : -1);
        after = pg.next;
        p->empty += pg.n == 0;
        if (pg.n == 0 && p->pause_empty_ms > 0)
            tu_sleep_ms(p->pause_empty_ms);
        tu_page_free(&pg);
        if (p->bad[0] != '\0')
            break;
    }
    return NULL;
}

static void puller_start(puller_t *p, const char *who, const char *base, const char *extra, int pause_empty_ms)
{
    memset(p, 0, sizeof(*p));
    p->who = who;
    snprintf(p->base, sizeof(p->base), "%s", base);
    snprintf(p->extra, sizeof(p->extra), "%s", extra);
    p->pause_empty_ms = pause_empty_ms;
    atomic_init(&p->stop_at, 0);
    ck_assert_int_eq(pthread_create(&p->th, NULL, puller_main, p), 0);
}

/* Joins p and checks it got exactly the database's messages of channel (NULL: all), in order. */
static void puller_check(puller_t *p, PGconn *db, const char *channel)
{
    long long *seqs;
    char (*ids)[37];
    pthread_join(p->th, NULL);
    size_t n = db_feed(db, channel, &seqs, &ids);
    printf("pull: %-34s %6zu messages in %5lld pages (%lld empty, %lld refused 503), slowest answer %.2f s\n", p->who,
           p->n, p->pages, p->empty, p->busy, p->max_seconds);
    ck_assert_msg(p->bad[0] == '\0', "%s: %s", p->who, p->bad);
    ck_assert_msg(p->n == n, "%s: got %zu messages, the database has %zu", p->who, p->n, n);
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(p->seqs[i] == seqs[i] && strcmp(p->ids[i], ids[i]) == 0,
                      "%s: item %zu is seq %lld id %s, the database's is seq %lld id %s", p->who, i, p->seqs[i],
                      p->ids[i], seqs[i], ids[i]);
    }
    free(seqs);
    free(ids);
    free(p->seqs);
    free(p->ids);
}

/* ---- posters -------------------------------------------------------------------------------------- */

#define POSTERS 3
static const char *const CHANNELS[3] = {"c0", "c1", "c2"};

struct poster {
    int t, n;
    long *status;
    pthread_t th;
};

static void body_of(int t, int i, char *buf, size_t size)
{
    snprintf(buf, size, "{\"channel\":\"%s\",\"author\":\"poster%d\",\"text\":\"p%d-%d\"}", CHANNELS[(t + i) % 3], t, t,
             i);
}
static void body_0(int i, char *buf, size_t size) { body_of(0, i, buf, size); }
static void body_1(int i, char *buf, size_t size) { body_of(1, i, buf, size); }
static void body_2(int i, char *buf, size_t size) { body_of(2, i, buf, size); }
static void (*const BODIES[POSTERS])(int, char *, size_t) = {body_0, body_1, body_2};

static void *poster_main(void *arg)
{
    struct poster *ps = arg;
    char url[128];
    snprintf(url, sizeof(url), "%s/v1/messages", S.base);
    tu_post_many(url, ps->n, 16, BODIES[ps->t], ps->status, NULL, NULL, NULL);
    return NULL;
}

/* ---- tests ---------------------------------------------------------------------------------------- */

/* Several threads post 5 000 messages while pullers follow the feed: long-polls on an instance
 * that answers from memory, on one that answers from the database (no memory), small pages, one
 * channel, and the api without wait. Each gets every message of its channels once, in seq order,
 * as the database has them. */
START_TEST(test_pull_under_load_is_exact)
{
    const char *const no_memory[] = {"SLUICE_SSE_RECENT=0", NULL};
    tu_stack_start(&S, "pull_load", NULL);
    int port2 = 0;
    pid_t sse2 = tu_start_at(&S, "sse", &port2, no_memory);
    tu_wait_sse_ready(port2);
    char base1[128], base2[128];
    snprintf(base1, sizeof(base1), "%s", sse_url(S.sse_port, ""));
    snprintf(base2, sizeof(base2), "%s", sse_url(port2, ""));

    puller_t p[6];
    puller_start(&p[0], "sse memory, all, wait 5", base1, "&wait=5&limit=100", 0);
    puller_start(&p[1], "sse memory, #c0, wait 3, limit 1", base1, "&channel=%23c0&wait=3&limit=1", 0);
    puller_start(&p[2], "sse database, all, wait 5", base2, "&wait=5&limit=100", 0);
    puller_start(&p[3], "sse database, c1, wait 5, limit 37", base2, "&channel=c1&wait=5&limit=37", 0);
    puller_start(&p[4], "api, c2, limit 200", S.base, "&channel=c2&limit=200", 20);
    puller_start(&p[5], "api, all, limit 7", S.base, "&limit=7", 20);

    const int total = 5000;
    struct poster ps[POSTERS];
    long long t0 = tu_now_ms();
    for (int t = 0; t < POSTERS; t++) {
        ps[t].t = t;
        ps[t].n = total / POSTERS + (t < total % POSTERS);
        ps[t].status = calloc((size_t)ps[t].n, sizeof(long));
        ck_assert_ptr_nonnull(ps[t].status);
        ck_assert_int_eq(pthread_create(&ps[t].th, NULL, poster_main, &ps[t]), 0);
    }
    for (int t = 0; t < POSTERS; t++) {
        pthread_join(ps[t].th, NULL);
        for (int i = 0; i < ps[t].n; i++)
            ck_assert_msg(ps[t].status[i] == 202, "poster %d: POST %d answered %ld", t, i, ps[t].status[i]);
        free(ps[t].status);
    }
    long long posted_ms = tu_now_ms() - t0;
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, total, 30000), total);
    long long last = last_seq(db);
    printf("pull: %d posts from %d threads in %lld ms (%.0f/s); last seq %lld\n", total, POSTERS, posted_ms,
           total * 1000.0 / (double)(posted_ms > 0 ? posted_ms : 1), last);
    for (int i = 0; i < 6; i++)
        atomic_store(&p[i].stop_at, last);
    puller_check(&p[0], db, NULL);
    puller_check(&p[1], db, "c0");
    puller_check(&p[2], db, NULL);
    puller_check(&p[3], db, "c1");
    puller_check(&p[4], db, "c2");
    puller_check(&p[5], db, NULL);
    printf("pull: sse (memory) pages from memory %.0f, from the database %.0f; woken %.0f, timed out %.0f\n",
           tu_metric(S.sse_port, "sluice_sse_pull_pages_total{source=\"memory\"}"),
           tu_metric(S.sse_port, "sluice_sse_pull_pages_total{source=\"database\"}"),
           tu_metric(S.sse_port, "sluice_sse_pull_answers_total{how=\"woken\"}"),
           tu_metric(S.sse_port, "sluice_sse_pull_answers_total{how=\"timed_out\"}"));
    printf("pull: sse (no memory) pages from memory %.0f, from the database %.0f; woken %.0f, timed out %.0f\n",
           tu_metric(port2, "sluice_sse_pull_pages_total{source=\"memory\"}"),
           tu_metric(port2, "sluice_sse_pull_pages_total{source=\"database\"}"),
           tu_metric(port2, "sluice_sse_pull_answers_total{how=\"woken\"}"),
           tu_metric(port2, "sluice_sse_pull_answers_total{how=\"timed_out\"}"));
    ck_assert_double_gt(tu_metric(port2, "sluice_sse_pull_pages_total{source=\"database\"}"), 0);
    ck_assert_double_gt(tu_metric(S.sse_port, "sluice_sse_pull_answers_total{how=\"woken\"}"), 0);
    ck_assert_double_eq(tu_metric(S.sse_port, "sluice_sse_pull_waiters"), 0);
    PQfinish(db);
    ck_assert_int_eq(tu_stop(&sse2, SIGTERM, 15000), 0);
    tu_stack_cleanup(&S);
}
END_TEST

struct waiter {
    char query[160];
    tu_page_t pg;
    long long answered_ms;
    int rc;
    pthread_t th;
};

static void *waiter_main(void *arg)
{
    struct waiter *w = arg;
    w->rc = tu_pull(sse_url(S.sse_port, ""), w->query, &w->pg);
    w->answered_ms = tu_now_ms();
    return NULL;
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* A long-poll answers as soon as a message of its channel is stored: measured from the POST's 202
 * (the broker's confirm; the persister stores it after) to the pull's answer, printed, not asserted
 * beyond coming before the wait is over. Then: a wait with nothing new is an empty page with the
 * same next; one while only other channels move is empty, its next moved on. */
START_TEST(test_pull_wait_wakes_and_times_out)
{
    tu_stack_start(&S, "pull_wait", NULL);
    PGconn *db = tu_db(&S);
    tu_page_t pg;
    char q[160];
    pull_ok(sse_url(S.sse_port, ""), "after=0", &pg);
    long long next = pg.next;
    tu_page_free(&pg);

    enum { ROUNDS = 20 };
    long long lat[ROUNDS], total[ROUNDS];
    for (int i = 0; i < ROUNDS; i++) {
        struct waiter w;
        char text[32];
        memset(&w, 0, sizeof(w));
        snprintf(w.query, sizeof(w.query), "after=%lld&channel=lat&wait=10", next);
        ck_assert_int_eq(pthread_create(&w.th, NULL, waiter_main, &w), 0);
        ck_assert_msg(tu_wait_metric(S.sse_port, "sluice_sse_pull_waiters", 1, 5000), "the long-poll never waited");
        snprintf(text, sizeof(text), "wake %d", i);
        long long t0 = tu_now_ms();
        tu_post(&S, "lat", text);
        long long t202 = tu_now_ms();
        pthread_join(w.th, NULL);
        ck_assert_int_eq(w.rc, 0);
        ck_assert_int_eq(w.pg.status, 200);
        ck_assert_msg(w.pg.n == 1 && strcmp(w.pg.texts[0], text) == 0, "round %d: %zu items (%s)", i, w.pg.n,
                      w.pg.n ? w.pg.texts[0] : "");
        ck_assert_int_eq(w.pg.next, w.pg.seqs[0]);
        ck_assert_msg(w.pg.seconds < 9.5, "round %d: answered after %.2f s: the wait ran out", i, w.pg.seconds);
        lat[i] = w.answered_ms - t202;
        total[i] = w.answered_ms - t0;
        next = w.pg.next;
        tu_page_free(&w.pg);
    }
    qsort(lat, ROUNDS, sizeof(lat[0]), cmp_ll);
    qsort(total, ROUNDS, sizeof(total[0]), cmp_ll);
    printf("pull: long-poll woken by a post, %d rounds: 202 -> answer median %lld ms, max %lld ms;"
           " POST sent -> answer median %lld ms, max %lld ms\n",
           ROUNDS, lat[ROUNDS / 2], lat[ROUNDS - 1], total[ROUNDS / 2], total[ROUNDS - 1]);

    /* nothing new at all: an empty page when the time is up, the same next */
    snprintf(q, sizeof(q), "after=%lld&wait=1", next);
    pull_ok(sse_url(S.sse_port, ""), q, &pg);
    printf("pull: wait=1 with nothing new answered after %.2f s\n", pg.seconds);
    ck_assert_int_eq(pg.n, 0);
    ck_assert_int_eq(pg.next, next);
    ck_assert_str_eq(pg.reset, "");
    ck_assert_double_ge(pg.seconds, 0.9);
    tu_page_free(&pg);

    /* only other channels move: still empty, and next moves past them */
    struct waiter w;
    memset(&w, 0, sizeof(w));
    snprintf(w.query, sizeof(w.query), "after=%lld&channel=quiet&wait=2", next);
    ck_assert_int_eq(pthread_create(&w.th, NULL, waiter_main, &w), 0);
    ck_assert(tu_wait_metric(S.sse_port, "sluice_sse_pull_waiters", 1, 5000));
    tu_post(&S, "busy", "elsewhere 1");
    tu_post(&S, "busy", "elsewhere 2");
    pthread_join(w.th, NULL);
    ck_assert_int_eq(w.rc, 0);
    ck_assert_int_eq(w.pg.status, 200);
    ck_assert_int_eq(w.pg.n, 0);
    ck_assert_double_ge(w.pg.seconds, 1.9);
    ck_assert_int_eq(w.pg.next, last_seq(db));
    ck_assert_int_gt(w.pg.next, next);
    tu_page_free(&w.pg);

    /* a page there already: at once, wait or not */
    snprintf(q, sizeof(q), "after=%lld&wait=10", next);
    pull_ok(sse_url(S.sse_port, ""), q, &pg);
    ck_assert_int_eq(pg.n, 2);
    ck_assert_double_lt(pg.seconds, 5);
    tu_page_free(&pg);
    ck_assert_double_ge(tu_metric(S.sse_port, "sluice_sse_pull_answers_total{how=\"timed_out\"}"), 2);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* Bad parameters get 400 with the parameter named; a position past the feed's end answers an
 * explicit reset ("ahead") with the next to continue from, on sse and on the api. */
START_TEST(test_pull_bad_params_and_ahead)
{
    tu_stack_start(&S, "pull_params", NULL);
    const char *bases[2] = {S.base, NULL};
    char sse[128];
    snprintf(sse, sizeof(sse), "%s", sse_url(S.sse_port, ""));
    bases[1] = sse;
    for (int b = 0; b < 2; b++) {
        if (b == 1) /* the api's GET /v1/messages without after is its history; sse needs after */
            expect_error(bases[b], "limit=5", 400, "invalid_after", "after");
        expect_error(bases[b], "after=", 400, "invalid_after", "after");
        expect_error(bases[b], "after=-1", 400, "invalid_after", "after");
        expect_error(bases[b], "after=1x", 400, "invalid_after", "after");
        expect_error(bases[b], "after=99999999999999999999", 400, "invalid_after", "after");
        expect_error(bases[b], "after=0&limit=0", 400, "invalid_limit", "limit");
        expect_error(bases[b], "after=0&limit=100000", 400, "invalid_limit", "limit");
        expect_error(bases[b], "after=0&channel=No!", 400, "invalid_channel", "channel");
        expect_error(bases[b], "after=0&channel=", 400, "invalid_channel", "channel");
        expect_error(bases[b], "after=0&wait=31", 400, "invalid_wait", "wait");
        expect_error(bases[b], "after=0&wait=-1", 400, "invalid_wait", "wait");
        expect_error(bases[b], "after=0&wait=1.5", 400, "invalid_wait", "wait");
    }
    expect_error(S.base, "after=0&wait=1", 400, "invalid_wait", "wait"); /* long-polls are sse's */
    expect_error(S.base, "after=0&before=5", 400, "invalid_cursor", "before");

    tu_post(&S, "general", "one");
    tu_post(&S, "general", "two");
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 2, 10000), 2);
    long long last = last_seq(db);
    ck_assert(tu_wait_metric(S.sse_port, "sluice_sse_position", (double)last, 10000));
    for (int b = 0; b < 2; b++) {
        tu_page_t pg;
        pull_ok(bases[b], "after=0&wait=0", &pg);
        ck_assert_int_eq(pg.n, 2);
        ck_assert_int_eq(pg.next, last);
        tu_page_free(&pg);
        pull_ok(bases[b], "after=1000000&channel=general", &pg);
        ck_assert_str_eq(pg.reset, "ahead");
        ck_assert_int_eq(pg.reset_since, 1000000);
        ck_assert_int_eq(pg.n, 0);
        ck_assert_int_eq(pg.next, last);
        tu_page_free(&pg);
    }
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* A raw connection from source address src with a request sent; the fd. */
static int raw_request(const char *src, int port, const char *target)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    inet_pton(AF_INET, src, &a.sin_addr);
    ck_assert_msg(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0, "bind %s", src);
    a.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    char req[512];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", target);
    ck_assert_int_eq(tu_net_send_all(fd, req, (size_t)n, tu_now_ms() + 2000), 0);
    return fd;
}

/* The status of the answer on fd within timeout_ms, 0 when none came. */
static long raw_status(int fd, int timeout_ms)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int eof = 0, err = 0;
    long status = 0;
    long long end = tu_now_ms() + timeout_ms;
    while (status == 0 && tu_now_ms() < end && !eof) {
        if (tu_net_read_some(fd, &buf, &len, &cap, &eof, &err, end) < 0 && err != 0)
            break;
        if (len >= 12 && buf != NULL && strncmp(buf, "HTTP/1.1 ", 9) == 0)
            status = strtol(buf + 9, NULL, 10);
    }
    free(buf);
    return status;
}

/* A client that leaves while its long-poll waits frees its waiter (within a second or two); the
 * waiters are capped per client and per instance (503 too_many_waiters with Retry-After). */
START_TEST(test_pull_waiters_are_freed_and_capped)
{
    const char *const env[] = {"SLUICE_SSE_PULL_WAITERS_PER_CLIENT=1", "SLUICE_SSE_PULL_MAX_WAITERS=2", NULL};
    tu_stack_start(&S, "pull_waiters", env);
    int port = S.sse_port;

    int fd = raw_request("127.0.0.1", port, "/v1/messages?after=0&wait=30");
    ck_assert_msg(tu_wait_metric(port, "sluice_sse_pull_waiters", 1, 5000), "the long-poll never waited");
    close(fd);
    long long t0 = tu_now_ms();
    ck_assert_msg(tu_wait_metric(port, "sluice_sse_pull_waiters", 0, 5000), "the waiter of a client that left stays");
    printf("pull: the waiter of a client that left was freed within %lld ms\n", tu_now_ms() - t0);
    ck_assert_double_eq(tu_metric(port, "sluice_sse_pull_departed_total"), 1);

    int a = raw_request("127.0.0.1", port, "/v1/messages?after=0&wait=30");
    ck_assert(tu_wait_metric(port, "sluice_sse_pull_waiters", 1, 5000));
    int b = raw_request("127.0.0.1", port, "/v1/messages?after=0&wait=30"); /* the same client: over its cap */
    ck_assert_int_eq(raw_status(b, 5000), 503);
    close(b);
    int c = raw_request("127.0.0.2", port, "/v1/messages?after=0&wait=30"); /* another client */
    ck_assert(tu_wait_metric(port, "sluice_sse_pull_waiters", 2, 5000));
    tu_page_t pg;
    tu_pull(sse_url(port, ""), "after=0&wait=30", &pg); /* the instance is full */
    ck_assert_int_eq(pg.status, 503);
    ck_assert_str_eq(pg.code, "too_many_waiters");
    ck_assert_str_ne(pg.retry_after, "");
    tu_page_free(&pg);
    pull_ok(sse_url(port, ""), "after=0", &pg); /* a pull without wait needs no place */
    tu_page_free(&pg);
    ck_assert_double_eq(tu_metric(port, "sluice_sse_pull_refused_total{reason=\"client\"}"), 1);
    ck_assert_double_eq(tu_metric(port, "sluice_sse_pull_refused_total{reason=\"instance\"}"), 1);

    /* a post wakes both; their places are free again */
    tu_post(&S, "general", "wake up");
    ck_assert_int_eq(raw_status(a, 10000), 200);
    ck_assert_int_eq(raw_status(c, 10000), 200);
    close(a);
    close(c);
    ck_assert(tu_wait_metric(port, "sluice_sse_pull_waiters", 0, 5000));

    /* SIGTERM answers a waiting long-poll at once (its client comes back elsewhere) */
    a = raw_request("127.0.0.1", port, "/v1/messages?after=1&wait=30");
    ck_assert(tu_wait_metric(port, "sluice_sse_pull_waiters", 1, 5000));
    kill(S.sse, SIGTERM);
    ck_assert_int_eq(raw_status(a, 5000), 200);
    close(a);
    tu_stack_cleanup(&S);
}
END_TEST

/* Connect-and-drop: pulls whose client is gone before their database read (10 ms later, as a
 * stream's history) read nothing; one that stays gets its page. */
START_TEST(test_pull_connect_and_drop_reads_nothing)
{
    enum { DROPS = 100 };
    const char *const env[] = {"SLUICE_SSE_RECENT=0", NULL};
    tu_stack_start(&S, "pull_drops", env);
    tu_post(&S, "general", "one");
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 1, 10000), 1);
    ck_assert(tu_wait_metric(S.sse_port, "sluice_sse_position", 1, 10000));
    double reads0 = tu_metric(S.sse_port, "sluice_sse_pull_pages_total{source=\"database\"}");
    for (int i = 0; i < DROPS; i++)
        close(raw_request("127.0.0.1", S.sse_port, "/v1/messages?after=0"));
    tu_sleep_ms(500);
    double reads = tu_metric(S.sse_port, "sluice_sse_pull_pages_total{source=\"database\"}") - reads0;
    double departed = tu_metric(S.sse_port, "sluice_sse_pull_departed_total");
    printf("pull: %d connect-and-drop pulls: %.0f database reads, %.0f seen gone\n", DROPS, reads, departed);
    ck_assert_msg(reads <= DROPS / 30, "%.0f of %d connect-and-drop pulls read the database", reads, DROPS);
    tu_page_t pg;
    pull_ok(sse_url(S.sse_port, ""), "after=0", &pg);
    ck_assert_int_eq(pg.n, 1);
    tu_page_free(&pg);
    ck_assert_double_eq(tu_metric(S.sse_port, "sluice_sse_pull_pages_total{source=\"database\"}") - reads0, reads + 1);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

#define SECRET "a-shared-secret-for-jwt-readers-0123456789"

/* ?token= of an HS256 token for sub with channels (a JSON array's text), valid an hour. */
static void token_query(char *buf, size_t size, const char *channels)
{
    char claims[256];
    snprintf(claims, sizeof(claims), "{\"sub\":\"puller\",\"exp\":%lld,\"channels\":%s}", (long long)time(NULL) + 3600,
             channels);
    char *t = tu_jwt_hs256(SECRET, claims);
    ck_assert_ptr_nonnull(t);
    snprintf(buf, size, "&token=%s", t);
    free(t);
}

/* The seqs of page pg that are in channel ch are those the database has of ch after `after`:
 * counts them (by their text's prefix, "s" for staff, "g" for general). */
static size_t count_prefix(const tu_page_t *pg, char prefix)
{
    size_t n = 0;
    for (size_t i = 0; i < pg->n; i++)
        n += pg->texts[i][0] == prefix;
    return n;
}

/* Private channels (SLUICE_PRIVATE_CHANNELS), as for streams: one needs a token covering it; a
 * pull of every channel carries only what its token may read, from memory and from the database;
 * a long-poll of every channel without a token is not woken by a private channel's message. */
START_TEST(test_pull_private_channels)
{
    const char *const env[] = {"SLUICE_JWT_SECRET=" SECRET, "SLUICE_PRIVATE_CHANNELS=staff", NULL};
    const char *const no_memory[] = {"SLUICE_JWT_SECRET=" SECRET, "SLUICE_PRIVATE_CHANNELS=staff", "SLUICE_SSE_RECENT=0",
                                     NULL};
    tu_stack_start(&S, "pull_private", env);
    int port2 = 0;
    pid_t sse2 = tu_start_at(&S, "sse", &port2, no_memory);
    tu_wait_sse_ready(port2);
    tu_post(&S, "general", "g1");
    tu_post(&S, "staff", "s1");
    tu_post(&S, "general", "g2");
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 3, 10000), 3);
    char staff_tok[600], other_tok[600], q[800];
    token_query(staff_tok, sizeof(staff_tok), "[\"staff\"]");
    token_query(other_tok, sizeof(other_tok), "[\"other\"]");
    int ports[2] = {S.sse_port, port2};
    for (int i = 0; i < 2; i++) {
        char base[128];
        tu_page_t pg;
        snprintf(base, sizeof(base), "%s", sse_url(ports[i], ""));
        ck_assert(tu_wait_metric(ports[i], "sluice_sse_position", 3, 10000));
        expect_error(base, "after=0&channel=staff", 401, "token_required", "channel");
        snprintf(q, sizeof(q), "after=0&channel=staff%s", other_tok);
        expect_error(base, q, 403, "channel_forbidden", "channel");
        ck_assert_int_eq(tu_pull(base, "after=0&token=not.a.jwt", &pg), 0);
        ck_assert_int_eq(pg.status, 401);
        tu_page_free(&pg);
        snprintf(q, sizeof(q), "after=0&channel=staff%s", staff_tok);
        pull_ok(base, q, &pg);
        ck_assert_msg(pg.n == 1 && count_prefix(&pg, 's') == 1, "port %d: staff with its token: %zu", ports[i], pg.n);
        tu_page_free(&pg);
        pull_ok(base, "after=0", &pg); /* every channel, no token: not staff */
        ck_assert_msg(pg.n == 2 && count_prefix(&pg, 'g') == 2, "port %d: every channel without a token: %zu items",
                      ports[i], pg.n);
        ck_assert_int_eq(pg.next, 3);
        tu_page_free(&pg);
        snprintf(q, sizeof(q), "after=0%s", staff_tok);
        pull_ok(base, q, &pg); /* with the token: all three */
        ck_assert_msg(pg.n == 3 && count_prefix(&pg, 's') == 1, "port %d: every channel with the token: %zu", ports[i],
                      pg.n);
        tu_page_free(&pg);
    }
    /* a long-poll of every channel without a token sleeps through staff's message */
    struct waiter w;
    memset(&w, 0, sizeof(w));
    snprintf(w.query, sizeof(w.query), "after=3&wait=2");
    ck_assert_int_eq(pthread_create(&w.th, NULL, waiter_main, &w), 0);
    ck_assert(tu_wait_metric(S.sse_port, "sluice_sse_pull_waiters", 1, 5000));
    tu_post(&S, "staff", "s2");
    pthread_join(w.th, NULL);
    ck_assert_int_eq(w.rc, 0);
    ck_assert_msg(w.pg.status == 200 && w.pg.n == 0 && w.pg.seconds >= 1.9, "woken by a private message: %zu items",
                  w.pg.n);
    tu_page_free(&w.pg);
    PQfinish(db);
    ck_assert_int_eq(tu_stop(&sse2, SIGTERM, 15000), 0);
    tu_stack_cleanup(&S);
}
END_TEST

int main(void)
{
    const tu_named_test_t tests[] = {
        {"params", test_pull_bad_params_and_ahead},
        {"wait", test_pull_wait_wakes_and_times_out},
        {"waiters", test_pull_waiters_are_freed_and_capped},
        {"load", test_pull_under_load_is_exact},
        {"drops", test_pull_connect_and_drop_reads_nothing},
        {"private", test_pull_private_channels},
    };
    return tu_run_named("pull", tests, sizeof(tests) / sizeof(tests[0]), 240);
}
