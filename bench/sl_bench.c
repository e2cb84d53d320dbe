/*
 * sl_bench: the write-path benchmark. Each subcommand measures one stage of a POST's way into the
 * database on this machine, so the services' figures can be read against what the broker, the
 * database and the client libraries manage on their own, in the same run:
 *
 *   raw-publish  rabbitmq-c publishes with confirms (a window of unconfirmed) into a quorum queue
 *                declared exactly like sluice's persist queue; then purges it;
 *   raw-insert   libpq prepared multi-row INSERTs, 1 000 rows per transaction, into a scratch
 *                table made LIKE messages;
 *   persister    pre-fills the persist queue, starts a sluice-persister on it and times the drain;
 *   post         an HTTP/1.1 keep-alive load generator (epoll) against sluice-api, closed loop or at
 *                a fixed open-loop rate, with POST -> committed latency taken from the live exchange;
 *   disk         times 8 KiB write + fdatasync on a file, as a commit or a quorum-queue write does:
 *                every durable step above waits for one, so this is the floor under their tails;
 *   reset        deletes the bench queues and live exchange (a changed x-max-length then declares).
 *
 * Every subcommand ends with one "RESULT key=value ..." line that bench/run.sh reads. Queue and
 * database names must contain "bench": the subcommands purge queues and write rows, and must never
 * do that to a real deployment's.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <curl/curl.h>
#include <libpq-fe.h>

#include "sl_amqp.h"
#include "sl_benchutil.h"
#include "sl_buf.h"
#include "sl_config.h"
#include "sl_db.h"
#include "sl_log.h"
#include "sl_message.h"
#include "sl_time.h"
#include "sl_uuid.h"

/* ---- shared ---------------------------------------------------------------------------------- */

typedef struct bench_conf {
    const char *amqp_url, *db_url, *queue, *live_exchange;
    long long max_length;
    long long max_bytes;
} bench_conf_t;

#define COMMON_OPTS(c)                                                                                                 \
    {"amqp-url", "SLUICE_AMQP_URL", SL_OPT_STR, &(c).amqp_url, "amqp://guest:guest@127.0.0.1:5672/", 0, 0,            \
     "RabbitMQ URL"},                                                                                                  \
        {"db-url", "SLUICE_DB_URL", SL_OPT_STR, &(c).db_url, "postgresql://postgres@127.0.0.1:5433/sluice_bench", 0, 0, \
         "database URL (persister: its database name must contain 'bench')"},                                        \
        {"queue", "SLUICE_BENCH_QUEUE", SL_OPT_STR, &(c).queue, "sluice.bench.persist", 0, 0,                          \
         "persist queue of the bench (purged; the name must contain 'bench')"},                                        \
        {"live-exchange", "SLUICE_BENCH_LIVE_EXCHANGE", SL_OPT_STR, &(c).live_exchange, "sluice.bench.live", 0, 0,     \
         "live exchange of the bench (the name must contain 'bench')"},                                                \
        {"queue-max-length", "SLUICE_QUEUE_MAX_LENGTH", SL_OPT_INT, &(c).max_length, "100000", 1, 1e9,                 \
         "x-max-length of the persist queue (must match the services')"}, \
        {"queue-max-bytes", "SLUICE_QUEUE_MAX_BYTES", SL_OPT_INT, &(c).max_bytes, SL_AMQP_MAX_BYTES_DEFAULT, 0, 1e12, \
         "x-max-length-bytes of the persist queue (must match the services')"}

#define TEXT_FILLER                                                                                                    \
    "sluice write-path benchmark: a message of a realistic size, about what a person types in a chat line. "           \
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore "    \
    "magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo "   \
    "consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla. "

static int parse_opts(const sl_opt_t *opts, size_t n, int argc, char **argv, const char *cmd, const char *about)
{
    char prog[64];
    snprintf(prog, sizeof(prog), "sl_bench %s", cmd);
    return sl_config_parse(opts, n, argc, argv, prog, about);
}

static int check_names(const bench_conf_t *c)
{
    if (strstr(c->queue, "bench") == NULL || strstr(c->live_exchange, "bench") == NULL) {
        fprintf(stderr, "sl_bench: queue '%s' and live exchange '%s' must contain 'bench' (they are purged)\n",
                c->queue, c->live_exchange);
        return -1;
    }
    return 0;
}

static double secs(int64_t us)
{
    return (double)us / 1e6;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array, in ms; 0 when empty. */
static double pct_ms(const int64_t *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)ceil(q * (double)n);
    i = i == 0 ? 0 : i - 1;
    return (double)v[i < n ? i : n - 1] / 1000.0;
}

static void topology(const bench_conf_t *c, sl_amqp_topology_t *t)
{
    sl_amqp_topology_defaults(t, c->max_length, c->max_bytes);
    t->persist_queue = c->queue;
    t->live_exchange = c->live_exchange;
}

/* Connection with sluice's topology declared (bench names), channel SL_AMQP_CHANNEL open. */
static amqp_connection_state_t bench_amqp(const bench_conf_t *c, const char *name)
{
    char err[512];
    sl_amqp_topology_t t;
    amqp_connection_state_t conn = sl_amqp_open(c->amqp_url, name, 0, 10000, err, sizeof(err));
    if (conn == NULL) {
        fprintf(stderr, "sl_bench: %s\n", err);
        return NULL;
    }
    topology(c, &t);
    if (sl_amqp_declare(conn, &t, err, sizeof(err)) != 0) {
        fprintf(stderr, "sl_bench: %s (run 'sl_bench reset' after changing --queue-max-length)\n", err);
        amqp_destroy_connection(conn);
        return NULL;
    }
    return conn;
}

static int rpc_ok(amqp_connection_state_t conn, const char *what)
{
    char text[256];
    amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 0;
    fprintf(stderr, "sl_bench: %s: %s\n", what, sl_amqp_reply_text(r, text, sizeof(text)));
    return -1;
}

/* Messages waiting (ready) in the queue, or -1. The queue exists: bench_amqp declared it. */
static long long queue_ready(amqp_connection_state_t conn, const char *queue)
{
    amqp_queue_declare_ok_t *ok =
        amqp_queue_declare(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
    if (ok == NULL || rpc_ok(conn, "queue.declare (passive)") != 0)
        return -1;
    return ok->message_count;
}

static long long purge(amqp_connection_state_t conn, const char *queue)
{
    amqp_queue_purge_ok_t *ok = amqp_queue_purge(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(queue));
    if (ok == NULL || rpc_ok(conn, "queue.purge") != 0)
        return -1;
    return ok->message_count;
}

/* A message as sl_message_to_json writes it, with text_len bytes of text; *id_off is where its id
 * starts, so copies can get fresh ids without encoding JSON again. malloc'd. */
static char *message_template(size_t text_len, size_t *len, size_t *id_off)
{
    sl_message_t m;
    memset(&m, 0, sizeof(m));
    strcpy(m.channel, "bench");
    strcpy(m.author, "bench");
    strcpy(m.source, "api");
    m.created_at_us = sl_time_now_us();
    if (sl_uuid_v7(m.id) != 0)
        return NULL;
    if (text_len < 1)
        text_len = 1;
    if (text_len > SL_TEXT_MAX_CHARS)
        text_len = SL_TEXT_MAX_CHARS;
    for (size_t i = 0; i < text_len; i++)
        m.text[i] = TEXT_FILLER[i % (sizeof(TEXT_FILLER) - 1)];
    char *json = sl_message_to_json(&m, len);
    char *at = json != NULL ? strstr(json, "\"id\":\"") : NULL;
    if (at == NULL) {
        free(json);
        return NULL;
    }
    *id_off = (size_t)(at - json) + 6;
    return json;
}

/* Bytes of JSON around the text of message_template, to aim at a total size. */
static size_t template_overhead(void)
{
    size_t len, off;
    char *t = message_template(1, &len, &off);
    free(t);
    return t != NULL ? len - 1 : 0;
}

static void new_id(char *at)
{
    char id[SL_UUID_STRLEN];
    sl_uuid_v7(id);
    memcpy(at, id, SL_UUID_STRLEN - 1);
}

/* ---- publishing with confirms ----------------------------------------------------------------- */

struct confirms {
    unsigned char *done; /* by delivery tag, 1..n */
    uint64_t n, next_tag, oldest, acked, nacked;
};

static void settle(struct confirms *c, uint64_t tag, int multiple, int ok)
{
    if (tag >= c->next_tag || tag == 0)
        return;
    for (uint64_t t = multiple ? c->oldest : tag; t <= tag; t++) {
        if (!c->done[t]) {
            c->done[t] = 1;
            if (ok)
                c->acked++;
            else
                c->nacked++;
        }
    }
    while (c->oldest < c->next_tag && c->done[c->oldest])
        c->oldest++;
}

/* Returns 0, or -1 when the broker closed the channel or connection. */
static int confirm_frame(struct confirms *c, const amqp_frame_t *f)
{
    if (f->frame_type != AMQP_FRAME_METHOD)
        return 0;
    switch (f->payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
        const amqp_basic_ack_t *m = f->payload.method.decoded;
        settle(c, m->delivery_tag, m->multiple, 1);
        return 0;
    }
    case AMQP_BASIC_NACK_METHOD: {
        const amqp_basic_nack_t *m = f->payload.method.decoded;
        settle(c, m->delivery_tag, m->multiple, 0);
        return 0;
    }
    case AMQP_CHANNEL_CLOSE_METHOD:
    case AMQP_CONNECTION_CLOSE_METHOD:
        fprintf(stderr, "sl_bench: the broker closed the channel or connection while publishing\n");
        return -1;
    default:
        return 0;
    }
}

