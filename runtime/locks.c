/*
 * locks.c -- lock, rlock, semaphore, event, condition, barrier: Python's
 * threading/multiprocessing set, in the arena, across threads and processes.
 *
 * lock/rlock: a futex word of our own holding the holder's kernel tid
 * (unique across processes) and a "waiters" bit. Uncontended, acquire is
 * one compare-and-swap 0 -> tid and release one exchange back to 0 (a futex
 * wake only when the bit says someone sleeps): no robust-list bookkeeping,
 * which made a pthread robust mutex's pair about 100 instructions dearer.
 * Owner death without the kernel's robust list: a waiter sleeps in slices
 * of DEATH_CHECK seconds and, before each, asks whether the tid in the word
 * still names a live thread (/proc/<tid>/stat exists and is not a zombie:
 * a SIGKILLed holder that nobody has reaped yet counts as dead). The first
 * to see it dead swaps the word to its own tid and gets -EOWNERDEAD; a
 * compare-and-swap, so two such waiters cannot both win. Tids are handed
 * out cyclically by the kernel, so a dead holder's tid names another
 * thread only after the pid space wraps. Without /proc mounted no death is
 * detected (waits time out as for a held lock). The tid and the rlock depth
 * are also what `locked`, the rlock recursion and conditions use.
 *
 * semaphore, event, barrier: a cc_mutex, a cc_cond (futex) and a counter
 * or flag; their waiters re-check the counter or flag, so a wake-up meant
 * for another is harmless. Counters refuse to overflow (-EOVERFLOW, value
 * unchanged). A condition has no predicate to re-check, so it keeps a queue
 * of its waiters and notify(n) wakes exactly n of them (see below); it
 * waits with its lock's mutex, releasing an rlock's whole recursion and
 * restoring it after.
 */
#include "locks.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- the calling thread's kernel tid, cached (refreshed after fork) ---- */

static __thread pid_t my_tid;
/* locks and rlocks this thread holds (an rlock once, however deep): a
 * worker thread that ends a job holding one must end too, for the
 * holder to count as dead (runtime/thread.c) */
static __thread int held;

int cc_locks_held(void) { return held; }
static pthread_once_t tid_once = PTHREAD_ONCE_INIT;

static void forget_tid(void) { my_tid = 0; }
static void register_atfork(void) { pthread_atfork(NULL, NULL, forget_tid); }

static pid_t __attribute__((noinline)) first_tid(void) {
    pthread_once(&tid_once, register_atfork);
    return my_tid = gettid();
}

static inline pid_t tid(void) {
    pid_t t = my_tid;
    return t ? t : first_tid();
}

/* ---- lock / rlock ---- */

#define TID_MASK 0x3fffffffu /* tids are < 2^22 (PID_MAX_LIMIT) */
#define WAITERS 0x40000000u
#define DEATH_CHECK 0.05

#define WORD(l) atomic_load_explicit(&(l)->word, memory_order_relaxed)
#define OWNER(l) ((pid_t)(WORD(l) & TID_MASK))
#define DEPTH(l) atomic_load_explicit(&(l)->depth, memory_order_relaxed)
#define SET(field, v) atomic_store_explicit(&l->field, (v), memory_order_relaxed)

struct cc_lock {
    cc_obj hdr;
    _Atomic uint32_t word;  /* holder's tid | WAITERS, 0 when free */
    _Atomic int64_t depth;  /* rlock recursion; read outside the lock too */
};

int cc_lock_new(cc_lock **out, int recursive) {
    cc_lock *l = cc_calloc(sizeof *l);
    if (!l) return -ENOMEM;
    cc_obj_init(&l->hdr, recursive ? CC_T_RLOCK : CC_T_LOCK);
    *out = l;
    return 0;
}

/* Nothing outside the block refers to the word (no robust list), so the
 * last reference frees it whoever holds it: a holder needs a reference to
 * release. */
void cc_lock_destroy(cc_obj *o) { cc_free(o); }

/* Is the thread with this tid gone (or a zombie)? 0 when unsure. */
static int thread_gone(pid_t t) {
    char path[48], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)t);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT || errno == ESRCH;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return n == 0 || errno == ESRCH; /* it went while we read */
    buf[n] = 0;
    const char *st = strrchr(buf, ')'); /* the name may hold anything but ')' is last */
    return st && st[1] == ' ' && (st[2] == 'Z' || st[2] == 'X' || st[2] == 'x');
}

/* The contended path: 0, -EOWNERDEAD, -ETIMEDOUT, -EINTR. `hard` waits
 * forever and is not interrupted (a condition re-taking its lock). A woken
 * waiter does not look for a dead holder (a release woke it: the holder was
 * alive); one that slept a whole slice unwoken does, and so does a wait
 * shorter than a slice at once, so acquire(0) sees a dead holder too. */
