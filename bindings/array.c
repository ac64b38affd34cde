/*
 * array.c -- shared.array(n, [type]) and shared.value([type], [init]):
 * numbers in the arena, the same memory in every thread and process.
 *
 * array: a[i], a[i] = v (1-based), #a, a:add(i, d) -> new value (atomic,
 *   floats too), a:cas(i, expected, new) -> swapped, old, a:fill(v, [i, [j]]),
 *   a:totable([i, [j]]), a:set(tbl, [offset]), a:sum([i, [j]]), a.type,
 *   tostring(a), and a:ptr() when the FFI exists (LuaJIT): a typed C pointer,
 *   0-based, bounds unchecked, valid while the array is referenced.
 * value: v:get(), v:set(x), v:add(d) -> new value, v:cas(e, n), v.type.
 *
 * Dispatch. On its first index (or indexed store) a handle gets a
 * metatable of its own (cb_derive) whose __index is a TABLE: the methods,
 * as closures bound to this handle, and `type`. So `a:add(i, d)` finds its
 * method without a C call (in Lua 5.4 and in LuaJIT) and checks its
 * receiver with one compare against its upvalue. A numeric key misses that
 * table and reaches its metatable's __index, a C closure bound to the
 * handle: a[i] costs an index check and one load -- no allocation, no
 * codec, no lock. The price is about 1 KiB of Lua objects per handle used;
 * a method called with another receiver (`add(b, i, d)`) takes the full
 * check. Values are checked
 * against the type before anything is stored (3.5 into i32, 300 into u8,
 * NaN into an integer type, 2^63 into i64 are errors naming the index and
 * the value); bulk writes check every value first, so a refusal leaves the
 * array as it was. Under LuaJIT numbers are doubles: an i64 read or sum that
 * a double cannot hold exactly is an error, and add refuses such a result
 * before storing it.
 */
#include "cb.h"
#include "../runtime/array.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Numbers are doubles (LuaJIT): an int64 must fit one exactly to be
 * pushed (set when the library opens; the same in every state). */
static _Atomic int doubles = 0;

