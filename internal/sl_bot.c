/*
 * sl_bot: message generator, rate scheduler and the libcurl run loop of sluice-bot; see sl_bot.h.
 */
#include "sl_bot.h"

#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_time.h"

/* ---- PRNG ----------------------------------------------------------------------------------- */

uint64_t sl_bot_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double sl_bot_rand01(uint64_t *state)
{
    return (double)(sl_bot_rand(state) >> 11) * (1.0 / 9007199254740992.0);
}

static size_t pick(uint64_t *rng, size_t n)
{
    return (size_t)(sl_bot_rand01(rng) * (double)n);
}

/* Skewed towards small indexes: a few busy channels and chatty authors, a long quiet tail. */
static size_t pick_skewed(uint64_t *rng, size_t n)
{
    double u = sl_bot_rand01(rng);
    size_t i = (size_t)(u * u * (double)n);
    return i < n ? i : n - 1;
}

/* ---- message generator ---------------------------------------------------------------------- */

struct language {
    const char *const *words;
    size_t nwords;
    int spaced;     /* words separated by spaces (Japanese is not) */
    unsigned share; /* out of 100 messages */
};

#define WORDS(a) a, sizeof(a) / sizeof(a[0])

static const char *const words_en[] = {
    "the", "deploy", "is", "green", "again", "anyone", "seen", "new", "build", "lunch", "coffee", "meeting", "moved",
    "to", "3pm", "thanks", "for", "review", "looks", "good", "me", "ship", "it", "queue", "backing", "up", "retrying",
    "later", "latency", "p99", "spiked", "rollback", "done", "who", "owns", "this", "alert", "on", "call", "tonight",
    "weekend", "plans", "just", "pushed", "a", "fix", "let", "check", "brb", "lol", "nice", "agreed", "hmm", "works",
    "my", "machine", "dashboard", "metrics", "postgres", "rabbit", "feed", "message", "today", "tomorrow", "please",
    "sorry", "great", "idea", "maybe", "definitely", "question", "and", "but", "we", "should", "could", "I", "think",
    "you", "are", "right", "about", "that", "was", "fast", "slow", "again?", "ok", "yes", "no", "what", "when", "why"};
static const char *const words_fr[] = {"bonjour", "ça", "va", "très", "bien", "merci", "déjà", "été", "fenêtre",
                                       "où", "est", "le", "café", "à", "demain", "réunion", "équipe", "problème",
                                       "résolu", "peut-être", "voilà", "garçon", "hôtel", "naïve", "et", "la"};
static const char *const words_de[] = {"Grüße", "aus", "München", "schön", "Straße", "Größe", "über", "Tschüss",
                                       "bitte", "danke", "Fußball", "heute", "Brötchen", "natürlich", "und", "wir"};
static const char *const words_es[] = {"hola", "mañana", "año", "niño", "señor", "qué", "tal", "gracias", "más",
                                       "también", "corazón", "canción", "está", "bien", "fiesta", "pequeño", "y"};
static const char *const words_ru[] = {"привет", "как", "дела", "спасибо", "хорошо", "сегодня", "завтра",
                                       "очередь", "сообщение", "база", "данных", "работает", "отлично", "пока"};
static const char *const words_el[] = {"γεια", "σου", "καλημέρα", "ευχαριστώ", "ναι", "όχι", "θάλασσα", "ήλιος"};
static const char *const words_ja[] = {"こんにちは", "ありがとう", "今日", "明日", "会議", "東京", "寿司",
                                       "大丈夫", "よろしく", "お疲れ様", "、", "です"};
static const char *const emoji[] = {"🎉", "👍", "🚀", "😅", "🔥", "✅", "☕", "🙏", "💡", "🐛", "❤️", "👀"};

static const struct language languages[] = {
    {WORDS(words_en), 1, 70}, {WORDS(words_fr), 1, 6}, {WORDS(words_de), 1, 6}, {WORDS(words_es), 1, 6},
    {WORDS(words_ru), 1, 5},  {WORDS(words_el), 1, 3}, {WORDS(words_ja), 0, 4},
};

