/*
 * clock.c -- monotonic time, deadlines, interruptible sleep, and the
 * per-thread interruption flag that every blocking wait polls.
 *
 * Deadlines are absolute CLOCK_MONOTONIC seconds so that a wait that is
 * woken early (a spurious futex wake, a signal) resumes with the right
 * remaining time without any bookkeeping by the caller.
 */
#include "cc.h"

#include <errno.h>
#include <time.h>

static __thread _Atomic int *interrupt_flag;

double cc_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double cc_deadline(double timeout) {
    /* math.huge, 1e300 and anything past CC_MAX_TIMEOUT wait forever: a
     * deadline that far out would overflow time_t in a timespec */
    if (timeout < 0 || !(timeout <= CC_MAX_TIMEOUT)) return CC_FOREVER;
    return cc_now() + timeout;
}

void cc_interrupt_set(_Atomic int *flag) { interrupt_flag = flag; }

/* The registered flag, so a wait that must not be cut short (reaping
 * what a cancelled thread started) can lift it and put it back. */
_Atomic int *cc_interrupt_get(void) { return interrupt_flag; }

int cc_interrupted(void) { return interrupt_flag && *interrupt_flag; }

/* How long a wait may sleep before it looks at the interruption flag. */
double cc_wait_slice(double deadline) {
    double slice = interrupt_flag ? 0.05 : -1;
    if (slice < 0) return deadline;
    double until = cc_now() + slice;
    return (deadline < 0 || until < deadline) ? until : deadline;
}

int cc_poll_ms(double until) {
    if (until < 0) return -1;
    double left = until - cc_now();
    return left <= 0 ? 0 : left > 86400 ? 86400 * 1000 : (int)(left * 1000) + 1;
}

void cc_timespec(double t, struct timespec *ts) {
    if (!(t >= 0)) t = 0;
    if (t > 2 * CC_MAX_TIMEOUT) t = 2 * CC_MAX_TIMEOUT; /* never past time_t */
    ts->tv_sec = (time_t)t;
    ts->tv_nsec = (long)((t - (double)ts->tv_sec) * 1e9);
    if (ts->tv_nsec >= 1000000000L) { ts->tv_sec++; ts->tv_nsec -= 1000000000L; }
    if (ts->tv_nsec < 0) ts->tv_nsec = 0;
}

int cc_sleep(double seconds) {
    double deadline = cc_deadline(seconds > 0 ? seconds : 0);
    for (;;) {
        if (cc_interrupted()) return -EINTR;
        double until = cc_wait_slice(deadline);
        if (until < 0) until = cc_now() + 86400.0; /* forever: a day at a time */
        struct timespec ts;
        cc_timespec(until, &ts);
        int r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        if (r != 0 && r != EINTR) return -r;
        if (deadline >= 0 && cc_now() >= deadline) return 0;
    }
}
