/*
 * sl_ratelimit: see sl_ratelimit.h. A chained hash table of buckets; a sweep every few thousand
 * takes drops the buckets that have refilled (their clients were idle), which is exact: a full
 * bucket and no bucket mean the same.
 */
#include "sl_ratelimit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NBUCKETS 4096
#define NOVERFLOW 64
#define SWEEP_EVERY 4096

struct bucket {
    struct bucket *next;
    sl_tokenbucket_t tb;
    char key[];
};

struct sl_ratelimit {
    double rate, burst;
    size_t max_keys, nkeys;
    unsigned takes;
    struct bucket *table[NBUCKETS];
    /* past max_keys, new clients share these, by hash of their key: one client that drains its
     * overflow bucket refuses 1/NOVERFLOW of the newcomers, not all of them */
    sl_tokenbucket_t overflow[NOVERFLOW];
};

static unsigned hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h & (NBUCKETS - 1);
}

sl_ratelimit_t *sl_ratelimit_create(double rate, double burst, size_t max_keys)
{
    sl_ratelimit_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->rate = rate;
    r->burst = burst < 1 ? 1 : burst;
    r->max_keys = max_keys;
    for (int i = 0; i < NOVERFLOW; i++)
        sl_tokenbucket_init(&r->overflow[i], r->burst, 0);
    return r;
}

void sl_ratelimit_destroy(sl_ratelimit_t *r)
{
    if (r == NULL)
        return;
    for (int i = 0; i < NBUCKETS; i++) {
        while (r->table[i] != NULL) {
            struct bucket *b = r->table[i];
            r->table[i] = b->next;
            free(b);
        }
    }
    free(r);
}

static void refill(sl_tokenbucket_t *b, double rate, double burst, int64_t now_us)
{
    if (now_us > b->at_us) {
        b->tokens = fmin(burst, b->tokens + rate * (double)(now_us - b->at_us) / 1e6);
        b->at_us = now_us;
    }
}

void sl_tokenbucket_init(sl_tokenbucket_t *b, double burst, int64_t now_us)
{
    b->tokens = burst;
    b->at_us = now_us;
}

int sl_tokenbucket_take(sl_tokenbucket_t *b, double rate, double burst, int64_t now_us)
{
    return sl_tokenbucket_take_n(b, rate, burst, 1, 0, now_us);
}

int sl_tokenbucket_take_n(sl_tokenbucket_t *b, double rate, double burst, double n, double paid, int64_t now_us)
{
    double need = fmin(n, burst) - paid;
    refill(b, rate, burst, now_us);
    if (b->tokens >= need) {
        b->tokens -= n - paid;
        return 0;
    }
    double wait = (need - b->tokens) / rate;
    return wait < 1 ? 1 : (int)ceil(wait);
}

static void sweep(sl_ratelimit_t *r, int64_t now_us)
{
    for (int i = 0; i < NBUCKETS; i++) {
        struct bucket **p = &r->table[i];
        while (*p != NULL) {
            refill(&(*p)->tb, r->rate, r->burst, now_us);
            if ((*p)->tb.tokens >= r->burst) {
                struct bucket *dead = *p;
                *p = dead->next;
                free(dead);
                r->nkeys--;
            } else {
                p = &(*p)->next;
            }
        }
    }
}

int sl_ratelimit_take(sl_ratelimit_t *r, const char *key, int64_t now_us)
{
    return sl_ratelimit_take_n(r, key, 1, 0, now_us);
}

int sl_ratelimit_take_n(sl_ratelimit_t *r, const char *key, double n, double paid, int64_t now_us)
{
    unsigned h = hash(key);
    struct bucket *b;
    if (++r->takes % SWEEP_EVERY == 0)
        sweep(r, now_us);
    for (b = r->table[h]; b != NULL && strcmp(b->key, key) != 0; b = b->next)
        ;
    if (b == NULL) {
        size_t klen = strlen(key);
        if (r->nkeys >= r->max_keys || (b = malloc(sizeof(*b) + klen + 1)) == NULL)
            return sl_tokenbucket_take_n(&r->overflow[h % NOVERFLOW], r->rate, r->burst, n, paid, now_us);
        else {
            memcpy(b->key, key, klen + 1);
            sl_tokenbucket_init(&b->tb, r->burst, now_us);
            b->next = r->table[h];
            r->table[h] = b;
            r->nkeys++;
        }
    }
    return sl_tokenbucket_take_n(&b->tb, r->rate, r->burst, n, paid, now_us);
}

size_t sl_ratelimit_keys(const sl_ratelimit_t *r)
{
    return r->nkeys;
}
