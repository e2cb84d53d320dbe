/*
 * sl_ssebench: the streaming benchmark. Opens N concurrent Server-Sent Events subscriptions
 * (non-blocking HTTP/1.1 over epoll), publishes at a fixed open-loop rate for a fixed time, and
 * measures what arrives: deliveries/s, publish -> receive latency, and the server process's
 * resident memory per connection. Every message carries its send time (CLOCK_REALTIME, µs) in its
 * text as "sbt=<us>", so the latency of a delivery is its receive time minus that stamp; tool and
 * servers share the machine, hence the clock.
 *
 * One tool for both targets, so that the same load meets sluice and Nchan:
 *   --pub-mode sluice  POST {"channel","author","text"} as JSON to sluice-api (the whole path:
 *                      api -> RabbitMQ -> persister -> live exchange -> sluice-sse);
 *   --pub-mode amqp    publish stored-message JSON with consecutive seq straight to the live
 *                      exchange (the sse service alone: RabbitMQ -> sluice-sse);
 *   --pub-mode raw     POST the text itself as the body (Nchan's nchan_publisher).
 * The subscriptions are plain GETs with Accept: text/event-stream, chunked or not.
 *
 * Two loads can run beside the publishing, for as long (bench/sse_run.sh --abuse):
 *   --get-url    GETs at a fixed open-loop rate (--get-rate) on keep-alive connections, e.g. the
 *                api's GET /v1/messages: GET -> answer latency;
 *   --abuse-url  --abuse-count clients spread evenly over --abuse-seconds (the publishing time by
 *                default) from its start, each connecting,
 *                sending its GET and closing at once without reading (connect-and-drop), from
 *                --abuse-addrs loopback addresses (127.0.1.1 ...: many clients, not one).
 *
 * Ends with one "RESULT key=value ..." line that bench/sse_run.sh reads. Only talks to the
 * addresses it is given; bench/sse_run.sh gives it 127.0.0.1.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>

#include "sl_amqp.h"
#include "sl_benchutil.h"
#include "sl_config.h"
#include "sl_http.h"
#include "sl_time.h"
#include "sl_uuid.h"

#define MARK "sbt="
#define LINE_CAP 232        /* a partial line kept between reads; the stamp sits in the first 100 bytes */
#define READ_BUF (256 * 1024)

/* ---- latency histogram: 64 sub-buckets per power of two (about 1.6 % resolution), in µs ------- */

#define H_SUB 64
#define H_N (H_SUB + 42 * H_SUB)

typedef struct hist {
    uint64_t n[H_N];
    uint64_t count, max;
} hist_t;

static int h_index(uint64_t v)
{
    if (v < H_SUB)
        return (int)v;
    int e = 63 - __builtin_clzll(v); /* >= 6 */
    int idx = H_SUB + (e - 6) * H_SUB + (int)((v >> (e - 6)) & (H_SUB - 1));
    return idx < H_N ? idx : H_N - 1;
}

static double h_value(int idx) /* the middle of the bucket */
{
    if (idx < H_SUB)
        return idx;
    int e = (idx - H_SUB) / H_SUB + 6, m = (idx - H_SUB) % H_SUB;
    return (double)((uint64_t)(H_SUB + m) << (e - 6)) + (double)((uint64_t)1 << (e - 6)) / 2;
}

static void h_add(hist_t *h, uint64_t v)
{
    h->n[h_index(v)]++;
    h->count++;
    if (v > h->max)
        h->max = v;
}

static void h_merge(hist_t *into, const hist_t *h)
{
    for (int i = 0; i < H_N; i++)
        into->n[i] += h->n[i];
    into->count += h->count;
    if (h->max > into->max)
        into->max = h->max;
}

static double h_pct(const hist_t *h, double p) /* µs */
{
    if (h->count == 0)
        return 0;
    uint64_t want = (uint64_t)(p / 100.0 * (double)h->count + 0.5), seen = 0;
    if (want == 0)
        want = 1;
    for (int i = 0; i < H_N; i++) {
        seen += h->n[i];
        if (seen >= want)
            return h_value(i) < (double)h->max ? h_value(i) : (double)h->max;
    }
    return (double)h->max;
}

/* ---- small helpers ----------------------------------------------------------------------------- */

typedef struct url {
    struct sockaddr_in addr;
    char hostport[64];
    char path[512];
} url_t;

/* Only what the bench needs: http://IPV4:PORT/PATH. */
static int parse_url(const char *s, url_t *u)
{
    char host[64];
    unsigned port = 80;
    const char *p, *slash;
    memset(u, 0, sizeof(*u));
    if (strncmp(s, "http://", 7) != 0)
        return -1;
    p = s + 7;
    slash = strchr(p, '/');
    if (slash == NULL)
        slash = p + strlen(p);
    if ((size_t)(slash - p) >= sizeof(host))
        return -1;
    memcpy(host, p, (size_t)(slash - p));
    host[slash - p] = '\0';
    snprintf(u->hostport, sizeof(u->hostport), "%s", host);
    char *colon = strchr(host, ':');
    if (colon != NULL) {
        *colon = '\0';
        port = (unsigned)strtoul(colon + 1, NULL, 10);
    }
    u->addr.sin_family = AF_INET;
    u->addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &u->addr.sin_addr) != 1 || port == 0 || port > 65535)
        return -1;
    snprintf(u->path, sizeof(u->path), "%s", *slash ? slash : "/");
    return 0;
}

static long rss_kb(long pid)
{
    char path[64], line[256];
    long kb = -1;
    if (pid <= 0)
        return -1;
    snprintf(path, sizeof(path), "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

/* Busy and total jiffies of the whole machine (every core), for how contended a run was. */
static void machine_ticks(long long *busy, long long *total)
{
    unsigned long long v[8] = {0};
    *busy = *total = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL)
        return;
    if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
               &v[7]) == 8) {
        for (int i = 0; i < 8; i++)
            *total += (long long)v[i];
        *busy = *total - (long long)v[3] - (long long)v[4]; /* minus idle and iowait */
    }
    fclose(f);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* ---- subscribers ------------------------------------------------------------------------------- */

