/*
 * Integration tests of presence and occupancy (sl_presence over RabbitMQ, sl_sse's GET
 * /v1/channels and /v1/channels/{channel}/presence) and of the sluice_channels table the
 * persister keeps, against the real RabbitMQ and PostgreSQL that test.sh starts.
 *
 * The api and the persister run as processes (tu_start). The sse instances run in this process,
 * each on its loop on a thread of its own, so that readers can be registered through the C API
 * the streams use (sl_sse_presence, sl_presence_enter / leave / listen), on the loop's thread
 * (on_loop). "Killing" an instance freezes its loop: its heartbeats stop, its connections stay
 * open, as with a SIGSTOPped or hung process (the harder case for the others: nothing closes).
 *
 * SLUICE_TEST_ONLY=<part of a name> runs only the matching tests.
 */
#include <check.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sl_db.h"
#include "sl_http.h"
#include "sl_message.h"
#include "sl_sse.h"
#include "sl_streamclient.h"
#include "sl_testnet.h"
#include "sl_testsuite.h"
#include "sl_testutil.h"
#include "sl_uuid.h"
#include "sl_wsclient.h"

#define HB 250   /* SLUICE_PRESENCE_HEARTBEAT_MS of the instances here */
#define TTL 1500 /* SLUICE_PRESENCE_TTL_MS */

static tu_stack_t S;

/* ---- an sse instance in this process ------------------------------------------------------------- */

struct inst {
    char name[32];
    sl_http_server_t http;
    sl_sse_t *sse;
    int port;
    pthread_t thread;
    atomic_int stop, frozen;
    sem_t stopped;
    int cmd_r, cmd_w;
    h2o_socket_t *cmd_sock;
};

struct cmd {
    void (*fn)(struct inst *in, void *arg);
    void *arg;
    sem_t done;
};

static void on_cmd(h2o_socket_t *sock, const char *err)
{
    struct inst *in = sock->data;
    struct cmd *c;
    (void)err;
    while (read(in->cmd_r, &c, sizeof(c)) == (ssize_t)sizeof(c)) {
        c->fn(in, c->arg);
        sem_post(&c->done);
    }
}

/* Runs the instance's loop until stopped, then stops it as sluice-sse does (its loop ends, then
 * sl_sse_destroy, which sends a last snapshot), on its own thread. The thread then waits for the
 * process to end: h2o keeps memory it recycles per thread (buffers, pool chunks) in thread-local
 * lists, which LeakSanitizer would report if the thread ended. */
static void *loop_main(void *arg)
{
    struct inst *in = arg;
    while (!atomic_load(&in->stop)) {
        if (atomic_load(&in->frozen))
            tu_sleep_ms(5);
        else
            h2o_evloop_run(in->http.loop, 10);
    }
    h2o_socket_close(in->cmd_sock); /* closes cmd_r */
    sl_http_stop_listening(&in->http);
    h2o_evloop_run(in->http.loop, 0);
    sl_sse_destroy(in->sse);
    h2o_evloop_run(in->http.loop, 0);
    sl_http_dispose(&in->http);
    sem_post(&in->stopped);
    for (;;)
        pause();
    return NULL;
}

/* Runs fn(in, arg) on in's loop thread and waits for it. */
static void on_loop(struct inst *in, void (*fn)(struct inst *, void *), void *arg)
{
    struct cmd c;
    struct cmd *p = &c;
    c.fn = fn;
    c.arg = arg;
    ck_assert_int_eq(sem_init(&c.done, 0, 0), 0);
    ck_assert_int_eq(write(in->cmd_w, &p, sizeof(p)), (ssize_t)sizeof(p));
    sem_wait(&c.done);
    sem_destroy(&c.done);
}

