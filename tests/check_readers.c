/*
 * Integration tests of readers' tokens and private channels on the sse service (issue #13) and the
 * api's history, black-box on the real stack: SLUICE_PRIVATE_CHANNELS names the private channels;
 * a reader presents a JWT (HS256 from SLUICE_JWT_SECRET, RS256/ES256 from a JWKS rotated with
 * SIGHUP) as Authorization: Bearer, ?token=, or in a WebSocket's subscribe or auth command.
 *
 * What must hold: public channels read as before, without a token; a private one is refused 401
 * without a token and 403 with one that does not cover it (WebSocket: error frames naming the
 * channel, socket kept open); a stream of every channel never carries a private message its
 * token may not read, history (from the hub's memory and from the database) and live alike; a
 * token's end ends what it opened, and a new token with since resumes without a gap or a repeat.
 *
 * SLUICE_TEST_ONLY=<part of a name> runs only the matching tests.
 */
#include <check.h>
#include <jansson.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sl_streamclient.h"
#include "sl_testjwt.h"
#include "sl_testnet.h"
#include "sl_testsuite.h"
#include "sl_testutil.h"
#include "sl_wsclient.h"

#define SECRET "a-shared-secret-for-jwt-readers-0123456789"
/* staff and every team-* channel are private; ops_x too, whose '_' must not match "opsax" */
#define PRIVATE "SLUICE_PRIVATE_CHANNELS=staff,team-*,#ops_x"

static tu_stack_t S;
static PGconn *DB;
static long long POSTED; /* messages stored so far on the stack */

/* ---- posting and the database --------------------------------------------------------------------- */

/* Posts one message to channel and waits until it is stored: posts are one at a time, so seqs come
 * in the order of the calls. Returns its seq. */
static long long post(const char *channel)
{
    char url[128], body[256];
    tu_resp_t r;
    snprintf(url, sizeof(url), "%s/v1/messages", S.base);
    int len = snprintf(body, sizeof(body), "{\"channel\":\"%s\",\"author\":\"poster\",\"text\":\"on %s #%lld\"}",
                       channel, channel, POSTED + 1);
    ck_assert_int_eq(tu_http("POST", url, NULL, "application/json", body, (size_t)len, &r), 0);
    ck_assert_msg(r.status == 202, "POST answered %ld: %s", r.status, r.body);
    tu_resp_free(&r);
    POSTED++;
    ck_assert_int_eq(tu_wait_rows(DB, POSTED, 20000), POSTED);
    return tu_scalar(DB, "SELECT max(seq) FROM messages");
}

/* The seqs of the stored messages a query selects (SELECT seq ... ORDER BY seq), as a
 * comma-separated list ("" for none), to compare with what a reader got. */
static char *db_list(const char *sql)
{
    PGresult *r = PQexec(DB, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(DB));
    size_t cap = 16 + (size_t)PQntuples(r) * 21;
    char *out = malloc(cap);
    ck_assert_ptr_nonnull(out);
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; i < PQntuples(r); i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%s", i ? "," : "", PQgetvalue(r, i, 0));
    PQclear(r);
    return out;
}

/* How many seqs a list holds. */
static long long count(const char *list)
{
    long long n = *list != '\0';
    for (; *list; list++)
        n += *list == ',';
    return n;
}

/* ---- the stack ------------------------------------------------------------------------------------ */

/* api + persister + sse (with sse_env) on a fresh database. */
static void start_stack(const char *name, const char *const *sse_env)
{
    tu_stack_start(&S, name, sse_env);
    DB = tu_db(&S);
    POSTED = 0;
}

static void stop_stack(void)
{
    PQfinish(DB);
    DB = NULL;
    tu_stack_cleanup(&S);
}

/* The sse's /metrics has this line ("name{labels} value"). */
static int metrics_have(int port, const char *line)
{
    char url[128];
    tu_resp_t r;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", port);
    int found = tu_http("GET", url, NULL, NULL, NULL, 0, &r) == 0 && r.status == 200 && strstr(r.body, line) != NULL;
    tu_resp_free(&r);
    return found;
}

/* Waits until the instance's hub delivered seq (a stream opened before reads it live, not as
 * history: right, but not what a test comparing histories wants). */
static void wait_hub(int port, long long seq)
{
    char line[64];
    snprintf(line, sizeof(line), "sluice_sse_position %lld\n", seq);
    for (long long end = tu_now_ms() + 10000; !metrics_have(port, line); tu_sleep_ms(50))
        ck_assert_msg(tu_now_ms() < end, "sse on %d never reached seq %lld", port, seq);
}

/* ---- tokens --------------------------------------------------------------------------------------- */

/* An HS256 token of sub expiring at exp (seconds since the epoch), with "channels" when channels
 * (a JSON array's text) is not NULL. malloc'd. */
static char *token_at(const char *sub, long long exp, const char *channels)
{
    char claims[512];
    snprintf(claims, sizeof(claims), "{\"sub\":\"%s\",\"exp\":%lld%s%s}", sub, exp,
             channels != NULL ? ",\"channels\":" : "", channels != NULL ? channels : "");
    char *t = tu_jwt_hs256(SECRET, claims);
    ck_assert_ptr_nonnull(t);
    return t;
}

/* The same valid for ttl seconds from now (negative: expired). */
static char *token(const char *sub, long long ttl, const char *channels)
{
    return token_at(sub, (long long)time(NULL) + ttl, channels);
}

/* "Authorization: Bearer <t>\r\n" for tu_stream_opts_t.headers, in buf. */
static const char *bearer(char *buf, size_t size, const char *t)
{
    snprintf(buf, size, "Authorization: Bearer %s\r\n", t);
    return buf;
}

static long long wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- streams -------------------------------------------------------------------------------------- */

/* What a reader got: the seqs of its messages as a list ("3,5,8") and their channels, and whether
 * it was told its token expired. */
typedef struct got {
    tu_stream_t st;
    char seqs[8192];
    char channels[8192];
    size_t n;
    long long last;
    int resets;           /* reset events (a resume too old) */
    int expired;          /* the token_expired event came */
    long long expired_ms; /* when (wall clock, CLOCK_REALTIME: time() may lag it by a tick) */
    char expired_data[256];
} got_t;

/* Opens GET target (extra headers may be NULL); the answer must be want (a refusal's body is in
 * g->st.body). */
static void stream_open(got_t *g, int port, const char *target, const char *headers, long want)
{
    tu_stream_opts_t o = {headers, 0, 0};
    memset(g, 0, sizeof(*g));
    int rc = tu_stream_open(&g->st, port, target, &o, 10000);
    ck_assert_msg(rc == 0 && g->st.status == want, "GET %s answered %ld, want %ld: %s", target, rc ? 0 : g->st.status,
                  want, g->st.body ? g->st.body : "");
}

/* Reads until the reader has n messages (or, with n < 0, until the stream ends); fails the test
 * at timeout. A reset (first) and token_expired (last) are noted, any other event is a failure.
 * Returns 1 when the stream ended. */
static int stream_take(got_t *g, long long n, int timeout_ms)
{
    long long end = tu_now_ms() + timeout_ms;
    tu_sev_t ev;
    while (n < 0 || (long long)g->n < n) {
        long long left = end - tu_now_ms();
        ck_assert_msg(left > 0, "%zu messages (%s), want %lld", g->n, g->seqs, n);
        int rc = tu_stream_next(&g->st, &ev, (int)left);
        if (rc < 0)
            return 1;
        if (rc == 0 || ev.kind == TU_EV_HEARTBEAT || ev.kind == TU_EV_RETRY)
            continue;
        if (ev.kind == TU_EV_RESET) {
            ck_assert_msg(g->n == 0, "reset after %zu messages", g->n);
            g->resets++;
            continue;
        }
        ck_assert_msg(!g->expired, "something after token_expired: %s", ev.data);
        if (strcmp(ev.event, "token_expired") == 0) {
            g->expired = 1;
            g->expired_ms = wall_ms();
            snprintf(g->expired_data, sizeof(g->expired_data), "%s", ev.data);
            continue;
        }
        ck_assert_msg(ev.kind == TU_EV_MESSAGE && strcmp(ev.event, "message") == 0 && ev.seq > 0,
                      "unexpected event %s: %s", ev.event, ev.data);
        ck_assert_msg(ev.seq > g->last, "seq %lld after %lld", ev.seq, g->last);
        size_t l = strlen(g->seqs), lc = strlen(g->channels);
        snprintf(g->seqs + l, sizeof(g->seqs) - l, "%s%lld", g->n ? "," : "", ev.seq);
        snprintf(g->channels + lc, sizeof(g->channels) - lc, "%s%s", g->n ? "," : "", ev.channel);
        g->last = ev.seq;
        g->n++;
    }
    return 0;
}

