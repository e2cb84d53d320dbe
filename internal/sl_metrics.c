/*
 * sl_metrics: see sl_metrics.h.
 */
#include "sl_metrics.h"

#include <string.h>

const double sl_latency_bounds[] = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10};
const size_t sl_latency_nbounds = sizeof(sl_latency_bounds) / sizeof(sl_latency_bounds[0]);

void sl_histogram_init(sl_histogram_t *h, const double *bounds, size_t nbounds)
{
    memset(h, 0, sizeof(*h));
    h->bounds = bounds;
    h->nbounds = nbounds < SL_HIST_MAX_BUCKETS ? nbounds : SL_HIST_MAX_BUCKETS;
}

void sl_histogram_observe(sl_histogram_t *h, double v)
{
    size_t i = 0;
    while (i < h->nbounds && v > h->bounds[i])
        i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

double sl_histogram_quantile(const sl_histogram_t *h, double q)
{
    double rank = q * (double)h->count, seen = 0;
    if (h->count == 0)
        return 0;
    for (size_t i = 0; i <= h->nbounds; i++) {
        if (seen + (double)h->counts[i] >= rank && h->counts[i] > 0) {
            double lo = i == 0 ? 0 : h->bounds[i - 1];
            double hi = i < h->nbounds ? h->bounds[i] : lo * 2;
            return lo + (hi - lo) * ((rank - seen) / (double)h->counts[i]);
        }
        seen += (double)h->counts[i];
    }
    return h->nbounds ? h->bounds[h->nbounds - 1] : 0;
}

void sl_metrics_header(sl_buf_t *out, const char *name, const char *type, const char *help)
{
    sl_buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void sl_metrics_sample(sl_buf_t *out, const char *name, const char *labels, double value)
{
    if (labels != NULL && *labels != '\0')
        sl_buf_appendf(out, "%s{%s} %.17g\n", name, labels, value);
    else
        sl_buf_appendf(out, "%s %.17g\n", name, value);
}

void sl_metrics_one(sl_buf_t *out, const char *name, const char *type, const char *help, double value)
{
    sl_metrics_header(out, name, type, help);
    sl_metrics_sample(out, name, "", value);
}

void sl_metrics_histogram(sl_buf_t *out, const char *name, const char *help, const sl_histogram_t *h)
{
    uint64_t cum = 0;
    sl_metrics_header(out, name, "histogram", help);
    for (size_t i = 0; i < h->nbounds; i++) {
        cum += h->counts[i];
        sl_buf_appendf(out, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i], (unsigned long long)cum);
    }
    sl_buf_appendf(out, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.17g\n%s_count %llu\n", name, (unsigned long long)h->count,
                   name, h->sum, name, (unsigned long long)h->count);
}
