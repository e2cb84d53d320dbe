/*
 * sluice-bot: the generator and the rate scheduler on their own (unit), then the real bot against
 * a real api + persister on the RabbitMQ and PostgreSQL that test.sh starts: rate accuracy, back
 * pressure (429) with idempotent retries, SIGTERM, bad flags.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sl_bot.h"
#include "sl_message.h"
#include "sl_testutil.h"
#include "sl_time.h"
#include "sl_testsuite.h"

static tu_stack_t S;

/* ---- unit: generator ------------------------------------------------------------------------ */

START_TEST(test_generator_makes_valid_varied_messages)
{
    enum { N = 3000 };
    const char *chans[] = {"general", "random", "dev-ops", "b_2"};
    int chan_seen[4] = {0}, authors_seen[20] = {0}, non_ascii = 0, non_ascii_author = 0, distinct_authors = 0;
    long min_cp = 1000, max_cp = 0, short_ = 0, long_ = 0;
    char err[256], buf[SL_BOT_BODY_MAX], names[20][SL_AUTHOR_MAX_CHARS * 4 + 1];
    sl_botgen_t g;
    ck_assert_int_eq(sl_botgen_init(&g, 42, "general, random,dev-ops,b_2", 20, err, sizeof(err)), 0);
    for (long i = 0; i < 20; i++)
        sl_botgen_author(i, names[i], sizeof(names[i]));
    for (int i = 0; i < N; i++) {
        sl_message_t m;
        sl_error_t e;
        size_t len = sl_botgen_next(&g, buf, sizeof(buf));
        ck_assert_uint_gt(len, 0);
        ck_assert_uint_eq(strlen(buf), len);
        ck_assert_msg(sl_message_from_request(buf, len, &m, &e) == 0, "message %d refused (%s: %s): %s", i, e.code,
                      e.message, buf);
        ck_assert_str_eq(m.source, "bot");
        int c = -1;
        for (int k = 0; k < 4; k++)
            c = strcmp(m.channel, chans[k]) == 0 ? k : c;
        ck_assert_msg(c >= 0, "channel %s not in the list", m.channel);
        chan_seen[c]++;
        int a = -1;
        for (int k = 0; k < 20; k++)
            a = strcmp(m.author, names[k]) == 0 ? k : a;
        ck_assert_msg(a >= 0, "author %s is not one of the 20", m.author);
        authors_seen[a]++;
        long cp = sl_utf8_count(m.text, strlen(m.text));
        ck_assert_int_ge(cp, 1);
        ck_assert_int_le(cp, SL_TEXT_MAX_CHARS);
        min_cp = cp < min_cp ? cp : min_cp;
        max_cp = cp > max_cp ? cp : max_cp;
        short_ += cp <= 40;
        long_ += cp >= 200;
        non_ascii += cp != (long)strlen(m.text);
        non_ascii_author += sl_utf8_count(m.author, strlen(m.author)) != (long)strlen(m.author);
        /* every text of one generator is different: it ends in " #<n>" */
        char suffix[32];
        snprintf(suffix, sizeof(suffix), " #%d", i + 1);
        size_t tl = strlen(m.text), sl = strlen(suffix);
        ck_assert_msg(tl > sl && strcmp(m.text + tl - sl, suffix) == 0, "text %d lacks %s: %s", i, suffix, m.text);
    }
    for (int k = 0; k < 4; k++)
        ck_assert_msg(chan_seen[k] > 0, "channel %s never used", chans[k]);
    ck_assert_int_gt(chan_seen[0], chan_seen[3]); /* skewed: the first channel is the busiest */
    for (int k = 0; k < 20; k++)
        distinct_authors += authors_seen[k] > 0;
    ck_assert_int_ge(distinct_authors, 18);
    ck_assert_int_le(min_cp, 10);
    ck_assert_int_ge(max_cp, 400);
    ck_assert_int_gt(short_, N / 3);
    ck_assert_int_gt(long_, N / 50);
    ck_assert_int_gt(non_ascii, N / 10);
    ck_assert_int_gt(non_ascii_author, 0);
}
END_TEST

