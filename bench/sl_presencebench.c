/*
 * sl_presencebench: presence with N subscribers of one channel across two sse instances, over the
 * real RabbitMQ (and PostgreSQL, which an sse instance needs to start). Prints figures, asserts no
 * speed.
 *
 * Two child processes each run a whole sse instance (sl_sse with its HTTP server, as sluice-sse
 * does) and take commands from the parent on a pipe: listen to a channel, enter so many distinct
 * users at a given rate, leave them. Each child writes a line per enter, leave, and per join and
 * leave its listener sees, stamped with CLOCK_MONOTONIC (one clock for the whole machine), so
 * the parent computes:
 *   - join latency: a user entering on one instance -> the join seen by the other's listener;
 *   - leave latency: its last subscription ending -> the leave seen by the other (this includes
 *     the grace period, SLUICE_PRESENCE_GRACE_MS, on purpose);
 *   - each instance's CPU (utime + stime of its process) in each phase, and at rest with every
 *     user present (the heartbeat snapshots);
 *   - after a kill -9 of one instance, how long until the other's GET /v1/channels shows exactly
 *     its own subscribers (the TTL at work), and whether it stays exact.
 *
 *   sl_presencebench [--subscribers=5000] [--rate=2500] [--heartbeat-ms=2000] ...
 *   (SLUICE_AMQP_URL, SLUICE_DB_URL as for the services; bench/presence_run.sh starts servers.)
 *
 * Ends with one "RESULT key=value ..." line.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sl_benchutil.h"
#include "sl_config.h"
#include "sl_db.h"
#include "sl_http.h"
#include "sl_log.h"
#include "sl_sse.h"
#include "sl_time.h"

static struct {
    const char *amqp_url, *db_url;
    long long subscribers, rate, heartbeat_ms, ttl_ms, max_users, rest_s;
    char live[96], presence[96];
} C;

static int64_t mono_us(void)
{
    return sl_time_mono_us();
}

/* ---- a child: one sse instance driven by commands ---------------------------------------------- */

struct node {
    sl_http_server_t http;
    sl_sse_t *sse;
    int events;      /* fd the lines go to */
    h2o_socket_t *cmds;
    char line[256];
    size_t linelen;
    int done;
    /* entering / leaving at a rate */
    char channel[65], prefix[16];
    long long total, next, leave_next, leave_limit, rate, leave_rate;
    int64_t started_us, leave_started_us;
    sl_presence_entry_t **entries;
    h2o_timeout_t pace_timeout;
    h2o_timeout_entry_t pace;
};

static void on_event(void *data, const sl_presence_event_t *ev)
{
    struct node *n = data;
    dprintf(n->events, "%c %s %lld\n", ev->type == SL_PRESENCE_JOIN ? 'J' : 'L', ev->user.id, (long long)mono_us());
}

static void on_pace(h2o_timeout_entry_t *entry)
{
    struct node *n = H2O_STRUCT_FROM_MEMBER(struct node, pace, entry);
    sl_presence_t *p = sl_sse_presence(n->sse);
    int64_t now = mono_us();
    /* open loop: as many as the rate says by now */
    long long due = n->rate > 0 ? (now - n->started_us) * n->rate / 1000000 + 1 : 0;
    for (; n->next < n->total && n->next < due; n->next++) {
        char id[48];
        snprintf(id, sizeof(id), "%s%lld", n->prefix, n->next);
        sl_presence_user_t u = {id, "Bench User"};
        n->entries[n->next] = sl_presence_enter(p, n->channel, &u);
        dprintf(n->events, "E %s %lld\n", id, (long long)mono_us());
    }
    long long ldue = n->leave_rate > 0 ? (now - n->leave_started_us) * n->leave_rate / 1000000 + 1 : 0;
    for (; n->leave_rate > 0 && n->leave_next < n->next && n->leave_next < n->leave_limit && n->leave_next < ldue;
         n->leave_next++) {
        sl_presence_leave(n->entries[n->leave_next]);
        n->entries[n->leave_next] = NULL;
        dprintf(n->events, "X %s%lld %lld\n", n->prefix, n->leave_next, (long long)mono_us());
    }
    if (n->next < n->total || (n->leave_rate > 0 && n->leave_next < n->leave_limit))
        h2o_timeout_link(n->http.loop, &n->pace_timeout, &n->pace);
}

