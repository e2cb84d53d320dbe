/*
 * sl_chaos: the load and the accounting of the chaos run (scripts/chaos.sh starts the stack and
 * injects the faults; this tool drives and checks it).
 *
 * While it runs: a POST load generator (libcurl multi) that retries 429/503/no answer with the
 * same Idempotency-Key after Retry-After and records every attempt, and several stream
 * subscribers (SSE, NDJSON, WebSocket; some sticky to one sse instance, some forced to disconnect
 * and resume on the other instance with Last-Event-ID / since) that record every delivery. On
 * SIGTERM/SIGINT (or --duration) it stops making messages, retries what is pending for --drain
 * seconds, waits for the database and the subscribers to settle, then accounts for everything:
 *
 *   - every message answered 202 is stored exactly once, with the id of the answer; a message
 *     never answered 202 is stored at most once;
 *   - the bot's stored rows (source "bot") are at least its accepted count (its final summary line
 *     in --bot-log) and have no duplicate text (each bot text ends in a unique " #n");
 *   - seq over messages and message_events is 1..N without gaps or repeats;
 *   - each subscriber got exactly the stored messages of its channels after its start position,
 *     each once, in seq order (WebSocket: per channel), with the stored ids.
 *
 * With --faults (lines "name t_fault_ms t_restart_ms t_ready_ms port", written by the script) it
 * prints, per fault, the writers' 202/429/503/no-answer counts and how long writers and readers
 * took to recover. Exit status: 0 all accounted for, 1 something lost, duplicated or out of order,
 * 2 a usage or setup error.
 *
 * Threads: one for the load, one per subscriber, and the main thread (signals, progress, the final
 * accounting). Counters the main thread reads while they run are atomics; everything else a
 * thread records is read only after it was joined.
 */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sl_streamclient.h"
#include "sl_testnet.h"
#include "sl_testutil.h"
#include "sl_time.h"
#include "sl_wsclient.h"

#define MAX_SSE 4
#define MAX_SUB_CHANNELS 4
#define MAX_FAULTS 64

/* ---- configuration and small helpers -------------------------------------------------------- */

static struct conf {
    const char *api;         /* base URL of the api */
    int sse_ports[MAX_SSE];  /* the sse instances */
    int nsse;
    const char *db_url;
    double rate;             /* load messages per second */
    int concurrency;
    long count;              /* most load messages */
    double duration_s;       /* load stops by itself after this (0: only on a signal) */
    double drain_s;          /* retries of pending messages after the stop */
    double settle_s;         /* longest wait for the database and the subscribers */
    int disc_min_ms, disc_max_ms; /* forced disconnects of the resuming subscribers */
    double late_s;           /* the late subscriber joins after this */
    const char *faults;      /* file of fault lines, read at the end */
    const char *bot_log;     /* the bot's log, for its final summary */
    long long t0_ms;         /* wall-clock origin of the printed times */
    double progress_s;
} C = {
    .rate = 100, .concurrency = 16, .count = 1000000, .drain_s = 30, .settle_s = 60,
    .disc_min_ms = 2000, .disc_max_ms = 6000, .late_s = 10, .progress_s = 5,
};

static long long now_ms(void) { return sl_time_now_us() / 1000; }

/* One line per event, prefixed with the run's clock; stdout is shared by the threads. */
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    long long t = now_ms() - C.t0_ms;
    pthread_mutex_lock(&out_lock);
    printf("[%6lld.%llds] chaos: ", t / 1000, (t % 1000) / 100);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p == NULL) {
        fprintf(stderr, "sl_chaos: out of memory\n");
        exit(2);
    }
    return p;
}

/* Grows an array of elem-sized items to hold one more. */
static void grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return;
    size_t nc = *cap ? *cap * 2 : 1024;
    void *p = realloc(*arr, nc * elem);
    if (p == NULL) {
        fprintf(stderr, "sl_chaos: out of memory\n");
        exit(2);
    }
    *arr = p;
    *cap = nc;
}

static unsigned long long rng_state = 0x9e3779b97f4a7c15ULL;
static pthread_mutex_t rng_lock = PTHREAD_MUTEX_INITIALIZER;
static int rand_between(int lo, int hi)
{
    pthread_mutex_lock(&rng_lock);
    unsigned long long z = (rng_state += 0x9e3779b97f4a7c15ULL);
    pthread_mutex_unlock(&rng_lock);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return hi <= lo ? lo : lo + (int)(z % (unsigned long long)(hi - lo + 1));
}

static atomic_int stop_load;    /* no new messages */
static atomic_int stop_subs;    /* subscribers end */
static atomic_int load_done;    /* the load thread finished */

/* ---- the load generator --------------------------------------------------------------------- */

enum { M_NEW = 0, M_INFLIGHT, M_WAITING, M_ACCEPTED, M_FAILED };

struct lgmsg {
    unsigned char state;
    unsigned short attempts;
    long last_status;
    long long accepted_ms;
    char id[37];
};

struct attempt {
    long long ts;
    int status; /* HTTP status, 0: no answer */
};

struct slot {
    CURL *easy;
    struct curl_slist *headers;
    long idx;           /* message, -1: idle */
    char body[256];
    char resp[512];
    size_t resplen;
};

static struct load {
    char run[32];       /* in keys and texts: this run's messages are told apart from any other */
    const char *channels[4];
    struct lgmsg *msgs;
    long nmsgs;         /* made so far */
    struct attempt *att;
    size_t natt, attcap;
    long *waitq;        /* refused messages, oldest first (a ring of count entries) */
    long wq_head, wq_len;
    long long paused_until, end_ms;
    atomic_long sent, accepted, n429, n503, nnone, nother, failed, waiting;
    long long refusing_since; /* first refusal of the current outage, 0 when 202s flow */
    long refusals_in_outage;
} L = {.channels = {"general", "news", "random", "lg"}};

static size_t on_resp(char *p, size_t size, size_t n, void *arg)
{
    struct slot *s = arg;
    size_t len = size * n, room = sizeof(s->resp) - 1 - s->resplen;
    memcpy(s->resp + s->resplen, p, len < room ? len : room);
    s->resplen += len < room ? len : room;
    s->resp[s->resplen] = '\0';
    return len;
}

static void lg_text(long i, char *buf, size_t size) { snprintf(buf, size, "chaos %s #%ld", L.run, i); }

static void lg_start(CURLM *multi, struct slot *s, long i)
{
    char key[96], text[96];
    struct lgmsg *m = &L.msgs[i];
    lg_text(i, text, sizeof(text));
    snprintf(s->body, sizeof(s->body), "{\"channel\":\"%s\",\"author\":\"chaos%ld\",\"text\":\"%s\"}",
             L.channels[i % 4], i % 7, text);
    snprintf(key, sizeof(key), "Idempotency-Key: chaos-%s-%ld", L.run, i);
    curl_slist_free_all(s->headers);
    s->headers = curl_slist_append(NULL, "Content-Type: application/json");
    s->headers = curl_slist_append(s->headers, "Expect:");
    s->headers = curl_slist_append(s->headers, key);
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, s->body);
    curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, s->headers);
    s->idx = i;
    s->resplen = 0;
    s->resp[0] = '\0';
    m->state = M_INFLIGHT;
    m->attempts++;
    curl_multi_add_handle(multi, s->easy);
}

static void lg_record(long long ts, int status)
{
    grow((void **)&L.att, &L.attcap, L.natt, sizeof(*L.att));
    L.att[L.natt++] = (struct attempt){ts, status};
}

