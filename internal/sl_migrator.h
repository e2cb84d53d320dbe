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

/* Starts sl_db_migrate_url(url, wait_s, stop) on a thread and waits up to head_start_ms for it
 * to end. url and stop must outlive the migrator. NULL when no thread could be started (the
 * caller may then migrate itself). */
sl_migrator_t *sl_migrator_start(const char *url, int wait_s, volatile sig_atomic_t *stop, int head_start_ms);
/* 1 once the migration ended (successfully or not). */
int sl_migrator_done(const sl_migrator_t *m);
/* Joins a finished migration and frees m; a migration still running (stuck in a connect to a
 * hung database) is left to end with the process. NULL is a no-op. */
void sl_migrator_finish(sl_migrator_t *m);

#endif
