/*
 * sl_publisher: confirms-based publishing inside an h2o loop; see sl_publisher.h.
 *
 * Outstanding publishes live in a ring indexed by delivery tag. The span between the oldest
 * unconfirmed tag and the next tag is kept below the ring's size, so tags never collide even when
 * the broker confirms out of order. The AMQP socket is watched through a dup()ed descriptor with
 * H2O_SOCKET_FLAG_DONT_READ: h2o only tells us it is readable; rabbitmq-c does the reading.
 */
#include "sl_publisher.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_time.h"

struct slot {
    sl_publish_cb cb;
    void *data;
    int64_t t0_us;
    int in_use;
};

struct sl_publisher {
    h2o_loop_t *loop;
    sl_publisher_conf_t conf;
    amqp_connection_state_t conn;
    h2o_socket_t *sock;
    int blocked;
    int64_t blocked_since_us;
    uint64_t next_tag, oldest_tag;
    struct slot *slots;
    size_t mask, outstanding;
    h2o_timeout_t tick_timeout;
    h2o_timeout_entry_t tick;
    sl_publisher_stats_t stats;
    int in_drain;
    unsigned connect_failures; /* in a row, to thin out repeated log lines */
};

static void on_readable(h2o_socket_t *sock, const char *err);

static void settle_one(sl_publisher_t *p, uint64_t tag, sl_publish_result_t result, int64_t now)
{
    struct slot *s = &p->slots[tag & p->mask];
    if (!s->in_use)
        return;
    sl_publish_cb cb = s->cb;
    void *data = s->data;
    sl_histogram_observe(&p->stats.confirm_latency, (double)(now - s->t0_us) / 1e6);
    memset(s, 0, sizeof(*s));
    p->outstanding--;
    if (cb != NULL)
        cb(data, result);
}

static void advance_oldest(sl_publisher_t *p)
{
    while (p->oldest_tag < p->next_tag && !p->slots[p->oldest_tag & p->mask].in_use)
        p->oldest_tag++;
}

static void settle(sl_publisher_t *p, uint64_t tag, int multiple, sl_publish_result_t result)
{
    int64_t now = sl_time_mono_us();
    if (tag >= p->next_tag)
        return;
    if (multiple) {
        for (uint64_t t = p->oldest_tag; t <= tag; t++)
            settle_one(p, t, result, now);
    } else if (tag >= p->oldest_tag) {
        settle_one(p, tag, result, now);
    }
    advance_oldest(p);
}

static void set_blocked(sl_publisher_t *p, int blocked)
{
    if (blocked == p->blocked)
        return;
    p->blocked = blocked;
    if (blocked) {
        p->blocked_since_us = sl_time_mono_us();
        SL_WARN("event=amqp_blocked");
    } else {
        p->stats.blocked_us_total += sl_time_mono_us() - p->blocked_since_us;
        SL_INFO("event=amqp_unblocked");
    }
}

/* Drops the connection; every outstanding publish is answered UNAVAILABLE. */
static void lose_connection(sl_publisher_t *p, const char *why)
{
    char q[256];
    if (p->conn == NULL)
        return;
    SL_WARN("event=amqp_connection_lost reason=%s outstanding=%zu", sl_log_quote(q, sizeof(q), why), p->outstanding);
    if (p->sock != NULL) {
        h2o_socket_close(p->sock);
        p->sock = NULL;
    }
    amqp_destroy_connection(p->conn);
    p->conn = NULL;
    set_blocked(p, 0);
    p->stats.failed += p->outstanding;
    uint64_t end = p->next_tag;
    for (uint64_t t = p->oldest_tag; t < end; t++)
        settle_one(p, t, SL_PUBLISH_UNAVAILABLE, sl_time_mono_us());
    p->oldest_tag = p->next_tag = 1;
}

