/*
 * sl_db: schema, migrations and the persister's batch insert; see sl_db.h.
 */
#include "sl_db.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "sl_buf.h"
#include "sl_log.h"
#include "sl_meta.h"
#include "sl_time.h"
#include "sl_uuid.h"

struct migration {
    int version;
    const char *name;
    const char *common[8];   /* run on both servers */
    const char *postgres[8]; /* then these on PostgreSQL */
    const char *cockroach[8];/* or these on CockroachDB */
};

/* Every statement is idempotent (IF NOT EXISTS, ON CONFLICT), so a migration interrupted half-way,
 * or run by two processes at once, ends in the same state. Never edit a released migration: add one. */
static const struct migration migrations[] = {
    {1,
     "feed",
     {"CREATE TABLE IF NOT EXISTS sluice_feed (id INT8 PRIMARY KEY, last_seq INT8 NOT NULL)",
      "INSERT INTO sluice_feed (id, last_seq) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
      "CREATE TABLE IF NOT EXISTS idempotency_keys (author TEXT NOT NULL, key TEXT NOT NULL, message_id UUID NOT NULL,"
      " channel VARCHAR(64) NOT NULL, created_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (author, key))",
      NULL},
     {"CREATE TABLE IF NOT EXISTS messages (id UUID PRIMARY KEY, seq INT8 NOT NULL, channel VARCHAR(64) NOT NULL,"
      " author TEXT NOT NULL, body TEXT NOT NULL, source VARCHAR(16) NOT NULL, created_at TIMESTAMPTZ NOT NULL,"
      " stored_at TIMESTAMPTZ NOT NULL DEFAULT now())",
      "CREATE UNIQUE INDEX IF NOT EXISTS messages_seq_idx ON messages (seq)",
      "CREATE INDEX IF NOT EXISTS messages_channel_seq_idx ON messages (channel, seq)", NULL},
     /* UUIDv7 ids and seq both grow monotonically: hash-shard them so that inserts spread over
      * ranges instead of all landing on the last one. */
     {"CREATE TABLE IF NOT EXISTS messages (id UUID NOT NULL, seq INT8 NOT NULL, channel VARCHAR(64) NOT NULL,"
      " author TEXT NOT NULL, body TEXT NOT NULL, source VARCHAR(16) NOT NULL, created_at TIMESTAMPTZ NOT NULL,"
      " stored_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (id) USING HASH)",
      "CREATE UNIQUE INDEX IF NOT EXISTS messages_seq_idx ON messages (seq) USING HASH",
      "CREATE INDEX IF NOT EXISTS messages_channel_seq_idx ON messages (channel, seq)", NULL}},
    /* Edits and deletions of messages (Mastodon ingest): each is an event with its own seq from
     * sluice_feed, applied to the message row in the transaction that numbers it. */
    {2,
     "events",
     {"ALTER TABLE messages ADD COLUMN IF NOT EXISTS url TEXT",
      "ALTER TABLE messages ADD COLUMN IF NOT EXISTS edited_at TIMESTAMPTZ",
      "ALTER TABLE messages ADD COLUMN IF NOT EXISTS deleted_at TIMESTAMPTZ", NULL},
     {"CREATE TABLE IF NOT EXISTS message_events (seq INT8 PRIMARY KEY, event_id UUID NOT NULL UNIQUE,"
      " message_id UUID NOT NULL, channel VARCHAR(64) NOT NULL, type VARCHAR(16) NOT NULL, body TEXT,"
      " created_at TIMESTAMPTZ NOT NULL)",
      "CREATE INDEX IF NOT EXISTS message_events_message_idx ON message_events (message_id)",
      "CREATE INDEX IF NOT EXISTS message_events_channel_seq_idx ON message_events (channel, seq)", NULL},
     {"CREATE TABLE IF NOT EXISTS message_events (seq INT8 NOT NULL, event_id UUID NOT NULL UNIQUE,"
      " message_id UUID NOT NULL, channel VARCHAR(64) NOT NULL, type VARCHAR(16) NOT NULL, body TEXT,"
      " created_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (seq) USING HASH)",
      "CREATE INDEX IF NOT EXISTS message_events_message_idx ON message_events (message_id)",
      "CREATE INDEX IF NOT EXISTS message_events_channel_seq_idx ON message_events (channel, seq)", NULL}},
    /* An idempotent retry of a post the broker already confirmed answers at once, without a
     * second publish, even while the first is still queued. */
    {3,
     "idempotency-accepted",
     {"ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS accepted_at TIMESTAMPTZ", NULL},
     {NULL},
     {NULL}},
    /* CockroachDB before PR #171179 does not use a non-covering hash-sharded index for an ORDER BY
     * seq scan: the history of all channels read the whole table. seq needs no sharding (every
     * write already waits on the sluice_feed row), so a plain index replaces it, made before the old
     * one goes so that no moment is without one. */
    {4,
     "seq-index-plain",
     {NULL},
     {NULL},
     {"CREATE UNIQUE INDEX IF NOT EXISTS messages_seq_plain_idx ON messages (seq)",
      "DROP INDEX IF EXISTS messages@messages_seq_idx", NULL}},
    /* Per channel: the last seq (message or event) and the messages not deleted, kept by the
     * persister in each batch's transaction, so that sse's GET /v1/channels reads one row per
     * channel instead of counting messages. The backfill runs with sluice_feed locked, as a batch
     * does: batches committed before it are counted by it, the ones after by themselves (a
     * persister older than this migration, still running, counts nothing: run the backfill again,
     * sl_db.h). Channel order is byte order on both servers (PostgreSQL: COLLATE "C";
     * CockroachDB's default), which is what sse merges the live channels in by. */
    {5,
     "channels",
     {NULL},
     {"CREATE TABLE IF NOT EXISTS sluice_channels (channel VARCHAR(64) COLLATE \"C\" PRIMARY KEY,"
      " last_seq INT8 NOT NULL, messages INT8 NOT NULL)",
      "BEGIN", SL_DB_CHANNELS_LOCK, SL_DB_CHANNELS_BACKFILL, "COMMIT", NULL},
     {"CREATE TABLE IF NOT EXISTS sluice_channels (channel VARCHAR(64) PRIMARY KEY, last_seq INT8 NOT NULL,"
      " messages INT8 NOT NULL)",
      "BEGIN", SL_DB_CHANNELS_LOCK, SL_DB_CHANNELS_BACKFILL, "COMMIT", NULL}},
    /* What readers of a Mastodon wall expect beside the text (sl_meta.h): display name, avatar,
     * content warning, media, boosts. JSONB, nullable (messages from the api have none), on both
     * servers; the client always writes it as text cast to jsonb (no JSONB[] parameter, which
     * older CockroachDB versions lack). */
    {6,
     "message-meta",
     {"ALTER TABLE messages ADD COLUMN IF NOT EXISTS meta JSONB", NULL},
     {NULL},
     {NULL}},
    /* Edits, deletes and batches from the api. request_keys: the Idempotency-Keys of PATCH, DELETE
     * and batch requests (scope "message:<id>" or "author:<name>"; ids: the ids answered,
     * space-separated). message_events_ignored: an edit or delete that reached the persister after
     * its message's delete was recorded (a race the api cannot see): kept here, with no seq, never
     * applied nor published, so that nothing accepted disappears without a trace. */
    {7,
     "edits",
     {"CREATE TABLE IF NOT EXISTS request_keys (scope TEXT NOT NULL, key TEXT NOT NULL, request VARCHAR(16) NOT NULL,"
      " fingerprint TEXT NOT NULL, ids TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL, accepted_at TIMESTAMPTZ,"
      " PRIMARY KEY (scope, key))",
      "CREATE TABLE IF NOT EXISTS message_events_ignored (event_id UUID PRIMARY KEY, message_id UUID NOT NULL,"
      " channel VARCHAR(64) NOT NULL, type VARCHAR(16) NOT NULL, body TEXT NOT NULL, reason TEXT NOT NULL,"
      " created_at TIMESTAMPTZ NOT NULL, ignored_at TIMESTAMPTZ NOT NULL DEFAULT now())",
      NULL},
     {NULL},
     {NULL}},
    /* Retention (sl_retention.h): per channel, the highest seq its job deleted (messages and their
     * events), written in the transaction that deletes, read by every resume and pull. */
    {8,
     "retention",
     {"CREATE TABLE IF NOT EXISTS sluice_retention (channel VARCHAR(64) PRIMARY KEY, low_seq INT8 NOT NULL,"
      " updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
      NULL},
     {NULL},
     {NULL}},
};

