/*
 * sl_hub: ordering, gap filling and fan-out of live events; see sl_hub.h.
 *
 * Subscriptions are indexed by channel (a small chained hash table of channel entries, each with
 * a list of links), plus one list for subscriptions to every channel, so delivering an event
 * touches only the subscriptions that want it.
 */
#include "sl_hub.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_db.h"
#include "sl_log.h"

#define NBUCKETS 1024
#define BACKFILL_ROWS 1000

struct chan_entry {
    struct chan_entry *next;
    h2o_linklist_t subs;
    size_t nsubs;
    char name[SL_CHANNEL_MAX + 1];
};

struct sl_hub {
    h2o_loop_t *loop;
    sl_pgpool_t *pg;
    int ready;
    int64_t position;
    sl_event_t **pending; /* sorted by seq, all > position */
    size_t npending, cappending, max_pending;
    size_t seam_max;      /* most events a subscription buffers before it goes live */
    sl_pgquery_t *query;  /* backfill, start position or tail check in flight */
    int64_t backfill_to;  /* upper end of the backfill in flight */
    int64_t hole_to;      /* a range found empty, up to here, to check against the counter */
    struct chan_entry *buckets[NBUCKETS];
    h2o_linklist_t all;   /* links of subscriptions to every channel */
    sl_event_t **ring;    /* the last delivered events, contiguous in seq (but for holes) */
    size_t ring_cap, ring_len, ring_head; /* head: index of the oldest */
    h2o_timeout_t check_timeout;
    h2o_timeout_entry_t check_entry;
    sl_hub_stats_t stats;
};

static const char SQL_POSITION[] = "SELECT last_seq FROM sluice_feed WHERE id = 1";
static const char SQL_BACKFILL[] = SL_DB_FEED_MESSAGES " WHERE seq > $1 AND seq <= $2 UNION ALL " SL_DB_FEED_EVENTS
                                   " WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT 1000";

static unsigned hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h & (NBUCKETS - 1);
}

static struct chan_entry *find_entry(sl_hub_t *h, const char *channel, int create)
{
    unsigned b = hash(channel);
    for (struct chan_entry *e = h->buckets[b]; e != NULL; e = e->next) {
        if (strcmp(e->name, channel) == 0)
            return e;
    }
    if (!create)
        return NULL;
    struct chan_entry *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    snprintf(e->name, sizeof(e->name), "%s", channel);
    h2o_linklist_init_anchor(&e->subs);
    e->next = h->buckets[b];
    h->buckets[b] = e;
    return e;
}

static void remove_entry(sl_hub_t *h, struct chan_entry *e)
{
    struct chan_entry **p = &h->buckets[hash(e->name)];
    while (*p != e)
        p = &(*p)->next;
    *p = e->next;
    free(e);
}

int sl_sub_wants(const sl_sub_t *s, const char *channel)
{
    if (s->filter != NULL && !s->filter(s, channel))
        return 0;
    if (s->all)
        return 1;
    for (size_t i = 0; i < s->nchannels; i++) {
        if (strcmp(s->channels[i], channel) == 0)
            return 1;
    }
    return 0;
}

static void drop_buffer(sl_sub_t *s)
{
    for (size_t i = 0; i < s->nbuffered; i++)
        sl_event_release(s->buffered[i]);
    if (s->hub != NULL)
        s->hub->stats.seam_buffered -= s->nbuffered;
    free(s->buffered);
    s->buffered = NULL;
    s->nbuffered = s->capbuffered = 0;
}

static void sub_receive(sl_sub_t *s, sl_event_t *ev)
{
    if (s->filter != NULL && !s->filter(s, ev->channel))
        return;
    if (!s->live) {
        if (s->overflowed)
            return; /* the database answers for it (sl_sub_go_live) */
        if (s->nbuffered == s->hub->seam_max) {
            /* A history that takes long while the feed is busy: holding every event would grow
             * without bound. Everything after the history is read from the database instead. */
            drop_buffer(s);
            s->overflowed = 1;
            s->hub->stats.seam_overflows++;
            SL_INFO("event=seam_buffer_overflow seam_max=%zu", s->hub->seam_max);
            return;
        }
        if (s->nbuffered == s->capbuffered) {
            size_t cap = s->capbuffered ? s->capbuffered * 2 : 16;
            if (cap > s->hub->seam_max)
                cap = s->hub->seam_max;
            sl_event_t **b = realloc(s->buffered, cap * sizeof(*b));
            if (b == NULL) { /* as if full: the database answers for it */
                drop_buffer(s);
                s->overflowed = 1;
                s->hub->stats.seam_overflows++;
                return;
            }
            s->buffered = b;
            s->capbuffered = cap;
        }
        s->buffered[s->nbuffered++] = sl_event_retain(ev);
        s->hub->stats.seam_buffered++;
        return;
    }
    if (ev->seq <= s->cursor)
        return;
    s->cursor = ev->seq;
    s->emit(s, ev);
}

