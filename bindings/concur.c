/*
 * concur.c -- luaopen_concur / concur_openlibs, and what every binding
 * shares: shared-object handles, timeouts, error mapping, the arena.
 *
 * Handles are interned per lua_State: a weak-valued registry table maps
 * each object to its one userdata in that state, so `a == b`, table keys
 * and the codec's cycle tracking treat one shared object as one value,
 * however many times it was received. Each handle holds one count on its
 * object; __gc gives it back.
 */
#include "cb.h"
#include "../include/concur.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char MT_KEYS[CC_T_MAX];  /* registry keys of the metatables */
static const char INTERN_KEY = 'i';
static const char HANDLE_KEY = 'h';   /* marks a concur metatable */

static const char *const TYPE_NAMES[CC_T_MAX] = {
    "none", "list", "dict", "queue", "lock", "rlock", "semaphore", "event",
    "condition", "barrier", "pipe",
};

const char *cb_typename(enum cc_type t) {
    return (t > CC_T_NONE && t < CC_T_MAX) ? TYPE_NAMES[t] : "object";
}

/* ---- handles ---- */

/* The handle at idx, or NULL when the value there is not a concur handle
 * (a full userdata of a handle's size whose metatable carries the concur
 * mark: under LuaJIT a newproxy can be given a copy of every field). */
static cb_handle *to_handle(lua_State *L, int idx) {
    if (lua_type(L, idx) != LUA_TUSERDATA || cb_rawlen(L, idx) != sizeof(cb_handle) ||
        !lua_getmetatable(L, idx))
        return NULL;
    cb_rawgetp(L, -1, &HANDLE_KEY);
    int ok = lua_toboolean(L, -1);
    lua_pop(L, 2);
    return ok ? lua_touserdata(L, idx) : NULL;
}

/* Metamethods can be called by hand with anything: check, never trust. */
static cb_handle *meta_arg(lua_State *L, int idx, const char *event) {
    cb_handle *h = to_handle(L, idx);
    if (!h)
        luaL_error(L, "bad argument #%d to '%s' (concur object expected, got %s)", idx, event,
                   cb_typeof(L, idx));
    return h;
}

static int h_gc(lua_State *L) {
    cb_handle *h = meta_arg(L, 1, "__gc");
    if (h->obj) {
        cc_obj *o = h->obj;
        h->obj = NULL;
        if (h->owner == cc_pid()) cc_release(o);
    }
    return 0;
}

static int h_tostring(lua_State *L) {
    cb_handle *h = meta_arg(L, 1, "__tostring");
    if (!h->obj) lua_pushstring(L, "concur object (released)");
    else lua_pushfstring(L, "concur.%s: %p", cb_typename(h->obj->type), (void *)h->obj);
    return 1;
}

/* Lua calls __eq with one handle and any other userdata: that is false, not
 * an error; only a call with no handle at all is a misuse. */
static int h_eq(lua_State *L) {
    cb_handle *a = to_handle(L, 1), *b = to_handle(L, 2);
    if (!a && !b) meta_arg(L, 1, "__eq");
    lua_pushboolean(L, a && b && a->obj && a->obj == b->obj);
    return 1;
}

void cb_newtype(lua_State *L, enum cc_type t, const char *name, const luaL_Reg *methods,
                const luaL_Reg *meta) {
    char full[64];
    snprintf(full, sizeof full, "concur.%s", name);
    luaL_newmetatable(L, full);
    lua_pushboolean(L, 1);
    cb_rawsetp(L, -2, &HANDLE_KEY);
    lua_pushcfunction(L, h_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, h_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, h_eq);
    lua_setfield(L, -2, "__eq");
    lua_pushstring(L, full);
    lua_setfield(L, -2, "__name");
    if (meta) cb_setfuncs(L, meta, 0);
    if (methods) {
        lua_getfield(L, -1, "__index");
        if (!lua_istable(L, -1)) {
            lua_pop(L, 1);
            lua_newtable(L);
            lua_pushvalue(L, -1);
            lua_setfield(L, -3, "__index");
        }
        lua_pushvalue(L, -2); /* each method gets the metatable as upvalue 1 */
        cb_setfuncs(L, methods, 1);
        lua_pop(L, 1);
    }
    lua_pushvalue(L, -1);
    cb_rawsetp(L, LUA_REGISTRYINDEX, &MT_KEYS[t]);
    lua_pop(L, 1);
}

