/*
 * sl_meta: the optional `meta` object of a message read from Mastodon: what readers of a wall
 * expect beside the text (who wrote it, with avatar and display name, the post's page, its
 * language, its content warning, its media, a boost's original author). Only ingest makes it (the
 * api refuses a post that names it); it travels as a member of the queue item and of the live
 * payload, is stored as JSONB, and is answered as it was stored.
 *
 * The schema (docs/openapi.yaml, MessageMeta); every member is optional, none is null:
 *   display_name  1 to SL_META_NAME_MAX characters of plain text, no control characters
 *   avatar        the author's avatar image          } http: or https: links of at most
 *   account_url   the author's profile page          } SL_URL_MAX bytes without control
 *   url           the status's page                  } characters (sl_meta_web_link)
 *   language      1 to 16 of [A-Za-z0-9-] (ISO 639 and the like)
 *   spoiler_text  1 to SL_TEXT_MAX_CHARS characters, no control characters (the content warning)
 *   sensitive     true (absent: not marked sensitive)
 *   media         1 to SL_META_MEDIA_MAX objects: type (image, gifv, video, audio or unknown) and
 *                 url required, preview_url (a link) and description (1 to
 *                 SL_META_DESCRIPTION_MAX characters, no control characters) optional
 *   reblog        a boost's original: acct (1 to SL_AUTHOR_MAX_CHARS characters, no control
 *                 characters) required; display_name, avatar, account_url, url (the boosted
 *                 status's page) as above
 * Members not listed are refused, and so is a text of more than SL_META_MAX bytes.
 *
 * The text form is canonical: compact, keys sorted (jansson's JSON_SORT_KEYS), so the same meta
 * is the same bytes on the queue, on the live exchange and in history answers (PostgreSQL's
 * JSONB reorders keys; it is read back through sl_meta_dump).
 *
 * Pure functions, safe from any thread.
 */
#ifndef SL_META_H
#define SL_META_H

#include <jansson.h>
#include <stddef.h>

#include "sl_message.h"

#define SL_META_MAX (32 * 1024)       /* bytes of the canonical text */
#define SL_META_NAME_MAX 64           /* characters of a display name */
#define SL_META_MEDIA_MAX 8           /* attachments kept, in their order */
#define SL_META_DESCRIPTION_MAX 500   /* characters of a description (alt text) */
#define SL_META_LANGUAGE_MAX 16

/* 1 when s[0..len) is a link a reader may follow: http: or https: and something after it, at most
 * SL_URL_MAX bytes of valid UTF-8 without NUL or control characters (C0, DEL, C1). */
int sl_meta_web_link(const char *s, size_t len);

/* 1 when s[0..len) is 1 to max code points of valid UTF-8 without NUL or control characters. */
int sl_meta_plain(const char *s, size_t len, long max);

/* Checks meta against the schema above. Returns 0, or -1 with err filled (400, invalid_meta,
 * field "meta", a sentence naming the member at fault). */
int sl_meta_check(json_t *meta, sl_error_t *err);

/* The canonical text of meta (malloc'd; the caller frees it), or NULL for an empty object, for
 * something that is not an object, or on no memory. Does not check the schema. */
char *sl_meta_dump(json_t *meta);

#endif
