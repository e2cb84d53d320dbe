/*
 * sl_mastodon: Mastodon statuses and streams as sluice messages; see sl_mastodon.h.
 */
#include "sl_mastodon.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sl_meta.h"
#include "sl_time.h"
#include "sl_uuid.h"

/* ---- UTF-8 ---------------------------------------------------------------------------------- */

static size_t put_utf8(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Length of the well-formed UTF-8 sequence at s (n bytes available), or 0 if there is none. */
static size_t utf8_seq(const char *s, size_t n)
{
    unsigned char c = (unsigned char)s[0];
    size_t len = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (len == 0 || len > n || sl_utf8_count(s, len) != 1)
        return 0;
    return len;
}

/* Code point of a well-formed sequence of len bytes. */
static uint32_t utf8_cp(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    switch (len) {
    case 1:
        return s[0];
    case 2:
        return (uint32_t)(s[0] & 0x1f) << 6 | (s[1] & 0x3f);
    case 3:
        return (uint32_t)(s[0] & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
    default:
        return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3f) << 12 | (uint32_t)(s[2] & 0x3f) << 6 |
               (s[3] & 0x3f);
    }
}

static int is_control(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f);
}

size_t sl_mastodon_cut(const char *src, size_t len, char *dst, size_t size, size_t max_chars, int ellipsis,
                       int drop_controls)
{
    size_t total = 0, i, o = 0, n = 0, keep;
    if (size == 0)
        return 0;
    for (i = 0; i < len;) {
        size_t l = utf8_seq(src + i, len - i);
        if (l == 0) {
            i++;
            continue;
        }
        if (!(drop_controls && is_control(utf8_cp(src + i, l))))
            total++;
        i += l;
    }
    keep = total <= max_chars ? total : ellipsis && max_chars > 0 ? max_chars - 1 : max_chars;
    size_t room = size - 1 - (total > keep && ellipsis ? 3 : 0);
    if (size - 1 < 3 && total > keep && ellipsis)
        room = 0;
    for (i = 0; i < len && n < keep;) {
        size_t l = utf8_seq(src + i, len - i);
        if (l == 0) {
            i++;
            continue;
        }
        if (!(drop_controls && is_control(utf8_cp(src + i, l)))) {
            if (o + l > room)
                break;
            memcpy(dst + o, src + i, l);
            o += l;
            n++;
        }
        i += l;
    }
    if (total > n && ellipsis && o + 3 <= size - 1) {
        memcpy(dst + o, "\xe2\x80\xa6", 3);
        o += 3;
        n++;
    }
    dst[o] = '\0';
    return n;
}

/* ---- HTML to text ----------------------------------------------------------------------------- */

struct conv {
    sl_buf_t *out;
    size_t start;   /* our text begins here in out */
    size_t chars, max;
    int space;      /* collapsed whitespace waits for the next text */
    int brk;        /* newlines the next text must follow (1: a line, 2: a paragraph) */
};

static void trim_spaces(struct conv *c)
{
    while (c->out->len > c->start && c->out->data[c->out->len - 1] == ' ')
        c->out->len--;
}

static int trailing_newlines(const struct conv *c)
{
    int n = 0;
    for (size_t i = c->out->len; i > c->start && c->out->data[i - 1] == '\n'; i--)
        n++;
    return n;
}

static void put_text(struct conv *c, const char *s, size_t n)
{
    if (c->out->len > c->start) {
        if (c->brk > 0) {
            trim_spaces(c);
            for (int k = trailing_newlines(c); k < c->brk; k++)
                sl_buf_append(c->out, "\n", 1);
        } else if (c->space && c->out->data[c->out->len - 1] != '\n') {
            sl_buf_append(c->out, " ", 1);
        }
    }
    c->brk = 0;
    c->space = 0;
    sl_buf_append(c->out, s, n);
    c->chars++;
}

