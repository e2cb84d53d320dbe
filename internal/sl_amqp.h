/*
 * sl_amqp: the RabbitMQ side every service shares: opening a connection (with the
 * connection.blocked capability advertised), declaring sluice's topology, and error text.
 *
 * Topology (declared idempotently by every service that connects):
 *   - persist queue (quorum, durable) with x-max-length and x-overflow=reject-publish, so a full
 *     queue nacks publishes instead of dropping them. A message on it holds one to
 *     SL_AMQP_MAX_LINES queue items (sl_message_to_json), one per line; x-max-length counts
 *     messages. Rejected deliveries dead-letter to
 *   - the dead-letter exchange (fanout) and its queue "<queue>.dead";
 *   - the live exchange (topic) that stored messages are published to after each commit: one
 *     message per committed batch (routing key SL_LIVE_ROUTING_KEY, content type
 *     SL_LIVE_CONTENT_TYPE), its body the batch's new messages and events in seq order, one
 *     compact JSON object per line (no trailing newline). A consumer splits it at '\n' (JSON text
 *     never holds a raw line break) and handles each line as one event.
 * The calls here block (connect, login, RPCs); they are bounded by the timeout given to
 * sl_amqp_open. Not thread-safe: one connection per thread.
 */
#ifndef SL_AMQP_H
#define SL_AMQP_H

#include <amqp.h>
#include <stddef.h>

#define SL_AMQP_CHANNEL 1
#define SL_AMQP_MAX_LINES 256                /* items per message on the persist queue */
#define SL_AMQP_MAX_BATCH_BYTES (256 * 1024) /* a batch goes out before it would pass this */
#define SL_LIVE_ROUTING_KEY "feed"
#define SL_LIVE_CONTENT_TYPE "application/x-ndjson"

typedef struct sl_amqp_topology {
    const char *persist_queue;  /* default "sluice.persist" */
    long long max_length;       /* x-max-length of the persist queue */
    const char *live_exchange;  /* default "sluice.live" */
    const char *dead_exchange;  /* default "sluice.dlx" */
} sl_amqp_topology_t;

/* Defaults for the names, from SLUICE_QUEUE / SLUICE_LIVE_EXCHANGE where set. */
void sl_amqp_topology_defaults(sl_amqp_topology_t *t, long long max_length);

/* Connects to url (amqp://user:pass@host:port/vhost), logs in with the given heartbeat, opens
 * channel SL_AMQP_CHANNEL. Every step is bounded by timeout_ms. Returns the connection, or NULL
 * with a sentence in err. */
amqp_connection_state_t sl_amqp_open(const char *url, const char *conn_name, int heartbeat_s, int timeout_ms, char *err,
                                     size_t errlen);

/* Declares the topology on SL_AMQP_CHANNEL. Returns 0, or -1 with err (the channel or connection
 * may then be closed by the broker: close the connection). */
int sl_amqp_declare(amqp_connection_state_t conn, const sl_amqp_topology_t *t, char *err, size_t errlen);

/* Closes politely (bounded by the connection's rpc timeout) and frees. NULL is a no-op. */
void sl_amqp_close(amqp_connection_state_t conn);

/* Text for an RPC reply ("server connection error 320: CONNECTION_FORCED - ..."). */
const char *sl_amqp_reply_text(amqp_rpc_reply_t r, char *buf, size_t len);

#endif