static void lg_done(CURLM *multi, struct slot *s, CURLcode rc)
{
    struct lgmsg *m = &L.msgs[s->idx];
    long status = 0;
    curl_off_t ra = 0;
    long long now = now_ms();
    curl_multi_remove_handle(multi, s->easy);
    if (rc == CURLE_OK)
        curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
    lg_record(now, (int)status);
    m->last_status = status;
    if (status == 202) {
        if (tu_json_str(s->resp, "id", m->id, sizeof(m->id)) != 0)
            say("load: 202 without an id for message %ld: %s", s->idx, s->resp);
        m->state = M_ACCEPTED;
        m->accepted_ms = now;
        atomic_fetch_add(&L.accepted, 1);
        if (L.refusing_since != 0) {
            say("load: 202 again, %.1f s after the first refusal (%ld refusals)",
                (double)(now - L.refusing_since) / 1000, L.refusals_in_outage);
            L.refusing_since = 0;
        }
    } else if (rc == CURLE_OK && status != 429 && status < 500) {
        m->state = M_FAILED;
        atomic_fetch_add(&L.failed, 1);
        say("load: message %ld failed with %ld: %s", s->idx, status, s->resp);
    } else {
        /* the api did not take it: the same body and key again after Retry-After */
        long long wait = 1000;
        if (status == 429)
            atomic_fetch_add(&L.n429, 1);
        else if (status == 503)
            atomic_fetch_add(&L.n503, 1);
        else if (status == 0)
            atomic_fetch_add(&L.nnone, 1);
        else
            atomic_fetch_add(&L.nother, 1);
        if (rc == CURLE_OK && curl_easy_getinfo(s->easy, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra > 0)
            wait = (long long)(ra < 60 ? ra : 60) * 1000;
        wait += rand_between(0, (int)(wait / 4));
        if (now + wait > L.paused_until)
            L.paused_until = now + wait;
        m->state = M_WAITING;
        L.waitq[(L.wq_head + L.wq_len) % C.count] = s->idx;
        L.wq_len++;
        atomic_store(&L.waiting, L.wq_len);
        if (L.refusing_since == 0) {
            char code[64] = "";
            json_t *o = json_loads(s->resp, 0, NULL), *e;
            if (o != NULL && (e = json_object_get(o, "error")) != NULL && json_is_string(json_object_get(e, "code")))
                snprintf(code, sizeof(code), "%s", json_string_value(json_object_get(e, "code")));
            json_decref(o);
            L.refusing_since = now;
            L.refusals_in_outage = 0;
            say("load: refused: %ld %s (Retry-After %lld ms)", status,
                status == 0 ? curl_easy_strerror(rc) : code, wait);
        }
        L.refusals_in_outage++;
    }
    s->idx = -1;
}

static void *load_main(void *arg)
{
    (void)arg;
    CURLM *multi = curl_multi_init();
    struct slot *slots = xcalloc((size_t)C.concurrency, sizeof(*slots));
    char url[300];
    int inflight = 0;
    long long t_start = now_ms(), drain_end = 0;
    double next_new = (double)t_start; /* when the next new message is due, in ms */
    snprintf(url, sizeof(url), "%s/v1/messages", C.api);
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)C.concurrency);
    for (int i = 0; i < C.concurrency; i++) {
        slots[i].idx = -1;
        slots[i].easy = curl_easy_init();
        curl_easy_setopt(slots[i].easy, CURLOPT_URL, url);
        curl_easy_setopt(slots[i].easy, CURLOPT_WRITEFUNCTION, on_resp);
        curl_easy_setopt(slots[i].easy, CURLOPT_WRITEDATA, &slots[i]);
        curl_easy_setopt(slots[i].easy, CURLOPT_PRIVATE, &slots[i]);
        curl_easy_setopt(slots[i].easy, CURLOPT_TIMEOUT_MS, 10000L);
        curl_easy_setopt(slots[i].easy, CURLOPT_NOSIGNAL, 1L);
    }
    for (;;) {
        long long now = now_ms();
        int stopping = atomic_load(&stop_load) || (C.duration_s > 0 && now - t_start >= (long long)(C.duration_s * 1000));
        if (stopping && drain_end == 0) {
            drain_end = now + (long long)(C.drain_s * 1000);
            say("load: stopped making messages (%ld made); retrying %ld pending for up to %.0f s", L.nmsgs, L.wq_len,
                C.drain_s);
        }
        if (stopping && ((L.wq_len == 0 && inflight == 0) || now >= drain_end))
            break;
        /* Send while there is room and nobody asked us to wait: refused messages first. */
        while (inflight < C.concurrency && now >= L.paused_until) {
            long i = -1;
            if (L.wq_len > 0) {
                i = L.waitq[L.wq_head];
                L.wq_head = (L.wq_head + 1) % C.count;
                L.wq_len--;
                atomic_store(&L.waiting, L.wq_len);
            } else if (!stopping && L.nmsgs < C.count && (double)now >= next_new) {
                i = L.nmsgs++;
                atomic_fetch_add(&L.sent, 1);
                next_new += 1000.0 / C.rate;
                if (next_new < (double)(now - 1000)) /* do not burst to catch up after a stall */
                    next_new = (double)now;
            } else {
                break;
            }
            struct slot *s = NULL;
            for (int k = 0; k < C.concurrency && s == NULL; k++)
                if (slots[k].idx < 0)
                    s = &slots[k];
            lg_start(multi, s, i);
            inflight++;
        }
        int running;
        curl_multi_perform(multi, &running);
        CURLMsg *cm;
        int left;
        while ((cm = curl_multi_info_read(multi, &left)) != NULL) {
            struct slot *s;
            if (cm->msg != CURLMSG_DONE)
                continue;
            curl_easy_getinfo(cm->easy_handle, CURLINFO_PRIVATE, (char **)&s);
            lg_done(multi, s, cm->data.result);
            inflight--;
        }
        curl_multi_poll(multi, NULL, 0, 5, NULL);
    }
    L.end_ms = now_ms();
    for (int i = 0; i < C.concurrency; i++) {
        if (slots[i].idx >= 0)
            curl_multi_remove_handle(multi, slots[i].easy);
        curl_easy_cleanup(slots[i].easy);
        curl_slist_free_all(slots[i].headers);
    }
    curl_multi_cleanup(multi);
    free(slots);
    atomic_store(&load_done, 1);
    return NULL;
}

/* ---- subscribers ---------------------------------------------------------------------------- */

enum { K_SSE, K_NDJSON, K_WS };
static const char *const kind_names[] = {"sse", "ndjson", "websocket"};

struct rcpt {
    long long ts, seq;
    char id[37];
    signed char port; /* index into C.sse_ports */
    signed char ch;   /* WebSocket: index of the subscription's channel; else 0 */
};

struct sub {
    const char *name;
    int kind;
    int home;            /* index of the first sse instance */
    int roam;            /* forced to disconnect, and reconnects alternate between the instances */
    int late;            /* joins after C.late_s, from the instance's position then */
    char chan[MAX_SUB_CHANNELS][72];
    int nchan;           /* 0: every channel (not for WebSocket) */
    long long start;     /* start position: deliveries are seq > start */
    long long last[MAX_SUB_CHANNELS]; /* per channel for WebSocket, [0] otherwise */
    struct rcpt *r;
    size_t n, cap;
    atomic_llong maxseq[MAX_SUB_CHANNELS];
    atomic_long recv, sessions, dups, disorder, resets, errors;
    atomic_int started;
    long long down_since; /* the stream broke or was refused since then; 0: connected */
    int refused;          /* connection attempts refused since down_since */
    pthread_t th;
};

/* A session got its 200 (or 101): one line when it ends an outage. */
static void sub_connected(struct sub *s, int pi)
{
    atomic_fetch_add(&s->sessions, 1);
    if (s->down_since != 0)
        say("sub %s: connected to :%d after %.1f s down (%d refused), resuming after %lld", s->name, C.sse_ports[pi],
            (double)(now_ms() - s->down_since) / 1000, s->refused, s->last[0]);
    s->down_since = 0;
    s->refused = 0;
}

static void sub_record(struct sub *s, int port, int ch, long long seq, const char *id)
{
    long long last = s->last[ch];
    if (seq <= last) {
        /* a repeat or a step back: kept for the accounting, counted now for the progress */
        atomic_fetch_add(seq == last ? &s->dups : &s->disorder, 1);
        if (atomic_load(&s->dups) + atomic_load(&s->disorder) <= 5)
            say("sub %s: seq %lld after %lld (%s)", s->name, seq, last, seq == last ? "repeat" : "out of order");
    } else {
        s->last[ch] = seq;
        atomic_store(&s->maxseq[ch], seq);
    }
    grow((void **)&s->r, &s->cap, s->n, sizeof(*s->r));
    struct rcpt *r = &s->r[s->n++];
    r->ts = now_ms();
    r->seq = seq;
    snprintf(r->id, sizeof(r->id), "%s", id != NULL ? id : "");
    r->port = (signed char)port;
    r->ch = (signed char)ch;
    atomic_fetch_add(&s->recv, 1);
}

