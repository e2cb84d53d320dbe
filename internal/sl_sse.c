/*
 * sl_sse: see sl_sse.h.
 *
 * GET /v1/channels reads last_seq and messages from sluice_channels, which the persister keeps up
 * to date in the transaction of each batch (sl_db.h): one primary-key range read per page, never
 * a scan of messages. The subscriber counts come from sl_presence (this instance's own, plus the
 * other instances' latest snapshots). A channel someone reads but nobody has posted to yet has
 * last_seq 0 and messages 0.
 */
#include "sl_sse.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_buf.h"
#include "sl_http.h"
#include "sl_hub.h"
#include "sl_livefeed.h"
#include "sl_log.h"
#include "sl_message.h"
#include "sl_metrics.h"
#include "sl_pgpool.h"
#include "sl_pull.h"
#include "sl_retention.h"
#include "sl_time.h"
#include "sl_webpage.h"

struct sl_sse {
    sl_sse_conf_t conf;
    sl_pgpool_t *pg;     /* streams' histories */
    sl_pgpool_t *hub_pg; /* the hub's position and gap backfills, the retention's marks: never behind a history */
    sl_hub_t *hub;
    sl_livefeed_t *feed;
    sl_presence_t *presence;
    sl_streams_t *streams;
    sl_pull_t *pull; /* GET /v1/messages?after= (long-polls) */
    sl_retention_view_t *retention; /* the low-water marks, for resumes and pulls from memory */
    char conn_name[96];
};

#define CHANNELS_LIMIT_MAX 1000

/* A live message is a committed batch: one event per line (sl_amqp.h). */
static void on_live_message(void *data, const char *body, size_t len)
{
    sl_sse_t *s = data;
    const char *end = body + len;
    while (body < end) {
        const char *nl = memchr(body, '\n', (size_t)(end - body));
        const char *line_end = nl != NULL ? nl : end;
        sl_hub_feed(s->hub, body, (size_t)(line_end - body));
        body = line_end + 1;
    }
}

static void on_live_state(void *data, int up)
{
    sl_sse_t *s = data;
    if (up) /* what was published while we were away is in the database: compare now */
        sl_hub_check(s->hub);
}

static void on_live_state_presence(void *data, int up)
{
    sl_sse_t *s = data;
    on_live_state(data, up);
    if (up) /* the last snapshot may have been lost with the connection */
        sl_presence_connected(s->presence);
}

static void on_presence_message(void *data, const char *body, size_t len)
{
    sl_sse_t *s = data;
    sl_presence_receive(s->presence, body, len);
}

/* sl_livefeed_publish_presence answers 0, 1 and -1 as sl_presence's send wants them. */
static int send_presence(void *data, const char *body, size_t len, long long expiration_ms)
{
    sl_sse_t *s = data;
    return s->feed != NULL ? sl_livefeed_publish_presence(s->feed, body, len, expiration_ms) : SL_PRESENCE_DOWN;
}

static const sl_livefeed_handlers_t live_handlers = {on_live_message, on_live_state_presence, on_presence_message};

sl_sse_t *sl_sse_create(h2o_loop_t *loop, const sl_sse_conf_t *conf)
{
    sl_sse_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->conf = *conf;
    snprintf(s->conn_name, sizeof(s->conn_name), "sluice-sse %s", conf->instance);
    sl_pgpool_conf_t pg = {.url = conf->db_url,
                           .nconns = (size_t)conf->db_conns,
                           .max_queue = 100000,
                           .reconnect_ms = 1000,
                           .connect_timeout_ms = (int)conf->db_connect_timeout_ms,
                           .query_timeout_ms = (int)conf->db_query_timeout_ms};
    /* One connection of its own for the hub: a crowd of histories in the streams' FIFO must not
     * hold up the backfill that live delivery waits for. */
    sl_pgpool_conf_t hub_pg = pg;
    hub_pg.nconns = 1;
    hub_pg.max_queue = 1000;
    sl_presence_conf_t pc = {.instance = conf->instance,
                             .heartbeat_ms = conf->presence_heartbeat_ms,
                             .ttl_ms = conf->presence_ttl_ms,
                             .grace_ms = conf->presence_grace_ms,
                             .max_users = conf->presence_max_users,
                             .send = send_presence,
                             .send_data = s};
    if ((s->presence = sl_presence_create(loop, &pc)) == NULL || (s->pg = sl_pgpool_create(loop, &pg)) == NULL ||
        (s->hub_pg = sl_pgpool_create(loop, &hub_pg)) == NULL ||
        (s->hub = sl_hub_create(loop, s->hub_pg, (int)conf->check_ms, 200000, (size_t)conf->recent,
                                  (size_t)conf->seam_max)) == NULL ||
        (s->streams = sl_streams_create(loop, s->hub, s->pg, s->presence, &conf->stream)) == NULL ||
        (s->retention = sl_retention_view_create(loop, s->hub_pg, (int)conf->check_ms)) == NULL ||
        (s->pull = sl_pull_create(loop, s->streams, &conf->pull)) == NULL ||
        (s->feed = sl_livefeed_create(loop, conf->amqp_url, conf->live_exchange, conf->presence_exchange,
                                      s->conn_name, conf->live_backlog, &live_handlers, s)) == NULL) {
        sl_sse_destroy(s);
        return NULL;
    }
    sl_streams_set_access(s->streams, conf->jwt, conf->policy);
    if (s->conf.channel_filter == NULL) { /* private channels: seen only by tokens that may read them */
        s->conf.channel_filter = sl_streams_channel_visible;
        s->conf.channel_filter_data = s->streams;
    }
    sl_streams_set_retention(s->streams, s->retention);
    return s;
}

