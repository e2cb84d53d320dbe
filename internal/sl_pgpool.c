/*
 * sl_pgpool: libpq's asynchronous API driven by an h2o evloop; see sl_pgpool.h.
 *
 * libpq's socket is watched through a dup()ed descriptor with H2O_SOCKET_FLAG_DONT_READ, so h2o
 * only reports readiness and libpq does all the reading; closing the h2o socket closes the dup.
 * While connecting, libpq may replace its socket (the next address of a host, a retry without
 * SSL) and may even reuse the descriptor number, so the watched socket is compared with libpq's by
 * inode after every PQconnectPoll and replaced when they differ.
 *
 * Callbacks never run inside sl_pgpool_query or sl_pgpool_cancel: a query that fails there (its
 * connection broke while sending) waits in `failed` for a zero-delay timer to report it.
 */
#include "sl_pgpool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sl_log.h"

#define MAX_ATTEMPTS 3

static const char ERR_TIMEOUT[] = "database query timed out";
static const char ERR_LOST[] = "database connection lost";
static const char ERR_UNAVAILABLE[] = "database unavailable";
static const char ERR_SHUTDOWN[] = "shutting down";

enum qstate {
    Q_QUEUED,  /* in pool->queue */
    Q_RUNNING, /* a connection's job (cb NULL once it timed out or was cancelled) */
    Q_FAILED,  /* in pool->failed, its callback due on the next kick */
    Q_CALLING, /* its callback is running */
};

struct sl_pgquery {
    h2o_linklist_t link;          /* in pool->queue or pool->failed */
    h2o_timeout_entry_t deadline; /* linked until the callback ran or the query was cancelled */
    sl_pgpool_t *pool;
    enum qstate state;
    const char *err; /* Q_FAILED */
    const char *sql;
    int nparams;
    const char **params; /* point into the same allocation, after the struct */
    sl_pg_cb cb;
    void *data;
    int attempts;
};

enum cstate { C_DOWN, C_CONNECTING, C_SETUP, C_UP };

struct pgconn {
    sl_pgpool_t *pool;
    enum cstate state;
    PGconn *conn;
    h2o_socket_t *sock;     /* watches a dup of libpq's socket */
    int sock_fd;            /* libpq's descriptor number and inode that sock watches */
    ino_t sock_ino;
    dev_t sock_dev;
    int want_write;         /* connecting: PQconnectPoll asked for write readiness, not read */
    int write_armed;        /* h2o_socket_notify_write is pending on sock */
    int retry_now;          /* down: reopen on the next kick rather than the next tick */
    size_t host, hosts_left; /* connecting: index into pool->hosts, hosts left in this round */
    h2o_timeout_entry_t connect_timer; /* the attempt on one host */
    h2o_timeout_entry_t busy_timer;    /* the running job: query_timeout_ms from its send */
    sl_pgquery_t *job;
    PGresult *res;
    sl_db_kind_t kind;
    char setup_err[256];
};

struct host {
    const char *host, *hostaddr, *port; /* NULL: not given */
};

struct sl_pgpool {
    h2o_loop_t *loop;
    char *url;
    /* the URL's options other than host/hostaddr/port, with room for those three and NULL */
    PQconninfoOption *opts;
    const char **keys, **vals;
    size_t nbase;
    int expand;       /* 1 when the URL could not be parsed here: libpq gets it whole */
    char *lists[3];   /* copies of host, hostaddr, port, split in place */
    struct host *hosts;
    size_t nhosts, good_host;
    struct pgconn *conns;
    size_t nconns, queued, running, max_queue;
    h2o_linklist_t queue, failed;
    sl_db_kind_t kind;
    int connect_timeout_ms, query_timeout_ms;
    h2o_timeout_t tick_to, kick_to, connect_to, query_to;
    h2o_timeout_entry_t tick, kick;
    int closing;
    int failing;               /* no connection up and the last attempt failed: refuse queries */
    unsigned connect_failures; /* in a row, to thin out repeated log lines */
};

static void dispatch(sl_pgpool_t *p);
static void on_readable(h2o_socket_t *sock, const char *err);
static void on_writable(h2o_socket_t *sock, const char *err);
static void connect_host(struct pgconn *c);

static void unlink_timer(h2o_timeout_entry_t *e)
{
    if (h2o_timeout_is_linked(e))
        h2o_timeout_unlink(e);
}

