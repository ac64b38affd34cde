/*
 * codec.c -- Lua values <-> bytes, for every crossing (thread arguments and
 * results, queue and pipe messages, list and dict items).
 *
 * A message is the cc.h header (the table of shared objects it refers to,
 * each holding one count) then the payload:
 *
 *     payload := varint count, value*
 *     value   := NIL | FALSE | TRUE | INT zigzag-varint | FLOAT 8 bytes
 *              | STR varint len, bytes
 *              | TABLE varint id, varint narr, varint nhash, narr values,
 *                nhash (key value) pairs, value metatable-or-NIL
 *              | REF varint id                 (a table or function seen before)
 *              | FUNC varint id, u32 len, u64 checksum, bytecode, varint nups, values
 *              | CFUNC str module, str field   (a C function of a loaded module)
 *              | SHARED varint index           (into the header's object table)
 *              | GLOBALS                       (the receiving state's _G)
 *              | MODULE str name               (package.loaded[name] on arrival)
 *
 * Tables and functions get ids in the order met, so cycles, shared subtables
 * and self-recursive local functions survive. _G and loaded modules travel by
 * name: a function's _ENV upvalue always becomes the receiver's globals, and
 * `local primes = require "concur".primes` arrives as the receiver's module.
 *
 * The decoder trusts nothing: every length is checked against what is left,
 * nesting is bounded, shared-object pointers must point at live objects in
 * the arena, and bytecode is only handed to lua_load when its checksum
 * matches (corrupt bytecode could otherwise crash the VM). A bad message is
 * an error, never a crash (tests/fuzz_codec.c).
 *
 * Refusals name where the bad value was: "queue:put: cannot send a
 * coroutine (argument 1, field "job.co")".
 */
#include "cb.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
    T_NIL, T_FALSE, T_TRUE, T_INT, T_FLOAT, T_STR, T_TABLE, T_REF, T_FUNC,
    T_CFUNC, T_SHARED, T_GLOBALS, T_MODULE
};

#define MAX_DEPTH 200
#define MAX_REFS 4096

/* registry keys */
static const char MODCACHE_KEY = 'm';

/* ---------------------------------------------------------------- encode */

typedef struct seg {
    int kind;          /* 'f' field (key at stack index), 'u' upvalue name, 'm' metatable */
    int idx;
    const char *name;
} seg;

typedef struct enc {
    lua_State *L;
    cc_buf *b;
    const char *fname;
    int arg;           /* current argument number, for messages */
    int seen;          /* stack slot of the table -> id map (nil until needed) */
    int modcache;      /* stack slot of the module cache (nil until needed) */
    int refslot;       /* stack slot of the grown shared-object table (nil until needed) */
    int nextid;
    cc_obj **refs;     /* refs_inline, or the userdata in refslot once it outgrew it */
    uint32_t nrefs, refcap;
    cc_obj *refs_inline[16];
    int depth;
    seg path[MAX_DEPTH + 1];
} enc;

static void put(enc *e, const void *p, size_t n) {
    if (cc_buf_reserve(e->b, e->b->len + n) != 0) luaL_error(e->L, "%s: out of memory", e->fname);
    memcpy(e->b->data + e->b->len, p, n);
    e->b->len += n;
}

static void put_byte(enc *e, int c) {
    if (e->b->len < e->b->cap) e->b->data[e->b->len++] = (char)c;
    else {
        unsigned char ch = (unsigned char)c;
        put(e, &ch, 1);
    }
}

static void put_varint(enc *e, uint64_t v) {
    unsigned char tmp[10];
    size_t n = 0;
    do {
        unsigned char c = v & 0x7f;
        v >>= 7;
        tmp[n++] = c | (v ? 0x80 : 0);
    } while (v);
    put(e, tmp, n);
}

static void put_str(enc *e, const char *s, size_t n) {
    put_varint(e, n);
    put(e, s, n);
}

