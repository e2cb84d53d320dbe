/*
 * fuzz_ws_command: the WebSocket command handler of GET /v1/ws (ws_command in sl_stream.c):
 * subscribe / unsubscribe / ping frames on one socket, against a model of the protocol the
 * README documents.
 *
 * ws_command is static and acts as well as parses (it subscribes to the hub and reads history),
 * so this target compiles sl_stream.c into itself with the hub, the database pool and wslay's
 * output queue replaced by fakes (macros below rename those calls; nothing in sl_stream.c is
 * changed and the archive's copy of sl_stream.o is never linked). It goes once sl_stream.h
 * offers a pure parser of a command.
 *
 * Input: frames separated by '\n' (a frame is one text message, any bytes but '\n').
 *
 * Invariants:
 * - every frame gets the replies the model expects, in order: pong; subscribed (then, if the
 *   resume point is too old, reset; then the history frame, or history_unavailable when the
 *   database cannot be asked); unsubscribed; or one error with the documented code;
 * - every reply is a JSON object with "type", errors also have "code" and "message", and
 *   subscribed/unsubscribed/history/reset name the channel of the command;
 * - the socket's subscriptions are the model's: same channels, no duplicates, at most
 *   max_channels, and each has the history and since the command asked for (or the defaults);
 * - closing the socket unsubscribes everything from the hub and cancels every pending query.
 */
#include "fuzz_util.h"

/* Fakes for what ws_command reaches beyond parsing; declared by the headers under these names. */
#define sl_hub_subscribe fake_hub_subscribe
#define sl_hub_unsubscribe fake_hub_unsubscribe
#define sl_hub_replay fake_hub_replay
#define sl_hub_position fake_hub_position
#define sl_sub_go_live fake_sub_go_live
#define sl_pgpool_query fake_pgpool_query
#define sl_pgpool_cancel fake_pgpool_cancel
#define wslay_event_queue_msg fake_wslay_queue_msg
#define wslay_event_get_queued_msg_length fake_wslay_queued_length
#define h2o_websocket_close fake_websocket_close
#include "sl_stream.c" /* see above */

#define MAX_CHANNELS 3
#define HISTORY_DEFAULT 20
#define HISTORY_MAX 1000

/* ---- fakes ---------------------------------------------------------------------------------- */

static sl_buf_t replies;       /* every queued text, each followed by '\n' (JSON has no raw '\n') */
static size_t nreplies;
static long live_subs, live_queries;
static char query_token;
static long long replay_history; /* of the last sl_hub_replay: the query that follows is for it */

int fake_hub_subscribe(sl_hub_t *h, sl_sub_t *s)
{
    (void)h;
    FUZZ_CHECK(s->nchannels == 1 && !s->all && s->emit != NULL);
    live_subs++;
    return 0;
}

void fake_hub_unsubscribe(sl_sub_t *s)
{
    (void)s;
    live_subs--;
    FUZZ_CHECK(live_subs >= 0);
}

/* History from memory, except: a resume point below 10 is "too old"; history % 3 == 1 needs the
 * database. */
int fake_hub_replay(sl_hub_t *h, const sl_sub_t *s, int64_t since, long long history, long long max_events,
                    int *too_many, void (*fn)(void *data, sl_event_t *ev), void *data)
{
    (void)h, (void)s, (void)max_events, (void)fn, (void)data;
    replay_history = history;
    *too_many = since >= 0 && since < 10;
    if (*too_many)
        return 1;
    return history % 3 == 1 ? 0 : 1;
}

int64_t fake_hub_position(const sl_hub_t *h)
{
    (void)h;
    return 100;
}

void fake_sub_go_live(sl_sub_t *s, int64_t covered)
{
    FUZZ_CHECK(covered >= 0);
    s->live = 1;
}

/* The database refuses when history % 9 == 7, else the query stays pending. */
sl_pgquery_t *fake_pgpool_query(sl_pgpool_t *p, const char *sql, int nparams, const char *const *params, sl_pg_cb cb,
                                void *data)
{
    (void)p, (void)sql, (void)cb, (void)data;
    FUZZ_CHECK(nparams >= 1 && params[nparams - 1] != NULL);
    if (replay_history % 9 == 7)
        return NULL;
    live_queries++;
    return (sl_pgquery_t *)&query_token;
}