/* tweak (may be NULL) changes the configuration before the instance starts. */
static void inst_start(struct inst *in, const char *name, sl_sse_channel_filter_cb filter,
                       void (*tweak)(sl_sse_conf_t *conf))
{
    int fds[2];
    memset(in, 0, sizeof(*in));
    snprintf(in->name, sizeof(in->name), "%s", name);
    sl_sse_conf_t conf = {
        .amqp_url = getenv("SLUICE_AMQP_URL"),
        .db_url = S.db_url,
        .live_exchange = S.live,
        .instance = in->name,
        .api_url = "",
        .db_conns = 2,
        .check_ms = 1000,
        .live_backlog = 100000,
        .recent = 1000,
        .seam_max = 10000,
        .presence_exchange = S.presence,
        .presence_heartbeat_ms = HB,
        .presence_ttl_ms = TTL,
        .channel_filter = filter,
        .stream = {.history_default = 20, .history_max = 1000, .replay_max = 10000, .out_max_bytes = 1 << 20,
                   .heartbeat_ms = 15000, .retry_ms = 3000, .max_conns = 100, .max_channels = 32,
                   .ws_max_frame = 4096, .ws_rate = 10, .ws_burst = 50, .history_concurrency = 32,
                   .history_per_client = 4},
    };
    if (tweak != NULL)
        tweak(&conf);
    sl_http_opts_t opts = {.ops_loopback_only = 0, .allowed_origins = NULL};
    sl_http_init(&in->http, sl_sse_handle, NULL, 64 * 1024);
    ck_assert_ptr_nonnull(in->sse = sl_sse_create(in->http.loop, &conf));
    in->http.data = in->sse;
    ck_assert_int_eq(sl_http_configure(&in->http, &opts), 0);
    in->port = tu_free_port();
    ck_assert_int_eq(sl_http_listen(&in->http, "127.0.0.1", in->port), 0);
    ck_assert_int_eq(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
    in->cmd_r = fds[0];
    in->cmd_w = fds[1];
    in->cmd_sock = h2o_evloop_socket_create(in->http.loop, in->cmd_r, H2O_SOCKET_FLAG_DONT_READ);
    in->cmd_sock->data = in;
    h2o_socket_read_start(in->cmd_sock, on_cmd);
    ck_assert_int_eq(sem_init(&in->stopped, 0, 0), 0);
    ck_assert_int_eq(pthread_create(&in->thread, NULL, loop_main, in), 0);
    pthread_detach(in->thread);
    char url[96];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/readyz", in->port);
    ck_assert_msg(tu_wait_status(url, 200, 20000), "%s is not ready", name);
}

/* A stop as sluice-sse's (see loop_main). */
static void inst_stop(struct inst *in)
{
    if (in->sse == NULL)
        return;
    atomic_store(&in->stop, 1);
    sem_wait(&in->stopped);
    sem_destroy(&in->stopped);
    close(in->cmd_w);
    in->sse = NULL;
}

/* ---- presence through the C API, on the loops ------------------------------------------------------ */

struct rec {
    pthread_mutex_t mu;
    char log[8192];
    int joins, leaves;
};

static void on_event(void *data, const sl_presence_event_t *ev)
{
    struct rec *r = data;
    pthread_mutex_lock(&r->mu);
    size_t n = strlen(r->log);
    snprintf(r->log + n, sizeof(r->log) - n, "%c%s:%s%s%s%s ", ev->type == SL_PRESENCE_JOIN ? '+' : '-', ev->channel,
             ev->user.id, ev->user.name ? "(" : "", ev->user.name ? ev->user.name : "", ev->user.name ? ")" : "");
    if (ev->type == SL_PRESENCE_JOIN)
        r->joins++;
    else
        r->leaves++;
    pthread_mutex_unlock(&r->mu);
}

static int rec_has(struct rec *r, const char *text)
{
    pthread_mutex_lock(&r->mu);
    int has = strstr(r->log, text) != NULL;
    pthread_mutex_unlock(&r->mu);
    return has;
}

struct enter_arg {
    const char *channel, *id, *name;
    sl_presence_entry_t *entry;
};

static void do_enter(struct inst *in, void *arg)
{
    struct enter_arg *a = arg;
    sl_presence_user_t u = {a->id, a->name};
    a->entry = sl_presence_enter(sl_sse_presence(in->sse), a->channel, a->id != NULL ? &u : NULL);
}

static sl_presence_entry_t *enter(struct inst *in, const char *channel, const char *id, const char *name)
{
    struct enter_arg a = {channel, id, name, NULL};
    on_loop(in, do_enter, &a);
    ck_assert_ptr_nonnull(a.entry);
    return a.entry;
}

static void do_leave(struct inst *in, void *arg)
{
    (void)in;
    sl_presence_leave(arg);
}

static void leave(struct inst *in, sl_presence_entry_t *e)
{
    on_loop(in, do_leave, e);
}

struct listen_arg {
    const char *channel;
    struct rec *rec;
    sl_presence_listener_t *l;
};

static void do_listen(struct inst *in, void *arg)
{
    struct listen_arg *a = arg;
    a->l = sl_presence_listen(sl_sse_presence(in->sse), a->channel, on_event, a->rec);
}

static void listen_on(struct inst *in, const char *channel, struct rec *r)
{
    struct listen_arg a = {channel, r, NULL};
    on_loop(in, do_listen, &a);
    ck_assert_ptr_nonnull(a.l);
}

/* ---- HTTP -------------------------------------------------------------------------------------------- */

static json_t *get_json(int port, const char *path, long *status)
{
    char url[256];
    tu_resp_t r;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    json_t *j = json_loads(r.body, 0, NULL);
    ck_assert_msg(j != NULL, "%s: not JSON: %s", path, r.body);
    if (status != NULL)
        *status = r.status;
    tu_resp_free(&r);
    return j;
}

/* The entry of channel in a GET /v1/channels answer, or NULL. */
static json_t *channel_row(json_t *answer, const char *channel)
{
    size_t i;
    json_t *row;
    json_array_foreach(json_object_get(answer, "channels"), i, row) {
        if (strcmp(json_string_value(json_object_get(row, "channel")), channel) == 0)
            return row;
    }
    return NULL;
}

static long long field(json_t *row, const char *name)
{
    return row != NULL ? json_integer_value(json_object_get(row, name)) : -1;
}

/* Subscribers of channel in GET /v1/channels of port (0 when absent). */
static long long subscribers(int port, const char *channel)
{
    json_t *j = get_json(port, "/v1/channels", NULL);
    json_t *row = channel_row(j, channel);
    long long n = row != NULL ? field(row, "subscribers") : 0;
    json_decref(j);
    return n;
}

/* Waits up to timeout_ms for subscribers(port, channel) == want; returns the ms it took, or -1. */
static long long wait_subscribers(int port, const char *channel, long long want, int timeout_ms)
{
    long long t0 = tu_now_ms();
    while (tu_now_ms() - t0 <= timeout_ms) {
        if (subscribers(port, channel) == want)
            return tu_now_ms() - t0;
        tu_sleep_ms(20);
    }
    return -1;
}

/* The presence set of channel on port as "id(name),id" in id order, and *truncated. */
static const char *presence_of(int port, const char *channel, int *truncated, long long *subs)
{
    static char out[1024];
    char path[128];
    long status;
    size_t i;
    json_t *u;
    snprintf(path, sizeof(path), "/v1/channels/%s/presence", channel);
    json_t *j = get_json(port, path, &status);
    ck_assert_int_eq(status, 200);
    ck_assert_str_eq(json_string_value(json_object_get(j, "channel")), channel);
    out[0] = '\0';
    json_array_foreach(json_object_get(j, "users"), i, u) {
        size_t n = strlen(out);
        const char *name = json_string_value(json_object_get(u, "name"));
        snprintf(out + n, sizeof(out) - n, "%s%s%s%s%s", i ? "," : "", json_string_value(json_object_get(u, "id")),
                 name ? "(" : "", name ? name : "", name ? ")" : "");
    }
    if (truncated != NULL)
        *truncated = json_is_true(json_object_get(j, "truncated"));
    if (subs != NULL)
        *subs = json_integer_value(json_object_get(j, "subscribers"));
    json_decref(j);
    return out;
}

static long long metric(int port, const char *name)
{
    char url[96];
    tu_resp_t r;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", port);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    char key[160];
    snprintf(key, sizeof(key), "\n%s ", name);
    const char *line = strstr(r.body, key);
    long long v = line != NULL ? (long long)atof(line + strlen(key)) : -1;
    tu_resp_free(&r);
    return v;
}

static void start_stack(const char *name)
{
    tu_stack_start_api(&S, name, NULL); /* it migrates the database at start */
    ck_assert_int_eq(sl_db_migrate_url(S.db_url, 20, NULL), SL_DB_OK);
}

/* ---- tests -------------------------------------------------------------------------------------------- */

START_TEST(test_occupancy_and_presence_across_two_instances)
{
    struct inst a, b;
    struct rec ra = {PTHREAD_MUTEX_INITIALIZER, "", 0, 0}, rb = {PTHREAD_MUTEX_INITIALIZER, "", 0, 0};
    start_stack("presence2");
    for (int i = 0; i < 3; i++)
        tu_post(&S, "alpha", "a message");
    for (int i = 0; i < 2; i++)
        tu_post(&S, "beta", "b message");
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 5, 20000), 5);

    inst_start(&a, "sse-a", NULL, NULL);
    inst_start(&b, "sse-b", NULL, NULL);
    listen_on(&a, "alpha", &ra);
    listen_on(&b, NULL, &rb);
    sl_presence_entry_t *alice1 = enter(&a, "alpha", "alice", "Alice"), *alice2 = enter(&a, "alpha", "alice", "Alice");
    enter(&a, "alpha", NULL, NULL);
    sl_presence_entry_t *gamma_bob = enter(&a, "gamma", "bob", NULL);
    sl_presence_entry_t *bob_b = enter(&b, "alpha", "bob", NULL);
    sl_presence_entry_t *carol = enter(&b, "alpha", "carol", "Carol");
    sl_presence_entry_t *beta_b = enter(&b, "beta", NULL, NULL);

    /* occupancy summed over both instances, on either */
    for (int i = 0; i < 2; i++) { /* anonymous readers go with the next heartbeat, users sooner */
        ck_assert_int_ge(wait_subscribers(i ? b.port : a.port, "alpha", 5, 5000), 0);
        ck_assert_int_ge(wait_subscribers(i ? b.port : a.port, "beta", 1, 5000), 0);
        ck_assert_int_ge(wait_subscribers(i ? b.port : a.port, "gamma", 1, 5000), 0);
    }
    for (int i = 0; i < 2; i++) {
        json_t *j = get_json(i ? b.port : a.port, "/v1/channels", NULL);
        json_t *alpha = channel_row(j, "alpha"), *beta = channel_row(j, "beta"), *gamma = channel_row(j, "gamma");
        ck_assert_int_eq(field(alpha, "subscribers"), 5);
        ck_assert_int_eq(field(alpha, "messages"), 3);
        ck_assert_int_eq(field(alpha, "last_seq"), tu_scalar(db, "SELECT max(seq) FROM messages WHERE channel = 'alpha'"));
        ck_assert_int_eq(field(beta, "subscribers"), 1);
        ck_assert_int_eq(field(beta, "messages"), 2);
        ck_assert_int_eq(field(beta, "last_seq"), tu_scalar(db, "SELECT max(seq) FROM messages WHERE channel = 'beta'"));
        ck_assert_int_eq(field(gamma, "subscribers"), 1); /* read, never posted to */
        ck_assert_int_eq(field(gamma, "messages"), 0);
        ck_assert_int_eq(field(gamma, "last_seq"), 0);
        ck_assert_int_eq(json_array_size(json_object_get(j, "channels")), 3); /* in channel order */
        ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(j, "channels"), 0), "channel")),
                         "alpha");
        ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(j, "channels"), 2), "channel")),
                         "gamma");
        ck_assert(json_is_null(json_object_get(j, "next")));
        json_decref(j);
        /* the presence set: the union, each user once however many tabs */
        int truncated = -1;
        long long subs = -1;
        ck_assert_str_eq(presence_of(i ? b.port : a.port, "alpha", &truncated, &subs), "alice(Alice),bob,carol(Carol)");
        ck_assert_int_eq(truncated, 0);
        ck_assert_int_eq(subs, 5);
        ck_assert_str_eq(presence_of(i ? b.port : a.port, "beta", NULL, NULL), "");
    }
    ck_assert(rec_has(&ra, "+alpha:alice(Alice) "));
    ck_assert(rec_has(&ra, "+alpha:bob "));
    ck_assert(rec_has(&ra, "+alpha:carol(Carol) "));
    ck_assert_int_eq(ra.joins, 3);
    ck_assert(rec_has(&rb, "+gamma:bob "));
    ck_assert_int_eq(rb.joins, 4);
    ck_assert_int_eq(metric(a.port, "sluice_sse_occupancy"), 4);
    ck_assert_int_eq(metric(a.port, "sluice_sse_presence_users"), 2);
    ck_assert_int_eq(metric(a.port, "sluice_sse_presence_channels"), 2);
    ck_assert_int_eq(metric(a.port, "sluice_sse_presence_instances"), 1);

    /* alice's tabs move from a to b: nobody sees her leave */
    leave(&a, alice1);
    sl_presence_entry_t *alice_b = enter(&b, "alpha", "alice", "Alice");
    tu_sleep_ms(100);
    leave(&a, alice2);
    leave(&a, gamma_bob);
    tu_sleep_ms(4 * HB); /* a's grace for her ends */
    ck_assert_int_eq(ra.leaves, 0);
    ck_assert(rec_has(&rb, "-gamma:bob "));
    ck_assert_str_eq(presence_of(a.port, "alpha", NULL, NULL), "alice(Alice),bob,carol(Carol)");
    ck_assert_int_eq(wait_subscribers(a.port, "alpha", 4, 2000) >= 0, 1);

    /* carol closes her only tab: a leave everywhere once b's grace is over */
    long long t0 = tu_now_ms();
    leave(&b, carol);
    while (!rec_has(&ra, "-alpha:carol(Carol) ") && tu_now_ms() - t0 < 5000)
        tu_sleep_ms(10);
    ck_assert(rec_has(&ra, "-alpha:carol(Carol) "));
    printf("presence: a leave on another instance seen after %lld ms (grace %d ms)\n", tu_now_ms() - t0, HB);
    ck_assert_int_eq(ra.leaves, 1);

    /* b hangs (no heartbeat, connections open): a drops its readers within the TTL */
    ck_assert_int_eq(subscribers(a.port, "alpha"), 3); /* a's anonymous one, bob and alice on b */
    t0 = tu_now_ms();
    atomic_store(&b.frozen, 1);
    long long took = wait_subscribers(a.port, "alpha", 1, 3 * TTL);
    ck_assert_int_ge(took, 0);
    printf("presence: a frozen instance dropped after %lld ms (TTL %d ms, heartbeat %d ms)\n", took, TTL, HB);
    /* its last snapshot was at most one heartbeat (plus a tick) old when it froze */
    ck_assert_int_le(took, TTL + 500);
    ck_assert_int_ge(took, TTL - 2 * HB - 100);
    while ((!rec_has(&ra, "-alpha:bob ") || !rec_has(&ra, "-alpha:alice(Alice) ")) && tu_now_ms() - t0 < 5000)
        tu_sleep_ms(10);
    ck_assert(rec_has(&ra, "-alpha:bob "));
    ck_assert(rec_has(&ra, "-alpha:alice(Alice) "));
    ck_assert_str_eq(presence_of(a.port, "alpha", NULL, NULL), "");
    ck_assert_int_eq(metric(a.port, "sluice_sse_presence_instances"), 0);
    ck_assert_int_ge(metric(a.port, "sluice_sse_presence_instances_expired_total"), 1);

    /* it comes back: its next snapshot restores its readers */
    atomic_store(&b.frozen, 0);
    ck_assert_int_ge(wait_subscribers(a.port, "alpha", 3, 3000), 0);
    ck_assert_str_eq(presence_of(a.port, "alpha", NULL, NULL), "alice(Alice),bob");

    /* a stop: its streams end (sl_sse_close_streams), then its last snapshot takes the counts away
     * at once; its users stay until the TTL (a client reconnecting to another instance meanwhile
     * shows no leave) */
    t0 = tu_now_ms();
    leave(&b, bob_b);
    leave(&b, alice_b);
    leave(&b, beta_b);
    inst_stop(&b);
    ck_assert_int_ge(wait_subscribers(a.port, "alpha", 1, TTL / 2), 0);
    if (tu_now_ms() - t0 < TTL - 300)
        ck_assert_str_eq(presence_of(a.port, "alpha", NULL, NULL), "alice(Alice),bob");
    tu_sleep_ms(TTL + 300);
    ck_assert_str_eq(presence_of(a.port, "alpha", NULL, NULL), "");
    inst_stop(&a);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* Hides c2 (403) and c4 (401), as a token without those channels would. */
