/*
 * sl_amqp: shared RabbitMQ plumbing; see sl_amqp.h.
 */
#include "sl_amqp.h"

#include <amqp_tcp_socket.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "sl_log.h"

void sl_amqp_topology_defaults(sl_amqp_topology_t *t, long long max_length, long long max_bytes)
{
    const char *q = getenv("SLUICE_QUEUE"), *live = getenv("SLUICE_LIVE_EXCHANGE"),
               *presence = getenv("SLUICE_PRESENCE_EXCHANGE");
    t->persist_queue = q != NULL && *q != '\0' ? q : "sluice.persist";
    t->live_exchange = live != NULL && *live != '\0' ? live : "sluice.live";
    t->presence_exchange = presence != NULL && *presence != '\0' ? presence : "sluice.presence";
    t->dead_exchange = "sluice.dlx";
    t->max_length = max_length;
    t->max_bytes = max_bytes;
    t->role = SL_AMQP_ROLE_OWNER;
    const char *mode = getenv("SLUICE_AMQP_DECLARE");
    t->passive = mode != NULL && strcmp(mode, "passive") == 0;
}

int sl_amqp_declare_check(char *err, size_t errlen)
{
    const char *mode = getenv("SLUICE_AMQP_DECLARE");
    if (mode == NULL || *mode == '\0' || strcmp(mode, "all") == 0 || strcmp(mode, "passive") == 0)
        return 0;
    snprintf(err, errlen, "SLUICE_AMQP_DECLARE must be \"all\" or \"passive\", not \"%.64s\"", mode);
    return -1;
}

