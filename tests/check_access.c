/*
 * Integration tests of access control and abuse limits: writer tokens on the api (401/403), JWT
 * writers (HS256, RS256 from a JWKS reloaded on SIGHUP; sub as the author, channels), the
 * per-client rate limit (429 with Retry-After, apart from the broker's back pressure), the admin
 * token on ingest's control endpoint, connections per client address (every HTTP service),
 * slow senders of request headers, and refused configurations.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <jose/jwk.h>
#include <jose/openssl.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <signal.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sl_testjwt.h"
#include "sl_testnet.h"
#include "sl_testutil.h"
#include "sl_testsuite.h"

static tu_stack_t S;

#define JWT_SECRET "a-shared-secret-for-jwt-writers-0123456789"

static long post_to(const char *header, const char *author, const char *channel, tu_resp_t *r)
{
    char url[128], body[256];
    snprintf(url, sizeof(url), "%s/v1/messages", S.base);
    snprintf(body, sizeof(body), "{\"author\":\"%s\",\"channel\":\"%s\",\"text\":\"hello from %s\"}", author,
             channel, author);
    ck_assert_int_eq(tu_http("POST", url, header, "application/json", body, strlen(body), r), 0);
    return r->status;
}

static long post_as(const char *header, const char *author, tu_resp_t *r)
{
    return post_to(header, author, "general", r);
}

START_TEST(test_writer_tokens)
{
    const char *env[] = {"SLUICE_API_TOKENS=alice-token-0001:alice,bot-token-00001:*", NULL};
    tu_resp_t r;
    tu_stack_start_api(&S, "tokens", env);

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
    tu_http_expect("POST", url, "Authorization: Bearer alice-token-0001", "application/json", "{", 1, 400);
    /* reads stay open */
    tu_http_expect("GET", url, NULL, NULL, NULL, 0, 200);

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
                         "SLUICE_API_TOKENS_FILE=/nonexistent/tokens", "SLUICE_API_CLIENT_RATE=-1",
                         "SLUICE_MAX_CONNS_PER_CLIENT=-1", "SLUICE_JWT_SECRET=shorter-than-32-bytes",
                         "SLUICE_JWT_JWKS_FILE=/nonexistent/jwks.json", "SLUICE_JWT_LEEWAY_S=-1",
                         "SLUICE_JWT_SECRET=" JWT_SECRET " SLUICE_JWT_SECRET_FILE=/etc/passwd",
                         "SLUICE_ALLOWED_ORIGINS=https://app.example/", "SLUICE_ALLOWED_ORIGINS=*,https://app.example",
                         "SLUICE_ALLOWED_ORIGINS=null", "SLUICE_ALLOWED_ORIGINS=app.example",
                         "SLUICE_ALLOWED_ORIGINS=https://a.example,,https://b.example", "SLUICE_ALLOWED_ORIGINS="};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int st = tu_exit_status("api", bad[i]);
        ck_assert_msg(st == 2, "%s: exit status %d", bad[i], st);
    }
}
END_TEST

/* ---- JWT writers -------------------------------------------------------------------------------- */

/* "Authorization: Bearer <an HS256 token of claims>", with now substituted for each %lld. */
static char *bearer_hs256(const char *fmt, long long exp_off)
{
    char claims[512], *header;
    snprintf(claims, sizeof(claims), fmt, (long long)time(NULL) + exp_off);
    char *t = tu_jwt_hs256(JWT_SECRET, claims);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_gt(asprintf(&header, "Authorization: Bearer %s", t), 0);
    free(t);
    return header;
}

static char *bearer_of(char *token)
{
    char *header;
    ck_assert_ptr_nonnull(token);
    ck_assert_int_gt(asprintf(&header, "Authorization: Bearer %s", token), 0);
    free(token);
    return header;
}

/* The api takes JWTs beside its table tokens: the sub is the author, channels (when there)
 * bound where it posts, and each refusal says why. */
