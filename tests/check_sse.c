/*
 * Integration tests of the sse service, black-box: a real api + persister + sse on the RabbitMQ
 * and PostgreSQL that test.sh starts, messages posted through the api, streams read with the raw
 * clients of sl_streamclient.h (SSE, NDJSON) and sl_wsclient.h (WebSocket).
 *
 * What every stream must show: the seqs of its channels strictly increasing, without a gap or a
 * repeat, from its first event to the database's last, each message the same JSON whether it came
 * as history or live. Where it matters, a test runs against two instances: one serving history and
 * resume from its memory of recent events, one without that memory (SLUICE_SSE_RECENT=0), which
 * reads the database.
 *
 * SLUICE_TEST_ONLY=<part of a name> runs only the matching tests (see main).
 */
#include <check.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sl_amqp.h"
#include "sl_buf.h"
#include "sl_message.h"
#include "sl_streamclient.h"
#include "sl_time.h"
#include "sl_testnet.h"
#include "sl_testutil.h"
#include "sl_wsclient.h"
#include "sl_testsuite.h"

static tu_stack_t S;

/* ---- posting ------------------------------------------------------------------------------------ */

/* What tu_post_many's bodies look like: channel channels[i % nchannels], text "m<i> " padded
 * with "✓" (3 bytes each) up to pad characters. */
static struct {
    const char *channels[4];
    int nchannels;
    int pad;
    int base;
} G = {{"general"}, 1, 0, 0};

static void body_of(int i, char *buf, size_t size)
{
    char text[2048];
    int n = snprintf(text, sizeof(text), "m%d ", G.base + i);
    for (int k = n; k < G.pad && (size_t)n + 4 < sizeof(text); k++)
        n += snprintf(text + n, sizeof(text) - (size_t)n, "\xe2\x9c\x93");
    snprintf(buf, size, "{\"channel\":\"%s\",\"author\":\"user%d\",\"text\":\"%s\"}", G.channels[i % G.nchannels],
             i % 7, text);
}

static const char *post_url(void)
{
    static char url[128];
    snprintf(url, sizeof(url), "%s/v1/messages", S.base);
    return url;
}

/* Posts n messages (parallel at once) on the channels given (NULL-terminated), all must be 202. */
static void post_many(int n, int parallel, int pad, void (*on_progress)(int, void *), void *arg, ...)
{
    va_list ap;
    long *status = calloc((size_t)n, sizeof(*status));
    ck_assert_ptr_nonnull(status);
    G.nchannels = 0;
    va_start(ap, arg);
    for (const char *c; G.nchannels < 4 && (c = va_arg(ap, const char *)) != NULL;)
        G.channels[G.nchannels++] = c;
    va_end(ap);
    ck_assert_int_gt(G.nchannels, 0);
    G.pad = pad;
    tu_post_many(post_url(), n, parallel, body_of, status, NULL, on_progress, arg);
    G.base += n;
    for (int i = 0; i < n; i++)
        ck_assert_msg(status[i] == 202, "POST %d answered %ld", i, status[i]);
    free(status);
}

/* ---- the stack ---------------------------------------------------------------------------------- */

/* api + persister + one sse (with extra env) on a fresh database. */
static void start_stack(const char *name, const char *const *sse_env)
{
    G.base = 0;
    tu_stack_start(&S, name, sse_env);
}

/* A second sse instance of the stack (the tests' extra one; tu_stack_cleanup does not know it). */
static pid_t EXTRA;

static int start_extra(const char *const *env)
{
    int port = 0;
    EXTRA = tu_start_at(&S, "sse", &port, env);
    tu_wait_sse_ready(port);
    return port;
}

static void stop_extra(void)
{
    ck_assert_int_eq(tu_stop(&EXTRA, SIGTERM, 15000), 0);
}

/* A series' value in the sse's /metrics ("name" or "name{labels}"), -1 when absent. */
static double metric(int port, const char *series)
{
    return tu_metric(port, series);
}

/* metric() for a series that must be there: retried for 3 s while /metrics cannot answer (e.g. the
 * client's connections are still counted from sockets just closed), then the test fails. */
static double metric_must(int port, const char *series)
{
    double v = metric(port, series);
    for (long long end = tu_now_ms() + 3000; v < 0 && tu_now_ms() < end; v = metric(port, series))
        tu_sleep_ms(50);
    ck_assert_msg(v >= 0, "no %s in sse's /metrics", series);
    return v;
}

static int wait_metric(int port, const char *series, double want, int timeout_ms)
{
    for (long long end = tu_now_ms() + timeout_ms; tu_now_ms() < end; tu_sleep_ms(100)) {
        if (metric(port, series) == want)
            return 1;
    }
    return metric(port, series) == want;
}

/* kB of a /proc/<pid>/status field (VmRSS, VmHWM), -1 when unreadable. */
static long proc_kb(pid_t pid, const char *field)
{
    char path[64], line[256];
    long kb = -1;
    size_t fl = strlen(field);
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, field, fl) == 0 && line[fl] == ':') {
            kb = strtol(line + fl + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

/* Stores a message the way the persister does (lock the counter, insert seq = last + 1, advance
 * the counter, one transaction) but publishes nothing live. Returns its seq. */
static long long insert_direct(PGconn *db, const char *channel, const char *text)
{
    PGresult *r = PQexec(db, "BEGIN");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    long long seq = tu_scalar(db, "SELECT last_seq FROM sluice_feed WHERE id = 1 FOR UPDATE") + 1;
    char s[24];
    snprintf(s, sizeof(s), "%lld", seq);
    const char *p[] = {s, channel, text};
    r = PQexecParams(db,
                     "INSERT INTO messages (id, seq, channel, author, body, source, created_at)"
                     " VALUES (gen_random_uuid(), $1, $2, 'direct', $3, 'api', now())",
                     3, NULL, p, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "insert: %s", PQerrorMessage(db));
    PQclear(r);
    r = PQexecParams(db, "UPDATE sluice_feed SET last_seq = $1 WHERE id = 1", 1, NULL, p, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "update: %s", PQerrorMessage(db));
    PQclear(r);
    r = PQexec(db, "COMMIT");
    ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    return seq;
}

/* The ids of seq 1..last (index = seq). */
static char (*db_ids(PGconn *db, long long last))[37]
{
    char (*ids)[37] = calloc((size_t)last + 1, sizeof(*ids));
    ck_assert_ptr_nonnull(ids);
    PGresult *r = PQexec(db, "SELECT seq, id FROM messages ORDER BY seq");
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    for (int i = 0; i < PQntuples(r); i++) {
        long long seq = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        if (seq >= 1 && seq <= last)
            snprintf(ids[seq], sizeof(ids[seq]), "%s", PQgetvalue(r, i, 1));
    }
    PQclear(r);
    return ids;
}

/* seqs from a query whose first column is a seq, in its order. */
static long long *db_seqs(PGconn *db, const char *sql, size_t *n)
{
    PGresult *r = PQexec(db, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(db));
    *n = (size_t)PQntuples(r);
    long long *v = calloc(*n + 1, sizeof(*v));
    ck_assert_ptr_nonnull(v);
    for (size_t i = 0; i < *n; i++)
        v[i] = strtoll(PQgetvalue(r, (int)i, 0), NULL, 10);
    PQclear(r);
    return v;
}

/* ---- a stream reader: one connection and everything it received ---------------------------------- */

typedef struct reader {
    int port;
    char target[300];
    const char *headers;
    tu_stream_t st;
    long long *seqs;
    char **data; /* each message's JSON */
    size_t n, cap;
    int heartbeats, resets, retries, others, ended;
    long long reset_pos; /* index in seqs where a reset came, -1 */
    char bad[400];       /* the first thing that broke the protocol */
    /* threaded use */
    pthread_t th;
    atomic_llong stop_at; /* stop once this seq arrived (0: not yet known) */
    const char *db_url;   /* if set: last_seq before connecting and after the first message */
    long long last_before, last_after_first;
    long long hub_before; /* the instance's position (sluice_sse_position) before connecting */
    int hard_ms;
} reader_t;

static void reader_bad(reader_t *r, const char *fmt, const char *a, long long x)
{
    if (r->bad[0] == '\0')
        snprintf(r->bad, sizeof(r->bad), fmt, a, x);
}

/* A message's JSON must carry the documented fields. */
static void check_message_json(reader_t *r, const char *data, long long seq)
{
    json_error_t e;
    json_t *o = json_loads(data, 0, &e);
    static const char *const fields[] = {"id", "channel", "author", "text", "source", "created_at"};
    if (o == NULL || !json_is_object(o)) {
        reader_bad(r, "not a JSON object: %s (seq %lld)", data, seq);
    } else {
        for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
            if (!json_is_string(json_object_get(o, fields[i])))
                reader_bad(r, "message lacks a string field: %s (field #%lld)", data, (long long)i);
        }
        if (json_string_length(json_object_get(o, "id")) != 36)
            reader_bad(r, "id is not a UUID: %s (seq %lld)", data, seq);
        if (!json_is_integer(json_object_get(o, "seq")))
            reader_bad(r, "message lacks seq: %s (seq %lld)", data, seq);
    }
    json_decref(o);
}

static void reader_take(reader_t *r, const tu_sev_t *ev)
{
    switch (ev->kind) {
    case TU_EV_HEARTBEAT:
        r->heartbeats++;
        return;
    case TU_EV_RETRY:
        r->retries++;
        if (r->n > 0 || r->retries > 1)
            reader_bad(r, "retry: not at the start %s(after %lld messages)", "", (long long)r->n);
        return;
    case TU_EV_RESET:
        r->resets++;
        r->reset_pos = (long long)r->n;
        if (strstr(ev->data, "too_old") == NULL)
            reader_bad(r, "reset without reason too_old: %s (%lld)", ev->data, 0LL);
        return;
    case TU_EV_OTHER:
        r->others++;
        reader_bad(r, "unexpected event: %s (%lld)", ev->data, (long long)r->n);
        return;
    case TU_EV_MESSAGE:
        break;
    }
    if (ev->seq < 1)
        reader_bad(r, "message without seq: %s (%lld)", ev->data, ev->seq);
    if (r->st.fmt == TU_FMT_SSE && (ev->id != ev->seq || strcmp(ev->event, "message") != 0))
        reader_bad(r, "SSE id:/event: do not match the data: %s (id %lld)", ev->data, ev->id);
    check_message_json(r, ev->data, ev->seq);
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 256;
        r->seqs = realloc(r->seqs, r->cap * sizeof(*r->seqs));
        r->data = realloc(r->data, r->cap * sizeof(*r->data));
        if (r->seqs == NULL || r->data == NULL)
            abort();
    }
    r->seqs[r->n] = ev->seq;
    r->data[r->n++] = strdup(ev->data);
}

static long long reader_last(const reader_t *r)
{
    return r->n > 0 ? r->seqs[r->n - 1] : 0;
}

/* Opens the stream; returns the HTTP status (0 when no answer). */
static long reader_open(reader_t *r, int port, const char *target, const char *headers)
{
    tu_stream_opts_t o = {headers, 0, 0};
    r->port = port;
    r->reset_pos = -1;
    if (target != r->target)
        snprintf(r->target, sizeof(r->target), "%s", target);
    r->headers = headers;
    if (tu_stream_open(&r->st, port, target, &o, 10000) != 0)
        return 0;
    return r->st.status;
}

static void reader_open_ok(reader_t *r, int port, const char *target, const char *headers)
{
    long st = reader_open(r, port, target, headers);
    ck_assert_msg(st == 200, "GET %s answered %ld: %s", target, st, r->st.body ? r->st.body : "");
}

/* Reads until the last seq reached want_seq and want_n messages arrived in total, or for
 * timeout_ms: 1 if they did, 0 at the timeout, -1 when the stream ended. */
static int reader_read(reader_t *r, long long want_seq, size_t want_n, int timeout_ms)
{
    long long end = tu_now_ms() + timeout_ms;
    tu_sev_t ev;
    while (reader_last(r) < want_seq || r->n < want_n) {
        long long left = end - tu_now_ms();
        if (left <= 0)
            return 0;
        int rc = tu_stream_next(&r->st, &ev, (int)left);
        if (rc < 0) {
            r->ended = 1;
            return -1;
        }
        if (rc == 1)
            reader_take(r, &ev);
    }
    return 1;
}

/* Reads until a message with seq >= want arrived; 1 if it did within timeout_ms. */
static int reader_until(reader_t *r, long long want, int timeout_ms)
{
    return reader_read(r, want, 0, timeout_ms) == 1;
}

/* Reads whatever comes for ms; 0 if the stream is still open after it. */
static int reader_for(reader_t *r, int ms)
{
    return reader_read(r, LLONG_MAX, 0, ms);
}

/* Reads until n messages arrived in total; 1 if they did. */
static int reader_count(reader_t *r, size_t n, int timeout_ms)
{
    return reader_read(r, LLONG_MIN, n, timeout_ms) == 1;
}

static void reader_free(reader_t *r)
{
    tu_stream_close(&r->st);
    for (size_t i = 0; i < r->n; i++)
        free(r->data[i]);
    free(r->data);
    free(r->seqs);
    r->data = NULL;
    r->seqs = NULL;
    r->n = r->cap = 0;
}

