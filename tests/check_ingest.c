/* Unit tests of the ingest side: the SSE parser (sl_mastodon_sse), HTML to text, status and event
 * mapping, ids (sl_mastodon), and the queue payloads of events (sl_message). */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_buf.h"
#include "sl_ingest.h"
#include "sl_mastodon.h"
#include "sl_mastodon_sse.h"
#include "sl_message.h"
#include "sl_meta.h"
#include "sl_time.h"
#include "sl_uuid.h"
#include "sl_testsuite.h"

#define INSTANCE "https://mastodon.example"

/* ---- SSE parser ------------------------------------------------------------------------------- */

struct collected {
    sl_buf_t log; /* "<event>=<data>|" per event, "#<comment>|" per comment */
    int events, comments, stop_after;
};

static int collect_event(void *arg, const char *event, const char *data, size_t len)
{
    struct collected *c = arg;
    sl_buf_appendf(&c->log, "%s=%.*s|", event, (int)len, data);
    c->events++;
    return c->stop_after > 0 && c->events >= c->stop_after ? 7 : 0;
}

static void collect_comment(void *arg, const char *text, size_t len)
{
    struct collected *c = arg;
    sl_buf_appendf(&c->log, "#%.*s|", (int)len, text);
    c->comments++;
}

/* Parses s fed in pieces of the given sizes (cycled; 0 = all at once), returns the log. */
static char *parse_pieces(const char *s, size_t len, const size_t *sizes, size_t nsizes, size_t max_event)
{
    struct collected c;
    sl_msse_t p;
    memset(&c, 0, sizeof(c));
    sl_msse_init(&p, max_event, collect_event, collect_comment, &c);
    for (size_t i = 0, k = 0; i < len;) {
        size_t n = nsizes == 0 ? len : sizes[k++ % nsizes];
        if (n > len - i)
            n = len - i;
        ck_assert_int_eq(sl_msse_feed(&p, s + i, n), 0);
        i += n;
    }
    sl_msse_free(&p);
    sl_buf_appends(&c.log, "");
    return c.log.data;
}

static const char STREAM[] = ":)\n"
                             "event: update\n"
                             "data: {\"id\":\"1\",\"content\":\"caf\xc3\xa9 \xf0\x9f\x8c\x8a\"}\n"
                             "\n"
                             ":thump\n"
                             "event: delete\r\n"
                             "data: 1\r\n"
                             "\r\n"
                             "event: status.update\r"
                             "data: {\"a\":\r"
                             "data: 1}\r"
                             "\r"
                             "id: 5\n"
                             "retry: 1000\n"
                             "event: announcement\n"
                             "data:no-space\n"
                             "\n"
                             "event: update\n"
                             "\n"
                             "data:  two spaces\n"
                             "\n";
static const char EXPECTED[] = "#)|update={\"id\":\"1\",\"content\":\"caf\xc3\xa9 \xf0\x9f\x8c\x8a\"}|#thump|delete=1|"
                               "status.update={\"a\":\n1}|announcement=no-space|message= two spaces|";

START_TEST(test_sse_whole_stream)
{
    char *log = parse_pieces(STREAM, sizeof(STREAM) - 1, NULL, 0, 4096);
    ck_assert_str_eq(log, EXPECTED);
    free(log);
}
END_TEST

START_TEST(test_sse_every_split_point)
{
    /* Two reads cut at every byte (mid-line, mid-UTF-8, between CR and LF), then three. */
    size_t len = sizeof(STREAM) - 1;
    for (size_t cut = 1; cut < len; cut++) {
        size_t sizes[2] = {cut, len};
        char *log = parse_pieces(STREAM, len, sizes, 2, 4096);
        ck_assert_msg(strcmp(log, EXPECTED) == 0, "cut at %zu: %s", cut, log);
        free(log);
        for (size_t cut2 = cut + 1; cut2 < len; cut2 += 7) {
            size_t s3[3] = {cut, cut2 - cut, len};
            log = parse_pieces(STREAM, len, s3, 3, 4096);
            ck_assert_msg(strcmp(log, EXPECTED) == 0, "cuts at %zu,%zu: %s", cut, cut2, log);
            free(log);
        }
    }
    const size_t one[] = {1}, odd[] = {3, 1, 4, 1, 5, 9, 2, 6};
    char *log = parse_pieces(STREAM, len, one, 1, 4096);
    ck_assert_str_eq(log, EXPECTED);
    free(log);
    log = parse_pieces(STREAM, len, odd, 8, 4096);
    ck_assert_str_eq(log, EXPECTED);
    free(log);
}
END_TEST

START_TEST(test_sse_crlf_split_between_cr_and_lf)
{
    /* a CR ending one read and its LF starting the next is one line end, not two */
    const char *parts[] = {"data: a\r", "\n", "data: b\r", "\n\r", "\n"};
    struct collected c;
    sl_msse_t p;
    memset(&c, 0, sizeof(c));
    sl_msse_init(&p, 4096, collect_event, collect_comment, &c);
    for (size_t i = 0; i < 5; i++)
        ck_assert_int_eq(sl_msse_feed(&p, parts[i], strlen(parts[i])), 0);
    sl_buf_appends(&c.log, "");
    ck_assert_str_eq(c.log.data, "message=a\nb|");
    sl_msse_free(&p);
    sl_buf_free(&c.log);
}
END_TEST

START_TEST(test_sse_bom_and_limits)
{
    /* A byte-order mark (split) is skipped; an oversize event is dropped whole, the next one kept. */
    char big[300];
    memset(big, 'x', sizeof(big));
    struct collected c;
    sl_msse_t p;
    memset(&c, 0, sizeof(c));
    sl_msse_init(&p, 100, collect_event, NULL, &c);
    ck_assert_int_eq(sl_msse_feed(&p, "\xef\xbb", 2), 0);
    ck_assert_int_eq(sl_msse_feed(&p, "\xbf" "data: first\n\ndata: ", 19), 0);
    ck_assert_int_eq(sl_msse_feed(&p, big, sizeof(big)), 0);
    ck_assert_int_eq(sl_msse_feed(&p, "\ndata: more\n\n", 13), 0);
    ck_assert_int_eq(sl_msse_feed(&p, "data: a\ndata: ", 14), 0);
    ck_assert_int_eq(sl_msse_feed(&p, big, 95), 0); /* the lines fit, the event does not */
    ck_assert_int_eq(sl_msse_feed(&p, "\n\nevent: update\ndata: kept\n\n", 28), 0);
    sl_buf_appends(&c.log, "");
    ck_assert_str_eq(c.log.data, "message=first|update=kept|");
    ck_assert_int_eq(p.dropped, 2);
    /* not a mark: the bytes are text */
    sl_msse_reset(&p);
    c.log.len = 0;
    ck_assert_int_eq(sl_msse_feed(&p, "\xef", 1), 0);
    ck_assert_int_eq(sl_msse_feed(&p, "x: y\ndata: z\n\n", 14), 0);
    sl_buf_appends(&c.log, "");
    ck_assert_str_eq(c.log.data, "message=z|");
    sl_msse_free(&p);
    sl_buf_free(&c.log);
}
END_TEST

START_TEST(test_sse_callback_stops_feed)
{
    struct collected c;
    sl_msse_t p;
    memset(&c, 0, sizeof(c));
    c.stop_after = 1;
    sl_msse_init(&p, 4096, collect_event, NULL, &c);
    const char *s = "data: 1\n\ndata: 2\n\n";
    ck_assert_int_eq(sl_msse_feed(&p, s, strlen(s)), 7);
    ck_assert_int_eq(c.events, 1);
    sl_msse_free(&p);
    sl_buf_free(&c.log);
}
END_TEST

