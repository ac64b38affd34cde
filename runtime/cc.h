/*
 * cc.h -- the concur runtime: plain C, no Lua.
 *
 * Everything here works across threads AND across processes forked after
 * cc_arena_init(): the arena is one MAP_SHARED|MAP_ANONYMOUS mapping made
 * before any fork, so a pointer into it is valid, and means the same object,
 * in every thread and every descendant process. Nothing process-local is ever
 * stored inside the arena.
 *
 * Conventions (libuv style): functions return 0 or a negative errno
 * (-ETIMEDOUT, -EPIPE for "closed", -ENOMEM for "arena exhausted", -EINVAL,
 * -EPERM for "not the owner", -EOWNERDEAD as a *success* that reports that
 * the previous holder died). Nothing here prints or exits.
 *
 * Deadlines are absolute CLOCK_MONOTONIC times in seconds (double);
 * CC_FOREVER means no deadline.
 *
 * Messages. Every value that crosses a boundary is a "message": the bytes the
 * codec (bindings/codec.c) produced. The runtime does not parse the payload,
 * but every message starts with a table of the shared objects it refers to:
 *
 *     uint32_t nrefs; uint32_t format; cc_obj *refs[nrefs]; payload...
 *
 * and a message OWNS one reference count on each of those objects. Whoever
 * holds a message (a queue slot, a list item, a pipe in flight, a reader that
 * just took it out) owns those counts; copying a message means retaining
 * them (cc_msg_retain), dropping one means releasing them (cc_msg_release);
 * the decoder takes them over.
 */
#ifndef CC_H
#define CC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* CC_TSAN: 1 in a ThreadSanitizer build (gcc or clang), else 0; the few
 * places that must wait differently under it test this */
#if defined(__SANITIZE_THREAD__)
#define CC_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CC_TSAN 1
#endif
#endif
#ifndef CC_TSAN
#define CC_TSAN 0
#endif

#define CC_FOREVER (-1.0)
/* Timeouts above this many seconds (about 31 years) mean "forever". */
#define CC_MAX_TIMEOUT 1e9

/* ---- clock (clock.c) ------------------------------------------------- */
double cc_now(void);                  /* CLOCK_MONOTONIC seconds */
double cc_deadline(double timeout);   /* < 0, > CC_MAX_TIMEOUT, inf -> CC_FOREVER */
int cc_sleep(double seconds);         /* 0, or -EINTR if cc_interrupted() fired */
/* The point a wait should sleep until before re-checking cc_interrupted():
 * the deadline itself, or sooner when the thread can be interrupted. */
double cc_wait_slice(double deadline);
struct timespec;
void cc_timespec(double t, struct timespec *ts);
/* poll()'s timeout for sleeping until the absolute time `until` (< 0:
 * forever): -1, or milliseconds rounded up, at most a day (a far deadline
 * must not overflow an int). */
int cc_poll_ms(double until);

/* This process's pid, cached and refreshed in every forked child (by a
 * pthread_atfork handler registered by cc_arena_init). Counts on shared
 * objects are owned per process: a handle inherited through fork belongs
 * to the parent, and the child must never release it. */
pid_t cc_pid(void);

/* ---- heap (heap.c) --------------------------------------------------- */
/* Before a fork (fork_keeping): every 8th fork from a heap of 8 MiB or
 * more folds it onto 2 MiB pages, so a fork copies an entry per 2 MiB,
 * not per 4 KiB -- or the first fork after, when children (forked, not
 * yet reaped) shared the heap then. */
void cc_heap_prefork(int children);
/* A lua_Alloc (ud unused): malloc for blocks under 2 MiB; bigger ones in
 * 2 MiB-aligned mappings advised huge, so forks copy an entry per 2 MiB
 * of them too. For a state created just before (no block of 2 MiB or more
 * may come from another allocator). */
void *cc_heap_alloc(void *ud, void *p, size_t osize, size_t nsize);

/* ---- arena (arena.c) ------------------------------------------------- */
/* Reserve the shared region (idempotent, thread-safe). size 0 = default. */
int cc_arena_init(size_t size);
int cc_arena_ready(void);
void *cc_alloc(size_t n);             /* 16-byte aligned, NULL when exhausted */
void *cc_calloc(size_t n);
void cc_free(void *p);
size_t cc_arena_used(void);           /* bytes handed out, headers included */
size_t cc_arena_size(void);
size_t cc_arena_default_size(void);
int cc_in_arena(const void *p);       /* p points into the arena */

/* Diagnostics: walk the whole heap under the allocator lock and check every
 * invariant (each block walkable, free neighbours merged, every free block in
 * its bin, the used count exact). 0, or -EUCLEAN with st->why naming the
 * first broken invariant. recoveries counts the times a holder of the lock
 * died and the next locker rebuilt the allocator's state. */
typedef struct cc_arena_stats {
    size_t used, free;                /* bytes in used / free blocks, headers included */
    size_t blocks, free_blocks, largest_free;
    uint64_t recoveries;
    const char *why;
} cc_arena_stats;
int cc_arena_check(cc_arena_stats *st);

/* ---- shared objects ------------------------------------------------- */
enum cc_type {
    CC_T_NONE = 0,
    CC_T_LIST, CC_T_DICT, CC_T_QUEUE,
    CC_T_LOCK, CC_T_RLOCK, CC_T_SEM, CC_T_EVENT, CC_T_COND, CC_T_BARRIER,
    CC_T_PIPE,
    CC_T_ARRAY, CC_T_VALUE,
    CC_T_PROGRESS,
    CC_T_MAX
};