static int lock_slow(cc_lock *l, pid_t me, double deadline, int hard) {
    uint32_t mine = (uint32_t)me | WAITERS; /* after sleeping, others may too */
    int look = !hard && deadline >= 0 && deadline - cc_now() < DEATH_CHECK;
    for (;;) {
        uint32_t w = atomic_load(&l->word);
        if (w == 0) {
            if (atomic_compare_exchange_strong(&l->word, &w, mine)) return 0;
            continue;
        }
        if (look && thread_gone((pid_t)(w & TID_MASK))) {
            if (atomic_compare_exchange_strong(&l->word, &w, mine)) return -EOWNERDEAD;
            continue;
        }
        if (!(w & WAITERS) && !atomic_compare_exchange_strong(&l->word, &w, w | WAITERS)) continue;
        double until = cc_now() + DEATH_CHECK;
        if (!hard && deadline >= 0 && deadline < until) until = deadline;
        if (hard) { /* not interruptible: no cc_futex_wait, which would say -EINTR at once */
            struct timespec ts;
            cc_timespec(until, &ts);
            long r = syscall(SYS_futex, (uint32_t *)&l->word, FUTEX_WAIT_BITSET, w | WAITERS, &ts,
                             NULL, FUTEX_BITSET_MATCH_ANY);
            look = r == -1 && errno == ETIMEDOUT;
            continue;
        }
        int r = cc_futex_wait(&l->word, w | WAITERS, until);
        if (r == -EINTR) return r;
        if (r == -ETIMEDOUT && until == deadline) {
            /* a last look: the holder may have died during this wait */
            w = atomic_load(&l->word);
            if (w && thread_gone((pid_t)(w & TID_MASK)) &&
                atomic_compare_exchange_strong(&l->word, &w, mine))
                return -EOWNERDEAD;
            return r;
        }
        look = r == -ETIMEDOUT;
    }
}

static int lock_word(cc_lock *l, pid_t me, double deadline, int hard) {
    uint32_t free = 0;
    if (__builtin_expect(atomic_compare_exchange_strong(&l->word, &free, (uint32_t)me), 1))
        return 0;
    if (!hard && cc_interrupted()) return -EINTR;
    return lock_slow(l, me, deadline, hard);
}

static void unlock_word(cc_lock *l) {
    if (atomic_exchange(&l->word, 0) & WAITERS) cc_futex_wake(&l->word, 1);
}

int cc_lock_acquire(cc_lock *l, double deadline) {
    pid_t me = tid();
    if (l->hdr.type == CC_T_RLOCK && OWNER(l) == me) {
        if (DEPTH(l) == INT64_MAX) return -EOVERFLOW;
        SET(depth, DEPTH(l) + 1);
        return 0;
    }
    int r = lock_word(l, me, deadline, 0);
    if (r == 0 || r == -EOWNERDEAD) {
        SET(depth, 1);
        held++;
    }
    return r;
}

int cc_lock_release(cc_lock *l) {
    if (OWNER(l) != tid()) return -EPERM;
    if (l->hdr.type == CC_T_RLOCK) {
        int64_t depth = DEPTH(l) - 1;
        SET(depth, depth);
        if (depth > 0) return 0;
    }
    unlock_word(l);
    held--;
    return 0;
}

int cc_lock_locked(cc_lock *l) { return WORD(l) != 0; }
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
    if (n > INT64_MAX - s->value) { /* refused whole: the value stays */
        cc_mutex_unlock(&s->m);
        return -EOVERFLOW;
    }
    __atomic_store_n(&s->value, s->value + n, __ATOMIC_RELEASE);
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

/* One wait on a condition: a node in the arena, queued on the condition
 * (oldest first) while its thread sleeps on the node's own futex word.
 * notify(n) marks the n oldest waiting nodes notified and wakes each; a
 * waiter returns true only if its own node was marked. So no waiter takes
 * another's notification, and one that starts waiting after a notify (or
 * merely sees a slice end, or a futex word change) cannot take it. The
 * queue is changed only by the holder of the condition's lock, each change
 * a single store of a fully written node pointer, so a holder killed at any
 * point leaves it whole (a node may leak). */
enum { W_WAITING, W_NOTIFIED };

typedef struct waiter {
    struct waiter *next;
    _Atomic uint32_t state; /* W_WAITING, then W_NOTIFIED by a notifier */
    pid_t pid;              /* to skip waiters whose process died */
    uint64_t ticket;        /* arrival order */
    uint64_t horizon;       /* once notified: the tickets that notify could wake */
} waiter;

struct cc_condvar {
    cc_obj hdr;
    cc_lock *lock;
    waiter *head;     /* the queue, oldest first */
    waiter *pool;     /* nodes to reuse */
    uint64_t tickets; /* the next arrival's ticket */
};

/* The queue, the pool and the nodes are guarded by the condition's lock.
 * They are still read and written as relaxed atomics (plain moves on x86),
 * and nodes are reused rather than freed until the condition goes: TSan
 * does not see a lock taken through pthread_mutex_clocklock, which it does
 * not intercept, and would report the lock's holders as racing. */
