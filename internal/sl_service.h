/*
 * sl_service: what the main of every service on RabbitMQ and HTTP checks alike at its start,
 * before anything else (the checks sl_config's table cannot make).
 *
 * Threading: the main thread, at start.
 */
#ifndef SL_SERVICE_H
#define SL_SERVICE_H

#include "sl_http.h"

/* Checks the AMQP URL list amqp_urls (SLUICE_AMQP_URL), SLUICE_AMQP_DECLARE and the HTTP options.
 * Returns 0, or 2 (the exit status for a bad setting) after one line on stderr that starts with
 * name ("sluice-sse: ..."). */
int sl_service_check(const char *name, const char *amqp_urls, const sl_http_opts_t *http_opts);

#endif
