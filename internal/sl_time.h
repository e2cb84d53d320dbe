/*
 * sl_time: wall-clock timestamps as int64 microseconds since the Unix epoch, their RFC 3339 text
 * form, and a monotonic clock for measuring intervals.
 */
#ifndef SL_TIME_H
#define SL_TIME_H

#include <stddef.h>
#include <stdint.h>

#define SL_TIME_RFC3339_LEN 28 /* "2026-11-24T20:50:01.123456Z" plus NUL */

int64_t sl_time_now_us(void);       /* CLOCK_REALTIME */
int64_t sl_time_mono_us(void);      /* CLOCK_MONOTONIC */

/* Writes "YYYY-MM-DDTHH:MM:SS.ffffffZ" (UTC, always 6 fraction digits) into buf. */
void sl_time_format(int64_t us, char buf[SL_TIME_RFC3339_LEN]);

/* Parses "YYYY-MM-DD[T ]HH:MM:SS[.f{1,9}][Z|z|±HH|±HH:MM|±HHMM]" (RFC 3339 and the text form
 * PostgreSQL and CockroachDB give a TIMESTAMPTZ); a missing offset means UTC. Returns 0, or -1
 * when the text is not such a timestamp. Digits past microseconds are dropped. */
int sl_time_parse(const char *s, size_t len, int64_t *us);

#endif