static void push_intern(lua_State *L) {
    cb_rawgetp(L, LUA_REGISTRYINDEX, &INTERN_KEY);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_createtable(L, 0, 1);
        lua_pushstring(L, "v");
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
        lua_pushvalue(L, -1);
        cb_rawsetp(L, LUA_REGISTRYINDEX, &INTERN_KEY);
    }
}

cb_handle *cb_push(lua_State *L, cc_obj *o) {
    luaL_checkstack(L, 4, NULL);
    push_intern(L);
    cb_rawgetp(L, -1, o);
    cb_handle *h = lua_touserdata(L, -1);
    if (h && h->obj == o) {
        if (h->owner == cc_pid()) cc_release(o); /* it already holds a count */
        else h->owner = cc_pid(); /* inherited: adopt this count as our own */
        lua_remove(L, -2);
        return h;
    }
    lua_pop(L, 1);
    cb_rawgetp(L, LUA_REGISTRYINDEX, &MT_KEYS[o->type < CC_T_MAX ? o->type : 0]);
    if (lua_isnil(L, -1)) {
        cc_release(o);
        luaL_error(L, "concur: no %s type in this state", cb_typename(o->type));
    }
    h = cb_newuserdata(L, sizeof *h);
    h->obj = o;
    h->flags = 0;
    h->owner = cc_pid();
    lua_insert(L, -2);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    cb_rawsetp(L, -3, o);
    lua_remove(L, -2);
    return h;
}

cc_obj *cb_test(lua_State *L, int idx) {
    cb_handle *h = to_handle(L, idx);
    return h ? h->obj : NULL;
}

static int arg_error(lua_State *L, int idx, const char *fname, const char *expected) {
    return luaL_error(L, "%s: bad argument #%d (%s expected, got %s)", fname, idx, expected,
                      cb_typeof(L, idx));
}

cc_obj *cb_check(lua_State *L, int idx, enum cc_type t, const char *fname) {
    cb_handle *h = lua_touserdata(L, idx);
    if (h && lua_type(L, idx) == LUA_TUSERDATA && lua_getmetatable(L, idx)) {
        cb_rawgetp(L, LUA_REGISTRYINDEX, &MT_KEYS[t]);
        int same = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (same) {
            if (!h->obj) luaL_error(L, "%s: the %s was released", fname, cb_typename(t));
            return h->obj;
        }
    }
    char what[32];
    snprintf(what, sizeof what, "%s", cb_typename(t));
    arg_error(L, idx, fname, what);
    return NULL;
}

cc_obj *cb_self(lua_State *L, enum cc_type t, const char *fname) {
    cb_handle *h = lua_touserdata(L, 1);
    if (h && lua_type(L, 1) == LUA_TUSERDATA && lua_getmetatable(L, 1)) {
        int same = lua_rawequal(L, -1, lua_upvalueindex(1));
        lua_pop(L, 1);
        if (same) {
            if (!h->obj) luaL_error(L, "%s: the object was released", fname);
            return h->obj;
        }
    }
    /* not the method's own type, or called without the upvalue (as a
     * metamethod): the full check, which raises the right message */
    if (t != CC_T_NONE) return cb_check(L, 1, t, fname);
    h = to_handle(L, 1);
    if (h && !h->obj) luaL_error(L, "%s: the object was released", fname);
    return cb_check_any(L, 1, fname);
}

cc_obj *cb_check_any(lua_State *L, int idx, const char *fname) {
    cc_obj *o = cb_test(L, idx);
    if (!o) arg_error(L, idx, fname, "concur object");
    return o;
}

/* Every handle of this state is in its intern table (weak values lose only
 * handles that are already unreachable), so this is everything a forked
 * child running this state can reach. Collect first, retain after: nothing
 * here allocates a Lua object, so no collection changes the table meanwhile. */
