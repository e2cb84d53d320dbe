/*
 * sl_ingest_reader: the Mastodon reading thread; see sl_ingest_reader.h.
 *
 * Every HTTP request goes through one curl multi handle owned by the reader, so that stop (from
 * the loop's thread) can interrupt any wait at once with curl_multi_wakeup, and so that the idle
 * check runs in our loop rather than in curl's progress meter.
 */
#include "sl_ingest_reader.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_mastodon.h"
#include "sl_mastodon_sse.h"
#include "sl_time.h"

#define STREAM_RCVBUF (128 * 1024) /* bytes the kernel may hold for us before the server must wait */
#define MAX_EVENT (1024 * 1024)    /* larger SSE events are dropped */
#define MAX_BODY (8 * 1024 * 1024) /* larger REST answers are refused */
#define HEALTHY_US (10 * 1000000)  /* a stream that lasted this long resets the backoff */

struct sl_ingest_reader {
    sl_ingest_reader_conf_t conf;
    CURLM *multi;
    pthread_t thread;
    int has_thread;
    atomic_int stop;
    atomic_int done;          /* the thread has returned */

    pthread_mutex_t lock;     /* guards the queue and st */
    pthread_cond_t space;
    pthread_cond_t wakeup;    /* stop, for waits between requests */
    sl_message_t *ring;
    size_t head, count;
    sl_ingest_reader_status_t st;

    /* the thread's own */
    sl_mastodon_ids_t *ids;   /* the statuses read, for deletes (NULL: remembers nothing) */
    unsigned seed;
    char since_id[SL_MASTODON_STATUS_ID_MAX + 1];
};

/* A log line of this reader: its source at the end (ingest may read several). */
#define RLOG(level, r, fmt, ...) sl_log(level, fmt " source=%s", ##__VA_ARGS__, (r)->conf.label)

/* ---- shared state ------------------------------------------------------------------------------ */

#define LOCKED(r, stmt)                                                                                                \
    do {                                                                                                               \
        pthread_mutex_lock(&(r)->lock);                                                                                \
        stmt;                                                                                                          \
        pthread_mutex_unlock(&(r)->lock);                                                                              \
    } while (0)

