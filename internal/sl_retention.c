/*
 * sl_retention: see sl_retention.h.
 */
#include "sl_retention.h"

#include <ctype.h>
#include <fnmatch.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sl_db.h"
#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_time.h"

/* ---- the policy -------------------------------------------------------------------------------------- */

static int pattern_valid(const char *s, size_t len)
{
    if (len == 0 || len > SL_CHANNEL_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '*' || c == '?'))
            return 0;
    }
    return 1;
}

/* "forever", "<N>" (a count) or "<N><unit>" (an age: s, m, h, d, w). */
static int limit_parse(const char *s, size_t len, sl_retention_rule_t *r)
{
    static const struct {
        char unit;
        long long us;
    } units[] = {{'s', 1000000LL}, {'m', 60000000LL}, {'h', 3600000000LL}, {'d', 86400000000LL}, {'w', 604800000000LL}};
    if (len == 7 && memcmp(s, "forever", 7) == 0) {
        r->kind = SL_RETAIN_FOREVER;
        return 0;
    }
    size_t digits = 0;
    long long v = 0;
    while (digits < len && isdigit((unsigned char)s[digits])) {
        if (v > 1000000000000LL)
            return -1; /* absurd: refuse rather than overflow */
        v = v * 10 + (s[digits++] - '0');
    }
    if (digits == 0 || v == 0)
        return -1;
    if (digits == len) {
        r->kind = SL_RETAIN_COUNT;
        r->value = v;
        return 0;
    }
    if (digits + 1 != len)
        return -1;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (s[digits] == units[i].unit && v <= INT64_MAX / units[i].us) {
            r->kind = SL_RETAIN_AGE;
            r->value = v * units[i].us;
            return 0;
        }
    }
    return -1;
}

int sl_retention_parse(const char *spec, sl_retention_policy_t *p, char *err, size_t errlen)
{
    memset(p, 0, sizeof(*p));
    const char *s = spec != NULL ? spec : "";
    while (*s != '\0') {
        const char *comma = strchr(s, ',');
        const char *end = comma != NULL ? comma : s + strlen(s);
        while (s < end && *s == ' ')
            s++;
        const char *e = end;
        while (e > s && e[-1] == ' ')
            e--;
        const char *eq = memchr(s, '=', (size_t)(e - s));
        if (eq == NULL || !pattern_valid(s, (size_t)(eq - s)) || p->n == SL_RETENTION_RULES_MAX ||
            limit_parse(eq + 1, (size_t)(e - eq - 1), &p->rules[p->n]) != 0) {
            snprintf(err, errlen,
                     "retention rule '%.*s': want pattern=limit, the pattern [a-z0-9_-] with * and ?, the limit"
                     " <N>s|m|h|d|w (an age), <N> (messages kept) or forever; at most %d rules",
                     (int)(e - s), s, SL_RETENTION_RULES_MAX);
            return -1;
        }
        memcpy(p->rules[p->n].pattern, s, (size_t)(eq - s));
        p->rules[p->n].pattern[eq - s] = '\0';
        p->wildcards |= strpbrk(p->rules[p->n].pattern, "*?") != NULL;
        p->n++;
        s = comma != NULL ? comma + 1 : end;
    }
    return 0;
}

int sl_retention_deletes(const sl_retention_policy_t *p)
{
    for (size_t i = 0; i < p->n; i++) {
        if (p->rules[i].kind != SL_RETAIN_FOREVER)
            return 1;
    }
    return 0;
}

const sl_retention_rule_t *sl_retention_match(const sl_retention_policy_t *p, const char *channel)
{
    for (size_t i = 0; i < p->n; i++) {
        if (fnmatch(p->rules[i].pattern, channel, 0) == 0)
            return &p->rules[i];
    }
    return NULL;
}

/* ---- the job ------------------------------------------------------------------------------------------ */