static void link_timer(sl_pgpool_t *p, h2o_timeout_t *t, h2o_timeout_entry_t *e)
{
    if (!h2o_timeout_is_linked(e))
        h2o_timeout_link(p->loop, t, e);
}

/* ---- queries --------------------------------------------------------------------------------- */

static void finish(sl_pgquery_t *q, const PGresult *res, const char *err)
{
    q->state = Q_CALLING;
    unlink_timer(&q->deadline);
    if (q->cb != NULL)
        q->cb(q->data, res, err);
    free(q);
}

/* Reports err to q's callback from the next kick (never from the caller's stack). */
static void fail_later(sl_pgquery_t *q, const char *err)
{
    sl_pgpool_t *p = q->pool;
    unlink_timer(&q->deadline);
    q->state = Q_FAILED;
    q->err = err;
    h2o_linklist_insert(&p->failed, &q->link);
    link_timer(p, &p->kick_to, &p->kick);
}

static void fail_queued(sl_pgpool_t *p, const char *err)
{
    while (!h2o_linklist_is_empty(&p->queue)) {
        sl_pgquery_t *q = H2O_STRUCT_FROM_MEMBER(sl_pgquery_t, link, p->queue.next);
        h2o_linklist_unlink(&q->link);
        p->queued--;
        fail_later(q, err);
    }
}

static void on_deadline(h2o_timeout_entry_t *entry)
{
    sl_pgquery_t *q = H2O_STRUCT_FROM_MEMBER(sl_pgquery_t, deadline, entry);
    if (q->state == Q_QUEUED) {
        h2o_linklist_unlink(&q->link);
        q->pool->queued--;
        finish(q, NULL, ERR_TIMEOUT);
    } else if (q->state == Q_RUNNING) {
        /* The connection keeps the statement until the server ends it (statement_timeout) or
         * busy_timer gives up on the server; the caller hears now. */
        sl_pg_cb cb = q->cb;
        q->cb = NULL;
        if (cb != NULL)
            cb(q->data, NULL, ERR_TIMEOUT);
    }
}

/* ---- connections ----------------------------------------------------------------------------- */

static void close_socket(struct pgconn *c)
{
    if (c->sock != NULL)
        h2o_socket_close(c->sock);
    c->sock = NULL;
    c->write_armed = 0;
}

/* Makes c->sock watch libpq's current socket. 0, or -1 with errno. */
static int track_socket(struct pgconn *c)
{
    struct stat st;
    int fd = PQsocket(c->conn);
    if (fd < 0) {
        errno = EBADF;
        return -1;
    }
    if (fstat(fd, &st) != 0)
        return -1;
    if (c->sock != NULL && c->sock_fd == fd && c->sock_ino == st.st_ino && c->sock_dev == st.st_dev)
        return 0;
    close_socket(c);
    int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0)
        return -1;
    c->sock = h2o_evloop_socket_create(c->pool->loop, dup, H2O_SOCKET_FLAG_DONT_READ);
    c->sock->data = c;
    c->sock_fd = fd;
    c->sock_ino = st.st_ino;
    c->sock_dev = st.st_dev;
    return 0;
}

static void arm_write(struct pgconn *c)
{
    if (!c->write_armed) {
        c->write_armed = 1;
        h2o_socket_notify_write(c->sock, on_writable);
    }
}

/* Frees libpq's connection, the socket and the timers; leaves the job to the caller. */
static void close_conn(struct pgconn *c)
{
    close_socket(c);
    if (c->conn != NULL)
        PQfinish(c->conn);
    c->conn = NULL;
    PQclear(c->res);
    c->res = NULL;
    unlink_timer(&c->connect_timer);
    unlink_timer(&c->busy_timer);
    c->state = C_DOWN;
}

static int is_ready(const sl_pgpool_t *p)
{
    for (size_t i = 0; i < p->nconns; i++) {
        if (p->conns[i].state == C_UP)
            return 1;
    }
    return 0;
}

static const char *host_label(const sl_pgpool_t *p, size_t i, char *buf, size_t size)
{
    const struct host *h = &p->hosts[i];
    const char *name = h->hostaddr != NULL && *h->hostaddr ? h->hostaddr : h->host != NULL && *h->host ? h->host : "default";
    snprintf(buf, size, "%s:%s", name, h->port != NULL && *h->port ? h->port : "default");
    return buf;
}

