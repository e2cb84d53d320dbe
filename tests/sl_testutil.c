/*
 * Integration-test helpers; see sl_testutil.h.
 */
#include "sl_testutil.h"

#include <check.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sl_amqp.h"
#include "sl_message.h"
#include "sl_testnet.h"
#include "sl_time.h"

long tu_http_timeout_ms = 20000;
int tu_wait_amqp_ms = 10000;

void tu_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int tu_free_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(0x7f000001);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static const char *env_or_fail(const char *name)
{
    const char *v = getenv(name);
    ck_assert_msg(v != NULL && *v != '\0', "%s is not set: run the tests through ./test.sh", name);
    return v;
}

static void admin_exec(const char *sql)
{
    PGconn *c = PQconnectdb(env_or_fail("SLUICE_DB_URL"));
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "database: %s", PQerrorMessage(c));
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
}

void tu_stack_init(tu_stack_t *s, const char *name, long long max_length)
{
    char sql[256], dbname[96];
    const char *base = env_or_fail("SLUICE_DB_URL");
    memset(s, 0, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "%s", name);
    snprintf(dbname, sizeof(dbname), "sluice_t_%s", name);
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s", dbname);
    admin_exec(sql);
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", dbname);
    admin_exec(sql);
    /* base is postgresql://user@host:port/sluice: swap the database name */
    const char *slash = strrchr(base, '/');
    ck_assert_ptr_nonnull(slash);
    snprintf(s->db_url, sizeof(s->db_url), "%.*s/%s", (int)(slash - base), base, dbname);
    snprintf(s->queue, sizeof(s->queue), "sluice.test.%s.%d.%ld", name, (int)getpid(), (long)time(NULL));
    snprintf(s->live, sizeof(s->live), "sluice.live.test.%s.%d.%ld", name, (int)getpid(), (long)time(NULL));
    snprintf(s->presence, sizeof(s->presence), "sluice.presence.test.%s.%d.%ld", name, (int)getpid(), (long)time(NULL));
    s->api_port = tu_free_port();
    s->persister_port = tu_free_port();
    s->sse_port = tu_free_port();
    s->max_length = max_length;
    snprintf(s->base, sizeof(s->base), "http://127.0.0.1:%d", s->api_port);
    static const char *const services[] = {"persister", "api", "sse"};
    for (int i = 0; i < 3; i++) { /* each run of a test starts its logs afresh */
        char path[700];
        snprintf(path, sizeof(path), "%s/%s-%s.log", SLUICE_TEST_LOG_DIR, name, services[i]);
        unlink(path);
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

void tu_stack_cleanup(tu_stack_t *s)
{
    /* A clean exit on SIGTERM is part of every test: under the sanitizers a leak or an error
     * report makes it non-zero. */
    ck_assert_int_eq(tu_stop(&s->sse, SIGTERM, 15000), 0);
    ck_assert_int_eq(tu_stop(&s->api, SIGTERM, 15000), 0);
    ck_assert_int_eq(tu_stop(&s->persister, SIGTERM, 15000), 0);
}

static int *default_port(tu_stack_t *s, const char *service)
{
    if (strcmp(service, "api") == 0)
        return &s->api_port;
    if (strcmp(service, "sse") == 0)
        return &s->sse_port;
    return &s->persister_port;
}

pid_t tu_start(tu_stack_t *s, const char *service, const char *const *extra_env)
{
    pid_t pid = tu_start_at(s, service, default_port(s, service), extra_env);
    if (strcmp(service, "api") == 0)
        s->api = pid;
    else if (strcmp(service, "sse") == 0)
        s->sse = pid;
    else
        s->persister = pid;
    return pid;
}

static pid_t spawn(const tu_stack_t *s, const char *bin, const char *logpath, const char *port_var, int port,
                   const char *const *extra_env)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        char v[64];
        /* never outlive the test: a failed assertion ends it without tu_stack_cleanup */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        setenv("SLUICE_DB_URL", s->db_url, 1);
        setenv("SLUICE_QUEUE", s->queue, 1);
        setenv("SLUICE_LIVE_EXCHANGE", s->live, 1);
        setenv("SLUICE_PRESENCE_EXCHANGE", s->presence, 1);
        snprintf(v, sizeof(v), "%lld", s->max_length);
        setenv("SLUICE_QUEUE_MAX_LENGTH", v, 1);
        snprintf(v, sizeof(v), "%d", s->api_port);
        setenv("SLUICE_API_PORT", v, 1);
        snprintf(v, sizeof(v), "%d", s->persister_port);
        setenv("SLUICE_PERSISTER_PORT", v, 1);
        snprintf(v, sizeof(v), "%d", s->sse_port);
        setenv("SLUICE_SSE_PORT", v, 1);
        snprintf(v, sizeof(v), "%d", port);
        setenv(port_var, v, 1);
        for (const char *const *e = extra_env; e != NULL && *e != NULL; e++)
            putenv((char *)*e);
        execl(bin, bin, (char *)NULL);
        fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    return pid;
}

int tu_log_contains(const tu_stack_t *s, const char *service, const char *text)
{
    char path[700], line[4096];
    int found = 0;
    snprintf(path, sizeof(path), "%s/%s-%s.log", SLUICE_TEST_LOG_DIR, s->name, service);
    FILE *f = fopen(path, "r");
    while (f != NULL && !found && fgets(line, sizeof(line), f) != NULL)
        found = strstr(line, text) != NULL;
    if (f != NULL)
        fclose(f);
    return found;
}

pid_t tu_start_at(tu_stack_t *s, const char *service, int *port, const char *const *extra_env)
{
    char bin[512], logdir[512], logpath[700], url[128], port_var[64];
    const char *bindir = getenv("SLUICE_BIN_DIR") ? getenv("SLUICE_BIN_DIR") : SLUICE_DEFAULT_BIN_DIR;
    int is_default = port == default_port(s, service);
    snprintf(bin, sizeof(bin), "%s/sluice-%s", bindir, service);
    snprintf(logdir, sizeof(logdir), "%s", SLUICE_TEST_LOG_DIR);
    mkdir(logdir, 0755);
    size_t o = (size_t)snprintf(port_var, sizeof(port_var), "SLUICE_");
    for (const char *c = service; *c != '\0' && o + 6 < sizeof(port_var); c++)
        port_var[o++] = (char)(*c >= 'a' && *c <= 'z' ? *c - 'a' + 'A' : *c);
    snprintf(port_var + o, sizeof(port_var) - o, "_PORT");
    /* A port found free may be taken before the service listens on it (an outgoing connection
     * gets it as its ephemeral port): a service that exits at once is tried again elsewhere. */
    for (int attempt = 0;; attempt++) {
        int status, up = 0, died = 0;
        if (*port == 0)
            *port = tu_free_port();
        if (is_default)
            snprintf(logpath, sizeof(logpath), "%s/%s-%s.log", logdir, s->name, service);
        else
            snprintf(logpath, sizeof(logpath), "%s/%s-%s-%d.log", logdir, s->name, service, *port);
        if (is_default && strcmp(service, "api") == 0)
            snprintf(s->base, sizeof(s->base), "http://127.0.0.1:%d", s->api_port);
        pid_t pid = spawn(s, bin, logpath, port_var, *port, extra_env);
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/healthz", *port);
        for (int waited = 0; waited <= 15000 && !up && !died; waited += 100) {
            if (waitpid(pid, &status, WNOHANG) == pid)
                died = 1;
            else if (tu_wait_status(url, 200, 0))
                up = 1;
            else
                tu_sleep_ms(100);
        }
        if (up && strcmp(service, "persister") != 0) {
            snprintf(url, sizeof(url), "http://127.0.0.1:%d/readyz", *port);
            for (int waited = 0; waited < tu_wait_amqp_ms; waited += 20) {
                tu_resp_t r;
                int amqp_up = tu_http("GET", url, NULL, NULL, NULL, 0, &r) == 0 && strstr(r.body, "\"amqp\":\"up\"");
                tu_resp_free(&r);
                if (amqp_up)
                    break;
                tu_sleep_ms(20);
            }
        }
        if (up)
            return pid;
        ck_assert_msg(died && attempt < 3, "%s did not come up; see %s", service, logpath);
        fprintf(stderr, "%s on port %d exited at start (status %d); trying another port\n", service, *port, status);
        *port = 0;
    }
}

void tu_wait_sse_ready(int port)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/readyz", port);
    ck_assert_msg(tu_wait_status(url, 200, 20000), "sse on port %d never became ready", port);
}