struct stats {
    uint64_t passes, batches, messages, events, failures;
    double last_pass_s;
    sl_histogram_t batch_seconds;
};

struct sl_retention {
    sl_retention_conf_t conf;
    sl_db_t db;
    pthread_t thread;
    pthread_mutex_t mu; /* guards quit and stats */
    pthread_cond_t cv;
    int quit;
    struct stats stats;
};

/* Every channel that has messages: one index probe per channel (a "loose index scan"), where
 * SELECT DISTINCT would read the whole (channel, seq) index. */
static const char SQL_CHANNELS[] =
    "WITH RECURSIVE c(channel) AS (SELECT min(channel) FROM messages UNION ALL"
    " SELECT (SELECT min(m.channel) FROM messages m WHERE m.channel > c.channel) FROM c WHERE c.channel IS NOT NULL)"
    " SELECT channel FROM c WHERE channel IS NOT NULL";
/* The oldest messages of a channel, and whether each is old enough to go. */
static const char SQL_OLDEST[] =
    "SELECT seq, created_at < $2::timestamptz FROM messages WHERE channel = $1 ORDER BY seq LIMIT $3";
/* The newest message of a channel beyond the count kept. */
static const char SQL_BEYOND_COUNT[] = "SELECT seq FROM messages WHERE channel = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2";
/* The end of the next batch at or below a seq. */
static const char SQL_BATCH_END[] = "SELECT max(seq) FROM (SELECT seq FROM messages WHERE channel = $1 AND seq <= $2"
                                    " ORDER BY seq LIMIT $3) AS t";
static const char SQL_DELETE_MESSAGES[] =
    "DELETE FROM messages WHERE channel = $1 AND seq <= $2 RETURNING id, seq, deleted_at IS NULL";
static const char SQL_DELETE_EVENTS[] = "DELETE FROM message_events WHERE message_id = ANY($1::uuid[]) RETURNING seq";
/* The channel's count of messages not deleted (sluice_channels, GET /v1/channels), last in the
 * transaction: the persister's batches update the same row, so it is held as briefly as can be. */
static const char SQL_CHANNEL_COUNT[] = "UPDATE sluice_channels SET messages = messages - $2 WHERE channel = $1";
static const char SQL_RAISE_MARK[] =
    "INSERT INTO sluice_retention (channel, low_seq, updated_at) VALUES ($1, $2, now()) ON CONFLICT (channel)"
    " DO UPDATE SET low_seq = greatest(sluice_retention.low_seq, excluded.low_seq), updated_at = now()";

static int quitting(sl_retention_t *r)
{
    pthread_mutex_lock(&r->mu);
    int q = r->quit;
    pthread_mutex_unlock(&r->mu);
    return q;
}

/* Sleeps ms or until asked to stop; returns 1 when asked. */
static int rest(sl_retention_t *r, long long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&r->mu);
    while (!r->quit && pthread_cond_timedwait(&r->cv, &r->mu, &ts) == 0) {
    }
    int q = r->quit;
    pthread_mutex_unlock(&r->mu);
    return q;
}

/* One statement; on failure logs and returns the failure (the caller gives the connection up). */
static int run(sl_retention_t *r, const char *sql, int n, const char *const *params, PGresult **out,
               const char **state)
{
    char err[512], q[600];
    PGresult *res = NULL;
    int rc = sl_db_exec(&r->db, sql, n, params, &res, err, sizeof(err));
    *state = "";
    if (rc == SL_DB_OK) {
        if (out != NULL)
            *out = res;
        else
            PQclear(res);
        return rc;
    }
    static __thread char st[8];
    snprintf(st, sizeof(st), "%s", sl_db_sqlstate(res));
    *state = st;
    PQclear(res);
    if (!sl_db_is_retryable(st))
        SL_WARN("event=retention_failed error=%s", sl_log_quote(q, sizeof(q), err));
    return rc;
}

