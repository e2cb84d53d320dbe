/*
 * sl_http: see sl_http.h. One catch-all h2o handler keeps routing in our hands, so every unknown
 * path and wrong method gets the same JSON error shape.
 */
#include "sl_http.h"

#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_metrics.h"

struct catchall {
    h2o_handler_t super;
    sl_http_server_t *server;
};

/* Bytes of the request head as the client sent it (request line and header lines). */
static size_t head_bytes(const h2o_req_t *req)
{
    size_t n = req->method.len + req->path.len + 12;
    for (size_t i = 0; i < req->headers.size; i++)
        n += req->headers.entries[i].name->len + req->headers.entries[i].value.len + 4;
    return n;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    sl_http_server_t *s = ((struct catchall *)self)->server;
    if (s->opts.max_header_bytes > 0 && head_bytes(req) > (size_t)s->opts.max_header_bytes) {
        char msg[96];
        snprintf(msg, sizeof(msg), "the request line and headers exceed %lld bytes", s->opts.max_header_bytes);
        s->refused_head++;
        sl_http_fail(req, 431, "headers_too_large", NULL, msg, 0);
        return 0;
    }
    if (s->opts.ops_loopback_only && (sl_http_path_is(req, "/metrics") || sl_http_path_is(req, "/readyz")) &&
        !sl_http_peer_is_loopback(req)) {
        sl_http_fail(req, 403, "forbidden", NULL, "operators' endpoints answer on loopback only", 0);
        return 0;
    }
    return s->handler(s->data, req);
}

static sl_http_server_t *server_of(h2o_req_t *req)
{
    return H2O_STRUCT_FROM_MEMBER(sl_http_server_t, ctx, req->conn->ctx);
}

/* ---- CORS ----------------------------------------------------------------------------------- */

/* The origin (lower case) the list allows, as it came in the request; NULL when it is not listed
 * or absent. */
static const char *listed_origin(const sl_http_server_t *s, h2o_req_t *req, size_t *len)
{
    size_t olen = 0;
    const char *o = sl_http_header(req, "origin", &olen);
    if (o == NULL)
        return NULL;
    for (size_t i = 0; i < s->norigins; i++) {
        if (strlen(s->origins[i]) == olen && strncasecmp(s->origins[i], o, olen) == 0) {
            *len = olen;
            return o;
        }
    }
    return NULL;
}

int sl_http_origin_allowed(h2o_req_t *req)
{
    const sl_http_server_t *s = server_of(req);
    size_t len = 0;
    return s->origins == NULL || sl_http_header(req, "origin", &len) == NULL || listed_origin(s, req, &len) != NULL;
}

/* Every answer's CORS headers, set as its head is about to go out: one Access-Control-Allow-Origin
 * whatever the handler added (the streams add their own "*"), so that the setting holds for every
 * route of every service. */
static void on_setup_ostream(h2o_filter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    sl_http_server_t *s = server_of(req);
    h2o_headers_t *h = &req->res.headers;
    ssize_t i;
    size_t len = 0;
    const char *origin;
    (void)self;
    while ((i = h2o_find_header(h, H2O_TOKEN_ACCESS_CONTROL_ALLOW_ORIGIN, -1)) >= 0)
        h2o_delete_header(h, i);
    if (s->origins == NULL) {
        h2o_add_header(&req->pool, h, H2O_TOKEN_ACCESS_CONTROL_ALLOW_ORIGIN, NULL, H2O_STRLIT("*"));
    } else {
        /* the answer depends on the Origin: caches must keep one per origin */
        h2o_set_header_token(&req->pool, h, H2O_TOKEN_VARY, H2O_STRLIT("Origin"));
        if ((origin = listed_origin(s, req, &len)) != NULL)
            h2o_add_header(&req->pool, h, H2O_TOKEN_ACCESS_CONTROL_ALLOW_ORIGIN, NULL, origin, len);
    }
    if (req->res.status >= 400) /* 429 and 503 carry it: let scripts of other origins read it */
        h2o_add_header_by_str(&req->pool, h, H2O_STRLIT("access-control-expose-headers"), 0, NULL,
                              H2O_STRLIT("Retry-After"));
    h2o_setup_next_ostream(req, slot);
}

