/*
 * heap.c -- a big heap folded onto huge pages for cheap forks.
 *
 * process.spawn forks, and a fork copies one page-table entry per 4 KiB
 * page of the heap (copy_page_range); the child's exit takes them down
 * again. A state holding 10^6 small tables (about 120 MiB) made a spawn
 * ten times dearer than an empty one, though nothing of it is encoded. A
 * 2 MiB transparent huge page is one entry.
 *
 * So cc_heap_prefork folds the heap's 2 MiB spans into huge pages (madvise
 * MADV_COLLAPSE, Linux 6.1: synchronous, whatever the system's THP mode
 * but "never"). Folding is a copy, dear the first time (30 ms for 120 MiB
 * here, ten times that when the kernel must compact memory first for the
 * huge pages) and a look after that (5 us for 120 MiB); it pays for itself
 * after about seven forks. So it is done on every FOLD_EVERY-th fork, as
 * one rents skis until the rent would have bought them: a program that
 * forks once or twice pays nothing more, a loop of spawns pays a fold and
 * then forks cheaply. Spans split since (the parent wrote to a page a
 * child still shared) are folded again on the next such fork. A fold that
 * fails for want of huge pages (none to be had, even by compacting)
 * doubles the wait before the next try, up to FOLD_MAX forks.
 * - Not while a child of this process lives: it shares the heap's pages,
 *   and a fold copies shared pages too (they would be the parent's and
 *   the child's twice over). A fold that falls due then waits for the
 *   first fork with no child alive (a loop of spawn-and-join, the start
 *   of the next batch).
 * - Only the heap below its top less TOP_SLACK: folding fills a span's
 *   untouched pages too, and malloc's top pad is untouched.
 * - Not while the heap is under FOLD_FROM: a small program's memory is not
 *   rounded up to 2 MiB.
 * - Not MADV_HUGEPAGE: a mapping so flagged does not merge with the next
 *   step of the break (each step then breaks a span), and a child would
 *   fault in and zero a whole 2 MiB page for its few writes.
 * CONCUR_FOLD=0 in the environment turns folding off. Only the main arena
 * grows by sbrk: memory of states made in other threads is not folded.
 * Where the kernel has no MADV_COLLAPSE, or huge pages are off, madvise
 * fails and nothing changes.
 *
 * Big blocks. malloc gives a block of 128 KiB or more a mapping of its
 * own, which the fold does not reach (a 10^6-integer array is 16 MiB: 4096
 * entries for every fork). cc_heap_alloc, the lua_Alloc the host installs
 * (concur_alloc), gives a block of BIG or more a mapping of its own too,
 * but 2 MiB-aligned, a whole number of 2 MiB, and advised huge
 * (MADV_HUGEPAGE) from the start: it faults in 2 MiB at a time (fewer
 * faults while an array fills) and a fork copies one entry per 2 MiB. A
 * block that grows moves by mremap, page tables and all, into a new
 * aligned mapping; one that shrinks under BIG goes back to malloc. Lua
 * passes every block's size back (osize), so no header is kept. At most
 * one 2 MiB page per block is more than it asked for.
 */
#include "cc.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

#define HUGE (2u << 20)
#define FOLD_FROM (8u << 20)
#define TOP_SLACK (1u << 20)
#define FOLD_EVERY 8
#define FOLD_MAX 1024 /* the longest wait between tries while folds fail */
#define BIG HUGE      /* blocks this big get an aligned mapping of their own */

static uintptr_t start;        /* where the heap begins (0: unknown) */
static _Atomic int off;        /* the kernel said no: stop asking */
static _Atomic unsigned forks; /* from a heap of FOLD_FROM or more */
static _Atomic unsigned interval = FOLD_EVERY; /* fold on every this-many-th */
static _Atomic int due;        /* that fork came while children lived */
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* The heap's first byte: start_brk, the 47th field of /proc/self/stat
 * (after the command's name, which may hold anything but ends at the last
 * ')'). */
static void find_start(void) {
    const char *env = getenv("CONCUR_FOLD");
    if (env && !strcmp(env, "0")) return;
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *s = strrchr(buf, ')');
    for (int field = 2; s && field < 47; field++) s = strchr(s + 1, ' ');
    if (s) start = (uintptr_t)strtoull(s + 1, NULL, 10);
}

void cc_heap_prefork(int children) {
    pthread_once(&once, find_start);
    if (!start || atomic_load_explicit(&off, memory_order_relaxed)) return;
    uintptr_t brk = (uintptr_t)sbrk(0); /* a variable of libc's: no system call */
    uintptr_t from = (start + HUGE - 1) & ~(uintptr_t)(HUGE - 1);
    uintptr_t to = (brk - TOP_SLACK) & ~(uintptr_t)(HUGE - 1);
    if (brk < from + FOLD_FROM + TOP_SLACK || to <= from) return;
    unsigned n = atomic_fetch_add(&forks, 1) + 1, every = atomic_load(&interval);
    if (n % every == 0) atomic_store(&due, 1);
    if (children || !atomic_exchange(&due, 0)) return;
    if (madvise((void *)from, to - from, MADV_COLLAPSE) == 0) {
        atomic_store(&interval, FOLD_EVERY);
    } else if (errno == EINVAL || errno == EPERM) {
        atomic_store(&off, 1); /* no such advice here, or huge pages "never" */
    } else if (every < FOLD_MAX) { /* no huge pages to be had (ENOMEM, EAGAIN): */
        atomic_store(&interval, every * 2); /* ask less often, not every time in vain */
    }
}

/* ---- big blocks ---- */

static size_t span(size_t n) { return (n + HUGE - 1) & ~(size_t)(HUGE - 1); }

/* A new mapping of len bytes (a multiple of HUGE) at a HUGE boundary. */
static void *map_aligned(size_t len) {
    char *p = mmap(NULL, len + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    char *q = (char *)(((uintptr_t)p + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
    if (q > p) munmap(p, (size_t)(q - p));
    if (q + len < p + len + HUGE) munmap(q + len, (size_t)(p + len + HUGE - (q + len)));
    madvise(q, len, MADV_HUGEPAGE); /* only a hint: fails where there are none */
    return q;
}

/* Grow or shrink a big block (both sizes BIG or more). */
static void *remap(void *p, size_t osize, size_t nsize) {
    size_t olen = span(osize), nlen = span(nsize);
    if (nlen == olen) return p;
    if (nlen < olen) { /* the tail goes; the rest stays where it is */
        munmap((char *)p + nlen, olen - nlen);
        return p;
    }
    void *q = map_aligned(nlen);
    if (!q) return NULL;
    /* the old pages (and their page tables) move to the new start */
    if (mremap(p, olen, olen, MREMAP_MAYMOVE | MREMAP_FIXED, q) == MAP_FAILED) {
        memcpy(q, p, osize);
        munmap(p, olen);
    }
    return q;
}

void *cc_heap_alloc(void *ud, void *p, size_t osize, size_t nsize) {
    (void)ud;
    int was = p && osize >= BIG, big = nsize >= BIG;
    if (nsize == 0) {
        if (was) munmap(p, span(osize));
        else free(p);
        return NULL;
    }
    if (nsize > SIZE_MAX / 2) return NULL; /* span() and the slack would wrap */
    if (!was && !big) return realloc(p, nsize);
    if (was && big) return remap(p, osize, nsize);
    void *q = big ? map_aligned(span(nsize)) : malloc(nsize);
    if (!q) return NULL; /* p stays as it was */
    if (p) memcpy(q, p, osize < nsize ? osize : nsize);
    if (was) munmap(p, span(osize));
    else free(p);
    return q;
}
