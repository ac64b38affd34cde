/*
 * arena.c -- the shared memory every thread and forked process sees.
 *
 * One MAP_SHARED|MAP_ANONYMOUS|MAP_NORESERVE mapping, made once per process
 * tree before any fork: children inherit it at the same address, so plain
 * pointers into it are valid everywhere. Pages are committed only when
 * touched, so a large reservation (default 1 GiB, CONCUR_SHM) costs nothing
 * until used.
 *
 * Allocator: a 16-byte header before every block, size classes spaced four
 * to a power of two (32 B .. 256 KiB) with one free list each, a bump
 * pointer for fresh memory, and a first-fit list for large blocks (page
 * rounded; their pages are given back with MADV_REMOVE when freed). One
 * robust process-shared mutex guards it. Each mutation of the allocator
 * state is a single store (pop a free list head, bump the pointer), so a
 * process killed while holding the lock leaves at worst one leaked block.
 */
#include "cc.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <unistd.h>

#define ARENA_MAGIC 0x636f6e6375722121ULL /* "concur!!" */
#define BLK_MAGIC 0xc0cc0cc0u
#define NCLASS 51
#define SMALL_MAX (256u * 1024u)
#define PAGE 4096u
#define DEFAULT_SIZE ((size_t)1 << 30)

typedef struct blk {
    uint64_t size;  /* whole block, header included */
    uint32_t cls;   /* size class, or NCLASS for a large block */
    uint32_t magic;
} blk;

typedef struct freeblk {
    blk h;
    struct freeblk *next;
} freeblk;

typedef struct arena {
    uint64_t magic;
    size_t size;
    cc_mutex lock;
    char *bump, *end;
    freeblk *free[NCLASS];
    freeblk *big;
    _Atomic size_t used;
} arena;

static arena *A;
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t self_pid;

static void refresh_pid(void) { self_pid = getpid(); }

pid_t cc_pid(void) { return self_pid ? self_pid : (self_pid = getpid()); }

size_t cc_arena_default_size(void) { return DEFAULT_SIZE; }

int cc_arena_init(size_t size) {
    if (A) return 0;
    pthread_mutex_lock(&init_lock);
    int r = 0;
    if (!A) {
        if (size == 0) size = DEFAULT_SIZE;
        if (size < 1u << 20) size = 1u << 20;
        size = (size + PAGE - 1) & ~(size_t)(PAGE - 1);
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            r = -errno;
        } else {
            arena *a = p;
            memset(a, 0, sizeof *a);
            a->size = size;
            cc_mutex_init(&a->lock);
            a->bump = (char *)p + ((sizeof *a + 63) & ~(size_t)63);
            a->end = (char *)p + size;
            a->magic = ARENA_MAGIC;
            atomic_store(&a->used, 0);
            refresh_pid();
            pthread_atfork(NULL, NULL, refresh_pid);
            __atomic_store_n(&A, a, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&init_lock);
    return r;
}

int cc_arena_ready(void) { return A != NULL; }
size_t cc_arena_used(void) { return A ? atomic_load(&A->used) : 0; }
size_t cc_arena_size(void) { return A ? A->size : 0; }

int cc_in_arena(const void *p) {
    return A && (const char *)p > (const char *)A && (const char *)p < A->end;
}

/* The class whose blocks hold s bytes (header included), and its size. */
static unsigned class_of(size_t s, size_t *csize) {
    if (s <= 128) {
        size_t c = (s + 15) >> 4;
        if (c < 2) c = 2;
        *csize = c << 4;
        return (unsigned)(c - 2);
    }
    unsigned b = 63u - (unsigned)__builtin_clzll((unsigned long long)(s - 1));
    size_t base = (size_t)1 << b, step = base >> 2;
    size_t k = (s - base + step - 1) / step;
    *csize = base + k * step;
    return 7 + (b - 7) * 4 + (unsigned)(k - 1);
}

static void *carve(size_t size) {
    if ((size_t)(A->end - A->bump) < size) return NULL;
    blk *b = (blk *)A->bump;
    A->bump += size; /* the commit */
    return b;
}

static blk *take_big(size_t size) {
    freeblk **pp = &A->big;
    for (freeblk *f = A->big; f; pp = &f->next, f = f->next) {
        if (f->h.size >= size) {
            *pp = f->next;
            return &f->h;
        }
    }
    return NULL;
}

void *cc_alloc(size_t n) {
    if (!A || n > A->size) return NULL;
    size_t need = n + sizeof(blk), size;
    unsigned cls;
    if (need <= SMALL_MAX) {
        cls = class_of(need, &size);
    } else {
        cls = NCLASS;
        size = (need + PAGE - 1) & ~(size_t)(PAGE - 1);
    }
    cc_mutex_lock_hard(&A->lock);
    blk *b;
    if (cls < NCLASS && A->free[cls]) {
        freeblk *f = A->free[cls];
        A->free[cls] = f->next;
        b = &f->h;
    } else if (cls == NCLASS && (b = take_big(size)) != NULL) {
        size = b->size;
    } else {
        b = carve(size);
    }
    cc_mutex_unlock(&A->lock);
    if (!b) return NULL;
    b->size = size;
    b->cls = cls;
    b->magic = BLK_MAGIC;
    atomic_fetch_add(&A->used, size);
    return b + 1;
}

void *cc_calloc(size_t n) {
    void *p = cc_alloc(n);
    if (p) memset(p, 0, n);
    return p;
}

void cc_free(void *p) {
    if (!p) return;
    blk *b = (blk *)p - 1;
    if (!cc_in_arena(b) || b->magic != BLK_MAGIC) abort(); /* a broken invariant */
    b->magic = 0;
    atomic_fetch_sub(&A->used, b->size);
    freeblk *f = (freeblk *)b;
    if (b->cls == NCLASS && b->size >= 16 * PAGE) {
        /* give the pages back; keep the first page for the header */
        madvise((char *)b + PAGE, b->size - PAGE, MADV_REMOVE);
    }
    cc_mutex_lock_hard(&A->lock);
    if (b->cls < NCLASS) {
        f->next = A->free[b->cls];
        A->free[b->cls] = f;
    } else {
        f->next = A->big;
        A->big = f;
    }
    cc_mutex_unlock(&A->lock);
}