START_TEST(test_generator_is_reproducible)
{
    char err[256], a[SL_BOT_BODY_MAX], b[SL_BOT_BODY_MAX];
    sl_botgen_t g1, g2, g3;
    int differ = 0;
    ck_assert_int_eq(sl_botgen_init(&g1, 7, "general", 5, err, sizeof(err)), 0);
    ck_assert_int_eq(sl_botgen_init(&g2, 7, "general", 5, err, sizeof(err)), 0);
    ck_assert_int_eq(sl_botgen_init(&g3, 8, "general", 5, err, sizeof(err)), 0);
    for (int i = 0; i < 200; i++) {
        ck_assert_uint_gt(sl_botgen_next(&g1, a, sizeof(a)), 0);
        ck_assert_uint_gt(sl_botgen_next(&g2, b, sizeof(b)), 0);
        ck_assert_str_eq(a, b);
        sl_botgen_next(&g3, b, sizeof(b));
        differ += strcmp(a, b) != 0;
    }
    ck_assert_int_gt(differ, 190);
    ck_assert_uint_eq(sl_botgen_next(&g1, a, 16), 0); /* too small a buffer: nothing */
}
END_TEST

START_TEST(test_generator_refuses_bad_lists)
{
    char err[256], many[40 * 4];
    sl_botgen_t g;
    const char *bad[] = {"", "general,,random", "General", "a b", "general,", "x/y"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        ck_assert_msg(sl_botgen_init(&g, 1, bad[i], 3, err, sizeof(err)) == -1, "'%s' accepted", bad[i]);
        ck_assert_ptr_nonnull(strstr(err, "channel"));
    }
    many[0] = '\0';
    for (int i = 0; i < 33; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "%sc%d", i ? "," : "", i);
    ck_assert_int_eq(sl_botgen_init(&g, 1, many, 3, err, sizeof(err)), -1);
    ck_assert_int_eq(sl_botgen_init(&g, 1, "general", 0, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "authors"));
    ck_assert_int_eq(sl_botgen_init(&g, 1, " general , a-b ", 1, err, sizeof(err)), 0);
    ck_assert_str_eq(g.channels[1], "a-b");
}
END_TEST

/* ---- unit: scheduler ------------------------------------------------------------------------ */

#define T0 1000000000LL /* any monotonic time */

START_TEST(test_sched_absolute_timeline)
{
    sl_bot_sched_t s;
    sl_bot_sched_init(&s, 20, T0);
    ck_assert_int_eq(sl_bot_sched_next(&s), T0);
    ck_assert_int_eq(sl_bot_sched_due(&s, 1), T0 + 50000);
    ck_assert_int_eq(sl_bot_sched_due(&s, 100), T0 + 5000000);
    /* Every send goes 10 ms late (the loop was busy, answers were slow): the timeline does not
     * move, so 100 sends still take 5 s, not 100 * 60 ms. */
    int64_t now = T0;
    for (int i = 0; i < 100; i++) {
        int64_t due = sl_bot_sched_next(&s);
        ck_assert_int_eq(due, T0 + (int64_t)i * 50000);
        now = (now > due ? now : due) + 10000;
        ck_assert_uint_eq(sl_bot_sched_take(&s, now), 0);
    }
    ck_assert_int_eq(sl_bot_sched_next(&s), T0 + 5000000);
    /* A late stretch (40 ms behind each) is caught up: the slots are already due. */
    now = sl_bot_sched_next(&s) + 400000;
    for (int i = 0; i < 8; i++) {
        ck_assert_int_le(sl_bot_sched_next(&s), now);
        sl_bot_sched_take(&s, now);
    }
    ck_assert_int_eq(sl_bot_sched_next(&s), T0 + 5400000);

    /* Fractions: 0.5/s is a slot every 2 s; 90 per minute every 666 667 us. */
    sl_bot_sched_init(&s, 0.5, T0);
    ck_assert_int_eq(sl_bot_sched_due(&s, 3), T0 + 6000000);
    sl_bot_sched_init(&s, 90.0 / 60, T0);
    ck_assert_int_eq(sl_bot_sched_due(&s, 1), T0 + 666667);
    ck_assert_int_eq(sl_bot_sched_due(&s, 3), T0 + 2000000);
}
END_TEST

START_TEST(test_sched_stall_catches_up_one_second_at_most)
{
    sl_bot_sched_t s;
    sl_bot_sched_init(&s, 10, T0);
    int64_t now = T0 + 30000000; /* 30 s stall: 300 slots behind */
    ck_assert_uint_eq(sl_bot_sched_take(&s, now), 290);
    /* 1 s of backlog stays (10 slots), not 300 */
    int burst = 0;
    while (sl_bot_sched_next(&s) <= now && burst < 1000) {
        ck_assert_uint_eq(sl_bot_sched_take(&s, now), 0);
        burst++;
    }
    ck_assert_int_eq(burst, 10);
    ck_assert_int_eq(sl_bot_sched_next(&s), now + 100000);
}
END_TEST

