/*
 * sl_message: validation and JSON coding of feed messages; see sl_message.h.
 */
#include "sl_message.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_buf.h"
#include "sl_meta.h"
#include "sl_time.h"

void sl_error_set(sl_error_t *err, int status, const char *code, const char *field, const char *fmt, ...)
{
    va_list ap;
    err->status = status;
    err->code = code;
    err->field = field;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    /* The message quotes the client's input, possibly cut inside a character: keep it valid UTF-8
     * (JSON must be), replacing what is not with '?'. */
    for (size_t i = 0; err->message[i] != '\0';) {
        size_t left = strlen(err->message + i), n = 1;
        unsigned char c = (unsigned char)err->message[i];
        if (c >= 0x80) {
            n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
            if (n > left || sl_utf8_count(err->message + i, n) != 1) {
                err->message[i++] = '?';
                continue;
            }
        }
        i += n;
    }
}

char *sl_error_to_json(const sl_error_t *err, size_t *len)
{
    json_t *inner = json_pack("{s:s, s:s}", "code", err->code, "message", err->message);
    json_t *root;
    char *out;
    if (inner == NULL)
        return NULL;
    if (err->field != NULL)
        json_object_set_new(inner, "field", json_string(err->field));
    root = json_pack("{s:o}", "error", inner);
    if (root == NULL)
        return NULL;
    out = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (out != NULL && len != NULL)
        *len = strlen(out);
    return out;
}

long sl_utf8_count(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    long n = 0;
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
        } else if (c >= 0xc2 && c <= 0xdf) {
            if (i + 1 >= len || (s[i + 1] & 0xc0) != 0x80)
                return -1;
            i += 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            if (i + 2 >= len || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80)
                return -1;
            if (c == 0xe0 && s[i + 1] < 0xa0) /* overlong */
                return -1;
            if (c == 0xed && s[i + 1] >= 0xa0) /* UTF-16 surrogates */
                return -1;
            i += 3;
        } else if (c >= 0xf0 && c <= 0xf4) {
            if (i + 3 >= len || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80 || (s[i + 3] & 0xc0) != 0x80)
                return -1;
            if (c == 0xf0 && s[i + 1] < 0x90) /* overlong */
                return -1;
            if (c == 0xf4 && s[i + 1] >= 0x90) /* past U+10FFFF */
                return -1;
            i += 4;
        } else {
            return -1;
        }
        n++;
    }
    return n;
}

