/*
 * sl_stream_int: the inside of sl_stream (sl_stream.h), shared by its files and by nothing else.
 *
 * sl_stream.c is the core every transport goes through: the registry of connections, the one
 * accounting of output (out_max_bytes), the history caps (history_concurrency,
 * history_per_client), the history reads (replay_max) and the joining at the seam, and the
 * timers that flush, heartbeat and notice departed clients. Each transport is one table of
 * functions (struct sl_transport), as Nchan's subscribers are (subscriber_fn_t):
 *   sl_stream_sse.c, sl_stream_ndjson.c  what differs between SSE and NDJSON (content type,
 *                                        framing, heartbeat bytes), over
 *   sl_stream_http.c                     their streaming HTTP response and GET /v1/stream;
 *   sl_stream_ws.c                       WebSocket subscriptions on GET /v1/ws;
 *   sl_stream_presence.c                 the core's part in presence: occupancy, joins and leaves.
 * A transport never applies a limit of the core's itself: it asks the core (sl_stream_conn_take
 * before it queues a byte, sl_stream_hist_acquire before it reads a history). Loop thread only.
 */
#ifndef SL_STREAM_INT_H
#define SL_STREAM_INT_H

#include <sys/socket.h>

#include "sl_chanpolicy.h"
#include "sl_jwt.h"
#include "sl_stream.h"

enum { T_SSE = 0, T_NDJSON = 1, T_WS = 2 }; /* the index of sl_stream_stats_t.connected */

struct stream_conn;
struct sl_http_format;

/* What a transport does; the rest of the stream logic is the core's. */
struct sl_transport {
    const char *name; /* in logs */
    int kind;         /* T_SSE, T_NDJSON, T_WS */
    sl_format_t fmt;  /* how its events are encoded (sl_event.h) */
    void (*flush)(struct stream_conn *c);     /* write what is queued, if the socket can take it */
    void (*abort)(struct stream_conn *c);     /* cut the connection now (slow client, shutdown) */
    void (*heartbeat)(struct stream_conn *c); /* queue a keep-alive */
    /* 1 when its client is seen to have left (asked at every heartbeat tick); NULL when the
     * transport notices it itself (a WebSocket is always read) */
    int (*gone)(struct stream_conn *c);
    /* brings queued_bytes up to date where the queue shrinks without telling us; may be NULL */
    void (*sync)(struct stream_conn *c);
    /* at shutdown: 1 when the connection ends itself (c stays registered until it does), 0 to
     * have it aborted; NULL: always aborted */
    int (*shutdown)(struct stream_conn *c);
    const struct sl_http_format *http; /* SSE and NDJSON: what differs between them; else NULL */
    /* Queues text (malloc'd, len bytes, one whole frame or event: a presence join or leave) for
     * the client, through sl_stream_conn_take; takes it (frees it when it is not queued). Returns
     * 0 when queued, -1 when not (the client is cut off). */
    int (*queue)(struct stream_conn *c, char *text, size_t len);
};

/* Every connection starts with this (the transport's own struct embeds it first). */
struct stream_conn {
    h2o_linklist_t link;  /* in streams->conns */
    h2o_linklist_t dirty; /* in streams->dirty while a flush or abort is due */
    sl_streams_t *streams;
    const struct sl_transport *tp;
    int64_t last_out_us;
    size_t queued_bytes; /* queued for this client and not yet taken by its socket, history included */
    int aborting;
};

/* What one client holds of something capped per client; the client is its sl_http_addr_key (an
 * IPv4 address, an IPv6 /64). */
struct histpeer {
    socklen_t len;
    unsigned char addr[16];
    size_t n;
};

/* Something capped per instance and per client: the history reads (below), the pull waiters
 * (sl_pull.c). A small table of the clients holding any. */
struct sl_peercount {
    struct histpeer *peers;
    size_t npeers, cappeers;
    size_t total; /* held by every client, those without a key included */
};

/* Takes one for the client at addr (len 0: unknown, counted in the total only). Returns NULL when
 * taken; else what it is over, "instance" (total at max_total, or no memory) or "client" (the
 * client at max_per_client), with nothing taken. */
const char *sl_peercount_take(struct sl_peercount *t, socklen_t len, const unsigned char *addr, long long max_total,
                              long long max_per_client);
/* Gives back one that sl_peercount_take gave the same client. */
void sl_peercount_give(struct sl_peercount *t, socklen_t len, const unsigned char *addr);
void sl_peercount_free(struct sl_peercount *t);

/* A history read's place under the caps (history_concurrency, history_per_client): taken before
 * the history starts, given back when the subscription goes live, fails, or its client leaves
 * (noticed by the heartbeat tick within 2 s, or at once for a WebSocket; its query is cancelled
 * then, whether still queued in the pool or running). Taken whether memory or the database will
 * answer, which is not known before the response starts; not taken by a subscription that asks
 * for no history at all (history=0 without since), which reads nothing. */
