/*
 * sl_webpage: the files the sse service serves as they are, compiled in (the build generates
 * sl_webpage.c and sl_clientjs.c from them with sl_embed.c.in), so that the binary needs no files
 * on disk: web/index.html (the live page, at "/") and clients/js/sluice.js (the JavaScript client,
 * at "/client.js"). Each is NUL-terminated (not counted in _len); _etag is a quoted prefix of the
 * file's SHA-256, for HTTP revalidation.
 */
#ifndef SL_WEBPAGE_H
#define SL_WEBPAGE_H

#include <stddef.h>

extern const unsigned char sl_webpage[];
extern const size_t sl_webpage_len;
extern const char sl_webpage_etag[];

extern const unsigned char sl_clientjs[];
extern const size_t sl_clientjs_len;
extern const char sl_clientjs_etag[];

#endif
