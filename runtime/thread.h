/* thread.h -- OS threads and a one-shot "done" event (thread.c). Process-local. */
#ifndef CC_THREAD_H
#define CC_THREAD_H
#include <pthread.h>

typedef struct cc_done {
    pthread_mutex_t m;
    pthread_cond_t c;   /* on CLOCK_MONOTONIC */
    int done;
} cc_done;
void cc_done_init(cc_done *d);
void cc_done_destroy(cc_done *d);
void cc_done_set(cc_done *d);
int cc_done_get(cc_done *d);
int cc_done_wait(cc_done *d, double deadline);   /* 0, -ETIMEDOUT, -EINTR */

/* The calling thread's interruption flag (clock.c; cc_interrupt_set sets
 * it): lifted while stopping what a cancelled thread started, whose waits
 * must not themselves be interrupted. */
_Atomic int *cc_interrupt_get(void);

/* Join t, waiting until deadline (absolute, CC_FOREVER) in slices that
 * watch cc_interrupted(): 0, -ETIMEDOUT, -EINTR or -errno. */
int cc_thread_join(pthread_t t, double deadline);

/* Start fn(arg) on a new joinable thread; 0 or -errno. block > 0: a signal
 * the new thread starts with blocked besides the caller's mask (set at its
 * creation: the caller's own mask is not touched). */
int cc_thread_start(pthread_t *t, void *(*fn)(void *), void *arg, int block);
#endif
