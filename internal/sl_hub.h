/*
 * sl_hub: the streaming service's single ordered feed, and its fan-out to subscriptions.
 *
 * Live events arrive from the live exchange in any order, possibly with gaps (a lost publish, a
 * persister that died between commit and publish, a broker outage). seq has no gaps in the
 * database, so the hub delivers strictly seq+1 after seq: an event ahead of the next expected
 * one waits while the hub reads the missing range from the database (backfill); one at or below
 * the position is a duplicate and is dropped. A timer also compares the position with the
 * database's counter, so a gap at the tail is filled even when no later event arrives.
 *
 * A subscription (sl_sub_t) names its channels (or all). Between sl_hub_subscribe and
 * sl_sub_go_live it buffers what the hub delivers; its owner reads history meanwhile, then calls
 * sl_sub_go_live(covered) and the buffer is replayed without what history already covered: no
 * gap and no duplicate at the seam. After that, events go straight to the owner's emit callback,
 * in seq order, each once. The buffer holds at most seam_max events: past that it is dropped, and
 * sl_sub_go_live tells the owner to read what came after its history from the database (or the
 * hub's memory) as a resume, then to call it again: the seam is finished from the database.
 *
 * Loop thread only. Events are shared by reference (sl_event.h).
 */
#ifndef SL_HUB_H
#define SL_HUB_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <stdint.h>

#include "sl_event.h"
#include "sl_pgpool.h"

typedef struct sl_hub sl_hub_t;
typedef struct sl_sub sl_sub_t;

struct sl_sub_link {
    h2o_linklist_t link;
    sl_sub_t *sub;
    void *entry; /* the hub's channel entry */
};

struct sl_sub {
    /* set by the owner before sl_hub_subscribe */
    int all;                         /* every channel */
    char (*channels)[SL_CHANNEL_MAX + 1];
    size_t nchannels;
    void (*emit)(sl_sub_t *sub, sl_event_t *ev); /* takes no reference; retain to keep */
    void *owner;
    /* optional: 0 leaves the events of channel out of this subscription everywhere (live, its
     * wait buffer, sl_hub_replay, sl_sub_wants), as if it did not name it: a stream of every
     * channel without the private ones its reader may not read. NULL: none left out. */
    int (*filter)(const sl_sub_t *sub, const char *channel);
    /* state */
    int64_t cursor;                  /* highest seq emitted or covered */
    int live;
    int overflowed;                  /* its buffer passed seam_max and was dropped */
    int64_t start;                   /* the hub's position when s subscribed: the buffer has what follows */
    sl_event_t **buffered;
    size_t nbuffered, capbuffered;
    struct sl_sub_link *links;       /* one per channel, or one in the all-list */
    sl_hub_t *hub;
};

typedef struct sl_hub_stats {
    uint64_t received, delivered, duplicates, malformed, backfills, backfilled, skipped, dropped_pending;
    uint64_t replays_from_memory;
    uint64_t seam_overflows;    /* wait buffers that passed seam_max (their seam read from the database) */
    uint64_t seam_buffered;     /* events held now by subscriptions not live yet (references, summed) */
    int64_t last_created_at_us; /* created_at of the last delivered message, for the live lag */
} sl_hub_stats_t;

/* The hub reads its start position and gaps through pg. check_ms: how often the tail is
 * compared with the database. */
/* recent: how many delivered events the hub keeps for sl_hub_replay (0: none). seam_max: most
 * events one subscription buffers before it goes live (>= 1). */
sl_hub_t *sl_hub_create(h2o_loop_t *loop, sl_pgpool_t *pg, int check_ms, size_t max_pending, size_t recent,
                        size_t seam_max);
void sl_hub_destroy(sl_hub_t *h);

/* A payload from the live exchange. */
void sl_hub_feed(sl_hub_t *h, const char *json, size_t len);
/* Ask for a comparison with the database now (e.g. after the live feed reconnected). */
void sl_hub_check(sl_hub_t *h);

int sl_hub_ready(const sl_hub_t *h);          /* the start position is known */
int64_t sl_hub_position(const sl_hub_t *h);   /* last seq delivered */
const sl_hub_stats_t *sl_hub_stats(const sl_hub_t *h);

/* Registers s (fields above set); it buffers until sl_sub_go_live. Returns 0, or -1 on no memory. */
int sl_hub_subscribe(sl_hub_t *h, sl_sub_t *s);
/* Emits the buffered events with seq > covered, in order, then goes live: returns 0. Returns 1
 * instead when the buffer passed seam_max and was dropped: nothing is emitted, s keeps buffering
 * (anew, empty), its cursor is where the buffer would have taken over (the later of covered and
 * the hub's position when s subscribed), and the owner reads every event of its channels after
 * the cursor (sl_hub_replay or the database, as for a resume), emits them, and calls
 * sl_sub_go_live again with what that covered. */
int sl_sub_go_live(sl_sub_t *s, int64_t covered);
/* Removes s and drops its buffer. Safe to call from inside s's emit callback? No: call it later
 * (from the owner's close path), never during emit. */
void sl_hub_unsubscribe(sl_sub_t *s);

/* Serves a subscription's history from the hub's memory of recent events when that memory covers
 * it: every event after `since` (since >= 0; at most max_events, else *too_many is set), or the
 * last `history` events of its channels. On 1, fn ran for each event in seq order and the caller
 * goes live with sl_sub_go_live(s, sl_hub_position(h)); on 0 the memory does not reach far enough
 * back and the database must answer. */
int sl_hub_replay(sl_hub_t *h, const sl_sub_t *s, int64_t since, long long history, long long max_events,
                  int *too_many, void (*fn)(void *data, sl_event_t *ev), void *data);

/* A page of the events of s's channels after `since` (>= 0), oldest first, at most `limit` (>= 1),
 * from the hub's memory, for a pull (sl_pull.h). Returns 1 when memory reaches back to since: fn
 * ran for each event given (none when nothing of s's channels followed), and *upto is the position
 * the page answers for: the last event given when the page is full, else the hub's position (up to
 * which nothing more of s's channels exists). Returns 0 when memory does not reach back that far
 * (the database must answer); fn never ran then. s needs only its channels (all, channels,
 * nchannels) set; it need not be subscribed. */
int sl_hub_page(sl_hub_t *h, const sl_sub_t *s, int64_t since, long long limit, int64_t *upto,
                void (*fn)(void *data, sl_event_t *ev), void *data);

/* 1 if the subscription wants channel (its filter included). */
int sl_sub_wants(const sl_sub_t *s, const char *channel);

#endif
