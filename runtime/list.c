/*
 * list.c -- shared.list storage: an array of 16-byte slots in the arena.
 *
 * A slot holds its item inline when the item is small and names no shared
 * object (integers, booleans, short strings: the payload without the
 * message header, up to 14 bytes), else a pointer to a block holding the
 * whole message. So a per-item append of a number is one lock, one slot
 * write and one length bump -- no allocation.
 *
 * Crash safety: append writes the slot first and publishes it by bumping
 * the length (one store). Growing copies into a new array and publishes the
 * new pointer with one store. A process killed inside insert/remove/set in
 * the middle of the list (memmove, slot rewrite) can leave that one region
 * torn; append, pop and clear cannot be torn.
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

struct cc_list {
    cc_obj hdr;
    cc_mutex m;
    int64_t len, cap;
    slot *slots;
};

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
    for (int64_t i = 0; i < l->len; i++) slot_free(&l->slots[i], 1);
    cc_free(l->slots);
    cc_mutex_destroy(&l->m);
    cc_free(l);
}

static void lock(cc_list *l) { cc_mutex_lock_hard(&l->m); }
static void unlock(cc_list *l) { cc_mutex_unlock(&l->m); }

static int reserve(cc_list *l, int64_t need) {
    if (need <= l->cap) return 0;
    int64_t cap = l->cap ? l->cap * 2 : 16;
    while (cap < need) cap *= 2;
    slot *s = cc_alloc((size_t)cap * sizeof *s);
    if (!s) return -ENOMEM;
    if (l->len) memcpy(s, l->slots, (size_t)l->len * sizeof *s);
    slot *old = l->slots;
    l->slots = s; /* publish */
    l->cap = cap;
    cc_free(old);
    return 0;
}

int64_t cc_list_len(cc_list *l) { return __atomic_load_n(&l->len, __ATOMIC_ACQUIRE); }

int cc_list_append(cc_list *l, const void *msg, size_t len) {
    slot s;
    lock(l);
    int r = reserve(l, l->len + 1);
    if (!r) r = slot_make(&s, msg, len);
    if (!r) {
        l->slots[l->len] = s;
        __atomic_store_n(&l->len, l->len + 1, __ATOMIC_RELEASE); /* the commit */
    }
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
        __atomic_store_n(&l->len, l->len + (int64_t)n, __ATOMIC_RELEASE);
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
    if (i < 0 || i > l->len) r = -ERANGE;
    else if (i == l->len) {
        unlock(l);
        return cc_list_append(l, msg, len);
    } else {
        slot s;
        r = slot_make(&s, msg, len);
        if (!r) {
            slot old = l->slots[i];
            l->slots[i] = s;
            slot_free(&old, 1);
        }
    }
    unlock(l);
    return r;
}

int cc_list_insert(cc_list *l, int64_t i, const void *msg, size_t len) {
    lock(l);
    int r = (i < 0 || i > l->len) ? -ERANGE : reserve(l, l->len + 1);
    slot s;
    if (!r) r = slot_make(&s, msg, len);
    if (!r) {
        memmove(&l->slots[i + 1], &l->slots[i], (size_t)(l->len - i) * sizeof(slot));
        l->slots[i] = s;
        __atomic_store_n(&l->len, l->len + 1, __ATOMIC_RELEASE);
    }
    unlock(l);
    return r;
}

int cc_list_remove(cc_list *l, int64_t i, cc_buf *out) {
    lock(l);
    int r = (i < 0 || i >= l->len) ? -ERANGE : slot_read(&l->slots[i], out, 0);
    if (!r) {
        slot_free(&l->slots[i], 0);
        memmove(&l->slots[i], &l->slots[i + 1], (size_t)(l->len - i - 1) * sizeof(slot));
        __atomic_store_n(&l->len, l->len - 1, __ATOMIC_RELEASE);
    }
    unlock(l);
    return r;
}

int cc_list_pop(cc_list *l, cc_buf *out) {
    lock(l);
    int r = l->len == 0 ? -ERANGE : slot_read(&l->slots[l->len - 1], out, 0);
    if (!r) {
        slot s = l->slots[l->len - 1];
        __atomic_store_n(&l->len, l->len - 1, __ATOMIC_RELEASE); /* the commit */
        slot_free(&s, 0);
    }
    unlock(l);
    return r;
}

int cc_list_clear(cc_list *l) {
    lock(l);
    int64_t n = l->len;
    __atomic_store_n(&l->len, 0, __ATOMIC_RELEASE);
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