/* Deletes the messages of channel at or below bound, their events, and raises the channel's mark,
 * in one transaction (tried again on a serialization failure). *deleted: messages deleted. */
static int delete_batch(sl_retention_t *r, const char *channel, const char *bound, long long *deleted)
{
    const char *state;
    *deleted = 0;
    for (int attempt = 0;; attempt++) {
        PGresult *res = NULL;
        sl_buf_t ids = SL_BUF_INIT;
        long long mark = 0, events = 0, n = 0, live = 0;
        int64_t t0 = sl_time_mono_us();
        int rc = run(r, "BEGIN", 0, NULL, NULL, &state);
        const char *p2[] = {channel, bound};
        if (rc == SL_DB_OK && (rc = run(r, SQL_DELETE_MESSAGES, 2, p2, &res, &state)) == SL_DB_OK) {
            n = PQntuples(res);
            sl_buf_appends(&ids, "{");
            for (int i = 0; i < n; i++) {
                long long seq = strtoll(PQgetvalue(res, i, 1), NULL, 10);
                sl_buf_appendf(&ids, "%s%s", i ? "," : "", PQgetvalue(res, i, 0));
                mark = seq > mark ? seq : mark;
                live += PQgetvalue(res, i, 2)[0] == 't';
            }
            sl_buf_appends(&ids, "}");
            PQclear(res);
            res = NULL;
        }
        if (rc == SL_DB_OK && n > 0) {
            const char *p1[] = {ids.data};
            if ((rc = run(r, SQL_DELETE_EVENTS, 1, p1, &res, &state)) == SL_DB_OK) {
                events = PQntuples(res);
                for (int i = 0; i < events; i++) {
                    long long seq = strtoll(PQgetvalue(res, i, 0), NULL, 10);
                    mark = seq > mark ? seq : mark;
                }
                PQclear(res);
                res = NULL;
            }
        }
        sl_buf_free(&ids);
        if (rc == SL_DB_OK && n > 0) {
            char m[24], l[24];
            snprintf(m, sizeof(m), "%lld", mark);
            snprintf(l, sizeof(l), "%lld", live);
            const char *p[] = {channel, m}, *pl[] = {channel, l};
            rc = run(r, SQL_RAISE_MARK, 2, p, NULL, &state);
            if (rc == SL_DB_OK && live > 0)
                rc = run(r, SQL_CHANNEL_COUNT, 2, pl, NULL, &state);
        }
        if (rc == SL_DB_OK)
            rc = run(r, "COMMIT", 0, NULL, NULL, &state);
        if (rc == SL_DB_OK) {
            double secs = (double)(sl_time_mono_us() - t0) / 1e6;
            *deleted = n;
            pthread_mutex_lock(&r->mu);
            r->stats.batches += n > 0;
            r->stats.messages += (uint64_t)n;
            r->stats.events += (uint64_t)events;
            if (n > 0)
                sl_histogram_observe(&r->stats.batch_seconds, secs);
            pthread_mutex_unlock(&r->mu);
            if (n > 0)
                SL_DEBUG("event=retention_batch channel=%s messages=%lld events=%lld low_seq=%lld ms=%.1f", channel, n,
                         events, mark, secs * 1000);
            return SL_DB_OK;
        }
        /* another writer touched the same rows (an edit of a message going, or a second persister's
         * job): the transaction again, a few times */
        if (!sl_db_is_retryable(state) || r->db.conn == NULL || attempt >= 5)
            return rc;
        char e[256];
        sl_db_exec(&r->db, "ROLLBACK", 0, NULL, NULL, e, sizeof(e));
        rest(r, 10L << attempt);
    }
}

