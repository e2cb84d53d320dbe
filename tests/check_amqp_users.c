/*
 * Integration tests of the services' RabbitMQ users (scripts/amqp_users.sh, made by servers.sh,
 * whose `env` test.sh exports as SLUICE_AMQP_URL_API, _INGEST, _PERSISTER, _SSE): what each may
 * and may not do to the real topology (sluice.persist, sluice.dlx, sluice.live, sluice.presence), and the passive
 * declares of SLUICE_AMQP_DECLARE=passive, with which the api and sse wait for the persister, the
 * topology's owner, to declare it.
 *
 * These use the default names, shared with nobody else in the suite (every other test has queue
 * and exchange names of its own, see tu_stack_init); test_passive_services_wait_for_the_owner
 * deletes and redeclares them.
 */
#include <amqp.h>
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "sl_amqp.h"
#include "sl_testutil.h"
#include "sl_testsuite.h"

#define PERSIST "sluice.persist"
#define LIVE "sluice.live"
#define DLX "sluice.dlx"
#define PRESENCE "sluice.presence"
#define MAX_LENGTH 100000 /* SLUICE_QUEUE_MAX_LENGTH's default, as tu_stack_init below */

static tu_stack_t S;

static const char *url_of(const char *var)
{
    const char *v = getenv(var);
    ck_assert_msg(v != NULL && *v != '\0', "%s is not set: run the tests through ./test.sh (scripts/servers.sh env)", var);
    return v;
}

static amqp_connection_state_t open_as(const char *var)
{
    char err[512];
    amqp_connection_state_t c = sl_amqp_open(url_of(var), "check_amqp_users", 0, 5000, err, sizeof(err));
    ck_assert_msg(c != NULL, "%s: %s", var, err);
    return c;
}

static amqp_channel_t next_channel = SL_AMQP_CHANNEL + 1;

static amqp_channel_t open_channel(amqp_connection_state_t c)
{
    amqp_channel_t ch = next_channel++;
    amqp_channel_open(c, ch);
    ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    return ch;
}

/* The outcome of the RPC just made on ch: 200, or the code of the broker's channel.close (403
 * ACCESS_REFUSED, 404 NOT_FOUND...), answered with close-ok; -1 when the connection failed. An
 * open channel is closed. */
static int rpc_outcome(amqp_connection_state_t c, amqp_channel_t ch)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
    if (r.reply_type == AMQP_RESPONSE_NORMAL) {
        amqp_channel_close(c, ch, AMQP_REPLY_SUCCESS);
        ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
        return 200;
    }
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        int code = ((amqp_channel_close_t *)r.reply.decoded)->reply_code;
        amqp_channel_close_ok_t ok;
        ck_assert_int_eq(amqp_send_method(c, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok), AMQP_STATUS_OK);
        return code;
    }
    return -1;
}

enum op { DECLARE_QUEUE, PASSIVE_QUEUE, DELETE_QUEUE, PURGE_QUEUE, CONSUME, DECLARE_EXCHANGE, PASSIVE_EXCHANGE,
          DELETE_EXCHANGE, OWN_QUEUE_BOUND };

