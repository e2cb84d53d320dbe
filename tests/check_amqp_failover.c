/*
 * Integration tests of SLUICE_AMQP_URL lists on the real RabbitMQ that test.sh starts: a dead
 * first node, a "black hole" first node (accepts TCP, never answers AMQP, like a SIGSTOPped
 * node), and connections lost mid-run. There is one broker here, so the other "nodes" are TCP
 * proxies to it, run by this test, whose connections it resets (as a killed node's are).
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sl_amqp.h"
#include "sl_streamclient.h"
#include "sl_testsuite.h"
#include "sl_testutil.h"
#include "sl_time.h"

static tu_stack_t S;

static int broker_port(void)
{
    struct amqp_connection_info info;
    static char copy[512];
    snprintf(copy, sizeof(copy), "%s", getenv("SLUICE_AMQP_URL"));
    ck_assert_int_eq(amqp_parse_url(copy, &info), AMQP_STATUS_OK);
    return info.port;
}

static int listener(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = htons((uint16_t)port)};
    socklen_t len = sizeof(a);
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    ck_assert_msg(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0, "bind %d: %s", port, strerror(errno));
    ck_assert_int_eq(listen(fd, 64), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    return fd;
}

static int port_of(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    return ntohs(a.sin_port);
}

/* ---- a TCP proxy to the broker, in a thread of this test ---------------------------------- */

#define MAX_PAIRS 32

typedef struct proxy {
    int port, target, lfd, wake[2];
    int fds[2 * MAX_PAIRS]; /* client, upstream; -1 when free */
    pthread_t thread;
    volatile sig_atomic_t paused; /* forwards nothing, keeps connections open: a stopped node */
} proxy_t;

static void reset_close(int fd)
{
    struct linger lg = {1, 0}; /* RST, as a killed node's kernel answers */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
}

static void *proxy_run(void *arg)
{
    proxy_t *p = arg;
    for (;;) {
        struct pollfd pf[2 + 2 * MAX_PAIRS];
        int n = 0, map[2 + 2 * MAX_PAIRS];
        pf[n++] = (struct pollfd){p->wake[0], POLLIN, 0};
        pf[n++] = (struct pollfd){p->lfd, POLLIN, 0};
        for (int i = 0; i < 2 * MAX_PAIRS && !p->paused; i++) {
            if (p->fds[i] >= 0) {
                map[n] = i;
                pf[n++] = (struct pollfd){p->fds[i], POLLIN, 0};
            }
        }
        if (poll(pf, (nfds_t)n, p->paused ? 20 : 1000) < 0)
            continue;
        if (pf[0].revents != 0)
            break;
        if (pf[1].revents & POLLIN) {
            int c = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                                    .sin_port = htons((uint16_t)p->target)};
            int u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            int slot = -1;
            for (int i = 0; i < MAX_PAIRS && slot < 0; i++)
                slot = p->fds[2 * i] < 0 ? i : -1;
            if (c < 0 || slot < 0 || connect(u, (struct sockaddr *)&a, sizeof(a)) != 0) {
                if (c >= 0)
                    close(c);
                close(u);
            } else {
                p->fds[2 * slot] = c;
                p->fds[2 * slot + 1] = u;
            }
        }
        for (int k = 2; k < n; k++) {
            if (pf[k].revents == 0)
                continue;
            int i = map[k], peer = i ^ 1;
            char buf[16384];
            if (p->fds[i] < 0)
                continue;
            ssize_t r = read(p->fds[i], buf, sizeof(buf));
            int ok = r > 0;
            for (ssize_t off = 0; ok && off < r;) {
                ssize_t w = write(p->fds[peer], buf + off, (size_t)(r - off));
                ok = w > 0;
                off += w > 0 ? w : 0;
            }
            if (!ok) {
                close(p->fds[i]);
                close(p->fds[peer]);
                p->fds[i] = p->fds[peer] = -1;
            }
        }
    }
    for (int i = 0; i < 2 * MAX_PAIRS; i++) {
        if (p->fds[i] >= 0)
            reset_close(p->fds[i]);
        p->fds[i] = -1;
    }
    close(p->lfd);
    return NULL;
}

