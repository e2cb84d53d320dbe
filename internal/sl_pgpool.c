/*
 * sl_pgpool: libpq's asynchronous API driven by an h2o evloop; see sl_pgpool.h.
 *
 * libpq's socket is watched through a dup()ed descriptor with H2O_SOCKET_FLAG_DONT_READ, so h2o
 * only reports readiness and libpq does all the reading; closing the h2o socket closes the dup.
 */
#include "sl_pgpool.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sl_log.h"

#define MAX_ATTEMPTS 3

struct sl_pgquery {
    h2o_linklist_t link;
    const char *sql;
    int nparams;
    const char **params; /* point into the same allocation, after the struct */
    sl_pg_cb cb;
    void *data;
    int attempts;
};

struct pgconn {
    sl_pgpool_t *pool;
    PGconn *conn;
    h2o_socket_t *sock;
    sl_pgquery_t *job;
    PGresult *res;
};

struct sl_pgpool {
    h2o_loop_t *loop;
    char *url;
    struct pgconn *conns;
    size_t nconns, queued, running, max_queue;
    h2o_linklist_t queue;
    sl_db_kind_t kind;
    h2o_timeout_t tick_timeout;
    h2o_timeout_entry_t tick;
    int closing;
    unsigned connect_failures; /* in a row, to thin out repeated log lines */
};

static void dispatch(sl_pgpool_t *p);
static void on_readable(h2o_socket_t *sock, const char *err);

static void finish(sl_pgquery_t *q, const PGresult *res, const char *err)
{
    if (q->cb != NULL)
        q->cb(q->data, res, err);
    free(q);
}

static void drop_conn(struct pgconn *c, const char *why)
{
    char quoted[300];
    if (c->conn == NULL)
        return;
    if (c->pool->closing)
        SL_DEBUG("event=db_connection_closed");
    else
        SL_WARN("event=db_connection_lost reason=%s", sl_log_quote(quoted, sizeof(quoted), why));
    if (c->sock != NULL)
        h2o_socket_close(c->sock);
    c->sock = NULL;
    PQfinish(c->conn);
    c->conn = NULL;
    PQclear(c->res);
    c->res = NULL;
    if (c->job != NULL) {
        sl_pgquery_t *q = c->job;
        c->job = NULL;
        c->pool->running--;
        /* The statement may or may not have run: report, do not resend. */
        finish(q, NULL, "database connection lost");
    }
}

static void on_writable(h2o_socket_t *sock, const char *err)
{
    struct pgconn *c = sock->data;
    if (err != NULL) {
        drop_conn(c, err);
        return;
    }
    int r = PQflush(c->conn);
    if (r < 0)
        drop_conn(c, PQerrorMessage(c->conn));
    else if (r > 0)
        h2o_socket_notify_write(c->sock, on_writable);
}

static void send_job(struct pgconn *c, sl_pgquery_t *q)
{
    c->job = q;
    c->pool->running++;
    q->attempts++;
    if (!PQsendQueryParams(c->conn, q->sql, q->nparams, NULL, q->params, NULL, NULL, 0)) {
        drop_conn(c, PQerrorMessage(c->conn));
        return;
    }
    int r = PQflush(c->conn);
    if (r < 0)
        drop_conn(c, PQerrorMessage(c->conn));
    else if (r > 0)
        h2o_socket_notify_write(c->sock, on_writable);
}

static void complete(struct pgconn *c)
{
    sl_pgquery_t *q = c->job;
    PGresult *res = c->res;
    c->job = NULL;
    c->res = NULL;
    c->pool->running--;
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        finish(q, res, NULL);
    } else if (sl_db_is_retryable(sl_db_sqlstate(res)) && q->attempts < MAX_ATTEMPTS && q->cb != NULL) {
        h2o_linklist_insert(c->pool->queue.next, &q->link); /* to the front */
        c->pool->queued++;
    } else {
        char err[512];
        snprintf(err, sizeof(err), "%s", res != NULL ? PQresultErrorMessage(res) : "no result");
        err[strcspn(err, "\n")] = '\0';
        finish(q, NULL, err);
    }
    PQclear(res);
}

static void on_readable(h2o_socket_t *sock, const char *err)
{
    struct pgconn *c = sock->data;
    if (err != NULL) {
        drop_conn(c, err);
        return;
    }
    if (!PQconsumeInput(c->conn) || PQstatus(c->conn) != CONNECTION_OK) {
        drop_conn(c, PQerrorMessage(c->conn));
        return;
    }
    while (c->job != NULL && !PQisBusy(c->conn)) {
        PGresult *res = PQgetResult(c->conn);
        if (res == NULL) {
            complete(c);
            break;
        }
        if (c->res == NULL)
            c->res = res;
        else
            PQclear(res);
    }
    dispatch(c->pool);
}

