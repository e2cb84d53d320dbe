/*
 * sl_webpage: web/index.html, compiled in (the build generates sl_webpage.c from it), so the sse
 * binary serves its page without files on disk.
 */
#ifndef SL_WEBPAGE_H
#define SL_WEBPAGE_H

#include <stddef.h>

extern const unsigned char sl_webpage[];
extern const size_t sl_webpage_len;

#endif