static const char *const author_names[] = {
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj",
    "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "zoë", "josé", "søren", "françois",
    "łukasz", "jürgen", "юлия", "дмитрий", "美咲", "太郎", "ελένη", "ayşe", "nguyễn"};

void sl_botgen_author(long i, char *buf, size_t size)
{
    const size_t n = sizeof(author_names) / sizeof(author_names[0]);
    if (i < (long)n)
        snprintf(buf, size, "%s", author_names[i]);
    else
        snprintf(buf, size, "%s_%ld", author_names[(size_t)i % n], i / (long)n);
}

int sl_botgen_init(sl_botgen_t *g, uint64_t seed, const char *channels, long authors, char *err, size_t errsize)
{
    memset(g, 0, sizeof(*g));
    g->rng = seed;
    if (authors < 1 || authors > SL_BOT_MAX_AUTHORS) {
        snprintf(err, errsize, "authors must be 1 to %d, not %ld", SL_BOT_MAX_AUTHORS, authors);
        return -1;
    }
    g->authors = authors;
    const char *p = channels != NULL ? channels : "";
    for (;;) {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        const char *name = p;
        while (len > 0 && *name == ' ') {
            name++;
            len--;
        }
        while (len > 0 && name[len - 1] == ' ')
            len--;
        const char *canon;
        size_t clen = sl_channel_canon(name, len, &canon);
        if (clen == 0) {
            snprintf(err, errsize, "channel '%.*s' in '%.200s' is not " SL_CHANNEL_RULE, (int)(len > 80 ? 80 : len),
                     name, channels != NULL ? channels : "");
            return -1;
        }
        name = canon;
        len = clen;
        if (g->nchannels == SL_BOT_MAX_CHANNELS) {
            snprintf(err, errsize, "at most %d channels", SL_BOT_MAX_CHANNELS);
            return -1;
        }
        memcpy(g->channels[g->nchannels], name, len);
        g->channels[g->nchannels++][len] = '\0';
        if (end == NULL)
            break;
        p = end + 1;
    }
    return 0;
}

/* Appends s (cp code points) to the text if it fits in `room` more code points. */
static int text_add(char *text, size_t *bytes, long *cp, const char *s, long room)
{
    size_t len = strlen(s);
    long n = sl_utf8_count(s, len);
    if (n < 0 || *cp + n > room)
        return 0;
    memcpy(text + *bytes, s, len);
    *bytes += len;
    text[*bytes] = '\0';
    *cp += n;
    return 1;
}

/* A chat-like text of about `target` code points in one language, with now and then an emoji,
 * a mention and closing punctuation. Room is left for the " #<n>" suffix. */
static void make_text(sl_botgen_t *g, char *text, long target)
{
    const long room = SL_TEXT_MAX_CHARS - 24; /* " #" + up to 20 digits, with margin */
    unsigned roll = (unsigned)pick(&g->rng, 100), acc = 0;
    const struct language *lang = &languages[0];
    size_t bytes = 0;
    long cp = 0;
    char word[128];

    for (size_t i = 0; i < sizeof(languages) / sizeof(languages[0]); i++) {
        acc += languages[i].share;
        if (roll < acc) {
            lang = &languages[i];
            break;
        }
    }
    text[0] = '\0';
    if (target > room)
        target = room;
    if (sl_bot_rand01(&g->rng) < 0.1) { /* a mention */
        word[0] = '@';
        sl_botgen_author((long)pick(&g->rng, (size_t)g->authors), word + 1, sizeof(word) - 1);
        text_add(text, &bytes, &cp, word, room);
    }
    while (cp < target) {
        const char *w = sl_bot_rand01(&g->rng) < 0.03 ? emoji[pick(&g->rng, sizeof(emoji) / sizeof(emoji[0]))]
                                                     : lang->words[pick(&g->rng, lang->nwords)];
        long n = sl_utf8_count(w, strlen(w));
        int sep = cp > 0 && lang->spaced;
        if (cp > 0 && cp + sep + n > target)
            break;
        if (sep && !text_add(text, &bytes, &cp, " ", room))
            break;
        if (cp == 0 && w[0] >= 'a' && w[0] <= 'z') { /* a capital to start with */
            snprintf(word, sizeof(word), "%c%s", w[0] - 'a' + 'A', w + 1);
            w = word;
        }
        if (!text_add(text, &bytes, &cp, w, room))
            break;
    }
    double r = sl_bot_rand01(&g->rng);
    if (r < 0.3)
        text_add(text, &bytes, &cp, r < 0.1 ? "!" : r < 0.2 ? "?" : ".", room);
    else if (r < 0.45) {
        text_add(text, &bytes, &cp, " ", room);
        text_add(text, &bytes, &cp, emoji[pick(&g->rng, sizeof(emoji) / sizeof(emoji[0]))], room);
    }
    snprintf(text + bytes, SL_TEXT_MAX_CHARS * 4 + 1 - bytes, " #%llu", (unsigned long long)g->seq);
}

