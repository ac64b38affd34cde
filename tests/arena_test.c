/*
 * arena_test.c -- the shared-memory allocator on its own (runtime/ only, no
 * Lua): random alloc/free sequences checked against a full walk of the heap,
 * the "everything freed is one block again" property, exhaustion and absurd
 * sizes, frees of things that are not live blocks (they must abort), pages
 * given back, threads, and processes SIGKILLed at random moments of an
 * alloc/free storm, after which the parent checks the heap and carries on.
 *
 * Exits 0 when every check holds; otherwise prints the first failure and
 * exits 1. ARENA_TEST_ROUNDS changes the number of kill rounds (default 300).
 */
#include "../runtime/cc.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ARENA_SIZE ((size_t)256 << 20)

static int failures;

#define CHECK(cond, ...)                                                          \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "arena_test:%d: %s: ", __LINE__, #cond);              \
            fprintf(stderr, __VA_ARGS__);                                         \
            fputc('\n', stderr);                                                  \
            failures++;                                                           \
            return -1;                                                            \
        }                                                                         \
    } while (0)

/* xorshift64*: reproducible, one state per user */
static uint64_t rnd(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* A size from a mix that exercises every bin range: mostly small. */
static size_t rnd_size(uint64_t *s, size_t max) {
    uint64_t r = rnd(s) % 1000;
    size_t n;
    if (r < 700) n = rnd(s) % 256;
    else if (r < 900) n = 256 + rnd(s) % (64 * 1024);
    else if (r < 985) n = 64 * 1024 + rnd(s) % (1024 * 1024);
    else n = rnd(s) % (4u << 20);
    return n > max ? max : n;
}

/* Fill a block with a pattern that names it, and check it is still there. */
static void fill(unsigned char *p, size_t n, unsigned tag) {
    for (size_t i = 0; i < n; i += 61) p[i] = (unsigned char)(tag + i);
    if (n) p[n - 1] = (unsigned char)tag;
}

static int intact(const unsigned char *p, size_t n, unsigned tag) {
    for (size_t i = 0; i < n; i += 61)
        if (p[i] != (unsigned char)(tag + i) && !(i == n - 1)) return 0;
    return n == 0 || p[n - 1] == (unsigned char)tag;
}

static int heap_ok(const char *when) {
    cc_arena_stats st;
    int r = cc_arena_check(&st);
    CHECK(r == 0, "%s: heap inconsistent: %s", when, st.why ? st.why : "?");
    return 0;
}

/* The size a request of n bytes takes: header, 16-byte rounding, a 32-byte
 * minimum, plus at most one 16-byte tail too small to split off. */
static size_t block_of(size_t n) {
    size_t b = (n + 16 + 15) & ~(size_t)15;
    return b < 32 ? 32 : b;
}

typedef struct live {
    unsigned char *p;
    size_t n, taken;
} live;

/* ---- single process ---- */

static int t_fresh_is_one_block(void) {
    cc_arena_stats st;
    CHECK(cc_arena_check(&st) == 0, "%s", st.why);
    CHECK(st.free_blocks == 1 && st.blocks == 1 && st.used == 0,
          "a fresh arena is %zu blocks, %zu free, %zu used", st.blocks, st.free_blocks, st.used);
    return 0;
}

static int t_random(void) {
    enum { SLOTS = 2048, STEPS = 100000 };
    static live v[SLOTS];
    uint64_t s = 0x9e3779b97f4a7c15ull;
    size_t used0 = cc_arena_used(), expect = used0;
    for (int step = 0; step < STEPS; step++) {
        live *l = &v[rnd(&s) % SLOTS];
        if (l->p) {
            CHECK(intact(l->p, l->n, (unsigned)(l - v)), "block %zu (%zu bytes) was overwritten",
                  (size_t)(l - v), l->n);
            size_t before = cc_arena_used();
            cc_free(l->p);
            CHECK(before - cc_arena_used() == l->taken, "a free gave back %zu, not %zu",
                  before - cc_arena_used(), l->taken);
            expect -= l->taken;
            l->p = NULL;
        } else {
            size_t n = rnd_size(&s, 2u << 20), before = cc_arena_used();
            unsigned char *p = cc_alloc(n);
            if (!p) continue; /* full: frees will follow */
            CHECK(((uintptr_t)p & 15) == 0, "%p is not 16-byte aligned", (void *)p);
            l->taken = cc_arena_used() - before;
            CHECK(l->taken == block_of(n) || l->taken == block_of(n) + 16,
                  "an alloc of %zu took %zu bytes", n, l->taken);
            l->p = p;
            l->n = n;
            expect += l->taken;
            fill(p, n, (unsigned)(l - v));
        }
        CHECK(cc_arena_used() == expect, "used %zu, expected %zu", cc_arena_used(), expect);
        if (step % 5000 == 0 && heap_ok("random alloc/free")) return -1;
    }
    if (heap_ok("random alloc/free")) return -1;
    for (int i = 0; i < SLOTS; i++) {
        if (!v[i].p) continue;
        CHECK(intact(v[i].p, v[i].n, (unsigned)i), "block %d was overwritten", i);
        cc_free(v[i].p);
        v[i].p = NULL;
    }
    CHECK(cc_arena_used() == used0, "used %zu after freeing all, was %zu", cc_arena_used(), used0);
    return 0;
}

static int t_all_freed_is_one_block(void) {
    cc_arena_stats st;
    CHECK(cc_arena_check(&st) == 0, "%s", st.why);
    CHECK(st.free_blocks == 1 && st.blocks == 1 && st.used == 0,
          "after freeing everything: %zu blocks, %zu free, %zu used", st.blocks, st.free_blocks,
          st.used);
    return 0;
}

/* Fill the arena to exhaustion with mixed sizes, free in a scrambled
 * order, and get the one block back; absurd sizes are refused. */
static int t_exhaustion(void) {
    enum { MAXB = 200000 };
    static void *p[MAXB];
    uint64_t s = 42;
    int n = 0, nulls = 0;
    while (n < MAXB && nulls < 50) {
        void *q = cc_alloc(rnd_size(&s, 16u << 20));
        if (q) p[n++] = q;
        else nulls++;
    }
    CHECK(nulls == 50, "the arena never filled (%d blocks)", n);
    cc_arena_stats st;
    CHECK(cc_arena_check(&st) == 0, "full: %s", st.why);
    CHECK(st.used > ARENA_SIZE / 2, "full at only %zu bytes", st.used);
    for (int i = n - 1; i > 0; i--) { /* shuffle */
        int j = (int)(rnd(&s) % (uint64_t)(i + 1));
        void *t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
    for (int i = 0; i < n; i++) cc_free(p[i]);
    if (t_all_freed_is_one_block()) return -1;
    CHECK(cc_alloc(SIZE_MAX) == NULL, "SIZE_MAX");
    CHECK(cc_alloc(SIZE_MAX - 8) == NULL, "SIZE_MAX - 8");
    CHECK(cc_alloc((size_t)1 << 63) == NULL, "2^63");
    CHECK(cc_alloc(cc_arena_size()) == NULL, "the whole arena");
    CHECK(cc_alloc(cc_arena_size() - 16) == NULL, "the whole arena less a header");
    void *z = cc_alloc(0);
    CHECK(z != NULL, "a zero-byte alloc");
    cc_free(z);
    cc_free(NULL);
    void *big = cc_alloc(ARENA_SIZE - (1u << 20)); /* most of it, in one piece */
    CHECK(big != NULL, "one block of nearly the whole arena");
    cc_free(big);
    return t_all_freed_is_one_block();
}

/* A freed block's pages go back to the system (mincore on shared memory
 * reports what the page cache holds). */
static int t_pages_released(void) {
    size_t n = 8u << 20;
    unsigned char *p = cc_alloc(n);
    CHECK(p != NULL, "8 MiB");
    memset(p, 1, n);
    cc_free(p);
    size_t pg = 4096;
    unsigned char *lo = (unsigned char *)(((uintptr_t)p + 2 * pg) & ~(pg - 1));
    size_t len = (n - 4 * pg) & ~(pg - 1), resident = 0;
    static unsigned char vec[(8u << 20) / 4096];
    CHECK(mincore(lo, len, vec) == 0, "mincore: %s", strerror(errno));
    for (size_t i = 0; i < len / pg; i++) resident += vec[i] & 1;
    CHECK(resident == 0, "%zu of %zu pages still resident after the free", resident, len / pg);
    return 0;
}

/* Each child of these must die of SIGABRT. */
static void abort_double_free(void) {
    void *p = cc_alloc(100);
    cc_free(p);
    cc_free(p);
}
static void abort_interior(void) { cc_free((char *)cc_alloc(100) + 16); }
static void abort_outside(void) { cc_free(malloc(64)); }
static void abort_merged(void) { /* a stale pointer into a block merged away */
    void *a = cc_alloc(100), *b = cc_alloc(100), *c = cc_alloc(100);
    cc_free(b);
    cc_free(a);
    cc_free(b);
    (void)c;
}

static int t_bad_frees_abort(void) {
    void (*fn[])(void) = {abort_double_free, abort_interior, abort_outside, abort_merged};
    for (unsigned i = 0; i < sizeof fn / sizeof *fn; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            signal(SIGABRT, SIG_DFL);
            fn[i]();
            _exit(0);
        }
        int st;
        waitpid(pid, &st, 0);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "bad free %u did not abort (status %d)", i, st);
    }
    return heap_ok("after aborted frees");
}

