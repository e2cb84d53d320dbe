/*
 * fuzz_query: what GET /v1/stream reads from its request: query parameters (sl_http_query,
 * sl_http.h), the counts in history=, since= and Last-Event-ID (sl_stream_parse_count), and the
 * channels= list (sl_stream_parse_channels, sl_stream.h); and what GET /v1/messages reads: limit=
 * and before= (sl_api_int_param, sl_api.h), channel=. sl_http_query only reads req->path,
 * req->query_at and req->pool, so a zeroed h2o_req_t with those three set is a faithful request
 * for it.
 *
 * Input: the query string (what follows '?'), then optionally '\n' and a Last-Event-ID value.
 *
 * Invariants:
 * - sl_http_query agrees with a reference decoder: the first parameter of that exact name,
 *   "+" as space, "%XX" decoded, a bad or cut-off "%" an error;
 * - sl_stream_parse_count accepts exactly 1-19 ASCII digits whose value is at most max, and
 *   gives it (for the configured maxima and for small ones, below a single digit's 9);
 * - sl_stream_parse_channels accepts exactly a comma-separated list of valid channels (each may
 *   be written with one leading '#'), gives them in canonical form, in order without duplicates,
 *   and refuses more than max distinct ones (too_many_channels);
 * - sl_api_int_param takes a parameter exactly when it is present, well encoded and such a count
 *   from min to max (limit= 1..HISTORY_MAX, before= 1..INT64_MAX: before=9999999999999999999 is
 *   refused, not overflowed), says whether it was present, and leaves *out alone otherwise;
 * - no out-of-bounds access, no undefined arithmetic (a Last-Event-ID is anyone's text).
 */
#include "fuzz_util.h"
#include "sl_api.h"
#include "sl_buf.h"
#include "sl_http.h"
#include "sl_stream.h"

#define MAX_CHANNELS 4
#define HISTORY_MAX 1000

static int unhex_ref(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* 1 and the decoded value, 0 when absent, -1 when badly encoded. */
static int query_ref(const char *q, size_t len, const char *name, sl_buf_t *out)
{
    size_t nlen = strlen(name), i = 0;
    while (i < len) { /* an empty last parameter ("a=1&") is no parameter */
        size_t e = i;
        while (e < len && q[e] != '&')
            e++;
        size_t k = i;
        while (k < e && q[k] != '=')
            k++;
        if (k - i == nlen && memcmp(q + i, name, nlen) == 0) {
            size_t v = k < e ? k + 1 : e;
            out->len = 0;
            sl_buf_reserve(out, 1);
            for (; v < e; v++) {
                char c = q[v];
                if (c == '%') {
                    if (e - v < 3 || unhex_ref(q[v + 1]) < 0 || unhex_ref(q[v + 2]) < 0)
                        return -1;
                    c = (char)(unhex_ref(q[v + 1]) * 16 + unhex_ref(q[v + 2]));
                    v += 2;
                } else if (c == '+') {
                    c = ' ';
                }
                sl_buf_append(out, &c, 1);
            }
            return 1;
        }
        i = e + 1;
    }
    return 0;
}

static int count_ref(const char *s, size_t len, long long max, long long *out)
{
    unsigned long long v = 0;
    if (len < 1 || len > 19)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0'); /* 19 digits fit in 64 unsigned bits */
    }
    if (v > (unsigned long long)max)
        return -1;
    *out = (long long)v;
    return 0;
}

static void check_count(const char *s, size_t len, long long max)
{
    long long got = -1, want = -1;
    int r = sl_stream_parse_count(s, len, max, &got), rr = count_ref(s, len, max, &want);
    FUZZ_CHECKF(r == rr, "'%.*s' (max %lld): %d, expected %d", (int)len, s, max, r, rr);
    if (r == 0)
        FUZZ_CHECK(got == want && got >= 0 && got <= max);
}

