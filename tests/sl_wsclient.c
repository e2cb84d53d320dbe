/*
 * The WebSocket test client; see sl_wsclient.h.
 */
#include "sl_wsclient.h"

#include "sl_testnet.h"

#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* >0 bytes read into rbuf, 0 EOF, -1 error, -2 timeout. */
static int read_some(tu_ws_t *w, long long deadline)
{
    return tu_net_read_some(w->fd, &w->rbuf, &w->rlen, &w->rcap, &w->eof, &w->err, deadline);
}

static void consume(tu_ws_t *w, size_t n)
{
    memmove(w->rbuf, w->rbuf + n, w->rlen - n);
    w->rlen -= n;
}

static void header_value(const char *head, const char *name, char *out, size_t size)
{
    size_t nl = strlen(name);
    out[0] = '\0';
    for (const char *p = strchr(head, '\n'); p != NULL && p[1] != '\0'; p = strchr(p + 1, '\n')) {
        if (strncasecmp(p + 1, name, nl) == 0 && p[1 + nl] == ':') {
            const char *v = p + 2 + nl, *e;
            while (*v == ' ')
                v++;
            for (e = v; *e != '\r' && *e != '\n' && *e != '\0'; e++)
                ;
            snprintf(out, size, "%.*s", (int)(e - v), v);
            return;
        }
    }
}

void tu_ws_close(tu_ws_t *w)
{
    if (w->fd > 0)
        close(w->fd);
    w->fd = -1;
    free(w->head);
    free(w->body);
    free(w->rbuf);
    free(w->msg);
    free(w->ctl);
    w->head = w->body = w->rbuf = w->msg = w->ctl = NULL;
    w->rlen = w->rcap = w->msglen = w->msgcap = w->ctlcap = 0;
}

int tu_ws_open(tu_ws_t *w, int port, const char *target, int timeout_ms)
{
    return tu_ws_open_rcvbuf(w, port, target, 0, timeout_ms);
}

int tu_ws_open_rcvbuf(tu_ws_t *w, int port, const char *target, int rcvbuf, int timeout_ms)
{
    long long deadline = tu_now_ms() + timeout_ms;
    unsigned char nonce[16], digest[SHA_DIGEST_LENGTH];
    char key[32], accept[64], want[64], concat[128], req[1024], v[256];
    char *end;

    memset(w, 0, sizeof(*w));
    w->auto_pong = 1;
    if (getrandom(nonce, sizeof(nonce), 0) != (ssize_t)sizeof(nonce))
        return -1;
    EVP_EncodeBlock((unsigned char *)key, nonce, sizeof(nonce));
    snprintf(concat, sizeof(concat), "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    SHA1((const unsigned char *)concat, strlen(concat), digest);
    EVP_EncodeBlock((unsigned char *)want, digest, sizeof(digest));

    if ((w->fd = tu_net_connect(port, rcvbuf, deadline)) < 0)
        return -1;
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     target, port, key);
    if (tu_net_send_all(w->fd, req, (size_t)n, deadline) != 0)
        goto Fail;
    while ((end = w->rlen ? memmem(w->rbuf, w->rlen, "\r\n\r\n", 4) : NULL) == NULL) {
        if (read_some(w, deadline) <= 0)
            goto Fail;
    }
    size_t hl = (size_t)(end - w->rbuf) + 4;
    if ((w->head = strndup(w->rbuf, hl)) == NULL)
        goto Fail;
    consume(w, hl);
    if (sscanf(w->head, "HTTP/1.%*d %ld", &w->status) != 1)
        goto Fail;
    if (w->status != 101) {
        /* a refusal: its body (Content-Length) */
        header_value(w->head, "content-length", v, sizeof(v));
        size_t length = (size_t)strtoull(v, NULL, 10);
        while (w->rlen < length && read_some(w, deadline) > 0)
            ;
        w->body = strndup(w->rbuf != NULL ? w->rbuf : "", w->rlen < length ? w->rlen : length);
        goto Fail;
    }
    header_value(w->head, "sec-websocket-accept", accept, sizeof(accept));
    if (strcmp(accept, want) != 0)
        goto Fail;
    return 0;
Fail:
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
    return -1;
}

