/*
 * arena.c -- the shared memory every thread and forked process sees.
 *
 * One MAP_SHARED|MAP_ANONYMOUS|MAP_NORESERVE mapping, made once per process
 * tree before any fork: children inherit it at the same address, so plain
 * pointers into it are valid everywhere. Pages are committed only when
 * touched, so a large reservation (default 1 GiB, CONCUR_SHM) costs nothing
 * until used.
 *
 * Allocator: boundary tags and segregated free lists (TLSF-like). The heap is
 * one chain of blocks from the end of the arena header to a sentinel; every
 * block starts with a 16-byte header {prev, head}: head is the block's size
 * (a multiple of 16, header included) with a tag in its top 16 bits (used or
 * free), prev is the size of the block before it. Allocation takes a free
 * block from the first non-empty bin that is large enough (two bitmaps, 16
 * bins per power of two, exact 16-byte bins below 256 B) and hands out its
 * tail, the rest staying where it was; free merges the block with free
 * neighbours on both sides. So after everything is freed the heap is one
 * free block again, and both paths are O(1) (a free block changes lists only
 * when its size crosses a bin boundary).
 *
 * Pages. A freed block over 256 KiB gives its pages back at once
 * (MADV_REMOVE). Smaller frees into a free block of 64 KiB or more give
 * back that block's pages, except 4 MiB at its tail, once 4 MiB were freed
 * and a second passed since the last time: memory that comes and goes in a
 * loop stays mapped instead of faulting in again at every round.
 *
 * Crash safety. One robust process-shared mutex guards the allocator; a
 * process SIGKILLed while holding it hands it to the next locker with
 * -EOWNERDEAD. The invariant that makes that recoverable:
 *
 *     the chain of heads is consistent after every single store.
 *
 * Each alloc or free changes the chain with release stores to heads (the
 * commits), each leaving a valid chain: a split writes the new block's
 * header inside the free block's tail first and then shrinks the free
 * block's head; a free retags its head "free", then grows the free
 * neighbour before it over it, then grows the result over the free
 * neighbour after it. Everything else -- bins, bitmaps, prev sizes, the
 * used count -- is derived. So the next locker after a death walks the
 * chain (recover), merges neighbours left both free, and rebuilds the
 * derived state; a death inside a recovery is recovered the same way. A
 * death costs at most the block that was being handed out or given back
 * (leaked, or freed): never a torn list, a block handed out twice, or an
 * abort later. The walk also checks every head: one that is not the
 * allocator's (a stray write into the arena) is a broken invariant, abort().
 */
#include "cc.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ARENA_MAGIC 0x636f6e6375722121ULL /* "concur!!" */
#define PAGE 4096u
#define DEFAULT_SIZE ((size_t)1 << 30)
#define MAX_SIZE ((size_t)1 << 47)

#define HDR 16u       /* block header */
#define MIN_BLOCK 32u /* header and the two free-list links */
#define SL_BITS 4
#define NSL (1u << SL_BITS)     /* bins per power of two */
#define SMALL_LIMIT (NSL * 16u) /* below: one bin per 16-byte size */
#define NFL 41                  /* sizes below 2^48 */

#define SIZE_MASK (((uint64_t)1 << 48) - 1)
#define TAG_MASK (~SIZE_MASK)
#define TAG_USED ((uint64_t)0xc0ccu << 48)
#define TAG_FREE ((uint64_t)0xf4eeu << 48)

#define RELEASE_MIN (64u * 1024u) /* free blocks this big give pages back */
#define RELEASE_NOW (256u * 1024u) /* a freed block this big does so at once */
#define TRIM_EVERY (4u << 20)      /* bytes of smaller frees between releases */
#define TRIM_PERIOD 1.0            /* and seconds */
#define KEEP (4u << 20)            /* what a release leaves at a block's tail */

typedef struct blk {
    uint64_t prev; /* size of the block before; 0 for the first */
    uint64_t head; /* size | tag */
} blk;

typedef struct fblk {
    blk h;
    struct fblk *next, *back;
} fblk;

typedef struct arena {
    uint64_t magic;
    size_t size;
    cc_mutex lock;
    char *heap, *end; /* the first block; the sentinel's header */
    _Atomic size_t used;
    size_t pending;   /* bytes freed since the last release of pages */
    double last_trim; /* when that was (CLOCK_MONOTONIC) */
    uint64_t recoveries;
    uint64_t fl_map;
    uint32_t sl_map[NFL];
    fblk *bins[NFL][NSL];
} arena;

