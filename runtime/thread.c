/*
 * thread.c -- OS threads for thread.new, and the one-shot event a closing
 * state waits on (a condition on CLOCK_MONOTONIC, so a timeout is immune to
 * wall-clock changes, woken in slices when the waiter can be interrupted).
 * A join waits on the thread's exit itself (pthread_clockjoin_np, in the
 * same slices): one wake-up, where the event and then pthread_join were
 * two.
 */
#include "thread.h"
#include "cc.h"

#include <errno.h>
#include <signal.h>
#include <time.h>

void cc_done_init(cc_done *d) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&d->c, &a);
    pthread_condattr_destroy(&a);
    pthread_mutex_init(&d->m, NULL);
    d->done = 0;
}

void cc_done_destroy(cc_done *d) {
    pthread_cond_destroy(&d->c);
    pthread_mutex_destroy(&d->m);
}

void cc_done_set(cc_done *d) {
    pthread_mutex_lock(&d->m);
    d->done = 1;
    pthread_cond_broadcast(&d->c);
    pthread_mutex_unlock(&d->m);
}

int cc_done_get(cc_done *d) {
    pthread_mutex_lock(&d->m);
    int r = d->done;
    pthread_mutex_unlock(&d->m);
    return r;
}

int cc_done_wait(cc_done *d, double deadline) {
    int r = 0;
    pthread_mutex_lock(&d->m);
    while (!d->done) {
        if (cc_interrupted()) { r = -EINTR; break; }
        double until = cc_wait_slice(deadline);
        if (until < 0) {
            pthread_cond_wait(&d->c, &d->m);
            continue;
        }
        struct timespec ts;
        cc_timespec(until, &ts);
        pthread_cond_timedwait(&d->c, &d->m, &ts);
        if (!d->done && deadline >= 0 && cc_now() >= deadline) { r = -ETIMEDOUT; break; }
    }
    pthread_mutex_unlock(&d->m);
    return r;
}

int cc_thread_start(pthread_t *t, void *(*fn)(void *), void *arg, int block) {
    pthread_attr_t a;
    pthread_attr_init(&a);
    /* 4 MiB of reserved (not committed) stack: room for Lua's C recursion
     * limit even under AddressSanitizer's larger frames. */
    pthread_attr_setstacksize(&a, 4u << 20);
    if (block > 0) { /* the caller's mask and block: set by the new thread itself */
        sigset_t m;
        pthread_sigmask(SIG_SETMASK, NULL, &m);
        sigaddset(&m, block);
        pthread_attr_setsigmask_np(&a, &m);
    }
    int r = pthread_create(t, &a, fn, arg);
    pthread_attr_destroy(&a);
    return -r;
}

/* pthread_clockjoin_np until the monotonic time until; TSan does not
 * intercept it (it would never see the join), so there the same wait goes
 * through pthread_timedjoin_np on the wall clock. */
static int join_until(pthread_t t, double until) {
    struct timespec ts;
#if CC_TSAN
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    double left = until - cc_now();
    cc_timespec((double)rt.tv_sec + (double)rt.tv_nsec * 1e-9 + (left > 0 ? left : 0), &ts);
    return pthread_timedjoin_np(t, NULL, &ts);
#else
    cc_timespec(until, &ts);
    return pthread_clockjoin_np(t, NULL, CLOCK_MONOTONIC, &ts);
#endif
}

int cc_thread_join(pthread_t t, double deadline) {
    if (pthread_tryjoin_np(t, NULL) == 0) return 0;
    for (;;) {
        if (cc_interrupted()) return -EINTR;
        double until = cc_wait_slice(deadline);
        if (until < 0) return -pthread_join(t, NULL);
        int r = join_until(t, until);
        if (r != ETIMEDOUT) return -r;
        if (deadline >= 0 && cc_now() >= deadline) return -ETIMEDOUT;
    }
}
