/*
 * Unit tests of sl_presence's logic (sl_presence.h), without a loop or a broker: instances are
 * driven with sl_presence_run at chosen times, and their snapshots go through an in-memory
 * fanout "exchange" (every instance, the sender included, receives every part, as RabbitMQ's
 * fanout with one queue per instance does). check_presence_amqp runs the same over RabbitMQ.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_presence.h"
#include "sl_testsuite.h"

#define MAXI 3
#define HB 1000

/* ---- the in-memory exchange ------------------------------------------------------------------- */

struct msg {
    char *body;
    size_t len;
};

static struct bus {
    sl_presence_t *inst[MAXI];
    int n;
    struct msg *q[MAXI]; /* per receiver */
    size_t nq[MAXI], capq[MAXI];
    int paused[MAXI];    /* a "frozen" instance: sends nothing, receives nothing, never runs */
    int answer;          /* what send answers (SL_PRESENCE_SENT unless a test says otherwise) */
    size_t largest;
    int sends;
} B;

static int bus_send(void *data, const char *body, size_t len, long long expiration_ms)
{
    (void)data;
    ck_assert_int_eq(expiration_ms, HB);
    B.sends++;
    if (B.answer != SL_PRESENCE_SENT)
        return B.answer;
    if (len > B.largest)
        B.largest = len;
    for (int i = 0; i < B.n; i++) {
        if (B.nq[i] == B.capq[i]) {
            B.capq[i] = B.capq[i] ? 2 * B.capq[i] : 16;
            B.q[i] = realloc(B.q[i], B.capq[i] * sizeof(struct msg));
            ck_assert_ptr_nonnull(B.q[i]);
        }
        B.q[i][B.nq[i]].body = malloc(len);
        memcpy(B.q[i][B.nq[i]].body, body, len);
        B.q[i][B.nq[i]++].len = len;
    }
    return SL_PRESENCE_SENT;
}

static sl_presence_t *make(const char *name, long long max_users, size_t part_bytes)
{
    sl_presence_conf_t conf = {.instance = name, .heartbeat_ms = HB, .max_users = max_users, .part_bytes = part_bytes,
                               .send = bus_send, .send_data = NULL};
    sl_presence_t *p = sl_presence_create(NULL, &conf);
    ck_assert_ptr_nonnull(p);
    B.inst[B.n++] = p;
    return p;
}

/* Delivers what was sent, then runs every instance that is not paused at now. */
static void pump(uint64_t now)
{
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < B.n; i++) {
            for (size_t k = 0; k < B.nq[i]; k++) {
                if (!B.paused[i])
                    sl_presence_receive(B.inst[i], B.q[i][k].body, B.q[i][k].len);
                free(B.q[i][k].body);
            }
            B.nq[i] = 0;
        }
        for (int i = 0; i < B.n; i++) {
            if (!B.paused[i])
                sl_presence_run(B.inst[i], now);
        }
    }
}

static void setup(void)
{
    memset(&B, 0, sizeof(B));
    B.answer = SL_PRESENCE_SENT;
}

static void teardown(void)
{
    for (int i = 0; i < B.n; i++) {
        for (size_t k = 0; k < B.nq[i]; k++)
            free(B.q[i][k].body);
        free(B.q[i]);
        sl_presence_destroy(B.inst[i]);
    }
    memset(&B, 0, sizeof(B));
}

/* ---- a listener that records events ------------------------------------------------------------ */

struct rec {
    char log[4096]; /* "+room:alice(Alice) -room:bob " ... */
    int joins, leaves;
};

static void on_event(void *data, const sl_presence_event_t *ev)
{
    struct rec *r = data;
    size_t n = strlen(r->log);
    snprintf(r->log + n, sizeof(r->log) - n, "%c%s:%s%s%s%s ", ev->type == SL_PRESENCE_JOIN ? '+' : '-', ev->channel,
             ev->user.id, ev->user.name ? "(" : "", ev->user.name ? ev->user.name : "", ev->user.name ? ")" : "");
    if (ev->type == SL_PRESENCE_JOIN)
        r->joins++;
    else
        r->leaves++;
}

