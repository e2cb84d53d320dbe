/*
 * sl_api: see sl_api.h.
 *
 * A POST's state lives in the request's memory pool, in a shared chunk whose dispose hook runs
 * when h2o frees the request, whether it was answered or the client went away: the hook detaches
 * the pending confirm or query so their callbacks never touch a freed request.
 */
#include "sl_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sl_auth.h"
#include "sl_buf.h"
#include "sl_http.h"
#include "sl_log.h"
#include "sl_message.h"
#include "sl_metrics.h"
#include "sl_pgpool.h"
#include "sl_publisher.h"
#include "sl_ratelimit.h"
#include "sl_stream.h"
#include "sl_time.h"
#include "sl_uuid.h"

enum route { R_POST, R_LIST, R_GET, R_HEALTHZ, R_READYZ, R_METRICS, R_OTHER, R__COUNT };
static const char *const route_names[R__COUNT] = {"post_message", "list_messages", "get_message", "healthz",
                                                  "readyz",       "metrics",       "other"};

#define MAX_STATUS_ROWS 128
#define IDEMPOTENCY_WINDOW_US (24LL * 3600 * 1000000)
#define IDEMPOTENCY_KEY_MAX 255

struct status_count {
    int route, status;
    uint64_t n;
};

struct sl_api {
    sl_api_conf_t conf;
    h2o_loop_t *loop;
    sl_publisher_t *pub;
    sl_pgpool_t *pg;
    sl_amqp_topology_t topology;
    struct status_count counts[MAX_STATUS_ROWS];
    size_t ncounts, inflight;
    uint64_t idempotent_replays, rate_limited;
    sl_ratelimit_t *limiter; /* NULL: no per-client limit */
    sl_histogram_t post_latency; /* seconds from a POST's request head to its answer */
};

struct post {
    sl_api_t *api;
    h2o_req_t *req;       /* NULL once h2o disposed the request */
    sl_message_t msg;
    char key[IDEMPOTENCY_KEY_MAX + 1];
    int has_key;
    int waiting;          /* counted in api->inflight */
    uint64_t tag;         /* delivery tag while publishing, else 0 */
    sl_pgquery_t *query;  /* while a query runs */
};

static void count(sl_api_t *a, int route, int status)
{
    for (size_t i = 0; i < a->ncounts; i++) {
        if (a->counts[i].route == route && a->counts[i].status == status) {
            a->counts[i].n++;
            return;
        }
    }
    if (a->ncounts < MAX_STATUS_ROWS)
        a->counts[a->ncounts++] = (struct status_count){route, status, 1};
}

/* Counts the answer (and times a POST's) before it is sent. */
static void account(sl_api_t *a, h2o_req_t *req, int route, int status)
{
    count(a, route, status);
    if (route == R_POST)
        sl_histogram_observe(&a->post_latency, sl_http_request_age(req));
}

static void respond(sl_api_t *a, h2o_req_t *req, int route, int status, const char *body, size_t len)
{
    account(a, req, route, status);
    sl_http_send(req, status, NULL, body, len);
}

static void respond_error(sl_api_t *a, h2o_req_t *req, int route, int status, const char *code, const char *field,
                          const char *message)
{
    int retry = status == 429 || status == 503 ? (int)a->conf.retry_after_s : 0;
    account(a, req, route, status);
    sl_http_fail(req, status, code, field, message, retry);
}

/* ---- POST /v1/messages ---------------------------------------------------------------------- */

static void post_done(struct post *p)
{
    if (p->waiting) {
        p->waiting = 0;
        p->api->inflight--;
    }
}

static void post_dispose(void *data)
{
    struct post *p = data;
    p->req = NULL;
    if (p->tag != 0)
        sl_publisher_detach(p->api->pub, p->tag, p);
    if (p->query != NULL)
        sl_pgpool_cancel(p->query);
    post_done(p);
}

static void answer_accepted(struct post *p)
{
    char body[256], ts[SL_TIME_RFC3339_LEN];
    sl_time_format(p->msg.created_at_us, ts);
    int n = snprintf(body, sizeof(body), "{\"id\":\"%s\",\"channel\":\"%s\",\"created_at\":\"%s\"}", p->msg.id,
                     p->msg.channel, ts);
    respond(p->api, p->req, R_POST, 202, body, (size_t)n);
}

