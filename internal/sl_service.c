/*
 * sl_service: see sl_service.h.
 */
#include "sl_service.h"

#include <stdio.h>

#include "sl_amqp.h"

int sl_service_check(const char *name, const char *amqp_urls, const sl_http_opts_t *http_opts)
{
    char err[512];
    if (sl_amqp_urls_check(amqp_urls, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s: SLUICE_AMQP_URL (--amqp-url): %s\n", name, err);
        return 2;
    }
    if (sl_amqp_declare_check(err, sizeof(err)) != 0 || sl_http_opts_check(http_opts, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s: %s\n", name, err);
        return 2;
    }
    return 0;
}
