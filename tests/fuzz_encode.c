/*
 * fuzz_encode.c -- libFuzzer harness for the codec's encoder (make fuzz).
 *
 * The fuzzer's bytes are a recipe for Lua values: nested tables with cycles
 * and shared subtables, tables as keys, metatables, strings of any bytes,
 * integers (mininteger, maxinteger, ...), floats (NaN, inf, -0.0, raw bit
 * patterns), booleans, Lua closures whose upvalues hold any of these
 * (themselves included), C functions and tables of loaded modules, _G. The
 * harness encodes them with cb_encode, decodes with cb_decode_protected and
 * checks:
 *
 *   - the round trip: the decoded values equal the originals, deeply, with
 *     the same identity structure (two references to one table arrive as
 *     two references to one table; two tables never arrive as one); floats
 *     bit for bit, except that any NaN equals any NaN; integers stay
 *     integers;
 *   - encoding one value twice gives the same bytes;
 *   - re-encoding the decoded values gives a message that decodes to the
 *     originals again. The same bytes only with FUZZ_STRICT_BYTES=1: the
 *     encoder writes a table's hash part in lua_next order, and that order
 *     depends on the order the keys went in (colliding keys take the free
 *     slots in turn), so a decoded table, filled in message order, can list
 *     two colliding keys the other way round. The first fuzz run found
 *     this; it is a property of the format (not canonical), not a crash.
 *
 * A failed check abort()s with a description, so libFuzzer keeps the input.
 *
 * Matching keys that are tables or functions needs to know which decoded
 * key is which original: every generated table carries its serial number
 * under the key "\0id", every generated closure holds its serial number in
 * its first upvalue. The garbage collector is stopped while one input is
 * checked (a metatable the fuzzer made could say __mode or __gc) and run
 * at the end.
 *
 * Seed inputs: tests/make_encode_corpus.lua writes them (make fuzz).
 */
#include "../bindings/cb.h"
#include "../include/concur.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 8    /* of the recipe; the codec's own limit is 200 */
#define MAX_NODES 256  /* values made from one input */
#define ID_KEY "\0id"  /* with its NUL: sizeof ID_KEY - 1 = 3 bytes */

static lua_State *L;
static int cfuncs_ref, modules_ref, templates_ref;
static int ncfuncs, nmodules, ntemplates;

typedef struct recipe {
    const uint8_t *p, *end;
    int nodes;
    int serial;
    int pool; /* stack index of the array of every table/closure made so far */
    int npool;
} recipe;

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_encode: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    abort();
}

static void hexdump(const char *what, const cc_buf *b) {
    fprintf(stderr, "%s (%zu bytes):", what, b->len);
    for (size_t i = 0; i < b->len; i++) fprintf(stderr, " %02x", (unsigned char)b->data[i]);
    fprintf(stderr, "\n");
}

/* ---------------------------------------------------------------- setup */

/* closures with 1-3 upvalues; upvalues are numbered in the order the body
 * first names them, so each body names the serial number first. One uses a
 * global (an _ENV upvalue), one calls itself (its own upvalue). */
static const char *const TEMPLATES[] = {
    "return function(id) return function() return id end end",
    "return function(id, a) return function(x) return id, x and a end end",
    "return function(id, a, b) return function(x) return id, a, b, x end end",
    "return function(id, a) return function() return id, type(a) end end",
    ("return function(id) local function f(n) if n <= 0 then return id end return f(n - 1) end "
     "return f end"),
};

/* C functions and module tables of loaded modules, by path */
static const char *const CFUNCS[][2] = {
    {"string", "format"}, {"string", "rep"}, {"math", "floor"}, {"table", "concat"},
    {"io", "write"}, {"os", "time"}, {"concur", "encode"}, {"coroutine", "wrap"},
};
static const char *const MODULES[] = {"string", "math", "table", "io", "os", "utf8"};

