/*
 * A fake Mastodon instance for tests; see fake_mastodon.h.
 */
#include "fake_mastodon.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 256
#define MAX_STATUSES 4096
#define MAX_HISTORY 256

struct chunk {
    struct chunk *next;
    size_t len;
    char data[];
};

struct client {
    fm_t *f;
    int fd;
    int stream_port; /* accepted on the streaming port */
    int slot;        /* in f->threads */
    int drop;
    struct chunk *head, *tail; /* outbox of a stream */
    struct client *next;       /* in f->streams */
};

struct status {
    char id[32];
    char *json;
};

struct fm {
    fm_conf_t conf;
    char token[256];
    int lfd[2]; /* REST, streaming */
    int port[2];
    int wake[2];
    char url[64];
    pthread_t acceptor;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* new outbox data, drops, stop */
    int stop;
    struct {
        pthread_t t;
        int used, finished;
    } threads[MAX_THREADS];
    struct client *streams;
    struct status statuses[MAX_STATUSES];
    int nstatuses;
    char *history[MAX_HISTORY];
    int nhistory, replay, split, crlf, silent;
    int rate_limit, rate_window_ms, remaining;
    long long window_end_ms;
    fm_stats_t st;
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int listen_on(int *port)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), on = 1;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(0x7f000001);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

/* Writes everything, waiting (and counting the waits) while the peer does not read. Returns 0, or
 * -1 when the connection is gone or the stream was dropped. */
static int write_all(struct client *c, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            pthread_mutex_lock(&c->f->lock);
            c->f->st.stream_blocked_waits++;
            int gone = c->drop || c->f->stop;
            pthread_mutex_unlock(&c->f->lock);
            if (gone)
                return -1;
            struct pollfd pfd = {c->fd, POLLOUT, 0};
            poll(&pfd, 1, 50);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        return -1;
    }
    return 0;
}

static int send_chunk(struct client *c, const char *p, size_t len)
{
    char head[24];
    int n = snprintf(head, sizeof(head), "%zx\r\n", len);
    if (len == 0)
        return 0;
    if (write_all(c, head, (size_t)n) != 0 || write_all(c, p, len) != 0 || write_all(c, "\r\n", 2) != 0)
        return -1;
    return 0;
}

/* Sends data as one chunk, or cut at awkward places into several (with a pause between, so that
 * they arrive as separate reads): inside multi-byte characters, between CR and LF, mid-line. */
static int send_data(struct client *c, const char *p, size_t len, int split)
{
    static const size_t sizes[] = {7, 1, 29, 3, 113, 2, 61};
    if (!split)
        return send_chunk(c, p, len);
    size_t i = 0, k = 0;
    while (i < len) {
        size_t n = sizes[k++ % (sizeof(sizes) / sizeof(sizes[0]))], cut = i + n < len ? i + n : len;
        /* also cut right after a CR, and right after the first byte of a multi-byte character */
        for (size_t j = i + 1; j < cut; j++) {
            unsigned char ch = (unsigned char)p[j - 1];
            if (ch == '\r' || ch >= 0xc0) {
                cut = j;
                break;
            }
        }
        if (send_chunk(c, p + i, cut - i) != 0)
            return -1;
        i = cut;
        sleep_ms(2);
    }
    return 0;
}

static void send_simple(struct client *c, int status, const char *reason, const char *extra_headers, const char *body)
{
    char head[1024];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n%s\r\n",
                     status, reason, strlen(body), extra_headers != NULL ? extra_headers : "");
    if (write_all(c, head, (size_t)n) == 0)
        write_all(c, body, strlen(body));
}

/* The SSE text of an event, with CRLF line ends when asked. malloc'd. */
static char *format_event(const char *event, const char *data, int crlf)
{
    size_t cap = strlen(data) * 2 + strlen(event) + 64, o = 0;
    char *out = malloc(cap);
    const char *eol = crlf ? "\r\n" : "\n";
    if (event != NULL && *event)
        o += (size_t)sprintf(out + o, "event: %s%s", event, eol);
    const char *line = data;
    for (;;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl != NULL ? (size_t)(nl - line) : strlen(line);
        o += (size_t)sprintf(out + o, "data: %.*s%s", (int)len, line, eol);
        if (nl == NULL)
            break;
        line = nl + 1;
    }
    o += (size_t)sprintf(out + o, "%s", eol);
    return out;
}

