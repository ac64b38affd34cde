/* thread.h -- OS threads and a one-shot "done" event (thread.c). Process-local. */
#ifndef CC_THREAD_H
#define CC_THREAD_H
#include <pthread.h>
#include <stdint.h>

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

/* Workers: OS threads that run one job after another. cc_worker_run runs
 * fn(arg) on a parked worker, or on a new thread (4 MiB of stack, started
 * with signal `block` blocked besides the caller's mask when block > 0);
 * *w and *gen name the job for cc_worker_signal. 0 or -errno. */
typedef struct cc_worker cc_worker;
int cc_worker_run(cc_worker **w, uint64_t *gen, void (*fn)(void *), void *arg, int block);
/* pthread_kill(sig) to w while it still runs job gen: 1 sent, else 0. */
int cc_worker_signal(cc_worker *w, uint64_t gen, int sig);
#endif