/* sluice_feed's last_seq, -1 on any failure (no Check calls: reader threads use it). */
static long long last_seq_of(PGconn *db)
{
    long long v = -1;
    PGresult *r = PQexec(db, "SELECT last_seq FROM sluice_feed WHERE id = 1");
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

static void *reader_main(void *arg)
{
    reader_t *r = arg;
    tu_sev_t ev;
    long long hard = tu_now_ms() + r->hard_ms, known_at = 0;
    PGconn *db = NULL;
    if (r->db_url != NULL) {
        db = PQconnectdb(r->db_url);
        r->hub_before = (long long)metric(r->port, "sluice_sse_position");
        r->last_before = last_seq_of(db);
    }
    if (reader_open(r, r->port, r->target, r->headers) != 200) {
        PQfinish(db);
        return NULL;
    }
    for (;;) {
        long long stop = atomic_load(&r->stop_at), now = tu_now_ms();
        if (stop > 0 && known_at == 0)
            known_at = now;
        if (stop > 0 && reader_last(r) >= stop)
            break;
        if (now > hard || (known_at > 0 && now > known_at + 30000))
            break;
        int rc = tu_stream_next(&r->st, &ev, 200);
        if (rc < 0) {
            r->ended = 1;
            break;
        }
        if (rc == 1) {
            reader_take(r, &ev);
            if (db != NULL && r->n == 1 && r->last_after_first == 0)
                r->last_after_first = last_seq_of(db);
        }
    }
    PQfinish(db);
    return NULL;
}

static void reader_spawn(reader_t *r, int port, const char *target, const char *db_url)
{
    memset(r, 0, sizeof(*r));
    r->port = port;
    r->db_url = db_url;
    r->hard_ms = 150000;
    snprintf(r->target, sizeof(r->target), "%s", target);
    atomic_init(&r->stop_at, 0);
    ck_assert_int_eq(pthread_create(&r->th, NULL, reader_main, r), 0);
}

/* Waits until the instance's hub has delivered seq (the live copy of a commit reaches it a moment
 * after the rows are visible in the database: a stream opened in between starts its history
 * lower and gets the rest live, which is right but not what a test counting history wants). */
static void wait_hub(int port, long long seq)
{
    ck_assert_msg(wait_metric(port, "sluice_sse_position", (double)seq, 10000), "sse on %d never reached seq %lld",
                  port, seq);
}

/* The reader got a gap-free, repeat-free run first..last with first in [first_min, first_max], and
 * (ids given) each seq is the database's message. */
static void assert_run(const reader_t *r, const char *who, long long first_min, long long first_max, long long last,
                       char (*ids)[37])
{
    ck_assert_msg(r->st.status == 200, "%s: GET %s answered %ld", who, r->target, r->st.status);
    ck_assert_msg(r->bad[0] == '\0', "%s: %s", who, r->bad);
    ck_assert_msg(r->n > 0, "%s: received nothing", who);
    ck_assert_msg(r->seqs[0] >= first_min && r->seqs[0] <= first_max, "%s: first seq %lld, want %lld..%lld", who,
                  r->seqs[0], first_min, first_max);
    for (size_t i = 1; i < r->n; i++)
        ck_assert_msg(r->seqs[i] == r->seqs[i - 1] + 1, "%s: seq %lld after %lld (message #%zu)", who, r->seqs[i],
                      r->seqs[i - 1], i);
    ck_assert_msg(r->seqs[r->n - 1] == last, "%s: last seq %lld, want %lld (stream ended: %d)", who,
                  r->seqs[r->n - 1], last, r->ended);
    for (size_t i = 0; ids != NULL && i < r->n; i++) {
        char want[60];
        snprintf(want, sizeof(want), "\"id\":\"%s\"", ids[r->seqs[i]]);
        ck_assert_msg(strstr(r->data[i], want) != NULL, "%s: seq %lld is %s, the database says %s", who, r->seqs[i],
                      r->data[i], ids[r->seqs[i]]);
    }
}

/* The reader's seqs from index from on equal want[0..n). */
static void assert_seqs(const reader_t *r, size_t from, const long long *want, size_t n, const char *who)
{
    ck_assert_msg(r->bad[0] == '\0', "%s: %s", who, r->bad);
    ck_assert_msg(r->n - from == n, "%s: %zu messages, want %zu", who, r->n - from, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(r->seqs[from + i] == want[i], "%s: message #%zu is seq %lld, want %lld", who, i,
                      r->seqs[from + i], want[i]);
}

/* The same seq carries the same JSON in every reader (history and live agree). */
static void assert_same_json(reader_t *rs, int nr, long long last)
{
    json_t **seen = calloc((size_t)last + 1, sizeof(*seen));
    ck_assert_ptr_nonnull(seen);
    for (int k = 0; k < nr; k++) {
        for (size_t i = 0; i < rs[k].n; i++) {
            long long seq = rs[k].seqs[i];
            json_error_t e;
            json_t *o = json_loads(rs[k].data[i], 0, &e);
            ck_assert_ptr_nonnull(o);
            if (seq < 1 || seq > last || seen[seq] == NULL) {
                if (seq >= 1 && seq <= last)
                    seen[seq] = o;
                else
                    json_decref(o);
                continue;
            }
            ck_assert_msg(json_equal(seen[seq], o), "reader %d: seq %lld differs from another reader's: %s", k, seq,
                          rs[k].data[i]);
            json_decref(o);
        }
    }
    for (long long s = 0; s <= last; s++)
        json_decref(seen[s]);
    free(seen);
}

/* WebSocket helpers (section 7) */
static json_t *ws_next_json(tu_ws_t *w, int timeout_ms);
static void ws_expect_history(tu_ws_t *w, const char *channel, const long long *want, size_t n);
static const char *jstr(json_t *o, const char *k);
static void ws_expect_type(tu_ws_t *w, const char *type, const char *key, const char *value);
static long long ws_expect_message(tu_ws_t *w, char *ch, size_t size);

/* ---- 1. the seam under load ------------------------------------------------------------------------ */

enum { SEAM_N = 2000, SEAM_READERS = 6 };

struct seam {
    reader_t r[SEAM_READERS];
    int at[SEAM_READERS];         /* posts done when reader k connects */
    const char *target[SEAM_READERS];
    int port[SEAM_READERS];
    int started;
};

static void seam_progress(int done, void *arg)
{
    struct seam *sm = arg;
    while (sm->started < SEAM_READERS && done >= sm->at[sm->started]) {
        int k = sm->started++;
        reader_spawn(&sm->r[k], sm->port[k], sm->target[k], S.db_url);
    }
}

START_TEST(test_seam_under_load_is_gap_free)
{
    static struct seam sm;
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", NULL};
    const char *env_db[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_RECENT=0", NULL};
    memset(&sm, 0, sizeof(sm));
    start_stack("sseseam", env);
    /* instance 1 answers history from its memory of recent events, instance 2 (no memory) from
     * the database: two different seams */
    int port2 = start_extra(env_db);
    PGconn *db = tu_db(&S);
    /* different moments, both formats, one channel or all, short and long history */
    const int at[SEAM_READERS] = {0, 300, 900, 1000, 1500, 1700};
    const char *target[SEAM_READERS] = {
        "/v1/stream?channels=general&history=50",
        "/v1/stream?channels=general&history=50&format=ndjson",
        "/v1/stream?history=50",
        "/v1/stream?channels=general,news&history=1000&format=ndjson",
        "/v1/stream?channels=general&history=50",
        "/v1/stream?channels=general&history=1000",
    };
    const int port[SEAM_READERS] = {S.sse_port, port2, S.sse_port, port2, port2, S.sse_port};
    memcpy(sm.at, at, sizeof(at));
    memcpy(sm.target, target, sizeof(target));
    memcpy(sm.port, port, sizeof(port));
    seam_progress(0, &sm);
    long long t0 = tu_now_ms();
    post_many(SEAM_N, 20, 0, seam_progress, &sm, "general", NULL);
    long long posted_ms = tu_now_ms() - t0;
    seam_progress(SEAM_N, &sm);
    ck_assert_int_eq(tu_wait_rows(db, SEAM_N, 30000), SEAM_N);
    long long last = tu_scalar(db, "SELECT last_seq FROM sluice_feed WHERE id = 1");
    ck_assert_int_eq(last, SEAM_N);
    for (int k = 0; k < SEAM_READERS; k++)
        atomic_store(&sm.r[k].stop_at, last);
    for (int k = 0; k < SEAM_READERS; k++)
        pthread_join(sm.r[k].th, NULL);
    char(*ids)[37] = db_ids(db, last);
    for (int k = 0; k < SEAM_READERS; k++) {
        char who[400];
        const reader_t *r = &sm.r[k];
        long long hist = strstr(r->target, "history=1000") != NULL ? 1000 : 50;
        ck_assert_msg(r->last_before >= 0 && r->last_after_first >= r->last_before, "reader %d: positions %lld, %lld",
                      k, r->last_before, r->last_after_first);
        snprintf(who, sizeof(who), "reader %d (%s, %s, connected with %lld..%lld stored, instance at %lld)", k,
                 r->target, r->port == port2 ? "history from the database" : "history from memory", r->last_before,
                 r->last_after_first, r->hub_before);
        /* The history was read between connecting and the first message: it is the last `hist`
         * messages of some position in between (the database's, or the position the instance had
         * reached, when it answers from memory; that one may trail the database a little). */
        long long from = r->hub_before >= 0 && r->hub_before < r->last_before ? r->hub_before : r->last_before;
        long long lo = from - hist + 1, hi = r->last_after_first - hist + 1;
        assert_run(r, who, lo > 1 ? lo : 1, hi > 1 ? hi : 1, last, ids);
    }
    assert_same_json(sm.r, SEAM_READERS, last);
    fprintf(stderr, "seam: %d posts in %lld ms, readers got %zu %zu %zu %zu %zu %zu; from memory: %.0f and %.0f\n", SEAM_N,
            posted_ms, sm.r[0].n, sm.r[1].n, sm.r[2].n, sm.r[3].n, sm.r[4].n, sm.r[5].n,
            metric(S.sse_port, "sluice_sse_history_from_memory_total"),
            metric(port2, "sluice_sse_history_from_memory_total"));
    ck_assert(metric(S.sse_port, "sluice_sse_history_from_memory_total") >= 3);
    free(ids);
    for (int k = 0; k < SEAM_READERS; k++)
        reader_free(&sm.r[k]);
    stop_extra();
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- 2. resume ------------------------------------------------------------------------------------- */

START_TEST(test_resume_replays_missed_once)
{
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_REPLAY_MAX=150", NULL};
    const char *env_db[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_REPLAY_MAX=150", "SLUICE_SSE_RECENT=0", NULL};
    static reader_t a[2], b[2], c[2], d[2], e[2];
    const char *kind[2] = {"from memory", "from the database"};
    size_t n;
    long long *want;
    char target[200], hdr[64], who[160];
    memset(a, 0, sizeof(a)), memset(b, 0, sizeof(b)), memset(c, 0, sizeof(c));
    memset(d, 0, sizeof(d)), memset(e, 0, sizeof(e));
    start_stack("sseresume", env);
    int port[2] = {S.sse_port, start_extra(env_db)}; /* replays from memory / from the database */
    PGconn *db = tu_db(&S);
    /* general and news interleaved: a general stream skips news seqs, and that is no gap */
    post_many(100, 20, 0, NULL, NULL, "general", "news", NULL);
    ck_assert_int_eq(tu_wait_rows(db, 100, 30000), 100);
    wait_hub(S.sse_port, 100); /* history is what the instance has delivered */

    want = db_seqs(db, "SELECT seq FROM (SELECT seq FROM messages WHERE channel = 'general' ORDER BY seq DESC"
                       " LIMIT 20) h ORDER BY seq",
                   &n);
    for (int i = 0; i < 2; i++) {
        reader_open_ok(&a[i], port[i], "/v1/stream?channels=general&history=20", NULL);
        ck_assert(reader_count(&a[i], 20, 10000));
        snprintf(who, sizeof(who), "history=20 %s", kind[i]);
        assert_seqs(&a[i], 0, want, n, who);
    }
    free(want);
    post_many(50, 10, 0, NULL, NULL, "general", "news", NULL);
    ck_assert(reader_count(&a[0], 30, 10000)); /* ten of the new ones, then away */
    long long last_id = reader_last(&a[0]);
    reader_free(&a[0]);
    reader_free(&a[1]);

    post_many(200, 20, 0, NULL, NULL, "general", "news", NULL);
    ck_assert_int_eq(tu_wait_rows(db, 350, 30000), 350);
    char sql[200];
    snprintf(sql, sizeof(sql), "SELECT seq FROM messages WHERE channel = 'general' AND seq > %lld ORDER BY seq",
             last_id);
    want = db_seqs(db, sql, &n);
    ck_assert_int_gt(n, 100);
    for (int i = 0; i < 2; i++) {
        snprintf(hdr, sizeof(hdr), "Last-Event-ID: %lld\r\n", last_id);
        reader_open_ok(&b[i], port[i], "/v1/stream?channels=general", hdr);
        snprintf(target, sizeof(target), "/v1/stream?channels=general&since=%lld&format=ndjson", last_id);
        reader_open_ok(&c[i], port[i], target, NULL);
        ck_assert_int_eq(c[i].st.fmt, TU_FMT_NDJSON);
    }
    for (int i = 0; i < 2; i++) {
        ck_assert(reader_until(&b[i], want[n - 1], 15000));
        ck_assert(reader_until(&c[i], want[n - 1], 15000));
        snprintf(who, sizeof(who), "Last-Event-ID %s", kind[i]);
        assert_seqs(&b[i], 0, want, n, who);
        snprintf(who, sizeof(who), "since %s", kind[i]);
        assert_seqs(&c[i], 0, want, n, who);
    }
    free(want);
    /* and on live from there */
    post_many(10, 5, 0, NULL, NULL, "general", "news", NULL);
    ck_assert_int_eq(tu_wait_rows(db, 360, 30000), 360);
    want = db_seqs(db, sql, &n);
    for (int i = 0; i < 2; i++) {
        ck_assert(reader_until(&b[i], want[n - 1], 15000));
        ck_assert(reader_until(&c[i], want[n - 1], 15000));
        snprintf(who, sizeof(who), "Last-Event-ID %s, then live", kind[i]);
        assert_seqs(&b[i], 0, want, n, who);
        snprintf(who, sizeof(who), "since %s, then live", kind[i]);
        assert_seqs(&c[i], 0, want, n, who);
    }
    free(want);

    /* Too old: over SLUICE_SSE_REPLAY_MAX (150) messages of the channel behind (~180) → reset,
     * then the newest history, then live. (The resumes above were ~115 behind.) */
    for (int i = 0; i < 2; i++) {
        reader_open_ok(&d[i], port[i], "/v1/stream?channels=general&history=5", "Last-Event-ID: 1\r\n");
        reader_open_ok(&e[i], port[i], "/v1/stream?channels=general&since=1&history=5&format=ndjson", NULL);
        ck_assert(reader_count(&d[i], 5, 10000));
        ck_assert(reader_count(&e[i], 5, 10000));
    }
    tu_post(&S, "general", "after the reset");
    ck_assert_int_eq(tu_wait_rows(db, 361, 30000), 361);
    want = db_seqs(db, "SELECT seq FROM (SELECT seq FROM messages WHERE channel = 'general' ORDER BY seq DESC"
                       " LIMIT 6) h ORDER BY seq",
                   &n);
    for (int i = 0; i < 2; i++) {
        ck_assert(reader_until(&d[i], want[n - 1], 10000));
        ck_assert(reader_until(&e[i], want[n - 1], 10000));
        ck_assert_int_eq(d[i].resets, 1);
        ck_assert_int_eq(d[i].reset_pos, 0); /* before any message */
        ck_assert_int_eq(e[i].resets, 1);
        ck_assert_int_eq(e[i].reset_pos, 0);
        snprintf(who, sizeof(who), "reset (SSE) %s", kind[i]);
        assert_seqs(&d[i], 0, want, n, who);
        snprintf(who, sizeof(who), "reset (NDJSON) %s", kind[i]);
        assert_seqs(&e[i], 0, want, n, who);
        ck_assert(metric(port[i], "sluice_sse_resets_total") == 2);
    }
    free(want);
    /* the same over a WebSocket: a reset frame, then the newest history */
    want = db_seqs(db, "SELECT seq FROM (SELECT seq FROM messages WHERE channel = 'general' ORDER BY seq DESC"
                       " LIMIT 5) h ORDER BY seq",
                   &n);
    for (int i = 0; i < 2; i++) {
        tu_ws_t w;
        ck_assert_int_eq(tu_ws_open(&w, port[i], "/v1/ws", 10000), 0);
        ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"subscribe\",\"channel\":\"general\",\"since\":1,\"history\":5}"),
                         0);
        ws_expect_type(&w, "subscribed", "channel", "general");
        ws_expect_type(&w, "reset", "reason", "too_old");
        ws_expect_history(&w, "general", want, n);
        tu_ws_close(&w);
        ck_assert(metric(port[i], "sluice_sse_resets_total") == 3);
    }
    free(want);
    for (int i = 0; i < 2; i++) {
        reader_free(&b[i]);
        reader_free(&c[i]);
        reader_free(&d[i]);
        reader_free(&e[i]);
    }
    stop_extra();
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- 3. self-healing: a stored message that was never published -------------------------------------- */

START_TEST(test_missing_live_events_are_backfilled)
{
    /* Instance 1 never checks the tail by itself (only a later event shows it the gap);
     * instance 2 checks every 200 ms. */
    const char *env1[] = {"SLUICE_SSE_CHECK_MS=600000", NULL};
    const char *env2[] = {"SLUICE_SSE_CHECK_MS=200", NULL};
    static reader_t rr[2];
    reader_t *r1 = &rr[0], *r2 = &rr[1];
    memset(rr, 0, sizeof(rr));
    start_stack("ssebackfill", env1);
    int port2 = start_extra(env2);
    PGconn *db = tu_db(&S);
    post_many(5, 5, 0, NULL, NULL, "general", NULL);
    ck_assert_int_eq(tu_wait_rows(db, 5, 20000), 5);
    reader_open_ok(r1, S.sse_port, "/v1/stream?history=10", NULL);
    reader_open_ok(r2, port2, "/v1/stream?history=10&format=ndjson", NULL);
    ck_assert(reader_until(r1, 5, 10000));
    ck_assert(reader_until(r2, 5, 10000));

    /* A gap in the middle: seq 6 only in the database, seq 7 posted. */
    ck_assert_int_eq(insert_direct(db, "general", "stored behind the feed's back"), 6);
    tu_post(&S, "general", "after the hole");
    ck_assert_msg(reader_until(r1, 7, 10000), "instance 1 got up to %lld", reader_last(r1));
    ck_assert_msg(reader_until(r2, 7, 10000), "instance 2 got up to %lld", reader_last(r2));
    const long long want1[] = {1, 2, 3, 4, 5, 6, 7};
    assert_seqs(r1, 0, want1, 7, "instance 1, gap before a live event");
    assert_seqs(r2, 0, want1, 7, "instance 2, gap before a live event");
    ck_assert_ptr_nonnull(strstr(r1->data[5], "stored behind the feed's back"));
    ck_assert(metric(S.sse_port, "sluice_sse_backfills_total") >= 1);
    ck_assert(metric(S.sse_port, "sluice_sse_live_events_total{outcome=\"backfilled\"}") >= 1);

    /* A gap at the tail: nothing comes after it; the periodic check finds it. */
    long long t0 = tu_now_ms();
    ck_assert_int_eq(insert_direct(db, "general", "the last word"), 8);
    ck_assert_msg(reader_until(r2, 8, 5000), "instance 2 (check 200 ms) did not see the tail gap in 5 s");
    fprintf(stderr, "backfill: tail gap filled after %lld ms\n", tu_now_ms() - t0);
    ck_assert_ptr_nonnull(strstr(r2->data[7], "the last word"));
    /* instance 1 gets it as soon as the next live event shows the gap */
    tu_post(&S, "general", "one more");
    ck_assert(reader_until(r1, 9, 10000));
    ck_assert(reader_until(r2, 9, 10000));
    const long long want2[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    assert_seqs(r1, 0, want2, 9, "instance 1, tail gap");
    assert_seqs(r2, 0, want2, 9, "instance 2, tail gap");
    assert_same_json(rr, 2, 9);

    reader_free(r1);
    reader_free(r2);
    stop_extra();
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- 4. many instances ------------------------------------------------------------------------------- */

START_TEST(test_every_instance_delivers_everything)
{
    enum { N = 600 };
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", NULL};
    static reader_t r[3];
    start_stack("ssemulti", env);
    int port2 = start_extra(env);
    PGconn *db = tu_db(&S);
    reader_spawn(&r[0], S.sse_port, "/v1/stream?channels=general&history=0", NULL);
    reader_spawn(&r[1], port2, "/v1/stream?channels=general&history=0", NULL);
    reader_spawn(&r[2], port2, "/v1/stream?format=ndjson&history=0", NULL);
    /* all three connected (subscribed) before the first post */
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"sse\"}", 1, 10000));
    ck_assert(wait_metric(port2, "sluice_sse_clients{transport=\"sse\"}", 1, 10000));
    ck_assert(wait_metric(port2, "sluice_sse_clients{transport=\"ndjson\"}", 1, 10000));
    tu_sleep_ms(300); /* the empty history query finishes */
    post_many(N, 20, 0, NULL, NULL, "general", NULL);
    ck_assert_int_eq(tu_wait_rows(db, N, 30000), N);
    for (int k = 0; k < 3; k++)
        atomic_store(&r[k].stop_at, N);
    for (int k = 0; k < 3; k++)
        pthread_join(r[k].th, NULL);
    char(*ids)[37] = db_ids(db, N);
    assert_run(&r[0], "instance 1", 1, 1, N, ids);
    assert_run(&r[1], "instance 2 (sse)", 1, 1, N, ids);
    assert_run(&r[2], "instance 2 (ndjson)", 1, 1, N, ids);
    assert_same_json(r, 3, N);
    /* each instance has its own live queue: both saw the events live, not only from the database */
    ck_assert_msg(metric(S.sse_port, "sluice_sse_live_events_total{outcome=\"received\"}") >= N / 2,
                  "instance 1 received %.0f live events", metric(S.sse_port, "sluice_sse_live_events_total{outcome=\"received\"}"));
    ck_assert_msg(metric(port2, "sluice_sse_live_events_total{outcome=\"received\"}") >= N / 2,
                  "instance 2 received %.0f live events", metric(port2, "sluice_sse_live_events_total{outcome=\"received\"}"));
    ck_assert(metric(S.sse_port, "sluice_sse_position") == N);
    ck_assert(metric(port2, "sluice_sse_position") == N);
    free(ids);
    for (int k = 0; k < 3; k++)
        reader_free(&r[k]);
    stop_extra();
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- 5. slow clients -------------------------------------------------------------------------------- */

START_TEST(test_slow_client_is_cut_off)
{
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_OUT_MAX_BYTES=65536", NULL};
    static reader_t fast;
    tu_stream_t slow;
    tu_stream_opts_t o = {NULL, 4096, 1}; /* a small receive window, and it never reads */
    start_stack("sseslow", env);
    PGconn *db = tu_db(&S);
    reader_spawn(&fast, S.sse_port, "/v1/stream?channels=general&history=0&format=ndjson", NULL);
    ck_assert_int_eq(tu_stream_open(&slow, S.sse_port, "/v1/stream?channels=general&history=0", &o, 5000), 0);
    /* and a WebSocket that subscribes, then never reads */
    tu_ws_t ws;
    int small = 4096;
    ck_assert_int_eq(tu_ws_open(&ws, S.sse_port, "/v1/ws", 10000), 0);
    ck_assert_int_eq(setsockopt(ws.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
    ck_assert_int_eq(tu_ws_send_text(&ws, "{\"command\":\"subscribe\",\"channel\":\"general\",\"history\":0}"), 0);
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"websocket\"}", 1, 10000));
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"sse\"}", 1, 10000));
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"ndjson\"}", 1, 10000));
    tu_sleep_ms(300);
    long rss0 = proc_kb(S.sse, "VmRSS");
    ck_assert_int_gt(rss0, 0);

    /* ~1.7 KB per event: rounds of 400 until the slow one is cut off (at most 12 rounds, ~8 MB:
     * the kernel's send buffer alone may grow to 4 MB, net.ipv4.tcp_wmem) */
    int rounds = 0, posted = 0;
    while (rounds < 12 && metric(S.sse_port, "sluice_sse_slow_client_disconnects_total") < 2) {
        post_many(400, 20, 500, NULL, NULL, "general", NULL);
        posted += 400;
        rounds++;
        tu_wait_rows(db, posted, 30000);
        tu_sleep_ms(200);
    }
    ck_assert_msg(metric(S.sse_port, "sluice_sse_slow_client_disconnects_total") >= 2,
                  "the slow clients were not both cut off after %d big messages", posted);
    long rss1 = proc_kb(S.sse, "VmRSS"), hwm = proc_kb(S.sse, "VmHWM");

    /* The slow client, reading at last, finds its stream ended (EOF or reset) after far less
     * than everything. */
    unsigned long long got = tu_stream_drain(&slow, 15000);
    fprintf(stderr, "slow: %d posts (%d rounds), slow client read %llu bytes then %s; VmRSS %ld -> %ld kB, VmHWM %ld kB\n",
            posted, rounds, got, slow.eof ? "EOF" : slow.err ? strerror(slow.err) : "nothing", rss0, rss1, hwm);
    ck_assert_msg(slow.eof || slow.err != 0, "the slow client's socket is still open after %llu bytes", got);
    /* less than the texts alone (plus 150 bytes of JSON each): it did not get everything */
    long long all = tu_scalar(db, "SELECT sum(octet_length(body)) + 150 * count(*) FROM messages");
    ck_assert_msg((long long)got < all, "the slow client got %llu bytes, everything is more than %lld", got, all);
    tu_stream_close(&slow);
    /* the WebSocket that never read: its connection ends too, after part of the feed (read with
     * a normal buffer again: through 4 KB, what the kernel holds would take minutes) */
    int big = 1 << 20;
    ck_assert_int_eq(setsockopt(ws.fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big)), 0);
    tu_wsmsg_t m;
    int frames = 0, rc;
    long long end = tu_now_ms() + 15000;
    while ((rc = tu_ws_recv(&ws, &m, 5000)) == 1 && tu_now_ms() < end)
        frames += m.opcode == TU_WS_TEXT;
    ck_assert_msg(rc == -1, "the WebSocket that never read is still open after %d frames", frames);
    ck_assert_msg(frames < posted + 1, "the WebSocket that never read got all %d frames", frames);
    tu_ws_close(&ws);
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"websocket\"}", 0, 10000));
    /* bounded memory: generous, also under the sanitizers */
    ck_assert_msg(hwm - rss0 < 128 * 1024, "VmHWM grew from %ld to %ld kB", rss0, hwm);
    /* the server let go of it: no longer counted (nor subscribed, nor holding a slot) */
    ck_assert_msg(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"sse\"}", 0, 10000),
                  "the slow client's connection is still counted after its socket closed");

    /* the subscriber beside it, which reads as fast as it can, got everything and was not cut */
    ck_assert_int_eq(tu_wait_rows(db, posted, 30000), posted);
    atomic_store(&fast.stop_at, posted);
    pthread_join(fast.th, NULL);
    ck_assert_msg(!fast.ended, "the normal subscriber's stream ended after %zu of %d messages (slow disconnects: %.0f)",
                  fast.n, posted, metric(S.sse_port, "sluice_sse_slow_client_disconnects_total"));
    assert_run(&fast, "the reader beside the slow one", 1, 1, posted, NULL);
    ck_assert(metric(S.sse_port, "sluice_sse_slow_client_disconnects_total") == 2);
    reader_free(&fast);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* A reader that keeps up is never cut off, even when one answer (a long history, a resume) is
 * bigger than SLUICE_SSE_OUT_MAX_BYTES: the limit is for clients that do not read. */