static void command(struct node *n, const char *line)
{
    char verb[16], arg1[65];
    long long a2 = 0, a3 = 0;
    if (sscanf(line, "%15s %64s %lld %lld", verb, arg1, &a2, &a3) < 1)
        return;
    if (strcmp(verb, "listen") == 0) {
        sl_presence_listen(sl_sse_presence(n->sse), arg1, on_event, n);
    } else if (strcmp(verb, "enter") == 0) { /* enter <channel> <prefix> <count> <rate> */
        char ch[65], prefix[16];
        long long count, rate;
        if (sscanf(line, "enter %64s %15s %lld %lld", ch, prefix, &count, &rate) != 4)
            return;
        snprintf(n->channel, sizeof(n->channel), "%s", ch);
        snprintf(n->prefix, sizeof(n->prefix), "%s", prefix);
        n->entries = calloc((size_t)count, sizeof(*n->entries));
        n->total = count;
        n->rate = rate;
        n->next = n->leave_next = 0;
        n->started_us = mono_us();
        h2o_timeout_link(n->http.loop, &n->pace_timeout, &n->pace);
    } else if (strcmp(verb, "leave") == 0) { /* leave <rate> <count> */
        n->leave_rate = strtoll(arg1, NULL, 10);
        n->leave_limit = a2;
        n->leave_started_us = mono_us();
        if (!h2o_timeout_is_linked(&n->pace))
            h2o_timeout_link(n->http.loop, &n->pace_timeout, &n->pace);
    }
}

static void on_cmds(h2o_socket_t *sock, const char *err)
{
    struct node *n = sock->data;
    char buf[4096];
    (void)err;
    for (;;) {
        ssize_t r = read(0, buf, sizeof(buf));
        if (r == 0) {
            n->done = 1;
            return;
        }
        if (r < 0)
            return;
        for (ssize_t i = 0; i < r; i++) {
            if (buf[i] == '\n') {
                n->line[n->linelen] = '\0';
                command(n, n->line);
                n->linelen = 0;
            } else if (n->linelen + 1 < sizeof(n->line)) {
                n->line[n->linelen++] = buf[i];
            }
        }
    }
}

static int node_main(const char *name, int events_fd)
{
    struct node n;
    memset(&n, 0, sizeof(n));
    n.events = events_fd;
    sl_log_init("presencebench");
    sl_log_threshold = SL_LOG_WARN;
    sl_sse_conf_t conf = {
        .amqp_url = C.amqp_url,
        .db_url = C.db_url,
        .live_exchange = C.live,
        .instance = name,
        .api_url = "",
        .db_conns = 1,
        .check_ms = 1000,
        .live_backlog = 100000,
        .recent = 0,
        .seam_max = 10000,
        .presence_exchange = C.presence,
        .presence_heartbeat_ms = C.heartbeat_ms,
        .presence_ttl_ms = C.ttl_ms,
        .presence_max_users = C.max_users,
        .stream = {.history_default = 20, .history_max = 1000, .replay_max = 10000, .out_max_bytes = 1 << 20,
                   .heartbeat_ms = 15000, .retry_ms = 3000, .max_conns = 100, .max_channels = 32,
                   .ws_max_frame = 4096, .ws_rate = 10, .ws_burst = 50, .history_concurrency = 32,
                   .history_per_client = 4},
    };
    sl_http_opts_t opts = {.ops_loopback_only = 0, .allowed_origins = NULL};
    sl_http_init(&n.http, sl_sse_handle, NULL, 64 * 1024);
    if ((n.sse = sl_sse_create(n.http.loop, &conf)) == NULL)
        return 1;
    n.http.data = n.sse;
    sl_http_configure(&n.http, &opts);
    int port = 0;
    for (int tries = 0; tries < 20; tries++) {
        struct sockaddr_in a = {.sin_family = AF_INET};
        socklen_t len = sizeof(a);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        bind(fd, (struct sockaddr *)&a, sizeof(a));
        getsockname(fd, (struct sockaddr *)&a, &len);
        port = ntohs(a.sin_port);
        close(fd);
        if (sl_http_listen(&n.http, "127.0.0.1", port) == 0)
            break;
        port = 0;
    }
    if (port == 0)
        return 1;
    dprintf(events_fd, "P %d\n", port);
    h2o_timeout_init(n.http.loop, &n.pace_timeout, 5);
    n.pace.cb = on_pace;
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    n.cmds = h2o_evloop_socket_create(n.http.loop, dup(0), H2O_SOCKET_FLAG_DONT_READ);
    n.cmds->data = &n;
    h2o_socket_read_start(n.cmds, on_cmds);
    while (!n.done)
        h2o_evloop_run(n.http.loop, 100);
    return 0; /* the parent kills it; a clean end is not measured */
}