/* ---- HTML to text ----------------------------------------------------------------------------- */

static char *text_of(const char *html)
{
    sl_buf_t b = SL_BUF_INIT;
    sl_mastodon_html_to_text(html, strlen(html), 100000, &b);
    sl_buf_appends(&b, "");
    return b.data;
}

struct html_case {
    const char *html, *text;
};

static const struct html_case html_cases[] = {
    {"<p>Hello <b>world</b></p>", "Hello world"},
    {"<p>one</p><p>two</p>", "one\n\ntwo"},
    {"a<br>b<br/>c<BR />d", "a\nb\nc\nd"},
    {"<p>line<br><br>gap</p>", "line\n\ngap"},
    {"<p>  spaced \n  out  </p>\n<p> x </p>", "spaced out\n\nx"},
    {"&amp; &lt; &gt; &quot; &#39; &#x27; &apos; a&nbsp;b &hellip;", "& < > \" ' ' ' a b \xe2\x80\xa6"},
    {"&#233;&#xE9;&#X1F30A;", "\xc3\xa9\xc3\xa9\xf0\x9f\x8c\x8a"},
    {"&foo; & &#; &amp", "&foo; & &#; &amp"},
    {"x&#0;y&#xD800;z&#1114112;", "x\xef\xbf\xbdy\xef\xbf\xbdz\xef\xbf\xbd"},
    {"bell&#7;less &#x85;", "bellless"},
    {"<p>caf\xc3\xa9 \xf0\x9f\x8c\x8a \xe4\xb8\xad\xe6\x96\x87</p>", "caf\xc3\xa9 \xf0\x9f\x8c\x8a \xe4\xb8\xad\xe6\x96\x87"},
    {"bad \xff\xfe utf8 \xc3", "bad \xef\xbf\xbd\xef\xbf\xbd utf8 \xef\xbf\xbd"},
    {"<a href=\"https://ex.com/p\" rel=\"nofollow\"><span class=\"invisible\">https://</span><span "
     "class=\"ellipsis\">ex.com/very</span><span class=\"invisible\">long</span></a>",
     "https://ex.com/verylong"},
    {"<p><span class=\"h-card\"><a href=\"https://x/@bob\" class=\"u-url mention\">@<span>bob</span></a></span> hi "
     "<a href=\"https://x/tags/c\" class=\"mention hashtag\" rel=\"tag\">#<span>c</span></a></p>",
     "@bob hi #c"},
    {"a < b > c", "a < b > c"},
    {"1<2 and 3>2", "1<2 and 3>2"},
    {"<p>unclosed <a href=\"x", "unclosed"},
    {"<p>x</p", "x"},
    {"text <!-- a comment --> more <!-- never closed", "text more"},
    {"<<>>", "<<>>"},
    {"</p></p><p></p>text", "text"},
    {"<script>alert(1)</script>safe<style>p{}</style>", "safe"},
    {"<a title='a>b'>q</a>", "q"},
    {"<ul><li>one</li><li>two</li></ul>after", "one\ntwo\n\nafter"},
    {"<br><br>lead", "lead"},
    {"", ""},
    {"<p></p><p> </p>", ""},
};

START_TEST(test_html_to_text)
{
    const struct html_case *c = &html_cases[_i];
    char *t = text_of(c->html);
    ck_assert_msg(strcmp(t, c->text) == 0, "case %d: [%s] -> [%s], want [%s]", _i, c->html, t, c->text);
    ck_assert_int_ge(sl_utf8_count(t, strlen(t)), 0);
    free(t);
}
END_TEST

START_TEST(test_html_never_breaks)
{
    /* Random soup of the characters that matter: no crash, always valid UTF-8 without controls. */
    static const char alphabet[] = "<>&#;/ap \"'=x!-\n\r\xc3\xa9\xff\xe2\x80" "brp";
    unsigned seed = 12345;
    for (int round = 0; round < 3000; round++) {
        char html[96];
        size_t n = (size_t)(rand_r(&seed) % 95);
        for (size_t i = 0; i < n; i++)
            html[i] = alphabet[rand_r(&seed) % (sizeof(alphabet) - 1)];
        html[n] = '\0';
        sl_buf_t b = SL_BUF_INIT;
        sl_mastodon_html_to_text(html, n, 1000, &b);
        sl_buf_appends(&b, "");
        ck_assert_int_ge(sl_utf8_count(b.data, b.len), 0);
        for (size_t i = 0; i < b.len; i++)
            ck_assert((unsigned char)b.data[i] >= 0x20 || b.data[i] == '\n');
        sl_buf_free(&b);
    }
}
END_TEST