static void put_cp(struct conv *c, uint32_t cp)
{
    char u[4];
    if (cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r' || cp == 0xa0) {
        c->space = 1;
        return;
    }
    if (is_control(cp) || cp == 0xad /* soft hyphen */)
        return;
    if (cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        cp = 0xfffd;
    put_text(c, u, put_utf8(cp, u));
}

static void line_break(struct conv *c)
{
    if (c->out->len == c->start || c->brk > 0) /* nothing yet, or a paragraph break already waits */
        return;
    trim_spaces(c);
    sl_buf_append(c->out, "\n", 1);
    c->space = 0;
}

static const struct {
    const char *name;
    uint32_t cp;
} entities[] = {
    {"amp", '&'},       {"lt", '<'},        {"gt", '>'},        {"quot", '"'},      {"apos", '\''},
    {"nbsp", 0xa0},     {"hellip", 0x2026}, {"mdash", 0x2014},  {"ndash", 0x2013},  {"lsquo", 0x2018},
    {"rsquo", 0x2019},  {"ldquo", 0x201c},  {"rdquo", 0x201d},  {"laquo", 0xab},    {"raquo", 0xbb},
    {"copy", 0xa9},     {"reg", 0xae},      {"trade", 0x2122},  {"euro", 0x20ac},   {"bull", 0x2022},
    {"middot", 0xb7},   {"times", 0xd7},    {"deg", 0xb0},      {"shy", 0xad},      {"zwj", 0x200d},
};

/* Decodes the entity at html[i] == '&'; returns the bytes it spans (0: not an entity). */
static size_t entity(const char *html, size_t len, size_t i, uint32_t *cp)
{
    size_t j = i + 1;
    if (j < len && html[j] == '#') {
        int hex = j + 1 < len && (html[j + 1] == 'x' || html[j + 1] == 'X');
        uint32_t v = 0;
        size_t digits = 0;
        j += hex ? 2 : 1;
        while (j < len && digits < 8 && (hex ? isxdigit((unsigned char)html[j]) : isdigit((unsigned char)html[j]))) {
            char d = html[j];
            v = v * (hex ? 16 : 10) + (uint32_t)(isdigit((unsigned char)d) ? d - '0' : (tolower((unsigned char)d) - 'a' + 10));
            j++;
            digits++;
        }
        if (digits == 0)
            return 0;
        while (j < len && (hex ? isxdigit((unsigned char)html[j]) : isdigit((unsigned char)html[j]))) {
            v = 0x110000; /* absurdly long: out of range */
            j++;
        }
        if (j < len && html[j] == ';')
            j++;
        *cp = v == 0 || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff) ? 0xfffd : v;
        return j - i;
    }
    char name[12];
    size_t n = 0;
    while (j < len && n < sizeof(name) - 1 && isalnum((unsigned char)html[j]))
        name[n++] = html[j++];
    name[n] = '\0';
    if (n == 0 || j >= len || html[j] != ';')
        return 0;
    for (size_t k = 0; k < sizeof(entities) / sizeof(entities[0]); k++) {
        if (strcmp(entities[k].name, name) == 0) {
            *cp = entities[k].cp;
            return j + 1 - i;
        }
    }
    return 0;
}

/* Finds the '>' closing the tag that starts at html[i] == '<', honouring quoted attribute values
 * when they close; returns its index, or len when there is none. */
static size_t tag_end(const char *html, size_t len, size_t i)
{
    char q = 0;
    for (size_t k = i + 1; k < len; k++) {
        char ch = html[k];
        if (q != 0) {
            if (ch == q)
                q = 0;
        } else if ((ch == '"' || ch == '\'') && html[k - 1] == '=') {
            q = ch;
        } else if (ch == '>') {
            return k;
        }
    }
    if (q != 0) { /* an unterminated quote: fall back to the first '>' */
        const char *gt = memchr(html + i, '>', len - i);
        return gt != NULL ? (size_t)(gt - html) : len;
    }
    return len;
}

static const char *find_ci(const char *hay, size_t len, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= len; i++) {
        if (strncasecmp(hay + i, needle, n) == 0)
            return hay + i;
    }
    return NULL;
}