/* Publishes n copies of body (persistent, application/json, message id = the body's id) to the
 * default exchange with routing key queue, each with a fresh id at id_off, keeping at most window
 * unconfirmed. Fills *c; returns the microseconds from the first publish to the last confirm, or
 * -1. */
/* Publishes n messages of body (len bytes) with confirms, window unconfirmed at most. body holds
 * `lines` items of stride bytes each (sl_amqp.h: one per line), each with its id at id_off: every
 * item gets a fresh id before each publish. */
static int64_t publish_confirmed(amqp_connection_state_t conn, const char *queue, char *body, size_t len,
                                 size_t id_off, size_t lines, size_t stride, uint64_t n, uint64_t window,
                                 struct confirms *c)
{
    amqp_basic_properties_t props;
    char msgid[SL_UUID_STRLEN];
    int64_t t0, ret = -1;

    memset(c, 0, sizeof(*c));
    c->n = n;
    c->next_tag = c->oldest = 1;
    if ((c->done = calloc(n + 2, 1)) == NULL)
        return -1;
    amqp_confirm_select(conn, SL_AMQP_CHANNEL);
    if (rpc_ok(conn, "confirm.select") != 0)
        goto Exit;
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    amqp_bytes_t b = {len, body}, rk = amqp_cstring_bytes(queue);

    t0 = sl_time_mono_us();
    while (c->oldest <= n) {
        while (c->next_tag <= n && c->next_tag - c->oldest < window) {
            for (size_t k = 0; k < lines; k++)
                new_id(body + k * stride + id_off);
            memcpy(msgid, body + id_off, SL_UUID_STRLEN - 1);
            msgid[SL_UUID_STRLEN - 1] = '\0';
            props.message_id = amqp_cstring_bytes(msgid);
            int st = amqp_basic_publish(conn, SL_AMQP_CHANNEL, amqp_empty_bytes, rk, 0, 0, &props, b);
            if (st != AMQP_STATUS_OK) {
                fprintf(stderr, "sl_bench: publish: %s\n", amqp_error_string2(st));
                goto Exit;
            }
            c->next_tag++;
        }
        /* Wait for one confirm (the window is full or everything is sent), then take what else
         * has arrived without waiting. */
        amqp_frame_t f;
        struct timeval wait = {30, 0};
        int st = amqp_simple_wait_frame_noblock(conn, &f, &wait);
        while (st == AMQP_STATUS_OK) {
            if (confirm_frame(c, &f) != 0)
                goto Exit;
            struct timeval zero = {0, 0};
            st = amqp_simple_wait_frame_noblock(conn, &f, &zero);
        }
        if (st != AMQP_STATUS_TIMEOUT) {
            fprintf(stderr, "sl_bench: waiting for confirms: %s\n", amqp_error_string2(st));
            goto Exit;
        }
        amqp_maybe_release_buffers(conn);
    }
    ret = sl_time_mono_us() - t0;
Exit:
    free(c->done);
    c->done = NULL;
    return ret;
}

/* ---- raw-publish ------------------------------------------------------------------------------ */

static int cmd_raw_publish(int argc, char **argv)
{
    bench_conf_t c;
    long long count, window, size;
    sl_opt_t opts[] = {
        COMMON_OPTS(c),
        {"count", NULL, SL_OPT_INT, &count, "100000", 1, 1e8, "messages to publish (at most x-max-length)"},
        {"window", NULL, SL_OPT_INT, &window, "1000", 1, 1e6, "unconfirmed publishes in flight"},
        {"size", NULL, SL_OPT_INT, &size, "200", 160, 2000, "bytes per message (a valid message JSON, padded)"},
    };
    int r = parse_opts(opts, sizeof(opts) / sizeof(opts[0]), argc, argv, "raw-publish",
                       "rabbitmq-c publish with confirms into the persist queue (no consumer), then purge it.");
    if (r != 0)
        return r > 0 ? 0 : 2;
    if (check_names(&c) != 0)
        return 2;
    if (count > c.max_length) {
        fprintf(stderr, "sl_bench: --count %lld exceeds the queue's x-max-length %lld: the excess would be nacked\n",
                count, c.max_length);
        return 2;
    }
    amqp_connection_state_t conn = bench_amqp(&c, "sluice-bench-raw-publish");
    if (conn == NULL)
        return 1;
    size_t len, id_off, over = template_overhead();
    char *body = message_template((size_t)size > over ? (size_t)size - over : 1, &len, &id_off);
    struct confirms cf;
    int ret = 1;
    long long before = body != NULL ? purge(conn, c.queue) : -1;
    if (before < 0)
        goto Exit;
    int64_t us = publish_confirmed(conn, c.queue, body, len, id_off, 1, len, (uint64_t)count, (uint64_t)window, &cf);
    if (us <= 0)
        goto Exit;
    long long purged = purge(conn, c.queue);
    double rate = (double)count / secs(us);
    printf("raw-publish: %lld messages of %zu B into quorum queue %s, window %lld: %.0f msg/s (%.2f s), "
           "acked %llu, nacked %llu; purged %lld\n",
           count, len, c.queue, window, rate, secs(us), (unsigned long long)cf.acked, (unsigned long long)cf.nacked,
           purged);
    printf("RESULT raw_publish_per_s=%.0f raw_publish_nacked=%llu raw_publish_bytes=%zu\n", rate,
           (unsigned long long)cf.nacked, len);
    ret = cf.nacked == 0 ? 0 : 1;
Exit:
    free(body);
    sl_amqp_close(conn);
    return ret;
}

/* ---- database helpers ------------------------------------------------------------------------- */

static int db_exec(sl_db_t *db, const char *sql)
{
    PGresult *res = PQexec(db->conn, sql);
    ExecStatusType st = PQresultStatus(res);
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "sl_bench: %s: %s", sql, PQerrorMessage(db->conn));
    PQclear(res);
    return ok ? 0 : -1;
}

/* The first column of the first row of sql as an integer, or -1. */
static long long db_int(sl_db_t *db, const char *sql)
{
    PGresult *res = PQexec(db->conn, sql);
    long long v = -1;
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
        v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    else
        fprintf(stderr, "sl_bench: %s: %s", sql, PQerrorMessage(db->conn));
    PQclear(res);
    return v;
}

/* Connected, with sluice's schema applied. */
static int db_open(sl_db_t *db, const char *url)
{
    char err[512];
    if (sl_db_connect(db, url, err, sizeof(err)) != SL_DB_OK || sl_db_migrate(db, err, sizeof(err)) != SL_DB_OK) {
        fprintf(stderr, "sl_bench: database: %s\n", err);
        sl_db_close(db);
        return -1;
    }
    return 0;
}

/* ---- raw-insert ------------------------------------------------------------------------------- */

#define NCOLS 7