enum { S_IDLE, S_CONNECTING, S_HEADERS, S_BODY, S_CLOSED };
enum { C_SIZE, C_EXT, C_DATA, C_DATA_END, C_DONE };

struct sub {
    int fd;
    uint8_t state, chunked, cstate;
    uint16_t llen;
    uint16_t status;
    uint32_t chunk_left;
    uint32_t events;
    char line[LINE_CAP];
};

typedef struct subthr {
    pthread_t th;
    int ep;
    struct sub *subs;
    size_t nsubs, next, connecting;
    const url_t *url;
    const char *req;
    size_t reqlen;
    long long batch;
    char *rbuf;
    hist_t lat;
    uint64_t events, other_events, bytes, bad_stamps;
    int64_t last_event_us;
    uint64_t statuses[6]; /* 2xx..5xx by class index status/100, [0] connect errors */
} subthr_t;

static struct {
    atomic_int stop;
    atomic_long established, failed, closed;
    atomic_ullong events;
    atomic_llong measure_from_us; /* stamps older than this (before publishing) are not samples */
} G;

/* A subscription that ends: refused or broken before its headers, or closed while streaming. */
static void sub_close(subthr_t *t, struct sub *s)
{
    if (s->fd >= 0) {
        epoll_ctl(t->ep, EPOLL_CTL_DEL, s->fd, NULL);
        close(s->fd);
        s->fd = -1;
    }
    if (s->state == S_CONNECTING)
        t->connecting--;
    if (s->state == S_BODY)
        atomic_fetch_add(&G.closed, 1);
    else if (s->state != S_CLOSED)
        atomic_fetch_add(&G.failed, 1);
    s->state = S_CLOSED;
}

static void sse_line(subthr_t *t, struct sub *s, const char *p, size_t n, int64_t now)
{
    if (n > 0 && p[n - 1] == '\r')
        n--;
    if (n < 5 || memcmp(p, "data:", 5) != 0)
        return;
    const char *m = memmem(p, n, MARK, sizeof(MARK) - 1);
    if (m == NULL) {
        t->other_events++;
        return;
    }
    m += sizeof(MARK) - 1;
    int64_t sent = 0;
    const char *end = p + n;
    while (m < end && *m >= '0' && *m <= '9')
        sent = sent * 10 + (*m++ - '0');
    s->events++;
    t->events++;
    if (sent <= 0) {
        t->bad_stamps++;
        return;
    }
    if (sent >= atomic_load_explicit(&G.measure_from_us, memory_order_relaxed))
        h_add(&t->lat, now > sent ? (uint64_t)(now - sent) : 0);
    if (now > t->last_event_us)
        t->last_event_us = now;
}

static void carry(struct sub *s, const char *p, size_t n)
{
    size_t room = LINE_CAP - s->llen;
    if (n > room) /* the rest of a long line is not needed: the stamp comes early */
        n = room;
    memcpy(s->line + s->llen, p, n);
    s->llen = (uint16_t)(s->llen + n);
}

/* Event-stream bytes: split into lines, the last partial one carried to the next read. */
static void sse_bytes(subthr_t *t, struct sub *s, const char *p, size_t n, int64_t now)
{
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        if (nl == NULL) {
            carry(s, p, n);
            return;
        }
        size_t k = (size_t)(nl - p);
        if (s->llen > 0) {
            carry(s, p, k);
            sse_line(t, s, s->line, s->llen, now);
            s->llen = 0;
        } else {
            sse_line(t, s, p, k, now);
        }
        p = nl + 1;
        n -= k + 1;
    }
}

/* One response header line (without its newline). Returns 1 at the end of the headers, -1 on a
 * refused subscription. */
static int header_line(subthr_t *t, struct sub *s, const char *p, size_t n)
{
    if (n > 0 && p[n - 1] == '\r')
        n--;
    if (s->status == 0) {
        if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0)
            return -1;
        s->status = (uint16_t)atoi(p + 9);
        int cls = s->status / 100;
        if (cls >= 1 && cls <= 5)
            t->statuses[cls]++;
        return s->status == 200 ? 0 : -1;
    }
    if (n == 0)
        return 1;
    if (n > 18 && strncasecmp(p, "transfer-encoding:", 18) == 0 && memmem(p, n, "chunked", 7) != NULL)
        s->chunked = 1;
    return 0;
}

static void body_bytes(subthr_t *t, struct sub *s, const char *p, size_t n, int64_t now)
{
    if (!s->chunked) {
        sse_bytes(t, s, p, n, now);
        return;
    }
    while (n > 0) {
        switch (s->cstate) {
        case C_SIZE:
        case C_EXT: {
            char c = *p++;
            n--;
            if (c == '\n') {
                s->cstate = s->chunk_left > 0 ? C_DATA : C_DONE;
            } else if (s->cstate == C_SIZE && c != '\r') {
                int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
                if (d < 0)
                    s->cstate = C_EXT;
                else
                    s->chunk_left = s->chunk_left * 16 + (uint32_t)d;
            }
            break;
        }
        case C_DATA: {
            size_t k = n < s->chunk_left ? n : s->chunk_left;
            sse_bytes(t, s, p, k, now);
            p += k;
            n -= k;
            s->chunk_left -= (uint32_t)k;
            if (s->chunk_left == 0)
                s->cstate = C_DATA_END;
            break;
        }
        case C_DATA_END:
            if (*p == '\n') {
                s->cstate = C_SIZE;
                s->chunk_left = 0;
            }
            p++;
            n--;
            break;
        default: /* the server ended the stream; whatever follows is not ours */
            return;
        }
    }
}

