/*
 * array.c -- shared.array / shared.value storage: numbers inline in one
 * arena block, read and written with atomics, never under a lock.
 *
 * Why CAS loops for add, even on integers: a fetch_add cannot refuse a sum
 * that overflows the element (250 + 10 in a u8 would wrap to 4), and floats
 * have no fetch_add at all. A loop that loads, checks and compare-exchanges
 * costs the same as a locked add when uncontended and stays correct under
 * contention; a process killed anywhere in it has either stored the whole
 * new value or nothing.
 */
#include "array.h"

#include <errno.h>
#include <float.h>
#include <string.h>

static const char *const NAMES[CC_ELEM_MAX] = {"i8",  "u8",  "i16", "u16", "i32",
                                               "u32", "i64", "f32", "f64"};
static const uint8_t SIZES[CC_ELEM_MAX] = {1, 1, 2, 2, 4, 4, 8, 4, 8};

int cc_elem_parse(const char *name) {
    for (int e = 0; e < CC_ELEM_MAX; e++)
        if (strcmp(name, NAMES[e]) == 0) return e;
    return -1;
}

const char *cc_elem_name(enum cc_elem e) { return e < CC_ELEM_MAX ? NAMES[e] : "?"; }
size_t cc_elem_size(enum cc_elem e) { return e < CC_ELEM_MAX ? SIZES[e] : 0; }

int cc_elem_fits(enum cc_elem e, int64_t v) {
    switch (e) {
    case CC_I8: return v >= INT8_MIN && v <= INT8_MAX;
    case CC_U8: return v >= 0 && v <= UINT8_MAX;
    case CC_I16: return v >= INT16_MIN && v <= INT16_MAX;
    case CC_U16: return v >= 0 && v <= UINT16_MAX;
    case CC_I32: return v >= INT32_MIN && v <= INT32_MAX;
    case CC_U32: return v >= 0 && v <= (int64_t)UINT32_MAX;
    case CC_I64: return 1;
    default: return 0;
    }
}

int cc_elem_fitsf(enum cc_elem e, double v) {
    if (e == CC_F64) return 1;
    if (e != CC_F32) return 0;
    return v != v || v == 1.0 / 0.0 || v == -1.0 / 0.0 || (v >= -FLT_MAX && v <= FLT_MAX);
}

int cc_array_new(cc_array **out, enum cc_type type, int64_t n, enum cc_elem elem) {
    if (n < 1 || elem >= CC_ELEM_MAX || (type != CC_T_ARRAY && type != CC_T_VALUE)) return -EINVAL;
    size_t size = SIZES[elem];
    if ((uint64_t)n > (cc_arena_size() - sizeof(cc_array)) / size) return -E2BIG;
    cc_array *a = cc_calloc(sizeof *a + (size_t)n * size);
    if (!a) return -ENOMEM;
    a->elem = elem;
    a->n = n;
    cc_obj_init(&a->hdr, type); /* last: the object is whole before it counts */
    *out = a;
    return 0;
}

void cc_array_destroy(cc_obj *o) { cc_free(o); }