static void deliver_list(h2o_linklist_t *anchor, sl_event_t *ev)
{
    h2o_linklist_t *n = anchor->next;
    while (n != anchor) {
        h2o_linklist_t *next = n->next; /* emit never unsubscribes (see sl_hub.h) */
        struct sl_sub_link *l = H2O_STRUCT_FROM_MEMBER(struct sl_sub_link, link, n);
        sub_receive(l->sub, ev);
        n = next;
    }
}

static void remember(sl_hub_t *h, sl_event_t *ev)
{
    if (h->ring_cap == 0)
        return;
    if (h->ring_len == h->ring_cap) {
        sl_event_release(h->ring[h->ring_head]);
        h->ring[h->ring_head] = sl_event_retain(ev);
        h->ring_head = (h->ring_head + 1) % h->ring_cap;
    } else {
        h->ring[(h->ring_head + h->ring_len++) % h->ring_cap] = sl_event_retain(ev);
    }
}

/* A hole (positions without rows) breaks the memory's continuity: forget what came before. */
static void forget(sl_hub_t *h)
{
    for (size_t i = 0; i < h->ring_len; i++)
        sl_event_release(h->ring[(h->ring_head + i) % h->ring_cap]);
    h->ring_len = h->ring_head = 0;
}

static sl_event_t *ring_at(const sl_hub_t *h, size_t i)
{
    return h->ring[(h->ring_head + i) % h->ring_cap];
}