static int cmd_raw_insert(int argc, char **argv)
{
    bench_conf_t c;
    long long rows, batch, text_len;
    sl_opt_t opts[] = {
        COMMON_OPTS(c),
        {"rows", NULL, SL_OPT_INT, &rows, "200000", 1, 1e8, "rows to insert (rounded up to whole batches)"},
        {"batch", NULL, SL_OPT_INT, &batch, "1000", 1, 9000, "rows per INSERT and per transaction"},
        {"text-bytes", NULL, SL_OPT_INT, &text_len, "150", 1, SL_TEXT_MAX_CHARS, "bytes of body per row"},
    };
    int r = parse_opts(opts, sizeof(opts) / sizeof(opts[0]), argc, argv, "raw-insert",
                       "libpq prepared multi-row INSERT into a scratch copy of the messages table.");
    if (r != 0)
        return r > 0 ? 0 : 2;
    sl_db_t db;
    if (db_open(&db, c.db_url) != 0)
        return 1;

    int ret = 1;
    size_t nb = (size_t)((rows + batch - 1) / batch), per = (size_t)batch;
    sl_buf_t sql = SL_BUF_INIT;
    const char **params = calloc(per * NCOLS, sizeof(*params));
    char(*ids)[SL_UUID_STRLEN] = calloc(per, SL_UUID_STRLEN);
    char(*seqs)[24] = calloc(per, 24);
    char text[SL_TEXT_MAX_CHARS + 1], ts[SL_TIME_RFC3339_LEN];
    if (params == NULL || ids == NULL || seqs == NULL)
        goto Exit;
    for (long long i = 0; i < text_len; i++)
        text[i] = TEXT_FILLER[(size_t)i % (sizeof(TEXT_FILLER) - 1)];
    text[text_len] = '\0';
    sl_time_format(sl_time_now_us(), ts);

    /* LIKE ... INCLUDING ALL copies the columns, defaults, primary key and indexes of messages as
     * the migrations made them, so the scratch table follows the schema without repeating it. */
    if (db_exec(&db, "DROP TABLE IF EXISTS sl_bench_insert") != 0 ||
        db_exec(&db, "CREATE TABLE sl_bench_insert (LIKE messages INCLUDING ALL)") != 0)
        goto Exit;
    sl_buf_appends(&sql, "INSERT INTO sl_bench_insert (id, seq, channel, author, body, source, created_at) VALUES ");
    for (size_t i = 0; i < per; i++) {
        size_t p = i * NCOLS;
        sl_buf_appendf(&sql, "%s($%zu,$%zu,$%zu,$%zu,$%zu,$%zu,$%zu)", i ? "," : "", p + 1, p + 2, p + 3, p + 4, p + 5,
                       p + 6, p + 7);
    }
    PGresult *res = PQprepare(db.conn, "bench_insert", sql.data, (int)(per * NCOLS), NULL);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        fprintf(stderr, "sl_bench: prepare: %s", PQerrorMessage(db.conn));
        PQclear(res);
        goto Exit;
    }
    PQclear(res);
    for (size_t i = 0; i < per; i++) {
        const char **p = &params[i * NCOLS];
        p[0] = ids[i];
        p[1] = seqs[i];
        p[2] = "bench";
        p[3] = "bench-raw";
        p[4] = text;
        p[5] = "api";
        p[6] = ts;
    }

    int64_t t0 = sl_time_mono_us();
    long long seq = 0;
    for (size_t b = 0; b < nb; b++) {
        for (size_t i = 0; i < per; i++) {
            sl_uuid_v7(ids[i]);
            snprintf(seqs[i], sizeof(seqs[i]), "%lld", ++seq);
        }
        if (db_exec(&db, "BEGIN") != 0)
            goto Exit;
        res = PQexecPrepared(db.conn, "bench_insert", (int)(per * NCOLS), params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            fprintf(stderr, "sl_bench: insert: %s", PQerrorMessage(db.conn));
            PQclear(res);
            goto Exit;
        }
        PQclear(res);
        if (db_exec(&db, "COMMIT") != 0)
            goto Exit;
    }
    int64_t us = sl_time_mono_us() - t0;
    double rate = (double)seq / secs(us);
    printf("raw-insert: %lld rows in %zu transactions of %zu (prepared multi-row INSERT, %lld B body): %.0f rows/s "
           "(%.2f s)\n",
           seq, nb, per, text_len, rate, secs(us));
    printf("RESULT raw_insert_per_s=%.0f\n", rate);
    ret = 0;
Exit:
    if (db.conn != NULL)
        db_exec(&db, "DROP TABLE IF EXISTS sl_bench_insert");
    sl_buf_free(&sql);
    free(params);
    free(ids);
    free(seqs);
    sl_db_close(&db);
    return ret;
}

/* ---- persister -------------------------------------------------------------------------------- */

static int db_name_is_bench(const char *url)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &errmsg);
    int ok = 0;
    if (opts == NULL) {
        fprintf(stderr, "sl_bench: bad database URL: %s\n", errmsg != NULL ? errmsg : "out of memory");
        PQfreemem(errmsg);
        return 0;
    }
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "dbname") == 0 && o->val != NULL && strstr(o->val, "bench") != NULL)
            ok = 1;
    }
    PQconninfoFree(opts);
    if (!ok)
        fprintf(stderr, "sl_bench: the database name in '%s' must contain 'bench' (rows are written there)\n", url);
    return ok;
}

/* Saves http://127.0.0.1:port/metrics into path. Returns 0 or -1. */
static int save_metrics(long long port, const char *path)
{
    char url[64];
    FILE *f = fopen(path, "w");
    CURL *h = curl_easy_init();
    int ok = 0;
    if (f != NULL && h != NULL) {
        snprintf(url, sizeof(url), "http://127.0.0.1:%lld/metrics", port);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, f);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 2000L);
        curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
        ok = curl_easy_perform(h) == CURLE_OK;
    }
    if (h != NULL)
        curl_easy_cleanup(h);
    if (f != NULL && fclose(f) != 0)
        ok = 0;
    if (!ok)
        fprintf(stderr, "sl_bench: could not save the persister's metrics to %s\n", path);
    return ok ? 0 : -1;
}

static pid_t spawn_persister(const char *bin, const bench_conf_t *c, long long port)
{
    char maxlen[24], portstr[24];
    snprintf(maxlen, sizeof(maxlen), "%lld", c->max_length);
    snprintf(portstr, sizeof(portstr), "%lld", port);
    fflush(NULL);
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* The child: single-threaded, so setenv before exec is safe. */
    setenv("SLUICE_AMQP_URL", c->amqp_url, 1);
    setenv("SLUICE_DB_URL", c->db_url, 1);
    setenv("SLUICE_QUEUE", c->queue, 1);
    setenv("SLUICE_LIVE_EXCHANGE", c->live_exchange, 1);
    setenv("SLUICE_QUEUE_MAX_LENGTH", maxlen, 1);
    setenv("SLUICE_PERSISTER_PORT", portstr, 1);
    execl(bin, bin, (char *)NULL);
    fprintf(stderr, "sl_bench: exec %s: %s\n", bin, strerror(errno));
    _exit(127);
}

/* Stops the child; returns the CPU seconds (user + system) it used. */
static double stop_child(pid_t pid)
{
    int status;
    struct rusage ru;
    memset(&ru, 0, sizeof(ru));
    kill(pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        if (wait4(pid, &status, WNOHANG, &ru) == pid)
            goto Done;
        sleep_ms(50);
    }
    kill(pid, SIGKILL);
    wait4(pid, &status, 0, &ru);
Done:
    return bu_cpu_s(&ru);
}

