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
#include "sl_chanpolicy.h"
#include "sl_http.h"
#include "sl_log.h"
#include "sl_message.h"
#include "sl_metrics.h"
#include "sl_pgpool.h"
#include "sl_publisher.h"
#include "sl_pull.h"
#include "sl_ratelimit.h"
#include "sl_retention.h"
#include "sl_stream.h"
#include "sl_time.h"
#include "sl_uuid.h"

enum route { R_POST, R_LIST, R_GET, R_HEALTHZ, R_READYZ, R_METRICS, R_OTHER, R_EDIT, R_DELETE, R_BATCH, R__COUNT };
static const char *const route_names[R__COUNT] = {"post_message",   "list_messages", "get_message", "healthz",
                                                  "readyz",         "metrics",       "other",       "edit_message",
                                                  "delete_message", "post_batch"};

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
    uint64_t read_refused[2]; /* private channels refused to readers: [0] token_required, [1] channel_forbidden */
    uint64_t reader_token_refused; /* readers' tokens refused (401) while some channel is private */
    sl_ratelimit_t *limiter; /* NULL: no per-client limit */
    sl_histogram_t post_latency; /* seconds from a POST's request head to its answer */
    const char *reader_audience; /* the "aud" of readers' JWTs (NULL: the verifier's own) */
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

/* The answer to a publish the broker refused (or could not take): 429 or 503. */
static void refuse_publish(sl_api_t *a, h2o_req_t *req, int route, sl_publish_result_t r)
{
    switch (r) {
    case SL_PUBLISH_NACK:
        respond_error(a, req, route, 429, "queue_full", NULL,
                      "the message queue is full; slow down and retry after the given delay");
        break;
    case SL_PUBLISH_BLOCKED:
        respond_error(a, req, route, 503, "broker_blocked", NULL,
                      "the message broker is refusing writes (resource alarm); retry later");
        break;
    case SL_PUBLISH_BUSY:
        respond_error(a, req, route, 503, "too_many_in_flight", NULL,
                      "too many messages await the broker's confirmation; retry later");
        break;
    default:
        respond_error(a, req, route, 503, "broker_unavailable", NULL,
                      "the message broker is unavailable; the message was not accepted, retry later");
        break;
    }
}

static void answer_refusal(struct post *p, sl_publish_result_t r)
{
    refuse_publish(p->api, p->req, R_POST, r);
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
    int64_t after; /* a pull's position */
    sl_pgquery_t *query;
    int waiting;
    /* a history page that reached its end, while the retention's mark is read */
    json_t *page;
    int64_t before, oldest; /* the before asked for (INT64_MAX: none), the page's oldest seq (0: empty) */
    char channel[1][SL_CHANNEL_MAX + 1]; /* "" for every channel */
    /* GET /v1/messages/{id} while some channels are private: the reader's token's channels (moved
     * from its sl_auth_who_t), checked once the message's channel is known */
    int check_private, has_token;
    sl_chanset_t granted;
};

