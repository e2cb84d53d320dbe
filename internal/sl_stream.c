/*
 * sl_stream: SSE, NDJSON and WebSocket subscriptions; see sl_stream.h.
 *
 * Writes never happen inside the hub's fan-out: emitting an event only queues a reference and
 * marks the connection dirty; a zero-delay timer then flushes every dirty connection once, which
 * also puts many events into one write. Connections are freed only from h2o's own close paths
 * (the generator's stop, the WebSocket close callback) or from that timer, never while the hub
 * walks its lists.
 */
#include "sl_stream.h"

#include <h2o/websocket.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "sl_buf.h"
#include "sl_db.h"
#include "sl_http.h"
#include "sl_log.h"
#include "sl_ratelimit.h"
#include "sl_time.h"

enum { T_SSE = 0, T_NDJSON = 1, T_WS = 2 };

struct conn;

/* What a transport does; the rest of the stream logic is shared. */
struct sl_transport {
    const char *name;
    int kind;
    sl_format_t fmt;
    void (*flush)(struct conn *c);     /* write what is queued, if the socket can take it */
    void (*abort)(struct conn *c);     /* cut the connection now (slow client, shutdown) */
    void (*heartbeat)(struct conn *c); /* queue a keep-alive */
};

struct conn {
    h2o_linklist_t link;  /* in streams->conns */
    h2o_linklist_t dirty; /* in streams->dirty while a flush or abort is due */
    sl_streams_t *streams;
    const struct sl_transport *tp;
    int64_t last_out_us;
    size_t queued_bytes; /* queued for this client and not yet taken by its socket, history included */
    int aborting;
};

/* One client address's history reads in progress. */
struct histpeer {
    socklen_t len;
    unsigned char addr[16];
    size_t n;
};

/* A history read's place under the caps (history_concurrency, history_per_client): taken before
 * the history starts, given back when the subscription goes live, fails, or its client leaves
 * (noticed by on_heartbeat within 2 s; its query is cancelled then). Taken whether memory or the
 * database will answer, which is not known before the response starts; not taken by a stream
 * that asks for no history at all (history=0 without since), which reads nothing. */
struct histslot {
    int held;
    socklen_t len;
    unsigned char addr[16];
};

struct sl_streams {
    h2o_loop_t *loop;
    sl_hub_t *hub;
    sl_pgpool_t *pg;
    sl_stream_conf_t conf;
    h2o_linklist_t conns, dirty;
    size_t nconns;
    h2o_timeout_t zero_timeout, hb_timeout;
    h2o_timeout_entry_t flush_entry, hb_entry;
    size_t queued_total;  /* the sum of every connection's queued_bytes */
    struct histpeer *peers; /* addresses with a history read in progress (at most history_concurrency) */
    size_t npeers, cappeers;
    sl_stream_stats_t stats;
};

/* The client's address as a key: 4 bytes (IPv4) or 16 (IPv6); 0 when unknown. */
static socklen_t peer_key(h2o_conn_t *conn, unsigned char addr[16])
{
    struct sockaddr_storage ss;
    socklen_t l = conn->callbacks->get_peername != NULL ? conn->callbacks->get_peername(conn, (struct sockaddr *)&ss) : 0;
    return l == 0 ? 0 : sl_http_addr_key(&ss, addr);
}

static struct histpeer *hist_peer(sl_streams_t *s, socklen_t len, const unsigned char *addr)
{
    for (size_t i = 0; i < s->npeers; i++)
        if (s->peers[i].len == len && memcmp(s->peers[i].addr, addr, len) == 0)
            return &s->peers[i];
    return NULL;
}

/* Takes a slot for a history read by the client at addr (len 0: unknown, counted only against the
 * instance's cap). Returns NULL, or the cap it is over ("instance" or "client"; counted). */
static const char *hist_acquire(sl_streams_t *s, struct histslot *slot, socklen_t len, const unsigned char *addr)
{
    struct histpeer *p = len ? hist_peer(s, len, addr) : NULL;
    const char *over = NULL;
    if ((long long)s->stats.history_inflight >= s->conf.history_concurrency)
        over = "instance";
    else if (len && p != NULL && (long long)p->n >= s->conf.history_per_client)
        over = "client";
    if (over == NULL && len && p == NULL) {
        if (s->npeers == s->cappeers) {
            size_t cap = s->cappeers ? s->cappeers * 2 : 16;
            struct histpeer *np = realloc(s->peers, cap * sizeof(*np));
            if (np == NULL)
                over = "instance"; /* no memory: as busy as it gets */
            else
                s->peers = np, s->cappeers = cap;
        }
        if (over == NULL) {
            p = &s->peers[s->npeers++];
            p->len = len;
            memcpy(p->addr, addr, len);
            p->n = 0;
        }
    }
    if (over != NULL) {
        s->stats.history_refused[*over == 'c' ? 1 : 0]++;
        return over;
    }
    if (p != NULL)
        p->n++;
    s->stats.history_inflight++;
    slot->held = 1;
    slot->len = len;
    memcpy(slot->addr, addr, len);
    return NULL;
}

static void hist_release(sl_streams_t *s, struct histslot *slot)
{
    if (!slot->held)
        return;
    slot->held = 0;
    s->stats.history_inflight--;
    struct histpeer *p = slot->len ? hist_peer(s, slot->len, slot->addr) : NULL;
    if (p != NULL && --p->n == 0)
        *p = s->peers[--s->npeers];
}

static const char HISTORY_BUSY_MSG[] = "this server reads as many histories as it takes now; retry shortly";

static void mark_dirty(struct conn *c)
{
    sl_streams_t *s = c->streams;
    if (!h2o_linklist_is_linked(&c->dirty))
        h2o_linklist_insert(&s->dirty, &c->dirty);
    if (!h2o_timeout_is_linked(&s->flush_entry))
        h2o_timeout_link(s->loop, &s->zero_timeout, &s->flush_entry);
}

static void conn_register(sl_streams_t *s, struct conn *c, const struct sl_transport *tp)
{
    c->streams = s;
    c->tp = tp;
    c->last_out_us = sl_time_mono_us();
    h2o_linklist_insert(&s->conns, &c->link);
    s->nconns++;
    s->stats.connected[tp->kind]++;
    s->stats.opened_total++;
}

static void conn_unregister(struct conn *c)
{
    if (h2o_linklist_is_linked(&c->dirty))
        h2o_linklist_unlink(&c->dirty);
    h2o_linklist_unlink(&c->link);
    c->streams->nconns--;
    c->streams->stats.connected[c->tp->kind]--;
}

static void conn_set_queued(struct conn *c, size_t n)
{
    c->streams->queued_total += n - c->queued_bytes; /* unsigned wrap-around cancels out */
    c->queued_bytes = n;
}

