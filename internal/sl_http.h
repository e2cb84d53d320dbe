/*
 * sl_http: the HTTP side every service shares, on h2o's evloop: one listener, one catch-all
 * handler that routes by method and path, JSON answers and JSON errors, query parameters, and a
 * graceful stop on SIGTERM/SIGINT. It also holds the limits every service has: operators'
 * endpoints for loopback only, at most so many open connections per client address (a
 * connection past that is closed as soon as it is accepted, before any byte of it is read), and a
 * cap on the request head (431 above it; h2o itself refuses more than 100 header lines with a
 * plain-text 400, buffers at most about 400 KiB of head, and cuts a head not complete 10 s after
 * it began). CORS is here too: every answer that goes through h2o's filters gets its
 * Access-Control-Allow-Origin from SLUICE_ALLOWED_ORIGINS ("*", the default, or the request's
 * Origin when the list has it, with Vary: Origin), whatever its handler set.
 *
 * Threading: one loop thread per server.
 */
#ifndef SL_HTTP_H
#define SL_HTTP_H

#define H2O_USE_LIBUV 0
#include <h2o.h>
#include <signal.h>

#include "sl_buf.h"
#include "sl_config.h"
#include "sl_message.h"

typedef struct sl_http_server sl_http_server_t;

/* The options every HTTP service has. */
typedef struct sl_http_opts {
    long long ops_loopback_only;    /* 1: /metrics and /readyz answer 403 to clients not on loopback */
    long long max_conns_per_client; /* open connections per client address (0: no limit) */
    long long max_header_bytes;     /* request line and headers; more: 431 (0: h2o's own limits only) */
    const char *allowed_origins;    /* SLUICE_ALLOWED_ORIGINS: "*" or a comma-separated list of origins */
} sl_http_opts_t;

/* Their entries in a service's table of options (sl_config.h), filling *o. */
#define SL_HTTP_OPTIONS(o)                                                                                 \
    {"ops-loopback-only", "SLUICE_OPS_LOOPBACK_ONLY", SL_OPT_INT, &(o)->ops_loopback_only, "0", 0, 1,       \
     "1: /metrics and /readyz answer 403 to clients not on loopback"},                                     \
    {"max-conns-per-client", "SLUICE_MAX_CONNS_PER_CLIENT", SL_OPT_INT, &(o)->max_conns_per_client, "256", \
     0, 1e7, "open connections per client address; more are closed at once (0: no limit)"},                  \
    {"max-header-bytes", "SLUICE_MAX_HEADER_BYTES", SL_OPT_INT, &(o)->max_header_bytes, "16384", 0, 400000, \
     "request line and headers, in bytes; more: 431 (0: only h2o's limits)"},                               \
    {"allowed-origins", "SLUICE_ALLOWED_ORIGINS", SL_OPT_STR, &(o)->allowed_origins, "*", 0, 0,             \
     "origins browsers may use this service from (comma-separated scheme://host[:port]; *: any)"}

struct sl_http_peer;

/* Handles one request; returns 0 (answered now or later). data is what was given to sl_http_init. */
typedef int (*sl_http_handler_cb)(void *data, h2o_req_t *req);

struct sl_http_server {
    h2o_globalconf_t config;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_evloop_t *loop;
    h2o_socket_t *listener;
    sl_http_handler_cb handler;
    void *data;
    h2o_linklist_t conns; /* every accepted socket still open (struct tracked_conn) */
    size_t nconns;
    sl_http_opts_t opts;
    struct sl_http_peer **peers; /* open connections by client address, while max_conns_per_client > 0 */
    uint64_t refused_per_client; /* connections closed at accept for max_conns_per_client */
    uint64_t refused_head;       /* requests answered 431 for max_header_bytes */
    h2o_timeout_t pause_timeout; /* accepting pauses a moment when out of descriptors */
    h2o_timeout_entry_t pause_entry;
    char **origins;              /* SLUICE_ALLOWED_ORIGINS in lower case; NULL: any origin ("*") */
    size_t norigins;
    void (*on_hup)(void *data);  /* sl_http_on_sighup's callback, or NULL */
    void *hup_data;
};