/* Compare-exchange on the element's bits; size 1, 2, 4 or 8. */
static int cas_bits(cc_array *a, int64_t i, uint64_t *seen, uint64_t want) {
    void *p = a->data;
    switch (SIZES[a->elem]) {
    case 1: {
        uint8_t e = (uint8_t)*seen;
        int ok = __atomic_compare_exchange_n((uint8_t *)p + i, &e, (uint8_t)want, 0,
                                             __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
        *seen = e;
        return ok;
    }
    case 2: {
        uint16_t e = (uint16_t)*seen;
        int ok = __atomic_compare_exchange_n((uint16_t *)p + i, &e, (uint16_t)want, 0,
                                             __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
        *seen = e;
        return ok;
    }
    case 4: {
        uint32_t e = (uint32_t)*seen;
        int ok = __atomic_compare_exchange_n((uint32_t *)p + i, &e, (uint32_t)want, 0,
                                             __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
        *seen = e;
        return ok;
    }
    default:
        return __atomic_compare_exchange_n((uint64_t *)p + i, seen, want, 0, __ATOMIC_SEQ_CST,
                                           __ATOMIC_RELAXED);
    }
}

static uint64_t load_bits(const cc_array *a, int64_t i) {
    const void *p = a->data;
    switch (SIZES[a->elem]) {
    case 1: return __atomic_load_n((const uint8_t *)p + i, __ATOMIC_RELAXED);
    case 2: return __atomic_load_n((const uint16_t *)p + i, __ATOMIC_RELAXED);
    case 4: return __atomic_load_n((const uint32_t *)p + i, __ATOMIC_RELAXED);
    default: return __atomic_load_n((const uint64_t *)p + i, __ATOMIC_RELAXED);
    }
}

/* Bits <-> values of an integer element (sign-extending the signed types). */
static int64_t int_of(enum cc_elem e, uint64_t b) {
    switch (e) {
    case CC_I8: return (int8_t)b;
    case CC_I16: return (int16_t)b;
    case CC_I32: return (int32_t)b;
    case CC_I64: return (int64_t)b;
    default: return (int64_t)b; /* unsigned: loaded zero-extended */
    }
}

static uint64_t bits_of_int(enum cc_elem e, int64_t v) {
    uint64_t b = (uint64_t)v;
    switch (SIZES[e]) {
    case 1: return b & 0xff;
    case 2: return b & 0xffff;
    case 4: return b & 0xffffffffu;
    default: return b;
    }
}

static double float_of(enum cc_elem e, uint64_t b) {
    if (e == CC_F32) {
        uint32_t u = (uint32_t)b;
        float f;
        memcpy(&f, &u, sizeof f);
        return f;
    }
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

static uint64_t bits_of_float(enum cc_elem e, double v) {
    if (e == CC_F32) {
        float f = (float)v;
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        return u;
    }
    uint64_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}

/* The common case, an i64 counter: no sign extension, no range but int64's. */
static int addi64(int64_t *p, int64_t d, int doubles, int64_t *out) {
    int64_t old = __atomic_load_n(p, __ATOMIC_RELAXED), sum;
    for (;;) {
        if (__builtin_add_overflow(old, d, &sum) || (doubles && !cc_fits_double(sum))) {
            *out = old;
            return -ERANGE;
        }
        if (__atomic_compare_exchange_n(p, &old, sum, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
            *out = sum;
            return 0;
        }
    }
}

int cc_array_addi(cc_array *a, int64_t i, int64_t d, int doubles, int64_t *out) {
    enum cc_elem e = a->elem;
    if (e == CC_I64) return addi64((int64_t *)a->data + i, d, doubles, out);
    uint64_t seen = load_bits(a, i);
    for (;;) {
        int64_t old = int_of(e, seen), sum;
        if (__builtin_add_overflow(old, d, &sum) || !cc_elem_fits(e, sum) ||
            (doubles && !cc_fits_double(sum))) {
            *out = old;
            return -ERANGE;
        }
        if (cas_bits(a, i, &seen, bits_of_int(e, sum))) {
            *out = sum;
            return 0;
        }
    }
}

int cc_array_addf(cc_array *a, int64_t i, double d, double *out) {
    enum cc_elem e = a->elem;
    if (e == CC_F64) { /* no range to check: the common case, kept short */
        uint64_t *p = (uint64_t *)a->data + i, seen = __atomic_load_n(p, __ATOMIC_RELAXED), want;
        double v;
        do {
            memcpy(&v, &seen, sizeof v);
            v += d;
            memcpy(&want, &v, sizeof want);
        } while (
            !__atomic_compare_exchange_n(p, &seen, want, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
        *out = v;
        return 0;
    }
    uint64_t seen = load_bits(a, i);
    for (;;) {
        double old = float_of(e, seen), sum = old + d;
        if (!cc_elem_fitsf(e, sum)) {
            *out = old;
            return -ERANGE;
        }
        if (cas_bits(a, i, &seen, bits_of_float(e, sum))) {
            *out = float_of(e, bits_of_float(e, sum)); /* as stored (f32 rounds) */
            return 0;
        }
    }
}

int cc_array_casi(cc_array *a, int64_t i, int64_t expected, int64_t desired, int64_t *old) {
    enum cc_elem e = a->elem;
    if (!cc_elem_fits(e, expected)) { /* cannot be stored, so cannot be there */
        *old = int_of(e, load_bits(a, i));
        return 0;
    }
    uint64_t seen = bits_of_int(e, expected);
    int ok = cas_bits(a, i, &seen, bits_of_int(e, desired));
    *old = int_of(e, seen);
    return ok;
}

/* Floats compare by value (0.0 equals -0.0, NaN equals nothing), so the
 * swap is made against the bits actually stored once they compare equal. */
int cc_array_casf(cc_array *a, int64_t i, double expected, double desired, double *old) {
    enum cc_elem e = a->elem;
    uint64_t seen = load_bits(a, i);
    for (;;) {
        double v = float_of(e, seen);
        if (v != expected) {
            *old = v;
            return 0;
        }
        if (cas_bits(a, i, &seen, bits_of_float(e, desired))) {
            *old = v;
            return 1;
        }
    }
}