/* scheme://host[:port]: what a browser sends as Origin (no path, no trailing slash). */
static int origin_valid(const char *o, size_t len)
{
    size_t i = 0;
    if (len == 0 || !isalpha((unsigned char)o[0]))
        return 0;
    while (i < len && (isalnum((unsigned char)o[i]) || o[i] == '+' || o[i] == '-' || o[i] == '.'))
        i++;
    if (len - i < 4 || memcmp(o + i, "://", 3) != 0)
        return 0;
    i += 3;
    size_t host = i;
    if (o[i] == '[') { /* an IPv6 literal */
        while (i < len && o[i] != ']' && (isxdigit((unsigned char)o[i]) || o[i] == ':' || o[i] == '.' || o[i] == '['))
            i++;
        if (i == len || o[i] != ']')
            return 0;
        i++;
    } else {
        while (i < len && (isalnum((unsigned char)o[i]) || o[i] == '-' || o[i] == '.' || o[i] == '_' || o[i] == '~'))
            i++;
    }
    if (i == host)
        return 0;
    if (i < len && o[i] == ':') {
        size_t digits = ++i;
        while (i < len && isdigit((unsigned char)o[i]))
            i++;
        if (i == digits || i - digits > 5)
            return 0;
    }
    return i == len;
}

static void free_list(char **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

/* SLUICE_ALLOWED_ORIGINS into *out (lower case), *out NULL for "*" (or nothing). Returns 0, or -1
 * with err filled. */
static int parse_origins(const char *list, char ***out, size_t *nout, char *err, size_t errlen)
{
    char **o = NULL;
    size_t n = 0, max = 1;
    *out = NULL;
    *nout = 0;
    if (list == NULL)
        return 0;
    for (const char *p = list; *p != '\0'; p++)
        max += *p == ',';
    const char *star = list + strspn(list, " ");
    if (*star == '*' && star[1 + strspn(star + 1, " ")] == '\0')
        return 0; /* "*" (spaces around it ignored): any origin */
    for (const char *p = list; *p != '\0';) {
        const char *comma = strchr(p, ','), *end = comma != NULL ? comma : p + strlen(p), *b = p, *e = end;
        while (b < e && *b == ' ')
            b++;
        while (e > b && e[-1] == ' ')
            e--;
        size_t len = (size_t)(e - b);
        if (len == 1 && *b == '*') {
            snprintf(err, errlen, "SLUICE_ALLOWED_ORIGINS: * (any origin) stands alone, not in a list");
            goto Fail;
        }
        if (!origin_valid(b, len)) {
            snprintf(err, errlen, "SLUICE_ALLOWED_ORIGINS: '%.*s' is not an origin (scheme://host[:port], without a path)",
                     (int)(len > 80 ? 80 : len), b);
            goto Fail;
        }
        if ((o == NULL && (o = calloc(max, sizeof(*o))) == NULL) || (o[n] = strndup(b, len)) == NULL) {
            snprintf(err, errlen, "out of memory");
            goto Fail;
        }
        for (size_t k = 0; k < len; k++)
            o[n][k] = (char)tolower((unsigned char)o[n][k]);
        n++;
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    if (n == 0) {
        snprintf(err, errlen, "SLUICE_ALLOWED_ORIGINS: empty (* allows any origin)");
        goto Fail;
    }
    *out = o;
    *nout = n;
    return 0;
Fail:
    free_list(o, n);
    return -1;
}

int sl_http_opts_check(const sl_http_opts_t *opts, char *err, size_t errlen)
{
    char **o;
    size_t n;
    if (parse_origins(opts->allowed_origins, &o, &n, err, errlen) != 0)
        return -1;
    free_list(o, n);
    return 0;
}

int sl_http_preflight(h2o_req_t *req, const char *methods)
{
    h2o_headers_t *h = &req->res.headers;
    if (!sl_http_origin_allowed(req)) {
        sl_http_fail(req, 403, "origin_not_allowed", NULL, "this Origin may not use this service (SLUICE_ALLOWED_ORIGINS)",
                     0);
        return 403;
    }
    h2o_add_header_by_str(&req->pool, h, H2O_STRLIT("access-control-allow-methods"), 0, NULL, methods, strlen(methods));
    h2o_add_header_by_str(&req->pool, h, H2O_STRLIT("access-control-allow-headers"), 0, NULL,
                          H2O_STRLIT("Authorization, Content-Type, Idempotency-Key, Last-Event-ID, Accept"));
    h2o_add_header_by_str(&req->pool, h, H2O_STRLIT("access-control-max-age"), 0, NULL, H2O_STRLIT("600"));
    sl_http_send(req, 204, NULL, "", 0);
    return 204;
}

/* Open connections of one client address. The table has an entry only while the address has a
 * connection open, so its size is bounded by the connections, not by the addresses ever seen. */
#define PEER_SLOTS 1024

struct sl_http_peer {
    struct sl_http_peer *next;
    size_t nconns;
    int refusing; /* refused since it was last under the limit (one log line per episode) */
    socklen_t len;
    unsigned char addr[16]; /* the client's key (sl_http_addr_key: an IPv4 address, an IPv6 /64) */
};

socklen_t sl_http_addr_key(const struct sockaddr_storage *ss, unsigned char addr[16])
{
    memset(addr, 0, 16);
    if (ss->ss_family == AF_INET) {
        memcpy(addr, &((const struct sockaddr_in *)ss)->sin_addr, 4);
        return 4;
    }
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) { /* a dual-stack listener's IPv4 client */
            memcpy(addr, a->s6_addr + 12, 4);
            return 4;
        }
        /* One host (one customer of a provider) typically owns a whole /64 and may take any
         * address in it: keyed on each address, it would have 2^64 budgets. */
        memcpy(addr, a->s6_addr, 8);
        return 8;
    }
    return 0;
}

