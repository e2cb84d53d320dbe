/*
 * sl_ratelimit: a token bucket per client (a token, or a remote address): `rate` requests per
 * second on average, bursts of up to `burst`. Buckets of idle clients are dropped, and at most
 * max_keys clients are tracked (past that, new clients share one overflow bucket, so a flood of
 * addresses cannot grow memory). One thread only.
 */
#ifndef SL_RATELIMIT_H
#define SL_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct sl_ratelimit sl_ratelimit_t;

sl_ratelimit_t *sl_ratelimit_create(double rate, double burst, size_t max_keys);
void sl_ratelimit_destroy(sl_ratelimit_t *r);

/* Takes one request's token from key's bucket at time now_us (monotonic). Returns 0 when
 * allowed, else the whole seconds (>= 1) after which one will be there (for Retry-After). */
int sl_ratelimit_take(sl_ratelimit_t *r, const char *key, int64_t now_us);

size_t sl_ratelimit_keys(const sl_ratelimit_t *r);

#endif
