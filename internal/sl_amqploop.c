/*
 * sl_amqploop: see sl_amqploop.h.
 *
 * An attempt is shared by the loop and its connector thread: the thread owns the connection it
 * makes until it hands it over (the pipe byte is written after the result, and the loop joins the
 * thread before reading it); the socket descriptor is published under the attempt's mutex so that
 * the loop can shut it down (deadline, dispose) without racing the thread's close of it.
 */
#include "sl_amqploop.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <linux/sockios.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_time.h"

#define TICK_MS 500      /* while up: heartbeats, a broker gone silent */
#define SOON_MS 10       /* granularity of the wait before the next attempt */
#define SHORT_LIVED_MS 1000 /* a connection lost sooner counts as a failed attempt */

struct sl_amqploop_attempt {
    pthread_t thread;
    pthread_mutex_t mu;
    int fd;  /* under mu: the attempt's socket while the thread may block on it, else -1 */
    int cut; /* under mu: the loop gave up on the attempt */
    /* read-only for the thread */
    const char *url, *name;
    int heartbeat_s, timeout_ms, notify_w;
    int (*setup)(void *data, amqp_connection_state_t conn, char *err, size_t errlen);
    void *data;
    uint64_t started_ms;
    /* written by the thread before it writes the pipe byte */
    amqp_connection_state_t conn;
    char err[512];
};

/* ---- the connector thread ------------------------------------------------------------------ */

static void on_socket(void *arg, int fd)
{
    struct sl_amqploop_attempt *a = arg;
    pthread_mutex_lock(&a->mu);
    if (a->cut)
        shutdown(fd, SHUT_RDWR);
    else
        a->fd = fd;
    pthread_mutex_unlock(&a->mu);
}

static void *connector(void *arg)
{
    struct sl_amqploop_attempt *a = arg;
    amqp_connection_state_t conn =
        sl_amqp_open_hooked(a->url, a->name, a->heartbeat_s, a->timeout_ms, on_socket, a, a->err, sizeof(a->err));
    int failed = conn == NULL || a->setup(a->data, conn, a->err, sizeof(a->err)) != 0;
    pthread_mutex_lock(&a->mu);
    a->fd = -1; /* from here on the loop no longer touches the socket */
    int cut = a->cut;
    pthread_mutex_unlock(&a->mu);
    if (cut) {
        char why[400];
        snprintf(why, sizeof(why), "%.390s", failed ? a->err : "succeeded too late");
        snprintf(a->err, sizeof(a->err), "no connection within %d ms (%.400s)", a->timeout_ms, why);
        failed = 1;
    }
    if (failed && conn != NULL) {
        amqp_destroy_connection(conn);
        conn = NULL;
    }
    a->conn = conn;
    ssize_t w;
    do
        w = write(a->notify_w, "x", 1);
    while (w < 0 && errno == EINTR);
    return NULL;
}

/* ---- the loop --------------------------------------------------------------------------------- */

static uint64_t next_rand(sl_amqploop_t *l)
{
    l->_rand ^= l->_rand << 13; /* xorshift64 */
    l->_rand ^= l->_rand >> 7;
    l->_rand ^= l->_rand << 17;
    return l->_rand;
}

const char *sl_amqploop_node(const sl_amqploop_t *l)
{
    return l->_urls.shown[l->conn != NULL ? l->_node : l->_cursor];
}

/* The next attempt: at once after a loss or while the list still has untried URLs in this streak
 * of failures, else after the backoff of the round. */