/* The end of the next batch of channel under rule (as text in bound), or 0 when nothing goes. */
static int batch_end(sl_retention_t *r, const char *channel, const sl_retention_rule_t *rule, const char *cutoff,
                     const char *beyond, char bound[24], int *found)
{
    const char *state;
    PGresult *res = NULL;
    char lim[24];
    int rc;
    *found = 0;
    snprintf(lim, sizeof(lim), "%lld", r->conf.batch);
    if (rule->kind == SL_RETAIN_AGE) {
        const char *p[] = {channel, cutoff, lim};
        if ((rc = run(r, SQL_OLDEST, 3, p, &res, &state)) != SL_DB_OK)
            return rc;
        /* the prefix old enough to go: it stops at the first message that stays */
        for (int i = 0; i < PQntuples(res) && PQgetvalue(res, i, 1)[0] == 't'; i++) {
            snprintf(bound, 24, "%s", PQgetvalue(res, i, 0));
            *found = 1;
        }
    } else {
        const char *p[] = {channel, beyond, lim};
        if ((rc = run(r, SQL_BATCH_END, 3, p, &res, &state)) != SL_DB_OK)
            return rc;
        if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
            snprintf(bound, 24, "%s", PQgetvalue(res, 0, 0));
            *found = 1;
        }
    }
    PQclear(res);
    return SL_DB_OK;
}

/* Deletes what the rule lets go of channel, a batch at a time. */
static int trim(sl_retention_t *r, const char *channel, const sl_retention_rule_t *rule)
{
    char cutoff[SL_TIME_RFC3339_LEN] = "", beyond[24] = "", bound[24];
    const char *state;
    int rc, found;
    if (rule->kind == SL_RETAIN_AGE) {
        sl_time_format(sl_time_now_us() - rule->value, cutoff);
    } else {
        PGresult *res = NULL;
        char keep[24];
        snprintf(keep, sizeof(keep), "%lld", rule->value);
        const char *p[] = {channel, keep};
        if ((rc = run(r, SQL_BEYOND_COUNT, 2, p, &res, &state)) != SL_DB_OK)
            return rc;
        found = PQntuples(res) == 1;
        if (found)
            snprintf(beyond, sizeof(beyond), "%s", PQgetvalue(res, 0, 0));
        PQclear(res);
        if (!found)
            return SL_DB_OK;
    }
    for (;;) {
        long long deleted;
        if (quitting(r))
            return SL_DB_OK;
        if ((rc = batch_end(r, channel, rule, cutoff, beyond, bound, &found)) != SL_DB_OK || !found)
            return rc;
        if ((rc = delete_batch(r, channel, bound, &deleted)) != SL_DB_OK)
            return rc;
        if (r->conf.pause_ms > 0 && rest(r, r->conf.pause_ms))
            return SL_DB_OK;
    }
}

/* One pass over every channel a rule may delete from. */
static int pass(sl_retention_t *r)
{
    const sl_retention_policy_t *p = &r->conf.policy;
    const char *state;
    PGresult *res = NULL;
    int rc = SL_DB_OK;
    if (!p->wildcards) { /* the rules name the channels */
        for (size_t i = 0; i < p->n && rc == SL_DB_OK && !quitting(r); i++) {
            const sl_retention_rule_t *rule = sl_retention_match(p, p->rules[i].pattern);
            if (rule == &p->rules[i] && rule->kind != SL_RETAIN_FOREVER)
                rc = trim(r, rule->pattern, rule);
        }
        return rc;
    }
    if ((rc = run(r, SQL_CHANNELS, 0, NULL, &res, &state)) != SL_DB_OK)
        return rc;
    for (int i = 0; i < PQntuples(res) && rc == SL_DB_OK && !quitting(r); i++) {
        const char *channel = PQgetvalue(res, i, 0);
        const sl_retention_rule_t *rule = sl_retention_match(p, channel);
        if (rule != NULL && rule->kind != SL_RETAIN_FOREVER)
            rc = trim(r, channel, rule);
    }
    PQclear(res);
    return rc;
}

