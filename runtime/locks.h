/*
 * locks.h -- lock, rlock, semaphore, event, condition, barrier (locks.c),
 * Python's threading/multiprocessing set, all in the arena so they work
 * across threads and processes.
 *
 * Owner-death: a lock whose holder died is handed to the next acquirer,
 * whose acquire returns -EOWNERDEAD (the binding says "owner died"). For
 * lock/rlock a waiter finds the death itself (the holder's tid no longer
 * names a live thread in /proc), within one DEATH_CHECK slice of 50 ms, or
 * at once for a wait shorter than that; see locks.c.
 * Release by a non-owner is -EPERM.
 * An owner is identified by (pid, thread id), so one thread of a process
 * cannot release a lock another thread holds.
 */
#ifndef CC_LOCKS_H
#define CC_LOCKS_H
#include "cc.h"

typedef struct cc_lock cc_lock;          /* CC_T_LOCK or CC_T_RLOCK */
int cc_lock_new(cc_lock **out, int recursive);
/* 0, -ETIMEDOUT, -EOWNERDEAD, -EINTR; -EOVERFLOW for an rlock held 2^63 - 1 deep */
int cc_lock_acquire(cc_lock *l, double deadline);
int cc_lock_release(cc_lock *l);                      /* 0, -EPERM */
int cc_lock_locked(cc_lock *l);
int cc_lock_owned(cc_lock *l);                        /* held by the calling thread */
int cc_locks_held(void);                               /* how many the calling thread holds */

typedef struct cc_sem cc_sem;
int cc_sem_new(cc_sem **out, int64_t value);
int cc_sem_acquire(cc_sem *s, double deadline);
int cc_sem_release(cc_sem *s, int64_t n);             /* -EINVAL n < 1, -EOVERFLOW */
int64_t cc_sem_value(cc_sem *s);

typedef struct cc_event cc_event;
int cc_event_new(cc_event **out);
int cc_event_set(cc_event *e);
int cc_event_clear(cc_event *e);
int cc_event_is_set(cc_event *e);
int cc_event_wait(cc_event *e, double deadline);      /* 0 once set, -ETIMEDOUT */

typedef struct cc_condvar cc_condvar;   /* a condition bound to a cc_lock */
int cc_condvar_new(cc_condvar **out, cc_lock *lock);  /* retains lock; lock NULL = new one */
cc_lock *cc_condvar_lock(cc_condvar *c);
/* The caller must own the lock (-EPERM). wait returns 0 when notified,
 * -ETIMEDOUT, -EINTR, -ENOMEM; notify(n) wakes at most n of the threads
 * waiting now (none for 0; -EINVAL for n < 0), never a later one. */
int cc_condvar_wait(cc_condvar *c, double deadline);
int cc_condvar_notify(cc_condvar *c, int64_t n);
int cc_condvar_notify_all(cc_condvar *c);

typedef struct cc_barrier cc_barrier;
int cc_barrier_new(cc_barrier **out, int64_t parties);
/* returns the arrival index (0..parties-1) >= 0, -ETIMEDOUT (the barrier is
 * then broken), or -EPIPE if broken/aborted */
int64_t cc_barrier_wait(cc_barrier *b, double deadline);
int cc_barrier_abort(cc_barrier *b);
int cc_barrier_reset(cc_barrier *b);
int64_t cc_barrier_parties(cc_barrier *b);
int64_t cc_barrier_waiting(cc_barrier *b);
int cc_barrier_broken(cc_barrier *b);
#endif