static void set_error(sl_ingest_reader_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(sl_ingest_reader_t *r, const char *fmt, ...)
{
    char buf[256], q[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    LOCKED(r, memcpy(r->st.last_error, buf, sizeof(buf)); r->st.last_error_at_us = sl_time_now_us());
    RLOG(SL_LOG_WARN, r, "event=mastodon_error error=%s", sl_log_quote(q, sizeof(q), buf));
}

static void set_connected(sl_ingest_reader_t *r, int connected)
{
    LOCKED(r, if (connected && !r->st.connected) r->st.connected_since_us = sl_time_now_us();
           if (!connected) r->st.connected_since_us = 0; r->st.connected = connected);
}

static void set_mode(sl_ingest_reader_t *r, const char *mode)
{
    LOCKED(r, r->st.mode = mode);
}

static void wake_loop(sl_ingest_reader_t *r)
{
    uint64_t one = 1;
    if (r->conf.wake_fd >= 0 && write(r->conf.wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        SL_DEBUG("event=wake_failed error=\"%s\"", strerror(errno));
}

/* Waits for room and queues m, which the queue then owns (its meta). Returns 0, or -1 when asked
 * to stop (m is then not queued, and cleared). */
static int push(sl_ingest_reader_t *r, sl_message_t *m)
{
    pthread_mutex_lock(&r->lock);
    while (r->count == r->conf.queue_cap && !atomic_load(&r->stop))
        pthread_cond_wait(&r->space, &r->lock);
    if (atomic_load(&r->stop)) {
        pthread_mutex_unlock(&r->lock);
        sl_message_clear(m);
        return -1;
    }
    r->ring[(r->head + r->count) % r->conf.queue_cap] = *m;
    r->count++;
    r->st.handed_over++;
    r->st.last_item_at_us = sl_time_now_us();
    pthread_mutex_unlock(&r->lock);
    wake_loop(r);
    return 0;
}

/* Sleeps up to ms, less if asked to stop. Returns 0, or -1 when asked to stop. */
static int pause_ms(sl_ingest_reader_t *r, long long ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)(ms / 1000);
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&r->lock);
    while (!atomic_load(&r->stop)) {
        if (pthread_cond_timedwait(&r->wakeup, &r->lock, &until) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&r->lock);
    return atomic_load(&r->stop) ? -1 : 0;
}

/* Exponential backoff with jitter: a random delay between half and all of min * 2^attempt. */
static int backoff(sl_ingest_reader_t *r, int attempt)
{
    long long ms = r->conf.backoff_min_ms;
    for (int i = 0; i < attempt && ms < r->conf.backoff_max_ms; i++)
        ms *= 2;
    if (ms > r->conf.backoff_max_ms)
        ms = r->conf.backoff_max_ms;
    ms = ms / 2 + (long long)(rand_r(&r->seed) % (unsigned)(ms / 2 + 1));
    RLOG(SL_LOG_INFO, r, "event=reconnect_wait ms=%lld attempt=%d", ms, attempt + 1);
    return pause_ms(r, ms);
}

/* ---- one HTTP request -------------------------------------------------------------------------- */

struct xfer {
    sl_ingest_reader_t *r;
    int streaming;
    long status;
    sl_buf_t body;             /* REST answers; the start of a refused stream's answer */
    char content_type[96];
    sl_mastodon_rate_t rl;
    int64_t last_byte_us;      /* monotonic */
    int opened;                /* streaming: a 200 event stream began */
    int idle, stopped, broken; /* why it ended early */
    sl_msse_t sse;
    char why[192];
};

static void trim(const char **v, size_t *len)
{
    while (*len > 0 && ((*v)[0] == ' ' || (*v)[0] == '\t'))
        (*v)++, (*len)--;
    while (*len > 0 && ((*v)[*len - 1] == '\r' || (*v)[*len - 1] == '\n' || (*v)[*len - 1] == ' '))
        (*len)--;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct xfer *x = arg;
    size_t len = size * n;
    x->last_byte_us = sl_time_mono_us();
    if (len >= 5 && strncmp(p, "HTTP/", 5) == 0) { /* a new answer (after a 100 Continue, say) */
        const char *sp = memchr(p, ' ', len);
        x->status = sp != NULL ? strtol(sp + 1, NULL, 10) : 0;
        x->content_type[0] = '\0';
        sl_mastodon_rate_init(&x->rl);
        return len;
    }
    const char *colon = memchr(p, ':', len);
    if (colon == NULL)
        return len;
    size_t nlen = (size_t)(colon - p), vlen = len - nlen - 1;
    const char *v = colon + 1;
    trim(&v, &vlen);
    if (nlen == sizeof("content-type") - 1 && strncasecmp(p, "content-type", nlen) == 0)
        snprintf(x->content_type, sizeof(x->content_type), "%.*s", (int)vlen, v);
    else
        sl_mastodon_rate_header(&x->rl, p, nlen, v, vlen);
    return len;
}

static int on_sse_event(void *arg, const char *event, const char *data, size_t len)
{
    struct xfer *x = arg;
    sl_ingest_reader_t *r = x->r;
    sl_message_t m;
    char why[192], q[256];
    LOCKED(r, r->st.received++);
    sl_mastodon_result_t res =
        sl_mastodon_stream_event(event, data, len, r->conf.instance, r->conf.channel, r->ids, &m, why, sizeof(why));
    if (res == SL_MASTODON_SKIP) {
        LOCKED(r, r->st.skipped++);
        RLOG(SL_LOG_INFO, r, "event=skipped type=%s reason=%s", sl_log_quote(q, 80, event),
             sl_log_quote(q + 80, sizeof(q) - 80, why));
        return 0;
    }
    if (res == SL_MASTODON_INVALID) {
        LOCKED(r, r->st.invalid++);
        RLOG(SL_LOG_WARN, r, "event=invalid_event type=%s reason=%s", sl_log_quote(q, 80, event),
                sl_log_quote(q + 80, sizeof(q) - 80, why));
        return 0;
    }
    SL_DEBUG("event=received type=%s id=%s", sl_message_type_name(m.type), m.id);
    int r2 = push(r, &m);
    x->last_byte_us = sl_time_mono_us(); /* time spent waiting for room is not silence */
    return r2;
}

static void on_sse_comment(void *arg, const char *text, size_t len)
{
    struct xfer *x = arg;
    LOCKED(x->r, x->r->st.heartbeats++);
    SL_DEBUG("event=heartbeat text=\"%.*s\"", (int)(len > 16 ? 16 : len), text);
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct xfer *x = arg;
    size_t len = size * n;
    x->last_byte_us = sl_time_mono_us();
    if (!x->streaming || x->status != 200) {
        size_t cap = x->streaming ? 1024 : MAX_BODY;
        if (x->body.len + len > cap) {
            if (!x->streaming) {
                snprintf(x->why, sizeof(x->why), "answer larger than %d bytes", MAX_BODY);
                return 0;
            }
            len = cap > x->body.len ? cap - x->body.len : 0;
        }
        sl_buf_append(&x->body, p, len);
        return size * n;
    }
    if (!x->opened) {
        if (strncasecmp(x->content_type, "text/event-stream", 17) != 0) {
            snprintf(x->why, sizeof(x->why), "the stream answered with Content-Type '%.60s'", x->content_type);
            return 0;
        }
        x->opened = 1;
        set_connected(x->r, 1);
        LOCKED(x->r, x->r->st.connects++);
        RLOG(SL_LOG_INFO, x->r, "event=stream_connected stream=%s", x->r->conf.stream);
    }
    if (sl_msse_feed(&x->sse, p, len) != 0) {
        x->stopped = 1;
        return 0;
    }
    return len;
}

static int on_sockopt(void *arg, curl_socket_t fd, curlsocktype purpose)
{
    int size = STREAM_RCVBUF;
    (void)arg;
    if (purpose == CURLSOCKTYPE_IPCXN)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    return CURL_SOCKOPT_OK;
}

/* Runs one request to its end (or until stop, or until idle for idle_ms when streaming). Returns
 * the curl result; x says the rest. */
static CURLcode perform(sl_ingest_reader_t *r, const char *url, struct xfer *x)
{
    CURL *e = curl_easy_init();
    struct curl_slist *h = NULL;
    char auth[1200];
    CURLcode result = CURLE_OK;
    if (e == NULL)
        return CURLE_OUT_OF_MEMORY;
    x->r = r;
    x->status = 0;
    sl_mastodon_rate_init(&x->rl);
    x->last_byte_us = sl_time_mono_us();
    h = curl_slist_append(h, x->streaming ? "Accept: text/event-stream" : "Accept: application/json");
    if (r->conf.token != NULL && r->conf.token[0] != '\0') {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", r->conf.token);
        h = curl_slist_append(h, auth);
    }
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "sluice-ingest");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)r->conf.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, x->streaming ? NULL : "");
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    if (x->streaming) {
        curl_easy_setopt(e, CURLOPT_SOCKOPTFUNCTION, on_sockopt);
    } else {
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)r->conf.request_timeout_ms);
    }
    curl_multi_add_handle(r->multi, e);
    for (;;) {
        int running = 0, left;
        CURLMcode mc = curl_multi_perform(r->multi, &running);
        CURLMsg *msg;
        int finished = 0;
        while ((msg = curl_multi_info_read(r->multi, &left)) != NULL) {
            if (msg->msg == CURLMSG_DONE && msg->easy_handle == e) {
                result = msg->data.result;
                finished = 1;
            }
        }
        if (finished)
            break;
        if (mc != CURLM_OK) {
            result = CURLE_FAILED_INIT;
            snprintf(x->why, sizeof(x->why), "curl: %s", curl_multi_strerror(mc));
            break;
        }
        if (x->stopped || atomic_load(&r->stop)) {
            x->stopped = 1;
            result = CURLE_ABORTED_BY_CALLBACK;
            break;
        }
        if (x->streaming && sl_time_mono_us() - x->last_byte_us > r->conf.idle_ms * 1000) {
            x->idle = 1;
            result = CURLE_OPERATION_TIMEDOUT;
            break;
        }
        curl_multi_poll(r->multi, NULL, 0, 200, NULL);
    }
    curl_multi_remove_handle(r->multi, e);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &x->status);
    curl_easy_cleanup(e);
    curl_slist_free_all(h);
    return result;
}