static void channels_csv(const struct sub *s, char *buf, size_t size)
{
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; i < s->nchan && o < size; i++)
        o += (size_t)snprintf(buf + o, size - o, "%s%s", i ? "," : "", s->chan[i]);
}

/* One connection of an SSE/NDJSON subscriber: resumes after s->last[0], reads until it ends, the
 * run ends or (deadline > 0) the forced disconnect. 1 when it got a 200, 0 when refused. */
static int http_session(struct sub *s, int pi, long long deadline)
{
    tu_stream_t st;
    tu_stream_opts_t o = {0};
    tu_sev_t ev;
    char target[400], hdr[64], chans[300], id[40];
    channels_csv(s, chans, sizeof(chans));
    if (s->kind == K_SSE) {
        snprintf(target, sizeof(target), "/v1/stream%s%s", s->nchan ? "?channels=" : "", chans);
        snprintf(hdr, sizeof(hdr), "Last-Event-ID: %lld\r\n", s->last[0]);
        o.headers = hdr;
    } else {
        snprintf(target, sizeof(target), "/v1/stream?format=ndjson&since=%lld%s%s", s->last[0],
                 s->nchan ? "&channels=" : "", chans);
    }
    if (tu_stream_open(&st, C.sse_ports[pi], target, &o, 3000) != 0)
        return 0;
    if (st.status != 200) {
        tu_stream_close(&st);
        return 0;
    }
    sub_connected(s, pi);
    while (!atomic_load(&stop_subs) && (deadline == 0 || now_ms() < deadline)) {
        int r = tu_stream_next(&st, &ev, 200);
        if (r < 0)
            break;
        if (r == 0)
            continue;
        if (ev.kind == TU_EV_RESET) {
            atomic_fetch_add(&s->resets, 1);
            say("sub %s: reset from :%d (%s)", s->name, C.sse_ports[pi], ev.data);
        } else if (ev.kind == TU_EV_MESSAGE && strcmp(ev.event, "message") == 0 && ev.seq > 0) {
            if (tu_json_str(ev.data, "id", id, sizeof(id)) != 0)
                id[0] = '\0';
            sub_record(s, pi, 0, ev.seq, id);
        } else if (ev.kind == TU_EV_MESSAGE || ev.kind == TU_EV_OTHER) {
            atomic_fetch_add(&s->errors, 1);
            say("sub %s: unexpected event %s: %.200s", s->name, ev.event, ev.data);
        }
    }
    tu_stream_close(&st);
    return 1;
}

static int ws_channel(const struct sub *s, const char *ch)
{
    for (int i = 0; i < s->nchan; i++)
        if (strcmp(s->chan[i], ch) == 0)
            return i;
    return -1;
}

static void ws_message(struct sub *s, int pi, json_t *m)
{
    json_t *seq = json_object_get(m, "seq"), *id = json_object_get(m, "id"), *ch = json_object_get(m, "channel");
    int c = json_is_string(ch) ? ws_channel(s, json_string_value(ch)) : -1;
    if (!json_is_integer(seq) || c < 0) {
        atomic_fetch_add(&s->errors, 1);
        say("sub %s: a message without seq or of a channel not subscribed", s->name);
        return;
    }
    sub_record(s, pi, c, json_integer_value(seq), json_is_string(id) ? json_string_value(id) : "");
}

/* One WebSocket connection: subscribes each channel after its last seq. Like http_session. */
static int ws_session(struct sub *s, int pi, long long deadline)
{
    tu_ws_t w;
    tu_wsmsg_t m;
    char cmd[200];
    if (tu_ws_open(&w, C.sse_ports[pi], "/v1/ws", 3000) != 0) {
        tu_ws_close(&w); /* a refused handshake keeps its head and body for the caller */
        return 0;
    }
    sub_connected(s, pi);
    for (int i = 0; i < s->nchan; i++) {
        snprintf(cmd, sizeof(cmd), "{\"command\":\"subscribe\",\"channel\":\"%s\",\"since\":%lld}", s->chan[i],
                 s->last[i]);
        if (tu_ws_send_text(&w, cmd) != 0) {
            tu_ws_close(&w);
            return 1;
        }
    }
    while (!atomic_load(&stop_subs) && (deadline == 0 || now_ms() < deadline)) {
        int r = tu_ws_recv_data(&w, &m, 200);
        if (r < 0 || (r == 1 && m.opcode == TU_WS_CLOSE))
            break;
        if (r == 0 || m.opcode != TU_WS_TEXT)
            continue;
        json_t *o = json_loads(m.data, 0, NULL), *v;
        const char *type = json_string_value(json_object_get(o, "type"));
        if (type == NULL) {
            atomic_fetch_add(&s->errors, 1);
            say("sub %s: a frame that is not an event: %.200s", s->name, m.data);
        } else if (strcmp(type, "message") == 0) {
            ws_message(s, pi, json_object_get(o, "message"));
        } else if (strcmp(type, "history") == 0) {
            size_t k;
            json_array_foreach(json_object_get(o, "messages"), k, v)
                ws_message(s, pi, v);
        } else if (strcmp(type, "reset") == 0) {
            atomic_fetch_add(&s->resets, 1);
            say("sub %s: reset from :%d (%s)", s->name, C.sse_ports[pi], m.data);
        } else if (strcmp(type, "error") == 0) {
            atomic_fetch_add(&s->errors, 1);
            say("sub %s: error frame from :%d: %.200s", s->name, C.sse_ports[pi], m.data);
        } /* subscribed, pong: nothing to record */
        json_decref(o);
    }
    tu_ws_close(&w);
    return 1;
}

/* The instance's live position (its /readyz "position"), -1 when it does not answer. */
static long long sse_position(int port)
{
    char url[96];
    tu_resp_t r;
    long long pos = -1;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/readyz", port);
    if (tu_http("GET", url, NULL, NULL, NULL, 0, &r) == 0 && r.status == 200) {
        json_t *o = json_loads(r.body, 0, NULL);
        if (json_is_integer(json_object_get(o, "position")))
            pos = json_integer_value(json_object_get(o, "position"));
        json_decref(o);
    }
    tu_resp_free(&r);
    return pos;
}

static void *sub_main(void *arg)
{
    struct sub *s = arg;
    int pi = s->home;
    if (s->late) {
        long long join = now_ms() + (long long)(C.late_s * 1000);
        while (!atomic_load(&stop_subs) && now_ms() < join)
            tu_sleep_ms(100);
        while (!atomic_load(&stop_subs) && (s->start = sse_position(C.sse_ports[pi])) < 0)
            tu_sleep_ms(200);
        if (s->start < 0)
            return NULL;
        for (int i = 0; i < MAX_SUB_CHANNELS; i++) {
            s->last[i] = s->start;
            atomic_store(&s->maxseq[i], s->start);
        }
        say("sub %s: joins on :%d from position %lld", s->name, C.sse_ports[pi], s->start);
    }
    atomic_store(&s->started, 1);
    while (!atomic_load(&stop_subs)) {
        long long deadline = s->roam ? now_ms() + rand_between(C.disc_min_ms, C.disc_max_ms) : 0;
        int ok = s->kind == K_WS ? ws_session(s, pi, deadline) : http_session(s, pi, deadline);
        if (atomic_load(&stop_subs))
            break;
        int forced = ok && deadline != 0 && now_ms() >= deadline;
        if (ok && !forced) {
            s->down_since = now_ms();
            say("sub %s: stream from :%d ended", s->name, C.sse_ports[pi]);
        } else if (!ok) {
            if (s->down_since == 0)
                s->down_since = now_ms();
            s->refused++;
        }
        if (s->roam && C.nsse > 1)
            pi = (pi + 1) % C.nsse;
        if (!forced)
            tu_sleep_ms(200);
    }
    return NULL;
}

/* ---- the abusive clients (--abuse) ----------------------------------------------------------- */

