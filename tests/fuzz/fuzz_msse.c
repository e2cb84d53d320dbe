/*
 * fuzz_msse: the text/event-stream parser Mastodon ingest reads (sl_mastodon_sse.h).
 *
 * Input: byte 0 picks max_event (4..131 bytes, or 64 KiB when odd), byte 1 a split point; the
 * rest is the stream.
 *
 * Invariants:
 * - no out-of-bounds read or write (ASan) however the stream arrives;
 * - the same events, comments and counters whether the stream is fed whole, in two pieces split
 *   at the fuzzer's point, or one byte at a time (bytes arrive split anywhere on a socket);
 * - all of them equal what a one-shot reference parser written from the WHATWG event-stream rules
 *   (plus the header's size limit) gives;
 * - no event's data is larger than max_event, no type 64 bytes or more;
 * - after sl_msse_reset the same stream gives the same events again;
 * - a non-zero return of the event callback stops the feed and is returned.
 */
#include "fuzz_util.h"
#include "sl_buf.h"
#include "sl_mastodon_sse.h"

typedef struct {
    sl_buf_t log; /* every event and comment, length-prefixed, in order */
    size_t events, comments;
    size_t max_event;
    int stop_at; /* return 7 from the stop_at-th event (1-based), 0: never */
} record_t;

static void put_item(sl_buf_t *b, char kind, const char *a, size_t alen, const char *d, size_t dlen)
{
    sl_buf_appendf(b, "%c%zu:", kind, alen);
    if (alen > 0)
        sl_buf_append(b, a, alen);
    sl_buf_appendf(b, "%zu:", dlen);
    if (dlen > 0)
        sl_buf_append(b, d, dlen);
}

static int on_event(void *arg, const char *event, const char *data, size_t len)
{
    record_t *r = arg;
    FUZZ_CHECK(event != NULL && data != NULL);
    FUZZ_CHECK(strlen(event) < SL_MSSE_EVENT_MAX && event[0] != '\0');
    FUZZ_CHECK(len <= r->max_event); /* "larger than max_event" is dropped */
    put_item(&r->log, 'E', event, strlen(event), data, len);
    r->events++;
    return r->stop_at > 0 && (size_t)r->stop_at == r->events ? 7 : 0;
}

static void on_comment(void *arg, const char *text, size_t len)
{
    record_t *r = arg;
    put_item(&r->log, 'C', "", 0, text, len);
    r->comments++;
}

/* The reference: the whole stream at once, straight from the rules. */
static void reference(const char *s, size_t len, size_t max, record_t *r, uint64_t *dropped)
{
    sl_buf_t data = SL_BUF_INIT;
    char event[SL_MSSE_EVENT_MAX] = "";
    int has_data = 0, too_big = 0;
    size_t i = 0;
    if (len >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0)
        i = 3;
    while (i < len) {
        size_t e = i;
        while (e < len && s[e] != '\r' && s[e] != '\n')
            e++;
        if (e == len)
            break; /* an unfinished line is not a line */
        const char *line = s + i;
        size_t n = e - i;
        i = e + (s[e] == '\r' && e + 1 < len && s[e + 1] == '\n' ? 2 : 1);
        if (n > max) {
            too_big = 1;
        } else if (n == 0) {
            if (too_big)
                (*dropped)++;
            else if (has_data)
                on_event(r, event[0] != '\0' ? event : "message", data.len ? data.data : "", data.len);
            data.len = 0;
            event[0] = '\0';
            has_data = too_big = 0;
        } else if (line[0] == ':') {
            on_comment(r, line + 1, n - 1);
        } else {
            const char *colon = memchr(line, ':', n);
            size_t flen = colon != NULL ? (size_t)(colon - line) : n;
            const char *v = colon != NULL ? colon + 1 : line + n;
            size_t vlen = (size_t)(line + n - v);
            if (vlen > 0 && v[0] == ' ')
                v++, vlen--;
            if (flen == 5 && memcmp(line, "event", 5) == 0) {
                size_t k = vlen < sizeof(event) - 1 ? vlen : sizeof(event) - 1;
                memcpy(event, v, k);
                event[k] = '\0';
            } else if (flen == 4 && memcmp(line, "data", 4) == 0 && !too_big) {
                if (data.len + vlen + 1 > max) {
                    too_big = 1;
                    data.len = 0;
                } else {
                    if (has_data)
                        sl_buf_append(&data, "\n", 1);
                    if (vlen > 0)
                        sl_buf_append(&data, v, vlen);
                    has_data = 1;
                }
            }
        }
    }
    sl_buf_free(&data);
}

