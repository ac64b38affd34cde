/*
 * compat.h -- the only place that knows Lua 5.4 from LuaJIT 2.1 (5.1 API).
 *
 * Everything else in bindings/ is written against the 5.4 API and uses the
 * names below; under LuaJIT they map onto 5.1 equivalents.
 */
#ifndef CONCUR_COMPAT_H
#define CONCUR_COMPAT_H

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#if LUA_VERSION_NUM >= 503
#define CB_LUA54 1
#define cb_rawlen(L, i) lua_rawlen(L, i)
#define cb_isinteger(L, i) lua_isinteger(L, i)
#define cb_pushinteger(L, v) lua_pushinteger(L, (lua_Integer)(v))
#define cb_dump(L, w, d) lua_dump(L, w, d, 0)
#define cb_load(L, r, d, name) lua_load(L, r, d, name, "b")
#define cb_newuserdata(L, sz) lua_newuserdatauv(L, sz, 0)
#define cb_rawgetp(L, i, p) lua_rawgetp(L, i, p)
#define cb_rawsetp(L, i, p) lua_rawsetp(L, i, p)
#define cb_pushglobaltable(L) lua_pushglobaltable(L)
#define cb_setfuncs(L, l, n) luaL_setfuncs(L, l, n)
#define cb_newlib(L, l) luaL_newlib(L, l)
#define cb_tointegerx(L, i, ok) lua_tointegerx(L, i, ok)
#define cb_absindex(L, i) lua_absindex(L, i)
#define cb_traceback(L, L1, msg, lvl) luaL_traceback(L, L1, msg, lvl)
#define cb_requiref(L, name, f) (luaL_requiref(L, name, f, 0), lua_pop(L, 1))
/* A count hook is how thread:cancel reaches pure Lua code. */
#define CB_CANCEL_HOOK 1
#define cb_tolstring(L, i) luaL_tolstring(L, i, NULL)
/* t[n] for any integer key n (5.1's lua_rawseti/rawgeti take an int) */
#define cb_rawseti(L, i, n) lua_rawseti(L, i, (lua_Integer)(n))
#define cb_rawgeti(L, i, n) ((void)lua_rawgeti(L, i, (lua_Integer)(n)))
/* A userdata with n user values (5.4), or with an environment table of n
 * slots (5.1): cb_getiuv pushes value k, cb_setiuv pops one into it. */
#define cb_newuserdatauv(L, sz, n) lua_newuserdatauv(L, sz, n)
#define cb_getiuv(L, i, k) ((void)lua_getiuservalue(L, i, k))
#define cb_setiuv(L, i, k) ((void)lua_setiuservalue(L, i, k))
#else /* LuaJIT 2.1 / Lua 5.1 API */
#define CB_LUAJIT 1
#define cb_rawlen(L, i) lua_objlen(L, i)
#define cb_isinteger(L, i) cb_isinteger_51(L, i)
static inline int cb_isinteger_51(lua_State *L, int i) {
    (void)L; (void)i;
    return 0; /* LuaJIT has one number type: every number travels as a float */
}
#define cb_pushinteger(L, v) lua_pushnumber(L, (lua_Number)(v))
#define cb_dump(L, w, d) lua_dump(L, w, d)
#define cb_load(L, r, d, name) lua_load(L, r, d, name)
#define cb_newuserdata(L, sz) lua_newuserdata(L, sz)
#define cb_pushglobaltable(L) lua_pushvalue(L, LUA_GLOBALSINDEX)
static inline int cb_absindex(lua_State *L, int i) {
    return (i > 0 || i <= LUA_REGISTRYINDEX) ? i : lua_gettop(L) + i + 1;
}
static inline void cb_rawgetp(lua_State *L, int i, const void *p) {
    i = cb_absindex(L, i);
    lua_pushlightuserdata(L, (void *)p);
    lua_rawget(L, i);
}
static inline void cb_rawsetp(lua_State *L, int i, const void *p) {
    i = cb_absindex(L, i);
    lua_pushlightuserdata(L, (void *)p);
    lua_insert(L, -2);
    lua_rawset(L, i);
}
/* LuaJIT 2.1 provides luaL_setfuncs, luaL_traceback, luaL_newlib-equivalents
 * through lauxlib (LUAJIT_ENABLE_LUA52COMPAT is not needed for these). */
#define cb_setfuncs(L, l, n) luaL_setfuncs(L, l, n)
#define cb_newlib(L, l) (lua_newtable(L), luaL_setfuncs(L, l, 0))
static inline lua_Integer cb_tointegerx(lua_State *L, int i, int *ok) {
    lua_Number n = lua_tonumber(L, i);
    /* range first: casting NaN or 2^63 to an integer is undefined */
    int isnum = lua_isnumber(L, i) && n >= -9223372036854775808.0 && n < 9223372036854775808.0 &&
                n == (lua_Number)(lua_Integer)n;
    if (ok) *ok = isnum;
    return isnum ? (lua_Integer)n : 0;
}
#define cb_traceback(L, L1, msg, lvl) luaL_traceback(L, L1, msg, lvl)
static inline void cb_requiref(lua_State *L, const char *name, lua_CFunction f) {
    lua_pushcfunction(L, f);
    lua_pushstring(L, name);
    lua_call(L, 1, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, name);
    lua_pop(L, 2);
}
/* No count hook under LuaJIT: a hook turns the JIT off for the whole state.
 * thread:cancel there takes effect at the next blocking wait only. */
#define CB_CANCEL_HOOK 0
/* tostring(v) through the global, as 5.1 has no luaL_tolstring */
static inline const char *cb_tolstring(lua_State *L, int i) {
    i = cb_absindex(L, i);
    lua_getglobal(L, "tostring");
    lua_pushvalue(L, i);
    lua_call(L, 1, 1);
    return lua_tostring(L, -1);
}
static inline void cb_rawseti(lua_State *L, int i, long long n) {
    if (n == (int)n) {
        lua_rawseti(L, i, (int)n);
        return;
    }
    i = cb_absindex(L, i);
    lua_pushnumber(L, (lua_Number)n);
    lua_insert(L, -2);
    lua_rawset(L, i);
}
static inline void cb_rawgeti(lua_State *L, int i, long long n) {
    if (n == (int)n) {
        lua_rawgeti(L, i, (int)n);
        return;
    }
    i = cb_absindex(L, i);
    lua_pushnumber(L, (lua_Number)n);
    lua_rawget(L, i);
}
static inline void *cb_newuserdatauv(lua_State *L, size_t sz, int n) {
    void *u = lua_newuserdata(L, sz);
    lua_createtable(L, n, 0);
    lua_setfenv(L, -2);
    return u;
}
static inline void cb_getiuv(lua_State *L, int i, int k) {
    lua_getfenv(L, i);
    lua_rawgeti(L, -1, k);
    lua_remove(L, -2);
}
static inline void cb_setiuv(lua_State *L, int i, int k) {
    i = cb_absindex(L, i);
    lua_getfenv(L, i);
    lua_insert(L, -2);
    lua_rawseti(L, -2, k);
    lua_pop(L, 1);
}
#ifndef LUA_OK
#define LUA_OK 0
#endif
#endif

#endif