static void feed(subthr_t *t, struct sub *s, const char *p, size_t n, int64_t now)
{
    while (n > 0 && s->state == S_HEADERS) {
        const char *nl = memchr(p, '\n', n);
        if (nl == NULL) {
            carry(s, p, n);
            return;
        }
        size_t k = (size_t)(nl - p);
        int r;
        if (s->llen > 0) {
            carry(s, p, k);
            r = header_line(t, s, s->line, s->llen);
            s->llen = 0;
        } else {
            r = header_line(t, s, p, k);
        }
        p = nl + 1;
        n -= k + 1;
        if (r < 0) {
            sub_close(t, s);
            return;
        }
        if (r > 0) {
            s->state = S_BODY;
            s->cstate = C_SIZE;
            s->chunk_left = 0;
            atomic_fetch_add(&G.established, 1);
        }
    }
    if (n > 0 && s->state == S_BODY)
        body_bytes(t, s, p, n, now);
}

static void start_connect(subthr_t *t, struct sub *s)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        t->statuses[0]++;
        s->state = S_CONNECTING; /* counted as failed by sub_close */
        t->connecting++;
        sub_close(t, s);
        return;
    }
    s->fd = fd;
    s->state = S_CONNECTING;
    t->connecting++;
    if (connect(fd, (const struct sockaddr *)&t->url->addr, sizeof(t->url->addr)) != 0 && errno != EINPROGRESS) {
        t->statuses[0]++;
        sub_close(t, s);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = s};
    if (epoll_ctl(t->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
        t->statuses[0]++;
        sub_close(t, s);
    }
}

static void on_writable(subthr_t *t, struct sub *s)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
        t->statuses[0]++;
        sub_close(t, s);
        return;
    }
    /* a request this small always fits an empty socket buffer */
    if (write(s->fd, t->req, t->reqlen) != (ssize_t)t->reqlen) {
        t->statuses[0]++;
        sub_close(t, s);
        return;
    }
    t->connecting--;
    s->state = S_HEADERS;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
    epoll_ctl(t->ep, EPOLL_CTL_MOD, s->fd, &ev);
}

static void on_readable(subthr_t *t, struct sub *s)
{
    ssize_t r = read(s->fd, t->rbuf, READ_BUF);
    if (r <= 0) {
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        sub_close(t, s);
        return;
    }
    int64_t now = sl_time_now_us();
    t->bytes += (uint64_t)r;
    uint64_t before = t->events;
    feed(t, s, t->rbuf, (size_t)r, now);
    if (t->events != before)
        atomic_fetch_add_explicit(&G.events, t->events - before, memory_order_relaxed);
}

static void *sub_main(void *arg)
{
    subthr_t *t = arg;
    struct epoll_event evs[512];
    while (!atomic_load(&G.stop)) {
        while (t->next < t->nsubs && (long long)t->connecting < t->batch)
            start_connect(t, &t->subs[t->next++]);
        int n = epoll_wait(t->ep, evs, 512, 50);
        for (int i = 0; i < n; i++) {
            struct sub *s = evs[i].data.ptr;
            if (s->state == S_CONNECTING)
                on_writable(t, s);
            else if (s->state == S_HEADERS || s->state == S_BODY)
                on_readable(t, s);
        }
    }
    for (size_t i = 0; i < t->nsubs; i++) {
        if (t->subs[i].fd >= 0)
            close(t->subs[i].fd);
    }
    return NULL;
}

/* ---- publisher --------------------------------------------------------------------------------- */

enum { P_SLUICE, P_RAW, P_AMQP, P_GET };

typedef struct pubconf {
    int mode;
    url_t url;
    const char *channel, *amqp_url, *exchange;
    long long conns, text_size, seq_start;
    double rate;
    long long total;
    int64_t start_mono; /* message k is due at start_mono + k / rate */
} pubconf_t;

struct pubconn {
    int fd;
    int busy;
    int64_t sent_mono;
    size_t rlen;
    char rbuf[65536]; /* a whole answer: a GET /v1/messages page too */
};

typedef struct pubres {
    long long sent, ok, refused, errors;
    int64_t first_us, last_us; /* realtime of the first and last send */
    hist_t lat;                /* POST -> answer */
    hist_t late;               /* actual send time - due time: an open loop that falls behind shows here */
    char err[256];
} pubres_t;

static size_t make_text(char *buf, size_t cap, long long text_size, int64_t now)
{
    static const char filler[] = "the quick brown fox jumps over the lazy dog while the feed keeps flowing ";
    int n = snprintf(buf, cap, MARK "%lld ", (long long)now);
    size_t len = (size_t)n;
    while ((long long)len < text_size && len + 1 < cap) {
        buf[len] = filler[len % (sizeof(filler) - 1)];
        len++;
    }
    buf[len] = '\0';
    return len;
}