static void enqueue(struct client *c, const char *p, size_t len)
{
    struct chunk *ch = malloc(sizeof(*ch) + len);
    ch->next = NULL;
    ch->len = len;
    memcpy(ch->data, p, len);
    if (c->tail != NULL)
        c->tail->next = ch;
    else
        c->head = ch;
    c->tail = ch;
}

/* Caller holds the lock. */
static void broadcast(fm_t *f, const char *p, size_t len, int remember)
{
    for (struct client *c = f->streams; c != NULL; c = c->next)
        enqueue(c, p, len);
    if (remember) {
        if (f->nhistory == MAX_HISTORY) {
            free(f->history[0]);
            memmove(f->history, f->history + 1, sizeof(f->history[0]) * (MAX_HISTORY - 1));
            f->nhistory--;
        }
        f->history[f->nhistory++] = strndup(p, len);
    }
    pthread_cond_broadcast(&f->cond);
}

static void serve_stream(struct client *c, const char *path)
{
    fm_t *f = c->f;
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                               "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if (write_all(c, head, sizeof(head) - 1) != 0 || send_chunk(c, ":)\n", 3) != 0)
        return;
    pthread_mutex_lock(&f->lock);
    snprintf(f->st.last_stream_path, sizeof(f->st.last_stream_path), "%s", path);
    f->st.stream_connects++;
    f->st.streams_open++;
    for (int i = f->nhistory - f->replay; i < f->nhistory; i++) {
        if (i >= 0)
            enqueue(c, f->history[i], strlen(f->history[i]));
    }
    c->next = f->streams;
    f->streams = c;
    long long next_beat = now_ms() + f->conf.heartbeat_ms;
    for (;;) {
        while (!f->stop && !c->drop && c->head == NULL) {
            long long wait = next_beat - now_ms();
            if (wait <= 0)
                break;
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += (time_t)(wait / 1000);
            until.tv_nsec += (long)(wait % 1000) * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&f->cond, &f->lock, &until);
        }
        if (f->stop || c->drop)
            break;
        struct chunk *ch = c->head;
        int split = f->split, silent = f->silent, crlf = f->crlf;
        if (ch != NULL) {
            c->head = ch->next;
            if (c->head == NULL)
                c->tail = NULL;
        }
        pthread_mutex_unlock(&f->lock);
        int err = 0;
        if (ch != NULL) {
            err = send_data(c, ch->data, ch->len, split);
            free(ch);
        } else {
            if (!silent)
                err = send_chunk(c, crlf ? ":thump\r\n" : ":thump\n", crlf ? 8 : 7);
            next_beat = now_ms() + f->conf.heartbeat_ms;
        }
        pthread_mutex_lock(&f->lock);
        if (err != 0)
            break;
    }
    for (struct client **pp = &f->streams; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    while (c->head != NULL) {
        struct chunk *ch = c->head;
        c->head = ch->next;
        free(ch);
    }
    f->st.streams_open--;
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
}

static int id_cmp(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    return la != lb ? (la < lb ? -1 : 1) : strcmp(a, b);
}

static int query_param(const char *query, const char *name, char *out, size_t size)
{
    size_t n = strlen(name);
    for (const char *p = query; p != NULL && *p;) {
        if (strncmp(p, name, n) == 0 && p[n] == '=') {
            const char *v = p + n + 1, *e = strchr(v, '&');
            size_t len = e != NULL ? (size_t)(e - v) : strlen(v);
            snprintf(out, size, "%.*s", (int)len, v);
            return 1;
        }
        p = strchr(p, '&');
        if (p != NULL)
            p++;
    }
    return 0;
}

