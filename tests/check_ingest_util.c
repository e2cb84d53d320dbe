/*
 * Helpers of the ingest integration tests; see check_ingest_util.h.
 */
#include "check_ingest_util.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fake_mastodon.h"
#include "sl_amqp.h"
#include "sl_mastodon.h"

void it_start_ingest(it_ingest_t *g, tu_stack_t *s, const char *mastodon_url, const char *const *extra_env)
{
    char bin[512], url[128];
    const char *bindir = getenv("SLUICE_BIN_DIR") ? getenv("SLUICE_BIN_DIR") : SLUICE_DEFAULT_BIN_DIR;
    memset(g, 0, sizeof(*g));
    g->port = tu_free_port();
    snprintf(g->base, sizeof(g->base), "http://127.0.0.1:%d", g->port);
    snprintf(bin, sizeof(bin), "%s/sluice-ingest", bindir);
    mkdir(SLUICE_TEST_LOG_DIR, 0755);
    /* each ingest of a test has its own log (several may run at once), and each run of the test
     * starts them afresh */
    static int started;
    snprintf(g->log, sizeof(g->log), "%s/%s-ingest-%d.log", SLUICE_TEST_LOG_DIR, s->name, ++started);
    unlink(g->log);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        char v[64];
        int fd = open(g->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        setenv("SLUICE_QUEUE", s->queue, 1);
        setenv("SLUICE_LIVE_EXCHANGE", s->live, 1);
        snprintf(v, sizeof(v), "%lld", s->max_length);
        setenv("SLUICE_QUEUE_MAX_LENGTH", v, 1);
        snprintf(v, sizeof(v), "%d", g->port);
        setenv("SLUICE_INGEST_PORT", v, 1);
        setenv("SLUICE_MASTODON_URL", mastodon_url, 1);
        /* test-sized timings; extra_env may override them */
        setenv("SLUICE_INGEST_IDLE_TIMEOUT_MS", "2000", 1);
        setenv("SLUICE_INGEST_BACKOFF_MIN_MS", "100", 1);
        setenv("SLUICE_INGEST_BACKOFF_MAX_MS", "1000", 1);
        setenv("SLUICE_INGEST_POLL_INTERVAL_MS", "200", 1);
        setenv("SLUICE_INGEST_RETRY_MAX_MS", "500", 1);
        setenv("SLUICE_INGEST_CONNECT_TIMEOUT_MS", "2000", 1);
        unsetenv("SLUICE_MASTODON_TOKEN");
        for (const char *const *e = extra_env; e != NULL && *e != NULL; e++)
            putenv((char *)*e);
        execl(bin, bin, (char *)NULL);
        fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    g->pid = pid;
    snprintf(url, sizeof(url), "%s/healthz", g->base);
    ck_assert_msg(tu_wait_status(url, 200, 15000), "ingest did not come up; see %s", g->log);
}

int it_stop_ingest(it_ingest_t *g)
{
    return tu_stop(&g->pid, SIGTERM, 15000);
}

void it_finish(tu_stack_t *s, it_ingest_t *g, PGconn *db, fm_t *f)
{
    ck_assert_int_eq(it_stop_ingest(g), 0);
    PQfinish(db);
    tu_stack_cleanup(s);
    fm_stop(f);
}

json_t *it_state(it_ingest_t *g)
{
    char url[128];
    tu_resp_t r;
    snprintf(url, sizeof(url), "%s/v1/ingest", g->base);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    json_t *root = json_loads(r.body, 0, NULL);
    ck_assert_msg(root != NULL, "GET /v1/ingest: %s", r.body);
    tu_resp_free(&r);
    return root;
}

static json_t *get_path(json_t *root, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *v = root;
    for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok != NULL && v != NULL; tok = strtok_r(NULL, ".", &save))
        v = json_is_array(v) ? json_array_get(v, strtoul(tok, NULL, 10)) : json_object_get(v, tok);
    return v;
}

int it_wait_field(it_ingest_t *g, const char *path, const char *value, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 100) {
        json_t *st = it_state(g);
        json_t *v = get_path(st, path);
        int ok = json_is_string(v) && strcmp(json_string_value(v), value) == 0;
        json_decref(st);
        if (ok)
            return 1;
        tu_sleep_ms(100);
    }
    return 0;
}

void it_command(it_ingest_t *g, const char *ctype, const char *body, tu_resp_t *r)
{
    char url[128];
    snprintf(url, sizeof(url), "%s/v1/ingest", g->base);
    ck_assert_int_eq(tu_http("POST", url, NULL, ctype, body, strlen(body), r), 0);
}

long long it_wait_count(PGconn *c, const char *sql, long long want, int timeout_ms)
{
    long long n = -1;
    for (int waited = 0; waited <= timeout_ms; waited += 100) {
        n = tu_scalar(c, sql);
        if (n >= want)
            return n;
        tu_sleep_ms(100);
    }
    return n;
}

void it_message_id(const char *status_id, char out[37])
{
    char uri[256];
    fm_status_uri(status_id, uri, sizeof(uri));
    ck_assert_int_eq(sl_mastodon_uri_id(uri, strlen(uri), out), 0);
}

void it_local_id(const char *instance_url, const char *status_id, char out[37])
{
    char inst[SL_MASTODON_INSTANCE_MAX];
    ck_assert_int_eq(sl_mastodon_instance_norm(instance_url, inst, sizeof(inst)), 0);
    ck_assert_int_eq(sl_mastodon_local_id(inst, status_id, out), 0);
}

amqp_connection_state_t it_live_open(tu_stack_t *s)
{
    char err[256];
    amqp_connection_state_t c = sl_amqp_open(getenv("SLUICE_AMQP_URL"), "test-live", 0, 5000, err, sizeof(err));
    ck_assert_msg(c != NULL, "%s", err);
    amqp_queue_declare_ok_t *q = amqp_queue_declare(c, SL_AMQP_CHANNEL, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
    ck_assert_ptr_nonnull(q);
    amqp_bytes_t name = amqp_bytes_malloc_dup(q->queue);
    amqp_queue_bind(c, SL_AMQP_CHANNEL, name, amqp_cstring_bytes(s->live), amqp_cstring_bytes("#"), amqp_empty_table);
    ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_basic_consume(c, SL_AMQP_CHANNEL, name, amqp_empty_bytes, 0, 1, 1, amqp_empty_table);
    ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_bytes_free(name);
    return c;
}

char *it_live_next(amqp_connection_state_t c, int timeout_ms)
{
    /* A live message is a committed batch, one event per line (sl_amqp.h): hand them out one by
     * one, keeping the rest of the last message for the next call on the same connection. */
    static amqp_connection_state_t owner;
    static char *batch;
    static size_t off, len;
    if (owner != c || batch == NULL || off >= len) {
        free(batch);
        batch = NULL;
        owner = c;
        amqp_envelope_t env;
        struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
        amqp_maybe_release_buffers(c);
        amqp_rpc_reply_t r = amqp_consume_message(c, &env, &tv, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            return NULL;
        len = env.message.body.len;
        batch = strndup(env.message.body.bytes, len);
        off = 0;
        amqp_destroy_envelope(&env);
        if (batch == NULL)
            return NULL;
    }
    char *line = batch + off, *nl = memchr(line, '\n', len - off);
    size_t n = nl != NULL ? (size_t)(nl - line) : len - off;
    off += n + 1;
    return strndup(line, n);
}