START_TEST(test_jwt_writers)
{
    const char *env[] = {"SLUICE_API_TOKENS=alice-token-0001:alice", "SLUICE_JWT_SECRET=" JWT_SECRET,
                         "SLUICE_JWT_AUDIENCE=sluice-api", "SLUICE_JWT_ISSUER=https://id.example", NULL};
    tu_resp_t r;
    tu_stack_start_api(&S, "jwtwriters", env);
    const char *std = "{\"sub\":\"%s\",\"exp\":%%lld,\"aud\":\"sluice-api\",\"iss\":\"https://id.example\"%s}";
    char fmt[256];
    snprintf(fmt, sizeof(fmt), std, "carol", "");
    char *carol = bearer_hs256(fmt, 600);
    snprintf(fmt, sizeof(fmt), std, "erin", ",\"channels\":[\"team-*\",\"news\"]");
    char *erin = bearer_hs256(fmt, 600);

    ck_assert_int_eq(post_as(carol, "carol", &r), 202);
    tu_resp_free(&r);
    ck_assert_int_eq(post_to(carol, "carol", "anywhere", &r), 202); /* no channels claim: any channel */
    tu_resp_free(&r);
    ck_assert_int_eq(post_as(carol, "dave", &r), 403); /* the sub is the author */
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"forbidden\""));
    tu_resp_free(&r);
    ck_assert_int_eq(post_as(carol, "*", &r), 403); /* a sub is nobody's wildcard */
    tu_resp_free(&r);
    ck_assert_int_eq(post_to(erin, "erin", "team-red", &r), 202);
    tu_resp_free(&r);
    ck_assert_int_eq(post_to(erin, "erin", "news", &r), 202);
    tu_resp_free(&r);
    ck_assert_int_eq(post_to(erin, "erin", "general", &r), 403);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"channel_forbidden\""));
    ck_assert_ptr_nonnull(strstr(r.body, "\"field\":\"channel\""));
    tu_resp_free(&r);
    ck_assert_int_eq(post_to(erin, "erin", "newsroom", &r), 403);
    tu_resp_free(&r);
    /* the table token goes on working beside them; no token at all is now refused */
    ck_assert_int_eq(post_as("Authorization: Bearer alice-token-0001", "alice", &r), 202);
    tu_resp_free(&r);
    ck_assert_int_eq(post_as(NULL, "carol", &r), 401);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"unauthorized\""));
    tu_resp_free(&r);

    /* each refusal with its code */
    struct {
        char *header;
        const char *code;
    } refused[8];
    size_t n = 0;
    snprintf(fmt, sizeof(fmt), std, "carol", "");
    refused[n].header = bearer_hs256(fmt, -120), refused[n++].code = "token_expired";
    snprintf(fmt, sizeof(fmt), "{\"sub\":\"carol\",\"exp\":%%lld,\"aud\":\"sluice-sse\",\"iss\":\"https://id.example\"}");
    refused[n].header = bearer_hs256(fmt, 600), refused[n++].code = "token_wrong_audience";
    snprintf(fmt, sizeof(fmt), "{\"sub\":\"carol\",\"exp\":%%lld,\"aud\":\"sluice-api\"}");
    refused[n].header = bearer_hs256(fmt, 600), refused[n++].code = "token_wrong_issuer";
    snprintf(fmt, sizeof(fmt), std, "carol", "");
    char claims[256];
    snprintf(claims, sizeof(claims), fmt, (long long)time(NULL) + 600);
    refused[n].header = bearer_of(tu_jwt_sign("{\"alg\":\"HS256\"}", claims, TU_JWT_HS256, "another-secret-0123456789-abcdefghij", 36));
    refused[n++].code = "token_bad_signature";
    refused[n].header = bearer_of(tu_jwt_sign("{\"alg\":\"none\"}", claims, TU_JWT_NONE, NULL, 0));
    refused[n++].code = "token_unsupported_alg";
    refused[n].header = strdup("Authorization: Bearer not.a.jwt"), refused[n++].code = "token_malformed";
    refused[n].header = strdup("Authorization: Bearer not-a-jwt-nor-a-token"), refused[n++].code = "invalid_token";
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(post_as(refused[i].header, "carol", &r), 401);
        char want[96];
        snprintf(want, sizeof(want), "\"code\":\"%s\"", refused[i].code);
        ck_assert_msg(strstr(r.body, want) != NULL, "%s: %s", refused[i].code, r.body);
        tu_resp_free(&r);
        free(refused[i].header);
    }
    /* a token (two dots) over 8 KiB: refused unread */
    static char big[9000 + 32];
    snprintf(big, sizeof(big), "Authorization: Bearer %0*d.%0*d.sig", 4500, 0, 4500, 0);
    ck_assert_int_eq(post_as(big, "carol", &r), 401);
    ck_assert_ptr_nonnull(strstr(r.body, "token_too_large"));
    tu_resp_free(&r);

    /* stored under the token's sub */
    PGconn *db = tu_db(&S);
    ck_assert_int_eq(tu_wait_rows(db, 5, 20000), 5);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE author = 'carol'"), 2);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE author = 'erin' AND channel IN ('team-red','news')"), 2);
    PQfinish(db);
    /* counted */
    char url[128];
    snprintf(url, sizeof(url), "%s/metrics", S.base);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_ptr_nonnull(strstr(r.body, "sluice_jwt_verifications_total{result=\"token_expired\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(r.body, "sluice_jwt_keys{alg=\"HS256\"} 1\n"));
    tu_resp_free(&r);
    free(carol);
    free(erin);
    tu_stack_cleanup(&S);
}
END_TEST

/* RS256 writers with keys from a JWKS file, rotated with SIGHUP: the new key is taken, the old
 * one dropped, and a broken file keeps the keys in use. */