/* Reads every frame rabbitmq-c can give without waiting. */
static void drain(sl_publisher_t *p)
{
    if (p->in_drain) /* a callback that publishes must not re-enter the frame loop */
        return;
    p->in_drain = 1;
    while (p->conn != NULL) {
        amqp_frame_t frame;
        struct timeval zero = {0, 0};
        int st = amqp_simple_wait_frame_noblock(p->conn, &frame, &zero);
        if (st == AMQP_STATUS_TIMEOUT)
            break;
        if (st != AMQP_STATUS_OK) {
            lose_connection(p, amqp_error_string2(st));
            break;
        }
        if (frame.frame_type != AMQP_FRAME_METHOD)
            continue;
        switch (frame.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            amqp_basic_ack_t *m = frame.payload.method.decoded;
            p->stats.acked++;
            settle(p, m->delivery_tag, m->multiple, SL_PUBLISH_OK);
        } break;
        case AMQP_BASIC_NACK_METHOD: {
            amqp_basic_nack_t *m = frame.payload.method.decoded;
            p->stats.nacked++;
            settle(p, m->delivery_tag, m->multiple, SL_PUBLISH_NACK);
        } break;
        case AMQP_CONNECTION_BLOCKED_METHOD:
            set_blocked(p, 1);
            break;
        case AMQP_CONNECTION_UNBLOCKED_METHOD:
            set_blocked(p, 0);
            break;
        case AMQP_CHANNEL_CLOSE_METHOD: {
            amqp_channel_close_t *m = frame.payload.method.decoded;
            char why[256];
            snprintf(why, sizeof(why), "channel closed by broker: %u %.*s", m->reply_code, (int)m->reply_text.len,
                     (const char *)m->reply_text.bytes);
            lose_connection(p, why);
        } break;
        case AMQP_CONNECTION_CLOSE_METHOD: {
            amqp_connection_close_t *m = frame.payload.method.decoded;
            char why[256];
            snprintf(why, sizeof(why), "connection closed by broker: %u %.*s", m->reply_code, (int)m->reply_text.len,
                     (const char *)m->reply_text.bytes);
            amqp_connection_close_ok_t ok;
            amqp_send_method(p->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
            lose_connection(p, why);
        } break;
        default:
            break;
        }
        if (p->conn != NULL)
            amqp_maybe_release_buffers(p->conn);
    }
    p->in_drain = 0;
}

static void on_readable(h2o_socket_t *sock, const char *err)
{
    sl_publisher_t *p = sock->data;
    if (err != NULL) {
        lose_connection(p, err);
        return;
    }
    drain(p);
}

static void try_connect(sl_publisher_t *p)
{
    char err[512], q[600];
    amqp_connection_state_t conn =
        sl_amqp_open(p->conf.url, p->conf.conn_name, p->conf.heartbeat_s, p->conf.timeout_ms, err, sizeof(err));
    if (conn == NULL)
        goto Fail;
    if (sl_amqp_declare(conn, &p->conf.topology, err, sizeof(err)) != 0)
        goto Fail;
    amqp_confirm_select(conn, SL_AMQP_CHANNEL);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        char t[256];
        snprintf(err, sizeof(err), "confirm.select: %s", sl_amqp_reply_text(r, t, sizeof(t)));
        goto Fail;
    }
    int fd = dup(amqp_get_sockfd(conn));
    if (fd < 0) {
        snprintf(err, sizeof(err), "dup: %s", strerror(errno));
        goto Fail;
    }
    p->conn = conn;
    p->sock = h2o_evloop_socket_create(p->loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    p->sock->data = p;
    h2o_socket_read_start(p->sock, on_readable);
    p->next_tag = p->oldest_tag = 1;
    p->stats.reconnects++;
    p->connect_failures = 0;
    SL_INFO("event=amqp_connected queue=%s max_length=%lld", p->conf.topology.persist_queue, p->conf.topology.max_length);
    drain(p); /* frames that arrived during the handshake sit in rabbitmq-c's buffer */
    return;
Fail:
    if (p->connect_failures++ % 20 == 0) /* the first failure of a streak, then one in 20 */
        SL_WARN("event=amqp_connect_failed failures=%u error=%s", p->connect_failures, sl_log_quote(q, sizeof(q), err));
    if (conn != NULL)
        amqp_destroy_connection(conn);
}

static void on_tick(h2o_timeout_entry_t *entry)
{
    sl_publisher_t *p = H2O_STRUCT_FROM_MEMBER(sl_publisher_t, tick, entry);
    if (p->conn == NULL)
        try_connect(p);
    else
        drain(p); /* also sends heartbeats and notices a silent broker */
    h2o_timeout_link(p->loop, &p->tick_timeout, &p->tick);
}