static void answer_refusal(struct post *p, sl_publish_result_t r)
{
    switch (r) {
    case SL_PUBLISH_NACK:
        respond_error(p->api, p->req, R_POST, 429, "queue_full",
                      NULL, "the message queue is full; slow down and retry after the given delay");
        break;
    case SL_PUBLISH_BLOCKED:
        respond_error(p->api, p->req, R_POST, 503, "broker_blocked", NULL,
                      "the message broker is refusing writes (resource alarm); retry later");
        break;
    case SL_PUBLISH_BUSY:
        respond_error(p->api, p->req, R_POST, 503, "too_many_in_flight", NULL,
                      "too many messages await the broker's confirmation; retry later");
        break;
    default:
        respond_error(p->api, p->req, R_POST, 503, "broker_unavailable", NULL,
                      "the message broker is unavailable; the message was not accepted, retry later");
        break;
    }
}

static void on_ignored(void *data, const PGresult *res, const char *err)
{
    (void)data;
    (void)res;
    (void)err; /* best effort: a retry that misses it publishes again, and the persister dedups */
}

static const char SQL_IDEM_ACCEPTED[] =
    "UPDATE idempotency_keys SET accepted_at = now() WHERE author = $1 AND key = $2 AND message_id = $3";

static void on_confirm(void *data, sl_publish_result_t r)
{
    struct post *p = data;
    p->tag = 0;
    if (r == SL_PUBLISH_OK && p->has_key) {
        const char *params[] = {p->msg.author, p->key, p->msg.id};
        sl_pgpool_query(p->api->pg, SQL_IDEM_ACCEPTED, 3, params, on_ignored, NULL);
    }
    if (p->req != NULL) {
        if (r == SL_PUBLISH_OK)
            answer_accepted(p);
        else
            answer_refusal(p, r);
    }
    post_done(p);
}

static void publish(struct post *p)
{
    size_t len;
    char *json = sl_message_to_json(&p->msg, &len);
    if (json == NULL) {
        respond_error(p->api, p->req, R_POST, 503, "out_of_memory", NULL, "out of memory");
        post_done(p);
        return;
    }
    sl_publish_result_t r =
        sl_publisher_publish(p->api->pub, "", p->api->topology.persist_queue, json, len, on_confirm, p, &p->tag);
    free(json);
    if (r != SL_PUBLISH_OK) {
        p->tag = 0;
        answer_refusal(p, r);
        post_done(p);
    }
}

static const char SQL_IDEM_LOOKUP[] =
    "SELECT k.message_id, k.channel, k.created_at,"
    " k.accepted_at IS NOT NULL OR EXISTS (SELECT 1 FROM messages m WHERE m.id = k.message_id)"
    " FROM idempotency_keys k WHERE k.author = $1 AND k.key = $2";

static void on_idem_lookup(void *data, const PGresult *res, const char *err)
{
    struct post *p = data;
    p->query = NULL;
    if (err != NULL || PQntuples(res) != 1 || PQgetlength(res, 0, 0) >= (int)sizeof(p->msg.id)) {
        respond_error(p->api, p->req, R_POST, 503, "database_unavailable", NULL,
                      "could not check the Idempotency-Key; retry later");
        post_done(p);
        return;
    }
    /* The key was seen within 24 h: answer as the first time, with the first id. */
    const char *ts = PQgetvalue(res, 0, 2);
    memcpy(p->msg.id, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0) + 1);
    snprintf(p->msg.channel, sizeof(p->msg.channel), "%s", PQgetvalue(res, 0, 1));
    sl_time_parse(ts, strlen(ts), &p->msg.created_at_us);
    p->api->idempotent_replays++;
    if (PQgetvalue(res, 0, 3)[0] == 't') {
        answer_accepted(p);
        post_done(p);
    } else {
        /* Neither confirmed nor stored: the earlier try was refused (or its confirm was lost with
         * its connection). Publishing again under the same id is safe: the persister stores an
         * id once. */
        publish(p);
    }
}

static const char SQL_IDEM_CLAIM[] =
    "INSERT INTO idempotency_keys (author, key, message_id, channel, created_at) VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT (author, key) DO UPDATE SET message_id = excluded.message_id, channel = excluded.channel,"
    " created_at = excluded.created_at, accepted_at = NULL WHERE idempotency_keys.created_at < $6 RETURNING message_id";