START_TEST(test_long_history_passes_a_small_output_limit)
{
    enum { N = 800 };
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_OUT_MAX_BYTES=65536", NULL};
    reader_t a = {0}, b = {0};
    tu_ws_t w;
    start_stack("ssebighist", env);
    PGconn *db = tu_db(&S);
    post_many(N, 20, 100, NULL, NULL, "general", NULL); /* ~450 B per SSE event, ~360 KB in all */
    ck_assert_int_eq(tu_wait_rows(db, N, 30000), N);
    wait_hub(S.sse_port, N); /* else the WebSocket's history may end lower, the rest live */

    reader_open_ok(&a, S.sse_port, "/v1/stream?channels=general&history=1000", NULL);
    reader_open_ok(&b, S.sse_port, "/v1/stream?channels=general&format=ndjson", "Last-Event-ID: 0\r\n");
    ck_assert_int_eq(tu_ws_open(&w, S.sse_port, "/v1/ws", 10000), 0);
    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"subscribe\",\"channel\":\"general\",\"history\":1000}"), 0);
    int ra = reader_until(&a, N, 15000), rb = reader_until(&b, N, 15000);
    ck_assert_msg(ra, "history=1000: got %zu of %d messages, stream ended: %d (slow disconnects: %.0f)", a.n, N, a.ended,
                  metric(S.sse_port, "sluice_sse_slow_client_disconnects_total"));
    ck_assert_msg(rb, "resume from 0: got %zu of %d messages, stream ended: %d", b.n, N, b.ended);
    assert_run(&a, "history=1000", 1, 1, N, NULL);
    assert_run(&b, "Last-Event-ID: 0", 1, 1, N, NULL);
    ws_expect_type(&w, "subscribed", "channel", "general");
    json_t *h = ws_next_json(&w, 15000);
    ck_assert_str_eq(jstr(h, "type"), "history");
    ck_assert_int_eq(json_array_size(json_object_get(h, "messages")), N);
    json_decref(h);
    /* and live after it */
    tu_post(&S, "general", "after the long history");
    ck_assert(reader_until(&a, N + 1, 10000));
    ck_assert(reader_until(&b, N + 1, 10000));
    char ch[72];
    ck_assert_int_eq(ws_expect_message(&w, ch, sizeof(ch)), N + 1);
    ck_assert(metric(S.sse_port, "sluice_sse_slow_client_disconnects_total") == 0);
    tu_ws_close(&w);
    reader_free(&a);
    reader_free(&b);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- more: SIGTERM, long channel lists ------------------------------------------------------------ */

/* SIGTERM ends every stream at once (clients resume elsewhere; a WebSocket is told 1001 going
 * away) and the process exits 0 without waiting out its drain timeout. */
START_TEST(test_sigterm_ends_streams_promptly)
{
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_DRAIN_TIMEOUT=10", NULL};
    reader_t a = {0}, b = {0};
    tu_ws_t w;
    tu_wsmsg_t m;
    start_stack("sseterm", env);
    post_many(3, 3, 0, NULL, NULL, "general", NULL);
    reader_open_ok(&a, S.sse_port, "/v1/stream?history=3", NULL);
    reader_open_ok(&b, S.sse_port, "/v1/stream?history=3&format=ndjson", NULL);
    ck_assert(reader_until(&a, 3, 10000) && reader_until(&b, 3, 10000));
    ck_assert_int_eq(tu_ws_open(&w, S.sse_port, "/v1/ws", 10000), 0);
    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"subscribe\",\"channel\":\"general\",\"history\":0}"), 0);
    ck_assert_int_eq(tu_ws_recv_data(&w, &m, 5000), 1);
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"websocket\"}", 1, 5000));
    tu_sleep_ms(300); /* every stream idle: nothing in flight */

    long long t0 = tu_now_ms();
    kill(S.sse, SIGTERM);
    ck_assert_msg(reader_for(&a, 3000) == -1, "the SSE stream is still open 3 s after SIGTERM");
    ck_assert_msg(reader_for(&b, 1000) == -1, "the NDJSON stream is still open after SIGTERM");
    int rc;
    while ((rc = tu_ws_recv_data(&w, &m, 3000)) == 1 && m.opcode != TU_WS_CLOSE)
        ;
    ck_assert_msg(rc == 1, "no close frame on the WebSocket after SIGTERM (%d)", rc);
    ck_assert_int_eq(m.close_code, 1001);
    ck_assert_int_eq(tu_ws_send_close(&w, 1001, NULL), 0); /* the client's half of the handshake */
    while ((rc = tu_ws_recv(&w, &m, 3000)) == 1)
        ;
    ck_assert_msg(rc == -1, "the WebSocket is still open after its close handshake");
    int status = tu_stop(&S.sse, SIGTERM, 15000);
    long long took = tu_now_ms() - t0;
    fprintf(stderr, "sigterm: sse exited %d after %lld ms\n", status, took);
    ck_assert_int_eq(status, 0);
    ck_assert_msg(took < 4000, "sse took %lld ms to exit with its streams closed (drain timeout 10 s)", took);
    tu_ws_close(&w);
    reader_free(&a);
    reader_free(&b);
    tu_stack_cleanup(&S);
}
END_TEST

/* As many channels as SLUICE_SSE_MAX_CHANNELS allows (default 32), each with the longest name
 * (64): history and resume cover every one of them. */
