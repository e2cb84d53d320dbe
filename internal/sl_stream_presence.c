/*
 * sl_stream_presence: the streams' part in presence and occupancy (sl_presence.h). Each stream and
 * each WebSocket subscription enters the channels it reads in the instance's registry, and leaves
 * them when it ends; those that asked for presence get the joins and leaves of their channels,
 * framed for their transport and queued through the core's output accounting like any event. The
 * rules are at struct presence_seat (sl_stream_int.h).
 *
 * The registry hands events over at the end of a turn of the loop, never inside its calls, so a
 * seat may enter, leave and unlisten from anywhere, teardown included.
 */
#include "sl_stream_int.h"

#include <stdlib.h>
#include <string.h>

#include "sl_buf.h"
#include "sl_log.h"

/* Who reads, for presence: the one place a stream's or a subscription's identity is decided, into
 * ps->user (strings owned by ps). Returns 0 (ps->user.id NULL: anonymous), or -1 when out of
 * memory.
 *
 * A reader with a verified token is its claims' {sub, name} (name NULL when the token has none);
 * a reader without one (or whose token was ignored: no JWT key) is anonymous: counted in the
 * occupancy, in no presence set, making no join or leave. */
static int stream_identity(struct presence_seat *ps, const struct reader *rd)
{
    sl_presence_user_t claimed = {rd != NULL && rd->has_token ? rd->claims.sub : NULL,
                                  rd != NULL && rd->has_token ? rd->claims.name : NULL};
    const sl_presence_user_t *who = claimed.id != NULL ? &claimed : NULL;
    ps->user.id = ps->user.name = NULL;
    if (who == NULL)
        return 0;
    char *id = strdup(who->id), *name = who->name != NULL ? strdup(who->name) : NULL;
    if (id == NULL || (who->name != NULL && name == NULL)) {
        free(id);
        free(name);
        return -1;
    }
    ps->user.id = id;
    ps->user.name = name;
    return 0;
}

/* Whether the reader of a stream of every channel may see channel's presence: the stream's own
 * filter (the channels its token may read, every public one), as for its events. */
static int stream_may_see(const struct presence_seat *ps, const char *channel)
{
    static const struct reader anonymous;
    return sl_stream_readable(ps->conn->streams, ps->reader != NULL ? ps->reader : &anonymous, channel);
}

int sl_stream_parse_presence(const char *v, size_t len)
{
    if ((len == 1 && v[0] == '1') || (len == 4 && memcmp(v, "true", 4) == 0))
        return 1;
    if ((len == 1 && v[0] == '0') || (len == 5 && memcmp(v, "false", 5) == 0))
        return 0;
    return -1;
}

/* A join or a leave as the transport frames it: SSE event: join|leave with a data: line and no
 * id: (a client's Last-Event-ID stays the last message's); NDJSON and WebSocket the same object
 * with its type, one line / one text frame. Without a name, no "name" member. */
static void encode(sl_buf_t *b, sl_format_t fmt, const sl_presence_event_t *ev)
{
    const char *type = ev->type == SL_PRESENCE_JOIN ? "join" : "leave";
    if (fmt == SL_FMT_SSE)
        sl_buf_appendf(b, "event: %s\ndata: {\"channel\":", type);
    else
        sl_buf_appendf(b, "{\"type\":\"%s\",\"channel\":", type);
    sl_buf_append_json_string(b, ev->channel);
    sl_buf_appends(b, ",\"user\":{\"id\":");
    sl_buf_append_json_string(b, ev->user.id);
    if (ev->user.name != NULL) {
        sl_buf_appends(b, ",\"name\":");
        sl_buf_append_json_string(b, ev->user.name);
    }
    sl_buf_appends(b, fmt == SL_FMT_SSE ? "}}\n\n" : fmt == SL_FMT_NDJSON ? "}}\n" : "}}");
}

static void send_now(struct presence_seat *ps, char *text, size_t len)
{
    if (ps->conn->tp->queue(ps->conn, text, len) == 0)
        ps->conn->streams->stats.presence_events++;
}