static void on_idem_claim(void *data, const PGresult *res, const char *err)
{
    struct post *p = data;
    p->query = NULL;
    if (err != NULL) {
        respond_error(p->api, p->req, R_POST, 503, "database_unavailable", NULL,
                      "could not record the Idempotency-Key; retry later");
        post_done(p);
        return;
    }
    if (PQntuples(res) == 1) { /* first use of the key (or the old one expired) */
        publish(p);
        return;
    }
    const char *params[] = {p->msg.author, p->key};
    if ((p->query = sl_pgpool_query(p->api->pg, SQL_IDEM_LOOKUP, 2, params, on_idem_lookup, p)) == NULL) {
        respond_error(p->api, p->req, R_POST, 503, "database_unavailable", NULL, "the database is unavailable");
        post_done(p);
    }
}

static int key_valid(const char *k, size_t len)
{
    if (len < 1 || len > IDEMPOTENCY_KEY_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)k[i] < 0x21 || (unsigned char)k[i] > 0x7e)
            return 0;
    }
    return 1;
}

/* who: the request's bearer, identified by sl_api_handle. */
static int handle_post(sl_api_t *a, h2o_req_t *req, const sl_auth_who_t *who)
{
    sl_error_t err;
    size_t keylen = 0;
    const char *key;

    if (who->result != SL_AUTH_OK) {
        account(a, req, R_POST, 401);
        sl_auth_refuse_who(req, who, who->result);
        return 0;
    }
    if (!sl_http_content_is_json(req)) {
        respond_error(a, req, R_POST, 415, "unsupported_media_type", NULL, "Content-Type must be application/json");
        return 0;
    }
    if (req->entity.len > SL_BODY_MAX) {
        respond_error(a, req, R_POST, 413, "body_too_large", NULL, "the body must be at most 16384 bytes");
        return 0;
    }
    key = sl_http_header(req, "idempotency-key", &keylen);
    if (key != NULL && !key_valid(key, keylen)) {
        respond_error(a, req, R_POST, 400, "invalid_idempotency_key", NULL,
                      "Idempotency-Key must be 1 to 255 visible ASCII characters");
        return 0;
    }
    struct post *p = h2o_mem_alloc_shared(&req->pool, sizeof(*p), post_dispose);
    memset(p, 0, sizeof(*p));
    p->api = a;
    p->req = req;
    if (sl_message_from_request(req->entity.base != NULL ? req->entity.base : "", req->entity.len, &p->msg, &err) != 0) {
        account(a, req, R_POST, err.status);
        sl_http_send_error(req, &err, 0);
        return 0;
    }
    sl_auth_result_t ar = sl_auth_may_post(who, p->msg.author, p->msg.channel);
    if (ar != SL_AUTH_OK) {
        account(a, req, R_POST, 403);
        sl_auth_refuse_who(req, who, ar);
        return 0;
    }
    if (sl_uuid_v7(p->msg.id) != 0) {
        respond_error(a, req, R_POST, 503, "no_entropy", NULL, "could not make an id; retry");
        return 0;
    }
    p->msg.created_at_us = sl_time_now_us();
    p->waiting = 1;
    a->inflight++;
    if (key == NULL) {
        publish(p);
        return 0;
    }
    memcpy(p->key, key, keylen);
    p->key[keylen] = '\0';
    p->has_key = 1;
    char ts[SL_TIME_RFC3339_LEN], expired[SL_TIME_RFC3339_LEN];
    sl_time_format(p->msg.created_at_us, ts);
    sl_time_format(p->msg.created_at_us - IDEMPOTENCY_WINDOW_US, expired);
    const char *params[] = {p->msg.author, p->key, p->msg.id, p->msg.channel, ts, expired};
    if ((p->query = sl_pgpool_query(a->pg, SQL_IDEM_CLAIM, 6, params, on_idem_claim, p)) == NULL) {
        respond_error(a, req, R_POST, 503, "database_unavailable", NULL,
                      "the database is unavailable, so the Idempotency-Key cannot be honoured; retry later");
        post_done(p);
    }
    return 0;
}

/* ---- reads ---------------------------------------------------------------------------------- */

struct read {
    sl_api_t *api;
    h2o_req_t *req;
    int route;
    long long limit;
    sl_pgquery_t *query;
    int waiting;
};

static void read_dispose(void *data)
{
    struct read *r = data;
    r->req = NULL;
    if (r->query != NULL)
        sl_pgpool_cancel(r->query);
    if (r->waiting) {
        r->waiting = 0;
        r->api->inflight--;
    }
}