int tu_ws_send(tu_ws_t *w, int opcode, const void *data, size_t len)
{
    unsigned char hdr[14], mask[4];
    size_t h = 0;
    if (w->fd < 0)
        return -1;
    if (getrandom(mask, sizeof(mask), 0) != (ssize_t)sizeof(mask))
        return -1;
    hdr[h++] = (unsigned char)(0x80 | (opcode & 0x0f));
    if (len < 126) {
        hdr[h++] = (unsigned char)(0x80 | len);
    } else if (len <= 0xffff) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = (unsigned char)(len >> 8);
        hdr[h++] = (unsigned char)len;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            hdr[h++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    memcpy(hdr + h, mask, 4);
    h += 4;
    char *frame = malloc(h + len);
    if (frame == NULL)
        return -1;
    memcpy(frame, hdr, h);
    for (size_t i = 0; i < len; i++)
        frame[h + i] = (char)(((const unsigned char *)data)[i] ^ mask[i & 3]);
    int r = tu_net_send_all(w->fd, frame, h + len, tu_now_ms() + 10000);
    free(frame);
    return r;
}

int tu_ws_send_text(tu_ws_t *w, const char *text)
{
    return tu_ws_send(w, TU_WS_TEXT, text, strlen(text));
}

int tu_ws_send_close(tu_ws_t *w, int code, const char *reason)
{
    char p[125];
    size_t rl = reason != NULL ? strlen(reason) : 0;
    if (rl > sizeof(p) - 2)
        rl = sizeof(p) - 2;
    p[0] = (char)(code >> 8);
    p[1] = (char)code;
    if (rl > 0)
        memcpy(p + 2, reason, rl);
    return tu_ws_send(w, TU_WS_CLOSE, p, 2 + rl);
}

/* One whole frame from rbuf: 1 parsed (header fields out, payload unmasked in place at *payload),
 * 0 need more, -1 malformed. */
static int parse_frame(tu_ws_t *w, int *fin, int *op, size_t *hlen, uint64_t *plen)
{
    const unsigned char *b = (const unsigned char *)w->rbuf;
    size_t h = 2;
    if (w->rlen < 2)
        return 0;
    *fin = (b[0] & 0x80) != 0;
    *op = b[0] & 0x0f;
    int masked = (b[1] & 0x80) != 0;
    uint64_t len = b[1] & 0x7f;
    if (len == 126) {
        if (w->rlen < 4)
            return 0;
        len = ((uint64_t)b[2] << 8) | b[3];
        h = 4;
    } else if (len == 127) {
        if (w->rlen < 10)
            return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | b[2 + i];
        h = 10;
    }
    if (len > (1u << 30))
        return -1;
    if (masked)
        h += 4;
    if (w->rlen < h + len)
        return 0;
    if (masked) {
        const unsigned char *mask = b + h - 4;
        for (uint64_t i = 0; i < len; i++)
            w->rbuf[h + i] ^= (char)mask[i & 3];
    }
    *hlen = h;
    *plen = len;
    return 1;
}

int tu_ws_recv(tu_ws_t *w, tu_wsmsg_t *m, int timeout_ms)
{
    long long deadline = tu_now_ms() + timeout_ms;
    memset(m, 0, sizeof(*m));
    m->data = "";
    m->close_reason = "";
    if (w->fd < 0)
        return -1;
    for (;;) {
        int fin, op, r;
        size_t h;
        uint64_t len;
        while ((r = parse_frame(w, &fin, &op, &h, &len)) == 1) {
            const char *payload = w->rbuf + h;
            if (op >= 0x8) { /* control frames come whole, possibly between fragments */
                if (tu_net_reserve(&w->ctl, &w->ctlcap, len + 1) != 0)
                    return -1;
                memcpy(w->ctl, payload, len);
                w->ctl[len] = '\0';
                consume(w, h + len);
                m->opcode = op;
                m->data = w->ctl;
                m->len = len;
                if (op == TU_WS_CLOSE) {
                    m->close_code = len >= 2 ? ((unsigned char)w->ctl[0] << 8) | (unsigned char)w->ctl[1] : 1005;
                    m->close_reason = len >= 2 ? w->ctl + 2 : "";
                } else if (op == TU_WS_PING) {
                    w->pings++;
                    if (w->auto_pong)
                        tu_ws_send(w, TU_WS_PONG, w->ctl, len);
                }
                return 1;
            }
            if (op != TU_WS_CONT) {
                w->msgop = op;
                w->msglen = 0;
            }
            if (tu_net_reserve(&w->msg, &w->msgcap, w->msglen + len + 1) != 0)
                return -1;
            memcpy(w->msg + w->msglen, payload, len);
            w->msglen += len;
            w->msg[w->msglen] = '\0';
            consume(w, h + len);
            if (fin) {
                m->opcode = w->msgop;
                m->data = w->msg;
                m->len = w->msglen;
                return 1;
            }
        }
        if (r < 0 || w->eof || w->err)
            return -1;
        r = read_some(w, deadline);
        if (r == -2)
            return 0;
    }
}

int tu_ws_recv_data(tu_ws_t *w, tu_wsmsg_t *m, int timeout_ms)
{
    long long deadline = tu_now_ms() + timeout_ms;
    for (;;) {
        long long left = deadline - tu_now_ms();
        int r = tu_ws_recv(w, m, left < 0 ? 0 : (int)left);
        if (r != 1 || (m->opcode != TU_WS_PING && m->opcode != TU_WS_PONG))
            return r;
    }
}