static void serve_timeline(struct client *c, const char *path, const char *query)
{
    fm_t *f = c->f;
    char limit_s[16] = "20", since[32] = "", max_id[32] = "", min_id[32] = "", headers[6144], reset[64];
    query_param(query, "limit", limit_s, sizeof(limit_s));
    query_param(query, "since_id", since, sizeof(since));
    query_param(query, "max_id", max_id, sizeof(max_id));
    query_param(query, "min_id", min_id, sizeof(min_id));
    int limit = atoi(limit_s);
    if (limit < 1 || limit > 40)
        limit = 20;

    pthread_mutex_lock(&f->lock);
    f->st.timeline_requests++;
    if (*since || *min_id)
        f->st.timeline_cursor_requests++;
    snprintf(f->st.last_timeline_query, sizeof(f->st.last_timeline_query), "%s", query != NULL ? query : "");
    long long now = now_ms();
    if (now >= f->window_end_ms) {
        f->window_end_ms = now + f->rate_window_ms;
        f->remaining = f->rate_limit;
    }
    time_t rs = (time_t)(f->window_end_ms / 1000);
    struct tm tm;
    gmtime_r(&rs, &tm);
    snprintf(reset, sizeof(reset), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(f->window_end_ms % 1000));
    if (f->remaining <= 0) {
        f->st.rate_limited_answers++;
        pthread_mutex_unlock(&f->lock);
        snprintf(headers, sizeof(headers), "X-RateLimit-Limit: %d\r\nX-RateLimit-Remaining: 0\r\nX-RateLimit-Reset: %s\r\n",
                 f->rate_limit, reset);
        send_simple(c, 429, "Too Many Requests", headers, "{\"error\":\"Too many requests\"}");
        return;
    }
    f->remaining--;
    int remaining = f->remaining;
    /* newest first, as Mastodon pages */
    int *pick = calloc((size_t)f->nstatuses + 1, sizeof(int)), n = 0;
    if (*min_id) { /* the page right after min_id: oldest first, then reversed */
        for (int i = 0; i < f->nstatuses && n < limit; i++) {
            if (id_cmp(f->statuses[i].id, min_id) > 0 && (!*max_id || id_cmp(f->statuses[i].id, max_id) < 0))
                pick[n++] = i;
        }
        for (int a = 0, b = n - 1; a < b; a++, b--) {
            int t = pick[a];
            pick[a] = pick[b];
            pick[b] = t;
        }
    } else {
        for (int i = f->nstatuses - 1; i >= 0 && n < limit; i--) {
            if ((!*since || id_cmp(f->statuses[i].id, since) > 0) && (!*max_id || id_cmp(f->statuses[i].id, max_id) < 0))
                pick[n++] = i;
        }
    }
    size_t cap = 16;
    for (int i = 0; i < n; i++)
        cap += strlen(f->statuses[pick[i]].json) + 1;
    char *body = malloc(cap), *o = body;
    *o++ = '[';
    for (int i = 0; i < n; i++) {
        if (i > 0)
            *o++ = ',';
        size_t l = strlen(f->statuses[pick[i]].json);
        memcpy(o, f->statuses[pick[i]].json, l);
        o += l;
    }
    *o++ = ']';
    *o = '\0';
    int hl = snprintf(headers, sizeof(headers), "X-RateLimit-Limit: %d\r\nX-RateLimit-Remaining: %d\r\nX-RateLimit-Reset: %s\r\n",
                      f->rate_limit, remaining, reset);
    if (n > 0)
        snprintf(headers + hl, sizeof(headers) - (size_t)hl,
                 "Link: <%s%s?limit=%d&max_id=%s>; rel=\"next\", <%s%s?limit=%d&min_id=%s>; rel=\"prev\"\r\n", f->url, path,
                 limit, f->statuses[pick[n - 1]].id, f->url, path, limit, f->statuses[pick[0]].id);
    pthread_mutex_unlock(&f->lock);
    free(pick);
    send_simple(c, 200, "OK", headers, body);
    free(body);
}