START_TEST(test_history_covers_every_channel_of_a_long_list)
{
    enum { NCH = 32 };
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", NULL};
    const char *env_db[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_RECENT=0", NULL};
    static char names[NCH][65], list[NCH * 65 + 1], target[NCH * 65 + 128];
    static reader_t a[2], b[2];
    const char *kind[2] = {"from memory", "from the database"};
    char who[160];
    size_t o = 0;
    memset(a, 0, sizeof(a));
    memset(b, 0, sizeof(b));
    start_stack("ssechans", env);
    int port[2] = {S.sse_port, start_extra(env_db)};
    PGconn *db = tu_db(&S);
    for (int i = 0; i < NCH; i++) {
        snprintf(names[i], sizeof(names[i]), "c%02d", i);
        memset(names[i] + 3, 'x', 61);
        names[i][64] = '\0';
        o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s", i ? "," : "", names[i]);
        tu_post(&S, names[i], "one per channel");
        ck_assert_int_eq(tu_wait_rows(db, i + 1, 10000), i + 1); /* seq i + 1 is channel i */
    }
    for (int i = 0; i < 2; i++) {
        snprintf(target, sizeof(target), "/v1/stream?channels=%s&history=100", list);
        reader_open_ok(&a[i], port[i], target, NULL);
        snprintf(target, sizeof(target), "/v1/stream?channels=%s&since=0&format=ndjson", list);
        reader_open_ok(&b[i], port[i], target, NULL);
    }
    for (int i = 0; i < 2; i++) {
        reader_for(&a[i], 1000);
        reader_for(&b[i], 100);
        ck_assert_msg(a[i].n == NCH, "history of %d channels %s: %zu messages (last seq %lld)", NCH, kind[i], a[i].n,
                      reader_last(&a[i]));
        ck_assert_msg(b[i].n == NCH, "resume on %d channels %s: %zu messages (last seq %lld)", NCH, kind[i], b[i].n,
                      reader_last(&b[i]));
        snprintf(who, sizeof(who), "history, 32 channels, %s", kind[i]);
        assert_run(&a[i], who, 1, 1, NCH, NULL);
        snprintf(who, sizeof(who), "since=0, 32 channels, %s", kind[i]);
        assert_run(&b[i], who, 1, 1, NCH, NULL);
        reader_free(&a[i]);
        reader_free(&b[i]);
    }
    stop_extra();
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- 6. recovery: RabbitMQ and PostgreSQL restarts under connected streams --------------------------- */

static void assert_readyz(int port, long status, const char *has, int timeout_ms)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/readyz", port);
    for (long long end = tu_now_ms() + timeout_ms;; tu_sleep_ms(100)) {
        tu_resp_t r;
        int ok = tu_http("GET", url, NULL, NULL, NULL, 0, &r) == 0 && r.status == status &&
                 (has == NULL || strstr(r.body, has) != NULL);
        char body[256];
        snprintf(body, sizeof(body), "%s", r.body ? r.body : "");
        tu_resp_free(&r);
        if (ok)
            return;
        ck_assert_msg(tu_now_ms() < end, "/readyz of port %d: want %ld %s, last answer %s", port, status,
                      has ? has : "", body);
    }
}

START_TEST(test_streams_survive_broker_and_database_restarts)
{
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_HEARTBEAT_MS=300", NULL};
    reader_t a = {0}, b = {0}, late = {0};
    char api_ready[160];
    start_stack("sserecover", env);
    PGconn *db = tu_db(&S);
    snprintf(api_ready, sizeof(api_ready), "%s/readyz", S.base);
    reader_open_ok(&a, S.sse_port, "/v1/stream?history=0", NULL);
    reader_open_ok(&b, S.sse_port, "/v1/stream?history=0&format=ndjson", NULL);
    post_many(5, 5, 0, NULL, NULL, "general", NULL);
    ck_assert(reader_until(&a, 5, 10000));
    ck_assert(reader_until(&b, 5, 10000));

    /* RabbitMQ goes away: not ready, yet the streams stay (heartbeats). */
    ck_assert_int_eq(tu_servers("stop-rabbitmq >/dev/null"), 0);
    assert_readyz(S.sse_port, 503, "\"amqp\":\"down\"", 10000);
    int ha = a.heartbeats, hb = b.heartbeats;
    ck_assert_int_eq(reader_for(&a, 1200), 0);
    ck_assert_int_eq(reader_for(&b, 100), 0);
    ck_assert_msg(a.heartbeats > ha && b.heartbeats > hb, "no heartbeats while the broker was down");
    ck_assert_int_eq(tu_servers("start-rabbitmq >/dev/null"), 0);
    assert_readyz(S.sse_port, 200, NULL, 30000);
    ck_assert(tu_wait_status(api_ready, 200, 30000));
    post_many(5, 5, 0, NULL, NULL, "general", NULL);
    ck_assert_msg(reader_until(&a, 10, 20000), "SSE stream got up to %lld after the broker restart", reader_last(&a));
    ck_assert_msg(reader_until(&b, 10, 20000), "NDJSON stream got up to %lld after the broker restart",
                  reader_last(&b));

    /* PostgreSQL goes away: not ready, new streams refused, connected ones stay; posts still get
     * in (the broker holds them) and reach the streams once the database is back. */
    ck_assert_int_eq(tu_servers("stop-postgres >/dev/null"), 0);
    PQfinish(db);
    assert_readyz(S.sse_port, 503, "\"db\":\"down\"", 10000);
    long st = reader_open(&late, S.sse_port, "/v1/stream", NULL);
    ck_assert_msg(st == 503, "a new stream while the database is down answered %ld", st);
    ck_assert_ptr_nonnull(strstr(late.st.body, "\"code\":\"not_ready\""));
    reader_free(&late);
    ha = a.heartbeats;
    hb = b.heartbeats;
    post_many(3, 3, 0, NULL, NULL, "general", NULL);
    ck_assert_int_eq(reader_for(&a, 1200), 0);
    ck_assert_int_eq(reader_for(&b, 100), 0);
    ck_assert_msg(a.heartbeats > ha && b.heartbeats > hb, "no heartbeats while the database was down");
    ck_assert_int_eq(tu_servers("start-postgres >/dev/null"), 0);
    assert_readyz(S.sse_port, 200, NULL, 30000);
    ck_assert_msg(reader_until(&a, 13, 30000), "SSE stream got up to %lld after the database restart",
                  reader_last(&a));
    ck_assert_msg(reader_until(&b, 13, 30000), "NDJSON stream got up to %lld after the database restart",
                  reader_last(&b));
    assert_run(&a, "SSE through both restarts", 1, 1, 13, NULL);
    assert_run(&b, "NDJSON through both restarts", 1, 1, 13, NULL);
    ck_assert_int_eq(a.ended + b.ended, 0);
    reader_free(&a);
    reader_free(&b);
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- 7. WebSocket ---------------------------------------------------------------------------------- */

/* The next data frame as JSON (asserts one comes in time and parses). */
static json_t *ws_next_json(tu_ws_t *w, int timeout_ms)
{
    tu_wsmsg_t m;
    int rc = tu_ws_recv_data(w, &m, timeout_ms);
    ck_assert_msg(rc == 1, "no WebSocket frame within %d ms (rc %d, eof %d)", timeout_ms, rc, w->eof);
    ck_assert_msg(m.opcode == TU_WS_TEXT, "frame opcode %d (close code %d): %s", m.opcode, m.close_code, m.data);
    json_error_t e;
    json_t *o = json_loads(m.data, 0, &e);
    ck_assert_msg(o != NULL && json_is_object(o), "not a JSON object: %s", m.data);
    return o;
}

static const char *jstr(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : "";
}

static void ws_expect_type(tu_ws_t *w, const char *type, const char *key, const char *value)
{
    json_t *o = ws_next_json(w, 10000);
    char *text = json_dumps(o, JSON_COMPACT);
    ck_assert_msg(strcmp(jstr(o, "type"), type) == 0, "want type %s, got %s", type, text);
    if (key != NULL)
        ck_assert_msg(strcmp(jstr(o, key), value) == 0, "want %s=%s in %s", key, value, text);
    free(text);
    json_decref(o);
}

/* A history frame of channel: its messages' seqs must equal want. */
static void ws_expect_history(tu_ws_t *w, const char *channel, const long long *want, size_t n)
{
    json_t *o = ws_next_json(w, 10000), *msgs, *m;
    char *text = json_dumps(o, JSON_COMPACT);
    size_t i;
    ck_assert_msg(strcmp(jstr(o, "type"), "history") == 0 && strcmp(jstr(o, "channel"), channel) == 0,
                  "want the history of %s, got %.300s", channel, text);
    msgs = json_object_get(o, "messages");
    ck_assert_msg(json_array_size(msgs) == n, "history of %s: %zu messages, want %zu", channel, json_array_size(msgs),
                  n);
    json_array_foreach(msgs, i, m)
    {
        ck_assert_int_eq(json_integer_value(json_object_get(m, "seq")), want[i]);
        ck_assert_str_eq(jstr(m, "channel"), channel);
        ck_assert_int_eq(strlen(jstr(m, "id")), 36);
    }
    free(text);
    json_decref(o);
}

/* A {"type":"message"} frame: returns its seq, channel into ch. */
static long long ws_expect_message(tu_ws_t *w, char *ch, size_t size)
{
    json_t *o = ws_next_json(w, 10000), *m;
    char *text = json_dumps(o, JSON_COMPACT);
    ck_assert_msg(strcmp(jstr(o, "type"), "message") == 0, "want a message, got %s", text);
    m = json_object_get(o, "message");
    ck_assert_msg(json_is_object(m) && json_is_integer(json_object_get(m, "seq")), "bad message frame %s", text);
    long long seq = json_integer_value(json_object_get(m, "seq"));
    snprintf(ch, size, "%s", jstr(m, "channel"));
    free(text);
    json_decref(o);
    return seq;
}

static void ws_expect_error(tu_ws_t *w, const char *command, const char *code)
{
    ck_assert_int_eq(tu_ws_send_text(w, command), 0);
    json_t *o = ws_next_json(w, 10000);
    char *text = json_dumps(o, JSON_COMPACT);
    ck_assert_msg(strcmp(jstr(o, "type"), "error") == 0 && strcmp(jstr(o, "code"), code) == 0,
                  "command %s: want error %s, got %s", command, code, text);
    ck_assert_msg(*jstr(o, "message") != '\0', "error without message: %s", text);
    free(text);
    json_decref(o);
    /* the socket still works */
    ck_assert_int_eq(tu_ws_send_text(w, "{\"command\":\"ping\"}"), 0);
    ws_expect_type(w, "pong", NULL, NULL);
}

/* Sends a bad frame, expects a close frame with code, answers it, expects the server to hang up. */
static void ws_expect_close(tu_ws_t *w, int code)
{
    tu_wsmsg_t m;
    int rc;
    while ((rc = tu_ws_recv(w, &m, 10000)) == 1 && m.opcode != TU_WS_CLOSE)
        ;
    ck_assert_msg(rc == 1, "no close frame (rc %d, eof %d)", rc, w->eof);
    ck_assert_int_eq(m.close_code, code);
    tu_ws_send_close(w, code, NULL);
    while ((rc = tu_ws_recv(w, &m, 5000)) == 1)
        ;
    ck_assert_msg(rc == -1, "the server kept the connection open after the close handshake");
}

START_TEST(test_websocket_subscriptions)
{
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_WS_MAX_FRAME=4096", "SLUICE_SSE_HEARTBEAT_MS=300", NULL};
    tu_ws_t w, w2;
    char ch[72];
    size_t n;
    long long *want;
    start_stack("ssews", env);
    PGconn *db = tu_db(&S);
    post_many(20, 10, 0, NULL, NULL, "general", "news", NULL);
    ck_assert_int_eq(tu_wait_rows(db, 20, 20000), 20);
    wait_hub(S.sse_port, 20); /* history is what the instance has delivered */

    ck_assert_int_eq(tu_ws_open(&w, S.sse_port, "/v1/ws", 10000), 0);
    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"subscribe\",\"channel\":\"general\",\"history\":5}"), 0);
    ws_expect_type(&w, "subscribed", "channel", "general");
    want = db_seqs(db, "SELECT seq FROM (SELECT seq FROM messages WHERE channel = 'general' ORDER BY seq DESC"
                       " LIMIT 5) h ORDER BY seq",
                   &n);
    ws_expect_history(&w, "general", want, n);
    free(want);
    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"subscribe\",\"channel\":\"news\",\"history\":3}"), 0);
    ws_expect_type(&w, "subscribed", "channel", "news");
    want = db_seqs(db, "SELECT seq FROM (SELECT seq FROM messages WHERE channel = 'news' ORDER BY seq DESC"
                       " LIMIT 3) h ORDER BY seq",
                   &n);
    ws_expect_history(&w, "news", want, n);
    free(want);
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"websocket\"}", 1, 5000));

    /* live, both channels, in seq order */
    post_many(6, 1, 0, NULL, NULL, "general", "news", "other", NULL);
    ck_assert_int_eq(tu_wait_rows(db, 26, 20000), 26);
    want = db_seqs(db, "SELECT seq FROM messages WHERE seq > 20 AND channel IN ('general', 'news') ORDER BY seq", &n);
    ck_assert_int_eq(n, 4);
    for (size_t i = 0; i < n; i++) {
        long long seq = ws_expect_message(&w, ch, sizeof(ch));
        ck_assert_int_eq(seq, want[i]);
        ck_assert_msg(strcmp(ch, "general") == 0 || strcmp(ch, "news") == 0, "a message of %s", ch);
    }
    free(want);

    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"ping\"}"), 0);
    ws_expect_type(&w, "pong", NULL, NULL);
    /* idle: the server pings (heartbeat); the client's pongs keep it open */
    tu_wsmsg_t m;
    unsigned pings = w.pings;
    ck_assert_int_eq(tu_ws_recv_data(&w, &m, 1000), 0);
    ck_assert_msg(w.pings > pings, "no ping frame in 1 s of silence (heartbeat 300 ms)");

    /* bad commands: an error frame each, and the socket goes on */
    ws_expect_error(&w, "this is not json", "invalid_json");
    ws_expect_error(&w, "[1,2]", "invalid_json");
    ws_expect_error(&w, "{}", "missing_command");
    ws_expect_error(&w, "{\"command\":\"dance\"}", "unknown_command");
    ws_expect_error(&w, "{\"command\":\"subscribe\",\"channel\":\"No!\"}", "invalid_channel");
    ws_expect_error(&w, "{\"command\":\"subscribe\"}", "invalid_channel");
    ws_expect_error(&w, "{\"command\":\"subscribe\",\"channel\":\"general\"}", "already_subscribed");
    ws_expect_error(&w, "{\"command\":\"subscribe\",\"channel\":\"x\",\"history\":-1}", "invalid_history");
    ws_expect_error(&w, "{\"command\":\"subscribe\",\"channel\":\"x\",\"history\":100000}", "invalid_history");
    ws_expect_error(&w, "{\"command\":\"subscribe\",\"channel\":\"x\",\"since\":\"abc\"}", "invalid_since");
    ws_expect_error(&w, "{\"command\":\"unsubscribe\",\"channel\":\"nope\"}", "not_subscribed");

    /* unsubscribe stops one channel: a news message, then a general one; only the latter comes */
    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"unsubscribe\",\"channel\":\"news\"}"), 0);
    ws_expect_type(&w, "unsubscribed", "channel", "news");
    tu_post(&S, "news", "nobody listens");
    ck_assert_int_eq(tu_wait_rows(db, 27, 20000), 27);
    tu_post(&S, "general", "still listening");
    ck_assert_int_eq(ws_expect_message(&w, ch, sizeof(ch)), 28);
    ck_assert_str_eq(ch, "general");

    /* subscribe with since: everything of the channel after it, then live */
    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"subscribe\",\"channel\":\"news\",\"since\":20}"), 0);
    ws_expect_type(&w, "subscribed", "channel", "news");
    want = db_seqs(db, "SELECT seq FROM messages WHERE channel = 'news' AND seq > 20 ORDER BY seq", &n);
    ws_expect_history(&w, "news", want, n);
    free(want);

    /* a binary frame: close 1003 */
    ck_assert_int_eq(tu_ws_send(&w, TU_WS_BINARY, "\x01\x02\x03", 3), 0);
    ws_expect_close(&w, 1003);
    tu_ws_close(&w);

    /* a message over SLUICE_SSE_WS_MAX_FRAME: close 1009 */
    ck_assert_int_eq(tu_ws_open(&w2, S.sse_port, "/v1/ws", 10000), 0);
    char *big = malloc(5001);
    ck_assert_ptr_nonnull(big);
    memset(big, ' ', 5000);
    memcpy(big, "{\"command\":\"ping\",\"pad\":\"", 25);
    memcpy(big + 4998, "\"}", 2);
    big[5000] = '\0';
    ck_assert_int_eq(tu_ws_send_text(&w2, big), 0);
    free(big);
    ws_expect_close(&w2, 1009);
    tu_ws_close(&w2);
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"websocket\"}", 0, 5000));

    /* a plain GET is no handshake */
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/ws", S.sse_port);
    tu_http_expect("GET", url, NULL, NULL, NULL, 0, 400);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* Per-socket limits: channels per socket (too_many_channels, the socket goes on) and the rate of
 * the client's messages (past the burst and the rate: close 1008). The frame size limit (1009)
 * is in test_websocket_subscriptions. */
