/*
 * sl_ingest: see sl_ingest.h.
 *
 * The items between the reader and the broker live in a fixed array of max_unconfirmed slots:
 * free, waiting for a (re)publish, or published and awaiting the confirm. The reader's thread
 * signals new items through an eventfd the loop watches (H2O_SOCKET_FLAG_DONT_READ: h2o only says
 * it is readable; we read it).
 */
#include "sl_ingest.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "sl_buf.h"
#include "sl_http.h"
#include "sl_log.h"
#include "sl_auth.h"
#include "sl_metrics.h"
#include "sl_publisher.h"
#include "sl_time.h"

enum slot_state { SLOT_FREE = 0, SLOT_WAITING, SLOT_PUBLISHED };

struct slot {
    sl_ingest_t *g;
    sl_message_t m;
    uint64_t order; /* when it was taken from the reader */
    uint64_t tag;
    size_t source;  /* the reader it came from */
    enum slot_state state;
};

struct sl_ingest {
    sl_ingest_conf_t conf;
    h2o_loop_t *loop;
    sl_publisher_t *pub;
    sl_amqp_topology_t topology;
    sl_ingest_source_t sources[SL_INGEST_MAX_SOURCES];
    char labels[SL_INGEST_MAX_SOURCES][SL_MASTODON_INSTANCE_MAX + 300]; /* "<instance> <stream>", for logs */
    sl_ingest_reader_t *readers[SL_INGEST_MAX_SOURCES];
    size_t nsources;
    size_t next_source; /* the reader to take from first, in turn */
    uint64_t src_enqueued[SL_INGEST_MAX_SOURCES];
    int wake_fd;
    h2o_socket_t *wake_sock;
    struct slot *slots;
    size_t nslots;
    uint64_t next_order;
    int64_t retry_at_us;  /* monotonic; nothing is published before */
    long long retry_ms;   /* the next delay after a refusal */
    int refusing;         /* in a streak of refusals (for one log line per streak) */
    int destroying;
    h2o_timeout_t tick_timeout, kick_timeout;
    h2o_timeout_entry_t tick, kick;
    uint64_t enqueued, refused[5], republished;
};

static void pump(sl_ingest_t *g);

static void schedule(sl_ingest_t *g)
{
    if (!g->destroying && !h2o_timeout_is_linked(&g->kick))
        h2o_timeout_link(g->loop, &g->kick_timeout, &g->kick);
}

static const char *result_name(sl_publish_result_t r)
{
    switch (r) {
    case SL_PUBLISH_OK:
        return "ok";
    case SL_PUBLISH_NACK:
        return "queue_full";
    case SL_PUBLISH_BLOCKED:
        return "broker_blocked";
    case SL_PUBLISH_BUSY:
        return "too_many_in_flight";
    default:
        return "broker_unavailable";
    }
}

static void refused(sl_ingest_t *g, sl_publish_result_t r)
{
    g->refused[r < 5 ? r : 2]++;
    g->retry_at_us = sl_time_mono_us() + g->retry_ms * 1000;
    if (!g->refusing)
        SL_WARN("event=publish_refused reason=%s retry_ms=%lld pending=%zu", result_name(r), g->retry_ms,
                sl_ingest_pending(g));
    g->refusing = 1;
    g->retry_ms = g->retry_ms * 2 > g->conf.retry_max_ms ? g->conf.retry_max_ms : g->retry_ms * 2;
}

static void on_confirm(void *data, sl_publish_result_t r)
{
    struct slot *s = data;
    sl_ingest_t *g = s->g;
    s->tag = 0;
    if (r == SL_PUBLISH_OK) {
        s->state = SLOT_FREE;
        sl_message_clear(&s->m);
        g->enqueued++;
        g->src_enqueued[s->source]++;
        if (g->refusing)
            SL_INFO("event=publish_resumed");
        g->refusing = 0;
        g->retry_ms = g->conf.retry_min_ms;
    } else {
        s->state = SLOT_WAITING; /* kept: published again, in its turn */
        if (!g->destroying)
            refused(g, r);
    }
    schedule(g);
}

