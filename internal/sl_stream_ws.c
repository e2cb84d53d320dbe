/*
 * sl_stream_ws: WebSocket subscriptions on GET /v1/ws. One socket holds up to max_channels
 * subscriptions, one channel each, made and ended by the client's commands (sl_stream_ws_parse);
 * each reads its history (one "history" message) and then goes live, as a stream does. wslay
 * queues the frames; the core's accounting (sl_stream_conn_take) sees wslay's queue as it is
 * before each message is added. h2o reads the socket all the time, so a client that leaves is
 * noticed at once (ws_on_message with NULL), and its subscriptions' history queries, queued or
 * running, are cancelled then.
 */
#include "sl_stream_int.h"

#include <h2o/websocket.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_buf.h"
#include "sl_http.h"
#include "sl_log.h"
#include "sl_ratelimit.h"
#include "sl_time.h"

struct wsconn;

struct wssub {
    sl_sub_t sub;
    struct presence_seat pres; /* its channel's occupancy, and presence events when it asked */
    char channel[1][SL_CHANNEL_MAX + 1];
    struct wsconn *ws;
    sl_pgquery_t *query;
    int64_t since;
    long long history;
    int catching_up; /* its wait buffer overflowed: what came after its history goes out as events */
    struct histslot slot;
    struct expiry expiry; /* the end of the token it was made with: the subscription ends then */
};

struct wsconn {
    struct stream_conn super;
    h2o_websocket_conn_t *ws;
    struct wssub **subs;
    size_t nsubs;
    sl_tokenbucket_t rate; /* of the client's messages (ws_rate) */
    h2o_socket_t *upgrade_sock; /* the HTTP/1 connection's socket, while ws->sock is NULL (101 unwritten) */
    int closed;
    int closing;           /* we queued a close frame: what the client still sends is ignored */
    socklen_t peer_len;    /* the client's address (sl_stream_peer_key), for the history caps */
    unsigned char peer[16];
    struct reader auth;    /* the token of the last auth command: later subscribes without their own use it */
};

/* The client has not taken what was written before (or not even the 101 yet). */
static int ws_busy(struct wsconn *w)
{
    return w->ws->sock == NULL || h2o_socket_is_writing(w->ws->sock);
}

/* Returns 0 when queued (wslay copies it), -1 when not. */
static int ws_queue(struct wsconn *w, const char *text, size_t len)
{
    if (w->ws == NULL)
        return -1;
    /* wslay's queue shrinks as h2o writes, without telling us: start from what it holds now */
    sl_stream_conn_set_queued(&w->super, wslay_event_get_queued_msg_length(w->ws->ws_ctx));
    if (sl_stream_conn_take(&w->super, len, ws_busy(w)) != 0)
        return -1;
    struct wslay_event_msg msg = {WSLAY_TEXT_FRAME, (const uint8_t *)text, len};
    if (wslay_event_queue_msg(w->ws->ws_ctx, &msg) != 0) {
        sl_stream_conn_set_queued(&w->super, w->super.queued_bytes - len);
        return -1;
    }
    sl_stream_mark_dirty(&w->super);
    return 0;
}

static void ws_send_text(struct wsconn *w, const char *text, size_t len)
{
    ws_queue(w, text, len);
}

static int ws_queue_owned(struct stream_conn *c, char *text, size_t len)
{
    int r = ws_queue((struct wsconn *)c, text, len);
    free(text);
    return r;
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
    sl_stream_expiry_disarm(sub->ws->super.streams, &sub->expiry);
    if (sub->query != NULL)
        sl_pgpool_cancel(sub->query);
    sl_stream_hist_release(sub->ws->super.streams, &sub->slot);
    sl_hub_unsubscribe(&sub->sub);
    sl_stream_presence_leave(&sub->pres);
    free(sub);
}

/* Ends every subscription: no more events, history reads cancelled, cap slots freed. */
static void ws_drop_subs(struct wsconn *w)
{
    for (size_t i = 0; i < w->nsubs; i++)
        wssub_free(w->subs[i]);
    free(w->subs);
    w->subs = NULL;
    w->nsubs = 0;
}

