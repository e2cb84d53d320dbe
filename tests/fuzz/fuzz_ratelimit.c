/*
 * fuzz_ratelimit: the per-client budgets that clients choose the keys of (sl_ratelimit.h): the
 * api's token buckets keyed "t:<token>" or "a:<address>", with many clients, long keys, idle ones
 * swept, and more clients than the table tracks; and the per-address key of the connection limit
 * and the history caps (sl_http_addr_key, sl_http.h).
 *
 * Input: byte 0 picks the rate and burst, byte 1 the number of keys tracked (1-16); then
 * operations, one byte each with what follows it:
 *   00tttttt        time goes on by t^2 ms (up to ~4 s);
 *   01nnnnnn        the victim (a client with a bucket of its own from the start) takes n+1 times;
 *   10unnnnn A...   a client at address A (4 bytes, or 16 with u set; of another family when the
 *                   input ends first), keyed as the api keys it, takes n+1 times;
 *   11llllll C K... a client with token K (l bytes, to a NUL) takes C+1 times.
 *
 * Invariants:
 * - at most max_keys clients are tracked, however many keys come;
 * - a take is allowed (0) or says to wait 1 to ceil(1/rate) whole seconds;
 * - the victim's bucket behaves exactly like a lone token bucket, whatever the other clients do
 *   (checked until the victim's bucket is first full while others take: it may be swept then,
 *   and a swept client is a newcomer again);
 * - sl_http_addr_key gives an IPv4 address's 4 bytes, an IPv6 address's /64 (8 bytes), an
 *   IPv4-mapped one its IPv4 address's 4, nothing for another family, zeroes the rest and writes
 *   nothing past its 16 bytes; the text of a key is empty exactly for no key.
 */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "fuzz_util.h"
#include "sl_http.h"
#include "sl_ratelimit.h"

struct ref_bucket {
    double tokens;
    int64_t at_us;
};

/* A token bucket from its definition: rate tokens a second, at most burst, one per request. */
static void ref_refill(struct ref_bucket *b, double rate, double burst, int64_t now_us)
{
    if (now_us > b->at_us) {
        b->tokens = fmin(burst, b->tokens + rate * (double)(now_us - b->at_us) / 1e6);
        b->at_us = now_us;
    }
}

static int ref_take(struct ref_bucket *b, double rate, double burst, int64_t now_us)
{
    ref_refill(b, rate, burst, now_us);
    if (b->tokens >= 1) {
        b->tokens -= 1;
        return 0;
    }
    double wait = (1 - b->tokens) / rate;
    return wait < 1 ? 1 : (int)ceil(wait);
}

#define VICTIM "v:victim" /* no client's key: those are "a:" and "t:" */

struct run {
    sl_ratelimit_t *r;
    double rate, burst;
    size_t max_keys;
    struct ref_bucket victim;
    int swept; /* the victim's bucket may have been dropped as idle */
    int64_t now;
};

static int take(struct run *u, const char *key)
{
    if (strcmp(key, VICTIM) != 0) { /* would the victim's bucket be full now (a copy: no rounding) */
        struct ref_bucket v = u->victim;
        ref_refill(&v, u->rate, u->burst, u->now);
        u->swept |= v.tokens >= u->burst;
    }
    int w = sl_ratelimit_take(u->r, key, u->now);
    int most = (int)ceil(1 / u->rate);
    FUZZ_CHECKF(w == 0 || (w >= 1 && w <= (most > 1 ? most : 1)), "%s: wait %d (rate %g)", key, w, u->rate);
    size_t k = sl_ratelimit_keys(u->r);
    FUZZ_CHECKF(k <= u->max_keys, "%zu keys tracked, at most %zu", k, u->max_keys);
    return w;
}

/* The key of an address as every per-client limit makes it, and the api's "a:<key>". */
static void address_key(const uint8_t *a, size_t alen, int v6, char *key, size_t size)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    struct sockaddr_storage ss;
    unsigned char out[17];
    const uint8_t *want = a;
    memset(&ss, 0, sizeof(ss));
    memset(out, 0xa5, sizeof(out));
    socklen_t wlen = 0;
    if (alen == 4 && !v6) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, a, 4);
        wlen = 4;
    } else if (alen == 16 && v6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, a, 16);
        if (memcmp(a, mapped, 12) == 0) /* ::ffff:a.b.c.d is a.b.c.d */
            want = a + 12, wlen = 4;
        else /* one host owns a /64 */
            wlen = 8;
    } else {
        ss.ss_family = AF_UNIX;
    }
    socklen_t n = sl_http_addr_key(&ss, out);
    FUZZ_CHECKF(n == wlen, "%u bytes, expected %u", (unsigned)n, (unsigned)wlen);
    FUZZ_CHECK(memcmp(out, want, n) == 0);
    for (size_t i = n; i < 16; i++)
        FUZZ_CHECK(out[i] == 0);
    FUZZ_CHECK(out[16] == 0xa5);
    char text[INET6_ADDRSTRLEN + 4];
    sl_http_addr_key_text(out, n, text, sizeof(text));
    FUZZ_CHECK((n == 0) == (text[0] == '\0'));
    snprintf(key, size, "a:%s", text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const double rates[] = {0.3, 1, 7, 1000}, bursts[] = {1, 2, 5.5, 100};
    if (size < 2)
        return 0;
    struct run u = {NULL, rates[data[0] & 3], bursts[(data[0] >> 2) & 3], 1 + (size_t)data[1] % 16, {0, 0}, 0, 1000000};
    FUZZ_CHECK((u.r = sl_ratelimit_create(u.rate, u.burst, u.max_keys)) != NULL);
    u.victim.tokens = u.burst;
    u.victim.at_us = u.now;
    FUZZ_CHECK(ref_take(&u.victim, u.rate, u.burst, u.now) == 0 && take(&u, VICTIM) == 0);
    char key[300];
    for (size_t i = 2; i < size;) {
        uint8_t op = data[i++];
        int n = op & 0x3f;
        switch (op >> 6) {
        case 0:
            u.now += (int64_t)n * n * 1000;
            break;
        case 1:
            for (int k = 0; k <= n; k++) {
                struct ref_bucket before = u.victim;
                ref_refill(&before, u.rate, u.burst, u.now);
                int w = take(&u, VICTIM), want = ref_take(&u.victim, u.rate, u.burst, u.now);
                /* At exactly one token, a bucket refilled in steps (at each sweep) and one refilled
                 * at once differ in the last bits of a double: either answer is right, and the two
                 * are not comparable after it. */
                if (w != want && fabs(before.tokens - 1) < 1e-6)
                    u.swept = 1;
                FUZZ_CHECKF(u.swept || w == want, "the victim waits %d, alone it would wait %d", w, want);
            }
            break;
        case 2: {
            int v6 = (op & 0x20) != 0;
            size_t alen = v6 ? 16 : 4;
            if (size - i < alen)
                alen = size - i;
            address_key(data + i, alen, v6, key, sizeof(key));
            i += alen;
            for (int k = 0; k <= (op & 0x1f); k++)
                take(&u, key);
            break;
        }
        default: {
            int times = i < size ? data[i++] + 1 : 1;
            size_t l = 0;
            while (l < (size_t)n && i + l < size && data[i + l] != 0)
                l++;
            snprintf(key, sizeof(key), "t:%.*s", (int)l, (const char *)data + i);
            i += l;
            for (int k = 0; k < times; k++)
                take(&u, key);
            break;
        }
        }
    }
    sl_ratelimit_destroy(u.r);
    return 0;
}