/* luaL_error with printf's formats (lua_pushfstring has no %lld or %g). */
static int fail(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(lua_State *L, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return luaL_error(L, "%s", msg);
}

/* cb_idxerror with printf's formats: "<fname>: bad argument #n (<msg>)",
 * or "bad self" for a method's self. */
static int argfail(lua_State *L, int idx, const char *fname, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int argfail(lua_State *L, int idx, const char *fname, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return cb_idxerror(L, idx, fname, msg);
}

/* ---- numbers ---- */

static const char *fmtnum(lua_State *L, int idx, char *buf, size_t size) {
    if (lua_type(L, idx) != LUA_TNUMBER) return luaL_typename(L, idx);
    if (cb_isinteger(L, idx))
        snprintf(buf, size, "%lld", (long long)lua_tointeger(L, idx));
    else
        snprintf(buf, size, "%.17g", (double)lua_tonumber(L, idx));
    return buf;
}

static void range_text(enum cc_elem e, char *buf, size_t size) {
    static const long long LO[] = {INT8_MIN, 0, INT16_MIN, 0, INT32_MIN, 0, INT64_MIN};
    static const long long HI[] = {INT8_MAX,  UINT8_MAX,  INT16_MAX, UINT16_MAX,
                                   INT32_MAX, UINT32_MAX, INT64_MAX};
    if (e == CC_F32)
        snprintf(buf, size, "finite values up to 3.4e38, inf, nan");
    else
        snprintf(buf, size, "integers %lld..%lld", LO[e], HI[e]);
}

static int bad_value(lua_State *L, cc_array *a, int idx, int64_t i, const char *fname) {
    char num[64], range[64];
    enum cc_elem e = a->elem;
    if (lua_type(L, idx) != LUA_TNUMBER)
        return fail(L, "%s: bad value at index %lld (number expected, got %s)", fname,
                    (long long)i + 1, cb_typeof(L, idx));
    range_text(e, range, sizeof range);
    return fail(L, "%s: bad value %s at index %lld (%s holds %s)", fname,
                fmtnum(L, idx, num, sizeof num), (long long)i + 1, cc_elem_name(e), range);
}

/* The number at idx as a whole int64, or 0 in *ok. */
static int64_t whole(lua_State *L, int idx, int *ok) {
    /* one conversion call: integers, and floats with an exact integer
     * value (not NaN, not past int64) on both VMs; strings are refused */
    if (lua_type(L, idx) != LUA_TNUMBER) return *ok = 0;
    return (int64_t)cb_tointegerx(L, idx, ok);
}

/* Check the value at idx for element i of a (0-based, for the message). */
static int64_t check_int(lua_State *L, cc_array *a, int idx, int64_t i, const char *fname) {
    int ok = 0;
    int64_t v = whole(L, idx, &ok);
    if (!ok || !cc_elem_fits(a->elem, v)) bad_value(L, a, idx, i, fname);
    return v;
}

static double check_float(lua_State *L, cc_array *a, int idx, int64_t i, const char *fname) {
    if (lua_type(L, idx) != LUA_TNUMBER) bad_value(L, a, idx, i, fname);
    double d = (double)lua_tonumber(L, idx);
    if (!cc_elem_fitsf(a->elem, d)) bad_value(L, a, idx, i, fname);
    return d;
}

static void push_int(lua_State *L, int64_t v, int64_t i, const char *fname) {
    if (doubles && !cc_fits_double(v))
        fail(L, "%s: %lld at index %lld is not exact as a LuaJIT number", fname, (long long)v,
             (long long)i + 1);
    cb_pushinteger(L, v);
}

static void push_elem(lua_State *L, cc_array *a, int64_t i, const char *fname) {
    if (cc_elem_isfloat(a->elem))
        lua_pushnumber(L, (lua_Number)cc_array_getf(a, i));
    else
        push_int(L, cc_array_geti(a, i), i, fname);
}

static void store(lua_State *L, cc_array *a, int64_t i, int idx, const char *fname) {
    if (cc_elem_isfloat(a->elem))
        cc_array_setf(a, i, check_float(L, a, idx, i, fname));
    else
        cc_array_seti(a, i, check_int(L, a, idx, i, fname));
}

/* ---- receivers and indices ---- */

/* The receiver of a method or __newindex: bound closures hold their handle
 * as upvalue 1, so the common case is one compare; anything else (another
 * array, a wrong value) gets the full check, which raises. */
static cc_array *bound_self(lua_State *L, enum cc_type t, const char *fname) {
    /* Two address loads are cheaper than lua_rawequal. Equal addresses are
     * the very handle of upvalue 1 (kept alive by it), even in the
     * C-only case of a light userdata made to point at it; a table upvalue
     * (the type's closures, unbound) gives NULL. */
    cb_handle *h = lua_touserdata(L, 1);
    if (h && h == lua_touserdata(L, lua_upvalueindex(1)) && h->obj) return (cc_array *)h->obj;
    return (cc_array *)cb_check(L, 1, t, fname);
}

static cc_array *self(lua_State *L, const char *fname) {
    return bound_self(L, CC_T_ARRAY, fname);
}

static int64_t bad_index(lua_State *L, cc_array *a, int idx, const char *fname)
    __attribute__((noinline, cold));

/* A 1-based index at idx -> 0-based, or raises naming it and the length. */
static inline int64_t index_arg(lua_State *L, cc_array *a, int idx, const char *fname) {
    int ok = 0;
    int64_t i = whole(L, idx, &ok);
    if (__builtin_expect(ok && i >= 1 && i <= a->n, 1)) return i - 1;
    return bad_index(L, a, idx, fname);
}

static int64_t bad_index(lua_State *L, cc_array *a, int idx, const char *fname) {
    int ok = 0;
    int64_t i = whole(L, idx, &ok);
    if (!ok && lua_type(L, idx) != LUA_TNUMBER)
        return fail(L, "%s: bad index (number expected, got %s)", fname, cb_typeof(L, idx));
    if (!ok || i < 1 || i > a->n) {
        char num[64];
        return fail(L, "%s: index %s out of range (array has %lld items)", fname,
                    fmtnum(L, idx, num, sizeof num), (long long)a->n);
    }
    return i - 1;
}

/* Optional range [i, j] at idx, idx+1 (defaults 1, #a) -> 0-based [lo, hi). */
static void range_args(lua_State *L, cc_array *a, int idx, int64_t *lo, int64_t *hi,
                       const char *fname) {
    int64_t i = 1, j = a->n;
    int ok = 1;
    char num[64];
    if (!lua_isnoneornil(L, idx))
        i = lua_type(L, idx) == LUA_TNUMBER ? whole(L, idx, &ok) : (ok = 0);
    if (!ok || i < 1 || i > a->n + 1)
        argfail(L, idx, fname, "start index 1..%lld expected, got %s", (long long)a->n + 1,
                fmtnum(L, idx, num, sizeof num));
    if (!lua_isnoneornil(L, idx + 1))
        j = lua_type(L, idx + 1) == LUA_TNUMBER ? whole(L, idx + 1, &ok) : (ok = 0);
    if (!ok || j < 0 || j > a->n)
        argfail(L, idx + 1, fname, "end index 0..%lld expected, got %s", (long long)a->n,
                fmtnum(L, idx + 1, num, sizeof num));
    *lo = i - 1;
    *hi = j > i - 1 ? j : i - 1;
}

/* ---- construction ---- */

static enum cc_elem elem_arg(lua_State *L, int idx, const char *fname) {
    if (lua_isnoneornil(L, idx)) return CC_F64;
    if (lua_type(L, idx) != LUA_TSTRING) cb_typeerror(L, idx, fname, "type name string");
    int e = cc_elem_parse(lua_tostring(L, idx));
    if (e < 0)
        argfail(L, idx, fname, "unknown type '%s'; i8 u8 i16 u16 i32 u32 i64 f32 f64",
                lua_tostring(L, idx));
    return (enum cc_elem)e;
}

static cc_array *make(lua_State *L, enum cc_type t, int64_t n, enum cc_elem e, const char *fname) {
    cc_array *a = NULL;
    int r;
    CB_RETRY(L, r, cc_array_new(&a, t, n, e));
    if (r == -E2BIG)
        fail(L,
             "%s: %lld elements of %s is too large (the arena is %d MiB; set "
             "CONCUR_SHM)",
             fname, (long long)n, cc_elem_name(e), (int)(cc_arena_size() >> 20));
    if (r) cb_fail(L, r, fname);
    cb_push(L, (cc_obj *)a);
    cb_pressure(L, sizeof *a + (size_t)n * cc_elem_size(e));
    return a;
}

static int l_array(lua_State *L) {
    int ok = 0;
    int64_t n = lua_type(L, 1) == LUA_TNUMBER ? whole(L, 1, &ok) : 0;
    if (lua_type(L, 1) != LUA_TNUMBER) return cb_typeerror(L, 1, "shared.array", "integer");
    if (!ok || n < 1) {
        char num[64];
        return argfail(L, 1, "shared.array", "size must be an integer >= 1, got %s",
                       fmtnum(L, 1, num, sizeof num));
    }
    enum cc_elem e = elem_arg(L, 2, "shared.array");
    make(L, CC_T_ARRAY, n, e, "shared.array");
    return 1;
}

static int l_value(lua_State *L) {
    int init = 2;
    enum cc_elem e = CC_F64;
    lua_settop(L, 2);
    if (lua_type(L, 1) == LUA_TNUMBER)
        init = 1; /* shared.value(5): an f64 */
    else
        e = elem_arg(L, 1, "shared.value");
    /* check the initial value before allocating: a refusal makes nothing */
    cc_array probe = {.elem = e, .n = 1};
    double f = 0;
    int64_t v = 0;
    int has = !lua_isnoneornil(L, init);
    if (has && cc_elem_isfloat(e))
        f = check_float(L, &probe, init, 0, "shared.value");
    else if (has)
        v = check_int(L, &probe, init, 0, "shared.value");
    cc_array *a = make(L, CC_T_VALUE, 1, e, "shared.value");
    if (cc_elem_isfloat(e))
        cc_array_setf(a, 0, f);
    else
        cc_array_seti(a, 0, v);
    return 1;
}

/* ---- array metamethods ---- */

static void bind(lua_State *L, int ud);

/* __index of the bound methods table (upvalue 1: the handle): a numeric
 * key is an element; an unknown name is nil, as for any method table. */
static int a_elem(lua_State *L) {
    cb_handle *h = lua_touserdata(L, lua_upvalueindex(1));
    int t = lua_type(L, 2);
    if (t == LUA_TNUMBER) {
        if (!h->obj) return fail(L, "array:__index: the array was released");
        cc_array *a = (cc_array *)h->obj;
        push_elem(L, a, index_arg(L, a, 2, "array:__index"), "array:__index");
        return 1;
    }
    if (t != LUA_TSTRING)
        return fail(L, "array:__index: bad index (number expected, got %s)", cb_typeof(L, 2));
    lua_pushnil(L);
    return 1;
}

/* The type's __index: the first look at a handle binds it, then answers
 * through its own metatable. */
static int a_index(lua_State *L) {
    int t = lua_type(L, 2);
    if (t != LUA_TNUMBER && t != LUA_TSTRING)
        return fail(L, "array:__index: bad index (number expected, got %s)", cb_typeof(L, 2));
    cc_array *a = (cc_array *)cb_check(L, 1, CC_T_ARRAY, "array:__index");
    bind(L, 1);
    if (t == LUA_TNUMBER) { /* here, not through a_elem: errors name the caller's line */
        push_elem(L, a, index_arg(L, a, 2, "array:__index"), "array:__index");
        return 1;
    }
    lua_settop(L, 2);
    lua_gettable(L, 1);
    return 1;
}

static int a_newindex(lua_State *L) {
    cc_array *a = bound_self(L, CC_T_ARRAY, "array:__newindex");
    int64_t i = index_arg(L, a, 2, "array:__newindex");
    store(L, a, i, 3, "array:__newindex");
    if (lua_touserdata(L, 1) != lua_touserdata(L, lua_upvalueindex(1)))
        bind(L, 1); /* called as the type's __newindex, or with another array */
    return 0;
}

static int a_len(lua_State *L) {
    cb_pushinteger(L, ((cc_array *)cb_check(L, 1, CC_T_ARRAY, "array:__len"))->n);
    return 1;
}

/* ---- shared by array and value methods ---- */

static int add_failed(lua_State *L, cc_array *a, int64_t i, int didx, int64_t out, int64_t d,
                      const char *fname) __attribute__((noinline, cold));

/* The hot path of a:add and v:add: no buffer on the stack, errors out of
 * line. */
static int do_add(lua_State *L, cc_array *a, int64_t i, int didx, const char *fname) {
    if (cc_elem_isfloat(a->elem)) {
        if (lua_type(L, didx) != LUA_TNUMBER) bad_value(L, a, didx, i, fname);
        double d = (double)lua_tonumber(L, didx), out;
        if (cc_array_addf(a, i, d, &out))
            return fail(L, "%s: %.17g + %.17g at index %lld does not fit %s", fname, out, d,
                        (long long)i + 1, cc_elem_name(a->elem));
        lua_pushnumber(L, (lua_Number)out);
        return 1;
    }
    int ok = 0;
    int64_t d = whole(L, didx, &ok), out;
    if (__builtin_expect(ok, 1) && cc_array_addi(a, i, d, doubles, &out) == 0) {
        cb_pushinteger(L, out);
        return 1;
    }
    return add_failed(L, a, i, didx, ok ? out : 0, d, fname);
}

/* Why an integer add was refused: a bad delta, or a sum that does not fit
 * (out is then the value the element held). */
static int add_failed(lua_State *L, cc_array *a, int64_t i, int didx, int64_t out, int64_t d,
                      const char *fname) {
    int ok = 0;
    whole(L, didx, &ok);
    if (!ok) {
        char num[64];
        return fail(L, "%s: bad delta %s at index %lld (%s holds integers)", fname,
                    fmtnum(L, didx, num, sizeof num), (long long)i + 1, cc_elem_name(a->elem));
    }
    int64_t sum;
    char range[64];
    {
        range_text(a->elem, range, sizeof range);
        if (__builtin_add_overflow(out, d, &sum))
            return fail(L, "%s: %lld + %lld at index %lld overflows %s", fname, (long long)out,
                        (long long)d, (long long)i + 1, cc_elem_name(a->elem));
        if (cc_elem_fits(a->elem, sum))
            return fail(L,
                        "%s: %lld + %lld = %lld at index %lld is not exact as a "
                        "LuaJIT number",
                        fname, (long long)out, (long long)d, (long long)sum, (long long)i + 1);
        return fail(L, "%s: %lld + %lld = %lld at index %lld does not fit %s (%s)", fname,
                    (long long)out, (long long)d, (long long)sum, (long long)i + 1,
                    cc_elem_name(a->elem), range);
    }
}

static int do_cas(lua_State *L, cc_array *a, int64_t i, int eidx, int nidx, const char *fname) {
    int swapped;
    if (cc_elem_isfloat(a->elem)) {
        double desired = check_float(L, a, nidx, i, fname), old;
        if (lua_type(L, eidx) != LUA_TNUMBER) bad_value(L, a, eidx, i, fname);
        swapped = cc_array_casf(a, i, (double)lua_tonumber(L, eidx), desired, &old);
        lua_pushboolean(L, swapped);
        lua_pushnumber(L, (lua_Number)old);
        return 2;
    }
    int64_t desired = check_int(L, a, nidx, i, fname), old;
    if (lua_type(L, eidx) != LUA_TNUMBER) bad_value(L, a, eidx, i, fname);
    int ok = 0;
    int64_t expected = whole(L, eidx, &ok);
    if (ok)
        swapped = cc_array_casi(a, i, expected, desired, &old);
    else
        swapped = 0, old = cc_array_geti(a, i); /* 2.5 is never in an integer array */
    lua_pushboolean(L, swapped);
    push_int(L, old, i, fname);
    return 2;
}

/* ---- array methods ---- */

static int a_add(lua_State *L) {
    cc_array *a = self(L, "array:add");
    return do_add(L, a, index_arg(L, a, 2, "array:add"), 3, "array:add");
}

static int a_cas(lua_State *L) {
    cc_array *a = self(L, "array:cas");
    return do_cas(L, a, index_arg(L, a, 2, "array:cas"), 3, 4, "array:cas");
}

static int a_fill(lua_State *L) {
    cc_array *a = self(L, "array:fill");
    int64_t lo, hi;
    range_args(L, a, 3, &lo, &hi, "array:fill");
    if (cc_elem_isfloat(a->elem)) { /* the value is checked even for an empty range */
        double v = check_float(L, a, 2, lo, "array:fill");
        for (int64_t i = lo; i < hi; i++) cc_array_setf(a, i, v);
    } else {
        int64_t v = check_int(L, a, 2, lo, "array:fill");
        for (int64_t i = lo; i < hi; i++) cc_array_seti(a, i, v);
    }
    return 0;
}

static int a_totable(lua_State *L) {
    cc_array *a = self(L, "array:totable");
    int64_t lo, hi;
    range_args(L, a, 2, &lo, &hi, "array:totable");
    if (hi - lo > INT32_MAX - 1) return fail(L, "array:totable: range too large for a table");
    lua_createtable(L, (int)(hi - lo), 0);
    for (int64_t i = lo; i < hi; i++) {
        push_elem(L, a, i, "array:totable");
        lua_rawseti(L, -2, (int)(i - lo + 1));
    }
    return 1;
}

static int a_set(lua_State *L) {
    cc_array *a = self(L, "array:set");
    cb_checktable(L, 2, 1, "array:set");
    int ok = 1;
    int64_t off = lua_isnoneornil(L, 3)           ? 1
                  : lua_type(L, 3) == LUA_TNUMBER ? whole(L, 3, &ok)
                                                  : (ok = 0);
    int64_t n = (int64_t)cb_rawlen(L, 2);
    if (!ok || off < 1 || off > a->n + 1 || n > a->n - (off - 1)) {
        char num[64];
        return fail(L,
                    "array:set: %lld values from offset %s do not fit (array has "
                    "%lld items)",
                    (long long)n, lua_isnoneornil(L, 3) ? "1" : fmtnum(L, 3, num, sizeof num),
                    (long long)a->n);
    }
    /* check everything first: a refusal leaves the array untouched */
    for (int pass = 0; pass < 2; pass++)
        for (int64_t k = 1; k <= n; k++) {
            lua_rawgeti(L, 2, (int)k);
            int64_t i = off - 1 + k - 1;
            if (pass == 0) {
                if (cc_elem_isfloat(a->elem))
                    check_float(L, a, -1, i, "array:set");
                else
                    check_int(L, a, -1, i, "array:set");
            } else {
                store(L, a, i, lua_gettop(L), "array:set");
            }
            lua_pop(L, 1);
        }
    return 0;
}

static int a_sum(lua_State *L) {
    cc_array *a = self(L, "array:sum");
    int64_t lo, hi;
    range_args(L, a, 2, &lo, &hi, "array:sum");
    if (cc_elem_isfloat(a->elem)) {
        double s = 0;
        for (int64_t i = lo; i < hi; i++) s += cc_array_getf(a, i);
        lua_pushnumber(L, (lua_Number)s);
        return 1;
    }
    int64_t s = 0;
    for (int64_t i = lo; i < hi; i++)
        if (__builtin_add_overflow(s, cc_array_geti(a, i), &s))
            return fail(L, "array:sum: the sum overflows i64");
    if (doubles && !cc_fits_double(s))
        return fail(L, "array:sum: the sum %lld is not exact as a LuaJIT number", (long long)s);
    cb_pushinteger(L, s);
    return 1;
}

static void add_items(lua_State *L, luaL_Buffer *B, cc_array *a, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (i) luaL_addstring(B, ", ");
        char num[64];
        if (cc_elem_isfloat(a->elem))
            snprintf(num, sizeof num, "%.14g", cc_array_getf(a, i));
        else
            snprintf(num, sizeof num, "%lld", (long long)cc_array_geti(a, i));
        luaL_addstring(B, num);
    }
}

static int a_tostring(lua_State *L) {
    cc_array *a = (cc_array *)cb_check(L, 1, CC_T_ARRAY, "array:__tostring");
    luaL_Buffer B;
    luaL_buffinit(L, &B);
    char head[96];
    snprintf(head, sizeof head, "shared.array(%s, %lld): {", cc_elem_name(a->elem),
             (long long)a->n);
    luaL_addstring(&B, head);
    add_items(L, &B, a, a->n > 10 ? 10 : a->n);
    if (a->n > 10) luaL_addstring(&B, ", ...");
    luaL_addchar(&B, '}');
    luaL_pushresult(&B);
    return 1;
}

/* The raw address for the FFI wrapper below. */
static int a_rawptr(lua_State *L) {
    cc_array *a = (cc_array *)cb_check(L, 1, CC_T_ARRAY, "array:ptr");
    lua_pushlightuserdata(L, a->data);
    return 1;
}

static const char PTR_CHUNK[] =
    "local ffi, raw = ...\n"
    "local ct = {i8 = 'int8_t *', u8 = 'uint8_t *', i16 = 'int16_t *', u16 = "
    "'uint16_t *',\n"
    "  i32 = 'int32_t *', u32 = 'uint32_t *', i64 = 'int64_t *', f32 = 'float "
    "*', f64 = 'double *'}\n"
    "for k, v in pairs(ct) do ct[k] = ffi.typeof(v) end\n"
    "return function(a) local p = raw(a) return ffi.cast(ct[a.type], p) end\n";

/* methods.ptr = the wrapper, when this state has an FFI: LuaJIT's is in
 * package.preload, a Lua 5.4 one must be loaded (or preloaded) before
 * concur. No search of package.path: that would cost every thread.new
 * a dozen failed file lookups under Lua 5.4. */
static int ffi_present(lua_State *L) {
    int found = 0;
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "ffi");
        found = !lua_isnil(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (found) return 1;
    lua_getglobal(L, "package");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "preload");
        if (lua_istable(L, -1)) {
            lua_getfield(L, -1, "ffi");
            found = !lua_isnil(L, -1);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return found;
}

static void add_ptr(lua_State *L, int methods) {
    if (!ffi_present(L)) return;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "ffi");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_istable(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    if (luaL_loadbuffer(L, PTR_CHUNK, sizeof PTR_CHUNK - 1, "=concur.array.ptr") != LUA_OK) {
        lua_pop(L, 2);
        return;
    }
    lua_insert(L, -2);
    lua_pushcfunction(L, a_rawptr);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        lua_pop(L, 1);
        return;
    }
    lua_setfield(L, methods, "ptr");
}

