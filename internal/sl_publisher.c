/*
 * sl_publisher: confirms-based publishing inside an h2o loop; see sl_publisher.h.
 *
 * Outstanding publishes live in a ring indexed by delivery tag. The span between the oldest
 * unconfirmed tag and the next tag is kept below the ring's size, so tags never collide even when
 * the broker confirms out of order. The connection itself (socket, reconnects, blocked state) is
 * sl_amqploop's.
 */
#include "sl_publisher.h"

#include <stdatomic.h>
#include <stdio.h>

#include <stdlib.h>
#include <string.h>

#include "sl_log.h"
#include "sl_time.h"

#define RECYCLE_MIN_US 500000LL
#define RECYCLE_MAX_US 30000000LL
#define WATCH_MS 250
#define WAIT_ROOM_MS 2

/* One post (a line of a batch) and who waits for its confirm. */
struct entry {
    sl_publish_cb cb;
    void *data;
};

/* One AMQP message in flight: a batch of posts. */
struct slot {
    struct entry *entries;
    size_t n;
    int64_t t0_us;
    int in_use;
};

struct sl_publisher {
    sl_amqploop_t amqp;
    sl_publisher_conf_t conf;
    int64_t blocked_since_us;
    uint64_t next_tag, oldest_tag;
    struct slot *slots;
    size_t mask, outstanding; /* outstanding: posts awaiting their confirm, gathered ones included */
    /* The batch being gathered: published (as delivery tag next_tag) when this loop turn ends. */
    sl_buf_t body;
    struct entry *gathered;
    size_t ngathered;
    int atomic; /* the gathered lines are one group (sl_publisher_publish_group): they go alone */
    char exchange[128], routing_key[256];
    h2o_timeout_t flush_timeout; /* 0 ms: at the end of the current loop turn */
    h2o_timeout_t wait_timeout;  /* WAIT_ROOM_MS: the next try of a batch that found no room */
    h2o_timeout_entry_t flush_entry;
    h2o_timeout_entry_t wait_entry;
    h2o_timeout_t watch_timeout; /* WATCH_MS: the oldest unconfirmed publish's age */
    h2o_timeout_entry_t watch_entry;
    char broken[160]; /* a publish failed in flush: drop the connection from the timer */
    /* A channel that has had only nacks since it connected (see on_frame). */
    uint64_t acked_since_up;
    int64_t first_nack_us, recycle_after_us;
    sl_publisher_stats_t stats;
    /* Written by the connector thread only (one at a time): 1 while the persist queue was found
     * missing by a passive declare, so that it is logged once, not at every retry. */
    atomic_int topology_missing;
};