static void on_event(void *data, const sl_presence_event_t *ev)
{
    struct presence_seat *ps = data;
    struct stream_conn *c = ps->conn;
    sl_buf_t b = SL_BUF_INIT;
    if (c->aborting || (ps->all && !stream_may_see(ps, ev->channel)))
        return;
    encode(&b, c->tp->fmt, ev);
    if (ps->live) {
        send_now(ps, b.data, b.len);
        return;
    }
    /* Its history is still being read: the events wait behind it, and a client whose events pass
     * the output limit meanwhile is cut off as one that does not read (it resumes). */
    if (ps->held_bytes + b.len > (size_t)c->streams->conf.out_max_bytes) {
        sl_stream_conn_cut(c, b.len);
        sl_buf_free(&b);
        return;
    }
    if (ps->nheld == ps->capheld) {
        size_t cap = ps->capheld ? ps->capheld * 2 : 4;
        struct presence_held *h = realloc(ps->held, cap * sizeof(*h));
        if (h == NULL) { /* an event cannot be dropped: end the stream, the client resumes */
            sl_stream_conn_cut(c, b.len);
            sl_buf_free(&b);
            return;
        }
        ps->held = h;
        ps->capheld = cap;
    }
    ps->held[ps->nheld++] = (struct presence_held){b.data, b.len};
    ps->held_bytes += b.len;
}

static void release(struct presence_seat *ps)
{
    for (size_t i = 0; i < ps->nlisteners; i++)
        sl_presence_unlisten(ps->listeners[i]);
    for (size_t i = 0; i < ps->nentries; i++)
        sl_presence_leave(ps->entries[i]);
    for (size_t i = 0; i < ps->nheld; i++)
        free(ps->held[i].text);
    free(ps->listeners);
    free(ps->entries);
    free(ps->held);
    free((char *)ps->user.id);
    free((char *)ps->user.name);
    memset(ps, 0, sizeof(*ps));
}

int sl_stream_presence_enter(struct presence_seat *ps, struct stream_conn *c, char (*channels)[SL_CHANNEL_MAX + 1],
                             size_t n, int listen, const struct reader *rd)
{
    sl_streams_t *s = c->streams;
    sl_presence_t *p = s->presence;
    memset(ps, 0, sizeof(*ps));
    ps->conn = c;
    ps->all = n == 0;
    ps->reader = ps->all ? rd : NULL;
    listen = listen && p != NULL;
    size_t nl = listen ? (n > 0 ? n : 1) : 0;
    if (stream_identity(ps, rd) != 0)
        goto Fail;
    if (p != NULL && n > 0 && (ps->entries = calloc(n, sizeof(*ps->entries))) == NULL)
        goto Fail;
    if (nl > 0 && (ps->listeners = calloc(nl, sizeof(*ps->listeners))) == NULL)
        goto Fail;
    /* listening before entering: the reader's own join is among its events */
    for (size_t i = 0; i < nl; i++) {
        if ((ps->listeners[i] = sl_presence_listen(p, n > 0 ? channels[i] : NULL, on_event, ps)) == NULL)
            goto Fail;
        ps->nlisteners++;
    }
    for (size_t i = 0; p != NULL && i < n; i++) {
        if ((ps->entries[i] = sl_presence_enter(p, channels[i], ps->user.id != NULL ? &ps->user : NULL)) == NULL)
            goto Fail;
        ps->nentries++;
    }
    ps->entered = 1;
    s->stats.all_channels += ps->all;
    s->stats.presence_listeners += nl > 0;
    return 0;
Fail:
    SL_WARN("event=presence_enter_failed transport=%s channels=%zu reason=out_of_memory", c->tp->name, n);
    release(ps);
    return -1;
}

void sl_stream_presence_live(struct presence_seat *ps)
{
    if (!ps->entered || ps->live)
        return;
    ps->live = 1;
    struct presence_held *held = ps->held;
    size_t n = ps->nheld;
    ps->held = NULL;
    ps->nheld = ps->capheld = ps->held_bytes = 0;
    for (size_t i = 0; i < n; i++)
        send_now(ps, held[i].text, held[i].len); /* after a cut, the transport frees what it refuses */
    free(held);
}

void sl_stream_presence_leave(struct presence_seat *ps)
{
    if (!ps->entered)
        return;
    sl_streams_t *s = ps->conn->streams;
    s->stats.all_channels -= ps->all;
    s->stats.presence_listeners -= ps->nlisteners > 0;
    release(ps);
}