sl_publisher_t *sl_publisher_create(h2o_loop_t *loop, const sl_publisher_conf_t *conf)
{
    sl_publisher_t *p = calloc(1, sizeof(*p));
    size_t cap = 1;
    if (p == NULL)
        return NULL;
    while (cap < conf->max_unconfirmed + 1)
        cap <<= 1;
    if ((p->slots = calloc(cap, sizeof(*p->slots))) == NULL) {
        free(p);
        return NULL;
    }
    p->mask = cap - 1;
    p->loop = loop;
    p->conf = *conf;
    p->next_tag = p->oldest_tag = 1;
    sl_histogram_init(&p->stats.confirm_latency, sl_latency_bounds, sl_latency_nbounds);
    h2o_timeout_init(loop, &p->tick_timeout, (uint64_t)conf->reconnect_ms);
    p->tick.cb = on_tick;
    try_connect(p);
    h2o_timeout_link(loop, &p->tick_timeout, &p->tick);
    return p;
}

sl_publish_result_t sl_publisher_publish(sl_publisher_t *p, const char *exchange, const char *routing_key,
                                         const char *message_id, const void *body, size_t len, sl_publish_cb cb,
                                         void *data, uint64_t *tag)
{
    amqp_basic_properties_t props;
    if (p->conn == NULL) {
        p->stats.refused_down++;
        return SL_PUBLISH_UNAVAILABLE;
    }
    if (p->blocked) {
        p->stats.refused_blocked++;
        return SL_PUBLISH_BLOCKED;
    }
    if (p->outstanding >= p->conf.max_unconfirmed || p->next_tag - p->oldest_tag >= p->mask) {
        p->stats.refused_busy++;
        return SL_PUBLISH_BUSY;
    }
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    if (message_id != NULL) {
        props._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
        props.message_id = amqp_cstring_bytes(message_id);
    }
    amqp_bytes_t b = {len, (void *)body};
    int st = amqp_basic_publish(p->conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(exchange), amqp_cstring_bytes(routing_key),
                                0, 0, &props, b);
    if (st != AMQP_STATUS_OK) {
        lose_connection(p, amqp_error_string2(st));
        p->stats.refused_down++;
        return SL_PUBLISH_UNAVAILABLE;
    }
    uint64_t t = p->next_tag++;
    struct slot *s = &p->slots[t & p->mask];
    s->cb = cb;
    s->data = data;
    s->t0_us = sl_time_mono_us();
    s->in_use = 1;
    p->outstanding++;
    p->stats.published++;
    *tag = t;
    return SL_PUBLISH_OK;
}

void sl_publisher_detach(sl_publisher_t *p, uint64_t tag)
{
    if (tag >= p->oldest_tag && tag < p->next_tag && p->slots[tag & p->mask].in_use) {
        p->slots[tag & p->mask].cb = NULL;
        p->slots[tag & p->mask].data = NULL;
    }
}

int sl_publisher_ready(const sl_publisher_t *p)
{
    return p->conn != NULL && !p->blocked;
}

int sl_publisher_blocked(const sl_publisher_t *p)
{
    return p->blocked;
}

size_t sl_publisher_outstanding(const sl_publisher_t *p)
{
    return p->outstanding;
}

const sl_publisher_stats_t *sl_publisher_stats(const sl_publisher_t *p)
{
    return &p->stats;
}

void sl_publisher_destroy(sl_publisher_t *p)
{
    if (p == NULL)
        return;
    h2o_timeout_unlink(&p->tick);
    if (p->conn != NULL) {
        amqp_connection_state_t conn = p->conn;
        if (p->sock != NULL)
            h2o_socket_close(p->sock);
        p->sock = NULL;
        p->conn = NULL;
        uint64_t end = p->next_tag;
        for (uint64_t t = p->oldest_tag; t < end; t++)
            settle_one(p, t, SL_PUBLISH_UNAVAILABLE, sl_time_mono_us());
        sl_amqp_close(conn);
    }
    h2o_timeout_dispose(p->loop, &p->tick_timeout);
    free(p->slots);
    free(p);
}