static int pub_connect(const url_t *u)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0)
        return -1;
    if (connect(fd, (const struct sockaddr *)&u->addr, sizeof(u->addr)) != 0 || set_nonblock(fd) != 0) {
        close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static int pub_send(const pubconf_t *pc, struct pubconn *c, pubres_t *res)
{
    char text[2048], body[2600], req[3400];
    int64_t now = sl_time_now_us();
    size_t tl = make_text(text, sizeof(text), pc->text_size, now);
    int bl, rl;
    if (pc->mode == P_GET) {
        rl = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", pc->url.path, pc->url.hostport);
    } else {
        if (pc->mode == P_SLUICE)
            bl = snprintf(body, sizeof(body), "{\"channel\":\"%s\",\"author\":\"b\",\"text\":\"%s\"}", pc->channel,
                          text);
        else
            bl = snprintf(body, sizeof(body), "%.*s", (int)tl, text);
        rl = snprintf(req, sizeof(req),
                      "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s",
                      pc->url.path, pc->url.hostport, pc->mode == P_SLUICE ? "application/json" : "text/plain", bl,
                      body);
    }
    if (write(c->fd, req, (size_t)rl) != rl)
        return -1;
    c->busy = 1;
    c->sent_mono = sl_time_mono_us();
    int64_t due = pc->start_mono + (int64_t)((double)res->sent * 1e6 / pc->rate);
    h_add(&res->late, c->sent_mono > due ? (uint64_t)(c->sent_mono - due) : 0);
    if (res->sent == 0)
        res->first_us = now;
    res->last_us = now;
    res->sent++;
    return 0;
}

/* Takes complete answers off c; returns -1 when the connection broke. */
static int pub_read(struct pubconn *c, pubres_t *res)
{
    ssize_t r = read(c->fd, c->rbuf + c->rlen, sizeof(c->rbuf) - 1 - c->rlen);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
        return -1;
    if (r < 0)
        return 0;
    c->rlen += (size_t)r;
    c->rbuf[c->rlen] = '\0';
    for (;;) {
        char *he = strstr(c->rbuf, "\r\n\r\n");
        if (he == NULL)
            return c->rlen < sizeof(c->rbuf) - 1 ? 0 : -1;
        size_t hl = (size_t)(he + 4 - c->rbuf), total;
        int status = c->rlen > 12 ? atoi(c->rbuf + 9) : 0;
        char *cl = strcasestr(c->rbuf, "\r\ncontent-length:");
        if (cl != NULL && cl < he) {
            total = hl + strtoul(cl + 17, NULL, 10);
        } else {
            char *te = strcasestr(c->rbuf, "\r\ntransfer-encoding:");
            if (te == NULL || te > he)
                total = hl;
            else {
                char *z = strstr(he + 2, "\r\n0\r\n\r\n");
                if (z == NULL)
                    return 0;
                total = (size_t)(z + 7 - c->rbuf);
            }
        }
        if (c->rlen < total)
            return 0;
        h_add(&res->lat, (uint64_t)(sl_time_mono_us() - c->sent_mono));
        if (status >= 200 && status < 300)
            res->ok++;
        else if (status == 429 || status == 503)
            res->refused++;
        else
            res->errors++;
        if (!(status >= 200 && status < 300) && res->err[0] == '\0')
            snprintf(res->err, sizeof(res->err), "%.*s", (int)(hl > 200 ? 200 : hl), c->rbuf);
        memmove(c->rbuf, c->rbuf + total, c->rlen - total);
        c->rlen -= total;
        c->rbuf[c->rlen] = '\0';
        c->busy = 0;
    }
}

static int timer_start(double rate)
{
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd < 0)
        return -1;
    long long ns = (long long)(1e9 / rate);
    if (ns < 1000)
        ns = 1000;
    struct itimerspec its = {{ns / 1000000000, ns % 1000000000}, {0, 1}};
    if (timerfd_settime(tfd, 0, &its, NULL) != 0) {
        close(tfd);
        return -1;
    }
    return tfd;
}

/* Open loop over HTTP: a message is due every 1/rate s; it goes out on the next free keep-alive
 * connection (its stamp is taken then, so a late send never flatters the latency). */
static void publish_http(pubconf_t *pc, pubres_t *res)
{
    struct pubconn *cs = calloc((size_t)pc->conns, sizeof(*cs));
    int ep = epoll_create1(EPOLL_CLOEXEC), tfd = -1;
    long long due = 0;
    if (cs == NULL || ep < 0) {
        snprintf(res->err, sizeof(res->err), "out of memory");
        goto Exit;
    }
    for (long long i = 0; i < pc->conns; i++) {
        if ((cs[i].fd = pub_connect(&pc->url)) < 0) {
            snprintf(res->err, sizeof(res->err), "publisher connect: %s", strerror(errno));
            goto Exit;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    pc->start_mono = sl_time_mono_us();
    if ((tfd = timer_start(pc->rate)) < 0) {
        snprintf(res->err, sizeof(res->err), "timerfd: %s", strerror(errno));
        goto Exit;
    }
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);
    int64_t deadline = sl_time_mono_us() + (int64_t)((double)pc->total / pc->rate * 1e6) + 30000000;
    long long inflight = 0;
    while ((res->sent < pc->total || inflight > 0) && !interrupted && sl_time_mono_us() < deadline) {
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, 100);
        for (int i = 0; i < n; i++) {
            struct pubconn *c = evs[i].data.ptr;
            if (c == NULL) {
                uint64_t exp;
                if (read(tfd, &exp, sizeof(exp)) == sizeof(exp))
                    due += (long long)exp;
                if (due > pc->total)
                    due = pc->total;
                continue;
            }
            int was = c->busy;
            if (pub_read(c, res) != 0) {
                if (c->busy)
                    res->errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->busy = 0;
                c->rlen = 0;
                if ((c->fd = pub_connect(&pc->url)) >= 0) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
                }
            }
            if (was && !c->busy)
                inflight--;
        }
        for (long long i = 0; i < pc->conns && res->sent < due; i++) {
            if (cs[i].busy || cs[i].fd < 0)
                continue;
            if (pub_send(pc, &cs[i], res) == 0)
                inflight++;
            else
                res->errors++;
        }
    }
Exit:
    if (tfd >= 0)
        close(tfd);
    if (ep >= 0)
        close(ep);
    for (long long i = 0; cs != NULL && i < pc->conns; i++) {
        if (cs[i].fd > 0)
            close(cs[i].fd);
    }
    free(cs);
}

/* Straight to the live exchange, as the persister would after a commit: consecutive seq from
 * seq_start, so that the hub delivers each at once. */