/* Reads for ms more: nothing may come but heartbeats (what is left out stays out). */
static void stream_quiet(got_t *g, int ms)
{
    size_t n = g->n;
    long long end = tu_now_ms() + ms;
    tu_sev_t ev;
    for (long long left; (left = end - tu_now_ms()) > 0;) {
        int rc = tu_stream_next(&g->st, &ev, (int)left);
        ck_assert_msg(rc >= 0, "the stream ended");
        ck_assert_msg(rc == 0 || ev.kind == TU_EV_HEARTBEAT, "unexpected: %s", ev.data);
    }
    ck_assert_uint_eq(g->n, n);
}

static void stream_close(got_t *g)
{
    tu_stream_close(&g->st);
}

/* A refused stream: status, error code, and the WWW-Authenticate it must carry (NULL: none
 * checked). */
static void expect_refused(int port, const char *target, const char *headers, long status, const char *code,
                           const char *www)
{
    got_t g;
    char want[96], v[256];
    stream_open(&g, port, target, headers, status);
    snprintf(want, sizeof(want), "\"code\":\"%s\"", code);
    ck_assert_msg(g.st.body != NULL && strstr(g.st.body, want) != NULL, "GET %s: %s, want %s", target, g.st.body, code);
    if (www != NULL) {
        ck_assert_msg(tu_stream_header(&g.st, "www-authenticate", v, sizeof(v)) != NULL, "no WWW-Authenticate");
        ck_assert_msg(strstr(v, www) != NULL, "WWW-Authenticate: %s, want %s", v, www);
    }
    stream_close(&g);
}

/* ---- WebSocket ------------------------------------------------------------------------------------ */

static json_t *ws_json(tu_ws_t *w, int timeout_ms)
{
    tu_wsmsg_t m;
    int rc = tu_ws_recv_data(w, &m, timeout_ms);
    ck_assert_msg(rc == 1 && m.opcode == TU_WS_TEXT, "no text frame within %d ms (rc %d, opcode %d)", timeout_ms, rc,
                  rc == 1 ? m.opcode : -1);
    json_t *o = json_loads(m.data, 0, NULL);
    ck_assert_msg(json_is_object(o), "not a JSON object: %s", m.data);
    return o;
}

static const char *jstr(const json_t *o, const char *k)
{
    const json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : "";
}

/* The next frame is of type (and, with channel, names it); returned for more checks. */
static json_t *ws_expect(tu_ws_t *w, const char *type, const char *channel, int timeout_ms)
{
    json_t *o = ws_json(w, timeout_ms);
    char *text = json_dumps(o, JSON_COMPACT);
    ck_assert_msg(strcmp(jstr(o, "type"), type) == 0, "want %s, got %s", type, text);
    if (channel != NULL)
        ck_assert_msg(strcmp(jstr(o, "channel"), channel) == 0, "want channel %s in %s", channel, text);
    free(text);
    return o;
}

/* Sends command; the answer is an error frame with code (naming channel when not NULL), and the
 * socket goes on working. */
static void ws_refused(tu_ws_t *w, const char *command, const char *code, const char *channel)
{
    ck_assert_int_eq(tu_ws_send_text(w, command), 0);
    json_t *o = ws_expect(w, "error", channel, 10000);
    ck_assert_msg(strcmp(jstr(o, "code"), code) == 0, "%s: code %s, want %s", command, jstr(o, "code"), code);
    ck_assert(*jstr(o, "message") != '\0');
    json_decref(o);
    ck_assert_int_eq(tu_ws_send_text(w, "{\"command\":\"ping\"}"), 0);
    json_decref(ws_expect(w, "pong", NULL, 10000));
}

/* Sends a subscribe, expects subscribed and a history frame; returns the history's seqs as a
 * list in buf. */
static const char *ws_subscribe_ok(tu_ws_t *w, const char *command, const char *channel, char *buf, size_t size)
{
    size_t i, n = 0;
    json_t *m;
    ck_assert_int_eq(tu_ws_send_text(w, command), 0);
    json_decref(ws_expect(w, "subscribed", channel, 10000));
    json_t *h = ws_expect(w, "history", channel, 10000);
    buf[0] = '\0';
    json_array_foreach(json_object_get(h, "messages"), i, m)
    {
        ck_assert_str_eq(jstr(m, "channel"), channel);
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? "," : "",
                              (long long)json_integer_value(json_object_get(m, "seq")));
    }
    json_decref(h);
    return buf;
}

/* The next frame is a live message of channel; returns its seq. */
static long long ws_message(tu_ws_t *w, const char *channel)
{
    json_t *o = ws_expect(w, "message", NULL, 10000), *m = json_object_get(o, "message");
    ck_assert_str_eq(jstr(m, "channel"), channel);
    long long seq = json_integer_value(json_object_get(m, "seq"));
    json_decref(o);
    return seq;
}

static void ws_open_ok(tu_ws_t *w, int port)
{
    ck_assert_msg(tu_ws_open(w, port, "/v1/ws", 10000) == 0, "WebSocket refused: %ld", w->status);
}

/* ---- 1. private channels on SSE and NDJSON -------------------------------------------------------- */

/* Public channels as before; a private one needs a token that covers it; every refusal says why. */
START_TEST(test_private_channels_on_streams)
{
    const char *env[] = {"SLUICE_JWT_SECRET=" SECRET, PRIVATE, NULL};
    char h[8192], target[8192], *list;
    got_t g;
    start_stack("rdstreams", env);
    long long general1 = post("general"), staff1 = post("staff");
    post("team-red");
    post("general");
    post("staff");
    wait_hub(S.sse_port, POSTED);
    char *staff = token("sam", 600, "[\"staff\"]"), *teams = token("tess", 600, "[\"team-*\",\"general\"]");
    char *nochan = token("nina", 600, NULL), *expired = token("sam", -120, "[\"staff\"]");
    char *forged = tu_jwt_sign("{\"alg\":\"HS256\"}", "{\"sub\":\"eve\",\"exp\":9999999999,\"channels\":[\"*\"]}",
                               TU_JWT_HS256, "another-secret-for-forged-tokens-0123", 37);
    ck_assert_ptr_nonnull(forged);
    const char *fmt[] = {"", "&format=ndjson"};

    for (int f = 0; f < 2; f++) {
        /* a public channel without a token: as before */
        snprintf(target, sizeof(target), "/v1/stream?channels=general%s", fmt[f]);
        stream_open(&g, S.sse_port, target, NULL, 200);
        list = db_list("SELECT seq FROM messages WHERE channel = 'general' ORDER BY seq");
        stream_take(&g, count(list), 10000);
        ck_assert_str_eq(g.seqs, list);
        free(list);
        stream_close(&g);
        ck_assert_int_eq(general1, 1);

        /* a private channel: 401 without a token (alone or among public ones), 403 with one that
         * does not cover it (or has no channels claim), 401 for a bad token */
        snprintf(target, sizeof(target), "/v1/stream?channels=staff%s", fmt[f]);
        expect_refused(S.sse_port, target, NULL, 401, "token_required", "Bearer realm=\"sluice\"");
        snprintf(target, sizeof(target), "/v1/stream?channels=general,%%23staff%s", fmt[f]);
        expect_refused(S.sse_port, target, NULL, 401, "token_required", NULL);
        snprintf(target, sizeof(target), "/v1/stream?channels=staff%s", fmt[f]);
        expect_refused(S.sse_port, target, bearer(h, sizeof(h), teams), 403, "channel_forbidden",
                       "error=\"insufficient_scope\"");
        expect_refused(S.sse_port, target, bearer(h, sizeof(h), nochan), 403, "channel_forbidden", NULL);
        expect_refused(S.sse_port, target, bearer(h, sizeof(h), expired), 401, "token_expired",
                       "error=\"invalid_token\", error_description=\"token_expired\"");
        expect_refused(S.sse_port, target, bearer(h, sizeof(h), forged), 401, "token_bad_signature", NULL);
        /* with keys configured, a bad token is refused even on a public channel */
        snprintf(target, sizeof(target), "/v1/stream?channels=general&token=not-a-jwt%s", fmt[f]);
        expect_refused(S.sse_port, target, NULL, 401, "token_malformed", NULL);

        /* the right token, as a header or as ?token=: history, then live */
        snprintf(target, sizeof(target), "/v1/stream?channels=staff%s", fmt[f]);
        stream_open(&g, S.sse_port, target, bearer(h, sizeof(h), staff), 200);
        got_t q;
        snprintf(target, sizeof(target), "/v1/stream?channels=staff&token=%s%s", staff, fmt[f]);
        stream_open(&q, S.sse_port, target, NULL, 200);
        list = db_list("SELECT seq FROM messages WHERE channel = 'staff' ORDER BY seq");
        stream_take(&g, count(list), 10000);
        stream_take(&q, count(list), 10000);
        ck_assert_str_eq(g.seqs, list);
        ck_assert_str_eq(q.seqs, list);
        free(list);
        ck_assert_int_eq(strncmp(g.seqs, "2,", 2), 0);
        ck_assert_int_eq(staff1, 2);
        post("general");
        long long live = post("staff");
        stream_take(&g, (long long)g.n + 1, 10000);
        stream_take(&q, (long long)q.n + 1, 10000);
        ck_assert_int_eq(g.last, live);
        ck_assert_int_eq(q.last, live);
        stream_close(&g);
        stream_close(&q);
    }
    /* GET /v1/channels shows a private channel only to a token that may read it; its presence
     * is refused the same way (the token verified once for the whole list) */
    struct {
        const char *path, *tok;
        long status;
        const char *has, *lacks;
    } ch[] = {
        {"/v1/channels", NULL, 200, "\"channel\":\"general\"", "\"channel\":\"staff\""},
        {"/v1/channels", NULL, 200, "\"channel\":\"general\"", "\"channel\":\"team-red\""},
        {"/v1/channels", staff, 200, "\"channel\":\"staff\"", "\"channel\":\"team-red\""},
        {"/v1/channels", teams, 200, "\"channel\":\"team-red\"", "\"channel\":\"staff\""},
        {"/v1/channels/staff/presence", NULL, 401, NULL, NULL},
        {"/v1/channels/staff/presence", expired, 401, NULL, NULL},
        {"/v1/channels/staff/presence", teams, 403, NULL, NULL},
        {"/v1/channels/staff/presence", staff, 200, "\"channel\":\"staff\"", NULL},
        {"/v1/channels/general/presence", NULL, 200, "\"channel\":\"general\"", NULL},
    };
    for (size_t i = 0; i < sizeof(ch) / sizeof(ch[0]); i++) {
        char url[8192], auth[8192];
        tu_resp_t r;
        snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", S.sse_port, ch[i].path);
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", ch[i].tok != NULL ? ch[i].tok : "");
        ck_assert_int_eq(tu_http("GET", url, ch[i].tok != NULL ? auth : NULL, NULL, NULL, 0, &r), 0);
        ck_assert_msg(r.status == ch[i].status, "%s (%zu): %ld %s", ch[i].path, i, r.status, r.body);
        ck_assert_msg(ch[i].has == NULL || strstr(r.body, ch[i].has) != NULL, "%s (%zu): %s", ch[i].path, i, r.body);
        ck_assert_msg(ch[i].lacks == NULL || strstr(r.body, ch[i].lacks) == NULL, "%s (%zu): %s", ch[i].path, i,
                      r.body);
        tu_resp_free(&r);
    }
    /* counted */
    ck_assert(metrics_have(S.sse_port, "sluice_sse_private_refused_total{code=\"token_required\"} 4\n"));
    ck_assert(metrics_have(S.sse_port, "sluice_sse_private_refused_total{code=\"channel_forbidden\"} 4\n"));
    ck_assert(metrics_have(S.sse_port, "sluice_jwt_verifications_total{result=\"token_expired\"} 3\n"));
    ck_assert(metrics_have(S.sse_port, "sluice_jwt_verifications_total{result=\"token_bad_signature\"} 2\n"));
    ck_assert(metrics_have(S.sse_port, "sluice_sse_token_refused_total 7\n"));
    ck_assert(
        tu_log_contains(&S, "sse", "event=private_channel_refused transport=ndjson channel=staff code=token_required"));
    ck_assert(tu_log_contains(&S, "sse", "event=reader_token_refused transport=sse code=token_expired"));
    free(staff);
    free(teams);
    free(nochan);
    free(expired);
    free(forged);
    stop_stack();
}
END_TEST

