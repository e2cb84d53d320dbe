/*
 * sl_uuid: RFC 9562 identifiers in their 36-character text form.
 *
 * Version 7 ids sort by creation time: 48 bits of Unix milliseconds, then a 12-bit counter that
 * keeps ids made by one process in the same millisecond strictly increasing, then 62 random bits.
 * Version 5 ids are derived from a name (SHA-1), so the same name always gives the same id.
 */
#ifndef SL_UUID_H
#define SL_UUID_H

#include <stddef.h>
#include <stdint.h>

#define SL_UUID_STRLEN 37 /* 36 characters and NUL */

/* Not thread-safe (one counter and one buffer of random bytes per process): call from one thread,
 * and not in both sides of a fork (they would share the buffered bytes). Returns 0, or -1 if the
 * kernel gave no random bytes. */
int sl_uuid_v7(char out[SL_UUID_STRLEN]);
/* Same, at a given time in milliseconds (for tests). */
int sl_uuid_v7_at(uint64_t unix_ms, char out[SL_UUID_STRLEN]);

/* Name-based id within a namespace id (text form). Returns 0, or -1 if ns is not a UUID. */
int sl_uuid_v5(const char *ns, const void *name, size_t len, char out[SL_UUID_STRLEN]);

/* 1 if s (len bytes) is a UUID in canonical text form (any version, either case), else 0. */
int sl_uuid_valid(const char *s, size_t len);

/* The 16 bytes of s (len bytes, canonical text form, either case): 0, or -1 when s is not a UUID. */
int sl_uuid_parse(const char *s, size_t len, uint8_t b[16]);
/* The canonical (lower-case) text form of 16 bytes. */
void sl_uuid_format(const uint8_t b[16], char out[SL_UUID_STRLEN]);

/* The version of a valid UUID in text form (7, 5…), or -1 when s is not one. */
int sl_uuid_version(const char *s);

#endif
