/*
 * sl_stream_http: GET /v1/stream, the streaming HTTP response that SSE (sl_stream_sse.c) and NDJSON
 * (sl_stream_ndjson.c) share: a queue of chunks written in one h2o_send per turn of the loop,
 * the history, and the request's parameters. What differs between the two is in their
 * struct sl_http_format (sl_stream_int.h).
 */
#include "sl_stream_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_auth.h"
#include "sl_http.h"
#include "sl_log.h"
#include "sl_time.h"

struct chunk {
    h2o_iovec_t buf;
    sl_event_t *ev; /* the reference that keeps buf alive, or NULL for static text */
    char *owned;    /* or a buffer of ours */
};

struct httpconn {
    struct stream_conn super;
    h2o_generator_t gen;
    h2o_req_t *req;
    sl_sub_t sub;
    struct presence_seat pres; /* its channels' occupancy, and presence events when it asked */
    char (*channels)[SL_CHANNEL_MAX + 1];
    struct chunk *q, *fly; /* queued / handed to h2o until proceed */
    size_t nq, capq, nfly, capfly;
    int sending;
    sl_pgquery_t *query;
    struct histslot slot;
    h2o_timeout_entry_t defer; /* the database read waits SL_STREAM_HISTORY_DEFER_MS (http_start_history) */
    int deferred;
    int64_t since; /* -1: no resume position */
    long long history;
    struct reader rd;      /* the reader's token, if any: what of the private channels it reads */
    struct expiry expiry;  /* the token's end: the stream ends then */
    int ending;            /* the token ended: final goes out after what is queued, then the response ends */
    h2o_iovec_t final;     /* in the request's pool */
};

static void chunk_release(struct chunk *ch)
{
    if (ch->ev != NULL)
        sl_event_release(ch->ev);
    free(ch->owned);
}

static int push_chunk(struct httpconn *hc, h2o_iovec_t buf, sl_event_t *ev, char *owned)
{
    if (hc->ending) { /* nothing after the notice that ends the stream */
        free(owned);
        return -1;
    }
    /* Only a client that has not taken the previous write is slow: a burst that arrives within
     * one turn of the loop (a whole history among it) is written out at the next one. */
    if (sl_stream_conn_take(&hc->super, buf.len, hc->sending) != 0) {
        free(owned);
        return -1;
    }
    if (hc->nq == hc->capq) {
        size_t cap = hc->capq ? hc->capq * 2 : 4; /* most streams are idle: start small */
        struct chunk *q = realloc(hc->q, cap * sizeof(*q));
        if (q == NULL) {
            sl_stream_conn_set_queued(&hc->super, hc->super.queued_bytes - buf.len);
            free(owned);
            return -1;
        }
        hc->q = q;
        hc->capq = cap;
    }
    hc->q[hc->nq++] = (struct chunk){buf, ev != NULL ? sl_event_retain(ev) : NULL, owned};
    sl_stream_mark_dirty(&hc->super);
    return 0;
}

static void push_text(struct httpconn *hc, const char *text)
{
    push_chunk(hc, h2o_iovec_init(text, strlen(text)), NULL, NULL);
}

static void http_emit(sl_sub_t *sub, sl_event_t *ev)
{
    struct httpconn *hc = sub->owner;
    h2o_iovec_t b = sl_event_encode(ev, hc->super.tp->fmt);
    if (b.base != NULL && push_chunk(hc, b, ev, NULL) == 0)
        hc->super.streams->stats.events_sent++;
}

int sl_stream_http_queue(struct stream_conn *c, char *text, size_t len)
{
    return push_chunk((struct httpconn *)c, h2o_iovec_init(text, len), NULL, text);
}

static void http_free(struct httpconn *hc);

/* Everything before the notice is out: the notice goes with the end of the response. h2o forgets
 * the generator on a final h2o_send (neither proceed nor stop comes), so everything is freed
 * here; the notice lives in the request's pool. */