size_t sl_mastodon_html_to_text(const char *html, size_t len, size_t max_chars, sl_buf_t *out)
{
    struct conv c = {out, out->len, 0, max_chars, 0, 0};
    size_t i = 0;
    sl_buf_reserve(out, 1);
    while (i < len && c.chars < c.max) {
        char ch = html[i];
        if (ch == '<' && i + 1 < len &&
            (isalpha((unsigned char)html[i + 1]) || html[i + 1] == '/' || html[i + 1] == '!' || html[i + 1] == '?')) {
            if (len - i >= 4 && memcmp(html + i, "<!--", 4) == 0) {
                const char *e = find_ci(html + i + 4, len - i - 4, "-->");
                i = e != NULL ? (size_t)(e - html) + 3 : len;
                continue;
            }
            size_t end = tag_end(html, len, i), j = i + 1;
            int closing = html[j] == '/';
            char name[16];
            size_t n = 0;
            if (closing)
                j++;
            while (j < end && n < sizeof(name) - 1 && isalnum((unsigned char)html[j]))
                name[n++] = (char)tolower((unsigned char)html[j++]);
            name[n] = '\0';
            if (end >= len)
                break; /* an unterminated tag: nothing after it is text */
            i = end + 1;
            if (strcmp(name, "br") == 0) {
                line_break(&c);
            } else if (strcmp(name, "p") == 0 || strcmp(name, "blockquote") == 0 || strcmp(name, "pre") == 0 ||
                       strcmp(name, "ul") == 0 || strcmp(name, "ol") == 0 ||
                       (name[0] == 'h' && name[1] >= '1' && name[1] <= '6' && name[2] == '\0')) {
                c.brk = 2;
            } else if (strcmp(name, "li") == 0 || strcmp(name, "div") == 0 || strcmp(name, "tr") == 0) {
                if (c.brk < 1)
                    c.brk = 1;
            } else if (!closing && (strcmp(name, "script") == 0 || strcmp(name, "style") == 0)) {
                char close[24];
                snprintf(close, sizeof(close), "</%s", name);
                const char *e = find_ci(html + i, len - i, close);
                i = e != NULL ? (size_t)(e - html) : len;
            }
            continue;
        }
        if (ch == '&') {
            uint32_t cp;
            size_t n = entity(html, len, i, &cp);
            if (n > 0) {
                put_cp(&c, cp);
                i += n;
                continue;
            }
        }
        size_t l = utf8_seq(html + i, len - i);
        if (l == 0) {
            put_cp(&c, 0xfffd);
            i++;
        } else if (l == 1) {
            put_cp(&c, (unsigned char)ch);
            i++;
        } else {
            uint32_t cp = utf8_cp(html + i, l);
            if (cp == 0xa0 || is_control(cp) || cp == 0xad)
                put_cp(&c, cp);
            else
                put_text(&c, html + i, l);
            i += l;
        }
    }
    /* trim what we appended at the end */
    while (out->len > c.start && (out->data[out->len - 1] == ' ' || out->data[out->len - 1] == '\n'))
        out->len--;
    out->data[out->len] = '\0';
    return c.chars;
}

/* ---- identity --------------------------------------------------------------------------------- */

int sl_mastodon_instance_norm(const char *url, char *out, size_t size)
{
    size_t skip;
    if (strncasecmp(url, "https://", 8) == 0)
        skip = 8;
    else if (strncasecmp(url, "http://", 7) == 0)
        skip = 7;
    else
        return -1;
    size_t len = strlen(url);
    while (len > skip && url[len - 1] == '/')
        len--;
    if (len == skip || len >= size || strpbrk(url, "?# \t\r\n") != NULL)
        return -1;
    const char *slash = memchr(url + skip, '/', len - skip);
    size_t hostend = slash != NULL ? (size_t)(slash - url) : len;
    if (hostend == skip)
        return -1;
    for (size_t i = 0; i < len; i++)
        out[i] = i < hostend ? (char)tolower((unsigned char)url[i]) : url[i];
    out[len] = '\0';
    return 0;
}

int sl_mastodon_local_id(const char *instance, const char *status_id, char out[SL_UUID_STRLEN])
{
    char name[SL_MASTODON_INSTANCE_MAX + SL_MASTODON_STATUS_ID_MAX + 32];
    int n = snprintf(name, sizeof(name), "%s/api/v1/statuses/%s", instance, status_id);
    if (n < 0 || (size_t)n >= sizeof(name))
        return -1;
    return sl_uuid_v5(SL_MASTODON_NAMESPACE, name, (size_t)n, out);
}

int sl_mastodon_uri_id(const char *uri, size_t len, char out[SL_UUID_STRLEN])
{
    if (len > SL_URL_MAX || !sl_meta_plain(uri, len, SL_URL_MAX))
        return -1;
    return sl_uuid_v5(SL_MASTODON_URI_NAMESPACE, uri, len, out);
}

/* ---- what a source remembers ------------------------------------------------------------------ */

#define IDS_WAYS 4

struct ids_entry {
    uint8_t local[16], id[16];
    uint64_t stamp; /* when it was put (0: empty) */
};

struct sl_mastodon_ids {
    struct ids_entry *e;
    size_t sets;    /* a power of two */
    uint64_t clock;
};

sl_mastodon_ids_t *sl_mastodon_ids_create(size_t cap)
{
    sl_mastodon_ids_t *ids = calloc(1, sizeof(*ids));
    if (ids == NULL)
        return NULL;
    ids->sets = 1;
    while (ids->sets * IDS_WAYS < cap)
        ids->sets *= 2;
    if ((ids->e = calloc(ids->sets * IDS_WAYS, sizeof(*ids->e))) == NULL) {
        free(ids);
        return NULL;
    }
    return ids;
}

void sl_mastodon_ids_destroy(sl_mastodon_ids_t *ids)
{
    if (ids == NULL)
        return;
    free(ids->e);
    free(ids);
}

/* The set of a key: local keys are SHA-1 based, so any of their bytes spread evenly. */
static struct ids_entry *ids_set(const sl_mastodon_ids_t *ids, const uint8_t local[16])
{
    uint64_t h;
    memcpy(&h, local, sizeof(h));
    return &ids->e[(h & (ids->sets - 1)) * IDS_WAYS];
}

