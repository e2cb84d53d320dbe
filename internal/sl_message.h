/*
 * sl_message: the feed's one record type, how a user's POST body becomes one (validation with
 * a precise error), and its JSON form on the queue, on the live exchange and in HTTP answers.
 *
 * A message is a value type with fixed-size fields, so a batch is one array; the one exception is
 * meta (sl_meta.h), a heap string the message owns: copying a message by value moves it (the copy
 * owns it, the original must not be cleared), and whoever holds a message filled by one of the
 * calls below frees it with sl_message_clear.
 */
#ifndef SL_MESSAGE_H
#define SL_MESSAGE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_buf.h"
#include "sl_uuid.h"

#define SL_CHANNEL_MAX 64         /* bytes: [a-z0-9_-]{1,64} */
#define SL_AUTHOR_MAX_CHARS 64    /* Unicode code points */
#define SL_TEXT_MAX_CHARS 500     /* Unicode code points */
#define SL_BODY_MAX (16 * 1024)   /* bytes of a POST body */
#define SL_DEFAULT_CHANNEL "general"
#define SL_URL_MAX 1024           /* bytes of a message's url */

/* Namespace of event ids (UUIDv5 of "<message id>|<type>|<edited_at>"), fixed forever: changing it
 * would let a redelivered event be stored twice. */
#define SL_EVENT_NAMESPACE "ba2a1f46-5922-4eb7-a571-6c40cfdeab7f"

/* What an item on the persist queue (and the live exchange) is: a new message, or an event about
 * one stored earlier. Events get their own seq from the same counter as messages. */
typedef enum {
    SL_MESSAGE_NEW = 0, /* "message" (the default when "type" is absent) */
    SL_MESSAGE_UPDATE,  /* "update": the text was edited: id, channel, text, url, edited_at */
    SL_MESSAGE_DELETE,  /* "delete": the message was deleted: id, channel */
} sl_message_type_t;

typedef struct sl_message {
    char id[SL_UUID_STRLEN];
    int64_t seq;                                 /* feed position; 0 until stored */
    char channel[SL_CHANNEL_MAX + 1];
    char author[SL_AUTHOR_MAX_CHARS * 4 + 1];
    char text[SL_TEXT_MAX_CHARS * 4 + 1];
    char source[16];                             /* "api", "bot", "mastodon" */
    int64_t created_at_us;                       /* microseconds since the epoch, UTC */
    /* Optional (zero when absent), added for posts read from elsewhere and for events. */
    char url[SL_URL_MAX + 1];                    /* web address of the original post */
    int64_t edited_at_us;                        /* when the text was last edited */
    sl_message_type_t type;                      /* SL_MESSAGE_NEW unless this is an event */
    char event_id[SL_UUID_STRLEN];               /* events: their idempotency key; created_at is the event's time */
    char *meta;                                  /* messages and updates from Mastodon: the canonical text of
                                                  * the meta object (sl_meta.h), malloc'd and owned; NULL: none */
} sl_message_t;

/* Frees what m owns (its meta) and sets it to none; m stays a valid message. */
void sl_message_clear(sl_message_t *m);

/* A refusal to show the client: HTTP status, a stable machine code, a sentence, and the JSON
 * field it concerns (NULL when none). code and field point to static strings. */
typedef struct sl_error {
    int status;
    const char *code;
    const char *field;
    char message[192];
} sl_error_t;