/* Returns 0 when published (or nothing to do), -1 when refused (s waits for a retry). */
static int publish_slot(sl_ingest_t *g, struct slot *s)
{
    size_t len;
    char *json = sl_message_to_json(&s->m, &len);
    if (json == NULL) {
        refused(g, SL_PUBLISH_BUSY);
        return -1;
    }
    sl_publish_result_t r = sl_publisher_publish(g->pub, "", g->topology.persist_queue, json, len, on_confirm, s, &s->tag);
    free(json);
    if (r != SL_PUBLISH_OK) {
        s->tag = 0;
        s->state = SLOT_WAITING;
        refused(g, r);
        return -1;
    }
    s->state = SLOT_PUBLISHED;
    return 0;
}

static struct slot *oldest_waiting(sl_ingest_t *g)
{
    struct slot *best = NULL;
    for (size_t i = 0; i < g->nslots; i++) {
        if (g->slots[i].state == SLOT_WAITING && (best == NULL || g->slots[i].order < best->order))
            best = &g->slots[i];
    }
    return best;
}

static struct slot *free_slot(sl_ingest_t *g)
{
    for (size_t i = 0; i < g->nslots; i++) {
        if (g->slots[i].state == SLOT_FREE)
            return &g->slots[i];
    }
    return NULL;
}

/* Takes the next item into s, from the sources in turn: 1, or 0 when none has one. */
static int pop_next(sl_ingest_t *g, struct slot *s)
{
    for (size_t k = 0; k < g->nsources; k++) {
        size_t i = (g->next_source + k) % g->nsources;
        if (sl_ingest_reader_pop(g->readers[i], &s->m)) {
            s->source = i;
            g->next_source = (i + 1) % g->nsources;
            return 1;
        }
    }
    return 0;
}

static void reap_all(sl_ingest_t *g, int wait)
{
    for (size_t i = 0; i < g->nsources; i++)
        sl_ingest_reader_reap(g->readers[i], wait);
}

static void pump(sl_ingest_t *g)
{
    struct slot *s;
    if (g->destroying || sl_time_mono_us() < g->retry_at_us)
        return;
    while ((s = oldest_waiting(g)) != NULL) { /* refused ones first, in the order they were read */
        g->republished++;
        if (publish_slot(g, s) != 0)
            return;
    }
    while ((s = free_slot(g)) != NULL && pop_next(g, s)) {
        s->order = g->next_order++;
        if (publish_slot(g, s) != 0)
            return;
    }
}

static void on_kick(h2o_timeout_entry_t *entry)
{
    sl_ingest_t *g = H2O_STRUCT_FROM_MEMBER(sl_ingest_t, kick, entry);
    pump(g);
}

static void on_tick(h2o_timeout_entry_t *entry)
{
    sl_ingest_t *g = H2O_STRUCT_FROM_MEMBER(sl_ingest_t, tick, entry);
    reap_all(g, 0);
    pump(g);
    h2o_timeout_link(g->loop, &g->tick_timeout, &g->tick);
}

static void on_wake(h2o_socket_t *sock, const char *err)
{
    sl_ingest_t *g = sock->data;
    uint64_t v;
    (void)err;
    while (read(g->wake_fd, &v, sizeof(v)) > 0)
        ;
    reap_all(g, 0);
    pump(g);
}