/* ---- streaming --------------------------------------------------------------------------------- */

/* The streaming server's base URL, from the instance document; the instance when none is named. */
static void discover(sl_ingest_reader_t *r, char *base, size_t size)
{
    static const char *const paths[] = {"/api/v2/instance", "/api/v1/instance"};
    for (size_t i = 0; i < 2; i++) {
        struct xfer x;
        char url[SL_MASTODON_INSTANCE_MAX + 32];
        memset(&x, 0, sizeof(x));
        snprintf(url, sizeof(url), "%s%s", r->conf.instance, paths[i]);
        CURLcode rc = perform(r, url, &x);
        if (rc == CURLE_OK && x.status == 200) {
            json_t *doc = json_loadb(x.body.data != NULL ? x.body.data : "", x.body.len, 0, NULL);
            int ok = doc != NULL && sl_mastodon_streaming_base(doc, base, size) == 0;
            json_decref(doc);
            sl_buf_free(&x.body);
            if (ok) {
                RLOG(SL_LOG_INFO, r, "event=streaming_discovered base=%s from=%s", base, paths[i]);
                return;
            }
        } else {
            sl_buf_free(&x.body);
        }
        if (rc != CURLE_OK) /* the instance is unreachable: no use trying v1 */
            break;
    }
    snprintf(base, size, "%s", r->conf.instance);
    RLOG(SL_LOG_INFO, r, "event=streaming_discovered base=%s from=default", base);
}