START_TEST(test_truncation_on_utf8_boundary)
{
    char src[4096], dst[SL_TEXT_MAX_CHARS * 4 + 1];
    size_t o = 0;
    /* 600 characters of mixed widths: the cut lands on every width in turn */
    static const char *glyphs[] = {"a", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x8c\x8a"};
    for (int i = 0; i < 600; i++) {
        const char *g = glyphs[i % 4];
        memcpy(src + o, g, strlen(g));
        o += strlen(g);
    }
    for (size_t max = 495; max <= 500; max++) {
        size_t n = sl_mastodon_cut(src, o, dst, sizeof(dst), max, 1, 0);
        ck_assert_int_eq(n, max);
        ck_assert_int_eq(sl_utf8_count(dst, strlen(dst)), (long)max);
        ck_assert_str_eq(dst + strlen(dst) - 3, "\xe2\x80\xa6");
    }
    /* exactly the limit: unchanged; no ellipsis when not asked */
    ck_assert_int_eq(sl_mastodon_cut(src, 10, dst, sizeof(dst), 500, 1, 0), 4);
    ck_assert_int_eq(memcmp(dst, src, 10), 0);
    ck_assert_int_eq(sl_mastodon_cut(src, o, dst, sizeof(dst), 64, 0, 0), 64);
    ck_assert_int_eq(sl_utf8_count(dst, strlen(dst)), 64);
    /* a small buffer cuts before a character that does not fit */
    char tiny[6];
    sl_mastodon_cut("\xf0\x9f\x8c\x8a\xf0\x9f\x8c\x8a", 8, tiny, sizeof(tiny), 10, 0, 0);
    ck_assert_str_eq(tiny, "\xf0\x9f\x8c\x8a");
    /* controls dropped on request */
    sl_mastodon_cut("a\tb\x01" "c\x7f", 6, tiny, sizeof(tiny), 10, 0, 1);
    ck_assert_str_eq(tiny, "abc");
}
END_TEST

/* ---- statuses --------------------------------------------------------------------------------- */

static json_t *status(const char *extra_json)
{
    char buf[4096];
    snprintf(buf, sizeof(buf),
             "{\"id\":\"109372843234\",\"uri\":\"https://remote.example/users/alice/statuses/9\","
             "\"url\":\"https://remote.example/@alice/9\",\"created_at\":\"2026-03-01T12:00:00.000Z\","
             "\"edited_at\":null,\"content\":\"<p>Hello &amp; welcome</p>\",\"spoiler_text\":\"\","
             "\"visibility\":\"public\",\"language\":\"en\","
             "\"account\":{\"id\":\"7\",\"username\":\"alice\",\"acct\":\"alice@remote.example\",\"display_name\":\"A\"}"
             "%s}",
             extra_json);
    json_t *o = json_loads(buf, 0, NULL);
    ck_assert_ptr_nonnull(o);
    return o;
}

/* The item survives the queue: encoded and decoded with sl_message's strict checks. */
static void assert_round_trip(const sl_message_t *m)
{
    sl_message_t back;
    sl_error_t err;
    size_t len;
    char *json = sl_message_to_json(m, &len);
    ck_assert_ptr_nonnull(json);
    ck_assert_msg(sl_message_from_json(json, len, &back, &err) == 0, "%s: %s", json, err.message);
    free(json);
    ck_assert_int_eq(back.type, m->type);
    ck_assert_str_eq(back.id, m->id);
    ck_assert_str_eq(back.channel, m->channel);
    ck_assert_str_eq(back.text, m->text);
    ck_assert_str_eq(back.url, m->url);
    ck_assert_str_eq(back.event_id, m->event_id);
    ck_assert_int_eq(back.edited_at_us, m->edited_at_us);
    ck_assert((back.meta == NULL) == (m->meta == NULL));
    if (m->meta != NULL)
        ck_assert_str_eq(back.meta, m->meta); /* canonical both ways */
    sl_message_clear(&back);
}

START_TEST(test_status_maps_to_message)
{
    sl_message_t m;
    char why[192], want[SL_UUID_STRLEN];
    json_t *st = status("");
    ck_assert_int_eq(sl_mastodon_status_to_message(st, INSTANCE, "mastodon", NULL, &m, why, sizeof(why)), SL_MASTODON_OK);
    ck_assert_int_eq(m.type, SL_MESSAGE_NEW);
    ck_assert_str_eq(m.author, "alice@remote.example");
    ck_assert_str_eq(m.text, "Hello & welcome");
    ck_assert_str_eq(m.source, "mastodon");
    ck_assert_str_eq(m.channel, "mastodon");
    ck_assert_str_eq(m.url, "https://remote.example/@alice/9");
    ck_assert_int_eq(m.edited_at_us, 0);
    int64_t t;
    sl_time_parse("2026-03-01T12:00:00Z", 20, &t);
    ck_assert_int_eq(m.created_at_us, t);
    /* the id: UUIDv5 of the status's canonical uri, pinned (the same post on any instance) */
    ck_assert_str_eq(m.id, "288a7521-fab8-583a-ad28-bb1987f5d2a0");
    const char *uri = "https://remote.example/users/alice/statuses/9";
    ck_assert_int_eq(sl_uuid_v5(SL_MASTODON_URI_NAMESPACE, uri, strlen(uri), want), 0);
    ck_assert_str_eq(m.id, want);
    /* the local key (the id before uris were used) is unchanged, pinned */
    ck_assert_int_eq(sl_mastodon_local_id(INSTANCE, "109372843234", want), 0);
    ck_assert_str_eq(want, "8db3ad78-9cff-5d8b-a4f6-d307f2123ac3");
    assert_round_trip(&m);
    sl_message_clear(&m);
    json_decref(st);
}
END_TEST

START_TEST(test_status_missing_optional_fields)
{
    sl_message_t m;
    char why[192];
    /* no url (null), no spoiler, no visibility, no language, no created_at, no acct: uri, now, username */
    json_t *st = json_pack("{s:s, s:s, s:n, s:s, s:{s:s}}", "id", "5", "uri", "https://r.example/s/5", "url", "content",
                           "<p>hi</p>", "account", "username", "bob");
    int64_t before = sl_time_now_us();
    ck_assert_int_eq(sl_mastodon_status_to_message(st, INSTANCE, "news", NULL, &m, why, sizeof(why)), SL_MASTODON_OK);
    ck_assert_str_eq(m.url, "https://r.example/s/5");
    ck_assert_str_eq(m.author, "bob");
    ck_assert_str_eq(m.channel, "news");
    ck_assert_int_ge(m.created_at_us, before);
    assert_round_trip(&m);
    sl_message_clear(&m);
    json_decref(st);
    /* only web links are stored: a url of another scheme gives way to the uri, or to nothing */
    static const struct {
        const char *url, *uri, *want;
    } links[] = {
        {"javascript:alert(1)", "https://r.example/s/7", "https://r.example/s/7"},
        {"JavaScript:alert(1)", NULL, ""},
        {"data:text/html,<script>x</script>", "vbscript:x", ""},
        {"HTTPS://R.example/s/8", NULL, "HTTPS://R.example/s/8"},
        {"http://r.example/s/9", NULL, "http://r.example/s/9"},
        {"https://", NULL, ""},
        {"ftp://r.example/x", "http://r.example/s/10", "http://r.example/s/10"},
    };
    for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
        json_t *l = json_pack("{s:s, s:s, s:s, s:{s:s}}", "id", "7", "url", links[i].url, "content", "<p>x</p>",
                              "account", "acct", "eve");
        if (links[i].uri != NULL)
            json_object_set_new(l, "uri", json_string(links[i].uri));
        ck_assert_int_eq(sl_mastodon_status_to_message(l, INSTANCE, "news", NULL, &m, why, sizeof(why)), SL_MASTODON_OK);
        ck_assert_msg(strcmp(m.url, links[i].want) == 0, "url %s, uri %s: stored '%s'", links[i].url,
                      links[i].uri ? links[i].uri : "(none)", m.url);
        sl_message_clear(&m);
        json_decref(l);
    }
    /* neither url nor uri: no url */
    st = json_pack("{s:s, s:s, s:{s:s}}", "id", "6", "content", "x", "account", "acct", "c");
    ck_assert_int_eq(sl_mastodon_status_to_message(st, INSTANCE, "news", NULL, &m, why, sizeof(why)), SL_MASTODON_OK);
    ck_assert_str_eq(m.url, "");
    assert_round_trip(&m);
    sl_message_clear(&m);
    json_decref(st);
}
END_TEST

START_TEST(test_status_author_and_text_are_made_valid)
{
    sl_message_t m;
    char why[192], acct[200], content[6000];
    memset(acct, 'n', 100);
    memcpy(acct, "a\x01\x1b\x7f", 4);
    acct[100] = '\0';
    json_t *st = status(",\"spoiler_text\":\"spoilers!\"");
    json_object_set_new(json_object_get(st, "account"), "acct", json_string(acct));
    size_t o = 0;
    o += (size_t)sprintf(content + o, "<p>");
    for (int i = 0; i < 700; i++)
        o += (size_t)sprintf(content + o, "\xc3\xa9");
    sprintf(content + o, "</p>");
    json_object_set_new(st, "content", json_string(content));
    ck_assert_int_eq(sl_mastodon_status_to_message(st, INSTANCE, "mastodon", NULL, &m, why, sizeof(why)), SL_MASTODON_OK);
    ck_assert_int_eq(sl_utf8_count(m.author, strlen(m.author)), 64);
    ck_assert_int_eq(m.author[0], 'a');
    ck_assert_int_eq(m.author[1], 'n');
    ck_assert_int_eq(sl_utf8_count(m.text, strlen(m.text)), SL_TEXT_MAX_CHARS);
    ck_assert_int_eq(strncmp(m.text, "CW: spoilers!\n\n\xc3\xa9", 17), 0);
    ck_assert_str_eq(m.text + strlen(m.text) - 3, "\xe2\x80\xa6");
    assert_round_trip(&m); /* passes the queue's validation */
    sl_message_clear(&m);
    json_decref(st);
}
END_TEST