void sl_mastodon_ids_put(sl_mastodon_ids_t *ids, const char *local, const char *id)
{
    uint8_t k[16], v[16];
    if (ids == NULL || sl_uuid_parse(local, strlen(local), k) != 0 || sl_uuid_parse(id, strlen(id), v) != 0)
        return;
    struct ids_entry *set = ids_set(ids, k), *slot = &set[0];
    for (int w = 0; w < IDS_WAYS; w++) {
        if (set[w].stamp != 0 && memcmp(set[w].local, k, 16) == 0) {
            slot = &set[w];
            break;
        }
        if (set[w].stamp < slot->stamp) /* an empty one (0), else the oldest */
            slot = &set[w];
    }
    memcpy(slot->local, k, 16);
    memcpy(slot->id, v, 16);
    slot->stamp = ++ids->clock;
}

int sl_mastodon_ids_get(const sl_mastodon_ids_t *ids, const char *local, char out[SL_UUID_STRLEN])
{
    uint8_t k[16];
    if (ids == NULL || sl_uuid_parse(local, strlen(local), k) != 0)
        return 0;
    const struct ids_entry *set = ids_set(ids, k);
    for (int w = 0; w < IDS_WAYS; w++) {
        if (set[w].stamp != 0 && memcmp(set[w].local, k, 16) == 0) {
            sl_uuid_format(set[w].id, out);
            return 1;
        }
    }
    return 0;
}

int sl_mastodon_id_cmp(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la != lb)
        return la < lb ? -1 : 1;
    return strcmp(a, b);
}

int sl_mastodon_id_valid(const char *s, size_t len)
{
    if (len < 1 || len > SL_MASTODON_STATUS_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '.' ||
              c == '_' || c == '~'))
            return 0;
    }
    return 1;
}

/* ---- timeline pages and rate limits ------------------------------------------------------------ */

static const char *page_id(json_t *status)
{
    json_t *id = json_object_get(status, "id");
    return json_is_string(id) && sl_mastodon_id_valid(json_string_value(id), json_string_length(id))
               ? json_string_value(id)
               : NULL;
}

static int cmp_page_id(const void *a, const void *b)
{
    return sl_mastodon_id_cmp(page_id(*(json_t *const *)a), page_id(*(json_t *const *)b));
}

size_t sl_mastodon_page_after(json_t *page, const char *since_id, json_t **out)
{
    size_t n = 0, kept = 0;
    for (size_t i = 0; i < json_array_size(page); i++) {
        json_t *st = json_array_get(page, i);
        const char *id = page_id(st);
        if (id != NULL && (since_id[0] == '\0' || sl_mastodon_id_cmp(id, since_id) > 0))
            out[n++] = st;
    }
    qsort(out, n, sizeof(*out), cmp_page_id);
    for (size_t i = 0; i < n; i++) { /* one of each id: the first of equals, as the sort left them */
        if (kept == 0 || sl_mastodon_id_cmp(page_id(out[kept - 1]), page_id(out[i])) != 0)
            out[kept++] = out[i];
    }
    return kept;
}

void sl_mastodon_rate_init(sl_mastodon_rate_t *rl)
{
    rl->remaining = rl->retry_after_s = -1;
    rl->reset_us = 0;
}

/* Decimal digits only (at least one), their value up to 10^15 (more saturates there); else -1. */
static long long header_count(const char *v, size_t len)
{
    long long n = 0;
    if (len < 1)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        n = n >= 100000000000000LL ? 1000000000000000LL : n * 10 + (v[i] - '0');
    }
    return n;
}

int sl_mastodon_rate_header(sl_mastodon_rate_t *rl, const char *name, size_t nlen, const char *value, size_t vlen)
{
#define IS(h) (nlen == sizeof(h) - 1 && strncasecmp(name, h, nlen) == 0)
    if (IS("x-ratelimit-remaining")) {
        rl->remaining = header_count(value, vlen);
    } else if (IS("x-ratelimit-reset")) {
        if (sl_time_parse(value, vlen, &rl->reset_us) != 0)
            rl->reset_us = 0;
    } else if (IS("retry-after")) {
        rl->retry_after_s = header_count(value, vlen);
    } else {
        return 0;
    }
    return 1;
#undef IS
}