static void read_dispose(void *data)
{
    struct read *r = data;
    r->req = NULL;
    sl_chanset_free(&r->granted);
    json_decref(r->page);
    r->page = NULL;
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

/* Sends root (a reference taken). */
static void respond_json(struct read *r, json_t *root)
{
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (text == NULL) {
        respond_error(r->api, r->req, r->route, 503, "out_of_memory", NULL, "out of memory");
        return;
    }
    respond(r->api, r->req, r->route, 200, text, strlen(text));
    free(text);
}

/* Readers of private channels (SLUICE_PRIVATE_CHANNELS): the api's history, pulls and single
 * messages follow the policy sse's streams follow (sl_chanpolicy.h). While some channel is private
 * a reading request's token (Authorization: Bearer, else ?token=: sl_auth_identify_reader) is
 * identified in sl_api_handle: a valid JWT may read what its "channels" claim covers besides the
 * public channels; no token, or a writer's table token, the public channels only; a token that is
 * no valid one is refused (401, with its JWT code), as sse refuses it. With no private channel no
 * reader's token is looked at, as before tokens existed. */
static int reads_private(const sl_api_t *a)
{
    return sl_chanpolicy_any_private(a->conf.policy);
}

/* Refuses (401, with its code) a reader whose token is no valid one while some channel is private.
 * Returns 1 when it refused, else 0. */
static int refuse_reader(sl_api_t *a, h2o_req_t *req, int route, const sl_auth_who_t *who)
{
    if (!reads_private(a) || who->result != SL_AUTH_INVALID)
        return 0;
    a->reader_token_refused++;
    account(a, req, route, 401);
    sl_auth_refuse_who(req, who, who->result);
    return 1;
}

/* The channels who's token grants (NULL: none, or nothing is private). */
static const sl_chanset_t *granted_by(const sl_api_t *a, const sl_auth_who_t *who)
{
    return reads_private(a) && who->result == SL_AUTH_OK && who->is_jwt ? &who->claims.channels : NULL;
}

/* The read keeps what who's token grants (moved out of who) to check its rows against. */
static void read_keep_reader(struct read *r, sl_auth_who_t *who)
{
    r->check_private = reads_private(r->api);
    if (granted_by(r->api, who) != NULL) {
        r->has_token = 1;
        r->granted = who->claims.channels;
        who->claims.channels = (sl_chanset_t)SL_CHANSET_INIT;
    }
}

static const sl_chanset_t *read_granted(const struct read *r)
{
    return r->has_token ? &r->granted : NULL;
}

/* May the reader of r read channel (a row's check after the query)? */
static int read_may(const void *ctx, const char *channel)
{
    const struct read *r = ctx;
    return sl_chanpolicy_may_read(r->api->conf.policy, read_granted(r), channel, strlen(channel));
}

/* Refuses (401 token_required or 403 channel_forbidden) a reader with granted (NULL: no token)
 * that may not read channel; the answer's message names shown (the channel, or for a message
 * asked for by its id its id: an id does not tell its private channel's name). Returns 1 when it
 * refused, else 0. */
static int refuse_private(sl_api_t *a, h2o_req_t *req, int route, const sl_chanset_t *granted, const char *field,
                          const char *channel, const char *shown)
{
    sl_chan_read_t r = sl_chanpolicy_read(a->conf.policy, granted, channel, strlen(channel));
    if (r == SL_CHAN_READ_OK)
        return 0;
    a->read_refused[r == SL_CHAN_READ_FORBIDDEN]++;
    SL_INFO("event=private_channel_refused transport=api channel=%s code=%s", channel, sl_chan_read_code(r));
    account(a, req, route, sl_chan_read_status(r));
    sl_auth_refuse_read(req, r, field, shown);
    return 1;
}

/* The end of a history page that reached the oldest message kept: with the retention's mark of
 * its channels read after the page (the mark only grows, so it covers what the page missed), the
 * history ends with an explicit reset rather than pretending to be the feed's start: a page with
 * messages gets a next (the next page is the reset), an empty one the reset. */
static void on_history_mark(void *data, const PGresult *res, const char *err)
{
    struct read *r = data;
    json_t *page = r->page, *next = json_null(), *root;
    r->page = NULL;
    read_finish(r);
    if (err != NULL || PQntuples(res) != 1) {
        json_decref(page);
        respond_error(r->api, r->req, r->route, 503, "database_unavailable", NULL, "the database is unavailable");
        return;
    }
    int64_t low = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    char cursor[24];
    snprintf(cursor, sizeof(cursor), "%lld", (long long)r->oldest);
    if (low > 0 && r->oldest > 0)
        next = json_string(cursor);
    root = json_pack("{s:o, s:o}", "messages", page, "next", next);
    if (low > 0 && r->oldest == 0)
        json_object_set_new(root, "reset",
                            json_pack("{s:s, s:o}", "reason", "too_old", "since",
                                      r->before == INT64_MAX ? json_null() : json_integer(r->before)));
    respond_json(r, root);
}

static const char SQL_MARK_ALL[] = "SELECT " SL_RETENTION_LOW_ALL;
static const char SQL_MARK_IN[] = "SELECT " SL_RETENTION_LOW_IN("$1");
static const char SQL_MARK_READABLE[] = "SELECT " SL_PULL_SQL_LOW_READABLE("$1", "$2");

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
        if (r->check_private && r->route == R_GET &&
            refuse_private(r->api, r->req, r->route, read_granted(r), NULL, m.channel, m.id)) {
            sl_message_clear(&m);
            json_decref(arr);
            return;
        }
        /* every channel: the query left out what the reader may not read; each row is checked too */
        if (r->check_private && r->route == R_LIST && !read_may(r, m.channel)) {
            last = m.seq;
            sl_message_clear(&m);
            continue;
        }
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
        if (!more) { /* the end of the history: the feed's start, or the retention's? */
            char arrlit[SL_CHANNEL_MAX + 3];
            snprintf(arrlit, sizeof(arrlit), "{%s}", r->channel[0]);
            const char *p1[] = {arrlit};
            r->page = arr;
            r->oldest = last;
            r->waiting = 1;
            r->api->inflight++;
            if (r->channel[0][0] != '\0') {
                r->query = sl_pgpool_query(r->api->pg, SQL_MARK_IN, 1, p1, on_history_mark, r);
            } else if (r->check_private) { /* a private channel it may not read never resets it */
                sl_pull_readable_t rd;
                sl_pull_readable_init(&rd, r->api->conf.policy, read_granted(r));
                const char *p2[] = {rd.priv, rd.granted};
                r->query = sl_pgpool_query(r->api->pg, SQL_MARK_READABLE, 2, p2, on_history_mark, r);
                sl_pull_readable_free(&rd);
            } else {
                r->query = sl_pgpool_query(r->api->pg, SQL_MARK_ALL, 0, NULL, on_history_mark, r);
            }
            if (r->query == NULL) {
                read_finish(r);
                respond_error(r->api, r->req, r->route, 503, "database_unavailable", NULL, "the database is unavailable");
            }
            return;
        }
        root = json_pack("{s:o, s:o}", "messages", json_incref(arr), "next", json_string(cursor));
    }
    json_decref(arr);
    respond_json(r, root);
}

/* Deleted messages (a Mastodon post deleted at its source) are no longer shown. */
static const char SQL_LIST_CHANNEL[] = "SELECT " SL_DB_MESSAGE_COLUMNS " FROM messages WHERE channel = $1 AND seq < $2"
                                       " AND deleted_at IS NULL ORDER BY seq DESC LIMIT $3";
static const char SQL_LIST_ALL[] = "SELECT " SL_DB_MESSAGE_COLUMNS " FROM messages WHERE seq < $1"
                                   " AND deleted_at IS NULL ORDER BY seq DESC LIMIT $2";
/* Every channel while some are private: the channels the reader may read (sl_pull_readable_t as $3, $4). */
static const char SQL_LIST_READABLE[] = "SELECT " SL_DB_MESSAGE_COLUMNS " FROM messages WHERE seq < $1"
                                        " AND deleted_at IS NULL" SL_PULL_SQL_READABLE("$3", "$4")
                                        " ORDER BY seq DESC LIMIT $2";
static const char SQL_GET[] = "SELECT " SL_DB_MESSAGE_COLUMNS " FROM messages WHERE id = $1 AND deleted_at IS NULL";

int sl_api_int_param(h2o_req_t *req, const char *name, long long min, long long max, long long *out, int *present)
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

/* GET /v1/messages?after=: a pull (sl_pull.h), oldest first, from the database; long-polls (wait)
 * are the sse service's, which waits without holding a database connection. */
static void on_pull(void *data, const PGresult *res, const char *err)
{
    struct read *r = data;
    const char *reset;
    sl_pull_page_t page;
    read_finish(r);
    if (err != NULL) {
        respond_error(r->api, r->req, r->route, 503, "database_unavailable", NULL, "the database is unavailable");
        return;
    }
    sl_pull_page_init(&page);
    int64_t next = sl_pull_page_from_result(&page, res, r->after, r->limit,
                                            r->check_private && r->channel[0][0] == '\0' ? read_may : NULL, r, &reset);
    sl_pull_page_end(&page, next, reset, r->after);
    respond(r->api, r->req, r->route, 200, page.buf.data, page.buf.len);
    sl_buf_free(&page.buf);
}

