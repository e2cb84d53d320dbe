/*
 * sl_livefeed: the streaming service's view of the live exchange. It binds a private queue
 * (exclusive, auto-delete, capped) to the live topic exchange for every routing key and hands
 * each message body to the owner, on the loop. Deliveries are not acknowledged (no-ack): the
 * database is the record, and the hub fills any gap from it.
 *
 * Every instance has its own queue, so N instances each see every message. The connection is
 * sl_amqploop's: url may list several nodes; after a reconnect (to the same or another node) the
 * queue is declared and bound anew and on_state(1) runs, so the owner can look for what it missed
 * (sl_sse: sl_hub_check backfills from the database by seq). The exchange is declared as a
 * subscriber does (sl_amqp_declare, SL_AMQP_ROLE_SUBSCRIBER): passively under
 * SLUICE_AMQP_DECLARE=passive, so that the broker user needs rights on its own amq.gen-* queues
 * only, plus read on the exchange; a missing exchange is logged once (event=amqp_topology_missing)
 * and retried. Loop thread only; connecting does not block it.
 */
#ifndef SL_LIVEFEED_H
#define SL_LIVEFEED_H

#define H2O_USE_LIBUV 0
#include <h2o.h>

typedef struct sl_livefeed_handlers {
    void (*on_message)(void *data, const char *body, size_t len);
    /* up = 1 after (re)connecting, 0 when the connection is lost. */
    void (*on_state)(void *data, int up);
} sl_livefeed_handlers_t;

typedef struct sl_livefeed sl_livefeed_t;

/* The private queue never holds more than this many bytes, whatever max_backlog says: a live
 * message is a whole committed batch (sl_amqp.h), up to a few MB. */
#define SL_LIVEFEED_MAX_BYTES (64LL * 1024 * 1024)

/* url (one AMQP URL or a comma-separated list), exchange and name must outlive the feed.
 * max_backlog caps the private queue in live messages (oldest dropped first: the hub backfills
 * them). Starts connecting in the background. NULL on no memory or a bad URL list (logged). */
sl_livefeed_t *sl_livefeed_create(h2o_loop_t *loop, const char *url, const char *exchange, const char *name,
                                  long long max_backlog, const sl_livefeed_handlers_t *h, void *data);
int sl_livefeed_up(const sl_livefeed_t *f);
unsigned long sl_livefeed_connects(const sl_livefeed_t *f);
void sl_livefeed_destroy(sl_livefeed_t *f);

#endif