START_TEST(test_sched_backs_off_and_recovers)
{
    sl_bot_sched_t s;
    sl_bot_sched_init(&s, 20, T0);
    for (int i = 0; i < 10; i++)
        sl_bot_sched_take(&s, sl_bot_sched_next(&s));
    int64_t now = T0 + 500000;
    /* a 429 with Retry-After 1 s: nothing for 1 s, then at half the rate */
    sl_bot_sched_refused(&s, now, 1000000);
    ck_assert(s.rate == 10.0);
    ck_assert_int_eq(sl_bot_sched_next(&s), now + 1000000);
    /* more refusals of requests sent before the pause: it grows, the rate is cut once */
    sl_bot_sched_refused(&s, now + 10000, 1000000);
    sl_bot_sched_refused(&s, now + 20000, 500000);
    ck_assert(s.rate == 10.0);
    int64_t resume = now + 1010000;
    ck_assert_int_eq(sl_bot_sched_next(&s), resume);
    /* no recovery while paused */
    sl_bot_sched_tick(&s, now + 900000);
    ck_assert(s.rate == 10.0);
    /* the first slot after the pause, then 1 / rate apart */
    sl_bot_sched_take(&s, resume);
    ck_assert_int_eq(sl_bot_sched_next(&s), resume + 100000);
    /* refused again after the pause: a new episode, the rate halves again, down to target / 16 */
    for (int i = 0; i < 10; i++) {
        int64_t t = sl_bot_sched_next(&s);
        sl_bot_sched_take(&s, t);
        sl_bot_sched_refused(&s, t + 1000, 1000000);
    }
    ck_assert(s.rate == 20.0 / 16);
    /* additive recovery: target / 10 per second once the pause is over, up to the target */
    int64_t end = s.paused_until_us;
    sl_bot_sched_tick(&s, end + 1000000);
    ck_assert_msg(s.rate > 3.2 && s.rate < 3.3, "rate %.3f after 1 s", s.rate);
    for (int i = 1; i <= 20; i++)
        sl_bot_sched_tick(&s, end + 1000000 + i * 500000LL);
    ck_assert(s.rate == 20.0);
    /* the timeline restarted at the end of the pause, now at the full rate */
    ck_assert_int_eq(sl_bot_sched_next(&s), end);
    sl_bot_sched_take(&s, end);
    ck_assert_int_eq(sl_bot_sched_next(&s), end + 50000);
}
END_TEST

/* ---- integration: the real bot -------------------------------------------------------------- */

static void log_path(const char *name, char *buf, size_t size)
{
    mkdir(SLUICE_TEST_LOG_DIR, 0755);
    snprintf(buf, size, "%s/%s-bot.log", SLUICE_TEST_LOG_DIR, name);
}