/* While the load runs (through the faults), on 127.0.0.1 only, bounded in count and rate:
 *   - --abuse WebSockets (one per instance in turn) that subscribe to "general" with history 1000
 *     and unsubscribe, alternately, 8 messages a second (under the 10/s rate limit), and never read:
 *     sse must cut each off (SLUICE_SSE_OUT_MAX_BYTES); they reconnect 1 s after;
 *   - connect-and-drop: GET /v1/stream?channels=general&since=1 sent and the socket closed at once
 *     (every other one with a reset), 5 a second;
 *   - h2c attempts, one a second, on each instance and the api in turn: the HTTP/2 preface (want
 *     HTTP/1.1 400) and a GET /healthz with "Upgrade: h2c" (want an HTTP/1.1 answer, not 101).
 *     Anything else is an anomaly; so is a connection that is accepted twice in a row and closed
 *     without an answer (once may be a service being killed).
 * None of this is accounted with the subscribers: their accounting is unchanged. */

#define ABUSE_WS_MAX 8
#define ABUSE_WS_SESSIONS_MAX 200   /* WebSocket sessions in all */
#define ABUSE_WS_SESSION_MAX_MS 30000 /* one never cut off within this is closed (and counted) */
#define ABUSE_DROP_PER_S 5
#define ABUSE_DROP_MAX 2000
#define ABUSE_H2C_MAX 600

static int abuse_ws = 0; /* --abuse: never-reading WebSockets at a time (0: no abuse) */

struct abuse_ws_state {
    tu_ws_t w;
    int open, pi, nsent;
    long long opened_at, next_send, next_open;
};

static struct abuse {
    long ws_sessions, ws_refused, ws_cut, ws_uncut, ws_msgs, ws_open_at_end;
    long long cut_ms[ABUSE_WS_SESSIONS_MAX];
    long drop_sent, drop_unreachable;
    long h2_preface_400, h2c_http11, h2_unreachable, h2_noanswer_once, h2_anomalies;
    long h2c_status[6]; /* answers to the h2c upgrade by class: 1xx..5xx */
} A;

static int cmp_ms(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static int api_port(void)
{
    const char *p = strrchr(C.api, ':');
    return p != NULL ? atoi(p + 1) : 0;
}

/* The peer closed (or reset) a socket we do not read: poll without consuming anything. sse's
 * sluice_sse_slow_client_disconnects_total (chaos.sh prints it) tells its cut-offs from the ends
 * of an instance that a fault killed. */
static int peer_closed(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

/* One raw exchange: sends req, reads until the end of an answer's head, the peer closes or 3 s.
 * The bytes read (NUL-terminated, in buf), 0 when none, -1 when it could not connect. */
static int raw_exchange(int port, const char *req, size_t len, char *buf, size_t size)
{
    long long deadline = tu_now_ms() + 3000;
    int fd = tu_net_connect(port, 0, deadline);
    size_t used = 0;
    if (fd < 0)
        return -1;
    if (tu_net_send_all(fd, req, len, deadline) == 0) {
        while (used + 1 < size && memmem(buf, used, "\r\n\r\n", 4) == NULL) {
            if (tu_net_wait(fd, POLLIN, deadline) != 1)
                break;
            ssize_t n = recv(fd, buf + used, size - 1 - used, 0);
            if (n <= 0)
                break;
            used += (size_t)n;
        }
    }
    buf[used] = '\0';
    close(fd);
    return (int)used;
}

static void abuse_h2(int port, int upgrade)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    char h2c[400], buf[2048];
    const char *req = preface;
    size_t len = sizeof(preface) - 1;
    if (upgrade) {
        len = (size_t)snprintf(h2c, sizeof(h2c),
                               "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                               "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
                               port);
        req = h2c;
    }
    int n = raw_exchange(port, req, len, buf, sizeof(buf));
    if (n == 0) { /* accepted and closed unanswered: once may be a kill; twice is an anomaly */
        A.h2_noanswer_once++;
        n = raw_exchange(port, req, len, buf, sizeof(buf));
        if (n == 0) {
            A.h2_anomalies++;
            say("abuse: %s on :%d: accepted twice and closed without an answer", upgrade ? "Upgrade: h2c" : "HTTP/2 preface",
                port);
            return;
        }
    }
    if (n < 0) {
        A.h2_unreachable++;
        return;
    }
    int status = 0;
    int ok = strncmp(buf, "HTTP/1.1 ", 9) == 0 && sscanf(buf + 9, "%3d", &status) == 1;
    if (ok && !upgrade)
        ok = status == 400;
    if (ok && upgrade)
        ok = status != 101 && strcasestr(buf, "\nUpgrade:") == NULL;
    if (!ok) {
        A.h2_anomalies++;
        say("abuse: %s on :%d answered: %.60s", upgrade ? "Upgrade: h2c" : "HTTP/2 preface", port, buf);
    } else if (upgrade) {
        A.h2c_http11++;
        A.h2c_status[status / 100 <= 5 ? status / 100 : 0]++;
    } else {
        A.h2_preface_400++;
    }
}

static void abuse_drop(int port, int reset)
{
    char req[200];
    int n = snprintf(req, sizeof(req), "GET /v1/stream?channels=general&since=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n",
                     port);
    int fd = tu_net_connect(port, 0, tu_now_ms() + 1000);
    if (fd < 0) {
        A.drop_unreachable++;
        return;
    }
    if (tu_net_send_all(fd, req, (size_t)n, tu_now_ms() + 1000) == 0)
        A.drop_sent++;
    else
        A.drop_unreachable++;
    if (reset) {
        struct linger l = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    }
    close(fd);
}

static void abuse_ws_end(struct abuse_ws_state *a, int cut)
{
    long long now = tu_now_ms();
    if (cut) {
        if (A.ws_cut < ABUSE_WS_SESSIONS_MAX)
            A.cut_ms[A.ws_cut] = now - a->opened_at;
        A.ws_cut++;
    } else {
        A.ws_uncut++;
        say("abuse: WebSocket on :%d not cut off after %.1f s (%d messages sent, never read)", C.sse_ports[a->pi],
            (double)(now - a->opened_at) / 1000, a->nsent);
    }
    tu_ws_close(&a->w);
    a->open = 0;
    a->next_open = now + 1000;
}

static void *abuse_main(void *arg)
{
    (void)arg;
    static const char sub[] = "{\"command\":\"subscribe\",\"channel\":\"general\",\"history\":1000}";
    static const char unsub[] = "{\"command\":\"unsubscribe\",\"channel\":\"general\"}";
    struct abuse_ws_state ws[ABUSE_WS_MAX];
    int nws = abuse_ws < ABUSE_WS_MAX ? abuse_ws : ABUSE_WS_MAX, ports[MAX_SSE + 1], nports = 0, h2i = 0, dropi = 0;
    long long next_drop = tu_now_ms(), next_h2 = tu_now_ms() + 500;
    memset(ws, 0, sizeof(ws));
    for (int i = 0; i < C.nsse; i++)
        ports[nports++] = C.sse_ports[i];
    if (api_port() > 0)
        ports[nports++] = api_port();
    for (int i = 0; i < nws; i++)
        ws[i].pi = i % C.nsse;
    say("abuse: %d never-reading WebSocket(s) (subscribe history 1000 / unsubscribe, 8 msg/s), %d connect-and-drop/s, "
        "1 h2c attempt/s on %d port(s)",
        nws, ABUSE_DROP_PER_S, nports);
    while (!atomic_load(&stop_load)) {
        long long now = tu_now_ms();
        for (int i = 0; i < nws; i++) {
            struct abuse_ws_state *a = &ws[i];
            if (!a->open) {
                if (now < a->next_open || A.ws_sessions >= ABUSE_WS_SESSIONS_MAX)
                    continue;
                if (tu_ws_open_rcvbuf(&a->w, C.sse_ports[a->pi], "/v1/ws", 4096, 2000) != 0) {
                    tu_ws_close(&a->w);
                    A.ws_refused++;
                    a->next_open = tu_now_ms() + 1000;
                    continue;
                }
                A.ws_sessions++;
                a->open = 1;
                a->nsent = 0;
                a->opened_at = a->next_send = tu_now_ms();
                continue;
            }
            if (peer_closed(a->w.fd)) {
                abuse_ws_end(a, 1);
                a->pi = (a->pi + 1) % C.nsse;
            } else if (now - a->opened_at >= ABUSE_WS_SESSION_MAX_MS) {
                abuse_ws_end(a, 0);
            } else if (now >= a->next_send) {
                if (tu_ws_send_text(&a->w, a->nsent % 2 ? unsub : sub) != 0) {
                    abuse_ws_end(a, 1);
                    a->pi = (a->pi + 1) % C.nsse;
                    continue;
                }
                a->nsent++;
                A.ws_msgs++;
                a->next_send += 125; /* 8 a second */
                if (a->next_send < now)
                    a->next_send = now + 125;
            }
        }
        if (now >= next_drop && A.drop_sent + A.drop_unreachable < ABUSE_DROP_MAX) {
            abuse_drop(C.sse_ports[dropi % C.nsse], dropi % 2);
            dropi++;
            next_drop += 1000 / ABUSE_DROP_PER_S;
            if (next_drop < now)
                next_drop = now + 1000 / ABUSE_DROP_PER_S;
        }
        if (now >= next_h2 && h2i < ABUSE_H2C_MAX) {
            abuse_h2(ports[(h2i / 2) % nports], h2i % 2);
            h2i++;
            next_h2 = tu_now_ms() + 1000;
        }
        tu_sleep_ms(20);
    }
    for (int i = 0; i < nws; i++)
        if (ws[i].open) {
            A.ws_open_at_end++;
            tu_ws_close(&ws[i].w);
        }
    return NULL;
}

/* The abusers' lines of the final summary; 1 when something was wrong. */
static int report_abuse(void)
{
    long long *c = A.cut_ms;
    long n = A.ws_cut < ABUSE_WS_SESSIONS_MAX ? A.ws_cut : ABUSE_WS_SESSIONS_MAX;
    int ws_ok = A.ws_cut > 0 && A.ws_uncut == 0, h2_ok = A.h2_anomalies == 0 && A.h2_preface_400 + A.h2c_http11 > 0;
    qsort(c, (size_t)n, sizeof(*c), cmp_ms);
    printf("\nabuse: websocket (never reads; subscribe history 1000 / unsubscribe at 8 msg/s): %ld sessions, %ld "
           "messages sent, %ld closed by the server (cut off, or its instance killed; after s: min %.1f median %.1f "
           "max %.1f), %ld not closed within %d s, %ld open at the end, %ld refused connects: %s\n",
           A.ws_sessions, A.ws_msgs, A.ws_cut, n ? (double)c[0] / 1000 : 0, n ? (double)c[n / 2] / 1000 : 0,
           n ? (double)c[n - 1] / 1000 : 0, A.ws_uncut, ABUSE_WS_SESSION_MAX_MS / 1000, A.ws_open_at_end, A.ws_refused,
           ws_ok ? "ok" : "FAIL");
    printf("abuse: connect-and-drop GET /v1/stream?channels=general&since=1: %ld sent and closed (half with a reset), "
           "%ld could not connect\n",
           A.drop_sent, A.drop_unreachable);
    printf("abuse: h2c: HTTP/2 preface answered HTTP/1.1 400 %ld times; Upgrade: h2c answered over HTTP/1.1 %ld times "
           "(2xx %ld, 4xx %ld, 5xx %ld); could not connect %ld, no answer once %ld; anomalies %ld: %s\n",
           A.h2_preface_400, A.h2c_http11, A.h2c_status[2], A.h2c_status[4], A.h2c_status[5], A.h2_unreachable,
           A.h2_noanswer_once, A.h2_anomalies, h2_ok ? "ok" : "FAIL");
    return !(ws_ok && h2_ok);
}

/* ---- accounting ----------------------------------------------------------------------------- */

struct row {
    long long seq;
    char id[37];
    char channel[72];
    char source[17];
    long lg;  /* the load message it is (from its text), -1: not one */
    long long stored_ms; /* stored_at: when its transaction started */
};

struct db {
    struct row *rows; /* by seq - 1; rows[i].seq == 0 for a seq held by an event or missing */
    long long maxseq, nrows, nevents, feed_last;
    long long bot_rows, bot_distinct, other_rows;
};

static int load_db(PGconn *c, struct db *d)
{
    PGresult *r;
    char prefix[64];
    memset(d, 0, sizeof(*d));
    snprintf(prefix, sizeof(prefix), "chaos %s #", L.run);
    r = PQexec(c, "SELECT (SELECT last_seq FROM sluice_feed WHERE id = 1),"
                  " (SELECT count(*) FROM message_events), (SELECT coalesce(max(seq), 0) FROM message_events),"
                  " (SELECT count(*) FROM messages WHERE source = 'bot'),"
                  " (SELECT count(DISTINCT body) FROM messages WHERE source = 'bot')");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        say("database: %s", PQerrorMessage(c));
        PQclear(r);
        return -1;
    }
    d->feed_last = atoll(PQgetvalue(r, 0, 0));
    d->nevents = atoll(PQgetvalue(r, 0, 1));
    long long evmax = atoll(PQgetvalue(r, 0, 2));
    d->bot_rows = atoll(PQgetvalue(r, 0, 3));
    d->bot_distinct = atoll(PQgetvalue(r, 0, 4));
    PQclear(r);
    r = PQexec(c, "SELECT seq, id, channel, source, body, (extract(epoch FROM stored_at) * 1000)::int8 FROM messages"
                  " ORDER BY seq");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        say("database: %s", PQerrorMessage(c));
        PQclear(r);
        return -1;
    }
    d->nrows = PQntuples(r);
    d->maxseq = d->nrows > 0 ? atoll(PQgetvalue(r, (int)d->nrows - 1, 0)) : 0;
    if (evmax > d->maxseq)
        d->maxseq = evmax;
    d->rows = xcalloc((size_t)d->maxseq + 1, sizeof(*d->rows));
    for (int i = 0; i < PQntuples(r); i++) {
        long long seq = atoll(PQgetvalue(r, i, 0));
        struct row *w = &d->rows[seq - 1];
        w->seq = seq;
        snprintf(w->id, sizeof(w->id), "%s", PQgetvalue(r, i, 1));
        snprintf(w->channel, sizeof(w->channel), "%s", PQgetvalue(r, i, 2));
        snprintf(w->source, sizeof(w->source), "%s", PQgetvalue(r, i, 3));
        const char *body = PQgetvalue(r, i, 4);
        w->stored_ms = atoll(PQgetvalue(r, i, 5));
        w->lg = -1;
        if (strncmp(body, prefix, strlen(prefix)) == 0)
            w->lg = atol(body + strlen(prefix));
        else if (strcmp(w->source, "bot") != 0)
            d->other_rows++;
    }
    PQclear(r);
    return 0;
}