static int cmd_persister(int argc, char **argv)
{
    bench_conf_t c;
    long long count, window, text_len, timeout_s, port, lines;
    const char *bin, *metrics;
    sl_opt_t opts[] = {
        COMMON_OPTS(c),
        {"count", NULL, SL_OPT_INT, &count, "100000", 1, 1e8, "messages to pre-fill and drain (at most x-max-length)"},
        {"window", NULL, SL_OPT_INT, &window, "1000", 1, 1e6, "unconfirmed publishes while pre-filling"},
        {"text-bytes", NULL, SL_OPT_INT, &text_len, "150", 1, SL_TEXT_MAX_CHARS, "bytes of text per message"},
        {"lines", NULL, SL_OPT_INT, &lines, "1", 1, SL_AMQP_MAX_LINES,
         "posts per AMQP message, one per line (the api sends a loop turn's posts together)"},
        {"persister-bin", NULL, SL_OPT_STR, &bin, "build/bin/sluice-persister", 0, 0, "the persister to run"},
        {"timeout", NULL, SL_OPT_INT, &timeout_s, "120", 1, 3600, "seconds to wait for the drain"},
        {"persister-port", NULL, SL_OPT_INT, &port, "0", 0, 65535, "the persister's /metrics port (0: none)"},
        {"metrics-out", NULL, SL_OPT_STR, &metrics, NULL, 0, 0,
         "file for the persister's /metrics at the end of the drain (needs --persister-port)"},
    };
    int r = parse_opts(opts, sizeof(opts) / sizeof(opts[0]), argc, argv, "persister",
                       "Pre-fills the persist queue, runs a sluice-persister on it, times the drain into the database.");
    if (r != 0)
        return r > 0 ? 0 : 2;
    if (check_names(&c) != 0 || !db_name_is_bench(c.db_url))
        return 2;
    if (count > c.max_length) {
        fprintf(stderr, "sl_bench: --count %lld exceeds the queue's x-max-length %lld\n", count, c.max_length);
        return 2;
    }
    if (access(bin, X_OK) != 0) {
        fprintf(stderr, "sl_bench: %s: %s\n", bin, strerror(errno));
        return 2;
    }

    sl_db_t db;
    amqp_connection_state_t conn = NULL;
    char *body = NULL;
    pid_t pid = -1;
    int ret = 1;
    if (db_open(&db, c.db_url) != 0)
        return 1;
    long long seq0 = db_int(&db, "SELECT last_seq FROM sluice_feed WHERE id = 1");
    if (seq0 < 0)
        goto Exit;
    if ((conn = bench_amqp(&c, "sluice-bench-prefill")) == NULL)
        goto Exit;
    /* A consumer on the queue would make this a different measurement. */
    amqp_queue_declare_ok_t *q =
        amqp_queue_declare(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(c.queue), 1, 0, 0, 0, amqp_empty_table);
    if (q == NULL || rpc_ok(conn, "queue.declare (passive)") != 0)
        goto Exit;
    if (q->consumer_count > 0) {
        fprintf(stderr, "sl_bench: queue %s has %u consumer(s): stop the persister using it first\n", c.queue,
                q->consumer_count);
        goto Exit;
    }
    size_t len, id_off;
    struct confirms cf;
    if ((body = message_template((size_t)text_len, &len, &id_off)) == NULL || purge(conn, c.queue) < 0)
        goto Exit;
    /* lines items per message, as the api sends a loop turn's posts together */
    size_t stride = len + 1, multi_len = (size_t)lines * stride - 1;
    char *multi = malloc(multi_len + 1);
    if (multi == NULL)
        goto Exit;
    for (long long k = 0; k < lines; k++) {
        memcpy(multi + k * stride, body, len);
        multi[k * stride + len] = '\n';
    }
    int64_t fill_us = publish_confirmed(conn, c.queue, multi, multi_len, id_off, (size_t)lines, stride,
                                        (uint64_t)(count / lines), (uint64_t)window, &cf);
    free(multi);
    if (fill_us <= 0 || cf.nacked > 0) {
        fprintf(stderr, "sl_bench: pre-filling failed (nacked %llu)\n", (unsigned long long)cf.nacked);
        goto Exit;
    }
    count = count / lines * lines;
    printf("persister: pre-filled %s with %lld posts of %zu B, %lld per AMQP message (%.0f posts/s)\n", c.queue,
           count, len, lines, (double)count / secs(fill_us));

    /* The feed counter is gapless and advances in the committing transaction: it tells how many
     * rows are stored without a count(*) over a growing table stealing the CPU being measured. */
    int64_t t_spawn = sl_time_mono_us(), t_first = 0, t_done = 0, deadline = t_spawn + timeout_s * 1000000;
    long long at_first = 0, stored = 0;
    if ((pid = spawn_persister(bin, &c, port)) < 0) {
        fprintf(stderr, "sl_bench: fork: %s\n", strerror(errno));
        goto Exit;
    }
    while (sl_time_mono_us() < deadline) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "sl_bench: the persister exited early (status %d)\n", status);
            pid = -1;
            goto Exit;
        }
        long long s = db_int(&db, "SELECT last_seq FROM sluice_feed WHERE id = 1");
        int64_t now = sl_time_mono_us();
        if (s < 0)
            goto Exit;
        stored = s - seq0;
        if (stored > 0 && t_first == 0) {
            t_first = now;
            at_first = stored;
        }
        if (stored >= count) {
            t_done = now;
            break;
        }
        sleep_ms(10);
    }
    if (t_done != 0 && port > 0 && metrics != NULL)
        save_metrics(port, metrics);
    double cpu = stop_child(pid);
    pid = -1;
    if (t_done == 0) {
        fprintf(stderr, "sl_bench: only %lld of %lld rows stored within %lld s\n", stored, count, timeout_s);
        goto Exit;
    }
    /* the rows stored since (older ones may be going meanwhile: SLUICE_RETENTION, bench/retention_run.sh) */
    char counted[96];
    snprintf(counted, sizeof(counted), "SELECT count(*) FROM messages WHERE seq > %lld", seq0);
    long long rows = db_int(&db, counted);
    double total = (double)count / secs(t_done - t_spawn);
    double steady = t_done > t_first ? (double)(count - at_first) / secs(t_done - t_first) : total;
    printf("persister: drained %lld messages into the database: %.0f rows/s from the first commit seen "
           "(%.2f s), %.0f rows/s including start-up (%.2f s); rows added %lld\n",
           count, steady, secs(t_done - t_first), total, secs(t_done - t_spawn), rows);
    printf("persister: the persister process used %.2f s of CPU (%.0f%% of one core over the drain)\n", cpu,
           100.0 * cpu / secs(t_done - t_spawn));
    printf("RESULT persister_per_s=%.0f persister_total_per_s=%.0f persister_rows=%lld persister_cpu_pct=%.0f\n",
           steady, total, rows, 100.0 * cpu / secs(t_done - t_spawn));
    ret = rows == count ? 0 : 1;
    if (rows != count)
        fprintf(stderr, "sl_bench: expected %lld new rows, found %lld\n", count, rows);
Exit:
    if (pid > 0)
        stop_child(pid);
    free(body);
    if (conn != NULL)
        sl_amqp_close(conn);
    sl_db_close(&db);
    return ret;
}

/* ---- post: the live-exchange side ------------------------------------------------------------- */

struct stamp {
    char id[SL_UUID_STRLEN];
    int64_t t_us;
};

struct live {
    amqp_connection_state_t conn;
    pthread_t thread;
    atomic_int stop;
    atomic_size_t n;
    pthread_mutex_t lock; /* guards recs while the thread runs */
    struct stamp *recs;
    size_t cap;
    char err[256];
};

static int push_stamp(struct stamp **v, size_t *n, size_t *cap, const char *id, int64_t t)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 65536;
        struct stamp *nv = realloc(*v, nc * sizeof(*nv));
        if (nv == NULL)
            return -1;
        *v = nv;
        *cap = nc;
    }
    memcpy((*v)[*n].id, id, SL_UUID_STRLEN);
    (*v)[*n].t_us = t;
    (*n)++;
    return 0;
}

/* Copies the UUID after "key":" in buf into out; 0, or -1 when there is none. */
static int find_id(const char *buf, size_t len, char out[SL_UUID_STRLEN])
{
    static const char key[] = "\"id\":\"";
    const char *at = memmem(buf, len, key, sizeof(key) - 1);
    if (at == NULL)
        return -1;
    at += sizeof(key) - 1;
    if ((size_t)(at - buf) + SL_UUID_STRLEN - 1 > len || !sl_uuid_valid(at, SL_UUID_STRLEN - 1))
        return -1;
    memcpy(out, at, SL_UUID_STRLEN - 1);
    out[SL_UUID_STRLEN - 1] = '\0';
    return 0;
}

static void *live_main(void *arg)
{
    struct live *l = arg;
    while (!atomic_load(&l->stop)) {
        amqp_envelope_t env;
        struct timeval tv = {0, 100000};
        amqp_maybe_release_buffers(l->conn);
        amqp_rpc_reply_t r = amqp_consume_message(l->conn, &env, &tv, 0);
        int64_t now = sl_time_mono_us();
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
            continue;
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            amqp_frame_t f;
            struct timeval one = {1, 0};
            if (amqp_simple_wait_frame_noblock(l->conn, &f, &one) != AMQP_STATUS_OK) {
                snprintf(l->err, sizeof(l->err), "live consumer: frame read failed");
                break;
            }
            continue;
        }
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            char t[200];
            snprintf(l->err, sizeof(l->err), "live consumer: %s", sl_amqp_reply_text(r, t, sizeof(t)));
            break;
        }
        /* one committed batch: one message per line (sl_amqp.h) */
        const char *line = env.message.body.bytes, *end = line + env.message.body.len;
        int bad = 0;
        pthread_mutex_lock(&l->lock);
        size_t n = atomic_load(&l->n);
        while (line < end && !bad) {
            const char *nl = memchr(line, '\n', (size_t)(end - line));
            const char *line_end = nl != NULL ? nl : end;
            char id[SL_UUID_STRLEN];
            if (find_id(line, (size_t)(line_end - line), id) == 0)
                bad = push_stamp(&l->recs, &n, &l->cap, id, now);
            line = line_end + 1;
        }
        atomic_store(&l->n, n);
        pthread_mutex_unlock(&l->lock);
        amqp_destroy_envelope(&env);
        if (bad) {
            snprintf(l->err, sizeof(l->err), "live consumer: out of memory");
            break;
        }
    }
    return NULL;
}

/* Waits (up to 60 s) for the persist queue to be empty, so that a run starts from the same state
 * and what the live exchange announces next belongs to it. Returns 0 or -1. */
