/*
 * sl_ingest: the ingest service on its h2o event loop: takes what the Mastodon reader
 * (sl_ingest_reader, its own thread) hands over and publishes it to the persist queue with
 * publisher confirms (sl_publisher), and serves the control endpoint.
 *
 * Nothing read is dropped for back pressure: a publish the broker refuses (queue full, blocked,
 * down, too many unconfirmed) is kept and retried, oldest first, after a growing delay. While
 * anything waits for a retry, or max_unconfirmed publishes await their confirm, the loop takes
 * nothing more from the reader; its small queue fills, the reader stops reading, and TCP pushes
 * back on Mastodon. A lost confirm is published again (the persister stores an id once).
 *
 * HTTP (sl_ingest_handle):
 *   GET  /v1/ingest                     state, source, mode, connected since, counters, last error
 *   POST /v1/ingest {"command":"start"|"stop"}   start or stop reading; answers like GET
 *   GET  /healthz, /readyz (broker reachable and not blocking us), /metrics
 *
 * Threading: everything here runs on the loop's thread.
 */
#ifndef SL_INGEST_H
#define SL_INGEST_H

#define H2O_USE_LIBUV 0
#include <h2o.h>

#include "sl_ingest_reader.h"

typedef struct sl_ingest_conf {
    const char *amqp_url;
    long long queue_max_length;            /* x-max-length of the persist queue (as everywhere) */
    long long queue_max_bytes;             /* its x-max-length-bytes (as everywhere) */
    long long max_unconfirmed;             /* publishes awaiting their confirm */
    long long retry_min_ms, retry_max_ms;  /* delay before publishing a refused item again */
    const char *mastodon_url;              /* as configured, for GET /v1/ingest */
    const char *admin_token;               /* required on /v1/ingest when not empty */
    sl_ingest_reader_conf_t reader;        /* wake_fd is filled in by sl_ingest_create */
} sl_ingest_conf_t;

typedef struct sl_ingest sl_ingest_t;

/* Connects to the broker (in the background) and prepares the reader; reads nothing yet. The
 * conf's strings must outlive the service. NULL on no memory (or no eventfd). */
sl_ingest_t *sl_ingest_create(h2o_loop_t *loop, const sl_ingest_conf_t *conf);

/* The sl_http handler: data is the sl_ingest_t. */
int sl_ingest_handle(void *data, h2o_req_t *req);

/* Start or stop reading Mastodon (as the control endpoint does). start returns 0 or -1. */
int sl_ingest_start(sl_ingest_t *g);
void sl_ingest_stop(sl_ingest_t *g);

/* Stops reading and waits for the reading thread to end (it does so at once: no request blocks
 * it). Items it read stay pending and are still published. */
void sl_ingest_stop_and_join(sl_ingest_t *g);

/* Items read but not confirmed by the broker yet (in the reader's queue, waiting, in flight). */
size_t sl_ingest_pending(sl_ingest_t *g);

/* Frees; pending items are lost (log line with their number). */
void sl_ingest_destroy(sl_ingest_t *g);

#endif