static void read_finish(struct read *r)
{
    r->query = NULL;
    if (r->waiting) {
        r->waiting = 0;
        r->api->inflight--;
    }
}

static void on_list(void *data, const PGresult *res, const char *err)
{
    struct read *r = data;
    read_finish(r);
    if (err != NULL) {
        respond_error(r->api, r->req, r->route, 503, "database_unavailable", NULL, "the database is unavailable");
        return;
    }
    json_t *arr = json_array(), *root;
    int64_t last = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        sl_message_t m;
        if (sl_db_row_to_message(res, i, &m) != 0)
            continue;
        json_array_append_new(arr, sl_message_to_jansson(&m));
        last = m.seq;
        sl_message_clear(&m);
    }
    if (r->route == R_GET) {
        if (json_array_size(arr) == 0) {
            json_decref(arr);
            respond_error(r->api, r->req, r->route, 404, "not_found", NULL, "no message has this id");
            return;
        }
        root = json_incref(json_array_get(arr, 0));
    } else {
        char cursor[24];
        snprintf(cursor, sizeof(cursor), "%lld", (long long)last);
        int more = PQntuples(res) == r->limit && last > 1;
        root = json_pack("{s:o, s:o}", "messages", json_incref(arr), "next", more ? json_string(cursor) : json_null());
    }
    json_decref(arr);
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (text == NULL) {
        respond_error(r->api, r->req, r->route, 503, "out_of_memory", NULL, "out of memory");
        return;
    }
    respond(r->api, r->req, r->route, 200, text, strlen(text));
    free(text);
}

/* Deleted messages (a Mastodon post deleted at its source) are no longer shown. */
static const char SQL_LIST_CHANNEL[] = "SELECT " SL_DB_MESSAGE_COLUMNS " FROM messages WHERE channel = $1 AND seq < $2"
                                       " AND deleted_at IS NULL ORDER BY seq DESC LIMIT $3";
static const char SQL_LIST_ALL[] = "SELECT " SL_DB_MESSAGE_COLUMNS " FROM messages WHERE seq < $1"
                                   " AND deleted_at IS NULL ORDER BY seq DESC LIMIT $2";
static const char SQL_GET[] = "SELECT " SL_DB_MESSAGE_COLUMNS " FROM messages WHERE id = $1 AND deleted_at IS NULL";

static int parse_int_param(h2o_req_t *req, const char *name, long long min, long long max, long long *out, int *present)
{
    h2o_iovec_t v;
    int r = sl_http_query(req, name, &v);
    *present = r == 1;
    if (r == 0)
        return 0;
    long long n;
    /* digits only, and no overflow on the way to max (19 digits can pass INT64_MAX) */
    if (r < 0 || sl_stream_parse_count(v.base, v.len, max, &n) != 0 || n < min)
        return -1;
    *out = n;
    return 0;
}

static struct read *start_read(sl_api_t *a, h2o_req_t *req, int route)
{
    struct read *r = h2o_mem_alloc_shared(&req->pool, sizeof(*r), read_dispose);
    memset(r, 0, sizeof(*r));
    r->api = a;
    r->req = req;
    r->route = route;
    return r;
}

static void run_read(struct read *r, const char *sql, int n, const char *const *params)
{
    r->waiting = 1;
    r->api->inflight++;
    if ((r->query = sl_pgpool_query(r->api->pg, sql, n, params, on_list, r)) == NULL) {
        read_finish(r);
        respond_error(r->api, r->req, r->route, 503, "database_unavailable", NULL, "the database is unavailable");
    }
}

