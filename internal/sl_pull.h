/*
 * sl_pull: GET /v1/messages?after=<seq>, the feed after a position, oldest first, one page at a
 * time with a `next` to continue: for clients that pull rather than hold a stream open (a worker
 * that fetches what it has not downloaded yet). The items are what an NDJSON stream sends after a
 * resume: messages, and the update and delete events of messages (each with its own seq), so a
 * puller learns of edits and deletions too.
 *
 * Two sides share the parameters, the one database read and the answer's JSON:
 *   - the api answers a pull from the database at once (sl_pull_query, then
 *     sl_pull_page_from_result); it refuses `wait`, which is the sse service's;
 *   - sse (sl_pull_t) answers from the hub's memory of recent events when it reaches back to
 *     `after` (no database at all), else with one bounded database read, and with `wait` it is a
 *     long-poll: when nothing newer exists yet the request waits, as a hub subscription, for the
 *     first event of its channel, holding no database connection, until `wait` seconds pass (an
 *     empty page). Waiters are capped per instance and per client; a client that leaves while it
 *     waits is noticed within a second and its waiter freed.
 *
 * A position the feed cannot answer for is an explicit reset, never a silent gap: `after` below
 * the retained range (the retention job deleted messages of its channels after it, sl_retention.h)
 * answers {"reset":{"reason":"too_old",…}}, and `after` past the feed's last seq (a position of
 * another database) {"reset":{"reason":"ahead",…}}, each with no messages and the `next` to
 * continue from. A pull has no replay bound of its own: each page is one read of at most `limit`
 * rows, so a client far behind pages forward.
 */
#ifndef SL_PULL_H
#define SL_PULL_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <stdint.h>

#include "sl_buf.h"
#include "sl_chanpolicy.h"
#include "sl_event.h"
#include "sl_message.h"
#include "sl_pgpool.h"
#include "sl_stream.h"

#define SL_PULL_WAIT_MAX 30      /* seconds */
#define SL_PULL_LIMIT_DEFAULT 50

/* ---- shared by api and sse (loop thread; the parsers and the page are pure) -------------------- */

typedef struct sl_pull_params {
    int64_t after;
    long long limit;
    long long wait_s; /* 0: answer at once */
    int all;          /* no channel given: every channel */
    char channel[1][SL_CHANNEL_MAX + 1];
} sl_pull_params_t;

/* Reads after (required), limit (1..limit_max, default SL_PULL_LIMIT_DEFAULT), channel (optional;
 * '#general' means general) and wait (0..SL_PULL_WAIT_MAX, default 0) from req's query string.
 * Returns 0, or -1 with err set (400 invalid_after, invalid_limit, invalid_channel, invalid_wait;
 * field names the parameter). */
int sl_pull_parse(h2o_req_t *req, long long limit_max, sl_pull_params_t *p, sl_error_t *err);

/* A read of every channel by a reader while some channels are private (sl_chanpolicy): the private
 * channels' patterns and the reader's, each a text[] literal of LIKE patterns; the rows of a
 * channel that is private and not the reader's are left out. SL_PULL_SQL_READABLE is that
 * condition on the channel column, its parameters named P and G. */
typedef struct sl_pull_readable {
    const char *priv, *granted; /* the two literals (in bufs) */
    sl_buf_t bufs[2];
} sl_pull_readable_t;
#define SL_PULL_SQL_READABLE(P, G) " AND (NOT channel LIKE ANY(" P "::text[]) OR channel LIKE ANY(" G "::text[]))"
/* The retention's low-water mark of the channels a reader may read (sl_retention.h): what it may not
 * read never resets it. */
#define SL_PULL_SQL_LOW_READABLE(P, G)                                                                    \
    "(SELECT coalesce(max(low_seq), 0) FROM sluice_retention WHERE true" SL_PULL_SQL_READABLE(P, G) ")"

/* The readable form of a reader under policy: granted is its token's channels (NULL: no token, or
 * tokens ignored), policy's private channels the other set. The sse streams' and pulls' reads and
 * the api's history use it, so that one condition decides what a reader may read from the
 * database. Free with sl_pull_readable_free. */
void sl_pull_readable_init(sl_pull_readable_t *rd, const sl_chanpolicy_t *policy, const sl_chanset_t *granted);
void sl_pull_readable_free(sl_pull_readable_t *rd);

