/*
 * sl_livefeed: see sl_livefeed.h. A small frame state machine assembles deliveries
 * (basic.deliver, then a header frame, then body frames) without ever waiting for the rest.
 */
#include "sl_livefeed.h"

#include <stdatomic.h>
#include <stdio.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>

#include "sl_amqploop.h"
#include "sl_log.h"

enum { WAIT_DELIVER, WAIT_HEADER, WAIT_BODY };

/* Consumer tags: a delivery says which queue it comes from. */
#define TAG_LIVE "live"
#define TAG_PRESENCE "presence"

struct sl_livefeed {
    sl_amqploop_t amqp;
    const char *exchange, *presence_exchange, *name;
    sl_amqp_topology_t topology; /* role SUBSCRIBER: the live exchange, passively or not */
    atomic_int topology_missing; /* the connector thread's: the exchange missing was logged */
    long long max_backlog;
    const sl_livefeed_handlers_t *h;
    void *data;
    int state;
    int presence;  /* the delivery being assembled is a presence message */
    char *body;
    size_t body_len, body_size, body_cap;
};

/* A server-named queue (exclusive, auto-delete) bound to exchange with key and consumed (no-ack)
 * under tag. */
static amqp_rpc_reply_t own_queue(amqp_connection_state_t conn, const char *exchange, const char *key, const char *tag,
                                  amqp_table_t args)
{
    amqp_rpc_reply_t r;
    amqp_queue_declare_ok_t *q = amqp_queue_declare(conn, SL_AMQP_CHANNEL, amqp_empty_bytes, 0, 0, 1, 1, args);
    if ((r = amqp_get_rpc_reply(conn)).reply_type != AMQP_RESPONSE_NORMAL)
        return r;
    amqp_bytes_t queue = amqp_bytes_malloc_dup(q->queue);
    amqp_queue_bind(conn, SL_AMQP_CHANNEL, queue, amqp_cstring_bytes(exchange), amqp_cstring_bytes(key),
                    amqp_empty_table);
    if ((r = amqp_get_rpc_reply(conn)).reply_type == AMQP_RESPONSE_NORMAL) {
        amqp_basic_consume(conn, SL_AMQP_CHANNEL, queue, amqp_cstring_bytes(tag), 0, 1, 1, amqp_empty_table);
        r = amqp_get_rpc_reply(conn);
    }
    amqp_bytes_free(queue);
    return r;
}

/* On sl_amqploop's connector thread: reads what never changes after create, nothing else. A new
 * connection (maybe on another node) declares and binds a new private queue; what was published
 * meanwhile the hub fills from the database (on_state up makes it check). */
static int on_setup(void *data, amqp_connection_state_t conn, char *err, size_t errlen)
{
    sl_livefeed_t *f = data;
    char t[256];
    amqp_rpc_reply_t r;
    amqp_table_entry_t qargs[] = {
        {amqp_cstring_bytes("x-max-length"), {AMQP_FIELD_KIND_I64, {.i64 = f->max_backlog}}},
        {amqp_cstring_bytes("x-max-length-bytes"), {AMQP_FIELD_KIND_I64, {.i64 = SL_LIVEFEED_MAX_BYTES}}},
    };
    amqp_table_t qtable = {2, qargs};
    amqp_table_entry_t pqargs[] = {
        {amqp_cstring_bytes("x-max-length-bytes"), {AMQP_FIELD_KIND_I64, {.i64 = SL_LIVEFEED_PRESENCE_MAX_BYTES}}},
    };
    amqp_table_t pqtable = {1, pqargs};

    int rc = sl_amqp_declare(conn, &f->topology, err, errlen);
    char qn[160], qe[600];
    if (rc == SL_AMQP_TOPOLOGY_MISSING && atomic_exchange(&f->topology_missing, 1) == 0)
        SL_WARN("event=amqp_topology_missing conn=%s exchange=%s error=%s hint=\"declared by sluice-persister; "
                "retrying until it is\"",
                sl_log_quote(qn, sizeof(qn), f->name), f->exchange, sl_log_quote(qe, sizeof(qe), err));
    if (rc != 0)
        return -1;
    if (atomic_exchange(&f->topology_missing, 0) != 0)
        SL_INFO("event=amqp_topology_found conn=%s exchange=%s", sl_log_quote(qn, sizeof(qn), f->name), f->exchange);
    if ((r = own_queue(conn, f->exchange, "#", TAG_LIVE, qtable)).reply_type != AMQP_RESPONSE_NORMAL) {
        snprintf(err, errlen, "live queue setup on %s: %s", f->exchange, sl_amqp_reply_text(r, t, sizeof(t)));
        return -1;
    }
    if (f->presence_exchange != NULL &&
        (r = own_queue(conn, f->presence_exchange, "", TAG_PRESENCE, pqtable)).reply_type != AMQP_RESPONSE_NORMAL) {
        snprintf(err, errlen, "presence queue setup on %s: %s", f->presence_exchange,
                 sl_amqp_reply_text(r, t, sizeof(t)));
        return -1;
    }
    return 0;
}