static void publish_amqp(pubconf_t *pc, pubres_t *res)
{
    char err[200], text[2048], body[3000], id[SL_UUID_STRLEN], ts[SL_TIME_RFC3339_LEN];
    amqp_connection_state_t conn = sl_amqp_open(pc->amqp_url, "sl_ssebench", 0, 5000, err, sizeof(err));
    int tfd = -1;
    if (conn == NULL) {
        snprintf(res->err, sizeof(res->err), "amqp: %s", err);
        return;
    }
    amqp_exchange_declare(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(pc->exchange), amqp_cstring_bytes("topic"), 0, 1,
                          0, 0, amqp_empty_table);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        snprintf(res->err, sizeof(res->err), "declare %s: %s", pc->exchange, sl_amqp_reply_text(r, err, sizeof(err)));
        goto Exit;
    }
    pc->start_mono = sl_time_mono_us();
    if ((tfd = timer_start(pc->rate)) < 0) {
        snprintf(res->err, sizeof(res->err), "timerfd: %s", strerror(errno));
        goto Exit;
    }
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.delivery_mode = 1;
    /* wait for the timer with a bounded epoll_wait, so that an interrupt is seen */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event tev = {.events = EPOLLIN, .data.fd = tfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);
    long long due = 0;
    while (res->sent < pc->total && !interrupted) {
        struct epoll_event ev;
        if (epoll_wait(ep, &ev, 1, 100) > 0) {
            uint64_t exp;
            if (read(tfd, &exp, sizeof(exp)) == sizeof(exp))
                due += (long long)exp;
        }
        while (res->sent < due && res->sent < pc->total) {
            int64_t now = sl_time_now_us();
            make_text(text, sizeof(text), pc->text_size, now);
            sl_uuid_v7(id);
            sl_time_format(now, ts);
            int bl = snprintf(body, sizeof(body),
                              "{\"id\":\"%.36s\",\"channel\":\"%s\",\"author\":\"b\",\"text\":\"%s\",\"source\":\"api\","
                              "\"created_at\":\"%s\",\"seq\":%lld}",
                              id, pc->channel, text, ts, pc->seq_start + res->sent);
            amqp_bytes_t b = {(size_t)bl, body};
            int st = amqp_basic_publish(conn, SL_AMQP_CHANNEL, amqp_cstring_bytes(pc->exchange),
                                        amqp_cstring_bytes(pc->channel), 0, 0, &props, b);
            if (st != AMQP_STATUS_OK) {
                snprintf(res->err, sizeof(res->err), "publish: %s", amqp_error_string2(st));
                close(ep);
                goto Exit;
            }
            int64_t due_mono = pc->start_mono + (int64_t)((double)res->sent * 1e6 / pc->rate), m = sl_time_mono_us();
            h_add(&res->late, m > due_mono ? (uint64_t)(m - due_mono) : 0);
            if (res->sent == 0)
                res->first_us = now;
            res->last_us = now;
            res->sent++;
            res->ok++;
        }
    }
    close(ep);
Exit:
    if (tfd >= 0)
        close(tfd);
    sl_amqp_close(conn);
}

/* ---- the loads beside the publishing ----------------------------------------------------------- */

/* GETs at a fixed rate (publish_http in P_GET mode) in a thread of their own. */
typedef struct getload {
    pubconf_t pc;
    pubres_t res;
    pthread_t th;
    int running;
} getload_t;

static void *get_main(void *arg)
{
    getload_t *g = arg;
    publish_http(&g->pc, &g->res);
    return NULL;
}

/* Connect-and-drop clients: each connects (from the next of addrs loopback addresses), sends its
 * request and closes without reading, the count spread evenly over duration seconds. */
typedef struct abuse {
    url_t url;
    long long count, addrs;
    double duration;
    long long sent, failed;
    double seconds;
    pthread_t th;
    int running;
} abuse_t;

static void *abuse_main(void *arg)
{
    abuse_t *a = arg;
    char req[700];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", a->url.path,
                     a->url.hostport);
    int64_t start = sl_time_mono_us();
    for (long long i = 0; i < a->count && !interrupted && !atomic_load(&G.stop); i++) {
        int64_t due = start + (int64_t)((double)i * a->duration * 1e6 / (double)a->count), now = sl_time_mono_us();
        if (due > now)
            sleep_ms((long)((due - now + 999) / 1000));
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), ok = fd >= 0;
        struct timeval tv = {2, 0};
        if (ok && a->addrs > 0) {
            long long k = i % a->addrs;
            struct sockaddr_in from = {.sin_family = AF_INET};
            from.sin_addr.s_addr = htonl(0x7f000000u | (uint32_t)(1 + k / 254) << 8 | (uint32_t)(1 + k % 254));
            ok = bind(fd, (struct sockaddr *)&from, sizeof(from)) == 0;
        }
        ok = ok && setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == 0 &&
             connect(fd, (const struct sockaddr *)&a->url.addr, sizeof(a->url.addr)) == 0 && write(fd, req, (size_t)n) == n;
        if (fd >= 0)
            close(fd);
        if (ok)
            a->sent++;
        else
            a->failed++;
    }
    a->seconds = (double)(sl_time_mono_us() - start) / 1e6;
    return NULL;
}

