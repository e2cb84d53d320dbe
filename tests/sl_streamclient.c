/*
 * The SSE/NDJSON test client; see sl_streamclient.h.
 *
 * Bytes go raw (socket) → in (de-chunked body) → one event at a time. The socket is non-blocking
 * and every wait is a poll() bounded by the caller's deadline.
 */
#include "sl_streamclient.h"

#include "sl_testnet.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CH_SIZE = 0, CH_DATA, CH_CRLF, CH_TRAILER };

/* Reads what the socket has into raw. >0 bytes, 0 on EOF (s->eof), -1 on error (s->err), -2 on
 * timeout. */
static int read_some(tu_stream_t *s, long long deadline)
{
    return tu_net_read_some(s->fd, &s->raw, &s->rawlen, &s->rawcap, &s->eof, &s->err, deadline);
}

static void consume_raw(tu_stream_t *s, size_t n)
{
    memmove(s->raw, s->raw + n, s->rawlen - n);
    s->rawlen -= n;
}

static int append_in(tu_stream_t *s, const char *p, size_t n)
{
    if (s->inoff > 0 && s->inoff == s->inlen)
        s->inoff = s->inlen = 0;
    if (s->inoff > 65536 && s->inoff * 2 > s->inlen) {
        memmove(s->in, s->in + s->inoff, s->inlen - s->inoff);
        s->inlen -= s->inoff;
        s->inoff = 0;
    }
    if (tu_net_reserve(&s->in, &s->incap, s->inlen + n + 1) != 0)
        return -1;
    memcpy(s->in + s->inlen, p, n);
    s->inlen += n;
    s->in[s->inlen] = '\0';
    s->body_bytes += n;
    return 0;
}

/* Moves what raw holds of the body into in, undoing chunked encoding. */
static void decode(tu_stream_t *s)
{
    if (!s->chunked) {
        append_in(s, s->raw, s->rawlen);
        s->rawlen = 0;
        return;
    }
    while (s->rawlen > 0 && !s->done) {
        if (s->chunk_state == CH_DATA) {
            size_t n = s->rawlen < s->chunk_left ? s->rawlen : (size_t)s->chunk_left;
            append_in(s, s->raw, n);
            consume_raw(s, n);
            if ((s->chunk_left -= n) == 0)
                s->chunk_state = CH_CRLF;
            continue;
        }
        char *nl = memchr(s->raw, '\n', s->rawlen);
        if (nl == NULL)
            return;
        size_t linelen = (size_t)(nl - s->raw) + 1;
        if (s->chunk_state == CH_SIZE) {
            unsigned long long size = strtoull(s->raw, NULL, 16);
            consume_raw(s, linelen);
            if (size == 0) {
                s->chunk_state = CH_TRAILER;
            } else {
                s->chunk_left = size;
                s->chunk_state = CH_DATA;
            }
        } else if (s->chunk_state == CH_CRLF) {
            consume_raw(s, linelen);
            s->chunk_state = CH_SIZE;
        } else { /* trailer lines until an empty one */
            int empty = linelen <= 2;
            consume_raw(s, linelen);
            if (empty) {
                s->done = 1;
                s->eof = 1;
            }
        }
    }
}

const char *tu_stream_header(const tu_stream_t *s, const char *name, char *out, size_t size)
{
    return s->head != NULL ? tu_header_in(s->head, name, out, size) : NULL;
}

void tu_stream_close(tu_stream_t *s)
{
    if (s->fd > 0)
        close(s->fd);
    s->fd = -1;
    free(s->head);
    free(s->body);
    free(s->raw);
    free(s->in);
    free(s->evbuf);
    s->head = s->body = s->raw = s->in = s->evbuf = NULL;
    s->rawlen = s->rawcap = s->inoff = s->inlen = s->incap = s->evcap = 0;
}