static int handle_list(sl_api_t *a, h2o_req_t *req)
{
    long long limit = 50, before = INT64_MAX;
    int present;
    h2o_iovec_t channel;
    char limtext[24], beftext[24], msg[96];

    if (parse_int_param(req, "limit", 1, a->conf.history_max, &limit, &present) != 0) {
        snprintf(msg, sizeof(msg), "'limit' must be an integer from 1 to %lld", a->conf.history_max);
        respond_error(a, req, R_LIST, 400, "invalid_limit", "limit", msg);
        return 0;
    }
    if (parse_int_param(req, "before", 1, INT64_MAX, &before, &present) != 0) {
        respond_error(a, req, R_LIST, 400, "invalid_cursor", "before", "'before' must be a positive integer (a seq)");
        return 0;
    }
    int has_channel = sl_http_query(req, "channel", &channel);
    const char *canon = NULL;
    if (has_channel == 1 && (channel.len = sl_channel_canon(channel.base, channel.len, &canon)) != 0)
        channel.base = (char *)canon;
    if (has_channel < 0 || (has_channel == 1 && channel.len == 0)) {
        respond_error(a, req, R_LIST, 400, "invalid_channel", "channel", "'channel' must be " SL_CHANNEL_RULE);
        return 0;
    }
    struct read *r = start_read(a, req, R_LIST);
    r->limit = limit;
    snprintf(limtext, sizeof(limtext), "%lld", limit);
    snprintf(beftext, sizeof(beftext), "%lld", before);
    if (has_channel == 1) {
        const char *params[] = {channel.base, beftext, limtext};
        run_read(r, SQL_LIST_CHANNEL, 3, params);
    } else {
        const char *params[] = {beftext, limtext};
        run_read(r, SQL_LIST_ALL, 2, params);
    }
    return 0;
}

static int handle_get(sl_api_t *a, h2o_req_t *req, const char *id, size_t len)
{
    char idbuf[SL_UUID_STRLEN];
    if (!sl_uuid_valid(id, len)) {
        respond_error(a, req, R_GET, 404, "not_found", NULL, "no message has this id (ids are UUIDs)");
        return 0;
    }
    memcpy(idbuf, id, len);
    idbuf[len] = '\0';
    const char *params[] = {idbuf};
    run_read(start_read(a, req, R_GET), SQL_GET, 1, params);
    return 0;
}

/* ---- operations ----------------------------------------------------------------------------- */

static int handle_readyz(sl_api_t *a, h2o_req_t *req)
{
    char body[160];
    const char *amqp = sl_publisher_ready(a->pub) ? "up" : sl_publisher_blocked(a->pub) ? "blocked" : "down";
    const char *db = sl_pgpool_ready(a->pg) ? "up" : "down";
    int ok = strcmp(amqp, "up") == 0 && strcmp(db, "up") == 0;
    int n = snprintf(body, sizeof(body), "{\"status\":\"%s\",\"amqp\":\"%s\",\"db\":\"%s\"}", ok ? "ready" : "unavailable",
                     amqp, db);
    respond(a, req, R_READYZ, ok ? 200 : 503, body, (size_t)n);
    return 0;
}