void fake_pgpool_cancel(sl_pgquery_t *q)
{
    FUZZ_CHECK(q == (sl_pgquery_t *)&query_token);
    live_queries--;
}

int fake_wslay_queue_msg(wslay_event_context_ptr ctx, const struct wslay_event_msg *arg)
{
    (void)ctx;
    FUZZ_CHECK(arg->opcode == WSLAY_TEXT_FRAME && memchr(arg->msg, '\n', arg->msg_length) == NULL);
    sl_buf_append(&replies, arg->msg, arg->msg_length);
    sl_buf_append(&replies, "\n", 1);
    nreplies++;
    return 0;
}

size_t fake_wslay_queued_length(wslay_event_context_ptr ctx)
{
    (void)ctx;
    return replies.len;
}

void fake_websocket_close(h2o_websocket_conn_t *conn)
{
    (void)conn;
}

/* ---- the model --------------------------------------------------------------------------------- */

struct model_sub {
    char channel[SL_CHANNEL_MAX + 1];
    long long history, since;
};

static struct model_sub model[MAX_CHANNELS];
static size_t nmodel;

static long find_model(const char *channel)
{
    for (size_t i = 0; i < nmodel; i++)
        if (strcmp(model[i].channel, channel) == 0)
            return (long)i;
    return -1;
}

/* The replies the model expects for one frame, as "type[:code]" items, and the state change. */
static void expect(const char *text, size_t len, sl_buf_t *want, char *channel)
{
    json_t *root = json_loadb(text, len, 0, NULL), *v;
    const char *cmd;
    channel[0] = '\0';
#define ERR(code)                                                                                          \
    do {                                                                                                   \
        sl_buf_appends(want, "error:" code ";");                                                           \
        goto Done;                                                                                         \
    } while (0)
    if (!json_is_object(root))
        ERR("invalid_json");
    if (!json_is_string(v = json_object_get(root, "command")))
        ERR("missing_command");
    cmd = json_string_value(v);
    if (strcmp(cmd, "ping") == 0) {
        sl_buf_appends(want, "pong;");
        goto Done;
    }
    if (strcmp(cmd, "subscribe") != 0 && strcmp(cmd, "unsubscribe") != 0)
        ERR("unknown_command");
    v = json_object_get(root, "channel");
    if (!json_is_string(v) || !fuzz_channel_ok(json_string_value(v), json_string_length(v)))
        ERR("invalid_channel");
    strcpy(channel, json_string_value(v));
    long at = find_model(channel);
    if (strcmp(cmd, "unsubscribe") == 0) {
        if (at < 0)
            ERR("not_subscribed");
        model[at] = model[--nmodel];
        sl_buf_appends(want, "unsubscribed;");
        goto Done;
    }
    long long history = HISTORY_DEFAULT, since = -1;
    if ((v = json_object_get(root, "history")) != NULL) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > HISTORY_MAX)
            ERR("invalid_history");
        history = json_integer_value(v);
    }
    if ((v = json_object_get(root, "since")) != NULL) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            ERR("invalid_since");
        since = json_integer_value(v);
    }
    if (at >= 0)
        ERR("already_subscribed");
    if (nmodel >= MAX_CHANNELS)
        ERR("too_many_channels");
    strcpy(model[nmodel].channel, channel);
    model[nmodel].history = history;
    model[nmodel].since = since;
    sl_buf_appends(want, "subscribed;");
    if (since >= 0 && since < 10) {
        sl_buf_appends(want, "reset;");
        since = -1;
        model[nmodel].since = -1;
    }
    if (history % 3 != 1)
        sl_buf_appends(want, "history;");
    else if (history % 9 == 7)
        sl_buf_appends(want, "error:history_unavailable;");
    nmodel++;
#undef ERR
Done:
    json_decref(root);
}