static void add_user(void *data, const sl_presence_user_t *u)
{
    char *out = data;
    size_t n = strlen(out);
    snprintf(out + n, 512 - n, "%s%s", n ? "," : "", u->id);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The presence set of channel on p as "a,b,c" (sorted). */
static const char *users_of(sl_presence_t *p, const char *channel, int *truncated)
{
    static char out[512], sorted[512];
    char *ids[64], *save = NULL;
    size_t n = 0;
    out[0] = sorted[0] = '\0';
    sl_presence_each_user(p, channel, add_user, out, truncated);
    for (char *t = strtok_r(out, ",", &save); t != NULL && n < 64; t = strtok_r(NULL, ",", &save))
        ids[n++] = t;
    qsort(ids, n, sizeof(*ids), cmp_str);
    for (size_t i = 0; i < n; i++) {
        strcat(sorted, i ? "," : "");
        strcat(sorted, ids[i]);
    }
    return sorted;
}

struct find {
    const char *id;
    char *name;
    int found;
};

static void find_user(void *data, const sl_presence_user_t *u)
{
    struct find *f = data;
    if (strcmp(u->id, f->id) == 0) {
        f->found++;
        f->name = u->name != NULL ? strdup(u->name) : NULL;
    }
}

static const sl_presence_user_t ALICE = {"alice", "Alice"}, BOB = {"bob", NULL}, CAROL = {"carol", "Carol"};

/* ---- tests ------------------------------------------------------------------------------------------ */

START_TEST(test_two_tabs_one_user)
{
    sl_presence_t *a = make("a", 0, 0);
    struct rec r = {0};
    ck_assert_ptr_nonnull(sl_presence_listen(a, "room", on_event, &r));
    pump(0);
    sl_presence_entry_t *t1 = sl_presence_enter(a, "room", &ALICE);
    sl_presence_entry_t *t2 = sl_presence_enter(a, "room", &ALICE);
    sl_presence_entry_t *anon = sl_presence_enter(a, "room", NULL);
    ck_assert_ptr_nonnull(t1);
    ck_assert_ptr_nonnull(t2);
    ck_assert_ptr_nonnull(anon);
    ck_assert_int_eq(r.joins, 0); /* never from inside enter */
    pump(10);
    ck_assert_str_eq(r.log, "+room:alice(Alice) ");
    ck_assert_int_eq(sl_presence_occupancy(a, "room"), 3);
    ck_assert_str_eq(users_of(a, "room", NULL), "alice");
    const sl_presence_stats_t *st = sl_presence_stats(a);
    ck_assert_int_eq(st->occupancy, 3);
    ck_assert_int_eq(st->users, 1);
    ck_assert_int_eq(st->channels, 1);

    sl_presence_leave(t1); /* one tab of two: nothing */
    sl_presence_leave(anon);
    pump(5000);
    ck_assert_int_eq(r.leaves, 0);
    ck_assert_int_eq(sl_presence_occupancy(a, "room"), 1);
    sl_presence_leave(t2); /* the last: a leave, after the grace (one heartbeat) */
    ck_assert_int_eq(sl_presence_occupancy(a, "room"), 0);
    pump(5000 + HB - 1);
    ck_assert_int_eq(r.leaves, 0);
    ck_assert_str_eq(users_of(a, "room", NULL), "alice"); /* in grace */
    pump(5000 + HB);
    ck_assert_str_eq(r.log, "+room:alice(Alice) -room:alice(Alice) ");
    ck_assert_str_eq(users_of(a, "room", NULL), "");
    st = sl_presence_stats(a);
    ck_assert_int_eq(st->users, 0);
    ck_assert_int_eq(st->channels, 0);
}
END_TEST

START_TEST(test_grace_hides_a_reconnect)
{
    sl_presence_t *a = make("a", 0, 0), *b = make("b", 0, 0);
    struct rec ra = {0}, rb = {0};
    sl_presence_listen(a, "room", on_event, &ra);
    sl_presence_listen(b, "room", on_event, &rb);
    pump(0);
    sl_presence_entry_t *e = sl_presence_enter(a, "room", &ALICE);
    pump(100);
    pump(200); /* the change went out heartbeat/10 after the previous round at the latest */
    ck_assert_str_eq(ra.log, "+room:alice(Alice) ");
    ck_assert_str_eq(rb.log, "+room:alice(Alice) ");
    /* closes the tab and opens another on the same instance within the grace */
    sl_presence_leave(e);
    pump(600);
    e = sl_presence_enter(a, "room", &ALICE);
    pump(3000);
    /* ... then on the other instance: a's grace covers the move */
    sl_presence_leave(e);
    pump(3100);
    sl_presence_entry_t *eb = sl_presence_enter(b, "room", &ALICE);
    for (uint64_t t = 3200; t <= 9000; t += 100)
        pump(t);
    ck_assert_str_eq(ra.log, "+room:alice(Alice) ");
    ck_assert_str_eq(rb.log, "+room:alice(Alice) ");
    ck_assert_int_eq(sl_presence_occupancy(a, "room"), 1);
    ck_assert_str_eq(users_of(a, "room", NULL), "alice");
    sl_presence_leave(eb);
    for (uint64_t t = 9100; t <= 12000; t += 100)
        pump(t);
    ck_assert_str_eq(ra.log, "+room:alice(Alice) -room:alice(Alice) ");
    ck_assert_str_eq(rb.log, "+room:alice(Alice) -room:alice(Alice) ");
}
END_TEST

START_TEST(test_occupancy_and_union_across_instances)
{
    sl_presence_t *a = make("a", 0, 0), *b = make("b", 0, 0);
    pump(0);
    sl_presence_enter(a, "room", &ALICE);
    sl_presence_enter(a, "room", &BOB);
    sl_presence_enter(a, "other", NULL);
    sl_presence_enter(b, "room", &BOB);
    sl_presence_enter(b, "room", &CAROL);
    sl_presence_enter(b, "room", NULL);
    pump(HB);
    for (int i = 0; i < 2; i++) {
        sl_presence_t *p = i ? b : a;
        ck_assert_int_eq(sl_presence_occupancy(p, "room"), 5);
        ck_assert_int_eq(sl_presence_occupancy(p, "other"), 1);
        ck_assert_int_eq(sl_presence_occupancy(p, "none"), 0);
        ck_assert_str_eq(users_of(p, "room", NULL), "alice,bob,carol");
        ck_assert_int_eq(sl_presence_stats(p)->instances, 1);
    }
    /* its own snapshots come back through the fanout and are not counted twice */
    ck_assert_int_eq(sl_presence_stats(a)->rounds_received, sl_presence_stats(b)->rounds_sent);
    ck_assert_int_eq(sl_presence_stats(a)->parts_dropped, 0);
}
END_TEST

START_TEST(test_dead_instance_leaves_within_the_ttl)
{
    sl_presence_t *a = make("a", 0, 0), *b = make("b", 0, 0);
    struct rec r = {0};
    sl_presence_listen(a, NULL, on_event, &r); /* every channel */
    pump(0);
    sl_presence_enter(a, "room", &ALICE);
    sl_presence_enter(b, "room", &ALICE);
    sl_presence_enter(b, "room", &BOB);
    sl_presence_enter(b, "news", &CAROL);
    pump(HB);
    pump(2 * HB);
    ck_assert_int_eq(sl_presence_occupancy(a, "room"), 3);
    ck_assert_int_eq(r.joins, 3);
    /* b is killed: no goodbye, its snapshots stop; a drops it 3 heartbeats after the last */
    B.paused[1] = 1;
    uint64_t t = 2 * HB;
    while (r.leaves < 2 && t < 20 * HB) {
        t += 50;
        pump(t);
    }
    ck_assert_int_eq(t, 5 * HB);
    ck_assert_int_eq(r.leaves, 2); /* bob and carol; alice stays (a lists her) */
    ck_assert_ptr_nonnull(strstr(r.log, "-room:bob "));
    ck_assert_ptr_nonnull(strstr(r.log, "-news:carol(Carol) "));
    ck_assert_ptr_null(strstr(r.log, "-room:alice"));
    ck_assert_int_eq(sl_presence_occupancy(a, "room"), 1);
    ck_assert_int_eq(sl_presence_occupancy(a, "news"), 0);
    ck_assert_int_eq(sl_presence_stats(a)->instances_expired, 1);
    ck_assert_int_eq(sl_presence_stats(a)->instances, 0);
}
END_TEST

START_TEST(test_limits_truncate_the_set_not_the_count)
{
    sl_presence_t *a = make("a", 3, 0), *b = make("b", 3, 0);
    struct rec r = {0};
    sl_presence_entry_t *e[5];
    char id[5][8];
    sl_presence_listen(b, "room", on_event, &r);
    pump(0);
    for (int i = 0; i < 5; i++) {
        snprintf(id[i], sizeof(id[i]), "u%d", i);
        sl_presence_user_t u = {id[i], NULL};
        e[i] = sl_presence_enter(a, "room", &u);
    }
    pump(HB);
    int truncated = 0;
    ck_assert_str_eq(users_of(a, "room", &truncated), "u0,u1,u2");
    ck_assert_int_eq(truncated, 1);
    ck_assert_str_eq(users_of(b, "room", &truncated), "u0,u1,u2");
    ck_assert_int_eq(truncated, 1);
    ck_assert_int_eq(sl_presence_occupancy(b, "room"), 5);
    ck_assert_int_eq(sl_presence_stats(b)->truncated, 1);
    /* a listed user goes: the first waiting takes its place */
    sl_presence_leave(e[1]);
    pump(3 * HB);
    ck_assert_str_eq(users_of(b, "room", NULL), "u0,u2,u3");
    ck_assert_int_eq(r.joins, 4);
    ck_assert_int_eq(r.leaves, 1);
    ck_assert_ptr_nonnull(strstr(r.log, "-room:u1 "));
    ck_assert_ptr_nonnull(strstr(r.log, "+room:u3 "));
    ck_assert_int_eq(sl_presence_occupancy(b, "room"), 4);
    /* the waiting one goes: nothing to see */
    sl_presence_leave(e[4]);
    pump(5 * HB);
    ck_assert_str_eq(users_of(b, "room", &truncated), "u0,u2,u3");
    ck_assert_int_eq(truncated, 0);
    ck_assert_int_eq(sl_presence_stats(a)->truncated, 0);
    /* ids: empty and too long are refused */
    char longid[SL_PRESENCE_ID_MAX + 2];
    memset(longid, 'x', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    sl_presence_user_t bad1 = {"", NULL}, bad2 = {longid, NULL};
    ck_assert_ptr_null(sl_presence_enter(a, "room", &bad1));
    ck_assert_ptr_null(sl_presence_enter(a, "room", &bad2));
    longid[SL_PRESENCE_ID_MAX] = '\0';
    sl_presence_entry_t *ok = sl_presence_enter(a, "room", &bad2);
    ck_assert_ptr_nonnull(ok);
    sl_presence_leave(ok);
}
END_TEST

START_TEST(test_big_snapshot_goes_in_parts)
{
    sl_presence_t *a = make("a", 5000, 16384), *b = make("b", 5000, 16384);
    enum { N = 3000 };
    static char ids[N][64];
    static sl_presence_entry_t *e[N];
    struct rec r = {0};
    sl_presence_listen(b, "room", on_event, &r);
    pump(0);
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof(ids[i]), "user-%05d-with-a-longish-subject-claim", i);
        sl_presence_user_t u = {ids[i], i % 2 ? "Some \"Name\" \\ ünïcödé" : NULL};
        e[i] = sl_presence_enter(a, "room", &u);
        sl_presence_enter(a, i % 3 ? "room" : "second", NULL);
    }
    uint64_t sent_before = sl_presence_stats(a)->parts_sent;
    pump(HB);
    const sl_presence_stats_t *st = sl_presence_stats(a);
    ck_assert_uint_gt(st->parts_sent - sent_before, 5); /* ~150 KB in parts of at most 16 KiB */
    ck_assert_uint_le(B.largest, 16384);
    ck_assert_int_eq(r.joins, N);
    ck_assert_int_eq(sl_presence_occupancy(b, "room"), N + 2 * N / 3);
    ck_assert_int_eq(sl_presence_occupancy(b, "second"), N / 3);
    ck_assert_int_eq(sl_presence_stats(b)->parts_dropped, 0);
    /* the names came through the JSON escaping intact */
    struct find f = {"user-00001-with-a-longish-subject-claim", NULL, 0};
    sl_presence_each_user(b, "room", find_user, &f, NULL);
    ck_assert_int_eq(f.found, 1);
    ck_assert_str_eq(f.name, "Some \"Name\" \\ ünïcödé");
    free(f.name);
    /* a round that loses a part is not applied: the snapshot held stays */
    sl_presence_leave(e[0]);
    pump(3 * HB); /* a's grace ends: user 0 leaves everywhere */
    ck_assert_int_eq(r.leaves, 1);
    size_t before = B.nq[1];
    sl_presence_leave(e[1]);
    pump(3 * HB + 10); /* delivered, b runs; nothing changed yet (grace) */
    sl_presence_run(a, 5 * HB);
    ck_assert_uint_gt(B.nq[1], before + 2);
    free(B.q[1][before + 1].body); /* the second part of this round is lost */
    memmove(&B.q[1][before + 1], &B.q[1][before + 2], (B.nq[1] - before - 2) * sizeof(struct msg));
    B.nq[1]--;
    uint64_t dropped = sl_presence_stats(b)->parts_dropped;
    pump(5 * HB);
    ck_assert_uint_gt(sl_presence_stats(b)->parts_dropped, dropped);
    ck_assert_int_eq(r.leaves, 1); /* user 1's leave waits for a whole round */
    ck_assert_int_eq(sl_presence_occupancy(b, "room"), N - 1 + 2 * N / 3);
    /* the next round (forced: the heartbeat would come at 6 * HB, exactly when b's TTL for the
     * last round it applied, at 3 * HB, ends) */
    sl_presence_connected(a);
    pump(5 * HB + 100);
    ck_assert_int_eq(r.leaves, 2);
    ck_assert_int_eq(sl_presence_occupancy(b, "room"), N - 2 + 2 * N / 3);
}
END_TEST

