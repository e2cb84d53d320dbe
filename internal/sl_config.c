/*
 * sl_config: env + flags from one table; see sl_config.h.
 */
#include "sl_config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int set_value(const sl_opt_t *o, const char *value, const char *from)
{
    char *end;
    switch (o->type) {
    case SL_OPT_STR:
        *(const char **)o->ptr = value;
        return 0;
    case SL_OPT_INT: {
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (errno != 0 || end == value || *end != '\0' || (double)v < o->min || (double)v > o->max) {
            fprintf(stderr, "invalid value '%s' for %s: expected an integer from %.0f to %.0f\n", value, from, o->min,
                    o->max);
            return -1;
        }
        *(long long *)o->ptr = v;
        return 0;
    }
    case SL_OPT_DOUBLE: {
        errno = 0;
        double v = strtod(value, &end);
        if (errno != 0 || end == value || *end != '\0' || !isfinite(v) || v < o->min || v > o->max) {
            fprintf(stderr, "invalid value '%s' for %s: expected a number from %g to %g\n", value, from, o->min, o->max);
            return -1;
        }
        *(double *)o->ptr = v;
        return 0;
    }
    }
    return -1;
}

static void usage(const sl_opt_t *opts, size_t n, const char *prog, const char *about)
{
    printf("usage: %s [--flag=value ...]\n%s\n\noptions (flag, environment variable, default):\n", prog, about);
    for (size_t i = 0; i < n; i++)
        printf("  --%-22s %-30s %-12s %s\n", opts[i].flag, opts[i].env ? opts[i].env : "", opts[i].def ? opts[i].def : "",
               opts[i].help);
}

int sl_config_parse(const sl_opt_t *opts, size_t n, int argc, char **argv, const char *prog, const char *about)
{
    for (size_t i = 0; i < n; i++) {
        const char *v = opts[i].env != NULL ? getenv(opts[i].env) : NULL;
        if (v != NULL && set_value(&opts[i], v, opts[i].env) != 0)
            return -1;
        if (v == NULL && opts[i].def != NULL && set_value(&opts[i], opts[i].def, opts[i].flag) != 0)
            return -1;
        if (v == NULL && opts[i].def == NULL && opts[i].type == SL_OPT_STR)
            *(const char **)opts[i].ptr = NULL;
    }
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a], *value = NULL;
        size_t namelen;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            usage(opts, n, prog, about);
            return 1;
        }
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "%s: unexpected argument '%s' (try --help)\n", prog, arg);
            return -1;
        }
        arg += 2;
        const char *eq = strchr(arg, '=');
        namelen = eq != NULL ? (size_t)(eq - arg) : strlen(arg);
        const sl_opt_t *o = NULL;
        for (size_t i = 0; i < n; i++) {
            if (strlen(opts[i].flag) == namelen && strncmp(opts[i].flag, arg, namelen) == 0)
                o = &opts[i];
        }
        if (o == NULL) {
            fprintf(stderr, "%s: unknown option '--%.*s' (try --help)\n", prog, (int)namelen, arg);
            return -1;
        }
        if (eq != NULL) {
            value = eq + 1;
        } else if (a + 1 < argc) {
            value = argv[++a];
        } else {
            fprintf(stderr, "%s: option '--%s' needs a value\n", prog, o->flag);
            return -1;
        }
        if (set_value(o, value, o->flag) != 0)
            return -1;
    }
    return 0;
}