sl_ingest_t *sl_ingest_create(h2o_loop_t *loop, const sl_ingest_conf_t *conf)
{
    sl_ingest_t *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->conf = *conf;
    g->loop = loop;
    g->wake_fd = -1;
    g->nslots = conf->max_unconfirmed > 0 ? (size_t)conf->max_unconfirmed : 1;
    g->retry_ms = conf->retry_min_ms;
    if ((g->slots = calloc(g->nslots, sizeof(*g->slots))) == NULL)
        goto Fail;
    for (size_t i = 0; i < g->nslots; i++)
        g->slots[i].g = g;
    if ((g->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        goto Fail;
    g->nsources = conf->nsources < SL_INGEST_MAX_SOURCES ? conf->nsources : SL_INGEST_MAX_SOURCES;
    memcpy(g->sources, conf->sources, g->nsources * sizeof(g->sources[0]));
    g->conf.sources = g->sources;
    for (size_t i = 0; i < g->nsources; i++) {
        sl_ingest_reader_conf_t rc = conf->reader;
        char label[sizeof(g->labels[i])];
        snprintf(label, sizeof(label), "%s %s", g->sources[i].instance, g->sources[i].stream);
        sl_log_quote(g->labels[i], sizeof(g->labels[i]), label);
        rc.instance = g->sources[i].instance;
        rc.stream = g->sources[i].stream;
        rc.token = g->sources[i].token;
        rc.label = g->labels[i];
        rc.wake_fd = g->wake_fd;
        if ((g->readers[i] = sl_ingest_reader_create(&rc)) == NULL)
            goto Fail;
    }
    sl_amqp_topology_defaults(&g->topology, conf->queue_max_length, conf->queue_max_bytes);
    g->topology.role = SL_AMQP_ROLE_PUBLISHER;
    sl_publisher_conf_t pc = {.url = conf->amqp_url,
                              .conn_name = "sluice-ingest",
                              .topology = g->topology,
                              .max_unconfirmed = g->nslots,
                              .heartbeat_s = 10,
                              .timeout_ms = 2000,
                              .reconnect_ms = 500};
    if ((g->pub = sl_publisher_create(loop, &pc)) == NULL)
        goto Fail;
    g->wake_sock = h2o_evloop_socket_create(loop, g->wake_fd, H2O_SOCKET_FLAG_DONT_READ);
    g->wake_sock->data = g;
    h2o_socket_read_start(g->wake_sock, on_wake);
    h2o_timeout_init(loop, &g->tick_timeout, 100);
    h2o_timeout_init(loop, &g->kick_timeout, 0);
    g->tick.cb = on_tick;
    g->kick.cb = on_kick;
    h2o_timeout_link(loop, &g->tick_timeout, &g->tick);
    return g;
Fail:
    for (size_t i = 0; i < g->nsources; i++)
        sl_ingest_reader_destroy(g->readers[i]);
    if (g->wake_fd >= 0)
        close(g->wake_fd);
    free(g->slots);
    free(g);
    return NULL;
}

int sl_ingest_start(sl_ingest_t *g)
{
    int ret = 0;
    for (size_t i = 0; i < g->nsources; i++) {
        sl_ingest_reader_status_t st;
        sl_ingest_reader_status(g->readers[i], &st);
        if (st.running)
            continue;
        SL_INFO("event=ingest_start url=%s stream=%s channel=%s token=%s", g->sources[i].instance,
                g->sources[i].stream, g->conf.reader.channel, g->sources[i].token[0] != '\0' ? "set" : "none");
        if (sl_ingest_reader_start(g->readers[i]) != 0)
            ret = -1;
    }
    return ret;
}

void sl_ingest_stop(sl_ingest_t *g)
{
    int running = 0;
    for (size_t i = 0; i < g->nsources; i++) {
        sl_ingest_reader_status_t st;
        sl_ingest_reader_status(g->readers[i], &st);
        running |= st.running;
    }
    if (running)
        SL_INFO("event=ingest_stop pending=%zu", sl_ingest_pending(g));
    for (size_t i = 0; i < g->nsources; i++)
        sl_ingest_reader_stop(g->readers[i]);
}

void sl_ingest_stop_and_join(sl_ingest_t *g)
{
    sl_ingest_stop(g);
    reap_all(g, 1);
    pump(g);
}

size_t sl_ingest_pending(sl_ingest_t *g)
{
    size_t n = 0;
    for (size_t i = 0; i < g->nsources; i++) {
        sl_ingest_reader_status_t st;
        sl_ingest_reader_status(g->readers[i], &st);
        n += st.queued;
    }
    for (size_t i = 0; i < g->nslots; i++)
        n += g->slots[i].state != SLOT_FREE;
    return n;
}

void sl_ingest_destroy(sl_ingest_t *g)
{
    if (g == NULL)
        return;
    size_t pending = sl_ingest_pending(g);
    if (pending > 0)
        SL_WARN("event=pending_lost count=%zu reason=\"not confirmed by the broker before exit\"", pending);
    g->destroying = 1;
    for (size_t i = 0; i < g->nsources; i++)
        sl_ingest_reader_destroy(g->readers[i]);
    sl_publisher_destroy(g->pub); /* outstanding confirms run now, as refusals */
    h2o_timeout_unlink(&g->tick);
    if (h2o_timeout_is_linked(&g->kick))
        h2o_timeout_unlink(&g->kick);
    h2o_timeout_dispose(g->loop, &g->tick_timeout);
    h2o_timeout_dispose(g->loop, &g->kick_timeout);
    h2o_socket_read_stop(g->wake_sock);
    h2o_socket_close(g->wake_sock); /* closes wake_fd */
    for (size_t i = 0; i < g->nslots; i++)
        sl_message_clear(&g->slots[i].m); /* a free slot's is NULL */
    free(g->slots);
    free(g);
}

/* ---- configuration ---------------------------------------------------------------------------- */

static size_t list_count(const char *list)
{
    size_t n = 1;
    if (list == NULL || *list == '\0')
        return 0;
    for (; *list != '\0'; list++)
        n += *list == ',';
    return n;
}

/* Entry i of a comma-separated list, spaces around it dropped, into out: 0, or -1 when it does not fit. */
static int list_entry(const char *list, size_t i, char *out, size_t size)
{
    for (; i > 0; i--)
        list = strchr(list, ',') + 1;
    const char *end = strchr(list, ',');
    if (end == NULL)
        end = list + strlen(list);
    while (list < end && isspace((unsigned char)*list))
        list++;
    while (end > list && isspace((unsigned char)end[-1]))
        end--;
    if ((size_t)(end - list) >= size)
        return -1;
    memcpy(out, list, (size_t)(end - list));
    out[end - list] = '\0';
    return 0;
}

int sl_ingest_sources_parse(const char *urls, const char *streams, const char *tokens, sl_ingest_source_t *out,
                            size_t *n, char *err, size_t errlen)
{
    size_t nurls = list_count(urls), nstreams = list_count(streams), ntokens = list_count(tokens);
    char url[SL_MASTODON_INSTANCE_MAX + 1];
    *n = 0;
    if (nurls == 0) {
        snprintf(err, errlen, "SLUICE_MASTODON_URL names no instance");
        return -1;
    }
    if (nurls > SL_INGEST_MAX_SOURCES) {
        snprintf(err, errlen, "SLUICE_MASTODON_URL lists %zu sources, at most %d", nurls, SL_INGEST_MAX_SOURCES);
        return -1;
    }
    if (nstreams > 1 && nstreams != nurls) {
        snprintf(err, errlen, "SLUICE_MASTODON_STREAM lists %zu streams for %zu sources: give one, or one per source",
                 nstreams, nurls);
        return -1;
    }
    if (ntokens > 1 && ntokens != nurls) {
        snprintf(err, errlen, "SLUICE_MASTODON_TOKEN lists %zu tokens for %zu sources: give one per source", ntokens,
                 nurls);
        return -1;
    }
    for (size_t i = 0; i < nurls; i++) {
        sl_ingest_source_t *src = &out[i];
        memset(src, 0, sizeof(*src));
        if (list_entry(urls, i, url, sizeof(url)) != 0 || sl_mastodon_instance_norm(url, src->instance,
                                                                                     sizeof(src->instance)) != 0) {
            snprintf(err, errlen, "SLUICE_MASTODON_URL entry %zu of %zu (%.200s) must be an http(s):// instance URL",
                     i + 1, nurls, url);
            return -1;
        }
        if (nstreams == 0)
            strcpy(src->stream, "public");
        else if (list_entry(streams, nstreams > 1 ? i : 0, src->stream, sizeof(src->stream)) != 0 ||
                 !sl_mastodon_stream_valid(src->stream)) {
            snprintf(err, errlen, "SLUICE_MASTODON_STREAM entry %zu must be public, public:local or hashtag:<tag>",
                     (nstreams > 1 ? i : 0) + 1);
            return -1;
        }
        if (ntokens > 0 && list_entry(tokens, ntokens > 1 ? i : 0, src->token, sizeof(src->token)) != 0) {
            snprintf(err, errlen, "SLUICE_MASTODON_TOKEN entry %zu is longer than %d bytes", (ntokens > 1 ? i : 0) + 1,
                     SL_INGEST_TOKEN_MAX - 1);
            return -1;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(out[j].instance, src->instance) == 0 && strcmp(out[j].stream, src->stream) == 0) {
                snprintf(err, errlen, "sources %zu and %zu are the same (%.200s, %s)", j + 1, i + 1, src->instance,
                         src->stream);
                return -1;
            }
            /* a token goes to its own instance only */
            if (ntokens == 1 && src->token[0] != '\0' && strcmp(out[j].instance, src->instance) != 0) {
                snprintf(err, errlen, "SLUICE_MASTODON_TOKEN: the sources are on several instances, so give one token "
                                      "per source (an instance must not see another's token)");
                return -1;
            }
        }
    }
    *n = nurls;
    return 0;
}

/* ---- HTTP ------------------------------------------------------------------------------------- */

static json_t *time_or_null(int64_t us)
{
    char ts[SL_TIME_RFC3339_LEN];
    if (us == 0)
        return json_null();
    sl_time_format(us, ts);
    return json_string(ts);
}

static void send_json(h2o_req_t *req, int status, json_t *root)
{
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (text == NULL) {
        sl_http_fail(req, 503, "out_of_memory", NULL, "out of memory", 1);
        return;
    }
    sl_http_send(req, status, NULL, text, strlen(text));
    free(text);
}

static json_int_t reconnects(const sl_ingest_reader_status_t *st)
{
    return (json_int_t)(st->connects > 0 ? st->connects - 1 : 0);
}

static const char *state_name(const sl_ingest_reader_status_t *st)
{
    return st->running ? "running" : st->stopping ? "stopping" : "stopped";
}

/* The whole of ingest as one status: counters summed, running when any source is, connected when
 * every one is (since the last of them connected), the mode they share ("mixed" when they differ),
 * the most recent error (*error_from: of which source). *nreconnects sums theirs. */
static void whole_status(sl_ingest_t *g, sl_ingest_reader_status_t *all, uint64_t *nreconnects, size_t *error_from)
{
    memset(all, 0, sizeof(*all));
    all->connected = g->nsources > 0;
    *nreconnects = 0;
    *error_from = 0;
    for (size_t i = 0; i < g->nsources; i++) {
        sl_ingest_reader_status_t st;
        sl_ingest_reader_status(g->readers[i], &st);
        all->running |= st.running;
        all->stopping |= st.stopping;
        if (st.mode != NULL)
            all->mode = all->mode == NULL || strcmp(all->mode, st.mode) == 0 ? st.mode : "mixed";
        all->connected &= st.connected;
        if (st.connected_since_us > all->connected_since_us)
            all->connected_since_us = st.connected_since_us;
        all->received += st.received;
        all->skipped += st.skipped;
        all->invalid += st.invalid;
        all->handed_over += st.handed_over;
        all->connects += st.connects;
        all->heartbeats += st.heartbeats;
        all->polls += st.polls;
        all->rate_limited += st.rate_limited;
        all->queued += st.queued;
        *nreconnects += (uint64_t)reconnects(&st);
        if (st.last_error[0] != '\0' && st.last_error_at_us >= all->last_error_at_us) {
            all->last_error_at_us = st.last_error_at_us;
            memcpy(all->last_error, st.last_error, sizeof(all->last_error));
            *error_from = i;
        }
    }
    all->stopping &= !all->running;
    if (!all->connected)
        all->connected_since_us = 0;
}

static json_t *nullable_string(const char *s)
{
    return s != NULL && s[0] != '\0' ? json_string(s) : json_null();
}

/* One source, for GET /v1/ingest. */
static json_t *source_state(sl_ingest_t *g, size_t i)
{
    sl_ingest_reader_status_t st;
    sl_ingest_reader_status(g->readers[i], &st);
    return json_pack("{s:s, s:s, s:s, s:o, s:b, s:o, s:o, s:{s:I, s:I, s:I, s:I, s:I}, s:I, s:I, s:I, s:I, s:o, s:o, "
                     "s:o}",
                     "url", g->sources[i].instance, "stream", g->sources[i].stream, "state", state_name(&st), "mode",
                     nullable_string(st.mode), "connected", st.connected, "connected_since",
                     time_or_null(st.connected_since_us), "cursor", nullable_string(st.cursor), "events", "received",
                     (json_int_t)st.received, "skipped", (json_int_t)st.skipped, "invalid", (json_int_t)st.invalid,
                     "enqueued", (json_int_t)g->src_enqueued[i], "queued", (json_int_t)st.queued, "reconnects",
                     reconnects(&st), "heartbeats", (json_int_t)st.heartbeats, "polls", (json_int_t)st.polls,
                     "rate_limited", (json_int_t)st.rate_limited, "last_item_at", time_or_null(st.last_item_at_us),
                     "last_error", nullable_string(st.last_error), "last_error_at", time_or_null(st.last_error_at_us));
}

static void send_state(sl_ingest_t *g, h2o_req_t *req)
{
    sl_ingest_reader_status_t st;
    uint64_t nreconnects;
    size_t error_from;
    char error[sizeof(st.last_error) + sizeof(g->sources[0].instance) + sizeof(g->sources[0].stream) + 8];
    whole_status(g, &st, &nreconnects, &error_from);
    if (g->nsources > 1 && st.last_error[0] != '\0') /* which source */
        snprintf(error, sizeof(error), "%s %s: %s", g->sources[error_from].instance, g->sources[error_from].stream,
                 st.last_error);
    else
        snprintf(error, sizeof(error), "%s", st.last_error);
    json_t *sources = json_array();
    for (size_t i = 0; i < g->nsources && sources != NULL; i++) {
        json_t *one = source_state(g, i);
        if (one == NULL || json_array_append_new(sources, one) != 0) {
            json_decref(sources);
            sources = NULL;
        }
    }
    json_t *root = json_pack(
        "{s:s, s:{s:s, s:s, s:s}, s:o, s:b, s:o, s:{s:I, s:I, s:I, s:I, s:I}, s:I, s:o, s:o, s:o}", "state",
        state_name(&st), "source", "url", g->conf.mastodon_url, "stream", g->conf.mastodon_stream, "channel",
        g->conf.reader.channel, "mode", nullable_string(st.mode), "connected", st.connected, "connected_since",
        time_or_null(st.connected_since_us), "events", "received", (json_int_t)st.received, "skipped",
        (json_int_t)st.skipped, "invalid", (json_int_t)st.invalid, "enqueued", (json_int_t)g->enqueued, "pending",
        (json_int_t)sl_ingest_pending(g), "reconnects", (json_int_t)nreconnects, "last_error", nullable_string(error),
        "last_error_at", time_or_null(st.last_error_at_us), "sources", sources);
    if (root == NULL) {
        sl_http_fail(req, 503, "out_of_memory", NULL, "out of memory", 1);
        return;
    }
    send_json(req, 200, root);
}

static void handle_command(sl_ingest_t *g, h2o_req_t *req)
{
    json_error_t jerr;
    json_t *root, *v;
    const char *key;
    if (!sl_http_content_is_json(req)) {
        sl_http_fail(req, 415, "unsupported_media_type", NULL, "Content-Type must be application/json", 0);
        return;
    }
    if (req->entity.len > 4096) {
        sl_http_fail(req, 413, "body_too_large", NULL, "the body must be at most 4096 bytes", 0);
        return;
    }
    root = json_loadb(req->entity.base != NULL ? req->entity.base : "", req->entity.len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        char msg[192];
        snprintf(msg, sizeof(msg), "the body is not valid JSON: %s", jerr.text);
        sl_http_fail(req, 400, "invalid_json", NULL, msg, 0);
        return;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        sl_http_fail(req, 400, "not_an_object", NULL, "the body must be a JSON object", 0);
        return;
    }
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "command") != 0) {
            char msg[160];
            snprintf(msg, sizeof(msg), "unknown field '%.64s' (allowed: command)", key);
            json_decref(root);
            sl_http_fail(req, 400, "unknown_field", NULL, msg, 0);
            return;
        }
    }
    v = json_object_get(root, "command");
    if (v == NULL) {
        json_decref(root);
        sl_http_fail(req, 400, "missing_field", "command", "'command' is required (\"start\" or \"stop\")", 0);
        return;
    }
    const char *cmd = json_is_string(v) ? json_string_value(v) : NULL;
    if (cmd == NULL || (strcmp(cmd, "start") != 0 && strcmp(cmd, "stop") != 0)) {
        json_decref(root);
        sl_http_fail(req, 400, "invalid_command", "command", "'command' must be \"start\" or \"stop\"", 0);
        return;
    }
    int start = strcmp(cmd, "start") == 0;
    json_decref(root);
    if (start && sl_ingest_start(g) != 0) {
        sl_http_fail(req, 503, "start_failed", NULL, "could not start the reader thread; retry", 1);
        return;
    }
    if (!start)
        sl_ingest_stop(g);
    send_state(g, req);
}