static void schedule_next(sl_amqploop_t *l)
{
    uint64_t delay = 0;
    if (l->_failures > 0 && l->_failures % l->_urls.n == 0) {
        unsigned round = (unsigned)(l->_failures / l->_urls.n), shift = round - 1 < 16 ? round - 1 : 16;
        uint64_t d = (uint64_t)SL_AMQPLOOP_BACKOFF_MIN_MS << shift;
        if (d > (uint64_t)l->_backoff_max_ms)
            d = (uint64_t)l->_backoff_max_ms;
        delay = d / 2 + next_rand(l) % (d / 2 + 1);
    }
    l->_retry_at_ms = h2o_now(l->_loop) + delay;
    if (!h2o_timeout_is_linked(&l->_soon))
        h2o_timeout_link(l->_loop, &l->_soon_timeout, &l->_soon);
}

static void set_blocked(sl_amqploop_t *l, int blocked)
{
    if (blocked == l->blocked)
        return;
    l->blocked = blocked;
    if (blocked)
        SL_WARN("event=amqp_blocked conn=%s node=%s", l->_qname, sl_amqploop_node(l));
    else
        SL_INFO("event=amqp_unblocked conn=%s node=%s", l->_qname, sl_amqploop_node(l));
    if (l->_h->on_blocked != NULL)
        l->_h->on_blocked(l->_data, blocked);
}

static void drop(sl_amqploop_t *l, const char *why, int polite)
{
    char q[300];
    if (l->conn == NULL)
        return;
    uint64_t up_ms = h2o_now(l->_loop) - l->_up_at_ms;
    if (polite)
        SL_INFO("event=amqp_closed conn=%s node=%s", l->_qname, l->_urls.shown[l->_node]);
    else
        SL_WARN("event=amqp_connection_lost conn=%s node=%s up_ms=%llu reason=%s", l->_qname, l->_urls.shown[l->_node],
                (unsigned long long)up_ms, sl_log_quote(q, sizeof(q), why));
    if (l->_sock != NULL) {
        h2o_socket_close(l->_sock);
        l->_sock = NULL;
    }
    if (h2o_timeout_is_linked(&l->_tick))
        h2o_timeout_unlink(&l->_tick);
    amqp_connection_state_t conn = l->conn;
    l->conn = NULL;
    if (polite)
        sl_amqp_close(conn);
    else
        amqp_destroy_connection(conn);
    if (!polite) {
        /* the next node; a connection that broke at once is a failed attempt (no tight loop) */
        l->_failures = up_ms < SHORT_LIVED_MS ? l->_failures + 1 : 0;
        l->_cursor = (l->_node + 1) % l->_urls.n;
        schedule_next(l);
    }
    set_blocked(l, 0);
    if (l->_h->on_down != NULL)
        l->_h->on_down(l->_data, why);
}

int sl_amqploop_send_room(const sl_amqploop_t *l, size_t len)
{
    int fd = l->conn != NULL ? amqp_get_sockfd(l->conn) : -1, queued = 0, sndbuf = 0;
    socklen_t sl = sizeof(sndbuf);
    if (fd < 0 || ioctl(fd, SIOCOUTQ, &queued) != 0 || getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &sl) != 0)
        return 1; /* cannot tell: as before */
    return (long long)queued + (long long)len + 4096 + (long long)len / 16 <= (long long)sndbuf / 2;
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

static void attempt_failed(sl_amqploop_t *l, const char *why, uint64_t took_ms)
{
    char q[700];
    l->_failures++;
    /* each failure of the first rounds of a streak, then one in 20 */
    if (l->_failures <= 2 * l->_urls.n || l->_failures % 20 == 0)
        SL_WARN("event=amqp_connect_failed conn=%s node=%s took_ms=%llu failures=%u error=%s", l->_qname,
                l->_urls.shown[l->_cursor], (unsigned long long)took_ms, l->_failures, sl_log_quote(q, sizeof(q), why));
    l->_cursor = (l->_cursor + 1) % l->_urls.n;
    schedule_next(l);
}

static void free_attempt(struct sl_amqploop_attempt *a)
{
    pthread_mutex_destroy(&a->mu);
    free(a);
}