/* ---- GET /v1/channels, GET /v1/channels/{channel}/presence ------------------------------------- */

/* A handler's refusal: a JSON error without Retry-After; returns 0, as a handler does once it
 * answered. */
static int refuse(h2o_req_t *req, int status, const char *code, const char *field, const char *message)
{
    sl_http_fail(req, status, code, field, message, 0);
    return 0;
}

/* What the client of req may see of channel: 0, or the status that refuses it. */
static int channel_visible(sl_sse_t *s, h2o_req_t *req, const char *channel)
{
    return s->conf.channel_filter != NULL ? s->conf.channel_filter(s->conf.channel_filter_data, req, channel) : 0;
}

struct live_chan {
    char name[SL_CHANNEL_MAX + 1];
    long long subscribers;
};

struct live_list {
    struct live_chan *v;
    size_t n, cap;
    const char *after;
};

static void add_live(void *data, const char *channel, long long occupancy)
{
    struct live_list *l = data;
    if (strcmp(channel, l->after) <= 0)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        struct live_chan *v = realloc(l->v, cap * sizeof(*v));
        if (v == NULL)
            return;
        l->v = v;
        l->cap = cap;
    }
    snprintf(l->v[l->n].name, sizeof(l->v[0].name), "%s", channel);
    l->v[l->n++].subscribers = occupancy;
}

static int cmp_live(const void *a, const void *b)
{
    return strcmp(((const struct live_chan *)a)->name, ((const struct live_chan *)b)->name);
}

struct channels_req {
    sl_sse_t *s;
    h2o_req_t *req;      /* NULL once h2o disposed the request */
    sl_pgquery_t *query;
    long long limit;     /* channels in the answer */
    size_t n;            /* in it so far */
    char after[SL_CHANNEL_MAX + 1]; /* where the next database page starts */
    int have_live;
    struct live_list live; /* the channels read now, past the request's "after", in order */
    size_t li;
    sl_buf_t out;
    char last[SL_CHANNEL_MAX + 1]; /* the last channel in the answer */
};

static void channels_dispose(void *data)
{
    struct channels_req *c = data;
    c->req = NULL;
    if (c->query != NULL)
        sl_pgpool_cancel(c->query);
    free(c->live.v);
    sl_buf_free(&c->out);
}

static const char SQL_CHANNELS[] =
    "SELECT channel, last_seq, messages FROM sluice_channels WHERE channel > $1 ORDER BY channel LIMIT $2";

static void on_channels(void *data, const PGresult *res, const char *err);

static void query_channels(struct channels_req *c)
{
    char lim[24];
    snprintf(lim, sizeof(lim), "%lld", c->limit);
    const char *params[] = {c->after, lim};
    if ((c->query = sl_pgpool_query(c->s->pg, SQL_CHANNELS, 2, params, on_channels, c)) == NULL)
        sl_http_fail(c->req, 503, "database_unavailable", NULL, "the database is unavailable", 1);
}

static void append_channel(struct channels_req *c, const char *name, long long subscribers, long long last_seq,
                           long long messages)
{
    sl_buf_appends(&c->out, c->n > 0 ? ",{\"channel\":" : "{\"channel\":");
    sl_buf_append_json_string(&c->out, name);
    sl_buf_appendf(&c->out, ",\"subscribers\":%lld,\"last_seq\":%lld,\"messages\":%lld}", subscribers, last_seq,
                   messages);
    snprintf(c->last, sizeof(c->last), "%s", name);
    c->n++;
}

/* One page of the database (channel order) merged with the channels read now (live ones nobody
 * posted to included). Channels the filter hides are skipped, and the next page is read until the
 * answer has limit channels or both sources are exhausted; "next" (the last channel of the answer)
 * when more may follow, so a cursor never names a hidden channel. */