static void send_metrics(sl_ingest_t *g, h2o_req_t *req)
{
    sl_buf_t b = SL_BUF_INIT;
    sl_ingest_reader_status_t st;
    uint64_t nreconnects;
    size_t error_from;
    const sl_publisher_stats_t *ps = sl_publisher_stats(g->pub);
    whole_status(g, &st, &nreconnects, &error_from);
    sl_metrics_header(&b, "sluice_ingest_events_total", "counter", "Mastodon events and statuses by outcome.");
    sl_metrics_sample(&b, "sluice_ingest_events_total", "outcome=\"received\"", (double)st.received);
    sl_metrics_sample(&b, "sluice_ingest_events_total", "outcome=\"skipped\"", (double)st.skipped);
    sl_metrics_sample(&b, "sluice_ingest_events_total", "outcome=\"invalid\"", (double)st.invalid);
    sl_metrics_sample(&b, "sluice_ingest_events_total", "outcome=\"enqueued\"", (double)g->enqueued);
    sl_metrics_one(&b, "sluice_ingest_pending", "gauge",
                   "Items read but not yet confirmed by the broker.", (double)sl_ingest_pending(g));
    sl_metrics_header(&b, "sluice_ingest_publish_refusals_total", "counter", "Publishes refused (kept and retried).");
    for (int r = 1; r < 5; r++) {
        char labels[48];
        snprintf(labels, sizeof(labels), "reason=\"%s\"", result_name((sl_publish_result_t)r));
        sl_metrics_sample(&b, "sluice_ingest_publish_refusals_total", labels, (double)g->refused[r]);
    }
    sl_metrics_histogram(&b, "sluice_ingest_publish_confirm_seconds", "Time from publish to the broker's confirm.",
                         &ps->confirm_latency);
    sl_metrics_one(&b, "sluice_ingest_stream_connects_total", "counter",
                   "Streaming connections opened.", (double)st.connects);
    sl_metrics_one(&b, "sluice_ingest_heartbeats_total", "counter",
                   "Stream heartbeats (comments) received.", (double)st.heartbeats);
    sl_metrics_one(&b, "sluice_ingest_polls_total", "counter", "Timeline requests.", (double)st.polls);
    sl_metrics_one(&b, "sluice_ingest_rate_limited_total", "counter",
                   "Waits for the instance's rate limit.", (double)st.rate_limited);
    sl_metrics_one(&b, "sluice_ingest_connected", "gauge",
                   "1 while every source's stream is open (or its polls succeed).", st.connected);
    size_t up = 0;
    for (size_t i = 0; i < g->nsources; i++) {
        sl_ingest_reader_status_t one;
        sl_ingest_reader_status(g->readers[i], &one);
        up += one.connected != 0;
    }
    sl_metrics_one(&b, "sluice_ingest_sources", "gauge", "Sources read (instance and stream).", (double)g->nsources);
    sl_metrics_one(&b, "sluice_ingest_sources_connected", "gauge",
                   "Sources whose stream is open (or polls succeed).", (double)up);
    sl_metrics_one(&b, "sluice_ingest_running", "gauge", "1 while reading is started.", st.running);
    sl_metrics_one(&b, "sluice_ingest_ready", "gauge",
                   "1 when the broker is reachable and not blocking.", sl_publisher_ready(g->pub));
    sl_http_send_metrics(req, &b);
    sl_buf_free(&b);
}