int sl_channel_valid(const char *s, size_t len)
{
    if (len < 1 || len > SL_CHANNEL_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

size_t sl_channel_canon(const char *s, size_t len, const char **canon)
{
    if (len > 0 && s[0] == '#') {
        s++;
        len--;
    }
    if (!sl_channel_valid(s, len))
        return 0;
    *canon = s;
    return len;
}

/* Copies a string field after checking its type and length in code points. */
static int take_string(json_t *obj, const char *name, int required, long min, long max, char *dst, size_t dstsize,
                       sl_error_t *err)
{
    json_t *v = json_object_get(obj, name);
    const char *s;
    size_t len;
    long chars;
    if (v == NULL) {
        if (required) {
            sl_error_set(err, 400, "missing_field", name, "'%s' is required", name);
            return -1;
        }
        return 0;
    }
    if (!json_is_string(v)) {
        sl_error_set(err, 400, "invalid_type", name, "'%s' must be a string", name);
        return -1;
    }
    s = json_string_value(v);
    len = json_string_length(v);
    chars = sl_utf8_count(s, len);
    if (chars < 0 || memchr(s, '\0', len) != NULL) {
        sl_error_set(err, 400, "invalid_utf8", name, "'%s' must be valid UTF-8 without NUL", name);
        return -1;
    }
    if (chars < min || chars > max || len >= dstsize) {
        sl_error_set(err, 400, "invalid_length", name, "'%s' must be %ld to %ld characters, got %ld", name, min, max,
                     chars);
        return -1;
    }
    memcpy(dst, s, len);
    dst[len] = '\0';
    return 1;
}

static int has_control(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 1;
    }
    return 0;
}

static json_t *parse_object(const char *buf, size_t len, sl_error_t *err)
{
    json_error_t jerr;
    json_t *root;
    if (sl_utf8_count(buf, len) < 0) {
        sl_error_set(err, 400, "invalid_utf8", NULL, "the body is not valid UTF-8");
        return NULL;
    }
    root = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (root == NULL) {
        sl_error_set(err, 400, "invalid_json", NULL, "the body is not valid JSON: %s (at character %d)", jerr.text,
                     jerr.position);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        sl_error_set(err, 400, "not_an_object", NULL, "the body must be a JSON object");
        return NULL;
    }
    return root;
}

/* channel, author, text: shared by the user's request and the queue's payload. */
static int take_common(json_t *root, int channel_required, sl_message_t *msg, sl_error_t *err)
{
    char written[SL_CHANNEL_MAX + 2]; /* '#' and the name */
    const char *canon;
    size_t clen;
    int r = take_string(root, "channel", channel_required, 1, SL_CHANNEL_MAX + 1, written, sizeof(written), err);
    if (r < 0)
        return -1;
    if (r == 0)
        strcpy(msg->channel, SL_DEFAULT_CHANNEL);
    else if ((clen = sl_channel_canon(written, strlen(written), &canon)) == 0) {
        sl_error_set(err, 400, "invalid_channel", "channel", "'channel' must be " SL_CHANNEL_RULE);
        return -1;
    } else {
        memcpy(msg->channel, canon, clen);
        msg->channel[clen] = '\0';
    }
    if (take_string(root, "author", 1, 1, SL_AUTHOR_MAX_CHARS, msg->author, sizeof(msg->author), err) < 0)
        return -1;
    if (has_control(msg->author)) {
        sl_error_set(err, 400, "invalid_author", "author", "'author' must not contain control characters");
        return -1;
    }
    if (take_string(root, "text", 1, 1, SL_TEXT_MAX_CHARS, msg->text, sizeof(msg->text), err) < 0)
        return -1;
    return 0;
}

/* A request object's members are all among allowed (list: their names for the error). */
static int only_fields(json_t *root, const char *const *allowed, size_t n, const char *list, sl_error_t *err)
{
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value)
    {
        size_t i;
        for (i = 0; i < n && strcmp(key, allowed[i]) != 0; i++)
            ;
        if (i == n) {
            /* key is owned by root; copy what we say before releasing it */
            sl_error_set(err, 400, "unknown_field", NULL, "unknown field '%.64s' (allowed: %s)", key, list);
            return -1;
        }
    }
    return 0;
}

/* A new message from the object of a request (a POST body, an item of a batch). */
static int from_request_object(json_t *root, sl_message_t *msg, sl_error_t *err)
{
    static const char *const allowed[] = {"channel", "author", "text", "source"};
    memset(msg, 0, sizeof(*msg));
    if (only_fields(root, allowed, 4, "channel, author, text, source", err) != 0 || take_common(root, 0, msg, err) != 0)
        return -1;
    int r = take_string(root, "source", 0, 1, 8, msg->source, sizeof(msg->source), err);
    if (r < 0)
        return -1;
    if (r == 0)
        strcpy(msg->source, "api");
    else if (strcmp(msg->source, "api") != 0 && strcmp(msg->source, "bot") != 0) {
        sl_error_set(err, 400, "invalid_source", "source", "'source' must be \"api\" or \"bot\"");
        return -1;
    }
    return 0;
}

int sl_message_from_request(const char *body, size_t len, sl_message_t *msg, sl_error_t *err)
{
    json_t *root;
    memset(msg, 0, sizeof(*msg));
    if ((root = parse_object(body, len, err)) == NULL)
        return -1;
    int ret = from_request_object(root, msg, err);
    json_decref(root);
    return ret;
}