static void on_channels(void *data, const PGresult *res, const char *err)
{
    struct channels_req *c = data;
    sl_sse_t *s = c->s;
    c->query = NULL;
    if (err != NULL) {
        sl_http_fail(c->req, 503, "database_unavailable", NULL, "the database is unavailable", 1);
        return;
    }
    if (!c->have_live) {
        c->have_live = 1;
        c->live.after = c->after;
        sl_presence_each_channel(s->presence, add_live, &c->live);
        if (c->live.n > 1)
            qsort(c->live.v, c->live.n, sizeof(*c->live.v), cmp_live);
    }
    int rows = PQntuples(res), r = 0, full = rows >= c->limit;
    /* a full page ends at its last row: live channels past it come with the next page */
    const char *bound = full && rows > 0 ? PQgetvalue(res, rows - 1, 0) : NULL;
#define LIVE_LEFT (c->li < c->live.n && (bound == NULL || strcmp(c->live.v[c->li].name, bound) <= 0))
    while ((long long)c->n < c->limit && (r < rows || LIVE_LEFT)) {
        const char *db = r < rows ? PQgetvalue(res, r, 0) : NULL;
        const struct live_chan *lc = LIVE_LEFT ? &c->live.v[c->li] : NULL;
        int cmp = db == NULL ? 1 : lc == NULL ? -1 : strcmp(db, lc->name);
        const char *name = cmp <= 0 ? db : lc->name;
        long long subscribers = cmp >= 0 ? lc->subscribers : 0, last_seq = 0, messages = 0;
        if (cmp <= 0) {
            last_seq = strtoll(PQgetvalue(res, r, 1), NULL, 10);
            messages = strtoll(PQgetvalue(res, r, 2), NULL, 10);
            r++;
        }
        if (cmp >= 0)
            c->li++;
        if (channel_visible(s, c->req, name) == 0)
            append_channel(c, name, subscribers, last_seq, messages);
    }
    int more = r < rows || full || LIVE_LEFT;
#undef LIVE_LEFT
    if ((long long)c->n < c->limit && full) { /* hidden channels made room: read on */
        snprintf(c->after, sizeof(c->after), "%s", PQgetvalue(res, rows - 1, 0));
        query_channels(c);
        return;
    }
    sl_buf_appends(&c->out, "],\"next\":");
    if (more && c->n > 0)
        sl_buf_append_json_string(&c->out, c->last);
    else
        sl_buf_appends(&c->out, "null");
    sl_buf_appends(&c->out, "}");
    sl_http_send(c->req, 200, NULL, c->out.data, c->out.len);
}

static int handle_channels(sl_sse_t *s, h2o_req_t *req)
{
    h2o_iovec_t v;
    long long limit = CHANNELS_LIMIT_MAX;
    int r = sl_http_query(req, "limit", &v);
    if (r < 0 || (r == 1 && (sl_stream_parse_count(v.base, v.len, CHANNELS_LIMIT_MAX, &limit) != 0 || limit < 1)))
        return refuse(req, 400, "invalid_limit", "limit", "'limit' must be an integer from 1 to 1000");
    const char *after = NULL;
    size_t after_len = 0;
    if ((r = sl_http_query(req, "after", &v)) < 0 ||
        (r == 1 && (after_len = sl_channel_canon(v.base, v.len, &after)) == 0))
        return refuse(req, 400, "invalid_cursor", "after",
                      "'after' must be a channel (" SL_CHANNEL_RULE "), the \"next\" of the previous page");
    struct channels_req *c = h2o_mem_alloc_shared(&req->pool, sizeof(*c), channels_dispose);
    memset(c, 0, sizeof(*c));
    c->s = s;
    c->req = req;
    c->limit = limit;
    if (r == 1)
        memcpy(c->after, after, after_len);
    sl_buf_appends(&c->out, "{\"channels\":[");
    query_channels(c);
    return 0;
}

struct user_list {
    sl_presence_user_t *v;
    size_t n, cap;
    sl_buf_t strings; /* the users' ids and names, NUL-separated; v points into it once done */
    size_t *offsets;  /* per user: id, name (SIZE_MAX: none) */
};

static void add_user(void *data, const sl_presence_user_t *u)
{
    struct user_list *l = data;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        size_t *o = realloc(l->offsets, 2 * cap * sizeof(*o));
        if (o == NULL)
            return;
        l->offsets = o;
        l->cap = cap;
    }
    l->offsets[2 * l->n] = l->strings.len;
    sl_buf_append(&l->strings, u->id, strlen(u->id) + 1);
    l->offsets[2 * l->n + 1] = SIZE_MAX;
    if (u->name != NULL) {
        l->offsets[2 * l->n + 1] = l->strings.len;
        sl_buf_append(&l->strings, u->name, strlen(u->name) + 1);
    }
    l->n++;
}

static int cmp_user(const void *a, const void *b)
{
    return strcmp(((const sl_presence_user_t *)a)->id, ((const sl_presence_user_t *)b)->id);
}

