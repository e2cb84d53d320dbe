/*
 * sl_api: the api service's HTTP handlers: POST /v1/messages (validate, publish with confirms,
 * answer when the broker confirmed), PATCH and DELETE /v1/messages/{id} and POST
 * /v1/messages/batch (the same way, as queue items of their own), history reads from the
 * database (private channels only to readers whose token covers them, sl_chanpolicy.h), health,
 * readiness and metrics. Everything runs on one h2o event loop; nothing blocks on the broker or
 * the database per request.
 */
#ifndef SL_API_H
#define SL_API_H

#define H2O_USE_LIBUV 0
#include <h2o.h>

typedef struct sl_api_conf {
    const char *amqp_url;
    const char *db_url;
    long long queue_max_length;   /* x-max-length of the persist queue */
    long long queue_max_bytes;    /* its x-max-length-bytes (0: none) */
    long long max_unconfirmed;    /* publishes awaiting confirmation before 503 */
    long long db_conns;           /* connections in the read pool */
    long long db_connect_timeout_ms; /* per database host and attempt (0: the pool's default) */
    long long db_query_timeout_ms;   /* from query to answer (0: the pool's default) */
    long long retry_after_s;      /* Retry-After on 429/503 */
    long long history_max;        /* largest page of GET /v1/messages */
    struct sl_auth *auth;         /* writer tokens (owned by the api from sl_api_create on); NULL: open */
    struct sl_chanpolicy *policy; /* SLUICE_PRIVATE_CHANNELS: private channels' history needs a reader's
                                     JWT covering them, as on sse (owned by the api from sl_api_create
                                     on); NULL: every channel public */
    const char *reader_audience;  /* SLUICE_JWT_READER_AUDIENCE: the "aud" readers' JWTs need here (NULL, "":
                                     SLUICE_JWT_AUDIENCE, the writers') */
    const char *admin_token;      /* SLUICE_ADMIN_TOKEN: may edit and delete any message (NULL, "": no admin) */
    double client_rate;           /* requests/s per client (token or address); 0: no limit */
    double client_burst;          /* bucket size of that limit */
} sl_api_conf_t;

typedef struct sl_api sl_api_t;

/* Connects (in the background) to the broker and the database. NULL on no memory. The conf's
 * strings must outlive the api. */
sl_api_t *sl_api_create(h2o_loop_t *loop, const sl_api_conf_t *conf);

/* The sl_http handler: data is the sl_api_t. */
int sl_api_handle(void *data, h2o_req_t *req);

/* Requests waiting for a confirm or a query. */
size_t sl_api_inflight(const sl_api_t *api);

void sl_api_destroy(sl_api_t *api);

/* An integer query parameter of GET /v1/messages (limit=, before=): exactly 1 to 19 ASCII digits
 * (after percent-decoding) whose value is from min to max, parsed without overflow. Returns 0 with
 * *present = 1 and *out set, or 0 with *present = 0 (*out untouched) when absent; -1 when present
 * but not such a number (a 400). Pure: any thread. */
int sl_api_int_param(h2o_req_t *req, const char *name, long long min, long long max, long long *out, int *present);

#endif