const char *sl_http_addr_key_text(const unsigned char addr[16], socklen_t len, char *buf, size_t size)
{
    unsigned char full[16] = {0};
    memcpy(full, addr, len <= 16 ? len : 16);
    if ((len != 4 && len != 8) || inet_ntop(len == 4 ? AF_INET : AF_INET6, full, buf, (socklen_t)size) == NULL) {
        snprintf(buf, size, "%s", "");
        return buf;
    }
    if (len == 8 && strlen(buf) + 4 < size)
        strcat(buf, "/64");
    return buf;
}

static socklen_t peer_key(h2o_socket_t *sock, unsigned char addr[16])
{
    struct sockaddr_storage ss;
    return h2o_socket_getpeername(sock, (struct sockaddr *)&ss) == 0 ? 0 : sl_http_addr_key(&ss, addr);
}

static struct sl_http_peer **peer_slot(sl_http_server_t *s, const unsigned char *addr, socklen_t len)
{
    unsigned h = 2166136261u;
    for (socklen_t i = 0; i < len; i++)
        h = (h ^ addr[i]) * 16777619u;
    return &s->peers[h % PEER_SLOTS];
}

/* The entry of the address, created when absent; NULL when out of memory (then the connection
 * is not counted: a limit that fails open, never one that refuses everybody). */
static struct sl_http_peer *peer_get(sl_http_server_t *s, const unsigned char *addr, socklen_t len)
{
    struct sl_http_peer **slot = peer_slot(s, addr, len), *p;
    for (p = *slot; p != NULL; p = p->next)
        if (p->len == len && memcmp(p->addr, addr, len) == 0)
            return p;
    if ((p = calloc(1, sizeof(*p))) == NULL)
        return NULL;
    p->len = len;
    memcpy(p->addr, addr, len);
    p->next = *slot;
    *slot = p;
    return p;
}

static void peer_release(sl_http_server_t *s, struct sl_http_peer *p)
{
    if (--p->nconns < (size_t)s->opts.max_conns_per_client)
        p->refusing = 0;
    if (p->nconns > 0)
        return;
    for (struct sl_http_peer **e = peer_slot(s, p->addr, p->len); *e != NULL; e = &(*e)->next) {
        if (*e == p) {
            *e = p->next;
            free(p);
            return;
        }
    }
}

/* 1 when the client of sock has its max_conns_per_client open already (then sock is closed),
 * else 0 with *peer its entry (NULL when not counted). */
