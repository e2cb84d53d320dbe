/*
 * sl_amqploop: one RabbitMQ connection driven by an h2o event loop, for the services whose work
 * happens on a loop (the api's and ingest's publisher, the sse service's live feed), over a list
 * of broker URLs (the nodes of a cluster).
 *
 * rabbitmq-c has no asynchronous connect, so connecting (TCP, login, channel.open and the
 * owner's setup) runs on a short-lived connector thread, one at a time, under a deadline of
 * timeout_ms: when it passes, the loop shuts the attempt's socket down, which ends a login that a
 * stalled node (SIGSTOPped: the kernel still completes the TCP handshake) would never answer.
 * The thread hands the ready connection over through a pipe; the loop adopts it, watches its
 * socket, reads every frame rabbitmq-c can give without waiting, handles what concerns the
 * connection itself (connection.close, channel.close, connection.blocked/unblocked, heartbeats)
 * and hands every other frame to the owner.
 *
 * Which node: a lost connection moves on to the next URL at once (unless it lived under a second,
 * which counts as a failed attempt); a failed attempt moves on to the next URL at once, until the
 * whole list has failed in a row; then the next round waits a backoff (from 100 ms doubling up to
 * backoff_max_ms, halved at random for jitter). One log line per event: the node connected to,
 * why a connection or an attempt ended; URLs are logged without passwords.
 *
 * The socket is watched through a dup()ed descriptor with H2O_SOCKET_FLAG_DONT_READ: h2o only
 * reports readiness, rabbitmq-c does the reading. Loop thread only, except for setup.
 */
#ifndef SL_AMQPLOOP_H
#define SL_AMQPLOOP_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <stdint.h>

#include "sl_amqp.h"

#define SL_AMQPLOOP_BACKOFF_MIN_MS 100

typedef struct sl_amqploop_handlers {
    /* Runs on the connector thread after login and channel.open: AMQP RPCs on conn only
     * (declare, confirm.select, basic.consume…). It may read what the owner never changes after
     * sl_amqploop_init (its configuration), nothing else of the owner's: what the loop must know
     * goes in on_up. Returns 0, or -1 with err (the attempt fails and the next URL is tried). */
    int (*setup)(void *data, amqp_connection_state_t conn, char *err, size_t errlen);
    /* On the loop, once a connection is adopted (conn is set). May be NULL. */
    void (*on_up)(void *data);
    /* Every frame the loop does not handle itself. Its memory is valid during the call only. */
    void (*on_frame)(void *data, const amqp_frame_t *frame);
    /* The connection is gone (conn is already NULL). May be NULL. */
    void (*on_down)(void *data, const char *why);
    /* connection.blocked (1) / unblocked (0); also 0 when a blocked connection goes down. May be NULL. */
    void (*on_blocked)(void *data, int blocked);
} sl_amqploop_handlers_t;

struct sl_amqploop_attempt;

typedef struct sl_amqploop {
    amqp_connection_state_t conn; /* NULL while down or connecting; owners publish on it directly */
    int blocked;
    unsigned long connects;       /* successful (re)connections */
    /* private */
    h2o_loop_t *_loop;
    sl_amqp_urls_t _urls;
    size_t _cursor;               /* URL of the attempt in flight or the next one */
    size_t _node;                 /* URL of the connection while up */
    const char *_name;
    char _qname[128];             /* _name as a logfmt value */
    int _heartbeat_s, _timeout_ms, _backoff_max_ms;
    h2o_socket_t *_sock;
    struct sl_amqploop_attempt *_attempt; /* the connector thread's, while one runs */
    int _notify_r, _notify_w;     /* the pipe the connector says it finished through */
    h2o_socket_t *_notify;        /* watches _notify_r */
    h2o_timeout_t _tick_timeout;  /* while up: heartbeats, a silent broker */
    h2o_timeout_entry_t _tick;
    h2o_timeout_t _deadline_timeout; /* timeout_ms after an attempt started */
    h2o_timeout_entry_t _deadline;
    h2o_timeout_t _soon_timeout;  /* 10 ms: the wait for the next attempt (backoff) */
    h2o_timeout_entry_t _soon;
    uint64_t _retry_at_ms;        /* when the next attempt may start (h2o_now) */
    uint64_t _up_at_ms;
    uint64_t _rand;
    const sl_amqploop_handlers_t *_h;
    void *_data;
    int _in_drain;
    unsigned _failures;           /* failed attempts in a row */
} sl_amqploop_t;

/* Parses urls (a comma-separated list, see sl_amqp_urls_parse) and starts connecting to the first
 * (in the background: the connection is not up when this returns). name must outlive l.
 * backoff_max_ms: the longest wait between two rounds over the list (0: 2000). Returns 0, or -1
 * with err for a bad list (nothing started, no callback will run, nothing to dispose). */
int sl_amqploop_init(sl_amqploop_t *l, h2o_loop_t *loop, const char *urls, const char *name, int heartbeat_s,
                     int timeout_ms, int backoff_max_ms, const sl_amqploop_handlers_t *h, void *data, char *err,
                     size_t errlen);

/* Reads what has arrived. Owners call it after their own RPCs on conn, since those may leave
 * frames in rabbitmq-c's buffer where the socket no longer shows them. */
void sl_amqploop_drain(sl_amqploop_t *l);

/* Whether the socket's send buffer has room for len more bytes (and the frames around them), so
 * that an amqp_basic_publish of len bytes, which writes with no deadline, cannot block the loop:
 * a node that stops reading (stopped, or stalled) fills the buffer, and the next write would wait
 * for it. The buffer's payload room is taken as half of SO_SNDBUF (the kernel doubles the value
 * for its own bookkeeping), less what is queued and not yet acknowledged (SIOCOUTQ). 1 when it
 * cannot tell. A message larger than that room never fits: owners that publish big messages
 * raise SO_SNDBUF (sl_livefeed does). */
int sl_amqploop_send_room(const sl_amqploop_t *l, size_t len);

/* Drops the connection now (e.g. a publish failed); on_down runs; the next URL is tried. */
void sl_amqploop_lose(sl_amqploop_t *l, const char *why);

/* The URL (without its password) of the connection while up, else of the next attempt. */
const char *sl_amqploop_node(const sl_amqploop_t *l);

/* Stops: an attempt in flight is cut short (its socket shut down; this waits at most until its
 * TCP connect gives up, within timeout_ms) and its connection closed; a connection that is up is
 * closed politely, and on_down runs. Then frees what init made. */
void sl_amqploop_dispose(sl_amqploop_t *l);

#endif
