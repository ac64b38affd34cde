/*
 * codec_decode.c -- a message -> Lua values (the format is in codec.h), in
 * the manner of Lua's lundump.c: one decoder state on the C stack, every
 * read checked against what is left.
 *
 * The decoder trusts nothing: lengths are checked against the bytes left,
 * nesting is bounded, shared-object pointers must point at live objects in
 * the arena, and bytecode is only handed to lua_load when its checksum
 * matches (corrupt bytecode could otherwise crash the VM). A bad message is
 * an error, never a crash (tests/fuzz_codec.c). Bytes from outside
 * (concur.decode) must also carry this build's format number, and unless
 * trusted they may not hold bytecode or module names.
 */
#include "codec.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct dec {
    lua_State *L;
    const unsigned char *p, *end;
    const char *fname;
    int ids;          /* stack slot of the id -> value table (nil until needed) */
    int handles;      /* stack index of the handles of the header's objects */
    uint32_t nrefs;
    int depth;
    int trust;        /* 0: refuse bytecode and module names (concur.decode) */
} dec;

static int distrust(dec *d, const char *what) {
    return luaL_error(d->L, "%s: the bytes hold %s; pass {trust = true} only for bytes you made "
                            "(loading bytecode from elsewhere can crash the interpreter)",
                      d->fname, what);
}

static int corrupt(dec *d, const char *why) {
    return luaL_error(d->L, "%s: corrupt message (%s)", d->fname, why);
}

static int get_byte(dec *d) {
    if (d->p >= d->end) corrupt(d, "truncated");
    return *d->p++;
}

static uint64_t get_varint(dec *d) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        int c = get_byte(d);
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) return v;
    }
    corrupt(d, "bad varint");
    return 0;
}

static const void *get_bytes(dec *d, size_t n) {
    if ((size_t)(d->end - d->p) < n) corrupt(d, "truncated");
    const void *s = d->p;
    d->p += n;
    return s;
}

static const char *get_str(dec *d, size_t *n) {
    *n = (size_t)get_varint(d);
    return get_bytes(d, *n);
}

static void remember(dec *d, uint64_t id) {
    lua_State *L = d->L;
    if (lua_isnil(L, d->ids)) { /* made on first use, in the slot kept for it */
        lua_newtable(L);
        lua_replace(L, d->ids);
    }
    lua_pushvalue(L, -1);
    lua_rawseti(L, d->ids, (int)id);
}

static void decode_value(dec *d);

static void decode_table(dec *d) {
    lua_State *L = d->L;
    uint64_t id = get_varint(d);
    uint64_t narr = get_varint(d), nhash = get_varint(d);
    size_t left = (size_t)(d->end - d->p);
    if (narr > left || nhash > left / 2) corrupt(d, "table too large");
    lua_createtable(L, (int)narr, (int)nhash);
    remember(d, id);
    int t = lua_gettop(L);
    for (uint64_t i = 1; i <= narr; i++) {
        decode_value(d);
        lua_rawseti(L, t, (int)i);
    }
    for (uint64_t i = 0; i < nhash; i++) {
        decode_value(d);
        if (lua_isnil(L, -1)) corrupt(d, "nil key");
        if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) != lua_tonumber(L, -1))
            corrupt(d, "NaN key");
        decode_value(d);
        lua_rawset(L, t);
    }
    decode_value(d);
    if (lua_istable(L, -1)) lua_setmetatable(L, t);
    else if (lua_isnil(L, -1)) lua_pop(L, 1);
    else corrupt(d, "bad metatable");
}

typedef struct { const char *p; size_t n; } chunk;

static const char *chunk_reader(lua_State *L, void *ud, size_t *size) {
    chunk *c = ud;
    (void)L;
    *size = c->n;
    c->n = 0;
    return *size ? c->p : NULL;
}