static PGconn *db_connect(void)
{
    PGconn *c = PQconnectdb(C.db_url);
    if (PQstatus(c) != CONNECTION_OK) {
        say("database: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* Waits until the feed stops moving and every accepted load message is stored (or timeout). */
static void wait_settled(void)
{
    long long deadline = now_ms() + (long long)(C.settle_s * 1000), last = -1, since = now_ms();
    long accepted = atomic_load(&L.accepted);
    char prefix[64], sql[300];
    snprintf(prefix, sizeof(prefix), "chaos %s #%%", L.run);
    snprintf(sql, sizeof(sql), "SELECT (SELECT last_seq FROM sluice_feed WHERE id = 1),"
                               " (SELECT count(*) FROM messages WHERE body LIKE '%s')", prefix);
    while (now_ms() < deadline) {
        PGconn *c = db_connect();
        long long seq = -1, lg = -1;
        if (c != NULL) {
            PGresult *r = PQexec(c, sql);
            if (PQresultStatus(r) == PGRES_TUPLES_OK) {
                seq = atoll(PQgetvalue(r, 0, 0));
                lg = atoll(PQgetvalue(r, 0, 1));
            }
            PQclear(r);
            PQfinish(c);
        }
        if (seq != last) {
            last = seq;
            since = now_ms();
        } else if (seq >= 0 && lg >= accepted && now_ms() - since >= 3000) {
            say("database settled at seq %lld (%lld load rows for %ld accepted)", seq, lg, accepted);
            return;
        }
        tu_sleep_ms(500);
    }
    say("database did not settle within %.0f s (last seq %lld)", C.settle_s, last);
}

static int in_set(const struct sub *s, const char *ch)
{
    if (s->nchan == 0)
        return 1;
    for (int i = 0; i < s->nchan; i++)
        if (strcmp(s->chan[i], ch) == 0)
            return 1;
    return 0;
}

/* The highest stored seq a subscriber (channel ch of a WebSocket one, else all of its) must get. */
static long long sub_target(const struct sub *s, const struct db *d, int ch)
{
    for (long long q = d->maxseq; q > s->start; q--) {
        const struct row *w = &d->rows[q - 1];
        if (w->seq == 0)
            continue;
        if (s->kind == K_WS ? strcmp(w->channel, s->chan[ch]) == 0 : in_set(s, w->channel))
            return q;
    }
    return s->start;
}

static int sub_caught_up(struct sub *s, const struct db *d)
{
    int n = s->kind == K_WS ? s->nchan : 1;
    for (int i = 0; i < n; i++)
        if (atomic_load(&s->maxseq[i]) < sub_target(s, d, i))
            return 0;
    return 1;
}

struct subres {
    long long expected, received, missing, dups, disorder, unexpected, badid;
};

/* Compares one channel track (ch of a WebSocket subscriber, or -1: the whole stream) with the
 * database: what it must have got is every stored message of its channels with seq > start. */
static void check_track(const struct sub *s, const struct db *d, int ch, struct subres *res)
{
    unsigned char *seen = xcalloc((size_t)d->maxseq + 2, 1);
    long long prev = s->start;
    for (size_t i = 0; i < s->n; i++) {
        const struct rcpt *r = &s->r[i];
        if (ch >= 0 && r->ch != ch)
            continue;
        res->received++;
        const struct row *w = r->seq >= 1 && r->seq <= d->maxseq ? &d->rows[r->seq - 1] : NULL;
        int ok_channel = w != NULL && w->seq != 0 && (ch >= 0 ? strcmp(w->channel, s->chan[ch]) == 0 : in_set(s, w->channel));
        if (!ok_channel || r->seq <= s->start) {
            res->unexpected++;
            if (res->unexpected <= 3)
                say("sub %s: got seq %lld, which is not a stored message of its channels after %lld", s->name, r->seq,
                    s->start);
            continue;
        }
        if (seen[r->seq])
            res->dups++;
        else if (r->seq < prev)
            res->disorder++;
        seen[r->seq] = 1;
        if (r->seq > prev)
            prev = r->seq;
        if (strcmp(r->id, w->id) != 0) {
            res->badid++;
            if (res->badid <= 3)
                say("sub %s: seq %lld came with id %s, stored with %s", s->name, r->seq, r->id, w->id);
        }
    }
    for (long long q = s->start + 1; q <= d->maxseq; q++) {
        const struct row *w = &d->rows[q - 1];
        if (w->seq == 0 || !(ch >= 0 ? strcmp(w->channel, s->chan[ch]) == 0 : in_set(s, w->channel)))
            continue;
        res->expected++;
        if (!seen[q]) {
            res->missing++;
            if (res->missing <= 3)
                say("sub %s: never got seq %lld (%s)", s->name, q, w->channel);
        }
    }
    free(seen);
}

/* The bot's last summary line: sent= and accepted= of its final=true line. 0 when found. */
static int bot_summary(const char *path, long long *sent, long long *accepted)
{
    FILE *f = fopen(path, "r");
    char line[2048];
    int found = 0;
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        const char *ps = strstr(line, " sent="), *pa = strstr(line, " accepted=");
        if (strstr(line, "event=summary") == NULL || strstr(line, "final=true") == NULL || ps == NULL || pa == NULL)
            continue;
        *sent = atoll(ps + 6);
        *accepted = atoll(pa + 10);
        found = 1;
    }
    fclose(f);
    return found ? 0 : -1;
}

struct fault {
    char name[48];
    long long t_fault, t_restart, t_ready, t_allready;
    int port;
};

static int read_faults(const char *path, struct fault *f, int max)
{
    FILE *fp = path != NULL ? fopen(path, "r") : NULL;
    char line[256];
    int n = 0;
    if (fp == NULL)
        return 0;
    while (n < max && fgets(line, sizeof(line), fp) != NULL) {
        if (sscanf(line, "%47s %lld %lld %lld %lld %d", f[n].name, &f[n].t_fault, &f[n].t_restart, &f[n].t_ready,
                   &f[n].t_allready, &f[n].port) == 6)
            n++;
    }
    fclose(fp);
    return n;
}

static void fmt_s(char *buf, size_t size, long long ms)
{
    if (ms < 0)
        snprintf(buf, size, "-");
    else
        snprintf(buf, size, "%.2f", (double)ms / 1000);
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static void report_faults(struct sub *subs, int nsubs, const struct db *d)
{
    struct fault f[MAX_FAULTS];
    int n = read_faults(C.faults, f, MAX_FAULTS);
    if (n == 0)
        return;
    printf("\nfaults: down = fault to restart; then seconds after the restart until: ready = its /readyz 200 (a\n"
           "server: started), allready = every service's, first202 = a load POST answered 202, firststore = a row\n"
           "stored, firstdeliv = a delivery to a subscriber (of the instance, for an sse fault); no202max and\n"
           "nodelmax = longest time without a 202 / a delivery; counts = the load generator's answers; all from\n"
           "the fault to the next one\n");
    printf("%-16s %6s %6s %8s %8s %9s %10s %8s %8s %6s %5s %5s %5s\n", "fault", "down", "ready", "allready",
           "first202", "firststore", "firstdeliv", "no202max", "nodelmax", "202", "429", "503", "noans");
    for (int k = 0; k < n; k++) {
        long long from = f[k].t_fault, to = k + 1 < n ? f[k + 1].t_fault : L.end_ms;
        long long c202 = 0, c429 = 0, c503 = 0, cnone = 0, first202 = -1, last202 = from, gap202 = 0;
        for (size_t i = 0; i < L.natt; i++) {
            const struct attempt *a = &L.att[i];
            if (a->ts < from || a->ts >= to)
                continue;
            if (a->status == 202) {
                c202++;
                if (a->ts - last202 > gap202)
                    gap202 = a->ts - last202;
                last202 = a->ts;
                if (first202 < 0 && a->ts >= f[k].t_restart)
                    first202 = a->ts - f[k].t_restart;
            } else if (a->status == 429) {
                c429++;
            } else if (a->status == 503) {
                c503++;
            } else if (a->status == 0) {
                cnone++;
            }
        }
        if (to - last202 > gap202)
            gap202 = to - last202;
        /* readers: the first delivery after the restart (through the restarted instance when the
         * fault names one) and the longest silence of all deliveries in the window */
        long long firstdel = -1, gapdel = 0;
        long long *ts = NULL;
        size_t nts = 0, tscap = 0;
        for (int j = 0; j < nsubs; j++) {
            for (size_t i = 0; i < subs[j].n; i++) {
                const struct rcpt *r = &subs[j].r[i];
                if (r->ts < from || r->ts >= to)
                    continue;
                grow((void **)&ts, &tscap, nts, sizeof(*ts));
                ts[nts++] = r->ts;
                if (r->ts >= f[k].t_restart && (f[k].port == 0 || C.sse_ports[(int)r->port] == f[k].port) &&
                    (firstdel < 0 || r->ts - f[k].t_restart < firstdel))
                    firstdel = r->ts - f[k].t_restart;
            }
        }
        /* the receipts come per subscriber, each in time order: a longest silence needs them merged */
        if (nts > 0) {
            qsort(ts, nts, sizeof(*ts), cmp_ll);
            long long prev = from;
            for (size_t i = 0; i < nts; i++) {
                if (ts[i] - prev > gapdel)
                    gapdel = ts[i] - prev;
                prev = ts[i];
            }
            if (to - prev > gapdel)
                gapdel = to - prev;
        } else {
            gapdel = to - from;
        }
        free(ts);
        long long firststore = -1;
        for (long long q = 0; q < d->maxseq; q++) {
            const struct row *w = &d->rows[q];
            if (w->seq != 0 && w->stored_ms >= f[k].t_restart && w->stored_ms < to &&
                (firststore < 0 || w->stored_ms - f[k].t_restart < firststore))
                firststore = w->stored_ms - f[k].t_restart;
        }
        char down[16], ready[16], aready[16], f202[16], fsto[16], fdel[16], g202[16], gdel[16];
        fmt_s(down, sizeof(down), f[k].t_restart - f[k].t_fault);
        fmt_s(ready, sizeof(ready), f[k].t_ready >= f[k].t_restart ? f[k].t_ready - f[k].t_restart : -1);
        fmt_s(aready, sizeof(aready), f[k].t_allready >= f[k].t_restart ? f[k].t_allready - f[k].t_restart : -1);
        fmt_s(fsto, sizeof(fsto), firststore);
        fmt_s(f202, sizeof(f202), first202);
        fmt_s(fdel, sizeof(fdel), firstdel);
        fmt_s(g202, sizeof(g202), gap202);
        fmt_s(gdel, sizeof(gdel), gapdel);
        printf("%-16s %6s %6s %8s %8s %9s %10s %8s %8s %6lld %5lld %5lld %5lld\n", f[k].name, down, ready, aready,
               f202, fsto, fdel, g202, gdel, c202, c429, c503, cnone);
    }
}


/* ---- main ----------------------------------------------------------------------------------- */

static struct sub SUBS[] = {
    {.name = "sse-steady", .kind = K_SSE, .home = 0, .chan = {"general", "news"}, .nchan = 2},
    {.name = "ndjson-steady", .kind = K_NDJSON, .home = 1},
    {.name = "ws-steady", .kind = K_WS, .home = 0, .chan = {"random", "help"}, .nchan = 2},
    {.name = "sse-resume", .kind = K_SSE, .home = 1, .roam = 1},
    {.name = "ndjson-resume", .kind = K_NDJSON, .home = 0, .roam = 1, .chan = {"news", "lg"}, .nchan = 2},
    {.name = "ws-resume", .kind = K_WS, .home = 1, .roam = 1, .chan = {"general", "lg"}, .nchan = 2},
    {.name = "ndjson-late", .kind = K_NDJSON, .home = 1, .late = 1, .chan = {"random", "general"}, .nchan = 2},
};
#define NSUBS ((int)(sizeof(SUBS) / sizeof(SUBS[0])))

static void progress(const char *phase)
{
    long recv = 0, rec = 0, bad = 0;
    for (int i = 0; i < NSUBS; i++) {
        recv += atomic_load(&SUBS[i].recv);
        rec += atomic_load(&SUBS[i].sessions);
        bad += atomic_load(&SUBS[i].dups) + atomic_load(&SUBS[i].disorder) + atomic_load(&SUBS[i].resets) +
               atomic_load(&SUBS[i].errors);
    }
    say("%s: load made=%ld 202=%ld 429=%ld 503=%ld noans=%ld waiting=%ld failed=%ld | subs recv=%ld sessions=%ld "
        "anomalies=%ld",
        phase, atomic_load(&L.sent), atomic_load(&L.accepted), atomic_load(&L.n429), atomic_load(&L.n503),
        atomic_load(&L.nnone), atomic_load(&L.waiting), atomic_load(&L.failed), recv, rec, bad);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: sl_chaos --api URL --sse PORT[,PORT...] --db URL [options]\n"
            "  --rate N            load messages per second (100)\n"
            "  --concurrency N     load requests in flight (16)\n"
            "  --count N           most load messages (1000000)\n"
            "  --duration S        stop the load after S seconds (0: on SIGTERM/SIGINT only)\n"
            "  --drain S           retry pending messages for up to S seconds after the stop (30)\n"
            "  --settle S          wait up to S seconds for the database and the subscribers (60)\n"
            "  --disconnect MIN-MAX  ms between forced disconnects of resuming subscribers (2000-6000)\n"
            "  --late S            the late subscriber joins after S seconds (10)\n"
            "  --faults FILE       fault lines 'name t_fault_ms t_restart_ms t_ready_ms port' (read at the end)\n"
            "  --bot-log FILE      the bot's log (its final summary is accounted for)\n"
            "  --t0 MS             wall-clock ms of the run's start, for the printed times\n"
            "  --progress S        seconds between progress lines (5)\n"
            "  --abuse N           N never-reading WebSockets, connect-and-drop streams and h2c attempts while\n"
            "                      the load runs (0: none; at most 8)\n");
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    static const struct option opts[] = {
        {"api", 1, NULL, 'a'},      {"sse", 1, NULL, 's'},        {"db", 1, NULL, 'd'},
        {"rate", 1, NULL, 'r'},     {"concurrency", 1, NULL, 'c'}, {"count", 1, NULL, 'n'},
        {"duration", 1, NULL, 'D'}, {"drain", 1, NULL, 'R'},      {"settle", 1, NULL, 'S'},
        {"disconnect", 1, NULL, 'x'}, {"late", 1, NULL, 'l'},     {"faults", 1, NULL, 'f'},
        {"bot-log", 1, NULL, 'b'},  {"t0", 1, NULL, 't'},         {"progress", 1, NULL, 'p'},
        {"abuse", 1, NULL, 'A'},    {NULL, 0, NULL, 0},
    };
    int o;
    char *p;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'a': C.api = optarg; break;
        case 's':
            for (p = optarg; *p != '\0' && C.nsse < MAX_SSE;) {
                C.sse_ports[C.nsse++] = (int)strtol(p, &p, 10);
                if (*p == ',')
                    p++;
                else if (*p != '\0')
                    usage();
            }
            break;
        case 'd': C.db_url = optarg; break;
        case 'r': C.rate = atof(optarg); break;
        case 'c': C.concurrency = atoi(optarg); break;
        case 'n': C.count = atol(optarg); break;
        case 'D': C.duration_s = atof(optarg); break;
        case 'R': C.drain_s = atof(optarg); break;
        case 'S': C.settle_s = atof(optarg); break;
        case 'x':
            if (sscanf(optarg, "%d-%d", &C.disc_min_ms, &C.disc_max_ms) != 2)
                usage();
            break;
        case 'l': C.late_s = atof(optarg); break;
        case 'f': C.faults = optarg; break;
        case 'b': C.bot_log = optarg; break;
        case 't': C.t0_ms = atoll(optarg); break;
        case 'p': C.progress_s = atof(optarg); break;
        case 'A': abuse_ws = atoi(optarg); break;
        default: usage();
        }
    }
    if (C.api == NULL || C.db_url == NULL || C.nsse == 0 || !(C.rate > 0) || C.concurrency < 1 || C.count < 1 ||
        C.disc_min_ms < 100 || C.disc_max_ms < C.disc_min_ms || !(C.progress_s > 0) ||
        abuse_ws < 0 || abuse_ws > ABUSE_WS_MAX)
        usage();
    for (int i = 0; i < C.nsse; i++)
        if (C.sse_ports[i] <= 0 || C.sse_ports[i] > 65535)
            usage();
}