static void try_connect(struct pgconn *c)
{
    char err[512], quoted[600];
    sl_db_t db;
    if (sl_db_connect(&db, c->pool->url, err, sizeof(err)) != SL_DB_OK) {
        /* log the first failure of a streak, then one in 20 */
        if (c->pool->connect_failures++ % 20 == 0)
            SL_WARN("event=db_connect_failed failures=%u error=%s", c->pool->connect_failures,
                    sl_log_quote(quoted, sizeof(quoted), err));
        return;
    }
    c->pool->connect_failures = 0;
    int fd = dup(PQsocket(db.conn));
    if (fd < 0 || PQsetnonblocking(db.conn, 1) != 0) {
        SL_WARN("event=db_connect_failed error=\"dup or nonblocking: %s\"", strerror(errno));
        if (fd >= 0)
            close(fd);
        sl_db_close(&db);
        return;
    }
    c->conn = db.conn;
    c->pool->kind = db.kind;
    c->sock = h2o_evloop_socket_create(c->pool->loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    c->sock->data = c;
    h2o_socket_read_start(c->sock, on_readable);
    SL_INFO("event=db_connected server=%s", sl_db_kind_name(db.kind));
}

static void dispatch(sl_pgpool_t *p)
{
    for (size_t i = 0; i < p->nconns && p->queued > 0; i++) {
        struct pgconn *c = &p->conns[i];
        if (c->conn == NULL || c->job != NULL)
            continue;
        sl_pgquery_t *q = H2O_STRUCT_FROM_MEMBER(sl_pgquery_t, link, p->queue.next);
        h2o_linklist_unlink(&q->link);
        p->queued--;
        if (q->cb == NULL) { /* cancelled while waiting */
            free(q);
            i--;
            continue;
        }
        send_job(c, q);
    }
}

static void on_tick(h2o_timeout_entry_t *entry)
{
    sl_pgpool_t *p = H2O_STRUCT_FROM_MEMBER(sl_pgpool_t, tick, entry);
    for (size_t i = 0; i < p->nconns; i++) {
        if (p->conns[i].conn == NULL)
            try_connect(&p->conns[i]);
    }
    dispatch(p);
    h2o_timeout_link(p->loop, &p->tick_timeout, &p->tick);
}

sl_pgpool_t *sl_pgpool_create(h2o_loop_t *loop, const char *url, size_t nconns, size_t max_queue, int reconnect_ms)
{
    sl_pgpool_t *p = calloc(1, sizeof(*p));
    if (p == NULL || (p->conns = calloc(nconns, sizeof(*p->conns))) == NULL || (p->url = strdup(url)) == NULL) {
        if (p != NULL)
            free(p->conns);
        free(p);
        return NULL;
    }
    p->loop = loop;
    p->nconns = nconns;
    p->max_queue = max_queue;
    h2o_linklist_init_anchor(&p->queue);
    for (size_t i = 0; i < nconns; i++) {
        p->conns[i].pool = p;
        try_connect(&p->conns[i]);
    }
    h2o_timeout_init(loop, &p->tick_timeout, (uint64_t)reconnect_ms);
    p->tick.cb = on_tick;
    h2o_timeout_link(loop, &p->tick_timeout, &p->tick);
    return p;
}

sl_pgquery_t *sl_pgpool_query(sl_pgpool_t *p, const char *sql, int nparams, const char *const *params, sl_pg_cb cb,
                              void *data)
{
    size_t bytes = sizeof(sl_pgquery_t) + (size_t)nparams * sizeof(char *);
    if (!sl_pgpool_ready(p) || p->queued >= p->max_queue)
        return NULL;
    for (int i = 0; i < nparams; i++)
        bytes += params[i] != NULL ? strlen(params[i]) + 1 : 0;
    sl_pgquery_t *q = calloc(1, bytes);
    if (q == NULL)
        return NULL;
    q->sql = sql;
    q->nparams = nparams;
    q->params = (const char **)(q + 1);
    char *text = (char *)(q->params + nparams);
    for (int i = 0; i < nparams; i++) {
        if (params[i] == NULL)
            continue;
        size_t n = strlen(params[i]) + 1;
        memcpy(text, params[i], n);
        q->params[i] = text;
        text += n;
    }
    q->cb = cb;
    q->data = data;
    h2o_linklist_insert(&p->queue, &q->link);
    p->queued++;
    dispatch(p);
    return q;
}

void sl_pgpool_cancel(sl_pgquery_t *q)
{
    q->cb = NULL;
    q->data = NULL;
}

int sl_pgpool_ready(const sl_pgpool_t *p)
{
    for (size_t i = 0; i < p->nconns; i++) {
        if (p->conns[i].conn != NULL)
            return 1;
    }
    return 0;
}

size_t sl_pgpool_pending(const sl_pgpool_t *p)
{
    return p->queued + p->running;
}

sl_db_kind_t sl_pgpool_kind(const sl_pgpool_t *p)
{
    return p->kind;
}

void sl_pgpool_destroy(sl_pgpool_t *p)
{
    if (p == NULL)
        return;
    h2o_timeout_unlink(&p->tick);
    p->closing = 1;
    for (size_t i = 0; i < p->nconns; i++)
        drop_conn(&p->conns[i], "shutting down");
    while (!h2o_linklist_is_empty(&p->queue)) {
        sl_pgquery_t *q = H2O_STRUCT_FROM_MEMBER(sl_pgquery_t, link, p->queue.next);
        h2o_linklist_unlink(&q->link);
        finish(q, NULL, "shutting down");
    }
    h2o_timeout_dispose(p->loop, &p->tick_timeout);
    free(p->conns);
    free(p->url);
    free(p);
}