static int handle_pull(sl_api_t *a, h2o_req_t *req, sl_auth_who_t *who)
{
    sl_pull_params_t p;
    sl_pull_readable_t rd;
    sl_error_t err;
    int bad = sl_pull_parse(req, a->conf.history_max, &p, &err) != 0;
    if (!bad && p.wait_s > 0) {
        sl_error_set(&err, 400, "invalid_wait", "wait",
                     "long-polls (wait) are served by the sse service: GET /v1/messages?after=&wait= on its port"
                     " (8081 by default); here wait must be 0");
        bad = 1;
    }
    if (bad) {
        account(a, req, R_LIST, err.status);
        sl_http_send_error(req, &err, 0);
        return 0;
    }
    if (sl_http_query(req, "before", &(h2o_iovec_t){0}) != 0) {
        respond_error(a, req, R_LIST, 400, "invalid_cursor", "before",
                      "give 'after' (oldest first) or 'before' (newest first), not both");
        return 0;
    }
    if (!p.all && refuse_private(a, req, R_LIST, granted_by(a, who), "channel", p.channel[0], p.channel[0]))
        return 0;
    struct read *r = start_read(a, req, R_LIST);
    r->limit = p.limit;
    r->after = p.after;
    if (!p.all)
        memcpy(r->channel[0], p.channel[0], sizeof(r->channel[0]));
    read_keep_reader(r, who);
    r->waiting = 1;
    a->inflight++;
    sl_pull_readable_init(&rd, a->conf.policy, read_granted(r));
    r->query = sl_pull_query(a->pg, p.all, (const char(*)[SL_CHANNEL_MAX + 1])p.channel, 1,
                             p.all && reads_private(a) ? &rd : NULL, p.after, p.limit, on_pull, r);
    sl_pull_readable_free(&rd);
    if (r->query == NULL) {
        read_finish(r);
        respond_error(a, req, R_LIST, 503, "database_unavailable", NULL, "the database is unavailable");
    }
    return 0;
}