size_t sl_botgen_next(sl_botgen_t *g, char *buf, size_t size)
{
    char author[SL_AUTHOR_MAX_CHARS * 4 + 1], text[SL_TEXT_MAX_CHARS * 4 + 1];
    double u = sl_bot_rand01(&g->rng);
    /* Mostly short chat lines, some paragraphs, a few long posts. */
    long target = u < 0.6 ? 3 + (long)pick(&g->rng, 38) : u < 0.9 ? 40 + (long)pick(&g->rng, 121)
                                                                 : 160 + (long)pick(&g->rng, 321);
    const char *channel = g->channels[pick_skewed(&g->rng, g->nchannels)];
    sl_botgen_author((long)pick_skewed(&g->rng, (size_t)g->authors), author, sizeof(author));
    g->seq++;
    make_text(g, text, target);

    json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "channel", channel, "author", author, "text", text, "source", "bot");
    if (o == NULL)
        return 0;
    size_t n = json_dumpb(o, buf, size, JSON_COMPACT);
    json_decref(o);
    if (n == 0 || n >= size)
        return 0;
    buf[n] = '\0';
    return n;
}

/* ---- rate scheduler ------------------------------------------------------------------------- */

static int64_t slots_us(uint64_t k, double rate)
{
    return (int64_t)llround((double)k * 1e6 / rate);
}

void sl_bot_sched_init(sl_bot_sched_t *s, double target, int64_t start_us)
{
    memset(s, 0, sizeof(*s));
    s->target = target;
    s->rate = target;
    s->min_rate = target / 16;
    s->decrease = 0.5;
    s->recover_per_s = target / 10;
    s->max_lag_us = 1000000;
    s->anchor_us = start_us;
    s->paused_until_us = start_us;
    s->updated_us = start_us;
}

int64_t sl_bot_sched_due(const sl_bot_sched_t *s, uint64_t seq)
{
    return s->anchor_us + slots_us(seq - s->anchor_seq, s->rate);
}

int64_t sl_bot_sched_next(const sl_bot_sched_t *s)
{
    int64_t due = sl_bot_sched_due(s, s->next_seq);
    return due > s->paused_until_us ? due : s->paused_until_us;
}

/* New spacing from the last slot taken on: the slot already taken keeps its time, the next one
 * comes 1 / rate after it. */
static void set_rate(sl_bot_sched_t *s, double rate)
{
    if (s->next_seq > s->anchor_seq) {
        s->anchor_us = sl_bot_sched_due(s, s->next_seq - 1);
        s->anchor_seq = s->next_seq - 1;
    }
    s->rate = rate;
}

uint64_t sl_bot_sched_take(sl_bot_sched_t *s, int64_t now_us)
{
    uint64_t skipped = 0;
    int64_t over = now_us - s->max_lag_us - sl_bot_sched_due(s, s->next_seq);
    if (over > 0) {
        skipped = (uint64_t)((double)over * s->rate / 1e6);
        s->anchor_us = now_us - s->max_lag_us;
        s->anchor_seq = s->next_seq;
    }
    s->next_seq++;
    return skipped;
}