/* Waits for SIGTERM/SIGINT (or the load to end by itself), printing progress. */
static void run_until_stopped(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    long long next = now_ms() + (long long)(C.progress_s * 1000);
    while (!atomic_load(&load_done)) {
        struct timespec ts = {0, 200 * 1000000L};
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT) {
            say("%s: stopping the load", sig == SIGTERM ? "SIGTERM" : "SIGINT");
            return;
        }
        if (now_ms() >= next) {
            progress("running");
            next += (long long)(C.progress_s * 1000);
        }
    }
}

int main(int argc, char **argv)
{
    sigset_t set;
    int failed = 0;
    parse_args(argc, argv);
    if (C.t0_ms == 0)
        C.t0_ms = now_ms();
    setvbuf(stdout, NULL, _IOLBF, 0);
    snprintf(L.run, sizeof(L.run), "%lx%x", (unsigned long)time(NULL), (unsigned)getpid());
    rng_state ^= (unsigned long long)now_ms() * 0x2545f4914f6cdd1dULL;
    L.msgs = xcalloc((size_t)C.count, sizeof(*L.msgs));
    L.waitq = xcalloc((size_t)C.count, sizeof(*L.waitq));
    curl_global_init(CURL_GLOBAL_DEFAULT);
    json_object_seed(0);
    tu_http_timeout_ms = 2000;

    /* signals go to the main thread's sigtimedwait, never to the workers */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    say("run %s: load %.0f msg/s x %d to %s, %d subscribers on %d sse instance(s)", L.run, C.rate, C.concurrency,
        C.api, NSUBS, C.nsse);
    pthread_t load_th;
    pthread_create(&load_th, NULL, load_main, NULL);
    for (int i = 0; i < NSUBS; i++) {
        SUBS[i].home %= C.nsse;
        pthread_create(&SUBS[i].th, NULL, sub_main, &SUBS[i]);
    }
    pthread_t abuse_th;
    if (abuse_ws > 0)
        pthread_create(&abuse_th, NULL, abuse_main, NULL);
    run_until_stopped();
    atomic_store(&stop_load, 1);
    if (abuse_ws > 0)
        pthread_join(abuse_th, NULL);
    while (!atomic_load(&load_done)) {
        tu_sleep_ms(200);
        static long long next;
        if (now_ms() >= next) {
            if (next != 0)
                progress("draining");
            next = now_ms() + (long long)(C.progress_s * 1000);
        }
    }
    pthread_join(load_th, NULL);
    progress("load ended");

    /* the database, then the subscribers, settle */
    wait_settled();
    PGconn *db = db_connect();
    struct db d;
    if (db == NULL || load_db(db, &d) != 0) {
        atomic_store(&stop_subs, 1);
        for (int i = 0; i < NSUBS; i++)
            pthread_join(SUBS[i].th, NULL);
        say("could not read the database: no accounting");
        return 2;
    }
    long long deadline = now_ms() + (long long)(C.settle_s * 1000);
    int lagging;
    do {
        lagging = 0;
        for (int i = 0; i < NSUBS; i++)
            lagging += atomic_load(&SUBS[i].started) && !sub_caught_up(&SUBS[i], &d);
        if (lagging > 0)
            tu_sleep_ms(200);
    } while (lagging > 0 && now_ms() < deadline);
    if (lagging > 0)
        say("%d subscriber(s) did not reach the end of the feed within %.0f s", lagging, C.settle_s);
    else
        say("every subscriber reached the end of its channels (feed seq %lld)", d.maxseq);
    atomic_store(&stop_subs, 1);
    for (int i = 0; i < NSUBS; i++)
        pthread_join(SUBS[i].th, NULL);
    free(d.rows);
    if (load_db(db, &d) != 0) { /* the final picture, after everything stopped */
        PQfinish(db);
        return 2;
    }
    PQfinish(db);

    /* the feed: seq 1..N, every position a message or an event, the counter at N */
    long long holes = 0;
    for (long long q = 1; q <= d.maxseq; q++)
        holes += d.rows[q - 1].seq == 0;
    holes -= d.nevents;
    int feed_ok = holes == 0 && d.feed_last == d.maxseq;
    printf("\nfeed: %lld messages + %lld events, seq 1..%lld, sluice_feed.last_seq %lld, holes %lld: %s\n", d.nrows,
           d.nevents, d.maxseq, d.feed_last, holes, feed_ok ? "ok" : "FAIL");
    failed |= !feed_ok;

    /* the load generator's messages */
    int *copies = xcalloc((size_t)L.nmsgs + 1, sizeof(*copies));
    long long unknown = 0, lost = 0, dup_acc = 0, dup_other = 0, badid = 0, stored_unacc = 0, acc = 0, never = 0;
    for (long long q = 0; q < d.maxseq; q++) {
        const struct row *w = &d.rows[q];
        if (w->seq == 0 || w->lg < 0)
            continue;
        if (w->lg >= L.nmsgs) {
            unknown++;
            continue;
        }
        copies[w->lg]++;
        const struct lgmsg *m = &L.msgs[w->lg];
        if (m->state == M_ACCEPTED && strcmp(m->id, w->id) != 0) {
            badid++;
            if (badid <= 3)
                say("load message %ld: answered 202 with id %s, stored (seq %lld) as %s", w->lg, m->id, w->seq, w->id);
        }
    }
    for (long i = 0; i < L.nmsgs; i++) {
        const struct lgmsg *m = &L.msgs[i];
        if (m->state == M_ACCEPTED) {
            acc++;
            if (copies[i] == 0 && ++lost <= 5)
                say("load message %ld (id %s, 202 at +%.1f s after %u attempt(s)) is not stored", i, m->id,
                    (double)(m->accepted_ms - C.t0_ms) / 1000, m->attempts);
            if (copies[i] > 1 && ++dup_acc <= 5)
                say("load message %ld (id %s) is stored %d times", i, m->id, copies[i]);
        } else {
            never++;
            stored_unacc += copies[i] == 1;
            if (copies[i] > 1 && ++dup_other <= 5)
                say("load message %ld (never accepted, last status %ld) is stored %d times", i, m->last_status,
                    copies[i]);
        }
    }
    free(copies);
    long long attempts = (long long)L.natt;
    printf("load: %ld made, %lld requests, %lld accepted (202), %lld never accepted (%lld of them stored once), "
           "%ld failed (4xx); 429 %ld, 503 %ld, no answer %ld, other %ld\n",
           L.nmsgs, attempts, acc, never, stored_unacc, atomic_load(&L.failed), atomic_load(&L.n429),
           atomic_load(&L.n503), atomic_load(&L.nnone), atomic_load(&L.nother));
    printf("load: lost %lld, duplicated %lld (+%lld never accepted), id differs %lld, rows of no message %lld: %s\n",
           lost, dup_acc, dup_other, badid, unknown,
           lost + dup_acc + dup_other + badid + unknown == 0 && atomic_load(&L.failed) == 0 ? "ok" : "FAIL");
    failed |= lost + dup_acc + dup_other + badid + unknown != 0 || atomic_load(&L.failed) != 0;

    /* the bot's */
    if (C.bot_log != NULL) {
        long long sent = 0, accepted = 0;
        if (bot_summary(C.bot_log, &sent, &accepted) != 0) {
            printf("bot: no final summary in %s: FAIL\n", C.bot_log);
            failed = 1;
        } else {
            int ok = d.bot_rows >= accepted && d.bot_rows <= sent && d.bot_distinct == d.bot_rows;
            printf("bot: %lld sent, %lld accepted (its final summary); %lld rows, %lld distinct texts "
                   "(want accepted <= rows <= sent, no repeats): %s\n",
                   sent, accepted, d.bot_rows, d.bot_distinct, ok ? "ok" : "FAIL");
            failed |= !ok;
        }
    }
    if (d.other_rows > 0) {
        printf("rows of neither the load nor the bot: %lld: FAIL\n", d.other_rows);
        failed = 1;
    }

    /* the subscribers */
    printf("\n%-14s %-9s %-7s %6s %8s %8s %7s %5s %8s %10s %5s %8s %6s %6s  %s\n", "subscriber", "transport", "start",
           "from", "expected", "received", "missing", "dups", "disorder", "unexpected", "badid", "sessions", "resets",
           "errors", "channels");
    for (int i = 0; i < NSUBS; i++) {
        struct sub *s = &SUBS[i];
        struct subres r = {0};
        char chans[300], home[16];
        if (!atomic_load(&s->started)) {
            printf("%-14s never started\n", s->name);
            continue;
        }
        if (s->kind == K_WS) {
            for (int c = 0; c < s->nchan; c++)
                check_track(s, &d, c, &r);
        } else {
            check_track(s, &d, -1, &r);
        }
        channels_csv(s, chans, sizeof(chans));
        snprintf(home, sizeof(home), "%s:%d", s->roam ? "roam" : "", C.sse_ports[s->home]);
        long resets = atomic_load(&s->resets), errors = atomic_load(&s->errors);
        int ok = r.missing + r.dups + r.disorder + r.unexpected + r.badid + resets + errors == 0;
        printf("%-14s %-9s %-7s %6lld %8lld %8lld %7lld %5lld %8lld %10lld %5lld %8ld %6ld %6ld  %s %s\n", s->name,
               kind_names[s->kind], home, s->start, r.expected, r.received, r.missing, r.dups, r.disorder,
               r.unexpected, r.badid, atomic_load(&s->sessions), resets, errors, s->nchan ? chans : "(all)",
               ok ? "ok" : "FAIL");
        failed |= !ok;
    }
    if (abuse_ws > 0)
        failed |= report_abuse();
    report_faults(SUBS, NSUBS, &d);
    printf("\nRESULT: %s\n", failed ? "FAIL" : "PASS");

    for (int i = 0; i < NSUBS; i++)
        free(SUBS[i].r);
    free(d.rows);
    free(L.msgs);
    free(L.waitq);
    free(L.att);
    curl_global_cleanup();
    return failed ? 1 : 0;
}