int sl_ingest_handle(void *data, h2o_req_t *req)
{
    sl_ingest_t *g = data;
    int get = sl_http_method_is(req, "GET") || sl_http_method_is(req, "HEAD");
    if (sl_http_path_is(req, "/v1/ingest")) {
        sl_auth_result_t ar = sl_auth_check_token(req, g->conf.admin_token);
        if (ar != SL_AUTH_OK)
            sl_auth_refuse(req, ar);
        else if (sl_http_method_is(req, "POST"))
            handle_command(g, req);
        else if (get)
            send_state(g, req);
        else
            sl_http_method_not_allowed(req, "GET, POST");
    } else if (sl_http_path_is(req, "/healthz")) {
        if (get)
            sl_http_send(req, 200, NULL, H2O_STRLIT("{\"status\":\"ok\"}"));
        else
            sl_http_method_not_allowed(req, "GET");
    } else if (sl_http_path_is(req, "/readyz")) {
        if (!get) {
            sl_http_method_not_allowed(req, "GET");
        } else {
            char body[96];
            const char *amqp = sl_publisher_ready(g->pub) ? "up" : sl_publisher_blocked(g->pub) ? "blocked" : "down";
            int ok = strcmp(amqp, "up") == 0;
            int n = snprintf(body, sizeof(body), "{\"status\":\"%s\",\"amqp\":\"%s\"}", ok ? "ready" : "unavailable", amqp);
            sl_http_send(req, ok ? 200 : 503, NULL, body, (size_t)n);
        }
    } else if (sl_http_path_is(req, "/metrics")) {
        if (get)
            send_metrics(g, req);
        else
            sl_http_method_not_allowed(req, "GET");
    } else {
        sl_http_fail(req, 404, "not_found", NULL, "no such endpoint", 0);
    }
    return 0;
}
