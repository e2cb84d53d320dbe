/*
 * sl_publisher: confirms-based publishing inside an h2o loop; see sl_publisher.h.
 *
 * Outstanding publishes live in a ring indexed by delivery tag. The span between the oldest
 * unconfirmed tag and the next tag is kept below the ring's size, so tags never collide even when
 * the broker confirms out of order. The connection itself (socket, reconnects, blocked state) is
 * sl_amqploop's.
 */
#include "sl_publisher.h"

#include <stdlib.h>
#include <string.h>

#include "sl_log.h"
#include "sl_time.h"

struct slot {
    sl_publish_cb cb;
    void *data;
    int64_t t0_us;
    int in_use;
};

struct sl_publisher {
    sl_amqploop_t amqp;
    sl_publisher_conf_t conf;
    int64_t blocked_since_us;
    uint64_t next_tag, oldest_tag;
    struct slot *slots;
    size_t mask, outstanding;
    sl_publisher_stats_t stats;
};

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

static int on_setup(void *data, amqp_connection_state_t conn, char *err, size_t errlen)
{
    sl_publisher_t *p = data;
    if (sl_amqp_declare(conn, &p->conf.topology, err, errlen) != 0)
        return -1;
    amqp_confirm_select(conn, SL_AMQP_CHANNEL);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        char t[256];
        snprintf(err, errlen, "confirm.select: %s", sl_amqp_reply_text(r, t, sizeof(t)));
        return -1;
    }
    return 0;
}

static void on_up(void *data)
{
    sl_publisher_t *p = data;
    p->next_tag = p->oldest_tag = 1; /* delivery tags restart with every channel */
    p->stats.reconnects++;
}

static void on_frame(void *data, const amqp_frame_t *frame)
{
    sl_publisher_t *p = data;
    if (frame->frame_type != AMQP_FRAME_METHOD)
        return;
    if (frame->payload.method.id == AMQP_BASIC_ACK_METHOD) {
        amqp_basic_ack_t *m = frame->payload.method.decoded;
        p->stats.acked++;
        settle(p, m->delivery_tag, m->multiple, SL_PUBLISH_OK);
    } else if (frame->payload.method.id == AMQP_BASIC_NACK_METHOD) {
        amqp_basic_nack_t *m = frame->payload.method.decoded;
        p->stats.nacked++;
        settle(p, m->delivery_tag, m->multiple, SL_PUBLISH_NACK);
    }
}

/* Every outstanding publish is answered UNAVAILABLE: the broker may or may not have it. */
static void on_down(void *data, const char *why)
{
    sl_publisher_t *p = data;
    (void)why;
    p->stats.failed += p->outstanding;
    uint64_t end = p->next_tag;
    for (uint64_t t = p->oldest_tag; t < end; t++)
        settle_one(p, t, SL_PUBLISH_UNAVAILABLE, sl_time_mono_us());
    p->oldest_tag = p->next_tag = 1;
}

static void on_blocked(void *data, int blocked)
{
    sl_publisher_t *p = data;
    if (blocked)
        p->blocked_since_us = sl_time_mono_us();
    else
        p->stats.blocked_us_total += sl_time_mono_us() - p->blocked_since_us;
}

static const sl_amqploop_handlers_t handlers = {on_setup, on_up, on_frame, on_down, on_blocked};

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
    p->conf = *conf;
    p->next_tag = p->oldest_tag = 1;
    sl_histogram_init(&p->stats.confirm_latency, sl_latency_bounds, sl_latency_nbounds);
    sl_amqploop_init(&p->amqp, loop, conf->url, conf->conn_name, conf->heartbeat_s, conf->timeout_ms,
                     conf->reconnect_ms, &handlers, p);
    return p;
}

sl_publish_result_t sl_publisher_publish(sl_publisher_t *p, const char *exchange, const char *routing_key,
                                         const char *message_id, const void *body, size_t len, sl_publish_cb cb,
                                         void *data, uint64_t *tag)
{
    amqp_basic_properties_t props;
    if (p->amqp.conn == NULL) {
        p->stats.refused_down++;
        return SL_PUBLISH_UNAVAILABLE;
    }
    if (p->amqp.blocked) {
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
    int st = amqp_basic_publish(p->amqp.conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(exchange),
                                amqp_cstring_bytes(routing_key), 0, 0, &props, b);
    if (st != AMQP_STATUS_OK) {
        sl_amqploop_lose(&p->amqp, amqp_error_string2(st));
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
    return p->amqp.conn != NULL && !p->amqp.blocked;
}

int sl_publisher_blocked(const sl_publisher_t *p)
{
    return p->amqp.blocked;
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
    sl_amqploop_dispose(&p->amqp);
    free(p->slots);
    free(p);
}