/* ---- the parent ---------------------------------------------------------------------------------- */

#define MAXU 200000

struct child {
    pid_t pid;
    int cmd, events, port;
    FILE *in;
    /* per user index (of the prefix a / b): when it entered / left here, when the other saw it */
    int64_t *entered, *left;
    int64_t *joined_other, *left_other; /* join/leave of the OTHER instance's users seen here */
    atomic_llong joins_seen, leaves_seen;
};

static struct child K[2];

static void *reader(void *arg)
{
    struct child *k = arg;
    char line[256];
    while (fgets(line, sizeof(line), k->in) != NULL) {
        char t, id[64];
        long long v;
        if (sscanf(line, "%c %63s %lld", &t, id, &v) != 3) {
            if (sscanf(line, "P %d", &k->port) == 1)
                continue;
            continue;
        }
        int mine = id[0] == (k == &K[0] ? 'a' : 'b');
        long long idx = strtoll(id + 1, NULL, 10);
        if (idx < 0 || idx >= MAXU)
            continue;
        if (t == 'E')
            k->entered[idx] = v;
        else if (t == 'X')
            k->left[idx] = v;
        else if (t == 'J' && !mine && k->joined_other[idx] == 0) {
            k->joined_other[idx] = v;
            atomic_fetch_add(&k->joins_seen, 1);
        } else if (t == 'L' && !mine && k->left_other[idx] == 0) {
            k->left_other[idx] = v;
            atomic_fetch_add(&k->leaves_seen, 1);
        }
    }
    return NULL;
}

static void start_child(int i)
{
    int cmd[2], ev[2];
    if (pipe(cmd) != 0 || pipe(ev) != 0)
        exit(1);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(cmd[0], 0);
        close(cmd[0]);
        close(cmd[1]);
        close(ev[0]);
        for (int j = 0; j < i; j++) { /* not the other child's pipes */
            close(K[j].cmd);
            fclose(K[j].in);
        }
        exit(node_main(i == 0 ? "bench-a" : "bench-b", ev[1]));
    }
    close(cmd[0]);
    close(ev[1]);
    K[i].pid = pid;
    K[i].cmd = cmd[1];
    K[i].in = fdopen(ev[0], "r");
    K[i].entered = calloc(MAXU, sizeof(int64_t));
    K[i].left = calloc(MAXU, sizeof(int64_t));
    K[i].joined_other = calloc(MAXU, sizeof(int64_t));
    K[i].left_other = calloc(MAXU, sizeof(int64_t));
}

static double cpu_ms(pid_t pid)
{
    long long ticks = bu_proc_cpu_ticks((long)pid);
    return ticks < 0 ? -1 : (double)ticks * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

/* A blocking GET on 127.0.0.1:port; the body (malloc'd) or NULL. */
static char *http_get(int port, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return NULL;
    }
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return NULL;
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    for (ssize_t r; (r = read(fd, buf + len, cap - len - 1)) > 0;) {
        len += (size_t)r;
        if (len + 1 == cap)
            buf = realloc(buf, cap *= 2);
    }
    close(fd);
    buf[len] = '\0';
    char *body = strstr(buf, "\r\n\r\n");
    char *out = body != NULL ? strdup(body + 4) : NULL;
    free(buf);
    return out;
}

