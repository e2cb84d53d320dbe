/*
 * A test client of the sse service's GET /v1/stream: HTTP/1.1 over a raw socket, reading a
 * streaming response (chunked or not) and splitting it into Server-Sent Events or NDJSON lines.
 *
 * Raw sockets rather than libcurl, so that a test controls the socket (a small receive buffer, a
 * client that never reads) and every wait is bounded by a timeout the caller gives. One
 * tu_stream_t is used by one thread at a time; different streams may live in different threads.
 * Nothing here calls Check: callers assert on the return values.
 */
#ifndef SL_STREAMCLIENT_H
#define SL_STREAMCLIENT_H

#include "sl_testnet.h"

#include <stddef.h>

typedef enum { TU_FMT_SSE = 0, TU_FMT_NDJSON = 1 } tu_fmt_t;

typedef enum {
    TU_EV_MESSAGE = 0, /* a feed event: SSE block with data, or an NDJSON object */
    TU_EV_HEARTBEAT,   /* an SSE comment-only block, or an empty NDJSON line */
    TU_EV_RETRY,       /* an SSE block with only retry: */
    TU_EV_RESET,       /* SSE "event: reset", or an NDJSON {"type":"reset",…} line */
    TU_EV_OTHER        /* anything else (an SSE block without data, an NDJSON line that is not JSON) */
} tu_evkind_t;

typedef struct tu_sev {
    tu_evkind_t kind;
    long long id;    /* SSE id: field, -1 when absent (and always for NDJSON) */
    long long seq;   /* the data's "seq" member, -1 when absent */
    long long retry; /* SSE retry: field, -1 when absent */
    char event[32];  /* SSE event: field, "message" when absent; NDJSON: the "type" member or "message" */
    char channel[72];/* the data's "channel" member, "" when absent */
    const char *data;/* SSE data: lines joined with \n, or the NDJSON line; NUL-terminated; owned by
                      * the stream, valid until its next tu_stream_next or tu_stream_close */
    size_t len;
} tu_sev_t;

typedef struct tu_stream_opts {
    const char *headers; /* extra request headers, each "Name: value\r\n"; NULL for none */
    int rcvbuf;          /* SO_RCVBUF set before connecting; 0 leaves the default */
    int no_read;         /* only send the request; read not even the response head (a stuck client) */
} tu_stream_opts_t;

typedef struct tu_stream {
    int fd;
    tu_fmt_t fmt;          /* from the response's Content-Type */
    long status;           /* HTTP status, 0 until the head arrived */
    char *head;            /* the response head (status line and headers), NUL-terminated */
    char *body;            /* a non-200 answer's whole body, NUL-terminated */
    int eof;               /* the server ended the response or closed the connection */
    int err;               /* errno of a failed read (e.g. ECONNRESET), else 0 */
    unsigned long long body_bytes; /* decoded body bytes received so far */
    /* private */
    char *raw, *in, *evbuf;
    size_t rawlen, rawcap, inoff, inlen, incap, evcap;
    int chunked, chunk_state, done;
    unsigned long long chunk_left;
} tu_stream_t;

/* Connects to 127.0.0.1:port, sends "GET target" and (unless opts->no_read) reads the response
 * head; a non-200 answer's body is read whole into s->body. opts may be NULL. Returns 0 when a
 * head arrived (check s->status) or with no_read once the request is sent; -1 on a connection
 * error or timeout (s is then closed). */
int tu_stream_open(tu_stream_t *s, int port, const char *target, const tu_stream_opts_t *opts, int timeout_ms);

/* The next event, waiting up to timeout_ms. Returns 1 with *ev, 0 on timeout, -1 when the
 * stream ended (s->eof, or s->err after a read error). */
int tu_stream_next(tu_stream_t *s, tu_sev_t *ev, int timeout_ms);

/* A response header's value (case-insensitive name) into out; returns out, or NULL if absent. */
const char *tu_stream_header(const tu_stream_t *s, const char *name, char *out, size_t size);

/* The next event that is not a heartbeat or a retry block, waiting up to timeout_ms in all.
 * Returns 1 with *ev, else 0 (timeout, or the stream ended). */
int tu_stream_next_event(tu_stream_t *s, tu_sev_t *ev, int timeout_ms);

/* Reads and discards until the stream ends or timeout_ms passes; returns the bytes read. Sets
 * s->eof / s->err like tu_stream_next. */
unsigned long long tu_stream_drain(tu_stream_t *s, int timeout_ms);

/* Closes the socket and frees everything; safe on a closed or zeroed stream. */
void tu_stream_close(tu_stream_t *s);


#endif
