/*
 * sl_livefeed: the streaming service's view of the live exchange. It binds a private queue
 * (exclusive, auto-delete, capped) to the live topic exchange for every routing key and hands
 * each message body to the owner, on the loop. Deliveries are not acknowledged (no-ack): the
 * database is the record, and the hub fills any gap from it.
 *
 * Every instance has its own queue, so N instances each see every message. Loop thread only.
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

/* url, exchange and name must outlive the feed. max_backlog caps the private queue in live
 * messages (oldest dropped first: the hub backfills them). NULL on no memory. */
sl_livefeed_t *sl_livefeed_create(h2o_loop_t *loop, const char *url, const char *exchange, const char *name,
                                  long long max_backlog, const sl_livefeed_handlers_t *h, void *data);
int sl_livefeed_up(const sl_livefeed_t *f);
unsigned long sl_livefeed_connects(const sl_livefeed_t *f);
void sl_livefeed_destroy(sl_livefeed_t *f);

#endif