long long sl_mastodon_rate_wait_ms(const sl_mastodon_rate_t *rl, long status, int64_t now_us)
{
    long long ms;
    if (status == 429 && rl->retry_after_s >= 0)
        ms = rl->retry_after_s < SL_MASTODON_RATE_WAIT_MAX_MS / 1000 ? rl->retry_after_s * 1000
                                                                      : SL_MASTODON_RATE_WAIT_MAX_MS;
    else if ((status == 429 || rl->remaining == 0) && rl->reset_us > 0)
        ms = (rl->reset_us - now_us) / 1000 + 50; /* both within years 1-9999: no overflow */
    else
        ms = status == 429 ? 60000 : 0;
    return ms < 0 ? 0 : ms > SL_MASTODON_RATE_WAIT_MAX_MS ? SL_MASTODON_RATE_WAIT_MAX_MS : ms;
}

/* ---- statuses --------------------------------------------------------------------------------- */

static const char *str_field(json_t *obj, const char *name, size_t *len)
{
    json_t *v = json_object_get(obj, name);
    if (!json_is_string(v))
        return NULL;
    if (len != NULL)
        *len = json_string_length(v);
    return json_string_value(v);
}

static int64_t time_field(json_t *obj, const char *name)
{
    size_t len;
    int64_t us;
    const char *s = str_field(obj, name, &len);
    return s != NULL && sl_time_parse(s, len, &us) == 0 ? us : 0;
}

static int visible(json_t *st, const char **vis)
{
    *vis = str_field(st, "visibility", NULL);
    return *vis == NULL || strcmp(*vis, "public") == 0 || strcmp(*vis, "unlisted") == 0;
}

/* ---- meta ------------------------------------------------------------------------------------ */

/* Sets obj[name] to the plain text of from[field] (display names, spoilers and descriptions are
 * plain text in Mastodon's API, not HTML): control characters dropped (line breaks and tabs turned
 * into spaces first when flatten), cut to max code points (ending with an ellipsis when ellipsis).
 * Nothing when that leaves nothing but spaces. */
static void put_plain(json_t *obj, const char *name, json_t *from, const char *field, size_t max, int flatten,
                      int ellipsis)
{
    size_t len;
    const char *s = str_field(from, field, &len);
    char *flat = NULL, *out;
    if (s == NULL || len == 0 || (out = malloc(max * 4 + 1)) == NULL)
        return;
    if (flatten && (flat = malloc(len)) != NULL) {
        for (size_t i = 0; i < len; i++)
            flat[i] = s[i] == '\n' || s[i] == '\r' || s[i] == '\t' ? ' ' : s[i];
        s = flat;
    }
    sl_mastodon_cut(s, len, out, max * 4 + 1, max, ellipsis, 1);
    if (strspn(out, " ") < strlen(out))
        json_object_set_new(obj, name, json_string(out));
    free(out);
    free(flat);
}

/* Sets obj[name] to the first of from's fields that is an http(s) link (sl_meta_web_link); 0 when
 * none is. */
static int put_link(json_t *obj, const char *name, json_t *from, const char *field, const char *fallback)
{
    const char *const fields[] = {field, fallback};
    for (int f = 0; f < 2 && fields[f] != NULL; f++) {
        size_t len;
        const char *s = str_field(from, fields[f], &len);
        if (s != NULL && sl_meta_web_link(s, len))
            return json_object_set_new(obj, name, json_stringn(s, len)) == 0;
    }
    return 0;
}

/* The author's part: display name, avatar, profile page. */
static void put_account(json_t *obj, json_t *account)
{
    put_plain(obj, "display_name", account, "display_name", SL_META_NAME_MAX, 1, 1);
    put_link(obj, "avatar", account, "avatar", NULL);
    put_link(obj, "account_url", account, "url", NULL);
}

static json_t *media_of(json_t *shown)
{
    static const char *const types[] = {"image", "gifv", "video", "audio", "unknown"};
    json_t *arr = json_array(), *att;
    size_t i;
    json_array_foreach(json_object_get(shown, "media_attachments"), i, att)
    {
        json_t *item = json_object();
        const char *type = str_field(att, "type", NULL);
        size_t t = 0;
        while (t < 4 && (type == NULL || strcmp(type, types[t]) != 0))
            t++;
        json_object_set_new(item, "type", json_string(types[t]));
        /* url is the instance's copy; remote_url the original, when the instance has none */
        if (json_array_size(arr) < SL_META_MEDIA_MAX && put_link(item, "url", att, "url", "remote_url")) {
            put_link(item, "preview_url", att, "preview_url", NULL);
            put_plain(item, "description", att, "description", SL_META_DESCRIPTION_MAX, 1, 1);
            json_array_append(arr, item);
        }
        json_decref(item);
    }
    return arr;
}

/* The meta object of a status (sl_meta.h): the author's (st's account) display name, avatar and
 * profile; the shown status's page, language, content warning, sensitivity and media; for a boost,
 * the boosted status's author and page. Canonical text, or NULL when there is nothing. */