/* Starts sluice-bot with args (NULL-terminated), its stdout and stderr into logpath. */
static pid_t spawn_bot(const char *logpath, const char *const *args)
{
    char bin[512];
    const char *argv[32];
    const char *bindir = getenv("SLUICE_BIN_DIR") ? getenv("SLUICE_BIN_DIR") : SLUICE_DEFAULT_BIN_DIR;
    size_t n = 0;
    snprintf(bin, sizeof(bin), "%s/sluice-bot", bindir);
    argv[n++] = bin;
    for (; args[n - 1] != NULL && n < 31; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    unlink(logpath);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(bin, (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    return pid;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *data = NULL;
    size_t len = 0;
    if (f == NULL)
        return strdup("");
    for (;;) {
        char *d = realloc(data, len + 65536 + 1);
        ck_assert_ptr_nonnull(d);
        data = d;
        size_t got = fread(data + len, 1, 65536, f);
        len += got;
        if (got == 0)
            break;
    }
    fclose(f);
    data[len] = '\0';
    return data;
}

typedef struct summary {
    int found;
    double sent, accepted, refused, retried, failed, skipped, elapsed_s, rate;
    char reason[16];
} summary_t;

static double field(const char *line, const char *key)
{
    char k[40];
    snprintf(k, sizeof(k), " %s=", key);
    const char *p = strstr(line, k);
    ck_assert_msg(p != NULL, "no %s in: %s", key, line);
    return strtod(p + strlen(k), NULL);
}

/* The last event=summary line of the log (only a final one when final is set). */
static summary_t last_summary(const char *logpath, int final)
{
    summary_t s;
    char *log = slurp(logpath), *line = log, *found = NULL;
    memset(&s, 0, sizeof(s));
    while (line != NULL && *line != '\0') {
        char *nl = strchr(line, '\n');
        if (nl != NULL)
            *nl = '\0';
        if (strstr(line, " event=summary ") != NULL && (!final || strstr(line, " final=true") != NULL))
            found = line;
        line = nl != NULL ? nl + 1 : NULL;
    }
    if (found != NULL) {
        s.found = 1;
        s.sent = field(found, "sent");
        s.accepted = field(found, "accepted");
        s.refused = field(found, "refused");
        s.retried = field(found, "retried");
        s.failed = field(found, "failed");
        s.skipped = field(found, "skipped");
        s.elapsed_s = field(found, "elapsed_s");
        s.rate = field(found, "rate");
        const char *r = strstr(found, " reason=");
        if (r != NULL)
            sscanf(r + 8, "%15s", s.reason);
    }
    free(log);
    return s;
}

/* Polls the bot's summaries until cond holds (or ~20 s); returns the last one seen. */
static summary_t wait_summary(const char *logpath, int (*cond)(const summary_t *))
{
    summary_t s = {0};
    for (int i = 0; i < 100 && !(s.found && cond(&s)); i++) {
        tu_sleep_ms(200);
        s = last_summary(logpath, 0);
    }
    return s;
}

/* Sends sig (0: none) to the bot and waits up to timeout_ms; asserts it exited 0 with a final
 * summary that gives reason for its end, and returns that summary. */
static summary_t bot_end(pid_t *bot, int sig, int timeout_ms, const char *logpath, const char *reason)
{
    ck_assert_msg(tu_stop(bot, sig, timeout_ms) == 0, "sluice-bot did not exit 0 (signal %d); see %s", sig, logpath);
    summary_t s = last_summary(logpath, 1);
    ck_assert_msg(s.found, "no final summary in %s", logpath);
    ck_assert_str_eq(s.reason, reason);
    return s;
}

/* Waits for the n messages the bot posted and asserts each is stored once, with n different bodies. */
static void assert_stored_once(PGconn *db, long long n)
{
    ck_assert_int_eq(tu_wait_rows(db, n, 20000), n);
    tu_sleep_ms(300);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), n);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(DISTINCT id) FROM messages"), n);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(DISTINCT body) FROM messages"), n);
}

static int some_accepted(const summary_t *s)
{
    return s->accepted >= 20;
}

static int some_refused(const summary_t *s)
{
    return s->refused > 0;
}