/* The one accounting of output, for every transport: each byte queued for a client, history
 * included, passes here before it is queued. A client that has not taken the previous write
 * (busy) and whose queue would pass out_max_bytes is cut off (it resumes with its last id). One
 * that has may take one answer of any size (a long history, a burst within one turn of the
 * loop): it is written whole at the next turn, and the limit applies to whatever comes after it.
 * Returns 0 when the bytes may be queued (they are counted), -1 when the client is cut off. */
static int conn_take(struct conn *c, size_t more, int busy)
{
    sl_streams_t *s = c->streams;
    if (c->aborting)
        return -1;
    if (busy && c->queued_bytes + more > (size_t)s->conf.out_max_bytes) {
        c->aborting = 1;
        s->stats.slow_disconnects++;
        SL_INFO("event=slow_client_disconnected transport=%s queued_bytes=%zu more=%zu limit=%lld", c->tp->name,
                c->queued_bytes, more, s->conf.out_max_bytes);
        mark_dirty(c);
        return -1;
    }
    conn_set_queued(c, c->queued_bytes + more);
    s->stats.bytes_queued += more;
    return 0;
}

/* ---- SSE and NDJSON over a streaming HTTP response --------------------------------------------- */

struct chunk {
    h2o_iovec_t buf;
    sl_event_t *ev; /* the reference that keeps buf alive, or NULL for static text */
    char *owned;    /* or a buffer of ours */
};

struct httpconn {
    struct conn super;
    h2o_generator_t gen;
    h2o_req_t *req;
    sl_sub_t sub;
    char (*channels)[SL_CHANNEL_MAX + 1];
    struct chunk *q, *fly; /* queued / handed to h2o until proceed */
    size_t nq, capq, nfly, capfly;
    int sending;
    sl_pgquery_t *query;
    struct histslot slot;
    int64_t since;         /* -1: no resume position */
    long long history;
};

static void chunk_release(struct chunk *ch)
{
    if (ch->ev != NULL)
        sl_event_release(ch->ev);
    free(ch->owned);
}

static int push_chunk(struct httpconn *hc, h2o_iovec_t buf, sl_event_t *ev, char *owned)
{
    /* Only a client that has not taken the previous write is slow: a burst that arrives within
     * one turn of the loop (a whole history among it) is written out at the next one. */
    if (conn_take(&hc->super, buf.len, hc->sending) != 0) {
        free(owned);
        return -1;
    }
    if (hc->nq == hc->capq) {
        size_t cap = hc->capq ? hc->capq * 2 : 4; /* most streams are idle: start small */
        struct chunk *q = realloc(hc->q, cap * sizeof(*q));
        if (q == NULL) {
            conn_set_queued(&hc->super, hc->super.queued_bytes - buf.len);
            free(owned);
            return -1;
        }
        hc->q = q;
        hc->capq = cap;
    }
    hc->q[hc->nq++] = (struct chunk){buf, ev != NULL ? sl_event_retain(ev) : NULL, owned};
    mark_dirty(&hc->super);
    return 0;
}

static void http_emit(sl_sub_t *sub, sl_event_t *ev)
{
    struct httpconn *hc = sub->owner;
    h2o_iovec_t b = sl_event_encode(ev, hc->super.tp->fmt);
    if (b.base != NULL && push_chunk(hc, b, ev, NULL) == 0)
        hc->super.streams->stats.events_sent++;
}

static void http_flush(struct conn *c)
{
    struct httpconn *hc = (struct httpconn *)c;
    if (hc->sending || hc->nq == 0 || hc->req == NULL)
        return;
    /* everything queued goes out in one h2o_send: one write for many events */
    struct chunk *t = hc->fly;
    size_t tcap = hc->capfly;
    hc->fly = hc->q;
    hc->capfly = hc->capq;
    hc->nfly = hc->nq;
    hc->q = t;
    hc->capq = tcap;
    hc->nq = 0;
    h2o_iovec_t vecs[64], *v = vecs;
    if (hc->nfly > 64 && (v = malloc(hc->nfly * sizeof(*v))) == NULL) {
        /* no memory for one big write: send the first 64 now, the rest after proceed */
        v = vecs;
        size_t rest = hc->nfly - 64;
        if (hc->capq < rest) {
            struct chunk *q = realloc(hc->q, rest * sizeof(*q));
            if (q == NULL) { /* keep everything for the next turn instead */
                struct chunk *t2 = hc->q;
                size_t c2 = hc->capq;
                hc->q = hc->fly;
                hc->capq = hc->capfly;
                hc->nq = hc->nfly;
                hc->fly = t2;
                hc->capfly = c2;
                hc->nfly = 0;
                mark_dirty(c);
                return;
            }
            hc->q = q;
            hc->capq = rest;
        }
        memcpy(hc->q, hc->fly + 64, rest * sizeof(*hc->q));
        hc->nq = rest;
        hc->nfly = 64;
    }
    for (size_t i = 0; i < hc->nfly; i++)
        v[i] = hc->fly[i].buf;
    hc->sending = 1;
    c->last_out_us = sl_time_mono_us();
    h2o_send(hc->req, v, hc->nfly, H2O_SEND_STATE_IN_PROGRESS);
    if (v != vecs)
        free(v);
}

static void http_free(struct httpconn *hc)
{
    hc->req = NULL;
    if (hc->query != NULL)
        sl_pgpool_cancel(hc->query); /* queued: it never runs; running: its answer is dropped */
    hist_release(hc->super.streams, &hc->slot);
    sl_hub_unsubscribe(&hc->sub);
    for (size_t i = 0; i < hc->nq; i++)
        chunk_release(&hc->q[i]);
    for (size_t i = 0; i < hc->nfly; i++)
        chunk_release(&hc->fly[i]);
    conn_set_queued(&hc->super, 0);
    conn_unregister(&hc->super);
    free(hc->q);
    free(hc->fly);
    free(hc->channels);
    free(hc);
}

static void http_abort(struct conn *c)
{
    struct httpconn *hc = (struct httpconn *)c;
    if (hc->req == NULL)
        return;
    if (!hc->sending) {
        /* Ending the response: h2o closes the connection and will not call proceed or stop again
         * (h2o_send forgets the generator), so everything is freed here. */
        h2o_send(hc->req, NULL, 0, H2O_SEND_STATE_ERROR);
        http_free(hc);
        return;
    }
    /* a write is stuck on a client that does not read: make it fail */
    h2o_socket_t *sock = hc->req->conn->callbacks->get_socket(hc->req->conn);
    if (sock != NULL)
        shutdown(h2o_socket_get_fd(sock), SHUT_RDWR);
}