void tu_stack_start_api(tu_stack_t *s, const char *name, const char *const *api_env)
{
    tu_stack_init(s, name, 100000);
    tu_start(s, "persister", NULL);
    tu_start(s, "api", api_env);
}

void tu_stack_start(tu_stack_t *s, const char *name, const char *const *sse_env)
{
    tu_stack_start_api(s, name, NULL);
    tu_start(s, "sse", sse_env);
    tu_wait_sse_ready(s->sse_port);
}

int tu_exit_status(const char *service, const char *env)
{
    char cmd[1024], upper[32];
    const char *bindir = getenv("SLUICE_BIN_DIR") ? getenv("SLUICE_BIN_DIR") : SLUICE_DEFAULT_BIN_DIR;
    size_t i = 0;
    for (; service[i] != '\0' && i + 1 < sizeof(upper); i++)
        upper[i] = (char)(service[i] >= 'a' && service[i] <= 'z' ? service[i] - 'a' + 'A' : service[i]);
    upper[i] = '\0';
    snprintf(cmd, sizeof(cmd), "env %s SLUICE_%s_PORT=1 timeout 10 %s/sluice-%s >/dev/null 2>&1", env, upper, bindir,
             service);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int tu_stop(pid_t *pid, int sig, int timeout_ms)
{
    int status = 0;
    if (*pid <= 0)
        return 0;
    kill(*pid, sig);
    for (int waited = 0;; waited += 20) {
        pid_t r = waitpid(*pid, &status, WNOHANG);
        if (r == *pid)
            break;
        if (waited >= timeout_ms) {
            kill(*pid, SIGKILL);
            waitpid(*pid, &status, 0);
            break;
        }
        tu_sleep_ms(20);
    }
    *pid = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

struct acc {
    char *data;
    size_t len;
};

/* Appends add bytes to *data (*len long, kept NUL-terminated). add, or 0 on no memory (which
 * makes curl fail the transfer). */
static size_t append(char **data, size_t *len, const char *p, size_t add)
{
    char *d = realloc(*data, *len + add + 1);
    if (d == NULL)
        return 0;
    memcpy(d + *len, p, add);
    *data = d;
    *len += add;
    d[*len] = '\0';
    return add;
}

static size_t on_data(char *p, size_t size, size_t n, void *arg)
{
    struct acc *a = arg;
    return append(&a->data, &a->len, p, size * n);
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    tu_resp_t *r = arg;
    size_t len = size * n;
    if (append(&r->head, &r->head_len, p, len) != len)
        return 0;
    if (len > 12 && strncasecmp(p, "retry-after:", 12) == 0) {
        size_t o = 0;
        for (size_t i = 12; i < len && o + 1 < sizeof(r->retry_after); i++) {
            if (p[i] >= '0' && p[i] <= '9')
                r->retry_after[o++] = p[i];
        }
        r->retry_after[o] = '\0';
    }
    return len;
}

int tu_http(const char *method, const char *url, const char *header, const char *ctype, const char *body, size_t len,
            tu_resp_t *r)
{
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    struct acc a = {NULL, 0};
    char ct[128];
    memset(r, 0, sizeof(*r));
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &a);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, tu_http_timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    h = curl_slist_append(h, "Expect:");
    for (const char *p = header, *nl; p != NULL && *p != '\0'; p = nl != NULL ? nl + 1 : NULL) {
        nl = strchr(p, '\n');
        char *one = strndup(p, nl != NULL ? (size_t)(nl - p) : strlen(p));
        ck_assert_ptr_nonnull(one);
        h = curl_slist_append(h, one);
        free(one);
    }
    if (ctype != NULL) {
        snprintf(ct, sizeof(ct), "Content-Type: %s", ctype);
        h = curl_slist_append(h, ct);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_easy_getinfo(c, CURLINFO_TOTAL_TIME, &r->seconds);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    r->body = a.data != NULL ? a.data : strdup("");
    return rc == CURLE_OK ? 0 : -1;
}

void tu_resp_free(tu_resp_t *r)
{
    free(r->body);
    free(r->head);
    r->body = r->head = NULL;
    r->head_len = 0;
}

void tu_http_expect(const char *method, const char *url, const char *header, const char *ctype, const char *body,
                    size_t len, long want)
{
    tu_resp_t r;
    ck_assert_msg(tu_http(method, url, header, ctype, body, len, &r) == 0, "%s %s: no answer", method, url);
    ck_assert_msg(r.status == want, "%s %s answered %ld, want %ld: %s", method, url, r.status, want, r.body);
    tu_resp_free(&r);
}

void tu_post(const tu_stack_t *s, const char *channel, const char *text)
{
    char url[128], body[1024];
    int len = snprintf(body, sizeof(body), "{\"channel\":\"%s\",\"author\":\"tester\",\"text\":\"%s\"}", channel,
                       text);
    ck_assert(len > 0 && (size_t)len < sizeof(body));
    snprintf(url, sizeof(url), "%s/v1/messages", s->base);
    tu_http_expect("POST", url, NULL, "application/json", body, (size_t)len, 202);
}

const char *tu_resp_header(const tu_resp_t *r, const char *name, char *out, size_t size)
{
    return r->head != NULL ? tu_header_in(r->head, name, out, size) : NULL;
}

struct job {
    int i;
    struct acc a;
    char body[4096];
};

void tu_post_many(const char *url, int n, int parallel, void (*make_body)(int i, char *buf, size_t size), long *status,
                  char (*ids)[37], void (*on_progress)(int done, void *arg), void *arg)
{
    CURLM *m = curl_multi_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    struct job *jobs = calloc((size_t)n, sizeof(*jobs));
    int next = 0, running = 0, done = 0;
    h = curl_slist_append(h, "Expect:");
    ck_assert_ptr_nonnull(jobs);
    curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)parallel);
    while (done < n) {
        while (next < n && running < parallel) {
            struct job *j = &jobs[next];
            CURL *c = curl_easy_init();
            j->i = next;
            make_body(next, j->body, sizeof(j->body));
            curl_easy_setopt(c, CURLOPT_URL, url);
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, j->body);
            curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
            curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
            curl_easy_setopt(c, CURLOPT_WRITEDATA, &j->a);
            curl_easy_setopt(c, CURLOPT_PRIVATE, j);
            curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
            curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
            curl_multi_add_handle(m, c);
            next++;
            running++;
        }
        int still;
        curl_multi_perform(m, &still);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            struct job *j;
            long code = 0;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&j);
            if (msg->data.result == CURLE_OK)
                curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
            status[j->i] = code;
            if (ids != NULL) {
                ids[j->i][0] = '\0';
                if (code == 202 && j->a.data != NULL)
                    tu_json_str(j->a.data, "id", ids[j->i], 37);
            }
            free(j->a.data);
            j->a.data = NULL;
            curl_multi_remove_handle(m, msg->easy_handle);
            curl_easy_cleanup(msg->easy_handle);
            running--;
            done++;
            if (on_progress != NULL)
                on_progress(done, arg);
        }
        if (done < n)
            curl_multi_poll(m, NULL, 0, 100, NULL);
    }
    curl_slist_free_all(h);
    curl_multi_cleanup(m);
    free(jobs);
}

