/*
 * sl_stream: live subscriptions over HTTP: Server-Sent Events and NDJSON streaming on
 * GET /v1/stream, and WebSocket subscriptions on GET /v1/ws.
 *
 * Every subscription starts with history read from the database (the last N messages, or every
 * message after a resume position), then goes on live from the hub, joined at the seam without
 * gap or duplicate (sl_hub.h). The transports share one output path: each event is encoded once
 * per format (sl_event.h) and queued by reference; a connection writes everything queued in one
 * go when its socket can take more. Every byte queued for a client counts, history included: a
 * client that has not taken its previous write and whose queue would pass out_max_bytes is cut
 * off (it can resume with Last-Event-ID / since), so a slow client never stalls the rest or grows
 * memory. A client that keeps up may take one answer bigger than the limit (a long history).
 *
 * A resume from a position too old to replay (more than replay_max messages after it, or below
 * the retention's low-water mark of its channels, sl_retention.h) starts with a reset and the newest
 * history instead: never a silent gap.
 *
 * History is the expensive part (up to replay_max + 1 rows from the database), so reads are
 * capped: history_concurrency at once per instance, history_per_client per client (an IPv4 address
 * or an IPv6 /64: sl_http_addr_key). A stream over a cap is refused with 503 history_busy
 * (Retry-After), a WebSocket subscribe with an error frame history_busy (the subscription is
 * dropped). A stream reads the database 10 ms after its request (memory at once), so that a client
 * that sent it and closed at once (connect-and-drop) costs no query. A client that leaves while its
 * history is read is noticed within 2 s (a WebSocket's at once; an unsubscribe is the same); its
 * query is cancelled (sl_pgpool_cancel: one still queued in the pool leaves the queue, a running
 * one's answer is dropped) and its place freed.
 *
 * Every stream and WebSocket subscription is counted in the occupancy of the channels it reads
 * (sl_presence.h), from its start to its end, whatever ends it; a stream of every channel in none
 * (stats.all_channels). One that asks (?presence=1, "presence":true) gets the joins and leaves of
 * its channels' users, after its history: SSE "event: join" / "event: leave" without an id: (the
 * resume position stays the last message's), NDJSON and WebSocket {"type":"join",…}. See struct
 * presence_seat in sl_stream_int.h.
 *
 * Transports plug in through one table of functions each (struct sl_transport, in the private
 * sl_stream_int.h), as Nchan's subscribers do: sl_stream_sse.c and sl_stream_ndjson.c over the
 * streaming HTTP response of sl_stream_http.c, and sl_stream_ws.c; the limits above are applied in
 * one place, the core (sl_stream.c), for all of them. Loop thread only.
 */
#ifndef SL_STREAM_H
#define SL_STREAM_H

#define H2O_USE_LIBUV 0
#include <h2o.h>

#include "sl_chanpolicy.h"
#include "sl_hub.h"
#include "sl_jwt.h"
#include "sl_message.h"
#include "sl_pgpool.h"
#include "sl_presence.h"

typedef struct sl_stream_conf {
    long long history_default;  /* messages of history when the request names none */
    long long history_max;      /* largest history request */
    long long replay_max;       /* most messages replayed on resume before answering "reset" */
    long long out_max_bytes;    /* per-connection output queue before the client is cut off */
    long long heartbeat_ms;     /* idle time before a heartbeat */
    long long retry_ms;         /* the SSE retry: field */
    long long max_conns;        /* stream connections before 503 */
    long long max_channels;     /* channels per connection */
    long long ws_max_frame;     /* largest WebSocket message accepted */
    double ws_rate;             /* client messages per second per WebSocket (0: no limit) */
    double ws_burst;            /* messages a WebSocket may send at once before ws_rate applies */
    long long history_concurrency; /* histories read at once by this instance (more: 503 history_busy) */
    long long history_per_client;  /* of those, by one client address */
} sl_stream_conf_t;

typedef struct sl_stream_stats {
    uint64_t connected[3];      /* now, by transport: sse, ndjson, websocket */
    uint64_t opened_total, events_sent, bytes_queued, slow_disconnects, resets, refused_full;
    uint64_t ws_rate_limited;   /* WebSockets closed (1008) for sending too fast */
    uint64_t all_channels;      /* streams of every channel now (counted in no channel's occupancy) */
    uint64_t presence_listeners; /* streams and WebSocket subscriptions that asked for presence events now */
    uint64_t presence_events;   /* joins and leaves queued to clients */
    uint64_t history_failures;  /* history reads that failed (the stream ends, or the subscription is dropped) */
    uint64_t history_db_reads;  /* history and resume queries sent to the database */
    uint64_t queued_now;        /* bytes queued to every client now, history included */
    uint64_t history_inflight;  /* subscriptions reading their history now (under the caps) */
    uint64_t history_refused[2]; /* refused with history_busy: [0] the instance's cap, [1] the client's */
    uint64_t token_refused;     /* streams, subscribes, auth commands refused for their token (sl_jwt_metrics: codes) */
    uint64_t read_refused[2];   /* a private channel refused: [0] without a token (token_required), [1] not
                                 * in the token's channels (channel_forbidden) */
    uint64_t token_ended[2];    /* ended at their token's exp: [0] streams (SSE, NDJSON), [1] WebSocket subscriptions */
} sl_stream_stats_t;

typedef struct sl_streams sl_streams_t;