static int answer_presence(sl_sse_t *s, h2o_req_t *req, const char *channel)
{
    int refused = channel_visible(s, req, channel);
    if (refused != 0)
        return refuse(req, refused, refused == 401 ? "unauthorized" : "forbidden", NULL, "this channel is private");
    struct user_list l = {NULL, 0, 0, SL_BUF_INIT, NULL};
    int truncated = 0;
    sl_presence_each_user(s->presence, channel, add_user, &l, &truncated);
    if (l.n > 0 && (l.v = calloc(l.n, sizeof(*l.v))) == NULL)
        l.n = 0;
    for (size_t i = 0; i < l.n; i++) {
        l.v[i].id = l.strings.data + l.offsets[2 * i];
        l.v[i].name = l.offsets[2 * i + 1] != SIZE_MAX ? l.strings.data + l.offsets[2 * i + 1] : NULL;
    }
    if (l.n > 1)
        qsort(l.v, l.n, sizeof(*l.v), cmp_user);
    long long max = sl_presence_max_users(s->presence);
    if ((long long)l.n > max) { /* the union of several instances' sets may pass it */
        l.n = (size_t)max;
        truncated = 1;
    }
    sl_buf_t b = SL_BUF_INIT;
    sl_buf_appends(&b, "{\"channel\":");
    sl_buf_append_json_string(&b, channel);
    sl_buf_appends(&b, ",\"users\":[");
    for (size_t i = 0; i < l.n; i++) {
        sl_buf_appends(&b, i > 0 ? ",{\"id\":" : "{\"id\":");
        sl_buf_append_json_string(&b, l.v[i].id);
        if (l.v[i].name != NULL) {
            sl_buf_appends(&b, ",\"name\":");
            sl_buf_append_json_string(&b, l.v[i].name);
        }
        sl_buf_appends(&b, "}");
    }
    sl_buf_appendf(&b, "],\"truncated\":%s,\"subscribers\":%lld}", truncated ? "true" : "false",
                   sl_presence_occupancy(s->presence, channel));
    sl_http_send(req, 200, NULL, b.data, b.len);
    sl_buf_free(&b);
    sl_buf_free(&l.strings);
    free(l.offsets);
    free(l.v);
    return 0;
}

/* "/v1/channels/{channel}/presence": the channel's bytes in *channel (not NUL-terminated), else
 * 0 for another path. */
static int presence_path(h2o_req_t *req, h2o_iovec_t *channel)
{
    static const char prefix[] = "/v1/channels/", suffix[] = "/presence";
    h2o_iovec_t p = req->path_normalized;
    size_t pl = sizeof(prefix) - 1, sfl = sizeof(suffix) - 1;
    if (p.len <= pl + sfl || memcmp(p.base, prefix, pl) != 0 || memcmp(p.base + p.len - sfl, suffix, sfl) != 0)
        return 0;
    *channel = h2o_iovec_init(p.base + pl, p.len - pl - sfl);
    return 1;
}

static int ready(const sl_sse_t *s)
{
    return sl_livefeed_up(s->feed) && sl_pgpool_ready(s->pg) && sl_pgpool_ready(s->hub_pg) && sl_hub_ready(s->hub);
}

static int handle_readyz(sl_sse_t *s, h2o_req_t *req)
{
    char body[200];
    int n = snprintf(body, sizeof(body), "{\"status\":\"%s\",\"amqp\":\"%s\",\"db\":\"%s\",\"position\":%lld}",
                     ready(s) ? "ready" : "unavailable", sl_livefeed_up(s->feed) ? "up" : "down",
                     sl_pgpool_ready(s->pg) && sl_pgpool_ready(s->hub_pg) ? "up" : "down", (long long)sl_hub_position(s->hub));
    sl_http_send(req, ready(s) ? 200 : 503, NULL, body, (size_t)n);
    return 0;
}

