/*
 * Socket helpers of the test clients; see sl_testnet.h.
 */
#include "sl_testnet.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

long long tu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int tu_net_reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need)
        n *= 2;
    char *b = realloc(*buf, n);
    if (b == NULL)
        return -1;
    *buf = b;
    *cap = n;
    return 0;
}

int tu_net_wait(int fd, short events, long long deadline)
{
    for (;;) {
        long long left = deadline - tu_now_ms();
        struct pollfd p = {fd, events, 0};
        int r = poll(&p, 1, left < 0 ? 0 : (int)left);
        if (r >= 0)
            return r > 0;
        if (errno != EINTR)
            return -1;
    }
}

int tu_net_connect(int port, int rcvbuf, long long deadline)
{
    return tu_net_connect_mss(port, rcvbuf, 0, deadline);
}

int tu_net_connect_mss(int port, int rcvbuf, int mss, long long deadline)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    if (mss > 0 && setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof(mss)) != 0) {
        close(fd);
        return -1;
    }
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(0x7f000001);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        if (errno != EINPROGRESS || tu_net_wait(fd, POLLOUT, deadline) != 1 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0) {
            close(fd);
            return -1;
        }
    }
    return fd;
}

long tu_net_written_to(int fd)
{
    struct sockaddr_in me, peer;
    socklen_t l1 = sizeof(me), l2 = sizeof(peer);
    int unread = 0;
    if (getsockname(fd, (struct sockaddr *)&me, &l1) != 0 || getpeername(fd, (struct sockaddr *)&peer, &l2) != 0 ||
        ioctl(fd, FIONREAD, &unread) != 0)
        return -1;
    FILE *f = fopen("/proc/net/tcp", "r");
    if (f == NULL)
        return -1;
    /* "  sl  local_address rem_address   st tx_queue:rx_queue ...": the peer's line has our ports swapped */
    char line[512];
    long queued = -1;
    while (queued < 0 && fgets(line, sizeof(line), f) != NULL) {
        unsigned lport, rport;
        unsigned long tx;
        if (sscanf(line, " %*u: %*x:%x %*x:%x %*x %lx:%*x", &lport, &rport, &tx) == 3 &&
            lport == ntohs(peer.sin_port) && rport == ntohs(me.sin_port))
            queued = (long)tx;
    }
    fclose(f);
    return queued < 0 ? -1 : queued + unread;
}

int tu_net_send_all(int fd, const void *buf, size_t len, long long deadline)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return -1;
        if (tu_net_wait(fd, POLLOUT, deadline) != 1)
            return -1;
    }
    return 0;
}

int tu_net_read_some(int fd, char **buf, size_t *len, size_t *cap, int *eof, int *err, long long deadline)
{
    for (;;) {
        if (tu_net_reserve(buf, cap, *len + 65536) != 0)
            return -1;
        ssize_t n = recv(fd, *buf + *len, *cap - *len, 0);
        if (n > 0) {
            *len += (size_t)n;
            return (int)n;
        }
        if (n == 0) {
            *eof = 1;
            return 0;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN) {
            *err = errno;
            return -1;
        }
        int w = tu_net_wait(fd, POLLIN, deadline);
        if (w == 0)
            return -2;
        if (w < 0) {
            *err = errno;
            return -1;
        }
    }
}

int tu_net_listen(int backlog, int *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, backlog) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

const char *tu_header_in(const char *head, const char *name, char *out, size_t size)
{
    size_t nl = strlen(name);
    for (const char *p = strchr(head, '\n'); p != NULL && p[1] != '\0'; p = strchr(p + 1, '\n')) {
        const char *line = p + 1;
        if (strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1, *e;
            while (*v == ' ' || *v == '\t')
                v++;
            for (e = v; *e != '\r' && *e != '\n' && *e != '\0'; e++)
                ;
            snprintf(out, size, "%.*s", (int)(e - v), v);
            return out;
        }
    }
    return NULL;
}
