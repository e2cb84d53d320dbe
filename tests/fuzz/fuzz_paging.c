/*
 * fuzz_paging: what ingest's polling takes from a Mastodon instance's REST answers (sl_mastodon.h):
 * a timeline page's statuses after the last one taken (sl_mastodon_page_after), whose newest id
 * becomes the next request's min_id=, and the rate-limit headers that say how long to wait
 * (sl_mastodon_rate_header, sl_mastodon_rate_wait_ms).
 *
 * Input: the since_id (the newest status taken, "" for none) up to the first '\n'; then header
 * lines ("Name: value", '\n'-terminated, trimmed as ingest trims them) up to an empty line; then
 * the page (JSON).
 *
 * Invariants:
 * - the statuses taken are those of the page with a valid id (1-64 of URL's unreserved
 *   characters: letters, digits, "-._~") that orders after since_id (by length, then bytewise),
 *   each id once, oldest first: none is skipped, none comes twice, and an id put in the next
 *   URL as min_id=<id> cannot add or change a parameter;
 * - every status taken has a local id (the key of its deletes);
 * - a numeric Retry-After is taken as seconds, anything else (an HTTP date) is not;
 * - the wait is from 0 to 15 minutes whatever the headers say (no overflow: UBSan checks), and a
 *   429 with Retry-After: N waits min(N s, 15 min).
 */
#include <jansson.h>
#include <strings.h>

#include "fuzz_util.h"
#include "sl_mastodon.h"
#include "sl_time.h"

#define INSTANCE "https://mastodon.example"

static int unreserved(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '.' ||
           c == '_' || c == '~';
}

static int id_ok_ref(const char *s, size_t len)
{
    if (len < 1 || len > 64)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (!unreserved(s[i]))
            return 0;
    }
    return 1;
}

/* Mastodon's order: a longer id is newer; ids of one length compare bytewise. */
static int id_cmp_ref(const char *a, size_t la, const char *b, size_t lb)
{
    if (la != lb)
        return la < lb ? -1 : 1;
    int c = memcmp(a, b, la);
    return c < 0 ? -1 : c > 0;
}

static void check_page(json_t *page, const char *since)
{
    size_t n = json_array_size(page), slen = strlen(since);
    json_t **out = calloc(n + 1, sizeof(*out));
    FUZZ_CHECK(out != NULL);
    size_t got = sl_mastodon_page_after(page, since, out);
    FUZZ_CHECK(got <= n);
    for (size_t i = 0; i < got; i++) {
        json_t *id = json_object_get(out[i], "id");
        FUZZ_CHECK(json_is_string(id));
        const char *s = json_string_value(id);
        size_t len = json_string_length(id);
        FUZZ_CHECKF(id_ok_ref(s, len), "id '%s' taken", s);
        FUZZ_CHECKF(slen == 0 || id_cmp_ref(s, len, since, slen) > 0, "id '%s' is not after '%s'", s, since);
        if (i > 0) {
            json_t *prev = json_object_get(out[i - 1], "id");
            FUZZ_CHECKF(id_cmp_ref(json_string_value(prev), json_string_length(prev), s, len) < 0,
                        "'%s' then '%s': not oldest first, once each", json_string_value(prev), s);
        }
        char uuid[SL_UUID_STRLEN];
        FUZZ_CHECK(sl_mastodon_local_id(INSTANCE, s, uuid) == 0 && fuzz_uuid_ok(uuid));
    }
    /* none skipped: every status after since_id with a valid id is there */
    for (size_t k = 0; k < n; k++) {
        json_t *id = json_object_get(json_array_get(page, k), "id");
        if (!json_is_string(id) || !id_ok_ref(json_string_value(id), json_string_length(id)) ||
            (slen > 0 && id_cmp_ref(json_string_value(id), json_string_length(id), since, slen) <= 0))
            continue;
        int seen = 0;
        for (size_t i = 0; i < got && !seen; i++) {
            json_t *o = json_object_get(out[i], "id");
            seen = json_string_length(o) == json_string_length(id) &&
                   memcmp(json_string_value(o), json_string_value(id), json_string_length(id)) == 0;
        }
        FUZZ_CHECKF(seen, "status '%s' skipped", json_string_value(id));
    }
    free(out);
}

static int all_digits(const char *v, size_t len)
{
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size;
    const char *nl = memchr(p, '\n', size);
    size_t slen = nl != NULL ? (size_t)(nl - p) : size;
    /* since_id is always one we took: a valid id, or none */
    char since[SL_MASTODON_STATUS_ID_MAX + 1] = "";
    if (slen > 0 && id_ok_ref(p, slen))
        memcpy(since, p, slen);
    p = nl != NULL ? nl + 1 : end;

    sl_mastodon_rate_t rl;
    sl_mastodon_rate_init(&rl);
    long long retry = -1; /* the last numeric Retry-After, saturated */
    int retry_seen = 0;
    while (p < end) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        size_t len = e != NULL ? (size_t)(e - p) : (size_t)(end - p);
        const char *next = e != NULL ? e + 1 : end;
        if (len == 0) {
            p = next;
            break;
        }
        const char *colon = memchr(p, ':', len);
        if (colon != NULL) {
            size_t nlen = (size_t)(colon - p), vlen = len - nlen - 1;
            const char *v = colon + 1;
            while (vlen > 0 && (*v == ' ' || *v == '\t'))
                v++, vlen--;
            while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == ' '))
                vlen--;
            int took = sl_mastodon_rate_header(&rl, p, nlen, v, vlen);
            if (nlen == 11 && strncasecmp(p, "retry-after", 11) == 0) {
                FUZZ_CHECK(took == 1);
                retry_seen = 1;
                retry = all_digits(v, vlen) ? 0 : -1;
                for (size_t i = 0; retry >= 0 && i < vlen; i++)
                    retry = retry > 100000000000000LL ? 1000000000000000LL : retry * 10 + (v[i] - '0');
                FUZZ_CHECKF((rl.retry_after_s >= 0) == (retry >= 0), "Retry-After '%.*s': %lld", (int)vlen, v,
                            rl.retry_after_s);
            }
        }
        p = next;
    }
    static const long statuses[] = {200, 429, 503};
    const int64_t nows[] = {sl_time_now_us(), 0, 253402300799000000LL /* 9999-12-31 */};
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        for (size_t k = 0; k < sizeof(nows) / sizeof(nows[0]); k++) {
            long long w = sl_mastodon_rate_wait_ms(&rl, statuses[i], nows[k]);
            FUZZ_CHECKF(w >= 0 && w <= SL_MASTODON_RATE_WAIT_MAX_MS, "wait %lld ms", w);
            if (statuses[i] == 429 && retry_seen && retry >= 0)
                FUZZ_CHECK(w == (retry * 1000 < SL_MASTODON_RATE_WAIT_MAX_MS ? retry * 1000
                                                                             : SL_MASTODON_RATE_WAIT_MAX_MS));
        }
    }

    json_error_t err;
    json_t *page = json_loadb(p, (size_t)(end - p), JSON_ALLOW_NUL, &err);
    if (json_is_array(page))
        check_page(page, since);
    json_decref(page);
    return 0;
}