#define GET(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define PUT(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
/* linking a complete node, or unlinking one: the single store that commits */
#define LINK(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* A waiter sleeps at most this long before looking at its node again: if
 * a notifier was killed between marking the node and waking it, the waiter
 * still sees the mark. */
#define RECHECK 1.0

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
    *out = c;
    return 0;
}

void cc_condvar_destroy(cc_obj *o) {
    cc_condvar *c = (cc_condvar *)o;
    /* a live waiter holds a reference: what is queued belonged to the dead */
    waiter *lists[2] = {GET(&c->head), GET(&c->pool)};
    for (int i = 0; i < 2; i++) {
        for (waiter *w = lists[i], *next; w; w = next) {
            next = GET(&w->next);
            cc_free(w);
        }
    }
    cc_release(&c->lock->hdr);
    cc_free(c);
}

cc_lock *cc_condvar_lock(cc_condvar *c) { return c->lock; }

static void enqueue(cc_condvar *c, waiter *w) {
    waiter **pp = &c->head;
    while (GET(pp)) pp = &GET(pp)->next;
    LINK(pp, w);
}

static void dequeue(cc_condvar *c, waiter *w) {
    for (waiter **pp = &c->head; GET(pp); pp = &GET(pp)->next) {
        if (GET(pp) == w) {
            LINK(pp, GET(&w->next));
            return;
        }
    }
}

static waiter *node_get(cc_condvar *c) {
    waiter *w = GET(&c->pool);
    if (w) LINK(&c->pool, GET(&w->next));
    else w = cc_alloc(sizeof *w);
    return w;
}

static void node_put(cc_condvar *c, waiter *w) {
    PUT(&w->next, GET(&c->pool));
    LINK(&c->pool, w);
}

static int process_gone(pid_t pid) {
    return pid != cc_pid() && kill(pid, 0) == -1 && errno == ESRCH;
}

/* Mark and wake up to n of the waiters that arrived before ticket horizon,
 * oldest first. Waiters of a process that is gone are dropped on the way,
 * not counted. */
static void wake(cc_condvar *c, int64_t n, uint64_t horizon) {
    waiter **pp = &c->head, *w;
    while (n > 0 && (w = GET(pp)) != NULL && GET(&w->ticket) < horizon) {
        if (atomic_load(&w->state) != W_WAITING) { /* notified, not yet gone */
            pp = &w->next;
            continue;
        }
        if (process_gone(GET(&w->pid))) {
            LINK(pp, GET(&w->next));
            node_put(c, w);
            continue;
        }
        PUT(&w->horizon, horizon);
        atomic_store(&w->state, W_NOTIFIED);
        cc_futex_wake(&w->state, 1);
        n--;
        pp = &w->next;
    }
}

int cc_condvar_wait(cc_condvar *c, double deadline) {
    cc_lock *l = c->lock;
    if (!cc_lock_owned(l)) return -EPERM;
    waiter *w = node_get(c);
    if (!w) return -ENOMEM;
    uint64_t ticket = GET(&c->tickets);
    PUT(&w->next, NULL);
    atomic_store(&w->state, W_WAITING);
    PUT(&w->pid, cc_pid());
    PUT(&w->ticket, ticket);
    enqueue(c, w);
    PUT(&c->tickets, ticket + 1); /* after: a kill in between reuses the ticket, harmless */
    int64_t depth = DEPTH(l); /* an rlock is released fully, then restored */
    SET(depth, 0);
    unlock_word(l);
    int r;
    for (;;) {
        double until = cc_now() + RECHECK;
        if (deadline >= 0 && deadline < until) until = deadline;
        r = cc_futex_wait(&w->state, W_WAITING, until);
        if (atomic_load(&w->state) != W_WAITING || r == -EINTR) break;
        if (r == -ETIMEDOUT && until == deadline) break;
        if (r != 0 && r != -ETIMEDOUT) break;
    }
    /* Re-lock unconditionally (not interruptible): the caller must hold the
     * lock when this returns. A previous holder that died is not news here. */
    lock_word(l, tid(), -1, 1);
    SET(depth, depth);
    dequeue(c, w);
    int notified = atomic_load(&w->state) == W_NOTIFIED;
    uint64_t horizon = GET(&w->horizon);
    node_put(c, w);
    /* interrupted, but notified too: hand the notification to another
     * waiter that notify could have woken, rather than lose it */
    if (notified && r == -EINTR) wake(c, 1, horizon);
    else if (notified) r = 0;
    return r;
}

int cc_condvar_notify(cc_condvar *c, int64_t n) {
    if (n < 0) return -EINVAL;
    if (!cc_lock_owned(c->lock)) return -EPERM;
    wake(c, n, GET(&c->tickets));
    return 0;
}

int cc_condvar_notify_all(cc_condvar *c) { return cc_condvar_notify(c, INT64_MAX); }

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