/* ---- 2. a stream of every channel leaves out what its token may not read --------------------------- */

/* The seqs of every stored message a reader with granted (a SQL condition on channel) may read. */
static char *readable(const char *granted)
{
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT seq FROM messages WHERE (channel NOT IN ('staff','ops_x') AND channel NOT LIKE 'team-%%') OR (%s) "
             "ORDER BY seq",
             granted);
    return db_list(sql);
}

/* Opens a stream of every channel with token (may be NULL) on port, history 1000 (every message):
 * it must get exactly the readable ones, then, live, the readable ones of the next posts. */
static void all_channels(int port, const char *query, const char *tok, const char *granted, got_t *g)
{
    char h[8192], target[256];
    snprintf(target, sizeof(target), "/v1/stream?history=1000%s", query);
    stream_open(g, port, target, tok != NULL ? bearer(h, sizeof(h), tok) : NULL, 200);
    char *want = readable(granted);
    stream_take(g, count(want), 10000);
    ck_assert_msg(strcmp(g->seqs, want) == 0, "%s%s: history %s, want %s (channels %s)", target, tok ? " (token)" : "",
                  g->seqs, want, g->channels);
    free(want);
}

START_TEST(test_all_channels_leave_out_private_ones)
{
    const char *env[] = {"SLUICE_JWT_SECRET=" SECRET, PRIVATE, "SLUICE_SSE_CHECK_MS=200", NULL};
    const char *nomem_env[] = {"SLUICE_JWT_SECRET=" SECRET, PRIVATE, "SLUICE_SSE_RECENT=0", "SLUICE_SSE_REPLAY_MAX=8",
                               NULL};
    start_stack("rdall", env);
    int nomem = 0;
    pid_t extra = tu_start_at(&S, "sse", &nomem, nomem_env); /* histories from the database only */
    tu_wait_sse_ready(nomem);
    const char *channels[] = {"general", "staff", "team-red", "opsax", "ops_x", "team-", "teams", "news", "staffing"};
    for (int i = 0; i < 18; i++)
        post(channels[i % 9]);
    wait_hub(S.sse_port, POSTED);
    wait_hub(nomem, POSTED);
    char *teams = token("tess", 600, "[\"team-*\"]"), *all = token("root", 600, "[\"*\"]");
    char *nochan = token("nina", 600, NULL), *ops = token("olga", 600, "[\"ops_x\",\"staff\"]");
    const struct {
        const char *tok, *granted, *name;
    } readers[] = {
        {NULL, "false", "no token"},
        {nochan, "false", "no channels claim"},
        {teams, "channel LIKE 'team-%'", "team-*"},
        {ops, "channel IN ('ops_x','staff')", "ops_x,staff"},
        {all, "true", "*"},
    };
    enum { NR = sizeof(readers) / sizeof(readers[0]) };
    got_t g[2][NR][2];
    const int ports[2] = {S.sse_port, nomem};
    const char *fmt[2] = {"", "&format=ndjson"};
    for (int p = 0; p < 2; p++)
        for (int r = 0; r < NR; r++)
            for (int f = 0; f < 2; f++)
                all_channels(ports[p], fmt[f], readers[r].tok, readers[r].granted, &g[p][r][f]);
    /* the last 5 messages are the last 5 it may read (counted after the filter, not before) */
    for (int p = 0; p < 2; p++) {
        got_t q;
        char *want = db_list("SELECT seq FROM (SELECT seq FROM messages WHERE channel NOT IN ('staff','ops_x') AND "
                             "channel NOT LIKE 'team-%' ORDER BY seq DESC LIMIT 5) t ORDER BY seq");
        stream_open(&q, ports[p], "/v1/stream?history=5", NULL, 200);
        stream_take(&q, 5, 10000);
        ck_assert_msg(strcmp(q.seqs, want) == 0, "history=5 on %d: %s, want %s", ports[p], q.seqs, want);
        stream_quiet(&q, 300);
        stream_close(&q);
        free(want);
    }
    /* live: the same filter */
    for (int i = 0; i < 9; i++)
        post(channels[i]);
    for (int r = 0; r < NR; r++) {
        char *want = readable(readers[r].granted);
        for (int p = 0; p < 2; p++)
            for (int f = 0; f < 2; f++) {
                stream_take(&g[p][r][f], count(want), 10000);
                ck_assert_msg(strcmp(g[p][r][f].seqs, want) == 0, "%s (port %d, format %d): %s, want %s",
                              readers[r].name, ports[p], f, g[p][r][f].seqs, want);
            }
        free(want);
    }
    /* a private post after all that: nothing more for those it is not for */
    post("staff");
    for (int p = 0; p < 2; p++)
        for (int f = 0; f < 2; f++) {
            stream_quiet(&g[p][0][f], 500);
            stream_take(&g[p][NR - 1][f], (long long)g[p][NR - 1][f].n + 1, 10000);
        }
    for (int p = 0; p < 2; p++)
        for (int r = 0; r < NR; r++)
            for (int f = 0; f < 2; f++)
                stream_close(&g[p][r][f]);

    /* a resume (since: from memory, or the database's UNION of messages and events) leaves them out
     * the same way; so does a reset (more than SLUICE_SSE_REPLAY_MAX=8 to replay on the second
     * instance: then the newest history, 20 by default) */
    char *after3 = db_list("SELECT seq FROM messages WHERE seq > 3 AND channel NOT IN ('staff','ops_x') AND "
                           "channel NOT LIKE 'team-%' ORDER BY seq");
    char *newest = db_list("SELECT seq FROM (SELECT seq FROM messages WHERE channel NOT IN ('staff','ops_x') AND "
                           "channel NOT LIKE 'team-%' ORDER BY seq DESC LIMIT 20) t ORDER BY seq");
    ck_assert_int_gt(count(after3), 8);
    for (int p = 0; p < 2; p++) {
        got_t q;
        stream_open(&q, ports[p], "/v1/stream?since=3&format=ndjson", NULL, 200);
        const char *want = p == 0 ? after3 : newest;
        stream_take(&q, count(want), 10000);
        ck_assert_msg(strcmp(q.seqs, want) == 0, "resume on %d: %s, want %s", ports[p], q.seqs, want);
        ck_assert_int_eq(q.resets, p);
        stream_quiet(&q, 300);
        stream_close(&q);
    }
    free(after3);
    free(newest);
    tu_stop(&extra, SIGTERM, 15000);
    free(teams);
    free(all);
    free(nochan);
    free(ops);
    stop_stack();
}
END_TEST