/* A connection that was up broke (or its statement got no answer in time): report its job, open
 * it again on the next kick. */
static void drop_conn(struct pgconn *c, const char *why, const char *job_err)
{
    char quoted[300];
    sl_pgpool_t *p = c->pool;
    if (p->closing)
        SL_DEBUG("event=db_connection_closed");
    else
        SL_WARN("event=db_connection_lost reason=%s", sl_log_quote(quoted, sizeof(quoted), why));
    close_conn(c);
    if (c->job != NULL) {
        sl_pgquery_t *q = c->job;
        c->job = NULL;
        p->running--;
        /* The statement may or may not have run: report, do not resend. */
        if (q->cb != NULL)
            fail_later(q, job_err);
        else
            free(q);
    }
    if (!p->closing) {
        c->retry_now = 1;
        link_timer(p, &p->kick_to, &p->kick);
    }
}

/* The attempt on the current host failed: try the next host of the round, or wait for the tick. */
static void host_failed(struct pgconn *c, const char *why)
{
    char copy[512], quoted[600], label[300];
    sl_pgpool_t *p = c->pool;
    snprintf(copy, sizeof(copy), "%s", why); /* why may be PQerrorMessage of the connection closed here */
    copy[strcspn(copy, "\n")] = '\0';
    why = copy;
    close_conn(c);
    if (p->closing)
        return;
    /* log the first failure of a streak, then one in 20 */
    if (p->connect_failures++ % 20 == 0)
        SL_WARN("event=db_connect_failed failures=%u host=%s error=%s", p->connect_failures,
                host_label(p, c->host, label, sizeof(label)), sl_log_quote(quoted, sizeof(quoted), why));
    if (c->hosts_left > 1) {
        c->hosts_left--;
        c->host = (c->host + 1) % p->nhosts;
        connect_host(c);
        return;
    }
    c->hosts_left = 0;
    if (!is_ready(p) && !p->failing) {
        /* The database is away: queries made meanwhile fail now, later ones at once, until a
         * connection is up again. */
        p->failing = 1;
        fail_queued(p, ERR_UNAVAILABLE);
    }
}

static int flush(struct pgconn *c)
{
    int r = PQflush(c->conn);
    if (r > 0)
        arm_write(c);
    return r < 0 ? -1 : 0;
}

static void on_notice(void *arg, const char *message)
{
    char q[300];
    (void)arg;
    SL_DEBUG("event=db_notice message=%s", sl_log_quote(q, sizeof(q), message));
}

/* Connected: set the session up with one round trip, still under the connect deadline. */
static void start_setup(struct pgconn *c)
{
    char sql[160];
    c->state = C_SETUP;
    c->setup_err[0] = '\0';
    c->kind = SL_DB_POSTGRES;
    PQsetNoticeProcessor(c->conn, on_notice, NULL);
    int statement_ms = c->pool->query_timeout_ms - c->pool->query_timeout_ms / 10;
    snprintf(sql, sizeof(sql), "SET TIME ZONE 'UTC'; SET statement_timeout = '%dms'; SELECT version()",
             statement_ms > 0 ? statement_ms : 1);
    if (PQsetnonblocking(c->conn, 1) != 0 || !PQsendQuery(c->conn, sql)) {
        host_failed(c, PQerrorMessage(c->conn));
        return;
    }
    if (track_socket(c) != 0) {
        host_failed(c, strerror(errno));
        return;
    }
    h2o_socket_read_start(c->sock, on_readable);
    if (flush(c) != 0)
        host_failed(c, PQerrorMessage(c->conn));
}

static void setup_done(struct pgconn *c)
{
    char label[300];
    sl_pgpool_t *p = c->pool;
    if (c->setup_err[0] != '\0') {
        host_failed(c, c->setup_err);
        return;
    }
    unlink_timer(&c->connect_timer);
    c->state = C_UP;
    c->hosts_left = 0;
    p->good_host = c->host;
    p->kind = c->kind;
    p->failing = 0;
    p->connect_failures = 0;
    SL_INFO("event=db_connected server=%s host=%s", sl_db_kind_name(c->kind),
            host_label(p, c->host, label, sizeof(label)));
    dispatch(p);
}

