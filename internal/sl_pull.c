/*
 * sl_pull: see sl_pull.h.
 *
 * A request's state lives in its memory pool (h2o_mem_alloc_shared), whose dispose hook runs when
 * h2o frees the request, answered or not: it detaches whatever is still attached (the hub
 * subscription, the waiter's place, a query, the timers). A long-poll is a hub subscription made
 * before anything is read, so that what commits while the memory or the database is read waits in
 * its buffer and is cut at the seam by seq (sl_hub.h), as a stream's history is. Answers are never
 * sent from inside the hub's fan-out: an event only appends to the page and arms a zero-delay
 * timer.
 */
#include "sl_pull.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_auth.h"
#include "sl_db.h"
#include "sl_http.h"
#include "sl_log.h"
#include "sl_retention.h"
#include "sl_stream_int.h"
#include "sl_time.h"

/* ---- parameters ------------------------------------------------------------------------------- */

int sl_pull_parse(h2o_req_t *req, long long limit_max, sl_pull_params_t *p, sl_error_t *err)
{
    h2o_iovec_t v;
    long long n;
    int r;
    memset(p, 0, sizeof(*p));
    p->limit = SL_PULL_LIMIT_DEFAULT < limit_max ? SL_PULL_LIMIT_DEFAULT : limit_max;
    p->all = 1;
    if ((r = sl_http_query(req, "after", &v)) <= 0 || sl_stream_parse_count(v.base, v.len, INT64_MAX, &n) != 0) {
        sl_error_set(err, 400, "invalid_after", "after",
                     "'after' must be a non-negative integer: a seq (0: the feed's start; then each answer's next)");
        return -1;
    }
    p->after = n;
    if ((r = sl_http_query(req, "limit", &v)) != 0) {
        if (r < 0 || sl_stream_parse_count(v.base, v.len, limit_max, &n) != 0 || n < 1) {
            sl_error_set(err, 400, "invalid_limit", "limit", "'limit' must be an integer from 1 to %lld", limit_max);
            return -1;
        }
        p->limit = n;
    }
    if ((r = sl_http_query(req, "wait", &v)) != 0) {
        if (r < 0 || sl_stream_parse_count(v.base, v.len, SL_PULL_WAIT_MAX, &n) != 0) {
            sl_error_set(err, 400, "invalid_wait", "wait", "'wait' must be an integer from 0 to %d (seconds)",
                         SL_PULL_WAIT_MAX);
            return -1;
        }
        p->wait_s = n;
    }
    if ((r = sl_http_query(req, "channel", &v)) != 0) {
        const char *name;
        size_t l = r > 0 ? sl_channel_canon(v.base, v.len, &name) : 0;
        if (l == 0) {
            sl_error_set(err, 400, "invalid_channel", "channel", "'channel' must be " SL_CHANNEL_RULE);
            return -1;
        }
        memcpy(p->channel[0], name, l);
        p->channel[0][l] = '\0';
        p->all = 0;
    }
    return 0;
}

/* ---- the database read -------------------------------------------------------------------------- */

/* The feed's bounds (its last seq, and the retention's low-water mark of the channels) and, joined
 * to them, the page: one row with NULL feed columns when the page is empty, so that the bounds
 * always come back, and of the same snapshot as the rows: a message the retention job deleted
 * before this snapshot has its mark raised in it (sl_retention.h), so a page never misses one
 * silently. */
#define COL_LAST (SL_DB_FEED_EVENT_COLUMN + 1)
#define COL_LOW (SL_DB_FEED_EVENT_COLUMN + 2)
#define BOUNDS(low) "(SELECT last_seq AS last, " low " AS low FROM sluice_feed WHERE id = 1) AS b"
static const char SQL_AFTER_ALL[] = "SELECT f.*, b.last, b.low FROM " BOUNDS(SL_RETENTION_LOW_ALL) " LEFT JOIN ("
                                    SL_DB_FEED_MESSAGES " WHERE seq > $1 UNION ALL " SL_DB_FEED_EVENTS
                                    " WHERE seq > $1 ORDER BY seq LIMIT $2) AS f ON true ORDER BY f.seq";