int sl_message_edit_from_request(const char *body, size_t len, char text[SL_TEXT_MAX_CHARS * 4 + 1], sl_error_t *err)
{
    static const char *const allowed[] = {"text"};
    json_t *root = parse_object(body, len, err);
    if (root == NULL)
        return -1;
    int ret = only_fields(root, allowed, 1, "text", err) != 0 ||
                      take_string(root, "text", 1, 1, SL_TEXT_MAX_CHARS, text, SL_TEXT_MAX_CHARS * 4 + 1, err) < 0
                  ? -1
                  : 0;
    json_decref(root);
    return ret;
}

/* One item of a batch: msgs[*n] from item (an object, else a refusal of it at index). */
static void batch_item(json_t *item, size_t index, sl_message_t *msgs, size_t *n, sl_batch_error_t *errs,
                       size_t *nerrs)
{
    sl_error_t err;
    if (!json_is_object(item))
        sl_error_set(&err, 400, "not_an_object", NULL, "each message must be a JSON object");
    else if (from_request_object(item, &msgs[*n], &err) == 0) {
        (*n)++;
        return;
    }
    errs[*nerrs].index = index;
    errs[(*nerrs)++].err = err;
}

int sl_message_batch_from_request(const char *body, size_t len, int ndjson, sl_message_t *msgs, size_t *n,
                                  sl_error_t *err, sl_batch_error_t *errs, size_t *nerrs)
{
    json_error_t jerr;
    size_t count = 0;
    *n = *nerrs = 0;
    if (sl_utf8_count(body, len) < 0) {
        sl_error_set(err, 400, "invalid_utf8", NULL, "the body is not valid UTF-8");
        return -1;
    }
    if (!ndjson) {
        json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr), *item;
        size_t i;
        if (root == NULL) {
            sl_error_set(err, 400, "invalid_json", NULL, "the body is not valid JSON: %s (at character %d)", jerr.text,
                         jerr.position);
            return -1;
        }
        if (!json_is_array(root) || (count = json_array_size(root)) < 1 || count > SL_BATCH_MAX) {
            sl_error_set(err, 400, json_is_array(root) ? "invalid_batch_size" : "not_an_array", NULL,
                         "the body must be a JSON array of 1 to %d messages%s", SL_BATCH_MAX,
                         json_is_array(root) ? "" : " (or NDJSON, with Content-Type: application/x-ndjson)");
            json_decref(root);
            return -1;
        }
        json_array_foreach(root, i, item) batch_item(item, i, msgs, n, errs, nerrs);
        json_decref(root);
        return *nerrs > 0 ? -2 : 0;
    }
    /* NDJSON: one object per line; a last line break is optional, an empty line is an item. */
    for (size_t off = 0; off < len; count++) {
        const char *line = body + off, *nl = memchr(line, '\n', len - off);
        size_t ll = nl != NULL ? (size_t)(nl - line) : len - off;
        off += ll + 1;
        if (ll > 0 && line[ll - 1] == '\r')
            ll--;
        if (count >= SL_BATCH_MAX) {
            count++;
            break;
        }
        json_t *item = ll > 0 ? json_loadb(line, ll, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr) : NULL;
        if (item == NULL) {
            errs[*nerrs].index = count;
            if (ll == 0)
                sl_error_set(&errs[(*nerrs)++].err, 400, "invalid_json", NULL, "line %zu is empty", count + 1);
            else
                sl_error_set(&errs[(*nerrs)++].err, 400, "invalid_json", NULL,
                             "line %zu is not valid JSON: %s (at character %d)", count + 1, jerr.text, jerr.position);
            continue;
        }
        batch_item(item, count, msgs, n, errs, nerrs);
        json_decref(item);
    }
    if (count < 1 || count > SL_BATCH_MAX) {
        sl_error_set(err, 400, "invalid_batch_size", NULL, "the body must hold 1 to %d messages, one per line",
                     SL_BATCH_MAX);
        return -1;
    }
    return *nerrs > 0 ? -2 : 0;
}