enum stream_outcome { STREAM_REFUSED, STREAM_ENDED, STREAM_FAILED, STREAM_STOPPED };

static enum stream_outcome stream_once(sl_ingest_reader_t *r, const char *base, int64_t *lasted_us)
{
    char url[SL_MASTODON_INSTANCE_MAX + 256], path[256];
    struct xfer x;
    memset(&x, 0, sizeof(x));
    x.streaming = 1;
    sl_mastodon_stream_path(r->conf.stream, path, sizeof(path));
    snprintf(url, sizeof(url), "%s%s", base, path);
    sl_msse_init(&x.sse, MAX_EVENT, on_sse_event, on_sse_comment, &x);
    int64_t t0 = sl_time_mono_us();
    RLOG(SL_LOG_INFO, r, "event=stream_connecting url=%s", url);
    CURLcode rc = perform(r, url, &x);
    *lasted_us = sl_time_mono_us() - t0;
    set_connected(r, 0);
    enum stream_outcome out;
    if (x.stopped || atomic_load(&r->stop)) {
        out = STREAM_STOPPED;
    } else if (x.status == 401 || x.status == 403 || x.status == 404) {
        set_error(r, "streaming refused: HTTP %ld %.100s", x.status, x.body.data != NULL ? x.body.data : "");
        out = STREAM_REFUSED;
    } else if (x.opened) {
        if (x.idle)
            set_error(r, "stream silent for %lld ms: reconnecting", r->conf.idle_ms);
        else
            set_error(r, "stream ended: %s", rc != CURLE_OK ? curl_easy_strerror(rc) : "closed by the server");
        out = STREAM_ENDED;
    } else {
        if (x.why[0] != '\0')
            set_error(r, "streaming: %s", x.why);
        else if (rc != CURLE_OK)
            set_error(r, "streaming: %s", curl_easy_strerror(rc));
        else
            set_error(r, "streaming: HTTP %ld %.100s", x.status, x.body.data != NULL ? x.body.data : "");
        out = STREAM_FAILED;
    }
    if (x.sse.dropped > 0)
        RLOG(SL_LOG_WARN, r, "event=oversize_events_dropped count=%llu", (unsigned long long)x.sse.dropped);
    sl_msse_free(&x.sse);
    sl_buf_free(&x.body);
    return out;
}

/* ---- polling ----------------------------------------------------------------------------------- */

/* Pushes the statuses of arr newer than since_id, oldest first, each once, advancing since_id
 * past each. Returns 0, or -2 when asked to stop. */
static int push_page(sl_ingest_reader_t *r, json_t *arr)
{
    char q[300];
    json_t **v = calloc(json_array_size(arr) + 1, sizeof(*v));
    int ret = 0;
    if (v == NULL)
        return 0; /* nothing pushed, since_id kept: the next poll asks again */
    size_t n = sl_mastodon_page_after(arr, r->since_id, v);
    for (size_t i = 0; i < n; i++) {
        const char *id = json_string_value(json_object_get(v[i], "id"));
        sl_message_t m;
        char why[192];
        LOCKED(r, r->st.received++);
        sl_mastodon_result_t res =
            sl_mastodon_status_to_message(v[i], r->conf.instance, r->conf.channel, r->ids, &m, why, sizeof(why));
        if (res != SL_MASTODON_OK) {
            LOCKED(r, if (res == SL_MASTODON_SKIP) r->st.skipped++; else r->st.invalid++);
            RLOG(SL_LOG_INFO, r, "event=skipped reason=%s", sl_log_quote(q, sizeof(q), why));
        } else if (push(r, &m) != 0) {
            ret = -2;
            break;
        }
        snprintf(r->since_id, sizeof(r->since_id), "%s", id);
        LOCKED(r, memcpy(r->st.cursor, r->since_id, sizeof(r->st.cursor)));
    }
    free(v);
    return ret;
}