START_TEST(test_status_skips_and_refusals)
{
    sl_message_t m;
    char why[192];
    json_t *st = status(",\"content\":\"<p> </p>\"");
    json_object_set_new(st, "content", json_string("<p> <br> </p>"));
    ck_assert_int_eq(sl_mastodon_status_to_message(st, INSTANCE, "c", NULL, &m, why, sizeof(why)), SL_MASTODON_SKIP);
    ck_assert_ptr_nonnull(strstr(why, "no text"));
    json_object_set_new(st, "content", json_string("<p>x</p>"));
    json_object_set_new(st, "visibility", json_string("direct"));
    ck_assert_int_eq(sl_mastodon_status_to_message(st, INSTANCE, "c", NULL, &m, why, sizeof(why)), SL_MASTODON_SKIP);
    json_object_set_new(st, "visibility", json_string("public"));
    json_object_set_new(st, "reblog", json_object());
    ck_assert_int_eq(sl_mastodon_status_to_message(st, INSTANCE, "c", NULL, &m, why, sizeof(why)), SL_MASTODON_SKIP);
    json_object_set_new(st, "reblog", json_null());
    json_object_set_new(st, "id", json_integer(5));
    ck_assert_int_eq(sl_mastodon_status_to_message(st, INSTANCE, "c", NULL, &m, why, sizeof(why)), SL_MASTODON_INVALID);
    json_object_set_new(st, "id", json_string("5"));
    json_object_del(st, "account");
    ck_assert_int_eq(sl_mastodon_status_to_message(st, INSTANCE, "c", NULL, &m, why, sizeof(why)), SL_MASTODON_INVALID);
    json_decref(st);
    json_t *arr = json_array();
    ck_assert_int_eq(sl_mastodon_status_to_message(arr, INSTANCE, "c", NULL, &m, why, sizeof(why)), SL_MASTODON_INVALID);
    json_decref(arr);
    ck_assert_int_eq(sl_mastodon_stream_event("update", "{not json", 9, INSTANCE, "c", NULL, &m, why, sizeof(why)),
                     SL_MASTODON_INVALID);
    ck_assert_int_eq(sl_mastodon_stream_event("notification", "{}", 2, INSTANCE, "c", NULL, &m, why, sizeof(why)),
                     SL_MASTODON_SKIP);
    ck_assert_int_eq(sl_mastodon_stream_event("delete", "", 0, INSTANCE, "c", NULL, &m, why, sizeof(why)), SL_MASTODON_INVALID);
    ck_assert_int_eq(sl_mastodon_stream_event("delete", "1/../2", 6, INSTANCE, "c", NULL, &m, why, sizeof(why)),
                     SL_MASTODON_INVALID);
}
END_TEST

/* What readers of a wall expect beside the text, in meta: only http(s) links, every string capped,
 * plain text without control characters, at most 8 attachments. */
START_TEST(test_status_meta)
{
    sl_message_t m;
    char why[192], name[300], desc[3000];
    sl_error_t err;
    json_t *st = status(",\"spoiler_text\":\"birds\",\"sensitive\":true,\"language\":\"en-GB\"");
    json_t *account = json_object_get(st, "account");
    json_object_set_new(account, "display_name", json_string("Alice \xf0\x9f\x90\xa6\n<b>not html</b>"));
    json_object_set_new(account, "avatar", json_string("https://remote.example/avatars/a.png"));
    json_object_set_new(account, "url", json_string("https://remote.example/@alice"));
    json_t *media = json_array();
    json_array_append_new(media, json_pack("{s:s, s:s, s:s, s:s}", "type", "image", "url", "https://files.example/1.png",
                                           "preview_url", "https://files.example/1s.png", "description",
                                           "A bird\non a branch\x01"));
    /* no copy on the instance: the original's address */
    json_array_append_new(media, json_pack("{s:s, s:n, s:s, s:n, s:n}", "type", "video", "url", "remote_url",
                                           "https://far.example/2.mp4", "preview_url", "description"));
    json_array_append_new(media, json_pack("{s:s, s:s}", "type", "image", "url", "javascript:alert(1)")); /* dropped */
    json_array_append_new(media, json_pack("{s:s, s:s, s:s}", "type", "hologram", "url", "http://files.example/3",
                                           "preview_url", "data:image/png;base64,AAAA"));
    for (int i = 0; i < 10; i++)
        json_array_append_new(media, json_pack("{s:s, s:s}", "type", "image", "url", "https://files.example/n.png"));
    json_object_set_new(st, "media_attachments", media);
    ck_assert_int_eq(sl_mastodon_status_to_message(st, INSTANCE, "mastodon", NULL, &m, why, sizeof(why)),
                     SL_MASTODON_OK);
    ck_assert_ptr_nonnull(m.meta);
    json_t *meta = json_loads(m.meta, 0, NULL);
    ck_assert_int_eq(sl_meta_check(meta, &err), 0); /* what the persister checks */
    ck_assert_str_eq(json_string_value(json_object_get(meta, "display_name")), "Alice \xf0\x9f\x90\xa6 <b>not html</b>");
    ck_assert_str_eq(json_string_value(json_object_get(meta, "avatar")), "https://remote.example/avatars/a.png");
    ck_assert_str_eq(json_string_value(json_object_get(meta, "account_url")), "https://remote.example/@alice");
    ck_assert_str_eq(json_string_value(json_object_get(meta, "url")), "https://remote.example/@alice/9");
    ck_assert_str_eq(json_string_value(json_object_get(meta, "language")), "en-GB");
    ck_assert_str_eq(json_string_value(json_object_get(meta, "spoiler_text")), "birds");
    ck_assert(json_is_true(json_object_get(meta, "sensitive")));
    ck_assert_ptr_null(json_object_get(meta, "reblog"));
    json_t *mm = json_object_get(meta, "media");
    ck_assert_int_eq(json_array_size(mm), SL_META_MEDIA_MAX);
    json_t *m0 = json_array_get(mm, 0), *m1 = json_array_get(mm, 1), *m2 = json_array_get(mm, 2);
    ck_assert_str_eq(json_string_value(json_object_get(m0, "type")), "image");
    ck_assert_str_eq(json_string_value(json_object_get(m0, "url")), "https://files.example/1.png");
    ck_assert_str_eq(json_string_value(json_object_get(m0, "preview_url")), "https://files.example/1s.png");
    ck_assert_str_eq(json_string_value(json_object_get(m0, "description")), "A bird on a branch");
    ck_assert_str_eq(json_string_value(json_object_get(m1, "type")), "video");
    ck_assert_str_eq(json_string_value(json_object_get(m1, "url")), "https://far.example/2.mp4");
    ck_assert_ptr_null(json_object_get(m1, "preview_url"));
    ck_assert_ptr_null(json_object_get(m1, "description"));
    ck_assert_str_eq(json_string_value(json_object_get(m2, "type")), "unknown");
    ck_assert_str_eq(json_string_value(json_object_get(m2, "url")), "http://files.example/3");
    ck_assert_ptr_null(json_object_get(m2, "preview_url"));
    ck_assert_ptr_null(strstr(m.meta, "javascript:"));
    ck_assert_ptr_null(strstr(m.meta, "data:"));
    /* the content warning in meta is the one the text starts with */
    ck_assert_int_eq(strncmp(m.text, "CW: birds\n\n", 11), 0);
    json_decref(meta);
    assert_round_trip(&m);
    sl_message_clear(&m);

    /* oversized strings are cut (with an ellipsis), links past 1024 bytes and bad ones dropped */
    memset(name, 'n', 200);
    name[200] = '\0';
    char *d = desc;
    for (int i = 0; i < 900; i++)
        d += sprintf(d, "\xc3\xa9");
    char long_url[1200] = "https://files.example/";
    memset(long_url + 22, 'x', 1100);
    long_url[1122] = '\0';
    json_object_set_new(account, "display_name", json_string(name));
    json_object_set_new(account, "avatar", json_string(long_url));
    json_object_set_new(account, "url", json_string("javascript:alert(document.cookie)"));
    json_object_set_new(st, "url", json_string("JAVASCRIPT:alert(1)"));
    json_object_set_new(st, "language", json_string("en\"><script>"));
    json_object_set_new(st, "spoiler_text", json_string(desc));
    json_object_set_new(st, "sensitive", json_false());
    json_object_set_new(st, "media_attachments",
                        json_pack("[{s:s, s:s, s:s}]", "type", "image", "url", "https://files.example/1.png",
                                  "description", desc));
    ck_assert_int_eq(sl_mastodon_status_to_message(st, INSTANCE, "mastodon", NULL, &m, why, sizeof(why)),
                     SL_MASTODON_OK);
    meta = json_loads(m.meta, 0, NULL);
    ck_assert_int_eq(sl_meta_check(meta, &err), 0);
    const char *dn = json_string_value(json_object_get(meta, "display_name"));
    ck_assert_int_eq(sl_utf8_count(dn, strlen(dn)), SL_META_NAME_MAX);
    ck_assert_str_eq(dn + strlen(dn) - 3, "\xe2\x80\xa6");
    ck_assert_ptr_null(json_object_get(meta, "avatar"));
    ck_assert_ptr_null(json_object_get(meta, "account_url"));
    ck_assert_ptr_null(json_object_get(meta, "url"));
    ck_assert_ptr_null(json_object_get(meta, "language"));
    ck_assert_ptr_null(json_object_get(meta, "sensitive"));
    const char *sp = json_string_value(json_object_get(meta, "spoiler_text"));
    ck_assert_int_eq(sl_utf8_count(sp, strlen(sp)), SL_TEXT_MAX_CHARS);
    const char *ds = json_string_value(json_object_get(json_array_get(json_object_get(meta, "media"), 0), "description"));
    ck_assert_int_eq(sl_utf8_count(ds, strlen(ds)), SL_META_DESCRIPTION_MAX);
    ck_assert_str_eq(m.url, "https://remote.example/users/alice/statuses/9"); /* the uri, the url being no link */
    json_decref(meta);
    sl_message_clear(&m);

    /* nothing to say: no meta */
    json_t *bare = json_pack("{s:s, s:s, s:{s:s}}", "id", "8", "content", "<p>x</p>", "account", "acct", "z");
    ck_assert_int_eq(sl_mastodon_status_to_message(bare, INSTANCE, "mastodon", NULL, &m, why, sizeof(why)),
                     SL_MASTODON_OK);
    ck_assert_ptr_null(m.meta);
    json_decref(bare);

    /* a boost: the booster's name and avatar, the boosted status's page, media and warning, and its
     * author in meta.reblog */
    json_t *orig = json_deep_copy(st);
    json_object_set_new(orig, "url", json_string("https://remote.example/@alice/9"));
    json_object_set_new(json_object_get(orig, "account"), "display_name", json_string("Alice"));
    json_object_set_new(json_object_get(orig, "account"), "avatar", json_string("https://remote.example/a.png"));
    json_object_set_new(json_object_get(orig, "account"), "url", json_string("https://remote.example/@alice"));
    json_t *boost = json_pack("{s:s, s:s, s:s, s:s, s:{s:s, s:s, s:s, s:s}, s:O}", "id", "300", "uri",
                              "https://mastodon.example/users/bob/statuses/300/activity", "content", "", "visibility",
                              "public", "account", "acct", "bob", "display_name", "Bob", "avatar",
                              "https://mastodon.example/b.png", "url", "https://mastodon.example/@bob", "reblog", orig);
    ck_assert_int_eq(sl_mastodon_status_to_message(boost, INSTANCE, "mastodon", NULL, &m, why, sizeof(why)),
                     SL_MASTODON_OK);
    meta = json_loads(m.meta, 0, NULL);
    ck_assert_int_eq(sl_meta_check(meta, &err), 0);
    ck_assert_str_eq(json_string_value(json_object_get(meta, "display_name")), "Bob");
    ck_assert_str_eq(json_string_value(json_object_get(meta, "avatar")), "https://mastodon.example/b.png");
    ck_assert_str_eq(json_string_value(json_object_get(meta, "url")), "https://remote.example/@alice/9");
    ck_assert_int_eq(json_array_size(json_object_get(meta, "media")), 1);
    json_t *rb = json_object_get(meta, "reblog");
    ck_assert_str_eq(json_string_value(json_object_get(rb, "acct")), "alice@remote.example");
    ck_assert_str_eq(json_string_value(json_object_get(rb, "display_name")), "Alice");
    ck_assert_str_eq(json_string_value(json_object_get(rb, "avatar")), "https://remote.example/a.png");
    ck_assert_str_eq(json_string_value(json_object_get(rb, "account_url")), "https://remote.example/@alice");
    ck_assert_str_eq(json_string_value(json_object_get(rb, "url")), "https://remote.example/@alice/9");
    ck_assert_str_eq(m.author, "bob");
    json_decref(meta);
    assert_round_trip(&m);
    sl_message_clear(&m);
    json_decref(boost);
    json_decref(orig);
    json_decref(st);
}
END_TEST