static void settle_one(sl_publisher_t *p, uint64_t tag, sl_publish_result_t result, int64_t now)
{
    struct slot *s = &p->slots[tag & p->mask];
    if (!s->in_use)
        return;
    struct slot taken = *s; /* callbacks may publish: the slot is free before they run */
    sl_histogram_observe(&p->stats.confirm_latency, (double)(now - s->t0_us) / 1e6);
    memset(s, 0, sizeof(*s));
    p->outstanding -= taken.n;
    for (size_t i = 0; i < taken.n; i++) {
        if (taken.entries[i].cb != NULL)
            taken.entries[i].cb(taken.entries[i].data, result);
    }
    free(taken.entries);
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

/* The gathered publishes become the slot of delivery tag next_tag (which advances). */
static struct slot *seal_gathered(sl_publisher_t *p)
{
    struct slot *s = &p->slots[p->next_tag++ & p->mask];
    s->entries = p->gathered;
    s->n = p->ngathered;
    s->t0_us = sl_time_mono_us();
    s->in_use = 1;
    p->gathered = NULL;
    p->ngathered = 0;
    p->atomic = 0;
    return s;
}

/* Publishes the gathered batch as delivery tag next_tag, once the socket has room for it (else it
 * stays gathered, new publishes are refused BUSY, and it is tried again in WAIT_ROOM_MS; the
 * watch timer drops a connection whose node never reads again). A failure is only noted: the
 * connection is dropped from the timer, never under a caller's feet. */
static void flush(sl_publisher_t *p)
{
    if (p->ngathered == 0)
        return;
    if (!sl_amqploop_send_room(&p->amqp, p->body.len)) {
        p->stats.send_waits++;
        if (!h2o_timeout_is_linked(&p->wait_entry))
            h2o_timeout_link(p->amqp._loop, &p->wait_timeout, &p->wait_entry);
        return;
    }
    amqp_basic_properties_t props;
    amqp_table_entry_t atomic = {amqp_cstring_bytes(SL_AMQP_ATOMIC_HEADER),
                                 {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}};
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.content_type = amqp_cstring_bytes(p->ngathered > 1 ? SL_LIVE_CONTENT_TYPE : "application/json");
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    if (p->atomic) {
        props._flags |= AMQP_BASIC_HEADERS_FLAG;
        props.headers = (amqp_table_t){1, &atomic};
    }
    amqp_bytes_t b = {p->body.len, p->body.data};
    struct slot *s = seal_gathered(p);
    p->stats.published += s->n;
    p->stats.batches++;
    int st = amqp_basic_publish(p->amqp.conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(p->exchange),
                                amqp_cstring_bytes(p->routing_key), 0, 0, &props, b);
    p->body.len = 0;
    if (st != AMQP_STATUS_OK && p->broken[0] == '\0') {
        snprintf(p->broken, sizeof(p->broken), "%s", amqp_error_string2(st));
        if (!h2o_timeout_is_linked(&p->flush_entry)) /* it is while a batch is gathered */
            h2o_timeout_link(p->amqp._loop, &p->flush_timeout, &p->flush_entry);
    }
}

static void on_flush(h2o_timeout_entry_t *entry);

static void on_wait_room(h2o_timeout_entry_t *entry)
{
    sl_publisher_t *p = H2O_STRUCT_FROM_MEMBER(sl_publisher_t, wait_entry, entry);
    if (!h2o_timeout_is_linked(&p->flush_entry))
        on_flush(&p->flush_entry);
}

static void on_flush(h2o_timeout_entry_t *entry)
{
    sl_publisher_t *p = H2O_STRUCT_FROM_MEMBER(sl_publisher_t, flush_entry, entry);
    if (p->broken[0] == '\0' && p->amqp.conn != NULL)
        flush(p);
    if (p->broken[0] != '\0') {
        char why[sizeof(p->broken)];
        memcpy(why, p->broken, sizeof(why));
        sl_amqploop_lose(&p->amqp, why); /* on_down answers the gathered and the unconfirmed */
    }
}

/* A stalled node keeps its connection open and answers nothing (heartbeats would notice only
 * after two intervals): a confirm overdue by confirm_timeout_ms drops the connection, so the
 * publishes waiting for it are answered and the next node is tried. Not while blocked: the broker
 * then holds publishes on purpose. */
static void on_watch(h2o_timeout_entry_t *entry)
{
    sl_publisher_t *p = H2O_STRUCT_FROM_MEMBER(sl_publisher_t, watch_entry, entry);
    h2o_timeout_link(p->amqp._loop, &p->watch_timeout, &p->watch_entry);
    if (p->amqp.conn == NULL || p->amqp.blocked || p->broken[0] != '\0' || p->oldest_tag >= p->next_tag)
        return;
    const struct slot *s = &p->slots[p->oldest_tag & p->mask];
    int64_t age_ms = (sl_time_mono_us() - s->t0_us) / 1000;
    if (!s->in_use || age_ms < p->conf.confirm_timeout_ms)
        return;
    snprintf(p->broken, sizeof(p->broken), "no confirm within %lld ms", (long long)age_ms);
    if (!h2o_timeout_is_linked(&p->flush_entry))
        h2o_timeout_link(p->amqp._loop, &p->flush_timeout, &p->flush_entry);
}

/* On the connector thread: reads conf only. */
static int on_setup(void *data, amqp_connection_state_t conn, char *err, size_t errlen)
{
    sl_publisher_t *p = data;
    int rc = sl_amqp_declare(conn, &p->conf.topology, err, errlen);
    if (rc == SL_AMQP_TOPOLOGY_MISSING) {
        if (atomic_exchange(&p->topology_missing, 1) == 0) {
            char q[600];
            SL_WARN("event=amqp_topology_missing conn=%s queue=%s error=%s hint=\"declared by sluice-persister; "
                    "retrying until it is\"",
                    p->conf.conn_name, p->conf.topology.persist_queue, sl_log_quote(q, sizeof(q), err));
        }
        return -1;
    }
    if (rc != 0)
        return -1;
    if (atomic_exchange(&p->topology_missing, 0) != 0)
        SL_INFO("event=amqp_topology_found conn=%s queue=%s", p->conf.conn_name, p->conf.topology.persist_queue);
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
    p->acked_since_up = 0;
    p->first_nack_us = 0;
    p->stats.reconnects++;
}

/* RabbitMQ 3.10 (seen on a three-node cluster): a channel that first publishes to a quorum
 * queue with x-overflow=reject-publish while the queue has no leader (we reconnected to a
 * survivor within the election after its leader's node died) is nacked for good, while fresh
 * channels are confirmed. So a connection that has had nothing but nacks for recycle_after_us
 * since it came up is dropped (its outstanding publishes are answered UNAVAILABLE) and the next
 * node is tried; the wait doubles while this repeats without an ack (a queue that is really full
 * when we connect costs a reconnection now and then, no more). */
static void note_fresh_nack(sl_publisher_t *p)
{
    int64_t now = sl_time_mono_us();
    if (p->first_nack_us == 0) {
        p->first_nack_us = now;
        return;
    }
    if (now - p->first_nack_us < p->recycle_after_us || p->broken[0] != '\0')
        return;
    SL_WARN("event=publisher_recycle conn=%s node=%s nacked_ms=%lld reason=\"only nacks since connecting\"",
            p->conf.conn_name, sl_amqploop_node(&p->amqp), (long long)((now - p->first_nack_us) / 1000));
    snprintf(p->broken, sizeof(p->broken), "only nacks for %lld ms since connecting",
             (long long)((now - p->first_nack_us) / 1000));
    if (!h2o_timeout_is_linked(&p->flush_entry))
        h2o_timeout_link(p->amqp._loop, &p->flush_timeout, &p->flush_entry);
    p->recycle_after_us = p->recycle_after_us * 2 < RECYCLE_MAX_US ? p->recycle_after_us * 2 : RECYCLE_MAX_US;
}

static void on_frame(void *data, const amqp_frame_t *frame)
{
    sl_publisher_t *p = data;
    if (frame->frame_type != AMQP_FRAME_METHOD)
        return;
    if (frame->payload.method.id == AMQP_BASIC_ACK_METHOD) {
        amqp_basic_ack_t *m = frame->payload.method.decoded;
        p->stats.acked++;
        p->acked_since_up++;
        p->recycle_after_us = RECYCLE_MIN_US;
        settle(p, m->delivery_tag, m->multiple, SL_PUBLISH_OK);
    } else if (frame->payload.method.id == AMQP_BASIC_NACK_METHOD) {
        amqp_basic_nack_t *m = frame->payload.method.decoded;
        p->stats.nacked++;
        if (p->acked_since_up == 0)
            note_fresh_nack(p);
        settle(p, m->delivery_tag, m->multiple, SL_PUBLISH_NACK);
    }
}

/* Every outstanding publish is answered UNAVAILABLE: the broker may or may not have it. */
static void on_down(void *data, const char *why)
{
    sl_publisher_t *p = data;
    (void)why;
    p->stats.failed += p->outstanding;
    /* the gathered batch becomes a slot like the others, and fails with them */
    if (p->ngathered > 0) {
        seal_gathered(p);
        p->body.len = 0;
    }
    if (h2o_timeout_is_linked(&p->wait_entry)) /* nothing gathered waits for room any more */
        h2o_timeout_unlink(&p->wait_entry);
    uint64_t end = p->next_tag;
    for (uint64_t t = p->oldest_tag; t < end; t++)
        settle_one(p, t, SL_PUBLISH_UNAVAILABLE, sl_time_mono_us());
    p->oldest_tag = p->next_tag = 1;
    p->broken[0] = '\0';
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
    atomic_init(&p->topology_missing, 0);
    p->conf = *conf;
    if (p->conf.max_batch == 0 || p->conf.max_batch > SL_AMQP_MAX_LINES)
        p->conf.max_batch = SL_AMQP_MAX_LINES;
    p->next_tag = p->oldest_tag = 1;
    p->recycle_after_us = RECYCLE_MIN_US;
    if (p->conf.confirm_timeout_ms <= 0)
        p->conf.confirm_timeout_ms = 5000;
    sl_histogram_init(&p->stats.confirm_latency, sl_latency_bounds, sl_latency_nbounds);
    char err[512];
    if (sl_amqploop_init(&p->amqp, loop, conf->url, conf->conn_name, conf->heartbeat_s, conf->timeout_ms,
                         conf->reconnect_ms, &handlers, p, err, sizeof(err)) != 0) {
        char q[600];
        SL_ERROR("event=publisher_failed conn=%s error=%s", conf->conn_name, sl_log_quote(q, sizeof(q), err));
        free(p->slots);
        free(p);
        return NULL;
    }
    h2o_timeout_init(loop, &p->flush_timeout, 0);
    h2o_timeout_init(loop, &p->wait_timeout, WAIT_ROOM_MS);
    p->wait_entry.cb = on_wait_room;
    p->flush_entry.cb = on_flush;
    h2o_timeout_init(loop, &p->watch_timeout, WATCH_MS);
    p->watch_entry.cb = on_watch;
    h2o_timeout_link(loop, &p->watch_timeout, &p->watch_entry);
    return p;
}

/* Adds nlines lines (body, joined by '\n') to the batch being gathered, as one publish (cb runs
 * once) that counts nlines posts; nlines > 1 is a group, which travels alone. See
 * sl_publisher_publish and sl_publisher_publish_group. */
static sl_publish_result_t gather(sl_publisher_t *p, const char *exchange, const char *routing_key, const void *body,
                                  size_t len, size_t nlines, sl_publish_cb cb, void *data, uint64_t *tag)
{
    if (p->amqp.conn == NULL || p->broken[0] != '\0') {
        p->stats.refused_down++;
        return SL_PUBLISH_UNAVAILABLE;
    }
    if (p->amqp.blocked) {
        p->stats.refused_blocked++;
        return SL_PUBLISH_BLOCKED;
    }
    size_t breaks = 0;
    for (const char *nl = body; (nl = memchr(nl, '\n', len - (size_t)(nl - (const char *)body))) != NULL; nl++)
        breaks++;
    if (nlines < 1 || nlines > p->conf.max_batch || breaks != nlines - 1 || strlen(exchange) >= sizeof(p->exchange) ||
        strlen(routing_key) >= sizeof(p->routing_key)) {
        SL_ERROR("event=publish_refused reason=\"line breaks in the body not as many as its lines, or names too long\"");
        p->stats.refused_down++;
        return SL_PUBLISH_UNAVAILABLE;
    }
    /* A batch holds one route, max_batch posts and about max_batch_bytes, and a group nothing
     * else: else what is gathered goes now. */
    if (p->ngathered > 0 &&
        (p->atomic || nlines > 1 || p->ngathered + nlines > p->conf.max_batch ||
         p->body.len + len > SL_AMQP_MAX_BATCH_BYTES || strcmp(exchange, p->exchange) != 0 ||
         strcmp(routing_key, p->routing_key) != 0))
        flush(p);
    if (p->broken[0] != '\0') {
        p->stats.refused_down++;
        return SL_PUBLISH_UNAVAILABLE;
    }
    if (p->outstanding + nlines > p->conf.max_unconfirmed || p->next_tag - p->oldest_tag >= p->mask ||
        (p->ngathered > 0 && h2o_timeout_is_linked(&p->wait_entry))) { /* no room to send: wait */
        p->stats.refused_busy++;
        return SL_PUBLISH_BUSY;
    }
    size_t want = (p->ngathered + nlines + 15) / 16 * 16;
    if ((p->ngathered + 15) / 16 * 16 < want) {
        struct entry *e = realloc(p->gathered, want * sizeof(*e));
        if (e == NULL) {
            p->stats.refused_busy++;
            return SL_PUBLISH_BUSY;
        }
        p->gathered = e;
    }
    if (p->ngathered == 0) {
        strcpy(p->exchange, exchange);
        strcpy(p->routing_key, routing_key);
        if (!h2o_timeout_is_linked(&p->flush_entry)) /* it may be, from a batch that on_down sealed */
            h2o_timeout_link(p->amqp._loop, &p->flush_timeout, &p->flush_entry);
    } else {
        sl_buf_append(&p->body, "\n", 1);
    }
    sl_buf_append(&p->body, body, len);
    /* one entry per line, so that outstanding counts posts; the first one carries the callback */
    for (size_t i = 0; i < nlines; i++)
        p->gathered[p->ngathered++] = (struct entry){i == 0 ? cb : NULL, data};
    p->outstanding += nlines;
    p->atomic = nlines > 1;
    *tag = p->next_tag;
    return SL_PUBLISH_OK;
}

sl_publish_result_t sl_publisher_publish(sl_publisher_t *p, const char *exchange, const char *routing_key,
                                         const void *body, size_t len, sl_publish_cb cb, void *data, uint64_t *tag)
{
    return gather(p, exchange, routing_key, body, len, 1, cb, data, tag);
}

sl_publish_result_t sl_publisher_publish_group(sl_publisher_t *p, const char *exchange, const char *routing_key,
                                               const void *body, size_t len, size_t nlines, sl_publish_cb cb,
                                               void *data, uint64_t *tag)
{
    return gather(p, exchange, routing_key, body, len, nlines, cb, data, tag);
}

void sl_publisher_detach(sl_publisher_t *p, uint64_t tag, void *data)
{
    struct entry *e = NULL;
    size_t n = 0;
    if (tag == p->next_tag) {
        e = p->gathered;
        n = p->ngathered;
    } else if (tag >= p->oldest_tag && tag < p->next_tag && p->slots[tag & p->mask].in_use) {
        e = p->slots[tag & p->mask].entries;
        n = p->slots[tag & p->mask].n;
    }
    for (size_t i = 0; i < n; i++) {
        if (e[i].data == data)
            e[i].cb = NULL;
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
    h2o_loop_t *loop = p->amqp._loop;
    sl_amqploop_dispose(&p->amqp); /* on_down answers what is gathered and unconfirmed */
    if (h2o_timeout_is_linked(&p->flush_entry))
        h2o_timeout_unlink(&p->flush_entry);
    h2o_timeout_dispose(loop, &p->flush_timeout);
    if (h2o_timeout_is_linked(&p->wait_entry))
        h2o_timeout_unlink(&p->wait_entry);
    h2o_timeout_dispose(loop, &p->wait_timeout);
    h2o_timeout_unlink(&p->watch_entry);
    h2o_timeout_dispose(loop, &p->watch_timeout);
    for (size_t i = 0; i <= p->mask; i++)
        free(p->slots[i].entries);
    free(p->slots);
    free(p->gathered);
    sl_buf_free(&p->body);
    free(p);
}
