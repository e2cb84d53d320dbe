/*
 * sl_migrator: a service's schema migration (sl_db_migrate_url, which blocks) on a thread of its
 * own, so that the service listens, and its event loop runs, while the database is slow, away or
 * hung. The service may give the migration a head start: a healthy database is migrated before
 * the first request (as when the migration ran before listening), a hung one delays listening by
 * that much at most.
 *
 * Threading: start and finish from the service's main thread; the migration thread touches
 * nothing else of the service's.
 */
#ifndef SL_MIGRATOR_H
#define SL_MIGRATOR_H

#include <signal.h>

typedef struct sl_migrator sl_migrator_t;

/* The head start: a healthy database is migrated within it, a slow or hung one is not waited for
 * longer (the migration goes on meanwhile). */
#define SL_MIGRATOR_HEAD_START_MS 2000

/* Starts sl_db_migrate_url(url, wait_s, stop) on a thread and waits for it to end, at most the
 * head start (or wait_s if shorter). url and stop must outlive the migrator. NULL when no thread
 * could be started (the caller may then migrate itself). */
sl_migrator_t *sl_migrator_start(const char *url, int wait_s, volatile sig_atomic_t *stop);
/* 1 once the migration ended (successfully or not). */
int sl_migrator_done(const sl_migrator_t *m);
/* Joins a finished migration and frees m; a migration still running (stuck in a connect to a
 * hung database) is left to end with the process. NULL is a no-op. */
void sl_migrator_finish(sl_migrator_t *m);

#endif