static void read_setup(struct pgconn *c)
{
    if (!PQconsumeInput(c->conn)) {
        host_failed(c, PQerrorMessage(c->conn));
        return;
    }
    while (!PQisBusy(c->conn)) {
        PGresult *res = PQgetResult(c->conn);
        if (res == NULL) {
            setup_done(c);
            return;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_TUPLES_OK && PQntuples(res) == 1) {
            c->kind = sl_db_kind_of(PQgetvalue(res, 0, 0));
        } else if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && c->setup_err[0] == '\0') {
            snprintf(c->setup_err, sizeof(c->setup_err), "session setup: %s", PQresultErrorMessage(res));
            c->setup_err[strcspn(c->setup_err, "\n")] = '\0';
        }
        PQclear(res);
    }
}

/* One step of PQconnectPoll, when the socket is ready for what the previous step asked. */
static void step_connect(struct pgconn *c)
{
    switch (PQconnectPoll(c->conn)) {
    case PGRES_POLLING_OK:
        start_setup(c);
        return;
    case PGRES_POLLING_FAILED:
        host_failed(c, PQerrorMessage(c->conn));
        return;
    case PGRES_POLLING_READING:
        c->want_write = 0;
        break;
    default:
        c->want_write = 1;
        break;
    }
    if (track_socket(c) != 0) {
        host_failed(c, strerror(errno));
        return;
    }
    if (c->want_write) {
        h2o_socket_read_stop(c->sock);
        arm_write(c);
    } else {
        h2o_socket_read_start(c->sock, on_readable);
    }
}

static void connect_host(struct pgconn *c)
{
    sl_pgpool_t *p = c->pool;
    const struct host *h = &p->hosts[c->host];
    size_t n = p->nbase;
    if (h->host != NULL) {
        p->keys[n] = "host";
        p->vals[n++] = h->host;
    }
    if (h->hostaddr != NULL) {
        p->keys[n] = "hostaddr";
        p->vals[n++] = h->hostaddr;
    }
    if (h->port != NULL) {
        p->keys[n] = "port";
        p->vals[n++] = h->port;
    }
    p->keys[n] = NULL;
    p->vals[n] = NULL;
    c->state = C_CONNECTING;
    /* Starts the TCP connect without waiting (a host name is resolved here, blocking). */
    c->conn = PQconnectStartParams(p->keys, p->vals, p->expand);
    if (c->conn == NULL) {
        host_failed(c, "out of memory");
        return;
    }
    if (PQstatus(c->conn) == CONNECTION_BAD) {
        host_failed(c, PQerrorMessage(c->conn));
        return;
    }
    h2o_timeout_link(p->loop, &p->connect_to, &c->connect_timer);
    /* Before the first PQconnectPoll, wait as if it had asked for write readiness (libpq docs). */
    c->want_write = 1;
    if (track_socket(c) != 0) {
        host_failed(c, strerror(errno));
        return;
    }
    arm_write(c);
}

/* A round: every host once, from the one that answered last. */
static void start_connect(struct pgconn *c)
{
    c->retry_now = 0;
    c->hosts_left = c->pool->nhosts;
    c->host = c->pool->good_host;
    connect_host(c);
}

static void on_connect_timeout(h2o_timeout_entry_t *entry)
{
    struct pgconn *c = H2O_STRUCT_FROM_MEMBER(struct pgconn, connect_timer, entry);
    char why[96];
    snprintf(why, sizeof(why), "no connection within %d ms", c->pool->connect_timeout_ms);
    host_failed(c, why);
}

static void on_busy_timeout(h2o_timeout_entry_t *entry)
{
    struct pgconn *c = H2O_STRUCT_FROM_MEMBER(struct pgconn, busy_timer, entry);
    char why[96];
    if (c->state != C_UP || c->job == NULL)
        return;
    snprintf(why, sizeof(why), "no answer to a statement within %d ms", c->pool->query_timeout_ms);
    drop_conn(c, why, ERR_TIMEOUT);
}

/* A socket error: during connect or setup, the next host; once up, reconnect. */
static void broken(struct pgconn *c, const char *why)
{
    if (c->state == C_UP)
        drop_conn(c, why, ERR_LOST);
    else if (c->state != C_DOWN)
        host_failed(c, why);
}

/* ---- statements ------------------------------------------------------------------------------ */