static char *meta_of(json_t *st, json_t *shown)
{
    json_t *meta = json_object();
    size_t len;
    const char *s;
    if (meta == NULL)
        return NULL;
    put_account(meta, json_object_get(st, "account"));
    put_link(meta, "url", shown, "url", NULL);
    if ((s = str_field(shown, "language", &len)) != NULL && len >= 1 && len <= SL_META_LANGUAGE_MAX &&
        strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") == len)
        json_object_set_new(meta, "language", json_stringn(s, len));
    /* the same cut as the "CW: " line of the text, so that a page can tell it apart */
    put_plain(meta, "spoiler_text", shown, "spoiler_text", SL_TEXT_MAX_CHARS, 0, 0);
    if (json_is_true(json_object_get(shown, "sensitive")))
        json_object_set_new(meta, "sensitive", json_true());
    json_t *media = media_of(shown);
    if (json_array_size(media) > 0)
        json_object_set(meta, "media", media);
    if (shown != st) {
        json_t *reblog = json_object(), *account = json_object_get(shown, "account");
        char acct[SL_AUTHOR_MAX_CHARS * 4 + 1];
        if ((s = str_field(account, "acct", &len)) == NULL || len == 0)
            s = str_field(account, "username", &len);
        if (s != NULL && sl_mastodon_cut(s, len, acct, sizeof(acct), SL_AUTHOR_MAX_CHARS, 0, 1) > 0) {
            json_object_set_new(reblog, "acct", json_string(acct));
            put_account(reblog, account);
            put_link(reblog, "url", shown, "url", "uri");
            json_object_set(meta, "reblog", reblog);
        }
        json_decref(reblog);
    }
    /* the caps above keep everything but the media well under SL_META_MAX: drop attachments from
     * the end until it fits */
    while (json_array_size(media) > 0 && json_dumpb(meta, NULL, 0, JSON_COMPACT | JSON_SORT_KEYS) > SL_META_MAX) {
        json_array_remove(media, json_array_size(media) - 1);
        if (json_array_size(media) == 0)
            json_object_del(meta, "media");
    }
    json_decref(media);
    char *text = json_dumpb(meta, NULL, 0, JSON_COMPACT | JSON_SORT_KEYS) <= SL_META_MAX ? sl_meta_dump(meta) : NULL;
    json_decref(meta);
    return text;
}

/* Fills everything a status gives: id, author, text, url, created_at, edited_at, meta (a boost: see
 * sl_mastodon_status_to_message); ids learns the status's local key. */
static sl_mastodon_result_t map_status(json_t *st, const char *instance, const char *channel, sl_mastodon_ids_t *ids,
                                       sl_message_t *m, char *why, size_t whylen)
{
    size_t len;
    const char *id, *s;
    char local[SL_UUID_STRLEN];
    memset(m, 0, sizeof(*m));
    if (!json_is_object(st)) {
        snprintf(why, whylen, "the status is not a JSON object");
        return SL_MASTODON_INVALID;
    }
    if ((id = str_field(st, "id", &len)) == NULL || !sl_mastodon_id_valid(id, len)) {
        snprintf(why, whylen, "the status has no usable id");
        return SL_MASTODON_INVALID;
    }
    if (sl_mastodon_local_id(instance, id, local) != 0) {
        snprintf(why, whylen, "could not derive an id for status %s", id);
        return SL_MASTODON_INVALID;
    }
    /* one post, one id, whichever instance it is read from */
    if ((s = str_field(st, "uri", &len)) == NULL || sl_mastodon_uri_id(s, len, m->id) != 0)
        memcpy(m->id, local, SL_UUID_STRLEN);
    if (!visible(st, &s)) {
        snprintf(why, whylen, "status %s is not public (%.16s)", id, s);
        return SL_MASTODON_SKIP;
    }
    /* A boost is the booster's message, showing the boosted status (its text, url, edit time). */
    json_t *shown = st, *reblog = json_object_get(st, "reblog");
    if (reblog != NULL && !json_is_null(reblog)) {
        if (!json_is_object(reblog)) {
            snprintf(why, whylen, "status %s boosts something that is not a status", id);
            return SL_MASTODON_INVALID;
        }
        if (!visible(reblog, &s)) {
            snprintf(why, whylen, "status %s boosts a status that is not public (%.16s)", id, s);
            return SL_MASTODON_SKIP;
        }
        shown = reblog;
    }
    json_t *account = json_object_get(st, "account");
    if ((s = str_field(account, "acct", &len)) == NULL || len == 0)
        s = str_field(account, "username", &len);
    if (s == NULL || sl_mastodon_cut(s, len, m->author, sizeof(m->author), SL_AUTHOR_MAX_CHARS, 0, 1) == 0) {
        snprintf(why, whylen, "status %s has no account name", id);
        return SL_MASTODON_INVALID;
    }

    /* The text: a content warning first (the post hides behind it), then the content. */
    sl_buf_t text = SL_BUF_INIT;
    const char *spoiler = str_field(shown, "spoiler_text", &len);
    if (spoiler != NULL && len > 0) { /* plain text, unlike content */
        char cw[SL_TEXT_MAX_CHARS * 4 + 1];
        sl_mastodon_cut(spoiler, len, cw, sizeof(cw), SL_TEXT_MAX_CHARS, 0, 1);
        if (strspn(cw, " ") < strlen(cw))
            sl_buf_appendf(&text, "CW: %s\n\n", cw);
    }
    size_t before = text.len;
    if ((s = str_field(shown, "content", &len)) != NULL)
        sl_mastodon_html_to_text(s, len, SL_TEXT_MAX_CHARS + 1, &text);
    if (text.len == before) {
        sl_buf_free(&text);
        snprintf(why, whylen, "status %s has no text", id);
        return SL_MASTODON_SKIP;
    }
    sl_mastodon_cut(text.data, text.len, m->text, sizeof(m->text), SL_TEXT_MAX_CHARS, 1, 0);
    sl_buf_free(&text);

    /* the status's url, else its uri: the first that is a web link we may show (http or https,
     * no control characters; "javascript:" and the like are never stored) */
    const char *const fields[] = {"url", "uri"};
    for (int f = 0; f < 2 && m->url[0] == '\0'; f++) {
        if ((s = str_field(shown, fields[f], &len)) != NULL && sl_meta_web_link(s, len))
            memcpy(m->url, s, len + 1);
    }
    m->created_at_us = time_field(st, "created_at");
    if (m->created_at_us == 0)
        m->created_at_us = sl_time_now_us(); /* a post is not lost for a bad timestamp */
    m->edited_at_us = time_field(shown, "edited_at");
    snprintf(m->channel, sizeof(m->channel), "%s", channel);
    strcpy(m->source, SL_MASTODON_SOURCE);
    m->meta = meta_of(st, shown);
    sl_mastodon_ids_put(ids, local, m->id); /* the latest word on this status, whatever said before */
    return SL_MASTODON_OK;
}

sl_mastodon_result_t sl_mastodon_status_to_message(json_t *status, const char *instance, const char *channel,
                                                   sl_mastodon_ids_t *ids, sl_message_t *m, char *why, size_t whylen)
{
    return map_status(status, instance, channel, ids, m, why, whylen);
}

static sl_mastodon_result_t parse_and_map(const char *data, size_t len, const char *instance, const char *channel,
                                          sl_mastodon_ids_t *ids, sl_message_t *m, char *why, size_t whylen)
{
    json_error_t jerr;
    json_t *st = json_loadb(data, len, 0, &jerr);
    if (st == NULL) {
        snprintf(why, whylen, "the status is not JSON: %s", jerr.text);
        return SL_MASTODON_INVALID;
    }
    sl_mastodon_result_t r = map_status(st, instance, channel, ids, m, why, whylen);
    json_decref(st);
    return r;
}

sl_mastodon_result_t sl_mastodon_stream_event(const char *event, const char *data, size_t len, const char *instance,
                                              const char *channel, sl_mastodon_ids_t *ids, sl_message_t *m, char *why,
                                              size_t whylen)
{
    memset(m, 0, sizeof(*m));
    if (strcmp(event, "update") == 0)
        return parse_and_map(data, len, instance, channel, ids, m, why, whylen);
    if (strcmp(event, "status.update") == 0) {
        sl_mastodon_result_t r = parse_and_map(data, len, instance, channel, ids, m, why, whylen);
        if (r != SL_MASTODON_OK)
            return r;
        m->type = SL_MESSAGE_UPDATE;
        if (m->edited_at_us == 0)
            m->edited_at_us = sl_time_now_us();
        m->created_at_us = sl_time_now_us(); /* the event's time, not the post's */
        memset(m->author, 0, sizeof(m->author));
        memset(m->source, 0, sizeof(m->source));
        if (sl_message_event_id(m, m->event_id) != 0) {
            sl_message_clear(m);
            snprintf(why, whylen, "could not derive an event id");
            return SL_MASTODON_INVALID;
        }
        return SL_MASTODON_OK;
    }
    if (strcmp(event, "delete") == 0) {
        char id[SL_MASTODON_STATUS_ID_MAX + 1];
        while (len > 0 && (data[0] == ' ' || data[0] == '"'))
            data++, len--;
        while (len > 0 && (data[len - 1] == ' ' || data[len - 1] == '"' || data[len - 1] == '\n'))
            len--;
        memset(m, 0, sizeof(*m));
        if (!sl_mastodon_id_valid(data, len)) {
            snprintf(why, whylen, "a delete event without a usable status id");
            return SL_MASTODON_INVALID;
        }
        memcpy(id, data, len);
        id[len] = '\0';
        m->type = SL_MESSAGE_DELETE;
        char local[SL_UUID_STRLEN];
        if (sl_mastodon_local_id(instance, id, local) != 0) {
            snprintf(why, whylen, "could not derive ids for deleted status %s", id);
            return SL_MASTODON_INVALID;
        }
        if (!sl_mastodon_ids_get(ids, local, m->id)) /* not remembered: the local key (see sl_mastodon.h) */
            memcpy(m->id, local, SL_UUID_STRLEN);
        if (sl_message_event_id(m, m->event_id) != 0) {
            snprintf(why, whylen, "could not derive ids for deleted status %s", id);
            return SL_MASTODON_INVALID;
        }
        snprintf(m->channel, sizeof(m->channel), "%s", channel);
        m->created_at_us = sl_time_now_us();
        return SL_MASTODON_OK;
    }
    snprintf(why, whylen, "event type '%.40s' is not used", event);
    return SL_MASTODON_SKIP;
}

/* ---- streams, timelines, headers -------------------------------------------------------------- */

static const char *hashtag_of(const char *stream)
{
    if (strncmp(stream, "hashtag:", 8) != 0)
        return NULL;
    const char *tag = stream + 8;
    if (*tag == '#')
        tag++;
    size_t len = strlen(tag);
    if (len < 1 || len > 100 || sl_utf8_count(tag, len) < 0)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)tag[i];
        if (c <= 0x20 || c == 0x7f || strchr("#/?&%=+", c) != NULL)
            return NULL;
    }
    return tag;
}

