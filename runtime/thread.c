/*
 * thread.c -- the OS threads that run thread.new's threads, and the one-shot
 * event a join waits on (a condition on CLOCK_MONOTONIC, so a timeout is
 * immune to wall-clock changes, woken in slices when the waiter can be
 * interrupted).
 *
 * Workers. Starting an OS thread (clone, a stack, its first faults) and
 * ending one (the stack given back, the join) was about half of a
 * thread.new + join. So an OS thread that has run a job parks for up to
 * IDLE_SECONDS (at most IDLE_MAX of them) and the next job is handed to it:
 * a condition signal instead of pthread_create. A job is a function and its
 * argument; its end is for the caller to signal (bindings/thread.c sets the
 * thread record's event). Kept out of reuse, so that they end:
 * - a worker whose job ended holding a lock or rlock (cc_locks_held): the
 *   lock's next acquirer must see its holder's tid gone ("owner died"), and
 *   the next job on that OS thread must not pass for the holder;
 * - workers over IDLE_MAX, and all when the program ends or the module is
 *   unloaded (the destructor below wakes the parked ones and joins them:
 *   none may run this code once it is unmapped).
 * Ended workers are joined by the next cc_worker_run or the destructor, and
 * their records are kept for new workers (freed by the destructor only):
 * cc_worker_signal can always read one, and sends only while its job
 * number is still the one running (a cancel of a thread that just ended
 * must not reach the next).
 * What a job leaves in its OS thread stays for the next: the kernel tid
 * (thread.id), a signal mask or CPU affinity a C module set, stack pages
 * touched. A forked child has none of the workers (forget_workers).
 */
#include "thread.h"
#include "cc.h"
#include "locks.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
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

/* ---- workers: OS threads that run one job after another ---- */

#define IDLE_MAX 4
#define IDLE_SECONDS 10.0

struct cc_worker {
    pthread_t tid;
    pthread_cond_t cv;
    void (*fn)(void *);     /* its job, NULL once it has ended */
    void *arg;
    uint64_t gen;           /* the job's number */
    _Atomic int handed;     /* a job was given to it while parked */
    cc_worker *next;        /* on the idle, dead or spare list */
};

static pthread_mutex_t wlock = PTHREAD_MUTEX_INITIALIZER;
static cc_worker *idle, *dead, *spare;
static int nidle, nbusy, stopping;
static __thread int in_job; /* this thread is a worker running a job */
static uint64_t jobs;

/* Before it sleeps, a parked worker watches for a job for up to SPIN
 * seconds: a job that comes meanwhile (the next thread.new of a loop) is
 * taken without a wake-up, which costs the giver a system call and the
 * worker a scheduler round (about 6 + 12 us here). */
#define SPIN 50e-6
static void spin(cc_worker *w) {
    double until = cc_now() + SPIN;
    for (unsigned k = 1; !atomic_load_explicit(&w->handed, memory_order_acquire); k++) {
        cc_relax();
        if (!(k & 63) && cc_now() > until) return;
    }
}

static void *worker_main(void *p) {
    cc_worker *w = p;
    pthread_mutex_lock(&wlock);
    for (;;) {
        void (*fn)(void *) = w->fn;
        void *arg = w->arg;
        pthread_mutex_unlock(&wlock);
        in_job = 1;
        fn(arg);
        in_job = 0;
        int keep = cc_locks_held() == 0;
        pthread_mutex_lock(&wlock);
        nbusy--;
        w->fn = NULL;
        w->arg = NULL;
        if (!keep || stopping || nidle >= IDLE_MAX) break;
        w->next = idle;
        idle = w;
        nidle++;
        atomic_store(&w->handed, 0);
        pthread_mutex_unlock(&wlock);
        spin(w);
        pthread_mutex_lock(&wlock);
        struct timespec ts;
        cc_timespec(cc_now() + IDLE_SECONDS, &ts);
        while (!w->fn && !stopping)
            if (pthread_cond_timedwait(&w->cv, &wlock, &ts) == ETIMEDOUT) break;
        if (w->fn) continue; /* cc_worker_run took it off the idle list */
        for (cc_worker **pp = &idle; *pp; pp = &(*pp)->next)
            if (*pp == w) {
                *pp = w->next;
                nidle--;
                break;
            }
        break;
    }
    w->next = dead;
    dead = w;
    pthread_mutex_unlock(&wlock);
    return NULL;
}