START_TEST(test_jwt_jwks_reload_on_sighup)
{
    char path[] = "/tmp/sluice-jwks-XXXXXX", env_jwks[96];
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    EVP_PKEY *k1 = EVP_RSA_gen(2048), *k2 = EVP_RSA_gen(2048);
    ck_assert(k1 != NULL && k2 != NULL);
    ck_assert_int_eq(tu_jwt_write_jwks(path, k1, "k1", NULL), 0);
    snprintf(env_jwks, sizeof(env_jwks), "SLUICE_JWT_JWKS_FILE=%s", path);
    const char *env[] = {env_jwks, NULL};
    tu_resp_t r;
    tu_stack_init(&S, "jwks", 100000);
    tu_start(&S, "api", env);
    char claims[128];
    snprintf(claims, sizeof(claims), "{\"sub\":\"frank\",\"exp\":%lld}", (long long)time(NULL) + 600);
    char *old = bearer_of(tu_jwt_sign("{\"alg\":\"RS256\",\"kid\":\"k1\"}", claims, TU_JWT_RS256, k1, 0));
    char *fresh = bearer_of(tu_jwt_sign("{\"alg\":\"RS256\",\"kid\":\"k2\"}", claims, TU_JWT_RS256, k2, 0));
    /* alg confusion: the JWKS's own bytes (k1's public JWK) as an HS256 secret */
    char jwks_text[4096];
    FILE *jf = fopen(path, "r");
    ck_assert_ptr_nonnull(jf);
    size_t jlen = fread(jwks_text, 1, sizeof(jwks_text) - 1, jf);
    fclose(jf);
    jwks_text[jlen] = '\0';
    char *confused =
        bearer_of(tu_jwt_sign("{\"alg\":\"HS256\",\"kid\":\"k1\"}", claims, TU_JWT_HS256, jwks_text, jlen));

    ck_assert_int_eq(post_as(old, "frank", &r), 202);
    tu_resp_free(&r);
    ck_assert_int_eq(post_as(fresh, "frank", &r), 401);
    ck_assert_ptr_nonnull(strstr(r.body, "token_unknown_key"));
    tu_resp_free(&r);
    ck_assert_int_eq(post_as(confused, "frank", &r), 401); /* no HS256 here at all */
    ck_assert_ptr_nonnull(strstr(r.body, "token_unsupported_alg"));
    tu_resp_free(&r);

    ck_assert_int_eq(tu_jwt_write_jwks(path, k2, "k2", NULL), 0);
    ck_assert_int_eq(kill(S.api, SIGHUP), 0);
    long status = 0;
    for (int i = 0; i < 50 && status != 202; i++) { /* the loop takes it between two turns */
        status = post_as(fresh, "frank", &r);
        tu_resp_free(&r);
        if (status != 202)
            tu_sleep_ms(100);
    }
    ck_assert_int_eq(status, 202);
    ck_assert_int_eq(post_as(old, "frank", &r), 401);
    ck_assert_ptr_nonnull(strstr(r.body, "token_unknown_key"));
    tu_resp_free(&r);

    /* a broken file: the reload fails (logged, counted), k2 stays */
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"keys\":", f);
    fclose(f);
    ck_assert_int_eq(kill(S.api, SIGHUP), 0);
    char url[128];
    snprintf(url, sizeof(url), "%s/metrics", S.base);
    int failed = 0;
    for (int i = 0; i < 50 && !failed; i++) {
        ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
        failed = strstr(r.body, "sluice_jwt_reloads_total{outcome=\"failed\"} 1\n") != NULL;
        if (!failed)
            ck_assert_ptr_nonnull(strstr(r.body, "sluice_jwt_reloads_total{outcome=\"ok\"} 1\n"));
        tu_resp_free(&r);
        if (!failed)
            tu_sleep_ms(100);
    }
    ck_assert_msg(failed, "the failed reload was not counted");
    ck_assert_int_eq(post_as(fresh, "frank", &r), 202);
    tu_resp_free(&r);
    ck_assert(tu_log_contains(&S, "api", "event=jwt_keys_reloaded"));
    ck_assert(tu_log_contains(&S, "api", "event=jwt_keys_reload_failed"));
    free(old);
    free(fresh);
    free(confused);
    EVP_PKEY_free(k1);
    EVP_PKEY_free(k2);
    tu_stack_cleanup(&S); /* SIGHUP did not end it: it stops with exit status 0 */
    unlink(path);
}
END_TEST

/* The rate limit keys a JWT writer on its sub: two tokens of one sub share a bucket, another sub
 * has its own. */
START_TEST(test_jwt_rate_limit_by_sub)
{
    const char *env[] = {"SLUICE_API_CLIENT_RATE=0.5", "SLUICE_API_CLIENT_BURST=3", "SLUICE_JWT_SECRET=" JWT_SECRET, NULL};
    char url[128];
    tu_resp_t r;
    tu_stack_init(&S, "jwtrate", 100000);
    tu_start(&S, "api", env);
    snprintf(url, sizeof(url), "%s/v1/messages?limit=1", S.base);
    char *a1 = bearer_hs256("{\"sub\":\"gina\",\"exp\":%lld}", 600);
    char *a2 = bearer_hs256("{\"sub\":\"gina\",\"exp\":%lld,\"name\":\"Gina\"}", 900); /* another token, same sub */
    char *b = bearer_hs256("{\"sub\":\"hank\",\"exp\":%lld}", 600);
    const char *seq[] = {a1, a2, a1, a2, a1};
    long want[] = {200, 200, 200, 429, 429};
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(tu_http("GET", url, seq[i], NULL, NULL, 0, &r), 0);
        ck_assert_msg(r.status == want[i], "request %d: %ld", i, r.status);
        tu_resp_free(&r);
    }
    tu_http_expect("GET", url, b, NULL, NULL, 0, 200);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0); /* the address's own bucket */
    ck_assert_int_eq(r.status, 200);
    tu_resp_free(&r);
    free(a1);
    free(a2);
    free(b);
    tu_stack_cleanup(&S);
}
END_TEST