/* Does op on name on a channel of its own; returns rpc_outcome. */
static int try_op(amqp_connection_state_t c, enum op op, const char *name)
{
    amqp_channel_t ch = open_channel(c);
    amqp_bytes_t n = amqp_cstring_bytes(name);
    switch (op) {
    case DECLARE_QUEUE:
    case PASSIVE_QUEUE:
        amqp_queue_declare(c, ch, n, op == PASSIVE_QUEUE, 1, 0, 0, amqp_empty_table);
        break;
    case DELETE_QUEUE:
        amqp_queue_delete(c, ch, n, 0, 0);
        break;
    case PURGE_QUEUE:
        amqp_queue_purge(c, ch, n);
        break;
    case CONSUME:
        amqp_basic_consume(c, ch, n, amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
        break;
    case DECLARE_EXCHANGE:
    case PASSIVE_EXCHANGE:
        amqp_exchange_declare(c, ch, n, amqp_cstring_bytes("topic"), op == PASSIVE_EXCHANGE, 1, 0, 0, amqp_empty_table);
        break;
    case DELETE_EXCHANGE:
        amqp_exchange_delete(c, ch, n, 0);
        break;
    case OWN_QUEUE_BOUND: { /* what sse does: a server-named exclusive queue, bound to name, consumed */
        amqp_queue_declare_ok_t *q = amqp_queue_declare(c, ch, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
        if (q == NULL)
            break;
        amqp_bytes_t queue = amqp_bytes_malloc_dup(q->queue);
        ck_assert_int_eq(strncmp((const char *)queue.bytes, "amq.gen-", 8), 0);
        amqp_queue_bind(c, ch, queue, n, amqp_cstring_bytes("#"), amqp_empty_table);
        if (amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL)
            amqp_basic_consume(c, ch, queue, amqp_empty_bytes, 0, 1, 1, amqp_empty_table);
        amqp_bytes_free(queue);
    } break;
    }
    return rpc_outcome(c, ch);
}

/* Publishes one message to exchange with key on a channel of its own in confirm mode; returns 200
 * for the broker's ack, 0 for a nack, the code of the channel.close it answered with (403...), or
 * -1 when nothing came within 5 s. */
static int publish_outcome(amqp_connection_state_t c, const char *exchange, const char *key)
{
    amqp_channel_t ch = open_channel(c);
    amqp_confirm_select(c, ch);
    ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    ck_assert_int_eq(amqp_basic_publish(c, ch, amqp_cstring_bytes(exchange), amqp_cstring_bytes(key), 0, 0, NULL,
                                        amqp_cstring_bytes("{\"forged\":true}")),
                     AMQP_STATUS_OK);
    for (;;) {
        amqp_frame_t f;
        struct timeval tv = {5, 0};
        if (amqp_simple_wait_frame_noblock(c, &f, &tv) != AMQP_STATUS_OK)
            return -1;
        if (f.channel != ch || f.frame_type != AMQP_FRAME_METHOD)
            continue;
        switch (f.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD:
        case AMQP_BASIC_NACK_METHOD: {
            int code = f.payload.method.id == AMQP_BASIC_ACK_METHOD ? 200 : 0;
            amqp_channel_close(c, ch, AMQP_REPLY_SUCCESS);
            ck_assert_int_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
            return code;
        }
        case AMQP_CHANNEL_CLOSE_METHOD: {
            int code = ((amqp_channel_close_t *)f.payload.method.decoded)->reply_code;
            amqp_channel_close_ok_t ok;
            ck_assert_int_eq(amqp_send_method(c, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok), AMQP_STATUS_OK);
            return code;
        }
        default:
            break;
        }
    }
}

/* The topology as the persister declares it, as guest (who may do anything). */
static void declare_topology_as_guest(void)
{
    char err[512];
    sl_amqp_topology_t t = {.persist_queue = PERSIST, .max_length = MAX_LENGTH, .live_exchange = LIVE,
                            .presence_exchange = PRESENCE, .dead_exchange = DLX, .role = SL_AMQP_ROLE_OWNER,
                            .passive = 0};
    amqp_connection_state_t c = open_as("SLUICE_AMQP_URL");
    ck_assert_msg(sl_amqp_declare(c, &t, err, sizeof(err)) == 0, "%s", err);
    sl_amqp_close(c);
}

static void purge_persist_as_guest(void)
{
    amqp_connection_state_t c = open_as("SLUICE_AMQP_URL");
    ck_assert_int_eq(try_op(c, PURGE_QUEUE, PERSIST), 200);
    sl_amqp_close(c);
}

START_TEST(test_publisher_users_reach_the_persist_queue_only)
{
    static const char *const users[] = {"SLUICE_AMQP_URL_API", "SLUICE_AMQP_URL_INGEST"};
    declare_topology_as_guest();
    for (size_t i = 0; i < 2; i++) {
        amqp_connection_state_t c = open_as(users[i]);
        /* a forged feed event: refused, the channel closed with 403 ACCESS_REFUSED */
        ck_assert_int_eq(publish_outcome(c, LIVE, SL_LIVE_ROUTING_KEY), AMQP_ACCESS_REFUSED);
        ck_assert_int_eq(publish_outcome(c, DLX, PERSIST), AMQP_ACCESS_REFUSED);
        ck_assert_int_eq(publish_outcome(c, PRESENCE, ""), AMQP_ACCESS_REFUSED); /* forged presence */
        /* the topology is not theirs to make, change, delete or read */
        ck_assert_int_eq(try_op(c, DECLARE_QUEUE, PERSIST), AMQP_ACCESS_REFUSED);
        ck_assert_int_eq(try_op(c, DELETE_QUEUE, PERSIST), AMQP_ACCESS_REFUSED);
        ck_assert_int_eq(try_op(c, PURGE_QUEUE, PERSIST), AMQP_ACCESS_REFUSED);
        ck_assert_int_eq(try_op(c, CONSUME, PERSIST), AMQP_ACCESS_REFUSED);
        ck_assert_int_eq(try_op(c, DECLARE_EXCHANGE, LIVE), AMQP_ACCESS_REFUSED);
        ck_assert_int_eq(try_op(c, DELETE_EXCHANGE, LIVE), AMQP_ACCESS_REFUSED);
        ck_assert_int_eq(try_op(c, DELETE_EXCHANGE, PRESENCE), AMQP_ACCESS_REFUSED);
        ck_assert_int_eq(try_op(c, OWN_QUEUE_BOUND, PRESENCE), AMQP_ACCESS_REFUSED);
        /* what the publisher does under SLUICE_AMQP_DECLARE=passive: allowed */
        ck_assert_int_eq(try_op(c, PASSIVE_QUEUE, PERSIST), 200);
        ck_assert_int_eq(publish_outcome(c, "", PERSIST), 200);
        sl_amqp_close(c);
    }
    purge_persist_as_guest();
}
END_TEST

START_TEST(test_sse_user_only_reads)
{
    declare_topology_as_guest();
    amqp_connection_state_t c = open_as("SLUICE_AMQP_URL_SSE");
    ck_assert_int_eq(publish_outcome(c, LIVE, SL_LIVE_ROUTING_KEY), AMQP_ACCESS_REFUSED);
    ck_assert_int_eq(publish_outcome(c, "", PERSIST), AMQP_ACCESS_REFUSED);
    ck_assert_int_eq(try_op(c, DECLARE_EXCHANGE, LIVE), AMQP_ACCESS_REFUSED);
    ck_assert_int_eq(try_op(c, DELETE_EXCHANGE, LIVE), AMQP_ACCESS_REFUSED);
    ck_assert_int_eq(try_op(c, CONSUME, PERSIST), AMQP_ACCESS_REFUSED);
    ck_assert_int_eq(try_op(c, PASSIVE_EXCHANGE, LIVE), 200);
    ck_assert_int_eq(try_op(c, OWN_QUEUE_BOUND, LIVE), 200);
    /* presence: it publishes its snapshots and reads everyone's through a queue of its own, and
     * the exchange is the persister's to make */
    ck_assert_int_eq(try_op(c, PASSIVE_EXCHANGE, PRESENCE), 200);
    ck_assert_int_eq(try_op(c, OWN_QUEUE_BOUND, PRESENCE), 200);
    ck_assert_int_eq(publish_outcome(c, PRESENCE, ""), 200);
    ck_assert_int_eq(try_op(c, DECLARE_EXCHANGE, PRESENCE), AMQP_ACCESS_REFUSED);
    ck_assert_int_eq(try_op(c, DELETE_EXCHANGE, PRESENCE), AMQP_ACCESS_REFUSED);
    sl_amqp_close(c);
}
END_TEST

/* Deletes the topology (as guest): the services must find it missing. 404 counts as deleted. */
static void delete_topology_as_guest(void)
{
    amqp_connection_state_t c = open_as("SLUICE_AMQP_URL");
    int r;
    r = try_op(c, DELETE_QUEUE, PERSIST);
    ck_assert_msg(r == 200 || r == 404, "delete %s: %d", PERSIST, r);
    r = try_op(c, DELETE_QUEUE, PERSIST ".dead");
    ck_assert_msg(r == 200 || r == 404, "delete %s.dead: %d", PERSIST, r);
    r = try_op(c, DELETE_EXCHANGE, DLX);
    ck_assert_msg(r == 200 || r == 404, "delete %s: %d", DLX, r);
    r = try_op(c, DELETE_EXCHANGE, LIVE);
    ck_assert_msg(r == 200 || r == 404, "delete %s: %d", LIVE, r);
    r = try_op(c, DELETE_EXCHANGE, PRESENCE);
    ck_assert_msg(r == 200 || r == 404, "delete %s: %d", PRESENCE, r);
    ck_assert_int_eq(try_op(c, PASSIVE_QUEUE, PERSIST), 404);
    ck_assert_int_eq(try_op(c, PASSIVE_EXCHANGE, LIVE), 404);
    ck_assert_int_eq(try_op(c, PASSIVE_EXCHANGE, PRESENCE), 404);
    sl_amqp_close(c);
}

START_TEST(test_persister_user_owns_the_topology)
{
    char err[512];
    sl_amqp_topology_t t = {.persist_queue = PERSIST, .max_length = MAX_LENGTH, .live_exchange = LIVE,
                            .presence_exchange = PRESENCE, .dead_exchange = DLX, .role = SL_AMQP_ROLE_OWNER,
                            .passive = 1};
    delete_topology_as_guest();
    amqp_connection_state_t c = open_as("SLUICE_AMQP_URL_PERSISTER");
    /* the owner declares everything, passive or not */
    ck_assert_msg(sl_amqp_declare(c, &t, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(try_op(c, PASSIVE_QUEUE, PERSIST), 200);
    ck_assert_int_eq(try_op(c, PASSIVE_QUEUE, PERSIST ".dead"), 200); /* its failure is only logged: look */
    ck_assert_int_eq(try_op(c, PASSIVE_EXCHANGE, DLX), 200);
    ck_assert_int_eq(try_op(c, PASSIVE_EXCHANGE, LIVE), 200);
    ck_assert_int_eq(try_op(c, PASSIVE_EXCHANGE, PRESENCE), 200);
    ck_assert_int_eq(publish_outcome(c, LIVE, SL_LIVE_ROUTING_KEY), 200);
    ck_assert_int_eq(publish_outcome(c, PRESENCE, ""), AMQP_ACCESS_REFUSED); /* the sse instances' alone */
    ck_assert_int_eq(publish_outcome(c, "", PERSIST), AMQP_ACCESS_REFUSED); /* it feeds nothing back */
    ck_assert_int_eq(try_op(c, DECLARE_EXCHANGE, "sluice.other"), AMQP_ACCESS_REFUSED);
    sl_amqp_close(c);
}
END_TEST

static int log_count(const char *service, const char *text)
{
    char path[700], line[4096];
    int n = 0;
    snprintf(path, sizeof(path), "%s/%s-%s.log", SLUICE_TEST_LOG_DIR, S.name, service);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f) != NULL)
        n += strstr(line, text) != NULL;
    fclose(f);
    return n;
}

static long post(const char *text)
{
    char url[128], body[160];
    tu_resp_t r;
    snprintf(url, sizeof(url), "%s/v1/messages", S.base);
    snprintf(body, sizeof(body), "{\"author\":\"alice\",\"text\":\"%s\"}", text);
    ck_assert_int_eq(tu_http("POST", url, NULL, "application/json", body, strlen(body), &r), 0);
    long status = r.status;
    tu_resp_free(&r);
    return status;
}

START_TEST(test_passive_services_wait_for_the_owner)
{
    char api_url[600], sse_url[600], persister_url[600], ready[128];
    /* each service with its own user, as run.sh starts them, on the real names */
    snprintf(api_url, sizeof(api_url), "SLUICE_AMQP_URL=%s", url_of("SLUICE_AMQP_URL_API"));
    snprintf(sse_url, sizeof(sse_url), "SLUICE_AMQP_URL=%s", url_of("SLUICE_AMQP_URL_SSE"));
    snprintf(persister_url, sizeof(persister_url), "SLUICE_AMQP_URL=%s", url_of("SLUICE_AMQP_URL_PERSISTER"));
    const char *api_env[] = {api_url, "SLUICE_AMQP_DECLARE=passive", "SLUICE_QUEUE=" PERSIST,
                             "SLUICE_LIVE_EXCHANGE=" LIVE, "SLUICE_PRESENCE_EXCHANGE=" PRESENCE, NULL};
    const char *sse_env[] = {sse_url, "SLUICE_AMQP_DECLARE=passive", "SLUICE_QUEUE=" PERSIST,
                             "SLUICE_LIVE_EXCHANGE=" LIVE, "SLUICE_PRESENCE_EXCHANGE=" PRESENCE, NULL};
    /* passive does not concern the owner: it declares all the same */
    const char *persister_env[] = {persister_url, "SLUICE_AMQP_DECLARE=passive", "SLUICE_QUEUE=" PERSIST,
                                   "SLUICE_LIVE_EXCHANGE=" LIVE, "SLUICE_PRESENCE_EXCHANGE=" PRESENCE, NULL};

    delete_topology_as_guest();
    tu_stack_init(&S, "amqpusers", MAX_LENGTH);
    tu_wait_amqp_ms = 0; /* they cannot be up before the persister */
    tu_start(&S, "api", api_env);
    tu_start(&S, "sse", sse_env);

    /* Without the topology: 503, "amqp":"down", one amqp_topology_missing line however many
     * attempts (the api retries every 0.5 s at most, sse every 2 s). */
    for (int waited = 0; waited < 10000 && (log_count("api", "event=amqp_topology_missing") == 0 ||
                                            log_count("sse", "event=amqp_topology_missing") == 0);
         waited += 100)
        tu_sleep_ms(100);
    ck_assert_int_eq(log_count("api", "event=amqp_topology_missing"), 1);
    ck_assert_int_eq(log_count("sse", "event=amqp_topology_missing"), 1);
    /* sl_amqploop logs the failed attempts of the first two rounds, then one in 20; by 3 s later
     * the api (backoff up to 0.5 s) has tried about six times more, sse (2 s) once or twice */
    for (int waited = 0; waited < 10000 && (log_count("api", "event=amqp_connect_failed") < 2 ||
                                            log_count("sse", "event=amqp_connect_failed") < 2);
         waited += 100)
        tu_sleep_ms(100);
    ck_assert_int_ge(log_count("api", "event=amqp_connect_failed"), 2);
    ck_assert_int_ge(log_count("sse", "event=amqp_connect_failed"), 2);
    tu_sleep_ms(3000);
    ck_assert_int_eq(log_count("sse", "event=amqp_topology_missing"), 1);
    ck_assert_int_eq(log_count("api", "event=amqp_topology_missing"), 1);
    snprintf(ready, sizeof(ready), "%s/readyz", S.base);
    tu_resp_t r;
    ck_assert_int_eq(tu_http("GET", ready, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 503);
    ck_assert_ptr_nonnull(strstr(r.body, "\"amqp\":\"down\""));
    tu_resp_free(&r);
    ck_assert_int_eq(post("before the persister"), 503);

    /* The owner declares it; both go on by themselves. */
    tu_start(&S, "persister", persister_env);
    ck_assert_msg(tu_wait_status(ready, 200, 20000), "the api is not ready 20 s after the persister started");
    char sse_ready[128];
    snprintf(sse_ready, sizeof(sse_ready), "http://127.0.0.1:%d/readyz", S.sse_port);
    ck_assert_msg(tu_wait_status(sse_ready, 200, 20000), "sse is not ready 20 s after the persister started");
    ck_assert_int_eq(log_count("api", "event=amqp_topology_found"), 1);
    ck_assert_int_eq(log_count("sse", "event=amqp_topology_found"), 1);
    /* sse publishes its presence snapshots as its own user (a refused publish would close the
     * channel: the connection would be lost and made again) */
    char metrics[128];
    snprintf(metrics, sizeof(metrics), "http://127.0.0.1:%d/metrics", S.sse_port);
    int sent = 0;
    for (int waited = 0; waited < 10000 && !sent; waited += 200) {
        ck_assert_int_eq(tu_http("GET", metrics, NULL, NULL, NULL, 0, &r), 0);
        const char *line = strstr(r.body, "sluice_sse_presence_snapshots_total{outcome=\"sent\"} ");
        sent = line != NULL && atof(line + strlen("sluice_sse_presence_snapshots_total{outcome=\"sent\"} ")) >= 2;
        tu_resp_free(&r);
        if (!sent)
            tu_sleep_ms(200);
    }
    ck_assert_msg(sent, "sse published no presence snapshot as sluice-sse");
    ck_assert_int_eq(log_count("sse", "ACCESS_REFUSED"), 0);
    ck_assert_int_eq(log_count("sse", "event=amqp_connection_lost"), 0);
    ck_assert_int_eq(log_count("persister", "amqp_dead_queue_unavailable"), 0);
    ck_assert_int_eq(post("after the persister"), 202);
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 1, 20000), 1);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE body = 'after the persister'"), 1);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("amqp_users");
    TCase *tc = tcase_create("users");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_publisher_users_reach_the_persist_queue_only);
    tcase_add_test(tc, test_sse_user_only_reads);
    tcase_add_test(tc, test_persister_user_owns_the_topology);
    tcase_add_test(tc, test_passive_services_wait_for_the_owner);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