/* ---- 3. WebSocket ----------------------------------------------------------------------------------- */

START_TEST(test_private_channels_on_websocket)
{
    const char *env[] = {"SLUICE_JWT_SECRET=" SECRET, PRIVATE, NULL};
    char cmd[8192], hist[1024], *list;
    tu_ws_t w;
    start_stack("rdws", env);
    post("general");
    post("staff");
    post("team-red");
    post("staff");
    wait_hub(S.sse_port, POSTED);
    char *staff = token("sam", 600, "[\"staff\"]"), *teams = token("tess", 600, "[\"team-*\"]");
    char *forged = tu_jwt_sign("{\"alg\":\"HS256\"}", "{\"sub\":\"eve\",\"exp\":9999999999,\"channels\":[\"*\"]}",
                               TU_JWT_HS256, "another-secret-for-forged-tokens-0123", 37);
    ws_open_ok(&w, S.sse_port);
    /* public: as before */
    ck_assert_str_eq(
        ws_subscribe_ok(&w, "{\"command\":\"subscribe\",\"channel\":\"general\"}", "general", hist, sizeof(hist)), "1");
    /* private: error frames naming the channel, the socket open */
    ws_refused(&w, "{\"command\":\"subscribe\",\"channel\":\"staff\"}", "token_required", "staff");
    snprintf(cmd, sizeof(cmd), "{\"command\":\"subscribe\",\"channel\":\"staff\",\"token\":\"%s\"}", teams);
    ws_refused(&w, cmd, "channel_forbidden", "staff");
    snprintf(cmd, sizeof(cmd), "{\"command\":\"subscribe\",\"channel\":\"#staff\",\"token\":\"%s\"}", forged);
    ws_refused(&w, cmd, "token_bad_signature", "staff");
    ws_refused(&w, "{\"command\":\"auth\",\"token\":\"not-a-jwt\"}", "token_malformed", NULL);
    ws_refused(&w, "{\"command\":\"auth\"}", "invalid_token", NULL);
    /* a subscribe's own token */
    snprintf(cmd, sizeof(cmd), "{\"command\":\"subscribe\",\"channel\":\"team-red\",\"token\":\"%s\"}", teams);
    ck_assert_str_eq(ws_subscribe_ok(&w, cmd, "team-red", hist, sizeof(hist)), "3");
    /* auth, then subscribes without a token of their own use it */
    snprintf(cmd, sizeof(cmd), "{\"command\":\"auth\",\"token\":\"%s\"}", staff);
    ck_assert_int_eq(tu_ws_send_text(&w, cmd), 0);
    json_t *o = ws_expect(&w, "authenticated", NULL, 10000);
    ck_assert_str_eq(jstr(o, "sub"), "sam");
    ck_assert(json_integer_value(json_object_get(o, "exp")) > (json_int_t)time(NULL));
    json_decref(o);
    list = db_list("SELECT seq FROM messages WHERE channel = 'staff' ORDER BY seq");
    ck_assert_str_eq(
        ws_subscribe_ok(&w, "{\"command\":\"subscribe\",\"channel\":\"staff\"}", "staff", hist, sizeof(hist)), list);
    free(list);
    long long s1 = post("staff"), t1 = post("team-red"), g1 = post("general");
    ck_assert_int_eq(ws_message(&w, "staff"), s1);
    ck_assert_int_eq(ws_message(&w, "team-red"), t1);
    ck_assert_int_eq(ws_message(&w, "general"), g1);
    /* the socket's token does not open what it does not cover; a refused auth leaves none */
    ws_refused(&w, "{\"command\":\"subscribe\",\"channel\":\"team-blue\"}", "channel_forbidden", "team-blue");
    ws_refused(&w, "{\"command\":\"auth\",\"token\":\"a.b.c\"}", "token_malformed", NULL);
    ws_refused(&w, "{\"command\":\"subscribe\",\"channel\":\"team-blue\"}", "token_required", "team-blue");
    /* what was subscribed goes on */
    long long s2 = post("staff");
    ck_assert_int_eq(ws_message(&w, "staff"), s2);
    tu_ws_close(&w);
    ck_assert(metrics_have(S.sse_port, "sluice_sse_private_refused_total{code=\"token_required\"} 2\n"));
    ck_assert(metrics_have(S.sse_port, "sluice_sse_private_refused_total{code=\"channel_forbidden\"} 2\n"));
    ck_assert(tu_log_contains(&S, "sse", "event=ws_authenticated sub=\"sam\""));
    free(staff);
    free(teams);
    free(forged);
    stop_stack();
}
END_TEST

/* ---- 4. a token's end ------------------------------------------------------------------------------- */

/* Whatever a token opened ends at its exp (SLUICE_JWT_LEEWAY_S=0 here): SSE and NDJSON with an
 * explicit last event, a WebSocket subscription with an error frame (the socket stays). A new token
 * and the last seq as since then bring exactly what was missed. */