START_TEST(test_per_client_rate_limit)
{
    const char *env[] = {"SLUICE_API_CLIENT_RATE=5", "SLUICE_API_CLIENT_BURST=5", "SLUICE_API_TOKENS=token-of-alice:alice", NULL};
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
    /* another client (a verified token) has its own bucket, however the header spells it */
    tu_http_expect("GET", url, "Authorization: Bearer token-of-alice", NULL, NULL, 0, 200);
    /* a made-up token is no other client: it is the address's bucket, still empty */
    tu_http_expect("GET", url, "Authorization: Bearer someone-else-1", NULL, NULL, 0, 429);
    limited++;
    /* and a POST with it is refused for what it is, without taking from any bucket */
    char purl[128];
    const char *body = "{\"author\":\"alice\",\"text\":\"hi\"}";
    snprintf(purl, sizeof(purl), "%s/v1/messages", S.base);
    tu_http_expect("POST", purl, "Authorization: Bearer someone-else-2", "application/json", body, strlen(body), 401);
    /* the verified token's bucket is one, whatever the spelling of the scheme: 5 in all */
    int tok_ok = 1; /* the GET above */
    for (int i = 0; i < 8; i++) {
        ck_assert_int_eq(tu_http("GET", url, i % 2 ? "Authorization: bearer token-of-alice" : "Authorization: BEARER token-of-alice", NULL, NULL, 0, &r), 0);
        tok_ok += r.status == 200;
        limited += r.status == 429;
        tu_resp_free(&r);
    }
    ck_assert_msg(tok_ok >= 5 && tok_ok <= 7, "token allowed %d", tok_ok);
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
    tu_http_expect("GET", url, NULL, NULL, NULL, 0, 200);
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
    tu_http_expect("GET", url, NULL, NULL, NULL, 0, 401);
    ck_assert_int_eq(tu_http("POST", url, "Authorization: Bearer wrong-token-xyz", "application/json",
                             "{\"command\":\"stop\"}", 18, &r),
                     0);
    ck_assert_int_eq(r.status, 401);
    ck_assert_ptr_nonnull(strstr(r.body, "invalid_token"));
    tu_resp_free(&r);
    tu_http_expect("GET", url, "Authorization: Bearer admin-secret-token", NULL, NULL, 0, 200);
    ck_assert_int_eq(tu_http("POST", url, "Authorization: Bearer admin-secret-token", "application/json",
                             "{\"command\":\"stop\"}", 18, &r),
                     0);
    ck_assert_int_lt(r.status, 300);
    tu_resp_free(&r);
    /* operators' endpoints, from loopback, still answer with SLUICE_OPS_LOOPBACK_ONLY=1 */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", port);
    tu_http_expect("GET", url, NULL, NULL, NULL, 0, 200);
    ck_assert_int_eq(tu_stop(&pid, SIGTERM, 15000), 0);
}
END_TEST

/* ---- raw connections ------------------------------------------------------------------------- */

/* A blocking TCP connection from address from (any loopback address: 127.0.0.2 is another
 * client than 127.0.0.1) to 127.0.0.1:port; -1 on failure. */