static int handle_list(sl_api_t *a, h2o_req_t *req, sl_auth_who_t *who)
{
    long long limit = 50, before = INT64_MAX;
    int present;
    h2o_iovec_t channel;
    char limtext[24], beftext[24], msg[96];

    if (refuse_reader(a, req, R_LIST, who))
        return 0;
    if (sl_http_query(req, "after", &channel) != 0)
        return handle_pull(a, req, who);

    if (sl_api_int_param(req, "limit", 1, a->conf.history_max, &limit, &present) != 0) {
        snprintf(msg, sizeof(msg), "'limit' must be an integer from 1 to %lld", a->conf.history_max);
        respond_error(a, req, R_LIST, 400, "invalid_limit", "limit", msg);
        return 0;
    }
    if (sl_api_int_param(req, "before", 1, INT64_MAX, &before, &present) != 0) {
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
    r->before = before;
    if (has_channel == 1)
        snprintf(r->channel[0], sizeof(r->channel[0]), "%.*s", (int)channel.len, channel.base);
    read_keep_reader(r, who);
    if (has_channel == 1 && refuse_private(a, req, R_LIST, read_granted(r), "channel", r->channel[0], r->channel[0]))
        return 0;
    snprintf(limtext, sizeof(limtext), "%lld", limit);
    snprintf(beftext, sizeof(beftext), "%lld", before);
    if (has_channel == 1) {
        const char *params[] = {channel.base, beftext, limtext};
        run_read(r, SQL_LIST_CHANNEL, 3, params);
    } else if (reads_private(a)) {
        sl_pull_readable_t rd;
        sl_pull_readable_init(&rd, a->conf.policy, read_granted(r));
        const char *params[] = {beftext, limtext, rd.priv, rd.granted};
        run_read(r, SQL_LIST_READABLE, 4, params);
        sl_pull_readable_free(&rd);
    } else {
        const char *params[] = {beftext, limtext};
        run_read(r, SQL_LIST_ALL, 2, params);
    }
    return 0;
}

/* who: its token's channels move to the read, which checks them once the message's channel is known. */
static int handle_get(sl_api_t *a, h2o_req_t *req, sl_auth_who_t *who, const char *id, size_t len)
{
    char idbuf[SL_UUID_STRLEN];
    if (refuse_reader(a, req, R_GET, who))
        return 0;
    if (!sl_uuid_valid(id, len)) {
        respond_error(a, req, R_GET, 404, "not_found", NULL, "no message has this id (ids are UUIDs)");
        return 0;
    }
    memcpy(idbuf, id, len);
    idbuf[len] = '\0';
    const char *params[] = {idbuf};
    struct read *r = start_read(a, req, R_GET);
    read_keep_reader(r, who);
    run_read(r, SQL_GET, 1, params);
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
    sl_metrics_one(&b, "sluice_api_publish_batches_total", "counter",
                   "AMQP messages the published posts went out in (posts of one loop turn share one).",
                   (double)s->batches);
    sl_metrics_one(&b, "sluice_api_publish_send_waits_total", "counter",
                   "Batches held back because the broker connection's send buffer had no room (a node that reads "
                   "slowly or not at all); posts meanwhile get 503 too_many_in_flight.", (double)s->send_waits);
    sl_metrics_one(&b, "sluice_api_broker_blocked_seconds_total", "counter",
                   "Time the broker kept us blocked.", (double)s->blocked_us_total / 1e6);
    sl_metrics_one(&b, "sluice_api_broker_connects_total", "counter",
                   "Successful broker connections.", (double)s->reconnects);
    sl_metrics_one(&b, "sluice_api_publishes_unconfirmed", "gauge",
                   "Publishes awaiting confirmation.", (double)sl_publisher_outstanding(a->pub));
    sl_metrics_one(&b, "sluice_api_idempotent_replays_total", "counter",
                   "POSTs answered from an Idempotency-Key.", (double)a->idempotent_replays);
    sl_metrics_one(&b, "sluice_api_rate_limited_total", "counter",
                   "Requests refused by the per-client limit.", (double)a->rate_limited);
    sl_metrics_header(&b, "sluice_api_private_refused_total", "counter",
                      "Reads of private channels refused, by code (token_required: no token; channel_forbidden: "
                      "not in the token's channels).");
    sl_metrics_sample(&b, "sluice_api_private_refused_total", "code=\"token_required\"", (double)a->read_refused[0]);
    sl_metrics_sample(&b, "sluice_api_private_refused_total", "code=\"channel_forbidden\"",
                      (double)a->read_refused[1]);
    sl_metrics_one(&b, "sluice_api_reader_token_refused_total", "counter",
                   "Readers' tokens refused (401, by their code in sluice_jwt_verifications_total) while some channel "
                   "is private.", (double)a->reader_token_refused);
    sl_metrics_one(&b, "sluice_api_ready", "gauge",
                   "1 when broker and database are reachable.", sl_publisher_ready(a->pub) && sl_pgpool_ready(a->pg));
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

#define CLIENT_KEY_MAX 320

/* The per-client limit's key of a request from who into key: the verified identity (a table
 * token, however the header spells it; a JWT's sub), else the client's address. */
static void client_key(h2o_req_t *req, const sl_auth_who_t *who, char key[CLIENT_KEY_MAX])
{
    char peer[64];
    if (who->result == SL_AUTH_OK && who->is_jwt)
        snprintf(key, CLIENT_KEY_MAX, "j:%s", who->claims.sub); /* sub: at most 255 bytes */
    else if (who->result == SL_AUTH_OK && who->token != NULL && strlen(who->token) < 300)
        snprintf(key, CLIENT_KEY_MAX, "t:%s", who->token);
    else
        snprintf(key, CLIENT_KEY_MAX, "a:%s", sl_http_client_key(req, peer, sizeof(peer)));
}

/* Per-client token bucket, separate from the broker's back pressure: keyed by client_key; a
 * made-up Authorization value gets no bucket of its own. A POST with an unknown token is refused
 * (401, by handle_post or handle_batch) before it costs a bucket. Answers 429 itself when over. */
static int limited(sl_api_t *a, h2o_req_t *req, const sl_auth_who_t *who)
{
    char key[CLIENT_KEY_MAX];
    if (who->result == SL_AUTH_INVALID && sl_http_method_is(req, "POST") &&
        (sl_http_path_is(req, "/v1/messages") || sl_http_path_is(req, "/v1/messages/batch")))
        return 0;
    client_key(req, who, key);
    int wait = sl_ratelimit_take(a->limiter, key, sl_time_mono_us());
    if (wait == 0)
        return 0;
    a->rate_limited++;
    count(a, R_OTHER, 429);
    sl_http_fail(req, 429, "rate_limited", NULL, "too many requests from this client; slow down", wait);
    return 1;
}

/* ---- PATCH and DELETE /v1/messages/{id}, POST /v1/messages/batch ----------------------------
 *
 * Each request is one queue item of its own, published and confirmed like a post before its 202,
 * with the same refusals (429/503 with Retry-After): an edit or a delete is an event with a new
 * event_id (a UUIDv7) that the persister numbers, applies and announces as Mastodon's edits are;
 * a batch is its messages as one group (sl_publisher_publish_group): one AMQP message the broker
 * takes or refuses whole, which the persister stores in one transaction. Idempotency-Keys live in
 * request_keys, scoped "message:<id>" (an edit or a delete of that message) or "author:<name>" (a
 * batch, by its first message's author); the same key with the same request within 24 h answers
 * as the first time (same ids), with another request 422. */

#define PENDING_WINDOW_US (300LL * 1000000) /* a UUIDv7 this recent, not stored yet, may be queued */
#define BATCH_BODY_MAX (1024 * 1024)        /* bytes of a batch's body (h2o's own limit too) */
#define FINGERPRINT_NS "6f1d3c2a-8b4e-4f5a-9c7d-2e1b0a9f8c3d" /* fixed: what a request asked for */

struct change {
    sl_api_t *api;
    h2o_req_t *req;       /* NULL once h2o disposed the request */
    int route;            /* R_EDIT, R_DELETE or R_BATCH */
    int waiting;          /* counted in api->inflight */
    int deleted;          /* edit, delete: the message is deleted (409, unless a key replays) */
    uint64_t tag;         /* delivery tag while publishing, else 0 */
    sl_pgquery_t *query;  /* while a query runs */
    size_t n;
    sl_message_t *msgs;   /* the queue items: one event, or the batch's messages (request's pool) */
    const char *ids;      /* the ids the 202 gives, space-separated (request's pool) */
    const char *request;  /* "update", "delete" or "batch" */
    char key[IDEMPOTENCY_KEY_MAX + 1];
    int has_key;
    char scope[16 + SL_AUTHOR_MAX_CHARS * 4 + 1];
    char fingerprint[SL_UUID_STRLEN]; /* UUIDv5 of what the request asks for */
};

/* Who may edit or delete a message: the one place that decides it (docs/architecture.md, "Edits,
 * deletes and batches"), from who the writer is (sl_auth_identify: a table token's author, a
 * JWT's sub). author NULL: may this request change anything at all (401 before the database is
 * asked)? Else may it change this message of author, source and channel? The admin token may
 * change any message. A writer may change its own author's messages from the api or the bot, as
 * sl_auth_may_post would let it post them (a JWT within its channels); not a table token for any
 * author ("*", bots): it may post as anyone, which must not make it able to rewrite everyone's
 * history. With writing open (no tokens, no JWT key: anyone is any author) anyone may change
 * messages from the api or the bot. Messages from Mastodon change at their source: here only the
 * admin token may change them (moderation). SL_AUTH_FORBIDDEN comes with *why. */
static sl_auth_result_t may_change(sl_api_t *a, h2o_req_t *req, const sl_auth_who_t *who, const char *author,
                                   const char *source, const char *channel, const char **why)
{
    if (a->conf.admin_token != NULL && *a->conf.admin_token != '\0' &&
        sl_auth_check_token(req, a->conf.admin_token) == SL_AUTH_OK)
        return SL_AUTH_OK;
    if (who->result != SL_AUTH_OK || author == NULL)
        return who->result;
    if (strcmp(source, "api") != 0 && strcmp(source, "bot") != 0)
        *why = "a message from Mastodon changes at its source; here only the admin token may change it";
    else if (who->author != NULL && !who->is_jwt && strcmp(who->author, "*") == 0)
        *why = "a token for any author (*) may post, not edit or delete: use the author's token or the admin token";
    else if (sl_auth_may_post(who, author, channel) == SL_AUTH_FORBIDDEN)
        *why = "this token may not change another author's message";
    else
        return sl_auth_may_post(who, author, channel);
    return SL_AUTH_FORBIDDEN;
}

static void refuse_change(sl_api_t *a, h2o_req_t *req, int route, const sl_auth_who_t *who, sl_auth_result_t ar,
                          const char *why)
{
    account(a, req, route, ar == SL_AUTH_FORBIDDEN || ar == SL_AUTH_CHANNEL_FORBIDDEN ? 403 : 401);
    if (ar == SL_AUTH_FORBIDDEN)
        sl_http_fail(req, 403, "forbidden", NULL, why, 0);
    else
        sl_auth_refuse_who(req, who, ar);
}

static void change_done(struct change *c)
{
    if (c->waiting) {
        c->waiting = 0;
        c->api->inflight--;
    }
}

static void change_dispose(void *data)
{
    struct change *c = data;
    c->req = NULL;
    if (c->tag != 0)
        sl_publisher_detach(c->api->pub, c->tag, c);
    if (c->query != NULL)
        sl_pgpool_cancel(c->query);
    change_done(c);
}

static void change_fail(struct change *c, int status, const char *code, const char *message)
{
    respond_error(c->api, c->req, c->route, status, code, NULL, message);
    change_done(c);
}

/* A change with room for n items, whose state h2o frees with the request. */
static struct change *change_new(sl_api_t *a, h2o_req_t *req, int route, size_t n)
{
    struct change *c = h2o_mem_alloc_shared(&req->pool, sizeof(*c), change_dispose);
    memset(c, 0, sizeof(*c));
    c->api = a;
    c->req = req;
    c->route = route;
    c->msgs = h2o_mem_alloc_pool(&req->pool, n * sizeof(*c->msgs));
    memset(c->msgs, 0, n * sizeof(*c->msgs));
    return c;
}

/* The request's Idempotency-Key into c. Returns 0, or -1 after answering 400. */
static int change_key(struct change *c)
{
    size_t len = 0;
    const char *key = sl_http_header(c->req, "idempotency-key", &len);
    if (key == NULL)
        return 0;
    if (!key_valid(key, len)) {
        respond_error(c->api, c->req, c->route, 400, "invalid_idempotency_key", NULL,
                      "Idempotency-Key must be 1 to 255 visible ASCII characters");
        return -1;
    }
    memcpy(c->key, key, len);
    c->key[len] = '\0';
    c->has_key = 1;
    return 0;
}

/* The items as the persist queue carries them, one per line. */
static void change_lines(const struct change *c, sl_buf_t *b)
{
    for (size_t i = 0; i < c->n; i++) {
        if (i > 0)
            sl_buf_append(b, "\n", 1);
        sl_message_append_json(b, &c->msgs[i]);
    }
}

/* The ids the answer gives (the event's, or the batch's messages'), space-separated, into c->ids. */
static void change_ids(struct change *c)
{
    char *ids = h2o_mem_alloc_pool(&c->req->pool, c->n * SL_UUID_STRLEN);
    for (size_t i = 0; i < c->n; i++) {
        memcpy(ids + i * SL_UUID_STRLEN, c->route == R_BATCH ? c->msgs[i].id : c->msgs[i].event_id, SL_UUID_STRLEN);
        ids[i * SL_UUID_STRLEN + SL_UUID_STRLEN - 1] = i + 1 < c->n ? ' ' : '\0';
    }
    c->ids = ids;
}

/* What the request asks for, as a UUIDv5: a key seen again must come with the same. */
static int change_fingerprint(struct change *c)
{
    sl_buf_t b = SL_BUF_INIT;
    sl_buf_append(&b, c->request, strlen(c->request) + 1);
    for (size_t i = 0; i < c->n; i++) { /* each field with its NUL: no two requests write the same */
        const sl_message_t *m = &c->msgs[i];
        const char *fields[] = {m->channel, m->author, m->source, m->text};
        for (int f = m->type == SL_MESSAGE_NEW ? 0 : 3; f < 4 && m->type != SL_MESSAGE_DELETE; f++)
            sl_buf_append(&b, fields[f], strlen(fields[f]) + 1);
    }
    int r = sl_uuid_v5(FINGERPRINT_NS, b.data, b.len, c->fingerprint);
    sl_buf_free(&b);
    return r;
}

static void answer_change(struct change *c)
{
    sl_buf_t b = SL_BUF_INIT;
    char ts[SL_TIME_RFC3339_LEN];
    const sl_message_t *m = &c->msgs[0];
    sl_time_format(m->created_at_us, ts);
    if (c->route == R_BATCH) {
        sl_buf_appends(&b, "{\"messages\":[");
        for (size_t i = 0; i < c->n; i++)
            sl_buf_appendf(&b, "%s{\"id\":\"%s\",\"channel\":\"%s\",\"created_at\":\"%s\"}", i > 0 ? "," : "",
                           c->msgs[i].id, c->msgs[i].channel, ts);
        sl_buf_appends(&b, "]}");
    } else {
        sl_buf_appendf(&b, "{\"type\":\"%s\",\"id\":\"%s\",\"event_id\":\"%s\",\"channel\":\"%s\",\"created_at\":\"%s\"",
                       sl_message_type_name(m->type), m->id, m->event_id, m->channel, ts);
        if (m->type == SL_MESSAGE_UPDATE)
            sl_buf_appendf(&b, ",\"edited_at\":\"%s\"", ts);
        sl_buf_appends(&b, "}");
    }
    respond(c->api, c->req, c->route, 202, b.data, b.len);
    sl_buf_free(&b);
}

static const char SQL_KEY_ACCEPTED[] =
    "UPDATE request_keys SET accepted_at = now() WHERE scope = $1 AND key = $2 AND ids = $3";

static void on_change_confirm(void *data, sl_publish_result_t r)
{
    struct change *c = data;
    c->tag = 0;
    if (r == SL_PUBLISH_OK && c->has_key) {
        const char *params[] = {c->scope, c->key, c->ids};
        sl_pgpool_query(c->api->pg, SQL_KEY_ACCEPTED, 3, params, on_ignored, NULL);
    }
    if (c->req != NULL) {
        if (r == SL_PUBLISH_OK)
            answer_change(c);
        else
            refuse_publish(c->api, c->req, c->route, r);
    }
    change_done(c);
}

/* Publishes the items (a batch as one group), or answers why not. */
static void change_go(struct change *c)
{
    if (c->deleted) {
        change_fail(c, 409, "message_deleted", "this message is deleted: it can be neither edited nor deleted again");
        return;
    }
    sl_buf_t b = SL_BUF_INIT;
    change_lines(c, &b);
    sl_publish_result_t r = sl_publisher_publish_group(c->api->pub, "", c->api->topology.persist_queue, b.data, b.len,
                                                       c->n, on_change_confirm, c, &c->tag);
    sl_buf_free(&b);
    if (r != SL_PUBLISH_OK) {
        c->tag = 0;
        refuse_publish(c->api, c->req, c->route, r);
        change_done(c);
    }
}

/* A replayed key's ids and time (a row of SQL_KEY_LOOKUP) into the items. -1 when they do not fit. */
static int take_replay(struct change *c, const PGresult *res)
{
    const char *ids = PQgetvalue(res, 0, 2), *ts = PQgetvalue(res, 0, 3);
    int64_t at;
    if ((size_t)PQgetlength(res, 0, 2) != c->n * SL_UUID_STRLEN - 1 || sl_time_parse(ts, strlen(ts), &at) != 0)
        return -1;
    for (size_t i = 0; i < c->n; i++) {
        const char *id = ids + i * SL_UUID_STRLEN;
        sl_message_t *m = &c->msgs[i];
        if (!sl_uuid_valid(id, SL_UUID_STRLEN - 1))
            return -1;
        memcpy(m->type == SL_MESSAGE_NEW ? m->id : m->event_id, id, SL_UUID_STRLEN - 1);
        m->created_at_us = at;
        if (m->type == SL_MESSAGE_UPDATE)
            m->edited_at_us = at;
    }
    change_ids(c);
    return 0;
}

static const char SQL_KEY_LOOKUP[] =
    "SELECT k.request, k.fingerprint, k.ids, k.created_at, k.accepted_at IS NOT NULL"
    " OR EXISTS (SELECT 1 FROM messages m WHERE m.id = split_part(k.ids, ' ', 1)::uuid)"
    " OR EXISTS (SELECT 1 FROM message_events e WHERE e.event_id = split_part(k.ids, ' ', 1)::uuid)"
    " OR EXISTS (SELECT 1 FROM message_events_ignored i WHERE i.event_id = split_part(k.ids, ' ', 1)::uuid)"
    " FROM request_keys k WHERE k.scope = $1 AND k.key = $2";

static void on_change_lookup(void *data, const PGresult *res, const char *err)
{
    struct change *c = data;
    c->query = NULL;
    if (err != NULL || PQntuples(res) != 1) {
        change_fail(c, 503, "database_unavailable", "could not check the Idempotency-Key; retry later");
        return;
    }
    if (strcmp(PQgetvalue(res, 0, 0), c->request) != 0 || strcmp(PQgetvalue(res, 0, 1), c->fingerprint) != 0 ||
        take_replay(c, res) != 0) {
        change_fail(c, 422, "idempotency_key_reused",
                    "this Idempotency-Key came with another request within 24 h; send that request, or use a new key");
        return;
    }
    c->api->idempotent_replays++;
    if (PQgetvalue(res, 0, 4)[0] == 't') { /* confirmed or stored: answer as the first time */
        answer_change(c);
        change_done(c);
    } else { /* refused, or its confirm was lost: the same ids again (stored once, whatever happens) */
        change_go(c);
    }
}

static const char SQL_KEY_CLAIM[] =
    "INSERT INTO request_keys (scope, key, request, fingerprint, ids, created_at) VALUES ($1, $2, $3, $4, $5, $6)"
    " ON CONFLICT (scope, key) DO UPDATE SET request = excluded.request, fingerprint = excluded.fingerprint,"
    " ids = excluded.ids, created_at = excluded.created_at, accepted_at = NULL WHERE request_keys.created_at < $7"
    " RETURNING ids";

static void on_change_claim(void *data, const PGresult *res, const char *err)
{
    struct change *c = data;
    c->query = NULL;
    if (err != NULL) {
        change_fail(c, 503, "database_unavailable", "could not record the Idempotency-Key; retry later");
        return;
    }
    if (PQntuples(res) == 1) { /* first use of the key (or the old one expired) */
        change_go(c);
        return;
    }
    const char *params[] = {c->scope, c->key};
    if ((c->query = sl_pgpool_query(c->api->pg, SQL_KEY_LOOKUP, 2, params, on_change_lookup, c)) == NULL)
        change_fail(c, 503, "database_unavailable", "the database is unavailable; retry later");
}

/* Claims the Idempotency-Key, if there is one, then goes on. */
static void change_claim(struct change *c)
{
    if (!c->has_key) {
        change_go(c);
        return;
    }
    char ts[SL_TIME_RFC3339_LEN], expired[SL_TIME_RFC3339_LEN];
    sl_time_format(c->msgs[0].created_at_us, ts);
    sl_time_format(c->msgs[0].created_at_us - IDEMPOTENCY_WINDOW_US, expired);
    const char *params[] = {c->scope, c->key, c->request, c->fingerprint, c->ids, ts, expired};
    if ((c->query = sl_pgpool_query(c->api->pg, SQL_KEY_CLAIM, 7, params, on_change_claim, c)) == NULL)
        change_fail(c, 503, "database_unavailable",
                    "the database is unavailable, so the Idempotency-Key cannot be honoured; retry later");
}

/* An id that may be a post's still in the queue: a UUIDv7 (as the api makes them) of the last
 * PENDING_WINDOW_US. */
static int maybe_queued(const char *id)
{
    char hex[13];
    if (sl_uuid_version(id) != 7)
        return 0;
    memcpy(hex, id, 8);
    memcpy(hex + 8, id + 9, 4);
    hex[12] = '\0';
    long long age_ms = sl_time_now_us() / 1000 - strtoll(hex, NULL, 16);
    return age_ms >= -60000 && age_ms <= PENDING_WINDOW_US / 1000;
}

static const char SQL_TARGET[] = "SELECT author, channel, source, deleted_at IS NOT NULL FROM messages WHERE id = $1";

static void on_target(void *data, const PGresult *res, const char *err)
{
    struct change *c = data;
    sl_message_t *m = &c->msgs[0];
    const char *why = "";
    c->query = NULL;
    if (err != NULL) {
        change_fail(c, 503, "database_unavailable", "the database is unavailable; retry later");
        return;
    }
    if (PQntuples(res) != 1) {
        if (maybe_queued(m->id)) {
            /* Accepted moments ago, perhaps, and not stored yet: say so, and when to look again. */
            account(c->api, c->req, c->route, 409);
            sl_http_fail(c->req, 409, "not_stored_yet", NULL,
                         "no message has this id yet; a post accepted in the last 5 minutes may still be queued:"
                         " retry after the given delay",
                         (int)c->api->conf.retry_after_s);
        } else {
            respond_error(c->api, c->req, c->route, 404, "not_found", NULL, "no message has this id");
        }
        change_done(c);
        return;
    }
    /* The writer is identified again: the request's own (sl_api_handle's) is gone by now. */
    sl_auth_who_t who;
    sl_auth_identify(c->api->conf.auth, c->req, sl_time_now_us() / 1000000, &who);
    sl_auth_result_t ar =
        may_change(c->api, c->req, &who, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 1), &why);
    if (ar != SL_AUTH_OK)
        refuse_change(c->api, c->req, c->route, &who, ar, why);
    sl_auth_who_free(&who);
    if (ar != SL_AUTH_OK) {
        change_done(c);
        return;
    }
    snprintf(m->channel, sizeof(m->channel), "%s", PQgetvalue(res, 0, 1));
    c->deleted = PQgetvalue(res, 0, 3)[0] == 't';
    change_claim(c);
}

/* Counted in flight from here to the answer. */
static void change_begin(struct change *c)
{
    c->waiting = 1;
    c->api->inflight++;
}

/* who: the request's bearer, identified by sl_api_handle. */
static int handle_change(sl_api_t *a, h2o_req_t *req, const sl_auth_who_t *who, const char *id, size_t len)
{
    int route = sl_http_method_is(req, "PATCH") ? R_EDIT : R_DELETE;
    const char *why = "";
    sl_error_t err;
    sl_auth_result_t ar = may_change(a, req, who, NULL, NULL, NULL, &why);
    if (ar != SL_AUTH_OK) {
        refuse_change(a, req, route, who, ar, why);
        return 0;
    }
    if (!sl_uuid_valid(id, len)) {
        respond_error(a, req, route, 404, "not_found", NULL, "no message has this id (ids are UUIDs)");
        return 0;
    }
    struct change *c = change_new(a, req, route, 1);
    sl_message_t *m = &c->msgs[0];
    if (route == R_EDIT) {
        if (!sl_http_content_is_json(req)) {
            respond_error(a, req, route, 415, "unsupported_media_type", NULL, "Content-Type must be application/json");
            return 0;
        }
        if (req->entity.len > SL_BODY_MAX) {
            respond_error(a, req, route, 413, "body_too_large", NULL, "the body must be at most 16384 bytes");
            return 0;
        }
        if (sl_message_edit_from_request(req->entity.base != NULL ? req->entity.base : "", req->entity.len, m->text,
                                         &err) != 0) {
            account(a, req, route, err.status);
            sl_http_send_error(req, &err, 0);
            return 0;
        }
    }
    if (change_key(c) != 0)
        return 0;
    for (size_t i = 0; i < len; i++) /* one spelling: the database's and the streams' */
        m->id[i] = (char)(id[i] >= 'A' && id[i] <= 'F' ? id[i] - 'A' + 'a' : id[i]);
    m->type = route == R_EDIT ? SL_MESSAGE_UPDATE : SL_MESSAGE_DELETE;
    m->created_at_us = sl_time_now_us();
    if (route == R_EDIT)
        m->edited_at_us = m->created_at_us;
    c->n = 1;
    c->request = sl_message_type_name(m->type);
    snprintf(c->scope, sizeof(c->scope), "message:%s", m->id);
    if (sl_uuid_v7(m->event_id) != 0 || change_fingerprint(c) != 0) {
        respond_error(a, req, route, 503, "no_entropy", NULL, "could not make an id; retry");
        return 0;
    }
    change_ids(c);
    change_begin(c);
    const char *params[] = {m->id};
    if ((c->query = sl_pgpool_query(a->pg, SQL_TARGET, 1, params, on_target, c)) == NULL)
        change_fail(c, 503, "database_unavailable", "the database is unavailable; retry later");
    return 0;
}

/* A 400 or 403 that names each refused item of a batch:
 * {"error":{"code","message","items":[{"index","code","message"[,"field"]},…]}}. */
static void answer_items(sl_api_t *a, h2o_req_t *req, int status, const char *code, const char *message,
                         const sl_batch_error_t *errs, size_t n)
{
    json_t *items = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_pack("{s:I, s:s, s:s}", "index", (json_int_t)errs[i].index, "code", errs[i].err.code,
                               "message", errs[i].err.message);
        if (it != NULL && errs[i].err.field != NULL)
            json_object_set_new(it, "field", json_string(errs[i].err.field));
        json_array_append_new(items, it);
    }
    json_t *root = json_pack("{s:{s:s, s:s, s:o}}", "error", "code", code, "message", message, "items", items);
    char *text = root != NULL ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (text == NULL) {
        respond_error(a, req, R_BATCH, 503, "out_of_memory", NULL, "out of memory");
        return;
    }
    respond(a, req, R_BATCH, status, text, strlen(text));
    free(text);
}

