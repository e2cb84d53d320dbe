/*
 * A minimal WebSocket client (RFC 6455) for tests: the opening handshake (checking
 * Sec-WebSocket-Accept), masked frames out, frames in (fragments joined, close codes read,
 * pings answered). Raw socket, every wait bounded by the caller's timeout. One tu_ws_t per
 * thread at a time; nothing here calls Check.
 */
#ifndef SL_WSCLIENT_H
#define SL_WSCLIENT_H

#include <stddef.h>

enum {
    TU_WS_CONT = 0x0,
    TU_WS_TEXT = 0x1,
    TU_WS_BINARY = 0x2,
    TU_WS_CLOSE = 0x8,
    TU_WS_PING = 0x9,
    TU_WS_PONG = 0xA,
};

typedef struct tu_wsmsg {
    int opcode;       /* TU_WS_TEXT, TU_WS_BINARY, TU_WS_CLOSE, TU_WS_PING or TU_WS_PONG */
    const char *data; /* payload (NUL-terminated), owned by the client, valid until its next call */
    size_t len;
    int close_code;   /* of a close frame: its status code, 1005 when it carries none */
    const char *close_reason; /* of a close frame: the text after the code */
} tu_wsmsg_t;

typedef struct tu_ws {
    int fd;
    long status;       /* the handshake's HTTP status (101 on success) */
    char *head;        /* the handshake response head */
    char *body;        /* a refused handshake's body */
    int eof, err;      /* the server closed the TCP connection / errno of a failed read */
    int auto_pong;     /* answer pings by themselves (default 1); they are returned all the same */
    unsigned pings;    /* pings received */
    /* private */
    char *rbuf, *msg, *ctl;
    size_t rlen, rcap, msglen, msgcap, ctlcap;
    int msgop;
} tu_ws_t;

/* Connects to 127.0.0.1:port and upgrades GET target. Returns 0 on 101 with the right
 * Sec-WebSocket-Accept; -1 otherwise (w->status and w->body tell a refusal; the socket is closed). */
int tu_ws_open(tu_ws_t *w, int port, const char *target, int timeout_ms);
/* The same with the socket's SO_RCVBUF set to rcvbuf before it connects (0: the system's), so
 * that a client that does not read holds little in its kernel. */
int tu_ws_open_rcvbuf(tu_ws_t *w, int port, const char *target, int rcvbuf, int timeout_ms);

/* Sends one masked frame with FIN set (any opcode, len may be 0). 0, or -1 on a write error. */
int tu_ws_send(tu_ws_t *w, int opcode, const void *data, size_t len);
int tu_ws_send_text(tu_ws_t *w, const char *text);
/* A close frame with code (and reason, may be NULL). */
int tu_ws_send_close(tu_ws_t *w, int code, const char *reason);

/* The next message or control frame, waiting up to timeout_ms. Returns 1 with *m, 0 on timeout,
 * -1 when the connection ended without one (w->eof / w->err) or a frame was malformed. */
int tu_ws_recv(tu_ws_t *w, tu_wsmsg_t *m, int timeout_ms);
/* The same, skipping pings and pongs. */
int tu_ws_recv_data(tu_ws_t *w, tu_wsmsg_t *m, int timeout_ms);

void tu_ws_close(tu_ws_t *w);

#endif
