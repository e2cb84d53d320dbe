/*
 * sl_meta: a message's meta object, checked and in canonical form; see sl_meta.h.
 */
#include "sl_meta.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int sl_meta_plain(const char *s, size_t len, long max)
{
    long chars = sl_utf8_count(s, len);
    if (chars < 1 || chars > max || memchr(s, '\0', len) != NULL)
        return 0;
    for (size_t k = 0; k < len; k++) {
        unsigned char c = (unsigned char)s[k];
        /* C0 and DEL as bytes, C1 as code points (U+0080-U+009F: 0xc2 0x80-0x9f; other bytes
         * 0x80-0x9f are parts of letters) */
        if (c < 0x20 || c == 0x7f || (c == 0xc2 && k + 1 < len && (unsigned char)s[k + 1] < 0xa0))
            return 0;
    }
    return 1;
}

int sl_meta_web_link(const char *s, size_t len)
{
    if (len > SL_URL_MAX || !sl_meta_plain(s, len, SL_URL_MAX))
        return 0;
    return (len > 8 && strncasecmp(s, "https://", 8) == 0) || (len > 7 && strncasecmp(s, "http://", 7) == 0);
}

static int refuse(sl_error_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int refuse(sl_error_t *err, const char *fmt, ...)
{
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    sl_error_set(err, 400, "invalid_meta", "meta", "'meta': %s", what);
    return -1;
}

enum kind { PLAIN, LINK, LANGUAGE, TRUE_OR_FALSE, MEDIA, REBLOG, MEDIA_TYPE };

struct member {
    const char *name;
    enum kind kind;
    long max;     /* PLAIN: characters */
    int required;
};

static const struct member top[] = {
    {"display_name", PLAIN, SL_META_NAME_MAX, 0},
    {"avatar", LINK, 0, 0},
    {"account_url", LINK, 0, 0},
    {"url", LINK, 0, 0},
    {"language", LANGUAGE, 0, 0},
    {"spoiler_text", PLAIN, SL_TEXT_MAX_CHARS, 0},
    {"sensitive", TRUE_OR_FALSE, 0, 0},
    {"media", MEDIA, 0, 0},
    {"reblog", REBLOG, 0, 0},
    {NULL, PLAIN, 0, 0},
};

static const struct member media_item[] = {
    {"type", MEDIA_TYPE, 0, 1},
    {"url", LINK, 0, 1},
    {"preview_url", LINK, 0, 0},
    {"description", PLAIN, SL_META_DESCRIPTION_MAX, 0},
    {NULL, PLAIN, 0, 0},
};

static const struct member reblog_obj[] = {
    {"acct", PLAIN, SL_AUTHOR_MAX_CHARS, 1},
    {"display_name", PLAIN, SL_META_NAME_MAX, 0},
    {"avatar", LINK, 0, 0},
    {"account_url", LINK, 0, 0},
    {"url", LINK, 0, 0},
    {NULL, PLAIN, 0, 0},
};

static int check_object(json_t *obj, const struct member *members, const char *where, sl_error_t *err);

static int check_value(json_t *v, const struct member *m, const char *where, sl_error_t *err)
{
    static const char *const media_types[] = {"image", "gifv", "video", "audio", "unknown"};
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    switch (m->kind) {
    case PLAIN:
        if (!json_is_string(v) || !sl_meta_plain(s, len, m->max))
            return refuse(err, "%s%s must be 1 to %ld characters without control characters", where, m->name, m->max);
        return 0;
    case LINK:
        if (!json_is_string(v) || !sl_meta_web_link(s, len))
            return refuse(err, "%s%s must be an http(s) link of at most %d bytes", where, m->name, SL_URL_MAX);
        return 0;
    case LANGUAGE:
        if (!json_is_string(v) || len < 1 || len > SL_META_LANGUAGE_MAX || strspn(s, "abcdefghijklmnopqrstuvwxyz"
                                                                                    "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                                                    "0123456789-") != len)
            return refuse(err, "%s%s must be 1 to %d of [A-Za-z0-9-]", where, m->name, SL_META_LANGUAGE_MAX);
        return 0;
    case TRUE_OR_FALSE:
        if (!json_is_boolean(v))
            return refuse(err, "%s%s must be a boolean", where, m->name);
        return 0;
    case MEDIA_TYPE:
        for (size_t i = 0; json_is_string(v) && i < sizeof(media_types) / sizeof(media_types[0]); i++) {
            if (strcmp(s, media_types[i]) == 0)
                return 0;
        }
        return refuse(err, "%s%s must be image, gifv, video, audio or unknown", where, m->name);
    case MEDIA: {
        size_t n = json_array_size(v), i;
        json_t *item;
        char at[32];
        if (!json_is_array(v) || n < 1 || n > SL_META_MEDIA_MAX)
            return refuse(err, "media must be an array of 1 to %d attachments", SL_META_MEDIA_MAX);
        json_array_foreach(v, i, item)
        {
            snprintf(at, sizeof(at), "media[%zu].", i);
            if (check_object(item, media_item, at, err) != 0)
                return -1;
        }
        return 0;
    }
    case REBLOG:
        return check_object(v, reblog_obj, "reblog.", err);
    }
    return -1;
}

static int check_object(json_t *obj, const struct member *members, const char *where, sl_error_t *err)
{
    const char *key;
    json_t *v;
    if (!json_is_object(obj) || json_object_size(obj) == 0) /* where: "" or "media[1]." */
        return refuse(err, "%.*s must be a non-empty object", where[0] != '\0' ? (int)strlen(where) - 1 : 4,
                      where[0] != '\0' ? where : "meta");
    json_object_foreach(obj, key, v)
    {
        const struct member *m = members;
        while (m->name != NULL && strcmp(m->name, key) != 0)
            m++;
        if (m->name == NULL)
            return refuse(err, "unknown member '%s%.40s'", where, key);
        if (check_value(v, m, where, err) != 0)
            return -1;
    }
    for (const struct member *m = members; m->name != NULL; m++) {
        if (m->required && json_object_get(obj, m->name) == NULL)
            return refuse(err, "%s%s is required", where, m->name);
    }
    return 0;
}

int sl_meta_check(json_t *meta, sl_error_t *err)
{
    if (check_object(meta, top, "", err) != 0)
        return -1;
    size_t len = json_dumpb(meta, NULL, 0, JSON_COMPACT | JSON_SORT_KEYS);
    if (len == 0 || len > SL_META_MAX)
        return refuse(err, "at most %d bytes", SL_META_MAX);
    return 0;
}

char *sl_meta_dump(json_t *meta)
{
    if (!json_is_object(meta) || json_object_size(meta) == 0)
        return NULL;
    return json_dumps(meta, JSON_COMPACT | JSON_SORT_KEYS);
}