/* Validates a batch into c (its messages, authors and channels for who, and its cost), answering
 * any refusal. Returns 0 when it may go on. */
static int batch_validate(struct change *c, const sl_auth_who_t *who, int ndjson)
{
    sl_api_t *a = c->api;
    h2o_req_t *req = c->req;
    sl_error_t err;
    size_t nerrs = 0;
    char msg[128], key[CLIENT_KEY_MAX];
    int ret = -1;
    sl_batch_error_t *errs = malloc(SL_BATCH_MAX * sizeof(*errs));
    if (errs == NULL) {
        respond_error(a, req, R_BATCH, 503, "out_of_memory", NULL, "out of memory");
        return -1;
    }
    int r = sl_message_batch_from_request(req->entity.base != NULL ? req->entity.base : "", req->entity.len, ndjson,
                                          c->msgs, &c->n, &err, errs, &nerrs);
    if (r == -1) {
        account(a, req, R_BATCH, err.status);
        sl_http_send_error(req, &err, 0);
        goto Exit;
    }
    if (r != 0) {
        snprintf(msg, sizeof(msg), "%zu of the batch's messages are invalid (see items); none was accepted", nerrs);
        answer_items(a, req, 400, "invalid_batch", msg, errs, nerrs);
        goto Exit;
    }
    for (size_t i = 0; i < c->n; i++) {
        sl_auth_result_t ar = sl_auth_may_post(who, c->msgs[i].author, c->msgs[i].channel);
        if (ar == SL_AUTH_OK)
            continue;
        errs[nerrs].index = i;
        if (ar == SL_AUTH_CHANNEL_FORBIDDEN)
            sl_error_set(&errs[nerrs++].err, 403, "channel_forbidden", "channel",
                         "this token may not post to this channel");
        else
            sl_error_set(&errs[nerrs++].err, 403, "forbidden", "author", "this token may not post as this author");
    }
    if (nerrs > 0) {
        snprintf(msg, sizeof(msg), "this token may not post %zu of the messages (see items); none was accepted",
                 nerrs);
        answer_items(a, req, 403, "forbidden", msg, errs, nerrs);
        goto Exit;
    }
    /* A batch of n costs n of the client's rate: limited() took one. */
    int wait = 0;
    if (a->limiter != NULL && c->n > 1) {
        client_key(req, who, key);
        wait = sl_ratelimit_take_n(a->limiter, key, (double)c->n, 1, sl_time_mono_us());
    }
    if (wait > 0) {
        a->rate_limited++;
        account(a, req, R_BATCH, 429);
        sl_http_fail(req, 429, "rate_limited", NULL,
                     "this batch costs one request per message, more than this client has left; slow down", wait);
        goto Exit;
    }
    ret = 0;
Exit:
    free(errs);
    return ret;
}