/* ---- value methods ---- */

static cc_array *vself(lua_State *L, const char *fname) {
    return bound_self(L, CC_T_VALUE, fname);
}

static int v_get(lua_State *L) {
    push_elem(L, vself(L, "value:get"), 0, "value:get");
    return 1;
}

static int v_set(lua_State *L) {
    store(L, vself(L, "value:set"), 0, 2, "value:set");
    return 0;
}

static int v_add(lua_State *L) { return do_add(L, vself(L, "value:add"), 0, 2, "value:add"); }
static int v_cas(lua_State *L) { return do_cas(L, vself(L, "value:cas"), 0, 2, 3, "value:cas"); }

static int v_index(lua_State *L) {
    cb_check(L, 1, CC_T_VALUE, "value:__index");
    bind(L, 1);
    lua_settop(L, 2);
    lua_gettable(L, 1);
    return 1;
}

static int v_tostring(lua_State *L) {
    cc_array *a = (cc_array *)cb_check(L, 1, CC_T_VALUE, "value:__tostring");
    luaL_Buffer B;
    luaL_buffinit(L, &B);
    char head[64];
    snprintf(head, sizeof head, "shared.value(%s): ", cc_elem_name(a->elem));
    luaL_addstring(&B, head);
    add_items(L, &B, a, 1);
    luaL_pushresult(&B);
    return 1;
}