static void decode_function(dec *d) {
    lua_State *L = d->L;
    uint64_t id = get_varint(d);
    uint32_t len;
    uint64_t sum;
    memcpy(&len, get_bytes(d, CB_FUNC_LEN_BYTES), CB_FUNC_LEN_BYTES);
    memcpy(&sum, get_bytes(d, CB_CHECKSUM_BYTES), CB_CHECKSUM_BYTES);
    const char *code = get_bytes(d, len);
    if (cb_code_checksum(code, len) != sum) corrupt(d, "bad function checksum");
    chunk c = {code, len};
    if (cb_load(L, chunk_reader, &c, "=(sent function)") != LUA_OK)
        luaL_error(L, "%s: cannot load sent function: %s", d->fname, lua_tostring(L, -1));
    remember(d, id);
    int f = lua_gettop(L);
    uint64_t nups = get_varint(d);
    for (uint64_t i = 1; i <= nups; i++) {
        decode_value(d);
        if (i > CB_MAX_UPVALUES || !lua_setupvalue(L, f, (int)i)) corrupt(d, "bad upvalue count");
    }
}

static void decode_value(dec *d) {
    lua_State *L = d->L;
    if (++d->depth > CB_MAX_DEPTH) corrupt(d, "nested too deeply");
    if (!lua_checkstack(L, 8)) corrupt(d, "nested too deeply");
    int tag = get_byte(d);
    switch (tag) {
    case T_NIL: lua_pushnil(L); break;
    case T_FALSE: lua_pushboolean(L, 0); break;
    case T_TRUE: lua_pushboolean(L, 1); break;
    case T_INT: {
        uint64_t z = get_varint(d);
        int64_t v = (int64_t)(z >> 1) ^ -(int64_t)(z & 1);
        cb_pushinteger(L, v);
        break;
    }
    case T_FLOAT: {
        double v;
        memcpy(&v, get_bytes(d, CB_FLOAT_BYTES), CB_FLOAT_BYTES);
        lua_pushnumber(L, (lua_Number)v);
        break;
    }
    case T_STR: {
        size_t n;
        const char *s = get_str(d, &n);
        lua_pushlstring(L, s, n);
        break;
    }
    case T_TABLE: decode_table(d); break;
    case T_FUNC:
        if (!d->trust) distrust(d, "a Lua function");
        decode_function(d);
        break;
    case T_REF: {
        uint64_t id = get_varint(d);
        if (!lua_istable(L, d->ids) || id > INT32_MAX) corrupt(d, "bad reference");
        lua_rawgeti(L, d->ids, (int)id);
        if (lua_isnil(L, -1)) corrupt(d, "bad reference");
        break;
    }
    case T_CFUNC: {
        if (!d->trust) distrust(d, "a C function");
        size_t mn, fn;
        const char *mod = get_str(d, &mn);
        const char *field = get_str(d, &fn);
        cb_push_module(L, mod, mn, d->fname);
        int module = lua_gettop(L);
        if (!lua_istable(L, module)) corrupt(d, "C function of a module that is not a table");
        lua_pushlstring(L, field, fn);
        lua_gettable(L, module);
        if (!lua_iscfunction(L, -1)) {
            /* the names are not NUL-terminated in the message */
            lua_pushlstring(L, mod, mn);
            lua_pushlstring(L, field, fn);
            luaL_error(L, "%s: no C function '%s.%s' here", d->fname, lua_tostring(L, -2),
                       lua_tostring(L, -1));
        }
        lua_remove(L, module);
        break;
    }
    case T_SHARED: {
        uint64_t i = get_varint(d);
        if (i >= d->nrefs) corrupt(d, "bad shared object index");
        lua_rawgeti(L, d->handles, (int)i + 1);
        break;
    }
    case T_GLOBALS: cb_pushglobaltable(L); break;
    case T_MODULE: {
        if (!d->trust) distrust(d, "a module name");
        size_t n;
        const char *name = get_str(d, &n);
        cb_push_module(L, name, n, d->fname);
        break;
    }
    default: corrupt(d, "unknown tag");
    }
    d->depth--;
}

