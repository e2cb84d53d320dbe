/*
 * sl_amqploop: one RabbitMQ connection driven by an h2o event loop, for the services whose work
 * happens on a loop (the api's publisher, the sse service's live feed).
 *
 * It connects (then calls the owner's setup), watches the socket, reads every frame rabbitmq-c
 * can give without waiting, handles what concerns the connection itself (connection.close,
 * channel.close, connection.blocked/unblocked, heartbeats) and hands every other frame to the
 * owner. When the connection breaks it tells the owner and reconnects every reconnect_ms.
 *
 * The socket is watched through a dup()ed descriptor with H2O_SOCKET_FLAG_DONT_READ: h2o only
 * reports readiness, rabbitmq-c does the reading. Connecting blocks the loop for at most
 * timeout_ms (a broker on loopback answers or refuses in well under that). Loop thread only.
 */
#ifndef SL_AMQPLOOP_H
#define SL_AMQPLOOP_H

#define H2O_USE_LIBUV 0
#include <h2o.h>

#include "sl_amqp.h"

typedef struct sl_amqploop_handlers {
    /* After login and channel.open: declare, confirm.select, basic.consume… Returns 0, or -1 with
     * err (the connection is then dropped and retried). */
    int (*setup)(void *data, amqp_connection_state_t conn, char *err, size_t errlen);
    /* Called once setup succeeded. May be NULL. */
    void (*on_up)(void *data);
    /* Every frame the loop does not handle itself. Its memory is valid during the call only. */
    void (*on_frame)(void *data, const amqp_frame_t *frame);
    /* The connection is gone (conn is already NULL). May be NULL. */
    void (*on_down)(void *data, const char *why);
    /* connection.blocked (1) / unblocked (0); also 0 when a blocked connection goes down. May be NULL. */
    void (*on_blocked)(void *data, int blocked);
} sl_amqploop_handlers_t;

typedef struct sl_amqploop {
    amqp_connection_state_t conn; /* NULL while down; owners publish on it directly */
    int blocked;
    unsigned long connects;       /* successful (re)connections */
    /* private */
    h2o_loop_t *_loop;
    const char *_url, *_name;
    int _heartbeat_s, _timeout_ms;
    h2o_socket_t *_sock;
    h2o_timeout_t _tick_timeout;
    h2o_timeout_entry_t _tick;
    const sl_amqploop_handlers_t *_h;
    void *_data;
    int _in_drain;
    unsigned _failures;
} sl_amqploop_t;

/* Starts connecting at once (a failure is logged and retried). url and name must outlive l. */
void sl_amqploop_init(sl_amqploop_t *l, h2o_loop_t *loop, const char *url, const char *name, int heartbeat_s,
                      int timeout_ms, int reconnect_ms, const sl_amqploop_handlers_t *h, void *data);

/* Reads what has arrived. Owners call it after their own RPCs on conn, since those may leave
 * frames in rabbitmq-c's buffer where the socket no longer shows them. */
void sl_amqploop_drain(sl_amqploop_t *l);

/* Drops the connection now (e.g. a publish failed); on_down runs; reconnects later. */
void sl_amqploop_lose(sl_amqploop_t *l, const char *why);

/* Closes politely and stops reconnecting. on_down runs if it was up. */
void sl_amqploop_dispose(sl_amqploop_t *l);

#endif