typedef struct cc_obj {
    _Atomic uint32_t refs;
    uint32_t type;                    /* enum cc_type */
} cc_obj;

void cc_retain(cc_obj *o);
void cc_release(cc_obj *o);           /* destroys at zero via the type's destroy */
void cc_obj_init(cc_obj *o, enum cc_type t);   /* refs = 1 */
/* Each type's destroy, called once when the last reference goes: frees what
 * the object holds (releasing the references of messages inside) and the
 * object itself. obj.c dispatches on o->type statically, so every process
 * can destroy every type, whatever it had used before it was forked. */
void cc_list_destroy(cc_obj *o);
void cc_dict_destroy(cc_obj *o);
void cc_queue_destroy(cc_obj *o);
void cc_lock_destroy(cc_obj *o);      /* CC_T_LOCK and CC_T_RLOCK */
void cc_sem_destroy(cc_obj *o);
void cc_event_destroy(cc_obj *o);
void cc_condvar_destroy(cc_obj *o);
void cc_barrier_destroy(cc_obj *o);
void cc_pipe_destroy(cc_obj *o);
void cc_array_destroy(cc_obj *o);     /* CC_T_ARRAY and CC_T_VALUE */
void cc_progress_destroy(cc_obj *o);
int cc_obj_valid(const cc_obj *o);    /* inside the arena, sane type, refs>0 */

/* ---- messages ------------------------------------------------------- */
typedef struct cc_msghdr {
    uint32_t nrefs;
    uint32_t format;                  /* the codec's (bindings/codec.h); the runtime ignores it */
    /* cc_obj *refs[nrefs] follows */
} cc_msghdr;

size_t cc_msg_payload_offset(uint32_t nrefs);
/* Messages may sit at any alignment (after a status byte, inside a pipe's
 * stream, inline in a list slot): read their header only through these. */
static inline uint32_t cc_msg_nrefs(const void *msg) {
    uint32_t n;
    __builtin_memcpy(&n, msg, sizeof n);
    return n;
}
static inline cc_obj *cc_msg_ref(const void *msg, uint32_t i) {
    cc_obj *o;
    __builtin_memcpy(&o, (const char *)msg + sizeof(cc_msghdr) + (size_t)i * sizeof o, sizeof o);
    return o;
}
void cc_msg_retain(const void *msg, size_t len);
void cc_msg_release(const void *msg, size_t len);

/* A growable process-local byte buffer (malloc), used to hand messages out. */
typedef struct cc_buf {
    char *data;
    size_t len, cap;
} cc_buf;
/* Ensures cap >= need; -ENOMEM when malloc fails or need is past
 * CC_BUF_MAX (a length read from a corrupt stream must not wrap the
 * doubling or ask for 2^64 bytes). */
#define CC_BUF_MAX ((size_t)1 << 40)
int cc_buf_reserve(cc_buf *b, size_t need);
void cc_buf_free(cc_buf *b);

/* 64-bit FNV-1a: the dict's key hash and the codec's bytecode checksum. */
static inline uint64_t cc_fnv1a(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
    return h;
}

/* A spinning waiter's pause between looks (lets the sibling hyperthread
 * run, saves power). */
static inline void cc_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* ---- sync (sync.c) -------------------------------------------------- */
/* A robust, process-shared mutex. lock returns 0, -ETIMEDOUT, or
 * -EOWNERDEAD (acquired; the previous holder died holding it). */
typedef struct cc_mutex { char opaque[48]; } cc_mutex;
int cc_mutex_init(cc_mutex *m);
int cc_mutex_lock(cc_mutex *m, double deadline);
int cc_mutex_trylock(cc_mutex *m);
/* Lock for a short internal critical section: waits forever, is never
 * interrupted (an interrupted allocation must not look like exhaustion);
 * 0 or -EOWNERDEAD. */
int cc_mutex_lock_hard(cc_mutex *m);
int cc_mutex_unlock(cc_mutex *m);
void cc_mutex_destroy(cc_mutex *m);

/* A condition: a futex sequence word. Waiters hold no state in it, so a
 * waiter killed mid-wait cannot wedge a signaller (glibc's process-shared
 * condvar can). wait unlocks m, sleeps until signalled or deadline, and
 * re-locks m (returning -EOWNERDEAD from the re-lock if that happened). */
typedef struct cc_cond { _Atomic uint32_t seq; _Atomic uint32_t waiters; } cc_cond;
void cc_cond_init(cc_cond *c);
int cc_cond_wait(cc_cond *c, cc_mutex *m, double deadline);
void cc_cond_signal(cc_cond *c);
void cc_cond_broadcast(cc_cond *c);

/* Futex on a 32-bit word in the arena (process-shared). wait returns 0
 * (woken or value changed), -ETIMEDOUT, or -EINTR (cc_interrupted). */
int cc_futex_wait(_Atomic uint32_t *w, uint32_t val, double deadline);
void cc_futex_wake(_Atomic uint32_t *w, int n);       /* n = INT32_MAX wakes all */

/* Wait until fd has one of events (POLLIN, POLLOUT) or the deadline
 * passes, in interruptible slices: 1 ready, 0 timeout, -EINTR, -errno. */
int cc_wait_fd(int fd, short events, double deadline);

/* Interruption: a blocking wait polls this at most every ~50 ms and returns
 * -EINTR when it is set (thread cancel, Ctrl-C in the REPL). Thread-local. */
void cc_interrupt_set(_Atomic int *flag);     /* the calling thread's flag, or NULL */
int cc_interrupted(void);

#endif
