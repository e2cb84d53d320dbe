/*
 * fuzz_mastodon: what ingest makes of a Mastodon server's answers (sl_mastodon.h): HTML content
 * to plain text, a status object to a message, the streaming events ("update", "status.update",
 * "delete").
 *
 * The input is used as HTML, as a status (when it is JSON) and as each event's data; the text limit is taken from its length, so small limits are covered too.
 *
 * Invariants:
 * - HTML to text: only appends (what was in the buffer stays), appends well-formed UTF-8 without
 *   control characters other than '\n', trimmed, no double spaces and no space next to a line
 *   break, and returns exactly the number of code points it kept other than the spaces and line
 *   breaks it laid out, which is at most the limit;
 * - a status or event mapped OK is a valid message: a UUID id, 1-64 characters of author without
 *   control characters, 1-500 characters of text without control characters but '\n', a URL
 *   of http: or https: without control characters, a timestamp, channel and source as given; and the persister
 *   reads it back: sl_message_to_json then sl_message_from_json gives the same fields;
 * - its meta, when it has one, passes the schema the persister checks (sl_meta_check: every link
 *   http(s), every string capped and without control characters, at most 8 attachments, 32 KiB),
 *   in canonical form, and a delete has none;
 * - the ids a source remembers: a delete of a status just mapped names that status's message;
 *   nothing leaks (meta is the caller's to free).
 * - sl_mastodon_cut never writes past its buffer or cuts a sequence.
 */
#include <jansson.h>
#include <strings.h>

#include "fuzz_util.h"
#include "sl_mastodon.h"
#include "sl_meta.h"

#define INSTANCE "https://mastodon.example"
#define CHANNEL "mastodon"

static void check_html(const char *html, size_t len, size_t max, const char *prefix)
{
    sl_buf_t out = SL_BUF_INIT;
    size_t plen = strlen(prefix);
    sl_buf_appends(&out, prefix);
    size_t n = sl_mastodon_html_to_text(html, len, max, &out);
    FUZZ_CHECK(n <= max);
    FUZZ_CHECK(out.data != NULL && out.len >= plen && memcmp(out.data, prefix, plen) == 0);
    FUZZ_CHECK(out.data[out.len] == '\0');
    const char *t = out.data + plen;
    size_t tlen = out.len - plen;
    FUZZ_CHECKF(fuzz_utf8_clean(t, tlen, "\n"), "bad text: %s", t);
    FUZZ_CHECK(tlen == 0 || (t[0] != ' ' && t[0] != '\n' && t[tlen - 1] != ' ' && t[tlen - 1] != '\n'));
    FUZZ_CHECKF(memmem(t, tlen, "  ", 2) == NULL && memmem(t, tlen, " \n", 2) == NULL &&
                    memmem(t, tlen, "\n ", 2) == NULL,
                "badly laid out text: '%s'", t);
    long cps = fuzz_utf8_count(t, tlen);
    for (size_t i = 0; i < tlen; i++)
        cps -= t[i] == ' ' || t[i] == '\n';
    FUZZ_CHECKF((size_t)cps == n, "returned %zu, kept %ld: '%s'", n, cps, t);
    FUZZ_CHECK((n == 0) == (tlen == 0));
    sl_buf_free(&out);
}

static void check_mapped(const sl_message_t *m)
{
    size_t len;
    sl_message_t back;
    sl_error_t err;
    FUZZ_CHECK(fuzz_uuid_ok(m->id));
    FUZZ_CHECK(strcmp(m->channel, CHANNEL) == 0);
    FUZZ_CHECK(m->created_at_us != 0);
    FUZZ_CHECK(fuzz_utf8_clean(m->url, strlen(m->url), ""));
    if (m->meta != NULL) {
        sl_error_t merr;
        json_t *meta = json_loads(m->meta, 0, NULL);
        FUZZ_CHECKF(json_is_object(meta) && sl_meta_check(meta, &merr) == 0, "bad meta (%s): %s",
                    meta != NULL ? merr.message : "not JSON", m->meta);
        char *again = sl_meta_dump(meta);
        FUZZ_CHECKF(again != NULL && strcmp(again, m->meta) == 0, "meta not canonical: %s", m->meta);
        free(again);
        json_decref(meta);
        FUZZ_CHECK(m->type != SL_MESSAGE_DELETE);
    }
    FUZZ_CHECK(m->url[0] == '\0' || strncasecmp(m->url, "http://", 7) == 0 || strncasecmp(m->url, "https://", 8) == 0);
    if (m->type == SL_MESSAGE_NEW) {
        long a = fuzz_utf8_count(m->author, strlen(m->author));
        FUZZ_CHECK(a >= 1 && a <= SL_AUTHOR_MAX_CHARS && fuzz_utf8_clean(m->author, strlen(m->author), ""));
        FUZZ_CHECK(strcmp(m->source, SL_MASTODON_SOURCE) == 0);
    } else {
        FUZZ_CHECK(fuzz_uuid_ok(m->event_id));
        FUZZ_CHECK(m->author[0] == '\0' && m->source[0] == '\0');
    }
    if (m->type != SL_MESSAGE_DELETE) {
        long t = fuzz_utf8_count(m->text, strlen(m->text));
        FUZZ_CHECKF(t >= 1 && t <= SL_TEXT_MAX_CHARS && fuzz_utf8_clean(m->text, strlen(m->text), "\n"),
                    "bad text (%ld code points): '%s'", t, m->text);
    }
    if (m->type == SL_MESSAGE_UPDATE)
        FUZZ_CHECK(m->edited_at_us != 0);

    char *json = sl_message_to_json(m, &len);
    FUZZ_CHECK(json != NULL);
    FUZZ_CHECKF(sl_message_from_json(json, len, &back, &err) == 0, "the persister would refuse (%s: %s): %s",
                err.code, err.message, json);
    FUZZ_CHECKF(strcmp(m->id, back.id) == 0 && strcmp(m->channel, back.channel) == 0 &&
                    strcmp(m->author, back.author) == 0 && strcmp(m->text, back.text) == 0 &&
                    strcmp(m->source, back.source) == 0 && strcmp(m->url, back.url) == 0 &&
                    strcmp(m->event_id, back.event_id) == 0 && m->type == back.type &&
                    m->created_at_us == back.created_at_us && m->edited_at_us == back.edited_at_us &&
                    (m->meta == NULL) == (back.meta == NULL) && (m->meta == NULL || strcmp(m->meta, back.meta) == 0),
                "changed on the way through the queue: %s", json);
    free(json);
    sl_message_clear(&back);
}