/* ---- main -------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    const char *sub_url_s, *pub_url_s, *mode_s, *channel, *label, *amqp_url, *exchange, *get_url_s, *abuse_url_s;
    long long conns, threads, pub_conns, text_size, server_pid, batch, seq_start, settle_ms, connect_timeout;
    long long get_conns, abuse_count, abuse_addrs;
    double rate, duration, drain_s, get_rate, abuse_s;
    sl_opt_t opts[] = {
        {"sub-url", NULL, SL_OPT_STR, &sub_url_s, "http://127.0.0.1:8081/v1/stream?channels=bench&history=0", 0, 0,
         "subscription URL (GET, Accept: text/event-stream)"},
        {"pub-url", NULL, SL_OPT_STR, &pub_url_s, "http://127.0.0.1:8080/v1/messages", 0, 0,
         "publish URL (POST; not used with --pub-mode amqp)"},
        {"pub-mode", NULL, SL_OPT_STR, &mode_s, "sluice", 0, 0,
         "sluice (JSON to sluice-api), raw (the text as body: Nchan) or amqp (straight to the live exchange)"},
        {"channel", NULL, SL_OPT_STR, &channel, "bench", 0, 0, "channel of the JSON body / routing key"},
        {"conns", NULL, SL_OPT_INT, &conns, "1000", 1, 1e6, "concurrent subscriptions"},
        {"threads", NULL, SL_OPT_INT, &threads, "1", 1, 64, "subscriber threads (each its own epoll)"},
        {"connect-batch", NULL, SL_OPT_INT, &batch, "200", 1, 1e6, "connects in progress at once, per thread"},
        {"connect-timeout", NULL, SL_OPT_INT, &connect_timeout, "120", 1, 3600,
         "seconds for every subscription to be answered"},
        {"settle-ms", NULL, SL_OPT_INT, &settle_ms, "1000", 0, 600000,
         "wait after the last subscription is answered, before RSS is read and publishing starts"},
        {"rate", NULL, SL_OPT_DOUBLE, &rate, "100", 0.01, 1e7, "messages published per second"},
        {"duration", NULL, SL_OPT_DOUBLE, &duration, "10", 0.1, 3600, "seconds of publishing"},
        {"drain", NULL, SL_OPT_DOUBLE, &drain_s, "10", 0, 3600,
         "most seconds to wait after the last publish for deliveries still on their way"},
        {"pub-conns", NULL, SL_OPT_INT, &pub_conns, "16", 1, 1000, "keep-alive publishing connections"},
        {"text-size", NULL, SL_OPT_INT, &text_size, "100", 24, 1500, "characters of each message's text"},
        {"server-pid", NULL, SL_OPT_INT, &server_pid, "0", 0, 1e9,
         "PID of the process that serves the subscriptions (RSS and CPU); 0: none"},
        {"amqp-url", "SLUICE_AMQP_URL", SL_OPT_STR, &amqp_url, "amqp://guest:guest@127.0.0.1:5672/", 0, 0,
         "RabbitMQ (--pub-mode amqp)"},
        {"live-exchange", "SLUICE_LIVE_EXCHANGE", SL_OPT_STR, &exchange, "sluice.live", 0, 0,
         "live exchange (--pub-mode amqp)"},
        {"seq-start", NULL, SL_OPT_INT, &seq_start, "1", 1, 9e18,
         "first seq published (--pub-mode amqp): the sse hub's position + 1"},
        {"label", NULL, SL_OPT_STR, &label, "run", 0, 0, "name of the run in the RESULT line"},
        {"get-url", NULL, SL_OPT_STR, &get_url_s, "", 0, 0,
         "GETs beside the publishing, at --get-rate (\"\": none); GET -> answer latency"},
        {"get-rate", NULL, SL_OPT_DOUBLE, &get_rate, "20", 0.01, 1e6, "GETs per second"},
        {"get-conns", NULL, SL_OPT_INT, &get_conns, "4", 1, 1000, "keep-alive connections of the GETs"},
        {"abuse-url", NULL, SL_OPT_STR, &abuse_url_s, "", 0, 0,
         "connect-and-drop clients beside the publishing (\"\": none): each sends a GET there and closes"},
        {"abuse-count", NULL, SL_OPT_INT, &abuse_count, "3000", 1, 1e8, "connect-and-drop clients"},
        {"abuse-seconds", NULL, SL_OPT_DOUBLE, &abuse_s, "0", 0, 3600,
         "seconds the connect-and-drop clients are spread over, from the start (0: --duration)"},
        {"abuse-addrs", NULL, SL_OPT_INT, &abuse_addrs, "250", 0, 65000,
         "loopback addresses they come from (127.0.1.1, ...); 0: the default one"},
    };
    int r = sl_config_parse(opts, sizeof(opts) / sizeof(opts[0]), argc, argv, "sl_ssebench",
                            "sl_ssebench: N concurrent SSE subscriptions, publishing at a fixed rate; deliveries/s, "
                            "publish -> receive latency, server memory per connection.");
    if (r != 0)
        return r > 0 ? 0 : 2;

    pubconf_t pc = {0};
    url_t sub_url;
    pc.mode = strcmp(mode_s, "sluice") == 0 ? P_SLUICE : strcmp(mode_s, "raw") == 0 ? P_RAW
              : strcmp(mode_s, "amqp") == 0                                         ? P_AMQP
                                                                                    : -1;
    if (pc.mode < 0) {
        fprintf(stderr, "sl_ssebench: --pub-mode must be sluice, raw or amqp\n");
        return 2;
    }
    getload_t gl;
    abuse_t ab;
    memset(&gl, 0, sizeof(gl));
    memset(&ab, 0, sizeof(ab));
    if (parse_url(sub_url_s, &sub_url) != 0 || (pc.mode != P_AMQP && parse_url(pub_url_s, &pc.url) != 0) ||
        (get_url_s[0] && parse_url(get_url_s, &gl.pc.url) != 0) || (abuse_url_s[0] && parse_url(abuse_url_s, &ab.url) != 0)) {
        fprintf(stderr, "sl_ssebench: a URL must be http://IPV4:PORT/PATH\n");
        return 2;
    }
    pc.channel = channel;
    pc.amqp_url = amqp_url;
    pc.exchange = exchange;
    pc.conns = pub_conns;
    pc.text_size = text_size;
    pc.seq_start = seq_start;
    pc.rate = rate;
    pc.total = (long long)(rate * duration + 0.5);
    if (pc.total < 1)
        pc.total = 1;
    gl.pc.mode = P_GET;
    gl.pc.conns = get_conns;
    gl.pc.rate = get_rate;
    gl.pc.total = (long long)(get_rate * duration + 0.5) > 0 ? (long long)(get_rate * duration + 0.5) : 1;
    ab.count = abuse_count;
    ab.addrs = abuse_addrs;
    ab.duration = abuse_s > 0 ? abuse_s : duration;

    /* Every subscription is a descriptor: take what the hard limit allows. */
    long nofile = sl_http_raise_nofile();
    if (nofile < conns + pub_conns + get_conns + 32) {
        fprintf(stderr, "sl_ssebench: %lld subscriptions need more descriptors than the limit %ld\n", conns, nofile);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    char req[1024];
    int reqlen = snprintf(req, sizeof(req),
                          "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
                          sub_url.path, sub_url.hostport);
    struct sub *subs = calloc((size_t)conns, sizeof(*subs));
    subthr_t *ts = calloc((size_t)threads, sizeof(*ts));
    if (subs == NULL || ts == NULL) {
        fprintf(stderr, "sl_ssebench: out of memory\n");
        return 1;
    }
    for (long long i = 0; i < conns; i++)
        subs[i].fd = -1;
    atomic_store(&G.measure_from_us, INT64_MAX);

    long rss_before = rss_kb(server_pid);
    int64_t t_conn = sl_time_mono_us();
    size_t per = (size_t)((conns + threads - 1) / threads), off = 0;
    for (long long i = 0; i < threads; i++) {
        subthr_t *t = &ts[i];
        t->subs = subs + off;
        t->nsubs = off + per <= (size_t)conns ? per : (size_t)conns - off;
        off += t->nsubs;
        t->url = &sub_url;
        t->req = req;
        t->reqlen = (size_t)reqlen;
        t->batch = batch;
        t->rbuf = malloc(READ_BUF);
        if ((t->ep = epoll_create1(EPOLL_CLOEXEC)) < 0 || t->rbuf == NULL ||
            pthread_create(&t->th, NULL, sub_main, t) != 0) {
            fprintf(stderr, "sl_ssebench: cannot start a subscriber thread\n");
            return 1;
        }
    }

    /* 1. every subscription answered */
    int64_t until = t_conn + connect_timeout * 1000000;
    while (atomic_load(&G.established) + atomic_load(&G.failed) < conns && sl_time_mono_us() < until && !interrupted)
        sleep_ms(20);
    double connect_s = (double)(sl_time_mono_us() - t_conn) / 1e6;
    long established = atomic_load(&G.established), failed = atomic_load(&G.failed);
    fprintf(stderr, "sl_ssebench %s: %ld/%lld subscriptions up in %.1f s (%ld refused or failed)\n", label, established,
            conns, connect_s, failed);
    sleep_ms(settle_ms);
    long rss_idle = rss_kb(server_pid);

    /* 2. publish at the fixed rate */
    pubres_t pr;
    memset(&pr, 0, sizeof(pr));
    unsigned long long events_before = atomic_load(&G.events);
    long long cpu0 = bu_proc_cpu_ticks(server_pid), mbusy0, mtotal0, mbusy1, mtotal1;
    machine_ticks(&mbusy0, &mtotal0);
    double tool0 = bu_self_cpu_s();
    int64_t p_start = sl_time_mono_us();
    atomic_store(&G.measure_from_us, sl_time_now_us());
    if (established > 0 && !interrupted) {
        gl.running = get_url_s[0] && pthread_create(&gl.th, NULL, get_main, &gl) == 0;
        ab.running = abuse_url_s[0] && pthread_create(&ab.th, NULL, abuse_main, &ab) == 0;
        if (pc.mode == P_AMQP)
            publish_amqp(&pc, &pr);
        else
            publish_http(&pc, &pr);
    }
    double pub_s = (double)(sl_time_mono_us() - p_start) / 1e6;
    if (gl.running)
        pthread_join(gl.th, NULL);
    if (ab.running)
        pthread_join(ab.th, NULL);
    if (pr.err[0])
        fprintf(stderr, "sl_ssebench %s: publisher: %s\n", label, pr.err);

    /* 3. what is still on its way: until all arrived, nothing moved for 2 s, or the drain ends */
    long live_subs = atomic_load(&G.established) - atomic_load(&G.closed);
    unsigned long long expected = (unsigned long long)pr.ok * (unsigned long long)(live_subs > 0 ? live_subs : 0);
    int64_t drain_until = sl_time_mono_us() + (int64_t)(drain_s * 1e6), last_move = sl_time_mono_us();
    unsigned long long last_seen = atomic_load(&G.events);
    while (!interrupted && sl_time_mono_us() < drain_until) {
        unsigned long long now_ev = atomic_load(&G.events);
        if (now_ev - events_before >= expected)
            break;
        if (now_ev != last_seen) {
            last_seen = now_ev;
            last_move = sl_time_mono_us();
        } else if (sl_time_mono_us() - last_move > 2000000) {
            break;
        }
        sleep_ms(10);
    }
    long long cpu1 = bu_proc_cpu_ticks(server_pid);
    machine_ticks(&mbusy1, &mtotal1);
    double tool1 = bu_self_cpu_s();
    double window_s = (double)(sl_time_mono_us() - p_start) / 1e6;
    long rss_after = rss_kb(server_pid);
    atomic_store(&G.stop, 1);
    hist_t *lat = calloc(1, sizeof(*lat));
    uint64_t events = 0, other = 0, bytes = 0, bad = 0, st[6] = {0};
    int64_t last_event = 0;
    for (long long i = 0; i < threads; i++) {
        pthread_join(ts[i].th, NULL);
        h_merge(lat, &ts[i].lat);
        events += ts[i].events;
        other += ts[i].other_events;
        bytes += ts[i].bytes;
        bad += ts[i].bad_stamps;
        for (int k = 0; k < 6; k++)
            st[k] += ts[i].statuses[k];
        if (ts[i].last_event_us > last_event)
            last_event = ts[i].last_event_us;
        close(ts[i].ep);
        free(ts[i].rbuf);
    }
    /* per-subscription completeness */
    long complete = 0;
    uint32_t min_ev = UINT32_MAX;
    for (long long i = 0; i < conns; i++) {
        if (subs[i].status != 200)
            continue;
        if (subs[i].events < min_ev)
            min_ev = subs[i].events;
        if ((long long)subs[i].events >= pr.ok)
            complete++;
    }
    if (min_ev == UINT32_MAX)
        min_ev = 0;

    double span_s = last_event > pr.first_us ? (double)(last_event - pr.first_us) / 1e6 : 0;
    double dps = span_s > 0 ? (double)lat->count / span_s : 0;
    double pub_rate = pr.last_us > pr.first_us ? (double)(pr.sent - 1) / ((double)(pr.last_us - pr.first_us) / 1e6) : 0;
    long hz = sysconf(_SC_CLK_TCK);
    double server_cpu = cpu0 >= 0 && cpu1 >= 0 ? (double)(cpu1 - cpu0) / (double)hz / window_s * 100 : -1;
    double tool_cpu = (tool1 - tool0) / window_s * 100;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    double machine_cpu = mtotal1 > mtotal0 ? (double)(mbusy1 - mbusy0) / (double)(mtotal1 - mtotal0) * 100 * (double)ncpu : -1;
    double per_conn = established > 0 && rss_before >= 0 && rss_idle >= 0
                          ? (double)(rss_idle - rss_before) * 1024.0 / (double)established
                          : -1;
    double per_conn_after = established > 0 && rss_before >= 0 && rss_after >= 0
                                ? (double)(rss_after - rss_before) * 1024.0 / (double)established
                                : -1;
    unsigned long long missing = expected > lat->count ? expected - lat->count : 0;

    printf("%s: %ld subscriptions (%ld refused/failed, %ld closed during the run; %llu connect errors, %llu 4xx, "
           "%llu 5xx), connected in %.1f s\n",
           label, established, failed, atomic_load(&G.closed), (unsigned long long)st[0], (unsigned long long)st[4],
           (unsigned long long)st[5], connect_s);
    printf("  published %lld of %lld in %.1f s (%.1f msg/s asked, %.1f sent; %lld refused, %lld errors)", pr.ok,
           pc.total, pub_s, rate, pub_rate, pr.refused, pr.errors);
    if (pc.mode != P_AMQP)
        printf(", publish answered p50 %.1f ms p99 %.1f ms", h_pct(&pr.lat, 50) / 1e3, h_pct(&pr.lat, 99) / 1e3);
    printf("\n  sends later than scheduled (open loop falling behind; not in the latency below): p50 %.1f ms, "
           "p99 %.1f ms, max %.1f ms\n",
           h_pct(&pr.late, 50) / 1e3, h_pct(&pr.late, 99) / 1e3, (double)pr.late.max / 1e3);
    printf("  deliveries %llu of %llu expected (%llu missing; %ld/%ld subscriptions complete, fewest %u), "
           "%.0f deliveries/s over %.2f s, %.0f B received per delivery\n",
           (unsigned long long)lat->count, expected, missing, complete, established, (unsigned)min_ev, dps, span_s,
           lat->count ? (double)bytes / (double)lat->count : 0);
    printf("  latency publish -> receive: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms\n",
           h_pct(lat, 50) / 1e3, h_pct(lat, 90) / 1e3, h_pct(lat, 99) / 1e3, h_pct(lat, 99.9) / 1e3,
           (double)lat->max / 1e3);
    if (server_pid > 0)
        printf("  server pid %lld RSS: %ld kB before, %ld kB idle with the subscriptions (%.0f B each), %ld kB after "
               "(%.0f B each)\n",
               server_pid, rss_before, rss_idle, per_conn, rss_after, per_conn_after);
    printf("  CPU while publishing and draining, %% of one core: server %.0f, this tool %.0f, whole machine %.0f of %ld\n",
           server_cpu, tool_cpu, machine_cpu, ncpu * 100);
    if (gl.running)
        printf("  GET %s: %lld of %lld answered 2xx (%lld refused, %lld errors), GET -> answer p50 %.2f ms, p99 "
               "%.2f ms, max %.2f ms\n",
               gl.pc.url.path, gl.res.ok, gl.pc.total, gl.res.refused, gl.res.errors, h_pct(&gl.res.lat, 50) / 1e3,
               h_pct(&gl.res.lat, 99) / 1e3, (double)gl.res.lat.max / 1e3);
    if (ab.running)
        printf("  connect-and-drop %s: %lld sent (%lld failed) in %.1f s from %lld addresses\n", ab.url.path, ab.sent,
               ab.failed, ab.seconds, ab.addrs > 0 ? ab.addrs : 1);
    if (other || bad || events != lat->count)
        printf("  (%llu data lines without a stamp, %llu bad stamps, %llu stamped before publishing began)\n",
               (unsigned long long)other, (unsigned long long)bad, (unsigned long long)(events - lat->count - bad));
    printf("RESULT label=%s subs=%ld failed=%ld published=%lld rate=%.1f sent_rate=%.1f deliveries=%llu "
           "expected=%llu missing=%llu deliveries_per_s=%.0f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f "
           "rss_before_kb=%ld rss_idle_kb=%ld rss_after_kb=%ld bytes_per_conn=%.0f bytes_per_conn_after=%.0f "
           "server_cpu_pct=%.0f tool_cpu_pct=%.0f machine_cpu_pct=%.0f connect_s=%.1f late_p99_ms=%.1f late_max_ms=%.1f "
           "get_ok=%lld get_errors=%lld get_p50_ms=%.2f get_p99_ms=%.2f get_max_ms=%.2f abuse_sent=%lld abuse_failed=%lld\n",
           label, established, failed, pr.ok, rate, pub_rate, (unsigned long long)lat->count, expected, missing, dps,
           h_pct(lat, 50) / 1e3, h_pct(lat, 99) / 1e3, (double)lat->max / 1e3, rss_before, rss_idle, rss_after,
           per_conn, per_conn_after, server_cpu, tool_cpu, machine_cpu, connect_s, h_pct(&pr.late, 99) / 1e3,
           (double)pr.late.max / 1e3, gl.res.ok, gl.res.errors + gl.res.refused, h_pct(&gl.res.lat, 50) / 1e3,
           h_pct(&gl.res.lat, 99) / 1e3, (double)gl.res.lat.max / 1e3, ab.sent, ab.failed);
    free(lat);
    free(subs);
    free(ts);
    return established > 0 && pr.ok > 0 ? 0 : 1;
}