/* Feeds s in pieces of the given sizes (the last piece takes the rest). */
static void run(const char *s, size_t len, size_t max, const size_t *cuts, size_t ncuts, record_t *r,
                uint64_t *dropped)
{
    sl_msse_t p;
    size_t at = 0;
    sl_msse_init(&p, max, on_event, on_comment, r);
    for (size_t k = 0; k < ncuts && at < len; k++) {
        size_t n = cuts[k] < len - at ? cuts[k] : len - at;
        FUZZ_CHECK(sl_msse_feed(&p, s + at, n) == 0);
        at += n;
    }
    FUZZ_CHECK(sl_msse_feed(&p, s + at, len - at) == 0);
    FUZZ_CHECK(p.events == r->events && p.comments == r->comments);
    *dropped = p.dropped;
    sl_msse_free(&p);
}

static void same(const record_t *a, const record_t *b, const char *what)
{
    FUZZ_CHECKF(a->events == b->events && a->comments == b->comments && a->log.len == b->log.len &&
                    (a->log.len == 0 || memcmp(a->log.data, b->log.data, a->log.len) == 0),
                "%s: %zu events, %zu comments vs %zu, %zu", what, a->events, a->comments, b->events, b->comments);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t max = data[0] & 1 ? 65536 : 4 + (size_t)(data[0] >> 1);
    const char *s = (const char *)data + 2;
    size_t len = size - 2, split = len * data[1] / 255;
    record_t whole = {SL_BUF_INIT, 0, 0, max, 0}, two = whole, bytes = whole, ref = whole;
    uint64_t d_whole = 0, d_two = 0, d_bytes = 0, d_ref = 0;

    run(s, len, max, NULL, 0, &whole, &d_whole);
    run(s, len, max, &split, 1, &two, &d_two);
    size_t *ones = malloc((len + 1) * sizeof(*ones));
    FUZZ_CHECK(ones != NULL);
    for (size_t k = 0; k <= len; k++)
        ones[k] = 1;
    run(s, len, max, ones, len, &bytes, &d_bytes);
    free(ones);
    reference(s, len, max, &ref, &d_ref);

    same(&whole, &two, "split in two");
    same(&whole, &bytes, "byte by byte");
    same(&whole, &ref, "reference");
    FUZZ_CHECK(d_whole == d_two && d_whole == d_bytes && d_whole == d_ref);

    /* reset: a new connection starts afresh, counters stay */
    {
        record_t again = whole;
        again.log = (sl_buf_t)SL_BUF_INIT;
        again.events = again.comments = 0;
        sl_msse_t p;
        sl_msse_init(&p, max, on_event, on_comment, &again);
        FUZZ_CHECK(sl_msse_feed(&p, s, split) == 0);
        sl_msse_reset(&p);
        size_t before = again.log.len, ev_before = again.events;
        FUZZ_CHECK(sl_msse_feed(&p, s, len) == 0);
        FUZZ_CHECK(again.events - ev_before == whole.events);
        FUZZ_CHECK(again.log.len - before == whole.log.len &&
                   (whole.log.len == 0 || memcmp(again.log.data + before, whole.log.data, whole.log.len) == 0));
        sl_msse_free(&p);
        sl_buf_free(&again.log);
    }

    /* a callback that says stop */
    if (whole.events > 0) {
        record_t stop = {SL_BUF_INIT, 0, 0, max, 1};
        sl_msse_t p;
        sl_msse_init(&p, max, on_event, on_comment, &stop);
        FUZZ_CHECK(sl_msse_feed(&p, s, len) == 7);
        FUZZ_CHECK(stop.events == 1);
        sl_msse_free(&p);
        sl_buf_free(&stop.log);
    }

    sl_buf_free(&whole.log);
    sl_buf_free(&two.log);
    sl_buf_free(&bytes.log);
    sl_buf_free(&ref.log);
    return 0;
}