static int read_head(tu_stream_t *s, long long deadline)
{
    char *end;
    while ((end = s->rawlen ? memmem(s->raw, s->rawlen, "\r\n\r\n", 4) : NULL) == NULL) {
        if (read_some(s, deadline) <= 0)
            return -1;
    }
    size_t hl = (size_t)(end - s->raw) + 4;
    if ((s->head = malloc(hl + 1)) == NULL)
        return -1;
    memcpy(s->head, s->raw, hl);
    s->head[hl] = '\0';
    consume_raw(s, hl);
    if (sscanf(s->head, "HTTP/1.%*d %ld", &s->status) != 1)
        return -1;
    char v[128];
    s->chunked = tu_stream_header(s, "transfer-encoding", v, sizeof(v)) != NULL && strcasestr(v, "chunked") != NULL;
    s->fmt = tu_stream_header(s, "content-type", v, sizeof(v)) != NULL && strstr(v, "ndjson") != NULL ? TU_FMT_NDJSON
                                                                                                     : TU_FMT_SSE;
    if (s->status == 200)
        return 0;
    /* An error answer: read its body whole. */
    long long length = -1;
    if (tu_stream_header(s, "content-length", v, sizeof(v)) != NULL)
        length = strtoll(v, NULL, 10);
    for (;;) {
        decode(s);
        if (s->done || (length >= 0 && (long long)(s->inlen - s->inoff) >= length))
            break;
        int r = read_some(s, deadline);
        if (r == 0 || r == -1)
            break;
        if (r == -2)
            return -1;
    }
    s->body = strndup(s->in != NULL ? s->in + s->inoff : "", s->inlen - s->inoff);
    s->inoff = s->inlen;
    return s->body != NULL ? 0 : -1;
}

int tu_stream_open(tu_stream_t *s, int port, const char *target, const tu_stream_opts_t *opts, int timeout_ms)
{
    static const tu_stream_opts_t none = {NULL, 0, 0};
    long long deadline = tu_now_ms() + timeout_ms;
    char req[4096];
    if (opts == NULL)
        opts = &none;
    memset(s, 0, sizeof(*s));
    s->fd = -1;
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n", target, port,
                     opts->headers != NULL ? opts->headers : "");
    if (n <= 0 || (size_t)n >= sizeof(req))
        return -1;
    if ((s->fd = tu_net_connect(port, opts->rcvbuf, deadline)) < 0 || tu_net_send_all(s->fd, req, (size_t)n, deadline) != 0)
        goto Fail;
    if (opts->no_read)
        return 0;
    if (read_head(s, deadline) != 0)
        goto Fail;
    return 0;
Fail:
    tu_stream_close(s);
    return -1;
}

static void fill_from_json(tu_sev_t *ev, const char *text, size_t len, int ndjson)
{
    json_error_t e;
    json_t *root = json_loadb(text, len, 0, &e), *v;
    if (root == NULL || !json_is_object(root)) {
        if (ndjson)
            ev->kind = TU_EV_OTHER;
        json_decref(root);
        return;
    }
    if (json_is_integer(v = json_object_get(root, "seq")))
        ev->seq = json_integer_value(v);
    if (json_is_string(v = json_object_get(root, "channel")))
        snprintf(ev->channel, sizeof(ev->channel), "%s", json_string_value(v));
    if (ndjson && json_is_string(v = json_object_get(root, "type"))) {
        snprintf(ev->event, sizeof(ev->event), "%s", json_string_value(v));
        if (strcmp(ev->event, "reset") == 0)
            ev->kind = TU_EV_RESET;
    }
    json_decref(root);
}