struct histslot {
    int held;
    socklen_t len;
    unsigned char addr[16];
};

/* A reader's token once verified (sl_stream_reader_token): what it may read, and until when. */
struct reader {
    int has_token;          /* 0: none presented, or tokens are ignored (no key configured) */
    sl_jwt_claims_t claims; /* with has_token: sub, channels (what it may read of the private ones) */
    int64_t until;          /* with has_token: the second it stops being valid (sl_jwt_valid_until) */
};

/* A deadline on the wall clock (seconds since the epoch): a stream or a subscription that ends
 * when its token does. All of an instance's deadlines are in one heap under one timerfd, so each
 * fires at its second without any polling, however many there are. */
struct expiry {
    int64_t at;
    size_t pos; /* 1 + its place in the heap; 0 while not armed */
    void (*fire)(struct expiry *e);
};

struct sl_streams {
    h2o_loop_t *loop;
    sl_hub_t *hub;
    sl_pgpool_t *pg;
    sl_presence_t *presence; /* the instance's registry (sl_sse's); NULL: nothing counted */
    sl_stream_conf_t conf;
    h2o_linklist_t conns, dirty;
    size_t nconns;
    h2o_timeout_t zero_timeout, hb_timeout;
    h2o_timeout_t defer_timeout; /* SL_STREAM_HISTORY_DEFER_MS, for the streams' database reads */
    h2o_timeout_entry_t flush_entry, hb_entry;
    size_t queued_total;    /* the sum of every connection's queued_bytes */
    struct sl_peercount hist; /* history reads in progress (history_concurrency, history_per_client) */
    const struct sl_retention_view *retention; /* the low-water marks, for resumes from memory; may be NULL */
    sl_stream_stats_t stats;
    sl_jwt_t *jwt;                  /* readers' tokens (NULL or disabled: ignored) */
    const sl_chanpolicy_t *policy;  /* the private channels (NULL: none) */
    struct expiry **heap;           /* armed deadlines, soonest first */
    size_t nheap, capheap;
    int tfd;                        /* a timerfd set to the soonest (-1 until one is armed) */
    h2o_socket_t *tsock;
    int64_t tfd_at;                 /* what tfd is set to (0: nothing) */
    h2o_linklist_t reqreaders;      /* requests' verified tokens (sl_streams_channel_visible) */
};

/* A stream's or a WebSocket subscription's part in presence and occupancy (sl_stream_presence.c).
 * It is counted in the occupancy of each channel it reads from its admission (a stream) or its
 * subscribe (a WebSocket subscription) to its end; a stream of every channel is in none (it would
 * be in every channel's, those nobody posts to included) and is counted apart
 * (stats.all_channels). A reader with an identity (stream_identity) is in the channels' presence
 * sets; an anonymous one only in the occupancy, and makes no join or leave. One that asked for
 * presence (?presence=1, "presence":true) listens to the joins and leaves of its channels (every
 * channel's it may read for a stream of every channel): they go out after its history, held
 * until sl_stream_presence_live, so that they never come before a reset or the history frame.
 * What waits is bounded by out_max_bytes (a client whose waiting events would pass it is cut off,
 * as a slow one is); once live, they pass sl_stream_conn_take like any event. */
struct presence_held {
    char *text;
    size_t len;
};

struct presence_seat {
    struct stream_conn *conn;          /* whose output the events go to */
    sl_presence_user_t user;           /* who reads (strings owned here); user.id NULL: anonymous */
    sl_presence_entry_t **entries;     /* one per channel; none (NULL) for a stream of every channel */
    size_t nentries;
    sl_presence_listener_t **listeners; /* one per channel, or one of every channel; NULL: no events */
    size_t nlisteners;
    int entered, all, live;
    struct presence_held *held;        /* events waiting for the history to be sent */
    size_t nheld, capheld, held_bytes;
    const struct reader *reader;       /* a stream of every channel: its reader, whose channels' events it gets */
};

/* How long a stream waits before it reads its history from the database (memory answers at once):
 * a client that sent its request and closed at once (connect-and-drop) is gone by then, and reads
 * nothing (0 ms, the end of the loop's turn, saw almost none gone; 10 ms all). */
#define SL_STREAM_HISTORY_DEFER_MS 10

/* The transports' tables (sl_stream_sse.c, sl_stream_ndjson.c, sl_stream_ws.c). */
extern const struct sl_transport sl_stream_sse, sl_stream_ndjson, sl_stream_ws;

/* ---- the core (sl_stream.c) --------------------------------------------------------------------- */

/* Answers a request the core or a transport refuses (JSON error; Retry-After with a 503). Returns 0
 * (for a handler's return). */
