/*
 * lock.c -- lock() / lock.new(), lock.rlock(), lock.semaphore(n),
 * lock.event(), lock.condition([lock]), lock.barrier(n): Python's set, in
 * shared memory, across threads and processes.
 *
 *   l:acquire([timeout])  true | false (timeout) | true, "owner died"
 *   l:release()           error unless the caller holds it
 *   l:locked(), l:with(fn, ...) (released on error too), `local l <close>`
 *   semaphore: acquire([timeout]) -> true|false, release([n]), value(), with
 *   event: set(), clear(), is_set(), wait([timeout]) -> true|false
 *   condition: acquire/release/with/locked as its lock, wait([timeout]) ->
 *     true|false, wait_for(pred, [timeout]) -> pred's last value,
 *     notify([n]), notify_all()  (wait/notify need the lock held)
 *   barrier: wait([timeout]) -> arrival index | nil, "timeout" (the barrier
 *     breaks) | nil, "broken"; abort(), reset(), parties(), n_waiting(),
 *     broken()
 *
 * A lock whose holder died is handed to the next acquirer with the second
 * value "owner died" -- never a silent deadlock.
 *
 * Hot handles. acquire/release cost little more than the Lua C call itself,
 * so the receiver check matters: after HOT calls through the type's methods
 * a lock, rlock or condition handle gets a metatable of its own (cb_derive)
 * whose methods are closures bound to it, and its check becomes one address
 * compare. Only handles in use pay the ~1 KiB this costs.
 */
#include "cb.h"
#include "../runtime/locks.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define CHECK(T, t, name) ((T *)cb_check(L, 1, t, name))
#define SELF(T, t, name) ((T *)cb_self(L, t, name))

static int push_new(lua_State *L, int r, cc_obj *o, const char *fname) {
    if (r) return cb_fail(L, r, fname);
    cb_push(L, o);
    return 1;
}

/* An integer as text on the stack (LuaJIT's format has no %I). */
static const char *fmt_int(lua_State *L, int64_t v) {
    char b[32];
    snprintf(b, sizeof b, "%" PRId64, v);
    lua_pushstring(L, b);
    return lua_tostring(L, -1);
}