static int connect_from(const char *from, int port)
{
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    inet_pton(AF_INET, from, &src.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
    if (fd < 0 || bind(fd, (struct sockaddr *)&src, sizeof(src)) != 0 ||
        connect(fd, (struct sockaddr *)&dst, sizeof(dst)) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* Sends GET path on fd (keep-alive) and reads the answer's head: its status, 0 when the server
 * closed the connection or sent nothing within timeout_ms. */
static int request_on(int fd, const char *path, int timeout_ms)
{
    char req[256], buf[4096];
    size_t len = 0;
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
    long long deadline = tu_now_ms() + timeout_ms;
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n)
        return 0;
    while (len < sizeof(buf) - 1 && memmem(buf, len, "\r\n\r\n", 4) == NULL) {
        struct pollfd p = {fd, POLLIN, 0};
        long long left = deadline - tu_now_ms();
        if (left <= 0 || poll(&p, 1, (int)left) != 1)
            return 0;
        ssize_t r = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        if (r <= 0)
            return 0;
        len += (size_t)r;
        buf[len] = '\0';
    }
    int status = 0;
    return sscanf(buf, "HTTP/1.1 %d", &status) == 1 ? status : 0;
}

/* 1 when the server ends fd (EOF or reset) within timeout_ms without sending anything. */
static int closed_by_server(int fd, int timeout_ms)
{
    struct pollfd p = {fd, POLLIN, 0};
    char b;
    if (poll(&p, 1, timeout_ms) != 1)
        return 0;
    ssize_t r = recv(fd, &b, 1, 0);
    return r == 0 || (r < 0 && (errno == ECONNRESET || errno == EPIPE));
}

/* A sample's value in the /metrics of the service on port, or -1. */
static double metric_at(int port, const char *series)
{
    char url[128], want[160];
    tu_resp_t r;
    double v = -1;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", port);
    snprintf(want, sizeof(want), "\n%s ", series);
    if (tu_http("GET", url, NULL, NULL, NULL, 0, &r) == 0 && r.status == 200) {
        const char *at = strstr(r.body, want);
        if (at != NULL)
            v = strtod(at + strlen(want), NULL);
    }
    tu_resp_free(&r);
    return v;
}

#define REFUSED "sluice_http_connections_refused_total{reason=\"per_client\"}"

/* One client address may hold SLUICE_MAX_CONNS_PER_CLIENT connections; the next one is closed
 * at once, unanswered. Other addresses are not affected, and a slot frees when one closes. */
START_TEST(test_connections_per_client)
{
    const char *env[] = {"SLUICE_MAX_CONNS_PER_CLIENT=3", NULL};
    int fds[3], extra, other;
    tu_stack_init(&S, "perclient", 100000);
    tu_start(&S, "api", env);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_ge(fds[i] = connect_from("127.0.0.1", S.api_port), 0);
        ck_assert_int_eq(request_on(fds[i], "/healthz", 5000), 200); /* accepted and counted */
    }
    /* the fourth: closed without an answer */
    ck_assert_int_ge(extra = connect_from("127.0.0.1", S.api_port), 0);
    ck_assert_msg(closed_by_server(extra, 5000), "a fourth connection from one address was not closed");
    close(extra);
    ck_assert_int_ge(extra = connect_from("127.0.0.1", S.api_port), 0);
    ck_assert_int_eq(request_on(extra, "/healthz", 5000), 0);
    close(extra);
    /* another address (127.0.0.2) is another client */
    ck_assert_int_ge(other = connect_from("127.0.0.2", S.api_port), 0);
    ck_assert_int_eq(request_on(other, "/healthz", 5000), 200);
    close(other);
    /* the ones held open still work */
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(request_on(fds[i], "/healthz", 5000), 200);
    /* one closes: a new one is accepted (the server notices the close within a turn of its loop) */
    close(fds[0]);
    int ok = 0;
    for (int tries = 0; tries < 50 && !ok; tries++) {
        ck_assert_int_ge(fds[0] = connect_from("127.0.0.1", S.api_port), 0);
        if (!(ok = request_on(fds[0], "/healthz", 5000) == 200)) {
            close(fds[0]);
            tu_sleep_ms(100);
        }
    }
    ck_assert_msg(ok, "no connection accepted after one of the three closed");
    close(fds[0]);
    close(fds[1]);
    /* counted in /metrics (the scrape itself takes the free slot) */
    double refused = -1;
    for (int tries = 0; tries < 50 && refused < 0; tries++) {
        if ((refused = metric_at(S.api_port, REFUSED)) < 0)
            tu_sleep_ms(100);
    }
    ck_assert_msg(refused >= 2, "%s is %.0f, want >= 2", REFUSED, refused);
    close(fds[2]);
    tu_stack_cleanup(&S);
}
END_TEST

/* The default (256) holds on every HTTP service, and 0 lifts the limit. */
START_TEST(test_connections_per_client_default_and_unlimited)
{
    enum { N = 300 };
    static int fds[N];
    const char *unlimited[] = {"SLUICE_MAX_CONNS_PER_CLIENT=0", NULL};
    tu_stack_init(&S, "perclientdef", 100000);
    tu_start(&S, "persister", NULL);
    int port = 0;
    pid_t open_api = tu_start_at(&S, "api", &port, unlimited);
    struct {
        int port, limit;
    } svc[2] = {{S.persister_port, 256}, {port, N}};
    for (int k = 0; k < 2; k++) {
        int n = 0;
        for (; n < N; n++) {
            ck_assert_int_ge(fds[n] = connect_from("127.0.0.1", svc[k].port), 0);
            if (request_on(fds[n], "/healthz", 5000) != 200)
                break;
        }
        ck_assert_msg(n == svc[k].limit, "port %d: %d connections of one client accepted, want %d", svc[k].port, n,
                      svc[k].limit);
        for (int i = 0; i <= n && i < N; i++)
            close(fds[i]);
    }
    ck_assert_int_eq(tu_stop(&open_api, SIGTERM, 15000), 0);
    tu_stack_cleanup(&S);
}
END_TEST

/* A client that sends its request head one byte a second (slowloris) is cut off: h2o gives the
 * head 10 s in all. */
START_TEST(test_slow_request_head_times_out)
{
    static const char head[] = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    tu_stack_init(&S, "slowloris", 100000);
    tu_start(&S, "api", NULL);
    int fd = connect_from("127.0.0.1", S.api_port);
    ck_assert_int_ge(fd, 0);
    long long t0 = tu_now_ms();
    size_t sent = 0;
    int cut = 0;
    while (sent < sizeof(head) - 1 && tu_now_ms() - t0 < 30000) {
        if (send(fd, head + sent, 1, MSG_NOSIGNAL) != 1 || closed_by_server(fd, 1000)) {
            cut = 1;
            break;
        }
        sent++;
    }
    long long took = tu_now_ms() - t0;
    fprintf(stderr, "slowloris: cut off after %lld ms, %zu bytes of the head sent\n", took, sent);
    ck_assert_msg(cut, "a head sent a byte a second was still read after %lld ms (%zu bytes)", took, sent);
    ck_assert_msg(took >= 9000 && took <= 15000, "cut off after %lld ms, want about 10 s", took);
    close(fd);
    tu_stack_cleanup(&S);
}
END_TEST

/* A request head over SLUICE_MAX_HEADER_BYTES gets 431 with a JSON error, on every route, and
 * the service goes on serving; one under it is served. */
START_TEST(test_oversized_request_head)
{
    const char *env[] = {"SLUICE_MAX_HEADER_BYTES=4096", NULL};
    static char big[6000], fits[2000];
    char url[160];
    tu_resp_t r;
    tu_stack_init(&S, "bighead", 100000);
    tu_start(&S, "api", env);
    snprintf(big, sizeof(big), "X-Big: %0*d", (int)sizeof(big) - 9, 0);
    snprintf(fits, sizeof(fits), "X-Fits: %0*d", (int)sizeof(fits) - 10, 0);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/messages", S.api_port);
    const char *body = "{\"author\":\"a\",\"text\":\"big head\"}";
    ck_assert_int_eq(tu_http("POST", url, big, "application/json", body, strlen(body), &r), 0);
    ck_assert_int_eq(r.status, 431);
    ck_assert_ptr_nonnull(strstr(r.body, "\"code\":\"headers_too_large\""));
    tu_resp_free(&r);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/healthz", S.api_port);
    tu_http_expect("GET", url, big, NULL, NULL, 0, 431);
    tu_http_expect("GET", url, fits, NULL, NULL, 0, 200);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", S.api_port);
    ck_assert_int_eq(tu_http("GET", url, NULL, NULL, NULL, 0, &r), 0);
    ck_assert_ptr_nonnull(strstr(r.body, "sluice_http_requests_refused_total{reason=\"header_bytes\"} 2"));
    tu_resp_free(&r);
    tu_stack_cleanup(&S);
}
END_TEST

/* Sends req on a new connection to port and returns what comes back until the server closes or
 * 2 s pass (malloc'd, NUL-terminated). */
static char *raw_exchange(int port, const char *req, size_t len)
{
    long long deadline = tu_now_ms() + 2000;
    char *buf = NULL;
    size_t used = 0, cap = 0;
    int eof = 0, err = 0, fd = tu_net_connect(port, 0, deadline);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(tu_net_send_all(fd, req, len, deadline), 0);
    while (!eof && tu_net_read_some(fd, &buf, &used, &cap, &eof, &err, deadline) > 0) {
    }
    close(fd);
    ck_assert_int_eq(tu_net_reserve(&buf, &cap, used + 1), 0);
    buf[used] = '\0';
    return buf;
}

/* HTTP/1.1 only, on every service: cleartext HTTP/2 would carry many streams on one connection
 * past SLUICE_MAX_CONNS_PER_CLIENT. Neither prior knowledge (the HTTP/2 preface) nor
 * "Upgrade: h2c" leaves HTTP/1.1. */
START_TEST(test_http2_is_refused)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    static const char h2c[] = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                              "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    tu_stack_init(&S, "http2", 100000);
    tu_start(&S, "api", NULL);
    tu_start(&S, "sse", NULL);
    int ports[] = {S.api_port, S.sse_port};
    for (int i = 0; i < 2; i++) {
        char *r = raw_exchange(ports[i], preface, sizeof(preface) - 1);
        ck_assert_msg(strncmp(r, "HTTP/1.1 400 ", 13) == 0, "port %d answered the HTTP/2 preface with: %.40s", ports[i], r);
        free(r);
        r = raw_exchange(ports[i], h2c, sizeof(h2c) - 1);
        ck_assert_msg(strncmp(r, "HTTP/1.1 200 ", 13) == 0, "port %d answered Upgrade: h2c with: %.40s", ports[i], r);
        ck_assert_ptr_null(strstr(r, "101"));
        free(r);
    }
    tu_stack_cleanup(&S);
}
END_TEST