static int wait_queue_empty(const bench_conf_t *c)
{
    long long waiting = -1;
    amqp_connection_state_t conn = bench_amqp(c, "sluice-bench-wait");
    if (conn == NULL)
        return -1;
    for (int i = 0; i < 600 && (waiting = queue_ready(conn, c->queue)) > 0; i++)
        sleep_ms(100);
    sl_amqp_close(conn);
    if (waiting != 0)
        fprintf(stderr, "sl_bench: queue %s still holds %lld messages: is its persister running?\n", c->queue,
                waiting);
    return waiting == 0 ? 0 : -1;
}

/* Binds an exclusive auto-delete queue to the live exchange with "#" and consumes it in a thread
 * that stamps each message with its arrival time. */
static int live_start(struct live *l, const bench_conf_t *c)
{
    memset(l, 0, sizeof(*l));
    pthread_mutex_init(&l->lock, NULL);
    if ((l->conn = bench_amqp(c, "sluice-bench-live")) == NULL)
        return -1;
    amqp_queue_declare_ok_t *q =
        amqp_queue_declare(l->conn, SL_AMQP_CHANNEL, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
    if (q == NULL || rpc_ok(l->conn, "declare live queue") != 0)
        return -1;
    amqp_bytes_t name = amqp_bytes_malloc_dup(q->queue);
    amqp_queue_bind(l->conn, SL_AMQP_CHANNEL, name, amqp_cstring_bytes(c->live_exchange), amqp_cstring_bytes("#"),
                    amqp_empty_table);
    int bad = rpc_ok(l->conn, "bind live queue");
    if (!bad) {
        amqp_basic_consume(l->conn, SL_AMQP_CHANNEL, name, amqp_empty_bytes, 0, 1, 1, amqp_empty_table);
        bad = rpc_ok(l->conn, "consume live queue");
    }
    amqp_bytes_free(name);
    if (bad)
        return -1;
    if (pthread_create(&l->thread, NULL, live_main, l) != 0) {
        fprintf(stderr, "sl_bench: pthread_create failed\n");
        return -1;
    }
    return 0;
}

static void live_stop(struct live *l)
{
    atomic_store(&l->stop, 1);
    pthread_join(l->thread, NULL);
}

static int cmp_stamp(const void *a, const void *b)
{
    const struct stamp *x = a, *y = b;
    int c = strcmp(x->id, y->id);
    return c != 0 ? c : (x->t_us > y->t_us) - (x->t_us < y->t_us);
}

/* Matches the sent stamps (sorted here) with the live ones (a copy, sorted): lat gets the
 * committed latency of each sent id seen on the live exchange, lat_t (when not NULL) its scheduled
 * send time. Returns how many matched. */
static size_t match(struct stamp *sent, size_t nsent, struct stamp *live, size_t nlive, int64_t *lat, int64_t *lat_t)
{
    size_t i = 0, j = 0, m = 0;
    qsort(sent, nsent, sizeof(*sent), cmp_stamp);
    qsort(live, nlive, sizeof(*live), cmp_stamp);
    while (i < nsent && j < nlive) {
        int cmp = strcmp(sent[i].id, live[j].id);
        if (cmp < 0) {
            i++;
        } else if (cmp > 0) {
            j++;
        } else {
            if (lat_t != NULL)
                lat_t[m] = sent[i].t_us;
            lat[m++] = live[j].t_us - sent[i].t_us;
            i++;
            while (j < nlive && strcmp(live[j].id, sent[i - 1].id) == 0)
                j++;
        }
    }
    return m;
}

/* ---- post: the HTTP side ---------------------------------------------------------------------- */

enum { C_CONNECTING, C_IDLE, C_BUSY, C_DEAD };

struct conn {
    int fd, state, want_out, close_after;
    char wbuf[768];
    size_t wlen, woff;
    char rbuf[8192];
    size_t rlen;
    int64_t t_intended;
};

struct load {
    struct conn *conns;
    size_t nconns;
    int ep;
    struct sockaddr_in addr;
    char host[80];
    long long count, rate, text_len;
    int64_t t0, t0_real; /* the run's start, CLOCK_MONOTONIC and CLOCK_REALTIME */
    uint64_t issued, done, due;
    uint64_t n202, n429, n503, nother, nerr, reconnects;
    struct stamp *sent;
    size_t nsent, capsent;
    int64_t *http_lat; /* POST -> 202 of each accepted POST */
    int64_t *http_t;   /* and its scheduled send time (for --timeline) */
    size_t nhttp;
    int64_t *lag;      /* actual - scheduled send time of each POST (open loop) */
    struct conn **idle;
    size_t idle_head, nidle; /* a FIFO ring: every connection is used in turn and none idles into
                              * the server's keep-alive timeout */
    uint64_t max_backlog;
    char text[SL_TEXT_MAX_CHARS + 1];
};

static int64_t intended_time(const struct load *L, uint64_t k)
{
    return L->t0 + (int64_t)((double)k * 1e6 / (double)L->rate);
}

static void ep_mod(struct load *L, struct conn *c, int out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (c->want_out != out) {
        epoll_ctl(L->ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = out;
    }
}

static int conn_open(struct load *L, struct conn *c)
{
    int one = 1;
    c->rlen = c->wlen = c->woff = 0;
    c->close_after = 0;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&L->addr, sizeof(L->addr)) != 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    c->state = C_CONNECTING;
    c->want_out = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(L->ep, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

static void conn_became_idle(struct load *L, struct conn *c);

static void idle_push(struct load *L, struct conn *c)
{
    L->idle[(L->idle_head + L->nidle++) % L->nconns] = c;
}

static struct conn *idle_pop(struct load *L)
{
    struct conn *c = L->idle[L->idle_head];
    L->idle_head = (L->idle_head + 1) % L->nconns;
    L->nidle--;
    return c;
}

/* The connection broke: its request (if any) counts as an error; open a new one. An idle one
 * closed by the server (h2o ends keep-alive connections idle for 10 s) is only replaced. */
static void conn_fail(struct load *L, struct conn *c)
{
    if (c->state == C_BUSY) {
        L->nerr++;
        L->done++;
    } else if (c->state == C_IDLE) {
        size_t n = L->nidle;
        for (size_t i = 0; i < n; i++) {
            struct conn *x = idle_pop(L);
            if (x != c)
                idle_push(L, x);
        }
    }
    if (c->fd >= 0) {
        epoll_ctl(L->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    c->state = C_DEAD;
    if (L->reconnects++ < 10000 && conn_open(L, c) == 0)
        return;
}

static void flush_write(struct load *L, struct conn *c)
{
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n > 0) {
            c->woff += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ep_mod(L, c, 1);
            return;
        } else {
            conn_fail(L, c);
            return;
        }
    }
    ep_mod(L, c, 0);
}

static void start_request(struct load *L, struct conn *c, int64_t intended)
{
    char body[SL_TEXT_MAX_CHARS + 128];
    int bl = snprintf(body, sizeof(body), "{\"channel\":\"bench\",\"author\":\"bench-%llu\",\"text\":\"%s\"}",
                      (unsigned long long)L->issued, L->text);
    int n = snprintf(c->wbuf, sizeof(c->wbuf),
                     "POST /v1/messages HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\n\r\n%s",
                     L->host, bl, body);
    c->wlen = n > 0 && (size_t)n < sizeof(c->wbuf) ? (size_t)n : 0;
    c->woff = 0;
    c->state = C_BUSY;
    c->t_intended = intended;
    L->lag[L->issued] = sl_time_mono_us() - intended;
    L->issued++;
    flush_write(L, c);
}

static void on_response(struct load *L, struct conn *c, int status, const char *body, size_t len)
{
    int64_t now = sl_time_mono_us();
    char id[SL_UUID_STRLEN];
    L->done++;
    c->state = C_IDLE;
    switch (status) {
    case 202:
        L->n202++;
        L->http_t[L->nhttp] = c->t_intended;
        L->http_lat[L->nhttp++] = now - c->t_intended;
        if (find_id(body, len, id) == 0)
            push_stamp(&L->sent, &L->nsent, &L->capsent, id, c->t_intended);
        break;
    case 429:
        L->n429++;
        break;
    case 503:
        L->n503++;
        break;
    default:
        L->nother++;
        if (L->nother <= 3)
            fprintf(stderr, "sl_bench: HTTP %d: %.*s\n", status, (int)(len < 300 ? len : 300), body);
        break;
    }
}

/* Parses complete responses in c->rbuf (Content-Length framing only: h2o sends it for every
 * answer of sluice's). Returns -1 on a framing the tool does not speak. */
static int parse_responses(struct load *L, struct conn *c)
{
    for (;;) {
        char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
        if (end == NULL)
            return c->rlen < sizeof(c->rbuf) ? 0 : -1;
        size_t hlen = (size_t)(end - c->rbuf) + 4;
        if (c->rlen < 12 || memcmp(c->rbuf, "HTTP/1.", 7) != 0)
            return -1;
        int status = atoi(c->rbuf + 9);
        long clen = -1;
        for (char *line = memchr(c->rbuf, '\n', hlen); line != NULL && line + 1 < end;
             line = memchr(line + 1, '\n', (size_t)(end - line - 1))) {
            const char *h = line + 1;
            if (strncasecmp(h, "content-length:", 15) == 0)
                clen = strtol(h + 15, NULL, 10);
            else if (strncasecmp(h, "transfer-encoding:", 18) == 0)
                return -1;
            else if (strncasecmp(h, "connection:", 11) == 0 && strncasecmp(h + 11, " close", 6) == 0)
                c->close_after = 1;
        }
        if (clen < 0)
            return -1;
        if (c->rlen < hlen + (size_t)clen)
            return c->rlen < sizeof(c->rbuf) ? 0 : -1;
        if (c->state != C_BUSY)
            return -1; /* an answer nobody asked for */
        on_response(L, c, status, c->rbuf + hlen, (size_t)clen);
        size_t used = hlen + (size_t)clen;
        memmove(c->rbuf, c->rbuf + used, c->rlen - used);
        c->rlen -= used;
        if (c->close_after) {
            conn_fail(L, c);
            return 1;
        }
        conn_became_idle(L, c);
    }
}

static void on_readable(struct load *L, struct conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, sizeof(c->rbuf) - c->rlen, 0);
        if (n > 0) {
            c->rlen += (size_t)n;
            int r = parse_responses(L, c);
            if (r < 0) {
                fprintf(stderr, "sl_bench: unexpected HTTP framing; closing a connection\n");
                conn_fail(L, c);
                return;
            }
            if (r > 0)
                return;
            if (c->rlen == sizeof(c->rbuf))
                continue;
            return;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        conn_fail(L, c); /* EOF or error */
        return;
    }
}

static void conn_became_idle(struct load *L, struct conn *c)
{
    c->state = C_IDLE;
    if (L->t0 == 0)
        return; /* still connecting everything */
    if (L->rate == 0) {
        if (L->issued < (uint64_t)L->count)
            start_request(L, c, sl_time_mono_us());
        return;
    }
    if (L->due > L->issued)
        start_request(L, c, intended_time(L, L->issued));
    else
        idle_push(L, c);
}

static void on_event(struct load *L, struct conn *c, uint32_t ev)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            conn_fail(L, c);
            return;
        }
        if (!(ev & (EPOLLOUT | EPOLLIN)))
            return;
        ep_mod(L, c, 0);
        conn_became_idle(L, c);
        return;
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))
        on_readable(L, c);
    if ((ev & EPOLLOUT) && c->state == C_BUSY && c->fd >= 0)
        flush_write(L, c);
}

