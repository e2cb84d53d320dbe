/*
 * sl_db: sluice's SQL on PostgreSQL and CockroachDB through libpq (blocking calls, each bounded by
 * a deadline: for the persister's writer thread and for a service's start, never an event loop).
 *
 * The server is detected with SELECT version(): both speak the same wire protocol, and sluice
 * uses the SQL both accept, with two CockroachDB-specific choices: hash-sharded indexes for the
 * monotonically increasing keys, and the savepoint retry protocol for SQLSTATE 40001.
 *
 * Feed positions (seq) come from a one-row counter, sluice_feed, locked and advanced in the same
 * transaction that inserts the rows: seq is gapless and increases in commit order even with
 * several writers. A message's id is its primary key, so a redelivered message is stored once.
 * The same transaction keeps sluice_channels (one row per channel: its last seq, message or
 * event, and its messages not deleted) for sse's GET /v1/channels.
 *
 * Failures come in two classes. Poison: the data itself is at fault (SQLSTATE classes 22 and 23)
 * and no retry will store it. Transient: everything else (a lost or refused connection, a
 * read-only server during a failover 25006, serialization failures 40001/40P01 beyond the retries,
 * CockroachDB's ambiguous result 40003, 53xxx resources, 57xxx shutdown and cancel, 57014 timeouts,
 * 58xxx, XX000, and a statement past its deadline): the connection is given up and the work is
 * tried again later, for as long as it takes.
 *
 * One sl_db_t is one connection, used by one thread.
 */
#ifndef SL_DB_H
#define SL_DB_H

#include <libpq-fe.h>
#include <signal.h>
#include <stddef.h>

#include "sl_message.h"

typedef enum { SL_DB_POSTGRES = 0, SL_DB_COCKROACH = 1 } sl_db_kind_t;

/* Return codes of the calls below. */
#define SL_DB_OK 0
#define SL_DB_ERROR (-1) /* poison: the data is refused (SQLSTATE class 22 or 23); retrying will not fix it */
#define SL_DB_RETRY (-2) /* transient: close the connection, reconnect (with backoff) and call again */

#define SL_DB_TIMEOUT_MS_DEFAULT 10000

typedef struct sl_db {
    PGconn *conn;
    sl_db_kind_t kind;
    int max_retries; /* of a transaction that failed with 40001 / 40P01; default 10 */
    int timeout_ms;  /* deadline of each statement, client side: SL_DB_TIMEOUT_MS_DEFAULT after
                      * connecting, sl_db_set_timeout's + 1 s after that */
    int statement_timeout_ms; /* the server's, as sl_db_set_timeout set it (0: the server's default) */
    unsigned prepared; /* bit per statement prepared on this connection */
    size_t last_ignored; /* events the last sl_db_store_batch kept in message_events_ignored */
} sl_db_t;

/* The columns of a message, in the order sl_db_row_to_message reads them (url and edited_at exist
 * from schema version 2 on, meta from version 6). */
#define SL_DB_MESSAGE_COLUMNS "id, seq, channel, author, body, source, created_at, url, edited_at, meta"

/* The feed in seq order, messages and events (updates, deletes) together, as rows of
 * SL_DB_MESSAGE_COLUMNS plus the event's JSON (NULL on a message's row), which is column
 * SL_DB_FEED_EVENT_COLUMN. Put a WHERE on each part and join them with UNION ALL;
 * sl_event_from_row reads either kind. */
#define SL_DB_FEED_MESSAGES "SELECT " SL_DB_MESSAGE_COLUMNS ", NULL::text AS event FROM messages"
#define SL_DB_FEED_EVENTS                                                                                              \
    "SELECT NULL::uuid, seq, channel, NULL::text, NULL::text, NULL::varchar, NULL::timestamptz, NULL::text,"          \
    " NULL::timestamptz, NULL::jsonb, body FROM message_events"
#define SL_DB_FEED_EVENT_COLUMN 10

/* Migration 5's backfill of sluice_channels (in a transaction, after SL_DB_CHANNELS_LOCK, which
 * waits for the batches in flight and holds the next ones): recounts every channel from messages
 * and message_events. Run by hand (BEGIN; lock; backfill; COMMIT) it repairs the counts after a
 * persister older than migration 5 stored batches. */
