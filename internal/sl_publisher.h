/*
 * sl_publisher: publishes to RabbitMQ with publisher confirms from inside an h2o event loop,
 * many messages in flight at once.
 *
 * Publishes made during one turn of the loop are gathered into one AMQP message (up to max_batch
 * of them, one per line, see sl_amqp.h), published when the turn ends: under load one message
 * carries many posts, and the broker's per-message work is shared by all of them; a lone post
 * still leaves at once. Each message gets the channel's next delivery tag; when the broker's
 * basic.ack or basic.nack for it arrives (possibly as a "multiple" covering many tags), the
 * callback of every publish in it runs once with the outcome: a batch is confirmed or refused as
 * a whole, so nothing is half-accepted. Nothing waits for a confirm in turn: the loop stays free.
 * The publisher connects and reconnects by itself, over a list of broker URLs (sl_amqploop: the
 * next node after a lost connection, backoff once all have failed) and tracks
 * connection.blocked. A node that stops answering (stopped process, dead network: its
 * connection stays open) is noticed by a confirm that does not come within confirm_timeout_ms.
 * Publishes whose confirm was outstanding when the connection broke are
 * answered UNAVAILABLE (the broker may or may not have them), never OK; publishes while no
 * connection is up are refused UNAVAILABLE.
 *
 * The setup declares what conf.topology's role calls for (sl_amqp_declare); a persist queue found
 * missing by a passive declare is logged once (event=amqp_topology_missing) and retried like any
 * failed attempt, so publishes are refused UNAVAILABLE until the persister has declared it.
 *
 * Threading: everything runs on the loop's thread, except the connection's setup (declare,
 * confirm.select), which runs on sl_amqploop's connector thread and reads only conf (and a flag of
 * its own). Nothing
 * blocks the loop: connecting happens on that thread, under the deadline timeout_ms.
 */
#ifndef SL_PUBLISHER_H
#define SL_PUBLISHER_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <stdint.h>

#include "sl_amqp.h"
#include "sl_amqploop.h"
#include "sl_metrics.h"

typedef enum {
    SL_PUBLISH_OK = 0,      /* accepted for confirmation (publish) / the broker confirmed it (callback) */
    SL_PUBLISH_NACK,        /* the broker refused it: the queue is full (x-overflow=reject-publish) */
    SL_PUBLISH_UNAVAILABLE, /* no connection, or it broke before the confirm came */
    SL_PUBLISH_BLOCKED,     /* the broker sent connection.blocked (memory or disk alarm) */
    SL_PUBLISH_BUSY,        /* too many publishes await confirmation */
} sl_publish_result_t;

/* Runs once per accepted publish, on the loop, unless the publish was detached. */
typedef void (*sl_publish_cb)(void *data, sl_publish_result_t result);

typedef struct sl_publisher_conf {
    const char *url;        /* one AMQP URL or a comma-separated list (sl_amqp_urls_parse) */
    const char *conn_name;
    sl_amqp_topology_t topology;
    size_t max_unconfirmed; /* publishes (not messages) awaiting their confirm */
    size_t max_batch;       /* publishes per message; 0 or over SL_AMQP_MAX_LINES: SL_AMQP_MAX_LINES */
    int heartbeat_s;
    int timeout_ms;         /* deadline of one connection attempt */
    int reconnect_ms;       /* longest wait between two rounds over the URL list (0: 2000) */
    int confirm_timeout_ms; /* a publish unconfirmed this long (not while blocked) means the node
                             * has stalled: the connection is dropped, the next node tried (0: 5000) */
} sl_publisher_conf_t;

typedef struct sl_publisher_stats {
    uint64_t published, acked, nacked, failed, refused_busy, refused_down, refused_blocked, reconnects;
    uint64_t send_waits; /* flushes put off because the socket had no room (the node reads slowly, or not) */
    uint64_t batches;           /* AMQP messages the published ones went out in */
    int64_t blocked_us_total;   /* time spent blocked, closed intervals only */
    sl_histogram_t confirm_latency; /* seconds from publish to confirm */
} sl_publisher_stats_t;

typedef struct sl_publisher sl_publisher_t;

/* Copies conf (its strings must outlive the publisher) and starts connecting in the background:
 * the publisher is not ready when this returns (publishes are refused UNAVAILABLE until it is).
 * Failures are logged and retried. Returns NULL on no memory or a bad URL list (logged; check the
 * list at startup with sl_amqp_urls_parse for a better message). */
sl_publisher_t *sl_publisher_create(h2o_loop_t *loop, const sl_publisher_conf_t *conf);

/* Publishes body (one line of JSON: no '\n' in it) persistently to exchange ("" = default) with
 * routing_key, in the batch being gathered. Returns SL_PUBLISH_OK and stores the batch's delivery
 * tag in *tag (for sl_publisher_detach): cb will run, never before this call returns. Any other
 * return is an immediate refusal, and cb will never run. No callback runs during the call (a full
 * batch goes out first, and a failure to send it is handled on the next loop turn). */
sl_publish_result_t sl_publisher_publish(sl_publisher_t *p, const char *exchange, const char *routing_key,
                                         const void *body, size_t len, sl_publish_cb cb, void *data, uint64_t *tag);

/* Publishes nlines lines at once (body: them joined by '\n', none within a line; 1 <= nlines <=
 * max_batch) as one AMQP message of their own, marked SL_AMQP_ATOMIC_HEADER when nlines > 1: the
 * broker confirms or refuses them together (a full queue refuses the whole group), and the
 * persister stores them in one transaction. It may be larger than SL_AMQP_MAX_BATCH_BYTES (the
 * caller bounds it). They count as nlines publishes against max_unconfirmed; cb runs once.
 * Otherwise as sl_publisher_publish. */
sl_publish_result_t sl_publisher_publish_group(sl_publisher_t *p, const char *exchange, const char *routing_key,
                                               const void *body, size_t len, size_t nlines, sl_publish_cb cb,
                                               void *data, uint64_t *tag);

/* The caller no longer wants the callback of its publish (tag and data as given to publish), e.g.
 * its HTTP client went away. */
void sl_publisher_detach(sl_publisher_t *p, uint64_t tag, void *data);

/* 1 when connected and not blocked. */
int sl_publisher_ready(const sl_publisher_t *p);
int sl_publisher_blocked(const sl_publisher_t *p);
size_t sl_publisher_outstanding(const sl_publisher_t *p);
const sl_publisher_stats_t *sl_publisher_stats(const sl_publisher_t *p);

/* Closes the connection (outstanding callbacks run with UNAVAILABLE) and frees. */
void sl_publisher_destroy(sl_publisher_t *p);

#endif