/* ---- CORS and Origin ------------------------------------------------------------------------------ */

/* GET (or method) path on port with extra header lines (each ending in \r\n), the connection closed
 * after the answer; what came back (malloc'd). */
static char *http_raw(int port, const char *method, const char *path, const char *headers)
{
    char req[1024];
    int n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s\r\n", method, path,
                     headers);
    return raw_exchange(port, req, (size_t)n);
}

/* A WebSocket handshake for /v1/ws with extra header lines. */
static char *ws_raw(int port, const char *headers)
{
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
                     headers);
    return raw_exchange(port, req, (size_t)n);
}

static int status_of(const char *resp)
{
    int st = 0;
    return sscanf(resp, "HTTP/1.1 %d", &st) == 1 ? st : 0;
}

/* The status of a handshake with headers, tried until it upgrades (101) or 10 s pass: an sse
 * instance upgrades once its hub and database are ready. */
static int ws_upgrades(int port, const char *headers)
{
    int st = 0;
    for (int i = 0; i < 50 && st != 101; i++) {
        char *r = ws_raw(port, headers);
        if ((st = status_of(r)) != 101)
            tu_sleep_ms(200);
        free(r);
    }
    return st;
}

/* The answer's header lines named name (any case): how many, the value of the first in value. */
static int header_in(const char *resp, const char *name, char *value, size_t size)
{
    const char *end = strstr(resp, "\r\n\r\n"), *line = strstr(resp, "\r\n");
    size_t nlen = strlen(name);
    int count = 0;
    value[0] = '\0';
    while (line != NULL && end != NULL && line < end) {
        line += 2;
        const char *eol = strstr(line, "\r\n");
        if (strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            if (count++ == 0) {
                const char *v = line + nlen + 1;
                while (*v == ' ')
                    v++;
                snprintf(value, size, "%.*s", (int)(eol - v), v);
            }
        }
        line = eol;
    }
    return count;
}

