/*
 * Helpers shared by the ingest integration tests: the sluice-ingest process next to a tu_stack_t,
 * its control endpoint, database polling, and a consumer bound to the stack's live exchange.
 */
#ifndef CHECK_INGEST_UTIL_H
#define CHECK_INGEST_UTIL_H

#include <amqp.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <sys/types.h>

#include "fake_mastodon.h"
#include "sl_testutil.h"

typedef struct it_ingest {
    pid_t pid;
    int port;
    char base[64];     /* http://127.0.0.1:PORT */
    char log[700];
} it_ingest_t;

/* Starts sluice-ingest for stack s, reading mastodon_url (short timeouts for tests), plus extra
 * "NAME=value" entries (NULL-terminated, may be NULL); waits for /healthz. */
void it_start_ingest(it_ingest_t *g, tu_stack_t *s, const char *mastodon_url, const char *const *extra_env);
/* SIGTERM; returns the exit status. */
int it_stop_ingest(it_ingest_t *g);
/* A test's end: asserts that g exits 0 on SIGTERM, closes db, stops the stack (tu_stack_cleanup)
 * and then f. */
void it_finish(tu_stack_t *s, it_ingest_t *g, PGconn *db, fm_t *f);

/* GET /v1/ingest, parsed (the caller decrefs). */
json_t *it_state(it_ingest_t *g);
/* Waits until GET /v1/ingest has string field == value (dotted path "a.b" allowed; a number
 * picks an array element: "sources.1.mode"). */
int it_wait_field(it_ingest_t *g, const char *path, const char *value, int timeout_ms);
/* POST /v1/ingest with body. */
void it_command(it_ingest_t *g, const char *ctype, const char *body, tu_resp_t *r);

/* Polls SELECT returning one integer until it is >= want (or the timeout); returns the last value. */
long long it_wait_count(PGconn *c, const char *sql, long long want, int timeout_ms);

/* Our message id for a status made by fm_status_json (from its uri: the same on every instance). */
void it_message_id(const char *status_id, char out[37]);
/* The local key of a status id on an instance (the id of a delete nothing remembers). */
void it_local_id(const char *instance_url, const char *status_id, char out[37]);

/* A consumer of every routing key of the stack's live exchange (declared by the services). */
amqp_connection_state_t it_live_open(tu_stack_t *s);
/* The next live event (malloc'd; one line of a live message, see sl_amqp.h) within timeout_ms, or NULL. */
char *it_live_next(amqp_connection_state_t c, int timeout_ms);

#endif
