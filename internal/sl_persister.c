/*
 * sl_persister: see sl_persister.h.
 */
#include "sl_persister.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sl_amqp.h"
#include "sl_db.h"
#include "sl_log.h"
#include "sl_message.h"
#include "sl_metrics.h"
#include "sl_time.h"

struct stats {
    uint64_t batches, rows, duplicates, redeliveries, dead_lettered, db_reconnects, amqp_reconnects, live_published;
    uint64_t events; /* updates and deletes stored (counted apart from rows) */
    sl_histogram_t commit_latency, batch_rows;
    int amqp_up, db_up;
};

struct sl_persister {
    sl_persister_conf_t conf;
    sl_amqp_topology_t topology;
    amqp_connection_state_t amqp;
    sl_db_t db;
    sl_message_t *batch;
    uint64_t *tags;
    size_t n;
    pthread_mutex_t lock; /* guards stats */
    struct stats stats;
};

static const double batch_bounds[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000};

#define STAT(p, stmt)                                                                                                  \
    do {                                                                                                               \
        pthread_mutex_lock(&(p)->lock);                                                                                \
        stmt;                                                                                                          \
        pthread_mutex_unlock(&(p)->lock);                                                                              \
    } while (0)

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waits with backoff (capped at 2 s) while checking stop every 100 ms. */
static void backoff(int attempt, volatile sig_atomic_t *stop)
{
    long ms = attempt < 5 ? 100L << attempt : 2000;
    for (long waited = 0; waited < ms && !*stop; waited += 100)
        sleep_ms(100);
}

sl_persister_t *sl_persister_create(const sl_persister_conf_t *conf)
{
    sl_persister_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->conf = *conf;
    p->batch = calloc((size_t)conf->batch_size, sizeof(*p->batch));
    p->tags = calloc((size_t)conf->batch_size, sizeof(*p->tags));
    if (p->batch == NULL || p->tags == NULL) {
        sl_persister_destroy(p);
        return NULL;
    }
    sl_amqp_topology_defaults(&p->topology, conf->queue_max_length);
    pthread_mutex_init(&p->lock, NULL);
    sl_histogram_init(&p->stats.commit_latency, sl_latency_bounds, sl_latency_nbounds);
    sl_histogram_init(&p->stats.batch_rows, batch_bounds, sizeof(batch_bounds) / sizeof(batch_bounds[0]));
    return p;
}