static void ws_close_now(struct wsconn *w)
{
    if (w->closed)
        return;
    w->closed = 1;
    ws_drop_subs(w);
    sl_stream_reader_free(&w->auth);
    sl_stream_conn_set_queued(&w->super, 0);
    sl_stream_conn_unregister(&w->super);
    if (w->ws != NULL)
        h2o_websocket_close(w->ws);
    free(w);
}

static void ws_flush(struct stream_conn *c)
{
    struct wsconn *w = (struct wsconn *)c;
    if (w->ws == NULL || w->ws->sock == NULL)
        return;
    c->last_out_us = sl_time_mono_us();
    sl_stream_conn_set_queued(c, wslay_event_get_queued_msg_length(w->ws->ws_ctx));
    h2o_websocket_proceed(w->ws); /* may end in ws_on_message(NULL), which frees w */
}

static void ws_abort(struct stream_conn *c)
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

static void ws_heartbeat(struct stream_conn *c)
{
    struct wsconn *w = (struct wsconn *)c;
    if (w->ws == NULL)
        return;
    struct wslay_event_msg msg = {WSLAY_PING, NULL, 0};
    wslay_event_queue_msg(w->ws->ws_ctx, &msg);
    sl_stream_mark_dirty(c);
}

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
    if (sl_stream_join(sub->ws->super.streams, &sub->sub, &sub->slot, covered) == 0) {
        sub->catching_up = 0;
        sl_stream_presence_live(&sub->pres);
        return;
    }
    sub->since = sub->sub.cursor;
    sub->catching_up = 1;
    ws_start_history(sub);
}