/* ---- open ---- */

static const luaL_Reg array_methods[] = {
    {"add", a_add}, {"cas", a_cas}, {"fill", a_fill}, {"totable", a_totable},
    {"set", a_set}, {"sum", a_sum}, {NULL, NULL},
};

static const luaL_Reg value_methods[] = {
    {"get", v_get}, {"set", v_set}, {"add", v_add}, {"cas", v_cas}, {NULL, NULL},
};

/* Give the checked handle at ud a metatable of its own: __index is a table
 * of its methods bound to it (plus `type`, and `ptr` from the type's
 * methods), whose own __index gives the elements; __newindex is bound too. */
static void bind(lua_State *L, int ud) {
    ud = cb_absindex(L, ud);
    cc_array *a = (cc_array *)((cb_handle *)lua_touserdata(L, ud))->obj;
    int isarray = a->hdr.type == CC_T_ARRAY;
    const luaL_Reg *m = isarray ? array_methods : value_methods;
    luaL_checkstack(L, 8, NULL);
    cb_derive(L, ud);
    int mt = lua_gettop(L);
    lua_createtable(L, 0, 10);
    int methods = mt + 1;
    for (; m->name; m++) {
        lua_pushvalue(L, ud);
        lua_pushcclosure(L, m->func, 1);
        lua_setfield(L, methods, m->name);
    }
    lua_pushstring(L, cc_elem_name(a->elem));
    lua_setfield(L, methods, "type");
    lua_getfield(L, mt, "__index"); /* the type's __index: upvalue 1 is its methods */
    if (lua_getupvalue(L, -1, 1) && lua_istable(L, -1)) {
        lua_getfield(L, -1, "ptr");
        lua_setfield(L, methods, "ptr");
    }
    lua_settop(L, methods);
    if (isarray) {
        lua_createtable(L, 0, 1);
        lua_pushvalue(L, ud);
        lua_pushcclosure(L, a_elem, 1);
        lua_setfield(L, -2, "__index");
        lua_setmetatable(L, methods);
        lua_pushvalue(L, ud);
        lua_pushcclosure(L, a_newindex, 1);
        lua_setfield(L, mt, "__newindex");
    }
    lua_setfield(L, mt, "__index");
    lua_setmetatable(L, ud);
}