int cb_retain_reachable(lua_State *L, cc_buf *held) {
    held->len = 0;
    luaL_checkstack(L, 4, NULL);
    push_intern(L);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        cb_handle *h = lua_type(L, -1) == LUA_TUSERDATA ? lua_touserdata(L, -1) : NULL;
        lua_pop(L, 1);
        if (!h || !h->obj) continue;
        if (cc_buf_reserve(held, held->len + sizeof h->obj)) {
            lua_pop(L, 2);
            held->len = 0;
            return -ENOMEM;
        }
        memcpy(held->data + held->len, &h->obj, sizeof h->obj);
        held->len += sizeof h->obj;
    }
    lua_pop(L, 1);
    for (size_t off = 0; off < held->len; off += sizeof(cc_obj *)) {
        cc_obj *o;
        memcpy(&o, held->data + off, sizeof o);
        cc_retain(o);
    }
    return 0;
}

const char *cb_typeof(lua_State *L, int idx) {
    if (lua_type(L, idx) == LUA_TLIGHTUSERDATA) return "light userdata";
    const char *name = NULL;
    if (luaL_getmetafield(L, idx, "__name")) {
        /* the string stays anchored in the metatable of the value at idx */
        if (lua_type(L, -1) == LUA_TSTRING) name = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    return name ? name : luaL_typename(L, idx);
}

/* ---- timeouts and errors ---- */

double cb_opt_deadline(lua_State *L, int idx, const char *fname) {
    if (lua_isnoneornil(L, idx)) return CC_FOREVER;
    if (lua_type(L, idx) != LUA_TNUMBER) arg_error(L, idx, fname, "timeout in seconds");
    double t = (double)lua_tonumber(L, idx);
    if (!(t >= 0)) luaL_error(L, "%s: bad argument #%d (timeout must be >= 0)", fname, idx);
    return cc_deadline(t);
}

int cb_nomem(lua_State *L, const char *fname) {
    return luaL_error(L, "%s: shared memory exhausted (%d MiB in use of %d; set CONCUR_SHM)", fname,
                      (int)(cc_arena_used() >> 20), (int)(cc_arena_size() >> 20));
}

int cb_fail(lua_State *L, int err, const char *fname) {
    switch (err) {
    case -ETIMEDOUT:
        lua_pushnil(L);
        lua_pushstring(L, "timeout");
        return 2;
    case -EPIPE:
        lua_pushnil(L);
        lua_pushstring(L, "closed");
        return 2;
    case -EINTR: return luaL_error(L, "%s: interrupted", fname);
    case -ENOMEM: return cb_nomem(L, fname);
    default: return luaL_error(L, "%s: %s", fname, strerror(-err));
    }
}

/* CONCUR_SHM: bytes, or with a K/M/G suffix. */
static size_t parse_size(const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || v <= 0) return 0;
    switch (*end) {
    case 'k': case 'K': v *= 1024.0; break;
    case 'm': case 'M': v *= 1024.0 * 1024; break;
    case 'g': case 'G': v *= 1024.0 * 1024 * 1024; break;
    case 't': case 'T': v *= 1024.0 * 1024 * 1024 * 1024; break;
    default: break;
    }
    return (size_t)v;
}

void cb_arena(lua_State *L) {
    if (cc_arena_ready()) return;
    const char *env = getenv("CONCUR_SHM");
    size_t size = 0;
    if (env && *env) {
        size = parse_size(env);
        if (!size) luaL_error(L, "concur: bad CONCUR_SHM '%s' (use e.g. 512M or 4G)", env);
    }
    int r = cc_arena_init(size);
    if (r) luaL_error(L, "concur: cannot map %d MiB of shared memory (CONCUR_SHM): %s",
                      (int)((size ? size : cc_arena_default_size()) >> 20), strerror(-r));
}

/* ---- helpers for the binding files ---- */

int cb_msghandler(lua_State *L) {
    if (lua_type(L, 1) == LUA_TSTRING) cb_traceback(L, L, lua_tostring(L, 1), 1);
    else if (lua_isnoneornil(L, 1)) lua_pushliteral(L, "(error object is nil)");
    else lua_settop(L, 1);
    return 1;
}