static int ref_array(void) {
    lua_newtable(L);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

static void setup(void) {
    L = luaL_newstate();
    luaL_openlibs(L);
    concur_openlibs(L);
    templates_ref = ref_array();
    lua_rawgeti(L, LUA_REGISTRYINDEX, templates_ref);
    for (size_t i = 0; i < sizeof TEMPLATES / sizeof TEMPLATES[0]; i++) {
        if (luaL_loadstring(L, TEMPLATES[i]) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK)
            fail("template", lua_tostring(L, -1));
        lua_rawseti(L, -2, ++ntemplates);
    }
    lua_pop(L, 1);
    cfuncs_ref = ref_array();
    lua_rawgeti(L, LUA_REGISTRYINDEX, cfuncs_ref);
    for (size_t i = 0; i < sizeof CFUNCS / sizeof CFUNCS[0]; i++) {
        lua_getglobal(L, CFUNCS[i][0]);
        lua_getfield(L, -1, CFUNCS[i][1]);
        if (!lua_iscfunction(L, -1)) fail("setup: not a C function", CFUNCS[i][1]);
        lua_rawseti(L, -3, ++ncfuncs);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    modules_ref = ref_array();
    lua_rawgeti(L, LUA_REGISTRYINDEX, modules_ref);
    for (size_t i = 0; i < sizeof MODULES / sizeof MODULES[0]; i++) {
        lua_getglobal(L, MODULES[i]);
        lua_rawseti(L, -2, ++nmodules);
    }
    lua_pushglobaltable(L);
    lua_rawseti(L, -2, ++nmodules);
    lua_pop(L, 1);
}

/* ---------------------------------------------------------------- making values */

static unsigned byte(recipe *r) { return r->p < r->end ? *r->p++ : 0; }

static uint64_t bytes8(recipe *r) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | byte(r);
    return v;
}

static void make_value(recipe *r, int depth);

static void remember(recipe *r) {
    lua_pushvalue(L, -1);
    lua_rawseti(L, r->pool, ++r->npool);
}

static void make_int(recipe *r) {
    static const lua_Integer special[] = {0, 1, -1, LUA_MININTEGER, LUA_MAXINTEGER, 127, 128,
                                          -64, -65, (lua_Integer)1 << 53, 255, 256};
    unsigned c = byte(r);
    if (c < 128) lua_pushinteger(L, special[c % (sizeof special / sizeof special[0])]);
    else lua_pushinteger(L, (lua_Integer)bytes8(r));
}

static void make_float(recipe *r) {
    static const double special[] = {0.0, -0.0, 1.0 / 0.0, -1.0 / 0.0, 0.5, -1e308,
                                     4.9e-324, 9007199254740993.0, 9223372036854775808.0, 1.0};
    unsigned c = byte(r);
    if (c < 64) {
        lua_pushnumber(L, special[c % (sizeof special / sizeof special[0])]);
    } else if (c < 96) {
        lua_pushnumber(L, c & 1 ? -NAN : NAN);
    } else { /* any bit pattern, NaNs with payloads included */
        uint64_t bits = bytes8(r);
        double d;
        memcpy(&d, &bits, 8);
        lua_pushnumber(L, d);
    }
}

static void make_string(recipe *r) {
    size_t n = byte(r);
    if (n == 255) n = 255 + byte(r) * 16; /* now and then a longer one */
    size_t left = (size_t)(r->end - r->p);
    if (n <= left) {
        lua_pushlstring(L, (const char *)r->p, n);
        r->p += n;
    } else { /* past the input: a string of a repeated byte */
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (size_t i = 0; i < n; i++) luaL_addchar(&b, (char)(i * 31));
        luaL_pushresult(&b);
    }
}

/* a key: any value but nil and NaN */
static void make_key(recipe *r, int depth) {
    make_value(r, depth);
    if (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) != lua_tonumber(L, -1))) {
        lua_pop(L, 1);
        lua_pushinteger(L, r->nodes);
    }
}