/* acquire's results: true | false | true, "owner died" */
static int acquired(lua_State *L, int r, const char *fname) {
    if (r == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (r == -EOWNERDEAD) {
        lua_pushboolean(L, 1);
        lua_pushliteral(L, "owner died");
        return 2;
    }
    if (r == -ETIMEDOUT) {
        lua_pushboolean(L, 0);
        return 1;
    }
    return cb_fail(L, r, fname);
}

#define HOT 64
static const char TYPE_KEY = 't'; /* a bound handle's metatable: its type's */

static void bind(lua_State *L, int t) __attribute__((noinline));

static cc_lock *any_lock_slow(lua_State *L, const char *fname) __attribute__((noinline));

/* The lock of argument 1: a lock, an rlock, or a condition's lock. On the
 * fast path this closure is bound to argument 1 (upvalue 1): equal
 * addresses are that very handle, kept alive by the closure. */
static inline cc_lock *any_lock(lua_State *L, const char *fname) {
    cb_handle *h = lua_touserdata(L, 1);
    if (h && h == lua_touserdata(L, lua_upvalueindex(1)) && h->obj)
        return h->obj->type == CC_T_COND ? cc_condvar_lock((cc_condvar *)h->obj) : (cc_lock *)h->obj;
    return any_lock_slow(L, fname);
}

/* Argument 1 as a lock, an rlock or a condition. Through the methods of
 * its own type (upvalue 1 is the type's metatable) one compare, as
 * cb_self, or two for a bound handle (its own metatable names its type's
 * under TYPE_KEY; the size check keeps out a LuaJIT proxy given a copy of
 * every field); else a released handle says so and anything else is "bad
 * self (lock expected, got ...)". */
static cc_obj *lock_self(lua_State *L, const char *fname) {
    cb_handle *h = lua_touserdata(L, 1);
    if (h && lua_getmetatable(L, 1)) {
        int same = lua_rawequal(L, -1, lua_upvalueindex(1));
        if (!same && cb_rawlen(L, 1) == sizeof(cb_handle)) {
            cb_rawgetp(L, -1, &TYPE_KEY);
            same = lua_rawequal(L, -1, lua_upvalueindex(1));
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        if (same && h->obj) return h->obj;
    }
    cc_obj *o = cb_test(L, 1);
    int t = o ? (int)o->type : CC_T_NONE;
    if (t == CC_T_LOCK || t == CC_T_RLOCK || t == CC_T_COND) return o;
    if (!o && strncmp(cb_typeof(L, 1), "concur.", 7) == 0) cb_self(L, CC_T_NONE, fname);
    cb_typeerror(L, 1, fname, "lock");
    return NULL;
}

/* Through the type's methods (or another receiver): the full check, and
 * the count that binds a handle once it is hot. */
static cc_lock *any_lock_slow(lua_State *L, const char *fname) {
    cc_obj *o = lock_self(L, fname);
    int t = o->type;
    cb_handle *h = lua_touserdata(L, 1);
    if (h->flags < HOT && ++h->flags == HOT) bind(L, t);
    return t == CC_T_COND ? cc_condvar_lock((cc_condvar *)o) : (cc_lock *)o;
}

static int l_acquire(lua_State *L) {
    cc_lock *l = any_lock(L, "lock:acquire");
    double deadline = lua_gettop(L) == 1 ? CC_FOREVER : cb_opt_deadline(L, 2, "lock:acquire");
    int r = cc_lock_acquire(l, deadline);
    if (__builtin_expect(r == 0, 1)) {
        lua_pushboolean(L, 1);
        return 1;
    }
    return acquired(L, r, "lock:acquire");
}

static int l_release(lua_State *L) {
    cc_lock *l = any_lock(L, "lock:release");
    if (cc_lock_release(l) != 0)
        return luaL_error(L, "lock:release: lock not held by this thread");
    return 0;
}

static int l_locked(lua_State *L) {
    lua_pushboolean(L, cc_lock_locked(any_lock(L, "lock:locked")));
    return 1;
}

static int l_close(lua_State *L) { /* __close: release if we hold it */
    cc_lock *l = any_lock(L, "lock:__close");
    if (cc_lock_owned(l)) cc_lock_release(l);
    return 0;
}

/* with(fn, ...): run fn holding the thing at 1 (acquire/release given as
 * upvalue-free C functions by the caller), release on error too. */
static int with(lua_State *L, lua_CFunction acquire, lua_CFunction release, const char *fname) {
    cb_checkfunction(L, 2, 1, fname);
    int nargs = lua_gettop(L) - 2;
    lua_pushcfunction(L, acquire);
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
    lua_pop(L, 1);
    int base = 1; /* fn at 2, args after */
    int status = lua_pcall(L, nargs, LUA_MULTRET, 0);
    lua_pushcfunction(L, release);
    lua_pushvalue(L, 1);
    lua_call(L, 1, 0);
    if (status != LUA_OK) return lua_error(L);
    return lua_gettop(L) - base;
}

static int l_with(lua_State *L) {
    any_lock(L, "lock:with");
    return with(L, l_acquire, l_release, "lock:with");
}

static int l_new(lua_State *L) {
    cc_lock *l;
    int r = cc_lock_new(&l, 0);
    return push_new(L, r, r ? NULL : (cc_obj *)l, "lock.new");
}

static int l_rlock(lua_State *L) {
    cc_lock *l;
    int r = cc_lock_new(&l, 1);
    return push_new(L, r, r ? NULL : (cc_obj *)l, "lock.rlock");
}

static int l_call(lua_State *L) { /* lock(): the library is argument 1 */
    lua_remove(L, 1);
    return l_new(L);
}

/* ---- semaphore ---- */

static int s_new(lua_State *L) {
    lua_Integer n = cb_optint(L, 1, 1, "lock.semaphore", 1);
    if (n < 0) return cb_argerror(L, 1, "lock.semaphore", "value must be >= 0");
    cc_sem *s;
    int r = cc_sem_new(&s, n);
    return push_new(L, r, r ? NULL : (cc_obj *)s, "lock.semaphore");
}

static int s_acquire(lua_State *L) {
    cc_sem *s = SELF(cc_sem, CC_T_SEM, "semaphore:acquire");
    double deadline = cb_opt_deadline(L, 2, "semaphore:acquire");
    return acquired(L, cc_sem_acquire(s, deadline), "semaphore:acquire");
}

static int s_release(lua_State *L) {
    cc_sem *s = SELF(cc_sem, CC_T_SEM, "semaphore:release");
    lua_Integer n = cb_optint(L, 2, 1, "semaphore:release", 1);
    if (n < 1) return cb_argerror(L, 1, "semaphore:release", "n must be >= 1");
    if (cc_sem_release(s, n) == -EOVERFLOW)
        return cb_argerror(L, 1, "semaphore:release",
                           lua_pushfstring(L, "n = %s would overflow the value %s", fmt_int(L, n),
                                           fmt_int(L, cc_sem_value(s))));
    return 0;
}

static int s_value(lua_State *L) {
    cb_pushinteger(L, cc_sem_value(CHECK(cc_sem, CC_T_SEM, "semaphore:value")));
    return 1;
}

static int s_with(lua_State *L) {
    CHECK(cc_sem, CC_T_SEM, "semaphore:with");
    return with(L, s_acquire, s_release, "semaphore:with");
}

/* ---- event ---- */

static int e_new(lua_State *L) {
    cc_event *e;
    int r = cc_event_new(&e);
    return push_new(L, r, r ? NULL : (cc_obj *)e, "lock.event");
}

static int e_set(lua_State *L) {
    cc_event_set(CHECK(cc_event, CC_T_EVENT, "event:set"));
    return 0;
}

static int e_clear(lua_State *L) {
    cc_event_clear(CHECK(cc_event, CC_T_EVENT, "event:clear"));
    return 0;
}

static int e_is_set(lua_State *L) {
    lua_pushboolean(L, cc_event_is_set(CHECK(cc_event, CC_T_EVENT, "event:is_set")));
    return 1;
}

static int e_wait(lua_State *L) {
    cc_event *e = CHECK(cc_event, CC_T_EVENT, "event:wait");
    double deadline = cb_opt_deadline(L, 2, "event:wait");
    return acquired(L, cc_event_wait(e, deadline), "event:wait");
}

/* ---- condition ---- */

static int c_new(lua_State *L) {
    cc_lock *l = NULL;
    if (!lua_isnoneornil(L, 1)) {
        cc_obj *o = cb_check_any(L, 1, "lock.condition");
        if (o->type != CC_T_LOCK && o->type != CC_T_RLOCK)
            return cb_typeerror(L, 1, "lock.condition", "lock");
        l = (cc_lock *)o;
    }
    cc_condvar *c;
    int r = cc_condvar_new(&c, l);
    return push_new(L, r, r ? NULL : (cc_obj *)c, "lock.condition");
}

static int c_wait(lua_State *L) {
    cc_condvar *c = CHECK(cc_condvar, CC_T_COND, "condition:wait");
    double deadline = cb_opt_deadline(L, 2, "condition:wait");
    int r = cc_condvar_wait(c, deadline);
    if (r == -EPERM) return luaL_error(L, "condition:wait: lock not held by this thread");
    if (r == -EINTR || r == -ENOMEM) return cb_fail(L, r, "condition:wait");
    lua_pushboolean(L, r == 0);
    return 1;
}

static int c_wait_for(lua_State *L) {
    cc_condvar *c = CHECK(cc_condvar, CC_T_COND, "condition:wait_for");
    cb_checkfunction(L, 2, 1, "condition:wait_for");
    double deadline = cb_opt_deadline(L, 3, "condition:wait_for");
    for (;;) {
        lua_pushvalue(L, 2);
        lua_call(L, 0, 1);
        if (lua_toboolean(L, -1)) return 1;
        lua_pop(L, 1);
        int r = cc_condvar_wait(c, deadline);
        if (r == -EPERM) return luaL_error(L, "condition:wait_for: lock not held by this thread");
        if (r == -EINTR || r == -ENOMEM) return cb_fail(L, r, "condition:wait_for");
        if (r == -ETIMEDOUT) { /* one last look, as Python does */
            lua_pushvalue(L, 2);
            lua_call(L, 0, 1);
            return 1;
        }
    }
}

static int c_notify(lua_State *L) {
    cc_condvar *c = CHECK(cc_condvar, CC_T_COND, "condition:notify");
    lua_Integer n = cb_optint(L, 2, 1, "condition:notify", 1);
    if (n < 0) return cb_argerror(L, 1, "condition:notify", "n must be >= 0");
    if (cc_condvar_notify(c, n) == -EPERM)
        return luaL_error(L, "condition:notify: lock not held by this thread");
    return 0;
}

static int c_notify_all(lua_State *L) {
    cc_condvar *c = CHECK(cc_condvar, CC_T_COND, "condition:notify_all");
    if (cc_condvar_notify_all(c) == -EPERM)
        return luaL_error(L, "condition:notify_all: lock not held by this thread");
    return 0;
}

/* ---- barrier ---- */

static int b_new(lua_State *L) {
    lua_Integer n = cb_checkint(L, 1, 1, "lock.barrier");
    if (n < 1) return cb_argerror(L, 1, "lock.barrier", "parties must be >= 1");
    cc_barrier *b;
    int r = cc_barrier_new(&b, n);
    return push_new(L, r, r ? NULL : (cc_obj *)b, "lock.barrier");
}

static int b_wait(lua_State *L) {
    cc_barrier *b = CHECK(cc_barrier, CC_T_BARRIER, "barrier:wait");
    double deadline = cb_opt_deadline(L, 2, "barrier:wait");
    int64_t r = cc_barrier_wait(b, deadline);
    if (r >= 0) {
        cb_pushinteger(L, r);
        return 1;
    }
    if (r == -EPIPE) {
        lua_pushnil(L);
        lua_pushliteral(L, "broken");
        return 2;
    }
    return cb_fail(L, (int)r, "barrier:wait");
}

static int b_abort(lua_State *L) {
    cc_barrier_abort(CHECK(cc_barrier, CC_T_BARRIER, "barrier:abort"));
    return 0;
}

static int b_reset(lua_State *L) {
    cc_barrier_reset(CHECK(cc_barrier, CC_T_BARRIER, "barrier:reset"));
    return 0;
}

static int b_parties(lua_State *L) {
    cb_pushinteger(L, cc_barrier_parties(CHECK(cc_barrier, CC_T_BARRIER, "barrier:parties")));
    return 1;
}

static int b_waiting(lua_State *L) {
    cb_pushinteger(L, cc_barrier_waiting(CHECK(cc_barrier, CC_T_BARRIER, "barrier:n_waiting")));
    return 1;
}

static int b_broken(lua_State *L) {
    lua_pushboolean(L, cc_barrier_broken(CHECK(cc_barrier, CC_T_BARRIER, "barrier:broken")));
    return 1;
}

/* ---- registration ---- */

static const luaL_Reg lock_methods[] = {
    {"acquire", l_acquire}, {"release", l_release}, {"locked", l_locked},
    {"with", l_with},       {NULL, NULL},
};
static const luaL_Reg lock_meta[] = {{"__close", l_close}, {NULL, NULL}};

static const luaL_Reg sem_methods[] = {
    {"acquire", s_acquire}, {"release", s_release}, {"value", s_value}, {"with", s_with}, {NULL, NULL},
};

static const luaL_Reg event_methods[] = {
    {"set", e_set}, {"clear", e_clear}, {"is_set", e_is_set}, {"wait", e_wait}, {NULL, NULL},
};

static const luaL_Reg cond_methods[] = {
    {"acquire", l_acquire}, {"release", l_release},   {"locked", l_locked},
    {"with", l_with},       {"wait", c_wait},         {"wait_for", c_wait_for},
    {"notify", c_notify},   {"notify_all", c_notify_all}, {NULL, NULL},
};

static const luaL_Reg barrier_methods[] = {
    {"wait", b_wait},       {"abort", b_abort},       {"reset", b_reset},
    {"parties", b_parties}, {"n_waiting", b_waiting}, {"broken", b_broken},
    {NULL, NULL},
};

/* Give the lock handle at 1 its methods bound to it (cb_bind_methods); its
 * own metatable names its type's under TYPE_KEY for lock_self. */
static void bind(lua_State *L, int t) {
    luaL_checkstack(L, 3, NULL);
    lua_getmetatable(L, 1); /* still the type's: bind runs once per handle */
    cb_bind_methods(L, 1, t == CC_T_COND ? cond_methods : lock_methods);
    lua_getmetatable(L, 1); /* its own now */
    lua_insert(L, -2);
    cb_rawsetp(L, -2, &TYPE_KEY);
    lua_pop(L, 1);
}

static const luaL_Reg funcs[] = {
    {"new", l_new},         {"rlock", l_rlock},         {"semaphore", s_new},
    {"event", e_new},       {"condition", c_new},       {"barrier", b_new},
    {NULL, NULL},
};

int cb_open_lock(lua_State *L) {
    cb_lazytype(CC_T_LOCK, "lock", lock_methods, lock_meta, NULL);
    cb_lazytype(CC_T_RLOCK, "rlock", lock_methods, lock_meta, NULL);
    cb_lazytype(CC_T_SEM, "semaphore", sem_methods, NULL, NULL);
    cb_lazytype(CC_T_EVENT, "event", event_methods, NULL, NULL);
    cb_lazytype(CC_T_COND, "condition", cond_methods, lock_meta, NULL);
    cb_lazytype(CC_T_BARRIER, "barrier", barrier_methods, NULL, NULL);
    cb_newlib(L, funcs);
    cb_callable(L, l_call);
    return 1;
}