/* Build "(argument 2, field "a.b")" from the path, push it. */
static void push_where(enc *e) {
    lua_State *L = e->L;
    luaL_Buffer B;
    luaL_buffinit(L, &B);
    lua_pushfstring(L, "argument %d", e->arg);
    luaL_addvalue(&B);
    int infield = 0;
    for (int i = 0; i < e->depth; i++) {
        seg *s = &e->path[i];
        if (s->kind == 'f') {
            int t = lua_type(L, s->idx);
            if (!infield) luaL_addstring(&B, ", field \"");
            else luaL_addchar(&B, '.');
            infield = 1;
            if (t == LUA_TSTRING) luaL_addstring(&B, lua_tostring(L, s->idx));
            else if (t == LUA_TNUMBER) {
                lua_pushfstring(L, "[%s]", lua_tostring(L, s->idx) ? lua_tostring(L, s->idx) : "?");
                luaL_addvalue(&B);
            } else {
                lua_pushfstring(L, "[%s]", luaL_typename(L, s->idx));
                luaL_addvalue(&B);
            }
        } else {
            if (infield) luaL_addchar(&B, '"');
            infield = 0;
            lua_pushfstring(L, s->kind == 'u' ? ", upvalue \"%s\"" : ", %s", s->name);
            luaL_addvalue(&B);
        }
    }
    if (infield) luaL_addchar(&B, '"');
    luaL_pushresult(&B);
}

static int refuse(enc *e, const char *what) {
    push_where(e);
    return luaL_error(e->L, "%s: cannot send %s (%s)", e->fname, what, lua_tostring(e->L, -1));
}

/* Module cache: table -> module name, C function -> {module, field}.
 * Built once per state, rebuilt when a C function is not found (a module
 * loaded since). */
static void build_modcache(lua_State *L) {
    lua_newtable(L);
    int cache = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1)) {
                const char *mod = lua_tostring(L, -2);
                /* the table itself (shortest name wins for aliases) */
                lua_pushvalue(L, -1);
                lua_rawget(L, cache);
                int have = lua_isstring(L, -1) && strlen(lua_tostring(L, -1)) <= strlen(mod);
                lua_pop(L, 1);
                if (!have) {
                    lua_pushvalue(L, -1);
                    lua_pushvalue(L, -3);
                    lua_rawset(L, cache);
                }
                /* its C functions */
                lua_pushnil(L);
                while (lua_next(L, -2)) {
                    if (lua_type(L, -2) == LUA_TSTRING && lua_iscfunction(L, -1)) {
                        lua_pushvalue(L, -1);
                        lua_rawget(L, cache);
                        int known = !lua_isnil(L, -1);
                        lua_pop(L, 1);
                        if (!known || strcmp(mod, "_G") == 0) {
                            lua_pushvalue(L, -1);          /* fn */
                            lua_createtable(L, 2, 0);
                            lua_pushvalue(L, -6);          /* module name */
                            lua_rawseti(L, -2, 1);
                            lua_pushvalue(L, -4);          /* field */
                            lua_rawseti(L, -2, 2);
                            lua_rawset(L, cache);
                        }
                    }
                    lua_pop(L, 1);
                }
            }
            lua_pop(L, 1);
        }
    }
    lua_getfield(L, -1, "concur");
    lua_setfield(L, cache, "concur"); /* for modcache_fresh */
    lua_pop(L, 1);
    lua_pushvalue(L, cache);
    cb_rawsetp(L, LUA_REGISTRYINDEX, &MODCACHE_KEY);
}

/* The cache is stale when package.loaded.concur is not the table it was
 * built with (busted, for one, unloads and re-requires modules per file). */
static int modcache_fresh(lua_State *L) {
    lua_getfield(L, -1, "concur");
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_getfield(L, -1, "concur");
    int fresh = lua_rawequal(L, -1, -3);
    lua_pop(L, 3);
    return fresh;
}

/* The module cache sits in a stack slot reserved by cb_encode (nil until
 * first needed): pushing it on top mid-encode would shift the indices the
 * enclosing frames hold. */
static int modcache(enc *e) {
    lua_State *L = e->L;
    if (lua_isnil(L, e->modcache)) {
        cb_rawgetp(L, LUA_REGISTRYINDEX, &MODCACHE_KEY);
        if (lua_isnil(L, -1) || !modcache_fresh(L)) {
            lua_pop(L, 1);
            build_modcache(L);
        }
        lua_replace(L, e->modcache);
    }
    return e->modcache;
}

/* If the value at idx was met before, write REF id and return 1; else write
 * tag and a new id and return 0. */