static void *serve(void *arg)
{
    struct client *c = arg;
    fm_t *f = c->f;
    char req[8192] = "";
    size_t len = 0;
    int on = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    /* a small send buffer, so that a reader that stops reading is felt soon */
    int sndbuf = 32 * 1024;
    setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    while (len < sizeof(req) - 1 && strstr(req, "\r\n\r\n") == NULL) {
        struct pollfd pfd = {c->fd, POLLIN, 0};
        if (poll(&pfd, 1, 5000) <= 0)
            goto Done;
        ssize_t n = recv(c->fd, req + len, sizeof(req) - 1 - len, 0);
        if (n <= 0)
            goto Done;
        len += (size_t)n;
        req[len] = '\0';
    }
    char method[16], target[2048];
    if (sscanf(req, "%15s %2047s", method, target) != 2)
        goto Done;
    char auth[512] = "";
    const char *h = strcasestr(req, "\r\nauthorization:");
    if (h != NULL) {
        h += 16;
        while (*h == ' ')
            h++;
        size_t l = strcspn(h, "\r\n");
        snprintf(auth, sizeof(auth), "%.*s", (int)l, h);
    }
    char *query = strchr(target, '?');
    char path[2048];
    snprintf(path, sizeof(path), "%.*s", (int)(query != NULL ? query - target : (long)strlen(target)), target);
    if (query != NULL)
        query++;
    int on_stream_port = c->stream_port;
    if (strncmp(path, "/api/v1/streaming/", 18) == 0) {
        char want[300];
        snprintf(want, sizeof(want), "Bearer %s", f->token);
        if (!on_stream_port) {
            send_simple(c, 404, "Not Found", NULL, "{\"error\":\"streaming lives on the streaming server\"}");
        } else if (f->conf.token == NULL || strcmp(auth, want) != 0) {
            pthread_mutex_lock(&f->lock);
            f->st.stream_401++;
            pthread_mutex_unlock(&f->lock);
            send_simple(c, 401, "Unauthorized", NULL, "{\"error\":\"Missing access token\"}");
        } else if (strcmp(path, "/api/v1/streaming/public") == 0 || strcmp(path, "/api/v1/streaming/public/local") == 0 ||
                   (strcmp(path, "/api/v1/streaming/hashtag") == 0 && query != NULL && strncmp(query, "tag=", 4) == 0)) {
            serve_stream(c, target);
        } else {
            send_simple(c, 404, "Not Found", NULL, "{\"error\":\"Unknown stream type\"}");
        }
    } else if (on_stream_port) {
        send_simple(c, 404, "Not Found", NULL, "{\"error\":\"Not found\"}");
    } else if (strcmp(path, "/api/v1/instance") == 0) {
        char body[512];
        pthread_mutex_lock(&f->lock);
        f->st.instance_requests++;
        pthread_mutex_unlock(&f->lock);
        snprintf(body, sizeof(body),
                 "{\"uri\":\"127.0.0.1:%d\",\"title\":\"fake\",\"version\":\"4.2.0\",\"urls\":{},"
                 "\"configuration\":{\"urls\":{\"streaming\":\"ws://127.0.0.1:%d\"}}}",
                 f->port[0], f->port[1]);
        send_simple(c, 200, "OK", NULL, body);
    } else if (strcmp(path, "/api/v1/timelines/public") == 0 || strncmp(path, "/api/v1/timelines/tag/", 22) == 0) {
        serve_timeline(c, path, query);
    } else {
        send_simple(c, 404, "Not Found", NULL, "{\"error\":\"Record not found\"}");
    }
Done:
    close(c->fd);
    pthread_mutex_lock(&f->lock);
    f->threads[c->slot].finished = 1;
    pthread_mutex_unlock(&f->lock);
    free(c);
    return NULL;
}

