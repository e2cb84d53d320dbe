/*
 * sl_presence: who reads which channel, on this sse instance and on every other one. A channel's
 * occupancy is the number of subscriptions (streams and WebSocket subscriptions) reading it; its
 * presence set is the distinct users among them (a token's sub, with an optional name), each
 * counted once however many tabs it has open. Pure state and timers: the transport (the
 * sluice.presence exchange, through sl_livefeed) belongs to the owner, who plugs it in with the
 * send callback and sl_presence_receive.
 *
 * - Local registry: a subscription calls sl_presence_enter (user NULL: anonymous, counted in the
 *   occupancy only) and sl_presence_leave with the handle when it ends.
 * - Heartbeats with a TTL: every heartbeat_ms the instance sends a snapshot of its local state
 *   (per channel: the count and the users), in parts of at most part_bytes, through send (sooner,
 *   heartbeat_ms / 10 after the previous one at the earliest, when its user set changed, so that a
 *   join reaches the other instances quickly). The other instances keep the latest complete
 *   snapshot of each instance (named by a random boot id) and drop an instance whose snapshot is
 *   older than the TTL it announced (ttl_ms): an instance that was killed takes its readers away
 *   within the TTL, without anyone telling. There are no disconnect messages at all.
 * - Grace: a user whose last local subscription of a channel ends stays in the local set for
 *   grace_ms (and so in the snapshots sent meanwhile): a tab closed and another opened, here or on
 *   another instance, never shows as a leave.
 * - Aggregation: occupancy(channel) = this instance's count + the counts of the live instances'
 *   latest snapshots; presence(channel) = the union of this instance's set and theirs.
 * - Events: a join is a user entering the union of a channel, a leave one leaving it. They are
 *   handed to listeners at the end of the loop turn (sl_presence_run without a loop), never from
 *   inside a call of this API, so a listener may enter, leave, listen and unlisten.
 * - Limits: each instance lists at most max_users users per channel (the first to come; one
 *   freed by a leave goes to the next waiting), and keeps at most max_users per channel of each
 *   other instance's snapshot; past that the channel's set is marked truncated (the occupancy
 *   stays exact). The union holds at most max_users per live instance.
 *
 * Loop thread only. Without a loop (loop NULL: the unit tests), nothing happens by itself:
 * sl_presence_run sets the clock and does what is due.
 */
#ifndef SL_PRESENCE_H
#define SL_PRESENCE_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <stddef.h>
#include <stdint.h>

#define SL_PRESENCE_ID_MAX 256   /* bytes of a user id (longer: sl_presence_enter refuses it) */
#define SL_PRESENCE_NAME_MAX 256 /* bytes of a name kept (longer: cut at a character boundary) */
#define SL_PRESENCE_PART_BYTES 65536

typedef struct sl_presence sl_presence_t;
typedef struct sl_presence_entry sl_presence_entry_t;
typedef struct sl_presence_listener sl_presence_listener_t;

typedef struct sl_presence_user {
    const char *id;   /* non-empty UTF-8 */
    const char *name; /* NULL when the user has none */
} sl_presence_user_t;

typedef enum { SL_PRESENCE_JOIN = 0, SL_PRESENCE_LEAVE = 1 } sl_presence_event_type_t;

typedef struct sl_presence_event {
    sl_presence_event_type_t type;
    const char *channel;
    sl_presence_user_t user;
} sl_presence_event_t;

/* Valid during the call only. */
typedef void (*sl_presence_cb)(void *data, const sl_presence_event_t *ev);

/* What send answers. */
#define SL_PRESENCE_SENT 0
#define SL_PRESENCE_BUSY 1   /* no room now (the socket's buffer): the same part is offered again shortly */
#define SL_PRESENCE_DOWN (-1) /* no connection: the round is given up, the next heartbeat sends anew */

/* Sends one part of a snapshot (JSON, len bytes) to every instance, with a per-message
 * expiration of expiration_ms. Must not block, nor call back into this module. */
typedef int (*sl_presence_send_cb)(void *data, const char *body, size_t len, long long expiration_ms);

typedef struct sl_presence_conf {
    const char *instance;   /* this instance's name in snapshots and logs (copied) */
    long long heartbeat_ms; /* between two snapshots; 0: 2000 */
    long long ttl_ms;       /* an instance silent this long is dropped (sent in the snapshots); 0: 3 x heartbeat */
    long long grace_ms;     /* a user who left stays this long; 0: one heartbeat */
    long long max_users;    /* per channel and instance; 0: 1000 */
    size_t part_bytes;      /* largest part of a snapshot; 0: SL_PRESENCE_PART_BYTES (at least 16384) */
    sl_presence_send_cb send; /* NULL: nothing is sent (a lone instance) */
    void *send_data;
} sl_presence_conf_t;