static void http_finish(struct httpconn *hc)
{
    h2o_iovec_t last = hc->final;
    h2o_send(hc->req, &last, 1, H2O_SEND_STATE_FINAL);
    http_free(hc);
}

void sl_stream_http_flush(struct stream_conn *c)
{
    struct httpconn *hc = (struct httpconn *)c;
    if (hc->sending || hc->req == NULL)
        return;
    if (hc->nq == 0) {
        if (hc->ending)
            http_finish(hc);
        return;
    }
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
                sl_stream_mark_dirty(c);
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
    if (h2o_timeout_is_linked(&hc->defer))
        h2o_timeout_unlink(&hc->defer);
    sl_stream_expiry_disarm(hc->super.streams, &hc->expiry);
    sl_stream_reader_free(&hc->rd);
    if (hc->query != NULL)
        sl_pgpool_cancel(hc->query); /* queued: it never runs; running: its answer is dropped */
    sl_stream_hist_release(hc->super.streams, &hc->slot);
    sl_hub_unsubscribe(&hc->sub);
    sl_stream_presence_leave(&hc->pres);
    for (size_t i = 0; i < hc->nq; i++)
        chunk_release(&hc->q[i]);
    for (size_t i = 0; i < hc->nfly; i++)
        chunk_release(&hc->fly[i]);
    sl_stream_conn_set_queued(&hc->super, 0);
    sl_stream_conn_unregister(&hc->super);
    free(hc->q);
    free(hc->fly);
    free(hc->channels);
    free(hc);
}

void sl_stream_http_abort(struct stream_conn *c)
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

void sl_stream_http_heartbeat(struct stream_conn *c)
{
    push_text((struct httpconn *)c, c->tp->http->heartbeat);
}

int sl_stream_http_gone(struct stream_conn *c)
{
    struct httpconn *hc = (struct httpconn *)c;
    return hc->req != NULL && sl_stream_req_gone(hc->req);
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
    sl_stream_conn_set_queued(&hc->super, hc->super.queued_bytes - sent);
    hc->nfly = 0;
    hc->sending = 0;
    if (hc->super.aborting)
        sl_stream_http_abort(&hc->super);
    else if (hc->nq > 0 || hc->ending)
        sl_stream_mark_dirty(&hc->super);
}

/* The request is over before we ended it (the client went away, or a write failed). */
static void http_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    (void)req;
    http_free(H2O_STRUCT_FROM_MEMBER(struct httpconn, gen, gen));
}

/* ---- history ------------------------------------------------------------------------------------- */

static void http_history_row(void *data, sl_event_t *ev)
{
    struct httpconn *hc = data;
    if (hc->sub.filter != NULL && !hc->sub.filter(&hc->sub, ev->channel))
        return; /* the database left it out already; a row is never trusted to */
    if (ev->seq > hc->sub.cursor) {
        hc->sub.cursor = ev->seq;
        http_emit(&hc->sub, ev);
    }
}

static void on_http_history(void *data, const PGresult *res, const char *err);

static void http_reset(struct httpconn *hc)
{
    char *owned = malloc(160);
    if (owned == NULL)
        return;
    int n = hc->super.tp->http->reset(owned, 160, (long long)hc->since);
    push_chunk(hc, h2o_iovec_init(owned, (size_t)n), NULL, owned);
    hc->super.streams->stats.resets++;
    hc->since = -1;
}

static void http_start_history(struct httpconn *hc);
static void on_http_defer(h2o_timeout_entry_t *entry);

/* Goes live after history covered up to covered; if the subscription's wait buffer overflowed
 * meanwhile, what it held is read again, as a resume. */