/* port 0: any free one (p->port says which). */
static void proxy_start(proxy_t *p, int port, int target)
{
    memset(p, 0, sizeof(*p));
    for (int i = 0; i < 2 * MAX_PAIRS; i++)
        p->fds[i] = -1;
    p->target = target;
    p->lfd = listener(port);
    p->port = port_of(p->lfd);
    ck_assert_int_eq(pipe(p->wake), 0);
    ck_assert_int_eq(pthread_create(&p->thread, NULL, proxy_run, p), 0);
}

/* Resets every connection and stops listening: the node is gone. */
static void proxy_kill(proxy_t *p)
{
    if (write(p->wake[1], "x", 1) != 1)
        ck_abort_msg("proxy wake: %s", strerror(errno));
    pthread_join(p->thread, NULL);
    close(p->wake[0]);
    close(p->wake[1]);
}

/* ---- helpers ------------------------------------------------------------------------------------ */

static char *post_url(void)
{
    static char url[128];
    snprintf(url, sizeof(url), "%s/v1/messages", S.base);
    return url;
}

static void body_plain(int i, char *buf, size_t size)
{
    snprintf(buf, size, "{\"channel\":\"general\",\"author\":\"user%d\",\"text\":\"failover %d\"}", i % 37, i);
}

static long post_one(double *seconds)
{
    char body[256];
    tu_resp_t r;
    body_plain(0, body, sizeof(body));
    long st = tu_http("POST", post_url(), NULL, "application/json", body, strlen(body), &r) == 0 ? r.status : 0;
    if (seconds != NULL)
        *seconds = r.seconds;
    tu_resp_free(&r);
    return st;
}

static int amqp_up(void)
{
    char url[160];
    tu_resp_t r;
    snprintf(url, sizeof(url), "%s/readyz", S.base);
    int up = tu_http("GET", url, NULL, NULL, NULL, 0, &r) == 0 && strstr(r.body, "\"amqp\":\"up\"") != NULL;
    tu_resp_free(&r);
    return up;
}

static double now_s(void)
{
    return (double)sl_time_mono_us() / 1e6;
}

/* ---- tests ---------------------------------------------------------------------------------- */

START_TEST(test_dead_first_node_is_skipped)
{
    static char env_url[700];
    char real[512], node[160];
    snprintf(real, sizeof(real), "%s", getenv("SLUICE_AMQP_URL"));
    tu_stack_init(&S, "amqpdead", 100000);
    int dead = tu_free_port();
    snprintf(env_url, sizeof(env_url), "SLUICE_AMQP_URL=amqp://guest:guest@127.0.0.1:%d/, %s", dead, real);
    const char *env[] = {env_url, NULL};
    tu_start(&S, "persister", env); /* its blocking sl_amqp_open walks the list too */
    double t0 = now_s();
    tu_start(&S, "api", env);
    long st = post_one(NULL);
    double took = now_s() - t0;
    ck_assert_int_eq(st, 202);
    fprintf(stderr, "dead first node: api started and accepted a post in %.0f ms\n", took * 1000);
    ck_assert_msg(took < 3.0, "first 202 after %.3f s", took);
    snprintf(node, sizeof(node), "event=amqp_connected conn=\"sluice-api\" node=amqp://guest@127.0.0.1:%d/", broker_port());
    ck_assert(tu_log_contains(&S, "api", node));
    snprintf(node, sizeof(node), "node=amqp://guest@127.0.0.1:%d/", dead);
    ck_assert(tu_log_contains(&S, "api", node)); /* its failure, logged */
    ck_assert(!tu_log_contains(&S, "api", "guest:guest")); /* never the password */
    ck_assert(!tu_log_contains(&S, "persister", "guest:guest"));
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 1, 20000), 1);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

