/*
 * sl_retention: how long the feed keeps messages, per channel, and the range it keeps.
 *
 * A policy (SLUICE_RETENTION) is a comma-separated list of pattern=limit rules, the first whose
 * pattern matches a channel deciding for it: "mastodon=7d,chat=10000,*=90d". A pattern is a
 * channel name in which '*' matches any run of characters and '?' one; a limit is an age
 * (<N>s, m, h, d or w: messages created longer ago go), a count (<N>: the newest N stay) or
 * "forever". A channel no rule matches is kept forever.
 *
 * The job (persister side, a thread of its own with its own database connection) deletes what a
 * policy lets go, channel by channel, oldest first (seq order), in small batches: each batch is
 * one short transaction that deletes at most `batch` messages of one channel, the update/delete
 * events of those messages, raises the channel's low-water mark in sluice_retention to the
 * highest seq it deleted, and takes the messages it deleted off the channel's count in
 * sluice_channels (GET /v1/channels). Writers never wait for it: the persister's inserts touch other rows, and
 * only an edit of a message being deleted waits for that one short transaction. seq is never
 * renumbered. A channel is trimmed as a prefix in seq order: an age rule stops at the first
 * message not old enough (a message ingested late with an old created_at goes when those before
 * it go), so everything of a channel at or below its mark is gone and everything above it stays.
 *
 * The low-water mark is what makes the retained range known to readers: a position below the mark
 * of any of a reader's channels has lost messages, and resumes and pulls from there answer an
 * explicit reset ("too_old"), never a silent gap. The database read of a resume or a pull carries
 * the marks in the same statement (sl_pull_query), so rows and mark are of one snapshot; readers
 * that answer from memory (sse's recent events) ask the view below, a copy refreshed every second,
 * which can only lag (a lower mark: memory still holds those messages, so there is no gap).
 *
 * Statements are SQL that PostgreSQL and CockroachDB both accept (the channel list is a recursive
 * CTE walking the (channel, seq) index, one probe per channel).
 */
#ifndef SL_RETENTION_H
#define SL_RETENTION_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <stdint.h>

#include "sl_buf.h"
#include "sl_message.h"
#include "sl_pgpool.h"

/* ---- the policy (pure; any thread) --------------------------------------------------------------- */

#define SL_RETENTION_RULES_MAX 64

typedef enum { SL_RETAIN_FOREVER = 0, SL_RETAIN_AGE, SL_RETAIN_COUNT } sl_retain_kind_t;

typedef struct sl_retention_rule {
    char pattern[SL_CHANNEL_MAX + 1];
    sl_retain_kind_t kind;
    long long value; /* AGE: microseconds; COUNT: messages kept */
} sl_retention_rule_t;

typedef struct sl_retention_policy {
    sl_retention_rule_t rules[SL_RETENTION_RULES_MAX];
    size_t n;
    int wildcards; /* some pattern has '*' or '?': the channels must be listed from the database */
} sl_retention_policy_t;

/* Parses spec ("" or NULL: no rule, everything kept). Returns 0, or -1 with err (a message naming
 * the bad rule) and *p unspecified. */
int sl_retention_parse(const char *spec, sl_retention_policy_t *p, char *err, size_t errlen);
/* 1 when some rule deletes anything (not every rule is "forever"). */
int sl_retention_deletes(const sl_retention_policy_t *p);
/* The first rule whose pattern matches channel, or NULL (kept forever). */
const sl_retention_rule_t *sl_retention_match(const sl_retention_policy_t *p, const char *channel);

/* ---- the job (persister; a thread of its own) ----------------------------------------------------- */

typedef struct sl_retention_conf {
    const char *db_url;
    sl_retention_policy_t policy;
    long long interval_ms;   /* from the end of one pass to the start of the next */
    long long batch;         /* messages deleted per transaction */
    long long pause_ms;      /* between two batches, so that the job never hogs the database */
    long long db_timeout_ms; /* statement_timeout of its session */
} sl_retention_conf_t;

typedef struct sl_retention sl_retention_t;

/* Starts the job's thread (it connects by itself, and again after any failure). NULL when the
 * policy deletes nothing (sl_retention_deletes: nothing to start), or on no memory / no thread. */
sl_retention_t *sl_retention_start(const sl_retention_conf_t *conf);
/* Asks the job to stop (it ends its batch, at most one statement's deadline later) and joins it.
 * NULL is fine. */
void sl_retention_stop(sl_retention_t *r);
/* Thread-safe: its counters in Prometheus text (sluice_persister_retention_*). NULL is fine. */
void sl_retention_render_metrics(sl_retention_t *r, sl_buf_t *out);

/* ---- the readers' view of the marks (a loop thread) ------------------------------------------------ */

/* The low-water mark of channels in a database read: the highest of theirs, 0 when none lost any.
 * sql is SELECT coalesce(max(low_seq), 0) FROM sluice_retention, restricted to $1 (a text[] of
 * channels) for SL_RETENTION_LOW_IN. */
#define SL_RETENTION_LOW_ALL "(SELECT coalesce(max(low_seq), 0) FROM sluice_retention)"
#define SL_RETENTION_LOW_IN(param) "(SELECT coalesce(max(low_seq), 0) FROM sluice_retention WHERE channel = ANY(" param "::text[]))"

typedef struct sl_retention_view sl_retention_view_t;

/* Reads sluice_retention through pg now and every refresh_ms (a failed read keeps the last copy). */
sl_retention_view_t *sl_retention_view_create(h2o_loop_t *loop, sl_pgpool_t *pg, int refresh_ms);
/* The mark of the channels (all, or channels[0..n)) as last read: every message of theirs at or
 * below it may be gone. 0 when none lost any (or nothing was read yet). NULL view: 0. */
int64_t sl_retention_view_low(const sl_retention_view_t *v, int all, const char (*channels)[SL_CHANNEL_MAX + 1],
                              size_t n);
/* The mark of every channel a reader reads (reads(ctx, channel) 1), for a reader of every channel
 * kept from some (private channels): a channel it may not read never resets it. NULL view: 0. */
int64_t sl_retention_view_low_where(const sl_retention_view_t *v, int (*reads)(const void *ctx, const char *channel),
                                    const void *ctx);
void sl_retention_view_destroy(sl_retention_view_t *v);

#endif