static int over_client_limit(sl_http_server_t *s, h2o_socket_t *sock, struct sl_http_peer **peer)
{
    unsigned char addr[16];
    socklen_t len;
    *peer = NULL;
    if (s->peers == NULL || (len = peer_key(sock, addr)) == 0 || (*peer = peer_get(s, addr, len)) == NULL)
        return 0;
    if ((*peer)->nconns < (size_t)s->opts.max_conns_per_client) {
        (*peer)->nconns++;
        return 0;
    }
    s->refused_per_client++;
    if (!(*peer)->refusing) {
        char text[INET6_ADDRSTRLEN + 4];
        sl_http_addr_key_text(addr, len, text, sizeof(text));
        SL_WARN("event=client_connections_refused peer=%s limit=%lld", text, s->opts.max_conns_per_client);
        (*peer)->refusing = 1;
    }
    h2o_socket_close(sock);
    return 1;
}

/* h2o 2.2 cannot close its idle keep-alive connections on request, so we keep our own list of
 * accepted sockets through their on_close hook (h2o's server side leaves it unused). */
struct tracked_conn {
    h2o_linklist_t link;
    sl_http_server_t *server;
    h2o_socket_t *sock;
    struct sl_http_peer *peer; /* counted against its client's limit, or NULL */
    int ends_itself;           /* sl_http_drain leaves it to its owner (sl_http_ends_itself) */
};

static void on_conn_close(void *data)
{
    struct tracked_conn *t = data;
    h2o_linklist_unlink(&t->link);
    t->server->nconns--;
    if (t->peer != NULL)
        peer_release(t->server, t->peer);
    free(t);
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
    sl_http_server_t *s = listener->data;
    h2o_socket_t *sock;
    if (err != NULL)
        return;
    if ((sock = h2o_evloop_socket_accept(listener)) == NULL) {
        if (errno == EMFILE || errno == ENFILE) {
            /* Out of descriptors: the listener stays readable, so stop looking at it for a moment
             * instead of spinning; the backlog waits in the kernel. */
            h2o_socket_read_stop(listener);
            if (!h2o_timeout_is_linked(&s->pause_entry))
                h2o_timeout_link(s->loop, &s->pause_timeout, &s->pause_entry);
        }
        return;
    }
    struct sl_http_peer *peer;
    if (over_client_limit(s, sock, &peer))
        return;
    struct tracked_conn *t = malloc(sizeof(*t));
    if (t == NULL && peer != NULL)
        peer_release(s, peer); /* untracked: it cannot be given back when it closes */
    if (t != NULL) {
        t->server = s;
        t->sock = sock;
        t->peer = peer;
        t->ends_itself = 0;
        h2o_linklist_insert(&s->conns, &t->link);
        s->nconns++;
        sock->on_close.cb = on_conn_close;
        sock->on_close.data = t;
    }
    h2o_accept(&s->accept_ctx, sock);
}

static void on_pause_end(h2o_timeout_entry_t *entry)
{
    sl_http_server_t *s = H2O_STRUCT_FROM_MEMBER(sl_http_server_t, pause_entry, entry);
    if (s->listener != NULL)
        h2o_socket_read_start(s->listener, on_accept);
}

long sl_http_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl.rlim_cur == RLIM_INFINITY ? 1L << 20 : (long)rl.rlim_cur;
}

void sl_http_close_connections(sl_http_server_t *s)
{
    h2o_context_request_shutdown(&s->ctx); /* no keep-alive for requests from now on */
    for (h2o_linklist_t *n = s->conns.next; n != &s->conns; n = n->next) {
        struct tracked_conn *t = H2O_STRUCT_FROM_MEMBER(struct tracked_conn, link, n);
        if (!t->ends_itself)
            shutdown(h2o_socket_get_fd(t->sock), SHUT_RD);
    }
}

void sl_http_ends_itself(h2o_socket_t *sock)
{
    if (sock != NULL && sock->on_close.cb == on_conn_close)
        ((struct tracked_conn *)sock->on_close.data)->ends_itself = 1;
}

size_t sl_http_connections(const sl_http_server_t *s)
{
    return s->nconns;
}

