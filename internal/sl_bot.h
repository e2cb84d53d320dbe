/*
 * sl_bot: a load bot that posts realistic messages to the api at a steady, configurable rate and
 * obeys its back pressure. Three parts, each usable alone:
 *
 *   - a message generator (sl_botgen_*): POST bodies with varied channels, authors, lengths and
 *     languages (non-ASCII included), from a seeded PRNG, so a seed reproduces a run's messages;
 *   - a rate scheduler (sl_bot_sched_*): pure functions of a struct and the time given to them.
 *     Send slot i is due at a fixed point of an absolute timeline (anchor + i / rate), so slow
 *     answers never accumulate into a lower rate; a refusal pauses it and cuts the rate
 *     (multiplicative decrease), quiet time brings the rate back to the target (additive increase);
 *   - the run loop (sl_bot_run): libcurl's multi interface with keep-alive connections, at most
 *     `concurrency` requests in flight, retries of refused messages with their Idempotency-Key,
 *     and logfmt summaries (event=summary).
 *
 * Threading: everything runs on the caller's thread; nothing here is shared between threads.
 */
#ifndef SL_BOT_H
#define SL_BOT_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_message.h"

#define SL_BOT_MAX_CHANNELS 32
#define SL_BOT_MAX_AUTHORS 1000000
#define SL_BOT_BODY_MAX 4096 /* bytes: the longest body the generator makes fits */

/* ---- PRNG (splitmix64): small, fast, and the same sequence for the same seed everywhere ------ */

uint64_t sl_bot_rand(uint64_t *state);
/* Uniform in [0, 1). */
double sl_bot_rand01(uint64_t *state);

/* ---- message generator ---------------------------------------------------------------------- */

typedef struct sl_botgen {
    uint64_t rng;
    char channels[SL_BOT_MAX_CHANNELS][SL_CHANNEL_MAX + 1];
    size_t nchannels;
    long authors;
    uint64_t seq; /* messages made so far */
} sl_botgen_t;

/* channels is a comma-separated list (spaces around names ignored) of 1 to SL_BOT_MAX_CHANNELS
 * valid channel names; authors is 1..SL_BOT_MAX_AUTHORS. Returns 0, or -1 with a sentence naming
 * the problem in err (g is then unusable). Keeps no pointer to channels. */
int sl_botgen_init(sl_botgen_t *g, uint64_t seed, const char *channels, long authors, char *err, size_t errsize);

/* Writes the next POST /v1/messages body (compact JSON, UTF-8) into buf and returns its length,
 * or 0 when it does not fit (never with size >= SL_BOT_BODY_MAX). The body names a channel of the
 * list, one of `authors` authors, "source":"bot", and a text of 1 to SL_TEXT_MAX_CHARS code points
 * that ends in " #<n>" (n = 1, 2, ... per generator), so the texts of one generator are all
 * different. Channels and authors are skewed (a few busy ones, many quiet ones), as in real feeds.
 * The same seed and arguments give the same sequence of bodies. */
size_t sl_botgen_next(sl_botgen_t *g, char *buf, size_t size);

/* The name of author i (0 <= i < authors): deterministic, up to 64 code points, some non-ASCII. */
void sl_botgen_author(long i, char *buf, size_t size);

/* ---- rate scheduler (pure: all times are given, in microseconds of a monotonic clock) ------- */

typedef struct sl_bot_sched {
    double target;          /* messages per second asked for */
    double rate;            /* messages per second now: the target, or less after refusals */
    double min_rate;        /* the rate never drops below this (target / 16) */
    double decrease;        /* factor applied to the rate on a new refusal (0.5) */
    double recover_per_s;   /* rate regained per second without refusals (target / 10) */
    int64_t max_lag_us;     /* at most this much backlog is caught up after a stall (1 s) */
    int64_t anchor_us;      /* slot anchor_seq is due at anchor_us ... */
    uint64_t anchor_seq;    /* ... and slot anchor_seq + k at anchor_us + k / rate */
    uint64_t next_seq;      /* the next slot to be taken */
    int64_t paused_until_us; /* no slot is taken before this (back-off) */
    int64_t updated_us;     /* last recovery step */
} sl_bot_sched_t;

/* The first slot is due at start_us. target > 0. */
void sl_bot_sched_init(sl_bot_sched_t *s, double target, int64_t start_us);

