/*
 * sl_stream: the core of SSE, NDJSON and WebSocket subscriptions; see sl_stream.h, and
 * sl_stream_int.h for how the transports (sl_stream_sse.c, sl_stream_ndjson.c over
 * sl_stream_http.c, sl_stream_ws.c) plug into it.
 *
 * Writes never happen inside the hub's fan-out: emitting an event only queues a reference and
 * marks the connection dirty; a zero-delay timer then flushes every dirty connection once, which
 * also puts many events into one write. Connections are freed only from h2o's own close paths
 * (the generator's stop, the WebSocket close callback) or from that timer, never while the hub
 * walks its lists.
 */
#include "sl_stream_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "sl_buf.h"
#include "sl_db.h"
#include "sl_http.h"
#include "sl_log.h"
#include "sl_pull.h"
#include "sl_retention.h"
#include "sl_time.h"

const char SL_STREAM_HISTORY_BUSY_MSG[] = "this server reads as many histories as it takes now; retry shortly";

int sl_stream_refuse(h2o_req_t *req, int status, const char *code, const char *field, const char *msg)
{
    sl_http_fail(req, status, code, field, msg, status == 503 ? 1 : 0);
    return 0;
}

int sl_stream_admit(sl_streams_t *s, h2o_req_t *req)
{
    if ((long long)s->nconns >= s->conf.max_conns) {
        s->stats.refused_full++;
        sl_stream_refuse(req, 503, "too_many_connections", NULL, "this server has as many streams as it takes; retry");
        return -1;
    }
    if (!sl_hub_ready(s->hub) || !sl_pgpool_ready(s->pg)) {
        sl_stream_refuse(req, 503, "not_ready", NULL, "the stream service is not connected to the database yet");
        return -1;
    }
    return 0;
}