static int handle_metrics(sl_api_t *a, h2o_req_t *req)
{
    sl_buf_t b = SL_BUF_INIT;
    const sl_publisher_stats_t *s = sl_publisher_stats(a->pub);
    char labels[96];

    count(a, R_METRICS, 200); /* counted before rendering so this scrape includes itself */
    sl_metrics_header(&b, "sluice_api_requests_total", "counter", "HTTP requests by route and status.");
    for (size_t i = 0; i < a->ncounts; i++) {
        snprintf(labels, sizeof(labels), "route=\"%s\",status=\"%d\"", route_names[a->counts[i].route],
                 a->counts[i].status);
        sl_metrics_sample(&b, "sluice_api_requests_total", labels, (double)a->counts[i].n);
    }
    sl_metrics_histogram(&b, "sluice_api_post_seconds",
                         "Time from a POST's request head arriving to its answer being sent (any status).",
                         &a->post_latency);
    sl_metrics_histogram(&b, "sluice_api_publish_confirm_seconds", "Time from publish to the broker's confirm.",
                         &s->confirm_latency);
    sl_metrics_header(&b, "sluice_api_publishes_total", "counter", "Publishes by outcome.");
    sl_metrics_sample(&b, "sluice_api_publishes_total", "outcome=\"published\"", (double)s->published);
    sl_metrics_sample(&b, "sluice_api_publishes_total", "outcome=\"acked\"", (double)s->acked);
    sl_metrics_sample(&b, "sluice_api_publishes_total", "outcome=\"nacked\"", (double)s->nacked);
    sl_metrics_sample(&b, "sluice_api_publishes_total", "outcome=\"connection_lost\"", (double)s->failed);
    sl_metrics_sample(&b, "sluice_api_publishes_total", "outcome=\"refused_busy\"", (double)s->refused_busy);
    sl_metrics_sample(&b, "sluice_api_publishes_total", "outcome=\"refused_down\"", (double)s->refused_down);
    sl_metrics_sample(&b, "sluice_api_publishes_total", "outcome=\"refused_blocked\"", (double)s->refused_blocked);
    sl_metrics_header(&b, "sluice_api_publish_batches_total", "counter",
                      "AMQP messages the published posts went out in (posts of one loop turn share one).");
    sl_metrics_sample(&b, "sluice_api_publish_batches_total", "", (double)s->batches);
    sl_metrics_header(&b, "sluice_api_publish_send_waits_total", "counter",
                      "Batches held back because the broker connection's send buffer had no room (a node that"
                      " reads slowly or not at all); posts meanwhile get 503 too_many_in_flight.");
    sl_metrics_sample(&b, "sluice_api_publish_send_waits_total", "", (double)s->send_waits);
    sl_metrics_header(&b, "sluice_api_broker_blocked_seconds_total", "counter", "Time the broker kept us blocked.");
    sl_metrics_sample(&b, "sluice_api_broker_blocked_seconds_total", "", (double)s->blocked_us_total / 1e6);
    sl_metrics_header(&b, "sluice_api_broker_connects_total", "counter", "Successful broker connections.");
    sl_metrics_sample(&b, "sluice_api_broker_connects_total", "", (double)s->reconnects);
    sl_metrics_header(&b, "sluice_api_publishes_unconfirmed", "gauge", "Publishes awaiting confirmation.");
    sl_metrics_sample(&b, "sluice_api_publishes_unconfirmed", "", (double)sl_publisher_outstanding(a->pub));
    sl_metrics_header(&b, "sluice_api_idempotent_replays_total", "counter", "POSTs answered from an Idempotency-Key.");
    sl_metrics_sample(&b, "sluice_api_idempotent_replays_total", "", (double)a->idempotent_replays);
    sl_metrics_header(&b, "sluice_api_rate_limited_total", "counter", "Requests refused by the per-client limit.");
    sl_metrics_sample(&b, "sluice_api_rate_limited_total", "", (double)a->rate_limited);
    sl_metrics_header(&b, "sluice_api_ready", "gauge", "1 when broker and database are reachable.");
    sl_metrics_sample(&b, "sluice_api_ready", "", sl_publisher_ready(a->pub) && sl_pgpool_ready(a->pg));
    sl_jwt_metrics(sl_auth_jwt(a->conf.auth), &b);
    sl_http_send_metrics(req, &b);
    sl_buf_free(&b);
    return 0;
}

static int method_not_allowed(sl_api_t *a, h2o_req_t *req, int route, const char *allow)
{
    count(a, route, 405);
    sl_http_method_not_allowed(req, allow);
    return 0;
}

/* Per-client token bucket, separate from the broker's back pressure: keyed by the verified
 * identity (a table token, however the header spells it; a JWT's sub), else by the client's
 * address; a made-up Authorization value gets no bucket of its own. A POST with an unknown token
 * is refused (401, by handle_post) before it costs a bucket. Answers 429 itself when over. */
static int limited(sl_api_t *a, h2o_req_t *req, const sl_auth_who_t *who)
{
    char key[320], peer[64];
    if (who->result == SL_AUTH_INVALID && sl_http_method_is(req, "POST") && sl_http_path_is(req, "/v1/messages"))
        return 0;
    if (who->result == SL_AUTH_OK && who->is_jwt)
        snprintf(key, sizeof(key), "j:%s", who->claims.sub); /* sub: at most 255 bytes */
    else if (who->result == SL_AUTH_OK && who->token != NULL && strlen(who->token) < 300)
        snprintf(key, sizeof(key), "t:%s", who->token);
    else
        snprintf(key, sizeof(key), "a:%s", sl_http_client_key(req, peer, sizeof(peer)));
    int wait = sl_ratelimit_take(a->limiter, key, sl_time_mono_us());
    if (wait == 0)
        return 0;
    a->rate_limited++;
    count(a, R_OTHER, 429);
    sl_http_fail(req, 429, "rate_limited", NULL, "too many requests from this client; slow down", wait);
    return 1;
}