static arena *A;
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
/* Atomic (relaxed) only so that TSan, which carries a parent thread's reads
 * into the forked child, does not take the child's refresh for a race. */
static _Atomic pid_t self_pid;

static void refresh_pid(void) { atomic_store_explicit(&self_pid, getpid(), memory_order_relaxed); }

pid_t cc_pid(void) {
    pid_t p = atomic_load_explicit(&self_pid, memory_order_relaxed);
    if (!p) {
        p = getpid();
        atomic_store_explicit(&self_pid, p, memory_order_relaxed);
    }
    return p;
}

size_t cc_arena_default_size(void) { return DEFAULT_SIZE; }

/* ---- blocks ---- */

static inline size_t bsize(const blk *b) { return (size_t)(b->head & SIZE_MASK); }
static inline uint64_t btag(const blk *b) { return b->head & TAG_MASK; }
static inline blk *at(void *p, size_t off) { return (blk *)((char *)p + off); }

/* A store that changes the chain (a commit): everything written before it
 * is in memory first, whatever the compiler or the CPU would reorder. */
static inline void commit(blk *b, size_t size, uint64_t tag) {
    __atomic_store_n(&b->head, (uint64_t)size | tag, __ATOMIC_RELEASE);
}

/* ---- bins ---- */

static void mapping(size_t s, unsigned *fl, unsigned *sl) {
    if (s < SMALL_LIMIT) {
        *fl = 0;
        *sl = (unsigned)(s >> 4);
        return;
    }
    unsigned b = 63u - (unsigned)__builtin_clzll((unsigned long long)s);
    *fl = b - 7;
    *sl = (unsigned)(s >> (b - SL_BITS)) & (NSL - 1);
}

static void bin_insert(arena *a, fblk *f, size_t size) {
    unsigned fl, sl;
    mapping(size, &fl, &sl);
    fblk *h = a->bins[fl][sl];
    f->next = h;
    f->back = NULL;
    if (h) h->back = f;
    a->bins[fl][sl] = f;
    a->sl_map[fl] |= 1u << sl;
    a->fl_map |= 1ull << fl;
}

static void bin_remove(arena *a, fblk *f, size_t size) {
    if (f->next) f->next->back = f->back;
    if (f->back) {
        f->back->next = f->next;
        return;
    }
    unsigned fl, sl;
    mapping(size, &fl, &sl);
    a->bins[fl][sl] = f->next;
    if (!f->next) {
        a->sl_map[fl] &= ~(1u << sl);
        if (!a->sl_map[fl]) a->fl_map &= ~(1ull << fl);
    }
}

/* A free block of at least need bytes: the head of need's own bin if it
 * fits, else the first block of the first non-empty bin whose blocks all fit. */
/* f's size changes from old to size: move it if that changes its bin. */
static void rebin(arena *a, fblk *f, size_t old, size_t size) {
    unsigned fl0, sl0, fl, sl;
    mapping(old, &fl0, &sl0);
    mapping(size, &fl, &sl);
    if (fl0 == fl && sl0 == sl) return;
    bin_remove(a, f, old);
    bin_insert(a, f, size);
}

/* f (old bytes) grows backwards into g (size bytes): g takes f's place in
 * its list when the bin stays the same. */
static void bin_replace(arena *a, fblk *f, size_t old, fblk *g, size_t size) {
    unsigned fl0, sl0, fl, sl;
    mapping(old, &fl0, &sl0);
    mapping(size, &fl, &sl);
    if (fl0 != fl || sl0 != sl) {
        bin_remove(a, f, old);
        bin_insert(a, g, size);
        return;
    }
    g->next = f->next;
    g->back = f->back;
    if (g->next) g->next->back = g;
    if (g->back) g->back->next = g;
    else a->bins[fl][sl] = g;
}