static const char SQL_AFTER_IN[] = "SELECT f.*, b.last, b.low FROM " BOUNDS(SL_RETENTION_LOW_IN("$2")) " LEFT JOIN ("
                                   SL_DB_FEED_MESSAGES " WHERE seq > $1 AND channel = ANY($2::text[]) UNION ALL "
                                   SL_DB_FEED_EVENTS " WHERE seq > $1 AND channel = ANY($2::text[]) ORDER BY seq"
                                   " LIMIT $3) AS f ON true ORDER BY f.seq";

static const char SQL_AFTER_READABLE[] = "SELECT f.*, b.last, b.low FROM " BOUNDS(SL_PULL_SQL_LOW_READABLE("$3", "$4"))
                                         " LEFT JOIN ("
                                         SL_DB_FEED_MESSAGES " WHERE seq > $1" SL_PULL_SQL_READABLE("$3", "$4")
                                         " UNION ALL " SL_DB_FEED_EVENTS " WHERE seq > $1"
                                         SL_PULL_SQL_READABLE("$3", "$4") " ORDER BY seq LIMIT $2) AS f ON true"
                                         " ORDER BY f.seq";

/* A set as a text[] literal of LIKE patterns: a name matches itself, "team-*" is team-%. '_' is
 * LIKE's one-character wildcard and a channel's character: escaped (\_), and the backslash
 * doubled inside the quoted array element. */
static void chanset_like(sl_buf_t *b, const sl_chanset_t *set)
{
    sl_buf_appends(b, "{");
    for (size_t i = 0; set != NULL && i < set->n; i++) {
        const char *name;
        int prefix;
        size_t len = sl_chanset_pattern(set, i, &name, &prefix);
        sl_buf_appends(b, i ? ",\"" : "\"");
        for (size_t k = 0; k < len; k++) {
            if (name[k] == '_')
                sl_buf_appends(b, "\\\\_");
            else
                sl_buf_append(b, &name[k], 1);
        }
        sl_buf_appends(b, prefix ? "%\"" : "\"");
    }
    sl_buf_appends(b, "}");
}

void sl_pull_readable_init(sl_pull_readable_t *rd, const sl_chanpolicy_t *policy, const sl_chanset_t *granted)
{
    memset(rd, 0, sizeof(*rd));
    chanset_like(&rd->bufs[0], sl_chanpolicy_private(policy));
    chanset_like(&rd->bufs[1], granted);
    rd->priv = rd->bufs[0].data;
    rd->granted = rd->bufs[1].data;
}

void sl_pull_readable_free(sl_pull_readable_t *rd)
{
    sl_buf_free(&rd->bufs[0]);
    sl_buf_free(&rd->bufs[1]);
    rd->priv = rd->granted = NULL;
}

sl_pgquery_t *sl_pull_query(sl_pgpool_t *pg, int all, const char (*channels)[SL_CHANNEL_MAX + 1], size_t n,
                            const sl_pull_readable_t *readable, int64_t after, long long limit, sl_pg_cb cb,
                            void *data)
{
    char a[24], l[24];
    sl_buf_t arr = SL_BUF_INIT; /* a text[] literal; channel names need no quoting ([a-z0-9_-]) */
    sl_pgquery_t *q;
    snprintf(a, sizeof(a), "%lld", (long long)after);
    snprintf(l, sizeof(l), "%lld", limit);
    if (readable != NULL) {
        const char *p4[] = {a, l, readable->priv, readable->granted};
        return sl_pgpool_query(pg, SQL_AFTER_READABLE, 4, p4, cb, data);
    }
    if (all) {
        const char *p2[] = {a, l};
        return sl_pgpool_query(pg, SQL_AFTER_ALL, 2, p2, cb, data);
    }
    sl_buf_appends(&arr, "{");
    for (size_t i = 0; i < n; i++)
        sl_buf_appendf(&arr, "%s%s", i ? "," : "", channels[i]);
    sl_buf_appends(&arr, "}");
    const char *p3[] = {a, arr.data, l};
    q = sl_pgpool_query(pg, SQL_AFTER_IN, 3, p3, cb, data);
    sl_buf_free(&arr);
    return q;
}