static int private_filter(void *data, h2o_req_t *req, const char *channel)
{
    (void)data;
    (void)req;
    return strcmp(channel, "c2") == 0 ? 403 : strcmp(channel, "c4") == 0 ? 401 : 0;
}

/* Every channel of /v1/channels on port, page by page of limit, as "name:subscribers,..." */
static const char *all_pages(int port, int limit, int *pages)
{
    static char out[1024];
    char path[160], after[80] = "";
    out[0] = '\0';
    *pages = 0;
    for (;;) {
        long status;
        size_t i;
        json_t *row;
        snprintf(path, sizeof(path), "/v1/channels?limit=%d%s%s", limit, after[0] ? "&after=" : "", after);
        json_t *j = get_json(port, path, &status);
        ck_assert_int_eq(status, 200);
        ck_assert_int_le(json_array_size(json_object_get(j, "channels")), (size_t)limit);
        json_array_foreach(json_object_get(j, "channels"), i, row) {
            size_t n = strlen(out);
            snprintf(out + n, sizeof(out) - n, "%s%s:%lld", n ? "," : "",
                     json_string_value(json_object_get(row, "channel")), field(row, "subscribers"));
        }
        (*pages)++;
        json_t *next = json_object_get(j, "next");
        ck_assert(json_is_null(next) || json_is_string(next));
        if (json_is_null(next)) {
            json_decref(j);
            return out;
        }
        snprintf(after, sizeof(after), "%s", json_string_value(next));
        json_decref(j);
        ck_assert_int_lt(*pages, 50);
    }
}