/* who: the request's bearer, identified by sl_api_handle. */
static int handle_batch(sl_api_t *a, h2o_req_t *req, const sl_auth_who_t *who)
{
    if (who->result != SL_AUTH_OK) {
        account(a, req, R_BATCH, 401);
        sl_auth_refuse_who(req, who, who->result);
        return 0;
    }
    int ndjson = sl_http_content_type_is(req, "application/x-ndjson");
    if (!ndjson && !sl_http_content_is_json(req)) {
        respond_error(a, req, R_BATCH, 415, "unsupported_media_type", NULL,
                      "Content-Type must be application/json (a JSON array) or application/x-ndjson (one message a"
                      " line)");
        return 0;
    }
    if (req->entity.len > BATCH_BODY_MAX) {
        respond_error(a, req, R_BATCH, 413, "body_too_large", NULL, "the body must be at most 1 MiB");
        return 0;
    }
    struct change *c = change_new(a, req, R_BATCH, SL_BATCH_MAX);
    if (change_key(c) != 0 || batch_validate(c, who, ndjson) != 0)
        return 0;
    int64_t now = sl_time_now_us();
    for (size_t i = 0; i < c->n; i++) {
        if (sl_uuid_v7(c->msgs[i].id) != 0) {
            respond_error(a, req, R_BATCH, 503, "no_entropy", NULL, "could not make an id; retry");
            return 0;
        }
        c->msgs[i].created_at_us = now;
    }
    /* One AMQP message: it must fit what a publish may carry and the queue's bound in bytes. */
    sl_buf_t b = SL_BUF_INIT;
    change_lines(c, &b);
    size_t bytes = b.len;
    sl_buf_free(&b);
    if (bytes > SL_AMQP_MAX_BATCH_BYTES || (a->conf.queue_max_bytes > 0 && (long long)bytes > a->conf.queue_max_bytes)) {
        char msg[160];
        snprintf(msg, sizeof(msg), "the batch takes %zu bytes in the queue, more than the %lld one message may take;"
                 " send it in smaller batches", bytes,
                 a->conf.queue_max_bytes > 0 && a->conf.queue_max_bytes < SL_AMQP_MAX_BATCH_BYTES
                     ? a->conf.queue_max_bytes : (long long)SL_AMQP_MAX_BATCH_BYTES);
        respond_error(a, req, R_BATCH, 413, "batch_too_large", NULL, msg);
        return 0;
    }
    c->request = "batch";
    snprintf(c->scope, sizeof(c->scope), "author:%s", c->msgs[0].author);
    if (change_fingerprint(c) != 0) {
        respond_error(a, req, R_BATCH, 503, "out_of_memory", NULL, "out of memory");
        return 0;
    }
    change_ids(c);
    change_begin(c);
    change_claim(c);
    return 0;
}