static void http_heartbeat(struct conn *c)
{
    struct httpconn *hc = (struct httpconn *)c;
    if (hc->super.tp->kind == T_SSE)
        push_chunk(hc, h2o_iovec_init(H2O_STRLIT(": heartbeat\n\n")), NULL, NULL);
    else
        push_chunk(hc, h2o_iovec_init(H2O_STRLIT("\n")), NULL, NULL);
}

static void http_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    struct httpconn *hc = H2O_STRUCT_FROM_MEMBER(struct httpconn, gen, gen);
    (void)req;
    size_t sent = 0;
    for (size_t i = 0; i < hc->nfly; i++) {
        sent += hc->fly[i].buf.len;
        chunk_release(&hc->fly[i]);
    }
    conn_set_queued(&hc->super, hc->super.queued_bytes - sent);
    hc->nfly = 0;
    hc->sending = 0;
    if (hc->super.aborting)
        http_abort(&hc->super);
    else if (hc->nq > 0)
        mark_dirty(&hc->super);
}

/* The request is over before we ended it (the client went away, or a write failed). */
static void http_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    (void)req;
    http_free(H2O_STRUCT_FROM_MEMBER(struct httpconn, gen, gen));
}

static const struct sl_transport sse_transport = {"sse", T_SSE, SL_FMT_SSE, http_flush, http_abort, http_heartbeat};
static const struct sl_transport ndjson_transport = {"ndjson", T_NDJSON, SL_FMT_NDJSON, http_flush, http_abort,
                                                     http_heartbeat};

/* ---- history: shared by every transport ---------------------------------------------------------- */

/* History: the newest messages still standing. Resume: everything after a position, events too,
 * so that a client that missed an edit or a delete learns of it. */
static const char SQL_LAST_ALL[] = SL_DB_FEED_MESSAGES " WHERE deleted_at IS NULL ORDER BY seq DESC LIMIT $1";
static const char SQL_LAST_IN[] = SL_DB_FEED_MESSAGES " WHERE channel = ANY($1::text[]) AND deleted_at IS NULL"
                                  " ORDER BY seq DESC LIMIT $2";
static const char SQL_SINCE_ALL[] = SL_DB_FEED_MESSAGES " WHERE seq > $1 UNION ALL " SL_DB_FEED_EVENTS
                                    " WHERE seq > $1 ORDER BY seq LIMIT $2";
static const char SQL_SINCE_IN[] = SL_DB_FEED_MESSAGES " WHERE seq > $1 AND channel = ANY($2::text[]) UNION ALL "
                                   SL_DB_FEED_EVENTS " WHERE seq > $1 AND channel = ANY($2::text[]) ORDER BY seq LIMIT $3";

/* Queries the history of sub: the last `history` messages, or all after `since` (at most
 * replay_max + 1, so that "too many" shows). */
static sl_pgquery_t *query_history(sl_streams_t *s, const sl_sub_t *sub, int64_t since, long long history,
                                   sl_pg_cb cb, void *data)
{
    char n1[24], n2[24];
    sl_buf_t arr = SL_BUF_INIT; /* a text[] literal; channel names need no quoting ([a-z0-9_-]) */
    sl_pgquery_t *q;
    sl_buf_appends(&arr, "{");
    for (size_t i = 0; !sub->all && i < sub->nchannels; i++)
        sl_buf_appendf(&arr, "%s%s", i ? "," : "", sub->channels[i]);
    sl_buf_appends(&arr, "}");
    if (since >= 0) {
        snprintf(n1, sizeof(n1), "%lld", (long long)since);
        snprintf(n2, sizeof(n2), "%lld", s->conf.replay_max + 1);
        const char *p3[] = {n1, arr.data, n2};
        const char *p2[] = {n1, n2};
        q = sub->all ? sl_pgpool_query(s->pg, SQL_SINCE_ALL, 2, p2, cb, data)
                     : sl_pgpool_query(s->pg, SQL_SINCE_IN, 3, p3, cb, data);
    } else {
        snprintf(n1, sizeof(n1), "%lld", history);
        const char *p1[] = {n1};
        const char *p2[] = {arr.data, n1};
        q = sub->all ? sl_pgpool_query(s->pg, SQL_LAST_ALL, 1, p1, cb, data)
                     : sl_pgpool_query(s->pg, SQL_LAST_IN, 2, p2, cb, data);
    }
    sl_buf_free(&arr);
    return q;
}

/* Rows in seq order (history comes newest first from the database). */
static void for_each_row(const PGresult *res, int ascending, void (*fn)(void *, sl_event_t *), void *data)
{
    int n = PQntuples(res);
    for (int k = 0; k < n; k++) {
        sl_event_t *ev = sl_event_from_row(res, ascending ? k : n - 1 - k);
        if (ev == NULL)
            continue;
        fn(data, ev);
        sl_event_release(ev);
    }
}

/* ---- GET /v1/stream ------------------------------------------------------------------------------ */

static void http_history_row(void *data, sl_event_t *ev)
{
    struct httpconn *hc = data;
    if (ev->seq > hc->sub.cursor) {
        hc->sub.cursor = ev->seq;
        http_emit(&hc->sub, ev);
    }
}

static void on_http_history(void *data, const PGresult *res, const char *err);
static int http_client_gone(struct conn *c);

static void http_reset(struct httpconn *hc)
{
    char *owned = malloc(160);
    int n;
    if (owned == NULL)
        return;
    if (hc->super.tp->kind == T_SSE)
        n = snprintf(owned, 160, "event: reset\ndata: {\"reason\":\"too_old\",\"since\":%lld}\n\n", (long long)hc->since);
    else
        n = snprintf(owned, 160, "{\"type\":\"reset\",\"reason\":\"too_old\",\"since\":%lld}\n", (long long)hc->since);
    push_chunk(hc, h2o_iovec_init(owned, (size_t)n), NULL, owned);
    hc->super.streams->stats.resets++;
    hc->since = -1;
}

static void http_start_history(struct httpconn *hc);

/* Goes live after history covered up to covered; if the subscription's wait buffer overflowed
 * meanwhile, what it held is read again, as a resume (sl_sub_go_live). */
static void http_join(struct httpconn *hc, int64_t covered)
{
    if (sl_sub_go_live(&hc->sub, covered) == 0) {
        hist_release(hc->super.streams, &hc->slot);
        return;
    }
    hc->since = hc->sub.cursor;
    http_start_history(hc);
}

static void http_history_failed(struct httpconn *hc, const char *err)
{
    char q[300];
    SL_WARN("event=history_failed transport=%s error=%s", hc->super.tp->name, sl_log_quote(q, sizeof(q), err));
    hc->super.streams->stats.history_failures++;
    hist_release(hc->super.streams, &hc->slot);
    hc->super.aborting = 1; /* the client retries (retry: / reconnect) */
    mark_dirty(&hc->super);
}