static int decode(lua_State *L, const void *msg, size_t len, const char *fname, int trust) {
    dec d = {L, msg, (const unsigned char *)msg + len, fname, 0, 0, 0, 0, trust};
    if (len < sizeof(cc_msghdr)) luaL_error(L, "%s: corrupt message (truncated)", fname);
    uint32_t nrefs = cc_msg_nrefs(msg);
    if (nrefs > CB_MAX_REFS || cc_msg_payload_offset(nrefs) > len)
        luaL_error(L, "%s: corrupt message (bad header)", fname);
    int base = lua_gettop(L);
    d.nrefs = nrefs;
    if (d.nrefs) {
        /* First make a handle (its own count) for each object, then drop
         * the message's counts: from here on the handles keep the objects
         * alive, and an error below leaks nothing (the GC frees them). */
        luaL_checkstack(L, 4, NULL);
        lua_createtable(L, (int)d.nrefs, 0);
        d.handles = lua_gettop(L);
        for (uint32_t i = 0; i < d.nrefs; i++) {
            cc_obj *o = cc_msg_ref(msg, i);
            if (!cc_obj_valid(o)) {
                for (uint32_t j = i; j < d.nrefs; j++)
                    if (cc_obj_valid(cc_msg_ref(msg, j))) cc_release(cc_msg_ref(msg, j));
                luaL_error(L, "%s: corrupt message (bad shared object)", fname);
            }
            cb_push(L, o); /* takes over the message's count */
            lua_rawseti(L, d.handles, (int)i + 1);
        }
    }
    d.p = (const unsigned char *)msg + cc_msg_payload_offset(nrefs);
    lua_pushnil(L); /* the slot of the id -> value table */
    d.ids = lua_gettop(L);
    uint64_t n = get_varint(&d);
    if (n > (uint64_t)(d.end - d.p)) corrupt(&d, "too many values");
    luaL_checkstack(L, (int)n + 8, "too many values");
    int first = lua_gettop(L) + 1;
    for (uint64_t i = 0; i < n; i++) decode_value(&d);
    if (d.p != d.end) corrupt(&d, "trailing bytes");
    /* drop the helper tables under the values */
    int nvals = lua_gettop(L) - first + 1;
    for (int i = 0; i < nvals; i++) {
        lua_pushvalue(L, first + i);
        lua_replace(L, base + 1 + i);
    }
    lua_settop(L, base + nvals);
    return nvals;
}

int cb_decode(lua_State *L, const void *msg, size_t len, const char *fname) {
    return decode(L, msg, len, fname, 1);
}

int cb_decode_string(lua_State *L, const void *msg, size_t len, const char *fname, int trust) {
    if (len >= sizeof(cc_msghdr)) {
        cc_msghdr h;
        memcpy(&h, msg, sizeof h);
        if (h.format != CB_FORMAT) {
            char got[16];
            snprintf(got, sizeof got, "%u", (unsigned)h.format);
            luaL_error(L, "%s: message format %s, this build reads %d", fname, got, CB_FORMAT);
        }
    }
    return decode(L, msg, len, fname, trust);
}

typedef struct { const void *msg; size_t len; int n; } pdecode;

static int decode_thunk(lua_State *L) {
    pdecode *p = lua_touserdata(L, 1);
    lua_pop(L, 1);
    p->n = cb_decode(L, p->msg, p->len, "decode");
    return p->n;
}

int cb_decode_protected(lua_State *L, const void *msg, size_t len) {
    pdecode p = {msg, len, 0};
    int base = lua_gettop(L);
    lua_pushcfunction(L, decode_thunk);
    lua_pushlightuserdata(L, &p);
    if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) return -1;
    return lua_gettop(L) - base;
}