/* join the workers on list l (ended), then keep their records for reuse */
static void reap(cc_worker *l) {
    while (l) {
        cc_worker *n = l->next;
        pthread_join(l->tid, NULL);
        pthread_cond_destroy(&l->cv);
        pthread_mutex_lock(&wlock);
        l->next = spare;
        spare = l;
        pthread_mutex_unlock(&wlock);
        l = n;
    }
}

/* A forked child has none of its parent's workers (only the thread that
 * forked): the lists start empty there; records on the spare list are free
 * memory and stay. The lock is held across the fork, so the child's copy
 * is consistent (and ThreadSanitizer sees these writes ordered). */
static void workers_before_fork(void) { pthread_mutex_lock(&wlock); }
static void workers_in_parent(void) { pthread_mutex_unlock(&wlock); }
static void forget_workers(void) {
    idle = dead = NULL;
    nidle = nbusy = 0;
    stopping = 0;
    pthread_mutex_unlock(&wlock);
}

static pthread_once_t workers_once = PTHREAD_ONCE_INIT;
static void workers_init(void) { pthread_atfork(workers_before_fork, workers_in_parent, forget_workers); }

/* Start a thread running w (under wlock, so cc_worker_signal sees its
 * tid): 4 MiB of reserved (not committed) stack, room for Lua's C
 * recursion limit even under AddressSanitizer's larger frames; the
 * caller's signal mask plus `block`, set by the new thread itself. 0 or an
 * errno. */
static int start(cc_worker *w, int block) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 4u << 20);
    if (block > 0) {
        sigset_t m;
        pthread_sigmask(SIG_SETMASK, NULL, &m);
        sigaddset(&m, block);
        pthread_attr_setsigmask_np(&a, &m);
    }
    int r = pthread_create(&w->tid, &a, worker_main, w);
    pthread_attr_destroy(&a);
    if (r) pthread_cond_destroy(&w->cv);
    return r;
}

int cc_worker_run(cc_worker **out, uint64_t *gen, void (*fn)(void *), void *arg, int block) {
    pthread_once(&workers_once, workers_init);
    pthread_mutex_lock(&wlock);
    cc_worker *ended = dead;
    dead = NULL;
    cc_worker *w = idle;
    int parked = w != NULL, r = 0;
    if (parked) {
        idle = w->next;
        nidle--;
    } else if ((w = spare)) {
        spare = w->next;
    } else {
        w = calloc(1, sizeof *w);
    }
    if (!w) {
        r = ENOMEM;
    } else {
        w->fn = fn;
        w->arg = arg;
        w->gen = ++jobs;
        if (parked) {
            atomic_store_explicit(&w->handed, 1, memory_order_release);
            pthread_cond_signal(&w->cv);
        } else if ((r = start(w, block))) {
            w->fn = NULL; /* runs nothing: cc_worker_signal leaves it alone */
            w->next = spare;
            spare = w;
        }
    }
    if (!r) {
        nbusy++;
        *out = w;
        *gen = w->gen;
    }
    pthread_mutex_unlock(&wlock);
    reap(ended);
    return -r;
}

int cc_worker_signal(cc_worker *w, uint64_t gen, int sig) {
    pthread_mutex_lock(&wlock);
    int sent = w->fn && w->gen == gen && pthread_kill(w->tid, sig) == 0;
    pthread_mutex_unlock(&wlock);
    return sent;
}

/* When the program ends, or this code is unloaded (the module's dlclose):
 * parked workers are woken to end, and every worker that has ended is
 * joined, so none runs this code once it is gone. A job still running (a
 * thread stop() left running) is waited for a moment only. */
static void __attribute__((destructor)) stop_workers(void) {
    pthread_mutex_lock(&wlock);
    stopping = 1;
    for (cc_worker *w = idle; w; w = w->next) pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&wlock);
    for (int i = 0; i < 100; i++) {
        pthread_mutex_lock(&wlock);
        cc_worker *ended = dead;
        dead = NULL;
        int more = idle != NULL || nbusy - in_job > 0;
        pthread_mutex_unlock(&wlock);
        reap(ended);
        if (!more) break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    /* the records of joined workers go too: unloaded, nothing would
     * point at them any more */
    pthread_mutex_lock(&wlock);
    cc_worker *l = spare;
    spare = NULL;
    pthread_mutex_unlock(&wlock);
    while (l) {
        cc_worker *n = l->next;
        free(l);
        l = n;
    }
}
