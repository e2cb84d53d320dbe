/*
 * sl_pgpool: asynchronous SQL for services built on an h2o event loop.
 *
 * A few libpq connections in non-blocking mode, each watched by the loop; queries wait in one
 * FIFO and go to the next idle connection. A query that fails with SQLSTATE 40001/40P01 is sent
 * again (up to 3 times), so callers see serialization retries only as latency. Lost connections
 * are re-opened every reconnect_ms; (re)connecting blocks the loop for at most the connect
 * timeout (5 s; a server on loopback answers in milliseconds).
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
 * call; on failure res is NULL and err says why. Runs on the loop, exactly once, unless cancelled. */
typedef void (*sl_pg_cb)(void *data, const PGresult *res, const char *err);

/* Opens nconns connections to url now (failures are logged and retried). NULL on no memory. */
sl_pgpool_t *sl_pgpool_create(h2o_loop_t *loop, const char *url, size_t nconns, size_t max_queue, int reconnect_ms);

/* Queues sql with nparams text parameters (copied; sql itself must be a string that outlives the
 * query, e.g. a literal). Returns a handle, or NULL without calling cb when no connection is up
 * or max_queue queries already wait. */
sl_pgquery_t *sl_pgpool_query(sl_pgpool_t *p, const char *sql, int nparams, const char *const *params, sl_pg_cb cb,
                              void *data);

/* The callback of q will not run (the statement itself may still execute). */
void sl_pgpool_cancel(sl_pgquery_t *q);

int sl_pgpool_ready(const sl_pgpool_t *p);      /* at least one connection is up */
size_t sl_pgpool_pending(const sl_pgpool_t *p); /* queued plus running */
sl_db_kind_t sl_pgpool_kind(const sl_pgpool_t *p);

/* Closes every connection; callbacks of pending queries run with an error first. */
void sl_pgpool_destroy(sl_pgpool_t *p);

#endif