START_TEST(test_token_expiry_ends_and_resumes)
{
    const char *env[] = {"SLUICE_JWT_SECRET=" SECRET, "SLUICE_JWT_LEEWAY_S=0", PRIVATE, NULL};
    char h[8192], target[8192], cmd[8192], hist[2048];
    start_stack("rdexpiry", env);
    post("staff");
    post("general");
    post("team-red");
    wait_hub(S.sse_port, POSTED);
    long long exp = (long long)time(NULL) + 4;
    char *shortlived = token_at("sam", exp, "[\"staff\",\"team-*\"]");
    char *fresh = token("sam", 600, "[\"staff\",\"team-*\"]");
    /* four readers with the same token: SSE (?token=) and NDJSON (Bearer) on staff, a stream of
     * every channel, a WebSocket subscription (its own token) and one through auth */
    enum { NS = 3 };
    got_t g[NS];
    const char *targets[NS] = {"/v1/stream?channels=staff", "/v1/stream?channels=staff&format=ndjson",
                               "/v1/stream?format=ndjson"};
    for (int i = 0; i < NS; i++) { /* SSE: ?token=, as EventSource; NDJSON: Bearer */
        snprintf(target, sizeof(target), "%s%s%s", targets[i], i == 0 ? "&token=" : "", i == 0 ? shortlived : "");
        stream_open(&g[i], S.sse_port, target, i > 0 ? bearer(h, sizeof(h), shortlived) : NULL, 200);
    }
    tu_ws_t w, wa;
    ws_open_ok(&w, S.sse_port);
    ws_open_ok(&wa, S.sse_port);
    snprintf(cmd, sizeof(cmd), "{\"command\":\"subscribe\",\"channel\":\"staff\",\"token\":\"%s\"}", shortlived);
    ck_assert_str_eq(ws_subscribe_ok(&w, cmd, "staff", hist, sizeof(hist)), "1");
    ck_assert_str_eq(
        ws_subscribe_ok(&w, "{\"command\":\"subscribe\",\"channel\":\"general\"}", "general", hist, sizeof(hist)), "2");
    snprintf(cmd, sizeof(cmd), "{\"command\":\"auth\",\"token\":\"%s\"}", shortlived);
    ck_assert_int_eq(tu_ws_send_text(&wa, cmd), 0);
    json_decref(ws_expect(&wa, "authenticated", NULL, 10000));
    ck_assert_str_eq(
        ws_subscribe_ok(&wa, "{\"command\":\"subscribe\",\"channel\":\"team-red\"}", "team-red", hist, sizeof(hist)),
        "3");
    stream_take(&g[0], 1, 10000);
    stream_take(&g[1], 1, 10000);
    stream_take(&g[2], 3, 10000);
    long long live = post("staff");
    stream_take(&g[0], 2, 10000);
    ck_assert_int_eq(g[0].last, live);
    ck_assert_int_eq(ws_message(&w, "staff"), live);
    ck_assert((long long)time(NULL) < exp);

    /* the end: each stream's last event, at exp (not before), then the response ends */
    for (int i = 0; i < NS; i++) {
        ck_assert_int_eq(stream_take(&g[i], -1, 15000), 1);
        ck_assert_msg(g[i].expired, "%s: ended without token_expired", targets[i]);
        ck_assert_msg(g[i].expired_ms >= exp * 1000 && g[i].expired_ms <= exp * 1000 + 3000,
                      "token_expired at %lld ms, exp %lld s", g[i].expired_ms, exp);
        char want[64];
        snprintf(want, sizeof(want), "\"exp\":%lld", exp);
        ck_assert_msg(strstr(g[i].expired_data, want) != NULL, "%s", g[i].expired_data);
    }
    /* WebSocket: the subscriptions made with it end, with an error frame; the rest goes on */
    json_t *o = ws_expect(&w, "error", "staff", 10000);
    ck_assert_str_eq(jstr(o, "code"), "token_expired");
    json_decref(o);
    ck_assert_msg(wall_ms() >= exp * 1000, "the subscription ended before exp");
    o = ws_expect(&wa, "error", "team-red", 10000);
    ck_assert_str_eq(jstr(o, "code"), "token_expired");
    json_decref(o);
    /* missed meanwhile: a public message reaches the socket, the private ones wait for the resume */
    long long m1 = post("staff"), m2 = post("team-red"), m3 = post("general"), m4 = post("staff");
    ck_assert_int_eq(ws_message(&w, "general"), m3);
    /* the socket's auth has expired too: a subscribe on it says so */
    ws_refused(&wa, "{\"command\":\"subscribe\",\"channel\":\"team-red\"}", "token_expired", "team-red");

    /* resume with a fresh token and since = the last seq each got: exactly what was missed */
    for (int i = 0; i < NS; i++) {
        long long since = g[i].last;
        stream_close(&g[i]);
        snprintf(target, sizeof(target), "%s&since=%lld%s%s", targets[i], since, i == 0 ? "&token=" : "",
                 i == 0 ? fresh : "");
        stream_open(&g[i], S.sse_port, target, i > 0 ? bearer(h, sizeof(h), fresh) : NULL, 200);
        char sql[256];
        snprintf(sql, sizeof(sql), "SELECT seq FROM messages WHERE seq > %lld %s ORDER BY seq", since,
                 i < 2 ? "AND channel = 'staff'" : "");
        char *want = db_list(sql);
        stream_take(&g[i], count(want), 10000);
        ck_assert_msg(strcmp(g[i].seqs, want) == 0, "%s resumed after %lld: %s, want %s", targets[i], since, g[i].seqs,
                      want);
        free(want);
        ck_assert_int_eq(g[i].last, m4);
    }
    snprintf(cmd, sizeof(cmd), "{\"command\":\"subscribe\",\"channel\":\"staff\",\"token\":\"%s\",\"since\":%lld}",
             fresh, live);
    char want[64];
    snprintf(want, sizeof(want), "%lld,%lld", m1, m4);
    ck_assert_str_eq(ws_subscribe_ok(&w, cmd, "staff", hist, sizeof(hist)), want);
    snprintf(cmd, sizeof(cmd), "{\"command\":\"auth\",\"token\":\"%s\"}", fresh);
    ck_assert_int_eq(tu_ws_send_text(&wa, cmd), 0);
    json_decref(ws_expect(&wa, "authenticated", NULL, 10000));
    snprintf(want, sizeof(want), "%lld", m2);
    ck_assert_str_eq(ws_subscribe_ok(&wa, "{\"command\":\"subscribe\",\"channel\":\"team-red\",\"since\":3}",
                                     "team-red", hist, sizeof(hist)),
                     want);
    /* and live again */
    long long after = post("staff");
    stream_take(&g[0], (long long)g[0].n + 1, 10000);
    ck_assert_int_eq(g[0].last, after);
    ck_assert_int_eq(ws_message(&w, "staff"), after);
    for (int i = 0; i < NS; i++)
        stream_close(&g[i]);
    tu_ws_close(&w);
    tu_ws_close(&wa);
    ck_assert(metrics_have(S.sse_port, "sluice_sse_token_expired_total{transport=\"stream\"} 3\n"));
    ck_assert(metrics_have(S.sse_port, "sluice_sse_token_expired_total{transport=\"websocket\"} 2\n"));
    ck_assert(tu_log_contains(&S, "sse", "event=token_expired transport=sse sub=\"sam\""));
    ck_assert(tu_log_contains(&S, "sse", "event=token_expired transport=websocket channel=staff"));
    free(shortlived);
    free(fresh);
    stop_stack();
}
END_TEST

/* ---- 5. RS256 and ES256 from a JWKS, rotated on SIGHUP ---------------------------------------------- */

START_TEST(test_jwks_readers_and_rotation)
{
    char path[] = "/tmp/sluice-readers-jwks-XXXXXX", env_jwks[96], h[8192], cmd[8192], hist[256];
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    EVP_PKEY *k1 = EVP_RSA_gen(2048), *k2 = EVP_RSA_gen(2048), *ec = EVP_EC_gen("P-256");
    ck_assert(k1 != NULL && k2 != NULL && ec != NULL);
    ck_assert_int_eq(tu_jwt_write_jwks(path, k1, "k1", ec, "e1", NULL), 0);
    snprintf(env_jwks, sizeof(env_jwks), "SLUICE_JWT_JWKS_FILE=%s", path);
    const char *env[] = {env_jwks, PRIVATE, NULL};
    start_stack("rdjwks", env);
    post("staff");
    wait_hub(S.sse_port, POSTED);
    char claims[256];
    snprintf(claims, sizeof(claims), "{\"sub\":\"rita\",\"exp\":%lld,\"channels\":[\"staff\"]}",
             (long long)time(NULL) + 600);
    char *old = tu_jwt_sign("{\"alg\":\"RS256\",\"kid\":\"k1\"}", claims, TU_JWT_RS256, k1, 0);
    char *fresh = tu_jwt_sign("{\"alg\":\"RS256\",\"kid\":\"k2\"}", claims, TU_JWT_RS256, k2, 0);
    char *es = tu_jwt_sign("{\"alg\":\"ES256\",\"kid\":\"e1\"}", claims, TU_JWT_ES256, ec, 0);
    char *hs = tu_jwt_hs256(SECRET, claims); /* no HS256 secret here */
    ck_assert(old && fresh && es && hs);
    got_t g;
    stream_open(&g, S.sse_port, "/v1/stream?channels=staff", bearer(h, sizeof(h), old), 200);
    stream_take(&g, 1, 10000);
    stream_close(&g);
    stream_open(&g, S.sse_port, "/v1/stream?channels=staff&format=ndjson", bearer(h, sizeof(h), es), 200);
    stream_take(&g, 1, 10000);
    stream_close(&g);
    expect_refused(S.sse_port, "/v1/stream?channels=staff", bearer(h, sizeof(h), fresh), 401, "token_unknown_key",
                   NULL);
    expect_refused(S.sse_port, "/v1/stream?channels=staff", bearer(h, sizeof(h), hs), 401, "token_unsupported_alg",
                   NULL);
    tu_ws_t w;
    ws_open_ok(&w, S.sse_port);
    snprintf(cmd, sizeof(cmd), "{\"command\":\"subscribe\",\"channel\":\"staff\",\"token\":\"%s\"}", old);
    ck_assert_str_eq(ws_subscribe_ok(&w, cmd, "staff", hist, sizeof(hist)), "1");

    /* rotation: k2 in, k1 out, on SIGHUP; what k1 opened before goes on (it ends at its exp) */
    ck_assert_int_eq(tu_jwt_write_jwks(path, k2, "k2", NULL), 0);
    ck_assert_int_eq(kill(S.sse, SIGHUP), 0);
    tu_stream_opts_t o = {bearer(h, sizeof(h), old), 0, 0};
    long status = 200;
    for (int i = 0; i < 50 && status != 401; i++) { /* the loop takes the signal between two turns */
        tu_stream_t st;
        memset(&st, 0, sizeof(st));
        ck_assert_int_eq(tu_stream_open(&st, S.sse_port, "/v1/stream?channels=staff&history=0", &o, 10000), 0);
        status = st.status;
        tu_stream_close(&st);
        if (status != 401)
            tu_sleep_ms(100);
    }
    ck_assert_int_eq(status, 401);
    stream_open(&g, S.sse_port, "/v1/stream?channels=staff", bearer(h, sizeof(h), fresh), 200);
    stream_take(&g, 1, 10000);
    stream_close(&g);
    expect_refused(S.sse_port, "/v1/stream?channels=staff", bearer(h, sizeof(h), old), 401, "token_unknown_key", NULL);
    expect_refused(S.sse_port, "/v1/stream?channels=staff", bearer(h, sizeof(h), es), 401, "token_unsupported_alg",
                   NULL);
    snprintf(cmd, sizeof(cmd), "{\"command\":\"auth\",\"token\":\"%s\"}", old);
    ws_refused(&w, cmd, "token_unknown_key", NULL);
    long long live = post("staff");
    ck_assert_int_eq(ws_message(&w, "staff"), live);
    tu_ws_close(&w);
    ck_assert(metrics_have(S.sse_port, "sluice_jwt_reloads_total{outcome=\"ok\"} 1\n"));
    ck_assert(metrics_have(S.sse_port, "sluice_jwt_keys{alg=\"RS256\"} 1\n"));
    ck_assert(tu_log_contains(&S, "sse", "event=jwt_keys_reloaded"));
    free(old);
    free(fresh);
    free(es);
    free(hs);
    EVP_PKEY_free(k1);
    EVP_PKEY_free(k2);
    EVP_PKEY_free(ec);
    stop_stack(); /* SIGHUP did not end it: exit status 0 */
    unlink(path);
}
END_TEST

