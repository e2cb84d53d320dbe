/*
 * sl_ratelimit: token buckets: `rate` requests per second on average, bursts of up to `burst`.
 * sl_tokenbucket is one bucket, for a client the caller already holds (a WebSocket connection).
 * sl_ratelimit keeps a bucket per client key (a token, or a remote address): buckets of idle
 * clients are dropped, and at most max_keys clients are tracked (past that, new clients share 64
 * overflow buckets by hash of their key, so a flood of addresses cannot grow memory, and one
 * client cannot drain the room of every newcomer). One thread only.
 */
#ifndef SL_RATELIMIT_H
#define SL_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct sl_tokenbucket {
    double tokens;
    int64_t at_us;
} sl_tokenbucket_t;

/* A full bucket (burst tokens) at now_us (monotonic). */
void sl_tokenbucket_init(sl_tokenbucket_t *b, double burst, int64_t now_us);

/* Takes one token at now_us, after refilling at rate per second up to burst (>= 1). Returns 0
 * when allowed, else the whole seconds (>= 1) after which one will be there (for Retry-After). */
int sl_tokenbucket_take(sl_tokenbucket_t *b, double rate, double burst, int64_t now_us);

/* Takes n tokens at once (n >= 1: a batch of n messages costs n), of which `paid` were taken
 * already by an earlier call for the same request (the one every request costs at the door; 0
 * for none). Allowed when the bucket held min(n, burst) before that earlier call, i.e. holds
 * min(n, burst) - paid now, so that a batch larger than the burst can pass at all; it then takes
 * the n - paid left, and the bucket goes into debt: the client waits until it has paid (the
 * average rate holds). Returns 0 when allowed, else the whole seconds (>= 1) until enough tokens
 * are there. */
int sl_tokenbucket_take_n(sl_tokenbucket_t *b, double rate, double burst, double n, double paid, int64_t now_us);

typedef struct sl_ratelimit sl_ratelimit_t;

sl_ratelimit_t *sl_ratelimit_create(double rate, double burst, size_t max_keys);
void sl_ratelimit_destroy(sl_ratelimit_t *r);

/* Takes one request's token from key's bucket at time now_us (monotonic). Returns 0 when
 * allowed, else the whole seconds (>= 1) after which one will be there (for Retry-After). */
int sl_ratelimit_take(sl_ratelimit_t *r, const char *key, int64_t now_us);
/* The same for n tokens, `paid` of them taken already (sl_tokenbucket_take_n). */
int sl_ratelimit_take_n(sl_ratelimit_t *r, const char *key, double n, double paid, int64_t now_us);

size_t sl_ratelimit_keys(const sl_ratelimit_t *r);

#endif