START_TEST(test_bot_rate_accuracy)
{
    char logpath[600];
    log_path("botrate", logpath, sizeof(logpath));
    tu_stack_start_api(&S, "botrate", NULL);
    const char *args[] = {"--api-url", S.base, "--rate", "20", "--duration", "5", "--seed", "7",
                          "--summary-interval", "1", "--concurrency", "8", NULL};
    pid_t bot = spawn_bot(logpath, args);
    summary_t s = bot_end(&bot, 0, 30000, logpath, "duration");
    ck_assert_msg(s.accepted >= 95 && s.accepted <= 105, "accepted %.0f in 5 s at 20/s", s.accepted);
    ck_assert(s.sent == s.accepted);
    ck_assert(s.failed == 0 && s.refused == 0 && s.retried == 0 && s.skipped == 0);
    ck_assert_msg(s.rate >= 19.0 && s.rate <= 21.0, "bot says %.3f msg/s", s.rate);
    ck_assert_msg(s.elapsed_s >= 5.0 && s.elapsed_s < 5.5, "ran %.3f s", s.elapsed_s);

    PGconn *db = tu_db(&S);
    long long want = (long long)s.accepted;
    ck_assert_int_eq(tu_wait_rows(db, want, 20000), want);
    tu_sleep_ms(300);
    long long stored = tu_scalar(db, "SELECT count(*) FROM messages WHERE source = 'bot'");
    ck_assert_int_eq(stored, want);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages"), want);
    /* what the api saw: the first to the last arrival spans (n - 1) / 20 s */
    long long span_ms = tu_scalar(db, "SELECT (extract(epoch FROM max(created_at) - min(created_at)) * 1000)::bigint"
                                      " FROM messages");
    double seen_rate = (double)(stored - 1) * 1000.0 / (double)span_ms;
    fprintf(stderr, "bot rate: %lld stored in 5 s, %.3f msg/s between first and last arrival (target 20)\n", stored,
            seen_rate);
    ck_assert_msg(seen_rate > 18.0 && seen_rate < 22.0, "arrivals at %.3f msg/s", seen_rate);
    ck_assert_int_ge(tu_scalar(db, "SELECT count(DISTINCT channel) FROM messages"), 2);
    ck_assert_int_ge(tu_scalar(db, "SELECT count(DISTINCT author) FROM messages"), 10);
    ck_assert_int_gt(tu_scalar(db, "SELECT count(*) FROM messages WHERE octet_length(body) <> char_length(body)"), 0);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

START_TEST(test_bot_backs_off_on_429_and_stores_each_once)
{
    enum { N = 30 };
    char logpath[600], n[16];
    log_path("bot429", logpath, sizeof(logpath));
    snprintf(n, sizeof(n), "%d", N);
    tu_stack_init(&S, "bot429", 10);
    tu_start(&S, "api", NULL); /* no persister: the queue fills after ~11 messages */
    const char *args[] = {"--api-url", S.base, "--rate", "20", "--count", n, "--seed", "11", "--concurrency", "4",
                          "--summary-interval", "0.3", "--authors", "7", NULL};
    pid_t bot = spawn_bot(logpath, args);
    summary_t s = wait_summary(logpath, some_refused);
    ck_assert_msg(s.found && s.refused > 0, "the bot never reported a refusal; see %s", logpath);
    ck_assert_msg(s.accepted >= 10 && s.accepted <= 11, "accepted %.0f before the queue was full", s.accepted);
    char *log = slurp(logpath);
    ck_assert_msg(strstr(log, "event=backoff") != NULL && strstr(log, "status=429") != NULL, "no 429 back-off logged");
    free(log);
    tu_sleep_ms(2000); /* a while of back-off: a bounded trickle of retries, no hammering */
    summary_t mid = last_summary(logpath, 0);
    ck_assert_msg(mid.refused <= 4 + 2 * mid.elapsed_s, "%.0f refusals in %.1f s", mid.refused, mid.elapsed_s);
    ck_assert(mid.sent == s.sent); /* no new messages while refused */

    tu_start(&S, "persister", NULL); /* the queue drains, the retries get in */
    s = bot_end(&bot, 0, 60000, logpath, "count");
    ck_assert(s.sent == N);
    ck_assert(s.accepted == N);
    ck_assert(s.failed == 0);
    ck_assert(s.retried > 0);
    ck_assert(s.refused >= s.retried);
    ck_assert_msg(s.refused <= 4 + 2 * s.elapsed_s, "%.0f refusals in %.1f s", s.refused, s.elapsed_s);

    PGconn *db = tu_db(&S);
    assert_stored_once(db, N);
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM messages WHERE source = 'bot'"), N);
    /* each accepted message took one key; a retry reused it */
    ck_assert_int_eq(tu_scalar(db, "SELECT count(*) FROM idempotency_keys WHERE key LIKE 'bot-%'"), N);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

START_TEST(test_bot_retries_through_api_restart)
{
    enum { N = 120 };
    char logpath[600], n[16];
    log_path("botrestart", logpath, sizeof(logpath));
    snprintf(n, sizeof(n), "%d", N);
    tu_stack_start_api(&S, "botrestart", NULL);
    const char *args[] = {"--api-url", S.base, "--rate", "40", "--count", n, "--seed", "3", "--concurrency", "4",
                          "--summary-interval", "0.2", NULL};
    pid_t bot = spawn_bot(logpath, args);
    ck_assert_msg(wait_summary(logpath, some_accepted).accepted >= 20, "the bot did not get going; see %s", logpath);
    ck_assert_int_eq(tu_stop(&S.api, SIGTERM, 15000), 0);
    /* connection refused: treated as a 503 with a 1 s wait, the same message retried later */
    summary_t s = wait_summary(logpath, some_refused);
    ck_assert_msg(s.refused > 0, "no refusal while the api was down; see %s", logpath);
    ck_assert(s.accepted < N);
    tu_sleep_ms(1500);
    s = last_summary(logpath, 0);
    ck_assert_msg(s.refused <= 4 + 2 * 2.5, "%.0f refusals while the api was down", s.refused);
    tu_start(&S, "api", NULL);
    s = bot_end(&bot, 0, 60000, logpath, "count");
    ck_assert(s.sent == N && s.accepted == N && s.failed == 0);
    ck_assert(s.retried > 0 && s.refused >= s.retried);
    char *log = slurp(logpath);
    ck_assert_ptr_nonnull(strstr(log, "event=backoff"));
    ck_assert_ptr_nonnull(strstr(log, "status=0"));
    free(log);

    PGconn *db = tu_db(&S);
    assert_stored_once(db, N);
    PQfinish(db);
    tu_stack_cleanup(&S);
}
END_TEST

START_TEST(test_bot_sigterm_prints_summary_and_exits_0)
{
    char logpath[600];
    log_path("botterm", logpath, sizeof(logpath));
    tu_stack_init(&S, "botterm", 100000);
    tu_start(&S, "api", NULL);
    /* no count, no duration: it runs until told; the first message 0.5 s after the start */
    const char *args[] = {"--api-url", S.base, "--per-minute", "600", "--delay", "0.5", NULL};
    int64_t t_spawn = sl_time_mono_us();
    pid_t bot = spawn_bot(logpath, args);
    tu_sleep_ms(1500);
    double lived = (double)(sl_time_mono_us() - t_spawn) / 1e6;
    summary_t s = bot_end(&bot, SIGTERM, 10000, logpath, "signal");
    /* 10/s from 0.5 s on: about 10 by 1.5 s (15 without the delay) */
    ck_assert_msg(s.elapsed_s < lived - 0.5 + 0.3, "sent for %.3f s of %.3f s", s.elapsed_s, lived);
    ck_assert_msg(s.accepted >= s.elapsed_s * 10 - 1 && s.accepted <= (lived - 0.5) * 10 + 2,
                  "accepted %.0f in %.3f s at 10/s (alive %.3f s)", s.accepted, s.elapsed_s, lived);
    tu_stack_cleanup(&S);
}
END_TEST

START_TEST(test_bot_bad_flags_exit_2)
{
    struct {
        const char *args[6];
        const char *says;
    } cases[] = {
        {{"--rate", "0", NULL}, "rate"},
        {{"--rate", "fast", NULL}, "rate"},
        {{"--bogus", "1", NULL}, "unknown option '--bogus'"},
        {{"--rate", "2", "--per-minute", "60", NULL}, "give one"},
        {{"--channels", "general,No Way", NULL}, "channel 'No Way'"},
        {{"--concurrency", "0", NULL}, "concurrency"},
        {{"--api-url", "ftp://x", NULL}, "api-url"},
        {{"--count", NULL}, "needs a value"},
    };
    char logpath[600];
    log_path("botflags", logpath, sizeof(logpath));
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pid_t bot = spawn_bot(logpath, cases[i].args);
        ck_assert_msg(tu_stop(&bot, 0, 10000) == 2, "case %zu did not exit 2", i);
        char *out = slurp(logpath);
        ck_assert_msg(strstr(out, cases[i].says) != NULL, "case %zu: '%s' not in: %s", i, cases[i].says, out);
        free(out);
    }
    const char *help[] = {"--help", NULL};
    pid_t bot = spawn_bot(logpath, help);
    ck_assert_int_eq(tu_stop(&bot, 0, 10000), 0);
    char *out = slurp(logpath);
    ck_assert_ptr_nonnull(strstr(out, "SLUICE_BOT_PER_MINUTE"));
    free(out);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("bot");
    TCase *unit = tcase_create("unit");
    tcase_add_test(unit, test_generator_makes_valid_varied_messages);
    tcase_add_test(unit, test_generator_is_reproducible);
    tcase_add_test(unit, test_generator_refuses_bad_lists);
    tcase_add_test(unit, test_sched_absolute_timeline);
    tcase_add_test(unit, test_sched_stall_catches_up_one_second_at_most);
    tcase_add_test(unit, test_sched_backs_off_and_recovers);
    suite_add_tcase(s, unit);
    TCase *tc = tcase_create("integration");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_bot_bad_flags_exit_2);
    tcase_add_test(tc, test_bot_rate_accuracy);
    tcase_add_test(tc, test_bot_backs_off_on_429_and_stores_each_once);
    tcase_add_test(tc, test_bot_retries_through_api_restart);
    tcase_add_test(tc, test_bot_sigterm_prints_summary_and_exits_0);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