/* Sets up the loop, the configuration (request bodies up to max_body bytes) and the handler. */
void sl_http_init(sl_http_server_t *s, sl_http_handler_cb handler, void *data, size_t max_body);

/* Checks the options that sl_config cannot (SLUICE_ALLOWED_ORIGINS): 0, or -1 with err filled.
 * A service calls it at start, before anything else, to refuse a bad setting (exit status 2). */
int sl_http_opts_check(const sl_http_opts_t *opts, char *err, size_t errlen);

/* Applies the options (before sl_http_listen). Returns 0, or -1 when out of memory or, without
 * sl_http_opts_check first, the options are bad (a log line says which). */
int sl_http_configure(sl_http_server_t *s, const sl_http_opts_t *opts);

/* A service's server: sl_http_init, then sl_http_configure. Returns 0, or -1 as
 * sl_http_configure (s is initialized either way). */
int sl_http_setup(sl_http_server_t *s, sl_http_handler_cb handler, void *data, size_t max_body,
                  const sl_http_opts_t *opts);

/* Listens on host:port (SO_REUSEADDR). Returns 0, or -1 with errno set (and a log line). */
int sl_http_listen(sl_http_server_t *s, const char *host, int port);

/* Runs the loop until *stop is set (by the signal handlers of sl_http_trap_signals). A SIGHUP
 * meanwhile runs the callback of sl_http_on_sighup on the loop, between two turns. */
void sl_http_run(sl_http_server_t *s, volatile sig_atomic_t *stop);

/* A service's end: stops listening, asks every connection to end, then runs the loop until
 * busy(data) says nothing is in flight and no connection is left, or timeout_ms passed. busy may
 * be NULL. Returns 1 when everything ended in time. */
int sl_http_drain(sl_http_server_t *s, long long timeout_ms, size_t (*busy)(void *data), void *data);

/* Stops accepting; requests in flight go on. */
void sl_http_stop_listening(sl_http_server_t *s);

/* Asks every client connection to end: idle keep-alive connections close now, busy ones after
 * their answer (h2o sees end-of-input once it reads again). Call after sl_http_stop_listening. */
void sl_http_close_connections(sl_http_server_t *s);

/* An upgraded connection that ends itself (a WebSocket in its close handshake): from now on
 * sl_http_close_connections leaves it open; it still counts in sl_http_drain's wait. */
void sl_http_ends_itself(h2o_socket_t *sock);

/* Open client connections (HTTP and upgraded ones alike). */
size_t sl_http_connections(const sl_http_server_t *s);

/* Frees the context, the configuration and the loop. Every other user of the loop (timeouts,
 * sockets) must be gone first. */
void sl_http_dispose(sl_http_server_t *s);

/* Raises the soft limit of open files to the hard limit; returns the limit now in force. */
long sl_http_raise_nofile(void);

/* Installs SIGTERM/SIGINT handlers that set *flag, and ignores SIGPIPE. */
void sl_http_trap_signals(volatile sig_atomic_t *flag);

/* From now on SIGHUP makes sl_http_run call cb(data) on the loop thread (e.g. sl_jwt_on_sighup to
 * read keys again), instead of ending the process. One callback per process. */
void sl_http_on_sighup(sl_http_server_t *s, void (*cb)(void *data), void *data);

/* Seconds since the request's head began to arrive (for latency histograms). */
double sl_http_request_age(h2o_req_t *req);

/* Answers with a body copied into the request's pool. content_type NULL means application/json. */
void sl_http_send(h2o_req_t *req, int status, const char *content_type, const char *body, size_t len);
/* Answers with a file compiled into the binary, its ETag (a quoted
 * string) and Cache-Control: no-cache: a client keeps it and asks again each time, and a request
 * whose If-None-Match names the ETag (or "*") gets 304 without a body. Access-Control-Allow-Origin
 * is *, as on every answer (a module script from another origin needs it). */