/* One poll: the statuses after since_id (the newest taken so far), oldest first. It pages forward
 * with min_id (each page is the statuses right after the last one taken), so a poll that stops
 * early (SLUICE_INGEST_POLL_MAX_PAGES pages, or a rate limit) skips nothing: the next one goes on
 * from there. The first poll, with no since_id, starts from the newest page. Returns 0 with
 * *wait_ms set, -1 on failure (backoff), -2 when asked to stop. */
static int poll_once(sl_ingest_reader_t *r, long long *wait_ms)
{
    char url[SL_MASTODON_INSTANCE_MAX + 4096 + 128], path[256], q[300];
    int ret = 0;
    *wait_ms = r->conf.poll_ms;
    sl_mastodon_timeline_path(r->conf.stream, (int)r->conf.poll_limit, path, sizeof(path));
    for (long long page = 0; page < r->conf.poll_max_pages && ret == 0; page++) {
        struct xfer x;
        memset(&x, 0, sizeof(x));
        snprintf(url, sizeof(url), "%s%s%s%s", r->conf.instance, path, r->since_id[0] ? "&min_id=" : "", r->since_id);
        CURLcode rc = perform(r, url, &x);
        LOCKED(r, r->st.polls++);
        if (x.stopped || atomic_load(&r->stop)) {
            sl_buf_free(&x.body);
            ret = -2;
            break;
        }
        long long rw = sl_mastodon_rate_wait_ms(&x.rl, x.status, sl_time_now_us());
        if (rc != CURLE_OK || x.status != 200) {
            if (rc == CURLE_OK && x.status == 429) {
                LOCKED(r, r->st.rate_limited++);
                RLOG(SL_LOG_WARN, r, "event=rate_limited wait_ms=%lld", rw);
                *wait_ms = rw;
            } else {
                set_error(r, "polling %s: %s", path,
                          rc != CURLE_OK ? (x.why[0] ? x.why : curl_easy_strerror(rc)) : "unexpected HTTP status");
                if (rc == CURLE_OK)
                    RLOG(SL_LOG_WARN, r, "event=poll_failed status=%ld body=%s", x.status,
                            sl_log_quote(q, sizeof(q), x.body.data != NULL ? x.body.data : ""));
                ret = -1;
            }
            sl_buf_free(&x.body);
            break;
        }
        json_error_t jerr;
        json_t *arr = json_loadb(x.body.data != NULL ? x.body.data : "", x.body.len, 0, &jerr);
        sl_buf_free(&x.body);
        if (!json_is_array(arr)) {
            json_decref(arr);
            set_error(r, "polling %s: the answer is not a JSON array", path);
            ret = -1;
            break;
        }
        size_t n = json_array_size(arr);
        int first = r->since_id[0] == '\0';
        ret = push_page(r, arr);
        json_decref(arr);
        if (rw > 0) {
            LOCKED(r, r->st.rate_limited++);
            RLOG(SL_LOG_INFO, r, "event=rate_limit_reached wait_ms=%lld", rw);
            *wait_ms = rw > *wait_ms ? rw : *wait_ms;
            break;
        }
        /* caught up (a page that is not full), or the first poll (it starts from now) */
        if (first || n < (size_t)r->conf.poll_limit)
            break;
    }
    if (ret == 0)
        set_connected(r, 1);
    else if (ret == -1)
        set_connected(r, 0);
    return ret;
}

/* ---- the thread -------------------------------------------------------------------------------- */

static void *run(void *arg)
{
    sl_ingest_reader_t *r = arg;
    char base[SL_MASTODON_INSTANCE_MAX] = "";
    int attempt = 0, polling = r->conf.token == NULL || r->conf.token[0] == '\0';
    if (polling)
        RLOG(SL_LOG_INFO, r, "event=polling_mode reason=\"no token (public streams need one since Mastodon 4.2)\"");
    set_mode(r, polling ? "polling" : "streaming");
    while (!atomic_load(&r->stop)) {
        if (!polling) {
            int64_t lasted = 0;
            if (base[0] == '\0')
                discover(r, base, sizeof(base));
            if (atomic_load(&r->stop))
                break;
            enum stream_outcome o = stream_once(r, base, &lasted);
            if (o == STREAM_STOPPED)
                break;
            if (o == STREAM_REFUSED) {
                RLOG(SL_LOG_WARN, r, "event=polling_mode reason=\"streaming refused\"");
                polling = 1;
                attempt = 0;
                set_mode(r, "polling");
                continue;
            }
            if (o == STREAM_FAILED)
                base[0] = '\0'; /* ask the instance again next time */
            if (o == STREAM_ENDED && lasted >= HEALTHY_US)
                attempt = 0;
            if (backoff(r, attempt++) != 0)
                break;
        } else {
            long long wait_ms = 0;
            int res = poll_once(r, &wait_ms);
            if (res == -2)
                break;
            if (res == -1) {
                if (backoff(r, attempt++) != 0)
                    break;
                continue;
            }
            attempt = 0;
            if (pause_ms(r, wait_ms) != 0)
                break;
        }
    }
    set_connected(r, 0);
    RLOG(SL_LOG_INFO, r, "event=reader_stopped");
    atomic_store(&r->done, 1);
    wake_loop(r);
    return NULL;
}