/* History from the hub's memory if it reaches back far enough, else from the database. */
static void http_start_history(struct httpconn *hc)
{
    sl_streams_t *s = hc->super.streams;
    int too_many;
    hc->sub.cursor = hc->since > 0 ? hc->since : 0;
    if (sl_hub_replay(s->hub, &hc->sub, hc->since, hc->history, s->conf.replay_max, &too_many, http_history_row, hc)) {
        if (too_many) { /* too far behind to replay: say so, then the newest history */
            http_reset(hc);
            http_start_history(hc);
            return;
        }
        int64_t pos = sl_hub_position(s->hub);
        http_join(hc, hc->sub.cursor > pos ? hc->sub.cursor : pos);
        return;
    }
    if ((hc->query = query_history(s, &hc->sub, hc->since, hc->history, on_http_history, hc)) == NULL)
        http_history_failed(hc, "the query could not be queued");
}

static void on_http_history(void *data, const PGresult *res, const char *err)
{
    struct httpconn *hc = data;
    sl_streams_t *s = hc->super.streams;
    hc->query = NULL;
    if (err != NULL) {
        http_history_failed(hc, err);
        return;
    }
    if (http_client_gone(&hc->super)) { /* left while it waited: spare the work of its rows */
        hist_release(s, &hc->slot);
        hc->super.aborting = 1;
        mark_dirty(&hc->super);
        return;
    }
    if (hc->since >= 0 && PQntuples(res) > s->conf.replay_max) {
        http_reset(hc);
        http_start_history(hc);
        return;
    }
    hc->sub.cursor = hc->since > 0 ? hc->since : 0;
    for_each_row(res, hc->since >= 0, http_history_row, hc);
    http_join(hc, hc->sub.cursor);
}

int sl_stream_parse_channels(const char *list, size_t len, long long max, char (**out)[SL_CHANNEL_MAX + 1],
                             sl_error_t *err)
{
    size_t n = 0, cap = 0;
    char (*ch)[SL_CHANNEL_MAX + 1] = NULL;
    const char *p = list, *end = list + len;
    while (p <= end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *stop = comma != NULL ? comma : end;
        size_t l = (size_t)(stop - p);
        if (!sl_channel_valid(p, l)) {
            sl_error_set(err, 400, "invalid_channel", "channels", "every channel must match [a-z0-9_-]{1,64}");
            goto Fail;
        }
        int dup = 0;
        for (size_t i = 0; i < n; i++)
            dup |= strlen(ch[i]) == l && memcmp(ch[i], p, l) == 0;
        if (!dup) {
            if ((long long)n >= max) {
                sl_error_set(err, 400, "too_many_channels", "channels", "at most %lld channels per stream", max);
                goto Fail;
            }
            if (n == cap) {
                cap = cap ? cap * 2 : 4;
                void *nc = realloc(ch, cap * sizeof(*ch));
                if (nc == NULL) {
                    sl_error_set(err, 503, "out_of_memory", NULL, "out of memory");
                    goto Fail;
                }
                ch = nc;
            }
            memcpy(ch[n], p, l);
            ch[n][l] = '\0';
            n++;
        }
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    *out = ch;
    return (int)n;
Fail:
    free(ch);
    return -1;
}

int sl_stream_parse_count(const char *s, size_t len, long long max, long long *out)
{
    long long v = 0;
    if (len == 0 || len > 19)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int d = s[i] - '0';
        /* v * 10 + d <= max, without overflow (max - d may be negative when max < 9) */
        if (d < 0 || d > 9 || v > max / 10 || v * 10 > max - d)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int sl_stream_ws_parse(const char *text, size_t len, long long history_default, long long history_max,
                       sl_ws_command_t *cmd, sl_error_t *err)
{
    json_t *root = json_loadb(text, len, 0, NULL), *v;
    const char *verb;
    int rc = -1;
    static const char verbs[] = "'command' must be \"subscribe\", \"unsubscribe\" or \"ping\"";

    memset(cmd, 0, sizeof(*cmd));
    if (!json_is_object(root)) {
        sl_error_set(err, 400, "invalid_json", NULL,
                     "a command is a JSON object like {\"command\":\"subscribe\",\"channel\":\"general\"}");
        goto Exit;
    }
    if (!json_is_string(v = json_object_get(root, "command"))) {
        sl_error_set(err, 400, "missing_command", NULL, "%s", verbs);
        goto Exit;
    }
    verb = json_string_value(v);
    if (strcmp(verb, "ping") == 0) {
        cmd->verb = SL_WS_PING;
        rc = 0;
        goto Exit;
    }
    if (strcmp(verb, "subscribe") == 0)
        cmd->verb = SL_WS_SUBSCRIBE;
    else if (strcmp(verb, "unsubscribe") == 0)
        cmd->verb = SL_WS_UNSUBSCRIBE;
    else {
        sl_error_set(err, 400, "unknown_command", NULL, "%s", verbs);
        goto Exit;
    }
    v = json_object_get(root, "channel");
    if (!json_is_string(v) || !sl_channel_valid(json_string_value(v), json_string_length(v))) {
        sl_error_set(err, 400, "invalid_channel", NULL, "'channel' must match [a-z0-9_-]{1,64}");
        goto Exit;
    }
    memcpy(cmd->channel, json_string_value(v), json_string_length(v) + 1);
    cmd->history = history_default;
    cmd->since = -1;
    if (cmd->verb == SL_WS_SUBSCRIBE && (v = json_object_get(root, "history")) != NULL) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > history_max) {
            sl_error_set(err, 400, "invalid_history", NULL, "'history' must be an integer from 0 to %lld", history_max);
            goto Exit;
        }
        cmd->history = json_integer_value(v);
    }
    if (cmd->verb == SL_WS_SUBSCRIBE && (v = json_object_get(root, "since")) != NULL) {
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            sl_error_set(err, 400, "invalid_since", NULL, "'since' must be a non-negative integer (a seq)");
            goto Exit;
        }
        cmd->since = json_integer_value(v);
    }
    rc = 0;
Exit:
    json_decref(root);
    return rc;
}

static int refuse(h2o_req_t *req, int status, const char *code, const char *field, const char *msg)
{
    sl_http_fail(req, status, code, field, msg, status == 503 ? 1 : 0);
    return 0;
}