static void render_pull_metrics(sl_sse_t *s, sl_buf_t *b)
{
    const sl_pull_stats_t *ps = sl_pull_stats(s->pull);
    sl_metrics_header(b, "sluice_sse_pull_pages_total", "counter",
                      "GET /v1/messages?after= pages answered, by where they were read (memory: no database).");
    sl_metrics_sample(b, "sluice_sse_pull_pages_total", "source=\"memory\"", (double)ps->answered[0]);
    sl_metrics_sample(b, "sluice_sse_pull_pages_total", "source=\"database\"", (double)ps->answered[1]);
    sl_metrics_header(b, "sluice_sse_pull_answers_total", "counter",
                      "Pull answers by how they came: at once, woken by a new event, wait over (empty page), reset.");
    sl_metrics_sample(b, "sluice_sse_pull_answers_total", "how=\"at_once\"", (double)ps->at_once);
    sl_metrics_sample(b, "sluice_sse_pull_answers_total", "how=\"woken\"", (double)ps->woken);
    sl_metrics_sample(b, "sluice_sse_pull_answers_total", "how=\"timed_out\"", (double)ps->timed_out);
    sl_metrics_sample(b, "sluice_sse_pull_answers_total", "how=\"reset\"", (double)ps->resets);
    sl_metrics_one(b, "sluice_sse_pull_waiters", "gauge",
                   "Long-polls waiting now (no database connection held).", (double)ps->waiters);
    sl_metrics_one(b, "sluice_sse_pull_max_waiters", "gauge",
                   "Long-polls this instance holds at once (SLUICE_SSE_PULL_MAX_WAITERS).",
                   (double)s->conf.pull.max_waiters);
    sl_metrics_one(b, "sluice_sse_pull_waiters_per_client", "gauge",
                   "Long-polls one client address may hold at once (SLUICE_SSE_PULL_WAITERS_PER_CLIENT).",
                   (double)s->conf.pull.waiters_per_client);
    sl_metrics_header(b, "sluice_sse_pull_refused_total", "counter", "Long-polls refused with too_many_waiters, by the cap they met.");
    sl_metrics_sample(b, "sluice_sse_pull_refused_total", "reason=\"instance\"", (double)ps->refused[0]);
    sl_metrics_sample(b, "sluice_sse_pull_refused_total", "reason=\"client\"", (double)ps->refused[1]);
    sl_metrics_one(b, "sluice_sse_pull_departed_total", "counter",
                   "Pulls whose client left while they waited, or before their database read (freed; nothing read).",
                   (double)ps->departed);
    sl_metrics_one(b, "sluice_sse_pull_failures_total", "counter",
                   "Pulls whose database read failed (503).", (double)ps->failures);
    sl_metrics_one(b, "sluice_sse_retention_low_seq", "gauge",
                   "The highest retention low-water mark this instance read (0: nothing deleted); resumes and pulls "
                   "below a channel's mark answer reset.", (double)sl_retention_view_low(s->retention, 1, NULL, 0));
}

