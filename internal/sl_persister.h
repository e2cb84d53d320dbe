/*
 * sl_persister: moves messages from the persist queue into the database, exactly once, and then
 * announces them on the live exchange.
 *
 * It consumes with a prefetch window; a delivery holds one or more messages, one per line
 * (sl_amqp.h). Up to batch_size messages (see batch_ms for when a batch is not full) are stored
 * in one transaction; the newly stored ones are then published in seq order to the live exchange
 * as one message, and only then is the batch acked (one multiple ack). A crash anywhere before the
 * ack redelivers the batch; ids already stored are skipped, so nothing is stored twice. A message
 * that cannot be decoded, or that the database refuses on its own, goes to the dead-letter queue
 * with a log line and never blocks the queue: it is published to the dead-letter exchange (with
 * the reason in an x-sluice-error header) and acked only once the broker confirmed that publish.
 * "Refuses on its own" means poison (SQLSTATE class 22 or 23, see sl_db.h), found by storing the
 * batch one message at a time. Every other failure (broker or database down, a failover, a
 * read-only or overloaded server, a timeout) is transient: the unacked batch is kept and retried
 * with backoff for as long as it takes, never dead-lettered; /readyz says 503 meanwhile and
 * sluice_persister_retrying_seconds shows for how long.
 *
 * Two threads: the caller's (the consumer) owns the broker connection, decodes deliveries into
 * the next batch, and publishes and acks committed batches; a writer thread owns the database
 * connection and commits one batch at a time. So the next batch is read while the previous one
 * commits, and commits stay in order. (prefetch should be at least twice batch_size for that.)
 *
 * Updates and deletes of messages (queue items with "type":"update"|"delete", see sl_message.h)
 * travel the same way: numbered in the same sequence, stored and applied in the batch transaction
 * (sl_db_store_batch), then published live in seq order among the messages, as
 * {"type":"update"|"delete","id","channel",...,"seq"}.
 *
 * sl_persister_run blocks in the calling thread until *stop becomes non-zero. Its statistics can
 * be read from another thread with sl_persister_render_metrics.
 */
#ifndef SL_PERSISTER_H
#define SL_PERSISTER_H

#include <signal.h>

#include "sl_buf.h"

typedef struct sl_persister_conf {
    const char *amqp_url;
    const char *db_url;
    long long queue_max_length;
    long long queue_max_bytes; /* x-max-length-bytes of the persist queue (0: none) */
    long long batch_size;  /* messages per transaction */
    long long batch_ms;    /* longest wait for a batch to fill; 0: it goes to the writer as soon as
                            * the writer is free (what arrived during one commit makes the next) */
    long long prefetch;    /* unacked deliveries the broker may send ahead (>= batch_size) */
    long long db_timeout_ms; /* the server's statement_timeout; the client gives up 1 s later */
} sl_persister_conf_t;

typedef struct sl_persister sl_persister_t;

sl_persister_t *sl_persister_create(const sl_persister_conf_t *conf);
/* Returns 0 after a clean stop (the last batch committed and acked, or left unacked for
 * redelivery when the database was unreachable). */
int sl_persister_run(sl_persister_t *p, volatile sig_atomic_t *stop);
void sl_persister_destroy(sl_persister_t *p);

/* Thread-safe: the counters in Prometheus text, and readiness (broker and database connected, and
 * no batch waiting for the database). */
void sl_persister_render_metrics(sl_persister_t *p, sl_buf_t *out);
int sl_persister_ready(sl_persister_t *p);

#endif
