/*
 * sl_uuid: see sl_uuid.h.
 */
#include "sl_uuid.h"

#include <openssl/evp.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

void sl_uuid_format(const uint8_t b[16], char out[SL_UUID_STRLEN])
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int sl_uuid_parse(const char *s, size_t len, uint8_t b[16])
{
    size_t o = 0;
    if (len != 36)
        return -1;
    for (size_t i = 0; i < 36;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i++] != '-')
                return -1;
            continue;
        }
        int hi = hexval(s[i]), lo = hexval(s[i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        b[o++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    return 0;
}

int sl_uuid_valid(const char *s, size_t len)
{
    uint8_t b[16];
    return sl_uuid_parse(s, len, b) == 0;
}

int sl_uuid_version(const char *s)
{
    uint8_t b[16];
    return sl_uuid_parse(s, strlen(s), b) == 0 ? b[6] >> 4 : -1;
}

/* Random bytes from a buffer filled 4 KiB at a time: one getrandom(2) per 256 ids, not one each. */
static int random_bytes(uint8_t *dst, size_t n)
{
    static uint8_t pool[4096];
    static size_t left;
    if (left < n) {
        if (getrandom(pool, sizeof(pool), 0) != (ssize_t)sizeof(pool))
            return -1;
        left = sizeof(pool);
    }
    memcpy(dst, pool + sizeof(pool) - left, n);
    left -= n;
    return 0;
}

int sl_uuid_v7_at(uint64_t ms, char out[SL_UUID_STRLEN])
{
    static uint64_t last_ms;
    static uint16_t counter;
    uint8_t b[16];

    if (random_bytes(b, sizeof(b)) != 0)
        return -1;
    if (ms <= last_ms) {
        /* Same (or a stepped-back) millisecond: keep order by counting on from the last id. */
        if (++counter > 0xfff) {
            counter = 0;
            last_ms++;
        }
        ms = last_ms;
    } else {
        counter = (uint16_t)((b[6] << 8 | b[7]) & 0x7ff); /* random start, leaving room to count */
        last_ms = ms;
    }
    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)(ms >> (40 - 8 * i));
    b[6] = (uint8_t)(0x70 | (counter >> 8));
    b[7] = (uint8_t)counter;
    b[8] = (uint8_t)(0x80 | (b[8] & 0x3f));
    sl_uuid_format(b, out);
    return 0;
}

int sl_uuid_v7(char out[SL_UUID_STRLEN])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return sl_uuid_v7_at((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000, out);
}

int sl_uuid_v5(const char *ns, const void *name, size_t len, char out[SL_UUID_STRLEN])
{
    uint8_t nsb[16], digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_MD_CTX *ctx;
    int ok;
    if (sl_uuid_parse(ns, strlen(ns), nsb) != 0 || (ctx = EVP_MD_CTX_new()) == NULL)
        return -1;
    ok = EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) && EVP_DigestUpdate(ctx, nsb, sizeof(nsb)) &&
         EVP_DigestUpdate(ctx, name, len) && EVP_DigestFinal_ex(ctx, digest, &dlen);
    EVP_MD_CTX_free(ctx);
    if (!ok || dlen < 16)
        return -1;
    digest[6] = (uint8_t)(0x50 | (digest[6] & 0x0f));
    digest[8] = (uint8_t)(0x80 | (digest[8] & 0x3f));
    sl_uuid_format(digest, out);
    return 0;
}
