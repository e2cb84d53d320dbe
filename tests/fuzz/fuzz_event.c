/*
 * fuzz_event: a live-exchange payload as the streaming service reads it (sl_event_from_json,
 * sl_event.h) and the frames it then sends to every subscriber (sl_event_encode).
 *
 * Invariants:
 * - an accepted payload has seq > 0, a valid channel and a type of message, update or delete;
 * - its SSE frame is exactly one event: "id: <seq>", "event: <type>", one "data:" line holding
 *   the whole payload, a blank line, and no other line break anywhere (an EventSource client
 *   would otherwise see a cut payload or extra fields);
 * - its NDJSON frame is one line holding the whole payload;
 * - its WebSocket frame is a JSON object whose "type" is the type and whose "message" is the
 *   payload's JSON value.
 */
#include <jansson.h>

#include "fuzz_util.h"
#include "sl_event.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    char head[96];
    sl_event_t *ev = sl_event_from_json(s, size);
    if (ev == NULL)
        return 0;
    FUZZ_CHECK(ev->refcnt == 1 && ev->seq > 0 && fuzz_channel_ok(ev->channel, strlen(ev->channel)));
    FUZZ_CHECK(strcmp(ev->type, "message") == 0 || strcmp(ev->type, "update") == 0 || strcmp(ev->type, "delete") == 0);
    FUZZ_CHECK(ev->json.len == size && memcmp(ev->json.base, s, size) == 0);
    json_t *payload = json_loadb(s, size, 0, NULL);
    FUZZ_CHECK(payload != NULL);

    h2o_iovec_t f = sl_event_encode(ev, SL_FMT_SSE);
    FUZZ_CHECK(f.base != NULL);
    int n = snprintf(head, sizeof(head), "id: %lld\nevent: %s\ndata: ", (long long)ev->seq, ev->type);
    FUZZ_CHECK(f.len > (size_t)n + 2 && memcmp(f.base, head, (size_t)n) == 0 && memcmp(f.base + f.len - 2, "\n\n", 2) == 0);
    const char *d = f.base + n;
    size_t dlen = f.len - (size_t)n - 2;
    FUZZ_CHECKF(dlen == size && memcmp(d, s, size) == 0 && memchr(d, '\n', dlen) == NULL &&
                    memchr(d, '\r', dlen) == NULL,
                "the SSE frame does not carry the payload as one data line: %.*s", (int)f.len, f.base);
    FUZZ_CHECK(sl_event_encode(ev, SL_FMT_SSE).base == f.base); /* encoded once */

    f = sl_event_encode(ev, SL_FMT_NDJSON);
    FUZZ_CHECKF(f.base != NULL && f.len == size + 1 && memcmp(f.base, s, size) == 0 && f.base[size] == '\n' &&
                    memchr(f.base, '\n', size) == NULL,
                "the NDJSON line does not carry the payload: %.*s", (int)f.len, f.base);

    f = sl_event_encode(ev, SL_FMT_WS);
    FUZZ_CHECK(f.base != NULL);
    json_t *frame = json_loadb(f.base, f.len, 0, NULL);
    FUZZ_CHECKF(frame != NULL && json_equal(json_object_get(frame, "message"), payload) &&
                    json_is_string(json_object_get(frame, "type")) &&
                    strcmp(json_string_value(json_object_get(frame, "type")), ev->type) == 0,
                "the WebSocket frame does not carry the payload: %.*s", (int)f.len, f.base);
    json_decref(frame);
    json_decref(payload);

    sl_event_retain(ev);
    sl_event_release(ev);
    FUZZ_CHECK(ev->refcnt == 1);
    sl_event_release(ev);
    return 0;
}