/* Index of the first remembered event after since (ring_len when none). */
static size_t ring_after(const sl_hub_t *h, int64_t since)
{
    size_t lo = 0, hi = h->ring_len;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (ring_at(h, mid)->seq <= since)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int sl_hub_replay(sl_hub_t *h, const sl_sub_t *s, int64_t since, long long history, long long max_events,
                  int *too_many, void (*fn)(void *data, sl_event_t *ev), void *data)
{
    *too_many = 0;
    if (!h->ready)
        return 0;
    if (since >= 0) {
        if (since >= h->position) {
            h->stats.replays_from_memory++;
            return 1; /* nothing after it yet */
        }
        if (h->ring_len == 0 || ring_at(h, 0)->seq > since + 1)
            return 0;
        size_t first = ring_after(h, since);
        long long n = 0;
        for (size_t i = first; i < h->ring_len; i++)
            n += sl_sub_wants(s, ring_at(h, i)->channel);
        if (n > max_events) {
            *too_many = 1;
            return 1;
        }
        for (size_t i = first; i < h->ring_len; i++) {
            if (sl_sub_wants(s, ring_at(h, i)->channel))
                fn(data, ring_at(h, i));
        }
        h->stats.replays_from_memory++;
        return 1;
    }
    /* the last `history` wanted events, or all of them if the memory starts at the feed's start */
    size_t i = h->ring_len;
    long long found = 0;
    while (i > 0 && found < history) {
        i--;
        /* count messages; the edits and deletes among them go along, so the client applies them */
        found += sl_sub_wants(s, ring_at(h, i)->channel) && strcmp(ring_at(h, i)->type, "message") == 0;
    }
    if (found < history && !(h->ring_len == 0 ? h->position == 0 : ring_at(h, 0)->seq == 1))
        return 0;
    for (; i < h->ring_len; i++) {
        if (sl_sub_wants(s, ring_at(h, i)->channel))
            fn(data, ring_at(h, i));
    }
    h->stats.replays_from_memory++;
    return 1;
}

int sl_hub_page(sl_hub_t *h, const sl_sub_t *s, int64_t since, long long limit, int64_t *upto,
                void (*fn)(void *data, sl_event_t *ev), void *data)
{
    if (!h->ready)
        return 0;
    *upto = h->position;
    if (since >= h->position) {
        h->stats.replays_from_memory++;
        return 1; /* nothing after it yet */
    }
    if (h->ring_len == 0 || ring_at(h, 0)->seq > since + 1)
        return 0;
    long long n = 0;
    for (size_t i = ring_after(h, since); i < h->ring_len && n < limit; i++) {
        sl_event_t *ev = ring_at(h, i);
        if (!sl_sub_wants(s, ev->channel))
            continue;
        fn(data, ev);
        if (++n == limit)
            *upto = ev->seq;
    }
    h->stats.replays_from_memory++;
    return 1;
}

static void deliver(sl_hub_t *h, sl_event_t *ev)
{
    h->position = ev->seq;
    remember(h, ev);
    h->stats.delivered++;
    if (ev->created_at_us != 0)
        h->stats.last_created_at_us = ev->created_at_us;
    struct chan_entry *e = find_entry(h, ev->channel, 0);
    if (e != NULL)
        deliver_list(&e->subs, ev);
    deliver_list(&h->all, ev);
}

/* Delivers what is contiguous at the head of pending. */
static void drain_pending(sl_hub_t *h)
{
    size_t i = 0;
    while (i < h->npending && h->pending[i]->seq <= h->position + 1) {
        sl_event_t *ev = h->pending[i++];
        if (ev->seq == h->position + 1)
            deliver(h, ev);
        else
            h->stats.duplicates++;
        sl_event_release(ev);
    }
    if (i == 0)
        return;
    memmove(h->pending, h->pending + i, (h->npending - i) * sizeof(*h->pending));
    h->npending -= i;
}

static void add_pending(sl_hub_t *h, sl_event_t *ev)
{
    size_t lo = 0, hi = h->npending;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (h->pending[mid]->seq < ev->seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < h->npending && h->pending[lo]->seq == ev->seq) {
        h->stats.duplicates++;
        sl_event_release(ev);
        return;
    }
    if (h->npending == h->max_pending) {
        /* Full (the database is out of reach while live events flow): drop the newest; the tail
         * check will read them back from the database. */
        if (lo == h->npending) {
            h->stats.dropped_pending++;
            sl_event_release(ev);
            return;
        }
        sl_event_release(h->pending[--h->npending]);
        h->stats.dropped_pending++;
    }
    if (h->npending == h->cappending) {
        size_t cap = h->cappending ? h->cappending * 2 : 64;
        sl_event_t **p = realloc(h->pending, cap * sizeof(*p));
        if (p == NULL) {
            sl_event_release(ev);
            return;
        }
        h->pending = p;
        h->cappending = cap;
    }
    if (lo < h->npending)
        memmove(h->pending + lo + 1, h->pending + lo, (h->npending - lo) * sizeof(*h->pending));
    h->pending[lo] = ev;
    h->npending++;
}

static void start_backfill(sl_hub_t *h, int64_t to);

static void on_position(void *data, const PGresult *res, const char *err);

static void on_backfill(void *data, const PGresult *res, const char *err)
{
    sl_hub_t *h = data;
    char q[300];
    h->query = NULL;
    if (err != NULL) {
        SL_WARN("event=backfill_failed error=%s", sl_log_quote(q, sizeof(q), err));
        return; /* the next check retries */
    }
    int n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        sl_event_t *ev = sl_event_from_row(res, i);
        if (ev == NULL || ev->seq <= h->position) {
            if (ev != NULL)
                sl_event_release(ev);
            continue;
        }
        if (ev->seq != h->position + 1) {
            /* The database has no row for these positions (they should not exist: seq has no
             * gaps). Never stall the feed on it. */
            SL_WARN("event=feed_hole from=%lld to=%lld", (long long)h->position + 1, (long long)ev->seq - 1);
            h->stats.skipped += (uint64_t)(ev->seq - h->position - 1);
            h->position = ev->seq - 1;
            forget(h);
        }
        h->stats.backfilled++;
        deliver(h, ev);
        sl_event_release(ev);
    }
    drain_pending(h);
    int64_t target = h->npending > 0 ? h->pending[0]->seq - 1 : h->backfill_to;
    if (target <= h->position)
        return;
    if (n == BACKFILL_ROWS) { /* more to read */
        start_backfill(h, target);
        return;
    }
    /* No rows for the rest of the range. Either they do not exist (a hole: skip it, never stall
     * the feed on it) or the event that made us look is bogus (a seq past the database's, not
     * from the persister). Ask the database's counter before skipping. */
    h->hole_to = target;
    h->query = sl_pgpool_query(h->pg, SQL_POSITION, 0, NULL, on_position, h);
}