int sl_pull_rows(const PGresult *res)
{
    int n = PQntuples(res);
    return n == 1 && PQgetisnull(res, 0, 1) ? 0 : n;
}

static int64_t bound(const PGresult *res, int col)
{
    if (PQntuples(res) < 1 || PQnfields(res) <= col || PQgetisnull(res, 0, col))
        return 0;
    return strtoll(PQgetvalue(res, 0, col), NULL, 10);
}

int64_t sl_pull_last(const PGresult *res)
{
    return bound(res, COL_LAST);
}

int64_t sl_pull_low(const PGresult *res)
{
    return bound(res, COL_LOW);
}

/* ---- the answer ----------------------------------------------------------------------------------- */

void sl_pull_page_init(sl_pull_page_t *pg)
{
    memset(pg, 0, sizeof(*pg));
    sl_buf_appends(&pg->buf, "{\"messages\":[");
}

void sl_pull_page_add(sl_pull_page_t *pg, const sl_event_t *ev)
{
    if (pg->n++ > 0)
        sl_buf_appends(&pg->buf, ",");
    sl_buf_append(&pg->buf, ev->json.base, ev->json.len);
    pg->last = ev->seq;
}

void sl_pull_page_end(sl_pull_page_t *pg, int64_t next, const char *reset, int64_t since)
{
    sl_buf_appendf(&pg->buf, "],\"next\":\"%lld\"", (long long)next);
    if (reset != NULL)
        sl_buf_appendf(&pg->buf, ",\"reset\":{\"reason\":\"%s\",\"since\":%lld}", reset, (long long)since);
    sl_buf_appends(&pg->buf, "}");
}

int64_t sl_pull_page_from_result(sl_pull_page_t *pg, const PGresult *res, int64_t after, long long limit,
                                 int (*reads)(const void *ctx, const char *channel), const void *ctx,
                                 const char **reset)
{
    int64_t last = sl_pull_last(res), low = sl_pull_low(res), top = 0;
    int rows = sl_pull_rows(res);
    *reset = NULL;
    if (after < low) { /* the retention job deleted messages after it: go on from what is kept */
        *reset = "too_old";
        return low;
    }
    if (after > last) { /* a position this feed never had: another database's */
        *reset = "ahead";
        return last;
    }
    for (int k = 0; k < rows; k++) {
        int64_t seq = strtoll(PQgetvalue(res, k, 1), NULL, 10);
        sl_event_t *ev = sl_event_from_row(res, k);
        if (ev != NULL && ev->seq > after && (reads == NULL || reads(ctx, ev->channel)))
            sl_pull_page_add(pg, ev);
        sl_event_release(ev);
        top = seq > top ? seq : top;
    }
    if (rows >= limit)
        return top; /* full: more may follow it */
    return last > after ? last : after;
}

/* ---- the sse side ---------------------------------------------------------------------------------- */

struct sl_pull {
    h2o_loop_t *loop;
    sl_streams_t *streams;
    sl_pull_conf_t conf;
    h2o_linklist_t reqs;          /* every request in progress (struct pullreq) */
    struct sl_peercount waiters;  /* places of the long-polls (max_waiters, waiters_per_client) */
    h2o_timeout_t waits[SL_PULL_WAIT_MAX]; /* [i]: i + 1 seconds */
    h2o_timeout_t zero;
    h2o_timeout_t tick_timeout;   /* notices the waiters whose client left */
    h2o_timeout_entry_t tick_entry;
    sl_pull_stats_t stats;
};