static void make_table(recipe *r, int depth) {
    unsigned narr = byte(r) % 8, nhash = byte(r) % 8;
    lua_createtable(L, (int)narr, (int)nhash + 1);
    int t = lua_gettop(L);
    lua_pushlstring(L, ID_KEY, sizeof ID_KEY - 1);
    lua_pushinteger(L, ++r->serial);
    lua_rawset(L, t);
    remember(r); /* before the contents: they may refer back to it */
    for (unsigned i = 1; i <= narr; i++) {
        make_value(r, depth + 1);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushboolean(L, 1);
        }
        lua_rawseti(L, t, (lua_Integer)i);
    }
    for (unsigned i = 0; i < nhash; i++) {
        make_key(r, depth + 1);
        make_value(r, depth + 1);
        lua_rawset(L, t); /* nil value: no entry */
    }
    if (byte(r) % 4 == 0) {
        make_value(r, depth + 1);
        if (lua_istable(L, -1)) lua_setmetatable(L, t);
        else lua_pop(L, 1);
    }
}

static void make_closure(recipe *r, int depth) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, templates_ref);
    lua_rawgeti(L, -1, (lua_Integer)(byte(r) % (unsigned)ntemplates) + 1);
    lua_remove(L, -2);
    lua_pushinteger(L, ++r->serial);
    lua_call(L, 1, 1);
    int f = lua_gettop(L);
    remember(r);
    for (int i = 2;; i++) { /* upvalue 1 is the serial; _ENV stays _G */
        const char *name = lua_getupvalue(L, f, i);
        if (!name) break;
        lua_pop(L, 1);
        if (strcmp(name, "_ENV") == 0) continue;
        make_value(r, depth + 1);
        lua_setupvalue(L, f, i);
    }
}

static void make_value(recipe *r, int depth) {
    luaL_checkstack(L, 16, "fuzz_encode");
    unsigned c = byte(r);
    if (++r->nodes > MAX_NODES || depth >= MAX_DEPTH) c %= 7; /* leaves only */
    switch (c % 14) {
    case 0: lua_pushnil(L); break;
    case 1: lua_pushboolean(L, c & 16); break;
    case 2: make_int(r); break;
    case 3: make_float(r); break;
    case 4:
    case 5: make_string(r); break;
    case 6: /* a table or closure made before: shared, or a cycle */
        if (r->npool) lua_rawgeti(L, r->pool, (lua_Integer)(byte(r) % (unsigned)r->npool) + 1);
        else lua_pushinteger(L, 0);
        break;
    case 7:
    case 8:
    case 9: make_table(r, depth); break;
    case 10:
    case 11: make_closure(r, depth); break;
    case 12:
        lua_rawgeti(L, LUA_REGISTRYINDEX, cfuncs_ref);
        lua_rawgeti(L, -1, (lua_Integer)(byte(r) % (unsigned)ncfuncs) + 1);
        lua_remove(L, -2);
        break;
    default:
        lua_rawgeti(L, LUA_REGISTRYINDEX, modules_ref);
        lua_rawgeti(L, -1, (lua_Integer)(byte(r) % (unsigned)nmodules) + 1);
        lua_remove(L, -2);
    }
}

/* ---------------------------------------------------------------- comparing */

typedef struct cmp {
    int map;  /* original -> decoded */
    int back; /* decoded -> original */
} cmp;

static int equal(cmp *c, int a, int b);

/* The serial number of a generated table or closure, or 0 */
static lua_Integer serial(int idx) {
    lua_Integer id = 0;
    if (lua_type(L, idx) == LUA_TTABLE) {
        lua_pushlstring(L, ID_KEY, sizeof ID_KEY - 1);
        lua_rawget(L, idx);
        id = lua_tointeger(L, -1);
        lua_pop(L, 1);
    } else if (lua_type(L, idx) == LUA_TFUNCTION && !lua_iscfunction(L, idx)) {
        if (lua_getupvalue(L, idx, 1)) {
            id = lua_tointeger(L, -1);
            lua_pop(L, 1);
        }
    }
    return id;
}