/* ---- 6. without keys ---------------------------------------------------------------------------- */

/* No JWT key: tokens are ignored (nothing to verify them with), so a private channel stays closed
 * to everyone; with no private channel either, nothing changes at all. */
START_TEST(test_without_keys_tokens_are_ignored)
{
    const char *env[] = {PRIVATE, NULL};
    char h[8192];
    got_t g;
    start_stack("rdnokeys", env);
    post("general");
    post("staff");
    wait_hub(S.sse_port, POSTED);
    char *t = token("sam", 600, "[\"staff\"]");
    stream_open(&g, S.sse_port, "/v1/stream?channels=general&token=garbage", NULL, 200);
    stream_take(&g, 1, 10000);
    stream_close(&g);
    stream_open(&g, S.sse_port, "/v1/stream", bearer(h, sizeof(h), "garbage"), 200);
    stream_take(&g, 1, 10000);
    ck_assert_str_eq(g.seqs, "1");
    stream_quiet(&g, 300);
    stream_close(&g);
    expect_refused(S.sse_port, "/v1/stream?channels=staff", bearer(h, sizeof(h), t), 401, "token_required", NULL);
    tu_ws_t w;
    char cmd[8192], hist[64];
    ws_open_ok(&w, S.sse_port);
    snprintf(cmd, sizeof(cmd), "{\"command\":\"auth\",\"token\":\"%s\"}", t);
    ws_refused(&w, cmd, "tokens_disabled", NULL);
    snprintf(cmd, sizeof(cmd), "{\"command\":\"subscribe\",\"channel\":\"staff\",\"token\":\"%s\"}", t);
    ws_refused(&w, cmd, "token_required", "staff");
    snprintf(cmd, sizeof(cmd), "{\"command\":\"subscribe\",\"channel\":\"general\",\"token\":\"garbage\"}");
    ck_assert_str_eq(ws_subscribe_ok(&w, cmd, "general", hist, sizeof(hist)), "1");
    tu_ws_close(&w);
    ck_assert(tu_log_contains(&S, "sse", "event=private_channels_closed"));
    ck_assert(!metrics_have(S.sse_port, "\nsluice_jwt_verifications_total{"));
    free(t);
    stop_stack();

    /* a configuration sse refuses to start with: exit status 2 */
    const char *bad[] = {"SLUICE_PRIVATE_CHANNELS=Staff", "SLUICE_PRIVATE_CHANNELS=a,,b",
                         "SLUICE_PRIVATE_CHANNELS=te*am", "SLUICE_JWT_SECRET=short"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int st = tu_exit_status("sse", bad[i]);
        ck_assert_msg(st == 2, "%s: exit status %d", bad[i], st);
    }
}
END_TEST

/* ---- 7. presence: who a token says ------------------------------------------------------------ */

/* The joins and leaves a presence stream got within ms, as "join:channel:user" items (after what
 * is in out already). Messages may come between them; anything else fails. */
static void presence_events(tu_stream_t *st, char *out, size_t size, int ms)
{
    long long end = tu_now_ms() + ms;
    tu_sev_t ev;
    for (long long left; (left = end - tu_now_ms()) > 0;) {
        if (tu_stream_next_event(st, &ev, (int)left) != 1)
            continue;
        if (strcmp(ev.event, "message") == 0)
            continue;
        ck_assert_msg(strcmp(ev.event, "join") == 0 || strcmp(ev.event, "leave") == 0, "unexpected %s: %s", ev.event,
                      ev.data);
        json_t *o = json_loads(ev.data, 0, NULL);
        ck_assert_ptr_nonnull(o);
        size_t l = strlen(out);
        snprintf(out + l, size - l, "%s:%s:%s;", ev.event, jstr(o, "channel"), jstr(json_object_get(o, "user"), "id"));
        json_decref(o);
    }
}

/* A reader with a token is a user of presence (its sub and name): in a channel's presence set, in
 * the joins and leaves others get; a stream of every channel gets those of the channels its token
 * may read only; a token's end takes its reader out. */
START_TEST(test_presence_users_are_token_subs)
{
    const char *env[] = {"SLUICE_JWT_SECRET=" SECRET, "SLUICE_JWT_LEEWAY_S=0", PRIVATE, "SLUICE_PRESENCE_GRACE_MS=1",
                         NULL};
    char target[8192], events[2][1024] = {"", ""}, url[128];
    start_stack("rdpresence", env);
    post("general");
    post("staff");
    wait_hub(S.sse_port, POSTED);
    char *alice = token_at("alice", (long long)time(NULL) + 600, NULL);
    char *staff = token("sam", 600, "[\"staff\"]");
    long long exp = (long long)time(NULL) + 4;
    char *brief = token_at("sam", exp, "[\"staff\"]");
    /* two presence streams of every channel: anonymous, and with a token that reads staff */
    got_t anon, sam_all;
    stream_open(&anon, S.sse_port, "/v1/stream?format=ndjson&history=0&presence=1", NULL, 200);
    snprintf(target, sizeof(target), "/v1/stream?format=ndjson&history=0&presence=1&token=%s", staff);
    stream_open(&sam_all, S.sse_port, target, NULL, 200);
    /* readers: alice on general, sam (a token that ends in a few seconds) on staff */
    got_t a, b;
    snprintf(target, sizeof(target), "/v1/stream?channels=general&history=0&token=%s", alice);
    stream_open(&a, S.sse_port, target, NULL, 200);
    snprintf(target, sizeof(target), "/v1/stream?channels=staff&history=0&token=%s", brief);
    stream_open(&b, S.sse_port, target, NULL, 200);
    presence_events(&anon.st, events[0], sizeof(events[0]), 1000);
    presence_events(&sam_all.st, events[1], sizeof(events[1]), 200);
    ck_assert_str_eq(events[0], "join:general:alice;"); /* staff is private: not for it */
    ck_assert_msg(strstr(events[1], "join:general:alice;") && strstr(events[1], "join:staff:sam;"), "%s", events[1]);
    /* the presence set names the sub */
    tu_resp_t r;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/channels/general/presence", S.sse_port);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_msg(r.status == 200 && strstr(r.body, "\"users\":[{\"id\":\"alice\"}]"), "%ld %s", r.status, r.body);
    tu_resp_free(&r);
    /* sam's token ends: its stream ends and sam leaves staff */
    ck_assert_int_eq(stream_take(&b, -1, 15000), 1);
    ck_assert(b.expired);
    events[1][0] = '\0';
    presence_events(&sam_all.st, events[1], sizeof(events[1]), 1500);
    ck_assert_str_eq(events[1], "leave:staff:sam;");
    events[0][0] = '\0';
    presence_events(&anon.st, events[0], sizeof(events[0]), 300);
    ck_assert_str_eq(events[0], "");
    stream_close(&anon);
    stream_close(&sam_all);
    stream_close(&a);
    stream_close(&b);
    free(alice);
    free(staff);
    free(brief);
    stop_stack();
}
END_TEST

/* ---- 8. measure: what a token check costs per connection --------------------------------------- */

/* Clients that connect, send GET target (with headers), read the answer's head and the first
 * bytes, and reset the connection (SO_LINGER 0: no TIME_WAIT), again and again until until_ms. */
struct connload {
    int port;
    const char *target, *headers;
    long long until_ms;
    atomic_long ok, failed;
};