static int seen_before(enc *e, int idx, int tag) {
    lua_State *L = e->L;
    if (lua_isnil(L, e->seen)) { /* in its reserved slot, made on first use */
        lua_newtable(L);
        lua_replace(L, e->seen);
    }
    lua_pushvalue(L, idx);
    lua_rawget(L, e->seen);
    if (!lua_isnil(L, -1)) {
        int id = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
        put_byte(e, T_REF);
        put_varint(e, (uint64_t)id);
        return 1;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    cb_pushinteger(L, e->nextid);
    lua_rawset(L, e->seen);
    put_byte(e, tag);
    put_varint(e, (uint64_t)e->nextid++);
    return 0;
}

static void encode_value(enc *e, int idx);

static void enter(enc *e, int kind, int idx, const char *name) {
    if (e->depth >= MAX_DEPTH) refuse(e, "a value nested too deeply");
    e->path[e->depth].kind = kind;
    e->path[e->depth].idx = idx;
    e->path[e->depth].name = name;
    e->depth++;
    luaL_checkstack(e->L, 8, "value nested too deeply");
}

static int is_globals(lua_State *L, int idx) {
    cb_pushglobaltable(L);
    int r = lua_rawequal(L, idx, -1);
    lua_pop(L, 1);
    return r;
}

static void encode_table(enc *e, int idx) {
    lua_State *L = e->L;
    if (is_globals(L, idx)) {
        put_byte(e, T_GLOBALS);
        return;
    }
    int mc = modcache(e);
    lua_pushvalue(L, idx);
    lua_rawget(L, mc);
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        put_byte(e, T_MODULE);
        put_str(e, s, n);
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    if (seen_before(e, idx, T_TABLE)) return;
    size_t narr = cb_rawlen(L, idx), nhash = 0;
    /* the array part must be a proper sequence 1..narr with no nils */
    for (size_t i = 1; i <= narr; i++) {
        lua_rawgeti(L, idx, (int)i);
        int isnil = lua_isnil(L, -1);
        lua_pop(L, 1);
        if (isnil) {
            narr = i - 1;
            break;
        }
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        int ok = 0;
        lua_Integer k = cb_tointegerx(L, -1, &ok);
        if (!(lua_type(L, -1) == LUA_TNUMBER && ok && k >= 1 && (size_t)k <= narr)) nhash++;
    }
    put_varint(e, narr);
    put_varint(e, nhash);
    for (size_t i = 1; i <= narr; i++) {
        lua_rawgeti(L, idx, (int)i);
        cb_pushinteger(L, i);
        enter(e, 'f', lua_gettop(L), NULL);
        encode_value(e, lua_gettop(L) - 1);
        e->depth--;
        lua_pop(L, 2);
    }
    size_t nput = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int kidx = lua_gettop(L) - 1, ok = 0;
        lua_Integer k = cb_tointegerx(L, kidx, &ok);
        if (!(lua_type(L, kidx) == LUA_TNUMBER && ok && k >= 1 && (size_t)k <= narr)) {
            if (++nput > nhash) break;
            enter(e, 'f', kidx, NULL);
            encode_value(e, kidx);
            encode_value(e, kidx + 1);
            e->depth--;
        }
        lua_pop(L, 1);
    }
    /* a finalizer run by an allocation above could have changed the table:
     * the counts written before its items must still hold */
    if (nput != nhash || cb_rawlen(L, idx) < narr) refuse(e, "a table that changed while it was being sent");
    if (lua_getmetatable(L, idx)) {
        enter(e, 'm', 0, "metatable");
        encode_value(e, lua_gettop(L));
        e->depth--;
        lua_pop(L, 1);
    } else {
        put_byte(e, T_NIL);
    }
}