const char *sl_db_sqlstate(const PGresult *res)
{
    const char *s = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return s != NULL ? s : "";
}

int sl_db_is_retryable(const char *sqlstate)
{
    return strcmp(sqlstate, "40001") == 0 || strcmp(sqlstate, "40P01") == 0;
}

int sl_db_is_connection_error(PGconn *conn, const char *sqlstate)
{
    return conn == NULL || PQstatus(conn) != CONNECTION_OK || strncmp(sqlstate, "08", 2) == 0 ||
           strcmp(sqlstate, "57P01") == 0 /* admin shutdown */ || strcmp(sqlstate, "57P02") == 0 /* crash */ ||
           strcmp(sqlstate, "57P03") == 0 /* cannot connect now */;
}

int sl_db_is_poison(const char *sqlstate)
{
    return strncmp(sqlstate, "22", 2) == 0 /* data exception */ ||
           strncmp(sqlstate, "23", 2) == 0 /* integrity constraint violation */;
}

sl_db_kind_t sl_db_kind_of(const char *version)
{
    return version != NULL && strstr(version, "CockroachDB") != NULL ? SL_DB_COCKROACH : SL_DB_POSTGRES;
}

const char *sl_db_kind_name(sl_db_kind_t kind)
{
    return kind == SL_DB_COCKROACH ? "cockroachdb" : "postgresql";
}

/* Takes the result of a statement named `what`: SL_DB_OK, or SL_DB_ERROR (poison) / SL_DB_RETRY
 * with err. *out gets the result when asked (the caller clears it; on failure it reads the
 * SQLSTATE), else it is cleared here. */
static int take_result(sl_db_t *db, PGresult *res, const char *what, PGresult **out, char *err, size_t errlen)
{
    ExecStatusType st = PQresultStatus(res);
    int ret = SL_DB_OK;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        const char *state = sl_db_sqlstate(res);
        snprintf(err, errlen, "%s [%s] in: %.80s", res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(db->conn),
                 *state ? state : "none", what);
        ret = res != NULL && sl_db_is_poison(state) && !sl_db_is_connection_error(db->conn, state) ? SL_DB_ERROR
                                                                                                    : SL_DB_RETRY;
    }
    if (out != NULL)
        *out = res;
    else
        PQclear(res);
    return ret;
}

/* Waits until db's socket is ready for `events` or the monotonic deadline (us) passes: 1 ready,
 * 0 timed out, -1 failed. */