#define ACAO "access-control-allow-origin"

/* A fresh stack name with its persister, api and sse, each started with env (may be NULL). */
static void start_all(const char *name, const char *const *env)
{
    tu_stack_init(&S, name, 100000);
    tu_start(&S, "persister", env);
    tu_start(&S, "api", env);
    tu_start(&S, "sse", env);
}

/* The answer to method path (with headers) on port, once it is asserted to be status with one
 * Access-Control-Allow-Origin, acao. The caller frees it. */
static char *cors_raw(int port, const char *method, const char *path, const char *headers, int status,
                      const char *acao)
{
    char v[256];
    char *r = http_raw(port, method, path, headers);
    ck_assert_int_eq(status_of(r), status);
    ck_assert_int_eq(header_in(r, ACAO, v, sizeof(v)), 1);
    ck_assert_str_eq(v, acao);
    return r;
}

/* SLUICE_ALLOWED_ORIGINS unset: every answer says * (as before), streams and WebSocket included. */
START_TEST(test_cors_default_any_origin)
{
    char v[256];
    start_all("corsany", NULL);
    int ports[] = {S.api_port, S.sse_port, S.persister_port};
    for (int i = 0; i < 3; i++) {
        char *r = cors_raw(ports[i], "GET", "/healthz", "Origin: https://anywhere.example\r\n", 200, "*");
        ck_assert_int_eq(header_in(r, "vary", v, sizeof(v)), 0);
        free(r);
    }
    /* a stream: one Access-Control-Allow-Origin, not the stream's and the server's both */
    free(cors_raw(S.sse_port, "GET", "/v1/stream?history=0", "Origin: https://anywhere.example\r\n", 200, "*"));
    /* preflights: every header sluice reads may be sent */
    int pf[] = {S.api_port, S.sse_port};
    for (int i = 0; i < 2; i++) {
        char *r = cors_raw(pf[i], "OPTIONS", i == 0 ? "/v1/messages" : "/v1/stream",
                           "Origin: https://anywhere.example\r\nAccess-Control-Request-Method: GET\r\n"
                           "Access-Control-Request-Headers: authorization, last-event-id\r\n",
                           204, "*");
        ck_assert_int_eq(header_in(r, "access-control-allow-headers", v, sizeof(v)), 1);
        ck_assert_msg(strstr(v, "Authorization") && strstr(v, "Idempotency-Key") && strstr(v, "Last-Event-ID") &&
                          strstr(v, "Content-Type"),
                      "allow-headers: %s", v);
        ck_assert_int_eq(header_in(r, "access-control-allow-methods", v, sizeof(v)), 1);
        ck_assert_ptr_nonnull(strstr(v, "GET"));
        free(r);
    }
    /* any Origin may open a WebSocket */
    ck_assert_int_eq(ws_upgrades(S.sse_port, "Origin: https://anywhere.example\r\n"), 101);
    tu_stack_cleanup(&S);
}
END_TEST

/* A list: the allowed Origin is echoed (with Vary: Origin), another gets no CORS header at all
 * (the stream's own "*" included), its preflight 403, and its WebSocket handshake 403. */