START_TEST(test_websocket_limits)
{
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_MAX_CHANNELS=2", "SLUICE_SSE_WS_RATE=5",
                         "SLUICE_SSE_WS_BURST=10", NULL};
    tu_ws_t w;
    tu_wsmsg_t m;
    int rc;
    start_stack("ssewslimits", env);

    /* channels: 2 per socket; the third is refused, unsubscribing makes room */
    ck_assert_int_eq(tu_ws_open(&w, S.sse_port, "/v1/ws", 10000), 0);
    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"subscribe\",\"channel\":\"a\",\"history\":0}"), 0);
    ws_expect_type(&w, "subscribed", "channel", "a");
    ws_expect_type(&w, "history", "channel", "a");
    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"subscribe\",\"channel\":\"b\",\"history\":0}"), 0);
    ws_expect_type(&w, "subscribed", "channel", "b");
    ws_expect_type(&w, "history", "channel", "b");
    ws_expect_error(&w, "{\"command\":\"subscribe\",\"channel\":\"c\",\"history\":0}", "too_many_channels");
    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"unsubscribe\",\"channel\":\"a\"}"), 0);
    ws_expect_type(&w, "unsubscribed", "channel", "a");
    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"subscribe\",\"channel\":\"c\",\"history\":0}"), 0);
    ws_expect_type(&w, "subscribed", "channel", "c");
    ws_expect_type(&w, "history", "channel", "c");
    tu_ws_close(&w);

    /* a client within the rate (4/s, past the burst of 10) is never closed */
    ck_assert_int_eq(tu_ws_open(&w, S.sse_port, "/v1/ws", 10000), 0);
    for (int i = 0; i < 16; i++) {
        ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"ping\"}"), 0);
        ws_expect_type(&w, "pong", NULL, NULL);
        tu_sleep_ms(250);
    }
    tu_ws_close(&w);
    ck_assert(metric(S.sse_port, "sluice_sse_ws_rate_limited_total") == 0);

    /* a burst of 10 at once is answered; a flood right after it gets close 1008 (policy
     * violation; the close frame may overtake replies still queued), and nothing more */
    ck_assert_int_eq(tu_ws_open(&w, S.sse_port, "/v1/ws", 10000), 0);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"ping\"}"), 0);
    for (int i = 0; i < 10; i++)
        ws_expect_type(&w, "pong", NULL, NULL);
    for (int i = 0; i < 20; i++)
        ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"ping\"}"), 0);
    while ((rc = tu_ws_recv_data(&w, &m, 10000)) == 1 && m.opcode == TU_WS_TEXT)
        ;
    ck_assert_msg(rc == 1 && m.opcode == TU_WS_CLOSE, "no close frame after a flood (rc %d, eof %d)", rc, w.eof);
    ck_assert_int_eq(m.close_code, 1008);
    tu_ws_send_close(&w, 1008, NULL);
    while ((rc = tu_ws_recv(&w, &m, 5000)) == 1)
        ;
    ck_assert_msg(rc == -1, "the server kept the connection open after the close handshake");
    tu_ws_close(&w);
    ck_assert(wait_metric(S.sse_port, "sluice_sse_ws_rate_limited_total", 1, 5000));
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"websocket\"}", 0, 5000));
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- 8. NDJSON, formats, limits and validation ------------------------------------------------------ */

struct bad_stream {
    const char *target, *header;
    long status;
    const char *code, *field;
};

START_TEST(test_formats_limits_and_errors)
{
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_MAX_CONNS=3", "SLUICE_SSE_MAX_CHANNELS=4",
                         "SLUICE_SSE_HEARTBEAT_MS=300", NULL};
    reader_t r[4] = {{0}};
    char v[128];
    size_t n;
    long long *want;
    start_stack("sseformats", env);
    PGconn *db = tu_db(&S);
    post_many(45, 15, 0, NULL, NULL, "general", "news", "other", NULL);
    ck_assert_int_eq(tu_wait_rows(db, 45, 20000), 45);
    wait_hub(S.sse_port, 45); /* history is what the instance has delivered */

    /* NDJSON by Accept: history of two channels, oldest first, then heartbeats (empty lines) */
    reader_open_ok(&r[0], S.sse_port, "/v1/stream?channels=general,news&history=5", "Accept: application/x-ndjson\r\n");
    ck_assert_int_eq(r[0].st.fmt, TU_FMT_NDJSON);
    ck_assert_str_eq(tu_stream_header(&r[0].st, "content-type", v, sizeof(v)), "application/x-ndjson");
    ck_assert_str_eq(tu_stream_header(&r[0].st, "access-control-allow-origin", v, sizeof(v)), "*");
    ck_assert(reader_count(&r[0], 5, 10000));
    ck_assert_int_eq(reader_for(&r[0], 1000), 0);
    want = db_seqs(db, "SELECT seq FROM (SELECT seq FROM messages WHERE channel IN ('general', 'news')"
                       " ORDER BY seq DESC LIMIT 5) h ORDER BY seq",
                   &n);
    assert_seqs(&r[0], 0, want, n, "NDJSON history");
    free(want);
    ck_assert_int_ge(r[0].heartbeats, 1);
    ck_assert_int_eq(r[0].retries, 0);
    reader_free(&r[0]);

    /* SSE by default: retry: first, default history 20 of every channel, ": heartbeat" comments */
    reader_open_ok(&r[0], S.sse_port, "/v1/stream", NULL);
    ck_assert_int_eq(r[0].st.fmt, TU_FMT_SSE);
    ck_assert_str_eq(tu_stream_header(&r[0].st, "content-type", v, sizeof(v)), "text/event-stream");
    ck_assert_str_eq(tu_stream_header(&r[0].st, "access-control-allow-origin", v, sizeof(v)), "*");
    ck_assert(reader_count(&r[0], 20, 10000));
    ck_assert_int_eq(reader_for(&r[0], 1000), 0);
    ck_assert_int_eq(r[0].retries, 1);
    ck_assert_int_ge(r[0].heartbeats, 1);
    assert_run(&r[0], "default SSE stream", 26, 26, 45, NULL);
    reader_free(&r[0]);

    /* the server notices a client gone when it next writes to it (a heartbeat at the latest) */
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"sse\"}", 0, 5000));
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"ndjson\"}", 0, 5000));

    /* format wins over Accept; Accept: text/event-stream is SSE; ?format=ndjson is NDJSON */
    reader_open_ok(&r[0], S.sse_port, "/v1/stream?format=sse&history=1", "Accept: application/x-ndjson\r\n");
    ck_assert_int_eq(r[0].st.fmt, TU_FMT_SSE);
    reader_open_ok(&r[1], S.sse_port, "/v1/stream?history=1", "Accept: text/event-stream\r\n");
    ck_assert_int_eq(r[1].st.fmt, TU_FMT_SSE);
    reader_open_ok(&r[2], S.sse_port, "/v1/stream?format=ndjson&history=1&channels=other", NULL);
    ck_assert_int_eq(r[2].st.fmt, TU_FMT_NDJSON);
    ck_assert(reader_count(&r[0], 1, 5000) && reader_count(&r[1], 1, 5000) && reader_count(&r[2], 1, 5000));
    ck_assert_int_eq(r[2].seqs[0], tu_scalar(db, "SELECT max(seq) FROM messages WHERE channel = 'other'"));

    /* three streams are the limit: the fourth (stream or WebSocket) gets 503 */
    long st = reader_open(&r[3], S.sse_port, "/v1/stream", NULL);
    ck_assert_msg(st == 503, "the 4th stream answered %ld", st);
    ck_assert_ptr_nonnull(strstr(r[3].st.body, "\"code\":\"too_many_connections\""));
    ck_assert_ptr_nonnull(tu_stream_header(&r[3].st, "retry-after", v, sizeof(v)));
    reader_free(&r[3]);
    tu_ws_t w;
    ck_assert_int_eq(tu_ws_open(&w, S.sse_port, "/v1/ws", 5000), -1);
    ck_assert_int_eq(w.status, 503);
    ck_assert_ptr_nonnull(strstr(w.body, "too_many_connections"));
    tu_ws_close(&w);
    ck_assert(metric(S.sse_port, "sluice_sse_refused_total") >= 2);
    /* one leaves, one more gets in */
    reader_free(&r[0]);
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"sse\"}", 1, 5000));
    reader_open_ok(&r[0], S.sse_port, "/v1/stream?history=0", NULL);
    for (int k = 0; k < 3; k++)
        reader_free(&r[k]);
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"sse\"}", 0, 5000));
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"ndjson\"}", 0, 5000));

    /* validation: JSON errors with code and field */
    const struct bad_stream cases[] = {
        {"/v1/stream?channels=BAD", NULL, 400, "invalid_channel", "channels"},
        {"/v1/stream?channels=", NULL, 400, "invalid_channel", "channels"},
        {"/v1/stream?channels=a,,b", NULL, 400, "invalid_channel", "channels"},
        {"/v1/stream?channels=general,", NULL, 400, "invalid_channel", "channels"},
        {"/v1/stream?channels=a,b,c,d,e", NULL, 400, "too_many_channels", "channels"},
        {"/v1/stream?history=abc", NULL, 400, "invalid_history", "history"},
        {"/v1/stream?history=-1", NULL, 400, "invalid_history", "history"},
        {"/v1/stream?history=1001", NULL, 400, "invalid_history", "history"},
        {"/v1/stream?history=", NULL, 400, "invalid_history", "history"},
        {"/v1/stream?since=x", NULL, 400, "invalid_since", "since"},
        {"/v1/stream?since=-5", NULL, 400, "invalid_since", "since"},
        {"/v1/stream?format=xml", NULL, 400, "invalid_format", "format"},
        {"/v1/stream", "Last-Event-ID: abc\r\n", 400, "invalid_last_event_id", NULL},
        {"/v1/nothing", NULL, 404, "not_found", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct bad_stream *c = &cases[i];
        reader_t b = {0};
        char want_code[96], want_field[96];
        long got = reader_open(&b, S.sse_port, c->target, c->header);
        ck_assert_msg(got == c->status, "case %zu: %s answered %ld, want %ld (%s)", i, c->target, got, c->status,
                      b.st.body ? b.st.body : "");
        snprintf(want_code, sizeof(want_code), "\"code\":\"%s\"", c->code);
        ck_assert_msg(strstr(b.st.body, want_code) != NULL, "case %zu: %s lacks %s", i, b.st.body, want_code);
        ck_assert_msg(strstr(b.st.body, "\"error\":{") != NULL && strstr(b.st.body, "\"message\":\"") != NULL,
                      "case %zu: %s is not an error object", i, b.st.body);
        if (c->field != NULL) {
            snprintf(want_field, sizeof(want_field), "\"field\":\"%s\"", c->field);
            ck_assert_msg(strstr(b.st.body, want_field) != NULL, "case %zu: %s lacks %s", i, b.st.body, want_field);
        }
        ck_assert_msg(tu_stream_header(&b.st, "content-type", v, sizeof(v)) != NULL &&
                          strncmp(v, "application/json", 16) == 0,
                      "case %zu: content-type %s", i, v);
        reader_free(&b);
    }
    /* a channel named twice counts once */
    reader_open_ok(&r[0], S.sse_port, "/v1/stream?channels=a,a,a,a,a,b&history=0", NULL);
    reader_free(&r[0]);

    /* the other methods; CORS preflight */
    tu_resp_t resp;
    char url[160];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/stream", S.sse_port);
    ck_assert_int_eq(tu_http("POST", url, NULL, "application/json", "{}", 2, &resp), 0);
    ck_assert_int_eq(resp.status, 405);
    ck_assert_ptr_nonnull(strstr(resp.body, "method_not_allowed"));
    tu_resp_free(&resp);
    ck_assert_int_eq(tu_http("OPTIONS", url, "Origin: http://example.com", NULL, NULL, 0, &resp), 0);
    ck_assert_int_eq(resp.status, 204);
    tu_resp_free(&resp);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/healthz", S.sse_port);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &resp), 0);
    ck_assert_int_eq(resp.status, 200);
    tu_resp_free(&resp);
    ck_assert(metric(S.sse_port, "sluice_sse_ready") == 1);
    ck_assert(metric(S.sse_port, "sluice_sse_connections_total") >= 6);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST


/* ---- the page and the JavaScript client ---------------------------------------------------------- */

/* A file of the source tree, whole (NUL-terminated; *len without it). */
static char *read_source(const char *rel, size_t *len)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", SLUICE_SOURCE_DIR, rel);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    sl_buf_t b = SL_BUF_INIT;
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        sl_buf_append(&b, chunk, n);
    fclose(f);
    *len = b.len;
    return b.data != NULL ? b.data : strdup("");
}

