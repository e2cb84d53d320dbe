/*
 * sl_chanpolicy: which channels are private, and whether a reader may read one. A channel set
 * (sl_chanset_t) is a list of channel names and "prefix*" patterns; it is what
 * SLUICE_PRIVATE_CHANNELS names and what a token's "channels" claim grants (sl_jwt.h). A private
 * channel may be read only by a token whose channels cover it; every other channel is public.
 * With no private channels (the default) every channel is public, as before tokens existed.
 *
 * Everything here is plain data: no locks, no loop. A policy or a set is read-only once built, so
 * any number of threads may read it at once.
 */
#ifndef SL_CHANPOLICY_H
#define SL_CHANPOLICY_H

#include <stddef.h>

/* Most patterns in one set: SLUICE_PRIVATE_CHANNELS, or one token's "channels" claim. */
#define SL_CHANSET_MAX 256

struct sl_chanpat;

/* A set of channel names ("general") and patterns ("team-*": every channel starting with
 * "team-"; "*" alone: every channel). Start it as SL_CHANSET_INIT (or zeroed). */
typedef struct sl_chanset {
    struct sl_chanpat *pats;
    size_t n;
} sl_chanset_t;

#define SL_CHANSET_INIT {NULL, 0}

/* Adds one pattern: a channel name ([a-z0-9_-]{1,64}), or up to 63 of those characters followed
 * by '*'; either may start with '#', which is dropped ("#general" is general). Returns 0; -1 when the pattern is not one (errno EINVAL), the set is full (E2BIG) or
 * memory ran out (ENOMEM). A pattern already in the set is not added twice. */
int sl_chanset_add(sl_chanset_t *s, const char *pat, size_t len);

/* Adds every entry of a comma-separated list (spaces around entries ignored; NULL or "" adds
 * nothing). Returns 0, or -1 with err naming the entry at fault (the set may hold the entries
 * before it: free it). */
int sl_chanset_parse(sl_chanset_t *s, const char *list, char *err, size_t errlen);

/* 1 when some pattern of the set covers channel (len bytes), else 0. */
int sl_chanset_covers(const sl_chanset_t *s, const char *channel, size_t len);

/* Frees the patterns; the set is empty (and reusable) afterwards. */
void sl_chanset_free(sl_chanset_t *s);

/* The i-th pattern of the set (i < s->n): *name is its channel name or prefix (NUL-terminated,
 * without the '*'; valid while the set is), *prefix 1 for a "prefix*" pattern. Returns the
 * length of *name. For whoever must say the set in another language (an SQL filter). */
size_t sl_chanset_pattern(const sl_chanset_t *s, size_t i, const char **name, int *prefix);

/* ---- the policy --------------------------------------------------------------------------------- */

typedef struct sl_chanpolicy sl_chanpolicy_t;

/* The policy of SLUICE_PRIVATE_CHANNELS (private: a comma-separated list of names and patterns;
 * NULL or "": no private channel). Returns NULL with err filled when the list is malformed or
 * memory ran out. */
sl_chanpolicy_t *sl_chanpolicy_create(const char *private_list, char *err, size_t errlen);
void sl_chanpolicy_destroy(sl_chanpolicy_t *p);

/* 1 when some channel is private: without, nothing needs filtering (a NULL policy has none). */
int sl_chanpolicy_any_private(const sl_chanpolicy_t *p);

/* The set of private channels (empty for a NULL policy); valid while the policy is. */
const sl_chanset_t *sl_chanpolicy_private(const sl_chanpolicy_t *p);

/* 1 when the channel is private. */
int sl_chanpolicy_is_private(const sl_chanpolicy_t *p, const char *channel, size_t len);

typedef enum {
    SL_CHAN_READ_OK = 0,     /* public, or covered by the token's channels */
    SL_CHAN_READ_NEED_TOKEN, /* private, and no token was given: 401 */
    SL_CHAN_READ_FORBIDDEN,  /* private, and the token's channels do not cover it: 403 */
} sl_chan_read_t;

/* May a reader read channel? granted is the reader's token's channels (sl_jwt_claims_t.channels,
 * empty when the token has no "channels" claim), NULL for a reader without a token. A NULL
 * policy makes every channel public. */
sl_chan_read_t sl_chanpolicy_read(const sl_chanpolicy_t *p, const sl_chanset_t *granted, const char *channel,
                                  size_t len);

/* The filter of a stream of every channel: 1 when an event of channel may go to a reader with
 * granted (as above), 0 when it must be left out. */
int sl_chanpolicy_may_read(const sl_chanpolicy_t *p, const sl_chanset_t *granted, const char *channel, size_t len);

/* The codes and texts of the refusals, for JSON errors: "token_required" (401) and
 * "channel_forbidden" (403); NULL for SL_CHAN_READ_OK. */
const char *sl_chan_read_code(sl_chan_read_t r);
const char *sl_chan_read_message(sl_chan_read_t r);
int sl_chan_read_status(sl_chan_read_t r);

#endif
