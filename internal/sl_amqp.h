/*
 * sl_amqp: the RabbitMQ side every service shares: opening a connection (with the
 * connection.blocked capability advertised), declaring sluice's topology, and error text.
 *
 * Topology (declared idempotently by its owner, the persister, and by default by every other
 * service too; see sl_amqp_role_t for SLUICE_AMQP_DECLARE=passive):
 *   - persist queue (quorum, durable) with x-max-length and x-overflow=reject-publish, so a full
 *     queue nacks publishes instead of dropping them. A message on it holds one to
 *     SL_AMQP_MAX_LINES queue items (sl_message_to_json), one per line; x-max-length counts
 *     messages. Rejected deliveries dead-letter to
 *   - the dead-letter exchange (fanout) and its queue "<queue>.dead" (quorum, so that it outlives
 *     a node; one made as classic by an older version is left as it is, and while it cannot be
 *     declared, e.g. its home node is down, the rest is declared anyway: see sl_amqp_declare);
 *   - the live exchange (topic) that stored messages are published to after each commit: one
 *     message per committed batch (routing key SL_LIVE_ROUTING_KEY, content type
 *     SL_LIVE_CONTENT_TYPE), its body the batch's new messages and events in seq order, one
 *     compact JSON object per line (no trailing newline). A consumer splits it at '\n' (JSON text
 *     never holds a raw line break) and handles each line as one event;
 *   - the presence exchange (fanout) the sse instances publish their presence snapshots to and
 *     each read through a queue of its own (sl_presence.h, sl_livefeed.h).
 * The calls here block (connect, login, RPCs); they are bounded by the timeout given to
 * sl_amqp_open. Not thread-safe: one connection per thread (a connection may be handed from one
 * thread to another whole, with a happens-before such as a pipe write and read).
 *
 * SLUICE_AMQP_URL is a comma-separated list of up to SL_AMQP_MAX_URLS broker URLs (the nodes of
 * a cluster): sl_amqp_urls_parse checks it, sl_amqp_open_next walks it. URLs are logged without
 * their password (sl_amqp_url_redact).
 */
#ifndef SL_AMQP_H
#define SL_AMQP_H

#include <amqp.h>
#include <stddef.h>

#define SL_AMQP_CHANNEL 1
#define SL_AMQP_MAX_LINES 256                /* items per message on the persist queue */
#define SL_AMQP_MAX_BATCH_BYTES (256 * 1024) /* a batch goes out before it would pass this */
/* A persist-queue message with this header (boolean true) holds lines that are one request's (a
 * POST /v1/messages/batch): the persister stores them in one transaction, and refuses them (to the
 * dead-letter queue) all together, never some of them. */
#define SL_AMQP_ATOMIC_HEADER "x-sluice-atomic"
#define SL_LIVE_ROUTING_KEY "feed"
#define SL_LIVE_CONTENT_TYPE "application/x-ndjson"

/* What a service does with the topology, hence what it declares. RabbitMQ checks `configure` on
 * every object declared (and read and write for a queue's dead-letter exchange), and nothing for a
 * passive declare: one owner declaring everything and the others only checking, passively, that
 * what they use is there lets a broker user per service have no more rights than its work needs
 * (README, "Access control"). */
typedef enum {
    SL_AMQP_ROLE_OWNER = 0, /* the persister (and tools): declares the whole topology, always */
    SL_AMQP_ROLE_PUBLISHER, /* api, ingest: publish to the persist queue */
    SL_AMQP_ROLE_SUBSCRIBER /* sse: binds queues of its own to the live and presence exchanges */
} sl_amqp_role_t;

typedef struct sl_amqp_topology {
    const char *persist_queue;  /* default "sluice.persist" */
    long long max_length;       /* x-max-length of the persist queue, in AMQP messages (1 to 256 posts each) */
    long long max_bytes;        /* x-max-length-bytes of the persist queue: the bound in bytes of message
                                 * bodies, which is what makes "full" predictable in posts; 0: none */
    const char *live_exchange;  /* default "sluice.live" */
    const char *presence_exchange; /* default "sluice.presence"; NULL: none (not declared) */
    const char *dead_exchange;  /* default "sluice.dlx" */
    sl_amqp_role_t role;        /* default SL_AMQP_ROLE_OWNER */
    /* SLUICE_AMQP_DECLARE=passive: a role other than the owner declares only the object it uses,
     * passively (the persist queue for a publisher, the live and presence exchanges for a subscriber), so its
     * user needs no configure right; while the owner has not declared it yet, setup fails with
     * SL_AMQP_TOPOLOGY_MISSING and is retried. 0 (SLUICE_AMQP_DECLARE=all, the default): every
     * role declares as the owner does, except a subscriber, which declares the two exchanges only;
     * any service may then come first, with a user that may configure everything (guest). */
    int passive;
} sl_amqp_topology_t;

/* Defaults for the names, from SLUICE_QUEUE / SLUICE_LIVE_EXCHANGE / SLUICE_PRESENCE_EXCHANGE where set; role OWNER; passive
 * from SLUICE_AMQP_DECLARE (a value other than "passive" counts as "all": check it at startup with
 * sl_amqp_declare_check). */
