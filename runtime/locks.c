/*
 * locks.c -- lock, rlock, semaphore, event, condition, barrier: Python's
 * threading/multiprocessing set, in the arena, across threads and processes.
 *
 * lock/rlock: a robust process-shared pthread mutex (cc_mutex). The kernel
 * hands a mutex whose holder died -- process killed, thread exited -- to the
 * next acquirer with EOWNERDEAD: acquire returns -EOWNERDEAD, the binding
 * says "owner died", nobody deadlocks. glibc checks ownership on unlock of a
 * robust mutex, so a release by anyone but the holder is -EPERM. We also keep
 * the holder's kernel tid (unique across processes) for rlock recursion,
 * `locked`, and the ownership check conditions need. The uncontended path
 * is one atomic to lock and one to unlock, plus a cached tid.
 *
 * The rest are a cc_mutex, a cc_cond (futex) and a counter or flag. A
 * condition waits on its own cc_cond with its lock's mutex, releasing an
 * rlock's whole recursion and restoring it after.
 */
#include "locks.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

/* ---- the calling thread's kernel tid, cached (refreshed after fork) ---- */

static __thread pid_t my_tid;
static pthread_once_t tid_once = PTHREAD_ONCE_INIT;

static void forget_tid(void) { my_tid = 0; }
static void register_atfork(void) { pthread_atfork(NULL, NULL, forget_tid); }

static pid_t tid(void) {
    if (!my_tid) {
        pthread_once(&tid_once, register_atfork);
        my_tid = gettid();
    }
    return my_tid;
}

/* ---- lock / rlock ---- */

/* The holder's bookkeeping: written by the holder, read by anyone
 * (locked(), the rlock check): relaxed atomics, plain moves on x86. */
#define OWNER(l) atomic_load_explicit(&(l)->owner, memory_order_relaxed)
#define DEPTH(l) atomic_load_explicit(&(l)->depth, memory_order_relaxed)
#define SET(field, v) atomic_store_explicit(&l->field, (v), memory_order_relaxed)

struct cc_lock {
    cc_obj hdr;
    cc_mutex m;
    _Atomic pid_t owner;   /* kernel tid of the holder, 0 when free */
    _Atomic int64_t depth; /* rlock recursion; read outside the lock too */
};

int cc_lock_new(cc_lock **out, int recursive) {
    cc_lock *l = cc_calloc(sizeof *l);
    if (!l) return -ENOMEM;
    cc_obj_init(&l->hdr, recursive ? CC_T_RLOCK : CC_T_LOCK);
    int r = cc_mutex_init(&l->m);
    if (r) {
        cc_free(l);
        return r;
    }
    *out = l;
    return 0;
}

void cc_lock_destroy(cc_obj *o) {
    cc_lock *l = (cc_lock *)o;
    cc_mutex_destroy(&l->m);
    cc_free(l);
}

int cc_lock_acquire(cc_lock *l, double deadline) {
    pid_t me = tid();
    if (l->hdr.type == CC_T_RLOCK && OWNER(l) == me) {
        SET(depth, DEPTH(l) + 1);
        return 0;
    }
    int r = cc_mutex_lock(&l->m, deadline);
    if (r == 0 || r == -EOWNERDEAD) {
        SET(owner, me);
        SET(depth, 1);
    }
    return r;
}

int cc_lock_release(cc_lock *l) {
    if (OWNER(l) != tid()) return -EPERM;
    int64_t depth = DEPTH(l) - 1;
    SET(depth, depth);
    if (depth > 0) return 0;
    SET(owner, 0);
    int r = cc_mutex_unlock(&l->m);
    if (r) { /* not ours after all: put the bookkeeping back */
        SET(owner, tid());
        SET(depth, 1);
    }
    return r;
}

int cc_lock_locked(cc_lock *l) { return OWNER(l) != 0; }
int cc_lock_owned(cc_lock *l) { return OWNER(l) == tid(); }

/* ---- semaphore ---- */

struct cc_sem {
    cc_obj hdr;
    cc_mutex m;
    cc_cond c;
    int64_t value;
};