/* Push the key of decoded table b that corresponds to the original key at
 * index k: the same value for strings, numbers, booleans and what is shared
 * by the state (C functions, modules, _G); the one with the same serial
 * number for generated tables and closures. Pushes nil when there is none. */
static void counterpart(int b, int k) {
    lua_Integer id = serial(k);
    if (!id) {
        lua_pushvalue(L, k);
        return;
    }
    lua_pushnil(L);
    while (lua_next(L, b)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == lua_type(L, k) && serial(lua_gettop(L)) == id) return;
    }
    lua_pushnil(L);
}

static int same_number(int a, int b) {
    if (lua_isinteger(L, a) != lua_isinteger(L, b)) return 0;
    if (lua_isinteger(L, a)) return lua_tointeger(L, a) == lua_tointeger(L, b);
    double x = lua_tonumber(L, a), y = lua_tonumber(L, b);
    if (isnan(x) || isnan(y)) return isnan(x) && isnan(y);
    return memcmp(&x, &y, sizeof x) == 0; /* -0.0 is not 0.0 */
}

static size_t count_entries(int t) {
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        n++;
    }
    return n;
}

/* a pair seen before must pair the same way; a new pair is recorded */
static int pair(cmp *c, int a, int b, int *fresh) {
    lua_pushvalue(L, a);
    lua_rawget(L, c->map);
    int known = !lua_isnil(L, -1), ok = !known || lua_rawequal(L, -1, b);
    lua_pop(L, 1);
    lua_pushvalue(L, b);
    lua_rawget(L, c->back);
    int known_b = !lua_isnil(L, -1);
    if (known_b) ok = ok && lua_rawequal(L, -1, a);
    lua_pop(L, 1);
    if (known != known_b) ok = 0;
    *fresh = !known && !known_b;
    if (*fresh) {
        lua_pushvalue(L, a);
        lua_pushvalue(L, b);
        lua_rawset(L, c->map);
        lua_pushvalue(L, b);
        lua_pushvalue(L, a);
        lua_rawset(L, c->back);
    }
    return ok;
}

static int equal_tables(cmp *c, int a, int b) {
    if (count_entries(a) != count_entries(b)) return 0;
    lua_pushnil(L);
    while (lua_next(L, a)) {
        int k = lua_gettop(L) - 1, v = lua_gettop(L);
        counterpart(b, k);
        int kb = lua_gettop(L);
        if (lua_isnil(L, kb) || !equal(c, k, kb)) return 0;
        lua_pushvalue(L, kb);
        lua_rawget(L, b);
        if (!equal(c, v, lua_gettop(L))) return 0;
        lua_pop(L, 3); /* b's value, b's key, a's value */
    }
    int ma = lua_getmetatable(L, a), mb = lua_getmetatable(L, b);
    if (ma != mb) return 0;
    if (ma) {
        int ok = equal(c, lua_gettop(L) - 1, lua_gettop(L));
        lua_pop(L, 2);
        return ok;
    }
    return 1;
}

static int equal_closures(cmp *c, int a, int b) {
    for (int i = 1;; i++) {
        const char *na = lua_getupvalue(L, a, i);
        const char *nb = lua_getupvalue(L, b, i);
        if (!na || !nb) {
            lua_pop(L, (na != NULL) + (nb != NULL));
            return !na && !nb;
        }
        int ok = equal(c, lua_gettop(L) - 1, lua_gettop(L));
        lua_pop(L, 2);
        if (!ok) return 0;
    }
}