/* One SSE block from in, if a whole one is there. 1 parsed, 0 need more. */
static int parse_sse(tu_stream_t *s, tu_sev_t *ev)
{
    for (;;) {
        const char *p = s->in + s->inoff, *end = s->in + s->inlen, *q = p, *block_end = NULL;
        while (q < end) {
            const char *nl = memchr(q, '\n', (size_t)(end - q));
            if (nl == NULL)
                break;
            size_t l = (size_t)(nl - q);
            if (l > 0 && q[l - 1] == '\r')
                l--;
            if (l == 0) {
                block_end = nl + 1;
                break;
            }
            q = nl + 1;
        }
        if (block_end == NULL)
            return 0;
        int comments = 0, fields = 0, has_data = 0;
        size_t dlen = 0;
        for (q = p; q < block_end;) {
            const char *nl = memchr(q, '\n', (size_t)(block_end - q));
            size_t l = (size_t)(nl - q);
            if (l > 0 && q[l - 1] == '\r')
                l--;
            if (l == 0) {
                q = nl + 1;
                continue;
            }
            if (q[0] == ':') {
                comments++;
                q = nl + 1;
                continue;
            }
            fields++;
            const char *colon = memchr(q, ':', l);
            size_t nlen = colon != NULL ? (size_t)(colon - q) : l;
            const char *val = colon != NULL ? colon + 1 : q + l;
            if (val < q + l && *val == ' ')
                val++;
            size_t vlen = (size_t)(q + l - val);
            if (nlen == 4 && memcmp(q, "data", 4) == 0) {
                if (tu_net_reserve(&s->evbuf, &s->evcap, dlen + vlen + 2) != 0)
                    return 0;
                if (has_data)
                    s->evbuf[dlen++] = '\n';
                memcpy(s->evbuf + dlen, val, vlen);
                dlen += vlen;
                s->evbuf[dlen] = '\0';
                has_data = 1;
            } else if (nlen == 2 && memcmp(q, "id", 2) == 0) {
                ev->id = strtoll(val, NULL, 10);
            } else if (nlen == 5 && memcmp(q, "event", 5) == 0) {
                snprintf(ev->event, sizeof(ev->event), "%.*s", (int)vlen, val);
            } else if (nlen == 5 && memcmp(q, "retry", 5) == 0) {
                ev->retry = strtoll(val, NULL, 10);
            }
            q = nl + 1;
        }
        s->inoff = (size_t)(block_end - s->in);
        if (comments == 0 && fields == 0)
            continue; /* a stray empty line */
        if (has_data) {
            ev->data = s->evbuf;
            ev->len = dlen;
            ev->kind = strcmp(ev->event, "reset") == 0 ? TU_EV_RESET : TU_EV_MESSAGE;
            fill_from_json(ev, s->evbuf, dlen, 0);
        } else if (ev->retry >= 0) {
            ev->kind = TU_EV_RETRY;
        } else if (fields == 0) {
            ev->kind = TU_EV_HEARTBEAT;
        } else {
            ev->kind = TU_EV_OTHER;
        }
        return 1;
    }
}

/* One NDJSON line from in, if a whole one is there. */
static int parse_ndjson(tu_stream_t *s, tu_sev_t *ev)
{
    const char *p = s->in + s->inoff, *end = s->in + s->inlen;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL)
        return 0;
    size_t l = (size_t)(nl - p);
    if (l > 0 && p[l - 1] == '\r')
        l--;
    s->inoff = (size_t)(nl + 1 - s->in);
    if (tu_net_reserve(&s->evbuf, &s->evcap, l + 1) != 0)
        return 0;
    memcpy(s->evbuf, p, l);
    s->evbuf[l] = '\0';
    ev->data = s->evbuf;
    ev->len = l;
    if (l == 0) {
        ev->kind = TU_EV_HEARTBEAT;
        return 1;
    }
    ev->kind = TU_EV_MESSAGE;
    fill_from_json(ev, s->evbuf, l, 1);
    return 1;
}

int tu_stream_next(tu_stream_t *s, tu_sev_t *ev, int timeout_ms)
{
    long long deadline = tu_now_ms() + timeout_ms;
    if (s->fd < 0)
        return -1;
    for (;;) {
        memset(ev, 0, sizeof(*ev));
        ev->id = ev->seq = ev->retry = -1;
        snprintf(ev->event, sizeof(ev->event), "message");
        ev->data = "";
        if (s->rawlen > 0)
            decode(s); /* what came with the response head, or after a timeout */
        if (s->inlen > s->inoff && (s->fmt == TU_FMT_NDJSON ? parse_ndjson(s, ev) : parse_sse(s, ev)))
            return 1;
        if (s->eof || s->err)
            return -1;
        int r = read_some(s, deadline);
        if (r == -2)
            return 0;
        decode(s);
    }
}

unsigned long long tu_stream_drain(tu_stream_t *s, int timeout_ms)
{
    long long deadline = tu_now_ms() + timeout_ms;
    unsigned long long total = 0;
    while (s->fd >= 0 && !s->eof && !s->err) {
        int r = read_some(s, deadline);
        if (r == -2)
            break;
        if (r > 0)
            total += (unsigned long long)r;
        s->rawlen = 0;
    }
    return total;
}

int tu_stream_next_event(tu_stream_t *s, tu_sev_t *ev, int timeout_ms)
{
    long long end = tu_now_ms() + timeout_ms;
    while (tu_now_ms() < end) {
        int rc = tu_stream_next(s, ev, (int)(end - tu_now_ms()));
        if (rc < 0)
            return 0;
        if (rc == 1 && ev->kind != TU_EV_RETRY && ev->kind != TU_EV_HEARTBEAT)
            return 1;
    }
    return 0;
}