int cc_sem_new(cc_sem **out, int64_t value) {
    if (value < 0) return -EINVAL;
    cc_sem *s = cc_calloc(sizeof *s);
    if (!s) return -ENOMEM;
    cc_obj_init(&s->hdr, CC_T_SEM);
    cc_mutex_init(&s->m);
    cc_cond_init(&s->c);
    s->value = value;
    *out = s;
    return 0;
}

void cc_sem_destroy(cc_obj *o) {
    cc_sem *s = (cc_sem *)o;
    cc_mutex_destroy(&s->m);
    cc_free(s);
}

int cc_sem_acquire(cc_sem *s, double deadline) {
    cc_mutex_lock_hard(&s->m);
    int r = 0;
    while (s->value == 0) {
        r = cc_cond_wait(&s->c, &s->m, deadline);
        if (r && r != -EOWNERDEAD) break;
        r = 0;
    }
    if (!r) s->value--;
    cc_mutex_unlock(&s->m);
    return r;
}

int cc_sem_release(cc_sem *s, int64_t n) {
    if (n < 1) return -EINVAL;
    cc_mutex_lock_hard(&s->m);
    s->value += n;
    if (n == 1) cc_cond_signal(&s->c);
    else cc_cond_broadcast(&s->c);
    cc_mutex_unlock(&s->m);
    return 0;
}

int64_t cc_sem_value(cc_sem *s) { return __atomic_load_n(&s->value, __ATOMIC_ACQUIRE); }

/* ---- event ---- */

struct cc_event {
    cc_obj hdr;
    cc_mutex m;
    cc_cond c;
    int set;
};

int cc_event_new(cc_event **out) {
    cc_event *e = cc_calloc(sizeof *e);
    if (!e) return -ENOMEM;
    cc_obj_init(&e->hdr, CC_T_EVENT);
    cc_mutex_init(&e->m);
    cc_cond_init(&e->c);
    *out = e;
    return 0;
}

void cc_event_destroy(cc_obj *o) {
    cc_event *e = (cc_event *)o;
    cc_mutex_destroy(&e->m);
    cc_free(e);
}

int cc_event_set(cc_event *e) {
    cc_mutex_lock_hard(&e->m);
    e->set = 1;
    cc_cond_broadcast(&e->c);
    cc_mutex_unlock(&e->m);
    return 0;
}

int cc_event_clear(cc_event *e) {
    cc_mutex_lock_hard(&e->m);
    e->set = 0;
    cc_mutex_unlock(&e->m);
    return 0;
}

int cc_event_is_set(cc_event *e) { return __atomic_load_n(&e->set, __ATOMIC_ACQUIRE); }

int cc_event_wait(cc_event *e, double deadline) {
    cc_mutex_lock_hard(&e->m);
    int r = 0;
    while (!e->set) {
        r = cc_cond_wait(&e->c, &e->m, deadline);
        if (r && r != -EOWNERDEAD) break;
        r = 0;
    }
    cc_mutex_unlock(&e->m);
    return r;
}

/* ---- condition ---- */

struct cc_condvar {
    cc_obj hdr;
    cc_lock *lock;
    cc_cond c;
};

int cc_condvar_new(cc_condvar **out, cc_lock *lock) {
    cc_condvar *c = cc_calloc(sizeof *c);
    if (!c) return -ENOMEM;
    if (lock) {
        cc_retain(&lock->hdr);
    } else {
        int r = cc_lock_new(&lock, 1); /* Python's default is an RLock */
        if (r) {
            cc_free(c);
            return r;
        }
    }
    cc_obj_init(&c->hdr, CC_T_COND);
    c->lock = lock;
    cc_cond_init(&c->c);
    *out = c;
    return 0;
}

void cc_condvar_destroy(cc_obj *o) {
    cc_condvar *c = (cc_condvar *)o;
    cc_release(&c->lock->hdr);
    cc_free(c);
}

cc_lock *cc_condvar_lock(cc_condvar *c) { return c->lock; }