int sl_streams_handle_stream(sl_streams_t *s, h2o_req_t *req)
{
    h2o_iovec_t v;
    sl_error_t err;
    const struct sl_transport *tp = &sse_transport;
    long long history = s->conf.history_default, since = -1;
    char (*channels)[SL_CHANNEL_MAX + 1] = NULL;
    int nch = 0, r;
    size_t hlen;
    const char *hv;

    if ((r = sl_http_query(req, "format", &v)) != 0) {
        if (r > 0 && h2o_memis(v.base, v.len, H2O_STRLIT("ndjson")))
            tp = &ndjson_transport;
        else if (r < 0 || !h2o_memis(v.base, v.len, H2O_STRLIT("sse")))
            return refuse(req, 400, "invalid_format", "format", "'format' must be sse or ndjson");
    } else if ((hv = sl_http_header(req, "accept", &hlen)) != NULL && memmem(hv, hlen, "application/x-ndjson", 20)) {
        tp = &ndjson_transport;
    }
    if ((r = sl_http_query(req, "history", &v)) != 0 &&
        (r < 0 || sl_stream_parse_count(v.base, v.len, s->conf.history_max, &history) != 0)) {
        char msg[96];
        snprintf(msg, sizeof(msg), "'history' must be an integer from 0 to %lld", s->conf.history_max);
        return refuse(req, 400, "invalid_history", "history", msg);
    }
    if ((r = sl_http_query(req, "since", &v)) != 0) {
        if (r < 0 || sl_stream_parse_count(v.base, v.len, INT64_MAX, &since) != 0)
            return refuse(req, 400, "invalid_since", "since", "'since' must be a non-negative integer (a seq)");
    } else if ((hv = sl_http_header(req, "last-event-id", &hlen)) != NULL) {
        if (sl_stream_parse_count(hv, hlen, INT64_MAX, &since) != 0)
            return refuse(req, 400, "invalid_last_event_id", NULL, "Last-Event-ID must be a seq this stream sent");
    }
    if ((r = sl_http_query(req, "channels", &v)) != 0) {
        if (r < 0 || (nch = sl_stream_parse_channels(v.base, v.len, s->conf.max_channels, &channels, &err)) < 0) {
            if (r < 0)
                sl_error_set(&err, 400, "invalid_channel", "channels", "'channels' is badly encoded");
            sl_http_send_error(req, &err, 0);
            return 0;
        }
    }
    if ((long long)s->nconns >= s->conf.max_conns) {
        free(channels);
        s->stats.refused_full++;
        return refuse(req, 503, "too_many_connections", NULL, "this server has as many streams as it takes; retry");
    }
    if (!sl_hub_ready(s->hub) || !sl_pgpool_ready(s->pg)) {
        free(channels);
        return refuse(req, 503, "not_ready", NULL, "the stream service is not connected to the database yet");
    }

    struct httpconn *hc = calloc(1, sizeof(*hc));
    if (hc == NULL) {
        free(channels);
        return refuse(req, 503, "out_of_memory", NULL, "out of memory");
    }
    unsigned char addr[16];
    const char *over = since < 0 && history == 0 ? NULL : hist_acquire(s, &hc->slot, peer_key(req->conn, addr), addr);
    if (over != NULL) {
        SL_DEBUG("event=history_refused transport=%s cap=%s", tp->name, over);
        free(channels);
        free(hc);
        return refuse(req, 503, "history_busy", NULL, HISTORY_BUSY_MSG);
    }
    hc->req = req;
    hc->channels = channels;
    hc->since = since;
    hc->history = history;
    hc->sub.all = nch == 0;
    hc->sub.channels = channels;
    hc->sub.nchannels = (size_t)nch;
    hc->sub.emit = http_emit;
    hc->sub.owner = hc;
    hc->gen.proceed = http_proceed;
    hc->gen.stop = http_stop;
    if (sl_hub_subscribe(s->hub, &hc->sub) != 0) {
        hist_release(s, &hc->slot);
        free(channels);
        free(hc);
        return refuse(req, 503, "out_of_memory", NULL, "out of memory");
    }
    conn_register(s, &hc->super, tp);

    req->res.status = 200;
    req->res.reason = "OK";
    if (tp == &sse_transport)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/event-stream"));
    else
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                       H2O_STRLIT("application/x-ndjson"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-cache"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ACCESS_CONTROL_ALLOW_ORIGIN, NULL, H2O_STRLIT("*"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-accel-buffering"), 0, NULL, H2O_STRLIT("no"));
    h2o_start_response(req, &hc->gen);
    if (tp == &sse_transport) {
        char *retry = malloc(32);
        if (retry != NULL) {
            int n = snprintf(retry, 32, "retry: %lld\n\n", s->conf.retry_ms);
            push_chunk(hc, h2o_iovec_init(retry, (size_t)n), NULL, retry);
        }
    } else {
        /* h2o sends the head only with body bytes: start with a heartbeat (an empty line) */
        push_chunk(hc, h2o_iovec_init(H2O_STRLIT("\n")), NULL, NULL);
    }
    if (http_client_gone(&hc->super)) { /* sent its request and left (connect-and-drop): read nothing */
        hist_release(s, &hc->slot);
        hc->super.aborting = 1;
        mark_dirty(&hc->super);
        return 0;
    }
    http_start_history(hc);
    return 0;
}

/* ---- WebSocket ----------------------------------------------------------------------------------- */

struct wsconn;

struct wssub {
    sl_sub_t sub;
    char channel[1][SL_CHANNEL_MAX + 1];
    struct wsconn *ws;
    sl_pgquery_t *query;
    int64_t since;
    long long history;
    int catching_up; /* its wait buffer overflowed: what came after its history goes out as events */
    struct histslot slot;
};

struct wsconn {
    struct conn super;
    h2o_websocket_conn_t *ws;
    struct wssub **subs;
    size_t nsubs;
    sl_tokenbucket_t rate; /* of the client's messages (ws_rate) */
    h2o_socket_t *upgrade_sock; /* the HTTP/1 connection's socket, while ws->sock is NULL (101 unwritten) */
    int closed;
    int closing;           /* we queued a close frame: what the client still sends is ignored */
    socklen_t peer_len;    /* the client's address (peer_key), for the history caps */
    unsigned char peer[16];
};

/* The client has not taken what was written before (or not even the 101 yet). */
static int ws_busy(struct wsconn *w)
{
    return w->ws->sock == NULL || h2o_socket_is_writing(w->ws->sock);
}

static void ws_queue(struct wsconn *w, const char *text, size_t len)
{
    if (w->ws == NULL)
        return;
    /* wslay's queue shrinks as h2o writes, without telling us: start from what it holds now */
    conn_set_queued(&w->super, wslay_event_get_queued_msg_length(w->ws->ws_ctx));
    if (conn_take(&w->super, len, ws_busy(w)) != 0)
        return;
    struct wslay_event_msg msg = {WSLAY_TEXT_FRAME, (const uint8_t *)text, len};
    if (wslay_event_queue_msg(w->ws->ws_ctx, &msg) != 0) {
        conn_set_queued(&w->super, w->super.queued_bytes - len);
        return;
    }
    mark_dirty(&w->super);
}