void sl_http_dispose(sl_http_server_t *s)
{
    sl_http_stop_listening(s);
    /* whatever is still open now is abandoned: forget our hooks so closing it later is harmless */
    while (!h2o_linklist_is_empty(&s->conns)) {
        struct tracked_conn *t = H2O_STRUCT_FROM_MEMBER(struct tracked_conn, link, s->conns.next);
        t->sock->on_close.cb = NULL;
        h2o_linklist_unlink(&t->link);
        if (t->peer != NULL)
            peer_release(s, t->peer);
        free(t);
    }
    s->nconns = 0;
    free_list(s->origins, s->norigins);
    s->origins = NULL;
    s->norigins = 0;
    free(s->peers);
    s->peers = NULL;
    if (h2o_timeout_is_linked(&s->pause_entry))
        h2o_timeout_unlink(&s->pause_entry);
    h2o_timeout_dispose(s->loop, &s->pause_timeout);
    /* h2o_context_request_shutdown armed HTTP/2's GOAWAY timer; the context may not die with it set */
    if (h2o_timeout_is_linked(&s->ctx.http2._graceful_shutdown_timeout))
        h2o_timeout_unlink(&s->ctx.http2._graceful_shutdown_timeout);
    h2o_context_dispose(&s->ctx);
    h2o_config_dispose(&s->config);
    h2o_evloop_destroy(s->loop);
    s->loop = NULL;
}

void sl_http_init(sl_http_server_t *s, sl_http_handler_cb handler, void *data, size_t max_body)
{
    memset(s, 0, sizeof(*s));
    s->handler = handler;
    s->data = data;
    h2o_config_init(&s->config);
    s->config.max_request_entity_size = max_body;
    /* HTTP/1.1 only: h2o would otherwise take cleartext HTTP/2 both by prior knowledge and by
     * "Upgrade: h2c", and one connection would carry many streams past the per-client connection
     * limit (and h2o 2.2.5 has no fix for HTTP/2 Rapid Reset). TLS and HTTP/2 belong to the proxy
     * in front. */
    s->config.http1.upgrade_to_http2 = 0;
    h2o_hostconf_t *host = h2o_config_register_host(&s->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    struct catchall *h = (struct catchall *)h2o_create_handler(path, sizeof(*h));
    h->super.on_req = on_req;
    h->server = s;
    h2o_create_filter(path, sizeof(h2o_filter_t))->on_setup_ostream = on_setup_ostream;
    s->loop = h2o_evloop_create();
    h2o_context_init(&s->ctx, s->loop, &s->config);
    s->accept_ctx.ctx = &s->ctx;
    s->accept_ctx.hosts = s->config.hosts;
    h2o_linklist_init_anchor(&s->conns);
    h2o_timeout_init(s->loop, &s->pause_timeout, 100);
    s->pause_entry.cb = on_pause_end;
}

int sl_http_configure(sl_http_server_t *s, const sl_http_opts_t *opts)
{
    s->opts = *opts;
    if (opts->max_conns_per_client > 0 && s->peers == NULL &&
        (s->peers = calloc(PEER_SLOTS, sizeof(*s->peers))) == NULL)
        return -1;
    char err[256], q[300];
    free_list(s->origins, s->norigins);
    if (parse_origins(opts->allowed_origins, &s->origins, &s->norigins, err, sizeof(err)) != 0) {
        SL_ERROR("event=start_failed error=%s", sl_log_quote(q, sizeof(q), err));
        return -1;
    }
    return 0;
}

int sl_http_setup(sl_http_server_t *s, sl_http_handler_cb handler, void *data, size_t max_body,
                  const sl_http_opts_t *opts)
{
    sl_http_init(s, handler, data, max_body);
    return sl_http_configure(s, opts);
}

int sl_http_listen(sl_http_server_t *s, const char *host, int port)
{
    struct sockaddr_in addr;
    int fd, on = 1;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        errno = EINVAL;
        goto Fail;
    }
    if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        goto Fail;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(fd, SOMAXCONN) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        goto Fail;
    }
    s->listener = h2o_evloop_socket_create(s->loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    s->listener->data = s;
    h2o_socket_read_start(s->listener, on_accept);
    return 0;
Fail: {
    int saved = errno;
    SL_ERROR("event=listen_failed host=%s port=%d error=\"%s\"", host, port, strerror(saved));
    errno = saved;
    return -1;
}
}

static volatile sig_atomic_t hup_flag;

static void on_hup(int sig)
{
    (void)sig;
    hup_flag = 1;
}

void sl_http_on_sighup(sl_http_server_t *s, void (*cb)(void *data), void *data)
{
    struct sigaction sa;
    s->on_hup = cb;
    s->hup_data = data;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_hup;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGHUP, &sa, NULL);
}

