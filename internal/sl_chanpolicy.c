/*
 * sl_chanpolicy: see sl_chanpolicy.h. Sets are short lists (a policy names a few patterns, a
 * token a few channels), so a linear scan with memcmp beats anything cleverer; a stream of every
 * channel calls sl_chanpolicy_may_read once per event, which costs one scan of each list.
 */
#include "sl_chanpolicy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_message.h"

struct sl_chanpat {
    char name[SL_CHANNEL_MAX + 1]; /* the name, or the prefix of a pattern (may be "") */
    size_t len;
    int prefix; /* 1: covers every channel that starts with name */
};

struct sl_chanpolicy {
    sl_chanset_t private_channels;
};

static int channel_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

int sl_chanset_add(sl_chanset_t *s, const char *pat, size_t len)
{
    if (len > 0 && pat[0] == '#') { /* as people write channels (sl_channel_canon) */
        pat++;
        len--;
    }
    int prefix = len > 0 && pat[len - 1] == '*';
    size_t n = prefix ? len - 1 : len;
    if ((!prefix && n == 0) || n > (prefix ? SL_CHANNEL_MAX - 1 : SL_CHANNEL_MAX)) {
        errno = EINVAL;
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (!channel_char(pat[i])) {
            errno = EINVAL;
            return -1;
        }
    }
    for (size_t i = 0; i < s->n; i++) {
        if (s->pats[i].prefix == prefix && s->pats[i].len == n && memcmp(s->pats[i].name, pat, n) == 0)
            return 0;
    }
    if (s->n == SL_CHANSET_MAX) {
        errno = E2BIG;
        return -1;
    }
    struct sl_chanpat *p = realloc(s->pats, (s->n + 1) * sizeof(*p));
    if (p == NULL) {
        errno = ENOMEM;
        return -1;
    }
    s->pats = p;
    p = &s->pats[s->n++];
    memcpy(p->name, pat, n);
    p->name[n] = '\0';
    p->len = n;
    p->prefix = prefix;
    return 0;
}

int sl_chanset_parse(sl_chanset_t *s, const char *list, char *err, size_t errlen)
{
    if (list == NULL || *list == '\0')
        return 0;
    for (const char *p = list;;) { /* every entry, the empty ones too ("a,,b", "a,") */
        const char *comma = strchr(p, ','), *end = comma != NULL ? comma : p + strlen(p);
        const char *b = p, *e = end;
        while (b < e && *b == ' ')
            b++;
        while (e > b && e[-1] == ' ')
            e--;
        if (sl_chanset_add(s, b, (size_t)(e - b)) != 0) {
            if (errno == E2BIG)
                snprintf(err, errlen, "more than %d channels", SL_CHANSET_MAX);
            else if (errno == ENOMEM)
                snprintf(err, errlen, "out of memory");
            else
                snprintf(err, errlen,
                         "'%.*s' is neither a channel ([a-z0-9_-]{1,64}) nor a prefix of one followed by '*'",
                         (int)(e - b > 80 ? 80 : e - b), b);
            return -1;
        }
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    return 0;
}

int sl_chanset_covers(const sl_chanset_t *s, const char *channel, size_t len)
{
    if (s == NULL)
        return 0;
    for (size_t i = 0; i < s->n; i++) {
        const struct sl_chanpat *p = &s->pats[i];
        if (p->prefix ? len >= p->len && memcmp(channel, p->name, p->len) == 0
                      : len == p->len && memcmp(channel, p->name, len) == 0)
            return 1;
    }
    return 0;
}

size_t sl_chanset_pattern(const sl_chanset_t *s, size_t i, const char **name, int *prefix)
{
    *name = s->pats[i].name;
    *prefix = s->pats[i].prefix;
    return s->pats[i].len;
}

void sl_chanset_free(sl_chanset_t *s)
{
    free(s->pats);
    s->pats = NULL;
    s->n = 0;
}

sl_chanpolicy_t *sl_chanpolicy_create(const char *private_list, char *err, size_t errlen)
{
    sl_chanpolicy_t *p = calloc(1, sizeof(*p));
    char why[256];
    if (p == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (sl_chanset_parse(&p->private_channels, private_list, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "SLUICE_PRIVATE_CHANNELS: %s", why);
        sl_chanpolicy_destroy(p);
        return NULL;
    }
    return p;
}

void sl_chanpolicy_destroy(sl_chanpolicy_t *p)
{
    if (p == NULL)
        return;
    sl_chanset_free(&p->private_channels);
    free(p);
}

int sl_chanpolicy_any_private(const sl_chanpolicy_t *p)
{
    return p != NULL && p->private_channels.n > 0;
}

const sl_chanset_t *sl_chanpolicy_private(const sl_chanpolicy_t *p)
{
    static const sl_chanset_t none = SL_CHANSET_INIT;
    return p != NULL ? &p->private_channels : &none;
}

int sl_chanpolicy_is_private(const sl_chanpolicy_t *p, const char *channel, size_t len)
{
    return p != NULL && sl_chanset_covers(&p->private_channels, channel, len);
}

sl_chan_read_t sl_chanpolicy_read(const sl_chanpolicy_t *p, const sl_chanset_t *granted, const char *channel,
                                  size_t len)
{
    if (!sl_chanpolicy_is_private(p, channel, len))
        return SL_CHAN_READ_OK;
    if (granted == NULL)
        return SL_CHAN_READ_NEED_TOKEN;
    return sl_chanset_covers(granted, channel, len) ? SL_CHAN_READ_OK : SL_CHAN_READ_FORBIDDEN;
}

int sl_chanpolicy_may_read(const sl_chanpolicy_t *p, const sl_chanset_t *granted, const char *channel, size_t len)
{
    return sl_chanpolicy_read(p, granted, channel, len) == SL_CHAN_READ_OK;
}

const char *sl_chan_read_code(sl_chan_read_t r)
{
    switch (r) {
    case SL_CHAN_READ_NEED_TOKEN:
        return "token_required";
    case SL_CHAN_READ_FORBIDDEN:
        return "channel_forbidden";
    default:
        return NULL;
    }
}

const char *sl_chan_read_message(sl_chan_read_t r)
{
    switch (r) {
    case SL_CHAN_READ_NEED_TOKEN:
        return "this channel is private: reading it needs a token";
    case SL_CHAN_READ_FORBIDDEN:
        return "this token's channels do not cover this private channel";
    default:
        return NULL;
    }
}

int sl_chan_read_status(sl_chan_read_t r)
{
    return r == SL_CHAN_READ_NEED_TOKEN ? 401 : r == SL_CHAN_READ_FORBIDDEN ? 403 : 200;
}