static void start_attempt(sl_amqploop_t *l)
{
    struct sl_amqploop_attempt *a = calloc(1, sizeof(*a));
    sigset_t all, old;
    int rc;
    if (a == NULL) {
        attempt_failed(l, "out of memory", 0);
        return;
    }
    pthread_mutex_init(&a->mu, NULL);
    a->fd = -1;
    a->url = l->_urls.url[l->_cursor];
    a->name = l->_name;
    a->heartbeat_s = l->_heartbeat_s;
    a->timeout_ms = l->_timeout_ms;
    a->notify_w = l->_notify_w;
    a->setup = l->_h->setup;
    a->data = l->_data;
    a->started_ms = h2o_now(l->_loop);
    /* signals (SIGTERM for the drain) stay with the threads that wait for them */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&a->thread, NULL, connector, a);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        free_attempt(a);
        attempt_failed(l, strerror(rc), 0);
        return;
    }
    l->_attempt = a;
    h2o_timeout_link(l->_loop, &l->_deadline_timeout, &l->_deadline);
}

/* The loop gives up on the attempt: a login blocked on its socket returns at once. */
static void cut_attempt(struct sl_amqploop_attempt *a)
{
    pthread_mutex_lock(&a->mu);
    a->cut = 1;
    if (a->fd >= 0)
        shutdown(a->fd, SHUT_RDWR);
    pthread_mutex_unlock(&a->mu);
}