START_TEST(test_black_hole_first_node_keeps_the_loop_free)
{
    static char env_url[700];
    char real[512];
    snprintf(real, sizeof(real), "%s", getenv("SLUICE_AMQP_URL"));
    int bh = listener(0); /* never accepted: handshakes complete in the backlog, AMQP never answered */
    tu_stack_init(&S, "amqpbh", 100000);
    snprintf(env_url, sizeof(env_url), "SLUICE_AMQP_URL=amqp://guest:guest@127.0.0.1:%d/,%s", port_of(bh), real);
    const char *env[] = {env_url, NULL};
    tu_start(&S, "persister", NULL);
    int saved = tu_wait_amqp_ms;
    tu_wait_amqp_ms = 0;
    double t0 = now_s();
    tu_start(&S, "api", env);
    tu_wait_amqp_ms = saved;
    double max_health = 0, up_at = 0;
    int probes = 0;
    char health[160];
    snprintf(health, sizeof(health), "%s/healthz", S.base);
    while (now_s() - t0 < 10) {
        tu_resp_t r;
        ck_assert_int_eq(tu_http("GET", health, NULL, NULL, NULL, 0, &r), 0);
        ck_assert_int_eq(r.status, 200);
        max_health = r.seconds > max_health ? r.seconds : max_health;
        probes++;
        tu_resp_free(&r);
        if (up_at == 0 && amqp_up())
            up_at = now_s() - t0;
        if (up_at > 0 && probes >= 20)
            break;
        tu_sleep_ms(20);
    }
    fprintf(stderr, "black-holed first node: broker reached after %.0f ms (deadline 2000 ms); %d /healthz, slowest %.1f ms\n",
            up_at * 1000, probes, max_health * 1000);
    ck_assert_msg(up_at > 0, "never connected to the broker behind the black hole");
    ck_assert_msg(up_at >= 1.5 && up_at < 5.0, "connected after %.3f s", up_at);
    /* a loop blocked in the handshake would stall up to its 2 s deadline: 1 s tells the two apart
     * on a busy machine too */
    ck_assert_msg(max_health < 1.0, "a /healthz took %.3f s", max_health);
    /* given up at the deadline (by the loop's cut or rabbitmq-c's own handshake timeout, whichever
     * comes first: both are 2 000 ms) */
    char gave_up[200];
    snprintf(gave_up, sizeof(gave_up), "event=amqp_connect_failed conn=\"sluice-api\" node=amqp://guest@127.0.0.1:%d/ took_ms=2",
             port_of(bh));
    ck_assert(tu_log_contains(&S, "api", gave_up));
    ck_assert_int_eq(post_one(NULL), 202);

    /* SIGTERM while connecting to the black hole: the drain does not wait for the deadline. */
    static char bh_only[200];
    snprintf(bh_only, sizeof(bh_only), "SLUICE_AMQP_URL=amqp://guest:guest@127.0.0.1:%d/", port_of(bh));
    const char *env2[] = {bh_only, NULL};
    int port2 = 0;
    tu_wait_amqp_ms = 0;
    pid_t api2 = tu_start_at(&S, "api", &port2, env2);
    tu_wait_amqp_ms = saved;
    tu_sleep_ms(300);
    double t_term = now_s();
    ck_assert_int_eq(tu_stop(&api2, SIGTERM, 15000), 0);
    double stop_s = now_s() - t_term;
    fprintf(stderr, "SIGTERM during a black-holed connect: exited in %.0f ms\n", stop_s * 1000);
    ck_assert_msg(stop_s < 1.0, "exit took %.3f s", stop_s);
    tu_stack_cleanup(&S);
    close(bh);
}
END_TEST

struct kill_at {
    int at;
    proxy_t *proxy;
    double t;
};

static void kill_midway(int done, void *arg)
{
    struct kill_at *k = arg;
    tu_sleep_ms(1); /* paced (~1 000 posts/s), so the count of 503s measures the time without a node */
    if (done == k->at) {
        proxy_kill(k->proxy);
        k->t = now_s();
    }
}

