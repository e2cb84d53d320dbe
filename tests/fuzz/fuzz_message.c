/*
 * fuzz_message: the message JSON validator (sl_message.h) on arbitrary bytes, read two ways: as
 * a POST /v1/messages body (sl_message_from_request) and as a queue payload
 * (sl_message_from_json). fuzz_event reads the same bytes as a live-exchange payload.
 *
 * Invariants:
 * - sl_utf8_count and sl_channel_valid agree with independent reference implementations;
 * - a refusal has status 400, a documented code and a message, and sl_error_to_json is JSON;
 * - an accepted body has a valid channel, 1-64 code points of author without control characters,
 *   1-500 code points of text, source "api" or "bot", and only the four allowed fields;
 * - a queue payload is decided the same by sl_message_from_json (with its fast path for the form
 *   the api writes) and by the general jansson path, with the same fields;
 * - whatever is accepted round-trips: sl_message_to_json then sl_message_from_json accepts it
 *   and gives the same fields, and encoding again gives the same bytes (the api writes what the
 *   persister must read back; the persister writes what sse and the persister read back);
 * - an accepted stored message, as the persister publishes it, is a live event with the same
 *   seq, channel, type and created_at;
 * - a meta that is accepted passes its schema (sl_meta_check) as read back, in canonical form (the
 *   same text again when dumped), only http(s) links in it; a refused one is invalid_meta; nothing
 *   leaks (libFuzzer's leak check) whichever field is refused after it.
 */
#include <jansson.h>

#include "fuzz_util.h"
#include "sl_event.h"
#include "sl_message.h"
#include "sl_meta.h"

static const char *const REQUEST_CODES[] = {"invalid_json", "not_an_object", "invalid_utf8", "missing_field",
                                            "invalid_type", "invalid_length", "invalid_channel", "invalid_author",
                                            "invalid_source", "unknown_field", NULL};
static const char *const PAYLOAD_CODES[] = {
    "invalid_json", "not_an_object", "invalid_utf8",         "missing_field",      "invalid_type",
    "invalid_length", "invalid_channel", "invalid_author",    "invalid_url",        "invalid_edited_at",
    "invalid_id",   "invalid_created_at", "invalid_seq",      "invalid_message_type", "invalid_meta", NULL};

static void check_error(const sl_error_t *err, const char *const *codes)
{
    size_t i;
    FUZZ_CHECK(err->status == 400);
    FUZZ_CHECK(err->code != NULL);
    for (i = 0; codes[i] != NULL && strcmp(codes[i], err->code) != 0; i++)
        ;
    FUZZ_CHECKF(codes[i] != NULL, "undocumented error code '%s'", err->code);
    FUZZ_CHECK(memchr(err->message, '\0', sizeof(err->message)) != NULL && err->message[0] != '\0');
    size_t len;
    char *json = sl_error_to_json(err, &len);
    FUZZ_CHECK(json != NULL);
    json_t *back = json_loadb(json, len, 0, NULL);
    FUZZ_CHECKF(back != NULL, "sl_error_to_json gave bad JSON: %s", json);
    json_decref(back);
    free(json);
}

static void check_string_field(const char *s, size_t max_bytes, long min_chars, long max_chars)
{
    size_t len = strnlen(s, max_bytes);
    FUZZ_CHECK(len < max_bytes);
    long n = fuzz_utf8_count(s, len);
    FUZZ_CHECK(n >= min_chars && n <= max_chars);
}