void sl_message_clear(sl_message_t *m)
{
    free(m->meta);
    m->meta = NULL;
}

const char *sl_message_type_name(sl_message_type_t type)
{
    switch (type) {
    case SL_MESSAGE_UPDATE:
        return "update";
    case SL_MESSAGE_DELETE:
        return "delete";
    default:
        return "message";
    }
}

int sl_message_event_id(const sl_message_t *m, char out[SL_UUID_STRLEN])
{
    char name[160], ts[SL_TIME_RFC3339_LEN] = "";
    if (m->edited_at_us != 0)
        sl_time_format(m->edited_at_us, ts);
    int n = snprintf(name, sizeof(name), "%s|%s|%s", m->id, sl_message_type_name(m->type), ts);
    return sl_uuid_v5(SL_EVENT_NAMESPACE, name, (size_t)n, out);
}

/* "name":"value", after a comma unless it is the object's first member. */
static void append_member(sl_buf_t *b, const char *name, const char *value)
{
    if (b->data[b->len - 1] != '{')
        sl_buf_append(b, ",", 1);
    sl_buf_append(b, "\"", 1);
    sl_buf_appends(b, name);
    sl_buf_append(b, "\":", 2);
    sl_buf_append_json_string(b, value);
}

void sl_message_append_json(sl_buf_t *b, const sl_message_t *m)
{
    char ts[SL_TIME_RFC3339_LEN];
    sl_buf_append(b, "{", 1);
    if (m->type != SL_MESSAGE_NEW)
        append_member(b, "type", sl_message_type_name(m->type));
    append_member(b, "id", m->id);
    append_member(b, "channel", m->channel);
    if (m->type == SL_MESSAGE_NEW) {
        append_member(b, "author", m->author);
        append_member(b, "text", m->text);
        append_member(b, "source", m->source);
        sl_time_format(m->created_at_us, ts);
        append_member(b, "created_at", ts);
    } else if (m->type == SL_MESSAGE_UPDATE) {
        append_member(b, "text", m->text);
    }
    if (m->url[0] != '\0' && m->type != SL_MESSAGE_DELETE)
        append_member(b, "url", m->url);
    if (m->edited_at_us != 0 && m->type != SL_MESSAGE_DELETE) {
        sl_time_format(m->edited_at_us, ts);
        append_member(b, "edited_at", ts);
    }
    if (m->meta != NULL && m->type != SL_MESSAGE_DELETE) { /* canonical JSON already */
        sl_buf_appends(b, ",\"meta\":");
        sl_buf_appends(b, m->meta);
    }
    if (m->type != SL_MESSAGE_NEW) {
        append_member(b, "event_id", m->event_id);
        sl_time_format(m->created_at_us, ts);
        append_member(b, "created_at", ts);
    }
    if (m->seq > 0)
        sl_buf_appendf(b, ",\"seq\":%lld", (long long)m->seq);
    sl_buf_append(b, "}", 1);
}

json_t *sl_message_to_jansson(const sl_message_t *m)
{
    sl_buf_t b = SL_BUF_INIT;
    sl_message_append_json(&b, m);
    json_t *o = json_loadb(b.data, b.len, 0, NULL);
    sl_buf_free(&b);
    return o;
}

char *sl_message_to_json(const sl_message_t *m, size_t *len)
{
    sl_buf_t b = SL_BUF_INIT;
    sl_message_append_json(&b, m);
    if (len != NULL)
        *len = b.len;
    return b.data;
}