int cc_condvar_wait(cc_condvar *c, double deadline) {
    cc_lock *l = c->lock;
    if (!cc_lock_owned(l)) return -EPERM;
    int64_t depth = DEPTH(l); /* an rlock is released fully, then restored */
    SET(owner, 0);
    SET(depth, 0);
    int r = cc_cond_wait(&c->c, &l->m, deadline);
    SET(owner, tid());
    SET(depth, depth);
    return r == -EOWNERDEAD ? 0 : r;
}

int cc_condvar_notify(cc_condvar *c, int64_t n) {
    if (!cc_lock_owned(c->lock)) return -EPERM;
    if (n >= INT_MAX) {
        cc_cond_broadcast(&c->c);
        return 0;
    }
    c->c.seq++;
    if (c->c.waiters && n > 0) cc_futex_wake(&c->c.seq, (int)n);
    return 0;
}

int cc_condvar_notify_all(cc_condvar *c) {
    if (!cc_lock_owned(c->lock)) return -EPERM;
    cc_cond_broadcast(&c->c);
    return 0;
}

/* ---- barrier ---- */

struct cc_barrier {
    cc_obj hdr;
    cc_mutex m;
    cc_cond c;
    int64_t parties, count;
    uint64_t generation;
    uint64_t reset_gen; /* the round a reset() cut short: its waiters fail */
    int broken;
};

int cc_barrier_new(cc_barrier **out, int64_t parties) {
    if (parties < 1) return -EINVAL;
    cc_barrier *b = cc_calloc(sizeof *b);
    if (!b) return -ENOMEM;
    cc_obj_init(&b->hdr, CC_T_BARRIER);
    cc_mutex_init(&b->m);
    cc_cond_init(&b->c);
    b->parties = parties;
    b->reset_gen = UINT64_MAX;
    *out = b;
    return 0;
}

void cc_barrier_destroy(cc_obj *o) {
    cc_barrier *b = (cc_barrier *)o;
    cc_mutex_destroy(&b->m);
    cc_free(b);
}

static void break_barrier(cc_barrier *b) {
    b->broken = 1;
    cc_cond_broadcast(&b->c);
}

int64_t cc_barrier_wait(cc_barrier *b, double deadline) {
    cc_mutex_lock_hard(&b->m);
    if (b->broken) {
        cc_mutex_unlock(&b->m);
        return -EPIPE;
    }
    int64_t index = b->count++;
    uint64_t gen = b->generation;
    int64_t r = index;
    if (b->count == b->parties) { /* the last arrival releases everyone */
        b->count = 0;
        b->generation++;
        cc_cond_broadcast(&b->c);
    } else {
        while (gen == b->generation && !b->broken) {
            int w = cc_cond_wait(&b->c, &b->m, deadline);
            if (w && w != -EOWNERDEAD) {
                if (gen == b->generation) { /* a timeout breaks the barrier */
                    break_barrier(b);
                    r = w;
                }
                break;
            }
        }
        if (r >= 0 && gen == b->generation && b->broken) r = -EPIPE;
        if (r >= 0 && gen != b->generation && gen == b->reset_gen) r = -EPIPE;
    }
    cc_mutex_unlock(&b->m);
    return r;
}

int cc_barrier_abort(cc_barrier *b) {
    cc_mutex_lock_hard(&b->m);
    break_barrier(b);
    cc_mutex_unlock(&b->m);
    return 0;
}

int cc_barrier_reset(cc_barrier *b) {
    cc_mutex_lock_hard(&b->m);
    if (b->count > 0) { /* those waiting now see a broken barrier */
        b->reset_gen = b->generation;
        cc_cond_broadcast(&b->c);
    }
    b->generation++;
    if (b->reset_gen != b->generation - 1) b->reset_gen = UINT64_MAX;
    b->count = 0;
    b->broken = 0;
    cc_mutex_unlock(&b->m);
    return 0;
}

int64_t cc_barrier_parties(cc_barrier *b) { return b->parties; }
int64_t cc_barrier_waiting(cc_barrier *b) { return __atomic_load_n(&b->count, __ATOMIC_ACQUIRE); }
int cc_barrier_broken(cc_barrier *b) { return __atomic_load_n(&b->broken, __ATOMIC_ACQUIRE); }