static void *job_main(void *arg)
{
    sl_retention_t *r = arg;
    char err[512], q[600];
    while (!quitting(r)) {
        if (r->db.conn == NULL) {
            /* (migrating first: at a first start the job may come before the persister's writer) */
            if (sl_db_connect(&r->db, r->conf.db_url, err, sizeof(err)) != SL_DB_OK ||
                sl_db_migrate(&r->db, err, sizeof(err)) != SL_DB_OK ||
                sl_db_set_timeout(&r->db, (int)r->conf.db_timeout_ms, err, sizeof(err)) != SL_DB_OK) {
                SL_WARN("event=retention_db_connect_failed error=%s", sl_log_quote(q, sizeof(q), err));
                sl_db_close(&r->db);
                pthread_mutex_lock(&r->mu);
                r->stats.failures++;
                pthread_mutex_unlock(&r->mu);
                if (rest(r, r->conf.interval_ms < 2000 ? r->conf.interval_ms : 2000))
                    break;
                continue;
            }
        }
        int64_t t0 = sl_time_mono_us();
        int rc = pass(r);
        double secs = (double)(sl_time_mono_us() - t0) / 1e6;
        pthread_mutex_lock(&r->mu);
        if (rc == SL_DB_OK) {
            r->stats.passes++;
            r->stats.last_pass_s = secs;
        } else {
            r->stats.failures++;
        }
        pthread_mutex_unlock(&r->mu);
        if (rc != SL_DB_OK)
            sl_db_close(&r->db); /* a transaction may be open: the server rolls it back */
        if (rest(r, r->conf.interval_ms))
            break;
    }
    sl_db_close(&r->db);
    return NULL;
}

sl_retention_t *sl_retention_start(const sl_retention_conf_t *conf)
{
    if (!sl_retention_deletes(&conf->policy))
        return NULL;
    sl_retention_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->conf = *conf;
    if (r->conf.batch < 1)
        r->conf.batch = 1;
    sl_histogram_init(&r->stats.batch_seconds, sl_latency_bounds, sl_latency_nbounds);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&r->mu, NULL);
    if (pthread_create(&r->thread, NULL, job_main, r) != 0) {
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        free(r);
        return NULL;
    }
    SL_INFO("event=retention_started rules=%zu interval_ms=%lld batch=%lld pause_ms=%lld", conf->policy.n,
            conf->interval_ms, conf->batch, conf->pause_ms);
    return r;
}

void sl_retention_stop(sl_retention_t *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->mu);
    r->quit = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

void sl_retention_render_metrics(sl_retention_t *r, sl_buf_t *b)
{
    struct stats s;
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->mu);
    s = r->stats;
    pthread_mutex_unlock(&r->mu);
    sl_metrics_header(b, "sluice_persister_retention_deleted_total", "counter",
                      "Rows the retention job deleted: messages, and the update/delete events of those messages.");
    sl_metrics_sample(b, "sluice_persister_retention_deleted_total", "table=\"messages\"", (double)s.messages);
    sl_metrics_sample(b, "sluice_persister_retention_deleted_total", "table=\"events\"", (double)s.events);
    sl_metrics_one(b, "sluice_persister_retention_batches_total", "counter",
                   "Retention transactions that deleted something (at most SLUICE_RETENTION_BATCH messages each).",
                   (double)s.batches);
    sl_metrics_histogram(b, "sluice_persister_retention_batch_seconds", "Time of one retention transaction.",
                         &s.batch_seconds);
    sl_metrics_one(b, "sluice_persister_retention_passes_total", "counter",
                   "Passes of the retention job over the channels.", (double)s.passes);
    sl_metrics_one(b, "sluice_persister_retention_last_pass_seconds", "gauge",
                   "How long the last complete pass took.", s.last_pass_s);
    sl_metrics_one(b, "sluice_persister_retention_failures_total", "counter",
                   "Retention passes or connections that failed (tried again at the next pass).", (double)s.failures);
}

/* ---- the readers' view --------------------------------------------------------------------------------- */