START_TEST(test_stream_events_map_to_items)
{
    sl_message_t post, edit, del, again;
    char why[192], *json, local[SL_UUID_STRLEN];
    sl_mastodon_ids_t *ids = sl_mastodon_ids_create(16);
    ck_assert_ptr_nonnull(ids);
    json_t *st = status(",\"edited_at\":\"2026-03-02T10:00:00.000Z\"");
    json_object_set_new(st, "content", json_string("<p>Hello, edited</p>"));
    json = json_dumps(st, JSON_COMPACT);
    json_t *orig = status("");
    char *orig_json = json_dumps(orig, JSON_COMPACT);
    ck_assert_int_eq(sl_mastodon_stream_event("update", orig_json, strlen(orig_json), INSTANCE, "mastodon", ids, &post,
                                              why, sizeof(why)),
                     SL_MASTODON_OK);
    ck_assert_int_eq(sl_mastodon_stream_event("status.update", json, strlen(json), INSTANCE, "mastodon", ids, &edit, why,
                                              sizeof(why)),
                     SL_MASTODON_OK);
    ck_assert_int_eq(
        sl_mastodon_stream_event("delete", "109372843234", 12, INSTANCE, "mastodon", ids, &del, why, sizeof(why)),
        SL_MASTODON_OK);
    /* one post, one id: the edit and the delete (through what the source remembers) name the
     * message the post became */
    ck_assert_str_eq(post.id, "288a7521-fab8-583a-ad28-bb1987f5d2a0");
    ck_assert_str_eq(edit.id, post.id);
    ck_assert_str_eq(del.id, post.id);
    ck_assert_int_eq(edit.type, SL_MESSAGE_UPDATE);
    ck_assert_str_eq(edit.text, "Hello, edited");
    int64_t t;
    sl_time_parse("2026-03-02T10:00:00Z", 20, &t);
    ck_assert_int_eq(edit.edited_at_us, t);
    ck_assert_str_eq(edit.event_id, "a13409d8-174d-5635-bebb-5892a12b2378");
    ck_assert_int_eq(del.type, SL_MESSAGE_DELETE);
    ck_assert_str_eq(del.event_id, "0aa8b229-f179-5054-ac86-b82254e3a23d");
    assert_round_trip(&edit);
    assert_round_trip(&del);
    /* deterministic: the same event again (a replay after reconnecting) gives the same ids */
    ck_assert_int_eq(sl_mastodon_stream_event("status.update", json, strlen(json), INSTANCE, "mastodon", ids, &again,
                                              why, sizeof(why)),
                     SL_MASTODON_OK);
    ck_assert_str_eq(again.event_id, edit.event_id);
    sl_message_clear(&again);
    ck_assert_int_eq(sl_mastodon_stream_event("delete", " \"109372843234\"\n", 16, INSTANCE, "mastodon", ids, &again,
                                              why, sizeof(why)),
                     SL_MASTODON_OK);
    ck_assert_str_eq(again.event_id, del.event_id);
    /* the same post read from another instance (its own local id): the same message, and its
     * deletion there finds it too */
    json_object_set_new(orig, "id", json_string("55"));
    free(orig_json);
    orig_json = json_dumps(orig, JSON_COMPACT);
    ck_assert_int_eq(sl_mastodon_stream_event("update", orig_json, strlen(orig_json), "https://other.example", "mastodon",
                                              ids, &again, why, sizeof(why)),
                     SL_MASTODON_OK);
    ck_assert_str_eq(again.id, post.id);
    sl_message_clear(&again);
    ck_assert_int_eq(
        sl_mastodon_stream_event("delete", "55", 2, "https://other.example", "mastodon", ids, &again, why, sizeof(why)),
        SL_MASTODON_OK);
    ck_assert_str_eq(again.id, post.id);
    ck_assert_str_eq(again.event_id, del.event_id); /* one deletion, whoever reports it */
    /* a deletion nothing remembers names the local key (the id of posts stored before uris were used) */
    ck_assert_int_eq(sl_mastodon_stream_event("delete", "109372843234", 12, INSTANCE, "mastodon", NULL, &again, why,
                                              sizeof(why)),
                     SL_MASTODON_OK);
    ck_assert_str_eq(again.id, "8db3ad78-9cff-5d8b-a4f6-d307f2123ac3");
    ck_assert_int_eq(sl_mastodon_stream_event("delete", "109372843234", 12, "https://other.example", "mastodon", ids,
                                              &again, why, sizeof(why)),
                     SL_MASTODON_OK);
    ck_assert_int_eq(sl_mastodon_local_id("https://other.example", "109372843234", local), 0);
    ck_assert_str_eq(again.id, local);
    /* a status without a usable uri keeps its local key */
    json_object_set_new(orig, "uri", json_string("bad\nuri"));
    ck_assert_int_eq(sl_mastodon_status_to_message(orig, INSTANCE, "mastodon", NULL, &again, why, sizeof(why)),
                     SL_MASTODON_OK);
    ck_assert_int_eq(sl_mastodon_local_id(INSTANCE, "55", local), 0);
    ck_assert_str_eq(again.id, local);
    sl_message_clear(&again);
    sl_message_clear(&post);
    sl_message_clear(&edit);
    free(json);
    free(orig_json);
    json_decref(st);
    json_decref(orig);
    sl_mastodon_ids_destroy(ids);
}
END_TEST

