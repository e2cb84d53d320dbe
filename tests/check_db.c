/*
 * Unit tests of sl_db's failure classes: which SQLSTATEs are poison (the data is at fault, so the
 * message is dead-lettered) and which are transient (the batch is kept and tried again).
 */
#include <check.h>

#include "sl_db.h"
#include "sl_testsuite.h"

static const struct {
    const char *sqlstate, *what;
    int poison, retry_in_place;
} classes[] = {
    /* poison: what is wrong with the data itself */
    {"22001", "string data right truncation", 1, 0},
    {"22008", "datetime field overflow (year 0)", 1, 0},
    {"22021", "character not in repertoire (bad UTF-8)", 1, 0},
    {"22P02", "invalid text representation", 1, 0},
    {"23502", "not null violation", 1, 0},
    {"23505", "unique violation", 1, 0},
    {"23514", "check violation", 1, 0},
    /* transient: everything else */
    {"", "no SQLSTATE: a lost connection or a client-side timeout", 0, 0},
    {"08006", "connection failure", 0, 0},
    {"08001", "cannot establish a connection", 0, 0},
    {"25006", "read-only transaction (a standby, or a failover)", 0, 0},
    {"40001", "serialization failure", 0, 1},
    {"40P01", "deadlock", 0, 1},
    {"40003", "CockroachDB: result is ambiguous", 0, 0},
    {"53100", "disk full", 0, 0},
    {"53200", "out of memory", 0, 0},
    {"53300", "too many connections", 0, 0},
    {"57014", "query canceled (statement_timeout)", 0, 0},
    {"57P01", "admin shutdown", 0, 0},
    {"57P03", "cannot connect now (starting up)", 0, 0},
    {"58030", "I/O error", 0, 0},
    {"XX000", "internal error", 0, 0},
    {"42P01", "undefined table (schema not migrated yet)", 0, 0},
    {"42P07", "duplicate table (two migrations at once on CockroachDB)", 0, 0},
    {"55P03", "lock not available", 0, 0},
};

START_TEST(test_failure_classes)
{
    ck_assert_msg(sl_db_is_poison(classes[_i].sqlstate) == classes[_i].poison, "%s (%s): poison should be %d",
                  classes[_i].sqlstate, classes[_i].what, classes[_i].poison);
    ck_assert_msg(sl_db_is_retryable(classes[_i].sqlstate) == classes[_i].retry_in_place,
                  "%s (%s): retry in place should be %d", classes[_i].sqlstate, classes[_i].what,
                  classes[_i].retry_in_place);
}
END_TEST

START_TEST(test_connection_errors)
{
    ck_assert(sl_db_is_connection_error(NULL, ""));
    ck_assert(sl_db_is_connection_error(NULL, "22001"));
}
END_TEST

START_TEST(test_kind_of_version)
{
    ck_assert_int_eq(sl_db_kind_of("CockroachDB CCL v24.1.0 (x86_64-pc-linux-gnu)"), SL_DB_COCKROACH);
    ck_assert_int_eq(sl_db_kind_of("PostgreSQL 15.8 on x86_64-pc-linux-gnu"), SL_DB_POSTGRES);
    ck_assert_int_eq(sl_db_kind_of(NULL), SL_DB_POSTGRES);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("db");
    TCase *tc = tcase_create("classes");
    tcase_add_loop_test(tc, test_failure_classes, 0, sizeof(classes) / sizeof(classes[0]));
    tcase_add_test(tc, test_connection_errors);
    tcase_add_test(tc, test_kind_of_version);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