void sl_bot_sched_refused(sl_bot_sched_t *s, int64_t now_us, int64_t wait_us)
{
    if (now_us >= s->paused_until_us) { /* a new episode: slow down once for it */
        double r = s->rate * s->decrease;
        s->rate = r > s->min_rate ? r : s->min_rate;
    }
    if (now_us + wait_us > s->paused_until_us)
        s->paused_until_us = now_us + wait_us;
    s->anchor_us = s->paused_until_us;
    s->anchor_seq = s->next_seq;
    s->updated_us = s->paused_until_us;
}

void sl_bot_sched_tick(sl_bot_sched_t *s, int64_t now_us)
{
    if (now_us <= s->updated_us || now_us < s->paused_until_us)
        return;
    if (s->rate < s->target) {
        double r = s->rate + s->recover_per_s * (double)(now_us - s->updated_us) / 1e6;
        set_rate(s, r < s->target ? r : s->target);
    }
    s->updated_us = now_us;
}

/* ---- the run loop --------------------------------------------------------------------------- */

#define DRAIN_ON_SIGNAL_US 2000000
#define DEFAULT_RETRY_AFTER_US 1000000
#define MAX_RETRY_AFTER_S 3600

struct msg {
    uint64_t seq; /* 1, 2, ... */
    unsigned attempts;
    size_t len;
    struct curl_slist *headers;
    char body[SL_BOT_BODY_MAX];
};

/* One easy handle, one request at a time; its connection stays in the multi's cache. */
struct slot {
    CURL *easy;
    struct msg *msg; /* NULL when idle */
    size_t resplen;
    char resp[200]; /* start of the answer, for the log */
};

struct bot {
    const sl_bot_conf_t *conf;
    char url[1024];
    char key_prefix[64];
    CURLM *multi;
    struct slot *slots;
    struct slot **idle;
    size_t nidle;
    struct msg *msgs;
    struct msg **free_msgs;
    size_t nfree;
    struct msg **retry; /* ring of refused messages, oldest first */
    size_t retry_head, nretry;
    size_t cap; /* = concurrency: bounds slots, messages and the ring */
    sl_botgen_t gen;
    sl_bot_sched_t sched;
    uint64_t jitter_rng;
    int64_t t0_us;
    sl_bot_stats_t st;
    uint64_t last_accepted; /* for the interval rate of periodic summaries */
    int64_t last_summary_us;
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct slot *sl = arg;
    size_t len = size * n, room = sizeof(sl->resp) - 1 - sl->resplen;
    size_t take = len < room ? len : room;
    memcpy(sl->resp + sl->resplen, p, take);
    sl->resplen += take;
    sl->resp[sl->resplen] = '\0';
    return len;
}

int sl_bot_conf_check(const sl_bot_conf_t *c, char *err, size_t errsize)
{
    sl_botgen_t g;
    if (c->api_url == NULL || (strncmp(c->api_url, "http://", 7) != 0 && strncmp(c->api_url, "https://", 8) != 0)) {
        snprintf(err, errsize, "api-url '%.200s' is not an http:// or https:// URL", c->api_url ? c->api_url : "");
        return -1;
    }
    if (strlen(c->api_url) > 900) {
        snprintf(err, errsize, "api-url is too long");
        return -1;
    }
    if (!(c->rate > 0) || !isfinite(c->rate)) {
        snprintf(err, errsize, "the rate must be a positive number of messages per second");
        return -1;
    }
    if (c->concurrency < 1 || c->concurrency > 10000 || c->count < 0 || c->duration_s < 0 || c->delay_s < 0 ||
        !(c->summary_s > 0) || !(c->timeout_s > 0)) {
        snprintf(err, errsize, "concurrency, count, duration, delay, summary interval or timeout out of range");
        return -1;
    }
    return sl_botgen_init(&g, 0, c->channels, (long)c->authors, err, errsize);
}