static void start_backfill(sl_hub_t *h, int64_t to)
{
    char from_s[24], to_s[24];
    if (h->query != NULL || !h->ready || to <= h->position)
        return;
    snprintf(from_s, sizeof(from_s), "%lld", (long long)h->position);
    snprintf(to_s, sizeof(to_s), "%lld", (long long)to);
    const char *params[] = {from_s, to_s};
    h->backfill_to = to;
    h->stats.backfills++;
    SL_DEBUG("event=backfill from=%s to=%s", from_s, to_s);
    h->query = sl_pgpool_query(h->pg, SQL_BACKFILL, 2, params, on_backfill, h);
}

static void on_position(void *data, const PGresult *res, const char *err)
{
    sl_hub_t *h = data;
    h->query = NULL;
    if (err != NULL || PQntuples(res) != 1)
        return; /* retried by the next check */
    int64_t db = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    if (!h->ready) {
        /* Start from the database's present: streams read older history from it directly. */
        h->ready = 1;
        h->position = db;
        SL_INFO("event=hub_ready position=%lld", (long long)db);
        drain_pending(h);
        if (h->npending > 0)
            start_backfill(h, h->pending[0]->seq - 1);
        return;
    }
    if (h->hole_to > 0) {
        int64_t to = h->hole_to < db ? h->hole_to : db;
        h->hole_to = 0;
        /* events past the database's counter did not come from a commit: drop them */
        while (h->npending > 0 && h->pending[h->npending - 1]->seq > db) {
            SL_WARN("event=bogus_live_event seq=%lld db_last_seq=%lld", (long long)h->pending[h->npending - 1]->seq,
                    (long long)db);
            sl_event_release(h->pending[--h->npending]);
            h->stats.malformed++;
        }
        if (to > h->position) {
            SL_WARN("event=feed_hole from=%lld to=%lld", (long long)h->position + 1, (long long)to);
            h->stats.skipped += (uint64_t)(to - h->position);
            h->position = to;
            forget(h);
        }
        drain_pending(h);
        if (h->npending > 0 && h->pending[0]->seq > h->position + 1)
            start_backfill(h, h->pending[0]->seq - 1);
        return;
    }
    if (db > h->position)
        start_backfill(h, h->npending > 0 && h->pending[0]->seq - 1 < db ? h->pending[0]->seq - 1 : db);
}

void sl_hub_check(sl_hub_t *h)
{
    if (h->query != NULL)
        return;
    if (h->ready && h->npending > 0 && h->pending[0]->seq > h->position + 1) {
        start_backfill(h, h->pending[0]->seq - 1);
        return;
    }
    h->query = sl_pgpool_query(h->pg, SQL_POSITION, 0, NULL, on_position, h);
}

static void on_check(h2o_timeout_entry_t *entry)
{
    sl_hub_t *h = H2O_STRUCT_FROM_MEMBER(sl_hub_t, check_entry, entry);
    sl_hub_check(h);
    h2o_timeout_link(h->loop, &h->check_timeout, &h->check_entry);
}

void sl_hub_feed(sl_hub_t *h, const char *json, size_t len)
{
    sl_event_t *ev = sl_event_from_json(json, len);
    h->stats.received++;
    if (ev == NULL) {
        h->stats.malformed++;
        return;
    }
    if (h->ready && ev->seq <= h->position) {
        h->stats.duplicates++;
        sl_event_release(ev);
        return;
    }
    if (h->ready && ev->seq == h->position + 1 && h->npending == 0) {
        deliver(h, ev);
        sl_event_release(ev);
        return;
    }
    add_pending(h, ev);
    if (h->ready) {
        drain_pending(h);
        if (h->npending > 0)
            start_backfill(h, h->pending[0]->seq - 1);
    }
}

