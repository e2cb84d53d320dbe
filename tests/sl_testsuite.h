/*
 * sl_testsuite: the end of every Check test program's main: run the suite, say whether it
 * passed. Header-only, so the unit tests (which link no test helpers) use it too.
 */
#ifndef SL_TESTSUITE_H
#define SL_TESTSUITE_H

#include <check.h>
#include <stdlib.h>

/* Runs every test of s (CK_NORMAL output; CK_FORK as the environment says) and frees it.
 * Returns EXIT_SUCCESS when none failed, for main to return. */
static inline int tu_run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
