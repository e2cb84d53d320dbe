/*
 * sl_event: see sl_event.h.
 */
#include "sl_event.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_db.h"
#include "sl_time.h"

static sl_event_t *make(int64_t seq, const char *channel, const char *type, const char *json, size_t len)
{
    sl_event_t *ev = calloc(1, sizeof(*ev));
    if (ev == NULL || (ev->json.base = malloc(len + 1)) == NULL) {
        free(ev);
        return NULL;
    }
    memcpy(ev->json.base, json, len);
    ev->json.base[len] = '\0';
    ev->json.len = len;
    ev->refcnt = 1;
    ev->seq = seq;
    snprintf(ev->channel, sizeof(ev->channel), "%s", channel);
    snprintf(ev->type, sizeof(ev->type), "%s", type);
    ev->received_us = sl_time_mono_us();
    return ev;
}

sl_event_t *sl_event_from_json(const char *json, size_t len)
{
    json_error_t err;
    json_t *root = json_loadb(json, len, 0, &err), *v;
    sl_event_t *ev = NULL;
    const char *channel, *type = "message";
    /* The payload goes out as is in one SSE data: line, one NDJSON line and a C string: compact
     * JSON (as the persister writes) has no raw line breaks or NUL; refuse anything that does. */
    if (root == NULL || !json_is_object(root) || memchr(json, '\0', len) || memchr(json, '\n', len) ||
        memchr(json, '\r', len))
        goto Exit;
    v = json_object_get(root, "seq");
    if (!json_is_integer(v) || json_integer_value(v) < 1)
        goto Exit;
    int64_t seq = json_integer_value(v);
    v = json_object_get(root, "channel");
    if (!json_is_string(v) || !sl_channel_valid(json_string_value(v), json_string_length(v)))
        goto Exit;
    channel = json_string_value(v);
    v = json_object_get(root, "type");
    if (json_is_string(v)) {
        type = json_string_value(v);
        if (strcmp(type, "message") != 0 && strcmp(type, "update") != 0 && strcmp(type, "delete") != 0)
            goto Exit;
    }
    if ((ev = make(seq, channel, type, json, len)) == NULL)
        goto Exit;
    v = json_object_get(root, "created_at");
    if (json_is_string(v))
        sl_time_parse(json_string_value(v), json_string_length(v), &ev->created_at_us);
Exit:
    json_decref(root);
    return ev;
}

sl_event_t *sl_event_from_message(const sl_message_t *m)
{
    size_t len;
    char *json = sl_message_to_json(m, &len);
    sl_event_t *ev;
    if (json == NULL)
        return NULL;
    ev = make(m->seq, m->channel, "message", json, len);
    if (ev != NULL)
        ev->created_at_us = m->created_at_us;
    free(json);
    return ev;
}

sl_event_t *sl_event_from_row(const PGresult *res, int row)
{
    sl_message_t m;
    const int ev = SL_DB_FEED_EVENT_COLUMN;
    if (PQnfields(res) > ev && !PQgetisnull(res, row, ev))
        return sl_event_from_json(PQgetvalue(res, row, ev), (size_t)PQgetlength(res, row, ev));
    if (sl_db_row_to_message(res, row, &m) != 0)
        return NULL;
    sl_event_t *e = sl_event_from_message(&m);
    sl_message_clear(&m);
    return e;
}

h2o_iovec_t sl_event_encode(sl_event_t *ev, sl_format_t fmt)
{
    h2o_iovec_t *e = &ev->enc[fmt];
    if (e->base != NULL)
        return *e;
    size_t cap = ev->json.len + 96;
    char *buf = malloc(cap);
    int n = 0;
    if (buf == NULL)
        return h2o_iovec_init(NULL, 0);
    switch (fmt) {
    case SL_FMT_SSE:
        /* JSON from jansson is one line, so it fits one data: field */
        n = snprintf(buf, cap, "id: %lld\nevent: %s\ndata: %s\n\n", (long long)ev->seq, ev->type, ev->json.base);
        break;
    case SL_FMT_NDJSON:
        n = snprintf(buf, cap, "%s\n", ev->json.base);
        break;
    case SL_FMT_WS:
        n = snprintf(buf, cap, "{\"type\":\"%s\",\"message\":%s}", ev->type, ev->json.base);
        break;
    default:
        break;
    }
    *e = h2o_iovec_init(buf, (size_t)n);
    return *e;
}

void sl_event_release(sl_event_t *ev)
{
    if (ev == NULL || --ev->refcnt > 0)
        return;
    for (int i = 0; i < SL_FMT__COUNT; i++)
        free(ev->enc[i].base);
    free(ev->json.base);
    free(ev);
}