static void http_join(struct httpconn *hc, int64_t covered)
{
    if (sl_stream_join(hc->super.streams, &hc->sub, &hc->slot, covered) == 0) {
        sl_stream_presence_live(&hc->pres);
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
    sl_stream_hist_release(hc->super.streams, &hc->slot);
    hc->super.aborting = 1; /* the client retries (retry: / reconnect) */
    sl_stream_mark_dirty(&hc->super);
}

/* History from the hub's memory if it reaches back far enough, else from the database, after
 * SL_STREAM_HISTORY_DEFER_MS the first time (a departed client then reads nothing: on_http_defer). */
static void http_start_history(struct httpconn *hc)
{
    sl_streams_t *s = hc->super.streams;
    int too_many;
    hc->sub.cursor = hc->since > 0 ? hc->since : 0;
    if (sl_stream_replay(s, &hc->sub, hc->since, hc->history, &too_many, http_history_row, hc)) {
        if (too_many) { /* too far behind to replay: say so, then the newest history */
            http_reset(hc);
            http_start_history(hc);
            return;
        }
        http_join(hc, sl_stream_replay_covered(s, &hc->sub));
        return;
    }
    if (!hc->deferred) {
        hc->deferred = 1;
        hc->defer.cb = on_http_defer;
        h2o_timeout_link(s->loop, &s->defer_timeout, &hc->defer);
        return;
    }
    if ((hc->query = sl_stream_query_history_as(s, &hc->sub, &hc->rd, hc->since, hc->history, on_http_history, hc)) ==
        NULL)
        http_history_failed(hc, "the query could not be queued");
}

static void on_http_defer(h2o_timeout_entry_t *entry)
{
    struct httpconn *hc = H2O_STRUCT_FROM_MEMBER(struct httpconn, defer, entry);
    if (sl_stream_http_gone(&hc->super)) {
        sl_stream_hist_release(hc->super.streams, &hc->slot);
        hc->super.aborting = 1;
        sl_stream_mark_dirty(&hc->super);
        return;
    }
    http_start_history(hc);
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
    if (sl_stream_http_gone(&hc->super)) { /* left while it waited: spare the work of its rows */
        sl_stream_hist_release(s, &hc->slot);
        hc->super.aborting = 1;
        sl_stream_mark_dirty(&hc->super);
        return;
    }
    if (sl_stream_too_many(s, hc->since, res)) {
        http_reset(hc);
        http_start_history(hc);
        return;
    }
    hc->sub.cursor = hc->since > 0 ? hc->since : 0;
    sl_stream_for_each_row(res, hc->since >= 0, http_history_row, hc);
    http_join(hc, hc->sub.cursor);
}

/* ---- tokens ---------------------------------------------------------------------------------------- */

/* A stream of every channel while some are private: what its reader may read, nothing else. */
static int http_filter(const sl_sub_t *sub, const char *channel)
{
    const struct httpconn *hc = sub->owner;
    return sl_stream_readable(hc->super.streams, &hc->rd, channel);
}

/* The reader's token ended: no more events nor history; the notice (event: token_expired, or its
 * NDJSON line) follows what is queued, and the response ends. The client goes on with a new token
 * and its last id as since. */
static void http_token_expired(struct expiry *e)
{
    struct httpconn *hc = H2O_STRUCT_FROM_MEMBER(struct httpconn, expiry, e);
    sl_streams_t *s = hc->super.streams;
    char q[300];
    if (hc->req == NULL || hc->super.aborting || hc->ending)
        return;
    s->stats.token_ended[0]++;
    SL_INFO("event=token_expired transport=%s sub=%s exp=%lld last_seq=%lld", hc->super.tp->name,
            sl_log_quote(q, sizeof(q), hc->rd.claims.sub), (long long)hc->rd.claims.exp, (long long)hc->sub.cursor);
    if (h2o_timeout_is_linked(&hc->defer)) /* a history read about to start: it never will */
        h2o_timeout_unlink(&hc->defer);
    if (hc->query != NULL) {
        sl_pgpool_cancel(hc->query);
        hc->query = NULL;
    }
    sl_stream_hist_release(s, &hc->slot);
    sl_hub_unsubscribe(&hc->sub);
    sl_stream_presence_leave(&hc->pres); /* no longer a reader: out of the occupancy and presence now */
    char *b = h2o_mem_alloc_pool(&hc->req->pool, 160);
    hc->final = h2o_iovec_init(b, (size_t)hc->super.tp->http->expired(b, 160, (long long)hc->rd.claims.exp));
    hc->ending = 1;
    sl_stream_mark_dirty(&hc->super);
}

/* The reader's token (sl_stream_request_token). Returns 0 with *rd (no token: has_token 0), or
 * answers 401 itself and returns -1. */
static int http_reader(sl_streams_t *s, h2o_req_t *req, const struct sl_transport *tp, struct reader *rd)
{
    size_t len = 0;
    const char *t = sl_stream_request_token(req, &len);
    sl_jwt_result_t jr = sl_stream_reader_token(s, tp->name, t, len, rd);
    if (jr != SL_JWT_OK) {
        sl_auth_refuse_jwt(req, jr);
        return -1;
    }
    return 0;
}

/* ---- the request ----------------------------------------------------------------------------------- */

int sl_stream_parse_channels(const char *list, size_t len, long long max, char (**out)[SL_CHANNEL_MAX + 1],
                             sl_error_t *err)
{
    size_t n = 0, cap = 0;
    char (*ch)[SL_CHANNEL_MAX + 1] = NULL;
    const char *p = list, *end = list + len;
    while (p <= end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *stop = comma != NULL ? comma : end;
        const char *name;
        size_t l = sl_channel_canon(p, (size_t)(stop - p), &name);
        if (l == 0) {
            sl_error_set(err, 400, "invalid_channel", "channels", "every channel must be " SL_CHANNEL_RULE);
            goto Fail;
        }
        int dup = 0;
        for (size_t i = 0; i < n; i++)
            dup |= strlen(ch[i]) == l && memcmp(ch[i], name, l) == 0;
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
            memcpy(ch[n], name, l);
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

int sl_streams_handle_stream(sl_streams_t *s, h2o_req_t *req)
{
    h2o_iovec_t v;
    sl_error_t err;
    const struct sl_transport *tp = &sl_stream_sse;
    long long history = s->conf.history_default, since = -1;
    char (*channels)[SL_CHANNEL_MAX + 1] = NULL;
    int nch = 0, r, presence = 0;
    size_t hlen;
    const char *hv;

    if ((r = sl_http_query(req, "format", &v)) != 0) {
        if (r > 0 && h2o_memis(v.base, v.len, H2O_STRLIT("ndjson")))
            tp = &sl_stream_ndjson;
        else if (r < 0 || !h2o_memis(v.base, v.len, H2O_STRLIT("sse")))
            return sl_stream_refuse(req, 400, "invalid_format", "format", "'format' must be sse or ndjson");
    } else if ((hv = sl_http_header(req, "accept", &hlen)) != NULL && memmem(hv, hlen, "application/x-ndjson", 20)) {
        tp = &sl_stream_ndjson;
    }
    if ((r = sl_http_query(req, "history", &v)) != 0 &&
        (r < 0 || sl_stream_parse_count(v.base, v.len, s->conf.history_max, &history) != 0)) {
        char msg[96];
        snprintf(msg, sizeof(msg), "'history' must be an integer from 0 to %lld", s->conf.history_max);
        return sl_stream_refuse(req, 400, "invalid_history", "history", msg);
    }
    if ((r = sl_http_query(req, "presence", &v)) != 0 &&
        (r < 0 || (presence = sl_stream_parse_presence(v.base, v.len)) < 0))
        return sl_stream_refuse(req, 400, "invalid_presence", "presence", "'presence' must be 1 or 0 (true or false)");
    if ((r = sl_http_query(req, "since", &v)) != 0) {
        if (r < 0 || sl_stream_parse_count(v.base, v.len, INT64_MAX, &since) != 0)
            return sl_stream_refuse(req, 400, "invalid_since", "since", "'since' must be a non-negative integer (a seq)");
    } else if ((hv = sl_http_header(req, "last-event-id", &hlen)) != NULL) {
        if (sl_stream_parse_count(hv, hlen, INT64_MAX, &since) != 0)
            return sl_stream_refuse(req, 400, "invalid_last_event_id", NULL, "Last-Event-ID must be a seq this stream sent");
    }
    if ((r = sl_http_query(req, "channels", &v)) != 0) {
        if (r < 0 || (nch = sl_stream_parse_channels(v.base, v.len, s->conf.max_channels, &channels, &err)) < 0) {
            if (r < 0)
                sl_error_set(&err, 400, "invalid_channel", "channels", "'channels' is badly encoded");
            sl_http_send_error(req, &err, 0);
            return 0;
        }
    }
    struct reader rd;
    if (http_reader(s, req, tp, &rd) != 0) {
        free(channels);
        return 0;
    }
    for (int i = 0; i < nch; i++) {
        sl_chan_read_t a = sl_stream_reader_may_read(s, tp->name, &rd, channels[i]);
        if (a != SL_CHAN_READ_OK) {
            sl_auth_refuse_read(req, a, "channels", channels[i]);
            goto Refused;
        }
    }
    if (sl_stream_admit(s, req) != 0)
        goto Refused;

    struct httpconn *hc = calloc(1, sizeof(*hc));
    if (hc == NULL) {
        sl_stream_refuse(req, 503, "out_of_memory", NULL, "out of memory");
        goto Refused;
    }
    unsigned char addr[16];
    socklen_t alen = sl_stream_peer_key(req->conn, addr);
    const char *over = sl_stream_hist_acquire(s, &hc->slot, since, history, alen, addr);
    if (over != NULL) {
        SL_DEBUG("event=history_refused transport=%s cap=%s", tp->name, over);
        free(hc);
        sl_stream_refuse(req, 503, "history_busy", NULL, SL_STREAM_HISTORY_BUSY_MSG);
        goto Refused;
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
    if (nch == 0 && sl_stream_filters_all(s))
        hc->sub.filter = http_filter;
    hc->gen.proceed = http_proceed;
    hc->gen.stop = http_stop;
    hc->rd = rd;
    if (sl_hub_subscribe(s->hub, &hc->sub) != 0 ||
        sl_stream_expiry_arm(s, &hc->expiry, &hc->rd, http_token_expired) != 0) {
        sl_hub_unsubscribe(&hc->sub);
        sl_stream_hist_release(s, &hc->slot);
        free(hc);
        sl_stream_refuse(req, 503, "out_of_memory", NULL, "out of memory");
        goto Refused;
    }
    sl_stream_conn_register(s, &hc->super, tp);
    if (sl_stream_presence_enter(&hc->pres, &hc->super, channels, (size_t)nch, presence, &hc->rd) != 0) {
        http_free(hc);
        return sl_stream_refuse(req, 503, "out_of_memory", NULL, "out of memory");
    }

    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, tp->http->content_type,
                   strlen(tp->http->content_type));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-cache"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-accel-buffering"), 0, NULL, H2O_STRLIT("no"));
    h2o_start_response(req, &hc->gen);
    if (tp->http->first != NULL) {
        char *first = malloc(32);
        if (first != NULL) {
            int n = tp->http->first(&s->conf, first, 32);
            push_chunk(hc, h2o_iovec_init(first, (size_t)n), NULL, first);
        }
    } else {
        push_text(hc, tp->http->heartbeat);
    }
    if (sl_stream_http_gone(&hc->super)) { /* sent its request and left (connect-and-drop): read nothing */
        sl_stream_hist_release(s, &hc->slot);
        hc->super.aborting = 1;
        sl_stream_mark_dirty(&hc->super);
        return 0;
    }
    http_start_history(hc);
    return 0;
Refused:
    free(channels);
    sl_stream_reader_free(&rd);
    return 0;
}