static void ws_send_text(struct wsconn *w, const char *text, size_t len)
{
    ws_queue(w, text, len);
}

/* An error frame; channel (may be NULL) names the subscription it is about. */
static void ws_error_on(struct wsconn *w, const char *code, const char *channel, const char *message)
{
    json_t *o = json_pack("{s:s, s:s, s:s}", "type", "error", "code", code, "message", message);
    if (o != NULL && channel != NULL)
        json_object_set_new(o, "channel", json_string(channel));
    char *text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    if (text != NULL)
        ws_send_text(w, text, strlen(text));
    free(text);
    json_decref(o);
}

static void ws_error(struct wsconn *w, const char *code, const char *message)
{
    ws_error_on(w, code, NULL, message);
}

static void ws_emit(sl_sub_t *sub, sl_event_t *ev)
{
    struct wssub *ws = sub->owner;
    h2o_iovec_t b = sl_event_encode(ev, SL_FMT_WS);
    if (b.base != NULL) {
        ws_send_text(ws->ws, b.base, b.len);
        ws->ws->super.streams->stats.events_sent++;
    }
}

static void wssub_free(struct wssub *sub)
{
    if (sub->query != NULL)
        sl_pgpool_cancel(sub->query);
    hist_release(sub->ws->super.streams, &sub->slot);
    sl_hub_unsubscribe(&sub->sub);
    free(sub);
}

static void ws_close_now(struct wsconn *w)
{
    if (w->closed)
        return;
    w->closed = 1;
    for (size_t i = 0; i < w->nsubs; i++)
        wssub_free(w->subs[i]);
    free(w->subs);
    w->subs = NULL;
    w->nsubs = 0;
    conn_set_queued(&w->super, 0);
    conn_unregister(&w->super);
    if (w->ws != NULL)
        h2o_websocket_close(w->ws);
    free(w);
}

static void ws_flush(struct conn *c)
{
    struct wsconn *w = (struct wsconn *)c;
    if (w->ws == NULL || w->ws->sock == NULL)
        return;
    c->last_out_us = sl_time_mono_us();
    conn_set_queued(c, wslay_event_get_queued_msg_length(w->ws->ws_ctx));
    h2o_websocket_proceed(w->ws); /* may end in ws_on_message(NULL), which frees w */
}

static void ws_abort(struct conn *c)
{
    struct wsconn *w = (struct wsconn *)c;
    if (w->ws != NULL && w->ws->sock == NULL) {
        /* The 101 is not written yet (a client that does not read): h2o's upgrade callback is
         * still to come with w->ws, so neither may be freed now. Make the write fail instead: h2o
         * then calls back without a socket, and ws_on_message(NULL) frees w. Had the write just
         * succeeded, the socket reads its end and closes the same way. */
        if (w->upgrade_sock != NULL)
            shutdown(h2o_socket_get_fd(w->upgrade_sock), SHUT_RDWR);
        return;
    }
    ws_close_now(w);
}

static void ws_heartbeat(struct conn *c)
{
    struct wsconn *w = (struct wsconn *)c;
    if (w->ws == NULL)
        return;
    struct wslay_event_msg msg = {WSLAY_PING, NULL, 0};
    wslay_event_queue_msg(w->ws->ws_ctx, &msg);
    mark_dirty(c);
}

static const struct sl_transport ws_transport = {"websocket", T_WS, SL_FMT_WS, ws_flush, ws_abort, ws_heartbeat};

struct history_frame {
    sl_buf_t buf;
    struct wssub *sub;
    size_t count;
};

static void ws_history_row(void *data, sl_event_t *ev)
{
    struct history_frame *f = data;
    if (ev->seq <= f->sub->sub.cursor)
        return;
    f->sub->sub.cursor = ev->seq;
    sl_buf_appends(&f->buf, f->count++ ? "," : "");
    sl_buf_append(&f->buf, ev->json.base, ev->json.len);
}

/* What came after the history of a subscription whose wait buffer overflowed: plain events. */
static void ws_catchup_row(void *data, sl_event_t *ev)
{
    struct wssub *sub = data;
    if (ev->seq <= sub->sub.cursor)
        return;
    sub->sub.cursor = ev->seq;
    ws_emit(&sub->sub, ev);
}

static void on_ws_history(void *data, const PGresult *res, const char *err);
static void ws_start_history(struct wssub *sub);

static void ws_reset(struct wssub *sub)
{
    char head[160];
    int n = snprintf(head, sizeof(head), "{\"type\":\"reset\",\"channel\":\"%s\",\"reason\":\"too_old\",\"since\":%lld}",
                     sub->channel[0], (long long)sub->since);
    ws_send_text(sub->ws, head, (size_t)n);
    sub->ws->super.streams->stats.resets++;
    sub->since = -1;
    sub->catching_up = 0;
}

static void ws_history_begin(struct history_frame *f, struct wssub *sub)
{
    char head[160];
    f->sub = sub;
    f->count = 0;
    memset(&f->buf, 0, sizeof(f->buf));
    snprintf(head, sizeof(head), "{\"type\":\"history\",\"channel\":\"%s\",\"messages\":[", sub->channel[0]);
    sl_buf_appends(&f->buf, head);
    sub->sub.cursor = sub->since > 0 ? sub->since : 0;
}

static void ws_history_end(struct history_frame *f)
{
    sl_buf_appends(&f->buf, "]}");
    ws_queue(f->sub->ws, f->buf.data, f->buf.len);
    sl_buf_free(&f->buf);
}

/* Goes live after history covered up to covered; if the subscription's wait buffer overflowed
 * meanwhile, what it held is read again (sl_sub_go_live) and sent as events. */
static void ws_join(struct wssub *sub, int64_t covered)
{
    if (sl_sub_go_live(&sub->sub, covered) == 0) {
        sub->catching_up = 0;
        hist_release(sub->ws->super.streams, &sub->slot);
        return;
    }
    sub->since = sub->sub.cursor;
    sub->catching_up = 1;
    ws_start_history(sub);
}

/* The history could not be read: the client is told (history_unavailable, with the channel) and
 * the subscription is dropped, so that it can subscribe again. Frees sub. */