#define SL_DB_CHANNELS_LOCK "SELECT last_seq FROM sluice_feed WHERE id = 1 FOR UPDATE"
#define SL_DB_CHANNELS_BACKFILL                                                                                        \
    "INSERT INTO sluice_channels (channel, last_seq, messages)"                                                        \
    " SELECT channel, max(seq), sum(live)::INT8 FROM (SELECT channel, seq,"                                            \
    " CASE WHEN deleted_at IS NULL THEN 1 ELSE 0 END AS live FROM messages"                                            \
    " UNION ALL SELECT channel, seq, 0 AS live FROM message_events) AS f GROUP BY channel"                             \
    " ON CONFLICT (channel) DO UPDATE SET last_seq = excluded.last_seq, messages = excluded.messages"

/* Connects (connect_timeout 5 s per host unless the URL says otherwise; a multi-host URL is tried
 * host by host, as libpq does), detects the server, sets the session time zone to UTC. Returns
 * SL_DB_OK or SL_DB_RETRY with err. Blocks (PQconnectdbParams): worker threads only (the persister's
 * writer, sl_migrator), never an event loop; loops connect through sl_pgpool. */
int sl_db_connect(sl_db_t *db, const char *url, char *err, size_t errlen);
/* Sets the server's statement_timeout to timeout_ms (0: none) and the client's deadline of every
 * later statement to 1 s more (the server cancels first, with 57014; the client's deadline is for a
 * server that does not answer at all; 0 keeps SL_DB_TIMEOUT_MS_DEFAULT). Returns SL_DB_OK or
 * SL_DB_RETRY. */
int sl_db_set_timeout(sl_db_t *db, int timeout_ms, char *err, size_t errlen);
void sl_db_close(sl_db_t *db);

/* Detects the kind from a version() string. */
sl_db_kind_t sl_db_kind_of(const char *version);
const char *sl_db_kind_name(sl_db_kind_t kind);

/* Applies the schema migrations not yet recorded in sluice_schema_migrations, each whose version
 * is not there (not only those past the highest: migrations made on parallel branches may land
 * in any order), in the order of their versions. Idempotent, safe
 * when several processes start at once (an advisory lock on PostgreSQL; on CockroachDB, which has
 * none, the race's "already exists" or 40001 fails the call and the caller tries again). Its
 * statements get a deadline of SL_DB_MIGRATE_TIMEOUT_MS each. Returns SL_DB_OK, SL_DB_ERROR or
 * SL_DB_RETRY with err. */
#define SL_DB_MIGRATE_TIMEOUT_MS 600000
int sl_db_migrate(sl_db_t *db, char *err, size_t errlen);
/* Connects to url and migrates, retrying any failure (a database not up yet, a migration race) for
 * up to wait_s seconds (or until *stop is set; stop may be NULL). Blocks: for a service's start, before its loop runs.
 * Returns SL_DB_OK, or the last failure (logged). */
int sl_db_migrate_url(const char *url, int wait_s, volatile sig_atomic_t *stop);

/* Highest applied migration version (0 if none), or -1 on error. */
int sl_db_schema_version(sl_db_t *db);

/* The part of storing a batch that does not need the database, done before sl_db_store_batch
 * (the persister does it on its consumer thread while the previous batch commits): which items
 * repeat an earlier one of the batch, events' created_at (the current time when 0), and, for a
 * batch of messages only, the column arrays of the insert. Valid while msgs keep their fields
 * (seq aside). Zero it before the first sl_db_batch_prepare. */
typedef struct sl_db_batch {
    char *is_new;       /* per item: 0 when it repeats an earlier item of the batch */
    int only_messages;  /* no update or delete in the batch: cols are filled */
    int assume_new;     /* the ids are expected not stored yet: the insert skips looking each one up
                         * (the primary key refuses a repeat, and the batch is then tried again with
                         * the lookups). sl_db_batch_prepare sets it when every id is a UUIDv7 (made
                         * once, by whoever accepted the post; ingest's UUIDv5 repeat); a caller that
                         * knows better (a redelivery) clears it. Only speed depends on it. */
    sl_buf_t cols[9];   /* id, channel, author, body, source, created_at, url, edited_at, meta */
} sl_db_batch_t;