/* The optional fields added after the first release: url, edited_at and meta. */
static int take_optional(json_t *root, sl_message_t *m, sl_error_t *err)
{
    json_t *v = json_object_get(root, "meta");
    if (v != NULL && !json_is_null(v)) {
        if (sl_meta_check(v, err) != 0)
            return -1;
        if ((m->meta = sl_meta_dump(v)) == NULL) {
            sl_error_set(err, 400, "invalid_meta", "meta", "'meta' could not be copied (out of memory)");
            return -1;
        }
    }
    int r = take_string(root, "url", 0, 1, SL_URL_MAX, m->url, sizeof(m->url), err);
    if (r < 0)
        return -1;
    if (r > 0 && has_control(m->url)) {
        sl_error_set(err, 400, "invalid_url", "url", "'url' must not contain control characters");
        return -1;
    }
    v = json_object_get(root, "edited_at");
    if (v != NULL && !json_is_null(v) &&
        (!json_is_string(v) || sl_time_parse(json_string_value(v), json_string_length(v), &m->edited_at_us) != 0)) {
        sl_error_set(err, 400, "invalid_edited_at", "edited_at", "'edited_at' must be an RFC 3339 timestamp");
        return -1;
    }
    return 0;
}

static int take_uuid(json_t *root, const char *name, int required, char dst[SL_UUID_STRLEN], sl_error_t *err)
{
    json_t *v = json_object_get(root, name);
    if (v == NULL && !required)
        return 0;
    if (!json_is_string(v) || !sl_uuid_valid(json_string_value(v), json_string_length(v))) {
        sl_error_set(err, 400, "invalid_id", name, "'%s' must be a UUID", name);
        return -1;
    }
    memcpy(dst, json_string_value(v), SL_UUID_STRLEN);
    return 1;
}

/* created_at (required, or optional for an event, which then gets the current time later) and
 * seq (optional, positive). */
static int take_created_and_seq(json_t *root, int created_required, sl_message_t *m, sl_error_t *err)
{
    json_t *v = json_object_get(root, "created_at");
    if ((v != NULL || created_required) &&
        (!json_is_string(v) || sl_time_parse(json_string_value(v), json_string_length(v), &m->created_at_us) != 0)) {
        sl_error_set(err, 400, "invalid_created_at", "created_at", "'created_at' must be an RFC 3339 timestamp");
        return -1;
    }
    v = json_object_get(root, "seq");
    if (v != NULL) {
        if (!json_is_integer(v) || json_integer_value(v) < 1) {
            sl_error_set(err, 400, "invalid_seq", "seq", "'seq' must be a positive integer");
            return -1;
        }
        m->seq = json_integer_value(v);
    }
    return 0;
}

/* An update or a delete: id and channel name the message; an update brings the new text. */
static int event_from_jansson(json_t *root, sl_message_t *m, sl_error_t *err)
{
    int r = take_string(root, "channel", 1, 1, SL_CHANNEL_MAX, m->channel, sizeof(m->channel), err);
    if (r < 0)
        return -1;
    if (!sl_channel_valid(m->channel, strlen(m->channel))) {
        sl_error_set(err, 400, "invalid_channel", "channel", "'channel' must match [a-z0-9_-]{1,64}");
        return -1;
    }
    if (take_uuid(root, "id", 1, m->id, err) < 0)
        return -1;
    if (m->type == SL_MESSAGE_UPDATE) {
        if (take_string(root, "text", 1, 1, SL_TEXT_MAX_CHARS, m->text, sizeof(m->text), err) < 0 ||
            take_optional(root, m, err) != 0)
            return -1;
        if (m->edited_at_us == 0) {
            sl_error_set(err, 400, "missing_field", "edited_at", "an update needs 'edited_at'");
            return -1;
        }
    }
    if ((r = take_uuid(root, "event_id", 0, m->event_id, err)) < 0)
        return -1;
    if (r == 0 && sl_message_event_id(m, m->event_id) != 0) {
        sl_error_set(err, 400, "invalid_id", "event_id", "could not derive an event id");
        return -1;
    }
    return take_created_and_seq(root, 0, m, err);
}