START_TEST(test_page_and_client_js)
{
    char url[160], v[256], etag[96], cond[160];
    tu_resp_t r;
    size_t flen;
    start_stack("ssepage", NULL);
    char *file = read_source("clients/js/sluice.js", &flen);

    /* /client.js is clients/js/sluice.js as it was built, as JavaScript, for any origin */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/client.js", S.sse_port);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(tu_resp_header(&r, "content-type", v, sizeof(v)), "text/javascript; charset=utf-8");
    ck_assert_str_eq(tu_resp_header(&r, "access-control-allow-origin", v, sizeof(v)), "*");
    ck_assert_str_eq(tu_resp_header(&r, "cache-control", v, sizeof(v)), "no-cache");
    ck_assert_ptr_nonnull(tu_resp_header(&r, "etag", etag, sizeof(etag)));
    ck_assert_msg(strlen(etag) > 2 && etag[0] == '"' && etag[strlen(etag) - 1] == '"', "etag %s", etag);
    ck_assert_uint_eq(strlen(r.body), flen);
    ck_assert_msg(memcmp(r.body, file, flen) == 0, "/client.js differs from clients/js/sluice.js");
    tu_resp_free(&r);

    /* revalidation: the same ETag gets 304 without a body, on a connection kept open */
    snprintf(cond, sizeof(cond), "If-None-Match: %s", etag);
    ck_assert_int_eq(tu_http("GET", url, cond, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 304);
    ck_assert_str_eq(r.body, "");
    ck_assert_str_eq(tu_resp_header(&r, "etag", v, sizeof(v)), etag);
    ck_assert_ptr_null(tu_resp_header(&r, "content-length", v, sizeof(v)));
    tu_resp_free(&r);
    ck_assert_int_eq(tu_http("GET", url, "If-None-Match: W/\"x\", *", NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200); /* "*" only alone */
    tu_resp_free(&r);
    ck_assert_int_eq(tu_http("GET", url, "If-None-Match: \"another\"", NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_uint_eq(strlen(r.body), flen);
    tu_resp_free(&r);
    tu_http_expect("POST", url, NULL, "application/json", "{}", 2, 405);

    /* the page (web/index.html as it was built) imports it: its CSP lets scripts come from the
     * page's own origin, images (Mastodon avatars and media) from anywhere over https only, and
     * nothing else from elsewhere but connections (the api, the streams) */
    free(file);
    file = read_source("web/index.html", &flen);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", S.sse_port);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(tu_resp_header(&r, "content-type", v, sizeof(v)), "text/html; charset=utf-8");
    ck_assert_ptr_nonnull(tu_resp_header(&r, "content-security-policy", v, sizeof(v)));
    ck_assert_str_eq(v, "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
                        "img-src 'self' https:; connect-src *");
    ck_assert_uint_eq(strlen(r.body), flen);
    ck_assert_msg(memcmp(r.body, file, flen) == 0, "/ differs from web/index.html");
    ck_assert_ptr_nonnull(strstr(r.body, "from \"./client.js\""));
    tu_resp_free(&r);
    free(file);
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- edits and deletes (Mastodon's status.update / delete) ----------------------------------------- */

/* Publishes an update or delete event of message id to the stack's persist queue, as ingest does. */
static void publish_event(sl_message_type_t type, const char *id, const char *text)
{
    tu_publish_event(&S, type, id, "general", text);
}

START_TEST(test_edits_and_deletes_reach_streams)
{
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", NULL};
    const char *no_memory[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_RECENT=0", NULL};
    tu_stream_t live, replay, hist;
    tu_sev_t ev;
    tu_resp_t r;
    char url[160], id[37], target[128];
    start_stack("sseevents", env);
    int port2 = start_extra(no_memory);
    ck_assert_int_eq(tu_stream_open(&live, S.sse_port, "/v1/stream?channels=general&history=0", NULL, 10000), 0);
    ck_assert_int_eq(live.status, 200);

    snprintf(url, sizeof(url), "%s/v1/messages", S.base);
    const char *b = "{\"author\":\"mona\",\"text\":\"first words\"}";
    ck_assert_int_eq(tu_http("POST", url, NULL, "application/json", b, strlen(b), &r), 0);
    ck_assert_int_eq(r.status, 202);
    tu_json_str(r.body, "id", id, sizeof(id));
    tu_resp_free(&r);
    ck_assert(tu_stream_next_event(&live, &ev, 10000));
    ck_assert_str_eq(ev.event, "message");
    long long s1 = ev.seq;

    publish_event(SL_MESSAGE_UPDATE, id, "better words");
    ck_assert(tu_stream_next_event(&live, &ev, 10000));
    ck_assert_str_eq(ev.event, "update");
    ck_assert_int_eq(ev.seq, s1 + 1);
    ck_assert_ptr_nonnull(strstr(ev.data, "better words"));
    ck_assert_ptr_nonnull(strstr(ev.data, id));
    publish_event(SL_MESSAGE_DELETE, id, NULL);
    ck_assert(tu_stream_next_event(&live, &ev, 10000));
    ck_assert_str_eq(ev.event, "delete");
    ck_assert_int_eq(ev.seq, s1 + 2);
    ck_assert_ptr_nonnull(strstr(ev.data, id));

    /* a resume from before replays message, edit and delete, in order, from the database */
    snprintf(target, sizeof(target), "/v1/stream?channels=general&since=%lld", s1 - 1);
    ck_assert_int_eq(tu_stream_open(&replay, port2, target, NULL, 10000), 0);
    const char *want[] = {"message", "update", "delete"};
    for (int i = 0; i < 3; i++) {
        ck_assert(tu_stream_next_event(&replay, &ev, 10000));
        ck_assert_str_eq(ev.event, want[i]);
        ck_assert_int_eq(ev.seq, s1 + i);
    }
    /* history leaves the deleted message out; the api answers 404 for it */
    ck_assert_int_eq(tu_stream_open(&hist, port2, "/v1/stream?channels=general&history=5&format=ndjson", NULL, 10000),
                     0);
    ck_assert_int_eq(tu_stream_next_event(&hist, &ev, 1500), 0); /* nothing: the only message is gone */
    snprintf(url, sizeof(url), "%s/v1/messages/%s", S.base, id);
    tu_http_expect("GET", url, NULL, NULL, NULL, 0, 404);
    tu_stream_close(&live);
    tu_stream_close(&replay);
    tu_stream_close(&hist);
    stop_extra();
    tu_stack_cleanup(&S);
}
END_TEST


/* ---- 9. abuse (#12): client-growable buffers ------------------------------------------------------ */

static void db_exec(PGconn *db, const char *sql)
{
    PGresult *r = PQexec(db, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s: %s", sql, PQerrorMessage(db));
    PQclear(r);
}

/* A WebSocket that subscribes (history 1000) and unsubscribes four times a second and never reads
 * (8 messages a second, under the rate limit): every byte queued for it, history frames included,
 * counts against SLUICE_SSE_OUT_MAX_BYTES, so it is cut off like any slow client and the
 * service's memory stays within the limit plus a constant. */
START_TEST(test_ws_never_reading_is_cut_off)
{
    enum { N = 1000, LIMIT_KB = 256 };
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_OUT_MAX_BYTES=262144", NULL};
    static const char sub[] = "{\"command\":\"subscribe\",\"channel\":\"general\",\"history\":1000}";
    static const char unsub[] = "{\"command\":\"unsubscribe\",\"channel\":\"general\"}";
    tu_ws_t w;
    start_stack("sseabuse", env);
    PGconn *db = tu_db(&S);
    post_many(N, 20, 100, NULL, NULL, "general", NULL); /* ~0.5 KB each as JSON: ~0.5 MB per history */
    ck_assert_int_eq(tu_wait_rows(db, N, 60000), N);
    wait_hub(S.sse_port, N);

    ck_assert_int_eq(tu_ws_open_rcvbuf(&w, S.sse_port, "/v1/ws", 4096, 10000), 0);
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"websocket\"}", 1, 5000));
    tu_sleep_ms(300);
    long rss0 = proc_kb(S.sse, "VmRSS"), rssmax = rss0;
    ck_assert_int_gt(rss0, 0);
    long long t0 = tu_now_ms(), cut_ms = -1;
    int rounds = 0;
    while (tu_now_ms() - t0 < 10000) {
        if (cut_ms < 0 && metric(S.sse_port, "sluice_sse_slow_client_disconnects_total") >= 1)
            cut_ms = tu_now_ms() - t0;
        /* once cut off, the server answers with a reset: sending fails, and the abuse ends */
        if (tu_ws_send_text(&w, sub) != 0 || tu_ws_send_text(&w, unsub) != 0)
            break;
        rounds++;
        long rss = proc_kb(S.sse, "VmRSS");
        rssmax = rss > rssmax ? rss : rssmax;
        tu_sleep_ms(250);
    }
    long rss1 = proc_kb(S.sse, "VmRSS"), hwm = proc_kb(S.sse, "VmHWM");
    rssmax = rss1 > rssmax ? rss1 : rssmax;
    double slow = metric(S.sse_port, "sluice_sse_slow_client_disconnects_total");
    double sent = metric(S.sse_port, "sluice_sse_bytes_queued_total");
    fprintf(stderr,
            "abuse: %d subscribe+unsubscribe rounds in %lld ms, cut off after %lld ms (slow disconnects %.0f), "
            "%.0f bytes queued in all; VmRSS %ld -> %ld kB (max %ld, +%ld), VmHWM %ld kB; limit %d kB\n",
            rounds, tu_now_ms() - t0, cut_ms, slow, sent, rss0, rss1, rssmax, rssmax - rss0, hwm, LIMIT_KB);
    ck_assert_msg(slow == 1, "the WebSocket that never reads was not cut off (slow disconnects %.0f, VmRSS %ld -> %ld kB)",
                  slow, rss0, rssmax);
    ck_assert(wait_metric(S.sse_port, "sluice_sse_clients{transport=\"websocket\"}", 0, 10000));
    ck_assert(wait_metric(S.sse_port, "sluice_sse_queued_bytes", 0, 10000));
#ifndef __SANITIZE_ADDRESS__ /* ASan's quarantine keeps freed memory resident */
    /* the limit, one history frame (~0.5 MB) as wslay holds it and as h2o writes it, and slack */
    ck_assert_msg(rssmax - rss0 < LIMIT_KB + 3 * 1024, "VmRSS grew by %ld kB under the abuse (limit %d kB)",
                  rssmax - rss0, LIMIT_KB);
#endif
    tu_ws_close(&w);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* A WebSocket subscription whose history cannot be read (the table locked past the query
 * timeout) gets an error naming its channel and is dropped: subscribing again works. */
START_TEST(test_ws_history_failure_drops_the_subscription)
{
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_RECENT=0", "SLUICE_DB_QUERY_TIMEOUT_MS=1000", NULL};
    tu_ws_t w;
    char ch[72];
    start_stack("ssewshist", env);
    PGconn *db = tu_db(&S), *locker = tu_db(&S);
    post_many(3, 3, 0, NULL, NULL, "general", NULL);
    ck_assert_int_eq(tu_wait_rows(db, 3, 20000), 3);
    wait_hub(S.sse_port, 3);

    db_exec(locker, "BEGIN");
    db_exec(locker, "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE");
    ck_assert_int_eq(tu_ws_open(&w, S.sse_port, "/v1/ws", 10000), 0);
    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"subscribe\",\"channel\":\"general\",\"history\":2}"), 0);
    ws_expect_type(&w, "subscribed", "channel", "general");
    json_t *o = ws_next_json(&w, 10000);
    char *text = json_dumps(o, JSON_COMPACT);
    ck_assert_msg(strcmp(jstr(o, "type"), "error") == 0 && strcmp(jstr(o, "code"), "history_unavailable") == 0 &&
                      strcmp(jstr(o, "channel"), "general") == 0,
                  "want error history_unavailable for general, got %s", text);
    free(text);
    json_decref(o);
    db_exec(locker, "COMMIT");

    /* subscribing again works: history, then live */
    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"subscribe\",\"channel\":\"general\",\"history\":2}"), 0);
    ws_expect_type(&w, "subscribed", "channel", "general");
    const long long want[] = {2, 3};
    ws_expect_history(&w, "general", want, 2);
    tu_post(&S, "general", "after the failure");
    ck_assert_int_eq(ws_expect_message(&w, ch, sizeof(ch)), 4);
    ck_assert(metric(S.sse_port, "sluice_sse_history_failures_total") == 1);
    tu_ws_close(&w);
    PQfinish(locker);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* In db's open transaction, stores n messages as the persister does (seq = last + 1, the counter
 * advanced) and publishes them on the stack's live exchange as one live message, as the persister
 * does after its commit: here before the commit, which the test holds back. */
static void store_and_publish_uncommitted(PGconn *db, int n, const char *const *channels, int nchannels)
{
    sl_buf_t live = SL_BUF_INIT;
    char err[256];
    for (int i = 0; i < n; i++) {
        sl_message_t m;
        memset(&m, 0, sizeof(m));
        m.seq = tu_scalar(db, "SELECT last_seq FROM sluice_feed WHERE id = 1") + 1;
        snprintf(m.channel, sizeof(m.channel), "%s", channels[i % nchannels]);
        snprintf(m.author, sizeof(m.author), "direct");
        snprintf(m.text, sizeof(m.text), "held back %d", i);
        snprintf(m.source, sizeof(m.source), "api");
        char s[24];
        snprintf(s, sizeof(s), "%lld", (long long)m.seq);
        const char *p[] = {s, m.channel, m.text};
        PGresult *r = PQexecParams(db,
                                   "INSERT INTO messages (id, seq, channel, author, body, source, created_at)"
                                   " VALUES (gen_random_uuid(), $1, $2, 'direct', $3, 'api', now())"
                                   " RETURNING id::text, (extract(epoch FROM created_at) * 1000000)::int8",
                                   3, NULL, p, NULL, NULL, 0);
        ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "insert: %s", PQerrorMessage(db));
        snprintf(m.id, sizeof(m.id), "%s", PQgetvalue(r, 0, 0));
        m.created_at_us = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
        PQclear(r);
        r = PQexecParams(db, "UPDATE sluice_feed SET last_seq = $1 WHERE id = 1", 1, NULL, p, NULL, NULL, 0);
        ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "update: %s", PQerrorMessage(db));
        PQclear(r);
        if (i > 0)
            sl_buf_append(&live, "\n", 1);
        sl_message_append_json(&live, &m);
    }
    amqp_connection_state_t c = sl_amqp_open(getenv("SLUICE_AMQP_URL"), "test", 0, 5000, err, sizeof(err));
    ck_assert_msg(c != NULL, "%s", err);
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG;
    props.content_type = amqp_cstring_bytes(SL_LIVE_CONTENT_TYPE);
    amqp_bytes_t body = {live.len, live.data};
    ck_assert_int_eq(amqp_basic_publish(c, SL_AMQP_CHANNEL, amqp_cstring_bytes(S.live),
                                        amqp_cstring_bytes(SL_LIVE_ROUTING_KEY), 0, 0, &props, body),
                     AMQP_STATUS_OK);
    sl_amqp_close(c);
    sl_buf_free(&live);
}

/* Streams waiting for their history hold at most SLUICE_SSE_SEAM_MAX events each: past it they
 * drop what they held and finish the seam from the database, still without gap or repeat. The
 * history queries wait on a lock of messages while the test feeds the hub live events of rows
 * it stored in the locking transaction. */
START_TEST(test_seam_buffer_is_bounded)
{
    enum { SEAM = 10, MORE = 60, SUBS = 3 };
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_RECENT=0", "SLUICE_SSE_SEAM_MAX=10", NULL};
    const char *const chans[] = {"general", "news"};
    reader_t a = {0}, b = {0};
    tu_ws_t w;
    char ch[72];
    size_t n;
    start_stack("sseseam", env);
    PGconn *db = tu_db(&S), *locker = tu_db(&S);
    post_many(5, 1, 0, NULL, NULL, "general", "news", NULL);
    ck_assert_int_eq(tu_wait_rows(db, 5, 20000), 5);
    wait_hub(S.sse_port, 5);
    ck_assert(metric(S.sse_port, "sluice_sse_seam_max_events") == SEAM);

    db_exec(locker, "BEGIN");
    db_exec(locker, "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE");
    /* a resume, a stream with the newest message as history, a WebSocket the same (RECENT=0: their
     * histories come from the database, and wait for the lock) */
    reader_open_ok(&a, S.sse_port, "/v1/stream?format=ndjson", "Last-Event-ID: 2\r\n");
    reader_open_ok(&b, S.sse_port, "/v1/stream?history=1", NULL);
    ck_assert_int_eq(tu_ws_open(&w, S.sse_port, "/v1/ws", 10000), 0);
    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"subscribe\",\"channel\":\"general\",\"history\":1}"), 0);
    ws_expect_type(&w, "subscribed", "channel", "general");
    tu_sleep_ms(300);
    store_and_publish_uncommitted(locker, MORE, chans, 2);
    wait_hub(S.sse_port, 5 + MORE);
    double held = metric(S.sse_port, "sluice_sse_seam_buffered_events");
    double overflows = metric(S.sse_port, "sluice_sse_seam_overflows_total");
    fprintf(stderr, "seam: %d events while %d streams wait for their history: %.0f held, %.0f overflows\n", MORE, SUBS,
            held, overflows);
    ck_assert_msg(held >= 0 && held <= SUBS * SEAM, "%.0f events held by %d streams waiting (at most %d each)", held,
                  SUBS, SEAM);
    ck_assert_msg(overflows == SUBS, "%.0f overflows, want %d", overflows, SUBS);
    db_exec(locker, "COMMIT");

    /* every event once, in order, from where each stream started */
    ck_assert_msg(reader_until(&a, 5 + MORE, 15000), "resume: got %zu messages, ended %d", a.n, a.ended);
    assert_run(&a, "resume through an overflowed seam", 3, 3, 5 + MORE, NULL);
    ck_assert_msg(reader_until(&b, 5 + MORE, 15000), "history=1: got %zu messages, ended %d", b.n, b.ended);
    assert_run(&b, "history=1 through an overflowed seam", 5 + MORE, 5 + MORE, 5 + MORE, NULL);
    long long *want = db_seqs(db, "SELECT max(seq) FROM messages WHERE channel = 'general'", &n);
    ws_expect_history(&w, "general", want, 1);
    free(want);
    /* and live, once */
    tu_post(&S, "general", "live after the seam");
    ck_assert(reader_until(&a, 6 + MORE, 10000));
    ck_assert(reader_until(&b, 6 + MORE, 10000));
    assert_run(&a, "resume, then live", 3, 3, 6 + MORE, NULL);
    assert_run(&b, "history=1, then live", 5 + MORE, 5 + MORE, 6 + MORE, NULL);
    ck_assert_int_eq(ws_expect_message(&w, ch, sizeof(ch)), 6 + MORE);
    ck_assert(metric(S.sse_port, "sluice_sse_seam_buffered_events") == 0);
    tu_ws_close(&w);
    reader_free(&a);
    reader_free(&b);
    PQfinish(locker);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* What the server has written to each of fds[0..n) once it stops writing (two equal readings
 * 200 ms apart), into w. */
static void settled_written(const int *fds, int n, long *w)
{
    for (int i = 0; i < n; i++)
        w[i] = -2;
    for (int round = 0, changed = 1; changed && round < 25; round++) {
        changed = 0;
        for (int i = 0; i < n; i++) {
            long now = tu_net_written_to(fds[i]);
            changed |= now != w[i];
            w[i] = now;
        }
        if (changed)
            tu_sleep_ms(200);
    }
}

/* A WebSocket whose 101 is not written yet at SIGTERM (#12): h2o's upgrade callback is still to
 * come with its connection, so sse may not free that then (the callback read freed memory when the
 * write later failed: ASan aborts sse). A client that does not read leaves its 101 unwritten when
 * the answers before it just fill the server's send buffer. Each client announces a small segment
 * size, which makes that buffer a few tens of KB (rather than ~1 MB on loopback), and pipelines k
 * small requests (/healthz) then an upgrade, k swept around the number of answers such a client
 * takes (measured first, then looked for in rounds). The test checks from what reached the clients
 * that some 101s are unwritten, then sends SIGTERM, resets every client (pending writes fail) and
 * wants sse to exit 0. */