static int handle_metrics(sl_sse_t *s, h2o_req_t *req)
{
    sl_buf_t b = SL_BUF_INIT;
    const sl_stream_stats_t *st = sl_streams_stats(s->streams);
    const sl_hub_stats_t *hs = sl_hub_stats(s->hub);
    static const char *const names[] = {"sse", "ndjson", "websocket"};
    char labels[64];

    sl_metrics_header(&b, "sluice_sse_clients", "gauge", "Connected stream clients by transport.");
    for (int i = 0; i < 3; i++) {
        snprintf(labels, sizeof(labels), "transport=\"%s\"", names[i]);
        sl_metrics_sample(&b, "sluice_sse_clients", labels, (double)st->connected[i]);
    }
    sl_metrics_one(&b, "sluice_sse_connections_total", "counter",
                   "Stream connections opened.", (double)st->opened_total);
    sl_metrics_one(&b, "sluice_sse_events_sent_total", "counter", "Events queued to clients.", (double)st->events_sent);
    sl_metrics_one(&b, "sluice_sse_bytes_queued_total", "counter",
                   "Bytes queued to clients.", (double)st->bytes_queued);
    sl_metrics_one(&b, "sluice_sse_slow_client_disconnects_total", "counter",
                   "Clients cut off for not reading.", (double)st->slow_disconnects);
    sl_metrics_one(&b, "sluice_sse_queued_bytes", "gauge",
                   "Bytes queued to clients now, history included (each is cut off past out_max_bytes).",
                   (double)st->queued_now);
    sl_metrics_one(&b, "sluice_sse_out_max_bytes", "gauge",
                   "Per-connection output limit (SLUICE_SSE_OUT_MAX_BYTES).", (double)s->conf.stream.out_max_bytes);
    sl_metrics_one(&b, "sluice_sse_history_failures_total", "counter",
                   "History reads that failed (the stream ends; a WebSocket subscription is dropped with an error).",
                   (double)st->history_failures);
    sl_metrics_one(&b, "sluice_sse_history_db_reads_total", "counter",
                   "History and resume reads sent to the database (streams and WebSocket subscriptions).",
                   (double)st->history_db_reads);
    sl_metrics_one(&b, "sluice_sse_history_inflight", "gauge",
                   "Subscriptions reading their history now (counted against the history caps).",
                   (double)st->history_inflight);
    sl_metrics_one(&b, "sluice_sse_history_concurrency", "gauge",
                   "Histories this instance reads at once (SLUICE_SSE_HISTORY_CONCURRENCY).",
                   (double)s->conf.stream.history_concurrency);
    sl_metrics_one(&b, "sluice_sse_history_per_client", "gauge",
                   "Histories one client address may read at once (SLUICE_SSE_HISTORY_PER_CLIENT).",
                   (double)s->conf.stream.history_per_client);
    sl_metrics_header(&b, "sluice_sse_history_refused_total", "counter",
                      "Streams and subscriptions refused with history_busy, by the cap they met.");
    sl_metrics_sample(&b, "sluice_sse_history_refused_total", "reason=\"instance\"", (double)st->history_refused[0]);
    sl_metrics_sample(&b, "sluice_sse_history_refused_total", "reason=\"client\"", (double)st->history_refused[1]);
    sl_metrics_header(&b, "sluice_sse_db_pending_queries", "gauge",
                      "Database queries queued or running, by pool (streams: histories, pulls; hub: position, backfill, retention marks).");
    sl_metrics_sample(&b, "sluice_sse_db_pending_queries", "pool=\"streams\"", (double)sl_pgpool_pending(s->pg));
    sl_metrics_sample(&b, "sluice_sse_db_pending_queries", "pool=\"hub\"", (double)sl_pgpool_pending(s->hub_pg));
    sl_metrics_one(&b, "sluice_sse_seam_buffered_events", "gauge",
                   "Events held now by streams reading their history (at most seam-max each).",
                   (double)hs->seam_buffered);
    sl_metrics_one(&b, "sluice_sse_seam_max_events", "gauge",
                   "Events one stream may hold while it reads its history (SLUICE_SSE_SEAM_MAX).",
                   (double)s->conf.seam_max);
    sl_metrics_one(&b, "sluice_sse_seam_overflows_total", "counter",
                   "Streams whose wait buffer passed seam-max: what followed their history was read from the database.",
                   (double)hs->seam_overflows);
    sl_metrics_one(&b, "sluice_sse_resets_total", "counter", "Resumes too old to replay.", (double)st->resets);
    sl_metrics_one(&b, "sluice_sse_refused_total", "counter",
                   "Connections refused at the limit.", (double)st->refused_full);
    sl_metrics_one(&b, "sluice_sse_ws_rate_limited_total", "counter",
                   "WebSockets closed (1008) for sending more than ws-rate messages per second.",
                   (double)st->ws_rate_limited);
    sl_metrics_one(&b, "sluice_sse_token_refused_total", "counter",
                   "Streams, WebSocket subscribes and auth commands refused for their token (by code: "
                   "sluice_jwt_verifications_total).", (double)st->token_refused);
    sl_metrics_header(&b, "sluice_sse_private_refused_total", "counter",
                      "Private channels refused to readers, by code (token_required: no token; channel_forbidden: "
                      "not in the token's channels).");
    sl_metrics_sample(&b, "sluice_sse_private_refused_total", "code=\"token_required\"",
                      (double)st->read_refused[0]);
    sl_metrics_sample(&b, "sluice_sse_private_refused_total", "code=\"channel_forbidden\"",
                      (double)st->read_refused[1]);
    sl_metrics_header(&b, "sluice_sse_token_expired_total", "counter",
                      "Streams and WebSocket subscriptions ended at their token's exp.");
    sl_metrics_sample(&b, "sluice_sse_token_expired_total", "transport=\"stream\"", (double)st->token_ended[0]);
    sl_metrics_sample(&b, "sluice_sse_token_expired_total", "transport=\"websocket\"", (double)st->token_ended[1]);
    sl_jwt_metrics(s->conf.jwt, &b);
    render_pull_metrics(s, &b);
    sl_metrics_header(&b, "sluice_sse_live_events_total", "counter", "Live events by outcome.");
    sl_metrics_sample(&b, "sluice_sse_live_events_total", "outcome=\"received\"", (double)hs->received);
    sl_metrics_sample(&b, "sluice_sse_live_events_total", "outcome=\"delivered\"", (double)hs->delivered);
    sl_metrics_sample(&b, "sluice_sse_live_events_total", "outcome=\"duplicate\"", (double)hs->duplicates);
    sl_metrics_sample(&b, "sluice_sse_live_events_total", "outcome=\"malformed\"", (double)hs->malformed);
    sl_metrics_sample(&b, "sluice_sse_live_events_total", "outcome=\"backfilled\"", (double)hs->backfilled);
    sl_metrics_sample(&b, "sluice_sse_live_events_total", "outcome=\"skipped_hole\"", (double)hs->skipped);
    sl_metrics_one(&b, "sluice_sse_history_from_memory_total", "counter",
                   "Histories served without the database.", (double)hs->replays_from_memory);
    sl_metrics_one(&b, "sluice_sse_backfills_total", "counter",
                   "Gap backfills read from the database.", (double)hs->backfills);
    sl_metrics_one(&b, "sluice_sse_position", "gauge",
                   "Last seq delivered by the hub.", (double)sl_hub_position(s->hub));
    sl_metrics_header(&b, "sluice_sse_live_lag_seconds", "gauge",
                      "Now minus created_at of the last delivered message (post to fan-out).");
    sl_metrics_sample(&b, "sluice_sse_live_lag_seconds", "",
                      hs->last_created_at_us ? (double)(sl_time_now_us() - hs->last_created_at_us) / 1e6 : 0);
    const sl_presence_stats_t *ps = sl_presence_stats(s->presence);
    sl_metrics_one(&b, "sluice_sse_occupancy", "gauge",
                   "Subscriptions (streams, WebSocket subscriptions) reading a channel on this instance, summed over "
                   "channels (streams of every channel are not in it).", (double)ps->occupancy);
    sl_metrics_one(&b, "sluice_sse_presence_channels", "gauge",
                   "Channels read on this instance (or with a user in grace).", (double)ps->channels);
    sl_metrics_one(&b, "sluice_sse_presence_users", "gauge",
                   "Users present on this instance, summed over channels (in grace included).", (double)ps->users);
    sl_metrics_one(&b, "sluice_sse_presence_truncated_channels", "gauge",
                   "Channels whose presence set passed SLUICE_PRESENCE_MAX_USERS somewhere.", (double)ps->truncated);
    sl_metrics_one(&b, "sluice_sse_presence_max_users", "gauge",
                   "Users listed per channel and instance (SLUICE_PRESENCE_MAX_USERS).",
                   (double)sl_presence_max_users(s->presence));
    sl_metrics_one(&b, "sluice_sse_presence_instances", "gauge",
                   "Other sse instances whose presence snapshot is within its TTL.", (double)ps->instances);
    sl_metrics_header(&b, "sluice_sse_presence_snapshots_total", "counter",
                      "Presence snapshots: sent, received (complete, from other instances), failed (not sent: "
                      "no connection, or no room before the next).");
    sl_metrics_sample(&b, "sluice_sse_presence_snapshots_total", "outcome=\"sent\"", (double)ps->rounds_sent);
    sl_metrics_sample(&b, "sluice_sse_presence_snapshots_total", "outcome=\"received\"", (double)ps->rounds_received);
    sl_metrics_sample(&b, "sluice_sse_presence_snapshots_total", "outcome=\"failed\"", (double)ps->rounds_failed);
    sl_metrics_one(&b, "sluice_sse_presence_parts_dropped_total", "counter",
                   "Snapshot parts dropped: malformed, out of order or stale.", (double)ps->parts_dropped);
    sl_metrics_one(&b, "sluice_sse_presence_sent_bytes_total", "counter",
                   "Bytes of presence snapshots published.", (double)ps->bytes_sent);
    sl_metrics_one(&b, "sluice_sse_presence_instances_expired_total", "counter",
                   "Instances dropped for a snapshot older than their TTL.", (double)ps->instances_expired);
    sl_metrics_header(&b, "sluice_sse_presence_events_total", "counter",
                      "Changes of the presence sets (all instances together) seen here.");
    sl_metrics_sample(&b, "sluice_sse_presence_events_total", "type=\"join\"", (double)ps->joins);
    sl_metrics_sample(&b, "sluice_sse_presence_events_total", "type=\"leave\"", (double)ps->leaves);
    sl_metrics_one(&b, "sluice_sse_all_channel_streams", "gauge",
                   "Streams of every channel on this instance (in no channel's occupancy).", (double)st->all_channels);
    sl_metrics_one(&b, "sluice_sse_presence_listeners", "gauge",
                   "Streams and WebSocket subscriptions that asked for presence events (presence=1).",
                   (double)st->presence_listeners);
    sl_metrics_one(&b, "sluice_sse_presence_events_sent_total", "counter",
                   "Joins and leaves queued to streams and WebSocket subscriptions.", (double)st->presence_events);
    sl_metrics_one(&b, "sluice_sse_ready", "gauge",
                   "1 when the live feed, the database and the hub are ready.", ready(s));
    sl_http_send_metrics(req, &b);
    sl_buf_free(&b);
    return 0;
}

