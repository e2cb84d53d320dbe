/*
 * sl_ingest_reader: reads one Mastodon stream in a thread of its own (libcurl) and hands what it
 * reads, as queue items (sl_message_t: new messages, update and delete events), to the event loop
 * through a small bounded queue.
 *
 * Streaming first: the streaming server is found in the instance document (/api/v2/instance, then
 * /api/v1/instance; the instance itself when neither names one) and the stream's SSE endpoint is
 * read with the token. Without a token, or when streaming is refused (401, 403, 404), it polls the
 * REST timeline, paging forward with min_id from the newest status taken (so a gap bigger than one
 * page is read in order, nothing skipped), and waits as its rate-limit headers say (after a 429,
 * or when X-RateLimit-Remaining runs out: sl_mastodon_rate_wait_ms, 15 minutes at most).
 *
 * Back pressure: when the queue is full the thread waits inside curl's write callback, so nothing
 * more is read from the socket (whose receive buffer is kept small) and TCP pushes back on the
 * server; memory stays bounded by the queue. A connection silent for idle_ms (Mastodon sends a
 * heartbeat every 15 s) is dead; the time spent waiting for queue space does not count. Lost or
 * refused connections are retried with exponential backoff and jitter.
 *
 * Threading: create, start, stop, pop, status and destroy are called from one thread (the event
 * loop's); the reader runs in its own. After each push it writes to wake_fd (an eventfd the loop
 * watches); the loop then pops.
 */
#ifndef SL_INGEST_READER_H
#define SL_INGEST_READER_H

#include <stddef.h>
#include <stdint.h>

#include "sl_mastodon.h"
#include "sl_message.h"

typedef struct sl_ingest_reader_conf {
    const char *instance;          /* normalized instance URL (sl_mastodon_instance_norm) */
    const char *token;             /* access token, NULL or "" for none */
    const char *stream;            /* "public", "public:local", "hashtag:<tag>" */
    const char *channel;           /* channel of the messages made */
    const char *label;             /* names the source in log lines (NULL: the instance) */
    long long idle_ms;             /* a stream silent this long is dead */
    long long connect_timeout_ms;
    long long request_timeout_ms;  /* whole REST requests */
    long long backoff_min_ms, backoff_max_ms;
    long long poll_ms;             /* between timeline polls */
    long long poll_limit;          /* statuses per page (Mastodon allows up to 40) */
    long long poll_max_pages;      /* pages followed in one poll to fill a gap */
    size_t queue_cap;              /* items handed over but not yet popped */
    size_t ids_cap;                /* statuses remembered for their deletes (sl_mastodon_ids_t); 0: none */
    int wake_fd;                   /* written (8 bytes, eventfd style) after each push; not owned */
} sl_ingest_reader_conf_t;

typedef struct sl_ingest_reader_status {
    int running;                   /* a reading thread exists and was not asked to stop */
    int stopping;                  /* asked to stop, not finished yet */
    const char *mode;              /* "streaming", "polling", or NULL before the first attempt */
    int connected;                 /* streaming: the stream is open; polling: the last poll worked */
    int64_t connected_since_us;    /* wall clock; 0 when not connected */
    uint64_t received;             /* events read from the stream, statuses from timelines */
    uint64_t skipped;              /* nothing to enqueue (unknown event type, empty text, not public) */
    uint64_t invalid;              /* malformed events */
    uint64_t handed_over;          /* items pushed into the queue */
    uint64_t connects, heartbeats, polls, rate_limited;
    size_t queued;                 /* in the queue now */
    char cursor[SL_MASTODON_STATUS_ID_MAX + 1]; /* polling: the min_id of the next poll ("" before the first) */
    int64_t last_item_at_us;       /* wall clock of the last item handed over; 0: none yet */
    char last_error[256];          /* "" when none yet */
    int64_t last_error_at_us;
} sl_ingest_reader_status_t;

typedef struct sl_ingest_reader sl_ingest_reader_t;

/* Copies conf (its strings must outlive the reader). NULL on no memory. Reads nothing yet. */
sl_ingest_reader_t *sl_ingest_reader_create(const sl_ingest_reader_conf_t *conf);

/* Starts reading (a new thread). A thread asked to stop earlier is joined first (it is gone or
 * about to be). Returns 0 (also when already running), or -1 if no thread could be made. */
int sl_ingest_reader_start(sl_ingest_reader_t *r);

/* Asks the thread to stop: it closes its connection at once (a wait for queue space ends too). Does
 * not wait; items already in the queue stay there. */
void sl_ingest_reader_stop(sl_ingest_reader_t *r);

/* Joins a thread that has finished (after stop, or on its own). Returns 1 when no thread is left. */
int sl_ingest_reader_reap(sl_ingest_reader_t *r, int wait);

/* Takes the oldest item: 1 when one was moved to out (which then owns its meta: sl_message_clear),
 * 0 when the queue is empty. */
int sl_ingest_reader_pop(sl_ingest_reader_t *r, sl_message_t *out);

void sl_ingest_reader_status(sl_ingest_reader_t *r, sl_ingest_reader_status_t *st);

/* Stops, joins and frees. */
void sl_ingest_reader_destroy(sl_ingest_reader_t *r);

#endif