/* ---- the loop's side --------------------------------------------------------------------------- */

sl_ingest_reader_t *sl_ingest_reader_create(const sl_ingest_reader_conf_t *conf)
{
    sl_ingest_reader_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->conf = *conf;
    if (r->conf.queue_cap < 1)
        r->conf.queue_cap = 1;
    r->ring = calloc(r->conf.queue_cap, sizeof(*r->ring));
    r->multi = curl_multi_init();
    if (conf->ids_cap > 0)
        r->ids = sl_mastodon_ids_create(conf->ids_cap);
    if (r->ring == NULL || r->multi == NULL || (conf->ids_cap > 0 && r->ids == NULL)) {
        if (r->multi != NULL)
            curl_multi_cleanup(r->multi);
        sl_mastodon_ids_destroy(r->ids);
        free(r->ring);
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->space, NULL);
    pthread_cond_init(&r->wakeup, NULL);
    r->seed = (unsigned)sl_time_now_us() ^ (unsigned)getpid() ^ (unsigned)(uintptr_t)r;
    if (r->conf.label == NULL)
        r->conf.label = r->conf.instance;
    return r;
}

int sl_ingest_reader_reap(sl_ingest_reader_t *r, int wait)
{
    if (!r->has_thread)
        return 1;
    if (!wait && !atomic_load(&r->done))
        return 0;
    pthread_join(r->thread, NULL);
    r->has_thread = 0;
    return 1;
}

int sl_ingest_reader_start(sl_ingest_reader_t *r)
{
    if (r->has_thread && !atomic_load(&r->stop) && !atomic_load(&r->done))
        return 0;
    sl_ingest_reader_reap(r, 1);
    atomic_store(&r->stop, 0);
    atomic_store(&r->done, 0);
    if (pthread_create(&r->thread, NULL, run, r) != 0)
        return -1;
    r->has_thread = 1;
    return 0;
}

void sl_ingest_reader_stop(sl_ingest_reader_t *r)
{
    if (!r->has_thread)
        return;
    pthread_mutex_lock(&r->lock);
    atomic_store(&r->stop, 1);
    pthread_cond_broadcast(&r->space);
    pthread_cond_broadcast(&r->wakeup);
    pthread_mutex_unlock(&r->lock);
    curl_multi_wakeup(r->multi);
}

int sl_ingest_reader_pop(sl_ingest_reader_t *r, sl_message_t *out)
{
    int got = 0;
    pthread_mutex_lock(&r->lock);
    if (r->count > 0) {
        *out = r->ring[r->head];
        r->head = (r->head + 1) % r->conf.queue_cap;
        r->count--;
        got = 1;
        pthread_cond_signal(&r->space);
    }
    pthread_mutex_unlock(&r->lock);
    return got;
}

void sl_ingest_reader_status(sl_ingest_reader_t *r, sl_ingest_reader_status_t *st)
{
    LOCKED(r, *st = r->st; st->queued = r->count);
    int alive = r->has_thread && !atomic_load(&r->done);
    st->running = alive && !atomic_load(&r->stop);
    st->stopping = alive && atomic_load(&r->stop);
}

void sl_ingest_reader_destroy(sl_ingest_reader_t *r)
{
    if (r == NULL)
        return;
    sl_ingest_reader_stop(r);
    sl_ingest_reader_reap(r, 1);
    curl_multi_cleanup(r->multi);
    sl_mastodon_ids_destroy(r->ids);
    pthread_cond_destroy(&r->space);
    pthread_cond_destroy(&r->wakeup);
    pthread_mutex_destroy(&r->lock);
    for (size_t i = 0; i < r->count; i++)
        sl_message_clear(&r->ring[(r->head + i) % r->conf.queue_cap]);
    free(r->ring);
    free(r);
}