typedef struct sl_presence_stats {
    /* now */
    uint64_t channels;   /* channels with a local subscription or a local user in grace */
    uint64_t occupancy;  /* local subscriptions */
    uint64_t users;      /* local (channel, user) pairs, those in grace included */
    uint64_t instances;  /* other instances alive */
    uint64_t truncated;  /* channels whose presence set (the union) is truncated */
    /* totals */
    uint64_t rounds_sent, parts_sent, bytes_sent;
    uint64_t rounds_failed;   /* given up: no connection, or still waiting for room at the next round */
    uint64_t rounds_received; /* complete snapshots of other instances applied */
    uint64_t parts_dropped;   /* malformed, out of order, or older than the snapshot held */
    uint64_t instances_expired;
    uint64_t joins, leaves;   /* events (changes of the unions) */
} sl_presence_stats_t;

/* loop: the loop whose thread calls everything (NULL: none, drive with sl_presence_run). Sends
 * its first snapshot at once (on the next turn). NULL on no memory or a conf out of range
 * (heartbeat_ms < 10, ttl_ms <= heartbeat_ms). */
sl_presence_t *sl_presence_create(h2o_loop_t *loop, const sl_presence_conf_t *conf);
/* Frees everything; handles and listeners still held become invalid; nothing more is sent. */
void sl_presence_destroy(sl_presence_t *p);

/* A subscription starts reading channel (a valid channel name). user NULL: anonymous. Returns a
 * handle for sl_presence_leave, or NULL (the subscription is not counted) on no memory or an id
 * that is empty or longer than SL_PRESENCE_ID_MAX. Strings are copied. */
sl_presence_entry_t *sl_presence_enter(sl_presence_t *p, const char *channel, const sl_presence_user_t *user);
/* The subscription ended: its count goes at once; its user, if that was its last local
 * subscription of the channel, after the grace period. e is invalid after this. NULL: no-op. */
void sl_presence_leave(sl_presence_entry_t *e);

/* cb(data, ev) for every join and leave of channel (NULL: of every channel), from the next
 * change on. Returns a handle for sl_presence_unlisten, or NULL on no memory. */
sl_presence_listener_t *sl_presence_listen(sl_presence_t *p, const char *channel, sl_presence_cb cb, void *data);
/* No more calls of its callback from now on (also from inside a callback). NULL: no-op. */
void sl_presence_unlisten(sl_presence_listener_t *l);

/* A part of a snapshot from the exchange (this instance's own are recognised and ignored). A part
 * that is malformed, out of order or older than what is held is dropped (and counted). */
void sl_presence_receive(sl_presence_t *p, const char *body, size_t len);
/* The transport (re)connected: a snapshot goes out on the next turn, not at the next heartbeat. */
void sl_presence_connected(sl_presence_t *p);
/* Sends a snapshot now, best effort (a part without room is dropped): for a stop, after the
 * streams ended, so that the others see the counts go at once. The users stay present there
 * until the TTL, so a client that reconnects to another instance within it shows no leave. */
void sl_presence_flush(sl_presence_t *p);
/* Without a loop: now_ms becomes the clock; does what is due (graces, expiries, a snapshot,
 * parts waiting for room) and hands pending events to listeners. With a loop: the same from
 * h2o_now (now_ms is ignored); the timers call it. */
void sl_presence_run(sl_presence_t *p, uint64_t now_ms);

/* Occupancy of channel summed over this instance and the live others. */
long long sl_presence_occupancy(const sl_presence_t *p, const char *channel);
/* Calls cb for each user of channel's presence set (the union, in no order); returns how many.
 * *truncated (may be NULL) says whether the set is incomplete (over max_users somewhere). The
 * user's strings are valid during the call only. */
size_t sl_presence_each_user(const sl_presence_t *p, const char *channel,
                             void (*cb)(void *data, const sl_presence_user_t *user), void *data, int *truncated);
/* Calls cb for each channel whose summed occupancy is above 0 (in no order). */
void sl_presence_each_channel(const sl_presence_t *p, void (*cb)(void *data, const char *channel, long long occupancy),
                              void *data);
long long sl_presence_max_users(const sl_presence_t *p);
const char *sl_presence_boot_id(const sl_presence_t *p);
/* The counters, the "now" ones brought up to date. */
const sl_presence_stats_t *sl_presence_stats(sl_presence_t *p);

#endif