static void *storm_thread(void *arg) {
    uint64_t s = (uintptr_t)arg;
    void *p[256] = {0};
    for (int i = 0; i < 100000; i++) {
        int k = (int)(rnd(&s) % 256);
        if (p[k]) {
            cc_free(p[k]);
            p[k] = NULL;
        } else {
            p[k] = cc_alloc(rnd_size(&s, 1u << 20));
        }
    }
    for (int k = 0; k < 256; k++) cc_free(p[k]);
    return NULL;
}

static int t_threads(void) {
    pthread_t t[4];
    for (uintptr_t i = 0; i < 4; i++) pthread_create(&t[i], NULL, storm_thread, (void *)(i * 7919 + 1));
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    return t_all_freed_is_one_block();
}

/* ---- processes killed in the middle ---- */

#define KSLOTS 64
/* A child publishes each block it holds in a table outside the arena
 * with one store, so the parent can free what a dead child held. */
typedef struct table {
    void *volatile slot[2][KSLOTS];
} table;

static size_t kid_max(void) { return 300 * 1024; }

static void kid(table *t, int who, uint64_t s) {
    for (;;) {
        int k = (int)(rnd(&s) % KSLOTS);
        void *p = t->slot[who][k];
        if (p) {
            t->slot[who][k] = NULL;
            cc_free(p);
        } else {
            size_t n = rnd(&s) % 8 ? rnd(&s) % 512 : rnd_size(&s, kid_max());
            p = cc_alloc(n);
            if (p && n) ((char *)p)[n - 1] = 1;
            t->slot[who][k] = p;
        }
    }
}