/* The feed after `after` in the database: messages and events of the channels (all, or
 * channels[0..n); with readable, every channel the reader may read), oldest first, at most limit
 * rows, and the feed's last seq and the retention's low-water mark of the channels (every
 * channel's with readable) of the same snapshot. NULL when the pool refuses (cb never runs). The
 * streams' resume reads with it too (sl_stream_query_after). */
sl_pgquery_t *sl_pull_query(sl_pgpool_t *pg, int all, const char (*channels)[SL_CHANNEL_MAX + 1], size_t n,
                            const sl_pull_readable_t *readable, int64_t after, long long limit, sl_pg_cb cb,
                            void *data);
/* Of a sl_pull_query answer: its feed rows (not counting the row that carries only the feed's
 * bounds when there is none), the feed's last seq then, and the retention's low-water mark of the
 * channels then (0: none of their messages was deleted; sl_retention.h). */
int sl_pull_rows(const PGresult *res);
int64_t sl_pull_last(const PGresult *res);
int64_t sl_pull_low(const PGresult *res);

/* An answer being built: {"messages":[…],"next":"<seq>"} and, for a reset, "reset":{…}. */
typedef struct sl_pull_page {
    sl_buf_t buf;
    size_t n;      /* items added */
    int64_t last;  /* seq of the last item added */
} sl_pull_page_t;

void sl_pull_page_init(sl_pull_page_t *pg);
/* Adds ev (its JSON is copied). */
void sl_pull_page_add(sl_pull_page_t *pg, const sl_event_t *ev);
/* Closes the JSON: next, and when reset is not NULL the reset's reason and the position asked for
 * (since). pg->buf then holds the answer (NUL-terminated); free it with sl_buf_free. */
void sl_pull_page_end(sl_pull_page_t *pg, int64_t next, const char *reset, int64_t since);
/* Reads a sl_pull_query answer of a pull after `after` into pg. Returns the position the page
 * answers for (the `next`: the last row's seq when the page is full, else the feed's last seq
 * then, never below after) and sets *reset to NULL, or to the reason of a reset ("too_old": after
 * is below the low-water mark, the next is the mark; "ahead": after is past the last seq, the next
 * is the last seq), with nothing added. reads (may be NULL) checks each row's channel again: a
 * read of every channel whose query left out what its reader may not read adds no row reads(ctx,
 * channel) refuses, and moves past it all the same. */
int64_t sl_pull_page_from_result(sl_pull_page_t *pg, const PGresult *res, int64_t after, long long limit,
                                 int (*reads)(const void *ctx, const char *channel), const void *ctx,
                                 const char **reset);

/* ---- the sse side: memory, database, long-poll (loop thread only) -------------------------------- */

typedef struct sl_pull_conf {
    long long limit_max;          /* largest page */
    long long max_waiters;        /* long-polls waiting at once on this instance (more: 503) */
    long long waiters_per_client; /* of those, by one client (an IPv4 address, an IPv6 /64) */
} sl_pull_conf_t;

typedef struct sl_pull_stats {
    uint64_t answered[2];   /* pages read from [0] memory, [1] the database */
    uint64_t at_once, woken, timed_out, resets; /* how requests were answered */
    uint64_t waiters;       /* waiting now */
    uint64_t refused[2];    /* 503 too_many_waiters: [0] the instance's cap, [1] the client's */
    uint64_t departed;      /* clients that left while they waited (their waiter freed) */
    uint64_t failures;      /* database reads that failed (503) */
} sl_pull_stats_t;

typedef struct sl_pull sl_pull_t;

/* Uses the streams' hub and database pool, and their history caps for its database reads. */
sl_pull_t *sl_pull_create(h2o_loop_t *loop, sl_streams_t *streams, const sl_pull_conf_t *conf);
/* GET /v1/messages on sse. Answers 400/503 itself when it must. Returns 0. */
int sl_pull_handle(sl_pull_t *p, h2o_req_t *req);
const sl_pull_stats_t *sl_pull_stats(const sl_pull_t *p);
/* Answers every waiter now with what it has (shutdown: clients come back elsewhere). */
void sl_pull_close_all(sl_pull_t *p);
/* Requests in progress (waiting, or reading the database). */
size_t sl_pull_pending(const sl_pull_t *p);
void sl_pull_destroy(sl_pull_t *p);

#endif