/* The routes past the OPTIONS and the rate limit. */
static int route(sl_api_t *a, h2o_req_t *req, const sl_auth_who_t *who)
{
    const char *prefix = "/v1/messages/";
    size_t plen = strlen(prefix);
    int get = sl_http_method_is(req, "GET") || sl_http_method_is(req, "HEAD");
    if (sl_http_path_is(req, "/v1/messages")) {
        if (sl_http_method_is(req, "POST"))
            return handle_post(a, req, who);
        return get ? handle_list(a, req) : method_not_allowed(a, req, R_LIST, "GET, POST, OPTIONS");
    }
    if (req->path_normalized.len > plen && memcmp(req->path_normalized.base, prefix, plen) == 0) {
        if (!get)
            return method_not_allowed(a, req, R_GET, "GET");
        return handle_get(a, req, req->path_normalized.base + plen, req->path_normalized.len - plen);
    }
    if (sl_http_path_is(req, "/healthz")) {
        if (!get)
            return method_not_allowed(a, req, R_HEALTHZ, "GET");
        respond(a, req, R_HEALTHZ, 200, H2O_STRLIT("{\"status\":\"ok\"}"));
        return 0;
    }
    if (sl_http_path_is(req, "/readyz"))
        return get ? handle_readyz(a, req) : method_not_allowed(a, req, R_READYZ, "GET");
    if (sl_http_path_is(req, "/metrics"))
        return get ? handle_metrics(a, req) : method_not_allowed(a, req, R_METRICS, "GET");
    respond_error(a, req, R_OTHER, 404, "not_found", NULL, "no such endpoint");
    return 0;
}

int sl_api_handle(void *data, h2o_req_t *req)
{
    sl_api_t *a = data;
    if (sl_http_method_is(req, "OPTIONS")) { /* CORS preflight */
        count(a, R_OTHER, sl_http_preflight(req, "GET, POST, OPTIONS"));
        return 0;
    }
    /* The bearer is identified once (a JWT's signature checked once), only where it counts: the
     * rate limit of /v1/ and posts. */
    int v1 = req->path_normalized.len >= 4 && memcmp(req->path_normalized.base, "/v1/", 4) == 0;
    int post = sl_http_method_is(req, "POST") && sl_http_path_is(req, "/v1/messages");
    sl_auth_who_t who;
    memset(&who, 0, sizeof(who));
    who.result = SL_AUTH_MISSING;
    if (post || (a->limiter != NULL && v1))
        sl_auth_identify(a->conf.auth, req, sl_time_now_us() / 1000000, &who);
    int r = a->limiter != NULL && v1 && limited(a, req, &who) ? 0 : route(a, req, &who);
    sl_auth_who_free(&who);
    return r;
}

sl_api_t *sl_api_create(h2o_loop_t *loop, const sl_api_conf_t *conf)
{
    sl_api_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    a->conf = *conf;
    a->loop = loop;
    sl_histogram_init(&a->post_latency, sl_latency_bounds, sl_latency_nbounds);
    sl_amqp_topology_defaults(&a->topology, conf->queue_max_length, conf->queue_max_bytes);
    a->topology.role = SL_AMQP_ROLE_PUBLISHER;
    sl_publisher_conf_t pc = {.url = conf->amqp_url,
                              .conn_name = "sluice-api",
                              .topology = a->topology,
                              .max_unconfirmed = (size_t)conf->max_unconfirmed,
                              .heartbeat_s = 10,
                              .timeout_ms = 2000,
                              .reconnect_ms = 500};
    a->pub = sl_publisher_create(loop, &pc);
    sl_pgpool_conf_t pg = {.url = conf->db_url,
                           .nconns = (size_t)conf->db_conns,
                           .max_queue = 10000,
                           .reconnect_ms = 1000,
                           .connect_timeout_ms = (int)conf->db_connect_timeout_ms,
                           .query_timeout_ms = (int)conf->db_query_timeout_ms};
    a->pg = sl_pgpool_create(loop, &pg);
    if (conf->client_rate > 0)
        a->limiter = sl_ratelimit_create(conf->client_rate, conf->client_burst, 100000);
    if (a->pub == NULL || a->pg == NULL || (conf->client_rate > 0 && a->limiter == NULL)) {
        sl_api_destroy(a);
        return NULL;
    }
    return a;
}

size_t sl_api_inflight(const sl_api_t *a)
{
    return a->inflight;
}

void sl_api_destroy(sl_api_t *a)
{
    if (a == NULL)
        return;
    sl_publisher_destroy(a->pub);
    sl_pgpool_destroy(a->pg);
    sl_ratelimit_destroy(a->limiter);
    sl_auth_destroy(a->conf.auth);
    free(a);
}