struct pullreq {
    sl_pull_t *pull;
    h2o_req_t *req;
    h2o_linklist_t link;     /* in pull->reqs until answered */
    sl_pull_params_t params;
    sl_sub_t sub;
    int subscribed;          /* a long-poll: a hub subscription from the start */
    int live;                /* its subscription went live: it waits for events after covered */
    int holds_place;         /* counted in pull->waiters */
    int read_db;             /* its one database read is done */
    int source;              /* 0 memory, 1 database */
    int64_t covered;         /* the position its page answers for so far */
    socklen_t peer_len;      /* the client (sl_stream_peer_key) */
    unsigned char peer[16];
    struct histslot slot;    /* under the history caps while it reads the database */
    sl_pgquery_t *query;
    sl_pull_page_t page;
    h2o_timeout_entry_t wait_entry, due_entry;
    h2o_timeout_entry_t defer_entry; /* the database read waits SL_STREAM_HISTORY_DEFER_MS, as a stream's */
    int deferred;
    int64_t defer_after;
    struct reader rd;        /* its token (sl_stream_reader_token): what it may read of private channels */
    int has_rd;
};

/* Lets go of everything the request holds but its page; it is no longer in progress. */
static void detach(struct pullreq *r)
{
    sl_pull_t *p = r->pull;
    if (p == NULL)
        return;
    if (r->query != NULL)
        sl_pgpool_cancel(r->query);
    r->query = NULL;
    sl_stream_hist_release(p->streams, &r->slot);
    if (r->subscribed)
        sl_hub_unsubscribe(&r->sub);
    r->subscribed = 0;
    if (r->holds_place) {
        sl_peercount_give(&p->waiters, r->peer_len, r->peer);
        p->stats.waiters = p->waiters.total;
    }
    r->holds_place = 0;
    if (h2o_timeout_is_linked(&r->wait_entry))
        h2o_timeout_unlink(&r->wait_entry);
    if (h2o_timeout_is_linked(&r->due_entry))
        h2o_timeout_unlink(&r->due_entry);
    if (h2o_timeout_is_linked(&r->defer_entry))
        h2o_timeout_unlink(&r->defer_entry);
    h2o_linklist_unlink(&r->link);
    r->pull = NULL;
}

static void reader_free(struct pullreq *r)
{
    if (r->has_rd)
        sl_stream_reader_free(&r->rd);
    r->has_rd = 0;
}

static void dispose(void *data)
{
    struct pullreq *r = data;
    detach(r);
    reader_free(r);
    sl_buf_free(&r->page.buf);
}

static void answer(struct pullreq *r, int64_t next, const char *reset)
{
    sl_pull_t *p = r->pull;
    p->stats.answered[r->source]++;
    p->stats.resets += reset != NULL;
    detach(r);
    sl_pull_page_end(&r->page, next, reset, r->params.after);
    sl_http_send(r->req, 200, NULL, r->page.buf.data, r->page.buf.len);
    sl_buf_free(&r->page.buf);
}

static void refuse(struct pullreq *r, int status, const char *code, const char *msg)
{
    detach(r);
    sl_stream_refuse(r->req, status, code, NULL, msg);
}

/* What a waiter's page answers for now: everything of its channels up to the hub's position came
 * to it once it went live. */
static int64_t waited_to(const struct pullreq *r)
{
    int64_t pos = sl_hub_position(r->pull->streams->hub);
    if (r->page.n > 0 && (long long)r->page.n >= r->params.limit)
        return r->page.last;
    return r->live && pos > r->covered ? pos : r->covered;
}

static void on_due(h2o_timeout_entry_t *entry)
{
    struct pullreq *r = H2O_STRUCT_FROM_MEMBER(struct pullreq, due_entry, entry);
    r->pull->stats.woken++;
    answer(r, waited_to(r), NULL);
}

static void on_wait_over(h2o_timeout_entry_t *entry)
{
    struct pullreq *r = H2O_STRUCT_FROM_MEMBER(struct pullreq, wait_entry, entry);
    if (r->page.n > 0) {
        on_due(&r->due_entry);
        return;
    }
    r->pull->stats.timed_out++;
    answer(r, waited_to(r), NULL);
}

