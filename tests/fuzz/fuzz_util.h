/*
 * fuzz_util: what every libFuzzer target of sluice shares: an invariant check that aborts (so
 * libFuzzer records the input as a crash) and reference decoders written from the specifications,
 * independently of internal/, to compare the service's parsers against.
 */
#ifndef SL_FUZZ_UTIL_H
#define SL_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond)                                                                                   \
    do {                                                                                                   \
        if (!(cond)) {                                                                                     \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);                   \
            abort();                                                                                       \
        }                                                                                                  \
    } while (0)

/* Like FUZZ_CHECK, with a printf-style explanation. */
#define FUZZ_CHECKF(cond, ...)                                                                             \
    do {                                                                                                   \
        if (!(cond)) {                                                                                     \
            fprintf(stderr, "%s:%d: invariant failed: %s: ", __FILE__, __LINE__, #cond);                   \
            fprintf(stderr, __VA_ARGS__);                                                                  \
            fputc('\n', stderr);                                                                           \
            abort();                                                                                       \
        }                                                                                                  \
    } while (0)

/* Length of the well-formed UTF-8 sequence at s[0..n) per Unicode Table 3-7, or 0; *cp gets its
 * code point. */
static inline size_t fuzz_utf8_seq(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char c = s[0];
    unsigned char lo = 0x80, hi = 0xbf;
    size_t len;
    uint32_t v;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        v = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        v = c & 0x0f;
        if (c == 0xe0)
            lo = 0xa0;
        if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        v = c & 0x07;
        if (c == 0xf0)
            lo = 0x90;
        if (c == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (len > n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xc0) != 0x80)
            return 0;
        v = v << 6 | (s[k] & 0x3f);
    }
    *cp = v;
    return len;
}

/* Code points in s if it is well-formed UTF-8, else -1. */
static inline long fuzz_utf8_count(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    long n = 0;
    uint32_t cp;
    for (size_t i = 0; i < len; n++) {
        size_t l = fuzz_utf8_seq(s + i, len - i, &cp);
        if (l == 0)
            return -1;
        i += l;
    }
    return n;
}

/* C0, DEL and C1 control characters. */
static inline int fuzz_is_control(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f);
}

/* 1 if s is well-formed UTF-8 without any control character other than those in allowed. */
static inline int fuzz_utf8_clean(const char *str, size_t len, const char *allowed)
{
    const unsigned char *s = (const unsigned char *)str;
    uint32_t cp;
    for (size_t i = 0; i < len;) {
        size_t l = fuzz_utf8_seq(s + i, len - i, &cp);
        if (l == 0)
            return 0;
        if (fuzz_is_control(cp) && (cp == 0 || strchr(allowed, (int)cp) == NULL))
            return 0;
        i += l;
    }
    return 1;
}

/* [a-z0-9_-]{1,64} */
static inline int fuzz_channel_ok(const char *s, size_t len)
{
    if (len < 1 || len > 64)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Canonical UUID text: 8-4-4-4-12 hex digits. */
static inline int fuzz_uuid_ok(const char *s)
{
    if (strlen(s) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        char c = s[i];
        if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return 0;
    }
    return 1;
}

/* A NUL-terminated copy of the fuzzer's bytes (the targets' inputs are not terminated). */
static inline char *fuzz_strndup(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL)
        abort();
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

#endif