struct lowmark {
    char channel[SL_CHANNEL_MAX + 1];
    int64_t low;
};

struct sl_retention_view {
    h2o_loop_t *loop;
    sl_pgpool_t *pg;
    h2o_timeout_t timeout;
    h2o_timeout_entry_t entry;
    sl_pgquery_t *query;
    struct lowmark *marks; /* sorted by channel (strcmp) */
    size_t n;
    int64_t max;
};

static int cmp_mark(const void *a, const void *b)
{
    return strcmp(((const struct lowmark *)a)->channel, ((const struct lowmark *)b)->channel);
}

static void on_marks(void *data, const PGresult *res, const char *err)
{
    sl_retention_view_t *v = data;
    v->query = NULL;
    if (err != NULL)
        return; /* keep the last copy (before migration 8, or the database away) */
    size_t n = (size_t)PQntuples(res);
    struct lowmark *m = calloc(n + 1, sizeof(*m));
    if (m == NULL)
        return;
    int64_t max = 0;
    for (size_t i = 0; i < n; i++) {
        snprintf(m[i].channel, sizeof(m[i].channel), "%s", PQgetvalue(res, (int)i, 0));
        m[i].low = strtoll(PQgetvalue(res, (int)i, 1), NULL, 10);
        max = m[i].low > max ? m[i].low : max;
    }
    qsort(m, n, sizeof(*m), cmp_mark);
    free(v->marks);
    v->marks = m;
    v->n = n;
    v->max = max;
}

static void refresh(sl_retention_view_t *v)
{
    if (v->query == NULL)
        v->query = sl_pgpool_query(v->pg, "SELECT channel, low_seq FROM sluice_retention", 0, NULL, on_marks, v);
}

static void on_refresh(h2o_timeout_entry_t *entry)
{
    sl_retention_view_t *v = H2O_STRUCT_FROM_MEMBER(sl_retention_view_t, entry, entry);
    refresh(v);
    h2o_timeout_link(v->loop, &v->timeout, &v->entry);
}

sl_retention_view_t *sl_retention_view_create(h2o_loop_t *loop, sl_pgpool_t *pg, int refresh_ms)
{
    sl_retention_view_t *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return NULL;
    v->loop = loop;
    v->pg = pg;
    h2o_timeout_init(loop, &v->timeout, (uint64_t)(refresh_ms > 0 ? refresh_ms : 1000));
    v->entry.cb = on_refresh;
    h2o_timeout_link(loop, &v->timeout, &v->entry);
    refresh(v);
    return v;
}

int64_t sl_retention_view_low(const sl_retention_view_t *v, int all, const char (*channels)[SL_CHANNEL_MAX + 1],
                              size_t n)
{
    int64_t low = 0;
    if (v == NULL || v->n == 0)
        return 0;
    if (all)
        return v->max;
    for (size_t i = 0; i < n; i++) {
        struct lowmark key;
        snprintf(key.channel, sizeof(key.channel), "%s", channels[i]);
        const struct lowmark *m = bsearch(&key, v->marks, v->n, sizeof(*v->marks), cmp_mark);
        if (m != NULL && m->low > low)
            low = m->low;
    }
    return low;
}

int64_t sl_retention_view_low_where(const sl_retention_view_t *v, int (*reads)(const void *ctx, const char *channel),
                                    const void *ctx)
{
    int64_t low = 0;
    for (size_t i = 0; v != NULL && i < v->n; i++) {
        if (v->marks[i].low > low && reads(ctx, v->marks[i].channel))
            low = v->marks[i].low;
    }
    return low;
}

void sl_retention_view_destroy(sl_retention_view_t *v)
{
    if (v == NULL)
        return;
    if (v->query != NULL)
        sl_pgpool_cancel(v->query);
    h2o_timeout_unlink(&v->entry);
    h2o_timeout_dispose(v->loop, &v->timeout);
    free(v->marks);
    free(v);
}
