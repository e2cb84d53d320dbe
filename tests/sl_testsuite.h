/*
 * sl_testsuite: the end of every Check test program's main: run the suite, say whether it
 * passed. Header-only, so the unit tests (which link no test helpers) use it too.
 */
#ifndef SL_TESTSUITE_H
#define SL_TESTSUITE_H

#include <check.h>
#include <stdlib.h>
#include <string.h>

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

/* A test that SLUICE_TEST_ONLY=<part of a name> picks (for working on one). */
typedef struct tu_named_test {
    const char *name;
    const TTest *test;
} tu_named_test_t;

/* Runs the n tests (in one test case, timeout_s each) that SLUICE_TEST_ONLY picks, or all without
 * it except those named "measure_...": measurements that print figures run only when picked. */
static inline int tu_run_named(const char *suite, const tu_named_test_t *tests, size_t n, int timeout_s)
{
    const char *only = getenv("SLUICE_TEST_ONLY");
    Suite *s = suite_create(suite);
    TCase *tc = tcase_create("integration");
    tcase_set_timeout(tc, timeout_s);
    for (size_t i = 0; i < n; i++) {
        if (only == NULL ? strncmp(tests[i].name, "measure_", 8) != 0 : strstr(tests[i].name, only) != NULL)
            tcase_add_test(tc, tests[i].test);
    }
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}

#endif