int sl_mastodon_stream_valid(const char *stream)
{
    return strcmp(stream, "public") == 0 || strcmp(stream, "public:local") == 0 || hashtag_of(stream) != NULL;
}

static void encode(sl_buf_t *b, const char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (isalnum(c) || c == '_' || c == '-' || c == '.' || c == '~')
            sl_buf_append(b, s, 1);
        else
            sl_buf_appendf(b, "%%%02X", c);
    }
}

static int finish(sl_buf_t *b, char *out, size_t size)
{
    int ok = b->len < size;
    if (ok)
        memcpy(out, b->data, b->len + 1);
    sl_buf_free(b);
    return ok ? 0 : -1;
}

int sl_mastodon_stream_path(const char *stream, char *out, size_t size)
{
    sl_buf_t b = SL_BUF_INIT;
    const char *tag = hashtag_of(stream);
    if (strcmp(stream, "public") == 0) {
        sl_buf_appends(&b, "/api/v1/streaming/public");
    } else if (strcmp(stream, "public:local") == 0) {
        sl_buf_appends(&b, "/api/v1/streaming/public/local");
    } else if (tag != NULL) {
        sl_buf_appends(&b, "/api/v1/streaming/hashtag?tag=");
        encode(&b, tag);
    } else {
        return -1;
    }
    return finish(&b, out, size);
}