static void *accept_loop(void *arg)
{
    fm_t *f = arg;
    struct pollfd pfd[3] = {{f->lfd[0], POLLIN, 0}, {f->lfd[1], POLLIN, 0}, {f->wake[0], POLLIN, 0}};
    for (;;) {
        if (poll(pfd, 3, 1000) < 0 && errno != EINTR)
            break;
        pthread_mutex_lock(&f->lock);
        int stop = f->stop;
        pthread_mutex_unlock(&f->lock);
        if (stop)
            break;
        for (int k = 0; k < 2; k++) {
            if (!(pfd[k].revents & POLLIN))
                continue;
            int fd = accept4(f->lfd[k], NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0)
                continue;
            struct client *c = calloc(1, sizeof(*c));
            c->f = f;
            c->fd = fd;
            c->stream_port = k == 1;
            pthread_mutex_lock(&f->lock);
            for (int i = 0; i < MAX_THREADS && c != NULL; i++) {
                if (f->threads[i].used && f->threads[i].finished) { /* reuse the slot of an ended one */
                    pthread_join(f->threads[i].t, NULL);
                    f->threads[i].used = 0;
                }
                if (!f->threads[i].used) {
                    c->slot = i;
                    f->threads[i].finished = 0;
                    if (pthread_create(&f->threads[i].t, NULL, serve, c) == 0) {
                        f->threads[i].used = 1;
                        c = NULL;
                    }
                    break;
                }
            }
            pthread_mutex_unlock(&f->lock);
            if (c != NULL) {
                close(fd);
                free(c);
            }
        }
    }
    return NULL;
}

fm_t *fm_start(const fm_conf_t *conf)
{
    fm_t *f = calloc(1, sizeof(*f));
    f->conf = *conf;
    if (f->conf.heartbeat_ms <= 0)
        f->conf.heartbeat_ms = 15000;
    f->rate_limit = conf->rate_limit > 0 ? conf->rate_limit : 300;
    f->rate_window_ms = conf->rate_window_ms > 0 ? conf->rate_window_ms : 300000;
    if (conf->token != NULL)
        snprintf(f->token, sizeof(f->token), "%s", conf->token);
    f->lfd[0] = listen_on(&f->port[0]);
    f->lfd[1] = listen_on(&f->port[1]);
    if (f->lfd[0] < 0 || f->lfd[1] < 0 || pipe(f->wake) != 0) {
        free(f);
        return NULL;
    }
    snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%d", f->port[0]);
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->cond, NULL);
    pthread_create(&f->acceptor, NULL, accept_loop, f);
    return f;
}

void fm_stop(fm_t *f)
{
    if (f == NULL)
        return;
    pthread_mutex_lock(&f->lock);
    f->stop = 1;
    for (struct client *c = f->streams; c != NULL; c = c->next)
        shutdown(c->fd, SHUT_RDWR);
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
    if (write(f->wake[1], "x", 1) < 0)
        perror("fake_mastodon: wake");
    pthread_join(f->acceptor, NULL);
    for (int i = 0; i < MAX_THREADS; i++) {
        if (f->threads[i].used)
            pthread_join(f->threads[i].t, NULL);
    }
    close(f->lfd[0]);
    close(f->lfd[1]);
    close(f->wake[0]);
    close(f->wake[1]);
    for (int i = 0; i < f->nstatuses; i++)
        free(f->statuses[i].json);
    for (int i = 0; i < f->nhistory; i++)
        free(f->history[i]);
    pthread_cond_destroy(&f->cond);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

const char *fm_url(fm_t *f)
{
    return f->url;
}

void fm_status_uri(const char *id, char *out, size_t size)
{
    snprintf(out, size, "https://remote.example/statuses/%s", id);
}

char *fm_status_json(const char *id, const char *acct, const char *content_html, const char *edited_at)
{
    char uri[256], url[256];
    fm_status_uri(id, uri, sizeof(uri));
    snprintf(url, sizeof(url), "https://remote.example/@%s/%s", acct, id);
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:s, s:s, s:s, s:{s:s, s:s, s:s, s:s}, s:n, s:[]}", "id", id,
                          "uri", uri, "url", url, "created_at", "2026-03-01T12:00:00.000Z", "edited_at",
                          edited_at != NULL ? json_string(edited_at) : json_null(), "content", content_html,
                          "spoiler_text", "", "visibility", "public", "language", "en", "account", "id", "42", "username",
                          acct, "acct", acct, "display_name", "Display Name", "reblog", "media_attachments");
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