/* Removes sub from the socket's list and frees it. */
static void ws_remove_sub(struct wsconn *w, struct wssub *sub)
{
    for (size_t i = 0; i < w->nsubs; i++) {
        if (w->subs[i] == sub) {
            w->subs[i] = w->subs[--w->nsubs];
            break;
        }
    }
    wssub_free(sub);
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
    ws_remove_sub(w, sub);
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
        if (sl_stream_replay(s, &sub->sub, sub->since, sub->history, &too_many, ws_catchup_row, sub)) {
            if (too_many) {
                ws_reset(sub);
                ws_start_history(sub);
                return;
            }
            ws_join(sub, sl_stream_replay_covered(s, &sub->sub));
            return;
        }
    } else {
        ws_history_begin(&f, sub);
        if (sl_stream_replay(s, &sub->sub, sub->since, sub->history, &too_many, ws_history_row, &f)) {
            if (too_many) {
                sl_buf_free(&f.buf);
                ws_reset(sub);
                ws_start_history(sub);
                return;
            }
            ws_history_end(&f);
            ws_join(sub, sl_stream_replay_covered(s, &sub->sub));
            return;
        }
        sl_buf_free(&f.buf);
    }
    if ((sub->query = sl_stream_query_history(s, &sub->sub, sub->since, sub->history, on_ws_history, sub)) == NULL)
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
    if (sl_stream_too_many(s, sub->since, res)) {
        ws_reset(sub);
        ws_start_history(sub);
        return;
    }
    if (sub->catching_up) {
        sub->sub.cursor = sub->since;
        sl_stream_for_each_row(res, 1, ws_catchup_row, sub);
    } else {
        struct history_frame f;
        ws_history_begin(&f, sub);
        sl_stream_for_each_row(res, sub->since >= 0, ws_history_row, &f);
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

/* The token a subscription was made with ended: the client is told (token_expired, with the
 * channel) and the subscription dropped; the socket stays open for a subscribe with a new token
 * and since. */
static void ws_token_expired(struct expiry *e)
{
    struct wssub *sub = H2O_STRUCT_FROM_MEMBER(struct wssub, expiry, e);
    struct wsconn *w = sub->ws;
    char channel[SL_CHANNEL_MAX + 1];
    w->super.streams->stats.token_ended[1]++;
    SL_INFO("event=token_expired transport=websocket channel=%s last_seq=%lld", sub->channel[0],
            (long long)sub->sub.cursor);
    snprintf(channel, sizeof(channel), "%s", sub->channel[0]);
    ws_remove_sub(w, sub);
    ws_error_on(w, "token_expired", channel,
                "the token this subscription was made with has expired: subscribe again with a new token and since");
}

/* {"command":"auth","token":…}: the token later subscribes without their own use (those made
 * before keep theirs). A refused token leaves the socket without one. */
static void ws_auth(struct wsconn *w, const sl_ws_command_t *cmd)
{
    sl_streams_t *s = w->super.streams;
    char q[300];
    sl_stream_reader_free(&w->auth);
    if (!sl_jwt_enabled(s->jwt)) {
        ws_error(w, "tokens_disabled",
                 "this server verifies no tokens (no JWT key is configured): tokens are ignored, private channels "
                 "closed");
        return;
    }
    sl_jwt_result_t r = sl_stream_reader_token(s, "websocket", cmd->token, cmd->token_len, &w->auth);
    if (r != SL_JWT_OK) {
        ws_error(w, sl_jwt_code(r), sl_jwt_message(r));
        return;
    }
    json_t *o = json_pack("{s:s, s:s, s:I}", "type", "authenticated", "sub", w->auth.claims.sub, "exp",
                          (json_int_t)w->auth.claims.exp);
    char *text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    if (text != NULL)
        ws_send_text(w, text, strlen(text));
    free(text);
    json_decref(o);
    SL_INFO("event=ws_authenticated sub=%s exp=%lld", sl_log_quote(q, sizeof(q), w->auth.claims.sub),
            (long long)w->auth.claims.exp);
}

/* Who subscribes: the command's own token (verified into *own), else the socket's (auth), else
 * nobody. Returns the reader, or NULL after an error frame naming the channel. */
static const struct reader *ws_reader(struct wsconn *w, const sl_ws_command_t *cmd, struct reader *own)
{
    sl_streams_t *s = w->super.streams;
    memset(own, 0, sizeof(*own));
    if (cmd->token != NULL) {
        sl_jwt_result_t r = sl_stream_reader_token(s, "websocket", cmd->token, cmd->token_len, own);
        if (r != SL_JWT_OK) {
            ws_error_on(w, sl_jwt_code(r), cmd->channel, sl_jwt_message(r));
            return NULL;
        }
        return own;
    }
    if (w->auth.has_token && sl_time_now_us() / 1000000 >= w->auth.until) { /* ended since the auth */
        sl_stream_reader_free(&w->auth);
        s->stats.token_refused++;
        ws_error_on(w, "token_expired", cmd->channel, "the token of this socket's auth has expired: send a new one");
        return NULL;
    }
    return w->auth.has_token ? &w->auth : own;
}

static void ws_subscribe(struct wsconn *w, const sl_ws_command_t *cmd)
{
    sl_streams_t *s = w->super.streams;
    const char *channel = cmd->channel;
    char reply[160];
    struct reader own;
    const struct reader *rd;
    if (find_sub(w, channel, NULL) != NULL) {
        ws_error(w, "already_subscribed", "this socket is already subscribed to that channel");
        return;
    }
    if ((long long)w->nsubs >= s->conf.max_channels) {
        snprintf(reply, sizeof(reply), "at most %lld channels per socket", s->conf.max_channels);
        ws_error(w, "too_many_channels", reply);
        return;
    }
    if ((rd = ws_reader(w, cmd, &own)) == NULL)
        return;
    sl_chan_read_t a = sl_stream_reader_may_read(s, "websocket", rd, channel);
    if (a != SL_CHAN_READ_OK) {
        snprintf(reply, sizeof(reply), "%s: %s", channel, sl_chan_read_message(a));
        ws_error_on(w, sl_chan_read_code(a), channel, reply);
        goto Exit;
    }
    struct wssub *sub = calloc(1, sizeof(*sub));
    struct wssub **subs = realloc(w->subs, (w->nsubs + 1) * sizeof(*subs));
    if (subs != NULL)
        w->subs = subs;
    if (sub == NULL || subs == NULL) {
        free(sub);
        ws_error(w, "out_of_memory", "out of memory");
        goto Exit;
    }
    const char *over = sl_stream_hist_acquire(s, &sub->slot, cmd->since, cmd->history, w->peer_len, w->peer);
    if (over != NULL) {
        SL_DEBUG("event=history_refused transport=websocket cap=%s", over);
        free(sub);
        ws_error_on(w, "history_busy", channel, SL_STREAM_HISTORY_BUSY_MSG);
        goto Exit;
    }
    snprintf(sub->channel[0], sizeof(sub->channel[0]), "%s", channel);
    sub->ws = w;
    sub->since = cmd->since;
    sub->history = cmd->history;
    sub->sub.channels = sub->channel;
    sub->sub.nchannels = 1;
    sub->sub.emit = ws_emit;
    sub->sub.owner = sub;
    if (sl_hub_subscribe(s->hub, &sub->sub) != 0 ||
        sl_stream_expiry_arm(s, &sub->expiry, rd, ws_token_expired) != 0) {
        sl_hub_unsubscribe(&sub->sub);
        sl_stream_hist_release(s, &sub->slot);
        free(sub);
        ws_error(w, "out_of_memory", "out of memory");
        goto Exit;
    }
    w->subs[w->nsubs++] = sub;
    if (sl_stream_presence_enter(&sub->pres, &w->super, sub->channel, 1, cmd->presence, rd) != 0) {
        w->subs[--w->nsubs] = NULL;
        wssub_free(sub);
        ws_error_on(w, "out_of_memory", channel, "out of memory");
        goto Exit;
    }
    int n = snprintf(reply, sizeof(reply), "{\"type\":\"subscribed\",\"channel\":\"%s\"}", channel);
    ws_send_text(w, reply, (size_t)n);
    ws_start_history(sub);
Exit:
    sl_stream_reader_free(&own);
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
    if (cmd.verb == SL_WS_PING) {
        ws_send_text(w, H2O_STRLIT("{\"type\":\"pong\"}"));
    } else if (cmd.verb == SL_WS_AUTH) {
        ws_auth(w, &cmd);
    } else if (cmd.verb == SL_WS_SUBSCRIBE) {
        ws_subscribe(w, &cmd);
    } else {
        size_t i;
        struct wssub *sub = find_sub(w, cmd.channel, &i);
        if (sub == NULL) {
            ws_error(w, "not_subscribed", "this socket is not subscribed to that channel");
        } else {
            w->subs[i] = w->subs[--w->nsubs];
            wssub_free(sub);
            int n = snprintf(reply, sizeof(reply), "{\"type\":\"unsubscribed\",\"channel\":\"%s\"}", cmd.channel);
            ws_send_text(w, reply, (size_t)n);
        }
    }
    free(cmd.token);
}

/* Queues a close frame (the client answers it, then the socket closes) and ignores the rest. */
static void ws_refuse(struct wsconn *w, uint16_t code, const char *reason)
{
    w->closing = 1;
    ws_drop_subs(w); /* nothing more is sent, so nothing more is read for it */
    wslay_event_queue_close(w->ws->ws_ctx, code, (const uint8_t *)reason, strlen(reason));
    sl_stream_mark_dirty(&w->super);
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
        return sl_stream_refuse(req, 400, "not_a_websocket_handshake", NULL,
                      "GET /v1/ws needs Upgrade: websocket and a Sec-WebSocket-Key");
    if (!sl_http_origin_allowed(req)) /* browsers send no preflight for a WebSocket: this is its CORS */
        return sl_stream_refuse(req, 403, "origin_not_allowed", NULL, "this Origin may not open a WebSocket here");
    if (sl_stream_admit(s, req) != 0)
        return 0;
    struct wsconn *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return sl_stream_refuse(req, 503, "out_of_memory", NULL, "out of memory");
    sl_stream_conn_register(s, &w->super, &sl_stream_ws);
    w->peer_len = sl_stream_peer_key(req->conn, w->peer);
    sl_tokenbucket_init(&w->rate, s->conf.ws_burst, sl_time_mono_us());
    w->upgrade_sock = req->conn->callbacks->get_socket(req->conn);
    w->ws = h2o_upgrade_to_websocket(req, key, w, ws_on_message);
    /* frames past the limit make wslay close with 1009 (message too big) */
    wslay_event_config_set_max_recv_msg_length(w->ws->ws_ctx, (uint64_t)s->conf.ws_max_frame);
    return 0;
}

/* wslay's queue shrinks as h2o writes, without telling us. */
static void ws_sync(struct stream_conn *c)
{
    struct wsconn *w = (struct wsconn *)c;
    if (w->ws != NULL)
        sl_stream_conn_set_queued(c, wslay_event_get_queued_msg_length(w->ws->ws_ctx));
}

/* A WebSocket is told why (1001 going away) and ends when its client answers (or when the
 * service's drain time is up): the drain must not cut its reading. One whose 101 is not written
 * yet is aborted. */
static int ws_shutdown(struct stream_conn *c)
{
    struct wsconn *w = (struct wsconn *)c;
    if (w->ws == NULL || w->ws->sock == NULL)
        return 0;
    if (!w->closing)
        ws_refuse(w, 1001, "server shutting down");
    sl_http_ends_itself(w->ws->sock);
    return 1;
}

const struct sl_transport sl_stream_ws = {
    .name = "websocket",
    .kind = T_WS,
    .fmt = SL_FMT_WS,
    .flush = ws_flush,
    .abort = ws_abort,
    .heartbeat = ws_heartbeat,
    .sync = ws_sync,
    .shutdown = ws_shutdown,
    .queue = ws_queue_owned,
};

/* ---- the commands ---------------------------------------------------------------------------------- */

int sl_stream_ws_parse(const char *text, size_t len, long long history_default, long long history_max,
                       sl_ws_command_t *cmd, sl_error_t *err)
{
    json_t *root = json_loadb(text, len, 0, NULL), *v;
    const char *verb;
    int rc = -1;
    static const char verbs[] = "'command' must be \"subscribe\", \"unsubscribe\", \"auth\" or \"ping\"";

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
    if (strcmp(verb, "auth") == 0 || strcmp(verb, "subscribe") == 0) {
        /* a token, verified by the caller; a subscribe's may be null (none) */
        v = json_object_get(root, "token");
        if ((v != NULL && !json_is_null(v)) || strcmp(verb, "auth") == 0) {
            if (!json_is_string(v) || json_string_length(v) == 0) {
                sl_error_set(err, 400, "invalid_token", NULL, "'token' must be a non-empty string (a JWT)");
                goto Exit;
            }
            if ((cmd->token = strndup(json_string_value(v), json_string_length(v))) == NULL) {
                sl_error_set(err, 503, "out_of_memory", NULL, "out of memory");
                goto Exit;
            }
            cmd->token_len = json_string_length(v);
        }
    }
    if (strcmp(verb, "auth") == 0) {
        cmd->verb = SL_WS_AUTH;
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
    const char *name;
    size_t l = json_is_string(v) ? sl_channel_canon(json_string_value(v), json_string_length(v), &name) : 0;
    if (l == 0) {
        sl_error_set(err, 400, "invalid_channel", NULL, "'channel' must be " SL_CHANNEL_RULE);
        goto Exit;
    }
    memcpy(cmd->channel, name, l);
    cmd->channel[l] = '\0';
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
    if (cmd->verb == SL_WS_SUBSCRIBE && (v = json_object_get(root, "presence")) != NULL) {
        if (!json_is_boolean(v)) {
            sl_error_set(err, 400, "invalid_presence", NULL, "'presence' must be true or false");
            goto Exit;
        }
        cmd->presence = json_is_true(v);
    }
    rc = 0;
Exit:
    json_decref(root);
    if (rc != 0) {
        free(cmd->token);
        cmd->token = NULL;
        cmd->token_len = 0;
    }
    return rc;
}