int sl_amqp_is_atomic(const amqp_basic_properties_t *props)
{
    if (!(props->_flags & AMQP_BASIC_HEADERS_FLAG))
        return 0;
    size_t klen = strlen(SL_AMQP_ATOMIC_HEADER);
    for (int i = 0; i < props->headers.num_entries; i++) {
        const amqp_table_entry_t *e = &props->headers.entries[i];
        if (e->key.len == klen && memcmp(e->key.bytes, SL_AMQP_ATOMIC_HEADER, klen) == 0)
            return e->value.kind == AMQP_FIELD_KIND_BOOLEAN && e->value.value.boolean;
    }
    return 0;
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

const char *sl_amqp_url_redact(const char *url, char *buf, size_t len)
{
    const char *host = strstr(url, "://");
    host = host != NULL ? host + 3 : url;
    const char *end = host + strcspn(host, "/?#");
    const char *at = NULL, *colon;
    for (const char *c = host; c < end; c++) {
        if (*c == '@')
            at = c;
    }
    if (at == NULL || (colon = memchr(host, ':', (size_t)(at - host))) == NULL) {
        snprintf(buf, len, "%s", url);
        return buf;
    }
    snprintf(buf, len, "%.*s%s", (int)(colon - url), url, at);
    return buf;
}

void sl_amqp_urls_free(sl_amqp_urls_t *u)
{
    for (size_t i = 0; i < u->n; i++) {
        free(u->url[i]);
        free(u->shown[i]);
    }
    memset(u, 0, sizeof(*u));
}

int sl_amqp_urls_parse(sl_amqp_urls_t *u, const char *list, char *err, size_t errlen)
{
    size_t total = 1;
    memset(u, 0, sizeof(*u));
    for (const char *c = list; *c != '\0'; c++)
        total += *c == ',';
    if (total > SL_AMQP_MAX_URLS) {
        snprintf(err, errlen, "%zu URLs in the list, at most %d", total, SL_AMQP_MAX_URLS);
        return -1;
    }
    for (const char *p = list;;) {
        const char *comma = strchr(p, ','), *end = comma != NULL ? comma : p + strlen(p);
        while (p < end && isspace((unsigned char)*p))
            p++;
        while (end > p && isspace((unsigned char)end[-1]))
            end--;
        size_t i = u->n;
        if (end == p) {
            if (total == 1)
                snprintf(err, errlen, "no AMQP URL given");
            else
                snprintf(err, errlen, "entry %zu of %zu in the URL list is empty", i + 1, total);
            goto Error;
        }
        char shown[512];
        struct amqp_connection_info info;
        if ((u->url[i] = strndup(p, (size_t)(end - p))) == NULL ||
            (u->shown[i] = strdup(sl_amqp_url_redact(u->url[i], shown, sizeof(shown)))) == NULL) {
            free(u->url[i]);
            snprintf(err, errlen, "out of memory");
            goto Error;
        }
        u->n++;
        char *copy = strdup(u->url[i]); /* amqp_parse_url writes into its argument */
        int st = copy != NULL ? amqp_parse_url(copy, &info) : AMQP_STATUS_NO_MEMORY;
        free(copy);
        if (st != AMQP_STATUS_OK) {
            snprintf(err, errlen, "entry %zu of %zu (%s): bad AMQP URL: %s", i + 1, total, u->shown[i],
                     amqp_error_string2(st));
            goto Error;
        }
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    return 0;
Error:
    sl_amqp_urls_free(u);
    return -1;
}

int sl_amqp_urls_check(const char *list, char *err, size_t errlen)
{
    sl_amqp_urls_t u;
    if (sl_amqp_urls_parse(&u, list, err, errlen) != 0)
        return -1;
    sl_amqp_urls_free(&u);
    return 0;
}

amqp_connection_state_t sl_amqp_open_next(const char *list, size_t *cursor, const char *conn_name, int heartbeat_s,
                                          int timeout_ms, char *err, size_t errlen)
{
    sl_amqp_urls_t u;
    amqp_connection_state_t conn = NULL;
    size_t used = 0;
    if (sl_amqp_urls_parse(&u, list, err, errlen) != 0)
        return NULL;
    err[0] = '\0';
    for (size_t k = 0; k < u.n && conn == NULL; k++) {
        size_t i = (*cursor + k) % u.n;
        char one[512];
        if ((conn = sl_amqp_open_hooked(u.url[i], conn_name, heartbeat_s, timeout_ms, NULL, NULL, one, sizeof(one))) !=
            NULL) {
            *cursor = (i + 1) % u.n;
            if (u.n > 1)
                SL_INFO("event=amqp_node conn=%s node=%s tried=%zu", conn_name, u.shown[i], k + 1);
        } else if (used < errlen) {
            int w = snprintf(err + used, errlen - used, "%s%s: %s", used > 0 ? "; " : "", u.shown[i], one);
            used += w > 0 ? (size_t)w : 0;
        }
    }
    if (conn == NULL)
        *cursor = (*cursor + 1) % u.n;
    sl_amqp_urls_free(&u);
    return conn;
}

amqp_connection_state_t sl_amqp_open(const char *url, const char *conn_name, int heartbeat_s, int timeout_ms, char *err,
                                     size_t errlen)
{
    size_t cursor = 0;
    if (strchr(url, ',') != NULL)
        return sl_amqp_open_next(url, &cursor, conn_name, heartbeat_s, timeout_ms, err, errlen);
    return sl_amqp_open_hooked(url, conn_name, heartbeat_s, timeout_ms, NULL, NULL, err, errlen);
}

amqp_connection_state_t sl_amqp_open_hooked(const char *url, const char *conn_name, int heartbeat_s, int timeout_ms,
                                            void (*on_socket)(void *arg, int fd), void *arg, char *err, size_t errlen)
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
    if (on_socket != NULL)
        on_socket(arg, amqp_get_sockfd(conn));
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

/* The dead-letter queue and its binding, on a channel of their own: its failure must not close
 * SL_AMQP_CHANNEL. Publishing does not need it, and after a node is lost it may be unreachable: a
 * classic queue (made before it was declared as quorum) whose home was that node answers 404
 * until the node is back; one that exists as classic answers 406 to a declare as quorum. Either is
 * logged and the caller goes on. Returns -1 only when the connection itself failed. */
static int declare_dead_queue(amqp_connection_state_t conn, const sl_amqp_topology_t *t, char *err, size_t errlen)
{
    enum { CH = SL_AMQP_CHANNEL + 1 };
    char dead_queue[256], text[256], q[300];
    amqp_table_entry_t qargs[] = {
        {amqp_cstring_bytes("x-queue-type"), {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("quorum")}}},
    };
    amqp_table_t qtable = {1, qargs};
    amqp_rpc_reply_t r;
    snprintf(dead_queue, sizeof(dead_queue), "%s.dead", t->persist_queue);
    amqp_channel_open(conn, CH);
    if (check_reply(conn, "channel.open for the dead-letter queue", err, errlen) != 0)
        return -1;
    amqp_queue_declare(conn, CH, amqp_cstring_bytes(dead_queue), 0, 1, 0, 0, qtable);
    if ((r = amqp_get_rpc_reply(conn)).reply_type == AMQP_RESPONSE_NORMAL) {
        amqp_queue_bind(conn, CH, amqp_cstring_bytes(dead_queue), amqp_cstring_bytes(t->dead_exchange),
                        amqp_cstring_bytes(""), amqp_empty_table);
        r = amqp_get_rpc_reply(conn);
    }
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_ok_t ok;
        SL_WARN("event=amqp_dead_queue_unavailable queue=%s error=%s", dead_queue,
                sl_log_quote(q, sizeof(q), sl_amqp_reply_text(r, text, sizeof(text))));
        if (amqp_send_method(conn, CH, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) != AMQP_STATUS_OK) {
            snprintf(err, errlen, "channel.close-ok: connection lost");
            return -1;
        }
        return 0;
    }
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        snprintf(err, errlen, "declare dead-letter queue: %s", sl_amqp_reply_text(r, text, sizeof(text)));
        return -1;
    }
    amqp_channel_close(conn, CH, AMQP_REPLY_SUCCESS);
    return check_reply(conn, "channel.close after the dead-letter queue", err, errlen);
}