static void summary(struct bot *b, int64_t now, const char *reason)
{
    double elapsed = now > b->t0_us ? (double)(now - b->t0_us) / 1e6 : 0;
    int64_t in_interval_from = b->last_summary_us > b->t0_us ? b->last_summary_us : b->t0_us;
    double sending = now > in_interval_from ? (double)(now - in_interval_from) / 1e6 : 0;
    SL_INFO("event=summary sent=%llu accepted=%llu refused=%llu retried=%llu failed=%llu inflight=%zu waiting=%zu"
            " skipped=%llu elapsed_s=%.3f rate=%.3f interval_rate=%.3f target_rate=%.3f current_rate=%.3f%s%s",
            (unsigned long long)b->st.sent, (unsigned long long)b->st.accepted, (unsigned long long)b->st.refused,
            (unsigned long long)b->st.retried, (unsigned long long)b->st.failed, b->cap - b->nidle, b->nretry,
            (unsigned long long)b->st.skipped, elapsed,
            elapsed > 0 ? (double)b->st.accepted / elapsed : 0.0,
            sending > 0 ? (double)(b->st.accepted - b->last_accepted) / sending : 0.0, b->sched.target, b->sched.rate,
            reason != NULL ? " final=true reason=" : "", reason != NULL ? reason : "");
    b->last_accepted = b->st.accepted;
    b->last_summary_us = now;
}

static void msg_release(struct bot *b, struct msg *m)
{
    curl_slist_free_all(m->headers);
    m->headers = NULL;
    b->free_msgs[b->nfree++] = m;
}

/* Content-Type, no "Expect: 100-continue" (bodies pass 1 KiB), the message's own key, and the
 * bearer token when the api wants one. */
static struct curl_slist *make_headers(const char *key_prefix, uint64_t seq, const char *token)
{
    char key[128], auth[300];
    struct curl_slist *h = NULL, *t;
    int has_token = token != NULL && *token != '\0';
    snprintf(key, sizeof(key), "Idempotency-Key: %s-%llu", key_prefix, (unsigned long long)seq);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", has_token ? token : "");
    const char *lines[] = {"Content-Type: application/json", "Expect:", key, auth};
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]) - !has_token; i++) {
        if ((t = curl_slist_append(h, lines[i])) == NULL) {
            curl_slist_free_all(h);
            return NULL;
        }
        h = t;
    }
    return h;
}

/* A new message from the generator, with its own Idempotency-Key. NULL on no memory (logged). */
static struct msg *msg_new(struct bot *b)
{
    struct msg *m = b->free_msgs[--b->nfree];
    m->seq = b->gen.seq + 1;
    m->attempts = 0;
    m->len = sl_botgen_next(&b->gen, m->body, sizeof(m->body));
    if (m->len == 0 || (m->headers = make_headers(b->key_prefix, m->seq, b->conf->token)) == NULL) {
        b->free_msgs[b->nfree++] = m;
        SL_ERROR("event=message_failed seq=%llu error=\"out of memory\"", (unsigned long long)m->seq);
        return NULL;
    }
    return m;
}

static int start_request(struct bot *b, struct msg *m)
{
    struct slot *sl = b->idle[--b->nidle];
    sl->msg = m;
    sl->resplen = 0;
    sl->resp[0] = '\0';
    m->attempts++;
    curl_easy_setopt(sl->easy, CURLOPT_POSTFIELDS, m->body);
    curl_easy_setopt(sl->easy, CURLOPT_POSTFIELDSIZE, (long)m->len);
    curl_easy_setopt(sl->easy, CURLOPT_HTTPHEADER, m->headers);
    CURLMcode mc = curl_multi_add_handle(b->multi, sl->easy);
    if (mc != CURLM_OK) {
        SL_ERROR("event=request_failed seq=%llu error=\"%s\"", (unsigned long long)m->seq, curl_multi_strerror(mc));
        sl->msg = NULL;
        b->idle[b->nidle++] = sl;
        return -1;
    }
    return 0;
}

static void push_retry(struct bot *b, struct msg *m)
{
    b->retry[(b->retry_head + b->nretry) % b->cap] = m;
    b->nretry++;
}