int sl_stream_req_gone(h2o_req_t *req)
{
    char b;
    h2o_socket_t *sock = req->conn->callbacks->get_socket(req->conn);
    if (sock == NULL)
        return 0;
    ssize_t r = recv(h2o_socket_get_fd(sock), &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* ---- the history caps ---------------------------------------------------------------------------- */

socklen_t sl_stream_peer_key(h2o_conn_t *conn, unsigned char addr[16])
{
    struct sockaddr_storage ss;
    socklen_t l = conn->callbacks->get_peername != NULL ? conn->callbacks->get_peername(conn, (struct sockaddr *)&ss) : 0;
    return l == 0 ? 0 : sl_http_addr_key(&ss, addr);
}

static struct histpeer *peer_find(const struct sl_peercount *t, socklen_t len, const unsigned char *addr)
{
    for (size_t i = 0; i < t->npeers; i++)
        if (t->peers[i].len == len && memcmp(t->peers[i].addr, addr, len) == 0)
            return &t->peers[i];
    return NULL;
}

const char *sl_peercount_take(struct sl_peercount *t, socklen_t len, const unsigned char *addr, long long max_total,
                              long long max_per_client)
{
    struct histpeer *p = len ? peer_find(t, len, addr) : NULL;
    if ((long long)t->total >= max_total)
        return "instance";
    if (p != NULL && (long long)p->n >= max_per_client)
        return "client";
    if (len && p == NULL) {
        if (t->npeers == t->cappeers) {
            size_t cap = t->cappeers ? t->cappeers * 2 : 16;
            struct histpeer *np = realloc(t->peers, cap * sizeof(*np));
            if (np == NULL)
                return "instance"; /* no memory: as busy as it gets */
            t->peers = np;
            t->cappeers = cap;
        }
        p = &t->peers[t->npeers++];
        p->len = len;
        memcpy(p->addr, addr, len);
        p->n = 0;
    }
    if (p != NULL)
        p->n++;
    t->total++;
    return NULL;
}

void sl_peercount_give(struct sl_peercount *t, socklen_t len, const unsigned char *addr)
{
    struct histpeer *p = len ? peer_find(t, len, addr) : NULL;
    t->total--;
    if (p != NULL && --p->n == 0)
        *p = t->peers[--t->npeers];
}

void sl_peercount_free(struct sl_peercount *t)
{
    free(t->peers);
    memset(t, 0, sizeof(*t));
}

const char *sl_stream_hist_acquire(sl_streams_t *s, struct histslot *slot, int64_t since, long long history,
                                   socklen_t len, const unsigned char *addr)
{
    if (since < 0 && history == 0)
        return NULL; /* reads nothing */
    const char *over =
        sl_peercount_take(&s->hist, len, addr, s->conf.history_concurrency, s->conf.history_per_client);
    if (over != NULL) {
        s->stats.history_refused[*over == 'c' ? 1 : 0]++;
        return over;
    }
    s->stats.history_inflight = s->hist.total;
    slot->held = 1;
    slot->len = len;
    memcpy(slot->addr, addr, len);
    return NULL;
}

void sl_stream_hist_release(sl_streams_t *s, struct histslot *slot)
{
    if (!slot->held)
        return;
    slot->held = 0;
    sl_peercount_give(&s->hist, slot->len, slot->addr);
    s->stats.history_inflight = s->hist.total;
}

/* ---- the registry and the output accounting ------------------------------------------------------ */

void sl_stream_mark_dirty(struct stream_conn *c)
{
    sl_streams_t *s = c->streams;
    if (!h2o_linklist_is_linked(&c->dirty))
        h2o_linklist_insert(&s->dirty, &c->dirty);
    if (!h2o_timeout_is_linked(&s->flush_entry))
        h2o_timeout_link(s->loop, &s->zero_timeout, &s->flush_entry);
}

void sl_stream_conn_register(sl_streams_t *s, struct stream_conn *c, const struct sl_transport *tp)
{
    c->streams = s;
    c->tp = tp;
    c->last_out_us = sl_time_mono_us();
    h2o_linklist_insert(&s->conns, &c->link);
    s->nconns++;
    s->stats.connected[tp->kind]++;
    s->stats.opened_total++;
}

void sl_stream_conn_unregister(struct stream_conn *c)
{
    if (h2o_linklist_is_linked(&c->dirty))
        h2o_linklist_unlink(&c->dirty);
    h2o_linklist_unlink(&c->link);
    c->streams->nconns--;
    c->streams->stats.connected[c->tp->kind]--;
}

void sl_stream_conn_set_queued(struct stream_conn *c, size_t n)
{
    c->streams->queued_total += n - c->queued_bytes; /* unsigned wrap-around cancels out */
    c->queued_bytes = n;
}

void sl_stream_conn_cut(struct stream_conn *c, size_t more)
{
    sl_streams_t *s = c->streams;
    if (c->aborting)
        return;
    c->aborting = 1;
    s->stats.slow_disconnects++;
    SL_INFO("event=slow_client_disconnected transport=%s queued_bytes=%zu more=%zu limit=%lld", c->tp->name,
            c->queued_bytes, more, s->conf.out_max_bytes);
    sl_stream_mark_dirty(c);
}

/* A client that has taken the previous write may take one answer of any size (a long history, a
 * burst within one turn of the loop): it is written whole at the next turn, and the limit applies
 * to whatever comes after it. A client cut off resumes with its last id. */
int sl_stream_conn_take(struct stream_conn *c, size_t more, int busy)
{
    sl_streams_t *s = c->streams;
    if (c->aborting)
        return -1;
    if (busy && c->queued_bytes + more > (size_t)s->conf.out_max_bytes) {
        sl_stream_conn_cut(c, more);
        return -1;
    }
    sl_stream_conn_set_queued(c, c->queued_bytes + more);
    s->stats.bytes_queued += more;
    return 0;
}

/* ---- readers' tokens and private channels -------------------------------------------------------- */

void sl_streams_set_access(sl_streams_t *s, sl_jwt_t *jwt, const sl_chanpolicy_t *policy)
{
    s->jwt = jwt;
    s->policy = policy;
}

const char *sl_stream_request_token(h2o_req_t *req, size_t *len)
{
    h2o_iovec_t v;
    const char *t = sl_http_bearer(req, len);
    int r;
    if (t == NULL && (r = sl_http_query(req, "token", &v)) != 0) {
        t = r > 0 ? v.base : "";
        *len = r > 0 ? v.len : 0;
    }
    return t;
}

sl_jwt_result_t sl_stream_reader_token(sl_streams_t *s, const char *transport, const char *t, size_t len,
                                       struct reader *r)
{
    memset(r, 0, sizeof(*r));
    if (t == NULL || !sl_jwt_enabled(s->jwt))
        return SL_JWT_OK; /* no key: nothing to verify it with, and nothing it could open */
    sl_jwt_result_t v = sl_jwt_verify(s->jwt, t, len, sl_time_now_us() / 1000000, &r->claims);
    if (v != SL_JWT_OK) {
        s->stats.token_refused++;
        SL_INFO("event=reader_token_refused transport=%s code=%s", transport, sl_jwt_code(v));
        return v;
    }
    r->has_token = 1;
    r->until = sl_jwt_valid_until(s->jwt, &r->claims);
    return SL_JWT_OK;
}

void sl_stream_reader_free(struct reader *r)
{
    sl_jwt_claims_free(&r->claims);
    r->has_token = 0;
}

sl_chan_read_t sl_stream_reader_may_read(sl_streams_t *s, const char *transport, const struct reader *r,
                                         const char *channel)
{
    const sl_chanset_t *granted = r->has_token ? &r->claims.channels : NULL;
    sl_chan_read_t a = sl_chanpolicy_read(s->policy, granted, channel, strlen(channel));
    if (a != SL_CHAN_READ_OK) {
        char q[300];
        s->stats.read_refused[a == SL_CHAN_READ_FORBIDDEN]++;
        SL_INFO("event=private_channel_refused transport=%s channel=%s code=%s sub=%s", transport, channel,
                sl_chan_read_code(a), r->has_token ? sl_log_quote(q, sizeof(q), r->claims.sub) : "-");
    }
    return a;
}

/* A request's verified token, kept while the request lives (its pool holds it), so that a list of
 * channels verifies it once. */
struct reqreader {
    h2o_linklist_t link; /* in streams->reqreaders; unlinked when the streams go first */
    h2o_req_t *req;
    sl_jwt_result_t verified;
    struct reader rd;
};

static void reqreader_dispose(void *data)
{
    struct reqreader *m = data;
    if (h2o_linklist_is_linked(&m->link))
        h2o_linklist_unlink(&m->link);
    sl_stream_reader_free(&m->rd);
}

int sl_streams_channel_visible(void *data, h2o_req_t *req, const char *channel)
{
    sl_streams_t *s = data;
    struct reqreader *m = NULL;
    if (!sl_chanpolicy_is_private(s->policy, channel, strlen(channel)))
        return 0;
    for (h2o_linklist_t *n = s->reqreaders.next; n != &s->reqreaders && m == NULL; n = n->next) {
        struct reqreader *e = H2O_STRUCT_FROM_MEMBER(struct reqreader, link, n);
        if (e->req == req)
            m = e;
    }
    if (m == NULL) {
        size_t len = 0;
        const char *t = sl_stream_request_token(req, &len);
        m = h2o_mem_alloc_shared(&req->pool, sizeof(*m), reqreader_dispose);
        memset(m, 0, sizeof(*m));
        m->req = req;
        m->verified = sl_stream_reader_token(s, "channels", t, len, &m->rd);
        h2o_linklist_insert(&s->reqreaders, &m->link);
    }
    if (m->verified != SL_JWT_OK)
        return 401;
    const sl_chanset_t *granted = m->rd.has_token ? &m->rd.claims.channels : NULL;
    sl_chan_read_t a = sl_chanpolicy_read(s->policy, granted, channel, strlen(channel));
    return a == SL_CHAN_READ_OK ? 0 : sl_chan_read_status(a);
}

int sl_stream_filters_all(const sl_streams_t *s)
{
    return sl_chanpolicy_any_private(s->policy);
}

int sl_stream_readable(const sl_streams_t *s, const struct reader *r, const char *channel)
{
    return sl_chanpolicy_may_read(s->policy, r->has_token ? &r->claims.channels : NULL, channel, strlen(channel));
}

/* The deadlines: a binary heap by `at`, each entry knowing its place (pos) so that it leaves in
 * O(log n) when its stream ends first. */
static void heap_put(sl_streams_t *s, size_t i, struct expiry *e)
{
    s->heap[i] = e;
    e->pos = i + 1;
}

static void heap_up(sl_streams_t *s, size_t i)
{
    struct expiry *e = s->heap[i];
    while (i > 0 && s->heap[(i - 1) / 2]->at > e->at) {
        heap_put(s, i, s->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    heap_put(s, i, e);
}

static void heap_down(sl_streams_t *s, size_t i)
{
    struct expiry *e = s->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->nheap)
            break;
        if (c + 1 < s->nheap && s->heap[c + 1]->at < s->heap[c]->at)
            c++;
        if (s->heap[c]->at >= e->at)
            break;
        heap_put(s, i, s->heap[c]);
        i = c;
    }
    heap_put(s, i, e);
}

/* Sets the timerfd to the soonest deadline if it is not set sooner already (a timer that rings
 * for a deadline gone meanwhile finds nothing due and is set again). */
static void expiry_timer(sl_streams_t *s)
{
    if (s->nheap == 0 || (s->tfd_at != 0 && s->tfd_at <= s->heap[0]->at))
        return;
    int64_t at = s->heap[0]->at;
    struct itimerspec its = {{0, 0}, {(time_t)(at < 1 ? 1 : at > ((int64_t)1 << 40) ? (int64_t)1 << 40 : at), 0}};
    if (timerfd_settime(s->tfd, TFD_TIMER_ABSTIME, &its, NULL) != 0) {
        SL_ERROR("event=expiry_timer_failed error=\"%s\"", strerror(errno));
        return;
    }
    s->tfd_at = at;
}

static void on_expiry_timer(h2o_socket_t *sock, const char *err)
{
    sl_streams_t *s = sock->data;
    uint64_t n;
    (void)err;
    while (read(s->tfd, &n, sizeof(n)) > 0)
        ;
    s->tfd_at = 0;
    int64_t now = sl_time_now_us() / 1000000;
    while (s->nheap > 0 && s->heap[0]->at <= now) {
        struct expiry *e = s->heap[0];
        sl_stream_expiry_disarm(s, e);
        e->fire(e); /* may arm or disarm others: the heap is consistent again here */
    }
    expiry_timer(s);
}

int sl_stream_expiry_arm(sl_streams_t *s, struct expiry *e, const struct reader *r, void (*fire)(struct expiry *))
{
    sl_stream_expiry_disarm(s, e);
    if (!r->has_token)
        return 0;
    if (s->tfd < 0) {
        int fd = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
        if (fd < 0) {
            SL_ERROR("event=expiry_timer_failed error=\"%s\"", strerror(errno));
            return -1;
        }
        s->tfd = fd;
        s->tsock = h2o_evloop_socket_create(s->loop, fd, H2O_SOCKET_FLAG_DONT_READ);
        s->tsock->data = s;
        h2o_socket_read_start(s->tsock, on_expiry_timer);
    }
    if (s->nheap == s->capheap) {
        size_t cap = s->capheap ? s->capheap * 2 : 64;
        struct expiry **h = realloc(s->heap, cap * sizeof(*h));
        if (h == NULL)
            return -1;
        s->heap = h;
        s->capheap = cap;
    }
    e->at = r->until;
    e->fire = fire;
    s->heap[s->nheap++] = e;
    heap_up(s, s->nheap - 1);
    expiry_timer(s);
    return 0;
}

void sl_stream_expiry_disarm(sl_streams_t *s, struct expiry *e)
{
    if (e->pos == 0)
        return;
    size_t i = e->pos - 1;
    e->pos = 0;
    struct expiry *last = s->heap[--s->nheap];
    if (i == s->nheap)
        return;
    heap_put(s, i, last);
    if (i > 0 && s->heap[(i - 1) / 2]->at > last->at)
        heap_up(s, i);
    else
        heap_down(s, i);
}

/* ---- history: shared by every transport ---------------------------------------------------------- */

/* History: the newest messages still standing. Resume: everything after a position, events too,
 * so that a client that missed an edit or a delete learns of it: a pull's read (sl_pull_query),
 * which carries the retention's low-water mark of the same snapshot. */
static const char SQL_LAST_ALL[] = SL_DB_FEED_MESSAGES " WHERE deleted_at IS NULL ORDER BY seq DESC LIMIT $1";
static const char SQL_LAST_IN[] = SL_DB_FEED_MESSAGES " WHERE channel = ANY($1::text[]) AND deleted_at IS NULL"
                                  " ORDER BY seq DESC LIMIT $2";

/* A stream of every channel while some are private: only the rows of channels its reader may
 * read, $2 the private patterns and $3 the reader's, each as LIKE patterns (chanset_like). */
static const char SQL_LAST_READABLE[] = SL_DB_FEED_MESSAGES " WHERE deleted_at IS NULL" SL_PULL_SQL_READABLE("$2", "$3")
                                        " ORDER BY seq DESC LIMIT $1";

/* The readable form of r (NULL: no token) under the instance's policy (sl_pull_readable_init). */
static void readable_like(const sl_streams_t *s, const struct reader *r, sl_pull_readable_t *rd)
{
    sl_pull_readable_init(rd, s->policy, r != NULL && r->has_token ? &r->claims.channels : NULL);
}

sl_pgquery_t *sl_stream_query_after(sl_streams_t *s, const sl_sub_t *sub, const struct reader *r, int64_t after,
                                    long long limit, sl_pg_cb cb, void *data)
{
    sl_pull_readable_t rd;
    if (!(sub->all && sl_stream_filters_all(s)))
        return sl_pull_query(s->pg, sub->all, (const char(*)[SL_CHANNEL_MAX + 1])sub->channels, sub->nchannels, NULL,
                             after, limit, cb, data);
    readable_like(s, r, &rd);
    sl_pgquery_t *q = sl_pull_query(s->pg, 1, NULL, 0, &rd, after, limit, cb, data);
    sl_pull_readable_free(&rd);
    return q;
}

sl_pgquery_t *sl_stream_query_history(sl_streams_t *s, const sl_sub_t *sub, int64_t since, long long history,
                                      sl_pg_cb cb, void *data)
{
    return sl_stream_query_history_as(s, sub, NULL, since, history, cb, data);
}

sl_pgquery_t *sl_stream_query_history_as(sl_streams_t *s, const sl_sub_t *sub, const struct reader *r,
                                         int64_t since, long long history, sl_pg_cb cb, void *data)
{
    char n1[24];
    sl_buf_t arr = SL_BUF_INIT;
    sl_pull_readable_t rd = {0};
    sl_pgquery_t *q;
    snprintf(n1, sizeof(n1), "%lld", history);
    if (since >= 0) {
        q = sl_stream_query_after(s, sub, r, since, s->conf.replay_max + 1, cb, data);
    } else if (sub->all && sl_stream_filters_all(s)) {
        readable_like(s, r, &rd);
        const char *p[] = {n1, rd.priv, rd.granted};
        q = sl_pgpool_query(s->pg, SQL_LAST_READABLE, 3, p, cb, data);
    } else {
        sl_buf_appends(&arr, "{");
        for (size_t i = 0; !sub->all && i < sub->nchannels; i++)
            sl_buf_appendf(&arr, "%s%s", i ? "," : "", sub->channels[i]);
        sl_buf_appends(&arr, "}");
        const char *p1[] = {n1};
        const char *p2[] = {arr.data, n1};
        q = sub->all ? sl_pgpool_query(s->pg, SQL_LAST_ALL, 1, p1, cb, data)
                     : sl_pgpool_query(s->pg, SQL_LAST_IN, 2, p2, cb, data);
    }
    sl_buf_free(&arr);
    sl_pull_readable_free(&rd);
    if (q != NULL)
        s->stats.history_db_reads++;
    return q;
}

int sl_stream_too_many(const sl_streams_t *s, int64_t since, const PGresult *res)
{
    return since >= 0 && (sl_pull_rows(res) > s->conf.replay_max || since < sl_pull_low(res));
}

void sl_stream_for_each_row(const PGresult *res, int ascending, void (*fn)(void *, sl_event_t *), void *data)
{
    int n = PQntuples(res);
    for (int k = 0; k < n; k++) {
        int row = ascending ? k : n - 1 - k;
        if (PQgetisnull(res, row, 1))
            continue; /* a resume's row of bounds only (sl_pull_query): no feed row */
        sl_event_t *ev = sl_event_from_row(res, row);
        if (ev == NULL)
            continue;
        fn(data, ev);
        sl_event_release(ev);
    }
}

struct retained {
    const sl_retention_view_t *view;
    void (*row)(void *, sl_event_t *);
    void *data;
};

/* Passes on only what the retention job has not deleted. */
static void retained_row(void *data, sl_event_t *ev)
{
    struct retained *f = data;
    if (ev->seq > sl_retention_view_low(f->view, 0, (const char(*)[SL_CHANNEL_MAX + 1])ev->channel, 1))
        f->row(f->data, ev);
}

static int sub_reads(const void *ctx, const char *channel)
{
    const sl_sub_t *sub = ctx;
    return sub->filter(sub, channel);
}

int64_t sl_stream_retention_low(const sl_streams_t *s, const sl_sub_t *sub)
{
    if (sub->all && sub->filter != NULL)
        return sl_retention_view_low_where(s->retention, sub_reads, sub);
    return sl_retention_view_low(s->retention, sub->all, (const char(*)[SL_CHANNEL_MAX + 1])sub->channels,
                                 sub->nchannels);
}

int sl_stream_replay(sl_streams_t *s, sl_sub_t *sub, int64_t since, long long history, int *too_many,
                     void (*row)(void *, sl_event_t *), void *data)
{
    /* Memory may still hold what the retention job deleted: answer as the database would. */
    int64_t low = sl_stream_retention_low(s, sub);
    if (since >= 0 && since < low) {
        *too_many = 1;
        return 1;
    }
    if (low == 0)
        return sl_hub_replay(s->hub, sub, since, history, s->conf.replay_max, too_many, row, data);
    struct retained f = {s->retention, row, data};
    return sl_hub_replay(s->hub, sub, since, history, s->conf.replay_max, too_many, retained_row, &f);
}

void sl_streams_set_retention(sl_streams_t *s, const sl_retention_view_t *view)
{
    s->retention = view;
}

int64_t sl_stream_replay_covered(const sl_streams_t *s, const sl_sub_t *sub)
{
    int64_t pos = sl_hub_position(s->hub);
    return sub->cursor > pos ? sub->cursor : pos;
}

int sl_stream_join(sl_streams_t *s, sl_sub_t *sub, struct histslot *slot, int64_t covered)
{
    if (sl_sub_go_live(sub, covered) != 0)
        return 1;
    sl_stream_hist_release(s, slot);
    return 0;
}

/* ---- timers and lifecycle ------------------------------------------------------------------------ */

static void on_flush(h2o_timeout_entry_t *entry)
{
    sl_streams_t *s = H2O_STRUCT_FROM_MEMBER(sl_streams_t, flush_entry, entry);
    while (!h2o_linklist_is_empty(&s->dirty)) {
        struct stream_conn *c = H2O_STRUCT_FROM_MEMBER(struct stream_conn, dirty, s->dirty.next);
        h2o_linklist_unlink(&c->dirty);
        if (c->aborting)
            c->tp->abort(c);
        else
            c->tp->flush(c);
    }
}

static void on_heartbeat(h2o_timeout_entry_t *entry)
{
    sl_streams_t *s = H2O_STRUCT_FROM_MEMBER(sl_streams_t, hb_entry, entry);
    int64_t idle_since = sl_time_mono_us() - s->conf.heartbeat_ms * 1000;
    for (h2o_linklist_t *n = s->conns.next; n != &s->conns; n = n->next) {
        struct stream_conn *c = H2O_STRUCT_FROM_MEMBER(struct stream_conn, link, n);
        if (c->aborting)
            continue;
        if (c->tp->gone != NULL && c->tp->gone(c)) {
            c->aborting = 1;
            sl_stream_mark_dirty(c);
        } else if (c->last_out_us < idle_since) {
            c->tp->heartbeat(c);
        }
    }
    h2o_timeout_link(s->loop, &s->hb_timeout, &s->hb_entry);
}

sl_streams_t *sl_streams_create(h2o_loop_t *loop, sl_hub_t *hub, sl_pgpool_t *pg, sl_presence_t *presence,
                                const sl_stream_conf_t *conf)
{
    sl_streams_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->loop = loop;
    s->hub = hub;
    s->pg = pg;
    s->presence = presence;
    s->conf = *conf;
    s->tfd = -1;
    h2o_linklist_init_anchor(&s->conns);
    h2o_linklist_init_anchor(&s->reqreaders);
    h2o_linklist_init_anchor(&s->dirty);
    h2o_timeout_init(loop, &s->zero_timeout, 0);
    h2o_timeout_init(loop, &s->defer_timeout, SL_STREAM_HISTORY_DEFER_MS);
    s->flush_entry.cb = on_flush;
    /* half the heartbeat interval, and at most 2 s so that departed clients are noticed soon */
    long long tick = conf->heartbeat_ms / 2 > 0 ? conf->heartbeat_ms / 2 : 1;
    h2o_timeout_init(loop, &s->hb_timeout, (uint64_t)(tick < 2000 ? tick : 2000));
    s->hb_entry.cb = on_heartbeat;
    h2o_timeout_link(loop, &s->hb_timeout, &s->hb_entry);
    return s;
}

const sl_stream_stats_t *sl_streams_stats(sl_streams_t *s)
{
    for (h2o_linklist_t *n = s->conns.next; n != &s->conns; n = n->next) {
        struct stream_conn *c = H2O_STRUCT_FROM_MEMBER(struct stream_conn, link, n);
        if (c->tp->sync != NULL)
            c->tp->sync(c);
    }
    s->stats.queued_now = s->queued_total;
    return &s->stats;
}

size_t sl_streams_count(const sl_streams_t *s)
{
    return s->nconns;
}

void sl_streams_close_all(sl_streams_t *s)
{
    for (h2o_linklist_t *n = s->conns.next; n != &s->conns; n = n->next) {
        struct stream_conn *c = H2O_STRUCT_FROM_MEMBER(struct stream_conn, link, n);
        if (!c->aborting && c->tp->shutdown != NULL && c->tp->shutdown(c))
            continue;
        c->aborting = 1;
        sl_stream_mark_dirty(c);
    }
}

void sl_streams_destroy(sl_streams_t *s)
{
    if (s == NULL)
        return;
    /* whatever is left is freed by h2o_context_dispose's connection teardown or leaks with it */
    if (h2o_timeout_is_linked(&s->flush_entry))
        h2o_timeout_unlink(&s->flush_entry);
    h2o_timeout_unlink(&s->hb_entry);
    h2o_timeout_dispose(s->loop, &s->zero_timeout);
    while (!h2o_linklist_is_empty(&s->defer_timeout._entries)) /* streams abandoned at exit */
        h2o_timeout_unlink(H2O_STRUCT_FROM_MEMBER(h2o_timeout_entry_t, _link, s->defer_timeout._entries.next));
    h2o_timeout_dispose(s->loop, &s->defer_timeout);
    h2o_timeout_dispose(s->loop, &s->hb_timeout);
    while (!h2o_linklist_is_empty(&s->reqreaders)) /* requests still pending: their pools free them */
        h2o_linklist_unlink(s->reqreaders.next);
    if (s->tsock != NULL) {
        h2o_socket_read_stop(s->tsock);
        h2o_socket_close(s->tsock); /* closes tfd */
    }
    free(s->heap);
    sl_peercount_free(&s->hist);
    free(s);
}