static void adopt(sl_amqploop_t *l, amqp_connection_state_t conn, uint64_t took_ms)
{
    int fd = dup(amqp_get_sockfd(conn));
    if (fd < 0) {
        char why[128];
        snprintf(why, sizeof(why), "dup: %s", strerror(errno));
        amqp_destroy_connection(conn);
        attempt_failed(l, why, took_ms);
        return;
    }
    l->conn = conn;
    l->_sock = h2o_evloop_socket_create(l->_loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    l->_sock->data = l;
    h2o_socket_read_start(l->_sock, on_readable);
    l->connects++;
    l->_node = l->_cursor;
    l->_up_at_ms = h2o_now(l->_loop);
    SL_INFO("event=amqp_connected conn=%s node=%s took_ms=%llu failures_before=%u", l->_qname, l->_urls.shown[l->_node],
            (unsigned long long)took_ms, l->_failures);
    /* _failures is cleared when the connection is lost after SHORT_LIVED_MS (see drop) */
    h2o_timeout_link(l->_loop, &l->_tick_timeout, &l->_tick);
    if (l->_h->on_up != NULL)
        l->_h->on_up(l->_data);
    sl_amqploop_drain(l); /* frames that arrived during setup sit in rabbitmq-c's buffer */
}

static void on_notify(h2o_socket_t *sock, const char *err)
{
    sl_amqploop_t *l = sock->data;
    char buf[16];
    (void)err;
    while (read(l->_notify_r, buf, sizeof(buf)) > 0)
        ;
    struct sl_amqploop_attempt *a = l->_attempt;
    if (a == NULL)
        return;
    l->_attempt = NULL;
    if (h2o_timeout_is_linked(&l->_deadline))
        h2o_timeout_unlink(&l->_deadline);
    pthread_join(a->thread, NULL); /* it has written its result and the byte: this is its return */
    uint64_t took_ms = h2o_now(l->_loop) - a->started_ms;
    amqp_connection_state_t conn = a->conn;
    char why[sizeof(a->err)];
    memcpy(why, a->err, sizeof(why));
    free_attempt(a);
    if (conn != NULL)
        adopt(l, conn, took_ms);
    else
        attempt_failed(l, why, took_ms);
}

static void on_deadline(h2o_timeout_entry_t *entry)
{
    sl_amqploop_t *l = H2O_STRUCT_FROM_MEMBER(sl_amqploop_t, _deadline, entry);
    if (l->_attempt != NULL)
        cut_attempt(l->_attempt); /* the thread reports the failure through the pipe */
}

static void on_soon(h2o_timeout_entry_t *entry)
{
    sl_amqploop_t *l = H2O_STRUCT_FROM_MEMBER(sl_amqploop_t, _soon, entry);
    if (l->conn != NULL || l->_attempt != NULL)
        return;
    if (h2o_now(l->_loop) >= l->_retry_at_ms)
        start_attempt(l);
    else
        h2o_timeout_link(l->_loop, &l->_soon_timeout, &l->_soon);
}

static void on_tick(h2o_timeout_entry_t *entry)
{
    sl_amqploop_t *l = H2O_STRUCT_FROM_MEMBER(sl_amqploop_t, _tick, entry);
    sl_amqploop_drain(l); /* also sends heartbeats and notices a silent broker */
    if (l->conn != NULL && !h2o_timeout_is_linked(&l->_tick))
        h2o_timeout_link(l->_loop, &l->_tick_timeout, &l->_tick);
}

int sl_amqploop_init(sl_amqploop_t *l, h2o_loop_t *loop, const char *urls, const char *name, int heartbeat_s,
                     int timeout_ms, int backoff_max_ms, const sl_amqploop_handlers_t *h, void *data, char *err,
                     size_t errlen)
{
    int fds[2];
    memset(l, 0, sizeof(*l));
    if (sl_amqp_urls_parse(&l->_urls, urls, err, errlen) != 0)
        return -1;
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        sl_amqp_urls_free(&l->_urls);
        return -1;
    }
    l->_loop = loop;
    l->_name = name;
    sl_log_quote(l->_qname, sizeof(l->_qname), name);
    l->_heartbeat_s = heartbeat_s;
    l->_timeout_ms = timeout_ms;
    l->_backoff_max_ms = backoff_max_ms > 0 ? backoff_max_ms : 2000;
    l->_h = h;
    l->_data = data;
    l->_rand = ((uint64_t)(uintptr_t)l * 0x9E3779B97F4A7C15ULL) ^ (uint64_t)sl_time_mono_us() ^ (uint64_t)getpid();
    if (l->_rand == 0)
        l->_rand = 1;
    l->_notify_r = fds[0];
    l->_notify_w = fds[1];
    l->_notify = h2o_evloop_socket_create(loop, fds[0], H2O_SOCKET_FLAG_DONT_READ);
    l->_notify->data = l;
    h2o_socket_read_start(l->_notify, on_notify);
    h2o_timeout_init(loop, &l->_tick_timeout, TICK_MS);
    h2o_timeout_init(loop, &l->_deadline_timeout, (uint64_t)timeout_ms);
    h2o_timeout_init(loop, &l->_soon_timeout, SOON_MS);
    l->_tick.cb = on_tick;
    l->_deadline.cb = on_deadline;
    l->_soon.cb = on_soon;
    start_attempt(l);
    return 0;
}

void sl_amqploop_dispose(sl_amqploop_t *l)
{
    struct sl_amqploop_attempt *a = l->_attempt;
    if (a != NULL) {
        l->_attempt = NULL;
        cut_attempt(a);
        pthread_join(a->thread, NULL);
        if (a->conn != NULL)
            amqp_destroy_connection(a->conn);
        free_attempt(a);
    }
    if (h2o_timeout_is_linked(&l->_deadline))
        h2o_timeout_unlink(&l->_deadline);
    if (h2o_timeout_is_linked(&l->_soon))
        h2o_timeout_unlink(&l->_soon);
    drop(l, "shutting down", 1); /* unlinks the tick */
    h2o_socket_close(l->_notify); /* closes _notify_r */
    close(l->_notify_w);
    h2o_timeout_dispose(l->_loop, &l->_tick_timeout);
    h2o_timeout_dispose(l->_loop, &l->_deadline_timeout);
    h2o_timeout_dispose(l->_loop, &l->_soon_timeout);
    sl_amqp_urls_free(&l->_urls);
}