static void check_same(const sl_message_t *a, const sl_message_t *b, const char *json)
{
#define SAME_STR(f) FUZZ_CHECKF(strcmp(a->f, b->f) == 0, #f " changed: '%s' -> '%s' via %s", a->f, b->f, json)
#define SAME_INT(f)                                                                                        \
    FUZZ_CHECKF(a->f == b->f, #f " changed: %lld -> %lld via %s", (long long)a->f, (long long)b->f, json)
    SAME_STR(id);
    SAME_INT(seq);
    SAME_STR(channel);
    SAME_STR(author);
    SAME_STR(text);
    SAME_STR(source);
    SAME_INT(created_at_us);
    SAME_STR(url);
    SAME_INT(edited_at_us);
    SAME_INT(type);
    SAME_STR(event_id);
    FUZZ_CHECKF((a->meta == NULL) == (b->meta == NULL) && (a->meta == NULL || strcmp(a->meta, b->meta) == 0),
                "meta changed: %s -> %s via %s", a->meta ? a->meta : "(none)", b->meta ? b->meta : "(none)", json);
#undef SAME_STR
#undef SAME_INT
}

/* m was accepted: its JSON form must decode to the same message, as a message and as an event. */
static void round_trip(const sl_message_t *m)
{
    size_t len, len2;
    sl_message_t back;
    sl_error_t err;
    char *json = sl_message_to_json(m, &len);
    FUZZ_CHECK(json != NULL && strlen(json) == len);
    FUZZ_CHECKF(sl_message_from_json(json, len, &back, &err) == 0, "own JSON refused (%s: %s): %s", err.code,
                err.message, json);
    check_same(m, &back, json);
    char *again = sl_message_to_json(&back, &len2);
    FUZZ_CHECK(again != NULL && len2 == len && memcmp(json, again, len) == 0);
    free(again);
    sl_message_clear(&back);
    if (m->seq > 0) {
        sl_event_t *ev = sl_event_from_json(json, len);
        FUZZ_CHECKF(ev != NULL, "stored message is not a live event: %s", json);
        FUZZ_CHECK(ev->seq == m->seq && strcmp(ev->channel, m->channel) == 0 &&
                   strcmp(ev->type, sl_message_type_name(m->type)) == 0);
        FUZZ_CHECK(ev->created_at_us == m->created_at_us);
        sl_event_release(ev);
    }
    free(json);
}

static void check_message(const sl_message_t *m)
{
    FUZZ_CHECK(fuzz_channel_ok(m->channel, strlen(m->channel)));
    if (m->type == SL_MESSAGE_NEW) {
        check_string_field(m->author, sizeof(m->author), 1, SL_AUTHOR_MAX_CHARS);
        for (const char *a = m->author; *a != '\0'; a++) /* C0 and DEL; C1 is allowed in an author */
            FUZZ_CHECK((unsigned char)*a >= 0x20 && *a != 0x7f);
    }
    if (m->type != SL_MESSAGE_DELETE)
        check_string_field(m->text, sizeof(m->text), 1, SL_TEXT_MAX_CHARS);
    check_string_field(m->url, sizeof(m->url), 0, SL_URL_MAX);
    if (m->meta != NULL) {
        sl_error_t err;
        json_t *meta = json_loads(m->meta, 0, NULL);
        FUZZ_CHECKF(json_is_object(meta) && sl_meta_check(meta, &err) == 0, "meta accepted, then refused: %s", m->meta);
        char *again = sl_meta_dump(meta);
        FUZZ_CHECKF(again != NULL && strcmp(again, m->meta) == 0, "meta not canonical: %s", m->meta);
        free(again);
        json_decref(meta);
        FUZZ_CHECK(m->type != SL_MESSAGE_DELETE);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    sl_message_t m;
    sl_error_t err;

    FUZZ_CHECK(sl_utf8_count(s, size) == fuzz_utf8_count(s, size));
    FUZZ_CHECK(sl_channel_valid(s, size) == fuzz_channel_ok(s, size));

    /* a POST body */
    if (sl_message_from_request(s, size, &m, &err) == 0) {
        check_message(&m);
        FUZZ_CHECK(m.type == SL_MESSAGE_NEW && m.id[0] == '\0' && m.seq == 0 && m.created_at_us == 0 && m.meta == NULL);
        FUZZ_CHECK(strcmp(m.source, "api") == 0 || strcmp(m.source, "bot") == 0);
        json_t *root = json_loadb(s, size, 0, NULL);
        const char *key;
        json_t *v;
        FUZZ_CHECK(json_is_object(root));
        json_object_foreach(root, key, v)
        {
            FUZZ_CHECKF(strcmp(key, "channel") == 0 || strcmp(key, "author") == 0 || strcmp(key, "text") == 0 ||
                            strcmp(key, "source") == 0,
                        "field '%s' accepted", key);
        }
        json_decref(root);
        /* what the api then enqueues */
        memcpy(m.id, "01a20f58-27ce-73cd-8a94-dbd9140140e4", SL_UUID_STRLEN);
        m.created_at_us = 1795640165326231;
        round_trip(&m);
        m.seq = 951;
        round_trip(&m);
    } else {
        check_error(&err, REQUEST_CODES);
    }

    /* a queue payload; sl_message_from_json reads the form the api writes without jansson: it
     * must decide exactly as the general path (jansson, sl_message_from_jansson) does */
    int fast = sl_message_from_json(s, size, &m, &err);
    {
        sl_message_t g;
        sl_error_t gerr;
        json_t *root = sl_utf8_count(s, size) >= 0 ? json_loadb(s, size, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, NULL)
                                                    : NULL;
        int general = json_is_object(root) ? sl_message_from_jansson(root, &g, &gerr) : -1;
        json_decref(root);
        FUZZ_CHECKF(fast == general, "sl_message_from_json says %d, the general path %d", fast, general);
        if (fast == 0)
            check_same(&g, &m, "the general path");
        if (general == 0)
            sl_message_clear(&g);
    }
    if (fast == 0) {
        check_message(&m);
        FUZZ_CHECK(fuzz_uuid_ok(m.id));
        if (m.type != SL_MESSAGE_NEW)
            FUZZ_CHECK(fuzz_uuid_ok(m.event_id));
        round_trip(&m);
        sl_message_clear(&m);
    } else {
        check_error(&err, PAYLOAD_CODES);
        FUZZ_CHECK(m.meta == NULL);
    }
    return 0;
}
