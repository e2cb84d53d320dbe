/*
 * sl_ingest: the ingest service on its h2o event loop: takes what the Mastodon readers hand over
 * (one sl_ingest_reader per source, each its own thread, its own connection and cursor) and
 * publishes it to the persist queue with publisher confirms (sl_publisher), and serves the
 * control endpoint. A source is an instance and one of its streams; several sources may name one
 * instance (two streams of it). The same post read by two sources is one message (sl_mastodon.h).
 *
 * Nothing read is dropped for back pressure: a publish the broker refuses (queue full, blocked,
 * down, too many unconfirmed) is kept and retried, oldest first, after a growing delay. While
 * anything waits for a retry, or max_unconfirmed publishes await their confirm, the loop takes
 * nothing more from the reader; its small queue fills, the reader stops reading, and TCP pushes
 * back on Mastodon. A lost confirm is published again (the persister stores an id once). The
 * loop takes from the sources in turn, so a busy one does not starve the others.
 *
 * HTTP (sl_ingest_handle):
 *   GET  /v1/ingest                     state, source, mode, connected since, counters, last error
 *                                       of the whole, and the same per source ("sources")
 *   POST /v1/ingest {"command":"start"|"stop"}   start or stop reading (every source); answers like GET
 *   GET  /healthz, /readyz (broker reachable and not blocking us), /metrics
 *
 * Threading: everything here runs on the loop's thread.
 */
#ifndef SL_INGEST_H
#define SL_INGEST_H

#define H2O_USE_LIBUV 0
#include <h2o.h>

#include "sl_ingest_reader.h"
#include "sl_mastodon.h"

#define SL_INGEST_MAX_SOURCES 16
#define SL_INGEST_TOKEN_MAX 512

/* One source: where to read and how. */
typedef struct sl_ingest_source {
    char instance[SL_MASTODON_INSTANCE_MAX]; /* normalized (sl_mastodon_instance_norm) */
    char stream[256];                        /* public, public:local or hashtag:<tag> */
    char token[SL_INGEST_TOKEN_MAX];         /* "" for none (then it polls) */
} sl_ingest_source_t;

/* The sources of SLUICE_MASTODON_URL (urls: a comma-separated list of up to SL_INGEST_MAX_SOURCES
 * instance URLs, spaces around entries ignored), SLUICE_MASTODON_STREAM and SLUICE_MASTODON_TOKEN
 * (streams, tokens: NULL or one value for every source, or a comma-separated list with one entry
 * per source; an empty token entry means none). A token is sent only to its own instance: one
 * token for sources on several instances is refused. So is a source listed twice (same instance
 * and stream). Fills out[0..*n). Returns 0, or -1 with a sentence in err (never a token). */
int sl_ingest_sources_parse(const char *urls, const char *streams, const char *tokens, sl_ingest_source_t *out,
                            size_t *n, char *err, size_t errlen);

typedef struct sl_ingest_conf {
    const char *amqp_url;
    long long queue_max_length;            /* x-max-length of the persist queue (as everywhere) */
    long long queue_max_bytes;             /* its x-max-length-bytes (as everywhere) */
    long long max_unconfirmed;             /* publishes awaiting their confirm */
    long long retry_min_ms, retry_max_ms;  /* delay before publishing a refused item again */
    const char *mastodon_url;              /* as configured, for GET /v1/ingest */
    const char *mastodon_stream;           /* as configured, for GET /v1/ingest */
    const char *admin_token;               /* required on /v1/ingest when not empty */
    const sl_ingest_source_t *sources;     /* 1 to SL_INGEST_MAX_SOURCES; copied by sl_ingest_create */
    size_t nsources;
    sl_ingest_reader_conf_t reader;        /* every reader's settings: instance, token, stream, label and
                                            * wake_fd are filled in per source by sl_ingest_create */
} sl_ingest_conf_t;

typedef struct sl_ingest sl_ingest_t;

/* Connects to the broker (in the background) and prepares the reader; reads nothing yet. The
 * conf's strings must outlive the service. NULL on no memory (or no eventfd). */
sl_ingest_t *sl_ingest_create(h2o_loop_t *loop, const sl_ingest_conf_t *conf);

/* The sl_http handler: data is the sl_ingest_t. */
int sl_ingest_handle(void *data, h2o_req_t *req);

/* Start or stop reading every source (as the control endpoint does). start returns 0, or -1 when a
 * reading thread could not be made (the sources started stay started). */
int sl_ingest_start(sl_ingest_t *g);
void sl_ingest_stop(sl_ingest_t *g);

/* Stops reading and waits for the reading threads to end (it does so at once: no request blocks
 * it). Items it read stay pending and are still published. */
void sl_ingest_stop_and_join(sl_ingest_t *g);

/* Items read but not confirmed by the broker yet (in the readers' queues, waiting, in flight). */
size_t sl_ingest_pending(sl_ingest_t *g);

/* Frees; pending items are lost (log line with their number). */
void sl_ingest_destroy(sl_ingest_t *g);

#endif