void sl_persister_destroy(sl_persister_t *p)
{
    if (p == NULL)
        return;
    if (p->amqp != NULL)
        sl_amqp_close(p->amqp);
    sl_db_close(&p->db);
    free(p->batch);
    free(p->tags);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

static void drop_amqp(sl_persister_t *p, const char *why)
{
    char q[300];
    if (p->amqp == NULL)
        return;
    SL_WARN("event=amqp_connection_lost reason=%s unacked=%zu", sl_log_quote(q, sizeof(q), why), p->n);
    amqp_destroy_connection(p->amqp);
    p->amqp = NULL;
    p->n = 0; /* unacked deliveries return to the queue with the connection */
    STAT(p, p->stats.amqp_up = 0);
}

static int connect_amqp(sl_persister_t *p)
{
    char err[512], q[600];
    amqp_connection_state_t c = sl_amqp_open(p->conf.amqp_url, "sluice-persister", 10, 5000, err, sizeof(err));
    if (c == NULL)
        goto Fail;
    if (sl_amqp_declare(c, &p->topology, err, sizeof(err)) != 0)
        goto Fail;
    amqp_basic_qos(c, SL_AMQP_CHANNEL, 0, (uint16_t)(p->conf.prefetch > 65535 ? 65535 : p->conf.prefetch), 0);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        char t[256];
        snprintf(err, sizeof(err), "basic.qos: %s", sl_amqp_reply_text(r, t, sizeof(t)));
        goto Fail;
    }
    amqp_basic_consume(c, SL_AMQP_CHANNEL, amqp_cstring_bytes(p->topology.persist_queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    r = amqp_get_rpc_reply(c);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        char t[256];
        snprintf(err, sizeof(err), "basic.consume: %s", sl_amqp_reply_text(r, t, sizeof(t)));
        goto Fail;
    }
    p->amqp = c;
    STAT(p, p->stats.amqp_up = 1; p->stats.amqp_reconnects++);
    SL_INFO("event=amqp_connected queue=%s prefetch=%lld", p->topology.persist_queue, p->conf.prefetch);
    return 0;
Fail:
    SL_WARN("event=amqp_connect_failed error=%s", sl_log_quote(q, sizeof(q), err));
    if (c != NULL)
        amqp_destroy_connection(c);
    return -1;
}

static int connect_db(sl_persister_t *p)
{
    char err[512], q[600];
    if (sl_db_connect(&p->db, p->conf.db_url, err, sizeof(err)) != SL_DB_OK ||
        sl_db_migrate(&p->db, err, sizeof(err)) != SL_DB_OK) {
        SL_WARN("event=db_connect_failed error=%s", sl_log_quote(q, sizeof(q), err));
        sl_db_close(&p->db);
        return -1;
    }
    STAT(p, p->stats.db_up = 1; p->stats.db_reconnects++);
    SL_INFO("event=db_connected server=%s schema=%d", sl_db_kind_name(p->db.kind), sl_db_schema_version(&p->db));
    return 0;
}

static void dead_letter(sl_persister_t *p, uint64_t tag, const char *why)
{
    char q[300];
    SL_ERROR("event=dead_lettered delivery_tag=%llu reason=%s", (unsigned long long)tag, sl_log_quote(q, sizeof(q), why));
    amqp_basic_reject(p->amqp, SL_AMQP_CHANNEL, tag, 0);
    STAT(p, p->stats.dead_lettered++);
}

/* Handles a frame that is not a delivery (amqp_consume_message said UNEXPECTED_STATE). */
static void handle_other_frame(sl_persister_t *p)
{
    amqp_frame_t frame;
    struct timeval tv = {1, 0};
    if (amqp_simple_wait_frame_noblock(p->amqp, &frame, &tv) != AMQP_STATUS_OK) {
        drop_amqp(p, "frame read failed");
        return;
    }
    if (frame.frame_type != AMQP_FRAME_METHOD)
        return;
    switch (frame.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD:
    case AMQP_CONNECTION_BLOCKED_METHOD:
    case AMQP_CONNECTION_UNBLOCKED_METHOD:
        return;
    case AMQP_BASIC_RETURN_METHOD: {
        amqp_message_t msg;
        if (amqp_read_message(p->amqp, frame.channel, &msg, 0).reply_type != AMQP_RESPONSE_NORMAL)
            drop_amqp(p, "could not read a returned message");
        else
            amqp_destroy_message(&msg);
        return;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        amqp_connection_close_ok_t ok;
        amqp_send_method(p->amqp, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
        drop_amqp(p, "connection closed by broker");
        return;
    }
    case AMQP_CHANNEL_CLOSE_METHOD:
        drop_amqp(p, "channel closed by broker");
        return;
    case AMQP_BASIC_CANCEL_METHOD:
        drop_amqp(p, "consumer cancelled by broker (queue deleted?)");
        return;
    default:
        drop_amqp(p, "unexpected frame");
        return;
    }
}

/* Adds deliveries to the batch until it is full, batch_ms passed since the first, or (with an
 * empty batch) 200 ms passed so the caller can check stop. */
static void fill_batch(sl_persister_t *p)
{
    int64_t deadline = 0;
    while (p->amqp != NULL && p->n < (size_t)p->conf.batch_size) {
        int64_t now = sl_time_mono_us(), wait_us = p->n == 0 ? 200000 : deadline - now;
        if (p->n > 0 && wait_us <= 0)
            break;
        struct timeval tv = {(time_t)(wait_us / 1000000), (suseconds_t)(wait_us % 1000000)};
        amqp_envelope_t env;
        amqp_maybe_release_buffers(p->amqp);
        amqp_rpc_reply_t r = amqp_consume_message(p->amqp, &env, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT) {
            if (p->n == 0)
                return;
            break;
        }
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            handle_other_frame(p);
            continue;
        }
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            char t[256];
            drop_amqp(p, sl_amqp_reply_text(r, t, sizeof(t)));
            return;
        }
        sl_error_t err;
        sl_message_t *m = &p->batch[p->n];
        if (env.redelivered)
            STAT(p, p->stats.redeliveries++);
        if (sl_message_from_json(env.message.body.bytes, env.message.body.len, m, &err) != 0) {
            dead_letter(p, env.delivery_tag, err.message);
        } else {
            p->tags[p->n++] = env.delivery_tag;
            if (p->n == 1)
                deadline = sl_time_mono_us() + p->conf.batch_ms * 1000;
        }
        amqp_destroy_envelope(&env);
    }
}