void sl_error_set(sl_error_t *err, int status, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* {"error":{"code":…,"message":…,"field":…}}; malloc'd, the caller frees it. NULL on no memory. */
char *sl_error_to_json(const sl_error_t *err, size_t *len);

/* Number of code points in s if it is well-formed UTF-8 (no overlongs, no surrogates, nothing
 * past U+10FFFF), else -1. */
long sl_utf8_count(const char *s, size_t len);

/* 1 if s matches [a-z0-9_-]{1,64}, else 0. */
int sl_channel_valid(const char *s, size_t len);

/* A channel as people write it: "general" or "#general" (one leading '#', as in chat clients; a
 * query parameter is percent-decoded first, so %23general works too). Returns the length of the
 * canonical name (the valid [a-z0-9_-]{1,64} part, starting at *canon, inside s), or 0 when s is
 * not a channel. Everything a client sends as a channel goes through this; answers and storage
 * use the canonical name only. */
size_t sl_channel_canon(const char *s, size_t len, const char **canon);

#define SL_CHANNEL_RULE "[a-z0-9_-]{1,64}, optionally written with a leading '#'"

/* Validates a POST /v1/messages body (the caller checks method, content type and size) and fills
 * channel, author, text and source ("api" unless the body names "bot"). id, seq and created_at are
 * left zero. Any other member (url, meta: only ingest sets those) is an unknown field. Returns 0,
 * or -1 with err filled (status 400). */
int sl_message_from_request(const char *body, size_t len, sl_message_t *msg, sl_error_t *err);

/* Validates a PATCH /v1/messages/{id} body, {"text":…} (1 to SL_TEXT_MAX_CHARS characters,
 * nothing else), into text. Returns 0, or -1 with err filled (status 400). */
int sl_message_edit_from_request(const char *body, size_t len, char text[SL_TEXT_MAX_CHARS * 4 + 1], sl_error_t *err);

#define SL_BATCH_MAX 100 /* messages in one POST /v1/messages/batch */

/* One refused item of a batch: its index (from 0) and why. */
typedef struct sl_batch_error {
    size_t index;
    sl_error_t err;
} sl_batch_error_t;

/* Validates a POST /v1/messages/batch body: a JSON array (ndjson 0) or NDJSON (ndjson 1: one
 * object per line, the last line break optional, an empty line an item of its own) of 1 to
 * SL_BATCH_MAX messages, each checked as sl_message_from_request checks a body. msgs and errs hold
 * SL_BATCH_MAX entries each. Returns 0 with msgs[0..*n) filled; -1 with err filled when the body as a
 * whole is wrong (not UTF-8, not JSON, not an array, no message, too many); -2 when items are
 * wrong, each named in errs[0..*nerrs) in index order. */
int sl_message_batch_from_request(const char *body, size_t len, int ndjson, sl_message_t *msgs, size_t *n,
                                  sl_error_t *err, sl_batch_error_t *errs, size_t *nerrs);

/* The message as a JSON object (seq included when non-zero; url, edited_at and meta when set). An
 * event (type update or delete) gives {"type","id","channel",["text","url","edited_at","meta",]
 * "event_id","created_at"[,"seq"]}. New reference; NULL on no memory. */
json_t *sl_message_to_jansson(const sl_message_t *m);

/* The message's compact JSON text (the members above, in that order) appended to b, written
 * directly (no jansson tree): the persister and the api encode every message they handle. */
void sl_message_append_json(sl_buf_t *b, const sl_message_t *m);

/* The same text, malloc'd, the caller frees it. */
char *sl_message_to_json(const sl_message_t *m, size_t *len);

/* Decodes a message as written by sl_message_to_json (from the queue or the live exchange),
 * checking every field as strictly as sl_message_from_request, and meta against its schema
 * (sl_meta_check; then m->meta is its canonical text). Payloads written before url, type,
 * edited_at and meta existed decode as before. An event without "event_id" gets the one
 * sl_message_event_id derives. m is overwritten (a meta it held is not freed). Returns 0, or -1
 * with err (and m->meta NULL). */
int sl_message_from_json(const char *buf, size_t len, sl_message_t *m, sl_error_t *err);
int sl_message_from_jansson(json_t *obj, sl_message_t *m, sl_error_t *err);

/* "message", "update" or "delete". */
const char *sl_message_type_name(sl_message_type_t type);

/* The deterministic id of event m (UUIDv5 of its message id, type and edited_at under
 * SL_EVENT_NAMESPACE): the same edit or deletion always gets the same id. Returns 0 or -1. */
int sl_message_event_id(const sl_message_t *m, char out[SL_UUID_STRLEN]);

#endif