static void on_up(void *data)
{
    sl_livefeed_t *f = data;
    int sndbuf = SL_LIVEFEED_SNDBUF;
    /* A snapshot part is published only once the buffer has room for it (never blocking): the
     * default (16 KiB, growing only with traffic) would hold none. */
    if (f->presence_exchange != NULL)
        setsockopt(amqp_get_sockfd(f->amqp.conn), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    f->state = WAIT_DELIVER;
    if (f->h->on_state != NULL)
        f->h->on_state(f->data, 1);
}

static void on_down(void *data, const char *why)
{
    sl_livefeed_t *f = data;
    (void)why;
    f->state = WAIT_DELIVER;
    if (f->h->on_state != NULL)
        f->h->on_state(f->data, 0);
}

static void deliver(sl_livefeed_t *f, const char *body, size_t len)
{
    if (!f->presence)
        f->h->on_message(f->data, body, len);
    else if (f->h->on_presence != NULL)
        f->h->on_presence(f->data, body, len);
}

static void on_frame(void *data, const amqp_frame_t *frame)
{
    sl_livefeed_t *f = data;
    switch (frame->frame_type) {
    case AMQP_FRAME_METHOD:
        if (frame->payload.method.id == AMQP_BASIC_DELIVER_METHOD) {
            const amqp_basic_deliver_t *d = frame->payload.method.decoded;
            f->presence = d->consumer_tag.len == strlen(TAG_PRESENCE) &&
                          memcmp(d->consumer_tag.bytes, TAG_PRESENCE, d->consumer_tag.len) == 0;
            f->state = WAIT_HEADER;
        }
        else if (frame->payload.method.id == AMQP_BASIC_CANCEL_METHOD)
            sl_amqploop_lose(&f->amqp, "consumer cancelled by broker");
        break;
    case AMQP_FRAME_HEADER:
        if (f->state != WAIT_HEADER)
            break;
        f->body_size = (size_t)frame->payload.properties.body_size;
        f->body_len = 0;
        if (f->body_size > f->body_cap) {
            char *b = realloc(f->body, f->body_size);
            if (b == NULL) {
                sl_amqploop_lose(&f->amqp, "out of memory for a delivery");
                return;
            }
            f->body = b;
            f->body_cap = f->body_size;
        }
        f->state = WAIT_BODY;
        if (f->body_size == 0) {
            f->state = WAIT_DELIVER;
            deliver(f, "", 0);
        }
        break;
    case AMQP_FRAME_BODY: {
        if (f->state != WAIT_BODY)
            break;
        amqp_bytes_t frag = frame->payload.body_fragment;
        if (frag.len > f->body_size - f->body_len) {
            sl_amqploop_lose(&f->amqp, "delivery longer than its header said");
            return;
        }
        memcpy(f->body + f->body_len, frag.bytes, frag.len);
        f->body_len += frag.len;
        if (f->body_len == f->body_size) {
            f->state = WAIT_DELIVER;
            deliver(f, f->body, f->body_len);
        }
    } break;
    default:
        break;
    }
}

static const sl_amqploop_handlers_t handlers = {on_setup, on_up, on_frame, on_down, NULL};

sl_livefeed_t *sl_livefeed_create(h2o_loop_t *loop, const char *url, const char *exchange,
                                  const char *presence_exchange, const char *name, long long max_backlog,
                                  const sl_livefeed_handlers_t *h, void *data)
{
    sl_livefeed_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->exchange = exchange;
    f->presence_exchange = presence_exchange;
    f->name = name;
    sl_amqp_topology_defaults(&f->topology, 0, 0);
    f->topology.role = SL_AMQP_ROLE_SUBSCRIBER;
    f->topology.live_exchange = exchange;
    f->topology.presence_exchange = presence_exchange;
    atomic_init(&f->topology_missing, 0);
    f->max_backlog = max_backlog;
    f->h = h;
    f->data = data;
    char err[512];
    if (sl_amqploop_init(&f->amqp, loop, url, name, 10, 2000, 2000, &handlers, f, err, sizeof(err)) != 0) {
        char q[600];
        SL_ERROR("event=livefeed_failed conn=%s error=%s", name, sl_log_quote(q, sizeof(q), err));
        free(f);
        return NULL;
    }
    return f;
}

int sl_livefeed_publish_presence(sl_livefeed_t *f, const void *body, size_t len, long long expiration_ms)
{
    char expiration[24];
    if (f->amqp.conn == NULL || f->presence_exchange == NULL)
        return -1;
    if (!sl_amqploop_send_room(&f->amqp, len))
        return 1;
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_EXPIRATION_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.delivery_mode = 1; /* transient: a snapshot is worth nothing after a broker restart */
    snprintf(expiration, sizeof(expiration), "%lld", expiration_ms);
    props.expiration = amqp_cstring_bytes(expiration);
    amqp_bytes_t b = {len, (void *)body};
    int st = amqp_basic_publish(f->amqp.conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(f->presence_exchange),
                                amqp_empty_bytes, 0, 0, &props, b);
    if (st != AMQP_STATUS_OK) {
        sl_amqploop_lose(&f->amqp, amqp_error_string2(st));
        return -1;
    }
    return 0;
}

int sl_livefeed_up(const sl_livefeed_t *f)
{
    return f->amqp.conn != NULL;
}

unsigned long sl_livefeed_connects(const sl_livefeed_t *f)
{
    return f->amqp.connects;
}

void sl_livefeed_destroy(sl_livefeed_t *f)
{
    if (f == NULL)
        return;
    sl_amqploop_dispose(&f->amqp);
    free(f->body);
    free(f);
}
