/*
 * Socket helpers of the test clients (SSE/NDJSON, WebSocket): a non-blocking connection to
 * loopback and reads and writes bounded by a deadline in monotonic milliseconds.
 */
#ifndef SL_TESTNET_H
#define SL_TESTNET_H

#include <stddef.h>

/* Monotonic milliseconds, for deadlines. */
long long tu_now_ms(void);

/* Grows *buf (capacity *cap) to hold need bytes. 0, or -1 on no memory. */
int tu_net_reserve(char **buf, size_t *cap, size_t need);

/* Waits for events (POLLIN/POLLOUT) on fd until deadline: 1 ready, 0 timeout, -1 error. */
int tu_net_wait(int fd, short events, long long deadline);

/* A non-blocking TCP connection to 127.0.0.1:port (SO_RCVBUF set first when rcvbuf > 0). The fd,
 * or -1 on failure or timeout. */
int tu_net_connect(int port, int rcvbuf, long long deadline);
/* The same with the segment size the client announces set to mss first (when mss > 0): the server's
 * send buffer is sized from it, so a client that does not read stops the server's writes after a
 * few tens of KB instead of a few MB. */
int tu_net_connect_mss(int port, int rcvbuf, int mss, long long deadline);
/* Bytes sent to fd (a loopback TCP connection) that have not left the kernel: those received and
 * not read (FIONREAD) plus those still queued in the peer's socket (/proc/net/tcp's tx_queue); once
 * settled, what the peer has written. -1 if unknown. */
long tu_net_written_to(int fd);
/* A listening socket on 127.0.0.1, on a free port (*port), with the given backlog; -1 on failure.
 * Nobody accept()s it: up to backlog connections complete their handshake (the kernel does) and are
 * never answered, as with a stopped server (a "black hole"). */
int tu_net_listen(int backlog, int *port);

/* A header's value (case-insensitive name) from an HTTP response head (status line, then one
 * "Name: value" per line), into out; returns out, or NULL if absent. */
const char *tu_header_in(const char *head, const char *name, char *out, size_t size);

/* Sends all of buf. 0, or -1 on error or timeout. */
int tu_net_send_all(int fd, const void *buf, size_t len, long long deadline);

/* Appends what the socket has to *buf (*len bytes used of *cap). Returns the bytes read (> 0), 0
 * on end of stream (*eof set), -1 on error (*err set to errno), -2 on timeout. */
int tu_net_read_some(int fd, char **buf, size_t *len, size_t *cap, int *eof, int *err, long long deadline);

#endif