static long long subscribers(int port, const char *channel)
{
    char *body = http_get(port, "/v1/channels");
    json_t *j = body != NULL ? json_loads(body, 0, NULL) : NULL, *row;
    size_t i;
    long long n = -1;
    json_array_foreach(json_object_get(j, "channels"), i, row) {
        if (strcmp(json_string_value(json_object_get(row, "channel")), channel) == 0)
            n = json_integer_value(json_object_get(row, "subscribers"));
    }
    if (j != NULL && n < 0)
        n = 0;
    json_decref(j);
    free(body);
    return n;
}

static long long metric(int port, const char *name)
{
    char *body = http_get(port, "/metrics"), key[128];
    snprintf(key, sizeof(key), "\n%s ", name);
    const char *p = body != NULL ? strstr(body, key) : NULL;
    long long v = p != NULL ? (long long)atof(p + strlen(key)) : -1;
    free(body);
    return v;
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* Percentiles in ms of to[i] - from[i] over i < n where both are set. */
static void latency(const int64_t *from, const int64_t *to, long long n, double *p50, double *p99, double *max,
                    long long *count)
{
    long long *v = malloc((size_t)(n > 0 ? n : 1) * sizeof(*v)), k = 0;
    for (long long i = 0; i < n; i++) {
        if (from[i] != 0 && to[i] != 0)
            v[k++] = to[i] - from[i];
    }
    qsort(v, (size_t)k, sizeof(*v), cmp_ll);
    *count = k;
    *p50 = k ? v[k / 2] / 1000.0 : 0;
    *p99 = k ? v[(k * 99) / 100 < k ? (k * 99) / 100 : k - 1] / 1000.0 : 0;
    *max = k ? v[k - 1] / 1000.0 : 0;
    free(v);
}

static void send_cmd(int i, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void send_cmd(int i, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (write(K[i].cmd, buf, (size_t)n) != n)
        fprintf(stderr, "presencebench: command to child %d failed\n", i);
}

static int wait_for(atomic_llong *v, long long want, int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 10) {
        if (atomic_load(v) >= want)
            return 1;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return atomic_load(v) >= want;
}

int main(int argc, char **argv)
{
    sl_opt_t opts[] = {
        {"amqp-url", "SLUICE_AMQP_URL", SL_OPT_STR, &C.amqp_url, "amqp://guest:guest@127.0.0.1:5672/", 0, 0, "RabbitMQ"},
        {"db-url", "SLUICE_DB_URL", SL_OPT_STR, &C.db_url, "postgresql://postgres@127.0.0.1:5433/sluice", 0, 0,
         "PostgreSQL (an sse instance needs one to start)"},
        {"subscribers", "SLUICE_PBENCH_SUBSCRIBERS", SL_OPT_INT, &C.subscribers, "5000", 2, MAXU,
         "subscribers of the channel, half on each instance, each a distinct user"},
        {"rate", "SLUICE_PBENCH_RATE", SL_OPT_INT, &C.rate, "1000", 1, 1e6, "enters (and leaves) per second per instance"},
        {"heartbeat-ms", "SLUICE_PRESENCE_HEARTBEAT_MS", SL_OPT_INT, &C.heartbeat_ms, "2000", 10, 600000, "heartbeat"},
        {"ttl-ms", "SLUICE_PRESENCE_TTL_MS", SL_OPT_INT, &C.ttl_ms, "0", 0, 3600000, "TTL (0: 3 x heartbeat)"},
        {"max-users", "SLUICE_PRESENCE_MAX_USERS", SL_OPT_INT, &C.max_users, "10000", 1, 1e6, "users per channel"},
        {"rest-s", "SLUICE_PBENCH_REST_S", SL_OPT_INT, &C.rest_s, "10", 1, 600, "seconds at rest with everyone present"},
    };
    int r = sl_config_parse(opts, sizeof(opts) / sizeof(opts[0]), argc, argv, "sl_presencebench",
                            "presence with N subscribers of one channel across two sse instances");
    if (r != 0)
        return r > 0 ? 0 : 2;
    long long ttl = C.ttl_ms > 0 ? C.ttl_ms : 3 * C.heartbeat_ms, half = C.subscribers / 2;
    snprintf(C.live, sizeof(C.live), "sluice.bench.live.%d", (int)getpid());
    snprintf(C.presence, sizeof(C.presence), "sluice.bench.presence.%d", (int)getpid());
    signal(SIGPIPE, SIG_IGN);
    sl_log_init("presencebench");
    if (sl_db_migrate_url(C.db_url, 10, NULL) != SL_DB_OK)
        return 1;
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        start_child(i);
        pthread_create(&th[i], NULL, reader, &K[i]);
    }
    for (int waited = 0; (K[0].port == 0 || K[1].port == 0) && waited < 10000; waited += 10)
        usleep(10000);
    for (int i = 0; i < 2; i++) {
        int ready = 0;
        for (int waited = 0; !ready && waited < 20000; waited += 100) {
            char *b = http_get(K[i].port, "/readyz");
            ready = b != NULL && strstr(b, "\"ready\"") != NULL;
            free(b);
            if (!ready)
                usleep(100000);
        }
        if (!ready) {
            fprintf(stderr, "presencebench: instance %d not ready\n", i);
            return 1;
        }
    }
    sleep(1); /* each has seen the other's first snapshot */
    printf("presencebench: %lld subscribers of one channel (%lld distinct users on each of 2 instances), %lld/s "
           "per instance, heartbeat %lld ms, TTL %lld ms, grace %lld ms, max users %lld\n",
           C.subscribers, half, C.rate, C.heartbeat_ms, ttl, C.heartbeat_ms, C.max_users);
    for (int i = 0; i < 2; i++)
        send_cmd(i, "listen bench\n");
    usleep(100000);

    /* joins */
    double cpu0[2], cpu1[2], cpu2[2], cpu3[2];
    for (int i = 0; i < 2; i++)
        cpu0[i] = cpu_ms(K[i].pid);
    int64_t t0 = mono_us();
    send_cmd(0, "enter bench a %lld %lld\n", half, C.rate);
    send_cmd(1, "enter bench b %lld %lld\n", half, C.rate);
    int all = wait_for(&K[0].joins_seen, half, 120000) && wait_for(&K[1].joins_seen, half, 120000);
    double join_s = (double)(mono_us() - t0) / 1e6;
    for (int i = 0; i < 2; i++)
        cpu1[i] = cpu_ms(K[i].pid);
    double jp50[2], jp99[2], jmax[2];
    long long jn[2];
    latency(K[0].entered, K[1].joined_other, half, &jp50[0], &jp99[0], &jmax[0], &jn[0]); /* a's users seen at b */
    latency(K[1].entered, K[0].joined_other, half, &jp50[1], &jp99[1], &jmax[1], &jn[1]);
    long long occ[2] = {-1, -1};
    for (int waited = 0; waited < 3 * (int)C.heartbeat_ms; waited += 50) {
        occ[0] = subscribers(K[0].port, "bench");
        occ[1] = subscribers(K[1].port, "bench");
        if (occ[0] == 2 * half && occ[1] == 2 * half)
            break;
        usleep(50000);
    }
    printf("joins: %s in %.1f s; a->b p50 %.0f ms p99 %.0f ms max %.0f ms (%lld); b->a p50 %.0f ms p99 %.0f ms max "
           "%.0f ms (%lld)\n",
           all ? "all seen" : "NOT ALL SEEN", join_s, jp50[0], jp99[0], jmax[0], jn[0], jp50[1], jp99[1], jmax[1],
           jn[1]);
    printf("joins: CPU a %.0f ms, b %.0f ms; GET /v1/channels subscribers: a %lld, b %lld (want %lld)\n",
           cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], occ[0], occ[1], 2 * half);

    /* at rest, everyone present: the cost of the heartbeats */
    long long sent0 = metric(K[0].port, "sluice_sse_presence_sent_bytes_total");
    sleep((unsigned)C.rest_s);
    for (int i = 0; i < 2; i++)
        cpu2[i] = cpu_ms(K[i].pid);
    long long sent1 = metric(K[0].port, "sluice_sse_presence_sent_bytes_total");
    printf("rest %lld s: CPU a %.0f ms (%.2f %%), b %.0f ms (%.2f %%); a published %.0f KB/s of snapshots\n", C.rest_s,
           cpu2[0] - cpu1[0], (cpu2[0] - cpu1[0]) / (10.0 * (double)C.rest_s), cpu2[1] - cpu1[1],
           (cpu2[1] - cpu1[1]) / (10.0 * (double)C.rest_s), (double)(sent1 - sent0) / 1024.0 / (double)C.rest_s);

    /* leaves: half of a's users go; b sees each after a's grace */
    long long leaving = half / 2;
    t0 = mono_us();
    send_cmd(0, "leave %lld %lld\n", C.rate, leaving);
    int left_all = wait_for(&K[1].leaves_seen, leaving, 60000 + (int)(leaving * 1000 / C.rate));
    double lp50, lp99, lmax;
    long long ln;
    latency(K[0].left, K[1].left_other, leaving, &lp50, &lp99, &lmax, &ln);
    for (int i = 0; i < 2; i++)
        cpu3[i] = cpu_ms(K[i].pid);
    printf("leaves: %s; a->b p50 %.0f ms p99 %.0f ms max %.0f ms (%lld; the grace is %lld ms)\n",
           left_all ? "all seen" : "NOT ALL SEEN", lp50, lp99, lmax, ln, C.heartbeat_ms);
    printf("leaves: CPU a %.0f ms, b %.0f ms\n", cpu3[0] - cpu2[0], cpu3[1] - cpu2[1]);
    /* kill -9 b: a must show exactly its own subscribers once the TTL has passed */
    long long a_own = half - leaving;
    int64_t tk = mono_us();
    kill(K[1].pid, SIGKILL);
    waitpid(K[1].pid, NULL, 0);
    long long seen = -1;
    double exact_after = -1;
    for (int waited = 0; waited < 3 * (int)ttl + 5000; waited += 20) {
        seen = subscribers(K[0].port, "bench");
        if (seen == a_own) {
            exact_after = (double)(mono_us() - tk) / 1000.0;
            break;
        }
        usleep(20000);
    }
    usleep((useconds_t)(C.heartbeat_ms * 1000));
    long long later = subscribers(K[0].port, "bench");
    int b_leaves = wait_for(&K[0].leaves_seen, half, 5000);
    printf("kill -9 of b: a's count exact (%lld, its own) after %.0f ms (TTL %lld ms), still %lld a heartbeat later; "
           "a saw %lld of b's %lld users leave%s\n",
           a_own, exact_after, ttl, later, (long long)atomic_load(&K[0].leaves_seen), half, b_leaves ? "" : " (NOT ALL)");
    printf("RESULT subscribers=%lld rate=%lld heartbeat_ms=%lld ttl_ms=%lld join_p50_ms=%.0f join_p99_ms=%.0f "
           "join_max_ms=%.0f leave_p50_ms=%.0f leave_p99_ms=%.0f cpu_join_ms=%.0f,%.0f cpu_rest_pct=%.2f,%.2f "
           "snapshot_kbps=%.0f kill_exact_ms=%.0f exact=%d\n",
           C.subscribers, C.rate, C.heartbeat_ms, ttl, jp50[0] > jp50[1] ? jp50[0] : jp50[1],
           jp99[0] > jp99[1] ? jp99[0] : jp99[1], jmax[0] > jmax[1] ? jmax[0] : jmax[1], lp50, lp99, cpu1[0] - cpu0[0],
           cpu1[1] - cpu0[1], (cpu2[0] - cpu1[0]) / (10.0 * (double)C.rest_s),
           (cpu2[1] - cpu1[1]) / (10.0 * (double)C.rest_s), (double)(sent1 - sent0) / 1024.0 / (double)C.rest_s,
           exact_after, exact_after >= 0 && later == a_own);
    kill(K[0].pid, SIGKILL);
    waitpid(K[0].pid, NULL, 0);
    return all && left_all && exact_after >= 0 && later == a_own ? 0 : 1;
}
