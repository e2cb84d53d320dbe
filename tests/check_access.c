/*
 * Integration tests of access control and abuse limits: writer tokens on the api (401/403), the
 * per-client rate limit (429 with Retry-After, apart from the broker's back pressure), the admin
 * token on ingest's control endpoint, and refused configurations.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sl_testutil.h"

static tu_stack_t S;

static long post_as(const char *header, const char *author, tu_resp_t *r)
{
    char url[128], body[160];
    snprintf(url, sizeof(url), "%s/v1/messages", S.base);
    snprintf(body, sizeof(body), "{\"author\":\"%s\",\"text\":\"hello from %s\"}", author, author);
    ck_assert_int_eq(tu_http("POST", url, header, "application/json", body, strlen(body), r), 0);
    return r->status;
}

START_TEST(test_writer_tokens)
{
    const char *env[] = {"SLUICE_API_TOKENS=alice-token-0001:alice,bot-token-00001:*", NULL};
    tu_resp_t r;
    tu_stack_init(&S, "tokens", 100000);
    tu_start(&S, "persister", NULL);
    tu_start(&S, "api", env);

    ck_assert_int_eq(post_as(NULL, "alice", &r), 401);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"unauthorized\""));
    tu_resp_free(&r);
    ck_assert_int_eq(post_as("Authorization: Bearer not-a-known-token", "alice", &r), 401);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"invalid_token\""));
    tu_resp_free(&r);
    ck_assert_int_eq(post_as("Authorization: Basic YWxpY2U6eA==", "alice", &r), 401);
    tu_resp_free(&r);
    /* a valid token, used for another author */
    ck_assert_int_eq(post_as("Authorization: Bearer alice-token-0001", "bob", &r), 403);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"forbidden\""));
    tu_resp_free(&r);
    ck_assert_int_eq(post_as("Authorization: Bearer alice-token-0001", "alice", &r), 202);
    tu_resp_free(&r);
    ck_assert_int_eq(post_as("Authorization: bearer bot-token-00001", "anyone", &r), 202);
    tu_resp_free(&r);
    /* a bad body with a good token is still a 400, a good body without a token still a 401 */
    char url[128];
    snprintf(url, sizeof(url), "%s/v1/messages", S.base);
    ck_assert_int_eq(tu_http("POST", url, "Authorization: Bearer alice-token-0001", "application/json", "{", 1, &r), 0);
    ck_assert_int_eq(r.status, 400);
    tu_resp_free(&r);
    /* reads stay open */
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    tu_resp_free(&r);

    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 2, 20000), 2);

    /* the bot posts with its token (author *), and gets nowhere without it */
    char cmd[1024];
    const char *bindir = getenv("SLUICE_BIN_DIR");
    for (int with = 1; with >= 0; with--) {
        snprintf(cmd, sizeof(cmd),
                 "env %s timeout 60 %s/sluice-bot --api-url=%s --count=5 --rate=50 --summary-interval=60 "
                 ">/dev/null 2>&1",
                 with ? "SLUICE_BOT_TOKEN=bot-token-00001" : "", bindir != NULL ? bindir : ".", S.base);
        int st = system(cmd);
        ck_assert_msg(WIFEXITED(st), "the bot did not exit");
    }
    ck_assert_int_eq(tu_wait_rows(db, 7, 20000), 7);
    tu_sleep_ms(300);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), 7);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE source = 'bot'"), 5);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

