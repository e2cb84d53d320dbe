/*
 * A fake Mastodon instance for tests, on loopback, in threads of the test process. It speaks the
 * parts of the real protocol that sluice-ingest uses:
 *   - GET /api/v1/instance with configuration.urls.streaming (ws://127.0.0.1:<streaming port>; the
 *     streaming endpoints live on that second port only), /api/v2/instance answers 404;
 *   - GET /api/v1/streaming/public, /public/local, /hashtag?tag=x: 401 without the right
 *     "Authorization: Bearer <token>", else a chunked text/event-stream that starts with ":)",
 *     sends ":thump" heartbeats, and whatever the test scripts (updates, deletes, edits, raw
 *     bytes), optionally cut at awkward places (mid-line, mid-UTF-8, between CR and LF) and with
 *     CRLF line ends; the test can drop every stream and have new ones replay recent events;
 *   - GET /api/v1/timelines/public (and /tag/x) with limit, since_id, max_id, min_id, Link headers
 *     (rel="next"/"prev") and X-RateLimit-* headers (429 when the budget is spent).
 * One thread per connection; writes to a stream that cannot take more wait (and are counted), so
 * a reader that stops reading pushes back on the fake as on a real server.
 */
#ifndef FAKE_MASTODON_H
#define FAKE_MASTODON_H

#include <stddef.h>

typedef struct fm fm_t;

typedef struct fm_conf {
    const char *token;  /* streaming needs it; NULL: streaming always answers 401 */
    int heartbeat_ms;   /* 0: 15000 */
    int rate_limit;     /* requests per window on REST timelines; 0: 300 */
    int rate_window_ms; /* 0: 300000 */
} fm_conf_t;

typedef struct fm_stats {
    int streams_open, stream_connects, stream_401, instance_requests, timeline_requests, timeline_cursor_requests, /* with since_id or min_id */
        rate_limited_answers;
    long long stream_blocked_waits; /* writes that found the socket full */
    char last_stream_path[256], last_timeline_query[512];
} fm_stats_t;

fm_t *fm_start(const fm_conf_t *conf);
void fm_stop(fm_t *f);
const char *fm_url(fm_t *f); /* http://127.0.0.1:<REST port> */

/* The canonical uri fm_status_json gives the status with this id (the same on every fake instance:
 * the post's home is remote.example). */
void fm_status_uri(const char *id, char *out, size_t size);

/* A status as Mastodon sends it (malloc'd JSON). edited_at may be NULL. */
char *fm_status_json(const char *id, const char *acct, const char *content_html, const char *edited_at);

/* A boost by acct of the status status_json, as Mastodon sends it (malloc'd JSON): a status of its
 * own (id, uri from fm_status_uri(id), no content) whose "reblog" is the boosted status. */
char *fm_boost_json(const char *id, const char *acct, const char *status_json);
/* status_json with another local id (the same post as another instance numbers it); malloc'd. */
char *fm_with_id(const char *status_json, const char *id);

/* Adds status_json to the timelines and sends it as "update" to every open stream. */
void fm_post(fm_t *f, const char *status_json);
/* Adds it to the timelines only (it "happened" while nobody streamed). */
void fm_add_to_timeline(fm_t *f, const char *status_json);
/* Sends an event to every open stream; data lines are split at '\n' into several data: lines. */
void fm_event(fm_t *f, const char *event, const char *data);
/* Sends bytes as they are (CRLF and splitting still apply). */
void fm_raw(fm_t *f, const char *bytes, size_t len);

void fm_set_split(fm_t *f, int awkward); /* cut what is sent into awkward pieces */
void fm_set_crlf(fm_t *f, int on);       /* CRLF line ends */
void fm_set_silent(fm_t *f, int on);     /* no heartbeats */
void fm_set_replay(fm_t *f, int n);      /* a new stream first gets the last n events again */
void fm_drop_streams(fm_t *f);           /* closes every open stream at once */
void fm_set_rate(fm_t *f, int limit, int window_ms);

/* Waits until at least n streams are open (or, n == 0, none). Returns 1 on success. */
int fm_wait_streams(fm_t *f, int n, int timeout_ms);
void fm_stats(fm_t *f, fm_stats_t *st);

#endif