START_TEST(test_cors_allow_list)
{
    const char *env[] = {"SLUICE_ALLOWED_ORIGINS=https://app.example, http://localhost:3000", NULL};
    char v[256];
    start_all("corslist", env);
    int ports[] = {S.api_port, S.sse_port, S.persister_port};
    for (int i = 0; i < 3; i++) {
        char *r = cors_raw(ports[i], "GET", "/healthz", "Origin: https://app.example\r\n", 200, "https://app.example");
        ck_assert_int_eq(header_in(r, "vary", v, sizeof(v)), 1);
        ck_assert_ptr_nonnull(strstr(v, "Origin"));
        free(r);
        r = http_raw(ports[i], "GET", "/healthz", "Origin: http://localhost:3000\r\n");
        ck_assert_int_eq(header_in(r, ACAO, v, sizeof(v)), 1);
        ck_assert_str_eq(v, "http://localhost:3000");
        free(r);
        /* not listed (another scheme, port or host), or no Origin: served, without CORS */
        const char *others[] = {"Origin: https://evil.example\r\n", "Origin: http://app.example\r\n",
                                "Origin: http://localhost:3001\r\n", "Origin: https://app.example.evil.example\r\n",
                                "Origin: null\r\n", ""};
        for (size_t k = 0; k < sizeof(others) / sizeof(others[0]); k++) {
            r = http_raw(ports[i], "GET", "/healthz", others[k]);
            ck_assert_int_eq(status_of(r), 200);
            ck_assert_msg(header_in(r, ACAO, v, sizeof(v)) == 0, "%s got %s", others[k], v);
            ck_assert_int_eq(header_in(r, "vary", v, sizeof(v)), 1);
            free(r);
        }
    }
    /* errors carry CORS too, and let the page read Retry-After */
    char *r = http_raw(S.api_port, "POST", "/v1/messages", "Origin: https://app.example\r\nContent-Length: 0\r\n");
    ck_assert_int_eq(status_of(r), 415);
    ck_assert_int_eq(header_in(r, ACAO, v, sizeof(v)), 1);
    ck_assert_int_eq(header_in(r, "access-control-expose-headers", v, sizeof(v)), 1);
    ck_assert_str_eq(v, "Retry-After");
    free(r);
    /* streams: the server's answer replaces the stream's "*" */
    free(cors_raw(S.sse_port, "GET", "/v1/stream?history=0", "Origin: https://app.example\r\n", 200,
                  "https://app.example"));
    r = http_raw(S.sse_port, "GET", "/v1/stream?history=0", "Origin: https://evil.example\r\n");
    ck_assert_int_eq(status_of(r), 200);
    ck_assert_int_eq(header_in(r, ACAO, v, sizeof(v)), 0);
    free(r);
    /* preflights */
    int pf[] = {S.api_port, S.sse_port};
    for (int i = 0; i < 2; i++) {
        r = cors_raw(pf[i], "OPTIONS", "/v1/messages",
                     "Origin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n"
                     "Access-Control-Request-Headers: authorization, idempotency-key, content-type\r\n",
                     204, "https://app.example");
        ck_assert_int_eq(header_in(r, "vary", v, sizeof(v)), 1);
        ck_assert_int_eq(header_in(r, "access-control-allow-headers", v, sizeof(v)), 1);
        ck_assert_msg(strstr(v, "Authorization") && strstr(v, "Idempotency-Key") && strstr(v, "Last-Event-ID"), "%s", v);
        free(r);
        r = http_raw(pf[i], "OPTIONS", "/v1/messages",
                     "Origin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\n");
        ck_assert_int_eq(status_of(r), 403);
        ck_assert_int_eq(header_in(r, ACAO, v, sizeof(v)), 0);
        ck_assert_int_eq(header_in(r, "access-control-allow-headers", v, sizeof(v)), 0);
        ck_assert_ptr_nonnull(strstr(r, "\"code\":\"origin_not_allowed\""));
        free(r);
    }
    /* WebSocket: an allowed Origin (or none: not a browser) upgrades, another is refused */
    ck_assert_int_eq(ws_upgrades(S.sse_port, "Origin: https://app.example\r\n"), 101);
    r = ws_raw(S.sse_port, "");
    ck_assert_int_eq(status_of(r), 101);
    free(r);
    const char *refused[] = {"Origin: https://evil.example\r\n", "Origin: null\r\n",
                             "Origin: https://app.example:443\r\n"};
    for (size_t k = 0; k < sizeof(refused) / sizeof(refused[0]); k++) {
        r = ws_raw(S.sse_port, refused[k]);
        ck_assert_msg(status_of(r) == 403, "%s: %.60s", refused[k], r);
        ck_assert_ptr_nonnull(strstr(r, "\"code\":\"origin_not_allowed\""));
        ck_assert_int_eq(header_in(r, "upgrade", v, sizeof(v)), 0);
        free(r);
    }
    tu_stack_cleanup(&S);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("access");
    TCase *tc = tcase_create("integration");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_writer_tokens);
    tcase_add_test(tc, test_tokens_file_and_bad_configuration);
    tcase_add_test(tc, test_jwt_writers);
    tcase_add_test(tc, test_jwt_jwks_reload_on_sighup);
    tcase_add_test(tc, test_jwt_rate_limit_by_sub);
    tcase_add_test(tc, test_per_client_rate_limit);
    tcase_add_test(tc, test_ingest_control_needs_admin_token);
    tcase_add_test(tc, test_connections_per_client);
    tcase_add_test(tc, test_connections_per_client_default_and_unlimited);
    tcase_add_test(tc, test_slow_request_head_times_out);
    tcase_add_test(tc, test_oversized_request_head);
    tcase_add_test(tc, test_http2_is_refused);
    tcase_add_test(tc, test_cors_default_any_origin);
    tcase_add_test(tc, test_cors_allow_list);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
