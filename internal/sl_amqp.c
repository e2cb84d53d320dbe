/*
 * sl_amqp: shared RabbitMQ plumbing; see sl_amqp.h.
 */
#include "sl_amqp.h"

#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

void sl_amqp_topology_defaults(sl_amqp_topology_t *t, long long max_length)
{
    const char *q = getenv("SLUICE_QUEUE"), *live = getenv("SLUICE_LIVE_EXCHANGE");
    t->persist_queue = q != NULL && *q != '\0' ? q : "sluice.persist";
    t->live_exchange = live != NULL && *live != '\0' ? live : "sluice.live";
    t->dead_exchange = "sluice.dlx";
    t->max_length = max_length;
}

const char *sl_amqp_reply_text(amqp_rpc_reply_t r, char *buf, size_t len)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        snprintf(buf, len, "ok");
        break;
    case AMQP_RESPONSE_NONE:
        snprintf(buf, len, "missing RPC reply");
        break;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(buf, len, "%s", amqp_error_string2(r.library_error));
        break;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *m = r.reply.decoded;
            snprintf(buf, len, "server connection error %u: %.*s", m->reply_code, (int)m->reply_text.len,
                     (const char *)m->reply_text.bytes);
        } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_t *m = r.reply.decoded;
            snprintf(buf, len, "server channel error %u: %.*s", m->reply_code, (int)m->reply_text.len,
                     (const char *)m->reply_text.bytes);
        } else {
            snprintf(buf, len, "unknown server error, method id 0x%08X", r.reply.id);
        }
        break;
    }
    return buf;
}

static int check_reply(amqp_connection_state_t conn, const char *what, char *err, size_t errlen)
{
    char text[256];
    amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 0;
    snprintf(err, errlen, "%s: %s", what, sl_amqp_reply_text(r, text, sizeof(text)));
    return -1;
}

amqp_connection_state_t sl_amqp_open(const char *url, const char *conn_name, int heartbeat_s, int timeout_ms, char *err,
                                     size_t errlen)
{
    struct amqp_connection_info info;
    amqp_connection_state_t conn = NULL;
    amqp_socket_t *sock;
    char *urlbuf = strdup(url), text[256];
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    int status;

    if (urlbuf == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    amqp_default_connection_info(&info);
    if ((status = amqp_parse_url(urlbuf, &info)) != AMQP_STATUS_OK) {
        snprintf(err, errlen, "bad AMQP URL: %s", amqp_error_string2(status));
        goto Error;
    }
    if (info.vhost == NULL || *info.vhost == '\0')
        info.vhost = "/"; /* "amqp://host:port/" names the empty vhost per the URI spec; nobody means that */
    if ((conn = amqp_new_connection()) == NULL || (sock = amqp_tcp_socket_new(conn)) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto Error;
    }
    if ((status = amqp_socket_open_noblock(sock, info.host, info.port, &tv)) != AMQP_STATUS_OK) {
        snprintf(err, errlen, "connect %s:%d: %s", info.host, info.port, amqp_error_string2(status));
        goto Error;
    }
    amqp_set_handshake_timeout(conn, &tv);
    amqp_set_rpc_timeout(conn, &tv);

    amqp_table_entry_t caps[] = {
        {amqp_cstring_bytes("connection.blocked"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}},
        {amqp_cstring_bytes("consumer_cancel_notify"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}},
        {amqp_cstring_bytes("basic.nack"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}},
        {amqp_cstring_bytes("publisher_confirms"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}},
    };
    amqp_table_entry_t props[] = {
        {amqp_cstring_bytes("capabilities"),
         {AMQP_FIELD_KIND_TABLE, {.table = {(int)(sizeof(caps) / sizeof(caps[0])), caps}}}},
        {amqp_cstring_bytes("connection_name"), {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes(conn_name)}}},
    };
    amqp_table_t proptable = {2, props};
    amqp_rpc_reply_t r = amqp_login_with_properties(conn, info.vhost, 0, 131072, heartbeat_s, &proptable,
                                                    AMQP_SASL_METHOD_PLAIN, info.user, info.password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        snprintf(err, errlen, "login: %s", sl_amqp_reply_text(r, text, sizeof(text)));
        goto Error;
    }
    amqp_channel_open(conn, SL_AMQP_CHANNEL);
    if (check_reply(conn, "channel.open", err, errlen) != 0)
        goto Error;
    free(urlbuf);
    return conn;

Error:
    if (conn != NULL)
        amqp_destroy_connection(conn);
    free(urlbuf);
    return NULL;
}

int sl_amqp_declare(amqp_connection_state_t conn, const sl_amqp_topology_t *t, char *err, size_t errlen)
{
    char dead_queue[256];
    amqp_table_entry_t qargs[] = {
        {amqp_cstring_bytes("x-queue-type"), {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("quorum")}}},
        {amqp_cstring_bytes("x-max-length"), {AMQP_FIELD_KIND_I64, {.i64 = t->max_length}}},
        {amqp_cstring_bytes("x-overflow"), {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("reject-publish")}}},
        {amqp_cstring_bytes("x-dead-letter-exchange"),
         {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes(t->dead_exchange)}}},
    };
    amqp_table_t qtable = {(int)(sizeof(qargs) / sizeof(qargs[0])), qargs};

    snprintf(dead_queue, sizeof(dead_queue), "%s.dead", t->persist_queue);
    amqp_exchange_declare(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(t->dead_exchange), amqp_cstring_bytes("fanout"), 0, 1,
                          0, 0, amqp_empty_table);
    if (check_reply(conn, "declare dead-letter exchange", err, errlen) != 0)
        return -1;
    amqp_queue_declare(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(dead_queue), 0, 1, 0, 0, amqp_empty_table);
    if (check_reply(conn, "declare dead-letter queue", err, errlen) != 0)
        return -1;
    amqp_queue_bind(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(dead_queue), amqp_cstring_bytes(t->dead_exchange),
                    amqp_cstring_bytes(""), amqp_empty_table);
    if (check_reply(conn, "bind dead-letter queue", err, errlen) != 0)
        return -1;
    amqp_queue_declare(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(t->persist_queue), 0, 1, 0, 0, qtable);
    if (check_reply(conn, "declare persist queue (its arguments must match the existing queue's)", err, errlen) != 0)
        return -1;
    amqp_exchange_declare(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(t->live_exchange), amqp_cstring_bytes("topic"), 0, 1,
                          0, 0, amqp_empty_table);
    if (check_reply(conn, "declare live exchange", err, errlen) != 0)
        return -1;
    return 0;
}

void sl_amqp_close(amqp_connection_state_t conn)
{
    if (conn == NULL)
        return;
    amqp_channel_close(conn, SL_AMQP_CHANNEL, AMQP_REPLY_SUCCESS);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
}