static int equal(cmp *c, int a, int b) {
    luaL_checkstack(L, 16, "fuzz_encode");
    a = lua_absindex(L, a);
    b = lua_absindex(L, b);
    int t = lua_type(L, a);
    if (t != lua_type(L, b)) return 0;
    switch (t) {
    case LUA_TNUMBER: return same_number(a, b);
    case LUA_TTABLE:
    case LUA_TFUNCTION: {
        if (!serial(a)) return lua_rawequal(L, a, b); /* a module, _G, a C function */
        int fresh;
        if (!pair(c, a, b, &fresh)) return 0;
        if (!fresh) return 1;
        return t == LUA_TTABLE ? equal_tables(c, a, b) : equal_closures(c, a, b);
    }
    default: return lua_rawequal(L, a, b);
    }
}

/* ---------------------------------------------------------------- the check */

static int encode_thunk(lua_State *Ls) {
    cc_buf *out = lua_touserdata(Ls, 1);
    lua_remove(Ls, 1);
    cb_encode(Ls, 1, lua_gettop(Ls), out, "fuzz_encode", 1);
    return 0;
}

/* encode the n values on top of the stack (left in place) into out */
static void encode_top(int n, cc_buf *out, const char *which) {
    int top = lua_gettop(L);
    lua_pushcfunction(L, encode_thunk);
    lua_pushlightuserdata(L, out);
    for (int i = top - n + 1; i <= top; i++) lua_pushvalue(L, i);
    if (lua_pcall(L, n + 1, 0, 0) != LUA_OK) fail(which, lua_tostring(L, -1));
    if (cc_msg_nrefs(out->data)) fail(which, "a message with shared objects");
}

static int same_bytes(const cc_buf *a, const cc_buf *b) {
    return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

/* push the n values of message m */
static void decode_into(const cc_buf *m, int n, const char *which) {
    int got = cb_decode_protected(L, m->data, m->len);
    if (got < 0) fail(which, lua_tostring(L, -1));
    if (got != n) fail(which, "a different number of values");
}

static void check_round_trip(int orig, int copy, int n, const char *which) {
    cmp c;
    lua_newtable(L);
    c.map = lua_gettop(L);
    lua_newtable(L);
    c.back = lua_gettop(L);
    for (int i = 0; i < n; i++) {
        if (!equal(&c, orig + i, copy + i)) {
            char what[48];
            snprintf(what, sizeof what, "value %d differs", i + 1);
            fail(which, what);
        }
    }
    lua_pop(L, 2);
}

static int strict_bytes;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!L) {
        setup();
        const char *s = getenv("FUZZ_STRICT_BYTES");
        strict_bytes = s && *s == '1';
    }
    lua_gc(L, LUA_GCSTOP, 0);
    recipe r = {data, data + size, 0, 0, 0, 0};
    lua_newtable(L);
    r.pool = lua_gettop(L);
    int n = (int)(byte(&r) % 6);
    int first = lua_gettop(L) + 1;
    for (int i = 0; i < n; i++) make_value(&r, 0);

    cc_buf m1 = {0}, m2 = {0};
    encode_top(n, &m1, "encode");
    encode_top(n, &m2, "encode again");
    if (!same_bytes(&m1, &m2)) fail("encode", "two encodings of one value differ");
    int decoded = lua_gettop(L) + 1;
    decode_into(&m1, n, "decode");
    check_round_trip(first, decoded, n, "round trip");

    /* The decoded values again: the same bytes when the tables' hash parts
     * come back in the same lua_next order. They need not (see the file
     * comment), so by default the second encoding must only decode to the
     * originals again; FUZZ_STRICT_BYTES=1 asks for the same bytes. */
    encode_top(n, &m2, "re-encode");
    if (strict_bytes && !same_bytes(&m1, &m2)) {
        hexdump("first encoding", &m1);
        hexdump("re-encoding   ", &m2);
        fail("re-encode", "different bytes");
    }
    int redecoded = lua_gettop(L) + 1;
    decode_into(&m2, n, "decode of the re-encoding");
    check_round_trip(first, redecoded, n, "round trip of the re-encoding");
    cc_buf_free(&m1);
    cc_buf_free(&m2);
    lua_settop(L, 0);
    lua_gc(L, LUA_GCRESTART, 0);
    lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}
