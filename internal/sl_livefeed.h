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
 *
 * The same connection carries the instances' presence (sl_presence.h) when a presence exchange is
 * named: a second private queue (exclusive, auto-delete, capped in bytes) bound to that fanout
 * exchange, whose deliveries go to on_presence, and sl_livefeed_publish_presence to send this
 * instance's snapshots there. The presence exchange is declared like the live one (passively under
 * SLUICE_AMQP_DECLARE=passive: the persister declares it), so the broker user also needs write and
 * read on it. The connection's send buffer is raised (SL_LIVEFEED_SNDBUF) so that a snapshot part
 * fits in it: a publish is only made when it does, so it never blocks the loop.
 */
#ifndef SL_LIVEFEED_H
#define SL_LIVEFEED_H

#define H2O_USE_LIBUV 0
#include <h2o.h>

typedef struct sl_livefeed_handlers {
    void (*on_message)(void *data, const char *body, size_t len);
    /* up = 1 after (re)connecting, 0 when the connection is lost. */
    void (*on_state)(void *data, int up);
    /* A message of the presence exchange (sent by any instance, this one included). May be NULL
     * when no presence exchange is named. */
    void (*on_presence)(void *data, const char *body, size_t len);
} sl_livefeed_handlers_t;

typedef struct sl_livefeed sl_livefeed_t;

/* The private queue never holds more than this many bytes, whatever max_backlog says: a live
 * message is a whole committed batch (sl_amqp.h), up to a few MB. */
#define SL_LIVEFEED_MAX_BYTES (64LL * 1024 * 1024)
/* The presence queue's cap in bytes (oldest dropped first; snapshots also expire on their own). */
#define SL_LIVEFEED_PRESENCE_MAX_BYTES (16LL * 1024 * 1024)
/* SO_SNDBUF asked for the connection (the kernel caps it at net.core.wmem_max and doubles it). */
#define SL_LIVEFEED_SNDBUF (1024 * 1024)

/* url (one AMQP URL or a comma-separated list), exchange, presence_exchange and name must outlive
 * the feed; presence_exchange NULL: no presence. max_backlog caps the private queue in live
 * messages (oldest dropped first: the hub backfills them). Starts connecting in the background.
 * NULL on no memory or a bad URL list (logged). */
sl_livefeed_t *sl_livefeed_create(h2o_loop_t *loop, const char *url, const char *exchange,
                                  const char *presence_exchange, const char *name, long long max_backlog,
                                  const sl_livefeed_handlers_t *h, void *data);
/* Publishes body to the presence exchange (transient, with a per-message expiration of
 * expiration_ms, so that a backlog never replays stale snapshots). Never blocks: returns 0 when
 * it went out, 1 when the socket has no room for it now (try again shortly), -1 when there is no
 * connection (or the write failed: the connection is dropped and the next node tried). */
int sl_livefeed_publish_presence(sl_livefeed_t *f, const void *body, size_t len, long long expiration_ms);
int sl_livefeed_up(const sl_livefeed_t *f);
unsigned long sl_livefeed_connects(const sl_livefeed_t *f);
void sl_livefeed_destroy(sl_livefeed_t *f);

#endif