static void expect_error(int port, const char *method, const char *path, long want, const char *code)
{
    char url[256];
    tu_resp_t r;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    ck_assert_int_eq(tu_http(method, url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_msg(r.status == want, "%s %s: %ld, not %ld (%s)", method, path, r.status, want, r.body);
    char got[64] = "";
    json_t *j = json_loads(r.body, 0, NULL);
    ck_assert_msg(j != NULL, "%s: not JSON: %s", path, r.body);
    json_t *e = json_object_get(json_object_get(j, "error"), "code");
    snprintf(got, sizeof(got), "%s", json_is_string(e) ? json_string_value(e) : "");
    json_decref(j);
    tu_resp_free(&r);
    ck_assert_msg(strcmp(got, code) == 0, "%s %s: code %s, not %s", method, path, got, code);
}

START_TEST(test_channels_pages_errors_and_private_channels)
{
    struct inst a, p;
    int pages;
    start_stack("presencepages");
    const char *names[] = {"c1", "c2", "c3", "c4", "c5", "c_6", "c-7"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        tu_post(&S, names[i], "hello");
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 7, 20000), 7);
    inst_start(&a, "sse-pages", NULL, NULL);
    enter(&a, "c3", NULL, NULL);
    enter(&a, "zz-live", "dora", NULL); /* read, never posted to */
    enter(&a, "c-0", NULL, NULL);
    ck_assert_int_ge(wait_subscribers(a.port, "zz-live", 1, 5000), 0);
    /* byte order ('-' < '0'..'9' < '_'), the same in the database and for the live channels */
    const char *want = "c-0:1,c-7:0,c1:0,c2:0,c3:1,c4:0,c5:0,c_6:0,zz-live:1";
    for (int limit = 1; limit <= 10; limit++) {
        ck_assert_str_eq(all_pages(a.port, limit, &pages), want);
        ck_assert_int_ge(pages, (9 + limit - 1) / limit); /* a full last page may be followed by an empty one */
        ck_assert_int_le(pages, (9 + limit - 1) / limit + 1);
    }
    ck_assert_str_eq(all_pages(a.port, 1000, &pages), want);

    expect_error(a.port, "GET", "/v1/channels?limit=0", 400, "invalid_limit");
    expect_error(a.port, "GET", "/v1/channels?limit=1001", 400, "invalid_limit");
    expect_error(a.port, "GET", "/v1/channels?limit=x", 400, "invalid_limit");
    expect_error(a.port, "GET", "/v1/channels?after=Bad", 400, "invalid_cursor");
    expect_error(a.port, "GET", "/v1/channels/Bad%20Name/presence", 400, "invalid_channel");
    expect_error(a.port, "GET", "/v1/channels/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/presence", 400,
                 "invalid_channel"); /* 65 characters */
    expect_error(a.port, "POST", "/v1/channels", 405, "method_not_allowed");
    expect_error(a.port, "POST", "/v1/channels/c1/presence", 405, "method_not_allowed");
    expect_error(a.port, "GET", "/v1/channels/c1", 404, "not_found");
    long long subs = -1;
    ck_assert_str_eq(presence_of(a.port, "nobody-here", NULL, &subs), "");
    ck_assert_int_eq(subs, 0);
    ck_assert_str_eq(presence_of(a.port, "zz-live", NULL, &subs), "dora");
    ck_assert_int_eq(subs, 1);
    /* "#zz-live" (%23 in a path) is zz-live, as everywhere */
    long status;
    json_t *j = get_json(a.port, "/v1/channels/%23zz-live/presence", &status);
    ck_assert_int_eq(status, 200);
    ck_assert_str_eq(json_string_value(json_object_get(j, "channel")), "zz-live");
    ck_assert_int_eq(json_array_size(json_object_get(j, "users")), 1);
    json_decref(j);
    expect_error(a.port, "GET", "/v1/channels/%23%23zz/presence", 400, "invalid_channel");
    j = get_json(a.port, "/v1/channels?after=%23c5&limit=1", &status);
    ck_assert_int_eq(status, 200);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(j, "channels"), 0), "channel")),
                     "c_6");
    json_decref(j);

    /* private channels: left out of the list (no page's cursor names one), refused one by one */
    inst_start(&p, "sse-private", private_filter, NULL);
    ck_assert_int_ge(wait_subscribers(p.port, "zz-live", 1, 5000), 0);
    const char *visible = "c-0:1,c-7:0,c1:0,c3:1,c5:0,c_6:0,zz-live:1";
    for (int limit = 1; limit <= 8; limit++) {
        ck_assert_str_eq(all_pages(p.port, limit, &pages), visible);
        ck_assert_int_le(pages, 8);
    }
    expect_error(p.port, "GET", "/v1/channels/c2/presence", 403, "forbidden");
    expect_error(p.port, "GET", "/v1/channels/c4/presence", 401, "unauthorized");
    ck_assert_str_eq(presence_of(p.port, "c3", NULL, &subs), "");
    ck_assert_int_eq(subs, 1);
    inst_stop(&p);
    inst_stop(&a);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- real streams: occupancy, presence events ------------------------------------------------------- */

/* The next event of s is event (SSE event:, NDJSON type), with SSE id id (-1: no id: line) and,
 * unless NULL, exactly data (SSE data:, or the NDJSON line); seq (>= 0) is its data's seq. */
static void expect_ev(tu_stream_t *s, const char *who, const char *event, long long id, long long seq, const char *data)
{
    tu_sev_t ev;
    ck_assert_msg(tu_stream_next_event(s, &ev, 10000), "%s: no %s event (eof %d)", who, event, s->eof);
    ck_assert_msg(strcmp(ev.event, event) == 0, "%s: want %s, got %s: %s", who, event, ev.event, ev.data);
    ck_assert_msg(ev.id == id, "%s: %s with id %lld, not %lld: %s", who, event, ev.id, id, ev.data);
    if (seq >= 0)
        ck_assert_msg(ev.seq == seq, "%s: %s of seq %lld, not %lld", who, event, ev.seq, seq);
    if (data != NULL)
        ck_assert_msg(strcmp(ev.data, data) == 0, "%s: want %s, got %s", who, data, ev.data);
}

/* The next two events of s are a and b (data exactly), in either order (they come from two
 * instances' timers). */
static void expect_two(tu_stream_t *s, const char *who, const char *a, const char *b)
{
    tu_sev_t ev;
    int got_a = 0, got_b = 0;
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(tu_stream_next_event(s, &ev, 10000), "%s: event %d of 2 missing", who, i + 1);
        ck_assert_msg(ev.id == -1, "%s: a presence event with an id: %s", who, ev.data);
        got_a |= strcmp(ev.data, a) == 0;
        got_b |= strcmp(ev.data, b) == 0;
    }
    ck_assert_msg(got_a && got_b, "%s: want %s and %s", who, a, b);
}

static void expect_quiet(tu_stream_t *s, const char *who, int ms)
{
    tu_sev_t ev;
    ck_assert_msg(!tu_stream_next_event(s, &ev, ms), "%s: unexpected %s event: %s", who, ev.event, ev.data);
}

/* The next text frame of w, or NULL when none came within timeout_ms. */
static const char *ws_text(tu_ws_t *w, int timeout_ms)
{
    tu_wsmsg_t m;
    if (tu_ws_recv_data(w, &m, timeout_ms) != 1)
        return NULL;
    ck_assert_msg(m.opcode == TU_WS_TEXT, "frame opcode %d (close code %d)", m.opcode, m.close_code);
    return m.data;
}

static void ws_expect_text(tu_ws_t *w, const char *who, const char *text)
{
    const char *t = ws_text(w, 10000);
    ck_assert_msg(t != NULL && strcmp(t, text) == 0, "%s: want %s, got %s", who, text, t != NULL ? t : "nothing");
}