/* metatable.__index = index with the methods table as upvalue 1 (for bind) */
static void set_index(lua_State *L, const char *tname, lua_CFunction index, int with_ptr) {
    luaL_getmetatable(L, tname);
    int mt = lua_gettop(L);
    lua_getfield(L, mt, "__index"); /* the methods table cb_newtype made */
    if (with_ptr) add_ptr(L, mt + 1);
    lua_pushcclosure(L, index, 1);
    lua_setfield(L, mt, "__index");
    lua_pop(L, 1);
}

void cb_open_array(lua_State *L) {
    int lib = lua_gettop(L);
    lua_pushinteger(L, (lua_Integer)(((int64_t)1 << 53) + 1));
    if (!cb_isinteger(L, -1)) doubles = 1;
    lua_pop(L, 1);
    static const luaL_Reg array_meta[] = {
        {"__newindex", a_newindex},
        {"__len", a_len},
        {"__tostring", a_tostring},
        {NULL, NULL},
    };
    static const luaL_Reg value_meta[] = {{"__tostring", v_tostring}, {NULL, NULL}};
    /* made on first use, but for array:ptr under LuaJIT with ffi: that needs
     * require "ffi" now, before any script code could change require */
    if (ffi_present(L)) {
        cb_newtype(L, CC_T_ARRAY, "array", array_methods, array_meta);
        set_index(L, "concur.array", a_index, 1);
    } else {
        cb_lazytype(CC_T_ARRAY, "array", array_methods, array_meta, a_index);
    }
    cb_lazytype(CC_T_VALUE, "value", value_methods, value_meta, v_index);
    lua_pushcfunction(L, l_array);
    lua_setfield(L, lib, "array");
    lua_pushcfunction(L, l_value);
    lua_setfield(L, lib, "value");
}
