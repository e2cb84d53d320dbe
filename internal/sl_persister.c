/*
 * sl_persister: see sl_persister.h.
 */
#include "sl_persister.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sl_amqp.h"
#include "sl_db.h"
#include "sl_log.h"
#include "sl_message.h"
#include "sl_metrics.h"
#include "sl_time.h"

struct stats {
    uint64_t batches, rows, duplicates, redeliveries, dead_lettered, db_reconnects, amqp_reconnects, live_published;
    uint64_t events; /* updates and deletes stored (counted apart from rows) */
    uint64_t events_ignored; /* updates and deletes of messages deleted before (message_events_ignored) */
    uint64_t db_transient; /* transient database failures (the batch was kept and tried again) */
    uint64_t db_poison;    /* batches the database refused as a whole (then stored one by one) */
    sl_histogram_t commit_latency, batch_rows;
    int amqp_up, db_up;
    int64_t retrying_since; /* monotonic us: the writer holds a batch it could not store yet; 0 when not */
};

/* Deliveries taken together into one transaction. */
struct batch {
    sl_message_t *msgs;
    uint64_t *tags;     /* of the delivery each message came in (a delivery holds one or more) */
    char *atomic;       /* 1: its delivery was marked SL_AMQP_ATOMIC_HEADER (stored or refused whole) */
    size_t n;           /* every delivery's messages go into one batch: n < batch_size + SL_AMQP_MAX_LINES */
    sl_db_batch_t prep; /* sl_db_batch_prepare of msgs, made by the consumer (not the writer) */
    int prepared;       /* n + 1 when prep is of these n messages, else 0 */
    int redelivered;    /* a delivery in it came flagged redelivered: it may be stored already */
    unsigned gen; /* of the broker connection that delivered them: only it can ack them */
};

enum { JOB_NONE, JOB_QUEUED, JOB_DONE };

struct sl_persister {
    sl_persister_conf_t conf;
    sl_amqp_topology_t topology;
    volatile sig_atomic_t *stop;

    /* The consumer: sl_persister_run's thread owns the broker connection and the batch being
     * filled. */
    amqp_connection_state_t amqp;
    unsigned gen; /* counts broker connections */
    size_t amqp_cursor;           /* the next node of conf.amqp_url to try (sl_amqp_open_next) */
    amqp_connection_state_t dlx; /* in confirm mode: dead letters are confirmed before their ack */
    size_t dlx_cursor;
    int64_t last_heartbeat; /* monotonic us: the last frame sent to the broker while not reading */
    struct batch batches[3], *fill; /* filling, committing, and being announced and acked */
    int64_t fill_deadline; /* monotonic us: when the filling batch goes to the writer anyway */
    sl_buf_t live;         /* the live publish being built */

