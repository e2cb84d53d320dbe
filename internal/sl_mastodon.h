/*
 * sl_mastodon: what sluice understands of Mastodon: statuses (HTML content, accounts, ids) and how
 * they become feed messages, the events of the streaming API, the paths of its streams and
 * timelines, and the headers of its REST answers (Link paging, rate limits).
 *
 * Identity. The same post reaches many instances (federation), each with its own local status id,
 * but every copy carries the status's canonical `uri` (its ActivityPub id, on its home server). So
 * our message id is the UUIDv5, under SL_MASTODON_URI_NAMESPACE, of that uri: the post read from
 * two instances, or from two streams of one instance, is one message, and the persister's
 * exactly-once by id drops the second copy without any lookup of ours. Its edits ("status.update",
 * the whole status again) carry the same uri and map to the same id. A boost is a message of its
 * own (the booster's post of someone else's status; see sl_mastodon_status_to_message): its id
 * comes from the boost's uri, not the original's.
 *
 * A delete event carries only the local status id. Each source therefore remembers, in an
 * sl_mastodon_ids_t, the message id of every status it read, under the status's local key: the
 * UUIDv5, under SL_MASTODON_NAMESPACE, of "<instance URL>/api/v1/statuses/<status id>"
 * (sl_mastodon_local_id; this was the message id before uris were used). A delete finds its
 * message there; one that is not remembered (read before a restart, or forgotten) names the
 * local key, which is the id of a post stored before uris were used, or of nothing (an event for
 * a message never stored is kept and harms nothing). A status without a usable uri keeps its
 * local key as its id. Events get their ids from sl_message_event_id (message id, type,
 * edited_at), so the same edit or delete read from two instances is stored once too.
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

/* Fixed forever: changing either would give every post a new id (and store it again). */
#define SL_MASTODON_NAMESPACE "0e76fabd-5d88-477b-9962-9130fee7b607"     /* local keys */
#define SL_MASTODON_URI_NAMESPACE "2148ee35-60f6-494c-a612-178d7fc3553f" /* canonical uris */
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

/* The local key of the status with this id on instance (normalized). Returns 0 or -1. */
int sl_mastodon_local_id(const char *instance, const char *status_id, char out[SL_UUID_STRLEN]);

/* The message id of a status whose canonical uri is uri[0..len): 1 to SL_URL_MAX bytes of valid
 * UTF-8 without control characters. Returns 0, or -1 when the uri is not usable. */
int sl_mastodon_uri_id(const char *uri, size_t len, char out[SL_UUID_STRLEN]);

/* What a source remembers of the statuses it read: local key -> message id, for deletes. A bounded
 * set-associative table (4 ways; in a full set the oldest entry gives way), about 40 bytes an
 * entry. Used by one thread at a time. */
typedef struct sl_mastodon_ids sl_mastodon_ids_t;
/* Room for about cap entries (at least 4). NULL on no memory. */
sl_mastodon_ids_t *sl_mastodon_ids_create(size_t cap);
void sl_mastodon_ids_destroy(sl_mastodon_ids_t *ids);
/* Remembers that the status with this local key is message id (both UUIDs in text form). */
void sl_mastodon_ids_put(sl_mastodon_ids_t *ids, const char *local, const char *id);
/* 1 with out filled when local is remembered, else 0. */
int sl_mastodon_ids_get(const sl_mastodon_ids_t *ids, const char *local, char out[SL_UUID_STRLEN]);

/* A status (from an update event or a timeline) as a new message in channel: the id from its uri
 * (else its local key), the author its account's acct (else username), the text its content as
 * plain text after "CW: <spoiler_text>" when it has one, url its url (else uri) when that is an
 * http(s) link, meta (sl_meta.h) the author's display name, avatar and profile, the status's page,
 * language, content warning, sensitivity and media. A boost (a status whose "reblog" is the
 * boosted status) is the booster's message: id from the boost's uri, author the booster (and
 * meta's display name, avatar, profile), created_at the boost's time; its text, url, edited_at
 * and the rest of meta are the boosted status's, and meta.reblog names its author and page.
 * ids (may be NULL) learns the local key of what is mapped. On OK, m->meta is the caller's to
 * free (sl_message_clear); otherwise it is NULL. */
sl_mastodon_result_t sl_mastodon_status_to_message(json_t *status, const char *instance, const char *channel,
                                                   sl_mastodon_ids_t *ids, sl_message_t *m, char *why, size_t whylen);

/* One streaming event: "update" (a new status), "status.update" (an edit: an update event, with
 * the status's new text, url, edited_at and meta), "delete" (data is the status id: a delete
 * event, for the message ids remembers under its local key, else for the local key itself). Other
 * event types are SKIP. ids may be NULL. m->meta as above. */
sl_mastodon_result_t sl_mastodon_stream_event(const char *event, const char *data, size_t len, const char *instance,
                                              const char *channel, sl_mastodon_ids_t *ids, sl_message_t *m, char *why,
                                              size_t whylen);

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

/* 1 if s (len bytes) can be a status id: 1 to SL_MASTODON_STATUS_ID_MAX of URL's unreserved
 * characters (letters, digits, '-', '.', '_', '~'). Mastodon's are decimal, other servers' are
 * alphanumeric; we put them in URLs as they are (min_id=, /api/v1/statuses/<id>). */
int sl_mastodon_id_valid(const char *s, size_t len);

/* The statuses of a timeline page (a JSON array) that come after since_id ("" for all), oldest
 * first and each id once, into out (room for json_array_size(page) entries; references borrowed
 * from page). Items that are not objects with a valid string "id" are left out. Returns their
 * number. */
size_t sl_mastodon_page_after(json_t *page, const char *since_id, json_t **out);

/* What a REST answer's headers say of the instance's rate limit. */
typedef struct sl_mastodon_rate {
    long long remaining;     /* X-RateLimit-Remaining; -1 when absent or not a count */
    int64_t reset_us;        /* X-RateLimit-Reset (a timestamp); 0 when absent or not one */
    long long retry_after_s; /* Retry-After in seconds; -1 when absent or not seconds (a date) */
} sl_mastodon_rate_t;

#define SL_MASTODON_RATE_WAIT_MAX_MS (15 * 60 * 1000LL)

void sl_mastodon_rate_init(sl_mastodon_rate_t *rl);

/* Takes one header, name (nlen bytes, any case) and its value (vlen bytes, trimmed), when it is
 * one of the three. Returns 1 if it was. */
int sl_mastodon_rate_header(sl_mastodon_rate_t *rl, const char *name, size_t nlen, const char *value, size_t vlen);

/* How long to wait before the next request, after an answer of this status with these headers,
 * at now_us (CLOCK_REALTIME): a 429's Retry-After; else, when the limit is reached (a 429, or 0
 * remaining), until 50 ms past its reset; else 60 s after a 429; else 0. Always 0 to
 * SL_MASTODON_RATE_WAIT_MAX_MS, whatever the headers say. */
long long sl_mastodon_rate_wait_ms(const sl_mastodon_rate_t *rl, long status, int64_t now_us);

#endif