/* The next frame of w is of type (and, unless NULL, key is value); returns it (json_decref it). */
static json_t *ws_expect(tu_ws_t *w, const char *who, const char *type, const char *key, const char *value)
{
    const char *t = ws_text(w, 10000);
    ck_assert_msg(t != NULL, "%s: no %s frame", who, type);
    json_t *o = json_loads(t, 0, NULL);
    ck_assert_msg(o != NULL, "%s: not JSON: %s", who, t);
    json_t *ty = json_object_get(o, "type"), *v = key != NULL ? json_object_get(o, key) : NULL;
    ck_assert_msg(json_is_string(ty) && strcmp(json_string_value(ty), type) == 0, "%s: want %s, got %s", who, type, t);
    ck_assert_msg(key == NULL || (json_is_string(v) && strcmp(json_string_value(v), value) == 0), "%s: want %s %s in %s",
                  who, key, value, t);
    return o;
}

static void ws_cmd(tu_ws_t *w, const char *command, const char *channel, const char *extra)
{
    char text[256];
    snprintf(text, sizeof(text), "{\"command\":\"%s\",\"channel\":\"%s\"%s}", command, channel, extra);
    ck_assert_int_eq(tu_ws_send_text(w, text), 0);
}

/* Subscribes w to channel (extra: more members) and takes its subscribed and history frames. */
static void ws_sub(tu_ws_t *w, const char *who, const char *channel, const char *extra)
{
    ws_cmd(w, "subscribe", channel, extra);
    json_decref(ws_expect(w, who, "subscribed", "channel", channel));
    json_decref(ws_expect(w, who, "history", "channel", channel));
}

static void stream_ok(tu_stream_t *st, int port, const char *target, const char *headers)
{
    tu_stream_opts_t o = {headers, 0, 0};
    ck_assert_int_eq(tu_stream_open(st, port, target, &o, 5000), 0);
    ck_assert_msg(st->status == 200, "%s: %ld %s", target, st->status, st->body != NULL ? st->body : "");
}

static int wait_metric(int port, const char *name, long long want, int timeout_ms)
{
    long long t0 = tu_now_ms();
    while (metric(port, name) != want) {
        if (tu_now_ms() - t0 > timeout_ms)
            return 0;
        tu_sleep_ms(20);
    }
    return 1;
}

static int wait_metric_ge(int port, const char *name, long long want, int timeout_ms)
{
    long long t0 = tu_now_ms();
    while (metric(port, name) < want) {
        if (tu_now_ms() - t0 > timeout_ms)
            return 0;
        tu_sleep_ms(20);
    }
    return 1;
}

static long long last_seq(PGconn *db)
{
    return tu_scalar(db, "SELECT max(seq) FROM messages");
}

#define J_ALICE "{\"channel\":\"room\",\"user\":{\"id\":\"alice\",\"name\":\"Alice\"}}"
#define J_BOB "{\"channel\":\"other\",\"user\":{\"id\":\"bob\"}}"
#define T_ALICE(type) "{\"type\":\"" type "\",\"channel\":\"room\",\"user\":{\"id\":\"alice\",\"name\":\"Alice\"}}"
#define T_BOB(type) "{\"type\":\"" type "\",\"channel\":\"other\",\"user\":{\"id\":\"bob\"}}"

/* Streams and WebSocket subscriptions on two instances are counted in GET /v1/channels (summed)
 * from their start to their end, whatever ends them; a stream of every channel is counted apart.
 * Those that asked for presence get the joins and leaves of users (anonymous readers make none),
 * framed for their transport; the others get none. */
START_TEST(test_real_streams_count_and_get_presence_events)
{
    struct inst a, b;
    tu_stream_t sse, nd, all, bad;
    tu_ws_t wa, wb;
    start_stack("presencestreams");
    tu_post(&S, "room", "one");
    tu_post(&S, "room", "two");
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 2, 20000), 2);
    long long seq = last_seq(db);
    inst_start(&a, "sse-a", NULL, NULL);
    inst_start(&b, "sse-b", NULL, NULL);

    ck_assert_int_eq(tu_stream_open(&bad, a.port, "/v1/stream?channels=room&presence=yes", NULL, 5000), 0);
    ck_assert_int_eq(bad.status, 400);
    ck_assert_ptr_nonnull(strstr(bad.body, "\"invalid_presence\""));
    tu_stream_close(&bad);

    /* anonymous readers of room on both instances, by every transport */
    stream_ok(&sse, a.port, "/v1/stream?channels=room&presence=1&history=1", NULL);
    expect_ev(&sse, "sse", "message", seq, seq, NULL);
    stream_ok(&nd, b.port, "/v1/stream?channels=room,other&presence=true&format=ndjson&history=0", NULL);
    ck_assert_int_eq(tu_ws_open(&wa, a.port, "/v1/ws", 5000), 0);
    ws_cmd(&wa, "subscribe", "room", ",\"presence\":\"yes\"");
    json_decref(ws_expect(&wa, "wa", "error", "code", "invalid_presence"));
    ws_sub(&wa, "wa", "room", ",\"presence\":true,\"history\":0");
    ck_assert_int_eq(tu_ws_open(&wb, b.port, "/v1/ws", 5000), 0);
    ws_sub(&wb, "wb", "room", ",\"presence\":false,\"history\":0");
    ws_sub(&wb, "wb", "other", ",\"history\":0");
    for (int i = 0; i < 2; i++) {
        int port = i ? b.port : a.port;
        ck_assert_int_ge(wait_subscribers(port, "room", 4, 5000), 0);
        ck_assert_int_ge(wait_subscribers(port, "other", 2, 5000), 0);
    }
    ck_assert_int_eq(metric(a.port, "sluice_sse_occupancy"), 2);
    ck_assert_int_eq(metric(b.port, "sluice_sse_occupancy"), 4);

    /* a stream of every channel is in no channel's occupancy, counted apart */
    stream_ok(&all, a.port, "/v1/stream?presence=1&history=0", NULL);
    ck_assert_int_eq(metric(a.port, "sluice_sse_all_channel_streams"), 1);
    ck_assert_int_eq(metric(a.port, "sluice_sse_presence_listeners"), 3);
    ck_assert_int_eq(metric(b.port, "sluice_sse_presence_listeners"), 1);
    tu_sleep_ms(2 * HB); /* a's next snapshot went out */
    ck_assert_int_eq(subscribers(b.port, "room"), 4);
    ck_assert_int_eq(metric(a.port, "sluice_sse_occupancy"), 2);

    /* anonymous readers are in no presence set and make no join */
    ck_assert_str_eq(presence_of(a.port, "room", NULL, NULL), "");
    expect_quiet(&sse, "sse", 200);
    expect_quiet(&nd, "ndjson", 200);
    expect_quiet(&all, "all", 200);
    ck_assert_ptr_null(ws_text(&wa, 200));

    /* users (the C API, as readers with a token): alice on b, bob without a name on a */
    sl_presence_entry_t *alice = enter(&b, "room", "alice", "Alice");
    expect_ev(&sse, "sse", "join", -1, -1, J_ALICE); /* from the other instance */
    expect_ev(&nd, "ndjson", "join", -1, -1, T_ALICE("join"));
    ws_expect_text(&wa, "wa", T_ALICE("join"));
    expect_ev(&all, "all", "join", -1, -1, J_ALICE);
    sl_presence_entry_t *bob = enter(&a, "other", "bob", NULL);
    expect_ev(&nd, "ndjson", "join", -1, -1, T_BOB("join"));
    expect_ev(&all, "all", "join", -1, -1, J_BOB);
    ck_assert_str_eq(presence_of(b.port, "room", NULL, NULL), "alice(Alice)");

    /* the next message, with its id; those that asked for nothing got no presence */
    tu_post(&S, "room", "three");
    ck_assert_int_eq(tu_wait_rows(db, 3, 20000), 3);
    seq = last_seq(db);
    expect_ev(&sse, "sse", "message", seq, seq, NULL);
    expect_ev(&nd, "ndjson", "message", -1, seq, NULL);
    expect_ev(&all, "all", "message", seq, seq, NULL);
    json_decref(ws_expect(&wa, "wa", "message", NULL, NULL));
    json_decref(ws_expect(&wb, "wb", "message", NULL, NULL));

    /* their leaves, once the grace is over */
    leave(&b, alice);
    leave(&a, bob);
    expect_ev(&sse, "sse", "leave", -1, -1, J_ALICE);
    expect_two(&nd, "ndjson", T_ALICE("leave"), T_BOB("leave"));
    ws_expect_text(&wa, "wa", T_ALICE("leave"));
    expect_two(&all, "all", J_ALICE, J_BOB);
    ck_assert_int_eq(metric(a.port, "sluice_sse_presence_events_sent_total"), 2 + 2 + 4);
    ck_assert_int_eq(metric(b.port, "sluice_sse_presence_events_sent_total"), 4);
    ck_assert_ptr_null(ws_text(&wb, 200));

    /* the counts go as the readers end: an unsubscribe, a closed WebSocket, closed streams */
    ws_cmd(&wa, "unsubscribe", "room", "");
    json_decref(ws_expect(&wa, "wa", "unsubscribed", "channel", "room"));
    ck_assert_int_eq(metric(a.port, "sluice_sse_presence_listeners"), 2);
    for (int i = 0; i < 2; i++)
        ck_assert_int_ge(wait_subscribers(i ? b.port : a.port, "room", 3, 5000), 0);
    tu_ws_close(&wb);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_ge(wait_subscribers(i ? b.port : a.port, "room", 2, 5000), 0);
        ck_assert_int_ge(wait_subscribers(i ? b.port : a.port, "other", 1, 5000), 0);
    }
    tu_stream_close(&sse);
    tu_stream_close(&nd);
    tu_stream_close(&all);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_ge(wait_subscribers(i ? b.port : a.port, "room", 0, 5000), 0);
        ck_assert_int_ge(wait_subscribers(i ? b.port : a.port, "other", 0, 5000), 0);
    }
    ck_assert(wait_metric(a.port, "sluice_sse_all_channel_streams", 0, 5000));
    ck_assert_int_eq(metric(a.port, "sluice_sse_presence_listeners"), 0);
    ck_assert_int_eq(metric(b.port, "sluice_sse_presence_listeners"), 0);
    ck_assert_int_eq(metric(a.port, "sluice_sse_occupancy"), 0);
    ck_assert_int_eq(metric(b.port, "sluice_sse_occupancy"), 0);
    tu_ws_close(&wa);
    inst_stop(&b);
    inst_stop(&a);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* Histories from the database, with connections to spare for GET /v1/channels (the same pool). */