/* presence: the instance's registry (sl_sse_presence), which must outlive the streams; every
 * stream and WebSocket subscription is counted in it while it reads, and those that ask get its
 * joins and leaves. NULL: nothing is counted and presence requests get no events. */
sl_streams_t *sl_streams_create(h2o_loop_t *loop, sl_hub_t *hub, sl_pgpool_t *pg, sl_presence_t *presence,
                                const sl_stream_conf_t *conf);

/* Readers' tokens and private channels (before the first stream; both stay the caller's and must
 * outlive s). jwt verifies the tokens readers present (Authorization: Bearer, ?token=, a
 * WebSocket's auth or subscribe command); NULL or disabled: tokens are ignored. policy names the
 * private channels (NULL: none, every channel is public, as without it). A private channel is read
 * only with a token whose channels cover it (else 401 token_required / 403 channel_forbidden, or
 * the same codes in a WebSocket error frame); a stream of every channel leaves out, history
 * included, what its token may not read; whatever a token opened ends at its exp (+ leeway). */
void sl_streams_set_access(sl_streams_t *s, sl_jwt_t *jwt, const sl_chanpolicy_t *policy);

/* Whether the client of req may see channel (GET /v1/channels, a channel's presence: an
 * sl_sse_channel_filter_cb, data the sl_streams_t): 0 when it may (a public channel, or one its
 * token covers), 401 without a token or with one refused, 403 when its token does not cover it.
 * The request's token (Authorization: Bearer, else ?token=) is verified once per request however
 * many channels are asked about. Loop thread. */
int sl_streams_channel_visible(void *data, h2o_req_t *req, const char *channel);

/* The retention's low-water marks (sl_retention.h), which resumes served from the hub's memory
 * check (a resume read from the database carries its own). NULL (the default): none. */
struct sl_retention_view;
void sl_streams_set_retention(sl_streams_t *s, const struct sl_retention_view *view);

/* GET /v1/stream. Answers 400/503 itself when it must. Returns 0. */
int sl_streams_handle_stream(sl_streams_t *s, h2o_req_t *req);
/* GET /v1/ws (the upgrade request). Returns 0. */
int sl_streams_handle_ws(sl_streams_t *s, h2o_req_t *req);

/* The counters, and queued_now brought up to date (it walks the connections). */
const sl_stream_stats_t *sl_streams_stats(sl_streams_t *s);
size_t sl_streams_count(const sl_streams_t *s);

/* ---- parsers of what clients send (pure: no loop, no state; any thread) ------------------------- */

/* A count in a query parameter or header (history=, since=, Last-Event-ID): exactly 1 to 19 ASCII
 * digits whose value is at most max (max >= 0). Returns 0 with *out set, or -1 (*out untouched).
 * s need not be NUL-terminated; no byte past s[len - 1] is read. */
int sl_stream_parse_count(const char *s, size_t len, long long max, long long *out);

/* The channels= list: comma-separated channels ([a-z0-9_-]{1,64} each), duplicates dropped,
 * order kept. Returns the number of distinct channels (>= 1) and *out, a malloc'd array the
 * caller frees; or -1 with err set and *out untouched: 400 invalid_channel (an empty or invalid
 * item), 400 too_many_channels (more than max distinct ones), 503 out_of_memory. */
int sl_stream_parse_channels(const char *list, size_t len, long long max, char (**out)[SL_CHANNEL_MAX + 1],
                             sl_error_t *err);

/* The presence= parameter (whether a stream gets its channels' joins and leaves): "1" or "true"
 * is 1, "0" or "false" 0, anything else -1. v need not be NUL-terminated. */
int sl_stream_parse_presence(const char *v, size_t len);

typedef enum { SL_WS_PING, SL_WS_SUBSCRIBE, SL_WS_UNSUBSCRIBE, SL_WS_AUTH } sl_ws_verb_t;

/* One command a client sends on GET /v1/ws. */
typedef struct sl_ws_command {
    sl_ws_verb_t verb;
    char channel[SL_CHANNEL_MAX + 1]; /* subscribe, unsubscribe: a valid channel */
    long long history;                /* subscribe: 0..history_max, history_default when absent */
    int presence;                     /* subscribe: "presence":true, the channel's joins and leaves */
    long long since;                  /* subscribe: the resume position, -1 when absent */
    char *token;                      /* auth (always), subscribe (when given): the "token", malloc'd; else NULL */
    size_t token_len;
} sl_ws_command_t;

/* Parses one WebSocket text message as a command ({"command":"subscribe","channel":…,
 * "history":…,"since":…,"presence":…,"token":…}, unsubscribe, {"command":"auth","token":…},
 * ping; other members are ignored). Returns 0 with *cmd set (free cmd->token when not NULL), or -1
 * with err set (status 400, field NULL, code invalid_json, missing_command, unknown_command,
 * invalid_channel, invalid_history, invalid_since, invalid_presence or invalid_token, and a
 * message for the client) and cmd->token NULL. Whether the command makes sense for the socket
 * (already subscribed, too many channels) and whether the token is good are the caller's to
 * decide. text need not be NUL-terminated. */
int sl_stream_ws_parse(const char *text, size_t len, long long history_default, long long history_max,
                       sl_ws_command_t *cmd, sl_error_t *err);

/* Ends every stream (for shutdown); their sockets close as the loop runs: SSE and NDJSON at once,
 * a WebSocket after a close frame (1001 going away) when its client answers it. */
void sl_streams_close_all(sl_streams_t *s);
void sl_streams_destroy(sl_streams_t *s);

#endif
