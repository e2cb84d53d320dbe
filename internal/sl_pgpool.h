/*
 * sl_pgpool: asynchronous SQL for services built on an h2o event loop; nothing in it blocks.
 *
 * A few libpq connections in non-blocking mode, each watched by the loop; queries wait in one
 * FIFO and go to the next idle connection. A query that fails with SQLSTATE 40001/40P01 is sent
 * again (up to 3 times), so callers see serialization retries only as latency.
 *
 * Connecting runs on the loop too (PQconnectStartParams + PQconnectPoll), with a deadline per
 * host that covers the whole attempt (TCP, TLS, authentication, target_session_attrs, the session
 * setup). libpq ignores connect_timeout in this mode, so the pool times out itself. A URL naming
 * several hosts (host=a,b / postgresql://a,b/…) is tried host by host, each with its own deadline,
 * starting with the host that answered last; a host that hangs, refuses or is read-only (with
 * target_session_attrs=read-write) moves on to the next. Lost connections are opened again at
 * once, then every reconnect_ms while the database stays away.
 *
 * Every query has a deadline, query_timeout_ms from sl_pgpool_query: its callback runs by then,
 * with "database query timed out" if no answer came. The session's statement_timeout is 90% of it,
 * so a slow statement is usually ended by the server first (an error, the connection stays). If a
 * running statement gets no answer within query_timeout_ms of being sent (server hung, network
 * gone), its connection is dropped and opened again: dropping it is the cancel (PQcancel blocks).
 *
 * Limitation: a host name is resolved by libpq with getaddrinfo(), which blocks; name hosts by
 * address (or hostaddr=) where the resolver may be slow.
 *
 * Threading: the loop's thread only.
 */
#ifndef SL_PGPOOL_H
#define SL_PGPOOL_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <libpq-fe.h>

#include "sl_db.h"

typedef struct sl_pgpool sl_pgpool_t;
typedef struct sl_pgquery sl_pgquery_t;

/* res is the result on success (PGRES_TUPLES_OK or PGRES_COMMAND_OK), valid only during the
 * call; on failure res is NULL and err says why. Runs on the loop, exactly once, unless cancelled;
 * never from inside sl_pgpool_query or sl_pgpool_cancel. */
typedef void (*sl_pg_cb)(void *data, const PGresult *res, const char *err);

typedef struct sl_pgpool_conf {
    const char *url;        /* libpq URL or key=value string (copied) */
    size_t nconns;          /* connections */
    size_t max_queue;       /* queries waiting for a connection before sl_pgpool_query refuses */
    int reconnect_ms;       /* pause between connection attempts while the database is away */
    int connect_timeout_ms; /* per host, the whole attempt; 0: 5000 */
    int query_timeout_ms;   /* from sl_pgpool_query to the callback; 0: 10000 */
} sl_pgpool_conf_t;

#define SL_PGPOOL_CONNECT_TIMEOUT_MS 5000
#define SL_PGPOOL_QUERY_TIMEOUT_MS 10000

/* Starts connecting (on the loop: this returns at once). NULL on no memory. */
sl_pgpool_t *sl_pgpool_create(h2o_loop_t *loop, const sl_pgpool_conf_t *conf);

/* Queues sql with nparams text parameters (copied; sql itself must be a string that outlives the
 * query, e.g. a literal). Returns a handle, valid until the callback has run or the query is
 * cancelled. Returns NULL without calling cb when max_queue queries already wait, or when no
 * connection is up and the last attempt to open one failed (a query made while the first
 * connections are still being opened waits for them). */
sl_pgquery_t *sl_pgpool_query(sl_pgpool_t *p, const char *sql, int nparams, const char *const *params, sl_pg_cb cb,
                              void *data);

/* The callback of q will not run (a statement already sent may still execute). q is invalid after
 * this. */
void sl_pgpool_cancel(sl_pgquery_t *q);

int sl_pgpool_ready(const sl_pgpool_t *p);      /* at least one connection is up (and set up) */
size_t sl_pgpool_pending(const sl_pgpool_t *p); /* queued plus running */
sl_db_kind_t sl_pgpool_kind(const sl_pgpool_t *p);

/* Closes every connection; callbacks of pending queries run with an error first. */
void sl_pgpool_destroy(sl_pgpool_t *p);

#endif