static void history_from_db(sl_sse_conf_t *c)
{
    c->recent = 0;
    c->db_conns = 6;
    c->db_query_timeout_ms = 30000;
}

static void db_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
}

/* Presence events wait for the history (held up here by a lock on messages): a stream gets its
 * messages first, then the join, never the other way round; a WebSocket its history frame first.
 * They carry no id, so the resume position (Last-Event-ID) stays the last message's. */
START_TEST(test_presence_events_follow_the_history_and_leave_resume_alone)
{
    struct inst a;
    tu_stream_t sse, again;
    tu_ws_t w;
    char hdr[64];
    start_stack("presenceorder");
    for (int i = 0; i < 3; i++)
        tu_post(&S, "room", "before");
    PGconn *db = tu_db(&S), *locker = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 3, 20000), 3);
    long long s3 = last_seq(db);
    inst_start(&a, "sse-order", NULL, history_from_db);

    db_exec(locker, "BEGIN");
    db_exec(locker, "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE");
    stream_ok(&sse, a.port, "/v1/stream?channels=room&presence=1&since=0", NULL);
    ck_assert_int_eq(tu_ws_open(&w, a.port, "/v1/ws", 5000), 0);
    ws_cmd(&w, "subscribe", "room", ",\"presence\":true,\"history\":3");
    json_decref(ws_expect(&w, "ws", "subscribed", "channel", "room"));
    ck_assert_int_ge(wait_subscribers(a.port, "room", 2, 5000), 0); /* counted while they read */
    sl_presence_entry_t *carol = enter(&a, "room", "carol", "Carol");
    expect_quiet(&sse, "sse", 3 * HB); /* the join waits */
    ck_assert_ptr_null(ws_text(&w, 100));
    db_exec(locker, "COMMIT");

    const char *join = "{\"channel\":\"room\",\"user\":{\"id\":\"carol\",\"name\":\"Carol\"}}";
    for (long long q = s3 - 2; q <= s3; q++)
        expect_ev(&sse, "sse", "message", q, q, NULL);
    expect_ev(&sse, "sse", "join", -1, -1, join);
    json_t *h = ws_expect(&w, "ws", "history", "channel", "room");
    ck_assert_int_eq(json_array_size(json_object_get(h, "messages")), 3);
    json_decref(h);
    ws_expect_text(&w, "ws", "{\"type\":\"join\",\"channel\":\"room\",\"user\":{\"id\":\"carol\",\"name\":\"Carol\"}}");

    /* a message, a leave (no id), a message: ids go on from message to message */
    tu_post(&S, "room", "four");
    ck_assert_int_eq(tu_wait_rows(db, 4, 20000), 4);
    long long s4 = last_seq(db);
    expect_ev(&sse, "sse", "message", s4, s4, NULL);
    leave(&a, carol);
    expect_ev(&sse, "sse", "leave", -1, -1, join);
    tu_post(&S, "room", "five");
    ck_assert_int_eq(tu_wait_rows(db, 5, 20000), 5);
    long long s5 = last_seq(db);
    expect_ev(&sse, "sse", "message", s5, s5, NULL);
    tu_stream_close(&sse);

    /* an EventSource that dropped after the leave resumes after s4 (the leave set no id): s5, once */
    snprintf(hdr, sizeof(hdr), "Last-Event-ID: %lld\r\n", s4);
    stream_ok(&again, a.port, "/v1/stream?channels=room&presence=1", hdr);
    expect_ev(&again, "resume", "message", s5, s5, NULL);
    expect_quiet(&again, "resume", 500);
    tu_stream_close(&again);
    tu_ws_close(&w);
    ck_assert_int_ge(wait_subscribers(a.port, "room", 0, 5000), 0);
    inst_stop(&a);
    PQfinish(locker);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

static void failing_histories(sl_sse_conf_t *c)
{
    history_from_db(c);
    c->db_query_timeout_ms = 1000;
    c->stream.history_per_client = 2;
}

/* Subscriptions dropped by the server leave their channels: history_unavailable (the query timed
 * out behind a lock), a stream whose history failed; one refused with history_busy never counts. */