static void publish_live(sl_persister_t *p)
{
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.delivery_mode = 1; /* transient: the database is the record, sse backfills gaps from it */
    for (size_t i = 0; i < p->n && p->amqp != NULL; i++) {
        if (p->batch[i].seq == 0)
            continue;
        size_t len;
        char *json = sl_message_to_json(&p->batch[i], &len);
        if (json == NULL)
            continue;
        amqp_bytes_t body = {len, json};
        int st = amqp_basic_publish(p->amqp, SL_AMQP_CHANNEL, amqp_cstring_bytes(p->topology.live_exchange),
                                    amqp_cstring_bytes(p->batch[i].channel), 0, 0, &props, body);
        free(json);
        if (st != AMQP_STATUS_OK) {
            drop_amqp(p, amqp_error_string2(st));
            return;
        }
        STAT(p, p->stats.live_published++);
    }
}

/* Stores one message alone; on a refusal by the database it goes to the dead-letter queue. */
static int store_alone(sl_persister_t *p, size_t i)
{
    char err[512];
    size_t stored;
    int r = sl_db_store_batch(&p->db, &p->batch[i], 1, &stored, err, sizeof(err));
    if (r == SL_DB_ERROR) {
        dead_letter(p, p->tags[i], err);
        p->batch[i].seq = 0;
        p->tags[i] = 0;
        return SL_DB_OK;
    }
    return r;
}

/* Commits the batch, retrying through database outages while the broker connection holds.
 * Returns 0 when committed, -1 when the batch was abandoned (it will be redelivered). */
static int store(sl_persister_t *p, volatile sig_atomic_t *stop)
{
    char err[512], q[600];
    for (int attempt = 0; p->amqp != NULL; attempt++) {
        if (p->db.conn == NULL && connect_db(p) != 0) {
            if (*stop)
                return -1;
            backoff(attempt, stop);
            continue;
        }
        size_t stored = 0;
        int64_t t0 = sl_time_mono_us();
        int r = sl_db_store_batch(&p->db, p->batch, p->n, &stored, err, sizeof(err));
        if (r == SL_DB_ERROR) {
            /* Something in the batch is refused (not a transient failure): store one by one so only
             * the culprit is dead-lettered. */
            SL_WARN("event=batch_refused rows=%zu error=%s", p->n, sl_log_quote(q, sizeof(q), err));
            stored = 0;
            for (size_t i = 0; i < p->n && r != SL_DB_LOST; i++) {
                r = store_alone(p, i);
                stored += p->batch[i].seq != 0;
            }
            if (r != SL_DB_LOST)
                r = SL_DB_OK;
        }
        if (r == SL_DB_OK) {
            double secs = (double)(sl_time_mono_us() - t0) / 1e6;
            size_t events = 0;
            for (size_t i = 0; i < p->n; i++)
                events += p->batch[i].seq != 0 && p->batch[i].type != SL_MESSAGE_NEW;
            STAT(p, p->stats.batches++; p->stats.rows += stored - events; p->stats.events += events;
                 p->stats.duplicates += p->n - stored;
                 sl_histogram_observe(&p->stats.commit_latency, secs);
                 sl_histogram_observe(&p->stats.batch_rows, (double)p->n));
            SL_DEBUG("event=batch_committed rows=%zu stored=%zu ms=%.1f", p->n, stored, secs * 1000);
            return 0;
        }
        SL_WARN("event=db_connection_lost error=%s rows=%zu", sl_log_quote(q, sizeof(q), err), p->n);
        sl_db_close(&p->db);
        STAT(p, p->stats.db_up = 0);
        if (*stop)
            return -1;
        backoff(attempt, stop);
    }
    return -1;
}

