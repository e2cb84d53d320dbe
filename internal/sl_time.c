/*
 * sl_time: see sl_time.h. Civil-date conversion is done by hand (days_from_civil) so parsing
 * neither depends on the TZ environment nor on timegm's availability.
 */
#include "sl_time.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

int64_t sl_time_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t sl_time_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Writes v as exactly width decimal digits at p (v < 10^width). */
static void put_digits(char *p, long v, int width)
{
    for (int i = width - 1; i >= 0; i--, v /= 10)
        p[i] = (char)('0' + v % 10);
}

void sl_time_format(int64_t us, char buf[SL_TIME_RFC3339_LEN])
{
    time_t sec = (time_t)(us / 1000000);
    long frac = (long)(us % 1000000);
    struct tm tm;
    if (frac < 0) {
        frac += 1000000;
        sec -= 1;
    }
    gmtime_r(&sec, &tm);
    long year = tm.tm_year + 1900L;
    if (year < 0 || year > 9999)
        year = year < 0 ? 0 : 9999; /* outside RFC 3339: sl_time_parse refuses such times anyway */
    /* "YYYY-MM-DDTHH:MM:SS.ffffffZ", without snprintf: every message written takes one or two */
    memcpy(buf, "0000-00-00T00:00:00.000000Z", SL_TIME_RFC3339_LEN);
    put_digits(buf, year, 4);
    put_digits(buf + 5, tm.tm_mon + 1, 2);
    put_digits(buf + 8, tm.tm_mday, 2);
    put_digits(buf + 11, tm.tm_hour, 2);
    put_digits(buf + 14, tm.tm_min, 2);
    put_digits(buf + 17, tm.tm_sec, 2);
    put_digits(buf + 20, frac, 6);
}

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int digits(const char *s, size_t len, size_t *pos, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (*pos >= len || s[*pos] < '0' || s[*pos] > '9')
            return -1;
        v = v * 10 + (s[(*pos)++] - '0');
    }
    *out = v;
    return 0;
}

static int expect(const char *s, size_t len, size_t *pos, char c)
{
    if (*pos >= len || s[*pos] != c)
        return -1;
    (*pos)++;
    return 0;
}

int sl_time_parse(const char *s, size_t len, int64_t *us)
{
    size_t p = 0;
    int Y, M, D, h, m, sec, frac = 0, oh = 0, om = 0, sign = 0;
    if (digits(s, len, &p, 4, &Y) || expect(s, len, &p, '-') || digits(s, len, &p, 2, &M) || expect(s, len, &p, '-') ||
        digits(s, len, &p, 2, &D))
        return -1;
    if (p >= len || (s[p] != 'T' && s[p] != 't' && s[p] != ' '))
        return -1;
    p++;
    if (digits(s, len, &p, 2, &h) || expect(s, len, &p, ':') || digits(s, len, &p, 2, &m) || expect(s, len, &p, ':') ||
        digits(s, len, &p, 2, &sec))
        return -1;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (M < 1 || M > 12 || D < 1 || D > mdays[M - 1] || h > 23 || m > 59 || sec > 60)
        return -1;
    if (M == 2 && D == 29 && !((Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0))
        return -1; /* 29 February of a common year: no such day */
    if (p < len && s[p] == '.') {
        int n = 0;
        p++;
        while (p < len && s[p] >= '0' && s[p] <= '9') {
            if (n < 6) {
                frac = frac * 10 + (s[p] - '0');
                n++;
            }
            p++;
        }
        if (n == 0)
            return -1;
        for (; n < 6; n++)
            frac *= 10;
    }
    if (p < len && (s[p] == 'Z' || s[p] == 'z')) {
        p++;
    } else if (p < len && (s[p] == '+' || s[p] == '-')) {
        sign = s[p++] == '-' ? -1 : 1;
        if (digits(s, len, &p, 2, &oh))
            return -1;
        if (p < len && s[p] == ':')
            p++;
        if (p < len && digits(s, len, &p, 2, &om))
            return -1;
    }
    if (p != len)
        return -1;
    int64_t days = days_from_civil(Y, (unsigned)M, (unsigned)D);
    int64_t secs = days * 86400 + h * 3600 + m * 60 + sec - sign * (oh * 3600 + om * 60);
    if (secs < -62167219200LL || secs >= 253402300800LL) /* years 0000 to 9999 in UTC: what sl_time_format writes */
        return -1;
    *us = secs * 1000000 + frac;
    return 0;
}