/* When slot seq (>= anchor_seq) is due at the current rate. */
int64_t sl_bot_sched_due(const sl_bot_sched_t *s, uint64_t seq);

/* When the next send may go: the next slot's due time, but not before a pause ends. */
int64_t sl_bot_sched_next(const sl_bot_sched_t *s);

/* Takes the next slot at now_us (the caller sends now; call only when now_us >=
 * sl_bot_sched_next). A send that is late does not move later slots; when the backlog exceeds
 * max_lag_us (a stall, or an api slower than rate x concurrency), the timeline is moved so that
 * only max_lag_us of it is caught up. Returns the number of slots so given up (usually 0). */
uint64_t sl_bot_sched_take(sl_bot_sched_t *s, int64_t now_us);

/* A refusal (429/503/connection error) seen at now_us asking to wait wait_us: no slot before
 * now_us + wait_us (a pause only ever grows), and the timeline restarts at the end of the pause.
 * The first refusal of a pause cuts the rate by `decrease` (not below min_rate); refusals that
 * arrive while already paused (answers to requests sent before it) only extend the pause. */
void sl_bot_sched_refused(sl_bot_sched_t *s, int64_t now_us, int64_t wait_us);

/* Additive recovery: outside a pause the rate grows by recover_per_s per second elapsed since the
 * last call (or the end of the pause), up to the target. Call it from the loop as often as
 * convenient; the next slot's spacing follows the new rate. */
void sl_bot_sched_tick(sl_bot_sched_t *s, int64_t now_us);

/* ---- the run loop --------------------------------------------------------------------------- */

typedef struct sl_bot_conf {
    const char *api_url;    /* base URL of the api, e.g. http://127.0.0.1:8080 */
    const char *token;      /* bearer token sent with every post ("" or NULL: none) */
    double rate;            /* target messages per second, > 0 */
    double delay_s;         /* wait before the first message */
    const char *channels;   /* comma-separated channel names */
    long long authors;      /* distinct authors */
    long long concurrency;  /* requests in flight at most */
    long long count;        /* distinct messages to send, 0: no limit */
    double duration_s;      /* seconds of sending from the first message, 0: no limit */
    double summary_s;       /* seconds between periodic summaries */
    double timeout_s;       /* per request; a timeout counts as a connection error */
    uint64_t seed;          /* generator seed, 0: from the clock and the pid (logged) */
} sl_bot_conf_t;

typedef struct sl_bot_stats {
    uint64_t sent;      /* distinct messages sent at least once */
    uint64_t accepted;  /* 202 answers (each message is accepted at most once) */
    uint64_t refused;   /* 429, 503 (and other 5xx) answers and connection errors */
    uint64_t retried;   /* repeated sends of refused messages (requests = sent + retried) */
    uint64_t failed;    /* other answers (4xx): the message is dropped, not retried */
    uint64_t abandoned; /* messages neither accepted nor failed when the run ended */
    uint64_t skipped;   /* send slots given up because the run fell over 1 s behind its timeline */
    double elapsed_s;   /* from the first send slot to the end */
} sl_bot_stats_t;

/* Checks a configuration; returns 0, or -1 with a sentence naming the bad option in err. */
int sl_bot_conf_check(const sl_bot_conf_t *conf, char *err, size_t errsize);

/* Sends POST /v1/messages bodies from the generator on the scheduler's timeline, each with the
 * header Idempotency-Key: bot-<pid>-<start time>-<n>. Answers:
 *   2xx           accepted;
 *   429, 5xx, no answer (connect error, timeout)
 *                 refused: the message waits in a queue and is sent again, same body, same key,
 *                 once the pause is over: Retry-After (default 1 s, at most 3600 s) plus 0-25 %
 *                 jitter. While any message waits for its retry no new message is made, and the
 *                 pause holds back every send;
 *   other         failed: logged (event=message_failed), not retried.
 * Runs until conf->count messages are accepted or failed, conf->duration_s has passed (then the
 * requests in flight are answered, waiting retries are abandoned), or *stop becomes non-zero (a
 * signal: requests in flight get up to 2 s to be answered). Logs event=summary every summary_s
 * and a last one with final=true and reason=count|duration|signal. The caller has called
 * curl_global_init. Returns 0 (stats filled when non-NULL), or -1 when it could not start (bad
 * configuration, no memory; logged). */
int sl_bot_run(const sl_bot_conf_t *conf, volatile sig_atomic_t *stop, sl_bot_stats_t *stats);

#endif
