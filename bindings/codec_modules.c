/*
 * codec_modules.c -- the loaded-module name index the codec uses to send
 * loaded module tables and their C functions by name.
 *
 * The encoder meets C functions (string.format) and module tables (the
 * `concur.primes` a worker closes over) that cannot be copied; it sends
 * their names instead, and the decoder looks them up in package.loaded on
 * arrival (running require when the receiver has not loaded the module).
 *
 * The index is built once per state by walking package.loaded and kept in
 * the registry; the encoder rebuilds it when a C function is not found (a
 * module loaded since) and when package.loaded.concur is no longer the
 * table it was built with (busted unloads and re-requires modules per file).
 * During an encode it lives in a Lua stack slot reserved by cb_encode, so
 * building it mid-encode shifts no index an enclosing frame holds.
 */
#include "codec.h"

#include <string.h>

static const char INDEX_KEY = 'm'; /* registry[&INDEX_KEY]: the last index built */

/* index[tbl] = mod, unless a shorter name is there already (aliases). */
static void index_table(lua_State *L, int index, int mod, int tbl) {
    lua_pushvalue(L, tbl);
    lua_rawget(L, index);
    int have = lua_isstring(L, -1) && strlen(lua_tostring(L, -1)) <= strlen(lua_tostring(L, mod));
    lua_pop(L, 1);
    if (have) return;
    lua_pushvalue(L, tbl);
    lua_pushvalue(L, mod);
    lua_rawset(L, index);
}

/* index[fn] = {mod, field} for every C function of the module at tbl; a
 * function found under _G as well is named as the global. */
static void index_functions(lua_State *L, int index, int mod, int tbl) {
    int is_g = strcmp(lua_tostring(L, mod), "_G") == 0;
    lua_pushnil(L);
    while (lua_next(L, tbl)) {
        int field = lua_gettop(L) - 1, fn = field + 1;
        if (lua_type(L, field) == LUA_TSTRING && lua_iscfunction(L, fn)) {
            lua_pushvalue(L, fn);
            lua_rawget(L, index);
            int known = !lua_isnil(L, -1);
            lua_pop(L, 1);
            if (!known || is_g) {
                lua_pushvalue(L, fn);
                lua_createtable(L, 2, 0);
                lua_pushvalue(L, mod);
                lua_rawseti(L, -2, 1);
                lua_pushvalue(L, field);
                lua_rawseti(L, -2, 2);
                lua_rawset(L, index);
            }
        }
        lua_pop(L, 1);
    }
}

/* Pushes a new index and records it in the registry. */
static void build(lua_State *L) {
    luaL_checkstack(L, 12, "module index");
    lua_newtable(L);
    int index = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    int loaded = lua_gettop(L);
    if (lua_istable(L, loaded)) {
        lua_pushnil(L);
        while (lua_next(L, loaded)) {
            int mod = lua_gettop(L) - 1, tbl = mod + 1;
            if (lua_type(L, mod) == LUA_TSTRING && lua_istable(L, tbl)) {
                index_table(L, index, mod, tbl);
                index_functions(L, index, mod, tbl);
            }
            lua_pop(L, 1);
        }
        lua_getfield(L, loaded, "concur");
        lua_setfield(L, index, "concur"); /* for fresh() */
    }
    lua_settop(L, index);
    lua_pushvalue(L, index);
    cb_rawsetp(L, LUA_REGISTRYINDEX, &INDEX_KEY);
}

/* The index on top is stale when package.loaded.concur is not the table it
 * was built with. */
static int fresh(lua_State *L) {
    int index = lua_gettop(L);
    lua_getfield(L, index, "concur");
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_getfield(L, -1, "concur");
    int same = lua_rawequal(L, -1, index + 1);
    lua_settop(L, index);
    return same;
}

int cb_modindex(lua_State *L, int slot) {
    if (lua_isnil(L, slot)) {
        cb_rawgetp(L, LUA_REGISTRYINDEX, &INDEX_KEY);
        if (lua_isnil(L, -1) || !fresh(L)) {
            lua_pop(L, 1);
            build(L);
        }
        lua_replace(L, slot);
    }
    return slot;
}

void cb_modindex_rebuild(lua_State *L, int slot) {
    build(L);
    lua_replace(L, slot);
}

void cb_push_module(lua_State *L, const char *name, size_t n, const char *fname) {
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_pushlstring(L, name, n);
    lua_rawget(L, -2);
    if (lua_isnil(L, -1)) { /* not loaded here yet: require it */
        lua_pop(L, 1);
        lua_getglobal(L, "require");
        lua_pushlstring(L, name, n);
        if (!lua_isfunction(L, -2))
            luaL_error(L, "%s: cannot load module '%s' here", fname, lua_tostring(L, -1));
        lua_call(L, 1, 1);
    }
    lua_remove(L, -2);
}