START_TEST(test_dropped_subscriptions_leave)
{
    struct inst a;
    tu_ws_t w;
    tu_stream_t st, busy;
    start_stack("presencedrop");
    tu_post(&S, "room", "m");
    tu_post(&S, "busy", "m");
    PGconn *db = tu_db(&S), *locker = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 2, 20000), 2);
    inst_start(&a, "sse-drop", NULL, failing_histories);

    db_exec(locker, "BEGIN");
    db_exec(locker, "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE");
    ck_assert_int_eq(tu_ws_open(&w, a.port, "/v1/ws", 5000), 0);
    ws_cmd(&w, "subscribe", "room", ",\"presence\":true,\"history\":1");
    json_decref(ws_expect(&w, "ws", "subscribed", "channel", "room"));
    ws_cmd(&w, "subscribe", "busy", ",\"history\":1");
    json_decref(ws_expect(&w, "ws", "subscribed", "channel", "busy"));
    ws_cmd(&w, "subscribe", "third", ",\"history\":1"); /* over the client's 2 histories at once */
    json_decref(ws_expect(&w, "ws", "error", "code", "history_busy"));
    ck_assert_int_eq(tu_stream_open(&busy, a.port, "/v1/stream?channels=third&history=1", NULL, 5000), 0);
    ck_assert_int_eq(busy.status, 503);
    tu_stream_close(&busy);
    ck_assert_int_ge(wait_subscribers(a.port, "room", 1, 5000), 0);
    ck_assert_int_ge(wait_subscribers(a.port, "busy", 1, 5000), 0);
    ck_assert_int_eq(subscribers(a.port, "third"), 0);
    ck_assert_int_eq(metric(a.port, "sluice_sse_presence_listeners"), 1);
    for (int i = 0; i < 2; i++) /* the queries time out: both subscriptions are dropped */
        json_decref(ws_expect(&w, "ws", "error", "code", "history_unavailable"));
    ck_assert_int_ge(wait_subscribers(a.port, "room", 0, 5000), 0);
    ck_assert_int_ge(wait_subscribers(a.port, "busy", 0, 5000), 0);
    ck_assert_int_eq(metric(a.port, "sluice_sse_presence_listeners"), 0);

    /* a stream whose history fails ends, and is no longer counted */
    stream_ok(&st, a.port, "/v1/stream?channels=room&history=1", NULL);
    ck_assert_int_ge(wait_subscribers(a.port, "room", 1, 5000), 0);
    tu_stream_drain(&st, 10000);
    ck_assert_msg(st.eof || st.err, "the stream whose history failed is still open");
    tu_stream_close(&st);
    ck_assert_int_ge(wait_subscribers(a.port, "room", 0, 5000), 0);
    db_exec(locker, "COMMIT");

    /* subscribing again works, and a closed socket leaves */
    ws_sub(&w, "ws", "room", ",\"presence\":true,\"history\":1");
    ck_assert_int_ge(wait_subscribers(a.port, "room", 1, 5000), 0);
    tu_ws_close(&w);
    ck_assert_int_ge(wait_subscribers(a.port, "room", 0, 5000), 0);
    ck_assert_int_eq(metric(a.port, "sluice_sse_presence_listeners"), 0);
    inst_stop(&a);
    PQfinish(locker);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- presence events and the output limit --------------------------------------------------------- */

enum { CHURN_USERS = 1000, CHURN_ROUNDS = 30 };

static void churn_conf(sl_sse_conf_t *c)
{
    history_from_db(c);
    c->stream.out_max_bytes = 64 * 1024;
    c->presence_grace_ms = 1; /* a user who leaves is gone at once: every round joins and leaves anew */
}

struct churn {
    sl_presence_entry_t *e[CHURN_USERS];
    int round;
};

static void do_churn_enter(struct inst *in, void *arg)
{
    struct churn *c = arg;
    char id[32], name[256];
    for (int i = 0; i < CHURN_USERS; i++) {
        snprintf(id, sizeof(id), "u%d-%d", c->round, i);
        snprintf(name, sizeof(name), "%0200d", i); /* ~270 bytes per event */
        sl_presence_user_t u = {id, name};
        c->e[i] = sl_presence_enter(sl_sse_presence(in->sse), "flood", &u);
    }
}

static void do_churn_leave(struct inst *in, void *arg)
{
    struct churn *c = arg;
    (void)in;
    for (int i = 0; i < CHURN_USERS; i++)
        sl_presence_leave(c->e[i]);
}

struct counter {
    tu_stream_t st;
    atomic_int events, stop, ended;
    pthread_t thread;
};

static void *count_events(void *arg)
{
    struct counter *c = arg;
    tu_sev_t ev;
    while (!atomic_load(&c->stop)) {
        int r = tu_stream_next(&c->st, &ev, 200);
        if (r < 0) {
            atomic_store(&c->ended, 1);
            break;
        }
        if (r == 1 && (strcmp(ev.event, "join") == 0 || strcmp(ev.event, "leave") == 0))
            atomic_fetch_add(&c->events, 1);
    }
    return NULL;
}

/* Joins and leaves count against SLUICE_SSE_OUT_MAX_BYTES as any event: a presence stream that does
 * not read is cut off (and leaves), and so is one whose events wait for its history (held up by a
 * lock) past the limit; one beside them that reads gets every event. */
START_TEST(test_presence_events_count_against_the_output_limit)
{
    struct inst a;
    static struct churn ch;
    static struct counter reader;
    tu_stream_t slow, held;
    start_stack("presenceflood");
    tu_post(&S, "flood", "m");
    PGconn *db = tu_db(&S), *locker = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 1, 20000), 1);
    inst_start(&a, "sse-flood", NULL, churn_conf);
    tu_stream_opts_t o = {NULL, 4096, 1};
    ck_assert_int_eq(tu_stream_open(&slow, a.port, "/v1/stream?channels=flood&presence=1&history=0", &o, 5000), 0);
    stream_ok(&reader.st, a.port, "/v1/stream?channels=flood&presence=1&history=0&format=ndjson", NULL);
    ck_assert(wait_metric(a.port, "sluice_sse_presence_listeners", 2, 5000));
    ck_assert_int_eq(pthread_create(&reader.thread, NULL, count_events, &reader), 0);

    /* a round of 1 000 joins and leaves (~500 KB) waits for a history that does not come */
    db_exec(locker, "BEGIN");
    db_exec(locker, "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE");
    stream_ok(&held, a.port, "/v1/stream?channels=flood&presence=1&since=0", NULL);
    ck_assert(wait_metric(a.port, "sluice_sse_presence_listeners", 3, 5000));
    on_loop(&a, do_churn_enter, &ch);
    on_loop(&a, do_churn_leave, &ch);
    /* (the stream that does not read may go in this round too) */
    ck_assert(wait_metric_ge(a.port, "sluice_sse_slow_client_disconnects_total", 1, 5000));
    tu_stream_drain(&held, 5000);
    ck_assert_msg(held.eof || held.err, "the stream whose events waited past the limit is still open");
    tu_stream_close(&held);
    db_exec(locker, "COMMIT");

    int rounds = 1;
    long long t0 = tu_now_ms();
    while (rounds < CHURN_ROUNDS && metric(a.port, "sluice_sse_slow_client_disconnects_total") < 2) {
        ch.round = rounds++;
        on_loop(&a, do_churn_enter, &ch);
        on_loop(&a, do_churn_leave, &ch);
        tu_sleep_ms(20);
    }
    long long want = 2LL * CHURN_USERS * rounds;
    while (atomic_load(&reader.events) < want && !atomic_load(&reader.ended) && tu_now_ms() - t0 < 60000)
        tu_sleep_ms(20);
    printf("presence: %d rounds of %d joins and leaves (%lld events) before the slow stream was cut off; "
           "the reader got %d\n", rounds, CHURN_USERS, want, atomic_load(&reader.events));
    ck_assert_msg(metric(a.port, "sluice_sse_slow_client_disconnects_total") == 2,
                  "the stream that does not read was not cut off after %lld events", want);
    ck_assert_int_eq(atomic_load(&reader.ended), 0);
    ck_assert_int_eq(atomic_load(&reader.events), want);
    ck_assert(wait_metric(a.port, "sluice_sse_presence_listeners", 1, 5000));
    ck_assert_int_ge(wait_subscribers(a.port, "flood", 1, 5000), 0); /* the reader alone */
    ck_assert_int_ge(metric(a.port, "sluice_sse_presence_events_sent_total"), want);
    unsigned long long got = tu_stream_drain(&slow, 10000);
    ck_assert_msg(slow.eof || slow.err, "the slow stream is still open after %llu bytes", got);
    tu_stream_close(&slow);
    atomic_store(&reader.stop, 1);
    pthread_join(reader.thread, NULL);
    tu_stream_close(&reader.st);
    ck_assert_int_ge(wait_subscribers(a.port, "flood", 0, 5000), 0);
    inst_stop(&a);
    PQfinish(locker);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- the sluice_channels table ------------------------------------------------------------------------ */