static struct msg *pop_retry(struct bot *b)
{
    struct msg *m = b->retry[b->retry_head];
    b->retry_head = (b->retry_head + 1) % b->cap;
    b->nretry--;
    return m;
}

/* The answer to one request: accepted, refused (retry later, slow down) or failed. */
static void on_done(struct bot *b, struct slot *sl, CURLcode rc, int64_t now)
{
    struct msg *m = sl->msg;
    long status = 0;
    curl_off_t ra = 0;
    char q[256];

    sl->msg = NULL;
    curl_multi_remove_handle(b->multi, sl->easy);
    b->idle[b->nidle++] = sl;
    if (rc == CURLE_OK)
        curl_easy_getinfo(sl->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 200 && status < 300) {
        b->st.accepted++;
        msg_release(b, m);
        return;
    }
    if (rc == CURLE_OK && status < 500 && status != 429) {
        b->st.failed++;
        SL_WARN("event=message_failed seq=%llu status=%ld answer=%s", (unsigned long long)m->seq, status,
                sl_log_quote(q, sizeof(q), sl->resp));
        msg_release(b, m);
        return;
    }
    /* 429, 5xx or no answer: the api did not take it. Wait as told, then the same message with the
     * same key; a connection error counts as a 503 with the default wait. */
    int64_t wait_us = DEFAULT_RETRY_AFTER_US;
    if (rc == CURLE_OK && curl_easy_getinfo(sl->easy, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra > 0)
        wait_us = (int64_t)(ra < MAX_RETRY_AFTER_S ? ra : MAX_RETRY_AFTER_S) * 1000000;
    wait_us += (int64_t)(sl_bot_rand01(&b->jitter_rng) * 0.25 * (double)wait_us); /* spread the retries */
    b->st.refused++;
    int new_episode = now >= b->sched.paused_until_us;
    sl_bot_sched_refused(&b->sched, now, wait_us);
    if (new_episode)
        SL_INFO("event=backoff seq=%llu attempt=%u status=%ld error=%s wait_ms=%lld rate=%.3f",
                (unsigned long long)m->seq, m->attempts, status,
                sl_log_quote(q, sizeof(q), rc == CURLE_OK ? sl->resp : curl_easy_strerror(rc)),
                (long long)(wait_us / 1000), b->sched.rate);
    else
        SL_DEBUG("event=refused seq=%llu status=%ld wait_ms=%lld", (unsigned long long)m->seq, status,
                 (long long)(wait_us / 1000));
    push_retry(b, m);
}

static void bot_free(struct bot *b)
{
    if (b->slots != NULL) {
        for (size_t i = 0; i < b->cap; i++) {
            if (b->slots[i].easy == NULL)
                continue;
            if (b->slots[i].msg != NULL)
                curl_multi_remove_handle(b->multi, b->slots[i].easy);
            curl_easy_cleanup(b->slots[i].easy);
        }
    }
    if (b->msgs != NULL) {
        for (size_t i = 0; i < b->cap; i++)
            curl_slist_free_all(b->msgs[i].headers);
    }
    if (b->multi != NULL)
        curl_multi_cleanup(b->multi);
    free(b->slots);
    free(b->idle);
    free(b->msgs);
    free(b->free_msgs);
    free(b->retry);
}

static int bot_setup(struct bot *b, const sl_bot_conf_t *c)
{
    char err[256], q[300];
    size_t n = (size_t)c->concurrency;
    size_t base = strlen(c->api_url);
    while (base > 0 && c->api_url[base - 1] == '/')
        base--;
    snprintf(b->url, sizeof(b->url), "%.*s/v1/messages", (int)base, c->api_url);
    b->cap = n;
    if (sl_botgen_init(&b->gen, c->seed, c->channels, (long)c->authors, err, sizeof(err)) != 0) {
        SL_ERROR("event=start_failed error=%s", sl_log_quote(q, sizeof(q), err));
        return -1;
    }
    b->jitter_rng = c->seed ^ 0x5bd1e9955bd1e995ULL;
    /* pid and start time: keys stay unique across restarts, even where the pid is always the same */
    snprintf(b->key_prefix, sizeof(b->key_prefix), "bot-%ld-%lld", (long)getpid(), (long long)time(NULL));
    b->slots = calloc(n, sizeof(*b->slots));
    b->idle = calloc(n, sizeof(*b->idle));
    b->msgs = calloc(n, sizeof(*b->msgs));
    b->free_msgs = calloc(n, sizeof(*b->free_msgs));
    b->retry = calloc(n, sizeof(*b->retry));
    if ((b->multi = curl_multi_init()) == NULL || b->slots == NULL || b->idle == NULL || b->msgs == NULL ||
        b->free_msgs == NULL || b->retry == NULL)
        goto nomem;
    curl_multi_setopt(b->multi, CURLMOPT_MAXCONNECTS, (long)n);
    curl_multi_setopt(b->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)n);
    for (size_t i = 0; i < n; i++) {
        struct slot *sl = &b->slots[i];
        if ((sl->easy = curl_easy_init()) == NULL)
            goto nomem;
        curl_easy_setopt(sl->easy, CURLOPT_URL, b->url);
        curl_easy_setopt(sl->easy, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(sl->easy, CURLOPT_WRITEDATA, sl);
        curl_easy_setopt(sl->easy, CURLOPT_PRIVATE, sl);
        curl_easy_setopt(sl->easy, CURLOPT_TIMEOUT_MS, (long)(c->timeout_s * 1000));
        curl_easy_setopt(sl->easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(sl->easy, CURLOPT_USERAGENT, "sluice-bot");
        b->idle[b->nidle++] = sl;
        b->free_msgs[b->nfree++] = &b->msgs[i];
    }
    return 0;
nomem:
    SL_ERROR("event=start_failed error=\"out of memory\"");
    return -1;
}

/* What the loop does next. */
static int can_start_new(const struct bot *b)
{
    const sl_bot_conf_t *c = b->conf;
    if (c->count > 0 && b->st.sent >= (uint64_t)c->count)
        return 0;
    if (c->duration_s > 0 && sl_bot_sched_next(&b->sched) >= b->t0_us + (int64_t)(c->duration_s * 1e6))
        return 0;
    return 1;
}

static int run_loop(struct bot *b, volatile sig_atomic_t *stop)
{
    const sl_bot_conf_t *c = b->conf;
    int64_t start = sl_time_mono_us();
    int64_t summary_us = (int64_t)(c->summary_s * 1e6), next_summary = start + summary_us;
    int64_t duration_end = c->duration_s > 0 ? b->t0_us + (int64_t)(c->duration_s * 1e6) : INT64_MAX;
    int64_t drain_until = 0;
    const char *reason = NULL;
    b->last_summary_us = start;

    for (;;) {
        int64_t now = sl_time_mono_us();
        if (*stop && drain_until == 0) {
            drain_until = now + DRAIN_ON_SIGNAL_US;
            reason = "signal";
            SL_INFO("event=stopping inflight=%zu waiting=%zu", b->cap - b->nidle, b->nretry);
        }
        if (drain_until != 0 && (b->nidle == b->cap || now >= drain_until))
            break;
        int new_ok = drain_until == 0 && can_start_new(b);
        int retry_ok = drain_until == 0 && now < duration_end;
        if (drain_until == 0 && !new_ok && !(retry_ok && b->nretry > 0) && b->nidle == b->cap) {
            /* nothing left to send or wait for; a --duration run lasts its full time */
            int by_count = c->count > 0 && b->st.sent >= (uint64_t)c->count;
            if (by_count || now >= duration_end) {
                reason = by_count ? "count" : "duration";
                break;
            }
        }

        sl_bot_sched_tick(&b->sched, now);
        while (b->nidle > 0 && ((retry_ok && b->nretry > 0) || (b->nretry == 0 && new_ok)) &&
               now >= sl_bot_sched_next(&b->sched)) {
            struct msg *m;
            b->st.skipped += sl_bot_sched_take(&b->sched, now);
            if (b->nretry > 0) {
                m = pop_retry(b);
                b->st.retried++;
            } else {
                if ((m = msg_new(b)) == NULL)
                    return -1;
                b->st.sent++;
            }
            if (start_request(b, m) != 0) {
                msg_release(b, m);
                return -1;
            }
            new_ok = can_start_new(b);
        }

        int running;
        CURLMcode mc = curl_multi_perform(b->multi, &running);
        if (mc != CURLM_OK) {
            SL_ERROR("event=curl_failed error=\"%s\"", curl_multi_strerror(mc));
            return -1;
        }
        CURLMsg *cm;
        int left, answered = 0;
        now = sl_time_mono_us();
        while ((cm = curl_multi_info_read(b->multi, &left)) != NULL) {
            struct slot *sl;
            if (cm->msg != CURLMSG_DONE)
                continue;
            curl_easy_getinfo(cm->easy_handle, CURLINFO_PRIVATE, (char **)&sl);
            on_done(b, sl, cm->data.result, now);
            answered++;
        }
        if (now >= next_summary) {
            summary(b, now, NULL);
            next_summary += summary_us;
            if (next_summary <= now)
                next_summary = now + summary_us;
        }
        if (answered > 0)
            continue; /* freed slots may send now, or the run may be over */

        /* Sleep until the next slot (if one could be used), the summary, or an answer. */
        int64_t wake = next_summary;
        if (drain_until != 0 && drain_until < wake)
            wake = drain_until;
        if (b->nidle > 0 && ((retry_ok && b->nretry > 0) || (b->nretry == 0 && new_ok))) {
            int64_t due = sl_bot_sched_next(&b->sched);
            if (due < wake)
                wake = due;
        }
        if (wake > duration_end && now < duration_end)
            wake = duration_end;
        int64_t wait_us = wake - sl_time_mono_us();
        int wait_ms = wait_us <= 0 ? 0 : wait_us >= 200000 ? 200 : (int)((wait_us + 999) / 1000);
        if (wait_ms > 0 && (mc = curl_multi_poll(b->multi, NULL, 0, wait_ms, NULL)) != CURLM_OK) {
            SL_ERROR("event=curl_failed error=\"%s\"", curl_multi_strerror(mc));
            return -1;
        }
    }
    b->st.abandoned = b->nretry + (b->cap - b->nidle);
    int64_t end = sl_time_mono_us();
    b->st.elapsed_s = end > b->t0_us ? (double)(end - b->t0_us) / 1e6 : 0;
    summary(b, end, reason);
    return 0;
}

int sl_bot_run(const sl_bot_conf_t *conf, volatile sig_atomic_t *stop, sl_bot_stats_t *stats)
{
    struct bot b;
    char err[256], q[300], chans[300];
    int ret = -1;

    memset(&b, 0, sizeof(b));
    b.conf = conf;
    if (sl_bot_conf_check(conf, err, sizeof(err)) != 0) {
        SL_ERROR("event=start_failed error=%s", sl_log_quote(q, sizeof(q), err));
        return -1;
    }
    sl_bot_conf_t c = *conf;
    if (c.seed == 0)
        c.seed = ((uint64_t)sl_time_now_us() << 16) ^ (uint64_t)getpid();
    b.conf = &c;
    if (bot_setup(&b, &c) != 0)
        goto out;
    b.t0_us = sl_time_mono_us() + (int64_t)(c.delay_s * 1e6);
    sl_bot_sched_init(&b.sched, c.rate, b.t0_us);
    SL_INFO("event=start url=%s rate=%.3f delay_s=%.3f channels=%s authors=%lld concurrency=%lld count=%lld"
            " duration_s=%.3f seed=%llu keys=%s-<n>",
            b.url, c.rate, c.delay_s, sl_log_quote(chans, sizeof(chans), c.channels), c.authors, c.concurrency, c.count, c.duration_s,
            (unsigned long long)c.seed, b.key_prefix);
    ret = run_loop(&b, stop);
    if (stats != NULL)
        *stats = b.st;
out:
    bot_free(&b);
    return ret;
}