void sl_http_run(sl_http_server_t *s, volatile sig_atomic_t *stop)
{
    while (!*stop) {
        h2o_evloop_run(s->loop, 200);
        if (hup_flag && s->on_hup != NULL) {
            hup_flag = 0;
            s->on_hup(s->hup_data);
        }
    }
}

int sl_http_drain(sl_http_server_t *s, long long timeout_ms, size_t (*busy)(void *data), void *data)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long deadline = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000 + timeout_ms;
    sl_http_stop_listening(s);
    sl_http_close_connections(s);
    for (;;) {
        int idle = (busy == NULL || busy(data) == 0) && s->nconns == 0;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (idle)
            return 1;
        if ((long long)now.tv_sec * 1000 + now.tv_nsec / 1000000 >= deadline)
            return 0;
        h2o_evloop_run(s->loop, 20);
    }
}

void sl_http_stop_listening(sl_http_server_t *s)
{
    if (s->listener != NULL) {
        h2o_socket_read_stop(s->listener);
        h2o_socket_close(s->listener);
        s->listener = NULL;
    }
}

static volatile sig_atomic_t *stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    if (stop_flag != NULL)
        *stop_flag = 1;
}

void sl_http_trap_signals(volatile sig_atomic_t *flag)
{
    struct sigaction sa;
    stop_flag = flag;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

const char *sl_http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

double sl_http_request_age(h2o_req_t *req)
{
    struct timeval now;
    gettimeofday(&now, NULL);
    if (h2o_timeval_is_null(&req->timestamps.request_begin_at))
        return 0;
    return (double)h2o_timeval_subtract(&req->timestamps.request_begin_at, &now) / 1e6;
}

static void send_body(h2o_req_t *req, int status, const char *content_type, const char *cache_control,
                      const char *body, size_t len)
{
    req->res.status = status;
    req->res.reason = sl_http_reason(status);
    if (content_type == NULL)
        content_type = "application/json";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type, strlen(content_type));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, cache_control, strlen(cache_control));
    /* A known length keeps HTTP/1.1 connections alive: h2o's chunked filter closes them for
     * non-200 answers of unknown length. A 304 has no body and must not claim a length of 0. */
    req->res.content_length = status == 304 ? SIZE_MAX : len;
    h2o_send_inline(req, body, len);
}

void sl_http_send(h2o_req_t *req, int status, const char *content_type, const char *body, size_t len)
{
    send_body(req, status, content_type, "no-store", body, len);
}

/* If-None-Match names etag (one of a list, weak or not) or is "*". */
static int etag_matches(h2o_req_t *req, const char *etag)
{
    size_t n;
    const char *v = sl_http_header(req, "if-none-match", &n);
    if (v == NULL)
        return 0;
    while (n > 0 && (*v == ' ' || *v == '\t'))
        v++, n--;
    return (n == 1 && *v == '*') || memmem(v, n, etag, strlen(etag)) != NULL;
}

void sl_http_send_static(h2o_req_t *req, const char *content_type, const char *etag, const char *body, size_t len)
{
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ETAG, NULL, etag, strlen(etag));
    if (etag_matches(req, etag))
        send_body(req, 304, content_type, "no-cache", "", 0);
    else
        send_body(req, 200, content_type, "no-cache", body, len);
}

void sl_http_send_error(h2o_req_t *req, const sl_error_t *err, int retry_after_s)
{
    size_t len = 0;
    char *json = sl_error_to_json(err, &len);
    if (retry_after_s > 0) {
        char *v = h2o_mem_alloc_pool(&req->pool, 16);
        int n = snprintf(v, 16, "%d", retry_after_s);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, v, (size_t)n);
    }
    if (json == NULL) {
        sl_http_send(req, 500, "text/plain", H2O_STRLIT("out of memory\n"));
        return;
    }
    sl_http_send(req, err->status, NULL, json, len);
    free(json);
}

void sl_http_send_metrics(h2o_req_t *req, sl_buf_t *b)
{
    const sl_http_server_t *s = server_of(req);
    sl_metrics_one(b, "sluice_http_connections", "gauge",
                   "Open client connections (HTTP and WebSocket).", (double)s->nconns);
    sl_metrics_header(b, "sluice_http_connections_refused_total", "counter",
                      "Connections closed at accept: their client had max-conns-per-client open.");
    sl_metrics_sample(b, "sluice_http_connections_refused_total", "reason=\"per_client\"", (double)s->refused_per_client);
    sl_metrics_header(b, "sluice_http_requests_refused_total", "counter",
                      "Requests refused before their service saw them: 431, a head over max-header-bytes.");
    sl_metrics_sample(b, "sluice_http_requests_refused_total", "reason=\"header_bytes\"", (double)s->refused_head);
    sl_http_send(req, 200, "text/plain; version=0.0.4", b->data, b->len);
}