/* sluice_channels as "channel:last_seq:messages,...", and what a recount from messages and
 * message_events gives. */
static void channels_table(PGconn *c, char *table, char *recount, size_t size)
{
    const char *sql[2] = {
        "SELECT coalesce(string_agg(channel || ':' || last_seq || ':' || messages, ',' ORDER BY channel), '')"
        " FROM sluice_channels",
        "SELECT coalesce(string_agg(channel || ':' || l || ':' || m, ',' ORDER BY channel), '') FROM"
        " (SELECT channel, max(seq) AS l, sum(live) AS m FROM (SELECT channel, seq,"
        " CASE WHEN deleted_at IS NULL THEN 1 ELSE 0 END AS live FROM messages"
        " UNION ALL SELECT channel, seq, 0 FROM message_events) f GROUP BY channel) g"};
    char *out[2] = {table, recount};
    for (int i = 0; i < 2; i++) {
        PGresult *r = PQexec(c, sql[i]);
        ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s", PQerrorMessage(c));
        snprintf(out[i], size, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
}

static sl_message_t message(const char *channel, const char *text)
{
    sl_message_t m;
    memset(&m, 0, sizeof(m));
    ck_assert_int_eq(sl_uuid_v7(m.id), 0);
    snprintf(m.channel, sizeof(m.channel), "%s", channel);
    snprintf(m.author, sizeof(m.author), "tester");
    snprintf(m.text, sizeof(m.text), "%s", text);
    snprintf(m.source, sizeof(m.source), "api");
    m.created_at_us = 1700000000000000LL;
    return m;
}

static sl_message_t event(sl_message_type_t type, const sl_message_t *of, const char *channel)
{
    sl_message_t m = *of;
    m.type = type;
    m.seq = 0;
    snprintf(m.channel, sizeof(m.channel), "%s", channel);
    if (type == SL_MESSAGE_UPDATE) {
        snprintf(m.text, sizeof(m.text), "edited");
        m.edited_at_us = m.created_at_us + 1000000;
    }
    m.created_at_us = 1700000001000000LL;
    ck_assert_int_eq(sl_message_event_id(&m, m.event_id), 0);
    return m;
}

static void store(sl_db_t *db, sl_message_t *msgs, size_t n, size_t want_stored)
{
    char err[512];
    size_t stored = 0;
    ck_assert_msg(sl_db_store_batch(db, msgs, n, NULL, &stored, err, sizeof(err)) == SL_DB_OK, "%s", err);
    ck_assert_int_eq(stored, want_stored);
}

START_TEST(test_channels_table_follows_every_batch)
{
    char err[512], table[1024], recount[1024];
    sl_db_t db;
    tu_stack_init(&S, "presencetable", 100000);
    ck_assert_int_eq(sl_db_migrate_url(S.db_url, 20, NULL), SL_DB_OK);
    ck_assert_msg(sl_db_connect(&db, S.db_url, err, sizeof(err)) == SL_DB_OK, "%s", err);
    PGconn *c = tu_db(&S);
    ck_assert_int_eq(tu_scalar(c, "SELECT count(*) FROM sluice_schema_migrations WHERE version = 5"), 1);

    sl_message_t a[5] = {message("k1", "one"), message("k1", "two"), message("k2", "three"), message("k1", "four"),
                         message("k2", "five")};
    store(&db, a, 5, 5); /* messages only: the one-statement path */
    channels_table(c, table, recount, sizeof(table));
    ck_assert_str_eq(table, "k1:4:3,k2:5:2");
    ck_assert_str_eq(table, recount);
    store(&db, a, 5, 0); /* redelivered: nothing new, nothing counted */
    channels_table(c, table, recount, sizeof(table));
    ck_assert_str_eq(table, "k1:4:3,k2:5:2");

    /* events: an edit (counts in last_seq), deletes (one of a stored message, one of a message of
     * this batch, one of a message never stored, in a channel of its own), a new message */
    sl_message_t fresh = message("k1", "six"), ghost = message("k3", "never stored");
    sl_message_t b[5] = {event(SL_MESSAGE_UPDATE, &a[0], "k1"), event(SL_MESSAGE_DELETE, &a[2], "k2"), fresh,
                         event(SL_MESSAGE_DELETE, &fresh, "k1"), event(SL_MESSAGE_DELETE, &ghost, "k3")};
    store(&db, b, 5, 5);
    channels_table(c, table, recount, sizeof(table));
    ck_assert_str_eq(table, "k1:9:3,k2:7:1,k3:10:0");
    ck_assert_str_eq(table, recount);
    store(&db, b, 5, 0); /* the same events again: stored once */
    /* an edit of a deleted message: no seq (kept in message_events_ignored, check_edits), no count */
    sl_message_t again = event(SL_MESSAGE_UPDATE, &a[2], "k2");
    store(&db, &again, 1, 0);
    ck_assert_int_eq(tu_scalar(c, "SELECT count(*) FROM message_events_ignored"), 1);
    channels_table(c, table, recount, sizeof(table));
    ck_assert_str_eq(table, "k1:9:3,k2:7:1,k3:10:0");
    ck_assert_str_eq(table, recount);

    /* migration 5's backfill recounts what a persister older than it left uncounted */
    PGresult *r = PQexec(c, "UPDATE sluice_channels SET messages = 99 WHERE channel = 'k1';"
                            " DELETE FROM sluice_channels WHERE channel = 'k2';"
                            " DELETE FROM sluice_schema_migrations WHERE version = 5");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    ck_assert_msg(sl_db_migrate(&db, err, sizeof(err)) == SL_DB_OK, "%s", err);
    ck_assert_int_eq(tu_scalar(c, "SELECT count(*) FROM sluice_schema_migrations WHERE version = 5"), 1);
    channels_table(c, table, recount, sizeof(table));
    ck_assert_str_eq(table, "k1:9:3,k2:7:1,k3:10:0");
    PQfinish(c);
    sl_db_close(&db);
    tu_stack_cleanup(&S);
}
END_TEST

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as sluice-sse (sl_http_signals): the instances here write to sockets we cut */
    Suite *s = suite_create("presence_sse");
    TCase *tc = tcase_create("presence");
    tcase_set_timeout(tc, 120);
    const char *only = getenv("SLUICE_TEST_ONLY");
#define ADD(t)                                                                                                         \
    if (only == NULL || strstr(#t, only) != NULL)                                                                      \
    tcase_add_test(tc, t)
    ADD(test_channels_table_follows_every_batch);
    ADD(test_occupancy_and_presence_across_two_instances);
    ADD(test_channels_pages_errors_and_private_channels);
    ADD(test_real_streams_count_and_get_presence_events);
    ADD(test_presence_events_follow_the_history_and_leave_resume_alone);
    ADD(test_dropped_subscriptions_leave);
    ADD(test_presence_events_count_against_the_output_limit);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
