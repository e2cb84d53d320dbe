/*
 * sl_metrics: counters and histograms rendered in the Prometheus text format.
 *
 * A service keeps its metrics in plain structs owned by its one event-loop thread (no atomics);
 * /metrics renders them with the functions here. Histograms have fixed bucket bounds.
 */
#ifndef SL_METRICS_H
#define SL_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "sl_buf.h"

#define SL_HIST_MAX_BUCKETS 24

typedef struct sl_histogram {
    const double *bounds; /* upper bounds, increasing; +Inf is implicit */
    size_t nbounds;
    uint64_t counts[SL_HIST_MAX_BUCKETS + 1]; /* not cumulative */
    uint64_t count;
    double sum;
} sl_histogram_t;

/* Seconds, 0.5 ms to 10 s: for latencies. */
extern const double sl_latency_bounds[];
extern const size_t sl_latency_nbounds;

void sl_histogram_init(sl_histogram_t *h, const double *bounds, size_t nbounds);
void sl_histogram_observe(sl_histogram_t *h, double v);
/* The value below which a fraction q (0..1) of observations fall, interpolated within a bucket. */
double sl_histogram_quantile(const sl_histogram_t *h, double q);

/* "# HELP"/"# TYPE" lines; call once per metric name before its samples. */
void sl_metrics_header(sl_buf_t *out, const char *name, const char *type, const char *help);
/* One sample line; labels is "" or like "route=\"post\",status=\"202\"". */
void sl_metrics_sample(sl_buf_t *out, const char *name, const char *labels, double value);
/* A metric of one sample without labels: its header, then the sample. */
void sl_metrics_one(sl_buf_t *out, const char *name, const char *type, const char *help, double value);
/* All _bucket, _sum and _count lines of a histogram (header included). */
void sl_metrics_histogram(sl_buf_t *out, const char *name, const char *help, const sl_histogram_t *h);

#endif