int sl_mastodon_timeline_path(const char *stream, int limit, char *out, size_t size)
{
    sl_buf_t b = SL_BUF_INIT;
    const char *tag = hashtag_of(stream);
    if (strcmp(stream, "public") == 0) {
        sl_buf_appendf(&b, "/api/v1/timelines/public?limit=%d", limit);
    } else if (strcmp(stream, "public:local") == 0) {
        sl_buf_appendf(&b, "/api/v1/timelines/public?local=true&limit=%d", limit);
    } else if (tag != NULL) {
        sl_buf_appends(&b, "/api/v1/timelines/tag/");
        encode(&b, tag);
        sl_buf_appendf(&b, "?limit=%d", limit);
    } else {
        return -1;
    }
    return finish(&b, out, size);
}

int sl_mastodon_streaming_base(json_t *instance, char *out, size_t size)
{
    json_t *cfg = json_object_get(instance, "configuration");
    const char *s = str_field(json_object_get(cfg, "urls"), "streaming", NULL);
    if (s == NULL || *s == '\0')
        s = str_field(json_object_get(instance, "urls"), "streaming_api", NULL);
    if (s == NULL || *s == '\0')
        return -1;
    char buf[SL_MASTODON_INSTANCE_MAX];
    if (strncasecmp(s, "wss://", 6) == 0)
        snprintf(buf, sizeof(buf), "https://%s", s + 6);
    else if (strncasecmp(s, "ws://", 5) == 0)
        snprintf(buf, sizeof(buf), "http://%s", s + 5);
    else
        snprintf(buf, sizeof(buf), "%s", s);
    return sl_mastodon_instance_norm(buf, out, size);
}