static int wait_socket(PGconn *conn, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - sl_time_mono_us();
        if (left <= 0)
            return 0;
        struct pollfd pfd = {PQsocket(conn), events, 0};
        int r = poll(&pfd, 1, (int)((left + 999) / 1000));
        if (r > 0)
            return 1;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

/* Finishes a statement sent on db->conn (sent: what the PQsend* call returned): flushes it, then
 * collects its result (the first failed one, if any) within db->timeout_ms, and takes it as
 * take_result does. Past the deadline, or when the connection breaks, the connection is closed
 * (its statement's outcome is unknown) and the answer is SL_DB_RETRY. */
static int finish(sl_db_t *db, int sent, const char *what, PGresult **out, char *err, size_t errlen)
{
    PGconn *c = db->conn;
    PGresult *keep = NULL;
    int64_t deadline = sl_time_mono_us() + (int64_t)(db->timeout_ms > 0 ? db->timeout_ms : SL_DB_TIMEOUT_MS_DEFAULT) * 1000;
    int w = 1;
    if (out != NULL)
        *out = NULL;
    if (!sent)
        goto Lost;
    for (int f; (f = PQflush(c)) != 0;) {
        if (f < 0 || (w = wait_socket(c, POLLOUT | POLLIN, deadline)) <= 0 || !PQconsumeInput(c))
            goto Lost;
    }
    for (;;) {
        while (PQisBusy(c)) {
            if ((w = wait_socket(c, POLLIN, deadline)) <= 0 || !PQconsumeInput(c))
                goto Lost;
        }
        PGresult *r = PQgetResult(c);
        if (r == NULL)
            break;
        ExecStatusType st = PQresultStatus(keep);
        if (keep == NULL || st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
            PQclear(keep);
            keep = r;
        } else {
            PQclear(r);
        }
    }
    return take_result(db, keep, what, out, err, errlen);
Lost:
    PQclear(keep);
    if (w == 0)
        snprintf(err, errlen, "no answer within %d ms [timeout] in: %.80s", db->timeout_ms, what);
    else
        snprintf(err, errlen, "%s [lost] in: %.80s", PQerrorMessage(c), what);
    sl_db_close(db);
    return SL_DB_RETRY;
}

static int not_connected(const char *what, PGresult **out, char *err, size_t errlen)
{
    if (out != NULL)
        *out = NULL;
    snprintf(err, errlen, "not connected [lost] in: %.80s", what);
    return SL_DB_RETRY;
}

/* Runs sql with text parameters; see finish. */
static int exec(sl_db_t *db, const char *sql, int nparams, const char *const *params, PGresult **out, char *err,
                size_t errlen)
{
    if (db->conn == NULL)
        return not_connected(sql, out, err, errlen);
    return finish(db, PQsendQueryParams(db->conn, sql, nparams, NULL, params, NULL, NULL, 0), sql, out, err, errlen);
}

int sl_db_exec(sl_db_t *db, const char *sql, int nparams, const char *const *params, PGresult **out, char *err,
               size_t errlen)
{
    return exec(db, sql, nparams, params, out, err, errlen);
}

/* Statements the persister runs for every batch, prepared once per connection: their text does not
 * depend on the batch size (arrays instead of one parameter per row), so the server parses and
 * plans them once. */
enum { PREP_EXISTING, PREP_INSERT, PREP_INSERT_FRESH, PREP_INSERT_NEW, PREP_CHANNELS, PREP__COUNT };
static const char *const prep_names[PREP__COUNT] = {"sl_existing", "sl_insert", "sl_insert_fresh", "sl_insert_new",
                                                    "sl_channels"};
static const char *const prep_sql[PREP__COUNT] = {
    "SELECT id FROM messages WHERE id = ANY($1::uuid[]) UNION ALL"
    " SELECT message_id FROM message_events WHERE type = 'delete' AND message_id = ANY($1::uuid[])",
    "INSERT INTO messages (id, seq, channel, author, body, source, created_at, url, edited_at, meta)"
    " SELECT u.id, u.seq, u.channel, u.author, u.body, u.source, u.created_at, u.url, u.edited_at, u.meta::jsonb"
    " FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],"
    " $8::text[], $9::timestamptz[], $10::text[])"
    " AS u(id, seq, channel, author, body, source, created_at, url, edited_at, meta)",
    /* A batch of messages only (no events): skip the ids stored or deleted already and number the
     * rest $1+1… in array order, in one statement (the counter row is locked before it runs, so
     * its snapshot sees every row committed before). */
    "INSERT INTO messages (id, seq, channel, author, body, source, created_at, url, edited_at, meta)"
    " SELECT u.id, $1::int8 + row_number() OVER (ORDER BY u.ord), u.channel, u.author, u.body, u.source,"
    " u.created_at, u.url, u.edited_at, u.meta::jsonb"
    " FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[],"
    " $9::timestamptz[], $10::text[]) WITH ORDINALITY"
    " AS u(id, channel, author, body, source, created_at, url, edited_at, meta, ord)"
    " WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = u.id)"
    " AND NOT EXISTS (SELECT 1 FROM message_events e WHERE e.type = 'delete' AND e.message_id = u.id)"
    " RETURNING id, seq",
    /* The same for a batch whose ids are all expected new (sl_db_batch_t.assume_new): the primary
     * key checks them anyway, so one already stored fails the statement with 23505 (and the batch is
     * tried again with the one above) instead of costing every row a lookup (about 13 % of the
     * statement on PostgreSQL 15). */
    "INSERT INTO messages (id, seq, channel, author, body, source, created_at, url, edited_at, meta)"
    " SELECT u.id, $1::int8 + row_number() OVER (ORDER BY u.ord), u.channel, u.author, u.body, u.source,"
    " u.created_at, u.url, u.edited_at, u.meta::jsonb"
    " FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[],"
    " $9::timestamptz[], $10::text[]) WITH ORDINALITY"
    " AS u(id, channel, author, body, source, created_at, url, edited_at, meta, ord)"
    " WHERE NOT EXISTS (SELECT 1 FROM message_events e WHERE e.type = 'delete' AND e.message_id = u.id)"
    " RETURNING id, seq",
    /* The batch's changes per channel (one element per channel: its last seq, its messages added
     * less those deleted) into sluice_channels. */
    "INSERT INTO sluice_channels (channel, last_seq, messages)"
    " SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[])"
    " ON CONFLICT (channel) DO UPDATE SET last_seq = greatest(sluice_channels.last_seq, excluded.last_seq),"
    " messages = sluice_channels.messages + excluded.messages",
};
static const int prep_nparams[PREP__COUNT] = {1, 10, 10, 10, 3};

/* Runs prepared statement `which` (preparing it first on this connection); see take_result. */
static int exec_prepared(sl_db_t *db, int which, const char *const *params, PGresult **out, char *err, size_t errlen)
{
    if (db->conn == NULL)
        return not_connected(prep_names[which], out, err, errlen);
    if (!(db->prepared & (1u << which))) {
        PGresult *failed = NULL;
        int ret = finish(db, PQsendPrepare(db->conn, prep_names[which], prep_sql[which], prep_nparams[which], NULL),
                         prep_sql[which], &failed, err, errlen);
        if (ret != SL_DB_OK) {
            if (out != NULL)
                *out = failed;
            else
                PQclear(failed);
            return ret;
        }
        PQclear(failed);
        db->prepared |= 1u << which;
    }
    if (db->conn == NULL)
        return not_connected(prep_names[which], out, err, errlen);
    return finish(db, PQsendQueryPrepared(db->conn, prep_names[which], prep_nparams[which], params, NULL, NULL, 0),
                  prep_names[which], out, err, errlen);
}

/* Appends one element to a PostgreSQL array literal being built in b: NULL, or a quoted string
 * with quotes and backslashes escaped. */
static void array_add(sl_buf_t *b, const char *v)
{
    sl_buf_appends(b, b->len > 1 ? "," : "");
    if (v == NULL) {
        sl_buf_appends(b, "NULL");
        return;
    }
    sl_buf_appends(b, "\"");
    for (const char *p = v; *p != '\0';) {
        size_t run = strcspn(p, "\"\\");
        sl_buf_append(b, p, run);
        p += run;
        if (*p != '\0') {
            char esc[2] = {'\\', *p++};
            sl_buf_append(b, esc, 2);
        }
    }
    sl_buf_appends(b, "\"");
}

/* NOTICEs ("relation already exists, skipping") are expected noise for idempotent DDL. */
static void on_notice(void *arg, const char *message)
{
    char q[300];
    (void)arg;
    SL_DEBUG("event=db_notice message=%s", sl_log_quote(q, sizeof(q), message));
}

int sl_db_connect(sl_db_t *db, const char *url, char *err, size_t errlen)
{
    const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
    const char *vals[] = {url, "5", "sluice", NULL};
    PGresult *res = NULL;
    memset(db, 0, sizeof(*db));
    db->max_retries = 10;
    db->timeout_ms = SL_DB_TIMEOUT_MS_DEFAULT;
    db->conn = PQconnectdbParams(keys, vals, 1);
    if (db->conn == NULL || PQstatus(db->conn) != CONNECTION_OK || PQsetnonblocking(db->conn, 1) != 0) {
        snprintf(err, errlen, "connect: %s", db->conn ? PQerrorMessage(db->conn) : "out of memory");
        sl_db_close(db);
        return SL_DB_RETRY;
    }
    if (exec(db, "SELECT version()", 0, NULL, &res, err, errlen) != SL_DB_OK) {
        PQclear(res);
        sl_db_close(db);
        return SL_DB_RETRY;
    }
    db->kind = sl_db_kind_of(PQgetvalue(res, 0, 0));
    PQsetNoticeProcessor(db->conn, on_notice, NULL);
    PQclear(res);
    if (exec(db, "SET TIME ZONE 'UTC'", 0, NULL, NULL, err, errlen) != SL_DB_OK) {
        sl_db_close(db);
        return SL_DB_RETRY;
    }
    return SL_DB_OK;
}

int sl_db_set_timeout(sl_db_t *db, int timeout_ms, char *err, size_t errlen)
{
    char sql[64];
    /* the server cancels first (57014, a clean answer); the client's deadline is the backstop for
     * a server that does not answer at all */
    snprintf(sql, sizeof(sql), "SET statement_timeout = '%dms'", timeout_ms);
    db->statement_timeout_ms = timeout_ms;
    db->timeout_ms = timeout_ms > 0 ? timeout_ms + 1000 : SL_DB_TIMEOUT_MS_DEFAULT;
    int r = exec(db, sql, 0, NULL, NULL, err, errlen);
    return r == SL_DB_OK ? r : SL_DB_RETRY;
}

void sl_db_close(sl_db_t *db)
{
    if (db->conn != NULL)
        PQfinish(db->conn);
    db->conn = NULL;
    db->prepared = 0;
}

int sl_db_schema_version(sl_db_t *db)
{
    char err[256];
    PGresult *res = NULL;
    int v = -1;
    if (exec(db, "SELECT coalesce(max(version), 0) FROM sluice_schema_migrations", 0, NULL, &res, err, sizeof(err)) ==
        SL_DB_OK)
        v = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    return v;
}

int sl_db_migrate(sl_db_t *db, char *err, size_t errlen)
{
    int ret = SL_DB_OK, locked = 0, statement_timeout_ms = db->statement_timeout_ms;
    /* DDL on a big table can take long: its own deadline, restored at the end */
    if ((ret = sl_db_set_timeout(db, SL_DB_MIGRATE_TIMEOUT_MS, err, errlen)) != SL_DB_OK)
        return ret;
    if (db->kind == SL_DB_POSTGRES) {
        /* Serialises concurrent starts (even CREATE TABLE IF NOT EXISTS races on PostgreSQL);
         * CockroachDB has no advisory locks and relies on the statements being idempotent. */
        if ((ret = exec(db, "SELECT pg_advisory_lock(727274)", 0, NULL, NULL, err, errlen)) == SL_DB_OK)
            locked = 1;
    }
    if (ret == SL_DB_OK)
        ret = exec(db,
               "CREATE TABLE IF NOT EXISTS sluice_schema_migrations (version INT8 PRIMARY KEY, name TEXT NOT NULL,"
               " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
               0, NULL, NULL, err, errlen);
    /* the versions recorded (few: one bit each) */
    unsigned long long applied = 0;
    PGresult *res = NULL;
    if (ret == SL_DB_OK &&
        (ret = exec(db, "SELECT version FROM sluice_schema_migrations", 0, NULL, &res, err, errlen)) == SL_DB_OK) {
        for (int r = 0; r < PQntuples(res); r++) {
            long long v = strtoll(PQgetvalue(res, r, 0), NULL, 10);
            if (v >= 0 && v < 64)
                applied |= 1ULL << v;
        }
    }
    PQclear(res);
    for (size_t m = 0; m < sizeof(migrations) / sizeof(migrations[0]) && ret == SL_DB_OK; m++) {
        const struct migration *mg = &migrations[m];
        char version[24];
        if (applied & (1ULL << mg->version))
            continue;
        const char *const *lists[2] = {mg->common, db->kind == SL_DB_COCKROACH ? mg->cockroach : mg->postgres};
        for (int l = 0; l < 2 && ret == SL_DB_OK; l++) {
            for (const char *const *s = lists[l]; *s != NULL && ret == SL_DB_OK; s++)
                ret = exec(db, *s, 0, NULL, NULL, err, errlen);
        }
        if (ret != SL_DB_OK)
            break;
        snprintf(version, sizeof(version), "%d", mg->version);
        const char *params[] = {version, mg->name};
        ret = exec(db, "INSERT INTO sluice_schema_migrations (version, name) VALUES ($1, $2) ON CONFLICT (version) DO NOTHING",
                   2, params, NULL, err, errlen);
        if (ret == SL_DB_OK)
            SL_INFO("event=migration_applied version=%d name=%s server=%s", mg->version, mg->name,
                    sl_db_kind_name(db->kind));
    }
    char e2[256];
    int r2 = SL_DB_OK;
    if (locked && db->conn != NULL)
        r2 = exec(db, "SELECT pg_advisory_unlock(727274)", 0, NULL, NULL, e2, sizeof(e2));
    if (r2 == SL_DB_OK && db->conn != NULL)
        r2 = sl_db_set_timeout(db, statement_timeout_ms, e2, sizeof(e2));
    if (ret == SL_DB_OK && r2 != SL_DB_OK) {
        snprintf(err, errlen, "%s", e2);
        ret = r2;
    }
    return ret;
}

int sl_db_migrate_url(const char *url, int wait_s, volatile sig_atomic_t *stop)
{
    char err[512], q[600];
    int tries = 0;
    int64_t deadline = sl_time_mono_us() + (int64_t)wait_s * 1000000;
    for (;;) {
        sl_db_t db;
        int r = sl_db_connect(&db, url, err, sizeof(err));
        if (r == SL_DB_OK) {
            r = sl_db_migrate(&db, err, sizeof(err));
            sl_db_close(&db);
            if (r == SL_DB_OK)
                return r;
        }
        if (tries++ == 0)
            SL_INFO("event=migrate_waiting error=%s", sl_log_quote(q, sizeof(q), err));
        /* every failure is worth another try while time is left: CockroachDB has no advisory lock,
         * so two services migrating at once can fail with "already exists" or 40001 */
        if (sl_time_mono_us() > deadline || (stop != NULL && *stop)) {
            SL_ERROR("event=migrate_failed error=%s", sl_log_quote(q, sizeof(q), err));
            return r;
        }
        struct timespec ts = {0, 500 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

int sl_db_row_to_message(const PGresult *res, int row, sl_message_t *m)
{
    const char *v;
    size_t len;
    memset(m, 0, sizeof(*m));
    if (PQnfields(res) < 7)
        return -1;
#define COPY(col, dst)                                                                                                 \
    do {                                                                                                               \
        v = PQgetvalue(res, row, col);                                                                                 \
        len = (size_t)PQgetlength(res, row, col);                                                                      \
        if (len >= sizeof(dst))                                                                                        \
            return -1;                                                                                                 \
        memcpy(dst, v, len + 1);                                                                                       \
    } while (0)
    COPY(0, m->id);
    m->seq = strtoll(PQgetvalue(res, row, 1), NULL, 10);
    COPY(2, m->channel);
    COPY(3, m->author);
    COPY(4, m->text);
    COPY(5, m->source);
    if (PQnfields(res) >= 9 && !PQgetisnull(res, row, 7))
        COPY(7, m->url);
#undef COPY
    if (PQnfields(res) >= 9 && !PQgetisnull(res, row, 8)) {
        v = PQgetvalue(res, row, 8);
        if (sl_time_parse(v, strlen(v), &m->edited_at_us) != 0)
            return -1;
    }
    v = PQgetvalue(res, row, 6);
    if (sl_time_parse(v, strlen(v), &m->created_at_us) != 0)
        return -1;
    if (PQnfields(res) >= 10 && !PQgetisnull(res, row, 9)) {
        /* JSONB comes back reordered and spaced: in canonical form again, as it was written */
        json_t *meta = json_loadb(PQgetvalue(res, row, 9), (size_t)PQgetlength(res, row, 9), 0, NULL);
        m->meta = sl_meta_dump(meta);
        json_decref(meta);
    }
    return 0;
}

/* Repeats within a batch: a message repeats an earlier one with its id, an event (update/delete)
 * one with its event_id. */
static const char *dedup_key(const sl_message_t *m)
{
    return m->type == SL_MESSAGE_NEW ? m->id : m->event_id;
}

static int cmp_id(const void *a, const void *b)
{
    const sl_message_t *const *x = a, *const *y = b;
    int ex = (*x)->type != SL_MESSAGE_NEW, ey = (*y)->type != SL_MESSAGE_NEW;
    if (ex != ey)
        return ex - ey;
    int c = strcmp(dedup_key(*x), dedup_key(*y));
    if (c != 0)
        return c;
    return *x < *y ? -1 : *x > *y; /* keep the first of equal ids first */
}

/* Clears fresh[i] for each row of res whose column 0 equals key(msgs[i]). */
static void drop_found(const PGresult *res, sl_message_t *msgs, size_t n, int events, char *fresh)
{
    for (int r = 0; r < PQntuples(res); r++) {
        const char *id = PQgetvalue(res, r, 0);
        for (size_t i = 0; i < n; i++) {
            if (fresh[i] && (msgs[i].type != SL_MESSAGE_NEW) == events && strcasecmp(id, dedup_key(&msgs[i])) == 0)
                fresh[i] = 0;
        }
    }
}

/* A message whose deletion is already recorded (an earlier batch, or earlier in this one) is not
 * stored: the post is gone, and a stream must not show it after its delete. */
static int deleted_earlier_in_batch(const sl_message_t *msgs, size_t i, const char *fresh)
{
    for (size_t j = 0; j < i; j++) {
        if (fresh[j] && msgs[j].type == SL_MESSAGE_DELETE && strcasecmp(msgs[j].id, msgs[i].id) == 0)
            return 1;
    }
    return 0;
}

/* Applies one stored event to its message row (when the row exists). */
static int apply_event(sl_db_t *db, const sl_message_t *m, const char *created, const char *edited, char *err,
                       size_t errlen, PGresult **res)
{
    if (m->type == SL_MESSAGE_UPDATE) {
        const char *p[] = {m->id, m->text, m->url[0] != '\0' ? m->url : NULL, edited, m->meta};
        return exec(db,
                    "UPDATE messages SET body = $2, url = coalesce($3, url), edited_at = $4,"
                    " meta = coalesce($5::text::jsonb, meta) WHERE id = $1"
                    " AND deleted_at IS NULL AND (edited_at IS NULL OR edited_at < $4)",
                    5, p, res, err, errlen);
    }
    const char *p[] = {m->id, created};
    return exec(db, "UPDATE messages SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL", 2, p, res, err, errlen);
}

/* A batch of messages only: inserts those of prepared->is_new not stored (nor deleted) yet with
 * PREP_INSERT_FRESH (PREP_INSERT_NEW when !check_stored: then one already stored fails it with
 * 23505) and the prepared columns, numbered last_seq+1… in array order; sets their seq
 * (0 for the others) and *k to how many. On failure *res is the failed result. */
static int insert_fresh(sl_db_t *db, sl_message_t *msgs, size_t n, const sl_db_batch_t *prepared, int check_stored,
                        long long last_seq, size_t *k, PGresult **res, char *err, size_t errlen)
{
    const char *p[10];
    char last[24];
    size_t *cand = calloc(n + 1, sizeof(*cand)), *by_rank = NULL, ncand = 0;
    int ret = SL_DB_RETRY;
    *k = 0;
    if (cand == NULL) {
        snprintf(err, errlen, "out of memory");
        return SL_DB_RETRY;
    }
    for (size_t i = 0; i < n; i++) {
        msgs[i].seq = 0;
        if (prepared->is_new[i])
            cand[ncand++] = i;
    }
    snprintf(last, sizeof(last), "%lld", last_seq);
    p[0] = last;
    for (int c = 0; c < 9; c++)
        p[c + 1] = prepared->cols[c].data;
    if ((ret = exec_prepared(db, check_stored ? PREP_INSERT_FRESH : PREP_INSERT_NEW, p, res, err, errlen)) != SL_DB_OK)
        goto Exit;
    /* Row r got seq last_seq + rank + 1, rank its place among the inserted ones in array order:
     * walk the candidates in array order, taking the ranks in turn. */
    size_t nrows = (size_t)PQntuples(*res);
    if (nrows > ncand || (by_rank = calloc(nrows + 1, sizeof(*by_rank))) == NULL) {
        snprintf(err, errlen, nrows > ncand ? "more rows inserted than sent" : "out of memory");
        ret = SL_DB_RETRY;
        goto Exit;
    }
    for (size_t r = 0; r < nrows; r++) {
        long long rank = strtoll(PQgetvalue(*res, (int)r, 1), NULL, 10) - last_seq - 1;
        if (rank < 0 || (size_t)rank >= nrows || by_rank[rank] != 0) {
            snprintf(err, errlen, "inserted rows are not numbered %lld+1..%zu", last_seq, nrows);
            ret = SL_DB_RETRY;
            goto Exit;
        }
        by_rank[rank] = r + 1;
    }
    size_t rank = 0;
    for (size_t c = 0; c < ncand && rank < nrows; c++) {
        sl_message_t *m = &msgs[cand[c]];
        if (strcasecmp(PQgetvalue(*res, (int)(by_rank[rank] - 1), 0), m->id) == 0)
            m->seq = last_seq + (long long)(++rank);
    }
    if (rank != nrows) {
        snprintf(err, errlen, "inserted rows do not match the batch's order");
        ret = SL_DB_RETRY;
        goto Exit;
    }
    *k = nrows;
    PQclear(*res);
    *res = NULL;
Exit:
    free(cand);
    free(by_rank);
    return ret;
}

static int cmp_channel_of(const void *a, const void *b)
{
    const sl_message_t *const *x = a, *const *y = b;
    return strcmp((*x)->channel, (*y)->channel);
}

/* The batch's changes per channel into sluice_channels (PREP_CHANNELS): each channel's highest new
 * seq, and its messages stored now less those deleted now (gone[i]: msgs[i] is a delete that hid
 * its message in this transaction). Returns as exec does; *res is the failed result. */
static int update_channels(sl_db_t *db, sl_message_t *msgs, size_t n, const char *gone, PGresult **res, char *err,
                           size_t errlen)
{
    sl_message_t **order = calloc(n + 1, sizeof(*order));
    sl_buf_t cols[3];
    size_t k = 0;
    int ret = SL_DB_OK;
    *res = NULL;
    if (order == NULL) {
        snprintf(err, errlen, "out of memory");
        return SL_DB_RETRY;
    }
    for (size_t i = 0; i < n; i++) {
        if (msgs[i].seq > 0)
            order[k++] = &msgs[i];
    }
    qsort(order, k, sizeof(*order), cmp_channel_of);
    memset(cols, 0, sizeof(cols));
    for (int c = 0; c < 3; c++)
        sl_buf_appends(&cols[c], "{");
    for (size_t i = 0; i < k;) {
        long long last = 0, delta = 0;
        size_t j = i;
        for (; j < k && strcmp(order[j]->channel, order[i]->channel) == 0; j++) {
            if (order[j]->seq > last)
                last = order[j]->seq;
            if (order[j]->type == SL_MESSAGE_NEW)
                delta++;
            else if (gone != NULL && gone[order[j] - msgs])
                delta--;
        }
        char t[2][24];
        snprintf(t[0], sizeof(t[0]), "%lld", last);
        snprintf(t[1], sizeof(t[1]), "%lld", delta);
        array_add(&cols[0], order[i]->channel);
        array_add(&cols[1], t[0]);
        array_add(&cols[2], t[1]);
        i = j;
    }
    for (int c = 0; c < 3; c++)
        sl_buf_appends(&cols[c], "}");
    if (k > 0) {
        const char *p[3] = {cols[0].data, cols[1].data, cols[2].data};
        if ((ret = exec_prepared(db, PREP_CHANNELS, p, res, err, errlen)) == SL_DB_OK) {
            PQclear(*res);
            *res = NULL;
        }
    }
    for (int c = 0; c < 3; c++)
        sl_buf_free(&cols[c]);
    free(order);
    return ret;
}

/* An edit or delete whose message's delete is already recorded (by an earlier batch) is not
 * numbered, applied nor published: fresh[i] cleared, ignored[i] set. It lost a race the api could
 * not see (an edit and a delete accepted at once): record_ignored keeps it. On failure *res is
 * the failed result. */
static int drop_events_of_deleted(sl_db_t *db, sl_message_t *msgs, size_t n, char *fresh, char *ignored,
                                  PGresult **res, char *err, size_t errlen)
{
    sl_buf_t ids = SL_BUF_INIT;
    size_t np = 0;
    int ret = SL_DB_OK;
    sl_buf_appends(&ids, "{");
    for (size_t i = 0; i < n; i++) {
        if (fresh[i] && msgs[i].type != SL_MESSAGE_NEW) {
            array_add(&ids, msgs[i].id);
            np++;
        }
    }
    sl_buf_appends(&ids, "}");
    if (np > 0) {
        const char *p1[] = {ids.data};
        ret = exec(db, "SELECT DISTINCT message_id FROM message_events WHERE type = 'delete' AND message_id = ANY($1::uuid[])",
                   1, p1, res, err, errlen);
        for (int r = 0; ret == SL_DB_OK && r < PQntuples(*res); r++) {
            for (size_t i = 0; i < n; i++) {
                if (fresh[i] && msgs[i].type != SL_MESSAGE_NEW && strcasecmp(PQgetvalue(*res, r, 0), msgs[i].id) == 0) {
                    fresh[i] = 0;
                    ignored[i] = 1;
                }
            }
        }
        if (ret == SL_DB_OK) {
            PQclear(*res);
            *res = NULL;
        }
    }
    sl_buf_free(&ids);
    return ret;
}

/* Keeps the events marked ignored in message_events_ignored (once per event_id), with their queue
 * JSON (no seq), for an operator to see; the persister logs each one after the commit. */
static int record_ignored(sl_db_t *db, const sl_message_t *msgs, size_t n, const char *ignored, PGresult **res,
                          char *err, size_t errlen)
{
    sl_buf_t cols[6];
    char ts[SL_TIME_RFC3339_LEN];
    size_t count = 0;
    int ret = SL_DB_OK;
    memset(cols, 0, sizeof(cols));
    for (int c = 0; c < 6; c++)
        sl_buf_appends(&cols[c], "{");
    for (size_t i = 0; i < n; i++) {
        if (!ignored[i])
            continue;
        sl_buf_t body = SL_BUF_INIT;
        sl_message_append_json(&body, &msgs[i]);
        sl_time_format(msgs[i].created_at_us, ts);
        array_add(&cols[0], msgs[i].event_id);
        array_add(&cols[1], msgs[i].id);
        array_add(&cols[2], msgs[i].channel);
        array_add(&cols[3], sl_message_type_name(msgs[i].type));
        array_add(&cols[4], body.data);
        array_add(&cols[5], ts);
        sl_buf_free(&body);
        count++;
    }
    if (count > 0) {
        const char *p6[6];
        for (int c = 0; c < 6; c++) {
            sl_buf_appends(&cols[c], "}");
            p6[c] = cols[c].data;
        }
        ret = exec(db,
                   "INSERT INTO message_events_ignored (event_id, message_id, channel, type, body, reason, created_at)"
                   " SELECT e, m, c, t, b, 'its message was deleted first', a FROM unnest($1::uuid[], $2::uuid[],"
                   " $3::text[], $4::text[], $5::text[], $6::timestamptz[]) AS u(e, m, c, t, b, a)"
                   " ON CONFLICT (event_id) DO NOTHING",
                   6, p6, res, err, errlen);
        if (ret == SL_DB_OK) {
            PQclear(*res);
            *res = NULL;
        }
    }
    for (int c = 0; c < 6; c++)
        sl_buf_free(&cols[c]);
    return ret;
}

/* One attempt of the batch transaction body, after BEGIN. careful: check every id against those
 * stored, even when the batch assumes them new. */
static int store_attempt(sl_db_t *db, sl_message_t *msgs, size_t n, const sl_db_batch_t *prepared, int careful,
                         char *ignored, size_t *stored, char *err, size_t errlen, PGresult **failed)
{
    const char *is_new = prepared->is_new;
    PGresult *res = NULL;
    sl_buf_t sql = SL_BUF_INIT;
    const char **params = NULL;
    char (*seqtext)[24] = NULL, (*tstext)[SL_TIME_RFC3339_LEN] = NULL, **bodies = NULL;
    int ret;
    long long last_seq;
    size_t k = 0, np = 0, nmsg = 0, nev = 0;
    char *fresh = calloc(n, 1), *gone = calloc(n, 1);

    *failed = NULL;
    if (fresh == NULL || gone == NULL) {
        free(fresh);
        free(gone);
        snprintf(err, errlen, "out of memory");
        return SL_DB_RETRY;
    }
    /* Lock the counter first: concurrent writers queue here, so the existence check below sees
     * every row committed before ours, and commits happen in seq order. */
    if ((ret = exec(db, "SELECT last_seq FROM sluice_feed WHERE id = 1 FOR UPDATE", 0, NULL, &res, err, errlen)) !=
        SL_DB_OK)
        goto Exit;
    if (PQntuples(res) != 1) {
        snprintf(err, errlen, "sluice_feed has no row 1: migrations not applied?");
        ret = SL_DB_RETRY;
        goto Exit;
    }
    last_seq = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    res = NULL;

    if (prepared->only_messages) { /* the common case, in one statement */
        if ((ret = insert_fresh(db, msgs, n, prepared, careful || !prepared->assume_new, last_seq, &k, &res, err,
                                errlen)) != SL_DB_OK)
            goto Exit;
        goto Numbered;
    }

    params = calloc(n * 9 + 1, sizeof(*params));
    seqtext = calloc(n + 1, sizeof(*seqtext));
    tstext = calloc(2 * n, sizeof(*tstext));
    bodies = calloc(n, sizeof(*bodies));
    if (params == NULL || seqtext == NULL || tstext == NULL || bodies == NULL) {
        snprintf(err, errlen, "out of memory");
        ret = SL_DB_RETRY;
        goto Exit;
    }
    for (size_t i = 0; i < n; i++)
        fresh[i] = is_new[i] != 0;
    /* Messages already stored or already deleted. */
    {
        sl_buf_t ids = SL_BUF_INIT;
        sl_buf_appends(&ids, "{");
        for (size_t i = 0; i < n; i++) {
            if (is_new[i] && msgs[i].type == SL_MESSAGE_NEW) {
                array_add(&ids, msgs[i].id);
                np++;
            }
        }
        sl_buf_appends(&ids, "}");
        if (np > 0) {
            const char *p1[] = {ids.data};
            ret = exec_prepared(db, PREP_EXISTING, p1, &res, err, errlen);
            if (ret == SL_DB_OK) {
                drop_found(res, msgs, n, 0, fresh);
                PQclear(res);
                res = NULL;
            }
        }
        sl_buf_free(&ids);
        if (ret != SL_DB_OK)
            goto Exit;
    }
    /* Events already stored (or already ignored: see drop_events_of_deleted). */
    sql.len = 0;
    np = 0;
    {
        sl_buf_t in = SL_BUF_INIT;
        for (size_t i = 0; i < n; i++) {
            if (!is_new[i] || msgs[i].type == SL_MESSAGE_NEW)
                continue;
            sl_buf_appendf(&in, "%s$%zu", np ? "," : "", np + 1);
            params[np++] = msgs[i].event_id;
        }
        sl_buf_appendf(&sql,
                       "SELECT event_id FROM message_events WHERE event_id IN (%s) UNION ALL"
                       " SELECT event_id FROM message_events_ignored WHERE event_id IN (%s)",
                       in.data, in.data);
        sl_buf_free(&in);
    }
    if (np > 0) {
        if ((ret = exec(db, sql.data, (int)np, params, &res, err, errlen)) != SL_DB_OK)
            goto Exit;
        drop_found(res, msgs, n, 1, fresh);
        PQclear(res);
        res = NULL;
    }
    memset(ignored, 0, n);
    if ((ret = drop_events_of_deleted(db, msgs, n, fresh, ignored, &res, err, errlen)) != SL_DB_OK)
        goto Exit;

    /* Positions in array order, messages and events alike. */
    int any_delete = 0;
    for (size_t i = 0; i < n && !any_delete; i++)
        any_delete = msgs[i].type == SL_MESSAGE_DELETE;
    for (size_t i = 0; i < n; i++) {
        msgs[i].seq = 0;
        if (any_delete && fresh[i] && deleted_earlier_in_batch(msgs, i, fresh)) {
            fresh[i] = 0;
            ignored[i] = msgs[i].type != SL_MESSAGE_NEW;
        }
        if (!fresh[i])
            continue;
        msgs[i].seq = last_seq + (long long)(++k);
        snprintf(seqtext[i], sizeof(seqtext[0]), "%lld", (long long)msgs[i].seq);
        sl_time_format(msgs[i].created_at_us, tstext[2 * i]);
        if (msgs[i].edited_at_us != 0)
            sl_time_format(msgs[i].edited_at_us, tstext[2 * i + 1]);
        if (msgs[i].type == SL_MESSAGE_NEW)
            nmsg++;
        else
            nev++;
    }

    if (nmsg > 0) {
        /* one array per column, one prepared INSERT … SELECT FROM unnest(…) */
        sl_buf_t cols[10];
        const char *p10[10];
        memset(cols, 0, sizeof(cols));
        for (int c = 0; c < 10; c++)
            sl_buf_appends(&cols[c], "{");
        for (size_t i = 0; i < n; i++) {
            if (!fresh[i] || msgs[i].type != SL_MESSAGE_NEW)
                continue;
            array_add(&cols[0], msgs[i].id);
            array_add(&cols[1], seqtext[i]);
            array_add(&cols[2], msgs[i].channel);
            array_add(&cols[3], msgs[i].author);
            array_add(&cols[4], msgs[i].text);
            array_add(&cols[5], msgs[i].source);
            array_add(&cols[6], tstext[2 * i]);
            array_add(&cols[7], msgs[i].url[0] != '\0' ? msgs[i].url : NULL);
            array_add(&cols[8], msgs[i].edited_at_us != 0 ? tstext[2 * i + 1] : NULL);
            array_add(&cols[9], msgs[i].meta);
        }
        for (int c = 0; c < 10; c++) {
            sl_buf_appends(&cols[c], "}");
            p10[c] = cols[c].data;
        }
        ret = exec_prepared(db, PREP_INSERT, p10, &res, err, errlen);
        for (int c = 0; c < 10; c++)
            sl_buf_free(&cols[c]);
        if (ret != SL_DB_OK)
            goto Exit;
        PQclear(res);
        res = NULL;
    }

    if (nev > 0) {
        /* The message rows (including ones inserted just now) give the events their channel;
         * an event for a message we never stored keeps the channel it came with. */
        sql.len = 0;
        np = 0;
        sl_buf_appends(&sql, "SELECT id, channel FROM messages WHERE id IN (");
        for (size_t i = 0; i < n; i++) {
            if (!fresh[i] || msgs[i].type == SL_MESSAGE_NEW)
                continue;
            sl_buf_appendf(&sql, "%s$%zu", np ? "," : "", np + 1);
            params[np++] = msgs[i].id;
        }
        sl_buf_appends(&sql, ")");
        if ((ret = exec(db, sql.data, (int)np, params, &res, err, errlen)) != SL_DB_OK)
            goto Exit;
        for (int r = 0; r < PQntuples(res); r++) {
            for (size_t i = 0; i < n; i++) {
                if (fresh[i] && msgs[i].type != SL_MESSAGE_NEW && strcasecmp(PQgetvalue(res, r, 0), msgs[i].id) == 0 &&
                    (size_t)PQgetlength(res, r, 1) < sizeof(msgs[i].channel))
                    memcpy(msgs[i].channel, PQgetvalue(res, r, 1), (size_t)PQgetlength(res, r, 1) + 1);
            }
        }
        PQclear(res);
        res = NULL;

        sql.len = 0;
        np = 0;
        sl_buf_appends(&sql,
                       "INSERT INTO message_events (seq, event_id, message_id, channel, type, body, created_at) VALUES ");
        for (size_t i = 0; i < n; i++) {
            if (!fresh[i] || msgs[i].type == SL_MESSAGE_NEW)
                continue;
            /* body is the event as the live exchange carries it, so a stream can replay it as is */
            if ((bodies[i] = sl_message_to_json(&msgs[i], NULL)) == NULL) {
                snprintf(err, errlen, "out of memory");
                ret = SL_DB_RETRY;
                goto Exit;
            }
            sl_buf_appendf(&sql, "%s($%zu,$%zu,$%zu,$%zu,$%zu,$%zu,$%zu)", np ? "," : "", np + 1, np + 2, np + 3,
                           np + 4, np + 5, np + 6, np + 7);
            params[np++] = seqtext[i];
            params[np++] = msgs[i].event_id;
            params[np++] = msgs[i].id;
            params[np++] = msgs[i].channel;
            params[np++] = sl_message_type_name(msgs[i].type);
            params[np++] = bodies[i];
            params[np++] = tstext[2 * i];
        }
        if ((ret = exec(db, sql.data, (int)np, params, &res, err, errlen)) != SL_DB_OK)
            goto Exit;
        PQclear(res);
        res = NULL;
        for (size_t i = 0; i < n; i++) {
            if (!fresh[i] || msgs[i].type == SL_MESSAGE_NEW)
                continue;
            if ((ret = apply_event(db, &msgs[i], tstext[2 * i], tstext[2 * i + 1], err, errlen, &res)) != SL_DB_OK)
                goto Exit;
            gone[i] = msgs[i].type == SL_MESSAGE_DELETE && strcmp(PQcmdTuples(res), "0") != 0;
            PQclear(res);
            res = NULL;
        }
    }
    if ((ret = record_ignored(db, msgs, n, ignored, &res, err, errlen)) != SL_DB_OK)
        goto Exit;

Numbered:
    if (k > 0) {
        if ((ret = update_channels(db, msgs, n, gone, &res, err, errlen)) != SL_DB_OK)
            goto Exit;
        char total[24];
        snprintf(total, sizeof(total), "%lld", last_seq + (long long)k);
        const char *p1[] = {total};
        if ((ret = exec(db, "UPDATE sluice_feed SET last_seq = $1 WHERE id = 1", 1, p1, &res, err, errlen)) != SL_DB_OK)
            goto Exit;
        PQclear(res);
        res = NULL;
    }
    *stored = k;
    ret = SL_DB_OK;
Exit:
    if (ret != SL_DB_OK) {
        *failed = res; /* the caller reads its SQLSTATE */
        res = NULL;
        for (size_t i = 0; i < n; i++)
            msgs[i].seq = 0;
    }
    PQclear(res);
    sl_buf_free(&sql);
    free(params);
    free(seqtext);
    free(tstext);
    if (bodies != NULL) {
        for (size_t i = 0; i < n; i++)
            free(bodies[i]);
    }
    free(bodies);
    free(fresh);
    free(gone);
    return ret;
}

static void backoff(int attempt)
{
    struct timespec ts = {0, (long)(attempt < 8 ? (1 << attempt) : 256) * 1000000L + (rand() % 1000) * 1000L};
    nanosleep(&ts, NULL);
}

int sl_db_batch_prepare(sl_db_batch_t *b, sl_message_t *msgs, size_t n)
{
    sl_message_t **order = calloc(n + 1, sizeof(*order));
    char ts[2][SL_TIME_RFC3339_LEN];
    sl_db_batch_free(b);
    b->is_new = calloc(n + 1, 1);
    if (order == NULL || b->is_new == NULL) {
        free(order);
        sl_db_batch_free(b);
        return -1;
    }
    /* Mark repeats of an id within the batch (e.g. a client's retry queued next to its first try). */
    b->only_messages = 1;
    b->assume_new = 1;
    for (size_t i = 0; i < n; i++) {
        order[i] = &msgs[i];
        b->assume_new &= sl_uuid_version(msgs[i].id) == 7;
        if (msgs[i].type != SL_MESSAGE_NEW && msgs[i].created_at_us == 0)
            msgs[i].created_at_us = sl_time_now_us(); /* the event's time, fixed across retries */
        b->only_messages &= msgs[i].type == SL_MESSAGE_NEW;
    }
    qsort(order, n, sizeof(*order), cmp_id);
    for (size_t i = 0; i < n; i++) {
        int dup = i > 0 && (order[i]->type != SL_MESSAGE_NEW) == (order[i - 1]->type != SL_MESSAGE_NEW) &&
                  strcmp(dedup_key(order[i]), dedup_key(order[i - 1])) == 0;
        b->is_new[order[i] - msgs] = !dup;
    }
    free(order);
    if (!b->only_messages)
        return 0;
    /* The columns of PREP_INSERT_FRESH: they do not depend on the feed's position. */
    for (int c = 0; c < 9; c++)
        sl_buf_appends(&b->cols[c], "{");
    for (size_t i = 0; i < n; i++) {
        if (!b->is_new[i])
            continue;
        sl_time_format(msgs[i].created_at_us, ts[0]);
        if (msgs[i].edited_at_us != 0)
            sl_time_format(msgs[i].edited_at_us, ts[1]);
        array_add(&b->cols[0], msgs[i].id);
        array_add(&b->cols[1], msgs[i].channel);
        array_add(&b->cols[2], msgs[i].author);
        array_add(&b->cols[3], msgs[i].text);
        array_add(&b->cols[4], msgs[i].source);
        array_add(&b->cols[5], ts[0]);
        array_add(&b->cols[6], msgs[i].url[0] != '\0' ? msgs[i].url : NULL);
        array_add(&b->cols[7], msgs[i].edited_at_us != 0 ? ts[1] : NULL);
        array_add(&b->cols[8], msgs[i].meta);
    }
    for (int c = 0; c < 9; c++)
        sl_buf_appends(&b->cols[c], "}");
    return 0;
}

void sl_db_batch_free(sl_db_batch_t *b)
{
    free(b->is_new);
    b->is_new = NULL;
    b->only_messages = 0;
    b->assume_new = 0;
    for (int c = 0; c < 9; c++)
        sl_buf_free(&b->cols[c]);
}

/* BEGIN, and on CockroachDB the savepoint its retry protocol restarts from. */
static int begin(sl_db_t *db, int crdb, char *err, size_t errlen)
{
    int ret = exec(db, "BEGIN", 0, NULL, NULL, err, errlen);
    if (ret == SL_DB_OK && crdb)
        ret = exec(db, "SAVEPOINT cockroach_restart", 0, NULL, NULL, err, errlen);
    return ret;
}

int sl_db_store_batch(sl_db_t *db, sl_message_t *msgs, size_t n, const sl_db_batch_t *prepared, size_t *stored,
                      char *err, size_t errlen)
{
    int crdb = db->kind == SL_DB_COCKROACH, ret = SL_DB_RETRY;
    sl_db_batch_t own;
    char *ignored = NULL;
    memset(&own, 0, sizeof(own));
    *stored = 0;
    db->last_ignored = 0;
    if (n == 0)
        return SL_DB_OK;
    if (db->conn == NULL)
        return not_connected("store batch", NULL, err, errlen);
    if ((ignored = calloc(n, 1)) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto Exit;
    }
    if (prepared == NULL) {
        if (sl_db_batch_prepare(&own, msgs, n) != 0) {
            snprintf(err, errlen, "out of memory");
            goto Exit;
        }
        prepared = &own;
    }

    if ((ret = begin(db, crdb, err, errlen)) != SL_DB_OK)
        goto Rollback;
    for (int attempt = 0, careful = 0;; attempt++) {
        PGresult *failed = NULL;
        ret = store_attempt(db, msgs, n, prepared, careful, ignored, stored, err, errlen, &failed);
        if (ret == SL_DB_OK && crdb)
            ret = exec(db, "RELEASE SAVEPOINT cockroach_restart", 0, NULL, &failed, err, errlen);
        if (ret == SL_DB_OK)
            ret = exec(db, "COMMIT", 0, NULL, &failed, err, errlen);
        const char *state = sl_db_sqlstate(failed);
        /* 40001/40P01 on a live connection: the same transaction again, a few times; after that the
         * failure is transient (SL_DB_RETRY) like any other, never a refusal */
        int retry = ret == SL_DB_RETRY && db->conn != NULL && sl_db_is_retryable(state) && attempt < db->max_retries;
        /* An id assumed new was stored already (a repeat nobody flagged): once more, carefully. */
        int stored_already = ret == SL_DB_ERROR && !careful && prepared->only_messages && prepared->assume_new &&
                             strcmp(state, "23505") == 0;
        PQclear(failed);
        if (ret == SL_DB_OK)
            goto Exit;
        if (stored_already) {
            SL_INFO("event=db_batch_repeats_stored_ids rows=%zu", n);
            careful = 1;
            attempt--;
            if ((ret = exec(db, "ROLLBACK", 0, NULL, NULL, err, errlen)) != SL_DB_OK ||
                (ret = begin(db, crdb, err, errlen)) != SL_DB_OK)
                goto Rollback;
            continue;
        }
        if (!retry)
            goto Rollback;
        SL_INFO("event=db_retry sqlstate=%s attempt=%d", state, attempt + 1);
        backoff(attempt);
        if (crdb) {
            if ((ret = exec(db, "ROLLBACK TO SAVEPOINT cockroach_restart", 0, NULL, NULL, err, errlen)) != SL_DB_OK)
                goto Rollback;
        } else {
            if ((ret = exec(db, "ROLLBACK", 0, NULL, NULL, err, errlen)) != SL_DB_OK ||
                (ret = begin(db, 0, err, errlen)) != SL_DB_OK)
                goto Rollback;
        }
    }
Rollback:
    /* after poison the connection goes on (the caller stores one at a time); after anything
     * transient the caller closes it, and so does a failed ROLLBACK */
    if (ret == SL_DB_ERROR) {
        char e2[256];
        if (exec(db, "ROLLBACK", 0, NULL, NULL, e2, sizeof(e2)) != SL_DB_OK) {
            snprintf(err, errlen, "%s", e2);
            ret = SL_DB_RETRY;
        }
    }
    *stored = 0;
Exit:
    for (size_t i = 0; ret == SL_DB_OK && i < n; i++) {
        if (ignored[i]) {
            db->last_ignored++;
            SL_INFO("event=event_ignored type=%s id=%s event_id=%s reason=\"its message was deleted first\"",
                    sl_message_type_name(msgs[i].type), msgs[i].id, msgs[i].event_id);
        }
    }
    free(ignored);
    sl_db_batch_free(&own);
    return ret;
}