static int dump_writer(lua_State *L, const void *p, size_t n, void *ud) {
    cc_buf *b = ud;
    (void)L;
    if (cc_buf_reserve(b, b->len + n) != 0) return 1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static uint64_t checksum(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
    return h;
}

static void encode_cfunction(enc *e, int idx) {
    lua_State *L = e->L;
    for (int pass = 0; pass < 2; pass++) {
        int mc = modcache(e);
        lua_pushvalue(L, idx);
        lua_rawget(L, mc);
        if (lua_istable(L, -1)) {
            size_t n;
            put_byte(e, T_CFUNC);
            lua_rawgeti(L, -1, 1);
            const char *s = lua_tolstring(L, -1, &n);
            put_str(e, s, n);
            lua_rawgeti(L, -2, 2);
            s = lua_tolstring(L, -1, &n);
            put_str(e, s, n);
            lua_pop(L, 3);
            return;
        }
        lua_pop(L, 1);
        if (pass == 0) { /* a module loaded since the cache was built? */
            build_modcache(L);
            lua_replace(L, mc); /* same slot: indices above it stay valid */
        }
    }
    refuse(e, "a C function that is not in a loaded module");
}

static void encode_function(enc *e, int idx) {
    lua_State *L = e->L;
    if (lua_iscfunction(L, idx)) {
        encode_cfunction(e, idx);
        return;
    }
    if (seen_before(e, idx, T_FUNC)) return;
    cc_buf code = {0};
    lua_pushvalue(L, idx);
    int r = cb_dump(L, dump_writer, &code);
    lua_pop(L, 1);
    if (r != 0) {
        cc_buf_free(&code);
        refuse(e, "a function that cannot be dumped");
    }
    uint32_t len = (uint32_t)code.len;
    uint64_t sum = checksum(code.data, code.len);
    put(e, &len, 4);
    put(e, &sum, 8);
    put(e, code.data, code.len);
    cc_buf_free(&code);
    int nups = 0;
    while (lua_getupvalue(L, idx, nups + 1)) {
        lua_pop(L, 1);
        nups++;
    }
    put_varint(e, (uint64_t)nups);
    for (int i = 1; i <= nups; i++) {
        const char *name = lua_getupvalue(L, idx, i);
        if (name && strcmp(name, "_ENV") == 0) {
            /* A function's environment is the receiver's globals, always:
             * each thread and process has its own, and copying a sandbox
             * (busted's, say) would drag a whole world along. */
            put_byte(e, T_GLOBALS);
            lua_pop(L, 1);
            continue;
        }
        enter(e, 'u', 0, (name && *name) ? name : "?");
        encode_value(e, lua_gettop(L));
        e->depth--;
        lua_pop(L, 1);
    }
}

/* Is the value at idx of the userdata type registered as mt (by its very
 * metatable, not its __name, which anyone can copy)? */
static int is_type(lua_State *L, int idx, const char *mt) {
    if (!lua_getmetatable(L, idx)) return 0;
    luaL_getmetatable(L, mt);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same;
}

/* What a userdata that is not a shared object is, and why it cannot be
 * sent: concur's own handles are named with the way around. */
static const char *unsendable(lua_State *L, int idx) {
    if (lua_type(L, idx) == LUA_TLIGHTUSERDATA) return "a light userdata";
    if (is_type(L, idx, "concur.process"))
        return "a process handle (it belongs to the process that spawned it; send its pid, or "
               "results through a queue)";
    if (is_type(L, idx, "concur.thread"))
        /* "a userdata" kept: spec/thread_spec.lua pins that wording */
        return "a userdata that is a thread handle (only the state that started it can join "
               "it; send results through a queue)";
    return "a userdata that is not concur's";
}

static void encode_userdata(enc *e, int idx) {
    cc_obj *o = cb_test(e->L, idx);
    if (!o) refuse(e, unsendable(e->L, idx));
    uint32_t i;
    for (i = 0; i < e->nrefs; i++)
        if (e->refs[i] == o) break;
    if (i == e->nrefs) {
        if (e->nrefs == MAX_REFS) refuse(e, "more than 4096 shared objects in one value");
        if (e->nrefs == e->refcap) { /* grow into a userdata anchored in its slot */
            uint32_t cap = e->refcap * 4 < MAX_REFS ? e->refcap * 4 : MAX_REFS;
            cc_obj **grown = lua_newuserdata(e->L, cap * sizeof *grown);
            memcpy(grown, e->refs, e->nrefs * sizeof *grown);
            lua_replace(e->L, e->refslot);
            e->refs = grown;
            e->refcap = cap;
        }
        e->refs[e->nrefs++] = o;
    }
    put_byte(e, T_SHARED);
    put_varint(e, i);
}

static void encode_value(enc *e, int idx) {
    lua_State *L = e->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: put_byte(e, T_NIL); break;
    case LUA_TBOOLEAN: put_byte(e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); break;
    case LUA_TNUMBER:
        if (cb_isinteger(L, idx)) {
            int64_t v = (int64_t)lua_tointeger(L, idx);
            put_byte(e, T_INT);
            put_varint(e, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63));
        } else {
            double d = (double)lua_tonumber(L, idx);
            put_byte(e, T_FLOAT);
            put(e, &d, 8);
        }
        break;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        put_byte(e, T_STR);
        put_str(e, s, n);
        break;
    }
    case LUA_TTABLE: encode_table(e, cb_absindex(L, idx)); break;
    case LUA_TFUNCTION: encode_function(e, cb_absindex(L, idx)); break;
    case LUA_TUSERDATA:
    case LUA_TLIGHTUSERDATA: encode_userdata(e, idx); break;
    case LUA_TTHREAD: refuse(e, "a coroutine"); break;
    default: refuse(e, lua_typename(L, lua_type(L, idx)));
    }
}

/* The encoder's state lives on the C stack (as ldump.c's DumpState does):
 * encoding can run Lua code -- any allocation may run a __gc finalizer --
 * and if that code sends something too, it encodes with a state of its
 * own. What must grow goes into reserved Lua stack slots, so a refusal
 * that longjmps out leaves nothing to free. */