/* The routes past the OPTIONS and the rate limit. */
static int route(sl_api_t *a, h2o_req_t *req, sl_auth_who_t *who)
{
    const char *prefix = "/v1/messages/";
    size_t plen = strlen(prefix);
    int get = sl_http_method_is(req, "GET") || sl_http_method_is(req, "HEAD");
    if (sl_http_path_is(req, "/v1/messages")) {
        if (sl_http_method_is(req, "POST"))
            return handle_post(a, req, who);
        return get ? handle_list(a, req, who) : method_not_allowed(a, req, R_LIST, "GET, POST, OPTIONS");
    }
    if (sl_http_path_is(req, "/v1/messages/batch"))
        return sl_http_method_is(req, "POST") ? handle_batch(a, req, who)
                                              : method_not_allowed(a, req, R_BATCH, "POST, OPTIONS");
    if (req->path_normalized.len > plen && memcmp(req->path_normalized.base, prefix, plen) == 0) {
        if (sl_http_method_is(req, "PATCH") || sl_http_method_is(req, "DELETE"))
            return handle_change(a, req, who, req->path_normalized.base + plen, req->path_normalized.len - plen);
        if (!get)
            return method_not_allowed(a, req, R_GET, "GET, PATCH, DELETE");
        return handle_get(a, req, who, req->path_normalized.base + plen, req->path_normalized.len - plen);
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
        count(a, R_OTHER, sl_http_preflight(req, "GET, POST, PATCH, DELETE, OPTIONS"));
        return 0;
    }
    /* The bearer is identified once (a JWT's signature checked once), only where it counts: the
     * rate limit of /v1/, writes (posts, batches, edits, deletes), and reads while some channel is
     * private (what the reader may read). */
    int v1 = req->path_normalized.len >= 4 && memcmp(req->path_normalized.base, "/v1/", 4) == 0;
    int post = (sl_http_method_is(req, "POST") &&
                (sl_http_path_is(req, "/v1/messages") || sl_http_path_is(req, "/v1/messages/batch"))) ||
               ((sl_http_method_is(req, "PATCH") || sl_http_method_is(req, "DELETE")) && v1);
    sl_auth_who_t who;
    memset(&who, 0, sizeof(who));
    who.result = SL_AUTH_MISSING;
    int read = v1 && (sl_http_method_is(req, "GET") || sl_http_method_is(req, "HEAD")) && reads_private(a);
    if (read)
        sl_auth_identify_reader(a->conf.auth, req, sl_time_now_us() / 1000000, a->reader_audience, &who);
    else if (post || (a->limiter != NULL && v1))
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
    a->reader_audience = conf->reader_audience != NULL && *conf->reader_audience != '\0' ? conf->reader_audience : NULL;
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
    sl_chanpolicy_destroy(a->conf.policy);
    free(a);
}
