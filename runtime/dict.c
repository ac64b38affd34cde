/*
 * dict.c -- shared.dict storage: an open-addressing hash table in the arena
 * keyed by the encoded key (the bindings make keys canonical: 1.0 and 1 are
 * the same key), FNV-1a hashed, linear probing, tombstones for deletes,
 * doubling at 70% load.
 *
 * Each entry points at one block holding the key message and the value
 * message. set builds the new block and swaps the pointer (one store), so
 * a process killed mid-set leaves the old or the new value, never a torn
 * one. Growing rehashes into a new array published with one store.
 */
#include "list.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define TOMB ((char *)1)

typedef struct entry {
    uint64_t hash;
    char *kv; /* NULL free, TOMB deleted, else: u64 klen, u64 vlen, key, value */
} entry;

struct cc_dict {
    cc_obj hdr;
    cc_mutex m;
    int64_t count, used, cap; /* used = live + tombstones */
    entry *tab;
};

static uint64_t hash(const void *p, size_t n) {
    uint64_t h = cc_fnv1a(p, n);
    return h ? h : 1;
}

static size_t klen_of(const char *kv) {
    uint64_t n;
    memcpy(&n, kv, 8);
    return (size_t)n;
}
static size_t vlen_of(const char *kv) {
    uint64_t n;
    memcpy(&n, kv + 8, 8);
    return (size_t)n;
}
static const char *key_of(const char *kv) { return kv + 16; }
static const char *val_of(const char *kv) { return kv + 16 + klen_of(kv); }

static char *make_kv(const void *key, size_t klen, const void *val, size_t vlen) {
    char *kv = cc_alloc(16 + klen + vlen);
    if (!kv) return NULL;
    uint64_t k = klen, v = vlen;
    memcpy(kv, &k, 8);
    memcpy(kv + 8, &v, 8);
    memcpy(kv + 16, key, klen);
    memcpy(kv + 16 + klen, val, vlen);
    return kv;
}

static void drop_kv(char *kv) {
    cc_msg_release(val_of(kv), vlen_of(kv));
    cc_free(kv);
}

int cc_dict_new(cc_dict **out) {
    cc_dict *d = cc_calloc(sizeof *d);
    if (!d) return -ENOMEM;
    cc_obj_init(&d->hdr, CC_T_DICT);
    int r = cc_mutex_init(&d->m);
    if (r) {
        cc_free(d);
        return r;
    }
    *out = d;
    return 0;
}

void cc_dict_destroy(cc_obj *o) {
    cc_dict *d = (cc_dict *)o;
    for (int64_t i = 0; i < d->cap; i++)
        if (d->tab[i].kv && d->tab[i].kv != TOMB) drop_kv(d->tab[i].kv);
    cc_free(d->tab);
    cc_mutex_destroy(&d->m);
    cc_free(d);
}

static void lock(cc_dict *d) { cc_mutex_lock_hard(&d->m); }
static void unlock(cc_dict *d) { cc_mutex_unlock(&d->m); }

/* The slot holding key, or -1 (and *free_at: where it would go). */
static int64_t find(cc_dict *d, const void *key, size_t klen, uint64_t h, int64_t *free_at) {
    *free_at = -1;
    if (!d->cap) return -1;
    uint64_t mask = (uint64_t)d->cap - 1;
    for (uint64_t i = h & mask, n = 0; n < (uint64_t)d->cap; i = (i + 1) & mask, n++) {
        entry *e = &d->tab[i];
        if (!e->kv) {
            if (*free_at < 0) *free_at = (int64_t)i;
            return -1;
        }
        if (e->kv == TOMB) {
            if (*free_at < 0) *free_at = (int64_t)i;
            continue;
        }
        if (e->hash == h && klen_of(e->kv) == klen && memcmp(key_of(e->kv), key, klen) == 0)
            return (int64_t)i;
    }
    return -1;
}

static int grow(cc_dict *d) {
    int64_t cap = d->cap ? d->cap * 2 : 16;
    if (d->count * 10 < d->cap * 4 && d->cap) cap = d->cap; /* mostly tombstones: same size */
    entry *t = cc_calloc((size_t)cap * sizeof *t);
    if (!t) return -ENOMEM;
    uint64_t mask = (uint64_t)cap - 1;
    for (int64_t i = 0; i < d->cap; i++) {
        entry *e = &d->tab[i];
        if (!e->kv || e->kv == TOMB) continue;
        uint64_t j = e->hash & mask;
        while (t[j].kv) j = (j + 1) & mask;
        t[j] = *e;
    }
    entry *old = d->tab;
    d->tab = t; /* publish */
    d->cap = cap;
    d->used = d->count;
    cc_free(old);
    return 0;
}