int sl_stream_refuse(h2o_req_t *req, int status, const char *code, const char *field, const char *msg);
/* Whether a new connection may open: under max_conns and with the hub and the database ready.
 * Returns 0, or answers 503 (too_many_connections, not_ready) itself and returns -1. */
int sl_stream_admit(sl_streams_t *s, h2o_req_t *req);

/* 1 when the client of req is seen to have left: h2o does not read an HTTP/1 connection while it
 * answers (or streams) a request, so a client that left is otherwise noticed only when a write
 * fails; this peeks at the socket for its end. */
int sl_stream_req_gone(h2o_req_t *req);

void sl_stream_conn_register(sl_streams_t *s, struct stream_conn *c, const struct sl_transport *tp);
void sl_stream_conn_unregister(struct stream_conn *c);
/* A flush (or the abort, once c->aborting) is due at the next turn of the loop. */
void sl_stream_mark_dirty(struct stream_conn *c);
/* Sets what c has queued (bytes not yet taken by its socket); keeps the instance's sum. */
void sl_stream_conn_set_queued(struct stream_conn *c, size_t n);
/* The one accounting of output, for every transport: each byte queued for a client, history
 * included, passes here before it is queued. A client that has not taken the previous write
 * (busy) and whose queue would pass out_max_bytes is cut off (aborting, a flush due). Returns 0
 * when the bytes may be queued (they are counted), -1 when the client is cut off. */
int sl_stream_conn_take(struct stream_conn *c, size_t more, int busy);

/* The client's address as a per-client key (sl_http_addr_key); 0 when unknown. */
socklen_t sl_stream_peer_key(h2o_conn_t *conn, unsigned char addr[16]);
/* Takes a slot for a history read (since >= 0: a resume; else the last `history` messages) by the
 * client at addr (len 0: unknown, counted against the instance's cap only). Returns NULL with
 * the slot held, or NULL with nothing taken when nothing is to be read (history 0 without since),
 * or the cap it is over ("instance" or "client"; counted in stats.history_refused). */
const char *sl_stream_hist_acquire(sl_streams_t *s, struct histslot *slot, int64_t since, long long history,
                                   socklen_t len, const unsigned char *addr);
/* Gives the slot back if held (any number of calls). */
void sl_stream_hist_release(sl_streams_t *s, struct histslot *slot);
extern const char SL_STREAM_HISTORY_BUSY_MSG[];

/* History from the hub's memory: as sl_hub_replay with replay_max. Returns 1 when memory reached
 * back far enough (rows emitted, or *too_many: more than replay_max to resume, or since below the
 * retention's low-water mark as the view last read it; nothing emitted), else 0 (read the
 * database). */
int sl_stream_replay(sl_streams_t *s, sl_sub_t *sub, int64_t since, long long history, int *too_many,
                     void (*row)(void *, sl_event_t *), void *data);
/* What a replay from memory covered: the hub's position, or sub's cursor if past it. */
int64_t sl_stream_replay_covered(const sl_streams_t *s, const sl_sub_t *sub);
/* Queries the history of sub: the last `history` messages, or all after `since` (at most
 * replay_max + 1, so that "too many" shows). NULL when the pool refuses (cb never runs). A sub of
 * every channel reads only what a reader without a token may read when some are private. */
sl_pgquery_t *sl_stream_query_history(sl_streams_t *s, const sl_sub_t *sub, int64_t since, long long history,
                                      sl_pg_cb cb, void *data);
/* The same for reader r (may be NULL: no token): a sub of every channel reads only the rows of
 * channels r may read (the database leaves the others out, so that `history` counts them right). */
sl_pgquery_t *sl_stream_query_history_as(sl_streams_t *s, const sl_sub_t *sub, const struct reader *r,
                                         int64_t since, long long history, sl_pg_cb cb, void *data);
/* The feed after `after` as sl_pull_query reads it (with its bounds: last seq, low-water mark) for
 * sub (of every channel while some are private: only what r may read; r may be NULL: no token),
 * at most limit rows. The resume reads of sl_stream_query_history_as and sse's pulls. */
sl_pgquery_t *sl_stream_query_after(sl_streams_t *s, const sl_sub_t *sub, const struct reader *r, int64_t after,
                                    long long limit, sl_pg_cb cb, void *data);
/* 1 when a resume read (since >= 0) found more than replay_max rows, or since is below the
 * retention's low-water mark of its channels in the same read: answer "reset" instead. */
int sl_stream_too_many(const sl_streams_t *s, int64_t since, const PGresult *res);
/* Calls fn for each row as an event, in seq order (history comes newest first: ascending 0). */
void sl_stream_for_each_row(const PGresult *res, int ascending, void (*fn)(void *, sl_event_t *), void *data);
/* Goes live after history covered up to covered (sl_sub_go_live). Returns 0 with the slot given
 * back; or 1 when sub's wait buffer passed seam_max meanwhile: the caller reads again after
 * sub->cursor, as a resume, still holding the slot. */
