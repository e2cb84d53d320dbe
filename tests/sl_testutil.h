/*
 * Test helpers for integration tests: a private "stack" (its own database, queue names and
 * ports) on the real RabbitMQ and PostgreSQL that test.sh started, service processes spawned
 * from SLUICE_BIN_DIR, and HTTP through libcurl.
 */
#ifndef SL_TESTUTIL_H
#define SL_TESTUTIL_H

#include <libpq-fe.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct tu_stack {
    char name[64];
    char db_url[512];
    char queue[128], live[128], presence[128];
    int api_port, persister_port;
    long long max_length;
    pid_t api, persister;
    int sse_port; /* of the stack's first sse instance; more with tu_start_at */
    pid_t sse;
    char base[64]; /* "http://127.0.0.1:PORT" of the api */
} tu_stack_t;

/* Fresh database sluice_t_<name>, unique queue/exchange names, free ports. Fails the test (ck)
 * when the servers are not reachable. */
void tu_stack_init(tu_stack_t *s, const char *name, long long max_length);
/* Stops the services with SIGTERM and asserts each exited 0. */
void tu_stack_cleanup(tu_stack_t *s);

/* Spawn a service with the stack's environment plus extra "NAME=value" entries (NULL-terminated,
 * may be NULL), wait until its /healthz answers. service is "api", "persister" or "sse" (on the
 * stack's api_port, persister_port, sse_port); the stack remembers the pid and
 * tu_stack_cleanup stops it. A service dies with the test process that started it
 * (PR_SET_PDEATHSIG), so a failed test leaves nothing running. */
pid_t tu_start(tu_stack_t *s, const char *service, const char *const *extra_env);
/* The same on *port (its SLUICE_<SERVICE>_PORT; 0: a free one), e.g. a second sse instance; logs
 * to <name>-<service>-<port>.log. A service that exits at once (its port was taken meanwhile) is
 * started again on another port, up to 3 times: *port says where it listens. The caller owns the
 * pid (stop it with tu_stop); tu_start is this on the stack's port, and remembers the pid. */
pid_t tu_start_at(tu_stack_t *s, const char *service, int *port, const char *const *extra_env);
/* After /healthz, tu_start_at waits up to this long (default 10 s; 0: not at all) for the api's,
 * sse's or ingest's /readyz to say "amqp":"up": they connect to RabbitMQ in the background, and
 * most tests post at once. Not reaching it is not a failure. */
extern int tu_wait_amqp_ms;
/* Waits (20 s at most, else the test fails) until the sse on port answers /readyz 200: connected
 * to the database and the live feed, its hub's position known. */
void tu_wait_sse_ready(int port);
/* The usual stack for the api's tests: tu_stack_init (max_length 100000), then the persister and
 * the api (with api_env, may be NULL) on the stack's ports. */
void tu_stack_start_api(tu_stack_t *s, const char *name, const char *const *api_env);
/* The usual stack for sse's tests: tu_stack_start_api, then one sse (with sse_env, may be NULL) on
 * the stack's port, ready. */
void tu_stack_start(tu_stack_t *s, const char *name, const char *const *sse_env);
/* 1 when the log of the stack's service (started by tu_start) holds text, else 0. */
int tu_log_contains(const tu_stack_t *s, const char *service, const char *text);
/* Runs service (api, sse, ...) from SLUICE_BIN_DIR with env, a space-separated list of "NAME=value"
 * added to the environment, on port 1, for 10 s at most, output dropped: for a configuration the
 * service must refuse at start. Returns its exit status (-1 when it did not exit). */
int tu_exit_status(const char *service, const char *env);
/* A port nobody listens on now. */
int tu_free_port(void);
/* Sends sig, waits up to timeout_ms (then SIGKILL); returns the exit status (or 128+signal). */
int tu_stop(pid_t *pid, int sig, int timeout_ms);

typedef struct tu_resp {
    long status;
    char *body;        /* malloc'd, NUL-terminated */
    char *head;        /* the response head (status line and headers), malloc'd; see tu_resp_header */
    size_t head_len;
    char retry_after[16];
    double seconds;
} tu_resp_t;

/* Client timeout of tu_http, 20 s unless a test changes it. */
extern long tu_http_timeout_ms;

/* One request. header may be NULL or "Name: value", or several such lines joined by '\n'.
 * Returns 0, or -1 when no HTTP answer came. */
int tu_http(const char *method, const char *url, const char *header, const char *ctype, const char *body, size_t len,
            tu_resp_t *r);
void tu_resp_free(tu_resp_t *r);
/* tu_http, asserting that an answer came and its status is want (the test fails otherwise). */
void tu_http_expect(const char *method, const char *url, const char *header, const char *ctype, const char *body,
                    size_t len, long want);
/* POSTs {"channel":channel,"author":"tester","text":text} (both as they are in JSON) to the stack's
 * api, asserting 202. */
void tu_post(const tu_stack_t *s, const char *channel, const char *text);
/* A response header's value (case-insensitive name) into out; returns out, or NULL if absent. */
const char *tu_resp_header(const tu_resp_t *r, const char *name, char *out, size_t size);

/* n POSTs of make_body(i) to url with up to parallel at once. status[i] gets the HTTP status
 * (0 for no answer) and, for 202, ids[i] the id. on_progress (may be NULL) runs after each
 * completion with the number done so far. */
void tu_post_many(const char *url, int n, int parallel, void (*make_body)(int i, char *buf, size_t size), long *status,
                  char (*ids)[37], void (*on_progress)(int done, void *arg), void *arg);

/* tu_post_many's on_progress that SIGKILLs the stack's persister after kill_at answers and
 * starts it again (with env, may be NULL) after restart_at; arg is a tu_kill_plan_t. */
typedef struct tu_kill_plan {
    tu_stack_t *s;
    int kill_at, restart_at;
    const char *const *env;
} tu_kill_plan_t;
void tu_kill_persister_midway(int done, void *arg);

/* Publishes body (one or more lines) as one message straight to the stack's persist queue, as a
 * publisher of the api's or ingest's would; atomic: with SL_AMQP_ATOMIC_HEADER. */
void tu_publish(const tu_stack_t *s, const void *body, size_t len, int atomic);
/* Publishes an update (with text) or a delete (text NULL) of message id, in channel, to the stack's
 * persist queue, as ingest does (type is an sl_message_type_t: SL_MESSAGE_UPDATE or _DELETE). */
void tu_publish_event(const tu_stack_t *s, int type, const char *id, const char *channel, const char *text);

PGconn *tu_db(const tu_stack_t *s);
long long tu_scalar(PGconn *c, const char *sql);
/* Polls until SELECT count(*) FROM messages reaches want (or timeout); returns the last count. */
long long tu_wait_rows(PGconn *c, long long want, int timeout_ms);

/* Runs scripts/servers.sh with args (e.g. "stop-rabbitmq"); returns its exit status. */
int tu_servers(const char *args);

/* Wait until url answers want_status or timeout; returns 1 if it did. */
int tu_wait_status(const char *url, long want_status, int timeout_ms);

/* A series' value in the /metrics of the service on port ("name" or "name{labels}"), -1 when absent
 * or when /metrics does not answer. */
double tu_metric(int port, const char *series);
/* Polls tu_metric every 50 ms until it equals want or timeout_ms passed; 1 if it did. */
int tu_wait_metric(int port, const char *series, double want, int timeout_ms);

/* String field of a JSON object text into out; 0 on success. */
int tu_json_str(const char *json, const char *field, char *out, size_t size);

void tu_sleep_ms(int ms);

#endif