START_TEST(test_tokens_file_and_bad_configuration)
{
    char path[] = "/tmp/sluice-tokens-XXXXXX", env_file[128];
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char *text = "# writers\ncarol-token-0001 carol\n\n  dave-token-00001   dave  \n";
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    snprintf(env_file, sizeof(env_file), "SLUICE_API_TOKENS_FILE=%s", path);
    const char *env[] = {env_file, NULL};
    tu_resp_t r;
    tu_stack_init(&S, "tokfile", 100000);
    tu_start(&S, "api", env);
    ck_assert_int_eq(post_as("Authorization: Bearer dave-token-00001", "dave", &r), 202);
    tu_resp_free(&r);
    ck_assert_int_eq(post_as("Authorization: Bearer dave-token-00001", "carol", &r), 403);
    tu_resp_free(&r);
    tu_stack_cleanup(&S);
    unlink(path);

    /* configurations the api refuses to start with: exit status 2 and a reason */
    const char *bad[] = {"SLUICE_API_TOKENS=short:alice", "SLUICE_API_TOKENS=no-author-here-123",
                         "SLUICE_API_TOKENS_FILE=/nonexistent/tokens", "SLUICE_API_CLIENT_RATE=-1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char cmd[512];
        const char *bindir = getenv("SLUICE_BIN_DIR");
        snprintf(cmd, sizeof(cmd), "env %s SLUICE_API_PORT=1 timeout 10 %s/sluice-api >/dev/null 2>&1", bad[i],
                 bindir != NULL ? bindir : ".");
        int st = system(cmd);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 2, "%s: exit status %d", bad[i],
                      WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
}
END_TEST

START_TEST(test_per_client_rate_limit)
{
    const char *env[] = {"SLUICE_API_CLIENT_RATE=5", "SLUICE_API_CLIENT_BURST=5", NULL};
    char url[128];
    tu_resp_t r;
    int ok = 0, limited = 0;
    tu_stack_init(&S, "ratelimit", 100000);
    tu_start(&S, "api", env);
    snprintf(url, sizeof(url), "%s/v1/messages?limit=1", S.base);
    for (int i = 0; i < 20; i++) {
        ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
        if (r.status == 429) {
            limited++;
            ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"rate_limited\""));
            ck_assert_int_ge(atoi(r.retry_after), 1);
        } else {
            ck_assert_int_eq(r.status, 200);
            ok++;
        }
        tu_resp_free(&r);
    }
    /* the burst, plus what refilled meanwhile (5/s) */
    ck_assert_msg(ok >= 5 && ok <= 9, "%d allowed", ok);
    ck_assert_int_eq(ok + limited, 20);
    /* another client (here: another token) has its own bucket */
    ck_assert_int_eq(tu_http("GET", url, "Authorization: Bearer someone-else-1", NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    tu_resp_free(&r);
    /* health and metrics are not limited, and the refusals are counted */
    char murl[128];
    snprintf(murl, sizeof(murl), "%s/metrics", S.base);
    ck_assert_int_eq(tu_http("GET", murl, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    char want[64];
    snprintf(want, sizeof(want), "sluice_api_rate_limited_total %d\n", limited);
    ck_assert_msg(strstr(r.body, want) != NULL, "metrics lack %s", want);
    tu_resp_free(&r);
    /* the bucket refills */
    tu_sleep_ms(1100);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    tu_resp_free(&r);
    tu_stack_cleanup(&S);
}
END_TEST

START_TEST(test_ingest_control_needs_admin_token)
{
    int port = 0;
    const char *env[] = {"SLUICE_ADMIN_TOKEN=admin-secret-token", "SLUICE_MASTODON_URL=http://127.0.0.1:1",
                         "SLUICE_INGEST_AUTOSTART=0", "SLUICE_OPS_LOOPBACK_ONLY=1", NULL};
    char url[128];
    tu_resp_t r;
    tu_stack_init(&S, "admin", 100000);
    pid_t pid = tu_start_at(&S, "ingest", &port, env);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/ingest", port);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 401);
    tu_resp_free(&r);
    ck_assert_int_eq(tu_http("POST", url, "Authorization: Bearer wrong-token-xyz", "application/json",
                             "{\"command\":\"stop\"}", 18, &r),
                     0);
    ck_assert_int_eq(r.status, 401);
    ck_assert_ptr_nonnull(strstr(r.body, "invalid_token"));
    tu_resp_free(&r);
    ck_assert_int_eq(tu_http("GET", url, "Authorization: Bearer admin-secret-token", NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    tu_resp_free(&r);
    ck_assert_int_eq(tu_http("POST", url, "Authorization: Bearer admin-secret-token", "application/json",
                             "{\"command\":\"stop\"}", 18, &r),
                     0);
    ck_assert_int_lt(r.status, 300);
    tu_resp_free(&r);
    /* operators' endpoints, from loopback, still answer with SLUICE_OPS_LOOPBACK_ONLY=1 */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", port);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    tu_resp_free(&r);
    ck_assert_int_eq(tu_stop(&pid, SIGTERM, 15000), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("access");
    TCase *tc = tcase_create("integration");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_writer_tokens);
    tcase_add_test(tc, test_tokens_file_and_bad_configuration);
    tcase_add_test(tc, test_per_client_rate_limit);
    tcase_add_test(tc, test_ingest_control_needs_admin_token);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