START_TEST(test_lost_connection_moves_to_the_next_node)
{
    enum { N = 1500 };
    static long status[N];
    static char ids[N][37];
    static char env_url[700];
    char node[200];
    proxy_t p1, p2;
    int target = broker_port();
    proxy_start(&p1, 0, target);
    proxy_start(&p2, 0, target);
    tu_stack_init(&S, "amqpmove", 100000);
    snprintf(env_url, sizeof(env_url), "SLUICE_AMQP_URL=amqp://guest:guest@127.0.0.1:%d/,amqp://guest:guest@127.0.0.1:%d/",
             p1.port, p2.port);
    const char *env[] = {env_url, NULL};
    tu_start(&S, "persister", NULL); /* straight to the broker */
    tu_start(&S, "api", env);
    snprintf(node, sizeof(node), "event=amqp_connected conn=\"sluice-api\" node=amqp://guest@127.0.0.1:%d/", p1.port);
    ck_assert(tu_log_contains(&S, "api", node));

    /* Under load, node 1 dies: the confirms it owed are answered 503, the rest go to node 2. */
    struct kill_at k = {300, &p1, 0};
    tu_post_many(post_url(), N, 20, body_plain, status, ids, kill_midway, &k);
    int accepted = 0, refused = 0;
    for (int i = 0; i < N; i++) {
        ck_assert_msg(status[i] == 202 || status[i] == 503, "POST %d answered %ld", i, status[i]);
        accepted += status[i] == 202;
        refused += status[i] == 503;
    }
    fprintf(stderr, "node killed under load: %d accepted, %d answered 503\n", accepted, refused);
    ck_assert_int_ge(accepted, N - 200);
    snprintf(node, sizeof(node), "event=amqp_connected conn=\"sluice-api\" node=amqp://guest@127.0.0.1:%d/", p2.port);
    ck_assert(tu_log_contains(&S, "api", node));
    ck_assert(tu_log_contains(&S, "api", "event=amqp_connection_lost conn=\"sluice-api\""));

    /* Every 202 is stored, once. (A 503 may be stored too: the broker may have had it.) */
    PGconn *db = tu_db(&S);
    ck_assert_int_ge(tu_wait_rows(db, accepted, 30000), accepted);
    tu_sleep_ms(500);
    long long stored = tu_scalar(db, "SELECT count(*) FROM messages");
    ck_assert_int_le(stored, N);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(DISTINCT id) FROM messages"), stored);
    ck_assert_int_eq(tu_scalar(db, "SELECT max(seq) FROM messages"), stored);
    for (int i = 0; i < N; i++) {
        if (status[i] != 202)
            continue;
        char sql[160];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM messages WHERE id = '%.36s'", ids[i]);
        ck_assert_msg(tu_scalar(db, sql) == 1, "accepted id %s is not stored once", ids[i]);
    }

    /* Node 1 comes back, node 2 dies: how long until posts are accepted again (wrapping round). */
    proxy_start(&p1, p1.port, target);
    tu_sleep_ms(200);
    proxy_kill(&p2);
    double t_kill = now_s(), back = 0;
    int answered_503 = 0;
    while (now_s() - t_kill < 10) {
        long st = post_one(NULL);
        ck_assert_msg(st == 202 || st == 503, "POST answered %ld", st);
        if (st == 202) {
            back = now_s() - t_kill;
            break;
        }
        answered_503++;
        tu_sleep_ms(2);
    }
    fprintf(stderr, "failover to the next URL: posts accepted again %.0f ms after the node died (%d answered 503)\n",
            back * 1000, answered_503);
    ck_assert_msg(back > 0 && back < 1.0, "posts accepted again after %.3f s", back);
    proxy_kill(&p1);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* A node that stops answering with its connections open (SIGSTOP): the overdue confirm gives it
 * away, the post waiting for it is answered 503, and the api goes on with the next node. */
START_TEST(test_stalled_node_is_left_after_the_confirm_deadline)
{
    static char env_url[700];
    char real[512], node[200];
    proxy_t p1;
    snprintf(real, sizeof(real), "%s", getenv("SLUICE_AMQP_URL"));
    proxy_start(&p1, 0, broker_port());
    tu_stack_init(&S, "amqpstall", 100000);
    snprintf(env_url, sizeof(env_url), "SLUICE_AMQP_URL=amqp://guest:guest@127.0.0.1:%d/,%s", p1.port, real);
    const char *env[] = {env_url, NULL};
    tu_start(&S, "persister", NULL);
    tu_start(&S, "api", env);
    snprintf(node, sizeof(node), "event=amqp_connected conn=\"sluice-api\" node=amqp://guest@127.0.0.1:%d/", p1.port);
    ck_assert(tu_log_contains(&S, "api", node));
    ck_assert_int_eq(post_one(NULL), 202);
    p1.paused = 1;
    double t0 = now_s(), took;
    ck_assert_int_eq(post_one(NULL), 503);
    took = now_s() - t0;
    double t1 = now_s(), back = 0;
    while (now_s() - t1 < 5) {
        if (post_one(NULL) == 202) {
            back = now_s() - t1;
            break;
        }
        tu_sleep_ms(5);
    }
    fprintf(stderr, "stalled node: the post waiting on it answered 503 after %.0f ms; 202 again %.0f ms later\n",
            took * 1000, back * 1000);
    ck_assert_msg(took >= 4.5 && took < 8, "503 after %.3f s", took);
    ck_assert_msg(back > 0 && back < 2, "202 again after %.3f s", back);
    ck_assert(tu_log_contains(&S, "api", "no confirm within"));
    proxy_kill(&p1);
    PGconn *db = tu_db(&S);
    ck_assert_int_ge(tu_wait_rows(db, 2, 20000), 2);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* A post of about 2 KB (500 four-byte characters). */
static void body_big(int i, char *buf, size_t size)
{
    int n = snprintf(buf, size, "{\"channel\":\"general\",\"author\":\"big%d\",\"text\":\"", i % 37);
    for (int k = 0; k < 500 && (size_t)n + 5 < size; k++)
        n += snprintf(buf + n, size - (size_t)n, "\xf0\x9d\x84\x9e");
    snprintf(buf + n, size - (size_t)n, "\"}");
}

struct flood {
    int n, parallel;
    long *status;
    char (*ids)[37];
};

static void *flood_run(void *arg)
{
    struct flood *f = arg;
    tu_post_many(post_url(), f->n, f->parallel, body_big, f->status, f->ids, NULL, NULL);
    return NULL;
}

/* A node that stops reading while posts pour in: the api's send buffer to it fills. rabbitmq-c
 * writes with no deadline, so a publish into a full buffer would block the event loop until the
 * node read again; instead the publisher holds the batch back while the buffer has no room
 * (posts meanwhile get 503), and /healthz keeps answering in milliseconds throughout. Nothing
 * answered 202 is lost. */
START_TEST(test_node_that_stops_reading_never_blocks_the_loop)
{
    enum { N = 6000 };
    static long status[N];
    static char ids[N][37];
    static char env_url[700];
    char real[512], hurl[160];
    proxy_t p1;
    snprintf(real, sizeof(real), "%s", getenv("SLUICE_AMQP_URL"));
    proxy_start(&p1, 0, broker_port());
    tu_stack_init(&S, "amqpfull", 100000);
    snprintf(env_url, sizeof(env_url), "SLUICE_AMQP_URL=amqp://guest:guest@127.0.0.1:%d/,%s", p1.port, real);
    const char *env[] = {env_url, "SLUICE_MAX_CONNS_PER_CLIENT=0", NULL}; /* the flood and /healthz share an address */
    tu_start(&S, "persister", NULL);
    tu_start(&S, "api", env);
    ck_assert_int_eq(post_one(NULL), 202);
    p1.paused = 1;
    struct flood f = {N, 3000, status, ids}; /* over 6 MB in flight: more than the socket buffers hold */
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, flood_run, &f), 0);
    snprintf(hurl, sizeof(hurl), "%s/healthz", S.base);
    double worst = 0, t0 = now_s();
    long saw_waits = 0;
    while (now_s() - t0 < 8) {
        tu_resp_t r;
        double a = now_s();
        int got = tu_http("GET", hurl, NULL, NULL, NULL, 0, &r);
        double took = now_s() - a;
        worst = took > worst ? took : worst;
        ck_assert_msg(got == 0 && r.status == 200, "/healthz did not answer while the node stalled (%d, %ld, %.3f s)", got, got == 0 ? r.status : 0L, took);
        tu_resp_free(&r);
        tu_sleep_ms(20);
    }
    p1.paused = 0;
    pthread_join(t, NULL);
    {
        tu_resp_t r;
        char murl[160];
        snprintf(murl, sizeof(murl), "%s/metrics", S.base);
        ck_assert_int_eq(tu_http("GET", murl, NULL, NULL, NULL, 0, &r), 0);
        const char *w = strstr(r.body, "\nsluice_api_publish_send_waits_total ");
        saw_waits = w != NULL ? atol(w + strlen("\nsluice_api_publish_send_waits_total ")) : -1;
        tu_resp_free(&r);
    }
    long accepted = 0, refused = 0;
    for (int i = 0; i < N; i++) {
        accepted += status[i] == 202;
        refused += status[i] == 503;
    }
    fprintf(stderr, "node that stops reading: worst /healthz %.0f ms; %ld of %d posts accepted, %ld refused 503; "
                    "%ld batches held back for room\n", worst * 1000, accepted, N, refused, saw_waits);
    ck_assert_msg(worst < 1.0, "/healthz took %.3f s while the node stalled", worst);
    ck_assert_msg(saw_waits > 0, "the send buffer never filled: the test did not test it");
    ck_assert_int_eq(accepted + refused, N);
    proxy_kill(&p1);
    PGconn *db = tu_db(&S);
    ck_assert_int_ge(tu_wait_rows(db, accepted + 1, 30000), accepted + 1);
    for (int i = 0; i < N; i++) {
        if (status[i] != 202)
            continue;
        char sql[160];
        int len = snprintf(sql, sizeof(sql), "SELECT count(*) FROM messages WHERE id = '%.36s'", ids[i]);
        ck_assert(len > 0 && (size_t)len < sizeof(sql));
        ck_assert_msg(tu_scalar(db, sql) == 1, "accepted id %.36s not stored once", ids[i]);
    }
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

/* The sse service's live feed moves too, declares its queue on the new node, and the hub fills
 * what was published while it moved: a stream sees every message, in order. */
START_TEST(test_live_feed_moves_and_stream_has_no_gap)
{
    static char env_url[700];
    char real[512];
    proxy_t p1;
    snprintf(real, sizeof(real), "%s", getenv("SLUICE_AMQP_URL"));
    proxy_start(&p1, 0, broker_port());
    tu_stack_init(&S, "amqpsse", 100000);
    snprintf(env_url, sizeof(env_url), "SLUICE_AMQP_URL=amqp://guest:guest@127.0.0.1:%d/,%s", p1.port, real);
    const char *sse_env[] = {env_url, "SLUICE_SSE_CHECK_MS=200", NULL};
    tu_start(&S, "persister", NULL);
    tu_start(&S, "api", NULL);
    tu_start(&S, "sse", sse_env);
    tu_stream_t st;
    ck_assert_int_eq(tu_stream_open(&st, S.sse_port, "/v1/stream?history=0&format=ndjson", NULL, 5000), 0);
    ck_assert_int_eq(st.status, 200);
    long long want = 0;
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 20; i++)
            ck_assert_int_eq(post_one(NULL), 202);
        if (round == 0) {
            tu_sleep_ms(100);
            proxy_kill(&p1); /* the feed's node dies; posts go on */
        }
    }
    want = 40;
    long long last = 0;
    double t0 = now_s();
    while (last < want && now_s() - t0 < 20) {
        tu_sev_t ev;
        int r = tu_stream_next(&st, &ev, 1000);
        ck_assert_int_ge(r, 0);
        if (r == 1 && ev.kind == TU_EV_MESSAGE) {
            ck_assert_msg(ev.seq == last + 1, "seq %lld after %lld", ev.seq, last);
            last = ev.seq;
        }
    }
    ck_assert_msg(last == want, "the stream got up to %lld of %lld", last, want);
    char node[200];
    ck_assert(tu_log_contains(&S, "sse", "event=amqp_connection_lost conn=\"sluice-sse"));
    snprintf(node, sizeof(node), "node=amqp://guest@127.0.0.1:%d/", broker_port());
    ck_assert(tu_log_contains(&S, "sse", node));
    tu_stream_close(&st);
    tu_stack_cleanup(&S);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("amqp_failover");
    TCase *tc = tcase_create("integration");
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, test_dead_first_node_is_skipped);
    tcase_add_test(tc, test_black_hole_first_node_keeps_the_loop_free);
    tcase_add_test(tc, test_lost_connection_moves_to_the_next_node);
    tcase_add_test(tc, test_stalled_node_is_left_after_the_confirm_deadline);
    tcase_add_test(tc, test_node_that_stops_reading_never_blocks_the_loop);
    tcase_add_test(tc, test_live_feed_moves_and_stream_has_no_gap);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