void cb_encode(lua_State *L, int first, int n, cc_buf *out, const char *fname, int argbase) {
    first = cb_absindex(L, first);
    int top = lua_gettop(L);
    enc E, *e = &E;
    e->L = L;
    e->b = out;
    e->fname = fname;
    luaL_checkstack(L, 8, "too many values");
    lua_pushnil(L); /* reserved slots: the seen-table, the module cache, the refs */
    e->seen = lua_gettop(L);
    lua_pushnil(L);
    e->modcache = lua_gettop(L);
    lua_pushnil(L);
    e->refslot = lua_gettop(L);
    e->refs = e->refs_inline;
    e->refcap = sizeof e->refs_inline / sizeof e->refs_inline[0];
    e->nextid = 1;
    e->nrefs = 0;
    e->depth = 0;
    out->len = 0;
    if (cc_buf_reserve(out, 64) != 0) luaL_error(L, "%s: out of memory", fname);
    out->len = sizeof(cc_msghdr);
    for (int i = 0; i < n; i++) {
        e->arg = argbase + i;
        if (i == 0) put_varint(e, (uint64_t)n);
        encode_value(e, first + i);
    }
    if (n == 0) put_varint(e, 0);
    cc_msghdr h = {e->nrefs, 0};
    if (e->nrefs) {
        size_t extra = (size_t)e->nrefs * sizeof(cc_obj *);
        size_t plen = out->len - sizeof(cc_msghdr);
        if (cc_buf_reserve(out, out->len + extra) != 0) luaL_error(L, "%s: out of memory", fname);
        memmove(out->data + sizeof(cc_msghdr) + extra, out->data + sizeof(cc_msghdr), plen);
        memcpy(out->data + sizeof(cc_msghdr), e->refs, extra);
        out->len += extra;
        for (uint32_t i = 0; i < e->nrefs; i++) cc_retain(e->refs[i]);
    }
    memcpy(out->data, &h, sizeof h);
    lua_settop(L, top);
}

/* ---------------------------------------------------------------- decode */

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

static void push_module(dec *d, const char *name, size_t n) {
    lua_State *L = d->L;
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_pushlstring(L, name, n);
    lua_rawget(L, -2);
    if (lua_isnil(L, -1)) { /* not loaded here yet: require it */
        lua_pop(L, 1);
        lua_getglobal(L, "require");
        lua_pushlstring(L, name, n);
        if (!lua_isfunction(L, -2))
            luaL_error(L, "%s: cannot load module '%s' here", d->fname, lua_tostring(L, -1));
        lua_call(L, 1, 1);
    }
    lua_remove(L, -2);
}

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
    memcpy(&len, get_bytes(d, 4), 4);
    memcpy(&sum, get_bytes(d, 8), 8);
    const char *code = get_bytes(d, len);
    if (checksum(code, len) != sum) corrupt(d, "bad function checksum");
    chunk c = {code, len};
    if (cb_load(L, chunk_reader, &c, "=(sent function)") != LUA_OK)
        luaL_error(L, "%s: cannot load sent function: %s", d->fname, lua_tostring(L, -1));
    remember(d, id);
    int f = lua_gettop(L);
    uint64_t nups = get_varint(d);
    for (uint64_t i = 1; i <= nups; i++) {
        decode_value(d);
        if (i > 255 || !lua_setupvalue(L, f, (int)i)) corrupt(d, "bad upvalue count");
    }
}

static void decode_value(dec *d) {
    lua_State *L = d->L;
    if (++d->depth > MAX_DEPTH) corrupt(d, "nested too deeply");
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
        memcpy(&v, get_bytes(d, 8), 8);
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
        push_module(d, mod, mn);
        if (!lua_istable(L, -1)) corrupt(d, "C function of a module that is not a table");
        lua_pushlstring(L, field, fn);
        lua_gettable(L, -2);
        if (!lua_iscfunction(L, -1)) {
            /* the names are not NUL-terminated in the message */
            lua_pushlstring(L, mod, mn);
            lua_pushlstring(L, field, fn);
            luaL_error(L, "%s: no C function '%s.%s' here", d->fname, lua_tostring(L, -2),
                       lua_tostring(L, -1));
        }
        lua_remove(L, -2);
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
        push_module(d, name, n);
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
    if (nrefs > MAX_REFS || cc_msg_payload_offset(nrefs) > len)
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

int cb_decode_untrusted(lua_State *L, const void *msg, size_t len, const char *fname) {
    return decode(L, msg, len, fname, 0);
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