void cb_registry_mark(lua_State *L, const void *key, int idx, int on) {
    idx = cb_absindex(L, idx);
    cb_rawgetp(L, LUA_REGISTRYINDEX, key);
    lua_pushvalue(L, idx);
    if (on) lua_pushboolean(L, 1);
    else lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

static const char SCRATCH_KEY = 's';

static int scratch_gc(lua_State *L) {
    cc_buf *b = lua_touserdata(L, 1);
    cc_buf_free(&b[0]);
    cc_buf_free(&b[1]);
    return 0;
}

cc_buf *cb_scratch(lua_State *L, int which) {
    cb_rawgetp(L, LUA_REGISTRYINDEX, &SCRATCH_KEY);
    cc_buf *b = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (!b) {
        b = lua_newuserdata(L, 2 * sizeof *b);
        memset(b, 0, 2 * sizeof *b);
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, scratch_gc);
        lua_setfield(L, -2, "__gc");
        lua_setmetatable(L, -2);
        cb_rawsetp(L, LUA_REGISTRYINDEX, &SCRATCH_KEY);
    }
    return &b[which];
}

/* ---- concur.* utilities ---- */

static int l_sleep(lua_State *L) {
    double s = (double)luaL_checknumber(L, 1);
    if (s > 0 && cc_sleep(s) == -EINTR) return luaL_error(L, "concur.sleep: interrupted");
    return 0;
}

static int l_clock(lua_State *L) {
    lua_pushnumber(L, (lua_Number)cc_now());
    return 1;
}

static int l_memory(lua_State *L) {
    lua_pushnumber(L, (lua_Number)cc_arena_used());
    lua_pushnumber(L, (lua_Number)cc_arena_size());
    return 2;
}

/* concur.encode(...) -> string, concur.decode(s) -> values: the codec as a
 * serializer. A string cannot own counts on shared objects, so those are
 * refused here (they travel through queues, pipes and lists instead). */
static int l_encode(lua_State *L) {
    cc_buf b = {0};
    cb_encode(L, 1, lua_gettop(L), &b, "concur.encode", 1);
    if (cc_msg_nrefs(b.data)) {
        cc_msg_release(b.data, b.len);
        cc_buf_free(&b);
        return luaL_error(L, "concur.encode: cannot encode shared objects into a string");
    }
    lua_pushlstring(L, b.data, b.len);
    cc_buf_free(&b);
    return 1;
}

static int l_decode(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    if (n >= sizeof(cc_msghdr) && cc_msg_nrefs(s))
        return luaL_error(L, "concur.decode: corrupt message (shared objects in a string)");
    lua_settop(L, 1);
    return cb_decode(L, s, n, "concur.decode");
}

static const luaL_Reg utils[] = {
    {"sleep", l_sleep},   {"clock", l_clock},   {"memory", l_memory},
    {"encode", l_encode}, {"decode", l_decode}, {NULL, NULL},
};

static const struct { const char *name; lua_CFunction open; } LIBS[] = {
    {"process", cb_open_process}, {"thread", cb_open_thread}, {"shared", cb_open_shared},
    {"pipe", cb_open_pipe},       {"lock", cb_open_lock},     {"queue", cb_open_queue},
    {"primes", cb_open_primes},
};

int luaopen_concur(lua_State *L) {
    cb_arena(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    int loaded = lua_gettop(L);
    lua_getfield(L, loaded, "concur");
    if (lua_istable(L, -1)) return 1; /* already open in this state */
    lua_pop(L, 1);
    cb_newlib(L, utils);
    int lib = lua_gettop(L);
    lua_pushstring(L, CONCUR_VERSION);
    lua_setfield(L, lib, "version");
    /* registered before the libraries so a library can find it */
    lua_pushvalue(L, lib);
    lua_setfield(L, loaded, "concur");
    for (size_t i = 0; i < sizeof LIBS / sizeof LIBS[0]; i++) {
        LIBS[i].open(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, lib, LIBS[i].name);
        char mod[32];
        snprintf(mod, sizeof mod, "concur.%s", LIBS[i].name);
        lua_setfield(L, loaded, mod);
    }
    cb_open_wait(L);
    lua_setfield(L, lib, "wait");
    lua_pushvalue(L, lib);
    return 1;
}

int concur_openlibs(lua_State *L) {
    cb_requiref(L, "concur", luaopen_concur);
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_getfield(L, -1, "concur");
    for (size_t i = 0; i < sizeof LIBS / sizeof LIBS[0]; i++) {
        lua_getfield(L, -1, LIBS[i].name);
        if (lua_isnil(L, -1)) lua_pop(L, 1);
        else lua_setglobal(L, LIBS[i].name);
    }
    lua_setglobal(L, "concur");
    lua_pop(L, 1);
    return 0;
}