void sl_amqp_topology_defaults(sl_amqp_topology_t *t, long long max_length, long long max_bytes);
#define SL_AMQP_MAX_BYTES_DEFAULT "268435456" /* 256 MiB: about a million posts of 250 bytes */

/* 1 when props carry SL_AMQP_ATOMIC_HEADER set to true. */
int sl_amqp_is_atomic(const amqp_basic_properties_t *props);

/* SLUICE_AMQP_DECLARE for a service's startup check: unset, empty, "all" or "passive" give 0; any
 * other value -1 with a sentence in err. */
int sl_amqp_declare_check(char *err, size_t errlen);

#define SL_AMQP_MAX_URLS 16

/* A parsed URL list. url[i] is the i-th entry, trimmed; shown[i] the same without its password. */
typedef struct sl_amqp_urls {
    size_t n;
    char *url[SL_AMQP_MAX_URLS];
    char *shown[SL_AMQP_MAX_URLS];
} sl_amqp_urls_t;

/* Parses a comma-separated list (whitespace around entries ignored). Every entry must be a valid
 * AMQP URL; an empty entry, an empty list or more than SL_AMQP_MAX_URLS entries is refused.
 * Returns 0 (free u with sl_amqp_urls_free), or -1 with a sentence in err (which never holds a
 * password) and u left empty. */
int sl_amqp_urls_parse(sl_amqp_urls_t *u, const char *list, char *err, size_t errlen);
void sl_amqp_urls_free(sl_amqp_urls_t *u);
/* sl_amqp_urls_parse for a service's startup check: 0, or -1 with err. */
int sl_amqp_urls_check(const char *list, char *err, size_t errlen);

/* url for a log line: "amqp://user:secret@host/" becomes "amqp://user@host/". Returns buf. */
const char *sl_amqp_url_redact(const char *url, char *buf, size_t len);

/* Connects to url (amqp://user:pass@host:port/vhost), logs in with the given heartbeat, opens
 * channel SL_AMQP_CHANNEL. Every step is bounded by timeout_ms. Returns the connection, or NULL
 * with a sentence in err. A list of URLs is tried in order, from the first (see
 * sl_amqp_open_next to go on from where the last connection was). */
amqp_connection_state_t sl_amqp_open(const char *url, const char *conn_name, int heartbeat_s, int timeout_ms, char *err,
                                     size_t errlen);

/* For a blocking connector (a thread of its own): tries the URLs of list (comma-separated) from
 * index *cursor on, each once, wrapping around, each as sl_amqp_open does. On success *cursor is
 * left on the URL after the one connected to, so the next call (after that connection is lost)
 * starts with the next node; one line is logged (event=amqp_node) naming the node. On failure
 * (NULL, err holds each node's reason) *cursor moves on by one. *cursor may start at 0. */
amqp_connection_state_t sl_amqp_open_next(const char *list, size_t *cursor, const char *conn_name, int heartbeat_s,
                                          int timeout_ms, char *err, size_t errlen);

/* sl_amqp_open of one URL, calling on_socket(arg, fd) (if not NULL) once the TCP connection is
 * made, before login: another thread may then shutdown(2) fd to cut a stalled login or setup
 * short. The callback runs on the calling thread. */
amqp_connection_state_t sl_amqp_open_hooked(const char *url, const char *conn_name, int heartbeat_s, int timeout_ms,
                                            void (*on_socket)(void *arg, int fd), void *arg, char *err, size_t errlen);

#define SL_AMQP_TOPOLOGY_MISSING (-2)

/* Declares what t->role and t->passive call for (see sl_amqp_topology_t) on SL_AMQP_CHANNEL. The
 * whole topology: the dead-letter exchange, the dead-letter queue (on channel SL_AMQP_CHANNEL + 1,
 * opened and closed here, so that its failure is logged, event=amqp_dead_queue_unavailable, and
 * not fatal: after the loss of a node a classic one may be unreachable until it is back), the
 * persist queue, the live exchange, the presence exchange (when named). Returns 0; SL_AMQP_TOPOLOGY_MISSING with err when a passive
 * declare found the object missing (404: its owner has not declared it yet; the channel is closed,
 * close the connection and try again later); or -1 with err (the channel or connection may then be
 * closed by the broker: close the connection). Logs nothing but the dead-letter queue's failure:
 * the caller says what a missing topology means for it (event=amqp_topology_missing). */
int sl_amqp_declare(amqp_connection_state_t conn, const sl_amqp_topology_t *t, char *err, size_t errlen);

/* Closes politely (bounded by the connection's rpc timeout) and frees. NULL is a no-op. */
void sl_amqp_close(amqp_connection_state_t conn);

/* Text for an RPC reply ("server connection error 320: CONNECTION_FORCED - ..."). */
const char *sl_amqp_reply_text(amqp_rpc_reply_t r, char *buf, size_t len);

#endif