static void ws_history_failed(struct wssub *sub, const char *err)
{
    struct wsconn *w = sub->ws;
    char q[300], channel[SL_CHANNEL_MAX + 1];
    SL_WARN("event=history_failed transport=websocket channel=%s error=%s", sub->channel[0],
            sl_log_quote(q, sizeof(q), err));
    w->super.streams->stats.history_failures++;
    snprintf(channel, sizeof(channel), "%s", sub->channel[0]);
    for (size_t i = 0; i < w->nsubs; i++) {
        if (w->subs[i] == sub) {
            w->subs[i] = w->subs[--w->nsubs];
            break;
        }
    }
    wssub_free(sub);
    ws_error_on(w, "history_unavailable", channel,
                "the history could not be read; the subscription was dropped: subscribe again");
}

static void ws_start_history(struct wssub *sub)
{
    sl_streams_t *s = sub->ws->super.streams;
    struct history_frame f;
    int too_many;
    if (sub->catching_up) {
        sub->sub.cursor = sub->since;
        if (sl_hub_replay(s->hub, &sub->sub, sub->since, sub->history, s->conf.replay_max, &too_many, ws_catchup_row,
                          sub)) {
            if (too_many) {
                ws_reset(sub);
                ws_start_history(sub);
                return;
            }
            int64_t pos = sl_hub_position(s->hub);
            ws_join(sub, sub->sub.cursor > pos ? sub->sub.cursor : pos);
            return;
        }
    } else {
        ws_history_begin(&f, sub);
        if (sl_hub_replay(s->hub, &sub->sub, sub->since, sub->history, s->conf.replay_max, &too_many, ws_history_row,
                          &f)) {
            if (too_many) {
                sl_buf_free(&f.buf);
                ws_reset(sub);
                ws_start_history(sub);
                return;
            }
            ws_history_end(&f);
            int64_t pos = sl_hub_position(s->hub);
            ws_join(sub, sub->sub.cursor > pos ? sub->sub.cursor : pos);
            return;
        }
        sl_buf_free(&f.buf);
    }
    if ((sub->query = query_history(s, &sub->sub, sub->since, sub->history, on_ws_history, sub)) == NULL)
        ws_history_failed(sub, "the query could not be queued");
}

static void on_ws_history(void *data, const PGresult *res, const char *err)
{
    struct wssub *sub = data;
    sl_streams_t *s = sub->ws->super.streams;
    sub->query = NULL;
    if (err != NULL) {
        ws_history_failed(sub, err);
        return;
    }
    if (sub->since >= 0 && PQntuples(res) > s->conf.replay_max) {
        ws_reset(sub);
        ws_start_history(sub);
        return;
    }
    if (sub->catching_up) {
        sub->sub.cursor = sub->since;
        for_each_row(res, 1, ws_catchup_row, sub);
    } else {
        struct history_frame f;
        ws_history_begin(&f, sub);
        for_each_row(res, sub->since >= 0, ws_history_row, &f);
        ws_history_end(&f);
    }
    ws_join(sub, sub->sub.cursor);
}

static struct wssub *find_sub(struct wsconn *w, const char *channel, size_t *index)
{
    for (size_t i = 0; i < w->nsubs; i++) {
        if (strcmp(w->subs[i]->channel[0], channel) == 0) {
            if (index != NULL)
                *index = i;
            return w->subs[i];
        }
    }
    return NULL;
}

static void ws_command(struct wsconn *w, const char *text, size_t len)
{
    sl_streams_t *s = w->super.streams;
    sl_ws_command_t cmd;
    sl_error_t err;
    char reply[160];

    if (sl_stream_ws_parse(text, len, s->conf.history_default, s->conf.history_max, &cmd, &err) != 0) {
        ws_error(w, err.code, err.message);
        return;
    }
    const char *channel = cmd.channel;
    if (cmd.verb == SL_WS_PING) {
        ws_send_text(w, H2O_STRLIT("{\"type\":\"pong\"}"));
        return;
    }
    if (cmd.verb == SL_WS_UNSUBSCRIBE) {
        size_t i;
        struct wssub *sub = find_sub(w, channel, &i);
        if (sub == NULL) {
            ws_error(w, "not_subscribed", "this socket is not subscribed to that channel");
            return;
        }
        w->subs[i] = w->subs[--w->nsubs];
        wssub_free(sub);
        int n = snprintf(reply, sizeof(reply), "{\"type\":\"unsubscribed\",\"channel\":\"%s\"}", channel);
        ws_send_text(w, reply, (size_t)n);
        return;
    }
    if (find_sub(w, channel, NULL) != NULL) {
        ws_error(w, "already_subscribed", "this socket is already subscribed to that channel");
        return;
    }
    if ((long long)w->nsubs >= s->conf.max_channels) {
        snprintf(reply, sizeof(reply), "at most %lld channels per socket", s->conf.max_channels);
        ws_error(w, "too_many_channels", reply);
        return;
    }
    struct wssub *sub = calloc(1, sizeof(*sub));
    struct wssub **subs = realloc(w->subs, (w->nsubs + 1) * sizeof(*subs));
    if (subs != NULL)
        w->subs = subs;
    if (sub == NULL || subs == NULL) {
        free(sub);
        ws_error(w, "out_of_memory", "out of memory");
        return;
    }
    const char *over =
        cmd.since < 0 && cmd.history == 0 ? NULL : hist_acquire(s, &sub->slot, w->peer_len, w->peer);
    if (over != NULL) {
        SL_DEBUG("event=history_refused transport=websocket cap=%s", over);
        free(sub);
        ws_error_on(w, "history_busy", channel, HISTORY_BUSY_MSG);
        return;
    }
    snprintf(sub->channel[0], sizeof(sub->channel[0]), "%s", channel);
    sub->ws = w;
    sub->since = cmd.since;
    sub->history = cmd.history;
    sub->sub.channels = sub->channel;
    sub->sub.nchannels = 1;
    sub->sub.emit = ws_emit;
    sub->sub.owner = sub;
    if (sl_hub_subscribe(s->hub, &sub->sub) != 0) {
        hist_release(s, &sub->slot);
        free(sub);
        ws_error(w, "out_of_memory", "out of memory");
        return;
    }
    w->subs[w->nsubs++] = sub;
    int n = snprintf(reply, sizeof(reply), "{\"type\":\"subscribed\",\"channel\":\"%s\"}", channel);
    ws_send_text(w, reply, (size_t)n);
    ws_start_history(sub);
}

/* Queues a close frame (the client answers it, then the socket closes) and ignores the rest. */
static void ws_refuse(struct wsconn *w, uint16_t code, const char *reason)
{
    w->closing = 1;
    wslay_event_queue_close(w->ws->ws_ctx, code, (const uint8_t *)reason, strlen(reason));
    mark_dirty(&w->super);
}