START_TEST(test_malformed_and_stale_parts_are_dropped)
{
    sl_presence_t *a = make("a", 0, 0);
    pump(0);
    const char *bad[] = {
        "",
        "not json",
        "[]",
        "{\"v\":2,\"boot\":\"x1\",\"instance\":\"x\",\"round\":1,\"part\":0,\"ttl_ms\":3000,\"channels\":[],\"last\":true}",
        "{\"v\":1,\"boot\":\"x1\",\"instance\":\"x\",\"round\":1,\"part\":0,\"ttl_ms\":0,\"channels\":[],\"last\":true}",
        "{\"v\":1,\"boot\":\"x1\",\"instance\":\"x\",\"round\":1,\"part\":0,\"ttl_ms\":3000,\"channels\":[{\"channel\":"
        "\"Bad Name\",\"count\":1}],\"last\":true}",
        "{\"v\":1,\"boot\":\"x1\",\"instance\":\"x\",\"round\":1,\"part\":0,\"ttl_ms\":3000,\"channels\":[{\"channel\":"
        "\"room\",\"count\":-1}],\"last\":true}",
        "{\"v\":1,\"boot\":\"x1\",\"instance\":\"x\",\"round\":1,\"part\":0,\"ttl_ms\":3000,\"channels\":[{\"channel\":"
        "\"room\",\"count\":1,\"users\":[[\"\"]]}],\"last\":true}",
        "{\"v\":1,\"boot\":\"x1\",\"instance\":\"x\",\"round\":1,\"part\":0,\"ttl_ms\":3000,\"channels\":[{\"channel\":"
        "\"room\",\"count\":1,\"users\":[[1]]}],\"last\":true}",
        "{\"v\":1,\"boot\":\"x1\",\"instance\":\"x\",\"round\":1,\"part\":3,\"ttl_ms\":3000,\"channels\":[],\"last\":true}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        sl_presence_receive(a, bad[i], strlen(bad[i]));
    ck_assert_int_eq(sl_presence_stats(a)->parts_dropped, sizeof(bad) / sizeof(bad[0]));
    ck_assert_int_eq(sl_presence_occupancy(a, "room"), 0);
    const char *good = "{\"v\":1,\"boot\":\"x1\",\"instance\":\"x\",\"round\":5,\"part\":0,\"ttl_ms\":3000,\"channels\":"
                       "[{\"channel\":\"room\",\"count\":2,\"users\":[[\"zed\",\"Zed\"]]}],\"last\":true}";
    const char *older = "{\"v\":1,\"boot\":\"x1\",\"instance\":\"x\",\"round\":4,\"part\":0,\"ttl_ms\":3000,\"channels\":"
                        "[],\"last\":true}";
    sl_presence_receive(a, good, strlen(good));
    sl_presence_receive(a, older, strlen(older));
    sl_presence_receive(a, good, strlen(good)); /* the same round again */
    ck_assert_int_eq(sl_presence_stats(a)->rounds_received, 1);
    ck_assert_int_eq(sl_presence_stats(a)->parts_dropped, sizeof(bad) / sizeof(bad[0]) + 2);
    ck_assert_int_eq(sl_presence_occupancy(a, "room"), 2);
    ck_assert_str_eq(users_of(a, "room", NULL), "zed");
    /* its own TTL (3000 ms from the snapshot) applies, not ours */
    sl_presence_run(a, 2999);
    ck_assert_int_eq(sl_presence_occupancy(a, "room"), 2);
    sl_presence_run(a, 3000);
    ck_assert_int_eq(sl_presence_occupancy(a, "room"), 0);
}
END_TEST

/* A listener that unlistens itself and enters on its first event. */
struct selfish {
    sl_presence_t *p;
    sl_presence_listener_t *l;
    sl_presence_entry_t *e;
    int calls;
};

static void on_event_selfish(void *data, const sl_presence_event_t *ev)
{
    struct selfish *s = data;
    (void)ev;
    s->calls++;
    sl_presence_unlisten(s->l);
    s->l = NULL;
    static const sl_presence_user_t echo = {"echo", NULL};
    s->e = sl_presence_enter(s->p, "room", &echo);
}

START_TEST(test_join_leave_sequences_and_reentrant_listeners)
{
    sl_presence_t *a = make("a", 0, 0);
    struct rec r = {0}, all = {0};
    struct selfish s = {a, NULL, NULL, 0};
    pump(0);
    sl_presence_listener_t *lr = sl_presence_listen(a, "room", on_event, &r);
    s.l = sl_presence_listen(a, "room", on_event_selfish, &s);
    sl_presence_listen(a, NULL, on_event, &all);
    sl_presence_entry_t *x = sl_presence_enter(a, "room", &ALICE);
    sl_presence_entry_t *y = sl_presence_enter(a, "room", &BOB);
    sl_presence_entry_t *z = sl_presence_enter(a, "news", &CAROL);
    pump(10);
    ck_assert_int_eq(s.calls, 1); /* unlistened inside its first call */
    ck_assert_ptr_nonnull(s.e);
    ck_assert_str_eq(r.log, "+room:alice(Alice) +room:bob +room:echo ");
    ck_assert_str_eq(all.log, "+room:alice(Alice) +room:bob +news:carol(Carol) +room:echo ");
    sl_presence_leave(y);
    pump(20);
    sl_presence_leave(x);
    sl_presence_unlisten(lr); /* no more for r */
    pump(20 + HB);
    ck_assert_str_eq(r.log, "+room:alice(Alice) +room:bob +room:echo ");
    ck_assert_str_eq(all.log, "+room:alice(Alice) +room:bob +news:carol(Carol) +room:echo -room:bob -room:alice(Alice) ");
    sl_presence_leave(z);
    sl_presence_leave(s.e);
    pump(30 + 2 * HB);
    ck_assert_int_eq(all.leaves, 4);
    ck_assert_int_eq(sl_presence_stats(a)->channels, 0);
}
END_TEST

START_TEST(test_sending_waits_for_room_and_gives_up_when_down)
{
    sl_presence_t *a = make("a", 0, 0), *b = make("b", 0, 0);
    pump(0);
    sl_presence_enter(a, "room", &ALICE);
    B.answer = SL_PRESENCE_BUSY;
    int sends = B.sends;
    pump(HB);
    ck_assert_int_gt(B.sends, sends);
    ck_assert_int_eq(sl_presence_occupancy(b, "room"), 0);
    B.answer = SL_PRESENCE_SENT; /* room again: the part waiting goes, before the next heartbeat */
    pump(HB + 5);
    ck_assert_int_eq(sl_presence_occupancy(b, "room"), 1);
    B.answer = SL_PRESENCE_DOWN;
    uint64_t failed = sl_presence_stats(a)->rounds_failed;
    pump(2 * HB);
    ck_assert_uint_eq(sl_presence_stats(a)->rounds_failed, failed + 1);
    B.answer = SL_PRESENCE_SENT;
    sl_presence_connected(a); /* after a reconnect: at once, not at the next heartbeat */
    sends = B.sends;
    pump(2 * HB + 1);
    ck_assert_int_gt(B.sends, sends);
    /* a stop: the others see the count go at once, the user stays until the TTL */
    sl_presence_entry_t *e = sl_presence_enter(a, "room", &BOB);
    pump(2 * HB + 300);
    ck_assert_str_eq(users_of(b, "room", NULL), "alice,bob");
    sl_presence_leave(e);
    sl_presence_flush(a);
    B.paused[0] = 1;
    pump(2 * HB + 301);
    ck_assert_int_eq(sl_presence_occupancy(b, "room"), 1);
    ck_assert_str_eq(users_of(b, "room", NULL), "alice,bob");
    pump(6 * HB);
    ck_assert_int_eq(sl_presence_occupancy(b, "room"), 0);
    ck_assert_str_eq(users_of(b, "room", NULL), "");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("presence");
    TCase *tc = tcase_create("logic");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_two_tabs_one_user);
    tcase_add_test(tc, test_grace_hides_a_reconnect);
    tcase_add_test(tc, test_occupancy_and_union_across_instances);
    tcase_add_test(tc, test_dead_instance_leaves_within_the_ttl);
    tcase_add_test(tc, test_limits_truncate_the_set_not_the_count);
    tcase_add_test(tc, test_big_snapshot_goes_in_parts);
    tcase_add_test(tc, test_malformed_and_stale_parts_are_dropped);
    tcase_add_test(tc, test_join_leave_sequences_and_reentrant_listeners);
    tcase_add_test(tc, test_sending_waits_for_room_and_gives_up_when_down);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