static int parse_url(const char *url, struct load *L)
{
    char host[64];
    int port = 0;
    if (sscanf(url, "http://%63[0-9.]:%d", host, &port) != 2 || port < 1 || port > 65535) {
        fprintf(stderr, "sl_bench: --url must be http://IPV4:PORT (got '%s')\n", url);
        return -1;
    }
    memset(&L->addr, 0, sizeof(L->addr));
    L->addr.sin_family = AF_INET;
    L->addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &L->addr.sin_addr) != 1 || (ntohl(L->addr.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "sl_bench: --url must be a loopback address (127.0.0.0/8), got '%s'\n", host);
        return -1;
    }
    snprintf(L->host, sizeof(L->host), "%s:%d", host, port);
    return 0;
}

enum { TIMELINE_WINDOW_US = 100000 };

struct window {
    uint64_t due, answered, committed;
    int64_t lag_max, http_max, commit_max;
};

static void window_max(int64_t *slot, int64_t v)
{
    if (v > *slot)
        *slot = v;
}

static struct window *window_of(struct window *w, size_t nwin, int64_t t0, int64_t t)
{
    size_t i = t <= t0 ? 0 : (size_t)((t - t0) / TIMELINE_WINDOW_US);
    return &w[i < nwin ? i : nwin - 1];
}

/* --timeline: one CSV line per 100 ms window of scheduled send time. Returns 0, or -1 (errno). */
static int write_timeline(const char *path, const struct load *L, int64_t run_us, const int64_t *lat,
                          const int64_t *lat_t, size_t matched)
{
    size_t nwin = (size_t)(run_us / TIMELINE_WINDOW_US) + 2;
    struct window *w = calloc(nwin, sizeof(*w));
    FILE *f = w != NULL ? fopen(path, "w") : NULL;
    if (f == NULL) {
        free(w);
        return -1;
    }
    for (uint64_t k = 0; k < L->issued; k++) {
        int64_t t = L->rate > 0 ? intended_time(L, k) : L->t0;
        struct window *x = window_of(w, nwin, L->t0, t);
        x->due++;
        window_max(&x->lag_max, L->lag[k]);
    }
    for (size_t i = 0; i < L->nhttp; i++) {
        struct window *x = window_of(w, nwin, L->t0, L->http_t[i]);
        x->answered++;
        window_max(&x->http_max, L->http_lat[i]);
    }
    for (size_t i = 0; lat_t != NULL && i < matched; i++) {
        struct window *x = window_of(w, nwin, L->t0, lat_t[i]);
        x->committed++;
        window_max(&x->commit_max, lat[i]);
    }
    fprintf(f, "unix_s,t_ms,due,send_lag_max_ms,accepted,post_202_max_ms,committed,post_committed_max_ms\n");
    for (size_t i = 0; i < nwin; i++)
        fprintf(f, "%.1f,%zu,%llu,%.1f,%llu,%.1f,%llu,%.1f\n", (double)(L->t0_real + (int64_t)i * TIMELINE_WINDOW_US) / 1e6,
                i * (TIMELINE_WINDOW_US / 1000),
                (unsigned long long)w[i].due, w[i].lag_max / 1e3, (unsigned long long)w[i].answered,
                w[i].http_max / 1e3, (unsigned long long)w[i].committed, w[i].commit_max / 1e3);
    free(w);
    return fclose(f) == 0 ? 0 : -1;
}