static void *connload_main(void *arg)
{
    struct connload *l = arg;
    tu_stream_opts_t o = {l->headers, 0, 0};
    struct linger lg = {1, 0};
    while (tu_now_ms() < l->until_ms) {
        tu_stream_t st;
        memset(&st, 0, sizeof(st));
        int rc = tu_stream_open(&st, l->port, l->target, &o, 5000);
        if (rc == 0 && st.status == 200)
            atomic_fetch_add(&l->ok, 1);
        else
            atomic_fetch_add(&l->failed, 1);
        if (rc == 0)
            setsockopt(st.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        tu_stream_close(&st);
    }
    return NULL;
}

/* Time the main thread of pid (sse's event loop, where tokens are verified) has run so far, in
 * seconds (/proc/<pid>/schedstat, in nanoseconds); -1 when unreadable. */
static double loop_cpu_s(pid_t pid)
{
    char path[64];
    unsigned long long ns = 0;
    snprintf(path, sizeof(path), "/proc/%d/schedstat", (int)pid);
    FILE *f = fopen(path, "r");
    int got = f != NULL && fscanf(f, "%llu", &ns) == 1;
    if (f != NULL)
        fclose(f);
    return got ? (double)ns / 1e9 : -1;
}

/* Connections per second with and without a token, in the same run and on the same instance: the
 * phases alternate (none, HS256, RS256 2048, ES256 P-256), ROUNDS times, CONNS clients each.
 * Besides the rate (which the load tool, on the same 2 cores, shares), the time sse's event loop
 * ran per connection: the difference to "none" is what verifying the token and checking the
 * private channel cost. Opt-in (SLUICE_TEST_ONLY=measure_tokens): it prints figures and asserts
 * only that every connection was answered 200. */
START_TEST(test_measure_token_cost)
{
    enum { ROUNDS = 3, CONNS = 4, PHASE_MS = 3000, NMODES = 4 };
    char path[] = "/tmp/sluice-readers-bench-XXXXXX", env_jwks[96];
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    EVP_PKEY *rsa = EVP_RSA_gen(2048), *ec = EVP_EC_gen("P-256");
    ck_assert(rsa != NULL && ec != NULL);
    ck_assert_int_eq(tu_jwt_write_jwks(path, rsa, "r1", ec, "e1", NULL), 0);
    snprintf(env_jwks, sizeof(env_jwks), "SLUICE_JWT_JWKS_FILE=%s", path);
    /* every client is 127.0.0.1; a client that left is noticed at the heartbeat tick (h2o does not
     * read a streaming HTTP/1 connection), every 50 ms here, so that the departed do not pile up */
    const char *env[] = {"SLUICE_JWT_SECRET=" SECRET,
                         env_jwks,
                         "SLUICE_PRIVATE_CHANNELS=bench-private",
                         "SLUICE_LOG_LEVEL=warn",
                         "SLUICE_MAX_CONNS_PER_CLIENT=0",
                         "SLUICE_SSE_HEARTBEAT_MS=100",
                         "SLUICE_SSE_MAX_CONNS=15000",
                         NULL};
    start_stack("rdmeasure", env);
    char claims[256];
    snprintf(claims, sizeof(claims), "{\"sub\":\"bench\",\"exp\":%lld,\"channels\":[\"bench-private\"]}",
             (long long)time(NULL) + 3600);
    char *tokens[NMODES] = {NULL, tu_jwt_hs256(SECRET, claims),
                            tu_jwt_sign("{\"alg\":\"RS256\",\"kid\":\"r1\"}", claims, TU_JWT_RS256, rsa, 0),
                            tu_jwt_sign("{\"alg\":\"ES256\",\"kid\":\"e1\"}", claims, TU_JWT_ES256, ec, 0)};
    const char *names[NMODES] = {"none", "HS256", "RS256", "ES256"};
    char headers[NMODES][2048];
    headers[0][0] = '\0';
    for (int m = 1; m < NMODES; m++) {
        ck_assert_ptr_nonnull(tokens[m]);
        bearer(headers[m], sizeof(headers[m]), tokens[m]);
    }
    long ok[NMODES] = {0}, failed[NMODES] = {0};
    double secs[NMODES] = {0}, cpu[NMODES] = {0};
    for (int round = 0; round < ROUNDS; round++) {
        for (int m = 0; m < NMODES; m++) {
            struct connload l = {.port = S.sse_port,
                                 .target = m == 0 ? "/v1/stream?channels=bench-public&history=0"
                                                  : "/v1/stream?channels=bench-private&history=0",
                                 .headers = m == 0 ? NULL : headers[m]};
            atomic_init(&l.ok, 0);
            atomic_init(&l.failed, 0);
            pthread_t th[CONNS];
            double c0 = loop_cpu_s(S.sse);
            long long t0 = tu_now_ms();
            l.until_ms = t0 + PHASE_MS;
            for (int i = 0; i < CONNS; i++)
                ck_assert_int_eq(pthread_create(&th[i], NULL, connload_main, &l), 0);
            for (int i = 0; i < CONNS; i++)
                pthread_join(th[i], NULL);
            secs[m] += (double)(tu_now_ms() - t0) / 1000;
            cpu[m] += loop_cpu_s(S.sse) - c0;
            ok[m] += atomic_load(&l.ok);
            failed[m] += atomic_load(&l.failed);
        }
    }
    double base_us = ok[0] > 0 ? cpu[0] * 1e6 / (double)ok[0] : 0;
    for (int m = 0; m < NMODES; m++) {
        double us = ok[m] > 0 ? cpu[m] * 1e6 / (double)ok[m] : 0;
        fprintf(stderr,
                "measure: tokens %-5s %6.0f connects/s (%ld in %.1f s, %ld failed), sse loop %.1f us per connect "
                "(%+.1f us against none)\n",
                names[m], (double)ok[m] / secs[m], ok[m], secs[m], failed[m], us, us - base_us);
    }
    for (int m = 0; m < NMODES; m++) {
        ck_assert_msg(failed[m] == 0, "%s: %ld connections not answered 200", names[m], failed[m]);
        free(tokens[m]);
    }
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec);
    stop_stack();
    unlink(path);
}
END_TEST

/* ---- 8. the api's history follows the same policy ------------------------------------------------ */

/* GET target on the api at port with the Authorization header auth (a token, may be NULL): the
 * answer must be want, with code in its body when code is not NULL. Returns the body's JSON (the
 * caller frees it). */
static json_t *api_get(int port, const char *target, const char *t, long want, const char *code)
{
    char url[512], h[8192], wantc[96];
    tu_resp_t r;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, target);
    if (t != NULL)
        snprintf(h, sizeof(h), "Authorization: Bearer %s", t);
    ck_assert_int_eq(tu_http("GET", url, t != NULL ? h : NULL, NULL, NULL, 0, &r), 0);
    ck_assert_msg(r.status == want, "GET %s answered %ld, want %ld: %s", target, r.status, want, r.body);
    if (code != NULL) {
        snprintf(wantc, sizeof(wantc), "\"code\":\"%s\"", code);
        ck_assert_msg(strstr(r.body, wantc) != NULL, "GET %s: %s, want %s", target, r.body, code);
    }
    json_t *o = json_loads(r.body, 0, NULL);
    ck_assert_msg(json_is_object(o), "GET %s: not a JSON object: %s", target, r.body);
    tu_resp_free(&r);
    return o;
}

/* GET target on the api at port with token t (may be NULL) answers 200 with a page whose messages
 * are want's seqs, in want's order (a list, "3,5,8"). */
static void expect_page(int port, const char *target, const char *t, const char *want)
{
    char seqs[4096];
    size_t i, n = 0;
    json_t *o = api_get(port, target, t, 200, NULL), *msgs = json_object_get(o, "messages"), *m;
    ck_assert_msg(json_is_array(msgs), "GET %s: no messages array", target);
    seqs[0] = '\0';
    json_array_foreach(msgs, i, m) {
        n += (size_t)snprintf(seqs + n, sizeof(seqs) - n, "%s%lld", i ? "," : "",
                              (long long)json_integer_value(json_object_get(m, "seq")));
    }
    ck_assert_msg(strcmp(seqs, want) == 0, "GET %s: messages %s, want %s", target, seqs, want);
    json_decref(o);
}

/* The api's history (newest first, before=), pulls (oldest first, after=) and single messages obey
 * SLUICE_PRIVATE_CHANNELS as sse's streams do: a private channel is refused 401 without a token and
 * 403 with one that does not cover it; a read of every channel leaves out what the token may not
 * read; a message of a private channel is refused by its id too; a bad token is refused. */
