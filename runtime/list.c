/*
 * list.c -- shared.list storage: an array of 16-byte slots in the arena.
 *
 * A slot holds its item inline when the item is small and names no shared
 * object (integers, booleans, short strings: the payload without the
 * message header, up to 14 bytes), else a pointer to a block holding the
 * whole message. So a per-item append of a number is one lock, one slot
 * write and one length bump -- no allocation.
 *
 * Crash safety: a process killed at any instruction inside a mutation
 * leaves the list as it was before or after it; at worst a block leaks.
 *
 *  - append/extend write slots past the end and publish them by storing the
 *    new length (one store); pop and clear store the new length first and
 *    free blocks after. Growing copies into a new array and publishes the
 *    pointer before the (smaller-is-safe) capacity.
 *  - set, and insert/remove in the middle, change more than one word: a
 *    16-byte slot, or the array with the length. insert/remove build the new
 *    contents in a spare array (copy-on-write; the two arrays then swap
 *    roles, so nothing is allocated in the steady state). Both then go
 *    through a redo record in the header: fill it, mark it valid (the
 *    commit), apply it, clear it. The robust mutex hands the next locker
 *    -EOWNERDEAD when the holder died; that locker re-applies a valid record
 *    (applying is idempotent). Blocks leave the list, and references are
 *    released, only after the commit, so a kill can leak but never free
 *    twice.
 *
 * Only the order of stores matters against SIGKILL (the kernel stops a
 * process at an instruction boundary and its earlier stores stay), so the
 * commit points need compiler barriers, not CPU fences.
 */
#include "list.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define INLINE_MAX 14

enum { S_EMPTY, S_INLINE, S_BLOCK };

/* raw[0] kind, raw[1] inline length, raw[2..15] inline payload;
 * for S_BLOCK, raw[8..15] the block pointer (u64 length, then the message) */
typedef struct slot {
    unsigned char raw[16];
} slot;

static char *block_of(const slot *s) {
    char *b;
    memcpy(&b, s->raw + 8, sizeof b);
    return b;
}

static int slot_make(slot *s, const void *msg, size_t len) {
    uint32_t nrefs = cc_msg_nrefs(msg);
    size_t off = cc_msg_payload_offset(nrefs);
    slot t;
    memset(&t, 0, sizeof t);
    if (nrefs == 0 && len - off <= INLINE_MAX) {
        t.raw[0] = S_INLINE;
        t.raw[1] = (unsigned char)(len - off);
        memcpy(t.raw + 2, (const char *)msg + off, len - off);
    } else {
        char *b = cc_alloc(8 + len);
        if (!b) return -ENOMEM;
        uint64_t l64 = len;
        memcpy(b, &l64, 8);
        memcpy(b + 8, msg, len);
        t.raw[0] = S_BLOCK;
        memcpy(t.raw + 8, &b, sizeof b);
    }
    *s = t;
    return 0;
}

/* Copy a slot's message into out; with retain, count its references for the
 * reader (a copy), else the reader takes them over (a move). */
static int slot_read(const slot *s, cc_buf *out, int retain) {
    if (s->raw[0] == S_INLINE) {
        size_t off = cc_msg_payload_offset(0), n = s->raw[1];
        if (cc_buf_reserve(out, off + n) != 0) return -ENOMEM;
        memset(out->data, 0, off);
        memcpy(out->data + off, s->raw + 2, n);
        out->len = off + n;
        return 0;
    }
    const char *b = block_of(s);
    uint64_t len;
    memcpy(&len, b, 8);
    if (cc_buf_reserve(out, len) != 0) return -ENOMEM;
    memcpy(out->data, b + 8, len);
    out->len = len;
    if (retain) cc_msg_retain(out->data, out->len);
    return 0;
}

/* Forget a slot: release what it owns (drop) or not (its message moved). */
static void slot_free(slot *s, int drop) {
    if (s->raw[0] == S_BLOCK) {
        char *b = block_of(s);
        if (drop) {
            uint64_t len;
            memcpy(&len, b, 8);
            cc_msg_release(b + 8, len);
        }
        cc_free(b);
    }
    s->raw[0] = S_EMPTY;
}

/* A mutation that touches more than one word, committed as a whole: the
 * new array pointers, capacities and length, and optionally one slot of the
 * new array to overwrite. */
typedef struct redo {
    uint32_t valid;         /* set = committed, not yet fully applied */
    int64_t len, cap, spare_cap;
    slot *slots, *spare;
    int64_t index;          /* -1, or the slot to overwrite with s */
    slot s;
} redo;

struct cc_list {
    cc_obj hdr;
    cc_mutex m;
    int64_t len, cap;       /* len is also read without the lock (cc_list_len) */
    slot *slots;
    slot *spare;            /* copy-on-write target of insert/remove; NULL until needed */
    int64_t spare_cap;
    redo rec;
};

/* Keep the compiler from moving stores across a commit point. (A test
 * build may define ORDER to also kill the process there.) */
#ifndef ORDER
#define ORDER() __atomic_signal_fence(__ATOMIC_SEQ_CST)
#endif

/* ---- the redo record ---- */