/* ---- routing ----------------------------------------------------------------------------------- */

static int handle_page(sl_sse_t *s, h2o_req_t *req)
{
    (void)s;
    /* the page renders message text with textContent only; this policy backs that up. Images
     * (avatars and media of Mastodon posts) come from anywhere, but only over https */
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("content-security-policy"), 0, NULL,
                          H2O_STRLIT("default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                     "style-src 'unsafe-inline'; img-src 'self' https:; connect-src *"));
    sl_http_send(req, 200, "text/html; charset=utf-8", (const char *)sl_webpage, sl_webpage_len);
    return 0;
}

static int handle_client(sl_sse_t *s, h2o_req_t *req) /* the page's own client, and anyone's (clients/js) */
{
    (void)s;
    sl_http_send_static(req, "text/javascript; charset=utf-8", sl_clientjs_etag, (const char *)sl_clientjs,
                        sl_clientjs_len);
    return 0;
}

static int handle_favicon(sl_sse_t *s, h2o_req_t *req) /* none: say so without an error in the browser's console */
{
    (void)s;
    sl_http_send(req, 204, "image/x-icon", "", 0);
    return 0;
}

static int handle_config(sl_sse_t *s, h2o_req_t *req)
{
    json_t *o = json_pack("{s:s}", "api", s->conf.api_url);
    char *text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (text == NULL)
        return sl_http_fail(req, 503, "out_of_memory", NULL, "out of memory", 1), 0;
    sl_http_send(req, 200, NULL, text, strlen(text));
    free(text);
    return 0;
}

static int handle_stream(sl_sse_t *s, h2o_req_t *req)
{
    return sl_streams_handle_stream(s->streams, req);
}

static int handle_ws(sl_sse_t *s, h2o_req_t *req)
{
    return sl_streams_handle_ws(s->streams, req);
}

static int handle_pull(sl_sse_t *s, h2o_req_t *req)
{
    return sl_pull_handle(s->pull, req);
}

static int handle_healthz(sl_sse_t *s, h2o_req_t *req)
{
    (void)s;
    sl_http_send(req, 200, NULL, H2O_STRLIT("{\"status\":\"ok\"}"));
    return 0;
}

static int handle_presence(sl_sse_t *s, h2o_req_t *req)
{
    h2o_iovec_t channel;
    presence_path(req, &channel);
    /* as everywhere, "#general" means general; in a path the '#' comes as %23 */
    char name[SL_CHANNEL_MAX + 4];
    const char *canon = NULL;
    size_t len = 0;
    if (channel.len >= 3 && memcmp(channel.base, "%23", 3) == 0 && channel.len - 2 < sizeof(name)) {
        name[0] = '#';
        memcpy(name + 1, channel.base + 3, channel.len - 3);
        len = sl_channel_canon(name, channel.len - 2, &canon);
    } else {
        len = sl_channel_canon(channel.base, channel.len, &canon);
    }
    if (len == 0)
        return refuse(req, 400, "invalid_channel", "channel", "the channel must be " SL_CHANNEL_RULE);
    memmove(name, canon, len);
    name[len] = '\0';
    return answer_presence(s, req, name);
}

/* The endpoints by their whole (normalized) path; "/v1/channels/{channel}/presence" is matched
 * apart, after them (presence_path). */
static const struct route {
    const char *path;
    int (*handle)(sl_sse_t *s, h2o_req_t *req);
} routes[] = {
    {"/", handle_page},
    {"/index.html", handle_page},
    {"/client.js", handle_client},
    {"/config.json", handle_config},
    {"/favicon.ico", handle_favicon},
    {"/v1/stream", handle_stream},
    {"/v1/ws", handle_ws},
    {"/v1/messages", handle_pull},
    {"/healthz", handle_healthz},
    {"/readyz", handle_readyz},
    {"/metrics", handle_metrics},
    {"/v1/channels", handle_channels},
};

int sl_sse_handle(void *data, h2o_req_t *req)
{
    sl_sse_t *s = data;
    if (sl_http_method_is(req, "OPTIONS")) {
        sl_http_preflight(req, "GET, OPTIONS");
        return 0;
    }
    int (*handle)(sl_sse_t *, h2o_req_t *) = NULL;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]) && handle == NULL; i++)
        if (sl_http_path_is(req, routes[i].path))
            handle = routes[i].handle;
    h2o_iovec_t channel;
    if (handle == NULL && presence_path(req, &channel))
        handle = handle_presence;
    if (handle == NULL)
        return refuse(req, 404, "not_found", NULL, "no such endpoint");
    if (!sl_http_method_is(req, "GET") && !sl_http_method_is(req, "HEAD")) {
        sl_http_method_not_allowed(req, "GET");
        return 0;
    }
    return handle(s, req);
}

sl_presence_t *sl_sse_presence(sl_sse_t *s)
{
    return s->presence;
}

void sl_sse_close_streams(sl_sse_t *s)
{
    sl_streams_close_all(s->streams);
    sl_pull_close_all(s->pull);
}

size_t sl_sse_streams(const sl_sse_t *s)
{
    return sl_streams_count(s->streams);
}

void sl_sse_destroy(sl_sse_t *s)
{
    if (s == NULL)
        return;
    if (s->presence != NULL && s->feed != NULL)
        sl_presence_flush(s->presence);
    sl_livefeed_destroy(s->feed);
    s->feed = NULL;
    sl_pull_destroy(s->pull);
    sl_streams_destroy(s->streams);
    sl_retention_view_destroy(s->retention);
    sl_hub_destroy(s->hub);
    sl_pgpool_destroy(s->hub_pg);
    sl_pgpool_destroy(s->pg);
    sl_presence_destroy(s->presence);
    free(s);
}