/* A live event of its channels: into the page, answered at the next turn of the loop (events that
 * came in one live message join it). */
static void pull_emit(sl_sub_t *sub, sl_event_t *ev)
{
    struct pullreq *r = sub->owner;
    if ((long long)r->page.n >= r->params.limit)
        return; /* the page is full: its next is its last item */
    sl_pull_page_add(&r->page, ev);
    if (!h2o_timeout_is_linked(&r->due_entry))
        h2o_timeout_link(r->pull->loop, &r->pull->zero, &r->due_entry);
}

static void page_add(void *data, sl_event_t *ev)
{
    sl_pull_page_add(&((struct pullreq *)data)->page, ev);
}

static void pull_read(struct pullreq *r, int64_t after);

static void on_defer(h2o_timeout_entry_t *entry)
{
    struct pullreq *r = H2O_STRUCT_FROM_MEMBER(struct pullreq, defer_entry, entry);
    if (sl_stream_req_gone(r->req)) {
        r->pull->stats.departed++;
        answer(r, r->covered, NULL); /* into the void: h2o closes the connection */
        return;
    }
    pull_read(r, r->defer_after);
}

/* The read is done, its page answers up to next: answer now, or (a long-poll that found nothing)
 * go live after next and wait. */
static void settle(struct pullreq *r, int64_t next, const char *reset)
{
    sl_pull_t *p = r->pull;
    if (reset != NULL || r->page.n > 0 || r->params.wait_s == 0) {
        p->stats.at_once += reset == NULL;
        answer(r, next, reset);
        return;
    }
    r->covered = next > r->covered ? next : r->covered;
    if (sl_sub_go_live(&r->sub, r->covered) != 0) {
        /* Its wait buffer passed seam_max while the database answered: what came after is read
         * again (from memory; never a second database read). */
        r->covered = r->sub.cursor;
        pull_read(r, r->sub.cursor);
        return;
    }
    r->live = 1;
    /* the buffer's events after covered may have filled the page already (on_due is armed) */
    h2o_timeout_link(p->loop, &p->waits[r->params.wait_s - 1], &r->wait_entry);
}

/* A pull of every channel while some are private: what its reader may read, nothing else (its
 * subscription's filter, and its database rows' check). */
static int pull_filter(const sl_sub_t *sub, const char *channel)
{
    const struct pullreq *r = sub->owner;
    return sl_stream_readable(r->pull->streams, &r->rd, channel);
}

static int pull_reads(const void *ctx, const char *channel)
{
    const struct pullreq *r = ctx;
    return pull_filter(&r->sub, channel);
}

static void on_db(void *data, const PGresult *res, const char *err)
{
    struct pullreq *r = data;
    sl_pull_t *p = r->pull;
    char q[300];
    const char *reset;
    r->query = NULL;
    sl_stream_hist_release(p->streams, &r->slot);
    if (err != NULL) {
        SL_WARN("event=pull_read_failed error=%s", sl_log_quote(q, sizeof(q), err));
        p->stats.failures++;
        refuse(r, 503, "database_unavailable", "the database could not be read; retry shortly");
        return;
    }
    r->read_db = 1;
    r->source = 1;
    int64_t next = sl_pull_page_from_result(&r->page, res, r->params.after, r->params.limit,
                                            r->sub.filter != NULL ? pull_reads : NULL, r, &reset);
    settle(r, next, reset);
}

/* From the hub's memory when it reaches back to after, else one database read (under the history
 * caps). A position ahead of this hub goes to the database too: it may be another instance's, or
 * not this feed's at all. */