static void check_cut(const char *s, size_t len)
{
    char dst[24];
    size_t max = 1 + len % 9, size = 1 + len % sizeof(dst); /* callers never ask for 0 code points */
    int ellipsis = (int)(len & 1), controls = (int)((len >> 1) & 1);
    if (fuzz_utf8_count(s, len) < 0 || (!controls && memchr(s, '\0', len) != NULL))
        return; /* the contract asks for valid UTF-8; dst is a C string */
    size_t n = sl_mastodon_cut(s, len, dst, size, max, ellipsis, controls);
    size_t dlen = strnlen(dst, size);
    FUZZ_CHECK(dlen < size);
    FUZZ_CHECK(n <= max && fuzz_utf8_count(dst, dlen) == (long)n);
    if (controls)
        FUZZ_CHECK(fuzz_utf8_clean(dst, dlen, ""));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    sl_message_t m;
    char why[128];
    static sl_mastodon_ids_t *ids; /* kept from input to input, as a source keeps it */
    if (ids == NULL)
        ids = sl_mastodon_ids_create(64);

    check_html(s, size, SL_TEXT_MAX_CHARS + 1, "");
    check_html(s, size, size % 13, "CW: x\n\n");
    check_cut(s, size);

    json_t *status = json_loadb(s, size, 0, NULL);
    if (status != NULL) {
        why[0] = '\0';
        sl_mastodon_result_t r = sl_mastodon_status_to_message(status, INSTANCE, CHANNEL, ids, &m, why, sizeof(why));
        FUZZ_CHECK(r == SL_MASTODON_OK || r == SL_MASTODON_SKIP || r == SL_MASTODON_INVALID);
        if (r == SL_MASTODON_OK) {
            check_mapped(&m);
            /* its deletion, which names only the local id, finds the message */
            const char *sid = json_string_value(json_object_get(status, "id"));
            sl_message_t del;
            FUZZ_CHECK(sid != NULL);
            FUZZ_CHECK(sl_mastodon_stream_event("delete", sid, strlen(sid), INSTANCE, CHANNEL, ids, &del, why,
                                                sizeof(why)) == SL_MASTODON_OK);
            FUZZ_CHECKF(strcmp(del.id, m.id) == 0, "the delete of %s names %s, not %s", sid, del.id, m.id);
            FUZZ_CHECK(del.meta == NULL);
            sl_message_clear(&m);
        } else {
            FUZZ_CHECK(why[0] != '\0' && m.meta == NULL);
        }
        json_decref(status);
    }
    static const char *const events[] = {"update", "status.update", "delete"};
    for (size_t k = 0; k < sizeof(events) / sizeof(events[0]); k++) {
        why[0] = '\0';
        sl_mastodon_result_t r = sl_mastodon_stream_event(events[k], s, size, INSTANCE, CHANNEL, ids, &m, why, sizeof(why));
        if (r == SL_MASTODON_OK) {
            FUZZ_CHECK(m.type == (k == 0 ? SL_MESSAGE_NEW : k == 1 ? SL_MESSAGE_UPDATE : SL_MESSAGE_DELETE));
            check_mapped(&m);
            sl_message_clear(&m);
        } else {
            FUZZ_CHECK(why[0] != '\0' && m.meta == NULL);
        }
    }
    return 0;
}