static void apply(cc_list *l) {
    const redo *r = &l->rec;
    l->slots = r->slots;
    l->cap = r->cap;
    l->spare = r->spare;
    l->spare_cap = r->spare_cap;
    if (r->index >= 0) l->slots[r->index] = r->s;
    __atomic_store_n(&l->len, r->len, __ATOMIC_RELEASE);
}

/* The header as it is now, as a record to edit. */
static void rec_begin(cc_list *l) {
    redo *r = &l->rec;
    r->len = l->len;
    r->cap = l->cap;
    r->spare_cap = l->spare_cap;
    r->slots = l->slots;
    r->spare = l->spare;
    r->index = -1;
}

static void rec_commit(cc_list *l) {
    ORDER();
    __atomic_store_n(&l->rec.valid, 1, __ATOMIC_RELEASE); /* the commit */
    ORDER();
    apply(l);
    ORDER();
    __atomic_store_n(&l->rec.valid, 0, __ATOMIC_RELEASE);
    ORDER();
}

/* The previous holder died: finish what it committed. */
static void recover(cc_list *l) {
    if (__atomic_load_n(&l->rec.valid, __ATOMIC_ACQUIRE)) {
        apply(l);
        ORDER();
        __atomic_store_n(&l->rec.valid, 0, __ATOMIC_RELEASE);
    }
}

/* ---- the list ---- */

int cc_list_new(cc_list **out) {
    cc_list *l = cc_calloc(sizeof *l);
    if (!l) return -ENOMEM;
    cc_obj_init(&l->hdr, CC_T_LIST);
    int r = cc_mutex_init(&l->m);
    if (r) {
        cc_free(l);
        return r;
    }
    *out = l;
    return 0;
}

void cc_list_destroy(cc_obj *o) {
    cc_list *l = (cc_list *)o;
    recover(l); /* a holder died after a commit and no one has locked since */
    for (int64_t i = 0; i < l->len; i++) slot_free(&l->slots[i], 1);
    cc_free(l->slots);
    cc_free(l->spare);
    cc_mutex_destroy(&l->m);
    cc_free(l);
}

static void lock(cc_list *l) {
    if (__builtin_expect(cc_mutex_lock_hard(&l->m) == -EOWNERDEAD, 0)) recover(l);
}
static void unlock(cc_list *l) { cc_mutex_unlock(&l->m); }

/* Grow an array (the live one or the spare) to hold need slots, keeping its
 * first keep slots. The pointer is published before the capacity: a kill in
 * between leaves a capacity smaller than the array, which is safe. */
static __attribute__((noinline)) int grow_to(slot **arr, int64_t *cap, int64_t need,
                                             int64_t keep) {
    int64_t c = *cap ? *cap * 2 : 16;
    while (c < need) c *= 2;
    slot *s = cc_alloc((size_t)c * sizeof *s);
    if (!s) return -ENOMEM;
    if (keep) memcpy(s, *arr, (size_t)keep * sizeof *s);
    slot *old = *arr;
    ORDER();
    __atomic_store_n(arr, s, __ATOMIC_RELEASE); /* publish */
    ORDER();
    __atomic_store_n(cap, c, __ATOMIC_RELEASE);
    ORDER();
    cc_free(old);
    return 0;
}

static inline int grow(slot **arr, int64_t *cap, int64_t need, int64_t keep) {
    return need <= *cap ? 0 : grow_to(arr, cap, need, keep);
}

static int reserve(cc_list *l, int64_t need) { return grow(&l->slots, &l->cap, need, l->len); }

/* The spare must hold the result of a copy-on-write: need slots, and at
 * least the live capacity so that appends after the swap do not regrow. */
static int reserve_spare(cc_list *l, int64_t need) {
    if (need < l->cap) need = l->cap;
    return grow(&l->spare, &l->spare_cap, need, 0);
}

/* Swap the arrays: the spare, filled by the caller, becomes the list. */
static void swap_commit(cc_list *l, int64_t len) {
    rec_begin(l);
    redo *r = &l->rec;
    r->slots = l->spare;
    r->cap = l->spare_cap;
    r->spare = l->slots;
    r->spare_cap = l->cap;
    r->len = len;
    rec_commit(l);
}

int64_t cc_list_len(cc_list *l) {
    /* A committed record not yet applied (its holder may have died before
     * applying it): take the lock, which finishes it, so the length read
     * agrees with what the next locked read will show. */
    if (__builtin_expect(__atomic_load_n(&l->rec.valid, __ATOMIC_ACQUIRE), 0)) {
        lock(l);
        unlock(l);
    }
    return __atomic_load_n(&l->len, __ATOMIC_ACQUIRE);
}

/* append and pop are the hot paths: inlined into their callers */
static inline __attribute__((always_inline)) int append_locked(cc_list *l, const void *msg,
                                                                size_t len) {
    slot s;
    int r = reserve(l, l->len + 1);
    if (!r) r = slot_make(&s, msg, len);
    if (!r) {
        l->slots[l->len] = s;
        __atomic_store_n(&l->len, l->len + 1, __ATOMIC_RELEASE); /* the commit */
    }
    return r;
}