void sl_http_fail(h2o_req_t *req, int status, const char *code, const char *field, const char *message,
                  int retry_after_s)
{
    sl_error_t err;
    sl_error_set(&err, status, code, field, "%s", message);
    sl_http_send_error(req, &err, retry_after_s);
}

static int unhex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int sl_http_query(h2o_req_t *req, const char *name, h2o_iovec_t *out)
{
    size_t namelen = strlen(name);
    if (req->query_at == SIZE_MAX)
        return 0;
    const char *p = req->path.base + req->query_at + 1, *end = req->path.base + req->path.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *pend = amp != NULL ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(pend - p));
        const char *kend = eq != NULL ? eq : pend;
        if ((size_t)(kend - p) == namelen && memcmp(p, name, namelen) == 0) {
            const char *v = eq != NULL ? eq + 1 : pend;
            size_t vlen = (size_t)(pend - v), o = 0;
            char *dst = h2o_mem_alloc_pool(&req->pool, vlen + 1);
            for (size_t i = 0; i < vlen; i++) {
                if (v[i] == '%') {
                    int hi, lo;
                    if (i + 2 >= vlen)
                        return -1;
                    if ((hi = unhex(v[i + 1])) < 0 || (lo = unhex(v[i + 2])) < 0)
                        return -1;
                    dst[o++] = (char)(hi << 4 | lo);
                    i += 2;
                } else {
                    dst[o++] = v[i] == '+' ? ' ' : v[i];
                }
            }
            dst[o] = '\0';
            *out = h2o_iovec_init(dst, o);
            return 1;
        }
        p = pend + 1;
    }
    return 0;
}

const char *sl_http_header(h2o_req_t *req, const char *name, size_t *len)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, name, strlen(name), -1);
    if (i < 0)
        return NULL;
    *len = req->headers.entries[i].value.len;
    return req->headers.entries[i].value.base;
}

const char *sl_http_bearer(h2o_req_t *req, size_t *len)
{
    size_t hl = 0;
    const char *h = sl_http_header(req, "authorization", &hl);
    if (h == NULL || hl < 7 || strncasecmp(h, "Bearer ", 7) != 0)
        return NULL;
    h += 7;
    hl -= 7;
    while (hl > 0 && *h == ' ') {
        h++;
        hl--;
    }
    *len = hl;
    return h;
}

const char *sl_http_client_key(h2o_req_t *req, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    unsigned char addr[16];
    buf[0] = '\0';
    if (req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss) == 0)
        return buf;
    return sl_http_addr_key_text(addr, sl_http_addr_key(&ss, addr), buf, len);
}

int sl_http_peer_is_loopback(h2o_req_t *req)
{
    struct sockaddr_storage ss;
    socklen_t sl = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);
    if (sl == 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss.ss_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr);
    return 0;
}

int sl_http_content_type_is(h2o_req_t *req, const char *type)
{
    size_t len = 0, tlen = strlen(type);
    const char *ct = sl_http_header(req, "content-type", &len);
    if (ct == NULL || len < tlen || strncasecmp(ct, type, tlen) != 0)
        return 0;
    return len == tlen || ct[tlen] == ';' || ct[tlen] == ' ';
}

int sl_http_content_is_json(h2o_req_t *req)
{
    return sl_http_content_type_is(req, "application/json");
}

int sl_http_path_is(h2o_req_t *req, const char *path)
{
    return h2o_memis(req->path_normalized.base, req->path_normalized.len, path, strlen(path));
}

void sl_http_method_not_allowed(h2o_req_t *req, const char *allow)
{
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, allow, strlen(allow));
    sl_http_fail(req, 405, "method_not_allowed", NULL, "this method is not allowed here", 0);
}

int sl_http_method_is(h2o_req_t *req, const char *method)
{
    return h2o_memis(req->method.base, req->method.len, method, strlen(method));
}
