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
#include "../runtime/proc.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cb_open_progress(lua_State *L); /* bindings/progress.c: pushes concur.progress */

static const char MT_KEYS[CC_T_MAX];  /* registry keys of the metatables */
static const char INTERN_KEY = 'i';
static const char HANDLE_KEY = 'h';   /* marks a concur metatable */

static const char *const TYPE_NAMES[CC_T_MAX] = {
    "none", "list", "dict", "queue", "lock", "rlock", "semaphore", "event",
    "condition", "barrier", "pipe", "array", "value", "progress",
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

/* Metamethods can be called by hand with anything: check, never trust.
 * Upvalue 1 is the type whose metatable holds them, for the error:
 * "list:__gc: bad self (list expected, got FILE*)". */
static cb_handle *meta_arg(lua_State *L, int idx, const char *event) {
    cb_handle *h = to_handle(L, idx);
    if (!h) {
        enum cc_type t = (enum cc_type)lua_tointeger(L, lua_upvalueindex(1));
        char fname[64];
        snprintf(fname, sizeof fname, "%s:%s", cb_typename(t), event);
        cb_self(L, t, fname);
        cb_typeerror(L, idx, fname, cb_typename(t)); /* (cb_self raised) */
    }
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
    luaL_getmetatable(L, full);
    if (lua_isnil(L, -1)) { /* sized at once: no rehash per field */
        int n = 5;
        for (const luaL_Reg *r = meta; r && r->name; r++) n++;
        lua_pop(L, 1);
        lua_createtable(L, 0, n);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, full);
    }
    lua_pushboolean(L, 1);
    cb_rawsetp(L, -2, &HANDLE_KEY);
    static const luaL_Reg generic[] = {{"__gc", h_gc}, {"__tostring", h_tostring}, {"__eq", h_eq}, {NULL, NULL}};
    for (const luaL_Reg *r = generic; r->name; r++) {
        lua_pushinteger(L, t); /* the type, for meta_arg's error */
        lua_pushcclosure(L, r->func, 1);
        lua_setfield(L, -2, r->name);
    }
    lua_pushstring(L, full);
    lua_setfield(L, -2, "__name");
    if (meta) cb_setfuncs(L, meta, 0);
    if (methods) {
        lua_getfield(L, -1, "__index");
        if (!lua_istable(L, -1)) {
            lua_pop(L, 1);
            int n = 0;
            for (const luaL_Reg *r = methods; r->name; r++) n++;
            lua_createtable(L, 0, n);
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

/* Types made on first use. Building a type's metatable and methods table is
 * a few dozen table stores, and a thread's new state would pay it for
 * every type at open (about a quarter of a thread start) though most
 * threads touch one or two. cb_lazytype records what cb_newtype would be
 * called with (process-wide, the same in every state: static tables); the
 * metatable appears in a state the first time a handle of that type is
 * pushed or checked there. No handle of the type can exist before, so
 * getmetatable, type names and error messages are what they were; only
 * the registry shows the difference (its "concur.<type>" entry comes late). */
typedef struct lazytype {
    const char *name;
    const luaL_Reg *methods, *meta;
    lua_CFunction index;
} lazytype;
static lazytype LAZY[CC_T_MAX];
static pthread_mutex_t lazy_lock = PTHREAD_MUTEX_INITIALIZER;

void cb_lazytype(enum cc_type t, const char *name, const luaL_Reg *methods, const luaL_Reg *meta,
                 lua_CFunction index) {
    if (t <= CC_T_NONE || t >= CC_T_MAX) abort(); /* a binding's own constant */
    pthread_mutex_lock(&lazy_lock);
    if (!LAZY[t].name) LAZY[t] = (lazytype){name, methods, meta, index};
    pthread_mutex_unlock(&lazy_lock);
}

/* Push the metatable of type t in this state, making a lazy type's now;
 * nil when the type was never registered. */
static void push_type_mt(lua_State *L, enum cc_type t) {
    cb_rawgetp(L, LUA_REGISTRYINDEX, &MT_KEYS[t]);
    if (!lua_isnil(L, -1) || t <= CC_T_NONE || t >= CC_T_MAX) return;
    pthread_mutex_lock(&lazy_lock);
    lazytype lt = LAZY[t];
    pthread_mutex_unlock(&lazy_lock);
    if (!lt.name) return;
    lua_pop(L, 1);
    luaL_checkstack(L, 8, NULL);
    cb_newtype(L, t, lt.name, lt.methods, lt.meta);
    if (lt.index) {
        char full[64];
        snprintf(full, sizeof full, "concur.%s", lt.name);
        cb_index_with_methods(L, full, lt.index);
    }
    cb_rawgetp(L, LUA_REGISTRYINDEX, &MT_KEYS[t]);
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
    push_type_mt(L, o->type < CC_T_MAX ? o->type : CC_T_NONE);
    if (lua_isnil(L, -1)) {
        cc_release(o);
        luaL_error(L, "no concur %s type in this state", cb_typename(o->type));
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

void cb_index_with_methods(lua_State *L, const char *tname, lua_CFunction index) {
    luaL_getmetatable(L, tname);
    lua_getfield(L, -1, "__index"); /* the methods table cb_newtype made */
    lua_pushcclosure(L, index, 1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

void cb_callable(lua_State *L, lua_CFunction call) {
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, call);
    lua_setfield(L, -2, "__call");
    lua_setmetatable(L, -2);
}

cc_obj *cb_test(lua_State *L, int idx) {
    cb_handle *h = to_handle(L, idx);
    return h ? h->obj : NULL;
}

cc_obj *cb_check(lua_State *L, int idx, enum cc_type t, const char *fname) {
    cb_handle *h = lua_touserdata(L, idx);
    if (h && lua_type(L, idx) == LUA_TUSERDATA && lua_getmetatable(L, idx)) {
        push_type_mt(L, t);
        int known = !lua_isnil(L, -1);
        int same = known && lua_rawequal(L, -1, -2);
        /* a handle with a metatable of its own (cb_derive) names its type's
         * under the mark; the size check keeps out a LuaJIT proxy given a
         * copy of every field */
        if (!same && known && cb_rawlen(L, idx) == sizeof(cb_handle)) {
            cb_rawgetp(L, -2, &HANDLE_KEY);
            same = lua_rawequal(L, -1, -2);
            lua_pop(L, 1);
        }
        lua_pop(L, 2);
        if (same) {
            if (!h->obj) luaL_error(L, "%s: the %s was released", fname, cb_typename(t));
            return h->obj;
        }
    }
    cb_typeerror(L, idx, fname, cb_typename(t));
    return NULL;
}

void cb_derive(lua_State *L, int idx) {
    idx = cb_absindex(L, idx);
    cb_handle *h = lua_touserdata(L, idx);
    int t = h && h->obj && h->obj->type < CC_T_MAX ? h->obj->type : 0;
    luaL_checkstack(L, 6, NULL);
    cb_rawgetp(L, LUA_REGISTRYINDEX, &MT_KEYS[t]);
    int base = lua_gettop(L);
    if (!lua_istable(L, base)) luaL_error(L, "no concur %s type in this state", cb_typename(t));
    lua_createtable(L, 0, 12);
    lua_pushnil(L);
    while (lua_next(L, base)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, base + 1);
    }
    lua_pushvalue(L, base);
    cb_rawsetp(L, base + 1, &HANDLE_KEY);
    lua_remove(L, base);
}

void cb_bind_methods(lua_State *L, int idx, const luaL_Reg *methods) {
    idx = cb_absindex(L, idx);
    int n = 0;
    for (const luaL_Reg *m = methods; m->name; m++) n++;
    luaL_checkstack(L, 6, NULL);
    cb_derive(L, idx);
    int mt = lua_gettop(L);
    lua_createtable(L, 0, n);
    for (; methods->name; methods++) {
        lua_pushvalue(L, idx);
        lua_pushcclosure(L, methods->func, 1);
        lua_setfield(L, mt + 1, methods->name);
    }
    lua_setfield(L, mt, "__index");
    lua_setmetatable(L, idx);
}

cc_obj *cb_self(lua_State *L, enum cc_type t, const char *fname) {
    cb_handle *h = lua_touserdata(L, 1);
    /* fast path: only a full userdata can carry our very metatable (short
     * of debug.setmetatable on a light userdata, which is out of bounds) */
    if (h && lua_getmetatable(L, 1)) {
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
    if (!o) cb_typeerror(L, idx, fname, "concur object");
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

int cb_argerror(lua_State *L, int arg, const char *fname, const char *msg) {
    if (arg == 0) return luaL_error(L, "%s: bad self (%s)", fname, msg);
    return luaL_error(L, "%s: bad argument #%d (%s)", fname, arg, msg);
}

/* A method ("type:verb") counts its arguments after self, as the script
 * wrote them; a function ("lib.fn", "__gc") counts from the first. */
static int arg_of(int idx, const char *fname) { return strchr(fname, ':') ? idx - 1 : idx; }

int cb_idxerror(lua_State *L, int idx, const char *fname, const char *msg) {
    return cb_argerror(L, arg_of(idx, fname), fname, msg);
}

int cb_typeerror(lua_State *L, int idx, const char *fname, const char *expected) {
    return cb_idxerror(L, idx, fname, lua_pushfstring(L, "%s expected, got %s", expected, cb_typeof(L, idx)));
}

lua_Integer cb_checkint(lua_State *L, int idx, int arg, const char *fname) {
    int ok = 0;
    lua_Integer v = cb_tointegerx(L, idx, &ok);
    if (!ok)
        cb_argerror(L, arg, fname,
                    lua_type(L, idx) == LUA_TNUMBER
                        ? "number has no integer representation"
                        : lua_pushfstring(L, "integer expected, got %s", luaL_typename(L, idx)));
    return v;
}

lua_Integer cb_optint(lua_State *L, int idx, int arg, const char *fname, lua_Integer def) {
    return lua_isnoneornil(L, idx) ? def : cb_checkint(L, idx, arg, fname);
}

void cb_checkfunction(lua_State *L, int idx, int arg, const char *fname) {
    if (!lua_isfunction(L, idx))
        cb_argerror(L, arg, fname, lua_pushfstring(L, "function expected, got %s", luaL_typename(L, idx)));
}

void cb_checktable(lua_State *L, int idx, int arg, const char *fname) {
    if (!lua_istable(L, idx))
        cb_argerror(L, arg, fname, lua_pushfstring(L, "table expected, got %s", luaL_typename(L, idx)));
}

double cb_opt_deadline(lua_State *L, int idx, const char *fname) {
    if (lua_isnoneornil(L, idx)) return CC_FOREVER;
    if (lua_type(L, idx) != LUA_TNUMBER) cb_typeerror(L, idx, fname, "timeout in seconds");
    double t = (double)lua_tonumber(L, idx);
    if (!(t >= 0)) cb_idxerror(L, idx, fname, "timeout must be >= 0");
    return cc_deadline(t);
}

int cb_nomem(lua_State *L, const char *fname) {
    char used[32], size[32];
    snprintf(used, sizeof used, "%.1f", (double)cc_arena_used() / (1 << 20));
    snprintf(size, sizeof size, "%.1f", (double)cc_arena_size() / (1 << 20));
    return luaL_error(L, "%s: shared memory exhausted (%s MiB in use of %s MiB; set CONCUR_SHM)",
                      fname, used, size);
}

int cb_oom(lua_State *L, const char *fname) {
    return luaL_error(L, "%s: out of memory (process memory, not the shared arena)", fname);
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

/* CONCUR_SHM: a whole number of bytes, or with a K/M/G/T suffix (an
 * optional trailing "iB"/"B" is not accepted: 12MB would read as megabits to
 * some). Anything else, zero, or past 2^46 is refused: 0 back. */
static size_t parse_size(const char *s) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || errno || *s == '-' || *s == '+') return 0;
    unsigned shift = 0;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    default: return 0;
    }
    if (*end != '\0' || v == 0 || v > ((1ULL << 46) >> shift)) return 0;
    return (size_t)(v << shift);
}

void cb_arena(lua_State *L) {
    if (cc_arena_ready()) return;
    const char *env = getenv("CONCUR_SHM");
    size_t size = 0;
    if (env && *env) {
        size = parse_size(env);
        if (!size) luaL_error(L, "bad CONCUR_SHM '%s' (a size such as 512M, 4G or 1048576)", env);
    }
    int r = cc_arena_init(size);
    if (r) luaL_error(L, "cannot map %d MiB of shared memory (CONCUR_SHM): %s",
                      (int)((size ? size : cc_arena_default_size()) >> 20), strerror(-r));
}

/* ---- the collector and the arena ----
 *
 * A handle is a few dozen bytes of Lua heap that can pin 128 KiB of arena
 * (a pipe's buffers, a queue's chunk): left alone, the collector would see
 * no reason to run while the arena fills. Constructors report what they pin
 * as collector debt, and an operation that finds the arena full collects
 * once and retries before it reports exhaustion. Neither runs the collector
 * if the script stopped it. */
static int gc_running(lua_State *L) {
#ifdef LUA_GCISRUNNING
    return lua_gc(L, LUA_GCISRUNNING, 0);
#else
    (void)L;
    return 1;
#endif
}

void cb_collect(lua_State *L) {
    if (gc_running(L)) lua_gc(L, LUA_GCCOLLECT, 0);
}

void cb_pressure(lua_State *L, size_t bytes) {
    int kb = (int)(bytes >> 10);
    if (kb > 0 && gc_running(L)) lua_gc(L, LUA_GCSTEP, kb);
}

/* ---- helpers for the binding files ---- */

int cb_msghandler(lua_State *L) {
    if (lua_type(L, 1) == LUA_TSTRING) cb_traceback(L, L, lua_tostring(L, 1), 1);
    else if (lua_isnoneornil(L, 1)) lua_pushliteral(L, "(error object is nil)");
    else lua_settop(L, 1);
    return 1;
}

void cb_registry_drain(lua_State *L, const void *key, const char *mt,
                       int (*fn)(lua_State *L, void *ud, int arg), int arg) {
    cb_rawgetp(L, LUA_REGISTRYINDEX, key);
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    lua_newtable(L); /* the keys first: fn may change the table */
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, -3)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_rawseti(L, -3, ++n);
    }
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        void *ud = luaL_testudata(L, -1, mt);
        if (ud && fn(L, ud, arg)) {
            lua_pushnil(L);
            lua_rawset(L, -4);
        } else {
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 2);
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

/* ---- scratch buffers ----
 *
 * put/get/send/recv reuse two malloc'd buffers per lua_State, so the hot
 * paths allocate nothing. A buffer is in use from cb_buf_take to
 * cb_buf_give, and during that time Lua code can run on the same state: a
 * __gc finalizer (any allocation can step the collector), a module that
 * decode requires, a metamethod. If that code uses concur, it must not get
 * the buffer the outer call is still reading or writing.
 *
 * So each buffer records the C frame of the call that holds it. A nested
 * call runs in a deeper frame (a lower address: the stack grows down on
 * every platform we build for), finds the buffer held by a live frame, and
 * gets a temporary buffer of its own. A call that raised never gives its
 * buffer back; the next call from the same or a shallower frame proves that
 * frame dead (it cannot still be running below us) and takes the buffer
 * over. Temporaries of dead frames are freed the same way, so an error
 * leaks nothing for long. */
#define NTEMP 16

/* Each buffer knows its scratch and slot, so giving it back needs no
 * registry lookup (cc_buf is the first member). */
typedef struct sbuf {
    cc_buf b;
    struct scratch *s;
    int slot;                        /* 0, 1: cached; 2 + i: temp[i] */
} sbuf;

typedef struct scratch {
    sbuf buf[2];
    const void *owner[2];            /* frame holding buf[i], NULL when free */
    sbuf temp[NTEMP];
    const void *temp_owner[NTEMP];   /* NULL: slot unused */
    int temp_which[NTEMP];
    int ntemp;
} scratch;

static const char SCRATCH_KEY = 's';

static int scratch_gc(lua_State *L) {
    scratch *s = lua_touserdata(L, 1);
    for (int i = 0; i < 2; i++) cc_buf_free(&s->buf[i].b);
    for (int i = 0; i < NTEMP; i++) cc_buf_free(&s->temp[i].b);
    return 0;
}

static scratch *get_scratch(lua_State *L) {
    cb_rawgetp(L, LUA_REGISTRYINDEX, &SCRATCH_KEY);
    scratch *s = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (!s) {
        s = lua_newuserdata(L, sizeof *s);
        memset(s, 0, sizeof *s);
        for (int i = 0; i < 2; i++) {
            s->buf[i].s = s;
            s->buf[i].slot = i;
        }
        for (int i = 0; i < NTEMP; i++) {
            s->temp[i].s = s;
            s->temp[i].slot = 2 + i;
        }
        cb_keep_with_gc(L, &SCRATCH_KEY, scratch_gc);
    }
    return s;
}

void cb_keep_with_gc(lua_State *L, const void *key, lua_CFunction gc) {
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    cb_rawsetp(L, LUA_REGISTRYINDEX, key);
}

/* The frame that held something is gone when we run above it; when we run
 * in that very frame, only a buffer it asks for again (same `which`) was
 * left behind by an earlier call that raised -- its other buffers are in use
 * by this call. */
static int dead(const void *owner, int owner_which, const void *frame, int which) {
    if ((uintptr_t)frame != (uintptr_t)owner) return (uintptr_t)frame > (uintptr_t)owner;
    return owner_which == which;
}

cc_buf *cb_buf_take_at(lua_State *L, int which, const void *frame) {
    scratch *s = get_scratch(L);
    if (s->ntemp) { /* free the temporaries of calls that raised */
        for (int i = 0; i < NTEMP; i++)
            if (s->temp_owner[i] && dead(s->temp_owner[i], s->temp_which[i], frame, which)) {
                cc_buf_free(&s->temp[i].b);
                s->temp_owner[i] = NULL;
                s->ntemp--;
            }
    }
    if (!s->owner[which] || dead(s->owner[which], which, frame, which)) {
        s->owner[which] = frame;
        s->buf[which].b.len = 0;
        return &s->buf[which].b;
    }
    for (int i = 0; i < NTEMP; i++)
        if (!s->temp_owner[i]) {
            s->temp_owner[i] = frame;
            s->temp_which[i] = which;
            s->temp[i].b.len = 0;
            s->ntemp++;
            return &s->temp[i].b;
        }
    luaL_error(L, "concur: operations nested more than %d deep in finalizers", NTEMP);
    return NULL;
}

void cb_buf_forget_frames(lua_State *L) {
    scratch *s = get_scratch(L);
    s->owner[0] = s->owner[1] = NULL;
    for (int i = 0; i < NTEMP; i++)
        if (s->temp_owner[i]) {
            cc_buf_free(&s->temp[i].b);
            s->temp_owner[i] = NULL;
        }
    s->ntemp = 0;
}

void cb_buf_give(lua_State *L, cc_buf *b) {
    (void)L;
    sbuf *sb = (sbuf *)(void *)b;
    scratch *s = sb->s;
    if (sb->slot < 2) {
        s->owner[sb->slot] = NULL;
    } else if (s->temp_owner[sb->slot - 2]) {
        cc_buf_free(&sb->b);
        s->temp_owner[sb->slot - 2] = NULL;
        s->ntemp--;
    }
}

/* ---- batches ----
 *
 * Several messages end to end (put_many and extend on the way in, get_many
 * and snapshots on the way out) in a userdata on the Lua stack: if encoding
 * or decoding item i raises, its __gc releases the references of the
 * messages nobody took over yet ([next, n)) and frees the memory, instead
 * of leaking both. */
static const char BATCH_KEY = 'b';

static void batch_release(cb_batch *b) {
    size_t off = b->off;
    for (size_t i = b->next; i < b->n; i++) {
        cc_msg_release(b->all.data + off, b->lens[i]);
        off += b->lens[i];
    }
    b->next = b->n;
    b->off = off;
}

static int batch_gc(lua_State *L) {
    cb_batch *b = lua_touserdata(L, 1);
    if (b) cb_batch_free(L, b);
    return 0;
}

cb_batch *cb_batch_new(lua_State *L) {
    cb_batch *b = lua_newuserdata(L, sizeof *b);
    memset(b, 0, sizeof *b);
    cb_rawgetp(L, LUA_REGISTRYINDEX, &BATCH_KEY);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, batch_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushvalue(L, -1);
        cb_rawsetp(L, LUA_REGISTRYINDEX, &BATCH_KEY);
    }
    lua_setmetatable(L, -2);
    return b;
}

void cb_batch_add(lua_State *L, cb_batch *b, const void *msg, size_t len, const char *fname) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 16;
        size_t *lens = realloc(b->lens, cap * sizeof *lens);
        if (!lens) {
            cc_msg_release(msg, len);
            luaL_error(L, "%s: out of memory", fname);
        }
        b->lens = lens;
        b->cap = cap;
    }
    if (cc_buf_reserve(&b->all, b->all.len + len) != 0) {
        cc_msg_release(msg, len);
        luaL_error(L, "%s: out of memory", fname);
    }
    memcpy(b->all.data + b->all.len, msg, len);
    b->all.len += len;
    b->lens[b->n++] = len;
}

void cb_batch_keep(cb_batch *b, size_t upto) {
    while (b->next < upto && b->next < b->n) b->off += b->lens[b->next++];
}

void cb_batch_free(lua_State *L, cb_batch *b) {
    (void)L;
    batch_release(b);
    cc_buf_free(&b->all);
    free(b->lens);
    b->lens = NULL;
    b->n = b->cap = b->next = b->off = 0;
}

int cb_batch_decode(lua_State *L, cb_batch *b, size_t i, size_t off, const char *fname) {
    /* decode takes over message i's references even if it raises */
    if (b->next <= i) cb_batch_keep(b, i + 1);
    return cb_decode(L, b->all.data + off, b->lens[i], fname);
}

void cb_batch_totable(lua_State *L, cb_batch *b, const char *fname) {
    lua_createtable(L, (int)b->n, 0);
    int t = lua_gettop(L);
    size_t off = 0;
    for (size_t i = 0; i < b->n; i++) {
        cb_batch_decode(L, b, i, off, fname);
        lua_rawseti(L, t, (int)i + 1);
        off += b->lens[i];
    }
    cb_batch_free(L, b);
}

/* ---- concur.* utilities ---- */

static int l_sleep(lua_State *L) {
    if (lua_type(L, 1) != LUA_TNUMBER) return cb_typeerror(L, 1, "concur.sleep", "seconds");
    double s = (double)lua_tonumber(L, 1);
    if (!(s >= 0)) return cb_argerror(L, 1, "concur.sleep", "seconds must be >= 0");
    if (s > 0 && cc_sleep(s) == -EINTR) return luaL_error(L, "concur.sleep: interrupted");
    return 0;
}

/* concur.interrupted(err): is err the error a cancel, Ctrl-C or SIGTERM
 * raises? Those are strings ("queue:get: interrupted", "...: thread
 * cancelled", the host's "interrupted!"/"terminated!"), kept as strings so
 * existing code that prints or matches them works; this names the test. */
static int ends_with(const char *s, size_t n, const char *suffix) {
    size_t k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

static int l_interrupted(lua_State *L) {
    size_t n = 0;
    const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n) : NULL;
    if (s) {
        const char *nl = memchr(s, '\n', n); /* a traceback may follow the message */
        if (nl) n = (size_t)(nl - s);
    }
    lua_pushboolean(L, s && (ends_with(s, n, ": interrupted") || ends_with(s, n, "thread cancelled") ||
                             ends_with(s, n, "interrupted!") || ends_with(s, n, "terminated!")));
    return 1;
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
    cc_buf *b = cb_buf_take(L, 0); /* a refusal raises: nothing to free */
    cb_encode(L, 1, lua_gettop(L), b, "concur.encode", 1);
    if (cc_msg_nrefs(b->data)) {
        cc_msg_release(b->data, b->len);
        cb_buf_give(L, b);
        return luaL_error(L, "concur.encode: cannot encode shared objects into a string");
    }
    lua_pushlstring(L, b->data, b->len);
    cb_buf_give(L, b);
    return 1;
}

/* concur.decode(s, [{trust = true}]): by default the bytes are untrusted,
 * like input from a file or a socket, and may hold only data (see
 * cb_decode_string). */
static int l_decode(lua_State *L) {
    size_t n;
    if (lua_type(L, 1) != LUA_TSTRING) return cb_typeerror(L, 1, "concur.decode", "string");
    const char *s = lua_tolstring(L, 1, &n);
    int trust = 0;
    if (!lua_isnoneornil(L, 2)) {
        if (!lua_istable(L, 2)) return cb_typeerror(L, 2, "concur.decode", "options table");
        lua_getfield(L, 2, "trust");
        trust = lua_toboolean(L, -1);
    }
    if (n >= sizeof(cc_msghdr) && cc_msg_nrefs(s))
        return luaL_error(L, "concur.decode: corrupt message (shared objects in a string)");
    lua_settop(L, 1);
    return cb_decode_string(L, s, n, "concur.decode", trust);
}

static const luaL_Reg utils[] = {
    {"sleep", l_sleep},   {"clock", l_clock},   {"memory", l_memory}, {"interrupted", l_interrupted},
    {"encode", l_encode}, {"decode", l_decode}, {NULL, NULL},
};

static const struct { const char *name, *mod; lua_CFunction open; } LIBS[] = {
    {"process", "concur.process", cb_open_process}, {"thread", "concur.thread", cb_open_thread},
    {"shared", "concur.shared", cb_open_shared},     {"pipe", "concur.pipe", cb_open_pipe},
    {"lock", "concur.lock", cb_open_lock},           {"queue", "concur.queue", cb_open_queue},
    {"primes", "concur.primes", cb_open_primes},
};

int cb_open_pool(lua_State *L, int lib); /* bindings/pool.c */

int luaopen_concur(lua_State *L) {
    cb_arena(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    int loaded = lua_gettop(L);
    lua_getfield(L, loaded, "concur");
    if (lua_istable(L, -1)) return 1; /* already open in this state */
    lua_pop(L, 1);
    /* sized at once for utils, version, LIBS, wait, progress and pool: a
     * thread's new state opens this, and each rehash is a copy */
    lua_createtable(L, 0, (int)(sizeof utils / sizeof utils[0] + sizeof LIBS / sizeof LIBS[0]) + 3);
    cb_setfuncs(L, utils, 0);
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
        lua_setfield(L, loaded, LIBS[i].mod);
    }
    cb_open_wait(L);
    lua_setfield(L, lib, "wait");
    cb_open_progress(L);
    lua_setfield(L, lib, "progress");
    /* the pool is Lua over the libraries above (bindings/pool.c) */
    cb_open_pool(L, lib);
    lua_pushvalue(L, -1);
    lua_setfield(L, lib, "pool");
    lua_setfield(L, loaded, "concur.pool");
    lua_pushvalue(L, lib);
    return 1;
}

/* require "concur.queue" etc. on their own, under stock lua5.4 and luajit.
 * Stock require finds these in this same concur.so: its C searcher tries
 * "concur/queue.so" on package.cpath, and its all-in-one searcher loads
 * "concur.so" (the part of the name before the first dot) and calls
 * luaopen_concur_queue. Each opens the whole module once (which registers
 * package.loaded["concur.<lib>"]) and returns that library's table, so
 * require "concur.queue" == require("concur").queue. */
static int open_one(lua_State *L, const char *lib) {
    lua_pushcfunction(L, luaopen_concur);
    lua_call(L, 0, 1);
    lua_getfield(L, -1, lib);
    if (lua_isnil(L, -1)) return luaL_error(L, "concur.%s: no such library in concur", lib);
    return 1;
}

#define CONCUR_OPEN_ONE(lib) \
    int luaopen_concur_##lib(lua_State *L); \
    int luaopen_concur_##lib(lua_State *L) { return open_one(L, #lib); }
CONCUR_OPEN_ONE(process)
CONCUR_OPEN_ONE(thread)
CONCUR_OPEN_ONE(shared)
CONCUR_OPEN_ONE(pipe)
CONCUR_OPEN_ONE(lock)
CONCUR_OPEN_ONE(queue)
CONCUR_OPEN_ONE(primes)
CONCUR_OPEN_ONE(wait)
CONCUR_OPEN_ONE(pool)
#undef CONCUR_OPEN_ONE

/* The embedder's interrupt flag (include/concur.h): one per process, watched
 * by the threads that called concur_interrupt_here. */
static _Atomic int embedder_interrupt;

void concur_interrupt_here(void) { cc_interrupt_set(&embedder_interrupt); }
void concur_interrupt(int on) { embedder_interrupt = on ? 1 : 0; }
void concur_exit_report(void) { cc_exit_report(); }

void *concur_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    return cc_heap_alloc(ud, ptr, osize, nsize);
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
    lua_getfield(L, -1, "pool");
    lua_setglobal(L, "pool");
    lua_setglobal(L, "concur");
    lua_pop(L, 1);
    return 0;
}
