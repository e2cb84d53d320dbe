/*
 * sl_mastodon: what sluice understands of Mastodon: statuses (HTML content, accounts, ids) and how
 * they become feed messages, the events of the streaming API, the paths of its streams and
 * timelines, and the headers of its REST answers (Link paging, rate limits).
 *
 * Identity. A status's id is local to the instance it is read from, and a delete event carries
 * nothing else. So our message id is the UUIDv5, under SL_MASTODON_NAMESPACE, of the status's API
 * address on that instance, "<instance URL>/api/v1/statuses/<status id>": the post, its edits and
 * its deletion all map to the same id without a lookup, whether we saw the post or not, and a
 * reconnect, a replay or a restart gives the same id again (the persister stores an id once).
 * Events get their ids from sl_message_event_id (message id, type, edited_at).
 *
 * Everything here is pure (no I/O, no global state): safe from any thread.
 */
#ifndef SL_MASTODON_H
#define SL_MASTODON_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_buf.h"
#include "sl_message.h"

/* Fixed forever: changing it would give every post a new id (and store it again). */
#define SL_MASTODON_NAMESPACE "0e76fabd-5d88-477b-9962-9130fee7b607"
#define SL_MASTODON_SOURCE "mastodon"
#define SL_MASTODON_STATUS_ID_MAX 64
#define SL_MASTODON_INSTANCE_MAX 512

/* Outcome of turning something from Mastodon into a queue item. */
typedef enum {
    SL_MASTODON_OK = 0,       /* the item is filled */
    SL_MASTODON_SKIP = 1,     /* nothing to enqueue (unknown event, empty text, not public…): why says */
    SL_MASTODON_INVALID = -1, /* malformed (not JSON, no id…): why says */
} sl_mastodon_result_t;

/* Appends the plain text of HTML content to out: tags stripped (script/style with their content),
 * <br> a newline, paragraphs (</p><p>) separated by a blank line, other whitespace collapsed,
 * entities decoded (named ones Mastodon uses, &#NN; and &#xHH;), control characters dropped and
 * invalid UTF-8 replaced by U+FFFD; the appended text is trimmed. Never fails on broken HTML (an
 * unterminated tag ends the text). Stops after max_chars code points. Returns the number appended. */
size_t sl_mastodon_html_to_text(const char *html, size_t len, size_t max_chars, sl_buf_t *out);

/* Copies the first max_chars code points of the valid UTF-8 string src (len bytes) to dst (size
 * bytes, NUL-terminated, never cutting a sequence). When src is longer and ellipsis is set, the
 * copy ends with U+2026 within max_chars. Control characters are dropped when drop_controls is set.
 * Returns the number of code points copied. */
size_t sl_mastodon_cut(const char *src, size_t len, char *dst, size_t size, size_t max_chars, int ellipsis,
                       int drop_controls);

/* Instance URL in canonical form: scheme and host lower-cased, no trailing '/'. Returns 0, or -1
 * if url is not http(s)://host[...] or does not fit. */
int sl_mastodon_instance_norm(const char *url, char *out, size_t size);

/* Our message id for the status with this id on instance (normalized). Returns 0 or -1. */
int sl_mastodon_message_id(const char *instance, const char *status_id, char out[SL_UUID_STRLEN]);

/* A status (from an update event or a timeline) as a new message in channel. */
sl_mastodon_result_t sl_mastodon_status_to_message(json_t *status, const char *instance, const char *channel,
                                                   sl_message_t *m, char *why, size_t whylen);

/* One streaming event: "update" (a new status), "status.update" (an edit: an update event),
 * "delete" (data is the status id: a delete event). Other event types are SKIP. */
sl_mastodon_result_t sl_mastodon_stream_event(const char *event, const char *data, size_t len, const char *instance,
                                              const char *channel, sl_message_t *m, char *why, size_t whylen);

/* 1 if stream is "public", "public:local" or "hashtag:<tag>" with a usable tag, else 0. */
int sl_mastodon_stream_valid(const char *stream);
/* The streaming API path of stream ("/api/v1/streaming/public", ".../public/local",
 * ".../hashtag?tag=<tag>"). Returns 0 or -1 (invalid stream, or no room). */
int sl_mastodon_stream_path(const char *stream, char *out, size_t size);
/* The REST timeline of stream, with limit (and local=true, or /tag/<tag>), without since_id. */
int sl_mastodon_timeline_path(const char *stream, int limit, char *out, size_t size);

/* The streaming server from an instance document (v2 configuration.urls.streaming, or v1
 * urls.streaming_api), with wss:// and ws:// turned into https:// and http://, no trailing '/'.
 * Returns 0, or -1 when the document names none. */
int sl_mastodon_streaming_base(json_t *instance, char *out, size_t size);

/* Orders status ids (decimal snowflakes, or other alphanumeric ids): by length, then bytewise. */
int sl_mastodon_id_cmp(const char *a, const char *b);

#endif