/* A client's own messages (commands, binary frames, pings, which we answer) are limited to
 * ws_rate per second; pongs answer our heartbeats and are not counted. */
static int ws_over_rate(struct wsconn *w, uint8_t opcode)
{
    sl_streams_t *s = w->super.streams;
    if (s->conf.ws_rate <= 0 || opcode == WSLAY_PONG || opcode == WSLAY_CONNECTION_CLOSE)
        return 0;
    if (sl_tokenbucket_take(&w->rate, s->conf.ws_rate, s->conf.ws_burst, sl_time_mono_us()) == 0)
        return 0;
    s->stats.ws_rate_limited++;
    SL_INFO("event=ws_rate_limited rate=%g burst=%g", s->conf.ws_rate, s->conf.ws_burst);
    return 1;
}

static void ws_on_message(h2o_websocket_conn_t *conn, const struct wslay_event_on_msg_recv_arg *arg)
{
    struct wsconn *w = conn->data;
    if (arg == NULL) { /* closed, by either side */
        ws_close_now(w);
        return;
    }
    if (w->closing)
        return;
    if (ws_over_rate(w, arg->opcode)) {
        ws_refuse(w, WSLAY_CODE_POLICY_VIOLATION, "too many messages: slow down");
    } else if (arg->opcode == WSLAY_TEXT_FRAME) {
        ws_command(w, (const char *)arg->msg, arg->msg_length);
    } else if (arg->opcode == WSLAY_BINARY_FRAME) {
        ws_refuse(w, WSLAY_CODE_UNSUPPORTED_DATA, "binary frames are not accepted");
    }
}

int sl_streams_handle_ws(sl_streams_t *s, h2o_req_t *req)
{
    const char *key;
    if (h2o_is_websocket_handshake(req, &key) != 0 || key == NULL)
        return refuse(req, 400, "not_a_websocket_handshake", NULL,
                      "GET /v1/ws needs Upgrade: websocket and a Sec-WebSocket-Key");
    if ((long long)s->nconns >= s->conf.max_conns) {
        s->stats.refused_full++;
        return refuse(req, 503, "too_many_connections", NULL, "this server has as many streams as it takes; retry");
    }
    if (!sl_hub_ready(s->hub) || !sl_pgpool_ready(s->pg))
        return refuse(req, 503, "not_ready", NULL, "the stream service is not connected to the database yet");
    struct wsconn *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return refuse(req, 503, "out_of_memory", NULL, "out of memory");
    conn_register(s, &w->super, &ws_transport);
    w->peer_len = peer_key(req->conn, w->peer);
    sl_tokenbucket_init(&w->rate, s->conf.ws_burst, sl_time_mono_us());
    w->upgrade_sock = req->conn->callbacks->get_socket(req->conn);
    w->ws = h2o_upgrade_to_websocket(req, key, w, ws_on_message);
    /* frames past the limit make wslay close with 1009 (message too big) */
    wslay_event_config_set_max_recv_msg_length(w->ws->ws_ctx, (uint64_t)s->conf.ws_max_frame);
    return 0;
}

/* ---- timers and lifecycle ------------------------------------------------------------------------ */

static void on_flush(h2o_timeout_entry_t *entry)
{
    sl_streams_t *s = H2O_STRUCT_FROM_MEMBER(sl_streams_t, flush_entry, entry);
    while (!h2o_linklist_is_empty(&s->dirty)) {
        struct conn *c = H2O_STRUCT_FROM_MEMBER(struct conn, dirty, s->dirty.next);
        h2o_linklist_unlink(&c->dirty);
        if (c->aborting)
            c->tp->abort(c);
        else
            c->tp->flush(c);
    }
}

/* h2o does not read an HTTP/1 connection while it streams the response, so a client that left
 * is otherwise noticed only when a write fails: peek at each socket for its end instead. */
static int http_client_gone(struct conn *c)
{
    struct httpconn *hc = (struct httpconn *)c;
    char b;
    if (c->tp->kind == T_WS || hc->req == NULL)
        return 0;
    h2o_socket_t *sock = hc->req->conn->callbacks->get_socket(hc->req->conn);
    if (sock == NULL)
        return 0;
    ssize_t r = recv(h2o_socket_get_fd(sock), &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static void on_heartbeat(h2o_timeout_entry_t *entry)
{
    sl_streams_t *s = H2O_STRUCT_FROM_MEMBER(sl_streams_t, hb_entry, entry);
    int64_t idle_since = sl_time_mono_us() - s->conf.heartbeat_ms * 1000;
    for (h2o_linklist_t *n = s->conns.next; n != &s->conns; n = n->next) {
        struct conn *c = H2O_STRUCT_FROM_MEMBER(struct conn, link, n);
        if (c->aborting)
            continue;
        if (http_client_gone(c)) {
            c->aborting = 1;
            mark_dirty(c);
        } else if (c->last_out_us < idle_since) {
            c->tp->heartbeat(c);
        }
    }
    h2o_timeout_link(s->loop, &s->hb_timeout, &s->hb_entry);
}

sl_streams_t *sl_streams_create(h2o_loop_t *loop, sl_hub_t *hub, sl_pgpool_t *pg, const sl_stream_conf_t *conf)
{
    sl_streams_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->loop = loop;
    s->hub = hub;
    s->pg = pg;
    s->conf = *conf;
    h2o_linklist_init_anchor(&s->conns);
    h2o_linklist_init_anchor(&s->dirty);
    h2o_timeout_init(loop, &s->zero_timeout, 0);
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
    /* wslay's queues shrink as h2o writes without telling us */
    for (h2o_linklist_t *n = s->conns.next; n != &s->conns; n = n->next) {
        struct conn *c = H2O_STRUCT_FROM_MEMBER(struct conn, link, n);
        struct wsconn *w = c->tp->kind == T_WS ? (struct wsconn *)c : NULL;
        if (w != NULL && w->ws != NULL)
            conn_set_queued(c, wslay_event_get_queued_msg_length(w->ws->ws_ctx));
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
        struct conn *c = H2O_STRUCT_FROM_MEMBER(struct conn, link, n);
        struct wsconn *w = c->tp->kind == T_WS ? (struct wsconn *)c : NULL;
        if (w != NULL && w->ws != NULL && w->ws->sock != NULL && !c->aborting) {
            /* A WebSocket is told why (1001 going away) and ends when its client answers (or
             * when the service's drain time is up): the drain must not cut its reading. */
            if (!w->closing)
                ws_refuse(w, 1001, "server shutting down");
            sl_http_ends_itself(w->ws->sock);
            continue;
        }
        c->aborting = 1;
        mark_dirty(c);
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
    h2o_timeout_dispose(s->loop, &s->hb_timeout);
    free(s->peers);
    free(s);
}
