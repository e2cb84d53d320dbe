/*
 * sl_mastodon_sse: text/event-stream parsing; see sl_mastodon_sse.h.
 */
#include "sl_mastodon_sse.h"

#include <string.h>

void sl_msse_init(sl_msse_t *p, size_t max_event, sl_msse_event_cb on_event, sl_msse_comment_cb on_comment, void *arg)
{
    memset(p, 0, sizeof(*p));
    p->max_event = max_event;
    p->on_event = on_event;
    p->on_comment = on_comment;
    p->arg = arg;
    p->at_start = 1;
}

static void end_event(sl_msse_t *p)
{
    p->data.len = 0;
    p->event[0] = '\0';
    p->has_data = 0;
    p->event_too_big = 0;
}

void sl_msse_reset(sl_msse_t *p)
{
    end_event(p);
    p->line.len = 0;
    p->pending_cr = 0;
    p->line_too_long = 0;
    p->at_start = 1;
}

void sl_msse_free(sl_msse_t *p)
{
    sl_buf_free(&p->line);
    sl_buf_free(&p->data);
}

/* A blank line: the event is complete. */
static int dispatch(sl_msse_t *p)
{
    int r = 0;
    if (p->event_too_big) {
        p->dropped++;
    } else if (p->has_data) {
        p->events++;
        r = p->on_event(p->arg, p->event[0] != '\0' ? p->event : "message", p->data.data != NULL ? p->data.data : "",
                        p->data.len);
    }
    end_event(p);
    return r;
}

static int process_line(sl_msse_t *p)
{
    const char *s = p->line.data != NULL ? p->line.data : "";
    size_t len = p->line.len;
    int too_long = p->line_too_long;

    p->line.len = 0;
    p->line_too_long = 0;
    if (len == 0 && !too_long)
        return dispatch(p);
    if (too_long) { /* only data lines grow that long; whatever it was, its event is lost */
        p->event_too_big = 1;
        return 0;
    }
    if (s[0] == ':') {
        p->comments++;
        if (p->on_comment != NULL)
            p->on_comment(p->arg, s + 1, len - 1);
        return 0;
    }
    const char *colon = memchr(s, ':', len);
    size_t flen = colon != NULL ? (size_t)(colon - s) : len;
    const char *value = colon != NULL ? colon + 1 : s + len;
    size_t vlen = (size_t)(s + len - value);
    if (vlen > 0 && value[0] == ' ') {
        value++;
        vlen--;
    }
    if (flen == 5 && memcmp(s, "event", 5) == 0) {
        size_t n = vlen < sizeof(p->event) - 1 ? vlen : sizeof(p->event) - 1;
        memcpy(p->event, value, n);
        p->event[n] = '\0';
    } else if (flen == 4 && memcmp(s, "data", 4) == 0) {
        if (p->event_too_big)
            return 0;
        if (p->data.len + vlen + 1 > p->max_event) {
            p->event_too_big = 1;
            p->data.len = 0;
            return 0;
        }
        if (p->has_data)
            sl_buf_append(&p->data, "\n", 1);
        sl_buf_append(&p->data, value, vlen);
        p->has_data = 1;
    }
    /* id, retry and unknown fields: nothing to do */
    return 0;
}

int sl_msse_feed(sl_msse_t *p, const char *buf, size_t len)
{
    size_t i = 0;
    if (p->at_start && len > 0) {
        /* A UTF-8 byte-order mark may start the stream; it can itself arrive split. */
        static const char bom[] = "\xef\xbb\xbf";
        size_t have = p->line.len;
        while (i < len && have + i < 3 && buf[i] == bom[have + i])
            i++;
        if (have + i < 3 && i == len) { /* still a prefix of the mark: keep it for now */
            sl_buf_append(&p->line, buf, len);
            return 0;
        }
        if (have + i == 3) {
            p->line.len = 0;
        } else {
            i = 0; /* not a mark after all: what was held back is ordinary text */
        }
        p->at_start = 0;
    }
    while (i < len) {
        char c = buf[i];
        if (p->pending_cr) {
            p->pending_cr = 0;
            if (c == '\n') {
                i++;
                continue;
            }
        }
        if (c == '\r' || c == '\n') {
            i++;
            p->pending_cr = c == '\r';
            int r = process_line(p);
            if (r != 0)
                return r;
            continue;
        }
        /* the longest run without a line end */
        size_t j = i;
        while (j < len && buf[j] != '\r' && buf[j] != '\n')
            j++;
        if (!p->line_too_long) {
            if (p->line.len + (j - i) > p->max_event)
                p->line_too_long = 1;
            else
                sl_buf_append(&p->line, buf + i, j - i);
        }
        i = j;
    }
    return 0;
}
