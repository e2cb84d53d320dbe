/*
 * A test client of GET /v1/messages (api and sse): one request, its answer read into a page
 * (items, next, a reset) or an error. Thread-safe; nothing here calls Check.
 */
#ifndef SL_PULLCLIENT_H
#define SL_PULLCLIENT_H

#include <stddef.h>

typedef struct tu_page {
    long status;
    long long next;           /* -1 when absent or null */
    char reset[16];           /* the reset's reason, "" when none */
    long long reset_since;    /* -1 when null */
    size_t n;                 /* items */
    long long *seqs;
    char (*ids)[37];          /* each message's id ("" for an update or delete event) */
    char (*texts)[64];        /* and the start of its text */
    char code[48], field[32]; /* of an error */
    char retry_after[16];
    double seconds;           /* from request to answer */
} tu_page_t;

/* GET base/v1/messages?query into *pg. Returns 0 when an HTTP answer came whose body is a page or
 * an error, else -1. Free the page with tu_page_free either way. */
int tu_pull(const char *base, const char *query, tu_page_t *pg);
void tu_page_free(tu_page_t *pg);

#endif
