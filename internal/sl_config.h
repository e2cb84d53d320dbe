/*
 * sl_config: one table of options per service, read from environment variables and from
 * command-line flags (a flag wins over the environment, which wins over the default).
 *
 * Each option names its flag (--api-port), its variable (SLUICE_API_PORT), its type, default and
 * range. A bad value is an error naming the option; nothing is silently clamped.
 */
#ifndef SL_CONFIG_H
#define SL_CONFIG_H

#include <stddef.h>

typedef enum { SL_OPT_STR, SL_OPT_INT, SL_OPT_DOUBLE } sl_opt_type_t;

typedef struct sl_opt {
    const char *flag;   /* without the leading dashes */
    const char *env;    /* environment variable, or NULL */
    sl_opt_type_t type;
    void *ptr;          /* const char ** (points into argv/environ/default), long long *, or double * */
    const char *def;    /* default as text, parsed like any other value */
    double min, max;    /* inclusive range for numbers */
    const char *help;
} sl_opt_t;

/* Fills every option. Returns 0 on success, 1 when --help was asked (usage printed to stdout),
 * -1 on a bad flag or value (the reason printed to stderr). Does not exit. */
int sl_config_parse(const sl_opt_t *opts, size_t nopts, int argc, char **argv, const char *prog, const char *about);

#endif
