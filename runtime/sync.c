/*
 * sync.c -- process-shared robust mutexes, futex conditions.
 *
 * Mutex: a pthread mutex with PTHREAD_PROCESS_SHARED and
 * PTHREAD_MUTEX_ROBUST. The kernel's robust list hands a mutex whose owner
 * died (process killed, thread exited) to the next locker with EOWNERDEAD;
 * we mark it consistent at once and report -EOWNERDEAD, so the caller can
 * say "owner died" and no one deadlocks. The data structures built on these
 * mutexes commit each mutation with a single store, so marking consistent
 * is honest.
 *
 * Condition: not pthread_cond_t. glibc's process-shared condvar keeps
 * per-waiter group state inside the condvar; a waiter SIGKILLed in the
 * middle of a wait can leave a signaller waiting for it forever. Ours is a
 * futex sequence word plus a waiter count: a waiter reads the sequence under
 * the mutex, unlocks, and sleeps only while the word still has that value.
 * A dead waiter leaves at most an inflated waiter count (an extra futex wake
 * later, harmless). Signalling with no sleeper is two atomic operations, no
 * system call.
 */
#include "cc.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(pthread_mutex_t) <= sizeof(cc_mutex), "cc_mutex too small");

#define PM(m) ((pthread_mutex_t *)(void *)(m)->opaque)

int cc_mutex_init(cc_mutex *m) {
    pthread_mutexattr_t a;
    int r = pthread_mutexattr_init(&a);
    if (r) return -r;
    r = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (!r) r = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (!r) r = pthread_mutex_init(PM(m), &a);
    pthread_mutexattr_destroy(&a);
    return -r;
}

static int owner_check(pthread_mutex_t *pm, int r) {
    if (r == EOWNERDEAD) {
        pthread_mutex_consistent(pm);
        return -EOWNERDEAD;
    }
    return -r;
}

int cc_mutex_lock(cc_mutex *m, double deadline) {
    pthread_mutex_t *pm = PM(m);
    int r = pthread_mutex_trylock(pm);
    if (r != EBUSY) return owner_check(pm, r);
    for (;;) {
        if (cc_interrupted()) return -EINTR;
        double until = cc_wait_slice(deadline);
        if (until < 0) return owner_check(pm, pthread_mutex_lock(pm));
        struct timespec ts;
        cc_timespec(until, &ts);
        r = pthread_mutex_clocklock(pm, CLOCK_MONOTONIC, &ts);
        if (r != ETIMEDOUT) return owner_check(pm, r);
        if (deadline >= 0 && cc_now() >= deadline) return -ETIMEDOUT;
    }
}

int cc_mutex_lock_hard(cc_mutex *m) { return owner_check(PM(m), pthread_mutex_lock(PM(m))); }

int cc_mutex_trylock(cc_mutex *m) { return owner_check(PM(m), pthread_mutex_trylock(PM(m))); }

int cc_mutex_unlock(cc_mutex *m) { return -pthread_mutex_unlock(PM(m)); }

void cc_mutex_destroy(cc_mutex *m) { pthread_mutex_destroy(PM(m)); }

/* ---- futex ---- */

int cc_futex_wait(_Atomic uint32_t *w, uint32_t val, double deadline) {
    for (;;) {
        if (cc_interrupted()) return -EINTR;
        if (*w != val) return 0;
        double until = cc_wait_slice(deadline);
        struct timespec ts, *tp = NULL;
        if (until >= 0) {
            cc_timespec(until, &ts);
            tp = &ts;
        }
        /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time. Not
         * FUTEX_PRIVATE: the word is shared with other processes. */
        long r = syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT_BITSET, val, tp, NULL,
                         FUTEX_BITSET_MATCH_ANY);
        if (r == 0) return 0;
        if (errno == EAGAIN) return 0;
        if (errno == ETIMEDOUT) {
            if (deadline >= 0 && cc_now() >= deadline) return -ETIMEDOUT;
            continue; /* a slice ended: look at the interruption flag */
        }
        if (errno != EINTR) return -errno;
    }
}

void cc_futex_wake(_Atomic uint32_t *w, int n) {
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* ---- file descriptors ---- */

int cc_wait_fd(int fd, short events, double deadline) {
    for (;;) {
        if (cc_interrupted()) return -EINTR;
        struct pollfd pf = {fd, events, 0};
        int r = poll(&pf, 1, cc_poll_ms(cc_wait_slice(deadline)));
        if (r > 0) return 1;
        if (r < 0 && errno != EINTR) return -errno;
        if (deadline >= 0 && cc_now() >= deadline) return 0;
    }
}

/* ---- condition ---- */

void cc_cond_init(cc_cond *c) {
    c->seq = 0;
    c->waiters = 0;
}

int cc_cond_wait(cc_cond *c, cc_mutex *m, double deadline) {
    uint32_t seq = c->seq;
    c->waiters++;
    cc_mutex_unlock(m);
    int r = cc_futex_wait(&c->seq, seq, deadline);
    c->waiters--;
    /* Re-lock unconditionally (not interruptible): the caller must hold
     * the mutex when this returns, whatever happened while asleep. */
    int lr = cc_mutex_lock_hard(m);
    if (lr == -EOWNERDEAD) return lr;
    return r;
}

void cc_cond_signal(cc_cond *c) {
    c->seq++;
    if (c->waiters) cc_futex_wake(&c->seq, 1);
}

void cc_cond_broadcast(cc_cond *c) {
    c->seq++;
    if (c->waiters) cc_futex_wake(&c->seq, INT_MAX);
}