static void check_channels(const char *s, size_t len)
{
    char(*ch)[SL_CHANNEL_MAX + 1] = NULL;
    sl_error_t err;
    int n = sl_stream_parse_channels(s, len, MAX_CHANNELS, &ch, &err);
    /* the reference: the items in order; the first bad one or the first one too many refuses */
    char items[MAX_CHANNELS][SL_CHANNEL_MAX + 1];
    int distinct = 0;
    const char *want_err = NULL;
    for (size_t i = 0;;) {
        size_t e = i;
        while (e < len && s[e] != ',')
            e++;
        size_t b = i < e && s[i] == '#' ? i + 1 : i; /* "#general" is general */
        if (!fuzz_channel_ok(s + b, e - b)) {
            want_err = "invalid_channel";
            break;
        }
        int dup = 0;
        for (int k = 0; k < distinct; k++)
            dup |= strlen(items[k]) == e - b && memcmp(items[k], s + b, e - b) == 0;
        if (!dup) {
            if (distinct == MAX_CHANNELS) {
                want_err = "too_many_channels";
                break;
            }
            memcpy(items[distinct], s + b, e - b);
            items[distinct][e - b] = '\0';
            distinct++;
        }
        if (e >= len)
            break;
        i = e + 1;
    }
    if (want_err != NULL) {
        FUZZ_CHECKF(n == -1 && err.status == 400 && strcmp(err.code, want_err) == 0, "'%.*s': %d, expected %s",
                    (int)len, s, n, want_err);
        return;
    }
    FUZZ_CHECK(n == distinct && n >= 1 && n <= MAX_CHANNELS);
    for (int k = 0; k < n; k++)
        FUZZ_CHECK(strcmp(ch[k], items[k]) == 0);
    free(ch);
}

static void check_api_param(h2o_req_t *req, const char *q, size_t qlen, const char *name, long long min, long long max)
{
    sl_buf_t v = SL_BUF_INIT;
    long long got = -7, want = -1;
    int present = -1;
    int r = sl_api_int_param(req, name, min, max, &got, &present), rr = query_ref(q, qlen, name, &v);
    if (rr == 0)
        FUZZ_CHECKF(r == 0 && present == 0 && got == -7, "%s absent: %d, present %d", name, r, present);
    else if (rr == 1 && count_ref(v.data, v.len, max, &want) == 0 && want >= min)
        FUZZ_CHECKF(r == 0 && present == 1 && got == want, "%s='%s': %d, %lld", name, v.data, r, got);
    else
        FUZZ_CHECKF(r == -1 && got == -7, "%s='%s' (%lld..%lld): %d, %lld", name, rr == 1 ? v.data : "(bad encoding)",
                    min, max, r, got);
    sl_buf_free(&v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char prefix[] = "/v1/stream?";
    const char *nl = memchr(data, '\n', size);
    size_t qlen = nl != NULL ? (size_t)(nl - (const char *)data) : size;
    const char *leid = nl != NULL ? nl + 1 : NULL;
    size_t leid_len = nl != NULL ? size - qlen - 1 : 0;

    /* the path h2o would give: exactly as long as the request's, so ASan sees any overread */
    char *path = malloc(sizeof(prefix) - 1 + qlen);
    FUZZ_CHECK(path != NULL);
    memcpy(path, prefix, sizeof(prefix) - 1);
    memcpy(path + sizeof(prefix) - 1, data, qlen);
    h2o_req_t req;
    memset(&req, 0, sizeof(req));
    h2o_mem_init_pool(&req.pool);
    req.path = h2o_iovec_init(path, sizeof(prefix) - 1 + qlen);
    req.query_at = sizeof(prefix) - 2;

    static const char *const names[] = {"format", "history", "since", "channels", "channel", ""};
    sl_buf_t want = SL_BUF_INIT;
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        h2o_iovec_t v = {NULL, 0};
        int r = sl_http_query(&req, names[k], &v), rr = query_ref(path + req.query_at + 1, qlen, names[k], &want);
        FUZZ_CHECKF(r == rr, "%s: %d, expected %d", names[k], r, rr);
        if (r <= 0)
            continue;
        FUZZ_CHECKF(v.len == want.len && memcmp(v.base, want.data, v.len) == 0 && v.base[v.len] == '\0',
                    "%s: '%.*s', expected '%s'", names[k], (int)v.len, v.base, want.data);
        if (strcmp(names[k], "history") == 0) {
            check_count(v.base, v.len, HISTORY_MAX);
            check_count(v.base, v.len, 0); /* SLUICE_SSE_HISTORY_MAX may be that small */
            check_count(v.base, v.len, 5);
        }
        else if (strcmp(names[k], "since") == 0)
            check_count(v.base, v.len, INT64_MAX);
        else if (strcmp(names[k], "channels") == 0)
            check_channels(v.base, v.len);
    }
    sl_buf_free(&want);

    /* GET /v1/messages */
    check_api_param(&req, path + req.query_at + 1, qlen, "limit", 1, HISTORY_MAX);
    check_api_param(&req, path + req.query_at + 1, qlen, "before", 1, INT64_MAX);

    /* Last-Event-ID, as the stream reads it */
    if (leid != NULL) {
        char *copy = malloc(leid_len > 0 ? leid_len : 1); /* exactly its bytes: ASan sees an overread */
        FUZZ_CHECK(copy != NULL);
        memcpy(copy, leid, leid_len);
        check_count(copy, leid_len, INT64_MAX);
        free(copy);
    }
    h2o_mem_clear_pool(&req.pool);
    free(path);
    return 0;
}
