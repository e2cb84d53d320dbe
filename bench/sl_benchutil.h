/*
 * sl_benchutil: what the benchmark programs measure alike: CPU time, of this process, of a child
 * it waited for, or of another process read from /proc. Any thread.
 */
#ifndef SL_BENCHUTIL_H
#define SL_BENCHUTIL_H

#include <sys/resource.h>

/* User plus system seconds in ru. */
double bu_cpu_s(const struct rusage *ru);
/* This process's CPU seconds so far (user plus system). */
double bu_self_cpu_s(void);
/* utime + stime of process pid, in clock ticks (sysconf(_SC_CLK_TCK) a second); -1 when pid <= 0
 * or /proc does not have it. */
long long bu_proc_cpu_ticks(long pid);

#endif
