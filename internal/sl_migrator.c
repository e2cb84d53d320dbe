/*
 * sl_migrator: see sl_migrator.h.
 */
#include "sl_migrator.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "sl_db.h"
#include "sl_log.h"

struct sl_migrator {
    pthread_t thread;
    const char *url;
    int wait_s;
    volatile sig_atomic_t *stop;
    atomic_int done; /* 1: ended; 2: ended and the starter left (the thread frees m) */
};

static void *run(void *arg)
{
    sl_migrator_t *m = arg;
    sl_db_migrate_url(m->url, m->wait_s, m->stop);
    int expected = 0;
    if (!atomic_compare_exchange_strong(&m->done, &expected, 1))
        free(m); /* detached by sl_migrator_finish meanwhile */
    return NULL;
}

sl_migrator_t *sl_migrator_start(const char *url, int wait_s, volatile sig_atomic_t *stop)
{
    int head_start_ms = wait_s < SL_MIGRATOR_HEAD_START_MS / 1000 ? wait_s * 1000 : SL_MIGRATOR_HEAD_START_MS;
    sl_migrator_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->url = url;
    m->wait_s = wait_s;
    m->stop = stop;
    atomic_init(&m->done, 0);
    if (pthread_create(&m->thread, NULL, run, m) != 0) {
        free(m);
        return NULL;
    }
    for (int waited = 0; waited < head_start_ms && !sl_migrator_done(m) && !(stop != NULL && *stop); waited += 10) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (!sl_migrator_done(m))
        SL_WARN("event=migration_pending waited_ms=%d reason=\"the database has not answered yet; serving meanwhile\"",
                head_start_ms);
    return m;
}

int sl_migrator_done(const sl_migrator_t *m)
{
    return atomic_load((atomic_int *)&m->done) != 0;
}

void sl_migrator_finish(sl_migrator_t *m)
{
    if (m == NULL)
        return;
    int expected = 0;
    if (atomic_compare_exchange_strong(&m->done, &expected, 2)) {
        /* still running: the thread frees m when (if) it ends */
        pthread_detach(m->thread);
        SL_INFO("event=migration_abandoned reason=\"still waiting for the database at exit\"");
        return;
    }
    pthread_join(m->thread, NULL);
    free(m);
}