static int cmd_post(int argc, char **argv)
{
    bench_conf_t c;
    const char *url, *timeline;
    long long count, conns, rate, text_len, timeout_s, live_wait_s;
    sl_opt_t opts[] = {
        COMMON_OPTS(c),
        {"url", NULL, SL_OPT_STR, &url, "http://127.0.0.1:8080", 0, 0, "the api (loopback only)"},
        {"count", NULL, SL_OPT_INT, &count, "100000", 1, 1e8, "POSTs to send"},
        {"connections", NULL, SL_OPT_INT, &conns, "64", 1, 10000, "keep-alive connections, one request in flight each"},
        {"rate", NULL, SL_OPT_INT, &rate, "0", 0, 1e7, "open loop: POSTs per second (0: closed loop, as fast as answered)"},
        {"text-bytes", NULL, SL_OPT_INT, &text_len, "150", 1, SL_TEXT_MAX_CHARS, "bytes of text per message"},
        {"timeout", NULL, SL_OPT_INT, &timeout_s, "120", 1, 3600,
         "seconds after which no more POSTs are sent (the run reports on those sent)"},
        {"live-wait", NULL, SL_OPT_INT, &live_wait_s, "30", 0, 3600,
         "seconds to wait after the last answer for every accepted message to be committed (0: do not "
         "measure POST -> committed, e.g. with no persister running)"},
        {"timeline", NULL, SL_OPT_STR, &timeline, "", 0, 0,
         "write a CSV of the run in 100 ms windows of scheduled send time to this file: POSTs due, their "
         "worst send lag, POST -> 202 and POST -> committed (to find stalls)"},
    };
    int r = parse_opts(opts, sizeof(opts) / sizeof(opts[0]), argc, argv, "post",
                       "HTTP/1.1 keep-alive load on POST /v1/messages; POST -> committed latency from the live exchange.");
    if (r != 0)
        return r > 0 ? 0 : 2;
    if (check_names(&c) != 0)
        return 2;

    struct load L;
    struct live live;
    int ret = 1, live_up = 0;
    memset(&L, 0, sizeof(L));
    memset(&live, 0, sizeof(live));
    L.ep = -1;
    L.count = count;
    L.rate = rate;
    if (parse_url(url, &L) != 0)
        return 2;
    for (long long i = 0; i < text_len; i++)
        L.text[i] = TEXT_FILLER[(size_t)i % (sizeof(TEXT_FILLER) - 1)];
    L.nconns = (size_t)conns;
    L.conns = calloc(L.nconns, sizeof(*L.conns));
    L.idle = calloc(L.nconns, sizeof(*L.idle));
    L.http_lat = calloc((size_t)count, sizeof(*L.http_lat));
    L.http_t = calloc((size_t)count, sizeof(*L.http_t));
    L.lag = calloc((size_t)count, sizeof(*L.lag));
    if (L.conns == NULL || L.idle == NULL || L.http_lat == NULL || L.http_t == NULL || L.lag == NULL ||
        (L.ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        goto Exit;

    if (wait_queue_empty(&c) != 0)
        goto Exit;
    if (live_wait_s > 0) {
        if (live_start(&live, &c) != 0)
            goto Exit;
        live_up = 1;
        /* What the persister still held unacked gets committed and announced: wait until the live
         * exchange has been quiet for 500 ms (at most 60 s), then forget it. */
        size_t seen = 0;
        for (int quiet_ms = 0, waited = 0; quiet_ms < 500 && waited < 60000; waited += 100) {
            sleep_ms(100);
            size_t now_seen = atomic_load(&live.n);
            quiet_ms = now_seen == seen ? quiet_ms + 100 : 0;
            seen = now_seen;
        }
        pthread_mutex_lock(&live.lock);
        atomic_store(&live.n, 0);
        pthread_mutex_unlock(&live.lock);
    }

    for (size_t i = 0; i < L.nconns; i++) {
        L.conns[i].fd = -1;
        if (conn_open(&L, &L.conns[i]) != 0) {
            fprintf(stderr, "sl_bench: connect %s: %s\n", L.host, strerror(errno));
            goto Exit;
        }
    }
    struct epoll_event evs[512];
    int64_t deadline = sl_time_mono_us() + 5000000;
    for (size_t ready = 0; ready < L.nconns;) {
        if (sl_time_mono_us() > deadline) {
            fprintf(stderr, "sl_bench: could not open %zu connections to %s within 5 s\n", L.nconns, L.host);
            goto Exit;
        }
        int n = epoll_wait(L.ep, evs, 512, 100);
        for (int i = 0; i < n; i++)
            on_event(&L, evs[i].data.ptr, evs[i].events);
        ready = 0;
        for (size_t i = 0; i < L.nconns; i++)
            ready += L.conns[i].state == C_IDLE;
    }
    if (L.reconnects > 0) {
        fprintf(stderr, "sl_bench: connections to %s failed (is the api up?)\n", L.host);
        goto Exit;
    }

    /* The run. */
    double cpu0 = bu_self_cpu_s();
    L.t0 = sl_time_mono_us();
    L.t0_real = sl_time_now_us();
    deadline = L.t0 + timeout_s * 1000000;
    for (size_t i = 0; i < L.nconns; i++) {
        if (rate == 0)
            conn_became_idle(&L, &L.conns[i]);
        else
            idle_push(&L, &L.conns[i]);
    }
    int64_t t_last = L.t0, drain_end = 0;
    while (L.done < (uint64_t)L.count) {
        int64_t now = sl_time_mono_us();
        int timeout_ms = 100;
        if (now > deadline && drain_end == 0) {
            /* Keep the run bounded when the api cannot keep up: send nothing more, let what is in
             * flight finish, and report on what was sent. */
            fprintf(stderr, "sl_bench: --timeout %lld s reached: stopping after %llu of %lld POSTs\n", timeout_s,
                    (unsigned long long)L.issued, count);
            L.count = (long long)L.issued;
            L.due = L.issued;
            drain_end = now + 10000000;
            continue;
        }
        if (drain_end != 0 && now > drain_end) {
            fprintf(stderr, "sl_bench: %llu POSTs still unanswered 10 s after the timeout\n",
                    (unsigned long long)(L.issued - L.done));
            break;
        }
        if (rate > 0) {
            while (L.due < (uint64_t)L.count && intended_time(&L, L.due) <= now)
                L.due++;
            while (L.due > L.issued && L.nidle > 0)
                start_request(&L, idle_pop(&L), intended_time(&L, L.issued));
            if (L.due - L.issued > L.max_backlog)
                L.max_backlog = L.due - L.issued;
            if (L.due < (uint64_t)L.count && L.nidle > 0) {
                int64_t wait = intended_time(&L, L.due) - now;
                timeout_ms = wait <= 0 ? 0 : (int)((wait + 999) / 1000);
            }
        }
        int n = epoll_wait(L.ep, evs, 512, timeout_ms);
        for (int i = 0; i < n; i++)
            on_event(&L, evs[i].data.ptr, evs[i].events);
        if (n > 0)
            t_last = sl_time_mono_us();
    }
    int64_t run_us = t_last - L.t0;
    double cpu = bu_self_cpu_s() - cpu0;

    /* Wait until every accepted id was announced on the live exchange (or the time is up). */
    struct stamp *copy = NULL;
    int64_t *lat = calloc(L.nsent + 1, sizeof(*lat));
    int64_t *lat_t = timeline != NULL && timeline[0] != '\0' ? calloc(L.nsent + 1, sizeof(*lat_t)) : NULL;
    size_t matched = 0, ncopy = 0;
    int64_t wait_end = sl_time_mono_us() + live_wait_s * 1000000;
    for (; live_up;) {
        int64_t now = sl_time_mono_us();
        if (atomic_load(&live.n) >= L.nsent || now >= wait_end || live.err[0] != '\0') {
            pthread_mutex_lock(&live.lock);
            ncopy = atomic_load(&live.n);
            struct stamp *nc = realloc(copy, (ncopy + 1) * sizeof(*copy));
            if (nc != NULL) {
                copy = nc;
                memcpy(copy, live.recs, ncopy * sizeof(*copy));
            }
            pthread_mutex_unlock(&live.lock);
            if (nc == NULL || lat == NULL)
                break;
            matched = match(L.sent, L.nsent, copy, ncopy, lat, lat_t);
            if (matched >= L.nsent || now >= wait_end || live.err[0] != '\0')
                break;
        }
        sleep_ms(100);
    }
    if (live_up)
        live_stop(&live);
    live_up = 0;
    if (live.err[0] != '\0')
        fprintf(stderr, "sl_bench: %s\n", live.err);

    if (timeline != NULL && timeline[0] != '\0' && write_timeline(timeline, &L, run_us, lat, lat_t, matched) != 0)
        fprintf(stderr, "sl_bench: cannot write %s: %s\n", timeline, strerror(errno));
    qsort(L.http_lat, L.nhttp, sizeof(*L.http_lat), cmp_i64);
    if (lat != NULL)
        qsort(lat, matched, sizeof(*lat), cmp_i64);
    double accepted = (double)L.n202 / secs(run_us), answered = (double)L.done / secs(run_us);
    if (rate > 0)
        printf("post: open loop at %lld/s offered, %zu connections, %llu POSTs (%lld B text) in %.2f s; "
               "largest backlog of due POSTs waiting for a free connection: %llu\n",
               rate, L.nconns, (unsigned long long)L.issued, text_len, secs(run_us),
               (unsigned long long)L.max_backlog);
    else
        printf("post: closed loop, %zu connections, %llu POSTs (%lld B text) in %.2f s\n", L.nconns,
               (unsigned long long)L.issued, text_len, secs(run_us));
    if (L.issued < (uint64_t)count)
        printf("post: stopped at --timeout %lld s: %llu of the %lld POSTs planned were never sent\n", timeout_s,
               (unsigned long long)((uint64_t)count - L.issued), count);
    printf("post: 202=%llu 429=%llu 503=%llu other=%llu errors=%llu (reconnects %llu): %.0f accepted/s (%.0f "
           "answered/s)\n",
           (unsigned long long)L.n202, (unsigned long long)L.n429, (unsigned long long)L.n503,
           (unsigned long long)L.nother, (unsigned long long)L.nerr, (unsigned long long)L.reconnects, accepted,
           answered);
    printf("post: the load tool used %.2f s of CPU (%.0f%% of one core; the live consumer thread included)\n", cpu,
           100.0 * cpu / secs(run_us));
    printf("post: POST -> 202 p50 %.1f ms, p99 %.1f ms, max %.1f ms%s\n", pct_ms(L.http_lat, L.nhttp, 0.5),
           pct_ms(L.http_lat, L.nhttp, 0.99), pct_ms(L.http_lat, L.nhttp, 1.0),
           rate > 0 ? " (from the scheduled send time)" : "");
    if (rate > 0) {
        qsort(L.lag, L.issued, sizeof(*L.lag), cmp_i64);
        printf("post: sends behind schedule (no free connection, or the tool itself late): p50 %.1f ms, p99 %.1f ms, "
               "max %.1f ms\n",
               pct_ms(L.lag, L.issued, 0.5), pct_ms(L.lag, L.issued, 0.99), pct_ms(L.lag, L.issued, 1.0));
    }
    if (live_wait_s > 0)
        printf("post: POST -> committed (seen on %s) for %zu of %zu accepted: p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
               c.live_exchange, matched, L.nsent, pct_ms(lat, matched, 0.5), pct_ms(lat, matched, 0.99),
               pct_ms(lat, matched, 1.0));
    else
        printf("post: POST -> committed not measured (--live-wait 0)\n");
    printf("RESULT post_accepted_per_s=%.0f post_answered_per_s=%.0f post_202=%llu post_429=%llu post_503=%llu "
           "post_other=%llu post_errors=%llu http_p50_ms=%.1f http_p99_ms=%.1f commit_p50_ms=%.1f commit_p99_ms=%.1f "
           "commit_max_ms=%.1f commit_matched=%zu commit_missing=%zu max_backlog=%llu send_lag_p99_ms=%.1f "
           "tool_cpu_pct=%.0f post_unsent=%llu\n",
           accepted, answered, (unsigned long long)L.n202, (unsigned long long)L.n429, (unsigned long long)L.n503,
           (unsigned long long)L.nother, (unsigned long long)L.nerr, pct_ms(L.http_lat, L.nhttp, 0.5),
           pct_ms(L.http_lat, L.nhttp, 0.99), pct_ms(lat, matched, 0.5), pct_ms(lat, matched, 0.99),
           pct_ms(lat, matched, 1.0), matched, live_wait_s > 0 ? L.nsent - matched : 0, (unsigned long long)L.max_backlog,
           pct_ms(L.lag, L.issued, 0.99), 100.0 * cpu / secs(run_us), (unsigned long long)((uint64_t)count - L.issued));
    ret = L.done == L.issued && (live_wait_s == 0 || matched == L.nsent) ? 0 : 1;
    free(copy);
    free(lat);
    free(lat_t);
Exit:
    if (live_up)
        live_stop(&live);
    if (live.conn != NULL)
        sl_amqp_close(live.conn);
    for (size_t i = 0; L.conns != NULL && i < L.nconns; i++) {
        if (L.conns[i].fd >= 0)
            close(L.conns[i].fd);
    }
    if (L.ep >= 0)
        close(L.ep);
    free(L.conns);
    free(L.idle);
    free(L.http_lat);
    free(L.http_t);
    free(L.lag);
    free(L.sent);
    free(live.recs);
    return ret;
}

/* ---- disk ------------------------------------------------------------------------------------- */

static int cmd_disk(int argc, char **argv)
{
    const char *path;
    long long seconds, every_ms, slow_ms;
    sl_opt_t opts[] = {
        {"path", NULL, SL_OPT_STR, &path, "/tmp/sl-bench-disk.probe", 0, 0,
         "file to write (put it on the servers' filesystem; it is removed at the end)"},
        {"seconds", NULL, SL_OPT_INT, &seconds, "10", 1, 3600, "how long to probe"},
        {"every-ms", NULL, SL_OPT_INT, &every_ms, "10", 0, 1000, "pause between two probes"},
        {"slow-ms", NULL, SL_OPT_INT, &slow_ms, "20", 1, 10000,
         "a probe over this is slow: printed on stderr with its wall-clock time"},
    };
    int r = parse_opts(opts, sizeof(opts) / sizeof(opts[0]), argc, argv, "disk",
                       "8 KiB pwrite + fdatasync in a loop: the disk's flush latency, which every durable "
                       "commit and publish confirm waits for.");
    if (r != 0)
        return r > 0 ? 0 : 2;
    static char block[8192];
    memset(block, 'x', sizeof(block));
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "sl_bench: open %s: %s\n", path, strerror(errno));
        return 1;
    }
    size_t cap = (size_t)(seconds * 1000 / (every_ms > 0 ? every_ms : 1)) + 1024, n = 0, slow = 0;
    int64_t *lat = calloc(cap, sizeof(*lat)), slow_total = 0;
    int64_t end = sl_time_mono_us() + seconds * 1000000;
    while (lat != NULL && n < cap && sl_time_mono_us() < end) {
        int64_t t = sl_time_mono_us();
        if (pwrite(fd, block, sizeof(block), (off_t)(n % 128) * (off_t)sizeof(block)) != (ssize_t)sizeof(block) ||
            fdatasync(fd) != 0) {
            fprintf(stderr, "sl_bench: write %s: %s\n", path, strerror(errno));
            break;
        }
        lat[n] = sl_time_mono_us() - t;
        if (lat[n] > slow_ms * 1000) {
            slow++;
            slow_total += lat[n];
            fprintf(stderr, "disk: slow flush at %.3f: %.1f ms\n", (double)sl_time_now_us() / 1e6, lat[n] / 1e3);
        }
        n++;
        if (every_ms > 0)
            sleep_ms((long)every_ms);
    }
    close(fd);
    unlink(path);
    if (lat == NULL || n == 0) {
        free(lat);
        return 1;
    }
    qsort(lat, n, sizeof(*lat), cmp_i64);
    printf("disk: %zu flushes of 8 KiB in %lld s (one every %lld ms): p50 %.1f ms, p99 %.1f ms, max %.1f ms; "
           "%zu over %lld ms (%.0f ms in all)\n",
           n, seconds, every_ms, pct_ms(lat, n, 0.5), pct_ms(lat, n, 0.99), pct_ms(lat, n, 1.0), slow, slow_ms,
           slow_total / 1e3);
    printf("RESULT disk_flushes=%zu disk_p50_ms=%.1f disk_p99_ms=%.1f disk_max_ms=%.1f disk_slow=%zu "
           "disk_slow_total_ms=%.0f\n",
           n, pct_ms(lat, n, 0.5), pct_ms(lat, n, 0.99), pct_ms(lat, n, 1.0), slow, slow_total / 1e3);
    free(lat);
    return 0;
}