static fblk *find(arena *a, size_t need) {
    unsigned fl, sl;
    mapping(need, &fl, &sl);
    fblk *f = a->bins[fl][sl];
    if (f && bsize(&f->h) >= need) return f;
    if (need < SMALL_LIMIT) {
        sl++; /* small bins hold one size each */
    } else {
        unsigned b = 63u - (unsigned)__builtin_clzll((unsigned long long)need);
        mapping(need + ((size_t)1 << (b - SL_BITS)) - 1, &fl, &sl);
        if (fl >= NFL) return NULL;
    }
    uint32_t m = sl < NSL ? a->sl_map[fl] & (~0u << sl) : 0;
    if (!m) {
        uint64_t fm = a->fl_map & (~0ull << (fl + 1));
        if (!fm) return NULL;
        fl = (unsigned)__builtin_ctzll(fm);
        m = a->sl_map[fl];
    }
    return a->bins[fl][__builtin_ctz(m)];
}

/* ---- recovery ---- */

/* The size of the block at b, checked against the chain's invariants; a
 * head that breaks them was not written by this allocator (a stray write
 * into the arena): a broken invariant. */
static size_t walk_size(arena *a, blk *b) {
    uint64_t tag = btag(b);
    size_t s = bsize(b);
    if ((tag != TAG_USED && tag != TAG_FREE) || s < MIN_BLOCK || (s & 15) ||
        s > (size_t)(a->end - (char *)b))
        abort();
    return s;
}

/* The previous holder of the lock died inside an alloc, a free or a
 * recovery: rebuild everything derived from the chain of heads. */
static void recover(arena *a) {
    memset(a->bins, 0, sizeof a->bins);
    memset(a->sl_map, 0, sizeof a->sl_map);
    a->fl_map = 0;
    size_t used = 0, prev = 0;
    blk *b = (blk *)a->heap;
    while ((char *)b < a->end) {
        size_t s = walk_size(a, b);
        b->prev = prev;
        if (btag(b) == TAG_FREE) {
            blk *n;
            while ((char *)(n = at(b, s)) < a->end && btag(n) == TAG_FREE) {
                s += walk_size(a, n);
                commit(b, s, TAG_FREE); /* neighbours a death left unmerged */
            }
            bin_insert(a, (fblk *)b, s);
        } else {
            used += s;
        }
        prev = s;
        b = at(b, s);
    }
    if ((char *)b != a->end) abort();
    b->prev = prev;
    atomic_store_explicit(&a->used, used, memory_order_relaxed);
    a->recoveries++;
}

/* Only holders of the lock write the count, so no read-modify-write is
 * needed; readers (cc_arena_used) see one value or the other. */
static void add_used(arena *a, size_t delta) {
    size_t u = atomic_load_explicit(&a->used, memory_order_relaxed);
    atomic_store_explicit(&a->used, u + delta, memory_order_relaxed);
}

static void lock(arena *a) {
    if (cc_mutex_lock_hard(&a->lock) == -EOWNERDEAD) recover(a);
}

static void unlock(arena *a) { cc_mutex_unlock(&a->lock); }

/* ---- the arena ---- */