static void nap(uint64_t *s, unsigned max_us) {
    struct timespec ts = {0, (long)(rnd(s) % max_us) * 1000};
    nanosleep(&ts, NULL);
}

static int t_killed(int rounds) {
    table *t = mmap(NULL, sizeof *t, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(t != MAP_FAILED, "mmap");
    memset(t, 0, sizeof *t);
    /* the parent keeps live blocks across rounds: a block handed out twice
     * would show as a broken pattern */
    enum { MINE = 64 };
    live mine[MINE] = {{0}};
    uint64_t s = 7;
    /* blocks the aborted children above left behind stay in use */
    size_t base = cc_arena_used();
    size_t leaked = base, leak_bound = block_of(kid_max()) + 16;
    for (int round = 0; round < rounds; round++) {
        pid_t pid[2];
        for (int w = 0; w < 2; w++) {
            pid[w] = fork();
            if (pid[w] == 0) kid(t, w, rnd(&s) + (uint64_t)w);
            CHECK(pid[w] > 0, "fork: %s", strerror(errno));
        }
        nap(&s, 3000);
        kill(pid[0], SIGKILL); /* the other one may be the one that recovers */
        nap(&s, 500);
        kill(pid[1], SIGKILL);
        for (int w = 0; w < 2; w++) waitpid(pid[w], NULL, 0);
        /* first lock after the deaths: recovers if needed, checks all */
        if (heap_ok("after a kill")) return -1;
        cc_arena_stats st;
        for (int w = 0; w < 2; w++)
            for (int k = 0; k < KSLOTS; k++) {
                void *p = t->slot[w][k];
                if (!p) continue;
                t->slot[w][k] = NULL;
                cc_free(p); /* aborts if the child's table named a dead block */
            }
        size_t ours = 0;
        for (int i = 0; i < MINE; i++) {
            live *l = &mine[i];
            if (l->p) {
                CHECK(intact(l->p, l->n, (unsigned)i + 1000), "round %d: the parent's block %d was overwritten", round, i);
                if (rnd(&s) % 2) {
                    cc_free(l->p);
                    l->p = NULL;
                }
            }
            if (!l->p && rnd(&s) % 2) {
                size_t u = cc_arena_used();
                l->n = rnd_size(&s, 1u << 20);
                l->p = cc_alloc(l->n);
                CHECK(l->p != NULL, "round %d: the parent cannot allocate %zu", round, l->n);
                l->taken = cc_arena_used() - u;
                fill(l->p, l->n, (unsigned)i + 1000);
            }
            if (l->p) ours += l->taken;
        }
        CHECK(cc_arena_check(&st) == 0, "round %d: %s", round, st.why);
        /* what is left in use: the parent's blocks and leaks, at most one
         * block in flight per killed child */
        CHECK(st.used >= ours + leaked, "round %d: used %zu < %zu", round, st.used, ours + leaked);
        size_t now = st.used - ours - leaked;
        CHECK(now <= 2 * leak_bound, "round %d: %zu bytes leaked by two kills", round, now);
        leaked += now;
    }
    cc_arena_stats st;
    CHECK(cc_arena_check(&st) == 0, "%s", st.why);
    for (int i = 0; i < MINE; i++) cc_free(mine[i].p);
    CHECK(cc_arena_check(&st) == 0, "%s", st.why);
    CHECK(st.used == leaked, "used %zu, leaked %zu", st.used, leaked);
    fprintf(stderr, "arena_test: %d rounds, %d kills, %llu died holding the allocator lock, %zu bytes leaked\n",
            rounds, 2 * rounds, (unsigned long long)st.recoveries, leaked - base);
    CHECK(st.recoveries > 0, "no kill landed inside the allocator: the test did not test recovery");
    munmap(t, sizeof *t);
    return 0;
}

int main(void) {
    int r = cc_arena_init(ARENA_SIZE);
    if (r) {
        fprintf(stderr, "arena_test: cc_arena_init: %s\n", strerror(-r));
        return 1;
    }
    const char *env = getenv("ARENA_TEST_ROUNDS");
    int rounds = env ? atoi(env) : 300;
    struct {
        const char *name;
        int (*fn)(void);
    } t[] = {
        {"a fresh arena is one free block", t_fresh_is_one_block},
        {"random alloc/free keeps the heap consistent and the count exact", t_random},
        {"everything freed is one block again", t_all_freed_is_one_block},
        {"exhaustion and absurd sizes", t_exhaustion},
        {"a freed large block gives its pages back", t_pages_released},
        {"threads allocating at once", t_threads},
        {"freeing what is not a live block aborts", t_bad_frees_abort},
    };
    for (unsigned i = 0; i < sizeof t / sizeof *t; i++) {
        double t0 = cc_now();
        int fr = t[i].fn();
        fprintf(stderr, "arena_test: %s: %s (%.2f s)\n", fr ? "FAIL" : "ok", t[i].name, cc_now() - t0);
    }
    double t0 = cc_now();
    int fr = t_killed(rounds);
    fprintf(stderr, "arena_test: %s: processes SIGKILLed in an alloc/free storm (%.2f s)\n",
            fr ? "FAIL" : "ok", cc_now() - t0);
    if (failures) fprintf(stderr, "arena_test: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}
