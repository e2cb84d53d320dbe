/*
 * fuzz_time: sl_time_parse (sl_time.h), which reads every created_at and edited_at that comes
 * from a queue payload, a database row or a Mastodon status.
 *
 * Invariants:
 * - no out-of-bounds read and no undefined arithmetic on any text;
 * - an accepted timestamp is one sl_time_format can write back: the 27-byte canonical form
 *   "YYYY-MM-DDTHH:MM:SS.ffffffZ", which parses again to the same microsecond (messages are
 *   re-encoded with sl_time_format on their way to the queue, the database and the clients);
 * - a timestamp already in canonical form with a real calendar date comes back unchanged, and one
 *   whose date does not exist (31 April, 29 February of a common year) is refused.
 */
#include "fuzz_util.h"
#include "sl_time.h"

static int canonical_shape(const char *s, size_t len)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    if (len != sizeof(shape) - 1)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (shape[i] == 'd' ? s[i] < '0' || s[i] > '9' : s[i] != shape[i])
            return 0;
    }
    return 1;
}

static int num(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

static int real_date(const char *s)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y = num(s, 4), m = num(s + 5, 2), d = num(s + 8, 2);
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (m < 1 || m > 12 || d < 1)
        return 0;
    if (d > mdays[m - 1] + (m == 2 && leap))
        return 0;
    return num(s + 11, 2) <= 23 && num(s + 14, 2) <= 59 && num(s + 17, 2) <= 59;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    int64_t us, back;
    char buf[SL_TIME_RFC3339_LEN];
    if (sl_time_parse(s, size, &us) != 0) {
        FUZZ_CHECK(!(canonical_shape(s, size) && real_date(s)));
        return 0;
    }
    /* a day that does not exist (31 April, 29 February of a common year) is refused */
    if (canonical_shape(s, size)) /* (a leap second, :60, is let through) */
        FUZZ_CHECKF(real_date(s) || num(s + 17, 2) == 60, "'%.*s' is not a real date", (int)size, s);
    sl_time_format(us, buf);
    FUZZ_CHECKF(canonical_shape(buf, strlen(buf)), "'%.*s' (%lld us) is written as '%s'", (int)size, s,
                (long long)us, buf);
    FUZZ_CHECKF(sl_time_parse(buf, strlen(buf), &back) == 0 && back == us,
                "'%.*s' (%lld us) does not come back from '%s'", (int)size, s, (long long)us, buf);
    if (canonical_shape(s, size) && real_date(s))
        FUZZ_CHECKF(memcmp(buf, s, size) == 0, "'%.*s' is written back as '%s'", (int)size, s, buf);
    return 0;
}