/* A boost is the booster's message showing the boosted status; boosts of one status are messages
 * of their own, and so is the status itself. */
START_TEST(test_boost_maps_to_its_own_message)
{
    sl_message_t m, orig_m;
    char why[192], want[SL_UUID_STRLEN];
    json_t *orig = status(",\"spoiler_text\":\"cats\"");
    ck_assert_int_eq(sl_mastodon_status_to_message(orig, INSTANCE, "mastodon", NULL, &orig_m, why, sizeof(why)),
                     SL_MASTODON_OK);
    json_t *boost = json_pack("{s:s, s:s, s:n, s:s, s:s, s:s, s:s, s:{s:s, s:s}, s:O}", "id", "200", "uri",
                              "https://mastodon.example/users/bob/statuses/200/activity", "url", "created_at",
                              "2026-03-03T08:00:00.000Z", "content", "", "spoiler_text", "", "visibility", "public",
                              "account", "acct", "bob", "display_name", "Bob", "reblog", orig);
    ck_assert_int_eq(sl_mastodon_status_to_message(boost, INSTANCE, "mastodon", NULL, &m, why, sizeof(why)),
                     SL_MASTODON_OK);
    const char *uri = "https://mastodon.example/users/bob/statuses/200/activity";
    ck_assert_int_eq(sl_uuid_v5(SL_MASTODON_URI_NAMESPACE, uri, strlen(uri), want), 0);
    ck_assert_str_eq(m.id, want);
    ck_assert_str_ne(m.id, orig_m.id);
    ck_assert_str_eq(m.author, "bob");                                /* the booster */
    ck_assert_str_eq(m.text, "CW: cats\n\nHello & welcome");           /* what was boosted */
    ck_assert_str_eq(m.url, "https://remote.example/@alice/9");       /* the boosted post */
    int64_t t;
    sl_time_parse("2026-03-03T08:00:00Z", 20, &t);
    ck_assert_int_eq(m.created_at_us, t); /* when it was boosted */
    assert_round_trip(&m);
    sl_message_clear(&m);
    sl_message_clear(&orig_m);
    /* a boost of a status that is not public is skipped; a reblog that is no object is refused */
    json_object_set_new(orig, "visibility", json_string("private"));
    ck_assert_int_eq(sl_mastodon_status_to_message(boost, INSTANCE, "mastodon", NULL, &m, why, sizeof(why)),
                     SL_MASTODON_SKIP);
    json_object_set_new(boost, "reblog", json_string("x"));
    ck_assert_int_eq(sl_mastodon_status_to_message(boost, INSTANCE, "mastodon", NULL, &m, why, sizeof(why)),
                     SL_MASTODON_INVALID);
    json_decref(boost);
    json_decref(orig);
}
END_TEST

/* What a source remembers is bounded, and the oldest entry of a full set gives way. */
START_TEST(test_ids_memory_is_bounded)
{
    sl_mastodon_ids_t *ids = sl_mastodon_ids_create(64);
    char local[SL_UUID_STRLEN], id[SL_UUID_STRLEN], got[SL_UUID_STRLEN], sid[16];
    int found = 0;
    ck_assert_ptr_nonnull(ids);
    for (int i = 0; i < 1000; i++) {
        snprintf(sid, sizeof(sid), "%d", i);
        ck_assert_int_eq(sl_mastodon_local_id(INSTANCE, sid, local), 0);
        ck_assert_int_eq(sl_mastodon_uri_id(sid, strlen(sid), id), 0);
        sl_mastodon_ids_put(ids, local, id);
    }
    for (int i = 0; i < 1000; i++) {
        snprintf(sid, sizeof(sid), "%d", i);
        ck_assert_int_eq(sl_mastodon_local_id(INSTANCE, sid, local), 0);
        ck_assert_int_eq(sl_mastodon_uri_id(sid, strlen(sid), id), 0);
        if (sl_mastodon_ids_get(ids, local, got)) {
            ck_assert_str_eq(got, id); /* never a wrong answer */
            found++;
        }
    }
    ck_assert_int_le(found, 64);
    ck_assert_int_ge(found, 32); /* most of the room is used */
    /* the newest is always there; putting a key again updates it */
    ck_assert(sl_mastodon_ids_get(ids, local, got));
    sl_mastodon_ids_put(ids, local, "00000000-0000-5000-8000-000000000000");
    ck_assert(sl_mastodon_ids_get(ids, local, got));
    ck_assert_str_eq(got, "00000000-0000-5000-8000-000000000000");
    ck_assert(!sl_mastodon_ids_get(ids, "not a uuid", got));
    ck_assert_int_eq(sl_mastodon_uri_id("", 0, id), -1);
    ck_assert_int_eq(sl_mastodon_uri_id("a\tb", 3, id), -1);
    sl_mastodon_ids_destroy(ids);
}
END_TEST