void tu_kill_persister_midway(int done, void *arg)
{
    tu_kill_plan_t *k = arg;
    if (done == k->kill_at) {
        kill(k->s->persister, SIGKILL);
        waitpid(k->s->persister, NULL, 0);
        k->s->persister = 0;
    } else if (done == k->restart_at) {
        tu_start(k->s, "persister", k->env);
    }
}

void tu_publish(const tu_stack_t *s, const void *body, size_t len, int atomic)
{
    char err[256];
    amqp_table_entry_t h = {amqp_cstring_bytes(SL_AMQP_ATOMIC_HEADER), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}};
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    if (atomic) {
        props._flags |= AMQP_BASIC_HEADERS_FLAG;
        props.headers = (amqp_table_t){1, &h};
    }
    amqp_connection_state_t c = sl_amqp_open(getenv("SLUICE_AMQP_URL"), "test", 0, 5000, err, sizeof(err));
    ck_assert_msg(c != NULL, "%s", err);
    amqp_bytes_t b = {len, (void *)body};
    ck_assert_int_eq(amqp_basic_publish(c, SL_AMQP_CHANNEL, amqp_cstring_bytes(""), amqp_cstring_bytes(s->queue), 0, 0,
                                        &props, b),
                     AMQP_STATUS_OK);
    sl_amqp_close(c);
}