/* A passive declare of one object: 0, SL_AMQP_TOPOLOGY_MISSING (404) or -1, with err. */
static int declare_passive(amqp_connection_state_t conn, int is_queue, const char *name, char *err, size_t errlen)
{
    char text[256];
    if (is_queue)
        amqp_queue_declare(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(name), 1, 0, 0, 0, amqp_empty_table);
    else
        amqp_exchange_declare(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(name), amqp_cstring_bytes("topic"), 1, 0, 0, 0,
                              amqp_empty_table);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 0;
    snprintf(err, errlen, "declare %s %s passively: %s", is_queue ? "queue" : "exchange", name,
             sl_amqp_reply_text(r, text, sizeof(text)));
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD &&
        ((amqp_channel_close_t *)r.reply.decoded)->reply_code == AMQP_NOT_FOUND)
        return SL_AMQP_TOPOLOGY_MISSING;
    return -1;
}

/* The presence exchange (fanout, durable like the others), when t names one. */
static int declare_presence(amqp_connection_state_t conn, const sl_amqp_topology_t *t, int passive, char *err,
                            size_t errlen)
{
    if (t->presence_exchange == NULL || *t->presence_exchange == '\0')
        return 0;
    if (passive)
        return declare_passive(conn, 0, t->presence_exchange, err, errlen);
    amqp_exchange_declare(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(t->presence_exchange), amqp_cstring_bytes("fanout"),
                          0, 1, 0, 0, amqp_empty_table);
    return check_reply(conn, "declare presence exchange", err, errlen);
}

int sl_amqp_declare(amqp_connection_state_t conn, const sl_amqp_topology_t *t, char *err, size_t errlen)
{
    if (t->role == SL_AMQP_ROLE_SUBSCRIBER) {
        int rc;
        if (t->passive)
            rc = declare_passive(conn, 0, t->live_exchange, err, errlen);
        else {
            amqp_exchange_declare(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(t->live_exchange),
                                  amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
            rc = check_reply(conn, "declare live exchange", err, errlen);
        }
        return rc != 0 ? rc : declare_presence(conn, t, t->passive, err, errlen);
    }
    if (t->role == SL_AMQP_ROLE_PUBLISHER && t->passive)
        return declare_passive(conn, 1, t->persist_queue, err, errlen);

    amqp_table_entry_t qargs[] = {
        {amqp_cstring_bytes("x-queue-type"), {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("quorum")}}},
        {amqp_cstring_bytes("x-max-length"), {AMQP_FIELD_KIND_I64, {.i64 = t->max_length}}},
        {amqp_cstring_bytes("x-overflow"), {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("reject-publish")}}},
        {amqp_cstring_bytes("x-dead-letter-exchange"),
         {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes(t->dead_exchange)}}},
        {amqp_cstring_bytes("x-max-length-bytes"), {AMQP_FIELD_KIND_I64, {.i64 = t->max_bytes}}}, /* last: optional */
    };
    amqp_table_t qtable = {(int)(sizeof(qargs) / sizeof(qargs[0])) - (t->max_bytes > 0 ? 0 : 1), qargs};

    amqp_exchange_declare(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(t->dead_exchange), amqp_cstring_bytes("fanout"), 0, 1,
                          0, 0, amqp_empty_table);
    if (check_reply(conn, "declare dead-letter exchange", err, errlen) != 0)
        return -1;
    if (declare_dead_queue(conn, t, err, errlen) != 0)
        return -1;
    amqp_queue_declare(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(t->persist_queue), 0, 1, 0, 0, qtable);
    if (check_reply(conn, "declare persist queue (its arguments must match the existing queue's)", err, errlen) != 0)
        return -1;
    amqp_exchange_declare(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(t->live_exchange), amqp_cstring_bytes("topic"), 0, 1,
                          0, 0, amqp_empty_table);
    if (check_reply(conn, "declare live exchange", err, errlen) != 0)
        return -1;
    return declare_presence(conn, t, 0, err, errlen);
}

void sl_amqp_close(amqp_connection_state_t conn)
{
    if (conn == NULL)
        return;
    amqp_channel_close(conn, SL_AMQP_CHANNEL, AMQP_REPLY_SUCCESS);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
}
