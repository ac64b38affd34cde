/*
 * array.h -- fixed-size arrays of numbers in the arena (array.c):
 * shared.array and shared.value.
 *
 * The elements sit inline after the header, so reading or writing one is a
 * bounds check and one (relaxed atomic) load or store: no lock, no codec.
 * add and cas are compare-and-swap loops on the element's bit pattern, so
 * they work for floats as for integers, check the result against the type
 * before committing, and never leave a torn value however the caller dies.
 *
 * Integer types hold values in int64_t on the way in and out (no u64, so
 * every element fits); float types use double. The runtime checks ranges
 * (-ERANGE); the binding turns Lua numbers into these and names the index.
 * Indices are 0-based here.
 */
#ifndef CC_ARRAY_H
#define CC_ARRAY_H
#include "cc.h"

enum cc_elem { CC_I8, CC_U8, CC_I16, CC_U16, CC_I32, CC_U32, CC_I64, CC_F32, CC_F64, CC_ELEM_MAX };

typedef struct cc_array {
    cc_obj hdr;    /* CC_T_ARRAY or CC_T_VALUE */
    uint32_t elem; /* enum cc_elem */
    uint32_t pad;
    int64_t n;
    _Alignas(16) unsigned char data[];
} cc_array;

/* "i8" ... "f64" -> the element type, or -1. */
int cc_elem_parse(const char *name);
const char *cc_elem_name(enum cc_elem e);
size_t cc_elem_size(enum cc_elem e);
static inline int cc_elem_isfloat(enum cc_elem e) { return e == CC_F32 || e == CC_F64; }

/* A zero-filled array of n elements; type is CC_T_ARRAY or CC_T_VALUE.
 * -EINVAL (n < 1, bad elem), -E2BIG (more bytes than the arena has),
 * -ENOMEM (the arena is full now). Nothing is allocated on failure. */
int cc_array_new(cc_array **out, enum cc_type type, int64_t n, enum cc_elem elem);

/* Does v fit an integer element type? (every int64 fits i64) */
int cc_elem_fits(enum cc_elem e, int64_t v);
/* Does a finite double fit a float type? (f32: |v| <= FLT_MAX; inf and NaN
 * are stored as they are) */
int cc_elem_fitsf(enum cc_elem e, double v);

/* Plain loads and stores (relaxed atomics: concurrent access is defined,
 * a reader sees the old or the new value, never half of one). The caller
 * checked the index and, for stores, the range. */
static inline int64_t cc_array_geti(const cc_array *a, int64_t i) {
    const void *p = a->data;
    switch ((enum cc_elem)a->elem) {
    case CC_I8: return __atomic_load_n((const int8_t *)p + i, __ATOMIC_RELAXED);
    case CC_U8: return __atomic_load_n((const uint8_t *)p + i, __ATOMIC_RELAXED);
    case CC_I16: return __atomic_load_n((const int16_t *)p + i, __ATOMIC_RELAXED);
    case CC_U16: return __atomic_load_n((const uint16_t *)p + i, __ATOMIC_RELAXED);
    case CC_I32: return __atomic_load_n((const int32_t *)p + i, __ATOMIC_RELAXED);
    case CC_U32: return __atomic_load_n((const uint32_t *)p + i, __ATOMIC_RELAXED);
    default: return __atomic_load_n((const int64_t *)p + i, __ATOMIC_RELAXED);
    }
}

static inline double cc_array_getf(const cc_array *a, int64_t i) {
    if (a->elem == CC_F32) {
        uint32_t bits = __atomic_load_n((const uint32_t *)a->data + i, __ATOMIC_RELAXED);
        float f;
        __builtin_memcpy(&f, &bits, sizeof f);
        return f;
    }
    uint64_t bits = __atomic_load_n((const uint64_t *)a->data + i, __ATOMIC_RELAXED);
    double d;
    __builtin_memcpy(&d, &bits, sizeof d);
    return d;
}

static inline void cc_array_seti(cc_array *a, int64_t i, int64_t v) {
    void *p = a->data;
    switch ((enum cc_elem)a->elem) {
    case CC_I8: __atomic_store_n((int8_t *)p + i, (int8_t)v, __ATOMIC_RELAXED); break;
    case CC_U8: __atomic_store_n((uint8_t *)p + i, (uint8_t)v, __ATOMIC_RELAXED); break;
    case CC_I16: __atomic_store_n((int16_t *)p + i, (int16_t)v, __ATOMIC_RELAXED); break;
    case CC_U16: __atomic_store_n((uint16_t *)p + i, (uint16_t)v, __ATOMIC_RELAXED); break;
    case CC_I32: __atomic_store_n((int32_t *)p + i, (int32_t)v, __ATOMIC_RELAXED); break;
    case CC_U32: __atomic_store_n((uint32_t *)p + i, (uint32_t)v, __ATOMIC_RELAXED); break;
    default: __atomic_store_n((int64_t *)p + i, v, __ATOMIC_RELAXED); break;
    }
}

static inline void cc_array_setf(cc_array *a, int64_t i, double v) {
    if (a->elem == CC_F32) {
        float f = (float)v;
        uint32_t bits;
        __builtin_memcpy(&bits, &f, sizeof bits);
        __atomic_store_n((uint32_t *)a->data + i, bits, __ATOMIC_RELAXED);
        return;
    }
    uint64_t bits;
    __builtin_memcpy(&bits, &v, sizeof bits);
    __atomic_store_n((uint64_t *)a->data + i, bits, __ATOMIC_RELAXED);
}

/* Does a double hold v exactly? (always below 2^53; above, only some) */
static inline int cc_fits_double(int64_t v) {
    double d = (double)v;
    return d < 9223372036854775808.0 && (int64_t)d == v;
}

/* Atomic read-modify-write. add stores old+d and gives it in *out, or
 * returns -ERANGE when the sum does not fit the type -- or, with doubles
 * set, when a double cannot hold it exactly (for a caller whose numbers are
 * doubles) -- storing nothing; *out = the old value then. cas stores
 * desired when the element equals expected: 1 swapped, 0 not; *old = the
 * value seen. */
int cc_array_addi(cc_array *a, int64_t i, int64_t d, int doubles, int64_t *out);
int cc_array_addf(cc_array *a, int64_t i, double d, double *out);
int cc_array_casi(cc_array *a, int64_t i, int64_t expected, int64_t desired, int64_t *old);
int cc_array_casf(cc_array *a, int64_t i, double expected, double desired, double *old);
#endif