static void pull_read(struct pullreq *r, int64_t after)
{
    sl_pull_t *p = r->pull;
    sl_streams_t *s = p->streams;
    int64_t upto, low = sl_stream_retention_low(s, &r->sub);
    if (after < low) { /* (memory may still hold them: answer as the database would) */
        settle(r, low, "too_old");
        return;
    }
    if (after <= sl_hub_position(s->hub) &&
        sl_hub_page(s->hub, &r->sub, after, r->params.limit, &upto, page_add, r)) {
        settle(r, upto, NULL);
        return;
    }
    if (r->read_db) { /* (after an overflow) not in memory either: the client asks again from here */
        answer(r, after, NULL);
        return;
    }
    if (!r->deferred) { /* a client that sent its request and left (connect-and-drop) reads nothing */
        r->deferred = 1;
        r->defer_after = after;
        h2o_timeout_link(p->loop, &s->defer_timeout, &r->defer_entry);
        return;
    }
    const char *over = sl_stream_hist_acquire(s, &r->slot, after, 0, r->peer_len, r->peer);
    if (over != NULL) {
        SL_DEBUG("event=history_refused transport=pull cap=%s", over);
        refuse(r, 503, "history_busy", SL_STREAM_HISTORY_BUSY_MSG);
        return;
    }
    r->query = sl_stream_query_after(s, &r->sub, &r->rd, after, r->params.limit, on_db, r);
    if (r->query == NULL) {
        p->stats.failures++;
        refuse(r, 503, "database_unavailable", "the database is unavailable; retry shortly");
    }
}



/* Its token (Authorization: Bearer, else ?token=), as a stream's: a bad one is 401, a private
 * channel it does not cover 401 token_required / 403 channel_forbidden. Returns 0, or -1 with the
 * request answered. */
static int pull_reader(struct pullreq *r)
{
    sl_streams_t *s = r->pull->streams;
    size_t len = 0;
    const char *t = sl_stream_request_token(r->req, &len);
    sl_jwt_result_t jr = sl_stream_reader_token(s, "pull", t, len, &r->rd);
    if (jr != SL_JWT_OK) {
        detach(r);
        sl_auth_refuse_jwt(r->req, jr);
        return -1;
    }
    r->has_rd = 1;
    if (!r->params.all) {
        sl_chan_read_t a = sl_stream_reader_may_read(s, "pull", &r->rd, r->params.channel[0]);
        if (a != SL_CHAN_READ_OK) {
            detach(r);
            sl_auth_refuse_read(r->req, a, "channel", r->params.channel[0]);
            return -1;
        }
    } else if (sl_stream_filters_all(s)) {
        r->sub.filter = pull_filter;
    }
    /* a long-poll ends with its token: it waits no longer than the token is valid */
    if (r->rd.has_token && r->params.wait_s > 0) {
        int64_t left = r->rd.until - sl_time_now_us() / 1000000;
        if (left < r->params.wait_s)
            r->params.wait_s = left > 1 ? left : 1;
    }
    return 0;
}

int sl_pull_handle(sl_pull_t *p, h2o_req_t *req)
{
    sl_streams_t *s = p->streams;
    sl_pull_params_t prm;
    sl_error_t err;
    if (sl_pull_parse(req, p->conf.limit_max, &prm, &err) != 0) {
        sl_http_send_error(req, &err, 0);
        return 0;
    }
    if (!sl_hub_ready(s->hub) || !sl_pgpool_ready(s->pg))
        return sl_stream_refuse(req, 503, "not_ready", NULL, "the stream service is not connected to the database yet");
    struct pullreq *r = h2o_mem_alloc_shared(&req->pool, sizeof(*r), dispose);
    memset(r, 0, sizeof(*r));
    r->pull = p;
    r->req = req;
    r->params = prm;
    r->covered = prm.after;
    r->sub.all = prm.all;
    r->sub.channels = r->params.channel;
    r->sub.nchannels = prm.all ? 0 : 1;
    r->sub.emit = pull_emit;
    r->sub.owner = r;
    r->wait_entry.cb = on_wait_over;
    r->due_entry.cb = on_due;
    r->defer_entry.cb = on_defer;
    r->peer_len = sl_stream_peer_key(req->conn, r->peer);
    sl_pull_page_init(&r->page);
    h2o_linklist_insert(&p->reqs, &r->link);
    if (pull_reader(r) != 0)
        return 0;
    if (r->params.wait_s > 0) {
        const char *over =
            sl_peercount_take(&p->waiters, r->peer_len, r->peer, p->conf.max_waiters, p->conf.waiters_per_client);
        if (over != NULL) {
            p->stats.refused[*over == 'c' ? 1 : 0]++;
            SL_DEBUG("event=pull_waiter_refused cap=%s", over);
            refuse(r, 503, "too_many_waiters", "this server holds as many long-polls as it takes; retry shortly");
            return 0;
        }
        r->holds_place = 1;
        p->stats.waiters = p->waiters.total;
        if (sl_hub_subscribe(s->hub, &r->sub) != 0) {
            refuse(r, 503, "out_of_memory", "out of memory");
            return 0;
        }
        r->subscribed = 1;
    }
    pull_read(r, prm.after);
    return 0;
}