START_TEST(test_private_channels_on_api)
{
    const char *env[] = {"SLUICE_JWT_SECRET=" SECRET, PRIVATE, NULL};
    char target[256], id_staff[64], id_general[64];
    json_t *o;
    start_stack("rdapi", env);
    int port = 0;
    pid_t api = tu_start_at(&S, "api", &port, env);
    const char *chans[] = {"general", "staff", "team-a", "ops_x", "opsax", "general", "team-b", "staff"};
    for (size_t i = 0; i < sizeof(chans) / sizeof(chans[0]); i++)
        post(chans[i]);
    PGresult *q = PQexec(DB, "SELECT (SELECT id FROM messages WHERE channel = 'staff' ORDER BY seq LIMIT 1),"
                             " (SELECT id FROM messages WHERE channel = 'general' ORDER BY seq LIMIT 1)");
    ck_assert(PQresultStatus(q) == PGRES_TUPLES_OK);
    snprintf(id_staff, sizeof(id_staff), "%s", PQgetvalue(q, 0, 0));
    snprintf(id_general, sizeof(id_general), "%s", PQgetvalue(q, 0, 1));
    PQclear(q);
    char *pub = db_list("SELECT seq FROM messages WHERE channel IN ('general', 'opsax') ORDER BY seq");
    char *pub_desc = db_list("SELECT seq FROM messages WHERE channel IN ('general', 'opsax') ORDER BY seq DESC");
    char *teams = db_list("SELECT seq FROM messages WHERE channel NOT IN ('staff', 'ops_x') ORDER BY seq");
    char *teams_desc = db_list("SELECT seq FROM messages WHERE channel NOT IN ('staff', 'ops_x') ORDER BY seq DESC");
    char *teams2 = db_list("SELECT seq FROM messages WHERE channel NOT IN ('staff', 'ops_x') ORDER BY seq LIMIT 2");
    char *staff = db_list("SELECT seq FROM messages WHERE channel = 'staff' ORDER BY seq");
    char *staff_desc = db_list("SELECT seq FROM messages WHERE channel = 'staff' ORDER BY seq DESC");
    char *team = token("tess", 600, "[\"team-*\"]"), *sam = token("sam", 600, "[\"staff\"]");
    char *nochan = token("nina", 600, NULL), *expired = token("sam", -600, "[\"staff\"]");

    /* public channels as before, without a token; a private one by the token covering it only */
    const char *priv[] = {"staff", "%23staff", "ops_x"};
    for (int pull = 0; pull < 2; pull++) {
        const char *extra = pull ? "&after=0" : "";
        snprintf(target, sizeof(target), "/v1/messages?channel=general%s", extra);
        json_decref(api_get(port, target, NULL, 200, NULL));
        for (size_t i = 0; i < sizeof(priv) / sizeof(priv[0]); i++) {
            snprintf(target, sizeof(target), "/v1/messages?channel=%s%s", priv[i], extra);
            json_decref(api_get(port, target, NULL, 401, "token_required"));
            json_decref(api_get(port, target, team, 403, "channel_forbidden"));
            json_decref(api_get(port, target, nochan, 403, "channel_forbidden"));
            json_decref(api_get(port, target, expired, 401, "token_expired"));
            json_decref(api_get(port, target, "not-a-token", 401, "token_malformed")); /* as sse says it */
        }
        snprintf(target, sizeof(target), "/v1/messages?channel=staff%s", extra);
        expect_page(port, target, sam, pull ? staff : staff_desc);
    }

    /* every channel: what the token may read, nothing else ('_' of ops_x matches no other channel) */
    expect_page(port, "/v1/messages", NULL, pub_desc);
    expect_page(port, "/v1/messages", team, teams_desc);
    expect_page(port, "/v1/messages?after=0", NULL, pub);
    expect_page(port, "/v1/messages?after=0", team, teams);
    expect_page(port, "/v1/messages?after=0&limit=2", team, teams2);
    json_decref(api_get(port, "/v1/messages?after=0", "not-a-token", 401, "token_malformed"));
    snprintf(target, sizeof(target), "/v1/messages?channel=staff&token=%s", sam); /* as sse takes it */
    json_decref(api_get(port, target, NULL, 200, NULL));
    snprintf(target, sizeof(target), "/v1/messages?channel=staff&token=%s", team);
    json_decref(api_get(port, target, NULL, 403, "channel_forbidden"));
    json_decref(api_get(port, "/v1/messages?channel=general&token=%zz", NULL, 401, "token_malformed"));

    /* one message by its id */
    snprintf(target, sizeof(target), "/v1/messages/%s", id_general);
    json_decref(api_get(port, target, NULL, 200, NULL));
    snprintf(target, sizeof(target), "/v1/messages/%s", id_staff);
    o = api_get(port, target, NULL, 401, "token_required");
    char *text = json_dumps(o, 0);
    ck_assert_msg(strstr(text, "staff") == NULL, "an id told its private channel: %s", text);
    free(text);
    json_decref(o);
    json_decref(api_get(port, target, team, 403, "channel_forbidden"));
    o = api_get(port, target, sam, 200, NULL);
    ck_assert_str_eq(jstr(o, "channel"), "staff");
    json_decref(o);

    /* counted */
    char url[128];
    tu_resp_t r;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", port);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_msg(strstr(r.body, "sluice_api_private_refused_total{code=\"token_required\"} 7\n") != NULL &&
                      strstr(r.body, "sluice_api_private_refused_total{code=\"channel_forbidden\"} 14\n") != NULL &&
                      strstr(r.body, "sluice_api_reader_token_refused_total 14\n") != NULL,
                  "%s", r.body);
    tu_resp_free(&r);

    ck_assert_int_eq(tu_stop(&api, SIGTERM, 10000), 0);

    /* Readers' tokens of their own audience: one token reads sse and the api's history, and cannot
     * post; a writer's token posts, and does not read private channels. */
    const char *aud_env[] = {"SLUICE_JWT_SECRET=" SECRET, PRIVATE, "SLUICE_JWT_AUDIENCE=writers",
                             "SLUICE_JWT_READER_AUDIENCE=readers", NULL};
    char claims[256], body[128], h[8192];
    long long exp = (long long)time(NULL) + 600;
    snprintf(claims, sizeof(claims), "{\"sub\":\"rita\",\"exp\":%lld,\"aud\":\"readers\",\"channels\":[\"staff\"]}", exp);
    char *reader = tu_jwt_hs256(SECRET, claims);
    snprintf(claims, sizeof(claims), "{\"sub\":\"rita\",\"exp\":%lld,\"aud\":\"writers\",\"channels\":[\"staff\"]}", exp);
    char *writer = tu_jwt_hs256(SECRET, claims);
    port = 0;
    api = tu_start_at(&S, "api", &port, aud_env);
    expect_page(port, "/v1/messages?channel=staff", reader, staff_desc);
    json_decref(api_get(port, "/v1/messages?channel=staff", writer, 401, "token_wrong_audience"));
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/messages", port);
    int blen = snprintf(body, sizeof(body), "{\"channel\":\"staff\",\"author\":\"rita\",\"text\":\"hi\"}");
    snprintf(h, sizeof(h), "Authorization: Bearer %s", reader);
    ck_assert_int_eq(tu_http("POST", url, h, "application/json", body, (size_t)blen, &r), 0);
    ck_assert_msg(r.status == 401 && strstr(r.body, "token_wrong_audience") != NULL, "%ld %s", r.status, r.body);
    tu_resp_free(&r);
    snprintf(h, sizeof(h), "Authorization: Bearer %s", writer);
    ck_assert_int_eq(tu_http("POST", url, h, "application/json", body, (size_t)blen, &r), 0);
    ck_assert_msg(r.status == 202, "%ld %s", r.status, r.body);
    tu_resp_free(&r);
    ck_assert_int_eq(tu_stop(&api, SIGTERM, 10000), 0);
    free(reader), free(writer);

    /* Without a JWT key a reader's token is ignored, as sse ignores it (a proxy's own Authorization
     * breaks nothing); private channels stay closed. */
    const char *nokey_env[] = {PRIVATE, "SLUICE_API_TOKENS=writer-token-1:poster", NULL};
    port = 0;
    api = tu_start_at(&S, "api", &port, nokey_env);
    json_decref(api_get(port, "/v1/messages?channel=general", "a-proxy-s-own", 200, NULL));
    json_decref(api_get(port, "/v1/messages?channel=general", "writer-token-1", 200, NULL));
    json_decref(api_get(port, "/v1/messages?channel=staff", "writer-token-1", 401, "token_required"));
    json_decref(api_get(port, "/v1/messages?channel=staff", sam, 401, "token_required"));
    expect_page(port, "/v1/messages?after=0", "a-proxy-s-own", pub);
    ck_assert_int_eq(tu_stop(&api, SIGTERM, 10000), 0);

    free(pub), free(pub_desc), free(teams), free(teams_desc), free(teams2), free(staff), free(staff_desc);
    free(team), free(sam), free(nochan), free(expired);
    stop_stack();

    /* a configuration the api refuses to start with: exit status 2 */
    int st = tu_exit_status("api", "SLUICE_PRIVATE_CHANNELS=te*am");
    ck_assert_msg(st == 2, "exit status %d", st);
}
END_TEST

int main(void)
{
    const tu_named_test_t tests[] = {
        {"streams", test_private_channels_on_streams},
        {"all", test_all_channels_leave_out_private_ones},
        {"websocket", test_private_channels_on_websocket},
        {"expiry", test_token_expiry_ends_and_resumes},
        {"jwks", test_jwks_readers_and_rotation},
        {"nokeys", test_without_keys_tokens_are_ignored},
        {"presence", test_presence_users_are_token_subs},
        {"api", test_private_channels_on_api},
        /* opt-in: a measurement that prints figures (SLUICE_TEST_ONLY=measure_tokens) */
        {"measure_tokens", test_measure_token_cost},
    };
    return tu_run_named("readers", tests, sizeof(tests) / sizeof(tests[0]), 120);
}