    /* The writer thread owns the database connection and stores one batch (the job) at a time. */
    sl_db_t db;
    pthread_t writer;
    int writer_started;
    pthread_mutex_t mu; /* guards the hand-off: job, job_state, job_result, quit */
    pthread_cond_t cv;
    struct batch *job;
    int job_state, job_result, quit;
    atomic_int abandon; /* the consumer no longer wants the job (lost its connection, or stops) */
    int done_pipe[2];   /* the writer writes a byte when the job is done: the consumer polls it */

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

/* Waits with backoff (capped at 2 s) while checking *stop every 100 ms. */
static void backoff(int attempt, volatile sig_atomic_t *stop)
{
    long ms = attempt < 5 ? 100L << attempt : 2000;
    for (long waited = 0; waited < ms && !*stop; waited += 100)
        sleep_ms(100);
}

/* Empties b for the next deliveries (its buffers stay). */
static void batch_clear(struct batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        sl_message_clear(&b->msgs[i]);
    b->n = 0;
    b->prepared = 0;
    b->redelivered = 0;
}

/* The writer gives up retrying a batch (it will be redelivered) when the consumer abandoned it. */
static int given_up(sl_persister_t *p)
{
    return *p->stop || atomic_load(&p->abandon);
}

/* The writer's backoff: as backoff(), also cut short by given_up. */
static void writer_backoff(sl_persister_t *p, int attempt)
{
    long ms = attempt < 5 ? 100L << attempt : 2000;
    for (long waited = 0; waited < ms && !given_up(p); waited += 100)
        sleep_ms(100);
}

sl_persister_t *sl_persister_create(const sl_persister_conf_t *conf)
{
    sl_persister_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->conf = *conf;
    p->done_pipe[0] = p->done_pipe[1] = -1;
    for (int i = 0; i < 3; i++) {
        size_t cap = (size_t)conf->batch_size + SL_AMQP_MAX_LINES;
        p->batches[i].msgs = calloc(cap, sizeof(*p->batches[i].msgs));
        p->batches[i].tags = calloc(cap, sizeof(*p->batches[i].tags));
        p->batches[i].atomic = calloc(cap, 1);
        if (p->batches[i].msgs == NULL || p->batches[i].tags == NULL || p->batches[i].atomic == NULL) {
            sl_persister_destroy(p);
            return NULL;
        }
    }
    if (pipe2(p->done_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        sl_persister_destroy(p);
        return NULL;
    }
    p->fill = &p->batches[0];
    sl_amqp_topology_defaults(&p->topology, conf->queue_max_length, conf->queue_max_bytes);
    pthread_mutex_init(&p->lock, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_init(&p->abandon, 0);
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
    if (p->dlx != NULL)
        sl_amqp_close(p->dlx);
    sl_db_close(&p->db);
    for (int i = 0; i < 3; i++) {
        if (p->batches[i].msgs != NULL)
            batch_clear(&p->batches[i]);
        free(p->batches[i].msgs);
        free(p->batches[i].tags);
        free(p->batches[i].atomic);
        sl_db_batch_free(&p->batches[i].prep);
    }
    for (int i = 0; i < 2; i++) {
        if (p->done_pipe[i] >= 0)
            close(p->done_pipe[i]);
    }
    sl_buf_free(&p->live);
    if (p->fill != NULL) { /* the locks were initialised */
        pthread_mutex_destroy(&p->lock);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
    }
    free(p);
}

/* ---- the writer thread --------------------------------------------------------------------- */

static int connect_db(sl_persister_t *p)
{
    char err[512], q[600];
    if (sl_db_connect(&p->db, p->conf.db_url, err, sizeof(err)) != SL_DB_OK ||
        sl_db_migrate(&p->db, err, sizeof(err)) != SL_DB_OK ||
        sl_db_set_timeout(&p->db, (int)p->conf.db_timeout_ms, err, sizeof(err)) != SL_DB_OK) {
        SL_WARN("event=db_connect_failed error=%s", sl_log_quote(q, sizeof(q), err));
        sl_db_close(&p->db);
        return -1;
    }
    STAT(p, p->stats.db_up = 1; p->stats.db_reconnects++);
    SL_INFO("event=db_connected server=%s schema=%d", sl_db_kind_name(p->db.kind), sl_db_schema_version(&p->db));
    return 0;
}

/* How many messages from i on are stored together when the batch is stored piece by piece: the
 * lines of an atomic delivery (a POST /v1/messages/batch) all together, anything else alone. */
static size_t group_len(const struct batch *b, size_t i)
{
    size_t k = 1;
    while (b->atomic[i] && i + k < b->n && b->atomic[i + k] && b->tags[i + k] == b->tags[i])
        k++;
    return k;
}

/* Stores msgs[i..i+k) alone (one message, or one atomic delivery) and adds to *ignored; a refusal
 * of their data by the database (poison) marks all k for the dead-letter queue (seq 0 and tag
 * kept, dead[] set). */
static int store_alone(sl_persister_t *p, struct batch *b, size_t i, size_t k, char *dead, size_t *ignored)
{
    char err[512], q[600];
    size_t stored;
    int r = sl_db_store_batch(&p->db, &b->msgs[i], k, NULL, &stored, err, sizeof(err));
    if (r == SL_DB_ERROR) {
        SL_ERROR("event=refused_by_database delivery_tag=%llu messages=%zu error=%s", (unsigned long long)b->tags[i], k,
                 sl_log_quote(q, sizeof(q), err));
        for (size_t j = i; j < i + k; j++) {
            b->msgs[j].seq = 0;
            dead[j] = 1;
        }
        return SL_DB_OK;
    }
    if (r == SL_DB_OK)
        *ignored += p->db.last_ignored;
    return r;
}

/* A transient failure: the connection is given up and the batch kept, to be tried again. */
static void transient(sl_persister_t *p, struct batch *b, const char *err)
{
    char q[600];
    int64_t now = sl_time_mono_us();
    if (err != NULL) {
        SL_WARN("event=db_transient_failure error=%s rows=%zu", sl_log_quote(q, sizeof(q), err), b->n);
        sl_db_close(&p->db);
        /* The failed statement may have been a COMMIT that went through: look the ids up next time. */
        b->prep.assume_new = 0;
    }
    STAT(p, p->stats.db_up = 0; p->stats.db_transient += err != NULL;
         if (p->stats.retrying_since == 0) p->stats.retrying_since = now);
}

/* Commits batch b, retrying through transient failures (database outages, failovers, read-only
 * or overloaded servers, timeouts) for as long as it takes, until the consumer gives it up.
 * Returns 0 when committed (the stored messages have their seq; dead[i] marks those the database
 * refused as poison), -1 when abandoned (the batch will be redelivered). */
static int store(sl_persister_t *p, struct batch *b, char *dead)
{
    char err[512], q[600];
    for (int attempt = 0;; attempt++) {
        if (p->db.conn == NULL && connect_db(p) != 0) {
            transient(p, b, NULL);
            if (given_up(p))
                return -1;
            writer_backoff(p, attempt);
            continue;
        }
        size_t stored = 0, ignored = 0;
        int64_t t0 = sl_time_mono_us();
        memset(dead, 0, b->n);
        int r = sl_db_store_batch(&p->db, b->msgs, b->n, b->prepared ? &b->prep : NULL, &stored, err, sizeof(err));
        if (r == SL_DB_OK)
            ignored = p->db.last_ignored;
        if (r == SL_DB_ERROR) {
            /* The data of something in the batch is refused (poison, SQLSTATE class 22 or 23): store
             * one by one (an atomic delivery as one) so only the culprit is dead-lettered. */
            SL_WARN("event=batch_refused rows=%zu error=%s", b->n, sl_log_quote(q, sizeof(q), err));
            STAT(p, p->stats.db_poison++);
            stored = 0;
            for (size_t i = 0, k; i < b->n && r != SL_DB_RETRY; i += k) {
                k = group_len(b, i);
                r = store_alone(p, b, i, k, dead, &ignored);
                for (size_t j = i; j < i + k; j++)
                    stored += b->msgs[j].seq != 0;
            }
            if (r != SL_DB_RETRY)
                r = SL_DB_OK;
        }
        if (r == SL_DB_OK) {
            double secs = (double)(sl_time_mono_us() - t0) / 1e6;
            size_t events = 0, ndead = 0;
            for (size_t i = 0; i < b->n; i++) {
                events += b->msgs[i].seq != 0 && b->msgs[i].type != SL_MESSAGE_NEW;
                ndead += dead[i] != 0;
            }
            STAT(p, p->stats.batches++; p->stats.rows += stored - events; p->stats.events += events;
                 p->stats.events_ignored += ignored; p->stats.duplicates += b->n - stored - ndead - ignored;
                 sl_histogram_observe(&p->stats.commit_latency, secs);
                 sl_histogram_observe(&p->stats.batch_rows, (double)b->n));
            SL_DEBUG("event=batch_committed rows=%zu stored=%zu ms=%.1f", b->n, stored, secs * 1000);
            return 0;
        }
        transient(p, b, err);
        if (given_up(p))
            return -1;
        writer_backoff(p, attempt);
    }
}

static void *writer_main(void *arg)
{
    sl_persister_t *p = arg;
    char *dead = malloc((size_t)p->conf.batch_size + SL_AMQP_MAX_LINES);
    int attempt = 0;
    if (dead == NULL) {
        SL_ERROR("event=writer_failed error=\"out of memory\"");
        abort();
    }
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (p->job_state == JOB_QUEUED) {
            struct batch *b = p->job;
            pthread_mutex_unlock(&p->mu);
            int r = store(p, b, dead);
            STAT(p, p->stats.retrying_since = 0);
            /* the refused ones go to the dead-letter queue with the ack, on the consumer's thread:
             * mark them with seq -1 */
            for (size_t i = 0; i < b->n; i++) {
                if (dead[i])
                    b->msgs[i].seq = -1;
            }
            pthread_mutex_lock(&p->mu);
            p->job_state = JOB_DONE;
            p->job_result = r;
            if (write(p->done_pipe[1], "", 1) < 0) {
                /* the pipe holds a byte already: the consumer will look */
            }
            continue;
        }
        if (p->quit)
            break;
        if (p->db.conn != NULL) {
            pthread_cond_wait(&p->cv, &p->mu);
            continue;
        }
        /* Idle and without a database: connect now (migrations, readiness), not at the first batch. */
        pthread_mutex_unlock(&p->mu);
        if (connect_db(p) == 0)
            attempt = 0;
        else
            backoff(attempt++, p->stop);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    free(dead);
    return NULL;
}

/* ---- the consumer (sl_persister_run's thread) ---------------------------------------------- */

static void drop_amqp(sl_persister_t *p, const char *why)
{
    char q[300];
    if (p->amqp == NULL)
        return;
    SL_WARN("event=amqp_connection_lost reason=%s unacked=%zu", sl_log_quote(q, sizeof(q), why), p->fill->n);
    amqp_destroy_connection(p->amqp);
    p->amqp = NULL;
    p->gen++;
    /* Unacked deliveries return to the queue with the connection: the filling batch is dropped,
     * and the writer stops retrying the one it has (if it commits anyway, the redelivered copies
     * are found stored). */
    batch_clear(p->fill);
    atomic_store(&p->abandon, 1);
    STAT(p, p->stats.amqp_up = 0);
    if (p->dlx != NULL) { /* most likely to the same node: reopen it with the next */
        amqp_destroy_connection(p->dlx);
        p->dlx = NULL;
    }
}

static int connect_amqp(sl_persister_t *p)
{
    char err[512], q[600];
    /* a node that takes TCP and never answers (stopped) costs 2 s, then the next node is tried */
    amqp_connection_state_t c =
        sl_amqp_open_next(p->conf.amqp_url, &p->amqp_cursor, "sluice-persister", 10, 2000, err, sizeof(err));
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

/* Opens the dead-letter connection (confirm mode), if it is not open. Returns 0 or -1. */
static int open_dlx(sl_persister_t *p)
{
    char err[512], q[600];
    if (p->dlx != NULL)
        return 0;
    /* no heartbeat: the connection sits idle between dead letters, unread */
    amqp_connection_state_t c =
        sl_amqp_open_next(p->conf.amqp_url, &p->dlx_cursor, "sluice-persister-dlx", 0, 2000, err, sizeof(err));
    if (c == NULL)
        goto Fail;
    amqp_confirm_select(c, SL_AMQP_CHANNEL);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        char t[256];
        snprintf(err, sizeof(err), "confirm.select: %s", sl_amqp_reply_text(r, t, sizeof(t)));
        amqp_destroy_connection(c);
        goto Fail;
    }
    p->dlx = c;
    return 0;
Fail:
    SL_WARN("event=dlx_connect_failed error=%s", sl_log_quote(q, sizeof(q), err));
    return -1;
}

/* Publishes body to the dead-letter exchange, with the reason in its x-sluice-error header, and
 * waits (up to 5 s) for the broker's confirm: only then may the original be acked. Returns 0 when
 * confirmed; -1 otherwise (the caller must then leave the original unacked, i.e. drop the
 * connection it came on, so that it comes back). */
static int dead_letter_publish(sl_persister_t *p, const void *body, size_t len, const char *why)
{
    char q[300];
    amqp_table_entry_t h[] = {{amqp_cstring_bytes("x-sluice-error"), {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes(why)}}}};
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_HEADERS_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    props.headers = (amqp_table_t){1, h};
    if (open_dlx(p) != 0)
        return -1;
    const char *fail = "publish failed";
    amqp_bytes_t bytes = {len, (void *)body};
    if (amqp_basic_publish(p->dlx, SL_AMQP_CHANNEL, amqp_cstring_bytes(p->topology.dead_exchange),
                           amqp_cstring_bytes(p->topology.persist_queue), 0, 0, &props, bytes) == AMQP_STATUS_OK) {
        for (;;) {
            amqp_frame_t f;
            struct timeval tv = {5, 0};
            if (amqp_simple_wait_frame_noblock(p->dlx, &f, &tv) != AMQP_STATUS_OK) {
                fail = "no confirm within 5 s";
                break;
            }
            if (f.frame_type != AMQP_FRAME_METHOD)
                continue;
            if (f.payload.method.id == AMQP_BASIC_ACK_METHOD)
                return 0;
            fail = f.payload.method.id == AMQP_BASIC_NACK_METHOD ? "nacked by the broker" : "unexpected frame";
            break;
        }
    }
    SL_WARN("event=dead_letter_failed reason=%s", sl_log_quote(q, sizeof(q), fail));
    amqp_destroy_connection(p->dlx);
    p->dlx = NULL;
    return -1;
}

/* Dead-letters one message (a whole delivery, or one line of it), confirmed; on failure the broker
 * connection is dropped so that its delivery comes back. Returns 0 or -1. */
static int dead_letter(sl_persister_t *p, uint64_t tag, const char *body, size_t len, const char *why)
{
    char q[300];
    if (dead_letter_publish(p, body, len, why) != 0) {
        drop_amqp(p, "could not dead-letter a message");
        return -1;
    }
    SL_ERROR("event=dead_lettered delivery_tag=%llu reason=%s", (unsigned long long)tag, sl_log_quote(q, sizeof(q), why));
    STAT(p, p->stats.dead_lettered++);
    return 0;
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

/* Adds the messages of one delivery (one per line, sl_amqp.h) to b. A line that does not decode
 * is dead-lettered (confirmed): with its whole delivery when it is the only line or the delivery
 * is atomic (SL_AMQP_ATOMIC_HEADER: all its lines or none), else alone. A delivery left with
 * nothing to commit is acked at once; the others with their batch. */
static void take_delivery(sl_persister_t *p, struct batch *b, uint64_t tag, const char *body, size_t len, int atomic)
{
    size_t first = b->n;
    const char *nl;
    size_t lines = 1, good = 0;
    for (const char *at = body; len > 0 && (nl = memchr(at, '\n', len - (size_t)(at - body))) != NULL; at = nl + 1)
        lines++;
    if (len == 0 || lines > SL_AMQP_MAX_LINES) {
        if (dead_letter(p, tag, body, len, len == 0 ? "empty message" : "more lines than SL_AMQP_MAX_LINES in one message") == 0)
            amqp_basic_ack(p->amqp, SL_AMQP_CHANNEL, tag, 0);
        return;
    }
    for (size_t off = 0, n; off <= len && p->amqp != NULL; off += n + 1) {
        const char *line = body + off;
        nl = memchr(line, '\n', len - off);
        n = nl != NULL ? (size_t)(nl - line) : len - off;
        sl_error_t err;
        if (n == 0 && lines > 1)
            continue; /* a blank line between items */
        if (sl_message_from_json(line, n, &b->msgs[b->n], &err) != 0) {
            if (atomic) { /* the lines taken so far go back too */
                while (b->n > first)
                    sl_message_clear(&b->msgs[--b->n]);
                if (dead_letter(p, tag, body, len, err.message) == 0)
                    amqp_basic_ack(p->amqp, SL_AMQP_CHANNEL, tag, 0);
                return;
            }
            dead_letter(p, tag, line, n, err.message);
            continue;
        }
        b->tags[b->n] = tag;
        b->atomic[b->n] = (char)(atomic != 0);
        b->n++;
        good++;
    }
    if (good > 0 && b->n == good)
        p->fill_deadline = sl_time_mono_us() + p->conf.batch_ms * 1000;
    if (good == 0 && p->amqp != NULL)
        amqp_basic_ack(p->amqp, SL_AMQP_CHANNEL, tag, 0); /* every line dead-lettered: nothing to commit */
}

/* Takes the deliveries that can be read without waiting into the filling batch, until it is full. */
static void take_deliveries(sl_persister_t *p)
{
    struct batch *b = p->fill;
    struct timeval now_tv = {0, 0};
    while (p->amqp != NULL && b->n < (size_t)p->conf.batch_size) {
        amqp_envelope_t env;
        amqp_maybe_release_buffers(p->amqp);
        amqp_rpc_reply_t r = amqp_consume_message(p->amqp, &env, &now_tv, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
            return;
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            handle_other_frame(p);
            continue;
        }
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            char t[256];
            drop_amqp(p, sl_amqp_reply_text(r, t, sizeof(t)));
            return;
        }
        if (env.redelivered) {
            STAT(p, p->stats.redeliveries++);
            b->redelivered = 1;
        }
        take_delivery(p, b, env.delivery_tag, env.message.body.bytes, env.message.body.len,
                      sl_amqp_is_atomic(&env.message.properties));
        amqp_destroy_envelope(&env);
    }
}

/* Publishes the newly stored messages of b (in seq order: the array's) to the live exchange as
 * one message, one JSON object per line. */
static void publish_live(sl_persister_t *p, struct batch *b)
{
    size_t count = 0;
    p->live.len = 0;
    for (size_t i = 0; i < b->n; i++) {
        if (b->msgs[i].seq <= 0)
            continue;
        if (count++ > 0)
            sl_buf_append(&p->live, "\n", 1);
        sl_message_append_json(&p->live, &b->msgs[i]);
    }
    if (count == 0)
        return;
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.content_type = amqp_cstring_bytes(SL_LIVE_CONTENT_TYPE);
    props.delivery_mode = 1; /* transient: the database is the record, sse backfills gaps from it */
    amqp_bytes_t body = {p->live.len, p->live.data};
    int st = amqp_basic_publish(p->amqp, SL_AMQP_CHANNEL, amqp_cstring_bytes(p->topology.live_exchange),
                                amqp_cstring_bytes(SL_LIVE_ROUTING_KEY), 0, 0, &props, body);
    if (st != AMQP_STATUS_OK) {
        drop_amqp(p, amqp_error_string2(st));
        return;
    }
    STAT(p, p->stats.live_published += count);
}

/* Acks batch b after its commit: the database's refusals go to the dead-letter queue first
 * (confirmed), then one multiple ack covers the batch. */
static void ack_batch(sl_persister_t *p, struct batch *b)
{
    uint64_t last = 0;
    for (size_t i = 0; i < b->n && p->amqp != NULL; i++) {
        if (b->msgs[i].seq < 0) {
            sl_buf_t line = SL_BUF_INIT;
            b->msgs[i].seq = 0;
            sl_message_append_json(&line, &b->msgs[i]);
            dead_letter(p, b->tags[i], line.data, line.len, "refused by the database");
            sl_buf_free(&line);
        }
        last = b->tags[i] > last ? b->tags[i] : last;
    }
    if (last != 0 && p->amqp != NULL && amqp_basic_ack(p->amqp, SL_AMQP_CHANNEL, last, 1) != AMQP_STATUS_OK)
        drop_amqp(p, "ack failed");
}

/* Does the part of storing b that needs no database (sl_db_batch_prepare). */
static void prepare(struct batch *b)
{
    b->prepared = sl_db_batch_prepare(&b->prep, b->msgs, b->n) == 0 ? (int)b->n + 1 : 0;
    if (b->redelivered)
        b->prep.assume_new = 0;
}

/* Hands the filling batch to the writer; a free batch (not `busy`, which is being announced)
 * becomes the filling one. The caller checked that the writer has no job. */
static void queue_job(sl_persister_t *p, const struct batch *busy)
{
    struct batch *b = p->fill;
    b->gen = p->gen;
    if (b->prepared != (int)b->n + 1) /* (a full batch was prepared while the writer was busy) */
        prepare(b);
    for (int i = 0; i < 3; i++) {
        if (&p->batches[i] != b && &p->batches[i] != busy)
            p->fill = &p->batches[i];
    }
    batch_clear(p->fill);
    atomic_store(&p->abandon, 0);
    pthread_mutex_lock(&p->mu);
    p->job = b;
    p->job_state = JOB_QUEUED;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* Takes the writer's finished job, if any, freeing the writer's slot: *done is the batch when it
 * was committed and is still on the connection that delivered it (to announce and ack), else
 * NULL. Returns 1 while a job is still in the writer's hands. */
static int take_finished(sl_persister_t *p, struct batch **done)
{
    char c[16];
    *done = NULL;
    while (read(p->done_pipe[0], c, sizeof(c)) > 0) {
    }
    pthread_mutex_lock(&p->mu);
    int state = p->job_state, result = p->job_result;
    struct batch *b = p->job;
    if (state == JOB_DONE) {
        p->job_state = JOB_NONE;
        p->job = NULL;
    }
    pthread_mutex_unlock(&p->mu);
    if (state != JOB_DONE)
        return state == JOB_QUEUED;
    if (result == 0 && p->amqp != NULL && b->gen == p->gen)
        *done = b;
    else
        batch_clear(b);
    return 0;
}

/* Announces and acks a committed batch, then frees it. */
static void announce(sl_persister_t *p, struct batch *b)
{
    if (p->amqp != NULL && b->gen == p->gen) {
        publish_live(p, b);
        ack_batch(p, b);
    }
    batch_clear(b);
}

/* take_finished and announce at once. Returns 1 while a job is still in the writer's hands. */
static int collect_job(sl_persister_t *p)
{
    struct batch *done;
    int busy = take_finished(p, &done);
    if (done != NULL)
        announce(p, done);
    return busy;
}

/* Waits up to timeout_ms for the writer's signal or (when want_amqp) the broker's socket. */
static void wait_for_work(sl_persister_t *p, int want_amqp, int timeout_ms)
{
    struct pollfd fds[2] = {{p->done_pipe[0], POLLIN, 0}, {-1, POLLIN, 0}};
    if (want_amqp && p->amqp != NULL) {
        if (amqp_frames_enqueued(p->amqp) || amqp_data_in_buffer(p->amqp))
            return;
        fds[1].fd = amqp_get_sockfd(p->amqp);
    }
    poll(fds, 2, timeout_ms);
}

/* While the filling batch is full the socket is not read, and rabbitmq-c sends heartbeats only
 * when it reads or publishes: send one now and then, so that a long database outage does not cost
 * the connection (and a redelivery of everything held). */
static void keep_alive(sl_persister_t *p)
{
    int64_t now = sl_time_mono_us();
    int hb = amqp_get_heartbeat(p->amqp);
    if (hb <= 0 || now - p->last_heartbeat < (int64_t)hb * 400000)
        return;
    p->last_heartbeat = now;
    amqp_frame_t f;
    memset(&f, 0, sizeof(f));
    f.frame_type = AMQP_FRAME_HEARTBEAT;
    f.channel = 0;
    if (amqp_send_frame(p->amqp, &f) != AMQP_STATUS_OK)
        drop_amqp(p, "heartbeat failed");
}

/* One turn of the consumer: hand over a due batch, wait for something to do, collect the
 * writer's result, read deliveries. */
static void consume_step(sl_persister_t *p)
{
    struct batch *done;
    int busy = take_finished(p, &done);
    struct batch *b = p->fill;
    int64_t now = sl_time_mono_us();
    if (!busy && b->n > 0 && (b->n >= (size_t)p->conf.batch_size || now >= p->fill_deadline)) {
        queue_job(p, done); /* the writer starts on the next batch first, */
        busy = 1;
        b = p->fill;
    }
    if (done != NULL)
        announce(p, done); /* then the last one is announced and acked (still in commit order) */
    int want_amqp = b->n < (size_t)p->conf.batch_size;
    if (busy && !want_amqp && b->prepared != (int)b->n + 1)
        prepare(b); /* full: it will not change before the writer takes it, so do it now */
    int timeout_ms = 200; /* wake now and then: heartbeats, stop */
    if (!busy && b->n > 0)
        timeout_ms = (int)((p->fill_deadline - now + 999) / 1000);
    wait_for_work(p, want_amqp, timeout_ms < 0 ? 0 : timeout_ms);
    if (want_amqp)
        take_deliveries(p);
    else if (p->amqp != NULL)
        keep_alive(p);
}

/* Waits for the writer's job to end (a commit, or an abandon when *stop and the database is
 * down) and collects it. */
static void finish_job(sl_persister_t *p)
{
    while (collect_job(p))
        wait_for_work(p, 0, 200);
}

int sl_persister_run(sl_persister_t *p, volatile sig_atomic_t *stop)
{
    int attempt = 0;
    p->stop = stop;
    if (pthread_create(&p->writer, NULL, writer_main, p) != 0) {
        SL_ERROR("event=start_failed error=\"pthread_create\"");
        return -1;
    }
    p->writer_started = 1;
    while (!*stop) {
        if (p->amqp == NULL) {
            collect_job(p); /* a job of the lost connection: nothing to ack */
            if (connect_amqp(p) != 0) {
                backoff(attempt++, stop);
                continue;
            }
            attempt = 0;
        }
        consume_step(p);
    }
    /* Stopping: what was delivered gets committed and acked if the database is there; else it
     * stays unacked and returns to the queue. */
    finish_job(p);
    if (p->fill->n > 0 && p->amqp != NULL) {
        queue_job(p, NULL);
        finish_job(p);
    }
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->writer, NULL);
    p->writer_started = 0;
    SL_INFO("event=stopped");
    return 0;
}

int sl_persister_ready(sl_persister_t *p)
{
    int ok;
    STAT(p, ok = p->stats.amqp_up && p->stats.db_up && p->stats.retrying_since == 0);
    return ok;
}

void sl_persister_render_metrics(sl_persister_t *p, sl_buf_t *b)
{
    struct stats s;
    STAT(p, s = p->stats);
    sl_metrics_one(b, "sluice_persister_batches_total", "counter", "Committed batches.", (double)s.batches);
    sl_metrics_one(b, "sluice_persister_rows_total", "counter", "Messages stored.", (double)s.rows);
    sl_metrics_one(b, "sluice_persister_events_total", "counter",
                   "Updates and deletes of messages stored.", (double)s.events);
    sl_metrics_one(b, "sluice_persister_events_ignored_total", "counter",
                   "Updates and deletes that came after their message's delete: kept in message_events_ignored, not "
                   "numbered, applied nor published.", (double)s.events_ignored);
    sl_metrics_one(b, "sluice_persister_duplicates_total", "counter",
                   "Deliveries whose id was already stored.", (double)s.duplicates);
    sl_metrics_one(b, "sluice_persister_redeliveries_total", "counter",
                   "Deliveries flagged redelivered.", (double)s.redeliveries);
    sl_metrics_one(b, "sluice_persister_dead_lettered_total", "counter",
                   "Messages sent to the dead-letter queue.", (double)s.dead_lettered);
    sl_metrics_one(b, "sluice_persister_live_published_total", "counter",
                   "Stored messages sent to the live exchange.", (double)s.live_published);
    sl_metrics_header(b, "sluice_persister_connects_total", "counter", "Successful connections by peer.");
    sl_metrics_sample(b, "sluice_persister_connects_total", "peer=\"amqp\"", (double)s.amqp_reconnects);
    sl_metrics_sample(b, "sluice_persister_connects_total", "peer=\"db\"", (double)s.db_reconnects);
    sl_metrics_histogram(b, "sluice_persister_commit_seconds", "Time to store one batch.", &s.commit_latency);
    sl_metrics_histogram(b, "sluice_persister_batch_rows", "Messages per batch.", &s.batch_rows);
    sl_metrics_header(b, "sluice_persister_db_failures_total", "counter",
                      "Database failures by class: transient (the batch is kept and tried again) or poison (the"
                      " batch is stored one message at a time and what is refused is dead-lettered).");
    sl_metrics_sample(b, "sluice_persister_db_failures_total", "class=\"transient\"", (double)s.db_transient);
    sl_metrics_sample(b, "sluice_persister_db_failures_total", "class=\"poison\"", (double)s.db_poison);
    sl_metrics_header(b, "sluice_persister_retrying_seconds", "gauge",
                      "How long the batch in hand has waited for the database (0: none waits).");
    sl_metrics_sample(b, "sluice_persister_retrying_seconds", "",
                      s.retrying_since ? (double)(sl_time_mono_us() - s.retrying_since) / 1e6 : 0.0);
    sl_metrics_one(b, "sluice_persister_ready", "gauge",
                   "1 when broker and database are connected and no batch waits for the database.",
                   s.amqp_up && s.db_up && s.retrying_since == 0);
}