static int decode(json_t *root, sl_message_t *m, sl_error_t *err);

int sl_message_from_jansson(json_t *root, sl_message_t *m, sl_error_t *err)
{
    int r = decode(root, m, err);
    if (r != 0)
        sl_message_clear(m); /* a meta taken before the field at fault */
    return r;
}

static int decode(json_t *root, sl_message_t *m, sl_error_t *err)
{
    json_t *v;
    memset(m, 0, sizeof(*m));
    v = json_object_get(root, "type");
    if (v != NULL) {
        const char *t = json_is_string(v) ? json_string_value(v) : "";
        if (strcmp(t, "update") == 0)
            m->type = SL_MESSAGE_UPDATE;
        else if (strcmp(t, "delete") == 0)
            m->type = SL_MESSAGE_DELETE;
        else if (strcmp(t, "message") != 0) {
            sl_error_set(err, 400, "invalid_message_type", "type", "'type' must be \"message\", \"update\" or \"delete\"");
            return -1;
        }
        if (m->type != SL_MESSAGE_NEW)
            return event_from_jansson(root, m, err);
    }
    if (take_common(root, 1, m, err) != 0)
        return -1;
    if (take_optional(root, m, err) != 0)
        return -1;
    v = json_object_get(root, "id");
    if (!json_is_string(v) || !sl_uuid_valid(json_string_value(v), json_string_length(v))) {
        sl_error_set(err, 400, "invalid_id", "id", "'id' must be a UUID");
        return -1;
    }
    memcpy(m->id, json_string_value(v), SL_UUID_STRLEN);
    if (take_string(root, "source", 1, 1, sizeof(m->source) - 1, m->source, sizeof(m->source), err) < 0)
        return -1;
    return take_created_and_seq(root, 1, m, err);
}

/* ---- the fast path: exactly what sl_message_append_json writes for a new message ---------- */

struct cursor {
    const char *p, *end;
};