/* ---- reset ------------------------------------------------------------------------------------ */

static int cmd_reset(int argc, char **argv)
{
    bench_conf_t c;
    char dead[256];
    sl_opt_t opts[] = {COMMON_OPTS(c)};
    int r = parse_opts(opts, sizeof(opts) / sizeof(opts[0]), argc, argv, "reset",
                       "Deletes the bench persist queue, its dead-letter queue and the bench live exchange.");
    if (r != 0)
        return r > 0 ? 0 : 2;
    if (check_names(&c) != 0)
        return 2;
    char err[512];
    amqp_connection_state_t conn = sl_amqp_open(c.amqp_url, "sluice-bench-reset", 0, 10000, err, sizeof(err));
    if (conn == NULL) {
        fprintf(stderr, "sl_bench: %s\n", err);
        return 1;
    }
    snprintf(dead, sizeof(dead), "%s.dead", c.queue);
    amqp_queue_delete(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(c.queue), 0, 0);
    int bad = rpc_ok(conn, "queue.delete");
    amqp_queue_delete(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(dead), 0, 0);
    bad |= rpc_ok(conn, "queue.delete (dead letters)");
    amqp_exchange_delete(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(c.live_exchange), 0);
    bad |= rpc_ok(conn, "exchange.delete");
    sl_amqp_close(conn);
    if (!bad)
        printf("reset: deleted %s, %s and %s\n", c.queue, dead, c.live_exchange);
    return bad ? 1 : 0;
}

/* ---- main ------------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: sl_bench COMMAND [--flag value ...]   (sl_bench COMMAND --help for its flags)\n"
               "  raw-publish  --count N --window 1000 --size 200\n"
               "  raw-insert   --rows N\n"
               "  persister    --count N [--persister-bin build/bin/sluice-persister]\n"
               "  post         --url http://127.0.0.1:PORT --count N --connections C [--rate R]\n"
               "  disk         --path FILE --seconds 10\n"
               "  reset\n"
               "Connection settings come from SLUICE_AMQP_URL, SLUICE_DB_URL, SLUICE_BENCH_QUEUE,\n"
               "SLUICE_BENCH_LIVE_EXCHANGE and SLUICE_QUEUE_MAX_LENGTH, or the flags of the same names.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    sl_log_init("bench");
    const char *cmd = argv[1];
    if (strcmp(cmd, "raw-publish") == 0)
        return cmd_raw_publish(argc - 1, argv + 1);
    if (strcmp(cmd, "raw-insert") == 0)
        return cmd_raw_insert(argc - 1, argv + 1);
    if (strcmp(cmd, "persister") == 0)
        return cmd_persister(argc - 1, argv + 1);
    if (strcmp(cmd, "post") == 0)
        return cmd_post(argc - 1, argv + 1);
    if (strcmp(cmd, "disk") == 0)
        return cmd_disk(argc - 1, argv + 1);
    if (strcmp(cmd, "reset") == 0)
        return cmd_reset(argc - 1, argv + 1);
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "sl_bench: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