/* The replies queued for one frame, in the same "type[:code];" form, each checked. */
static void observed(const char *from, const char *end, sl_buf_t *got, const char *channel)
{
    while (from < end) {
        const char *nl = memchr(from, '\n', (size_t)(end - from));
        FUZZ_CHECK(nl != NULL);
        json_t *r = json_loadb(from, (size_t)(nl - from), 0, NULL);
        FUZZ_CHECKF(json_is_object(r), "reply is not a JSON object: %.*s", (int)(nl - from), from);
        const char *type = json_string_value(json_object_get(r, "type"));
        FUZZ_CHECK(type != NULL);
        sl_buf_appends(got, type);
        if (strcmp(type, "error") == 0) {
            const char *code = json_string_value(json_object_get(r, "code"));
            FUZZ_CHECK(code != NULL && json_is_string(json_object_get(r, "message")));
            sl_buf_appendf(got, ":%s", code);
        } else if (strcmp(type, "pong") != 0) {
            const char *ch = json_string_value(json_object_get(r, "channel"));
            FUZZ_CHECKF(ch != NULL && strcmp(ch, channel) == 0, "reply for another channel: %.*s", (int)(nl - from),
                        from);
            if (strcmp(type, "history") == 0)
                FUZZ_CHECK(json_is_array(json_object_get(r, "messages")));
        }
        sl_buf_appends(got, ";");
        json_decref(r);
        from = nl + 1;
    }
}

static void check_state(struct wsconn *w)
{
    FUZZ_CHECKF(w->nsubs == nmodel, "%zu subscriptions, model has %zu", w->nsubs, nmodel);
    FUZZ_CHECK(live_subs == (long)nmodel);
    for (size_t i = 0; i < w->nsubs; i++) {
        struct wssub *sub = w->subs[i];
        long at = find_model(sub->channel[0]);
        FUZZ_CHECKF(at >= 0, "subscribed to '%s', the model is not", sub->channel[0]);
        FUZZ_CHECK(sub->history == model[at].history && sub->since == model[at].since);
        FUZZ_CHECK(sub->ws == w && sub->sub.channels == sub->channel && sub->sub.nchannels == 1);
        for (size_t j = 0; j < i; j++)
            FUZZ_CHECK(strcmp(w->subs[j]->channel[0], sub->channel[0]) != 0);
    }
}

/* ---- the target ------------------------------------------------------------------------------ */

static sl_streams_t *streams;
static h2o_websocket_conn_t fake_ws; /* sock NULL: never "writing", so nothing is ever cut off */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    sl_stream_conf_t conf = {.history_default = HISTORY_DEFAULT,
                             .history_max = HISTORY_MAX,
                             .replay_max = 1000,
                             .out_max_bytes = 1 << 30,
                             .heartbeat_ms = 15000,
                             .retry_ms = 3000,
                             .max_conns = 1000,
                             .max_channels = MAX_CHANNELS,
                             .ws_max_frame = 65536};
    static char hub_token, pg_token; /* never dereferenced: every use of them is faked */
    streams = sl_streams_create(h2o_evloop_create(), (sl_hub_t *)&hub_token, (sl_pgpool_t *)&pg_token, &conf);
    FUZZ_CHECK(streams != NULL);
    sl_buf_reserve(&replies, 1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data, *end = s + size;
    struct wsconn *w = calloc(1, sizeof(*w));
    sl_buf_t want = SL_BUF_INIT, got = SL_BUF_INIT;
    char channel[SL_CHANNEL_MAX + 1];

    FUZZ_CHECK(w != NULL);
    conn_register(streams, &w->super, &ws_transport);
    w->ws = &fake_ws;
    nmodel = 0;
    replies.len = 0;
    nreplies = 0;
    for (const char *p = s; p <= end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *fend = nl != NULL ? nl : end;
        size_t before = replies.len;
        char *frame = malloc(fend > p ? (size_t)(fend - p) : 1); /* exactly the frame: ASan sees overreads */
        FUZZ_CHECK(frame != NULL);
        memcpy(frame, p, (size_t)(fend - p));
        want.len = got.len = 0;
        expect(frame, (size_t)(fend - p), &want, channel);
        ws_command(w, frame, (size_t)(fend - p));
        free(frame);
        observed(replies.data + before, replies.data + replies.len, &got, channel);
        FUZZ_CHECKF(got.len == want.len && memcmp(got.data, want.data, got.len) == 0,
                    "frame '%.*s': replies %.*s, expected %.*s", (int)(fend - p), p, (int)got.len, got.data,
                    (int)want.len, want.data);
        check_state(w);
        if (nl == NULL)
            break;
        p = nl + 1;
    }
    ws_close_now(w); /* the close callback's path: frees w */
    FUZZ_CHECK(live_subs == 0 && live_queries == 0);
    FUZZ_CHECK(streams->nconns == 0);
    sl_buf_free(&want);
    sl_buf_free(&got);
    return 0;
}