void tu_publish_event(const tu_stack_t *s, int type, const char *id, const char *channel, const char *text)
{
    sl_message_t m;
    memset(&m, 0, sizeof(m));
    m.type = (sl_message_type_t)type;
    snprintf(m.id, sizeof(m.id), "%s", id);
    snprintf(m.channel, sizeof(m.channel), "%s", channel);
    snprintf(m.source, sizeof(m.source), "mastodon");
    m.created_at_us = sl_time_now_us();
    if (type == SL_MESSAGE_UPDATE) {
        snprintf(m.text, sizeof(m.text), "%s", text);
        m.edited_at_us = m.created_at_us;
    }
    ck_assert_int_eq(sl_message_event_id(&m, m.event_id), 0);
    size_t len;
    char *json = sl_message_to_json(&m, &len);
    ck_assert_ptr_nonnull(json);
    tu_publish(s, json, len, 0);
    free(json);
}

PGconn *tu_db(const tu_stack_t *s)
{
    PGconn *c = PQconnectdb(s->db_url);
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "database: %s", PQerrorMessage(c));
    return c;
}

long long tu_scalar(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1, "%s: %s", sql, PQerrorMessage(c));
    long long v = PQgetisnull(r, 0, 0) ? -1 : strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

long long tu_wait_rows(PGconn *c, long long want, int timeout_ms)
{
    long long n = -1;
    for (int waited = 0; waited <= timeout_ms; waited += 100) {
        PGresult *r = PQexec(c, "SELECT count(*) FROM messages");
        if (PQresultStatus(r) == PGRES_TUPLES_OK)
            n = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
        if (n >= want)
            return n;
        tu_sleep_ms(100);
    }
    return n;
}