int cc_arena_init(size_t size) {
    if (A) return 0;
    pthread_mutex_lock(&init_lock);
    int r = 0;
    if (!A) {
        if (size == 0) size = DEFAULT_SIZE;
        if (size < 1u << 20) size = 1u << 20;
        if (size > MAX_SIZE) size = MAX_SIZE;
        size = (size + PAGE - 1) & ~(size_t)(PAGE - 1);
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) r = -errno;
        arena *a = p;
        if (!r) {
            memset(a, 0, sizeof *a);
            a->size = size;
            r = cc_mutex_init(&a->lock);
            if (r) munmap(p, size);
        }
        if (!r) {
            a->heap = (char *)p + ((sizeof *a + 63) & ~(size_t)63);
            a->end = (char *)p + size - HDR;
            size_t whole = (size_t)(a->end - a->heap);
            blk *first = (blk *)a->heap, *sentinel = (blk *)a->end;
            first->prev = 0;
            first->head = whole | TAG_FREE;
            sentinel->prev = whole;
            sentinel->head = TAG_USED; /* size 0: never merged, never freed */
            bin_insert(a, (fblk *)first, whole);
            atomic_store(&a->used, 0);
            a->last_trim = cc_now();
            a->magic = ARENA_MAGIC;
            refresh_pid();
            pthread_atfork(NULL, NULL, refresh_pid);
            __atomic_store_n(&A, a, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&init_lock);
    return r;
}

int cc_arena_ready(void) { return A != NULL; }
size_t cc_arena_used(void) { return A ? atomic_load_explicit(&A->used, memory_order_relaxed) : 0; }
size_t cc_arena_size(void) { return A ? A->size : 0; }

int cc_in_arena(const void *p) {
    return A && (const char *)p > (const char *)A && (const char *)p < A->end;
}

void *cc_alloc(size_t n) {
    arena *a = A;
    if (!a || n > a->size) return NULL;
    size_t need = (n + HDR + 15) & ~(size_t)15;
    if (need < MIN_BLOCK) need = MIN_BLOCK;
    lock(a);
    fblk *f = find(a, need);
    if (!f) {
        unlock(a);
        return NULL;
    }
    blk *b = &f->h;
    size_t fs = bsize(b), rest = fs - need;
    if (rest >= MIN_BLOCK) {
        /* hand out the tail: the free block keeps its place, and mostly
         * its bin, so a split costs no list surgery */
        blk *u = at(b, rest);
        u->prev = rest;
        u->head = need | TAG_USED;
        at(b, fs)->prev = need;
        commit(b, rest, TAG_FREE);
        rebin(a, f, fs, rest);
        b = u;
        fs = need;
    } else {
        bin_remove(a, f, fs);
        commit(b, fs, TAG_USED);
    }
    add_used(a, fs);
    unlock(a);
    return b + 1;
}

void *cc_calloc(size_t n) {
    void *p = cc_alloc(n);
    if (p) memset(p, 0, n);
    return p;
}

/* The size of the live block at b, or abort: freeing anything else (a
 * pointer the arena never handed out, a block freed before) is a broken
 * invariant. The lock is held. */
static size_t live_size(arena *a, blk *b) {
    if (((uintptr_t)b & 15) || (char *)b < a->heap || (char *)b >= a->end) abort();
    size_t s = bsize(b);
    if (btag(b) != TAG_USED || s < MIN_BLOCK || (s & 15) || s > (size_t)(a->end - (char *)b) ||
        at(b, s)->prev != s || b->prev > (size_t)((char *)b - a->heap) ||
        ((char *)b != a->heap && b->prev < MIN_BLOCK))
        abort();
    return s;
}

static char *page_up(char *p) { return (char *)(((uintptr_t)p + PAGE - 1) & ~(uintptr_t)(PAGE - 1)); }
static char *page_down(char *p) { return (char *)((uintptr_t)p & ~(uintptr_t)(PAGE - 1)); }

/* Give back pages of the free block f (total bytes) that hold nothing the
 * allocator reads (not the page of its header and links). A freed block
 * (b, s) over RELEASE_NOW releases its own pages at once. Smaller frees
 * release the pages of f but its last KEEP bytes (allocation carves from
 * the tail) once TRIM_EVERY bytes were freed and TRIM_PERIOD passed since
 * the last time: memory that comes and goes in a loop stays mapped instead
 * of faulting in again each round, and memory let go of returns to the
 * system within about a second of the next frees. The lock is held: no one
 * can be handed these pages meanwhile. */
static void release(arena *a, blk *f, size_t total, blk *b, size_t s) {
    char *lo = page_up((char *)f + MIN_BLOCK), *hi = page_down((char *)f + total);
    if (s >= RELEASE_NOW) {
        char *blo = page_down((char *)b), *bhi = page_up((char *)b + s + MIN_BLOCK);
        if (blo > lo) lo = blo;
        if (bhi < hi) hi = bhi;
    } else {
        if ((a->pending += s) < TRIM_EVERY || total <= KEEP) return;
        double now = cc_now();
        if (now - a->last_trim < TRIM_PERIOD) {
            a->pending = TRIM_EVERY / 2; /* look at the clock again later */
            return;
        }
        a->pending = 0;
        a->last_trim = now;
        hi = page_down((char *)f + total - KEEP);
    }
    if (lo < hi) madvise(lo, (size_t)(hi - lo), MADV_REMOVE);
}

void cc_free(void *p) {
    if (!p) return;
    arena *a = A;
    if (!a) abort();
    blk *b = (blk *)p - 1;
    lock(a);
    size_t s = live_size(a, b), total = s, inbin = 0; /* f's size in its bin, 0: none */
    add_used(a, -s);
    commit(b, s, TAG_FREE); /* from here a second free of p aborts */
    blk *f = b, *n = at(b, s);
    if ((char *)b != a->heap) {
        blk *pv = (blk *)((char *)b - b->prev);
        if (btag(pv) == TAG_FREE) { /* grows in place */
            inbin = bsize(pv);
            total += inbin;
            f = pv;
            commit(pv, total, TAG_FREE);
        }
    }
    if (btag(n) == TAG_FREE) {
        size_t ns = bsize(n);
        total += ns;
        commit(f, total, TAG_FREE);
        at(f, total)->prev = total;
        if (inbin) { /* f and n were both in bins */
            bin_remove(a, (fblk *)n, ns);
            rebin(a, (fblk *)f, inbin, total);
        } else {
            bin_replace(a, (fblk *)n, ns, (fblk *)f, total);
        }
    } else {
        at(f, total)->prev = total;
        if (inbin) rebin(a, (fblk *)f, inbin, total);
        else bin_insert(a, (fblk *)f, total);
    }
    if (total >= RELEASE_MIN) release(a, f, total, b, s);
    unlock(a);
}

/* ---- diagnostics ---- */

static int bad(cc_arena_stats *st, const char *why) {
    st->why = why;
    return -EUCLEAN;
}

/* Every invariant of the heap, under the lock; see cc.h. */
static int check(arena *a, cc_arena_stats *st) {
    size_t prev = 0, nfree = 0, freebytes = 0;
    int last_free = 0;
    blk *b = (blk *)a->heap;
    while ((char *)b < a->end) {
        uint64_t tag = btag(b);
        size_t s = bsize(b);
        if (tag != TAG_USED && tag != TAG_FREE) return bad(st, "a head with no tag");
        if (s < MIN_BLOCK || (s & 15) || s > (size_t)(a->end - (char *)b))
            return bad(st, "a block size out of range");
        if (b->prev != prev) return bad(st, "a prev size that is not the previous block's");
        st->blocks++;
        if (tag == TAG_FREE) {
            if (last_free) return bad(st, "two free neighbours left unmerged");
            nfree++;
            freebytes += s;
            if (s > st->largest_free) st->largest_free = s;
        } else {
            st->used += s;
        }
        last_free = tag == TAG_FREE;
        prev = s;
        b = at(b, s);
    }
    if ((char *)b != a->end) return bad(st, "the chain runs past the sentinel");
    if (b->prev != prev || b->head != TAG_USED) return bad(st, "a damaged sentinel");
    st->free = freebytes;
    st->free_blocks = nfree;
    if (st->used != atomic_load_explicit(&a->used, memory_order_relaxed))
        return bad(st, "the used count is not the sum of used blocks");
    size_t seen = 0, seenbytes = 0;
    for (unsigned fl = 0; fl < NFL; fl++) {
        if (!!(a->fl_map & (1ull << fl)) != !!a->sl_map[fl]) return bad(st, "a first-level bit is wrong");
        for (unsigned sl = 0; sl < NSL; sl++) {
            fblk *f = a->bins[fl][sl], *back = NULL;
            if (!!(a->sl_map[fl] & (1u << sl)) != !!f) return bad(st, "a second-level bit is wrong");
            for (; f; back = f, f = f->next) {
                unsigned ffl, fsl;
                if ((char *)f < a->heap || (char *)f >= a->end || ((uintptr_t)f & 15))
                    return bad(st, "a bin points outside the heap");
                if (btag(&f->h) != TAG_FREE) return bad(st, "a bin holds a block not free");
                mapping(bsize(&f->h), &ffl, &fsl);
                if (ffl != fl || fsl != sl) return bad(st, "a block in the wrong bin");
                if (f->back != back) return bad(st, "a broken back link");
                if (at(f, bsize(&f->h))->prev != bsize(&f->h)) return bad(st, "a bin holds a stale block");
                if (++seen > nfree) return bad(st, "the bins hold more blocks than the heap");
                seenbytes += bsize(&f->h);
            }
        }
    }
    if (seen != nfree || seenbytes != freebytes) return bad(st, "a free block in no bin");
    return 0;
}

int cc_arena_check(cc_arena_stats *st) {
    memset(st, 0, sizeof *st);
    arena *a = A;
    if (!a) return bad(st, "no arena");
    lock(a);
    int r = check(a, st);
    st->recoveries = a->recoveries;
    unlock(a);
    return r;
}