sl_hub_t *sl_hub_create(h2o_loop_t *loop, sl_pgpool_t *pg, int check_ms, size_t max_pending, size_t recent,
                        size_t seam_max)
{
    sl_hub_t *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    if (recent > 0 && (h->ring = calloc(recent, sizeof(*h->ring))) == NULL) {
        free(h);
        return NULL;
    }
    h->ring_cap = recent;
    h->loop = loop;
    h->pg = pg;
    h->max_pending = max_pending;
    h->seam_max = seam_max > 0 ? seam_max : 1;
    h2o_linklist_init_anchor(&h->all);
    h2o_timeout_init(loop, &h->check_timeout, (uint64_t)check_ms);
    h->check_entry.cb = on_check;
    h2o_timeout_link(loop, &h->check_timeout, &h->check_entry);
    sl_hub_check(h);
    return h;
}

void sl_hub_destroy(sl_hub_t *h)
{
    if (h == NULL)
        return;
    h2o_timeout_unlink(&h->check_entry);
    h2o_timeout_dispose(h->loop, &h->check_timeout);
    if (h->query != NULL)
        sl_pgpool_cancel(h->query);
    for (size_t i = 0; i < h->npending; i++)
        sl_event_release(h->pending[i]);
    free(h->pending);
    forget(h);
    free(h->ring);
    for (int b = 0; b < NBUCKETS; b++) {
        while (h->buckets[b] != NULL) {
            struct chan_entry *e = h->buckets[b];
            h->buckets[b] = e->next;
            free(e);
        }
    }
    free(h);
}

int sl_hub_ready(const sl_hub_t *h)
{
    return h->ready;
}

int64_t sl_hub_position(const sl_hub_t *h)
{
    return h->position;
}

const sl_hub_stats_t *sl_hub_stats(const sl_hub_t *h)
{
    return &h->stats;
}

int sl_hub_subscribe(sl_hub_t *h, sl_sub_t *s)
{
    size_t n = s->all ? 1 : s->nchannels;
    s->hub = h;
    s->live = 0;
    s->overflowed = 0;
    s->start = h->position;
    s->cursor = 0;
    s->nbuffered = 0;
    if ((s->links = calloc(n, sizeof(*s->links))) == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        s->links[i].sub = s;
        if (s->all) {
            h2o_linklist_insert(&h->all, &s->links[i].link);
            continue;
        }
        struct chan_entry *e = find_entry(h, s->channels[i], 1);
        if (e == NULL) {
            s->all = 0;
            for (size_t j = 0; j < i; j++) {
                h2o_linklist_unlink(&s->links[j].link);
                ((struct chan_entry *)s->links[j].entry)->nsubs--;
            }
            free(s->links);
            s->links = NULL;
            return -1;
        }
        s->links[i].entry = e;
        e->nsubs++;
        h2o_linklist_insert(&e->subs, &s->links[i].link);
    }
    return 0;
}

int sl_sub_go_live(sl_sub_t *s, int64_t covered)
{
    s->cursor = covered;
    if (s->overflowed) {
        /* buffer anew while the owner reads what the dropped buffer held */
        s->overflowed = 0;
        if (s->cursor < s->start)
            s->cursor = s->start;
        s->start = s->hub->position;
        return 1;
    }
    s->live = 1;
    s->hub->stats.seam_buffered -= s->nbuffered;
    for (size_t i = 0; i < s->nbuffered; i++) {
        sl_event_t *ev = s->buffered[i];
        s->buffered[i] = NULL;
        if (ev->seq > s->cursor) {
            s->cursor = ev->seq;
            s->emit(s, ev);
        }
        sl_event_release(ev);
    }
    s->nbuffered = 0;
    free(s->buffered);
    s->buffered = NULL;
    s->capbuffered = 0;
    return 0;
}

void sl_hub_unsubscribe(sl_sub_t *s)
{
    if (s->links == NULL)
        return;
    size_t n = s->all ? 1 : s->nchannels;
    for (size_t i = 0; i < n; i++) {
        h2o_linklist_unlink(&s->links[i].link);
        struct chan_entry *e = s->links[i].entry;
        if (e != NULL && --e->nsubs == 0)
            remove_entry(s->hub, e);
    }
    free(s->links);
    s->links = NULL;
    drop_buffer(s);
}