int sl_stream_join(sl_streams_t *s, sl_sub_t *sub, struct histslot *slot, int64_t covered);

/* Cuts c off as a client that does not take what it is sent (slow_disconnects; a flush is due):
 * the one way out when the output limit is passed. more: the bytes that would have passed it. */
void sl_stream_conn_cut(struct stream_conn *c, size_t more);

/* ---- presence and occupancy (sl_stream_presence.c) ----------------------------------------------- */

/* ps (zeroed) of connection c enters channels (n of them; n 0: a stream of every channel) as
 * reader rd (its token's sub and name: stream_identity; no token: anonymous), and listens to their
 * joins and leaves when listen is set. A stream of every channel keeps rd (it must outlive ps): its
 * events are those of the channels rd may read. Returns 0, or -1 when out of memory (nothing held;
 * ps stays zeroed). */
int sl_stream_presence_enter(struct presence_seat *ps, struct stream_conn *c, char (*channels)[SL_CHANNEL_MAX + 1],
                             size_t n, int listen, const struct reader *rd);
/* The history is sent: the events held go out, and the next ones at once. */
void sl_stream_presence_live(struct presence_seat *ps);
/* Leaves every channel and stops listening; frees what ps holds (any number of calls). */
void sl_stream_presence_leave(struct presence_seat *ps);

/* ---- readers' tokens and private channels ----------------------------------------------------------- */

/* The token a request presents: Authorization: Bearer (curl, fetch), else ?token= (EventSource
 * sets no header); "" for a ?token= badly encoded (no JWT: token_malformed). NULL when none. */
const char *sl_stream_request_token(h2o_req_t *req, size_t *len);
/* Verifies the token a reader presented (t NULL: none) for transport (in logs). Returns SL_JWT_OK
 * with *r filled, r->has_token 0 when no token came or no key is configured (tokens are ignored
 * then: private channels stay closed to everyone); else the refusal (counted in stats and in the
 * verifier's metrics, logged), *r owning nothing. Free *r with sl_stream_reader_free. */
sl_jwt_result_t sl_stream_reader_token(sl_streams_t *s, const char *transport, const char *t, size_t len,
                                       struct reader *r);
void sl_stream_reader_free(struct reader *r);
/* May r read channel (one a stream or a subscription names)? A refusal is counted and logged. */
sl_chan_read_t sl_stream_reader_may_read(sl_streams_t *s, const char *transport, const struct reader *r,
                                         const char *channel);
/* 1 when some channel is private: a stream of every channel must then leave out what its reader
 * may not read (sl_stream_readable, as its sl_sub_t filter). */
int sl_stream_filters_all(const sl_streams_t *s);
/* The retention's mark of what sub reads (sl_retention_view_low; for a sub of every channel with a
 * filter, only of the channels it passes: a private channel a reader may not read never resets it). */
int64_t sl_stream_retention_low(const sl_streams_t *s, const sl_sub_t *sub);
/* 1 when r may read channel (the per-event filter; nothing counted). */
int sl_stream_readable(const sl_streams_t *s, const struct reader *r, const char *channel);
/* The token's end for a stream or subscription r opened: fire(e) runs on the loop at r->until
 * (at once when it is past). Nothing when r has no token. An armed e must be disarmed before it
 * is freed (any number of calls). Returns 0, or -1 when out of memory (nothing armed). */
int sl_stream_expiry_arm(sl_streams_t *s, struct expiry *e, const struct reader *r, void (*fire)(struct expiry *));
void sl_stream_expiry_disarm(sl_streams_t *s, struct expiry *e);

/* ---- the streaming HTTP response of SSE and NDJSON (sl_stream_http.c) ------------------------------ */

/* What differs between SSE and NDJSON; events are framed by sl_event_encode (tp->fmt). */
struct sl_http_format {
    const char *content_type;
    const char *heartbeat; /* the bytes of a keep-alive */
    /* The first bytes of the body (h2o sends the head only with body bytes) into buf (size bytes);
     * returns their length. NULL: the body starts with a heartbeat. */
    int (*first)(const sl_stream_conf_t *conf, char *buf, size_t size);
    /* The notice that a resume position is too old (then the newest history follows) into buf;
     * returns its length. */
    int (*reset)(char *buf, size_t size, long long since);
    /* The notice that the reader's token expired (at exp), the stream's last bytes; its length. */
    int (*expired)(char *buf, size_t size, long long exp);
};

void sl_stream_http_flush(struct stream_conn *c);
void sl_stream_http_abort(struct stream_conn *c);
void sl_stream_http_heartbeat(struct stream_conn *c);
int sl_stream_http_gone(struct stream_conn *c);
int sl_stream_http_queue(struct stream_conn *c, char *text, size_t len);

#endif