static void ack_batch(sl_persister_t *p)
{
    uint64_t last = 0;
    for (size_t i = 0; i < p->n; i++)
        last = p->tags[i] > last ? p->tags[i] : last;
    if (last != 0 && p->amqp != NULL && amqp_basic_ack(p->amqp, SL_AMQP_CHANNEL, last, 1) != AMQP_STATUS_OK)
        drop_amqp(p, "ack failed");
    p->n = 0;
}

int sl_persister_run(sl_persister_t *p, volatile sig_atomic_t *stop)
{
    int attempt = 0;
    while (!*stop) {
        if (p->db.conn == NULL && connect_db(p) != 0) {
            backoff(attempt++, stop);
            continue;
        }
        if (p->amqp == NULL && connect_amqp(p) != 0) {
            backoff(attempt++, stop);
            continue;
        }
        attempt = 0;
        fill_batch(p);
        if (p->n == 0 || p->amqp == NULL)
            continue;
        if (store(p, stop) != 0) {
            if (p->amqp != NULL) /* leaving: the unacked batch goes back to the queue */
                drop_amqp(p, "stopping with an uncommitted batch");
            continue;
        }
        publish_live(p);
        ack_batch(p);
    }
    SL_INFO("event=stopped");
    return 0;
}

int sl_persister_ready(sl_persister_t *p)
{
    int ok;
    STAT(p, ok = p->stats.amqp_up && p->stats.db_up);
    return ok;
}

void sl_persister_render_metrics(sl_persister_t *p, sl_buf_t *b)
{
    struct stats s;
    STAT(p, s = p->stats);
    sl_metrics_header(b, "sluice_persister_batches_total", "counter", "Committed batches.");
    sl_metrics_sample(b, "sluice_persister_batches_total", "", (double)s.batches);
    sl_metrics_header(b, "sluice_persister_rows_total", "counter", "Messages stored.");
    sl_metrics_sample(b, "sluice_persister_rows_total", "", (double)s.rows);
    sl_metrics_header(b, "sluice_persister_events_total", "counter", "Updates and deletes of messages stored.");
    sl_metrics_sample(b, "sluice_persister_events_total", "", (double)s.events);
    sl_metrics_header(b, "sluice_persister_duplicates_total", "counter", "Deliveries whose id was already stored.");
    sl_metrics_sample(b, "sluice_persister_duplicates_total", "", (double)s.duplicates);
    sl_metrics_header(b, "sluice_persister_redeliveries_total", "counter", "Deliveries flagged redelivered.");
    sl_metrics_sample(b, "sluice_persister_redeliveries_total", "", (double)s.redeliveries);
    sl_metrics_header(b, "sluice_persister_dead_lettered_total", "counter", "Messages sent to the dead-letter queue.");
    sl_metrics_sample(b, "sluice_persister_dead_lettered_total", "", (double)s.dead_lettered);
    sl_metrics_header(b, "sluice_persister_live_published_total", "counter", "Stored messages sent to the live exchange.");
    sl_metrics_sample(b, "sluice_persister_live_published_total", "", (double)s.live_published);
    sl_metrics_header(b, "sluice_persister_connects_total", "counter", "Successful connections by peer.");
    sl_metrics_sample(b, "sluice_persister_connects_total", "peer=\"amqp\"", (double)s.amqp_reconnects);
    sl_metrics_sample(b, "sluice_persister_connects_total", "peer=\"db\"", (double)s.db_reconnects);
    sl_metrics_histogram(b, "sluice_persister_commit_seconds", "Time to store one batch.", &s.commit_latency);
    sl_metrics_histogram(b, "sluice_persister_batch_rows", "Messages per batch.", &s.batch_rows);
    sl_metrics_header(b, "sluice_persister_ready", "gauge", "1 when broker and database are connected.");
    sl_metrics_sample(b, "sluice_persister_ready", "", s.amqp_up && s.db_up);
}