int64_t cc_dict_len(cc_dict *d) { return __atomic_load_n(&d->count, __ATOMIC_ACQUIRE); }

/* Under the lock: find key and copy its value into out. The entry's index,
 * -ENOENT, or -ENOMEM (malloc: out could not grow). */
static int64_t copy_value(cc_dict *d, const void *key, size_t klen, cc_buf *out) {
    int64_t free_at, i = find(d, key, klen, hash(key, klen), &free_at);
    if (i < 0) return -ENOENT;
    const char *kv = d->tab[i].kv;
    size_t n = vlen_of(kv);
    int r = cc_buf_reserve(out, n);
    if (r) return r;
    memcpy(out->data, val_of(kv), n);
    out->len = n;
    return i;
}

int cc_dict_get(cc_dict *d, const void *key, size_t klen, cc_buf *out) {
    lock(d);
    int64_t i = copy_value(d, key, klen, out);
    if (i >= 0) cc_msg_retain(out->data, out->len); /* a copy: the reader's own counts */
    unlock(d);
    return i < 0 ? (int)i : 0;
}

int cc_dict_set(cc_dict *d, const void *key, size_t klen, const void *val, size_t vlen) {
    uint64_t h = hash(key, klen);
    char *kv = make_kv(key, klen, val, vlen);
    if (!kv) return -ENOMEM;
    lock(d);
    int r = 0;
    if ((d->used + 1) * 10 > d->cap * 7) r = grow(d);
    int64_t free_at, i = r ? -1 : find(d, key, klen, h, &free_at);
    if (!r && i >= 0) {
        char *old = d->tab[i].kv;
        d->tab[i].kv = kv; /* the commit */
        drop_kv(old);
    } else if (!r) {
        entry *e = &d->tab[free_at];
        int was_tomb = e->kv == TOMB;
        e->hash = h;
        e->kv = kv; /* the commit */
        d->count++;
        if (!was_tomb) d->used++;
    }
    unlock(d);
    if (r) cc_free(kv);
    return r;
}

int cc_dict_delete(cc_dict *d, const void *key, size_t klen, cc_buf *out) {
    lock(d);
    int64_t i = copy_value(d, key, klen, out); /* the reader takes its references */
    if (i >= 0) {
        char *kv = d->tab[i].kv;
        d->tab[i].kv = TOMB; /* the commit */
        d->count--;
        cc_free(kv);
    }
    unlock(d);
    return i < 0 ? (int)i : 0;
}

int cc_dict_clear(cc_dict *d) {
    lock(d);
    entry *t = d->tab;
    int64_t cap = d->cap;
    d->tab = NULL; /* the commit */
    d->cap = d->count = d->used = 0;
    for (int64_t i = 0; i < cap; i++)
        if (t[i].kv && t[i].kv != TOMB) drop_kv(t[i].kv);
    cc_free(t);
    unlock(d);
    return 0;
}

int cc_dict_snapshot(cc_dict *d, cc_buf *out, size_t **lens, size_t *n) {
    out->len = 0;
    lock(d);
    *n = 0;
    *lens = malloc((size_t)(2 * d->count + 1) * sizeof **lens);
    int r = *lens ? 0 : -ENOMEM;
    for (int64_t i = 0; !r && i < d->cap; i++) {
        const char *kv = d->tab[i].kv;
        if (!kv || kv == TOMB) continue;
        size_t kl = klen_of(kv), vl = vlen_of(kv);
        r = cc_buf_reserve(out, out->len + kl + vl);
        if (r) break;
        memcpy(out->data + out->len, key_of(kv), kl);
        memcpy(out->data + out->len + kl, val_of(kv), vl);
        cc_msg_retain(out->data + out->len + kl, vl);
        out->len += kl + vl;
        (*lens)[2 * *n] = kl;
        (*lens)[2 * *n + 1] = vl;
        (*n)++;
    }
    unlock(d);
    return r;
}