START_TEST(test_sigterm_with_unwritten_upgrades)
{
    enum { MSS = 536, PROBE = 4000, PLAIN = 8, PER_K = 2, ROUNDS = 4 };
    const char *env[] = {"SLUICE_DRAIN_TIMEOUT=5", "SLUICE_MAX_CONNS_PER_CLIENT=0", NULL};
    /* a small answer; with a body: h2o completes a 204's write (an empty last buffer) only once the
     * socket is writable again, and a 101 after it never meets a full buffer */
    static const char small[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    static const char upgrade[] = "GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    const size_t slen = sizeof(small) - 1;
    char *buf = malloc((PROBE + 1) * slen + sizeof(upgrade));
    ck_assert_ptr_nonnull(buf);
    for (int k = 0; k < PROBE; k++)
        memcpy(buf + (size_t)k * slen, small, slen);
    start_stack("sseupgrade", env);

    /* the size of one answer (a client that reads) */
    int fd = tu_net_connect(S.sse_port, 0, tu_now_ms() + 5000);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(tu_net_send_all(fd, small, slen, tu_now_ms() + 5000), 0);
    char *in = NULL, *end = NULL, cl[24];
    size_t inlen = 0, incap = 0;
    int eof = 0, err = 0;
    while (end == NULL || (size_t)(end + 4 - in) + strtoul(cl, NULL, 10) > inlen) {
        ck_assert_int_gt(tu_net_read_some(fd, &in, &inlen, &incap, &eof, &err, tu_now_ms() + 5000), 0);
        in[inlen] = '\0';
        if ((end = strstr(in, "\r\n\r\n")) != NULL)
            ck_assert_ptr_nonnull(tu_header_in(in, "content-length", cl, sizeof(cl)));
    }
    ck_assert_int_eq(strncmp(in, "HTTP/1.1 200", 12), 0);
    long answer = (long)inlen;
    free(in);
    close(fd);

    /* how many answers a client that does not read takes: PROBE requests, count what is written */
    int probe = tu_net_connect_mss(S.sse_port, 1024, MSS, tu_now_ms() + 5000);
    ck_assert_int_ge(probe, 0);
    ck_assert_int_eq(tu_net_send_all(probe, buf, PROBE * slen, tu_now_ms() + 5000), 0);
    long taken;
    settled_written(&probe, 1, &taken);
    taken /= answer;
    ck_assert_msg(taken > 4 && taken * 3 / 2 < PROBE, "a client that does not read took %ld answers of %d", taken,
                  PROBE);

    /* PLAIN upgrades alone (their 101 is written); then rounds of PER_K clients for each k in a
     * range, 3/4 to 3/2 of taken first. The clients of one run take about as many answers as each
     * other, but not always as many as the probe (126 against 190 seen): a round that leaves no
     * 101 unwritten says where the edge is (after the last k whose upgrade was written, before the
     * first whose answers were not), and the next round looks there. */
    int cap = PLAIN + 4096, conns = 0, unwritten = 0, written = 0;
    int lo = (int)(taken * 3 / 4), hi = (int)(taken * 3 / 2);
    int *fds = calloc((size_t)cap, sizeof(*fds)), *ks = calloc((size_t)cap, sizeof(*ks));
    long *w = calloc((size_t)cap, sizeof(*w)), a101 = 0;
    ck_assert(fds != NULL && ks != NULL && w != NULL);
    for (int round = 0; round < ROUNDS && unwritten == 0; round++) {
        int first = conns, top = round == 0 ? PLAIN : 0;
        for (int k = lo; k <= hi + top && conns < cap; k++) {
            for (int j = 0; j < (k > hi ? 1 : PER_K); j++) {
                ks[conns] = k > hi ? 0 : k; /* PLAIN: k 0 */
                size_t len = (size_t)ks[conns] * slen;
                memcpy(buf + len, upgrade, sizeof(upgrade) - 1);
                fds[conns] = tu_net_connect_mss(S.sse_port, 1024, MSS, tu_now_ms() + 5000);
                ck_assert_int_ge(fds[conns], 0);
                ck_assert_int_eq(tu_net_send_all(fds[conns], buf, len + sizeof(upgrade) - 1, tu_now_ms() + 5000), 0);
                for (size_t o = len; o < len + sizeof(upgrade); o += slen) /* the small requests again */
                    memcpy(buf + o, small, slen);
                conns++;
            }
        }
        settled_written(fds + first, conns - first, w + first);
        for (int i = first; i < conns && a101 == 0; i++)
            if (ks[i] == 0)
                a101 = w[i];
        ck_assert_int_gt(a101, 0);
        int last_written = -1, first_short = INT_MAX;
        for (int i = first; i < conns; i++) {
            long before = ks[i] * answer;
            if (ks[i] == 0)
                continue;
            unwritten += w[i] >= before && w[i] < before + a101;
            written += w[i] == before + a101;
            if (w[i] == before + a101 && ks[i] > last_written)
                last_written = ks[i];
            if (w[i] < before && ks[i] < first_short)
                first_short = ks[i];
        }
        fprintf(stderr, "upgrades: round %d, %d-%d requests before the upgrade: %d written, %d unwritten so far\n",
                round + 1, lo, hi, written, unwritten);
        if (first_short == INT_MAX) /* every upgrade written: the edge is further */
            lo = hi + 1, hi = hi * 2;
        else if (last_written < 0) /* no upgrade reached: it is nearer */
            hi = lo - 1, lo = lo / 2;
        else if (last_written < first_short)
            lo = last_written, hi = first_short;
        else /* clients that disagree: all of the range between them */
            lo = first_short, hi = last_written;
        if (hi >= PROBE) /* buf holds PROBE requests */
            hi = PROBE - 1;
        ck_assert_int_ge(lo, 1);
    }
    double ws = metric(S.sse_port, "sluice_sse_clients{transport=\"websocket\"}");
    fprintf(stderr, "upgrades: answers of %ld bytes, 101s of %ld; the probe took %ld answers; %d clients: %d upgrades "
            "written, %d unwritten; %.0f handled\n",
            answer, a101, taken, conns, written, unwritten, ws);
    ck_assert_msg(unwritten > 0, "no 101 was left unwritten: this tests nothing");
    ck_assert_msg(ws == PLAIN + written + unwritten, "%.0f upgrades handled, %d written or unwritten", ws,
                  PLAIN + written + unwritten);

    long long t0 = tu_now_ms();
    kill(S.sse, SIGTERM);
    tu_sleep_ms(500);
    /* the clients go away at once (reset): a write still pending fails */
    struct linger lg = {1, 0};
    for (int i = 0; i <= conns; i++) {
        int f = i < conns ? fds[i] : probe;
        setsockopt(f, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        close(f);
    }
    int status = tu_stop(&S.sse, SIGTERM, 20000);
    fprintf(stderr, "upgrades: sse exited %d after %lld ms\n", status, tu_now_ms() - t0);
    ck_assert_msg(status == 0, "sse exited %d after SIGTERM with %d unwritten upgrades (see %s)", status, unwritten,
                  "test-logs/sseupgrade-sse.log");
    free(fds);
    free(ks);
    free(w);
    free(buf);
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- 10. abuse (#12): history reads are capped, and departed clients' reads cancelled ------------- */

/* Three since=1 streams from one address with SLUICE_SSE_HISTORY_PER_CLIENT=2, their history held
 * up by a lock on messages: the third gets 503 history_busy with Retry-After, and so does a
 * WebSocket subscribe (an error frame naming the channel, no subscription); once the lock goes,
 * the two get their history and the slots come back. An instance with a cap of 1 refuses the
 * second stream for the instance's cap. */
START_TEST(test_history_caps_refuse_with_retry_after)
{
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_RECENT=0", "SLUICE_SSE_HISTORY_PER_CLIENT=2",
                         "SLUICE_SSE_HISTORY_CONCURRENCY=8", NULL};
    const char *env1[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_RECENT=0", "SLUICE_SSE_HISTORY_CONCURRENCY=1",
                          NULL};
    static reader_t a, b, c, d, e;
    char ra[16];
    tu_ws_t w;
    start_stack("ssehistcap", env);
    int port1 = start_extra(env1);
    PGconn *db = tu_db(&S), *locker = tu_db(&S);
    post_many(3, 3, 0, NULL, NULL, "general", NULL);
    ck_assert_int_eq(tu_wait_rows(db, 3, 20000), 3);
    wait_hub(S.sse_port, 3);
    wait_hub(port1, 3);

    db_exec(locker, "BEGIN");
    db_exec(locker, "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE");
    reader_open_ok(&a, S.sse_port, "/v1/stream?since=1", NULL);
    reader_open_ok(&b, S.sse_port, "/v1/stream?channels=general&since=1&format=ndjson", NULL);
    ck_assert(wait_metric(S.sse_port, "sluice_sse_history_inflight", 2, 5000));
    long st = reader_open(&c, S.sse_port, "/v1/stream?since=1", NULL);
    ck_assert_msg(st == 503 && c.st.body != NULL && strstr(c.st.body, "\"history_busy\"") != NULL,
                  "the third stream got %ld: %s", st, c.st.body ? c.st.body : "");
    ck_assert_ptr_nonnull(tu_stream_header(&c.st, "retry-after", ra, sizeof(ra)));
    ck_assert_str_eq(ra, "1");
    /* a stream without history reads nothing and is not counted */
    reader_open_ok(&d, S.sse_port, "/v1/stream?history=0", NULL);

    ck_assert_int_eq(tu_ws_open(&w, S.sse_port, "/v1/ws", 10000), 0);
    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"subscribe\",\"channel\":\"general\",\"since\":1}"), 0);
    json_t *o = ws_next_json(&w, 10000);
    char *text = json_dumps(o, JSON_COMPACT);
    ck_assert_msg(strcmp(jstr(o, "type"), "error") == 0 && strcmp(jstr(o, "code"), "history_busy") == 0 &&
                      strcmp(jstr(o, "channel"), "general") == 0,
                  "want error history_busy for general, got %s", text);
    free(text);
    json_decref(o);
    ck_assert(metric(S.sse_port, "sluice_sse_history_refused_total{reason=\"client\"}") == 2);

    /* the instance's cap, on the other instance */
    reader_open_ok(&e, port1, "/v1/stream?since=1", NULL);
    ck_assert(wait_metric(port1, "sluice_sse_history_inflight", 1, 5000));
    reader_free(&c);
    st = reader_open(&c, port1, "/v1/stream?channels=general&since=2", NULL);
    ck_assert_msg(st == 503, "past the instance's cap: %ld", st);
    ck_assert(metric(port1, "sluice_sse_history_refused_total{reason=\"instance\"}") == 1);

    db_exec(locker, "COMMIT");
    ck_assert(reader_until(&a, 3, 10000));
    ck_assert(reader_until(&b, 3, 10000));
    ck_assert(reader_until(&e, 3, 10000));
    ck_assert_int_eq(a.seqs[0], 2);
    ck_assert(wait_metric(S.sse_port, "sluice_sse_history_inflight", 0, 5000));
    ck_assert(wait_metric(port1, "sluice_sse_history_inflight", 0, 5000));
    /* the slots are back: the subscription that was refused now works */
    ck_assert_int_eq(tu_ws_send_text(&w, "{\"command\":\"subscribe\",\"channel\":\"general\",\"history\":2}"), 0);
    ws_expect_type(&w, "subscribed", "channel", "general");
    const long long want[] = {2, 3};
    ws_expect_history(&w, "general", want, 2);
    tu_post(&S, "general", "after the lock");
    ck_assert(reader_until(&a, 4, 10000));
    ck_assert(reader_until(&d, 4, 10000));
    tu_ws_close(&w);
    reader_free(&a);
    reader_free(&b);
    reader_free(&c);
    reader_free(&d);
    reader_free(&e);
    PQfinish(locker);
    PQfinish(db);
    stop_extra();
    tu_stack_cleanup(&S);
}
END_TEST

/* Connects and sends a since=1 stream request; returns the socket (the caller drops it), or -1. */
static int connect_and_ask(int port)
{
    static const char req[] = "GET /v1/stream?since=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    long long deadline = tu_now_ms() + 5000;
    int fd = tu_net_connect(port, 0, deadline);
    if (fd >= 0 && tu_net_send_all(fd, req, sizeof(req) - 1, deadline) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Connect-and-drop: 300 clients send a since=1 request and close at once, each before the next
 * connects. The service handles many before their end arrives, so a check at the request alone
 * let 21-53 of them query the database here (and 1 000 of 3 000 clients of bench/sse_run.sh
 * --abuse, 0.8 core of PostgreSQL); with the reads HISTORY_DEFER_MS later, none did. A client that
 * stays still gets its history from the database. */
START_TEST(test_connect_and_drop_reads_no_history)
{
    enum { DROPS = 300, POSTS = 20 };
    const char *env[] = {"SLUICE_SSE_RECENT=0", "SLUICE_SSE_HEARTBEAT_MS=1000", "SLUICE_SSE_HISTORY_CONCURRENCY=1000",
                         "SLUICE_SSE_HISTORY_PER_CLIENT=1000", NULL};
    static reader_t stays;
    start_stack("ssehistquick", env);
    PGconn *db = tu_db(&S);
    post_many(POSTS, 5, 0, NULL, NULL, "general", NULL);
    ck_assert_int_eq(tu_wait_rows(db, POSTS, 20000), POSTS);
    wait_hub(S.sse_port, POSTS);
    double reads0 = metric(S.sse_port, "sluice_sse_history_db_reads_total");
    int sent = 0;
    for (int i = 0; i < DROPS; i++) {
        int fd = connect_and_ask(S.sse_port);
        sent += fd >= 0;
        if (fd >= 0)
            close(fd);
    }
    ck_assert_int_eq(sent, DROPS);
    ck_assert(wait_metric(S.sse_port, "sluice_sse_history_inflight", 0, 10000));
    double reads = metric(S.sse_port, "sluice_sse_history_db_reads_total") - reads0;
    fprintf(stderr, "connect-and-drop: %d requests, %.0f history reads from the database\n", DROPS, reads);
    ck_assert_msg(reads <= DROPS / 30, "%.0f of %d connect-and-drop requests read their history", reads, DROPS);
    reader_open_ok(&stays, S.sse_port, "/v1/stream?channels=general&since=1", NULL);
    ck_assert_msg(reader_until(&stays, POSTS, 5000), "a stream that stays got %zu of %d", stays.n, POSTS - 1);
    ck_assert(metric(S.sse_port, "sluice_sse_history_db_reads_total") - reads0 == reads + 1);
    reader_free(&stays);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* 300 since=1 requests dropped at once while their history is held up by a lock: at most the cap
 * are read at a time, the rest are refused; the departed clients free their slots and their
 * queued queries leave the pool's FIFO while the lock still holds (only the statements already
 * sent remain, one per connection); once it goes, nothing is pending, and a live stream still
 * gets a new post within a second. */
START_TEST(test_departed_clients_history_is_cancelled)
{
    enum { DROPS = 300, CAP = 16, CONNS = 2 };
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200",       "SLUICE_SSE_RECENT=0",
                         "SLUICE_SSE_HEARTBEAT_MS=1000",  "SLUICE_SSE_HISTORY_CONCURRENCY=16",
                         "SLUICE_SSE_HISTORY_PER_CLIENT=16", "SLUICE_SSE_DB_CONNS=2", NULL};
    static reader_t live;
    start_stack("ssehistdrop", env);
    PGconn *db = tu_db(&S), *locker = tu_db(&S);
    post_many(5, 5, 0, NULL, NULL, "general", NULL);
    ck_assert_int_eq(tu_wait_rows(db, 5, 20000), 5);
    wait_hub(S.sse_port, 5);
    reader_open_ok(&live, S.sse_port, "/v1/stream?channels=general&history=0", NULL);

    db_exec(locker, "BEGIN");
    db_exec(locker, "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE");
    long long t0 = tu_now_ms();
    static int fds[DROPS];
    int sent = 0;
    for (int i = 0; i < DROPS; i++)
        sent += (fds[i] = connect_and_ask(S.sse_port)) >= 0;
    tu_sleep_ms(300); /* let the service take every request before they go */
    for (int i = 0; i < DROPS; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    ck_assert_int_eq(sent, DROPS);
    double peak = metric_must(S.sse_port, "sluice_sse_history_inflight");
    double pending = metric_must(S.sse_port, "sluice_sse_db_pending_queries{pool=\"streams\"}");
    ck_assert_msg(peak <= CAP && pending <= CAP, "in flight %.0f, pending %.0f (cap %d)", peak, pending, CAP);
    ck_assert_msg(wait_metric(S.sse_port, "sluice_sse_history_inflight", 0, 10000),
                  "departed clients still hold %.0f history slots", metric(S.sse_port, "sluice_sse_history_inflight"));
    long long freed_ms = tu_now_ms() - t0;
    pending = metric_must(S.sse_port, "sluice_sse_db_pending_queries{pool=\"streams\"}");
    ck_assert_msg(pending <= CONNS, "%.0f queries pending with the lock held (%d connections)", pending, CONNS);
    double refused = metric_must(S.sse_port, "sluice_sse_history_refused_total{reason=\"instance\"}");
    /* how many the service took before the sockets went varies with the machine's load */
    ck_assert_msg(refused >= 1, "none refused past the cap");
    db_exec(locker, "COMMIT");
    ck_assert(wait_metric(S.sse_port, "sluice_sse_db_pending_queries{pool=\"streams\"}", 0, 5000));
    ck_assert(wait_metric(S.sse_port, "sluice_sse_db_pending_queries{pool=\"hub\"}", 0, 5000));
    long long t1 = tu_now_ms();
    tu_post(&S, "general", "after the drops");
    ck_assert(reader_until(&live, 6, 5000));
    long long live_ms = tu_now_ms() - t1;
    fprintf(stderr,
            "history drops: %d dropped, peak in flight %.0f, refused %.0f, streams opened %.0f, slots free after "
            "%lld ms, post to live delivery %lld ms\n",
            DROPS, peak, refused, metric(S.sse_port, "sluice_sse_connections_total"), freed_ms, live_ms);
    ck_assert_msg(live_ms < 1000, "the live stream got the post after %lld ms", live_ms);
    ck_assert(metric(S.sse_port, "sluice_sse_clients{transport=\"sse\"}") == 1);
    reader_free(&live);
    PQfinish(locker);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* Waits until series is at most max; 1 when it got there. */
static int wait_metric_at_most(int port, const char *series, double max, int timeout_ms)
{
    for (long long end = tu_now_ms() + timeout_ms; tu_now_ms() < end; tu_sleep_ms(50)) {
        double v = metric(port, series);
        if (v >= 0 && v <= max)
            return 1;
    }
    double v = metric(port, series);
    return v >= 0 && v <= max;
}

/* Histories still QUEUED in the pool (not yet sent to the database) when their client leaves:
 * the sse has one database connection for histories, held up by a lock, so of each round's
 * CAP reads one is running (or the one of an earlier round still is) and the rest wait in the
 * queue. Round after round, CAP WebSocket clients subscribe (since=1) and go away (the socket
 * dropped without a close frame, or an unsubscribe), then CAP since=1 streams connect and drop.
 * After each, while the lock still holds: every slot is back (the next round, at the cap again,
 * is not refused), and only the one statement already sent is pending: the queued ones left the
 * queue rather than wait for their deadline (60 s here). Once the lock goes, nothing is pending,
 * and a new stream and a new subscription get their history. */
START_TEST(test_departed_queued_histories_leave_the_queue)
{
    enum { ROUNDS = 4, CAP = 4, MSGS = 5 };
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200",         "SLUICE_SSE_RECENT=0",
                         "SLUICE_SSE_HEARTBEAT_MS=1000",    "SLUICE_SSE_HISTORY_CONCURRENCY=4",
                         "SLUICE_SSE_HISTORY_PER_CLIENT=4", "SLUICE_SSE_DB_CONNS=1",
                         "SLUICE_DB_QUERY_TIMEOUT_MS=60000", NULL};
    static const char inflight[] = "sluice_sse_history_inflight";
    static const char pending[] = "sluice_sse_db_pending_queries{pool=\"streams\"}";
    static const char sub[] = "{\"command\":\"subscribe\",\"channel\":\"general\",\"since\":1}";
    static reader_t late;
    static tu_ws_t ws[CAP];
    long long ws_ms = 0, stream_ms = 0;
    start_stack("ssequeuedrop", env);
    PGconn *db = tu_db(&S), *locker = tu_db(&S);
    post_many(MSGS, MSGS, 0, NULL, NULL, "general", NULL);
    ck_assert_int_eq(tu_wait_rows(db, MSGS, 20000), MSGS);
    wait_hub(S.sse_port, MSGS);

    db_exec(locker, "BEGIN");
    db_exec(locker, "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE");
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < CAP; i++) {
            ck_assert_int_eq(tu_ws_open(&ws[i], S.sse_port, "/v1/ws", 10000), 0);
            ck_assert_int_eq(tu_ws_send_text(&ws[i], sub), 0);
            ws_expect_type(&ws[i], "subscribed", "channel", "general"); /* not history_busy */
        }
        ck_assert(wait_metric(S.sse_port, inflight, CAP, 5000));
        /* CAP histories asked; one statement on the connection (this round's, or an earlier one's) */
        ck_assert_msg(wait_metric_at_most(S.sse_port, pending, CAP + 1, 5000) &&
                          metric(S.sse_port, pending) >= CAP,
                      "round %d: %.0f pending with %d subscriptions waiting", r, metric(S.sse_port, pending), CAP);
        long long t0 = tu_now_ms();
        ck_assert_int_eq(tu_ws_send_text(&ws[0], "{\"command\":\"unsubscribe\",\"channel\":\"general\"}"), 0);
        ws_expect_type(&ws[0], "unsubscribed", "channel", "general");
        for (int i = 0; i < CAP; i++)
            tu_ws_close(&ws[i]);
        ck_assert_msg(wait_metric(S.sse_port, inflight, 0, 5000), "round %d: departed WebSockets hold %.0f slots", r,
                      metric(S.sse_port, inflight));
        ck_assert_msg(wait_metric_at_most(S.sse_port, pending, 1, 5000),
                      "round %d: %.0f queries pending after the WebSockets left (1 statement was sent)", r,
                      metric(S.sse_port, pending));
        ws_ms += tu_now_ms() - t0;

        int fds[CAP];
        for (int i = 0; i < CAP; i++)
            ck_assert_int_ge(fds[i] = connect_and_ask(S.sse_port), 0);
        ck_assert_msg(wait_metric(S.sse_port, inflight, CAP, 5000), "round %d: %.0f streams reading, want %d", r,
                      metric(S.sse_port, inflight), CAP);
        t0 = tu_now_ms();
        for (int i = 0; i < CAP; i++)
            close(fds[i]);
        ck_assert_msg(wait_metric(S.sse_port, inflight, 0, 5000), "round %d: departed streams hold %.0f slots", r,
                      metric(S.sse_port, inflight));
        ck_assert_msg(wait_metric_at_most(S.sse_port, pending, 1, 5000),
                      "round %d: %.0f queries pending after the streams left", r, metric(S.sse_port, pending));
        stream_ms += tu_now_ms() - t0;
    }
    ck_assert(metric(S.sse_port, "sluice_sse_history_refused_total{reason=\"instance\"}") == 0);
    ck_assert(metric(S.sse_port, "sluice_sse_history_refused_total{reason=\"client\"}") == 0);

    db_exec(locker, "COMMIT");
    ck_assert(wait_metric(S.sse_port, pending, 0, 5000));
    long long t1 = tu_now_ms();
    reader_open_ok(&late, S.sse_port, "/v1/stream?channels=general&since=1", NULL);
    ck_assert(reader_until(&late, MSGS, 5000));
    long long late_stream_ms = tu_now_ms() - t1;
    const long long want[] = {2, 3, 4, 5};
    assert_seqs(&late, 0, want, MSGS - 1, "the stream after the drops");
    t1 = tu_now_ms();
    ck_assert_int_eq(tu_ws_open(&ws[0], S.sse_port, "/v1/ws", 10000), 0);
    ck_assert_int_eq(tu_ws_send_text(&ws[0], sub), 0);
    ws_expect_type(&ws[0], "subscribed", "channel", "general");
    ws_expect_history(&ws[0], "general", want, MSGS - 1);
    long long late_ws_ms = tu_now_ms() - t1;
    ck_assert(wait_metric(S.sse_port, inflight, 0, 5000));
    fprintf(stderr,
            "queued drops: %d rounds of %d WebSockets and %d streams left with their history queued; slots and "
            "queue free after %lld ms (WebSocket) / %lld ms (stream) on average; then a stream's history in %lld ms, "
            "a subscription's in %lld ms\n",
            ROUNDS, CAP, CAP, ws_ms / ROUNDS, stream_ms / ROUNDS, late_stream_ms, late_ws_ms);
    tu_ws_close(&ws[0]);
    reader_free(&late);
    PQfinish(locker);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- 11. a measurement (opt-in: SLUICE_TEST_ONLY=measure_history) ------------------------------- */

struct dropper {
    int port, n, pause_us;
    atomic_int done, failed;
};

static void *dropper_main(void *arg)
{
    struct dropper *d = arg;
    for (int i = 0; i < d->n; i++) {
        int fd = connect_and_ask(d->port);
        if (fd >= 0)
            close(fd);
        else
            atomic_fetch_add(&d->failed, 1);
        atomic_fetch_add(&d->done, 1);
        if (d->pause_us > 0)
            usleep((useconds_t)d->pause_us);
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p)
{
    if (n == 0)
        return 0;
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    int k = (int)(p * (n - 1) + 0.5);
    return v[k];
}

/* One round: a post on channel live until the live stream has it, and an api GET; in ms. */
static int sample_once(reader_t *live, long long *seq, double *post_live_ms, double *get_ms)
{
    char url[160];
    tu_resp_t r;
    int64_t t = sl_time_mono_us();
    tu_post(&S, "live", "measure");
    (*seq)++;
    if (!reader_until(live, *seq, 5000))
        return -1;
    *post_live_ms = (double)(sl_time_mono_us() - t) / 1000.0;
    snprintf(url, sizeof(url), "%s/v1/messages?channel=general&limit=50", S.base);
    t = sl_time_mono_us();
    if (tu_http("GET", url, NULL, NULL, NULL, 0, &r) != 0 || r.status != 200) {
        tu_resp_free(&r);
        return -1;
    }
    tu_resp_free(&r);
    *get_ms = (double)(sl_time_mono_us() - t) / 1000.0;
    return 0;
}

/* The issue's measure, printed, not asserted (timing on a shared machine): p99 of post-to-live
 * delivery and of the api's GET, alone and while 3 000 since=1 requests connect and drop (two
 * threads, 1 ms apart each; sampling goes on until they are done and at least 200 samples are
 * taken). The sse reads history from the database: SLUICE_SSE_RECENT=0, 1 000 messages stored. */
START_TEST(test_measure_history_drops)
{
    enum { PREFILL = 1000, BASE_N = 200, MAX_N = 2000, DROPS = 3000, THREADS = 2 };
    const char *env[] = {"SLUICE_SSE_CHECK_MS=200", "SLUICE_SSE_RECENT=0", NULL};
    static reader_t live;
    static double pl0[BASE_N], g0[BASE_N], pl1[MAX_N], g1[MAX_N];
    static struct dropper d[THREADS];
    pthread_t th[THREADS];
    start_stack("ssehistmeasure", env);
    PGconn *db = tu_db(&S);
    post_many(PREFILL, 20, 100, NULL, NULL, "general", NULL);
    ck_assert_int_eq(tu_wait_rows(db, PREFILL, 60000), PREFILL);
    wait_hub(S.sse_port, PREFILL);
    long long seq = PREFILL;
    reader_open_ok(&live, S.sse_port, "/v1/stream?channels=live&history=0", NULL);

    int n0 = 0, n1 = 0;
    for (; n0 < BASE_N; n0++)
        ck_assert_int_eq(sample_once(&live, &seq, &pl0[n0], &g0[n0]), 0);
    long long t0 = tu_now_ms();
    for (int i = 0; i < THREADS; i++) {
        d[i].port = S.sse_port;
        d[i].n = DROPS / THREADS;
        d[i].pause_us = 1000; /* spread over a few seconds, so that many samples overlap */
        ck_assert_int_eq(pthread_create(&th[i], NULL, dropper_main, &d[i]), 0);
    }
    for (;;) {
        int done = 0;
        for (int i = 0; i < THREADS; i++)
            done += atomic_load(&d[i].done);
        if ((done >= DROPS && n1 >= BASE_N) || n1 >= MAX_N)
            break;
        ck_assert_int_eq(sample_once(&live, &seq, &pl1[n1], &g1[n1]), 0);
        n1++;
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    long long drops_ms = tu_now_ms() - t0;
    int failed = atomic_load(&d[0].failed) + atomic_load(&d[1].failed);
    ck_assert(wait_metric(S.sse_port, "sluice_sse_history_inflight", 0, 15000));
    ck_assert(wait_metric(S.sse_port, "sluice_sse_db_pending_queries{pool=\"streams\"}", 0, 15000));
    double b_pl = pct(pl0, n0, 0.99), b_g = pct(g0, n0, 0.99), l_pl = pct(pl1, n1, 0.99), l_g = pct(g1, n1, 0.99);
    fprintf(stderr,
            "measure: %d connect-and-drop since=1 requests in %lld ms (%d failed to connect), refused %.0f+%.0f "
            "(instance+client), streams opened %.0f\n"
            "measure: live delivery p50/p99 %.2f/%.2f ms alone (%d samples), %.2f/%.2f ms under the drops (%d samples): "
            "x%.2f\n"
            "measure: api GET p50/p99 %.2f/%.2f ms alone, %.2f/%.2f ms under the drops: x%.2f\n",
            DROPS, drops_ms, failed, metric(S.sse_port, "sluice_sse_history_refused_total{reason=\"instance\"}"),
            metric(S.sse_port, "sluice_sse_history_refused_total{reason=\"client\"}"),
            metric(S.sse_port, "sluice_sse_connections_total"), pct(pl0, n0, 0.5), b_pl, n0, pct(pl1, n1, 0.5), l_pl,
            n1, b_pl > 0 ? l_pl / b_pl : 0, pct(g0, n0, 0.5), b_g, pct(g1, n1, 0.5), l_g, b_g > 0 ? l_g / b_g : 0);
    reader_free(&live);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* SLUICE_TEST_ONLY=<substring> runs the matching tests only (for working on one). */
int main(void)
{
    const tu_named_test_t tests[] = {
        {"formats", test_formats_limits_and_errors},
        {"page", test_page_and_client_js},
        {"websocket", test_websocket_subscriptions},
        {"wslimits", test_websocket_limits},
        {"seam", test_seam_under_load_is_gap_free},
        {"resume", test_resume_replays_missed_once},
        {"backfill", test_missing_live_events_are_backfilled},
        {"instances", test_every_instance_delivers_everything},
        {"slow", test_slow_client_is_cut_off},
        {"bighistory", test_long_history_passes_a_small_output_limit},
        {"sigterm", test_sigterm_ends_streams_promptly},
        {"channels", test_history_covers_every_channel_of_a_long_list},
        {"events", test_edits_and_deletes_reach_streams},
        {"abuse_ws_never_reads", test_ws_never_reading_is_cut_off},
        {"abuse_ws_history_fails", test_ws_history_failure_drops_the_subscription},
        {"abuse_seam_bound", test_seam_buffer_is_bounded},
        {"abuse_upgrade_sigterm", test_sigterm_with_unwritten_upgrades},
        {"abuse_history_caps", test_history_caps_refuse_with_retry_after},
        {"abuse_history_drops", test_departed_clients_history_is_cancelled},
        {"abuse_queued_drops", test_departed_queued_histories_leave_the_queue},
        {"abuse_history_quick_drops", test_connect_and_drop_reads_no_history},
        /* opt-in: a measurement that prints figures (SLUICE_TEST_ONLY=measure_history) */
        {"measure_history", test_measure_history_drops},
        /* last: it stops and starts the shared servers */
        {"recovery", test_streams_survive_broker_and_database_restarts},
    };
    return tu_run_named("sse", tests, sizeof(tests) / sizeof(tests[0]), 180);
}