char *fm_boost_json(const char *id, const char *acct, const char *status_json)
{
    char uri[256];
    fm_status_uri(id, uri, sizeof(uri));
    json_t *o = json_pack("{s:s, s:s, s:n, s:s, s:n, s:s, s:s, s:s, s:n, s:{s:s, s:s, s:s, s:s}, s:o, s:[]}", "id", id,
                          "uri", uri, "url", "created_at", "2026-03-01T13:00:00.000Z", "edited_at", "content", "",
                          "spoiler_text", "", "visibility", "public", "language", "account", "id", "43", "username", acct,
                          "acct", acct, "display_name", "Booster", "reblog", json_loads(status_json, 0, NULL),
                          "media_attachments");
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

char *fm_with_id(const char *status_json, const char *id)
{
    json_t *o = json_loads(status_json, 0, NULL);
    json_object_set_new(o, "id", json_string(id));
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

static void add_status(fm_t *f, const char *status_json)
{
    json_t *o = json_loads(status_json, 0, NULL);
    const char *id = json_string_value(json_object_get(o, "id"));
    if (id != NULL && f->nstatuses < MAX_STATUSES) {
        int i = f->nstatuses;
        while (i > 0 && id_cmp(f->statuses[i - 1].id, id) > 0) { /* keep them sorted by id */
            f->statuses[i] = f->statuses[i - 1];
            i--;
        }
        snprintf(f->statuses[i].id, sizeof(f->statuses[i].id), "%s", id);
        f->statuses[i].json = strdup(status_json);
        f->nstatuses++;
    }
    json_decref(o);
}

void fm_add_to_timeline(fm_t *f, const char *status_json)
{
    pthread_mutex_lock(&f->lock);
    add_status(f, status_json);
    pthread_mutex_unlock(&f->lock);
}

void fm_event(fm_t *f, const char *event, const char *data)
{
    pthread_mutex_lock(&f->lock);
    char *text = format_event(event, data, f->crlf);
    broadcast(f, text, strlen(text), 1);
    free(text);
    pthread_mutex_unlock(&f->lock);
}

void fm_post(fm_t *f, const char *status_json)
{
    fm_add_to_timeline(f, status_json);
    fm_event(f, "update", status_json);
}

void fm_raw(fm_t *f, const char *bytes, size_t len)
{
    pthread_mutex_lock(&f->lock);
    broadcast(f, bytes, len, 0);
    pthread_mutex_unlock(&f->lock);
}

#define SETTER(name, field)                                                                                            \
    void name(fm_t *f, int v)                                                                                          \
    {                                                                                                                  \
        pthread_mutex_lock(&f->lock);                                                                                  \
        f->field = v;                                                                                                  \
        pthread_mutex_unlock(&f->lock);                                                                                \
    }
SETTER(fm_set_split, split)
SETTER(fm_set_crlf, crlf)
SETTER(fm_set_silent, silent)
SETTER(fm_set_replay, replay)

void fm_set_rate(fm_t *f, int limit, int window_ms)
{
    pthread_mutex_lock(&f->lock);
    f->rate_limit = limit;
    f->rate_window_ms = window_ms;
    f->window_end_ms = 0;
    pthread_mutex_unlock(&f->lock);
}

void fm_drop_streams(fm_t *f)
{
    pthread_mutex_lock(&f->lock);
    for (struct client *c = f->streams; c != NULL; c = c->next) {
        c->drop = 1;
        shutdown(c->fd, SHUT_RDWR);
    }
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
}

int fm_wait_streams(fm_t *f, int n, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 20) {
        pthread_mutex_lock(&f->lock);
        int open = f->st.streams_open;
        pthread_mutex_unlock(&f->lock);
        if (n == 0 ? open == 0 : open >= n)
            return 1;
        sleep_ms(20);
    }
    return 0;
}

void fm_stats(fm_t *f, fm_stats_t *st)
{
    pthread_mutex_lock(&f->lock);
    *st = f->st;
    pthread_mutex_unlock(&f->lock);
}