static int lit(struct cursor *c, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, s, n) != 0)
        return -1;
    c->p += n;
    return 0;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char h = p[i];
        v <<= 4;
        if (h >= '0' && h <= '9')
            v |= (unsigned)(h - '0');
        else if (h >= 'a' && h <= 'f')
            v |= (unsigned)(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F')
            v |= (unsigned)(h - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Reads a JSON string (the cursor is after its opening quote) into dst (NUL-terminated, at most
 * cap - 1 bytes) and its closing quote. -1 for anything the fast path leaves to jansson: a raw
 * control character, an escape that is not one of JSON's, \u of a surrogate, or no room. */
static int str(struct cursor *c, char *dst, size_t cap, size_t *len)
{
    size_t n = 0;
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p++;
        unsigned u;
        if (ch == '"') {
            dst[n] = '\0';
            *len = n;
            return 0;
        }
        if (ch < 0x20 || n + 4 >= cap)
            return -1;
        if (ch != '\\') {
            dst[n++] = (char)ch;
            continue;
        }
        if (c->p >= c->end)
            return -1;
        switch (*c->p++) {
        case '"': dst[n++] = '"'; break;
        case '\\': dst[n++] = '\\'; break;
        case '/': dst[n++] = '/'; break;
        case 'b': dst[n++] = '\b'; break;
        case 'f': dst[n++] = '\f'; break;
        case 'n': dst[n++] = '\n'; break;
        case 'r': dst[n++] = '\r'; break;
        case 't': dst[n++] = '\t'; break;
        case 'u':
            if (c->end - c->p < 4 || hex4(c->p, &u) != 0 || (u >= 0xd800 && u <= 0xdfff))
                return -1;
            c->p += 4;
            if (u < 0x80) {
                dst[n++] = (char)u;
            } else if (u < 0x800) {
                dst[n++] = (char)(0xc0 | (u >> 6));
                dst[n++] = (char)(0x80 | (u & 0x3f));
            } else {
                dst[n++] = (char)(0xe0 | (u >> 12));
                dst[n++] = (char)(0x80 | ((u >> 6) & 0x3f));
                dst[n++] = (char)(0x80 | (u & 0x3f));
            }
            break;
        default:
            return -1;
        }
    }
    return -1;
}

/* A string member `,"name":"…"` (first: no comma) checked as take_string checks it: valid UTF-8
 * without NUL, min to max code points. */
static int member(struct cursor *c, const char *key, long min, long max, char *dst, size_t cap)
{
    size_t len;
    if (lit(c, key) != 0 || str(c, dst, cap, &len) != 0)
        return -1;
    long chars = sl_utf8_count(dst, len);
    if (chars < min || chars > max || memchr(dst, '\0', len) != NULL)
        return -1;
    return 0;
}

/* Returns 0 with m filled when buf is a new message exactly as sl_message_append_json writes it
 * and valid; -1 for anything else, which the general path then reads (and explains). Accepts
 * nothing the general path refuses, and decodes the same (fuzz_message checks both). */
static int from_canonical(const char *buf, size_t len, sl_message_t *m)
{
    struct cursor c = {buf, buf + len};
    char ts[40];
    size_t n;
    memset(m, 0, sizeof(*m));
    if (member(&c, "{\"id\":\"", 36, 36, ts, sizeof(ts)) != 0 || !sl_uuid_valid(ts, 36))
        return -1;
    memcpy(m->id, ts, SL_UUID_STRLEN);
    if (member(&c, ",\"channel\":\"", 1, SL_CHANNEL_MAX, m->channel, sizeof(m->channel)) != 0 ||
        !sl_channel_valid(m->channel, strlen(m->channel)) ||
        member(&c, ",\"author\":\"", 1, SL_AUTHOR_MAX_CHARS, m->author, sizeof(m->author)) != 0 ||
        has_control(m->author) ||
        member(&c, ",\"text\":\"", 1, SL_TEXT_MAX_CHARS, m->text, sizeof(m->text)) != 0 ||
        member(&c, ",\"source\":\"", 1, sizeof(m->source) - 1, m->source, sizeof(m->source)) != 0 ||
        lit(&c, ",\"created_at\":\"") != 0 || str(&c, ts, sizeof(ts), &n) != 0 ||
        sl_time_parse(ts, n, &m->created_at_us) != 0)
        return -1;
    if (lit(&c, ",\"url\":\"") == 0 &&
        (member(&c, "", 1, SL_URL_MAX, m->url, sizeof(m->url)) != 0 || has_control(m->url)))
        return -1;
    if (lit(&c, ",\"edited_at\":\"") == 0 &&
        (str(&c, ts, sizeof(ts), &n) != 0 || sl_time_parse(ts, n, &m->edited_at_us) != 0))
        return -1;
    if (lit(&c, ",\"seq\":") == 0) {
        int digits = 0;
        if (c.p >= c.end || *c.p < '1' || *c.p > '9')
            return -1;
        for (; c.p < c.end && *c.p >= '0' && *c.p <= '9' && digits < 18; c.p++, digits++)
            m->seq = m->seq * 10 + (*c.p - '0');
    }
    return lit(&c, "}") == 0 && c.p == c.end ? 0 : -1;
}

int sl_message_from_json(const char *buf, size_t len, sl_message_t *m, sl_error_t *err)
{
    /* The persister and sse read every queue item: most are exactly what the api wrote. */
    if (sl_utf8_count(buf, len) >= 0 && from_canonical(buf, len, m) == 0)
        return 0;
    json_t *root = parse_object(buf, len, err);
    int ret;
    if (root == NULL)
        return -1;
    ret = sl_message_from_jansson(root, m, err);
    json_decref(root);
    return ret;
}