void sl_http_send_static(h2o_req_t *req, const char *content_type, const char *etag, const char *body, size_t len);
/* Answers {"error":{…}}, with Retry-After when retry_after_s > 0. */
void sl_http_send_error(h2o_req_t *req, const sl_error_t *err, int retry_after_s);
/* Answers /metrics: the service's metrics in b (Prometheus text), followed by the HTTP server's
 * own (open connections, connections refused per client). b stays the caller's. */
void sl_http_send_metrics(h2o_req_t *req, sl_buf_t *b);
/* Shorthand: builds the error and sends it. */
void sl_http_fail(h2o_req_t *req, int status, const char *code, const char *field, const char *message,
                  int retry_after_s);

const char *sl_http_reason(int status);

/* Finds query parameter name; on success *out is its percent-decoded value (in the request's pool)
 * and 1 is returned; 0 when absent; -1 when present but badly encoded. */
int sl_http_query(h2o_req_t *req, const char *name, h2o_iovec_t *out);

/* Value of request header name (lower case), or NULL with *len untouched. */
const char *sl_http_header(h2o_req_t *req, const char *name, size_t *len);

/* The token of "Authorization: Bearer <token>" (the scheme in any case, spaces after it skipped),
 * or NULL with *len untouched. It points into the request. */
const char *sl_http_bearer(h2o_req_t *req, size_t *len);

/* 1 when a browser on the request's Origin may use this service: SLUICE_ALLOWED_ORIGINS is "*",
 * lists the Origin, or the request has no Origin (not a browser's cross-origin request); else 0.
 * A WebSocket handshake must be refused (403) on 0: browsers send no CORS preflight for it. */
int sl_http_origin_allowed(h2o_req_t *req);

/* Answers a CORS preflight (OPTIONS): 204 allowing methods and the request headers sluice reads
 * (Authorization, Content-Type, Idempotency-Key, Last-Event-ID, Accept), or 403
 * origin_not_allowed when the Origin may not use this service. Returns the status it answered. */
int sl_http_preflight(h2o_req_t *req, const char *methods);

int sl_http_method_is(h2o_req_t *req, const char *method);

/* 1 if Content-Type is application/json (parameters such as charset allowed). */
int sl_http_content_is_json(h2o_req_t *req);
/* 1 if Content-Type is type (lower case; parameters allowed), e.g. "application/x-ndjson". */
int sl_http_content_type_is(h2o_req_t *req, const char *type);

/* 1 if the request's normalized path is exactly path. */
int sl_http_path_is(h2o_req_t *req, const char *path);

/* Answers 405 method_not_allowed (JSON) with an Allow header listing allow. */
void sl_http_method_not_allowed(h2o_req_t *req, const char *allow);

/* The request's client as the text of its per-client key (sl_http_addr_key): "192.0.2.1",
 * "2001:db8:1:2::/64"; in buf (at least 64 bytes); "" when unknown. For per-client accounting
 * keyed by text (the api's rate limit). */
const char *sl_http_client_key(h2o_req_t *req, char *buf, size_t len);

/* An address as the key of per-client accounting, the one every per-client limit uses (the
 * connections per client here, the history caps in sl_stream): an IPv4 address is its 4 bytes;
 * an IPv6 address is its /64 prefix, 8 bytes (one host typically owns a /64 and can take any
 * address in it); an IPv4-mapped IPv6 address (::ffff:a.b.c.d) is its IPv4 address's 4 bytes.
 * The key is written to addr, whose other bytes are zeroed. Returns its length (4 or 8), 0 for
 * another family (no key: not counted per client). Pure; any thread. */
socklen_t sl_http_addr_key(const struct sockaddr_storage *ss, unsigned char addr[16]);
/* A key as text for logs ("192.0.2.1", "2001:db8:1:2::/64") in buf (INET6_ADDRSTRLEN + 4 bytes
 * suffice); "" for a length that is not a key's. Returns buf. */
const char *sl_http_addr_key_text(const unsigned char addr[16], socklen_t len, char *buf, size_t size);
/* 1 when the client connects from a loopback address (127.0.0.0/8, ::1). */
int sl_http_peer_is_loopback(h2o_req_t *req);

#endif