int cc_list_append(cc_list *l, const void *msg, size_t len) {
    lock(l);
    int r = append_locked(l, msg, len);
    unlock(l);
    return r;
}

int cc_list_extend(cc_list *l, const void *buf, const size_t *lens, size_t n) {
    const char *p = buf;
    lock(l);
    int r = reserve(l, l->len + (int64_t)n);
    size_t done = 0;
    for (; !r && done < n; done++) {
        r = slot_make(&l->slots[l->len + (int64_t)done], p, lens[done]);
        if (!r) p += lens[done];
    }
    if (r) { /* all or nothing: undo the slots made */
        for (size_t i = 0; i + 1 < done; i++) slot_free(&l->slots[l->len + (int64_t)i], 0);
    } else {
        __atomic_store_n(&l->len, l->len + (int64_t)n, __ATOMIC_RELEASE); /* the commit */
    }
    unlock(l);
    return r;
}

int cc_list_get(cc_list *l, int64_t i, cc_buf *out) {
    lock(l);
    int r = (i < 0 || i >= l->len) ? -ERANGE : slot_read(&l->slots[i], out, 1);
    unlock(l);
    return r;
}

int cc_list_set(cc_list *l, int64_t i, const void *msg, size_t len) {
    lock(l);
    int r = 0;
    slot s, old = {{S_EMPTY}};
    if (i < 0 || i > l->len) r = -ERANGE;
    else if (i == l->len) r = append_locked(l, msg, len);
    else if ((r = slot_make(&s, msg, len)) == 0) {
        old = l->slots[i];
        rec_begin(l);
        l->rec.index = i;
        l->rec.s = s;
        rec_commit(l);
    }
    unlock(l);
    slot_free(&old, 1); /* the replaced item is no longer reachable */
    return r;
}

int cc_list_insert(cc_list *l, int64_t i, const void *msg, size_t len) {
    lock(l);
    int64_t n = l->len;
    int r = (i < 0 || i > n) ? -ERANGE : 0;
    if (!r && i == n) r = append_locked(l, msg, len);
    else if (!r && (r = reserve_spare(l, n + 1)) == 0 && (r = slot_make(&l->spare[i], msg, len)) == 0) {
        memcpy(l->spare, l->slots, (size_t)i * sizeof(slot));
        memcpy(l->spare + i + 1, l->slots + i, (size_t)(n - i) * sizeof(slot));
        swap_commit(l, n + 1);
    }
    unlock(l);
    return r;
}

static inline __attribute__((always_inline)) int pop_locked(cc_list *l, cc_buf *out,
                                                             slot *gone) {
    int r = slot_read(&l->slots[l->len - 1], out, 0);
    if (!r) {
        *gone = l->slots[l->len - 1];
        __atomic_store_n(&l->len, l->len - 1, __ATOMIC_RELEASE); /* the commit */
    }
    return r;
}

int cc_list_remove(cc_list *l, int64_t i, cc_buf *out) {
    slot gone = {{S_EMPTY}};
    lock(l);
    int64_t n = l->len;
    int r = (i < 0 || i >= n) ? -ERANGE : 0;
    if (!r && i == n - 1) r = pop_locked(l, out, &gone);
    else if (!r && (r = reserve_spare(l, n)) == 0 && (r = slot_read(&l->slots[i], out, 0)) == 0) {
        gone = l->slots[i];
        memcpy(l->spare, l->slots, (size_t)i * sizeof(slot));
        memcpy(l->spare + i, l->slots + i + 1, (size_t)(n - i - 1) * sizeof(slot));
        swap_commit(l, n - 1);
    }
    unlock(l);
    slot_free(&gone, 0); /* its references moved to the reader */
    return r;
}

int cc_list_pop(cc_list *l, cc_buf *out) {
    slot gone = {{S_EMPTY}};
    lock(l);
    int r = l->len == 0 ? -ERANGE : pop_locked(l, out, &gone);
    unlock(l);
    slot_free(&gone, 0);
    return r;
}

int cc_list_clear(cc_list *l) {
    lock(l);
    int64_t n = l->len;
    __atomic_store_n(&l->len, 0, __ATOMIC_RELEASE); /* the commit */
    ORDER();
    for (int64_t i = 0; i < n; i++) slot_free(&l->slots[i], 1);
    unlock(l);
    return 0;
}

int cc_list_snapshot(cc_list *l, cc_buf *out, size_t **lens, size_t *n) {
    cc_buf one = {0};
    out->len = 0;
    lock(l);
    *n = (size_t)l->len;
    *lens = malloc((*n ? *n : 1) * sizeof **lens);
    int r = *lens ? 0 : -ENOMEM;
    for (size_t i = 0; !r && i < *n; i++) {
        r = slot_read(&l->slots[i], &one, 1);
        if (!r) r = cc_buf_reserve(out, out->len + one.len);
        if (!r) {
            memcpy(out->data + out->len, one.data, one.len);
            out->len += one.len;
            (*lens)[i] = one.len;
        }
    }
    unlock(l);
    cc_buf_free(&one);
    return r;
}