static void complete(struct pgconn *c)
{
    sl_pgpool_t *p = c->pool;
    sl_pgquery_t *q = c->job;
    PGresult *res = c->res;
    c->job = NULL;
    c->res = NULL;
    p->running--;
    unlink_timer(&c->busy_timer);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        finish(q, res, NULL);
    } else if (sl_db_is_retryable(sl_db_sqlstate(res)) && q->attempts < MAX_ATTEMPTS && q->cb != NULL) {
        q->state = Q_QUEUED;
        h2o_linklist_insert(p->queue.next, &q->link); /* to the front */
        p->queued++;
    } else {
        char err[512];
        snprintf(err, sizeof(err), "%s", res != NULL ? PQresultErrorMessage(res) : "no result");
        err[strcspn(err, "\n")] = '\0';
        finish(q, NULL, err);
    }
    PQclear(res);
}

static void read_results(struct pgconn *c)
{
    if (!PQconsumeInput(c->conn) || PQstatus(c->conn) != CONNECTION_OK) {
        drop_conn(c, PQerrorMessage(c->conn), ERR_LOST);
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

static void on_readable(h2o_socket_t *sock, const char *err)
{
    struct pgconn *c = sock->data;
    if (err != NULL) {
        broken(c, err);
        return;
    }
    switch (c->state) {
    case C_CONNECTING:
        if (!c->want_write)
            step_connect(c);
        break;
    case C_SETUP:
        read_setup(c);
        break;
    case C_UP:
        read_results(c);
        break;
    default:
        break;
    }
}

static void on_writable(h2o_socket_t *sock, const char *err)
{
    struct pgconn *c = sock->data;
    c->write_armed = 0;
    if (err != NULL) {
        broken(c, err);
        return;
    }
    switch (c->state) {
    case C_CONNECTING:
        if (c->want_write)
            step_connect(c);
        break;
    case C_SETUP:
    case C_UP:
        if (flush(c) != 0)
            broken(c, PQerrorMessage(c->conn));
        break;
    default:
        break;
    }
}

static void send_job(struct pgconn *c, sl_pgquery_t *q)
{
    sl_pgpool_t *p = c->pool;
    c->job = q;
    q->state = Q_RUNNING;
    p->running++;
    q->attempts++;
    h2o_timeout_link(p->loop, &p->query_to, &c->busy_timer);
    if (!PQsendQueryParams(c->conn, q->sql, q->nparams, NULL, q->params, NULL, NULL, 0) || flush(c) != 0)
        drop_conn(c, PQerrorMessage(c->conn), ERR_LOST);
}

/* Never runs a callback: sl_pgpool_query calls it. */
static void dispatch(sl_pgpool_t *p)
{
    for (size_t i = 0; i < p->nconns && p->queued > 0; i++) {
        struct pgconn *c = &p->conns[i];
        if (c->state != C_UP || c->job != NULL)
            continue;
        sl_pgquery_t *q = H2O_STRUCT_FROM_MEMBER(sl_pgquery_t, link, p->queue.next);
        h2o_linklist_unlink(&q->link);
        p->queued--;
        send_job(c, q);
    }
}

/* Zero-delay timer: reports deferred failures, reopens connections that broke. */
static void on_kick(h2o_timeout_entry_t *entry)
{
    sl_pgpool_t *p = H2O_STRUCT_FROM_MEMBER(sl_pgpool_t, kick, entry);
    while (!h2o_linklist_is_empty(&p->failed)) {
        sl_pgquery_t *q = H2O_STRUCT_FROM_MEMBER(sl_pgquery_t, link, p->failed.next);
        h2o_linklist_unlink(&q->link);
        finish(q, NULL, q->err);
    }
    for (size_t i = 0; i < p->nconns; i++) {
        if (p->conns[i].state == C_DOWN && p->conns[i].retry_now)
            start_connect(&p->conns[i]);
    }
    dispatch(p);
}

static void on_tick(h2o_timeout_entry_t *entry)
{
    sl_pgpool_t *p = H2O_STRUCT_FROM_MEMBER(sl_pgpool_t, tick, entry);
    for (size_t i = 0; i < p->nconns; i++) {
        if (p->conns[i].state == C_DOWN)
            start_connect(&p->conns[i]);
    }
    dispatch(p);
    link_timer(p, &p->tick_to, &p->tick);
}

/* ---- the URL --------------------------------------------------------------------------------- */

static size_t count_items(const char *s)
{
    size_t n = 1;
    for (; *s; s++)
        n += *s == ',';
    return n;
}

/* Item i of a comma-separated list that was split in place (NUL for each comma). */
static const char *item(const char *list, size_t i)
{
    while (i-- > 0)
        list += strlen(list) + 1;
    return list;
}

/* Splits the URL's host, hostaddr and port lists into one attempt per host, as libpq pairs them
 * (one port for all hosts, or one per host). 0, or -1 on no memory. */
static int parse_url(sl_pgpool_t *p)
{
    char *errmsg = NULL;
    static const char *const split_keys[3] = {"host", "hostaddr", "port"};
    size_t counts[3] = {0, 0, 0}, nopts = 0;

    p->opts = PQconninfoParse(p->url, &errmsg);
    if (p->opts == NULL) {
        char q[600];
        if (errmsg == NULL)
            return -1;
        /* libpq will say what is wrong at every attempt; the pool still runs (and is not ready) */
        SL_ERROR("event=db_url_invalid error=%s", sl_log_quote(q, sizeof(q), errmsg));
        PQfreemem(errmsg);
        p->expand = 1;
        p->nhosts = 1;
        if ((p->keys = calloc(6, sizeof(char *))) == NULL || (p->vals = calloc(6, sizeof(char *))) == NULL ||
            (p->hosts = calloc(1, sizeof(*p->hosts))) == NULL)
            return -1;
        p->keys[0] = "dbname";
        p->vals[0] = p->url;
        p->nbase = 1;
        return 0;
    }
    for (PQconninfoOption *o = p->opts; o->keyword != NULL; o++)
        nopts++;
    if ((p->keys = calloc(nopts + 5, sizeof(char *))) == NULL || (p->vals = calloc(nopts + 5, sizeof(char *))) == NULL)
        return -1;
    int has_app = 0;
    for (PQconninfoOption *o = p->opts; o->keyword != NULL; o++) {
        int split = -1;
        for (int k = 0; k < 3; k++) {
            if (strcmp(o->keyword, split_keys[k]) == 0)
                split = k;
        }
        if (o->val == NULL)
            continue;
        if (split >= 0) {
            if ((p->lists[split] = strdup(o->val)) == NULL)
                return -1;
            counts[split] = count_items(o->val);
            for (char *s = p->lists[split]; *s; s++) {
                if (*s == ',')
                    *s = '\0';
            }
            continue;
        }
        has_app |= strcmp(o->keyword, "application_name") == 0 || strcmp(o->keyword, "fallback_application_name") == 0;
        p->keys[p->nbase] = o->keyword;
        p->vals[p->nbase++] = o->val;
    }
    if (!has_app) {
        p->keys[p->nbase] = "fallback_application_name";
        p->vals[p->nbase++] = "sluice";
    }
    p->nhosts = counts[0] > counts[1] ? counts[0] : counts[1];
    if (p->nhosts == 0)
        p->nhosts = 1;
    if ((p->hosts = calloc(p->nhosts, sizeof(*p->hosts))) == NULL)
        return -1;
    for (size_t i = 0; i < p->nhosts; i++) {
        struct host *h = &p->hosts[i];
        h->host = i < counts[0] ? item(p->lists[0], i) : NULL;
        h->hostaddr = i < counts[1] ? item(p->lists[1], i) : NULL;
        if (counts[2] > 0)
            h->port = item(p->lists[2], counts[2] == 1 || i >= counts[2] ? 0 : i);
    }
    return 0;
}

/* ---- the pool -------------------------------------------------------------------------------- */

static void free_pool(sl_pgpool_t *p)
{
    if (p->opts != NULL)
        PQconninfoFree(p->opts);
    for (int k = 0; k < 3; k++)
        free(p->lists[k]);
    free(p->keys);
    free(p->vals);
    free(p->hosts);
    free(p->conns);
    free(p->url);
    free(p);
}

sl_pgpool_t *sl_pgpool_create(h2o_loop_t *loop, const sl_pgpool_conf_t *conf)
{
    sl_pgpool_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    if ((p->conns = calloc(conf->nconns, sizeof(*p->conns))) == NULL || (p->url = strdup(conf->url)) == NULL ||
        parse_url(p) != 0) {
        free_pool(p);
        return NULL;
    }
    p->loop = loop;
    p->nconns = conf->nconns;
    p->max_queue = conf->max_queue;
    p->connect_timeout_ms = conf->connect_timeout_ms > 0 ? conf->connect_timeout_ms : SL_PGPOOL_CONNECT_TIMEOUT_MS;
    p->query_timeout_ms = conf->query_timeout_ms > 0 ? conf->query_timeout_ms : SL_PGPOOL_QUERY_TIMEOUT_MS;
    h2o_linklist_init_anchor(&p->queue);
    h2o_linklist_init_anchor(&p->failed);
    h2o_timeout_init(loop, &p->tick_to, (uint64_t)(conf->reconnect_ms > 0 ? conf->reconnect_ms : 1000));
    h2o_timeout_init(loop, &p->kick_to, 0);
    h2o_timeout_init(loop, &p->connect_to, (uint64_t)p->connect_timeout_ms);
    h2o_timeout_init(loop, &p->query_to, (uint64_t)p->query_timeout_ms);
    p->tick.cb = on_tick;
    p->kick.cb = on_kick;
    for (size_t i = 0; i < p->nconns; i++) {
        struct pgconn *c = &p->conns[i];
        c->pool = p;
        c->connect_timer.cb = on_connect_timeout;
        c->busy_timer.cb = on_busy_timeout;
        start_connect(c);
    }
    h2o_timeout_link(loop, &p->tick_to, &p->tick);
    return p;
}

sl_pgquery_t *sl_pgpool_query(sl_pgpool_t *p, const char *sql, int nparams, const char *const *params, sl_pg_cb cb,
                              void *data)
{
    size_t bytes = sizeof(sl_pgquery_t) + (size_t)nparams * sizeof(char *);
    if (p->closing || p->queued >= p->max_queue)
        return NULL;
    if (!is_ready(p)) {
        /* Wait for a connection being opened, unless the database is known to be away. */
        int opening = 0;
        for (size_t i = 0; i < p->nconns; i++)
            opening |= p->conns[i].state == C_CONNECTING || p->conns[i].state == C_SETUP || p->conns[i].retry_now;
        if (p->failing || !opening)
            return NULL;
    }
    for (int i = 0; i < nparams; i++)
        bytes += params[i] != NULL ? strlen(params[i]) + 1 : 0;
    sl_pgquery_t *q = calloc(1, bytes);
    if (q == NULL)
        return NULL;
    q->pool = p;
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
    q->state = Q_QUEUED;
    q->deadline.cb = on_deadline;
    h2o_linklist_insert(&p->queue, &q->link);
    p->queued++;
    h2o_timeout_link(p->loop, &p->query_to, &q->deadline);
    dispatch(p);
    return q;
}

void sl_pgpool_cancel(sl_pgquery_t *q)
{
    unlink_timer(&q->deadline);
    switch (q->state) {
    case Q_QUEUED:
        h2o_linklist_unlink(&q->link);
        q->pool->queued--;
        free(q);
        break;
    case Q_FAILED:
        h2o_linklist_unlink(&q->link);
        free(q);
        break;
    default: /* running (freed when its connection is done with it) or in its callback */
        q->cb = NULL;
        q->data = NULL;
        break;
    }
}

int sl_pgpool_ready(const sl_pgpool_t *p)
{
    return is_ready(p);
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
    p->closing = 1;
    unlink_timer(&p->tick);
    for (size_t i = 0; i < p->nconns; i++) {
        struct pgconn *c = &p->conns[i];
        if (c->state == C_UP)
            drop_conn(c, ERR_SHUTDOWN, ERR_SHUTDOWN);
        else
            close_conn(c);
    }
    fail_queued(p, ERR_SHUTDOWN);
    while (!h2o_linklist_is_empty(&p->failed)) {
        sl_pgquery_t *q = H2O_STRUCT_FROM_MEMBER(sl_pgquery_t, link, p->failed.next);
        h2o_linklist_unlink(&q->link);
        finish(q, NULL, q->err);
    }
    unlink_timer(&p->kick);
    h2o_timeout_dispose(p->loop, &p->tick_to);
    h2o_timeout_dispose(p->loop, &p->kick_to);
    h2o_timeout_dispose(p->loop, &p->connect_to);
    h2o_timeout_dispose(p->loop, &p->query_to);
    free_pool(p);
}
