/*
 * sl_amqploop: see sl_amqploop.h.
 */
#include "sl_amqploop.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "sl_log.h"

static void set_blocked(sl_amqploop_t *l, int blocked)
{
    if (blocked == l->blocked)
        return;
    l->blocked = blocked;
    if (blocked)
        SL_WARN("event=amqp_blocked conn=%s", l->_name);
    else
        SL_INFO("event=amqp_unblocked conn=%s", l->_name);
    if (l->_h->on_blocked != NULL)
        l->_h->on_blocked(l->_data, blocked);
}

static void drop(sl_amqploop_t *l, const char *why, int polite)
{
    char q[300];
    if (l->conn == NULL)
        return;
    if (!polite)
        SL_WARN("event=amqp_connection_lost conn=%s reason=%s", l->_name, sl_log_quote(q, sizeof(q), why));
    if (l->_sock != NULL) {
        h2o_socket_close(l->_sock);
        l->_sock = NULL;
    }
    amqp_connection_state_t conn = l->conn;
    l->conn = NULL;
    if (polite)
        sl_amqp_close(conn);
    else
        amqp_destroy_connection(conn);
    set_blocked(l, 0);
    if (l->_h->on_down != NULL)
        l->_h->on_down(l->_data, why);
}

void sl_amqploop_lose(sl_amqploop_t *l, const char *why)
{
    drop(l, why, 0);
}

static void closed_by_peer(sl_amqploop_t *l, const char *what, uint16_t code, amqp_bytes_t text)
{
    char why[300];
    snprintf(why, sizeof(why), "%s closed by broker: %u %.*s", what, code, (int)text.len, (const char *)text.bytes);
    drop(l, why, 0);
}

void sl_amqploop_drain(sl_amqploop_t *l)
{
    if (l->_in_drain) /* an owner's callback may publish, which must not re-enter the frame loop */
        return;
    l->_in_drain = 1;
    while (l->conn != NULL) {
        amqp_frame_t frame;
        struct timeval zero = {0, 0};
        int st = amqp_simple_wait_frame_noblock(l->conn, &frame, &zero);
        if (st == AMQP_STATUS_TIMEOUT)
            break;
        if (st != AMQP_STATUS_OK) {
            drop(l, amqp_error_string2(st), 0);
            break;
        }
        if (frame.frame_type == AMQP_FRAME_METHOD) {
            switch (frame.payload.method.id) {
            case AMQP_CONNECTION_BLOCKED_METHOD:
                set_blocked(l, 1);
                break;
            case AMQP_CONNECTION_UNBLOCKED_METHOD:
                set_blocked(l, 0);
                break;
            case AMQP_CHANNEL_CLOSE_METHOD: {
                amqp_channel_close_t *m = frame.payload.method.decoded;
                closed_by_peer(l, "channel", m->reply_code, m->reply_text);
            } break;
            case AMQP_CONNECTION_CLOSE_METHOD: {
                amqp_connection_close_t *m = frame.payload.method.decoded;
                amqp_connection_close_ok_t ok;
                amqp_send_method(l->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
                closed_by_peer(l, "connection", m->reply_code, m->reply_text);
            } break;
            default:
                l->_h->on_frame(l->_data, &frame);
                break;
            }
        } else {
            l->_h->on_frame(l->_data, &frame);
        }
        if (l->conn != NULL)
            amqp_maybe_release_buffers(l->conn);
    }
    l->_in_drain = 0;
}

static void on_readable(h2o_socket_t *sock, const char *err)
{
    sl_amqploop_t *l = sock->data;
    if (err != NULL)
        drop(l, err, 0);
    else
        sl_amqploop_drain(l);
}

static void try_connect(sl_amqploop_t *l)
{
    char err[512], q[600];
    int fd;
    amqp_connection_state_t conn = sl_amqp_open(l->_url, l->_name, l->_heartbeat_s, l->_timeout_ms, err, sizeof(err));
    if (conn == NULL || l->_h->setup(l->_data, conn, err, sizeof(err)) != 0)
        goto Fail;
    if ((fd = dup(amqp_get_sockfd(conn))) < 0) {
        snprintf(err, sizeof(err), "dup: %s", strerror(errno));
        goto Fail;
    }
    l->conn = conn;
    l->_sock = h2o_evloop_socket_create(l->_loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    l->_sock->data = l;
    h2o_socket_read_start(l->_sock, on_readable);
    l->connects++;
    l->_failures = 0;
    SL_INFO("event=amqp_connected conn=%s", l->_name);
    if (l->_h->on_up != NULL)
        l->_h->on_up(l->_data);
    sl_amqploop_drain(l); /* frames that arrived during setup sit in rabbitmq-c's buffer */
    return;
Fail:
    if (l->_failures++ % 20 == 0) /* the first failure of a streak, then one in 20 */
        SL_WARN("event=amqp_connect_failed conn=%s failures=%u error=%s", l->_name, l->_failures,
                sl_log_quote(q, sizeof(q), err));
    if (conn != NULL)
        amqp_destroy_connection(conn);
}

static void on_tick(h2o_timeout_entry_t *entry)
{
    sl_amqploop_t *l = H2O_STRUCT_FROM_MEMBER(sl_amqploop_t, _tick, entry);
    if (l->conn == NULL)
        try_connect(l);
    else
        sl_amqploop_drain(l); /* also sends heartbeats and notices a silent broker */
    h2o_timeout_link(l->_loop, &l->_tick_timeout, &l->_tick);
}

void sl_amqploop_init(sl_amqploop_t *l, h2o_loop_t *loop, const char *url, const char *name, int heartbeat_s,
                      int timeout_ms, int reconnect_ms, const sl_amqploop_handlers_t *h, void *data)
{
    memset(l, 0, sizeof(*l));
    l->_loop = loop;
    l->_url = url;
    l->_name = name;
    l->_heartbeat_s = heartbeat_s;
    l->_timeout_ms = timeout_ms;
    l->_h = h;
    l->_data = data;
    h2o_timeout_init(loop, &l->_tick_timeout, (uint64_t)reconnect_ms);
    l->_tick.cb = on_tick;
    try_connect(l);
    h2o_timeout_link(loop, &l->_tick_timeout, &l->_tick);
}

void sl_amqploop_dispose(sl_amqploop_t *l)
{
    h2o_timeout_unlink(&l->_tick);
    drop(l, "shutting down", 1);
    h2o_timeout_dispose(l->_loop, &l->_tick_timeout);
}