int tu_servers(const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s/scripts/servers.sh %s", SLUICE_SOURCE_DIR, args);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int tu_wait_status(const char *url, long want, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 100) {
        tu_resp_t r;
        int ok = tu_http("GET", url, NULL, NULL, NULL, 0, &r) == 0 && r.status == want;
        tu_resp_free(&r);
        if (ok)
            return 1;
        tu_sleep_ms(100);
    }
    return 0;
}

double tu_metric(int port, const char *series)
{
    char url[128];
    tu_resp_t r;
    double v = -1;
    size_t len = strlen(series);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", port);
    if (tu_http("GET", url, NULL, NULL, NULL, 0, &r) == 0 && r.status == 200) {
        for (char *line = r.body; line != NULL && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
            if (strncmp(line, series, len) == 0 && line[len] == ' ') {
                v = strtod(line + len + 1, NULL);
                break;
            }
        }
    }
    tu_resp_free(&r);
    return v;
}

int tu_wait_metric(int port, const char *series, double want, int timeout_ms)
{
    for (long long end = tu_now_ms() + timeout_ms; tu_now_ms() < end; tu_sleep_ms(50)) {
        if (tu_metric(port, series) == want)
            return 1;
    }
    return tu_metric(port, series) == want;
}

int tu_json_str(const char *json, const char *field, char *out, size_t size)
{
    json_error_t e;
    json_t *root = json_loads(json, 0, &e), *v;
    int ret = -1;
    if (root != NULL && (v = json_object_get(root, field)) != NULL && json_is_string(v)) {
        snprintf(out, size, "%s", json_string_value(v));
        ret = 0;
    }
    json_decref(root);
    return ret;
}