/* h2o does not read a connection while its request is being answered: a client that left is seen
 * by peeking at its socket, once a second. */
static void on_tick(h2o_timeout_entry_t *entry)
{
    sl_pull_t *p = H2O_STRUCT_FROM_MEMBER(sl_pull_t, tick_entry, entry);
    h2o_linklist_t *n = p->reqs.next;
    while (n != &p->reqs) {
        struct pullreq *r = H2O_STRUCT_FROM_MEMBER(struct pullreq, link, n);
        n = n->next;
        if (!r->live || !sl_stream_req_gone(r->req))
            continue;
        p->stats.departed++;
        SL_DEBUG("event=pull_waiter_departed");
        answer(r, waited_to(r), NULL); /* frees its waiter now; the write fails and h2o closes */
    }
    h2o_timeout_link(p->loop, &p->tick_timeout, &p->tick_entry);
}

sl_pull_t *sl_pull_create(h2o_loop_t *loop, sl_streams_t *streams, const sl_pull_conf_t *conf)
{
    sl_pull_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->loop = loop;
    p->streams = streams;
    p->conf = *conf;
    h2o_linklist_init_anchor(&p->reqs);
    for (int i = 0; i < SL_PULL_WAIT_MAX; i++)
        h2o_timeout_init(loop, &p->waits[i], (uint64_t)(i + 1) * 1000);
    h2o_timeout_init(loop, &p->zero, 0);
    h2o_timeout_init(loop, &p->tick_timeout, 1000);
    p->tick_entry.cb = on_tick;
    h2o_timeout_link(loop, &p->tick_timeout, &p->tick_entry);
    return p;
}

const sl_pull_stats_t *sl_pull_stats(const sl_pull_t *p)
{
    return &p->stats;
}

size_t sl_pull_pending(const sl_pull_t *p)
{
    size_t n = 0;
    for (h2o_linklist_t *l = p->reqs.next; l != &p->reqs; l = l->next)
        n++;
    return n;
}

void sl_pull_close_all(sl_pull_t *p)
{
    while (!h2o_linklist_is_empty(&p->reqs)) {
        struct pullreq *r = H2O_STRUCT_FROM_MEMBER(struct pullreq, link, p->reqs.next);
        answer(r, r->live ? waited_to(r) : r->covered, NULL);
    }
}

void sl_pull_destroy(sl_pull_t *p)
{
    if (p == NULL)
        return;
    while (!h2o_linklist_is_empty(&p->reqs)) /* their requests go with the loop */
        detach(H2O_STRUCT_FROM_MEMBER(struct pullreq, link, p->reqs.next));
    h2o_timeout_unlink(&p->tick_entry);
    h2o_timeout_dispose(p->loop, &p->tick_timeout);
    h2o_timeout_dispose(p->loop, &p->zero);
    for (int i = 0; i < SL_PULL_WAIT_MAX; i++)
        h2o_timeout_dispose(p->loop, &p->waits[i]);
    sl_peercount_free(&p->waiters);
    free(p);
}