/* Fills b for msgs[0..n) (freeing what it held). Returns 0, or -1 on no memory. */
int sl_db_batch_prepare(sl_db_batch_t *b, sl_message_t *msgs, size_t n);
void sl_db_batch_free(sl_db_batch_t *b);

/* Stores, in one transaction, the messages of msgs[0..n) whose id is not stored yet (nor repeated
 * earlier in msgs), giving them consecutive seq values in array order. On SL_DB_OK, msgs[i].seq is
 * the new position of each message stored now and 0 for each that was already there, and *stored
 * counts the former. Retries 40001/40P01 itself (up to max_retries, then SL_DB_RETRY). Calling it
 * again with the same batch after SL_DB_RETRY is safe whether or not the commit happened (a COMMIT
 * whose answer was lost): ids stored already are skipped; clear prepared->assume_new first, so the
 * insert looks them up rather than tripping on them. SL_DB_ERROR means the batch holds poison: store
 * its messages one at a time to find which. After SL_DB_RETRY the connection may be closed
 * already; close it in any case (sl_db_close) and reconnect.
 *
 * sluice_channels gets each channel's highest new seq and its count of messages stored now less
 * those an event deleted now, in the same transaction.
 *
 * Events (type update or delete) are numbered in the same sequence, in array order among the
 * messages, once per event_id: each becomes a message_events row (body = its live JSON) and is
 * applied to its message row if that exists (an update sets body, url, meta and edited_at unless
 * the message is deleted or has a newer edit, keeping url and meta when it has none; a delete
 * sets deleted_at). An event for a message never
 * stored is kept all the same, with the channel it came with; for a known message, msgs[i].channel
 * becomes the message's channel. An event's created_at_us of 0 becomes the current time. A message
 * whose delete is already recorded (or comes earlier in msgs) is not stored (seq 0), and neither
 * is an event for one (an edit or a second delete that lost a race with the delete): it gets no
 * seq, is neither applied nor published, and is kept in message_events_ignored instead (once per
 * event_id; a redelivery finds it there), logged (event=event_ignored) and counted in
 * db->last_ignored. */
/* prepared: NULL, or sl_db_batch_prepare of these msgs. */
int sl_db_store_batch(sl_db_t *db, sl_message_t *msgs, size_t n, const sl_db_batch_t *prepared, size_t *stored,
                      char *err, size_t errlen);

/* Runs one statement with text parameters within the connection's deadline (sl_db_set_timeout).
 * Returns SL_DB_OK (*out, when out is not NULL, is its result: the caller PQclears it),
 * SL_DB_ERROR (poison) or SL_DB_RETRY (transient; the connection may have been closed), with err
 * and, when out is not NULL, the failed result in *out (for its SQLSTATE; may be NULL). */
int sl_db_exec(sl_db_t *db, const char *sql, int nparams, const char *const *params, PGresult **out, char *err,
               size_t errlen);

/* Fills m from row of a result whose columns are SL_DB_MESSAGE_COLUMNS (or its first 7, as before
 * schema version 2, or its first 9, before version 6). m->meta (canonical, sl_meta.h) is the
 * caller's to free with sl_message_clear; a stored meta that is not a JSON object is left out.
 * Returns 0, or -1 (then m->meta is NULL). */
int sl_db_row_to_message(const PGresult *res, int row, sl_message_t *m);

/* SQLSTATE of a result ("" when none). */
const char *sl_db_sqlstate(const PGresult *res);
/* 1 when the transaction can be retried at once on the same connection (40001, 40P01). */
int sl_db_is_retryable(const char *sqlstate);
/* 1 when the connection cannot be used any more (lost, 08xxx, 57P01-57P03 shutdown). */
int sl_db_is_connection_error(PGconn *conn, const char *sqlstate);
/* 1 when sqlstate says the data itself is at fault (classes 22 and 23): poison. Anything else, ""
 * (no SQLSTATE: a lost connection, a timeout) included, is transient. */
int sl_db_is_poison(const char *sqlstate);

#endif