START_TEST(test_event_payloads_decode_strictly)
{
    sl_message_t m;
    sl_error_t err;
    /* a payload from before url/type existed */
    const char *old = "{\"id\":\"0190f5f0-0000-7000-8000-000000000000\",\"channel\":\"a\",\"author\":\"b\",\"text\":\"c\","
                      "\"source\":\"api\",\"created_at\":\"2026-01-01T00:00:00Z\"}";
    ck_assert_int_eq(sl_message_from_json(old, strlen(old), &m, &err), 0);
    ck_assert_int_eq(m.type, SL_MESSAGE_NEW);
    ck_assert_str_eq(m.url, "");
    /* an event without event_id gets the derived one */
    const char *del = "{\"type\":\"delete\",\"id\":\"8db3ad78-9cff-5d8b-a4f6-d307f2123ac3\",\"channel\":\"mastodon\"}";
    ck_assert_int_eq(sl_message_from_json(del, strlen(del), &m, &err), 0);
    ck_assert_str_eq(m.event_id, "8af8c16c-1861-5557-a232-6b40f55a4833");
    const char *bad[] = {
        "{\"type\":\"erase\",\"id\":\"8db3ad78-9cff-5d8b-a4f6-d307f2123ac3\",\"channel\":\"m\"}",
        "{\"type\":\"update\",\"id\":\"8db3ad78-9cff-5d8b-a4f6-d307f2123ac3\",\"channel\":\"m\",\"text\":\"t\"}",
        "{\"type\":\"update\",\"id\":\"8db3ad78-9cff-5d8b-a4f6-d307f2123ac3\",\"channel\":\"m\","
        "\"edited_at\":\"2026-01-01T00:00:00Z\"}",
        "{\"type\":\"delete\",\"id\":\"nope\",\"channel\":\"m\"}",
        "{\"type\":\"delete\",\"id\":\"8db3ad78-9cff-5d8b-a4f6-d307f2123ac3\",\"channel\":\"Bad\"}",
        "{\"id\":\"0190f5f0-0000-7000-8000-000000000000\",\"channel\":\"a\",\"author\":\"b\",\"text\":\"c\","
        "\"source\":\"api\",\"created_at\":\"2026-01-01T00:00:00Z\",\"url\":\"a\\nb\"}",
        "{\"id\":\"0190f5f0-0000-7000-8000-000000000000\",\"channel\":\"a\",\"author\":\"b\",\"text\":\"c\","
        "\"source\":\"api\",\"created_at\":\"2026-01-01T00:00:00Z\",\"edited_at\":\"soon\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(sl_message_from_json(bad[i], strlen(bad[i]), &m, &err) == -1, "case %zu decoded", i);
    /* the live form of an event */
    sl_message_t ev;
    memset(&ev, 0, sizeof(ev));
    ev.type = SL_MESSAGE_DELETE;
    strcpy(ev.id, "8db3ad78-9cff-5d8b-a4f6-d307f2123ac3");
    strcpy(ev.channel, "mastodon");
    ck_assert_int_eq(sl_message_event_id(&ev, ev.event_id), 0);
    ev.created_at_us = 1795000000000000LL;
    ev.seq = 12;
    char *json = sl_message_to_json(&ev, NULL);
    ck_assert_str_eq(json, "{\"type\":\"delete\",\"id\":\"8db3ad78-9cff-5d8b-a4f6-d307f2123ac3\",\"channel\":\"mastodon\","
                           "\"event_id\":\"8af8c16c-1861-5557-a232-6b40f55a4833\",\"created_at\":\"2026-11-18T11:06:40.000000Z\","
                           "\"seq\":12}");
    free(json);
}
END_TEST

/* ---- sources ------------------------------------------------------------------------------------ */

START_TEST(test_sources_parse)
{
    sl_ingest_source_t src[SL_INGEST_MAX_SOURCES];
    size_t n;
    char err[512];
    /* one source, as before */
    ck_assert_int_eq(sl_ingest_sources_parse("https://A.example/", NULL, "tok", src, &n, err, sizeof(err)), 0);
    ck_assert_int_eq(n, 1);
    ck_assert_str_eq(src[0].instance, "https://a.example");
    ck_assert_str_eq(src[0].stream, "public");
    ck_assert_str_eq(src[0].token, "tok");
    /* several: one stream for all, tokens per source (empty: none); one instance twice, two streams */
    ck_assert_int_eq(sl_ingest_sources_parse(" https://a.example , https://b.example,https://a.example", "public",
                                             "ta,,ta2", src, &n, err, sizeof(err)),
                     -1); /* a.example public twice */
    ck_assert_ptr_nonnull(strstr(err, "the same"));
    ck_assert_int_eq(sl_ingest_sources_parse(" https://a.example , https://b.example,https://a.example",
                                             "public,public:local,hashtag:cats", "ta,,ta2", src, &n, err, sizeof(err)),
                     0);
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(src[1].instance, "https://b.example");
    ck_assert_str_eq(src[1].stream, "public:local");
    ck_assert_str_eq(src[1].token, "");
    ck_assert_str_eq(src[2].stream, "hashtag:cats");
    ck_assert_str_eq(src[2].token, "ta2");
    /* one token for two streams of one instance is fine; for two instances it would leak */
    ck_assert_int_eq(
        sl_ingest_sources_parse("https://a.example,https://a.example", "public,hashtag:x", "t", src, &n, err, sizeof(err)),
        0);
    ck_assert_str_eq(src[1].token, "t");
    ck_assert_int_eq(sl_ingest_sources_parse("https://a.example,https://b.example", NULL, "t", src, &n, err, sizeof(err)),
                     -1);
    ck_assert_ptr_nonnull(strstr(err, "one token per source"));
    ck_assert_ptr_null(strstr(err, "t\"")); /* never the token itself */
    static const struct {
        const char *urls, *streams, *tokens, *want;
    } bad[] = {
        {"", NULL, NULL, "names no instance"},
        {"https://a.example,", NULL, NULL, "entry 2 of 2"},
        {"https://a.example,ftp://b.example", NULL, NULL, "entry 2 of 2"},
        {"https://a.example,https://b.example", "public,public,public", NULL, "3 streams for 2 sources"},
        {"https://a.example,https://b.example", "public,user", NULL, "STREAM entry 2"},
        {"https://a.example,https://b.example", NULL, "a,b,c", "3 tokens for 2 sources"},
        {"https://1.example,https://2.example,https://3.example,https://4.example,https://5.example,https://6.example,"
         "https://7.example,https://8.example,https://9.example,https://10.example,https://11.example,"
         "https://12.example,https://13.example,https://14.example,https://15.example,https://16.example,"
         "https://17.example",
         NULL, NULL, "at most 16"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        ck_assert_int_eq(sl_ingest_sources_parse(bad[i].urls, bad[i].streams, bad[i].tokens, src, &n, err, sizeof(err)),
                         -1);
        ck_assert_msg(strstr(err, bad[i].want) != NULL, "case %zu: %s", i, err);
    }
}
END_TEST

/* ---- streams, discovery, headers -------------------------------------------------------------- */

START_TEST(test_streams_and_paths)
{
    char out[512];
    ck_assert(sl_mastodon_stream_valid("public"));
    ck_assert(sl_mastodon_stream_valid("public:local"));
    ck_assert(sl_mastodon_stream_valid("hashtag:caf\xc3\xa9"));
    ck_assert(!sl_mastodon_stream_valid("hashtag:"));
    ck_assert(!sl_mastodon_stream_valid("hashtag:a b"));
    ck_assert(!sl_mastodon_stream_valid("user"));
    ck_assert_int_eq(sl_mastodon_stream_path("public", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "/api/v1/streaming/public");
    ck_assert_int_eq(sl_mastodon_stream_path("public:local", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "/api/v1/streaming/public/local");
    ck_assert_int_eq(sl_mastodon_stream_path("hashtag:#caf\xc3\xa9", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "/api/v1/streaming/hashtag?tag=caf%C3%A9");
    ck_assert_int_eq(sl_mastodon_timeline_path("public", 40, out, sizeof(out)), 0);
    ck_assert_str_eq(out, "/api/v1/timelines/public?limit=40");
    ck_assert_int_eq(sl_mastodon_timeline_path("public:local", 40, out, sizeof(out)), 0);
    ck_assert_str_eq(out, "/api/v1/timelines/public?local=true&limit=40");
    ck_assert_int_eq(sl_mastodon_timeline_path("hashtag:cats", 20, out, sizeof(out)), 0);
    ck_assert_str_eq(out, "/api/v1/timelines/tag/cats?limit=20");

    ck_assert_int_eq(sl_mastodon_instance_norm("HTTPS://Mastodon.Social/", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "https://mastodon.social");
    ck_assert_int_eq(sl_mastodon_instance_norm("http://127.0.0.1:3000/Sub//", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "http://127.0.0.1:3000/Sub");
    ck_assert_int_eq(sl_mastodon_instance_norm("mastodon.social", out, sizeof(out)), -1);
    ck_assert_int_eq(sl_mastodon_instance_norm("https://", out, sizeof(out)), -1);
    ck_assert_int_eq(sl_mastodon_instance_norm("https://x/?a", out, sizeof(out)), -1);

    json_t *v2 = json_loads("{\"configuration\":{\"urls\":{\"streaming\":\"wss://streaming.example/\"}}}", 0, NULL);
    json_t *v1 = json_loads("{\"urls\":{\"streaming_api\":\"ws://127.0.0.1:4000\"}}", 0, NULL);
    json_t *none = json_loads("{\"urls\":{}}", 0, NULL);
    ck_assert_int_eq(sl_mastodon_streaming_base(v2, out, sizeof(out)), 0);
    ck_assert_str_eq(out, "https://streaming.example");
    ck_assert_int_eq(sl_mastodon_streaming_base(v1, out, sizeof(out)), 0);
    ck_assert_str_eq(out, "http://127.0.0.1:4000");
    ck_assert_int_eq(sl_mastodon_streaming_base(none, out, sizeof(out)), -1);
    json_decref(v2);
    json_decref(v1);
    json_decref(none);

    ck_assert_int_lt(sl_mastodon_id_cmp("99", "100"), 0);
    ck_assert_int_gt(sl_mastodon_id_cmp("109372843235", "109372843234"), 0);
    ck_assert_int_eq(sl_mastodon_id_cmp("7", "7"), 0);
}
END_TEST

/* A timeline page: what comes after since_id, oldest first, once each; an id that would change
 * the next page's URL (min_id=<id>) is not a status id. */
START_TEST(test_page_after)
{
    json_error_t e;
    json_t *page = json_loads("[{\"id\":\"12\"},{\"id\":\"9\"},{\"id\":\"110\"},{\"id\":\"12\"},"
                              "{\"id\":\"13&local=false\"},{\"id\":\"14 15\"},{\"id\":14},{},7,"
                              "{\"id\":\"9zZ-_.~\"},{\"id\":\"\"}]",
                              0, &e);
    ck_assert_ptr_nonnull(page);
    json_t *out[16];
    size_t n = sl_mastodon_page_after(page, "", out);
    const char *all[] = {"9", "12", "110", "9zZ-_.~"};
    ck_assert_uint_eq(n, 4);
    for (size_t i = 0; i < n; i++)
        ck_assert_str_eq(json_string_value(json_object_get(out[i], "id")), all[i]);
    n = sl_mastodon_page_after(page, "12", out);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(json_string_value(json_object_get(out[0], "id")), "110");
    ck_assert_int_eq(sl_mastodon_id_valid("13&local=false", 14), 0);
    ck_assert_int_eq(sl_mastodon_id_valid("109372843235", 12), 1);
    json_decref(page);
}
END_TEST

static long long wait_after(long status, const char *const *headers, int64_t now_us)
{
    sl_mastodon_rate_t rl;
    sl_mastodon_rate_init(&rl);
    for (; *headers != NULL; headers++) {
        const char *colon = strchr(*headers, ':');
        sl_mastodon_rate_header(&rl, *headers, (size_t)(colon - *headers), colon + 2, strlen(colon + 2));
    }
    return sl_mastodon_rate_wait_ms(&rl, status, now_us);
}

/* Rate-limit headers are the instance's to choose: whatever they say, a wait from 0 to 15 min. */
START_TEST(test_rate_limit_wait)
{
    int64_t now;
    ck_assert_int_eq(sl_time_parse("2026-12-04T12:00:00Z", 20, &now), 0);
    const char *none[] = {NULL};
    const char *retry[] = {"Retry-After: 30", NULL};
    const char *huge[] = {"retry-after: 9999999999999999999", NULL};           /* was LLONG_MAX * 1000 */
    const char *date[] = {"Retry-After: Fri, 04 Dec 2026 12:01:00 GMT", NULL}; /* was 0: at once */
    const char *reset[] = {"X-RateLimit-Remaining: 0", "X-RateLimit-Reset: 2026-12-04T12:00:10.000Z", NULL};
    const char *far[] = {"X-RateLimit-Remaining: 0", "X-RateLimit-Reset: 9999-12-31T23:59:59Z", NULL};
    const char *past[] = {"X-RateLimit-Remaining: 0", "X-RateLimit-Reset: 0001-01-01T00:00:00Z", NULL};
    const char *left[] = {"X-RateLimit-Remaining: 5", "X-RateLimit-Reset: 2026-12-04T12:00:10.000Z", NULL};
    const char *junk[] = {"X-RateLimit-Remaining: none", "X-RateLimit-Reset: 2026-12-04T12:00:10.000Z", NULL};
    ck_assert_int_eq(wait_after(200, none, now), 0);
    ck_assert_int_eq(wait_after(429, none, now), 60000);
    ck_assert_int_eq(wait_after(429, retry, now), 30000);
    ck_assert_int_eq(wait_after(200, retry, now), 0);
    ck_assert_int_eq(wait_after(429, huge, now), SL_MASTODON_RATE_WAIT_MAX_MS);
    ck_assert_int_eq(wait_after(429, date, now), 60000);
    ck_assert_int_eq(wait_after(200, reset, now), 10050);
    ck_assert_int_eq(wait_after(429, reset, now), 10050);
    ck_assert_int_eq(wait_after(200, far, now), SL_MASTODON_RATE_WAIT_MAX_MS);
    ck_assert_int_eq(wait_after(200, past, now), 0);
    ck_assert_int_eq(wait_after(200, left, now), 0);
    ck_assert_int_eq(wait_after(200, junk, now), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ingest");
    TCase *tc = tcase_create("unit");
    tcase_add_test(tc, test_sse_whole_stream);
    tcase_add_test(tc, test_sse_every_split_point);
    tcase_add_test(tc, test_sse_crlf_split_between_cr_and_lf);
    tcase_add_test(tc, test_sse_bom_and_limits);
    tcase_add_test(tc, test_sse_callback_stops_feed);
    tcase_add_loop_test(tc, test_html_to_text, 0, sizeof(html_cases) / sizeof(html_cases[0]));
    tcase_add_test(tc, test_html_never_breaks);
    tcase_add_test(tc, test_truncation_on_utf8_boundary);
    tcase_add_test(tc, test_status_maps_to_message);
    tcase_add_test(tc, test_status_missing_optional_fields);
    tcase_add_test(tc, test_status_author_and_text_are_made_valid);
    tcase_add_test(tc, test_status_skips_and_refusals);
    tcase_add_test(tc, test_status_meta);
    tcase_add_test(tc, test_stream_events_map_to_items);
    tcase_add_test(tc, test_boost_maps_to_its_own_message);
    tcase_add_test(tc, test_ids_memory_is_bounded);
    tcase_add_test(tc, test_event_payloads_decode_strictly);
    tcase_add_test(tc, test_streams_and_paths);
    tcase_add_test(tc, test_sources_parse);
    tcase_add_test(tc, test_page_after);
    tcase_add_test(tc, test_rate_limit_wait);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
